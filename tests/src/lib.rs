//! The end-to-end harness: real `shoald` processes (each with its own data root, exec root, socket and managed
//! containerd), driven through the real `shoal` CLI, checked against containerd itself through `ctr`.
//!
//! Tests read as stories: start a daemon, act, [`wait_for`] an observable state, assert. A wait that times
//! out says what it was waiting for and what it saw last.

pub mod cluster;
pub mod failoverbench;
pub mod netbench;
pub mod netns;
pub mod nodebench;
pub mod pullbench;
pub mod raftbench;
pub mod scale;
pub mod updatebench;

use serde_json::Value;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Prints a phase of a test story.
#[macro_export]
macro_rules! step {
    ($($t:tt)*) => { eprintln!("--- {}", format!($($t)*)) };
}

/// The directory holding the workspace's built binaries (`target/debug`), found from the test executable.
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("SHOAL_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("repo root").to_path_buf()
}

/// Builds the busybox test image and returns the tarball's path. One tarball per version of the build script and
/// of busybox is kept in the temp dir and shared by every test process, instead of one left behind by each.
pub fn test_image() -> &'static Path {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| {
        use std::hash::{Hash, Hasher};
        let script = repo_root().join("scripts/build-test-image.sh");
        let text = std::fs::read(&script).expect("read build-test-image.sh");
        let mut h = std::collections::hash_map::DefaultHasher::new();
        text.hash(&mut h);
        // The image is busybox-static's binary: a new one makes a new image.
        if let Ok(m) = std::fs::metadata("/bin/busybox") {
            (m.len(), m.modified().ok()).hash(&mut h);
        }
        let out = std::env::temp_dir().join(format!("shoal-busybox-{:016x}.tar", h.finish()));
        if out.exists() {
            return out;
        }
        // Built aside and renamed, so a process that finds the file finds it whole.
        let part = out.with_extension(format!("tar.{}", std::process::id()));
        let st = Command::new("bash").arg(&script).arg(&part).status().expect("run build-test-image.sh");
        assert!(st.success(), "{} failed", script.display());
        std::fs::rename(&part, &out).expect("rename the test image into place");
        out
    })
}

/// Waits until `f` returns Some, polling every 200 ms, or panics naming `what` and the last observation.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        let last = match f() {
            Ok(v) => return v,
            Err(seen) => seen,
        };
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One task as `service ps --no-trunc --format json` shows it (Docker's fields), with the states lower-cased
/// to the API's names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRow {
    pub id: String,
    /// `web.2`, or `everywhere.<node id>` for a global service's task.
    pub name: String,
    /// The node's hostname; empty while unassigned.
    pub node: String,
    /// `running`, `shutdown`, …
    pub desired: String,
    /// `running`, `failed`, `pending`, … (the first word of CURRENT STATE).
    pub state: String,
    /// The task's error, without Docker's quotes.
    pub error: String,
}

impl TaskRow {
    /// Parses one line; every field must be there and be a string.
    pub fn parse(line: &str) -> Result<TaskRow, String> {
        let v: Value = serde_json::from_str(line).map_err(|e| format!("{e} in {line:?}"))?;
        let current = field(&v, "CurrentState")?;
        let err = field(&v, "Error")?;
        Ok(TaskRow {
            id: field(&v, "ID")?,
            name: field(&v, "Name")?,
            node: field(&v, "Node")?,
            desired: field(&v, "DesiredState")?.to_lowercase(),
            state: current.split(' ').next().unwrap_or_default().to_lowercase(),
            error: err.strip_prefix('"').and_then(|e| e.strip_suffix('"')).unwrap_or(&err).to_string(),
        })
    }

    /// The slot of a replicated service's task (`web.2` → 2); None for a global service's task.
    pub fn slot(&self) -> Option<u64> {
        self.name.rsplit_once('.').and_then(|(_, s)| s.parse().ok())
    }
}

/// A string field of a JSON object, or an error naming it.
fn field(v: &Value, name: &str) -> Result<String, String> {
    v.get(name).and_then(Value::as_str).map(str::to_string).ok_or_else(|| format!("no string field {name:?} in {v}"))
}

fn tail(log: &Path, n: usize) -> String {
    let s = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub fn shoal_command(socket: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin_dir().join("shoal"));
    c.arg("-H").arg(format!("unix://{}", socket.display())).args(args).stdin(Stdio::null());
    c
}

fn shoal_at(socket: &Path, args: &[&str]) -> Output {
    shoal_command(socket, args).output().expect("run shoal")
}

/// Runs `cmd` and returns its output, or None if it has not exited within `timeout` (it is then killed).
/// For talking to a daemon that may not answer (SIGSTOPped, partitioned): the CLI itself would wait forever.
pub fn output_within(mut cmd: Command, timeout: Duration) -> Option<Output> {
    // Files rather than pipes: nobody reads a pipe while we poll, so a chatty child could block on a full one.
    let out = tempfile::tempfile().expect("temp file");
    let err = tempfile::tempfile().expect("temp file");
    let mut child = cmd
        .stdout(Stdio::from(out.try_clone().expect("dup")))
        .stderr(Stdio::from(err.try_clone().expect("dup")))
        .spawn()
        .expect("spawn command");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for command") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let read = |mut f: std::fs::File| {
        use std::io::{Read, Seek};
        let mut v = Vec::new();
        f.rewind().and_then(|_| f.read_to_end(&mut v)).expect("read command output");
        v
    };
    Some(Output { status, stdout: read(out), stderr: read(err) })
}

/// Whether process `pid` exists and is not a zombie (a zombie has exited; only its parent's wait is missing).
pub fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may itself contain spaces.
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}

/// A container as `ctr tasks ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtrTask {
    pub id: String,
    pub pid: u32,
    pub status: String,
}

/// One `shoald` under test.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub data_root: PathBuf,
    pub exec_root: PathBuf,
    pub socket: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    restarts: u32,
    /// The network namespace (a `/run/netns` file) the daemon runs in; None: the test's own.
    netns: Option<PathBuf>,
    /// When set, the daemon runs in a UTS namespace of its own with this hostname (a node's name in the swarm).
    hostname: Option<String>,
    /// More `shoald` flags, kept across restarts.
    extra_args: Vec<String>,
}

impl Daemon {
    /// Starts a daemon with a fresh data root and waits until its API answers.
    pub fn start() -> Daemon {
        Daemon::start_on(None, None, "shoal-e2e-")
    }

    /// Starts a daemon with a fresh data root inside network namespace `netns` (a `/run/netns` file) and a UTS
    /// namespace of its own named `hostname`, its temp dir named with `prefix`, and waits until its API
    /// answers. Its managed containerd, a child, shares both namespaces.
    pub fn start_in_netns(netns: &Path, hostname: &str, prefix: &str) -> Daemon {
        Daemon::start_on(None, Some((netns.to_path_buf(), hostname.to_string())), prefix)
    }

    /// Starts a daemon with a fresh data root and extra `shoald` flags (e.g. `--insecure-registry`).
    pub fn start_with_args(args: &[&str]) -> Daemon {
        let mut d = Daemon::new_on(None, None, "shoal-e2e-");
        d.extra_args = args.iter().map(|a| a.to_string()).collect();
        d.spawn();
        d
    }

    /// Starts a daemon on an existing data root (with its own exec root and socket), e.g. to check that a
    /// second daemon refuses a data root in use. Panics at once, with its exit status and log, if it exits.
    pub fn start_with_data_root(data_root: &Path) -> Daemon {
        Daemon::start_on(Some(data_root.to_path_buf()), None, "shoal-e2e-")
    }

    fn start_on(data_root: Option<PathBuf>, node: Option<(PathBuf, String)>, prefix: &str) -> Daemon {
        let mut d = Daemon::new_on(data_root, node, prefix);
        d.spawn();
        d
    }

    fn new_on(data_root: Option<PathBuf>, node: Option<(PathBuf, String)>, prefix: &str) -> Daemon {
        let (netns, hostname) = node.unzip();
        // Short paths: unix socket paths are limited to 108 bytes.
        let dir = tempfile::Builder::new().prefix(prefix).tempdir_in("/tmp").expect("temp dir");
        Daemon {
            data_root: data_root.unwrap_or_else(|| dir.path().join("data")),
            exec_root: dir.path().join("run"),
            socket: dir.path().join("shoal.sock"),
            log: dir.path().join("shoald.log"),
            dir,
            child: None,
            restarts: 0,
            netns,
            hostname,
            extra_args: vec![],
        }
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let mut cmd = Command::new(bin_dir().join("shoald"));
        let ns = self.netns.as_ref().map(|ns| {
            std::fs::File::open(ns).unwrap_or_else(|e| panic!("open network namespace {}: {e}", ns.display()))
        });
        let hostname = self.hostname.clone();
        // SAFETY: between fork and exec only single system calls run (sigprocmask, setns, unshare,
        // sethostname), on values prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                // A blocked mask is inherited across exec: a caller that blocks SIGTERM to handle it itself
                // (the `cluster` binary) would otherwise leave shoald deaf to it.
                nix::sys::signal::SigSet::empty().thread_set_mask()?;
                if let Some(ns) = &ns {
                    netns::enter(ns)?;
                }
                if let Some(name) = &hostname {
                    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUTS)?;
                    nix::unistd::sethostname(name)?;
                }
                Ok(())
            });
        }
        let child = cmd
            .arg("--data-root")
            .arg(&self.data_root)
            .arg("--exec-root")
            .arg(&self.exec_root)
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .arg("--log-level")
            .arg("info,swarm=debug")
            .args(&self.extra_args)
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn shoald (build it first: cargo build --workspace --bins)");
        self.child = Some(child);
        let (socket, log) = (self.socket.clone(), self.log.clone());
        let child = &mut self.child;
        wait_for("shoald to answer on its socket", Duration::from_secs(60), || {
            // A daemon that died will never answer: say so now, with why, instead of waiting out the timeout.
            if let Some(c) = child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    *child = None;
                    panic!("shoald exited while starting ({status})\n--- shoald log tail:\n{}", tail(&log, 30));
                }
            }
            let o = shoal_at(&socket, &["version"]);
            if o.status.success() {
                Ok(())
            } else {
                Err(format!("{}\n--- shoald log tail:\n{}", String::from_utf8_lossy(&o.stderr), tail(&log, 20)))
            }
        });
    }

    /// The daemon's log file (stdout and stderr).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `n` lines of the daemon's log (for failure messages).
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log, n)
    }

    /// Runs `shoal -H <socket> args…`.
    pub fn shoal(&self, args: &[&str]) -> Output {
        shoal_at(&self.socket, args)
    }

    /// Runs `shoal -H <socket> args…`, or returns None if it has not finished within `timeout`.
    pub fn shoal_within(&self, args: &[&str], timeout: Duration) -> Option<Output> {
        output_within(shoal_command(&self.socket, args), timeout)
    }

    /// The daemon's process id, while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// The process id its managed containerd recorded, if any.
    pub fn containerd_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.exec_root.join("containerd/containerd.pid")).ok()?.trim().parse().ok()
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.shoal(args);
        assert!(
            o.status.success(),
            "`shoal {}` failed: {}\n{}\n--- shoald log tail:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr),
            String::from_utf8_lossy(&o.stdout),
            self.log_tail(30)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Runs a command that must fail; returns its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let o = self.shoal(args);
        assert!(
            !o.status.success(),
            "`shoal {}` should have failed; stdout: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8_lossy(&o.stderr).into_owned()
    }

    /// Loads the busybox test image and initializes a one-node swarm on a free loopback port.
    pub fn init_swarm(&self) {
        let out = self.ok(&["image", "load", "-i", test_image().to_str().expect("utf-8 path")]);
        assert!(out.contains("busybox"), "image load printed: {out}");
        self.ok(&["swarm", "init", "--listen-addr", "127.0.0.1:0"]);
    }

    /// `service ps --no-trunc --format json` (every task, history included), parsed strictly.
    pub fn tasks(&self, service: &str) -> Vec<TaskRow> {
        let out = self.ok(&["service", "ps", service, "--no-trunc", "--format", "json"]);
        out.lines()
            .map(|l| TaskRow::parse(l).unwrap_or_else(|e| panic!("service ps --format json: {e}\n{out}")))
            .collect()
    }

    /// The services' names, from `service ls --format json`, parsed strictly.
    pub fn service_names(&self) -> Vec<String> {
        let out = self.ok(&["service", "ls", "--format", "json"]);
        out.lines()
            .map(|l| {
                let v: Value =
                    serde_json::from_str(l).unwrap_or_else(|e| panic!("service ls --format json: {e}\n{out}"));
                field(&v, "Name").unwrap_or_else(|e| panic!("service ls --format json: {e}\n{out}"))
            })
            .collect()
    }

    /// The containerd socket the daemon manages.
    pub fn containerd_socket(&self) -> PathBuf {
        self.exec_root.join("containerd/containerd.sock")
    }

    /// Containers' tasks in containerd's `shoal` namespace, as `ctr` reports them.
    pub fn ctr_tasks(&self) -> Vec<CtrTask> {
        let o = Command::new("ctr")
            .arg("-a")
            .arg(self.containerd_socket())
            .args(["-n", "shoal", "tasks", "ls"])
            .output()
            .expect("run ctr (installed with containerd)");
        assert!(o.status.success(), "ctr tasks ls: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 3).then(|| CtrTask { id: f[0].into(), pid: f[1].parse().unwrap_or(0), status: f[2].into() })
            })
            .collect()
    }

    /// Container ids in containerd's `shoal` namespace.
    pub fn ctr_containers(&self) -> Vec<String> {
        let o = Command::new("ctr")
            .arg("-a")
            .arg(self.containerd_socket())
            .args(["-n", "shoal", "containers", "ls", "-q"])
            .output()
            .expect("run ctr");
        assert!(o.status.success(), "ctr containers ls: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).lines().map(str::to_string).filter(|s| !s.is_empty()).collect()
    }

    /// Running containers.
    pub fn running(&self) -> Vec<CtrTask> {
        self.ctr_tasks().into_iter().filter(|t| t.status == "RUNNING").collect()
    }

    /// SIGKILLs the daemon (its containerd and the containers live on).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the daemon again on the same data root.
    pub fn restart(&mut self) {
        self.kill9();
        self.restarts += 1;
        self.spawn();
    }

    /// SIGTERMs the daemon and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // A failing test's daemon logs outlive its temp dir, for the post-mortem.
        if std::thread::panicking() {
            let keep = Path::new("/tmp/shoal-failed-logs");
            let name = self.dir.path().file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if std::fs::create_dir_all(keep).is_ok()
                && std::fs::copy(&self.log, keep.join(format!("{name}.log"))).is_ok()
            {
                eprintln!("kept {} as {}", self.log.display(), keep.join(format!("{name}.log")).display());
            }
        }
        if self.child.is_some() {
            // Leaving removes every task container; then the daemon stops its containerd.
            // Bounded: a test must end even if leaving hangs (that bug then shows as a test failure elsewhere).
            let _ = output_within(shoal_command(&self.socket, &["swarm", "leave", "--force"]), Duration::from_secs(60));
            self.stop();
        }
        // A containerd left behind by a SIGKILLed daemon that was never restarted.
        if let Ok(pid) = std::fs::read_to_string(self.exec_root.join("containerd/containerd.pid")) {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        // Overlay mounts of containers that were not removed would keep the temp dir busy.
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "grep -o ' {}[^ ]*' /proc/mounts | sort -r | xargs -r -n1 umount -l",
                self.dir.path().display()
            ))
            .status();
    }
}
