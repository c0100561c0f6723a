//! SPIFFE ids of Istio workloads (`spiffe://<trust domain>/ns/<namespace>/sa/<account>`)
//! and reading them from X.509 SVIDs.

use std::fmt;
use std::str::FromStr;

/// Longest SPIFFE id, in bytes (the SPIFFE ID specification's limit for a URI).
const MAX_ID_BYTES: usize = 2048;

/// An Istio workload identity: trust domain, namespace and service account.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

/// Why a string is not an Istio SPIFFE id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an Istio SPIFFE id (spiffe://<trust domain>/ns/<namespace>/sa/<account>): {0}")]
pub struct InvalidSpiffeId(String);

impl SpiffeId {
    /// The id of `service_account` in `namespace` of `trust_domain`.
    ///
    /// The trust domain is lower-case letters, digits, `.`, `-` and `_`; namespace and
    /// account also allow upper-case letters and are neither `.` nor `..` (SPIFFE ID
    /// specification, section 2).
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, InvalidSpiffeId> {
        let invalid = |what: &str| {
            InvalidSpiffeId(format!("{what} in {trust_domain}/ns/{namespace}/sa/{service_account}"))
        };
        if !is_trust_domain(trust_domain) {
            return Err(invalid("bad trust domain"));
        }
        if !is_segment(namespace) || !is_segment(service_account) {
            return Err(invalid("bad path segment"));
        }
        let id = Self {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        };
        if id.to_string().len() > MAX_ID_BYTES {
            return Err(invalid("too long"));
        }
        Ok(id)
    }

    /// The trust domain, e.g. `cluster.local`.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The Kubernetes namespace, e.g. `banking-system`.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The service account, e.g. `accounts`.
    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// Istio's `source.principal` (AuthorizationPolicy `principals`): the id without
    /// `spiffe://`, e.g. `cluster.local/ns/banking-system/sa/accounts`.
    pub fn principal(&self) -> String {
        format!("{}/ns/{}/sa/{}", self.trust_domain, self.namespace, self.service_account)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}", self.principal())
    }
}

impl FromStr for SpiffeId {
    type Err = InvalidSpiffeId;

    fn from_str(uri: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidSpiffeId(uri.chars().take(100).collect());
        let rest = uri.strip_prefix("spiffe://").ok_or_else(invalid)?;
        let mut parts = rest.split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(domain), Some("ns"), Some(namespace), Some("sa"), Some(account), None) => {
                Self::new(domain, namespace, account).map_err(|_| invalid())
            }
            _ => Err(invalid()),
        }
    }
}

fn is_trust_domain(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".-_".contains(&b))
}

fn is_segment(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b".-_".contains(&b))
}

/// The SPIFFE id of an X.509 SVID (DER): its only URI subject alternative name, when that
/// is an Istio SPIFFE id. `None` for anything else, including several URI SANs (an SVID
/// has exactly one). The chain must have been verified already (rustls does, in the
/// handshake): this only reads.
pub fn spiffe_id(cert_der: &[u8]) -> Option<SpiffeId> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let names = cert.subject_alternative_name().ok()??;
    let mut uris = names.value.general_names.iter().filter_map(|name| match name {
        x509_parser::extensions::GeneralName::URI(uri) => Some(*uri),
        _ => None,
    });
    match (uris.next(), uris.next()) {
        (Some(uri), None) => uri.parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_ids_parse_and_print_back() {
        let uri = "spiffe://cluster.local/ns/banking-system/sa/accounts";
        let id: SpiffeId = uri.parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "banking-system");
        assert_eq!(id.service_account(), "accounts");
        assert_eq!(id.principal(), "cluster.local/ns/banking-system/sa/accounts");
        assert_eq!(id.to_string(), uri);
    }

    #[test]
    fn anything_else_is_refused() {
        for uri in [
            "https://cluster.local/ns/banking-system/sa/accounts",
            "spiffe://cluster.local/ns/banking-system/sa/accounts/",
            "spiffe://cluster.local/ns/banking-system/sa/",
            "spiffe://cluster.local/ns/banking-system",
            "spiffe://cluster.local/sa/accounts/ns/banking-system",
            "spiffe://Cluster.local/ns/banking-system/sa/accounts",
            "spiffe://cluster.local/ns/../sa/accounts",
            "spiffe://cluster.local/ns/banking-system/sa/acc%20ounts",
            "spiffe://cluster.local:8443/ns/banking-system/sa/accounts",
            "spiffe:///ns/banking-system/sa/accounts",
        ] {
            assert!(uri.parse::<SpiffeId>().is_err(), "{uri} was accepted");
        }
        assert!(SpiffeId::new("cluster.local", "ns", &"a".repeat(MAX_ID_BYTES)).is_err());
        assert!(spiffe_id(b"not a certificate").is_none());
    }
}
