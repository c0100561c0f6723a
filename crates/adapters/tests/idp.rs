//! The provider's durable state on both backends, and what only a controlled clock can show:
//! retired keys leave the JWKS once their tokens have expired; sessions, codes and login
//! pages expire.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use ferrobank_adapters::Backend;
use ferrobank_adapters::idp::{
    AuthorizeRequest, ClientAuth, IdentityProvider, ImportOptions, LoginOutcome, NewUser,
    TokenRequest, UserError, UserUpdate,
};
use ferrobank_adapters::testing::TestDatabase;
use ferrobank_application::Clock;

const REALM_FILE: &str = include_str!("../../../deploy/keycloak/banking-realm.json");
const SECRET: &str = "idp-test-client-secret-0123456789";

#[derive(Debug)]
struct ManualClock(AtomicI64);

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

async fn provider(db: &TestDatabase, clock: Arc<ManualClock>) -> IdentityProvider {
    let idp = IdentityProvider::load(db.store().await, clock, "http://127.0.0.1:1").await.unwrap();
    let (model, unknown) = ferrobank_adapters::realm::parse(REALM_FILE).unwrap();
    assert!(unknown.is_empty(), "{unknown:?}");
    let options = ImportOptions { dev_client_secret: Some(SECRET.into()), dev_password: None };
    idp.import_realm(&model, &options, false).await.unwrap();
    idp
}

/// The web app's authorization request, with RFC 7636 Appendix B's PKCE challenge.
fn web_app_request() -> AuthorizeRequest {
    AuthorizeRequest {
        response_type: Some("code".into()),
        client_id: Some("banking-web-app".into()),
        redirect_uri: Some("http://localhost:3000/cb".into()),
        code_challenge: Some("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".into()),
        code_challenge_method: Some("S256".into()),
        ..AuthorizeRequest::default()
    }
}

fn gateway() -> ClientAuth {
    ClientAuth {
        basic: Some(("banking-api-gateway".into(), SECRET.into())),
        ..ClientAuth::default()
    }
}

fn cc() -> TokenRequest {
    TokenRequest { grant_type: Some("client_credentials".into()), ..TokenRequest::default() }
}

async fn keys_expire_after_their_tokens(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let clock = Arc::new(ManualClock(AtomicI64::new(1_800_000_000_000)));
    let idp = provider(&db, clock.clone()).await;
    let first = idp.token("banking", &cc(), &gateway()).unwrap();
    let old_kid = jsonwebtoken::decode_header(first["access_token"].as_str().unwrap()).unwrap().kid;
    let new_kid = idp.rotate_keys("banking").await.unwrap();
    assert_ne!(old_kid.as_deref(), Some(new_kid.as_str()));
    assert_eq!(idp.jwks("banking").unwrap()["keys"].as_array().unwrap().len(), 2);

    // A reload (another process, a restart) sees the same keys.
    let reloaded = IdentityProvider::load(db.store().await, clock.clone(), "http://127.0.0.1:1")
        .await
        .unwrap();
    assert_eq!(reloaded.jwks("banking").unwrap(), idp.jwks("banking").unwrap());

    // Still published while a token signed by the old key may be alive (300 s + skew)...
    clock.0.fetch_add(300_000, Ordering::SeqCst);
    idp.purge().await.unwrap();
    assert_eq!(idp.jwks("banking").unwrap()["keys"].as_array().unwrap().len(), 2);
    // ...and gone after.
    clock.0.fetch_add(61_000, Ordering::SeqCst);
    idp.purge().await.unwrap();
    let keys = idp.jwks("banking").unwrap();
    let kids: Vec<&str> =
        keys["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap()).collect();
    assert_eq!(kids, [new_kid.as_str()]);
}

async fn login_pages_and_sessions_expire(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let clock = Arc::new(ManualClock(AtomicI64::new(1_800_000_000_000)));
    let idp = provider(&db, clock.clone()).await;
    let user = NewUser {
        username: "zoe".into(),
        enabled: true,
        password: Some("Zoe-Passw0rd-1234".into()),
        realm_roles: ["customer".to_owned()].into(),
        ..NewUser::default()
    };
    idp.create_user("banking", user).await.unwrap();
    let request = web_app_request();
    let LoginOutcome::Page(page) = idp.authorize("banking", &request, None) else {
        panic!("a login page")
    };
    // The realm's accessCodeLifespanLogin (1800 s) later, the page is dead.
    clock.0.fetch_add(1_800_001, Ordering::SeqCst);
    let input = ferrobank_adapters::idp::FormInput {
        csrf: Some(page.csrf.clone()),
        username: Some("zoe".into()),
        password: Some("Zoe-Passw0rd-1234".into()),
        ..Default::default()
    };
    let outcome =
        idp.authenticate("banking", &page.login_id, Some(&page.login_id), input.clone()).await;
    assert!(matches!(outcome, LoginOutcome::Error { status: 400, .. }), "{outcome:?}");

    // A fresh login works; its code is good for accessCodeLifespan (60 s) only.
    let LoginOutcome::Page(page) = idp.authorize("banking", &request, None) else {
        panic!("a login page")
    };
    let input = ferrobank_adapters::idp::FormInput { csrf: Some(page.csrf.clone()), ..input };
    let LoginOutcome::Redirect { location, sso: Some(_) } =
        idp.authenticate("banking", &page.login_id, Some(&page.login_id), input).await
    else {
        panic!("logged in")
    };
    let code = code_in(&location);
    clock.0.fetch_add(60_001, Ordering::SeqCst);
    let redeem = TokenRequest {
        grant_type: Some("authorization_code".into()),
        code: Some(code),
        redirect_uri: Some("http://localhost:3000/cb".into()),
        code_verifier: Some("dBjftJeZ4CVP-mJ92K27uhbUJU1p1r_wW1gFWFOEjXk".into()),
        ..TokenRequest::default()
    };
    let web = ClientAuth {
        basic: Some(("banking-web-app".into(), SECRET.into())),
        ..ClientAuth::default()
    };
    let error = idp.token("banking", &redeem, &web).unwrap_err();
    assert_eq!(error.error, "invalid_grant");
}

/// A user exported from Keycloak with a PBKDF2-SHA256 hash logs in with the same password,
/// and the hash is upgraded to argon2id on that login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keycloak_hashed_passwords_import_and_are_upgraded_at_login() {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    let db = TestDatabase::new(Backend::Sqlite).await;
    let clock = Arc::new(ManualClock(AtomicI64::new(1_800_000_000_000)));
    let idp = provider(&db, clock).await;
    let salt = b"keycloak-salt-16";
    let mut derived = [0u8; 64];
    pbkdf2::pbkdf2::<hmac::Hmac<sha2::Sha256>>(b"Legacy-Passw0rd-1", salt, 27_500, &mut derived)
        .unwrap();
    let mut realm: serde_json::Value = serde_json::from_str(REALM_FILE).unwrap();
    realm["users"].as_array_mut().unwrap().push(serde_json::json!({
        "username": "legacy", "enabled": true, "realmRoles": ["customer"],
        "credentials": [{
            "type": "password",
            "secretData": serde_json::json!({"value": STANDARD.encode(derived), "salt": STANDARD.encode(salt), "additionalParameters": {}}).to_string(),
            "credentialData": serde_json::json!({"hashIterations": 27500, "algorithm": "pbkdf2-sha256", "additionalParameters": {}}).to_string()
        }]
    }));
    let (model, _) = ferrobank_adapters::realm::parse(&realm.to_string()).unwrap();
    let options = ImportOptions { dev_client_secret: Some(SECRET.into()), dev_password: None };
    idp.import_realm(&model, &options, false).await.unwrap();
    let stored = |idp: &IdentityProvider| {
        idp.realm("banking").unwrap().users["legacy"].password.clone().unwrap()
    };
    assert!(stored(&idp).starts_with("$keycloak-pbkdf2-sha256$i=27500$"));

    let request = web_app_request();
    let login = |password: &'static str| {
        let idp = &idp;
        let request = &request;
        async move {
            let LoginOutcome::Page(page) = idp.authorize("banking", request, None) else {
                panic!("a login page")
            };
            let input = ferrobank_adapters::idp::FormInput {
                csrf: Some(page.csrf.clone()),
                username: Some("legacy".into()),
                password: Some(password.into()),
                ..Default::default()
            };
            idp.authenticate("banking", &page.login_id, Some(&page.login_id), input).await
        }
    };
    assert!(matches!(login("legacy-passw0rd-1").await, LoginOutcome::Page(_)), "wrong password");
    assert!(matches!(login("Legacy-Passw0rd-1").await, LoginOutcome::Redirect { .. }));
    assert!(
        stored(&idp).starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "upgraded: {}",
        stored(&idp)
    );
    assert!(
        matches!(login("Legacy-Passw0rd-1").await, LoginOutcome::Redirect { .. }),
        "still the same password"
    );
}

/// Tokens of `username` through the web app's code flow.
async fn tokens_of(idp: &IdentityProvider, username: &str, password: &str) -> serde_json::Value {
    use base64::Engine as _;
    use sha2::Digest as _;
    let verifier = "tier-test-verifier-0123456789-abcdefghijklmnopq";
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()));
    let request = AuthorizeRequest {
        scope: Some("openid".into()),
        code_challenge: Some(challenge),
        ..web_app_request()
    };
    let LoginOutcome::Page(page) = idp.authorize("banking", &request, None) else {
        panic!("a login page")
    };
    let input = ferrobank_adapters::idp::FormInput {
        csrf: Some(page.csrf.clone()),
        username: Some(username.into()),
        password: Some(password.into()),
        ..Default::default()
    };
    let LoginOutcome::Redirect { location, .. } =
        idp.authenticate("banking", &page.login_id, Some(&page.login_id), input).await
    else {
        panic!("logged in")
    };
    let code = code_in(&location);
    let redeem = TokenRequest {
        grant_type: Some("authorization_code".into()),
        code: Some(code),
        redirect_uri: Some("http://localhost:3000/cb".into()),
        code_verifier: Some(verifier.into()),
        ..TokenRequest::default()
    };
    let web = ClientAuth {
        basic: Some(("banking-web-app".into(), SECRET.into())),
        ..ClientAuth::default()
    };
    idp.token("banking", &redeem, &web).unwrap()
}

/// The unverified payload of a JWT.
fn payload(token: &serde_json::Value) -> serde_json::Value {
    use base64::Engine as _;
    let part = token.as_str().unwrap().split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// The realm file's tier mapper puts the user attribute `tier` into the web app's access
/// tokens (not its ID tokens); a changed tier shows in the next token; only known tiers
/// may be stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tier_attribute_becomes_the_access_token_tier_claim() {
    let db = TestDatabase::new(Backend::Sqlite).await;
    let clock = Arc::new(ManualClock(AtomicI64::new(1_800_000_000_000)));
    let idp = provider(&db, clock).await;
    let password = "Zoe-Passw0rd-1234";
    let user = |username: &str, tier: Option<&str>| NewUser {
        username: username.into(),
        enabled: true,
        password: Some(password.into()),
        realm_roles: ["customer".to_owned()].into(),
        attributes: tier.map(|t| ("tier".to_owned(), vec![t.to_owned()])).into_iter().collect(),
        ..NewUser::default()
    };
    let zoe = idp.create_user("banking", user("zoe", Some("premium"))).await.unwrap();
    idp.create_user("banking", user("yann", None)).await.unwrap();

    let tokens = tokens_of(&idp, "zoe", password).await;
    assert_eq!(payload(&tokens["access_token"])["tier"], "premium");
    assert!(payload(&tokens["id_token"]).get("tier").is_none(), "access tokens only");
    let plain = tokens_of(&idp, "yann", password).await;
    assert!(payload(&plain["access_token"]).get("tier").is_none(), "no attribute, no claim");

    // Unknown tiers, several values, other spellings: refused, nothing stored.
    for bad in [vec!["gold"], vec!["premium", "business"], vec!["Premium"], vec![]] {
        let change = UserUpdate {
            attributes: Some(
                [("tier".to_owned(), bad.iter().map(|t| t.to_string()).collect())].into(),
            ),
            ..UserUpdate::default()
        };
        let error = idp.update_user("banking", &zoe, change).await.unwrap_err();
        assert!(matches!(error, UserError::Invalid(_)), "{bad:?}: {error:?}");
    }
    assert!(matches!(
        idp.create_user("banking", user("xena", Some("gold"))).await,
        Err(UserError::Invalid(_))
    ));
    assert_eq!(idp.user("banking", &zoe).unwrap().attributes["tier"], ["premium"]);

    // A new tier applies from the next token, a refreshed one included.
    let change = UserUpdate {
        attributes: Some([("tier".to_owned(), vec!["business".to_owned()])].into()),
        ..UserUpdate::default()
    };
    idp.update_user("banking", &zoe, change).await.unwrap();
    let refresh = TokenRequest {
        grant_type: Some("refresh_token".into()),
        refresh_token: tokens["refresh_token"].as_str().map(str::to_owned),
        ..TokenRequest::default()
    };
    let web = ClientAuth {
        basic: Some(("banking-web-app".into(), SECRET.into())),
        ..ClientAuth::default()
    };
    let refreshed = idp.token("banking", &refresh, &web).unwrap();
    assert_eq!(payload(&refreshed["access_token"])["tier"], "business");
}

macro_rules! on_both_backends {
    ($($name:ident),*) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() { super::$name(super::Backend::Sqlite).await; }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() { super::$name(super::Backend::Postgres).await; }
        }
    )*};
}

on_both_backends!(keys_expire_after_their_tokens, login_pages_and_sessions_expire);

/// The authorization code of a redirect to the client.
fn code_in(location: &str) -> String {
    let url = url::Url::parse(location).unwrap();
    url.query_pairs().find(|(k, _)| k == "code").unwrap().1.into_owned()
}
