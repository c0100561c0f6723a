//! What a service trusts: one issuer, its audiences, the algorithms and the time bounds.

use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde::Deserialize;

/// Tokens larger than this are refused before any decoding. Keycloak access tokens with a
/// few dozen roles stay well under 4 KiB; 8 KiB is also the usual HTTP header line limit.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Discovery documents and JWKS larger than this are refused while being read.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;

/// A signature algorithm a service may accept.
///
/// Only asymmetric algorithms exist here: a resource server that accepted HMAC would verify
/// with a secret it shares with the IdP, and a confused verifier could use a public key as
/// that secret (RFC 8725 §2.1, §3.1). Making HS* unrepresentable closes that door for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
pub enum SigningAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256: Keycloak's default.
    RS256,
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// Ed25519.
    EdDSA,
}

impl SigningAlgorithm {
    /// The JWS `alg` name.
    pub fn as_str(self) -> &'static str {
        match self {
            SigningAlgorithm::RS256 => "RS256",
            SigningAlgorithm::ES256 => "ES256",
            SigningAlgorithm::EdDSA => "EdDSA",
        }
    }

    /// The algorithm with this JWS `alg` name, if ferrobank implements it.
    pub fn parse(name: &str) -> Option<Self> {
        [SigningAlgorithm::RS256, SigningAlgorithm::ES256, SigningAlgorithm::EdDSA]
            .into_iter()
            .find(|a| a.as_str() == name)
    }

    pub(crate) fn to_jwt(self) -> Algorithm {
        match self {
            SigningAlgorithm::RS256 => Algorithm::RS256,
            SigningAlgorithm::ES256 => Algorithm::ES256,
            SigningAlgorithm::EdDSA => Algorithm::EdDSA,
        }
    }
}

/// Configuration of a [`super::TokenValidator`]; units are in the field names.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The issuer URL, exactly as it appears in tokens' `iss`
    /// (Keycloak: `{base}/realms/{realm}`). Discovery is read from
    /// `{issuer}/.well-known/openid-configuration`.
    pub issuer: String,
    /// Accepted `aud` values: a token must name at least one.
    pub audiences: Vec<String>,
    /// Accepted signature algorithms; the token's `alg` header only selects among them.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<SigningAlgorithm>,
    /// Allowed clock skew for `exp`, `nbf` and `iat`.
    #[serde(default = "default_leeway_s")]
    pub leeway_s: u64,
    /// Keys older than this are refreshed on next use (the old ones serve meanwhile).
    #[serde(default = "default_jwks_refresh_after_ms")]
    pub jwks_refresh_after_ms: u64,
    /// At most one JWKS fetch per this interval, whatever the traffic (unknown `kid`s
    /// are attacker-controlled: they must not turn into IdP load).
    #[serde(default = "default_jwks_refresh_min_interval_ms")]
    pub jwks_refresh_min_interval_ms: u64,
    /// How long after the last successful fetch the cached keys still serve while the IdP
    /// cannot be reached; past it every token is refused.
    #[serde(default = "default_jwks_max_staleness_ms")]
    pub jwks_max_staleness_ms: u64,
    /// Tokens longer than this are refused unread.
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// Timeout of one discovery or JWKS request (connect + response).
    #[serde(default = "default_http_timeout_ms")]
    pub http_timeout_ms: u64,
    /// PEM file of extra certificate authorities trusted for an `https://` issuer (a
    /// cluster's or company's private CA), on top of the system's trust store.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
}

fn default_algorithms() -> Vec<SigningAlgorithm> {
    vec![SigningAlgorithm::RS256]
}
fn default_leeway_s() -> u64 {
    30
}
fn default_jwks_refresh_after_ms() -> u64 {
    300_000
}
fn default_jwks_refresh_min_interval_ms() -> u64 {
    10_000
}
fn default_jwks_max_staleness_ms() -> u64 {
    6 * 3600 * 1000
}
fn default_max_token_bytes() -> usize {
    DEFAULT_MAX_TOKEN_BYTES
}
fn default_http_timeout_ms() -> u64 {
    5_000
}

impl OidcConfig {
    /// A configuration with the defaults for everything but the issuer and audiences.
    pub fn new(issuer: impl Into<String>, audiences: Vec<String>) -> Self {
        OidcConfig {
            issuer: issuer.into(),
            audiences,
            algorithms: default_algorithms(),
            leeway_s: default_leeway_s(),
            jwks_refresh_after_ms: default_jwks_refresh_after_ms(),
            jwks_refresh_min_interval_ms: default_jwks_refresh_min_interval_ms(),
            jwks_max_staleness_ms: default_jwks_max_staleness_ms(),
            max_token_bytes: default_max_token_bytes(),
            http_timeout_ms: default_http_timeout_ms(),
            ca_file: None,
        }
    }

    /// Refuses configurations that would validate nothing or validate too much.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let scheme_ok = self.issuer.starts_with("https://") || self.issuer.starts_with("http://");
        if !scheme_ok || self.issuer.contains(['?', '#']) {
            return Err(ConfigError::Issuer(self.issuer.clone()));
        }
        // RFC 8725 §3.9: without an audience check a token for any client of the realm
        // would be accepted here.
        if self.audiences.is_empty() || self.audiences.iter().any(String::is_empty) {
            return Err(ConfigError::NoAudience);
        }
        if self.algorithms.is_empty() {
            return Err(ConfigError::NoAlgorithm);
        }
        if self.leeway_s > 300 {
            return Err(ConfigError::Bound { field: "leeway_s", max: 300 });
        }
        if self.max_token_bytes == 0 || self.max_token_bytes > 64 * 1024 {
            return Err(ConfigError::Bound { field: "max_token_bytes", max: 64 * 1024 });
        }
        if self.http_timeout_ms == 0 || self.http_timeout_ms > 60_000 {
            return Err(ConfigError::Bound { field: "http_timeout_ms", max: 60_000 });
        }
        if self.jwks_max_staleness_ms < self.jwks_refresh_min_interval_ms {
            return Err(ConfigError::StalenessBelowRefreshInterval);
        }
        Ok(())
    }

    pub(crate) fn refresh_after(&self) -> Duration {
        Duration::from_millis(self.jwks_refresh_after_ms)
    }

    pub(crate) fn refresh_min_interval(&self) -> Duration {
        Duration::from_millis(self.jwks_refresh_min_interval_ms)
    }

    pub(crate) fn max_staleness(&self) -> Duration {
        Duration::from_millis(self.jwks_max_staleness_ms)
    }
}

/// A configuration [`OidcConfig::validate`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The issuer is not an http(s) URL without query or fragment.
    #[error("oidc issuer {0:?} is not an http(s) URL without query or fragment")]
    Issuer(String),
    /// No accepted audience (or an empty one).
    #[error("oidc audiences must name at least one non-empty audience")]
    NoAudience,
    /// No accepted algorithm.
    #[error("oidc algorithms must name at least one algorithm")]
    NoAlgorithm,
    /// A bound is out of range.
    #[error("oidc {field} must be between 1 and {max}")]
    Bound {
        /// The field.
        field: &'static str,
        /// Its maximum.
        max: u64,
    },
    /// Keys would go stale before they may be refreshed.
    #[error("oidc jwks_max_staleness_ms must be at least jwks_refresh_min_interval_ms")]
    StalenessBelowRefreshInterval,
    /// The CA file cannot be read or holds no certificate.
    #[error("oidc ca_file {path}: {reason}")]
    CaFile {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("oidc http client: {0}")]
    HttpClient(String),
}
