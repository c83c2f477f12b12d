//! The wire messages of `shoal.NodeCA`, the service a joining node talks to before it has a certificate.

use super::NodeAvailability;
use serde::{Deserialize, Serialize};

/// The cluster's root CA certificate, as `GetRootCACertificate` returns it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GetRootCaCertificateResponse {
    /// PEM.
    pub certificate: String,
}

/// A joining node's request for its first certificate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IssueNodeCertificateRequest {
    /// The node's certificate signing request, PEM. Only its public key is used.
    pub csr: String,
    /// The join token the user gave; it decides the role.
    pub token: String,
    /// `swarm join --availability`.
    pub availability: NodeAvailability,
    /// `swarm join --advertise-addr` (ip:port), empty when not given.
    #[serde(default)]
    pub advertise_addr: String,
    /// The Raft id a node joining as a manager will run under (it chose it); 0 for a worker.
    #[serde(default)]
    pub raft_id: u64,
}

/// The new node's id and its certificate.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IssueNodeCertificateResponse {
    pub node_id: String,
    /// PEM, signed by the root CA.
    pub certificate: String,
}

/// What certificate a member should hold now, as the managers record it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeCertificateStatusResponse {
    /// The role its certificate must carry (it changes on promote and demote).
    pub role: super::NodeRole,
    /// The cluster's root CA (PEM): a member whose certificate is from another root renews at once (a rotation).
    #[serde(default)]
    pub root_ca_cert_pem: String,
    /// During a root rotation, the root being replaced (PEM), which members keep trusting until it is over.
    #[serde(default)]
    pub previous_root_ca_cert_pem: String,
}

impl NodeCertificateStatusResponse {
    /// The roots a member must trust now (none if the manager did not say).
    pub fn trusted_roots(&self) -> Vec<String> {
        [&self.root_ca_cert_pem, &self.previous_root_ca_cert_pem]
            .into_iter()
            .filter(|p| !p.is_empty())
            .cloned()
            .collect()
    }
}

/// A member's request for a new certificate (renewal, or a role change), authenticated by its current one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenewNodeCertificateRequest {
    /// PEM; only its public key is used.
    pub csr: String,
    /// The Raft id it will run under if the new certificate makes it a manager.
    #[serde(default)]
    pub raft_id: u64,
    /// Its cluster address (`ip:port`), where Raft reaches it if it becomes a manager.
    #[serde(default)]
    pub advertise_addr: String,
}

/// The managers' data key (text form), for a manager that has none yet: one that joined or was promoted. Only a
/// member holding a manager certificate gets it, over mTLS.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct DataKeyResponse {
    pub key: String,
}

impl std::fmt::Debug for DataKeyResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKeyResponse(..)")
    }
}
