//! The realm's signing keys: generated here, stored by the SQL store, published as JWKS.
//!
//! Rotation adds a key and retires the previous one; a retired key stays in the JWKS until
//! every token it signed has expired (`purge_after_ms`), so services that cached it keep
//! accepting those tokens, and services that see the new `kid` refetch the JWKS.
//!
//! Signing uses `ring` with the key parsed once: RSA-2048 signing dominates a token grant,
//! and ring's is several times faster than re-parsing the key per token; ring also blinds
//! RSA private-key operations against timing attacks.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{EncodingKey, Header};
use rand::RngCore;
use rand::rngs::OsRng;
use serde::Serialize;

use std::sync::Arc;

use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, RSA_PKCS1_SHA256, RsaKeyPair,
};

use crate::oidc::SigningAlgorithm;

/// A parsed private key, ready to sign.
enum Signer {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

impl Signer {
    fn new(algorithm: SigningAlgorithm, der: &[u8]) -> Result<Self, String> {
        let rng = SystemRandom::new();
        Ok(match algorithm {
            SigningAlgorithm::RS256 => {
                Signer::Rsa(RsaKeyPair::from_der(der).map_err(|e| e.to_string())?)
            }
            SigningAlgorithm::ES256 => Signer::Ec(
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
                    .map_err(|e| e.to_string())?,
            ),
            SigningAlgorithm::EdDSA => Signer::Ed(
                Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(|e| e.to_string())?,
            ),
        })
    }

    /// The JWS signature of `input` (RFC 7518 §3.3, §3.4 fixed r||s; RFC 8037 §3.1).
    fn sign(&self, input: &[u8]) -> Result<Vec<u8>, String> {
        let rng = SystemRandom::new();
        match self {
            Signer::Rsa(key) => {
                let mut signature = vec![0u8; key.public().modulus_len()];
                key.sign(&RSA_PKCS1_SHA256, &rng, input, &mut signature)
                    .map_err(|e| e.to_string())?;
                Ok(signature)
            }
            Signer::Ec(key) => {
                key.sign(&rng, input).map(|s| s.as_ref().to_vec()).map_err(|e| e.to_string())
            }
            Signer::Ed(key) => Ok(key.sign(input).as_ref().to_vec()),
        }
    }
}
use crate::sql::StoredKey;

/// RSA modulus size: 2048 bits is Keycloak's default and NIST's minimum through 2030.
const RSA_BITS: usize = 2048;

/// One signing key with its public half.
#[derive(Clone)]
pub struct SigningKey {
    /// Key id.
    pub kid: String,
    /// JWS algorithm.
    pub algorithm: SigningAlgorithm,
    signer: Arc<Signer>,
    /// The public key as a JWK (with `kid`, `alg`, `use`).
    pub jwk: Jwk,
    /// DER, base64, for the store.
    private_der_b64: String,
    /// When it was made.
    pub created_at_ms: i64,
    /// When it was replaced, if it was.
    pub retired_at_ms: Option<i64>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("created_at_ms", &self.created_at_ms)
            .field("retired_at_ms", &self.retired_at_ms)
            .finish_non_exhaustive()
    }
}

fn encoding_key(algorithm: SigningAlgorithm, der: &[u8]) -> EncodingKey {
    match algorithm {
        SigningAlgorithm::RS256 => EncodingKey::from_rsa_der(der),
        SigningAlgorithm::ES256 => EncodingKey::from_ec_der(der),
        SigningAlgorithm::EdDSA => EncodingKey::from_ed_der(der),
    }
}

impl SigningKey {
    /// A fresh key. RSA generation takes a moment (hundreds of ms): call it off the runtime.
    pub fn generate(algorithm: SigningAlgorithm, now_ms: i64) -> Result<Self, String> {
        let der = match algorithm {
            SigningAlgorithm::RS256 => {
                use rsa::pkcs1::EncodeRsaPrivateKey as _;
                let key =
                    rsa::RsaPrivateKey::new(&mut OsRng, RSA_BITS).map_err(|e| e.to_string())?;
                key.to_pkcs1_der().map_err(|e| e.to_string())?.as_bytes().to_vec()
            }
            SigningAlgorithm::ES256 => {
                use p256::pkcs8::EncodePrivateKey as _;
                let key = p256::ecdsa::SigningKey::random(&mut OsRng);
                key.to_pkcs8_der().map_err(|e| e.to_string())?.as_bytes().to_vec()
            }
            SigningAlgorithm::EdDSA => {
                // PKCS#8 v1 (RFC 8410 §7, without the optional public key): the 48-byte
                // form jsonwebtoken reads.
                const V1_PREFIX: [u8; 16] = [
                    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04,
                    0x22, 0x04, 0x20,
                ];
                let key = ed25519_dalek::SigningKey::generate(&mut OsRng);
                [V1_PREFIX.as_slice(), key.to_bytes().as_slice()].concat()
            }
        };
        let mut id = [0u8; 16];
        OsRng.fill_bytes(&mut id);
        Self::from_der(URL_SAFE_NO_PAD.encode(id), algorithm, &der, now_ms, None)
    }

    fn from_der(
        kid: String,
        algorithm: SigningAlgorithm,
        der: &[u8],
        created_at_ms: i64,
        retired_at_ms: Option<i64>,
    ) -> Result<Self, String> {
        let encoding = encoding_key(algorithm, der);
        let signer = Arc::new(Signer::new(algorithm, der)?);
        let mut jwk =
            Jwk::from_encoding_key(&encoding, algorithm.to_jwt()).map_err(|e| e.to_string())?;
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        jwk.common.key_algorithm = Some(match algorithm {
            SigningAlgorithm::RS256 => KeyAlgorithm::RS256,
            SigningAlgorithm::ES256 => KeyAlgorithm::ES256,
            SigningAlgorithm::EdDSA => KeyAlgorithm::EdDSA,
        });
        Ok(Self {
            kid,
            algorithm,
            signer,
            jwk,
            private_der_b64: STANDARD.encode(der),
            created_at_ms,
            retired_at_ms,
        })
    }

    /// Loads a stored key.
    pub fn from_stored(stored: &StoredKey) -> Result<Self, String> {
        let algorithm = SigningAlgorithm::parse(&stored.algorithm)
            .ok_or_else(|| format!("key {}: unknown algorithm {}", stored.kid, stored.algorithm))?;
        let der = STANDARD.decode(&stored.private_key).map_err(|e| e.to_string())?;
        Self::from_der(
            stored.kid.clone(),
            algorithm,
            &der,
            stored.created_at_ms,
            stored.retired_at_ms,
        )
    }

    /// The key as the store keeps it.
    pub fn to_stored(&self) -> StoredKey {
        StoredKey {
            kid: self.kid.clone(),
            algorithm: self.algorithm.as_str().to_owned(),
            private_key: self.private_der_b64.clone(),
            created_at_ms: self.created_at_ms,
            retired_at_ms: self.retired_at_ms,
        }
    }

    /// Signs `claims` as a compact JWS with this key's `kid` and the given `typ`.
    pub fn sign<T: Serialize>(&self, typ: &str, claims: &T) -> Result<String, String> {
        let mut header = Header::new(self.algorithm.to_jwt());
        header.kid = Some(self.kid.clone());
        header.typ = Some(typ.to_owned());
        let header = serde_json::to_vec(&header).map_err(|e| e.to_string())?;
        let claims = serde_json::to_vec(claims).map_err(|e| e.to_string())?;
        let input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims));
        let signature = self.signer.sign(input.as_bytes())?;
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }
}

/// A realm's keys, newest first: the first unretired one signs.
#[derive(Debug, Clone, Default)]
pub struct KeyRing {
    keys: Vec<SigningKey>,
}

impl KeyRing {
    /// From stored keys (any order).
    pub fn new(mut keys: Vec<SigningKey>) -> Self {
        keys.sort_by(|a, b| b.created_at_ms.cmp(&a.created_at_ms).then(b.kid.cmp(&a.kid)));
        Self { keys }
    }

    /// The key that signs new tokens.
    pub fn active(&self) -> Option<&SigningKey> {
        self.keys.iter().find(|k| k.retired_at_ms.is_none())
    }

    /// The key with this `kid`, retired or not.
    pub fn find(&self, kid: &str) -> Option<&SigningKey> {
        self.keys.iter().find(|k| k.kid == kid)
    }

    /// The public keys services may verify with: the active key and retired keys whose
    /// tokens may still be alive.
    pub fn jwks(&self) -> JwkSet {
        JwkSet { keys: self.keys.iter().map(|k| k.jwk.clone()).collect() }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use jsonwebtoken::{DecodingKey, Validation, decode};

    use super::*;

    #[test]
    fn every_algorithm_signs_tokens_its_jwk_verifies_and_survives_the_store() {
        for algorithm in [SigningAlgorithm::ES256, SigningAlgorithm::EdDSA, SigningAlgorithm::RS256]
        {
            let key = SigningKey::generate(algorithm, 1).unwrap();
            let key = SigningKey::from_stored(&key.to_stored()).unwrap();
            let token =
                key.sign("JWT", &serde_json::json!({"sub": "x", "exp": 4_000_000_000u64})).unwrap();
            let decoding = DecodingKey::from_jwk(&key.jwk).unwrap();
            let claims: serde_json::Value =
                decode(&token, &decoding, &Validation::new(algorithm.to_jwt())).unwrap().claims;
            assert_eq!(claims["sub"], "x");
            assert_eq!(key.jwk.common.key_id.as_deref(), Some(key.kid.as_str()));
        }
    }

    #[test]
    fn the_newest_unretired_key_signs_and_retired_keys_stay_published() {
        let old = SigningKey {
            retired_at_ms: Some(5),
            ..SigningKey::generate(SigningAlgorithm::ES256, 1).unwrap()
        };
        let new = SigningKey::generate(SigningAlgorithm::ES256, 5).unwrap();
        let ring = KeyRing::new(vec![old.clone(), new.clone()]);
        assert_eq!(ring.active().unwrap().kid, new.kid);
        assert_eq!(ring.jwks().keys.len(), 2);
    }
}
