//! `shoal info` and `shoal version`: the engine's facts and its Swarm section, in `docker info`'s layout.

use crate::client::{rpc, Client};
use crate::output::{bytes_size, check_format, human_duration};
use crate::template::{go_names, Template};
use clap::Args;
use engine_api::InfoResponse;
use std::fmt::Write;
use swarm::api::control::{Empty, GetClusterResponse};

#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Format output using a Go template ('{{.EngineVersion}}'), or 'json'
    #[arg(short, long, value_parser = check_format, value_name = "FORMAT")]
    format: Option<String>,
}

/// Renders `info` text. `cluster` is present when this node is an active manager (cluster-wide settings).
/// Writing to a `String` cannot fail, so `writeln!` results are ignored.
pub fn render_info(info: &InfoResponse, cluster: Option<&GetClusterResponse>) -> String {
    let mut o = String::new();
    let s = &info.swarm;
    let _ = writeln!(o, "Containers: {}", info.containers_running);
    let _ = writeln!(o, " Running: {}", info.containers_running);
    let _ = writeln!(o, "Images: {}", info.images);
    let _ = writeln!(o, "Server Version: {}", info.engine_version);
    let state = if s.local_node_state.is_empty() { "inactive" } else { s.local_node_state.as_str() };
    let _ = writeln!(o, "Swarm: {state}");
    if state != "inactive" {
        let _ = writeln!(o, " NodeID: {}", s.node_id);
        if !s.error.is_empty() {
            let _ = writeln!(o, " Error: {}", s.error);
        }
        let _ = writeln!(o, " Is Manager: {}", s.is_manager);
        if s.is_manager {
            let _ = writeln!(o, " ClusterID: {}", s.cluster_id);
            let _ = writeln!(o, " Managers: {}", s.managers);
            let _ = writeln!(o, " Nodes: {}", s.nodes);
            if let Some(c) = cluster {
                let spec = &c.cluster.spec;
                let _ = writeln!(o, " Orchestration:");
                let _ =
                    writeln!(o, "  Task History Retention Limit: {}", spec.orchestration.task_history_retention_limit);
                let _ = writeln!(o, " Raft:");
                let _ = writeln!(o, "  Snapshot Interval: {}", spec.raft.snapshot_interval);
                let _ = writeln!(o, "  Log Entries For Slow Followers: {}", spec.raft.log_entries_for_slow_followers);
                let _ = writeln!(o, " Dispatcher:");
                let _ = writeln!(
                    o,
                    "  Heartbeat Period: {}",
                    human_duration(spec.dispatcher.heartbeat_period).to_lowercase()
                );
            }
        }
        if !s.node_addr.is_empty() {
            let _ = writeln!(o, " Node Address: {}", s.node_addr);
        }
        if !s.remote_managers.is_empty() {
            let _ = writeln!(o, " Manager Addresses:");
            for m in &s.remote_managers {
                let _ = writeln!(o, "  {m}");
            }
        }
    }
    if !info.containerd_version.is_empty() {
        let _ = writeln!(o, "Containerd Version: {}", info.containerd_version);
    }
    let _ = writeln!(o, "OSType: {}", info.os);
    let _ = writeln!(o, "Architecture: {}", info.architecture);
    let _ = writeln!(o, "CPUs: {}", info.ncpu);
    let _ = writeln!(o, "Total Memory: {}", bytes_size(info.mem_total));
    let _ = writeln!(o, "Name: {}", info.name);
    let _ = writeln!(o, "Data Root Dir: {}", info.data_root);
    o
}

pub async fn info(client: &mut Client, a: InfoArgs) -> anyhow::Result<()> {
    let info = rpc(client.engine.info(Empty {}).await)?;
    if let Some(f) = &a.format {
        println!("{}", Template::parse(f)?.render(&go_names(&serde_json::to_value(&info)?))?);
        return Ok(());
    }
    // Cluster settings only exist on an active manager; anything else just omits that part.
    let cluster = if info.swarm.is_manager && info.swarm.local_node_state == "active" {
        rpc(client.control.get_cluster(Empty {}).await).ok()
    } else {
        None
    };
    print!("{}", render_info(&info, cluster.as_ref()));
    Ok(())
}

/// The client's platform in Go's names, as Docker prints `OS/Arch`.
fn client_os_arch() -> String {
    let p = swarm::api::Platform::current();
    format!("{}/{}", p.os, p.architecture)
}

/// `version`: prints the client section first, so it is shown even when the daemon is down (as Docker).
pub async fn version(host: &str) -> anyhow::Result<()> {
    println!("Client:");
    println!(" Version:           {}", env!("CARGO_PKG_VERSION"));
    println!(" OS/Arch:           {}", client_os_arch());
    println!();
    let mut client = Client::connect(host).await?;
    let v = rpc(client.engine.version(Empty {}).await)?;
    println!("Server:");
    println!(" Engine:");
    println!("  Version:          {}", v.version);
    println!("  API version:      {}", v.api_version);
    println!("  OS/Arch:          {}/{}", v.os, v.arch);
    if !v.containerd_version.is_empty() {
        println!(" containerd:");
        println!("  Version:          {}", v.containerd_version);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine_api::SwarmInfo;

    #[test]
    fn info_has_the_swarm_section() {
        let info = InfoResponse {
            swarm: SwarmInfo {
                local_node_state: "active".into(),
                node_id: "node1".into(),
                is_manager: true,
                cluster_id: "clu1".into(),
                managers: 1,
                nodes: 1,
                ..Default::default()
            },
            engine_version: "0.1.0".into(),
            containers_running: 2,
            images: 1,
            mem_total: 8 << 30,
            ncpu: 4,
            os: "linux".into(),
            architecture: "amd64".into(),
            data_root: "/var/lib/shoal".into(),
            ..Default::default()
        };
        let out = render_info(&info, None);
        for line in [
            "Swarm: active",
            " NodeID: node1",
            " Is Manager: true",
            " ClusterID: clu1",
            " Managers: 1",
            " Nodes: 1",
            "Server Version: 0.1.0",
            " Running: 2",
            "Total Memory: 8GiB",
            "CPUs: 4",
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line:?} in\n{out}");
        }
        let mut locked = info.clone();
        locked.swarm = SwarmInfo { local_node_state: "locked".into(), node_id: "node1".into(), ..Default::default() };
        let out = render_info(&locked, None);
        assert!(out.contains("Swarm: locked\n NodeID: node1\n Is Manager: false\n"), "{out}");
        let inactive = render_info(&InfoResponse::default(), None);
        assert!(inactive.lines().any(|l| l == "Swarm: inactive"));
        assert!(!inactive.contains("NodeID"));
    }
}
