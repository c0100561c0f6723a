//! Wiring of the money path: the event bus, the payments service, the outbox relay, the
//! payment worker (with its payment gateway) and the sweep.

use std::sync::Arc;

use ferrobank_adapters::SqlStore;
use ferrobank_adapters::bus::{KafkaBus, KafkaBusOptions, MemoryBus, MemoryBusOptions};
use ferrobank_adapters::bus::{RabbitBus, RabbitBusOptions};
use ferrobank_adapters::psp::{HttpPaymentGateway, PspClientOptions};
use ferrobank_adapters::velocity::{MemoryVelocity, RedisVelocity};
use ferrobank_application::payments::{OutboxStore, PaymentLimits, PaymentService, PaymentStore};
use ferrobank_application::relay::{OutboxRelay, RelayOptions};
use ferrobank_application::worker::{PaymentWorker, WorkerOptions};
use ferrobank_application::{
    Clock, EventBus, LedgerService, OpenOutcome, PaymentGateway, RetryPolicy, VelocityStore,
};
use ferrobank_domain::{AccountFlags, NewAccount, RiskRules};
use tokio::task::JoinHandle;

use crate::config::{BusKind, Config};

/// Chart-of-accounts code of the bank's clearing accounts.
pub const CLEARING_ACCOUNT_CODE: u16 = 9000;
/// Owner of the bank's own accounts.
pub const BANK_OWNER: &str = "ferrobank";

/// The money path of one process.
#[derive(Debug)]
pub struct Payments {
    /// The use cases (for the HTTP API).
    pub service: PaymentService,
    /// The bus the relay publishes to and consumers read from.
    pub bus: Arc<dyn EventBus>,
    /// The writer task; ends once every clone of `service` is dropped.
    pub writer: JoinHandle<()>,
    /// Relay, listener, worker, sweep, built-in simulator: aborted on stop.
    pub tasks: Vec<JoinHandle<()>>,
    /// The built-in payment gateway simulator, when no `psp_url` is configured.
    pub simulator: Option<crate::psp_sim::RunningPspSim>,
}

/// Connects the configured bus.
pub async fn connect_bus(config: &Config) -> Result<Arc<dyn EventBus>, String> {
    let settings = &config.bus;
    let retry = RetryPolicy {
        max_attempts: settings.max_attempts,
        initial_backoff_ms: settings.initial_backoff_ms,
        max_backoff_ms: settings.max_backoff_ms,
    };
    let url = settings.effective_url();
    let redacted = url.as_deref().map(crate::config::redact_url).unwrap_or_default();
    Ok(match (settings.kind, url) {
        (BusKind::Memory, _) | (_, None) => Arc::new(
            MemoryBus::new(MemoryBusOptions {
                retry,
                prefetch: settings.prefetch,
                max_queue_len: 1_000_000,
                ..MemoryBusOptions::default()
            })
            .map_err(|e| format!("[bus]: {e}"))?,
        ),
        (BusKind::Rabbitmq, Some(url)) => Arc::new(
            RabbitBus::connect(
                &url,
                RabbitBusOptions {
                    prefix: settings.prefix.clone(),
                    retry,
                    prefetch: settings.prefetch,
                    ..RabbitBusOptions::default()
                },
            )
            .await
            .map_err(|e| format!("[bus] RabbitMQ at {redacted}: {e}"))?,
        ),
        (BusKind::Kafka, Some(url)) => Arc::new(
            KafkaBus::connect(
                &url,
                KafkaBusOptions {
                    topic_prefix: settings.prefix.clone(),
                    retry,
                    prefetch: settings.prefetch,
                    ..KafkaBusOptions::default()
                },
            )
            .await
            .map_err(|e| format!("[bus] Kafka at {redacted}: {e}"))?,
        ),
    })
}

/// Starts the payments service and, when `worker`, the relay, worker and sweep.
pub async fn start(
    config: &Config,
    store: &Arc<SqlStore>,
    ledger: &LedgerService,
    clock: Arc<dyn Clock>,
    worker: bool,
) -> Result<Payments, String> {
    let settings = &config.payments;
    let rules = Arc::new(RiskRules::new(config.risk.clone()).map_err(|e| format!("[risk]: {e}"))?);
    open_clearing_accounts(ledger, &rules).await?;
    let velocity: Arc<dyn VelocityStore> = match &settings.redis_url {
        Some(url) => Arc::new(
            RedisVelocity::connect(url, &settings.redis_key_prefix)
                .await
                .map_err(|e| format!("[payments] redis_url: {e}"))?,
        ),
        None => Arc::new(MemoryVelocity::default()),
    };
    let limits = PaymentLimits {
        queue_capacity: settings.queue_capacity,
        max_batch: settings.max_batch,
        ..PaymentLimits::default()
    };
    let payments: Arc<dyn PaymentStore> = store.clone();
    let (service, writer) =
        PaymentService::start(store.clone(), payments, velocity, rules, clock.clone(), limits);
    let bus = connect_bus(config).await?;
    let mut tasks = Vec::new();
    let relay = OutboxRelay::new(
        store.clone(),
        bus.clone(),
        clock.clone(),
        RelayOptions { batch: settings.relay_batch, ..RelayOptions::default() },
    );
    tasks.push(tokio::spawn(relay.run()));
    let database = config.effective_database_url();
    tasks.push(tokio::spawn(store.as_ref().clone().listen_for_outbox(database)));
    let mut simulator = None;
    if worker {
        let url = match &settings.psp_url {
            Some(url) => url.clone(),
            None => {
                let mut local = config.clone();
                local.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
                let sim = crate::psp_sim::start(&local).await?;
                let url = format!("http://{}", sim.addr);
                tracing::info!(%url, "payment gateway: the built-in simulator");
                simulator = Some(sim);
                url
            }
        };
        let gateway: Arc<dyn PaymentGateway> = Arc::new(
            HttpPaymentGateway::new(
                &url,
                PspClientOptions {
                    timeout_ms: settings.psp_timeout_ms,
                    max_attempts: settings.psp_max_attempts,
                    breaker_failure_threshold: settings.breaker_failure_threshold,
                    breaker_open_ms: settings.breaker_open_ms,
                    ..PspClientOptions::default()
                },
            )
            .map_err(|e| format!("[payments] psp_url: {e}"))?,
        );
        let worker = PaymentWorker::new(
            service.clone(),
            gateway,
            clock.clone(),
            WorkerOptions {
                concurrency: settings.worker_concurrency,
                stale_after_ms: settings.stale_after_ms,
                sweep_interval_ms: settings.sweep_interval_ms,
            },
        );
        tasks.push(tokio::spawn(worker.clone().consume(bus.clone())));
        tasks.push(tokio::spawn(worker.sweep()));
    }
    tasks.push(tokio::spawn(report_statuses(service.clone(), store.clone())));
    Ok(Payments { service, bus, writer, tasks, simulator })
}

/// Opens the clearing account of every currency the risk rules allow (idempotent).
async fn open_clearing_accounts(ledger: &LedgerService, rules: &RiskRules) -> Result<(), String> {
    for currency in rules.config().currencies.keys() {
        let new = NewAccount {
            id: PaymentService::clearing_account(*currency),
            currency: *currency,
            code: CLEARING_ACCOUNT_CODE,
            owner: BANK_OWNER.to_owned(),
            flags: AccountFlags::default(),
        };
        match ledger.open_account(new).await {
            Ok(OpenOutcome::Created(_) | OpenOutcome::Exists(_)) => {}
            Err(error) => {
                return Err(format!("opening the {} clearing account: {error}", currency.code()));
            }
        }
    }
    Ok(())
}

/// `ferrobank_payments{status}` and `ferrobank_outbox_backlog`, every few seconds (not on
/// the relay's path: a count per round would cost a query per published batch).
async fn report_statuses(service: PaymentService, outbox: Arc<SqlStore>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        tick.tick().await;
        if let Ok(backlog) = OutboxStore::outbox_backlog(outbox.as_ref()).await {
            metrics::gauge!("ferrobank_outbox_backlog").set(backlog as f64);
        }
        if let Ok(counts) = service.store().count_by_status().await {
            for (status, n) in counts {
                metrics::gauge!("ferrobank_payments", "status" => status.as_str()).set(n as f64);
            }
        }
    }
}

impl Payments {
    /// Stops the background tasks; the writer ends when the service's clones are gone.
    pub async fn stop(self) {
        for task in &self.tasks {
            task.abort();
        }
        if let Some(sim) = self.simulator {
            let _ = sim.stop().await;
        }
        drop(self.service);
        let _ = self.writer.await;
    }
}
