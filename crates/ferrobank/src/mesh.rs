//! Split mode's sidecar wiring: which workload of `deploy/istio` each service role is, the
//! Istio YAML it obeys (`[mesh]`), and the token validators of its RequestAuthentication.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use ferrobank_adapters::istio::Mesh;
use ferrobank_adapters::istio::resources::JwtRule;
use ferrobank_adapters::oidc::{OidcConfig, TokenValidator};
use ferrobank_domain::policy::Workload;
use ferrobank_interfaces::gateway::Source;
use ferrobank_interfaces::sidecar::{Sidecar, WorkloadSpec};

use crate::config::Config;
use crate::server::Roles;

/// A JWT rule's issuer and audiences: rules with the same share a validator.
type ValidatorKey = (String, Vec<String>);

/// The namespace of the bank's services in `deploy/istio`.
pub const SERVICES_NAMESPACE: &str = "banking-system";

/// The workloads `roles` serve, labelled as in `deploy/istio`: the ledger API is
/// `app: accounts-service`, the identity provider `app: keycloak` (its paths, as the
/// VirtualService routes them; the rest of a process running both is the ledger's).
pub fn workloads(roles: Roles) -> Vec<WorkloadSpec> {
    let spec = |app: &str, prefixes: &[&str]| WorkloadSpec {
        name: app.to_owned(),
        workload: Workload {
            namespace: SERVICES_NAMESPACE.to_owned(),
            labels: [("app".to_owned(), app.to_owned())].into_iter().collect(),
        },
        prefixes: prefixes.iter().map(|p| (*p).to_owned()).collect(),
    };
    let mut workloads = Vec::new();
    if roles.accounts {
        workloads.push(spec("accounts-service", &[]));
    }
    if roles.identity {
        let prefixes: &[&str] =
            if roles.accounts { &["/realms/", "/admin/", "/resources/"] } else { &[] };
        workloads.push(spec("keycloak", prefixes));
    }
    workloads
}

/// The Istio YAML of `[mesh] dir`, else `[gateway] dir`, else the built-in copy, with every
/// JWT rule's issuer replaced by `issuer` (the laptop's overlay) when given.
pub fn load(config: &Config, issuer: Option<&str>) -> Result<Mesh, String> {
    let source = match config.mesh.dir.as_ref().or(config.gateway.dir.as_ref()) {
        Some(dir) => Source::Dir(dir.clone()),
        None => Source::Embedded(crate::edge::EMBEDDED.to_vec()),
    };
    let mut mesh = source.load().map_err(|e| format!("[mesh]: {e}"))?;
    if let Some(issuer) = issuer {
        mesh.set_issuer(issuer);
    }
    Ok(mesh)
}

/// The sidecar of a split-mode process serving `roles` on `port`, when `[mesh] enabled`.
/// `api_auth` is the ledger API's own validator and its configuration: a JWT rule with the
/// same issuer and audiences reuses it (one key cache), others get their own.
pub fn sidecar(
    config: &Config,
    mesh: &Mesh,
    roles: Roles,
    port: u16,
    api_auth: Option<(&OidcConfig, &Arc<TokenValidator>)>,
) -> Result<Sidecar, String> {
    let made: Mutex<HashMap<ValidatorKey, Arc<TokenValidator>>> = Mutex::default();
    let validator = |rule: &JwtRule| {
        if let Some((oidc, validator)) = api_auth
            && oidc.issuer == rule.issuer
            && oidc.audiences == rule.audiences
        {
            return Ok(validator.clone());
        }
        let mut made = made.lock().unwrap_or_else(|e| e.into_inner());
        let key = (rule.issuer.clone(), rule.audiences.clone());
        if let Some(validator) = made.get(&key) {
            return Ok(validator.clone());
        }
        let oidc = OidcConfig {
            algorithms: config.auth.algorithms.clone(),
            leeway_s: config.auth.leeway_s,
            ca_file: config.auth.ca_file.clone(),
            ..OidcConfig::new(rule.issuer.clone(), rule.audiences.clone())
        };
        let validator = Arc::new(
            TokenValidator::new(&oidc)
                .map_err(|e| format!("[mesh] issuer {}: {e}", rule.issuer))?,
        );
        made.insert(key, validator.clone());
        Ok(validator)
    };
    Sidecar::new(mesh, workloads(roles), port, &validator)
}

/// `app` behind `sidecar`: the sidecar sees every request first and its normalized path is
/// what `app` routes.
pub fn in_front(app: Router, sidecar: Sidecar) -> Router {
    Router::new().fallback_service(app).layer(axum::middleware::from_fn_with_state(
        Arc::new(sidecar),
        ferrobank_interfaces::sidecar::enforce,
    ))
}
