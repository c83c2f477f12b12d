//! The node's local API (`shoal.Engine`) on its unix socket: info, version, swarm init/join/leave, join-token
//! rotation, unlock and unlock-key, images.
//! The control API is served beside it (`SwarmNode::control_api`); it also serves `service logs`, gathered
//! from every node by the leader.

use crate::containerd::req;
use crate::executor::{hostname, ContainerdExecutor};
use crate::image::{ImageError, ImageService};
use crate::registry::{Credentials, Registries, RegistryError};
use engine_api::Engine;
use engine_api::*;
use std::path::PathBuf;
use std::sync::Arc;
use swarm::api::control::Empty;
use swarm::api::Platform;
use swarm::node::{NodeError, SwarmNode};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

pub struct LocalApi {
    pub node: Arc<SwarmNode<ContainerdExecutor>>,
    pub images: ImageService,
    pub registries: Registries,
    pub executor: ContainerdExecutor,
    pub containerd_version: String,
    pub data_root: PathBuf,
}

fn node_status(e: NodeError) -> Status {
    match e {
        NodeError::AlreadyMember | NodeError::NotMember | NodeError::LastManager | NodeError::NotLocked => {
            Status::failed_precondition(e.to_string())
        }
        NodeError::InvalidArgument(_)
        | NodeError::InvalidUnlockKey
        | NodeError::Ca(swarm::ca::CaError::InvalidToken(_)) => Status::invalid_argument(e.to_string()),
        NodeError::NotManager(_) => Status::failed_precondition(e.to_string()),
        NodeError::JoinTimeout => Status::deadline_exceeded(e.to_string()),
        NodeError::Join(ref j) => match j {
            swarm::ca::JoinError::Unreachable { .. } => Status::unavailable(e.to_string()),
            swarm::ca::JoinError::ForeignCa { .. } | swarm::ca::JoinError::Refused { .. } => {
                Status::invalid_argument(e.to_string())
            }
            swarm::ca::JoinError::Ca(_) => Status::internal(e.to_string()),
        },
        other => Status::internal(other.to_string()),
    }
}

fn image_status(e: ImageError) -> Status {
    match e {
        ImageError::NotFound(_) => Status::not_found(e.to_string()),
        ImageError::InvalidArchive(_)
        | ImageError::TooLarge(_)
        | ImageError::LayerMismatch { .. }
        | ImageError::Platform { .. }
        | ImageError::Reference(_) => Status::invalid_argument(e.to_string()),
        ImageError::InUse { .. } => Status::failed_precondition(e.to_string()),
        other => Status::internal(other.to_string()),
    }
}

fn registry_status(e: RegistryError) -> Status {
    match e {
        RegistryError::Image(e) => image_status(e),
        RegistryError::ManifestUnknown { .. } => Status::not_found(e.to_string()),
        RegistryError::NoCredentials { .. } | RegistryError::BadCredentials { .. } => {
            Status::unauthenticated(e.to_string())
        }
        RegistryError::InvalidPlatform(_) | RegistryError::Reference(_) => Status::invalid_argument(e.to_string()),
        RegistryError::UnknownHost { .. } | RegistryError::ConnectionRefused { .. } | RegistryError::Tls { .. } => {
            Status::unavailable(e.to_string())
        }
        RegistryError::DiskFull { .. } => Status::resource_exhausted(e.to_string()),
        RegistryError::NoPlatform { .. } | RegistryError::WrongPlatform { .. } => {
            Status::failed_precondition(e.to_string())
        }
        other => Status::internal(other.to_string()),
    }
}

fn credentials(a: Option<AuthConfig>) -> Option<Credentials> {
    a.filter(|a| !a.username.is_empty()).map(|a| Credentials { username: a.username, password: a.password })
}

type PullStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<ImagePullProgress, Status>> + Send>>;

/// A pull's or push's progress lines, then its end: an error ends the stream with its status.
fn progress_stream(
    rx: tokio::sync::mpsc::Receiver<ImagePullProgress>,
    done: tokio::sync::oneshot::Receiver<Result<(), Status>>,
) -> PullStream {
    let progress = tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok);
    let end = futures::stream::once(async move {
        match done.await {
            Ok(Ok(())) => None,
            Ok(Err(s)) => Some(Err(s)),
            Err(_) => Some(Err(Status::internal("the operation ended without a result"))),
        }
    })
    .filter_map(|x| x);
    Box::pin(progress.chain(end))
}

#[tonic::async_trait]
impl Engine for LocalApi {
    type ImagePullStream = PullStream;
    type ImagePushStream = PullStream;

    async fn info(&self, _req: Request<Empty>) -> Result<Response<InfoResponse>, Status> {
        let swarm = self.node.info().await;
        let mut tasks = containerd_client::services::v1::tasks_client::TasksClient::new(self.executor_channel());
        let running = tasks
            .list(req(containerd_client::services::v1::ListTasksRequest { filter: String::new() }))
            .await
            .map(|r| {
                r.into_inner()
                    .tasks
                    .iter()
                    .filter(|t| t.status == containerd_client::types::v1::Status::Running as i32)
                    .count()
            })
            .unwrap_or(0);
        let images = self.images.list().await.map(|l| l.len()).unwrap_or(0);
        let d = swarm::agent::exec::Executor::describe(&self.executor)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let p = Platform::current();
        Ok(Response::new(InfoResponse {
            swarm,
            engine_version: env!("CARGO_PKG_VERSION").into(),
            containerd_version: self.containerd_version.clone(),
            containers_running: running as u64,
            images: images as u64,
            data_root: self.data_root.display().to_string(),
            name: hostname(),
            os: p.os,
            architecture: p.architecture,
            ncpu: (d.resources.nano_cpus / 1_000_000_000) as u64,
            mem_total: d.resources.memory_bytes as u64,
        }))
    }

    async fn version(&self, _req: Request<Empty>) -> Result<Response<VersionResponse>, Status> {
        let p = Platform::current();
        Ok(Response::new(VersionResponse {
            version: env!("CARGO_PKG_VERSION").into(),
            api_version: "1".into(),
            os: p.os,
            arch: p.architecture,
            containerd_version: self.containerd_version.clone(),
        }))
    }

    async fn swarm_init(&self, req: Request<SwarmInitRequest>) -> Result<Response<SwarmInitResponse>, Status> {
        let node_id = self.node.init(req.into_inner()).await.map_err(node_status)?;
        Ok(Response::new(SwarmInitResponse { node_id }))
    }

    async fn swarm_join(&self, req: Request<SwarmJoinRequest>) -> Result<Response<SwarmJoinResponse>, Status> {
        let node_id = self.node.join(req.into_inner()).await.map_err(node_status)?;
        Ok(Response::new(SwarmJoinResponse { node_id }))
    }

    async fn swarm_rotate_join_token(
        &self,
        req: Request<RotateJoinTokenRequest>,
    ) -> Result<Response<RotateJoinTokenResponse>, Status> {
        let token = self.node.rotate_join_token(req.into_inner().role).await.map_err(node_status)?;
        Ok(Response::new(RotateJoinTokenResponse { token }))
    }

    async fn swarm_unlock(&self, req: Request<SwarmUnlockRequest>) -> Result<Response<Empty>, Status> {
        self.node.unlock(&req.into_inner().key).await.map_err(node_status)?;
        Ok(Response::new(Empty {}))
    }

    async fn swarm_unlock_key(&self, _req: Request<Empty>) -> Result<Response<SwarmUnlockKeyResponse>, Status> {
        let key = self.node.unlock_key().map_err(node_status)?;
        Ok(Response::new(SwarmUnlockKeyResponse { key }))
    }

    async fn swarm_leave(&self, req: Request<SwarmLeaveRequest>) -> Result<Response<Empty>, Status> {
        self.node.leave(req.into_inner().force).await.map_err(node_status)?;
        // The tasks are gone with the membership: so is every network object of this daemon.
        if let Some(net) = self.executor.network() {
            if let Err(e) = net.cleanup_all().await {
                tracing::warn!(error = %e, "removing the network dataplane after leaving the swarm");
            }
        }
        Ok(Response::new(Empty {}))
    }

    async fn image_load(&self, req: Request<Streaming<ImageLoadChunk>>) -> Result<Response<ImageLoadResponse>, Status> {
        let tmp = self.data_root.join("tmp");
        std::fs::create_dir_all(&tmp).map_err(|e| Status::internal(format!("{}: {e}", tmp.display())))?;
        let file = tempfile::NamedTempFile::new_in(&tmp).map_err(|e| Status::internal(e.to_string()))?;
        let mut out = tokio::fs::File::create(file.path()).await.map_err(|e| Status::internal(e.to_string()))?;
        let mut stream = req.into_inner();
        let (limit, mut total) = (self.images.max_upload(), 0u64);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            total += chunk.data.len() as u64;
            if total > limit {
                return Err(image_status(ImageError::TooLarge(limit)));
            }
            tokio::io::AsyncWriteExt::write_all(&mut out, &chunk.data)
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
        }
        tokio::io::AsyncWriteExt::flush(&mut out).await.map_err(|e| Status::internal(e.to_string()))?;
        drop(out);
        let loaded = self.images.load(file.path()).await.map_err(image_status)?;
        Ok(Response::new(ImageLoadResponse { loaded }))
    }

    async fn image_list(&self, _req: Request<Empty>) -> Result<Response<ImageListResponse>, Status> {
        let images = self
            .images
            .list()
            .await
            .map_err(image_status)?
            .into_iter()
            .map(|i| ImageSummary { reference: i.reference, id: i.id, created: i.created, size: i.size })
            .collect();
        Ok(Response::new(ImageListResponse { images }))
    }

    async fn image_remove(&self, req: Request<ImageRemoveRequest>) -> Result<Response<Empty>, Status> {
        let r = req.into_inner();
        self.images.remove(&r.reference, r.force).await.map_err(image_status)?;
        Ok(Response::new(Empty {}))
    }

    async fn image_pull(&self, req: Request<ImagePullRequest>) -> Result<Response<PullStream>, Status> {
        let r = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let (registries, images) = (self.registries.clone(), self.images.clone());
        // The pull runs on its own: a client that goes away does not leave a half-written image behind.
        tokio::spawn(async move {
            let platform = Some(r.platform.as_str()).filter(|p| !p.is_empty());
            let result = registries.pull(&images, &r.reference, platform, credentials(r.auth), tx).await;
            if let Err(e) = &result {
                tracing::warn!(image = %r.reference, error = %e, "pull failed");
            }
            let _ = done_tx.send(result.map(|_| ()).map_err(registry_status));
        });
        Ok(Response::new(progress_stream(rx, done_rx)))
    }

    async fn image_push(&self, req: Request<ImagePushRequest>) -> Result<Response<PullStream>, Status> {
        let r = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let (registries, images) = (self.registries.clone(), self.images.clone());
        tokio::spawn(async move {
            let result = registries.push(&images, &r.reference, credentials(r.auth), tx).await;
            if let Err(e) = &result {
                tracing::warn!(image = %r.reference, error = %e, "push failed");
            }
            let _ = done_tx.send(result.map(|_| ()).map_err(registry_status));
        });
        Ok(Response::new(progress_stream(rx, done_rx)))
    }

    async fn image_tag(&self, req: Request<ImageTagRequest>) -> Result<Response<Empty>, Status> {
        let r = req.into_inner();
        self.images.tag(&r.source, &r.target).await.map_err(image_status)?;
        Ok(Response::new(Empty {}))
    }

    async fn image_inspect(&self, req: Request<ImageInspectRequest>) -> Result<Response<ImageInspect>, Status> {
        Ok(Response::new(self.images.inspect(&req.into_inner().reference).await.map_err(image_status)?))
    }

    async fn registry_login(
        &self,
        req: Request<RegistryLoginRequest>,
    ) -> Result<Response<RegistryLoginResponse>, Status> {
        let r = req.into_inner();
        let creds = Credentials { username: r.auth.username, password: r.auth.password };
        self.registries.login(&r.server, &creds).await.map_err(registry_status)?;
        Ok(Response::new(RegistryLoginResponse { status: "Login Succeeded".into() }))
    }

    async fn distribution_inspect(
        &self,
        req: Request<DistributionInspectRequest>,
    ) -> Result<Response<DistributionInspectResponse>, Status> {
        let r = req.into_inner();
        let d = self.registries.inspect(&r.reference, credentials(r.auth)).await.map_err(registry_status)?;
        Ok(Response::new(d))
    }
}

impl LocalApi {
    fn executor_channel(&self) -> tonic::transport::Channel {
        self.executor.channel()
    }
}
