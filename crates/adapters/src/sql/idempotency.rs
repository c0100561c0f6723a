//! Idempotency keys in the ledger's database.

use async_trait::async_trait;
use ferrobank_application::{IdempotencyStore, KeyClaim, StoreError};
use sqlx::Row;

use super::{SqlStore, map_err};

#[async_trait]
impl IdempotencyStore for SqlStore {
    async fn claim(
        &self,
        scope: &str,
        key: &str,
        request_hash: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<KeyClaim, StoreError> {
        let locked_until_ms = now_ms.saturating_add(lease_ms);
        let inserted = sqlx::query(
            "INSERT INTO idempotency_keys (scope, key, request_hash, locked_until_ms, created_at_ms) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (scope, key) DO NOTHING",
        )
        .bind(scope)
        .bind(key)
        .bind(request_hash)
        .bind(locked_until_ms)
        .bind(now_ms)
        .execute(&self.write_pool)
        .await
        .map_err(map_err)?;
        if inserted.rows_affected() == 1 {
            return Ok(KeyClaim::Claimed);
        }
        let row = sqlx::query(
            "SELECT request_hash, status, response_body, locked_until_ms FROM idempotency_keys \
             WHERE scope = $1 AND key = $2",
        )
        .bind(scope)
        .bind(key)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        let Some(row) = row else {
            // Released between our insert and read: the caller may simply try again.
            return Ok(KeyClaim::InFlight);
        };
        let stored_hash: String = row.try_get("request_hash").map_err(map_err)?;
        if stored_hash != request_hash {
            return Ok(KeyClaim::Mismatch);
        }
        let status: Option<i64> = row.try_get("status").map_err(map_err)?;
        if let Some(status) = status {
            let body: Option<String> = row.try_get("response_body").map_err(map_err)?;
            return Ok(KeyClaim::Replay {
                status: u16::try_from(status).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                body: body.unwrap_or_default(),
            });
        }
        let held_until: i64 = row.try_get("locked_until_ms").map_err(map_err)?;
        if held_until > now_ms {
            return Ok(KeyClaim::InFlight);
        }
        // The first holder's lease ran out (it crashed): take the key over, atomically.
        let taken = sqlx::query(
            "UPDATE idempotency_keys SET locked_until_ms = $1 \
             WHERE scope = $2 AND key = $3 AND locked_until_ms = $4 AND status IS NULL",
        )
        .bind(locked_until_ms)
        .bind(scope)
        .bind(key)
        .bind(held_until)
        .execute(&self.write_pool)
        .await
        .map_err(map_err)?;
        Ok(if taken.rows_affected() == 1 { KeyClaim::Claimed } else { KeyClaim::InFlight })
    }

    async fn finish(
        &self,
        scope: &str,
        key: &str,
        status: u16,
        body: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE idempotency_keys SET status = $1, response_body = $2 WHERE scope = $3 AND key = $4",
        )
        .bind(i64::from(status))
        .bind(body)
        .bind(scope)
        .bind(key)
        .execute(&self.write_pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn release(&self, scope: &str, key: &str) -> Result<(), StoreError> {
        sqlx::query(
            "DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2 AND status IS NULL",
        )
        .bind(scope)
        .bind(key)
        .execute(&self.write_pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn purge(&self, before_ms: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM idempotency_keys WHERE created_at_ms < $1")
            .bind(before_ms)
            .execute(&self.write_pool)
            .await
            .map_err(map_err)?;
        Ok(done.rows_affected())
    }
}
