//! The SQL store: connection, migrations and error mapping.

mod activity;
mod audit;
mod idempotency;
mod identity;
mod ledger;
mod notifications;
mod payments;
mod rows;

pub use identity::{StoredKey, StoredRealm};

use std::time::Duration;

use ferrobank_application::StoreError;
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{Any, AnyPool, Executor};

/// Which database a URL points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// One file, WAL, one writer at a time (`BEGIN IMMEDIATE`).
    Sqlite,
    /// Row locks (`SELECT ... FOR UPDATE`) let several writers share a database.
    Postgres,
}

impl Backend {
    /// Detects the backend from a `sqlite:` or `postgres:` URL.
    pub fn from_url(url: &str) -> Option<Self> {
        if url.starts_with("sqlite:") {
            Some(Self::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Some(Self::Postgres)
        } else {
            None
        }
    }

    fn migrations(self) -> &'static [Migration] {
        match self {
            Self::Sqlite => SQLITE_MIGRATIONS,
            Self::Postgres => POSTGRES_MIGRATIONS,
        }
    }
}

/// Pool settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// Most open connections.
    pub max_connections: u32,
    /// How long to wait for a free connection before giving up.
    pub acquire_timeout_ms: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self { max_connections: 16, acquire_timeout_ms: 5_000 }
    }
}

/// A forward-only schema change, applied once, in order.
#[derive(Debug)]
struct Migration {
    version: i64,
    name: &'static str,
    sql: &'static str,
}

const SQLITE_MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "ledger",
        sql: include_str!("../../migrations/sqlite/0001_ledger.sql"),
    },
    Migration {
        version: 2,
        name: "identity",
        sql: include_str!("../../migrations/sqlite/0002_identity.sql"),
    },
    Migration {
        version: 3,
        name: "audit",
        sql: include_str!("../../migrations/sqlite/0003_audit.sql"),
    },
    Migration {
        version: 4,
        name: "payments",
        sql: include_str!("../../migrations/sqlite/0004_payments.sql"),
    },
    Migration {
        version: 5,
        name: "notifications",
        sql: include_str!("../../migrations/sqlite/0005_notifications.sql"),
    },
    Migration {
        version: 6,
        name: "activity",
        sql: include_str!("../../migrations/sqlite/0006_activity.sql"),
    },
    Migration {
        version: 7,
        name: "email_deliveries",
        sql: include_str!("../../migrations/sqlite/0007_email_deliveries.sql"),
    },
    Migration {
        version: 8,
        name: "inbox_purge",
        sql: include_str!("../../migrations/sqlite/0008_inbox_purge.sql"),
    },
];

const POSTGRES_MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "ledger",
        sql: include_str!("../../migrations/postgres/0001_ledger.sql"),
    },
    Migration {
        version: 2,
        name: "identity",
        sql: include_str!("../../migrations/postgres/0002_identity.sql"),
    },
    Migration {
        version: 3,
        name: "audit",
        sql: include_str!("../../migrations/postgres/0003_audit.sql"),
    },
    Migration {
        version: 4,
        name: "payments",
        sql: include_str!("../../migrations/postgres/0004_payments.sql"),
    },
    Migration {
        version: 5,
        name: "notifications",
        sql: include_str!("../../migrations/postgres/0005_notifications.sql"),
    },
    Migration {
        version: 6,
        name: "activity",
        sql: include_str!("../../migrations/postgres/0006_activity.sql"),
    },
    Migration {
        version: 7,
        name: "email_deliveries",
        sql: include_str!("../../migrations/postgres/0007_email_deliveries.sql"),
    },
    Migration {
        version: 8,
        name: "inbox_purge",
        sql: include_str!("../../migrations/postgres/0008_inbox_purge.sql"),
    },
];

/// The schema version this binary reads and writes.
pub const SCHEMA_VERSION: i64 = 8;

/// The ledger and idempotency stores over one connection pool.
#[derive(Debug, Clone)]
pub struct SqlStore {
    pool: AnyPool,
    /// Where write transactions begin ([`SqlStore::begin_write`]). PostgreSQL: `pool`.
    /// SQLite: a pool of its one connection, so that writers queue in order here instead
    /// of in SQLite's busy handler, which sleeps up to 100 ms between tries and lets a
    /// writer that commits batch after batch (the payments writer) starve the others (the
    /// outbox relay, the consumers): a FIFO turn rather than a race.
    write_pool: AnyPool,
    backend: Backend,
    /// Signalled when a transaction that wrote the outbox commits in this process.
    outbox_signal: std::sync::Arc<tokio::sync::Notify>,
}

impl SqlStore {
    /// Connects; creates a SQLite file if missing. Does not touch the schema.
    pub async fn connect(url: &str, options: StoreOptions) -> Result<Self, StoreError> {
        install_default_drivers();
        let backend = Backend::from_url(url).ok_or_else(|| {
            StoreError::Unavailable("database URL must start with sqlite: or postgres:".into())
        })?;
        let url = match backend {
            Backend::Sqlite if !url.contains("mode=") => {
                format!("{url}{}mode=rwc", if url.contains('?') { '&' } else { '?' })
            }
            _ => url.to_owned(),
        };
        let pool_of = |max_connections: u32| {
            AnyPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(Duration::from_millis(options.acquire_timeout_ms))
                .after_connect(move |conn, _meta| {
                    Box::pin(async move {
                        if backend == Backend::Sqlite {
                            // WAL lets readers run beside the writer; FULL makes each commit
                            // durable across power loss, not only across a process crash.
                            conn.execute(
                                "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                                 PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON;",
                            )
                            .await?;
                        }
                        Ok(())
                    })
                })
        };
        let pool = pool_of(options.max_connections).connect(&url).await.map_err(map_err)?;
        let write_pool = match backend {
            Backend::Sqlite => pool_of(1).connect(&url).await.map_err(map_err)?,
            Backend::Postgres => pool.clone(),
        };
        Ok(Self { pool, write_pool, backend, outbox_signal: Default::default() })
    }

    /// The backend behind this store.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Applies missing migrations in order, each in its own transaction.
    /// Returns the versions applied. Refuses a database newer than this binary.
    pub async fn migrate(&self) -> Result<Vec<i64>, StoreError> {
        let create = match self.backend {
            Backend::Sqlite => {
                "CREATE TABLE IF NOT EXISTS ferrobank_schema (version INTEGER PRIMARY KEY, \
                 name TEXT NOT NULL, applied_at_ms INTEGER NOT NULL)"
            }
            Backend::Postgres => {
                "CREATE TABLE IF NOT EXISTS ferrobank_schema (version BIGINT PRIMARY KEY, \
                 name TEXT NOT NULL, applied_at_ms BIGINT NOT NULL)"
            }
        };
        let mut applied = Vec::new();
        for migration in self.backend.migrations() {
            let mut tx = self.begin_write().await?;
            if self.backend == Backend::Postgres {
                // Replicas starting together take turns; the loser sees the winner's work.
                sqlx::query("SELECT pg_advisory_xact_lock(7212346)")
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
            }
            tx.execute(create).await.map_err(map_err)?;
            let current = current_version(&mut tx).await?;
            if current > SCHEMA_VERSION {
                return Err(StoreError::SchemaMismatch {
                    found: current,
                    expected: SCHEMA_VERSION,
                });
            }
            if migration.version <= current {
                continue;
            }
            sqlx::raw_sql(migration.sql).execute(&mut *tx).await.map_err(map_err)?;
            sqlx::query(
                "INSERT INTO ferrobank_schema (version, name, applied_at_ms) VALUES ($1, $2, $3)",
            )
            .bind(migration.version)
            .bind(migration.name)
            .bind(now_ms())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
            tx.commit().await.map_err(map_err)?;
            tracing::info!(version = migration.version, name = migration.name, "applied migration");
            applied.push(migration.version);
        }
        self.check_schema().await?;
        Ok(applied)
    }

    /// Refuses to run against a schema this binary does not know (older or newer).
    pub async fn check_schema(&self) -> Result<(), StoreError> {
        let found = match sqlx::query_scalar::<_, i64>(
            "SELECT COALESCE(MAX(version), 0) FROM ferrobank_schema",
        )
        .fetch_one(&self.pool)
        .await
        {
            Ok(version) => version,
            // No schema table yet: an empty database.
            Err(sqlx::Error::Database(_)) => 0,
            Err(error) => return Err(map_err(error)),
        };
        if found == SCHEMA_VERSION {
            Ok(())
        } else {
            Err(StoreError::SchemaMismatch { found, expected: SCHEMA_VERSION })
        }
    }

    /// Closes every connection.
    pub async fn close(&self) {
        self.write_pool.close().await;
        self.pool.close().await;
    }

    /// Starts a write transaction. On SQLite `BEGIN IMMEDIATE` takes the write lock up
    /// front, so a transaction that read first never fails to upgrade (SQLITE_BUSY).
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        let begun = match self.backend {
            Backend::Sqlite => self.write_pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.write_pool.begin().await,
        };
        begun.map_err(map_err)
    }
}

async fn current_version(conn: &mut sqlx::AnyConnection) -> Result<i64, StoreError> {
    sqlx::query_scalar::<_, i64>("SELECT COALESCE(MAX(version), 0) FROM ferrobank_schema")
        .fetch_one(conn)
        .await
        .map_err(map_err)
}

fn now_ms() -> i64 {
    ferrobank_application::Clock::now_ms(&ferrobank_application::SystemClock)
}

/// Maps a driver error to the port's error, counting connection failures for alerting.
fn map_err(error: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &error {
        let code = db.code().unwrap_or_default();
        // 23505 unique_violation, 40001 serialization_failure, 40P01 deadlock_detected;
        // SQLite 2067 SQLITE_CONSTRAINT_UNIQUE, 1555 SQLITE_CONSTRAINT_PRIMARYKEY, 5 BUSY.
        if matches!(code.as_ref(), "23505" | "40001" | "40P01" | "2067" | "1555" | "5" | "517") {
            return StoreError::Conflict(db.message().to_owned());
        }
        return StoreError::Unavailable(db.message().to_owned());
    }
    if matches!(
        error,
        sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
    ) {
        metrics::counter!("banking_database_connection_errors_total").increment(1);
    }
    StoreError::Unavailable(error.to_string())
}

/// `$1, $2, ...` starting after `offset`, for `IN (...)` lists and multi-row inserts.
fn placeholders(offset: usize, count: usize) -> String {
    (offset + 1..=offset + count).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

/// Rows per multi-row `UPDATE` (see [`update_from_values`]).
const UPDATE_CHUNK_ROWS: usize = 64;

/// Updates many rows of `table` in one statement per chunk of [`UPDATE_CHUNK_ROWS`]:
/// `WITH v (key, columns...) AS (VALUES ...) UPDATE table SET c = v.c ... FROM v WHERE
/// table.key = v.key` (PostgreSQL, and SQLite since 3.33). One round trip instead of one
/// per row is what bounds a group commit's time. `bind` binds one row's `1 + columns.len()`
/// values, key first. Chunks are padded to a power of two by repeating the last row (the
/// row it matches ends up the same either way), so the statement cache sees a handful of
/// shapes. Every row must exist: fewer rows updated than given is [`StoreError::Corrupt`]
/// (the caller read them under lock in this transaction), and the transaction must roll back.
async fn update_from_values<T>(
    tx: &mut sqlx::Transaction<'static, Any>,
    table: &str,
    key: &str,
    columns: &[&str],
    items: &[T],
    bind: impl for<'q> Fn(AnyQuery<'q>, &'q T) -> AnyQuery<'q>,
) -> Result<(), StoreError> {
    let width = 1 + columns.len();
    let set: Vec<String> = columns.iter().map(|c| format!("{c} = v.{c}")).collect();
    for chunk in items.chunks(UPDATE_CHUNK_ROWS) {
        let Some(last) = chunk.last() else { continue };
        let rows = chunk.len().next_power_of_two();
        let values: Vec<String> =
            (0..rows).map(|i| format!("({})", placeholders(i * width, width))).collect();
        let sql = format!(
            "WITH v ({key}, {}) AS (VALUES {}) UPDATE {table} SET {} FROM v WHERE {table}.{key} = v.{key}",
            columns.join(", "),
            values.join(", "),
            set.join(", "),
        );
        let mut query = sqlx::query(&sql);
        for item in chunk.iter().chain(std::iter::repeat_n(last, rows - chunk.len())) {
            query = bind(query, item);
        }
        let updated = query.execute(&mut **tx).await.map_err(map_err)?.rows_affected();
        if updated != chunk.len() as u64 {
            return Err(StoreError::Corrupt(format!(
                "{table}: an update touched {updated} of {} rows read under lock",
                chunk.len()
            )));
        }
    }
    Ok(())
}

type AnyQuery<'q> = sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>;
