//! The issuer's signing keys: discovery, the JWKS fetch, and the cache in front of them.
//!
//! Refreshes are single-flight (one lock) and rate-limited (one attempt per
//! `jwks_refresh_min_interval_ms`), because what triggers them, an unknown `kid`, is
//! chosen by whoever sends a token. A failed refresh keeps the previous keys, which serve
//! until `jwks_max_staleness_ms` after the last successful fetch.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ED25519, RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents,
    UnparsedPublicKey,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::config::{MAX_DOCUMENT_BYTES, OidcConfig};
use super::error::DiscoveryError;

/// RSA moduli shorter than 2048 bits are refused (NIST SP 800-131A; RFC 8725 §3.5 asks
/// for keys of adequate strength).
const MIN_RSA_MODULUS_BYTES: usize = 256;

/// One verification key from the JWKS, decoded once when the set is fetched.
pub(crate) struct PublicKey {
    kid: String,
    /// The only algorithm this key verifies: the JWK's `alg` if present, else the one
    /// allowed algorithm its type fits.
    algorithm: Algorithm,
    verifier: Verifier,
}

/// A public key in the form `ring` verifies with (parsed once per JWKS fetch, not per token).
enum Verifier {
    Rsa(RsaPublicKeyComponents<Vec<u8>>),
    Other(UnparsedPublicKey<Vec<u8>>),
}

impl PublicKey {
    /// Whether `signature` is this key's over `message`. RS256 accepts 2048- to 8192-bit
    /// moduli (shorter ones never become a `PublicKey`), ES256 the fixed `r || s` form
    /// (RFC 7518 §3.4), EdDSA Ed25519 (RFC 8037).
    pub(crate) fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        match &self.verifier {
            Verifier::Rsa(key) => {
                key.verify(&RSA_PKCS1_2048_8192_SHA256, message, signature).is_ok()
            }
            Verifier::Other(key) => key.verify(message, signature).is_ok(),
        }
    }
}

/// The keys of one successful fetch.
pub(crate) struct KeySet {
    keys: Vec<PublicKey>,
    fetched_at: Instant,
}

/// What a lookup in a key set found.
pub(crate) enum Lookup<'a> {
    Found(&'a PublicKey),
    /// A key has the kid but is for another algorithm.
    Mismatch,
    Absent,
}

impl KeySet {
    pub(crate) fn lookup(&self, kid: &str, algorithm: Algorithm) -> Lookup<'_> {
        let mut seen = false;
        for key in self.keys.iter().filter(|key| key.kid == kid) {
            if key.algorithm == algorithm {
                return Lookup::Found(key);
            }
            seen = true;
        }
        if seen { Lookup::Mismatch } else { Lookup::Absent }
    }

    fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|key| key.kid == kid)
    }
}

#[derive(Deserialize)]
struct DiscoveryDocument {
    issuer: String,
    jwks_uri: String,
}

#[derive(Deserialize)]
struct RawJwkSet {
    keys: Vec<serde_json::Value>,
}

struct RefreshState {
    last_attempt: Option<Instant>,
    jwks_uri: Option<String>,
}

/// The cache of the configured issuer's keys.
pub(crate) struct KeyCache {
    issuer: String,
    discovery_url: String,
    allowed: Vec<Algorithm>,
    refresh_after: Duration,
    refresh_min_interval: Duration,
    max_staleness: Duration,
    http: reqwest::Client,
    current: RwLock<Option<Arc<KeySet>>>,
    /// Held for the whole of a refresh: concurrent callers queue behind it and then find
    /// the attempt too recent to repeat (single flight).
    refresh: tokio::sync::Mutex<RefreshState>,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache")
            .field("issuer", &self.issuer)
            .field("allowed", &self.allowed)
            .finish_non_exhaustive()
    }
}

impl KeyCache {
    pub(crate) fn new(config: &OidcConfig, http: reqwest::Client) -> Self {
        // OpenID Connect Discovery 1.0 §4: a terminating "/" of the issuer is removed
        // before appending the well-known path.
        let discovery_url =
            format!("{}/.well-known/openid-configuration", config.issuer.trim_end_matches('/'));
        KeyCache {
            issuer: config.issuer.clone(),
            discovery_url,
            allowed: config.algorithms.iter().map(|alg| alg.to_jwt()).collect(),
            refresh_after: config.refresh_after(),
            refresh_min_interval: config.refresh_min_interval(),
            max_staleness: config.max_staleness(),
            http,
            current: RwLock::new(None),
            refresh: tokio::sync::Mutex::new(RefreshState { last_attempt: None, jwks_uri: None }),
        }
    }

    fn current(&self) -> Option<Arc<KeySet>> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The key set to verify a token with `kid`, refreshing first when the set is
    /// missing, old, or lacks the kid. `None` when no set is fresh enough to use.
    pub(crate) async fn keys_for(&self, kid: &str) -> Option<Arc<KeySet>> {
        let wanted = self
            .current()
            .is_none_or(|set| !set.has_kid(kid) || set.fetched_at.elapsed() >= self.refresh_after);
        if wanted {
            // A failure is logged inside; the previous keys keep serving within the bound.
            let _ = self.refresh().await;
        }
        self.current().filter(|set| set.fetched_at.elapsed() <= self.max_staleness)
    }

    /// Fetches discovery (once) and the JWKS, unless an attempt was made less than
    /// `jwks_refresh_min_interval_ms` ago. Returns the outcome of this call's attempt
    /// (`Ok` when none was due).
    pub(crate) async fn refresh(&self) -> Result<(), DiscoveryError> {
        let mut state = self.refresh.lock().await;
        if state.last_attempt.is_some_and(|at| at.elapsed() < self.refresh_min_interval) {
            return Ok(());
        }
        state.last_attempt = Some(Instant::now());
        match self.fetch(&mut state).await {
            Ok(set) => {
                tracing::debug!(issuer = %self.issuer, keys = set.keys.len(), "oidc keys refreshed");
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(set));
                Ok(())
            }
            Err(error) => {
                tracing::warn!(issuer = %self.issuer, %error, "oidc key refresh failed");
                Err(error)
            }
        }
    }

    async fn fetch(&self, state: &mut RefreshState) -> Result<KeySet, DiscoveryError> {
        let jwks_uri = match &state.jwks_uri {
            Some(uri) => uri.clone(),
            None => {
                let doc: DiscoveryDocument = self.get_json(&self.discovery_url).await?;
                // Exact comparison, no normalisation (OpenID Connect Discovery 1.0 §4.3).
                if doc.issuer != self.issuer {
                    return Err(DiscoveryError::IssuerMismatch {
                        expected: self.issuer.clone(),
                        found: doc.issuer,
                    });
                }
                if self.issuer.starts_with("https://") && !doc.jwks_uri.starts_with("https://") {
                    return Err(DiscoveryError::InsecureJwksUri(doc.jwks_uri));
                }
                state.jwks_uri = Some(doc.jwks_uri.clone());
                doc.jwks_uri
            }
        };
        let raw: RawJwkSet = self.get_json(&jwks_uri).await?;
        let keys: Vec<PublicKey> =
            raw.keys.into_iter().filter_map(|value| self.usable_key(value)).collect();
        if keys.is_empty() {
            return Err(DiscoveryError::NoUsableKeys);
        }
        Ok(KeySet { keys, fetched_at: Instant::now() })
    }

    /// The JWK as a verification key, or `None` when it is not one this validator may
    /// use. Keys are skipped one by one: Keycloak publishes encryption keys
    /// (`use: enc`, `RSA-OAEP`) beside its signing keys.
    fn usable_key(&self, value: serde_json::Value) -> Option<PublicKey> {
        let jwk: Jwk = serde_json::from_value(value).ok()?;
        let kid = jwk.common.key_id.clone()?;
        if jwk.common.public_key_use.as_ref().is_some_and(|u| *u != PublicKeyUse::Signature) {
            return None;
        }
        let fits = |alg: &Algorithm| match (&jwk.algorithm, alg) {
            (AlgorithmParameters::RSA(params), Algorithm::RS256) => URL_SAFE_NO_PAD
                .decode(params.n.as_bytes())
                .is_ok_and(|n| n.len() >= MIN_RSA_MODULUS_BYTES),
            (AlgorithmParameters::EllipticCurve(params), Algorithm::ES256) => {
                params.curve == EllipticCurve::P256
            }
            (AlgorithmParameters::OctetKeyPair(params), Algorithm::EdDSA) => {
                params.curve == EllipticCurve::Ed25519
            }
            // Symmetric (`oct`) keys and anything else never verify here.
            _ => false,
        };
        let algorithm = match jwk.common.key_algorithm {
            Some(declared) => {
                let alg = self.allowed.iter().copied().find(|alg| key_alg(*alg) == declared)?;
                fits(&alg).then_some(alg)?
            }
            None => self.allowed.iter().copied().find(fits)?,
        };
        let b64 = |text: &str| URL_SAFE_NO_PAD.decode(text.as_bytes()).ok();
        let verifier = match &jwk.algorithm {
            AlgorithmParameters::RSA(params) => {
                Verifier::Rsa(RsaPublicKeyComponents { n: b64(&params.n)?, e: b64(&params.e)? })
            }
            AlgorithmParameters::EllipticCurve(params) => {
                let (x, y) = (b64(&params.x)?, b64(&params.y)?);
                if x.len() != 32 || y.len() != 32 {
                    return None;
                }
                // SEC 1 uncompressed point: 0x04 || x || y.
                let point = [&[0x04][..], &x, &y].concat();
                Verifier::Other(UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point))
            }
            AlgorithmParameters::OctetKeyPair(params) => {
                Verifier::Other(UnparsedPublicKey::new(&ED25519, b64(&params.x)?))
            }
            _ => return None,
        };
        Some(PublicKey { kid, algorithm, verifier })
    }

    async fn get_json<T: DeserializeOwned>(&self, url: &str) -> Result<T, DiscoveryError> {
        let http_error =
            |e: reqwest::Error| DiscoveryError::Http { url: url.to_owned(), reason: e.to_string() };
        let mut response = self
            .http
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(http_error)?;
        if !response.status().is_success() {
            return Err(DiscoveryError::Status {
                url: url.to_owned(),
                status: response.status().as_u16(),
            });
        }
        let too_large =
            || DiscoveryError::TooLarge { url: url.to_owned(), max_bytes: MAX_DOCUMENT_BYTES };
        if response.content_length().is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(http_error)? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body)
            .map_err(|e| DiscoveryError::Json { url: url.to_owned(), reason: e.to_string() })
    }
}

fn key_alg(alg: Algorithm) -> KeyAlgorithm {
    match alg {
        Algorithm::RS256 => KeyAlgorithm::RS256,
        Algorithm::ES256 => KeyAlgorithm::ES256,
        Algorithm::EdDSA => KeyAlgorithm::EdDSA,
        // Not reachable from `SigningAlgorithm`; a value no JWK can declare.
        _ => KeyAlgorithm::UNKNOWN_ALGORITHM,
    }
}
