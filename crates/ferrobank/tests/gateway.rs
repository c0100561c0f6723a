//! The zero-trust edge, black-box: the policy matrix, the gateway in front of the API
//! (JWT attacks, path tricks, unauthenticated callers), rate limits in memory and Redis,
//! circuit breaking, and live reload of the Istio YAML.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use common::{TestApp, TestIdp, poll_until, spawn_configured};
use ferrobank::config::Config;
use ferrobank_adapters::Backend;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

const RBAC_DENIED: &str = "RBAC: access denied";
const JWT_INVALID: &str = "Jwt verification fails";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A private copy of `deploy/istio`, edited by `edit(file name, text)`.
fn istio_copy(edit: impl Fn(&str, String) -> String) -> tempfile_dir::Dir {
    let dir = tempfile_dir::Dir::new();
    for entry in std::fs::read_dir(repo().join("deploy/istio")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(dir.path().join(&name), edit(&name, text)).unwrap();
    }
    dir
}

/// A temporary directory removed on drop (no extra crate needed).
mod tempfile_dir {
    use std::path::{Path, PathBuf};

    #[derive(Debug)]
    pub struct Dir(PathBuf);

    impl Dir {
        pub fn new() -> Dir {
            let path = std::env::temp_dir().join(format!("ferrobank-gw-{}", uuid::Uuid::now_v7()));
            std::fs::create_dir_all(&path).unwrap();
            Dir(path)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The API behind the edge, trusting `idp`; `configure` adjusts the rest.
async fn edge_app(idp: &TestIdp, configure: impl FnOnce(&mut Config)) -> TestApp {
    let issuer = idp.issuer.clone();
    spawn_configured(Backend::Sqlite, move |config| {
        config.identity.enabled = false;
        config.auth.issuer = Some(issuer);
        config.gateway.enabled = true;
        configure(config);
    })
    .await
}

/// Sends `path` byte for byte (no client-side normalization); returns status and body.
async fn raw_get(app: &TestApp, path: &str, token: Option<&str>) -> (u16, String) {
    raw_request(app, "GET", path, token).await
}

/// `method path` sent byte for byte; returns status and body.
async fn raw_request(
    app: &TestApp,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    let addr = app.address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

#[test]
fn the_matrix_holds_and_breaking_a_rule_shows_in_it() {
    let matrix = repo().join("POLICY_MATRIX.yaml");
    let report = ferrobank::policy::run(&repo().join("deploy/istio"), &matrix).unwrap();
    assert_eq!(report.mismatches, 0, "{}", report.table);
    assert!(report.cells > 500, "every role against every route: {} cells", report.cells);

    // The seed's own policies (split admin rule and the rest) fail the same matrix.
    let seed = ferrobank::policy::run(&repo().join("tests/policy/seed-defects"), &matrix).unwrap();
    assert!(seed.mismatches > 0, "the seed's defects must show:\n{}", seed.table);

    // Take customers out of the ledger's policy: the matrix notices.
    let broken = istio_copy(|name, text| {
        if name != "authorization-policies.yaml" {
            return text;
        }
        let at = text.find("name: accounts-service").unwrap();
        let (head, tail) = text.split_at(at);
        format!(
            "{head}{}",
            tail.replacen(r#"["customer", "banking-admin"]"#, r#"["banking-admin"]"#, 1)
        )
    });
    let report = ferrobank::policy::run(broken.path(), &matrix).unwrap();
    assert!(report.mismatches > 0 && report.table.contains("403!=allow"), "{}", report.table);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_running_gateway_answers_every_cell_of_the_matrix() {
    let idp = TestIdp::start().await;
    let dir = with_bucket(1_000_000);
    let path = dir.path().to_owned();
    let app = edge_app(&idp, |c| c.gateway.dir = Some(path)).await;
    let matrix = ferrobank::policy::Matrix::load(&repo().join("POLICY_MATRIX.yaml")).unwrap();
    let mut cells = 0;
    for (name, subject) in &matrix.subjects {
        let token = match (&subject.token, &subject.roles) {
            (Some(_), _) => Some(idp.forge(&idp.claims("matrix", &["banking-admin"]))),
            (None, Some(roles)) => {
                let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
                let mut claims = idp.claims(&format!("matrix-{name}"), &roles);
                for (key, value) in &subject.claims {
                    claims[key] = value.clone();
                }
                Some(idp.sign(&claims))
            }
            (None, None) => None,
        };
        for case in &matrix.cases {
            let (status, body) =
                raw_request(&app, &case.method, &case.target, token.as_deref()).await;
            // The edge's own answers are recognisable; anything else came from the service.
            let got = match (status, body.as_str()) {
                (401, JWT_INVALID) => "401",
                (403, RBAC_DENIED) => "403",
                (400, body) if body.contains("invalid-path") => "400",
                (404, "") => "404",
                _ => "allow",
            };
            let expected = &case.expect[name];
            assert!(
                ferrobank::policy::satisfies(got, expected),
                "{} as {name}: the gateway answered {status} {body:?}, the matrix says {expected}",
                case.request
            );
            cells += 1;
        }
    }
    assert!(cells > 500, "{cells} cells");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_in_front_of_the_api_verifies_tokens_and_enforces_the_policies() {
    let idp = TestIdp::start().await;
    let app = edge_app(&idp, |_| {}).await;
    let any = Uuid::now_v7();
    let customer = idp.token("c-1", &["customer"]);

    // Allowed through the edge: the API itself answers (its own 404 problem).
    let reply = app.get_as(&customer, &format!("/api/accounts/{any}")).await;
    assert_eq!(reply.status.as_u16(), 404, "{}", reply.text);
    assert_eq!(reply.header("ratelimit-policy"), Some("100;w=60"));
    assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));
    assert!(reply.header("x-request-id").is_some());

    // A role the ledger's policy does not name: Envoy's RBAC answer.
    for roles in [&["risk-analyst"][..], &["loan-officer"], &[]] {
        let reply = app.get_as(&idp.token("u-2", roles), &format!("/api/accounts/{any}")).await;
        assert_eq!((reply.status.as_u16(), reply.text.as_str()), (403, RBAC_DENIED), "{roles:?}");
    }

    // No token: every protected route is denied, public ones stay open.
    for path in [
        format!("/api/accounts/{any}"),
        format!("/api/transfers/{any}"),
        "/api/payments".into(),
        "/api/loans/my".into(),
        "/api/customers/me".into(),
        "/api/admin/x".into(),
        "/admin/realms/banking/users".into(),
        "/metrics".into(),
    ] {
        let (status, body) = raw_get(&app, &path, None).await;
        assert_eq!((status, body.as_str()), (403, RBAC_DENIED), "{path}");
    }
    for path in ["/health", "/ready", "/api/openapi.json"] {
        assert_eq!(raw_get(&app, path, None).await.0, 200, "{path}");
    }

    // Every token attack is 401 at the edge, before any policy or service.
    let now = jsonwebtoken::get_current_timestamp();
    let mut expired = idp.claims("c-1", &["customer"]);
    expired["exp"] = json!(now - 3600);
    let mut foreign = idp.claims("c-1", &["customer"]);
    foreign["iss"] = json!("https://evil.example/realms/banking");
    let mut wrong_aud = idp.claims("c-1", &["customer"]);
    wrong_aud["aud"] = json!(["another-api"]);
    let header_none = base64_url(br#"{"alg":"none","typ":"JWT","kid":"rsa-1"}"#);
    let admin = idp.claims("c-1", &["banking-admin"]);
    let payload = base64_url(admin.to_string().as_bytes());
    let mut not_yet = admin.clone();
    not_yet["nbf"] = json!(now + 3600);
    let mut refresh = admin.clone();
    refresh["typ"] = json!("Refresh");
    let hs256 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &admin,
        &jsonwebtoken::EncodingKey::from_secret(b"the public key, as an HMAC secret"),
    )
    .unwrap();
    let with = |edit: fn(&mut jsonwebtoken::Header)| {
        let mut header = idp.header();
        edit(&mut header);
        idp.sign_with_header(&header, &admin)
    };
    let signed = idp.sign(&admin);
    let (head, rest) = signed.split_once('.').unwrap();
    let (body, signature) = rest.split_once('.').unwrap();
    let mut tampered = admin.clone();
    tampered["sub"] = json!("someone-else");
    let swapped = format!("{head}.{}.{signature}", base64_url(tampered.to_string().as_bytes()));
    for (what, token) in [
        ("signed with another key", idp.forge(&admin)),
        ("expired", idp.sign(&expired)),
        ("not yet valid", idp.sign(&not_yet)),
        ("unknown issuer", idp.sign(&foreign)),
        ("wrong audience", idp.sign(&wrong_aud)),
        ("a refresh token", idp.sign(&refresh)),
        ("alg none", format!("{header_none}.{payload}.")),
        ("HS256 with a guessable secret", hs256),
        ("unknown kid", with(|h| h.kid = Some("nope".into()))),
        ("jku pointing elsewhere", with(|h| h.jku = Some("https://evil.example/jwks".into()))),
        ("x5u pointing elsewhere", with(|h| h.x5u = Some("https://evil.example/cert".into()))),
        ("another JWT type", with(|h| h.typ = Some("logout+jwt".into()))),
        ("payload swapped under a valid signature", swapped),
        ("signature stripped", format!("{head}.{body}.")),
        ("garbage", "not.a.jwt".to_owned()),
    ] {
        let reply = app.get_as(&token, &format!("/api/accounts/{any}")).await;
        assert_eq!((reply.status.as_u16(), reply.text.as_str()), (401, JWT_INVALID), "{what}");
        assert!(
            reply.header("www-authenticate").is_some_and(|v| v.contains("invalid_token")),
            "{what}"
        );
    }

    // The untampered token those attacks started from passes.
    let reply = app.get_as(&signed, &format!("/api/accounts/{any}")).await;
    assert_eq!(reply.status.as_u16(), 404, "{}", reply.text);

    // Path tricks are judged, and forwarded, as the path they mean.
    let admin_tricks = [
        "/api/loans/../admin/x",
        "//api//admin/x",
        "/api/loans/%2e%2e/admin/x",
        "/api/admin%2Fx",
        "/api/admin%5cx",
        "/api/./admin/x",
        "/%61pi/admin/x",
    ];
    for path in admin_tricks {
        let (status, body) = raw_get(&app, path, Some(&customer)).await;
        assert_eq!((status, body.as_str()), (403, RBAC_DENIED), "{path}");
    }
    for path in ["/api/admin;x=1/x", "/api/admin%3Bx/x", "/api/%00/x", "/api/%zz"] {
        let (status, body) = raw_get(&app, path, Some(&customer)).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains("invalid-path"), "{path}: {body}");
    }
    // Into an allowed path: the service receives the normalized path and answers for it.
    let (status, body) =
        raw_get(&app, &format!("/api/loans/..%2Faccounts/{any}"), Some(&customer)).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("problem") || body.contains("type"), "{body}");

    // The seed's alert rules count these as Istio does.
    let metrics = ferrobank_interfaces::metrics_handle().render();
    assert!(metrics.contains("istio_requests_total{"), "{metrics}");
    assert!(
        metrics.lines().any(|l| l.starts_with("istio_requests_total{")
            && l.contains("destination_service_name=\"accounts-service\"")
            && l.contains("response_code=\"403\"")),
        "{metrics}"
    );
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// `deploy/istio` with the ingress bucket at `max_tokens` per hour.
fn with_bucket(max_tokens: u32) -> tempfile_dir::Dir {
    istio_copy(move |name, text| {
        if name != "rate-limit.yaml" {
            return text;
        }
        text.replace("max_tokens: 100", &format!("max_tokens: {max_tokens}"))
            .replace("tokens_per_fill: 100", &format!("tokens_per_fill: {max_tokens}"))
            .replace("fill_interval: 60s", "fill_interval: 1h")
    })
}

/// Fires `n` concurrent GET /health at each app; returns (admitted, refused).
async fn burst(apps: &[&TestApp], n: usize) -> (usize, usize) {
    let mut tasks = Vec::new();
    for app in apps {
        for _ in 0..n {
            let url = format!("{}/health", app.address);
            let client = app.client.clone();
            tasks.push(tokio::spawn(async move {
                let response = client.get(url).send().await.unwrap();
                let status = response.status().as_u16();
                if status == 429 {
                    let retry = response
                        .headers()
                        .get("retry-after")
                        .map(|v| v.to_str().unwrap().to_owned());
                    assert!(retry.is_some_and(|s| s.parse::<u64>().unwrap() > 0), "Retry-After");
                    assert!(response.headers().get("ratelimit").is_some(), "RateLimit header");
                    let body = response.text().await.unwrap();
                    assert!(body.contains("rate-limited"), "{body}");
                }
                status
            }));
        }
    }
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(admitted + refused, statuses.len(), "{statuses:?}");
    (admitted, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_admits_exactly_the_bucket_under_concurrent_load() {
    let idp = TestIdp::start().await;
    let dir = with_bucket(7);
    let path = dir.path().to_owned();
    let app = edge_app(&idp, |c| c.gateway.dir = Some(path)).await;
    assert_eq!(burst(&[&app], 60).await, (7, 53));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_one_limit_through_redis() {
    let url = std::env::var("FERROBANK_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let idp = TestIdp::start().await;
    let dir = with_bucket(9);
    let prefix = format!("ferrobank-test:{}:", Uuid::now_v7());
    let configure = |c: &mut Config| {
        c.gateway.dir = Some(dir.path().to_owned());
        c.gateway.redis_url = Some(url.clone());
        c.gateway.redis_key_prefix = prefix.clone();
        c.gateway.rate_limit_fail_open = false;
    };
    let one = edge_app(&idp, configure).await;
    let two = edge_app(&idp, configure).await;
    assert_eq!(burst(&[&one, &two], 25).await, (9, 41), "one limit for both replicas");
}

/// An upstream that fails with 500 while `failing` is set (and for the next `fail_next`
/// calls), counting the calls it gets.
async fn flaky_upstream(
    failing: Arc<AtomicBool>,
    fail_next: Arc<AtomicU32>,
    calls: Arc<AtomicU32>,
) -> String {
    use axum::http::StatusCode;
    let app = axum::Router::new().fallback(move || {
        let (failing, fail_next, calls) = (failing.clone(), fail_next.clone(), calls.clone());
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            let once = fail_next
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if failing.load(Ordering::SeqCst) || once {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::OK
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// A Gateway and the head of a VirtualService bound to it; tests append `http` routes.
const MESH_HEAD: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["*"]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: banking-system}
spec:
  hosts: ["*"]
  gateways: [istio-system/gw]
  http:
"#;

const BREAKER_ROUTES: &str = r#"
  - name: flaky
    match: [{uri: {prefix: /flaky}}]
    route: [{destination: {host: flaky-service, port: {number: 8080}}}]
  - name: retried
    match: [{uri: {prefix: /retried}}]
    retries: {attempts: 2, retryOn: 5xx}
    route: [{destination: {host: retried-service, port: {number: 8080}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: flaky, namespace: banking-system}
spec:
  host: flaky-service
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 3, interval: 1s, baseEjectionTime: 1s, maxEjectionPercent: 100}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_upstream_opens_the_circuit_and_it_recovers() {
    let (failing, calls) = (Arc::new(AtomicBool::new(true)), Arc::new(AtomicU32::new(0)));
    let fail_next = Arc::new(AtomicU32::new(0));
    let flaky = flaky_upstream(failing.clone(), fail_next.clone(), calls.clone()).await;
    let dir = tempfile_dir::Dir::new();
    std::fs::write(
        dir.path().join("mesh.yaml"),
        format!("{MESH_HEAD}{}", BREAKER_ROUTES.trim_start_matches('\n')),
    )
    .unwrap();
    let mut config = Config { listen: ([127, 0, 0, 1], 0).into(), ..Config::default() };
    config.gateway.dir = Some(dir.path().to_owned());
    config.gateway.upstream = Some(flaky.clone());
    let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    config.gateway.admin_listen = Some(admin);
    let gateway = ferrobank::edge::start_standalone(&config).await.unwrap();
    let url = format!("http://{}", gateway.addr);
    let client = common::client();
    let get = |path: &'static str| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let response = client.get(format!("{url}{path}")).send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    for _ in 0..3 {
        assert_eq!(get("/flaky").await.0, 500, "the upstream's own answer, not retried");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(get("/flaky").await, (503, "no healthy upstream".to_owned()), "the circuit is open");
    assert_eq!(calls.load(Ordering::SeqCst), 3, "an open circuit does not call the upstream");

    failing.store(false, Ordering::SeqCst);
    poll_until("the ejection to end", Duration::from_secs(5), || async {
        (get("/flaky").await.0 == 200).then_some(())
    })
    .await;

    // A route with retries: one failure then success is invisible to the client.
    fail_next.store(1, Ordering::SeqCst);
    let before = calls.load(Ordering::SeqCst);
    assert_eq!(get("/retried").await.0, 200);
    assert_eq!(calls.load(Ordering::SeqCst), before + 2, "one failed try, one retry");

    // Envoy's admin port: the counters the seed's alerts read, with Envoy's response flags.
    let stats = client.get(format!("http://{admin}/stats/prometheus")).send().await.unwrap();
    let stats = stats.text().await.unwrap();
    assert!(
        stats.lines().any(|l| l.starts_with("istio_requests_total{")
            && l.contains("destination_service_name=\"flaky-service\"")
            && l.contains("response_flags=\"UH\"")
            && l.contains("response_code=\"503\"")),
        "{stats}"
    );
    gateway.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_the_yaml_changes_the_running_gateway_and_a_broken_edit_changes_nothing() {
    let idp = TestIdp::start().await;
    let dir = istio_copy(|_, text| text);
    let path = dir.path().to_owned();
    let app = edge_app(&idp, |c| {
        c.gateway.dir = Some(path);
        c.gateway.reload_interval_ms = 100;
    })
    .await;
    let customer = idp.token("c-1", &["customer"]);
    let target = format!("/api/accounts/{}", Uuid::now_v7());
    assert_eq!(
        app.get_as(&customer, &target).await.status.as_u16(),
        404,
        "allowed: the API answers"
    );

    let policies = dir.path().join("authorization-policies.yaml");
    let original = std::fs::read_to_string(&policies).unwrap();
    let at = original.find("name: accounts-service").unwrap();
    let (head, tail) = original.split_at(at);
    let without_customers = format!(
        "{head}{}",
        tail.replacen(r#"["customer", "banking-admin"]"#, r#"["banking-admin"]"#, 1)
    );
    std::fs::write(&policies, &without_customers).unwrap();
    poll_until("the edit to take effect", Duration::from_secs(10), || async {
        (app.get_as(&customer, &target).await.status.as_u16() == 403).then_some(())
    })
    .await;

    // A broken file is refused; the configuration in force stays.
    std::fs::write(&policies, format!("{without_customers}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: x, namespace: banking-system}}\nspec: {{action: CUSTOM, rules: [{{}}]}}\n")).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let reply = app.get_as(&customer, &target).await;
    assert_eq!((reply.status.as_u16(), reply.text.as_str()), (403, RBAC_DENIED));

    std::fs::write(&policies, &original).unwrap();
    poll_until("the restore to take effect", Duration::from_secs(10), || async {
        (app.get_as(&customer, &target).await.status.as_u16() == 404).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_the_gateway_cannot_enforce_stops_it_naming_file_and_field() {
    let dir = tempfile_dir::Dir::new();
    let policy = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
                  metadata: {name: ext-authz, namespace: banking-system}\n\
                  spec:\n  action: CUSTOM\n  rules: [{}]\n";
    std::fs::write(dir.path().join("custom.yaml"), policy).unwrap();
    let mut config = Config { listen: ([127, 0, 0, 1], 0).into(), ..Config::default() };
    config.gateway.dir = Some(dir.path().to_owned());
    config.gateway.upstream = Some("http://127.0.0.1:9".into());
    let error = ferrobank::edge::start_standalone(&config).await.unwrap_err();
    assert!(error.contains("custom.yaml") && error.contains("spec.action"), "{error}");
    assert!(error.contains("CUSTOM"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_follows_the_realms_web_origins() {
    let app = spawn_configured(Backend::Sqlite, |config| {
        config.identity.dev_password = Some(common::TEST_PASSWORD.into());
        config.identity.dev_client_secret = Some(common::TEST_CLIENT_SECRET.into());
        config.gateway.enabled = true;
    })
    .await;
    let preflight = |origin: &'static str| {
        let (client, url) = (app.client.clone(), format!("{}/api/accounts", app.address));
        async move {
            client
                .request(reqwest::Method::OPTIONS, url)
                .header("origin", origin)
                .header("access-control-request-method", "POST")
                .header("access-control-request-headers", "authorization, content-type")
                .send()
                .await
                .unwrap()
        }
    };
    // deploy/keycloak/banking-realm.json: banking-web-app's webOrigins.
    let allowed = preflight("http://localhost:3000").await;
    assert_eq!(allowed.status().as_u16(), 204);
    let allow_origin = allowed.headers().get("access-control-allow-origin").unwrap();
    assert_eq!(allow_origin, "http://localhost:3000");
    let refused = preflight("https://evil.example").await;
    assert_eq!(refused.status().as_u16(), 403);
    assert!(refused.headers().get("access-control-allow-origin").is_none());

    // An actual request from an allowed origin carries the header; from another, it does not.
    let reply = app
        .client
        .get(format!("{}/health", app.address))
        .header("origin", "https://banking.local")
        .send()
        .await
        .unwrap();
    assert_eq!(
        reply.headers().get("access-control-allow-origin").unwrap(),
        "https://banking.local"
    );
    let reply = app
        .client
        .get(format!("{}/health", app.address))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(reply.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_reads_the_token_as_the_services_do_and_refuses_two() {
    let idp = TestIdp::start().await;
    let app = edge_app(&idp, |_| {}).await;
    let customer = idp.token("c-1", &["customer"]);
    let path = format!("/api/accounts/{}", Uuid::now_v7());
    let send = |headers: String| {
        let (addr, path) = (app.address.trim_start_matches("http://").to_owned(), path.clone());
        async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let request = format!(
                "GET {path} HTTP/1.1\r\nHost: localhost\r\n{headers}Connection: close\r\n\r\n"
            );
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).await.unwrap();
            response
        }
    };
    // The scheme is case-insensitive (RFC 7235): the edge sees the same user the API sees.
    let lower = send(format!("authorization: bearer {customer}\r\n")).await;
    assert!(lower.starts_with("HTTP/1.1 404"), "{lower}");
    // Two Authorization headers: whichever the service would read, the edge refuses both.
    let anonymous_token = idp.token("c-2", &["banking-admin"]);
    let two = send(format!(
        "Authorization: Bearer {customer}\r\nAuthorization: Bearer {anonymous_token}\r\n"
    ))
    .await;
    assert!(two.starts_with("HTTP/1.1 401") && two.ends_with(JWT_INVALID), "{two}");
}

const ROUTING_ROUTES: &str = r#"
  - name: slow
    match: [{uri: {exact: /slow}}]
    timeout: 200ms
    route: [{destination: {host: echo-service}}]
  - name: moved
    match: [{uri: {prefix: /old/}}]
    rewrite: {uri: /new/}
    headers: {request: {set: {x-route: moved}}, response: {add: {x-edge: ferrobank}}}
    route: [{destination: {host: echo-service}}]
  - name: by-regex
    match: [{uri: {regex: "/items/[0-9]+"}, method: {exact: GET}}]
    route: [{destination: {host: echo-service}}]
  - name: rest
    match: [{uri: {prefix: /}}]
    route: [{destination: {host: echo-service}}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_rewrite_time_out_and_bound_the_body_as_the_virtual_service_says() {
    use axum::http::{HeaderMap, Uri};
    // Echoes the path it received and the route header; `/slow` takes 3 s.
    let echo = axum::Router::new().fallback(|uri: Uri, headers: HeaderMap| async move {
        if uri.path() == "/slow" {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        let route = headers.get("x-route").map(|v| v.to_str().unwrap().to_owned());
        format!("{} {}", uri.path(), route.unwrap_or_default())
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, echo).await });
    let dir = tempfile_dir::Dir::new();
    std::fs::write(
        dir.path().join("mesh.yaml"),
        format!("{MESH_HEAD}{}", ROUTING_ROUTES.trim_start_matches('\n')),
    )
    .unwrap();
    let mut config = Config { listen: ([127, 0, 0, 1], 0).into(), ..Config::default() };
    config.gateway.dir = Some(dir.path().to_owned());
    config.gateway.upstream = Some(upstream);
    config.http.max_body_bytes = 1024;
    let gateway = ferrobank::edge::start_standalone(&config).await.unwrap();
    let url = format!("http://{}", gateway.addr);
    let client = common::client();

    let reply = client.get(format!("{url}/old/x?q=1")).send().await.unwrap();
    assert_eq!(reply.headers().get("x-edge").unwrap(), "ferrobank");
    assert_eq!(reply.text().await.unwrap(), "/new/x moved", "prefix rewritten, header set");

    let started = std::time::Instant::now();
    let reply = client.get(format!("{url}/slow")).send().await.unwrap();
    assert_eq!(reply.status().as_u16(), 504);
    assert_eq!(reply.text().await.unwrap(), "upstream request timeout");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the route's 200 ms, not the upstream's 3 s"
    );

    let reply = client.get(format!("{url}/items/42")).send().await.unwrap();
    assert_eq!(reply.text().await.unwrap(), "/items/42 ");

    let reply = client.post(format!("{url}/anything")).body(vec![b'x'; 4096]).send().await.unwrap();
    assert_eq!(reply.status().as_u16(), 413);
    assert!(reply.text().await.unwrap().contains("body-too-large"));
    gateway.stop().await.unwrap();
}
