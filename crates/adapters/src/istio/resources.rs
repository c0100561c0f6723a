//! The Istio resource specs ferrobank's gateway implements, as they appear in YAML.
//!
//! Every struct refuses unknown fields: a field ferrobank does not implement stops the
//! load with its path, instead of being silently ignored (fail closed). Field names and
//! meanings follow istio.io/latest/docs/reference/config/.

use std::collections::BTreeMap;
use std::time::Duration;

use regex::Regex;
use serde::{Deserialize, Deserializer};

pub use ferrobank_domain::policy::WorkloadSelector;

/// `RequestAuthentication.spec`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestAuthenticationSpec {
    /// Which workloads of the namespace; all when absent.
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    /// The issuers whose tokens are verified.
    #[serde(default)]
    pub jwt_rules: Vec<JwtRule>,
}

/// One trusted issuer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JwtRule {
    /// `iss` of accepted tokens.
    pub issuer: String,
    /// Where the keys are; discovery from the issuer when absent.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// Accepted `aud` values (one must be present). Required here: Istio's fallback to
    /// the service name does not exist outside a cluster.
    pub audiences: Vec<String>,
    /// Where the token is read; only `Authorization: Bearer` is supported.
    #[serde(default)]
    pub from_headers: Vec<JwtHeader>,
    /// Whether the token is passed upstream (the services validate it again).
    #[serde(default)]
    pub forward_original_token: bool,
}

/// `jwtRules[].fromHeaders[]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtHeader {
    /// Header name.
    pub name: String,
    /// Prefix before the token.
    #[serde(default)]
    pub prefix: Option<String>,
}

/// `PeerAuthentication.spec`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PeerAuthenticationSpec {
    /// Which workloads; all of the namespace when absent.
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    /// The workload-wide mode.
    #[serde(default)]
    pub mtls: Option<MtlsSetting>,
    /// Per-port modes (needs a selector).
    #[serde(default)]
    pub port_level_mtls: BTreeMap<u16, MtlsSetting>,
}

/// `{ mode: STRICT }`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MtlsSetting {
    /// The mode.
    #[serde(default)]
    pub mode: MtlsMode,
}

/// Whether plaintext peers are accepted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Inherit from the namespace or mesh.
    #[default]
    Unset,
    /// mTLS only.
    Strict,
    /// mTLS or plaintext.
    Permissive,
    /// Plaintext.
    Disable,
}

/// `Gateway.spec`: informative here (ferrobank listens where it is configured to).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySpec {
    /// The gateway workload's labels.
    pub selector: BTreeMap<String, String>,
    /// Listeners.
    pub servers: Vec<serde_json::Value>,
}

/// `VirtualService.spec`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VirtualServiceSpec {
    /// Hosts (the `Host` header) the routes serve; `*` for any.
    pub hosts: Vec<String>,
    /// Gateways the routes are bound to; `mesh` (sidecars) when absent.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// Ordered HTTP routes; the first match wins.
    #[serde(default)]
    pub http: Vec<HttpRoute>,
}

/// One HTTP route.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRoute {
    /// For logs and metrics.
    #[serde(default)]
    pub name: Option<String>,
    /// Any of these; everything when empty.
    #[serde(default, rename = "match")]
    pub matches: Vec<RouteMatch>,
    /// Exactly one destination (weighted splits are not supported).
    pub route: Vec<RouteDestination>,
    /// Path/authority rewrite before forwarding.
    #[serde(default)]
    pub rewrite: Option<Rewrite>,
    /// Total time for the request, retries included.
    #[serde(default, deserialize_with = "duration_opt")]
    pub timeout: Option<Duration>,
    /// Retry policy.
    #[serde(default)]
    pub retries: Option<Retries>,
    /// Header manipulation.
    #[serde(default)]
    pub headers: Option<HeaderOperations>,
}

/// `http[].match[]`: all set fields must match.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteMatch {
    /// For logs.
    #[serde(default)]
    pub name: Option<String>,
    /// The (normalized) path.
    #[serde(default)]
    pub uri: Option<StringMatch>,
    /// The method.
    #[serde(default)]
    pub method: Option<StringMatch>,
    /// Headers (names lower-case).
    #[serde(default)]
    pub headers: BTreeMap<String, StringMatch>,
    /// Case-insensitive `uri` match.
    #[serde(default)]
    pub ignore_uri_case: bool,
}

/// Istio's `StringMatch`: exactly one of `exact`, `prefix`, `regex` (RE2, whole string).
#[derive(Debug, Clone)]
pub enum StringMatch {
    /// Equal.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Matches the whole value.
    Regex(Regex),
}

impl<'de> Deserialize<'de> for StringMatch {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            exact: Option<String>,
            prefix: Option<String>,
            regex: Option<String>,
        }
        let raw = Raw::deserialize(deserializer)?;
        match (raw.exact, raw.prefix, raw.regex) {
            (Some(exact), None, None) => Ok(StringMatch::Exact(exact)),
            (None, Some(prefix), None) => Ok(StringMatch::Prefix(prefix)),
            (None, None, Some(regex)) => Regex::new(&format!("^(?:{regex})$"))
                .map(StringMatch::Regex)
                .map_err(|e| serde::de::Error::custom(format!("regex `{regex}`: {e}"))),
            _ => Err(serde::de::Error::custom("exactly one of exact, prefix, regex")),
        }
    }
}

impl StringMatch {
    /// Whether `value` matches; `ignore_case` for `ignoreUriCase`.
    pub fn matches(&self, value: &str, ignore_case: bool) -> bool {
        match self {
            StringMatch::Exact(exact) if ignore_case => exact.eq_ignore_ascii_case(value),
            StringMatch::Exact(exact) => exact == value,
            StringMatch::Prefix(prefix) if ignore_case => {
                value.get(..prefix.len()).is_some_and(|head| head.eq_ignore_ascii_case(prefix))
            }
            StringMatch::Prefix(prefix) => value.starts_with(prefix.as_str()),
            StringMatch::Regex(regex) => regex.is_match(value),
        }
    }
}

/// `http[].route[]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteDestination {
    /// Where.
    pub destination: Destination,
    /// Must be absent or 100 (one destination per route).
    #[serde(default)]
    pub weight: Option<u32>,
}

/// A service and port.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    /// Service name (`payment-service`, or a FQDN).
    pub host: String,
    /// The port.
    #[serde(default)]
    pub port: Option<PortSelector>,
}

/// `{ number: 8080 }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSelector {
    /// The port number.
    pub number: u16,
}

/// `http[].rewrite`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rewrite {
    /// Replaces the matched prefix (or the whole path for exact/regex matches).
    #[serde(default)]
    pub uri: Option<String>,
    /// Replaces the `Host` header.
    #[serde(default)]
    pub authority: Option<String>,
}

/// `http[].retries`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Retries {
    /// Retries after the first try.
    pub attempts: u32,
    /// Timeout of each try.
    #[serde(default, deserialize_with = "duration_opt")]
    pub per_try_timeout: Option<Duration>,
    /// Comma-separated Envoy retry conditions.
    #[serde(default, deserialize_with = "retry_on")]
    pub retry_on: Vec<RetryOn>,
}

/// The retry conditions ferrobank implements (Envoy `x-envoy-retry-on` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOn {
    /// Any 5xx answer (or a connection failure / reset).
    FiveXx,
    /// 502, 503, 504.
    GatewayError,
    /// Connecting failed.
    ConnectFailure,
    /// The connection was reset before an answer.
    Reset,
    /// HTTP/2 REFUSED_STREAM (treated as reset).
    RefusedStream,
}

fn retry_on<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<RetryOn>, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.split(',')
        .map(str::trim)
        .map(|name| match name {
            "5xx" => Ok(RetryOn::FiveXx),
            "gateway-error" => Ok(RetryOn::GatewayError),
            "connect-failure" => Ok(RetryOn::ConnectFailure),
            "reset" => Ok(RetryOn::Reset),
            "refused-stream" => Ok(RetryOn::RefusedStream),
            other => Err(serde::de::Error::custom(format!(
                "retryOn `{other}` is not supported (5xx, gateway-error, connect-failure, reset, refused-stream)"
            ))),
        })
        .collect()
}

/// `http[].headers`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderOperations {
    /// On the request to the upstream.
    #[serde(default)]
    pub request: HeaderEdits,
    /// On the response to the client.
    #[serde(default)]
    pub response: HeaderEdits,
}

/// `set`, `add`, `remove`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderEdits {
    /// Replace.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Append.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    /// Delete.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// `DestinationRule.spec`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DestinationRuleSpec {
    /// The service (`*.ns.svc.cluster.local` wildcards allowed).
    pub host: String,
    /// Pool, outlier detection and TLS.
    #[serde(default)]
    pub traffic_policy: TrafficPolicy,
}

/// `trafficPolicy`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TrafficPolicy {
    /// Limits on connections and requests.
    #[serde(default)]
    pub connection_pool: ConnectionPool,
    /// Circuit breaking on consecutive errors.
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetection>,
    /// Upstream TLS; only `ISTIO_MUTUAL` (the mesh certificates) is meaningful here.
    #[serde(default)]
    pub tls: Option<ClientTls>,
}

/// `trafficPolicy.tls`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTls {
    /// `ISTIO_MUTUAL` or `DISABLE`.
    pub mode: String,
}

/// `connectionPool`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionPool {
    /// TCP limits.
    #[serde(default)]
    pub tcp: TcpPool,
    /// HTTP limits.
    #[serde(default)]
    pub http: HttpPool,
}

/// `connectionPool.tcp`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpPool {
    /// Most connections to the host.
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// Connect timeout.
    #[serde(default, deserialize_with = "duration_opt")]
    pub connect_timeout: Option<Duration>,
    /// TCP keepalive on upstream connections.
    #[serde(default)]
    pub tcp_keepalive: Option<TcpKeepalive>,
}

/// `connectionPool.tcp.tcpKeepalive`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpKeepalive {
    /// Idle time before probes.
    #[serde(default, deserialize_with = "duration_opt")]
    pub time: Option<Duration>,
    /// Between probes.
    #[serde(default, deserialize_with = "duration_opt")]
    pub interval: Option<Duration>,
    /// Probes before the connection is dead.
    #[serde(default)]
    pub probes: Option<u32>,
}

/// `connectionPool.http`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpPool {
    /// Most requests waiting for a connection.
    #[serde(default)]
    pub http1_max_pending_requests: Option<u32>,
    /// Most requests in flight to the host.
    #[serde(default)]
    pub http2_max_requests: Option<u32>,
    /// Requests per connection before it is closed.
    #[serde(default)]
    pub max_requests_per_connection: Option<u32>,
    /// Most retries in flight to the host (the retry budget).
    #[serde(default)]
    pub max_retries: Option<u32>,
    /// Idle connection timeout.
    #[serde(default, deserialize_with = "duration_opt")]
    pub idle_timeout: Option<Duration>,
}

/// `outlierDetection` (Envoy outlier detection on consecutive errors).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Consecutive 5xx (and connection failures) before ejection.
    #[serde(default)]
    pub consecutive_5xx_errors: Option<u32>,
    /// Consecutive 502/503/504 (and connection failures) before ejection.
    #[serde(default)]
    pub consecutive_gateway_errors: Option<u32>,
    /// How often ejections are reconsidered.
    #[serde(default, deserialize_with = "duration_opt")]
    pub interval: Option<Duration>,
    /// Ejection time, multiplied by the number of times the host was ejected.
    #[serde(default, deserialize_with = "duration_opt")]
    pub base_ejection_time: Option<Duration>,
    /// Most hosts ejected, percent (at least one).
    #[serde(default)]
    pub max_ejection_percent: Option<u32>,
    /// Envoy's panic threshold, percent.
    #[serde(default)]
    pub min_health_percent: Option<u32>,
}

/// `EnvoyFilter.spec`: only the local rate limit filter is understood.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EnvoyFilterSpec {
    /// Which workloads.
    #[serde(default)]
    pub workload_selector: Option<EnvoyWorkloadSelector>,
    /// The patches.
    pub config_patches: Vec<ConfigPatch>,
}

/// `workloadSelector: { labels: {...} }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvoyWorkloadSelector {
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

/// One `configPatches[]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConfigPatch {
    /// `HTTP_FILTER`.
    pub apply_to: String,
    /// Where (context, listener...): not interpreted beyond `context`.
    #[serde(default, rename = "match")]
    pub matcher: serde_json::Value,
    /// The filter.
    pub patch: Patch,
}

/// `patch`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Patch {
    /// `INSERT_BEFORE`, `INSERT_FIRST`...
    pub operation: String,
    /// The filter definition.
    pub value: FilterValue,
}

/// An HTTP filter definition.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterValue {
    /// Must be `envoy.filters.http.local_ratelimit`.
    pub name: String,
    /// The filter config.
    pub typed_config: LocalRateLimitConfig,
}

/// `envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalRateLimitConfig {
    /// Must be the v3 LocalRateLimit type URL.
    #[serde(rename = "@type")]
    pub type_url: String,
    /// Stats prefix.
    pub stat_prefix: String,
    /// The bucket.
    pub token_bucket: TokenBucketConfig,
    /// Runtime fraction enabling the filter (must be 100%).
    #[serde(default)]
    pub filter_enabled: Option<serde_json::Value>,
    /// Runtime fraction enforcing the filter (must be 100%).
    #[serde(default)]
    pub filter_enforced: Option<serde_json::Value>,
    /// Headers added to responses (`x-local-rate-limit: true`).
    #[serde(default)]
    pub response_headers_to_add: Vec<serde_json::Value>,
}

/// Envoy's `token_bucket`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucketConfig {
    /// Capacity.
    pub max_tokens: u32,
    /// Tokens added per interval (default 1).
    #[serde(default)]
    pub tokens_per_fill: Option<u32>,
    /// The interval.
    #[serde(deserialize_with = "duration")]
    pub fill_interval: Duration,
}

fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_duration(&text).ok_or_else(|| {
        serde::de::Error::custom(format!("`{text}` is not a duration like 250ms, 30s, 5m, 1h"))
    })
}

fn duration_opt<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    duration(deserializer).map(Some)
}

/// `250ms`, `30s`, `5m`, `1h` (whole numbers; Istio's Go durations in the common forms).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let digits = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(digits);
    let n: u64 = number.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n.checked_mul(60)?)),
        "h" => Some(Duration::from_secs(n.checked_mul(3600)?)),
        _ => None,
    }
}
