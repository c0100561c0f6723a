//! The built-in identity provider's durable state: realm documents and signing keys.

use ferrobank_application::StoreError;
use sqlx::Row;

use super::{SqlStore, map_err};

/// A signing key as stored: the algorithm name and the private key (DER, base64).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    /// Key id, as in the JWT header and the JWKS.
    pub kid: String,
    /// JWS algorithm (`RS256`, `ES256`, `EdDSA`).
    pub algorithm: String,
    /// Private key, DER in base64.
    pub private_key: String,
    /// When the key was made.
    pub created_at_ms: i64,
    /// When a newer key replaced it; it is still published until its tokens expire.
    pub retired_at_ms: Option<i64>,
}

/// A realm document and its version, for optimistic updates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRealm {
    /// Realm name.
    pub name: String,
    /// Incremented by every save.
    pub version: i64,
    /// The provider's realm state, JSON.
    pub document: String,
}

impl SqlStore {
    /// Every stored realm.
    pub async fn identity_realms(&self) -> Result<Vec<StoredRealm>, StoreError> {
        let rows = sqlx::query("SELECT name, version, document FROM identity_realms ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        rows.iter()
            .map(|row| {
                Ok(StoredRealm {
                    name: row.try_get("name").map_err(map_err)?,
                    version: row.try_get("version").map_err(map_err)?,
                    document: row.try_get("document").map_err(map_err)?,
                })
            })
            .collect()
    }

    /// Saves a realm document. `expected_version` is the version it was read at (`None`
    /// for a new realm); a concurrent save in between is a `Conflict`, never a lost update.
    /// Returns the new version.
    pub async fn save_identity_realm(
        &self,
        name: &str,
        expected_version: Option<i64>,
        document: &str,
        now_ms: i64,
    ) -> Result<i64, StoreError> {
        let done = match expected_version {
            None => sqlx::query(
                "INSERT INTO identity_realms (name, version, document, updated_at_ms) \
                 VALUES ($1, 1, $2, $3) ON CONFLICT (name) DO NOTHING",
            )
            .bind(name)
            .bind(document)
            .bind(now_ms)
            .execute(&self.write_pool)
            .await
            .map_err(map_err)?,
            Some(version) => sqlx::query(
                "UPDATE identity_realms SET version = version + 1, document = $1, \
                 updated_at_ms = $2 WHERE name = $3 AND version = $4",
            )
            .bind(document)
            .bind(now_ms)
            .bind(name)
            .bind(version)
            .execute(&self.write_pool)
            .await
            .map_err(map_err)?,
        };
        if done.rows_affected() != 1 {
            return Err(StoreError::Conflict(format!("realm {name} was changed concurrently")));
        }
        Ok(expected_version.map_or(1, |v| v + 1))
    }

    /// The realm's signing keys, oldest first.
    pub async fn identity_keys(&self, realm: &str) -> Result<Vec<StoredKey>, StoreError> {
        let rows = sqlx::query(
            "SELECT kid, algorithm, private_key, created_at_ms, retired_at_ms FROM identity_keys \
             WHERE realm = $1 ORDER BY created_at_ms, kid",
        )
        .bind(realm)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|row| {
                Ok(StoredKey {
                    kid: row.try_get("kid").map_err(map_err)?,
                    algorithm: row.try_get("algorithm").map_err(map_err)?,
                    private_key: row.try_get("private_key").map_err(map_err)?,
                    created_at_ms: row.try_get("created_at_ms").map_err(map_err)?,
                    retired_at_ms: row.try_get("retired_at_ms").map_err(map_err)?,
                })
            })
            .collect()
    }

    /// Adds a new key and retires the realm's current ones, in one transaction.
    pub async fn rotate_identity_key(
        &self,
        realm: &str,
        key: &StoredKey,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE identity_keys SET retired_at_ms = $1 WHERE realm = $2 AND retired_at_ms IS NULL",
        )
        .bind(key.created_at_ms)
        .bind(realm)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        sqlx::query(
            "INSERT INTO identity_keys (kid, realm, algorithm, private_key, created_at_ms) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&key.kid)
        .bind(realm)
        .bind(&key.algorithm)
        .bind(&key.private_key)
        .bind(key.created_at_ms)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)
    }

    /// Deletes keys retired before `before_ms` (their tokens have all expired).
    pub async fn purge_identity_keys(
        &self,
        realm: &str,
        before_ms: i64,
    ) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "DELETE FROM identity_keys WHERE realm = $1 AND retired_at_ms IS NOT NULL \
             AND retired_at_ms < $2",
        )
        .bind(realm)
        .bind(before_ms)
        .execute(&self.write_pool)
        .await
        .map_err(map_err)?;
        Ok(done.rows_affected())
    }
}
