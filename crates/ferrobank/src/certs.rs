//! `ferrobank certs`: the development PKI for mTLS between roles in split mode (one CA,
//! one SPIFFE certificate per role), written with `ferrobank_adapters::mtls`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use ferrobank_adapters::mtls::{self, MtlsError};

use crate::config::{Config, Overrides};

/// The roles that get a certificate, named as their Kubernetes service accounts.
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
    /// Kubernetes namespace in the SPIFFE ids.
    #[arg(long, default_value = "banking-system")]
    namespace: String,
    /// Replace an existing CA (every certificate it signed stops being trusted).
    #[arg(long)]
    force: bool,
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
    let pki = mtls::generate_dev_pki(&dir, &args.trust_domain, &args.namespace, &ROLES, args.force)
        .map_err(|e| match e {
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
