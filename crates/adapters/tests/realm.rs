//! The committed realm file and the rules ferrobank's provider will enforce on realm files.
#![allow(clippy::unwrap_used)]

use ferrobank_adapters::realm::{Realm, RealmError, parse, validate};

const BANKING_REALM: &str = include_str!("../../../deploy/keycloak/banking-realm.json");

fn banking() -> Realm {
    let (realm, unknown) = parse(BANKING_REALM).unwrap();
    assert!(unknown.is_empty(), "unknown fields: {unknown:?}");
    realm
}

/// The banking realm with one change made through its JSON, so a test breaks one rule.
fn banking_with(change: impl FnOnce(&mut serde_json::Value)) -> Realm {
    let mut json: serde_json::Value = serde_json::from_str(BANKING_REALM).unwrap();
    change(&mut json);
    parse(&json.to_string()).unwrap().0
}

fn errors(realm: &Realm) -> Vec<RealmError> {
    validate(realm).err().unwrap_or_default()
}

fn client<'a>(realm: &'a Realm, id: &str) -> &'a ferrobank_adapters::realm::Client {
    realm.clients.iter().find(|c| c.client_id == id).unwrap()
}

#[test]
fn committed_realm_parses_without_unknown_fields_and_validates() {
    let realm = banking();
    assert_eq!(realm.realm, "banking");
    assert!(realm.enabled);
    assert_eq!(validate(&realm).map_err(|e| format!("{e:?}")), Ok(()));
}

#[test]
fn committed_realm_has_the_seed_settings() {
    let realm = banking();
    assert_eq!(realm.default_signature_algorithm.as_deref(), Some("RS256"));
    assert_eq!(realm.access_token_secs, Some(300));
    assert_eq!(realm.sso_session_idle_secs, Some(1800));
    assert_eq!(realm.sso_session_max_secs, Some(36000));
    assert_eq!(realm.brute_force_protected, Some(true));
    assert_eq!(realm.failure_factor, Some(5));
    assert_eq!(realm.wait_increment_secs, Some(60));
    assert_eq!(realm.max_failure_wait_secs, Some(900));
    assert_eq!(realm.quick_login_check_ms, Some(1000));
    assert_eq!(realm.minimum_quick_login_wait_secs, Some(60));
    assert_eq!(realm.max_delta_time_secs, Some(43200));
    assert!(realm.password_policy.as_deref().is_some_and(|p| p.contains("length(12)")));

    let roles: Vec<&str> = realm.roles.realm.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        roles,
        ["banking-admin", "loan-officer", "customer", "risk-analyst", "compliance-officer"]
    );
    let groups: Vec<(&str, &[String])> =
        realm.groups.iter().map(|g| (g.name.as_str(), g.realm_roles.as_slice())).collect();
    assert_eq!(
        groups,
        [
            ("Banking Administrators", &["banking-admin".to_owned()][..]),
            ("Loan Officers", &["loan-officer".to_owned()][..]),
            ("Customers", &["customer".to_owned()][..]),
        ]
    );
    let users: Vec<&str> = realm.users.iter().map(|u| u.username.as_str()).collect();
    assert_eq!(users, ["admin", "loan.officer"]);
}

#[test]
fn committed_realm_has_a_pkce_web_app_and_a_client_credentials_gateway() {
    let realm = banking();
    assert_eq!(realm.clients.len(), 2);

    let web = client(&realm, "banking-web-app");
    assert!(web.is_confidential());
    assert_eq!(web.public_client, Some(false));
    assert_eq!(web.standard_flow_enabled, Some(true));
    assert_eq!(web.implicit_flow_enabled, Some(false));
    assert_eq!(web.direct_access_grants_enabled, Some(false));
    assert_eq!(web.service_accounts_enabled, Some(false));
    assert_eq!(web.pkce_method(), Some("S256"));
    assert_eq!(
        web.redirect_uris,
        [
            "https://banking.local/oauth2/callback",
            "https://banking.local/*",
            "http://localhost:3000/*"
        ]
    );
    assert_eq!(web.web_origins, ["https://banking.local", "http://localhost:3000"]);

    let gateway = client(&realm, "banking-api-gateway");
    assert!(gateway.is_confidential());
    assert_eq!(gateway.service_accounts_enabled, Some(true));
    assert_eq!(gateway.standard_flow_enabled, Some(false));
    assert_eq!(gateway.implicit_flow_enabled, Some(false));
    assert_eq!(gateway.direct_access_grants_enabled, Some(false));
    assert!(gateway.redirect_uris.is_empty());
}

#[test]
fn committed_realm_holds_no_secret_or_password() {
    let realm = banking();
    assert!(realm.clients.iter().all(|c| c.secret.is_none()));
    assert!(realm.users.iter().all(|u| u.credentials.is_empty()));
    // Also on the raw text, so a field the model does not read cannot smuggle one in.
    let json: serde_json::Value = serde_json::from_str(BANKING_REALM).unwrap();
    let mut keys = Vec::new();
    collect_keys(&json, &mut keys);
    for forbidden in ["secret", "credentials", "value", "password", "secretData"] {
        assert!(!keys.contains(&forbidden.to_owned()), "the realm file has a {forbidden:?} key");
    }
    for seed_secret in ["banking-web-secret", "banking-gateway-secret", "Banking@", "@2024"] {
        assert!(!BANKING_REALM.contains(seed_secret), "the realm file contains {seed_secret:?}");
    }
}

fn collect_keys(value: &serde_json::Value, keys: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                keys.push(key.clone());
                collect_keys(value, keys);
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_keys(v, keys)),
        _ => {}
    }
}

#[test]
fn unknown_fields_are_reported_with_their_path() {
    let json = r#"{
        "realm": "r",
        "someRealmThing": 1,
        "clients": [{"clientId": "c", "fooBar": true, "authenticationFlowBindingOverrides": {}}],
        "users": [{"username": "u", "credentials": [{"type": "password", "hashIterations": 1}]}],
        "groups": [{"name": "g", "subGroups": [{"name": "h", "extra": {"a": 1}}]}],
        "roles": {"realm": [{"name": "x", "id": "ignored-by-design"}], "application": {}}
    }"#;
    let (realm, unknown) = parse(json).unwrap();
    assert_eq!(realm.realm, "r");
    let mut paths: Vec<String> = unknown.iter().map(ToString::to_string).collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "clients[0].authenticationFlowBindingOverrides",
            "clients[0].fooBar",
            "groups[0].subGroups[0].extra",
            "roles.application",
            "someRealmThing",
            "users[0].credentials[0].hashIterations",
        ]
    );
}

#[test]
fn malformed_input_is_an_error_not_a_report() {
    assert!(matches!(parse("{"), Err(RealmError::Json(_))));
    assert!(matches!(
        parse(r#"{"realm": "r", "accessTokenLifespan": "300"}"#),
        Err(RealmError::Json(_))
    ));
    assert!(matches!(parse(r#"{"realm": "r"} trailing"#), Err(RealmError::Json(_))));
    assert!(matches!(parse(r#"{"enabled": true}"#), Err(RealmError::Json(_))));
}

#[test]
fn secrets_are_redacted_in_debug_output() {
    let json = r#"{"realm": "r", "clients": [{"clientId": "c", "secret": "s3cr3t-value"}],
        "users": [{"username": "u", "credentials": [{"type": "password", "value": "hunter2-pw"}]}]}"#;
    let (realm, _) = parse(json).unwrap();
    let debug = format!("{realm:?}");
    assert!(!debug.contains("s3cr3t-value") && !debug.contains("hunter2-pw"), "{debug}");
    assert_eq!(realm.clients[0].secret.as_ref().unwrap().expose(), "s3cr3t-value");
}

#[test]
fn empty_realm_name_is_rejected() {
    let realm = banking_with(|j| j["realm"] = " ".into());
    assert!(errors(&realm).iter().any(|e| matches!(e, RealmError::EmptyRealmName)));
}

#[test]
fn undefined_roles_referenced_by_groups_and_users_are_rejected() {
    let realm = banking_with(|j| {
        j["groups"][1]["realmRoles"] = serde_json::json!(["loan-officer", "teller"]);
        j["users"][0]["realmRoles"] = serde_json::json!(["root"]);
        j["users"][0]["clientRoles"] = serde_json::json!({"banking-web-app": ["viewer"]});
    });
    let errors = errors(&realm);
    assert!(errors.iter().any(|e| matches!(e,
        RealmError::UnknownRealmRole { at, role } if at == "groups[1].realmRoles" && role == "teller")));
    assert!(errors.iter().any(|e| matches!(e,
        RealmError::UnknownRealmRole { at, role } if at == "users[0].realmRoles" && role == "root")));
    assert!(errors.iter().any(|e| matches!(e,
        RealmError::UnknownClientRole { client, role, .. } if client == "banking-web-app" && role == "viewer")));
    assert_eq!(errors.len(), 3, "{errors:?}");
}

#[test]
fn undefined_groups_referenced_by_users_are_rejected() {
    let realm = banking_with(|j| j["users"][1]["groups"] = serde_json::json!(["/Tellers"]));
    let errors = errors(&realm);
    assert!(matches!(&errors[..], [RealmError::UnknownGroup { group, .. }] if group == "/Tellers"));
}

#[test]
fn relative_or_unsafe_redirect_uris_are_rejected() {
    for uri in [
        "/callback",
        "https://banking.local/*/callback",
        "https://banking.local*",
        "http://banking.local/callback",
        "https://banking.local/cb#frag",
        "javascript:alert(1)",
    ] {
        let realm = banking_with(|j| j["clients"][0]["redirectUris"] = serde_json::json!([uri]));
        let errors = errors(&realm);
        assert!(
            matches!(&errors[..], [RealmError::RedirectUri { uri: u, .. }] if u == uri),
            "{uri}: {errors:?}"
        );
    }
    let realm = banking_with(|j| j["clients"][0]["webOrigins"] = serde_json::json!(["*"]));
    assert!(matches!(&errors(&realm)[..], [RealmError::WebOrigin { .. }]));
}

#[test]
fn a_code_flow_client_without_pkce_s256_is_rejected() {
    for method in [serde_json::Value::Null, "plain".into()] {
        let realm = banking_with(|j| {
            let attributes = j["clients"][0]["attributes"].as_object_mut().unwrap();
            if method.is_null() {
                attributes.remove("pkce.code.challenge.method");
            } else {
                attributes.insert("pkce.code.challenge.method".into(), method.clone());
            }
        });
        let errors = errors(&realm);
        assert!(
            matches!(&errors[..], [RealmError::PkceNotRequired { client }] if client == "banking-web-app"),
            "{errors:?}"
        );
    }
}

#[test]
fn implicit_flow_and_password_grant_are_rejected_even_when_left_implicit() {
    for (flag, value) in [
        ("implicitFlowEnabled", serde_json::Value::Bool(true)),
        ("directAccessGrantsEnabled", serde_json::Value::Bool(true)),
        ("directAccessGrantsEnabled", serde_json::Value::Null),
    ] {
        let realm = banking_with(|j| {
            let gateway = j["clients"][1].as_object_mut().unwrap();
            if value.is_null() {
                gateway.remove(flag);
            } else {
                gateway.insert(flag.into(), value.clone());
            }
        });
        let errors = errors(&realm);
        assert!(
            matches!(&errors[..], [RealmError::LegacyGrant { flag: f, .. }] if *f == flag),
            "{flag}={value}: {errors:?}"
        );
    }
}

#[test]
fn non_positive_lifetimes_are_rejected() {
    let realm = banking_with(|j| j["accessTokenLifespan"] = 0.into());
    assert!(matches!(
        &errors(&realm)[..],
        [RealmError::Lifetime { field: "accessTokenLifespan", value_secs: 0, .. }]
    ));
    let realm = banking_with(|j| j["clientSessionIdleTimeout"] = (-1).into());
    assert!(matches!(
        &errors(&realm)[..],
        [RealmError::Lifetime { field: "clientSessionIdleTimeout", value_secs: -1, .. }]
    ));
    let realm = banking_with(|j| j["ssoSessionIdleTimeout"] = 40000.into());
    assert!(matches!(&errors(&realm)[..], [RealmError::SessionIdleExceedsMax { .. }]));
}

#[test]
fn disabled_or_insane_brute_force_protection_is_rejected() {
    let realm = banking_with(|j| j["bruteForceProtected"] = false.into());
    assert!(matches!(&errors(&realm)[..], [RealmError::BruteForceDisabled]));
    for (field, value) in [
        ("failureFactor", 0),
        ("failureFactor", 1000),
        ("waitIncrementSeconds", 0),
        ("waitIncrementSeconds", 901),
        ("minimumQuickLoginWaitSeconds", -5),
        ("quickLoginCheckMilliSeconds", -1),
        ("maxDeltaTimeSeconds", 0),
    ] {
        let realm = banking_with(|j| j[field] = value.into());
        let errors = errors(&realm);
        assert!(
            matches!(&errors[..], [RealmError::BruteForce { field: f, value: v, .. }] if *f == field && *v == value),
            "{field}={value}: {errors:?}"
        );
    }
}

#[test]
fn only_rs256_es256_and_eddsa_are_accepted() {
    for algorithm in ["ES256", "EdDSA"] {
        let realm = banking_with(|j| j["defaultSignatureAlgorithm"] = algorithm.into());
        assert!(validate(&realm).is_ok(), "{algorithm}");
    }
    for algorithm in ["HS256", "none", "PS256"] {
        let realm = banking_with(|j| j["defaultSignatureAlgorithm"] = algorithm.into());
        assert!(
            matches!(&errors(&realm)[..], [RealmError::SignatureAlgorithm { .. }]),
            "{algorithm}"
        );
    }
}

#[test]
fn only_password_credentials_are_accepted() {
    let realm = banking_with(|j| {
        j["users"][0]["credentials"] = serde_json::json!([
            {"type": "password", "value": "only-in-this-test", "temporary": true},
            {"type": "otp", "value": "123456"}
        ]);
    });
    let errors = errors(&realm);
    assert!(
        matches!(&errors[..], [RealmError::CredentialType { at, kind }]
            if at == "users[0].credentials[1]" && kind == "otp"),
        "{errors:?}"
    );
}

#[test]
fn duplicates_and_mismatched_group_paths_are_rejected() {
    let realm = banking_with(|j| {
        let roles = j["roles"]["realm"].as_array_mut().unwrap();
        roles.push(serde_json::json!({"name": "customer"}));
        j["groups"][2]["path"] = "/Clients".into();
    });
    let errors = errors(&realm);
    assert!(
        errors
            .iter()
            .any(|e| matches!(e, RealmError::Duplicate { name, .. } if name == "customer"))
    );
    assert!(
        errors
            .iter()
            .any(|e| matches!(e, RealmError::GroupPathMismatch { path, .. } if path == "/Clients"))
    );
    assert_eq!(errors.len(), 2, "{errors:?}");
}

#[test]
fn nested_groups_and_scope_mappings_are_checked() {
    let realm = banking_with(|j| {
        j["groups"][0]["subGroups"] = serde_json::json!([{"name": "Auditors", "path": "/Banking Administrators/Auditors", "realmRoles": ["compliance-officer"]}]);
        j["users"][0]["groups"] = serde_json::json!(["Banking Administrators/Auditors"]);
    });
    assert!(validate(&realm).is_ok(), "{:?}", errors(&realm));
    let realm = banking_with(|j| {
        j["scopeMappings"] = serde_json::json!([{"client": "nobody", "roles": ["auditor"]}]);
    });
    let errors = errors(&realm);
    assert!(
        errors
            .iter()
            .any(|e| matches!(e, RealmError::UnknownClient { client, .. } if client == "nobody"))
    );
    assert!(
        errors
            .iter()
            .any(|e| matches!(e, RealmError::UnknownRealmRole { role, .. } if role == "auditor"))
    );
}

#[test]
fn the_web_app_maps_the_tier_attribute_into_access_tokens_only() {
    let realm = banking();
    let claims: Vec<_> = client(&realm, "banking-web-app")
        .protocol_mappers
        .iter()
        .filter_map(|m| m.attribute_claim())
        .collect();
    let [Ok(tier)] = &claims[..] else { panic!("one tier mapper: {claims:?}") };
    assert_eq!((tier.attribute.as_str(), tier.claim.as_str()), ("tier", "tier"));
    assert_eq!((tier.access_token, tier.id_token, tier.userinfo), (true, false, false));
    // The service account is nobody's customer.
    assert!(
        client(&realm, "banking-api-gateway")
            .protocol_mappers
            .iter()
            .all(|m| m.attribute_claim().is_none())
    );
}

#[test]
fn attribute_mappers_ferrobank_cannot_honour_and_unknown_tiers_are_rejected() {
    // The web app's second mapper is the tier mapper.
    for (key, value) in [
        ("claim.name", "sub"),
        ("claim.name", "realm_access"),
        ("claim.name", "kyc.tier"),
        ("claim.name", ""),
        ("multivalued", "true"),
        ("jsonType.label", "JSON"),
    ] {
        let realm = banking_with(|j| {
            j["clients"][0]["protocolMappers"][1]["config"][key] = value.into();
        });
        let errors = errors(&realm);
        assert!(
            matches!(&errors[..], [RealmError::AttributeMapper { client, .. }] if client == "banking-web-app"),
            "{key}={value}: {errors:?}"
        );
    }
    let realm = banking_with(|j| {
        j["clients"][0]["protocolMappers"][1]["protocolMapper"] =
            "oidc-hardcoded-claim-mapper".into();
    });
    assert!(matches!(&errors(&realm)[..], [RealmError::UnsupportedMapper { .. }]));
    for tier in [serde_json::json!(["gold"]), serde_json::json!(["premium", "business"])] {
        let realm =
            banking_with(|j| j["users"][0]["attributes"] = serde_json::json!({"tier": tier}));
        let errors = errors(&realm);
        assert!(
            matches!(&errors[..], [RealmError::Attribute { at, .. }] if at == "users[0].attributes"),
            "{errors:?}"
        );
    }
    let premium =
        banking_with(|j| j["users"][0]["attributes"] = serde_json::json!({"tier": ["premium"]}));
    assert_eq!(validate(&premium).map_err(|e| format!("{e:?}")), Ok(()));
}
