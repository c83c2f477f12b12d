//! A node's identity: its key, its certificate and the root CA certificate, kept in the node's certificates
//! directory under Docker's file names.

use super::root::{cert_der, new_key_pair};
use super::{role_of_ou, CaError};
use crate::api::NodeRole;
use crate::manager::datakey::UnlockKey;
use base64::Engine as _;
use rcgen::{CertificateParams, KeyPair, PublicKeyData};
use std::path::Path;
use std::time::{Duration, SystemTime};
use x509_parser::prelude::X509Certificate;

/// The node's certificate (PEM) in its certificates directory.
pub const NODE_CERT_FILE: &str = "swarm-node.crt";
/// The node's private key (PEM, mode 0600) in its certificates directory.
pub const NODE_KEY_FILE: &str = "swarm-node.key";
/// The cluster's root CA certificate (PEM) in a node's certificates directory.
pub const CA_CERT_FILE: &str = "swarm-root-ca.crt";

/// A fresh ECDSA P-256 key pair and a certificate signing request for it, made on the node that will own the key.
/// The request carries no subject: the CA chooses it.
#[derive(Clone)]
pub struct NodeCsr {
    /// The request, PEM (`CERTIFICATE REQUEST`).
    pub csr_pem: String,
    /// The private key, PKCS#8 PEM. Never leaves the node.
    pub key_pem: String,
}

impl std::fmt::Debug for NodeCsr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCsr").field("csr_pem", &self.csr_pem).field("key_pem", &"<redacted>").finish()
    }
}

impl NodeCsr {
    /// A new key pair and a CSR signed with it.
    pub fn new() -> Result<NodeCsr, CaError> {
        let err = |e: rcgen::Error| CaError::Certificate(e.to_string());
        let key = new_key_pair()?;
        let csr = CertificateParams::default().serialize_request(&key).map_err(err)?;
        Ok(NodeCsr { csr_pem: csr.pem().map_err(err)?, key_pem: key.serialize_pem() })
    }
}

/// What a node certificate says about its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CertSubject {
    pub node_id: String,
    pub role: NodeRole,
    pub cluster_id: String,
}

fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>, CaError> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, c)| c)
        .map_err(|e| CaError::InvalidCertificate(format!("cannot parse the certificate: {e}")))
}

fn first_attr<'a>(
    what: &str,
    mut it: impl Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'a>>,
) -> Result<String, CaError> {
    match it.next().map(|a| a.as_str()) {
        Some(Ok(s)) if !s.is_empty() => Ok(s.to_string()),
        Some(Ok(_)) | None => Err(CaError::InvalidCertificate(format!("the subject has no {what}"))),
        Some(Err(e)) => Err(CaError::InvalidCertificate(format!("the subject's {what} is not a string: {e}"))),
    }
}

/// Node id (CN), role (OU) and cluster id (O) of a node certificate.
pub(crate) fn subject_of(cert: &X509Certificate<'_>) -> Result<CertSubject, CaError> {
    let subject = cert.subject();
    let node_id = first_attr("common name (node id)", subject.iter_common_name())?;
    let ou = first_attr("organizational unit (role)", subject.iter_organizational_unit())?;
    let cluster_id = first_attr("organization (cluster id)", subject.iter_organization())?;
    Ok(CertSubject { node_id, role: role_of_ou(&ou)?, cluster_id })
}

/// Node id, role and cluster id of a node certificate in DER.
pub(crate) fn subject_of_der(der: &[u8]) -> Result<CertSubject, CaError> {
    subject_of(&parse_cert(der)?)
}

/// Whether the certificate `der` is signed by the CA certificate `ca_pem`.
pub(crate) fn issued_by(der: &[u8], ca_pem: &str) -> bool {
    let Ok(ca_der) = cert_der(ca_pem) else { return false };
    let (Ok(cert), Ok(ca)) = (parse_cert(der), parse_cert(&ca_der)) else { return false };
    cert.issuer() == ca.subject() && cert.verify_signature(Some(ca.public_key())).is_ok()
}

fn system_time(t: x509_parser::time::ASN1Time) -> SystemTime {
    let secs = t.timestamp();
    if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// A node's certificate, key and root CA, and what the certificate says: the node's id, role and cluster.
/// Made by [`NodeIdentity::from_cert`] or [`NodeIdentity::load`], which check that the three belong together.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    /// The certificate's CN.
    pub node_id: String,
    /// From the certificate's OU.
    pub role: NodeRole,
    /// The certificate's O.
    pub cluster_id: String,
    /// The node certificate, PEM.
    pub cert_pem: String,
    /// The node's private key, PEM.
    pub key_pem: String,
    /// The cluster's root CA certificate, PEM.
    pub ca_cert_pem: String,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("node_id", &self.node_id)
            .field("role", &self.role)
            .field("cluster_id", &self.cluster_id)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl NodeIdentity {
    /// Reads the node id, role and cluster id back from the certificate's CN, OU and O, after checking that the
    /// key is the certificate's and that the certificate is signed by the CA. An expired certificate is accepted
    /// (the node must still be able to tell it needs a new one); see [`NodeIdentity::not_after`].
    pub fn from_cert(cert_pem: &str, key_pem: &str, ca_cert_pem: &str) -> Result<NodeIdentity, CaError> {
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| CaError::InvalidCertificate(format!("the private key does not parse: {e}")))?;
        let der = cert_der(cert_pem)?;
        let cert = parse_cert(&der)?;
        let ca_der =
            cert_der(ca_cert_pem).map_err(|e| CaError::InvalidCertificate(format!("the CA certificate: {e}")))?;
        let ca = parse_cert(&ca_der).map_err(|e| CaError::InvalidCertificate(format!("the CA certificate: {e}")))?;
        if cert.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(CaError::InvalidCertificate("the private key does not belong to the certificate".into()));
        }
        if cert.issuer() != ca.subject() || cert.verify_signature(Some(ca.public_key())).is_err() {
            return Err(CaError::InvalidCertificate("the certificate is not signed by the root CA".into()));
        }
        let subject = subject_of(&cert)?;
        Ok(NodeIdentity {
            node_id: subject.node_id,
            role: subject.role,
            cluster_id: subject.cluster_id,
            cert_pem: cert_pem.into(),
            key_pem: key_pem.into(),
            ca_cert_pem: ca_cert_pem.into(),
            not_before: system_time(cert.validity().not_before),
            not_after: system_time(cert.validity().not_after),
        })
    }

    /// When the certificate became valid.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// When the certificate expires.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// A fresh random point in 50–80 % of the certificate's lifetime at which to renew it. The lifetime counts
    /// from issue, not from the backdated `not_before`: with a 30 s `--cert-expiry`, the hour of backdate would
    /// otherwise put the point in the past and the node would renew on every check.
    pub fn renewal_deadline(&self) -> SystemTime {
        let issued = (self.not_before + super::root::BACKDATE).min(self.not_after);
        super::renewal_deadline(issued, self.not_after)
    }

    /// Writes `swarm-node.crt`, `swarm-node.key` (mode 0600) and `swarm-root-ca.crt` into `dir` (created if
    /// missing), each through a temporary file renamed into place, so a crash leaves the old or the new file.
    pub fn save(&self, dir: &Path) -> Result<(), CaError> {
        self.save_wrapped(dir, None)
    }

    /// [`NodeIdentity::save`], with the private key wrapped with the swarm's unlock key when it is locked.
    pub fn save_wrapped(&self, dir: &Path, unlock: Option<&UnlockKey>) -> Result<(), CaError> {
        std::fs::create_dir_all(dir).map_err(|e| file_err(dir, format!("cannot create the directory: {e}")))?;
        // The CA first and the certificate last: a crash in between leaves a new key with the old certificate,
        // which `load` reports as a mismatch rather than silently using a stale pair.
        write_atomic(dir, CA_CERT_FILE, &self.ca_cert_pem, 0o644)?;
        let key = match unlock {
            None => self.key_pem.clone(),
            Some(k) => wrap_key(k, &self.key_pem),
        };
        write_atomic(dir, NODE_KEY_FILE, &key, 0o600)?;
        write_atomic(dir, NODE_CERT_FILE, &self.cert_pem, 0o644)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Reads an identity saved by [`NodeIdentity::save`]. Errors name the file that is missing or unusable.
    pub fn load(dir: &Path) -> Result<NodeIdentity, CaError> {
        Self::load_wrapped(dir, None)
    }

    /// Whether the private key in `dir` is wrapped with an unlock key (the manager starts locked).
    pub fn key_is_wrapped(dir: &Path) -> bool {
        std::fs::read_to_string(dir.join(NODE_KEY_FILE)).is_ok_and(|t| t.starts_with(WRAPPED_BEGIN))
    }

    /// [`NodeIdentity::load`], unwrapping the private key with `unlock` if it is wrapped: a wrong or missing key
    /// is [`CaError::Locked`].
    pub fn load_wrapped(dir: &Path, unlock: Option<&UnlockKey>) -> Result<NodeIdentity, CaError> {
        let read = |name: &str| {
            let path = dir.join(name);
            match std::fs::read_to_string(&path) {
                Ok(text) => Ok(text),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(file_err(&path, "missing".into())),
                Err(e) => Err(file_err(&path, format!("cannot read: {e}"))),
            }
        };
        let (cert, key, ca) = (read(NODE_CERT_FILE)?, read(NODE_KEY_FILE)?, read(CA_CERT_FILE)?);
        let (cert_path, key_path, ca_path) =
            (dir.join(NODE_CERT_FILE), dir.join(NODE_KEY_FILE), dir.join(CA_CERT_FILE));
        let key = match key.strip_prefix(WRAPPED_BEGIN) {
            None => key,
            Some(rest) => {
                let b64: String = rest.lines().take_while(|l| !l.starts_with("-----END")).collect();
                let sealed = base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .map_err(|e| file_err(&key_path, format!("the wrapped key is not base64: {e}")))?;
                let plain = unlock.ok_or(CaError::Locked)?.open(&sealed).map_err(|_| CaError::Locked)?;
                String::from_utf8(plain).map_err(|_| file_err(&key_path, "the unwrapped key is not text".into()))?
            }
        };
        KeyPair::from_pem(&key).map_err(|e| file_err(&key_path, format!("not a usable private key: {e}")))?;
        let ca_der = cert_der(&ca).map_err(|e| file_err(&ca_path, e.to_string()))?;
        parse_cert(&ca_der).map_err(|e| file_err(&ca_path, e.to_string()))?;
        let cert_der_ = cert_der(&cert).map_err(|e| file_err(&cert_path, e.to_string()))?;
        parse_cert(&cert_der_).map_err(|e| file_err(&cert_path, e.to_string()))?;
        NodeIdentity::from_cert(&cert, &key, &ca).map_err(|e| {
            let e = e.to_string();
            let detail = if e.contains("private key") {
                format!("{e} in {}", key_path.display())
            } else if e.contains("root CA") {
                format!("{e} in {}", ca_path.display())
            } else {
                e
            };
            file_err(&cert_path, detail)
        })
    }
}

/// The first line of a node key wrapped with the unlock key (PEM-style, so it is not mistaken for a usable key).
const WRAPPED_BEGIN: &str = "-----BEGIN SHOAL WRAPPED PRIVATE KEY-----";

/// The node key file's text with the key sealed with `unlock`.
fn wrap_key(unlock: &UnlockKey, key_pem: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(unlock.seal(key_pem.as_bytes()));
    let mut out = format!("{WRAPPED_BEGIN}\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str("-----END SHOAL WRAPPED PRIVATE KEY-----\n");
    out
}

fn file_err(path: &Path, reason: String) -> CaError {
    CaError::File { path: path.to_path_buf(), reason }
}

/// Writes `dir/name` atomically with `mode`.
fn write_atomic(dir: &Path, name: &str, text: &str, mode: u32) -> Result<(), CaError> {
    let path = dir.join(name);
    crate::fsutil::write_atomic(&path, text.as_bytes(), mode).map_err(|e| file_err(&path, format!("cannot write: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::{issue_identity, RootCa};
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_wrapped_key_loads_only_with_its_unlock_key() {
        let root = RootCa::generate().unwrap();
        let m = issue_identity(&root, "node1", NodeRole::Manager, "clusterA").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let unlock = UnlockKey::generate();
        m.save_wrapped(dir.path(), Some(&unlock)).unwrap();
        assert!(NodeIdentity::key_is_wrapped(dir.path()));
        let on_disk = std::fs::read_to_string(dir.path().join(NODE_KEY_FILE)).unwrap();
        let body: String = m.key_pem.lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(!on_disk.contains(&body[..40]) && !on_disk.contains("PRIVATE KEY-----\nMI"), "{on_disk}");
        assert!(matches!(NodeIdentity::load(dir.path()), Err(CaError::Locked)));
        assert!(matches!(NodeIdentity::load_wrapped(dir.path(), Some(&UnlockKey::generate())), Err(CaError::Locked)));
        assert_eq!(NodeIdentity::load_wrapped(dir.path(), Some(&unlock)).unwrap(), m);
        m.save(dir.path()).unwrap();
        assert!(!NodeIdentity::key_is_wrapped(dir.path()));
        assert_eq!(NodeIdentity::load(dir.path()).unwrap(), m);
    }

    #[test]
    fn from_cert_reads_node_role_and_cluster() {
        let root = RootCa::generate().unwrap();
        let m = issue_identity(&root, "node1", NodeRole::Manager, "clusterA").unwrap();
        assert_eq!((m.node_id.as_str(), m.role, m.cluster_id.as_str()), ("node1", NodeRole::Manager, "clusterA"));
        let w = issue_identity(&root, "node2", NodeRole::Worker, "clusterA").unwrap();
        assert_eq!((w.node_id.as_str(), w.role), ("node2", NodeRole::Worker));
        let left = w.not_after().duration_since(SystemTime::now()).unwrap().as_secs();
        assert!((89 * 86_400..=90 * 86_400).contains(&left), "{left}");
        let life = w.not_after().duration_since(w.not_before()).unwrap().as_secs();
        assert_eq!(life, 90 * 86_400 + 3600);
        // 50–80 % of the 90 days counted from issue (an hour after the backdated not_before).
        let (issued, days90) = (w.not_before() + Duration::from_secs(3600), 90 * 86_400);
        let renew = w.renewal_deadline();
        assert!(renew >= issued + Duration::from_secs(days90 / 2));
        assert!(renew <= issued + Duration::from_secs(days90 * 8 / 10 + 1));

        // A 30 s certificate (the smallest --cert-expiry) renews 15–24 s after issue, not at once.
        let short =
            crate::ca::issue_identity_for(&root, "node3", NodeRole::Worker, "clusterA", Duration::from_secs(30))
                .unwrap();
        let after = short.renewal_deadline().duration_since(SystemTime::now()).expect("in the future").as_secs_f64();
        assert!((13.0..=24.5).contains(&after), "{after}");
        let dbg = format!("{w:?}");
        assert!(!dbg.contains("PRIVATE KEY") && dbg.contains("node2"), "{dbg}");
    }

    #[test]
    fn from_cert_refuses_pieces_that_do_not_belong_together() {
        let root = RootCa::generate().unwrap();
        let other = RootCa::generate().unwrap();
        let a = issue_identity(&root, "a", NodeRole::Worker, "c").unwrap();
        let b = issue_identity(&root, "b", NodeRole::Worker, "c").unwrap();
        let e = NodeIdentity::from_cert(&a.cert_pem, &b.key_pem, &root.cert_pem).unwrap_err().to_string();
        assert!(e.contains("private key does not belong"), "{e}");
        let e = NodeIdentity::from_cert(&a.cert_pem, &a.key_pem, &other.cert_pem).unwrap_err().to_string();
        assert!(e.contains("not signed by the root CA"), "{e}");
        let e = NodeIdentity::from_cert(&a.cert_pem, "nope", &root.cert_pem).unwrap_err().to_string();
        assert!(e.contains("private key does not parse"), "{e}");
        let e = NodeIdentity::from_cert("nope", &a.key_pem, &root.cert_pem).unwrap_err().to_string();
        assert!(e.contains("no PEM \"CERTIFICATE\""), "{e}");
        // The CA certificate itself is not a node certificate: no OU.
        let ca_as_node = NodeIdentity::from_cert(&root.cert_pem, &root.key_pem, &root.cert_pem).unwrap_err();
        assert!(ca_as_node.to_string().contains("organizational unit (role)"), "{ca_as_node}");
    }

    #[test]
    fn save_load_round_trip_with_docker_file_names() {
        let root = RootCa::generate().unwrap();
        let id = issue_identity(&root, "n", NodeRole::Manager, "c").unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("certificates");
        id.save(&dir).unwrap();
        let mut names: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(names, ["swarm-node.crt", "swarm-node.key", "swarm-root-ca.crt"], "no temporary files left");
        let mode = |n: &str| std::fs::metadata(dir.join(n)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(NODE_KEY_FILE), 0o600);
        assert_eq!(mode(NODE_CERT_FILE), 0o644);
        assert_eq!(std::fs::read_to_string(dir.join(NODE_KEY_FILE)).unwrap(), id.key_pem);
        assert_eq!(std::fs::read_to_string(dir.join(CA_CERT_FILE)).unwrap(), root.cert_pem);
        let loaded = NodeIdentity::load(&dir).unwrap();
        assert_eq!(loaded, id);
        assert_eq!(loaded.not_after(), id.not_after());

        // Saving again over the old files (renewal) replaces them, keeping the key private even when a
        // world-readable leftover temporary file is in the way.
        std::fs::write(dir.join(".swarm-node.key.tmp"), "stale").unwrap();
        std::fs::set_permissions(dir.join(".swarm-node.key.tmp"), std::fs::Permissions::from_mode(0o666)).unwrap();
        let renewed = issue_identity(&root, "n", NodeRole::Worker, "c").unwrap();
        renewed.save(&dir).unwrap();
        assert_eq!(NodeIdentity::load(&dir).unwrap().role, NodeRole::Worker);
        assert_eq!(mode(NODE_KEY_FILE), 0o600);
        assert!(!dir.join("swarm-node.key.tmp").exists());
    }

    #[test]
    fn load_errors_name_the_file() {
        let root = RootCa::generate().unwrap();
        let id = issue_identity(&root, "n", NodeRole::Manager, "c").unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();

        let e = NodeIdentity::load(dir).unwrap_err().to_string();
        assert!(e.contains("swarm-node.crt") && e.contains("missing"), "{e}");

        id.save(dir).unwrap();
        std::fs::write(dir.join(NODE_KEY_FILE), "garbage").unwrap();
        let e = NodeIdentity::load(dir).unwrap_err().to_string();
        assert!(e.contains(&dir.join("swarm-node.key").display().to_string()) && e.contains("private key"), "{e}");

        id.save(dir).unwrap();
        std::fs::write(dir.join(NODE_CERT_FILE), "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
            .unwrap();
        let e = NodeIdentity::load(dir).unwrap_err().to_string();
        assert!(e.contains("swarm-node.crt") && e.contains("cannot parse"), "{e}");

        id.save(dir).unwrap();
        std::fs::remove_file(dir.join(CA_CERT_FILE)).unwrap();
        let e = NodeIdentity::load(dir).unwrap_err().to_string();
        assert!(e.contains("swarm-root-ca.crt") && e.contains("missing"), "{e}");

        // A CA file from another cluster.
        id.save(dir).unwrap();
        std::fs::write(dir.join(CA_CERT_FILE), RootCa::generate().unwrap().cert_pem).unwrap();
        let e = NodeIdentity::load(dir).unwrap_err().to_string();
        assert!(e.contains("not signed by the root CA") && e.contains("swarm-root-ca.crt"), "{e}");

        // A key from another identity.
        id.save(dir).unwrap();
        let stranger = issue_identity(&root, "x", NodeRole::Worker, "c").unwrap();
        std::fs::write(dir.join(NODE_KEY_FILE), &stranger.key_pem).unwrap();
        let e = NodeIdentity::load(dir).unwrap_err().to_string();
        assert!(e.contains("does not belong") && e.contains("swarm-node.key"), "{e}");
    }
}
