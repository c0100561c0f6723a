//! The rules ferrobank's provider enforces on a realm, beyond what the format allows.

use std::collections::{BTreeMap, BTreeSet};

use ferrobank_domain::CustomerTier;
use reqwest::Url;

use super::RealmError;
use super::model::{Client, Composites, Group, Realm};

/// The JWS algorithms ferrobank signs and verifies (the same set `oidc` accepts).
pub const SIGNATURE_ALGORITHMS: [&str; 3] = ["RS256", "ES256", "EdDSA"];

/// The only credential type ferrobank imports.
pub const PASSWORD_CREDENTIAL: &str = "password";

/// The most login failures tolerated before a wait: Keycloak's own default (30) is the
/// loosest setting ferrobank accepts.
pub const MAX_FAILURE_FACTOR: i64 = 30;

/// Checks a user's [`TIER_ATTRIBUTE`](super::TIER_ATTRIBUTE), if it has one: exactly one
/// value naming a known tier. A typo must be an error, not a customer silently on the
/// default tier.
pub fn check_tier_attribute(attributes: &BTreeMap<String, Vec<String>>) -> Result<(), String> {
    let Some(values) = attributes.get(super::TIER_ATTRIBUTE) else { return Ok(()) };
    match values.as_slice() {
        [one] if CustomerTier::from_name(one).is_some() => Ok(()),
        _ => {
            let names: Vec<&str> = CustomerTier::ALL.iter().map(|t| t.as_str()).collect();
            Err(format!(
                "attribute {} must have exactly one value, one of {}",
                super::TIER_ATTRIBUTE,
                names.join(", ")
            ))
        }
    }
}

/// Checks every rule and returns all violations, not just the first.
pub fn validate(realm: &Realm) -> Result<(), Vec<RealmError>> {
    let mut errors = Vec::new();
    if realm.realm.trim().is_empty() {
        errors.push(RealmError::EmptyRealmName);
    }
    check_signature(realm, &mut errors);
    check_lifetimes(realm, &mut errors);
    check_brute_force(realm, &mut errors);
    check_otp_policy(realm, &mut errors);

    let realm_roles = realm_roles(realm, &mut errors);
    let client_ids = client_ids(realm, &mut errors);
    let client_roles = client_roles(realm, &client_ids, &mut errors);
    let refs = Refs { realm_roles: &realm_roles, client_roles: &client_roles };
    for (i, role) in realm.roles.realm.iter().enumerate() {
        if let Some(composites) = &role.composites {
            refs.check_composites(composites, &format!("roles.realm[{i}].composites"), &mut errors);
        }
    }
    for (client, roles) in &realm.roles.client {
        for (i, role) in roles.iter().enumerate() {
            if let Some(composites) = &role.composites {
                let at = format!("roles.client.{client}[{i}].composites");
                refs.check_composites(composites, &at, &mut errors);
            }
        }
    }

    let mut paths = BTreeSet::new();
    walk_groups(&realm.groups, "", "groups", &refs, &mut paths, &mut errors);

    for client in &realm.clients {
        check_client(client, &mut errors);
    }
    for (i, mapping) in realm.scope_mappings.iter().enumerate() {
        let at = format!("scopeMappings[{i}]");
        if let Some(client) = &mapping.client
            && !client_ids.contains(client.as_str())
        {
            errors.push(RealmError::UnknownClient { at: at.clone(), client: client.clone() });
        }
        refs.check_realm_roles(&mapping.roles, &format!("{at}.roles"), &mut errors);
    }
    check_users(realm, &refs, &client_ids, &paths, &mut errors);
    if let Some(roles) = realm.attributes.get(super::OTP_REQUIRED_ROLES_ATTRIBUTE) {
        let at = format!("attributes.{}", super::OTP_REQUIRED_ROLES_ATTRIBUTE);
        refs.check_realm_roles(&otp_required_roles(roles), &at, &mut errors);
    }

    if errors.is_empty() { Ok(()) } else { Err(errors) }
}

/// The realm roles named by the OTP-required attribute (comma-separated).
pub fn otp_required_roles(value: &str) -> Vec<String> {
    value.split(',').map(str::trim).filter(|r| !r.is_empty()).map(str::to_owned).collect()
}

fn check_otp_policy(realm: &Realm, errors: &mut Vec<RealmError>) {
    let mut refuse = |field, value: String, expected| {
        errors.push(RealmError::OtpPolicy { field, value, expected });
    };
    if let Some(kind) = realm.otp_policy_type.as_deref().filter(|kind| *kind != "totp") {
        refuse("otpPolicyType", kind.to_owned(), "totp");
    }
    if let Some(alg) = realm.otp_policy_algorithm.as_deref().filter(|alg| *alg != "HmacSHA1") {
        refuse("otpPolicyAlgorithm", alg.to_owned(), "HmacSHA1");
    }
    if let Some(digits) = realm.otp_policy_digits.filter(|d| *d != 6 && *d != 8) {
        refuse("otpPolicyDigits", digits.to_string(), "6 or 8");
    }
    if let Some(period) = realm.otp_policy_period_secs.filter(|p| !(15..=120).contains(p)) {
        refuse("otpPolicyPeriod", period.to_string(), "between 15 and 120");
    }
    if let Some(window) = realm.otp_policy_look_ahead_window.filter(|w| !(0..=3).contains(w)) {
        refuse("otpPolicyLookAheadWindow", window.to_string(), "between 0 and 3");
    }
}

fn check_signature(realm: &Realm, errors: &mut Vec<RealmError>) {
    if let Some(algorithm) = &realm.default_signature_algorithm
        && !SIGNATURE_ALGORITHMS.contains(&algorithm.as_str())
    {
        errors.push(RealmError::SignatureAlgorithm { algorithm: algorithm.clone() });
    }
}

fn check_lifetimes(realm: &Realm, errors: &mut Vec<RealmError>) {
    for (field, value) in realm.positive_lifetimes() {
        if let Some(value_secs) = value
            && value_secs <= 0
        {
            errors.push(RealmError::Lifetime { field, value_secs, expected: "positive" });
        }
    }
    for (field, value) in realm.inheriting_lifetimes() {
        if let Some(value_secs) = value
            && value_secs < 0
        {
            let expected = "0 (inherit) or positive";
            errors.push(RealmError::Lifetime { field, value_secs, expected });
        }
    }
    if let (Some(idle_secs), Some(max_secs)) =
        (realm.sso_session_idle_secs, realm.sso_session_max_secs)
        && idle_secs > max_secs
        && max_secs > 0
    {
        errors.push(RealmError::SessionIdleExceedsMax { idle_secs, max_secs });
    }
}

fn check_brute_force(realm: &Realm, errors: &mut Vec<RealmError>) {
    if realm.brute_force_protected != Some(true) {
        errors.push(RealmError::BruteForceDisabled);
    }
    let mut range = |field: &'static str, value: Option<i64>, min: i64, max: Option<i64>| {
        let Some(value) = value else { return };
        let too_big = max.is_some_and(|max| value > max);
        if value < min || too_big {
            let expected = match max {
                Some(max) => format!("between {min} and {max}"),
                None => format!("at least {min}"),
            };
            errors.push(RealmError::BruteForce { field, value, expected });
        }
    };
    let max_wait = realm.max_failure_wait_secs;
    range("failureFactor", realm.failure_factor, 1, Some(MAX_FAILURE_FACTOR));
    range("maxFailureWaitSeconds", max_wait, 1, None);
    range("waitIncrementSeconds", realm.wait_increment_secs, 1, max_wait);
    range("minimumQuickLoginWaitSeconds", realm.minimum_quick_login_wait_secs, 0, max_wait);
    range("quickLoginCheckMilliSeconds", realm.quick_login_check_ms, 0, None);
    range("maxDeltaTimeSeconds", realm.max_delta_time_secs, 1, None);
    range("maxTemporaryLockouts", realm.max_temporary_lockouts, 0, None);
}

fn realm_roles<'a>(realm: &'a Realm, errors: &mut Vec<RealmError>) -> BTreeSet<&'a str> {
    let mut names = BTreeSet::new();
    for (i, role) in realm.roles.realm.iter().enumerate() {
        if role.name.trim().is_empty() {
            errors.push(RealmError::EmptyName { at: format!("roles.realm[{i}]"), kind: "role" });
        } else if !names.insert(role.name.as_str()) {
            errors.push(RealmError::Duplicate { kind: "realm role", name: role.name.clone() });
        }
    }
    names
}

fn client_ids<'a>(realm: &'a Realm, errors: &mut Vec<RealmError>) -> BTreeSet<&'a str> {
    let mut ids = BTreeSet::new();
    for (i, client) in realm.clients.iter().enumerate() {
        if client.client_id.trim().is_empty() {
            errors.push(RealmError::EmptyName { at: format!("clients[{i}]"), kind: "client" });
        } else if !ids.insert(client.client_id.as_str()) {
            errors.push(RealmError::Duplicate { kind: "client", name: client.client_id.clone() });
        }
    }
    ids
}

fn client_roles<'a>(
    realm: &'a Realm,
    client_ids: &BTreeSet<&str>,
    errors: &mut Vec<RealmError>,
) -> BTreeMap<&'a str, BTreeSet<&'a str>> {
    let mut out = BTreeMap::new();
    for (client, roles) in &realm.roles.client {
        if !client_ids.contains(client.as_str()) {
            let at = format!("roles.client.{client}");
            errors.push(RealmError::UnknownClient { at, client: client.clone() });
        }
        let names: &mut BTreeSet<&str> = out.entry(client.as_str()).or_default();
        for (i, role) in roles.iter().enumerate() {
            if role.name.trim().is_empty() {
                let at = format!("roles.client.{client}[{i}]");
                errors.push(RealmError::EmptyName { at, kind: "role" });
            } else if !names.insert(role.name.as_str()) {
                let name = format!("{client}/{}", role.name);
                errors.push(RealmError::Duplicate { kind: "client role", name });
            }
        }
    }
    out
}

/// The defined roles, to check references against.
struct Refs<'a> {
    realm_roles: &'a BTreeSet<&'a str>,
    client_roles: &'a BTreeMap<&'a str, BTreeSet<&'a str>>,
}

impl Refs<'_> {
    fn check_realm_roles(&self, roles: &[String], at: &str, errors: &mut Vec<RealmError>) {
        for role in roles {
            if !self.realm_roles.contains(role.as_str()) {
                errors.push(RealmError::UnknownRealmRole { at: at.to_owned(), role: role.clone() });
            }
        }
    }

    fn check_client_roles(
        &self,
        roles: &BTreeMap<String, Vec<String>>,
        at: &str,
        errors: &mut Vec<RealmError>,
    ) {
        for (client, names) in roles {
            let defined = self.client_roles.get(client.as_str());
            for role in names {
                if !defined.is_some_and(|defined| defined.contains(role.as_str())) {
                    errors.push(RealmError::UnknownClientRole {
                        at: format!("{at}.{client}"),
                        client: client.clone(),
                        role: role.clone(),
                    });
                }
            }
        }
    }

    fn check_composites(&self, composites: &Composites, at: &str, errors: &mut Vec<RealmError>) {
        self.check_realm_roles(&composites.realm, &format!("{at}.realm"), errors);
        self.check_client_roles(&composites.client, &format!("{at}.client"), errors);
    }
}

fn walk_groups(
    groups: &[Group],
    parent_path: &str,
    at: &str,
    refs: &Refs<'_>,
    paths: &mut BTreeSet<String>,
    errors: &mut Vec<RealmError>,
) {
    for (i, group) in groups.iter().enumerate() {
        let at = format!("{at}[{i}]");
        if group.name.trim().is_empty() {
            errors.push(RealmError::EmptyName { at: at.clone(), kind: "group" });
        }
        let expected = format!("{parent_path}/{}", group.name);
        if let Some(path) = &group.path
            && *path != expected
        {
            let (at, path, expected) = (at.clone(), path.clone(), expected.clone());
            errors.push(RealmError::GroupPathMismatch { at, path, expected });
        }
        if !paths.insert(expected.clone()) {
            errors.push(RealmError::Duplicate { kind: "group", name: expected.clone() });
        }
        refs.check_realm_roles(&group.realm_roles, &format!("{at}.realmRoles"), errors);
        refs.check_client_roles(&group.client_roles, &format!("{at}.clientRoles"), errors);
        walk_groups(&group.sub_groups, &expected, &format!("{at}.subGroups"), refs, paths, errors);
    }
}

fn check_client(client: &Client, errors: &mut Vec<RealmError>) {
    let id = &client.client_id;
    for mapper in &client.protocol_mappers {
        if let Some(Err(reason)) = mapper.attribute_claim() {
            errors.push(RealmError::AttributeMapper {
                client: id.clone(),
                name: mapper.name.clone(),
                reason,
            });
        } else if mapper.protocol_mapper != super::AUDIENCE_MAPPER
            && mapper.protocol_mapper != super::USER_ATTRIBUTE_MAPPER
        {
            errors.push(RealmError::UnsupportedMapper {
                client: id.clone(),
                name: mapper.name.clone(),
                mapper: mapper.protocol_mapper.clone(),
            });
        }
    }
    for (flag, value) in [
        ("implicitFlowEnabled", client.implicit_flow_enabled),
        ("directAccessGrantsEnabled", client.direct_access_grants_enabled),
    ] {
        // Explicit, because Keycloak versions differ in what an absent flag means.
        if value != Some(false) {
            errors.push(RealmError::LegacyGrant { client: id.clone(), flag });
        }
    }
    // OAuth 2.1 requires PKCE for every code flow; confidential clients are no exception.
    if client.standard_flow()
        && !client.bearer_only.unwrap_or(false)
        && client.pkce_method() != Some("S256")
    {
        errors.push(RealmError::PkceNotRequired { client: id.clone() });
    }
    for uri in &client.redirect_uris {
        if let Err(reason) = check_redirect_uri(uri) {
            let (client, uri) = (id.clone(), uri.clone());
            errors.push(RealmError::RedirectUri { client, uri, reason });
        }
    }
    for origin in &client.web_origins {
        if !is_web_origin(origin) {
            errors.push(RealmError::WebOrigin { client: id.clone(), origin: origin.clone() });
        }
    }
}

/// Absolute http(s) URIs, with Keycloak's trailing `/*` prefix wildcard as the only
/// wildcard; plain http only to loopback (RFC 9700 2.1, OAuth 2.1 for native apps).
fn check_redirect_uri(uri: &str) -> Result<(), &'static str> {
    let exact = uri.strip_suffix('*').unwrap_or(uri);
    if exact.contains('*') || (exact.len() != uri.len() && !exact.ends_with('/')) {
        return Err("the only wildcard allowed is a trailing /*");
    }
    let url = Url::parse(exact).map_err(|_| "not an absolute URI")?;
    if url.fragment().is_some() {
        return Err("has a fragment");
    }
    let loopback = matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        "http" => Err("plain http is allowed to loopback hosts only"),
        _ => Err("scheme must be https (or http to a loopback host)"),
    }
}

/// `+` (Keycloak: the origins of the redirect URIs) or exactly `scheme://host[:port]`.
fn is_web_origin(origin: &str) -> bool {
    if origin == "+" {
        return true;
    }
    Url::parse(origin).is_ok_and(|url| {
        matches!(url.scheme(), "https" | "http") && url.origin().ascii_serialization() == origin
    })
}

fn check_users(
    realm: &Realm,
    refs: &Refs<'_>,
    client_ids: &BTreeSet<&str>,
    group_paths: &BTreeSet<String>,
    errors: &mut Vec<RealmError>,
) {
    let mut usernames = BTreeSet::new();
    for (i, user) in realm.users.iter().enumerate() {
        let at = format!("users[{i}]");
        if user.username.trim().is_empty() {
            errors.push(RealmError::EmptyName { at: at.clone(), kind: "user" });
        } else if !usernames.insert(user.username.as_str()) {
            errors.push(RealmError::Duplicate { kind: "user", name: user.username.clone() });
        }
        refs.check_realm_roles(&user.realm_roles, &format!("{at}.realmRoles"), errors);
        refs.check_client_roles(&user.client_roles, &format!("{at}.clientRoles"), errors);
        for group in &user.groups {
            // Keycloak finds groups by path with or without the leading slash.
            let path = if group.starts_with('/') { group.clone() } else { format!("/{group}") };
            if !group_paths.contains(&path) {
                let at = format!("{at}.groups");
                errors.push(RealmError::UnknownGroup { at, group: group.clone() });
            }
        }
        for (j, credential) in user.credentials.iter().enumerate() {
            if credential.kind != PASSWORD_CREDENTIAL {
                let at = format!("{at}.credentials[{j}]");
                errors.push(RealmError::CredentialType { at, kind: credential.kind.clone() });
            }
        }
        if let Err(reason) = check_tier_attribute(&user.attributes) {
            errors.push(RealmError::Attribute { at: format!("{at}.attributes"), reason });
        }
        if let Some(client) = &user.service_account_client_id
            && !client_ids.contains(client.as_str())
        {
            let at = format!("{at}.serviceAccountClientId");
            errors.push(RealmError::UnknownClient { at, client: client.clone() });
        }
    }
}
