//! Builders for tests and the scale simulator: objects with sensible defaults, and [`TestExecutor`], an
//! in-memory stand-in for a container runtime (named as such: the product never uses it).

use crate::agent::exec::{ContainerState, Controller, ExecError, Executor, ExitStatus, HealthStatus};
use crate::api::*;
use crate::manager::store::{MemoryStore, Proposal, Proposer, SharedView, Store, StoreError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// Reads task `id` from `store`, changes it with `f` and writes it back.
pub async fn change_task(store: &Store, id: &str, f: impl FnOnce(&mut Task)) {
    let mut t = store.view(|v| v.task(id).cloned()).expect("the task is in the store");
    f(&mut t);
    store
        .update(|tx| {
            tx.update(t);
            Ok::<_, StoreError>(())
        })
        .await
        .expect("the task is written");
}

/// Polls `check` on the store every 10 ms until it holds, failing after 10 s with what it last saw.
pub async fn until_view<T>(store: &Store, what: &str, check: impl Fn(&MemoryStore) -> Result<T, String>) -> T {
    let start = std::time::Instant::now();
    loop {
        match store.view(&check) {
            Ok(v) => return v,
            Err(e) if start.elapsed() > std::time::Duration::from_secs(10) => panic!("waiting for {what}: {e}"),
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
        }
    }
}

/// A ready, active manager node with 4 CPUs and 8 GiB.
pub fn node(id: &str, hostname: &str) -> Node {
    Node {
        id: id.into(),
        meta: Meta::default(),
        spec: NodeSpec {
            annotations: Annotations::default(),
            desired_role: NodeRole::Manager,
            availability: NodeAvailability::Active,
        },
        description: NodeDescription {
            hostname: hostname.into(),
            platform: Platform { os: "linux".into(), architecture: "amd64".into() },
            resources: Resources { nano_cpus: 4_000_000_000, memory_bytes: 8 << 30, pids: 0 },
            engine: EngineDescription::default(),
            generic_resources: Default::default(),
        },
        status: NodeStatus { state: NodeState::Ready, ..Default::default() },
        attachments: vec![],
        manager_status: None,
        role: NodeRole::Manager,
    }
}

/// A store whose writes apply at once (as [`Store::in_memory`]) except those [`FlakyWrites::fail_next`] says
/// fail, as a Raft commit that failed: for tests of what happens to a write that did not land.
pub fn flaky_store() -> (Store, Arc<FlakyWrites>) {
    let writes = Arc::new(FlakyWrites {
        shared: SharedView::new(MemoryStore::new()),
        index: AtomicU64::new(0),
        fail: AtomicUsize::new(0),
    });
    (Store::with_proposer(writes.shared.clone(), writes.clone()), writes)
}

/// The proposer of a [`flaky_store`].
pub struct FlakyWrites {
    shared: Arc<SharedView>,
    index: AtomicU64,
    fail: AtomicUsize,
}

impl FlakyWrites {
    /// Makes the next `n` writes fail.
    pub fn fail_next(&self, n: usize) {
        self.fail.store(n, Ordering::SeqCst);
    }

    /// How many writes were applied.
    pub fn applied(&self) -> u64 {
        self.index.load(Ordering::SeqCst)
    }

    /// How many of the writes told to fail have not been tried yet.
    pub fn failures_left(&self) -> usize {
        self.fail.load(Ordering::SeqCst)
    }
}

impl Proposer for FlakyWrites {
    fn propose(&self, p: Proposal) -> futures::future::BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            if self.fail.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
                return Err(StoreError::Raft("injected commit failure".into()));
            }
            let index = self.index.fetch_add(1, Ordering::SeqCst) + 1;
            self.shared.apply(index, &p).map(|_| ()).map_err(StoreError::from)
        })
    }
}

/// A replicated service running `image` with `replicas` tasks.
pub fn service(id: &str, name: &str, replicas: u64) -> Service {
    Service {
        id: id.into(),
        meta: Meta::default(),
        spec: ServiceSpec {
            annotations: Annotations { name: name.into(), labels: Default::default() },
            task_template: TaskSpec {
                container: ContainerSpec {
                    image: "docker.io/library/busybox:latest".into(),
                    stop_grace_period: std::time::Duration::from_secs(10),
                    ..Default::default()
                },
                ..Default::default()
            },
            mode: ServiceMode::Replicated { replicas },
            update_config: Default::default(),
            rollback_config: Default::default(),
            endpoint_spec: Default::default(),
        },
        previous_spec: None,
        spec_version: 1,
        update_status: None,
        endpoint: None,
    }
}

/// A PENDING task of `service_id` in `slot`, desired RUNNING.
pub fn task(id: &str, service_id: &str, slot: u64) -> Task {
    Task {
        id: id.into(),
        meta: Meta::default(),
        service_id: service_id.into(),
        service_annotations: Annotations { name: format!("svc-{service_id}"), labels: Default::default() },
        slot,
        node_id: String::new(),
        spec: Default::default(),
        spec_version: 0,
        status: TaskStatus { state: TaskState::Pending, ..Default::default() },
        desired_state: TaskState::Running,
        job_iteration: None,
        networks: vec![],
        endpoint: None,
    }
}

/// What the test executor's fake containers do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FakeState {
    Created,
    Running,
    Exited(i32),
}

/// What started fake containers of one image do ([`TestExecutor::script`]); without a script they run until told
/// to exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitScript {
    /// How long a container runs before it exits on its own.
    pub run_for: std::time::Duration,
    /// How many starts of each slot (service and slot, or service and node for a slot-0 task), on this executor,
    /// exit 1 before the next ones exit 0.
    pub failures_per_slot: u64,
}

#[derive(Default)]
struct FakeRuntime {
    containers: HashMap<String, watch::Sender<FakeState>>,
    missing_images: Vec<String>,
    scripts: HashMap<String, ExitScript>,
    /// Starts of scripted containers per slot, to pick their exit code.
    starts: HashMap<(String, String), u64>,
    /// Images whose containers exit with this code right after they start.
    crashing_images: HashMap<String, i32>,
    /// Each task's log, as fed by the test (kept when the container is removed, as nothing reads it then).
    logs: HashMap<String, Vec<logs::TaskLogLine>>,
    /// The health of each health-checked task that started.
    health: HashMap<String, watch::Sender<HealthStatus>>,
    /// The health a task of this image has as soon as it starts (else "starting" until the test says).
    image_health: HashMap<String, Health>,
    /// The network state last applied, and how many were applied.
    network_state: Option<NetworkState>,
    network_states_applied: u64,
}

/// An in-memory runtime: "containers" are entries in a map that run until told to exit. For unit tests and the
/// scale simulator only.
#[derive(Clone, Default)]
pub struct TestExecutor {
    hostname: String,
    rt: Arc<Mutex<FakeRuntime>>,
    /// Bumped whenever a log line is fed, to wake followers.
    fed: Arc<watch::Sender<u64>>,
    /// The secrets and configs the agent last handed over.
    files: Arc<Mutex<crate::api::TaskFiles>>,
    /// The registry credentials each task arrived with (task id → `registry_auth`).
    pull_auth: Arc<Mutex<HashMap<String, String>>>,
}

impl TestExecutor {
    pub fn new(hostname: &str) -> Self {
        TestExecutor { hostname: hostname.into(), ..Default::default() }
    }

    /// The registry credentials task `task_id` arrived with, as the agent handed them to the runtime.
    pub fn pull_auth(&self, task_id: &str) -> Option<String> {
        self.pull_auth.lock().unwrap().get(task_id).cloned()
    }

    /// The secrets and configs this node holds now (as the agent last handed them over).
    pub fn task_files(&self) -> crate::api::TaskFiles {
        self.files.lock().unwrap().clone()
    }

    /// Appends a line to a task's log, written now.
    pub fn feed_log(&self, task_id: &str, stream: logs::LogStream, line: &str) {
        self.feed_log_at(task_id, std::time::SystemTime::now(), stream, line);
    }

    /// Appends a line to a task's log, written at `time` (lines of one task must be fed in time order).
    pub fn feed_log_at(&self, task_id: &str, time: std::time::SystemTime, stream: logs::LogStream, line: &str) {
        let time = humantime::format_rfc3339_nanos(time).to_string();
        let l = logs::TaskLogLine { task_id: task_id.into(), time, stream, line: line.into() };
        self.rt.lock().unwrap().logs.entry(task_id.into()).or_default().push(l);
        self.fed.send_modify(|n| *n += 1);
    }

    /// The network state the agent applied last, if any.
    pub fn network_state(&self) -> Option<NetworkState> {
        self.rt.lock().unwrap().network_state.clone()
    }

    /// How many network states the agent applied.
    pub fn network_states_applied(&self) -> u64 {
        self.rt.lock().unwrap().network_states_applied
    }

    /// Makes tasks using `image` fail to prepare as if the image were absent.
    pub fn without_image(&self, image: &str) {
        self.rt.lock().unwrap().missing_images.push(image.into());
    }

    /// Makes started containers of `image` exit on their own, as `script` says.
    pub fn script(&self, image: &str, script: ExitScript) {
        self.rt.lock().unwrap().scripts.insert(image.into(), script);
    }

    /// Makes tasks using `image` (normalized reference) exit with `code` right after they start, as a process that
    /// crashes at once.
    pub fn crash_image(&self, image: &str, code: i32) {
        self.rt.lock().unwrap().crashing_images.insert(image.into(), code);
    }

    /// Ends a running fake container with `code`, as if its process died.
    pub fn exit(&self, task_id: &str, code: i32) -> bool {
        let rt = self.rt.lock().unwrap();
        match rt.containers.get(task_id) {
            Some(tx) => {
                tx.send_replace(FakeState::Exited(code));
                true
            }
            None => false,
        }
    }

    /// Sets the health of a started, health-checked task (one whose spec has a health check test other than
    /// `NONE`), as its checks would. False if it has none or has not started.
    pub fn set_health(&self, task_id: &str, health: Health) -> bool {
        let rt = self.rt.lock().unwrap();
        match rt.health.get(task_id) {
            Some(tx) => {
                tx.send_replace(fake_health(health));
                true
            }
            None => false,
        }
    }

    /// Makes health-checked tasks of `image` have `health` as soon as they start (e.g. `Healthy` for a version
    /// that passes its checks, `Unhealthy` for one that never does); otherwise they stay "starting" until
    /// [`Self::set_health`].
    pub fn image_health(&self, image: &str, health: Health) {
        self.rt.lock().unwrap().image_health.insert(image.into(), health);
    }

    /// How many fake containers exist (created, running or exited): the tasks delivered to this node.
    pub fn known(&self) -> usize {
        self.rt.lock().unwrap().containers.len()
    }

    /// Ids of fake containers that are running.
    pub fn running(&self) -> Vec<String> {
        let rt = self.rt.lock().unwrap();
        let mut v: Vec<String> =
            rt.containers.iter().filter(|(_, s)| *s.borrow() == FakeState::Running).map(|(k, _)| k.clone()).collect();
        v.sort();
        v
    }
}

pub struct TestController {
    task_id: String,
    image: String,
    /// The task's spec has a health check (a test other than `NONE`; the fake images have none).
    health_checked: bool,
    /// The task's slot (service, slot or node), for [`ExitScript::failures_per_slot`].
    slot: (String, String),
    rt: Arc<Mutex<FakeRuntime>>,
    /// Ids of the secrets and configs the task mounts, and where the node's are: as a real runtime, prepare
    /// fails when one has not arrived.
    needs: (Vec<String>, Vec<String>),
    files: Arc<Mutex<crate::api::TaskFiles>>,
}

fn fake_health(health: Health) -> HealthStatus {
    let last_output = if health == Health::Unhealthy { "exit 1: fake check failed".into() } else { String::new() };
    HealthStatus { health, failing_streak: u64::from(health == Health::Unhealthy), last_output }
}

impl Executor for TestExecutor {
    type Controller = TestController;

    async fn describe(&self) -> Result<NodeDescription, ExecError> {
        Ok(NodeDescription {
            hostname: self.hostname.clone(),
            platform: Platform::current(),
            resources: Resources { nano_cpus: 4_000_000_000, memory_bytes: 8 << 30, pids: 0 },
            engine: EngineDescription { engine_version: "test".into(), labels: Default::default() },
            generic_resources: Default::default(),
        })
    }

    async fn apply_network_state(&self, state: &NetworkState) -> Result<(), ExecError> {
        let mut rt = self.rt.lock().unwrap();
        rt.network_state = Some(state.clone());
        rt.network_states_applied += 1;
        Ok(())
    }

    async fn apply_task_files(&self, files: &crate::api::TaskFiles) -> Result<(), ExecError> {
        *self.files.lock().unwrap() = files.clone();
        Ok(())
    }

    fn controller(&self, task: &Task) -> Result<TestController, ExecError> {
        let health_checked = task
            .spec
            .container
            .healthcheck
            .as_ref()
            .is_some_and(|h| !h.test.is_empty() && h.test.first().map(String::as_str) != Some("NONE"));
        let slot = if task.slot > 0 { task.slot.to_string() } else { task.node_id.clone() };
        if let Some(p) = &task.spec.container.pull_options {
            self.pull_auth.lock().unwrap().insert(task.id.clone(), p.registry_auth.clone());
        }
        Ok(TestController {
            task_id: task.id.clone(),
            image: task.spec.container.image.clone(),
            health_checked,
            slot: (task.service_id.clone(), slot),
            rt: self.rt.clone(),
            needs: (
                task.spec.container.secrets.iter().map(|r| r.secret_id.clone()).collect(),
                task.spec.container.configs.iter().map(|r| r.config_id.clone()).collect(),
            ),
            files: self.files.clone(),
        })
    }

    async fn list_tasks(&self) -> Result<Vec<String>, ExecError> {
        Ok(self.rt.lock().unwrap().containers.keys().cloned().collect())
    }

    async fn remove_task(&self, task_id: &str) -> Result<(), ExecError> {
        let mut rt = self.rt.lock().unwrap();
        rt.containers.remove(task_id);
        rt.health.remove(task_id);
        Ok(())
    }

    async fn logs(
        &self,
        task_ids: &[String],
        opts: &logs::LogsOptions,
    ) -> Result<tokio::sync::mpsc::Receiver<logs::TaskLogLine>, ExecError> {
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let (ids, opts, rt) = (task_ids.to_vec(), opts.clone(), self.rt.clone());
        let mut fed = self.fed.subscribe();
        fed.borrow_and_update();
        let since = opts.since.clone();
        let keep = move |l: &logs::TaskLogLine| since.as_ref().is_none_or(|s| l.time >= *s);
        // How many lines of each task were read.
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut existing = Vec::new();
        {
            let rt = rt.lock().unwrap();
            for id in &ids {
                let all = rt.logs.get(id).map(Vec::as_slice).unwrap_or_default();
                seen.insert(id.clone(), all.len());
                let kept: Vec<_> = all.iter().filter(|l| keep(l)).cloned().collect();
                let from = opts.tail.map_or(0, |n| kept.len().saturating_sub(n));
                existing.extend(kept.into_iter().skip(from));
            }
        }
        existing.sort_by(|a, b| a.time.cmp(&b.time));
        tokio::spawn(async move {
            for l in existing {
                if tx.send(l).await.is_err() {
                    return;
                }
            }
            if !opts.follow {
                return;
            }
            loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    r = fed.changed() => if r.is_err() { return },
                }
                let mut new = Vec::new();
                {
                    let rt = rt.lock().unwrap();
                    for id in &ids {
                        let all = rt.logs.get(id).map(Vec::as_slice).unwrap_or_default();
                        let n = seen.entry(id.clone()).or_default();
                        new.extend(all[*n..].iter().filter(|l| keep(l)).cloned());
                        *n = all.len();
                    }
                }
                new.sort_by(|a, b| a.time.cmp(&b.time));
                for l in new {
                    if tx.send(l).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }
}

impl TestController {
    fn state(&self) -> Option<watch::Receiver<FakeState>> {
        self.rt.lock().unwrap().containers.get(&self.task_id).map(|s| s.subscribe())
    }

    /// A scripted container exits on its own after its run time, with 1 or 0 as its slot's start count says.
    fn run_script(&self) {
        let (script, code, state) = {
            let mut rt = self.rt.lock().unwrap();
            let Some(script) = rt.scripts.get(&self.image).copied() else { return };
            let starts = rt.starts.entry(self.slot.clone()).or_default();
            *starts += 1;
            let code = if *starts <= script.failures_per_slot { 1 } else { 0 };
            let Some(state) = rt.containers.get(&self.task_id).cloned() else { return };
            (script, code, state)
        };
        tokio::spawn(async move {
            tokio::time::sleep(script.run_for).await;
            state.send_if_modified(|s| {
                let running = *s == FakeState::Running;
                if running {
                    *s = FakeState::Exited(code);
                }
                running
            });
        });
    }

    fn set(&self, s: FakeState) -> Result<(), ExecError> {
        let rt = self.rt.lock().unwrap();
        let tx = rt.containers.get(&self.task_id).ok_or_else(|| ExecError::NotFound(self.task_id.clone()))?;
        tx.send_replace(s);
        Ok(())
    }
}

impl Controller for TestController {
    async fn prepare(&self) -> Result<(), ExecError> {
        {
            let files = self.files.lock().unwrap();
            if let Some(id) = self.needs.0.iter().find(|id| !files.secrets.contains_key(*id)) {
                return Err(ExecError::InvalidSpec(format!("secret {id} is not available on this node")));
            }
            if let Some(id) = self.needs.1.iter().find(|id| !files.configs.contains_key(*id)) {
                return Err(ExecError::InvalidSpec(format!("config {id} is not available on this node")));
            }
        }
        let mut rt = self.rt.lock().unwrap();
        if rt.missing_images.contains(&self.image) {
            return Err(ExecError::ImageNotFound(familiar_image_ref(&self.image)));
        }
        rt.containers.entry(self.task_id.clone()).or_insert_with(|| watch::channel(FakeState::Created).0);
        Ok(())
    }

    async fn start(&self) -> Result<u32, ExecError> {
        let cur = *self.state().ok_or_else(|| ExecError::NotFound(self.task_id.clone()))?.borrow();
        if cur == FakeState::Created {
            self.set(FakeState::Running)?;
            let crash = self.rt.lock().unwrap().crashing_images.get(&self.image).copied();
            if let Some(code) = crash {
                self.set(FakeState::Exited(code))?;
            } else {
                self.run_script();
            }
        }
        Ok(1)
    }

    async fn wait(&self) -> Result<ExitStatus, ExecError> {
        let mut rx = self.state().ok_or_else(|| ExecError::NotFound(self.task_id.clone()))?;
        loop {
            if let FakeState::Exited(code) = *rx.borrow_and_update() {
                return Ok(ExitStatus { exit_code: code });
            }
            if rx.changed().await.is_err() {
                return Err(ExecError::NotFound(self.task_id.clone()));
            }
        }
    }

    async fn shutdown(&self) -> Result<(), ExecError> {
        if let Some(rx) = self.state() {
            if *rx.borrow() != FakeState::Created && !matches!(*rx.borrow(), FakeState::Exited(_)) {
                self.set(FakeState::Exited(143))?;
            }
        }
        Ok(())
    }

    async fn terminate(&self) -> Result<(), ExecError> {
        if self.state().is_some() {
            self.set(FakeState::Exited(137))?;
        }
        Ok(())
    }

    async fn remove(&self) -> Result<(), ExecError> {
        let mut rt = self.rt.lock().unwrap();
        rt.containers.remove(&self.task_id);
        rt.health.remove(&self.task_id);
        Ok(())
    }

    async fn inspect(&self) -> Result<Option<ContainerState>, ExecError> {
        Ok(self.state().map(|rx| match *rx.borrow() {
            FakeState::Created => ContainerState::Created,
            FakeState::Running => ContainerState::Running { pid: 1 },
            FakeState::Exited(code) => ContainerState::Exited { exit_code: code },
        }))
    }

    async fn health(&self) -> Result<Option<watch::Receiver<HealthStatus>>, ExecError> {
        if !self.health_checked {
            return Ok(None);
        }
        let mut rt = self.rt.lock().unwrap();
        let first = rt.image_health.get(&self.image).copied().map_or_else(HealthStatus::starting, fake_health);
        Ok(Some(rt.health.entry(self.task_id.clone()).or_insert_with(|| watch::channel(first).0).subscribe()))
    }
}

impl TestExecutor {
    /// The node description this executor reports (for tests that open sessions by hand).
    pub async fn describe_for_tests(&self) -> NodeDescription {
        self.describe().await.expect("test executor always describes")
    }
}

/// Storage for a redb file that can show, at any moment, what a power cut would leave of it: the bytes as of the
/// last sync ([`CrashableStorage::after_power_cut`]). Lets tests prove that what must be durable was synced.
/// A test double only.
#[derive(Debug, Clone, Default)]
pub struct CrashableStorage {
    disk: Arc<Mutex<CrashableDisk>>,
}

#[derive(Debug, Default)]
struct CrashableDisk {
    /// What readers see: everything written.
    written: Vec<u8>,
    /// What survives a crash: the bytes as of the last sync.
    synced: Vec<u8>,
    syncs: u64,
}

impl CrashableStorage {
    pub fn new() -> Self {
        Self::default()
    }

    /// What the storage holds after a power cut now: a new storage with only the bytes synced so far. The
    /// database still open on `self` goes on writing to `self` (its clean close would sync everything, which a
    /// power cut does not allow), so open the copy with a new database.
    pub fn after_power_cut(&self) -> CrashableStorage {
        let synced = self.disk().synced.clone();
        let disk = CrashableDisk { written: synced.clone(), synced, syncs: 0 };
        CrashableStorage { disk: Arc::new(Mutex::new(disk)) }
    }

    /// How many times the storage was synced.
    pub fn syncs(&self) -> u64 {
        self.disk.lock().unwrap_or_else(|e| e.into_inner()).syncs
    }

    fn disk(&self) -> std::sync::MutexGuard<'_, CrashableDisk> {
        self.disk.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl redb::StorageBackend for CrashableStorage {
    fn len(&self) -> Result<u64, std::io::Error> {
        Ok(self.disk().written.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        let d = self.disk();
        let start = offset as usize;
        let src = d.written.get(start..start + out.len()).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "read past the end of the storage")
        })?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.disk().written.resize(len as usize, 0);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        let mut d = self.disk();
        d.synced = d.written.clone();
        d.syncs += 1;
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        let mut d = self.disk();
        let end = offset as usize + data.len();
        if d.written.len() < end {
            d.written.resize(end, 0);
        }
        d.written[offset as usize..end].copy_from_slice(data);
        Ok(())
    }
}
