//! The enriched activity log on SQL: the table `activity`, the event id as primary key,
//! so a redelivered event inserts nothing (`ON CONFLICT DO NOTHING`, on both backends).

use async_trait::async_trait;
use ferrobank_application::activity::activity_page_limit;
use ferrobank_application::{
    ActivityCursor, ActivityEntry, ActivityLog, ActivityPage, ActivityQuery, StoreError,
};
use sqlx::Row;
use sqlx::any::AnyRow;
use uuid::Uuid;

use super::{SqlStore, map_err, placeholders};

/// Entries per multi-row `INSERT`.
const INSERT_CHUNK_ROWS: usize = 64;

fn entry(row: &AnyRow) -> Result<ActivityEntry, StoreError> {
    let id: String = row.try_get("id").map_err(map_err)?;
    let document: String = row.try_get("document").map_err(map_err)?;
    Ok(ActivityEntry {
        id: Uuid::parse_str(&id).map_err(|e| StoreError::Corrupt(format!("activity id: {e}")))?,
        payment_id: row.try_get("payment_id").map_err(map_err)?,
        at_ms: row.try_get("at_ms").map_err(map_err)?,
        action: row.try_get("action").map_err(map_err)?,
        summary: row.try_get("summary").map_err(map_err)?,
        document: serde_json::from_str(&document)
            .map_err(|e| StoreError::Corrupt(format!("activity {id} document: {e}")))?,
    })
}

#[async_trait]
impl ActivityLog for SqlStore {
    async fn append_all(&self, entries: &[ActivityEntry]) -> Result<u64, StoreError> {
        const WIDTH: usize = 6;
        for entry in entries {
            entry.validate()?;
        }
        let mut tx = self.begin_write().await?;
        let mut new = 0;
        for chunk in entries.chunks(INSERT_CHUNK_ROWS) {
            let values: Vec<String> =
                (0..chunk.len()).map(|i| format!("({})", placeholders(i * WIDTH, WIDTH))).collect();
            let sql = format!(
                "INSERT INTO activity (id, payment_id, at_ms, action, summary, document) \
                 VALUES {} ON CONFLICT (id) DO NOTHING",
                values.join(", ")
            );
            let mut query = sqlx::query(&sql);
            for entry in chunk {
                query = query
                    .bind(entry.id.to_string())
                    .bind(entry.payment_id.clone())
                    .bind(entry.at_ms)
                    .bind(entry.action.clone())
                    .bind(entry.summary.clone())
                    .bind(entry.document.to_string());
            }
            new += query.execute(&mut *tx).await.map_err(map_err)?.rows_affected();
        }
        tx.commit().await.map_err(map_err)?;
        Ok(new)
    }

    async fn query(&self, query: &ActivityQuery) -> Result<ActivityPage, StoreError> {
        let limit = activity_page_limit(query.limit);
        let mut conditions = Vec::new();
        let mut next = 1;
        if query.payment_id.is_some() {
            conditions.push(format!("payment_id = ${next}"));
            next += 1;
        }
        if query.after.is_some() {
            conditions.push(format!(
                "(at_ms > ${a} OR (at_ms = ${a} AND id > ${b}))",
                a = next,
                b = next + 1
            ));
            next += 2;
        }
        let filter = match conditions.is_empty() {
            true => String::new(),
            false => format!("WHERE {}", conditions.join(" AND ")),
        };
        let sql = format!(
            "SELECT id, payment_id, at_ms, action, summary, document FROM activity {filter} \
             ORDER BY at_ms, id LIMIT ${next}"
        );
        let mut select = sqlx::query(&sql);
        if let Some(payment_id) = &query.payment_id {
            select = select.bind(payment_id.clone());
        }
        if let Some(after) = query.after {
            select = select.bind(after.at_ms).bind(after.id.to_string());
        }
        // One more than asked tells whether another page follows.
        let rows =
            select.bind(i64::from(limit) + 1).fetch_all(&self.pool).await.map_err(map_err)?;
        let mut entries = rows.iter().map(entry).collect::<Result<Vec<_>, _>>()?;
        let more = entries.len() > limit as usize;
        entries.truncate(limit as usize);
        let next_after = if more { entries.last().map(ActivityCursor::after) } else { None };
        Ok(ActivityPage { entries, next_after })
    }
}
