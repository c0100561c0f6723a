//! A development PKI: one CA and one SPIFFE leaf certificate per workload, as files.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use time::{Duration, OffsetDateTime};

use super::{CA_CERT_FILE, CA_KEY_FILE, MtlsError, SpiffeId, cert_path, key_path};

/// How long the CA is valid, in days.
pub const CA_VALIDITY_DAYS: i64 = 365;
/// How long a workload certificate is valid, in days: short, as SVIDs are; issue anew with
/// `force` before they run out.
pub const LEAF_VALIDITY_DAYS: i64 = 90;
/// How far back validity starts, in minutes, so that a clock slightly behind still accepts.
const BACKDATE_MINUTES: i64 = 5;

/// What [`generate_dev_pki`] wrote.
#[derive(Debug, Clone)]
pub struct DevPki {
    /// The CA certificate every workload trusts (`ca.pem`).
    pub ca_cert: PathBuf,
    /// The CA's private key (`ca.key`, mode 0600).
    pub ca_key: PathBuf,
    /// One certificate per workload, in the order asked.
    pub workloads: Vec<WorkloadCert>,
}

/// One workload's certificate and key files.
#[derive(Debug, Clone)]
pub struct WorkloadCert {
    /// The identity in its URI SAN.
    pub spiffe_id: SpiffeId,
    /// `<name>.pem`
    pub cert: PathBuf,
    /// `<name>.key` (mode 0600)
    pub key: PathBuf,
}

/// Creates in `dir` a CA (`ca.pem`, `ca.key`) and for each name in `service_accounts` a
/// certificate `<name>.pem` and key `<name>.key` with the URI SAN
/// `spiffe://<trust_domain>/ns/<namespace>/sa/<name>`, DNS SAN `localhost` and IP SAN
/// `127.0.0.1`, usable as server and as client certificate. Keys are ECDSA P-256, written
/// with mode 0600. An existing CA is replaced only with `force` (whatever it signed stops
/// being trusted); the CA is written last, so an interrupted run leaves none behind.
pub fn generate_dev_pki(
    dir: &Path,
    trust_domain: &str,
    namespace: &str,
    service_accounts: &[&str],
    force: bool,
) -> Result<DevPki, MtlsError> {
    let workloads = service_accounts
        .iter()
        .map(|name| Ok((*name, SpiffeId::new(trust_domain, namespace, name)?)))
        .collect::<Result<Vec<_>, MtlsError>>()?;
    generate_dev_pki_for(dir, trust_domain, &workloads, force)
}

/// [`generate_dev_pki`] with an identity per file: each `(name, id)` is written as
/// `<name>.pem`/`<name>.key` with `id` in its URI SAN (a role whose identity is not
/// `<namespace>/<name>`, such as the ingress gateway's service account in `istio-system`).
pub fn generate_dev_pki_for(
    dir: &Path,
    trust_domain: &str,
    workloads: &[(&str, SpiffeId)],
    force: bool,
) -> Result<DevPki, MtlsError> {
    for (name, _) in workloads {
        // The name becomes a file name: only what a SPIFFE path segment allows.
        SpiffeId::new("x", "x", name)?;
    }
    if let Some((name, _)) = workloads.iter().find(|(name, _)| name.eq_ignore_ascii_case("ca")) {
        return Err(MtlsError::Invalid(format!("{name}: the CA's file names are taken")));
    }
    let (ca_cert, ca_key) = (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE));
    if !force && (ca_cert.exists() || ca_key.exists()) {
        return Err(MtlsError::CaExists(dir.to_path_buf()));
    }
    create_private_dir(dir)?;

    let now = OffsetDateTime::now_utc();
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = name("ferrobank development CA", trust_domain);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = now - Duration::minutes(BACKDATE_MINUTES);
    ca_params.not_after = now + Duration::days(CA_VALIDITY_DAYS);
    let ca_key_pair = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let ca_pem = ca_params.self_signed(&ca_key_pair)?.pem();
    let ca_key_pem = ca_key_pair.serialize_pem();
    let issuer = Issuer::new(ca_params, ca_key_pair);

    let mut written = Vec::with_capacity(workloads.len());
    for (file, id) in workloads {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(id.service_account(), trust_domain);
        params.subject_alt_names = vec![
            SanType::URI(id.to_string().try_into()?),
            SanType::DnsName("localhost".try_into()?),
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        ];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = now - Duration::minutes(BACKDATE_MINUTES);
        params.not_after = now + Duration::days(LEAF_VALIDITY_DAYS);
        let key_pair = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = params.signed_by(&key_pair, &issuer)?;
        let (cert_file, key_file) = (cert_path(dir, file), key_path(dir, file));
        write_file(&key_file, key_pair.serialize_pem().as_bytes(), true)?;
        write_file(&cert_file, cert.pem().as_bytes(), false)?;
        written.push(WorkloadCert { spiffe_id: id.clone(), cert: cert_file, key: key_file });
    }
    write_file(&ca_key, ca_key_pem.as_bytes(), true)?;
    write_file(&ca_cert, ca_pem.as_bytes(), false)?;
    Ok(DevPki { ca_cert, ca_key, workloads: written })
}

fn name(common_name: &str, trust_domain: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "ferrobank");
    name.push(DnType::OrganizationalUnitName, trust_domain);
    name.push(DnType::CommonName, common_name);
    name
}

fn create_private_dir(dir: &Path) -> Result<(), MtlsError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|e| MtlsError::io(dir, e))
}

/// Writes through a temporary file and a rename, so a reader never sees half a file; a
/// private file is created with mode 0600 (never readable by others, not even briefly).
fn write_file(path: &Path, contents: &[u8], private: bool) -> Result<(), MtlsError> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    match std::fs::remove_file(&temporary) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(MtlsError::io(&temporary, e));
        }
        _ => {}
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, if private { 0o600 } else { 0o644 });
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(&temporary).map_err(|e| MtlsError::io(&temporary, e))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|e| MtlsError::io(&temporary, e))?;
    std::fs::rename(&temporary, path).map_err(|e| MtlsError::io(path, e))
}
