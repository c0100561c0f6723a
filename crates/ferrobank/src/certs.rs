//! `ferrobank certs`: the development PKI for mTLS between roles in split mode (one CA,
//! one SPIFFE certificate per role), written with `ferrobank_adapters::mtls`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use ferrobank_adapters::istio::plan::INGRESS_PRINCIPAL;
use ferrobank_adapters::mtls::{self, DevPki, MtlsError, SpiffeId};

use crate::config::{Config, Overrides};

/// The roles that get a certificate (`<role>.pem`), named as their Kubernetes service
/// accounts; the gateway's identity is Istio's ingress gateway's (see [`identity`]).
pub const ROLES: [&str; 11] = [
    "gateway",
    "identity",
    "accounts",
    "payments",
    "payment-worker",
    "loans",
    "customers",
    "risk",
    "audit",
    "notifications",
    "web",
];

/// Arguments of `ferrobank certs`.
#[derive(Debug, Clone, Args)]
pub struct CertsArgs {
    /// Directory to write to. Default: `certs` in the data directory.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Data directory (as for every command), whose `certs` folder is the default.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// SPIFFE trust domain (Istio's default is cluster.local).
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Kubernetes namespace in the SPIFFE ids (the gateway's is always `istio-system`).
    #[arg(long, default_value = "banking-system")]
    namespace: String,
    /// Replace an existing CA (every certificate it signed stops being trusted).
    #[arg(long)]
    force: bool,
}

/// The SPIFFE id `ferrobank certs` gives `role`: the gateway is Istio's ingress gateway
/// (namespace `istio-system`, service account `istio-ingressgateway-service-account`), so
/// the `principals` of `deploy/istio` name it; every other role is the service account of
/// its name in `namespace`.
pub fn identity(role: &str, trust_domain: &str, namespace: &str) -> Result<SpiffeId, MtlsError> {
    if role == "gateway" {
        let ingress: SpiffeId = format!("spiffe://{INGRESS_PRINCIPAL}").parse()?;
        return Ok(SpiffeId::new(trust_domain, ingress.namespace(), ingress.service_account())?);
    }
    Ok(SpiffeId::new(trust_domain, namespace, role)?)
}

/// Writes the CA and one certificate per role of [`ROLES`] to `dir`.
pub fn issue(
    dir: &Path,
    trust_domain: &str,
    namespace: &str,
    force: bool,
) -> Result<DevPki, MtlsError> {
    let workloads = ROLES
        .iter()
        .map(|role| Ok((*role, identity(role, trust_domain, namespace)?)))
        .collect::<Result<Vec<_>, MtlsError>>()?;
    mtls::generate_dev_pki_for(dir, trust_domain, &workloads, force)
}

/// Issues the CA and one certificate per role, and prints what was written.
pub fn run(config_file: Option<&Path>, args: &CertsArgs) -> Result<ExitCode, String> {
    let dir = match &args.dir {
        Some(dir) => dir.clone(),
        None => {
            let overrides = Overrides { data_dir: args.data_dir.clone(), ..Overrides::default() };
            Config::load(config_file, &overrides)?.data_dir.join("certs")
        }
    };
    let pki =
        issue(&dir, &args.trust_domain, &args.namespace, args.force).map_err(|e| match e {
            MtlsError::CaExists(dir) => format!(
                "a CA already exists in {}; --force replaces it (and distrusts all it signed)",
                dir.display()
            ),
            e => e.to_string(),
        })?;
    println!(
        "wrote a development PKI to {} (trust domain {}, namespace {})",
        dir.display(),
        args.trust_domain,
        args.namespace
    );
    println!(
        "  CA: {} and {} (valid {} days)",
        pki.ca_cert.display(),
        pki.ca_key.display(),
        mtls::CA_VALIDITY_DAYS
    );
    for workload in &pki.workloads {
        println!(
            "  {}: {} and {}",
            workload.spiffe_id,
            workload.cert.display(),
            workload.key.display()
        );
    }
    println!(
        "workload certificates are valid {} days; `ferrobank certs --force` issues everything anew",
        mtls::LEAF_VALIDITY_DAYS
    );
    Ok(ExitCode::SUCCESS)
}
