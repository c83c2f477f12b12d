//! The compose file's schema as Swarm reads it: every key the compose-spec allows where Swarm looks, strict
//! (`deny_unknown_fields`: a misspelt key is an error, not silently ignored). Keys the compose-spec has but Swarm
//! does not use are accepted and reported once as unsupported. Scalars are lenient about their type (after
//! interpolation `replicas: ${N}` is the text "3"), and are checked when converted.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// A scalar as written: text, number or boolean.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

impl Scalar {
    pub fn text(&self) -> String {
        match self {
            Scalar::Bool(b) => b.to_string(),
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Str(s) => s.clone(),
        }
    }

    pub fn as_u64(&self) -> Result<u64, String> {
        match self {
            Scalar::Int(i) if *i >= 0 => Ok(*i as u64),
            Scalar::Str(s) if s.trim().parse::<u64>().is_ok() => Ok(s.trim().parse().unwrap_or_default()),
            other => Err(format!("{:?} is not a non-negative integer", other.text())),
        }
    }

    pub fn as_f64(&self) -> Result<f64, String> {
        match self {
            Scalar::Int(i) => Ok(*i as f64),
            Scalar::Float(f) => Ok(*f),
            Scalar::Str(s) => s.trim().parse().map_err(|_| format!("{s:?} is not a number")),
            Scalar::Bool(b) => Err(format!("{b} is not a number")),
        }
    }

    pub fn as_bool(&self) -> Result<bool, String> {
        match self {
            Scalar::Bool(b) => Ok(*b),
            Scalar::Str(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" => Ok(true),
                "false" | "no" | "off" => Ok(false),
                _ => Err(format!("{s:?} is not a boolean")),
            },
            other => Err(format!("{:?} is not a boolean", other.text())),
        }
    }
}

/// `KEY: value` mapping or `["KEY=value"]` list (environment, labels). A null value means "from the environment"
/// for `environment` and empty for labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MapOrList {
    Map(BTreeMap<String, Option<Scalar>>),
    List(Vec<String>),
}

/// One string or a list of them (`env_file`, `tmpfs`, healthcheck `test`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<Scalar>),
}

impl OneOrMany {
    pub fn items(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.iter().map(Scalar::text).collect(),
        }
    }
}

/// `external: true` or the older `external: {name: …}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum External {
    Flag(Scalar),
    Named {
        #[serde(default)]
        name: Option<String>,
    },
}

impl External {
    pub fn is_external(&self) -> bool {
        match self {
            External::Flag(s) => s.as_bool().unwrap_or(false),
            External::Named { .. } => true,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComposeFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub services: BTreeMap<String, Service>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub networks: BTreeMap<String, Option<NetworkDef>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub volumes: BTreeMap<String, Option<VolumeDef>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, FileObjectDef>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub configs: BTreeMap<String, FileObjectDef>,
}

/// Keys of a service that the compose-spec defines but Swarm does not apply; reported as unsupported.
pub const UNSUPPORTED_SERVICE_KEYS: &[&str] = &[
    "build",
    "cgroup_parent",
    "container_name",
    "cpu_shares",
    "cpuset",
    "devices",
    "dns",
    "dns_search",
    "domainname",
    "external_links",
    "extra_hosts",
    "ipc",
    "links",
    "mac_address",
    "network_mode",
    "pid",
    "platform",
    "privileged",
    "profiles",
    "pull_policy",
    "restart",
    "security_opt",
    "shm_size",
    "stdin_open",
    "sysctls",
    "tty",
    "userns_mode",
    "volumes_from",
];

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<OneOrMany>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<OneOrMany>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<MapOrList>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_file: Option<OneOrMany>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<MapOrList>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy: Option<Deploy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose: Vec<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks: Option<ServiceNetworks>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<ServiceVolume>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmpfs: Option<OneOrMany>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<FileRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configs: Vec<FileRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_grace_period: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<Scalar>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ulimits: BTreeMap<String, UlimitDef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logging: Option<Logging>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depends_on: Option<DependsOn>,
    // Accepted and reported as unsupported (see UNSUPPORTED_SERVICE_KEYS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_parent: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_name: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_shares: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpuset: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_search: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domainname: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_links: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_hosts: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipc: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub links: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_mode: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privileged: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profiles: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_policy: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_opt: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shm_size: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin_open: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sysctls: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userns_mode: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes_from: Option<Value>,
}

impl Service {
    /// The unsupported keys this service sets (`depends_on` too when none of its entries waits for health, the
    /// one form Shoal acts on).
    pub fn unsupported_keys(&self) -> Vec<&'static str> {
        let set = [
            self.build.is_some(),
            self.cgroup_parent.is_some(),
            self.container_name.is_some(),
            self.cpu_shares.is_some(),
            self.cpuset.is_some(),
            self.devices.is_some(),
            self.dns.is_some(),
            self.dns_search.is_some(),
            self.domainname.is_some(),
            self.external_links.is_some(),
            self.extra_hosts.is_some(),
            self.ipc.is_some(),
            self.links.is_some(),
            self.mac_address.is_some(),
            self.network_mode.is_some(),
            self.pid.is_some(),
            self.platform.is_some(),
            self.privileged.is_some(),
            self.profiles.is_some(),
            self.pull_policy.is_some(),
            self.restart.is_some(),
            self.security_opt.is_some(),
            self.shm_size.is_some(),
            self.stdin_open.is_some(),
            self.sysctls.is_some(),
            self.tty.is_some(),
            self.userns_mode.is_some(),
            self.volumes_from.is_some(),
        ];
        let mut keys: Vec<&'static str> =
            UNSUPPORTED_SERVICE_KEYS.iter().zip(set).filter(|(_, s)| *s).map(|(k, _)| *k).collect();
        if self.depends_on.as_ref().is_some_and(|d| d.healthy().is_empty()) {
            keys.push("depends_on");
        }
        keys
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DependsOn {
    List(Vec<String>),
    Map(BTreeMap<String, DependsOnEntry>),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DependsOnEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required: Option<Scalar>,
}

impl DependsOn {
    /// The services this one waits to be healthy for (`condition: service_healthy`).
    pub fn healthy(&self) -> Vec<String> {
        match self {
            DependsOn::List(_) => vec![],
            DependsOn::Map(m) => m
                .iter()
                .filter(|(_, e)| e.condition.as_deref() == Some("service_healthy"))
                .map(|(k, _)| k.clone())
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logging {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, Scalar>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum UlimitDef {
    Single(Scalar),
    Pair { soft: Scalar, hard: Scalar },
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deploy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<MapOrList>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<RestartPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_config: Option<UpdateConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_config: Option<UpdateConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_mode: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preferences: Vec<Preference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replicas_per_node: Option<Scalar>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preference {
    pub spread: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ResourceAmounts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservations: Option<ResourceAmounts>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceAmounts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub generic_resources: Vec<GenericResource>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenericResource {
    pub discrete_resource_spec: DiscreteResource,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscreteResource {
    pub kind: String,
    pub value: Scalar,
}

impl Default for Scalar {
    fn default() -> Self {
        Scalar::Int(0)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failure_ratio: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Healthcheck {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<OneOrMany>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable: Option<Scalar>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Port {
    Short(Scalar),
    Long(PortLong),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortLong {
    pub target: Scalar,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ServiceNetworks {
    List(Vec<String>),
    Map(BTreeMap<String, Option<ServiceNetwork>>),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceNetwork {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_address: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ServiceVolume {
    Short(String),
    Long(VolumeLong),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeLong {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmpfs: Option<TmpfsOptions>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TmpfsOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Scalar>,
}

/// A service's use of a secret or config: `- name` or `{source, target, uid, gid, mode}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FileRef {
    Short(String),
    Long(FileRefLong),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRefLong {
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Scalar>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkDef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub driver_opts: BTreeMap<String, Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<External>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<MapOrList>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachable: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_ipv6: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam: Option<Ipam>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ipam {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config: Vec<IpamPool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpamPool {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_range: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeDef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub driver_opts: BTreeMap<String, Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<External>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<MapOrList>,
}

/// A top-level secret or config: from a file, inline `content` (configs), an environment variable, or external.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileObjectDef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<External>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<MapOrList>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_driver: Option<String>,
}

/// Removes `x-` extension fields from every mapping that is an object definition (not from maps of user data
/// such as labels or environment, whose keys are the user's).
pub fn strip_extensions(v: &mut Value) {
    strip(v, "");
}

fn strip(v: &mut Value, parent_key: &str) {
    const USER_MAPS: &[&str] = &["environment", "labels", "driver_opts", "options", "sysctls", "extra_hosts"];
    match v {
        Value::Object(m) => {
            if !USER_MAPS.contains(&parent_key) {
                m.retain(|k, _| !k.starts_with("x-"));
            }
            for (k, item) in m.iter_mut() {
                strip(item, k);
            }
        }
        Value::Array(items) => {
            for item in items {
                strip(item, parent_key);
            }
        }
        _ => {}
    }
}

/// Decodes a (merged or single) compose value; on error, the path of the offending key and the message.
pub fn decode(v: &Value) -> Result<ComposeFile, (String, String)> {
    let mut v = v.clone();
    strip_extensions(&mut v);
    serde_path_to_error::deserialize(&v).map_err(|e| {
        let path = path_text(e.path());
        let inner = e.into_inner().to_string();
        (path, friendly(&inner))
    })
}

/// serde's "unknown field `foo`, expected one of …" as "unknown key \"foo\"" (the list is long and in the docs).
fn friendly(msg: &str) -> String {
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        if let Some(end) = rest.find('`') {
            return format!("unknown key {:?}", &rest[..end]);
        }
    }
    if msg.starts_with("data did not match any variant of untagged enum") {
        return "invalid value: wrong type or unknown key".into();
    }
    msg.to_string()
}

fn path_text(p: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in p.iter() {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Enum { variant } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(variant);
            }
            Segment::Unknown => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_keys_are_errors_with_their_path() {
        let v = json!({"services": {"web": {"image": "busybox", "deploy": {"replicas": 2, "replicaz": 3}}}});
        let (path, msg) = decode(&v).unwrap_err();
        assert_eq!(msg, "unknown key \"replicaz\"");
        assert!(path.starts_with("services.web.deploy"), "{path}");
        let (path, msg) = decode(&json!({"servics": {}})).unwrap_err();
        assert_eq!((path.as_str(), msg.as_str()), ("servics", "unknown key \"servics\""));
    }

    #[test]
    fn extensions_are_ignored_but_user_maps_kept() {
        let v = json!({"x-top": 1, "services": {"web": {"x-note": "n", "image": "b", "labels": {"x-keep": "1"},
            "deploy": {"x-d": 1}}}});
        let f = decode(&v).unwrap();
        let labels = f.services["web"].labels.clone().unwrap();
        assert_eq!(labels, MapOrList::Map([("x-keep".to_string(), Some(Scalar::Str("1".into())))].into()));
    }

    #[test]
    fn unsupported_keys_are_listed() {
        let v = json!({"services": {"web": {"image": "b", "build": ".", "restart": "always",
            "depends_on": ["db"]}, "api": {"image": "b", "depends_on": {"db": {"condition": "service_healthy"}}}}});
        let f = decode(&v).unwrap();
        assert_eq!(f.services["web"].unsupported_keys(), ["build", "restart", "depends_on"]);
        assert!(f.services["api"].unsupported_keys().is_empty());
        assert_eq!(f.services["api"].depends_on.as_ref().unwrap().healthy(), ["db"]);
    }

    #[test]
    fn scalars_are_lenient_about_type() {
        assert_eq!(Scalar::Str("3".into()).as_u64(), Ok(3));
        assert!(Scalar::Int(-1).as_u64().is_err());
        assert_eq!(Scalar::Str("0.5".into()).as_f64(), Ok(0.5));
        assert_eq!(Scalar::Str("true".into()).as_bool(), Ok(true));
        assert!(Scalar::Str("maybe".into()).as_bool().is_err());
    }
}
