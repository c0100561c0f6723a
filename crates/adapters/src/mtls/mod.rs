//! Mutual TLS between roles, as Istio's PeerAuthentication `STRICT` enforces it: every
//! connection presents a certificate chaining to the mesh CA and carrying a SPIFFE id
//! (`spiffe://<trust domain>/ns/<namespace>/sa/<service account>`), which the peer reads
//! to authorize the caller.
//!
//! `pki` issues a development CA and workload certificates into a directory (the files
//! `ferrobank certs` writes); [`server_config`] and [`client_config`] turn those files into
//! rustls configurations on the ring provider, TLS 1.3 only (both ends are ferrobank);
//! `spiffe` reads the id back from a peer's certificate.

mod pki;
mod spiffe;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

pub use self::pki::{
    CA_VALIDITY_DAYS, DevPki, LEAF_VALIDITY_DAYS, WorkloadCert, generate_dev_pki,
    generate_dev_pki_for,
};
pub use self::spiffe::{InvalidSpiffeId, SpiffeId, spiffe_id};

/// The CA certificate's file name in a PKI directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA key's file name in a PKI directory.
pub const CA_KEY_FILE: &str = "ca.key";

/// Why certificates could not be issued or loaded.
#[derive(Debug, thiserror::Error)]
pub enum MtlsError {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// [`generate_dev_pki`] without `force` found a CA.
    #[error("a CA already exists in {0}; replacing it distrusts every certificate it signed")]
    CaExists(PathBuf),
    /// A name that cannot be part of a SPIFFE id or a file name.
    #[error("{0}")]
    Invalid(String),
    /// A file that is not the PEM it should be.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Certificate generation failed.
    #[error("issuing a certificate: {0}")]
    Issue(#[from] rcgen::Error),
    /// rustls refused the certificates or keys.
    #[error("TLS configuration: {0}")]
    Tls(String),
}

impl MtlsError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io { path: path.to_path_buf(), source }
    }
}

impl From<InvalidSpiffeId> for MtlsError {
    fn from(error: InvalidSpiffeId) -> Self {
        Self::Invalid(error.to_string())
    }
}

/// `<dir>/<service_account>.pem`
pub fn cert_path(dir: &Path, service_account: &str) -> PathBuf {
    dir.join(format!("{service_account}.pem"))
}

/// `<dir>/<service_account>.key`
pub fn key_path(dir: &Path, service_account: &str) -> PathBuf {
    dir.join(format!("{service_account}.key"))
}

/// A server presenting `service_account`'s certificate from `dir` that REQUIRES a client
/// certificate chaining to the CA in `dir` (a client without one fails the handshake).
/// Read the client's identity after the handshake with [`spiffe_id`] on its first peer
/// certificate. Set `alpn_protocols` on the result if the protocol needs it.
pub fn server_config(dir: &Path, service_account: &str) -> Result<ServerConfig, MtlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (chain, key) = workload(dir, service_account)?;
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(dir)?), provider.clone())
            .build()
            .map_err(|e| MtlsError::Tls(e.to_string()))?;
    ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(tls)
}

/// A client presenting `service_account`'s certificate from `dir` and trusting only the CA
/// in `dir` (the server name is checked against the server certificate's DNS/IP SANs;
/// check the server's SPIFFE id with [`spiffe_id`] where it matters).
pub fn client_config(dir: &Path, service_account: &str) -> Result<ClientConfig, MtlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (chain, key) = workload(dir, service_account)?;
    ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .with_root_certificates(roots(dir)?)
        .with_client_auth_cert(chain, key)
        .map_err(tls)
}

fn tls(error: rustls::Error) -> MtlsError {
    MtlsError::Tls(error.to_string())
}

/// The CA of `dir` as the only trust anchor.
fn roots(dir: &Path) -> Result<RootCertStore, MtlsError> {
    let path = dir.join(CA_CERT_FILE);
    let mut roots = RootCertStore::empty();
    for cert in read_certs(&path)? {
        roots
            .add(cert)
            .map_err(|e| MtlsError::Pem { path: path.clone(), reason: e.to_string() })?;
    }
    Ok(roots)
}

/// `service_account`'s certificate chain and key from `dir`.
fn workload(
    dir: &Path,
    service_account: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), MtlsError> {
    // The name becomes a file name: only what a SPIFFE path segment allows, never `..`.
    SpiffeId::new("x", "x", service_account)?;
    let chain = read_certs(&cert_path(dir, service_account))?;
    let path = key_path(dir, service_account);
    let key = PrivateKeyDer::from_pem_file(&path)
        .map_err(|e| MtlsError::Pem { path: path.clone(), reason: e.to_string() })?;
    Ok((chain, key))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, MtlsError> {
    let pem = |reason: String| MtlsError::Pem { path: path.to_path_buf(), reason };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(pem("no certificate".into()));
    }
    Ok(certs)
}
