//! The notification store on SQL: endpoints, the in-app inbox, webhook deliveries and
//! their log, and emails.
//!
//! Unique keys carry the idempotency of event handling: `(owner, event_id)` for
//! notifications and emails and `(endpoint_id, event_id)` for deliveries, inserted with
//! `ON CONFLICT DO NOTHING` in one transaction. Deliverers claim due rows with
//! `FOR UPDATE SKIP LOCKED` on PostgreSQL (deliveries are independent, so replicas simply
//! take different ones; SQLite has one writer anyway) and push their due time past the
//! attempt's lease, so a crashed deliverer's claims come due again.

use std::collections::HashSet;

use async_trait::async_trait;
use ferrobank_application::StoreError;
use ferrobank_application::notifications::{
    AttemptRecord, ClaimedDelivery, ClaimedEmail, DeliveryAttempt, DeliveryPage, DeliveryStatus,
    DeliveryWithLog, EmailDelivery, EventRecord, EventRecorded, MAX_LISTED_ATTEMPTS,
    MAX_LISTED_ENDPOINTS, MAX_SERIES, Notification, NotificationPage, NotificationStore,
    ReplayOutcome, WebhookDelivery, WebhookEndpoint,
};
use sqlx::Row;
use sqlx::any::AnyRow;
use uuid::Uuid;

use super::ledger::in_lists;
use super::{Backend, SqlStore, map_err, placeholders};

/// First key of the per-owner advisory lock that serializes endpoint registration on
/// PostgreSQL (the second is the owner's hash).
const ENDPOINT_LOCK_KEY: i32 = 7_212_348;

const ENDPOINT_COLUMNS: &str =
    "id, owner, url, event_types, description, secret, created_at_ms, disabled_at_ms";
const DELIVERY_COLUMNS: &str = "id, endpoint_id, owner, event_id, event_type, message_id, \
     payload, status, series, attempts, next_attempt_at_ms, created_at_ms, updated_at_ms, \
     last_status_code, last_error";
const ATTEMPT_COLUMNS: &str =
    "delivery_id, series, attempt, at_ms, duration_ms, status_code, error, response_prefix";
const EMAIL_COLUMNS: &str = "id, owner, event_id, event_type, recipient, subject, body, \
     status, attempts, next_attempt_at_ms, created_at_ms, updated_at_ms, last_error";
/// Notifications per `INSERT` statement.
const NOTIFICATION_CHUNK_ROWS: usize = 64;
const NOTIFICATION_COLUMNS: &str =
    "id, owner, event_id, event_type, payment_id, title, data, created_at_ms, read_at_ms";

fn corrupt(what: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {detail}"))
}

fn uuid(row: &AnyRow, column: &str) -> Result<Uuid, StoreError> {
    let text: String = row.try_get(column).map_err(map_err)?;
    Uuid::parse_str(&text).map_err(|e| corrupt(column, e))
}

fn count(row: &AnyRow, column: &str) -> Result<u32, StoreError> {
    let value: i64 = row.try_get(column).map_err(map_err)?;
    u32::try_from(value).map_err(|e| corrupt(column, e))
}

fn status_code(row: &AnyRow, column: &str) -> Result<Option<u16>, StoreError> {
    let value: Option<i64> = row.try_get(column).map_err(map_err)?;
    value.map(|v| u16::try_from(v).map_err(|e| corrupt(column, e))).transpose()
}

fn endpoint(row: &AnyRow) -> Result<WebhookEndpoint, StoreError> {
    let types: String = row.try_get("event_types").map_err(map_err)?;
    Ok(WebhookEndpoint {
        id: uuid(row, "id")?,
        owner: row.try_get("owner").map_err(map_err)?,
        url: row.try_get("url").map_err(map_err)?,
        event_types: serde_json::from_str(&types).map_err(|e| corrupt("event_types", e))?,
        description: row.try_get("description").map_err(map_err)?,
        secret: row.try_get("secret").map_err(map_err)?,
        created_at_ms: row.try_get("created_at_ms").map_err(map_err)?,
        disabled_at_ms: row.try_get("disabled_at_ms").map_err(map_err)?,
    })
}

fn delivery(row: &AnyRow) -> Result<WebhookDelivery, StoreError> {
    let status: String = row.try_get("status").map_err(map_err)?;
    Ok(WebhookDelivery {
        id: uuid(row, "id")?,
        endpoint_id: uuid(row, "endpoint_id")?,
        owner: row.try_get("owner").map_err(map_err)?,
        event_id: row.try_get("event_id").map_err(map_err)?,
        event_type: row.try_get("event_type").map_err(map_err)?,
        message_id: row.try_get("message_id").map_err(map_err)?,
        payload: row.try_get("payload").map_err(map_err)?,
        status: DeliveryStatus::parse(&status).ok_or_else(|| corrupt("status", &status))?,
        series: count(row, "series")?,
        attempts: count(row, "attempts")?,
        next_attempt_at_ms: row.try_get("next_attempt_at_ms").map_err(map_err)?,
        created_at_ms: row.try_get("created_at_ms").map_err(map_err)?,
        updated_at_ms: row.try_get("updated_at_ms").map_err(map_err)?,
        last_status_code: status_code(row, "last_status_code")?,
        last_error: row.try_get("last_error").map_err(map_err)?,
    })
}

fn email(row: &AnyRow) -> Result<EmailDelivery, StoreError> {
    let status: String = row.try_get("status").map_err(map_err)?;
    Ok(EmailDelivery {
        id: uuid(row, "id")?,
        owner: row.try_get("owner").map_err(map_err)?,
        event_id: row.try_get("event_id").map_err(map_err)?,
        event_type: row.try_get("event_type").map_err(map_err)?,
        recipient: row.try_get("recipient").map_err(map_err)?,
        subject: row.try_get("subject").map_err(map_err)?,
        body: row.try_get("body").map_err(map_err)?,
        status: DeliveryStatus::parse(&status).ok_or_else(|| corrupt("status", &status))?,
        attempts: count(row, "attempts")?,
        next_attempt_at_ms: row.try_get("next_attempt_at_ms").map_err(map_err)?,
        created_at_ms: row.try_get("created_at_ms").map_err(map_err)?,
        updated_at_ms: row.try_get("updated_at_ms").map_err(map_err)?,
        last_error: row.try_get("last_error").map_err(map_err)?,
    })
}

fn attempt(row: &AnyRow) -> Result<DeliveryAttempt, StoreError> {
    let duration_ms: i64 = row.try_get("duration_ms").map_err(map_err)?;
    Ok(DeliveryAttempt {
        delivery_id: uuid(row, "delivery_id")?,
        series: count(row, "series")?,
        attempt: count(row, "attempt")?,
        at_ms: row.try_get("at_ms").map_err(map_err)?,
        duration_ms: u64::try_from(duration_ms).map_err(|e| corrupt("duration_ms", e))?,
        status_code: status_code(row, "status_code")?,
        error: row.try_get("error").map_err(map_err)?,
        response_prefix: row.try_get("response_prefix").map_err(map_err)?,
    })
}

fn notification(row: &AnyRow) -> Result<Notification, StoreError> {
    let data: String = row.try_get("data").map_err(map_err)?;
    Ok(Notification {
        id: uuid(row, "id")?,
        owner: row.try_get("owner").map_err(map_err)?,
        event_id: row.try_get("event_id").map_err(map_err)?,
        event_type: row.try_get("event_type").map_err(map_err)?,
        payment_id: row.try_get("payment_id").map_err(map_err)?,
        title: row.try_get("title").map_err(map_err)?,
        data: serde_json::from_str(&data).map_err(|e| corrupt("data", e))?,
        created_at_ms: row.try_get("created_at_ms").map_err(map_err)?,
        read_at_ms: row.try_get("read_at_ms").map_err(map_err)?,
    })
}

fn id_text(id: Uuid) -> String {
    id.hyphenated().to_string()
}

/// The next page's cursor: the last id when one more row than asked came back.
fn page<T>(mut rows: Vec<T>, limit: u32, id: impl Fn(&T) -> Uuid) -> (Vec<T>, Option<Uuid>) {
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next = if more { rows.last().map(id) } else { None };
    (rows, next)
}

impl SqlStore {
    /// The latest [`MAX_LISTED_ATTEMPTS`] attempts of one delivery, oldest first.
    async fn latest_attempts(&self, delivery_id: Uuid) -> Result<Vec<DeliveryAttempt>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {ATTEMPT_COLUMNS} FROM webhook_attempts WHERE delivery_id = $1 \
             ORDER BY series DESC, attempt DESC LIMIT $2"
        ))
        .bind(id_text(delivery_id))
        .bind(i64::from(MAX_LISTED_ATTEMPTS))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        let mut attempts = rows.iter().map(attempt).collect::<Result<Vec<_>, _>>()?;
        attempts.reverse();
        Ok(attempts)
    }

    async fn delivery_in(
        conn: &mut sqlx::AnyConnection,
        id: Uuid,
    ) -> Result<Option<WebhookDelivery>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE id = $1"
        ))
        .bind(id_text(id))
        .fetch_optional(conn)
        .await
        .map_err(map_err)?;
        row.as_ref().map(delivery).transpose()
    }

    /// Claims up to `max` pending rows of `table` (webhook or email deliveries) due at
    /// `now_ms`: each gets a fresh claim token and its due time pushed to `lease_until_ms`.
    /// Returns the open transaction (to read more under the same locks) and the rows as
    /// they were, with their claims; `None` when nothing is due.
    async fn claim_due_rows(
        &self,
        table: &str,
        columns: &str,
        now_ms: i64,
        lease_until_ms: i64,
        max: u32,
    ) -> Result<Option<(sqlx::Transaction<'static, sqlx::Any>, Vec<(AnyRow, Uuid)>)>, StoreError>
    {
        let lock = match self.backend {
            // Deliveries are independent: a replica skips rows another one holds.
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        // A read first: an idle deliverer polling SQLite must not take the write lock.
        let due: Option<String> = sqlx::query_scalar(&format!(
            "SELECT id FROM {table} WHERE status = 'pending' AND next_attempt_at_ms <= $1 LIMIT 1"
        ))
        .bind(now_ms)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        if due.is_none() {
            return Ok(None);
        }
        let mut tx = self.begin_write().await?;
        let rows = sqlx::query(&format!(
            "SELECT {columns} FROM {table} WHERE status = 'pending' AND next_attempt_at_ms <= $1 \
             ORDER BY next_attempt_at_ms LIMIT $2{lock}"
        ))
        .bind(now_ms)
        .bind(i64::from(max))
        .fetch_all(&mut *tx)
        .await
        .map_err(map_err)?;
        let mut claimed = Vec::with_capacity(rows.len());
        for row in rows {
            let claim = Uuid::new_v4();
            let id: String = row.try_get("id").map_err(map_err)?;
            sqlx::query(&format!(
                "UPDATE {table} SET claim = $1, next_attempt_at_ms = $2 WHERE id = $3"
            ))
            .bind(id_text(claim))
            .bind(lease_until_ms)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
            claimed.push((row, claim));
        }
        Ok(Some((tx, claimed)))
    }
}

#[async_trait]
impl NotificationStore for SqlStore {
    async fn insert_endpoint(
        &self,
        endpoint: &WebhookEndpoint,
        max_active: usize,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        if self.backend == Backend::Postgres {
            // Two registrations of one owner must not both see room for one more.
            sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
                .bind(ENDPOINT_LOCK_KEY)
                .bind(endpoint.owner.as_str())
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        }
        let active: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM webhook_endpoints WHERE owner = $1 AND disabled_at_ms IS NULL",
        )
        .bind(endpoint.owner.as_str())
        .fetch_one(&mut *tx)
        .await
        .map_err(map_err)?;
        if usize::try_from(active).unwrap_or(usize::MAX) >= max_active {
            return Ok(false);
        }
        let types =
            serde_json::to_string(&endpoint.event_types).map_err(|e| corrupt("event_types", e))?;
        sqlx::query(&format!(
            "INSERT INTO webhook_endpoints ({ENDPOINT_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ))
        .bind(id_text(endpoint.id))
        .bind(endpoint.owner.as_str())
        .bind(endpoint.url.as_str())
        .bind(types)
        .bind(endpoint.description.clone())
        .bind(endpoint.secret.as_str())
        .bind(endpoint.created_at_ms)
        .bind(endpoint.disabled_at_ms)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(true)
    }

    async fn endpoint(&self, id: Uuid) -> Result<Option<WebhookEndpoint>, StoreError> {
        let row =
            sqlx::query(&format!("SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1"))
                .bind(id_text(id))
                .fetch_optional(&self.pool)
                .await
                .map_err(map_err)?;
        row.as_ref().map(endpoint).transpose()
    }

    async fn endpoints(&self, owner: &str) -> Result<Vec<WebhookEndpoint>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE owner = $1 \
             ORDER BY id DESC LIMIT $2"
        ))
        .bind(owner)
        .bind(i64::from(MAX_LISTED_ENDPOINTS))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter().map(endpoint).collect()
    }

    async fn disable_endpoint(&self, id: Uuid, now_ms: i64) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE webhook_endpoints SET disabled_at_ms = $1 \
             WHERE id = $2 AND disabled_at_ms IS NULL",
        )
        .bind(now_ms)
        .bind(id_text(id))
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        // A claim held meanwhile is dropped with the rest: its attempt is not recorded.
        sqlx::query(
            "UPDATE webhook_deliveries SET status = 'cancelled', claim = NULL, \
             next_attempt_at_ms = NULL, updated_at_ms = $1 \
             WHERE endpoint_id = $2 AND status = 'pending'",
        )
        .bind(now_ms)
        .bind(id_text(id))
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)
    }

    async fn active_endpoints(&self, owners: &[&str]) -> Result<Vec<WebhookEndpoint>, StoreError> {
        let mut found = Vec::new();
        for (list, values) in in_lists(owners) {
            let sql = format!(
                "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints \
                 WHERE owner IN ({list}) AND disabled_at_ms IS NULL"
            );
            let mut query = sqlx::query(&sql);
            for value in values {
                query = query.bind(value);
            }
            for row in query.fetch_all(&self.pool).await.map_err(map_err)? {
                found.push(endpoint(&row)?);
            }
        }
        Ok(found)
    }

    async fn record_events(
        &self,
        events: &[EventRecord],
    ) -> Result<Vec<EventRecorded>, StoreError> {
        let mut tx = self.begin_write().await?;
        // The notifications, one statement per chunk; RETURNING names those inserted (an
        // event recorded before is skipped by its unique key).
        let mut created: HashSet<(String, String)> = HashSet::new();
        for chunk in events.chunks(NOTIFICATION_CHUNK_ROWS) {
            // Padded to a power of two by repeating the last row (the copy conflicts with
            // it and is skipped), so the statement cache sees a handful of shapes.
            let padded = chunk.len().next_power_of_two();
            let width = 9;
            let values: Vec<String> =
                (0..padded).map(|i| format!("({})", placeholders(i * width, width))).collect();
            let sql = format!(
                "INSERT INTO notifications ({NOTIFICATION_COLUMNS}) VALUES {} \
                 ON CONFLICT (owner, event_id) DO NOTHING RETURNING owner, event_id",
                values.join(", ")
            );
            let mut query = sqlx::query(&sql);
            let last = chunk.len() - 1;
            for i in 0..padded {
                let n = &chunk[i.min(last)].notification;
                let data = serde_json::to_string(&n.data).map_err(|e| corrupt("data", e))?;
                query = query
                    .bind(id_text(n.id))
                    .bind(n.owner.as_str())
                    .bind(n.event_id.as_str())
                    .bind(n.event_type.as_str())
                    .bind(n.payment_id.clone())
                    .bind(n.title.as_str())
                    .bind(data)
                    .bind(n.created_at_ms)
                    .bind(n.read_at_ms);
            }
            for row in query.fetch_all(&mut *tx).await.map_err(map_err)? {
                created.insert((
                    row.try_get("owner").map_err(map_err)?,
                    row.try_get("event_id").map_err(map_err)?,
                ));
            }
        }
        let mut outcomes = Vec::with_capacity(events.len());
        for EventRecord { notification, deliveries, email } in events {
            let key = (notification.owner.clone(), notification.event_id.clone());
            let mut recorded = EventRecorded {
                // Only the first of an event given twice created it.
                notification_created: created.remove(&key),
                deliveries_created: 0,
                email_created: None,
            };
            for d in deliveries {
                let inserted = sqlx::query(&format!(
                    "INSERT INTO webhook_deliveries ({DELIVERY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, \
                     $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
                     ON CONFLICT (endpoint_id, event_id) DO NOTHING"
                ))
                .bind(id_text(d.id))
                .bind(id_text(d.endpoint_id))
                .bind(d.owner.as_str())
                .bind(d.event_id.as_str())
                .bind(d.event_type.as_str())
                .bind(d.message_id.as_str())
                .bind(d.payload.as_str())
                .bind(d.status.as_str())
                .bind(i64::from(d.series))
                .bind(i64::from(d.attempts))
                .bind(d.next_attempt_at_ms)
                .bind(d.created_at_ms)
                .bind(d.updated_at_ms)
                .bind(d.last_status_code.map(i64::from))
                .bind(d.last_error.clone())
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
                if inserted.rows_affected() == 1 {
                    recorded.deliveries_created += 1;
                }
            }
            if let Some(e) = email {
                let inserted = sqlx::query(&format!(
                    "INSERT INTO email_deliveries ({EMAIL_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, \
                     $7, $8, $9, $10, $11, $12, $13) ON CONFLICT (owner, event_id) DO NOTHING"
                ))
                .bind(id_text(e.id))
                .bind(e.owner.as_str())
                .bind(e.event_id.as_str())
                .bind(e.event_type.as_str())
                .bind(e.recipient.clone())
                .bind(e.subject.as_str())
                .bind(e.body.as_str())
                .bind(e.status.as_str())
                .bind(i64::from(e.attempts))
                .bind(e.next_attempt_at_ms)
                .bind(e.created_at_ms)
                .bind(e.updated_at_ms)
                .bind(e.last_error.clone())
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
                recorded.email_created = (inserted.rows_affected() == 1).then_some(e.status);
            }
            outcomes.push(recorded);
        }
        tx.commit().await.map_err(map_err)?;
        Ok(outcomes)
    }

    async fn notification(&self, id: Uuid) -> Result<Option<Notification>, StoreError> {
        let row =
            sqlx::query(&format!("SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE id = $1"))
                .bind(id_text(id))
                .fetch_optional(&self.pool)
                .await
                .map_err(map_err)?;
        row.as_ref().map(notification).transpose()
    }

    async fn notifications(
        &self,
        owner: &str,
        unread_only: bool,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<NotificationPage, StoreError> {
        let unread = if unread_only { " AND read_at_ms IS NULL" } else { "" };
        let cursor = if after.is_some() { " AND id < $3" } else { "" };
        let sql = format!(
            "SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE owner = $1{unread}{cursor} \
             ORDER BY id DESC LIMIT $2"
        );
        // One more than asked tells whether another page follows.
        let mut query = sqlx::query(&sql).bind(owner).bind(i64::from(limit) + 1);
        if let Some(after) = after {
            query = query.bind(id_text(after));
        }
        let rows = query.fetch_all(&self.pool).await.map_err(map_err)?;
        let items = rows.iter().map(notification).collect::<Result<Vec<_>, _>>()?;
        let (items, next_after) = page(items, limit, |n| n.id);
        Ok(NotificationPage { items, next_after })
    }

    async fn mark_read(&self, id: Uuid, now_ms: i64) -> Result<Option<Notification>, StoreError> {
        sqlx::query(
            "UPDATE notifications SET read_at_ms = $1 WHERE id = $2 AND read_at_ms IS NULL",
        )
        .bind(now_ms)
        .bind(id_text(id))
        .execute(&self.write_pool)
        .await
        .map_err(map_err)?;
        self.notification(id).await
    }

    async fn delivery(&self, id: Uuid) -> Result<Option<WebhookDelivery>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        Self::delivery_in(&mut conn, id).await
    }

    async fn deliveries(
        &self,
        endpoint_id: Uuid,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<DeliveryPage, StoreError> {
        let cursor = if after.is_some() { " AND id < $3" } else { "" };
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE endpoint_id = $1{cursor} \
             ORDER BY id DESC LIMIT $2"
        );
        let mut query = sqlx::query(&sql).bind(id_text(endpoint_id)).bind(i64::from(limit) + 1);
        if let Some(after) = after {
            query = query.bind(id_text(after));
        }
        let rows = query.fetch_all(&self.pool).await.map_err(map_err)?;
        let deliveries = rows.iter().map(delivery).collect::<Result<Vec<_>, _>>()?;
        let (deliveries, next_after) = page(deliveries, limit, |d| d.id);
        let mut items = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            let attempts = self.latest_attempts(delivery.id).await?;
            items.push(DeliveryWithLog { delivery, attempts });
        }
        Ok(DeliveryPage { items, next_after })
    }

    async fn replay(&self, id: Uuid, now_ms: i64) -> Result<ReplayOutcome, StoreError> {
        let mut tx = self.begin_write().await?;
        let lock = match self.backend {
            Backend::Postgres => " FOR UPDATE",
            Backend::Sqlite => "",
        };
        let row = sqlx::query(&format!(
            "SELECT status, series FROM webhook_deliveries WHERE id = $1{lock}"
        ))
        .bind(id_text(id))
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?;
        let Some(row) = row else {
            return Ok(ReplayOutcome::NotFound);
        };
        let status: String = row.try_get("status").map_err(map_err)?;
        if status == DeliveryStatus::Pending.as_str() {
            return Ok(ReplayOutcome::InProgress);
        }
        if count(&row, "series")? >= MAX_SERIES {
            return Ok(ReplayOutcome::TooManyReplays);
        }
        sqlx::query(
            "UPDATE webhook_deliveries SET status = 'pending', series = series + 1, attempts = 0, \
             next_attempt_at_ms = $1, claim = NULL, updated_at_ms = $1, \
             last_status_code = NULL, last_error = NULL WHERE id = $2",
        )
        .bind(now_ms)
        .bind(id_text(id))
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        let replayed = Self::delivery_in(&mut tx, id).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(replayed.map_or(ReplayOutcome::NotFound, |d| ReplayOutcome::Replayed(Box::new(d))))
    }

    async fn claim_due(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        max: u32,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        let Some((mut tx, rows)) = self
            .claim_due_rows("webhook_deliveries", DELIVERY_COLUMNS, now_ms, lease_until_ms, max)
            .await?
        else {
            return Ok(Vec::new());
        };
        let mut claimed = Vec::with_capacity(rows.len());
        for (row, claim) in rows {
            let delivery = delivery(&row)?;
            let row = sqlx::query(&format!(
                "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1"
            ))
            .bind(id_text(delivery.endpoint_id))
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
            claimed.push(ClaimedDelivery { endpoint: endpoint(&row)?, delivery, claim });
        }
        tx.commit().await.map_err(map_err)?;
        Ok(claimed)
    }

    async fn claim_due_emails(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        max: u32,
    ) -> Result<Vec<ClaimedEmail>, StoreError> {
        let Some((tx, rows)) = self
            .claim_due_rows("email_deliveries", EMAIL_COLUMNS, now_ms, lease_until_ms, max)
            .await?
        else {
            return Ok(Vec::new());
        };
        let claimed = rows
            .iter()
            .map(|(row, claim)| Ok(ClaimedEmail { email: email(row)?, claim: *claim }))
            .collect::<Result<Vec<_>, StoreError>>()?;
        tx.commit().await.map_err(map_err)?;
        Ok(claimed)
    }

    async fn record_email_attempt(
        &self,
        claim: Uuid,
        email: &EmailDelivery,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            "UPDATE email_deliveries SET status = $1, attempts = $2, next_attempt_at_ms = $3, \
             claim = NULL, updated_at_ms = $4, last_error = $5 WHERE id = $6 AND claim = $7",
        )
        .bind(email.status.as_str())
        .bind(i64::from(email.attempts))
        .bind(email.next_attempt_at_ms)
        .bind(now_ms)
        .bind(email.last_error.clone())
        .bind(id_text(email.id))
        .bind(id_text(claim))
        .execute(&self.write_pool)
        .await
        .map_err(map_err)?;
        Ok(updated.rows_affected() == 1)
    }

    async fn email_delivery(
        &self,
        owner: &str,
        event_id: &str,
    ) -> Result<Option<EmailDelivery>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {EMAIL_COLUMNS} FROM email_deliveries WHERE owner = $1 AND event_id = $2"
        ))
        .bind(owner)
        .bind(event_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.as_ref().map(email).transpose()
    }

    async fn record_attempt(
        &self,
        claim: Uuid,
        record: &AttemptRecord,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let a = &record.attempt;
        let mut tx = self.begin_write().await?;
        let updated = sqlx::query(
            "UPDATE webhook_deliveries SET status = $1, attempts = $2, next_attempt_at_ms = $3, \
             claim = NULL, updated_at_ms = $4, last_status_code = $5, last_error = $6 \
             WHERE id = $7 AND claim = $8 AND series = $9",
        )
        .bind(record.status.as_str())
        .bind(i64::from(a.attempt))
        .bind(record.next_attempt_at_ms)
        .bind(now_ms)
        .bind(a.status_code.map(i64::from))
        .bind(a.error.clone())
        .bind(id_text(a.delivery_id))
        .bind(id_text(claim))
        .bind(i64::from(a.series))
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        if updated.rows_affected() != 1 {
            return Ok(false);
        }
        sqlx::query(&format!(
            "INSERT INTO webhook_attempts ({ATTEMPT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (delivery_id, series, attempt) DO NOTHING"
        ))
        .bind(id_text(a.delivery_id))
        .bind(i64::from(a.series))
        .bind(i64::from(a.attempt))
        .bind(a.at_ms)
        .bind(i64::try_from(a.duration_ms).unwrap_or(i64::MAX))
        .bind(a.status_code.map(i64::from))
        .bind(a.error.clone())
        .bind(a.response_prefix.clone())
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(true)
    }
}
