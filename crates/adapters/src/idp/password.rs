//! Password hashing (argon2id with OWASP's parameters) and the realm's password policy.

use std::sync::{Arc, LazyLock};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine as _;
use tokio::sync::Semaphore;

/// OWASP Password Storage Cheat Sheet, Argon2id: "a minimum configuration of 19 MiB of
/// memory, an iteration count of 2, and 1 degree of parallelism".
const MEMORY_KIB: u32 = 19 * 1024;
const ITERATIONS: u32 = 2;
const PARALLELISM: u32 = 1;

/// Longest password accepted at login, in bytes: hashing is the expensive part of a login,
/// and nobody's password is longer (the banking realm's policy says 128 characters).
pub const MAX_PASSWORD_BYTES: usize = 1024;

fn argon2() -> Argon2<'static> {
    // The parameters are constants within argon2's documented bounds.
    let params = Params::new(MEMORY_KIB, ITERATIONS, PARALLELISM, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// A hash of a password nobody has: unknown users are checked against it, so a login for
/// a user who does not exist costs the same time as one for a user who does.
static DUMMY_HASH: LazyLock<String> =
    LazyLock::new(|| hash_blocking("ferrobank-dummy-password").unwrap_or_default());

/// Hashes a password (PHC string, argon2id). Blocking: ~tens of milliseconds of CPU.
pub fn hash_blocking(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Whether `password` matches `phc` (constant-time comparison inside argon2). A missing
/// hash is checked against [`DUMMY_HASH`] and never matches. Blocking. Hashes imported
/// from Keycloak's PBKDF2 providers ([`from_keycloak`]) are verified too.
pub fn verify_blocking(password: &str, phc: Option<&str>) -> bool {
    let (stored, real) = match phc {
        Some(phc) => (phc, true),
        None => (DUMMY_HASH.as_str(), false),
    };
    if stored.starts_with(KEYCLOAK_PBKDF2) {
        return verify_keycloak_pbkdf2(password, stored) && real;
    }
    let Ok(parsed) = PasswordHash::new(stored) else { return false };
    // The parameters come from the hash itself (imported argon2i/d, other costs).
    Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok() && real
}

/// Whether a stored hash is weaker than (or different from) what [`hash_blocking`] makes
/// now: it is replaced after the next successful login.
pub fn needs_rehash(phc: &str) -> bool {
    !phc.starts_with(&format!("$argon2id$v=19$m={MEMORY_KIB},t={ITERATIONS},p={PARALLELISM}$"))
}

/// Prefix of PBKDF2 hashes imported from Keycloak: `$keycloak-pbkdf2-<prf>$i=<n>$<salt>$<hash>`.
const KEYCLOAK_PBKDF2: &str = "$keycloak-pbkdf2-";

/// Keycloak pads passwords shorter than 14 characters with NULs before PBKDF2
/// (`Pbkdf2PasswordHashProvider.pbkdf2PasswordPadding`, for FIPS providers).
const KEYCLOAK_PBKDF2_MIN_CHARS: usize = 14;

fn verify_keycloak_pbkdf2(password: &str, stored: &str) -> bool {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use subtle::ConstantTimeEq as _;
    let mut parts = stored.trim_start_matches('$').split('$');
    let (Some(scheme), Some(params), Some(salt), Some(hash)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let Some(iterations) = params.strip_prefix("i=").and_then(|i| i.parse::<u32>().ok()) else {
        return false;
    };
    let (Ok(salt), Ok(expected)) = (STANDARD.decode(salt), STANDARD.decode(hash)) else {
        return false;
    };
    let mut padded = password.to_owned();
    let chars = padded.encode_utf16().count();
    padded.extend(std::iter::repeat_n('\0', KEYCLOAK_PBKDF2_MIN_CHARS.saturating_sub(chars)));
    let mut derived = vec![0u8; expected.len()];
    let prf = scheme.trim_start_matches("keycloak-pbkdf2-");
    let done = match prf {
        "sha1" => pbkdf2::pbkdf2::<hmac::Hmac<sha1::Sha1>>(
            padded.as_bytes(),
            &salt,
            iterations,
            &mut derived,
        ),
        "sha256" => pbkdf2::pbkdf2::<hmac::Hmac<sha2::Sha256>>(
            padded.as_bytes(),
            &salt,
            iterations,
            &mut derived,
        ),
        "sha512" => pbkdf2::pbkdf2::<hmac::Hmac<sha2::Sha512>>(
            padded.as_bytes(),
            &salt,
            iterations,
            &mut derived,
        ),
        _ => return false,
    };
    done.is_ok() && !expected.is_empty() && bool::from(derived.ct_eq(&expected))
}

/// Keycloak's `credentialData` of a password.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeycloakCredentialData {
    hash_iterations: u32,
    algorithm: String,
    #[serde(default)]
    additional_parameters: std::collections::BTreeMap<String, Vec<String>>,
}

/// Keycloak's `secretData` of a password.
#[derive(serde::Deserialize)]
struct KeycloakSecretData {
    value: String,
    salt: String,
}

/// Most PBKDF2 iterations accepted from a file: one login must not cost seconds.
const MAX_PBKDF2_ITERATIONS: u32 = 1_000_000;

/// A hashed password from a Keycloak export (`secretData`, `credentialData`: JSON strings,
/// as in `CredentialRepresentation`) in the form [`verify_blocking`] reads. Supported: the
/// `argon2` provider (Keycloak's default since 24; becomes a standard PHC string) and
/// `pbkdf2`, `pbkdf2-sha256`, `pbkdf2-sha512`. Either is rehashed with argon2id at the
/// user's next login.
pub fn from_keycloak(secret_data: &str, credential_data: &str) -> Result<String, String> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
    let secret: KeycloakSecretData =
        serde_json::from_str(secret_data).map_err(|e| format!("secretData: {e}"))?;
    let data: KeycloakCredentialData =
        serde_json::from_str(credential_data).map_err(|e| format!("credentialData: {e}"))?;
    let salt = STANDARD.decode(&secret.salt).map_err(|e| format!("secretData.salt: {e}"))?;
    let value = STANDARD.decode(&secret.value).map_err(|e| format!("secretData.value: {e}"))?;
    let param = |key: &str, default: &str| -> String {
        data.additional_parameters
            .get(key)
            .and_then(|v| v.first())
            .cloned()
            .unwrap_or_else(|| default.to_owned())
    };
    match data.algorithm.as_str() {
        "argon2" => {
            let variant = match param("type", "id").as_str() {
                "id" => "argon2id",
                "i" => "argon2i",
                "d" => "argon2d",
                other => return Err(format!("argon2 type {other:?} is not supported")),
            };
            let version = match param("version", "1.3").as_str() {
                "1.3" => 19,
                "1.0" => 16,
                other => return Err(format!("argon2 version {other:?} is not supported")),
            };
            let memory: u32 =
                param("memory", "7168").parse().map_err(|_| "argon2 memory is not a number")?;
            let parallelism: u32 = param("parallelism", "1")
                .parse()
                .map_err(|_| "argon2 parallelism is not a number")?;
            let phc = format!(
                "${variant}$v={version}$m={memory},t={},p={parallelism}${}${}",
                data.hash_iterations,
                STANDARD_NO_PAD.encode(&salt),
                STANDARD_NO_PAD.encode(&value)
            );
            PasswordHash::new(&phc).map_err(|e| format!("argon2 parameters: {e}"))?;
            Ok(phc)
        }
        algorithm @ ("pbkdf2" | "pbkdf2-sha256" | "pbkdf2-sha512") => {
            if data.hash_iterations == 0 || data.hash_iterations > MAX_PBKDF2_ITERATIONS {
                return Err(format!(
                    "hashIterations must be between 1 and {MAX_PBKDF2_ITERATIONS}"
                ));
            }
            let prf = match algorithm {
                "pbkdf2" => "sha1",
                "pbkdf2-sha256" => "sha256",
                _ => "sha512",
            };
            Ok(format!(
                "{KEYCLOAK_PBKDF2}{prf}$i={}${}${}",
                data.hash_iterations,
                STANDARD.encode(&salt),
                STANDARD.encode(&value)
            ))
        }
        other => Err(format!("password hash algorithm {other:?} is not supported")),
    }
}

/// Length of the hashes [`hash_blocking`] makes (argon2's default).
const OUTPUT_BYTES: usize = 32;

/// Runs argon2 off the async runtime, at most one per core at a time, each in one of a
/// fixed set of preallocated 19 MiB work areas: memory stays bounded under a flood of
/// logins (allocating 19 MiB per login lets the allocator keep one copy per thread).
#[derive(Debug, Clone)]
pub struct Hasher {
    permits: Arc<Semaphore>,
    areas: Arc<std::sync::Mutex<Vec<Vec<argon2::Block>>>>,
}

impl Default for Hasher {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let blocks = usize::try_from(MEMORY_KIB).unwrap_or(0);
        let areas = (0..cores).map(|_| vec![argon2::Block::default(); blocks]).collect();
        Self {
            permits: Arc::new(Semaphore::new(cores)),
            areas: Arc::new(std::sync::Mutex::new(areas)),
        }
    }
}

impl Hasher {
    /// Runs `work` with a work area, off the runtime.
    async fn with_area<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut [argon2::Block]) -> T + Send + 'static,
    ) -> Option<T> {
        let _permit = self.permits.acquire().await.ok()?;
        // A permit guarantees an area: there are as many areas as permits.
        let mut area =
            self.areas.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop()?;
        let (out, area) = tokio::task::spawn_blocking(move || {
            let out = work(&mut area);
            (out, area)
        })
        .await
        .ok()?;
        self.areas.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(area);
        Some(out)
    }

    /// Hashes `password`.
    pub async fn hash(&self, password: String) -> Result<String, String> {
        let salt = SaltString::generate(&mut OsRng);
        self.with_area(move |area| {
            let mut salt_bytes = [0u8; 64];
            let salt_bytes = salt.decode_b64(&mut salt_bytes).map_err(|e| e.to_string())?;
            let mut out = [0u8; OUTPUT_BYTES];
            argon2()
                .hash_password_into_with_memory(password.as_bytes(), salt_bytes, &mut out, area)
                .map_err(|e| e.to_string())?;
            Ok(format!(
                "$argon2id$v=19$m={MEMORY_KIB},t={ITERATIONS},p={PARALLELISM}${}${}",
                salt.as_str(),
                base64::engine::general_purpose::STANDARD_NO_PAD.encode(out)
            ))
        })
        .await
        .unwrap_or_else(|| Err("the hasher is shutting down".into()))
    }

    /// Checks `password` against `phc` (or the dummy hash when `None`).
    pub async fn verify(&self, password: String, phc: Option<String>) -> bool {
        self.with_area(move |area| verify_in(&password, phc.as_deref(), area))
            .await
            .unwrap_or(false)
    }
}

/// [`verify_blocking`] in a preallocated work area when the hash has today's parameters.
fn verify_in(password: &str, phc: Option<&str>, area: &mut [argon2::Block]) -> bool {
    use subtle::ConstantTimeEq as _;
    let (stored, real) = match phc {
        Some(phc) => (phc, true),
        None => (DUMMY_HASH.as_str(), false),
    };
    if needs_rehash(stored) {
        // Imported hashes (PBKDF2, other argon2 costs): rare, and replaced at this login.
        return verify_blocking(password, phc);
    }
    let Ok(parsed) = PasswordHash::new(stored) else { return false };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else { return false };
    let mut salt_bytes = [0u8; 64];
    let Ok(salt_bytes) = salt.decode_b64(&mut salt_bytes) else { return false };
    let mut out = vec![0u8; expected.len()];
    let computed =
        argon2().hash_password_into_with_memory(password.as_bytes(), salt_bytes, &mut out, area);
    computed.is_ok() && bool::from(out.as_slice().ct_eq(expected.as_bytes())) && real
}

/// One rule of a Keycloak password policy string (`length(12) and digits(1) and ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PolicyRule {
    /// At least n characters.
    Length(usize),
    /// At most n characters.
    MaxLength(usize),
    /// At least n upper-case letters.
    UpperCase(usize),
    /// At least n lower-case letters.
    LowerCase(usize),
    /// At least n digits.
    Digits(usize),
    /// At least n characters that are neither letters nor digits.
    SpecialChars(usize),
    /// Not equal to the username.
    NotUsername,
    /// Not equal to the email address.
    NotEmail,
    /// Not one of the last n passwords.
    PasswordHistory(usize),
}

/// A realm's password policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PasswordPolicy {
    /// The rules, in the policy string's order.
    pub rules: Vec<PolicyRule>,
}

impl PasswordPolicy {
    /// Parses Keycloak's `passwordPolicy` string; an unknown rule is an error (a policy
    /// that is silently not enforced would be worse than none).
    pub fn parse(policy: &str) -> Result<Self, String> {
        let mut rules = Vec::new();
        for part in policy.split(" and ").map(str::trim).filter(|p| !p.is_empty()) {
            let (name, arg) = match part.split_once('(') {
                Some((name, rest)) => (name, Some(rest.trim_end_matches(')'))),
                None => (part, None),
            };
            let n = |default: usize| -> Result<usize, String> {
                match arg {
                    None => Ok(default),
                    Some(arg) => arg
                        .trim()
                        .parse()
                        .map_err(|_| format!("password policy {part:?}: not a number")),
                }
            };
            rules.push(match name {
                "length" => PolicyRule::Length(n(8)?),
                "maxLength" => PolicyRule::MaxLength(n(64)?),
                "upperCase" => PolicyRule::UpperCase(n(1)?),
                "lowerCase" => PolicyRule::LowerCase(n(1)?),
                "digits" => PolicyRule::Digits(n(1)?),
                "specialChars" => PolicyRule::SpecialChars(n(1)?),
                "notUsername" => PolicyRule::NotUsername,
                "notEmail" => PolicyRule::NotEmail,
                "passwordHistory" => PolicyRule::PasswordHistory(n(3)?),
                other => return Err(format!("password policy {other:?} is not supported")),
            });
        }
        Ok(Self { rules })
    }

    /// How many previous password hashes to keep.
    pub fn history(&self) -> usize {
        self.rules
            .iter()
            .find_map(|r| match r {
                PolicyRule::PasswordHistory(n) => Some(*n),
                _ => None,
            })
            .unwrap_or(0)
    }

    /// The first rule `password` breaks, as a message for the user. History is checked by
    /// the caller (it needs the old hashes).
    pub fn check(&self, password: &str, username: &str, email: Option<&str>) -> Result<(), String> {
        let count = |f: fn(&char) -> bool| password.chars().filter(f).count();
        for rule in &self.rules {
            let broken = match *rule {
                PolicyRule::Length(n) if password.chars().count() < n => {
                    Some(format!("must be at least {n} characters long"))
                }
                PolicyRule::MaxLength(n) if password.chars().count() > n => {
                    Some(format!("must be at most {n} characters long"))
                }
                PolicyRule::UpperCase(n) if count(|c| c.is_uppercase()) < n => {
                    Some(format!("must contain at least {n} upper-case letter(s)"))
                }
                PolicyRule::LowerCase(n) if count(|c| c.is_lowercase()) < n => {
                    Some(format!("must contain at least {n} lower-case letter(s)"))
                }
                PolicyRule::Digits(n) if count(|c| c.is_ascii_digit()) < n => {
                    Some(format!("must contain at least {n} digit(s)"))
                }
                PolicyRule::SpecialChars(n) if count(|c| !c.is_alphanumeric()) < n => {
                    Some(format!("must contain at least {n} special character(s)"))
                }
                PolicyRule::NotUsername if password.eq_ignore_ascii_case(username) => {
                    Some("must not be the username".to_owned())
                }
                PolicyRule::NotEmail
                    if email.is_some_and(|email| password.eq_ignore_ascii_case(email)) =>
                {
                    Some("must not be the email address".to_owned())
                }
                _ => None,
            };
            if let Some(message) = broken {
                return Err(format!("The password {message}."));
            }
        }
        if password.len() > MAX_PASSWORD_BYTES {
            return Err(format!("The password must be at most {MAX_PASSWORD_BYTES} bytes long."));
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const BANKING: &str = "length(12) and maxLength(128) and upperCase(1) and lowerCase(1) and \
        digits(1) and specialChars(1) and notUsername and notEmail and passwordHistory(5)";

    #[test]
    fn hashes_are_argon2id_with_owasp_parameters_and_verify() {
        let phc = hash_blocking("Correct-Horse-9").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(verify_blocking("Correct-Horse-9", Some(&phc)));
        assert!(!verify_blocking("correct-horse-9", Some(&phc)));
        assert!(!verify_blocking("ferrobank-dummy-password", None), "the dummy never matches");
        assert!(!verify_blocking("x", Some("not a phc string")));
    }

    #[tokio::test]
    async fn the_pooled_hasher_agrees_with_the_plain_functions() {
        let hasher = Hasher::default();
        let pooled = hasher.hash("Pooled-Passw0rd".into()).await.unwrap();
        assert!(!needs_rehash(&pooled), "{pooled}");
        assert!(verify_blocking("Pooled-Passw0rd", Some(&pooled)));
        let plain = hash_blocking("Plain-Passw0rd").unwrap();
        assert!(hasher.verify("Plain-Passw0rd".into(), Some(plain.clone())).await);
        assert!(!hasher.verify("plain-passw0rd".into(), Some(plain)).await);
        assert!(!hasher.verify("ferrobank-dummy-password".into(), None).await);
    }

    #[test]
    fn keycloak_argon2_and_pbkdf2_exports_verify() {
        use base64::Engine as _;
        use base64::engine::general_purpose::STANDARD;
        // Made the way Keycloak's providers make them (see `from_keycloak`).
        let salt = b"0123456789abcdef";
        let mut pbkdf2 = [0u8; 64];
        // "short" is padded with NULs to 14 characters first.
        let padded = format!("short{}", "\0".repeat(9));
        pbkdf2::pbkdf2::<hmac::Hmac<sha2::Sha512>>(padded.as_bytes(), salt, 1000, &mut pbkdf2)
            .unwrap();
        let secret =
            serde_json::json!({"value": STANDARD.encode(pbkdf2), "salt": STANDARD.encode(salt)})
                .to_string();
        let data = serde_json::json!({"hashIterations": 1000, "algorithm": "pbkdf2-sha512", "additionalParameters": {}}).to_string();
        let stored = from_keycloak(&secret, &data).unwrap();
        assert!(verify_blocking("short", Some(&stored)));
        assert!(!verify_blocking("Short", Some(&stored)));
        assert!(needs_rehash(&stored));

        let params = argon2::Params::new(7168, 5, 1, Some(32)).unwrap();
        let mut hash = [0u8; 32];
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(b"Keycloak-Pass1", salt, &mut hash)
            .unwrap();
        let secret =
            serde_json::json!({"value": STANDARD.encode(hash), "salt": STANDARD.encode(salt)})
                .to_string();
        let data = serde_json::json!({"hashIterations": 5, "algorithm": "argon2", "additionalParameters":
            {"hashLength": ["32"], "memory": ["7168"], "type": ["id"], "version": ["1.3"], "parallelism": ["1"]}}).to_string();
        let stored = from_keycloak(&secret, &data).unwrap();
        assert!(verify_blocking("Keycloak-Pass1", Some(&stored)));
        assert!(!verify_blocking("keycloak-pass1", Some(&stored)));
        assert!(needs_rehash(&stored));
        assert!(!needs_rehash(&hash_blocking("x").unwrap()));

        let data = serde_json::json!({"hashIterations": 1, "algorithm": "md5"}).to_string();
        assert!(from_keycloak(&secret, &data).is_err());
    }

    #[test]
    fn the_banking_policy_is_parsed_and_enforced() {
        let policy = PasswordPolicy::parse(BANKING).unwrap();
        assert_eq!(policy.history(), 5);
        let check = |p: &str| policy.check(p, "alice.smith", Some("alice@bank.example"));
        assert!(check("Str0ng!Passw0rd").is_ok());
        assert!(check("Sh0rt!").unwrap_err().contains("at least 12"));
        assert!(check("nouppercase1!x").unwrap_err().contains("upper-case"));
        assert!(check("NOLOWERCASE1!X").unwrap_err().contains("lower-case"));
        assert!(check("NoDigitsHere!!").unwrap_err().contains("digit"));
        assert!(check("NoSpecials123x").unwrap_err().contains("special"));
        let policy = PasswordPolicy::parse("notUsername").unwrap();
        assert!(policy.check("Alice.Smith", "alice.smith", None).is_err());
        assert!(PasswordPolicy::parse("hashAlgorithm(md5)").is_err());
        assert!(PasswordPolicy::parse("length(x)").is_err());
    }
}
