//! The joining side of `swarm join`: fetch the cluster's root CA from a manager without trusting anything yet,
//! pin it with the join token's digest, then ask that (now verified) manager for a node certificate.

use super::{bootstrap_client_tls_config, CaError, JoinToken, NodeCsr, NodeIdentity, MANAGER_SERVER_NAME};
use crate::api::ca::IssueNodeCertificateRequest;
use crate::api::control::Empty;
use crate::api::NodeAvailability;
use crate::transport::node_ca::node_c_a_client::NodeCAClient as NodeCaClient;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// How long connecting to the manager may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one call to the manager may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// Why a join failed before the node had a certificate.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The manager could not be reached (or the TLS handshake with it failed).
    #[error("could not reach the manager at {addr}: {reason}")]
    Unreachable {
        /// The manager's address.
        addr: String,
        /// What went wrong, innermost cause last.
        reason: String,
    },
    /// The manager presented a root CA whose digest is not the token's: another cluster, or someone in between.
    #[error("error while validating Root CA Certificate: remote CA does not match fingerprint. Expected: {expected}")]
    ForeignCa {
        /// The digest the token carries (SHA-256, hex).
        expected: String,
    },
    /// The manager answered with an error (Docker prints gRPC errors this way).
    #[error("rpc error: code = {code} desc = {message}")]
    Refused {
        /// The gRPC code's name, as Go spells it (`InvalidArgument`).
        code: String,
        /// The manager's message.
        message: String,
    },
    /// The token, the CSR or the returned certificate is unusable.
    #[error(transparent)]
    Ca(#[from] CaError),
}

/// An error's causes, joined by ": " (tonic's top-level "transport error" says nothing, so it is left out when
/// there is a cause).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let Some(first) = e.source() else { return e.to_string() };
    let mut out = first.to_string();
    let mut cur = first.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

fn refused(addr: &str, s: tonic::Status) -> JoinError {
    // A call that never reached the manager is a connection problem, not the manager's answer.
    if s.code() == tonic::Code::Unavailable && s.metadata().is_empty() {
        return JoinError::Unreachable { addr: addr.into(), reason: s.message().to_string() };
    }
    JoinError::Refused { code: format!("{:?}", s.code()), message: s.message().to_string() }
}

/// Accepts any server certificate. Used for exactly one call, fetching the root CA certificate, whose digest is
/// then checked against the join token: the token, not the TLS handshake, is what makes that certificate trusted.
#[derive(Debug)]
struct AcceptAnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS channel to `addr` that does not verify the server (see [`AcceptAnyServer`]).
async fn unverified_channel(addr: &str) -> Result<Channel, JoinError> {
    let unreachable = |reason: String| JoinError::Unreachable { addr: addr.into(), reason };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| unreachable(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let target = addr.to_string();
    let endpoint = Endpoint::from_shared(format!("http://{addr}")).map_err(|e| unreachable(chain(&e)))?;
    endpoint
        .timeout(CALL_TIMEOUT)
        .connect_with_connector(tower::service_fn(move |_| {
            let (connector, target) = (connector.clone(), target.clone());
            async move {
                let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&target))
                    .await
                    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connection timed out"))??;
                let name = ServerName::try_from(MANAGER_SERVER_NAME).expect("a valid DNS name");
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
        .map_err(|e| unreachable(chain(&e)))
}

/// Fetches the root CA certificate (PEM) from `addr` and checks it against the token's digest.
pub async fn fetch_root_ca(addr: &str, token: &JoinToken) -> Result<String, JoinError> {
    let mut client = NodeCaClient::new(unverified_channel(addr).await?);
    let pem = client.get_root_ca_certificate(Empty {}).await.map_err(|s| refused(addr, s))?.into_inner().certificate;
    let der = super::cert_der(&pem).map_err(|e| CaError::InvalidCertificate(format!("the manager's root CA: {e}")))?;
    if !token.matches_ca(&der) {
        tracing::warn!(manager = %addr, presented = %hex::encode(Sha256::digest(&der)), "the manager's root CA is not the token's");
        return Err(JoinError::ForeignCa { expected: token.ca_digest_hex() });
    }
    Ok(pem)
}

/// A NodeCA client for a member, authenticated by its current certificate, towards the manager at `addr`.
pub async fn member_ca_client(
    addr: &str,
    tls: &super::ClusterTls,
) -> Result<NodeCaClient<tonic::transport::Channel>, JoinError> {
    let unreachable = |e: tonic::transport::Error| JoinError::Unreachable { addr: addr.into(), reason: chain(&e) };
    let endpoint = super::endpoint(addr).map_err(unreachable)?.connect_timeout(CONNECT_TIMEOUT).timeout(CALL_TIMEOUT);
    let channel = tls.connect(endpoint).await.map_err(unreachable)?;
    Ok(NodeCaClient::new(channel))
}

/// The whole exchange: pin the root CA, make a key and CSR here, and have the manager at `addr` (verified with
/// the pinned CA) sign it. The identity is checked (key, chain) but not saved. `raft_id` is the id a would-be
/// manager will run Raft under (ignored for a worker token).
pub async fn request_identity(
    addr: &str,
    token: &str,
    availability: NodeAvailability,
    advertise_addr: &str,
    raft_id: u64,
) -> Result<NodeIdentity, JoinError> {
    let parsed = JoinToken::parse(token)?;
    let ca_pem = fetch_root_ca(addr, &parsed).await?;
    let csr = NodeCsr::new()?;
    let unreachable = |e: tonic::transport::Error| JoinError::Unreachable { addr: addr.into(), reason: chain(&e) };
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .map_err(unreachable)?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT)
        .tls_config(bootstrap_client_tls_config(&ca_pem))
        .map_err(unreachable)?
        .connect()
        .await
        .map_err(unreachable)?;
    let request = IssueNodeCertificateRequest {
        csr: csr.csr_pem.clone(),
        token: token.trim().to_string(),
        availability,
        advertise_addr: advertise_addr.to_string(),
        raft_id,
    };
    let resp =
        NodeCaClient::new(channel).issue_node_certificate(request).await.map_err(|s| refused(addr, s))?.into_inner();
    let identity = NodeIdentity::from_cert(&resp.certificate, &csr.key_pem, &ca_pem)?;
    if identity.node_id != resp.node_id {
        return Err(CaError::InvalidCertificate(format!(
            "the manager named the node {} but issued a certificate for {}",
            resp.node_id, identity.node_id
        ))
        .into());
    }
    Ok(identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_like_docker() {
        let e = JoinError::Refused {
            code: "InvalidArgument".into(),
            message: super::super::server::INVALID_JOIN_TOKEN.into(),
        };
        assert_eq!(
            e.to_string(),
            "rpc error: code = InvalidArgument desc = A valid join token is necessary to join this cluster"
        );
        let s = tonic::Status::invalid_argument("nope");
        assert!(matches!(refused("m:1", s), JoinError::Refused { code, .. } if code == "InvalidArgument"));
        let e = JoinError::ForeignCa { expected: "ab".into() };
        assert!(e.to_string().contains("remote CA does not match fingerprint. Expected: ab"), "{e}");
    }
}
