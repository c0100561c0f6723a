//! Time-based one-time passwords (RFC 6238, HMAC-SHA1, the authenticator-app default).

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha1::Sha1;
use subtle::ConstantTimeEq;

/// The realm's OTP policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TotpPolicy {
    /// Digits per code (6 or 8).
    pub digits: u32,
    /// Seconds per time step.
    pub period_s: u64,
    /// Steps before and after now that are accepted too.
    pub window: u64,
}

impl Default for TotpPolicy {
    /// Keycloak's defaults: 6 digits, 30 s, one step of drift.
    fn default() -> Self {
        Self { digits: 6, period_s: 30, window: 1 }
    }
}

/// A new random secret: 160 bits, RFC 4226's recommended length.
pub fn new_secret() -> Vec<u8> {
    let mut secret = vec![0u8; 20];
    rand::thread_rng().fill_bytes(&mut secret);
    secret
}

/// RFC 4648 base32 without padding, as authenticator apps expect in `otpauth://` URIs.
pub fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    for chunk in bytes.chunks(5) {
        let mut buf = [0u8; 5];
        buf[..chunk.len()].copy_from_slice(chunk);
        let bits = buf.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        let chars = (chunk.len() * 8).div_ceil(5);
        for i in 0..chars {
            let index = (bits >> (35 - i * 5)) & 31;
            out.push(char::from(ALPHABET[usize::try_from(index).unwrap_or(0)]));
        }
    }
    out
}

/// The code for `counter` (RFC 4226 §5.3, dynamic truncation).
fn hotp(secret: &[u8], counter: u64, digits: u32) -> String {
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(secret) else { return String::new() };
    mac.update(&counter.to_be_bytes());
    let digest = mac.finalize().into_bytes();
    let offset = usize::from(digest[19] & 0x0f);
    let binary = u32::from_be_bytes([
        digest[offset] & 0x7f,
        digest[offset + 1],
        digest[offset + 2],
        digest[offset + 3],
    ]);
    let code = binary % 10u32.pow(digits);
    format!("{code:0width$}", width = usize::try_from(digits).unwrap_or(6))
}

/// The code valid at `unix_s`.
pub fn code_at(secret: &[u8], unix_s: u64, policy: TotpPolicy) -> String {
    hotp(secret, unix_s / policy.period_s.max(1), policy.digits)
}

/// The time step `code` matches at `unix_s` within the window, compared in constant time.
/// The caller refuses a step it has already accepted (a code is good once).
pub fn verify(secret: &[u8], code: &str, unix_s: u64, policy: TotpPolicy) -> Option<u64> {
    let step = unix_s / policy.period_s.max(1);
    let first = step.saturating_sub(policy.window);
    (first..=step + policy.window).find(|counter| {
        bool::from(hotp(secret, *counter, policy.digits).as_bytes().ct_eq(code.trim().as_bytes()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_6238_appendix_b_sha1_vectors() {
        let secret = b"12345678901234567890";
        let policy = TotpPolicy { digits: 8, period_s: 30, window: 0 };
        for (time, code) in [
            (59, "94287082"),
            (1_111_111_109, "07081804"),
            (1_111_111_111, "14050471"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
            (20_000_000_000, "65353130"),
        ] {
            assert_eq!(code_at(secret, time, policy), code, "at {time}");
        }
    }

    #[test]
    fn codes_verify_within_the_window_only() {
        let secret = new_secret();
        let policy = TotpPolicy::default();
        let now = 1_700_000_000;
        assert_eq!(verify(&secret, &code_at(&secret, now, policy), now, policy), Some(now / 30));
        assert!(verify(&secret, &code_at(&secret, now - 30, policy), now, policy).is_some());
        assert!(verify(&secret, &code_at(&secret, now - 90, policy), now, policy).is_none());
        assert!(verify(&secret, "000000x", now, policy).is_none());
    }

    #[test]
    fn base32_matches_rfc_4648() {
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
        assert_eq!(base32(b"12345678901234567890"), "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
    }
}
