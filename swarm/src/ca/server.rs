//! `shoal.NodeCA` on a manager's cluster listener: what a node without a certificate may ask (SwarmKit's
//! `ca/server.go`, reduced to one issuing call). Anyone may fetch the root CA certificate; a certificate is issued
//! only for a current join token, with a new node id chosen here, and the node is created in the store so the
//! dispatcher accepts its session.

use super::{JoinToken, RootCa};
use crate::api::ca::*;
use crate::api::control::Empty;
use crate::api::{
    new_id, ManagerStatus, Meta, Node, NodeAvailability, NodeRole, NodeSpec, NodeState, NodeStatus, Reachability,
};
use crate::manager::store::Store;
use crate::transport::node_ca::node_c_a_server::NodeCA as NodeCa;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

/// Docker's answer to a join with a token that is not one of the cluster's current tokens.
pub const INVALID_JOIN_TOKEN: &str = "A valid join token is necessary to join this cluster";

/// The NodeCA service; it answers while this node is the leading manager (it signs with the CA key in the store).
pub struct NodeCaService {
    store: watch::Receiver<Option<Store>>,
}

impl NodeCaService {
    /// A service reading the cluster (CA, tokens) from whatever store `store` holds.
    pub fn new(store: watch::Receiver<Option<Store>>) -> Self {
        NodeCaService { store }
    }

    fn store(&self) -> Result<Store, Status> {
        self.store.borrow().clone().ok_or_else(|| Status::unavailable("this manager is not the leader"))
    }
}

/// The Node object a newly admitted node starts as: known, not yet ready (its first session makes it ready).
fn new_node(node_id: &str, role: NodeRole, availability: NodeAvailability, addr: &str) -> Node {
    Node {
        id: node_id.into(),
        meta: Meta::default(),
        spec: NodeSpec { annotations: Default::default(), desired_role: role, availability },
        description: Default::default(),
        status: NodeStatus { state: NodeState::Unknown, addr: addr.into(), ..Default::default() },
        manager_status: None,
        role,
        attachments: vec![],
    }
}

impl NodeCaService {
    /// Records a rotation's progress (`renewed`: a node and the root its new certificate is from) and ends it when no
    /// node is left to renew. A failed write is only logged: the node's next status check or renewal retries.
    async fn rotation_progress(&self, store: &Store, renewed: Option<(&str, &str)>) {
        // Most status checks change nothing: no write then.
        let unchanged = store.view(|v| {
            let Some(mut root_ca) = v.cluster().map(|c| c.root_ca.clone()) else { return true };
            let renewed = renewed.filter(|(_, root)| *root == root_ca.ca_cert_pem).map(|(n, _)| n);
            !super::node_renewed(&mut root_ca, renewed, |id| v.node(id).is_some())
        });
        if unchanged {
            return;
        }
        // Renewals land together (every node renews at the start of a rotation): retried on a conflict.
        let r = store
            .update_retrying(20, |tx| {
                let Some(mut cluster) = tx.view().cluster().cloned() else { return Ok(()) };
                // (node, the root its certificate was issued from): it counts only if that is still the root.
                let renewed = renewed.filter(|(_, root)| *root == cluster.root_ca.ca_cert_pem).map(|(n, _)| n);
                let exists = |id: &str| tx.view().node(id).is_some();
                if super::node_renewed(&mut cluster.root_ca, renewed, exists) {
                    if !cluster.root_ca.rotating() {
                        tracing::info!("root CA rotation finished: every node holds a certificate from the new root");
                    }
                    tx.update(cluster);
                }
                Ok::<_, crate::manager::store::StoreError>(())
            })
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "recording the root CA rotation's progress");
        }
    }

    /// The calling member's Node, if its certificate names a node of this swarm that was not removed.
    fn member<T>(&self, req: &Request<T>, store: &Store) -> Result<Node, Status> {
        let peer = crate::ca::authenticate(req, &[NodeRole::Worker, NodeRole::Manager])?;
        store
            .view(|v| {
                let removed = v.cluster().is_some_and(|c| c.removed_nodes.contains(&peer.node_id));
                v.node(&peer.node_id).filter(|_| !removed).cloned()
            })
            .ok_or_else(|| Status::permission_denied(format!("node {} is not a member of this swarm", peer.node_id)))
    }
}

#[tonic::async_trait]
impl NodeCa for NodeCaService {
    async fn get_data_key(&self, req: Request<Empty>) -> Result<Response<crate::api::ca::DataKeyResponse>, Status> {
        let store = self.store()?;
        let peer = crate::ca::authenticate(&req, &[NodeRole::Manager])?;
        let node = self.member(&req, &store)?;
        if node.role != NodeRole::Manager {
            return Err(Status::permission_denied(format!("node {} is not a manager", peer.node_id)));
        }
        let key =
            store.data_key().ok_or_else(|| Status::unavailable(crate::manager::controlapi::secrets::NO_DATA_KEY))?;
        tracing::info!(node.id = %node.id, "handed the data key to a manager");
        Ok(Response::new(crate::api::ca::DataKeyResponse { key: key.to_text() }))
    }

    async fn node_certificate_status(
        &self,
        req: Request<Empty>,
    ) -> Result<Response<NodeCertificateStatusResponse>, Status> {
        let store = self.store()?;
        let node = self.member(&req, &store)?;
        let root_ca = store
            .view(|v| v.cluster().map(|c| c.root_ca.clone()))
            .ok_or_else(|| Status::unavailable("the swarm is still initializing"))?;
        if root_ca.rotating() {
            // A caller whose certificate is already from the new root has renewed (this also catches a renewal
            // whose progress write was lost); pending nodes may have been removed meanwhile.
            let renewed = req
                .peer_certs()
                .and_then(|c| c.first().map(|leaf| super::issued_by(leaf.as_ref(), &root_ca.ca_cert_pem)))
                .unwrap_or(false);
            let renewed = renewed.then_some((node.id.as_str(), root_ca.ca_cert_pem.as_str()));
            self.rotation_progress(&store, renewed).await;
        }
        Ok(Response::new(NodeCertificateStatusResponse {
            role: node.role,
            root_ca_cert_pem: root_ca.ca_cert_pem,
            previous_root_ca_cert_pem: root_ca.previous_ca_cert_pem,
        }))
    }

    async fn renew_node_certificate(
        &self,
        req: Request<RenewNodeCertificateRequest>,
    ) -> Result<Response<IssueNodeCertificateResponse>, Status> {
        let store = self.store()?;
        let node = self.member(&req, &store)?;
        let r = req.into_inner();
        let (cluster_id, root_ca, lifetime) = store
            .view(|v| v.cluster().map(|c| (c.id.clone(), c.root_ca.clone(), c.spec.ca_config.node_cert_expiry)))
            .ok_or_else(|| Status::unavailable("the swarm is still initializing"))?;
        let root = RootCa::from_pem(&root_ca.ca_cert_pem, &root_ca.ca_key_pem)
            .map_err(|e| Status::internal(format!("the cluster's root CA is unusable: {e}")))?;
        let role = node.role;
        if role == NodeRole::Manager && node.manager_status.is_none() {
            // A promoted worker: record where Raft reaches it and under which id, before it asks to join.
            if r.raft_id == 0 || r.advertise_addr.is_empty() {
                return Err(Status::invalid_argument("a node becoming a manager must name its raft id and address"));
            }
            store
                .update(|tx| {
                    let taken =
                        tx.view().nodes().any(|n| n.manager_status.as_ref().is_some_and(|m| m.raft_id == r.raft_id));
                    if taken {
                        return Err(Status::already_exists(format!("raft id {:x} is taken", r.raft_id)));
                    }
                    if let Some(mut n) = tx.view().node(&node.id).cloned() {
                        n.manager_status = Some(ManagerStatus {
                            raft_id: r.raft_id,
                            addr: r.advertise_addr.clone(),
                            leader: false,
                            reachability: Reachability::Unknown,
                        });
                        tx.update(n);
                    }
                    Ok(())
                })
                .await?;
        }
        let certificate = root
            .issue_for(&r.csr, &node.id, role, &cluster_id, lifetime)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        tracing::info!(node.id = %node.id, %role, "renewed a node certificate");
        if root_ca.rotating() {
            self.rotation_progress(&store, Some((&node.id, &root_ca.ca_cert_pem))).await;
        }
        Ok(Response::new(IssueNodeCertificateResponse { node_id: node.id, certificate }))
    }

    async fn get_root_ca_certificate(
        &self,
        _req: Request<Empty>,
    ) -> Result<Response<GetRootCaCertificateResponse>, Status> {
        let pem = self.store()?.view(|v| v.cluster().map(|c| c.root_ca.ca_cert_pem.clone()));
        let certificate = pem.ok_or_else(|| Status::unavailable("the swarm is still initializing"))?;
        Ok(Response::new(GetRootCaCertificateResponse { certificate }))
    }

    async fn issue_node_certificate(
        &self,
        req: Request<IssueNodeCertificateRequest>,
    ) -> Result<Response<IssueNodeCertificateResponse>, Status> {
        let remote = req.remote_addr().map(|a| a.ip().to_string()).unwrap_or_default();
        let r = req.into_inner();
        let store = self.store()?;
        let cluster =
            store.view(|v| v.cluster().map(|c| (c.id.clone(), c.root_ca.clone(), c.spec.ca_config.node_cert_expiry)));
        let (cluster_id, root_ca, lifetime) =
            cluster.ok_or_else(|| Status::unavailable("the swarm is still initializing"))?;
        let tokens = &root_ca.join_tokens;
        let role = JoinToken::role_for(&r.token, &tokens.worker, &tokens.manager).map_err(|e| {
            // The reason stays in the manager's log; the caller learns only that the token is not good.
            tracing::warn!(from = %remote, error = %e, "refused to issue a node certificate");
            Status::invalid_argument(INVALID_JOIN_TOKEN)
        })?;
        if role == NodeRole::Manager && r.raft_id == 0 {
            return Err(Status::invalid_argument("a node joining as a manager must name its raft id"));
        }
        let root = RootCa::from_pem(&root_ca.ca_cert_pem, &root_ca.ca_key_pem)
            .map_err(|e| Status::internal(format!("the cluster's root CA is unusable: {e}")))?;
        let node_id = new_id();
        let certificate = root
            .issue_for(&r.csr, &node_id, role, &cluster_id, lifetime)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let addr = if r.advertise_addr.is_empty() {
            remote.clone()
        } else {
            r.advertise_addr
                .parse::<std::net::SocketAddr>()
                .map(|a| a.ip().to_string())
                .unwrap_or_else(|_| r.advertise_addr.clone())
        };
        let mut node = new_node(&node_id, role, r.availability, &addr);
        if role == NodeRole::Manager {
            // Raft reaches the new manager at its advertised cluster address; the joiner's Raft join call is
            // accepted only under this raft id.
            let raft_addr = if r.advertise_addr.is_empty() {
                return Err(Status::invalid_argument("a node joining as a manager must give its advertise address"));
            } else {
                r.advertise_addr.clone()
            };
            node.manager_status = Some(ManagerStatus {
                raft_id: r.raft_id,
                addr: raft_addr,
                leader: false,
                reachability: Reachability::Unknown,
            });
        }
        store
            .update(|tx| {
                let taken = tx
                    .view()
                    .nodes()
                    .any(|n| n.manager_status.as_ref().is_some_and(|m| m.raft_id == r.raft_id && r.raft_id != 0));
                if taken {
                    return Err(Status::already_exists(format!("raft id {:x} is taken; try joining again", r.raft_id)));
                }
                tx.create(node);
                Ok(())
            })
            .await?;
        tracing::info!(node.id = %node_id, from = %remote, %role, "issued a node certificate to a joining node");
        Ok(Response::new(IssueNodeCertificateResponse { node_id, certificate }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Cluster, ClusterSpec, JoinTokens};
    use crate::ca::{NodeCsr, NodeIdentity};

    /// A store holding a cluster with a fresh CA and tokens: (service, store, root CA, worker token, manager token).
    async fn ca_service() -> (NodeCaService, Store, RootCa, String, String) {
        let root = RootCa::generate().unwrap();
        let (worker, manager) = (JoinToken::generate(&root.digest()), JoinToken::generate(&root.digest()));
        let store = Store::in_memory();
        let cluster = Cluster {
            id: "cluster1".into(),
            meta: Meta::default(),
            spec: ClusterSpec {
                annotations: Default::default(),
                orchestration: Default::default(),
                raft: Default::default(),
                dispatcher: Default::default(),
                ca_config: Default::default(),
                encryption_config: Default::default(),
            },
            root_ca: crate::api::RootCa {
                ca_cert_pem: root.cert_pem.clone(),
                ca_key_pem: root.key_pem.clone(),
                ca_cert_digest: root.digest(),
                join_tokens: JoinTokens { worker: worker.clone(), manager: manager.clone() },
                ..Default::default()
            },
            removed_nodes: Default::default(),
            default_address_pool: Vec::new(),
            subnet_size: 0,
            unlock_key: vec![],
        };
        store
            .update(|tx| {
                tx.create(cluster);
                Ok::<_, crate::manager::store::StoreError>(())
            })
            .await
            .unwrap();
        // The sender may go: a receiver keeps reading the channel's last value.
        let (_, rx) = watch::channel(Some(store.clone()));
        (NodeCaService::new(rx), store, root, worker, manager)
    }

    fn request(csr: &str, token: &str) -> Request<IssueNodeCertificateRequest> {
        Request::new(IssueNodeCertificateRequest {
            csr: csr.into(),
            token: token.into(),
            availability: NodeAvailability::Drain,
            advertise_addr: "10.0.0.9:2377".into(),
            raft_id: 0,
        })
    }

    #[tokio::test]
    async fn a_worker_token_gets_a_worker_certificate_and_a_node() {
        let (svc, store, root, worker, _) = ca_service().await;
        let ca = svc.get_root_ca_certificate(Request::new(Empty {})).await.unwrap().into_inner().certificate;
        assert_eq!(ca, root.cert_pem);

        let csr = NodeCsr::new().unwrap();
        let resp = svc.issue_node_certificate(request(&csr.csr_pem, &worker)).await.unwrap().into_inner();
        let id = NodeIdentity::from_cert(&resp.certificate, &csr.key_pem, &root.cert_pem).unwrap();
        assert_eq!(
            (id.node_id.as_str(), id.role, id.cluster_id.as_str()),
            (resp.node_id.as_str(), NodeRole::Worker, "cluster1")
        );
        let node = store.view(|v| v.node(&resp.node_id).cloned()).expect("the Node is created");
        assert_eq!((node.role, node.spec.desired_role), (NodeRole::Worker, NodeRole::Worker));
        assert_eq!(node.spec.availability, NodeAvailability::Drain);
        assert_eq!((node.status.state, node.status.addr.as_str()), (NodeState::Unknown, "10.0.0.9"));
        assert!(node.manager_status.is_none());

        let again = svc.issue_node_certificate(request(&NodeCsr::new().unwrap().csr_pem, &worker)).await.unwrap();
        assert_ne!(again.into_inner().node_id, resp.node_id, "every join is a new node");
    }

    #[tokio::test]
    async fn a_manager_token_gets_a_manager_certificate_and_a_raft_id_that_is_not_taken() {
        let (svc, store, root, _, manager) = ca_service().await;
        let csr = NodeCsr::new().unwrap();
        let mut req = request(&csr.csr_pem, &manager);
        req.get_mut().raft_id = 0x77;
        let resp = svc.issue_node_certificate(req).await.unwrap().into_inner();
        let id = NodeIdentity::from_cert(&resp.certificate, &csr.key_pem, &root.cert_pem).unwrap();
        assert_eq!(id.role, NodeRole::Manager);
        let node = store.view(|v| v.node(&resp.node_id).cloned()).expect("the Node is created");
        assert_eq!((node.role, node.spec.desired_role), (NodeRole::Manager, NodeRole::Manager));
        let ms = node.manager_status.expect("a manager's status");
        assert_eq!((ms.raft_id, ms.addr.as_str(), ms.leader), (0x77, "10.0.0.9:2377", false));

        let mut again = request(&NodeCsr::new().unwrap().csr_pem, &manager);
        again.get_mut().raft_id = 0x77;
        let e = svc.issue_node_certificate(again).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e:?}");
        assert_eq!(store.view(|v| v.nodes().count()), 1, "the refused join created nothing");
    }

    #[tokio::test]
    async fn bad_tokens_and_csrs_are_refused_without_creating_a_node() {
        let (svc, store, root, worker, manager) = ca_service().await;
        let csr = NodeCsr::new().unwrap().csr_pem;
        let stranger = JoinToken::generate(&root.digest());
        for token in [stranger.as_str(), "", "SWMTKN-1-nope", &worker[..worker.len() - 1]] {
            let e = svc.issue_node_certificate(request(&csr, token)).await.unwrap_err();
            assert_eq!((e.code(), e.message()), (tonic::Code::InvalidArgument, INVALID_JOIN_TOKEN), "{token:?}");
        }
        let e = svc.issue_node_certificate(request(&csr, &manager)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "a manager must name its raft id: {e:?}");
        let e = svc.issue_node_certificate(request("not a csr", &worker)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("certificate signing request"), "{e:?}");
        assert_eq!(store.view(|v| v.nodes().count()), 0);
    }

    #[tokio::test]
    async fn a_node_that_is_not_the_leader_does_not_answer() {
        let (_tx, rx) = watch::channel(None);
        let svc = NodeCaService::new(rx);
        let e = svc.get_root_ca_certificate(Request::new(Empty {})).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable);
    }
}
