//! Black-box tests of the HTTP API: the real router on a random port, over SQLite and over
//! PostgreSQL. Each case is an `async fn(Backend)`; `on_both_backends!` makes the tests.
#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use std::collections::BTreeSet;

use common::{AccountSpec, PROBLEM_BASE, Reply, TestApp, spawn_app, transfer_body};
use ferrobank_adapters::Backend;
use serde_json::{Value, json};
use uuid::Uuid;

/// A problem echoes at most a short excerpt of the input.
const MAX_PROBLEM_BYTES: usize = 4 * 1024;
const NO_OVERDRAFT: AccountSpec = AccountSpec { no_overdraft: true };
const PLAIN: AccountSpec = AccountSpec { no_overdraft: false };

/// A funded customer who may not overdraw, and the bank account that funded them.
async fn funded_customer(app: &TestApp, cents: i64) -> (Uuid, Uuid) {
    let bank = app.open_account(PLAIN).await;
    let customer = app.open_account(NO_OVERDRAFT).await;
    app.transfer_ok(bank, customer, cents).await;
    (bank, customer)
}

fn i(value: &Value) -> i64 {
    value.as_i64().unwrap_or_else(|| panic!("not an integer: {value}"))
}

on_both_backends!(
    opening_an_account_is_idempotent_by_id,
    opening_with_an_idempotency_key_and_no_id_opens_one_account,
    account_balances_and_history_paginate_newest_first,
    a_transfer_retried_with_its_id_is_created_once,
    a_void_releases_the_hold,
    holds_post_in_full_or_in_part,
    resolving_an_unknown_or_resolved_hold_is_refused,
    a_hold_expires_after_its_timeout,
    a_linked_chain_with_one_failing_link_changes_nothing,
    idempotency_key_replays_the_first_response,
    bad_input_is_a_problem_and_changes_nothing,
    a_balance_that_would_overflow_is_refused,
    health_ready_and_metrics,
    openapi_describes_every_api_route,
);

async fn opening_an_account_is_idempotent_by_id(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = Uuid::now_v7();
    let body = json!({
        "id": id, "currency": "EUR", "code": 7, "owner": "customer-1",
        "flags": { "debits_must_not_exceed_credits": true },
    });

    let created = app.post("/api/accounts", &body).await.expect(201);
    assert_eq!(created["id"], id.to_string());
    assert_eq!(created["currency"], "EUR");
    assert_eq!(created["ledger"], 978);
    assert_eq!(created["currency_exponent"], 2);
    assert_eq!(created["code"], 7);
    assert_eq!(created["owner"], "customer-1");
    assert_eq!(created["flags"]["debits_must_not_exceed_credits"], true);
    assert_eq!(created["balances"]["posted"], 0);

    let replayed = app.post("/api/accounts", &body).await.expect(200);
    assert_eq!(replayed, created, "a replay returns the account as first opened");

    let mut other_owner = body.clone();
    other_owner["owner"] = json!("customer-2");
    app.post("/api/accounts", &other_owner)
        .await
        .expect_problem(409, "account_exists_with_different_fields");
    let mut other_currency = body.clone();
    other_currency["currency"] = json!("USD");
    app.post("/api/accounts", &other_currency)
        .await
        .expect_problem(409, "account_exists_with_different_fields");

    let fetched = app.get(&format!("/api/accounts/{id}")).await.expect(200);
    assert_eq!(fetched, created, "the refused requests changed nothing");
    app.get(&format!("/api/accounts/{}", Uuid::now_v7())).await.expect_problem(404, "not_found");
}

async fn opening_with_an_idempotency_key_and_no_id_opens_one_account(backend: Backend) {
    let app = spawn_app(backend).await;
    let body = json!({ "currency": "JPY", "owner": "customer-jp" });
    let key = Uuid::new_v4().to_string();

    let first = app.post_with_key("/api/accounts", &key, &body).await;
    let created = first.expect(201);
    assert_eq!(created["currency_exponent"], 0);
    let replay = app.post_with_key("/api/accounts", &key, &body).await;
    assert_eq!(replay.status, 201);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.json(), created);

    // Without a key and without an id, every request opens a new account.
    let a = app.post("/api/accounts", &body).await.expect(201);
    let b = app.post("/api/accounts", &body).await.expect(201);
    assert_ne!(a["id"], b["id"]);
}

async fn account_balances_and_history_paginate_newest_first(backend: Backend) {
    let app = spawn_app(backend).await;
    let (bank, alice) = funded_customer(&app, 10_000).await;
    let bob = app.open_account(NO_OVERDRAFT).await;
    let mut sent = Vec::new();
    for amount in [100, 250, 75, 1_000] {
        sent.push(app.transfer_ok(alice, bob, amount).await["id"].clone());
    }
    sent.push(app.transfer_ok(bob, alice, 25).await["id"].clone());

    let account = app.get(&format!("/api/accounts/{alice}")).await.expect(200);
    let balances = app.balances(alice).await;
    assert_eq!(account["balances"], balances);
    assert_eq!(i(&balances["credits_posted"]), 10_000 + 25);
    assert_eq!(i(&balances["debits_posted"]), 1_425);
    assert_eq!(i(&balances["posted"]), 10_000 + 25 - 1_425);
    assert_eq!(i(&balances["available"]), 10_000 + 25 - 1_425);
    assert_eq!(i(&app.balances(bob).await["posted"]), 1_425 - 25);
    assert_eq!(i(&app.balances(bank).await["posted"]), -10_000);

    // Pages of two: 6 entries (the deposit and five transfers), newest first.
    let mut ids = Vec::new();
    let mut pages = 0;
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/accounts/{alice}/history?limit=2&cursor={c}"),
            None => format!("/api/accounts/{alice}/history?limit=2"),
        };
        let page = app.get(&path).await.expect(200);
        pages += 1;
        let entries = page["entries"].as_array().unwrap();
        assert!(entries.len() <= 2);
        for entry in entries {
            ids.push(entry["transfer"]["id"].clone());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
        assert!(pages < 10, "pagination does not end");
    }
    assert_eq!(pages, 3);
    assert_eq!(ids.len(), 6);
    let newest_first: Vec<Value> = sent.iter().rev().cloned().collect();
    assert_eq!(ids[..5], newest_first[..]);

    // balances_after of the newest entry is the account's current balance.
    let history = app.history(alice).await;
    assert_eq!(history[0]["balances_after"], balances);
    assert_eq!(i(&history[5]["balances_after"]["posted"]), 10_000);
    // Another account's history holds only its own transfers.
    assert_eq!(app.history(bob).await.len(), 5);
}

async fn a_transfer_retried_with_its_id_is_created_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, alice) = funded_customer(&app, 1_000).await;
    let bob = app.open_account(NO_OVERDRAFT).await;
    let id = Uuid::now_v7();
    let body = transfer_body(id, alice, bob, 300);

    let created = app.post("/api/transfers", &body).await.expect(201);
    assert_eq!(created["id"], id.to_string());
    assert_eq!(created["amount"], 300);
    assert_eq!(created["currency"], "EUR");
    let again = app.post("/api/transfers", &body).await.expect(200);
    assert_eq!(again, created, "a retry returns the original transfer");

    let mut other = body.clone();
    other["amount"] = json!(301);
    let problem = app
        .post("/api/transfers", &other)
        .await
        .expect_problem(409, "exists_with_different_fields");
    assert!(problem["type"].as_str().unwrap().ends_with("exists_with_different_fields"));

    assert_eq!(app.get(&format!("/api/transfers/{id}")).await.expect(200), created);
    assert_eq!(i(&app.balances(alice).await["posted"]), 700, "moved once");
    assert_eq!(i(&app.balances(bob).await["posted"]), 300);
    app.get(&format!("/api/transfers/{}", Uuid::now_v7())).await.expect_problem(404, "not_found");
    app.verify_clean().await;
}

async fn a_void_releases_the_hold(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, alice) = funded_customer(&app, 1_000).await;
    let shop = app.open_account(PLAIN).await;

    let hold = app.hold(alice, shop, 400).await;
    let held = app.balances(alice).await;
    assert_eq!(i(&held["available"]), 600);
    assert_eq!(i(&held["posted"]), 1_000);
    assert_eq!(i(&held["debits_pending"]), 400);
    assert_eq!(i(&app.balances(shop).await["credits_pending"]), 400);
    // The hold counts against the limit: 700 more does not fit.
    app.transfer(alice, shop, 700).await.expect_problem(422, "insufficient_funds");

    let void_id = Uuid::now_v7();
    let void = app
        .post(&format!("/api/transfers/{hold}/void"), &json!({ "id": void_id }))
        .await
        .expect(201);
    assert_eq!(void["flags"]["void_pending"], true);
    assert_eq!(void["pending_id"], hold.to_string());
    let released = app.balances(alice).await;
    assert_eq!(i(&released["available"]), 1_000);
    assert_eq!(i(&released["debits_pending"]), 0);
    assert_eq!(i(&app.balances(shop).await["credits_pending"]), 0);
    let voided = app.get(&format!("/api/transfers/{hold}")).await.expect(200);
    assert_eq!(voided["pending_status"], "voided");

    // The same void again is a retry; a new post or void of it is refused.
    let retry = app.post(&format!("/api/transfers/{hold}/void"), &json!({ "id": void_id })).await;
    assert_eq!(retry.expect(200), void);
    let before = app.snapshot(&[alice, shop]).await;
    app.post(&format!("/api/transfers/{hold}/post"), &json!({ "id": Uuid::now_v7() }))
        .await
        .expect_problem(409, "pending_transfer_already_voided");
    app.post(&format!("/api/transfers/{hold}/void"), &json!({ "id": Uuid::now_v7() }))
        .await
        .expect_problem(409, "pending_transfer_already_voided");
    assert_eq!(app.snapshot(&[alice, shop]).await, before);
    app.verify_clean().await;
}

async fn holds_post_in_full_or_in_part(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, alice) = funded_customer(&app, 1_000).await;
    let shop = app.open_account(PLAIN).await;

    let full = app.hold(alice, shop, 300).await;
    let posted = app
        .post(&format!("/api/transfers/{full}/post"), &json!({ "id": Uuid::now_v7() }))
        .await
        .expect(201);
    assert_eq!(posted["amount"], 300);
    assert_eq!(posted["flags"]["post_pending"], true);
    let after_full = app.balances(alice).await;
    assert_eq!(i(&after_full["posted"]), 700);
    assert_eq!(i(&after_full["debits_pending"]), 0);
    assert_eq!(i(&after_full["available"]), 700);
    assert_eq!(
        app.get(&format!("/api/transfers/{full}")).await.expect(200)["pending_status"],
        "posted"
    );

    let partial = app.hold(alice, shop, 500).await;
    assert_eq!(i(&app.balances(alice).await["available"]), 200);
    app.post(
        &format!("/api/transfers/{partial}/post"),
        &json!({ "id": Uuid::now_v7(), "amount": 501 }),
    )
    .await
    .expect_problem(422, "exceeds_pending_amount");
    let post_id = Uuid::now_v7();
    let body = json!({ "id": post_id, "amount": 120 });
    let posted = app.post(&format!("/api/transfers/{partial}/post"), &body).await.expect(201);
    assert_eq!(posted["amount"], 120);
    // The rest of the hold is released.
    let after_partial = app.balances(alice).await;
    assert_eq!(i(&after_partial["posted"]), 580);
    assert_eq!(i(&after_partial["debits_pending"]), 0);
    assert_eq!(i(&after_partial["available"]), 580);
    let shop_balances = app.balances(shop).await;
    assert_eq!(i(&shop_balances["posted"]), 420);
    assert_eq!(i(&shop_balances["credits_pending"]), 0);

    // Retrying the post is idempotent; posting again with a new id is refused.
    assert_eq!(
        app.post(&format!("/api/transfers/{partial}/post"), &body).await.expect(200),
        posted
    );
    let before = app.snapshot(&[alice, shop]).await;
    app.post(&format!("/api/transfers/{partial}/post"), &json!({ "id": Uuid::now_v7() }))
        .await
        .expect_problem(409, "pending_transfer_already_posted");
    app.post(&format!("/api/transfers/{partial}/void"), &json!({ "id": Uuid::now_v7() }))
        .await
        .expect_problem(409, "pending_transfer_already_posted");
    assert_eq!(app.snapshot(&[alice, shop]).await, before);
    app.verify_clean().await;
}

async fn resolving_an_unknown_or_resolved_hold_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let (bank, alice) = funded_customer(&app, 1_000).await;
    let before = app.snapshot(&[bank, alice]).await;
    let unknown = Uuid::now_v7();
    for action in ["post", "void"] {
        app.post(&format!("/api/transfers/{unknown}/{action}"), &json!({ "id": Uuid::now_v7() }))
            .await
            .expect_problem(404, "not_found");
    }
    // A plain transfer is not a hold.
    let plain = app.history(alice).await[0]["transfer"]["id"].as_str().unwrap().to_owned();
    app.post(&format!("/api/transfers/{plain}/post"), &json!({ "id": Uuid::now_v7() }))
        .await
        .expect_problem(409, "pending_transfer_not_pending");
    // A void must release the whole hold.
    let hold = app.hold(alice, bank, 100).await;
    app.post(
        &format!("/api/transfers/{hold}/void"),
        &json!({ "id": Uuid::now_v7(), "amount": 50 }),
    )
    .await
    .expect_problem(422, "void_amount_mismatch");
    app.post(&format!("/api/transfers/{hold}/void"), &json!({ "id": Uuid::now_v7() }))
        .await
        .expect(201);
    assert_eq!(app.snapshot(&[bank, alice]).await[0]["account"], before[0]["account"]);
    app.verify_clean().await;
}

async fn a_hold_expires_after_its_timeout(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, alice) = funded_customer(&app, 1_000).await;
    let shop = app.open_account(PLAIN).await;
    let hold_id = Uuid::now_v7();
    let mut body = transfer_body(hold_id, alice, shop, 300);
    body["flags"] = json!({ "pending": true });
    body["timeout_seconds"] = json!(1);
    let hold = app.post("/api/transfers", &body).await.expect(201);
    assert_eq!(hold["timeout_seconds"], 1);
    assert_eq!(i(&hold["expires_at_ms"]), i(&hold["created_at_ms"]) + 1_000);
    assert_eq!(i(&app.balances(alice).await["available"]), 700);

    let path = format!("/api/transfers/{hold_id}");
    common::poll_until("the hold to expire", std::time::Duration::from_secs(30), || async {
        let hold = app.get(&path).await.expect(200);
        (hold["pending_status"] == "expired").then_some(())
    })
    .await;
    let released = app.balances(alice).await;
    assert_eq!(i(&released["available"]), 1_000);
    assert_eq!(i(&released["debits_pending"]), 0);
    assert_eq!(i(&app.balances(shop).await["credits_pending"]), 0);
    let newest = &app.history(alice).await[0]["transfer"];
    assert_eq!(newest["flags"]["void_pending"], true, "{newest}");
    assert_eq!(newest["pending_id"], hold_id.to_string());

    for action in ["post", "void"] {
        app.post(&format!("{path}/{action}"), &json!({ "id": Uuid::now_v7() }))
            .await
            .expect_problem(409, "pending_transfer_expired");
    }
    app.verify_clean().await;
}

async fn a_linked_chain_with_one_failing_link_changes_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let (bank, alice) = funded_customer(&app, 1_000).await;
    let bob = app.open_account(NO_OVERDRAFT).await;
    let accounts = [bank, alice, bob];
    let before = app.snapshot(&accounts).await;

    let ids = [Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7()];
    let mut first = transfer_body(ids[0], alice, bob, 600);
    first["flags"] = json!({ "linked": true });
    let mut second = transfer_body(ids[1], bank, bob, 50);
    second["flags"] = json!({ "linked": true });
    // Alice has 400 left after the first link: this one overdraws.
    let third = transfer_body(ids[2], alice, bank, 500);
    let response = app
        .post("/api/transfers/batch", &json!({ "transfers": [first, second, third] }))
        .await
        .expect(200);
    let results = response["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    let codes: Vec<&str> = results
        .iter()
        .map(|r| {
            assert_eq!(r["status"], "failed", "{r}");
            r["error"]["type"].as_str().unwrap().trim_start_matches(PROBLEM_BASE)
        })
        .collect();
    assert_eq!(codes, ["linked_event_failed", "linked_event_failed", "insufficient_funds"]);
    assert_eq!(app.snapshot(&accounts).await, before, "a failed chain changes nothing");
    for id in ids {
        app.get(&format!("/api/transfers/{id}")).await.expect_problem(404, "not_found");
    }

    // The same chain that fits commits as a whole; an unlinked neighbour stands alone.
    let mut ok_first = transfer_body(Uuid::now_v7(), alice, bob, 600);
    ok_first["flags"] = json!({ "linked": true });
    let ok_second = transfer_body(Uuid::now_v7(), bob, alice, 100);
    let alone = transfer_body(Uuid::now_v7(), alice, bank, 10_000);
    let response = app
        .post("/api/transfers/batch", &json!({ "transfers": [ok_first, ok_second, alone] }))
        .await
        .expect(200);
    let statuses: Vec<&str> = response["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["created", "created", "failed"]);
    assert_eq!(i(&app.balances(alice).await["posted"]), 500);
    assert_eq!(i(&app.balances(bob).await["posted"]), 500);

    // A chain left open at the end of the batch is refused as a whole.
    let mut open = transfer_body(Uuid::now_v7(), bank, bob, 1);
    open["flags"] = json!({ "linked": true });
    let response =
        app.post("/api/transfers/batch", &json!({ "transfers": [open] })).await.expect(200);
    assert_eq!(
        response["results"][0]["error"]["type"],
        format!("{PROBLEM_BASE}linked_event_chain_open")
    );
    app.verify_clean().await;
}

async fn idempotency_key_replays_the_first_response(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, alice) = funded_customer(&app, 1_000).await;
    let bob = app.open_account(PLAIN).await;
    let key = Uuid::new_v4().to_string();
    let body = transfer_body(Uuid::now_v7(), alice, bob, 100);

    let first = app.post_with_key("/api/transfers", &key, &body).await;
    first.expect(201);
    assert_eq!(first.header("idempotent-replayed"), None);
    let replay = app.post_with_key("/api/transfers", &key, &body).await;
    assert_eq!(replay.status, first.status);
    assert_eq!(replay.text, first.text, "the replay is byte-for-byte the first response");
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.header("content-type"), Some("application/json"));

    let before = app.snapshot(&[alice, bob]).await;
    let mut other = body.clone();
    other["amount"] = json!(101);
    app.post_with_key("/api/transfers", &key, &other)
        .await
        .expect_problem(422, "idempotency_key_reused");
    // The same body on another endpoint is another request, too.
    app.post_with_key("/api/transfers/batch", &key, &json!({ "transfers": [body] }))
        .await
        .expect_problem(422, "idempotency_key_reused");
    assert_eq!(app.snapshot(&[alice, bob]).await, before);
    assert_eq!(i(&app.balances(alice).await["posted"]), 900, "moved once");

    // A refusal is replayed too, as the same problem.
    let key = Uuid::new_v4().to_string();
    let too_much = transfer_body(Uuid::now_v7(), alice, bob, 5_000);
    let refused = app.post_with_key("/api/transfers", &key, &too_much).await;
    refused.expect_problem(422, "insufficient_funds");
    let replayed = app.post_with_key("/api/transfers", &key, &too_much).await;
    assert_eq!(replayed.status, 422);
    assert_eq!(replayed.header("idempotent-replayed"), Some("true"));
    assert_eq!(replayed.header("content-type"), Some("application/problem+json"));
    assert_eq!(replayed.json()["type"], refused.json()["type"]);

    // A key that is not visible ASCII, or too long, is refused before anything runs.
    let long_key = "k".repeat(256);
    app.post_with_key("/api/transfers", &long_key, &transfer_body(Uuid::now_v7(), alice, bob, 1))
        .await
        .expect_problem(400, "invalid_idempotency_key");
    assert_eq!(app.snapshot(&[alice, bob]).await, before);
}

/// One malformed request and the problem it must produce.
struct BadRequest {
    name: &'static str,
    method: reqwest::Method,
    path: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    idempotency_key: bool,
    status: u16,
    code: &'static str,
}

fn bad(
    name: &'static str,
    path: &str,
    body: impl Into<Vec<u8>>,
    status: u16,
    code: &'static str,
) -> BadRequest {
    BadRequest {
        name,
        method: reqwest::Method::POST,
        path: path.to_owned(),
        content_type: Some("application/json"),
        body: body.into(),
        idempotency_key: false,
        status,
        code,
    }
}

async fn send_bad(app: &TestApp, case: &BadRequest) -> Reply {
    let mut request =
        app.client.request(case.method.clone(), format!("{}{}", app.address, case.path));
    if let Some(content_type) = case.content_type {
        request = request.header("content-type", content_type);
    }
    if case.idempotency_key {
        request = request.header("idempotency-key", Uuid::new_v4().to_string());
    }
    if !case.body.is_empty() {
        request = request.body(case.body.clone());
    }
    Reply::read(request.send().await.unwrap()).await
}

async fn bad_input_is_a_problem_and_changes_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let (bank, alice) = funded_customer(&app, 1_000).await;
    let bob = app.open_account(NO_OVERDRAFT).await;
    let dollars = app.open_account_in("USD", PLAIN).await;
    let hold = app.hold(alice, bob, 100).await;
    let accounts = [bank, alice, bob, dollars];
    let before = app.snapshot(&accounts).await;

    let transfer = |fields: &str| -> String {
        format!(
            r#"{{"id":"{}","debit_account_id":"{alice}","credit_account_id":"{bob}","currency":"EUR"{fields}}}"#,
            Uuid::now_v7()
        )
    };
    let unknown = Uuid::now_v7();
    let mut oversized = transfer(r#","amount":1,"code":1"#).into_bytes();
    oversized.truncate(oversized.len() - 1);
    oversized.extend(format!(r#","pad":"{}"}}"#, "x".repeat(1024 * 1024)).into_bytes());
    let over_batch: Vec<Value> =
        (0..1001).map(|_| transfer_body(Uuid::now_v7(), alice, bob, 1)).collect();
    let history = format!("/api/accounts/{alice}/history");
    let long = "x".repeat(100 * 1024);

    let mut cases = vec![
        bad(
            "unknown credit account",
            "/api/transfers",
            format!(
                r#"{{"id":"{}","debit_account_id":"{alice}","credit_account_id":"{unknown}","amount":1,"currency":"EUR"}}"#,
                Uuid::now_v7()
            ),
            422,
            "credit_account_not_found",
        ),
        bad(
            "unknown debit account",
            "/api/transfers",
            format!(
                r#"{{"id":"{}","debit_account_id":"{unknown}","credit_account_id":"{bob}","amount":1,"currency":"EUR"}}"#,
                Uuid::now_v7()
            ),
            422,
            "debit_account_not_found",
        ),
        bad(
            "transfer currency differs from the accounts'",
            "/api/transfers",
            format!(
                r#"{{"id":"{}","debit_account_id":"{alice}","credit_account_id":"{bob}","amount":1,"currency":"USD"}}"#,
                Uuid::now_v7()
            ),
            422,
            "currency_mismatch",
        ),
        bad(
            "accounts in different currencies",
            "/api/transfers",
            format!(
                r#"{{"id":"{}","debit_account_id":"{alice}","credit_account_id":"{dollars}","amount":1,"currency":"EUR"}}"#,
                Uuid::now_v7()
            ),
            422,
            "accounts_must_have_same_currency",
        ),
        bad(
            "same account on both sides",
            "/api/transfers",
            format!(
                r#"{{"id":"{}","debit_account_id":"{alice}","credit_account_id":"{alice}","amount":1,"currency":"EUR"}}"#,
                Uuid::now_v7()
            ),
            422,
            "accounts_must_be_different",
        ),
        bad(
            "unknown currency code",
            "/api/transfers",
            format!(
                r#"{{"id":"{}","debit_account_id":"{alice}","credit_account_id":"{bob}","amount":1,"currency":"XYZ"}}"#,
                Uuid::now_v7()
            ),
            422,
            "invalid_body",
        ),
        bad(
            "lower-case currency code",
            "/api/transfers",
            transfer(r#","amount":1"#).replace("EUR", "eur"),
            422,
            "invalid_body",
        ),
        bad(
            "account in an unknown currency",
            "/api/accounts",
            r#"{"currency":"EURO","owner":"x"}"#,
            422,
            "invalid_body",
        ),
        bad(
            "account in gold",
            "/api/accounts",
            r#"{"currency":"XAU","owner":"x"}"#,
            422,
            "invalid_body",
        ),
        bad(
            "account with an empty owner",
            "/api/accounts",
            r#"{"currency":"EUR","owner":"  "}"#,
            422,
            "invalid_body",
        ),
        bad(
            "the payments' transfer code",
            "/api/transfers",
            transfer(r#","amount":1,"code":20"#),
            422,
            "reserved_code",
        ),
        bad("negative amount", "/api/transfers", transfer(r#","amount":-5"#), 422, "invalid_body"),
        bad("zero amount", "/api/transfers", transfer(r#","amount":0"#), 422, "invalid_body"),
        bad(
            "fractional amount",
            "/api/transfers",
            transfer(r#","amount":10.5"#),
            422,
            "invalid_body",
        ),
        bad("exponent amount", "/api/transfers", transfer(r#","amount":1e3"#), 422, "invalid_body"),
        bad(
            "amount as a string",
            "/api/transfers",
            transfer(r#","amount":"10""#),
            422,
            "invalid_body",
        ),
        bad(
            "amount above i64",
            "/api/transfers",
            transfer(r#","amount":9223372036854775808"#),
            422,
            "invalid_body",
        ),
        bad("huge amount", "/api/transfers", transfer(r#","amount":1e400"#), 400, "malformed_json"),
        bad("missing amount", "/api/transfers", transfer(""), 422, "missing_field"),
        bad(
            "code above u16",
            "/api/transfers",
            transfer(r#","amount":1,"code":65536"#),
            422,
            "invalid_body",
        ),
        bad("malformed JSON", "/api/transfers", r#"{"id":"#, 400, "malformed_json"),
        bad("empty body", "/api/transfers", "", 400, "malformed_json"),
        bad("JSON that is not an object", "/api/transfers", "[1,2]", 422, "invalid_body"),
        bad(
            "unknown field",
            "/api/transfers",
            transfer(r#","amount":1,"memo":"hi""#),
            422,
            "invalid_body",
        ),
        bad(
            "unknown flag",
            "/api/transfers",
            transfer(r#","amount":1,"flags":{"urgent":true}"#),
            422,
            "invalid_body",
        ),
        bad(
            "two kinds of flags",
            "/api/transfers",
            transfer(r#","amount":1,"flags":{"pending":true,"void_pending":true}"#),
            422,
            "invalid_body",
        ),
        bad(
            "timeout without pending",
            "/api/transfers",
            transfer(r#","amount":1,"timeout_seconds":5"#),
            422,
            "invalid_body",
        ),
        bad(
            "linked single transfer",
            "/api/transfers",
            transfer(r#","amount":1,"flags":{"linked":true}"#),
            422,
            "linked_event_chain_open",
        ),
        bad(
            "overdraft",
            "/api/transfers",
            transfer(r#","amount":1000"#),
            422,
            "insufficient_funds",
        ),
        bad(
            "invalid UUID in the body",
            "/api/transfers",
            r#"{"id":"nope","amount":1}"#,
            422,
            "invalid_body",
        ),
        bad(
            "empty batch",
            "/api/transfers/batch",
            r#"{"transfers":[]}"#,
            422,
            "too_many_transfers",
        ),
        bad(
            "batch over the limit",
            "/api/transfers/batch",
            json!({ "transfers": over_batch }).to_string(),
            422,
            "too_many_transfers",
        ),
        bad(
            "batch with a bad amount",
            "/api/transfers/batch",
            format!(r#"{{"transfers":[{}]}}"#, transfer(r#","amount":0"#)),
            422,
            "invalid_body",
        ),
        bad(
            "post more than held",
            &format!("/api/transfers/{hold}/post"),
            format!(r#"{{"id":"{}","amount":101}}"#, Uuid::now_v7()),
            422,
            "exceeds_pending_amount",
        ),
        bad(
            "post with a negative amount",
            &format!("/api/transfers/{hold}/post"),
            format!(r#"{{"id":"{}","amount":-1}}"#, Uuid::now_v7()),
            422,
            "invalid_body",
        ),
        bad(
            "void of an unknown hold",
            &format!("/api/transfers/{unknown}/void"),
            format!(r#"{{"id":"{}"}}"#, Uuid::now_v7()),
            404,
            "not_found",
        ),
        bad(
            "invalid UUID in a POST path",
            "/api/transfers/not-a-uuid/post",
            format!(r#"{{"id":"{}"}}"#, Uuid::now_v7()),
            404,
            "not_found",
        ),
        bad("oversized body", "/api/transfers", oversized.clone(), 413, "body_too_large"),
        // Parser messages quote the input; the problem must still be whole and small.
        bad(
            "100 KB unknown field name",
            "/api/transfers",
            transfer(&format!(r#","{long}":1"#)),
            422,
            "invalid_body",
        ),
        bad(
            "100 KB string as amount",
            "/api/transfers",
            transfer(&format!(r#","amount":"{long}""#)),
            422,
            "invalid_body",
        ),
        bad(
            "100 KB owner",
            "/api/accounts",
            format!(r#"{{"currency":"EUR","owner":"{long}"}}"#),
            422,
            "invalid_body",
        ),
        bad(
            "owner with a control character",
            "/api/accounts",
            r#"{"currency":"EUR","owner":"a\u0000b"}"#,
            422,
            "invalid_body",
        ),
        bad(
            "invalid UTF-8",
            "/api/accounts",
            b"{\"currency\":\"EUR\",\"owner\":\"\xff\xfe\"}".to_vec(),
            400,
            "malformed_json",
        ),
        bad(
            "duplicate field",
            "/api/transfers",
            transfer(r#","amount":1,"amount":2"#),
            422,
            "invalid_body",
        ),
        bad(
            "deeply nested JSON",
            "/api/transfers",
            format!(r#"{{"id":{}"#, "[".repeat(10_000)),
            422,
            "invalid_body",
        ),
        bad(
            "null currency",
            "/api/transfers",
            transfer(r#","amount":1"#).replace(r#""EUR""#, "null"),
            422,
            "missing_field",
        ),
        bad(
            "pending_id without a flag",
            "/api/transfers",
            transfer(&format!(r#","amount":1,"pending_id":"{hold}""#)),
            422,
            "invalid_body",
        ),
        bad(
            "unknown field in a post",
            &format!("/api/transfers/{hold}/post"),
            format!(r#"{{"id":"{}","memo":1}}"#, Uuid::now_v7()),
            422,
            "invalid_body",
        ),
    ];
    let mut wrong_type = bad(
        "wrong content type",
        "/api/transfers",
        transfer(r#","amount":1"#),
        415,
        "unsupported_media_type",
    );
    wrong_type.content_type = Some("text/plain");
    cases.push(wrong_type);
    let mut no_type = bad(
        "no content type",
        "/api/transfers",
        transfer(r#","amount":1"#),
        415,
        "unsupported_media_type",
    );
    no_type.content_type = None;
    cases.push(no_type);
    let mut form =
        bad("form body", "/api/accounts", "currency=EUR&owner=x", 415, "unsupported_media_type");
    form.content_type = Some("application/x-www-form-urlencoded");
    cases.push(form);
    let mut oversized_keyed = bad(
        "oversized body with an Idempotency-Key",
        "/api/transfers",
        oversized,
        413,
        "body_too_large",
    );
    oversized_keyed.idempotency_key = true;
    cases.push(oversized_keyed);
    let mut malformed_keyed =
        bad("malformed JSON with an Idempotency-Key", "/api/transfers", "{", 400, "malformed_json");
    malformed_keyed.idempotency_key = true;
    cases.push(malformed_keyed);
    let get = |name: &'static str, path: String, status: u16, code: &'static str| BadRequest {
        method: reqwest::Method::GET,
        content_type: None,
        body: Vec::new(),
        ..bad(name, &path, "", status, code)
    };
    cases.extend([
        get("invalid UUID in the path", "/api/accounts/not-a-uuid".into(), 404, "not_found"),
        get("invalid UUID in a transfer path", "/api/transfers/123".into(), 404, "not_found"),
        get("unknown account", format!("/api/accounts/{unknown}"), 404, "not_found"),
        get(
            "balances of an unknown account",
            format!("/api/accounts/{unknown}/balances"),
            404,
            "not_found",
        ),
        get(
            "history of an unknown account",
            format!("/api/accounts/{unknown}/history"),
            404,
            "not_found",
        ),
        get("unknown route", "/api/nope".into(), 404, "not_found"),
        get("unknown top-level route", "/admin".into(), 404, "not_found"),
        get("wrong method", "/api/transfers".into(), 405, "method_not_allowed"),
        get("history limit 0", format!("{history}?limit=0"), 400, "invalid_query"),
        get("history limit 501", format!("{history}?limit=501"), 400, "invalid_query"),
        get("history limit not a number", format!("{history}?limit=ten"), 400, "invalid_query"),
        get("history limit negative", format!("{history}?limit=-1"), 400, "invalid_query"),
        get("garbage cursor", format!("{history}?cursor=garbage"), 400, "invalid_query"),
        get("negative cursor", format!("{history}?cursor=-5"), 400, "invalid_query"),
        get("unknown query parameter", format!("{history}?page=2"), 400, "invalid_query"),
        get("limit above u32", format!("{history}?limit=4294967296"), 400, "invalid_query"),
        get(
            "cursor above i64",
            format!("{history}?cursor=99999999999999999999"),
            400,
            "invalid_query",
        ),
        get(
            "20 KB id in the path",
            format!("/api/accounts/{}", "x".repeat(20_000)),
            404,
            "not_found",
        ),
    ]);
    let mut delete =
        get("DELETE of an account", format!("/api/accounts/{alice}"), 405, "method_not_allowed");
    delete.method = reqwest::Method::DELETE;
    cases.push(delete);
    let mut put =
        get("PUT of a transfer", format!("/api/transfers/{hold}"), 405, "method_not_allowed");
    put.method = reqwest::Method::PUT;
    cases.push(put);

    let mut failures = Vec::new();
    for case in &cases {
        let reply = send_bad(&app, case).await;
        if let Err(error) = reply.check_problem(case.status, case.code) {
            failures.push(format!("{}: {error}", case.name));
        } else if reply.text.len() > MAX_PROBLEM_BYTES {
            failures.push(format!("{}: problem of {} bytes", case.name, reply.text.len()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} bad request(s) not answered as expected:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(app.snapshot(&accounts).await, before, "bad requests changed the ledger");
    app.verify_clean().await;
}

async fn a_balance_that_would_overflow_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let bank = app.open_account(PLAIN).await;
    let whale = app.open_account(PLAIN).await;
    app.transfer_ok(bank, whale, i64::MAX).await;
    let full = app.snapshot(&[bank, whale]).await;
    app.transfer(bank, whale, 1).await.expect_problem(422, "balance_overflow");
    assert_eq!(app.snapshot(&[bank, whale]).await, full);

    // A hold fits (pending balances are separate) but posting it would overflow.
    let hold = app.hold(bank, whale, 1).await;
    let held = app.snapshot(&[bank, whale]).await;
    app.post(&format!("/api/transfers/{hold}/post"), &json!({ "id": Uuid::now_v7() }))
        .await
        .expect_problem(422, "balance_overflow");
    assert_eq!(app.snapshot(&[bank, whale]).await, held);
    app.post(&format!("/api/transfers/{hold}/void"), &json!({ "id": Uuid::now_v7() }))
        .await
        .expect(201);

    let whale_balances = app.balances(whale).await;
    assert_eq!(i(&whale_balances["credits_posted"]), i64::MAX);
    assert_eq!(i(&whale_balances["available"]), i64::MAX);
    let bank_balances = app.balances(bank).await;
    assert_eq!(bank_balances["posted"], json!(-i64::MAX));
    app.verify_clean().await;
}

async fn health_ready_and_metrics(backend: Backend) {
    let app = spawn_app(backend).await;
    assert_eq!(app.get("/health").await.expect(200)["status"], "ok");
    let ready = app.get("/ready").await.expect(200);
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["database"], "ok");

    let (bank, alice) = funded_customer(&app, 100).await;
    app.transfer_ok(alice, bank, 1).await;
    app.get("/api/nope").await;
    let metrics = app.metrics().await;
    for series in [
        "http_requests_total",
        "route=\"/api/transfers\"",
        "status=\"201\"",
        "http_request_duration_seconds",
        "ferrobank_ledger_batch_transfers",
        "ferrobank_ledger_queue_depth",
        "banking_database_connection_errors_total",
    ] {
        assert!(metrics.contains(series), "metrics lack {series}:\n{metrics}");
    }
    // An unknown path is counted under one label, not one series per path.
    assert!(metrics.contains("route=\"unmatched\""), "{metrics}");
    assert!(!metrics.contains("/api/nope"), "{metrics}");
    app.stop().await;
}

/// The ledger and identity-admin routes the router serves. The documentation routes
/// themselves (`/api/openapi.json`, `/api/docs`) are not part of the described API.
const API_ROUTES: &[(&str, &str)] = &[
    ("post", "/api/accounts"),
    ("get", "/api/accounts/{id}"),
    ("get", "/api/accounts/{id}/balances"),
    ("get", "/api/accounts/{id}/history"),
    ("post", "/api/transfers"),
    ("post", "/api/transfers/batch"),
    ("get", "/api/transfers/{id}"),
    ("post", "/api/transfers/{id}/post"),
    ("post", "/api/transfers/{id}/void"),
    ("post", "/api/payments"),
    ("get", "/api/payments"),
    ("get", "/api/payments/{id}"),
    ("post", "/api/payments/{id}/cancel"),
    ("get", "/api/risk/reviews"),
    ("get", "/api/risk/reviews/{id}"),
    ("post", "/api/risk/reviews/{id}/approve"),
    ("post", "/api/risk/reviews/{id}/reject"),
    ("get", "/api/notifications"),
    ("post", "/api/notifications/{id}/read"),
    ("get", "/api/webhooks"),
    ("post", "/api/webhooks"),
    ("get", "/api/webhooks/{id}"),
    ("delete", "/api/webhooks/{id}"),
    ("get", "/api/webhooks/{id}/deliveries"),
    ("post", "/api/webhooks/{id}/deliveries/{delivery_id}/replay"),
    ("get", "/api/audit"),
    ("get", "/api/audit/verify"),
    ("get", "/api/activity"),
    ("get", "/admin/realms/{realm}/users"),
    ("post", "/admin/realms/{realm}/users"),
    ("get", "/admin/realms/{realm}/users/{id}"),
    ("put", "/admin/realms/{realm}/users/{id}"),
    ("delete", "/admin/realms/{realm}/users/{id}"),
    ("put", "/admin/realms/{realm}/users/{id}/reset-password"),
    ("get", "/admin/realms/{realm}/users/{id}/role-mappings/realm"),
    ("post", "/admin/realms/{realm}/users/{id}/role-mappings/realm"),
    ("delete", "/admin/realms/{realm}/users/{id}/role-mappings/realm"),
    ("get", "/admin/realms/{realm}/roles"),
    ("post", "/admin/realms/{realm}/keys/rotate"),
];

async fn openapi_describes_every_api_route(backend: Backend) {
    // With the provider, as `ferrobank up` serves: the admin API is mounted too.
    let app = common::spawn_app_with_idp(backend).await;
    let reply = app.get("/api/openapi.json").await;
    let doc = reply.expect(200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "version: {}", doc["openapi"]);
    let paths = doc["paths"].as_object().unwrap();
    let described: BTreeSet<(String, String)> = paths
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|k| ["get", "post", "put", "patch", "delete"].contains(&k.as_str()))
                .map(move |m| (m.clone(), path.clone()))
        })
        .collect();
    let served: BTreeSet<(String, String)> =
        API_ROUTES.iter().map(|(m, p)| ((*m).to_owned(), (*p).to_owned())).collect();
    assert_eq!(described, served, "OpenAPI paths differ from the routes served");
    for (method, path) in &described {
        let operation = &paths[path.as_str()][method.as_str()];
        let responses = operation["responses"].as_object().unwrap();
        assert!(
            responses.keys().any(|s| s.starts_with('2')),
            "{method} {path} has no success response"
        );
        // The route really answers: not the fallback's 404, not 405.
        let path = path.replace("{id}", &Uuid::now_v7().to_string()).replace("{realm}", "banking");
        let url = format!("{}{path}", app.address);
        let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let answer = Reply::read(
            app.client.request(method.clone(), url).json(&json!({})).send().await.unwrap(),
        )
        .await;
        assert_ne!(answer.status, 405, "{method} {path} not served");
        assert!(answer.status.as_u16() < 500, "{method} {path}: {}", answer.text);
        if answer.status == 404 {
            assert_ne!(answer.json()["detail"], "no such endpoint", "{method} {path} not served");
        }
    }
    let components = doc["components"]["schemas"].as_object().unwrap();
    assert!(components.contains_key("Problem") && components.contains_key("TransferRequest"));

    let docs = app.get("/api/docs").await;
    assert_eq!(docs.status, 200);
    assert!(docs.header("content-type").unwrap().starts_with("text/html"));
    assert!(docs.text.contains("<html") && docs.text.contains("/api/transfers"), "{}", docs.text);
}
