//! Interoperability of the built-in OpenID provider with a relying party it was not written
//! with: pyoidc (PyPI `oic`), driven by `tests/interop/oic-rp/rp.py`, against the real
//! binary (`ferrobank up`). pyoidc discovers the provider, builds the authorization request
//! (PKCE S256, state, nonce), parses the response (state, RFC 9207 `iss`), exchanges the
//! code (client_secret_basic, then client_secret_post), verifies the ID tokens (signature
//! against the JWKS, iss, aud, exp, nonce, at_hash), reads userinfo, refreshes (rotation,
//! reuse refused) and logs out (RP-initiated, id_token_hint, state); requests without PKCE
//! or with PKCE `plain` come back to it as `invalid_request`. The browser part (login form,
//! cookies) is played by `requests`.
//!
//! Needs `python3` and the `oic` package, which `./scripts/test.sh` installs.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use common::{TEST_CLIENT_SECRET, TEST_PASSWORD, client, ferrobank, poll_until};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use uuid::Uuid;

/// The relying party's script, from the workspace root.
const RP_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/interop/oic-rp/rp.py");
const SETUP_HINT: &str = "run ./scripts/test.sh once (it pip-installs \
    tests/interop/oic-rp/requirements.txt), or `python3 -m pip install -r \
    tests/interop/oic-rp/requirements.txt`";
/// How long `ferrobank up` may take to migrate, import the realm and listen, on a loaded
/// 2-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// The whole pyoidc scenario: a dozen requests, two argon2 password checks.
const RP_TIMEOUT: Duration = Duration::from_secs(180);
const CLIENT_ID: &str = "banking-web-app";
const USERNAME: &str = "alice";
/// Registered for `banking-web-app` (`http://localhost:3000/*`); nothing listens there:
/// the script stops at the redirect.
const REDIRECT_URI: &str = "http://localhost:3000/callback";
const POST_LOGOUT_REDIRECT_URI: &str = "http://localhost:3000/logged-out";

/// Checks the script must report as passed: the brief of this test, so that a script that
/// stopped checking something cannot pass.
const REQUIRED_CHECKS: &[&str] = &[
    "discovery_issuer",
    "jwks_loaded",
    "login_rfc9207_iss_present",
    "login_state",
    "login_token_exchange",
    "login_id_token_verified",
    "login_at_hash",
    "login_forged_signature_refused",
    "rfc9207_wrong_iss_refused",
    "userinfo_sub",
    "refresh_rotated",
    "refresh_reuse_invalid_grant",
    "sso_without_form",
    "sso_token_exchange",
    "sso_id_token_verified",
    "logout_redirect",
    "logout_state",
    "logout_refresh_invalid_grant",
    "pkce_plain_invalid_request",
    "pkce_missing_invalid_request",
];

/// A scratch directory (working directory and data directory of the server), removed when
/// dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        let dir =
            std::env::temp_dir().join(format!("ferrobank-oic-rp-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `ferrobank up` as a child process, killed when dropped.
struct Up {
    // Declared first: the process dies before its directory is removed.
    _child: Child,
    /// `http://127.0.0.1:PORT`
    address: String,
    log: PathBuf,
    _scratch: Scratch,
}

impl Up {
    async fn start() -> Up {
        let scratch = Scratch::new();
        let log = scratch.0.join("up.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let data_dir = scratch.0.join("data");
        let args = ["up", "--listen", "127.0.0.1:0", "--data-dir", data_dir.to_str().unwrap()];
        let mut child = ferrobank(&args, &scratch.0)
            .env("FERROBANK_IDENTITY__DEV_PASSWORD", TEST_PASSWORD)
            .env("FERROBANK_IDENTITY__DEV_CLIENT_SECRET", TEST_CLIENT_SECRET)
            .env("FERROBANK_LOG__FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let found = tokio::time::timeout(START_TIMEOUT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(address) = line.strip_prefix("ferrobank is up on ") {
                    return Some(address.trim().to_owned());
                }
            }
            None
        })
        .await;
        let Ok(Some(address)) = found else {
            let _ = child.start_kill();
            panic!("`ferrobank up` did not come up; its log:\n{}", tail(&log));
        };
        // Keep reading stdout so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let up = Up { _child: child, address, log, _scratch: scratch };
        let http = client();
        let discovery = format!("{}/.well-known/openid-configuration", up.issuer());
        poll_until("the provider's discovery document", START_TIMEOUT, || {
            let request = http.get(&discovery).send();
            async move { request.await.ok().filter(|r| r.status().is_success()) }
        })
        .await;
        up
    }

    fn issuer(&self) -> String {
        format!("{}/realms/banking", self.address)
    }
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let start = text.len().saturating_sub(4_000);
    text.get(start..).unwrap_or(&text).to_owned()
}

/// Fails (never skips) when the relying party cannot run here.
async fn require_pyoidc() {
    let probe = Command::new("python3")
        .args(["-c", "import oic; print(oic.__version__)"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run `python3` ({e}): {SETUP_HINT}"));
    assert!(
        probe.status.success(),
        "the Python package `oic` (pyoidc) is missing: {SETUP_HINT}\n{}",
        String::from_utf8_lossy(&probe.stderr)
    );
}

async fn run_relying_party(issuer: &str) -> Output {
    let command = Command::new("python3")
        .arg(RP_SCRIPT)
        .args(["--issuer", issuer, "--client-id", CLIENT_ID, "--username", USERNAME])
        .args(["--redirect-uri", REDIRECT_URI])
        .args(["--post-logout-redirect-uri", POST_LOGOUT_REDIRECT_URI])
        // Secrets by environment, not on a command line every local user can read.
        .env("OIC_RP_CLIENT_SECRET", TEST_CLIENT_SECRET)
        .env("OIC_RP_PASSWORD", TEST_PASSWORD)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(RP_TIMEOUT, command)
        .await
        .unwrap_or_else(|_| panic!("rp.py did not finish within {RP_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("cannot run `python3 {RP_SCRIPT}` ({e}): {SETUP_HINT}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyoidc_logs_in_refreshes_and_logs_out_against_the_built_in_provider() {
    require_pyoidc().await;
    let up = Up::start().await;
    let output = run_relying_party(&up.issuer()).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report: Option<Value> =
        stdout.lines().rev().find_map(|line| serde_json::from_str(line).ok());
    let shown = || {
        let failed = report.as_ref().map(|r| {
            serde_json::to_string_pretty(&serde_json::json!({
                "failed": r["failed"],
                "stopped_at": r["stopped_at"],
            }))
            .unwrap()
        });
        format!(
            "pyoidc against the built-in provider: rp.py exited with {}\n{}\n\
             --- rp.py stdout:\n{stdout}\n--- rp.py stderr:\n{stderr}\n\
             --- the server's log (tail):\n{}",
            output.status,
            failed.unwrap_or_else(|| "rp.py printed no JSON result".into()),
            tail(&up.log)
        )
    };
    let Some(report) = report.as_ref() else { panic!("{}", shown()) };
    assert!(output.status.success() && report["ok"] == true, "{}", shown());
    let passed: Vec<&str> =
        report["passed"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    for check in REQUIRED_CHECKS {
        assert!(passed.contains(check), "rp.py did not run the check {check}\n{}", shown());
    }
    assert!(report["sub"].as_str().is_some_and(|s| !s.is_empty()), "{}", shown());
}
