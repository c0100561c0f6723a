//! Interoperability: the token validator against an independent, certified OpenID
//! provider (npm `oidc-provider`, run from `tests/interop/oidc-provider/server.mjs`).
//!
//! `tests/oidc.rs` checks the validator against tokens it shaped itself; here the tokens
//! come from a provider ferrobank does not control, through discovery, its JWKS and a
//! real `client_credentials` grant with an RFC 8707 resource indicator (so RFC 9068 JWT
//! access tokens), and the forgeries are built from those genuine tokens.
//!
//! Needs `node` and the provider's npm packages, which `./scripts/test.sh` installs.
//! Without them every test here fails saying so: a skipped interop test would look green.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ferrobank_adapters::oidc::{OidcConfig, TokenError, TokenValidator};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

// TEST-ONLY key the provider never published (see fixtures/README.md).
const ATTACKER_RSA: &[u8] = include_bytes!("fixtures/test-only-rsa-attacker.pem");

// As configured in server.mjs.
const CLIENT_ID: &str = "ferrobank-interop";
const CLIENT_SECRET: &str = "test-only-interop-secret-not-a-real-one";
const BANKING_API: &str = "urn:ferrobank:banking-api";
const OTHER_API: &str = "urn:ferrobank:other-api";
const AUDIENCE: &str = "banking-api";

/// How long node may take to load oidc-provider and bind, on a loaded 2-core machine.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

const SETUP_HINT: &str = "run ./scripts/test.sh once (it installs Node.js and the test \
    provider's packages), or `npm ci` in tests/interop/oidc-provider";

/// A running `server.mjs`, killed when dropped.
struct Provider {
    issuer: String,
    http: reqwest::Client,
    _child: Child,
}

impl Provider {
    async fn start() -> Provider {
        let dir =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop/oidc-provider");
        assert!(
            dir.join("node_modules/oidc-provider/package.json").is_file(),
            "the interop provider's npm packages are missing ({}/node_modules): {SETUP_HINT}",
            dir.display()
        );
        let mut child = Command::new("node")
            .arg("server.mjs")
            .arg("0") // a random free port; the server prints the one it got
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            // oidc-provider's development warnings; shown with a failing test's output.
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run `node` ({e}): {SETUP_HINT}"));

        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
        let issuer = loop {
            match tokio::time::timeout_at(deadline, lines.next_line()).await {
                Ok(Ok(Some(line))) => match line.strip_prefix("listening ") {
                    Some(issuer) => break issuer.trim().to_owned(),
                    None => eprintln!("oidc-provider: {line}"),
                },
                Ok(Ok(None)) => {
                    let status = child.wait().await;
                    panic!("server.mjs exited before listening ({status:?}); see its stderr above")
                }
                Ok(Err(e)) => panic!("reading server.mjs output: {e}"),
                Err(_) => panic!("server.mjs did not listen within {STARTUP_TIMEOUT:?}"),
            }
        };
        // Keep draining: a full stdout pipe would block node's synchronous writes.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("oidc-provider: {line}");
            }
        });
        let http = reqwest::Client::builder().timeout(HTTP_TIMEOUT).build().unwrap();
        Provider { issuer, http, _child: child }
    }

    async fn get_json(&self, url: &str) -> Value {
        let response = self.http.get(url).send().await.unwrap();
        assert!(response.status().is_success(), "GET {url}: {}", response.status());
        response.json().await.unwrap()
    }

    /// An access token from the provider's token endpoint (client_credentials, RFC 6749
    /// §4.4) for `resource` (RFC 8707).
    async fn token(&self, resource: &str, scope: &str) -> String {
        let discovery =
            self.get_json(&format!("{}/.well-known/openid-configuration", self.issuer)).await;
        let endpoint = discovery["token_endpoint"].as_str().unwrap();
        let body = form(&[
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT_ID),
            ("client_secret", CLIENT_SECRET),
            ("resource", resource),
            ("scope", scope),
        ]);
        let response = self
            .http
            .post(endpoint)
            .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let answer: Value = response.json().await.unwrap();
        assert_eq!(status, StatusCode::OK, "token endpoint refused: {answer}");
        assert_eq!(answer["token_type"], "Bearer", "{answer}");
        answer["access_token"].as_str().unwrap().to_owned()
    }

    /// The provider's published signing key (the JWK) for `kid`.
    async fn jwk(&self, kid: &str) -> Value {
        let discovery =
            self.get_json(&format!("{}/.well-known/openid-configuration", self.issuer)).await;
        let jwks = self.get_json(discovery["jwks_uri"].as_str().unwrap()).await;
        jwks["keys"].as_array().unwrap().iter().find(|key| key["kid"] == kid).unwrap().clone()
    }

    fn validator(&self) -> TokenValidator {
        TokenValidator::new(&OidcConfig::new(self.issuer.clone(), vec![AUDIENCE.to_owned()]))
            .unwrap()
    }
}

/// `application/x-www-form-urlencoded`, percent-encoding all but the unreserved characters.
fn form(pairs: &[(&str, &str)]) -> String {
    let encode = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    char::from(b).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    pairs.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect::<Vec<_>>().join("&")
}

/// A compact JWS split into its decoded header and claims and its raw segments.
struct Parts {
    header: Value,
    claims: Value,
    header_b64: String,
    claims_b64: String,
    signature_b64: String,
}

fn parts(token: &str) -> Parts {
    let mut segments = token.split('.');
    let (Some(header_b64), Some(claims_b64), Some(signature_b64), None) =
        (segments.next(), segments.next(), segments.next(), segments.next())
    else {
        panic!("not a compact JWS: {token}");
    };
    let decode = |segment: &str| -> Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(segment).unwrap()).unwrap()
    };
    Parts {
        header: decode(header_b64),
        claims: decode(claims_b64),
        header_b64: header_b64.to_owned(),
        claims_b64: claims_b64.to_owned(),
        signature_b64: signature_b64.to_owned(),
    }
}

fn b64(json: &Value) -> String {
    URL_SAFE_NO_PAD.encode(json.to_string())
}

/// An RS256 header as the provider writes it, naming `kid`.
fn at_jwt_header(kid: &str) -> Header {
    let mut header = Header::new(Algorithm::RS256);
    header.typ = Some("at+jwt".to_owned());
    header.kid = Some(kid.to_owned());
    header
}

/// The PEM of a public JWK, as a verifier would hold it, converted by node's own crypto.
async fn public_pem(jwk: &Value) -> String {
    let script = "const c = require('node:crypto'); process.stdout.write(c.createPublicKey(\
        { key: JSON.parse(process.argv[1]), format: 'jwk' }).export({ type: 'spki', format: 'pem' }))";
    let output = Command::new("node").arg("-e").arg(script).arg(jwk.to_string()).output().await;
    let output = output.unwrap_or_else(|e| panic!("cannot run `node` ({e}): {SETUP_HINT}"));
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

async fn refused(validator: &TokenValidator, token: &str) -> TokenError {
    validator.validate(token).await.unwrap_err()
}

#[tokio::test]
async fn a_genuine_oidc_provider_token_becomes_a_principal_for_its_audience_only() {
    let provider = Provider::start().await;
    let validator = provider.validator();
    let token = provider.token(BANKING_API, "accounts:read").await;

    // What the provider really sent: an RFC 9068 JWT access token.
    let Parts { header, claims, .. } = parts(&token);
    assert_eq!(header["typ"], "at+jwt", "{header}");
    assert_eq!(header["alg"], "RS256", "{header}");
    assert!(header["kid"].is_string(), "{header}");
    assert_eq!(claims["aud"], AUDIENCE, "{claims}");
    assert_eq!(claims["client_id"], CLIENT_ID, "{claims}");

    let principal = validator.validate(&token).await.unwrap();
    // RFC 9068 §2.2: a token of a client acting for itself has the client as its subject.
    assert_eq!(principal.subject, CLIENT_ID);
    assert_eq!(principal.client_id.as_deref(), Some(CLIENT_ID));
    assert_eq!(principal.issuer, provider.issuer);
    assert!(principal.has_scope("accounts:read"));
    assert!(!principal.has_scope("transfers:write"), "only the requested scope is granted");
    // No Keycloak `realm_access`: a standard token grants no ferrobank role.
    assert!(principal.roles.is_empty(), "{:?}", principal.roles);

    // A genuine token of the same provider, signed by the same key, for another service.
    let other = provider.token(OTHER_API, "reports:read").await;
    assert_eq!(parts(&other).claims["aud"], "other-api");
    assert_eq!(refused(&validator, &other).await, TokenError::WrongAudience);
    // ...which that service itself accepts: the refusal is the audience and nothing else.
    let other_service = TokenValidator::new(&OidcConfig::new(
        provider.issuer.clone(),
        vec!["other-api".to_owned()],
    ))
    .unwrap();
    other_service.validate(&other).await.unwrap();
}

#[tokio::test]
async fn forgeries_built_from_a_genuine_token_are_refused() {
    let provider = Provider::start().await;
    let validator = provider.validator();
    let token = provider.token(BANKING_API, "accounts:read transfers:write").await;
    validator.validate(&token).await.unwrap();
    let genuine = parts(&token);
    let kid = genuine.header["kid"].as_str().unwrap().to_owned();

    // The same claims re-signed with a key the provider never published, under its kid.
    let attacker_key = EncodingKey::from_rsa_pem(ATTACKER_RSA).unwrap();
    let resigned = jsonwebtoken::encode(&at_jwt_header(&kid), &genuine.claims, &attacker_key);
    assert_eq!(refused(&validator, &resigned.unwrap()).await, TokenError::BadSignature);

    // `alg: none`, without a signature and with the genuine one (RFC 8725 §2.1).
    let none = b64(&json!({ "alg": "none", "typ": "at+jwt", "kid": kid }));
    for signature in ["", genuine.signature_b64.as_str()] {
        let unsigned = format!("{none}.{}.{signature}", genuine.claims_b64);
        assert_eq!(refused(&validator, &unsigned).await, TokenError::AlgorithmNotAllowed);
    }

    // HS256 keyed with the provider's public key, the RS/HS confusion (RFC 8725 §2.1):
    // once with the key as PEM, once with the JWK exactly as the JWKS publishes it.
    let jwk = provider.jwk(&kid).await;
    for secret in [public_pem(&jwk).await, jwk.to_string()] {
        let mut header = at_jwt_header(&kid);
        header.alg = Algorithm::HS256;
        let hmac = jsonwebtoken::encode(
            &header,
            &genuine.claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        );
        assert_eq!(refused(&validator, &hmac.unwrap()).await, TokenError::AlgorithmNotAllowed);
    }

    // The genuine header and signature over a changed subject.
    let mut claims = genuine.claims.clone();
    claims["sub"] = json!("someone-else");
    let tampered = format!("{}.{}.{}", genuine.header_b64, b64(&claims), genuine.signature_b64);
    assert_eq!(refused(&validator, &tampered).await, TokenError::BadSignature);

    // Truncated signatures.
    for cut in [1, 4, 8, genuine.signature_b64.len() / 2] {
        let truncated = &token[..token.len() - cut];
        assert_eq!(refused(&validator, truncated).await, TokenError::BadSignature, "cut {cut}");
    }

    // None of this disturbed the cached keys: the genuine token still passes.
    validator.validate(&token).await.unwrap();
}

#[tokio::test]
async fn a_jku_header_is_refused_and_its_url_never_fetched() {
    let provider = Provider::start().await;
    let validator = provider.validator();
    let token = provider.token(BANKING_API, "accounts:read").await;
    let genuine = parts(&token);
    let kid = genuine.header["kid"].as_str().unwrap().to_owned();

    // The attacker's key server: it publishes the attacker's key under the provider's kid
    // and counts every request it gets.
    let hits = Arc::new(AtomicUsize::new(0));
    let attacker_jwks = {
        let key = EncodingKey::from_rsa_pem(ATTACKER_RSA).unwrap();
        let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap();
        jwk.common.key_id = Some(kid.clone());
        json!({ "keys": [jwk] })
    };
    let app = Router::new()
        .fallback(|State((hits, jwks)): State<(Arc<AtomicUsize>, Value)>| async move {
            hits.fetch_add(1, Ordering::SeqCst);
            axum::Json(jwks)
        })
        .with_state((hits.clone(), attacker_jwks));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let jku_url = format!("http://{}/jwks", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    // The genuine keys are cached, so the provider's kid is known: only `jku` is wrong.
    validator.validate(&token).await.unwrap();
    let mut header = at_jwt_header(&kid);
    header.jku = Some(jku_url.clone());
    let key = EncodingKey::from_rsa_pem(ATTACKER_RSA).unwrap();
    let injected = jsonwebtoken::encode(&header, &genuine.claims, &key).unwrap();
    assert_eq!(parts(&injected).header["jku"], jku_url);
    assert_eq!(refused(&validator, &injected).await, TokenError::ForbiddenHeader("jku"));
    assert_eq!(hits.load(Ordering::SeqCst), 0, "the validator fetched a URL from a token header");

    // The listener does answer: zero hits means "never asked", not "could not connect".
    let probe = provider.http.get(&jku_url).send().await.unwrap();
    assert_eq!(probe.status(), StatusCode::OK);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}
