//! Many clients at once, on SQLite and PostgreSQL: money moves between a few hot accounts
//! that may not overdraw; afterwards the ledger verifies, no limit is broken, and every
//! balance is exactly the sum of the transfers the clients were told were created.
#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::{AccountSpec, Rng, TestApp, spawn_app, transfer_body};
use ferrobank_adapters::Backend;
use serde_json::{Value, json};
use uuid::Uuid;

const CLIENTS: u64 = 32;
const TRANSFERS_PER_CLIENT: usize = 50;
const HOT_CUSTOMERS: usize = 4;
const OPENING_DEPOSIT: i64 = 1_000;
const MAX_AMOUNT: u64 = 600;

on_both_backends!(
    hot_accounts_under_concurrent_load_stay_exact,
    one_transfer_id_sent_by_many_clients_is_created_once,
    one_idempotency_key_sent_by_many_clients_runs_once,
    one_account_id_opened_by_many_clients_is_opened_once,
);

/// A transfer the server answered 201 to.
#[derive(Debug, Clone, Copy)]
struct Created {
    debit: Uuid,
    credit: Uuid,
    amount: i64,
}

#[derive(Debug, Default)]
struct ClientLog {
    created: Vec<Created>,
    refused: usize,
}

async fn client(app: Arc<TestApp>, seed: u64, bank: Uuid, hot: Vec<Uuid>) -> ClientLog {
    let mut rng = Rng::new(seed);
    let mut log = ClientLog::default();
    for _ in 0..TRANSFERS_PER_CLIENT {
        // One in eight is a top-up from the bank; the rest move money between customers
        // or back to the bank, and may be refused for funds.
        let debit = if rng.below(8) == 0 { bank } else { *rng.pick(&hot) };
        let credit = loop {
            let candidate = if rng.below(6) == 0 { bank } else { *rng.pick(&hot) };
            if candidate != debit {
                break candidate;
            }
        };
        let amount = i64::try_from(1 + rng.below(MAX_AMOUNT)).unwrap();
        let id = Uuid::now_v7();
        let body = transfer_body(id, debit, credit, amount);
        let reply = app.post("/api/transfers", &body).await;
        match reply.status.as_u16() {
            201 => {
                let transfer = reply.json();
                assert_eq!(transfer["id"], id.to_string());
                assert_eq!(transfer["amount"], amount);
                log.created.push(Created { debit, credit, amount });
                // Some clients retry at once, as after a lost response: same answer, no effect.
                if rng.below(10) == 0 {
                    assert_eq!(app.post("/api/transfers", &body).await.expect(200), transfer);
                }
            }
            422 => {
                reply.expect_problem(422, "insufficient_funds");
                assert_ne!(debit, bank, "the bank has no limit");
                log.refused += 1;
            }
            _ => panic!("unexpected answer to a transfer: {} {}", reply.status, reply.text),
        }
    }
    log
}

async fn hot_accounts_under_concurrent_load_stay_exact(backend: Backend) {
    let app = Arc::new(spawn_app(backend).await);
    let bank = app.open_account(AccountSpec::default()).await;
    let mut hot = Vec::new();
    let mut created = Vec::new();
    for _ in 0..HOT_CUSTOMERS {
        let customer = app.open_account(AccountSpec { no_overdraft: true }).await;
        app.transfer_ok(bank, customer, OPENING_DEPOSIT).await;
        created.push(Created { debit: bank, credit: customer, amount: OPENING_DEPOSIT });
        hot.push(customer);
    }

    let tasks: Vec<_> = (0..CLIENTS)
        .map(|seed| tokio::spawn(client(app.clone(), seed + 1, bank, hot.clone())))
        .collect();
    let mut refused = 0;
    for task in tasks {
        let log = task.await.unwrap();
        created.extend(log.created);
        refused += log.refused;
    }
    assert!(refused > 0, "the load never hit a limit; the test proves less than it claims");
    assert!(created.len() > HOT_CUSTOMERS, "nothing moved");

    let report = app.verify_clean().await;
    assert_eq!(report.transfers_checked, created.len() as u64, "transfers in the database");

    let mut expected: HashMap<Uuid, (i64, i64, usize)> = HashMap::new();
    for c in &created {
        let debit = expected.entry(c.debit).or_default();
        debit.0 += c.amount;
        debit.2 += 1;
        let credit = expected.entry(c.credit).or_default();
        credit.1 += c.amount;
        credit.2 += 1;
    }
    for account in std::iter::once(bank).chain(hot.iter().copied()) {
        let (debits, credits, count) = expected[&account];
        let balances = app.balances(account).await;
        let field = |name: &str| balances[name].as_i64().unwrap();
        assert_eq!(field("debits_posted"), debits, "{account}: {balances}");
        assert_eq!(field("credits_posted"), credits, "{account}: {balances}");
        assert_eq!(field("debits_pending"), 0);
        assert_eq!(field("credits_pending"), 0);
        if account != bank {
            assert!(debits <= credits, "{account} overdrawn: {balances}");
        }
        let history = app.history(account).await;
        assert_eq!(history.len(), count, "history of {account}");
        assert_eq!(history[0]["balances_after"], balances, "newest entry of {account}");
        assert_no_overdraft_in(&history, account == bank);
    }
}

/// Every entry of a limited account's history respects the limit at that moment.
fn assert_no_overdraft_in(history: &[Value], unlimited: bool) {
    if unlimited {
        return;
    }
    for entry in history {
        let after = &entry["balances_after"];
        let get = |name: &str| after[name].as_i64().unwrap();
        assert!(
            get("debits_posted") + get("debits_pending") <= get("credits_posted"),
            "limit broken after {}",
            entry["transfer"]["id"]
        );
    }
}

async fn one_transfer_id_sent_by_many_clients_is_created_once(backend: Backend) {
    let app = Arc::new(spawn_app(backend).await);
    let bank = app.open_account(AccountSpec::default()).await;
    let alice = app.open_account(AccountSpec { no_overdraft: true }).await;
    let body = transfer_body(Uuid::now_v7(), bank, alice, 250);
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (app, body) = (app.clone(), body.clone());
            tokio::spawn(async move { app.post("/api/transfers", &body).await })
        })
        .collect();
    let mut statuses = Vec::new();
    let mut bodies = Vec::new();
    for task in tasks {
        let reply = task.await.unwrap();
        statuses.push(reply.status.as_u16());
        bodies.push(reply.json());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 201 || *s == 200), "{statuses:?}");
    assert!(bodies.iter().all(|b| *b == bodies[0]), "every client sees the same transfer");
    assert_eq!(app.balances(alice).await["posted"], 250);
    assert_eq!(app.verify_clean().await.transfers_checked, 1);
}

async fn one_idempotency_key_sent_by_many_clients_runs_once(backend: Backend) {
    let app = Arc::new(spawn_app(backend).await);
    let bank = app.open_account(AccountSpec::default()).await;
    let alice = app.open_account(AccountSpec { no_overdraft: true }).await;
    let key = Uuid::new_v4().to_string();
    let body = transfer_body(Uuid::now_v7(), bank, alice, 40);
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (app, body, key) = (app.clone(), body.clone(), key.clone());
            tokio::spawn(async move { app.post_with_key("/api/transfers", &key, &body).await })
        })
        .collect();
    let mut first = None;
    let mut replays = Vec::new();
    let mut in_flight = 0;
    for task in tasks {
        let reply = task.await.unwrap();
        match (reply.status.as_u16(), reply.header("idempotent-replayed")) {
            (201, None) => assert!(first.replace(reply.text.clone()).is_none(), "ran twice"),
            (201, Some("true")) => replays.push(reply.text.clone()),
            (409, _) => {
                reply.expect_problem(409, "idempotency_key_in_flight");
                assert!(reply.header("retry-after").is_some());
                in_flight += 1;
            }
            _ => panic!("unexpected: {} {}", reply.status, reply.text),
        }
    }
    let first = first.expect("no request ran");
    assert!(replays.iter().all(|r| *r == first), "a replay differs from the first response");
    // Once the first finished, every retry is its replay.
    let replay = app.post_with_key("/api/transfers", &key, &body).await;
    assert_eq!((replay.status.as_u16(), replay.text.as_str()), (201, first.as_str()));
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(app.balances(alice).await["posted"], 40, "{in_flight} answered in flight");
    assert_eq!(app.verify_clean().await.transfers_checked, 1);
}

async fn one_account_id_opened_by_many_clients_is_opened_once(backend: Backend) {
    let app = Arc::new(spawn_app(backend).await);
    // A client retrying an open while the first attempt still runs sends the same id twice.
    for round in 0..5 {
        let body =
            json!({ "id": Uuid::now_v7(), "currency": "EUR", "owner": format!("race-{round}") });
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (app, body) = (app.clone(), body.clone());
                tokio::spawn(async move { app.post("/api/accounts", &body).await })
            })
            .collect();
        let mut statuses = Vec::new();
        let mut accounts = Vec::new();
        let mut refusals = Vec::new();
        for task in tasks {
            let reply = task.await.unwrap();
            statuses.push(reply.status.as_u16());
            if reply.status.is_success() {
                accounts.push(reply.json());
            } else {
                refusals.push(reply.text);
            }
        }
        assert!(refusals.is_empty(), "{statuses:?}: {refusals:?}");
        assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "{statuses:?}");
        assert!(accounts.iter().all(|a| *a == accounts[0]));
    }
}
