//! Owners' email addresses for notifications, from the built-in provider's users.

use async_trait::async_trait;
use ferrobank_application::StoreError;
use ferrobank_application::notifications::RecipientDirectory;

use super::realm::RealmState;
use crate::SqlStore;

/// The users of one realm as stored (not as one process serves them), so any process
/// sharing the database finds an address changed through another one's admin API. An
/// owner is a token subject, the user's id; only verified addresses are used.
#[derive(Debug, Clone)]
pub struct RealmDirectory {
    store: SqlStore,
    realm: String,
}

impl RealmDirectory {
    /// The directory of `realm`'s users in `store`.
    pub fn new(store: SqlStore, realm: impl Into<String>) -> Self {
        Self { store, realm: realm.into() }
    }
}

#[async_trait]
impl RecipientDirectory for RealmDirectory {
    async fn email_of(&self, owner: &str) -> Result<Result<String, String>, StoreError> {
        let stored = self.store.identity_realms().await?;
        let Some(stored) = stored.into_iter().find(|r| r.name == self.realm) else {
            return Ok(Err(format!("realm {:?} is not in the identity store", self.realm)));
        };
        let state: RealmState = serde_json::from_str(&stored.document)
            .map_err(|e| StoreError::Corrupt(format!("realm {}: {e}", self.realm)))?;
        let Some(user) = state.user_by_id(owner) else {
            return Ok(Err("no such user in the identity store".into()));
        };
        Ok(match user.email.as_deref().map(str::trim) {
            None | Some("") => Err("the user has no email address".into()),
            Some(_) if !user.email_verified => {
                Err("the user's email address is not verified".into())
            }
            Some(address) => Ok(address.to_owned()),
        })
    }
}
