//! Typed, layered configuration: defaults < file < `FERROBANK_*` env < command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ferrobank_adapters::oidc::{OidcConfig, SigningAlgorithm};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// The `aud` an access token for this API carries unless `[auth] audiences` says otherwise.
pub const DEFAULT_AUDIENCE: &str = "banking-api";

/// File read when `--config` is not given and the file exists.
pub const DEFAULT_CONFIG_FILE: &str = "ferrobank.toml";

/// Everything ferrobank can be told.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the API listens on. Loopback by default: authentication is opt-in (`auth`).
    pub listen: SocketAddr,
    /// Directory of the embedded SQLite database (used when `database_url` is unset).
    pub data_dir: PathBuf,
    /// `postgres://...` or `sqlite://...`; overrides `data_dir`.
    pub database_url: Option<String>,
    /// Connection pool.
    pub database: DatabaseConfig,
    /// Ledger queue and batch bounds.
    pub ledger: LedgerConfig,
    /// Request bounds.
    pub http: HttpConfig,
    /// Logging.
    pub log: LogConfig,
    /// Bearer-token authentication of `/api`: the built-in provider's issuer unless
    /// `issuer` names another (e.g. Keycloak).
    pub auth: AuthConfig,
    /// The built-in OpenID Connect provider.
    pub identity: IdentityConfig,
    /// The zero-trust edge (Istio YAML enforced in front of the API).
    pub gateway: GatewaySettings,
    /// Split mode's mesh: the sidecar of each service role and mTLS between roles.
    pub mesh: MeshSettings,
    /// `ferrobank serve psp-sim`: the external payment gateway simulator.
    pub psp_sim: PspSimSettings,
    /// In-app notifications and webhooks of payment events.
    pub notifications: NotificationsSettings,
    /// The event bus the outbox relay publishes to and consumers read from.
    pub bus: BusSettings,
    /// Payments: the payment gateway, the worker, the relay, velocity counters.
    pub payments: PaymentsSettings,
    /// The risk rules every payment is checked against (see `crates/domain/src/risk.rs`).
    pub risk: ferrobank_domain::RiskRulesConfig,
    /// Where the audit trail and the enriched activity log are kept.
    pub audit: AuditSettings,
    /// Longest graceful shutdown before in-flight work is abandoned, in milliseconds.
    pub shutdown_timeout_ms: u64,
}

/// `[audit]`: the hash-chained audit trail and the enriched activity log
/// (`crate::audit::open`, also what `ferrobank audit verify` reads).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSettings {
    /// MongoDB (`mongodb://host:port/...`) holding both; unset: the SQL database (tables
    /// `audit_records` and `activity`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mongo_url: Option<String>,
    /// The MongoDB database.
    pub mongo_database: String,
    /// Denied requests waiting to be appended; beyond it they are dropped and counted in
    /// `ferrobank_audit_dropped_total`, so a flood of refusals never slows requests down.
    pub denied_queue: usize,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            mongo_url: None,
            mongo_database: "ferrobank".into(),
            denied_queue: ferrobank_application::audit_sink::DEFAULT_DENIED_QUEUE,
        }
    }
}

/// The payment gateway simulator's knobs (percentages are integers, 0 to 100).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PspSimSettings {
    /// Seed of the simulator's random draws: the same seed, the same outcomes.
    pub seed: u64,
    /// Idempotency keys remembered before new charges are answered 503.
    pub max_charges: usize,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Fixed delay before each charge is decided, in milliseconds.
    pub latency_ms: u64,
    /// Extra delay drawn from `0..=latency_jitter_ms`.
    pub latency_jitter_ms: u64,
    /// Share of charges answered 5xx without charging, in percent.
    pub error_rate_pct: u32,
    /// Share of charges charged but answered only after `hang_ms`, in percent.
    pub timeout_rate_pct: u32,
    /// Share of charges definitively declined (402, not charged), in percent.
    pub decline_rate_pct: u32,
    /// How long a timed-out charge withholds its answer, in milliseconds.
    pub hang_ms: u64,
    /// Share of callbacks delivered twice, in percent.
    pub duplicate_callback_pct: u32,
    /// Each callback is delayed by a draw from `0..=late_callback_ms`.
    pub late_callback_ms: u64,
}

impl Default for PspSimSettings {
    fn default() -> Self {
        let knobs = ferrobank_interfaces::psp_sim::Knobs::default();
        let limits = ferrobank_interfaces::psp_sim::Limits::default();
        Self {
            seed: 42,
            max_charges: limits.max_charges,
            max_body_bytes: limits.max_body_bytes,
            latency_ms: knobs.latency_ms,
            latency_jitter_ms: knobs.latency_jitter_ms,
            error_rate_pct: knobs.error_rate_pct,
            timeout_rate_pct: knobs.timeout_rate_pct,
            decline_rate_pct: knobs.decline_rate_pct,
            hang_ms: knobs.hang_ms,
            duplicate_callback_pct: knobs.duplicate_callback_pct,
            late_callback_ms: knobs.late_callback_ms,
        }
    }
}

impl PspSimSettings {
    /// The runtime knobs these settings start with.
    pub fn knobs(&self) -> ferrobank_interfaces::psp_sim::Knobs {
        ferrobank_interfaces::psp_sim::Knobs {
            latency_ms: self.latency_ms,
            latency_jitter_ms: self.latency_jitter_ms,
            error_rate_pct: self.error_rate_pct,
            timeout_rate_pct: self.timeout_rate_pct,
            decline_rate_pct: self.decline_rate_pct,
            hang_ms: self.hang_ms,
            duplicate_callback_pct: self.duplicate_callback_pct,
            late_callback_ms: self.late_callback_ms,
        }
    }

    /// The simulator's fixed bounds.
    pub fn limits(&self) -> ferrobank_interfaces::psp_sim::Limits {
        ferrobank_interfaces::psp_sim::Limits {
            max_charges: self.max_charges,
            max_body_bytes: self.max_body_bytes,
        }
    }
}

/// `[notifications]`: the in-app inbox, signed webhooks (Standard Webhooks) and, with
/// `smtp_url`, emails of payment events.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NotificationsSettings {
    /// Consume payment events and deliver webhooks (in the processes serving the API).
    pub enabled: bool,
    /// Attempts of one webhook delivery, the first included, before it is `failed`.
    pub max_attempts: u32,
    /// Wait after failed attempt 1, 2, ... in milliseconds; the last value repeats.
    pub backoff_ms: Vec<u64>,
    /// One attempt's timeout (connect, send, first bytes of the answer), in milliseconds.
    pub timeout_ms: u64,
    /// Whether `http://` endpoints may be registered (else `https://` only); on for local
    /// development, turn it off in production.
    pub allow_http: bool,
    /// Whether webhook URLs may name (or resolve to) loopback, private, link-local or
    /// unique-local addresses or `localhost`. Off by default (no SSRF into the bank's own
    /// network or the cloud metadata service); on for a laptop's local receivers.
    pub allow_private_webhook_urls: bool,
    /// The SMTP server emails go through: `smtp://host:port`, `smtps://user:pass@host:465`,
    /// or `smtp://user:pass@host:587?tls=required` (STARTTLS). Unset: no email.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smtp_url: Option<String>,
    /// The `From` of emails (`ferrobank <payments@bank.example>`); required with `smtp_url`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email_from: Option<String>,
    /// How often the deliverer looks for due deliveries, in milliseconds.
    pub poll_interval_ms: u64,
    /// Most deliveries attempted at once.
    pub max_batch: u32,
}

impl Default for NotificationsSettings {
    fn default() -> Self {
        let policy = ferrobank_application::WebhookPolicy::default();
        let deliverer = ferrobank_interfaces::webhooks::DelivererOptions::default();
        Self {
            enabled: true,
            max_attempts: policy.max_attempts,
            backoff_ms: policy.backoff_ms,
            timeout_ms: policy.timeout_ms,
            allow_http: policy.allow_http,
            allow_private_webhook_urls: policy.allow_private,
            smtp_url: None,
            email_from: None,
            poll_interval_ms: deliverer.poll_interval_ms,
            max_batch: deliverer.max_batch,
        }
    }
}

impl NotificationsSettings {
    /// The delivery policy these settings describe.
    pub fn policy(&self) -> ferrobank_application::WebhookPolicy {
        ferrobank_application::WebhookPolicy {
            max_attempts: self.max_attempts,
            backoff_ms: self.backoff_ms.clone(),
            timeout_ms: self.timeout_ms,
            allow_http: self.allow_http,
            allow_private: self.allow_private_webhook_urls,
        }
    }
}

/// Connection pool settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// Most open connections.
    pub max_connections: u32,
    /// Wait for a free connection, in milliseconds.
    pub acquire_timeout_ms: u64,
}

/// Ledger bounds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerConfig {
    /// Requests waiting for the writer before the API answers 503.
    pub queue_capacity: usize,
    /// Most transfers per database transaction.
    pub max_batch_transfers: usize,
    /// Most transfers per API request.
    pub max_request_transfers: usize,
    /// How often expired holds are voided, in milliseconds.
    pub expiry_interval_ms: u64,
}

/// HTTP bounds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Request timeout in milliseconds.
    pub request_timeout_ms: u64,
}

/// The built-in identity provider.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// Run the provider in this process (its realms at `/realms/{realm}`). Off, with no
    /// `auth.issuer`, the API runs unauthenticated (loopback development only).
    pub enabled: bool,
    /// The URL browsers and services reach this server at; default `http://{listen}`.
    /// Issuers are `{public_url}/realms/{realm}`. Never taken from request headers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    /// Keycloak realm files imported (declaratively) at start; none: the built-in
    /// `banking` realm (deploy/keycloak/banking-realm.json).
    pub realm_files: Vec<PathBuf>,
    /// The realm whose tokens the API accepts when `auth.issuer` is unset.
    pub realm: String,
    /// Password given to users created without one (else random, printed once).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dev_password: Option<String>,
    /// Secret given to confidential clients without one (else random, printed once).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dev_client_secret: Option<String>,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            public_url: None,
            realm_files: Vec::new(),
            realm: "banking".into(),
            dev_password: None,
            dev_client_secret: None,
        }
    }
}

/// The edge: `ferrobank serve gateway`, and the same layer in front of `ferrobank up`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GatewaySettings {
    /// Put the edge in front of `ferrobank up` (needs tokens: the built-in provider or
    /// `[auth] issuer`; without either the API is unauthenticated and the edge is off).
    pub enabled: bool,
    /// Directory of Istio YAML, watched for changes; unset: the copy of `deploy/istio`
    /// built into the binary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// Issuer replacing the YAML's `jwtRules[].issuer` (the laptop's overlay); unset: the
    /// built-in provider's when it runs in this process, else the YAML's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Where `serve gateway` sends destinations not in `upstreams` (`http://host:port`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// Per destination (`payment-service = "http://127.0.0.1:8083"`).
    pub upstreams: std::collections::BTreeMap<String, String>,
    /// Route timeout when the VirtualService sets none, in milliseconds.
    pub default_timeout_ms: u64,
    /// Browser origins allowed by CORS; unset: the realm clients' web origins.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cors_origins: Option<Vec<String>>,
    /// Redis URL for rate limits shared by replicas; unset: in memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<String>,
    /// Prefix of the rate-limit keys in Redis (deployments sharing one Redis differ here).
    pub redis_key_prefix: String,
    /// Let requests through when Redis cannot be reached (else 503).
    pub rate_limit_fail_open: bool,
    /// How often `dir` is checked for changes, in milliseconds.
    pub reload_interval_ms: u64,
    /// Whether clients reach the edge over https (HSTS, `x-forwarded-proto`).
    pub https: bool,
    /// A second listener serving only `/stats/prometheus` (Envoy's admin port, 15090 in
    /// Istio): the edge itself refuses `/metrics` from outside, as the policies say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<SocketAddr>,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: None,
            issuer: None,
            upstream: None,
            upstreams: Default::default(),
            default_timeout_ms: 15_000,
            cors_origins: None,
            redis_url: None,
            redis_key_prefix: "ferrobank:ratelimit:".into(),
            rate_limit_fail_open: true,
            reload_interval_ms: 2_000,
            https: false,
            admin_listen: None,
        }
    }
}

/// Which event bus.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BusKind {
    /// In this process (the embedded default): fed by the same outbox; events not yet
    /// consumed are lost with the process, and the payment worker's sweep re-drives them.
    Memory,
    /// RabbitMQ (`[bus] url = "amqp://..."`): durable quorum queues, confirms, DLQs.
    Rabbitmq,
    /// A Kafka-protocol broker (`[bus] url = "kafka://host:9092"`).
    Kafka,
}

/// `[bus]`: where events go.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BusSettings {
    /// `memory`, `rabbitmq` or `kafka`.
    pub kind: BusKind,
    /// The broker's URL (`amqp://guest:guest@127.0.0.1:5672/%2f`, `kafka://127.0.0.1:9092`);
    /// defaults to the local broker of that kind.
    pub url: Option<String>,
    /// Exchange/queue (RabbitMQ) or topic (Kafka) name prefix: one per environment.
    pub prefix: String,
    /// Unsettled deliveries a consumer holds at once.
    pub prefetch: u16,
    /// Deliveries of one event before it goes to the consumer's dead-letter queue.
    pub max_attempts: u32,
    /// Backoff before the first redelivery, in milliseconds (doubling per attempt).
    pub initial_backoff_ms: u64,
    /// Longest backoff between redeliveries, in milliseconds.
    pub max_backoff_ms: u64,
}

impl Default for BusSettings {
    fn default() -> Self {
        Self {
            kind: BusKind::Memory,
            url: None,
            prefix: "ferrobank".into(),
            prefetch: 512,
            max_attempts: 5,
            initial_backoff_ms: 200,
            max_backoff_ms: 10_000,
        }
    }
}

impl BusSettings {
    /// The broker URL: the configured one or the local default of the kind.
    pub fn effective_url(&self) -> Option<String> {
        match (self.kind, &self.url) {
            (BusKind::Memory, _) => None,
            (_, Some(url)) => Some(url.clone()),
            (BusKind::Rabbitmq, None) => Some("amqp://guest:guest@127.0.0.1:5672/%2f".into()),
            (BusKind::Kafka, None) => Some("kafka://127.0.0.1:9092".into()),
        }
    }
}

/// `[payments]`: the money path's moving parts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PaymentsSettings {
    /// Serve `/api/payments` and run the relay and worker (with the API roles).
    pub enabled: bool,
    /// Run the payment worker in this process when its role is served (`up`, `serve
    /// payment-worker`); false leaves payments pending for workers elsewhere.
    pub worker: bool,
    /// The external payment gateway; unset: a built-in simulator on a loopback port
    /// (knobs of `[psp_sim]`).
    pub psp_url: Option<String>,
    /// One gateway call's timeout, in milliseconds.
    pub psp_timeout_ms: u64,
    /// Calls per charge before the worker leaves it to a later redelivery.
    pub psp_max_attempts: u32,
    /// Consecutive failed calls that open the circuit breaker.
    pub breaker_failure_threshold: u32,
    /// How long the breaker stays open, in milliseconds.
    pub breaker_open_ms: u64,
    /// Payments the worker processes at once.
    pub worker_concurrency: usize,
    /// A pending/processing payment untouched this long is re-driven by the sweep (ms).
    pub stale_after_ms: i64,
    /// How often the sweep looks, in milliseconds.
    pub sweep_interval_ms: u64,
    /// Velocity counters in Redis (shared by replicas); unset: in memory.
    pub redis_url: Option<String>,
    /// Prefix of the Redis keys.
    pub redis_key_prefix: String,
    /// Changes waiting for the payments writer before callers get 503.
    pub queue_capacity: usize,
    /// Most changes per transaction.
    pub max_batch: usize,
    /// Most outbox rows the relay publishes per round.
    pub relay_batch: u32,
}

impl Default for PaymentsSettings {
    fn default() -> Self {
        let limits = ferrobank_application::payments::PaymentLimits::default();
        let worker = ferrobank_application::worker::WorkerOptions::default();
        Self {
            enabled: true,
            worker: true,
            psp_url: None,
            psp_timeout_ms: 2_000,
            psp_max_attempts: 3,
            breaker_failure_threshold: 5,
            breaker_open_ms: 5_000,
            worker_concurrency: worker.concurrency,
            stale_after_ms: worker.stale_after_ms,
            sweep_interval_ms: worker.sweep_interval_ms,
            redis_url: None,
            redis_key_prefix: "ferrobank:".into(),
            queue_capacity: limits.queue_capacity,
            max_batch: limits.max_batch,
            relay_batch: 500,
        }
    }
}

/// Split mode's sidecar: each service role (`serve accounts`, `serve identity`, without the
/// edge in the same process) enforces the Istio YAML that selects its own workload again.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MeshSettings {
    /// Judge requests with the AuthorizationPolicies and RequestAuthentications selecting
    /// the role's workload (`app: accounts-service`, `app: keycloak`).
    pub enabled: bool,
    /// Directory of Istio YAML, read at start; unset: `[gateway] dir`, else the copy of
    /// `deploy/istio` built into the binary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// The directory `ferrobank certs` wrote: a service role then serves mutual TLS
    /// (PeerAuthentication STRICT: only; PERMISSIVE: beside plaintext) and `serve gateway`
    /// calls `https://` upstreams with it. Unset: plaintext, and a role whose workload a
    /// STRICT PeerAuthentication selects refuses to start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certs_dir: Option<PathBuf>,
    /// The certificate this process presents (`<certs_dir>/<name>.pem`, as `ferrobank
    /// certs` names them); unset: the role's (`accounts`, `identity`, `gateway`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
}

impl Default for MeshSettings {
    fn default() -> Self {
        Self { enabled: true, dir: None, certs_dir: None, service_account: None }
    }
}

/// Bearer-token authentication (OpenID Connect access tokens of one issuer).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Issuer URL exactly as in tokens' `iss` (Keycloak: `{base}/realms/{realm}`). Unset:
    /// authentication is off and every caller is anonymous (loopback-only use).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Accepted `aud` values; a token must name one of them.
    pub audiences: Vec<String>,
    /// Accepted signature algorithms (`RS256`, `ES256`, `EdDSA`).
    pub algorithms: Vec<SigningAlgorithm>,
    /// Allowed clock skew for `exp`, `nbf` and `iat`, in seconds.
    pub leeway_s: u64,
    /// PEM file of extra CAs trusted for an `https://` issuer (beside the system's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

impl AuthConfig {
    /// The validator configuration, when authentication is on.
    pub fn oidc(&self) -> Option<OidcConfig> {
        let issuer = self.issuer.clone()?;
        Some(OidcConfig {
            algorithms: self.algorithms.clone(),
            leeway_s: self.leeway_s,
            ca_file: self.ca_file.clone(),
            ..OidcConfig::new(issuer, self.audiences.clone())
        })
    }
}

/// Log output.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `auto` (pretty on a terminal, JSON otherwise), `json` or `pretty`.
    pub format: LogFormat,
    /// `tracing` filter, e.g. `info` or `ferrobank=debug,sqlx=warn`.
    pub level: String,
}

/// Log format.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Pretty on a terminal, JSON otherwise.
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable.
    Pretty,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("ferrobank-data"),
            database_url: None,
            database: DatabaseConfig::default(),
            ledger: LedgerConfig::default(),
            http: HttpConfig::default(),
            log: LogConfig::default(),
            auth: AuthConfig::default(),
            identity: IdentityConfig::default(),
            gateway: GatewaySettings::default(),
            mesh: MeshSettings::default(),
            psp_sim: PspSimSettings::default(),
            notifications: NotificationsSettings::default(),
            bus: BusSettings::default(),
            payments: PaymentsSettings::default(),
            risk: ferrobank_domain::RiskRulesConfig::default(),
            audit: AuditSettings::default(),
            shutdown_timeout_ms: 30_000,
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        let d = ferrobank_adapters::StoreOptions::default();
        Self { max_connections: d.max_connections, acquire_timeout_ms: d.acquire_timeout_ms }
    }
}

impl Default for LedgerConfig {
    fn default() -> Self {
        let d = ferrobank_application::LedgerLimits::default();
        Self {
            queue_capacity: d.queue_capacity,
            max_batch_transfers: d.max_batch_transfers,
            max_request_transfers: d.max_request_transfers,
            expiry_interval_ms: d.expiry_interval_ms,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        let d = ferrobank_interfaces::HttpLimits::default();
        Self { max_body_bytes: d.max_body_bytes, request_timeout_ms: d.request_timeout_ms }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        let d = OidcConfig::new("", vec![DEFAULT_AUDIENCE.to_owned()]);
        Self {
            issuer: None,
            audiences: d.audiences,
            algorithms: d.algorithms,
            leeway_s: d.leeway_s,
            ca_file: None,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Auto, level: "info,sqlx=warn".into() }
    }
}

/// Values given on the command line; they win over every other layer.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overrides {
    /// `--listen`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// `--data-dir`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// `--database-url`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    /// `--realm-file` (repeatable)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentityOverrides>,
    /// `--bus`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bus: Option<BusOverrides>,
}

/// Command-line values of `[bus]`.
#[derive(Debug, Clone, Serialize)]
pub struct BusOverrides {
    /// `--bus`
    pub kind: BusKind,
}

impl Overrides {
    /// With `--bus` (none: the configured bus stays).
    pub fn bus(mut self, kind: Option<BusKind>) -> Self {
        self.bus = kind.map(|kind| BusOverrides { kind });
        self
    }

    /// With `--realm-file` values (none: the configured ones stay).
    pub fn realms(mut self, realm_files: Vec<PathBuf>) -> Self {
        if !realm_files.is_empty() {
            self.identity = Some(IdentityOverrides { realm_files });
        }
        self
    }
}

/// Command-line values of `[identity]`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IdentityOverrides {
    /// `--realm-file`
    pub realm_files: Vec<PathBuf>,
}

impl Config {
    /// The defaults of `ferrobank up`, the laptop: [`Config::default`], except that
    /// webhooks may go to local receivers (`allow_private_webhook_urls`), as the README's
    /// quick start does. A file or the environment still decides.
    pub fn laptop() -> Self {
        let mut config = Self::default();
        config.notifications.allow_private_webhook_urls = true;
        config
    }

    /// Loads the layers. `file` is `--config`; without it `ferrobank.toml` is read if present.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, String> {
        Self::load_over(Config::default(), file, overrides)
    }

    /// [`Config::load`] over other defaults ([`Config::laptop`]).
    pub fn load_over(
        defaults: Config,
        file: Option<&Path>,
        overrides: &Overrides,
    ) -> Result<Self, String> {
        let mut figment = Figment::from(Serialized::defaults(defaults));
        match file {
            Some(path) if !path.exists() => {
                return Err(format!("config file {} does not exist", path.display()));
            }
            Some(path) => figment = figment.merge(Toml::file_exact(path)),
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => {
                figment = figment.merge(Toml::file_exact(DEFAULT_CONFIG_FILE));
            }
            None => {}
        }
        figment = figment
            // `FERROBANK_TEST_*` belongs to the test harness (service URLs for the test
            // suites), not to the configuration: every other `FERROBANK_*` must be a key.
            .merge(
                Env::prefixed("FERROBANK_")
                    .filter(|key| !key.as_str().to_ascii_lowercase().starts_with("test_"))
                    .split("__")
                    .ignore(&["config"]),
            )
            .merge(Serialized::defaults(overrides));
        let config: Config = figment.extract().map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        let positive = [
            ("database.max_connections", u64::from(self.database.max_connections)),
            ("ledger.queue_capacity", self.ledger.queue_capacity as u64),
            ("ledger.max_batch_transfers", self.ledger.max_batch_transfers as u64),
            ("ledger.max_request_transfers", self.ledger.max_request_transfers as u64),
            ("http.max_body_bytes", self.http.max_body_bytes as u64),
            ("http.request_timeout_ms", self.http.request_timeout_ms),
            ("psp_sim.max_charges", self.psp_sim.max_charges as u64),
            ("psp_sim.max_body_bytes", self.psp_sim.max_body_bytes as u64),
            ("audit.denied_queue", self.audit.denied_queue as u64),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be greater than 0"));
        }
        if let Some(url) = &self.database_url
            && ferrobank_adapters::Backend::from_url(url).is_none()
        {
            return Err("database_url must start with postgres:// or sqlite://".into());
        }
        if let Some(url) = &self.identity.public_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err("identity.public_url must start with http:// or https://".into());
        }
        if let Some(oidc) = self.auth.oidc() {
            oidc.validate().map_err(|e| format!("auth: {e}"))?;
        }
        self.psp_sim.knobs().validate().map_err(|e| format!("psp_sim.{e}"))?;
        if let Some(url) = &self.audit.mongo_url
            && !url.starts_with("mongodb://")
        {
            return Err("audit.mongo_url must start with mongodb:// (a host list; no +srv)".into());
        }
        self.notifications.policy().validate().map_err(|e| format!("notifications.{e}"))?;
        let notifications = &self.notifications;
        if notifications.poll_interval_ms == 0 || !(1..=1_000).contains(&notifications.max_batch) {
            return Err("notifications: poll_interval_ms must be > 0, max_batch 1 to 1000".into());
        }
        match (&notifications.smtp_url, &notifications.email_from) {
            (Some(url), Some(from)) => {
                if !(url.starts_with("smtp://") || url.starts_with("smtps://")) {
                    return Err("notifications.smtp_url must start with smtp:// or smtps://".into());
                }
                ferrobank_interfaces::email::EmailSender::new(url, from, notifications.timeout_ms)
                    .map_err(|e| format!("notifications.{e}"))?;
            }
            (Some(_), None) => {
                return Err("notifications.email_from is required with smtp_url".into());
            }
            (None, _) => {}
        }
        Ok(())
    }

    /// The database URL in effect: `database_url`, else the SQLite file in `data_dir`.
    pub fn effective_database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", self.data_dir.join("ferrobank.db").display()),
        }
    }

    /// The configuration as TOML with secrets replaced by `***`.
    pub fn redacted_toml(&self) -> String {
        let mut shown = self.clone();
        shown.database_url = shown.database_url.as_deref().map(redact_url);
        shown.audit.mongo_url = shown.audit.mongo_url.as_deref().map(redact_url);
        shown.notifications.smtp_url = shown.notifications.smtp_url.as_deref().map(redact_url);
        for secret in [&mut shown.identity.dev_password, &mut shown.identity.dev_client_secret] {
            if secret.is_some() {
                *secret = Some("***".into());
            }
        }
        toml_string(&shown)
    }
}

fn toml_string(config: &Config) -> String {
    // figment re-exports no TOML writer; serialize through serde_json into a small writer.
    let value = serde_json::to_value(config).unwrap_or_default();
    let mut top = String::new();
    let mut sections = String::new();
    if let serde_json::Value::Object(map) = value {
        for (key, value) in map {
            match value {
                serde_json::Value::Object(table) => {
                    sections.push_str(&format!("\n[{key}]\n"));
                    for (k, v) in table {
                        sections.push_str(&format!("{k} = {v}\n"));
                    }
                }
                serde_json::Value::Null => top.push_str(&format!("# {key} is unset\n")),
                other => top.push_str(&format!("{key} = {other}\n")),
            }
        }
    }
    top + &sections
}

/// `postgres://user:secret@host/db` -> `postgres://user:***@host/db`.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let Some(at) = rest.rfind('@') else {
        return url.to_owned();
    };
    match rest[..at].find(':') {
        Some(colon) => format!("{}{}:***{}", &url[..scheme_end], &rest[..colon], &rest[at..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://bank:s3cret@db:5432/ledger"),
            "postgres://bank:***@db:5432/ledger"
        );
        assert_eq!(redact_url("postgres://db/ledger"), "postgres://db/ledger");
        assert_eq!(redact_url("sqlite://data/ferrobank.db"), "sqlite://data/ferrobank.db");
    }

    #[test]
    fn the_audit_store_url_is_redacted_and_checked() {
        let mut config = Config::default();
        config.audit.mongo_url =
            Some("mongodb://audit:hunter2@db:27017/?directConnection=true".into());
        let text = config.redacted_toml();
        assert!(!text.contains("hunter2") && text.contains("[audit]"), "{text}");
        assert_eq!(config.validate(), Ok(()));
        config.audit.mongo_url = Some("mongodb+srv://cluster.example".into());
        assert!(config.validate().is_err_and(|e| e.contains("audit.mongo_url")));
        config.audit.mongo_url = None;
        config.audit.denied_queue = 0;
        assert!(config.validate().is_err_and(|e| e.contains("audit.denied_queue")));
    }

    #[test]
    fn smtp_needs_a_sender_and_its_password_is_redacted() {
        let mut config = Config::default();
        assert!(!config.notifications.allow_private_webhook_urls, "safe by default");
        config.notifications.smtp_url = Some("smtps://mailer:hunter2@smtp.example:465".into());
        assert!(config.validate().is_err_and(|e| e.contains("email_from")));
        config.notifications.email_from = Some("ferrobank <payments@bank.example>".into());
        assert_eq!(config.validate(), Ok(()));
        let text = config.redacted_toml();
        assert!(!text.contains("hunter2") && text.contains("mailer:***@"), "{text}");
        config.notifications.email_from = Some("not an address".into());
        assert!(config.validate().is_err_and(|e| e.contains("email_from")));
        config.notifications.smtp_url = Some("http://smtp.example".into());
        assert!(config.validate().is_err_and(|e| e.contains("smtp_url")));
    }

    #[test]
    fn printed_config_never_contains_the_password() {
        let config =
            Config { database_url: Some("postgres://u:hunter2@h/d".into()), ..Config::default() };
        let text = config.redacted_toml();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("u:***@h/d"), "{text}");
    }
}
