//! The cluster certificate authority and every node's mTLS identity (Docker Swarm / SwarmKit's `ca` package).
//!
//! ```text
//!  swarm init (first manager)
//!    RootCa::generate ──▶ self-signed "swarm-ca", ECDSA P-256, 20 years (cert + key go in the Cluster object)
//!    JoinToken::generate(root.digest()) ×2 ──▶ worker token, manager token  SWMTKN-1-<CA digest>-<secret>
//!    NodeCsr::new ──▶ RootCa::issue(csr, node id, Manager, cluster id) ──▶ NodeIdentity::save(<state>/certificates)
//!
//!  swarm join --token SWMTKN-1-… <manager>
//!    JoinToken::parse(token)
//!    (join.rs) TLS without verifying the server, no client cert ──▶ manager (server.rs): fetch root CA
//!    token.matches_ca(CA DER)?  ── no ──▶ refuse: somebody else's CA (man in the middle)
//!    NodeCsr::new ──(CSR + token; bootstrap TLS)──▶ manager: JoinToken::role_for(token, worker, manager) ─▶ role
//!                                          RootCa::issue(csr, new node id, role, cluster id)
//!    ◀── node cert ── NodeIdentity::from_cert(cert, key, CA).save(dir)
//!
//!  every later call
//!    client_tls_config(identity) ──mTLS──▶ server_tls_config(identity)
//!                                          peer_identity(&req) ─▶ {node id, role, cluster id} from CN / OU / O
//!                                          authorize(&peer, &[Manager]) ─▶ PermissionDenied otherwise
//!
//!  renewal: at renewal_deadline(not_before, not_after), a random point in 50–80 % of the cert's lifetime;
//!           ClusterTls::replace (reload.rs) swaps it in for new connections, nothing restarts
//! ```
//!
//! Node certificates: ECDSA P-256, 90 days, CN = node id, OU = `swarm-manager`/`swarm-worker`, O = cluster id,
//! DNS SANs = node id and `swarm-manager`/`swarm-worker`. The CA takes only the public key from a CSR: a CSR never
//! chooses its subject, names or role.

mod identity;
mod join;
mod reload;
mod root;
mod rotation;
mod server;
mod tls;
mod token;

pub(crate) use identity::issued_by;
pub use identity::{NodeCsr, NodeIdentity, CA_CERT_FILE, NODE_CERT_FILE, NODE_KEY_FILE};
pub use join::{fetch_root_ca, member_ca_client, request_identity, JoinError};
pub use reload::{endpoint, ClusterTls, Connector, Incoming};
pub use root::{cert_der, renewal_deadline, RootCa, CA_VALIDITY, NODE_CERT_VALIDITY};
pub use rotation::{follow_trusted_roots, node_renewed, start_rotation};
pub use server::{NodeCaService, INVALID_JOIN_TOKEN};
pub use tls::{
    authenticate, authorize, bootstrap_client_tls_config, client_tls_config, peer_identity, server_tls_config,
    PeerIdentity,
};
pub use token::JoinToken;

use crate::api::NodeRole;
use std::path::PathBuf;

/// The OU of a manager's certificate.
pub const MANAGER_OU: &str = "swarm-manager";
/// The OU of a worker's certificate.
pub const WORKER_OU: &str = "swarm-worker";
/// The name clients verify managers' certificates against (every manager cert carries it as a DNS SAN).
pub const MANAGER_SERVER_NAME: &str = "swarm-manager";
/// The common name of the root CA certificate.
pub const CA_COMMON_NAME: &str = "swarm-ca";

/// The OU (and role SAN) a certificate of `role` carries.
pub fn role_ou(role: NodeRole) -> &'static str {
    match role {
        NodeRole::Manager => MANAGER_OU,
        NodeRole::Worker => WORKER_OU,
    }
}

/// The role an OU stands for.
pub(crate) fn role_of_ou(ou: &str) -> Result<NodeRole, CaError> {
    match ou {
        MANAGER_OU => Ok(NodeRole::Manager),
        WORKER_OU => Ok(NodeRole::Worker),
        other => Err(CaError::InvalidCertificate(format!(
            "organizational unit {other:?} is neither {MANAGER_OU:?} nor {WORKER_OU:?}"
        ))),
    }
}

/// Failures of the CA, of join tokens and of node identities.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Generating a key pair or signing a certificate failed.
    #[error("certificate generation failed: {0}")]
    Certificate(String),
    /// A certificate signing request cannot be parsed, is not signed by its own key, or its key is not ECDSA P-256.
    #[error("invalid certificate signing request: {0}")]
    InvalidCsr(String),
    /// A join token is malformed; the message names what is wrong (never the secret itself).
    #[error("invalid join token: {0}")]
    InvalidToken(String),
    /// A well-formed join token that is neither this cluster's worker token nor its manager token.
    #[error("invalid join token: it is not a current join token of this cluster")]
    WrongToken,
    /// A certificate, key or CA certificate cannot serve as a node identity.
    #[error("invalid node certificate: {0}")]
    InvalidCertificate(String),
    /// A file of a node's identity cannot be read or written, or its contents are unusable.
    #[error("{}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The caller presented no client certificate.
    #[error("the caller presented no client certificate")]
    Unauthenticated,
    /// `swarm ca --rotate` while the previous rotation has not finished.
    #[error("a root CA rotation is already in progress")]
    RotationInProgress,
    /// The node key is wrapped with the swarm's unlock key and none, or another one, was given.
    #[error("swarm could not be unlocked: invalid key provided")]
    Locked,
}

/// Issues a node identity as a joining node obtains it: a fresh key pair and CSR on the node, signed by `root`.
pub fn issue_identity(root: &RootCa, node_id: &str, role: NodeRole, cluster_id: &str) -> Result<NodeIdentity, CaError> {
    issue_identity_for(root, node_id, role, cluster_id, root::NODE_CERT_VALIDITY)
}

/// [`issue_identity`] with a certificate lifetime (the cluster's `--cert-expiry`).
pub fn issue_identity_for(
    root: &RootCa,
    node_id: &str,
    role: NodeRole,
    cluster_id: &str,
    lifetime: std::time::Duration,
) -> Result<NodeIdentity, CaError> {
    let csr = NodeCsr::new()?;
    let cert_pem = root.issue_for(&csr.csr_pem, node_id, role, cluster_id, lifetime)?;
    NodeIdentity::from_cert(&cert_pem, &csr.key_pem, &root.cert_pem)
}
