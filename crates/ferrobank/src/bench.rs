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
    fn new() -> Result<Self, String> {
        let path = std::env::temp_dir().join(format!("ferrobank-bench-idp-{}", Uuid::new_v4()));
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
            None => Some(TempDir::new()?),
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
