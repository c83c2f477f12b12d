//! The root CA: generating it and signing node certificates.

use super::{role_ou, CaError, CA_COMMON_NAME};
use crate::api::NodeRole;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{pem::PemObject, CertificateDer, CertificateSigningRequestDer};
use sha2::{Digest, Sha256};
use std::time::{Duration, SystemTime};

/// How long the root CA is valid: 20 years (SwarmKit's `RootCAExpiration`).
pub const CA_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 3600);
/// How long a node certificate is valid: 90 days (SwarmKit's `DefaultNodeCertExpiration`).
pub const NODE_CERT_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
/// Certificates start an hour in the past, so peers whose clocks lag a little still accept them (SwarmKit's
/// `CertBackdate`).
pub(crate) const BACKDATE: Duration = Duration::from_secs(3600);

/// The cluster's root certificate authority. The key lives only on managers (in the Cluster object).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootCa {
    /// The self-signed CA certificate, PEM.
    pub cert_pem: String,
    /// The CA's private key, PKCS#8 PEM.
    pub key_pem: String,
    /// `cert_pem` decoded, checked when the value was made.
    cert_der: Vec<u8>,
}

fn cert_err(e: impl std::fmt::Display) -> CaError {
    CaError::Certificate(e.to_string())
}

fn validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = SystemTime::now();
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + lifetime).into();
}

/// A random positive 128-bit serial number (rcgen would otherwise derive it from the public key, giving a renewed
/// certificate for the same key the same serial).
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

/// A new ECDSA P-256 key pair.
pub(crate) fn new_key_pair() -> Result<KeyPair, CaError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(cert_err)
}

impl RootCa {
    /// A new self-signed ECDSA P-256 root with CN `swarm-ca`, valid 20 years.
    pub fn generate() -> Result<RootCa, CaError> {
        let key = new_key_pair()?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, CA_COMMON_NAME);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(random_serial());
        validity(&mut params, CA_VALIDITY);
        let cert = params.self_signed(&key).map_err(cert_err)?;
        Ok(RootCa { cert_pem: cert.pem(), key_pem: key.serialize_pem(), cert_der: cert.der().to_vec() })
    }

    /// A root CA from its stored certificate and key. Fails if either does not parse, the certificate is not a CA,
    /// or the key is not the certificate's.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<RootCa, CaError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| CaError::Certificate(format!("CA key: {e}")))?;
        let der = cert_der(cert_pem)?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| CaError::InvalidCertificate(format!("CA certificate: {e}")))?;
        if !cert.is_ca() {
            return Err(CaError::InvalidCertificate("the CA certificate is not marked as a CA".into()));
        }
        if cert.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(CaError::Certificate("the CA key does not belong to the CA certificate".into()));
        }
        Ok(RootCa { cert_pem: cert_pem.into(), key_pem: key_pem.into(), cert_der: der })
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// SHA-256 of the CA certificate's DER, lowercase hex (what [`super::JoinToken::generate`] takes).
    pub fn digest(&self) -> String {
        hex::encode(Sha256::digest(&self.cert_der))
    }

    /// Signs a node's CSR and returns the certificate (PEM). Only the CSR's public key is used, and it must be
    /// ECDSA P-256: subject (CN = node id, OU = role, O = cluster id), SANs, validity and usages are the CA's.
    pub fn issue(&self, csr_pem: &str, node_id: &str, role: NodeRole, cluster_id: &str) -> Result<String, CaError> {
        self.issue_for(csr_pem, node_id, role, cluster_id, NODE_CERT_VALIDITY)
    }

    /// [`RootCa::issue`] with a lifetime (the cluster's `--cert-expiry`).
    pub fn issue_for(
        &self,
        csr_pem: &str,
        node_id: &str,
        role: NodeRole,
        cluster_id: &str,
        lifetime: Duration,
    ) -> Result<String, CaError> {
        check_name("node id", node_id)?;
        check_name("cluster id", cluster_id)?;
        let public_key = csr_public_key(csr_pem)?;
        let ou = role_ou(role);
        let mut params = CertificateParams::new(vec![node_id.to_string(), ou.to_string()]).map_err(cert_err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node_id);
        dn.push(DnType::OrganizationalUnitName, ou);
        dn.push(DnType::OrganizationName, cluster_id);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth, ExtendedKeyUsagePurpose::ServerAuth];
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, lifetime);
        let key = KeyPair::from_pem(&self.key_pem).map_err(|e| CaError::Certificate(format!("CA key: {e}")))?;
        let issuer =
            Issuer::from_ca_cert_der(&CertificateDer::from(self.cert_der.as_slice()), key).map_err(cert_err)?;
        let cert = params.signed_by(&public_key, &issuer).map_err(cert_err)?;
        Ok(cert.pem())
    }
}

/// Node and cluster ids become a CN, an O and a DNS SAN: keep them to what all three accept.
fn check_name(what: &str, value: &str) -> Result<(), CaError> {
    if value.is_empty() || value.len() > 64 {
        return Err(CaError::Certificate(format!("{what} must be 1 to 64 characters, got {}", value.len())));
    }
    if let Some(c) = value.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.')) {
        return Err(CaError::Certificate(format!(
            "{what} {value:?} contains {c:?}; only ASCII letters, digits, '-' and '.' are allowed"
        )));
    }
    Ok(())
}

const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";

/// The public key of a CSR, after checking the CSR is signed by that key and the key is ECDSA P-256. Everything
/// else in the CSR (subject, requested extensions) is ignored.
fn csr_public_key(csr_pem: &str) -> Result<rcgen::SubjectPublicKeyInfo, CaError> {
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::prelude::FromDer;
    let bad = |why: String| CaError::InvalidCsr(why);
    let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
        .map_err(|e| bad(format!("no PEM \"CERTIFICATE REQUEST\" found ({e:?})")))?;
    let (rest, csr) = X509CertificationRequest::from_der(der.as_ref()).map_err(|e| bad(e.to_string()))?;
    if !rest.is_empty() {
        return Err(bad("trailing bytes after the request".into()));
    }
    csr.verify_signature().map_err(|_| bad("its signature does not verify with its own public key".into()))?;
    let spki = &csr.certification_request_info.subject_pki;
    let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok()).map(|o| o.to_id_string());
    if spki.algorithm.algorithm.to_id_string() != OID_EC_PUBLIC_KEY || curve.as_deref() != Some(OID_P256) {
        return Err(bad(format!(
            "the key must be ECDSA P-256, got algorithm {} with parameters {}",
            spki.algorithm.algorithm.to_id_string(),
            curve.unwrap_or_else(|| "none".into())
        )));
    }
    rcgen::SubjectPublicKeyInfo::from_der(spki.raw).map_err(|e| bad(e.to_string()))
}

/// The DER of the first certificate in a PEM text.
pub fn cert_der(pem_text: &str) -> Result<Vec<u8>, CaError> {
    CertificateDer::from_pem_slice(pem_text.as_bytes())
        .map(|c| c.to_vec())
        .map_err(|e| CaError::InvalidCertificate(format!("no PEM \"CERTIFICATE\" found ({e:?})")))
}

/// When to renew a certificate: a random point between 50 % and 80 % of its lifetime, so a cluster's nodes don't
/// all renew at once (SwarmKit's `calculateRandomExpiry`). An inverted range yields `not_before`.
pub fn renewal_deadline(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    renewal_point(not_before, not_after, rand::random::<f64>())
}

/// The point at `0.5 + 0.3 × r` of the lifetime, `r` clamped to 0..=1.
fn renewal_point(not_before: SystemTime, not_after: SystemTime, r: f64) -> SystemTime {
    let life = not_after.duration_since(not_before).unwrap_or_default();
    not_before + life.mul_f64(0.5 + 0.3 * r.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::extensions::GeneralName;
    use x509_parser::prelude::X509Certificate;

    fn parse(der: &[u8]) -> X509Certificate<'_> {
        x509_parser::parse_x509_certificate(der).unwrap().1
    }

    fn first<'a>(it: impl Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'a>>) -> String {
        it.map(|a| a.as_str().unwrap().to_string()).next().unwrap_or_default()
    }

    fn sans(cert: &X509Certificate<'_>) -> Vec<String> {
        let ext = cert.subject_alternative_name().unwrap().expect("has SANs");
        ext.value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::DNSName(d) => d.to_string(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    fn lifetime_days(cert: &X509Certificate<'_>) -> i64 {
        let v = cert.validity();
        (v.not_after.timestamp() - v.not_before.timestamp()) / 86_400
    }

    fn new_csr() -> (String, String) {
        let csr = crate::ca::NodeCsr::new().unwrap();
        (csr.csr_pem, csr.key_pem)
    }

    #[test]
    fn root_ca_is_a_p256_ca_named_swarm_ca_for_20_years() {
        let root = RootCa::generate().unwrap();
        let cert = parse(root.cert_der());
        assert_eq!(first(cert.subject().iter_common_name()), "swarm-ca");
        assert_eq!(cert.subject(), cert.issuer(), "self-signed");
        assert!(cert.is_ca());
        cert.verify_signature(None).expect("self-signature verifies");
        assert_eq!(cert.signature_algorithm.algorithm.to_id_string(), "1.2.840.10045.4.3.2", "ecdsa-with-SHA256");
        let curve = cert.public_key().algorithm.parameters.as_ref().unwrap().as_oid().unwrap().to_id_string();
        assert_eq!(curve, OID_P256);
        assert!((7299..=7301).contains(&lifetime_days(&cert)), "{}", lifetime_days(&cert));
        assert!(cert.key_usage().unwrap().unwrap().value.key_cert_sign());
        assert_eq!(root.digest(), hex::encode(Sha256::digest(cert_der(&root.cert_pem).unwrap())));
        assert_eq!(root.digest().len(), 64);

        let again = RootCa::from_pem(&root.cert_pem, &root.key_pem).unwrap();
        assert_eq!(again, root);
        let other = RootCa::generate().unwrap();
        assert_ne!(other.digest(), root.digest());
        let e = RootCa::from_pem(&root.cert_pem, &other.key_pem).unwrap_err().to_string();
        assert!(e.contains("does not belong"), "{e}");
        assert!(RootCa::from_pem("not pem", &root.key_pem).is_err());
    }

    #[test]
    fn node_certs_carry_role_node_and_cluster() {
        let root = RootCa::generate().unwrap();
        let ca = parse(root.cert_der());
        for (role, ou) in [(NodeRole::Manager, "swarm-manager"), (NodeRole::Worker, "swarm-worker")] {
            let (csr, _) = new_csr();
            let pem = root.issue(&csr, "node1abc", role, "cluster9").unwrap();
            let der = cert_der(&pem).unwrap();
            let cert = parse(&der);
            assert_eq!(first(cert.subject().iter_common_name()), "node1abc");
            assert_eq!(first(cert.subject().iter_organizational_unit()), ou);
            assert_eq!(first(cert.subject().iter_organization()), "cluster9");
            assert_eq!(sans(&cert), vec!["node1abc".to_string(), ou.to_string()]);
            assert_eq!(cert.issuer(), ca.subject());
            cert.verify_signature(Some(ca.public_key())).expect("signed by the root");
            assert!(cert.verify_signature(None).is_err(), "not self-signed");
            assert!(!cert.is_ca());

            let days = lifetime_days(&cert);
            assert_eq!(days, 90, "backdated an hour, so 90 days and an hour");
            let left = cert.validity().not_after.timestamp()
                - SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64;
            assert!((89 * 86_400..=90 * 86_400).contains(&left), "{left}");
            assert!(cert.validity().is_valid());

            let ku = cert.key_usage().unwrap().unwrap().value;
            assert!(ku.digital_signature() && ku.key_encipherment() && !ku.key_cert_sign());
            let eku = cert.extended_key_usage().unwrap().unwrap().value;
            assert!(eku.client_auth && eku.server_auth);
            let curve = cert.public_key().algorithm.parameters.as_ref().unwrap().as_oid().unwrap().to_id_string();
            assert_eq!(curve, OID_P256);
        }
    }

    #[test]
    fn serials_differ_even_for_the_same_key() {
        let root = RootCa::generate().unwrap();
        let (csr, _) = new_csr();
        let a = cert_der(&root.issue(&csr, "n1", NodeRole::Worker, "c").unwrap()).unwrap();
        let b = cert_der(&root.issue(&csr, "n1", NodeRole::Worker, "c").unwrap()).unwrap();
        assert_ne!(parse(&a).raw_serial(), parse(&b).raw_serial());
    }

    #[test]
    fn a_csr_cannot_choose_its_subject_names_or_role() {
        let root = RootCa::generate().unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["evil.example".to_string(), "swarm-manager".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, "admin");
        params.distinguished_name.push(DnType::OrganizationalUnitName, "swarm-manager");
        params.distinguished_name.push(DnType::OrganizationName, "other-cluster");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();

        let der = cert_der(&root.issue(&csr, "node3", NodeRole::Worker, "clusterA").unwrap()).unwrap();
        let cert = parse(&der);
        assert_eq!(first(cert.subject().iter_common_name()), "node3");
        assert_eq!(first(cert.subject().iter_organizational_unit()), "swarm-worker");
        assert_eq!(first(cert.subject().iter_organization()), "clusterA");
        assert_eq!(cert.subject().iter_organizational_unit().count(), 1);
        assert_eq!(sans(&cert), vec!["node3".to_string(), "swarm-worker".to_string()]);
        assert!(!cert.is_ca());
        assert!(!cert.key_usage().unwrap().unwrap().value.key_cert_sign());
        // ...but the certificate is for the CSR's key.
        assert_eq!(cert.public_key().raw, key.subject_public_key_info().as_slice());
    }

    #[test]
    fn bad_csrs_are_refused() {
        let root = RootCa::generate().unwrap();
        let e = root.issue("garbage", "n", NodeRole::Worker, "c").unwrap_err();
        assert!(matches!(e, CaError::InvalidCsr(_)), "{e}");

        // Another key type than ECDSA P-256.
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let csr = CertificateParams::default().serialize_request(&key).unwrap().pem().unwrap();
        let e = root.issue(&csr, "n", NodeRole::Worker, "c").unwrap_err().to_string();
        assert!(e.contains("ECDSA P-256"), "{e}");

        // A CSR whose signature does not match its key (one byte of the signature flipped).
        let (csr, _) = new_csr();
        let mut der = CertificateSigningRequestDer::from_pem_slice(csr.as_bytes()).unwrap().as_ref().to_vec();
        let last = der.len() - 1;
        der[last] ^= 0x01;
        let tampered = pem_encode("CERTIFICATE REQUEST", &der);
        let e = root.issue(&tampered, "n", NodeRole::Worker, "c").unwrap_err().to_string();
        assert!(e.contains("invalid certificate signing request"), "{e}");

        // Names the CA will not put in a certificate.
        let (csr, _) = new_csr();
        let e = root.issue(&csr, "", NodeRole::Worker, "c").unwrap_err().to_string();
        assert!(e.contains("node id"), "{e}");
        let e = root.issue(&csr, "n", NodeRole::Worker, "c/../x").unwrap_err().to_string();
        assert!(e.contains("cluster id"), "{e}");
    }

    fn pem_encode(label: &str, der: &[u8]) -> String {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let body: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
        format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", body.join("\n"))
    }

    #[test]
    fn renewal_falls_within_half_to_four_fifths() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let end = start + Duration::from_secs(1000);
        assert_eq!(renewal_point(start, end, 0.0), start + Duration::from_secs(500));
        assert_eq!(renewal_point(start, end, 1.0), start + Duration::from_secs(800));
        assert_eq!(renewal_point(start, end, 7.0), start + Duration::from_secs(800), "clamped");
        let mut seen = Vec::new();
        for _ in 0..500 {
            let d = renewal_deadline(start, end).duration_since(start).unwrap().as_secs_f64();
            assert!((500.0..=800.0).contains(&d), "{d}");
            seen.push(d);
        }
        let (lo, hi) = seen.iter().fold((f64::MAX, f64::MIN), |(l, h), &d| (l.min(d), h.max(d)));
        assert!(lo < 560.0 && hi > 740.0, "spread over the window: {lo}..{hi}");
        assert_eq!(renewal_deadline(end, start), end, "inverted range");
    }
}
