//! The root CA: generating it and signing node certificates.

use super::{role_ou, CaError, MANAGER_SERVER_NAME};
use crate::api::NodeRole;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use sha2::{Digest, Sha256};
use std::time::{Duration, SystemTime};

const CA_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 3600);
const NODE_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
/// Certificates start an hour in the past, so clocks a little behind still accept them.
const BACKDATE: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootCa {
    pub cert_pem: String,
    pub key_pem: String,
}

fn cert_err(e: impl std::fmt::Display) -> CaError {
    CaError::Certificate(e.to_string())
}

fn validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = SystemTime::now();
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + lifetime).into();
}

impl RootCa {
    /// A new self-signed ECDSA P-256 root, valid 20 years.
    pub fn generate() -> Result<RootCa, CaError> {
        let key = KeyPair::generate().map_err(cert_err)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "swarm-ca");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        validity(&mut params, CA_VALIDITY);
        let cert = params.self_signed(&key).map_err(cert_err)?;
        Ok(RootCa { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<RootCa, CaError> {
        KeyPair::from_pem(key_pem).map_err(|e| CaError::Certificate(format!("CA key: {e}")))?;
        cert_der(cert_pem)?;
        Ok(RootCa { cert_pem: cert_pem.into(), key_pem: key_pem.into() })
    }

    /// SHA-256 of the certificate's DER, lowercase hex.
    pub fn digest(&self) -> String {
        hex::encode(Sha256::digest(cert_der(&self.cert_pem).unwrap_or_default()))
    }

    /// Signs a node's CSR. Only the CSR's public key is used: subject, SANs, validity and usages are the CA's.
    pub fn issue(&self, csr_pem: &str, node_id: &str, role: NodeRole, cluster_id: &str) -> Result<String, CaError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| CaError::InvalidCsr(e.to_string()))?;
        let role_name = match role {
            NodeRole::Manager => MANAGER_SERVER_NAME,
            NodeRole::Worker => super::WORKER_OU,
        };
        let mut params = CertificateParams::new(vec![node_id.to_string(), role_name.to_string()]).map_err(cert_err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node_id);
        dn.push(DnType::OrganizationalUnitName, role_ou(role));
        dn.push(DnType::OrganizationName, cluster_id);
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth, ExtendedKeyUsagePurpose::ServerAuth];
        validity(&mut params, NODE_VALIDITY);
        let key = KeyPair::from_pem(&self.key_pem).map_err(|e| CaError::Certificate(format!("CA key: {e}")))?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, key).map_err(cert_err)?;
        let cert = params.signed_by(&csr.public_key, &issuer).map_err(cert_err)?;
        Ok(cert.pem())
    }
}

pub(crate) fn cert_der(pem_text: &str) -> Result<Vec<u8>, CaError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    CertificateDer::from_pem_slice(pem_text.as_bytes())
        .map(|c| c.to_vec())
        .map_err(|e| CaError::InvalidCertificate(format!("no PEM certificate found ({e:?})")))
}

/// When to renew a certificate: a random point between 50 % and 80 % of its lifetime, so that a cluster's nodes
/// don't all renew at once.
pub fn renewal_deadline(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let life = not_after.duration_since(not_before).unwrap_or_default();
    let frac = 0.5 + rand::random::<f64>() * 0.3;
    not_before + life.mul_f64(frac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_falls_within_half_to_four_fifths() {
        let start = SystemTime::UNIX_EPOCH;
        let end = start + Duration::from_secs(1000);
        for _ in 0..200 {
            let d = renewal_deadline(start, end).duration_since(start).unwrap().as_secs_f64();
            assert!((500.0..=800.0).contains(&d), "{d}");
        }
    }
}
