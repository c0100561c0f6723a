//! Wiring: store + ledger service + router, served until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferrobank_adapters::SqlStore;
use ferrobank_adapters::idp::{Generated, IdentityProvider};
use ferrobank_adapters::oidc::{OidcConfig, TokenValidator};
use ferrobank_application::payments::OutboxStore;
use ferrobank_application::{Clock, IdempotencyStore, LedgerLimits, LedgerService, SystemClock};
use ferrobank_interfaces::gateway::Target;
use ferrobank_interfaces::sidecar::listener::{self, MeshListener, MeshPeer};
use ferrobank_interfaces::{AppState, HttpLimits, metrics_handle, router};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::mesh::Transport;

/// Idempotency keys are kept this long, then purged.
const IDEMPOTENCY_RETENTION_MS: i64 = 24 * 60 * 60 * 1000;
/// Published outbox rows are kept this long (for replays and investigations), then purged.
const OUTBOX_RETENTION_MS: i64 = 7 * 24 * 60 * 60 * 1000;
/// How often old idempotency keys and expired identity sessions are purged.
const PURGE_INTERVAL: Duration = Duration::from_secs(60);

/// A server running in the background.
#[derive(Debug)]
pub struct Running {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    /// Whether it serves the mesh's mutual TLS (`https://`).
    pub mutual_tls: bool,
    /// The ledger service the server uses (for seeding and tests).
    pub ledger: LedgerService,
    /// The built-in identity provider, when it runs.
    pub idp: Option<Arc<IdentityProvider>>,
    /// Secrets the realm import generated (print them once).
    pub generated: Vec<Generated>,
    /// The money path, when this process runs it.
    pub payments: Option<crate::payments::Payments>,
    /// Notification and audit consumers, the webhook deliverer, the denied-access drain.
    consumers: Vec<JoinHandle<()>>,
    shutdown: oneshot::Sender<()>,
    server: JoinHandle<std::io::Result<()>>,
    writer: JoinHandle<()>,
    purge: JoinHandle<()>,
    shutdown_timeout: Duration,
}

/// What one process serves: `ferrobank up` everything, `ferrobank serve <role>...` a part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    /// The ledger API under `/api`.
    pub accounts: bool,
    /// The built-in identity provider under `/realms` and `/admin`.
    pub identity: bool,
    /// The edge (Istio YAML) in front of the other roles, or alone in front of upstreams.
    pub gateway: bool,
    /// The payment worker (and outbox relay) without an API: `serve payment-worker`.
    pub payment_worker: bool,
}

impl Roles {
    /// Every role.
    pub const ALL: Roles =
        Roles { accounts: true, identity: true, gateway: true, payment_worker: true };

    /// From role names; none means every role.
    pub fn parse(names: &[String]) -> Result<Self, String> {
        if names.is_empty() {
            return Ok(Self::ALL);
        }
        let mut roles =
            Roles { accounts: false, identity: false, gateway: false, payment_worker: false };
        for name in names {
            match name.as_str() {
                "accounts" => roles.accounts = true,
                "identity" => roles.identity = true,
                "gateway" => roles.gateway = true,
                "payment-worker" => roles.payment_worker = true,
                other => {
                    return Err(format!(
                        "unknown or not yet implemented role `{other}`; available: accounts, \
                         identity, gateway, payment-worker, and psp-sim (alone)"
                    ));
                }
            }
        }
        Ok(roles)
    }
}

/// Binds and starts serving every role; returns at once.
pub async fn start(config: &Config, store: SqlStore) -> Result<Running, String> {
    start_roles(config, store, Roles::ALL).await
}

/// Binds and starts serving `roles`; returns at once.
pub async fn start_roles(
    config: &Config,
    store: SqlStore,
    roles: Roles,
) -> Result<Running, String> {
    if roles.identity && !roles.accounts && !config.identity.enabled {
        return Err("the identity role needs [identity] enabled = true".into());
    }
    if roles.accounts && !roles.identity && config.auth.issuer.is_none() {
        return Err("the accounts role without the identity role needs [auth] issuer: the \
                    identity role's URL + /realms/<realm>, or Keycloak's (FERROBANK_AUTH__ISSUER)"
            .into());
    }
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let limits = LedgerLimits {
        queue_capacity: config.ledger.queue_capacity,
        max_batch_transfers: config.ledger.max_batch_transfers,
        max_request_transfers: config.ledger.max_request_transfers,
        expiry_interval_ms: config.ledger.expiry_interval_ms,
    };
    let store = Arc::new(store);
    let (ledger, writer) = LedgerService::start(store.clone(), clock.clone(), limits);
    let idempotency: Arc<dyn IdempotencyStore> = store.clone();
    let payments = match config.payments.enabled && (roles.accounts || roles.payment_worker) {
        true => Some(
            crate::payments::start(
                config,
                &store,
                &ledger,
                clock.clone(),
                roles.payment_worker && config.payments.worker,
            )
            .await?,
        ),
        false => None,
    };
    // The consumers of the money path's events, and the audit trail, where the API runs.
    let mut consumers = Vec::new();
    let mut notifications = None;
    let mut audit = None;
    if let (Some(payments), true) = (&payments, roles.accounts) {
        let stores = crate::audit::open(config, &store).await?;
        // Side by side: each subscription may wait for a consumer-group join (Kafka).
        let notifying = async {
            match config.notifications.enabled {
                true => {
                    crate::notifications::start(config, &store, payments.bus.clone(), clock.clone())
                        .await
                        .map(Some)
                }
                false => Ok(None),
            }
        };
        let auditing = crate::audit::start_consumer(
            stores.log.clone(),
            stores.activity.clone(),
            payments.bus.clone(),
        );
        let (notifying, auditing) = tokio::join!(notifying, auditing);
        if let Some((service, tasks)) = notifying? {
            notifications = Some(service);
            consumers.extend(tasks);
        }
        consumers.push(auditing?);
        let (sink, drain) =
            crate::audit::start_denied_sink(config, stores.log.clone(), clock.clone());
        consumers.push(drain);
        audit = Some((stores, sink));
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("binding {}: {e}", config.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    // Split mode (no edge in this process): the mesh's YAML and its PeerAuthentication,
    // checked before anything starts.
    let split = !roles.gateway;
    let mesh = if split && config.mesh.enabled { Some(crate::mesh::load(config)?) } else { None };
    let transport = match split {
        true => crate::mesh::transport(config, mesh.as_ref(), roles, addr.port())?,
        false => Transport::Plain,
    };
    let (idp, generated) = match config.identity.enabled && roles.identity {
        false => (None, Vec::new()),
        true => {
            let (idp, generated) =
                crate::identity::start(config, &store, clock.clone(), addr).await?;
            (Some(idp), generated)
        }
    };
    let oidc = match (config.auth.oidc(), &idp) {
        // No API in this process: nothing to authenticate.
        _ if !roles.accounts => None,
        (Some(oidc), _) => Some((oidc, true)),
        // The built-in provider's realm, reached over loopback like any issuer: the
        // services trust it through the same discovery and JWKS as they would Keycloak.
        (None, Some(idp)) => Some((
            OidcConfig {
                algorithms: config.auth.algorithms.clone(),
                leeway_s: config.auth.leeway_s,
                ..OidcConfig::new(idp.issuer(&config.identity.realm), config.auth.audiences.clone())
            },
            false,
        )),
        (None, None) => None,
    };
    let auth = match &oidc {
        None => {
            if roles.accounts {
                tracing::warn!("authentication is off: no [auth] issuer and no built-in provider");
            }
            None
        }
        Some((oidc, external)) => {
            let validator = TokenValidator::new(oidc).map_err(|e| format!("auth: {e}"))?;
            // An unreachable IdP must not keep the ledger down: tokens get 503/401 until
            // the keys can be read, and the validator keeps retrying on use. The built-in
            // one is served by this very server, which is not accepting yet.
            if *external {
                match validator.warm_up().await {
                    Ok(()) => {
                        tracing::info!(issuer = %oidc.issuer, "bearer-token authentication on")
                    }
                    Err(error) => tracing::warn!(
                        issuer = %oidc.issuer, %error,
                        "bearer-token authentication on, but the issuer cannot be read yet"
                    ),
                }
            }
            Some(Arc::new(validator))
        }
    };
    let state = AppState {
        auth,
        api: roles.accounts,
        idp: idp.clone(),
        ledger: ledger.clone(),
        payments: payments.as_ref().filter(|_| roles.accounts).map(|p| p.service.clone()),
        notifications: notifications.clone(),
        audit: audit.as_ref().map(|(stores, _)| stores.log.clone()),
        activity: audit.as_ref().map(|(stores, _)| stores.activity.clone()),
        audit_sink: audit.as_ref().map(|(_, sink)| sink.clone()),
        idempotency: idempotency.clone(),
        clock: clock.clone(),
        limits: HttpLimits {
            max_body_bytes: config.http.max_body_bytes,
            request_timeout_ms: config.http.request_timeout_ms,
        },
        metrics: metrics_handle(),
    };
    let (shutdown, stopped) = oneshot::channel::<()>();
    let api_auth = oidc.as_ref().map(|(config, _)| config).zip(state.auth.clone());
    let mut app = router(state);
    // Split mode: no edge in this process, so the service judges requests itself.
    if let Some(mesh) = &mesh {
        let issuer = config
            .gateway
            .issuer
            .clone()
            .or_else(|| config.auth.issuer.clone())
            .or_else(|| idp.as_ref().map(|idp| idp.issuer(&config.identity.realm)));
        let api_auth = api_auth.as_ref().map(|(config, validator)| (*config, validator));
        let sidecar =
            crate::mesh::sidecar(config, mesh, issuer.as_deref(), roles, addr.port(), api_auth)?;
        tracing::info!(
            "sidecar on: requests are judged by the Istio policies of this role's workload"
        );
        if let Some((_, sink)) = &audit {
            sidecar.record_denials_to(sink.clone());
        }
        app = crate::mesh::in_front(app, sidecar);
    }
    if roles.gateway && config.gateway.enabled {
        if idp.is_some() || config.auth.issuer.is_some() {
            let issuer = idp.as_ref().map(|idp| idp.issuer(&config.identity.realm));
            let origins = idp
                .as_ref()
                .map(|idp| crate::edge::realm_web_origins(idp, &config.identity.realm))
                .unwrap_or_default();
            let gateway = crate::edge::build(config, Target::Local(app), issuer, origins).await?;
            if let Some((_, sink)) = &audit {
                gateway.record_denials_to(sink.clone());
            }
            crate::edge::spawn_admin(config).await?;
            app = crate::edge::router(gateway);
        } else {
            tracing::warn!(
                "the edge is off: no tokens to verify (no built-in provider, no [auth] issuer)"
            );
        }
    }
    let mutual_tls = matches!(transport, Transport::MutualTls(..));
    let stopped = async move {
        let _ = stopped.await;
    };
    let server = match transport {
        Transport::Plain => tokio::spawn(async move {
            axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
                .with_graceful_shutdown(stopped)
                .await
        }),
        Transport::MutualTls(tls, mode) => {
            tracing::info!(?mode, "serving mutual TLS with the mesh's certificates");
            let listener = MeshListener::new(listener, tls, mode).map_err(|e| e.to_string())?;
            let app = app.layer(axum::middleware::from_fn(listener::peer_identity));
            tokio::spawn(async move {
                axum::serve(listener, app.into_make_service_with_connect_info::<MeshPeer>())
                    .with_graceful_shutdown(stopped)
                    .await
            })
        }
    };
    let idp_purge = idp.clone();
    let outbox: Arc<dyn OutboxStore> = store.clone();
    let purge = tokio::spawn(async move {
        let mut tick = tokio::time::interval(PURGE_INTERVAL);
        loop {
            tick.tick().await;
            if let Some(idp) = &idp_purge
                && let Err(error) = idp.purge().await
            {
                tracing::warn!(%error, "purging expired identity sessions failed");
            }
            let before_ms = clock.now_ms() - IDEMPOTENCY_RETENTION_MS;
            if let Err(error) = idempotency.purge(before_ms).await {
                tracing::warn!(%error, "purging old idempotency keys failed");
            }
            let published_before_ms = clock.now_ms() - OUTBOX_RETENTION_MS;
            if let Err(error) = outbox.purge_outbox(published_before_ms).await {
                tracing::warn!(%error, "purging published outbox rows failed");
            }
            if let Err(error) = outbox.purge_inbox(published_before_ms).await {
                tracing::warn!(%error, "purging old inbox rows failed");
            }
        }
    });
    Ok(Running {
        addr,
        mutual_tls,
        ledger,
        idp,
        generated,
        payments,
        consumers,
        shutdown,
        server,
        writer,
        purge,
        shutdown_timeout: Duration::from_millis(config.shutdown_timeout_ms),
    })
}

impl Running {
    /// Stops accepting, lets in-flight requests and the batch in hand finish, then returns.
    pub async fn stop(self) -> Result<(), String> {
        let Running {
            ledger,
            payments,
            consumers,
            shutdown,
            server,
            writer,
            purge,
            shutdown_timeout,
            ..
        } = self;
        let _ = shutdown.send(());
        purge.abort();
        let drained = tokio::time::timeout(shutdown_timeout, async move {
            let served = server.await;
            for consumer in &consumers {
                consumer.abort();
            }
            if let Some(payments) = payments {
                payments.stop().await;
            }
            // The router's clones are gone with the server; dropping ours closes the
            // queue, and the writer exits after committing what it holds.
            drop(ledger);
            let _ = writer.await;
            served
        })
        .await;
        match drained {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(format!("server failed: {e}")),
            Ok(Err(e)) => Err(format!("server task failed: {e}")),
            Err(_) => Err(format!("shutdown took longer than {shutdown_timeout:?}")),
        }
    }
}

/// Serves until SIGINT or SIGTERM, then shuts down gracefully.
pub async fn serve(
    config: Config,
    store: SqlStore,
    demo: bool,
    roles: Roles,
) -> Result<(), String> {
    let database = crate::config::redact_url(&config.effective_database_url());
    let running = start_roles(&config, store, roles).await?;
    let scheme = if running.mutual_tls { "https" } else { "http" };
    let base = format!("{scheme}://{}", running.addr);
    println!("ferrobank is up on {base}");
    println!("  API docs   {base}/api/docs");
    println!("  OpenAPI    {base}/api/openapi.json");
    println!("  health     {base}/health   ready {base}/ready");
    match config.gateway.admin_listen {
        Some(admin) if roles.gateway && config.gateway.enabled => {
            println!("  metrics    http://{admin}/stats/prometheus   (the edge refuses /metrics)")
        }
        _ if roles.gateway && config.gateway.enabled => println!(
            "  metrics    refused at the edge (policy); set FERROBANK_GATEWAY__ADMIN_LISTEN=127.0.0.1:15090"
        ),
        _ => println!("  metrics    {base}/metrics"),
    }
    if roles.gateway && config.gateway.enabled {
        println!(
            "  edge       Istio policies of deploy/istio enforced; `ferrobank policy test` prints who may do what"
        );
    }
    println!("  database   {database}");
    if let Some(idp) = &running.idp {
        crate::identity::print_login_help(idp, &config, &running.generated);
    }
    if demo {
        let accounts = crate::demo::seed(&running.ledger, running.idp.as_deref(), &config).await?;
        println!("  demo accounts (EUR, amounts in cents):");
        for (name, id) in accounts {
            println!("    {name:<6} {base}/api/accounts/{id}");
        }
    }
    println!("Press Ctrl-C to stop.");
    tracing::info!(addr = %running.addr, "listening");
    shutdown_signal().await;
    tracing::info!("shutting down: no new connections, finishing in-flight work");
    running.stop().await?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
