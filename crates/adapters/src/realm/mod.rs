//! Keycloak realm files: the typed model ferrobank's OAuth 2.1 / OIDC provider will load.
//!
//! The format is Keycloak's own realm export (`RealmRepresentation`), so one file
//! (`deploy/keycloak/banking-realm.json`) imports into a real Keycloak and into ferrobank.
//! [`parse`] reads it and reports every field the model does not know, with its JSON path,
//! instead of dropping it silently; [`validate`] checks the rules the provider enforces
//! (OAuth 2.1: PKCE S256, no implicit flow, no password grant; sane lifetimes and
//! brute-force numbers; references between roles, groups, clients and users).

mod model;
mod validate;

pub use model::{
    AUDIENCE_MAPPER, AttributeClaim, Client, Composites, Credential, Group,
    OTP_REQUIRED_ROLES_ATTRIBUTE, PKCE_METHOD_ATTRIBUTE, POST_LOGOUT_REDIRECT_URIS_ATTRIBUTE,
    ProtocolMapper, RESERVED_CLAIMS, Realm, Role, Roles, ScopeMapping, Secret, TIER_ATTRIBUTE,
    USE_REFRESH_TOKENS_ATTRIBUTE, USER_ATTRIBUTE_MAPPER, User,
};
pub use validate::{
    MAX_FAILURE_FACTOR, PASSWORD_CREDENTIAL, SIGNATURE_ALGORITHMS, check_tier_attribute,
    otp_required_roles, validate,
};

use std::fmt;

/// The largest realm file accepted, in bytes; Keycloak exports with thousands of users fit.
pub const MAX_REALM_JSON_BYTES: usize = 16 * 1024 * 1024;

/// Fields Keycloak writes into every export that carry nothing ferrobank's provider
/// enforces, so reporting them would only bury the fields that matter: internal ids and
/// back-references (`id`, `containerId`, `parentId`, `clientRole`, `subGroupCount`,
/// `self`, `origin`, `createdTimestamp`, `createdDate`), the exporting server's version,
/// and console-only presentation (`displayName`, `displayNameHtml`, themes,
/// `alwaysDisplayInConsole`, `userLabel`, `access`). Everything else that is not modelled
/// (e.g. `protocolMappers`, `notBefore`, `authenticationFlows`) is reported, because it
/// could change who gets which token.
pub const KEYCLOAK_FIELDS_IGNORED: &[&str] = &[
    "id",
    "containerId",
    "parentId",
    "clientRole",
    "subGroupCount",
    "self",
    "origin",
    "createdTimestamp",
    "createdDate",
    "keycloakVersion",
    "displayName",
    "displayNameHtml",
    "loginTheme",
    "accountTheme",
    "adminTheme",
    "emailTheme",
    "alwaysDisplayInConsole",
    "userLabel",
    "access",
];

/// A field of the input that the model does not know, e.g. `clients[0].fooBar`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownField {
    /// JSON path from the realm object: `.`-separated keys, `[i]` for array elements.
    pub path: String,
}

impl fmt::Display for UnknownField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path)
    }
}

/// Why a realm file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RealmError {
    /// The input exceeds [`MAX_REALM_JSON_BYTES`].
    #[error("realm file is {size_bytes} bytes, more than the {max_bytes} accepted")]
    TooLarge {
        /// Size of the input.
        size_bytes: usize,
        /// The limit.
        max_bytes: usize,
    },
    /// Not JSON, or a known field has the wrong type.
    #[error("realm file is not a Keycloak realm export: {0}")]
    Json(#[source] serde_json::Error),
    /// `realm` is empty.
    #[error("realm name is empty")]
    EmptyRealmName,
    /// A role, group, client or user has an empty name.
    #[error("{at}: {kind} has an empty name")]
    EmptyName {
        /// JSON path of the item.
        at: String,
        /// `role`, `group`, `client`, `user`.
        kind: &'static str,
    },
    /// Two items of one kind share a name.
    #[error("{kind} {name:?} is defined more than once")]
    Duplicate {
        /// `realm role`, `client`, `group`, `user`, ...
        kind: &'static str,
        /// The repeated name.
        name: String,
    },
    /// A realm role is referenced but not defined in `roles.realm`.
    #[error("{at}: realm role {role:?} is not defined in roles.realm")]
    UnknownRealmRole {
        /// JSON path of the reference.
        at: String,
        /// The missing role.
        role: String,
    },
    /// A client role is referenced but not defined in `roles.client`.
    #[error("{at}: client role {role:?} of client {client:?} is not defined in roles.client")]
    UnknownClientRole {
        /// JSON path of the reference.
        at: String,
        /// The `clientId`.
        client: String,
        /// The missing role.
        role: String,
    },
    /// A client is referenced but not defined in `clients`.
    #[error("{at}: client {client:?} is not defined in clients")]
    UnknownClient {
        /// JSON path of the reference.
        at: String,
        /// The missing `clientId`.
        client: String,
    },
    /// A user is a member of a group path that no group has.
    #[error("{at}: group {group:?} is not defined in groups")]
    UnknownGroup {
        /// JSON path of the reference.
        at: String,
        /// The missing group path.
        group: String,
    },
    /// A group's `path` does not match its place in the tree.
    #[error("{at}: group path {path:?} should be {expected:?}")]
    GroupPathMismatch {
        /// JSON path of the group.
        at: String,
        /// The path in the file.
        path: String,
        /// The path from the group's name and parents.
        expected: String,
    },
    /// A redirect URI that is relative, not http(s), has a fragment, a wildcard other than
    /// a trailing `/*`, or plain http to a host other than loopback.
    #[error("client {client:?}: redirect URI {uri:?} is not allowed: {reason}")]
    RedirectUri {
        /// The `clientId`.
        client: String,
        /// The URI.
        uri: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A web origin that is neither `+` nor a bare `scheme://host[:port]`.
    #[error("client {client:?}: web origin {origin:?} is not an origin")]
    WebOrigin {
        /// The `clientId`.
        client: String,
        /// The origin.
        origin: String,
    },
    /// A client with the authorization code flow does not require PKCE S256.
    #[error("client {client:?}: the code flow requires attribute pkce.code.challenge.method=S256")]
    PkceNotRequired {
        /// The `clientId`.
        client: String,
    },
    /// A grant removed by OAuth 2.1 is enabled or not explicitly disabled.
    #[error("client {client:?}: {flag} must be explicitly false (removed by OAuth 2.1)")]
    LegacyGrant {
        /// The `clientId`.
        client: String,
        /// `implicitFlowEnabled` or `directAccessGrantsEnabled`.
        flag: &'static str,
    },
    /// A token, session or code lifetime out of range.
    #[error("{field} is {value_secs} s; it must be {expected}")]
    Lifetime {
        /// Keycloak's field name.
        field: &'static str,
        /// The value in the file.
        value_secs: i64,
        /// `positive` or `0 (inherit) or positive`.
        expected: &'static str,
    },
    /// The SSO session idle timeout exceeds its maximum lifespan.
    #[error("ssoSessionIdleTimeout ({idle_secs} s) exceeds ssoSessionMaxLifespan ({max_secs} s)")]
    SessionIdleExceedsMax {
        /// Idle timeout.
        idle_secs: i64,
        /// Maximum lifespan.
        max_secs: i64,
    },
    /// `bruteForceProtected` is not true: a bank's logins must be protected.
    #[error("bruteForceProtected must be true")]
    BruteForceDisabled,
    /// A brute-force number out of range.
    #[error("{field} is {value}; it must be {expected}")]
    BruteForce {
        /// Keycloak's field name.
        field: &'static str,
        /// The value in the file.
        value: i64,
        /// The accepted range.
        expected: String,
    },
    /// A protocol mapper ferrobank does not implement.
    #[error(
        "client {client:?}: protocol mapper {name:?} of type {mapper:?} is not supported (only oidc-audience-mapper and oidc-usermodel-attribute-mapper)"
    )]
    UnsupportedMapper {
        /// The `clientId`.
        client: String,
        /// The mapper's name.
        name: String,
        /// The mapper's type.
        mapper: String,
    },
    /// A user attribute ferrobank reads has a value it does not accept.
    #[error("{at}: {reason}")]
    Attribute {
        /// JSON path of the attributes.
        at: String,
        /// What is wrong.
        reason: String,
    },
    /// A user-attribute mapper with settings ferrobank does not implement.
    #[error("client {client:?}: protocol mapper {name:?}: {reason}")]
    AttributeMapper {
        /// The `clientId`.
        client: String,
        /// The mapper's name.
        name: String,
        /// What is not supported.
        reason: &'static str,
    },
    /// An OTP policy setting ferrobank does not implement.
    #[error("{field} {value:?} is not supported (expected {expected})")]
    OtpPolicy {
        /// The realm field.
        field: &'static str,
        /// The value in the file.
        value: String,
        /// What is accepted.
        expected: &'static str,
    },
    /// `defaultSignatureAlgorithm` is not one ferrobank signs with.
    #[error("defaultSignatureAlgorithm {algorithm:?} is not one of RS256, ES256, EdDSA")]
    SignatureAlgorithm {
        /// The algorithm in the file.
        algorithm: String,
    },
    /// A user credential of a type other than `password`.
    #[error("{at}: credential type {kind:?} is not supported (only \"password\")")]
    CredentialType {
        /// JSON path of the credential.
        at: String,
        /// The type in the file.
        kind: String,
    },
}

/// Reads a Keycloak realm export; fields the model does not know are returned, not dropped.
pub fn parse(json: &str) -> Result<(Realm, Vec<UnknownField>), RealmError> {
    if json.len() > MAX_REALM_JSON_BYTES {
        return Err(RealmError::TooLarge {
            size_bytes: json.len(),
            max_bytes: MAX_REALM_JSON_BYTES,
        });
    }
    let mut unknown = Vec::new();
    let mut deserializer = serde_json::Deserializer::from_str(json);
    let realm: Realm = serde_ignored::deserialize(&mut deserializer, |path| {
        let ignorable = matches!(
            &path,
            serde_ignored::Path::Map { key, .. } if KEYCLOAK_FIELDS_IGNORED.contains(&key.as_str())
        );
        if !ignorable {
            unknown.push(UnknownField { path: json_path(&path) });
        }
    })
    .map_err(RealmError::Json)?;
    deserializer.end().map_err(RealmError::Json)?;
    Ok((realm, unknown))
}

/// `clients[0].fooBar` rather than serde_ignored's `clients.0.fooBar`.
fn json_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", json_path(parent)),
        Path::Map { parent, key } => {
            let parent = json_path(parent);
            if parent.is_empty() { key.clone() } else { format!("{parent}.{key}") }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => json_path(parent),
    }
}
