//! Payments, the consumers' inbox and the relay's side of the outbox.

use std::time::Duration;

use async_trait::async_trait;
use ferrobank_application::StoreError;
use ferrobank_application::payments::{
    OutboxClaim, OutboxRow, OutboxStore, PaymentPage, PaymentQuery, PaymentStore,
};
use ferrobank_domain::{
    AccountId, Amount, Beneficiary, Currency, Payment, PaymentId, PaymentStatus, Reference,
    RiskDecision, TransferId,
};
use sqlx::any::AnyRow;
use sqlx::{Any, Row};
use uuid::Uuid;

use super::ledger::in_lists;
use super::{Backend, SqlStore, map_err, placeholders, update_from_values};

const PAYMENT_COLUMNS: &str = "seq, id, owner, debtor_account, beneficiary, beneficiary_key, \
    amount, currency, reference, status, risk, hold_id, idempotency_key, failure_code, \
    reviewer, created_by, created_at_ms, updated_at_ms";

/// Payments per multi-row `INSERT`.
const INSERT_CHUNK_ROWS: usize = 32;

/// PostgreSQL advisory lock key of the outbox claim ("fbOUTBOX" in spirit).
const OUTBOX_LOCK_KEY: i64 = 0x6662_4f55_5442_4f58;
/// The channel the outbox trigger notifies (migration 0004).
pub(super) const OUTBOX_CHANNEL: &str = "ferrobank_outbox";

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("payment {what}: {e}"))
}

fn payment(row: &AnyRow) -> Result<(i64, Payment), StoreError> {
    let text = |name: &str| -> Result<String, StoreError> { row.try_get(name).map_err(map_err) };
    let opt =
        |name: &str| -> Result<Option<String>, StoreError> { row.try_get(name).map_err(map_err) };
    let uuid = |name: &str| -> Result<Uuid, StoreError> {
        Uuid::parse_str(&text(name)?).map_err(|e| corrupt(name, e))
    };
    let seq: i64 = row.try_get("seq").map_err(map_err)?;
    let beneficiary: Beneficiary =
        serde_json::from_str(&text("beneficiary")?).map_err(|e| corrupt("beneficiary", e))?;
    let risk: RiskDecision =
        serde_json::from_str(&text("risk")?).map_err(|e| corrupt("risk", e))?;
    let status = text("status")?;
    let hold_id = match opt("hold_id")? {
        Some(id) => Some(TransferId(Uuid::parse_str(&id).map_err(|e| corrupt("hold_id", e))?)),
        None => None,
    };
    let payment = Payment {
        id: PaymentId(uuid("id")?),
        owner: text("owner")?,
        debtor_account: AccountId(uuid("debtor_account")?),
        beneficiary,
        amount: Amount::new(row.try_get("amount").map_err(map_err)?)
            .map_err(|e| corrupt("amount", e))?,
        currency: Currency::parse(&text("currency")?).map_err(|e| corrupt("currency", e))?,
        reference: Reference::parse(&text("reference")?).map_err(|e| corrupt("reference", e))?,
        status: PaymentStatus::parse(&status).ok_or_else(|| corrupt("status", &status))?,
        risk,
        hold_id,
        idempotency_key: text("idempotency_key")?,
        failure_code: opt("failure_code")?,
        reviewer: opt("reviewer")?,
        created_by: text("created_by")?,
        created_at_ms: row.try_get("created_at_ms").map_err(map_err)?,
        updated_at_ms: row.try_get("updated_at_ms").map_err(map_err)?,
    };
    Ok((seq, payment))
}

fn json(value: &impl serde::Serialize) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// The payment statements of a write transaction (called from the ledger's `SqlTx`).
pub(super) async fn lock_payments(
    tx: &mut sqlx::Transaction<'static, Any>,
    backend: Backend,
    ids: &[PaymentId],
) -> Result<Vec<Payment>, StoreError> {
    let lock = match backend {
        Backend::Postgres => " ORDER BY id FOR UPDATE",
        Backend::Sqlite => "",
    };
    let mut found = Vec::with_capacity(ids.len());
    for (list, values) in in_lists(ids) {
        let sql = format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE id IN ({list}){lock}");
        let mut query = sqlx::query(&sql);
        for value in values {
            query = query.bind(value);
        }
        for row in query.fetch_all(&mut **tx).await.map_err(map_err)? {
            found.push(payment(&row)?.1);
        }
    }
    Ok(found)
}

pub(super) async fn insert_payments(
    tx: &mut sqlx::Transaction<'static, Any>,
    payments: &[&Payment],
) -> Result<(), StoreError> {
    const WIDTH: usize = 17;
    for chunk in payments.chunks(INSERT_CHUNK_ROWS) {
        let values: Vec<String> =
            (0..chunk.len()).map(|i| format!("({})", placeholders(i * WIDTH, WIDTH))).collect();
        let sql = format!(
            "INSERT INTO payments (id, owner, debtor_account, beneficiary, beneficiary_key, \
             amount, currency, reference, status, risk, hold_id, idempotency_key, failure_code, \
             reviewer, created_by, created_at_ms, updated_at_ms) VALUES {}",
            values.join(", ")
        );
        let mut query = sqlx::query(&sql);
        for p in chunk {
            query = query
                .bind(p.id.to_string())
                .bind(p.owner.clone())
                .bind(p.debtor_account.to_string())
                .bind(json(&p.beneficiary)?)
                .bind(p.beneficiary.key())
                .bind(p.amount.minor_units())
                .bind(p.currency.code())
                .bind(p.reference.as_str().to_owned())
                .bind(p.status.as_str())
                .bind(json(&p.risk)?)
                .bind(p.hold_id.map(|id| id.to_string()))
                .bind(p.idempotency_key.clone())
                .bind(p.failure_code.clone())
                .bind(p.reviewer.clone())
                .bind(p.created_by.clone())
                .bind(p.created_at_ms)
                .bind(p.updated_at_ms);
        }
        query.execute(&mut **tx).await.map_err(map_err)?;
    }
    Ok(())
}

pub(super) async fn update_payments(
    tx: &mut sqlx::Transaction<'static, Any>,
    payments: &[&Payment],
) -> Result<(), StoreError> {
    const COLUMNS: [&str; 5] = ["status", "hold_id", "failure_code", "reviewer", "updated_at_ms"];
    update_from_values(tx, "payments", "id", &COLUMNS, payments, |query, p| {
        query
            .bind(p.id.to_string())
            .bind(p.status.as_str())
            .bind(p.hold_id.map(|id| id.to_string()))
            .bind(p.failure_code.clone())
            .bind(p.reviewer.clone())
            .bind(p.updated_at_ms)
    })
    .await
}

pub(super) async fn inbox_seen(
    tx: &mut sqlx::Transaction<'static, Any>,
    consumer: &str,
    event_ids: &[String],
) -> Result<Vec<String>, StoreError> {
    let mut seen = Vec::new();
    for chunk in event_ids.chunks(256) {
        let sql = format!(
            "SELECT event_id FROM inbox WHERE consumer = $1 AND event_id IN ({})",
            placeholders(1, chunk.len())
        );
        let mut query = sqlx::query(&sql).bind(consumer.to_owned());
        for id in chunk {
            query = query.bind(id.clone());
        }
        for row in query.fetch_all(&mut **tx).await.map_err(map_err)? {
            seen.push(row.try_get("event_id").map_err(map_err)?);
        }
    }
    Ok(seen)
}

pub(super) async fn record_inbox(
    tx: &mut sqlx::Transaction<'static, Any>,
    consumer: &str,
    event_ids: &[String],
    now_ms: i64,
) -> Result<(), StoreError> {
    for chunk in event_ids.chunks(INSERT_CHUNK_ROWS) {
        let values: Vec<String> =
            (0..chunk.len()).map(|i| format!("({})", placeholders(i * 3, 3))).collect();
        let sql = format!(
            "INSERT INTO inbox (consumer, event_id, processed_at_ms) VALUES {}",
            values.join(", ")
        );
        let mut query = sqlx::query(&sql);
        for id in chunk {
            query = query.bind(consumer.to_owned()).bind(id.clone()).bind(now_ms);
        }
        query.execute(&mut **tx).await.map_err(map_err)?;
    }
    Ok(())
}

#[async_trait]
impl PaymentStore for SqlStore {
    async fn payment(&self, id: PaymentId) -> Result<Option<Payment>, StoreError> {
        let sql = format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(row.as_ref().map(payment).transpose()?.map(|(_, p)| p))
    }

    async fn payments(&self, q: &PaymentQuery) -> Result<PaymentPage, StoreError> {
        let mut conditions = Vec::new();
        let mut binds: Vec<String> = Vec::new();
        let mut ints: Vec<(usize, i64)> = Vec::new();
        let mut next = 1;
        if let Some(account) = q.account {
            conditions.push(format!("debtor_account = ${next}"));
            binds.push(account.to_string());
            next += 1;
        }
        if !q.statuses.is_empty() {
            let list = placeholders(next - 1, q.statuses.len());
            conditions.push(format!("status IN ({list})"));
            binds.extend(q.statuses.iter().map(|s| s.as_str().to_owned()));
            next += q.statuses.len();
        }
        let mut int_conditions = Vec::new();
        for (column, op, value) in [
            ("created_at_ms", ">=", q.from_ms),
            ("created_at_ms", "<", q.until_ms),
            ("seq", "<", q.before_seq),
        ] {
            if let Some(value) = value {
                int_conditions.push(format!("{column} {op} ${next}"));
                ints.push((next, value));
                next += 1;
            }
        }
        conditions.extend(int_conditions);
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        let limit = i64::from(q.limit.max(1));
        let sql = format!(
            "SELECT {PAYMENT_COLUMNS} FROM payments {filter} ORDER BY seq DESC LIMIT ${next}"
        );
        let mut query = sqlx::query(&sql);
        for value in binds {
            query = query.bind(value);
        }
        for (_, value) in ints {
            query = query.bind(value);
        }
        query = query.bind(limit + 1);
        let rows = query.fetch_all(&self.pool).await.map_err(map_err)?;
        let mut payments = Vec::with_capacity(rows.len());
        let mut last_seq = None;
        for row in rows.iter().take(q.limit.max(1) as usize) {
            let (seq, p) = payment(row)?;
            last_seq = Some(seq);
            payments.push(p);
        }
        let next_before = if rows.len() as i64 > limit { last_seq } else { None };
        Ok(PaymentPage { payments, next_before })
    }

    async fn beneficiary_seen(&self, owner: &str, key: &str) -> Result<bool, StoreError> {
        let row = sqlx::query(
            "SELECT 1 AS one FROM payments WHERE owner = $1 AND beneficiary_key = $2 \
             AND status IN ('pending', 'processing', 'completed') LIMIT 1",
        )
        .bind(owner.to_owned())
        .bind(key.to_owned())
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(row.is_some())
    }

    async fn stale(
        &self,
        statuses: &[PaymentStatus],
        updated_before_ms: i64,
        limit: u32,
    ) -> Result<Vec<Payment>, StoreError> {
        if statuses.is_empty() {
            return Ok(Vec::new());
        }
        let n = statuses.len();
        let sql = format!(
            "SELECT {PAYMENT_COLUMNS} FROM payments WHERE status IN ({}) AND updated_at_ms < ${} \
             ORDER BY updated_at_ms LIMIT ${}",
            placeholders(0, n),
            n + 1,
            n + 2
        );
        let mut query = sqlx::query(&sql);
        for status in statuses {
            query = query.bind(status.as_str());
        }
        let rows = query
            .bind(updated_before_ms)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        rows.iter().map(|row| payment(row).map(|(_, p)| p)).collect()
    }

    async fn count_by_status(&self) -> Result<Vec<(PaymentStatus, u64)>, StoreError> {
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM payments GROUP BY status")
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        let mut counts = Vec::with_capacity(rows.len());
        for row in rows {
            let status: String = row.try_get("status").map_err(map_err)?;
            let n: i64 = row.try_get("n").map_err(map_err)?;
            if let Some(status) = PaymentStatus::parse(&status) {
                counts.push((status, n.unsigned_abs()));
            }
        }
        Ok(counts)
    }
}

/// Rows claimed by a relay: the transaction holds the claim (advisory lock on PostgreSQL,
/// the write lock on SQLite) until it commits.
struct SqlClaim {
    /// PostgreSQL: the transaction holding the advisory lock. SQLite: none (one process,
    /// one relay; a read transaction kept open while publishing could not be upgraded to
    /// the write that marks the rows once a writer committed meanwhile).
    tx: Option<sqlx::Transaction<'static, Any>>,
    store: SqlStore,
    rows: Vec<OutboxRow>,
}

#[async_trait]
impl OutboxClaim for SqlClaim {
    fn rows(&self) -> &[OutboxRow] {
        &self.rows
    }

    async fn finish(mut self: Box<Self>, seqs: &[i64], now_ms: i64) -> Result<(), StoreError> {
        let mut tx = match self.tx.take() {
            Some(tx) => tx,
            None => self.store.begin_write().await?,
        };
        for chunk in seqs.chunks(512) {
            let sql = format!(
                "UPDATE outbox SET published_at_ms = $1 WHERE seq IN ({})",
                placeholders(1, chunk.len())
            );
            let mut query = sqlx::query(&sql).bind(now_ms);
            for seq in chunk {
                query = query.bind(*seq);
            }
            query.execute(&mut *tx).await.map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)
    }
}

#[async_trait]
impl OutboxStore for SqlStore {
    async fn claim_outbox(&self, limit: u32) -> Result<Option<Box<dyn OutboxClaim>>, StoreError> {
        let mut tx = match self.backend {
            Backend::Sqlite => None,
            Backend::Postgres => {
                let mut tx = self.pool.begin().await.map_err(map_err)?;
                let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
                    .bind(OUTBOX_LOCK_KEY)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(map_err)?;
                if !got {
                    return Ok(None);
                }
                Some(tx)
            }
        };
        let query = sqlx::query(
            "SELECT seq, event_id, kind, payload, created_at_ms, subject, traceparent \
             FROM outbox WHERE published_at_ms IS NULL ORDER BY seq LIMIT $1",
        )
        .bind(i64::from(limit.max(1)));
        let rows = match tx.as_mut() {
            Some(tx) => query.fetch_all(&mut **tx).await,
            None => query.fetch_all(&self.pool).await,
        }
        .map_err(map_err)?;
        let rows = rows
            .iter()
            .map(|row| {
                Ok(OutboxRow {
                    seq: row.try_get("seq").map_err(map_err)?,
                    event_id: row.try_get("event_id").map_err(map_err)?,
                    kind: row.try_get("kind").map_err(map_err)?,
                    payload: row.try_get("payload").map_err(map_err)?,
                    created_at_ms: row.try_get("created_at_ms").map_err(map_err)?,
                    subject: row.try_get("subject").map_err(map_err)?,
                    traceparent: row.try_get("traceparent").map_err(map_err)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Some(Box::new(SqlClaim { tx, store: self.clone(), rows })))
    }

    async fn outbox_changed(&self, max_wait_ms: u64) {
        let _ =
            tokio::time::timeout(Duration::from_millis(max_wait_ms), self.outbox_signal.notified())
                .await;
    }

    async fn outbox_backlog(&self) -> Result<u64, StoreError> {
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE published_at_ms IS NULL")
                .fetch_one(&self.pool)
                .await
                .map_err(map_err)?;
        Ok(n.unsigned_abs())
    }

    async fn purge_inbox(&self, before_ms: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM inbox WHERE processed_at_ms < $1")
            .bind(before_ms)
            .execute(&self.write_pool)
            .await
            .map_err(map_err)?;
        Ok(done.rows_affected())
    }

    async fn purge_outbox(&self, before_ms: i64) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "DELETE FROM outbox WHERE published_at_ms IS NOT NULL AND published_at_ms < $1",
        )
        .bind(before_ms)
        .execute(&self.write_pool)
        .await
        .map_err(map_err)?;
        Ok(done.rows_affected())
    }
}

impl SqlStore {
    /// Wakes this process's relay when another process commits to the outbox: listens on
    /// PostgreSQL's `ferrobank_outbox` channel until the task is aborted, reconnecting
    /// after failures. SQLite has one process; its commits signal in-process.
    pub async fn listen_for_outbox(self, url: String) {
        if self.backend != Backend::Postgres {
            return;
        }
        loop {
            match sqlx::postgres::PgListener::connect(&url).await {
                Ok(mut listener) => {
                    if let Err(error) = listener.listen(OUTBOX_CHANNEL).await {
                        tracing::warn!(%error, "LISTEN ferrobank_outbox failed");
                    } else {
                        while listener.recv().await.is_ok() {
                            self.outbox_signal.notify_one();
                        }
                    }
                }
                Err(error) => tracing::warn!(%error, "outbox listener cannot connect"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
