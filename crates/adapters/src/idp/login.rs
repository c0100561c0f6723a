//! The browser side: the authorization endpoint, the login form (password, TOTP, required
//! actions) and RP-initiated logout.

use serde::Deserialize;
use subtle::ConstantTimeEq as _;

use super::brute_force::Verdict;
use super::realm::{CONFIGURE_TOTP, ClientState, RealmState, UPDATE_PASSWORD, UserState};
use super::sessions::{Code, Issued, Login, Sessions, Sso, Stage, random_token, token_hash};
use super::{IdentityProvider, password, secs_ms, totp};

/// Scopes this provider knows; anything else is `invalid_scope` (including
/// `offline_access`: offline sessions are not implemented, so they are not pretended).
const SCOPES: [&str; 3] = ["openid", "profile", "email"];

/// The one message for every failed login: wrong user, wrong password, disabled or locked
/// (OWASP Authentication Cheat Sheet: "Authentication and Error Messages").
pub const INVALID_CREDENTIALS: &str = "Invalid username or password.";

/// Query of the authorization endpoint (RFC 6749 §4.1.1, RFC 7636 §4.3, OIDC Core §3.1.2.1).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AuthorizeRequest {
    /// Must be `code`.
    pub response_type: Option<String>,
    /// The client.
    pub client_id: Option<String>,
    /// Where the code goes; must be registered.
    pub redirect_uri: Option<String>,
    /// Space-separated scopes.
    pub scope: Option<String>,
    /// Opaque value echoed back (CSRF protection of the client).
    pub state: Option<String>,
    /// Echoed in the ID token (replay protection of the client).
    pub nonce: Option<String>,
    /// PKCE challenge: BASE64URL(SHA256(code_verifier)).
    pub code_challenge: Option<String>,
    /// Must be `S256`.
    pub code_challenge_method: Option<String>,
    /// `none`, `login`, ...
    pub prompt: Option<String>,
    /// Longest time since the user last entered credentials, in seconds (OIDC Core
    /// §3.1.2.1): an older SSO session must log in again.
    pub max_age: Option<u64>,
    /// Only `query` is supported.
    pub response_mode: Option<String>,
    /// Request objects are not supported.
    pub request: Option<String>,
    /// Request objects by reference are not supported.
    pub request_uri: Option<String>,
}

/// The form a login page shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginForm {
    /// Username and password.
    Credentials {
        /// Pre-filled username after a failure.
        username: Option<String>,
    },
    /// A code from the authenticator app.
    Otp,
    /// Enrol an authenticator app: show the secret, ask for a first code.
    ConfigureTotp {
        /// Base32 secret to type in.
        secret: String,
        /// `otpauth://` URI (for a QR code).
        uri: String,
    },
    /// Choose a new password.
    UpdatePassword,
}

/// A page of the login flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginPage {
    /// Realm.
    pub realm: String,
    /// The login in progress (also the cookie that binds it to this browser).
    pub login_id: String,
    /// Anti-CSRF token to embed in the form.
    pub csrf: String,
    /// The client asking.
    pub client_id: String,
    /// What to ask.
    pub form: LoginForm,
    /// Message about the previous attempt.
    pub error: Option<String>,
}

/// What the browser gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginOutcome {
    /// Show a form.
    Page(LoginPage),
    /// Go to the client (with a code or an error). `sso` is a new SSO session to remember
    /// in a cookie.
    Redirect {
        /// `Location`.
        location: String,
        /// New SSO session id.
        sso: Option<String>,
    },
    /// Nothing can be sent to the client (unknown client, bad redirect URI, lost login).
    Error {
        /// HTTP status.
        status: u16,
        /// For the user.
        message: String,
    },
}

/// Parameters of the end-session endpoint (OpenID Connect RP-Initiated Logout 1.0 §2).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct LogoutRequest {
    /// The ID token the client holds.
    pub id_token_hint: Option<String>,
    /// Where to send the browser afterwards; must be registered.
    pub post_logout_redirect_uri: Option<String>,
    /// Echoed to that URI.
    pub state: Option<String>,
    /// The client, when there is no `id_token_hint`.
    pub client_id: Option<String>,
}

/// What logout does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogoutOutcome {
    /// Go to the client's post-logout URI.
    Redirect(String),
    /// Show "you are logged out".
    LoggedOut,
    /// Refused.
    Error(String),
}

/// A value the form posted.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct FormInput {
    /// Anti-CSRF token.
    pub csrf: Option<String>,
    /// Login name.
    pub username: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// TOTP code.
    pub otp: Option<String>,
    /// New password.
    pub password_new: Option<String>,
    /// New password again.
    pub password_confirm: Option<String>,
}

fn error_redirect(
    redirect_uri: &str,
    error: &str,
    description: &str,
    state: Option<&str>,
    issuer: &str,
) -> LoginOutcome {
    let mut params = vec![("error", error), ("error_description", description)];
    if let Some(state) = state {
        params.push(("state", state));
    }
    params.push(("iss", issuer));
    LoginOutcome::Redirect { location: with_query(redirect_uri, &params), sso: None }
}

/// `uri` with `params` appended to its query.
pub(crate) fn with_query(uri: &str, params: &[(&str, &str)]) -> String {
    match url::Url::parse(uri) {
        Ok(mut url) => {
            url.query_pairs_mut().extend_pairs(params);
            url.to_string()
        }
        Err(_) => uri.to_owned(),
    }
}

fn error(status: u16, message: &str) -> LoginOutcome {
    LoginOutcome::Error { status, message: message.to_owned() }
}

/// PKCE `code_challenge`/`code_verifier` syntax: 43 to 128 unreserved characters
/// (RFC 7636 §4.1, §4.2).
pub(crate) fn pkce_syntax_ok(value: &str) -> bool {
    (43..=128).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

fn ct_eq(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

impl IdentityProvider {
    /// The authorization endpoint.
    pub fn authorize(
        &self,
        realm: &str,
        req: &AuthorizeRequest,
        sso_cookie: Option<&str>,
    ) -> LoginOutcome {
        let Ok(state) = self.realm(realm) else { return error(404, "Realm not found.") };
        if !state.enabled {
            return error(404, "Realm not found.");
        }
        let Some(client) =
            req.client_id.as_deref().and_then(|id| state.clients.get(id)).filter(|c| c.enabled)
        else {
            return error(400, "Client not found.");
        };
        // Until the redirect URI is known good, errors are shown here, never redirected
        // (RFC 6749 §4.1.2.1): an open redirector would leak the error to anyone.
        let Some(redirect_uri) =
            req.redirect_uri.as_deref().filter(|uri| client.redirect_allowed(uri))
        else {
            return error(400, "Invalid parameter: redirect_uri");
        };
        let issuer = self.issuer(realm);
        let refuse = |code: &str, description: &str| {
            error_redirect(redirect_uri, code, description, req.state.as_deref(), &issuer)
        };
        if req.request.is_some() || req.request_uri.is_some() {
            return refuse("request_not_supported", "request objects are not supported");
        }
        if req.response_type.as_deref() != Some("code") {
            // OAuth 2.1 removed the implicit and hybrid flows.
            return refuse("unsupported_response_type", "only response_type=code is supported");
        }
        if req.response_mode.as_deref().is_some_and(|m| m != "query") {
            return refuse("invalid_request", "only response_mode=query is supported");
        }
        if !client.standard_flow {
            return refuse(
                "unauthorized_client",
                "the client may not use the authorization code flow",
            );
        }
        if req.code_challenge_method.as_deref() != Some("S256") {
            return refuse(
                "invalid_request",
                "PKCE is required: code_challenge_method=S256 (plain is not accepted)",
            );
        }
        let Some(challenge) = req.code_challenge.as_deref().filter(|c| pkce_syntax_ok(c)) else {
            return refuse("invalid_request", "PKCE is required: a valid code_challenge");
        };
        let scope = match granted_scope(req.scope.as_deref()) {
            Ok(scope) => scope,
            Err(unknown) => return refuse("invalid_scope", &format!("unknown scope {unknown:?}")),
        };
        let prompt = req.prompt.as_deref().unwrap_or("");
        let now_ms = self.now_ms();
        let mut sessions = self.sessions();
        // An SSO session from an earlier login skips the form (unless prompt=login).
        let fresh_enough = |sid: &str| {
            let max_age_ms =
                req.max_age.map(|s| i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX));
            sessions
                .sso
                .get(sid)
                .is_some_and(|sso| max_age_ms.is_none_or(|max| now_ms - sso.created_ms < max))
        };
        if prompt != "login"
            && let Some(sid) = sso_cookie
            && fresh_enough(sid)
            && let Some(user) = live_sso(&sessions, &state, sid, now_ms)
        {
            let code = self.new_code(
                &mut sessions,
                &state,
                client,
                redirect_uri,
                challenge,
                req.nonce.clone(),
                scope,
                sid,
                &user.id,
                now_ms,
            );
            if let Some(sso) = sessions.sso.get_mut(sid) {
                sso.last_ms = now_ms;
            }
            let location = code_redirect(redirect_uri, &code, req.state.as_deref(), &issuer);
            return LoginOutcome::Redirect { location, sso: None };
        }
        if prompt == "none" {
            return refuse("login_required", "the user is not logged in");
        }
        if Sessions::room(sessions.logins.len()).is_err() {
            sessions.purge(now_ms, |_| true);
            if Sessions::room(sessions.logins.len()).is_err() {
                return error(503, "Too many logins in progress. Try again in a minute.");
            }
        }
        let login_id = random_token();
        let csrf = random_token();
        sessions.logins.insert(
            login_id.clone(),
            Login {
                realm: realm.to_owned(),
                client_id: client.client_id.clone(),
                redirect_uri: redirect_uri.to_owned(),
                state: req.state.clone(),
                nonce: req.nonce.clone(),
                code_challenge: challenge.to_owned(),
                scope,
                csrf: csrf.clone(),
                expires_ms: now_ms + secs_ms(state.settings.login_s),
                stage: Stage::Credentials,
            },
        );
        LoginOutcome::Page(LoginPage {
            realm: realm.to_owned(),
            login_id,
            csrf,
            client_id: client.client_id.clone(),
            form: LoginForm::Credentials { username: None },
            error: None,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn new_code(
        &self,
        sessions: &mut Sessions,
        state: &RealmState,
        client: &ClientState,
        redirect_uri: &str,
        challenge: &str,
        nonce: Option<String>,
        scope: String,
        sid: &str,
        user_id: &str,
        now_ms: i64,
    ) -> String {
        let code = random_token();
        sessions.codes.insert(
            token_hash(&code),
            Code {
                realm: state.name.clone(),
                client_id: client.client_id.clone(),
                redirect_uri: redirect_uri.to_owned(),
                code_challenge: challenge.to_owned(),
                nonce,
                scope,
                sid: sid.to_owned(),
                user_id: user_id.to_owned(),
                expires_ms: now_ms + secs_ms(state.settings.code_s),
                used: false,
                issued: Issued::default(),
            },
        );
        code
    }

    /// A form of the login page was posted. `cookie_login` is the login cookie the
    /// browser sent: together with the form's CSRF token it proves the form was posted by
    /// the browser that opened it (login CSRF, RFC 9700 §4.4.1.8).
    pub async fn authenticate(
        &self,
        realm: &str,
        login_id: &str,
        cookie_login: Option<&str>,
        input: FormInput,
    ) -> LoginOutcome {
        const LOST: &str = "Your login page expired or was opened in another browser. Go back to the application and start again.";
        let now_ms = self.now_ms();
        let login = {
            let sessions = self.sessions();
            sessions
                .logins
                .get(login_id)
                .filter(|l| l.realm == realm && l.expires_ms > now_ms)
                .cloned()
        };
        let Some(login) = login else { return error(400, LOST) };
        let bound = cookie_login.is_some_and(|c| ct_eq(c, login_id))
            && input.csrf.as_deref().is_some_and(|c| ct_eq(c, &login.csrf));
        if !bound {
            return error(400, LOST);
        }
        let Ok(state) = self.realm(realm) else { return error(404, "Realm not found.") };
        let page = |form: LoginForm, message: Option<&str>| {
            LoginOutcome::Page(LoginPage {
                realm: realm.to_owned(),
                login_id: login_id.to_owned(),
                csrf: login.csrf.clone(),
                client_id: login.client_id.clone(),
                form,
                error: message.map(str::to_owned),
            })
        };
        match login.stage.clone() {
            Stage::Credentials => {
                let username = input.username.unwrap_or_default();
                let password = input.password.unwrap_or_default();
                match self.check_password(&state, &username, password).await {
                    Some(user) => self.next_stage(&state, &login, login_id, &user, now_ms).await,
                    None => page(
                        LoginForm::Credentials { username: Some(username) },
                        Some(INVALID_CREDENTIALS),
                    ),
                }
            }
            Stage::Otp { user_id } => {
                let Some(user) = state.user_by_id(&user_id).filter(|u| u.enabled).cloned() else {
                    return error(400, LOST);
                };
                let secret =
                    user.totp_secret.as_deref().and_then(base32_decode).unwrap_or_default();
                if self
                    .check_totp(&state, &user, &secret, input.otp.as_deref().unwrap_or(""), now_ms)
                    .await
                {
                    self.after_second_factor(&state, &login, login_id, &user, now_ms).await
                } else {
                    page(LoginForm::Otp, Some("Invalid authenticator code."))
                }
            }
            Stage::ConfigureTotp { user_id, secret } => {
                let Some(user) = state.user_by_id(&user_id).filter(|u| u.enabled).cloned() else {
                    return error(400, LOST);
                };
                if !self
                    .check_totp(&state, &user, &secret, input.otp.as_deref().unwrap_or(""), now_ms)
                    .await
                {
                    let form = totp_form(&state, &user, &secret);
                    return page(form, Some("Invalid authenticator code."));
                }
                let encoded = totp::base32(&secret);
                let saved = self
                    .update(realm, |s| {
                        if let Some(u) = s.users.get_mut(&user.username) {
                            u.totp_secret = Some(encoded);
                            u.required_actions.remove(CONFIGURE_TOTP);
                        }
                    })
                    .await;
                if saved.is_err() {
                    return error(503, "The authenticator could not be saved. Try again.");
                }
                self.after_second_factor(&state, &login, login_id, &user, now_ms).await
            }
            Stage::UpdatePassword { user_id } => {
                let Some(user) = state.user_by_id(&user_id).filter(|u| u.enabled).cloned() else {
                    return error(400, LOST);
                };
                let new = input.password_new.unwrap_or_default();
                if input.password_confirm.as_deref() != Some(new.as_str()) {
                    return page(LoginForm::UpdatePassword, Some("Passwords don't match."));
                }
                match self.set_password(realm, &user.id, &new, false).await {
                    Ok(()) => self.complete(&state, &login, login_id, &user, now_ms),
                    Err(super::UserError::Policy(message)) => {
                        page(LoginForm::UpdatePassword, Some(&message))
                    }
                    Err(_) => error(503, "The password could not be saved. Try again."),
                }
            }
        }
    }

    /// The user behind `login` and `password`, or `None` with the failure recorded. Costs
    /// one argon2 verification whatever the outcome, so timing tells nothing about whether
    /// the user exists, is locked or disabled.
    async fn check_password(
        &self,
        state: &RealmState,
        login: &str,
        password: String,
    ) -> Option<UserState> {
        let now_ms = self.now_ms();
        let user =
            state.user_by_login(login).filter(|u| u.service_account_client.is_none()).cloned();
        let too_long = password.len() > password::MAX_PASSWORD_BYTES;
        let hash = user.as_ref().and_then(|u| u.password.clone());
        let password = if too_long { String::new() } else { password };
        let plain = password.clone();
        let matches = self.hasher.verify(password, hash).await && !too_long;
        let user = user?;
        let key = (state.name.clone(), user.id.clone());
        let brute_force = state.settings.brute_force;
        let locked = brute_force.enabled
            && self.sessions().failures.get(&key).is_some_and(|f| f.locked(now_ms));
        let outcome = if matches && user.enabled && !locked { "success" } else { "failure" };
        metrics::counter!("ferrobank_idp_password_checks_total", "realm" => state.name.clone(), "outcome" => outcome)
            .increment(1);
        if matches && user.enabled && !locked {
            self.sessions().failures.remove(&key);
            if user.password.as_deref().is_some_and(password::needs_rehash) {
                self.rehash(state, &user, plain).await;
            }
            return Some(user);
        }
        if brute_force.enabled && user.enabled && !locked {
            self.record_failure(state, &user, now_ms).await;
        }
        None
    }

    /// Replaces an imported (PBKDF2, weaker argon2) hash by argon2id with today's parameters,
    /// now that the password is known to be right.
    async fn rehash(&self, state: &RealmState, user: &UserState, plain: String) {
        let Ok(new) = self.hasher.hash(plain).await else { return };
        let old = user.password.clone();
        let saved = self
            .update(&state.name, |s| {
                if let Some(u) = s.users.get_mut(&user.username)
                    && u.password == old
                {
                    u.password = Some(new);
                }
            })
            .await;
        match saved {
            Ok(()) => {
                tracing::info!(realm = %state.name, user = %user.id, "password rehashed with argon2id")
            }
            Err(error) => tracing::warn!(%error, "rehashing a password failed; kept the old hash"),
        }
    }

    async fn record_failure(&self, state: &RealmState, user: &UserState, now_ms: i64) {
        let key = (state.name.clone(), user.id.clone());
        let verdict = self
            .sessions()
            .failures
            .entry(key)
            .or_default()
            .fail(&state.settings.brute_force, now_ms);
        match verdict {
            Verdict::Disable => {
                tracing::warn!(realm = %state.name, user = %user.id, "brute force: user disabled (permanent lockout)");
                let disabled = self
                    .update(&state.name, |s| {
                        if let Some(u) = s.users.get_mut(&user.username) {
                            u.enabled = false;
                        }
                    })
                    .await;
                if let Err(error) = disabled {
                    tracing::error!(%error, "could not disable a user after repeated login failures");
                }
            }
            Verdict::TemporarilyLocked => {
                metrics::counter!("ferrobank_idp_lockouts_total", "realm" => state.name.clone())
                    .increment(1);
                tracing::warn!(realm = %state.name, user = %user.id, "brute force: user temporarily locked");
            }
            Verdict::Counted => {}
        }
    }

    /// Checks a TOTP code; a wrong one counts as a login failure, a used one is refused.
    async fn check_totp(
        &self,
        state: &RealmState,
        user: &UserState,
        secret: &[u8],
        code: &str,
        now_ms: i64,
    ) -> bool {
        let key = (state.name.clone(), user.id.clone());
        let unix_s = u64::try_from(now_ms / 1000).unwrap_or(0);
        let locked = self.sessions().failures.get(&key).is_some_and(|f| f.locked(now_ms));
        let step = totp::verify(secret, code, unix_s, state.settings.totp);
        let fresh = {
            let mut sessions = self.sessions();
            match step {
                Some(step)
                    if !locked && sessions.totp_steps.get(&key).is_none_or(|last| step > *last) =>
                {
                    sessions.totp_steps.insert(key.clone(), step);
                    sessions.failures.remove(&key);
                    true
                }
                _ => false,
            }
        };
        if !fresh && !locked && state.settings.brute_force.enabled {
            self.record_failure(state, user, now_ms).await;
        }
        fresh
    }

    /// After the password: a second factor, then required actions, then the code.
    async fn next_stage(
        &self,
        state: &RealmState,
        login: &Login,
        login_id: &str,
        user: &UserState,
        now_ms: i64,
    ) -> LoginOutcome {
        if state.otp_required(user) {
            let (stage, form) = match user.totp_secret.as_deref().and_then(base32_decode) {
                Some(_) => (Stage::Otp { user_id: user.id.clone() }, LoginForm::Otp),
                None => {
                    let secret = totp::new_secret();
                    let form = totp_form(state, user, &secret);
                    (Stage::ConfigureTotp { user_id: user.id.clone(), secret }, form)
                }
            };
            return self.advance(login, login_id, stage, form);
        }
        self.after_second_factor(state, login, login_id, user, now_ms).await
    }

    async fn after_second_factor(
        &self,
        state: &RealmState,
        login: &Login,
        login_id: &str,
        user: &UserState,
        now_ms: i64,
    ) -> LoginOutcome {
        let current = self.realm(&state.name).ok();
        let user = current.as_ref().and_then(|s| s.user_by_id(&user.id)).unwrap_or(user);
        if user.required_actions.contains(UPDATE_PASSWORD) {
            return self.advance(
                login,
                login_id,
                Stage::UpdatePassword { user_id: user.id.clone() },
                LoginForm::UpdatePassword,
            );
        }
        self.complete(state, login, login_id, user, now_ms)
    }

    fn advance(
        &self,
        login: &Login,
        login_id: &str,
        stage: Stage,
        form: LoginForm,
    ) -> LoginOutcome {
        if let Some(l) = self.sessions().logins.get_mut(login_id) {
            l.stage = stage;
        }
        LoginOutcome::Page(LoginPage {
            realm: login.realm.clone(),
            login_id: login_id.to_owned(),
            csrf: login.csrf.clone(),
            client_id: login.client_id.clone(),
            form,
            error: None,
        })
    }

    /// Logged in: an SSO session, a code, back to the client.
    fn complete(
        &self,
        state: &RealmState,
        login: &Login,
        login_id: &str,
        user: &UserState,
        now_ms: i64,
    ) -> LoginOutcome {
        let Some(client) = state.clients.get(&login.client_id).filter(|c| c.enabled) else {
            return error(400, "Client not found.");
        };
        let mut sessions = self.sessions();
        sessions.logins.remove(login_id);
        if Sessions::room(sessions.sso.len()).is_err() {
            return error(503, "Too many sessions. Try again in a minute.");
        }
        let sid = random_token();
        sessions.sso.insert(
            sid.clone(),
            Sso {
                realm: state.name.clone(),
                user_id: user.id.clone(),
                created_ms: now_ms,
                last_ms: now_ms,
            },
        );
        let code = self.new_code(
            &mut sessions,
            state,
            client,
            &login.redirect_uri,
            &login.code_challenge,
            login.nonce.clone(),
            login.scope.clone(),
            &sid,
            &user.id,
            now_ms,
        );
        tracing::info!(realm = %state.name, user = %user.id, client = %client.client_id, "login");
        let location = code_redirect(
            &login.redirect_uri,
            &code,
            login.state.as_deref(),
            &self.issuer(&state.name),
        );
        LoginOutcome::Redirect { location, sso: Some(sid) }
    }

    /// RP-initiated logout. `sso_cookie` is the browser's SSO session, if any.
    pub fn logout(
        &self,
        realm: &str,
        req: &LogoutRequest,
        sso_cookie: Option<&str>,
    ) -> LogoutOutcome {
        let Ok(state) = self.realm(realm) else {
            return LogoutOutcome::Error("Realm not found.".into());
        };
        let mut sid = sso_cookie.map(str::to_owned);
        let mut client_id = req.client_id.clone();
        if let Some(hint) = &req.id_token_hint {
            // An expired ID token is still a fine hint (RP-Initiated Logout §2).
            let Some(claims) = self.verify_own(realm, hint, "ID", false) else {
                return LogoutOutcome::Error("Invalid id_token_hint.".into());
            };
            let aud = claims.get("aud").and_then(|a| a.as_str()).map(str::to_owned);
            if client_id.is_some() && client_id != aud {
                return LogoutOutcome::Error("client_id does not match id_token_hint.".into());
            }
            client_id = aud;
            sid = claims.get("sid").and_then(|s| s.as_str()).map(str::to_owned).or(sid);
        }
        let redirect = match &req.post_logout_redirect_uri {
            None => None,
            Some(uri) => {
                let client = client_id.as_deref().and_then(|id| state.clients.get(id));
                match client {
                    Some(client) if client.post_logout_allowed(uri) => Some(uri.clone()),
                    Some(_) => {
                        return LogoutOutcome::Error(
                            "Invalid parameter: post_logout_redirect_uri".into(),
                        );
                    }
                    None => {
                        return LogoutOutcome::Error(
                            "post_logout_redirect_uri needs id_token_hint or client_id.".into(),
                        );
                    }
                }
            }
        };
        if let Some(sid) = sid {
            let mut sessions = self.sessions();
            if sessions.sso.get(&sid).is_some_and(|s| s.realm == realm) {
                sessions.end_sso(&sid);
                tracing::info!(realm, "logout");
            }
        }
        match redirect {
            Some(uri) => {
                let params: Vec<(&str, &str)> =
                    req.state.as_deref().map(|s| ("state", s)).into_iter().collect();
                LogoutOutcome::Redirect(with_query(&uri, &params))
            }
            None => LogoutOutcome::LoggedOut,
        }
    }
}

fn code_redirect(redirect_uri: &str, code: &str, state: Option<&str>, issuer: &str) -> String {
    let mut params = vec![("code", code)];
    if let Some(state) = state {
        params.push(("state", state));
    }
    // RFC 9207: the issuer in the response defends clients against mix-up attacks.
    params.push(("iss", issuer));
    with_query(redirect_uri, &params)
}

/// The user of a live SSO session of this realm.
fn live_sso<'a>(
    sessions: &Sessions,
    state: &'a RealmState,
    sid: &str,
    now_ms: i64,
) -> Option<&'a UserState> {
    let sso = sessions.sso.get(sid).filter(|s| s.realm == state.name)?;
    let alive = sso.last_ms + secs_ms(state.settings.sso_idle_s) > now_ms
        && sso.created_ms + secs_ms(state.settings.sso_max_s) > now_ms;
    if !alive {
        return None;
    }
    state.user_by_id(&sso.user_id).filter(|u| u.enabled)
}

/// The granted scope: the requested known scopes plus Keycloak's defaults (`profile email`).
pub(crate) fn granted_scope(requested: Option<&str>) -> Result<String, String> {
    let mut scopes: Vec<&str> = Vec::new();
    for scope in requested.unwrap_or("").split(' ').filter(|s| !s.is_empty()) {
        if !SCOPES.contains(&scope) {
            return Err(scope.to_owned());
        }
        if !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
    for default in ["profile", "email"] {
        if !scopes.contains(&default) {
            scopes.push(default);
        }
    }
    Ok(scopes.join(" "))
}

fn totp_form(state: &RealmState, user: &UserState, secret: &[u8]) -> LoginForm {
    let encoded = totp::base32(secret);
    let policy = state.settings.totp;
    let label = format!("{}:{}", state.name, user.username);
    let uri = format!(
        "otpauth://totp/{}?secret={encoded}&issuer={}&algorithm=SHA1&digits={}&period={}",
        urlencode(&label),
        urlencode(&state.name),
        policy.digits,
        policy.period_s
    );
    LoginForm::ConfigureTotp { secret: encoded, uri }
}

fn urlencode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// RFC 4648 base32 (no padding) back to bytes.
pub(crate) fn base32_decode(text: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut bits: u64 = 0;
    let mut count = 0u32;
    let mut out = Vec::new();
    for c in text.trim_end_matches('=').bytes() {
        let value = ALPHABET.iter().position(|a| *a == c.to_ascii_uppercase())?;
        bits = (bits << 5) | u64::try_from(value).ok()?;
        count += 5;
        if count >= 8 {
            count -= 8;
            out.push(u8::try_from((bits >> count) & 0xff).ok()?);
        }
    }
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn base32_round_trips() {
        let secret = totp::new_secret();
        assert_eq!(base32_decode(&totp::base32(&secret)).unwrap(), secret);
        assert!(base32_decode("not base32!").is_none());
    }

    #[test]
    fn scopes_are_known_and_defaulted() {
        assert_eq!(granted_scope(Some("openid")).unwrap(), "openid profile email");
        assert_eq!(granted_scope(None).unwrap(), "profile email");
        assert_eq!(granted_scope(Some("openid admin")).unwrap_err(), "admin");
    }

    #[test]
    fn pkce_values_have_rfc_7636_syntax() {
        assert!(pkce_syntax_ok(&"a".repeat(43)));
        assert!(!pkce_syntax_ok(&"a".repeat(42)));
        assert!(!pkce_syntax_ok(&"a".repeat(129)));
        assert!(!pkce_syntax_ok(&format!("{}+", "a".repeat(43))));
    }
}
