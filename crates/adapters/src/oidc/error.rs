//! Why a token or the IdP's documents were refused.

/// Why a token was refused. Every variant means "not authenticated": the HTTP layer maps
/// all of them to 401 with `WWW-Authenticate: Bearer error="invalid_token"` (RFC 6750
/// §3.1) and logs [`TokenError::code`], never the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Longer than the configured bound; refused before any decoding.
    #[error("token longer than {max_bytes} bytes")]
    TooLarge {
        /// The configured bound.
        max_bytes: usize,
    },
    /// Not three base64url segments with a JSON header and claims.
    #[error("token is not a well-formed JWS compact serialization")]
    Malformed,
    /// `alg` is `none` or not in the configured allow-list (RFC 8725 §3.1).
    #[error("token algorithm is not allowed")]
    AlgorithmNotAllowed,
    /// The header carries a key or key location (`jku`, `x5u`, `jwk`, `x5c`) or `crit`.
    /// Keys only ever come from the configured issuer's JWKS (RFC 8725 §3.10, RFC 7515
    /// §4.1.11 for `crit`).
    #[error("token header parameter {0} is not accepted")]
    ForbiddenHeader(&'static str),
    /// The header has no `kid`.
    #[error("token has no kid")]
    MissingKid,
    /// No key with this `kid`, even after a refresh of the JWKS.
    #[error("token kid is unknown")]
    UnknownKid,
    /// A key has this `kid` but its type, curve, `alg` or `use` does not fit the token.
    #[error("token kid names a key unfit for its algorithm")]
    KeyMismatch,
    /// No keys: the IdP has not been reached, or not for longer than the staleness bound.
    #[error("signing keys are unavailable")]
    KeysUnavailable,
    /// The signature does not verify.
    #[error("token signature is invalid")]
    BadSignature,
    /// `exp` is past (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("token not yet valid")]
    NotYetValid,
    /// `iat` is in the future (beyond the leeway).
    #[error("token issued in the future")]
    IssuedInFuture,
    /// `iss` is not the configured issuer.
    #[error("token issuer is not trusted")]
    WrongIssuer,
    /// `aud` names none of the accepted audiences.
    #[error("token audience is not accepted")]
    WrongAudience,
    /// The `typ` header or claim says this is not an access token (an ID or refresh token).
    #[error("token is not an access token")]
    WrongType,
    /// A required claim is absent.
    #[error("token has no {0} claim")]
    MissingClaim(&'static str),
    /// A claim has the wrong JSON type.
    #[error("token claims are malformed")]
    InvalidClaims,
}

impl TokenError {
    /// A stable, machine-readable code for logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::TooLarge { .. } => "token_too_large",
            TokenError::Malformed => "malformed",
            TokenError::AlgorithmNotAllowed => "algorithm_not_allowed",
            TokenError::ForbiddenHeader(_) => "forbidden_header",
            TokenError::MissingKid => "missing_kid",
            TokenError::UnknownKid => "unknown_kid",
            TokenError::KeyMismatch => "key_mismatch",
            TokenError::KeysUnavailable => "keys_unavailable",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::IssuedInFuture => "issued_in_future",
            TokenError::WrongIssuer => "wrong_issuer",
            TokenError::WrongAudience => "wrong_audience",
            TokenError::WrongType => "wrong_type",
            TokenError::MissingClaim(_) => "missing_claim",
            TokenError::InvalidClaims => "invalid_claims",
        }
    }
}

/// Why the IdP's discovery document or key set could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    /// The request failed (connect, timeout, protocol).
    #[error("request to {url} failed: {reason}")]
    Http {
        /// The URL requested.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The IdP answered with a non-2xx status (redirects are not followed).
    #[error("{url} answered {status}")]
    Status {
        /// The URL requested.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// The document exceeds [`super::config::MAX_DOCUMENT_BYTES`].
    #[error("{url} answered more than {max_bytes} bytes")]
    TooLarge {
        /// The URL requested.
        url: String,
        /// The bound.
        max_bytes: usize,
    },
    /// The document is not the expected JSON.
    #[error("{url} is not a valid document: {reason}")]
    Json {
        /// The URL requested.
        url: String,
        /// The parse error.
        reason: String,
    },
    /// OpenID Connect Discovery 1.0 §4.3: the document's `issuer` must be identical to the
    /// configured issuer, or an IdP could vouch for another.
    #[error("discovery issuer {found:?} differs from the configured {expected:?}")]
    IssuerMismatch {
        /// The configured issuer.
        expected: String,
        /// The document's issuer.
        found: String,
    },
    /// `jwks_uri` is not https while the issuer is.
    #[error("jwks_uri {0:?} is not https")]
    InsecureJwksUri(String),
    /// The JWKS has no key this validator could use.
    #[error("the JWKS has no usable signing key")]
    NoUsableKeys,
}
