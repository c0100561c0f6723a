//! Mutual TLS as roles use it: real handshakes over 127.0.0.1 between configurations built
//! from a development PKI; the server learns the client's SPIFFE id, and a client without a
//! certificate, or with one from another CA, is refused.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferrobank_adapters::mtls::{
    self, CA_CERT_FILE, MtlsError, SpiffeId, client_config, generate_dev_pki, server_config,
    spiffe_id,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use uuid::Uuid;

const TRUST_DOMAIN: &str = "cluster.local";
const NAMESPACE: &str = "banking-system";

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        Self(std::env::temp_dir().join(format!("ferrobank-mtls-{}", Uuid::new_v4().simple())))
    }

    /// A PKI with the given workloads in a directory of its own.
    fn pki(&self, name: &str, workloads: &[&str]) -> PathBuf {
        let dir = self.0.join(name);
        generate_dev_pki(&dir, TRUST_DOMAIN, NAMESPACE, workloads, false).unwrap();
        dir
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What the server saw of one connection: the client's SPIFFE id, or why the handshake
/// failed.
type Seen = Result<Option<SpiffeId>, String>;

/// A one-connection echo server with `server_config(dir, name)`; reports what it saw.
async fn echo_server(dir: &Path, name: &str) -> (u16, tokio::task::JoinHandle<Seen>) {
    let acceptor = TlsAcceptor::from(Arc::new(server_config(dir, name).unwrap()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        let client = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).cloned();
        let mut buffer = [0u8; 64];
        let n = tls.read(&mut buffer).await.map_err(|e| e.to_string())?;
        tls.write_all(&buffer[..n]).await.map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())?;
        Ok(client.and_then(|cert| spiffe_id(&cert)))
    });
    (port, server)
}

/// Connects, sends `ping` and returns the echo and the server's certificate.
async fn ping(
    port: u16,
    config: ClientConfig,
) -> Result<(Vec<u8>, CertificateDer<'static>), std::io::Error> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = TlsConnector::from(Arc::new(config)).connect(name, tcp).await?;
    let server = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    tls.write_all(b"ping").await?;
    let mut echo = Vec::new();
    tls.read_to_end(&mut echo).await?;
    Ok((echo, server))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn ca_roots(dir: &Path) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(dir.join(CA_CERT_FILE)).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    roots
}

#[tokio::test]
async fn a_client_with_a_mesh_certificate_is_admitted_and_known_by_its_spiffe_id() {
    let scratch = Scratch::new();
    let dir = scratch.pki("mesh", &["payments", "accounts"]);
    let (port, server) = echo_server(&dir, "payments").await;

    let (echo, server_cert) = ping(port, client_config(&dir, "accounts").unwrap()).await.unwrap();
    assert_eq!(echo, b"ping");
    let client = server.await.unwrap().unwrap().expect("the client's SPIFFE id");
    assert_eq!(client.to_string(), "spiffe://cluster.local/ns/banking-system/sa/accounts");
    assert_eq!(client.principal(), "cluster.local/ns/banking-system/sa/accounts");
    assert_eq!(client.service_account(), "accounts");
    // And the client knows whom it talks to.
    let server_id = spiffe_id(&server_cert).unwrap();
    assert_eq!(server_id.to_string(), "spiffe://cluster.local/ns/banking-system/sa/payments");
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let scratch = Scratch::new();
    let dir = scratch.pki("mesh", &["payments"]);
    let (port, server) = echo_server(&dir, "payments").await;

    // Trusts the mesh CA, so only the server can refuse.
    let anonymous = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(ca_roots(&dir))
        .with_no_client_auth();
    // TLS 1.3: the client may finish its side before the server's refusal arrives, so the
    // refusal shows at the first read at the latest.
    assert!(ping(port, anonymous).await.is_err(), "no echo without a client certificate");
    let seen = server.await.unwrap();
    assert!(seen.is_err(), "the server completed a handshake: {seen:?}");
}

#[tokio::test]
async fn a_client_with_a_certificate_from_another_ca_is_refused() {
    let scratch = Scratch::new();
    let dir = scratch.pki("mesh", &["payments"]);
    let other = scratch.pki("other", &["accounts"]);
    let (port, server) = echo_server(&dir, "payments").await;

    // Trusts the mesh CA but presents a certificate of another CA, with the same SPIFFE id.
    let chain = CertificateDer::pem_file_iter(mtls::cert_path(&other, "accounts"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(mtls::key_path(&other, "accounts")).unwrap();
    assert_eq!(spiffe_id(&chain[0]).unwrap().service_account(), "accounts");
    let impostor = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(ca_roots(&dir))
        .with_client_auth_cert(chain, key)
        .unwrap();
    assert!(ping(port, impostor).await.is_err(), "no echo for a foreign certificate");
    let seen = server.await.unwrap();
    assert!(seen.is_err(), "the server completed a handshake: {seen:?}");
}

#[tokio::test]
async fn a_server_of_another_ca_is_refused_by_the_client() {
    let scratch = Scratch::new();
    let dir = scratch.pki("mesh", &["accounts"]);
    let other = scratch.pki("other", &["payments"]);
    let (port, _server) = echo_server(&other, "payments").await;
    assert!(ping(port, client_config(&dir, "accounts").unwrap()).await.is_err());
}

#[test]
fn an_existing_ca_is_kept_unless_forced_and_keys_are_private() {
    let scratch = Scratch::new();
    let dir = scratch.pki("mesh", &["accounts"]);
    let ca = std::fs::read(dir.join(CA_CERT_FILE)).unwrap();

    let refused = generate_dev_pki(&dir, TRUST_DOMAIN, NAMESPACE, &["accounts"], false);
    assert!(matches!(refused, Err(MtlsError::CaExists(_))), "{refused:?}");
    assert_eq!(std::fs::read(dir.join(CA_CERT_FILE)).unwrap(), ca, "the CA was touched");

    let issued = generate_dev_pki(&dir, TRUST_DOMAIN, NAMESPACE, &["accounts"], true).unwrap();
    assert_ne!(std::fs::read(&issued.ca_cert).unwrap(), ca, "--force issues a new CA");
    #[cfg(unix)]
    for key in [&issued.ca_key, &issued.workloads[0].key] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", key.display());
    }
    let leaf = CertificateDer::from_pem_file(&issued.workloads[0].cert).unwrap();
    assert_eq!(spiffe_id(&leaf), Some(issued.workloads[0].spiffe_id.clone()));
}

#[test]
fn names_that_are_not_spiffe_path_segments_are_refused() {
    let scratch = Scratch::new();
    for name in ["../escape", "a/b", "", "ca"] {
        let result = generate_dev_pki(&scratch.0, TRUST_DOMAIN, NAMESPACE, &[name], false);
        assert!(matches!(result, Err(MtlsError::Invalid(_))), "{name:?}: {result:?}");
    }
    let result = generate_dev_pki(&scratch.0, "Not A Domain", NAMESPACE, &["accounts"], false);
    assert!(matches!(result, Err(MtlsError::Invalid(_))), "{result:?}");
    assert!(!scratch.0.exists(), "nothing is written for a refused name");
    assert!(matches!(server_config(&scratch.0, "../ca"), Err(MtlsError::Invalid(_))));
}
