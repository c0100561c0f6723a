//! The money path end to end in one process, on SQLite and PostgreSQL: a payment is
//! risk-checked and held, announced through the outbox, settled by the payment worker
//! against the built-in gateway simulator, and every refusal changes nothing.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{AccountSpec, TestApp, TestIdp, poll_until, spawn_app, spawn_configured};
use ferrobank_adapters::Backend;
use ferrobank_application::payments::PaymentService;
use ferrobank_domain::Currency;
use serde_json::{Value, json};
use uuid::Uuid;

on_both_backends!(
    an_external_payment_goes_from_pending_to_completed_and_is_paid_once,
    an_internal_payment_credits_the_beneficiary,
    bad_payments_are_refused_and_change_nothing,
    a_denied_payment_is_rejected_and_moves_nothing,
    a_held_payment_waits_for_a_risk_analyst,
    a_pending_payment_can_be_cancelled_once_and_only_by_its_owner,
    lists_filter_by_status_and_page_with_a_cursor,
    events_are_cloudevents_carrying_the_request_traceparent,
);

const WAIT: Duration = Duration::from_secs(15);
const IBAN: &str = "DE89 3704 0044 0532 0130 00";

/// A funded customer account (no overdraft) and the bank account that funded it.
async fn funded(app: &TestApp, amount: i64) -> Uuid {
    let bank = app.open_account(AccountSpec::default()).await;
    let account = app.open_account(AccountSpec { no_overdraft: true }).await;
    app.transfer_ok(bank, account, amount).await;
    account
}

fn external(debtor: Uuid, amount: i64) -> Value {
    json!({
        "debtor_account": debtor,
        "beneficiary": {"kind": "external", "iban": IBAN, "name": "Carol Example", "country": "DE"},
        "amount": amount,
        "currency": "EUR",
        "reference": "Invoice 42",
    })
}

fn internal(debtor: Uuid, beneficiary: Uuid, amount: i64) -> Value {
    json!({
        "debtor_account": debtor,
        "beneficiary": {"kind": "internal", "account": beneficiary},
        "amount": amount,
        "currency": "EUR",
    })
}

async fn final_status(app: &TestApp, id: &str) -> Value {
    poll_until("the payment to finish", WAIT, || async {
        let payment = app.get(&format!("/api/payments/{id}")).await.expect(200);
        let done = matches!(
            payment["status"].as_str(),
            Some("completed" | "failed" | "cancelled" | "rejected")
        );
        done.then_some(payment)
    })
    .await
}

fn clearing() -> Uuid {
    PaymentService::clearing_account(Currency::parse("EUR").unwrap()).0
}

async fn an_external_payment_goes_from_pending_to_completed_and_is_paid_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = funded(&app, 100_000).await;
    let clearing_before = app.balances(clearing()).await;

    let created = app.post_with_key("/api/payments", "pay-1", &external(alice, 2_500)).await;
    let payment = created.expect(201);
    assert!(matches!(payment["status"].as_str(), Some("pending")), "{payment}");
    assert_eq!(payment["risk"]["outcome"], "allow");
    let id = payment["payment_id"].as_str().unwrap().to_owned();

    let done = final_status(&app, &id).await;
    assert_eq!(done["status"], "completed", "{done}");
    let balances = app.balances(alice).await;
    assert_eq!(
        (balances["debits_posted"].as_i64(), balances["debits_pending"].as_i64()),
        (Some(2_500), Some(0))
    );
    let clearing_after = app.balances(clearing()).await;
    assert_eq!(
        clearing_after["credits_posted"].as_i64().unwrap()
            - clearing_before["credits_posted"].as_i64().unwrap(),
        2_500
    );

    // The same key again: the first answer, nothing paid twice.
    let again = app.post_with_key("/api/payments", "pay-1", &external(alice, 2_500)).await;
    assert_eq!(again.json()["payment_id"], id.as_str());
    // The same key with another payment: refused.
    let other = app.post_with_key("/api/payments", "pay-1", &external(alice, 9_999)).await;
    assert!(other.status.is_client_error(), "{:?}", other.text);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let balances = app.balances(alice).await;
    assert_eq!(balances["debits_posted"].as_i64(), Some(2_500), "paid once: {balances}");
    let page = app.get(&format!("/api/payments?account={alice}")).await.expect(200);
    assert_eq!(page["payments"].as_array().unwrap().len(), 1, "{page}");
    app.verify_clean().await;
}

async fn an_internal_payment_credits_the_beneficiary(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = funded(&app, 10_000).await;
    let bob = app.open_account(AccountSpec { no_overdraft: true }).await;
    let payment =
        app.post_with_key("/api/payments", "k", &internal(alice, bob, 1_000)).await.expect(201);
    let done = final_status(&app, payment["payment_id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "completed");
    assert_eq!(app.balances(bob).await["posted"].as_i64(), Some(1_000));
    assert_eq!(app.balances(alice).await["available"].as_i64(), Some(9_000));
    app.verify_clean().await;
}

async fn bad_payments_are_refused_and_change_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = funded(&app, 1_000).await;
    let dollars = app.open_account_in("USD", AccountSpec::default()).await;
    let before = app.snapshot(&[alice]).await;
    let mut bad_iban = external(alice, 100);
    bad_iban["beneficiary"]["iban"] = json!("DE89 3704 0044 0532 0130 01");
    let mut bad_reference = external(alice, 100);
    bad_reference["reference"] = json!("<script>");
    let mut unknown_field = external(alice, 100);
    unknown_field["surprise"] = json!(true);
    let mut zero = external(alice, 100);
    zero["amount"] = json!(0);
    let mut float = external(alice, 100);
    float["amount"] = json!(1.5);
    let mut usd = external(alice, 100);
    usd["currency"] = json!("USD");
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        ("bad IBAN checksum", bad_iban, 422, "invalid_body"),
        ("bad reference", bad_reference, 422, "reference_invalid_characters"),
        ("unknown field", unknown_field, 422, "invalid_body"),
        ("zero amount", zero, 422, "invalid_body"),
        ("fractional amount", float, 422, "invalid_body"),
        ("to itself", internal(alice, alice, 100), 422, "payment_same_account"),
        ("insufficient funds", external(alice, 5_000), 422, "insufficient_funds"),
        ("unknown debtor", external(Uuid::now_v7(), 100), 404, "not_found"),
        (
            "beneficiary in another currency",
            internal(alice, dollars, 100),
            422,
            "accounts_must_have_same_currency",
        ),
        ("not the account's currency", usd, 422, "currency_mismatch"),
    ];
    for (i, (what, body, status, code)) in cases.into_iter().enumerate() {
        let reply = app.post_with_key("/api/payments", &format!("bad-{i}"), &body).await;
        let problem = reply.check_problem(status, code);
        assert!(problem.is_ok(), "{what}: {problem:?}: {}", reply.text);
    }
    let no_key = app.post("/api/payments", &external(alice, 100)).await;
    no_key.expect_problem(400, "idempotency_key_required");
    let not_json = app
        .client
        .post(format!("{}/api/payments", app.address))
        .header("idempotency-key", "nj")
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status().as_u16(), 400);
    assert_eq!(app.snapshot(&[alice]).await, before, "a refused payment changed the account");
    let page = app.get(&format!("/api/payments?account={alice}")).await.expect(200);
    assert_eq!(page["payments"], json!([]));
    app.get("/api/payments/not-a-uuid").await.expect_problem(404, "not_found");
    app.get(&format!("/api/payments/{}", Uuid::now_v7())).await.expect_problem(404, "not_found");
    app.get(&format!("/api/payments?account={alice}&status=nope"))
        .await
        .expect_problem(400, "invalid_query");
    app.get(&format!("/api/payments?account={alice}&limit=0"))
        .await
        .expect_problem(400, "invalid_query");
    app.verify_clean().await;
}

async fn a_denied_payment_is_rejected_and_moves_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = funded(&app, 100_000).await;
    let mut body = external(alice, 1_000);
    body["beneficiary"]["country"] = json!("KP");
    let payment = app.post_with_key("/api/payments", "kp", &body).await.expect(201);
    assert_eq!(payment["status"], "rejected", "{payment}");
    assert_eq!(payment["risk"]["outcome"], "deny");
    assert_eq!(payment["failure_code"], "risk_denied");
    let codes: Vec<&str> = payment["risk"]["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["code"].as_str())
        .collect();
    assert!(codes.contains(&"blocked_country"), "{codes:?}");
    assert!(payment["hold_id"].is_null());
    let balances = app.balances(alice).await;
    assert_eq!(
        (balances["debits_pending"].as_i64(), balances["debits_posted"].as_i64()),
        (Some(0), Some(0))
    );
    app.verify_clean().await;
}

/// A server trusting `idp` and running no worker (payments stay where they are), or with one.
async fn with_auth(backend: Backend, idp: &TestIdp, worker: bool) -> TestApp {
    spawn_configured(backend, |config| {
        config.identity.enabled = false;
        config.auth.issuer = Some(idp.issuer.clone());
        config.payments.worker = worker;
    })
    .await
}

/// A customer `subject` with a funded account opened through the API.
async fn customer_account(
    app: &TestApp,
    idp: &TestIdp,
    subject: &str,
    amount: i64,
) -> (String, Uuid) {
    let token = idp.token(subject, &["customer"]);
    let account = Uuid::now_v7();
    let body = json!({"id": account, "currency": "EUR", "owner": subject, "flags": {"debits_must_not_exceed_credits": true}});
    app.post_as(&token, "/api/accounts", &body).await.expect(201);
    let admin = idp.token("admin", &["banking-admin"]);
    let bank = Uuid::now_v7();
    app.post_as(&admin, "/api/accounts", &json!({"id": bank, "currency": "EUR", "owner": "bank"}))
        .await
        .expect(201);
    let transfer = common::transfer_body(Uuid::now_v7(), bank, account, amount);
    app.post_as(&admin, "/api/transfers", &transfer).await.expect(201);
    (token, account)
}

async fn a_held_payment_waits_for_a_risk_analyst(backend: Backend) {
    let idp = TestIdp::start().await;
    let app = with_auth(backend, &idp, true).await;
    let (alice, account) = customer_account(&app, &idp, "alice", 2_000_000).await;
    let analyst = idp.token("rita", &["risk-analyst"]);
    // Above the standard tier's review threshold (5,000.00), below its maximum.
    let held = app
        .post_as_with_key(&alice, "/api/payments", "big-1", &external(account, 600_000))
        .await
        .expect(201);
    assert_eq!(held["status"], "held_for_review", "{held}");
    let id = held["payment_id"].as_str().unwrap().to_owned();
    let second = app
        .post_as_with_key(&alice, "/api/payments", "big-2", &external(account, 700_000))
        .await
        .expect(201);
    let second_id = second["payment_id"].as_str().unwrap().to_owned();
    assert_eq!(app.get_as(&alice, &format!("/api/accounts/{account}/balances")).await.expect(200)["debits_pending"].as_i64(), Some(1_300_000));

    app.get_as(&alice, "/api/risk/reviews").await.expect_problem(403, "forbidden");
    // Held is not pending: the customer cannot cancel it.
    app.post_as(&alice, &format!("/api/payments/{id}/cancel"), &json!({}))
        .await
        .expect_problem(409, "payment_not_cancellable");
    app.post_as(&alice, &format!("/api/risk/reviews/{id}/approve"), &json!({}))
        .await
        .expect_problem(403, "forbidden");
    let queue = app.get_as(&analyst, "/api/risk/reviews").await.expect(200);
    let listed: Vec<&str> = queue["payments"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["payment_id"].as_str())
        .collect();
    assert_eq!(listed, vec![second_id.as_str(), id.as_str()]);
    app.get_as(&analyst, &format!("/api/risk/reviews/{id}")).await.expect(200);
    // Analysts read payments, never make them.
    app.post_as_with_key(&analyst, "/api/payments", "nope", &external(account, 1))
        .await
        .expect_problem(404, "not_found");

    let approved = app
        .post_as(&analyst, &format!("/api/risk/reviews/{id}/approve"), &json!({}))
        .await
        .expect(200);
    assert_eq!(
        (approved["status"].as_str(), approved["reviewer"].as_str()),
        (Some("pending"), Some("rita"))
    );
    let rejected = app
        .post_as(&analyst, &format!("/api/risk/reviews/{second_id}/reject"), &json!({}))
        .await
        .expect(200);
    assert_eq!(
        (rejected["status"].as_str(), rejected["failure_code"].as_str()),
        (Some("rejected"), Some("review_rejected"))
    );
    // Decided once: a second decision is refused.
    app.post_as(&analyst, &format!("/api/risk/reviews/{second_id}/approve"), &json!({}))
        .await
        .expect_problem(409, "payment_invalid_transition");

    let done = poll_until("the approved payment to complete", WAIT, || async {
        let p = app.get_as(&alice, &format!("/api/payments/{id}")).await.expect(200);
        (p["status"] == "completed").then_some(p)
    })
    .await;
    assert_eq!(done["amount"], 600_000);
    let balances =
        app.get_as(&alice, &format!("/api/accounts/{account}/balances")).await.expect(200);
    assert_eq!(
        (balances["debits_posted"].as_i64(), balances["debits_pending"].as_i64()),
        (Some(600_000), Some(0)),
        "{balances}"
    );
    app.verify_clean().await;
}

async fn a_pending_payment_can_be_cancelled_once_and_only_by_its_owner(backend: Backend) {
    let idp = TestIdp::start().await;
    let app = with_auth(backend, &idp, false).await;
    let (alice, account) = customer_account(&app, &idp, "alice", 10_000).await;
    let mallory = idp.token("mallory", &["customer"]);
    let payment = app
        .post_as_with_key(&alice, "/api/payments", "c1", &external(account, 4_000))
        .await
        .expect(201);
    let id = payment["payment_id"].as_str().unwrap().to_owned();
    assert_eq!(payment["status"], "pending");
    // Another customer neither sees nor cancels it, nor lists the account.
    app.get_as(&mallory, &format!("/api/payments/{id}")).await.expect_problem(404, "not_found");
    app.post_as(&mallory, &format!("/api/payments/{id}/cancel"), &json!({}))
        .await
        .expect_problem(404, "not_found");
    app.get_as(&mallory, &format!("/api/payments?account={account}"))
        .await
        .expect_problem(404, "not_found");
    app.get_as(&mallory, "/api/payments").await.expect_problem(403, "forbidden");
    // Nor pays from it.
    app.post_as_with_key(&mallory, "/api/payments", "m1", &external(account, 1))
        .await
        .expect_problem(404, "not_found");
    // The owner cannot release the hold behind the payment's back through the ledger API:
    // the payments service alone posts or voids it.
    let hold = payment["hold_id"].as_str().unwrap().to_owned();
    for action in ["void", "post"] {
        app.post_as(
            &alice,
            &format!("/api/transfers/{hold}/{action}"),
            &json!({ "id": Uuid::now_v7() }),
        )
        .await
        .expect_problem(404, "not_found");
    }

    let cancelled =
        app.post_as(&alice, &format!("/api/payments/{id}/cancel"), &json!({})).await.expect(200);
    assert_eq!(cancelled["status"], "cancelled");
    // A retried cancel gets the same answer.
    let again = app.post_as(&alice, &format!("/api/payments/{id}/cancel"), &json!({})).await;
    assert_eq!(again.expect(200)["status"], "cancelled");
    let balances =
        app.get_as(&alice, &format!("/api/accounts/{account}/balances")).await.expect(200);
    assert_eq!(balances["available"].as_i64(), Some(10_000), "the hold is released: {balances}");
    app.verify_clean().await;
}

async fn lists_filter_by_status_and_page_with_a_cursor(backend: Backend) {
    let idp = TestIdp::start().await;
    let app = with_auth(backend, &idp, false).await;
    let (alice, account) = customer_account(&app, &idp, "alice", 100_000).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let p = app
            .post_as_with_key(
                &alice,
                "/api/payments",
                &format!("l{i}"),
                &external(account, 100 + i),
            )
            .await
            .expect(201);
        ids.push(p["payment_id"].as_str().unwrap().to_owned());
    }
    app.post_as(&alice, &format!("/api/payments/{}/cancel", ids[1]), &json!({})).await.expect(200);
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = app
            .get_as(&alice, &format!("/api/payments?account={account}&limit=2{cursor}"))
            .await
            .expect(200);
        seen.extend(
            page["payments"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["payment_id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first);
    let cancelled = app
        .get_as(&alice, &format!("/api/payments?account={account}&status=cancelled"))
        .await
        .expect(200);
    assert_eq!(cancelled["payments"].as_array().unwrap().len(), 1);
    assert_eq!(cancelled["payments"][0]["payment_id"], ids[1].as_str());
    let both = app
        .get_as(&alice, &format!("/api/payments?account={account}&status=pending,cancelled"))
        .await
        .expect(200);
    assert_eq!(both["payments"].as_array().unwrap().len(), 5);
}

async fn events_are_cloudevents_carrying_the_request_traceparent(backend: Backend) {
    let app = spawn_app(backend).await;
    let bus = app.running().payments.as_ref().unwrap().bus.clone();
    let mut observer = bus
        .subscribe("test-observer", &["transaction.created", "transaction.completed"])
        .await
        .unwrap();
    let alice = funded(&app, 10_000).await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let reply = app
        .client
        .post(format!("{}/api/payments", app.address))
        .header("idempotency-key", "tp")
        .header("traceparent", traceparent)
        .json(&external(alice, 700))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status().as_u16(), 201);
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let delivery = tokio::time::timeout(WAIT, observer.next()).await.unwrap().unwrap();
        let event = delivery.event().clone();
        delivery.ack().await.unwrap();
        seen.push(event);
    }
    let created = &seen[0];
    assert_eq!(created.type_, "transaction.created");
    assert_eq!(created.traceparent.as_deref(), Some(traceparent));
    assert_eq!(created.subject, alice.to_string(), "keyed by the debtor account");
    assert_eq!(created.data["amount"], 700);
    assert!(Uuid::parse_str(&created.id).is_ok());
    let completed = &seen[1];
    assert_eq!(completed.type_, "transaction.completed");
    assert_eq!(completed.data["status"], "completed");
    assert_eq!(completed.data["payment_id"], created.data["payment_id"]);
}
