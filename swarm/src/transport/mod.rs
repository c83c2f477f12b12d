//! gRPC plumbing: the JSON codec our services use and the generated clients/servers.
//!
//! Three services: `shoal.Control` (cluster changes; CLI and managers), `shoal.Dispatcher` (agent sessions) —
//! both on the cluster's mTLS listener — and `shoal.Engine` (a node's local API on its unix socket).

mod codec;

pub use codec::JsonCodec;

/// `shoal.Control`: generated client and server.
pub mod control {
    include!(concat!(env!("OUT_DIR"), "/shoal.Control.rs"));
}

/// `shoal.Dispatcher`: generated client and server.
pub mod dispatcher {
    include!(concat!(env!("OUT_DIR"), "/shoal.Dispatcher.rs"));
}

/// `shoal.Engine`: generated client and server.
pub mod engine {
    include!(concat!(env!("OUT_DIR"), "/shoal.Engine.rs"));
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
