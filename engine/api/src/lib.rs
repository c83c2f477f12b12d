//! `shoal.Engine`: a node's local API, served by `shoald` on its unix socket and used by the `shoal` CLI.
//! Cluster changes go through `shoal.Control` (the swarm crate's control API) on the same socket.

mod wire;

pub use swarm::api::membership::{
    RotateJoinTokenRequest, RotateJoinTokenResponse, SwarmInfo, SwarmInitRequest, SwarmJoinRequest, SwarmJoinResponse,
    SwarmLeaveRequest, SwarmUnlockKeyResponse, SwarmUnlockRequest,
};
pub use wire::*;

/// Generated client and server.
mod generated {
    include!(concat!(env!("OUT_DIR"), "/shoal.Engine.rs"));
}

pub use generated::engine_client::EngineClient;
pub use generated::engine_server::{Engine, EngineServer};

/// The answer to `swarm init`.
pub use swarm::api::membership::SwarmInitResponse;

/// Where `shoald` serves its API unless told otherwise (`-H`), as dockerd's `/var/run/docker.sock`.
pub const DEFAULT_HOST: &str = "unix:///run/shoal/shoal.sock";

/// A `-H` / `SHOAL_HOST` value that names no unix socket.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// `unix://` with nothing after it.
    #[error("invalid host {0:?}: unix socket path is empty")]
    EmptyPath(String),
    /// Another scheme than `unix://`.
    #[error("invalid host {host:?}: unsupported protocol scheme {scheme:?} (only unix:// is supported)")]
    Scheme { host: String, scheme: String },
}

/// Resolves `-H` to a socket path: `unix:///path` or a bare path; empty means [`DEFAULT_HOST`]. The daemon and the
/// CLI both use this, so they agree on every spelling.
pub fn socket_path(host: &str) -> Result<std::path::PathBuf, HostError> {
    let host = host.trim();
    let host = if host.is_empty() { DEFAULT_HOST } else { host };
    if let Some(path) = host.strip_prefix("unix://") {
        if path.is_empty() {
            return Err(HostError::EmptyPath(host.to_string()));
        }
        return Ok(path.into());
    }
    if let Some((scheme, _)) = host.split_once("://") {
        return Err(HostError::Scheme { host: host.to_string(), scheme: scheme.to_string() });
    }
    Ok(host.into())
}

/// The registry host a `login`/`logout` server or an image reference's first part names: Docker Hub's spellings
/// (`https://index.docker.io/v1/`, `registry-1.docker.io`, none) are all `docker.io`. The CLI keys stored
/// credentials by it and the daemon logs in to it.
pub fn registry_host(server: &str) -> String {
    let s = server.trim();
    let s = s.strip_prefix("https://").or_else(|| s.strip_prefix("http://")).unwrap_or(s);
    let host = s.split('/').next().unwrap_or(s);
    match host {
        "" | "index.docker.io" | "registry-1.docker.io" | "docker.io" => "docker.io".into(),
        h => h.to_string(),
    }
}

/// Connects to a unix socket as a gRPC channel (the local API).
pub async fn connect_unix(
    path: impl Into<std::path::PathBuf>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let path = path.into();
    tonic::transport::Endpoint::try_from("http://[::]:0")?
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn registry_auth_round_trips_in_dockers_encoding() {
        use base64::Engine as _;
        let a = AuthConfig { username: "alice".into(), password: "s3cr+t/=".into() };
        let enc = a.encode("localhost:5000");
        let raw = base64::engine::general_purpose::URL_SAFE.decode(&enc).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&raw).unwrap();
        assert_eq!(v["serveraddress"], "localhost:5000");
        let back = AuthConfig::decode(&enc).unwrap().unwrap();
        assert_eq!((back.username.as_str(), back.password.as_str()), ("alice", "s3cr+t/="));
        // Docker CLIs also send standard base64 without padding, and `{}` for no credentials.
        let std = base64::engine::general_purpose::STANDARD_NO_PAD.encode(br#"{"username":"bob","password":"p"}"#);
        assert_eq!(AuthConfig::decode(&std).unwrap().unwrap().username, "bob");
        let empty = base64::engine::general_purpose::URL_SAFE.encode(b"{}");
        assert!(AuthConfig::decode(&empty).unwrap().is_none());
        assert!(AuthConfig::decode("").unwrap().is_none());
        let e = AuthConfig::decode("!!!").unwrap_err();
        assert!(e.to_string().starts_with("invalid registry auth in the service spec: base64"), "{e}");
    }

    #[test]
    fn registry_servers_name_hosts() {
        assert_eq!(registry_host("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(registry_host(""), "docker.io");
        assert_eq!(registry_host("localhost:5000"), "localhost:5000");
        assert_eq!(registry_host("https://reg.example.com:8443/v2/"), "reg.example.com:8443");
    }

    #[test]
    fn hosts_resolve_to_socket_paths() {
        assert_eq!(socket_path("").unwrap(), PathBuf::from("/run/shoal/shoal.sock"));
        assert_eq!(socket_path("unix:///tmp/s.sock").unwrap(), PathBuf::from("/tmp/s.sock"));
        assert_eq!(socket_path("/tmp/s.sock").unwrap(), PathBuf::from("/tmp/s.sock"));
        assert!(matches!(socket_path("tcp://1.2.3.4:2375"), Err(HostError::Scheme { .. })));
        assert!(matches!(socket_path("unix://"), Err(HostError::EmptyPath(_))));
    }
}
