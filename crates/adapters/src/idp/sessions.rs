//! In-memory protocol state: login pages in progress, SSO sessions, authorization codes,
//! refresh-token families, revoked access tokens and brute-force records.
//!
//! Kept in memory on purpose (as Keycloak keeps them in its cache): a restart logs everyone
//! out, which is safe. Every map is bounded; when one is full, expired entries are purged,
//! and if that frees nothing the new entry is refused (the caller answers 503).

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::brute_force::Failures;

/// Most entries of each kind held at once.
pub const MAX_ENTRIES: usize = 100_000;

/// A random token with 256 bits of entropy, base64url.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Codes and refresh tokens are stored by hash: a memory dump does not hold usable tokens.
pub fn token_hash(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

/// Where a login page is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stage {
    /// Asking for username and password.
    Credentials,
    /// Password accepted; asking for the TOTP code.
    Otp {
        /// The user.
        user_id: String,
    },
    /// Password accepted; the user must enrol an authenticator with this secret.
    ConfigureTotp {
        /// The user.
        user_id: String,
        /// The proposed secret (raw bytes).
        secret: Vec<u8>,
    },
    /// Password (and second factor) accepted; the user must choose a new password.
    UpdatePassword {
        /// The user.
        user_id: String,
    },
}

/// An authorization request waiting for the user to log in.
#[derive(Debug, Clone)]
pub struct Login {
    /// Realm.
    pub realm: String,
    /// Client.
    pub client_id: String,
    /// Where the code goes.
    pub redirect_uri: String,
    /// Echoed to the client.
    pub state: Option<String>,
    /// Put into the ID token.
    pub nonce: Option<String>,
    /// PKCE S256 challenge.
    pub code_challenge: String,
    /// Granted scope.
    pub scope: String,
    /// Anti-CSRF token of the form.
    pub csrf: String,
    /// The page expires.
    pub expires_ms: i64,
    /// Progress.
    pub stage: Stage,
}

/// A logged-in browser.
#[derive(Debug, Clone)]
pub struct Sso {
    /// Realm.
    pub realm: String,
    /// User.
    pub user_id: String,
    /// Login time.
    pub created_ms: i64,
    /// Last use (refresh or new code).
    pub last_ms: i64,
}

/// An issued authorization code.
#[derive(Debug, Clone)]
pub struct Code {
    /// Realm.
    pub realm: String,
    /// Client it was issued to.
    pub client_id: String,
    /// Redirect URI of the request (must be repeated at the token endpoint).
    pub redirect_uri: String,
    /// PKCE S256 challenge.
    pub code_challenge: String,
    /// For the ID token.
    pub nonce: Option<String>,
    /// Granted scope.
    pub scope: String,
    /// SSO session.
    pub sid: String,
    /// User.
    pub user_id: String,
    /// Expiry.
    pub expires_ms: i64,
    /// Redeemed already: a second use revokes what the first one issued.
    pub used: bool,
    /// The refresh family and access tokens issued for it.
    pub issued: Issued,
}

/// What a grant issued, so that it can be revoked together.
#[derive(Debug, Clone, Default)]
pub struct Issued {
    /// Refresh-token family.
    pub family: Option<String>,
    /// Access tokens (`jti`, `exp` in ms).
    pub access: Vec<(String, i64)>,
}

/// A chain of refresh tokens, each replacing the previous.
#[derive(Debug, Clone)]
pub struct Family {
    /// Realm.
    pub realm: String,
    /// Client.
    pub client_id: String,
    /// User.
    pub user_id: String,
    /// SSO session.
    pub sid: String,
    /// Granted scope.
    pub scope: String,
    /// Hash of the only refresh token that is still good.
    pub current: String,
    /// Revoked: every token of the family is refused.
    pub revoked: bool,
    /// Access tokens issued from the family.
    pub access: Vec<(String, i64)>,
}

/// Every piece of protocol state.
#[derive(Debug, Default)]
pub struct Sessions {
    /// Login pages by id.
    pub logins: HashMap<String, Login>,
    /// SSO sessions by `sid`.
    pub sso: HashMap<String, Sso>,
    /// Codes by hash.
    pub codes: HashMap<String, Code>,
    /// Refresh-token hash -> family id (old ones too, to detect reuse).
    pub refresh: HashMap<String, String>,
    /// Refresh families by id.
    pub families: HashMap<String, Family>,
    /// Revoked access tokens: `jti` -> `exp` (ms).
    pub revoked_access: HashMap<String, i64>,
    /// Brute-force records by (realm, user id).
    pub failures: HashMap<(String, String), Failures>,
    /// Last TOTP step accepted per (realm, user id): a code is good once.
    pub totp_steps: HashMap<(String, String), u64>,
}

/// A map is full of live entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

impl Sessions {
    /// Drops everything that expired before `now_ms`. `sso_idle_ms`/`sso_max_ms` per realm
    /// are applied by the caller through `sso_alive`.
    pub fn purge(&mut self, now_ms: i64, sso_alive: impl Fn(&Sso) -> bool) {
        self.logins.retain(|_, l| l.expires_ms > now_ms);
        self.codes.retain(|_, c| c.expires_ms > now_ms);
        self.revoked_access.retain(|_, exp| *exp > now_ms);
        self.sso.retain(|_, s| sso_alive(s));
        let sso = &self.sso;
        self.families.retain(|_, f| !f.revoked && sso.contains_key(&f.sid));
        let families = &self.families;
        self.refresh.retain(|_, family| families.contains_key(family));
        self.failures
            .retain(|_, f| f.not_before_ms > now_ms || now_ms - f.last_failure_ms < 12 * 3_600_000);
    }

    /// Whether another entry may be added to a map of `len` entries.
    pub fn room(len: usize) -> Result<(), Full> {
        if len < MAX_ENTRIES { Ok(()) } else { Err(Full) }
    }

    /// Revokes a family and every access token issued from it.
    pub fn revoke_family(&mut self, family: &str) {
        if let Some(f) = self.families.get_mut(family) {
            f.revoked = true;
            for (jti, exp) in f.access.drain(..) {
                self.revoked_access.insert(jti, exp);
            }
        }
    }

    /// Ends an SSO session: its families are revoked.
    pub fn end_sso(&mut self, sid: &str) {
        self.sso.remove(sid);
        let families: Vec<String> =
            self.families.iter().filter(|(_, f)| f.sid == sid).map(|(id, _)| id.clone()).collect();
        for family in families {
            self.revoke_family(&family);
        }
    }
}
