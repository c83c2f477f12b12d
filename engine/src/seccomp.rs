//! Docker's default seccomp profile, as data: every syscall is refused with EPERM unless a rule allows it; some
//! rules hold only for certain argument values, and some only when the container has (or lacks) a capability.
//!
//! The rules follow moby's `profiles/seccomp/default.json` in meaning (written out here, not copied): the same
//! allowlist, the same capability-gated groups, the same argument conditions (`personality`, `clone`, `socket`).
//! A custom profile in Docker's JSON format (`--security-opt seccomp=PATH`) is read by `custom_profile`.

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompFilterFlag, LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};
use serde::Deserialize;

/// EPERM: what a refused syscall returns, as in Docker.
const EPERM: u32 = 1;
/// ENOSYS: `clone3` without CAP_SYS_ADMIN says "not implemented" so that libc falls back to `clone`, whose flags
/// the filter can inspect (clone3 passes them in memory, out of seccomp's reach).
const ENOSYS: u32 = 38;

/// The namespace flags of clone(2): CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;
/// AF_VSOCK: sockets to the hypervisor are refused.
const AF_VSOCK: u64 = 40;

/// Syscalls every container may make.
const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
    // Docker gates these on kernel >= 4.8 (where ptrace can no longer bypass seccomp); every kernel runc
    // supports today is newer.
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
];

/// The personality(2) values allowed: PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32, and 0xffffffff
/// (a query of the current value).
const PERSONALITIES: &[u64] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// Syscalls allowed only with a capability, as Docker groups them.
const BY_CAPABILITY: &[(&str, &[&str])] = &[
    ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
    (
        "CAP_SYS_ADMIN",
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    ("CAP_SYS_MODULE", &["delete_module", "init_module", "finit_module"]),
    ("CAP_SYS_PACCT", &["acct"]),
    ("CAP_SYS_PTRACE", &["kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev", "ptrace"]),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    ("CAP_SYS_TIME", &["settimeofday", "stime", "clock_settime", "clock_settime64"]),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    ("CAP_SYS_NICE", &["get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"]),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_BPF", &["bpf"]),
    ("CAP_PERFMON", &["perf_event_open"]),
];

/// The filter architectures for this host (a 64-bit kernel also runs its 32-bit ABIs).
fn architectures() -> Vec<Arch> {
    match std::env::consts::ARCH {
        "x86_64" => vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32],
        "aarch64" => vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm],
        "x86" => vec![Arch::ScmpArchX86],
        "arm" => vec![Arch::ScmpArchArm],
        _ => vec![Arch::ScmpArchNative],
    }
}

/// Syscalls only some architectures have, which Docker allows there.
fn arch_specific() -> &'static [&'static str] {
    match std::env::consts::ARCH {
        "x86_64" | "x86" => &["arch_prctl", "modify_ldt"],
        "aarch64" | "arm" => {
            &["arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint", "cacheflush", "set_tls"]
        }
        _ => &[],
    }
}

fn rule(names: &[&str], action: LinuxSeccompAction, args: Vec<LinuxSeccompArg>) -> Result<LinuxSyscall, String> {
    let mut b = LinuxSyscallBuilder::default().names(names.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    b = b.action(action);
    if !args.is_empty() {
        b = b.args(args);
    }
    b.build().map_err(|e| e.to_string())
}

fn arg(index: usize, value: u64, value_two: Option<u64>, op: LinuxSeccompOperator) -> Result<LinuxSeccompArg, String> {
    let mut b = LinuxSeccompArgBuilder::default().index(index).value(value).op(op);
    if let Some(v) = value_two {
        b = b.value_two(v);
    }
    b.build().map_err(|e| e.to_string())
}

/// Docker's default profile for a container holding the capabilities `caps` (`CAP_NAME`s).
pub fn default_profile(caps: &[String]) -> Result<LinuxSeccomp, String> {
    use LinuxSeccompAction::{ScmpActAllow as Allow, ScmpActErrno as Errno};
    let has = |c: &str| caps.iter().any(|x| x == c);
    let mut syscalls = vec![rule(ALLOWED, Allow, vec![])?];
    // Each value is its own rule: seccomp ORs rules but ANDs the conditions within one.
    for &p in PERSONALITIES {
        syscalls.push(rule(&["personality"], Allow, vec![arg(0, p, None, LinuxSeccompOperator::ScmpCmpEq)?])?);
    }
    syscalls.push(rule(&["socket"], Allow, vec![arg(0, AF_VSOCK, None, LinuxSeccompOperator::ScmpCmpNe)?])?);
    let arch_only = arch_specific();
    if !arch_only.is_empty() {
        syscalls.push(rule(arch_only, Allow, vec![])?);
    }
    for (cap, names) in BY_CAPABILITY {
        if has(cap) {
            syscalls.push(rule(names, Allow, vec![])?);
        }
    }
    if !has("CAP_SYS_ADMIN") {
        // clone without any namespace flag: threads and forks, not new namespaces. s390 swaps clone's first two
        // arguments; elsewhere the flags are argument 0.
        let index = if std::env::consts::ARCH == "s390x" { 1 } else { 0 };
        syscalls.push(rule(
            &["clone"],
            Allow,
            vec![arg(index, CLONE_NAMESPACE_FLAGS, Some(0), LinuxSeccompOperator::ScmpCmpMaskedEq)?],
        )?);
        let mut clone3 = rule(&["clone3"], Errno, vec![])?;
        clone3.set_errno_ret(Some(ENOSYS));
        syscalls.push(clone3);
    }
    LinuxSeccompBuilder::default()
        .default_action(Errno)
        .default_errno_ret(EPERM)
        .architectures(architectures())
        .syscalls(syscalls)
        .build()
        .map_err(|e| e.to_string())
}

/// Docker's profile format: OCI's fields plus per-architecture sets and rules conditioned on capabilities and
/// architectures.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DockerProfile {
    default_action: LinuxSeccompAction,
    default_errno_ret: Option<u32>,
    #[serde(default)]
    architectures: Vec<Arch>,
    #[serde(default)]
    arch_map: Vec<ArchMap>,
    #[serde(default)]
    flags: Vec<LinuxSeccompFilterFlag>,
    #[serde(default)]
    syscalls: Vec<DockerSyscall>,
    // Known to Docker's format but without meaning here: accepted, unused.
    #[serde(default)]
    #[allow(dead_code)]
    listener_path: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    listener_metadata: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArchMap {
    architecture: Arch,
    #[serde(default)]
    sub_architectures: Vec<Arch>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DockerSyscall {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    names: Vec<String>,
    action: LinuxSeccompAction,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Vec<LinuxSeccompArg>,
    #[serde(default)]
    includes: Condition,
    #[serde(default)]
    excludes: Condition,
    #[serde(default)]
    #[allow(dead_code)]
    comment: Option<String>,
}

/// `includes`/`excludes` of a rule: capabilities and (Go-named) architectures.
#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Condition {
    #[serde(default)]
    caps: Vec<String>,
    #[serde(default)]
    arches: Vec<String>,
    /// Every kernel runc supports today is newer than the ones Docker's profiles name here.
    #[serde(default)]
    #[allow(dead_code)]
    min_kernel: Option<String>,
}

/// This host's architecture as Go names it (Docker's profiles use Go's names in `arches`).
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        other => other,
    }
}

/// A profile in Docker's JSON format, with its rules resolved for a container holding `caps` on this host: a rule
/// applies when the container has all its `includes.caps` and none of its `excludes.caps`, and likewise for
/// architectures.
pub fn custom_profile(json: &str, caps: &[String]) -> Result<LinuxSeccomp, String> {
    let p: DockerProfile = serde_json::from_str(json).map_err(|e| format!("invalid seccomp profile: {e}"))?;
    let has = |c: &String| caps.contains(c);
    let arch = go_arch().to_string();
    let native = architectures().first().copied();
    let mut arches = p.architectures.clone();
    if let Some(m) = p.arch_map.iter().find(|m| Some(m.architecture) == native) {
        arches = std::iter::once(m.architecture).chain(m.sub_architectures.iter().copied()).collect();
    }
    let mut syscalls = Vec::new();
    for r in p.syscalls {
        let applies = r.includes.caps.iter().all(has)
            && !r.excludes.caps.iter().any(has)
            && (r.includes.arches.is_empty() || r.includes.arches.contains(&arch))
            && !r.excludes.arches.contains(&arch);
        if !applies {
            continue;
        }
        let mut names = r.names;
        names.extend(r.name);
        if names.is_empty() {
            return Err("invalid seccomp profile: a rule names no syscall".into());
        }
        let mut b = LinuxSyscallBuilder::default().names(names).action(r.action);
        if let Some(e) = r.errno_ret {
            b = b.errno_ret(e);
        }
        if !r.args.is_empty() {
            b = b.args(r.args);
        }
        syscalls.push(b.build().map_err(|e| e.to_string())?);
    }
    let mut b = LinuxSeccompBuilder::default().default_action(p.default_action).syscalls(syscalls);
    if let Some(e) = p.default_errno_ret {
        b = b.default_errno_ret(e);
    }
    if !arches.is_empty() {
        b = b.architectures(arches);
    }
    if !p.flags.is_empty() {
        b = b.flags(p.flags);
    }
    b.build().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(p: &LinuxSeccomp, name: &str) -> Vec<LinuxSyscall> {
        p.syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|s| s.action() == LinuxSeccompAction::ScmpActAllow && s.names().iter().any(|n| n == name))
            .cloned()
            .collect()
    }

    #[test]
    fn default_profile_is_an_allowlist_with_eperm() {
        let p = default_profile(&["CAP_CHOWN".into()]).unwrap();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(p.default_errno_ret(), Some(EPERM));
        if cfg!(target_arch = "x86_64") {
            assert_eq!(
                p.architectures().as_deref(),
                Some(&[Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32][..])
            );
            assert_eq!(allowed(&p, "arch_prctl").len(), 1);
        }
        for ok in ["read", "execve", "openat", "ptrace", "clock_gettime64"] {
            assert!(!allowed(&p, ok).is_empty(), "{ok} is allowed");
        }
        for refused in ["mount", "unshare", "setns", "keyctl", "add_key", "kexec_load", "init_module", "reboot"] {
            assert!(allowed(&p, refused).is_empty(), "{refused} is refused without capabilities");
        }
    }

    #[test]
    fn conditions_follow_arguments_and_capabilities() {
        let p = default_profile(&[]).unwrap();
        let personality: Vec<u64> = allowed(&p, "personality")
            .iter()
            .map(|r| {
                let a = r.args().as_ref().unwrap();
                assert_eq!((a.len(), a[0].index(), a[0].op()), (1, 0, LinuxSeccompOperator::ScmpCmpEq));
                a[0].value()
            })
            .collect();
        assert_eq!(personality, PERSONALITIES);
        let clone = allowed(&p, "clone");
        assert_eq!(clone.len(), 1, "clone only conditionally");
        let a = clone[0].args().as_ref().unwrap()[0];
        assert_eq!((a.value(), a.value_two(), a.op()), (0x7E02_0000, Some(0), LinuxSeccompOperator::ScmpCmpMaskedEq));
        let clone3: Vec<&LinuxSyscall> =
            p.syscalls().as_ref().unwrap().iter().filter(|s| s.names().iter().any(|n| n == "clone3")).collect();
        assert_eq!((clone3.len(), clone3[0].errno_ret()), (1, Some(ENOSYS)), "clone3 says ENOSYS");

        let admin =
            default_profile(&["CAP_SYS_ADMIN".into(), "CAP_SYS_PTRACE".into(), "CAP_SYS_MODULE".into()]).unwrap();
        for name in ["mount", "unshare", "setns", "kcmp", "init_module"] {
            assert!(!allowed(&admin, name).is_empty(), "{name} is allowed with its capability");
        }
        let clone = allowed(&admin, "clone");
        assert!(clone.iter().any(|r| r.args().is_none()), "clone with any flags under CAP_SYS_ADMIN");
        assert!(admin.syscalls().as_ref().unwrap().iter().all(|s| s.action() == LinuxSeccompAction::ScmpActAllow));
    }

    #[test]
    fn custom_profiles_in_docker_format() {
        let json = r#"{
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 1,
            "archMap": [
                {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
                {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}
            ],
            "syscalls": [
                {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 8, "valueTwo": 0, "op": "SCMP_CMP_EQ"}]},
                {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
                {"names": ["clone"], "action": "SCMP_ACT_ALLOW", "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
                {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64"]}},
                {"names": ["cacheflush"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["arm64"]}}
            ]
        }"#;
        let p = custom_profile(json, &["CAP_SYS_ADMIN".into()]).unwrap();
        assert_eq!((p.default_action(), p.default_errno_ret()), (LinuxSeccompAction::ScmpActErrno, Some(1)));
        assert_eq!(allowed(&p, "personality")[0].args().as_ref().unwrap()[0].value(), 8);
        assert_eq!(allowed(&p, "mount").len(), 1, "included with CAP_SYS_ADMIN");
        assert!(allowed(&p, "clone").is_empty(), "excluded with CAP_SYS_ADMIN");
        if cfg!(target_arch = "x86_64") {
            assert_eq!(p.architectures().as_ref().unwrap()[0], Arch::ScmpArchX86_64);
            assert_eq!((allowed(&p, "arch_prctl").len(), allowed(&p, "cacheflush").len()), (1, 0));
        }
        let p = custom_profile(json, &[]).unwrap();
        assert!(allowed(&p, "mount").is_empty() && allowed(&p, "clone").len() == 1);

        let e = custom_profile(r#"{"defaultAction": "SCMP_ACT_NOPE"}"#, &[]).unwrap_err();
        assert!(e.starts_with("invalid seccomp profile: unknown variant `SCMP_ACT_NOPE`"), "{e}");
        let e = custom_profile(r#"{"defaultAction": "SCMP_ACT_ALLOW", "sycalls": []}"#, &[]).unwrap_err();
        assert!(e.contains("unknown field `sycalls`"), "{e}");
    }
}
