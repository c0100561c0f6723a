//! The audit trail's wiring: where it is kept (`[audit]`: the SQL database, or MongoDB with
//! `mongo_url`), the consumer that records every platform event, the sink that records
//! denied requests, and `ferrobank audit verify`, which finds the trail exactly the way
//! `up` and `serve` do (`--data-dir`, `--database-url`, `[audit] mongo_url` from the config
//! file or `FERROBANK_AUDIT__MONGO_URL`; `--mongo-url` overrides) and checks the hash
//! chain, naming the first altered, removed or reordered record.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use ferrobank_adapters::SqlStore;
use ferrobank_adapters::audit::{
    MongoActivityLog, MongoActivityOptions, MongoAuditLog, MongoAuditOptions,
};
use ferrobank_application::{
    AUDIT_CONSUMER, AUDITED_EVENT_TYPES, ActivityLog, AuditConsumer, AuditLog, AuditSink, Clock,
    EventBus, verify_log,
};
use tokio::task::JoinHandle;

use crate::config::{AuditSettings, Config, redact_url};

/// Where the audit stream is when it is not where the configuration says.
#[derive(Debug, Clone, Args)]
pub struct MongoLocation {
    /// MongoDB URL (`mongodb://...`) of the audit trail; overrides `[audit] mongo_url` and
    /// the SQL database.
    #[arg(long)]
    mongo_url: Option<String>,
    /// MongoDB database of the audit trail; default `[audit] mongo_database`.
    #[arg(long)]
    mongo_database: Option<String>,
}

/// The audit trail and the activity log, in the same store.
#[derive(Debug, Clone)]
pub struct AuditStores {
    /// The hash-chained audit trail.
    pub log: Arc<dyn AuditLog>,
    /// The enriched activity log.
    pub activity: Arc<dyn ActivityLog>,
}

/// Opens the stores `[audit]` names: MongoDB when `mongo_url` is set, else the tables of
/// `store` (the SQL database every command uses).
pub async fn open(config: &Config, store: &SqlStore) -> Result<AuditStores, String> {
    open_with(&config.audit, Some(store)).await
}

async fn open_with(
    settings: &AuditSettings,
    store: Option<&SqlStore>,
) -> Result<AuditStores, String> {
    match (&settings.mongo_url, store) {
        (Some(url), _) => {
            let connecting = |e: ferrobank_application::StoreError| {
                format!("audit trail: connecting to MongoDB at {}: {e}", redact_url(url))
            };
            let log = MongoAuditLog::connect(
                url,
                MongoAuditOptions {
                    database: settings.mongo_database.clone(),
                    ..MongoAuditOptions::default()
                },
            )
            .await
            .map_err(connecting)?;
            let activity = MongoActivityLog::connect(
                url,
                MongoActivityOptions {
                    database: settings.mongo_database.clone(),
                    ..MongoActivityOptions::default()
                },
            )
            .await
            .map_err(connecting)?;
            Ok(AuditStores { log: Arc::new(log), activity: Arc::new(activity) })
        }
        (None, Some(store)) => {
            Ok(AuditStores { log: Arc::new(store.clone()), activity: Arc::new(store.clone()) })
        }
        (None, None) => Err("audit trail: no [audit] mongo_url and no SQL database".into()),
    }
}

/// Starts the audit consumer on `bus`: subscribes the consumer `audit` to every event type
/// first (so nothing published from now on is missed), then records each delivery, acknowledging after the append, retrying on store errors,
/// rejecting events it cannot read. Abort the handle to stop it.
pub async fn start_consumer(
    log: Arc<dyn AuditLog>,
    activity: Arc<dyn ActivityLog>,
    bus: Arc<dyn EventBus>,
) -> Result<JoinHandle<()>, String> {
    // Subscribed before returning, so that no event published from now on is missed; the
    // consumer goes on with this subscription (a second one would be a second
    // consumer-group join on Kafka, seconds at some brokers).
    let subscription = bus
        .subscribe(AUDIT_CONSUMER, &AUDITED_EVENT_TYPES)
        .await
        .map_err(|e| format!("audit consumer: {e}"))?;
    Ok(tokio::spawn(AuditConsumer::new(log, Some(activity)).run_from(bus, Some(subscription))))
}

/// The sink of denied requests (`AppState::audit_sink`, `Gateway::record_denials_to`) and
/// the task appending them; `[audit] denied_queue` bounds it.
pub fn start_denied_sink(
    config: &Config,
    log: Arc<dyn AuditLog>,
    clock: Arc<dyn Clock>,
) -> (AuditSink, JoinHandle<()>) {
    AuditSink::start(log, clock, config.audit.denied_queue)
}

/// Verifies the chain: prints `OK` with the record count (exit 0) or the break (exit 1).
pub async fn verify(config: &Config, mongo: &MongoLocation) -> Result<ExitCode, String> {
    let mut settings = config.audit.clone();
    if let Some(url) = &mongo.mongo_url {
        settings.mongo_url = Some(url.clone());
    }
    if let Some(database) = &mongo.mongo_database {
        settings.mongo_database = database.clone();
    }
    let stores = match settings.mongo_url {
        Some(_) => open_with(&settings, None).await?,
        None => {
            let store = crate::cli::open_store(config, false).await?;
            open_with(&settings, Some(&store)).await?
        }
    };
    match verify_log(&*stores.log).await.map_err(|e| format!("reading the audit trail: {e}"))? {
        Ok(count) => {
            println!("audit trail OK: {count} records, every link verified");
            Ok(ExitCode::SUCCESS)
        }
        Err(chain_break) => {
            println!("audit trail BROKEN: {chain_break}");
            Ok(ExitCode::FAILURE)
        }
    }
}
