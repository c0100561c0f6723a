//! `ferrobank bench <scenario>`: load generators against a running server (or, for `idp`
//! and `payments`, the app started in-process), printing throughput and latency
//! percentiles. Peer baselines live in `bench/*.sh`.
// Rates and percentiles are reporting figures, not money.
#![allow(clippy::float_arithmetic, clippy::cast_possible_truncation, clippy::cast_sign_loss)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use ferrobank_adapters::SqlStore;
use ferrobank_adapters::bus::{KafkaBus, KafkaBusOptions, RabbitBus, RabbitBusOptions};
use ferrobank_adapters::idp::{NewUser, random_password};
use ferrobank_adapters::oidc::{OidcConfig, TokenValidator};
use ferrobank_application::payments::{
    CreatePayment, Created, PaymentQuery, PaymentService, PaymentsError, WORKER_CONSUMER,
};
use ferrobank_application::{
    Clock, Event, EventBus, LedgerService, LedgerStore, RetryPolicy, SystemClock,
};
use ferrobank_domain::risk::{CurrencyLimits, Tiered};
use ferrobank_domain::{
    AccountFlags, AccountId, Amount, Beneficiary, BeneficiaryName, CountryCode, Currency, Iban,
    NewAccount, NewPayment, NewTransfer, PaymentId, PaymentStatus, Reference, RiskRules,
    RiskRulesConfig, TransferId, TransferKind,
};
use hdrhistogram::Histogram;
use reqwest::header;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::config::{BusKind, BusSettings, Config, DEFAULT_AUDIENCE, IdentityConfig};

/// A benchmark scenario.
#[derive(Debug, Subcommand)]
pub enum Scenario {
    /// Transfers through the HTTP API between random accounts (or a few hot ones).
    Ledger(LedgerBench),
    /// The built-in identity provider, started in-process: client-credentials grants,
    /// password logins, token validations in the library, memory. With `--cc-only
    /// --token-url`, the same client-credentials load against any token endpoint.
    Idp(IdpBench),
    /// The money path end to end, in-process by default: payments created through the
    /// payments service, relayed to the bus, charged at the simulator and settled by the
    /// worker; then the broker's own publish/consume ceiling through the same bus adapter.
    Payments(PaymentsBench),
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
            Self::Payments(bench) => bench.run().await,
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

// ---------------------------------------------------------------------------------------
// `bench idp`
// ---------------------------------------------------------------------------------------

/// Most concurrent workers of one load.
const MAX_IDP_CLIENTS: usize = 1024;
/// Longest measurement of one load, in seconds.
const MAX_IDP_DURATION_S: u64 = 600;
/// Longest warm-up before a measurement, in seconds.
const MAX_IDP_WARMUP_S: u64 = 60;
/// Most token validations in the library loop.
const MAX_VALIDATIONS: u64 = 10_000_000;
/// Validations run before the measured ones (key cache filled, code paths warm).
const VALIDATION_WARMUP: u64 = 1_000;
/// Longest wait for one HTTP request of the bench.
const IDP_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause of a worker after a failed request, so that a dead endpoint is not spun on.
const IDP_ERROR_BACKOFF: Duration = Duration::from_millis(10);
/// Characters of an unexpected response body quoted in an error.
const ERROR_BODY_CHARS: usize = 200;
/// `/proc/PID/stat` counts CPU time in USER_HZ ticks, 100 per second on Linux.
const USER_HZ: f64 = 100.0;
/// The public client of the banking realm that browsers log in with.
const LOGIN_CLIENT_ID: &str = "banking-web-app";
/// A redirect URI registered for it (`http://localhost:3000/*`); never followed.
const LOGIN_REDIRECT_URI: &str = "http://localhost:3000/cb";
/// RFC 7636 Appendix B's S256 challenge. The bench never redeems its codes, so one fixed
/// (valid) challenge serves every login.
const PKCE_CHALLENGE: &str = "E9Melhoa2OwvFrj-BWI-mLcU_HjvSjzl4nJ4rpqQG6c";
/// Cookie binding a login page to the browser that opened it (the provider's name).
const LOGIN_COOKIE: &str = "FERROBANK_LOGIN";
const FORM: &str = "application/x-www-form-urlencoded";

/// Options of `bench idp`.
#[derive(Debug, Clone, Args)]
pub struct IdpBench {
    /// Concurrent client-credentials workers, each with one request in flight.
    #[arg(long, default_value_t = 16)]
    cc_clients: usize,
    /// How long to measure client-credentials grants, in seconds.
    #[arg(long, default_value_t = 10)]
    cc_duration_s: u64,
    /// Concurrent password logins (authorize GET + form POST each).
    #[arg(long, default_value_t = 4)]
    login_clients: usize,
    /// How long to measure password logins, in seconds.
    #[arg(long, default_value_t = 10)]
    login_duration_s: u64,
    /// Load before each measurement starts (connections opened, caches and JITs warm), in
    /// seconds.
    #[arg(long, default_value_t = 2)]
    warmup_s: u64,
    /// Validations of one token in the library loop (one thread).
    #[arg(long, default_value_t = 50_000)]
    validations: u64,
    /// Only the client-credentials load: no logins, no validations.
    #[arg(long)]
    cc_only: bool,
    /// Load this token endpoint instead of the app in-process (another provider, a running
    /// ferrobank). Needs --cc-only and a client secret.
    #[arg(long, requires = "cc_only")]
    token_url: Option<String>,
    /// Confidential client with a service account (client-credentials grant).
    #[arg(long, default_value = "banking-api-gateway")]
    client_id: String,
    /// Its secret (with --token-url; in-process the bench chooses one). The variable is
    /// not `FERROBANK_*`: that prefix is the server's configuration, which refuses it.
    #[arg(long, env = "BENCH_CLIENT_SECRET", hide_env_values = true)]
    client_secret: Option<String>,
    /// Process whose CPU time and peak RSS are reported beside the external load (Linux:
    /// read from /proc). In-process, this process.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Database of the in-process app (`postgres://...`, best a fresh one: the bench adds
    /// and removes a user); default: SQLite in a new temporary directory.
    #[arg(long)]
    database_url: Option<String>,
    /// Print one JSON object instead of text (for scripts).
    #[arg(long)]
    json: bool,
}

/// What one concurrent load measured.
#[derive(Debug)]
struct FlowResult {
    clients: usize,
    duration_s: f64,
    /// Completed inside the measured window.
    ok: u64,
    /// Failed at any time, warm-up included.
    failed: u64,
    first_error: Option<String>,
    latency_us: Histogram<u64>,
    /// CPU seconds `cpu_pid` used during the measured window.
    cpu_s: Option<f64>,
    cpu_pid: Option<u32>,
    /// CPU seconds this process (the load generator) used in the window, when `cpu_pid` is
    /// another process.
    generator_cpu_s: Option<f64>,
}

impl FlowResult {
    fn per_s(&self) -> f64 {
        self.ok as f64 / self.duration_s
    }

    fn ms(&self, quantile: f64) -> f64 {
        self.latency_us.value_at_quantile(quantile) as f64 / 1000.0
    }

    fn per_cpu_s(&self) -> Option<f64> {
        self.cpu_s.filter(|cpu| *cpu > 0.0).map(|cpu| self.ok as f64 / cpu)
    }

    fn json(&self, rate: &str) -> Value {
        let mut value = json!({
            "clients": self.clients, "duration_s": self.duration_s, "ok": self.ok,
            "failed": self.failed, "first_error": self.first_error,
            "p50_ms": self.ms(0.5), "p99_ms": self.ms(0.99), "p999_ms": self.ms(0.999),
            "max_ms": self.latency_us.max() as f64 / 1000.0,
            "cpu_pid": self.cpu_pid, "cpu_s": self.cpu_s,
            "per_cpu_s": self.per_cpu_s(), "generator_cpu_s": self.generator_cpu_s,
        });
        value[rate] = json!(self.per_s());
        value
    }

    fn print(&self, what: &str, unit: &str, cpu_of: &str) {
        println!(
            "{what}: {} clients, {:.1} s: {} ok, {} failed; {:.0} {unit}/s",
            self.clients,
            self.duration_s,
            self.ok,
            self.failed,
            self.per_s()
        );
        println!(
            "  latency ms: p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
            self.ms(0.5),
            self.ms(0.99),
            self.ms(0.999),
            self.latency_us.max() as f64 / 1000.0
        );
        if let (Some(cpu_s), Some(rate)) = (self.cpu_s, self.per_cpu_s()) {
            println!("  CPU: {cpu_s:.2} s of {cpu_of}: {rate:.0} {unit} per CPU-second");
        }
        if let Some(cpu_s) = self.generator_cpu_s {
            println!("  CPU: {cpu_s:.2} s of the load generator (this process)");
        }
        if let Some(error) = &self.first_error {
            println!("  first failure: {error}");
        }
    }
}

/// The library loop's figures.
#[derive(Debug)]
struct ValidationResult {
    count: u64,
    mean_us: f64,
    latency_ns: Histogram<u64>,
}

impl ValidationResult {
    fn us(&self, quantile: f64) -> f64 {
        self.latency_ns.value_at_quantile(quantile) as f64 / 1000.0
    }

    fn json(&self) -> Value {
        json!({
            "count": self.count, "mean_us": self.mean_us, "p50_us": self.us(0.5),
            "p99_us": self.us(0.99), "p999_us": self.us(0.999),
            "max_us": self.latency_ns.max() as f64 / 1000.0,
            "per_s": 1e6 / self.mean_us,
        })
    }
}

/// Everything one `bench idp` run measured.
#[derive(Debug)]
struct IdpReport {
    target: &'static str,
    token_url: String,
    /// `alg`, `typ` and size of a token the endpoint issued.
    token: Value,
    cc: FlowResult,
    login: Option<FlowResult>,
    /// Distinct tokens, each validated once (signature verified), then one token repeated
    /// (served by the validator's cache of verified tokens).
    validation: Option<(ValidationResult, ValidationResult)>,
    /// VmRSS and VmHWM of this process at the end (in-process: app and load generator).
    rss_kb: Option<u64>,
    peak_rss_kb: Option<u64>,
    /// VmHWM of `--server-pid` at the end.
    server_peak_rss_kb: Option<u64>,
}

impl IdpReport {
    fn failed(&self) -> bool {
        self.cc.failed > 0 || self.login.as_ref().is_some_and(|l| l.failed > 0)
    }

    fn print(&self, json: bool) {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        if json {
            println!(
                "{}",
                json!({
                    "scenario": "idp", "target": self.target, "token_url": self.token_url,
                    "cores": cores, "token": self.token,
                    "cc": self.cc.json("grants_per_s"),
                    "login": self.login.as_ref().map(|l| l.json("logins_per_s")),
                    "validation_first_sight": self.validation.as_ref().map(|v| v.0.json()),
                    "validation": self.validation.as_ref().map(|v| v.1.json()),
                    "rss_kb": self.rss_kb, "peak_rss_kb": self.peak_rss_kb,
                    "server_peak_rss_kb": self.server_peak_rss_kb,
                })
            );
            return;
        }
        let cpu_of = match (self.target, self.cc.cpu_pid) {
            ("in-process", _) => "this process (app and load generator)".to_owned(),
            (_, Some(pid)) => format!("process {pid}"),
            _ => String::new(),
        };
        println!("idp bench: {} ({}), {cores} cores", self.target, self.token_url);
        println!("  token: {}", self.token);
        self.cc.print("client-credentials grants", "grants", &cpu_of);
        if let Some(login) = &self.login {
            login.print("password logins", "logins", &cpu_of);
        }
        if let Some((first, repeated)) = &self.validation {
            for (v, what) in
                [(first, "distinct tokens, first sight"), (repeated, "one token repeated")]
            {
                println!(
                    "token validation (library, one thread, {what}): {} times, mean {:.1} us \
                     ({:.0}/s); p50 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1} us",
                    v.count,
                    v.mean_us,
                    1e6 / v.mean_us,
                    v.us(0.5),
                    v.us(0.99),
                    v.us(0.999),
                    v.latency_ns.max() as f64 / 1000.0
                );
            }
        }
        let mb = |kb: Option<u64>| {
            kb.map_or("n/a".to_owned(), |kb| format!("{:.1}", kb as f64 / 1024.0))
        };
        if self.target == "in-process" {
            println!(
                "memory (this process: app and load generator): RSS {} MB, peak {} MB",
                mb(self.rss_kb),
                mb(self.peak_rss_kb)
            );
        }
        if self.server_peak_rss_kb.is_some() {
            println!("server peak RSS: {} MB", mb(self.server_peak_rss_kb));
        }
    }
}

/// A directory removed when dropped: the in-process app's SQLite files.
#[derive(Debug)]
struct TempDir(PathBuf);

impl TempDir {
    fn new(scenario: &str) -> Result<Self, String> {
        let path =
            std::env::temp_dir().join(format!("ferrobank-bench-{scenario}-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&path).map_err(|e| format!("creating {}: {e}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl IdpBench {
    async fn run(self) -> Result<ExitCode, String> {
        self.check_bounds()?;
        let report = match &self.token_url {
            Some(url) => self.run_external(url).await?,
            None => self.run_in_process().await?,
        };
        report.print(self.json);
        Ok(if report.failed() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
    }

    fn check_bounds(&self) -> Result<(), String> {
        let within = |name: &str, value: u64, min: u64, max: u64| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(format!("--{name} must be between {min} and {max}, not {value}"))
            }
        };
        let clients = MAX_IDP_CLIENTS as u64;
        within("cc-clients", self.cc_clients as u64, 1, clients)?;
        within("cc-duration-s", self.cc_duration_s, 1, MAX_IDP_DURATION_S)?;
        within("login-clients", self.login_clients as u64, 1, clients)?;
        within("login-duration-s", self.login_duration_s, 1, MAX_IDP_DURATION_S)?;
        within("warmup-s", self.warmup_s, 0, MAX_IDP_WARMUP_S)?;
        within("validations", self.validations, 1, MAX_VALIDATIONS)?;
        if self.token_url.is_some() && self.client_secret.is_none() {
            return Err("--token-url needs --client-secret (or BENCH_CLIENT_SECRET)".into());
        }
        if self.token_url.is_some() && self.database_url.is_some() {
            return Err("--database-url is for the in-process app, not with --token-url".into());
        }
        Ok(())
    }

    fn http(clients: usize) -> Result<reqwest::Client, String> {
        reqwest::Client::builder()
            .pool_max_idle_per_host(clients)
            .timeout(IDP_REQUEST_TIMEOUT)
            // A login ends in a redirect to the client, which is not there: never follow.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())
    }

    /// The client-credentials load against `--token-url`.
    async fn run_external(&self, token_url: &str) -> Result<IdpReport, String> {
        let secret = self.client_secret.clone().unwrap_or_default();
        let http = Self::http(self.cc_clients)?;
        let token = fetch_token(&http, token_url, &self.client_id, &secret).await?;
        let cc = self.cc_load(&http, token_url, &secret, self.server_pid).await?;
        Ok(IdpReport {
            target: "external",
            token_url: token_url.to_owned(),
            token: token_summary(&token),
            cc,
            login: None,
            validation: None,
            rss_kb: None,
            peak_rss_kb: None,
            server_peak_rss_kb: self.server_pid.and_then(|pid| proc_status_kb(pid, "VmHWM")),
        })
    }

    /// Starts the app on a loopback port with chosen secrets, measures, stops it.
    async fn run_in_process(&self) -> Result<IdpReport, String> {
        let temp = match self.database_url {
            None => Some(TempDir::new("idp")?),
            Some(_) => None,
        };
        let secret = random_password();
        let defaults = Config::default();
        let config = Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: temp.as_ref().map_or(defaults.data_dir.clone(), |t| t.0.clone()),
            database_url: self.database_url.clone(),
            identity: IdentityConfig {
                enabled: true,
                dev_password: Some(secret.clone()),
                dev_client_secret: Some(secret.clone()),
                ..IdentityConfig::default()
            },
            ..defaults
        };
        let store = crate::cli::open_store(&config, true).await?;
        let running = crate::server::start(&config, store).await?;
        let measured = self.measure_in_process(&running, &config, &secret).await;
        let stopped = running.stop().await;
        drop(temp);
        let report = measured?;
        stopped?;
        Ok(report)
    }

    async fn measure_in_process(
        &self,
        running: &crate::server::Running,
        config: &Config,
        secret: &str,
    ) -> Result<IdpReport, String> {
        let idp = running.idp.clone().ok_or("the identity provider did not start")?;
        let realm = &config.identity.realm;
        let issuer = idp.issuer(realm);
        let token_url = format!("{issuer}/protocol/openid-connect/token");
        let http = Self::http(self.cc_clients.max(self.login_clients))?;
        let token = fetch_token(&http, &token_url, &self.client_id, secret).await.map_err(|e| {
            match self.database_url {
                // A realm imported earlier keeps the client secret it was given then.
                Some(_) => format!("{e} (with --database-url, use a database without a realm)"),
                None => e,
            }
        })?;
        let pid = std::process::id();
        let cc = self.cc_load(&http, &token_url, secret, Some(pid)).await?;
        let (mut login, mut validation) = (None, None);
        if !self.cc_only {
            let username = format!("bench-{}", &Uuid::new_v4().simple().to_string()[..12]);
            let password = random_password();
            let user = NewUser {
                username: username.clone(),
                enabled: true,
                password: Some(password.clone()),
                realm_roles: ["customer".to_owned()].into(),
                ..NewUser::default()
            };
            let user_id = idp
                .create_user(realm, user)
                .await
                .map_err(|e| format!("creating the bench user: {e}"))?;
            let base = format!("http://{}", running.addr);
            let logins = self.login_load(&http, &base, &issuer, &username, &password, pid).await;
            // Removed even when the logins failed: a --database-url database keeps no trace.
            let removed = idp.delete_user(realm, &user_id).await;
            login = Some(logins?);
            removed.map_err(|e| format!("removing the bench user: {e}"))?;
            // Fresh tokens: the first one may have expired during long loads.
            let mut tokens = Vec::new();
            for _ in 0..DISTINCT_TOKENS.min(self.validations) {
                tokens.push(fetch_token(&http, &token_url, &self.client_id, secret).await?);
            }
            validation = Some(validate_loop(issuer, tokens, self.validations).await?);
        }
        Ok(IdpReport {
            target: "in-process",
            token_url,
            token: token_summary(&token),
            cc,
            login,
            validation,
            rss_kb: proc_status_kb(pid, "VmRSS"),
            peak_rss_kb: proc_status_kb(pid, "VmHWM"),
            server_peak_rss_kb: None,
        })
    }

    async fn cc_load(
        &self,
        http: &reqwest::Client,
        token_url: &str,
        secret: &str,
        cpu_pid: Option<u32>,
    ) -> Result<FlowResult, String> {
        let (http, url) = (http.clone(), Arc::<str>::from(token_url));
        let (id, secret) = (Arc::<str>::from(self.client_id.as_str()), Arc::<str>::from(secret));
        let grant = move || {
            let (http, url, id, secret) = (http.clone(), url.clone(), id.clone(), secret.clone());
            async move { grant(&http, &url, &id, &secret).await.map(drop) }
        };
        let load = Load { clients: self.cc_clients, warmup_s: self.warmup_s, cpu_pid };
        load.run(self.cc_duration_s, grant).await
    }

    async fn login_load(
        &self,
        http: &reqwest::Client,
        base: &str,
        issuer: &str,
        username: &str,
        password: &str,
        cpu_pid: u32,
    ) -> Result<FlowResult, String> {
        let authorize = Arc::<str>::from(format!(
            "{issuer}/protocol/openid-connect/auth?response_type=code&client_id={LOGIN_CLIENT_ID}\
             &redirect_uri={}&scope=openid&state=s&code_challenge={PKCE_CHALLENGE}\
             &code_challenge_method=S256",
            form_value(LOGIN_REDIRECT_URI)
        ));
        let (http, base) = (http.clone(), Arc::<str>::from(base));
        let credentials = Arc::<str>::from(format!(
            "username={}&password={}",
            form_value(username),
            form_value(password)
        ));
        let flow = move || {
            let (http, authorize, base, credentials) =
                (http.clone(), authorize.clone(), base.clone(), credentials.clone());
            async move { login(&http, &authorize, &base, &credentials).await }
        };
        let load =
            Load { clients: self.login_clients, warmup_s: self.warmup_s, cpu_pid: Some(cpu_pid) };
        load.run(self.login_duration_s, flow).await
    }
}

/// Concurrent workers repeating one operation, measured in a fixed window after a warm-up.
#[derive(Debug, Clone, Copy)]
struct Load {
    clients: usize,
    warmup_s: u64,
    cpu_pid: Option<u32>,
}

#[derive(Debug)]
struct WorkerStats {
    latency_us: Histogram<u64>,
    ok: u64,
    failed: u64,
    first_error: Option<String>,
}

impl Load {
    async fn run<F, Fut>(self, duration_s: u64, operation: F) -> Result<FlowResult, String>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let operation = Arc::new(operation);
        let measure_from = Instant::now() + Duration::from_secs(self.warmup_s);
        let deadline = measure_from + Duration::from_secs(duration_s);
        let mut tasks = Vec::with_capacity(self.clients);
        for _ in 0..self.clients {
            let operation = operation.clone();
            tasks.push(tokio::spawn(async move {
                let mut stats = WorkerStats {
                    latency_us: new_histogram()?,
                    ok: 0,
                    failed: 0,
                    first_error: None,
                };
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    let outcome = operation().await;
                    let done = Instant::now();
                    match outcome {
                        Ok(()) if done >= measure_from && done < deadline => {
                            stats.ok += 1;
                            let latency = done.duration_since(sent).as_micros() as u64;
                            let _ = stats.latency_us.record(latency.max(1));
                        }
                        Ok(()) => {}
                        Err(error) => {
                            stats.failed += 1;
                            stats.first_error.get_or_insert(error);
                            tokio::time::sleep(IDP_ERROR_BACKOFF).await;
                        }
                    }
                }
                Ok::<_, String>(stats)
            }));
        }
        // CPU time is sampled at the window's edges, while the workers run.
        let own = std::process::id();
        let generator = self.cpu_pid.filter(|pid| *pid != own).map(|_| own);
        tokio::time::sleep_until(measure_from.into()).await;
        let cpu_before = self.cpu_pid.and_then(cpu_time_s);
        let generator_before = generator.and_then(cpu_time_s);
        tokio::time::sleep_until(deadline.into()).await;
        let cpu_after = self.cpu_pid.and_then(cpu_time_s);
        let generator_after = generator.and_then(cpu_time_s);
        let mut result = FlowResult {
            clients: self.clients,
            duration_s: duration_s as f64,
            ok: 0,
            failed: 0,
            first_error: None,
            latency_us: new_histogram()?,
            cpu_s: cpu_before.zip(cpu_after).map(|(before, after)| after - before),
            cpu_pid: self.cpu_pid,
            generator_cpu_s: generator_before.zip(generator_after).map(|(b, a)| a - b),
        };
        for task in tasks {
            let stats = task.await.map_err(|e| e.to_string())??;
            result.latency_us.add(&stats.latency_us).map_err(|e| e.to_string())?;
            result.ok += stats.ok;
            result.failed += stats.failed;
            if result.first_error.is_none() {
                result.first_error = stats.first_error;
            }
        }
        Ok(result)
    }
}

/// One client-credentials grant (RFC 6749 §4.4, `client_secret_basic`); the response body.
async fn grant(
    http: &reqwest::Client,
    url: &str,
    client_id: &str,
    secret: &str,
) -> Result<impl AsRef<[u8]> + use<>, String> {
    let response = http
        .post(url)
        .basic_auth(client_id, Some(secret))
        .header(header::CONTENT_TYPE, FORM)
        .body("grant_type=client_credentials")
        .send()
        .await
        .map_err(|e| format!("token request: {e}"))?;
    let status = response.status();
    let body = response.bytes().await.map_err(|e| format!("token response: {e}"))?;
    let has_token = body.windows(b"\"access_token\"".len()).any(|w| w == b"\"access_token\"");
    if status != reqwest::StatusCode::OK || !has_token {
        return Err(format!("token endpoint answered HTTP {status}: {}", snippet(&body)));
    }
    Ok(body)
}

/// One grant whose token is kept: checks the endpoint and the credentials before any load.
async fn fetch_token(
    http: &reqwest::Client,
    url: &str,
    client_id: &str,
    secret: &str,
) -> Result<String, String> {
    let body = grant(http, url, client_id, secret).await?;
    let parsed: Value = serde_json::from_slice(body.as_ref())
        .map_err(|e| format!("token response is not JSON: {e}"))?;
    parsed["access_token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("token response without access_token: {}", snippet(body.as_ref())))
}

/// A whole password login as a browser does it, minus the redirect to the client: the
/// authorization request (login form, login cookie), then the form with username, password
/// and CSRF token, answered by a redirect carrying the code.
async fn login(
    http: &reqwest::Client,
    authorize_url: &str,
    base: &str,
    credentials: &str,
) -> Result<(), String> {
    let page = http.get(authorize_url).send().await.map_err(|e| format!("authorize: {e}"))?;
    let status = page.status();
    let cookie = page
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .filter_map(|value| value.strip_prefix(LOGIN_COOKIE)?.strip_prefix('='))
        .map(|value| value.split(';').next().unwrap_or_default().to_owned())
        .next();
    let html = page.text().await.map_err(|e| format!("login page: {e}"))?;
    if status != reqwest::StatusCode::OK {
        return Err(format!("authorize answered HTTP {status}: {}", snippet(html.as_bytes())));
    }
    let (Some(cookie), Some(csrf), Some(action)) =
        (cookie, between(&html, "name=\"csrf\" value=\"", "\""), between(&html, "action=\"", "\""))
    else {
        return Err("the login page has no login cookie, CSRF token or form action".into());
    };
    let response = http
        .post(format!("{base}{}", action.replace("&amp;", "&")))
        .header(header::COOKIE, format!("{LOGIN_COOKIE}={cookie}"))
        .header(header::CONTENT_TYPE, FORM)
        .body(format!("{credentials}&csrf={}", form_value(csrf)))
        .send()
        .await
        .map_err(|e| format!("login form: {e}"))?;
    let status = response.status();
    let location = response
        .headers()
        .get(header::LOCATION)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response.bytes().await.map_err(|e| format!("login form: {e}"))?;
    if status.is_redirection()
        && location.starts_with(LOGIN_REDIRECT_URI)
        && location.contains("code=")
    {
        Ok(())
    } else {
        Err(format!("login form answered HTTP {status} without a code: {}", snippet(&body)))
    }
}

/// Distinct tokens validated once each in `bench idp`: the cost of a first sight.
const DISTINCT_TOKENS: u64 = 2_000;

/// On one thread (a current-thread runtime of its own), after a warm-up that also reads
/// discovery and the JWKS over loopback: every token of `tokens` once (first sight: the
/// signature is verified), then the last one `count` times (a client re-presenting its
/// token: served by the validator's cache of verified tokens).
async fn validate_loop(
    issuer: String,
    tokens: Vec<String>,
    count: u64,
) -> Result<(ValidationResult, ValidationResult), String> {
    tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async move {
            let config = OidcConfig::new(issuer, vec![DEFAULT_AUDIENCE.to_owned()]);
            let validator = TokenValidator::new(&config).map_err(|e| e.to_string())?;
            validator.warm_up().await.map_err(|e| format!("reading the provider's keys: {e}"))?;
            let (last, first) = tokens.split_last().ok_or("no token to validate")?;
            let first_sight = measure(&validator, first.iter(), first.len() as u64).await?;
            for _ in 0..VALIDATION_WARMUP.min(count) {
                validator.validate(last).await.map_err(|e| format!("validation: {e}"))?;
            }
            let repeated =
                measure(&validator, std::iter::repeat_n(last, count as usize), count).await?;
            Ok((first_sight, repeated))
        })
    })
    .await
    .map_err(|e| e.to_string())?
}

async fn measure<'a>(
    validator: &TokenValidator,
    tokens: impl Iterator<Item = &'a String>,
    count: u64,
) -> Result<ValidationResult, String> {
    let mut latency_ns =
        Histogram::new_with_bounds(1, 1_000_000_000, 3).map_err(|e| e.to_string())?;
    let started = Instant::now();
    for token in tokens {
        let one = Instant::now();
        validator.validate(token).await.map_err(|e| format!("validation: {e}"))?;
        let _ = latency_ns.record((one.elapsed().as_nanos() as u64).max(1));
    }
    let mean_us = started.elapsed().as_secs_f64() * 1e6 / count.max(1) as f64;
    Ok(ValidationResult { count, mean_us, latency_ns })
}

/// `alg`, `typ` and `kid` of a token's JWS header and its size: whether both providers
/// really issue RS256 JWTs. Reporting only; nothing here is trusted.
fn token_summary(token: &str) -> Value {
    let header = token
        .split('.')
        .next()
        .and_then(base64url_decode)
        .and_then(|json| serde_json::from_slice::<Value>(&json).ok())
        .unwrap_or(Value::Null);
    json!({
        "alg": header["alg"], "typ": header["typ"], "bytes": token.len(),
        "jwt": token.split('.').count() == 3,
    })
}

/// Unpadded base64url (RFC 4648 §5). The binary has no base64 dependency and needs this
/// for one report field.
fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for byte in text.bytes() {
        let sextet = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(sextet);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// `application/x-www-form-urlencoded` value: unreserved characters kept, the rest
/// percent-encoded.
fn form_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(byte))
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// The text between the first `start` and the next `end`.
fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = text.find(start)? + start.len();
    let len = text[from..].find(end)?;
    Some(&text[from..from + len])
}

/// The beginning of a response body, for an error message.
fn snippet(body: &[u8]) -> String {
    String::from_utf8_lossy(body).chars().take(ERROR_BODY_CHARS).collect()
}

/// CPU time (user + system) a process has used, from `/proc/PID/stat`; `None` off Linux.
fn cpu_time_s(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; it ends at the last ')'. After it come field 3
    // (state) onwards, so utime and stime (fields 14 and 15) are the 12th and 13th.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 1..)?.split_whitespace().collect();
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some((user + system) as f64 / USER_HZ)
}

/// A `kB` line of `/proc/PID/status` (`VmRSS`, `VmHWM`); `None` off Linux.
fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
}

// ---------------------------------------------------------------------------------------
// `bench payments`
// ---------------------------------------------------------------------------------------

/// Most concurrent clients of `bench payments` (each one also opens an account).
const MAX_PAYMENT_CLIENTS: usize = 4096;
/// Longest load of `bench payments`, in seconds.
const MAX_PAYMENT_DURATION_S: u64 = 3600;
/// Longest wait for the payments to become final after the load, in seconds.
const MAX_SETTLE_TIMEOUT_S: u64 = 3600;
/// Most concurrent publishers of the broker baseline.
const MAX_BASELINE_PUBLISHERS: usize = 1024;
/// What each client's debtor account is funded with, in minor units (100 million EUR):
/// more than any run spends, so no payment fails for want of funds.
const FUNDING_MINOR: i64 = 10_000_000_000;
/// The bench's risk limits, in minor units: high enough that no amount rule fires.
const UNLIMITED_MINOR: u64 = 1_000_000_000_000_000;
/// Chart-of-accounts code of the account the bench funds its customers from.
const BENCH_FUNDING_CODE: u16 = 100;
/// Accounts funded per ledger request.
const FUNDING_CHUNK: usize = 100;
/// Largest page when reading a client's payments back (the service's own maximum).
const READ_PAGE: u32 = 200;
/// Pause between two looks at whether every payment is final.
const SETTLE_POLL: Duration = Duration::from_millis(200);
/// Longest wait for a first payment to complete before the load (the worker subscribed,
/// the simulator up).
const PAYMENT_WARMUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one warm-up payment is watched before another is sent: a payment published
/// before the worker's queue existed is only re-driven by the sweep, much later.
const WARMUP_PAYMENT_WAIT: Duration = Duration::from_secs(2);
/// Pause of a client after a `Busy` (503) answer.
const BUSY_BACKOFF: Duration = Duration::from_millis(10);
/// Longest wait for one HTTP request of `bench payments --url`.
const PAYMENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Event type of the broker baseline; no product consumer is bound to it.
const BASELINE_TYPE: &str = "bench.baseline";
/// Consumer (queue) name of the broker baseline.
const BASELINE_CONSUMER: &str = "bench-baseline";
/// Padding of a baseline event, so that it is about as large as a `transaction.created`
/// event of the money path (about 1 KiB as a CloudEvent).
const BASELINE_PAD_BYTES: usize = 600;
/// After the baseline's window, how long the consumer waits for stragglers.
const BASELINE_DRAIN: Duration = Duration::from_secs(10);
/// Longest wait for a probe event before the baseline starts (Kafka's group join).
const BASELINE_WARMUP_TIMEOUT: Duration = Duration::from_secs(30);
/// The external beneficiary of every bench payment (the IBAN of the API examples).
const BENCH_IBAN: &str = "DE89 3704 0044 0532 0130 00";

/// Options of `bench payments`.
#[derive(Debug, Clone, Args)]
pub struct PaymentsBench {
    /// Concurrent clients, each with one payment creation in flight and a debtor account
    /// (and customer) of its own, so that no two clients contend on one account.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// How long to create payments, in seconds.
    #[arg(long, default_value_t = 10)]
    duration_s: u64,
    /// Database of the in-process app (`postgres://...`, best a fresh one); default: SQLite
    /// in a new temporary directory.
    #[arg(long)]
    database_url: Option<String>,
    /// The event bus of the in-process app; with `rabbitmq` or `kafka` the broker's own
    /// ceiling is measured afterwards too (see --baseline-publishers).
    #[arg(long, value_enum, default_value = "memory")]
    bus: BusKind,
    /// The broker's URL (default: the local broker of that kind). Each run works under a
    /// fresh exchange/queue/topic prefix and deletes what it declared at the end.
    #[arg(long)]
    bus_url: Option<String>,
    /// Drive a running ferrobank over HTTP instead (authentication off); its database, bus
    /// and risk rules are then the server's, and `ledger verify` is left to the operator.
    #[arg(long)]
    url: Option<String>,
    /// Amount of each payment, in minor units (EUR cents).
    #[arg(long, default_value_t = 100)]
    amount_minor: i64,
    /// Latency of the built-in payment gateway simulator per charge, in milliseconds.
    #[arg(long, default_value_t = 0)]
    psp_latency_ms: u64,
    /// Longest wait after the load for every payment to be final, in seconds.
    #[arg(long, default_value_t = 120)]
    settle_timeout_s: u64,
    /// Concurrent publishers of the broker baseline (publish with confirms through the bus
    /// adapter, one consumer acking), for as long as the payments load.
    #[arg(long, default_value_t = 16)]
    baseline_publishers: usize,
    /// Skip the broker baseline.
    #[arg(long)]
    no_baseline: bool,
    /// Print one JSON object instead of text (for scripts).
    #[arg(long)]
    json: bool,
}

/// One payment as read back after the run.
#[derive(Debug, Clone)]
struct PaymentRow {
    status: String,
    created_at_ms: i64,
    updated_at_ms: i64,
}

/// What one creation attempt came to.
#[derive(Debug)]
enum Creation {
    /// Committed (hold, row, event); its id.
    Created(Uuid),
    /// The service is saturated (`Busy`, HTTP 503): back off and retry.
    Busy,
}

/// Where payments are created and read: the service in this process, or a server's API.
#[derive(Debug, Clone)]
enum PaymentTarget {
    InProcess { service: PaymentService, ledger: LedgerService },
    Http { http: reqwest::Client, base: Arc<str> },
}

/// The parts of every bench payment.
#[derive(Debug, Clone)]
struct PaymentTemplate {
    beneficiary: Beneficiary,
    amount: Amount,
    currency: Currency,
    reference: Reference,
}

impl PaymentTemplate {
    fn new(amount_minor: i64) -> Result<Self, String> {
        let bad = |what: &str, e: &dyn std::fmt::Display| format!("bench payment {what}: {e}");
        Ok(Self {
            beneficiary: Beneficiary::External {
                iban: Iban::parse(BENCH_IBAN).map_err(|e| bad("IBAN", &e))?,
                name: BeneficiaryName::parse("Carol").map_err(|e| bad("name", &e))?,
                country: CountryCode::parse("DE").map_err(|e| bad("country", &e))?,
            },
            amount: Amount::new(amount_minor).map_err(|e| bad("amount", &e))?,
            currency: Currency::parse("EUR").map_err(|e| bad("currency", &e))?,
            reference: Reference::parse("bench").map_err(|e| bad("reference", &e))?,
        })
    }

    fn body(&self, debtor: Uuid) -> Value {
        json!({
            "debtor_account": debtor,
            "beneficiary": self.beneficiary,
            "amount": self.amount.minor_units(),
            "currency": self.currency.code(),
            "reference": self.reference.as_str(),
        })
    }
}

/// Statuses a payment leaves by itself (the worker moves it on).
const OPEN_STATUSES: [PaymentStatus; 3] =
    [PaymentStatus::PendingRisk, PaymentStatus::Pending, PaymentStatus::Processing];

impl PaymentTarget {
    /// Opens `count` customer accounts (one owner each, never overdrawn) and funds each
    /// with [`FUNDING_MINOR`] from a bank account of the bench's.
    async fn open_accounts(&self, count: usize, run: &str) -> Result<Vec<Uuid>, String> {
        let funding = Uuid::new_v4();
        self.open_account(funding, "bench-funding", BENCH_FUNDING_CODE, false).await?;
        let ids: Vec<Uuid> = (0..count).map(|_| Uuid::new_v4()).collect();
        for (n, id) in ids.iter().enumerate() {
            self.open_account(*id, &format!("bench-{run}-{n}"), 1, true).await?;
        }
        for chunk in ids.chunks(FUNDING_CHUNK) {
            self.fund(funding, chunk).await?;
        }
        Ok(ids)
    }

    async fn open_account(
        &self,
        id: Uuid,
        owner: &str,
        code: u16,
        never_overdrawn: bool,
    ) -> Result<(), String> {
        let error = |e: &dyn std::fmt::Display| format!("opening bench account {id}: {e}");
        match self {
            Self::InProcess { ledger, .. } => {
                let new = NewAccount {
                    id: AccountId(id),
                    currency: Currency::parse("EUR").map_err(|e| error(&e))?,
                    code,
                    owner: owner.to_owned(),
                    flags: AccountFlags {
                        debits_must_not_exceed_credits: never_overdrawn,
                        ..AccountFlags::default()
                    },
                };
                ledger.open_account(new).await.map_err(|e| error(&e))?;
            }
            Self::Http { http, base } => {
                let body = json!({
                    "id": id, "currency": "EUR", "owner": owner, "code": code,
                    "flags": { "debits_must_not_exceed_credits": never_overdrawn },
                });
                let response = http
                    .post(format!("{base}/api/accounts"))
                    .json(&body)
                    .send()
                    .await
                    .map_err(|e| error(&e))?;
                if !response.status().is_success() {
                    return Err(error(&format!("HTTP {}", response.status())));
                }
            }
        }
        Ok(())
    }

    async fn fund(&self, funding: Uuid, accounts: &[Uuid]) -> Result<(), String> {
        match self {
            Self::InProcess { ledger, .. } => {
                let eur = Currency::parse("EUR").map_err(|e| e.to_string())?;
                let amount = Amount::new(FUNDING_MINOR).map_err(|e| e.to_string())?;
                let transfers = accounts
                    .iter()
                    .map(|id| NewTransfer {
                        id: TransferId(Uuid::new_v4()),
                        debit_account_id: Some(AccountId(funding)),
                        credit_account_id: Some(AccountId(*id)),
                        amount: Some(amount),
                        currency: Some(eur),
                        code: 1,
                        kind: TransferKind::Posted,
                        linked: false,
                    })
                    .collect();
                let results = ledger
                    .create_transfers(transfers)
                    .await
                    .map_err(|e| format!("funding bench accounts: {e}"))?;
                if let Some(Err(error)) = results.into_iter().find(Result::is_err) {
                    return Err(format!("funding bench accounts: {error}"));
                }
            }
            Self::Http { http, base } => {
                for id in accounts {
                    let body = json!({
                        "id": Uuid::new_v4(), "debit_account_id": funding,
                        "credit_account_id": id, "amount": FUNDING_MINOR, "currency": "EUR",
                    });
                    let response = http
                        .post(format!("{base}/api/transfers"))
                        .json(&body)
                        .send()
                        .await
                        .map_err(|e| format!("funding bench account {id}: {e}"))?;
                    if !response.status().is_success() {
                        return Err(format!(
                            "funding bench account {id}: HTTP {}",
                            response.status()
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Creates one payment from `debtor` (a fresh id and Idempotency-Key).
    async fn create(&self, debtor: Uuid, template: &PaymentTemplate) -> Result<Creation, String> {
        let id = Uuid::new_v4();
        match self {
            Self::InProcess { service, .. } => {
                let new = NewPayment::new(
                    PaymentId(id),
                    AccountId(debtor),
                    template.beneficiary.clone(),
                    template.amount,
                    template.currency,
                    template.reference.clone(),
                )
                .map_err(|e| e.to_string())?;
                let request =
                    CreatePayment { new, idempotency_key: id.to_string(), traceparent: None };
                match service.create(None, request).await {
                    Ok(Created::New(p) | Created::Exists(p)) => Ok(Creation::Created(p.id.0)),
                    Err(PaymentsError::Busy) => Ok(Creation::Busy),
                    Err(error) => Err(error.to_string()),
                }
            }
            Self::Http { http, base } => {
                let response = http
                    .post(format!("{base}/api/payments"))
                    .header("Idempotency-Key", id.to_string())
                    .json(&template.body(debtor))
                    .send()
                    .await
                    .map_err(|e| format!("POST /api/payments: {e}"))?;
                let status = response.status();
                let body = response.bytes().await.map_err(|e| e.to_string())?;
                if status == reqwest::StatusCode::SERVICE_UNAVAILABLE {
                    return Ok(Creation::Busy);
                }
                let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                match parsed["payment_id"].as_str().map(Uuid::parse_str) {
                    Some(Ok(id)) if status.is_success() => Ok(Creation::Created(id)),
                    _ => Err(format!("POST /api/payments: HTTP {status}: {}", snippet(&body))),
                }
            }
        }
    }

    /// The status of one payment.
    async fn status(&self, id: Uuid) -> Result<String, String> {
        match self {
            Self::InProcess { service, .. } => service
                .get(None, PaymentId(id))
                .await
                .map(|p| p.status.as_str().to_owned())
                .map_err(|e| e.to_string()),
            Self::Http { http, base } => {
                let response = http
                    .get(format!("{base}/api/payments/{id}"))
                    .send()
                    .await
                    .map_err(|e| format!("GET /api/payments/{id}: {e}"))?;
                let parsed: Value = response.json().await.map_err(|e| e.to_string())?;
                Ok(parsed["status"].as_str().unwrap_or_default().to_owned())
            }
        }
    }

    /// One page of `account`'s payments (only those in `statuses`, when given), newest
    /// first, and the cursor of the next page.
    async fn page(
        &self,
        account: Uuid,
        statuses: &[PaymentStatus],
        limit: u32,
        cursor: Option<String>,
    ) -> Result<(Vec<PaymentRow>, Option<String>), String> {
        match self {
            Self::InProcess { service, .. } => {
                let query = PaymentQuery {
                    account: Some(AccountId(account)),
                    statuses: statuses.to_vec(),
                    before_seq: cursor.as_deref().and_then(|c| c.parse().ok()),
                    limit,
                    ..PaymentQuery::default()
                };
                let page = service.list(None, query).await.map_err(|e| e.to_string())?;
                let rows = page
                    .payments
                    .into_iter()
                    .map(|p| PaymentRow {
                        status: p.status.as_str().to_owned(),
                        created_at_ms: p.created_at_ms,
                        updated_at_ms: p.updated_at_ms,
                    })
                    .collect();
                Ok((rows, page.next_before.map(|seq| seq.to_string())))
            }
            Self::Http { http, base } => {
                let mut url = format!("{base}/api/payments?account={account}&limit={limit}");
                if !statuses.is_empty() {
                    let names: Vec<&str> = statuses.iter().map(|s| s.as_str()).collect();
                    url.push_str(&format!("&status={}", names.join(",")));
                }
                if let Some(cursor) = &cursor {
                    url.push_str(&format!("&cursor={}", form_value(cursor)));
                }
                let response =
                    http.get(&url).send().await.map_err(|e| format!("GET {url}: {e}"))?;
                let status = response.status();
                let body = response.bytes().await.map_err(|e| e.to_string())?;
                if !status.is_success() {
                    return Err(format!("GET {url}: HTTP {status}: {}", snippet(&body)));
                }
                let parsed: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
                let rows = parsed["payments"]
                    .as_array()
                    .map(|rows| {
                        rows.iter()
                            .map(|p| PaymentRow {
                                status: p["status"].as_str().unwrap_or_default().to_owned(),
                                created_at_ms: p["created_at_ms"].as_i64().unwrap_or_default(),
                                updated_at_ms: p["updated_at_ms"].as_i64().unwrap_or_default(),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                Ok((rows, parsed["next_cursor"].as_str().map(str::to_owned)))
            }
        }
    }

    /// Every payment of `account`.
    async fn payments(&self, account: Uuid) -> Result<Vec<PaymentRow>, String> {
        let mut rows = Vec::new();
        let mut cursor = None;
        loop {
            let (page, next) = self.page(account, &[], READ_PAGE, cursor).await?;
            rows.extend(page);
            match next {
                Some(next) => cursor = Some(next),
                None => return Ok(rows),
            }
        }
    }

    /// Whether some payment of `account` is not final yet (and not waiting for a human).
    async fn has_open(&self, account: Uuid) -> Result<bool, String> {
        Ok(!self.page(account, &OPEN_STATUSES, 1, None).await?.0.is_empty())
    }

    /// Sends payments from `account` until one completes: the worker is subscribed, the
    /// gateway answers. (On a broker, events published before the worker's queue exists
    /// are lost to it; only the sweep would finish those payments.)
    async fn warm_up(&self, account: Uuid, template: &PaymentTemplate) -> Result<(), String> {
        let deadline = Instant::now() + PAYMENT_WARMUP_TIMEOUT;
        while Instant::now() < deadline {
            let Creation::Created(id) = self.create(account, template).await? else {
                tokio::time::sleep(BUSY_BACKOFF).await;
                continue;
            };
            let watch_until = Instant::now() + WARMUP_PAYMENT_WAIT;
            while Instant::now() < watch_until {
                match self.status(id).await?.as_str() {
                    "completed" => return Ok(()),
                    "pending" | "processing" | "pending_risk" => {}
                    other => return Err(format!("the warm-up payment ended {other}")),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Err(format!(
            "no warm-up payment completed within {} s: is the payment worker running?",
            PAYMENT_WARMUP_TIMEOUT.as_secs()
        ))
    }
}

/// What one client of the payments load did.
#[derive(Debug)]
struct CreateStats {
    created: u64,
    busy: u64,
    failed: u64,
    first_error: Option<String>,
    latency_us: Histogram<u64>,
}

/// A bus the bench declares things on, kept concrete so that it can delete them.
#[derive(Debug, Clone)]
enum BrokerBus {
    Rabbit(RabbitBus),
    Kafka(KafkaBus),
}

impl BrokerBus {
    /// Connects to the broker of `kind` under `prefix`; `None` for the in-memory bus.
    async fn connect(
        kind: BusKind,
        url: Option<&str>,
        prefix: &str,
        settings: &BusSettings,
    ) -> Result<Option<Self>, String> {
        let settings = BusSettings {
            kind,
            url: url.map(str::to_owned),
            prefix: prefix.into(),
            ..settings.clone()
        };
        let Some(url) = settings.effective_url() else { return Ok(None) };
        let retry = RetryPolicy {
            max_attempts: settings.max_attempts,
            initial_backoff_ms: settings.initial_backoff_ms,
            max_backoff_ms: settings.max_backoff_ms,
        };
        let redacted = crate::config::redact_url(&url);
        Ok(Some(match kind {
            BusKind::Memory => return Ok(None),
            BusKind::Rabbitmq => Self::Rabbit(
                RabbitBus::connect(
                    &url,
                    RabbitBusOptions {
                        prefix: prefix.into(),
                        retry,
                        prefetch: settings.prefetch,
                        ..RabbitBusOptions::default()
                    },
                )
                .await
                .map_err(|e| format!("RabbitMQ at {redacted}: {e}"))?,
            ),
            BusKind::Kafka => Self::Kafka(
                KafkaBus::connect(
                    &url,
                    KafkaBusOptions {
                        topic_prefix: prefix.into(),
                        retry,
                        prefetch: settings.prefetch,
                        ..KafkaBusOptions::default()
                    },
                )
                .await
                .map_err(|e| format!("Kafka at {redacted}: {e}"))?,
            ),
        }))
    }

    fn as_dyn(&self) -> Arc<dyn EventBus> {
        match self {
            Self::Rabbit(bus) => Arc::new(bus.clone()),
            Self::Kafka(bus) => Arc::new(bus.clone()),
        }
    }

    /// Deletes `consumers`' queues or groups, then everything this handle declared.
    async fn teardown(&self, consumers: &[&str]) -> Result<(), String> {
        match self {
            Self::Rabbit(bus) => {
                for consumer in consumers {
                    bus.delete_consumer(consumer).await.map_err(|e| e.to_string())?;
                }
                bus.teardown().await.map_err(|e| e.to_string())
            }
            Self::Kafka(bus) => {
                for consumer in consumers {
                    bus.delete_consumer(consumer).await.map_err(|e| e.to_string())?;
                }
                bus.teardown().await.map_err(|e| e.to_string())
            }
        }
    }
}

/// The broker's own ceiling: K publishers with confirms, one consumer acking.
#[derive(Debug)]
struct BaselineResult {
    bus: BusKind,
    publishers: usize,
    duration_s: f64,
    published: u64,
    publish_failed: u64,
    first_error: Option<String>,
    /// Consumed (and acked) inside the window.
    consumed: u64,
    /// Publish call (with its confirm) latency.
    confirm_us: Histogram<u64>,
    /// From before the publish call to the consumer's receipt.
    end_to_end_us: Histogram<u64>,
}

impl BaselineResult {
    fn per_s(&self) -> f64 {
        self.consumed as f64 / self.duration_s
    }

    fn json(&self) -> Value {
        let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        json!({
            "bus": self.bus, "publishers": self.publishers, "consumers": 1,
            "duration_s": self.duration_s, "published": self.published,
            "published_per_s": self.published as f64 / self.duration_s,
            "publish_failed": self.publish_failed, "first_error": self.first_error,
            "consumed": self.consumed, "messages_per_s": self.per_s(),
            "payload_pad_bytes": BASELINE_PAD_BYTES,
            "confirm_p50_ms": ms(&self.confirm_us, 0.5), "confirm_p99_ms": ms(&self.confirm_us, 0.99),
            "p50_ms": ms(&self.end_to_end_us, 0.5), "p99_ms": ms(&self.end_to_end_us, 0.99),
            "p999_ms": ms(&self.end_to_end_us, 0.999),
            "max_ms": self.end_to_end_us.max() as f64 / 1000.0,
        })
    }
}

/// Everything one `bench payments` run measured.
#[derive(Debug)]
struct PaymentsReport {
    target: String,
    database: String,
    bus: BusKind,
    clients: usize,
    /// The load window, in seconds.
    window_s: f64,
    create: CreateStats,
    statuses: BTreeMap<String, u64>,
    completed: u64,
    completed_in_window: u64,
    /// From the start of the load to the last completion, in seconds.
    span_s: f64,
    /// `updated_at_ms - created_at_ms` of each completed payment, in microseconds.
    e2e_us: Histogram<u64>,
    drained: bool,
    settle_wait_s: f64,
    /// Payments per status when the load stopped (in-process only).
    at_window_end: Option<BTreeMap<String, u64>>,
    /// CPU seconds of this process during the load window.
    cpu_s: Option<f64>,
    /// Share of the machine's CPU time that was busy during the load window.
    machine_busy: Option<f64>,
    metrics: BTreeMap<String, f64>,
    verify: Option<(bool, String)>,
    baseline: Option<BaselineResult>,
}

impl PaymentsReport {
    /// Payments completed per second of the span from the first create to the last
    /// completion: the primary figure.
    fn per_s(&self) -> f64 {
        if self.span_s > 0.0 { self.completed as f64 / self.span_s } else { 0.0 }
    }

    fn e2e_ms(&self, quantile: f64) -> f64 {
        self.e2e_us.value_at_quantile(quantile) as f64 / 1000.0
    }

    fn create_ms(&self, quantile: f64) -> f64 {
        self.create.latency_us.value_at_quantile(quantile) as f64 / 1000.0
    }

    fn ratio(&self) -> Option<f64> {
        self.baseline
            .as_ref()
            .map(BaselineResult::per_s)
            .filter(|r| *r > 0.0)
            .map(|r| self.per_s() / r)
    }

    fn failed(&self) -> bool {
        self.create.failed > 0
            || !self.drained
            || self.verify.as_ref().is_some_and(|(ok, _)| !ok)
            || self.baseline.as_ref().is_some_and(|b| b.publish_failed > 0)
    }

    fn print(&self, json: bool) {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        if json {
            println!(
                "{}",
                json!({
                    "scenario": "payments", "target": self.target, "database": self.database,
                    "bus": self.bus, "clients": self.clients, "cores": cores,
                    "window_s": self.window_s,
                    "created": self.create.created, "busy": self.create.busy,
                    "failed": self.create.failed, "first_error": self.create.first_error,
                    "created_per_s": self.create.created as f64 / self.window_s,
                    "create_p50_ms": self.create_ms(0.5), "create_p99_ms": self.create_ms(0.99),
                    "create_p999_ms": self.create_ms(0.999),
                    "statuses": self.statuses, "completed": self.completed,
                    "completed_in_window": self.completed_in_window,
                    "completed_in_window_per_s": self.completed_in_window as f64 / self.window_s,
                    "span_s": self.span_s, "payments_per_s": self.per_s(),
                    "e2e_p50_ms": self.e2e_ms(0.5), "e2e_p99_ms": self.e2e_ms(0.99),
                    "e2e_p999_ms": self.e2e_ms(0.999),
                    "e2e_max_ms": self.e2e_us.max() as f64 / 1000.0,
                    "drained": self.drained, "settle_wait_s": self.settle_wait_s,
                    "at_window_end": self.at_window_end,
                    "process_cpu_s": self.cpu_s, "machine_busy": self.machine_busy,
                    "metrics": self.metrics,
                    "ledger_verify_ok": self.verify.as_ref().map(|v| v.0),
                    "ledger_verify": self.verify.as_ref().map(|v| v.1.clone()),
                    "baseline": self.baseline.as_ref().map(BaselineResult::json),
                    "ratio_to_broker": self.ratio(),
                })
            );
            return;
        }
        println!(
            "payments bench: {} ({}), {} bus, database {}, {} clients, {cores} cores",
            self.target,
            if self.target == "in-process" {
                "payments service called directly, no HTTP"
            } else {
                "HTTP"
            },
            bus_name(self.bus),
            self.database,
            self.clients
        );
        println!(
            "created in {:.1} s: {} ({:.0}/s), {} busy, {} failed; create call ms: p50 {:.2}  p99 {:.2}  p99.9 {:.2}",
            self.window_s,
            self.create.created,
            self.create.created as f64 / self.window_s,
            self.create.busy,
            self.create.failed,
            self.create_ms(0.5),
            self.create_ms(0.99),
            self.create_ms(0.999)
        );
        if let Some(error) = &self.create.first_error {
            println!("  first failure: {error}");
        }
        let statuses: Vec<String> = self.statuses.iter().map(|(s, n)| format!("{s} {n}")).collect();
        println!(
            "final statuses: {} ({}, after waiting {:.1} s)",
            statuses.join(", "),
            if self.drained { "every payment final" } else { "NOT all final: gave up waiting" },
            self.settle_wait_s
        );
        println!(
            "end to end: {:.0} payments/s = {} completed / {:.1} s from the first create to the last completion",
            self.per_s(),
            self.completed,
            self.span_s
        );
        println!(
            "  completed inside the {:.1} s load window: {} ({:.0}/s)",
            self.window_s,
            self.completed_in_window,
            self.completed_in_window as f64 / self.window_s
        );
        println!(
            "created-to-completed ms (updated_at_ms - created_at_ms of each completed payment, \
             millisecond stamps): p50 {:.0}  p99 {:.0}  p99.9 {:.0}  max {:.0}",
            self.e2e_ms(0.5),
            self.e2e_ms(0.99),
            self.e2e_ms(0.999),
            self.e2e_us.max() as f64 / 1000.0
        );
        if let Some(at_end) = &self.at_window_end {
            let parts: Vec<String> = at_end.iter().map(|(s, n)| format!("{s} {n}")).collect();
            println!("  when the load stopped: {}", parts.join(", "));
        }
        if let (Some(cpu_s), Some(busy)) = (self.cpu_s, self.machine_busy) {
            println!(
                "CPU during the load: this process {:.2} cores; the machine {:.0}% busy",
                cpu_s / self.window_s,
                100.0 * busy
            );
        }
        if !self.metrics.is_empty() {
            let parts: Vec<String> =
                self.metrics.iter().map(|(k, v)| format!("{k} {v:.1}")).collect();
            println!("metrics: {}", parts.join(", "));
        }
        if let Some((_, verdict)) = &self.verify {
            println!("ledger verify: {verdict}");
        }
        if let Some(b) = &self.baseline {
            let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
            println!(
                "broker baseline ({}, through the bus adapter, fresh prefix): {} publishers with \
                 confirms, 1 consumer acking, {:.1} s",
                bus_name(b.bus),
                b.publishers,
                b.duration_s
            );
            println!(
                "  {:.0} messages/s consumed ({} consumed, {} published, {} failed); \
                 publish-to-consume ms p50 {:.2}  p99 {:.2}; confirm ms p50 {:.2}  p99 {:.2}",
                b.per_s(),
                b.consumed,
                b.published,
                b.publish_failed,
                ms(&b.end_to_end_us, 0.5),
                ms(&b.end_to_end_us, 0.99),
                ms(&b.confirm_us, 0.5),
                ms(&b.confirm_us, 0.99)
            );
            if let Some(error) = &b.first_error {
                println!("  first failure: {error}");
            }
            if let Some(ratio) = self.ratio() {
                println!("ratio payments/s / broker messages/s: {ratio:.3}");
            }
        }
    }
}

fn bus_name(kind: BusKind) -> &'static str {
    match kind {
        BusKind::Memory => "memory",
        BusKind::Rabbitmq => "rabbitmq",
        BusKind::Kafka => "kafka",
    }
}

/// Risk rules that let the bench's load through: the configured ones, with every
/// tier's hourly count and every EUR amount limit raised out of reach. The other rules
/// (blocked countries and parties) stay.
fn bench_risk_rules(mut rules: RiskRulesConfig) -> Result<RiskRulesConfig, String> {
    let eur = Currency::parse("EUR").map_err(|e| e.to_string())?;
    rules.velocity.max_count = Tiered { standard: u32::MAX, premium: u32::MAX, business: u32::MAX };
    let open = CurrencyLimits {
        single_max_minor: UNLIMITED_MINOR,
        single_review_above_minor: UNLIMITED_MINOR,
        daily_max_minor: UNLIMITED_MINOR,
        window_max_minor: UNLIMITED_MINOR,
        new_beneficiary_review_above_minor: UNLIMITED_MINOR,
    };
    rules.currencies.insert(eur, Tiered { standard: open, premium: open, business: open });
    RiskRules::new(rules.clone()).map_err(|e| format!("bench risk rules: {e}"))?;
    Ok(rules)
}

/// Busy and total jiffies of the whole machine, from the first line of `/proc/stat`.
fn machine_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let values: Vec<u64> =
        stat.lines().next()?.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let total: u64 = values.iter().sum();
    // idle and iowait
    let idle = values.get(3)? + values.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// Sums of a Prometheus text exposition's samples by metric name (labels ignored).
fn metric_sums(text: &str, names: &[&str]) -> BTreeMap<String, f64> {
    let mut sums = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let name = series.split('{').next().unwrap_or_default();
        if names.contains(&name)
            && let Ok(value) = value.parse::<f64>()
        {
            *sums.entry(name.to_owned()).or_insert(0.0) += value;
        }
    }
    sums
}

/// Metrics of the in-process app that say where the time goes.
const REPORTED_METRICS: [&str; 10] = [
    "ferrobank_payments_batch_size_sum",
    "ferrobank_payments_batch_size_count",
    "ferrobank_ledger_batch_transfers_sum",
    "ferrobank_ledger_batch_transfers_count",
    "ferrobank_outbox_published_total",
    "ferrobank_psp_calls_total",
    "ferrobank_bus_retried_total",
    "ferrobank_payment_worker_redriven_total",
    "ferrobank_payment_worker_duplicates_total",
    "ferrobank_payments_batch_retries_total",
];

impl PaymentsBench {
    async fn run(self) -> Result<ExitCode, String> {
        self.check_bounds()?;
        let run = Uuid::new_v4().simple().to_string()[..12].to_owned();
        let mut report = match &self.url {
            Some(url) => {
                let http = reqwest::Client::builder()
                    .pool_max_idle_per_host(self.clients)
                    .timeout(PAYMENT_REQUEST_TIMEOUT)
                    .build()
                    .map_err(|e| e.to_string())?;
                let target =
                    PaymentTarget::Http { http, base: Arc::from(url.trim_end_matches('/')) };
                self.measure(&target, &run, url.clone(), "server's".into()).await?
            }
            None => self.run_in_process(&run).await?,
        };
        if matches!(self.bus, BusKind::Rabbitmq | BusKind::Kafka) && !self.no_baseline {
            report.baseline = Some(self.broker_baseline(&run).await?);
        }
        report.print(self.json);
        Ok(if report.failed() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
    }

    fn check_bounds(&self) -> Result<(), String> {
        let within = |name: &str, value: u64, min: u64, max: u64| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(format!("--{name} must be between {min} and {max}, not {value}"))
            }
        };
        within("clients", self.clients as u64, 1, MAX_PAYMENT_CLIENTS as u64)?;
        within("duration-s", self.duration_s, 1, MAX_PAYMENT_DURATION_S)?;
        within("settle-timeout-s", self.settle_timeout_s, 1, MAX_SETTLE_TIMEOUT_S)?;
        within(
            "baseline-publishers",
            self.baseline_publishers as u64,
            1,
            MAX_BASELINE_PUBLISHERS as u64,
        )?;
        within("amount-minor", self.amount_minor.max(0).unsigned_abs(), 1, 1_000_000_000)?;
        if self.url.is_some() && self.database_url.is_some() {
            return Err("--database-url is for the in-process app, not with --url".into());
        }
        Ok(())
    }

    /// The in-process app's configuration: `FERROBANK_*` and ./ferrobank.toml as for any
    /// command (so the money path's knobs can be tuned), then the bench's own settings:
    /// loopback port, authentication, edge and mesh off, the simulator as the gateway,
    /// this run's bus prefix, and risk rules that let the load through.
    fn config(&self, data_dir: Option<&TempDir>, prefix: &str) -> Result<Config, String> {
        let mut config = Config::load(None, &crate::config::Overrides::default())?;
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        if let Some(dir) = data_dir {
            config.data_dir = dir.0.clone();
        }
        config.database_url = self.database_url.clone();
        config.identity.enabled = false;
        config.gateway.enabled = false;
        config.mesh.enabled = false;
        config.payments.enabled = true;
        config.payments.psp_url = None;
        config.psp_sim.latency_ms = self.psp_latency_ms;
        config.bus.kind = self.bus;
        if self.bus_url.is_some() {
            config.bus.url = self.bus_url.clone();
        }
        config.bus.prefix = prefix.to_owned();
        config.risk = bench_risk_rules(config.risk)?;
        Ok(config)
    }

    async fn run_in_process(&self, run: &str) -> Result<PaymentsReport, String> {
        let temp = match self.database_url {
            None => Some(TempDir::new("payments")?),
            Some(_) => None,
        };
        let prefix = format!("bench-{run}");
        let config = self.config(temp.as_ref(), &prefix)?;
        let database = crate::config::redact_url(&config.effective_database_url());
        let store = crate::cli::open_store(&config, true).await?;
        let verify_store = store.clone();
        let running = crate::server::start(&config, store).await?;
        let target = match &running.payments {
            Some(payments) => Ok(PaymentTarget::InProcess {
                service: payments.service.clone(),
                ledger: running.ledger.clone(),
            }),
            None => Err("the money path did not start ([payments] enabled)".to_owned()),
        };
        let measured = match target {
            Ok(target) => self.measure(&target, run, "in-process".into(), database).await,
            Err(error) => Err(error),
        };
        let stopped = running.stop().await;
        // The broker's queues and exchange of this run: deleted whatever happened.
        let cleanup =
            match BrokerBus::connect(self.bus, self.bus_url.as_deref(), &prefix, &config.bus).await
            {
                // Every consumer the running app declared: the worker, notifications, audit.
                Ok(Some(bus)) => {
                    bus.teardown(&[
                        WORKER_CONSUMER,
                        ferrobank_application::notifications::CONSUMER,
                        ferrobank_application::audit_consumer::AUDIT_CONSUMER,
                    ])
                    .await
                }
                Ok(None) => Ok(()),
                Err(error) => Err(error),
            };
        let mut report = measured?;
        stopped?;
        cleanup.map_err(|e| format!("deleting the run's queues/topics (prefix {prefix}): {e}"))?;
        report.verify = Some(ledger_verify(&verify_store).await?);
        drop(temp);
        Ok(report)
    }

    /// Accounts, warm-up, the load, the wait for final statuses, the read-back.
    async fn measure(
        &self,
        target: &PaymentTarget,
        run: &str,
        label: String,
        database: String,
    ) -> Result<PaymentsReport, String> {
        let template = Arc::new(PaymentTemplate::new(self.amount_minor)?);
        let mut accounts = target.open_accounts(self.clients + 1, run).await?;
        let warm_up_account = accounts.pop().ok_or("no accounts")?;
        target.warm_up(warm_up_account, &template).await?;
        let in_process = matches!(target, PaymentTarget::InProcess { .. });
        let pid = std::process::id();
        let (cpu_before, machine_before) = (cpu_time_s(pid), machine_jiffies());
        let started_ms = SystemClock.now_ms();
        let started = Instant::now();
        let deadline = started + Duration::from_secs(self.duration_s);
        let mut tasks = Vec::with_capacity(accounts.len());
        for debtor in accounts.iter().copied() {
            let (target, template) = (target.clone(), template.clone());
            tasks.push(tokio::spawn(async move {
                let mut stats = CreateStats {
                    created: 0,
                    busy: 0,
                    failed: 0,
                    first_error: None,
                    latency_us: new_histogram()?,
                };
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    match target.create(debtor, &template).await {
                        Ok(Creation::Created(_)) => {
                            stats.created += 1;
                            let _ =
                                stats.latency_us.record((sent.elapsed().as_micros() as u64).max(1));
                        }
                        Ok(Creation::Busy) => {
                            stats.busy += 1;
                            tokio::time::sleep(BUSY_BACKOFF).await;
                        }
                        Err(error) => {
                            stats.failed += 1;
                            stats.first_error.get_or_insert(error);
                            tokio::time::sleep(BUSY_BACKOFF).await;
                        }
                    }
                }
                Ok::<_, String>(stats)
            }));
        }
        let mut create = CreateStats {
            created: 0,
            busy: 0,
            failed: 0,
            first_error: None,
            latency_us: new_histogram()?,
        };
        for task in tasks {
            let stats = task.await.map_err(|e| e.to_string())??;
            create.latency_us.add(&stats.latency_us).map_err(|e| e.to_string())?;
            create.created += stats.created;
            create.busy += stats.busy;
            create.failed += stats.failed;
            if create.first_error.is_none() {
                create.first_error = stats.first_error;
            }
        }
        let window_s = started.elapsed().as_secs_f64();
        let window_end_ms = SystemClock.now_ms();
        let cpu_s = cpu_before.zip(cpu_time_s(pid)).map(|(before, after)| after - before);
        let machine_busy = machine_before.zip(machine_jiffies()).and_then(|(b, a)| {
            let total = a.1.saturating_sub(b.1);
            (total > 0).then(|| a.0.saturating_sub(b.0) as f64 / total as f64)
        });
        let at_window_end = match target {
            PaymentTarget::InProcess { service, .. } => {
                service.store().count_by_status().await.ok().map(|counts| {
                    counts.into_iter().map(|(s, n)| (s.as_str().to_owned(), n)).collect()
                })
            }
            PaymentTarget::Http { .. } => None,
        };
        // Every payment final (or held for a human), within the bound.
        let settle_started = Instant::now();
        let settle_deadline = settle_started + Duration::from_secs(self.settle_timeout_s);
        let mut open_from = 0;
        let drained = loop {
            while open_from < accounts.len() && !target.has_open(accounts[open_from]).await? {
                open_from += 1;
            }
            if open_from == accounts.len() {
                break true;
            }
            if Instant::now() >= settle_deadline {
                break false;
            }
            tokio::time::sleep(SETTLE_POLL).await;
        };
        let settle_wait_s = settle_started.elapsed().as_secs_f64();
        let mut statuses = BTreeMap::new();
        let mut e2e_us = new_histogram()?;
        let (mut completed, mut completed_in_window, mut last_ms) = (0u64, 0u64, started_ms);
        for account in &accounts {
            for row in target.payments(*account).await? {
                *statuses.entry(row.status.clone()).or_insert(0u64) += 1;
                if row.status == PaymentStatus::Completed.as_str() {
                    completed += 1;
                    if row.updated_at_ms <= window_end_ms {
                        completed_in_window += 1;
                    }
                    last_ms = last_ms.max(row.updated_at_ms);
                    let latency_ms = (row.updated_at_ms - row.created_at_ms).max(0).unsigned_abs();
                    // 0 ms (same millisecond stamp) is recorded as 1 us.
                    let _ = e2e_us.record((latency_ms * 1000).max(1));
                }
            }
        }
        let metrics = if in_process {
            metric_sums(&ferrobank_interfaces::metrics_handle().render(), &REPORTED_METRICS)
        } else {
            BTreeMap::new()
        };
        Ok(PaymentsReport {
            target: label,
            database,
            bus: self.bus,
            clients: self.clients,
            window_s,
            create,
            statuses,
            completed,
            completed_in_window,
            span_s: (last_ms - started_ms).max(0) as f64 / 1000.0,
            e2e_us,
            drained,
            settle_wait_s,
            at_window_end,
            cpu_s,
            machine_busy,
            metrics,
            verify: None,
            baseline: None,
        })
    }

    /// K publishers publishing with confirms through the bus adapter, one consumer acking,
    /// under a fresh prefix on the same broker, for `--duration-s`.
    async fn broker_baseline(&self, run: &str) -> Result<BaselineResult, String> {
        let prefix = format!("bench-{run}-baseline");
        let settings = Config::load(None, &crate::config::Overrides::default())
            .map(|c| c.bus)
            .unwrap_or_default();
        let broker = BrokerBus::connect(self.bus, self.bus_url.as_deref(), &prefix, &settings)
            .await?
            .ok_or("the broker baseline needs --bus rabbitmq or kafka")?;
        let measured = self.baseline_load(&broker.as_dyn()).await;
        let torn = broker.teardown(&[BASELINE_CONSUMER]).await;
        let result = measured?;
        torn.map_err(|e| format!("deleting the baseline's queues/topics (prefix {prefix}): {e}"))?;
        Ok(result)
    }

    async fn baseline_load(&self, bus: &Arc<dyn EventBus>) -> Result<BaselineResult, String> {
        let base = Instant::now();
        let pad = "x".repeat(BASELINE_PAD_BYTES);
        let event = move |publisher: usize, probe: bool| {
            Event::new(
                Uuid::new_v4(),
                "/ferrobank-bench",
                BASELINE_TYPE,
                format!("bench-publisher-{publisher}"),
                ferrobank_application::bus::rfc3339_from_unix_ms(SystemClock.now_ms()),
                json!({ "sent_us": base.elapsed().as_micros() as u64, "probe": probe, "pad": pad }),
            )
        };
        let mut subscription =
            bus.subscribe(BASELINE_CONSUMER, &[BASELINE_TYPE]).await.map_err(|e| e.to_string())?;
        // A probe round trip first: the queue is bound (Kafka: the group joined).
        let warm_until = Instant::now() + BASELINE_WARMUP_TIMEOUT;
        loop {
            bus.publish(&event(0, true)).await.map_err(|e| format!("baseline probe: {e}"))?;
            match tokio::time::timeout(Duration::from_secs(1), subscription.next()).await {
                Ok(Ok(delivery)) => {
                    delivery.ack().await.map_err(|e| e.to_string())?;
                    break;
                }
                Ok(Err(error)) => return Err(format!("baseline subscription: {error}")),
                Err(_) if Instant::now() >= warm_until => {
                    return Err("the baseline's probe event never arrived".into());
                }
                Err(_) => {}
            }
        }
        let started = Instant::now();
        let deadline = started + Duration::from_secs(self.duration_s);
        let consumer = tokio::spawn(async move {
            let mut latency_us = new_histogram()?;
            let mut consumed = 0u64;
            let mut idle_since = None::<Instant>;
            loop {
                let now = Instant::now();
                if now >= deadline + BASELINE_DRAIN {
                    break;
                }
                match tokio::time::timeout(Duration::from_millis(500), subscription.next()).await {
                    Ok(Ok(delivery)) => {
                        idle_since = None;
                        let received = Instant::now();
                        let data = &delivery.event().data;
                        let probe = data["probe"].as_bool().unwrap_or(true);
                        let sent_us = data["sent_us"].as_u64().unwrap_or_default();
                        delivery.ack().await.map_err(|e| format!("baseline ack: {e}"))?;
                        if !probe && received < deadline {
                            consumed += 1;
                            let now_us = received.duration_since(base).as_micros() as u64;
                            let _ = latency_us.record(now_us.saturating_sub(sent_us).max(1));
                        }
                    }
                    Ok(Err(error)) => return Err(format!("baseline subscription: {error}")),
                    Err(_) if Instant::now() >= deadline => {
                        // Idle after the window: everything sent has arrived.
                        if idle_since.get_or_insert_with(Instant::now).elapsed()
                            >= Duration::from_secs(1)
                        {
                            break;
                        }
                    }
                    Err(_) => {}
                }
            }
            Ok::<_, String>((consumed, latency_us))
        });
        let event = Arc::new(event);
        let mut publishers = Vec::with_capacity(self.baseline_publishers);
        for publisher in 0..self.baseline_publishers {
            let (bus, event) = (bus.clone(), event.clone());
            publishers.push(tokio::spawn(async move {
                let mut confirm_us = new_histogram()?;
                let (mut published, mut failed, mut first_error) = (0u64, 0u64, None);
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    match bus.publish(&(*event)(publisher, false)).await {
                        Ok(()) => {
                            published += 1;
                            let _ = confirm_us.record((sent.elapsed().as_micros() as u64).max(1));
                        }
                        Err(error) => {
                            failed += 1;
                            first_error.get_or_insert(error.to_string());
                            tokio::time::sleep(BUSY_BACKOFF).await;
                        }
                    }
                }
                Ok::<_, String>((published, failed, first_error, confirm_us))
            }));
        }
        let mut result = BaselineResult {
            bus: self.bus,
            publishers: self.baseline_publishers,
            duration_s: self.duration_s as f64,
            published: 0,
            publish_failed: 0,
            first_error: None,
            consumed: 0,
            confirm_us: new_histogram()?,
            end_to_end_us: new_histogram()?,
        };
        for publisher in publishers {
            let (published, failed, first_error, confirm_us) =
                publisher.await.map_err(|e| e.to_string())??;
            result.published += published;
            result.publish_failed += failed;
            result.first_error = result.first_error.or(first_error);
            result.confirm_us.add(&confirm_us).map_err(|e| e.to_string())?;
        }
        let (consumed, latency_us) = consumer.await.map_err(|e| e.to_string())??;
        result.consumed = consumed;
        result.end_to_end_us = latency_us;
        Ok(result)
    }
}

/// `ferrobank ledger verify` on the run's database: (sound, a one-line verdict).
async fn ledger_verify(store: &SqlStore) -> Result<(bool, String), String> {
    let report = LedgerStore::verify(store).await.map_err(|e| format!("ledger verify: {e}"))?;
    let counted =
        format!("{} accounts and {} transfers", report.accounts_checked, report.transfers_checked);
    Ok(match report.mismatches.len() {
        0 => (true, format!("OK: {counted}, every ledger balances")),
        n => (false, format!("FAILED: {n} mismatch(es) in {counted}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_headers_are_read_for_the_report() {
        // {"alg":"RS256","typ":"JWT"}
        let token = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.e30.c2ln";
        let summary = token_summary(token);
        assert_eq!(summary["alg"], "RS256");
        assert_eq!(summary["typ"], "JWT");
        assert_eq!(summary["jwt"], true);
        assert_eq!(token_summary("opaque")["alg"], Value::Null);
    }

    #[test]
    fn form_values_are_percent_encoded() {
        assert_eq!(form_value("http://localhost:3000/cb"), "http%3A%2F%2Flocalhost%3A3000%2Fcb");
        assert_eq!(form_value("Fb-abc_1.~"), "Fb-abc_1.~");
    }

    #[test]
    fn this_process_has_cpu_time_and_memory_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(cpu_time_s(std::process::id()).is_some());
            assert!(proc_status_kb(std::process::id(), "VmHWM").is_some_and(|kb| kb > 0));
        }
    }
}
