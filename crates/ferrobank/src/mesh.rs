//! Split mode's mesh wiring: which workload of `deploy/istio` each service role is, the
//! Istio YAML it obeys (`[mesh]`), the token validators of its RequestAuthentication, and
//! mutual TLS between roles as its PeerAuthentication asks (`ferrobank certs` files).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use ferrobank_adapters::istio::Mesh;
use ferrobank_adapters::istio::resources::{JwtRule, MtlsMode};
use ferrobank_adapters::mtls;
use ferrobank_adapters::oidc::{OidcConfig, TokenValidator};
use ferrobank_domain::policy::Workload;
use ferrobank_interfaces::gateway::Source;
use ferrobank_interfaces::sidecar::listener::Mode;
use ferrobank_interfaces::sidecar::{Sidecar, WorkloadSpec};
use rustls::{ClientConfig, ServerConfig};

use crate::config::Config;
use crate::server::Roles;

/// A JWT rule's issuer and audiences: rules with the same share a validator.
type ValidatorKey = (String, Vec<String>);

/// The namespace of the bank's services in `deploy/istio`.
pub const SERVICES_NAMESPACE: &str = "banking-system";

/// The workloads `roles` serve, labelled as in `deploy/istio`. The accounts role serves the
/// whole API: the ledger (`app: accounts-service`, every path no other workload claims) and,
/// by the prefixes the VirtualService routes to them, `payment-service` (payments, risk
/// reviews), `notification-service` (notifications, webhooks) and `audit-service`; the
/// identity provider is `app: keycloak` (its routed paths when it shares the process, else
/// every path). A path is judged as the first workload whose prefix it starts with, so
/// prefixes must not overlap.
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
        workloads.push(spec("payment-service", &["/api/payments", "/api/risk"]));
        workloads.push(spec("notification-service", &["/api/notifications", "/api/webhooks"]));
        workloads.push(spec("audit-service", &["/api/audit"]));
    }
    if roles.identity {
        let prefixes: &[&str] =
            if roles.accounts { &["/realms/", "/admin/", "/resources/"] } else { &[] };
        workloads.push(spec("keycloak", prefixes));
    }
    workloads
}

/// The Istio YAML of `[mesh] dir`, else `[gateway] dir`, else the built-in copy.
pub fn load(config: &Config) -> Result<Mesh, String> {
    let source = match config.mesh.dir.as_ref().or(config.gateway.dir.as_ref()) {
        Some(dir) => Source::Dir(dir.clone()),
        None => Source::Embedded(crate::edge::EMBEDDED.to_vec()),
    };
    source.load().map_err(|e| format!("[mesh]: {e}"))
}

/// The sidecar of a split-mode process serving `roles` on `port`, when `[mesh] enabled`,
/// with every JWT rule's issuer replaced by `issuer` (the laptop's overlay) when given.
/// `api_auth` is the ledger API's own validator and its configuration: a JWT rule with the
/// same issuer and audiences reuses it (one key cache), others get their own.
pub fn sidecar(
    config: &Config,
    mesh: &Mesh,
    issuer: Option<&str>,
    roles: Roles,
    port: u16,
    api_auth: Option<(&OidcConfig, &Arc<TokenValidator>)>,
) -> Result<Sidecar, String> {
    let mut mesh = mesh.clone();
    if let Some(issuer) = issuer {
        mesh.set_issuer(issuer);
    }
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
    Sidecar::new(&mesh, workloads(roles), port, &validator)
}

/// How a split-mode role's listener speaks.
#[derive(Debug)]
pub enum Transport {
    /// Plaintext only.
    Plain,
    /// Mutual TLS with the mesh's certificates: only, or beside plaintext.
    MutualTls(Arc<ServerConfig>, Mode),
}

/// The transport the PeerAuthentication of `roles`' workloads asks for on `port` (none,
/// or `[mesh] enabled = false`: PERMISSIVE): STRICT is mutual TLS only and refuses to
/// start without `[mesh] certs_dir`; PERMISSIVE serves both when certificates are there;
/// DISABLE is plaintext.
pub fn transport(
    config: &Config,
    mesh: Option<&Mesh>,
    roles: Roles,
    port: u16,
) -> Result<Transport, String> {
    let mut strict = None;
    let mut disabled = true;
    for spec in workloads(roles) {
        match mesh.and_then(|mesh| mesh.peer_authentication_for(&spec.workload, port)) {
            Some((pa, MtlsMode::Strict)) => {
                disabled = false;
                strict.get_or_insert_with(|| {
                    format!(
                        "the PeerAuthentication {}/{} ({}) requires mutual TLS (STRICT) for \
                         {} in {} on port {port}",
                        pa.namespace,
                        pa.name,
                        pa.file.display(),
                        spec.name,
                        spec.workload.namespace
                    )
                });
            }
            Some((_, MtlsMode::Disable)) => {}
            _ => disabled = false,
        }
    }
    let Some(dir) = &config.mesh.certs_dir else {
        return match strict {
            Some(why) => Err(format!(
                "{why}, and no certificates are configured: issue them with `ferrobank certs \
                 --dir DIR` and set [mesh] certs_dir = DIR (FERROBANK_MESH__CERTS_DIR); or \
                 point [mesh] dir at Istio YAML without STRICT, or turn the mesh off with \
                 [mesh] enabled = false"
            )),
            None => Ok(Transport::Plain),
        };
    };
    if disabled {
        tracing::warn!("PeerAuthentication DISABLE: [mesh] certs_dir is not used, plaintext only");
        return Ok(Transport::Plain);
    }
    let name = config.mesh.service_account.as_deref().unwrap_or(if roles.accounts {
        "accounts"
    } else {
        "identity"
    });
    let tls = mtls::server_config(dir, name).map_err(|e| format!("[mesh] certs_dir: {e}"))?;
    let mode = if strict.is_some() { Mode::Strict } else { Mode::Permissive };
    Ok(Transport::MutualTls(Arc::new(tls), mode))
}

/// The gateway's mutual TLS toward `https://` upstreams: the certificate of `[mesh]
/// service_account` (default `gateway`: Istio's ingress identity) from `[mesh] certs_dir`.
/// An `https://` upstream without certificates is an error.
pub fn upstream_tls(config: &Config) -> Result<Option<Arc<ClientConfig>>, String> {
    let gateway = &config.gateway;
    let https = gateway
        .upstream
        .iter()
        .chain(gateway.upstreams.values())
        .find(|url| url.get(..8).is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://")));
    match (&config.mesh.certs_dir, https) {
        (None, None) => Ok(None),
        (None, Some(url)) => Err(format!(
            "upstream {url}: https:// upstreams are called with the mesh's mutual TLS; set \
             [mesh] certs_dir (FERROBANK_MESH__CERTS_DIR) to the directory `ferrobank certs` \
             wrote"
        )),
        (Some(dir), _) => {
            let name = config.mesh.service_account.as_deref().unwrap_or("gateway");
            let tls =
                mtls::client_config(dir, name).map_err(|e| format!("[mesh] certs_dir: {e}"))?;
            Ok(Some(Arc::new(tls)))
        }
    }
}

/// `app` behind `sidecar`: the sidecar sees every request first and its normalized path is
/// what `app` routes.
pub fn in_front(app: Router, sidecar: Sidecar) -> Router {
    Router::new().fallback_service(app).layer(axum::middleware::from_fn_with_state(
        Arc::new(sidecar),
        ferrobank_interfaces::sidecar::enforce,
    ))
}

#[cfg(test)]
mod tests {
    use ferrobank_adapters::istio::resources::StringMatch;

    use super::*;

    /// In split mode a process's sidecar must judge a path as the workload the
    /// VirtualService routes it to: each workload's prefixes are its routes' prefixes, and
    /// no prefix claims another workload's path (the first claiming workload wins).
    #[test]
    fn split_mode_prefixes_are_the_virtual_services_routes() {
        let mesh = match Source::Embedded(crate::edge::EMBEDDED.to_vec()).load() {
            Ok(mesh) => mesh,
            Err(e) => panic!("deploy/istio: {e}"),
        };
        let ingress = Workload {
            namespace: "istio-system".to_owned(),
            labels: [("istio".to_owned(), "ingressgateway".to_owned())].into_iter().collect(),
        };
        let routes = mesh.gateway_routes(&ingress);
        let routed_prefixes = |host: &str| {
            let mut prefixes: Vec<String> = routes
                .iter()
                .filter(|r| r.route.route.iter().any(|d| d.destination.host == host))
                .flat_map(|r| &r.route.matches)
                .filter_map(|m| match &m.uri {
                    Some(StringMatch::Prefix(prefix)) => Some(prefix.clone()),
                    _ => None,
                })
                .collect();
            prefixes.sort();
            prefixes
        };
        let specs = workloads(Roles::ALL);
        for spec in specs.iter().filter(|spec| !spec.prefixes.is_empty()) {
            let mut prefixes = spec.prefixes.clone();
            prefixes.sort();
            assert_eq!(prefixes, routed_prefixes(&spec.name), "{}", spec.name);
        }
        let claimed: Vec<(&str, &str)> = specs
            .iter()
            .flat_map(|s| s.prefixes.iter().map(move |p| (s.name.as_str(), p.as_str())))
            .collect();
        for (owner, prefix) in &claimed {
            for (other, theirs) in &claimed {
                assert!(
                    owner == other || !theirs.starts_with(prefix),
                    "{owner}'s {prefix} claims {other}'s {theirs}"
                );
            }
        }
        // The ledger keeps what no prefix claims.
        for path in routed_prefixes("accounts-service") {
            assert!(
                claimed.iter().all(|(_, prefix)| !path.starts_with(prefix)),
                "{path} is accounts-service's"
            );
        }
    }
}
