//! `shoal.Engine`: a node's local API, served by `shoald` on its unix socket and used by the `shoal` CLI.
//! Cluster changes go through `shoal.Control` (the swarm crate's control API) on the same socket.

mod wire;

pub use swarm::api::membership::{SwarmInfo, SwarmInitRequest, SwarmLeaveRequest};
pub use wire::*;

/// Generated client and server.
mod generated {
    include!(concat!(env!("OUT_DIR"), "/shoal.Engine.rs"));
}

pub use generated::engine_client::EngineClient;
pub use generated::engine_server::{Engine, EngineServer};

/// The answer to `swarm init`.
pub use swarm::api::membership::SwarmInitResponse;

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
