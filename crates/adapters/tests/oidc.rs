//! The token validator against a tiny test IdP on a random local port, and the attacks
//! of RFC 8725 §2 that it must refuse.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use ferrobank_adapters::oidc::{
    ConfigError, DiscoveryError, OidcConfig, SigningAlgorithm, TokenError, TokenValidator,
};
use ferrobank_domain::{CustomerTier, Role};
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode, get_current_timestamp};
use serde_json::{Value, json};

// TEST-ONLY keys (see fixtures/README.md).
const IDP_RSA: &[u8] = include_bytes!("fixtures/test-only-rsa-idp.pem");
const IDP_RSA_PUBLIC: &[u8] = include_bytes!("fixtures/test-only-rsa-idp.pub.pem");
const IDP_EC: &[u8] = include_bytes!("fixtures/test-only-ec-idp.pem");
const IDP_ED25519: &[u8] = include_bytes!("fixtures/test-only-ed25519-idp.pem");
const ATTACKER_RSA: &[u8] = include_bytes!("fixtures/test-only-rsa-attacker.pem");

const REALM_PATH: &str = "/realms/test";
const DISCOVERY_PATH: &str = "/realms/test/.well-known/openid-configuration";
const JWKS_PATH: &str = "/realms/test/protocol/openid-connect/certs";
const AUDIENCE: &str = "ferrobank-api";

/// A listener that records every request and answers what its state says.
struct Idp {
    base: String,
    state: Arc<IdpState>,
}

#[derive(Default)]
struct IdpState {
    base: String,
    jwks: Mutex<Value>,
    /// The `issuer` the discovery document claims; the real one when `None`.
    discovery_issuer: Mutex<Option<String>>,
    down: AtomicBool,
    hits: Mutex<HashMap<String, usize>>,
}

impl Idp {
    async fn start(jwks: Value) -> Idp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(IdpState {
            base: base.clone(),
            jwks: Mutex::new(jwks),
            ..IdpState::default()
        });
        let app = Router::new().fallback(serve).with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Idp { base, state }
    }

    fn issuer(&self) -> String {
        format!("{}{REALM_PATH}", self.base)
    }

    fn hits(&self, path: &str) -> usize {
        self.state.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    fn total_hits(&self) -> usize {
        self.state.hits.lock().unwrap().values().sum()
    }

    fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    fn publish(&self, jwks: Value) {
        *self.state.jwks.lock().unwrap() = jwks;
    }
}

async fn serve(State(state): State<Arc<IdpState>>, uri: Uri) -> Response {
    *state.hits.lock().unwrap().entry(uri.path().to_owned()).or_default() += 1;
    if state.down.load(Ordering::SeqCst) {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    match uri.path() {
        DISCOVERY_PATH => {
            let real = format!("{}{REALM_PATH}", state.base);
            let issuer = state.discovery_issuer.lock().unwrap().clone().unwrap_or(real.clone());
            axum::Json(json!({
                "issuer": issuer,
                "jwks_uri": format!("{}{JWKS_PATH}", state.base),
                "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            }))
            .into_response()
        }
        JWKS_PATH => axum::Json(state.jwks.lock().unwrap().clone()).into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

fn public_jwk(pem: &[u8], alg: Algorithm, kid: &str) -> Value {
    let key = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(pem).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(pem).unwrap(),
        _ => EncodingKey::from_rsa_pem(pem).unwrap(),
    };
    let mut jwk = Jwk::from_encoding_key(&key, alg).unwrap();
    jwk.common.key_id = Some(kid.to_owned());
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    serde_json::to_value(jwk).unwrap()
}

/// The IdP's JWKS as Keycloak publishes it: signing keys beside an encryption key.
fn idp_jwks() -> Value {
    let rsa = public_jwk(IDP_RSA, Algorithm::RS256, "rsa-1");
    let enc = json!({
        "kid": "enc-1", "kty": "RSA", "alg": "RSA-OAEP", "use": "enc",
        "n": rsa["n"], "e": rsa["e"],
    });
    let ed = public_jwk(IDP_ED25519, Algorithm::EdDSA, "ed-1");
    json!({ "keys": [rsa, public_jwk(IDP_EC, Algorithm::ES256, "ec-1"), ed, enc] })
}

fn config(idp: &Idp) -> OidcConfig {
    OidcConfig {
        jwks_refresh_min_interval_ms: 60_000,
        ..OidcConfig::new(idp.issuer(), vec![AUDIENCE.to_owned()])
    }
}

fn validator(config: &OidcConfig) -> Arc<TokenValidator> {
    Arc::new(TokenValidator::new(config).unwrap())
}

/// Claims shaped like a Keycloak access token, valid now.
fn claims(issuer: &str) -> Value {
    let now = get_current_timestamp();
    json!({
        "exp": now + 300, "iat": now, "jti": "c0ffee", "iss": issuer,
        "aud": ["account", AUDIENCE], "sub": "7d1c5f2a-user", "typ": "Bearer",
        "azp": "ferrobank-web", "sid": "s-1", "scope": "openid profile email",
        "preferred_username": "alice", "email": "alice@example.test",
        "realm_access": { "roles": ["customer", "loan-officer", "offline_access", "default-roles-test"] },
        "resource_access": {
            AUDIENCE: { "roles": ["risk-analyst"] },
            "other-client": { "roles": ["banking-admin"] },
        },
    })
}

fn header(alg: Algorithm, kid: &str) -> Header {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    header
}

fn sign(header: &Header, claims: &Value, pem: &[u8]) -> String {
    let key = match header.alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(pem).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(pem).unwrap(),
        Algorithm::HS256 => EncodingKey::from_secret(pem),
        _ => EncodingKey::from_rsa_pem(pem).unwrap(),
    };
    encode(header, claims, &key).unwrap()
}

fn rs256(claims: &Value) -> String {
    sign(&header(Algorithm::RS256, "rsa-1"), claims, IDP_RSA)
}

fn b64(json: &Value) -> String {
    b64_raw(&json.to_string())
}

fn b64_raw(raw: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

async fn refused(validator: &TokenValidator, token: &str) -> TokenError {
    validator.validate(token).await.unwrap_err()
}

#[tokio::test]
async fn a_keycloak_access_token_becomes_a_principal() {
    let idp = Idp::start(idp_jwks()).await;
    let validator = validator(&config(&idp));

    let principal = validator.validate(&rs256(&claims(&idp.issuer()))).await.unwrap();

    assert_eq!(principal.subject, "7d1c5f2a-user");
    assert_eq!(principal.username.as_deref(), Some("alice"));
    assert_eq!(principal.client_id.as_deref(), Some("ferrobank-web"));
    assert_eq!(principal.issuer, idp.issuer());
    // Realm roles plus this audience's client roles; unknown realm roles and another
    // client's roles grant nothing.
    assert_eq!(
        principal.roles.iter().copied().collect::<Vec<_>>(),
        vec![Role::LoanOfficer, Role::Customer, Role::RiskAnalyst]
    );
    assert!(!principal.has_role(Role::BankingAdmin));
    assert!(principal.has_scope("profile"));
    // A single-string `aud` is accepted too.
    let mut single = claims(&idp.issuer());
    single["aud"] = json!(AUDIENCE);
    validator.validate(&rs256(&single)).await.unwrap();
    // The keys were fetched once and are cached.
    assert_eq!(idp.hits(DISCOVERY_PATH), 1);
    assert_eq!(idp.hits(JWKS_PATH), 1);
}

#[tokio::test]
async fn the_tier_claim_becomes_the_principal_tier_only_when_it_names_a_known_tier() {
    let idp = Idp::start(idp_jwks()).await;
    let validator = validator(&config(&idp));
    let tier_of = |claim: Option<Value>| {
        let mut claims = claims(&idp.issuer());
        if let Some(claim) = claim {
            claims["tier"] = claim;
        }
        rs256(&claims)
    };
    let cases = [
        (None, None),
        (Some(json!("premium")), Some(CustomerTier::Premium)),
        (Some(json!("business")), Some(CustomerTier::Business)),
        (Some(json!("standard")), Some(CustomerTier::Standard)),
        // Unknown names, other spellings and other JSON types are no tier, and the token
        // stays valid: the customer gets the default limits, not an error.
        (Some(json!("platinum")), None),
        (Some(json!("Premium")), None),
        (Some(json!(["premium"])), None),
        (Some(json!(2)), None),
        (Some(Value::Null), None),
    ];
    for (claim, expected) in cases {
        let principal = validator.validate(&tier_of(claim.clone())).await.unwrap();
        assert_eq!(principal.tier, expected, "{claim:?}");
    }
}

#[tokio::test]
async fn alg_none_and_algorithms_off_the_allow_list_are_refused() {
    let idp = Idp::start(idp_jwks()).await;
    let validator = validator(&config(&idp));
    let body = b64(&claims(&idp.issuer()));

    for alg in ["none", "None", "NONE"] {
        let head = b64(&json!({ "alg": alg, "typ": "JWT", "kid": "rsa-1" }));
        for signature in ["", "c2ln"] {
            let token = format!("{head}.{body}.{signature}");
            assert_eq!(refused(&validator, &token).await, TokenError::AlgorithmNotAllowed);
        }
    }
    // HS256 with the IdP's public key as the HMAC secret (the RS/HS confusion, RFC 8725
    // §2.1): HMAC is not even configurable.
    let confused = sign(&header(Algorithm::HS256, "rsa-1"), &claims(&idp.issuer()), IDP_RSA_PUBLIC);
    assert_eq!(refused(&validator, &confused).await, TokenError::AlgorithmNotAllowed);
    // PS256 is a fine algorithm, but not one this service allows.
    let pss = sign(&header(Algorithm::PS256, "rsa-1"), &claims(&idp.issuer()), IDP_RSA);
    assert_eq!(refused(&validator, &pss).await, TokenError::AlgorithmNotAllowed);
    // A duplicated `alg` cannot mean one thing to the allow-list and another to the verifier.
    let dup = format!("{}.{body}.c2ln", b64_raw(r#"{"alg":"RS256","alg":"none","kid":"rsa-1"}"#));
    assert_eq!(refused(&validator, &dup).await, TokenError::Malformed);
    // None of these needed a key.
    assert_eq!(idp.total_hits(), 0);
}

#[tokio::test]
async fn es256_and_eddsa_are_selectable_and_keys_only_verify_their_own_algorithm() {
    let idp = Idp::start(idp_jwks()).await;
    let es = sign(&header(Algorithm::ES256, "ec-1"), &claims(&idp.issuer()), IDP_EC);

    let rs_only = validator(&config(&idp));
    assert_eq!(refused(&rs_only, &es).await, TokenError::AlgorithmNotAllowed);

    let both = validator(&OidcConfig {
        algorithms: vec![SigningAlgorithm::RS256, SigningAlgorithm::ES256],
        ..config(&idp)
    });
    both.validate(&es).await.unwrap();
    // An RS256 token naming the EC key's kid, and one naming the encryption key.
    let cross = sign(&header(Algorithm::RS256, "ec-1"), &claims(&idp.issuer()), IDP_RSA);
    assert_eq!(refused(&both, &cross).await, TokenError::KeyMismatch);
    let enc = sign(&header(Algorithm::RS256, "enc-1"), &claims(&idp.issuer()), IDP_RSA);
    assert_eq!(refused(&both, &enc).await, TokenError::UnknownKid);

    let ed = sign(&header(Algorithm::EdDSA, "ed-1"), &claims(&idp.issuer()), IDP_ED25519);
    assert_eq!(refused(&both, &ed).await, TokenError::AlgorithmNotAllowed);
    let eddsa =
        validator(&OidcConfig { algorithms: vec![SigningAlgorithm::EdDSA], ..config(&idp) });
    eddsa.validate(&ed).await.unwrap();
}

#[tokio::test]
async fn time_claims_are_checked_with_leeway() {
    let idp = Idp::start(idp_jwks()).await;
    let validator = validator(&config(&idp)); // leeway 30 s
    let now = get_current_timestamp();
    let with = |field: &str, value: u64| {
        let mut c = claims(&idp.issuer());
        c[field] = json!(value);
        rs256(&c)
    };

    assert_eq!(refused(&validator, &with("exp", now - 120)).await, TokenError::Expired);
    assert_eq!(refused(&validator, &with("nbf", now + 120)).await, TokenError::NotYetValid);
    assert_eq!(refused(&validator, &with("iat", now + 120)).await, TokenError::IssuedInFuture);
    // Within the leeway: a clock a few seconds apart is not an attack.
    validator.validate(&with("exp", now - 5)).await.unwrap();
    validator.validate(&with("nbf", now + 5)).await.unwrap();
    validator.validate(&with("iat", now + 5)).await.unwrap();
    // Required claims.
    for (claim, code) in [("exp", "exp"), ("iat", "iat"), ("sub", "sub"), ("aud", "aud")] {
        let mut c = claims(&idp.issuer());
        c.as_object_mut().unwrap().remove(claim);
        assert_eq!(refused(&validator, &rs256(&c)).await, TokenError::MissingClaim(code));
    }
}

#[tokio::test]
async fn issuer_audience_and_type_must_be_ours() {
    let idp = Idp::start(idp_jwks()).await;
    let validator = validator(&config(&idp));
    let with = |field: &str, value: Value| {
        let mut c = claims(&idp.issuer());
        c[field] = value;
        rs256(&c)
    };

    let other_realm = json!(format!("{}/realms/other", idp.base));
    assert_eq!(refused(&validator, &with("iss", other_realm)).await, TokenError::WrongIssuer);
    // Exact comparison: a trailing slash is another issuer.
    let slash = json!(format!("{}/", idp.issuer()));
    assert_eq!(refused(&validator, &with("iss", slash)).await, TokenError::WrongIssuer);
    let aud = json!(["account", "other-api"]);
    assert_eq!(refused(&validator, &with("aud", aud)).await, TokenError::WrongAudience);
    // Keycloak ID and refresh tokens are signed by the same key: only `typ` tells them apart.
    for typ in ["ID", "Refresh", "Logout"] {
        assert_eq!(refused(&validator, &with("typ", json!(typ))).await, TokenError::WrongType);
    }
    let mut logout = header(Algorithm::RS256, "rsa-1");
    logout.typ = Some("logout+jwt".to_owned());
    let token = sign(&logout, &claims(&idp.issuer()), IDP_RSA);
    assert_eq!(refused(&validator, &token).await, TokenError::WrongType);
}

#[tokio::test]
async fn signatures_must_come_from_the_published_key() {
    let idp = Idp::start(idp_jwks()).await;
    let validator = validator(&config(&idp));
    let good = rs256(&claims(&idp.issuer()));

    // A foreign key signing under the IdP's kid.
    let forged = sign(&header(Algorithm::RS256, "rsa-1"), &claims(&idp.issuer()), ATTACKER_RSA);
    assert_eq!(refused(&validator, &forged).await, TokenError::BadSignature);
    // Truncated signatures.
    for cut in [8, 4] {
        let truncated = &good[..good.len() - cut];
        assert_eq!(refused(&validator, truncated).await, TokenError::BadSignature, "cut {cut}");
    }
    // The IdP's signature over other claims.
    let (signed, signature) = good.rsplit_once('.').unwrap();
    let (head, _) = signed.split_once('.').unwrap();
    let mut admin = claims(&idp.issuer());
    admin["realm_access"]["roles"] = json!(["banking-admin"]);
    let swapped = format!("{head}.{}.{signature}", b64(&admin));
    assert_eq!(refused(&validator, &swapped).await, TokenError::BadSignature);
    // Shape.
    assert_eq!(refused(&validator, "").await, TokenError::Malformed);
    assert_eq!(refused(&validator, "a.b").await, TokenError::Malformed);
    assert_eq!(refused(&validator, &format!("{good}.x")).await, TokenError::Malformed);
    let no_kid = sign(&Header::new(Algorithm::RS256), &claims(&idp.issuer()), IDP_RSA);
    assert_eq!(refused(&validator, &no_kid).await, TokenError::MissingKid);
    validator.validate(&good).await.unwrap();
}

#[tokio::test]
async fn key_locations_in_the_header_are_refused_and_never_fetched() {
    let idp = Idp::start(idp_jwks()).await;
    // The attacker's own "IdP", publishing the attacker's key.
    let attacker = Idp::start(json!({
        "keys": [public_jwk(ATTACKER_RSA, Algorithm::RS256, "attacker")]
    }))
    .await;
    let validator = validator(&config(&idp));
    let url = format!("{}{JWKS_PATH}", attacker.base);

    for kid in ["attacker", "rsa-1"] {
        let mut jku = header(Algorithm::RS256, kid);
        jku.jku = Some(url.clone());
        let token = sign(&jku, &claims(&idp.issuer()), ATTACKER_RSA);
        assert_eq!(refused(&validator, &token).await, TokenError::ForbiddenHeader("jku"));

        let mut x5u = header(Algorithm::RS256, kid);
        x5u.x5u = Some(url.clone());
        let token = sign(&x5u, &claims(&idp.issuer()), ATTACKER_RSA);
        assert_eq!(refused(&validator, &token).await, TokenError::ForbiddenHeader("x5u"));

        let mut jwk = header(Algorithm::RS256, kid);
        jwk.jwk = Some(
            serde_json::from_value(public_jwk(ATTACKER_RSA, Algorithm::RS256, "attacker")).unwrap(),
        );
        let token = sign(&jwk, &claims(&idp.issuer()), ATTACKER_RSA);
        assert_eq!(refused(&validator, &token).await, TokenError::ForbiddenHeader("jwk"));

        let mut x5c = header(Algorithm::RS256, kid);
        x5c.x5c = Some(vec!["MIIB".to_owned()]);
        let token = sign(&x5c, &claims(&idp.issuer()), ATTACKER_RSA);
        assert_eq!(refused(&validator, &token).await, TokenError::ForbiddenHeader("x5c"));
    }
    assert_eq!(attacker.total_hits(), 0, "a URL from a token header was fetched");
    assert_eq!(idp.total_hits(), 0, "refused headers must not even cost a key lookup");
}

#[tokio::test]
async fn oversized_tokens_are_refused_unread() {
    let idp = Idp::start(idp_jwks()).await;
    let validator = validator(&config(&idp)); // 8 KiB
    let mut big = claims(&idp.issuer());
    big["padding"] = json!("x".repeat(9 * 1024));
    let token = rs256(&big);

    assert_eq!(refused(&validator, &token).await, TokenError::TooLarge { max_bytes: 8 * 1024 });
    assert_eq!(refused(&validator, &"a".repeat(100_000)).await.code(), "token_too_large");
    assert_eq!(idp.total_hits(), 0);
}

#[tokio::test]
async fn unknown_kids_trigger_one_rate_limited_refresh() {
    let idp = Idp::start(idp_jwks()).await;
    let min_interval = Duration::from_millis(300);
    let validator = validator(&OidcConfig { jwks_refresh_min_interval_ms: 300, ..config(&idp) });
    validator.validate(&rs256(&claims(&idp.issuer()))).await.unwrap();
    assert_eq!(idp.hits(JWKS_PATH), 1);
    // Let the first fetch leave the rate-limit window, so that the burst may refresh once.
    tokio::time::sleep(min_interval).await;

    let mut burst = tokio::task::JoinSet::new();
    for i in 0..100 {
        let validator = validator.clone();
        let token = rs256_kid(&idp.issuer(), &format!("unknown-{i}"));
        burst.spawn(async move { validator.validate(&token).await });
    }
    while let Some(result) = burst.join_next().await {
        assert_eq!(result.unwrap().unwrap_err(), TokenError::UnknownKid);
    }
    let fetches = idp.hits(JWKS_PATH) - 1;
    // One, or two if the burst outlived the 300 ms window on a loaded machine.
    assert!((1..=2).contains(&fetches), "{fetches} JWKS fetches for 100 unknown kids");
    assert_eq!(idp.hits(DISCOVERY_PATH), 1, "discovery is read once");

    // A rotated-in key is picked up by the next refresh its kid triggers.
    let mut rotated = idp_jwks();
    rotated["keys"].as_array_mut().unwrap().push(public_jwk(
        ATTACKER_RSA,
        Algorithm::RS256,
        "rsa-2",
    ));
    idp.publish(rotated);
    let token = sign(&header(Algorithm::RS256, "rsa-2"), &claims(&idp.issuer()), ATTACKER_RSA);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match validator.validate(&token).await {
            Ok(_) => break,
            // Still inside the rate-limit window of the burst's refresh.
            Err(TokenError::UnknownKid) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(error) => panic!("rotated key never accepted: {error}"),
        }
    }
}

fn rs256_kid(issuer: &str, kid: &str) -> String {
    sign(&header(Algorithm::RS256, kid), &claims(issuer), IDP_RSA)
}

#[tokio::test]
async fn cached_keys_serve_through_an_outage_up_to_the_staleness_bound() {
    let idp = Idp::start(idp_jwks()).await;
    let max_staleness = Duration::from_millis(800);
    let validator = validator(&OidcConfig {
        jwks_refresh_after_ms: 100,
        jwks_refresh_min_interval_ms: 50,
        jwks_max_staleness_ms: 800,
        ..config(&idp)
    });
    let token = rs256(&claims(&idp.issuer()));
    // Taken before the fetch: the keys' age is at most `before.elapsed()`.
    let before = Instant::now();
    validator.validate(&token).await.unwrap();

    idp.set_down(true);
    // Refreshes are attempted (and fail) but the cached keys keep serving...
    validator.validate(&token).await.unwrap();
    // ...until the bound, after which every token is refused.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match validator.validate(&token).await {
            Ok(_) => {
                assert!(Instant::now() < deadline, "stale keys served past the bound");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(error) => {
                assert_eq!(error, TokenError::KeysUnavailable);
                break;
            }
        }
    }
    assert!(before.elapsed() >= max_staleness, "stale keys refused before the bound");
    assert!(idp.hits(JWKS_PATH) > 1, "the outage was noticed by refresh attempts");

    // The IdP comes back: keys are fetched again at the next rate-limited attempt.
    idp.set_down(false);
    let deadline = Instant::now() + Duration::from_secs(5);
    while validator.validate(&token).await.is_err() {
        assert!(Instant::now() < deadline, "keys never recovered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_discovery_document_for_another_issuer_is_refused() {
    let idp = Idp::start(idp_jwks()).await;
    *idp.state.discovery_issuer.lock().unwrap() = Some(format!("{}/realms/other", idp.base));
    let validator = validator(&config(&idp));

    let error = validator.warm_up().await.unwrap_err();
    assert!(matches!(error, DiscoveryError::IssuerMismatch { .. }), "{error}");
    assert_eq!(
        refused(&validator, &rs256(&claims(&idp.issuer()))).await,
        TokenError::KeysUnavailable
    );
    assert_eq!(idp.hits(JWKS_PATH), 0, "keys of an unverified issuer were fetched");
}

#[test]
fn configurations_that_would_accept_too_much_are_refused() {
    let ok = OidcConfig::new("https://idp.example/realms/bank", vec![AUDIENCE.to_owned()]);
    assert!(ok.validate().is_ok());
    assert_eq!(ok.algorithms, vec![SigningAlgorithm::RS256]);
    assert_eq!(ok.leeway_s, 30);
    assert!(OidcConfig { audiences: vec![], ..ok.clone() }.validate().is_err());
    assert!(OidcConfig { algorithms: vec![], ..ok.clone() }.validate().is_err());
    assert!(OidcConfig { issuer: "idp.example".into(), ..ok.clone() }.validate().is_err());
    // HMAC cannot even be named.
    let parsed: Result<Vec<SigningAlgorithm>, _> = serde_json::from_value(json!(["HS256"]));
    assert!(parsed.is_err());
}

/// An `https://` issuer (Keycloak in production): a TLS server for 127.0.0.1 whose
/// certificate a test-only CA signed. Trusted with `ca_file`, refused without it.
#[tokio::test]
async fn an_https_issuer_is_trusted_through_its_ca_and_refused_without_it() {
    const SERVER: &str = r#"
import http.server, json, ssl, sys
cert, key, jwks = sys.argv[1], sys.argv[2], sys.argv[3]
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        base = "https://127.0.0.1:%d/realms/test" % self.server.server_address[1]
        docs = {"/realms/test/.well-known/openid-configuration":
                    {"issuer": base, "jwks_uri": base + "/protocol/openid-connect/certs"},
                "/realms/test/protocol/openid-connect/certs": json.loads(jwks)}
        body = json.dumps(docs.get(self.path, {})).encode()
        self.send_response(200 if self.path in docs else 404)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let mut child = std::process::Command::new("python3")
        .args(["-c", SERVER])
        .arg(format!("{fixtures}/test-only-tls-server.pem"))
        .arg(format!("{fixtures}/test-only-tls-server.key"))
        .arg(idp_jwks().to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 is needed (./scripts/test.sh installs the test tools)");
    let mut port = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut port,
    )
    .unwrap();
    let issuer = format!("https://127.0.0.1:{}/realms/test", port.trim());
    let token = rs256(&claims(&issuer));

    let without_ca = validator(&OidcConfig::new(&issuer, vec![AUDIENCE.to_owned()]));
    let refused = without_ca.validate(&token).await;
    let with_ca = validator(&OidcConfig {
        ca_file: Some(format!("{fixtures}/test-only-tls-ca.pem").into()),
        ..OidcConfig::new(&issuer, vec![AUDIENCE.to_owned()])
    });
    let accepted = with_ca.validate(&token).await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(matches!(refused, Err(TokenError::KeysUnavailable)), "{refused:?}");
    assert_eq!(accepted.unwrap().subject, "7d1c5f2a-user");

    let bad = OidcConfig {
        ca_file: Some(format!("{fixtures}/README.md").into()),
        ..OidcConfig::new(&issuer, vec![AUDIENCE.to_owned()])
    };
    assert!(matches!(TokenValidator::new(&bad), Err(ConfigError::CaFile { .. })));
}

/// Verified tokens are remembered, but never beyond their `exp` nor past a JWKS change
/// that drops their key.
#[tokio::test]
async fn remembered_tokens_still_expire_and_die_with_their_key() {
    let idp = Idp::start(idp_jwks()).await;
    let validator = validator(&OidcConfig {
        leeway_s: 0,
        jwks_refresh_after_ms: 50,
        jwks_refresh_min_interval_ms: 50,
        jwks_max_staleness_ms: 60_000,
        ..config(&idp)
    });
    let mut short = claims(&idp.issuer());
    short["exp"] = (get_current_timestamp() + 1).into();
    let token = rs256(&short);
    validator.validate(&token).await.unwrap();
    validator.validate(&token).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match validator.validate(&token).await {
            Err(TokenError::Expired) => break,
            Ok(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            other => panic!("a remembered token outlived its exp: {other:?}"),
        }
    }

    let token = rs256(&claims(&idp.issuer()));
    validator.validate(&token).await.unwrap();
    let mut without = idp_jwks();
    without["keys"].as_array_mut().unwrap().retain(|k| k["kid"] != "rsa-1");
    // Rotated: another RSA key replaces it (a set with no usable key at all would be
    // treated as an IdP fault, and the previous keys would keep serving within the bound).
    without["keys"].as_array_mut().unwrap().push(public_jwk(
        ATTACKER_RSA,
        Algorithm::RS256,
        "rsa-2",
    ));
    idp.publish(without);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match validator.validate(&token).await {
            Err(TokenError::UnknownKid) => break,
            Ok(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            other => panic!("a remembered token outlived its key: {other:?}"),
        }
    }
}
