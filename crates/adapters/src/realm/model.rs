//! Typed subset of Keycloak's realm export format.
//!
//! Field names and shapes follow Keycloak's own representations (keycloak/keycloak,
//! `core/src/main/java/org/keycloak/representations/idm/`): `RealmRepresentation.java`,
//! `ClientRepresentation.java`, `RolesRepresentation.java` (`realm` + `client`),
//! `RoleRepresentation.java`, `GroupRepresentation.java`, `UserRepresentation.java`,
//! `CredentialRepresentation.java`, `ScopeMappingRepresentation.java`; the admin client's
//! `js/libs/keycloak-admin-client/src/defs/*Representation.ts` for the current shapes
//! (`roles.client`, credential `secretData`/`credentialData`). Keycloak serialises them
//! with Jackson in camelCase, so every name here is the Java field name.
//!
//! Absent fields stay `None` where Keycloak applies a server default, so that ferrobank's
//! provider can apply the same defaults instead of guessing them here.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A realm (`RealmRepresentation`): settings, roles, groups, clients and users.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Realm {
    /// The realm's name; it is also the last segment of the issuer URL.
    pub realm: String,
    /// A disabled realm issues no tokens. Keycloak imports an absent value as disabled.
    #[serde(default)]
    pub enabled: bool,
    /// `none`, `external` (TLS except from private addresses) or `all`.
    pub ssl_required: Option<String>,
    /// Whether users may register themselves.
    pub registration_allowed: Option<bool>,
    /// Whether the email address is accepted in place of the username.
    pub login_with_email_allowed: Option<bool>,
    /// Whether two users may share an email address.
    pub duplicate_emails_allowed: Option<bool>,
    /// Whether the login page offers "forgot password".
    pub reset_password_allowed: Option<bool>,
    /// Whether users may change their username.
    pub edit_username_allowed: Option<bool>,

    /// JWS algorithm of issued tokens (`RS256`, `ES256`, `EdDSA`); Keycloak's default is RS256.
    pub default_signature_algorithm: Option<String>,
    /// Refresh-token rotation: a used refresh token is revoked.
    pub revoke_refresh_token: Option<bool>,
    /// How often a refresh token may be reused before it is revoked (with rotation on).
    pub refresh_token_max_reuse: Option<i64>,
    // Token, session and code lifetimes, in seconds (Keycloak's `Integer` fields). Keycloak
    // uses 0 for "inherit" in the remember-me and per-client ones; the others must be
    // positive (see `positive_lifetimes`).
    /// Access token lifetime.
    #[serde(rename = "accessTokenLifespan")]
    pub access_token_secs: Option<i64>,
    /// Access token lifetime in the implicit flow (which ferrobank does not offer).
    #[serde(rename = "accessTokenLifespanForImplicitFlow")]
    pub access_token_implicit_secs: Option<i64>,
    /// An SSO session (and its refresh tokens) expires after this long unused.
    #[serde(rename = "ssoSessionIdleTimeout")]
    pub sso_session_idle_secs: Option<i64>,
    /// An SSO session ends this long after login whatever its use.
    #[serde(rename = "ssoSessionMaxLifespan")]
    pub sso_session_max_secs: Option<i64>,
    /// Idle timeout of "remember me" sessions; 0 inherits `ssoSessionIdleTimeout`.
    #[serde(rename = "ssoSessionIdleTimeoutRememberMe")]
    pub sso_session_idle_remember_me_secs: Option<i64>,
    /// Maximum of "remember me" sessions; 0 inherits `ssoSessionMaxLifespan`.
    #[serde(rename = "ssoSessionMaxLifespanRememberMe")]
    pub sso_session_max_remember_me_secs: Option<i64>,
    /// Offline sessions (offline refresh tokens) expire after this long unused.
    #[serde(rename = "offlineSessionIdleTimeout")]
    pub offline_session_idle_secs: Option<i64>,
    /// Whether `offlineSessionMaxLifespan` applies.
    #[serde(rename = "offlineSessionMaxLifespanEnabled")]
    pub offline_session_max_enabled: Option<bool>,
    /// Offline sessions end this long after creation (when enabled).
    #[serde(rename = "offlineSessionMaxLifespan")]
    pub offline_session_max_secs: Option<i64>,
    /// Per-client session idle timeout; 0 inherits the SSO session's.
    #[serde(rename = "clientSessionIdleTimeout")]
    pub client_session_idle_secs: Option<i64>,
    /// Per-client session maximum; 0 inherits the SSO session's.
    #[serde(rename = "clientSessionMaxLifespan")]
    pub client_session_max_secs: Option<i64>,
    /// Per-client offline session idle timeout; 0 inherits.
    #[serde(rename = "clientOfflineSessionIdleTimeout")]
    pub client_offline_session_idle_secs: Option<i64>,
    /// Per-client offline session maximum; 0 inherits.
    #[serde(rename = "clientOfflineSessionMaxLifespan")]
    pub client_offline_session_max_secs: Option<i64>,
    /// Authorization code lifetime.
    #[serde(rename = "accessCodeLifespan")]
    pub access_code_secs: Option<i64>,
    /// Time a user has for a required action (e.g. update password) during login.
    #[serde(rename = "accessCodeLifespanUserAction")]
    pub access_code_user_action_secs: Option<i64>,
    /// Time a user has to complete the login page.
    #[serde(rename = "accessCodeLifespanLogin")]
    pub access_code_login_secs: Option<i64>,
    /// Lifetime of action links an administrator sends (e.g. reset password).
    #[serde(rename = "actionTokenGeneratedByAdminLifespan")]
    pub action_token_by_admin_secs: Option<i64>,
    /// Lifetime of action links a user requests.
    #[serde(rename = "actionTokenGeneratedByUserLifespan")]
    pub action_token_by_user_secs: Option<i64>,
    /// Device authorization grant: lifetime of a device code.
    #[serde(rename = "oauth2DeviceCodeLifespan")]
    pub device_code_secs: Option<i64>,
    /// Device authorization grant: minimum polling interval.
    #[serde(rename = "oauth2DevicePollingInterval")]
    pub device_polling_interval_secs: Option<i64>,

    // Brute-force detection ("--- brute force settings" in `RealmRepresentation`): after
    // `failureFactor` failures a user waits `waitIncrementSeconds`, growing per further
    // failure up to `maxFailureWaitSeconds`; failures closer than `quickLoginCheckMilliSeconds`
    // cost `minimumQuickLoginWaitSeconds`; the count resets after `maxDeltaTimeSeconds`.
    /// Whether brute-force detection is on at all.
    #[serde(rename = "bruteForceProtected")]
    pub brute_force_protected: Option<bool>,
    /// Lock the user for good (until an administrator unlocks) instead of temporarily.
    #[serde(rename = "permanentLockout")]
    pub permanent_lockout: Option<bool>,
    /// Temporary lockouts before a permanent one (with `permanentLockout`).
    #[serde(rename = "maxTemporaryLockouts")]
    pub max_temporary_lockouts: Option<i64>,
    /// `MULTIPLE` or `LINEAR` growth of the wait (recent Keycloak versions).
    #[serde(rename = "bruteForceStrategy")]
    pub brute_force_strategy: Option<String>,
    /// Failures before the first wait.
    #[serde(rename = "failureFactor")]
    pub failure_factor: Option<i64>,
    /// Wait added per failure past the factor.
    #[serde(rename = "waitIncrementSeconds")]
    pub wait_increment_secs: Option<i64>,
    /// Upper bound of the wait.
    #[serde(rename = "maxFailureWaitSeconds")]
    pub max_failure_wait_secs: Option<i64>,
    /// Two failures closer than this are a "quick login".
    #[serde(rename = "quickLoginCheckMilliSeconds")]
    pub quick_login_check_ms: Option<i64>,
    /// Wait imposed after a quick login failure.
    #[serde(rename = "minimumQuickLoginWaitSeconds")]
    pub minimum_quick_login_wait_secs: Option<i64>,
    /// The failure count resets after this long without failure.
    #[serde(rename = "maxDeltaTimeSeconds")]
    pub max_delta_time_secs: Option<i64>,

    /// Keycloak's policy string, e.g. `length(12) and digits(1) and notUsername`.
    pub password_policy: Option<String>,

    /// One-time-password policy: `totp` is the only type ferrobank implements.
    pub otp_policy_type: Option<String>,
    /// HMAC of the one-time passwords; ferrobank implements `HmacSHA1` (RFC 6238's default,
    /// the one every authenticator app supports).
    pub otp_policy_algorithm: Option<String>,
    /// Digits per code (6 or 8).
    pub otp_policy_digits: Option<i64>,
    /// Seconds per time step.
    #[serde(rename = "otpPolicyPeriod")]
    pub otp_policy_period_secs: Option<i64>,
    /// Codes from this many steps before or after now are accepted too (clock drift).
    pub otp_policy_look_ahead_window: Option<i64>,

    /// Free-form realm attributes. ferrobank reads [`OTP_REQUIRED_ROLES_ATTRIBUTE`].
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,

    /// Realm roles and client roles.
    #[serde(default)]
    pub roles: Roles,
    /// Top-level groups; sub-groups are nested.
    #[serde(default)]
    pub groups: Vec<Group>,
    /// OAuth clients.
    #[serde(default)]
    pub clients: Vec<Client>,
    /// Users (service-account users included, marked by `serviceAccountClientId`).
    #[serde(default)]
    pub users: Vec<User>,
    /// Roles a client may put into its tokens when its `fullScopeAllowed` is false.
    #[serde(default)]
    pub scope_mappings: Vec<ScopeMapping>,
}

impl Realm {
    /// The lifetimes that must be positive when present, with their Keycloak names.
    pub fn positive_lifetimes(&self) -> [(&'static str, Option<i64>); 13] {
        [
            ("accessTokenLifespan", self.access_token_secs),
            ("accessTokenLifespanForImplicitFlow", self.access_token_implicit_secs),
            ("ssoSessionIdleTimeout", self.sso_session_idle_secs),
            ("ssoSessionMaxLifespan", self.sso_session_max_secs),
            ("offlineSessionIdleTimeout", self.offline_session_idle_secs),
            ("offlineSessionMaxLifespan", self.offline_session_max_secs),
            ("accessCodeLifespan", self.access_code_secs),
            ("accessCodeLifespanUserAction", self.access_code_user_action_secs),
            ("accessCodeLifespanLogin", self.access_code_login_secs),
            ("actionTokenGeneratedByAdminLifespan", self.action_token_by_admin_secs),
            ("actionTokenGeneratedByUserLifespan", self.action_token_by_user_secs),
            ("oauth2DeviceCodeLifespan", self.device_code_secs),
            ("oauth2DevicePollingInterval", self.device_polling_interval_secs),
        ]
    }

    /// The lifetimes where 0 means "inherit", so only negatives are wrong.
    pub fn inheriting_lifetimes(&self) -> [(&'static str, Option<i64>); 6] {
        [
            ("ssoSessionIdleTimeoutRememberMe", self.sso_session_idle_remember_me_secs),
            ("ssoSessionMaxLifespanRememberMe", self.sso_session_max_remember_me_secs),
            ("clientSessionIdleTimeout", self.client_session_idle_secs),
            ("clientSessionMaxLifespan", self.client_session_max_secs),
            ("clientOfflineSessionIdleTimeout", self.client_offline_session_idle_secs),
            ("clientOfflineSessionMaxLifespan", self.client_offline_session_max_secs),
        ]
    }
}

/// `RolesRepresentation`: realm roles, and client roles keyed by `clientId`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Roles {
    /// Realm roles.
    #[serde(default)]
    pub realm: Vec<Role>,
    /// Client roles by `clientId`.
    #[serde(default)]
    pub client: BTreeMap<String, Vec<Role>>,
}

/// `RoleRepresentation`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Role {
    /// The role name that appears in tokens.
    pub name: String,
    /// Free text for administrators.
    pub description: Option<String>,
    /// Whether the role includes other roles (`composites`).
    #[serde(default)]
    pub composite: bool,
    /// The roles a composite role includes.
    pub composites: Option<Composites>,
    /// Free-form attributes (`Map<String, List<String>>`).
    #[serde(default)]
    pub attributes: BTreeMap<String, Vec<String>>,
}

/// `RoleRepresentation.Composites`: realm role names and client role names by `clientId`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Composites {
    /// Included realm roles.
    #[serde(default)]
    pub realm: Vec<String>,
    /// Included client roles by `clientId`.
    #[serde(default)]
    pub client: BTreeMap<String, Vec<String>>,
}

/// `GroupRepresentation`: members inherit the group's roles and its parents'.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Group {
    /// The group's name, unique among its siblings.
    pub name: String,
    /// `/parent/name`; users refer to groups by this path.
    pub path: Option<String>,
    /// Realm roles of the members.
    #[serde(default)]
    pub realm_roles: Vec<String>,
    /// Client roles of the members, by `clientId`.
    #[serde(default)]
    pub client_roles: BTreeMap<String, Vec<String>>,
    /// Nested groups.
    #[serde(default)]
    pub sub_groups: Vec<Group>,
    /// Free-form attributes.
    #[serde(default)]
    pub attributes: BTreeMap<String, Vec<String>>,
}

/// `ClientRepresentation`: an OAuth client.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Client {
    /// The OAuth `client_id`.
    pub client_id: String,
    /// Display name.
    pub name: Option<String>,
    /// Free text for administrators.
    pub description: Option<String>,
    /// A disabled client gets no tokens.
    pub enabled: Option<bool>,
    /// `openid-connect` (or `saml`, which ferrobank does not speak).
    pub protocol: Option<String>,
    /// `client-secret`, `client-jwt`, `client-secret-jwt`, `client-x509`.
    pub client_authenticator_type: Option<String>,
    /// The client secret; never committed, generated at first start.
    pub secret: Option<Secret>,
    /// A public client has no credentials (browser or mobile app).
    pub public_client: Option<bool>,
    /// A bearer-only client never gets tokens, it only accepts them.
    pub bearer_only: Option<bool>,
    /// Whether users must consent before the client gets a token.
    pub consent_required: Option<bool>,
    /// Authorization code flow.
    pub standard_flow_enabled: Option<bool>,
    /// Implicit flow (removed by OAuth 2.1).
    pub implicit_flow_enabled: Option<bool>,
    /// Resource owner password credentials grant (removed by OAuth 2.1).
    pub direct_access_grants_enabled: Option<bool>,
    /// Client credentials grant through the client's service-account user.
    pub service_accounts_enabled: Option<bool>,
    /// Whether tokens carry all the user's roles or only the client's scope mappings.
    pub full_scope_allowed: Option<bool>,
    /// Where the authorization code may be sent; a trailing `/*` is a prefix match.
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    /// Origins allowed for CORS; `+` means "the origins of the redirect URIs".
    #[serde(default)]
    pub web_origins: Vec<String>,
    /// OIDC settings as strings, e.g. `pkce.code.challenge.method` = `S256`.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Client scopes always applied.
    #[serde(default)]
    pub default_client_scopes: Vec<String>,
    /// Client scopes applied when requested in `scope`.
    #[serde(default)]
    pub optional_client_scopes: Vec<String>,
    /// Base URL that relative redirect URIs would be resolved against.
    pub root_url: Option<String>,
    /// Token mappers; ferrobank implements `oidc-audience-mapper` and
    /// `oidc-usermodel-attribute-mapper` (single string values) and refuses others, since
    /// an unimplemented mapper would silently change what tokens carry.
    #[serde(default)]
    pub protocol_mappers: Vec<ProtocolMapper>,
    /// Where the application lives (links from the account console).
    pub base_url: Option<String>,
}

/// The client attribute that makes PKCE mandatory (Keycloak's
/// `OIDCConfigAttributes.PKCE_CODE_CHALLENGE_METHOD`).
pub const PKCE_METHOD_ATTRIBUTE: &str = "pkce.code.challenge.method";

/// Client attribute with the allowed `post_logout_redirect_uri`s, `##`-separated (Keycloak's
/// `OIDCConfigAttributes.POST_LOGOUT_REDIRECT_URIS`).
pub const POST_LOGOUT_REDIRECT_URIS_ATTRIBUTE: &str = "post.logout.redirect.uris";

/// Client attribute: whether the code flow also issues refresh tokens (default true).
pub const USE_REFRESH_TOKENS_ATTRIBUTE: &str = "use.refresh.tokens";

/// Realm attribute (ferrobank's; Keycloak ignores it and needs a conditional-OTP flow for
/// the same effect): comma-separated realm roles whose holders must use a TOTP second factor.
pub const OTP_REQUIRED_ROLES_ATTRIBUTE: &str = "ferrobank.otp.required.roles";

/// User attribute (ferrobank's): the customer's tier, a KYC outcome; exactly one value,
/// `standard`, `premium` or `business` (`CustomerTier`'s names). A user-attribute mapper
/// puts it into access tokens as the claim the payment risk check reads (`tier`).
pub const TIER_ATTRIBUTE: &str = "tier";

/// The protocol mapper type that adds an audience (`aud`) to tokens.
pub const AUDIENCE_MAPPER: &str = "oidc-audience-mapper";

/// The protocol mapper type that copies a user attribute into a claim (Keycloak's "User
/// Attribute" mapper); ferrobank uses it for the customer's `tier`.
pub const USER_ATTRIBUTE_MAPPER: &str = "oidc-usermodel-attribute-mapper";

/// Claims the provider writes itself (JWT, OIDC, Keycloak and introspection claims): a
/// user-attribute mapper may not name them, or a user attribute could replace `sub` or
/// `realm_access`.
pub const RESERVED_CLAIMS: &[&str] = &[
    "exp",
    "nbf",
    "iat",
    "auth_time",
    "jti",
    "iss",
    "aud",
    "sub",
    "typ",
    "azp",
    "sid",
    "session_state",
    "acr",
    "nonce",
    "at_hash",
    "allowed-origins",
    "realm_access",
    "resource_access",
    "scope",
    "client_id",
    "preferred_username",
    "email",
    "email_verified",
    "name",
    "given_name",
    "family_name",
    "active",
    "token_type",
    "username",
];

/// What a user-attribute mapper adds: the first value of a user attribute, as a string
/// claim, in the tokens its flags name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttributeClaim {
    /// The user attribute (`user.attribute`).
    pub attribute: String,
    /// The claim (`claim.name`), a top-level name.
    pub claim: String,
    /// In access tokens (`access.token.claim`, on when absent as in Keycloak).
    pub access_token: bool,
    /// In ID tokens (`id.token.claim`, off when absent).
    pub id_token: bool,
    /// In the userinfo response (`userinfo.token.claim`; when absent, as `id_token`).
    pub userinfo: bool,
}

/// A protocol mapper (`ProtocolMapperRepresentation`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProtocolMapper {
    /// Display name.
    pub name: String,
    /// `openid-connect`.
    pub protocol: Option<String>,
    /// Mapper type, e.g. `oidc-audience-mapper`.
    pub protocol_mapper: String,
    /// Whether the user must consent (unused by ferrobank; accepted for compatibility).
    pub consent_required: Option<bool>,
    /// Mapper settings, e.g. `included.custom.audience`, `access.token.claim`.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

impl ProtocolMapper {
    /// The claim a user-attribute mapper adds (`None` for other mappers), or why
    /// ferrobank's provider cannot add it the way Keycloak would.
    pub fn attribute_claim(&self) -> Option<Result<AttributeClaim, &'static str>> {
        if self.protocol_mapper != USER_ATTRIBUTE_MAPPER {
            return None;
        }
        let get = |key: &str| self.config.get(key).map(String::as_str);
        let attribute = get("user.attribute").unwrap_or_default();
        let claim = get("claim.name").unwrap_or_default();
        let problem = if attribute.is_empty() || claim.is_empty() {
            Some("user.attribute and claim.name are required")
        } else if claim.contains('.') {
            // Keycloak nests a dotted name (`a.b` is `{"a": {"b": ..}}`); not implemented.
            Some("claim.name must be a top-level name (no '.')")
        } else if RESERVED_CLAIMS.contains(&claim) {
            Some("claim.name is a claim the provider writes itself")
        } else if get("multivalued") == Some("true") || get("aggregate.attrs") == Some("true") {
            Some("only single-valued attributes are supported (multivalued, aggregate.attrs)")
        } else if get("jsonType.label").is_some_and(|t| t != "String") {
            Some("only jsonType.label String is supported")
        } else {
            None
        };
        if let Some(problem) = problem {
            return Some(Err(problem));
        }
        // Keycloak's OIDCAttributeMapperHelper defaults for an absent flag.
        let id_token = get("id.token.claim") == Some("true");
        Some(Ok(AttributeClaim {
            attribute: attribute.to_owned(),
            claim: claim.to_owned(),
            access_token: get("access.token.claim") != Some("false"),
            id_token,
            userinfo: get("userinfo.token.claim").map_or(id_token, |v| v == "true"),
        }))
    }

    /// The audience an audience mapper adds to access tokens, if it does.
    pub fn access_token_audience(&self) -> Option<&str> {
        if self.protocol_mapper != AUDIENCE_MAPPER
            || self.config.get("access.token.claim").map(String::as_str) == Some("false")
        {
            return None;
        }
        self.config
            .get("included.custom.audience")
            .or_else(|| self.config.get("included.client.audience"))
            .map(String::as_str)
            .filter(|audience| !audience.is_empty())
    }
}

impl Client {
    /// The PKCE method this client must use, if any.
    pub fn pkce_method(&self) -> Option<&str> {
        self.attributes.get(PKCE_METHOD_ATTRIBUTE).map(String::as_str)
    }

    /// Whether the authorization code flow is on; Keycloak enables it when absent.
    pub fn standard_flow(&self) -> bool {
        self.standard_flow_enabled.unwrap_or(true)
    }

    /// The allowed `post_logout_redirect_uri`s (`post.logout.redirect.uris`).
    pub fn post_logout_redirect_uris(&self) -> Vec<String> {
        self.attributes
            .get(POST_LOGOUT_REDIRECT_URIS_ATTRIBUTE)
            .map(|uris| uris.split("##").filter(|u| !u.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// Whether the code flow issues refresh tokens (`use.refresh.tokens`, default true).
    pub fn use_refresh_tokens(&self) -> bool {
        self.attributes.get(USE_REFRESH_TOKENS_ATTRIBUTE).map(String::as_str) != Some("false")
    }

    /// Whether the client authenticates (neither public nor bearer-only).
    pub fn is_confidential(&self) -> bool {
        !self.public_client.unwrap_or(false) && !self.bearer_only.unwrap_or(false)
    }
}

/// `UserRepresentation`, restricted to what a login needs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    /// The login name.
    pub username: String,
    /// Email address.
    pub email: Option<String>,
    /// Given name.
    pub first_name: Option<String>,
    /// Family name.
    pub last_name: Option<String>,
    /// A disabled user cannot log in; Keycloak imports an absent value as disabled.
    #[serde(default)]
    pub enabled: bool,
    /// Whether the email address was verified.
    #[serde(default)]
    pub email_verified: bool,
    /// Direct realm role mappings.
    #[serde(default)]
    pub realm_roles: Vec<String>,
    /// Direct client role mappings by `clientId`.
    #[serde(default)]
    pub client_roles: BTreeMap<String, Vec<String>>,
    /// Group paths, e.g. `/Loan Officers`.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Credentials; plain `value`s only ever in local dev files.
    #[serde(default)]
    pub credentials: Vec<Credential>,
    /// Actions forced at next login, e.g. `UPDATE_PASSWORD`, `CONFIGURE_TOTP`.
    #[serde(default)]
    pub required_actions: Vec<String>,
    /// Set on the user behind a client's service account.
    pub service_account_client_id: Option<String>,
    /// Free-form attributes.
    #[serde(default)]
    pub attributes: BTreeMap<String, Vec<String>>,
}

/// `CredentialRepresentation`: a plain value to hash on import, or an exported hash.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Credential {
    /// `password` is the only type ferrobank accepts.
    #[serde(rename = "type")]
    pub kind: String,
    /// Plain-text value, hashed on import.
    pub value: Option<Secret>,
    /// Whether the user must change it at next login.
    #[serde(default)]
    pub temporary: bool,
    /// Exported hash and salt (JSON inside a string).
    pub secret_data: Option<Secret>,
    /// Exported hash parameters: algorithm, iterations (JSON inside a string).
    pub credential_data: Option<String>,
}

/// `ScopeMappingRepresentation`: realm roles a client (or client scope) may put in tokens.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScopeMapping {
    /// The `clientId` this mapping is for.
    pub client: Option<String>,
    /// Or the client scope it is for.
    pub client_scope: Option<String>,
    /// Realm role names.
    #[serde(default)]
    pub roles: Vec<String>,
}

/// A secret string (client secret, password, hash) that `Debug` never prints.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}
