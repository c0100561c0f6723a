//! `ferrobank bench <scenario>`: load generators against a running server (or, for `idp`,
//! the app started in-process), printing throughput and latency percentiles. Peer baselines
//! live in `bench/*.sh`.
// Rates and percentiles are reporting figures, not money.
#![allow(clippy::float_arithmetic, clippy::cast_possible_truncation, clippy::cast_sign_loss)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use ferrobank_adapters::idp::{NewUser, random_password};
use ferrobank_adapters::oidc::{OidcConfig, TokenValidator};
use hdrhistogram::Histogram;
use reqwest::header;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::config::{Config, DEFAULT_AUDIENCE, IdentityConfig};

/// A benchmark scenario.
#[derive(Debug, Subcommand)]
pub enum Scenario {
    /// Transfers through the HTTP API between random accounts (or a few hot ones).
    Ledger(LedgerBench),
    /// The built-in identity provider, started in-process: client-credentials grants,
    /// password logins, token validations in the library, memory. With `--cc-only
    /// --token-url`, the same client-credentials load against any token endpoint.
    Idp(IdpBench),
}

/// Options of `bench ledger`.
#[derive(Debug, Clone, Args)]
pub struct LedgerBench {
    /// Base URL of a running ferrobank.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Concurrent clients, each with one request in flight.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// How long to send load, in seconds.
    #[arg(long, default_value_t = 10)]
    duration_s: u64,
    /// Accounts to create and pick from.
    #[arg(long, default_value_t = 1000)]
    accounts: usize,
    /// Hot-account variant: every transfer debits one of this many accounts (0 = off).
    #[arg(long, default_value_t = 0)]
    hot_accounts: usize,
    /// Print one JSON object instead of text (for scripts).
    #[arg(long)]
    json: bool,
}

impl Scenario {
    /// Runs the scenario; exits non-zero when any request failed unexpectedly.
    pub async fn run(self) -> Result<ExitCode, String> {
        match self {
            Self::Ledger(bench) => bench.run().await,
            Self::Idp(bench) => bench.run().await,
        }
    }
}

#[derive(Debug)]
struct ClientStats {
    latency_us: Histogram<u64>,
    ok: u64,
    busy: u64,
    failed: u64,
}

impl LedgerBench {
    async fn run(self) -> Result<ExitCode, String> {
        let clients = self.clients.max(1);
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(clients)
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| e.to_string())?;
        let accounts = Arc::new(self.open_accounts(&http).await?);
        let deadline = Instant::now() + Duration::from_secs(self.duration_s);
        let started = Instant::now();
        let mut tasks = Vec::with_capacity(clients);
        for client in 0..clients {
            let (http, accounts, url) = (http.clone(), accounts.clone(), self.url.clone());
            let hot = self.hot_accounts.min(accounts.len());
            tasks.push(tokio::spawn(async move {
                drive(http, &url, &accounts, hot, client as u64, deadline).await
            }));
        }
        let mut total = ClientStats { latency_us: new_histogram()?, ok: 0, busy: 0, failed: 0 };
        for task in tasks {
            let stats = task.await.map_err(|e| e.to_string())??;
            total.latency_us.add(&stats.latency_us).map_err(|e| e.to_string())?;
            total.ok += stats.ok;
            total.busy += stats.busy;
            total.failed += stats.failed;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let rate = total.ok as f64 / elapsed;
        let ms = |q: f64| total.latency_us.value_at_quantile(q) as f64 / 1000.0;
        if self.json {
            println!(
                "{}",
                json!({
                    "scenario": if self.hot_accounts > 0 { "ledger-hot" } else { "ledger" },
                    "clients": clients, "duration_s": elapsed, "accounts": self.accounts,
                    "hot_accounts": self.hot_accounts, "ok": total.ok, "busy": total.busy,
                    "failed": total.failed, "transfers_per_s": rate,
                    "p50_ms": ms(0.5), "p99_ms": ms(0.99), "p999_ms": ms(0.999),
                    "max_ms": total.latency_us.max() as f64 / 1000.0,
                })
            );
        } else {
            let variant = match self.hot_accounts {
                0 => format!("{} accounts, uniform", self.accounts),
                hot => format!("{} accounts, debits on {hot} hot accounts", self.accounts),
            };
            println!("ledger bench: {clients} clients, {elapsed:.1} s, {variant}");
            println!(
                "transfers: {} ok, {} busy (503), {} failed",
                total.ok, total.busy, total.failed
            );
            println!("throughput: {rate:.0} transfers/s");
            println!(
                "latency ms: p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
                ms(0.5),
                ms(0.99),
                ms(0.999),
                total.latency_us.max() as f64 / 1000.0
            );
        }
        Ok(if total.failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
    }

    async fn open_accounts(&self, http: &reqwest::Client) -> Result<Vec<Uuid>, String> {
        let ids: Vec<Uuid> = (0..self.accounts.max(2)).map(|_| Uuid::new_v4()).collect();
        for chunk in ids.chunks(64) {
            let opens = chunk.iter().map(|id| {
                http.post(format!("{}/api/accounts", self.url))
                    .json(&json!({ "id": id, "currency": "EUR", "owner": "bench", "code": 1 }))
                    .send()
            });
            for response in futures_join(opens).await {
                let response = response.map_err(|e| format!("opening bench accounts: {e}"))?;
                if !response.status().is_success() {
                    return Err(format!("opening bench accounts: HTTP {}", response.status()));
                }
            }
        }
        Ok(ids)
    }
}

async fn futures_join<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        if let Ok(value) = handle.await {
            out.push(value);
        }
    }
    out
}

fn new_histogram() -> Result<Histogram<u64>, String> {
    Histogram::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())
}

async fn drive(
    http: reqwest::Client,
    url: &str,
    accounts: &[Uuid],
    hot: usize,
    seed: u64,
    deadline: Instant,
) -> Result<ClientStats, String> {
    let mut stats = ClientStats { latency_us: new_histogram()?, ok: 0, busy: 0, failed: 0 };
    let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let endpoint = format!("{url}/api/transfers");
    let n = accounts.len();
    while Instant::now() < deadline {
        let debit = next(&mut rng) as usize % if hot > 0 { hot } else { n };
        let credit = (debit + 1 + next(&mut rng) as usize % (n - 1)) % n;
        let body = json!({
            "id": Uuid::new_v4(),
            "debit_account_id": accounts[debit],
            "credit_account_id": accounts[credit],
            "amount": 1 + next(&mut rng) % 10_000,
            "currency": "EUR",
        });
        let sent = Instant::now();
        let response = http.post(&endpoint).json(&body).send().await;
        let latency = sent.elapsed().as_micros() as u64;
        match response.map(|r| r.status().as_u16()) {
            Ok(201) => {
                stats.ok += 1;
                let _ = stats.latency_us.record(latency.max(1));
            }
            Ok(503) => {
                stats.busy += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            _ => stats.failed += 1,
        }
    }
    Ok(stats)
}

/// xorshift64*: deterministic per client, no extra dependency.
fn next(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_F491_4F6C_DD1D)
}
