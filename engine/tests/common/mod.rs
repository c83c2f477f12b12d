//! Helpers shared by the engine's containerd test binaries: a private `ManagedContainerd` per test (temp dirs
//! under /tmp, short enough for unix socket paths), the busybox test image built by `scripts/build-test-image.sh`,
//! tasks, and polling with deadlines.
// Each test binary uses its own subset of these helpers.
#![allow(dead_code, unused_imports)]

use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::StatSnapshotRequest;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{GetContainerRequest, ListTasksRequest};
use engine::containerd::{self, req, ManagedContainerd};
use engine::executor::{ContainerdExecutor, ExecutorConfig};
use engine::image::{ImageService, SNAPSHOTTER};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use swarm::agent::exec::{Controller, Executor};
use swarm::api::Task;
use tonic::transport::Channel;

macro_rules! step {
    ($($t:tt)*) => { eprintln!("--- {}", format!($($t)*)) };
}

pub const IMAGE: &str = "docker.io/library/busybox:latest";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// Builds the OCI busybox tarball once per test binary.
pub fn test_image() -> &'static Path {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| {
        // Built under a private name and renamed: concurrent runs never see a half-written file, and reruns
        // leave one tarball behind, not one per run.
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let out = dir.join("busybox-oci.tar");
        let tmp = dir.join(format!("busybox-oci.tar.{}", std::process::id()));
        let script = repo_root().join("scripts/build-test-image.sh");
        let st = std::process::Command::new("bash").arg(&script).arg(&tmp).status().expect("running bash");
        assert!(
            st.success(),
            "{} failed (is busybox-static installed? apt-get install busybox-static)",
            script.display()
        );
        std::fs::rename(&tmp, &out).expect("renaming the test image");
        out
    })
}

/// Fails (never skips) when the machine cannot run these tests.
pub fn require_machine() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "these tests run real containers through containerd: run them as root");
    for bin in ["containerd", "runc"] {
        if let Err(e) = containerd::require_binary(bin) {
            panic!("{e}");
        }
    }
}

/// One private containerd with the test image loaded. Dropping it removes every container it holds and stops
/// containerd, also when the test panicked.
pub struct Env {
    pub dir: Option<tempfile::TempDir>,
    pub data_root: PathBuf,
    pub exec_root: PathBuf,
    pub managed: Option<ManagedContainerd>,
    pub ch: Channel,
}

impl Env {
    pub async fn start() -> Env {
        let env = Env::start_empty().await;
        let loaded = env.images().load(test_image()).await.expect("loading the busybox image");
        assert_eq!(loaded, vec![IMAGE.to_string()]);
        env
    }

    /// A private containerd with no image loaded.
    pub async fn start_empty() -> Env {
        require_machine();
        test_image();
        // Short: the socket path is <dir>/exec/containerd/containerd.sock and must stay under 108 bytes.
        let dir = tempfile::Builder::new().prefix("shoal-ce-").tempdir_in("/tmp").expect("temp dir");
        let data_root = dir.path().join("data");
        let exec_root = dir.path().join("exec");
        step!("starting a private containerd in {}", dir.path().display());
        let t0 = Instant::now();
        let managed = ManagedContainerd::start(&data_root, &exec_root).await.unwrap_or_else(|e| panic!("{e}"));
        let ch = containerd::connect(managed.socket(), Duration::from_secs(10)).await.expect("connect to containerd");
        step!("containerd {} up in {:?}", containerd::version(&ch).await, t0.elapsed());
        Env { dir: Some(dir), data_root, exec_root, managed: Some(managed), ch }
    }

    pub fn images(&self) -> ImageService {
        ImageService::new(self.ch.clone(), self.data_root.join("tmp"))
    }

    pub fn config(&self) -> ExecutorConfig {
        ExecutorConfig {
            data_root: self.data_root.clone(),
            logger_binary: PathBuf::from(env!("CARGO_BIN_EXE_shoal-logger")),
            engine_labels: [("zone".to_string(), "test".to_string())].into(),
            generic_resources: [("gpu".to_string(), 2)].into(),
        }
    }

    /// A fresh executor, as a restarted shoald builds one.
    pub fn executor(&self) -> ContainerdExecutor {
        ContainerdExecutor::new(self.ch.clone(), self.images(), self.config())
    }

    pub fn log_path(&self, task_id: &str) -> PathBuf {
        self.config().log_path(task_id)
    }

    pub async fn container(&self, id: &str) -> Option<containerd_client::services::v1::Container> {
        match ContainersClient::new(self.ch.clone()).get(req(GetContainerRequest { id: id.into() })).await {
            Ok(r) => r.into_inner().container,
            Err(s) if s.code() == tonic::Code::NotFound => None,
            Err(s) => panic!("containers.get {id}: {s}"),
        }
    }

    pub async fn task_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = TasksClient::new(self.ch.clone())
            .list(req(ListTasksRequest { filter: String::new() }))
            .await
            .expect("tasks.list")
            .into_inner()
            .tasks
            .into_iter()
            .map(|p| p.id)
            .collect();
        ids.sort();
        ids
    }

    pub async fn snapshot_exists(&self, key: &str) -> bool {
        match SnapshotsClient::new(self.ch.clone())
            .stat(req(StatSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key: key.into() }))
            .await
        {
            Ok(_) => true,
            Err(s) if s.code() == tonic::Code::NotFound => false,
            Err(s) => panic!("snapshots.stat {key}: {s}"),
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let Some(managed) = self.managed.take() else { return };
        let socket = managed.socket().to_path_buf();
        let pid = managed.pid();
        // No more restarts from here on.
        drop(managed);
        let data_root = self.data_root.clone();
        // Our own runtime on a thread of its own: the test's runtime may be unwinding.
        let cleaned = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                let ch = containerd::connect(&socket, Duration::from_secs(3)).await.map_err(|e| e.to_string())?;
                let exec = ContainerdExecutor::new(
                    ch.clone(),
                    ImageService::new(ch, data_root.join("tmp")),
                    ExecutorConfig {
                        data_root,
                        logger_binary: "/nonexistent".into(),
                        engine_labels: Default::default(),
                        generic_resources: Default::default(),
                    },
                );
                for id in exec.list_tasks().await.map_err(|e| e.to_string())? {
                    exec.remove_task(&id).await.map_err(|e| format!("removing {id}: {e}"))?;
                }
                Ok::<(), String>(())
            })
        })
        .join();
        match cleaned {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("--- cleanup: {e}"),
            Err(_) => eprintln!("--- cleanup panicked"),
        }
        if let Some(pid) = pid {
            // SAFETY: signals to the containerd this test started.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while unsafe { libc::kill(pid, 0) } == 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        step!("containerd stopped (exec root {})", self.exec_root.display());
        drop(self.dir.take());
    }
}

pub fn task(args: &[&str]) -> Task {
    let id = swarm::api::new_id();
    let mut t = swarm::testing::task(&id, "svc0000000000000000000001", 1);
    t.node_id = "node00000000000000000001".into();
    t.spec_mut().container.image = IMAGE.into();
    t.spec_mut().container.args = args.iter().map(|s| s.to_string()).collect();
    t
}

/// Polls `f` until it returns Ok, or panics with what it was waiting for and what it saw last.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        let seen = match f().await {
            Ok(v) => return v,
            Err(seen) => seen,
        };
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}; last seen: {seen}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The json-file records of a task's log.
pub fn log_records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: bad json-file line {l:?}: {e}", path.display()))
        })
        .collect()
}

pub fn has_record(recs: &[Value], log: &str, stream: &str) -> bool {
    recs.iter().any(|r| r["log"] == log && r["stream"] == stream)
}

/// Waits until the task's log holds `line` on stdout.
pub async fn wait_for_stdout(path: &Path, line: &str, timeout: Duration) {
    wait_for(&format!("{line:?} on stdout in {}", path.display()), timeout, || async {
        let recs = log_records(path);
        if has_record(&recs, line, "stdout") {
            Ok(())
        } else {
            Err(format!("{recs:?}"))
        }
    })
    .await
}

pub async fn run(exec: &ContainerdExecutor, t: &Task) -> (engine::executor::ContainerdController, u32) {
    let c = exec.controller(t).expect("controller");
    c.prepare().await.unwrap_or_else(|e| panic!("prepare {}: {e}", t.id));
    let pid = c.start().await.unwrap_or_else(|e| panic!("start {}: {e}", t.id));
    assert!(pid > 0, "start returns the task's pid");
    (c, pid)
}
