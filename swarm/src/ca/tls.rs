//! mTLS for the cluster listener and its clients, and who is calling.
//!
//! One listener serves members (with certificates) and joining nodes (without one yet), so client certificates are
//! optional at the TLS layer: a presented certificate must chain to the cluster CA or the handshake fails, and
//! every handler that needs a member calls [`authenticate`] (or [`peer_identity`] + [`authorize`]).

use super::identity::subject_of_der;
use super::{cert_der, CaError, NodeIdentity, MANAGER_SERVER_NAME};
use crate::api::NodeRole;
use rustls::pki_types::{pem::PemObject, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// Who called, from their client certificate (verified against the cluster CA by the TLS layer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The certificate's CN.
    pub node_id: String,
    /// From the certificate's OU.
    pub role: NodeRole,
    /// The certificate's O.
    pub cluster_id: String,
}

/// Checks the PEMs parse the way tonic will parse them (tonic silently skips unparsable CA certificates, which would
/// surface only as failed handshakes).
fn check_pems(id: &NodeIdentity) -> Result<(), CaError> {
    cert_der(&id.cert_pem)?;
    PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes())
        .map_err(|e| CaError::InvalidCertificate(format!("no PEM private key found ({e:?})")))?;
    cert_der(&id.ca_cert_pem).map_err(|e| CaError::InvalidCertificate(format!("the CA certificate: {e}")))?;
    Ok(())
}

/// The cluster listener's TLS: presents the node's certificate, verifies client certificates against the cluster
/// CA, and also lets clients without one in (a joining node fetches the CA and submits its CSR before it has a
/// certificate; every other call checks [`peer_identity`]).
pub fn server_tls_config(id: &NodeIdentity) -> Result<ServerTlsConfig, CaError> {
    check_pems(id)?;
    Ok(ServerTlsConfig::new()
        .identity(Identity::from_pem(&id.cert_pem, &id.key_pem))
        .client_ca_root(Certificate::from_pem(&id.ca_cert_pem))
        .client_auth_optional(true))
}

/// A member's client TLS: presents its certificate, trusts only the cluster CA, and expects the server to be a
/// manager (its certificate must carry the `swarm-manager` name, which the CA gives managers only).
pub fn client_tls_config(id: &NodeIdentity) -> Result<ClientTlsConfig, CaError> {
    check_pems(id)?;
    Ok(ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&id.ca_cert_pem))
        .identity(Identity::from_pem(&id.cert_pem, &id.key_pem))
        .domain_name(MANAGER_SERVER_NAME))
}

/// A joining node's client TLS before it has a certificate: trusts only `ca_cert_pem` (the CA it pinned with the
/// join token's digest), presents no certificate, expects a manager.
pub fn bootstrap_client_tls_config(ca_cert_pem: &str) -> ClientTlsConfig {
    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_cert_pem)).domain_name(MANAGER_SERVER_NAME)
}

/// The caller's identity from its client certificate: node id (CN), role (OU), cluster id (O).
/// [`CaError::Unauthenticated`] if it presented none (or the connection is not TLS).
pub fn peer_identity<T>(req: &tonic::Request<T>) -> Result<PeerIdentity, CaError> {
    let certs = req.peer_certs().ok_or(CaError::Unauthenticated)?;
    let leaf = certs.first().ok_or(CaError::Unauthenticated)?;
    let der = leaf.as_ref();
    // Every call of a session presents the same certificate, and parsing it was ~2% of a busy manager's CPU at
    // 5,000 nodes: identities are remembered by the certificate's exact bytes (already verified by the TLS layer).
    let known = || PEERS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = known().get(der) {
        return Ok(p.clone());
    }
    let subject = subject_of_der(der)?;
    let peer = PeerIdentity { node_id: subject.node_id, role: subject.role, cluster_id: subject.cluster_id };
    let mut known = known();
    if known.len() >= PEERS_REMEMBERED {
        // Renewed certificates leave old entries behind; starting over now and then bounds them.
        known.clear();
    }
    known.insert(der.into(), peer.clone());
    Ok(peer)
}

/// How many peer certificates [`peer_identity`] remembers: more than the nodes of a large cluster.
const PEERS_REMEMBERED: usize = 16_384;

static PEERS: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<Box<[u8]>, PeerIdentity>>> =
    std::sync::LazyLock::new(Default::default);

fn role_list(roles: &[NodeRole]) -> String {
    let names: Vec<String> = roles.iter().map(|r| format!("{r}s")).collect();
    names.join(" or ")
}

/// Refuses (`PermissionDenied`) a caller whose role is not among `allowed`.
pub fn authorize(peer: &PeerIdentity, allowed: &[NodeRole]) -> Result<(), tonic::Status> {
    if allowed.contains(&peer.role) {
        return Ok(());
    }
    let who = format!("node {} is a {}", peer.node_id, peer.role);
    Err(tonic::Status::permission_denied(if allowed.is_empty() {
        format!("{who}; no node may make this call")
    } else {
        format!("{who}; only {} may make this call", role_list(allowed))
    }))
}

/// [`peer_identity`] then [`authorize`], as gRPC statuses: `Unauthenticated` without a client certificate,
/// `PermissionDenied` for a certificate that names no role or the wrong one.
pub fn authenticate<T>(req: &tonic::Request<T>, allowed: &[NodeRole]) -> Result<PeerIdentity, tonic::Status> {
    let peer = peer_identity(req).map_err(|e| match e {
        CaError::Unauthenticated => tonic::Status::unauthenticated(e.to_string()),
        other => tonic::Status::permission_denied(other.to_string()),
    })?;
    authorize(&peer, allowed)?;
    Ok(peer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::{issue_identity, RootCa};
    use crate::transport::WireCodec;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;
    use tonic::codegen::{http, Body, BoxFuture, Context, Poll, StdError};
    use tonic::transport::{Channel, Endpoint};

    const PATH: &str = "/shoal.test.Whoami/Who";

    /// A one-method gRPC service: the request names the roles allowed ("worker,manager"), the reply is
    /// `node|role|cluster` of the authenticated caller. Counts the calls that reached it.
    #[derive(Clone, Default)]
    struct Whoami {
        calls: Arc<AtomicUsize>,
    }

    impl tonic::server::NamedService for Whoami {
        const NAME: &'static str = "shoal.test.Whoami";
    }

    struct Who(Arc<AtomicUsize>);

    impl tonic::server::UnaryService<String> for Who {
        type Response = String;
        type Future = BoxFuture<tonic::Response<String>, tonic::Status>;

        fn call(&mut self, req: tonic::Request<String>) -> Self::Future {
            self.0.fetch_add(1, Ordering::SeqCst);
            let allowed: Vec<NodeRole> = req
                .get_ref()
                .split(',')
                .filter_map(|r| match r {
                    "worker" => Some(NodeRole::Worker),
                    "manager" => Some(NodeRole::Manager),
                    _ => None,
                })
                .collect();
            let result = authenticate(&req, &allowed)
                .map(|p| tonic::Response::new(format!("{}|{}|{}", p.node_id, p.role, p.cluster_id)));
            Box::pin(async move { result })
        }
    }

    impl<B> tonic::codegen::Service<http::Request<B>> for Whoami
    where
        B: Body + Send + 'static,
        B::Error: Into<StdError> + Send + 'static,
    {
        type Response = http::Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = BoxFuture<Self::Response, Self::Error>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: http::Request<B>) -> Self::Future {
            let calls = self.calls.clone();
            Box::pin(async move {
                if req.uri().path() != PATH {
                    return Ok(tonic::Status::unimplemented("no such method").into_http());
                }
                let mut grpc = tonic::server::Grpc::new(WireCodec::<String, String>::default());
                Ok(grpc.unary(Who(calls), req).await)
            })
        }
    }

    struct TestServer {
        port: u16,
        calls: Arc<AtomicUsize>,
        stop: tokio::sync::oneshot::Sender<()>,
    }

    async fn serve(id: &NodeIdentity) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let svc = Whoami::default();
        let calls = svc.calls.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tonic::transport::Server::builder()
            .tls_config(server_tls_config(id).unwrap())
            .unwrap()
            .add_service(svc)
            .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            });
        tokio::spawn(server);
        TestServer { port, calls, stop }
    }

    async fn connect(port: u16, tls: ClientTlsConfig) -> Result<Channel, tonic::transport::Error> {
        Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(5))
            .tls_config(tls)?
            .connect()
            .await
    }

    async fn who(ch: Channel, allowed: &str) -> Result<String, tonic::Status> {
        let mut grpc = tonic::client::Grpc::new(ch);
        grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let path = http::uri::PathAndQuery::from_static(PATH);
        grpc.unary(tonic::Request::new(allowed.to_string()), path, WireCodec::<String, String>::default())
            .await
            .map(|r| r.into_inner())
    }

    /// Connects with `tls` and calls; `Err` from either step as a string.
    async fn call(port: u16, tls: ClientTlsConfig, allowed: &str) -> Result<String, String> {
        let ch = connect(port, tls).await.map_err(|e| format!("connect: {e:?}"))?;
        who(ch, allowed).await.map_err(|s| format!("call: {:?}: {}", s.code(), s.message()))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_listener_authenticates_members_and_admits_joiners() {
        let root = RootCa::generate().unwrap();
        let manager = issue_identity(&root, "mgr1", NodeRole::Manager, "clusterA").unwrap();
        let worker = issue_identity(&root, "wrk1", NodeRole::Worker, "clusterA").unwrap();
        let server = serve(&manager).await;

        // A worker is seen as itself, with role worker.
        let got = call(server.port, client_tls_config(&worker).unwrap(), "worker,manager").await.unwrap();
        assert_eq!(got, "wrk1|worker|clusterA");
        assert_eq!(server.calls.load(Ordering::SeqCst), 1);

        // ...and may not make a managers-only call.
        let ch = connect(server.port, client_tls_config(&worker).unwrap()).await.unwrap();
        let denied = who(ch, "manager").await.unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
        assert_eq!(denied.message(), "node wrk1 is a worker; only managers may make this call");

        // A manager may.
        let got = call(server.port, client_tls_config(&manager).unwrap(), "manager").await.unwrap();
        assert_eq!(got, "mgr1|manager|clusterA");

        // A joining node without a certificate gets in, but is not authenticated.
        let before = server.calls.load(Ordering::SeqCst);
        let ch = connect(server.port, bootstrap_client_tls_config(&root.cert_pem)).await.unwrap();
        let anon = who(ch, "worker,manager").await.unwrap_err();
        assert_eq!(anon.code(), tonic::Code::Unauthenticated, "{anon:?}");
        assert_eq!(anon.message(), "the caller presented no client certificate");
        assert_eq!(server.calls.load(Ordering::SeqCst), before + 1, "the handler saw the anonymous call");

        // A certificate from another CA (same node id, role and cluster id) is refused at the TLS layer: the
        // handler never sees the call.
        let other = RootCa::generate().unwrap();
        let stranger = issue_identity(&other, "wrk1", NodeRole::Worker, "clusterA").unwrap();
        let tls = client_tls_config(&stranger).unwrap().ca_certificate(Certificate::from_pem(&root.cert_pem));
        let before = server.calls.load(Ordering::SeqCst);
        let refused = call(server.port, tls, "worker,manager").await;
        assert!(refused.is_err(), "a foreign certificate got through: {refused:?}");
        assert_eq!(server.calls.load(Ordering::SeqCst), before, "refused before reaching the handler");

        // A joining node that pinned another CA does not trust this server.
        let pinned_wrong = call(server.port, bootstrap_client_tls_config(&other.cert_pem), "worker").await;
        assert!(pinned_wrong.unwrap_err().contains("connect"), "the handshake itself fails");
        assert_eq!(server.calls.load(Ordering::SeqCst), before);

        let _ = server.stop.send(());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_worker_cannot_pose_as_a_manager() {
        let root = RootCa::generate().unwrap();
        let worker = issue_identity(&root, "wrk1", NodeRole::Worker, "clusterA").unwrap();
        let other_worker = issue_identity(&root, "wrk2", NodeRole::Worker, "clusterA").unwrap();
        let server = serve(&worker).await;
        // Clients expect the name swarm-manager, which only managers' certificates carry.
        let e = call(server.port, client_tls_config(&other_worker).unwrap(), "worker").await.unwrap_err();
        assert!(e.contains("connect"), "{e}");
        let e = call(server.port, bootstrap_client_tls_config(&root.cert_pem), "worker").await.unwrap_err();
        assert!(e.contains("connect"), "{e}");
        assert_eq!(server.calls.load(Ordering::SeqCst), 0);
        let _ = server.stop.send(());
    }

    #[test]
    fn configs_refuse_unusable_pems() {
        let root = RootCa::generate().unwrap();
        let mut id = issue_identity(&root, "n", NodeRole::Manager, "c").unwrap();
        assert!(server_tls_config(&id).is_ok() && client_tls_config(&id).is_ok());
        id.ca_cert_pem = "not a certificate".into();
        let e = server_tls_config(&id).unwrap_err().to_string();
        assert!(e.contains("CA certificate"), "{e}");
        assert!(client_tls_config(&id).is_err());
    }

    #[test]
    fn authorize_names_the_node_and_the_roles() {
        let peer = PeerIdentity { node_id: "n1".into(), role: NodeRole::Worker, cluster_id: "c".into() };
        assert!(authorize(&peer, &[NodeRole::Worker, NodeRole::Manager]).is_ok());
        let s = authorize(&peer, &[NodeRole::Manager]).unwrap_err();
        assert_eq!(s.code(), tonic::Code::PermissionDenied);
        assert_eq!(s.message(), "node n1 is a worker; only managers may make this call");
        let s = authorize(&peer, &[]).unwrap_err();
        assert_eq!(s.message(), "node n1 is a worker; no node may make this call");
        let plain = tonic::Request::new(());
        assert!(matches!(peer_identity(&plain), Err(CaError::Unauthenticated)));
        assert_eq!(authenticate(&plain, &[NodeRole::Worker]).unwrap_err().code(), tonic::Code::Unauthenticated);
    }
}
