//! A small Keycloak-shaped admin API for onboarding users, restricted to `banking-admin`
//! of the same realm: `/admin/realms/{realm}/users[/{id}[/reset-password|/role-mappings/realm]]`,
//! `/admin/realms/{realm}/roles`, and key rotation. Customer tiers are set here, as the
//! user attribute `tier`. Bodies use Keycloak's representations
//! (`UserRepresentation`, `CredentialRepresentation`, `RoleRepresentation`); errors are
//! problem+json.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use ferrobank_adapters::idp::{
    IdentityProvider, IdpError, NewUser, UserError, UserState, UserUpdate,
};
use ferrobank_domain::Role;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::super::AppState;
use super::super::extract::{ApiJson, ApiPath, ApiQuery};
use super::super::problem::{Challenge, Problem};

/// Most users returned by one list call (Keycloak's default page is 100).
const MAX_PAGE: usize = 100;

pub(super) fn routes() -> Router<AppState> {
    let base = "/admin/realms/{realm}";
    Router::new()
        .route(&format!("{base}/users"), get(list_users).post(create_user))
        .route(&format!("{base}/users/{{id}}"), get(get_user).put(update_user).delete(delete_user))
        .route(&format!("{base}/users/{{id}}/reset-password"), put(reset_password))
        .route(
            &format!("{base}/users/{{id}}/role-mappings/realm"),
            get(user_roles).post(add_roles).delete(remove_roles),
        )
        .route(&format!("{base}/roles"), get(list_roles))
        .route(&format!("{base}/keys/rotate"), post(rotate_keys))
}

/// `UserRepresentation`, as read and written.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UserRepresentation {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    email_verified: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    totp: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    required_actions: Option<BTreeSet<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    realm_roles: Option<BTreeSet<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    groups: Option<BTreeSet<String>>,
    /// Attributes, `{name: [values]}`; a `PUT` with `attributes` replaces them all.
    /// ferrobank reads `tier` (a KYC outcome): exactly one of `standard`, `premium`,
    /// `business`. It becomes the `tier` claim of the user's access tokens and selects
    /// their payment limits; without it a customer is `standard`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = json!({"tier": ["premium"]}))]
    attributes: Option<BTreeMap<String, Vec<String>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    credentials: Option<Vec<CredentialRepresentation>>,
}

/// `CredentialRepresentation` (passwords only).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CredentialRepresentation {
    #[serde(rename = "type")]
    kind: String,
    value: String,
    #[serde(default)]
    temporary: bool,
}

/// `RoleRepresentation` (realm roles, by name).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoleRepresentation {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    #[serde(default)]
    composite: bool,
}

/// `{realm}` of the admin paths.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct RealmPath {
    /// Realm name.
    pub realm: String,
}

/// `{realm}` and `{id}` of the user paths.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct UserPath {
    /// Realm name.
    pub realm: String,
    /// User id.
    pub id: String,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    search: Option<String>,
    username: Option<String>,
    email: Option<String>,
    first: Option<usize>,
    max: Option<usize>,
}

fn represent(user: &UserState) -> UserRepresentation {
    UserRepresentation {
        id: Some(user.id.clone()),
        username: Some(user.username.clone()),
        email: user.email.clone(),
        first_name: user.first_name.clone(),
        last_name: user.last_name.clone(),
        enabled: Some(user.enabled),
        email_verified: Some(user.email_verified),
        totp: Some(user.totp_secret.is_some()),
        required_actions: Some(user.required_actions.clone()),
        attributes: Some(user.attributes.clone()),
        ..UserRepresentation::default()
    }
}

fn user_problem(error: UserError) -> Problem {
    match error {
        UserError::NotFound => Problem::not_found("the user"),
        UserError::Conflict(detail) => {
            Problem::new(StatusCode::CONFLICT, "user_exists", "User exists").detail(detail)
        }
        UserError::Policy(detail) => Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_password",
            "Password rejected by the realm's policy",
        )
        .detail(detail),
        UserError::Invalid(detail) => {
            Problem::new(StatusCode::BAD_REQUEST, "invalid_user", "Invalid user").detail(detail)
        }
        UserError::Idp(error) => idp_problem(error),
    }
}

fn idp_problem(error: IdpError) -> Problem {
    match error {
        IdpError::UnknownRealm(_) => Problem::not_found("the realm"),
        other => {
            tracing::error!(error = %other, "identity provider failure");
            Problem::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Service unavailable")
                .retry_after(5)
        }
    }
}

/// The provider, after checking the caller holds `banking-admin` in this realm.
fn admin(
    state: &AppState,
    headers: &HeaderMap,
    realm: &str,
) -> Result<Arc<IdentityProvider>, Problem> {
    let idp = state.idp.clone().ok_or_else(|| Problem::not_found("the identity provider"))?;
    let unauthorized = || {
        Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", "Authentication required")
            .detail("send an access token of this realm as Authorization: Bearer <token>")
            .challenge(Challenge::InvalidToken)
    };
    let token = super::super::extract::bearer_token(headers).ok_or_else(unauthorized)?;
    let claims = idp.verify_access(realm, token).ok_or_else(unauthorized)?;
    let is_admin = claims["realm_access"]["roles"]
        .as_array()
        .is_some_and(|roles| roles.iter().any(|r| r.as_str() == Some(Role::BankingAdmin.as_str())));
    if !is_admin {
        return Err(Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden")
            .detail("the banking-admin role is required"));
    }
    Ok(idp)
}

/// Users of the realm, searched by username, email or name (Keycloak's `search`).
#[utoipa::path(get, path = "/admin/realms/{realm}/users", tag = "admin",
    params(RealmPath, ListQuery),
    responses(
        (status = 200, description = "Users", body = [UserRepresentation]),
        (status = 400, description = "Invalid query", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_users(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(RealmPath { realm }): ApiPath<RealmPath>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Response, Problem> {
    let idp = admin(&state, &headers, &realm)?;
    let search = query.search.or(query.username).or(query.email);
    let users = idp
        .users(
            &realm,
            search.as_deref(),
            query.first.unwrap_or(0),
            query.max.unwrap_or(MAX_PAGE).min(MAX_PAGE),
        )
        .map_err(idp_problem)?;
    Ok(Json(users.iter().map(represent).collect::<Vec<_>>()).into_response())
}

/// Create a user (optionally with a password credential and realm roles).
#[utoipa::path(post, path = "/admin/realms/{realm}/users", tag = "admin",
    params(RealmPath),
    request_body = UserRepresentation,
    responses(
        (status = 201, description = "Created; `Location` names the user"),
        (status = 409, description = "Username or email taken", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_user(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(RealmPath { realm }): ApiPath<RealmPath>,
    ApiJson(body): ApiJson<UserRepresentation>,
) -> Result<Response, Problem> {
    let idp = admin(&state, &headers, &realm)?;
    if body.id.is_some() || body.totp.is_some() {
        return Err(Problem::new(StatusCode::BAD_REQUEST, "invalid_user", "Invalid user")
            .detail("id and totp are set by the server"));
    }
    let credential = match body.credentials.as_deref() {
        None | Some([]) => None,
        Some([one]) if one.kind == "password" => Some(one),
        Some(_) => {
            return Err(Problem::new(StatusCode::BAD_REQUEST, "invalid_user", "Invalid user")
                .detail("exactly one credential of type password is accepted"));
        }
    };
    let new = NewUser {
        username: body.username.unwrap_or_default(),
        email: body.email,
        first_name: body.first_name,
        last_name: body.last_name,
        enabled: body.enabled.unwrap_or(false),
        email_verified: body.email_verified.unwrap_or(false),
        password: credential.map(|c| c.value.clone()),
        temporary: credential.is_some_and(|c| c.temporary),
        realm_roles: body.realm_roles.unwrap_or_default(),
        groups: body.groups.unwrap_or_default(),
        required_actions: body.required_actions.unwrap_or_default(),
        attributes: body.attributes.unwrap_or_default(),
        id: None,
    };
    let id = idp.create_user(&realm, new).await.map_err(user_problem)?;
    let location = format!("{}/admin/realms/{realm}/users/{id}", idp.public_url());
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(json!({ "id": id })))
        .into_response())
}

/// One user.
#[utoipa::path(get, path = "/admin/realms/{realm}/users/{id}", tag = "admin",
    params(UserPath),
    responses(
        (status = 200, description = "The user", body = UserRepresentation),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_user(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(UserPath { realm, id }): ApiPath<UserPath>,
) -> Result<Response, Problem> {
    let idp = admin(&state, &headers, &realm)?;
    let user = idp.user(&realm, &id).map_err(user_problem)?;
    Ok(Json(represent(&user)).into_response())
}

/// Update a user's profile, enabled flag, required actions and attributes (the customer's
/// `tier`: `{"attributes": {"tier": ["premium"]}}`; it applies from the user's next access
/// token).
#[utoipa::path(put, path = "/admin/realms/{realm}/users/{id}", tag = "admin",
    params(UserPath),
    request_body = UserRepresentation,
    responses(
        (status = 204, description = "Updated"),
        (status = 400, description = "Invalid user (e.g. an unknown tier)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn update_user(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(UserPath { realm, id }): ApiPath<UserPath>,
    ApiJson(body): ApiJson<UserRepresentation>,
) -> Result<Response, Problem> {
    let idp = admin(&state, &headers, &realm)?;
    let current = idp.user(&realm, &id).map_err(user_problem)?;
    if body.username.as_deref().is_some_and(|u| u.to_lowercase() != current.username)
        || body.credentials.is_some()
        || body.realm_roles.is_some()
    {
        return Err(Problem::new(StatusCode::BAD_REQUEST, "invalid_user", "Invalid user").detail(
            "usernames cannot change; use reset-password and role-mappings for credentials and roles",
        ));
    }
    let change = UserUpdate {
        email: body.email,
        first_name: body.first_name,
        last_name: body.last_name,
        enabled: body.enabled,
        email_verified: body.email_verified,
        required_actions: body.required_actions,
        attributes: body.attributes,
    };
    idp.update_user(&realm, &id, change).await.map_err(user_problem)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Delete a user and end their sessions.
#[utoipa::path(delete, path = "/admin/realms/{realm}/users/{id}", tag = "admin",
    params(UserPath),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn delete_user(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(UserPath { realm, id }): ApiPath<UserPath>,
) -> Result<Response, Problem> {
    let idp = admin(&state, &headers, &realm)?;
    idp.delete_user(&realm, &id).await.map_err(user_problem)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Set a user's password (checked against the realm's policy and history).
#[utoipa::path(put, path = "/admin/realms/{realm}/users/{id}/reset-password", tag = "admin",
    params(UserPath),
    request_body = CredentialRepresentation,
    responses(
        (status = 204, description = "Set"),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn reset_password(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(UserPath { realm, id }): ApiPath<UserPath>,
    ApiJson(body): ApiJson<CredentialRepresentation>,
) -> Result<Response, Problem> {
    let idp = admin(&state, &headers, &realm)?;
    if body.kind != "password" {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_credential",
            "Invalid credential",
        )
        .detail("type must be password"));
    }
    idp.set_password(&realm, &id, &body.value, body.temporary).await.map_err(user_problem)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A user's directly assigned realm roles.
#[utoipa::path(get, path = "/admin/realms/{realm}/users/{id}/role-mappings/realm", tag = "admin",
    params(UserPath),
    responses(
        (status = 200, description = "Roles", body = [RoleRepresentation]),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn user_roles(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(UserPath { realm, id }): ApiPath<UserPath>,
) -> Result<Response, Problem> {
    let idp = admin(&state, &headers, &realm)?;
    let user = idp.user(&realm, &id).map_err(user_problem)?;
    let roles: Vec<RoleRepresentation> = user
        .realm_roles
        .iter()
        .map(|name| RoleRepresentation {
            name: name.clone(),
            id: None,
            description: None,
            composite: false,
        })
        .collect();
    Ok(Json(roles).into_response())
}

async fn change_roles(
    state: AppState,
    headers: HeaderMap,
    realm: String,
    id: String,
    roles: Vec<RoleRepresentation>,
    grant: bool,
) -> Result<Response, Problem> {
    let idp = admin(&state, &headers, &realm)?;
    let names = roles.into_iter().map(|r| r.name).collect();
    idp.map_realm_roles(&realm, &id, &names, grant).await.map_err(user_problem)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Grant realm roles to a user.
#[utoipa::path(post, path = "/admin/realms/{realm}/users/{id}/role-mappings/realm", tag = "admin",
    params(UserPath),
    request_body = [RoleRepresentation],
    responses(
        (status = 204, description = "Granted"),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn add_roles(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(UserPath { realm, id }): ApiPath<UserPath>,
    ApiJson(roles): ApiJson<Vec<RoleRepresentation>>,
) -> Result<Response, Problem> {
    change_roles(state, headers, realm, id, roles, true).await
}

/// Take realm roles from a user (their sessions end).
#[utoipa::path(delete, path = "/admin/realms/{realm}/users/{id}/role-mappings/realm", tag = "admin",
    params(UserPath),
    request_body = [RoleRepresentation],
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn remove_roles(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(UserPath { realm, id }): ApiPath<UserPath>,
    ApiJson(roles): ApiJson<Vec<RoleRepresentation>>,
) -> Result<Response, Problem> {
    change_roles(state, headers, realm, id, roles, false).await
}

/// The realm's roles.
#[utoipa::path(get, path = "/admin/realms/{realm}/roles", tag = "admin",
    params(RealmPath),
    responses(
        (status = 200, description = "Roles", body = [RoleRepresentation]),
        (status = 404, description = "No such realm", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_roles(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(RealmPath { realm }): ApiPath<RealmPath>,
) -> Result<Response, Problem> {
    let idp = admin(&state, &headers, &realm)?;
    let realm_state = idp.realm(&realm).map_err(idp_problem)?;
    let roles: Vec<RoleRepresentation> = realm_state
        .roles
        .iter()
        .map(|(name, composites)| RoleRepresentation {
            name: name.clone(),
            id: None,
            description: None,
            composite: !composites.is_empty(),
        })
        .collect();
    Ok(Json(roles).into_response())
}

/// Rotate the realm's signing key; the previous key stays published until its tokens expire.
#[utoipa::path(post, path = "/admin/realms/{realm}/keys/rotate", tag = "admin",
    params(RealmPath),
    responses(
        (status = 200, description = "The new key's `kid`"),
    ))]
pub async fn rotate_keys(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(RealmPath { realm }): ApiPath<RealmPath>,
) -> Result<Response, Problem> {
    let idp = admin(&state, &headers, &realm)?;
    let kid = idp.rotate_keys(&realm).await.map_err(idp_problem)?;
    Ok(Json(json!({ "kid": kid })).into_response())
}
