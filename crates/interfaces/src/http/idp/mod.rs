//! The identity provider's HTTP face, at Keycloak's paths:
//! `/realms/{realm}/.well-known/openid-configuration`,
//! `/realms/{realm}/protocol/openid-connect/{auth,token,certs,userinfo,logout,revoke,token/introspect}`,
//! the login form at `/realms/{realm}/login-actions/authenticate`, and the admin API under
//! `/admin/realms/{realm}` ([`admin`]).
//!
//! The OAuth endpoints answer errors in OAuth's format (RFC 6749 §5.2, RFC 6750 §3), which
//! OAuth clients parse; the admin API answers problem+json like the rest of ferrobank.

pub(crate) mod admin;
mod pages;

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::FormRejection;
use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ferrobank_adapters::idp::{
    AuthorizeRequest, ClientAuth, FormInput, IdentityProvider, LoginOutcome, LogoutOutcome,
    LogoutRequest, OAuthError, TokenRequest,
};
use serde::Deserialize;
use serde_json::json;

use super::AppState;

/// Cookie binding a login page to the browser that opened it.
const LOGIN_COOKIE: &str = "FERROBANK_LOGIN";
/// Cookie of the SSO session.
const SESSION_COOKIE: &str = "FERROBANK_SESSION";

/// The provider's routes (merged into the app when the provider runs in this process).
pub fn routes() -> Router<AppState> {
    let oidc = "/realms/{realm}/protocol/openid-connect";
    Router::new()
        .route("/realms/{realm}/.well-known/openid-configuration", get(discovery))
        .route(&format!("{oidc}/certs"), get(certs))
        .route(&format!("{oidc}/auth"), get(authorize).post(authorize))
        .route("/realms/{realm}/login-actions/authenticate", post(authenticate))
        .route(&format!("{oidc}/token"), post(token))
        .route(&format!("{oidc}/token/introspect"), post(introspect))
        .route(&format!("{oidc}/revoke"), post(revoke))
        .route(&format!("{oidc}/userinfo"), get(userinfo).post(userinfo_post))
        .route(&format!("{oidc}/logout"), get(logout).post(logout))
        .merge(admin::routes())
}

/// The provider; 404 when this process does not run one.
struct Idp(Arc<IdentityProvider>);

impl FromRequestParts<AppState> for Idp {
    type Rejection = StatusCode;

    async fn from_request_parts(_: &mut Parts, state: &AppState) -> Result<Self, StatusCode> {
        state.idp.clone().map(Idp).ok_or(StatusCode::NOT_FOUND)
    }
}

fn oauth_error(error: &OAuthError, basic_used: bool) -> Response {
    let status = StatusCode::from_u16(error.status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut response = (status, no_store(), Json(error.body())).into_response();
    if status == StatusCode::UNAUTHORIZED && basic_used {
        // RFC 6749 §5.2: a failed Basic authentication is answered with its challenge.
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"ferrobank\""),
        );
    }
    response
}

/// RFC 6749 §5.1: token responses must not be cached.
fn no_store() -> [(header::HeaderName, &'static str); 2] {
    [(header::CACHE_CONTROL, "no-store"), (header::PRAGMA, "no-cache")]
}

/// Headers of every HTML page: nothing from elsewhere, no framing (clickjacking), no
/// referrer leaking codes, no caching of forms.
fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.to_owned())
}

/// A cookie scoped to the realm's paths: HttpOnly, SameSite=Lax (sent on the top-level
/// navigation back from a client, never on cross-site sub-requests or POSTs), and Secure
/// whenever the provider is served over https.
fn set_cookie(
    idp: &IdentityProvider,
    realm: &str,
    name: &str,
    value: &str,
    max_age_s: Option<u64>,
) -> HeaderValue {
    let secure = if idp.public_url().starts_with("https://") { "; Secure" } else { "" };
    let age = max_age_s.map(|s| format!("; Max-Age={s}")).unwrap_or_default();
    let value =
        format!("{name}={value}; Path=/realms/{realm}/; HttpOnly; SameSite=Lax{secure}{age}");
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("invalid=1"))
}

fn realm_ok(realm: &str) -> bool {
    !realm.is_empty()
        && realm.len() <= 255
        && realm.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

async fn discovery(Idp(idp): Idp, Path(realm): Path<String>) -> Response {
    match idp.discovery(&realm) {
        Ok(document) => Json(document).into_response(),
        Err(_) => {
            (StatusCode::NOT_FOUND, Json(json!({"error": "Realm does not exist"}))).into_response()
        }
    }
}

async fn certs(Idp(idp): Idp, Path(realm): Path<String>) -> Response {
    match idp.jwks(&realm) {
        Ok(jwks) => ([(header::CACHE_CONTROL, "max-age=60")], Json(jwks)).into_response(),
        Err(_) => {
            (StatusCode::NOT_FOUND, Json(json!({"error": "Realm does not exist"}))).into_response()
        }
    }
}

/// The parameters of a browser request to an endpoint OpenID Connect lets clients call with
/// GET (query) or POST (form body): the authorization and end-session endpoints (OIDC Core
/// §3.1.2.1, RP-Initiated Logout §2). A malformed one is an error page, never a redirect.
struct BrowserParams<T>(T);

impl<T: serde::de::DeserializeOwned + Send> axum::extract::FromRequest<AppState>
    for BrowserParams<T>
{
    type Rejection = Response;

    async fn from_request(
        request: axum::extract::Request,
        state: &AppState,
    ) -> Result<Self, Response> {
        let parsed = if request.method() == axum::http::Method::POST {
            Form::<T>::from_request(request, state).await.map(|Form(t)| t).ok()
        } else {
            Query::<T>::try_from_uri(request.uri()).map(|Query(t)| t).ok()
        };
        parsed.map(BrowserParams).ok_or_else(|| {
            html(
                StatusCode::BAD_REQUEST,
                pages::message("Invalid request", "The request is malformed."),
            )
        })
    }
}

async fn authorize(
    Idp(idp): Idp,
    Path(realm): Path<String>,
    headers: HeaderMap,
    BrowserParams(request): BrowserParams<AuthorizeRequest>,
) -> Response {
    if !realm_ok(&realm) {
        return html(StatusCode::NOT_FOUND, pages::message("Not found", "Realm not found."));
    }
    let sso = cookie(&headers, SESSION_COOKIE);
    login_response(&idp, &realm, idp.authorize(&realm, &request, sso.as_deref()))
}

fn login_response(idp: &IdentityProvider, realm: &str, outcome: LoginOutcome) -> Response {
    match outcome {
        LoginOutcome::Page(page) => {
            let cookie = set_cookie(idp, realm, LOGIN_COOKIE, &page.login_id, None);
            let mut response = html(StatusCode::OK, pages::login(&page));
            response.headers_mut().append(header::SET_COOKIE, cookie);
            response
        }
        LoginOutcome::Redirect { location, sso } => {
            let mut response = Redirect::to(&location).into_response();
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
                .headers_mut()
                .insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
            if let Some(sid) = sso {
                response
                    .headers_mut()
                    .append(header::SET_COOKIE, set_cookie(idp, realm, SESSION_COOKIE, &sid, None));
                response
                    .headers_mut()
                    .append(header::SET_COOKIE, set_cookie(idp, realm, LOGIN_COOKIE, "", Some(0)));
            }
            response
        }
        LoginOutcome::Error { status, message } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
            html(status, pages::message("We could not sign you in", &message))
        }
    }
}

#[derive(Debug, Deserialize)]
struct LoginQuery {
    login: String,
}

async fn authenticate(
    Idp(idp): Idp,
    Path(realm): Path<String>,
    headers: HeaderMap,
    query: Result<Query<LoginQuery>, axum::extract::rejection::QueryRejection>,
    form: Result<Form<FormInput>, FormRejection>,
) -> Response {
    let (Ok(Query(query)), Ok(Form(input))) = (query, form) else {
        return html(
            StatusCode::BAD_REQUEST,
            pages::message("Invalid request", "The form could not be read."),
        );
    };
    let cookie = cookie(&headers, LOGIN_COOKIE);
    let outcome = idp.authenticate(&realm, &query.login, cookie.as_deref(), input).await;
    login_response(&idp, &realm, outcome)
}

/// Client credentials from `Authorization: Basic` (RFC 6749 §2.3.1: id and secret are
/// form-urlencoded, then joined by `:` and base64-encoded).
fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, OAuthError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else { return Ok(None) };
    let bad = || OAuthError {
        status: 401,
        error: "invalid_client",
        description: "malformed Basic credentials".into(),
    };
    let value = value.to_str().map_err(|_| bad())?;
    let Some((scheme, encoded)) = value.split_once(' ') else { return Err(bad()) };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(bad());
    }
    let decoded = STANDARD.decode(encoded.trim()).map_err(|_| bad())?;
    let text = String::from_utf8(decoded).map_err(|_| bad())?;
    let (id, secret) = text.split_once(':').ok_or_else(bad)?;
    let unescape = |s: &str| -> String {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Ok(Some((unescape(id), unescape(secret))))
}

/// The form of a back-channel request, with OAuth's errors for a bad one.
fn oauth_form<T: Default>(form: Result<Form<T>, FormRejection>) -> Result<T, OAuthError> {
    form.map(|Form(t)| t).map_err(|rejection| OAuthError {
        status: 400,
        error: "invalid_request",
        description: format!(
            "the body must be application/x-www-form-urlencoded: {}",
            rejection.body_text()
        ),
    })
}

async fn token(
    Idp(idp): Idp,
    Path(realm): Path<String>,
    headers: HeaderMap,
    form: Result<Form<TokenRequest>, FormRejection>,
) -> Response {
    let basic = basic_credentials(&headers);
    let basic_used = headers.contains_key(header::AUTHORIZATION);
    let result = basic.and_then(|basic| {
        let request = oauth_form(form)?;
        idp.token(&realm, &request, &ClientAuth { basic, client_id: None, client_secret: None })
    });
    match result {
        Ok(body) => (no_store(), Json(body)).into_response(),
        Err(error) => oauth_error(&error, basic_used),
    }
}

/// The form of introspection and revocation requests.
#[derive(Debug, Default, Deserialize)]
struct TokenForm {
    token: Option<String>,
    #[allow(dead_code)]
    token_type_hint: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

fn token_form(
    headers: &HeaderMap,
    form: Result<Form<TokenForm>, FormRejection>,
) -> Result<(ClientAuth, String), OAuthError> {
    let basic = basic_credentials(headers)?;
    let form = oauth_form(form)?;
    let token = form.token.filter(|t| !t.is_empty()).ok_or(OAuthError {
        status: 400,
        error: "invalid_request",
        description: "token is required".into(),
    })?;
    Ok((ClientAuth { basic, client_id: form.client_id, client_secret: form.client_secret }, token))
}

async fn introspect(
    Idp(idp): Idp,
    Path(realm): Path<String>,
    headers: HeaderMap,
    form: Result<Form<TokenForm>, FormRejection>,
) -> Response {
    let basic_used = headers.contains_key(header::AUTHORIZATION);
    match token_form(&headers, form).and_then(|(auth, token)| idp.introspect(&realm, &auth, &token))
    {
        Ok(body) => (no_store(), Json(body)).into_response(),
        Err(error) => oauth_error(&error, basic_used),
    }
}

async fn revoke(
    Idp(idp): Idp,
    Path(realm): Path<String>,
    headers: HeaderMap,
    form: Result<Form<TokenForm>, FormRejection>,
) -> Response {
    let basic_used = headers.contains_key(header::AUTHORIZATION);
    match token_form(&headers, form).and_then(|(auth, token)| idp.revoke(&realm, &auth, &token)) {
        Ok(()) => (no_store(), StatusCode::OK).into_response(),
        Err(error) => oauth_error(&error, basic_used),
    }
}

/// The body of a userinfo POST: the token may travel as a form field (RFC 6750 §2.2,
/// allowed by OIDC Core §5.3.1 and accepted by Keycloak).
#[derive(Debug, Default, Deserialize)]
struct UserinfoForm {
    access_token: Option<String>,
}

async fn userinfo(Idp(idp): Idp, Path(realm): Path<String>, headers: HeaderMap) -> Response {
    userinfo_with(&idp, &realm, super::extract::bearer_token(&headers))
}

async fn userinfo_post(
    Idp(idp): Idp,
    Path(realm): Path<String>,
    headers: HeaderMap,
    form: Result<Form<UserinfoForm>, FormRejection>,
) -> Response {
    let from_form = form.ok().and_then(|Form(f)| f.access_token);
    match (super::extract::bearer_token(&headers), from_form.as_deref()) {
        // RFC 6750 §2: a client MUST NOT use more than one method per request.
        (Some(_), Some(_)) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_request", "error_description": "send the token once"})),
        )
            .into_response(),
        (header_token, form_token) => userinfo_with(&idp, &realm, header_token.or(form_token)),
    }
}

fn userinfo_with(idp: &IdentityProvider, realm: &str, token: Option<&str>) -> Response {
    let Some(token) = token else {
        // RFC 6750 §3.1: no error code when the request carried no token at all.
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer realm=\"ferrobank\"")],
        )
            .into_response();
    };
    match idp.userinfo(realm, token) {
        Some(claims) => (no_store(), Json(claims)).into_response(),
        None => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer realm=\"ferrobank\", error=\"invalid_token\"")],
            Json(
                json!({"error": "invalid_token", "error_description": "Token verification failed"}),
            ),
        )
            .into_response(),
    }
}

async fn logout(
    Idp(idp): Idp,
    Path(realm): Path<String>,
    headers: HeaderMap,
    BrowserParams(request): BrowserParams<LogoutRequest>,
) -> Response {
    let sso = cookie(&headers, SESSION_COOKIE);
    let mut response = match idp.logout(&realm, &request, sso.as_deref()) {
        LogoutOutcome::Redirect(location) => Redirect::to(&location).into_response(),
        LogoutOutcome::LoggedOut => {
            html(StatusCode::OK, pages::message("Signed out", "You are signed out."))
        }
        LogoutOutcome::Error(message) => {
            return html(
                StatusCode::BAD_REQUEST,
                pages::message("We could not sign you out", &message),
            );
        }
    };
    response
        .headers_mut()
        .append(header::SET_COOKIE, set_cookie(&idp, &realm, SESSION_COOKIE, "", Some(0)));
    response
}
