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
    /// Log level (debug, info, warn, error, fatal; also trace) or a tracing filter such as `info,swarm=debug`
    #[arg(short = 'l', long, default_value = "info", value_parser = parse_log_level)]
    pub log_level: String,
    /// Group for the unix socket (default "shoal" if that group exists, else root only)
    #[arg(short = 'G', long)]
    pub group: Option<String>,
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// The largest image archive `image load` accepts, in bytes
    #[arg(long, default_value_t = crate::image::DEFAULT_MAX_UPLOAD)]
    pub max_image_upload: u64,
    /// Engine labels (key=value), usable in constraints as engine.labels.<key>
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// A resource this node offers to tasks' `--generic-resource` reservations, as KIND=COUNT (e.g. gpu=2);
    /// repeatable, one kind each
    #[arg(long = "node-generic-resource", value_name = "KIND=COUNT", value_parser = parse_generic_resource)]
    pub node_generic_resources: Vec<(String, u64)>,
    /// A registry (HOST[:PORT]) spoken to over plain HTTP; repeatable
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    pub insecure_registries: Vec<String>,
    /// A Docker Hub mirror (https://host[:port] or http://…), tried before Docker Hub; repeatable
    #[arg(long = "registry-mirror", value_name = "URL", value_parser = parse_mirror)]
    pub registry_mirrors: Vec<String>,
    /// Registry CAs in Docker's layout: <DIR>/<host[:port]>/ca.crt
    #[arg(long, value_name = "DIR", default_value = crate::registry::DEFAULT_CERTS_DIR)]
    pub registry_certs_dir: PathBuf,
    /// Remove every network namespace, device and nftables table a dead shoald of this --data-root left (as a
    /// start would), then exit; refused while a shoald runs on it
    #[arg(long)]
    pub cleanup: bool,
}

/// A mirror is a URL with a scheme, as dockerd wants it (the scheme says whether it speaks TLS).
fn parse_mirror(s: &str) -> Result<String, String> {
    let rest = s.strip_prefix("https://").or_else(|| s.strip_prefix("http://"));
    match rest {
        Some(h) if !h.trim_end_matches('/').is_empty() && !h.trim_end_matches('/').contains('/') => {
            Ok(s.trim_end_matches('/').to_string())
        }
        _ => Err(format!("invalid mirror {s:?}: expected https://HOST[:PORT] or http://HOST[:PORT]")),
    }
}

/// Docker's level names (`fatal` and `panic` log errors only, as tracing has no higher level), tracing's `trace`
/// and `off`, or a tracing filter with `=` directives. A bare unknown word is refused: tracing would read it as a
/// target name and silently log nothing else.
fn parse_log_level(s: &str) -> Result<String, String> {
    let level = s.trim().to_ascii_lowercase();
    match level.as_str() {
        "trace" | "debug" | "info" | "warn" | "error" | "off" => Ok(level),
        "warning" => Ok("warn".into()),
        "fatal" | "panic" => Ok("error".into()),
        _ if s.contains('=') => tracing_subscriber::EnvFilter::try_new(s)
            .map(|_| s.to_string())
            .map_err(|e| format!("invalid log filter {s:?}: {e}")),
        _ => Err(format!("invalid log level {s:?}: expected debug, info, warn, error or fatal")),
    }
}

impl DaemonConfig {
    /// The tracing filter `--log-level` asks for.
    pub fn log_filter(&self) -> tracing_subscriber::EnvFilter {
        // parse_log_level accepted it, so it parses.
        tracing_subscriber::EnvFilter::try_new(&self.log_level).unwrap_or_else(|_| "info".into())
    }
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("invalid label {s:?}: expected key=value")),
    }
}

/// Docker's discrete form `KIND=COUNT`. Docker's named form (`gpu=UUID`) is refused: tasks reserve counts here,
/// and nothing would hand them the names.
fn parse_generic_resource(s: &str) -> Result<(String, u64), String> {
    let bad = |why: &str| format!("invalid generic resource {s:?}: {why}");
    let (kind, count) = s.split_once('=').ok_or_else(|| bad("expected KIND=COUNT, e.g. gpu=2"))?;
    if kind.is_empty() || kind.chars().any(|c| c.is_whitespace() || c == '=') {
        return Err(bad("the kind must be a non-empty word"));
    }
    let count = count
        .parse::<u64>()
        .map_err(|_| bad("the count must be a whole number (named resources such as gpu=UUID are not supported)"))?;
    Ok((kind.to_string(), count))
}

impl DaemonConfig {
    /// The local API socket path from `-H` (`unix:///path` or a bare path).
    pub fn socket_path(&self) -> Result<PathBuf, String> {
        engine_api::socket_path(&self.host).map_err(|e| e.to_string())
    }

    /// The registry settings of `--insecure-registry`, `--registry-mirror` and `--registry-certs-dir`.
    pub fn registries(&self) -> crate::registry::RegistryConfig {
        crate::registry::RegistryConfig {
            insecure: self.insecure_registries.clone(),
            mirrors: self.registry_mirrors.clone(),
            certs_dir: self.registry_certs_dir.clone(),
        }
    }

    pub fn engine_labels(&self) -> BTreeMap<String, String> {
        self.labels.iter().cloned().collect()
    }

    /// The generic resources the node advertises; a kind given twice is an error (which count would be meant?).
    pub fn generic_resources(&self) -> Result<BTreeMap<String, u64>, String> {
        let mut out = BTreeMap::new();
        for (kind, n) in &self.node_generic_resources {
            if out.insert(kind.clone(), *n).is_some() {
                return Err(format!("--node-generic-resource {kind} is given more than once"));
            }
        }
        Ok(out)
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
        assert_eq!(c.group, None, "the default group is resolved at startup");
        assert!(!c.cleanup);
        assert!(DaemonConfig::parse_from(["shoald", "--cleanup"]).cleanup);
    }

    #[test]
    fn registry_flags() {
        let c = DaemonConfig::parse_from(["shoald"]);
        assert_eq!(c.registries().certs_dir, PathBuf::from("/etc/shoal/certs.d"));
        assert!(c.registries().insecure.is_empty() && c.registries().mirrors.is_empty());
        let c = DaemonConfig::parse_from([
            "shoald",
            "--insecure-registry",
            "127.0.0.1:5000",
            "--registry-mirror",
            "https://mirror.example.com/",
            "--registry-certs-dir",
            "/tmp/certs.d",
        ]);
        let r = c.registries();
        assert_eq!(r.insecure, vec!["127.0.0.1:5000".to_string()]);
        assert_eq!(r.mirrors, vec!["https://mirror.example.com".to_string()]);
        assert_eq!(r.certs_dir, PathBuf::from("/tmp/certs.d"));
        let e = DaemonConfig::try_parse_from(["shoald", "--registry-mirror", "mirror.example.com"]).unwrap_err();
        assert!(e.to_string().contains("invalid mirror \"mirror.example.com\""), "{e}");
    }

    #[test]
    fn log_levels_and_group_flags() {
        use tracing_subscriber::filter::LevelFilter;
        let level = |argv: &[&str]| {
            DaemonConfig::try_parse_from(std::iter::once("shoald").chain(argv.iter().copied()))
                .map(|c| c.log_filter().max_level_hint())
        };
        assert_eq!(level(&[]).unwrap(), Some(LevelFilter::INFO));
        assert_eq!(level(&["-l", "debug"]).unwrap(), Some(LevelFilter::DEBUG));
        assert_eq!(level(&["--log-level", "WARN"]).unwrap(), Some(LevelFilter::WARN));
        assert_eq!(level(&["-l", "fatal"]).unwrap(), Some(LevelFilter::ERROR));
        assert_eq!(level(&["-l", "info,swarm=trace"]).unwrap(), Some(LevelFilter::TRACE));
        let e = level(&["-l", "loud"]).unwrap_err();
        assert!(
            e.to_string().contains("invalid log level \"loud\": expected debug, info, warn, error or fatal"),
            "{e}"
        );
        let c = DaemonConfig::parse_from(["shoald", "-G", "staff"]);
        assert_eq!(c.group.as_deref(), Some("staff"));
    }

    #[test]
    fn node_generic_resources_take_dockers_discrete_form() {
        let c = DaemonConfig::parse_from([
            "shoald",
            "--node-generic-resource",
            "gpu=2",
            "--node-generic-resource",
            "fpga=1",
        ]);
        assert_eq!(c.generic_resources().unwrap(), BTreeMap::from([("gpu".into(), 2), ("fpga".into(), 1)]));
        assert!(DaemonConfig::parse_from(["shoald"]).generic_resources().unwrap().is_empty());
        let c = DaemonConfig::parse_from([
            "shoald",
            "--node-generic-resource",
            "gpu=2",
            "--node-generic-resource",
            "gpu=1",
        ]);
        assert_eq!(c.generic_resources().unwrap_err(), "--node-generic-resource gpu is given more than once");
        for (arg, why) in [
            ("gpu", "expected KIND=COUNT"),
            ("=2", "the kind must be a non-empty word"),
            ("gpu=GPU-8a3e", "named resources such as gpu=UUID are not supported"),
            ("gpu=-1", "the count must be a whole number"),
        ] {
            let e = DaemonConfig::try_parse_from(["shoald", "--node-generic-resource", arg]).unwrap_err().to_string();
            assert!(e.contains(&format!("invalid generic resource {arg:?}: ")) && e.contains(why), "{arg}: {e}");
        }
    }
}
