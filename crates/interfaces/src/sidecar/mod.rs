//! The sidecar: what Istio's Envoy sidecar enforces in front of one workload, run inside
//! the service itself when no edge is in front of it (`ferrobank serve accounts`,
//! `serve identity`). Defence in depth: a request that reaches a service without passing
//! the gateway is judged by the same YAML the gateway and Istio enforce.
//!
//! Per request, in Envoy's order: request id, path normalization (the service then sees
//! the normalized path, so it serves what was judged), JWT verification when a
//! RequestAuthentication selects the workload (an invalid token is 401, a missing one is
//! left to policy), then the AuthorizationPolicies that select the workload (403 `RBAC:
//! access denied`), with the mTLS peer's identity ([`PeerPrincipal`]) as
//! `source.principal`; plaintext requests have none.

pub mod listener;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ferrobank_adapters::istio::Mesh;
use ferrobank_adapters::istio::resources::JwtRule;
use ferrobank_adapters::oidc::TokenValidator;
use ferrobank_application::{AccessDenied, AuditSink};
use ferrobank_domain::policy::{Decision, RequestAuth, Workload, WorkloadPolicies};

use crate::gateway::{HeaderLookup, text};
use crate::gateway::{PeerPrincipal, RBAC_DENIED};
use crate::http::REQUEST_ID;
use crate::http::problem::Problem;

/// One workload a process serves, and which requests are its.
#[derive(Debug, Clone)]
pub struct WorkloadSpec {
    /// Its name in logs and metrics (`accounts-service`).
    pub name: String,
    /// Namespace and labels, as policies select them.
    pub workload: Workload,
    /// Path prefixes it serves when a process runs several workloads; empty: every path
    /// no other workload claims.
    pub prefixes: Vec<String>,
}

/// What one workload's sidecar enforces.
#[derive(Debug)]
struct Enforced {
    spec: WorkloadSpec,
    policies: WorkloadPolicies,
    /// One validator per JWT rule, by issuer; empty: no RequestAuthentication selects it.
    validators: Vec<(String, Arc<TokenValidator>)>,
}

/// The sidecar of the workloads one process serves. Cheap to share: clone the `Arc`.
#[derive(Debug)]
pub struct Sidecar {
    workloads: Vec<Enforced>,
    port: u16,
    /// Where its 401s and 403s are recorded as `access.denied` (unset: nowhere).
    audit: OnceLock<AuditSink>,
}

impl Sidecar {
    /// The policies and JWT rules of `mesh` that select each of `workloads`; `port` is the
    /// listener's (`destination.port`); `validator` gives the token validator of a JWT rule
    /// (the caller reuses the service's own where issuer and audiences are the same).
    pub fn new(
        mesh: &Mesh,
        workloads: Vec<WorkloadSpec>,
        port: u16,
        validator: &dyn Fn(&JwtRule) -> Result<Arc<TokenValidator>, String>,
    ) -> Result<Sidecar, String> {
        if workloads.is_empty() {
            return Err("a sidecar needs at least one workload".into());
        }
        let workloads = workloads
            .into_iter()
            .map(|spec| {
                let validators = mesh
                    .jwt_rules_for(&spec.workload)
                    .iter()
                    .map(|rule| Ok((rule.issuer.clone(), validator(rule)?)))
                    .collect::<Result<Vec<_>, String>>()?;
                Ok(Enforced { policies: mesh.authorization_for(&spec.workload), validators, spec })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Sidecar { workloads, port, audit: OnceLock::new() })
    }

    /// Records the sidecar's refusals (401 `Jwt verification fails`, 403 `RBAC: access
    /// denied`) in `sink` from now on; only the first sink given is kept.
    pub fn record_denials_to(&self, sink: AuditSink) {
        let _ = self.audit.set(sink);
    }

    fn record_denied(&self, denied: AccessDenied) {
        if let Some(sink) = self.audit.get() {
            sink.denied(&denied);
        }
    }

    /// The workload whose prefixes claim `path`, else the first without prefixes.
    fn workload_for(&self, path: &str) -> &Enforced {
        self.workloads
            .iter()
            .find(|w| w.spec.prefixes.iter().any(|p| path.starts_with(p.as_str())))
            .or_else(|| self.workloads.iter().find(|w| w.spec.prefixes.is_empty()))
            .unwrap_or(&self.workloads[0])
    }

    /// RequestAuthentication: `None` when no rule selects the workload or no token was
    /// sent (policy decides), `Some(Err)` for a token no rule's issuer accepts.
    async fn verify(
        &self,
        workload: &Enforced,
        headers: &HeaderMap,
    ) -> Option<Result<RequestAuth, ()>> {
        if workload.validators.is_empty() {
            // Without a RequestAuthentication nothing reads the token (as in Istio).
            return None;
        }
        let token = match crate::gateway::bearer_token(headers) {
            Ok(token) => token?,
            Err(()) => return Some(Err(())),
        };
        let verified = async {
            let claims = crate::gateway::unverified_claims(token).ok_or(())?;
            let issuer = claims.get("iss").and_then(|v| v.as_str()).ok_or(())?;
            let (_, validator) =
                workload.validators.iter().find(|(rule, _)| rule == issuer).ok_or(())?;
            // The signature and claims are checked here; only then are the claims used.
            validator.validate(token).await.map_err(|_| ())?;
            Ok(RequestAuth::from_claims(claims))
        };
        Some(verified.await)
    }
}

/// The middleware (`axum::middleware::from_fn_with_state`). Put it around the whole
/// router (not `Router::layer`), so that the normalized path is also what is routed.
pub async fn enforce(
    State(sidecar): State<Arc<Sidecar>>,
    mut request: Request,
    next: Next,
) -> Response {
    let request_id = crate::gateway::request_id(request.headers());
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        request.headers_mut().insert(REQUEST_ID, value);
    }
    let mut response = judge(&sidecar, request, next, &request_id).await;
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

async fn judge(sidecar: &Sidecar, mut request: Request, next: Next, request_id: &str) -> Response {
    let raw = request.uri().path_and_query().map_or("/", |pq| pq.as_str()).to_owned();
    let path = match ferrobank_domain::policy::normalize(&raw) {
        Ok((path, query)) => {
            let normalized = match query {
                Some(query) => format!("{path}?{query}"),
                None => path.clone(),
            };
            let mut parts = request.uri().clone().into_parts();
            match normalized.parse() {
                Ok(pq) => parts.path_and_query = Some(pq),
                Err(_) => {
                    return invalid_path("the normalized path is not a valid URI", request_id);
                }
            }
            match Uri::from_parts(parts) {
                Ok(uri) => *request.uri_mut() = uri,
                Err(_) => {
                    return invalid_path("the normalized path is not a valid URI", request_id);
                }
            }
            path
        }
        Err(rejection) => return invalid_path(&rejection.to_string(), request_id),
    };
    let workload = sidecar.workload_for(&path);
    let name = workload.spec.name.as_str();
    let auth = match sidecar.verify(workload, request.headers()).await {
        None => None,
        Some(Ok(auth)) => Some(auth),
        Some(Err(())) => {
            count(name, "jwt-invalid");
            sidecar.record_denied(AccessDenied {
                subject: None,
                method: request.method().to_string(),
                path,
                status: StatusCode::UNAUTHORIZED.as_u16(),
                reason: "Jwt verification fails".into(),
                request_id: Some(request_id.to_owned()),
                layer: "sidecar",
            });
            let mut response = text(StatusCode::UNAUTHORIZED, "Jwt verification fails");
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"ferrobank\", error=\"invalid_token\""),
            );
            return response;
        }
    };
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let principal = request.extensions().get::<PeerPrincipal>().map(|p| p.0.clone());
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()))
        .unwrap_or("")
        .to_owned();
    let method = request.method().clone();
    let decision = {
        let headers = HeaderLookup(request.headers());
        let attributes = ferrobank_domain::policy::Request {
            method: request.method().as_str(),
            path: &path,
            host: &host,
            port: sidecar.port,
            headers: &headers,
            source_ip: peer,
            remote_ip: peer,
            source_principal: principal.as_deref(),
            auth: auth.as_ref(),
        };
        workload.policies.evaluate(&attributes)
    };
    match decision {
        Decision::Allow { .. } => {
            count(name, "allowed");
            next.run(request).await
        }
        Decision::Deny { by } => {
            count(name, "rbac-denied");
            tracing::info!(
                request_id,
                workload = name,
                path = %path,
                principal = principal.as_deref().unwrap_or("-"),
                %by,
                "RBAC denied"
            );
            // Only a verified token's subject: the claims of a refused one are unproven.
            let subject = auth
                .as_ref()
                .and_then(|auth| auth.claims.get("sub"))
                .and_then(|sub| sub.as_str())
                .map(str::to_owned);
            sidecar.record_denied(AccessDenied {
                subject,
                method: method.to_string(),
                path,
                status: StatusCode::FORBIDDEN.as_u16(),
                reason: RBAC_DENIED.into(),
                request_id: Some(request_id.to_owned()),
                layer: "sidecar",
            });
            text(StatusCode::FORBIDDEN, RBAC_DENIED)
        }
    }
}

fn invalid_path(reason: &str, request_id: &str) -> Response {
    let mut problem =
        Problem::new(StatusCode::BAD_REQUEST, "invalid-path", "The request path is not acceptable")
            .detail(reason);
    problem.request_id = Some(request_id.to_owned());
    problem.into_response()
}

fn count(workload: &str, decision: &'static str) {
    metrics::counter!(
        "ferrobank_sidecar_decisions_total",
        "workload" => workload.to_owned(),
        "decision" => decision
    )
    .increment(1);
}
