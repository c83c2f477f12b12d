//! `shoal node …`: ls and inspect, with Docker's columns (the current node's id marked with ` *`).

use crate::client::{rpc, Client};
use crate::output::{bytes_size, print_json, Format, Table};
use crate::Tally;
use clap::{Args, Subcommand};
use std::fmt::Write;
use swarm::api::control::{Empty, GetRequest};
use swarm::api::{Node, Reachability};

#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// List nodes in the swarm
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Display detailed information on one or more nodes
    Inspect(InspectArgs),
}

pub type LsArgs = crate::output::ListingArgs;

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Nodes (id, hostname, or "self")
    #[arg(required = true, value_name = "NODE")]
    nodes: Vec<String>,
    /// Print the information in a human friendly format
    #[arg(long)]
    pretty: bool,
}

pub async fn run(client: &mut Client, cmd: NodeCmd) -> anyhow::Result<()> {
    match cmd {
        NodeCmd::Ls(a) => ls(client, a).await,
        NodeCmd::Inspect(a) => inspect(client, a).await,
    }
}

/// Docker's MANAGER STATUS column: Leader, or the reachability of other managers; empty for workers.
fn manager_status(n: &Node) -> String {
    match &n.manager_status {
        None => String::new(),
        Some(m) if m.leader => "Leader".into(),
        Some(m) => match m.reachability {
            Reachability::Reachable => "Reachable".into(),
            Reachability::Unreachable => "Unreachable".into(),
            Reachability::Unknown => "Unknown".into(),
        },
    }
}

/// The rows of `node ls`, sorted by hostname as Docker does.
fn ls_rows(nodes: &mut [Node], self_id: &str) -> Vec<Vec<String>> {
    nodes.sort_by(|a, b| a.description.hostname.cmp(&b.description.hostname).then(a.id.cmp(&b.id)));
    nodes
        .iter()
        .map(|n| {
            let id = if n.id == self_id { format!("{} *", n.id) } else { n.id.clone() };
            vec![
                id,
                n.description.hostname.clone(),
                n.status.state.to_string(),
                n.spec.availability.to_string(),
                manager_status(n),
                n.description.engine.engine_version.clone(),
            ]
        })
        .collect()
}

async fn self_id(client: &mut Client) -> anyhow::Result<String> {
    Ok(rpc(client.engine.info(Empty {}).await)?.swarm.node_id)
}

async fn ls(client: &mut Client, a: LsArgs) -> anyhow::Result<()> {
    let mut nodes = rpc(client.control.list_nodes(Empty {}).await)?.nodes;
    match Format::from_flags(a.quiet, a.format) {
        Format::Json => print_json(&nodes),
        Format::Quiet => {
            for n in &nodes {
                println!("{}", n.id);
            }
            Ok(())
        }
        Format::Table => {
            let me = self_id(client).await?;
            let mut t = Table::new(&["ID", "HOSTNAME", "STATUS", "AVAILABILITY", "MANAGER STATUS", "ENGINE VERSION"]);
            for row in ls_rows(&mut nodes, &me) {
                t.row(row);
            }
            t.print();
            Ok(())
        }
    }
}

/// Docker's `node inspect --pretty` layout.
fn pretty(n: &Node) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "ID:\t\t\t{}", n.id);
    if !n.spec.annotations.name.is_empty() {
        let _ = writeln!(o, "Name:\t\t\t{}", n.spec.annotations.name);
    }
    if !n.spec.annotations.labels.is_empty() {
        let _ = writeln!(o, "Labels:");
        for (k, v) in &n.spec.annotations.labels {
            let _ = writeln!(o, " - {k}={v}");
        }
    }
    let _ = writeln!(o, "Hostname:\t\t{}", n.description.hostname);
    let _ = writeln!(o, "Joined at:\t\t{}", n.meta.created_at);
    let _ = writeln!(o, "Status:");
    let _ = writeln!(o, " State:\t\t\t{}", n.status.state);
    if !n.status.message.is_empty() {
        let _ = writeln!(o, " Message:\t\t{}", n.status.message);
    }
    let _ = writeln!(o, " Availability:\t\t{}", n.spec.availability);
    if !n.status.addr.is_empty() {
        let _ = writeln!(o, " Address:\t\t{}", n.status.addr);
    }
    if let Some(m) = &n.manager_status {
        let _ = writeln!(o, "Manager Status:");
        let _ = writeln!(o, " Address:\t\t{}", m.addr);
        let _ = writeln!(o, " Raft Status:\t\t{}", manager_status(n).replace("Leader", "Reachable"));
        let _ = writeln!(o, " Leader:\t\t{}", if m.leader { "Yes" } else { "No" });
    }
    let _ = writeln!(o, "Platform:");
    let _ = writeln!(o, " Operating System:\t{}", n.description.platform.os);
    let _ = writeln!(o, " Architecture:\t\t{}", n.description.platform.architecture);
    let _ = writeln!(o, "Resources:");
    let _ = writeln!(o, " CPUs:\t\t\t{}", n.description.resources.nano_cpus / 1_000_000_000);
    let _ = writeln!(o, " Memory:\t\t{}", bytes_size(n.description.resources.memory_bytes.max(0) as u64));
    let _ = writeln!(o, "Engine Version:\t\t{}", n.description.engine.engine_version);
    o
}

async fn inspect(client: &mut Client, a: InspectArgs) -> anyhow::Result<()> {
    let mut found = Vec::new();
    let mut tally = Tally::default();
    for name in &a.nodes {
        // "self" means this node, as in Docker.
        let key = if name == "self" { self_id(client).await? } else { name.clone() };
        found.extend(tally.ok(rpc(client.control.get_node(GetRequest { id_or_name: key }).await)));
    }
    if a.pretty {
        for (i, n) in found.iter().enumerate() {
            if i > 0 {
                println!();
            }
            print!("{}", pretty(n));
        }
    } else if !found.is_empty() {
        print_json(&found)?;
    }
    tally.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarm::api::ManagerStatus;

    fn node(id: &str, host: &str, leader: Option<bool>) -> Node {
        // Built from JSON so the fixture keeps compiling when the API gains (defaulted) fields.
        let mut n: Node = serde_json::from_value(serde_json::json!({
            "id": id, "role": "manager",
            "spec": {"name": "", "desired_role": "manager", "availability": "active"},
            "description": {"hostname": host, "engine": {"engine_version": "0.1.0"}},
            "status": {"state": "ready"}
        }))
        .unwrap();
        n.manager_status = leader.map(|l| ManagerStatus {
            raft_id: 1,
            addr: "10.0.0.1:2377".into(),
            leader: l,
            reachability: Reachability::Reachable,
        });
        n
    }

    #[test]
    fn ls_marks_self_and_leader() {
        let mut nodes =
            vec![node("bbb", "host-b", None), node("aaa", "host-a", Some(true)), node("ccc", "host-c", Some(false))];
        let rows = ls_rows(&mut nodes, "aaa");
        assert_eq!(rows[0], vec!["aaa *", "host-a", "Ready", "Active", "Leader", "0.1.0"]);
        assert_eq!(rows[1][4], "");
        assert_eq!(rows[2][4], "Reachable");
    }

    #[test]
    fn pretty_node() {
        let out = pretty(&node("aaa", "host-a", Some(true)));
        assert!(out.contains("Hostname:\t\thost-a"));
        assert!(out.contains(" Leader:\t\tYes"));
    }
}
