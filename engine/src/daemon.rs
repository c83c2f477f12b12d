//! The composition root of `shoald`: locks the data root, gets a containerd (its own or the one given), builds
//! the executor and the swarm node, resumes swarm membership, and serves the local API until shutdown.

use crate::config::DaemonConfig;
use crate::containerd::{self, ContainerdError, ManagedContainerd};
use crate::executor::{ContainerdExecutor, ExecutorConfig};
use crate::host::{default_route_ip, DataRootLock, LockError};
use crate::image::ImageService;
use crate::localapi::LocalApi;
use engine_api::EngineServer;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use swarm::node::{NodeConfig, NodeError, SwarmNode};
use swarm::transport::control::control_server::ControlServer;
use tokio_util::sync::CancellationToken;

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Containerd(#[from] ContainerdError),
    /// The swarm state on disk cannot be used.
    #[error("swarm state: {0}")]
    Swarm(#[from] NodeError),
    #[error("local API socket {path}: {reason}")]
    Socket { path: PathBuf, reason: String },
    #[error("{0} not found next to shoald (looked at {1}); build it with `cargo build --workspace --bins`")]
    MissingBinary(&'static str, PathBuf),
}

pub async fn run(cfg: DaemonConfig, shutdown: CancellationToken) -> Result<(), DaemonError> {
    let socket = cfg.socket_path().map_err(DaemonError::Config)?;
    // Before anything starts: a wrong --group is a configuration error.
    let socket_gid = crate::socket::resolve_group(cfg.group.as_deref())
        .map_err(|e| DaemonError::Socket { path: socket.clone(), reason: e.to_string() })?;
    let generic_resources = cfg.generic_resources().map_err(DaemonError::Config)?;
    let _lock = DataRootLock::acquire(&cfg.data_root)?;
    let logger = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("shoal-logger")))
        .unwrap_or_else(|| PathBuf::from("shoal-logger"));
    if !logger.is_file() {
        return Err(DaemonError::MissingBinary("shoal-logger", logger));
    }
    containerd::require_binary("runc")?;

    let (managed, channel) = match &cfg.containerd {
        Some(sock) => (None, containerd::connect(sock, Duration::from_secs(10)).await?),
        None => {
            let m = ManagedContainerd::start(&cfg.data_root, &cfg.exec_root).await?;
            let ch = containerd::connect(m.socket(), Duration::from_secs(10)).await?;
            (Some(m), ch)
        }
    };
    let containerd_version = containerd::version(&channel).await;
    tracing::info!(containerd = %containerd_version, data_root = %cfg.data_root.display(), "containerd ready");

    let images = ImageService::new(channel.clone(), cfg.data_root.join("tmp")).with_max_upload(cfg.max_image_upload);
    let registries = crate::registry::Registries::new(cfg.registries());
    let executor = ContainerdExecutor::new(
        channel.clone(),
        images.clone(),
        ExecutorConfig {
            data_root: cfg.data_root.clone(),
            logger_binary: logger,
            engine_labels: cfg.engine_labels(),
            generic_resources,
        },
    );
    // The dataplane: what a crashed run left on the host goes first; tasks still running are re-attached when
    // the first network state arrives.
    let net = crate::network::Dataplane::new(crate::network::NetworkConfig::for_data_root(&cfg.data_root));
    match net.cleanup_stale().await {
        Ok(n) => tracing::info!(removed = n, prefix = %net.config().host.prefix, "network dataplane ready"),
        Err(e) => tracing::warn!(error = %e, "removing the network leftovers of an earlier run"),
    }
    net.spawn_reconcile(crate::network::RECONCILE_INTERVAL, shutdown.child_token());
    let executor = executor.with_registries(registries.clone()).with_network(net.clone());
    let node = Arc::new(SwarmNode::new(
        NodeConfig { state_dir: cfg.data_root.join("swarm"), default_advertise_ip: default_route_ip() },
        Arc::new(executor.clone()),
    ));
    let api = LocalApi {
        node: node.clone(),
        images,
        registries,
        executor,
        containerd_version,
        data_root: cfg.data_root.clone(),
    };
    // Certificate renewal and role changes (promote/demote) are checked every 2 s.
    let maintenance = SwarmNode::spawn_maintenance(node.clone(), Duration::from_secs(2), shutdown.child_token());
    let result = serve(&socket, socket_gid, api, shutdown.clone()).await;
    shutdown.cancel();
    let _ = maintenance.await;
    node.shutdown().await;
    // Host-level devices, sandboxes and tables go; the namespaces of containers that keep running stay for the
    // next run to re-attach.
    if let Err(e) = net.cleanup_stale().await {
        tracing::warn!(error = %e, "removing the network dataplane at shutdown");
    }
    if let Some(m) = managed {
        m.shutdown().await;
    }
    let _ = std::fs::remove_file(&socket);
    result
}

/// `shoald --cleanup`: removes the network leftovers of a dead daemon of `cfg.data_root` — every namespace
/// (tasks' too: their containers, if still running, lose their network), device and host table carrying its
/// prefix, and the task records — without starting one. Holds the data-root lock meanwhile, so it never pulls
/// the network from under a live daemon. Returns how many objects went.
pub async fn cleanup(cfg: &DaemonConfig) -> Result<usize, DaemonError> {
    let _lock = DataRootLock::acquire(&cfg.data_root)?;
    let net = crate::network::Dataplane::new(crate::network::NetworkConfig::for_data_root(&cfg.data_root));
    let n = net.sweep().await.map_err(|e| DaemonError::Config(format!("network cleanup: {e}")))?;
    tracing::info!(removed = n, prefix = %net.config().host.prefix, "network leftovers removed");
    Ok(n)
}

/// Resumes swarm membership, then opens the socket (clients never see a node that has not resumed) and serves.
async fn serve(
    socket: &std::path::Path,
    socket_gid: u32,
    api: LocalApi,
    shutdown: CancellationToken,
) -> Result<(), DaemonError> {
    let node = api.node.clone();
    node.resume().await?;
    let sock_err = |reason: String| DaemonError::Socket { path: socket.to_path_buf(), reason };
    let listener = crate::socket::bind(socket, socket_gid).map_err(|e| sock_err(e.to_string()))?;
    tracing::info!(socket = %socket.display(), gid = socket_gid, "API listening");
    tonic::transport::Server::builder()
        .add_service(EngineServer::new(api).max_decoding_message_size(16 << 20))
        .add_service(ControlServer::new(node.control_api()))
        .serve_with_incoming_shutdown(tokio_stream::wrappers::UnixListenerStream::new(listener), shutdown.cancelled())
        .await
        .map_err(|e| sock_err(e.to_string()))
}
