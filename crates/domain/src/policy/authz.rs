//! Istio `AuthorizationPolicy` (security.istio.io/v1) evaluated exactly as Istio documents
//! it (istio.io/latest/docs/reference/config/security/authorization-policy/):
//!
//! - a policy applies to a workload when it is in the workload's namespace and its
//!   `selector` (if any) matches the workload's labels; a policy in the root namespace
//!   applies to every namespace;
//! - CUSTOM first (refused at load: no external authorizer), then any matching DENY denies,
//!   then: no ALLOW policy applies -> allow; some ALLOW policy matches -> allow; else deny;
//! - a rule matches when any `from` source, any `to` operation and every `when` condition
//!   match; an absent section matches everything, a policy without rules matches nothing;
//! - within a source or operation every field set must match, a field matches when any of
//!   its values does, `notX` fields when none does;
//! - strings match exactly, by prefix `abc*`, by suffix `*abc`, or `*` for any non-empty
//!   value; hosts compare case-insensitively.
//!
//! Fields ferrobank does not implement do not deserialize (unknown field), so a policy is
//! never half-applied: the loader refuses it and names the field.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::Deserialize;

/// The labels a workload (one ferrobank role, one Kubernetes Deployment) carries.
pub type Labels = BTreeMap<String, String>;

/// Where a request is being judged: a workload in a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// The Kubernetes namespace.
    pub namespace: String,
    /// The pod labels policies select on.
    pub labels: Labels,
}

/// `spec.selector` of a policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadSelector {
    /// Labels the workload must all carry.
    #[serde(default)]
    pub match_labels: Labels,
}

impl WorkloadSelector {
    /// Whether `labels` carries every selected label.
    pub fn selects(&self, labels: &Labels) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// What a matching policy does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Action {
    /// Allow matching requests (and, once any ALLOW applies, deny the rest).
    #[default]
    Allow,
    /// Deny matching requests.
    Deny,
    /// Delegate to an external authorizer: not implemented, refused at load.
    Custom,
    /// Audit only: not implemented, refused at load.
    Audit,
}

/// `spec` of an `AuthorizationPolicy`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    /// Which workloads of the namespace; all when absent.
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    /// ALLOW by default.
    #[serde(default)]
    pub action: Action,
    /// The rules; none means the policy matches nothing.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// One rule: `from` AND `to` AND `when`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rule {
    /// Any of these sources; everything when empty.
    #[serde(default)]
    pub from: Vec<From>,
    /// Any of these operations; everything when empty.
    #[serde(default)]
    pub to: Vec<To>,
    /// All of these conditions.
    #[serde(default)]
    pub when: Vec<Condition>,
}

/// `rules[].from[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct From {
    /// The source.
    pub source: Source,
}

/// `rules[].to[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct To {
    /// The operation.
    pub operation: Operation,
}

/// Who sends the request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Source {
    /// mTLS peer identities, `cluster.local/ns/NS/sa/SA`.
    #[serde(default)]
    pub principals: Vec<String>,
    /// Negative form of `principals`.
    #[serde(default)]
    pub not_principals: Vec<String>,
    /// JWT identities, `ISS/SUB`.
    #[serde(default)]
    pub request_principals: Vec<String>,
    /// Negative form of `request_principals`.
    #[serde(default)]
    pub not_request_principals: Vec<String>,
    /// The peer's namespace (from its mTLS identity).
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Negative form of `namespaces`.
    #[serde(default)]
    pub not_namespaces: Vec<String>,
    /// The peer's address, IPs or CIDRs.
    #[serde(default)]
    pub ip_blocks: Vec<IpBlock>,
    /// Negative form of `ip_blocks`.
    #[serde(default)]
    pub not_ip_blocks: Vec<IpBlock>,
    /// The original client address (X-Forwarded-For as trusted), IPs or CIDRs.
    #[serde(default)]
    pub remote_ip_blocks: Vec<IpBlock>,
    /// Negative form of `remote_ip_blocks`.
    #[serde(default)]
    pub not_remote_ip_blocks: Vec<IpBlock>,
}

/// What the request does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Operation {
    /// `Host` header values (case-insensitive).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Negative form of `hosts`.
    #[serde(default)]
    pub not_hosts: Vec<String>,
    /// Destination ports.
    #[serde(default)]
    pub ports: Vec<String>,
    /// Negative form of `ports`.
    #[serde(default)]
    pub not_ports: Vec<String>,
    /// HTTP methods.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Negative form of `methods`.
    #[serde(default)]
    pub not_methods: Vec<String>,
    /// Normalized paths without the query.
    #[serde(default)]
    pub paths: Vec<PathPattern>,
    /// Negative form of `paths`.
    #[serde(default)]
    pub not_paths: Vec<PathPattern>,
}

/// `rules[].when[]`: an attribute compared with values.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Condition {
    /// The attribute.
    pub key: ConditionKey,
    /// Any of these matches.
    #[serde(default)]
    pub values: Vec<String>,
    /// None of these matches.
    #[serde(default)]
    pub not_values: Vec<String>,
}

/// The `when` keys ferrobank implements; any other key fails to load.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum ConditionKey {
    /// `request.auth.claims[a][b]...`: a (nested) JWT claim.
    Claim(Vec<String>),
    /// `request.auth.principal`: `ISS/SUB`.
    AuthPrincipal,
    /// `request.auth.audiences`: the token's `aud`.
    Audiences,
    /// `request.auth.presenter`: the token's `azp`.
    Presenter,
    /// `request.headers[name]`.
    Header(String),
    /// `source.ip`.
    SourceIp,
    /// `remote.ip`.
    RemoteIp,
    /// `source.namespace`.
    SourceNamespace,
    /// `source.principal`.
    SourcePrincipal,
    /// `destination.port`.
    DestinationPort,
}

impl TryFrom<String> for ConditionKey {
    type Error = String;

    fn try_from(key: String) -> Result<Self, Self::Error> {
        Ok(match key.as_str() {
            "request.auth.principal" => ConditionKey::AuthPrincipal,
            "request.auth.audiences" => ConditionKey::Audiences,
            "request.auth.presenter" => ConditionKey::Presenter,
            "source.ip" => ConditionKey::SourceIp,
            "remote.ip" => ConditionKey::RemoteIp,
            "source.namespace" => ConditionKey::SourceNamespace,
            "source.principal" => ConditionKey::SourcePrincipal,
            "destination.port" => ConditionKey::DestinationPort,
            _ => {
                if let Some(rest) = key.strip_prefix("request.auth.claims") {
                    ConditionKey::Claim(bracketed(rest).ok_or_else(|| unsupported(&key))?)
                } else if let Some(rest) = key.strip_prefix("request.headers") {
                    match bracketed(rest).as_deref() {
                        Some([name]) => ConditionKey::Header(name.to_ascii_lowercase()),
                        _ => return Err(unsupported(&key)),
                    }
                } else {
                    return Err(unsupported(&key));
                }
            }
        })
    }
}

fn unsupported(key: &str) -> String {
    format!("condition key `{key}` is not supported by ferrobank's policy engine")
}

/// `[a][b][c]` -> `["a", "b", "c"]`; `None` unless the whole text is non-empty brackets.
fn bracketed(mut text: &str) -> Option<Vec<String>> {
    let mut parts = Vec::new();
    while !text.is_empty() {
        let inner = text.strip_prefix('[')?;
        let (name, rest) = inner.split_once(']')?;
        if name.is_empty() || name.contains('[') {
            return None;
        }
        parts.push(name.to_owned());
        text = rest;
    }
    (!parts.is_empty()).then_some(parts)
}

/// An IP address or CIDR block of `ipBlocks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct IpBlock {
    network: IpAddr,
    prefix_len: u8,
}

impl TryFrom<String> for IpBlock {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        IpBlock::parse(&text).ok_or_else(|| format!("`{text}` is not an IP address or CIDR"))
    }
}

impl IpBlock {
    /// Parses `10.0.0.0/8`, `::1` or `192.168.1.7`.
    pub fn parse(text: &str) -> Option<IpBlock> {
        let (addr, len) = match text.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (text, None),
        };
        let network: IpAddr = addr.parse().ok()?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix_len = match len {
            Some(len) => len.parse::<u8>().ok().filter(|len| *len <= max)?,
            None => max,
        };
        Some(IpBlock { network, prefix_len })
    }

    /// Whether `ip` is inside the block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix_len)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix_len)
            }
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let full = usize::from(bits / 8);
    let rest = bits % 8;
    if a[..full] != b[..full] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    (a[full] & mask) == (b[full] & mask)
}

/// A path pattern: exact, `prefix*`, `*suffix` or `*`; Istio's `{*}`/`{**}` templates and
/// a `*` anywhere else are refused.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct PathPattern(String);

impl TryFrom<String> for PathPattern {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        let inner = text.trim_start_matches('*').trim_end_matches('*');
        if text.contains('{') || inner.contains('*') || text.starts_with("**") {
            return Err(format!(
                "path `{text}`: only exact, `prefix*`, `*suffix` and `*` are supported"
            ));
        }
        Ok(PathPattern(text))
    }
}

/// Istio's string match: exact, `prefix*`, `*suffix`, `*` = present (non-empty).
pub fn string_match(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        return !value.is_empty();
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return value.ends_with(suffix);
    }
    if let Some(prefix) = pattern.strip_suffix('*') {
        return value.starts_with(prefix);
    }
    pattern == value
}

fn host_match(pattern: &str, host: &str) -> bool {
    string_match(&pattern.to_ascii_lowercase(), &host.to_ascii_lowercase())
}

/// Request header lookup, so the domain needs no HTTP types.
pub trait Headers {
    /// The first value of header `name` (lower-case), if any.
    fn header(&self, name: &str) -> Option<&str>;
}

impl Headers for BTreeMap<String, String> {
    fn header(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

/// What a verified JWT contributes to a request.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestAuth {
    /// `ISS/SUB`.
    pub principal: String,
    /// All the token's claims.
    pub claims: serde_json::Value,
}

impl RequestAuth {
    /// From verified claims.
    pub fn from_claims(claims: serde_json::Value) -> RequestAuth {
        let iss = claims.get("iss").and_then(|v| v.as_str()).unwrap_or_default();
        let sub = claims.get("sub").and_then(|v| v.as_str()).unwrap_or_default();
        RequestAuth { principal: format!("{iss}/{sub}"), claims }
    }

    fn claim(&self, path: &[String]) -> Option<&serde_json::Value> {
        path.iter().try_fold(&self.claims, |value, key| value.get(key))
    }
}

/// Everything a policy can look at.
#[derive(Clone, Copy)]
pub struct Request<'a> {
    /// The HTTP method.
    pub method: &'a str,
    /// The normalized path without the query.
    pub path: &'a str,
    /// The `Host` (authority) header.
    pub host: &'a str,
    /// The port the request arrived at.
    pub port: u16,
    /// Request headers.
    pub headers: &'a dyn Headers,
    /// The direct peer's address.
    pub source_ip: Option<IpAddr>,
    /// The original client's address.
    pub remote_ip: Option<IpAddr>,
    /// The peer's mTLS identity, `cluster.local/ns/NS/sa/SA`.
    pub source_principal: Option<&'a str>,
    /// The verified JWT, if the request carried one.
    pub auth: Option<&'a RequestAuth>,
}

impl fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("host", &self.host)
            .field("source_principal", &self.source_principal)
            .finish_non_exhaustive()
    }
}

impl Request<'_> {
    fn source_namespace(&self) -> Option<&str> {
        let principal = self.source_principal?;
        let (_, rest) = principal.split_once("/ns/")?;
        rest.split('/').next()
    }
}

/// Any value of `patterns` matches one of `values`; an empty list of patterns is unset.
fn any_match<'v>(
    patterns: &[String],
    values: impl IntoIterator<Item = &'v str> + Clone,
    eq: fn(&str, &str) -> bool,
) -> bool {
    patterns.iter().any(|p| values.clone().into_iter().any(|v| eq(p, v)))
}

/// A positive and negative field pair: set positive must match, set negative must not.
fn field<'v>(
    positive: &[String],
    negative: &[String],
    value: Option<&'v str>,
    eq: fn(&str, &str) -> bool,
) -> bool {
    let values: Vec<&str> = value.into_iter().collect();
    (positive.is_empty() || any_match(positive, values.iter().copied(), eq))
        && (negative.is_empty() || !any_match(negative, values.iter().copied(), eq))
}

fn ip_field(positive: &[IpBlock], negative: &[IpBlock], ip: Option<IpAddr>) -> bool {
    let inside = |blocks: &[IpBlock]| ip.is_some_and(|ip| blocks.iter().any(|b| b.contains(ip)));
    (positive.is_empty() || inside(positive)) && (negative.is_empty() || !inside(negative))
}

impl Source {
    fn matches(&self, request: &Request<'_>) -> bool {
        let request_principal = request.auth.map(|auth| auth.principal.as_str());
        field(&self.principals, &self.not_principals, request.source_principal, string_match)
            && field(
                &self.request_principals,
                &self.not_request_principals,
                request_principal,
                string_match,
            )
            && field(
                &self.namespaces,
                &self.not_namespaces,
                request.source_namespace(),
                string_match,
            )
            && ip_field(&self.ip_blocks, &self.not_ip_blocks, request.source_ip)
            && ip_field(&self.remote_ip_blocks, &self.not_remote_ip_blocks, request.remote_ip)
    }
}

impl Operation {
    fn matches(&self, request: &Request<'_>) -> bool {
        let port = request.port.to_string();
        let path_match =
            |patterns: &[PathPattern]| patterns.iter().any(|p| string_match(&p.0, request.path));
        field(&self.hosts, &self.not_hosts, Some(request.host), host_match)
            && field(&self.ports, &self.not_ports, Some(&port), string_match)
            && field(&self.methods, &self.not_methods, Some(request.method), string_match)
            && (self.paths.is_empty() || path_match(&self.paths))
            && (self.not_paths.is_empty() || !path_match(&self.not_paths))
    }
}

impl Condition {
    fn matches(&self, request: &Request<'_>) -> bool {
        let port = request.port.to_string();
        let auth = request.auth;
        let values: Vec<&str> = match &self.key {
            ConditionKey::Claim(path) => match auth.and_then(|a| a.claim(path)) {
                Some(serde_json::Value::String(s)) => vec![s.as_str()],
                Some(serde_json::Value::Array(items)) => {
                    items.iter().filter_map(|item| item.as_str()).collect()
                }
                _ => Vec::new(),
            },
            ConditionKey::AuthPrincipal => auth.map(|a| a.principal.as_str()).into_iter().collect(),
            ConditionKey::Audiences => match auth.and_then(|a| a.claims.get("aud")) {
                Some(serde_json::Value::String(s)) => vec![s.as_str()],
                Some(serde_json::Value::Array(items)) => {
                    items.iter().filter_map(|item| item.as_str()).collect()
                }
                _ => Vec::new(),
            },
            ConditionKey::Presenter => auth
                .and_then(|a| a.claims.get("azp"))
                .and_then(|v| v.as_str())
                .into_iter()
                .collect(),
            ConditionKey::Header(name) => request.headers.header(name).into_iter().collect(),
            ConditionKey::SourceIp | ConditionKey::RemoteIp => {
                let ip = if self.key == ConditionKey::SourceIp {
                    request.source_ip
                } else {
                    request.remote_ip
                };
                // IP conditions take CIDRs.
                let inside = |list: &[String]| {
                    ip.is_some_and(|ip| {
                        list.iter().any(|c| IpBlock::parse(c).is_some_and(|b| b.contains(ip)))
                    })
                };
                return (self.values.is_empty() || inside(&self.values))
                    && (self.not_values.is_empty() || !inside(&self.not_values));
            }
            ConditionKey::SourceNamespace => request.source_namespace().into_iter().collect(),
            ConditionKey::SourcePrincipal => request.source_principal.into_iter().collect(),
            ConditionKey::DestinationPort => vec![port.as_str()],
        };
        (self.values.is_empty() || any_match(&self.values, values.iter().copied(), string_match))
            && (self.not_values.is_empty()
                || !any_match(&self.not_values, values.iter().copied(), string_match))
    }
}

impl Rule {
    /// Whether the request matches this rule.
    pub fn matches(&self, request: &Request<'_>) -> bool {
        (self.from.is_empty() || self.from.iter().any(|f| f.source.matches(request)))
            && (self.to.is_empty() || self.to.iter().any(|t| t.operation.matches(request)))
            && self.when.iter().all(|c| c.matches(request))
    }
}

/// A named policy as loaded from a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationPolicy {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// The spec.
    pub spec: AuthorizationPolicySpec,
}

impl AuthorizationPolicy {
    /// Whether this policy applies to `workload` (`root_namespace` is mesh-wide).
    pub fn applies_to(&self, workload: &Workload, root_namespace: &str) -> bool {
        (self.namespace == workload.namespace || self.namespace == root_namespace)
            && self.spec.selector.as_ref().is_none_or(|s| s.selects(&workload.labels))
    }

    /// Whether any rule matches.
    pub fn matches(&self, request: &Request<'_>) -> bool {
        self.spec.rules.iter().any(|rule| rule.matches(request))
    }

    /// Why the policy cannot be enforced, if it uses a refused feature.
    pub fn unsupported(&self) -> Option<&'static str> {
        let bad_ip = self.spec.rules.iter().flat_map(|r| &r.when).any(|c| {
            matches!(c.key, ConditionKey::SourceIp | ConditionKey::RemoteIp)
                && c.values.iter().chain(&c.not_values).any(|v| IpBlock::parse(v).is_none())
        });
        if bad_ip {
            // Istio rejects such a policy; matching nothing instead would disarm a DENY.
            return Some("spec.rules[].when[].values: an IP condition value is not an IP or CIDR");
        }
        match self.spec.action {
            Action::Custom => Some("spec.action: CUSTOM needs an external authorizer"),
            Action::Audit => Some("spec.action: AUDIT needs an audit provider"),
            Action::Allow | Action::Deny => None,
        }
    }
}

/// The outcome of evaluation, with the deciding policy for logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed; `by` names the ALLOW policy that matched, `None` when none applies.
    Allow {
        /// The matching ALLOW policy.
        by: Option<String>,
    },
    /// Denied; `by` names the DENY policy, or says no ALLOW policy matched.
    Deny {
        /// The matching DENY policy, or `"no ALLOW policy matched"`.
        by: String,
    },
}

impl Decision {
    /// Whether the request may proceed.
    pub fn allowed(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }
}

/// The policies that apply to one workload, split by action, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkloadPolicies {
    deny: Vec<AuthorizationPolicy>,
    allow: Vec<AuthorizationPolicy>,
}

impl WorkloadPolicies {
    /// The policies among `all` that apply to `workload`.
    pub fn for_workload(
        all: &[AuthorizationPolicy],
        workload: &Workload,
        root_namespace: &str,
    ) -> WorkloadPolicies {
        let mut policies = WorkloadPolicies::default();
        for policy in all.iter().filter(|p| p.applies_to(workload, root_namespace)) {
            match policy.spec.action {
                Action::Deny => policies.deny.push(policy.clone()),
                // CUSTOM/AUDIT never reach here: the loader refuses them.
                Action::Allow | Action::Custom | Action::Audit => {
                    policies.allow.push(policy.clone())
                }
            }
        }
        policies
    }

    /// DENY, then ALLOW, as Istio evaluates them.
    pub fn evaluate(&self, request: &Request<'_>) -> Decision {
        if let Some(policy) = self.deny.iter().find(|p| p.matches(request)) {
            return Decision::Deny { by: format!("{}/{}", policy.namespace, policy.name) };
        }
        if self.allow.is_empty() {
            return Decision::Allow { by: None };
        }
        match self.allow.iter().find(|p| p.matches(request)) {
            Some(policy) => {
                Decision::Allow { by: Some(format!("{}/{}", policy.namespace, policy.name)) }
            }
            None => Decision::Deny { by: "no ALLOW policy matched".to_owned() },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(namespace: &str, name: &str, spec: serde_json::Value) -> AuthorizationPolicy {
        let spec = serde_json::from_value(spec).unwrap_or_else(|e| panic!("{name}: {e}"));
        AuthorizationPolicy { name: name.into(), namespace: namespace.into(), spec }
    }

    fn workload(app: &str) -> Workload {
        Workload {
            namespace: "banking-system".into(),
            labels: [("app".to_owned(), app.to_owned())].into_iter().collect(),
        }
    }

    fn token(roles: &[&str]) -> RequestAuth {
        RequestAuth::from_claims(json!({
            "iss": "https://idp/realms/banking", "sub": "u-1", "aud": ["banking-api"],
            "azp": "banking-web-app", "realm_access": {"roles": roles}
        }))
    }

    fn decide(
        policies: &[AuthorizationPolicy],
        app: &str,
        method: &str,
        path: &str,
        auth: Option<&RequestAuth>,
    ) -> bool {
        let headers = BTreeMap::new();
        let request = Request {
            method,
            path,
            host: "Banking.Local",
            port: 8080,
            headers: &headers,
            source_ip: Some("10.1.2.3".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))),
            remote_ip: None,
            source_principal: Some("cluster.local/ns/istio-system/sa/istio-ingressgateway"),
            auth,
        };
        WorkloadPolicies::for_workload(policies, &workload(app), "istio-system")
            .evaluate(&request)
            .allowed()
    }

    #[test]
    fn the_seeds_split_admin_rule_lets_anyone_in_and_the_joined_rule_does_not() {
        let split = policy(
            "banking-system",
            "admin",
            json!({
                "selector": {"matchLabels": {"app": "admin"}},
                "rules": [
                    {"from": [{"source": {"requestPrincipals": ["*"]}}],
                     "when": [{"key": "request.auth.claims[realm_access][roles]", "values": ["banking-admin"]}]},
                    {"to": [{"operation": {"methods": ["GET", "DELETE"], "paths": ["/api/admin/*"]}}]}
                ]
            }),
        );
        assert!(decide(std::slice::from_ref(&split), "admin", "DELETE", "/api/admin/x", None));
        let joined = policy(
            "banking-system",
            "admin",
            json!({
                "selector": {"matchLabels": {"app": "admin"}},
                "rules": [
                    {"from": [{"source": {"requestPrincipals": ["*"]}}],
                     "to": [{"operation": {"methods": ["GET", "DELETE"], "paths": ["/api/admin/*"]}}],
                     "when": [{"key": "request.auth.claims[realm_access][roles]", "values": ["banking-admin"]}]}
                ]
            }),
        );
        let policies = [joined];
        assert!(!decide(&policies, "admin", "DELETE", "/api/admin/x", None));
        assert!(!decide(&policies, "admin", "DELETE", "/api/admin/x", Some(&token(&["customer"]))));
        assert!(decide(
            &policies,
            "admin",
            "DELETE",
            "/api/admin/x",
            Some(&token(&["banking-admin"]))
        ));
        assert!(!decide(
            &policies,
            "admin",
            "PUT",
            "/api/admin/x",
            Some(&token(&["banking-admin"]))
        ));
        assert!(!decide(&policies, "admin", "GET", "/api/other", Some(&token(&["banking-admin"]))));
    }

    #[test]
    fn deny_wins_and_an_empty_allow_policy_denies_everything() {
        let deny_all = policy("banking-system", "deny-all", json!({}));
        assert!(!decide(std::slice::from_ref(&deny_all), "loans", "GET", "/", None));
        assert!(decide(&[], "loans", "GET", "/", None), "no policy: allow");
        let allow_all = policy("banking-system", "allow", json!({"rules": [{}]}));
        assert!(decide(&[deny_all.clone(), allow_all.clone()], "loans", "GET", "/", None));
        let deny_anon = policy(
            "banking-system",
            "require-jwt",
            json!({
                "action": "DENY",
                "rules": [{"from": [{"source": {"notRequestPrincipals": ["*"]}}]}]
            }),
        );
        let policies = [deny_all, allow_all, deny_anon];
        assert!(!decide(&policies, "loans", "GET", "/", None));
        assert!(decide(&policies, "loans", "GET", "/", Some(&token(&[]))));
    }

    #[test]
    fn selectors_namespaces_and_the_root_namespace() {
        let other = policy("other-ns", "deny-all", json!({}));
        assert!(decide(std::slice::from_ref(&other), "loans", "GET", "/", None));
        let root = policy("istio-system", "deny-all", json!({}));
        assert!(!decide(std::slice::from_ref(&root), "loans", "GET", "/", None));
        let selected = policy(
            "banking-system",
            "p",
            json!({"selector": {"matchLabels": {"app": "payments"}}}),
        );
        assert!(decide(std::slice::from_ref(&selected), "loans", "GET", "/", None));
        assert!(!decide(std::slice::from_ref(&selected), "payments", "GET", "/", None));
    }

    #[test]
    fn operations_conditions_and_sources() {
        let p = policy(
            "banking-system",
            "p",
            json!({"rules": [{
                "from": [{"source": {"ipBlocks": ["10.0.0.0/8"], "namespaces": ["istio-system"],
                                      "principals": ["cluster.local/ns/istio-system/*"]}}],
                "to": [{"operation": {"hosts": ["banking.local"], "ports": ["8080"],
                                       "notMethods": ["DELETE"], "paths": ["/api/*", "*.json"],
                                       "notPaths": ["/api/private*"]}}],
                "when": [
                    {"key": "request.auth.presenter", "values": ["banking-web-app"]},
                    {"key": "request.auth.audiences", "values": ["banking-api"]},
                    {"key": "request.auth.principal", "values": ["https://idp/realms/banking/*"]},
                    {"key": "request.auth.claims[realm_access][roles]", "notValues": ["risk-analyst"]},
                    {"key": "source.ip", "values": ["10.1.0.0/16"]},
                    {"key": "destination.port", "values": ["8080"]}
                ]
            }]}),
        );
        let ps = std::slice::from_ref(&p);
        let customer = token(&["customer"]);
        assert!(decide(ps, "x", "GET", "/api/accounts", Some(&customer)));
        assert!(decide(ps, "x", "GET", "/openapi.json", Some(&customer)));
        assert!(!decide(ps, "x", "DELETE", "/api/accounts", Some(&customer)));
        assert!(!decide(ps, "x", "GET", "/api/private/x", Some(&customer)));
        assert!(!decide(ps, "x", "GET", "/other", Some(&customer)));
        assert!(!decide(
            ps,
            "x",
            "GET",
            "/api/accounts",
            Some(&token(&["customer", "risk-analyst"]))
        ));
        assert!(!decide(ps, "x", "GET", "/api/accounts", None));
    }

    #[test]
    fn unsupported_features_do_not_load() {
        for spec in [
            json!({"targetRef": {"kind": "Gateway", "name": "x"}}),
            json!({"rules": [{"when": [{"key": "connection.sni", "values": ["x"]}]}]}),
            json!({"rules": [{"when": [{"key": "request.auth.claims", "values": ["x"]}]}]}),
            json!({"rules": [{"to": [{"operation": {"paths": ["/api/{*}/x"]}}]}]}),
            json!({"rules": [{"to": [{"operation": {"paths": ["/api/*/x"]}}]}]}),
            json!({"rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.0/33"]}}]}]}),
            json!({"rules": [{"to": [{"operation": {"methods": ["GET"]}}], "extra": 1}]}),
        ] {
            assert!(
                serde_json::from_value::<AuthorizationPolicySpec>(spec.clone()).is_err(),
                "{spec}"
            );
        }
        let custom = policy("ns", "ext", json!({"action": "CUSTOM", "rules": [{}]}));
        assert!(custom.unsupported().is_some());
        let bad_cidr = policy(
            "ns",
            "ip",
            json!({"action": "DENY", "rules": [{"when": [
            {"key": "source.ip", "values": ["10.0.0.0/33"]}]}]}),
        );
        assert!(bad_cidr.unsupported().is_some_and(|why| why.contains("IP or CIDR")));
    }

    #[test]
    fn string_matching_follows_istio() {
        assert!(string_match("*", "x"));
        assert!(!string_match("*", ""));
        assert!(string_match("/api/*", "/api/x"));
        assert!(string_match("/api/*", "/api/"));
        assert!(!string_match("/api/*", "/api"));
        assert!(string_match("*.json", "/a.json"));
        assert!(!string_match("/api", "/api/"));
        assert!(host_match("Banking.LOCAL", "banking.local"));
        let block = IpBlock::parse("192.168.0.0/16");
        assert!(block.is_some_and(|b| {
            b.contains("192.168.7.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0])))
        }));
        assert!(IpBlock::parse("::ffff:10.0.0.1").is_some());
        assert!(IpBlock::parse("10.0.0.0/8").is_some_and(|b| {
            b.contains("::ffff:10.0.0.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0])))
        }));
    }
}
