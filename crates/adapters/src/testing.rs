//! Throwaway databases for tests (feature `testing`): a SQLite file in its own temporary
//! directory, or a fresh PostgreSQL database; each is deleted when dropped, so tests run
//! in parallel and leave nothing behind.
//!
//! PostgreSQL is reached through `TEST_PG_ADMIN_URL` (an admin URL allowed to
//! `CREATE DATABASE`), default `postgres://root@127.0.0.1:5432/postgres`. A test that asks
//! for PostgreSQL fails when it is unreachable: `scripts/test.sh` starts it first.

use std::path::PathBuf;

use sqlx::Connection;
use uuid::Uuid;

use crate::sql::{Backend, SqlStore, StoreOptions};

/// Default admin URL of the test PostgreSQL.
pub const DEFAULT_PG_URL: &str = "postgres://root@127.0.0.1:5432/postgres";

/// A database that exists for the lifetime of this value.
#[derive(Debug)]
pub struct TestDatabase {
    /// URL to connect to it.
    pub url: String,
    /// Which backend it is.
    pub backend: Backend,
    cleanup: Cleanup,
}

#[derive(Debug)]
enum Cleanup {
    Directory(PathBuf),
    PgDatabase { admin_url: String, name: String },
}

impl TestDatabase {
    /// A new, empty database on `backend`.
    pub async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => Self::sqlite(),
            Backend::Postgres => Self::postgres().await,
        }
    }

    /// A SQLite file in a fresh temporary directory.
    pub fn sqlite() -> Self {
        let dir = std::env::temp_dir().join(format!("ferrobank-test-{}", Uuid::new_v4().simple()));
        if let Err(error) = std::fs::create_dir_all(&dir) {
            panic!("creating {}: {error}", dir.display());
        }
        Self {
            url: format!("sqlite://{}", dir.join("ferrobank.db").display()),
            backend: Backend::Sqlite,
            cleanup: Cleanup::Directory(dir),
        }
    }

    /// A fresh PostgreSQL database named `fbt_<random>`.
    pub async fn postgres() -> Self {
        let admin_url =
            std::env::var("TEST_PG_ADMIN_URL").unwrap_or_else(|_| DEFAULT_PG_URL.into());
        let name = format!("fbt_{}", Uuid::new_v4().simple());
        let mut admin = match sqlx::PgConnection::connect(&admin_url).await {
            Ok(conn) => conn,
            Err(error) => panic!(
                "PostgreSQL at {admin_url} is required for this test ({error}); run scripts/test.sh, \
                 which starts it, or set TEST_PG_ADMIN_URL"
            ),
        };
        if let Err(error) =
            sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await
        {
            panic!("CREATE DATABASE {name}: {error}");
        }
        let _ = admin.close().await;
        let (base, _) = admin_url.rsplit_once('/').unwrap_or((admin_url.as_str(), ""));
        Self {
            url: format!("{base}/{name}"),
            backend: Backend::Postgres,
            cleanup: Cleanup::PgDatabase { admin_url, name },
        }
    }

    /// A store connected to this database with the schema migrated.
    pub async fn store(&self) -> SqlStore {
        let store = match SqlStore::connect(&self.url, StoreOptions::default()).await {
            Ok(store) => store,
            Err(error) => panic!("connecting to {}: {error}", self.url),
        };
        if let Err(error) = store.migrate().await {
            panic!("migrating {}: {error}", self.url);
        }
        store
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        match &self.cleanup {
            Cleanup::Directory(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Cleanup::PgDatabase { admin_url, name } => {
                let (admin_url, name) = (admin_url.clone(), name.clone());
                // Drop may run inside a runtime; a thread with its own runtime can block.
                let dropped = std::thread::spawn(move || {
                    let runtime =
                        tokio::runtime::Builder::new_current_thread().enable_all().build();
                    if let Ok(runtime) = runtime {
                        runtime.block_on(async move {
                            if let Ok(mut admin) = sqlx::PgConnection::connect(&admin_url).await {
                                let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                                let _ = sqlx::query(&sql).execute(&mut admin).await;
                                let _ = admin.close().await;
                            }
                        });
                    }
                });
                let _ = dropped.join();
            }
        }
    }
}
