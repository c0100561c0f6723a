//! Command-line interface.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use ferrobank_adapters::{SqlStore, StoreOptions};
use ferrobank_application::VerifyMismatch;

use crate::config::{Config, LogFormat, Overrides};

/// ferrobank: a double-entry ledger and payments platform.
#[derive(Debug, Parser)]
#[command(name = "ferrobank", version, about)]
pub struct Cli {
    /// Configuration file (TOML). Default: ./ferrobank.toml when it exists.
    #[arg(long, global = true, env = "FERROBANK_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run everything in one process on embedded defaults: migrate, seed demo accounts, serve.
    Up {
        #[command(flatten)]
        location: Location,
        /// Address to listen on.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Do not create the demo accounts.
        #[arg(long)]
        no_demo: bool,
        /// Keycloak realm file to import at start (repeatable); default: the banking realm.
        #[arg(long = "realm-file")]
        realm_files: Vec<PathBuf>,
        /// The event bus: `memory` (default), `rabbitmq` or `kafka` (`[bus] url` or the
        /// local broker).
        #[arg(long, value_enum)]
        bus: Option<crate::config::BusKind>,
    },
    /// Run the given roles (default: every implemented role) against an existing schema.
    Serve {
        /// Roles to run: `accounts` (the ledger API), `identity` (the OpenID Connect
        /// provider), `gateway` (the edge); none: all three. `psp-sim` (the payment
        /// gateway simulator, `[psp_sim]`) runs alone, without a database.
        roles: Vec<String>,
        #[command(flatten)]
        location: Location,
        /// Address to listen on.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Apply pending migrations first instead of refusing to start.
        #[arg(long)]
        migrate: bool,
        /// Keycloak realm file to import at start (repeatable); default: the banking realm.
        #[arg(long = "realm-file")]
        realm_files: Vec<PathBuf>,
    },
    /// Apply pending database migrations.
    Migrate {
        #[command(flatten)]
        location: Location,
    },
    /// Print the effective configuration, secrets redacted.
    Config {
        #[command(flatten)]
        location: Location,
    },
    /// Identity provider tools.
    Realm {
        #[command(subcommand)]
        command: RealmCommand,
    },
    /// Edge policy tools.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Ledger operator tools.
    Ledger {
        #[command(subcommand)]
        command: LedgerCommand,
    },
    /// Audit trail tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Issue a development CA and one mTLS certificate (SPIFFE id) per role.
    Certs(crate::certs::CertsArgs),
    /// Load generators that print throughput and latency.
    Bench {
        #[command(subcommand)]
        scenario: crate::bench::Scenario,
    },
}

#[derive(Debug, Subcommand)]
enum LedgerCommand {
    /// Check that every ledger balances and every account equals the sum of its transfers.
    Verify {
        #[command(flatten)]
        location: Location,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the audit trail's hash chain; exits 1 naming the first altered, removed or
    /// reordered record.
    Verify {
        #[command(flatten)]
        location: Location,
        #[command(flatten)]
        mongo: crate::audit::MongoLocation,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Replay a policy matrix against the Istio YAML and print every subject's access;
    /// exits 1 when a cell differs from the expectation.
    Test {
        /// The directory of Istio resources (the gateway's `[gateway] dir`).
        #[arg(default_value = "deploy/istio")]
        dir: PathBuf,
        /// The matrix (subjects, cases with expected allow/401/403).
        #[arg(default_value = "POLICY_MATRIX.yaml")]
        matrix: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum RealmCommand {
    /// Import a Keycloak realm export into the built-in provider. Re-importing updates the
    /// realm declaratively; a running server picks the change up at its next start.
    Import {
        /// The realm file (Keycloak's `RealmRepresentation` JSON).
        file: PathBuf,
        /// Print what would change; store nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        location: Location,
    },
}

/// Where the database is; found the same way by every command.
#[derive(Debug, Clone, Args)]
struct Location {
    /// Directory of the embedded SQLite database.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Database URL (`postgres://...` or `sqlite://...`); overrides --data-dir.
    #[arg(long)]
    database_url: Option<String>,
}

impl Location {
    fn overrides(&self, listen: Option<SocketAddr>) -> Overrides {
        Overrides {
            listen,
            data_dir: self.data_dir.clone(),
            database_url: self.database_url.clone(),
            identity: None,
            bus: None,
        }
    }
}

impl Cli {
    /// Runs the chosen command.
    pub async fn run(self) -> Result<ExitCode, String> {
        let config_file = self.config.as_deref();
        match self.command {
            Command::Up { location, listen, no_demo, realm_files, bus } => {
                let overrides = location.overrides(listen).realms(realm_files).bus(bus);
                let config = Config::load_over(Config::laptop(), config_file, &overrides)?;
                init_logging(&config);
                let store = open_store(&config, true).await?;
                crate::server::serve(config, store, !no_demo, crate::server::Roles::ALL).await?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Serve { roles, location, listen, migrate, realm_files } => {
                if roles.iter().any(|role| role == "psp-sim") {
                    if roles.len() > 1 {
                        return Err("the psp-sim role runs alone".into());
                    }
                    let config = Config::load(config_file, &location.overrides(listen))?;
                    init_logging(&config);
                    let running = crate::psp_sim::start(&config).await?;
                    println!("ferrobank psp-sim is up on http://{}", running.addr);
                    crate::server::shutdown_signal().await;
                    running.stop().await?;
                    return Ok(ExitCode::SUCCESS);
                }
                let roles = crate::server::Roles::parse(&roles)?;
                let overrides = location.overrides(listen).realms(realm_files);
                let config = Config::load(config_file, &overrides)?;
                init_logging(&config);
                if roles
                    == (crate::server::Roles {
                        accounts: false,
                        identity: false,
                        gateway: true,
                        payment_worker: false,
                    })
                {
                    let running = crate::edge::start_standalone(&config).await?;
                    println!("ferrobank gateway is up on http://{}", running.addr);
                    crate::server::shutdown_signal().await;
                    running.stop().await?;
                    return Ok(ExitCode::SUCCESS);
                }
                let store = open_store(&config, migrate).await?;
                crate::server::serve(config, store, false, roles).await?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Migrate { location } => {
                let config = Config::load(config_file, &location.overrides(None))?;
                init_logging(&config);
                let store = connect(&config).await?;
                let applied = store.migrate().await.map_err(|e| e.to_string())?;
                println!("schema is current (applied {} migration(s): {applied:?})", applied.len());
                Ok(ExitCode::SUCCESS)
            }
            Command::Config { location } => {
                let config = Config::load(config_file, &location.overrides(None))?;
                print!("{}", config.redacted_toml());
                Ok(ExitCode::SUCCESS)
            }
            Command::Policy { command: PolicyCommand::Test { dir, matrix } } => {
                let report = crate::policy::run(&dir, &matrix)?;
                print!("{}", report.table);
                println!(
                    "{} of {} cells as expected ({} from {})",
                    report.cells - report.mismatches,
                    report.cells,
                    matrix.display(),
                    dir.display()
                );
                Ok(if report.mismatches == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
            }
            Command::Ledger { command: LedgerCommand::Verify { location } } => {
                let config = Config::load(config_file, &location.overrides(None))?;
                let store = open_store(&config, false).await?;
                verify(&store).await
            }
            Command::Audit { command: AuditCommand::Verify { location, mongo } } => {
                let config = Config::load(config_file, &location.overrides(None))?;
                crate::audit::verify(&config, &mongo).await
            }
            Command::Realm { command: RealmCommand::Import { file, dry_run, location } } => {
                let config = Config::load(config_file, &location.overrides(None))?;
                let store = open_store(&config, true).await?;
                import_realm(&config, store, &file, dry_run).await
            }
            Command::Certs(args) => crate::certs::run(config_file, &args),
            Command::Bench { scenario } => scenario.run().await,
        }
    }
}

async fn import_realm(
    config: &Config,
    store: SqlStore,
    file: &std::path::Path,
    dry_run: bool,
) -> Result<ExitCode, String> {
    let model = crate::identity::read_realm(file)?;
    let clock = std::sync::Arc::new(ferrobank_application::SystemClock);
    let url = crate::identity::public_url(config, config.listen);
    let idp = ferrobank_adapters::idp::IdentityProvider::load(store, clock, &url)
        .await
        .map_err(|e| e.to_string())?;
    let imported = idp
        .import_realm(&model, &crate::identity::import_options(config), dry_run)
        .await
        .map_err(|e| e.to_string())?;
    let verb = if dry_run { "would change" } else { "changed" };
    if imported.changes.is_empty() {
        println!("realm {}: up to date, nothing to change", model.realm);
    } else {
        println!("realm {}: {verb} {} item(s)", model.realm, imported.changes.len());
        for change in &imported.changes {
            println!("  {change}");
        }
    }
    for secret in &imported.generated {
        match dry_run {
            true => println!("  would generate {}", secret.what),
            false => println!("  generated {} (shown once): {}", secret.what, secret.value),
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn connect(config: &Config) -> Result<SqlStore, String> {
    if config.database_url.is_none() {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| format!("creating data dir {}: {e}", config.data_dir.display()))?;
    }
    let options = StoreOptions {
        max_connections: config.database.max_connections,
        acquire_timeout_ms: config.database.acquire_timeout_ms,
    };
    let url = config.effective_database_url();
    SqlStore::connect(&url, options)
        .await
        .map_err(|e| format!("connecting to {}: {e}", crate::config::redact_url(&url)))
}

/// Connects and checks the schema; with `migrate`, brings it up to date first.
pub async fn open_store(config: &Config, migrate: bool) -> Result<SqlStore, String> {
    let store = connect(config).await?;
    if migrate {
        store.migrate().await.map_err(|e| e.to_string())?;
    } else {
        store.check_schema().await.map_err(|e| e.to_string())?;
    }
    Ok(store)
}

async fn verify(store: &SqlStore) -> Result<ExitCode, String> {
    let report =
        ferrobank_application::LedgerStore::verify(store).await.map_err(|e| e.to_string())?;
    for (ledger, totals) in &report.ledgers {
        let currency = ferrobank_domain::Currency::from_ledger(*ledger)
            .map(|c| c.code().to_owned())
            .unwrap_or_else(|| ledger.to_string());
        println!(
            "ledger {ledger} ({currency}): posted debits {} credits {}, pending debits {} credits {}",
            totals.debits_posted,
            totals.credits_posted,
            totals.debits_pending,
            totals.credits_pending
        );
    }
    println!(
        "checked {} accounts and {} transfers",
        report.accounts_checked, report.transfers_checked
    );
    if report.mismatches.is_empty() {
        println!("OK: every ledger balances and every account equals the sum of its transfers");
        return Ok(ExitCode::SUCCESS);
    }
    for mismatch in &report.mismatches {
        match mismatch {
            VerifyMismatch::LedgerUnbalanced { ledger, totals } => println!(
                "MISMATCH ledger {ledger}: posted debits {} != credits {} or pending debits {} != credits {}",
                totals.debits_posted,
                totals.credits_posted,
                totals.debits_pending,
                totals.credits_pending
            ),
            VerifyMismatch::AccountBalances { account, stored, from_transfers } => {
                println!(
                    "MISMATCH account {account}: stored {stored:?} but transfers sum to {from_transfers:?}"
                )
            }
        }
    }
    println!("FAILED: {} mismatch(es)", report.mismatches.len());
    Ok(ExitCode::FAILURE)
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = match config.log.format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = if json {
        builder.json().with_current_span(true).with_span_list(false).try_init()
    } else {
        builder.try_init()
    };
    // Already initialised (tests embedding the server): keep the first subscriber.
    drop(result);
}
