//! mTLS for the cluster listener and its clients, and who is calling.

use super::identity::{role_of, subject_of};
use super::{CaError, NodeIdentity, MANAGER_SERVER_NAME};
use crate::api::NodeRole;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// Who called, from their verified client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub node_id: String,
    pub role: NodeRole,
    pub cluster_id: String,
}

/// The listener's TLS: presents the node's certificate, verifies client certificates against the cluster CA,
/// and lets clients without one in (a joining node fetches the CA and submits its CSR before it has a cert;
/// every other call checks [`peer_identity`]).
pub fn server_tls_config(id: &NodeIdentity) -> Result<ServerTlsConfig, CaError> {
    Ok(ServerTlsConfig::new()
        .identity(Identity::from_pem(&id.cert_pem, &id.key_pem))
        .client_ca_root(Certificate::from_pem(&id.ca_cert_pem))
        .client_auth_optional(true))
}

/// A member's client TLS: presents its certificate, trusts only the cluster CA, expects a manager.
pub fn client_tls_config(id: &NodeIdentity) -> Result<ClientTlsConfig, CaError> {
    Ok(ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&id.ca_cert_pem))
        .identity(Identity::from_pem(&id.cert_pem, &id.key_pem))
        .domain_name(MANAGER_SERVER_NAME))
}

/// A joining node's client TLS before it has a certificate: trusts the (pinned) CA, presents nothing.
pub fn bootstrap_client_tls_config(ca_cert_pem: &str) -> ClientTlsConfig {
    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_cert_pem)).domain_name(MANAGER_SERVER_NAME)
}

/// The caller's identity from its client certificate (verified against the CA by the TLS layer).
pub fn peer_identity<T>(req: &tonic::Request<T>) -> Result<PeerIdentity, CaError> {
    let certs = req.peer_certs().ok_or(CaError::Unauthenticated)?;
    let leaf = certs.first().ok_or(CaError::Unauthenticated)?;
    let (cn, ou, o, _) = subject_of(leaf.as_ref())?;
    Ok(PeerIdentity { node_id: cn, role: role_of(&ou)?, cluster_id: o })
}

/// Refuses a caller whose role is not among `allowed`.
pub fn authorize(peer: &PeerIdentity, allowed: &[NodeRole]) -> Result<(), tonic::Status> {
    if allowed.contains(&peer.role) {
        Ok(())
    } else {
        Err(tonic::Status::permission_denied(format!(
            "node {} ({}) is not allowed to make this call",
            peer.node_id, peer.role
        )))
    }
}
