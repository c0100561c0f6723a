//! The zero-trust edge: enforces the Istio YAML in `deploy/istio/` the way the ingress
//! gateway and the sidecars do in a cluster (`ferrobank serve gateway`, and the same layer
//! in front of `ferrobank up`).
//!
//! Per request, in Envoy's filter order: request id, path normalization, CORS preflight,
//! routing (VirtualService), JWT verification (RequestAuthentication: an invalid token is
//! 401, a missing one is left to policy), authorization at the ingress then at the
//! destination workload (AuthorizationPolicy: 403 `RBAC: access denied`), the local rate
//! limit (EnvoyFilter numbers, per route and client), then the upstream call with the
//! DestinationRule's pool limits and outlier detection and the route's retries and timeout.
//! Every answer is counted as `istio_requests_total` and logged as one JSON line.

mod upstream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header,
};
use axum::response::IntoResponse;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ferrobank_adapters::istio::plan::{Plan, Token, Verdict};
use ferrobank_adapters::istio::{BoundRoute, Mesh, fqdn};
use ferrobank_adapters::oidc::{OidcConfig, TokenValidator};
use ferrobank_application::{AccessDenied, AuditSink, RateDecision, RateLimiter, TokenBucket};
use ferrobank_domain::policy::{Headers, RequestAuth, normalize};

use upstream::Upstream;
pub use upstream::{Breaker, Failure, Target};

use crate::http::REQUEST_ID;
use crate::http::problem::Problem;

/// Envoy's RBAC denial body.
pub const RBAC_DENIED: &str = "RBAC: access denied";

/// How the gateway is set up.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Where the Istio YAML comes from.
    pub source: Source,
    /// Replaces every JWT rule's issuer (the laptop's "overlay"); `None` keeps the YAML's.
    pub issuer: Option<String>,
    /// Destinations not listed in `upstreams` go here.
    pub default_upstream: Target,
    /// Per destination host (`payment-service`): where it runs.
    pub upstreams: HashMap<String, Target>,
    /// Largest request body buffered (needed for retries), in bytes.
    pub max_body_bytes: usize,
    /// Route timeout when the VirtualService sets none.
    pub default_timeout_ms: u64,
    /// Browser origins allowed by CORS (the realm clients' web origins).
    pub cors_origins: Vec<String>,
    /// Whether requests pass when the rate limiter's store fails (availability first).
    pub rate_limit_fail_open: bool,
    /// How often the YAML files are checked for changes.
    pub reload_interval_ms: u64,
    /// Whether clients reach the gateway over https (HSTS, `x-forwarded-proto`).
    pub https: bool,
    /// Validator settings (algorithms, leeway, CA file) every JWT rule's issuer gets.
    pub oidc: OidcConfig,
    /// The mesh's mutual TLS for `https://` upstreams (`mtls::client_config`); `None`:
    /// upstreams are called over plaintext.
    pub upstream_tls: Option<Arc<rustls::ClientConfig>>,
}

/// Where the Istio YAML comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A directory, watched for changes.
    Dir(PathBuf),
    /// Files built into the binary: (file name, contents).
    Embedded(Vec<(&'static str, &'static str)>),
}

impl Source {
    /// Reads and checks every resource.
    pub fn load(&self) -> Result<Mesh, String> {
        match self {
            Source::Dir(dir) => Mesh::load(dir).map_err(|e| e.to_string()),
            Source::Embedded(files) => {
                let mut mesh = Mesh::default();
                for (name, text) in files {
                    mesh.add_file(std::path::Path::new(name), text).map_err(|e| e.to_string())?;
                }
                Ok(mesh)
            }
        }
    }

    fn stamp(&self) -> Vec<(PathBuf, Option<SystemTime>)> {
        match self {
            Source::Dir(dir) => stamp(dir),
            Source::Embedded(_) => Vec::new(),
        }
    }
}

/// A compiled configuration: one per load of the YAML.
#[derive(Debug)]
struct Compiled {
    plan: Plan,
    stamp: Vec<(PathBuf, Option<SystemTime>)>,
    ingress_validators: Vec<(String, Arc<TokenValidator>)>,
    destination_validators: HashMap<String, Vec<(String, Arc<TokenValidator>)>>,
    upstreams: HashMap<String, Arc<Upstream>>,
    rate_limit: Option<TokenBucket>,
    forward_token: bool,
}

/// A validator per (issuer, audiences): kept across reloads so their key caches survive.
type ValidatorKey = (String, Vec<String>);

/// The edge. Cheap to share: clone the `Arc`.
#[derive(Debug)]
pub struct Gateway {
    config: GatewayConfig,
    current: RwLock<Arc<Compiled>>,
    limiter: Arc<dyn RateLimiter>,
    validators: Mutex<HashMap<ValidatorKey, Arc<TokenValidator>>>,
    breakers: Mutex<HashMap<String, Arc<Breaker>>>,
    /// Where its own 401s and 403s are recorded as `access.denied` (unset: nowhere).
    audit: OnceLock<AuditSink>,
}

impl Gateway {
    /// Loads and compiles the YAML; an unenforceable file is an error naming it.
    pub fn new(
        config: GatewayConfig,
        limiter: Arc<dyn RateLimiter>,
    ) -> Result<Arc<Gateway>, String> {
        let gateway = Gateway {
            current: RwLock::new(Arc::new(Compiled::empty())),
            config,
            limiter,
            validators: Mutex::default(),
            breakers: Mutex::default(),
            audit: OnceLock::new(),
        };
        let compiled = gateway.compile()?;
        *gateway.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(compiled);
        Ok(Arc::new(gateway))
    }

    /// Records the edge's own refusals (401 `Jwt verification fails`, 403 `RBAC: access
    /// denied`) in `sink` from now on; answers from upstreams are theirs to record. Only the
    /// first sink given is kept.
    pub fn record_denials_to(&self, sink: AuditSink) {
        let _ = self.audit.set(sink);
    }

    fn record_denied(
        &self,
        subject: Option<String>,
        method: &Method,
        path: &str,
        status: StatusCode,
        reason: &str,
        request_id: &str,
    ) {
        if let Some(sink) = self.audit.get() {
            sink.denied(&AccessDenied {
                subject,
                method: method.to_string(),
                path: path.to_owned(),
                status: status.as_u16(),
                reason: reason.to_owned(),
                request_id: Some(request_id.to_owned()),
                layer: "edge",
            });
        }
    }

    /// Reloads when a file changed; a broken change is logged and the running config kept.
    pub fn reload_if_changed(&self) -> Result<bool, String> {
        let stamp = self.config.source.stamp();
        if self.snapshot().stamp == stamp {
            return Ok(false);
        }
        let compiled = self.compile()?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(compiled);
        tracing::info!(source = ?self.config.source, "edge configuration reloaded");
        Ok(true)
    }

    /// Watches the directory until the task is dropped.
    pub fn spawn_reloader(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        if matches!(self.config.source, Source::Embedded(_)) {
            return None;
        }
        let gateway = Arc::downgrade(self);
        let every = Duration::from_millis(self.config.reload_interval_ms.max(100));
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Some(gateway) = gateway.upgrade() else { return };
                if let Err(error) = gateway.reload_if_changed() {
                    tracing::error!(%error, "edge configuration NOT reloaded; the previous one stays in force");
                }
            }
        }))
    }

    fn snapshot(&self) -> Arc<Compiled> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn compile(&self) -> Result<Compiled, String> {
        let stamp = self.config.source.stamp();
        let mut mesh = self.config.source.load()?;
        if let Some(issuer) = &self.config.issuer {
            mesh.set_issuer(issuer);
        }
        let plan = Plan::new(&mesh);
        let validators_for = |rules: &[ferrobank_adapters::istio::resources::JwtRule]| {
            rules
                .iter()
                .map(|rule| {
                    Ok((rule.issuer.clone(), self.validator(&rule.issuer, &rule.audiences)?))
                })
                .collect::<Result<Vec<_>, String>>()
        };
        let ingress_validators = validators_for(&plan.ingress_jwt_rules)?;
        let mut destination_validators = HashMap::new();
        let mut upstreams = HashMap::new();
        for (host, destination) in &plan.destinations {
            destination_validators.insert(host.clone(), validators_for(&destination.jwt_rules)?);
            let target = self
                .config
                .upstreams
                .get(&destination.name)
                .cloned()
                .unwrap_or_else(|| self.config.default_upstream.clone());
            let rule = mesh
                .destination_rule(host, &destination.namespace)
                .map(|dr| &dr.spec.traffic_policy);
            let breaker = self
                .breakers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(fqdn(host, &destination.namespace))
                .or_default()
                .clone();
            let tls = self.config.upstream_tls.as_deref();
            upstreams.insert(host.clone(), Arc::new(Upstream::new(target, rule, breaker, tls)));
        }
        let rate_limit = mesh
            .rate_limit_for(&plan.ingress)
            .map(|b| {
                let interval_ms = u64::try_from(b.fill_interval.as_millis()).unwrap_or(u64::MAX);
                TokenBucket::new(b.max_tokens, b.tokens_per_fill.unwrap_or(1), interval_ms)
            })
            .transpose()
            .map_err(|e| format!("rate limit: {e}"))?;
        let forward_token = mesh
            .request_authentication
            .iter()
            .flat_map(|ra| &ra.spec.jwt_rules)
            .all(|rule| rule.forward_original_token);
        Ok(Compiled {
            plan,
            stamp,
            ingress_validators,
            destination_validators,
            upstreams,
            rate_limit,
            forward_token,
        })
    }

    fn validator(&self, issuer: &str, audiences: &[String]) -> Result<Arc<TokenValidator>, String> {
        let mut cache = self.validators.lock().unwrap_or_else(|e| e.into_inner());
        let key = (issuer.to_owned(), audiences.to_vec());
        if let Some(validator) = cache.get(&key) {
            return Ok(validator.clone());
        }
        let config = OidcConfig {
            issuer: issuer.to_owned(),
            audiences: audiences.to_vec(),
            ..self.config.oidc.clone()
        };
        let validator =
            Arc::new(TokenValidator::new(&config).map_err(|e| format!("issuer {issuer}: {e}"))?);
        cache.insert(key, validator.clone());
        Ok(validator)
    }

    /// Handles one request from `peer`; `peer_principal` is its mTLS identity, if any.
    pub async fn handle(
        &self,
        request: Request<Body>,
        peer: SocketAddr,
        peer_principal: Option<String>,
    ) -> Response<Body> {
        let started = Instant::now();
        let compiled = self.snapshot();
        let request_id = request_id(request.headers());
        let method = request.method().clone();
        let raw_path = request.uri().path_and_query().map_or("/", |pq| pq.as_str()).to_owned();
        let mut log = Access { route: "-".into(), destination: None, flags: "-", decision: "-" };
        let response = self
            .decide_and_forward(&compiled, request, peer, peer_principal, &request_id, &mut log)
            .await;
        let mut response = response;
        self.finish(&mut response, &request_id);
        let status = response.status().as_u16();
        let (name, namespace) = log
            .destination
            .as_ref()
            .map_or(("unknown".to_owned(), "unknown".to_owned()), |(n, ns)| {
                (n.clone(), ns.clone())
            });
        let labels = [
            ("reporter", "source".to_owned()),
            ("source_workload", "istio-ingressgateway".to_owned()),
            ("source_workload_namespace", "istio-system".to_owned()),
            ("destination_service_name", name.clone()),
            ("destination_service_namespace", namespace.clone()),
            (
                "destination_service",
                if name == "unknown" { name.clone() } else { fqdn(&name, &namespace) },
            ),
            ("destination_workload", name.clone()),
            ("request_protocol", "http".to_owned()),
            ("response_code", status.to_string()),
            ("response_flags", log.flags.to_owned()),
        ];
        metrics::counter!("istio_requests_total", &labels).increment(1);
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        metrics::histogram!("istio_request_duration_milliseconds", &labels)
            .record(elapsed_ms as f64);
        metrics::counter!("ferrobank_gateway_decisions_total", "route" => log.route.clone(), "decision" => log.decision).increment(1);
        tracing::info!(
            target: "ferrobank::access",
            request_id = %request_id,
            method = %method,
            path = %raw_path,
            route = %log.route,
            destination = %name,
            status,
            response_flags = log.flags,
            decision = log.decision,
            peer = %peer,
            duration_ms = elapsed_ms,
            "access"
        );
        response
    }

    async fn decide_and_forward(
        &self,
        compiled: &Compiled,
        request: Request<Body>,
        peer: SocketAddr,
        peer_principal: Option<String>,
        request_id: &str,
        log: &mut Access,
    ) -> Response<Body> {
        let (mut parts, body) = request.into_parts();
        let Ok((path, query)) = normalize(parts.uri.path_and_query().map_or("/", |pq| pq.as_str()))
        else {
            log.decision = "bad-path";
            let reason =
                normalize(parts.uri.path()).err().map(|e| e.to_string()).unwrap_or_default();
            return Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid-path",
                "The request path is not acceptable",
            )
            .detail(reason)
            .into_response();
        };
        let query = query.map(str::to_owned);
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| parts.uri.authority().map(|a| a.as_str()))
            .unwrap_or("")
            .to_owned();
        if parts.method == Method::OPTIONS
            && parts.headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        {
            log.decision = "cors-preflight";
            return self.preflight(&parts.headers);
        }
        let header_lookup =
            |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let Some(route) = compiled.plan.route(&host, parts.method.as_str(), &path, &header_lookup)
        else {
            log.decision = "no-route";
            log.flags = "NR";
            return text(StatusCode::NOT_FOUND, "");
        };
        let route_name = route_name(route, compiled);
        log.route = route_name.clone();
        let destination = compiled.plan.destination(route);
        log.destination = destination.map(|d| (d.name.clone(), d.namespace.clone()));
        let dest_host = route.route.route[0].destination.host.clone();

        // RequestAuthentication (Envoy jwt_authn): the first validator whose issuer is the
        // token's `iss`; an unknown issuer is as invalid as a bad signature.
        let verified = match bearer_token(&parts.headers) {
            Ok(None) => None,
            Ok(Some(token)) => Some(
                self.verify(
                    token,
                    &compiled.ingress_validators,
                    compiled.destination_validators.get(&dest_host),
                )
                .await,
            ),
            // Two Authorization headers: the edge and the service could read different ones.
            Err(()) => Some(Err(())),
        };
        let auth = verified.as_ref().and_then(|v| v.as_ref().ok());
        let token = match &verified {
            None => Token::Missing,
            Some(Ok(auth)) => Token::Valid(auth),
            Some(Err(())) => Token::Invalid,
        };
        // The client is the peer: `X-Forwarded-For` is not trusted (no trusted proxies
        // are configured, Istio's `numTrustedProxies: 0`).
        let client_ip = peer.ip();
        let verdict = {
            let headers = HeaderLookup(&parts.headers);
            let attributes = ferrobank_domain::policy::Request {
                method: parts.method.as_str(),
                path: &path,
                host: &host,
                // The Gateway server's port, never the client's Host header.
                port: if self.config.https { 443 } else { 80 },
                headers: &headers,
                source_ip: Some(peer.ip()),
                remote_ip: Some(client_ip),
                source_principal: peer_principal.as_deref(),
                auth: None,
            };
            compiled.plan.judge(route, &attributes, token)
        };
        // The local rate limit, before authorization as in Envoy's filter chain (the
        // EnvoyFilter inserts it first), so refused requests spend the budget too; keyed per
        // route and client: a verified token's `azp`, else the client address.
        let mut limit_headers = Vec::new();
        if let Some(bucket) = &compiled.rate_limit {
            let client = auth
                .and_then(|a| {
                    a.claims.get("azp").and_then(|v| v.as_str()).map(|azp| format!("azp:{azp}"))
                })
                .unwrap_or_else(|| format!("ip:{client_ip}"));
            let key = format!("{route_name}|{client}");
            match self.limiter.check(&key, bucket).await {
                Ok(decision) => {
                    limit_headers = rate_limit_headers(&decision, bucket);
                    if !decision.allowed {
                        log.decision = "rate-limited";
                        log.flags = "RL";
                        let mut response = Problem::new(StatusCode::TOO_MANY_REQUESTS, "rate-limited", "Too many requests")
                            .detail("this client's request budget for the route is used up; retry after the indicated time")
                            .retry_after(u32::try_from(decision.retry_after_secs()).unwrap_or(u32::MAX))
                            .into_response();
                        response.headers_mut().extend(limit_headers);
                        return response;
                    }
                }
                Err(error) if self.config.rate_limit_fail_open => {
                    tracing::warn!(%error, "rate limiter unavailable; request let through (fail open)");
                }
                Err(error) => {
                    tracing::error!(%error, "rate limiter unavailable; request refused (fail closed)");
                    return Problem::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "rate-limiter-unavailable",
                        "Try again shortly",
                    )
                    .retry_after(1)
                    .into_response();
                }
            }
        }

        match verdict {
            Verdict::Allow => {}
            Verdict::Unauthenticated { .. } => {
                log.decision = "jwt-invalid";
                let status = StatusCode::UNAUTHORIZED;
                let reason = "Jwt verification fails";
                self.record_denied(None, &parts.method, &path, status, reason, request_id);
                let mut response = text(status, reason);
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"ferrobank\", error=\"invalid_token\""),
                );
                return response;
            }
            Verdict::Denied { at, by } => {
                log.decision = "rbac-denied";
                tracing::info!(request_id, %at, %by, "RBAC denied");
                // Only a verified token's subject: the claims of a refused one are unproven.
                let subject = auth
                    .and_then(|auth| auth.claims.get("sub"))
                    .and_then(|sub| sub.as_str())
                    .map(str::to_owned);
                let status = StatusCode::FORBIDDEN;
                self.record_denied(subject, &parts.method, &path, status, RBAC_DENIED, request_id);
                return text(status, RBAC_DENIED);
            }
        }
        log.decision = "allowed";

        // A slow sender must not hold the request forever: the body arrives within the
        // default route timeout or the request is answered 408.
        let read = tokio::time::timeout(
            Duration::from_millis(self.config.default_timeout_ms),
            axum::body::to_bytes(body, self.config.max_body_bytes),
        );
        let body = match read.await {
            Ok(Ok(body)) => body,
            Err(_) => {
                log.decision = "body-timeout";
                return Problem::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body-timeout",
                    "The request body did not arrive in time",
                )
                .into_response();
            }
            Ok(Err(_)) => {
                log.decision = "body-too-large";
                return Problem::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body-too-large",
                    "The request body is too large",
                )
                .detail(format!("at most {} bytes", self.config.max_body_bytes))
                .into_response();
            }
        };
        // What the upstream sees: the normalized path (so it judges what the policy
        // judged), the route's rewrites and header edits, forwarding headers.
        let mut upstream_path = path.clone();
        if let Some(rewrite) = &route.route.rewrite {
            if let Some(uri) = &rewrite.uri {
                upstream_path = rewrite_path(route, &path, uri);
            }
            if let Some(authority) = &rewrite.authority
                && let Ok(value) = HeaderValue::from_str(authority)
            {
                parts.headers.insert(header::HOST, value);
            }
        }
        let target = match &query {
            Some(q) => format!("{upstream_path}?{q}"),
            None => upstream_path,
        };
        match target.parse() {
            Ok(uri) => parts.uri = uri,
            Err(_) => return text(StatusCode::BAD_REQUEST, "invalid path"),
        }
        strip_hop_by_hop(&mut parts.headers);
        if !compiled.forward_token {
            parts.headers.remove(header::AUTHORIZATION);
        }
        let client_chain = match parts.headers.get("x-forwarded-for").and_then(|v| v.to_str().ok())
        {
            Some(chain) => format!("{chain}, {}", peer.ip()),
            None => peer.ip().to_string(),
        };
        if let Ok(value) = HeaderValue::from_str(&client_chain) {
            parts.headers.insert("x-forwarded-for", value);
        }
        parts.headers.insert(
            "x-forwarded-proto",
            HeaderValue::from_static(if self.config.https { "https" } else { "http" }),
        );
        if let Ok(value) = HeaderValue::from_str(request_id) {
            parts.headers.insert(REQUEST_ID, value);
        }
        if let Some(edits) = route.route.headers.as_ref().map(|h| &h.request) {
            apply_edits(&mut parts.headers, edits);
        }
        let Some(upstream) = compiled.upstreams.get(&dest_host) else {
            log.flags = "UH";
            return text(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream");
        };
        let timeout =
            route.route.timeout.unwrap_or(Duration::from_millis(self.config.default_timeout_ms));
        let mut response = match upstream
            .call(&parts, body, route.route.retries.as_ref(), timeout)
            .await
        {
            Ok(response) => response,
            Err(failure) => {
                log.flags = failure.flag();
                metrics::gauge!("ferrobank_gateway_circuit_open", "destination" => dest_host.clone())
                    .set(if upstream.breaker.is_open(Instant::now()) { 1.0 } else { 0.0 });
                let (status, body) = failure.response();
                return text(status, body);
            }
        };
        strip_hop_by_hop(response.headers_mut());
        if let Some(edits) = route.route.headers.as_ref().map(|h| &h.response) {
            apply_edits(response.headers_mut(), edits);
        }
        response.headers_mut().extend(limit_headers);
        response
    }

    async fn verify(
        &self,
        token: &str,
        ingress: &[(String, Arc<TokenValidator>)],
        destination: Option<&Vec<(String, Arc<TokenValidator>)>>,
    ) -> Result<RequestAuth, ()> {
        let claims = unverified_claims(token).ok_or(())?;
        let issuer = claims.get("iss").and_then(|v| v.as_str()).ok_or(())?;
        let validators = ingress.iter().chain(destination.into_iter().flatten());
        let mut matched = false;
        for (rule_issuer, validator) in validators {
            if rule_issuer == issuer {
                matched = true;
                // The signature and claims are checked here; only then are the claims used.
                validator.validate(token).await.map_err(|_| ())?;
            }
        }
        if !matched {
            return Err(());
        }
        Ok(RequestAuth::from_claims(claims))
    }

    fn preflight(&self, headers: &HeaderMap) -> Response<Body> {
        let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
        let Some(origin) = origin.filter(|o| self.origin_allowed(o)) else {
            return text(StatusCode::FORBIDDEN, "CORS: origin not allowed");
        };
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::NO_CONTENT;
        let h = response.headers_mut();
        if let Ok(value) = HeaderValue::from_str(origin) {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
        }
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, PUT, DELETE, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type, idempotency-key, x-request-id"),
        );
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
        response
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        self.config.cors_origins.iter().any(|allowed| allowed == "*" || allowed == origin)
    }

    /// Headers every answer carries: request id, security headers, CORS.
    fn finish(&self, response: &mut Response<Body>, request_id: &str) {
        let h = response.headers_mut();
        if let Ok(value) = HeaderValue::from_str(request_id) {
            h.insert(REQUEST_ID, value);
        }
        for (name, value) in [
            ("x-content-type-options", "nosniff"),
            ("x-frame-options", "DENY"),
            ("referrer-policy", "no-referrer"),
        ] {
            if !h.contains_key(name) {
                h.insert(HeaderName::from_static(name), HeaderValue::from_static(value));
            }
        }
        if self.config.https && !h.contains_key(header::STRICT_TRANSPORT_SECURITY) {
            h.insert(
                header::STRICT_TRANSPORT_SECURITY,
                HeaderValue::from_static("max-age=31536000; includeSubDomains"),
            );
        }
    }

    /// Adds CORS headers for an allowed `Origin` on an actual (non-preflight) request.
    fn cors(&self, origin: Option<&HeaderValue>, response: &mut Response<Body>) {
        if let Some(origin) = origin
            && origin.to_str().is_ok_and(|o| self.origin_allowed(o))
        {
            response.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            response.headers_mut().append(header::VARY, HeaderValue::from_static("Origin"));
        }
    }
}

/// The axum handler: every request of the gateway's listener.
pub async fn serve_request(
    State(gateway): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request<Body>,
) -> Response<Body> {
    let origin = request.headers().get(header::ORIGIN).cloned();
    let principal = request.extensions().get::<PeerPrincipal>().map(|p| p.0.clone());
    let mut response = gateway.handle(request, peer, principal).await;
    gateway.cors(origin.as_ref(), &mut response);
    response
}

/// The mTLS identity of the connection (`cluster.local/ns/NS/sa/SA`), set by the listener.
#[derive(Debug, Clone)]
pub struct PeerPrincipal(pub String);

#[derive(Debug)]
struct Access {
    route: String,
    destination: Option<(String, String)>,
    flags: &'static str,
    decision: &'static str,
}

impl Compiled {
    fn empty() -> Compiled {
        Compiled {
            plan: Plan::new(&Mesh::default()),
            stamp: Vec::new(),
            ingress_validators: Vec::new(),
            destination_validators: HashMap::new(),
            upstreams: HashMap::new(),
            rate_limit: None,
            forward_token: true,
        }
    }
}

/// Request headers as the policy engine reads them.
pub(crate) struct HeaderLookup<'a>(pub(crate) &'a HeaderMap);

impl Headers for HeaderLookup<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Files and modification times of the YAML directory.
fn stamp(dir: &std::path::Path) -> Vec<(PathBuf, Option<SystemTime>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| (e.path(), e.metadata().ok().and_then(|m| m.modified().ok())))
        .filter(|(p, _)| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    files
}

fn route_name(route: &BoundRoute, compiled: &Compiled) -> String {
    route.route.name.clone().unwrap_or_else(|| {
        let index =
            compiled.plan.routes.iter().position(|r| std::ptr::eq(r, route)).unwrap_or_default();
        format!("route-{index}")
    })
}

/// Istio's rewrite: replaces the matched prefix, or the whole path for other matches.
fn rewrite_path(route: &BoundRoute, path: &str, replacement: &str) -> String {
    use ferrobank_adapters::istio::resources::StringMatch;
    for m in &route.route.matches {
        if let Some(StringMatch::Prefix(prefix)) = &m.uri
            && let Some(rest) = path.strip_prefix(prefix.as_str())
        {
            return format!("{replacement}{rest}");
        }
    }
    replacement.to_owned()
}

fn apply_edits(headers: &mut HeaderMap, edits: &ferrobank_adapters::istio::resources::HeaderEdits) {
    for name in &edits.remove {
        headers.remove(name.as_str());
    }
    for (name, value) in &edits.set {
        if let (Ok(name), Ok(value)) =
            (HeaderName::try_from(name.as_str()), HeaderValue::from_str(value))
        {
            headers.insert(name, value);
        }
    }
    for (name, value) in &edits.add {
        if let (Ok(name), Ok(value)) =
            (HeaderName::try_from(name.as_str()), HeaderValue::from_str(value))
        {
            headers.append(name, value);
        }
    }
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ] {
        headers.remove(name);
    }
}

/// The caller's `x-request-id` when it is sensible (non-empty, at most 128 bytes), else a
/// new one: the id every log line and answer of the request carries.
pub(crate) fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string())
}

/// The bearer token of a request, read as the services read it (scheme case-insensitive,
/// RFC 7235 §2.1); more than one `Authorization` header is an error, never a choice.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, ()> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(());
    }
    let value = value.to_str().map_err(|_| ())?;
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Ok(Some(token.trim())),
        // Another scheme (Basic...): not a JWT for RequestAuthentication to read.
        _ => Ok(None),
    }
}

/// The payload of a JWT, undecoded by any check: used only to pick the validator by `iss`
/// and, after that validator accepted the token, as the verified claims.
pub(crate) fn unverified_claims(token: &str) -> Option<serde_json::Value> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    value.is_object().then_some(value)
}

/// IETF `RateLimit-Policy` / `RateLimit` (draft-ietf-httpapi-ratelimit-headers-07 syntax).
fn rate_limit_headers(
    decision: &RateDecision,
    bucket: &TokenBucket,
) -> Vec<(HeaderName, HeaderValue)> {
    let policy = format!("{};w={}", bucket.max_tokens(), bucket.window_secs());
    let state = format!(
        "limit={}, remaining={}, reset={}",
        decision.limit,
        decision.remaining,
        decision.reset_secs()
    );
    [("ratelimit-policy", policy), ("ratelimit", state)]
        .into_iter()
        .filter_map(|(name, value)| {
            Some((HeaderName::from_static(name), HeaderValue::from_str(&value).ok()?))
        })
        .collect()
}

/// Envoy's plain-text answers (`RBAC: access denied`, `no healthy upstream`, ...).
pub(crate) fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}
