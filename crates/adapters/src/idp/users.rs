//! User management behind the admin API: create, update, delete, reset passwords, assign
//! realm roles, set attributes (the customer's `tier`, see
//! [`TIER_ATTRIBUTE`](crate::realm::TIER_ATTRIBUTE)). Every change is stored before it is
//! served.

use std::collections::{BTreeMap, BTreeSet};

use uuid::Uuid;

use super::realm::{UPDATE_PASSWORD, UserState};
use super::{IdentityProvider, IdpError};

/// Why a user change was refused.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// No such user.
    #[error("user not found")]
    NotFound,
    /// The username or email is taken.
    #[error("{0}")]
    Conflict(String),
    /// The password breaks the realm's policy.
    #[error("{0}")]
    Policy(String),
    /// Bad input (unknown role, empty username...).
    #[error("{0}")]
    Invalid(String),
    /// The provider failed.
    #[error(transparent)]
    Idp(#[from] IdpError),
}

/// A user to create.
#[derive(Debug, Clone, Default)]
pub struct NewUser {
    /// Login name.
    pub username: String,
    /// Email.
    pub email: Option<String>,
    /// Given name.
    pub first_name: Option<String>,
    /// Family name.
    pub last_name: Option<String>,
    /// Enabled (Keycloak's default for the admin API is false; the caller decides).
    pub enabled: bool,
    /// Email verified.
    pub email_verified: bool,
    /// Initial password, checked against the policy.
    pub password: Option<String>,
    /// Whether the password must be changed at first login.
    pub temporary: bool,
    /// Realm roles.
    pub realm_roles: BTreeSet<String>,
    /// Group paths.
    pub groups: BTreeSet<String>,
    /// Required actions.
    pub required_actions: BTreeSet<String>,
    /// Attributes.
    pub attributes: BTreeMap<String, Vec<String>>,
    /// A fixed id (demo data); random when `None`.
    pub id: Option<String>,
}

/// Changes to a user; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct UserUpdate {
    /// Email.
    pub email: Option<String>,
    /// Given name.
    pub first_name: Option<String>,
    /// Family name.
    pub last_name: Option<String>,
    /// Enabled.
    pub enabled: Option<bool>,
    /// Email verified.
    pub email_verified: Option<bool>,
    /// Required actions (replaced).
    pub required_actions: Option<BTreeSet<String>>,
    /// Attributes (replaced as a whole, as Keycloak's `PUT` does), e.g. `tier`.
    pub attributes: Option<BTreeMap<String, Vec<String>>>,
}

/// Most attributes one user may have.
pub const MAX_ATTRIBUTES: usize = 64;
/// Most values one attribute may have.
pub const MAX_ATTRIBUTE_VALUES: usize = 16;
/// Longest attribute name or value, in bytes (Keycloak's column is 255 characters).
pub const MAX_ATTRIBUTE_LEN_BYTES: usize = 255;

const ACTIONS: [&str; 2] = [UPDATE_PASSWORD, super::CONFIGURE_TOTP];

impl IdentityProvider {
    /// Users matching `search` (in username, email or names), by username, paged.
    pub fn users(
        &self,
        realm: &str,
        search: Option<&str>,
        first: usize,
        max: usize,
    ) -> Result<Vec<UserState>, IdpError> {
        let state = self.realm(realm)?;
        let needle = search.map(str::to_lowercase);
        Ok(state
            .users
            .values()
            .filter(|u| u.service_account_client.is_none())
            .filter(|u| {
                needle.as_deref().is_none_or(|n| {
                    [
                        Some(&u.username),
                        u.email.as_ref(),
                        u.first_name.as_ref(),
                        u.last_name.as_ref(),
                    ]
                    .into_iter()
                    .flatten()
                    .any(|field| field.to_lowercase().contains(n))
                })
            })
            .skip(first)
            .take(max)
            .cloned()
            .collect())
    }

    /// One user by id.
    pub fn user(&self, realm: &str, id: &str) -> Result<UserState, UserError> {
        self.realm(realm)?.user_by_id(id).cloned().ok_or(UserError::NotFound)
    }

    /// Creates a user; returns its id.
    pub async fn create_user(&self, realm: &str, new: NewUser) -> Result<String, UserError> {
        let username = new.username.trim().to_lowercase();
        if username.is_empty() || username.len() > 255 || username.chars().any(char::is_control) {
            return Err(UserError::Invalid(
                "username must be 1 to 255 printable characters".into(),
            ));
        }
        let state = self.realm(realm)?;
        check_roles(&state, &new.realm_roles, &new.groups)?;
        check_actions(&new.required_actions)?;
        check_attributes(&new.attributes)?;
        let password = match &new.password {
            None => None,
            Some(p) => {
                state
                    .settings
                    .password_policy
                    .check(p, &username, new.email.as_deref())
                    .map_err(UserError::Policy)?;
                Some(self.hasher.hash(p.clone()).await.map_err(UserError::Invalid)?)
            }
        };
        let id = new.id.clone().unwrap_or_else(|| Uuid::new_v4().to_string());
        let mut required_actions = new.required_actions.clone();
        if new.temporary {
            required_actions.insert(UPDATE_PASSWORD.to_owned());
        }
        let user = UserState {
            id: id.clone(),
            username: username.clone(),
            email: new.email.clone(),
            first_name: new.first_name.clone(),
            last_name: new.last_name.clone(),
            enabled: new.enabled,
            email_verified: new.email_verified,
            password,
            password_history: Vec::new(),
            totp_secret: None,
            realm_roles: new.realm_roles.clone(),
            client_roles: BTreeMap::new(),
            groups: new.groups.clone(),
            required_actions,
            service_account_client: None,
            attributes: new.attributes.clone(),
        };
        self.update(realm, |s| {
            if s.users.contains_key(&username) || s.user_by_id(&id).is_some() {
                return Err(UserError::Conflict(format!(
                    "User exists with same username {username}"
                )));
            }
            if let Some(email) = &user.email
                && s.users
                    .values()
                    .any(|u| u.email.as_deref().is_some_and(|e| e.eq_ignore_ascii_case(email)))
            {
                return Err(UserError::Conflict("User exists with same email".into()));
            }
            s.users.insert(username.clone(), user);
            Ok(())
        })
        .await??;
        Ok(id)
    }

    /// Updates a user's profile.
    pub async fn update_user(
        &self,
        realm: &str,
        id: &str,
        change: UserUpdate,
    ) -> Result<(), UserError> {
        if let Some(actions) = &change.required_actions {
            check_actions(actions)?;
        }
        if let Some(attributes) = &change.attributes {
            check_attributes(attributes)?;
        }
        self.update(realm, |s| {
            let username =
                s.user_by_id(id).map(|u| u.username.clone()).ok_or(UserError::NotFound)?;
            let user = s.users.get_mut(&username).ok_or(UserError::NotFound)?;
            if let Some(email) = change.email {
                user.email = Some(email).filter(|e| !e.is_empty());
            }
            if let Some(first) = change.first_name {
                user.first_name = Some(first);
            }
            if let Some(last) = change.last_name {
                user.last_name = Some(last);
            }
            if let Some(enabled) = change.enabled {
                user.enabled = enabled;
            }
            if let Some(verified) = change.email_verified {
                user.email_verified = verified;
            }
            if let Some(actions) = change.required_actions {
                user.required_actions = actions;
            }
            if let Some(attributes) = change.attributes {
                user.attributes = attributes;
            }
            Ok(())
        })
        .await?
    }

    /// Deletes a user and ends their sessions.
    pub async fn delete_user(&self, realm: &str, id: &str) -> Result<(), UserError> {
        self.update(realm, |s| {
            let username = s
                .user_by_id(id)
                .filter(|u| u.service_account_client.is_none())
                .map(|u| u.username.clone())
                .ok_or(UserError::NotFound)?;
            s.users.remove(&username);
            Ok::<_, UserError>(())
        })
        .await??;
        self.end_user_sessions(realm, id);
        Ok(())
    }

    /// Ends every SSO session of a user.
    fn end_user_sessions(&self, realm: &str, id: &str) {
        let mut sessions = self.sessions();
        let sids: Vec<String> = sessions
            .sso
            .iter()
            .filter(|(_, s)| s.realm == realm && s.user_id == id)
            .map(|(sid, _)| sid.clone())
            .collect();
        for sid in sids {
            sessions.end_sso(&sid);
        }
    }

    /// Sets a password (policy and history checked). `temporary` makes the user change it
    /// at next login; otherwise a pending `UPDATE_PASSWORD` is done.
    pub async fn set_password(
        &self,
        realm: &str,
        id: &str,
        new: &str,
        temporary: bool,
    ) -> Result<(), UserError> {
        let state = self.realm(realm)?;
        let user = state
            .user_by_id(id)
            .filter(|u| u.service_account_client.is_none())
            .cloned()
            .ok_or(UserError::NotFound)?;
        let policy = &state.settings.password_policy;
        policy.check(new, &user.username, user.email.as_deref()).map_err(UserError::Policy)?;
        let depth = policy.history();
        if depth > 0 {
            let previous: Vec<String> = user
                .password
                .iter()
                .chain(user.password_history.iter())
                .take(depth)
                .cloned()
                .collect();
            for old in previous {
                if self.hasher.verify(new.to_owned(), Some(old)).await {
                    return Err(UserError::Policy(format!(
                        "The password must not be one of the last {depth} passwords."
                    )));
                }
            }
        }
        let hash = self.hasher.hash(new.to_owned()).await.map_err(UserError::Invalid)?;
        self.update(realm, |s| {
            let user = s.users.get_mut(&user.username).ok_or(UserError::NotFound)?;
            if let Some(old) = user.password.replace(hash) {
                user.password_history.insert(0, old);
                user.password_history.truncate(depth.saturating_sub(1));
            }
            if temporary {
                user.required_actions.insert(UPDATE_PASSWORD.to_owned());
            } else {
                user.required_actions.remove(UPDATE_PASSWORD);
            }
            Ok(())
        })
        .await?
    }

    /// Adds (`grant`) or removes realm roles of a user; their sessions end on removal so
    /// that refreshed tokens cannot keep a revoked role.
    pub async fn map_realm_roles(
        &self,
        realm: &str,
        id: &str,
        roles: &BTreeSet<String>,
        grant: bool,
    ) -> Result<(), UserError> {
        let state = self.realm(realm)?;
        check_roles(&state, roles, &BTreeSet::new())?;
        self.update(realm, |s| {
            let username =
                s.user_by_id(id).map(|u| u.username.clone()).ok_or(UserError::NotFound)?;
            let user = s.users.get_mut(&username).ok_or(UserError::NotFound)?;
            for role in roles {
                if grant {
                    user.realm_roles.insert(role.clone());
                } else {
                    user.realm_roles.remove(role);
                }
            }
            Ok::<_, UserError>(())
        })
        .await??;
        if !grant {
            self.end_user_sessions(realm, id);
        }
        Ok(())
    }
}

fn check_roles(
    state: &super::RealmState,
    roles: &BTreeSet<String>,
    groups: &BTreeSet<String>,
) -> Result<(), UserError> {
    if let Some(role) = roles.iter().find(|r| !state.roles.contains_key(*r)) {
        return Err(UserError::Invalid(format!("Could not find role: {role}")));
    }
    if let Some(group) = groups.iter().find(|g| !state.groups.contains_key(*g)) {
        return Err(UserError::Invalid(format!("Group {group} not found")));
    }
    Ok(())
}

/// Bounded sizes, and the attributes ferrobank reads (the customer's `tier`) well-formed.
fn check_attributes(attributes: &BTreeMap<String, Vec<String>>) -> Result<(), UserError> {
    let bad_name = |name: &str| name.is_empty() || name.len() > MAX_ATTRIBUTE_LEN_BYTES;
    if attributes.len() > MAX_ATTRIBUTES
        || attributes.iter().any(|(name, values)| {
            bad_name(name)
                || values.len() > MAX_ATTRIBUTE_VALUES
                || values.iter().any(|v| v.len() > MAX_ATTRIBUTE_LEN_BYTES)
        })
    {
        return Err(UserError::Invalid(format!(
            "at most {MAX_ATTRIBUTES} attributes of at most {MAX_ATTRIBUTE_VALUES} values; \
             names 1 to {MAX_ATTRIBUTE_LEN_BYTES} bytes, values at most {MAX_ATTRIBUTE_LEN_BYTES}"
        )));
    }
    crate::realm::check_tier_attribute(attributes).map_err(UserError::Invalid)
}

fn check_actions(actions: &BTreeSet<String>) -> Result<(), UserError> {
    match actions.iter().find(|a| !ACTIONS.contains(&a.as_str())) {
        Some(action) => {
            Err(UserError::Invalid(format!("required action {action} is not supported")))
        }
        None => Ok(()),
    }
}
