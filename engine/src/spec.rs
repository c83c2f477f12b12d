//! The OCI runtime spec of a task's container, built from its `ContainerSpec` and its image's config.
//!
//! Docker's semantics: `command` replaces the image's entrypoint, `args` replace its cmd; the image's env comes
//! first and the task's env overrides it; the hostname defaults to the first 12 characters of the task id.
//! Security defaults are Docker's: its default capability set (adjusted by `--cap-add/--cap-drop`), its seccomp
//! profile (`crate::seccomp`), its masked and read-only /proc and /sys paths.

use oci_spec::runtime::{
    Capabilities, LinuxBuilder, LinuxCpuBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxPidsBuilder, LinuxResourcesBuilder, Mount as OciMount, MountBuilder, PosixRlimit, PosixRlimitBuilder,
    PosixRlimitType, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};
use std::path::{Path, PathBuf};
use swarm::agent::exec::ExecError;
use swarm::api::{MountType, Seccomp, Task, Ulimit, ALL_CAPABILITIES};

/// What the executor needs of an image's config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    /// The signal that stops a container (`StopSignal`; empty: SIGTERM), used when the service sets none.
    pub stop_signal: String,
    /// Paths the image declares as volumes (`Volumes`): each gets an anonymous volume per task.
    pub volumes: Vec<String>,
    /// The image's HEALTHCHECK (Docker's `config.Healthcheck`), which the service's `--health-*` override.
    pub healthcheck: Option<swarm::api::HealthConfig>,
}

/// The image's /etc/passwd and /etc/group, read safely from its layers (see `imagefs`), when a user name must be
/// resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserFiles {
    pub passwd: Option<String>,
    pub group: Option<String>,
}

/// Where a task's files live on the host.
pub struct SpecPaths<'a> {
    /// `<data root>/volumes` (named volumes: `<name>/_data`; anonymous: `<task id>-<n>/_data`).
    pub volumes: &'a Path,
    /// The image's /etc/passwd and /etc/group (absent: names can't be resolved).
    pub users: &'a UserFiles,
    /// A network namespace to join (None: a new one with loopback only).
    pub netns: Option<&'a Path>,
    /// The static init binary bind-mounted for `--init` (Debian's tini package: `/usr/bin/tini-static`).
    pub init_binary: &'a Path,
    /// Whether the kernel limits swap per cgroup ([`swap_limit_supported`]): Docker then lets a container with a
    /// memory limit swap as much again, and no more.
    pub swap_limit: bool,
}

/// Whether cgroups can limit swap here (swap accounting on): cgroup v1 has `memory.memsw.*`, cgroup v2 has
/// `memory.swap.max` in its non-root cgroups (looked for in shoald's own, else in any child of the root). When in
/// doubt, no: runc refuses a swap limit it cannot write. Checked once.
pub fn swap_limit_supported() -> bool {
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        let root = Path::new(crate::oom::CGROUP_ROOT);
        if !root.join("cgroup.controllers").exists() {
            return root.join("memory/memory.memsw.limit_in_bytes").exists();
        }
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .ok()
            .and_then(|c| c.lines().find_map(|l| l.strip_prefix("0::").map(|p| p.trim_start_matches('/').to_string())))
            .filter(|p| !p.is_empty());
        match own {
            Some(p) => root.join(p).join("memory.swap.max").exists(),
            None => std::fs::read_dir(root)
                .map(|d| d.filter_map(|e| e.ok()).any(|e| e.path().join("memory.swap.max").exists()))
                .unwrap_or(false),
        }
    })
}

/// Where Debian's tini package puts its static binary, which needs nothing from the container's filesystem.
pub const DEFAULT_INIT_BINARY: &str = "/usr/bin/tini-static";
/// Where the init binary appears inside the container (Docker's path).
const INIT_PATH: &str = "/sbin/docker-init";

/// Docker's default capability set.
const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Docker's masked paths: hidden from the container (an empty file or directory is mounted over them).
const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Docker's read-only paths: kernel knobs a container may read but not change.
const READONLY_PATHS: &[&str] = &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// The container's capabilities: Docker's defaults with `drop` removed and `add` added (`ALL` in `add` means
/// every capability but the dropped ones, `ALL` in `drop` only the added ones); an add wins over a drop of the
/// same name, as in Docker.
/// Names are canonical (`CAP_NAME`), as the control API stores them.
pub fn capabilities(add: &[String], drop: &[String]) -> Vec<String> {
    let all = |l: &[String]| l.iter().any(|c| c == "ALL");
    let base: Vec<&str> = if all(add) {
        ALL_CAPABILITIES.to_vec()
    } else if all(drop) {
        vec![]
    } else {
        DEFAULT_CAPS.to_vec()
    };
    let mut caps: Vec<String> = base.into_iter().filter(|c| !drop.iter().any(|d| d == c)).map(String::from).collect();
    for c in add {
        if c != "ALL" && !caps.contains(c) {
            caps.push(c.clone());
        }
    }
    caps
}

/// OCI rlimits from Docker's ulimits; -1 is RLIM_INFINITY.
fn rlimits(ulimits: &[Ulimit]) -> Result<Vec<PosixRlimit>, ExecError> {
    let value = |v: i64| if v < 0 { u64::MAX } else { v as u64 };
    ulimits
        .iter()
        .map(|u| {
            let typ: PosixRlimitType = format!("RLIMIT_{}", u.name.to_ascii_uppercase())
                .parse()
                .map_err(|_| invalid(format!("invalid ulimit type: {:?}", u.name)))?;
            PosixRlimitBuilder::default().typ(typ).soft(value(u.soft)).hard(value(u.hard)).build().map_err(invalid)
        })
        .collect()
}

fn invalid(e: impl std::fmt::Display) -> ExecError {
    ExecError::InvalidSpec(e.to_string())
}

/// The process arguments (pure).
pub fn args(task: &Task, image: &ImageConfig) -> Result<Vec<String>, ExecError> {
    let c = &task.spec.container;
    let entry = if c.command.is_empty() { image.entrypoint.clone() } else { c.command.clone() };
    // A new entrypoint drops the image's cmd, as Docker does.
    let cmd = if !c.args.is_empty() {
        c.args.clone()
    } else if c.command.is_empty() {
        image.cmd.clone()
    } else {
        vec![]
    };
    let all: Vec<String> = entry.into_iter().chain(cmd).collect();
    if all.is_empty() {
        return Err(ExecError::InvalidSpec(
            "no command specified: the image has no entrypoint or cmd and the service gives none".into(),
        ));
    }
    Ok(all)
}

/// The process environment: a default PATH, the image's env, then the task's (later keys win).
pub fn env(task: &Task, image: &ImageConfig, hostname: &str) -> Vec<String> {
    let mut out: Vec<String> = vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()];
    let mut set = |kv: &str| {
        let key = kv.split('=').next().unwrap_or(kv);
        out.retain(|e| e.split('=').next() != Some(key));
        out.push(kv.to_string());
    };
    for e in &image.env {
        set(e);
    }
    set(&format!("HOSTNAME={hostname}"));
    for e in &task.spec.container.env {
        set(e);
    }
    out
}

/// Whether running as `user` needs the image's /etc/passwd or /etc/group.
pub fn needs_user_files(user: &str) -> bool {
    !(user.is_empty() || user == "root")
}

/// The user a task runs as: the service's, else the image's.
pub fn user_text<'a>(task: &'a Task, image: &'a ImageConfig) -> &'a str {
    let c = &task.spec.container;
    if c.user.is_empty() {
        image.user.as_str()
    } else {
        c.user.as_str()
    }
}

/// Where the anonymous volume for the image's `n`th declared volume lives (`<task id>-image-<n>/_data`).
pub fn image_volume_dir(volumes: &Path, task_id: &str, n: usize) -> PathBuf {
    volumes.join(format!("{task_id}-image-{n}")).join("_data")
}

/// The image's declared volumes that the task does not mount something else over, with their index.
pub fn image_volumes<'a>(task: &'a Task, image: &'a ImageConfig) -> impl Iterator<Item = (usize, &'a str)> + 'a {
    let clean = |p: &str| p.trim_end_matches('/').to_string();
    image.volumes.iter().enumerate().filter_map(move |(n, v)| {
        let shadowed = task.spec.container.mounts.iter().any(|m| clean(&m.target) == clean(v));
        (!shadowed && v.starts_with('/')).then_some((n, v.as_str()))
    })
}

/// Resolves `user` (`uid[:gid]`, `name[:group]`) to ids, reading names from the image's /etc/passwd and /etc/group.
pub fn user(user: &str, files: &UserFiles) -> Result<(u32, u32), ExecError> {
    if !needs_user_files(user) {
        return Ok((0, 0));
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let lookup = |file: &str, name: &str| -> Option<(u32, u32)> {
        let text = if file == "etc/passwd" { files.passwd.as_deref()? } else { files.group.as_deref()? };
        text.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 3 && f[0] == name)
                .then(|| (f[2].parse().ok(), f.get(3).and_then(|x| x.parse().ok())))
                .and_then(|(a, b): (Option<u32>, Option<u32>)| Some((a?, b.unwrap_or(0))))
        })
    };
    let (uid, default_gid) = match u.parse::<u32>() {
        Ok(uid) => (uid, lookup("etc/passwd", u).map(|p| p.1).unwrap_or(0)),
        Err(_) => lookup("etc/passwd", u)
            .ok_or_else(|| invalid(format!("unable to find user {u}: no matching entries in passwd file")))?,
    };
    let gid = match g {
        None => default_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => lookup("etc/group", g)
                .map(|p| p.0)
                .ok_or_else(|| invalid(format!("unable to find group {g}: no matching entries in group file")))?,
        },
    };
    Ok((uid, gid))
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Result<OciMount, ExecError> {
    MountBuilder::default()
        .destination(PathBuf::from(dest))
        .typ(typ)
        .source(PathBuf::from(source))
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(invalid)
}

/// The mounts of the task's spec, creating volume directories as needed.
pub fn task_mounts(task: &Task, volumes: &Path) -> Result<Vec<OciMount>, ExecError> {
    let mut out = Vec::new();
    for (i, m) in task.spec.container.mounts.iter().enumerate() {
        let ro = if m.readonly { "ro" } else { "rw" };
        let kind = m.kind.to_string();
        let bad = |why: String| ExecError::InvalidSpec(format!("invalid mount config for type {kind:?}: {why}"));
        match m.kind {
            MountType::Bind => {
                if !Path::new(&m.source).exists() {
                    return Err(bad(format!("bind source path does not exist: {}", m.source)));
                }
                out.push(mount(&m.target, "bind", &m.source, &["rbind", ro])?);
            }
            MountType::Volume => {
                let name = if m.source.is_empty() { format!("{}-{i}", task.id) } else { m.source.clone() };
                let dir = volumes.join(&name).join("_data");
                std::fs::create_dir_all(&dir).map_err(|e| bad(format!("creating volume {name}: {e}")))?;
                out.push(mount(&m.target, "bind", &dir.to_string_lossy(), &["rbind", ro])?);
            }
            MountType::Tmpfs => {
                let size = if m.tmpfs_size > 0 { format!("size={}", m.tmpfs_size) } else { String::new() };
                let mut opts = vec!["nosuid", "nodev", ro];
                if !size.is_empty() {
                    opts.push(&size);
                }
                out.push(mount(&m.target, "tmpfs", "tmpfs", &opts)?);
            }
        }
    }
    Ok(out)
}

/// Builds the runtime spec for `task`.
/// The task's cgroup (`cgroupsPath`), under every controller's hierarchy.
pub fn cgroup_path(task_id: &str) -> PathBuf {
    PathBuf::from(format!("/shoal/{task_id}"))
}

pub fn build(task: &Task, image: &ImageConfig, paths: &SpecPaths) -> Result<Spec, ExecError> {
    let c = &task.spec.container;
    let hostname = if c.hostname.is_empty() { task.id.chars().take(12).collect() } else { c.hostname.clone() };
    let (uid, gid) = user(user_text(task, image), paths.users)?;
    let cwd = if !c.dir.is_empty() {
        c.dir.clone()
    } else if !image.working_dir.is_empty() {
        image.working_dir.clone()
    } else {
        "/".into()
    };
    let cap_names = capabilities(&c.capability_add, &c.capability_drop);
    let caps: Capabilities = serde_json::from_value(serde_json::json!(cap_names))
        .map_err(|e| invalid(format!("capabilities {cap_names:?}: {e}")))?;
    // Inheritable and ambient are set (empty) on purpose: oci-spec's defaults put three capabilities there,
    // which would give them to non-root users and make any smaller set unappliable. Docker leaves both empty.
    let capabilities = oci_spec::runtime::LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .inheritable(Capabilities::new())
        .ambient(Capabilities::new())
        .build()
        .map_err(invalid)?;
    let mut process_args = args(task, image)?;
    if c.init {
        // tini as PID 1 forwards signals to the command and reaps orphaned zombies; `--` ends tini's own flags.
        process_args.splice(0..0, [INIT_PATH.to_string(), "--".to_string()]);
    }
    let process = ProcessBuilder::default()
        .args(process_args)
        .env(env(task, image, &hostname))
        .cwd(PathBuf::from(cwd))
        .user(UserBuilder::default().uid(uid).gid(gid).build().map_err(invalid)?)
        .capabilities(capabilities)
        // Docker's default (oci-spec's is true): setuid binaries in the image keep working.
        .no_new_privileges(false)
        .rlimits(rlimits(&c.ulimits)?)
        .build()
        .map_err(invalid)?;

    let mut mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount("/dev", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"])?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        )?,
        mount("/dev/shm", "tmpfs", "shm", &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"])?,
        mount("/dev/mqueue", "mqueue", "mqueue", &["nosuid", "noexec", "nodev"])?,
        mount("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", "ro"])?,
    ];
    if c.init {
        if !paths.init_binary.is_file() {
            return Err(ExecError::Runtime(format!(
                "--init needs {} on this node, which is missing: install the tini package (apt-get install tini)",
                paths.init_binary.display()
            )));
        }
        mounts.push(mount(INIT_PATH, "bind", &paths.init_binary.to_string_lossy(), &["bind", "ro"])?);
    }
    mounts.extend(task_mounts(task, paths.volumes)?);
    // Docker gives each volume the image declares an anonymous volume unless the service mounts something there.
    for (n, path) in image_volumes(task, image) {
        let dir = image_volume_dir(paths.volumes, &task.id, n);
        std::fs::create_dir_all(&dir).map_err(|e| invalid(format!("creating the volume for {path}: {e}")))?;
        mounts.push(mount(path, "bind", &dir.to_string_lossy(), &["rbind", "rw"])?);
    }

    let mut namespaces = Vec::new();
    for typ in [LinuxNamespaceType::Pid, LinuxNamespaceType::Ipc, LinuxNamespaceType::Uts, LinuxNamespaceType::Mount] {
        namespaces.push(LinuxNamespaceBuilder::default().typ(typ).build().map_err(invalid)?);
    }
    let mut net = LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Network);
    if let Some(p) = paths.netns {
        net = net.path(p.to_path_buf());
    }
    namespaces.push(net.build().map_err(invalid)?);

    let limits = task.spec.resources.limits;
    let mut resources = LinuxResourcesBuilder::default();
    if limits.memory_bytes > 0 {
        let mut memory = LinuxMemoryBuilder::default().limit(limits.memory_bytes);
        if paths.swap_limit {
            // Docker's default for a memory limit without --memory-swap: memory plus as much swap (the OCI
            // `swap` is the total), so a hog is OOM-killed rather than swapping the host's swap away.
            memory = memory.swap(limits.memory_bytes.saturating_mul(2));
        }
        resources = resources.memory(memory.build().map_err(invalid)?);
    }
    if limits.nano_cpus > 0 {
        const PERIOD: u64 = 100_000;
        let quota = (limits.nano_cpus as i128 * PERIOD as i128 / 1_000_000_000) as i64;
        resources =
            resources.cpu(LinuxCpuBuilder::default().period(PERIOD).quota(quota.max(1000)).build().map_err(invalid)?);
    }
    if limits.pids > 0 {
        resources = resources.pids(LinuxPidsBuilder::default().limit(limits.pids).build().map_err(invalid)?);
    }
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources.build().map_err(invalid)?)
        .cgroups_path(cgroup_path(&task.id))
        .masked_paths(MASKED_PATHS.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .readonly_paths(READONLY_PATHS.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    match &c.seccomp {
        Seccomp::Default => linux = linux.seccomp(crate::seccomp::default_profile(&cap_names).map_err(invalid)?),
        Seccomp::Unconfined => {}
        Seccomp::Custom(json) => {
            linux = linux.seccomp(crate::seccomp::custom_profile(json, &cap_names).map_err(invalid)?)
        }
    }
    let linux = linux.build().map_err(invalid)?;

    SpecBuilder::default()
        .version("1.0.2")
        .process(process)
        .root(RootBuilder::default().path("rootfs").readonly(c.read_only).build().map_err(invalid)?)
        .hostname(hostname)
        .mounts(mounts)
        .linux(linux)
        .build()
        .map_err(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use swarm::testing::task;

    fn paths() -> SpecPaths<'static> {
        static NO_USERS: std::sync::OnceLock<UserFiles> = std::sync::OnceLock::new();
        let users = NO_USERS.get_or_init(UserFiles::default);
        SpecPaths {
            volumes: Path::new("/tmp"),
            users,
            netns: None,
            init_binary: Path::new("/bin/sh"),
            swap_limit: false,
        }
    }

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: vec![],
            cmd: vec!["sh".into()],
            env: vec!["A=image".into(), "B=image".into()],
            ..Default::default()
        }
    }

    #[test]
    fn docker_argument_semantics() {
        let mut t = task("abcdefghijklmnop", "s", 1);
        assert_eq!(args(&t, &image()).unwrap(), vec!["sh"]);
        t.spec_mut().container.args = vec!["sleep".into(), "5".into()];
        assert_eq!(args(&t, &image()).unwrap(), vec!["sleep", "5"]);
        let mut img = image();
        img.entrypoint = vec!["/entry".into()];
        t.spec_mut().container.args.clear();
        assert_eq!(args(&t, &img).unwrap(), vec!["/entry", "sh"]);
        t.spec_mut().container.command = vec!["/other".into()];
        assert_eq!(args(&t, &img).unwrap(), vec!["/other"], "a new entrypoint drops the image cmd");
        let empty = ImageConfig::default();
        t.spec_mut().container.command.clear();
        assert!(args(&t, &empty).is_err());
    }

    #[test]
    fn env_overrides_and_hostname() {
        let mut t = task("abcdefghijklmnop", "s", 1);
        t.spec_mut().container.env = vec!["B=task".into(), "C=task".into()];
        let e = env(&t, &image(), "abcdefghijkl");
        assert!(
            e.contains(&"A=image".to_string())
                && e.contains(&"B=task".to_string())
                && e.contains(&"C=task".to_string())
        );
        assert!(!e.contains(&"B=image".to_string()));
        let spec = build(&t, &image(), &paths()).unwrap();
        assert_eq!(spec.hostname().as_deref(), Some("abcdefghijkl"));
    }

    #[test]
    fn limits_land_in_the_spec() {
        let mut t = task("abcdefghijklmnop", "s", 1);
        t.spec_mut().resources.limits.memory_bytes = 64 << 20;
        t.spec_mut().resources.limits.nano_cpus = 500_000_000;
        let spec = build(&t, &image(), &paths()).unwrap();
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(json["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(json["linux"]["cgroupsPath"], "/shoal/abcdefghijklmnop");
        assert_eq!(json["linux"]["resources"]["cpu"]["period"], 100_000);
        assert!(json["linux"]["resources"]["memory"].get("swap").is_none(), "no swap limit without swap accounting");
        let with_swap = build(&t, &image(), &SpecPaths { swap_limit: true, ..paths() }).unwrap();
        let json = serde_json::to_value(&with_swap).unwrap();
        assert_eq!(json["linux"]["resources"]["memory"]["swap"], 128 << 20, "memory + as much swap, as Docker");
        let ns: Vec<&str> =
            json["linux"]["namespaces"].as_array().unwrap().iter().map(|n| n["type"].as_str().unwrap()).collect();
        assert!(ns.contains(&"network") && ns.contains(&"mount") && ns.contains(&"pid"));
    }

    #[test]
    fn users_and_bind_sources() {
        let dir = tempfile::tempdir().unwrap();
        let files = UserFiles {
            passwd: Some("root:x:0:0::/:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n".into()),
            group: Some("root:x:0:\nnogroup:x:65534:\n".into()),
        };
        assert_eq!(user("nobody", &files).unwrap(), (65534, 65534));
        assert_eq!(user("1000:1000", &UserFiles::default()).unwrap(), (1000, 1000));
        assert_eq!(user("nobody:root", &files).unwrap(), (65534, 0));
        assert!(user("ghost", &files).unwrap_err().to_string().contains("unable to find user ghost"));

        let mut t = task("abcdefghijklmnop", "s", 1);
        t.spec_mut().container.mounts.push(swarm::api::Mount {
            kind: MountType::Bind,
            source: "/definitely/not/here".into(),
            target: "/data".into(),
            readonly: false,
            tmpfs_size: 0,
        });
        let e = task_mounts(&t, dir.path()).unwrap_err();
        assert_eq!(e.to_string(), "invalid task spec: invalid mount config for type \"bind\": bind source path does not exist: /definitely/not/here");
    }

    #[test]
    fn image_volumes_become_anonymous_volumes_unless_mounted_over() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = task("abcdefghijklmnop", "s", 1);
        let mut img = image();
        img.volumes = vec!["/data".into(), "/cache/".into(), "relative".into()];
        t.spec_mut().container.mounts.push(swarm::api::Mount {
            kind: MountType::Tmpfs,
            source: String::new(),
            target: "/cache".into(),
            readonly: false,
            tmpfs_size: 0,
        });
        let spec = build(&t, &img, &SpecPaths { volumes: dir.path(), ..paths() }).unwrap();
        let json = serde_json::to_value(&spec).unwrap();
        let data: Vec<&Value> =
            json["mounts"].as_array().unwrap().iter().filter(|m| m["destination"] == "/data").collect();
        let want = image_volume_dir(dir.path(), "abcdefghijklmnop", 0);
        assert_eq!(data.len(), 1, "{json}");
        assert_eq!(data[0]["source"], want.display().to_string());
        assert!(want.is_dir(), "the volume directory is created");
        let cache: Vec<&Value> =
            json["mounts"].as_array().unwrap().iter().filter(|m| m["destination"] == "/cache").collect();
        assert_eq!(cache.len(), 1, "only the service's tmpfs at /cache: {json}");
        assert_eq!(cache[0]["type"], "tmpfs");
        assert!(!image_volume_dir(dir.path(), "abcdefghijklmnop", 1).exists());
        assert!(!json["mounts"].as_array().unwrap().iter().any(|m| m["destination"] == "relative"));
    }

    fn caps_of(json: &serde_json::Value, set: &str) -> Vec<String> {
        json["process"]["capabilities"][set].as_array().unwrap().iter().map(|c| c.as_str().unwrap().into()).collect()
    }

    #[test]
    fn docker_security_defaults() {
        let t = task("abcdefghijklmnop", "s", 1);
        let json = serde_json::to_value(build(&t, &image(), &paths()).unwrap()).unwrap();
        let mut caps = caps_of(&json, "effective");
        caps.sort();
        let mut want: Vec<String> = DEFAULT_CAPS.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(caps, want);
        assert_eq!(caps.len(), 14);
        assert_eq!(caps_of(&json, "inheritable"), Vec::<String>::new(), "nothing inheritable, as Docker");
        assert_eq!(caps_of(&json, "ambient"), Vec::<String>::new(), "no ambient capabilities for non-root users");
        assert_eq!(json["process"]["noNewPrivileges"], false, "Docker's default");
        assert_eq!(json["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(json["linux"]["seccomp"]["defaultErrnoRet"], 1);
        let list = |k: &str| -> Vec<String> {
            json["linux"][k].as_array().unwrap().iter().map(|c| c.as_str().unwrap().into()).collect()
        };
        assert_eq!(
            list("maskedPaths"),
            [
                "/proc/asound",
                "/proc/acpi",
                "/proc/kcore",
                "/proc/keys",
                "/proc/latency_stats",
                "/proc/timer_list",
                "/proc/timer_stats",
                "/proc/sched_debug",
                "/proc/scsi",
                "/sys/firmware",
                "/sys/devices/virtual/powercap"
            ]
        );
        assert_eq!(list("readonlyPaths"), ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]);
        assert_eq!(json["root"]["readonly"], false);
        assert!(json["process"].get("rlimits").is_none() || json["process"]["rlimits"] == serde_json::json!([]));
        assert!(json["linux"]["resources"].get("pids").is_none(), "no pids limit by default (Docker: unlimited)");
    }

    #[test]
    fn capability_add_and_drop_follow_docker() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let caps = capabilities(&s(&["CAP_NET_ADMIN"]), &s(&["CAP_CHOWN", "CAP_NET_RAW"]));
        assert!(caps.contains(&"CAP_NET_ADMIN".into()) && !caps.contains(&"CAP_CHOWN".into()));
        assert_eq!(caps.len(), 13);
        assert_eq!(capabilities(&s(&["CAP_KILL"]), &s(&["ALL"])), s(&["CAP_KILL"]));
        assert_eq!(capabilities(&s(&["ALL"]), &s(&["CAP_SYS_ADMIN"])).len(), ALL_CAPABILITIES.len() - 1);
        assert_eq!(capabilities(&s(&["CAP_KILL"]), &s(&["CAP_KILL"])).len(), 14, "an add wins over a drop");

        // The seccomp profile follows the capabilities: CAP_SYS_ADMIN opens mount and unshare.
        let mut t = task("abcdefghijklmnop", "s", 1);
        t.spec_mut().container.capability_add = s(&["CAP_SYS_ADMIN"]);
        t.spec_mut().container.capability_drop = s(&["ALL"]);
        let json = serde_json::to_value(build(&t, &image(), &paths()).unwrap()).unwrap();
        assert_eq!(caps_of(&json, "bounding"), s(&["CAP_SYS_ADMIN"]));
        assert_eq!(caps_of(&json, "permitted"), s(&["CAP_SYS_ADMIN"]));
        let rules = json["linux"]["seccomp"]["syscalls"].as_array().unwrap();
        assert!(rules.iter().any(|r| r["names"].as_array().unwrap().contains(&"unshare".into())));
        t.spec_mut().container.capability_add = s(&["ALL"]);
        t.spec_mut().container.capability_drop.clear();
        let json = serde_json::to_value(build(&t, &image(), &paths()).unwrap()).unwrap();
        assert_eq!(caps_of(&json, "effective").len(), ALL_CAPABILITIES.len(), "every capability is known to runc");
        t.spec_mut().container.seccomp = Seccomp::Unconfined;
        let json = serde_json::to_value(build(&t, &image(), &paths()).unwrap()).unwrap();
        assert!(json["linux"].get("seccomp").is_none(), "unconfined: no filter");
    }

    #[test]
    fn read_only_init_ulimits_and_pids() {
        let mut t = task("abcdefghijklmnop", "s", 1);
        t.spec_mut().container.read_only = true;
        t.spec_mut().container.init = true;
        t.spec_mut().container.args = vec!["sleep".into(), "5".into()];
        t.spec_mut().container.ulimits =
            vec!["nofile=1024:2048".parse().unwrap(), "core=-1".parse().unwrap(), "nproc=64".parse().unwrap()];
        t.spec_mut().resources.limits.pids = 100;
        let json = serde_json::to_value(build(&t, &image(), &paths()).unwrap()).unwrap();
        assert_eq!(json["root"]["readonly"], true);
        assert_eq!(json["process"]["args"], serde_json::json!(["/sbin/docker-init", "--", "sleep", "5"]));
        let init = json["mounts"].as_array().unwrap().iter().find(|m| m["destination"] == "/sbin/docker-init");
        let init = init.expect("the init binary is mounted");
        assert_eq!((init["source"].as_str(), &init["options"]), (Some("/bin/sh"), &serde_json::json!(["bind", "ro"])));
        assert_eq!(
            json["process"]["rlimits"],
            serde_json::json!([
                {"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 2048},
                {"type": "RLIMIT_CORE", "soft": u64::MAX, "hard": u64::MAX},
                {"type": "RLIMIT_NPROC", "soft": 64, "hard": 64},
            ])
        );
        assert_eq!(json["linux"]["resources"]["pids"]["limit"], 100);

        let missing = SpecPaths { init_binary: Path::new("/no/tini-static"), ..paths() };
        let e = build(&t, &image(), &missing).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--init needs /no/tini-static on this node, which is missing: install the tini package (apt-get install tini)"
        );
    }
}
