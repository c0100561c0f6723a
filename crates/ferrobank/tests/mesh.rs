//! Split mode's mesh: a service role with no edge in front of it (`serve accounts`)
//! judges every request with the Istio policies that select its own workload (defence in
//! depth), exactly as the gateway would: path normalization, JWT verification, RBAC; and
//! speaks mutual TLS as its PeerAuthentication asks, so `source.principals` rules see the
//! caller's SPIFFE identity (real handshakes over 127.0.0.1).
#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use std::path::{Path, PathBuf};

use common::{Reply, TestIdp};
use ferrobank::config::Config;
use ferrobank::server::{self, Roles, Running};
use ferrobank_adapters::testing::TestDatabase;
use ferrobank_adapters::{Backend, SqlStore};
use ferrobank_interfaces::gateway::RBAC_DENIED;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use uuid::Uuid;

const ACCOUNTS_ONLY: Roles =
    Roles { accounts: true, identity: false, gateway: false, payment_worker: false };

/// `deploy/istio`'s policies as they are (no PeerAuthentication: plaintext allowed).
const POLICIES: [(&str, &str); 2] = [
    (
        "authorization-policies.yaml",
        include_str!("../../../deploy/istio/authorization-policies.yaml"),
    ),
    (
        "request-authentication.yaml",
        include_str!("../../../deploy/istio/request-authentication.yaml"),
    ),
];

/// A temporary directory removed on drop.
#[derive(Debug)]
struct TempDir(PathBuf);

impl TempDir {
    fn with(files: &[(&str, &str)]) -> TempDir {
        let dir = std::env::temp_dir().join(format!("ferrobank-mesh-{}", Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `ferrobank serve accounts` in-process, trusting `idp`, with the YAML of `policies`.
struct Service {
    address: String,
    running: Option<Running>,
    // Dropped after the server.
    _db: TestDatabase,
}

impl Service {
    async fn start(idp: &TestIdp, configure: impl FnOnce(&mut Config)) -> Service {
        Service::try_start(idp, configure).await.unwrap()
    }

    async fn try_start(
        idp: &TestIdp,
        configure: impl FnOnce(&mut Config),
    ) -> Result<Service, String> {
        let db = TestDatabase::new(Backend::Sqlite).await;
        let store: SqlStore = db.store().await;
        let mut config = Config {
            listen: ([127, 0, 0, 1], 0).into(),
            database_url: Some(db.url.clone()),
            ..Config::default()
        };
        config.identity.enabled = false;
        config.auth.issuer = Some(idp.issuer.clone());
        configure(&mut config);
        let running = server::start_roles(&config, store, ACCOUNTS_ONLY).await?;
        let scheme = if running.mutual_tls { "https" } else { "http" };
        let address = format!("{scheme}://{}", running.addr);
        Ok(Service { address, running: Some(running), _db: db })
    }

    async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        let mut request = common::client().get(format!("{}{path}", self.address));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        Reply::read(request.send().await.unwrap()).await
    }

    /// Sends `path` byte for byte (no client-side normalization); status and body.
    async fn raw_get(&self, path: &str, token: Option<&str>) -> (u16, String) {
        let addr = self.address.trim_start_matches("http://");
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        let text = String::from_utf8_lossy(&response).into_owned();
        let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        (status, body)
    }

    async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await.unwrap();
        }
    }
}

fn assert_denied(reply: &Reply, what: &str) {
    assert_eq!(
        (reply.status.as_u16(), reply.text.as_str(), reply.header("content-type")),
        (403, RBAC_DENIED, Some("text/plain")),
        "{what}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_without_the_edge_judges_requests_by_its_own_workloads_policies() {
    let idp = TestIdp::start().await;
    let policies = TempDir::with(&POLICIES);
    let dir = policies.path().to_owned();
    let service = Service::start(&idp, |c| c.mesh.dir = Some(dir)).await;
    let alice = idp.token("alice", &["customer"]);

    // A customer reaching the service directly: allowed, then the service's own checks.
    let id = Uuid::now_v7();
    let opened = common::client()
        .post(format!("{}/api/accounts", service.address))
        .bearer_auth(&alice)
        .json(&json!({ "id": id, "currency": "EUR", "owner": "alice" }))
        .send()
        .await
        .unwrap();
    assert_eq!(opened.status().as_u16(), 201);
    let account = format!("/api/accounts/{id}");
    service.get(&account, Some(&alice)).await.expect(200);

    // A valid token without a role the accounts-service policy names. The ledger itself
    // lets a loan officer read every account: the sidecar is the stricter of the two.
    let officer = idp.token("olga", &["loan-officer"]);
    assert_denied(&service.get(&account, Some(&officer)).await, "a loan officer");
    assert_denied(&service.get(&account, Some(&idp.token("x", &[]))).await, "no role");

    // Anonymous: the sidecar runs first, so it is RBAC's 403, not the API's 401.
    assert_denied(&service.get(&account, None).await, "anonymous");

    // A token that fails verification: Envoy's 401.
    let forged = idp.forge(&idp.claims("alice", &["customer"]));
    let reply = service.get(&account, Some(&forged)).await;
    assert_eq!((reply.status.as_u16(), reply.text.as_str()), (401, "Jwt verification fails"));
    assert!(reply.header("www-authenticate").is_some_and(|v| v.contains("invalid_token")));

    // Path tricks are judged, and served, as their normalized path.
    let (status, body) = service.raw_get(&format!("/api/x/../accounts/{id}"), Some(&alice)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&id.to_string()), "{body}");
    let (status, body) = service.raw_get(&format!("/api//accounts/%2e/{id}"), Some(&alice)).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = service.raw_get(&format!("/health/../api/accounts/{id}"), None).await;
    assert_eq!((status, body.as_str()), (403, RBAC_DENIED), "not judged as /health");
    let (status, body) = service.raw_get(&format!("/api/x/../accounts/{id}"), Some(&officer)).await;
    assert_eq!((status, body.as_str()), (403, RBAC_DENIED));
    let reply = service.get(&format!("/api/accounts;x=1/{id}"), Some(&alice)).await;
    let problem = reply.expect_problem(400, "invalid-path");
    assert!(problem["detail"].as_str().unwrap().contains(';'), "{problem}");

    // Health to anyone; metrics only to scrapers inside the mesh (mTLS identities).
    assert_eq!(service.get("/health", None).await.status.as_u16(), 200);
    assert_denied(&service.get("/metrics", None).await, "metrics from outside the mesh");
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_sidecar_off_the_service_answers_alone() {
    let idp = TestIdp::start().await;
    let service = Service::start(&idp, |c| c.mesh.enabled = false).await;
    let account = format!("/api/accounts/{}", Uuid::now_v7());
    service.get(&account, None).await.expect_problem(401, "unauthorized");
    let officer = idp.token("olga", &["loan-officer"]);
    service.get(&account, Some(&officer)).await.expect_problem(404, "not_found");
    assert_eq!(service.get("/metrics", None).await.status.as_u16(), 200);
    service.stop().await;
}

/// A PeerAuthentication (`MODE`), the namespace's RequestAuthentication, a ledger policy
/// that admits the ingress gateway's identity only, and a route for `serve gateway`.
const MESH: &str = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: banking-system}
spec: {mtls: {mode: MODE}}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: banking-system}
spec:
  jwtRules:
  - issuer: http://replaced-by-the-configured-issuer.invalid
    audiences: [banking-api]
    forwardOriginalToken: true
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ledger-from-the-ingress, namespace: banking-system}
spec:
  selector: {matchLabels: {app: accounts-service}}
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"]
        requestPrincipals: ["*"]
    to: [{operation: {paths: ["/api/accounts*"]}}]
  - to: [{operation: {methods: ["GET"], paths: ["/health"]}}]
---
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
  - name: ledger
    match: [{uri: {prefix: /api/accounts}}]
    route: [{destination: {host: accounts-service, port: {number: 8080}}}]
"#;

fn mesh_dir(mode: &str) -> TempDir {
    TempDir::with(&[("mesh.yaml", &MESH.replace("MODE", mode))])
}

/// The development PKI `ferrobank certs` writes.
fn pki() -> TempDir {
    let dir = TempDir::with(&[]);
    ferrobank::certs::issue(&dir.path().join("pki"), "cluster.local", "banking-system", false)
        .unwrap();
    dir
}

/// A client trusting the mesh CA of `pki`, presenting the certificate of `role` if given.
fn mesh_client(pki: &Path, role: Option<&str>) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(pki.join("ca.pem")).unwrap()).unwrap();
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .timeout(common::REQUEST_TIMEOUT);
    if let Some(role) = role {
        let mut pem = std::fs::read(pki.join(format!("{role}.pem"))).unwrap();
        pem.extend(std::fs::read(pki.join(format!("{role}.key"))).unwrap());
        builder = builder.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    builder.build().unwrap()
}

async fn get(client: &reqwest::Client, url: &str, token: Option<&str>) -> Reply {
    let mut request = client.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    Reply::read(request.send().await.unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strict_role_without_certificates_refuses_to_start() {
    let idp = TestIdp::start().await;
    let strict = mesh_dir("STRICT");
    let dir = strict.path().to_owned();
    let error = Service::try_start(&idp, |c| c.mesh.dir = Some(dir)).await.err().unwrap();
    for expected in [
        "PeerAuthentication banking-system/default",
        "STRICT",
        "accounts-service",
        "ferrobank certs",
        "[mesh] certs_dir",
    ] {
        assert!(error.contains(expected), "{expected}: {error}");
    }
    // deploy/istio, built in, is STRICT mesh-wide.
    let error = Service::try_start(&idp, |_| {}).await.err().unwrap();
    assert!(error.contains("peer-authentication.yaml"), "{error}");
    // PERMISSIVE and DISABLE serve plaintext.
    for mode in ["PERMISSIVE", "DISABLE"] {
        let policies = mesh_dir(mode);
        let dir = policies.path().to_owned();
        let service = Service::start(&idp, |c| c.mesh.dir = Some(dir)).await;
        assert_eq!(service.get("/health", None).await.status.as_u16(), 200, "{mode}");
        service.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strict_role_serves_mesh_peers_only_and_judges_their_principals() {
    let idp = TestIdp::start().await;
    let (strict, certs) = (mesh_dir("STRICT"), pki());
    let pki = certs.path().join("pki");
    let (dir, certs_dir) = (strict.path().to_owned(), pki.clone());
    let service = Service::start(&idp, |c| {
        c.mesh.dir = Some(dir);
        c.mesh.certs_dir = Some(certs_dir);
    })
    .await;
    let api = service.address.clone();
    assert!(api.starts_with("https://"), "{api}");
    let alice = idp.token("alice", &["customer"]);

    // Refused at the handshake: plaintext, and TLS without a certificate of the mesh CA.
    let plain = api.replacen("https", "http", 1);
    assert!(common::client().get(format!("{plain}/health")).send().await.is_err());
    assert!(mesh_client(&pki, None).get(format!("{api}/health")).send().await.is_err());

    // A mesh peer that is not the ingress gateway: judged, and refused by `principals`.
    let payments = mesh_client(&pki, Some("payments"));
    let missing = format!("{api}/api/accounts/{}", Uuid::now_v7());
    assert_eq!(get(&payments, &format!("{api}/health"), None).await.status.as_u16(), 200);
    assert_denied(&get(&payments, &missing, Some(&alice)).await, "sa/payments");

    // The gateway's certificate carries the ingress identity: admitted with a token.
    let gateway = mesh_client(&pki, Some("gateway"));
    assert_denied(&get(&gateway, &missing, None).await, "the ingress without a token");
    get(&gateway, &missing, Some(&alice)).await.expect_problem(404, "not_found");
    let id = Uuid::now_v7();
    let opened = gateway
        .post(format!("{api}/api/accounts"))
        .bearer_auth(&alice)
        .json(&json!({ "id": id, "currency": "EUR", "owner": "alice" }))
        .send()
        .await
        .unwrap();
    assert_eq!(opened.status().as_u16(), 201);

    // `serve gateway` calls the role over mutual TLS with the same certificate.
    let mut config = Config { listen: ([127, 0, 0, 1], 0).into(), ..Config::default() };
    config.auth.issuer = Some(idp.issuer.clone());
    config.gateway.dir = Some(strict.path().to_owned());
    config.gateway.upstream = Some(api.clone());
    let error = ferrobank::edge::start_standalone(&config).await.err().unwrap();
    assert!(error.contains("[mesh] certs_dir"), "https upstream without certificates: {error}");
    config.mesh.certs_dir = Some(pki.clone());
    let edge = ferrobank::edge::start_standalone(&config).await.unwrap();
    let through = format!("http://{}/api/accounts/{id}", edge.addr);
    let account = get(&common::client(), &through, Some(&alice)).await.expect(200);
    assert_eq!(account["id"], id.to_string());
    edge.stop().await.unwrap();

    // A gateway calling it over plaintext gets no answer from it.
    config.gateway.upstream = Some(plain);
    let edge = ferrobank::edge::start_standalone(&config).await.unwrap();
    let through = format!("http://{}/api/accounts/{id}", edge.addr);
    assert_eq!(get(&common::client(), &through, Some(&alice)).await.status.as_u16(), 503);
    edge.stop().await.unwrap();
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permissive_role_serves_plaintext_beside_mtls_and_only_mtls_carries_a_principal() {
    let idp = TestIdp::start().await;
    let (permissive, certs) = (mesh_dir("PERMISSIVE"), pki());
    let pki = certs.path().join("pki");
    let (dir, certs_dir) = (permissive.path().to_owned(), pki.clone());
    let service = Service::start(&idp, |c| {
        c.mesh.dir = Some(dir);
        c.mesh.certs_dir = Some(certs_dir);
    })
    .await;
    let api = service.address.clone();
    let plain = api.replacen("https", "http", 1);
    let alice = idp.token("alice", &["customer"]);
    let path = format!("/api/accounts/{}", Uuid::now_v7());

    assert_eq!(get(&common::client(), &format!("{plain}/health"), None).await.status.as_u16(), 200);
    let reply = get(&common::client(), &format!("{plain}{path}"), Some(&alice)).await;
    assert_denied(&reply, "plaintext has no principal");
    let gateway = mesh_client(&pki, Some("gateway"));
    get(&gateway, &format!("{api}{path}"), Some(&alice)).await.expect_problem(404, "not_found");
    assert!(mesh_client(&pki, None).get(format!("{api}/health")).send().await.is_err());
    service.stop().await;
}
