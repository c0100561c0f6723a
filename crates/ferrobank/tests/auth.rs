//! Bearer-token authentication and per-account authorization, black-box through the real
//! router with a test IdP issuing RS256 tokens.
#![allow(clippy::unwrap_used)]

mod common;

use common::{TestIdp, spawn_app, spawn_app_with_auth, spawn_app_with_issuer, transfer_body};
use ferrobank_adapters::Backend;
use serde_json::{Value, json};
use uuid::Uuid;

const CHALLENGE: &str = "Bearer realm=\"ferrobank\"";
const CHALLENGE_INVALID: &str = "Bearer realm=\"ferrobank\", error=\"invalid_token\"";

fn id(reply: &Value) -> Uuid {
    reply["id"].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_every_api_route_is_401_and_public_routes_stay_open() {
    let idp = TestIdp::start().await;
    let app = spawn_app_with_auth(Backend::Sqlite, &idp).await;
    let any = Uuid::now_v7();
    let gets = [
        format!("/api/accounts/{any}"),
        format!("/api/accounts/{any}/balances"),
        format!("/api/accounts/{any}/history"),
        format!("/api/transfers/{any}"),
    ];
    for path in &gets {
        let reply = app.get(path).await;
        reply.expect_problem(401, "unauthorized");
        assert_eq!(reply.header("www-authenticate"), Some(CHALLENGE), "{path}");
    }
    let posts = [
        ("/api/accounts".to_owned(), json!({ "currency": "EUR", "owner": "x" })),
        ("/api/transfers".to_owned(), transfer_body(any, any, Uuid::now_v7(), 1)),
        ("/api/transfers/batch".to_owned(), json!({ "transfers": [] })),
        (format!("/api/transfers/{any}/post"), json!({ "id": Uuid::now_v7() })),
        (format!("/api/transfers/{any}/void"), json!({ "id": Uuid::now_v7() })),
    ];
    for (path, body) in &posts {
        let reply = app.post_with_key(path, "k-1", body).await;
        reply.expect_problem(401, "unauthorized");
        assert_eq!(reply.header("www-authenticate"), Some(CHALLENGE), "{path}");
    }
    for path in ["/health", "/ready", "/metrics", "/api/openapi.json", "/api/docs"] {
        assert_eq!(app.get(path).await.status, 200, "{path}");
    }
    let doc = app.get("/api/openapi.json").await.json();
    assert_eq!(doc["components"]["securitySchemes"]["bearerAuth"]["scheme"], "bearer");
    assert!(doc["paths"]["/api/accounts/{id}"]["get"]["responses"]["401"].is_object());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_tokens_are_401_invalid_token() {
    let idp = TestIdp::start().await;
    let app = spawn_app_with_auth(Backend::Sqlite, &idp).await;
    let path = format!("/api/accounts/{}", Uuid::now_v7());

    let mut expired = idp.claims("alice", &["customer"]);
    expired["exp"] = json!(jsonwebtoken::get_current_timestamp() - 3600);
    expired["iat"] = json!(jsonwebtoken::get_current_timestamp() - 7200);
    let mut wrong_audience = idp.claims("alice", &["customer"]);
    wrong_audience["aud"] = json!("some-other-api");
    let tokens = [
        ("garbage", "not-a-jwt".to_owned()),
        ("expired", idp.sign(&expired)),
        ("wrong audience", idp.sign(&wrong_audience)),
        ("forged", idp.forge(&idp.claims("alice", &["banking-admin"]))),
    ];
    for (what, token) in &tokens {
        let reply = app.get_as(token, &path).await;
        let problem = reply.expect_problem(401, "invalid_token");
        assert_eq!(reply.header("www-authenticate"), Some(CHALLENGE_INVALID), "{what}");
        assert!(!problem["detail"].as_str().unwrap().contains("http"), "{what}: {problem}");
    }
    // The same path with a good token answers (404: the account does not exist).
    app.get_as(&idp.token("alice", &["customer"]), &path).await.expect_problem(404, "not_found");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_idp_does_not_stop_the_server_and_tokens_get_503() {
    // Nothing listens on this port once the listener is dropped.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let issuer = format!("http://{}/realms/test", listener.local_addr().unwrap());
    drop(listener);
    let app = spawn_app_with_issuer(Backend::Sqlite, &issuer).await;
    let idp = TestIdp { issuer };
    let path = format!("/api/accounts/{}", Uuid::now_v7());
    app.get_as(&idp.token("alice", &["customer"]), &path)
        .await
        .expect_problem(503, "idp_unavailable");
    assert_eq!(app.get("/ready").await.status, 200);
    app.stop().await;
}

/// Customer isolation, end to end; runs on both backends.
async fn customers_see_and_move_only_their_own_accounts(backend: Backend) {
    let idp = TestIdp::start().await;
    let app = spawn_app_with_auth(backend, &idp).await;
    let alice = idp.token("alice", &["customer"]);
    let bob = idp.token("bob", &["customer"]);
    let admin = idp.token("root", &["banking-admin"]);

    // Opening: own accounts only; the admin opens for anyone.
    let a = id(&app.open_as(&alice, "alice").await.expect(201));
    let b = id(&app.open_as(&bob, "bob").await.expect(201));
    app.open_as(&alice, "bob").await.expect_problem(403, "forbidden");
    let cash = id(&app.open_as(&admin, "bank").await.expect(201));

    // The admin moves money on accounts it does not own.
    let fund = |to: Uuid| transfer_body(Uuid::now_v7(), cash, to, 1_000);
    app.post_as(&admin, "/api/transfers", &fund(a)).await.expect(201);
    let funding_b = id(&app.post_as(&admin, "/api/transfers", &fund(b)).await.expect(201));

    // Alice cannot see anything of Bob's: 404, as if it did not exist.
    for path in [
        format!("/api/accounts/{b}"),
        format!("/api/accounts/{b}/balances"),
        format!("/api/accounts/{b}/history"),
        format!("/api/transfers/{funding_b}"),
    ] {
        app.get_as(&alice, &path).await.expect_problem(404, "not_found");
        app.get_as(&bob, &path).await.expect(200);
    }
    app.get_as(&alice, &format!("/api/accounts/{a}")).await.expect(200);

    // She cannot debit Bob's account, and a missing account looks the same.
    let steal = transfer_body(Uuid::now_v7(), b, a, 100);
    app.post_as(&alice, "/api/transfers", &steal).await.expect_problem(404, "not_found");
    let missing = transfer_body(Uuid::now_v7(), Uuid::now_v7(), a, 100);
    app.post_as(&alice, "/api/transfers", &missing).await.expect_problem(404, "not_found");
    // In a batch the refusal is per transfer and fails its linked chain.
    let mut linked = transfer_body(Uuid::now_v7(), a, b, 1);
    linked["flags"] = json!({ "linked": true });
    let batch = json!({ "transfers": [linked, steal, transfer_body(Uuid::now_v7(), a, b, 2)] });
    let results = app.post_as(&alice, "/api/transfers/batch", &batch).await.expect(200);
    let statuses: Vec<_> = results["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| match r["error"]["type"].as_str() {
            Some(uri) => uri.rsplit('/').next().unwrap().to_owned(),
            None => r["status"].as_str().unwrap().to_owned(),
        })
        .collect();
    assert_eq!(
        statuses,
        ["linked_event_failed", "debit_account_not_found", "created"],
        "{results}"
    );

    // She may credit Bob's account; both then see that transfer.
    let gift = id(&app
        .post_as(&alice, "/api/transfers", &transfer_body(Uuid::now_v7(), a, b, 10))
        .await
        .expect(201));
    app.get_as(&bob, &format!("/api/transfers/{gift}")).await.expect(200);
    app.get_as(&alice, &format!("/api/transfers/{gift}")).await.expect(200);
    let bob_balances = app.get_as(&bob, &format!("/api/accounts/{b}/balances")).await.expect(200);
    assert_eq!(bob_balances["credits_posted"], 1_012, "{bob_balances}");

    // Holds: only the debit side's owner posts or voids them.
    let hold_id = Uuid::now_v7();
    let mut hold = transfer_body(hold_id, a, b, 50);
    hold["flags"] = json!({ "pending": true });
    app.post_as(&alice, "/api/transfers", &hold).await.expect(201);
    let resolve = json!({ "id": Uuid::now_v7() });
    for action in ["post", "void"] {
        let path = format!("/api/transfers/{hold_id}/{action}");
        app.post_as(&bob, &path, &resolve).await.expect_problem(404, "not_found");
    }
    app.post_as(&alice, &format!("/api/transfers/{hold_id}/void"), &resolve).await.expect(201);
    app.verify_clean().await;
    app.stop().await;
}

mod customer_isolation {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::customers_see_and_move_only_their_own_accounts(ferrobank_adapters::Backend::Sqlite)
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::customers_see_and_move_only_their_own_accounts(
            ferrobank_adapters::Backend::Postgres,
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staff_read_everything_but_only_the_admin_moves_other_peoples_money() {
    let idp = TestIdp::start().await;
    let app = spawn_app_with_auth(Backend::Sqlite, &idp).await;
    let bob = idp.token("bob", &["customer"]);
    let admin = idp.token("root", &["banking-admin"]);
    let b = id(&app.open_as(&bob, "bob").await.expect(201));
    let other = id(&app.open_as(&admin, "carol").await.expect(201));
    let funding = id(&app
        .post_as(&admin, "/api/transfers", &transfer_body(Uuid::now_v7(), other, b, 5))
        .await
        .expect(201));

    for role in ["loan-officer", "risk-analyst", "compliance-officer", "banking-admin"] {
        let staff = idp.token(&format!("staff-{role}"), &[role]);
        for path in [
            format!("/api/accounts/{b}"),
            format!("/api/accounts/{b}/balances"),
            format!("/api/accounts/{b}/history"),
            format!("/api/transfers/{funding}"),
        ] {
            app.get_as(&staff, &path).await.expect(200);
        }
        let debit = transfer_body(Uuid::now_v7(), b, other, 1);
        let reply = app.post_as(&staff, "/api/transfers", &debit).await;
        let opened = app.open_as(&staff, "dave").await;
        if role == "banking-admin" {
            reply.expect(201);
            opened.expect(201);
        } else {
            reply.expect_problem(404, "not_found");
            opened.expect_problem(403, "forbidden");
        }
    }
    // A token without any role the ledger knows gets nothing, not even its "own" account.
    let nobody = idp.token("bob", &["offline_access"]);
    app.get_as(&nobody, &format!("/api/accounts/{b}")).await.expect_problem(404, "not_found");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_of_two_users_never_collide() {
    let idp = TestIdp::start().await;
    let app = spawn_app_with_auth(Backend::Sqlite, &idp).await;
    let alice = idp.token("alice", &["customer"]);
    let bob = idp.token("bob", &["customer"]);
    let open = |owner: &str| json!({ "currency": "EUR", "owner": owner });

    let first = app.post_as_with_key(&alice, "/api/accounts", "same-key", &open("alice")).await;
    let theirs = app.post_as_with_key(&bob, "/api/accounts", "same-key", &open("bob")).await;
    let a = first.expect(201);
    let b = theirs.expect(201);
    assert_ne!(a["id"], b["id"]);
    assert_eq!(b["owner"], "bob");
    assert!(theirs.header("idempotent-replayed").is_none());
    // Each user's own retry is still a replay.
    let again = app.post_as_with_key(&alice, "/api/accounts", "same-key", &open("alice")).await;
    assert_eq!(again.expect(201)["id"], a["id"]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_issuer_nothing_changes() {
    let app = spawn_app(Backend::Sqlite).await;
    let a = app.open_account(common::AccountSpec::default()).await;
    app.get(&format!("/api/accounts/{a}")).await.expect(200);
    app.stop().await;
}
