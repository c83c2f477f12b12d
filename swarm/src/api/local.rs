//! Messages of a node's local API (`shoal.Engine`), served by `shoald` on its unix socket for the CLI.

use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SwarmInitRequest {
    /// The address other nodes reach this manager at (`ip` or `ip:port`); default: the listen address's IP, or
    /// the address of the interface with the default route.
    #[serde(default)]
    pub advertise_addr: String,
    /// Where the cluster listener binds (default `0.0.0.0:2377`).
    #[serde(default)]
    pub listen_addr: String,
    pub task_history_limit: Option<u64>,
    #[serde(default, with = "opt_duration")]
    pub dispatcher_heartbeat: Option<Duration>,
    pub snapshot_interval: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SwarmInitResponse {
    pub node_id: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SwarmLeaveRequest {
    #[serde(default)]
    pub force: bool,
}

/// `docker info`'s Swarm section, plus the engine's own facts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InfoResponse {
    pub swarm: SwarmInfo,
    pub engine_version: String,
    pub containerd_version: String,
    pub containers_running: u64,
    pub images: u64,
    pub data_root: String,
    pub name: String,
    pub os: String,
    pub architecture: String,
    pub ncpu: u64,
    pub mem_total: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SwarmInfo {
    /// `inactive`, `pending`, `active`, `error`.
    pub local_node_state: String,
    #[serde(default)]
    pub node_id: String,
    #[serde(default)]
    pub node_addr: String,
    #[serde(default)]
    pub is_manager: bool,
    #[serde(default)]
    pub cluster_id: String,
    #[serde(default)]
    pub managers: u64,
    #[serde(default)]
    pub nodes: u64,
    #[serde(default)]
    pub error: String,
    /// Manager addresses (`RemoteManagers`).
    #[serde(default)]
    pub remote_managers: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionResponse {
    pub version: String,
    pub api_version: String,
    pub os: String,
    pub arch: String,
    pub containerd_version: String,
}

/// A piece of an image archive (`image load`), base64 in JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageLoadChunk {
    #[serde(with = "base64_bytes")]
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImageLoadResponse {
    /// Normalized references of the loaded images.
    pub loaded: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageSummary {
    /// Normalized reference, `docker.io/library/busybox:latest`.
    pub reference: String,
    /// The image id (config digest, `sha256:…`).
    pub id: String,
    pub created: Option<String>,
    pub size: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImageListResponse {
    pub images: Vec<ImageSummary>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageRemoveRequest {
    pub reference: String,
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceLogsRequest {
    /// Service name, id or id prefix.
    pub service: String,
    #[serde(default)]
    pub follow: bool,
    /// Lines from the end of each task's log (None: all).
    pub tail: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogMessage {
    /// RFC 3339 time the line was written.
    pub time: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// `web.1.<task id>@<node hostname>`, as Docker prefixes lines.
    pub context: String,
    pub line: String,
}

mod opt_duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&super::super::format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(s) => super::super::parse_duration(&s).map(Some).map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

mod base64_bytes {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD.decode(s).map_err(serde::de::Error::custom)
    }
}
