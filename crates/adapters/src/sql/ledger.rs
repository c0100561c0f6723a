//! The ledger store: accounts, transfers, history, outbox and verification.

use async_trait::async_trait;
use ferrobank_application::outbox::OutboxMessage;
use ferrobank_application::{
    HistoryEntry, HistoryPage, LedgerStore, LedgerTx, StoreError, VerifyMismatch, VerifyReport,
};
use ferrobank_domain::{
    Account, AccountId, Balances, Book, LedgerTotals, Payment, PaymentId, Transfer, TransferId,
};
use sqlx::{Any, Row};
use uuid::Uuid;

use super::rows::{self, ACCOUNT_COLUMNS, TRANSFER_COLUMNS, TRANSFER_INSERT_COLUMNS};
use super::{AnyQuery, Backend, SqlStore, map_err, payments, placeholders, update_from_values};

/// Ids per `IN (...)` query; lists are padded to a power of two so the driver's
/// prepared-statement cache sees a handful of shapes, not one per list length.
const MAX_IN_LIST: usize = 512;
/// Rows per multi-row `INSERT`.
const INSERT_CHUNK_ROWS: usize = 32;

/// A write transaction on the SQL store.
struct SqlTx {
    tx: sqlx::Transaction<'static, Any>,
    backend: Backend,
    /// Set when the transaction wrote the outbox: its commit wakes the relay.
    outbox_signal: Option<std::sync::Arc<tokio::sync::Notify>>,
    signal: std::sync::Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for SqlTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlTx").field("backend", &self.backend).finish()
    }
}

/// Splits `ids` into padded chunks and returns (sql placeholders, bound strings) pairs.
pub(super) fn in_lists<T: ToString>(ids: &[T]) -> Vec<(String, Vec<String>)> {
    ids.chunks(MAX_IN_LIST)
        .map(|chunk| {
            let mut values: Vec<String> = chunk.iter().map(ToString::to_string).collect();
            let padded = values.len().next_power_of_two();
            if let Some(last) = values.last().cloned() {
                values.resize(padded, last);
            }
            (placeholders(0, values.len()), values)
        })
        .collect()
}

impl SqlTx {
    async fn fetch_transfers(&mut self, ids: &[TransferId]) -> Result<Vec<Transfer>, StoreError> {
        let mut found = Vec::with_capacity(ids.len());
        for (list, values) in in_lists(ids) {
            let sql = format!("SELECT {TRANSFER_COLUMNS} FROM transfers WHERE id IN ({list})");
            let mut query = sqlx::query(&sql);
            for value in values {
                query = query.bind(value);
            }
            for row in query.fetch_all(&mut *self.tx).await.map_err(map_err)? {
                found.push(rows::transfer(&row)?.1);
            }
        }
        Ok(found)
    }

    async fn insert_transfers(&mut self, transfers: &[&Transfer]) -> Result<(), StoreError> {
        let width = TRANSFER_INSERT_COLUMNS.len();
        for chunk in transfers.chunks(INSERT_CHUNK_ROWS) {
            let values: Vec<String> =
                (0..chunk.len()).map(|i| format!("({})", placeholders(i * width, width))).collect();
            let sql = format!(
                "INSERT INTO transfers ({}) VALUES {}",
                TRANSFER_INSERT_COLUMNS.join(", "),
                values.join(", ")
            );
            let mut query = sqlx::query(&sql);
            for t in chunk {
                query = bind_transfer(query, t);
            }
            query.execute(&mut *self.tx).await.map_err(map_err)?;
        }
        Ok(())
    }

    /// Writes the balances of many accounts, one statement per chunk.
    async fn update_balances(&mut self, accounts: &[&Account]) -> Result<(), StoreError> {
        const COLUMNS: [&str; 4] =
            ["debits_pending", "debits_posted", "credits_pending", "credits_posted"];
        update_from_values(&mut self.tx, "accounts", "id", &COLUMNS, accounts, |query, a| {
            query
                .bind(a.id.to_string())
                .bind(a.balances.debits_pending)
                .bind(a.balances.debits_posted)
                .bind(a.balances.credits_pending)
                .bind(a.balances.credits_posted)
        })
        .await
    }
}

fn bind_transfer<'q>(query: AnyQuery<'q>, t: &Transfer) -> AnyQuery<'q> {
    let d = t.debit_balances_after;
    let c = t.credit_balances_after;
    query
        .bind(t.id.to_string())
        .bind(t.debit_account_id.to_string())
        .bind(t.credit_account_id.to_string())
        .bind(t.amount.minor_units())
        .bind(i64::from(t.currency.ledger()))
        .bind(t.currency.code())
        .bind(i64::from(t.code))
        .bind(rows::kind_name(t.kind))
        .bind(t.kind.pending_id().map(|id| id.to_string()))
        .bind(rows::timeout_s(t.kind))
        .bind(i64::from(t.linked))
        .bind(t.requested_amount.map(|a| a.minor_units()))
        .bind(t.created_at_ms)
        .bind(t.expires_at_ms)
        .bind(t.pending_status.map(|s| s.as_str()))
        .bind(d.debits_pending)
        .bind(d.debits_posted)
        .bind(d.credits_pending)
        .bind(d.credits_posted)
        .bind(c.debits_pending)
        .bind(c.debits_posted)
        .bind(c.credits_pending)
        .bind(c.credits_posted)
}

#[async_trait]
impl LedgerTx for SqlTx {
    async fn lock_accounts(&mut self, ids: &[AccountId]) -> Result<Vec<Account>, StoreError> {
        let lock = match self.backend {
            // Row locks in id order: concurrent writers queue instead of deadlocking.
            Backend::Postgres => " ORDER BY id FOR UPDATE",
            // BEGIN IMMEDIATE already holds the database's single write lock.
            Backend::Sqlite => "",
        };
        let mut accounts = Vec::with_capacity(ids.len());
        for (list, values) in in_lists(ids) {
            let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id IN ({list}){lock}");
            let mut query = sqlx::query(&sql);
            for value in values {
                query = query.bind(value);
            }
            for row in query.fetch_all(&mut *self.tx).await.map_err(map_err)? {
                accounts.push(rows::account(&row)?);
            }
        }
        Ok(accounts)
    }

    async fn transfers(&mut self, ids: &[TransferId]) -> Result<Vec<Transfer>, StoreError> {
        self.fetch_transfers(ids).await
    }

    async fn insert_account(&mut self, a: &Account) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO accounts (id, ledger, currency, code, owner, flags, debits_pending, \
             debits_posted, credits_pending, credits_posted, created_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(a.id.to_string())
        .bind(i64::from(a.currency.ledger()))
        .bind(a.currency.code())
        .bind(i64::from(a.code))
        .bind(a.owner.clone())
        .bind(a.flags.bits())
        .bind(a.balances.debits_pending)
        .bind(a.balances.debits_posted)
        .bind(a.balances.credits_pending)
        .bind(a.balances.credits_posted)
        .bind(a.created_at_ms)
        .execute(&mut *self.tx)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn save_book(&mut self, book: &Book) -> Result<(), StoreError> {
        let changed: Vec<&Account> = book.changed_accounts().collect();
        self.update_balances(&changed).await?;
        let created: Vec<&Transfer> = book.created_transfers().collect();
        self.insert_transfers(&created).await?;
        let resolved: Vec<&Transfer> = book.resolved_pending().collect();
        update_from_values(
            &mut self.tx,
            "transfers",
            "id",
            &["pending_status"],
            &resolved,
            |q, t| q.bind(t.id.to_string()).bind(t.pending_status.map(|s| s.as_str())),
        )
        .await
    }

    async fn append_outbox(&mut self, messages: &[OutboxMessage]) -> Result<(), StoreError> {
        const WIDTH: usize = 6;
        for chunk in messages.chunks(INSERT_CHUNK_ROWS) {
            let values: Vec<String> =
                (0..chunk.len()).map(|i| format!("({})", placeholders(i * WIDTH, WIDTH))).collect();
            let sql = format!(
                "INSERT INTO outbox (event_id, kind, payload, created_at_ms, subject, traceparent) \
                 VALUES {}",
                values.join(", ")
            );
            let mut query = sqlx::query(&sql);
            for m in chunk {
                query = query
                    .bind(m.event_id.to_string())
                    .bind(m.kind)
                    .bind(m.payload.to_string())
                    .bind(m.created_at_ms)
                    .bind(m.subject.clone())
                    .bind(m.traceparent.clone());
            }
            query.execute(&mut *self.tx).await.map_err(map_err)?;
        }
        if !messages.is_empty() {
            self.outbox_signal = Some(self.signal.clone());
        }
        Ok(())
    }

    async fn lock_payments(&mut self, ids: &[PaymentId]) -> Result<Vec<Payment>, StoreError> {
        payments::lock_payments(&mut self.tx, self.backend, ids).await
    }

    async fn insert_payments(&mut self, list: &[&Payment]) -> Result<(), StoreError> {
        payments::insert_payments(&mut self.tx, list).await
    }

    async fn update_payments(&mut self, list: &[&Payment]) -> Result<(), StoreError> {
        payments::update_payments(&mut self.tx, list).await
    }

    async fn inbox_seen(
        &mut self,
        consumer: &str,
        event_ids: &[String],
    ) -> Result<Vec<String>, StoreError> {
        payments::inbox_seen(&mut self.tx, consumer, event_ids).await
    }

    async fn record_inbox(
        &mut self,
        consumer: &str,
        event_ids: &[String],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        payments::record_inbox(&mut self.tx, consumer, event_ids, now_ms).await
    }

    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        let Self { tx, outbox_signal, .. } = *self;
        tx.commit().await.map_err(map_err)?;
        if let Some(signal) = outbox_signal {
            signal.notify_one();
        }
        Ok(())
    }
}

/// Recomputes per-account balances from the transfers; returns only rows that differ.
const VERIFY_ACCOUNTS_SQL: &str = "
WITH moves AS (
    SELECT debit_account_id AS account_id,
           CASE WHEN kind = 'pending' AND pending_status = 'pending' THEN amount ELSE 0 END AS dpend,
           CASE WHEN kind IN ('posted', 'post_pending') THEN amount ELSE 0 END AS dpost,
           0 AS cpend, 0 AS cpost
      FROM transfers
    UNION ALL
    SELECT credit_account_id,
           0, 0,
           CASE WHEN kind = 'pending' AND pending_status = 'pending' THEN amount ELSE 0 END,
           CASE WHEN kind IN ('posted', 'post_pending') THEN amount ELSE 0 END
      FROM transfers
), sums AS (
    SELECT account_id,
           CAST(SUM(dpend) AS BIGINT) AS dpend, CAST(SUM(dpost) AS BIGINT) AS dpost,
           CAST(SUM(cpend) AS BIGINT) AS cpend, CAST(SUM(cpost) AS BIGINT) AS cpost
      FROM moves GROUP BY account_id
)
SELECT a.id, a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted,
       CAST(COALESCE(s.dpend, 0) AS BIGINT) AS t_debits_pending,
       CAST(COALESCE(s.dpost, 0) AS BIGINT) AS t_debits_posted,
       CAST(COALESCE(s.cpend, 0) AS BIGINT) AS t_credits_pending,
       CAST(COALESCE(s.cpost, 0) AS BIGINT) AS t_credits_posted
  FROM accounts a LEFT JOIN sums s ON s.account_id = a.id
 WHERE a.debits_pending <> COALESCE(s.dpend, 0) OR a.debits_posted <> COALESCE(s.dpost, 0)
    OR a.credits_pending <> COALESCE(s.cpend, 0) OR a.credits_posted <> COALESCE(s.cpost, 0)
 ORDER BY a.id
 LIMIT 1000";

/// Sums per ledger, which can exceed 64 bits. SQLite's SUM fails on overflow, so each
/// balance is summed in two halves split at 2^32 (each half-sum fits 64 bits below 2^31
/// accounts) and joined in `parse_sum`; as text, since PostgreSQL sums into NUMERIC.
const VERIFY_LEDGERS_SQL: &str = "
SELECT ledger,
       CAST(SUM(debits_pending / 4294967296) AS TEXT) AS debits_pending_hi,
       CAST(SUM(debits_pending % 4294967296) AS TEXT) AS debits_pending_lo,
       CAST(SUM(debits_posted / 4294967296) AS TEXT) AS debits_posted_hi,
       CAST(SUM(debits_posted % 4294967296) AS TEXT) AS debits_posted_lo,
       CAST(SUM(credits_pending / 4294967296) AS TEXT) AS credits_pending_hi,
       CAST(SUM(credits_pending % 4294967296) AS TEXT) AS credits_pending_lo,
       CAST(SUM(credits_posted / 4294967296) AS TEXT) AS credits_posted_hi,
       CAST(SUM(credits_posted % 4294967296) AS TEXT) AS credits_posted_lo
  FROM accounts GROUP BY ledger ORDER BY ledger";

fn parse_sum(row: &sqlx::any::AnyRow, column: &str) -> Result<i128, StoreError> {
    let half = |suffix: &str| -> Result<i128, StoreError> {
        let name = format!("{column}_{suffix}");
        let text: String = row.try_get(name.as_str()).map_err(map_err)?;
        text.parse().map_err(|e| StoreError::Corrupt(format!("{name}: {e}")))
    };
    Ok(half("hi")? * (1 << 32) + half("lo")?)
}

#[async_trait]
impl LedgerStore for SqlStore {
    async fn begin(&self) -> Result<Box<dyn LedgerTx>, StoreError> {
        Ok(Box::new(SqlTx {
            tx: self.begin_write().await?,
            backend: self.backend,
            outbox_signal: None,
            signal: self.outbox_signal.clone(),
        }))
    }

    async fn account(&self, id: AccountId) -> Result<Option<Account>, StoreError> {
        let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
        row.as_ref().map(rows::account).transpose()
    }

    async fn transfer(&self, id: TransferId) -> Result<Option<Transfer>, StoreError> {
        let sql = format!("SELECT {TRANSFER_COLUMNS} FROM transfers WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(row.as_ref().map(rows::transfer).transpose()?.map(|(_, t)| t))
    }

    async fn history(
        &self,
        account: AccountId,
        before: Option<i64>,
        limit: u32,
    ) -> Result<HistoryPage, StoreError> {
        // Two index range scans merged; one more row than asked tells if a page follows.
        let sql = format!(
            "SELECT {TRANSFER_COLUMNS} FROM transfers WHERE seq IN ( \
               SELECT seq FROM (SELECT seq FROM transfers WHERE debit_account_id = $1 AND seq < $2 \
                                ORDER BY seq DESC LIMIT $3) d \
               UNION ALL \
               SELECT seq FROM (SELECT seq FROM transfers WHERE credit_account_id = $1 AND seq < $2 \
                                ORDER BY seq DESC LIMIT $3) c) \
             ORDER BY seq DESC LIMIT $3"
        );
        let rows = sqlx::query(&sql)
            .bind(account.to_string())
            .bind(before.unwrap_or(i64::MAX))
            .bind(i64::from(limit) + 1)
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        let mut entries = Vec::with_capacity(rows.len());
        for row in &rows {
            let (seq, transfer) = rows::transfer(row)?;
            let balances_after = if transfer.debit_account_id == account {
                transfer.debit_balances_after
            } else {
                transfer.credit_balances_after
            };
            entries.push(HistoryEntry { seq, transfer, balances_after });
        }
        let next_before = if entries.len() > limit as usize {
            entries.truncate(limit as usize);
            entries.last().map(|e| e.seq)
        } else {
            None
        };
        Ok(HistoryPage { entries, next_before })
    }

    async fn due_pending(&self, now_ms: i64, limit: u32) -> Result<Vec<TransferId>, StoreError> {
        let rows = sqlx::query(
            "SELECT id FROM transfers WHERE pending_status = 'pending' AND expires_at_ms <= $1 \
             ORDER BY expires_at_ms LIMIT $2",
        )
        .bind(now_ms)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|row| {
                let text: String = row.try_get("id").map_err(map_err)?;
                Uuid::parse_str(&text)
                    .map(TransferId)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))
            })
            .collect()
    }

    async fn verify(&self) -> Result<VerifyReport, StoreError> {
        // One snapshot for all three reads, so a concurrent commit cannot look like a
        // mismatch. (REPEATABLE READ on PostgreSQL; SQLite read transactions are snapshots.)
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        if self.backend == Backend::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        }
        let mut report = VerifyReport::default();
        for row in sqlx::query(VERIFY_LEDGERS_SQL).fetch_all(&mut *tx).await.map_err(map_err)? {
            let ledger: i64 = row.try_get("ledger").map_err(map_err)?;
            let ledger = u16::try_from(ledger).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let totals = LedgerTotals {
                debits_pending: parse_sum(&row, "debits_pending")?,
                debits_posted: parse_sum(&row, "debits_posted")?,
                credits_pending: parse_sum(&row, "credits_pending")?,
                credits_posted: parse_sum(&row, "credits_posted")?,
            };
            if !totals.balanced() {
                report.mismatches.push(VerifyMismatch::LedgerUnbalanced { ledger, totals });
            }
            report.ledgers.push((ledger, totals));
        }
        let counts = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM accounts) AS accounts, \
                    (SELECT COUNT(*) FROM transfers) AS transfers",
        )
        .fetch_one(&mut *tx)
        .await
        .map_err(map_err)?;
        let count = |column: &str| -> Result<u64, StoreError> {
            let n: i64 = counts.try_get(column).map_err(map_err)?;
            u64::try_from(n).map_err(|e| StoreError::Corrupt(e.to_string()))
        };
        report.accounts_checked = count("accounts")?;
        report.transfers_checked = count("transfers")?;
        for row in sqlx::query(VERIFY_ACCOUNTS_SQL).fetch_all(&mut *tx).await.map_err(map_err)? {
            let id: String = row.try_get("id").map_err(map_err)?;
            let balances = |prefix: &str| -> Result<Balances, StoreError> {
                let get = |name: &str| -> Result<i64, StoreError> {
                    row.try_get(format!("{prefix}{name}").as_str()).map_err(map_err)
                };
                Ok(Balances {
                    debits_pending: get("debits_pending")?,
                    debits_posted: get("debits_posted")?,
                    credits_pending: get("credits_pending")?,
                    credits_posted: get("credits_posted")?,
                })
            };
            report.mismatches.push(VerifyMismatch::AccountBalances {
                account: AccountId(
                    Uuid::parse_str(&id).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                ),
                stored: balances("")?,
                from_transfers: balances("t_")?,
            });
        }
        tx.rollback().await.map_err(map_err)?;
        Ok(report)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map_err(map_err)?;
        Ok(())
    }
}
