//! `shoal node …`: ls, inspect, ps, update, promote, demote and rm, with Docker's flags, columns and messages
//! (the current node's id marked with ` *` in `ls`).

use crate::client::{rpc, Client};
use crate::output::{bytes_size, check_format, print_inspected, print_rows, table_of, Format, Table};
use crate::service::{keep_task, parse_filter, ps_rows, sort_tasks, PsFilter, PS_COLUMNS};
use crate::Tally;
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::fmt::Write;
use std::time::SystemTime;
use swarm::api::control::{Empty, GetRequest, ListTasksRequest, RemoveNodeRequest, UpdateNodeRequest};
use swarm::api::{Node, NodeAvailability, NodeRole, Reachability, Timestamp};

#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// List nodes in the swarm
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Display detailed information on one or more nodes
    Inspect(InspectArgs),
    /// List tasks running on one or more nodes, defaults to current node
    Ps(PsArgs),
    /// Update a node
    Update(UpdateArgs),
    /// Promote one or more nodes to manager in the swarm
    Promote(RoleArgs),
    /// Demote one or more nodes from manager in the swarm
    Demote(RoleArgs),
    /// Remove one or more nodes from the swarm
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
}

#[derive(Debug, Args)]
pub struct LsArgs {
    #[command(flatten)]
    listing: crate::output::ListingArgs,
    /// Filter output based on conditions provided (id, label, node.label, membership, name, role)
    #[arg(short, long = "filter", value_parser = parse_ls_filter, value_name = "FILTER")]
    filter: Vec<LsFilter>,
}

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

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Nodes (id, hostname, or "self"; default: this node)
    #[arg(value_name = "NODE", default_value = "self")]
    nodes: Vec<String>,
    /// Filter output based on conditions provided (desired-state, id, name, node)
    #[arg(short, long = "filter", value_parser = parse_filter, value_name = "FILTER")]
    filter: Vec<PsFilter>,
    /// Pretty-print tasks using a Go template
    #[arg(long, value_parser = check_format, value_name = "FORMAT")]
    format: Option<String>,
    /// Do not map IDs to Names
    #[arg(long = "no-resolve")]
    no_resolve: bool,
    /// Do not truncate output
    #[arg(long = "no-trunc")]
    no_trunc: bool,
    /// Only display task IDs
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Node (id or hostname)
    #[arg(value_name = "NODE")]
    node: String,
    /// Availability of the node ("active", "pause", "drain")
    #[arg(long, value_parser = parse_availability, value_name = "AVAILABILITY")]
    availability: Option<NodeAvailability>,
    /// Add or update a node label (key=value)
    #[arg(long = "label-add", value_parser = parse_label, value_name = "LABEL")]
    label_add: Vec<(String, String)>,
    /// Remove a node label if exists
    #[arg(long = "label-rm", value_name = "KEY")]
    label_rm: Vec<String>,
    /// Role of the node ("worker", "manager")
    #[arg(long, value_parser = parse_role, value_name = "ROLE")]
    role: Option<NodeRole>,
}

#[derive(Debug, Args)]
pub struct RoleArgs {
    #[arg(required = true, value_name = "NODE")]
    nodes: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    #[arg(required = true, value_name = "NODE")]
    nodes: Vec<String>,
    /// Force remove a node from the swarm
    #[arg(short, long)]
    force: bool,
}

pub async fn run(client: &mut Client, cmd: NodeCmd) -> anyhow::Result<()> {
    match cmd {
        NodeCmd::Ls(a) => ls(client, a).await,
        NodeCmd::Inspect(a) => inspect(client, a).await,
        NodeCmd::Ps(a) => ps(client, a).await,
        NodeCmd::Update(a) => {
            let changes = NodeChanges::from(&a);
            update_nodes(client, std::slice::from_ref(&a.node), |n| changes.apply(n), |arg| println!("{arg}")).await
        }
        NodeCmd::Promote(a) => {
            let promote = |n: &mut Node| set_role(n, NodeRole::Manager);
            update_nodes(client, &a.nodes, promote, |arg| println!("Node {arg} promoted to a manager in the swarm."))
                .await
        }
        NodeCmd::Demote(a) => {
            let demote = |n: &mut Node| set_role(n, NodeRole::Worker);
            update_nodes(client, &a.nodes, demote, |arg| println!("Manager {arg} demoted in the swarm.")).await
        }
        NodeCmd::Rm(a) => rm(client, a).await,
    }
}

fn parse_availability(s: &str) -> Result<NodeAvailability, String> {
    match s.to_ascii_lowercase().as_str() {
        "active" => Ok(NodeAvailability::Active),
        "pause" => Ok(NodeAvailability::Pause),
        "drain" => Ok(NodeAvailability::Drain),
        _ => Err(format!("invalid Availability: {s:?} (expected \"active\", \"pause\" or \"drain\")")),
    }
}

fn parse_role(s: &str) -> Result<NodeRole, String> {
    match s.to_ascii_lowercase().as_str() {
        "worker" => Ok(NodeRole::Worker),
        "manager" => Ok(NodeRole::Manager),
        _ => Err(format!("invalid Role: {s:?} (expected \"worker\" or \"manager\")")),
    }
}

/// `key=value` or `key` (empty value), Docker's label rules: the key is not empty and has no whitespace.
fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').unwrap_or((s, ""));
    if k.trim().is_empty() {
        return Err(format!("invalid label '{s}': empty name"));
    }
    if k.chars().any(char::is_whitespace) {
        return Err(format!("label '{k}' contains whitespaces"));
    }
    Ok((k.to_string(), v.to_string()))
}

/// What `node update` changes; the rest of the spec is kept as read.
#[derive(Debug, Default)]
struct NodeChanges {
    availability: Option<NodeAvailability>,
    role: Option<NodeRole>,
    label_add: Vec<(String, String)>,
    label_rm: Vec<String>,
}

impl From<&UpdateArgs> for NodeChanges {
    fn from(a: &UpdateArgs) -> Self {
        NodeChanges {
            availability: a.availability,
            role: a.role,
            label_add: a.label_add.clone(),
            label_rm: a.label_rm.clone(),
        }
    }
}

/// Why a node was not changed.
#[derive(Debug, PartialEq, Eq)]
enum Unchanged {
    /// Nothing to do (promoting a manager, demoting a worker): the message is printed, the command goes on.
    Already(String),
    /// Bad input: the command fails with this message.
    Error(String),
}

impl NodeChanges {
    /// Applies the changes to `n`'s spec as Docker merges them: role, availability, labels added, then removed.
    fn apply(&self, n: &mut Node) -> Result<(), Unchanged> {
        let spec = &mut n.spec;
        if let Some(r) = self.role {
            spec.desired_role = r;
        }
        if let Some(a) = self.availability {
            spec.availability = a;
        }
        for (k, v) in &self.label_add {
            spec.annotations.labels.insert(k.clone(), v.clone());
        }
        for k in &self.label_rm {
            if spec.annotations.labels.remove(k).is_none() {
                return Err(Unchanged::Error(format!("key {k} doesn't exist in node's labels")));
            }
        }
        Ok(())
    }
}

/// `promote` / `demote`: a node already in that role is reported and skipped, as Docker does.
fn set_role(n: &mut Node, role: NodeRole) -> Result<(), Unchanged> {
    if n.spec.desired_role == role {
        return Err(Unchanged::Already(format!("Node {} is already a {role}.", n.id)));
    }
    n.spec.desired_role = role;
    Ok(())
}

/// Docker's update loop: for each node, read it, merge the change, write it with the version read, report; the
/// first error ends the command.
async fn update_nodes(
    client: &mut Client,
    args: &[String],
    merge: impl Fn(&mut Node) -> Result<(), Unchanged>,
    success: impl Fn(&str),
) -> anyhow::Result<()> {
    for arg in args {
        let key = if arg == "self" { self_id(client).await? } else { arg.clone() };
        // The node's own session writes its node too (READY, its address, a role change under way), so a write
        // read just before can be out of sequence; the change is merged again into a fresh read, a few times.
        let mut attempt = 1;
        loop {
            let mut node = rpc(client.control.get_node(GetRequest { id_or_name: key.clone() }).await)?;
            match merge(&mut node) {
                Ok(()) => {}
                Err(Unchanged::Already(msg)) => {
                    println!("{msg}");
                    break;
                }
                Err(Unchanged::Error(msg)) => anyhow::bail!(msg),
            }
            let req = UpdateNodeRequest { node_id: node.id.clone(), version: node.meta.version, spec: node.spec };
            match client.control.update_node(req).await {
                Err(s) if attempt < NODE_UPDATE_ATTEMPTS && out_of_sequence(&s) => attempt += 1,
                r => {
                    rpc(r)?;
                    success(arg);
                    break;
                }
            }
        }
    }
    Ok(())
}

/// Reads and writes of one node update before a conflict is reported.
const NODE_UPDATE_ATTEMPTS: u32 = 3;

/// Whether the daemon refused a write because the object changed since it was read.
fn out_of_sequence(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::FailedPrecondition && s.message().contains("update out of sequence")
}

async fn rm(client: &mut Client, a: RmArgs) -> anyhow::Result<()> {
    let mut tally = Tally::default();
    for n in &a.nodes {
        let req = RemoveNodeRequest { node_id: n.clone(), force: a.force };
        if tally.ok(rpc(client.control.remove_node(req).await)).is_some() {
            println!("{n}");
        }
    }
    tally.finish()
}

async fn ps(client: &mut Client, a: PsArgs) -> anyhow::Result<()> {
    let format = Format::from_flags(a.quiet, a.format.as_deref())?;
    let mut tally = Tally::default();
    let mut tasks = Vec::new();
    let desired_states = crate::service::desired_states(&a.filter);
    for name in &a.nodes {
        let key = if name == "self" { self_id(client).await? } else { name.clone() };
        let Some(node) = tally.ok(rpc(client.control.get_node(GetRequest { id_or_name: key }).await)) else {
            continue;
        };
        let req =
            ListTasksRequest { node_ids: vec![node.id], desired_states: desired_states.clone(), ..Default::default() };
        tasks.extend(tally.ok(client.list_tasks(req).await).unwrap_or_default());
    }
    let names = crate::service::node_names(client).await?;
    tasks.retain(|t| keep_task(t, &a.filter, &names));
    sort_tasks(&mut tasks);
    let shown_names = if a.no_resolve { HashMap::new() } else { names };
    if a.no_resolve {
        // Docker's --no-resolve: service ids in task names, node ids in the NODE column.
        for t in &mut tasks {
            t.service_annotations.name = t.service_id.clone();
        }
    }
    let now = SystemTime::now();
    match format {
        Format::Template(t) => print_rows(&t, &ps_rows(&tasks, &shown_names, a.no_trunc, t.table, now), PS_COLUMNS)?,
        Format::Quiet => {
            for t in &tasks {
                println!("{}", if a.no_trunc { t.id.as_str() } else { crate::output::short_id(&t.id) });
            }
        }
        Format::Table => table_of(&ps_rows(&tasks, &shown_names, a.no_trunc, true, now), PS_COLUMNS).print(),
    }
    tally.finish()
}

/// One `node ls --filter`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LsFilter {
    Id(String),
    Name(String),
    Role(NodeRole),
    Membership(String),
    /// `label=k` or `label=k=v`: an engine label.
    EngineLabel(String, Option<String>),
    /// `node.label=k` or `node.label=k=v`: a node label.
    NodeLabel(String, Option<String>),
}

fn parse_ls_filter(s: &str) -> Result<LsFilter, String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("bad format of filter (expected name=value): {s}"))?;
    let label = |v: &str| match v.split_once('=') {
        Some((k, v)) => (k.to_string(), Some(v.to_string())),
        None => (v.to_string(), None),
    };
    match k {
        "id" => Ok(LsFilter::Id(v.into())),
        "name" => Ok(LsFilter::Name(v.into())),
        "role" => parse_role(v).map(LsFilter::Role).map_err(|_| format!("Invalid role filter value {v:?}")),
        "membership" => match v.to_ascii_lowercase().as_str() {
            "accepted" | "pending" => Ok(LsFilter::Membership(v.to_ascii_lowercase())),
            _ => Err(format!("Invalid membership filter value {v:?}")),
        },
        "label" => {
            let (k, v) = label(v);
            Ok(LsFilter::EngineLabel(k, v))
        }
        "node.label" => {
            let (k, v) = label(v);
            Ok(LsFilter::NodeLabel(k, v))
        }
        other => Err(format!("invalid filter '{other}'")),
    }
}

/// Docker's `node ls` filters: alternatives within a kind, every kind must match.
fn keep_node(n: &Node, filters: &[LsFilter]) -> bool {
    let has = |labels: &std::collections::BTreeMap<String, String>, k: &str, v: &Option<String>| {
        labels.get(k).is_some_and(|actual| v.as_ref().is_none_or(|v| v == actual))
    };
    let one = |f: &LsFilter| match f {
        LsFilter::Id(p) => n.id.starts_with(p.as_str()),
        LsFilter::Name(p) => {
            n.description.hostname.starts_with(p.as_str()) || n.spec.annotations.name.starts_with(p.as_str())
        }
        LsFilter::Role(r) => n.spec.desired_role == *r,
        // Every node in the store was accepted (a join is granted or refused at once).
        LsFilter::Membership(m) => m == "accepted",
        LsFilter::EngineLabel(k, v) => has(&n.description.engine.labels, k, v),
        LsFilter::NodeLabel(k, v) => has(&n.spec.annotations.labels, k, v),
    };
    let kind = |f: &LsFilter| std::mem::discriminant(f);
    filters.iter().all(|f| filters.iter().filter(|g| kind(g) == kind(f)).any(one))
}

fn reachability(r: Reachability) -> &'static str {
    match r {
        Reachability::Reachable => "Reachable",
        Reachability::Unreachable => "Unreachable",
        Reachability::Unknown => "Unknown",
    }
}

/// Docker's MANAGER STATUS column: Leader, or the reachability of other managers; empty for workers.
fn manager_status(n: &Node) -> String {
    match &n.manager_status {
        None => String::new(),
        Some(m) if m.leader => "Leader".into(),
        Some(m) => reachability(m.reachability).into(),
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

/// The rows of `node ls` with Docker's field names, sorted by hostname in natural order as Docker does
/// (`node9` before `node10`).
fn ls_rows(nodes: &mut [Node], self_id: &str) -> Vec<Value> {
    nodes.sort_by(|a, b| {
        alphanumeric_sort::compare_str(&a.description.hostname, &b.description.hostname).then(a.id.cmp(&b.id))
    });
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
    let format = Format::from_flags(a.listing.quiet, a.listing.format.as_deref())?;
    let mut nodes = rpc(client.control.list_nodes(Empty {}).await)?.nodes;
    nodes.retain(|n| keep_node(n, &a.filter));
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

/// A time as Go prints a `time.Time` (Docker's "Joined at"): `2026-12-02 05:46:31.123456789 +0000 UTC`, the
/// fraction without trailing zeros.
fn go_time(t: Timestamp) -> String {
    let rfc = humantime::format_rfc3339_nanos(t.0).to_string();
    let (date_time, _) = rfc.split_once('Z').unwrap_or((&rfc, ""));
    let date_time = date_time.replacen('T', " ", 1);
    let trimmed = match date_time.split_once('.') {
        Some((whole, frac)) => {
            let frac = frac.trim_end_matches('0');
            if frac.is_empty() {
                whole.to_string()
            } else {
                format!("{whole}.{frac}")
            }
        }
        None => date_time,
    };
    format!("{trimmed} +0000 UTC")
}

/// Docker's `- k=v` label lines (`- k` for an empty value).
fn label_lines(o: &mut String, title: &str, labels: &std::collections::BTreeMap<String, String>) {
    if labels.is_empty() {
        return;
    }
    let _ = writeln!(o, "{title}:");
    for (k, v) in labels {
        if v.is_empty() {
            let _ = writeln!(o, " - {k}");
        } else {
            let _ = writeln!(o, " - {k}={v}");
        }
    }
}

/// Docker's `node inspect --pretty` layout (its template's odd space-then-tab alignments included). Docker's
/// "TLS Info" section is left out: nodes do not report their certificate's issuer.
fn pretty(n: &Node) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "ID:\t\t\t{}", n.id);
    if !n.spec.annotations.name.is_empty() {
        let _ = writeln!(o, "Name:\t\t\t{}", n.spec.annotations.name);
    }
    label_lines(&mut o, "Labels", &n.spec.annotations.labels);
    let _ = writeln!(o, "Hostname:              \t{}", n.description.hostname);
    let _ = writeln!(o, "Joined at:             \t{}", go_time(n.meta.created_at));
    let _ = writeln!(o, "Status:");
    let _ = writeln!(o, " State:\t\t\t{}", n.status.state);
    if !n.status.message.is_empty() {
        let _ = writeln!(o, " Message:              \t{}", capitalize(&n.status.message));
    }
    let _ = writeln!(o, " Availability:         \t{}", n.spec.availability);
    if !n.status.addr.is_empty() {
        let _ = writeln!(o, " Address:\t\t{}", n.status.addr);
    }
    if let Some(m) = &n.manager_status {
        let _ = writeln!(o, "Manager Status:");
        let _ = writeln!(o, " Address:\t\t{}", m.addr);
        let _ = writeln!(o, " Raft Status:\t\t{}", reachability(m.reachability));
        let _ = writeln!(o, " Leader:\t\t{}", if m.leader { "Yes" } else { "No" });
    }
    let _ = writeln!(o, "Platform:");
    let _ = writeln!(o, " Operating System:\t{}", n.description.platform.os);
    let _ = writeln!(o, " Architecture:\t\t{}", n.description.platform.architecture);
    let _ = writeln!(o, "Resources:");
    let _ = writeln!(o, " CPUs:\t\t\t{}", n.description.resources.nano_cpus / 1_000_000_000);
    let _ = writeln!(o, " Memory:\t\t{}", bytes_size(n.description.resources.memory_bytes.max(0) as u64));
    let _ = writeln!(o, "Engine Version:\t\t{}", n.description.engine.engine_version);
    label_lines(&mut o, "Engine Labels", &n.description.engine.labels);
    o
}

/// Docker's `PrettyPrint` of a message: first letter capitalized.
fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
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
        let mut natural = vec![node("x", "node10", None), node("y", "node9", None)];
        let order: Vec<Value> = ls_rows(&mut natural, "").into_iter().map(|r| r["Hostname"].clone()).collect();
        assert_eq!(order, ["node9", "node10"], "natural order, as Docker");
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
    fn pretty_is_dockers_layout() {
        let mut n = node("aaa", "host-a", Some(true));
        n.meta.created_at = Timestamp(SystemTime::UNIX_EPOCH + std::time::Duration::new(1_700_000_000, 120_000_000));
        n.spec.annotations.labels.insert("zone".into(), "east".into());
        n.spec.annotations.labels.insert("ssd".into(), String::new());
        n.status.addr = "10.0.0.1".into();
        n.description.platform = swarm::api::Platform { os: "linux".into(), architecture: "amd64".into() };
        n.description.resources = swarm::api::Resources { nano_cpus: 2_000_000_000, memory_bytes: 8 << 30, pids: 0 };
        let expected = [
            "ID:\t\t\taaa",
            "Labels:",
            " - ssd",
            " - zone=east",
            "Hostname:              \thost-a",
            "Joined at:             \t2023-11-14 22:13:20.12 +0000 UTC",
            "Status:",
            " State:\t\t\tReady",
            " Availability:         \tActive",
            " Address:\t\t10.0.0.1",
            "Manager Status:",
            " Address:\t\t10.0.0.1:2377",
            " Raft Status:\t\tReachable",
            " Leader:\t\tYes",
            "Platform:",
            " Operating System:\tlinux",
            " Architecture:\t\tamd64",
            "Resources:",
            " CPUs:\t\t\t2",
            " Memory:\t\t8GiB",
            "Engine Version:\t\t0.1.0",
        ];
        assert_eq!(pretty(&n).lines().collect::<Vec<_>>(), expected);
        n.manager_status = None;
        n.status.message = "heartbeat failure".into();
        let out = pretty(&n);
        assert!(!out.contains("Manager Status"), "{out}");
        assert!(out.contains(" Message:              \tHeartbeat failure\n"), "{out}");
        assert_eq!(go_time(Timestamp(SystemTime::UNIX_EPOCH)), "1970-01-01 00:00:00 +0000 UTC");
    }

    fn parse(argv: &[&str]) -> Result<NodeCmd, String> {
        use clap::Parser;
        match crate::Cli::try_parse_from(["shoal", "node"].iter().chain(argv)) {
            Ok(crate::Cli { command: crate::Command::Node(cmd), .. }) => Ok(cmd),
            Ok(other) => panic!("not a node command: {other:?}"),
            Err(e) => Err(crate::clap_error_line(&e)),
        }
    }

    #[test]
    fn update_flags_merge_as_dockers() {
        let NodeCmd::Update(a) = parse(&[
            "update",
            "--availability",
            "drain",
            "--label-add",
            "zone=east",
            "--label-add",
            "ssd",
            "--label-rm",
            "old",
            "--role",
            "worker",
            "host-a",
        ])
        .unwrap() else {
            panic!("not update")
        };
        assert_eq!(a.node, "host-a");
        let mut n = node("aaa", "host-a", Some(true));
        n.spec.annotations.labels.insert("old".into(), "1".into());
        n.spec.annotations.labels.insert("keep".into(), "2".into());
        NodeChanges::from(&a).apply(&mut n).unwrap();
        assert_eq!(n.spec.availability, NodeAvailability::Drain);
        assert_eq!(n.spec.desired_role, NodeRole::Worker);
        let labels: Vec<(&str, &str)> =
            n.spec.annotations.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(labels, vec![("keep", "2"), ("ssd", ""), ("zone", "east")]);

        // Only what was given changes; removing a label that is not there fails the command.
        let NodeCmd::Update(a) = parse(&["update", "--label-rm", "nope", "aaa"]).unwrap() else { panic!() };
        let before = n.clone();
        let e = NodeChanges::from(&a).apply(&mut n).unwrap_err();
        assert_eq!(e, Unchanged::Error("key nope doesn't exist in node's labels".into()));
        assert_eq!((n.spec.availability, n.spec.desired_role), (before.spec.availability, before.spec.desired_role));
    }

    #[test]
    fn bad_flag_values_are_one_docker_line() {
        assert_eq!(
            parse(&["update", "--availability", "sleepy", "n"]).unwrap_err(),
            "invalid argument \"sleepy\" for \"--availability\" flag: invalid Availability: \"sleepy\" (expected \
             \"active\", \"pause\" or \"drain\")"
        );
        assert_eq!(
            parse(&["update", "--role", "boss", "n"]).unwrap_err(),
            "invalid argument \"boss\" for \"--role\" flag: invalid Role: \"boss\" (expected \"worker\" or \"manager\")"
        );
        assert_eq!(
            parse(&["update", "--label-add", "=x", "n"]).unwrap_err(),
            "invalid argument \"=x\" for \"--label-add\" flag: invalid label '=x': empty name"
        );
        assert!(parse(&["update", "--label-add", "a b=c", "n"])
            .unwrap_err()
            .ends_with("label 'a b' contains whitespaces"));
        assert!(parse(&["update"]).unwrap_err().contains("required"));
        assert!(parse(&["promote"]).unwrap_err().contains("required"));
        assert!(parse(&["ps", "-f", "colour=red"]).unwrap_err().contains("invalid filter 'colour'"));
    }

    #[test]
    fn only_a_version_conflict_is_retried() {
        let conflict = tonic::Status::failed_precondition(
            swarm::manager::store::ApplyError::OutOfSequence { kind: swarm::api::ObjectKind::Node, id: "n1".into() }
                .to_string(),
        );
        assert!(out_of_sequence(&conflict));
        assert!(!out_of_sequence(&tonic::Status::failed_precondition("node is down")));
        assert!(!out_of_sequence(&tonic::Status::not_found("update out of sequence")));
    }

    #[test]
    fn promote_demote_rm_and_ps_arguments() {
        let mut n = node("aaa", "host-a", Some(true));
        assert_eq!(
            set_role(&mut n, NodeRole::Manager),
            Err(Unchanged::Already("Node aaa is already a manager.".into()))
        );
        set_role(&mut n, NodeRole::Worker).unwrap();
        assert_eq!(n.spec.desired_role, NodeRole::Worker);
        assert_eq!(set_role(&mut n, NodeRole::Worker), Err(Unchanged::Already("Node aaa is already a worker.".into())));

        let NodeCmd::Rm(a) = parse(&["rm", "-f", "a", "b"]).unwrap() else { panic!() };
        assert_eq!((a.force, a.nodes), (true, vec!["a".to_string(), "b".to_string()]));
        let NodeCmd::Rm(a) = parse(&["remove", "a"]).unwrap() else { panic!() };
        assert!(!a.force);
        let NodeCmd::Ps(a) = parse(&["ps"]).unwrap() else { panic!() };
        assert_eq!(a.nodes, vec!["self"], "node ps defaults to this node");
        let NodeCmd::Ps(a) =
            parse(&["ps", "-f", "desired-state=running", "--no-trunc", "--no-resolve", "-q", "n1", "n2"]).unwrap()
        else {
            panic!()
        };
        assert_eq!(a.nodes, vec!["n1", "n2"]);
        assert_eq!(a.filter, vec![PsFilter::DesiredState(swarm::api::TaskState::Running)]);
        assert!(a.no_trunc && a.no_resolve && a.quiet);
    }

    #[test]
    fn ls_filters() {
        let mut w = node("bbb", "host-b", None);
        w.spec.desired_role = NodeRole::Worker;
        w.spec.annotations.labels.insert("zone".into(), "east".into());
        w.description.engine.labels.insert("disk".into(), "ssd".into());
        let m = node("aaa", "host-a", Some(true));
        let f = |s: &[&str]| s.iter().map(|s| parse_ls_filter(s).unwrap()).collect::<Vec<_>>();
        let kept = |filters: &[&str]| {
            let fs = f(filters);
            [&m, &w].into_iter().filter(|n| keep_node(n, &fs)).map(|n| n.id.as_str()).collect::<Vec<_>>()
        };
        assert_eq!(kept(&[]), vec!["aaa", "bbb"]);
        assert_eq!(kept(&["role=worker"]), vec!["bbb"]);
        assert_eq!(kept(&["role=manager", "role=worker"]), vec!["aaa", "bbb"], "alternatives of one kind");
        assert_eq!(kept(&["role=manager", "node.label=zone"]), Vec::<&str>::new(), "every kind must match");
        assert_eq!(kept(&["node.label=zone=east"]), vec!["bbb"]);
        assert_eq!(kept(&["node.label=zone=west"]), Vec::<&str>::new());
        assert_eq!(kept(&["label=disk=ssd"]), vec!["bbb"]);
        assert_eq!(kept(&["name=host-a"]), vec!["aaa"]);
        assert_eq!(kept(&["id=bb"]), vec!["bbb"]);
        assert_eq!(kept(&["membership=accepted"]), vec!["aaa", "bbb"]);
        assert!(parse_ls_filter("role=boss").is_err());
        assert!(parse_ls_filter("colour=red").is_err());
        assert!(parse(&["ls", "--filter", "nonsense"]).unwrap_err().contains("bad format of filter"));
    }
}
