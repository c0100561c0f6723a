//! Access-token validation against one OpenID Connect issuer (Keycloak or ferrobank's own).
//!
//! A service trusts an issuer through configuration alone ([`OidcConfig`]): the keys come
//! from the issuer's discovery document and JWKS, never from the token. What a token may
//! choose is only which of the configured algorithms and published keys apply.
//!
//! [`TokenValidator::validate`] checks, in this order, and refuses at the first failure:
//! size; shape; header (`alg` on the allow-list, no `jku`/`x5u`/`jwk`/`x5c`/`crit`, a
//! `kid`, an access-token `typ`); the key (by `kid`, fit for `alg`); the signature; then
//! `exp`, `nbf`, `iss`, `aud`, `iat` and the `typ` claim. Claims are read only once the
//! signature holds. The attacks this defends against are those of RFC 8725 §2; the tests
//! in `tests/oidc.rs` try each.

mod config;
mod error;
mod keys;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ferrobank_domain::{CustomerTier, Principal, Role};
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use serde::de::IgnoredAny;
use sha2::{Digest, Sha256};

pub use config::{
    ConfigError, DEFAULT_MAX_TOKEN_BYTES, MAX_DOCUMENT_BYTES, OidcConfig, SigningAlgorithm,
};
pub use error::{DiscoveryError, TokenError};

use keys::{KeyCache, Lookup};

/// Validates access tokens of the configured issuer and turns them into [`Principal`]s.
/// Cheap to share: put it in an `Arc`.
#[derive(Debug)]
pub struct TokenValidator {
    issuer: String,
    audiences: Vec<String>,
    allowed: Vec<Algorithm>,
    leeway_s: u64,
    max_token_bytes: usize,
    keys: KeyCache,
    verified: VerifiedCache,
}

/// Most verified tokens remembered.
const VERIFIED_CACHE_ENTRIES: usize = 10_000;

/// Tokens already verified, by SHA-256 of the whole token: a client presents the same
/// access token for minutes, and an RSA verification costs ~25 µs where a lookup costs a
/// hash. The same idea as Envoy's `jwt_authn` `jwt_cache_config`. An entry holds only for
/// the key set it was verified against (a JWKS refresh empties it in effect) and until the
/// token's `exp`; a different token, even one byte off, is a different entry.
#[derive(Debug, Default)]
struct VerifiedCache {
    entries: std::sync::Mutex<std::collections::HashMap<[u8; 32], Verified>>,
}

#[derive(Debug, Clone)]
struct Verified {
    principal: Principal,
    exp_s: u64,
    /// The key set it was verified with.
    keys: std::sync::Weak<keys::KeySet>,
}

impl VerifiedCache {
    fn get(
        &self,
        digest: &[u8; 32],
        keys: &std::sync::Arc<keys::KeySet>,
        now_s: u64,
        leeway_s: u64,
    ) -> Option<Principal> {
        let entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let hit = entries.get(digest)?;
        let same_keys = hit.keys.upgrade().is_some_and(|set| std::sync::Arc::ptr_eq(&set, keys));
        (same_keys && hit.exp_s.saturating_add(leeway_s) >= now_s).then(|| hit.principal.clone())
    }

    fn put(&self, digest: [u8; 32], verified: Verified, now_s: u64, leeway_s: u64) {
        let mut entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if entries.len() >= VERIFIED_CACHE_ENTRIES {
            entries.retain(|_, v| {
                v.exp_s.saturating_add(leeway_s) >= now_s && v.keys.strong_count() > 0
            });
            if entries.len() >= VERIFIED_CACHE_ENTRIES {
                // Full of live tokens: start over rather than grow (bounded by design).
                entries.clear();
            }
        }
        entries.insert(digest, verified);
    }
}

/// The header fields this validator looks at. The key-carrying ones are only detected,
/// never used.
#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    kid: Option<String>,
    typ: Option<String>,
    jku: Option<IgnoredAny>,
    x5u: Option<IgnoredAny>,
    jwk: Option<IgnoredAny>,
    x5c: Option<IgnoredAny>,
    crit: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct RoleList {
    #[serde(default)]
    roles: Vec<String>,
}

/// `aud`: one audience or several (RFC 7519 §4.1.3).
#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

fn now_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The claims the principal is built from, checked after the signature.
#[derive(Deserialize)]
struct Claims {
    exp: Option<u64>,
    nbf: Option<u64>,
    aud: Option<Audience>,
    sub: Option<String>,
    iss: Option<String>,
    iat: Option<u64>,
    typ: Option<String>,
    azp: Option<String>,
    client_id: Option<String>,
    scope: Option<String>,
    preferred_username: Option<String>,
    realm_access: Option<RoleList>,
    #[serde(default)]
    resource_access: BTreeMap<String, RoleList>,
    /// The customer's tier (a user-attribute mapper's claim). Read as any JSON value so
    /// that a mapper misconfigured to write a list or a number costs the customer their
    /// tier (they get the default), not their whole token.
    #[serde(default)]
    tier: Option<serde_json::Value>,
}

impl TokenValidator {
    /// A validator for `config`. Performs no I/O: the IdP is first contacted by
    /// [`TokenValidator::warm_up`] or the first token.
    pub fn new(config: &OidcConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let mut builder = reqwest::Client::builder();
        if let Some(path) = &config.ca_file {
            let refuse =
                |reason: String| ConfigError::CaFile { path: path.display().to_string(), reason };
            let pem = std::fs::read(path).map_err(|e| refuse(e.to_string()))?;
            let certificates =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| refuse(e.to_string()))?;
            if certificates.is_empty() {
                return Err(refuse("no PEM certificate in it".into()));
            }
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let http = builder
            .https_only(false)
            .timeout(Duration::from_millis(config.http_timeout_ms))
            .connect_timeout(Duration::from_millis(config.http_timeout_ms))
            // A redirect would let whoever controls it choose where keys come from.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ConfigError::HttpClient(e.to_string()))?;
        let allowed: Vec<Algorithm> = config.algorithms.iter().map(|alg| alg.to_jwt()).collect();

        Ok(TokenValidator {
            issuer: config.issuer.clone(),
            audiences: config.audiences.clone(),
            allowed,
            leeway_s: config.leeway_s,
            max_token_bytes: config.max_token_bytes,
            keys: KeyCache::new(config, http),
            verified: VerifiedCache::default(),
        })
    }

    /// Reads discovery and the JWKS now, so that a misconfigured issuer shows at start-up.
    /// Subject to the refresh rate limit like any other fetch.
    pub async fn warm_up(&self) -> Result<(), DiscoveryError> {
        self.keys.refresh().await
    }

    /// The caller a bearer access token stands for, or why it is refused.
    pub async fn validate(&self, token: &str) -> Result<Principal, TokenError> {
        if token.len() > self.max_token_bytes {
            return Err(TokenError::TooLarge { max_bytes: self.max_token_bytes });
        }
        let (alg, kid) = self.check_header(token)?;
        let keys = self.keys.keys_for(&kid).await.ok_or(TokenError::KeysUnavailable)?;
        let key = match keys.lookup(&kid, alg) {
            Lookup::Found(key) => key,
            Lookup::Mismatch => return Err(TokenError::KeyMismatch),
            Lookup::Absent => return Err(TokenError::UnknownKid),
        };
        let now_s = now_s();
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(principal) = self.verified.get(&digest, &keys, now_s, self.leeway_s) {
            return Ok(principal);
        }
        // The signature first: nothing of the payload is read before it holds.
        let (message, signature_b64) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let signature =
            URL_SAFE_NO_PAD.decode(signature_b64).map_err(|_| TokenError::BadSignature)?;
        if !key.verifies(message.as_bytes(), &signature) {
            return Err(TokenError::BadSignature);
        }
        let payload_b64 = message.split_once('.').map(|(_, p)| p).ok_or(TokenError::Malformed)?;
        let payload = URL_SAFE_NO_PAD.decode(payload_b64).map_err(|_| TokenError::Malformed)?;
        let claims: Claims = serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
        let exp_s = claims.exp.unwrap_or(0);
        let principal = self.principal(claims, now_s)?;
        let verified = Verified {
            principal: principal.clone(),
            exp_s,
            keys: std::sync::Arc::downgrade(&keys),
        };
        self.verified.put(digest, verified, now_s, self.leeway_s);
        Ok(principal)
    }

    /// Checks the header and returns its algorithm and `kid`.
    fn check_header(&self, token: &str) -> Result<(Algorithm, String), TokenError> {
        let mut parts = token.split('.');
        let (Some(header_b64), Some(_payload), Some(_signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        // An empty signature goes on to the checks below: `alg: none` is refused as such.
        if header_b64.is_empty() {
            return Err(TokenError::Malformed);
        }
        let header_json = URL_SAFE_NO_PAD.decode(header_b64).map_err(|_| TokenError::Malformed)?;
        // serde_json refuses duplicate keys in a struct, so `{"alg":"RS256","alg":"none"}`
        // cannot mean one thing here and another in the verifier.
        let header: RawHeader =
            serde_json::from_slice(&header_json).map_err(|_| TokenError::Malformed)?;
        // `none` is not even an `Algorithm` variant; any name outside the list is refused
        // the same way (RFC 8725 §3.1).
        let alg = self
            .allowed
            .iter()
            .copied()
            .find(|alg| alg_name(*alg) == header.alg)
            .ok_or(TokenError::AlgorithmNotAllowed)?;
        // RFC 8725 §3.10 and RFC 7515 §10.3: a key or key URL in the header is chosen by
        // the sender; trusting it verifies the token with the attacker's key.
        for (present, name) in [
            (header.jku.is_some(), "jku"),
            (header.x5u.is_some(), "x5u"),
            (header.jwk.is_some(), "jwk"),
            (header.x5c.is_some(), "x5c"),
            (header.crit.is_some(), "crit"),
        ] {
            if present {
                return Err(TokenError::ForbiddenHeader(name));
            }
        }
        // RFC 8725 §3.11 / RFC 9068 §2.1: explicit typing. Keycloak writes `JWT`; RFC 9068
        // access tokens `at+jwt`. Anything else (`logout+jwt`, `dpop+jwt`...) is another
        // kind of JWT replayed as an access token.
        if let Some(typ) = &header.typ {
            let typ = typ.strip_prefix("application/").unwrap_or(typ);
            if !typ.eq_ignore_ascii_case("JWT") && !typ.eq_ignore_ascii_case("at+jwt") {
                return Err(TokenError::WrongType);
            }
        }
        let kid = header.kid.ok_or(TokenError::MissingKid)?;
        Ok((alg, kid))
    }

    fn principal(&self, claims: Claims, now_s: u64) -> Result<Principal, TokenError> {
        // RFC 7519 §4.1.4 and §4.1.5, with the configured leeway for clock skew.
        let exp = claims.exp.ok_or(TokenError::MissingClaim("exp"))?;
        if exp.saturating_add(self.leeway_s) < now_s {
            return Err(TokenError::Expired);
        }
        if claims.nbf.is_some_and(|nbf| nbf > now_s.saturating_add(self.leeway_s)) {
            return Err(TokenError::NotYetValid);
        }
        let issuer = claims.iss.ok_or(TokenError::MissingClaim("iss"))?;
        if issuer != self.issuer {
            return Err(TokenError::WrongIssuer);
        }
        // RFC 7519 §4.1.3: `aud` is a string or an array; one of ours must be in it.
        let audiences = match claims.aud.ok_or(TokenError::MissingClaim("aud"))? {
            Audience::One(aud) => vec![aud],
            Audience::Many(auds) => auds,
        };
        if !audiences.iter().any(|aud| self.audiences.contains(aud)) {
            return Err(TokenError::WrongAudience);
        }
        let subject =
            claims.sub.filter(|s| !s.is_empty()).ok_or(TokenError::MissingClaim("sub"))?;
        // RFC 7519 leaves `iat` informative; a token claiming to be issued in the future
        // comes from a skewed or forged clock, so it is refused like an early `nbf`.
        let iat = claims.iat.ok_or(TokenError::MissingClaim("iat"))?;
        if iat > now_s.saturating_add(self.leeway_s) {
            return Err(TokenError::IssuedInFuture);
        }
        // Keycloak's own `typ` claim: `Bearer` for access tokens, `ID` / `Refresh` /
        // `Logout` for the others, which must not open the API.
        if claims.typ.as_deref().is_some_and(|typ| !typ.eq_ignore_ascii_case("Bearer")) {
            return Err(TokenError::WrongType);
        }
        let mut roles: BTreeSet<Role> = claims
            .realm_access
            .iter()
            .flat_map(|access| access.roles.iter())
            .filter_map(|name| Role::from_name(name))
            .collect();
        // Client roles count only for this service's own audiences: a role another client
        // defines under the same name grants nothing here.
        for audience in &self.audiences {
            if let Some(access) = claims.resource_access.get(audience) {
                roles.extend(access.roles.iter().filter_map(|name| Role::from_name(name)));
            }
        }
        let scopes = claims
            .scope
            .as_deref()
            .unwrap_or_default()
            .split_ascii_whitespace()
            .map(str::to_owned)
            .collect();
        Ok(Principal {
            subject,
            username: claims.preferred_username,
            roles,
            // RFC 9068 §2.2 makes `client_id` (RFC 8693 §4.3) the access token's claim for
            // the client; `azp` is OpenID Connect's ID-token claim, which Keycloak also
            // writes into access tokens. Standard JWT access tokens carry only the former.
            client_id: claims.client_id.or(claims.azp),
            scopes,
            issuer,
            // Only a string naming a known tier counts; anything else is no tier.
            tier: claims.tier.as_ref().and_then(|t| t.as_str()).and_then(CustomerTier::from_name),
        })
    }
}

fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::RS256 => "RS256",
        Algorithm::ES256 => "ES256",
        Algorithm::EdDSA => "EdDSA",
        // Not reachable from `SigningAlgorithm`.
        _ => "",
    }
}
