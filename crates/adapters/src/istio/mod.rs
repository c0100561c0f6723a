//! Loads the Istio resources in `deploy/istio/` into a [`Mesh`] the gateway enforces.
//!
//! The YAML Istio applies in a cluster is read as it is: multi-document files, every kind
//! of the edge (Gateway, VirtualService, DestinationRule, PeerAuthentication,
//! RequestAuthentication, AuthorizationPolicy, the local rate limit EnvoyFilter). A field
//! or feature ferrobank does not implement stops the load with the file, the document and
//! the field path: a policy is enforced entirely or the gateway does not start.

pub mod plan;
pub mod resources;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ferrobank_domain::policy::{
    AuthorizationPolicy, AuthorizationPolicySpec, Workload, WorkloadPolicies,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use resources::{
    DestinationRuleSpec, EnvoyFilterSpec, GatewaySpec, HttpRoute, JwtRule, MtlsMode,
    PeerAuthenticationSpec, RequestAuthenticationSpec, TokenBucketConfig, VirtualServiceSpec,
};

/// Istio's root namespace: policies there apply mesh-wide.
pub const ROOT_NAMESPACE: &str = "istio-system";

/// The cluster-local DNS suffix of services.
const CLUSTER_DOMAIN: &str = "svc.cluster.local";

/// Largest YAML file read, in bytes.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Why the edge configuration cannot be enforced.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The directory or a file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A document is invalid or uses something ferrobank does not implement.
    #[error("{0}")]
    Invalid(Box<Invalid>),
}

/// Where and why a document cannot be enforced.
#[derive(Debug, thiserror::Error)]
#[error("{file} (document {document}, {kind} {name}): {field}: {message}")]
pub struct Invalid {
    /// The file.
    pub file: PathBuf,
    /// 1-based document index in the file.
    pub document: usize,
    /// The resource kind.
    pub kind: String,
    /// `namespace/name`.
    pub name: String,
    /// The field path, e.g. `spec.rules[0].when[1].key`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// A resource's spec with where it came from.
#[derive(Debug, Clone)]
pub struct Named<T> {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// The file it was read from.
    pub file: PathBuf,
    /// The spec.
    pub spec: T,
}

impl Named<()> {
    fn with<T>(&self, spec: T) -> Named<T> {
        Named {
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            file: self.file.clone(),
            spec,
        }
    }
}

impl<T> Named<T> {
    fn applies_to(&self, selector: Option<&BTreeMap<String, String>>, workload: &Workload) -> bool {
        (self.namespace == workload.namespace || self.namespace == ROOT_NAMESPACE)
            && selector
                .is_none_or(|labels| labels.iter().all(|(k, v)| workload.labels.get(k) == Some(v)))
    }
}

/// A local rate limit from an EnvoyFilter.
#[derive(Debug, Clone)]
pub struct RateLimit {
    /// Workloads it applies to (all of the namespace when empty).
    pub labels: BTreeMap<String, String>,
    /// The bucket.
    pub bucket: TokenBucketConfig,
}

/// Everything in the edge configuration directory.
#[derive(Debug, Clone, Default)]
pub struct Mesh {
    /// AuthorizationPolicies, in file order.
    pub authorization: Vec<AuthorizationPolicy>,
    /// RequestAuthentications.
    pub request_authentication: Vec<Named<RequestAuthenticationSpec>>,
    /// PeerAuthentications.
    pub peer_authentication: Vec<Named<PeerAuthenticationSpec>>,
    /// Gateways.
    pub gateways: Vec<Named<GatewaySpec>>,
    /// VirtualServices.
    pub virtual_services: Vec<Named<VirtualServiceSpec>>,
    /// DestinationRules.
    pub destination_rules: Vec<Named<DestinationRuleSpec>>,
    /// Local rate limits.
    pub rate_limits: Vec<Named<RateLimit>>,
    /// The files read, for change detection.
    pub files: Vec<PathBuf>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    api_version: String,
    kind: String,
    metadata: Metadata,
    #[serde(default)]
    spec: serde_norway::Value,
}

#[derive(Deserialize)]
struct Metadata {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

impl Mesh {
    /// Reads every `*.yaml`/`*.yml` in `dir` (not recursive; `kustomization.yaml` skipped).
    pub fn load(dir: &Path) -> Result<Mesh, LoadError> {
        let read_err = |path: &Path, source| LoadError::Read { path: path.to_owned(), source };
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| read_err(dir, e))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| {
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                (name.ends_with(".yaml") || name.ends_with(".yml"))
                    && !name.starts_with("kustomization.")
            })
            .collect();
        files.sort();
        let mut mesh = Mesh::default();
        for file in &files {
            let meta = std::fs::metadata(file).map_err(|e| read_err(file, e))?;
            if meta.len() > MAX_FILE_BYTES {
                let source = std::io::Error::other(format!("larger than {MAX_FILE_BYTES} bytes"));
                return Err(read_err(file, source));
            }
            let text = std::fs::read_to_string(file).map_err(|e| read_err(file, e))?;
            mesh.add_file(file, &text)?;
        }
        mesh.files = files;
        Ok(mesh)
    }

    /// Adds the documents of one file.
    pub fn add_file(&mut self, file: &Path, text: &str) -> Result<(), LoadError> {
        for (index, document) in serde_norway::Deserializer::from_str(text).enumerate() {
            let invalid = |kind: &str, name: &str, field: &str, message: String| {
                LoadError::Invalid(Box::new(Invalid {
                    file: file.to_owned(),
                    document: index + 1,
                    kind: kind.to_owned(),
                    name: name.to_owned(),
                    field: field.to_owned(),
                    message,
                }))
            };
            let value = serde_norway::Value::deserialize(document)
                .map_err(|e| invalid("?", "?", "(document)", e.to_string()))?;
            if value.is_null() {
                continue;
            }
            let header: Header = serde_norway::from_value(value)
                .map_err(|e| invalid("?", "?", "(header)", e.to_string()))?;
            let Some(namespace) = header.metadata.namespace.clone() else {
                return Err(invalid(
                    &header.kind,
                    &header.metadata.name,
                    "metadata.namespace",
                    "required: policies are namespaced and selection depends on it".into(),
                ));
            };
            let qualified = format!("{namespace}/{}", header.metadata.name);
            let kind = header.kind.clone();
            let group = header.api_version.split('/').next().unwrap_or_default();
            let expected_group = match kind.as_str() {
                "AuthorizationPolicy" | "RequestAuthentication" | "PeerAuthentication" => {
                    "security.istio.io"
                }
                "Gateway" | "VirtualService" | "DestinationRule" | "EnvoyFilter" => {
                    "networking.istio.io"
                }
                other => {
                    return Err(invalid(
                        other,
                        &qualified,
                        "kind",
                        "not an edge resource ferrobank's gateway enforces".into(),
                    ));
                }
            };
            if group != expected_group {
                return Err(invalid(
                    &kind,
                    &qualified,
                    "apiVersion",
                    format!("`{}`: {kind} belongs to {expected_group}", header.api_version),
                ));
            }
            let origin = Named {
                name: header.metadata.name.clone(),
                namespace: namespace.clone(),
                file: file.to_owned(),
                spec: (),
            };
            let spec = header.spec;
            let fail =
                |(field, message): (String, String)| invalid(&kind, &qualified, &field, message);
            match kind.as_str() {
                "AuthorizationPolicy" => {
                    let spec: AuthorizationPolicySpec = parse(spec).map_err(fail)?;
                    let policy = AuthorizationPolicy {
                        name: header.metadata.name.clone(),
                        namespace: namespace.clone(),
                        spec,
                    };
                    if let Some(why) = policy.unsupported() {
                        let (field, message) = why.split_once(": ").unwrap_or(("spec", why));
                        return Err(fail((field.to_owned(), message.to_owned())));
                    }
                    self.authorization.push(policy);
                }
                "RequestAuthentication" => {
                    let spec: RequestAuthenticationSpec = parse(spec).map_err(fail)?;
                    check_jwt_rules(&spec.jwt_rules).map_err(fail)?;
                    self.request_authentication.push(origin.with(spec));
                }
                "PeerAuthentication" => {
                    let spec: PeerAuthenticationSpec = parse(spec).map_err(fail)?;
                    if !spec.port_level_mtls.is_empty() && spec.selector.is_none() {
                        return Err(fail((
                            "spec.portLevelMtls".into(),
                            "needs spec.selector (Istio ignores it otherwise)".into(),
                        )));
                    }
                    self.peer_authentication.push(origin.with(spec));
                }
                "Gateway" => self.gateways.push(origin.with(parse(spec).map_err(fail)?)),
                "VirtualService" => {
                    let spec: VirtualServiceSpec = parse(spec).map_err(fail)?;
                    check_routes(&spec.http).map_err(fail)?;
                    self.virtual_services.push(origin.with(spec));
                }
                "DestinationRule" => {
                    self.destination_rules.push(origin.with(parse(spec).map_err(fail)?))
                }
                "EnvoyFilter" => {
                    let spec: EnvoyFilterSpec = parse(spec).map_err(fail)?;
                    let limit = rate_limit(&spec).map_err(fail)?;
                    self.rate_limits.push(origin.with(limit));
                }
                // Every other kind was refused above.
                _ => {}
            }
        }
        Ok(())
    }

    /// Replaces every JWT rule's issuer: the per-environment value a kustomize overlay sets
    /// in a cluster, set from configuration on a laptop. Keys then come from the issuer's
    /// discovery document.
    pub fn set_issuer(&mut self, issuer: &str) {
        for ra in &mut self.request_authentication {
            for rule in &mut ra.spec.jwt_rules {
                rule.issuer = issuer.to_owned();
                rule.jwks_uri = None;
            }
        }
    }

    /// The AuthorizationPolicies that apply to `workload`.
    pub fn authorization_for(&self, workload: &Workload) -> WorkloadPolicies {
        WorkloadPolicies::for_workload(&self.authorization, workload, ROOT_NAMESPACE)
    }

    /// The JWT rules that apply to `workload`.
    pub fn jwt_rules_for(&self, workload: &Workload) -> Vec<JwtRule> {
        self.request_authentication
            .iter()
            .filter(|ra| {
                ra.applies_to(ra.spec.selector.as_ref().map(|s| &s.match_labels), workload)
            })
            .flat_map(|ra| ra.spec.jwt_rules.iter().cloned())
            .collect()
    }

    /// The local rate limit of `workload`, if an EnvoyFilter selects it.
    pub fn rate_limit_for(&self, workload: &Workload) -> Option<TokenBucketConfig> {
        self.rate_limits
            .iter()
            .find(|rl| rl.applies_to(Some(&rl.spec.labels), workload))
            .map(|rl| rl.spec.bucket)
    }

    /// The mTLS mode for `workload` on `port`: the most specific PeerAuthentication wins
    /// (workload port-level, workload, namespace, root), PERMISSIVE when none says.
    pub fn mtls_mode(&self, workload: &Workload, port: u16) -> MtlsMode {
        self.peer_authentication_for(workload, port).map_or(MtlsMode::Permissive, |(_, mode)| mode)
    }

    /// The PeerAuthentication that decides [`Mesh::mtls_mode`], with the mode it sets;
    /// `None` when none says (PERMISSIVE).
    pub fn peer_authentication_for(
        &self,
        workload: &Workload,
        port: u16,
    ) -> Option<(&Named<PeerAuthenticationSpec>, MtlsMode)> {
        let applicable = |scope: fn(&Named<PeerAuthenticationSpec>, &Workload) -> bool| {
            self.peer_authentication.iter().filter(move |pa| scope(pa, workload))
        };
        for pa in applicable(|pa, w| {
            pa.namespace == w.namespace
                && pa.spec.selector.as_ref().is_some_and(|s| s.selects(&w.labels))
        }) {
            if let Some(mode) = pa.spec.port_level_mtls.get(&port).map(|m| m.mode)
                && mode != MtlsMode::Unset
            {
                return Some((pa, mode));
            }
            if let Some(mode) = pa.spec.mtls.map(|m| m.mode).filter(|m| *m != MtlsMode::Unset) {
                return Some((pa, mode));
            }
        }
        for scope in [
            (|pa: &Named<PeerAuthenticationSpec>, w: &Workload| {
                pa.namespace == w.namespace && pa.spec.selector.is_none()
            }) as fn(&Named<PeerAuthenticationSpec>, &Workload) -> bool,
            |pa, _| pa.namespace == ROOT_NAMESPACE && pa.spec.selector.is_none(),
        ] {
            if let Some(found) = applicable(scope).find_map(|pa| {
                pa.spec.mtls.map(|m| m.mode).filter(|m| *m != MtlsMode::Unset).map(|m| (pa, m))
            }) {
                return Some(found);
            }
        }
        None
    }

    /// The HTTP routes of the VirtualServices bound to a Gateway that selects `gateway`.
    pub fn gateway_routes(&self, gateway: &Workload) -> Vec<BoundRoute> {
        let bound = |vs: &Named<VirtualServiceSpec>, reference: &str| {
            let (ns, name) =
                reference.split_once('/').unwrap_or((vs.namespace.as_str(), reference));
            self.gateways.iter().any(|g| {
                g.name == name
                    && g.namespace == ns
                    && g.spec.selector.iter().all(|(k, v)| gateway.labels.get(k) == Some(v))
            })
        };
        self.virtual_services
            .iter()
            .filter(|vs| vs.spec.gateways.iter().any(|g| bound(vs, g)))
            .flat_map(|vs| {
                vs.spec.http.iter().map(|route| BoundRoute {
                    hosts: vs.spec.hosts.clone(),
                    namespace: vs.namespace.clone(),
                    route: route.clone(),
                })
            })
            .collect()
    }

    /// The DestinationRule for `host` (a short name is in `namespace`): an exact host
    /// before a wildcard, as Istio picks.
    pub fn destination_rule(
        &self,
        host: &str,
        namespace: &str,
    ) -> Option<&Named<DestinationRuleSpec>> {
        let wanted = fqdn(host, namespace);
        let exact =
            self.destination_rules.iter().find(|dr| fqdn(&dr.spec.host, &dr.namespace) == wanted);
        exact.or_else(|| {
            self.destination_rules.iter().find(|dr| {
                dr.spec.host.strip_prefix('*').is_some_and(|suffix| wanted.ends_with(suffix))
            })
        })
    }
}

/// A route with the VirtualService hosts and namespace it belongs to.
#[derive(Debug, Clone)]
pub struct BoundRoute {
    /// The VirtualService's hosts.
    pub hosts: Vec<String>,
    /// Its namespace (short destination names resolve there).
    pub namespace: String,
    /// The route.
    pub route: HttpRoute,
}

impl BoundRoute {
    /// Whether this route takes the request.
    pub fn matches(
        &self,
        host: &str,
        method: &str,
        path: &str,
        header: &dyn Fn(&str) -> Option<String>,
    ) -> bool {
        let host = host.rsplit_once(':').map_or(host, |(h, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) { h } else { host }
        });
        let host_ok = self.hosts.iter().any(|pattern| match pattern.strip_prefix('*') {
            Some(suffix) => {
                host.len() > suffix.len()
                    && host.to_ascii_lowercase().ends_with(&suffix.to_ascii_lowercase())
                    || pattern == "*"
            }
            None => pattern.eq_ignore_ascii_case(host),
        });
        host_ok
            && (self.route.matches.is_empty()
                || self.route.matches.iter().any(|m| {
                    m.uri.as_ref().is_none_or(|uri| uri.matches(path, m.ignore_uri_case))
                        && m.method.as_ref().is_none_or(|mm| mm.matches(method, false))
                        && m.headers.iter().all(|(name, matcher)| {
                            header(name).is_some_and(|value| matcher.matches(&value, false))
                        })
                }))
    }
}

/// `name` -> `name.namespace.svc.cluster.local`; FQDNs and wildcards unchanged.
pub fn fqdn(host: &str, namespace: &str) -> String {
    if host.contains('.') || host.starts_with('*') {
        host.to_owned()
    } else {
        format!("{host}.{namespace}.{CLUSTER_DOMAIN}")
    }
}

/// Deserializes a spec; the error carries the field path from `spec`.
fn parse<T: DeserializeOwned>(spec: serde_norway::Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(spec).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { "spec".to_owned() } else { format!("spec.{path}") };
        (field, e.into_inner().to_string())
    })
}

fn check_jwt_rules(rules: &[JwtRule]) -> Result<(), (String, String)> {
    for (i, rule) in rules.iter().enumerate() {
        if rule.audiences.is_empty() {
            return Err((
                format!("spec.jwtRules[{i}].audiences"),
                "must name at least one audience".into(),
            ));
        }
        for (j, header) in rule.from_headers.iter().enumerate() {
            let bearer = header.name.eq_ignore_ascii_case("authorization")
                && header.prefix.as_deref() == Some("Bearer ");
            if !bearer {
                return Err((
                    format!("spec.jwtRules[{i}].fromHeaders[{j}]"),
                    "only `Authorization` with prefix `Bearer ` is supported".into(),
                ));
            }
        }
    }
    Ok(())
}

fn check_routes(routes: &[HttpRoute]) -> Result<(), (String, String)> {
    for (i, route) in routes.iter().enumerate() {
        if route.route.len() != 1 || route.route[0].weight.is_some_and(|w| w != 100) {
            return Err((
                format!("spec.http[{i}].route"),
                "exactly one destination per route is supported (no weighted splits)".into(),
            ));
        }
        if route.retries.as_ref().is_some_and(|r| r.attempts > 10) {
            return Err((format!("spec.http[{i}].retries.attempts"), "at most 10".into()));
        }
    }
    Ok(())
}

const LOCAL_RATE_LIMIT: &str = "envoy.filters.http.local_ratelimit";
const LOCAL_RATE_LIMIT_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";

fn rate_limit(spec: &EnvoyFilterSpec) -> Result<RateLimit, (String, String)> {
    let [patch] = spec.config_patches.as_slice() else {
        return Err((
            "spec.configPatches".into(),
            "exactly one patch (the local rate limit) is supported".into(),
        ));
    };
    let at = |field: &str| format!("spec.configPatches[0].{field}");
    if patch.apply_to != "HTTP_FILTER" {
        return Err((at("applyTo"), "only HTTP_FILTER is supported".into()));
    }
    let value = &patch.patch.value;
    if value.name != LOCAL_RATE_LIMIT {
        return Err((at("patch.value.name"), format!("only {LOCAL_RATE_LIMIT} is supported")));
    }
    if value.typed_config.type_url != LOCAL_RATE_LIMIT_TYPE {
        return Err((
            at("patch.value.typed_config.@type"),
            format!("must be {LOCAL_RATE_LIMIT_TYPE}"),
        ));
    }
    for (name, fraction) in [
        ("filter_enabled", &value.typed_config.filter_enabled),
        ("filter_enforced", &value.typed_config.filter_enforced),
    ] {
        // Envoy's default for an absent fraction is 0% ("for safety"): the YAML must say.
        let full = fraction.as_ref().is_some_and(|f| {
            let default = &f["default_value"];
            default["numerator"] == 100 && default["denominator"] == "HUNDRED"
        });
        if !full {
            return Err((
                at(&format!("patch.value.typed_config.{name}")),
                "must be present and 100/HUNDRED (Envoy's default is 0%)".into(),
            ));
        }
    }
    let bucket = value.typed_config.token_bucket;
    if bucket.max_tokens == 0
        || bucket.tokens_per_fill == Some(0)
        || bucket.fill_interval.as_millis() < 50
    {
        return Err((
            at("patch.value.typed_config.token_bucket"),
            "max_tokens and tokens_per_fill must be > 0, fill_interval >= 50ms (Envoy's rule)"
                .into(),
        ));
    }
    let labels = spec.workload_selector.as_ref().map(|s| s.labels.clone()).unwrap_or_default();
    Ok(RateLimit { labels, bucket })
}
