//! Specs: what a user asks for. A service spec is validated by the control API (`controlapi::validate`) before
//! anything is stored; a task carries a copy of its service's task spec, so a running task never changes under it.

use super::meta::duration_text;
use super::Constraint;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// Name and labels of an object, as SwarmKit's `Annotations`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Annotations {
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// The desired state of a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceSpec {
    #[serde(flatten)]
    pub annotations: Annotations,
    pub task_template: TaskSpec,
    pub mode: ServiceMode,
    /// How a changed spec rolls out (`--update-*`).
    #[serde(default)]
    pub update_config: UpdateConfig,
    /// How a rollback rolls out (`--rollback-*`); same defaults as updates.
    #[serde(default)]
    pub rollback_config: UpdateConfig,
    /// How the service is reached: VIP or DNS round-robin, and its published ports (`--endpoint-mode`, `-p`).
    #[serde(default, skip_serializing_if = "EndpointSpec::is_default")]
    pub endpoint_spec: EndpointSpec,
}

/// Swarm's `EndpointSpec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointSpec {
    #[serde(default)]
    pub mode: EndpointMode,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortConfig>,
}

impl EndpointSpec {
    pub fn is_default(&self) -> bool {
        *self == EndpointSpec::default()
    }
}

/// `--endpoint-mode`: a virtual IP load-balanced to the tasks (default), or DNS answering with the tasks' IPs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointMode {
    #[default]
    Vip,
    Dnsrr,
}

/// One published port (`-p 8080:80/tcp`, `--publish published=8080,target=80,mode=host`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortConfig {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default)]
    pub protocol: PortProtocol,
    /// The port the task listens on.
    pub target_port: u16,
    /// The port on the nodes; 0 in a spec: the allocator picks one from 30000–32767 (ingress mode only).
    #[serde(default)]
    pub published_port: u16,
    #[serde(default)]
    pub publish_mode: PublishMode,
    /// Ingress mode, beyond Swarm (`client-ip=preserve`): a node holding a serving task of the service forwards
    /// to its own tasks without masquerade, so they see the client's address; a node without one still
    /// forwards over the mesh, masqueraded.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub preserve_client_ip: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortProtocol {
    #[default]
    Tcp,
    Udp,
}

impl PortProtocol {
    pub fn name(self) -> &'static str {
        match self {
            PortProtocol::Tcp => "tcp",
            PortProtocol::Udp => "udp",
        }
    }
}

/// `mode=ingress` (the routing mesh: every node, masqueraded) or `mode=host` (only nodes running a task, the
/// client's address kept).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishMode {
    #[default]
    Ingress,
    Host,
}

/// A network a service's tasks attach to (`--network NAME[,alias=A]`). The control API stores the network's id in
/// `target` (a name given by the user is resolved when the spec is written).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkAttachmentConfig {
    pub target: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

/// Where a secret or config appears in the container: a file name (secrets: under `/run/secrets/` unless
/// absolute; configs: `/<name>` unless absolute), owner and mode (`--secret source=,target=,uid=,gid=,mode=`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileTarget {
    pub name: String,
    #[serde(default = "zero_text")]
    pub uid: String,
    #[serde(default = "zero_text")]
    pub gid: String,
    /// Permission bits; Docker's default is 0444.
    #[serde(default = "default_file_mode")]
    pub mode: u32,
}

fn zero_text() -> String {
    "0".into()
}

fn default_file_mode() -> u32 {
    0o444
}

/// A secret a task uses (`--secret`): the secret object's id and name, and where it is mounted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretReference {
    pub secret_id: String,
    pub secret_name: String,
    pub target: FileTarget,
}

/// A config a task uses (`--config`): the config object's id and name, and where it is mounted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigReference {
    pub config_id: String,
    pub config_name: String,
    pub target: FileTarget,
}

/// Swarm's `UpdateConfig`, used both for updates and rollbacks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateConfig {
    /// Tasks replaced at once; 0 means all at once.
    #[serde(default = "one")]
    pub parallelism: u64,
    /// Pause between batches.
    #[serde(default, with = "duration_text")]
    pub delay: Duration,
    #[serde(default)]
    pub failure_action: FailureAction,
    /// How long after a new task starts a failure of it still counts against the update.
    #[serde(default = "default_monitor", with = "duration_text")]
    pub monitor: Duration,
    /// The fraction (0..=1) of updated tasks that may fail before the failure action is taken.
    #[serde(default)]
    pub max_failure_ratio: f64,
    #[serde(default)]
    pub order: UpdateOrder,
}

fn one() -> u64 {
    1
}

fn default_monitor() -> Duration {
    Duration::from_secs(5)
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            parallelism: 1,
            delay: Duration::ZERO,
            failure_action: FailureAction::default(),
            monitor: default_monitor(),
            max_failure_ratio: 0.0,
            order: UpdateOrder::default(),
        }
    }
}

/// What an update does when too many new tasks fail (`--update-failure-action`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureAction {
    #[default]
    Pause,
    Continue,
    /// Only for updates, not for rollbacks.
    Rollback,
}

/// Whether an old task stops before its replacement starts (`--update-order`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateOrder {
    #[default]
    StopFirst,
    StartFirst,
}

/// How many tasks a service runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceMode {
    /// A fixed number of tasks, in slots 1..=replicas.
    Replicated { replicas: u64 },
    /// One task on every node that satisfies the placement constraints.
    Global,
    /// Runs tasks to completion: `total_completions` successful tasks, at most `max_concurrent` at once
    /// (`--mode replicated-job --replicas N --max-concurrent M`).
    ReplicatedJob { max_concurrent: u64, total_completions: u64 },
    /// One task to completion on every eligible node (`--mode global-job`).
    GlobalJob,
}

impl ServiceMode {
    pub fn name(&self) -> &'static str {
        match self {
            ServiceMode::Replicated { .. } => "replicated",
            ServiceMode::Global => "global",
            ServiceMode::ReplicatedJob { .. } => "replicated-job",
            ServiceMode::GlobalJob => "global-job",
        }
    }

    /// Jobs run their tasks to completion and are not restarted on success.
    pub fn is_job(&self) -> bool {
        matches!(self, ServiceMode::ReplicatedJob { .. } | ServiceMode::GlobalJob)
    }
}

/// What each task of a service runs, and how it is placed and supervised.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub container: ContainerSpec,
    #[serde(default)]
    pub resources: ResourceRequirements,
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    #[serde(default)]
    pub placement: Placement,
    /// Bumped to force tasks to be replaced even when nothing else changed (`service update --force`).
    #[serde(default)]
    pub force_update: u64,
    /// Where the task's output goes (`--log-driver`, `--log-opt`); the node's default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_driver: Option<LogDriver>,
    /// Overlay networks the tasks attach to (`--network`), in order: the first is `eth0`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<NetworkAttachmentConfig>,
}

/// Docker's `HealthConfig`: how a task's health is checked (`--health-*`, or the image's HEALTHCHECK).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthConfig {
    /// `[]` inherits the image's check; `["NONE"]` disables it; `["CMD", args…]` or `["CMD-SHELL", command]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub test: Vec<String>,
    /// Zero means inherit (from the image, else Docker's default 30 s).
    #[serde(default, with = "duration_text")]
    pub interval: Duration,
    /// Zero means inherit (else 30 s).
    #[serde(default, with = "duration_text")]
    pub timeout: Duration,
    /// Zero means inherit (else 3).
    #[serde(default)]
    pub retries: u64,
    /// Failures during this time after start do not count (zero: inherit, else 0 s).
    #[serde(default, with = "duration_text")]
    pub start_period: Duration,
    /// The interval used during the start period (zero: inherit, else 5 s).
    #[serde(default, with = "duration_text")]
    pub start_interval: Duration,
}

/// A log driver and its options, as Swarm's `TaskSpec.LogDriver` (e.g. json-file with `max-size=10m`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogDriver {
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

/// The container a task runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// Normalized image reference, e.g. `docker.io/library/busybox:latest`.
    pub image: String,
    /// Overrides the image's entrypoint when set (`--entrypoint`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Overrides the image's cmd when set (the words after IMAGE).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// `KEY=VALUE` pairs, appended to the image's environment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub dir: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    /// Labels put on the container (`--container-label`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    /// Signal sent first on stop (`--stop-signal`); SIGTERM when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stop_signal: String,
    /// Time between the stop signal and SIGKILL (`--stop-grace-period`, default 10s).
    #[serde(default = "default_stop_grace", with = "duration_text")]
    pub stop_grace_period: Duration,
    /// Capabilities added to Docker's default set (`--cap-add`), as `CAP_NAME` or `ALL`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capability_add: Vec<String>,
    /// Capabilities removed from Docker's default set (`--cap-drop`), as `CAP_NAME` or `ALL`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capability_drop: Vec<String>,
    /// Mount the root filesystem read-only (`--read-only`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub read_only: bool,
    /// Run an init (tini) as PID 1 that forwards signals and reaps zombies (`--init`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub init: bool,
    /// Resource limits of the container's processes (`--ulimit nofile=1024:2048`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ulimits: Vec<Ulimit>,
    /// The seccomp filter (`--security-opt seccomp=…`).
    #[serde(default, skip_serializing_if = "Seccomp::is_default")]
    pub seccomp: Seccomp,
    /// `--health-*` / `--no-healthcheck`; `None` uses the image's HEALTHCHECK, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthConfig>,
    /// `--secret`: secrets mounted as in-memory files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretReference>,
    /// `--config`: configs mounted as in-memory files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configs: Vec<ConfigReference>,
    /// How nodes pull the image (`--with-registry-auth`): stored sealed, never returned by the control API, opened
    /// only for the agents that run the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_options: Option<PullOptions>,
}

/// SwarmKit's `ContainerSpec.PullOptions`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullOptions {
    /// The client's credentials for the image's registry, in Docker's `X-Registry-Auth` encoding (base64url of
    /// `{"username", "password", "serveraddress"}`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub registry_auth: String,
    /// `registry_auth` sealed with the managers' data key: the only form the store (and so the Raft log and the
    /// snapshots) holds; the dispatcher opens it back into `registry_auth` for the task's node.
    #[serde(default, with = "super::secret::base64_bytes", skip_serializing_if = "Vec::is_empty")]
    pub sealed: Vec<u8>,
}

impl std::fmt::Debug for PullOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Specs get logged; the credentials must not be.
        let shown = |empty: bool| if empty { "" } else { "<redacted>" };
        write!(
            f,
            "PullOptions {{ registry_auth: {:?}, sealed: {:?} }}",
            shown(self.registry_auth.is_empty()),
            shown(self.sealed.is_empty())
        )
    }
}

impl ContainerSpec {
    /// Removes what the control API never hands out (registry credentials).
    pub fn redact(&mut self) {
        self.pull_options = None;
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Which seccomp filter a container runs under.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Seccomp {
    /// Docker's default profile (an allowlist of syscalls, adjusted to the container's capabilities).
    #[default]
    Default,
    /// No filter (`seccomp=unconfined`).
    Unconfined,
    /// A profile in Docker's JSON format (`seccomp=PATH`: the CLI sends the file's content).
    Custom(String),
}

impl Seccomp {
    pub fn is_default(&self) -> bool {
        *self == Seccomp::Default
    }
}

/// One process resource limit, as Docker's `--ulimit NAME=SOFT[:HARD]`; -1 means unlimited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ulimit {
    pub name: String,
    pub soft: i64,
    pub hard: i64,
}

/// The ulimit names Docker accepts (go-units), each the suffix of an `RLIMIT_` constant.
pub const ULIMIT_NAMES: &[&str] = &[
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

impl Ulimit {
    /// Checks the name and that the soft limit is within the hard one.
    pub fn check(&self) -> Result<(), String> {
        if !ULIMIT_NAMES.contains(&self.name.as_str()) {
            return Err(format!("invalid ulimit type: {:?} (expected one of {})", self.name, ULIMIT_NAMES.join(", ")));
        }
        let unlimited = |v: i64| v == -1;
        if self.soft < -1 || self.hard < -1 {
            return Err(format!("invalid ulimit {}: limits must be -1 (unlimited) or non-negative", self.name));
        }
        if !unlimited(self.hard) && (unlimited(self.soft) || self.soft > self.hard) {
            return Err(format!(
                "ulimit soft limit must be less than or equal to hard limit: {} > {}",
                self.soft, self.hard
            ));
        }
        Ok(())
    }
}

impl std::str::FromStr for Ulimit {
    type Err = String;
    /// `NAME=SOFT[:HARD]`; the hard limit defaults to the soft one.
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, values) =
            s.split_once('=').ok_or_else(|| format!("invalid ulimit argument: {s:?} (expected NAME=SOFT[:HARD])"))?;
        let int = |v: &str| {
            v.trim().parse::<i64>().map_err(|_| format!("invalid ulimit value {v:?} for {name}: must be an integer"))
        };
        let (soft, hard) = match values.split_once(':') {
            Some((soft, hard)) => (int(soft)?, int(hard)?),
            None => {
                let v = int(values)?;
                (v, v)
            }
        };
        let u = Ulimit { name: name.trim().to_string(), soft, hard };
        u.check()?;
        Ok(u)
    }
}

/// Every Linux capability, in kernel order (the set `ALL` stands for).
pub const ALL_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Docker's spelling rules for `--cap-add/--cap-drop`: case-insensitive, `CAP_` optional, `ALL` for every one.
/// Returns the canonical `CAP_NAME` (or `ALL`).
pub fn normalize_capability(s: &str) -> Result<String, String> {
    let up = s.trim().to_ascii_uppercase();
    if up == "ALL" {
        return Ok(up);
    }
    let name = if up.starts_with("CAP_") { up } else { format!("CAP_{up}") };
    if ALL_CAPABILITIES.contains(&name.as_str()) {
        Ok(name)
    } else {
        Err(format!("unknown capability: {s:?}"))
    }
}

fn default_stop_grace() -> Duration {
    Duration::from_secs(10)
}

/// A mount into the container, as `--mount type=bind,source=/a,target=/b,readonly`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    #[serde(rename = "type")]
    pub kind: MountType,
    /// Host path (bind) or volume name (volume); empty for tmpfs and anonymous volumes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    pub target: String,
    #[serde(default)]
    pub readonly: bool,
    /// tmpfs size in bytes (`tmpfs-size`); 0 means unlimited.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tmpfs_size: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountType {
    Bind,
    Volume,
    Tmpfs,
}

impl std::fmt::Display for MountType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MountType::Bind => "bind",
            MountType::Volume => "volume",
            MountType::Tmpfs => "tmpfs",
        })
    }
}

/// CPU and memory: limits are enforced by cgroups, reservations are what the scheduler sets aside on a node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceRequirements {
    #[serde(default)]
    pub limits: Resources,
    #[serde(default)]
    pub reservations: Resources,
    /// Node-advertised resources this task needs (`--generic-resource KIND=N`), as discrete counts.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub generic_reservations: BTreeMap<String, u64>,
}

/// An amount of CPU (in billionths of a CPU, as Docker's NanoCPUs) and memory (bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    #[serde(default)]
    pub nano_cpus: i64,
    #[serde(default)]
    pub memory_bytes: i64,
    /// The most processes (and threads) the container may have (`--limit-pids`); 0 means unlimited. Only
    /// meaningful as a limit.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub pids: i64,
}

fn is_zero_i64(n: &i64) -> bool {
    *n == 0
}

/// When a task that ended is replaced (`--restart-condition`, `--restart-delay`, …).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartPolicy {
    #[serde(default)]
    pub condition: RestartCondition,
    #[serde(default = "default_restart_delay", with = "duration_text")]
    pub delay: Duration,
    /// 0 means unlimited.
    #[serde(default)]
    pub max_attempts: u64,
    /// The window in which attempts are counted; zero means forever.
    #[serde(default, with = "duration_text")]
    pub window: Duration,
    /// When non-zero, the delay doubles after each consecutive failure of a slot, up to this
    /// (`--restart-max-delay`), so a crash-looping task backs off instead of hammering its node.
    #[serde(default, with = "duration_text")]
    pub max_delay: Duration,
}

fn default_restart_delay() -> Duration {
    Duration::from_secs(5)
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            condition: RestartCondition::Any,
            delay: default_restart_delay(),
            max_attempts: 0,
            window: Duration::ZERO,
            max_delay: Duration::ZERO,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartCondition {
    None,
    OnFailure,
    #[default]
    Any,
}

impl std::str::FromStr for RestartCondition {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(RestartCondition::None),
            "on-failure" => Ok(RestartCondition::OnFailure),
            "any" => Ok(RestartCondition::Any),
            other => Err(format!("invalid restart condition {other:?} (expected none, on-failure or any)")),
        }
    }
}

/// Where tasks may run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// Expressions like `node.role==manager`, `node.labels.zone!=east`, parsed when the spec is decoded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<Constraint>,
    /// At most this many tasks of the service on one node (`--replicas-max-per-node`); 0 means no limit.
    #[serde(default)]
    pub max_replicas: u64,
    /// `--placement-pref spread=node.labels.zone`: spread evenly over the values of each descriptor in turn
    /// (several form a tree, as Swarm's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preferences: Vec<PlacementPreference>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlacementPreference {
    /// A node attribute such as `node.labels.zone`; nodes without it form one group of their own.
    Spread(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulimits_parse_like_docker() {
        assert_eq!("nofile=1024:2048".parse(), Ok(Ulimit { name: "nofile".into(), soft: 1024, hard: 2048 }));
        assert_eq!("nproc=64".parse(), Ok(Ulimit { name: "nproc".into(), soft: 64, hard: 64 }));
        assert_eq!("core=-1".parse(), Ok(Ulimit { name: "core".into(), soft: -1, hard: -1 }));
        assert_eq!(
            "nofile=abc".parse::<Ulimit>().unwrap_err(),
            "invalid ulimit value \"abc\" for nofile: must be an integer"
        );
        assert!("nofile".parse::<Ulimit>().unwrap_err().contains("expected NAME=SOFT[:HARD]"));
        assert!("files=1".parse::<Ulimit>().unwrap_err().starts_with("invalid ulimit type: \"files\""));
        assert!("nofile=10:5".parse::<Ulimit>().unwrap_err().contains("10 > 5"));
        assert!("nofile=-1:5".parse::<Ulimit>().is_err(), "an unlimited soft limit above a finite hard one");
    }

    #[test]
    fn capabilities_normalize_like_docker() {
        assert_eq!(normalize_capability("net_admin").unwrap(), "CAP_NET_ADMIN");
        assert_eq!(normalize_capability("CAP_SYS_ADMIN").unwrap(), "CAP_SYS_ADMIN");
        assert_eq!(normalize_capability("all").unwrap(), "ALL");
        assert_eq!(normalize_capability("NOPE").unwrap_err(), "unknown capability: \"NOPE\"");
    }
}
