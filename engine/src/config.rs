//! `shoald`'s settings: its command-line flags, with Docker's defaults.

use clap::{Parser, ValueEnum};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Parser)]
#[command(name = "shoald", version, about = "The Shoal engine daemon: runs swarm services as containerd containers")]
pub struct DaemonConfig {
    /// Root of persistent state (swarm state, images' containerd root, logs, volumes)
    #[arg(long, default_value = "/var/lib/shoal")]
    pub data_root: PathBuf,
    /// Root of runtime state (sockets, pid files)
    #[arg(long, default_value = "/run/shoal")]
    pub exec_root: PathBuf,
    /// Local API socket
    #[arg(short = 'H', long = "host", default_value = engine_api::DEFAULT_HOST)]
    pub host: String,
    /// Socket of an existing containerd; when absent shoald starts and supervises its own
    #[arg(long)]
    pub containerd: Option<PathBuf>,
    /// Log level (error, warn, info, debug, trace) or a tracing filter
    #[arg(long, default_value = "info")]
    pub log_level: String,
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// The largest image archive `image load` accepts, in bytes
    #[arg(long, default_value_t = crate::image::DEFAULT_MAX_UPLOAD)]
    pub max_image_upload: u64,
    /// Engine labels (key=value), usable in constraints as engine.labels.<key>
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("invalid label {s:?}: expected key=value")),
    }
}

impl DaemonConfig {
    /// The local API socket path from `-H` (`unix:///path` or a bare path).
    pub fn socket_path(&self) -> Result<PathBuf, String> {
        engine_api::socket_path(&self.host).map_err(|e| e.to_string())
    }

    pub fn engine_labels(&self) -> BTreeMap<String, String> {
        self.labels.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_docker() {
        let c = DaemonConfig::parse_from(["shoald"]);
        assert_eq!(c.data_root, PathBuf::from("/var/lib/shoal"));
        assert_eq!(c.socket_path().unwrap(), PathBuf::from("/run/shoal/shoal.sock"));
        assert!(c.containerd.is_none());
        assert_eq!(c.max_image_upload, 10 << 30);
        let c = DaemonConfig::parse_from(["shoald", "-H", "/tmp/x.sock", "--label", "disk=ssd"]);
        assert_eq!(c.socket_path().unwrap(), PathBuf::from("/tmp/x.sock"));
        assert_eq!(c.engine_labels().get("disk").map(String::as_str), Some("ssd"));
    }
}
