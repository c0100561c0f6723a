//! The built-in OpenID Connect provider end to end, driven like a browser and an OAuth
//! client would: the code flow with PKCE through the login page, every refusal OAuth 2.1
//! and RFC 9700 ask for, brute-force lockout, TOTP, refresh rotation, logout, revocation,
//! introspection, the admin API, key rotation, and the API trusting the tokens.
#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use std::collections::HashMap;
use std::time::Instant;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{TEST_CLIENT_SECRET, TEST_PASSWORD, TestApp, spawn_app_with_idp};
use ferrobank::demo::{ALICE_USER, BOB_USER};
use ferrobank_adapters::Backend;
use ferrobank_adapters::idp::{NewUser, TotpPolicy, code_at};
use reqwest::StatusCode;
use reqwest::redirect::Policy;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const REALM: &str = "banking";
const WEB_APP: &str = "banking-web-app";
const GATEWAY: &str = "banking-api-gateway";
const REDIRECT: &str = "http://localhost:3000/callback";
const BANK_ACCOUNT: &str = "00000000-0000-7000-8000-000000000001";
const ALICE_ACCOUNT: &str = "00000000-0000-7000-8000-000000000002";
const BOB_ACCOUNT: &str = "00000000-0000-7000-8000-000000000003";

/// A browser: keeps cookies per name, follows nothing by itself.
struct Browser {
    http: reqwest::Client,
    base: String,
    cookies: HashMap<String, String>,
}

/// A response as the browser saw it.
struct Page {
    status: StatusCode,
    location: Option<String>,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Page {
    /// A value between `start` and the next `end` in the body.
    fn between(&self, start: &str, end: &str) -> Option<String> {
        let from = self.body.find(start)? + start.len();
        let to = self.body[from..].find(end)? + from;
        Some(self.body[from..to].replace("&amp;", "&"))
    }

    fn form_action(&self) -> String {
        self.between("<form method=\"post\" action=\"", "\"").expect("a form")
    }

    fn csrf(&self) -> String {
        self.between("name=\"csrf\" value=\"", "\"").expect("a csrf field")
    }

    fn error(&self) -> Option<String> {
        self.between("role=\"alert\">", "<")
    }

    /// A query parameter of the redirect.
    fn param(&self, name: &str) -> Option<String> {
        let url = url::Url::parse(self.location.as_deref()?).ok()?;
        url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
    }
}

impl Browser {
    fn new(app: &TestApp) -> Self {
        let http = reqwest::Client::builder().redirect(Policy::none()).build().unwrap();
        Self { http, base: app.address.clone(), cookies: HashMap::new() }
    }

    async fn send(&mut self, request: reqwest::RequestBuilder) -> Page {
        let cookie: Vec<String> = self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let response = request.header("cookie", cookie.join("; ")).send().await.unwrap();
        for value in response.headers().get_all("set-cookie") {
            let text = value.to_str().unwrap();
            let (pair, attributes) = text.split_once(';').unwrap_or((text, ""));
            let (name, value) = pair.split_once('=').unwrap();
            if attributes.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
        let status = response.status();
        let headers = response.headers().clone();
        let location = headers.get("location").map(|l| l.to_str().unwrap().to_owned());
        Page { status, location, headers, body: response.text().await.unwrap() }
    }

    async fn get(&mut self, path_or_url: &str) -> Page {
        let url = if path_or_url.starts_with("http") {
            path_or_url.to_owned()
        } else {
            format!("{}{path_or_url}", self.base)
        };
        let request = self.http.get(url);
        self.send(request).await
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let request = self.http.post(format!("{}{path}", self.base)).form(form);
        self.send(request).await
    }
}

/// A PKCE pair: (verifier, S256 challenge).
fn pkce() -> (String, String) {
    let verifier = URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes())
        + &URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes());
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

fn oidc(endpoint: &str) -> String {
    format!("/realms/{REALM}/protocol/openid-connect/{endpoint}")
}

fn authorize_path(params: &[(&str, &str)]) -> String {
    let query: String =
        url::form_urlencoded::Serializer::new(String::new()).extend_pairs(params).finish();
    format!("{}?{query}", oidc("auth"))
}

/// The standard authorization request of the web app.
fn auth_request(challenge: &str) -> String {
    authorize_path(&[
        ("response_type", "code"),
        ("client_id", WEB_APP),
        ("redirect_uri", REDIRECT),
        ("scope", "openid"),
        ("state", "st4te"),
        ("nonce", "n0nce"),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
    ])
}

/// Secrets of TOTP enrolments made during a test, by username.
type Authenticators = HashMap<String, Vec<u8>>;

fn now_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// Logs in through every page the provider shows (password, TOTP enrolment or code,
/// new password) and returns the final redirect.
async fn log_in(
    browser: &mut Browser,
    user: &str,
    password: &str,
    totp: &mut Authenticators,
    challenge: &str,
) -> Page {
    let mut page = browser.get(&auth_request(challenge)).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let mut fields: Vec<(&str, String)> =
        vec![("username", user.into()), ("password", password.into())];
    let mut step = 0;
    loop {
        step += 1;
        assert!(step < 6, "too many login steps");
        let action = page.form_action();
        let csrf = page.csrf();
        let mut form: Vec<(&str, &str)> = vec![("csrf", &csrf)];
        form.extend(fields.iter().map(|(k, v)| (*k, v.as_str())));
        page = browser.post(&action, &form).await;
        if page.status != StatusCode::OK {
            return page;
        }
        if let Some(error) = page.error() {
            return page_with_error(page, error);
        }
        fields = if let Some(secret) = page.between("<code id=\"totp-secret\">", "</code>") {
            let secret = decode_base32(&secret);
            totp.insert(user.to_owned(), secret.clone());
            vec![("otp", code_at(&secret, now_s(), TotpPolicy::default()))]
        } else if page.body.contains("name=\"otp\"") {
            // The step after the last one used: a code is good once.
            let secret = totp.get(user).expect("an enrolled authenticator");
            vec![("otp", code_at(secret, now_s() + 30, TotpPolicy::default()))]
        } else if page.body.contains("name=\"password_new\"") {
            let new = format!("{password}-New");
            vec![("password_new", new.clone()), ("password_confirm", new)]
        } else {
            panic!("unexpected page: {}", page.body);
        };
    }
}

fn page_with_error(page: Page, _error: String) -> Page {
    page
}

fn decode_base32(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let (mut bits, mut count, mut out) = (0u64, 0, Vec::new());
    for c in text.bytes() {
        bits = (bits << 5) | ALPHABET.iter().position(|a| *a == c).unwrap() as u64;
        count += 5;
        if count >= 8 {
            count -= 8;
            out.push(((bits >> count) & 0xff) as u8);
        }
    }
    out
}

/// A client talking to the token endpoints.
async fn token_request(
    app: &TestApp,
    client: (&str, &str),
    form: &[(&str, &str)],
) -> (StatusCode, Value) {
    let response = common::client()
        .post(format!("{}{}", app.address, oidc("token")))
        .basic_auth(client.0, Some(client.1))
        .form(form)
        .send()
        .await
        .unwrap();
    let status = response.status();
    assert_eq!(
        response.headers().get("cache-control").map(|v| v.to_str().unwrap()),
        Some("no-store")
    );
    (status, response.json().await.unwrap())
}

async fn redeem(app: &TestApp, code: &str, verifier: &str) -> (StatusCode, Value) {
    token_request(
        app,
        (WEB_APP, TEST_CLIENT_SECRET),
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier),
        ],
    )
    .await
}

/// Tokens of `user` through the whole browser flow.
async fn tokens_for(app: &TestApp, user: &str, password: &str, totp: &mut Authenticators) -> Value {
    let mut browser = Browser::new(app);
    let (verifier, challenge) = pkce();
    let page = log_in(&mut browser, user, password, totp, &challenge).await;
    assert_eq!(
        page.status,
        StatusCode::SEE_OTHER,
        "login of {user} failed: {:?} {}",
        page.error(),
        page.body
    );
    let (status, tokens) = redeem(app, &page.param("code").unwrap(), &verifier).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    tokens
}

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

async fn api_get(app: &TestApp, path: &str, token: Option<&str>) -> StatusCode {
    let mut request = common::client().get(format!("{}{path}", app.address));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap().status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_flow_with_pkce_issues_keycloak_shaped_tokens_the_api_trusts() {
    let app = spawn_app_with_idp(Backend::Sqlite).await;
    let mut browser = Browser::new(&app);
    let (verifier, challenge) = pkce();
    let page = browser.get(&auth_request(&challenge)).await;
    // The login page: plain HTML with labelled fields, locked down.
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body.contains("<label for=\"username\">")
            && page.body.contains("<label for=\"password\">")
    );
    assert!(!page.body.contains("<script"), "no JavaScript needed");
    let csp = page.headers.get("content-security-policy").unwrap().to_str().unwrap();
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(page.headers.get("x-frame-options").unwrap(), "DENY");
    let cookie = page.headers.get("set-cookie").unwrap().to_str().unwrap();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"), "{cookie}");

    let page = browser
        .post(
            &page.form_action(),
            &[("csrf", &page.csrf()), ("username", "alice"), ("password", TEST_PASSWORD)],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let location = page.location.clone().unwrap();
    assert!(location.starts_with(REDIRECT), "{location}");
    assert_eq!(page.param("state").as_deref(), Some("st4te"));
    assert_eq!(
        page.param("iss").unwrap(),
        format!("{}/realms/{REALM}", app.address),
        "RFC 9207 iss"
    );
    let (status, tokens) = redeem(&app, &page.param("code").unwrap(), &verifier).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 300);

    let access = claims(tokens["access_token"].as_str().unwrap());
    let issuer = format!("{}/realms/{REALM}", app.address);
    assert_eq!(access["iss"], issuer);
    assert_eq!(access["sub"], ALICE_USER);
    assert_eq!(access["aud"], "banking-api");
    assert_eq!(access["azp"], WEB_APP);
    assert_eq!(access["typ"], "Bearer");
    assert_eq!(access["preferred_username"], "alice");
    assert_eq!(access["email"], "alice@example.com");
    assert_eq!(access["scope"], "openid profile email");
    assert!(access["realm_access"]["roles"].as_array().unwrap().contains(&json!("customer")));
    assert!(access["jti"].is_string() && access["sid"].is_string());
    assert_eq!(access["exp"].as_i64().unwrap() - access["iat"].as_i64().unwrap(), 300);
    let id = claims(tokens["id_token"].as_str().unwrap());
    assert_eq!(
        (id["aud"].as_str(), id["nonce"].as_str(), id["typ"].as_str()),
        (Some(WEB_APP), Some("n0nce"), Some("ID"))
    );
    assert_eq!(id["sid"], access["sid"]);
    let at_hash = URL_SAFE_NO_PAD
        .encode(&Sha256::digest(tokens["access_token"].as_str().unwrap().as_bytes())[..16]);
    assert_eq!(id["at_hash"], at_hash);

    // The API trusts the token, and ownership holds: alice sees hers, not bob's.
    let token = tokens["access_token"].as_str().unwrap();
    assert_eq!(
        api_get(&app, &format!("/api/accounts/{ALICE_ACCOUNT}"), Some(token)).await,
        StatusCode::OK
    );
    assert_eq!(
        api_get(&app, &format!("/api/accounts/{BOB_ACCOUNT}"), Some(token)).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api_get(&app, &format!("/api/accounts/{ALICE_ACCOUNT}"), None).await,
        StatusCode::UNAUTHORIZED
    );

    // userinfo, and SSO: a second authorization in the same browser needs no password.
    let info: Value = common::client()
        .get(format!("{}{}", app.address, oidc("userinfo")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (info["sub"].as_str(), info["preferred_username"].as_str()),
        (Some(ALICE_USER), Some("alice"))
    );
    let (_, challenge) = pkce();
    let again = browser.get(&auth_request(&challenge)).await;
    assert_eq!(again.status, StatusCode::SEE_OTHER, "SSO session skips the form");
    assert!(again.param("code").is_some());
    // ...unless the client asks for a fresher login (max_age) or any login (prompt=login).
    for extra in ["&max_age=0", "&prompt=login"] {
        let page = browser.get(&format!("{}{extra}", auth_request(&challenge))).await;
        assert_eq!(page.status, StatusCode::OK, "{extra}: the form again");
        assert!(page.body.contains("name=\"password\""));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_requests_that_oauth_2_1_forbids_are_refused() {
    let app = spawn_app_with_idp(Backend::Sqlite).await;
    let mut browser = Browser::new(&app);
    let (_, challenge) = pkce();
    let base = [
        ("response_type", "code"),
        ("client_id", WEB_APP),
        ("redirect_uri", REDIRECT),
        ("state", "s"),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ];
    let with = |changes: &[(&'static str, &'static str)], drop: &[&str]| -> String {
        let mut params: Vec<(&str, &str)> =
            base.iter().copied().filter(|(k, _)| !drop.contains(k)).collect();
        for (k, v) in changes {
            params.retain(|(key, _)| key != k);
            params.push((k, v));
        }
        authorize_path(&params)
    };
    // Never redirected: the redirect URI is not proven (an open redirector otherwise).
    for (changes, drop) in [
        (vec![("client_id", "nope")], vec![]),
        (vec![("redirect_uri", "https://evil.example/cb")], vec![]),
        (vec![("redirect_uri", "http://localhost:3000.evil.example/cb")], vec![]),
        (vec![("redirect_uri", "http://localhost:3000/cb#fragment")], vec![]),
        (vec![], vec!["redirect_uri"]),
        (vec![("client_id", GATEWAY)], vec![]),
    ] {
        let page = browser.get(&with(&changes, &drop)).await;
        assert_eq!(page.status, StatusCode::BAD_REQUEST, "{changes:?} {drop:?}");
        assert!(page.location.is_none());
    }
    // Redirected with an error: implicit/hybrid, PKCE missing or plain, request objects,
    // unknown scopes, prompt=none without a session.
    for (changes, drop, error) in [
        (vec![("response_type", "token")], vec![], "unsupported_response_type"),
        (vec![("response_type", "code id_token")], vec![], "unsupported_response_type"),
        (vec![], vec!["code_challenge", "code_challenge_method"], "invalid_request"),
        (vec![("code_challenge_method", "plain")], vec![], "invalid_request"),
        (vec![("code_challenge", "short")], vec![], "invalid_request"),
        (vec![("request", "eyJ.x.y")], vec![], "request_not_supported"),
        (vec![("scope", "openid admin")], vec![], "invalid_scope"),
        (vec![("prompt", "none")], vec![], "login_required"),
        (vec![("response_mode", "fragment")], vec![], "invalid_request"),
    ] {
        let page = browser.get(&with(&changes, &drop)).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{changes:?}");
        assert!(page.location.as_deref().unwrap().starts_with(REDIRECT));
        assert_eq!(page.param("error").as_deref(), Some(error), "{changes:?} {drop:?}");
        assert_eq!(page.param("state").as_deref(), Some("s"));
        assert!(page.param("code").is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codes_are_single_use_bound_to_pkce_and_redirect_and_a_replay_revokes_their_tokens() {
    let app = spawn_app_with_idp(Backend::Sqlite).await;
    let mut totp = Authenticators::new();
    let mut browser = Browser::new(&app);
    let (verifier, challenge) = pkce();
    let page = log_in(&mut browser, "alice", TEST_PASSWORD, &mut totp, &challenge).await;
    let code = page.param("code").unwrap();
    let secret = (WEB_APP, TEST_CLIENT_SECRET);
    let redeem_with = |verifier: String, redirect: &'static str| {
        let code = code.clone();
        let app = &app;
        async move {
            token_request(
                app,
                secret,
                &[
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("redirect_uri", redirect),
                    ("code_verifier", &verifier),
                ],
            )
            .await
        }
    };
    let (status, body) = redeem_with(pkce().0, REDIRECT).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant")),
        "wrong verifier"
    );
    let (status, body) = redeem_with(verifier.clone(), "http://localhost:3000/other").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant")),
        "other redirect_uri"
    );
    let (status, body) = token_request(
        &app,
        (WEB_APP, "wrong-secret"),
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_client"))
    );

    let (status, tokens) = redeem_with(verifier.clone(), REDIRECT).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let refresh = tokens["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(
        api_get(&app, &format!("/api/accounts/{ALICE_ACCOUNT}"), Some(&access)).await,
        StatusCode::OK
    );

    // The replay: refused, and what the first redemption issued is revoked.
    let (status, body) = redeem_with(verifier, REDIRECT).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_grant")));
    let (status, body) = token_request(
        &app,
        secret,
        &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant")),
        "{body}"
    );
    let introspected = introspect(&app, &access).await;
    assert_eq!(introspected["active"], false);
}

async fn introspect(app: &TestApp, token: &str) -> Value {
    common::client()
        .post(format!("{}{}", app.address, oidc("token/introspect")))
        .basic_auth(WEB_APP, Some(TEST_CLIENT_SECRET))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_grants_only_what_the_client_may_use() {
    let app = spawn_app_with_idp(Backend::Sqlite).await;
    let gateway = (GATEWAY, TEST_CLIENT_SECRET);
    // Client credentials, with client_secret_basic and client_secret_post.
    let (status, body) =
        token_request(&app, gateway, &[("grant_type", "client_credentials")]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.get("refresh_token").is_none(), "no refresh token for client credentials");
    let access = claims(body["access_token"].as_str().unwrap());
    assert_eq!(
        (access["azp"].as_str(), access["client_id"].as_str()),
        (Some(GATEWAY), Some(GATEWAY))
    );
    assert_eq!(access["preferred_username"], "service-account-banking-api-gateway");
    let response = common::client()
        .post(format!("{}{}", app.address, oidc("token")))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", GATEWAY),
            ("client_secret", TEST_CLIENT_SECRET),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // The gateway's token is valid for the API, but carries no role: nothing to see.
    let token = body["access_token"].as_str().unwrap();
    assert_eq!(
        api_get(&app, &format!("/api/accounts/{ALICE_ACCOUNT}"), Some(token)).await,
        StatusCode::NOT_FOUND
    );

    // Refusals.
    let response = common::client()
        .post(format!("{}{}", app.address, oidc("token")))
        .basic_auth(GATEWAY, Some("wrong"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(
        response.headers().get("www-authenticate").unwrap().to_str().unwrap().starts_with("Basic")
    );
    let metrics = app.metrics().await;
    assert!(metrics.contains(
        "ferrobank_idp_token_requests_total{realm=\"banking\",grant_type=\"client_credentials\",result=\"issued\"}"
    ));
    assert!(metrics.contains(
        "ferrobank_idp_token_requests_total{realm=\"banking\",grant_type=\"any\",result=\"invalid_client\"}"
    ));
    type Case<'a> = (&'a [(&'a str, &'a str)], (&'a str, &'a str), &'a str);
    let cases: [Case; 5] = [
        (
            &[("grant_type", "password"), ("username", "alice"), ("password", TEST_PASSWORD)],
            (WEB_APP, TEST_CLIENT_SECRET),
            "unsupported_grant_type",
        ),
        (&[("grant_type", "implicit")], (WEB_APP, TEST_CLIENT_SECRET), "unsupported_grant_type"),
        (
            &[("grant_type", "client_credentials")],
            (WEB_APP, TEST_CLIENT_SECRET),
            "unauthorized_client",
        ),
        (
            &[("grant_type", "client_credentials"), ("client_secret", TEST_CLIENT_SECRET)],
            gateway,
            "invalid_request",
        ),
        (&[("grant_type", "client_credentials"), ("scope", "root")], gateway, "invalid_scope"),
    ];
    for (form, client, error) in cases {
        let (status, body) = token_request(&app, client, form).await;
        assert!(status.is_client_error(), "{form:?}: {status}");
        assert_eq!(body["error"], error, "{form:?}");
    }
    // Not a form body: OAuth's error, not a 500.
    let response = common::client()
        .post(format!("{}{}", app.address, oidc("token")))
        .json(&json!({"grant_type": "client_credentials"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_tokens_rotate_and_a_reused_one_revokes_the_family() {
    let app = spawn_app_with_idp(Backend::Sqlite).await;
    let tokens = tokens_for(&app, "bob", TEST_PASSWORD, &mut Authenticators::new()).await;
    let secret = (WEB_APP, TEST_CLIENT_SECRET);
    let first = tokens["refresh_token"].as_str().unwrap();
    let (status, rotated) =
        token_request(&app, secret, &[("grant_type", "refresh_token"), ("refresh_token", first)])
            .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let second = rotated["refresh_token"].as_str().unwrap();
    assert_ne!(first, second, "rotated");
    assert_eq!(claims(rotated["access_token"].as_str().unwrap())["sub"], BOB_USER);
    // Narrowing the scope is allowed, widening is not.
    let (status, body) = token_request(
        &app,
        secret,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", second),
            ("scope", "openid offline_access"),
        ],
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_scope")));
    // The old one comes back: refused, and the current one dies with it.
    let (status, body) =
        token_request(&app, secret, &[("grant_type", "refresh_token"), ("refresh_token", first)])
            .await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_grant")));
    let (status, body) =
        token_request(&app, secret, &[("grant_type", "refresh_token"), ("refresh_token", second)])
            .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant")),
        "family revoked"
    );
    let access = rotated["access_token"].as_str().unwrap();
    assert_eq!(introspect(&app, access).await["active"], false, "its access tokens too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brute_force_locks_with_the_same_message_and_no_timing_tell() {
    let app = spawn_app_with_idp(Backend::Sqlite).await;
    let idp = app.idp();
    for name in ["mallory.target", "bystander"] {
        let user = NewUser {
            username: name.into(),
            enabled: true,
            password: Some(TEST_PASSWORD.into()),
            realm_roles: ["customer".to_owned()].into(),
            ..NewUser::default()
        };
        idp.create_user(REALM, user).await.unwrap();
    }
    let attempt = |user: &'static str, password: &'static str| {
        let app = &app;
        async move {
            let mut browser = Browser::new(app);
            let page = browser.get(&auth_request(&pkce().1)).await;
            let started = Instant::now();
            let page = browser
                .post(
                    &page.form_action(),
                    &[("csrf", &page.csrf()), ("username", user), ("password", password)],
                )
                .await;
            (page.status, page.error(), started.elapsed())
        }
    };
    let invalid = Some("Invalid username or password.".to_owned());
    // Five failures (the realm's failureFactor)...
    for _ in 0..5 {
        let (status, error, _) = attempt("mallory.target", "Wrong-Passw0rd-9999").await;
        assert_eq!((status, error), (StatusCode::OK, invalid.clone()));
    }
    // ...and the right password is refused too, with the very same message.
    let (status, error, _) = attempt("mallory.target", TEST_PASSWORD).await;
    assert_eq!((status, error), (StatusCode::OK, invalid.clone()), "locked");
    // Unknown users get the same answer, and another user is not affected.
    let (_, error, _) = attempt("nobody.at.all", "Wrong-Passw0rd-9999").await;
    assert_eq!(error, invalid);
    let (status, _, _) = attempt("bystander", TEST_PASSWORD).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    // Operators see it: failures, successes and lockouts are counted for alerting.
    let metrics = app.metrics().await;
    assert!(metrics.contains("ferrobank_idp_lockouts_total{realm=\"banking\"}"), "{metrics}");
    assert!(
        metrics
            .contains("ferrobank_idp_password_checks_total{realm=\"banking\",outcome=\"failure\"}")
    );
    assert!(
        metrics
            .contains("ferrobank_idp_password_checks_total{realm=\"banking\",outcome=\"success\"}")
    );

    // Timing: an unknown user costs the same argon2 verification as a known one.
    let mut known = Vec::new();
    let mut unknown = Vec::new();
    for _ in 0..5 {
        known.push(attempt("bystander", "Wrong-Passw0rd-9999").await.2);
        unknown.push(attempt("nobody.at.all", "Wrong-Passw0rd-9999").await.2);
    }
    known.sort();
    unknown.sort();
    let ratio = unknown[2].as_secs_f64() / known[2].as_secs_f64();
    assert!((0.5..2.0).contains(&ratio), "median unknown {:?} vs known {:?}", unknown[2], known[2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staff_must_enrol_and_use_totp_and_change_a_temporary_password() {
    let app = spawn_app_with_idp(Backend::Sqlite).await;
    let mut totp = Authenticators::new();
    // `admin` comes from the realm file: banking-admin (TOTP required) and UPDATE_PASSWORD.
    let tokens = tokens_for(&app, "admin", TEST_PASSWORD, &mut totp).await;
    assert!(totp.contains_key("admin"), "enrolment page was shown");
    let access = claims(tokens["access_token"].as_str().unwrap());
    assert!(access["realm_access"]["roles"].as_array().unwrap().contains(&json!("banking-admin")));
    // The old password is gone; the new one works, now with a TOTP code.
    let mut browser = Browser::new(&app);
    let page = log_in(&mut browser, "admin", TEST_PASSWORD, &mut totp, &pkce().1).await;
    assert_eq!(page.error().as_deref(), Some("Invalid username or password."));
    let new_password = format!("{TEST_PASSWORD}-New");
    let mut browser = Browser::new(&app);
    let page = browser.get(&auth_request(&pkce().1)).await;
    let page = browser
        .post(
            &page.form_action(),
            &[("csrf", &page.csrf()), ("username", "admin"), ("password", &new_password)],
        )
        .await;
    assert!(page.body.contains("name=\"otp\""), "second factor asked");
    let secret = totp["admin"].clone();
    // A code that was already used (at enrolment) is refused; a wrong one too.
    let used = code_at(&secret, now_s(), TotpPolicy::default());
    let (action, csrf) = (page.form_action(), page.csrf());
    let page = browser.post(&action, &[("csrf", &csrf), ("otp", &used)]).await;
    assert_eq!(page.error().as_deref(), Some("Invalid authenticator code."));
    let fresh = code_at(&secret, now_s() + 30, TotpPolicy::default());
    let page = browser.post(&action, &[("csrf", &csrf), ("otp", &fresh)]).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_form_only_works_in_the_browser_that_opened_it() {
    let app = spawn_app_with_idp(Backend::Sqlite).await;
    let mut victim = Browser::new(&app);
    let page = victim.get(&auth_request(&pkce().1)).await;
    // An attacker replaying the form without the victim's cookie, or with a wrong csrf.
    let mut attacker = Browser::new(&app);
    let stolen = attacker
        .post(
            &page.form_action(),
            &[("csrf", &page.csrf()), ("username", "alice"), ("password", TEST_PASSWORD)],
        )
        .await;
    assert_eq!(stolen.status, StatusCode::BAD_REQUEST);
    let forged = victim
        .post(
            &page.form_action(),
            &[("csrf", "forged"), ("username", "alice"), ("password", TEST_PASSWORD)],
        )
        .await;
    assert_eq!(forged.status, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_revocation_and_introspection_end_what_they_should() {
    let app = spawn_app_with_idp(Backend::Sqlite).await;
    let secret = (WEB_APP, TEST_CLIENT_SECRET);
    let tokens = tokens_for(&app, "alice", TEST_PASSWORD, &mut Authenticators::new()).await;
    let access = tokens["access_token"].as_str().unwrap();
    let introspected = introspect(&app, access).await;
    assert_eq!(
        (introspected["active"].as_bool(), introspected["username"].as_str()),
        (Some(true), Some("alice"))
    );
    // Introspection needs an authenticated client.
    let anonymous = common::client()
        .post(format!("{}{}", app.address, oidc("token/introspect")))
        .form(&[("token", access)])
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

    // Revoking the access token (RFC 7009): inactive, userinfo refuses it.
    let revoke = |token: String| {
        let app = &app;
        async move {
            common::client()
                .post(format!("{}{}", app.address, oidc("revoke")))
                .basic_auth(secret.0, Some(secret.1))
                .form(&[("token", token)])
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(revoke(access.to_owned()).await, StatusCode::OK);
    assert_eq!(introspect(&app, access).await["active"], false);
    let info = common::client()
        .get(format!("{}{}", app.address, oidc("userinfo")))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(info.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        revoke("not-a-token".into()).await,
        StatusCode::OK,
        "unknown tokens are not an error"
    );

    // RP-initiated logout: only to a registered URI, then the session is over.
    let tokens = tokens_for(&app, "alice", TEST_PASSWORD, &mut Authenticators::new()).await;
    let id_token = tokens["id_token"].as_str().unwrap();
    let mut browser = Browser::new(&app);
    let bad = browser
        .get(&format!(
            "{}?{}",
            oidc("logout"),
            url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs([
                    ("id_token_hint", id_token),
                    ("post_logout_redirect_uri", "https://evil.example/")
                ])
                .finish()
        ))
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let page = browser
        .get(&format!(
            "{}?{}",
            oidc("logout"),
            url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs([
                    ("id_token_hint", id_token),
                    ("post_logout_redirect_uri", "http://localhost:3000/bye"),
                    ("state", "x1")
                ])
                .finish()
        ))
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.location.as_deref(), Some("http://localhost:3000/bye?state=x1"));
    let refresh = tokens["refresh_token"].as_str().unwrap();
    let (status, _) =
        token_request(&app, secret, &[("grant_type", "refresh_token"), ("refresh_token", refresh)])
            .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "the session is over");
}

async fn admin_call(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request =
        common::client().request(method, format!("{}/admin/realms/{REALM}{path}", app.address));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_onboards_users_for_banking_admins_only() {
    let app = spawn_app_with_idp(Backend::Sqlite).await;
    let mut totp = Authenticators::new();
    let admin = tokens_for(&app, "admin", TEST_PASSWORD, &mut totp).await;
    let admin = admin["access_token"].as_str().unwrap();
    let alice = tokens_for(&app, "alice", TEST_PASSWORD, &mut totp).await;
    let alice = alice["access_token"].as_str().unwrap();
    use reqwest::Method;

    assert_eq!(
        admin_call(&app, Method::GET, "/users", None, None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        admin_call(&app, Method::GET, "/users", Some(alice), None).await.0,
        StatusCode::FORBIDDEN
    );
    let new_user = json!({
        "username": "carol", "email": "carol@example.com", "firstName": "Carol", "enabled": true,
        "realmRoles": ["customer"],
        "credentials": [{"type": "password", "value": TEST_PASSWORD, "temporary": false}]
    });
    let (status, created) =
        admin_call(&app, Method::POST, "/users", Some(admin), Some(new_user.clone())).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let (status, problem) =
        admin_call(&app, Method::POST, "/users", Some(admin), Some(new_user)).await;
    assert_eq!(
        (status, problem["type"].as_str()),
        (StatusCode::CONFLICT, Some("https://ferrobank.dev/problems/user_exists"))
    );
    let weak = json!({"username": "dave", "enabled": true, "credentials": [{"type": "password", "value": "short"}]});
    let (status, problem) = admin_call(&app, Method::POST, "/users", Some(admin), Some(weak)).await;
    assert_eq!(
        (status, problem["type"].as_str()),
        (StatusCode::BAD_REQUEST, Some("https://ferrobank.dev/problems/invalid_password"))
    );
    let unknown_field = json!({"username": "erin", "isAdmin": true});
    assert_eq!(
        admin_call(&app, Method::POST, "/users", Some(admin), Some(unknown_field)).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let unknown_role = json!({"username": "erin", "realmRoles": ["root"]});
    assert_eq!(
        admin_call(&app, Method::POST, "/users", Some(admin), Some(unknown_role)).await.0,
        StatusCode::BAD_REQUEST
    );

    let (status, found) =
        admin_call(&app, Method::GET, "/users?search=carol", Some(admin), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(found[0]["id"], json!(id));
    assert!(found[0].get("credentials").is_none(), "no secrets in representations");
    // The new user logs in; a role granted shows in the next token; a reset password works.
    let carol = tokens_for(&app, "carol", TEST_PASSWORD, &mut totp).await;
    assert_eq!(claims(carol["access_token"].as_str().unwrap())["email"], "carol@example.com");
    let (status, _) = admin_call(
        &app,
        Method::POST,
        &format!("/users/{id}/role-mappings/realm"),
        Some(admin),
        Some(json!([{"name": "risk-analyst"}])),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, roles) = admin_call(
        &app,
        Method::GET,
        &format!("/users/{id}/role-mappings/realm"),
        Some(admin),
        None,
    )
    .await;
    let names: Vec<&str> =
        roles.as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["customer", "risk-analyst"]);
    let (status, _) = admin_call(
        &app,
        Method::PUT,
        &format!("/users/{id}/reset-password"),
        Some(admin),
        Some(json!({"type": "password", "value": "Another-Passw0rd-42", "temporary": false})),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) =
        admin_call(&app, Method::DELETE, &format!("/users/{id}"), Some(admin), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        admin_call(&app, Method::GET, &format!("/users/{id}"), Some(admin), None).await.0,
        StatusCode::NOT_FOUND
    );
}

/// A customer's tier is a KYC outcome a banking admin sets as the user attribute `tier`; it
/// reaches the payment risk check only through the access token. With the default rules a
/// premium customer may pay 12,000.00 EUR (above standard's 10,000.00 maximum, below
/// premium's 25,000.00 review threshold); a standard customer's same payment is denied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_premium_tier_set_through_the_admin_api_lifts_that_customers_payment_limit() {
    use reqwest::Method;
    let app = spawn_app_with_idp(Backend::Sqlite).await;
    let mut totp = Authenticators::new();
    let admin = tokens_for(&app, "admin", TEST_PASSWORD, &mut totp).await;
    let admin = admin["access_token"].as_str().unwrap();
    let tier = |name: &str| json!({"attributes": {"tier": [name]}});
    let alice_path = format!("/users/{ALICE_USER}");

    let (status, problem) =
        admin_call(&app, Method::PUT, &alice_path, Some(admin), Some(tier("platinum"))).await;
    assert_eq!(
        (status, problem["type"].as_str()),
        (StatusCode::BAD_REQUEST, Some("https://ferrobank.dev/problems/invalid_user"))
    );
    let (status, _) =
        admin_call(&app, Method::PUT, &alice_path, Some(admin), Some(tier("premium"))).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, user) = admin_call(&app, Method::GET, &alice_path, Some(admin), None).await;
    assert_eq!(user["attributes"]["tier"], json!(["premium"]));

    let alice = tokens_for(&app, "alice", TEST_PASSWORD, &mut totp).await;
    let alice = alice["access_token"].as_str().unwrap();
    assert_eq!(claims(alice)["tier"], "premium");
    let bob = tokens_for(&app, "bob", TEST_PASSWORD, &mut totp).await;
    let bob = bob["access_token"].as_str().unwrap();
    assert!(claims(bob).get("tier").is_none(), "{}", claims(bob));
    // Customers cannot promote themselves or anyone else.
    let bob_path = format!("/users/{BOB_USER}");
    assert_eq!(
        admin_call(&app, Method::PUT, &bob_path, Some(bob), Some(tier("business"))).await.0,
        StatusCode::FORBIDDEN
    );

    let bank = uuid::Uuid::parse_str(BANK_ACCOUNT).unwrap();
    for account in [ALICE_ACCOUNT, BOB_ACCOUNT] {
        let account = uuid::Uuid::parse_str(account).unwrap();
        let transfer = common::transfer_body(uuid::Uuid::now_v7(), bank, account, 2_000_000);
        app.post_as(admin, "/api/transfers", &transfer).await.expect(201);
    }
    async fn pay(
        app: &TestApp,
        token: &str,
        from: &str,
        to: &str,
        key: &str,
        amount: i64,
    ) -> Value {
        let body = json!({
            "debtor_account": from,
            "beneficiary": {"kind": "internal", "account": to},
            "amount": amount,
            "currency": "EUR",
        });
        app.post_as_with_key(token, "/api/payments", key, &body).await.expect(201)
    }
    // Small first payments: a large first payment to a beneficiary is reviewed in any tier.
    for (token, from, to) in
        [(alice, ALICE_ACCOUNT, BOB_ACCOUNT), (bob, BOB_ACCOUNT, ALICE_ACCOUNT)]
    {
        let first = pay(&app, token, from, to, &format!("first-{from}"), 1_000).await;
        assert_eq!(first["risk"]["outcome"], "allow", "{first}");
    }

    let premium = pay(&app, alice, ALICE_ACCOUNT, BOB_ACCOUNT, "big-alice", 1_200_000).await;
    assert_eq!(premium["risk"]["outcome"], "allow", "{premium}");
    assert_ne!(premium["status"], "rejected", "{premium}");
    let standard = pay(&app, bob, BOB_ACCOUNT, ALICE_ACCOUNT, "big-bob", 1_200_000).await;
    assert_eq!(
        (standard["status"].as_str(), standard["risk"]["outcome"].as_str()),
        (Some("rejected"), Some("deny")),
        "{standard}"
    );
    let codes: Vec<&str> = standard["risk"]["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["code"].as_str())
        .collect();
    assert!(codes.contains(&"amount_over_tier_limit"), "{codes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_keys_keep_earlier_tokens_valid() {
    let app = spawn_app_with_idp(Backend::Sqlite).await;
    let mut totp = Authenticators::new();
    let before = tokens_for(&app, "alice", TEST_PASSWORD, &mut totp).await;
    let before = before["access_token"].as_str().unwrap().to_owned();
    let admin = tokens_for(&app, "admin", TEST_PASSWORD, &mut totp).await;
    let (status, rotated) = admin_call(
        &app,
        reqwest::Method::POST,
        "/keys/rotate",
        admin["access_token"].as_str(),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let after = tokens_for(&app, "bob", TEST_PASSWORD, &mut totp).await;
    let after = after["access_token"].as_str().unwrap();
    let kid = |token: &str| jsonwebtoken::decode_header(token).unwrap().kid.unwrap();
    assert_eq!(kid(after), rotated["kid"].as_str().unwrap());
    assert_ne!(kid(&before), kid(after));
    let jwks: Value = common::client()
        .get(format!("{}{}", app.address, oidc("certs")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2, "the previous key stays published");
    assert_eq!(
        api_get(&app, &format!("/api/accounts/{ALICE_ACCOUNT}"), Some(&before)).await,
        StatusCode::OK
    );
    assert_eq!(
        api_get(&app, &format!("/api/accounts/{BOB_ACCOUNT}"), Some(after)).await,
        StatusCode::OK
    );
}

async fn users_and_keys_survive_a_restart(backend: Backend) {
    let mut app = spawn_app_with_idp(backend).await;
    let tokens = tokens_for(&app, "alice", TEST_PASSWORD, &mut Authenticators::new()).await;
    let token = tokens["access_token"].as_str().unwrap().to_owned();
    let jwks = |app: &TestApp| {
        let url = format!("{}{}", app.address, oidc("certs"));
        async move { common::client().get(url).send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let keys_before = jwks(&app).await;
    app.restart().await;
    assert_eq!(jwks(&app).await, keys_before, "same keys after a restart");
    // The token is still good (new issuer URL: the restarted server has a new port).
    let again = tokens_for(&app, "alice", TEST_PASSWORD, &mut Authenticators::new()).await;
    assert_eq!(claims(again["access_token"].as_str().unwrap())["sub"], claims(&token)["sub"]);
}

on_both_backends!(users_and_keys_survive_a_restart);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_realm_may_sign_with_es256_or_eddsa_and_the_api_follows_its_configuration() {
    use ferrobank_adapters::oidc::SigningAlgorithm;
    for algorithm in [SigningAlgorithm::ES256, SigningAlgorithm::EdDSA] {
        let mut realm: Value = serde_json::from_str(ferrobank::identity::BANKING_REALM).unwrap();
        realm["defaultSignatureAlgorithm"] = algorithm.as_str().into();
        let file =
            std::env::temp_dir().join(format!("ferrobank-realm-{}.json", uuid::Uuid::new_v4()));
        std::fs::write(&file, realm.to_string()).unwrap();
        let app = common::spawn_configured(Backend::Sqlite, |config| {
            config.identity.realm_files = vec![file.clone()];
            config.identity.dev_client_secret = Some(TEST_CLIENT_SECRET.into());
            config.auth.algorithms = vec![algorithm];
        })
        .await;
        std::fs::remove_file(&file).unwrap();
        let (status, body) = token_request(
            &app,
            (GATEWAY, TEST_CLIENT_SECRET),
            &[("grant_type", "client_credentials")],
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let token = body["access_token"].as_str().unwrap();
        let header = jsonwebtoken::decode_header(token).unwrap();
        assert_eq!(format!("{:?}", header.alg), algorithm.as_str());
        let discovery: Value = common::client()
            .get(format!("{}/realms/{REALM}/.well-known/openid-configuration", app.address))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(discovery["id_token_signing_alg_values_supported"], json!([algorithm.as_str()]));
        // Valid for the API (no role: nothing found), while a tampered one is refused.
        assert_eq!(
            api_get(&app, &format!("/api/accounts/{ALICE_ACCOUNT}"), Some(token)).await,
            StatusCode::NOT_FOUND
        );
        let tampered = format!("{}x", &token[..token.len() - 1]);
        assert_eq!(
            api_get(&app, &format!("/api/accounts/{ALICE_ACCOUNT}"), Some(&tampered)).await,
            StatusCode::UNAUTHORIZED
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_public_url_makes_the_issuer_https_and_the_cookies_secure() {
    let app = common::spawn_configured(Backend::Sqlite, |config| {
        config.identity.public_url = Some("https://bank.example".into());
    })
    .await;
    let mut browser = Browser::new(&app);
    let discovery = browser.get(&format!("/realms/{REALM}/.well-known/openid-configuration")).await;
    let discovery: Value = serde_json::from_str(&discovery.body).unwrap();
    assert_eq!(discovery["issuer"], "https://bank.example/realms/banking");
    assert_eq!(
        discovery["authorization_endpoint"],
        "https://bank.example/realms/banking/protocol/openid-connect/auth"
    );
    let page = browser.get(&auth_request(&pkce().1)).await;
    let cookie = page.headers.get("set-cookie").unwrap().to_str().unwrap();
    assert!(
        cookie.contains("; Secure")
            && cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
}
