//! Wiring of the zero-trust edge: the Istio YAML (built in, or a watched directory), the
//! rate limiter (memory or Redis), and the listener of `ferrobank serve gateway`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use ferrobank_adapters::idp::IdentityProvider;
use ferrobank_adapters::oidc::OidcConfig;
use ferrobank_adapters::rate_limit::{MemoryRateLimiter, RedisLimiterOptions, RedisRateLimiter};
use ferrobank_application::RateLimiter;
use ferrobank_interfaces::gateway::{Gateway, GatewayConfig, Source, Target, serve_request};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::Config;

/// `deploy/istio` as built into the binary (what `ferrobank up` enforces by default).
pub const EMBEDDED: [(&str, &str); 6] = [
    (
        "deploy/istio/authorization-policies.yaml",
        include_str!("../../../deploy/istio/authorization-policies.yaml"),
    ),
    (
        "deploy/istio/destination-rules.yaml",
        include_str!("../../../deploy/istio/destination-rules.yaml"),
    ),
    ("deploy/istio/gateway.yaml", include_str!("../../../deploy/istio/gateway.yaml")),
    (
        "deploy/istio/peer-authentication.yaml",
        include_str!("../../../deploy/istio/peer-authentication.yaml"),
    ),
    ("deploy/istio/rate-limit.yaml", include_str!("../../../deploy/istio/rate-limit.yaml")),
    (
        "deploy/istio/request-authentication.yaml",
        include_str!("../../../deploy/istio/request-authentication.yaml"),
    ),
];

/// Most keys the in-memory rate limiter tracks.
const MEMORY_LIMITER_KEYS: usize = 100_000;

/// The edge for `config`, sending destinations to `default_upstream` unless
/// `[gateway] upstreams` names them; `issuer` replaces the YAML's when given;
/// `web_origins` are allowed by CORS unless `[gateway] cors_origins` says otherwise.
pub async fn build(
    config: &Config,
    default_upstream: Target,
    issuer: Option<String>,
    web_origins: Vec<String>,
) -> Result<Arc<Gateway>, String> {
    let settings = &config.gateway;
    let limiter: Arc<dyn RateLimiter> = match &settings.redis_url {
        Some(url) => Arc::new(
            RedisRateLimiter::connect(
                url,
                RedisLimiterOptions {
                    key_prefix: settings.redis_key_prefix.clone(),
                    ..RedisLimiterOptions::default()
                },
            )
            .await
            .map_err(|e| format!("gateway rate limiter (Redis): {e}"))?,
        ),
        None => Arc::new(MemoryRateLimiter::new(MEMORY_LIMITER_KEYS)),
    };
    let mut upstreams = HashMap::new();
    for (name, url) in &settings.upstreams {
        let uri = url.parse().map_err(|e| format!("[gateway.upstreams] {name} = {url}: {e}"))?;
        upstreams.insert(name.clone(), Target::Remote(uri));
    }
    let source = match &settings.dir {
        Some(dir) => Source::Dir(dir.clone()),
        None => Source::Embedded(EMBEDDED.to_vec()),
    };
    let gateway = Gateway::new(
        GatewayConfig {
            source,
            // The gateway trusts what the API trusts unless told otherwise.
            issuer: settings.issuer.clone().or(issuer).or_else(|| config.auth.issuer.clone()),
            default_upstream,
            upstreams,
            max_body_bytes: config.http.max_body_bytes,
            default_timeout_ms: settings.default_timeout_ms,
            cors_origins: settings.cors_origins.clone().unwrap_or(web_origins),
            rate_limit_fail_open: settings.rate_limit_fail_open,
            reload_interval_ms: settings.reload_interval_ms,
            https: settings.https,
            // `[auth]`'s algorithms, leeway and CA file apply to the edge's issuers too.
            oidc: OidcConfig {
                algorithms: config.auth.algorithms.clone(),
                leeway_s: config.auth.leeway_s,
                ca_file: config.auth.ca_file.clone(),
                ..OidcConfig::new("", Vec::new())
            },
            upstream_tls: crate::mesh::upstream_tls(config)?,
        },
        limiter,
    )
    .map_err(|e| format!("gateway: {e}"))?;
    // The reloader ends by itself when the gateway is dropped.
    let _detached = gateway.spawn_reloader();
    Ok(gateway)
}

/// The router that puts `gateway` in front of everything.
pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new().fallback(serve_request).with_state(gateway)
}

/// The browser origins a realm's clients register (`webOrigins`; Keycloak's `+` stands
/// for the origins of the client's redirect URIs).
pub fn realm_web_origins(idp: &IdentityProvider, realm: &str) -> Vec<String> {
    let Ok(state) = idp.realm(realm) else {
        return Vec::new();
    };
    let mut origins = std::collections::BTreeSet::new();
    for client in state.clients.values() {
        for origin in &client.web_origins {
            if origin == "+" {
                origins.extend(client.redirect_uris.iter().filter_map(|uri| {
                    let url = url::Url::parse(uri.trim_end_matches('*')).ok()?;
                    Some(url.origin().ascii_serialization()).filter(|o| o != "null")
                }));
            } else {
                origins.insert(origin.clone());
            }
        }
    }
    origins.into_iter().collect()
}

/// Serves `/stats/prometheus` on `[gateway] admin_listen` when set, until the process ends.
pub async fn spawn_admin(config: &Config) -> Result<Option<SocketAddr>, String> {
    let Some(addr) = config.gateway.admin_listen else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("binding [gateway] admin_listen {addr}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    let handle = ferrobank_interfaces::metrics_handle();
    let app = Router::new().route(
        "/stats/prometheus",
        axum::routing::get(move || {
            let handle = handle.clone();
            async move { handle.render() }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(Some(bound))
}

/// `ferrobank serve gateway` on its own: no database, only the edge.
#[derive(Debug)]
pub struct RunningGateway {
    /// The bound address.
    pub addr: SocketAddr,
    /// The edge.
    pub gateway: Arc<Gateway>,
    shutdown: oneshot::Sender<()>,
    server: JoinHandle<std::io::Result<()>>,
}

/// Binds `config.listen` and serves the edge; returns at once.
pub async fn start_standalone(config: &Config) -> Result<RunningGateway, String> {
    let upstream = config.gateway.upstream.as_deref().ok_or(
        "the gateway role needs [gateway] upstream (FERROBANK_GATEWAY__UPSTREAM), e.g. the \
         accounts role's http://127.0.0.1:8081, or per destination [gateway.upstreams]",
    )?;
    let upstream = upstream.parse().map_err(|e| format!("[gateway] upstream = {upstream}: {e}"))?;
    let issuer = config.auth.issuer.clone();
    let gateway = build(config, Target::Remote(upstream), issuer, Vec::new()).await?;
    spawn_admin(config).await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("binding {}: {e}", config.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let (shutdown, stopped) = oneshot::channel::<()>();
    let app = router(gateway.clone());
    let server = tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
    });
    Ok(RunningGateway { addr, gateway, shutdown, server })
}

impl RunningGateway {
    /// Stops accepting and finishes in-flight requests.
    pub async fn stop(self) -> Result<(), String> {
        let _ = self.shutdown.send(());
        self.server.await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())
    }
}
