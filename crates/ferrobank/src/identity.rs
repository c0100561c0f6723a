//! Wiring of the built-in identity provider: load it, import the realm files, tell the
//! user how to log in.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use ferrobank_adapters::SqlStore;
use ferrobank_adapters::idp::{Generated, IdentityProvider, ImportOptions, Imported};
use ferrobank_adapters::realm;
use ferrobank_application::Clock;

use crate::config::Config;

/// The banking realm, as committed in `deploy/keycloak/`: what `up` serves by default.
pub const BANKING_REALM: &str = include_str!("../../../deploy/keycloak/banking-realm.json");

/// Parses a realm file, reporting fields ferrobank does not know (never silently dropped).
pub fn parse_realm(json: &str, origin: &str) -> Result<realm::Realm, String> {
    let (model, unknown) = realm::parse(json).map_err(|e| format!("{origin}: {e}"))?;
    for field in unknown {
        tracing::warn!(file = origin, field = %field.path, "realm file field not supported by ferrobank; ignored");
        eprintln!(
            "warning: {origin}: field {} is not supported by ferrobank and was ignored",
            field.path
        );
    }
    Ok(model)
}

/// Reads a realm file from disk.
pub fn read_realm(path: &Path) -> Result<realm::Realm, String> {
    let json =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    parse_realm(&json, &path.display().to_string())
}

/// The realms to import: the configured files, or the built-in banking realm.
pub fn configured_realms(config: &Config) -> Result<Vec<realm::Realm>, String> {
    if config.identity.realm_files.is_empty() {
        return Ok(vec![parse_realm(BANKING_REALM, "built-in banking realm")?]);
    }
    config.identity.realm_files.iter().map(|path| read_realm(path)).collect()
}

/// Options of every import: the dev secrets from configuration, if any.
pub fn import_options(config: &Config) -> ImportOptions {
    ImportOptions {
        dev_password: config.identity.dev_password.clone(),
        dev_client_secret: config.identity.dev_client_secret.clone(),
    }
}

/// The base URL of the provider.
pub fn public_url(config: &Config, addr: SocketAddr) -> String {
    config.identity.public_url.clone().unwrap_or_else(|| format!("http://{addr}"))
}

/// Loads the provider and imports the configured realms (declaratively).
pub async fn start(
    config: &Config,
    store: &SqlStore,
    clock: Arc<dyn Clock>,
    addr: SocketAddr,
) -> Result<(Arc<IdentityProvider>, Vec<Generated>), String> {
    let idp = IdentityProvider::load(store.clone(), clock, &public_url(config, addr))
        .await
        .map_err(|e| format!("identity provider: {e}"))?;
    let mut generated = Vec::new();
    for model in configured_realms(config)? {
        let Imported { changes, generated: made, .. } = idp
            .import_realm(&model, &import_options(config), false)
            .await
            .map_err(|e| format!("importing realm {}: {e}", model.realm))?;
        if !changes.is_empty() {
            tracing::info!(realm = %model.realm, changes = changes.len(), "realm imported");
        }
        generated.extend(made);
    }
    if !idp.realm_names().contains(&config.identity.realm) {
        return Err(format!(
            "identity.realm {:?} is not among the imported realms {:?}",
            config.identity.realm,
            idp.realm_names()
        ));
    }
    Ok((Arc::new(idp), generated))
}

/// Prints the issuer, how to get a token, and any secret generated on this start.
pub fn print_login_help(idp: &IdentityProvider, config: &Config, generated: &[Generated]) {
    let issuer = idp.issuer(&config.identity.realm);
    let oidc = format!("{issuer}/protocol/openid-connect");
    println!("  identity   {issuer}   (discovery: {issuer}/.well-known/openid-configuration)");
    if !generated.is_empty() {
        println!(
            "  generated secrets (shown once; set identity.dev_password / dev_client_secret to choose them):"
        );
        for secret in generated {
            println!("    {:<45} {}", secret.what, secret.value);
        }
    }
    println!("  token (client credentials):");
    println!(
        "    curl -s -u banking-api-gateway:SECRET -d grant_type=client_credentials {oidc}/token"
    );
    println!("  log in in a browser (code + PKCE): ./scripts/login.sh {issuer} USER");
}
