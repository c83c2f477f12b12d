//! The node's local API (`shoal.Engine`) on its unix socket: info, version, swarm init/join/leave and join-token
//! rotation, images, logs.
//! The control API is served beside it (`SwarmNode::control_api`).

use crate::containerd::req;
use crate::executor::{hostname, ContainerdExecutor};
use crate::image::{ImageError, ImageService};
use crate::logs::{self, LogOptions};
use engine_api::Engine;
use engine_api::*;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use swarm::api::control::Empty;
use swarm::api::Platform;
use swarm::manager::controlapi::find_service;
use swarm::node::{NodeError, SwarmNode};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

type RpcStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

pub struct LocalApi {
    pub node: Arc<SwarmNode<ContainerdExecutor>>,
    pub images: ImageService,
    pub executor: ContainerdExecutor,
    pub containerd_version: String,
    pub data_root: PathBuf,
}

fn node_status(e: NodeError) -> Status {
    match e {
        NodeError::AlreadyMember | NodeError::NotMember | NodeError::LastManager => {
            Status::failed_precondition(e.to_string())
        }
        NodeError::InvalidArgument(_) | NodeError::Ca(swarm::ca::CaError::InvalidToken(_)) => {
            Status::invalid_argument(e.to_string())
        }
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
        other => Status::internal(other.to_string()),
    }
}

#[tonic::async_trait]
impl Engine for LocalApi {
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

    async fn swarm_leave(&self, req: Request<SwarmLeaveRequest>) -> Result<Response<Empty>, Status> {
        self.node.leave(req.into_inner().force).await.map_err(node_status)?;
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
        self.images.remove(&req.into_inner().reference).await.map_err(image_status)?;
        Ok(Response::new(Empty {}))
    }

    type ServiceLogsStream = RpcStream<LogMessage>;

    async fn service_logs(
        &self,
        req: Request<ServiceLogsRequest>,
    ) -> Result<Response<Self::ServiceLogsStream>, Status> {
        let r = req.into_inner();
        let store = self.node.manager_store().map_err(node_status)?;
        let host = hostname();
        let service_id = store.view(|v| find_service(v, &r.service).map(|s| s.id.clone()))?;
        // Every task of the service, oldest first: (task id, log file, context shown before each line).
        let list = {
            let store = store.clone();
            let cfg = self.executor.config().clone();
            let service_id = service_id.clone();
            move || -> Vec<(String, PathBuf, String)> {
                store.view(|v| {
                    let mut tasks: Vec<_> = v.tasks_by_service(&service_id).collect();
                    tasks.sort_by_key(|t| (t.slot, t.meta.created_at));
                    tasks
                        .into_iter()
                        .map(|t| (t.id.clone(), cfg.log_path(&t.id), format!("{}.{}@{}", t.name(), t.id, host)))
                        .collect()
                })
            }
        };
        let initial = list();
        let mut known: std::collections::HashSet<String> = initial.iter().map(|(id, _, _)| id.clone()).collect();
        let contexts = Arc::new(std::sync::Mutex::new(initial.iter().map(|(_, _, c)| c.clone()).collect::<Vec<_>>()));
        let paths = initial.into_iter().map(|(_, p, _)| p).collect();
        let (add, added) = tokio::sync::mpsc::unbounded_channel();
        let mut rx = logs::stream(paths, LogOptions { follow: r.follow, tail: r.tail }, Some(added));
        if r.follow {
            // Replacement tasks started after the call are followed too, as `docker service logs -f` does.
            let contexts = contexts.clone();
            tokio::spawn(async move {
                while !add.is_closed() {
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    for (id, path, ctx) in list() {
                        if known.insert(id) {
                            contexts.lock().unwrap_or_else(|e| e.into_inner()).push(ctx);
                            if add.send(path).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
        let out = async_stream(move |tx: tokio::sync::mpsc::Sender<Result<LogMessage, Status>>| async move {
            while let Some(l) = rx.recv().await {
                let context =
                    contexts.lock().unwrap_or_else(|e| e.into_inner()).get(l.source).cloned().unwrap_or_default();
                let msg = LogMessage { time: l.time, stream: l.stream, context, line: l.line };
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(out))
    }
}

impl LocalApi {
    fn executor_channel(&self) -> tonic::transport::Channel {
        self.executor.channel()
    }
}

/// Runs `f` feeding a channel, and returns the channel as a response stream.
fn async_stream<T, F, Fut>(f: F) -> RpcStream<T>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<Result<T, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
