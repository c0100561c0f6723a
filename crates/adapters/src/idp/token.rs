//! The back channel: the token endpoint (authorization code with PKCE, refresh with
//! rotation, client credentials), userinfo, introspection (RFC 7662), revocation (RFC 7009).

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq as _;
use uuid::Uuid;

use super::login::{granted_scope, pkce_syntax_ok};
use super::realm::{ClientState, RealmState, UserState};
use super::sessions::{Family, Issued, Sessions, random_token, token_hash};
use super::{IdentityProvider, secs_ms};
use crate::oidc::SigningAlgorithm;
use crate::realm::AttributeClaim;

/// An OAuth error response (RFC 6749 §5.2): the protocol's own format, which every OAuth
/// client library parses, rather than problem+json.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    /// HTTP status: 400, or 401 for client authentication failures.
    pub status: u16,
    /// `error` code.
    pub error: &'static str,
    /// `error_description`.
    pub description: String,
}

impl OAuthError {
    fn new(status: u16, error: &'static str, description: impl Into<String>) -> Self {
        Self { status, error, description: description.into() }
    }
    fn grant(description: impl Into<String>) -> Self {
        Self::new(400, "invalid_grant", description)
    }
    fn request(description: impl Into<String>) -> Self {
        Self::new(400, "invalid_request", description)
    }
    fn client() -> Self {
        Self::new(401, "invalid_client", "client authentication failed")
    }
    /// The body.
    pub fn body(&self) -> Value {
        json!({ "error": self.error, "error_description": self.description })
    }
}

/// How the client authenticated (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Default)]
pub struct ClientAuth {
    /// From `Authorization: Basic` (`client_secret_basic`), already URL-decoded.
    pub basic: Option<(String, String)>,
    /// `client_id` of the body.
    pub client_id: Option<String>,
    /// `client_secret` of the body (`client_secret_post`).
    pub client_secret: Option<String>,
}

/// The token endpoint's form.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TokenRequest {
    /// `authorization_code`, `refresh_token` or `client_credentials`.
    pub grant_type: Option<String>,
    /// The authorization code.
    pub code: Option<String>,
    /// Must equal the authorization request's.
    pub redirect_uri: Option<String>,
    /// PKCE verifier.
    pub code_verifier: Option<String>,
    /// The refresh token.
    pub refresh_token: Option<String>,
    /// Requested scope.
    pub scope: Option<String>,
    /// `client_secret_post`.
    pub client_id: Option<String>,
    /// `client_secret_post`.
    pub client_secret: Option<String>,
}

/// Who a token is for, and what it says.
struct Grant<'a> {
    state: &'a RealmState,
    client: &'a ClientState,
    user: &'a UserState,
    scope: String,
    sid: Option<String>,
    nonce: Option<String>,
    auth_time_s: Option<i64>,
}

impl IdentityProvider {
    /// Authenticates the client of a back-channel request.
    fn client<'a>(
        &self,
        state: &'a RealmState,
        auth: &ClientAuth,
    ) -> Result<&'a ClientState, OAuthError> {
        // One method only (RFC 6749 §2.3: "MUST NOT use more than one").
        if auth.basic.is_some() && auth.client_secret.is_some() {
            return Err(OAuthError::request("use one client authentication method"));
        }
        let (id, secret) = match (&auth.basic, &auth.client_id) {
            (Some((id, secret)), body_id) => {
                if body_id.as_ref().is_some_and(|b| b != id) {
                    return Err(OAuthError::request("client_id does not match the credentials"));
                }
                (id.as_str(), Some(secret.as_str()))
            }
            (None, Some(id)) => (id.as_str(), auth.client_secret.as_deref()),
            (None, None) => return Err(OAuthError::client()),
        };
        let client = state.clients.get(id).filter(|c| c.enabled).ok_or_else(OAuthError::client)?;
        if client.confidential && !secret.is_some_and(|s| client.secret_matches(s)) {
            return Err(OAuthError::client());
        }
        if !client.confidential && secret.is_some() {
            return Err(OAuthError::client());
        }
        Ok(client)
    }

    /// The token endpoint. Returns the JSON body of a 200.
    pub fn token(
        &self,
        realm: &str,
        req: &TokenRequest,
        auth: &ClientAuth,
    ) -> Result<Value, OAuthError> {
        let state = self
            .realm(realm)
            .map_err(|_| OAuthError::new(404, "invalid_request", "realm not found"))?;
        if !state.enabled {
            return Err(OAuthError::new(404, "invalid_request", "realm not found"));
        }
        let auth = ClientAuth {
            client_id: auth.client_id.clone().or(req.client_id.clone()),
            client_secret: auth.client_secret.clone().or(req.client_secret.clone()),
            basic: auth.basic.clone(),
        };
        let client = match self.client(&state, &auth) {
            Ok(client) => client,
            Err(error) => {
                let realm = state.name.clone();
                metrics::counter!("ferrobank_idp_token_requests_total", "realm" => realm, "grant_type" => "any", "result" => error.error)
                    .increment(1);
                return Err(error);
            }
        };
        let outcome = match req.grant_type.as_deref() {
            Some("authorization_code") => self.code_grant(&state, client, req),
            Some("refresh_token") => self.refresh_grant(&state, client, req),
            Some("client_credentials") => self.client_credentials(&state, client, req),
            Some(_) => Err(OAuthError::new(
                400,
                "unsupported_grant_type",
                "supported: authorization_code, refresh_token, client_credentials",
            )),
            None => Err(OAuthError::request("grant_type is required")),
        };
        // Grant type and error code only: both come from fixed sets, never from the input.
        let grant: &'static str = match req.grant_type.as_deref() {
            Some("authorization_code") => "authorization_code",
            Some("refresh_token") => "refresh_token",
            Some("client_credentials") => "client_credentials",
            _ => "other",
        };
        let result = outcome.as_ref().map_or_else(|e| e.error, |_| "issued");
        metrics::counter!("ferrobank_idp_token_requests_total", "realm" => state.name.clone(), "grant_type" => grant, "result" => result)
            .increment(1);
        outcome
    }

    fn code_grant(
        &self,
        state: &RealmState,
        client: &ClientState,
        req: &TokenRequest,
    ) -> Result<Value, OAuthError> {
        let code = req.code.as_deref().ok_or_else(|| OAuthError::request("code is required"))?;
        let now_ms = self.now_ms();
        let mut sessions = self.sessions();
        let hash = token_hash(code);
        let Some(grant) = sessions.codes.get_mut(&hash) else {
            return Err(OAuthError::grant("code not valid"));
        };
        if grant.used {
            // RFC 6749 §4.1.2: a code used twice revokes what it issued (someone stole it).
            let issued = std::mem::take(&mut grant.issued);
            if let Some(family) = issued.family {
                sessions.revoke_family(&family);
            }
            sessions.revoked_access.extend(issued.access);
            tracing::warn!(realm = %state.name, client = %client.client_id, "authorization code replayed: its tokens are revoked");
            return Err(OAuthError::grant("code already used"));
        }
        if grant.expires_ms <= now_ms || grant.realm != state.name {
            return Err(OAuthError::grant("code expired"));
        }
        if grant.client_id != client.client_id {
            return Err(OAuthError::grant("code was issued to another client"));
        }
        if req.redirect_uri.as_deref() != Some(grant.redirect_uri.as_str()) {
            return Err(OAuthError::grant("redirect_uri does not match the authorization request"));
        }
        let verifier = req
            .code_verifier
            .as_deref()
            .filter(|v| pkce_syntax_ok(v))
            .ok_or_else(|| OAuthError::grant("PKCE code_verifier missing or malformed"))?;
        let computed = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        if !bool::from(computed.as_bytes().ct_eq(grant.code_challenge.as_bytes())) {
            return Err(OAuthError::grant("PKCE verification failed"));
        }
        grant.used = true;
        let grant = grant.clone();
        let sso = sessions.sso.get(&grant.sid).cloned();
        let user = sso
            .as_ref()
            .filter(|s| {
                s.last_ms + secs_ms(state.settings.sso_idle_s) > now_ms
                    && s.created_ms + secs_ms(state.settings.sso_max_s) > now_ms
            })
            .and_then(|_| state.user_by_id(&grant.user_id))
            .filter(|u| u.enabled)
            .ok_or_else(|| OAuthError::grant("session not active"))?;
        let token = Grant {
            state,
            client,
            user,
            scope: grant.scope.clone(),
            sid: Some(grant.sid.clone()),
            nonce: grant.nonce.clone(),
            auth_time_s: sso.map(|s| s.created_ms / 1000),
        };
        let (body, issued, jti) = self.register(&mut sessions, &token, None, now_ms)?;
        if let Some(code) = sessions.codes.get_mut(&hash) {
            code.issued = issued;
        }
        drop(sessions);
        self.sign_into(&token, &jti, body, now_ms)
    }

    fn refresh_grant(
        &self,
        state: &RealmState,
        client: &ClientState,
        req: &TokenRequest,
    ) -> Result<Value, OAuthError> {
        let presented = req
            .refresh_token
            .as_deref()
            .ok_or_else(|| OAuthError::request("refresh_token is required"))?;
        let now_ms = self.now_ms();
        let mut sessions = self.sessions();
        let hash = token_hash(presented);
        let family_id = sessions
            .refresh
            .get(&hash)
            .cloned()
            .ok_or_else(|| OAuthError::grant("refresh token not valid"))?;
        let family = sessions
            .families
            .get(&family_id)
            .cloned()
            .ok_or_else(|| OAuthError::grant("refresh token not valid"))?;
        if family.realm != state.name || family.client_id != client.client_id {
            return Err(OAuthError::grant("refresh token was issued to another client"));
        }
        if family.revoked {
            return Err(OAuthError::grant("refresh token revoked"));
        }
        if family.current != hash {
            // RFC 9700 §4.14.2: a rotated-out refresh token came back; one of the two
            // holders is an attacker, so the whole family goes.
            sessions.revoke_family(&family_id);
            tracing::warn!(realm = %state.name, client = %client.client_id, "refresh token reused: family revoked");
            return Err(OAuthError::grant("refresh token already used"));
        }
        let sso = sessions.sso.get_mut(&family.sid).filter(|s| {
            s.last_ms + secs_ms(state.settings.sso_idle_s) > now_ms
                && s.created_ms + secs_ms(state.settings.sso_max_s) > now_ms
        });
        let Some(sso) = sso else {
            sessions.revoke_family(&family_id);
            return Err(OAuthError::grant("session not active"));
        };
        sso.last_ms = now_ms;
        let auth_time_s = sso.created_ms / 1000;
        let user = state
            .user_by_id(&family.user_id)
            .filter(|u| u.enabled)
            .ok_or_else(|| OAuthError::grant("user disabled"))?;
        // A refresh may narrow the scope, never widen it (RFC 6749 §6).
        let scope = match &req.scope {
            None => family.scope.clone(),
            Some(asked) => {
                let granted: Vec<&str> = family.scope.split(' ').collect();
                if asked.split(' ').filter(|s| !s.is_empty()).any(|s| !granted.contains(&s)) {
                    return Err(OAuthError::new(
                        400,
                        "invalid_scope",
                        "scope exceeds the original grant",
                    ));
                }
                asked.clone()
            }
        };
        let token = Grant {
            state,
            client,
            user,
            scope,
            sid: Some(family.sid.clone()),
            nonce: None,
            auth_time_s: Some(auth_time_s),
        };
        let (body, _, jti) = self.register(&mut sessions, &token, Some(family_id), now_ms)?;
        drop(sessions);
        self.sign_into(&token, &jti, body, now_ms)
    }

    fn client_credentials(
        &self,
        state: &RealmState,
        client: &ClientState,
        req: &TokenRequest,
    ) -> Result<Value, OAuthError> {
        if !client.confidential || !client.service_accounts {
            return Err(OAuthError::new(
                400,
                "unauthorized_client",
                "the client may not use client credentials",
            ));
        }
        let user = state
            .users
            .values()
            .find(|u| u.service_account_client.as_deref() == Some(client.client_id.as_str()))
            .ok_or_else(|| {
                OAuthError::new(400, "unauthorized_client", "the client has no service account")
            })?;
        let scope = granted_scope(req.scope.as_deref())
            .map_err(|s| OAuthError::new(400, "invalid_scope", format!("unknown scope {s:?}")))?;
        let token = Grant { state, client, user, scope, sid: None, nonce: None, auth_time_s: None };
        let now_ms = self.now_ms();
        // No session, no refresh token (Keycloak's `client_credentials.use_refresh_token`
        // default, and RFC 6749 §4.4.3).
        let access = self.access_token(&token, &Uuid::new_v4().to_string(), now_ms)?;
        Ok(json!({
            "access_token": access.0,
            "expires_in": token.state.settings.access_token_s,
            "refresh_expires_in": 0,
            "token_type": "Bearer",
            "not-before-policy": 0,
            "scope": token.scope,
        }))
    }

    /// Access, ID and refresh tokens for a user grant. `family` is the family to rotate.
    /// Registers what a user grant issues, under the session lock: the access token's id
    /// (so that a replayed code or reused refresh token can revoke it) and the rotated
    /// refresh token. Returns the response body without the signed tokens, what was
    /// issued, and the access token's id. Signing happens after the lock is released
    /// ([`IdentityProvider::sign_into`]): RSA signatures must not serialize every login.
    fn register(
        &self,
        sessions: &mut Sessions,
        grant: &Grant<'_>,
        family: Option<String>,
        now_ms: i64,
    ) -> Result<(Map<String, Value>, Issued, String), OAuthError> {
        let jti = Uuid::new_v4().to_string();
        let exp_ms = now_ms + secs_ms(grant.state.settings.access_token_s);
        let mut body = Map::new();
        body.insert("expires_in".into(), json!(grant.state.settings.access_token_s));
        body.insert("token_type".into(), json!("Bearer"));
        body.insert("not-before-policy".into(), json!(0));
        body.insert("scope".into(), json!(grant.scope));
        let mut issued = Issued { family: None, access: vec![(jti.clone(), exp_ms)] };
        if let Some(sid) = &grant.sid {
            body.insert("session_state".into(), json!(sid));
        }
        let sid = grant.sid.clone().unwrap_or_default();
        if grant.client.use_refresh_tokens && !sid.is_empty() {
            if Sessions::room(sessions.refresh.len()).is_err() {
                return Err(OAuthError::new(503, "temporarily_unavailable", "too many sessions"));
            }
            let refresh = random_token();
            let hash = token_hash(&refresh);
            let family_id = family.clone().unwrap_or_else(random_token);
            let entry = sessions.families.entry(family_id.clone()).or_insert_with(|| Family {
                realm: grant.state.name.clone(),
                client_id: grant.client.client_id.clone(),
                user_id: grant.user.id.clone(),
                sid: sid.clone(),
                scope: grant.scope.clone(),
                current: String::new(),
                revoked: false,
                access: Vec::new(),
            });
            entry.current = hash.clone();
            entry.access.extend(issued.access.iter().cloned());
            sessions.refresh.insert(hash, family_id.clone());
            let remaining_s = sessions.sso.get(&sid).map_or(0, |s| {
                let idle = s.last_ms + secs_ms(grant.state.settings.sso_idle_s);
                let max = s.created_ms + secs_ms(grant.state.settings.sso_max_s);
                (idle.min(max) - now_ms) / 1000
            });
            body.insert("refresh_token".into(), json!(refresh));
            body.insert("refresh_expires_in".into(), json!(remaining_s.max(0)));
            issued.family = Some(family_id);
        } else {
            body.insert("refresh_expires_in".into(), json!(0));
        }
        Ok((body, issued, jti))
    }

    /// Signs the access token (and the ID token when `openid` was granted) into `body`.
    fn sign_into(
        &self,
        grant: &Grant<'_>,
        jti: &str,
        mut body: Map<String, Value>,
        now_ms: i64,
    ) -> Result<Value, OAuthError> {
        let (access, _) = self.access_token(grant, jti, now_ms)?;
        if grant.scope.split(' ').any(|s| s == "openid") {
            body.insert("id_token".into(), json!(self.id_token(grant, &access, now_ms)?));
        }
        body.insert("access_token".into(), json!(access));
        Ok(Value::Object(body))
    }

    /// The realm roles a token for this grant carries: all of the user's, or only those the
    /// client's scope allows when `fullScopeAllowed` is off.
    fn token_roles(grant: &Grant<'_>) -> (Vec<String>, BTreeMap<String, Vec<String>>) {
        let realm_roles = grant.state.effective_realm_roles(grant.user);
        let realm_roles = realm_roles
            .into_iter()
            .filter(|r| grant.client.full_scope_allowed || grant.client.scope_roles.contains(r))
            .collect();
        let client_roles = if grant.client.full_scope_allowed {
            grant
                .state
                .effective_client_roles(grant.user)
                .into_iter()
                .map(|(c, r)| (c, r.into_iter().collect()))
                .collect()
        } else {
            BTreeMap::new()
        };
        (realm_roles, client_roles)
    }

    /// Signs the access token with id `jti`; returns it and its expiry (ms).
    fn access_token(
        &self,
        grant: &Grant<'_>,
        jti: &str,
        now_ms: i64,
    ) -> Result<(String, i64), OAuthError> {
        let now_s = now_ms / 1000;
        let exp_s = now_s + i64::try_from(grant.state.settings.access_token_s).unwrap_or(300);
        let (realm_roles, client_roles) = Self::token_roles(grant);
        let mut aud: Vec<String> = grant.client.audiences.clone();
        for client in client_roles.keys() {
            if !aud.contains(client) {
                aud.push(client.clone());
            }
        }
        let mut claims = Map::new();
        claims.insert("exp".into(), json!(exp_s));
        claims.insert("iat".into(), json!(now_s));
        if let Some(auth_time) = grant.auth_time_s {
            claims.insert("auth_time".into(), json!(auth_time));
        }
        claims.insert("jti".into(), json!(jti));
        claims.insert("iss".into(), json!(self.issuer(&grant.state.name)));
        match aud.len() {
            0 => {}
            1 => {
                claims.insert("aud".into(), json!(aud[0]));
            }
            _ => {
                claims.insert("aud".into(), json!(aud));
            }
        }
        claims.insert("sub".into(), json!(grant.user.id));
        claims.insert("typ".into(), json!("Bearer"));
        claims.insert("azp".into(), json!(grant.client.client_id));
        if let Some(sid) = &grant.sid {
            claims.insert("sid".into(), json!(sid));
        }
        claims.insert("acr".into(), json!("1"));
        if !grant.client.web_origins.is_empty() {
            claims.insert("allowed-origins".into(), json!(grant.client.web_origins));
        }
        claims.insert("realm_access".into(), json!({ "roles": realm_roles }));
        if !client_roles.is_empty() {
            let access: Map<String, Value> =
                client_roles.into_iter().map(|(c, r)| (c, json!({ "roles": r }))).collect();
            claims.insert("resource_access".into(), Value::Object(access));
        }
        claims.insert("scope".into(), json!(grant.scope));
        if grant.user.service_account_client.is_some() {
            claims.insert("client_id".into(), json!(grant.client.client_id));
        }
        profile_claims(grant.user, &grant.scope, &mut claims);
        attribute_claims(grant.client, grant.user, |c| c.access_token, &mut claims);
        let key = self.signing_key(&grant.state.name)?;
        let token =
            key.sign("JWT", &claims).map_err(|e| OAuthError::new(500, "server_error", e))?;
        Ok((token, exp_s * 1000))
    }

    fn id_token(
        &self,
        grant: &Grant<'_>,
        access_token: &str,
        now_ms: i64,
    ) -> Result<String, OAuthError> {
        let now_s = now_ms / 1000;
        let key = self.signing_key(&grant.state.name)?;
        let mut claims = Map::new();
        claims.insert(
            "exp".into(),
            json!(now_s + i64::try_from(grant.state.settings.access_token_s).unwrap_or(300)),
        );
        claims.insert("iat".into(), json!(now_s));
        if let Some(auth_time) = grant.auth_time_s {
            claims.insert("auth_time".into(), json!(auth_time));
        }
        claims.insert("jti".into(), json!(Uuid::new_v4().to_string()));
        claims.insert("iss".into(), json!(self.issuer(&grant.state.name)));
        claims.insert("aud".into(), json!(grant.client.client_id));
        claims.insert("sub".into(), json!(grant.user.id));
        claims.insert("typ".into(), json!("ID"));
        claims.insert("azp".into(), json!(grant.client.client_id));
        if let Some(nonce) = &grant.nonce {
            claims.insert("nonce".into(), json!(nonce));
        }
        if let Some(sid) = &grant.sid {
            claims.insert("sid".into(), json!(sid));
        }
        // OIDC Core §3.1.3.6: left half of the hash of the access token, with the hash of
        // the signing algorithm (SHA-512 for Ed25519, as Keycloak does).
        let digest = match key.algorithm {
            SigningAlgorithm::EdDSA => Sha512::digest(access_token.as_bytes())[..32].to_vec(),
            _ => Sha256::digest(access_token.as_bytes())[..16].to_vec(),
        };
        claims.insert("at_hash".into(), json!(URL_SAFE_NO_PAD.encode(digest)));
        claims.insert("acr".into(), json!("1"));
        profile_claims(grant.user, &grant.scope, &mut claims);
        attribute_claims(grant.client, grant.user, |c| c.id_token, &mut claims);
        key.sign("JWT", &claims).map_err(|e| OAuthError::new(500, "server_error", e))
    }

    fn signing_key(&self, realm: &str) -> Result<super::SigningKey, OAuthError> {
        self.live(realm)
            .ok()
            .and_then(|live| live.keys.active().cloned())
            .ok_or_else(|| OAuthError::new(503, "temporarily_unavailable", "no signing key"))
    }

    /// Claims of an access token that is still good: signed here, unexpired, not revoked,
    /// its session alive and its user enabled.
    pub fn verify_access(&self, realm: &str, token: &str) -> Option<Value> {
        self.active_access(realm, token)
    }

    fn active_access(&self, realm: &str, token: &str) -> Option<Value> {
        let claims = self.verify_own(realm, token, "Bearer", true)?;
        let jti = claims.get("jti").and_then(Value::as_str)?;
        let sessions = self.sessions();
        if sessions.revoked_access.contains_key(jti) {
            return None;
        }
        if let Some(sid) = claims.get("sid").and_then(Value::as_str)
            && !sessions.sso.contains_key(sid)
        {
            return None;
        }
        drop(sessions);
        let state = self.realm(realm).ok()?;
        let sub = claims.get("sub").and_then(Value::as_str)?;
        state.user_by_id(sub).filter(|u| u.enabled)?;
        Some(claims)
    }

    /// The userinfo endpoint (OIDC Core §5.3): the user's claims for a valid access token.
    pub fn userinfo(&self, realm: &str, access_token: &str) -> Option<Value> {
        let claims = self.active_access(realm, access_token)?;
        let state = self.realm(realm).ok()?;
        let user = state.user_by_id(claims.get("sub")?.as_str()?)?;
        let mut out = Map::new();
        out.insert("sub".into(), json!(user.id));
        let scope = claims.get("scope").and_then(Value::as_str).unwrap_or("");
        profile_claims(user, scope, &mut out);
        let client = claims.get("azp").and_then(Value::as_str).and_then(|c| state.clients.get(c));
        if let Some(client) = client {
            attribute_claims(client, user, |c| c.userinfo, &mut out);
        }
        Some(Value::Object(out))
    }

    /// Token introspection (RFC 7662) for an authenticated client.
    pub fn introspect(
        &self,
        realm: &str,
        auth: &ClientAuth,
        token: &str,
    ) -> Result<Value, OAuthError> {
        let state = self
            .realm(realm)
            .map_err(|_| OAuthError::new(404, "invalid_request", "realm not found"))?;
        let client = self.client(&state, auth)?;
        if !client.confidential {
            return Err(OAuthError::client());
        }
        if let Some(mut claims) = self.active_access(realm, token) {
            if let Some(map) = claims.as_object_mut() {
                map.insert("active".into(), json!(true));
                map.insert("client_id".into(), map.get("azp").cloned().unwrap_or(Value::Null));
                map.insert("token_type".into(), json!("Bearer"));
                map.insert(
                    "username".into(),
                    map.get("preferred_username").cloned().unwrap_or(Value::Null),
                );
            }
            return Ok(claims);
        }
        let sessions = self.sessions();
        let hash = token_hash(token);
        let family = sessions.refresh.get(&hash).and_then(|f| sessions.families.get(f));
        if let Some(family) = family.filter(|f| {
            !f.revoked && f.current == hash && f.realm == realm && sessions.sso.contains_key(&f.sid)
        }) {
            return Ok(json!({
                "active": true,
                "token_type": "Refresh",
                "client_id": family.client_id,
                "sub": family.user_id,
                "sid": family.sid,
                "scope": family.scope,
                "iss": self.issuer(realm),
            }));
        }
        Ok(json!({ "active": false }))
    }

    /// Token revocation (RFC 7009). Unknown tokens are not an error (§2.2).
    pub fn revoke(&self, realm: &str, auth: &ClientAuth, token: &str) -> Result<(), OAuthError> {
        let state = self
            .realm(realm)
            .map_err(|_| OAuthError::new(404, "invalid_request", "realm not found"))?;
        let client = self.client(&state, auth)?;
        let mut sessions = self.sessions();
        let hash = token_hash(token);
        if let Some(family_id) = sessions.refresh.get(&hash).cloned() {
            if sessions.families.get(&family_id).is_some_and(|f| f.client_id != client.client_id) {
                return Err(OAuthError::grant("token was issued to another client"));
            }
            sessions.revoke_family(&family_id);
            return Ok(());
        }
        drop(sessions);
        if let Some(claims) = self.verify_own(realm, token, "Bearer", true) {
            if claims.get("azp").and_then(Value::as_str) != Some(client.client_id.as_str()) {
                return Err(OAuthError::grant("token was issued to another client"));
            }
            let jti = claims.get("jti").and_then(Value::as_str).unwrap_or_default().to_owned();
            let exp_ms = claims.get("exp").and_then(Value::as_i64).unwrap_or(0) * 1000;
            self.sessions().revoked_access.insert(jti, exp_ms);
        }
        Ok(())
    }
}

/// The client's user-attribute mappers that `wanted` selects: each adds the first value of
/// its attribute as a string, as Keycloak's single-valued mapper does; a user without the
/// attribute gets no claim. Never replaces a claim already written (the realm's validation
/// already refuses mappers naming the provider's own claims).
fn attribute_claims(
    client: &ClientState,
    user: &UserState,
    wanted: impl Fn(&AttributeClaim) -> bool,
    claims: &mut Map<String, Value>,
) {
    for mapper in client.attribute_claims.iter().filter(|c| wanted(c)) {
        if let Some(value) = user.attributes.get(&mapper.attribute).and_then(|v| v.first())
            && !claims.contains_key(&mapper.claim)
        {
            claims.insert(mapper.claim.clone(), json!(value));
        }
    }
}

/// `preferred_username`, and with the `email`/`profile` scopes the email and names.
fn profile_claims(user: &UserState, scope: &str, claims: &mut Map<String, Value>) {
    let scopes: Vec<&str> = scope.split(' ').collect();
    claims.insert("preferred_username".into(), json!(user.username));
    if scopes.contains(&"email")
        && let Some(email) = &user.email
    {
        claims.insert("email".into(), json!(email));
        claims.insert("email_verified".into(), json!(user.email_verified));
    }
    if scopes.contains(&"profile") {
        let names: Vec<&str> =
            [user.first_name.as_deref(), user.last_name.as_deref()].into_iter().flatten().collect();
        if !names.is_empty() {
            claims.insert("name".into(), json!(names.join(" ")));
        }
        if let Some(first) = &user.first_name {
            claims.insert("given_name".into(), json!(first));
        }
        if let Some(last) = &user.last_name {
            claims.insert("family_name".into(), json!(last));
        }
    }
}
