//! Whether the kernel OOM-killed a task's processes: the `oom_kill` counter of the task's memory cgroup, read
//! once its process has exited and before its containerd task (and with it the cgroup) is deleted. cgroup v2
//! keeps it in `memory.events`, v1 in `memory.oom_control` (kernels since 4.13).

use std::path::Path;

/// Where the cgroup filesystems are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The OOM kills counted in the memory cgroup `cgroup` (the runtime spec's `cgroupsPath`, e.g. `/shoal/<id>`)
/// under the cgroup mount `root`; `None` when there is no such cgroup or it keeps no count.
pub fn oom_kills(root: &Path, cgroup: &Path) -> Option<u64> {
    let rel = cgroup.strip_prefix("/").unwrap_or(cgroup);
    let v2 = root.join(rel).join("memory.events");
    let v1 = root.join("memory").join(rel).join("memory.oom_control");
    [v2, v1].iter().find_map(|f| std::fs::read_to_string(f).ok()).and_then(|text| counter(&text, "oom_kill"))
}

/// The value of `key` in a cgroup file of `key value` lines.
fn counter(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// The error of a task whose process ended with `exit_code` after the kernel killed it for want of memory: the
/// exit as Docker reports it (`task: non-zero exit (137)`), then why, as Docker's `OOMKilled`.
pub fn oom_error(exit_code: i32, memory_limit: i64) -> String {
    let limit = if memory_limit > 0 { format!(" (memory limit {})", bytes(memory_limit)) } else { String::new() };
    format!("task: non-zero exit ({exit_code}): OOMKilled: the kernel killed the task for lack of memory{limit}")
}

/// `16MiB`, `1.5GiB`, `1000B`: a limit as a user wrote it, roughly.
fn bytes(n: i64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = "B";
    for u in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = u;
    }
    if value.fract() == 0.0 {
        format!("{value:.0}{unit}")
    } else {
        format!("{value:.1}{unit}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_counter_of_either_cgroup_version() {
        let dir = tempfile::tempdir().unwrap();
        let cg = Path::new("/shoal/t1");
        assert_eq!(oom_kills(dir.path(), cg), None, "no cgroup");
        let v1 = dir.path().join("memory/shoal/t1");
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::write(v1.join("memory.oom_control"), "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n").unwrap();
        assert_eq!(oom_kills(dir.path(), cg), Some(2));
        let v2 = dir.path().join("shoal/t1");
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::write(v2.join("memory.events"), "low 0\nhigh 0\nmax 7\noom 1\noom_kill 1\noom_group_kill 0\n")
            .unwrap();
        assert_eq!(oom_kills(dir.path(), cg), Some(1));
        assert_eq!(counter("oom_kill_disable 0\n", "oom_kill"), None, "a longer key is another key");
    }

    #[test]
    fn the_error_says_oomkilled_with_the_exit_code_and_the_limit() {
        assert_eq!(
            oom_error(137, 16 << 20),
            "task: non-zero exit (137): OOMKilled: the kernel killed the task for lack of memory (memory limit 16MiB)"
        );
        assert!(oom_error(137, 0).ends_with("for lack of memory"));
        assert_eq!(bytes(1536 << 20), "1.5GiB");
        assert_eq!(bytes(1000), "1000B");
    }
}
