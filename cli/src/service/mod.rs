//! `shoal service …`: create, update, rollback, ls, ps, inspect, scale, rm and logs, with Docker's flags, columns and messages.

mod create;
mod endpoint;
mod files;
mod flags;
pub mod image;
mod logs;
pub(crate) mod opts;
mod pretty;
mod update;

use crate::client::{rpc, Client};
use crate::output::{check_format, ellipsis, print_inspected, print_rows, short_id, state_since, table_of, Format};
use crate::progress;
use crate::Tally;
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::SystemTime;
use swarm::api::control::{
    Empty, GetRequest, ListServicesRequest, ListTasksRequest, ServiceWithStatus, UpdateServiceRequest,
};
use swarm::api::{familiar_image_ref, Health, Service, ServiceMode, Task, TaskState, UpdateState};

#[derive(Debug, Subcommand)]
pub enum ServiceCmd {
    /// Create a new service
    Create(Box<create::CreateArgs>),
    /// List services
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// List the tasks of one or more services
    Ps(PsArgs),
    /// Display detailed information on one or more services
    Inspect(InspectArgs),
    /// Scale one or multiple replicated services
    Scale(ScaleArgs),
    /// Update a service
    Update(Box<update::UpdateArgs>),
    /// Revert changes to a service's configuration
    Rollback(update::RollbackArgs),
    /// Remove one or more services
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
    /// Fetch the logs of a service
    Logs(logs::LogsArgs),
}

pub type LsArgs = crate::output::ListingArgs;

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Services (name, id or id prefix)
    #[arg(required = true, value_name = "SERVICE")]
    services: Vec<String>,
    /// Do not truncate output
    #[arg(long = "no-trunc")]
    no_trunc: bool,
    /// Only display task IDs
    #[arg(short, long)]
    quiet: bool,
    /// Format output using a custom template: 'table', 'table TEMPLATE', 'json', or a Go template
    #[arg(long, value_parser = check_format, value_name = "FORMAT")]
    format: Option<String>,
    /// Filter output (desired-state=running|shutdown|accepted, node=…, id=…, name=…)
    #[arg(short, long = "filter", value_parser = parse_filter, value_name = "FILTER")]
    filter: Vec<PsFilter>,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    #[arg(required = true, value_name = "SERVICE")]
    services: Vec<String>,
    /// Print the information in a human friendly format
    #[arg(long, conflicts_with = "format")]
    pretty: bool,
    /// Format output using a Go template ('{{.ID}}', '{{json .Spec}}')
    #[arg(short, long, value_parser = check_format, value_name = "FORMAT")]
    format: Option<String>,
}

#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// SERVICE=REPLICAS pairs
    #[arg(required = true, value_name = "SERVICE=REPLICAS")]
    pairs: Vec<String>,
    /// Exit immediately instead of waiting for the service to converge
    #[arg(short, long)]
    detach: bool,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    #[arg(required = true, value_name = "SERVICE")]
    services: Vec<String>,
}

pub async fn run(client: &mut Client, cmd: ServiceCmd) -> anyhow::Result<()> {
    match cmd {
        ServiceCmd::Create(a) => create::run(client, *a).await,
        ServiceCmd::Ls(a) => ls(client, a).await,
        ServiceCmd::Ps(a) => ps(client, a).await,
        ServiceCmd::Inspect(a) => inspect(client, a).await,
        ServiceCmd::Scale(a) => scale(client, a).await,
        ServiceCmd::Update(a) => update::run(client, *a).await,
        ServiceCmd::Rollback(a) => update::rollback(client, a).await,
        ServiceCmd::Rm(a) => rm(client, a).await,
        ServiceCmd::Logs(a) => logs::run(client, a).await,
    }
}

/// The image as `service ls` / `service ps` show it: familiar form, without a pinned digest.
fn display_image(image: &str) -> String {
    let familiar = familiar_image_ref(image);
    match familiar.split_once('@') {
        Some((name, _)) => name.to_string(),
        None => familiar,
    }
}

/// `service ls` columns: row field and table title (Docker's names).
pub(crate) const LS_COLUMNS: &[(&str, &str)] = &[
    ("ID", "ID"),
    ("Name", "NAME"),
    ("Mode", "MODE"),
    ("Replicas", "REPLICAS"),
    ("Image", "IMAGE"),
    ("Ports", "PORTS"),
];

/// The REPLICAS column: `running/desired`, for jobs Docker's `(completed/total completed)`, the per-node cap,
/// and (beyond Docker) a rollout that is under way or paused, so `service ls` shows it without an inspect.
fn replicas_text(s: &ServiceWithStatus, completed: u64) -> String {
    let spec = &s.service.spec;
    let mut replicas = format!("{}/{}", s.running_tasks, s.desired_tasks);
    match spec.mode {
        ServiceMode::ReplicatedJob { total_completions, .. } => {
            replicas.push_str(&format!(" ({completed}/{total_completions} completed)"));
        }
        ServiceMode::GlobalJob => replicas.push_str(&format!(" ({completed}/{} completed)", s.desired_tasks)),
        ServiceMode::Replicated { .. } | ServiceMode::Global => {}
    }
    let max = spec.task_template.placement.max_replicas;
    if max > 0 {
        replicas.push_str(&format!(" (max {max} per node)"));
    }
    let rollout = match s.service.update_status.as_ref().map(|u| u.state) {
        Some(UpdateState::Updating) => Some("updating"),
        Some(UpdateState::Paused) => Some("update paused"),
        Some(UpdateState::RollbackStarted) => Some("rolling back"),
        Some(UpdateState::RollbackPaused) => Some("rollback paused"),
        Some(UpdateState::Completed | UpdateState::RollbackCompleted) | None => None,
    };
    if let Some(r) = rollout {
        replicas.push_str(&format!(" ({r})"));
    }
    replicas
}

/// One `service ls` row with Docker's field names (what `--format json` prints and templates see); `completed`
/// counts a job's completed tasks.
pub(crate) fn ls_row(s: &ServiceWithStatus, completed: u64) -> Value {
    let spec = &s.service.spec;
    let replicas = replicas_text(s, completed);
    json!({
        "ID": short_id(&s.service.id),
        "Name": spec.annotations.name,
        "Mode": spec.mode.name(),
        "Replicas": replicas,
        "Image": display_image(&spec.task_template.container.image),
        "Ports": endpoint::ports_column(&s.service),
    })
}

async fn ls(client: &mut Client, a: LsArgs) -> anyhow::Result<()> {
    let format = Format::from_flags(a.quiet, a.format.as_deref())?;
    let mut services = client.list_services(ListServicesRequest::default()).await?;
    services.sort_by(|x, y| x.service.spec.annotations.name.cmp(&y.service.spec.annotations.name));
    // Jobs show their completions, which only the tasks tell: one more call, made only when there are jobs.
    let jobs: Vec<String> =
        services.iter().filter(|s| s.service.spec.mode.is_job()).map(|s| s.service.id.clone()).collect();
    let mut completed: HashMap<String, u64> = HashMap::new();
    if !jobs.is_empty() {
        let tasks = client.list_tasks(ListTasksRequest { service_ids: jobs, ..Default::default() }).await?;
        for s in &services {
            let n = tasks
                .iter()
                .filter(|t| t.service_id == s.service.id && t.status.state == TaskState::Complete)
                .filter(|t| progress::up_to_date(&s.service, t))
                .count() as u64;
            completed.insert(s.service.id.clone(), n);
        }
    }
    let rows: Vec<Value> =
        services.iter().map(|s| ls_row(s, completed.get(&s.service.id).copied().unwrap_or(0))).collect();
    match format {
        Format::Template(t) => print_rows(&t, &rows, LS_COLUMNS),
        Format::Quiet => {
            for s in &services {
                println!("{}", short_id(&s.service.id));
            }
            Ok(())
        }
        Format::Table => {
            table_of(&rows, LS_COLUMNS).print();
            Ok(())
        }
    }
}

/// One `service ps --filter` (and `node ps --filter`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PsFilter {
    DesiredState(TaskState),
    Node(String),
    Id(String),
    Name(String),
}

/// The desired states `--filter desired-state=…` asks for (none: every task), which the manager filters on.
pub(crate) fn desired_states(filters: &[PsFilter]) -> Vec<TaskState> {
    filters
        .iter()
        .filter_map(|f| match f {
            PsFilter::DesiredState(s) => Some(*s),
            _ => None,
        })
        .collect()
}

pub(crate) fn parse_filter(s: &str) -> Result<PsFilter, String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("bad format of filter (expected name=value): {s}"))?;
    match k {
        "desired-state" => match v {
            "running" => Ok(PsFilter::DesiredState(TaskState::Running)),
            "shutdown" => Ok(PsFilter::DesiredState(TaskState::Shutdown)),
            "accepted" => Ok(PsFilter::DesiredState(TaskState::Accepted)),
            other => {
                Err(format!("invalid desired-state filter value {other:?}: must be running, shutdown or accepted"))
            }
        },
        "node" => Ok(PsFilter::Node(v.to_string())),
        "id" => Ok(PsFilter::Id(v.to_string())),
        "name" => Ok(PsFilter::Name(v.to_string())),
        other => Err(format!("invalid filter '{other}': must be desired-state, node, id or name")),
    }
}

/// Applies the client-side filters (the desired-state one is also sent to the server).
pub(crate) fn keep_task(t: &Task, filters: &[PsFilter], node_names: &HashMap<String, String>) -> bool {
    let one = |f: &PsFilter| match f {
        PsFilter::DesiredState(s) => t.desired_state == *s,
        PsFilter::Node(n) => &t.node_id == n || node_names.get(&t.node_id) == Some(n),
        PsFilter::Id(p) => t.id.starts_with(p.as_str()),
        PsFilter::Name(n) => t.name().starts_with(n.as_str()),
    };
    // Filters of the same kind are alternatives; different kinds must all match (as Docker's filters).
    let kinds = [
        filters.iter().filter(|f| matches!(f, PsFilter::DesiredState(_))).collect::<Vec<_>>(),
        filters.iter().filter(|f| matches!(f, PsFilter::Node(_))).collect(),
        filters.iter().filter(|f| matches!(f, PsFilter::Id(_))).collect(),
        filters.iter().filter(|f| matches!(f, PsFilter::Name(_))).collect(),
    ];
    kinds.iter().all(|k| k.is_empty() || k.iter().any(|f| one(f)))
}

/// Orders tasks as Docker does: by service, then slot (or node, for global services), newest first within one.
pub(crate) fn sort_tasks(tasks: &mut [Task]) {
    tasks.sort_by(|a, b| {
        (&a.service_annotations.name, a.slot, &a.node_id)
            .cmp(&(&b.service_annotations.name, b.slot, &b.node_id))
            .then(b.meta.created_at.cmp(&a.meta.created_at))
            .then(b.status.timestamp.cmp(&a.status.timestamp))
    });
}

/// Docker truncates `service ps` errors to 30 characters unless `--no-trunc`.
const MAX_ERR_LEN: usize = 30;

/// `service ps` columns: row field and table title (Docker's names).
pub(crate) const PS_COLUMNS: &[(&str, &str)] = &[
    ("ID", "ID"),
    ("Name", "NAME"),
    ("Image", "IMAGE"),
    ("Node", "NODE"),
    ("DesiredState", "DESIRED STATE"),
    ("CurrentState", "CURRENT STATE"),
    ("Error", "ERROR"),
    ("Ports", "PORTS"),
];

/// The rows of `service ps` with Docker's field names; `tasks` must be sorted with [`sort_tasks`]. In a table,
/// older tasks of a slot are shown as ` \_ web.1` under the current one; other formats get the plain name, as
/// in Docker.
pub(crate) fn ps_rows(
    tasks: &[Task],
    node_names: &HashMap<String, String>,
    no_trunc: bool,
    table: bool,
    now: SystemTime,
) -> Vec<Value> {
    let mut rows = Vec::new();
    let mut prev_name = String::new();
    for t in tasks {
        let name = t.name();
        let shown_name = if table && name == prev_name { format!(" \\_ {name}") } else { name.clone() };
        prev_name = name;
        let id = if no_trunc { t.id.clone() } else { short_id(&t.id).to_string() };
        let image =
            if no_trunc { familiar_image_ref(&t.spec.container.image) } else { display_image(&t.spec.container.image) };
        let node = node_names.get(&t.node_id).cloned().unwrap_or_else(|| t.node_id.clone());
        let since = now.duration_since(t.status.timestamp.0).unwrap_or_default();
        let err = if no_trunc { t.status.err.clone() } else { ellipsis(&t.status.err, MAX_ERR_LEN) };
        let err = if err.is_empty() { err } else { format!("\"{}\"", err.replace('\n', " ")) };
        rows.push(json!({
            "ID": id,
            "Name": shown_name,
            "Image": image,
            "Node": node,
            "DesiredState": t.desired_state.title(),
            "CurrentState": current_state(t, since),
            "Error": err,
            "Ports": endpoint::task_ports_column(t),
        }));
    }
    rows
}

/// CURRENT STATE: `Running 5 seconds ago`, with a health-checked running task's health as `docker ps` shows it
/// (`(healthy)`, `(unhealthy)`, `(health: starting)`).
fn current_state(t: &Task, since: std::time::Duration) -> String {
    let text = state_since(&t.status.state.title(), since);
    let health = t.status.container.as_ref().and_then(|c| c.health);
    match (t.status.state, health) {
        (TaskState::Running, Some(Health::Healthy)) => format!("{text} (healthy)"),
        (TaskState::Running, Some(Health::Unhealthy)) => format!("{text} (unhealthy)"),
        (TaskState::Running, Some(Health::Starting)) => format!("{text} (health: starting)"),
        _ => text,
    }
}

pub(crate) async fn node_names(client: &mut Client) -> anyhow::Result<HashMap<String, String>> {
    let nodes = rpc(client.control.list_nodes(Empty {}).await)?.nodes;
    Ok(nodes.into_iter().map(|n| (n.id, n.description.hostname)).collect())
}

async fn ps(client: &mut Client, a: PsArgs) -> anyhow::Result<()> {
    let format = Format::from_flags(a.quiet, a.format.as_deref())?;
    let mut service_ids = Vec::new();
    for s in &a.services {
        let svc = rpc(client.control.get_service(GetRequest { id_or_name: s.clone() }).await)?;
        service_ids.push(svc.id);
    }
    let desired_states = desired_states(&a.filter);
    let mut tasks = client.list_tasks(ListTasksRequest { service_ids, desired_states, ..Default::default() }).await?;
    let names = node_names(client).await?;
    tasks.retain(|t| keep_task(t, &a.filter, &names));
    sort_tasks(&mut tasks);
    let now = SystemTime::now();
    match format {
        Format::Template(t) => print_rows(&t, &ps_rows(&tasks, &names, a.no_trunc, t.table, now), PS_COLUMNS),
        Format::Quiet => {
            for t in &tasks {
                println!("{}", if a.no_trunc { t.id.as_str() } else { short_id(&t.id) });
            }
            Ok(())
        }
        Format::Table => {
            table_of(&ps_rows(&tasks, &names, a.no_trunc, true, now), PS_COLUMNS).print();
            Ok(())
        }
    }
}

async fn inspect(client: &mut Client, a: InspectArgs) -> anyhow::Result<()> {
    let mut found = Vec::new();
    let mut tally = Tally::default();
    for s in &a.services {
        found.extend(tally.ok(rpc(client.control.get_service(GetRequest { id_or_name: s.clone() }).await)));
    }
    if a.pretty {
        for (i, s) in found.iter().enumerate() {
            if i > 0 {
                println!();
            }
            print!("{}", pretty::service(s));
        }
    } else if !found.is_empty() {
        print_inspected(&found, a.format.as_deref())?;
    }
    tally.finish()
}

/// Parses `web=5`; Docker's messages.
fn parse_scale(pair: &str) -> anyhow::Result<(String, u64)> {
    let (name, n) = pair
        .split_once('=')
        .filter(|(name, _)| !name.is_empty())
        .ok_or_else(|| anyhow::anyhow!("invalid scale specifier '{pair}'"))?;
    let n =
        n.parse::<u64>().map_err(|_| anyhow::anyhow!("invalid replicas value {n}: must be a non-negative integer"))?;
    Ok((name.to_string(), n))
}

async fn scale_one(client: &mut Client, name: &str, replicas: u64) -> anyhow::Result<Service> {
    let svc = rpc(client.control.get_service(GetRequest { id_or_name: name.to_string() }).await)?;
    let mut spec = svc.spec.clone();
    match &mut spec.mode {
        ServiceMode::Replicated { replicas: r } => *r = replicas,
        ServiceMode::ReplicatedJob { total_completions, .. } => *total_completions = replicas,
        ServiceMode::Global | ServiceMode::GlobalJob => {
            anyhow::bail!("{name}: scale can only be used with replicated or replicated-job mode")
        }
    }
    rpc(client
        .control
        .update_service(UpdateServiceRequest { id: svc.id.clone(), version: svc.meta.version, spec, rollback: false })
        .await)
}

async fn scale(client: &mut Client, a: ScaleArgs) -> anyhow::Result<()> {
    // All specifiers are checked before any service is touched, so a typo does not leave a half-done scale.
    let pairs = a.pairs.iter().map(|p| parse_scale(p)).collect::<anyhow::Result<Vec<_>>>()?;
    let mut tally = Tally::default();
    let mut scaled = Vec::new();
    for (name, n) in &pairs {
        if let Some(svc) = tally.ok(scale_one(client, name, *n).await.map_err(|e| crate::render_error(&e))) {
            println!("{name} scaled to {n}");
            scaled.push(svc);
        }
    }
    if !a.detach {
        for svc in &scaled {
            progress::wait_converged(client, &svc.id, &svc.spec.annotations.name, false).await?;
        }
    }
    tally.finish()
}

async fn rm(client: &mut Client, a: RmArgs) -> anyhow::Result<()> {
    let mut tally = Tally::default();
    for s in &a.services {
        if tally.ok(rpc(client.control.remove_service(GetRequest { id_or_name: s.clone() }).await)).is_some() {
            println!("{s}");
        }
    }
    tally.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use swarm::api::Timestamp;

    fn at(s: u64) -> Timestamp {
        Timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(s))
    }

    fn task(id: &str, slot: u64, node: &str, state: TaskState, desired: TaskState, created: u64, err: &str) -> Task {
        // Built from JSON so the fixture keeps compiling when the API gains (defaulted) fields.
        let mut t: Task = serde_json::from_value(serde_json::json!({
            "id": id, "service_id": "s", "service_annotations": {"name": "web"}, "slot": slot, "node_id": node,
            "spec": {"container": {"image": "docker.io/library/busybox:latest"}},
            "status": {"state": "new", "err": err}, "desired_state": "running"
        }))
        .unwrap();
        t.meta.created_at = at(created);
        t.status.timestamp = at(created + 1);
        t.status.state = state;
        t.desired_state = desired;
        t
    }

    #[test]
    fn ps_shows_history_under_the_current_task() {
        let mut tasks = vec![
            task(
                "old0000000000000000000000",
                1,
                "n1",
                TaskState::Failed,
                TaskState::Shutdown,
                100,
                "task: non-zero exit (137)",
            ),
            task(
                "t2aaaaaaaaaaaaaaaaaaaaaaa",
                2,
                "",
                TaskState::Pending,
                TaskState::Running,
                150,
                "no suitable node (scheduling constraints not satisfied on 1 node)",
            ),
            task("new0000000000000000000000", 1, "n1", TaskState::Running, TaskState::Running, 200, ""),
        ];
        sort_tasks(&mut tasks);
        let names: HashMap<String, String> = [("n1".to_string(), "host-a".to_string())].into();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(206);
        let out = table_of(&ps_rows(&tasks, &names, false, true, now), PS_COLUMNS).render();
        let expected = [
            "ID             NAME        IMAGE            NODE      DESIRED STATE   CURRENT STATE               ERROR                              PORTS",
            "new000000000   web.1       busybox:latest   host-a    Running         Running 5 seconds ago                                          ",
            "old000000000    \\_ web.1   busybox:latest   host-a    Shutdown        Failed about a minute ago   \"task: non-zero exit (137)\"        ",
            "t2aaaaaaaaaa   web.2       busybox:latest             Running         Pending 55 seconds ago      \"no suitable node (scheduling …\"   ",
        ];
        assert_eq!(out.lines().collect::<Vec<_>>(), expected, "\n{out}");
    }

    #[test]
    fn ps_no_trunc_keeps_everything() {
        let tasks = vec![task(
            "t2aaaaaaaaaaaaaaaaaaaaaaa",
            2,
            "",
            TaskState::Pending,
            TaskState::Running,
            150,
            "no suitable node (scheduling constraints not satisfied on 1 node)",
        )];
        let rows = ps_rows(&tasks, &HashMap::new(), true, true, SystemTime::UNIX_EPOCH + Duration::from_secs(151));
        assert_eq!(rows[0]["ID"], "t2aaaaaaaaaaaaaaaaaaaaaaa");
        assert_eq!(rows[0]["CurrentState"], "Pending less than a second ago");
        assert_eq!(rows[0]["Error"], "\"no suitable node (scheduling constraints not satisfied on 1 node)\"");
    }

    #[test]
    fn ps_json_is_docker_rows() {
        let mut tasks = vec![
            task("new0000000000000000000000", 1, "n1", TaskState::Running, TaskState::Running, 200, ""),
            task("old0000000000000000000000", 1, "n1", TaskState::Failed, TaskState::Shutdown, 100, "exit (1)"),
        ];
        sort_tasks(&mut tasks);
        let names: HashMap<String, String> = [("n1".to_string(), "host-a".to_string())].into();
        let rows = ps_rows(&tasks, &names, false, false, SystemTime::UNIX_EPOCH + Duration::from_secs(206));
        let out = crate::template::Template::parse("json").unwrap().render_rows(&rows, PS_COLUMNS).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines,
            [
                r#"{"CurrentState":"Running 5 seconds ago","DesiredState":"Running","Error":"","ID":"new000000000","Image":"busybox:latest","Name":"web.1","Node":"host-a","Ports":""}"#,
                // Outside a table the history is not indented: the name stays usable by scripts.
                r#"{"CurrentState":"Failed about a minute ago","DesiredState":"Shutdown","Error":"\"exit (1)\"","ID":"old000000000","Image":"busybox:latest","Name":"web.1","Node":"host-a","Ports":""}"#,
            ]
        );
        let t = crate::template::Template::parse("table {{.Name}}\\t{{.CurrentState}}").unwrap();
        let rows = ps_rows(&tasks, &names, false, true, SystemTime::UNIX_EPOCH + Duration::from_secs(206));
        assert_eq!(
            t.render_rows(&rows, PS_COLUMNS).unwrap(),
            "NAME        CURRENT STATE\nweb.1       Running 5 seconds ago\n \\_ web.1   Failed about a minute ago\n"
        );
    }

    fn listed(name: &str, replicas: u64, running: u64, max: u64) -> ServiceWithStatus {
        let mut svc: Service = serde_json::from_value(serde_json::json!({
            "id": "s0123456789abcdefghijklmn",
            "spec": {"name": name, "task_template": {"container": {"image": "docker.io/library/busybox:latest"}},
                     "mode": {"replicated": {"replicas": replicas}}}
        }))
        .unwrap();
        svc.spec.task_template.placement.max_replicas = max;
        ServiceWithStatus { service: svc, running_tasks: running, desired_tasks: replicas }
    }

    #[test]
    fn ls_rows_are_dockers() {
        let rows = vec![ls_row(&listed("web", 2, 2, 0), 0), ls_row(&listed("db", 3, 1, 1), 0)];
        let json = crate::template::Template::parse("json").unwrap().render_rows(&rows, LS_COLUMNS).unwrap();
        assert_eq!(
            json.lines().next().unwrap(),
            r#"{"ID":"s0123456789a","Image":"busybox:latest","Mode":"replicated","Name":"web","Ports":"","Replicas":"2/2"}"#
        );
        assert_eq!(rows[1]["Replicas"], "1/3 (max 1 per node)");
        let t = crate::template::Template::parse("{{.Name}} {{.Replicas}}").unwrap();
        assert_eq!(t.render_rows(&rows, LS_COLUMNS).unwrap(), "web 2/2\ndb 1/3 (max 1 per node)\n");
        let table = table_of(&rows, LS_COLUMNS).render();
        assert_eq!(
            table.lines().next().unwrap(),
            "ID             NAME      MODE         REPLICAS               IMAGE            PORTS"
        );
        let e = crate::template::Template::parse("{{.Nope}}").unwrap().render_rows(&rows, LS_COLUMNS).unwrap_err();
        assert!(e.to_string().contains("can't evaluate field Nope"), "{e}");
    }

    #[test]
    fn ps_filters() {
        assert_eq!(parse_filter("desired-state=running"), Ok(PsFilter::DesiredState(TaskState::Running)));
        assert!(parse_filter("desired-state=bogus").is_err());
        assert!(parse_filter("colour=red").is_err());
        assert!(parse_filter("nonsense").is_err());
        let names: HashMap<String, String> = [("n1".to_string(), "host-a".to_string())].into();
        let t = task("abc", 1, "n1", TaskState::Running, TaskState::Running, 1, "");
        assert!(keep_task(&t, &[PsFilter::Node("host-a".into())], &names));
        assert!(keep_task(&t, &[PsFilter::Node("n1".into()), PsFilter::Id("ab".into())], &names));
        assert!(!keep_task(&t, &[PsFilter::DesiredState(TaskState::Shutdown)], &names));
        assert!(keep_task(
            &t,
            &[PsFilter::DesiredState(TaskState::Shutdown), PsFilter::DesiredState(TaskState::Running)],
            &names
        ));
    }

    #[test]
    fn scale_specifiers() {
        assert_eq!(parse_scale("web=5").unwrap(), ("web".into(), 5));
        assert_eq!(parse_scale("web").unwrap_err().to_string(), "invalid scale specifier 'web'");
        assert_eq!(parse_scale("=3").unwrap_err().to_string(), "invalid scale specifier '=3'");
        assert_eq!(
            parse_scale("web=-1").unwrap_err().to_string(),
            "invalid replicas value -1: must be a non-negative integer"
        );
    }

    #[test]
    fn images_display_familiar_without_digest() {
        assert_eq!(display_image("docker.io/library/busybox:latest"), "busybox:latest");
        let d = format!("docker.io/library/busybox:1@sha256:{}", "a".repeat(64));
        assert_eq!(display_image(&d), "busybox:1");
    }

    #[test]
    fn ls_replicas_show_jobs_and_rollouts() {
        let mut job = listed("batch", 6, 0, 0);
        job.service.spec.mode = ServiceMode::ReplicatedJob { max_concurrent: 2, total_completions: 6 };
        assert_eq!(replicas_text(&job, 2), "0/6 (2/6 completed)");
        let mut web = listed("web", 5, 3, 0);
        web.service.update_status = Some(swarm::api::UpdateStatus {
            state: UpdateState::Updating,
            started_at: at(1),
            completed_at: None,
            message: String::new(),
        });
        assert_eq!(replicas_text(&web, 0), "3/5 (updating)");
        web.service.update_status.as_mut().unwrap().state = UpdateState::RollbackPaused;
        web.service.spec.task_template.placement.max_replicas = 1;
        assert_eq!(replicas_text(&web, 0), "3/5 (max 1 per node) (rollback paused)");
        web.service.update_status.as_mut().unwrap().state = UpdateState::Completed;
        assert_eq!(replicas_text(&web, 0), "3/5 (max 1 per node)", "a finished rollout is not shown");
    }

    #[test]
    fn ps_shows_a_running_tasks_health() {
        let mut t = task("h", 1, "n1", TaskState::Running, TaskState::Running, 100, "");
        assert_eq!(current_state(&t, Duration::from_secs(5)), "Running 5 seconds ago");
        t.status.container = Some(swarm::api::ContainerStatus { health: Some(Health::Healthy), ..Default::default() });
        assert_eq!(current_state(&t, Duration::from_secs(5)), "Running 5 seconds ago (healthy)");
        t.status.container.as_mut().unwrap().health = Some(Health::Starting);
        assert_eq!(current_state(&t, Duration::from_secs(5)), "Running 5 seconds ago (health: starting)");
        t.status.state = TaskState::Failed;
        t.status.container.as_mut().unwrap().health = Some(Health::Unhealthy);
        assert_eq!(current_state(&t, Duration::from_secs(5)), "Failed 5 seconds ago", "only a running task's");
    }
}
