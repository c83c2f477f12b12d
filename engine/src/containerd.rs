//! containerd: the daemon shoald starts and supervises when none is given (as dockerd does), and the client
//! helpers every containerd call goes through (the `containerd-namespace` header, error mapping).
//!
//! ```text
//!  <data root>/containerd/config.toml   written at every start
//!  <data root>/containerd/root/         containerd's root (content, snapshots, metadata)
//!  <data root>/containerd/containerd.log
//!  <exec root>/containerd/containerd.sock, containerd.pid, state/
//! ```
//! A containerd left running by a previous shoald (killed with SIGKILL) is reused: its shims still hold the
//! containers, which the agent re-adopts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// The containerd namespace Shoal's containers and images live in.
pub const NAMESPACE: &str = "shoal";

/// Failures reaching or running containerd.
#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    /// A required binary is not installed.
    #[error("{0} is not installed or not in PATH; install it with: apt-get install containerd runc")]
    Missing(&'static str),
    /// containerd did not answer on its socket in time.
    #[error("containerd did not answer on {} within {secs}s{}", socket.display(), log.as_ref().map(|l| format!(" (see {})", l.display())).unwrap_or_default())]
    NotReady { socket: PathBuf, secs: u64, log: Option<PathBuf> },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    /// A gRPC call to containerd failed.
    #[error("containerd: {0}")]
    Rpc(String),
}

/// How many containerd calls of each request type this process made (every call goes through [`req`]); the
/// benchmark reads them to count calls per task.
static CALLS: std::sync::Mutex<BTreeMap<&'static str, u64>> = std::sync::Mutex::new(BTreeMap::new());

fn count_call<T>() {
    let name = std::any::type_name::<T>();
    let name = name.rsplit("::").next().unwrap_or(name);
    *CALLS.lock().unwrap_or_else(|e| e.into_inner()).entry(name).or_default() += 1;
}

/// The containerd calls made so far, by request type.
pub fn call_counts() -> BTreeMap<&'static str, u64> {
    CALLS.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Logs [`call_counts`] in one line (`shoald` does on SIGUSR1): `containerd calls total=N CreateTaskRequest=N …`.
pub fn log_call_counts() {
    let counts = call_counts();
    let total: u64 = counts.values().sum();
    let each: Vec<String> = counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
    tracing::info!("containerd calls total={total} {}", each.join(" "));
}

/// Wraps a request with the namespace header every containerd call needs.
pub fn req<T>(msg: T) -> tonic::Request<T> {
    count_call::<T>();
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("containerd-namespace", NAMESPACE.parse().expect("ascii"));
    r
}

/// Like [`req`], also holding a lease (so the garbage collector keeps what the request creates).
pub fn req_leased<T>(msg: T, lease: &str) -> tonic::Request<T> {
    let mut r = req(msg);
    if let Ok(v) = lease.parse() {
        r.metadata_mut().insert("containerd-lease", v);
    }
    r
}

/// Whether a containerd error means "not found".
pub fn is_not_found(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::NotFound
}

/// Whether a call failed because containerd could not be reached (restarting, socket gone), not because of
/// what was asked: worth retrying once it is back. A call in flight when containerd's connection closes ends
/// `Cancelled` on the client's side ("operation was canceled"); shoald never cancels a call it still awaits.
pub fn is_unavailable(s: &tonic::Status) -> bool {
    matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Cancelled) || s.message().contains("transport error")
}

/// Creates a lease that expires by itself after `ttl` (so a shoald killed mid-operation leaks nothing), for
/// what must survive GC until something references it.
pub async fn create_lease(ch: &Channel, prefix: &str, ttl: Duration) -> Result<String, tonic::Status> {
    use containerd_client::services::v1::{leases_client::LeasesClient, CreateRequest};
    let id = format!("{prefix}-{}", swarm::api::new_id());
    let expire = humantime::format_rfc3339(std::time::SystemTime::now() + ttl).to_string();
    let labels = [("containerd.io/gc.expire".to_string(), expire)].into();
    LeasesClient::new(ch.clone()).create(req(CreateRequest { id: id.clone(), labels })).await?;
    Ok(id)
}

/// Deletes a lease (best effort: it expires anyway).
pub async fn delete_lease(ch: &Channel, id: &str) {
    use containerd_client::services::v1::{leases_client::LeasesClient, DeleteRequest};
    if let Err(s) = LeasesClient::new(ch.clone()).delete(req(DeleteRequest { id: id.into(), sync: false })).await {
        tracing::debug!(lease = id, error = %s.message(), "deleting lease");
    }
}

/// One lease shared by the operations that overlap in time (the prepares of a burst of tasks), instead of a lease
/// created and deleted by each: the last user out deletes it. A lease older than half its TTL is not handed out
/// again (a user that never released it leaves it to expire by itself).
pub struct SharedLease {
    prefix: &'static str,
    ttl: Duration,
    current: tokio::sync::Mutex<Option<Held>>,
}

struct Held {
    id: String,
    users: usize,
    created: tokio::time::Instant,
}

impl SharedLease {
    pub fn new(prefix: &'static str, ttl: Duration) -> Self {
        SharedLease { prefix, ttl, current: tokio::sync::Mutex::new(None) }
    }

    /// The lease to hold; give it back with [`SharedLease::release`].
    pub async fn acquire(&self, ch: &Channel) -> Result<String, tonic::Status> {
        let mut cur = self.current.lock().await;
        if let Some(h) = cur.as_mut().filter(|h| h.created.elapsed() < self.ttl / 2) {
            h.users += 1;
            return Ok(h.id.clone());
        }
        let id = create_lease(ch, self.prefix, self.ttl).await?;
        *cur = Some(Held { id: id.clone(), users: 1, created: tokio::time::Instant::now() });
        Ok(id)
    }

    pub async fn release(&self, ch: &Channel, id: &str) {
        let mut cur = self.current.lock().await;
        let Some(h) = cur.as_mut().filter(|h| h.id == id) else { return };
        h.users -= 1;
        if h.users == 0 {
            *cur = None;
            delete_lease(ch, id).await;
        }
    }
}

/// Connects to a containerd socket, retrying until `timeout`.
pub async fn connect(socket: &Path, timeout: Duration) -> Result<Channel, ContainerdError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if socket.exists() {
            if let Ok(ch) = containerd_client::connect(socket).await {
                let mut v = containerd_client::services::v1::version_client::VersionClient::new(ch.clone());
                if v.version(()).await.is_ok() {
                    return Ok(ch);
                }
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err(ContainerdError::NotReady { socket: socket.into(), secs: timeout.as_secs(), log: None });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// containerd's version string.
pub async fn version(ch: &Channel) -> String {
    let mut v = containerd_client::services::v1::version_client::VersionClient::new(ch.clone());
    v.version(()).await.map(|r| r.into_inner().version).unwrap_or_default()
}

/// Checks that a binary is on PATH.
pub fn require_binary(name: &'static str) -> Result<(), ContainerdError> {
    let found =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file())).unwrap_or(false);
    if found {
        Ok(())
    } else {
        Err(ContainerdError::Missing(name))
    }
}

/// The containerd shoald runs for itself.
pub struct ManagedContainerd {
    socket: PathBuf,
    pid_file: PathBuf,
    stop: CancellationToken,
    supervisor: Option<tokio::task::JoinHandle<()>>,
}

struct Paths {
    config: PathBuf,
    root: PathBuf,
    state: PathBuf,
    socket: PathBuf,
    pid_file: PathBuf,
    log: PathBuf,
}

impl Paths {
    fn new(data_root: &Path, exec_root: &Path) -> Self {
        let d = data_root.join("containerd");
        let e = exec_root.join("containerd");
        Paths {
            config: d.join("config.toml"),
            root: d.join("root"),
            log: d.join("containerd.log"),
            state: e.join("state"),
            socket: e.join("containerd.sock"),
            pid_file: e.join("containerd.pid"),
        }
    }
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

impl ManagedContainerd {
    /// Starts containerd (or adopts the one a previous shoald left running) and supervises it.
    pub async fn start(data_root: &Path, exec_root: &Path) -> Result<ManagedContainerd, ContainerdError> {
        require_binary("containerd")?;
        require_binary("runc")?;
        let p = Paths::new(data_root, exec_root);
        let io = |what: &str| {
            let what = what.to_string();
            move |source| ContainerdError::Io { what: what.clone(), source }
        };
        for d in [&p.root, &p.state] {
            std::fs::create_dir_all(d).map_err(io(&format!("creating {}", d.display())))?;
        }
        std::fs::write(&p.config, config_toml(&p)).map_err(io(&format!("writing {}", p.config.display())))?;

        let adopted = match read_pid(&p.pid_file) {
            Some(pid) if pid_alive(pid) => connect(&p.socket, Duration::from_secs(3)).await.is_ok(),
            _ => false,
        };
        if adopted {
            tracing::info!(socket = %p.socket.display(), "reusing the containerd a previous shoald started");
        } else {
            spawn(&p).await?;
            connect(&p.socket, Duration::from_secs(30)).await.map_err(|_| ContainerdError::NotReady {
                socket: p.socket.clone(),
                secs: 30,
                log: Some(p.log.clone()),
            })?;
            tracing::info!(socket = %p.socket.display(), "containerd started");
        }
        let stop = CancellationToken::new();
        let supervisor = tokio::spawn(supervise(p.pid_file.clone(), Paths::new(data_root, exec_root), stop.clone()));
        Ok(ManagedContainerd { socket: p.socket, pid_file: p.pid_file, stop, supervisor: Some(supervisor) })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The pid of the containerd currently running for us, if any.
    pub fn pid(&self) -> Option<i32> {
        read_pid(&self.pid_file).filter(|&p| pid_alive(p))
    }

    /// Stops containerd: SIGTERM, then SIGKILL after 10 s. Containers keep running under their shims.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(s) = self.supervisor.take() {
            let _ = s.await;
        }
        if let Some(pid) = read_pid(&self.pid_file) {
            // SAFETY: plain signals to the containerd we started.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            for _ in 0..100 {
                if !pid_alive(pid) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if pid_alive(pid) {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

impl Drop for ManagedContainerd {
    /// Dropping the handle without [`ManagedContainerd::shutdown`] leaves containerd running (as a SIGKILLed
    /// shoald would) but stops supervising it, so nothing restarts it behind the next owner's back.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn spawn(p: &Paths) -> Result<(), ContainerdError> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&p.log)
        .map_err(|source| ContainerdError::Io { what: format!("opening {}", p.log.display()), source })?;
    let log2 = log.try_clone().map_err(|source| ContainerdError::Io { what: "log".into(), source })?;
    let _ = std::fs::remove_file(&p.socket);
    let mut cmd = Command::new("containerd");
    cmd.arg("--config")
        .arg(&p.config)
        .stdout(log)
        .stderr(log2)
        .stdin(std::process::Stdio::null())
        // Its own process group, so a terminal's Ctrl-C reaches shoald only; shoald stops it in order.
        .process_group(0)
        .kill_on_drop(false);
    // SAFETY: prctl is async-signal-safe and only touches the child between fork and exec. The flag shoald set
    // for itself would otherwise pass on to containerd, its shims and every container.
    unsafe {
        cmd.pre_exec(|| nix::sys::prctl::set_thp_disable(false).map_err(std::io::Error::from));
    }
    let child = cmd.spawn().map_err(|source| ContainerdError::Io { what: "starting containerd".into(), source })?;
    let pid = child.id().unwrap_or(0);
    std::fs::write(&p.pid_file, pid.to_string())
        .map_err(|source| ContainerdError::Io { what: format!("writing {}", p.pid_file.display()), source })?;
    // Reap it when it exits so it does not linger as a zombie; the supervisor notices through the pid.
    tokio::spawn(async move {
        let mut child = child;
        let _ = child.wait().await;
    });
    Ok(())
}

/// Restarts containerd if it dies while shoald runs.
async fn supervise(pid_file: PathBuf, p: Paths, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(500);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let alive = read_pid(&pid_file).map(pid_alive).unwrap_or(false);
        if alive {
            backoff = Duration::from_millis(500);
            continue;
        }
        tracing::warn!("containerd exited; restarting it");
        match spawn(&p).await {
            Ok(()) => {
                if connect(&p.socket, Duration::from_secs(30)).await.is_err() {
                    tracing::error!(log = %p.log.display(), "containerd did not come back");
                }
            }
            Err(e) => tracing::error!(error = %e, "restarting containerd"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

fn config_toml(p: &Paths) -> String {
    format!(
        r#"# Written by shoald at every start; edits are overwritten.
version = 2
root = "{root}"
state = "{state}"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""
"#,
        root = p.root.display(),
        state = p.state.display(),
        socket = p.socket.display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_says_how_to_install_it() {
        let e = require_binary("shoal-no-such-binary").unwrap_err().to_string();
        assert!(e.contains("shoal-no-such-binary") && e.contains("apt-get install containerd runc"), "{e}");
        require_binary("sh").expect("sh is on PATH");
    }

    #[test]
    fn a_call_cut_off_by_containerd_going_away_is_retried_and_a_refusal_is_not() {
        // What tonic gives a unary call whose connection closed before its answer (containerd SIGKILLed).
        assert!(is_unavailable(&tonic::Status::cancelled("operation was canceled")));
        assert!(is_unavailable(&tonic::Status::unavailable("connection refused")));
        assert!(is_unavailable(&tonic::Status::unknown("transport error")));
        assert!(!is_unavailable(&tonic::Status::failed_precondition("task must be stopped before deletion")));
        assert!(!is_unavailable(&tonic::Status::not_found("no such container")));
    }

    #[test]
    fn config_points_everything_at_our_dirs() {
        let p = Paths::new(Path::new("/d"), Path::new("/e"));
        let c = config_toml(&p);
        assert!(c.contains("root = \"/d/containerd/root\""));
        assert!(c.contains("address = \"/e/containerd/containerd.sock\""));
        assert!(c.contains("io.containerd.grpc.v1.cri"), "the CRI plugin is disabled");
    }
}
