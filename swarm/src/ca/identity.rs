//! A node's identity: its key, its certificate and the root CA certificate, kept in the node's state dir under
//! Docker's file names.

use super::{CaError, MANAGER_OU, WORKER_OU};
use crate::api::NodeRole;
use rcgen::{CertificateParams, KeyPair};
use std::path::Path;
use std::time::SystemTime;

const CERT_FILE: &str = "swarm-node.crt";
const KEY_FILE: &str = "swarm-node.key";
const CA_FILE: &str = "swarm-root-ca.crt";

/// A fresh key pair and certificate signing request (the subject is the CA's to choose).
pub struct NodeCsr {
    pub csr_pem: String,
    pub key_pem: String,
}

impl NodeCsr {
    pub fn new() -> Result<NodeCsr, CaError> {
        let key = KeyPair::generate().map_err(|e| CaError::Certificate(e.to_string()))?;
        let params = CertificateParams::new(Vec::<String>::new()).map_err(|e| CaError::Certificate(e.to_string()))?;
        let csr = params.serialize_request(&key).map_err(|e| CaError::Certificate(e.to_string()))?;
        Ok(NodeCsr { csr_pem: csr.pem().map_err(|e| CaError::Certificate(e.to_string()))?, key_pem: key.serialize_pem() })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    pub node_id: String,
    pub role: NodeRole,
    pub cluster_id: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_cert_pem: String,
    pub not_after: SystemTime,
}

/// CN, OU, O and expiry of a certificate.
pub(crate) fn subject_of(der: &[u8]) -> Result<(String, String, String, SystemTime), CaError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| CaError::InvalidCertificate(e.to_string()))?;
    let subject = cert.subject();
    let first = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue>| {
        it.next().and_then(|a| a.as_str().ok()).map(str::to_string).unwrap_or_default()
    };
    let cn = first(&mut subject.iter_common_name());
    let ou = first(&mut subject.iter_organizational_unit());
    let o = first(&mut subject.iter_organization());
    let secs = cert.validity().not_after.timestamp().max(0) as u64;
    Ok((cn, ou, o, SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs)))
}

pub(crate) fn role_of(ou: &str) -> Result<NodeRole, CaError> {
    match ou {
        MANAGER_OU => Ok(NodeRole::Manager),
        WORKER_OU => Ok(NodeRole::Worker),
        other => Err(CaError::InvalidCertificate(format!("unknown role OU {other:?}"))),
    }
}

impl NodeIdentity {
    /// Reads the node id, role and cluster id back from the certificate.
    pub fn from_cert(cert_pem: &str, key_pem: &str, ca_cert_pem: &str) -> Result<NodeIdentity, CaError> {
        KeyPair::from_pem(key_pem).map_err(|e| CaError::InvalidCertificate(format!("key: {e}")))?;
        let der = super::root::cert_der(cert_pem)?;
        let (cn, ou, o, not_after) = subject_of(&der)?;
        if cn.is_empty() || o.is_empty() {
            return Err(CaError::InvalidCertificate("missing CN (node id) or O (cluster id)".into()));
        }
        super::root::cert_der(ca_cert_pem)?;
        Ok(NodeIdentity {
            node_id: cn,
            role: role_of(&ou)?,
            cluster_id: o,
            cert_pem: cert_pem.into(),
            key_pem: key_pem.into(),
            ca_cert_pem: ca_cert_pem.into(),
            not_after,
        })
    }

    pub fn save(&self, dir: &Path) -> Result<(), CaError> {
        let io = |path: &Path, e: std::io::Error| CaError::File { path: path.to_path_buf(), reason: e.to_string() };
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        for (name, text, mode) in
            [(CERT_FILE, &self.cert_pem, 0o644), (KEY_FILE, &self.key_pem, 0o600), (CA_FILE, &self.ca_cert_pem, 0o644)]
        {
            let path = dir.join(name);
            let tmp = dir.join(format!(".{name}.tmp"));
            {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(true)
                    .mode(mode)
                    .open(&tmp)
                    .map_err(|e| io(&tmp, e))?;
                f.write_all(text.as_bytes()).map_err(|e| io(&tmp, e))?;
                f.sync_all().map_err(|e| io(&tmp, e))?;
            }
            std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))?;
        }
        Ok(())
    }

    pub fn load(dir: &Path) -> Result<NodeIdentity, CaError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|e| CaError::File { path, reason: e.to_string() })
        };
        let (cert, key, ca) = (read(CERT_FILE)?, read(KEY_FILE)?, read(CA_FILE)?);
        KeyPair::from_pem(&key).map_err(|e| CaError::File { path: dir.join(KEY_FILE), reason: format!("not a usable key: {e}") })?;
        NodeIdentity::from_cert(&cert, &key, &ca).map_err(|e| CaError::File { path: dir.join(CERT_FILE), reason: e.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::{issue_identity, RootCa};

    #[test]
    fn issued_certs_carry_the_cas_subject_not_the_csrs() {
        let root = RootCa::generate().unwrap();
        let m = issue_identity(&root, "node1", NodeRole::Manager, "clusterA").unwrap();
        assert_eq!((m.node_id.as_str(), m.role, m.cluster_id.as_str()), ("node1", NodeRole::Manager, "clusterA"));
        let w = issue_identity(&root, "node2", NodeRole::Worker, "clusterA").unwrap();
        assert_eq!(w.role, NodeRole::Worker);
        let days = w.not_after.duration_since(SystemTime::now()).unwrap().as_secs() / 86_400;
        assert!((88..=90).contains(&days), "{days}");

        // A CSR asking for its own subject and SANs gets the CA's.
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::OrganizationalUnitName, "swarm-manager");
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let cert = root.issue(&csr, "node3", NodeRole::Worker, "clusterA").unwrap();
        let der = crate::ca::root::cert_der(&cert).unwrap();
        let (cn, ou, _, _) = subject_of(&der).unwrap();
        assert_eq!((cn.as_str(), ou.as_str()), ("node3", "swarm-worker"));
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
        let sans = format!("{:?}", parsed.subject_alternative_name().unwrap().unwrap().value.general_names);
        assert!(!sans.contains("evil.example") && sans.contains("node3"), "{sans}");
    }

    #[test]
    fn save_load_and_corrupt_key() {
        let root = RootCa::generate().unwrap();
        let id = issue_identity(&root, "n", NodeRole::Manager, "c").unwrap();
        let dir = tempfile::tempdir().unwrap();
        id.save(dir.path()).unwrap();
        assert_eq!(NodeIdentity::load(dir.path()).unwrap(), id);
        std::fs::write(dir.path().join(KEY_FILE), "garbage").unwrap();
        let e = NodeIdentity::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("swarm-node.key"), "{e}");
    }
}
