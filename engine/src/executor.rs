//! `ContainerdExecutor`: the agent's runtime on real containers. Container id = task id (unique across
//! containerd instances sharing runc's state root); namespace `shoal`; snapshot key = task id on overlayfs;
//! runtime io.containerd.runc.v2. stdout/stderr go to `shoal-logger`, which the shim spawns (`binary://`), so
//! logs keep flowing while shoald is down.

use crate::containerd::{is_not_found, is_unavailable, req, req_leased, SharedLease};
use crate::exits::{ExitHub, Woken};
use crate::health;
use crate::image::{ImageService, ResolvedImage, SNAPSHOTTER};
use crate::imagefs::ImageRoot;
use crate::jsonfile::Rotation;
use crate::registry::Registries;
use crate::spec::{self, ImageConfig, SpecPaths, UserFiles};
use crate::taskimage::TaskImages;
use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{MountsRequest, PrepareSnapshotRequest, RemoveSnapshotRequest};
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest, DeleteTaskRequest,
    GetContainerRequest, GetRequest, KillRequest, ListContainersRequest, StartRequest, UpdateContainerRequest,
    WaitRequest,
};
use containerd_client::types::v1::Status as ProcStatus;
use containerd_client::types::Mount;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use swarm::agent::exec::{ContainerState, Controller, ExecError, Executor, ExitStatus, HealthStatus};
use swarm::agent::task::PROCESS_GONE;
use swarm::api::{EngineDescription, NodeDescription, Platform, Resources, Task};
use tonic::transport::Channel;

pub const RUNTIME: &str = "io.containerd.runc.v2";
const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
pub const LABEL_TASK_ID: &str = "com.docker.swarm.task.id";
/// Set on a container when its process has exited and its containerd task was deleted: the exit code that
/// `wait`/`inspect` report from then on. A container without it and without a task never ran, or lost its
/// process (host reboot).
pub const LABEL_EXIT_CODE: &str = "io.shoal.exit-code";
/// Set on a container just before its process is first created: start never runs it a second time.
pub const LABEL_STARTED: &str = "io.shoal.started";
/// Set on a container when the kernel OOM-killed its processes and the process exited non-zero: `wait` then
/// reports the task failed for lack of memory (Docker's `OOMKilled`).
pub const LABEL_OOM_KILLED: &str = "io.shoal.oom-killed";
/// How long `wait` keeps re-attaching while containerd is unreachable before it reports an error.
const WAIT_RECONNECT_LIMIT: Duration = Duration::from_secs(120);
/// How many tasks are created and started at once. Each start spawns a shim and runs runc; past a few at a time
/// they only contend for the CPU and containerd's locks, and every one of them finishes later.
pub const START_CONCURRENCY: usize = 4;
/// The lease the prepares of a burst of tasks share (see `SharedLease`).
const PREPARE_LEASE_TTL: Duration = Duration::from_secs(600);

/// The stdio URI that makes the runc shim spawn `shoal-logger` for a task:
/// `binary:///path/to/shoal-logger?file=<log>&max-size=<bytes>&max-file=<n>`. The shim passes each query pair as
/// two arguments (`file <log>`) and sets CONTAINER_ID / CONTAINER_NAMESPACE.
pub fn logger_uri(logger: &Path, log: &Path, rotation: &Rotation) -> String {
    let mut uri = format!("binary://{}?file={}", escape(&logger.to_string_lossy()), escape(&log.to_string_lossy()));
    for (k, v) in rotation.to_options() {
        uri.push_str(&format!("&{k}={}", escape(&v)));
    }
    uri
}

/// The log rotation a task asks for (its `--log-driver`/`--log-opt`), or the defaults.
pub fn task_rotation(task: &Task) -> Result<Rotation, ExecError> {
    let Some(d) = &task.spec.log_driver else { return Ok(Rotation::default()) };
    Rotation::from_driver(&d.name, d.options.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(|e| ExecError::InvalidSpec(e.to_string()))
}

/// Percent-encodes all but unreserved characters and `/` (containerd parses the URI with Go's net/url).
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    pub data_root: PathBuf,
    /// The `shoal-logger` binary the shim runs for each task's stdio.
    pub logger_binary: PathBuf,
    pub engine_labels: BTreeMap<String, String>,
    /// What the node offers to tasks' generic resource reservations (`--node-generic-resource gpu=2`).
    pub generic_resources: BTreeMap<String, u64>,
}

impl ExecutorConfig {
    /// Where a task's log file is.
    pub fn log_path(&self, task_id: &str) -> PathBuf {
        crate::logs::task_log_path(&self.data_root, task_id)
    }
}

#[derive(Clone)]
pub struct ContainerdExecutor {
    ch: Channel,
    images: ImageService,
    task_images: TaskImages,
    cfg: Arc<ExecutorConfig>,
    /// The dataplane; without one, tasks get a loopback-only namespace and network state is ignored.
    net: Option<Arc<crate::network::Dataplane>>,
    /// The secrets and configs the agent handed over (memory only; tasks get them on a tmpfs).
    files: Arc<std::sync::RwLock<swarm::api::TaskFiles>>,
    /// Task exits, from one event subscription.
    exits: Arc<ExitHub>,
    /// Bounds the task starts in flight (see [`START_CONCURRENCY`]).
    starts: Arc<tokio::sync::Semaphore>,
    /// Holds fresh snapshots from prepare until their container references them.
    prepare_lease: Arc<SharedLease>,
}

fn rt(s: tonic::Status) -> ExecError {
    ExecError::Runtime(s.message().to_string())
}

/// Parses a signal name or number ("SIGTERM", "TERM", "15").
pub fn parse_signal(s: &str) -> Option<u32> {
    if s.is_empty() {
        return Some(libc::SIGTERM as u32);
    }
    if let Ok(n) = s.parse::<u32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let name = s.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    let n = match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "STOP" => libc::SIGSTOP,
        "CONT" => libc::SIGCONT,
        "WINCH" => libc::SIGWINCH,
        "PWR" => libc::SIGPWR,
        _ => return None,
    };
    Some(n as u32)
}

impl ContainerdExecutor {
    pub fn new(ch: Channel, images: ImageService, cfg: ExecutorConfig) -> Self {
        let task_images = TaskImages::new(images.clone(), None);
        ContainerdExecutor {
            exits: ExitHub::new(ch.clone()),
            ch,
            images,
            task_images,
            cfg: Arc::new(cfg),
            net: None,
            files: Arc::default(),
            starts: Arc::new(tokio::sync::Semaphore::new(START_CONCURRENCY)),
            prepare_lease: Arc::new(SharedLease::new("shoal-prepare", PREPARE_LEASE_TTL)),
        }
    }

    /// Pulls a task's image from its registry when this node does not have it.
    pub fn with_registries(mut self, registries: Registries) -> Self {
        self.task_images = TaskImages::new(self.images.clone(), Some(registries));
        self
    }

    /// Wires tasks' networks through `net` (see `crate::network`).
    pub fn with_network(mut self, net: Arc<crate::network::Dataplane>) -> Self {
        self.net = Some(net);
        self
    }

    pub fn network(&self) -> Option<&Arc<crate::network::Dataplane>> {
        self.net.as_ref()
    }

    pub fn config(&self) -> &ExecutorConfig {
        &self.cfg
    }

    pub fn channel(&self) -> Channel {
        self.ch.clone()
    }

    /// The containers with a `wait` in progress (tests check none is left behind).
    pub fn waiting(&self) -> usize {
        self.exits.waiting()
    }

    async fn delete_all(&self, id: &str) -> Result<(), ExecError> {
        let mut tasks = TasksClient::new(self.ch.clone());
        if let Ok(t) = tasks.get(req(GetRequest { container_id: id.into(), exec_id: String::new() })).await {
            if t.into_inner().process.map(|p| p.status) != Some(ProcStatus::Stopped as i32) {
                let _ = tasks
                    .kill(req(KillRequest {
                        container_id: id.into(),
                        exec_id: String::new(),
                        signal: libc::SIGKILL as u32,
                        all: true,
                    }))
                    .await;
                let _ = tokio::time::timeout(
                    Duration::from_secs(10),
                    tasks.wait(req(WaitRequest { container_id: id.into(), exec_id: String::new() })),
                )
                .await;
            }
            match tasks.delete(req(DeleteTaskRequest { container_id: id.into() })).await {
                Ok(_) => {}
                Err(s) if is_not_found(&s) => {}
                Err(s) => return Err(rt(s)),
            }
        }
        // Always the task before the container: containerd 1.6 would leave an undeletable task otherwise.
        match ContainersClient::new(self.ch.clone()).delete(req(DeleteContainerRequest { id: id.into() })).await {
            Ok(_) => {}
            Err(s) if is_not_found(&s) => {}
            Err(s) => return Err(rt(s)),
        }
        match SnapshotsClient::new(self.ch.clone())
            .remove(req(RemoveSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key: id.into() }))
            .await
        {
            Ok(_) => {}
            Err(s) if is_not_found(&s) => {}
            Err(s) => return Err(rt(s)),
        }
        // As `docker rm -v` of a swarm task: its log directory and anonymous volumes (the spec's and the
        // image's) go with the container. Off the async threads: a volume can be a large tree.
        let (root, id) = (self.cfg.data_root.clone(), id.to_string());
        tokio::task::spawn_blocking(move || {
            remove_dir(&crate::logs::task_dir(&root, &id))?;
            crate::taskfiles::release(&root, &id)?;
            for dir in anonymous_volumes(&root.join("volumes"), &id) {
                remove_dir(&dir)?;
            }
            Ok(())
        })
        .await
        .map_err(|e| ExecError::Runtime(e.to_string()))?
    }
}

fn remove_dir(dir: &Path) -> Result<(), ExecError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ExecError::Runtime(format!("removing {}: {e}", dir.display()))),
    }
}

/// The anonymous volumes of a task: `<volumes>/<task id>-<n>` for the spec's and `<volumes>/<task id>-image-<n>`
/// for the image's (see `spec::task_mounts`).
fn anonymous_volumes(volumes: &Path, task_id: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(volumes) else { return Vec::new() };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.strip_prefix(task_id)
                .and_then(|rest| rest.strip_prefix('-'))
                .map(|rest| rest.strip_prefix("image-").unwrap_or(rest))
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(|e| e.path())
        .collect()
}

fn mem_total() -> i64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|k| k.parse::<i64>().ok()))
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

impl Executor for ContainerdExecutor {
    type Controller = ContainerdController;

    async fn describe(&self) -> Result<NodeDescription, ExecError> {
        let cpus = std::thread::available_parallelism().map(|n| n.get() as i64).unwrap_or(1);
        Ok(NodeDescription {
            hostname: hostname(),
            platform: Platform::current(),
            resources: Resources { nano_cpus: cpus * 1_000_000_000, memory_bytes: mem_total(), pids: 0 },
            engine: EngineDescription {
                engine_version: env!("CARGO_PKG_VERSION").into(),
                labels: self.cfg.engine_labels.clone(),
            },
            generic_resources: self.cfg.generic_resources.clone(),
        })
    }

    fn controller(&self, task: &Task) -> Result<ContainerdController, ExecError> {
        Ok(ContainerdController { exec: self.clone(), task: task.clone(), fresh: Arc::default() })
    }

    async fn list_tasks(&self) -> Result<Vec<String>, ExecError> {
        let list = ContainersClient::new(self.ch.clone())
            .list(req(ListContainersRequest { filters: vec![] }))
            .await
            .map_err(rt)?
            .into_inner()
            .containers;
        Ok(list.into_iter().filter(|c| c.labels.contains_key(LABEL_TASK_ID)).map(|c| c.id).collect())
    }

    async fn apply_task_files(&self, files: &swarm::api::TaskFiles) -> Result<(), ExecError> {
        *self.files.write().unwrap_or_else(|e| e.into_inner()) = files.clone();
        Ok(())
    }

    async fn remove_task(&self, task_id: &str) -> Result<(), ExecError> {
        self.delete_all(task_id).await?;
        if let Some(net) = &self.net {
            net.remove_task(task_id).await?;
        }
        Ok(())
    }

    async fn apply_network_state(&self, state: &swarm::api::NetworkState) -> Result<(), ExecError> {
        match &self.net {
            Some(net) => Ok(net.apply(state.clone()).await?),
            None => Ok(()),
        }
    }

    async fn logs(
        &self,
        task_ids: &[String],
        opts: &swarm::api::logs::LogsOptions,
    ) -> Result<tokio::sync::mpsc::Receiver<swarm::api::logs::TaskLogLine>, ExecError> {
        // Ids become paths under the data root: only plain ids (as the store makes them) are read.
        if let Some(bad) = task_ids.iter().find(|id| id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric())) {
            return Err(ExecError::InvalidSpec(format!("invalid task id {bad:?}")));
        }
        let since = match &opts.since {
            Some(s) => Some(
                humantime::parse_rfc3339_weak(s)
                    .map_err(|e| ExecError::InvalidSpec(format!("invalid since time {s:?}: {e}")))?,
            ),
            None => None,
        };
        let paths = task_ids.iter().map(|id| self.cfg.log_path(id)).collect();
        let mut lines = crate::logs::stream_since(
            paths,
            crate::logs::LogOptions { follow: opts.follow, tail: opts.tail },
            since,
            None,
        );
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            while let Some(l) = lines.recv().await {
                let stream = match l.stream.as_str() {
                    "stderr" => swarm::api::logs::LogStream::Stderr,
                    _ => swarm::api::logs::LogStream::Stdout,
                };
                let line = swarm::api::logs::TaskLogLine { task_id: l.task_id, time: l.time, stream, line: l.line };
                if tx.send(line).await.is_err() {
                    return;
                }
            }
        });
        Ok(rx)
    }
}

#[derive(Clone)]
pub struct ContainerdController {
    exec: ContainerdExecutor,
    task: Task,
    /// What this controller's own `prepare` learnt when it created the container, so that `start` and `health`
    /// right after it need not ask containerd again.
    fresh: Arc<Mutex<Fresh>>,
}

#[derive(Default)]
struct Fresh {
    /// The new snapshot's mounts: set while the container has been created here and not started yet.
    mounts: Option<Vec<Mount>>,
    /// Whether the container created here has a health check.
    healthcheck: Option<bool>,
}

/// Label holding the image's `StopSignal` on a container, so shutdown honours it without the image at hand.
const LABEL_STOP_SIGNAL: &str = "io.shoal.image.stop-signal";

/// What the spec needs from the image's files, read off the async runtime: the user files when a user name must
/// be resolved, and the anonymous volumes the image declares, created and filled with the image's content there
/// (only when new, as Docker fills only an empty volume).
fn prepare_image_files(
    root: &ImageRoot,
    task: &Task,
    image: &ImageConfig,
    volumes: &Path,
) -> Result<UserFiles, ExecError> {
    let mut files = UserFiles::default();
    if spec::needs_user_files(spec::user_text(task, image)) {
        let bad = |e: crate::imagefs::ImageFsError| ExecError::InvalidSpec(format!("resolving the user: {e}"));
        files.passwd = root.read_text("/etc/passwd").map_err(bad)?;
        files.group = root.read_text("/etc/group").map_err(bad)?;
    }
    for (n, path) in spec::image_volumes(task, image) {
        let dir = spec::image_volume_dir(volumes, &task.id, n);
        if dir.exists() {
            continue;
        }
        let fail = |e: String| ExecError::Runtime(format!("creating the volume for {path}: {e}"));
        std::fs::create_dir_all(&dir).map_err(|e| fail(e.to_string()))?;
        root.copy_dir(path, &dir).map_err(|e| fail(e.to_string()))?;
    }
    Ok(files)
}

/// Removes the anonymous volumes made for the image's declared volumes of task `id`.
impl ContainerdController {
    fn id(&self) -> &str {
        &self.task.id
    }

    fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.exec.ch.clone())
    }

    async fn process(&self) -> Result<Option<containerd_client::types::v1::Process>, ExecError> {
        match self.tasks().get(req(GetRequest { container_id: self.id().into(), exec_id: String::new() })).await {
            Ok(r) => Ok(r.into_inner().process),
            Err(s) if is_not_found(&s) => Ok(None),
            Err(s) => Err(rt(s)),
        }
    }

    /// The container record, or `None` if there is none.
    async fn container(&self) -> Result<Option<Container>, ExecError> {
        match ContainersClient::new(self.exec.ch.clone()).get(req(GetContainerRequest { id: self.id().into() })).await {
            Ok(r) => Ok(r.into_inner().container),
            Err(s) if is_not_found(&s) => Ok(None),
            Err(s) => Err(rt(s)),
        }
    }

    /// A process seen stopped: reaped, and reported as `wait` reports it.
    async fn exit(&self, exit_status: u32) -> Result<ExitStatus, ExecError> {
        let exit_code = exit_status as i32;
        self.reap_detached(exit_code).await;
        self.ended(exit_code).await
    }

    /// The exit of a task without a process any more: the code recorded on the container when it was reaped.
    async fn reaped_exit(&self) -> Result<ExitStatus, ExecError> {
        match self.recorded_exit().await? {
            Some(exit_code) => self.ended(exit_code).await,
            None => Err(ExecError::NotFound(self.id().into())),
        }
    }

    /// The exit code recorded when the task was reaped, if it was.
    async fn recorded_exit(&self) -> Result<Option<i32>, ExecError> {
        Ok(self.container().await?.and_then(|c| c.labels.get(LABEL_EXIT_CODE).and_then(|v| v.parse().ok())))
    }

    /// How a reaped process ended, as `wait` reports it: an exit after an OOM kill is the task's failure, saying so.
    async fn ended(&self, exit_code: i32) -> Result<ExitStatus, ExecError> {
        let oom = self.container().await?.is_some_and(|c| c.labels.contains_key(LABEL_OOM_KILLED));
        if oom {
            let limit = self.task.spec.resources.limits.memory_bytes;
            return Err(ExecError::Runtime(crate::oom::oom_error(exit_code, limit)));
        }
        Ok(ExitStatus { exit_code })
    }

    /// Records a stopped process's exit code on the container, then deletes the containerd task, which takes
    /// the shim, the logger, the rootfs mount and the cgroup with it (as Docker does when a container exits).
    /// Only the container record, its snapshot and the log stay until `remove`. Idempotent.
    async fn reap(&self, exit_code: i32) -> Result<(), ExecError> {
        // Read while the cgroup still exists (deleting the task removes it), and recorded before the exit code,
        // whose presence marks the reap done.
        let cgroup = spec::cgroup_path(self.id());
        if exit_code != 0 && crate::oom::oom_kills(Path::new(crate::oom::CGROUP_ROOT), &cgroup).unwrap_or(0) > 0 {
            tracing::info!(task.id = %self.id(), exit_code, "the kernel OOM-killed the task");
            match self.set_label(LABEL_OOM_KILLED, "true").await {
                Ok(()) => {}
                Err(ExecError::NotFound(_)) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        // The exit code first: a task deleted without it would look like one whose process vanished.
        match self.set_label(LABEL_EXIT_CODE, &exit_code.to_string()).await {
            Ok(()) => {}
            Err(ExecError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        }
        match self.tasks().delete(req(DeleteTaskRequest { container_id: self.id().into() })).await {
            Ok(_) => Ok(()),
            Err(s) if is_not_found(&s) => Ok(()),
            Err(s) => Err(rt(s)),
        }
    }

    /// Sets one label on the container.
    async fn set_label(&self, key: &str, value: &str) -> Result<(), ExecError> {
        let labels = HashMap::from([(key.to_string(), value.to_string())]);
        let update = UpdateContainerRequest {
            container: Some(Container { id: self.id().into(), labels, ..Default::default() }),
            update_mask: Some(prost_types::FieldMask { paths: vec![format!("labels.{key}")] }),
        };
        match ContainersClient::new(self.exec.ch.clone()).update(req(update)).await {
            Ok(_) => Ok(()),
            Err(s) if is_not_found(&s) => Err(ExecError::NotFound(self.id().into())),
            Err(s) => Err(rt(s)),
        }
    }

    /// [`Self::reap`] on a task of its own, so that a caller dropping its future (the agent's select) cannot
    /// leave the task half reaped.
    async fn reap_detached(&self, exit_code: i32) {
        let me = self.clone();
        let r = tokio::spawn(async move { me.reap(exit_code).await }).await;
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(task.id = %self.id(), error = %e, "deleting the exited task"),
            Err(e) => tracing::warn!(task.id = %self.id(), error = %e, "deleting the exited task"),
        }
    }

    async fn kill(&self, signal: u32, all: bool) -> Result<(), ExecError> {
        match self
            .tasks()
            .kill(req(KillRequest { container_id: self.id().into(), exec_id: String::new(), signal, all }))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if is_not_found(&s) => Ok(()),
            // The process already exited.
            Err(s) if s.message().contains("not found") || s.message().contains("finished") => Ok(()),
            Err(s) => Err(rt(s)),
        }
    }

    fn labels(&self) -> HashMap<String, String> {
        let t = &self.task;
        let mut l: HashMap<String, String> = t.spec.container.labels.clone().into_iter().collect();
        l.insert(LABEL_TASK_ID.into(), t.id.clone());
        l.insert("com.docker.swarm.task.name".into(), t.container_name());
        l.insert("com.docker.swarm.service.id".into(), t.service_id.clone());
        l.insert("com.docker.swarm.service.name".into(), t.service_annotations.name.clone());
        l.insert("com.docker.swarm.node.id".into(), t.node_id.clone());
        l
    }

    /// Prepares the container's snapshot and creates the container, holding `lease`.
    async fn create(
        &self,
        image: &ResolvedImage,
        lease: &str,
        wiring: Option<&crate::network::TaskWiring>,
    ) -> Result<(), ExecError> {
        // Decided now and kept on the container: a bad test rejects the task before anything is made.
        let check =
            health::effective(self.task.spec.container.healthcheck.as_ref(), image.config.healthcheck.as_ref())?;
        let mut containers = ContainersClient::new(self.exec.ch.clone());
        let mut snaps = SnapshotsClient::new(self.exec.ch.clone());
        let mounts = match snaps
            .prepare(req_leased(
                PrepareSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: self.id().into(),
                    parent: image.chain_id.clone(),
                    labels: HashMap::new(),
                },
                lease,
            ))
            .await
        {
            Ok(r) => r.into_inner().mounts,
            Err(s) if s.code() == tonic::Code::AlreadyExists => {
                snaps
                    .mounts(req(MountsRequest { snapshotter: SNAPSHOTTER.into(), key: self.id().into() }))
                    .await
                    .map_err(rt)?
                    .into_inner()
                    .mounts
            }
            Err(s) => return Err(rt(s)),
        };
        let volumes = self.exec.cfg.data_root.join("volumes");
        let root = ImageRoot::from_mounts(&mounts);
        let (task, config, vols) = (self.task.clone(), image.config.clone(), volumes.clone());
        // The image is untrusted and its files are read from the host: never on an async worker (a FIFO or a
        // slow disk would stall it).
        let files = tokio::task::spawn_blocking(move || prepare_image_files(&root, &task, &config, &vols))
            .await
            .map_err(|e| ExecError::Runtime(e.to_string()))
            .and_then(|r| r);
        let built = files.and_then(|users| {
            let paths = SpecPaths {
                volumes: &volumes,
                users: &users,
                netns: wiring.map(|w| w.netns.as_path()),
                init_binary: Path::new(spec::DEFAULT_INIT_BINARY),
                swap_limit: spec::swap_limit_supported(),
            };
            let mut s = spec::build(&self.task, &image.config, &paths)?;
            if let Some(w) = wiring {
                crate::network::add_files(&mut s, &w.files)?;
            }
            Ok(s)
        });
        // Secrets and configs last: a task whose spec is refused mounts no tmpfs.
        let built = match built {
            Ok(mut oci) => {
                let (root, task) = (self.exec.cfg.data_root.clone(), self.task.clone());
                let files = self.exec.files.read().unwrap_or_else(|e| e.into_inner()).clone();
                // What templated secrets and configs see of the node, as `describe` reports it.
                let node =
                    NodeDescription { hostname: hostname(), platform: Platform::current(), ..Default::default() };
                tokio::task::spawn_blocking(move || crate::taskfiles::materialize(&root, &task, &files, &node))
                    .await
                    .map_err(|e| ExecError::Runtime(e.to_string()))
                    .and_then(|r| r)
                    .map(|extra| {
                        let mut mounts = oci.mounts().clone().unwrap_or_default();
                        mounts.extend(extra);
                        oci.set_mounts(Some(mounts));
                        oci
                    })
            }
            Err(e) => Err(e),
        };
        let oci = match built {
            Ok(s) => s,
            Err(e) => {
                let _ = snaps
                    .remove(req(RemoveSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key: self.id().into() }))
                    .await;
                return Err(e);
            }
        };
        let value = serde_json::to_vec(&oci).map_err(|e| ExecError::InvalidSpec(e.to_string()))?;
        let mut labels = self.labels();
        if !image.config.stop_signal.is_empty() {
            labels.insert(LABEL_STOP_SIGNAL.into(), image.config.stop_signal.clone());
        }
        if let Some(check) = &check {
            labels.insert(health::LABEL_HEALTHCHECK.into(), check.to_label());
        }
        let container = Container {
            id: self.id().into(),
            labels,
            image: self.task.spec.container.image.clone(),
            runtime: Some(Runtime { name: RUNTIME.into(), options: None }),
            spec: Some(prost_types::Any { type_url: SPEC_TYPE_URL.into(), value }),
            snapshotter: SNAPSHOTTER.into(),
            snapshot_key: self.id().into(),
            ..Default::default()
        };
        match containers.create(req_leased(CreateContainerRequest { container: Some(container) }, lease)).await {
            Ok(_) => {
                let mut fresh = self.fresh.lock().unwrap_or_else(|e| e.into_inner());
                fresh.mounts = Some(mounts);
                fresh.healthcheck = Some(check.is_some());
                Ok(())
            }
            Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(()),
            Err(s) => Err(rt(s)),
        }
    }

    /// Creates the task (stdio to the logger) if there is none, and starts it.
    async fn start_task(&self) -> Result<u32, ExecError> {
        let _permit = self.exec.starts.acquire().await.map_err(|e| ExecError::Runtime(e.to_string()))?;
        // Created by this controller a moment ago: no process, no labels yet, and the mounts are known.
        let fresh = self.fresh.lock().unwrap_or_else(|e| e.into_inner()).mounts.take();
        if let Some(mounts) = fresh {
            return self.create_and_start(mounts).await;
        }
        if let Some(p) = self.process().await? {
            if p.status == ProcStatus::Created as i32 {
                let r = self
                    .tasks()
                    .start(req(StartRequest { container_id: self.id().into(), exec_id: String::new() }))
                    .await
                    .map_err(rt)?;
                return Ok(r.into_inner().pid);
            }
            // Running, or already exited (wait reports how).
            return Ok(p.pid);
        }
        let labels = self.container().await?.ok_or_else(|| ExecError::NotFound(self.id().into()))?.labels;
        if labels.contains_key(LABEL_EXIT_CODE) {
            // It ran and exited; tasks are replaced, never restarted in place. `wait` reports how it ended.
            return Ok(0);
        }
        if labels.contains_key(LABEL_STARTED) {
            // Started once, and now neither a process nor an exit code: the host restarted under it.
            return Err(ExecError::Runtime(PROCESS_GONE.into()));
        }
        let mounts = SnapshotsClient::new(self.exec.ch.clone())
            .mounts(req(MountsRequest { snapshotter: SNAPSHOTTER.into(), key: self.id().into() }))
            .await
            .map_err(|s| if is_not_found(&s) { ExecError::NotFound(self.id().into()) } else { rt(s) })?
            .into_inner()
            .mounts;
        self.create_and_start(mounts).await
    }

    /// Creates the process of a container that never had one (stdio to the logger) and starts it.
    async fn create_and_start(&self, mounts: Vec<Mount>) -> Result<u32, ExecError> {
        let log = self.exec.cfg.log_path(self.id());
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir).map_err(|e| ExecError::Runtime(format!("creating {}: {e}", dir.display())))?;
        }
        let uri = logger_uri(&self.exec.cfg.logger_binary, &log, &task_rotation(&self.task)?);
        // Marked before the process exists, so that a container found later with neither a process nor an exit
        // code is known to have lost its process rather than never having had one.
        self.set_label(LABEL_STARTED, "true").await?;
        self.tasks()
            .create(req(CreateTaskRequest {
                container_id: self.id().into(),
                rootfs: mounts,
                stdout: uri.clone(),
                stderr: uri,
                ..Default::default()
            }))
            .await
            .map_err(rt)?;
        let r = self
            .tasks()
            .start(req(StartRequest { container_id: self.id().into(), exec_id: String::new() }))
            .await
            .map_err(rt)?;
        Ok(r.into_inner().pid)
    }
}

impl Controller for ContainerdController {
    #[tracing::instrument(level = "debug", skip_all, fields(task.id = %self.task.id))]
    async fn prepare(&self) -> Result<(), ExecError> {
        let mut containers = ContainersClient::new(self.exec.ch.clone());
        if containers.get(req(GetContainerRequest { id: self.id().into() })).await.is_ok() {
            return Ok(());
        }
        task_rotation(&self.task)?;
        let image = self.exec.task_images.resolve(&self.task).await?;
        let wiring = match &self.exec.net {
            Some(net) => {
                let dir = crate::logs::task_dir(&self.exec.cfg.data_root, self.id());
                net.prepare_task(&self.task, dir).await?
            }
            None => None,
        };
        // Until the container references it, a fresh snapshot is garbage to containerd's GC (which runs e.g.
        // right after an image import drops its lease): hold a lease from prepare to container create.
        let lease = self.exec.prepare_lease.acquire(&self.exec.ch).await.map_err(rt)?;
        let r = self.create(&image, &lease, wiring.as_ref()).await;
        self.exec.prepare_lease.release(&self.exec.ch, &lease).await;
        r
    }

    #[tracing::instrument(level = "debug", skip_all, fields(task.id = %self.task.id))]
    async fn start(&self) -> Result<u32, ExecError> {
        self.start_task().await
    }

    async fn wait(&self) -> Result<ExitStatus, ExecError> {
        // Registered before the first look at the task, so an exit after that look is never missed. A containerd
        // restart (the supervisor's, or an upgrade) breaks the event stream but not the task: the waiter is told
        // to look again once the stream is back, instead of the task being reported failed.
        let mut waiter = self.exec.exits.waiter(self.id());
        let mut backoff = Duration::from_millis(100);
        let mut unreachable_since: Option<tokio::time::Instant> = None;
        loop {
            match self.tasks().get(req(GetRequest { container_id: self.id().into(), exec_id: String::new() })).await {
                Ok(r) => {
                    unreachable_since = None;
                    match r.into_inner().process {
                        Some(p) if p.status == ProcStatus::Stopped as i32 => return self.exit(p.exit_status).await,
                        Some(_) => match waiter.next().await {
                            Woken::Exited(code) => return self.exit(code).await,
                            Woken::Recheck => {}
                        },
                        None => return self.reaped_exit().await,
                    }
                }
                Err(s) if is_not_found(&s) => return self.reaped_exit().await,
                Err(s) if is_unavailable(&s) => {
                    let since = *unreachable_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() > WAIT_RECONNECT_LIMIT {
                        return Err(ExecError::Runtime(format!(
                            "containerd unreachable for {}s while waiting for the task: {}",
                            WAIT_RECONNECT_LIMIT.as_secs(),
                            s.message()
                        )));
                    }
                    tracing::debug!(task.id = %self.id(), error = %s.message(), "wait interrupted; looking again");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(s) => return Err(rt(s)),
            }
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(task.id = %self.task.id))]
    async fn shutdown(&self) -> Result<(), ExecError> {
        match self.process().await? {
            None => return Ok(()),
            Some(p) if p.status == ProcStatus::Stopped as i32 => {
                self.reap_detached(p.exit_status as i32).await;
                return Ok(());
            }
            // Created but never started: nothing to stop gracefully.
            Some(p) if p.status == ProcStatus::Created as i32 => return self.kill(libc::SIGKILL as u32, true).await,
            // Running, paused, pausing, or a status the shim could not tell (UNKNOWN when it is slow to answer):
            // stopped all the same, as a task is never left running once it was asked to stop.
            Some(_) => {}
        }
        let c = &self.task.spec.container;
        let mut stop_signal = c.stop_signal.clone();
        if stop_signal.is_empty() {
            // The image's StopSignal, recorded on the container when it was created.
            if let Ok(r) =
                ContainersClient::new(self.exec.ch.clone()).get(req(GetContainerRequest { id: self.id().into() })).await
            {
                if let Some(s) = r.into_inner().container.and_then(|c| c.labels.get(LABEL_STOP_SIGNAL).cloned()) {
                    stop_signal = s;
                }
            }
        }
        let signal = parse_signal(&stop_signal).unwrap_or(libc::SIGTERM as u32);
        self.kill(signal, false).await?;
        match tokio::time::timeout(c.stop_grace_period, self.wait()).await {
            Ok(Ok(_)) | Ok(Err(ExecError::NotFound(_))) => {}
            // Still running after the grace period (busybox sleep/httpd as PID 1 ignore SIGTERM), or we could not
            // tell: SIGKILL cannot be ignored.
            Err(_) | Ok(Err(_)) => {
                tracing::info!(task.id = %self.id(), grace = ?c.stop_grace_period, "stop signal ignored; killing");
                self.kill(libc::SIGKILL as u32, true).await?;
                let _ = tokio::time::timeout(Duration::from_secs(10), self.wait()).await;
            }
        }
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(task.id = %self.task.id))]
    async fn terminate(&self) -> Result<(), ExecError> {
        self.kill(libc::SIGKILL as u32, true).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(task.id = %self.task.id))]
    async fn remove(&self) -> Result<(), ExecError> {
        self.exec.delete_all(self.id()).await?;
        if let Some(net) = &self.exec.net {
            net.remove_task(self.id()).await?;
        }
        Ok(())
    }

    async fn inspect(&self) -> Result<Option<ContainerState>, ExecError> {
        let Some(container) = self.container().await? else { return Ok(None) };
        Ok(Some(match self.process().await? {
            // No process: reaped after it exited, never started, or lost with the host (no exit code then).
            None => match container.labels.get(LABEL_EXIT_CODE).and_then(|v| v.parse().ok()) {
                Some(exit_code) => ContainerState::Exited { exit_code },
                None => ContainerState::Created,
            },
            Some(p) if p.status == ProcStatus::Stopped as i32 => {
                // Exited while nobody waited (shoald was down): reap it now.
                self.reap_detached(p.exit_status as i32).await;
                ContainerState::Exited { exit_code: p.exit_status as i32 }
            }
            Some(p) if p.status == ProcStatus::Created as i32 => ContainerState::Created,
            Some(p) => ContainerState::Running { pid: p.pid },
        }))
    }

    async fn health(&self) -> Result<Option<tokio::sync::watch::Receiver<HealthStatus>>, ExecError> {
        if self.fresh.lock().unwrap_or_else(|e| e.into_inner()).healthcheck == Some(false) {
            return Ok(None);
        }
        let container = self.container().await?.ok_or_else(|| ExecError::NotFound(self.id().into()))?;
        let dir = crate::logs::task_dir(&self.exec.cfg.data_root, self.id());
        health::start_checks(self.exec.ch.clone(), &container, dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An executor over `data_root` whose containerd is never reached (logs read files only).
    fn offline_executor(data_root: &Path) -> ContainerdExecutor {
        let ch = tonic::transport::Endpoint::from_static("http://[::1]:1").connect_lazy();
        let cfg = ExecutorConfig {
            data_root: data_root.into(),
            logger_binary: PathBuf::new(),
            engine_labels: BTreeMap::new(),
            generic_resources: BTreeMap::new(),
        };
        ContainerdExecutor::new(ch.clone(), ImageService::new(ch, data_root.join("tmp")), cfg)
    }

    #[tokio::test]
    async fn logs_of_several_tasks_come_merged_by_time_with_their_task_and_stream() {
        use swarm::api::logs::{LogStream, LogsOptions};
        let dir = tempfile::tempdir().unwrap();
        let exec = offline_executor(dir.path());
        let rec = |t: u32, stream: &str, line: &str| {
            serde_json::json!({"log": format!("{line}\n"), "stream": stream,
                "time": format!("2026-01-01T00:00:0{t}.000000000Z")})
            .to_string()
                + "\n"
        };
        for (id, text) in
            [("taska", rec(1, "stdout", "a1") + &rec(3, "stderr", "a3")), ("taskb", rec(2, "stdout", "b2"))]
        {
            let p = exec.config().log_path(id);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        let ids = vec!["taska".to_string(), "taskb".to_string()];
        let mut rx = exec.logs(&ids, &LogsOptions::default()).await.unwrap();
        let mut got = Vec::new();
        while let Some(l) = rx.recv().await {
            got.push((l.task_id, l.stream, l.line));
        }
        assert_eq!(
            got,
            vec![
                ("taska".into(), LogStream::Stdout, "a1".into()),
                ("taskb".into(), LogStream::Stdout, "b2".into()),
                ("taska".into(), LogStream::Stderr, "a3".into())
            ]
        );
        let opts = LogsOptions { tail: Some(1), since: Some("2026-01-01T00:00:02Z".into()), follow: false };
        let mut rx = exec.logs(&ids, &opts).await.unwrap();
        let mut got = Vec::new();
        while let Some(l) = rx.recv().await {
            got.push(l.line);
        }
        assert_eq!(got, vec!["b2", "a3"]);
        let e = exec.logs(&["../x".to_string()], &LogsOptions::default()).await.unwrap_err();
        assert_eq!(e, ExecError::InvalidSpec("invalid task id \"../x\"".into()));
    }

    #[test]
    fn signals_parse_like_docker() {
        assert_eq!(parse_signal(""), Some(15));
        assert_eq!(parse_signal("SIGTERM"), Some(15));
        assert_eq!(parse_signal("term"), Some(15));
        assert_eq!(parse_signal("9"), Some(9));
        assert_eq!(parse_signal("SIGUSR1"), Some(libc::SIGUSR1 as u32));
        assert_eq!(parse_signal("BOGUS"), None);
        assert_eq!(parse_signal("99"), None);
    }

    #[test]
    fn logger_uri_escapes_the_query_and_carries_the_rotation() {
        let r = Rotation::default();
        assert_eq!(
            logger_uri(Path::new("/usr/bin/shoal-logger"), Path::new("/var/lib/shoal/containers/abc/task.log"), &r),
            "binary:///usr/bin/shoal-logger?file=/var/lib/shoal/containers/abc/task.log&max-size=10000000&max-file=5"
        );
        let r = Rotation { max_size: None, max_file: 2 };
        assert_eq!(
            logger_uri(Path::new("/a b/l"), Path::new("/x&y=z/t.log"), &r),
            "binary:///a%20b/l?file=/x%26y%3Dz/t.log&max-size=-1&max-file=2"
        );
    }

    #[test]
    fn a_tasks_log_options_are_checked() {
        let mut t = swarm::testing::task("t1", "s1", 1);
        assert_eq!(task_rotation(&t).unwrap(), Rotation::default());
        t.spec_mut().log_driver = Some(swarm::api::LogDriver {
            name: "json-file".into(),
            options: [("max-size".to_string(), "1k".to_string())].into(),
        });
        assert_eq!(task_rotation(&t).unwrap(), Rotation { max_size: Some(1000), max_file: 5 });
        t.spec_mut().log_driver.as_mut().unwrap().options.insert("max-file".into(), "zero".into());
        assert_eq!(
            task_rotation(&t).unwrap_err().to_string(),
            "invalid task spec: invalid max-file 'zero': expected a number of files of at least 1"
        );
    }

    #[test]
    fn anonymous_volumes_are_found_by_task_id() {
        let dir = tempfile::tempdir().unwrap();
        for d in ["t1-0", "t1-12", "t1-image-3", "t1-image-", "t1-x", "t10-0", "named", "t1"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        let mut found: Vec<String> = anonymous_volumes(dir.path(), "t1")
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        found.sort();
        assert_eq!(found, vec!["t1-0", "t1-12", "t1-image-3"]);
    }
}
