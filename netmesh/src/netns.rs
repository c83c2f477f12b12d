//! Named network namespaces (`/run/netns/<name>`, the layout `ip netns` uses) and running code inside one.
//!
//! Entering a namespace is per OS thread (`setns`), so every operation here runs on a short-lived thread of its
//! own: a tokio worker or the caller's thread is never moved. Netlink work runs on such a thread with a
//! current-thread tokio runtime and a netlink socket opened after entering, so the socket belongs to that
//! namespace. Everything here blocks: call it from `spawn_blocking` or a plain thread.

use std::ffi::CString;
use std::fs::File;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Where named namespaces are bind-mounted, shared with `ip netns`.
pub const NETNS_DIR: &str = "/run/netns";
/// The process's own namespace (its main thread's), which `None` stands for below.
const PROCESS_NS: &str = "/proc/self/ns/net";

/// A failure creating, entering or removing a network namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The namespace name is empty, too long or has a `/`.
    #[error("invalid network namespace name {0:?}")]
    InvalidName(String),
    /// A system call on a namespace failed.
    #[error("network namespace {ns}: {op}: {source}")]
    Sys { ns: String, op: &'static str, source: std::io::Error },
    /// A command could not be started inside a namespace (missing binary: see scripts/install-deps.sh).
    #[error("network namespace {ns}: running {program}: {source}")]
    Command { ns: String, program: String, source: std::io::Error },
    /// A netlink request inside a namespace failed.
    #[error("network namespace {ns}: {op}: {source}")]
    Netlink { ns: String, op: String, source: rtnetlink::Error },
    /// The helper thread that entered the namespace panicked.
    #[error("network namespace {0}: helper thread panicked")]
    ThreadPanicked(String),
}

/// The bind-mount path of the named namespace `name`.
pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

fn check_name(name: &str) -> Result<(), NetnsError> {
    if name.is_empty() || name.len() > 200 || name.contains('/') || name == "." || name == ".." {
        return Err(NetnsError::InvalidName(name.to_string()));
    }
    Ok(())
}

fn sys(ns: &str, op: &'static str) -> impl FnOnce(std::io::Error) -> NetnsError {
    let ns = ns.to_string();
    move |source| NetnsError::Sys { ns, op, source }
}

/// Whether the named namespace exists.
pub fn exists(name: &str) -> bool {
    path(name).exists()
}

/// Creates the named namespace with its loopback up, unless it exists already (idempotent).
pub fn create(name: &str) -> Result<(), NetnsError> {
    check_name(name)?;
    let target = path(name);
    if is_mounted_netns(&target) {
        return Ok(());
    }
    // A plain file here is what a crash between creating the mount point and mounting leaves.
    let _ = std::fs::remove_file(&target);
    std::fs::create_dir_all(NETNS_DIR).map_err(sys(name, "create /run/netns"))?;
    let owned = name.to_string();
    let t2 = target.clone();
    std::thread::spawn(move || -> Result<(), NetnsError> {
        let name = owned.as_str();
        // SAFETY: unshare only changes this helper thread's network namespace; the thread ends right after.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(sys(name, "unshare")(std::io::Error::last_os_error()));
        }
        File::create(&t2).map_err(sys(name, "create mount point"))?;
        let src = CString::new("/proc/thread-self/ns/net").expect("no nul");
        let dst = CString::new(t2.as_os_str().as_encoded_bytes()).expect("netns names have no nul");
        // SAFETY: plain bind mount of this thread's namespace file onto the file just created.
        let rc = unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            let _ = std::fs::remove_file(&t2);
            return Err(sys(name, "bind mount")(err));
        }
        Ok(())
    })
    .join()
    .map_err(|_| NetnsError::ThreadPanicked(name.to_string()))??;
    // Sockets bound to 127.0.0.x (the DNS server) and local traffic need loopback up.
    with_netlink(Some(&target), |h| async move {
        let lo = link_index(&h, "lo").await?.unwrap_or(1);
        h.link().set(rtnetlink::LinkUnspec::new_with_index(lo).up().build()).execute().await
    })
    .and_then(|r| r.map_err(|source| NetnsError::Netlink { ns: name.to_string(), op: "set lo up".into(), source }))
}

/// Whether `p` is a namespace file (a bind mount of one), not a leftover plain file.
fn is_mounted_netns(p: &Path) -> bool {
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    let Ok(c) = CString::new(p.as_os_str().as_encoded_bytes()) else { return false };
    // SAFETY: statfs fills the zeroed struct we own; the path is a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(c.as_ptr(), &mut st) }) == 0 && st.f_type as i64 == NSFS_MAGIC
}

/// Deletes the named namespace; a missing one is not an error. Devices inside go with it once nothing else
/// holds it.
pub fn delete(name: &str) -> Result<(), NetnsError> {
    check_name(name)?;
    let target = path(name);
    if !target.exists() {
        return Ok(());
    }
    let dst = CString::new(target.as_os_str().as_encoded_bytes()).expect("netns names have no nul");
    // SAFETY: detaching a mount by path; errors are reported, not assumed.
    if unsafe { libc::umount2(dst.as_ptr(), libc::MNT_DETACH) } != 0 {
        let err = std::io::Error::last_os_error();
        // EINVAL: not a mount point (a half-created namespace); remove the file anyway.
        if err.raw_os_error() != Some(libc::EINVAL) {
            return Err(sys(name, "unmount")(err));
        }
    }
    match std::fs::remove_file(&target) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(sys(name, "remove mount point")(e)),
        _ => Ok(()),
    }
}

/// Names of the namespaces in [`NETNS_DIR`] starting with `prefix`.
pub fn list(prefix: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(NETNS_DIR) else { return Vec::new() };
    let mut names: Vec<String> =
        dir.filter_map(|e| e.ok()?.file_name().into_string().ok()).filter(|n| n.starts_with(prefix)).collect();
    names.sort();
    names
}

/// Moves the *calling* thread into the namespace at `ns`. Only for threads the caller owns and that do nothing
/// else afterwards (test listeners, socket-binding helpers); never call it on a tokio worker.
pub fn enter(ns: &Path) -> Result<(), NetnsError> {
    let label = ns.display().to_string();
    let f = File::open(ns).map_err(sys(&label, "open"))?;
    // SAFETY: setns on an fd we own; affects only the calling thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(sys(&label, "setns")(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Runs `f` on a fresh OS thread inside the namespace at `ns` (the process's own namespace for `None`) and
/// returns its result.
pub fn run_in<F, R>(ns: Option<&Path>, f: F) -> Result<R, NetnsError>
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    let label = ns.map(|p| p.display().to_string()).unwrap_or_else(|| "host".into());
    std::thread::scope(|s| {
        s.spawn(|| {
            // Always enter: a new thread inherits its creator's namespace, which need not be the process's.
            enter(ns.unwrap_or(Path::new(PROCESS_NS)))?;
            Ok(f())
        })
        .join()
        .map_err(|_| NetnsError::ThreadPanicked(label.clone()))?
    })
}

/// Runs the async netlink work `f` inside the namespace at `ns` (see [`run_in`]) with a route-netlink handle
/// whose socket lives in that namespace.
pub fn with_netlink<F, Fut, R>(ns: Option<&Path>, f: F) -> Result<R, NetnsError>
where
    F: FnOnce(rtnetlink::Handle) -> Fut + Send,
    Fut: Future<Output = R>,
    R: Send,
{
    let label = ns.map(|p| p.display().to_string()).unwrap_or_else(|| "host".into());
    run_in(ns, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(sys(&label, "start netlink runtime"))?;
        rt.block_on(async {
            let (conn, handle, _) = rtnetlink::new_connection().map_err(sys(&label, "open netlink socket"))?;
            let conn = tokio::spawn(conn);
            let out = f(handle).await;
            conn.abort();
            Ok(out)
        })
    })?
}

/// The index of the link named `name` in the handle's namespace, `None` if there is none.
pub async fn link_index(h: &rtnetlink::Handle, name: &str) -> Result<Option<u32>, rtnetlink::Error> {
    use futures::TryStreamExt;
    match h.link().get().match_name(name.to_string()).execute().try_next().await {
        Ok(m) => Ok(m.map(|m| m.header.index)),
        Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether a netlink error carries the given errno.
pub fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.code.map(|c| c.get().abs()) == Some(errno))
}

/// Runs `program args…` inside the namespace at `ns` (the process's own for `None`), feeding it `stdin`, and
/// returns its output. The child enters the namespace between fork and exec, so no thread of ours moves.
pub fn command(
    ns: Option<&Path>,
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<std::process::Output, NetnsError> {
    use std::io::Write;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let label = ns.map(|p| p.display().to_string()).unwrap_or_else(|| "host".into());
    let file = File::open(ns.unwrap_or(Path::new(PROCESS_NS))).map_err(sys(&label, "open"))?;
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let fd = file.as_raw_fd();
    // SAFETY: setns is async-signal-safe and only touches the child between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| NetnsError::Command {
        ns: label.clone(),
        program: program.to_string(),
        source,
    })?;
    let mut pipe = child.stdin.take().expect("stdin is piped");
    if let Some(input) = stdin {
        pipe.write_all(input.as_bytes()).map_err(sys(&label, "write command input"))?;
    }
    drop(pipe);
    let out = child.wait_with_output().map_err(sys(&label, "wait for command"))?;
    drop(file);
    Ok(out)
}
