//! The operator commands as a user runs them: configuration layering and redaction,
//! refusal of an unknown schema, and `ledger verify` failing on a corrupted ledger.
#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use std::path::PathBuf;

use common::ferrobank;
use ferrobank_adapters::Backend;
use ferrobank_adapters::testing::TestDatabase;
use ferrobank_application::{LedgerLimits, LedgerService, SystemClock};
use ferrobank_domain::{
    AccountFlags, AccountId, Amount, Currency, NewAccount, NewTransfer, TransferId, TransferKind,
};
use sqlx::Executor;
use uuid::Uuid;

/// A scratch working directory, removed when dropped.
struct Workdir(PathBuf);

impl Workdir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("ferrobank-cli-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn run(command: &mut tokio::process::Command) -> (i32, String, String) {
    let output = command.output().await.unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_misspelled_env_key_is_an_error_and_the_test_harness_namespace_is_not_config() {
    let dir = Workdir::new();
    let (code, _, stderr) = run(ferrobank(&["config"], &dir.0).env("FERROBANK_LISTN", "x")).await;
    assert_ne!(code, 0);
    assert!(stderr.contains("listn"), "{stderr}");
    let (code, _, stderr) =
        run(ferrobank(&["config"], &dir.0).env("FERROBANK_TEST_REDIS_URL", "redis://x")).await;
    assert_eq!(code, 0, "{stderr}");
}

#[tokio::test]
async fn config_layers_defaults_file_env_and_flags_and_redacts_secrets() {
    let dir = Workdir::new();
    std::fs::write(
        dir.0.join("ferrobank.toml"),
        "listen = \"127.0.0.1:9000\"\n\
         database_url = \"postgres://bank:hunter2@db.internal:5432/ledger\"\n\
         [ledger]\nqueue_capacity = 11\nmax_batch_transfers = 22\n",
    )
    .unwrap();
    let (code, stdout, stderr) = run(ferrobank(&["config"], &dir.0)
        .env("FERROBANK_LEDGER__MAX_BATCH_TRANSFERS", "33")
        .env("FERROBANK_HTTP__MAX_BODY_BYTES", "4096"))
    .await;
    assert_eq!(code, 0, "{stderr}");
    // The file beats the defaults, the environment beats the file.
    assert!(stdout.contains("listen = \"127.0.0.1:9000\""), "{stdout}");
    assert!(stdout.contains("queue_capacity = 11"), "{stdout}");
    assert!(stdout.contains("max_batch_transfers = 33"), "{stdout}");
    assert!(stdout.contains("max_body_bytes = 4096"), "{stdout}");
    // Secrets never reach the terminal.
    assert!(!stdout.contains("hunter2"), "{stdout}");
    assert!(stdout.contains("postgres://bank:***@db.internal:5432/ledger"), "{stdout}");

    // A flag beats the environment.
    let (code, stdout, _) = run(ferrobank(&["config", "--data-dir", "elsewhere"], &dir.0)
        .env("FERROBANK_DATA_DIR", "from-env"))
    .await;
    assert_eq!(code, 0);
    assert!(stdout.contains("data_dir = \"elsewhere\""), "{stdout}");
}

#[tokio::test]
async fn invalid_configuration_is_refused_with_a_message() {
    let dir = Workdir::new();
    let cases: [(&str, &str); 3] = [
        ("FERROBANK_LEDGER__QUEUE_CAPACITY", "0"),
        ("FERROBANK_DATABASE_URL", "mysql://nope"),
        ("FERROBANK_LEDGER__NO_SUCH_KEY", "1"),
    ];
    for (name, value) in cases {
        let (code, _, stderr) = run(ferrobank(&["config"], &dir.0).env(name, value)).await;
        assert_ne!(code, 0, "{name}={value} was accepted");
        assert!(stderr.starts_with("error:"), "{name}: {stderr}");
    }
    let (code, _, stderr) =
        run(&mut ferrobank(&["config", "--config", "missing.toml"], &dir.0)).await;
    assert_ne!(code, 0);
    assert!(stderr.contains("missing.toml"), "{stderr}");
}

on_both_backends!(serve_refuses_a_schema_it_does_not_know);

async fn serve_refuses_a_schema_it_does_not_know(backend: Backend) {
    let dir = Workdir::new();
    let db = TestDatabase::new(backend).await;
    // Not migrated: refused, with a hint.
    let (code, _, stderr) = run(&mut ferrobank(
        &["serve", "--listen", "127.0.0.1:0", "--database-url", &db.url],
        &dir.0,
    ))
    .await;
    assert_ne!(code, 0);
    assert!(stderr.contains("ferrobank migrate"), "{stderr}");
    // Newer than this binary: refused by serve and by migrate.
    let store = db.store().await;
    let pool = sqlx::AnyPool::connect(&db.url).await.unwrap();
    pool.execute(
        "INSERT INTO ferrobank_schema (version, name, applied_at_ms) VALUES (999, 'future', 0)",
    )
    .await
    .unwrap();
    pool.close().await;
    store.close().await;
    for args in [
        vec!["serve", "--listen", "127.0.0.1:0", "--database-url", &db.url],
        vec!["migrate", "--database-url", &db.url],
    ] {
        let (code, _, stderr) = run(&mut ferrobank(&args, &dir.0)).await;
        assert_ne!(code, 0, "{args:?} started on schema 999");
        assert!(stderr.contains("999"), "{args:?}: {stderr}");
    }
}

on_both_backends!(ledger_verify_exits_non_zero_with_details_on_a_mismatch);

async fn ledger_verify_exits_non_zero_with_details_on_a_mismatch(backend: Backend) {
    let dir = Workdir::new();
    let db = TestDatabase::new(backend).await;
    let store = std::sync::Arc::new(db.store().await);
    let (ledger, writer) = LedgerService::start(
        store.clone(),
        std::sync::Arc::new(SystemClock),
        LedgerLimits::default(),
    );
    let eur = Currency::parse("EUR").unwrap();
    let (a, b) = (AccountId(Uuid::new_v4()), AccountId(Uuid::new_v4()));
    for id in [a, b] {
        let new = NewAccount {
            id,
            currency: eur,
            code: 1,
            owner: "o".into(),
            flags: AccountFlags::default(),
        };
        ledger.open_account(new).await.unwrap();
    }
    let transfer = NewTransfer {
        id: TransferId(Uuid::new_v4()),
        debit_account_id: Some(a),
        credit_account_id: Some(b),
        amount: Some(Amount::new(700).unwrap()),
        currency: Some(eur),
        code: 1,
        kind: TransferKind::Posted,
        linked: false,
    };
    assert!(ledger.create_transfers(vec![transfer]).await.unwrap()[0].is_ok());
    drop(ledger);
    writer.await.unwrap();

    let (code, stdout, stderr) =
        run(&mut ferrobank(&["ledger", "verify", "--database-url", &db.url], &dir.0)).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("OK"), "{stdout}");

    let pool = sqlx::AnyPool::connect(&db.url).await.unwrap();
    let sql =
        format!("UPDATE accounts SET credits_posted = credits_posted + 5 WHERE id = '{}'", b.0);
    pool.execute(sql.as_str()).await.unwrap();
    pool.close().await;
    let (code, stdout, _) =
        run(&mut ferrobank(&["ledger", "verify", "--database-url", &db.url], &dir.0)).await;
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains(&format!("MISMATCH account {}", b.0)), "{stdout}");
    assert!(stdout.contains("MISMATCH ledger 978"), "{stdout}");
    store.close().await;
}

/// `ferrobank realm import`: first import, an idempotent re-import, a dry run that shows the
/// diff and changes nothing, the declarative update, and a refused realm.
#[tokio::test]
async fn realm_import_is_declarative_and_dry_run_shows_the_diff() {
    let dir = Workdir::new();
    let realm_file =
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/keycloak/banking-realm.json");
    let import = |file: &str, dry_run: bool| {
        let mut args = vec!["realm", "import", file, "--data-dir", "data"];
        if dry_run {
            args.push("--dry-run");
        }
        let mut command = ferrobank(&args, &dir.0);
        command.env("FERROBANK_IDENTITY__DEV_CLIENT_SECRET", "cli-test-secret-0123456789");
        command
    };
    let (code, out, err) = run(&mut import(realm_file, false)).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("+ realm banking"), "{out}");
    assert!(out.contains("generated user admin password"), "{out}");
    assert!(!out.contains("client banking-web-app secret"), "configured secrets are not generated");
    assert!(!out.contains("cli-test-secret"), "a secret from the environment is not printed");
    let (code, out, _) = run(&mut import(realm_file, false)).await;
    assert_eq!(code, 0);
    assert!(out.contains("up to date"), "re-import of the same file changes nothing: {out}");

    let mut realm: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(realm_file).unwrap()).unwrap();
    realm["accessTokenLifespan"] = 600.into();
    realm["roles"]["realm"].as_array_mut().unwrap().push(serde_json::json!({"name": "auditor"}));
    realm["groups"].as_array_mut().unwrap().retain(|g| g["name"] != "Loan Officers");
    for user in realm["users"].as_array_mut().unwrap() {
        user["groups"].as_array_mut().unwrap().retain(|g| g != "/Loan Officers");
    }
    realm["fooBar"] = true.into();
    let changed = dir.0.join("changed.json");
    std::fs::write(&changed, realm.to_string()).unwrap();
    let changed = changed.to_str().unwrap();
    for _ in 0..2 {
        let (code, out, err) = run(&mut import(changed, true)).await;
        assert_eq!(code, 0, "{out}\n{err}");
        assert!(out.contains("would change"), "{out}");
        assert!(out.contains("~ settings.access_token_s: 300 -> 600"), "{out}");
        assert!(out.contains("+ roles.auditor"), "{out}");
        assert!(out.contains("- groups./Loan Officers"), "{out}");
        assert!(err.contains("fooBar"), "unknown fields are reported: {err}");
    }
    let (code, out, _) = run(&mut import(changed, false)).await;
    assert_eq!(code, 0);
    assert!(out.contains("changed"), "{out}");
    let (_, out, _) = run(&mut import(changed, true)).await;
    assert!(out.contains("up to date"), "{out}");

    realm["clients"][0]["implicitFlowEnabled"] = true.into();
    std::fs::write(dir.0.join("bad.json"), realm.to_string()).unwrap();
    let (code, _, err) = run(&mut import(dir.0.join("bad.json").to_str().unwrap(), false)).await;
    assert_ne!(code, 0);
    assert!(err.contains("implicitFlowEnabled"), "{err}");
}

/// Starts `ferrobank serve <roles>` and returns the child and its base URL.
async fn serve_role(
    dir: &Workdir,
    args: &[&str],
    env: &[(&str, &str)],
) -> (tokio::process::Child, String) {
    use tokio::io::AsyncBufReadExt as _;
    let mut command = ferrobank(args, &dir.0);
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let address = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.ok().flatten() {
            let up = ["ferrobank is up on ", "ferrobank gateway is up on "];
            if let Some(address) = up.iter().find_map(|prefix| line.strip_prefix(prefix)) {
                return address.trim().to_owned();
            }
        }
        panic!("{args:?} exited before it was up");
    })
    .await
    .unwrap();
    // Keep reading stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, address)
}

/// A client of the mesh: trusts the CA of `pki` and presents the certificate of `role`.
fn mesh_client(pki: &std::path::Path, role: &str) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(pki.join("ca.pem")).unwrap()).unwrap();
    let mut pem = std::fs::read(pki.join(format!("{role}.pem"))).unwrap();
    pem.extend(std::fs::read(pki.join(format!("{role}.key"))).unwrap());
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .identity(reqwest::Identity::from_pem(&pem).unwrap())
        .build()
        .unwrap()
}

/// Split mode as deployed: `ferrobank certs`, then `serve identity` and `serve accounts`
/// speaking mutual TLS only (deploy/istio's PeerAuthentication is STRICT) and judging
/// requests with their own workload's policies, and `serve gateway` in front of both,
/// calling them with the ingress gateway's certificate. The accounts role trusts the
/// identity role through its issuer URL alone (reached through the gateway).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_and_accounts_run_as_separate_roles_over_mutual_tls() {
    let dir = Workdir::new();
    let (code, _, stderr) = run(&mut ferrobank(&["certs", "--dir", "pki"], &dir.0)).await;
    assert_eq!(code, 0, "{stderr}");
    let pki = dir.0.join("pki");
    let certs = ("FERROBANK_MESH__CERTS_DIR", "pki");
    let secret = "split-mode-secret-0123456789";
    let free_port = || {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("127.0.0.1:{}", listener.local_addr().unwrap().port())
    };
    let (edge_addr, accounts_addr) = (free_port(), free_port());
    let public_url = format!("http://{edge_addr}");
    let issuer = format!("{public_url}/realms/banking");

    // Without certificates a role refuses to start, naming the PeerAuthentication.
    let (code, _, err) = run(&mut ferrobank(
        &["serve", "identity", "--migrate", "--listen", "127.0.0.1:0", "--data-dir", "idp0"],
        &dir.0,
    ))
    .await;
    assert_ne!(code, 0);
    assert!(
        err.contains("PeerAuthentication banking-system/default") && err.contains("STRICT"),
        "{err}"
    );

    let (_identity, idp) = serve_role(
        &dir,
        &["serve", "identity", "--migrate", "--listen", "127.0.0.1:0", "--data-dir", "idp"],
        &[
            certs,
            ("FERROBANK_IDENTITY__DEV_CLIENT_SECRET", secret),
            ("FERROBANK_IDENTITY__PUBLIC_URL", &public_url),
        ],
    )
    .await;
    let api = format!("https://{accounts_addr}");
    // The edge first: the accounts role reads the issuer's keys through it at start.
    let (_gateway, edge) = serve_role(
        &dir,
        &["serve", "gateway", "--listen", &edge_addr],
        &[
            certs,
            ("FERROBANK_AUTH__ISSUER", &issuer),
            ("FERROBANK_GATEWAY__UPSTREAM", &api),
            ("FERROBANK_GATEWAY__UPSTREAMS__KEYCLOAK", &idp),
        ],
    )
    .await;
    let (_accounts, served) = serve_role(
        &dir,
        &["serve", "accounts", "--migrate", "--listen", &accounts_addr, "--data-dir", "ledger"],
        &[certs, ("FERROBANK_AUTH__ISSUER", &issuer)],
    )
    .await;
    assert_eq!(served, api);
    assert!(idp.starts_with("https://"), "{idp}");

    // A token from the identity role, through the edge (edge -> identity over mTLS).
    let http = reqwest::Client::new();
    let token: serde_json::Value = http
        .post(format!("{edge}/realms/banking/protocol/openid-connect/token"))
        .basic_auth("banking-api-gateway", Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["access_token"].as_str().unwrap();
    let status = |request: reqwest::RequestBuilder| async move {
        let response = request.send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    };
    let path = format!("/api/accounts/{}", Uuid::now_v7());
    assert_eq!(status(http.get(format!("{edge}{path}"))).await.0, 403, "no token");
    assert_eq!(
        status(http.get(format!("{edge}{path}")).bearer_auth(token)).await.0,
        403,
        "no role"
    );

    // Straight to the accounts role: plaintext and certificate-less clients are refused at
    // the handshake; a mesh peer is judged by the accounts-service policies (the token is
    // verified with the identity role's keys, read through the edge).
    assert!(http.get(format!("{}{path}", api.replacen("https", "http", 1))).send().await.is_err());
    let no_cert = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(pki.join("ca.pem")).unwrap()).unwrap(),
        )
        .build()
        .unwrap();
    assert!(no_cert.get(format!("{api}/health")).send().await.is_err());
    let as_gateway = mesh_client(&pki, "gateway");
    assert_eq!(status(as_gateway.get(format!("{api}/health"))).await.0, 200);
    let denied = (403, "RBAC: access denied".to_owned());
    assert_eq!(status(as_gateway.get(format!("{api}{path}"))).await, denied, "no token");
    assert_eq!(status(as_gateway.get(format!("{api}{path}")).bearer_auth(token)).await, denied);
    assert_eq!(
        status(as_gateway.get(format!("{api}{path}")).bearer_auth(format!("{token}x"))).await,
        (401, "Jwt verification fails".to_owned())
    );
    // Each process serves only its role, and its policies allow nothing of the other's.
    let as_payments = mesh_client(&pki, "payments");
    let discovery = "/realms/banking/.well-known/openid-configuration";
    assert_eq!(status(as_payments.get(format!("{idp}{discovery}"))).await.0, 200);
    assert_eq!(status(as_payments.get(format!("{idp}{path}"))).await, denied);
    assert_eq!(status(as_payments.get(format!("{api}{discovery}"))).await, denied);

    // The accounts role alone cannot guess whom to trust: it refuses to start.
    let (code, _, err) = run(ferrobank(
        &["serve", "accounts", "--migrate", "--listen", "127.0.0.1:0", "--data-dir", "ledger2"],
        &dir.0,
    )
    .env(certs.0, certs.1))
    .await;
    assert_ne!(code, 0);
    assert!(err.contains("[auth] issuer"), "{err}");
}

#[tokio::test]
async fn certs_issues_a_ca_and_a_certificate_per_role_and_keeps_an_existing_ca() {
    let dir = Workdir::new();
    let pki = dir.0.join("pki");
    let (code, stdout, stderr) = run(&mut ferrobank(&["certs", "--dir", "pki"], &dir.0)).await;
    assert_eq!(code, 0, "{stderr}");
    for role in ferrobank::certs::ROLES {
        for file in [format!("{role}.pem"), format!("{role}.key")] {
            assert!(pki.join(&file).is_file(), "{file}");
        }
        // The gateway is Istio's ingress gateway, as deploy/istio's `principals` name it.
        let id = match role {
            "gateway" => {
                "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"
                    .to_owned()
            }
            role => format!("spiffe://cluster.local/ns/banking-system/sa/{role}"),
        };
        assert!(stdout.contains(&format!("{id}: ")), "{stdout}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(pki.join("ca.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // The files are what the roles load.
    ferrobank_adapters::mtls::server_config(&pki, "accounts").unwrap();
    ferrobank_adapters::mtls::client_config(&pki, "gateway").unwrap();

    // A second run keeps the CA (and everything it signed) unless forced.
    let ca = std::fs::read(pki.join("ca.pem")).unwrap();
    let (code, _, stderr) = run(&mut ferrobank(&["certs", "--dir", "pki"], &dir.0)).await;
    assert_ne!(code, 0);
    assert!(stderr.contains("already exists") && stderr.contains("--force"), "{stderr}");
    assert_eq!(std::fs::read(pki.join("ca.pem")).unwrap(), ca);
    let force = ["--force", "--trust-domain", "bank.example", "--namespace", "prod"];
    let args = [&["certs", "--dir", "pki"][..], &force[..]].concat();
    let (code, stdout, stderr) = run(&mut ferrobank(&args, &dir.0)).await;
    assert_eq!(code, 0, "{stderr}");
    assert_ne!(std::fs::read(pki.join("ca.pem")).unwrap(), ca);
    assert!(stdout.contains("spiffe://bank.example/ns/prod/sa/web"), "{stdout}");

    // Without --dir: the `certs` folder of the data directory.
    let (code, _, stderr) = run(&mut ferrobank(&["certs", "--data-dir", "state"], &dir.0)).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(dir.0.join("state/certs/ca.pem").is_file());
}

fn audit_entry(i: i64) -> ferrobank_domain::audit::NewAuditEntry {
    use ferrobank_domain::audit::{AuditAction, AuditActor, AuditOutcome, NewAuditEntry};
    NewAuditEntry::new(
        Uuid::now_v7(),
        1_700_000_000_000 + i,
        AuditActor::subject("alice").unwrap(),
        AuditAction::parse("payment.created").unwrap(),
        format!("payment/{i}"),
        AuditOutcome::Success,
        serde_json::json!({ "amount_minor": i }),
    )
    .unwrap()
}

on_both_backends!(audit_verify_passes_then_names_a_deleted_record);

/// `ferrobank audit verify` on the SQL database: OK with the count, then exit 1 naming the
/// record deleted behind the service's back.
async fn audit_verify_passes_then_names_a_deleted_record(backend: Backend) {
    use ferrobank_application::AuditLog;
    let dir = Workdir::new();
    let db = TestDatabase::new(backend).await;
    let store = db.store().await;
    for i in 0..5 {
        store.append(audit_entry(i)).await.unwrap();
    }
    let verify = ["audit", "verify", "--database-url", &db.url];
    let (code, stdout, stderr) = run(&mut ferrobank(&verify, &dir.0)).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("audit trail OK: 5 records"), "{stdout}");

    let pool = sqlx::AnyPool::connect(&db.url).await.unwrap();
    pool.execute("DELETE FROM audit_records WHERE seq = 3").await.unwrap();
    pool.close().await;
    let (code, stdout, _) = run(&mut ferrobank(&verify, &dir.0)).await;
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("record seq 3 was removed"), "{stdout}");
    store.close().await;
}

/// The same with the audit trail in MongoDB (`FERROBANK_TEST_MONGO_URL`, started by
/// scripts/test.sh): `--mongo-url` and `--mongo-database` find it.
#[tokio::test]
async fn audit_verify_reads_mongodb() {
    use ferrobank_adapters::audit::{MongoAuditLog, MongoAuditOptions};
    use ferrobank_application::AuditLog;
    let url = std::env::var("FERROBANK_TEST_MONGO_URL")
        .unwrap_or_else(|_| "mongodb://127.0.0.1:27017/?directConnection=true".into());
    let database = format!("fbt_{}", Uuid::new_v4().simple());
    let options = MongoAuditOptions { database: database.clone(), ..MongoAuditOptions::default() };
    let log = MongoAuditLog::connect(&url, options).await.unwrap();
    for i in 0..3 {
        log.append(audit_entry(i)).await.unwrap();
    }
    let dir = Workdir::new();
    let verify = ["audit", "verify", "--mongo-url", &url, "--mongo-database", &database];
    let (code, stdout, stderr) = run(&mut ferrobank(&verify, &dir.0)).await;
    let client = mongodb::Client::with_uri_str(&url).await.unwrap();
    let records = client.database(&database).collection::<mongodb::bson::Document>("audit_records");
    records.delete_one(mongodb::bson::doc! { "_id": 2_i64 }).await.unwrap();
    let (broken_code, broken_stdout, _) = run(&mut ferrobank(&verify, &dir.0)).await;
    client.database(&database).drop().await.unwrap();

    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("audit trail OK: 3 records"), "{stdout}");
    assert_eq!(broken_code, 1, "{broken_stdout}");
    assert!(broken_stdout.contains("record seq 2 was removed"), "{broken_stdout}");
}

/// A row altered in place (a resource rewritten with SQL) is named by `ferrobank audit
/// verify`, which finds the database like every command (`--data-dir`).
#[tokio::test]
async fn audit_verify_names_a_row_altered_in_sql() {
    use ferrobank_application::AuditLog;
    let dir = Workdir::new();
    let config = ferrobank::config::Config {
        data_dir: dir.0.join("data"),
        ..ferrobank::config::Config::default()
    };
    let store = ferrobank::cli::open_store(&config, true).await.unwrap();
    let mut appended = Vec::new();
    for i in 0..4 {
        appended.push(store.append(audit_entry(i)).await.unwrap());
    }
    store.close().await;
    let pool = sqlx::AnyPool::connect(&config.effective_database_url()).await.unwrap();
    pool.execute("UPDATE audit_records SET resource = 'payment/forged' WHERE seq = 2")
        .await
        .unwrap();
    pool.close().await;
    let verify = ["audit", "verify", "--data-dir", "data"];
    let (code, stdout, stderr) = run(&mut ferrobank(&verify, &dir.0)).await;
    assert_eq!(code, 1, "{stdout}{stderr}");
    let named = format!("record seq 2 (id {}) was altered", appended[1].id);
    assert!(stdout.contains(&named), "{stdout}");
}

/// `[audit] mongo_url` from the environment (as `up` reads it) is where `audit verify`
/// looks, without any flag.
#[tokio::test]
async fn audit_verify_follows_the_audit_config_to_mongodb() {
    use ferrobank_adapters::audit::{MongoAuditLog, MongoAuditOptions};
    use ferrobank_application::AuditLog;
    let url = std::env::var("FERROBANK_TEST_MONGO_URL")
        .unwrap_or_else(|_| "mongodb://127.0.0.1:27017/?directConnection=true".into());
    let database = format!("fbt_{}", Uuid::new_v4().simple());
    let options = MongoAuditOptions { database: database.clone(), ..MongoAuditOptions::default() };
    let log = MongoAuditLog::connect(&url, options).await.unwrap();
    for i in 0..2 {
        log.append(audit_entry(i)).await.unwrap();
    }
    let dir = Workdir::new();
    let (code, stdout, stderr) = run(ferrobank(&["audit", "verify"], &dir.0)
        .env("FERROBANK_AUDIT__MONGO_URL", &url)
        .env("FERROBANK_AUDIT__MONGO_DATABASE", &database))
    .await;
    let client = mongodb::Client::with_uri_str(&url).await.unwrap();
    client.database(&database).drop().await.unwrap();
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("audit trail OK: 2 records"), "{stdout}");
}
