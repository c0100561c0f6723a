//! Crash safety of the real binary, on SQLite and PostgreSQL: `kill -9` under concurrent
//! load, restart on the same database, and check that nothing acknowledged was lost,
//! nothing was doubled, the ledger verifies, and retrying every request ever sent (same
//! id, same Idempotency-Key, same body) converges without creating anything twice.
#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Reply, Rng, client, ferrobank, poll_until, transfer_body};
use ferrobank_adapters::Backend;
use ferrobank_adapters::testing::TestDatabase;
use ferrobank_application::LedgerStore;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;
use uuid::Uuid;

const ACCOUNTS: usize = 4;
const CLIENTS: u64 = 16;
/// Acknowledged transfers before the kill.
const ACKED_BEFORE_KILL: usize = 300;
/// Upper bound on what one client sends, so a server that never dies still ends the test.
const MAX_PER_CLIENT: usize = 2_000;
const START_TIMEOUT: Duration = Duration::from_secs(60);
const LOAD_TIMEOUT: Duration = Duration::from_secs(120);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// The server's request timeout in this test; it bounds the Idempotency-Key lease.
const REQUEST_TIMEOUT_MS: &str = "5000";
/// A request cut by the crash holds its Idempotency-Key for the server's lease (request
/// timeout + 5 s = 10 s); retries answer 409 until then.
const RETRY_TIMEOUT: Duration = Duration::from_secs(90);

on_both_backends!(kill_minus_nine_under_load_loses_and_doubles_nothing);

/// The binary running as a child process; killed if the test ends early.
struct Server {
    child: Child,
    address: String,
}

async fn start_server(url: &str, workdir: &Path, log: &Path) -> Server {
    let log_file = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    let args = ["serve", "--migrate", "--listen", "127.0.0.1:0", "--database-url", url];
    let mut child = ferrobank(&args, workdir)
        // Keys cut by the kill are held for the request timeout plus 5 s; a short timeout
        // keeps the retry phase short.
        .env("FERROBANK_HTTP__REQUEST_TIMEOUT_MS", REQUEST_TIMEOUT_MS)
        // This test is about the ledger's durability; authentication has its own tests.
        .env("FERROBANK_IDENTITY__ENABLED", "false")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let found = tokio::time::timeout(START_TIMEOUT, async {
        while let Some(line) = lines.next_line().await.ok().flatten() {
            if let Some(address) = line.strip_prefix("ferrobank is up on ") {
                return Some(address.trim().to_owned());
            }
        }
        None
    })
    .await;
    let Ok(Some(address)) = found else {
        let _ = child.start_kill();
        panic!("the server did not come up; its log:\n{}", tail(log));
    };
    // Keep reading stdout so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let server = Server { child, address };
    let http = client();
    poll_until("/ready", START_TIMEOUT, || {
        let request = http.get(format!("{}/ready", server.address)).send();
        async move { request.await.ok().filter(|r| r.status().is_success()) }
    })
    .await;
    server
}

/// `ferrobank ledger verify`; returns whether it exited 0, and its output.
async fn ledger_verify(url: &str, workdir: &Path) -> (bool, String) {
    let command = ferrobank(&["ledger", "verify", "--database-url", url], workdir)
        .stdin(Stdio::null())
        .output();
    let output = tokio::time::timeout(COMMAND_TIMEOUT, command).await.unwrap().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let start = text.len().saturating_sub(4_000);
    text.get(start..).unwrap_or(&text).to_owned()
}

/// One request as sent: what a client would retry after a crash.
#[derive(Debug, Clone)]
struct Sent {
    id: Uuid,
    key: String,
    body: Value,
}

/// What the load recorded.
#[derive(Debug, Default)]
struct Load {
    sent: Vec<Sent>,
    /// Transfers answered 2xx before the kill: id -> (status, body).
    acked: HashMap<Uuid, (u16, String)>,
}

async fn drive(
    address: String,
    accounts: Vec<Uuid>,
    seed: u64,
    load: Arc<Mutex<Load>>,
    stop: Arc<AtomicBool>,
) {
    let http = client();
    let mut rng = Rng::new(seed);
    for _ in 0..MAX_PER_CLIENT {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let debit = *rng.pick(&accounts);
        let credit = loop {
            let candidate = *rng.pick(&accounts);
            if candidate != debit {
                break candidate;
            }
        };
        let amount = i64::try_from(1 + rng.below(1_000)).unwrap();
        let id = Uuid::now_v7();
        let sent = Sent {
            id,
            key: format!("crash-{}", Uuid::new_v4()),
            body: transfer_body(id, debit, credit, amount),
        };
        // Recorded before sending: a request cut by the crash may still have committed.
        load.lock().unwrap().sent.push(sent.clone());
        let request = http
            .post(format!("{address}/api/transfers"))
            .header("idempotency-key", &sent.key)
            .json(&sent.body)
            .send()
            .await;
        let Ok(response) = request else {
            // The server is gone.
            return;
        };
        let status = response.status().as_u16();
        let Ok(text) = response.text().await else {
            return;
        };
        match status {
            201 => {
                load.lock().unwrap().acked.insert(id, (status, text));
            }
            // Busy: not acknowledged, so a client would retry it later, as step 5 does.
            503 => {}
            _ => panic!("before the crash every transfer fits: {status} {text}"),
        }
    }
}

/// Sends `sent` again until it gets a final answer; 409 in-flight and 503 are transient.
async fn retry(http: reqwest::Client, address: String, sent: Sent) -> Reply {
    let give_up = Instant::now() + RETRY_TIMEOUT;
    loop {
        let response = http
            .post(format!("{address}/api/transfers"))
            .header("idempotency-key", &sent.key)
            .json(&sent.body)
            .send()
            .await
            .unwrap();
        let reply = Reply::read(response).await;
        let transient = match reply.status.as_u16() {
            409 => reply.check_problem(409, "idempotency_key_in_flight").is_ok(),
            503 => true,
            _ => false,
        };
        if !transient {
            return reply;
        }
        assert!(
            Instant::now() < give_up,
            "{} still answers {} {}",
            sent.id,
            reply.status,
            reply.text
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Every transfer id found in the accounts' histories, and how many entries each has.
async fn ids_in_histories(address: &str, accounts: &[Uuid]) -> HashMap<Uuid, usize> {
    let http = client();
    let mut seen = HashMap::new();
    for account in accounts {
        let mut cursor: Option<String> = None;
        loop {
            let mut url = format!("{address}/api/accounts/{account}/history?limit=500");
            if let Some(c) = &cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            let page: Value = http.get(url).send().await.unwrap().json().await.unwrap();
            for entry in page["entries"].as_array().unwrap() {
                let id = Uuid::parse_str(entry["transfer"]["id"].as_str().unwrap()).unwrap();
                *seen.entry(id).or_default() += 1;
            }
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
        }
    }
    seen
}

async fn kill_minus_nine_under_load_loses_and_doubles_nothing(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let workdir = std::env::temp_dir().join(format!("ferrobank-crash-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&workdir).unwrap();
    let log: PathBuf = workdir.join("server.log");
    let cleanup = Cleanup(workdir.clone());

    // 1. Serve, open accounts, and load the server from many clients.
    let mut server = start_server(&db.url, &workdir, &log).await;
    let http = client();
    let mut accounts = Vec::new();
    for n in 0..ACCOUNTS {
        let id = Uuid::now_v7();
        let body = json!({ "id": id, "currency": "EUR", "owner": format!("crash-{n}") });
        let reply =
            http.post(format!("{}/api/accounts", server.address)).json(&body).send().await.unwrap();
        assert_eq!(reply.status(), 201);
        accounts.push(id);
    }
    let load = Arc::new(Mutex::new(Load::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|seed| {
            let task = drive(
                server.address.clone(),
                accounts.clone(),
                seed + 1,
                load.clone(),
                stop.clone(),
            );
            tokio::spawn(task)
        })
        .collect();

    // 2. kill -9 in the middle of it.
    poll_until("acknowledged transfers", LOAD_TIMEOUT, || {
        let acked = load.lock().unwrap().acked.len();
        async move { (acked >= ACKED_BEFORE_KILL).then_some(()) }
    })
    .await;
    server.child.start_kill().unwrap();
    let status = tokio::time::timeout(COMMAND_TIMEOUT, server.child.wait()).await.unwrap().unwrap();
    assert!(!status.success(), "the server was killed, not stopped: {status:?}");
    stop.store(true, Ordering::Relaxed);
    for task in clients {
        tokio::time::timeout(LOAD_TIMEOUT, task).await.unwrap().unwrap();
    }
    let load = Arc::try_unwrap(load).unwrap().into_inner().unwrap();
    assert!(load.sent.len() > load.acked.len(), "the kill cut no request");
    let sent_ids: BTreeSet<Uuid> = load.sent.iter().map(|s| s.id).collect();
    assert_eq!(sent_ids.len(), load.sent.len());

    // 3. Restart on the same database; the ledger verifies.
    let server = start_server(&db.url, &workdir, &log).await;
    let (clean, output) = ledger_verify(&db.url, &workdir).await;
    assert!(clean, "ledger verify failed after the crash:\n{output}\nserver log:\n{}", tail(&log));
    let store = db.store().await;

    // 4. Every acknowledged transfer is there, once; nothing unknown appeared.
    for (id, (_, text)) in &load.acked {
        let reply =
            http.get(format!("{}/api/transfers/{id}", server.address)).send().await.unwrap();
        let reply = Reply::read(reply).await;
        assert_eq!(reply.status, 200, "acknowledged transfer {id} lost after the crash");
        assert_eq!(reply.json(), serde_json::from_str::<Value>(text).unwrap());
    }
    let seen = ids_in_histories(&server.address, &accounts).await;
    assert!(seen.values().all(|n| *n == 2), "a transfer appears more than once per side");
    assert!(seen.keys().all(|id| sent_ids.contains(id)), "a transfer nobody sent");
    assert!(load.acked.keys().all(|id| seen.contains_key(id)));
    let committed = LedgerStore::verify(&store).await.unwrap().transfers_checked;
    assert_eq!(committed, seen.len() as u64, "rows in the database");

    eprintln!(
        "sent {}, acknowledged {}, committed at the crash {}",
        load.sent.len(),
        load.acked.len(),
        seen.len()
    );

    // 5. Retry everything ever sent, concurrently, exactly as first sent.
    let queue = Arc::new(Mutex::new(load.sent.clone()));
    let workers: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (queue, address, http) = (queue.clone(), server.address.clone(), client());
            tokio::spawn(async move {
                let mut replies = Vec::new();
                loop {
                    let Some(sent) = queue.lock().unwrap().pop() else {
                        return replies;
                    };
                    replies.push((sent.clone(), retry(http.clone(), address.clone(), sent).await));
                }
            })
        })
        .collect();
    for worker in workers {
        for (sent, reply) in worker.await.unwrap() {
            match load.acked.get(&sent.id) {
                Some((status, text)) => {
                    assert_eq!(reply.status, *status, "{}: {}", sent.id, reply.text);
                    assert_eq!(&reply.text, text, "the replay differs from the first answer");
                    assert_eq!(reply.header("idempotent-replayed"), Some("true"));
                }
                None => {
                    assert!(
                        reply.status == 201 || reply.status == 200,
                        "retry of {} answered {} {}",
                        sent.id,
                        reply.status,
                        reply.text
                    );
                    assert_eq!(reply.json()["id"], sent.id.to_string());
                }
            }
        }
    }

    // 6. Now every request took effect exactly once.
    let seen = ids_in_histories(&server.address, &accounts).await;
    assert_eq!(seen.keys().copied().collect::<BTreeSet<_>>(), sent_ids);
    assert!(seen.values().all(|n| *n == 2));
    let report = LedgerStore::verify(&store).await.unwrap();
    assert!(report.mismatches.is_empty(), "{report:?}");
    assert_eq!(report.transfers_checked, sent_ids.len() as u64);
    let mut expected: HashMap<Uuid, (i64, i64)> = HashMap::new();
    for sent in &load.sent {
        let amount = sent.body["amount"].as_i64().unwrap();
        let debit = Uuid::parse_str(sent.body["debit_account_id"].as_str().unwrap()).unwrap();
        let credit = Uuid::parse_str(sent.body["credit_account_id"].as_str().unwrap()).unwrap();
        expected.entry(debit).or_default().0 += amount;
        expected.entry(credit).or_default().1 += amount;
    }
    for account in &accounts {
        let url = format!("{}/api/accounts/{account}/balances", server.address);
        let balances: Value = http.get(url).send().await.unwrap().json().await.unwrap();
        let (debits, credits) = expected.get(account).copied().unwrap_or_default();
        assert_eq!(balances["debits_posted"], debits, "{account}");
        assert_eq!(balances["credits_posted"], credits, "{account}");
    }
    let (clean, output) = ledger_verify(&db.url, &workdir).await;
    assert!(clean, "ledger verify failed after the retries:\n{output}");

    store.close().await;
    drop(server);
    drop(cleanup);
}

/// Removes the scratch directory (server log) when the test ends, passed or not.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
