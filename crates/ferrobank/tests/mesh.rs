//! Split mode's sidecar: a service role with no edge in front of it (`serve accounts`)
//! judges every request with the Istio policies that select its own workload (defence in
//! depth), exactly as the gateway would: path normalization, JWT verification, RBAC.
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

const ACCOUNTS_ONLY: Roles = Roles { accounts: true, identity: false, gateway: false };

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
        let running = server::start_roles(&config, store, ACCOUNTS_ONLY).await.unwrap();
        Service { address: format!("http://{}", running.addr), running: Some(running), _db: db }
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
