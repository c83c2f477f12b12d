//! `shoal node …`: ls and inspect, with Docker's columns (the current node's id marked with ` *`).

use crate::client::{rpc, Client};
use crate::output::{bytes_size, check_format, print_inspected, print_rows, Format, Table};
use crate::Tally;
use clap::{Args, Subcommand};
use serde_json::{json, Value};
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
    #[arg(long, conflicts_with = "format")]
    pretty: bool,
    /// Format output using a Go template ('{{.ID}}', '{{json .Description}}')
    #[arg(short, long, value_parser = check_format, value_name = "FORMAT")]
    format: Option<String>,
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

/// Titles of `node ls` fields for `table` templates. Docker's TLSStatus is left out: nodes do not report their
/// certificate's issuer, so it could only be guessed.
const LS_TITLES: &[(&str, &str)] = &[
    ("ID", "ID"),
    ("Hostname", "HOSTNAME"),
    ("Status", "STATUS"),
    ("Availability", "AVAILABILITY"),
    ("ManagerStatus", "MANAGER STATUS"),
    ("EngineVersion", "ENGINE VERSION"),
    ("Self", "SELF"),
];

/// The rows of `node ls` with Docker's field names, sorted by hostname as Docker does.
fn ls_rows(nodes: &mut [Node], self_id: &str) -> Vec<Value> {
    nodes.sort_by(|a, b| a.description.hostname.cmp(&b.description.hostname).then(a.id.cmp(&b.id)));
    nodes
        .iter()
        .map(|n| {
            json!({
                "ID": n.id,
                "Hostname": n.description.hostname,
                "Status": n.status.state.to_string(),
                "Availability": n.spec.availability.to_string(),
                "ManagerStatus": manager_status(n),
                "EngineVersion": n.description.engine.engine_version,
                "Self": n.id == self_id,
            })
        })
        .collect()
}

/// The default table: the current node's id marked with ` *`.
fn ls_table(rows: &[Value]) -> Table {
    let mut t = Table::new(&["ID", "HOSTNAME", "STATUS", "AVAILABILITY", "MANAGER STATUS", "ENGINE VERSION"]);
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    for r in rows {
        let id = if r["Self"] == true { format!("{} *", text(&r["ID"])) } else { text(&r["ID"]) };
        let mut cells = vec![id];
        cells.extend(["Hostname", "Status", "Availability", "ManagerStatus", "EngineVersion"].map(|k| text(&r[k])));
        t.row(cells);
    }
    t
}

async fn self_id(client: &mut Client) -> anyhow::Result<String> {
    Ok(rpc(client.engine.info(Empty {}).await)?.swarm.node_id)
}

async fn ls(client: &mut Client, a: LsArgs) -> anyhow::Result<()> {
    let format = Format::from_flags(a.quiet, a.format.as_deref())?;
    let mut nodes = rpc(client.control.list_nodes(Empty {}).await)?.nodes;
    if let Format::Quiet = format {
        for n in &nodes {
            println!("{}", n.id);
        }
        return Ok(());
    }
    let me = self_id(client).await?;
    let rows = ls_rows(&mut nodes, &me);
    match format {
        Format::Template(t) => print_rows(&t, &rows, LS_TITLES),
        _ => {
            ls_table(&rows).print();
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
        print_inspected(&found, a.format.as_deref())?;
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
        assert_eq!(
            rows[0],
            json!({"ID": "aaa", "Hostname": "host-a", "Status": "Ready", "Availability": "Active",
                   "ManagerStatus": "Leader", "EngineVersion": "0.1.0", "Self": true})
        );
        assert_eq!((&rows[1]["ManagerStatus"], &rows[1]["Self"]), (&json!(""), &json!(false)));
        assert_eq!(rows[2]["ManagerStatus"], "Reachable");
        let table = ls_table(&rows).render();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[1], "aaa *     host-a     Ready     Active         Leader           0.1.0");
        assert!(lines[2].starts_with("bbb       host-b"), "{table}");
        let json = crate::template::Template::parse("json").unwrap().render_rows(&rows, LS_TITLES).unwrap();
        assert_eq!(
            json.lines().next().unwrap(),
            r#"{"Availability":"Active","EngineVersion":"0.1.0","Hostname":"host-a","ID":"aaa","ManagerStatus":"Leader","Self":true,"Status":"Ready"}"#
        );
        let t = crate::template::Template::parse("table {{.Hostname}}\\t{{.Self}}").unwrap();
        assert_eq!(
            t.render_rows(&rows[..2], LS_TITLES).unwrap(),
            "HOSTNAME   SELF\nhost-a     true\nhost-b     false\n"
        );
    }

    #[test]
    fn pretty_node() {
        let out = pretty(&node("aaa", "host-a", Some(true)));
        assert!(out.contains("Hostname:\t\thost-a"));
        assert!(out.contains(" Leader:\t\tYes"));
    }
}
