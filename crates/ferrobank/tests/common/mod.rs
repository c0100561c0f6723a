//! Test harness shared by the black-box suites: a real server on a random port over a
//! throwaway database (zero2prod's `spawn_app`), an HTTP client and the few helpers every
//! test needs (open an account, move money, read balances and history, check a problem).
// Each test binary uses its own subset of the helpers.
#![allow(dead_code, clippy::unwrap_used)]

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use ferrobank::config::Config;
use ferrobank::server::{self, Running};
use ferrobank_adapters::testing::TestDatabase;
use ferrobank_adapters::{Backend, SqlStore};
use ferrobank_application::{LedgerStore, VerifyReport};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::process::Command;
use uuid::Uuid;

/// Base of every problem `type` URI.
pub const PROBLEM_BASE: &str = "https://ferrobank.dev/problems/";
/// Longest a single HTTP request of a test may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Generates one `#[tokio::test]` per backend for each named `async fn(Backend)`:
/// `name::sqlite` and `name::postgres`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name(::ferrobank_adapters::Backend::Sqlite).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name(::ferrobank_adapters::Backend::Postgres).await;
                }
            }
        )*
    };
}

/// A running server and what a test needs to talk to it and to look behind it.
#[derive(Debug)]
pub struct TestApp {
    /// `http://127.0.0.1:PORT`
    pub address: String,
    /// Client with a per-request timeout.
    pub client: reqwest::Client,
    /// The store the server uses (a clone of its pool), for `verify`.
    pub store: SqlStore,
    running: Option<Running>,
    config: Config,
    // Declared last: dropped after the server's pool is gone.
    db: TestDatabase,
}

/// Password of every user the built-in provider creates in tests (meets the realm policy).
pub const TEST_PASSWORD: &str = "Test-Passw0rd-1234";
/// Secret of every confidential client in tests.
pub const TEST_CLIENT_SECRET: &str = "test-client-secret-0123456789abcdef";

/// Starts the real router on `127.0.0.1:0` over a fresh, migrated database, without
/// authentication (the built-in provider off, no issuer): the ledger's own tests.
pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_configured(backend, |config| config.identity.enabled = false).await
}

/// Starts the real router like [`spawn_app`], with bearer-token authentication against `idp`.
pub async fn spawn_app_with_auth(backend: Backend, idp: &TestIdp) -> TestApp {
    spawn_app_with_issuer(backend, &idp.issuer).await
}

/// Starts the real router with authentication against whatever answers at `issuer`.
pub async fn spawn_app_with_issuer(backend: Backend, issuer: &str) -> TestApp {
    spawn_configured(backend, |config| {
        config.identity.enabled = false;
        config.auth.issuer = Some(issuer.to_owned());
    })
    .await
}

/// Starts the real router as `ferrobank up` does: the built-in provider with the banking
/// realm, and the API trusting it; known dev secrets ([`TEST_PASSWORD`], [`TEST_CLIENT_SECRET`]).
/// The demo data is seeded (alice and bob, with their accounts).
pub async fn spawn_app_with_idp(backend: Backend) -> TestApp {
    let app = spawn_configured(backend, |config| {
        config.identity.dev_password = Some(TEST_PASSWORD.into());
        config.identity.dev_client_secret = Some(TEST_CLIENT_SECRET.into());
    })
    .await;
    let running = app.running.as_ref().unwrap();
    ferrobank::demo::seed(&running.ledger, running.idp.as_deref(), &app.config).await.unwrap();
    app
}

/// Starts the real router with the default test configuration changed by `configure`.
pub async fn spawn_configured(backend: Backend, configure: impl FnOnce(&mut Config)) -> TestApp {
    let db = TestDatabase::new(backend).await;
    let store = db.store().await;
    let mut config = Config {
        listen: ([127, 0, 0, 1], 0).into(),
        database_url: Some(db.url.clone()),
        ..Config::default()
    };
    // The services themselves; tests/gateway.rs puts the edge in front.
    config.gateway.enabled = false;
    configure(&mut config);
    let running = server::start(&config, store.clone()).await.unwrap();
    TestApp {
        address: format!("http://{}", running.addr),
        client: client(),
        store,
        running: Some(running),
        config,
        db,
    }
}

// TEST-ONLY keys shared with the adapters' OIDC tests (see their fixtures/README.md).
const IDP_RSA: &[u8] = include_bytes!("../../../adapters/tests/fixtures/test-only-rsa-idp.pem");
const ATTACKER_RSA: &[u8] =
    include_bytes!("../../../adapters/tests/fixtures/test-only-rsa-attacker.pem");
const IDP_KID: &str = "rsa-1";

/// A tiny OpenID provider on a random local port: discovery and a JWKS with one RS256
/// key; it signs whatever tokens a test asks for.
#[derive(Debug)]
pub struct TestIdp {
    /// The issuer URL, as in tokens' `iss`.
    pub issuer: String,
}

impl TestIdp {
    /// Serves discovery and JWKS until the test ends.
    pub async fn start() -> TestIdp {
        use axum::routing::get;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let issuer = format!("{base}/realms/test");
        let discovery = json!({
            "issuer": issuer,
            "jwks_uri": format!("{issuer}/protocol/openid-connect/certs"),
            "id_token_signing_alg_values_supported": ["RS256"],
        });
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(IDP_RSA).unwrap();
        let mut jwk =
            jsonwebtoken::jwk::Jwk::from_encoding_key(&key, jsonwebtoken::Algorithm::RS256)
                .unwrap();
        jwk.common.key_id = Some(IDP_KID.to_owned());
        jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
        let jwks = json!({ "keys": [jwk] });
        let app = axum::Router::new()
            .route(
                "/realms/test/.well-known/openid-configuration",
                get(move || async move { axum::Json(discovery) }),
            )
            .route(
                "/realms/test/protocol/openid-connect/certs",
                get(move || async move { axum::Json(jwks) }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await });
        TestIdp { issuer }
    }

    /// Claims of a Keycloak-shaped access token for `subject` with realm `roles`, valid now.
    pub fn claims(&self, subject: &str, roles: &[&str]) -> Value {
        let now = jsonwebtoken::get_current_timestamp();
        json!({
            "exp": now + 300, "iat": now, "jti": Uuid::now_v7(), "iss": self.issuer,
            "aud": ["account", ferrobank::config::DEFAULT_AUDIENCE], "sub": subject,
            "typ": "Bearer", "azp": "banking-web-app", "scope": "openid profile",
            "preferred_username": subject, "realm_access": { "roles": roles },
        })
    }

    /// A signed access token for `subject` with realm `roles`.
    pub fn token(&self, subject: &str, roles: &[&str]) -> String {
        self.sign(&self.claims(subject, roles))
    }

    /// `claims` signed with the IdP's published key.
    pub fn sign(&self, claims: &Value) -> String {
        sign_rs256(claims, IDP_RSA)
    }

    /// `claims` signed with a key the IdP never published.
    pub fn forge(&self, claims: &Value) -> String {
        sign_rs256(claims, ATTACKER_RSA)
    }
}

impl TestIdp {
    /// `claims` signed with the IdP's published key under a header a test chose.
    pub fn sign_with_header(&self, header: &jsonwebtoken::Header, claims: &Value) -> String {
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(IDP_RSA).unwrap();
        jsonwebtoken::encode(header, claims, &key).unwrap()
    }

    /// The default RS256 header with the published key's `kid`.
    pub fn header(&self) -> jsonwebtoken::Header {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some(IDP_KID.to_owned());
        header
    }
}

fn sign_rs256(claims: &Value, pem: &[u8]) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(IDP_KID.to_owned());
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(pem).unwrap();
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

/// An HTTP client with a bounded request time.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build().unwrap()
}

/// A response read in full.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: reqwest::header::HeaderMap,
    /// Body as text.
    pub text: String,
}

impl Reply {
    /// Reads the whole response.
    pub async fn read(response: reqwest::Response) -> Self {
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        Self { status, headers, text }
    }

    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("{} body is not JSON ({e}): {}", self.status, self.text))
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts the status, showing the body when it differs.
    pub fn expect(&self, status: u16) -> Value {
        assert_eq!(self.status.as_u16(), status, "unexpected status; body: {}", self.text);
        self.json()
    }

    /// Asserts an RFC 9457 problem: 4xx `status`, problem+json, type ending in `code`
    /// under the stable base, the `status` field, and the request id of the header.
    pub fn expect_problem(&self, status: u16, code: &str) -> Value {
        self.check_problem(status, code).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `expect_problem` without the panic: what differs, if anything.
    pub fn check_problem(&self, status: u16, code: &str) -> Result<Value, String> {
        let shown: String = self.text.chars().take(400).collect();
        let fail = |what: &str| Err(format!("{what}; got {} {shown}", self.status));
        if self.status.as_u16() != status {
            return fail(&format!("expected status {status}"));
        }
        if self.header("content-type") != Some("application/problem+json") {
            return fail(&format!("content-type is {:?}", self.header("content-type")));
        }
        let Ok(problem) = serde_json::from_str::<Value>(&self.text) else {
            return fail("body is not JSON");
        };
        if problem["type"] != format!("{PROBLEM_BASE}{code}") {
            return fail(&format!("expected type {PROBLEM_BASE}{code}"));
        }
        if problem["status"] != status {
            return fail("status field differs");
        }
        if problem["title"].as_str().is_none_or(str::is_empty) {
            return fail("no title");
        }
        match problem["request_id"].as_str() {
            Some(id) if !id.is_empty() && Some(id) == self.header("x-request-id") => Ok(problem),
            _ => fail("request_id missing or not the x-request-id header"),
        }
    }
}

/// Options of a new account.
#[derive(Debug, Clone, Copy, Default)]
pub struct AccountSpec {
    /// Refuse overdrafts.
    pub no_overdraft: bool,
}

impl TestApp {
    /// The running server (its services, for tests that look behind the API).
    pub fn running(&self) -> &Running {
        self.running.as_ref().expect("the app is running")
    }

    /// The built-in identity provider (panics when the app runs without one).
    pub fn idp(&self) -> std::sync::Arc<ferrobank_adapters::idp::IdentityProvider> {
        self.running
            .as_ref()
            .and_then(|r| r.idp.clone())
            .expect("the app runs the built-in provider")
    }

    /// `GET {path}`.
    pub async fn get(&self, path: &str) -> Reply {
        let response = self.client.get(format!("{}{path}", self.address)).send().await.unwrap();
        Reply::read(response).await
    }

    /// `POST {path}` with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        let url = format!("{}{path}", self.address);
        Reply::read(self.client.post(url).json(body).send().await.unwrap()).await
    }

    /// `POST {path}` with a JSON body and an `Idempotency-Key`.
    pub async fn post_with_key(&self, path: &str, key: &str, body: &Value) -> Reply {
        let url = format!("{}{path}", self.address);
        let request = self.client.post(url).header("idempotency-key", key).json(body);
        Reply::read(request.send().await.unwrap()).await
    }

    /// `GET {path}` with `Authorization: Bearer {token}`.
    pub async fn get_as(&self, token: &str, path: &str) -> Reply {
        let url = format!("{}{path}", self.address);
        Reply::read(self.client.get(url).bearer_auth(token).send().await.unwrap()).await
    }

    /// `POST {path}` with a JSON body and `Authorization: Bearer {token}`.
    pub async fn post_as(&self, token: &str, path: &str, body: &Value) -> Reply {
        let url = format!("{}{path}", self.address);
        Reply::read(self.client.post(url).bearer_auth(token).json(body).send().await.unwrap()).await
    }

    /// `POST {path}` as `token` with an `Idempotency-Key`.
    pub async fn post_as_with_key(
        &self,
        token: &str,
        path: &str,
        key: &str,
        body: &Value,
    ) -> Reply {
        let url = format!("{}{path}", self.address);
        let request =
            self.client.post(url).bearer_auth(token).header("idempotency-key", key).json(body);
        Reply::read(request.send().await.unwrap()).await
    }

    /// Opens a EUR account of `owner` as `token`; returns the reply.
    pub async fn open_as(&self, token: &str, owner: &str) -> Reply {
        let body = json!({ "id": Uuid::now_v7(), "currency": "EUR", "owner": owner });
        self.post_as(token, "/api/accounts", &body).await
    }

    /// Opens a EUR account; returns its id.
    pub async fn open_account(&self, spec: AccountSpec) -> Uuid {
        self.open_account_in("EUR", spec).await
    }

    /// Opens an account in `currency`; returns its id.
    pub async fn open_account_in(&self, currency: &str, spec: AccountSpec) -> Uuid {
        let id = Uuid::now_v7();
        let body = json!({
            "id": id,
            "currency": currency,
            "owner": format!("customer-{}", id.simple()),
            "flags": { "debits_must_not_exceed_credits": spec.no_overdraft },
        });
        let account = self.post("/api/accounts", &body).await.expect(201);
        assert_eq!(account["id"], id.to_string());
        id
    }

    /// Sends a posted EUR transfer with a fresh id; returns the reply.
    pub async fn transfer(&self, debit: Uuid, credit: Uuid, amount: i64) -> Reply {
        self.post("/api/transfers", &transfer_body(Uuid::now_v7(), debit, credit, amount)).await
    }

    /// Sends a posted EUR transfer that must succeed; returns it.
    pub async fn transfer_ok(&self, debit: Uuid, credit: Uuid, amount: i64) -> Value {
        self.transfer(debit, credit, amount).await.expect(201)
    }

    /// Places a hold of `amount` from `debit` to `credit`; returns the hold's id.
    pub async fn hold(&self, debit: Uuid, credit: Uuid, amount: i64) -> Uuid {
        let id = Uuid::now_v7();
        let mut body = transfer_body(id, debit, credit, amount);
        body["flags"] = json!({ "pending": true });
        let hold = self.post("/api/transfers", &body).await.expect(201);
        assert_eq!(hold["pending_status"], "pending", "{hold}");
        id
    }

    /// The balances of an account.
    pub async fn balances(&self, account: Uuid) -> Value {
        self.get(&format!("/api/accounts/{account}/balances")).await.expect(200)
    }

    /// Every history entry of an account, newest first, following the cursor.
    pub async fn history(&self, account: Uuid) -> Vec<Value> {
        let mut entries = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/api/accounts/{account}/history?limit=500&cursor={c}"),
                None => format!("/api/accounts/{account}/history?limit=500"),
            };
            let page = self.get(&path).await.expect(200);
            entries.extend(page["entries"].as_array().unwrap().iter().cloned());
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return entries,
            }
        }
    }

    /// What a user could see of these accounts: account, balances and whole history.
    pub async fn snapshot(&self, accounts: &[Uuid]) -> Value {
        let mut views = Vec::new();
        for &account in accounts {
            views.push(json!({
                "account": self.get(&format!("/api/accounts/{account}")).await.expect(200),
                "history": self.history(account).await,
            }));
        }
        Value::Array(views)
    }

    /// Recomputes every balance from the transfers; panics on any mismatch.
    pub async fn verify_clean(&self) -> VerifyReport {
        let report = LedgerStore::verify(&self.store).await.unwrap();
        assert!(report.mismatches.is_empty(), "ledger verify found mismatches: {report:?}");
        report
    }

    /// The metrics text.
    pub async fn metrics(&self) -> String {
        let reply = self.get("/metrics").await;
        assert_eq!(reply.status, StatusCode::OK);
        reply.text
    }

    /// Stops the server gracefully and starts it again on the same database (new port).
    pub async fn restart(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await.unwrap();
        }
        let store = self.db.store().await;
        let running = server::start(&self.config, store.clone()).await.unwrap();
        self.address = format!("http://{}", running.addr);
        self.store = store;
        self.running = Some(running);
    }

    /// Stops the server gracefully.
    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await.unwrap();
        }
    }
}

/// The JSON body of a posted EUR transfer.
pub fn transfer_body(id: Uuid, debit: Uuid, credit: Uuid, amount: i64) -> Value {
    json!({
        "id": id,
        "debit_account_id": debit,
        "credit_account_id": credit,
        "amount": amount,
        "currency": "EUR",
    })
}

/// Retries `check` until it yields `Some` or `deadline` passes; never sleeps blindly
/// past the moment the effect is visible.
pub async fn poll_until<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let give_up = Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < give_up, "gave up after {deadline:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A small deterministic generator (xorshift64*), so a failing run can be replayed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded generator; the seed may be anything but 0 (0 is replaced).
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Next value in `0..bound` (bound > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % bound
    }

    /// Picks an element.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        let index = usize::try_from(self.below(items.len() as u64)).unwrap();
        &items[index]
    }
}

/// Runs the real binary with an empty environment of `FERROBANK_*` and a scratch directory
/// as working directory, so no local `ferrobank.toml` or variable changes what is tested.
pub fn ferrobank(args: &[&str], workdir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ferrobank"));
    command.args(args).current_dir(workdir).kill_on_drop(true);
    for (name, _) in std::env::vars() {
        if name.starts_with("FERROBANK_") {
            command.env_remove(name);
        }
    }
    command
}
