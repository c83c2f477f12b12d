//! Secrets and configs in a task's container: per task a tmpfs (`<data root>/taskfiles/<task id>`, never disk)
//! holding one file per reference, owned and moded as the reference says, bind-mounted read-only at
//! `/run/secrets/<target>` (secrets; an absolute target as given) or `/<target>` (configs). The tmpfs goes
//! when the task's container is deleted. The data comes from the agent's in-memory set
//! (`Executor::apply_task_files`); templated ones are rendered for the task here (`swarm::template`).

use oci_spec::runtime::{Mount, MountBuilder};
use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use swarm::agent::exec::ExecError;
use swarm::api::{FileTarget, NodeDescription, Task, TaskFiles};

/// The largest a task's tmpfs may grow: every secret (500 KiB) and config (1000 KiB) it could mount, bounded.
const TMPFS_SIZE: &str = "size=64m";

/// Where task `id`'s tmpfs is mounted on the host.
pub fn task_dir(data_root: &Path, id: &str) -> PathBuf {
    data_root.join("taskfiles").join(id)
}

/// Where a reference's file appears in the container.
pub fn destination(target: &FileTarget, secret: bool) -> String {
    if target.name.starts_with('/') {
        target.name.clone()
    } else if secret {
        format!("/run/secrets/{}", target.name)
    } else {
        format!("/{}", target.name)
    }
}

fn runtime(what: &str, e: impl std::fmt::Display) -> ExecError {
    ExecError::Runtime(format!("{what}: {e}"))
}

/// Mounts the task's tmpfs (if it has secrets or configs), writes their files (a templated one rendered for
/// this task on `node`) and returns the container's bind mounts. A reference whose data has not reached this
/// node, or whose template fails, fails the task with its name. Blocking: call off the async threads.
pub fn materialize(
    data_root: &Path,
    task: &Task,
    files: &TaskFiles,
    node: &NodeDescription,
) -> Result<Vec<Mount>, ExecError> {
    let c = &task.spec.container;
    if c.secrets.is_empty() && c.configs.is_empty() {
        return Ok(Vec::new());
    }
    let wanted = swarm::template::task_files(task, node, files)?;
    let dir = task_dir(data_root, &task.id);
    std::fs::create_dir_all(&dir).map_err(|e| runtime("creating the secrets directory", e))?;
    if !is_mount_point(&dir) {
        mount_tmpfs(&dir)?;
    }
    let mut mounts = Vec::new();
    let (mut secrets, mut configs) = (0, 0);
    for f in wanted {
        let (kind, n) = if f.secret { ("secret", &mut secrets) } else { ("config", &mut configs) };
        let path = dir.join(format!("{kind}-{n}"));
        *n += 1;
        let target = f.target;
        std::fs::write(&path, &f.data).map_err(|e| runtime("writing a secret file", e))?;
        let (uid, gid) = (parse_id(&target.uid)?, parse_id(&target.gid)?);
        std::os::unix::fs::chown(&path, Some(uid), Some(gid)).map_err(|e| runtime("chown of a secret file", e))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(target.mode))
            .map_err(|e| runtime("chmod of a secret file", e))?;
        let m = MountBuilder::default()
            .destination(PathBuf::from(destination(target, f.secret)))
            .typ("bind")
            .source(path)
            .options(vec!["rbind".to_string(), "ro".to_string()])
            .build()
            .map_err(|e| ExecError::InvalidSpec(e.to_string()))?;
        mounts.push(m);
    }
    Ok(mounts)
}

fn parse_id(s: &str) -> Result<u32, ExecError> {
    s.parse().map_err(|_| ExecError::InvalidSpec(format!("invalid uid/gid {s:?} for a secret or config file")))
}

fn mount_tmpfs(dir: &Path) -> Result<(), ExecError> {
    let target = CString::new(dir.as_os_str().as_encoded_bytes()).map_err(|e| runtime("tmpfs path", e))?;
    let opts = CString::new(format!("mode=0755,{TMPFS_SIZE}")).expect("no NUL");
    let fstype = CString::new("tmpfs").expect("no NUL");
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            opts.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(runtime("mounting the secrets tmpfs", std::io::Error::last_os_error()));
    }
    Ok(())
}

fn is_mount_point(dir: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    let want = dir.to_string_lossy();
    mounts.lines().any(|l| l.split(' ').nth(4) == Some(want.as_ref()))
}

/// Unmounts and removes task `id`'s tmpfs (nothing if it has none). Blocking.
pub fn release(data_root: &Path, id: &str) -> Result<(), ExecError> {
    let dir = task_dir(data_root, id);
    if !dir.exists() {
        return Ok(());
    }
    if is_mount_point(&dir) {
        let target = CString::new(dir.as_os_str().as_encoded_bytes()).map_err(|e| runtime("tmpfs path", e))?;
        // SAFETY: a valid NUL-terminated path. Detached: a container still holding a bind of it keeps its view.
        if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
            return Err(runtime("unmounting the secrets tmpfs", std::io::Error::last_os_error()));
        }
    }
    std::fs::remove_dir_all(&dir).map_err(|e| runtime("removing the secrets directory", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_land_under_run_secrets_or_the_root() {
        let t = |n: &str| FileTarget { name: n.into(), uid: "0".into(), gid: "0".into(), mode: 0o444 };
        assert_eq!(destination(&t("pw"), true), "/run/secrets/pw");
        assert_eq!(destination(&t("/etc/pw"), true), "/etc/pw");
        assert_eq!(destination(&t("app.conf"), false), "/app.conf");
    }
}
