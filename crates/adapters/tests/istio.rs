//! Loading Istio YAML: the repository's `deploy/istio` loads; anything ferrobank cannot
//! enforce is refused with the file and field named.

use std::path::{Path, PathBuf};

use ferrobank_adapters::istio::resources::MtlsMode;
use ferrobank_adapters::istio::{LoadError, Mesh};
use ferrobank_domain::policy::Workload;

fn deploy_istio() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/istio")
}

fn workload(namespace: &str, label: (&str, &str)) -> Workload {
    Workload {
        namespace: namespace.into(),
        labels: [(label.0.to_owned(), label.1.to_owned())].into_iter().collect(),
    }
}

fn load_text(text: &str) -> Result<Mesh, LoadError> {
    let mut mesh = Mesh::default();
    mesh.add_file(Path::new("test.yaml"), text)?;
    Ok(mesh)
}

fn refusal(text: &str) -> String {
    match load_text(text) {
        Ok(_) => panic!("loaded, but should be refused:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_repositorys_edge_configuration_loads() {
    let mesh = Mesh::load(&deploy_istio()).unwrap_or_else(|e| panic!("{e}"));
    assert!(!mesh.authorization.is_empty());
    let ingress = workload("istio-system", ("istio", "ingressgateway"));
    assert!(!mesh.gateway_routes(&ingress).is_empty(), "routes bound to the ingress gateway");
    assert!(!mesh.jwt_rules_for(&ingress).is_empty(), "the ingress validates JWTs");
    assert!(mesh.rate_limit_for(&ingress).is_some(), "the ingress rate limit");
    let accounts = workload("banking-system", ("app", "accounts-service"));
    assert_eq!(mesh.mtls_mode(&accounts, 8080), MtlsMode::Strict);
    let Some((decided_by, mode)) = mesh.peer_authentication_for(&accounts, 8080) else {
        panic!("no PeerAuthentication selects accounts-service");
    };
    assert_eq!(
        (decided_by.namespace.as_str(), decided_by.name.as_str(), mode),
        ("banking-system", "default", MtlsMode::Strict),
        "the namespace's own PeerAuthentication decides before the mesh-wide one"
    );
    assert!(!mesh.jwt_rules_for(&accounts).is_empty(), "sidecars validate JWTs too");
}

#[test]
fn unsupported_fields_and_features_are_refused_with_file_and_field() {
    let seed_payment_policy = r#"
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: payment-service-policy, namespace: banking-system}
spec:
  selector: {matchLabels: {app: payment-service}}
  rules:
  - from:
    - source: {requestPrincipals: ["*"]}
  to:
  - operation: {methods: ["GET"], paths: ["/api/payments/*"]}
"#;
    let error = refusal(seed_payment_policy);
    assert!(error.contains("test.yaml") && error.contains("payment-service-policy"), "{error}");
    assert!(error.contains("unknown field `to`"), "{error}");

    let custom = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: banking-system}
spec: {action: CUSTOM, provider: {name: opa}, rules: [{}]}
"#;
    assert!(refusal(custom).contains("provider"), "{}", refusal(custom));
    let custom = custom.replace(", provider: {name: opa}", "");
    assert!(refusal(&custom).contains("spec.action"), "{}", refusal(&custom));

    let when_key = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: sni, namespace: banking-system}
spec:
  rules:
  - when:
    - key: connection.sni
      values: ["x"]
"#;
    let error = refusal(when_key);
    assert!(
        error.contains("spec.rules[0].when[0].key") && error.contains("connection.sni"),
        "{error}"
    );

    let seed_destination_rule = r#"
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: cb, namespace: banking-system}
spec:
  host: "*.banking-system.svc.cluster.local"
  trafficPolicy:
    connectionPool:
      http: {http1MaxPendingRequests: 10, consecutiveGatewayErrors: 5}
"#;
    let error = refusal(seed_destination_rule);
    assert!(
        error.contains("spec.trafficPolicy.connectionPool.http")
            && error.contains("consecutiveGatewayErrors"),
        "{error}"
    );

    let params = r#"
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: banking-system}
spec:
  jwtRules:
  - issuer: https://idp
    audiences: [banking-api]
    fromParams: [access_token]
"#;
    assert!(refusal(params).contains("fromParams"), "{}", refusal(params));

    let wasm = r#"
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: wasm, namespace: banking-system}
spec:
  configPatches:
  - applyTo: HTTP_FILTER
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.wasm
        typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm, config: {}}
"#;
    assert!(refusal(wasm).contains("spec.configPatches[0]"), "{}", refusal(wasm));

    let no_namespace = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x}\nspec: {}\n";
    assert!(refusal(no_namespace).contains("metadata.namespace"));
    let other_kind = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, namespace: y}\n";
    assert!(refusal(other_kind).contains("kind"));
}
