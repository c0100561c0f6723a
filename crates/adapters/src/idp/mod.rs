//! ferrobank's built-in OAuth 2.1 / OpenID Connect provider, Keycloak-compatible.
//!
//! Keycloak's URL layout (`{base}/realms/{realm}/protocol/openid-connect/...`), token shape
//! (`realm_access.roles`, `resource_access`, `azp`, `sid`, `scope`, `preferred_username`)
//! and realm file ([`crate::realm`]), so that services trust it or a real Keycloak through
//! the issuer URL alone. Stricter than Keycloak where OAuth 2.1 (draft-ietf-oauth-v2-1) and
//! RFC 9700 (OAuth 2.0 Security BCP) say so: code flow with PKCE S256 only, exact redirect
//! URIs, single-use codes (a replay revokes what the code issued), rotating refresh tokens
//! with reuse detection, no implicit or password grant.
//!
//! Durable state (realms with users, signing keys) is in the SQL store; protocol state
//! (sessions, codes, refresh tokens) in [`sessions`]. The HTTP face is in
//! `ferrobank-interfaces` (`http::idp`).

mod brute_force;
mod directory;
mod keys;
mod login;
mod password;
mod realm;
mod sessions;
mod token;
mod totp;
mod users;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use ferrobank_application::{Clock, StoreError};
use serde_json::{Value, json};

pub use brute_force::{Failures, Verdict};
pub use directory::RealmDirectory;
pub use keys::{KeyRing, SigningKey};
pub use login::{
    AuthorizeRequest, FormInput, INVALID_CREDENTIALS, LoginForm, LoginOutcome, LoginPage,
    LogoutOutcome, LogoutRequest,
};
pub use password::{Hasher, MAX_PASSWORD_BYTES, PasswordPolicy, hash_blocking};
pub use realm::{
    CONFIGURE_TOTP, ClientState, Generated, ImportOptions, Imported, RealmState, UPDATE_PASSWORD,
    UserState, diff, import, random_password,
};
pub use sessions::Stage;
pub use token::{ClientAuth, OAuthError, TokenRequest};
pub use totp::{TotpPolicy, base32, code_at};
pub use users::{NewUser, UserError, UserUpdate};

use crate::SqlStore;
use crate::oidc::SigningAlgorithm;
use sessions::Sessions;

/// How long a retired key stays published after its retirement, beyond the realm's access
/// token lifetime: clock skew between services.
const KEY_GRACE_MS: i64 = 60_000;

/// A realm as served: its state, the stored version, its keys.
#[derive(Debug, Clone)]
struct Live {
    state: Arc<RealmState>,
    version: i64,
    keys: KeyRing,
}

/// What can go wrong outside the OAuth protocol's own errors.
#[derive(Debug, thiserror::Error)]
pub enum IdpError {
    /// No such realm.
    #[error("realm {0:?} does not exist")]
    UnknownRealm(String),
    /// The realm file is invalid; every problem is listed.
    #[error("realm file refused:\n  {}", .0.join("\n  "))]
    Import(Vec<String>),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Keys could not be generated or loaded.
    #[error("signing keys: {0}")]
    Keys(String),
    /// The stored realm document could not be read.
    #[error("stored realm {0:?} is corrupt: {1}")]
    Corrupt(String, String),
    /// Too many sessions in progress.
    #[error("too many sessions in progress; try again later")]
    Busy,
}

/// The provider: every realm it serves, and their protocol state.
#[derive(Debug)]
pub struct IdentityProvider {
    store: SqlStore,
    clock: Arc<dyn Clock>,
    public_url: String,
    hasher: Hasher,
    realms: RwLock<BTreeMap<String, Live>>,
    /// Serializes changes to realm documents (read, modify, save, swap).
    writes: tokio::sync::Mutex<()>,
    sessions: Mutex<Sessions>,
}

impl IdentityProvider {
    /// Loads every stored realm and its keys. `public_url` is the base the browser and the
    /// services reach this server at (`http://127.0.0.1:8080`); issuers are
    /// `{public_url}/realms/{realm}`. It comes from configuration, never from a request's
    /// `Host` header, so a forged header cannot change the issuer or any redirect.
    pub async fn load(
        store: SqlStore,
        clock: Arc<dyn Clock>,
        public_url: &str,
    ) -> Result<Self, IdpError> {
        let provider = Self {
            store,
            clock,
            public_url: public_url.trim_end_matches('/').to_owned(),
            hasher: Hasher::default(),
            realms: RwLock::new(BTreeMap::new()),
            writes: tokio::sync::Mutex::new(()),
            sessions: Mutex::new(Sessions::default()),
        };
        for stored in provider.store.identity_realms().await? {
            let state: RealmState = serde_json::from_str(&stored.document)
                .map_err(|e| IdpError::Corrupt(stored.name.clone(), e.to_string()))?;
            let keys = provider.keys_for(&state).await?;
            provider.put(Live { state: Arc::new(state), version: stored.version, keys });
        }
        Ok(provider)
    }

    /// The base URL.
    pub fn public_url(&self) -> &str {
        &self.public_url
    }

    /// The issuer of a realm.
    pub fn issuer(&self, realm: &str) -> String {
        format!("{}/realms/{realm}", self.public_url)
    }

    /// Names of the realms served.
    pub fn realm_names(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Live>> {
        self.realms.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn put(&self, live: Live) {
        let mut realms = self.realms.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        realms.insert(live.state.name.clone(), live);
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn live(&self, realm: &str) -> Result<Live, IdpError> {
        self.read().get(realm).cloned().ok_or_else(|| IdpError::UnknownRealm(realm.to_owned()))
    }

    /// The realm's current state.
    pub fn realm(&self, realm: &str) -> Result<Arc<RealmState>, IdpError> {
        Ok(self.live(realm)?.state)
    }

    /// Loads the realm's keys, generating the first one (in the realm's algorithm) if there
    /// is none, or a new one if the realm's algorithm changed.
    async fn keys_for(&self, state: &RealmState) -> Result<KeyRing, IdpError> {
        let stored = self.store.identity_keys(&state.name).await?;
        let keys = stored
            .iter()
            .map(SigningKey::from_stored)
            .collect::<Result<Vec<_>, _>>()
            .map_err(IdpError::Keys)?;
        let ring = KeyRing::new(keys);
        match ring.active() {
            Some(active) if active.algorithm == state.settings.algorithm => Ok(ring),
            _ => self.add_key(&state.name, state.settings.algorithm).await,
        }
    }

    async fn add_key(&self, realm: &str, algorithm: SigningAlgorithm) -> Result<KeyRing, IdpError> {
        let now_ms = self.clock.now_ms();
        let key = tokio::task::spawn_blocking(move || SigningKey::generate(algorithm, now_ms))
            .await
            .map_err(|e| IdpError::Keys(e.to_string()))?
            .map_err(IdpError::Keys)?;
        self.store.rotate_identity_key(realm, &key.to_stored()).await?;
        tracing::info!(realm, kid = %key.kid, algorithm = algorithm.as_str(), "new signing key");
        let keys = self
            .store
            .identity_keys(realm)
            .await?
            .iter()
            .map(SigningKey::from_stored)
            .collect::<Result<Vec<_>, _>>()
            .map_err(IdpError::Keys)?;
        Ok(KeyRing::new(keys))
    }

    /// Imports (or re-imports, declaratively) a Keycloak realm file. With `dry_run` nothing
    /// is stored; the changes are returned either way.
    pub async fn import_realm(
        &self,
        model: &crate::realm::Realm,
        options: &ImportOptions,
        dry_run: bool,
    ) -> Result<Imported, IdpError> {
        let _write = self.writes.lock().await;
        let existing = self.read().get(&model.realm).cloned();
        let model_owned = model.clone();
        let options = options.clone();
        let old = existing.as_ref().map(|l| l.state.clone());
        // argon2 runs once per new user: off the runtime.
        let imported = tokio::task::spawn_blocking(move || {
            import(&model_owned, old.as_deref(), &options, &hash_blocking)
        })
        .await
        .map_err(|e| IdpError::Import(vec![e.to_string()]))?
        .map_err(IdpError::Import)?;
        if dry_run || existing.as_ref().is_some_and(|l| *l.state == imported.state) {
            return Ok(imported);
        }
        self.save(existing.as_ref(), imported.state.clone()).await?;
        Ok(imported)
    }

    /// Stores a new state of a realm (the caller holds `writes`) and serves it.
    async fn save(&self, existing: Option<&Live>, state: RealmState) -> Result<(), IdpError> {
        let document = serde_json::to_string(&state)
            .map_err(|e| IdpError::Corrupt(state.name.clone(), e.to_string()))?;
        let version = self
            .store
            .save_identity_realm(
                &state.name,
                existing.map(|l| l.version),
                &document,
                self.clock.now_ms(),
            )
            .await?;
        let keys = match existing {
            Some(live) if live.state.settings.algorithm == state.settings.algorithm => {
                live.keys.clone()
            }
            _ => self.keys_for(&state).await?,
        };
        self.put(Live { state: Arc::new(state), version, keys });
        Ok(())
    }

    /// Applies `change` to a realm's state and stores it.
    async fn update<T>(
        &self,
        realm: &str,
        change: impl FnOnce(&mut RealmState) -> T,
    ) -> Result<T, IdpError> {
        let _write = self.writes.lock().await;
        let live = self.live(realm)?;
        let mut state = (*live.state).clone();
        let out = change(&mut state);
        if state != *live.state {
            self.save(Some(&live), state).await?;
        }
        Ok(out)
    }

    /// Rotates the realm's signing key: new tokens are signed with a new key; the old one
    /// stays in the JWKS until its tokens have expired.
    pub async fn rotate_keys(&self, realm: &str) -> Result<String, IdpError> {
        let _write = self.writes.lock().await;
        let live = self.live(realm)?;
        let keys = self.add_key(realm, live.state.settings.algorithm).await?;
        let kid = keys.active().map(|k| k.kid.clone()).unwrap_or_default();
        self.put(Live { keys, ..live });
        Ok(kid)
    }

    /// Drops expired protocol state and retired keys whose tokens have all expired.
    pub async fn purge(&self) -> Result<(), IdpError> {
        let now_ms = self.clock.now_ms();
        let lifetimes: BTreeMap<String, (i64, i64, i64)> = self
            .read()
            .iter()
            .map(|(name, live)| {
                let s = &live.state.settings;
                (
                    name.clone(),
                    (secs_ms(s.sso_idle_s), secs_ms(s.sso_max_s), secs_ms(s.access_token_s)),
                )
            })
            .collect();
        self.sessions().purge(now_ms, |sso| {
            lifetimes.get(&sso.realm).is_some_and(|(idle, max, _)| {
                sso.last_ms + idle > now_ms && sso.created_ms + max > now_ms
            })
        });
        for (realm, (_, _, access_ms)) in lifetimes {
            let before_ms = now_ms - access_ms - KEY_GRACE_MS;
            if self.store.purge_identity_keys(&realm, before_ms).await? > 0 {
                let _write = self.writes.lock().await;
                let live = self.live(&realm)?;
                let keys = self.keys_for(&live.state).await?;
                self.put(Live { keys, ..live });
            }
        }
        Ok(())
    }

    /// The realm's public keys (`certs`).
    pub fn jwks(&self, realm: &str) -> Result<Value, IdpError> {
        let live = self.live(realm)?;
        serde_json::to_value(live.keys.jwks()).map_err(|e| IdpError::Keys(e.to_string()))
    }

    /// The OpenID Provider Metadata (OpenID Connect Discovery 1.0 §3, RFC 8414), listing
    /// only what this provider really does.
    pub fn discovery(&self, realm: &str) -> Result<Value, IdpError> {
        let live = self.live(realm)?;
        let issuer = self.issuer(realm);
        let oidc = format!("{issuer}/protocol/openid-connect");
        let alg = live.state.settings.algorithm.as_str();
        Ok(json!({
            "issuer": issuer,
            "authorization_endpoint": format!("{oidc}/auth"),
            "token_endpoint": format!("{oidc}/token"),
            "introspection_endpoint": format!("{oidc}/token/introspect"),
            "userinfo_endpoint": format!("{oidc}/userinfo"),
            "end_session_endpoint": format!("{oidc}/logout"),
            "revocation_endpoint": format!("{oidc}/revoke"),
            "jwks_uri": format!("{oidc}/certs"),
            "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [alg],
            "userinfo_signing_alg_values_supported": ["none"],
            "scopes_supported": ["openid", "profile", "email"],
            "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "sid",
                "azp", "preferred_username", "email", "email_verified", "name", "given_name",
                "family_name", "realm_access", "resource_access", "scope"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "claims_parameter_supported": false,
            "request_parameter_supported": false,
            "request_uri_parameter_supported": false,
            "frontchannel_logout_supported": false,
            "backchannel_logout_supported": false,
            "authorization_response_iss_parameter_supported": true,
        }))
    }

    /// Verifies a token this provider signed for `realm` (signature, `iss`, `exp`) and
    /// returns its claims; `typ` is the expected `typ` claim (`Bearer`, `ID`).
    fn verify_own(&self, realm: &str, token: &str, typ: &str, check_exp: bool) -> Option<Value> {
        let live = self.live(realm).ok()?;
        let header = jsonwebtoken::decode_header(token).ok()?;
        let key = live.keys.find(header.kid.as_deref()?)?;
        if header.alg != key.algorithm.to_jwt() {
            return None;
        }
        let decoding = jsonwebtoken::DecodingKey::from_jwk(&key.jwk).ok()?;
        let mut validation = jsonwebtoken::Validation::new(header.alg);
        validation.set_issuer(&[self.issuer(realm)]);
        validation.validate_aud = false;
        validation.validate_exp = check_exp;
        validation.leeway = 0;
        validation.required_spec_claims = ["iss", "sub"].iter().map(|s| (*s).to_owned()).collect();
        let claims = jsonwebtoken::decode::<Value>(token, &decoding, &validation).ok()?.claims;
        (claims.get("typ").and_then(Value::as_str) == Some(typ)).then_some(claims)
    }

    fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }
}

fn secs_ms(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX / 4)
}
