//! Named network namespaces for multi-node tests: create and delete them (`ip netns`), run commands and
//! threads inside them, and sweep away what dead test processes left behind.
//!
//! Every name the harness creates starts with `shoal-t<pid>c<seq>`, the creating test process's id and a
//! sequence number within it, so parallel tests never collide and [`sweep_dead`] can tell leftovers (their
//! process is gone) from namespaces in use.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// What can go wrong setting up or entering a network namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// A command (`ip`, `nft`, …) could not be started at all.
    #[error("cannot run {cmd}: {source}")]
    Spawn { cmd: String, source: std::io::Error },
    /// A command ran and failed; `stderr` is what it said.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Failed { cmd: String, status: std::process::ExitStatus, stderr: String },
    /// The namespace's `/run/netns` file could not be opened or entered.
    #[error("cannot enter network namespace {name}: {source}")]
    Enter { name: String, source: std::io::Error },
}

/// Where `ip netns` keeps its bind-mounted namespace files.
const NETNS_DIR: &str = "/run/netns";

/// Moves the calling thread (or, before exec, the child process) into the network namespace `ns`.
pub fn enter(ns: &File) -> std::io::Result<()> {
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
}

/// Runs `cmd` to completion; its stdout, or an error carrying its stderr.
pub fn run(cmd: &mut Command) -> Result<String, NetnsError> {
    let shown = format!("{cmd:?}").replace('"', "");
    let o = cmd.stdin(Stdio::null()).output().map_err(|source| NetnsError::Spawn { cmd: shown.clone(), source })?;
    if !o.status.success() {
        return Err(NetnsError::Failed {
            cmd: shown,
            status: o.status,
            stderr: String::from_utf8_lossy(&o.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// A named network namespace (`ip netns add`); dropping it kills every process still in it and deletes it.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates namespace `name` with its loopback up.
    pub fn create(name: &str) -> Result<NetNs, NetnsError> {
        run(Command::new("ip").args(["netns", "add", name]))?;
        let ns = NetNs { name: name.to_string() };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Its name, as `ip netns list` shows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its namespace file, for `setns(2)`.
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// Runs `ip -n <ns> args…`.
    pub fn ip(&self, args: &[&str]) -> Result<String, NetnsError> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A command that runs `program` inside the namespace (setns before exec; the mount namespace, and so
    /// every path, stays the test's).
    pub fn command(&self, program: &str) -> Result<Command, NetnsError> {
        let ns = self.open()?;
        let mut cmd = Command::new(program);
        // SAFETY: between fork and exec only setns(2), a single system call, runs.
        unsafe {
            cmd.pre_exec(move || enter(&ns));
        }
        Ok(cmd)
    }

    /// Runs `f` on a thread inside the namespace and returns its result. Sockets `f` creates belong to the
    /// namespace for their whole life, so a listener made here can be returned and used from anywhere.
    pub fn within<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        let ns = self.open()?;
        std::thread::scope(|s| {
            s.spawn(|| {
                // setns(2) moves only this thread, which ends with the scope.
                enter(&ns).map_err(|source| NetnsError::Enter { name: self.name.clone(), source })?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    fn open(&self) -> Result<File, NetnsError> {
        File::open(self.path()).map_err(|source| NetnsError::Enter { name: self.name.clone(), source })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        remove(&self.name);
    }
}

/// Processes whose network namespace is `name` (`ip netns pids`).
pub fn pids_in(name: &str) -> Vec<i32> {
    run(Command::new("ip").args(["netns", "pids", name]))
        .map(|out| out.split_whitespace().filter_map(|p| p.parse().ok()).collect())
        .unwrap_or_default()
}

/// The direct children of `parents`, from every process's `/proc/<pid>/stat`.
fn children_of(parents: &[i32]) -> Vec<i32> {
    let ppid = |pid: &str| -> Option<i32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // After the parenthesized command name: state, then the parent's pid.
        stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
    };
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let pid = name.parse().ok()?;
            ppid(&name).is_some_and(|p| parents.contains(&p)).then_some(pid)
        })
        .collect()
}

/// SIGKILLs every process in namespace `name` and their children, then deletes it. The children matter:
/// containers run in network namespaces of their own, as children of containerd's shims (which are in the
/// node's), and killing a container's first process ends its whole pid namespace. Best effort: for cleanup
/// paths, which must not panic (they run while a failed test unwinds).
pub fn remove(name: &str) {
    let inside = pids_in(name);
    // Collected before any kill: once a shim dies its containers are re-parented and cannot be told apart.
    let children = children_of(&inside);
    for pid in inside.into_iter().chain(children) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
    if let Err(e) = run(Command::new("ip").args(["netns", "del", name])) {
        eprintln!("cleanup: {e}");
    }
}

/// The test process that created a harness name (`shoal-t<pid>c<seq>…`), or None for any other name.
pub fn owner_pid(name: &str) -> Option<i32> {
    let rest = name.strip_prefix("shoal-t")?;
    let (pid, rest) = rest.split_once('c')?;
    let seq_len = rest.bytes().take_while(u8::is_ascii_digit).count();
    let well_formed = !pid.is_empty()
        && pid.bytes().all(|b| b.is_ascii_digit())
        && seq_len > 0
        && (rest.len() == seq_len || rest[seq_len..].starts_with('-'));
    well_formed.then(|| pid.parse().ok()).flatten()
}

/// Removes what test processes that are no longer alive left behind (they panicked past their cleanup, were
/// SIGKILLed, or `cluster up` was interrupted): their namespaces with every process in them and those
/// processes' children (containers), then their temp dirs in /tmp (after unmounting what is mounted under them). Namespaces of live processes are left alone.
pub fn sweep_dead() {
    let dead = |name: &str| owner_pid(name).is_some_and(|pid| !crate::pid_alive(pid));
    for entry in std::fs::read_dir(NETNS_DIR).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if dead(&name) {
            eprintln!("cleanup: removing network namespace {name} of a test process that is gone");
            remove(&name);
        }
    }
    for entry in std::fs::read_dir("/tmp").into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if dead(&name) && entry.file_type().is_ok_and(|t| t.is_dir()) {
            let dir = entry.path();
            unmount_under(&dir);
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                eprintln!("cleanup: cannot remove {}: {e}", dir.display());
            }
        }
    }
}

/// Lazily unmounts everything mounted under `dir`, deepest first (containers' rootfs, shm).
fn unmount_under(dir: &Path) {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let prefix = format!("{}/", dir.display());
    let mut points: Vec<&str> =
        mounts.lines().filter_map(|l| l.split(' ').nth(1)).filter(|m| m.starts_with(&prefix)).collect();
    points.sort_unstable_by(|a, b| b.cmp(a));
    for m in points {
        let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[cfg(test)]
mod tests {
    use super::owner_pid;

    #[test]
    fn owner_pid_reads_only_harness_names() {
        assert_eq!(owner_pid("shoal-t1234c0-1"), Some(1234));
        assert_eq!(owner_pid("shoal-t1234c12-sw"), Some(1234));
        assert_eq!(owner_pid("shoal-t1234c3"), Some(1234));
        assert_eq!(owner_pid("shoal-t1234c3-n2-XYZ"), Some(1234));
        assert_eq!(owner_pid("shoal-e2e-abc"), None);
        assert_eq!(owner_pid("shoal-t-c1-1"), None);
        assert_eq!(owner_pid("shoal-tabc-1"), None);
        assert_eq!(owner_pid("shoal-t12c-1"), None);
        assert_eq!(owner_pid("shoal-t12c1x"), None);
        assert_eq!(owner_pid("shoal-test"), None);
    }
}
