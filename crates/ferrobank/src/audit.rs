//! `ferrobank audit verify`: reads the whole audit stream from where the service keeps it
//! (the SQL database found like every command finds it, or MongoDB with `--mongo-url`) and
//! checks the hash chain, naming the first altered, removed or reordered record.

use std::process::ExitCode;

use clap::Args;
use ferrobank_adapters::audit::{MongoAuditLog, MongoAuditOptions};
use ferrobank_application::{AuditLog, verify_log};

use crate::config::{Config, redact_url};

/// Where the audit stream is when it is not in the SQL database.
#[derive(Debug, Clone, Args)]
pub struct MongoLocation {
    /// MongoDB URL (`mongodb://...`) of the audit trail; overrides the SQL database.
    #[arg(long)]
    mongo_url: Option<String>,
    /// MongoDB database of the audit trail.
    #[arg(long, default_value = "ferrobank")]
    mongo_database: String,
}

/// Verifies the chain: prints `OK` with the record count (exit 0) or the break (exit 1).
pub async fn verify(config: &Config, mongo: &MongoLocation) -> Result<ExitCode, String> {
    let log: Box<dyn AuditLog> = match &mongo.mongo_url {
        Some(url) => {
            let options = MongoAuditOptions {
                database: mongo.mongo_database.clone(),
                ..MongoAuditOptions::default()
            };
            let log = MongoAuditLog::connect(url, options)
                .await
                .map_err(|e| format!("connecting to {}: {e}", redact_url(url)))?;
            Box::new(log)
        }
        None => Box::new(crate::cli::open_store(config, false).await?),
    };
    match verify_log(&*log).await.map_err(|e| format!("reading the audit trail: {e}"))? {
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
