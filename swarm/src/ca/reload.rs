//! The node's TLS material as one swappable value, so a renewed certificate (or a new trust bundle) takes effect
//! without restarting anything: the cluster listener and every client read the current material for each *new*
//! connection, and connections already up carry on with what they were made with.
//!
//! ```text
//!  ClusterTls ── replace(renewed identity) ──▶ next handshake uses it
//!    ├─ incoming(listener)  TLS accept loop feeding tonic's `serve_with_incoming_shutdown` (client certs
//!    │                       optional, verified against the trusted roots when presented)
//!    └─ channel(addr)       a tonic Channel whose connector dials with the current client config, also on
//!                           reconnects (Raft peers, the agent's dispatcher session, NodeCA calls)
//! ```
//!
//! tonic implements `Connected` for `tokio_rustls::server::TlsStream<TcpStream>`, so handlers still see the
//! caller's certificate through `Request::peer_certs` ([`super::peer_identity`]).

use super::{cert_der, CaError, NodeIdentity, MANAGER_SERVER_NAME};
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tonic::codegen::http::Uri;
use tonic::transport::{Channel, Endpoint};

/// How long a client may take to complete its TLS handshake with the listener before it is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What one identity (plus any extra trusted roots) makes: the rustls configs both sides use.
struct Material {
    identity: NodeIdentity,
    /// Root CA certificates (PEM) trusted: the identity's own first, then others (the other root during a
    /// rotation).
    roots: Vec<String>,
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

/// The node's current TLS material, shared by its listener and its clients; cheap to clone (one shared value).
#[derive(Clone)]
pub struct ClusterTls {
    current: Arc<RwLock<Arc<Material>>>,
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterTls").field("identity", &self.material().identity).finish()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(what: &str, e: impl std::fmt::Display) -> CaError {
    CaError::InvalidCertificate(format!("{what}: {e}"))
}

impl Material {
    /// The material for `identity`, trusting its root and `others`.
    fn build(identity: &NodeIdentity, others: &[String]) -> Result<Material, CaError> {
        let mut all = vec![identity.ca_cert_pem.clone()];
        all.extend(others.iter().filter(|r| **r != identity.ca_cert_pem).cloned());
        let chain = vec![CertificateDer::from(cert_der(&identity.cert_pem)?)];
        let key = || {
            PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes())
                .map_err(|e| CaError::InvalidCertificate(format!("no PEM private key found ({e:?})")))
        };
        let mut roots = RootCertStore::empty();
        for pem in &all {
            let der = cert_der(pem).map_err(|e| CaError::InvalidCertificate(format!("the CA certificate: {e}")))?;
            roots.add(CertificateDer::from(der)).map_err(|e| tls_err("the CA certificate", e))?;
        }
        let roots = Arc::new(roots);

        // Client certificates are optional: joining nodes have none yet (see tls.rs); one that is presented must
        // chain to a trusted root.
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| tls_err("client verifier", e))?;
        let mut server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_err("server TLS", e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key()?)
            .map_err(|e| tls_err("server TLS", e))?;
        server.alpn_protocols = vec![b"h2".to_vec()];

        let mut client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_err("client TLS", e))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key()?)
            .map_err(|e| tls_err("client TLS", e))?;
        client.alpn_protocols = vec![b"h2".to_vec()];

        Ok(Material { identity: identity.clone(), roots: all, server: Arc::new(server), client: Arc::new(client) })
    }
}

impl ClusterTls {
    /// TLS material for `identity`, trusting its root CA.
    pub fn new(identity: &NodeIdentity) -> Result<ClusterTls, CaError> {
        Ok(ClusterTls { current: Arc::new(RwLock::new(Arc::new(Material::build(identity, &[])?))) })
    }

    fn material(&self) -> Arc<Material> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The identity new connections present.
    pub fn identity(&self) -> NodeIdentity {
        self.material().identity.clone()
    }

    /// The root certificates (PEM) trusted: the identity's own first.
    pub fn roots(&self) -> Vec<String> {
        self.material().roots.clone()
    }

    /// Presents `identity` on every new connection from now on, still trusting the roots trusted so far (and the
    /// identity's). Connections already up are not touched.
    pub fn replace(&self, identity: &NodeIdentity) -> Result<(), CaError> {
        self.update(|_, roots| Material::build(identity, roots))
    }

    /// [`ClusterTls::replace`], trusting `roots` (PEM) besides the identity's root CA, and no others.
    pub fn replace_with_roots(&self, identity: &NodeIdentity, roots: &[String]) -> Result<(), CaError> {
        self.update(|_, _| Material::build(identity, roots))
    }

    /// Trusts `roots` (and the identity's own root) for new connections, and no others: the cluster's trust
    /// bundle, which holds two roots during a rotation. Nothing is rebuilt when it is already so.
    pub fn set_roots(&self, roots: &[String]) -> Result<(), CaError> {
        let current = self.material();
        let mut want = vec![current.identity.ca_cert_pem.clone()];
        want.extend(roots.iter().filter(|r| **r != current.identity.ca_cert_pem).cloned());
        if want == current.roots {
            return Ok(());
        }
        self.update(|identity, _| Material::build(identity, roots))
    }

    /// Rebuilds the material from the current identity and roots under the write lock, so concurrent updates
    /// (a renewal, a new trust bundle) are not lost.
    fn update(&self, f: impl FnOnce(&NodeIdentity, &[String]) -> Result<Material, CaError>) -> Result<(), CaError> {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        let next = f(&current.identity, &current.roots)?;
        *current = Arc::new(next);
        Ok(())
    }

    /// The cluster listener's connections: accepts on `listener` and completes each TLS handshake (with the
    /// material current at that moment) concurrently, so a slow client holds up no one. Feed it to tonic's
    /// `serve_with_incoming_shutdown`. The stream owns the listener: when tonic drops it, the port is free again
    /// (a node restarting in a new role binds it at once).
    pub fn incoming(&self, listener: TcpListener) -> Incoming {
        Incoming { listener, tls: self.clone(), handshakes: FuturesUnordered::new() }
    }

    /// A connector dialing with the material current at each connection (see [`ClusterTls::channel`]).
    pub fn connector(&self) -> Connector {
        Connector { tls: self.clone() }
    }

    /// `endpoint`'s channel (built on `http://<addr>`) over this node's mTLS, expecting a manager; lazily
    /// connected. Reconnects present whatever certificate is current then.
    pub fn channel(&self, endpoint: Endpoint) -> Channel {
        endpoint.connect_with_connector_lazy(self.connector())
    }

    /// [`ClusterTls::channel`], connecting now.
    pub async fn connect(&self, endpoint: Endpoint) -> Result<Channel, tonic::transport::Error> {
        endpoint.connect_with_connector(self.connector()).await
    }
}

type Handshake = BoxFuture<'static, Option<tokio_rustls::server::TlsStream<TcpStream>>>;

/// The listener's stream of TLS connections ([`ClusterTls::incoming`]).
pub struct Incoming {
    listener: TcpListener,
    tls: ClusterTls,
    handshakes: FuturesUnordered<Handshake>,
}

impl Incoming {
    fn handshake(&self, tcp: TcpStream, peer: std::net::SocketAddr) -> Handshake {
        let _ = tcp.set_nodelay(true);
        let acceptor = tokio_rustls::TlsAcceptor::from(self.tls.material().server.clone());
        Box::pin(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => Some(stream),
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "cluster listener: TLS handshake failed");
                    None
                }
                Err(_) => {
                    tracing::debug!(%peer, "cluster listener: TLS handshake timed out");
                    None
                }
            }
        })
    }
}

impl futures::Stream for Incoming {
    type Item = std::io::Result<tokio_rustls::server::TlsStream<TcpStream>>;

    fn poll_next(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        // Take every connection waiting, then hand out the first finished handshake. Pending on both registers
        // the waker with the listener and with every handshake in flight.
        loop {
            match this.listener.poll_accept(cx) {
                Poll::Ready(Ok((tcp, peer))) => {
                    let h = this.handshake(tcp, peer);
                    this.handshakes.push(h);
                }
                // tonic logs it and asks again.
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
                Poll::Pending => break,
            }
        }
        loop {
            match this.handshakes.poll_next_unpin(cx) {
                Poll::Ready(Some(Some(stream))) => return Poll::Ready(Some(Ok(stream))),
                Poll::Ready(Some(None)) => continue,
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// The plain-HTTP endpoint for `addr` (`host:port`) that [`ClusterTls::channel`] wraps in TLS.
pub fn endpoint(addr: &str) -> Result<Endpoint, tonic::transport::Error> {
    Endpoint::from_shared(format!("http://{addr}"))
}

/// A tower connector: TCP to the URI's authority, then TLS with the current client config, expecting the
/// `swarm-manager` name only managers' certificates carry.
#[derive(Clone)]
pub struct Connector {
    tls: ClusterTls,
}

type Io = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;

impl tower::Service<Uri> for Connector {
    type Response = Io;
    type Error = std::io::Error;
    type Future = BoxFuture<'static, std::io::Result<Io>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let config = self.tls.material().client.clone();
        Box::pin(async move {
            let target = uri
                .authority()
                .map(|a| a.as_str().to_string())
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address to connect to"))?;
            let tcp = TcpStream::connect(&target).await?;
            let _ = tcp.set_nodelay(true);
            let name = ServerName::try_from(MANAGER_SERVER_NAME).expect("a valid DNS name");
            let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::NodeRole;
    use crate::ca::{issue_identity, peer_identity, RootCa};
    use crate::transport::WireCodec;
    use tonic::codegen::{http, Body, StdError};

    const PATH: &str = "/shoal.test.Peer/Who";

    /// Answers with the caller's node id from its certificate (or "anonymous").
    #[derive(Clone)]
    struct Peer;

    impl tonic::server::NamedService for Peer {
        const NAME: &'static str = "shoal.test.Peer";
    }

    struct Who;

    impl tonic::server::UnaryService<String> for Who {
        type Response = String;
        type Future = BoxFuture<'static, Result<tonic::Response<String>, tonic::Status>>;

        fn call(&mut self, req: tonic::Request<String>) -> Self::Future {
            let who = peer_identity(&req).map(|p| p.node_id).unwrap_or_else(|_| "anonymous".into());
            Box::pin(async move { Ok(tonic::Response::new(who)) })
        }
    }

    impl<B> tonic::codegen::Service<http::Request<B>> for Peer
    where
        B: Body + Send + 'static,
        B::Error: Into<StdError> + Send + 'static,
    {
        type Response = http::Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: http::Request<B>) -> Self::Future {
            Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(WireCodec::<String, String>::default());
                Ok(grpc.unary(Who, req).await)
            })
        }
    }

    async fn who(ch: Channel) -> Result<String, tonic::Status> {
        let mut grpc = tonic::client::Grpc::new(ch);
        grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let path = http::uri::PathAndQuery::from_static(PATH);
        grpc.unary(tonic::Request::new(String::new()), path, WireCodec::<String, String>::default())
            .await
            .map(|r| r.into_inner())
    }

    /// The serial of the certificate a server presents to a fresh handshake.
    async fn presented_serial(port: u16, client: &ClusterTls) -> Vec<u8> {
        let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let name = ServerName::try_from(MANAGER_SERVER_NAME).unwrap();
        let tls = tokio_rustls::TlsConnector::from(client.material().client.clone()).connect(name, tcp).await.unwrap();
        let der = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        cert.raw_serial().to_vec()
    }

    fn serial_of(id: &NodeIdentity) -> Vec<u8> {
        let der = cert_der(&id.cert_pem).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        cert.raw_serial().to_vec()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replaced_certificate_serves_new_handshakes_and_old_connections_carry_on() {
        let root = RootCa::generate().unwrap();
        let m1 = issue_identity(&root, "mgr1", NodeRole::Manager, "c").unwrap();
        let server_tls = ClusterTls::new(&m1).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = tokio_util::sync::CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(Peer)
                .serve_with_incoming_shutdown(server_tls.incoming(listener), async move { token.cancelled().await }),
        );

        let w1 = issue_identity(&root, "wrk1", NodeRole::Worker, "c").unwrap();
        let client_tls = ClusterTls::new(&w1).unwrap();
        let addr = format!("127.0.0.1:{port}");
        let old = client_tls.connect(endpoint(&addr).unwrap()).await.unwrap();
        assert_eq!(who(old.clone()).await.unwrap(), "wrk1", "the handler sees the client certificate");
        assert_eq!(presented_serial(port, &client_tls).await, serial_of(&m1));

        // Both sides renew.
        let m2 = issue_identity(&root, "mgr1", NodeRole::Manager, "c").unwrap();
        server_tls.replace(&m2).unwrap();
        let w2 = issue_identity(&root, "wrk2", NodeRole::Worker, "c").unwrap();
        client_tls.replace(&w2).unwrap();
        assert_eq!(presented_serial(port, &client_tls).await, serial_of(&m2), "new handshakes get the new cert");
        let fresh = client_tls.connect(endpoint(&addr).unwrap()).await.unwrap();
        assert_eq!(who(fresh).await.unwrap(), "wrk2", "new connections present the new client certificate");
        assert_eq!(who(old).await.unwrap(), "wrk1", "the connection made before carries on as it was");

        // A joining node without a certificate still gets in; a stranger's certificate does not.
        let bootstrap = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(crate::ca::bootstrap_client_tls_config(&root.cert_pem))
            .unwrap()
            .connect()
            .await
            .unwrap();
        assert_eq!(who(bootstrap).await.unwrap(), "anonymous");
        let other = RootCa::generate().unwrap();
        let stranger = issue_identity(&other, "x", NodeRole::Worker, "c").unwrap();
        let stranger_tls = ClusterTls::new(&stranger).unwrap();
        stranger_tls.replace_with_roots(&stranger, std::slice::from_ref(&root.cert_pem)).unwrap();
        let refused = match stranger_tls.connect(endpoint(&addr).unwrap()).await {
            Ok(ch) => who(ch).await.map_err(|s| s.to_string()),
            Err(e) => Err(e.to_string()),
        };
        assert!(refused.is_err(), "a certificate from another CA got through: {refused:?}");
        stop.cancel();
    }

    #[test]
    fn unusable_material_is_refused_and_the_old_one_kept() {
        let root = RootCa::generate().unwrap();
        let id = issue_identity(&root, "n", NodeRole::Manager, "c").unwrap();
        let tls = ClusterTls::new(&id).unwrap();
        let mut bad = id.clone();
        bad.ca_cert_pem = "not a certificate".into();
        let e = tls.replace(&bad).unwrap_err().to_string();
        assert!(e.contains("CA certificate"), "{e}");
        assert_eq!(tls.identity(), id);
    }
}
