//! A realm as the provider runs it, built from a Keycloak realm file by [`import`].
//!
//! Re-importing is declarative: settings, roles, groups and clients become exactly what the
//! file says; users named in the file get their profile, roles and groups from it; users
//! the file does not name (onboarded through the admin API) are kept. Credentials and
//! required actions are state, not configuration: the file sets them when it creates a
//! user, and never resets a password a user has since changed.

use std::collections::{BTreeMap, BTreeSet};

use rand::Rng;
use rand::distributions::Alphanumeric;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::password::PasswordPolicy;
use super::totp::TotpPolicy;
use crate::oidc::SigningAlgorithm;
use crate::realm::{self, AttributeClaim, PASSWORD_CREDENTIAL, Realm};

/// Settings of a realm, with Keycloak's defaults for what the file leaves out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// Access token lifetime.
    pub access_token_s: u64,
    /// An SSO session expires after this long unused.
    pub sso_idle_s: u64,
    /// An SSO session ends this long after login.
    pub sso_max_s: u64,
    /// An authorization code is good this long.
    pub code_s: u64,
    /// A login page (authentication session) is good this long.
    pub login_s: u64,
    /// Signing algorithm.
    pub algorithm: SigningAlgorithm,
    /// Brute-force detection.
    pub brute_force: BruteForce,
    /// Password rules.
    pub password_policy: PasswordPolicy,
    /// TOTP parameters.
    pub totp: TotpPolicy,
    /// Realm roles whose holders must use a second factor.
    pub otp_required_roles: BTreeSet<String>,
    /// Whether the email address is accepted as the username.
    pub login_with_email: bool,
}

/// Keycloak's brute-force detector settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BruteForce {
    /// Whether failures are counted at all.
    pub enabled: bool,
    /// Whether reaching the failure factor disables the user until an admin enables it.
    pub permanent: bool,
    /// Failures before the first wait.
    pub failure_factor: u32,
    /// Wait added per `failure_factor` failures.
    pub wait_increment_s: u64,
    /// Longest wait.
    pub max_wait_s: u64,
    /// Failures closer together than this are "quick".
    pub quick_login_check_ms: u64,
    /// Wait after a quick failure.
    pub min_quick_login_wait_s: u64,
    /// Failures older than this are forgotten.
    pub max_delta_s: u64,
}

/// A client application.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientState {
    /// `client_id`.
    pub client_id: String,
    /// Disabled clients get no tokens.
    pub enabled: bool,
    /// Authenticates with a secret.
    pub confidential: bool,
    /// SHA-256 (hex) of the client secret. Secrets are long random strings, so a fast
    /// hash suffices (OWASP: slow hashing is for low-entropy passwords).
    pub secret_sha256: Option<String>,
    /// Authorization code flow allowed.
    pub standard_flow: bool,
    /// Client-credentials grant allowed.
    pub service_accounts: bool,
    /// Tokens carry all of the user's roles (else only the scope-mapped ones).
    pub full_scope_allowed: bool,
    /// Realm roles the client's tokens may carry when `full_scope_allowed` is off.
    pub scope_roles: BTreeSet<String>,
    /// Registered redirect URIs; a trailing `*` is a prefix wildcard (Keycloak's rule).
    pub redirect_uris: Vec<String>,
    /// Registered post-logout redirect URIs (`+` means "the redirect URIs").
    pub post_logout_redirect_uris: Vec<String>,
    /// Origins allowed for CORS (`+` means "the redirect URIs' origins").
    pub web_origins: Vec<String>,
    /// Extra `aud` values of its access tokens (audience mappers).
    pub audiences: Vec<String>,
    /// Whether the code flow issues refresh tokens.
    pub use_refresh_tokens: bool,
    /// Claims its tokens carry from user attributes (user-attribute mappers), e.g. `tier`.
    /// Absent in realms stored before mappers were read: none.
    #[serde(default)]
    pub attribute_claims: Vec<AttributeClaim>,
}

impl ClientState {
    /// Whether `uri` is registered. Exact match (RFC 9700 §4.1.3), except Keycloak's
    /// trailing-`*` wildcard where the realm file asks for it.
    pub fn redirect_allowed(&self, uri: &str) -> bool {
        matches_registered(&self.redirect_uris, uri)
    }

    /// Whether `uri` may receive the user after logout.
    pub fn post_logout_allowed(&self, uri: &str) -> bool {
        if self.post_logout_redirect_uris.iter().any(|u| u == "+") {
            return self.redirect_allowed(uri);
        }
        matches_registered(&self.post_logout_redirect_uris, uri)
    }

    /// Whether `secret` is this client's, in constant time.
    pub fn secret_matches(&self, secret: &str) -> bool {
        use subtle::ConstantTimeEq as _;
        let Some(expected) = &self.secret_sha256 else { return false };
        let given = hex(&Sha256::digest(secret.as_bytes()));
        bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
    }
}

fn matches_registered(registered: &[String], uri: &str) -> bool {
    // A URI with a fragment is never valid (RFC 6749 §3.1.2); user-info tricks such as
    // `https://good@evil` never match an exact or prefix entry ending in a path.
    if uri.contains('#') {
        return false;
    }
    registered.iter().any(|allowed| match allowed.strip_suffix('*') {
        Some(prefix) => {
            uri.starts_with(prefix)
                && !uri[prefix.len()..].contains("/..")
                && url::Url::parse(uri).is_ok()
        }
        None => allowed == uri,
    })
}

/// A user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserState {
    /// Stable id: the `sub` of the user's tokens.
    pub id: String,
    /// Login name, lower-case (Keycloak lower-cases usernames).
    pub username: String,
    /// Email address.
    pub email: Option<String>,
    /// Given name.
    pub first_name: Option<String>,
    /// Family name.
    pub last_name: Option<String>,
    /// Disabled users cannot log in.
    pub enabled: bool,
    /// Whether the email was verified.
    pub email_verified: bool,
    /// argon2id PHC string.
    pub password: Option<String>,
    /// Previous password hashes, newest first (for `passwordHistory`).
    pub password_history: Vec<String>,
    /// TOTP secret, base32.
    pub totp_secret: Option<String>,
    /// Directly assigned realm roles.
    pub realm_roles: BTreeSet<String>,
    /// Directly assigned client roles.
    pub client_roles: BTreeMap<String, BTreeSet<String>>,
    /// Group paths.
    pub groups: BTreeSet<String>,
    /// Actions the user must complete at next login (`UPDATE_PASSWORD`, `CONFIGURE_TOTP`).
    pub required_actions: BTreeSet<String>,
    /// The client whose service account this is.
    pub service_account_client: Option<String>,
    /// Free-form attributes.
    pub attributes: BTreeMap<String, Vec<String>>,
}

/// The roles a group grants.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRoles {
    /// Realm roles.
    pub realm: BTreeSet<String>,
    /// Client roles by `clientId`.
    pub client: BTreeMap<String, BTreeSet<String>>,
}

/// A whole realm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RealmState {
    /// Name (last segment of the issuer).
    pub name: String,
    /// Disabled realms issue nothing.
    pub enabled: bool,
    /// Settings.
    pub settings: Settings,
    /// Realm roles and the realm roles each one includes (composites).
    pub roles: BTreeMap<String, BTreeSet<String>>,
    /// Client roles by `clientId`.
    pub client_roles: BTreeMap<String, BTreeSet<String>>,
    /// Groups by path.
    pub groups: BTreeMap<String, GroupRoles>,
    /// Clients by `clientId`.
    pub clients: BTreeMap<String, ClientState>,
    /// Users by (lower-case) username.
    pub users: BTreeMap<String, UserState>,
}

impl RealmState {
    /// The user with this id.
    pub fn user_by_id(&self, id: &str) -> Option<&UserState> {
        self.users.values().find(|u| u.id == id)
    }

    /// The user a login name stands for: the username, or the email when the realm allows.
    pub fn user_by_login(&self, login: &str) -> Option<&UserState> {
        let login = login.trim().to_lowercase();
        self.users.get(&login).or_else(|| {
            self.settings.login_with_email.then(|| {
                self.users
                    .values()
                    .find(|u| u.email.as_deref().map(str::to_lowercase) == Some(login.clone()))
            })?
        })
    }

    /// A user's effective realm roles: direct, from groups, and composites, expanded.
    pub fn effective_realm_roles(&self, user: &UserState) -> BTreeSet<String> {
        let mut roles: BTreeSet<String> = user.realm_roles.clone();
        for group in &user.groups {
            if let Some(g) = self.groups.get(group) {
                roles.extend(g.realm.iter().cloned());
            }
        }
        let mut pending: Vec<String> = roles.iter().cloned().collect();
        while let Some(role) = pending.pop() {
            for included in self.roles.get(&role).into_iter().flatten() {
                if roles.insert(included.clone()) {
                    pending.push(included.clone());
                }
            }
        }
        roles
    }

    /// A user's effective client roles (direct and from groups).
    pub fn effective_client_roles(&self, user: &UserState) -> BTreeMap<String, BTreeSet<String>> {
        let mut roles = user.client_roles.clone();
        for group in &user.groups {
            for (client, names) in self.groups.get(group).map(|g| &g.client).into_iter().flatten() {
                roles.entry(client.clone()).or_default().extend(names.iter().cloned());
            }
        }
        roles
    }

    /// Whether this user must present a TOTP code (required for one of their roles).
    pub fn otp_required(&self, user: &UserState) -> bool {
        user.totp_secret.is_some()
            || user.required_actions.contains(CONFIGURE_TOTP)
            || self
                .effective_realm_roles(user)
                .iter()
                .any(|r| self.settings.otp_required_roles.contains(r))
    }
}

/// Required action: choose a new password at next login.
pub const UPDATE_PASSWORD: &str = "UPDATE_PASSWORD";
/// Required action: enrol an authenticator app at next login.
pub const CONFIGURE_TOTP: &str = "CONFIGURE_TOTP";

/// A secret made up by an import, shown once to whoever ran it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    /// What it is for, e.g. `client banking-api-gateway secret`.
    pub what: String,
    /// The secret.
    pub value: String,
}

/// Secrets an import uses where the file has none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportOptions {
    /// Password for new users without a credential; random when `None`.
    pub dev_password: Option<String>,
    /// Secret for confidential clients without one; random when `None`.
    pub dev_client_secret: Option<String>,
}

/// The outcome of an import.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The realm to store.
    pub state: RealmState,
    /// What changed, one line each (`+` added, `-` removed, `~` changed); secrets omitted.
    pub changes: Vec<String>,
    /// Secrets that were generated (to print once).
    pub generated: Vec<Generated>,
}

/// `hex(sha256(x))`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A random password that satisfies any sane policy (upper, lower, digit, special, 24 chars).
pub fn random_password() -> String {
    let body: String =
        rand::thread_rng().sample_iter(&Alphanumeric).take(20).map(char::from).collect();
    format!("Fb-{body}-7q")
}

fn secs(value: Option<i64>, default: u64) -> u64 {
    value.and_then(|v| u64::try_from(v).ok()).filter(|v| *v > 0).unwrap_or(default)
}

fn settings(model: &Realm) -> Result<Settings, Vec<String>> {
    let password_policy = PasswordPolicy::parse(model.password_policy.as_deref().unwrap_or(""))
        .map_err(|e| vec![e])?;
    let algorithm = model
        .default_signature_algorithm
        .as_deref()
        .and_then(SigningAlgorithm::parse)
        .unwrap_or(SigningAlgorithm::RS256);
    let otp_required_roles = model
        .attributes
        .get(realm::OTP_REQUIRED_ROLES_ATTRIBUTE)
        .map(|v| realm::otp_required_roles(v).into_iter().collect())
        .unwrap_or_default();
    // Keycloak's defaults (RealmRepresentation / RealmModel) where the file is silent.
    Ok(Settings {
        access_token_s: secs(model.access_token_secs, 300),
        sso_idle_s: secs(model.sso_session_idle_secs, 1800),
        sso_max_s: secs(model.sso_session_max_secs, 36_000),
        code_s: secs(model.access_code_secs, 60),
        login_s: secs(model.access_code_login_secs, 1800),
        algorithm,
        brute_force: BruteForce {
            enabled: model.brute_force_protected.unwrap_or(false),
            permanent: model.permanent_lockout.unwrap_or(false),
            failure_factor: u32::try_from(secs(model.failure_factor, 30)).unwrap_or(30),
            wait_increment_s: secs(model.wait_increment_secs, 60),
            max_wait_s: secs(model.max_failure_wait_secs, 900),
            quick_login_check_ms: secs(model.quick_login_check_ms, 1000),
            min_quick_login_wait_s: model
                .minimum_quick_login_wait_secs
                .and_then(|v| u64::try_from(v).ok())
                .unwrap_or(60),
            max_delta_s: secs(model.max_delta_time_secs, 43_200),
        },
        password_policy,
        totp: TotpPolicy {
            digits: model.otp_policy_digits.and_then(|d| u32::try_from(d).ok()).unwrap_or(6),
            period_s: secs(model.otp_policy_period_secs, 30),
            window: model
                .otp_policy_look_ahead_window
                .and_then(|w| u64::try_from(w).ok())
                .unwrap_or(1),
        },
        otp_required_roles,
        login_with_email: model.login_with_email_allowed.unwrap_or(true),
    })
}

fn set<'a>(items: impl IntoIterator<Item = &'a String>) -> BTreeSet<String> {
    items.into_iter().cloned().collect()
}

fn client_role_sets(roles: &BTreeMap<String, Vec<String>>) -> BTreeMap<String, BTreeSet<String>> {
    roles.iter().map(|(client, names)| (client.clone(), set(names))).collect()
}

fn walk_groups(groups: &[realm::Group], parent: &str, out: &mut BTreeMap<String, GroupRoles>) {
    for group in groups {
        let path = format!("{parent}/{}", group.name);
        out.insert(
            path.clone(),
            GroupRoles {
                realm: set(&group.realm_roles),
                client: client_role_sets(&group.client_roles),
            },
        );
        walk_groups(&group.sub_groups, &path, out);
    }
}

/// Builds the realm from a Keycloak realm file, on top of what is stored (`existing`).
/// `hash` turns a password into its argon2id PHC string.
pub fn import(
    model: &Realm,
    existing: Option<&RealmState>,
    options: &ImportOptions,
    hash: &dyn Fn(&str) -> Result<String, String>,
) -> Result<Imported, Vec<String>> {
    realm::validate(model)
        .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    let settings = settings(model)?;
    let mut generated = Vec::new();

    let roles = model
        .roles
        .realm
        .iter()
        .map(|r| (r.name.clone(), r.composites.as_ref().map(|c| set(&c.realm)).unwrap_or_default()))
        .collect();
    let client_roles = model
        .roles
        .client
        .iter()
        .map(|(client, roles)| (client.clone(), roles.iter().map(|r| r.name.clone()).collect()))
        .collect();
    let mut groups = BTreeMap::new();
    walk_groups(&model.groups, "", &mut groups);

    let mut clients = BTreeMap::new();
    for client in &model.clients {
        let old = existing.and_then(|e| e.clients.get(&client.client_id));
        let confidential = client.is_confidential();
        let secret_sha256 = match (&client.secret, old.and_then(|o| o.secret_sha256.clone())) {
            _ if !confidential => None,
            (Some(secret), _) => Some(hex(&Sha256::digest(secret.expose().as_bytes()))),
            (None, Some(kept)) => Some(kept),
            (None, None) => {
                // A secret from configuration is known to the operator: only a random one
                // is reported (to be shown once).
                let value = options.dev_client_secret.clone().unwrap_or_else(|| {
                    let value: String = rand::thread_rng()
                        .sample_iter(&Alphanumeric)
                        .take(32)
                        .map(char::from)
                        .collect();
                    let what = format!("client {} secret", client.client_id);
                    generated.push(Generated { what, value: value.clone() });
                    value
                });
                Some(hex(&Sha256::digest(value.as_bytes())))
            }
        };
        let scope_roles = model
            .scope_mappings
            .iter()
            .filter(|m| m.client.as_deref() == Some(client.client_id.as_str()))
            .flat_map(|m| m.roles.iter().cloned())
            .collect();
        clients.insert(
            client.client_id.clone(),
            ClientState {
                client_id: client.client_id.clone(),
                enabled: client.enabled.unwrap_or(true),
                confidential,
                secret_sha256,
                standard_flow: client.standard_flow(),
                service_accounts: client.service_accounts_enabled.unwrap_or(false),
                full_scope_allowed: client.full_scope_allowed.unwrap_or(true),
                scope_roles,
                redirect_uris: client.redirect_uris.clone(),
                post_logout_redirect_uris: client.post_logout_redirect_uris(),
                web_origins: client.web_origins.clone(),
                audiences: client
                    .protocol_mappers
                    .iter()
                    .filter_map(|m| m.access_token_audience().map(str::to_owned))
                    .collect(),
                use_refresh_tokens: client.use_refresh_tokens(),
                // `validate` refused the file if a mapper was malformed.
                attribute_claims: client
                    .protocol_mappers
                    .iter()
                    .filter_map(|m| m.attribute_claim().and_then(Result::ok))
                    .collect(),
            },
        );
    }

    // Users: the file's, merged into the stored ones; the others are kept.
    let mut users: BTreeMap<String, UserState> = existing
        .map(|e| {
            e.users
                .iter()
                .filter(|(_, u)| u.service_account_client.is_none())
                .map(|(k, u)| (k.clone(), u.clone()))
                .collect()
        })
        .unwrap_or_default();
    let mut errors = Vec::new();
    for user in &model.users {
        let username = user.username.trim().to_lowercase();
        let old = users.get(&username).cloned();
        let mut password = old.as_ref().and_then(|o| o.password.clone());
        if old.is_none() {
            let given = user.credentials.iter().find(|c| c.kind == PASSWORD_CREDENTIAL).map(|c| {
                match (&c.value, &c.secret_data, &c.credential_data) {
                    (Some(value), _, _) => hash(value.expose()),
                    // A Keycloak export: the hash itself, kept until the next login rehashes it.
                    (None, Some(secret), Some(data)) => super::password::from_keycloak(secret.expose(), data)
                        .map_err(|e| format!("user {username}: {e}")),
                    _ => Err(format!("user {username}: a password credential needs `value` or `secretData` and `credentialData`")),
                }
            });
            password = match given {
                Some(Ok(stored)) => Some(stored),
                Some(Err(e)) => {
                    errors.push(e);
                    None
                }
                None => {
                    let plain = options.dev_password.clone().unwrap_or_else(|| {
                        let value = random_password();
                        let what = format!("user {username} password");
                        generated.push(Generated { what, value: value.clone() });
                        value
                    });
                    Some(hash(&plain).map_err(|e| vec![e])?)
                }
            };
        }
        users.insert(
            username.clone(),
            UserState {
                id: old.as_ref().map_or_else(|| Uuid::new_v4().to_string(), |o| o.id.clone()),
                username: username.clone(),
                email: user.email.clone(),
                first_name: user.first_name.clone(),
                last_name: user.last_name.clone(),
                enabled: user.enabled,
                email_verified: user.email_verified,
                password,
                password_history: old
                    .as_ref()
                    .map(|o| o.password_history.clone())
                    .unwrap_or_default(),
                totp_secret: old.as_ref().and_then(|o| o.totp_secret.clone()),
                realm_roles: set(&user.realm_roles),
                client_roles: client_role_sets(&user.client_roles),
                groups: set(&user.groups),
                required_actions: match &old {
                    Some(old) => old.required_actions.clone(),
                    None => set(&user.required_actions),
                },
                service_account_client: None,
                attributes: user.attributes.clone(),
            },
        );
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    // Service accounts follow their clients (Keycloak: `service-account-{clientId}`).
    for client in clients.values().filter(|c| c.service_accounts) {
        let username = format!("service-account-{}", client.client_id.to_lowercase());
        let old = existing.and_then(|e| e.users.get(&username));
        let from_file = model
            .users
            .iter()
            .find(|u| u.service_account_client_id.as_deref() == Some(&client.client_id));
        users.insert(
            username.clone(),
            UserState {
                id: old.map_or_else(|| Uuid::new_v4().to_string(), |o| o.id.clone()),
                username,
                email: None,
                first_name: None,
                last_name: None,
                enabled: true,
                email_verified: false,
                password: None,
                password_history: Vec::new(),
                totp_secret: None,
                realm_roles: from_file.map(|u| set(&u.realm_roles)).unwrap_or_default(),
                client_roles: from_file
                    .map(|u| client_role_sets(&u.client_roles))
                    .unwrap_or_default(),
                groups: BTreeSet::new(),
                required_actions: BTreeSet::new(),
                service_account_client: Some(client.client_id.clone()),
                attributes: BTreeMap::new(),
            },
        );
    }

    let state = RealmState {
        name: model.realm.clone(),
        enabled: model.enabled,
        settings,
        roles,
        client_roles,
        groups,
        clients,
        users,
    };
    let changes = diff(existing, &state);
    Ok(Imported { state, changes, generated })
}

/// The state as shown in diffs: secrets and hashes removed.
fn redacted(state: &RealmState) -> Value {
    let mut value = serde_json::to_value(state).unwrap_or(Value::Null);
    if let Some(clients) = value.get_mut("clients").and_then(Value::as_object_mut) {
        for client in clients.values_mut() {
            if let Some(c) = client.as_object_mut() {
                c.remove("secret_sha256");
            }
        }
    }
    if let Some(users) = value.get_mut("users").and_then(Value::as_object_mut) {
        for user in users.values_mut() {
            if let Some(u) = user.as_object_mut() {
                for secret in ["password", "password_history", "totp_secret", "id"] {
                    u.remove(secret);
                }
            }
        }
    }
    value
}

/// What `new` changes relative to `old`, one line per leaf (`+`, `-`, `~`).
pub fn diff(old: Option<&RealmState>, new: &RealmState) -> Vec<String> {
    let mut out = Vec::new();
    match old {
        None => out.push(format!("+ realm {}", new.name)),
        Some(old) => diff_values("", &redacted(old), &redacted(new), &mut out),
    }
    out
}

fn diff_values(path: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                let at = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                match b.get(key) {
                    Some(other) => diff_values(&at, value, other, out),
                    None => out.push(format!("- {at}")),
                }
            }
            for key in b.keys().filter(|k| !a.contains_key(*k)) {
                let at = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                out.push(format!("+ {at}"));
            }
        }
        (a, b) if a != b => out.push(format!("~ {path}: {a} -> {b}")),
        _ => {}
    }
}
