//! The cluster certificate authority and every node's mTLS identity.
//!
//! ```text
//!  swarm init:  RootCa::generate ─▶ CA cert + key (stored in the Cluster object, key never leaves managers)
//!               NodeCsr::new ─▶ RootCa::issue(csr, node id, manager, cluster id) ─▶ NodeIdentity::save
//!  swarm join:  (later) fetch CA cert, check it against the token's digest, send CSR + token, get a cert
//!  every call:  server_tls_config / client_tls_config ─▶ mTLS; peer_identity reads CN/OU/O of the caller
//! ```
//! Node certificates: ECDSA P-256, 90 days, CN = node id, OU = `swarm-manager`/`swarm-worker`, O = cluster id.

mod identity;
mod root;
mod tls;
mod token;

pub use identity::{NodeCsr, NodeIdentity};
pub use root::{renewal_deadline, RootCa};
pub use tls::{authorize, bootstrap_client_tls_config, client_tls_config, peer_identity, server_tls_config, PeerIdentity};
pub use token::JoinToken;

use crate::api::NodeRole;
use std::path::PathBuf;

/// The OU of a manager's certificate.
pub const MANAGER_OU: &str = "swarm-manager";
/// The OU of a worker's certificate.
pub const WORKER_OU: &str = "swarm-worker";
/// The name clients verify managers' certificates against.
pub const MANAGER_SERVER_NAME: &str = "swarm-manager";

pub fn role_ou(role: NodeRole) -> &'static str {
    match role {
        NodeRole::Manager => MANAGER_OU,
        NodeRole::Worker => WORKER_OU,
    }
}

/// Failures of the CA and of node identities.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Generating or signing a certificate failed.
    #[error("certificate: {0}")]
    Certificate(String),
    /// A certificate signing request cannot be parsed or verified.
    #[error("invalid certificate signing request: {0}")]
    InvalidCsr(String),
    /// A join token is malformed.
    #[error("invalid join token: {0}")]
    InvalidToken(String),
    /// A certificate or key file is missing or unreadable.
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    /// A certificate does not carry what a node certificate must (CN, OU, O).
    #[error("invalid node certificate: {0}")]
    InvalidCertificate(String),
    /// The caller presented no client certificate.
    #[error("the caller presented no client certificate")]
    Unauthenticated,
}

/// Issues a node identity as a joining node would obtain it: a fresh key pair and CSR, signed by `root`.
pub fn issue_identity(root: &RootCa, node_id: &str, role: NodeRole, cluster_id: &str) -> Result<NodeIdentity, CaError> {
    let csr = NodeCsr::new()?;
    let cert_pem = root.issue(&csr.csr_pem, node_id, role, cluster_id)?;
    NodeIdentity::from_cert(&cert_pem, &csr.key_pem, &root.cert_pem)
}
