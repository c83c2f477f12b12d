//! `shoal service update` and `shoal service rollback`: Docker's flags (the shared spec flags plus the
//! `--X-add/--X-rm` list edits), applied to the service's current spec. Only what the flags change is changed;
//! an update that changes nothing is not sent. `--dry-run` (beyond Swarm) prints the spec diff and how many
//! tasks would be replaced instead of sending anything. Without `--detach`, the rollout's progress is followed
//! until it converges or the update pauses or rolls back.

use super::flags::{FlagError, SpecFlags};
use super::image::{pin_image, registry_auth, ImageFlags};
use super::opts::{self, Words};
use crate::client::{rpc, Client};
use crate::progress;
use clap::Args;
use serde_json::Value;
use std::collections::BTreeMap;
use swarm::api::control::{GetRequest, ListTasksRequest, UpdateServiceRequest};
use swarm::api::{
    normalize_image_ref, Constraint, Mount, PlacementPreference, ServiceMode, ServiceSpec, TaskState, Ulimit,
};

/// The list flags in their update form: `--X-add` adds or replaces (by key, target or name), `--X-rm` removes.
#[derive(Debug, Clone, Default, PartialEq, Args)]
pub struct UpdateLists {
    /// Add or update an environment variable
    #[arg(long = "env-add", value_parser = opts::env, value_name = "KEY=VALUE")]
    pub env_add: Vec<String>,
    /// Remove an environment variable
    #[arg(long = "env-rm", value_name = "KEY")]
    pub env_rm: Vec<String>,
    /// Add or update a service label
    #[arg(long = "label-add", value_parser = opts::label, value_name = "KEY=VALUE")]
    pub label_add: Vec<(String, String)>,
    /// Remove a label by its key
    #[arg(long = "label-rm", value_name = "KEY")]
    pub label_rm: Vec<String>,
    /// Add or update a container label
    #[arg(long = "container-label-add", value_parser = opts::label, value_name = "KEY=VALUE")]
    pub container_label_add: Vec<(String, String)>,
    /// Remove a container label by its key
    #[arg(long = "container-label-rm", value_name = "KEY")]
    pub container_label_rm: Vec<String>,
    /// Add or update a mount on a service
    #[arg(long = "mount-add", value_parser = opts::mount, value_name = "MOUNT")]
    pub mount_add: Vec<Mount>,
    /// Remove a mount by its target path
    #[arg(long = "mount-rm", value_name = "TARGET")]
    pub mount_rm: Vec<String>,
    /// Add or update a placement constraint
    #[arg(long = "constraint-add", value_name = "EXPR")]
    pub constraint_add: Vec<Constraint>,
    /// Remove a constraint
    #[arg(long = "constraint-rm", value_name = "EXPR")]
    pub constraint_rm: Vec<Constraint>,
    /// Add a placement preference (spread=node.labels.X)
    #[arg(long = "placement-pref-add", value_parser = opts::placement_pref, value_name = "PREF")]
    pub placement_pref_add: Vec<PlacementPreference>,
    /// Remove a placement preference
    #[arg(long = "placement-pref-rm", value_parser = opts::placement_pref, value_name = "PREF")]
    pub placement_pref_rm: Vec<PlacementPreference>,
    /// Add or update a generic resource reservation (KIND=N)
    #[arg(long = "generic-resource-add", value_parser = opts::generic_resource, value_name = "KIND=N")]
    pub generic_resource_add: Vec<(String, u64)>,
    /// Remove a generic resource reservation by its kind
    #[arg(long = "generic-resource-rm", value_name = "KIND")]
    pub generic_resource_rm: Vec<String>,
    /// Add or update a ulimit option (NAME=SOFT[:HARD])
    #[arg(long = "ulimit-add", value_parser = opts::ulimit, value_name = "ULIMIT")]
    pub ulimit_add: Vec<Ulimit>,
    /// Remove a ulimit option by its name
    #[arg(long = "ulimit-rm", value_name = "NAME")]
    pub ulimit_rm: Vec<String>,
    /// Add or update a published port ([published:]target[/proto] or published=,target=,protocol=,mode=)
    #[arg(long = "publish-add", value_parser = super::endpoint::publish, value_name = "PORT")]
    pub publish_add: Vec<super::endpoint::Ports>,
    /// Remove a published port by its target port (TARGET[/proto])
    #[arg(long = "publish-rm", value_parser = super::endpoint::unpublish, value_name = "PORT")]
    pub publish_rm: Vec<(u16, Option<swarm::api::PortProtocol>)>,
    /// Add a network (NAME or name=NAME,alias=ALIAS)
    #[arg(long = "network-add", value_parser = super::endpoint::network, value_name = "NETWORK")]
    pub network_add: Vec<swarm::api::NetworkAttachmentConfig>,
    /// Remove a network
    #[arg(long = "network-rm", value_name = "NETWORK")]
    pub network_rm: Vec<String>,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    #[command(flatten)]
    pub flags: SpecFlags,
    #[command(flatten)]
    pub lists: UpdateLists,
    #[command(flatten)]
    pub image_flags: ImageFlags,
    #[command(flatten)]
    pub files: super::files::UpdateFiles,
    /// Service image tag
    #[arg(long)]
    pub image: Option<String>,
    /// Service command args
    #[arg(long, value_parser = opts::args, allow_hyphen_values = true, value_name = "ARGS")]
    pub args: Option<Words>,
    /// Force update even if no changes require it
    #[arg(long)]
    pub force: bool,
    /// Rollback to previous specification
    #[arg(long)]
    pub rollback: bool,
    /// Print what would change (the spec diff, the tasks replaced) and change nothing
    #[arg(long = "dry-run")]
    pub dry_run: bool,
    /// Service (name, id or id prefix)
    #[arg(value_name = "SERVICE")]
    pub service: String,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// Exit immediately instead of waiting for the service to converge
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Suppress progress output
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Print what would change (the spec diff, the tasks replaced) and change nothing
    #[arg(long = "dry-run")]
    pub dry_run: bool,
    /// Service (name, id or id prefix)
    #[arg(value_name = "SERVICE")]
    pub service: String,
}

/// The part of an env entry that identifies it (`KEY` of `KEY=VALUE`).
fn env_key(e: &str) -> &str {
    e.split_once('=').map(|(k, _)| k).unwrap_or(e)
}

impl UpdateLists {
    /// Applies the edits in Docker's order for each list (`updateEnvironment`, `updateLabels`, `updateMounts`,
    /// `updatePlacementConstraints`, …), keeping the existing order and replacing entries in place so that an
    /// edit that changes nothing leaves the spec equal.
    pub fn apply(&self, spec: &mut ServiceSpec) -> Result<(), FlagError> {
        super::endpoint::edit_ports(
            &mut spec.endpoint_spec.ports,
            &super::endpoint::Ports::flatten(&self.publish_add),
            &self.publish_rm,
        );
        super::endpoint::edit_networks(&mut spec.task_template.networks, &self.network_add, &self.network_rm);
        let t = &mut spec.task_template;
        let c = &mut t.container;

        c.env.retain(|e| !self.env_rm.iter().any(|k| k == env_key(e)));
        for e in &self.env_add {
            match c.env.iter_mut().find(|cur| env_key(cur) == env_key(e)) {
                Some(cur) => *cur = e.clone(),
                None => c.env.push(e.clone()),
            }
        }

        spec.annotations.labels.extend(self.label_add.iter().cloned());
        for k in &self.label_rm {
            spec.annotations.labels.remove(k);
        }
        c.labels.extend(self.container_label_add.iter().cloned());
        for k in &self.container_label_rm {
            c.labels.remove(k);
        }

        for (i, m) in self.mount_add.iter().enumerate() {
            if self.mount_add[..i].iter().any(|o| o.target == m.target) {
                return Err(FlagError(format!("duplicate mount target {}", m.target)));
            }
            match c.mounts.iter_mut().find(|cur| cur.target == m.target) {
                Some(cur) => *cur = m.clone(),
                None => c.mounts.push(m.clone()),
            }
        }
        c.mounts.retain(|m| !self.mount_rm.contains(&m.target));

        for u in &self.ulimit_add {
            match c.ulimits.iter_mut().find(|cur| cur.name == u.name) {
                Some(cur) => *cur = u.clone(),
                None => c.ulimits.push(u.clone()),
            }
        }
        c.ulimits.retain(|u| !self.ulimit_rm.contains(&u.name));

        let p = &mut t.placement;
        for con in &self.constraint_add {
            if !p.constraints.contains(con) {
                p.constraints.push(con.clone());
            }
        }
        p.constraints.retain(|con| !self.constraint_rm.contains(con));
        p.preferences.retain(|pref| !self.placement_pref_rm.contains(pref));
        for pref in &self.placement_pref_add {
            if !p.preferences.contains(pref) {
                p.preferences.push(pref.clone());
            }
        }

        let g = &mut t.resources.generic_reservations;
        for kind in &self.generic_resource_rm {
            if g.remove(kind).is_none() {
                return Err(FlagError(format!("could not find generic-resource `{kind}` to remove it")));
            }
        }
        g.extend(self.generic_resource_add.iter().cloned());
        Ok(())
    }
}

impl UpdateArgs {
    /// Whether any flag other than `--rollback`, `--detach`, `--quiet` and `--dry-run` was given.
    fn changes_something(&self) -> bool {
        self.flags.any_spec_flag()
            || self.lists != UpdateLists::default()
            || self.files != super::files::UpdateFiles::default()
            || self.image.is_some()
            || self.image_flags.with_registry_auth
            || self.args.is_some()
            || self.force
    }

    /// The spec after the flags, from the current one.
    pub fn updated(&self, current: &ServiceSpec) -> Result<ServiceSpec, FlagError> {
        let mut spec = current.clone();
        if let Some(image) = &self.image {
            // Normalized here too so `--image busybox` on a service already running busybox:latest is no change;
            // a bad reference is left for the server to refuse with its own message.
            spec.task_template.container.image = normalize_image_ref(image).unwrap_or_else(|_| image.clone());
        }
        if let Some(Words(args)) = &self.args {
            spec.task_template.container.args = args.clone();
        }
        self.flags.apply(&mut spec, false)?;
        self.lists.apply(&mut spec)?;
        self.files.apply(&mut spec)?;
        if self.force {
            spec.task_template.force_update += 1;
        }
        Ok(spec)
    }
}

/// Flattens a JSON value into `path: value` leaves; arrays stay whole (as compact JSON), since an element's
/// index says little once entries were added or removed.
fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&path, v, out);
            }
        }
        Value::Object(_) => {}
        Value::String(s) => {
            out.insert(prefix.to_string(), s.clone());
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// The difference between two specs, one `field path: old → new` line per changed field, in path order;
/// `(none)` stands for a field that is unset on one side.
pub fn spec_diff(old: &ServiceSpec, new: &ServiceSpec) -> Vec<String> {
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    // Serializing our own spec types cannot fail; an empty map would only hide the diff, not corrupt anything.
    flatten("", &serde_json::to_value(old).unwrap_or_default(), &mut a);
    flatten("", &serde_json::to_value(new).unwrap_or_default(), &mut b);
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let none = "(none)".to_string();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| format!("{k}: {} → {}", a.get(k).unwrap_or(&none), b.get(k).unwrap_or(&none)))
        .collect()
}

/// What an update would do to the running tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Impact {
    pub replaced: u64,
    pub started: u64,
    pub removed: u64,
}

/// `live` is the number of tasks desired running. A changed task template replaces every live task that stays;
/// a changed replica count starts or removes the difference.
pub fn impact(old: &ServiceSpec, new: &ServiceSpec, live: u64) -> Impact {
    let count = |m: &ServiceMode| match m {
        ServiceMode::Replicated { replicas } => Some(*replicas),
        ServiceMode::ReplicatedJob { total_completions, .. } => Some(*total_completions),
        ServiceMode::Global | ServiceMode::GlobalJob => None,
    };
    let (started, removed) = match (count(&old.mode), count(&new.mode)) {
        (Some(o), Some(n)) => (n.saturating_sub(o), live.saturating_sub(n)),
        _ => (0, 0),
    };
    let replaced = if old.task_template != new.task_template { live - removed } else { 0 };
    Impact { replaced, started, removed }
}

fn plural(n: u64, one: &str) -> String {
    if n == 1 {
        format!("{n} {one}")
    } else {
        format!("{n} {one}s")
    }
}

/// The dry run's report.
pub fn dry_run_text(old: &ServiceSpec, new: &ServiceSpec, live: u64) -> String {
    let mut out = String::new();
    let diff = spec_diff(old, new);
    if diff.is_empty() {
        out.push_str("no changes\n");
    }
    for line in diff {
        out.push_str(&line);
        out.push('\n');
    }
    let i = impact(old, new, live);
    out.push_str(&format!("{} would be replaced\n", plural(i.replaced, "task")));
    if i.started > 0 {
        out.push_str(&format!("{} would be started\n", plural(i.started, "task")));
    }
    if i.removed > 0 {
        out.push_str(&format!("{} would be removed\n", plural(i.removed, "task")));
    }
    out
}

async fn live_tasks(client: &mut Client, service_id: &str) -> anyhow::Result<u64> {
    let tasks = rpc(client
        .control
        .list_tasks(ListTasksRequest {
            service_ids: vec![service_id.to_string()],
            node_ids: vec![],
            desired_states: vec![TaskState::Running],
            ..Default::default()
        })
        .await)?
    .tasks;
    Ok(tasks.iter().filter(|t| t.desired_state == TaskState::Running).count() as u64)
}

pub async fn run(client: &mut Client, a: UpdateArgs) -> anyhow::Result<()> {
    if a.rollback {
        // As Docker: a rollback goes back to the previous spec as a whole, so other changes make no sense.
        if a.changes_something() {
            anyhow::bail!("other flags may not be combined with --rollback");
        }
        let r = RollbackArgs { detach: a.flags.detach, quiet: a.flags.quiet, dry_run: a.dry_run, service: a.service };
        return rollback(client, r).await;
    }
    let svc = rpc(client.control.get_service(GetRequest { id_or_name: a.service.clone() }).await)?;
    let mut a = a;
    if !a.lists.network_add.is_empty() || !a.lists.network_rm.is_empty() {
        // The spec holds network ids: the names given are matched to them (the server resolves them the same way).
        let networks =
            rpc(client.control.list_networks(swarm::api::control::ListNetworksRequest::default()).await)?.networks;
        for n in a.lists.network_add.iter_mut() {
            n.target = super::endpoint::network_id(&networks, &n.target);
        }
        for n in a.lists.network_rm.iter_mut() {
            *n = super::endpoint::network_id(&networks, n);
        }
    }
    let mut spec = a.updated(&svc.spec)?;
    let c = &mut spec.task_template.container;
    // A new `--image` is pinned to its digest now; the current image stays as it was pinned.
    let mut warning = None;
    if a.image.is_some() && !a.image_flags.no_resolve_image {
        let pinned = pin_image(client, &c.image).await?;
        (c.image, warning) = (pinned.image, pinned.warning);
    }
    if a.image_flags.with_registry_auth {
        c.pull_options = registry_auth(&c.image)?;
    }

    if a.dry_run {
        let live = live_tasks(client, &svc.id).await?;
        // Credentials are never printed: the diff says only that new ones would be sent.
        let mut shown = spec.clone();
        if let Some(p) = &mut shown.task_template.container.pull_options {
            p.registry_auth = "<redacted>".into();
        }
        print!("{}", dry_run_text(&svc.spec, &shown, live));
        return Ok(());
    }
    if spec == svc.spec {
        // Nothing changed: nothing is sent, so no new spec version and no rollout; Docker prints the name too.
        println!("{}", a.service);
        return Ok(());
    }
    rpc(client
        .control
        .update_service(UpdateServiceRequest { id: svc.id.clone(), version: svc.meta.version, spec, rollback: false })
        .await)?;
    if let Some(w) = warning {
        eprintln!("{w}");
    }
    println!("{}", a.service);
    if !a.flags.detach {
        progress::wait_updated(client, &svc.id, svc.update_status.clone(), a.flags.quiet, false).await?;
    }
    Ok(())
}

pub async fn rollback(client: &mut Client, a: RollbackArgs) -> anyhow::Result<()> {
    let svc = rpc(client.control.get_service(GetRequest { id_or_name: a.service.clone() }).await)?;
    let Some(previous) = svc.previous_spec.clone() else {
        anyhow::bail!("service {} does not have a previous specification to roll back to", a.service);
    };
    if a.dry_run {
        let live = live_tasks(client, &svc.id).await?;
        print!("{}", dry_run_text(&svc.spec, &previous, live));
        return Ok(());
    }
    // The server swaps in the previous spec itself (and rolls out with the rollback config); `spec` is ignored.
    rpc(client
        .control
        .update_service(UpdateServiceRequest {
            id: svc.id.clone(),
            version: svc.meta.version,
            spec: svc.spec.clone(),
            rollback: true,
        })
        .await)?;
    println!("{}", a.service);
    if !a.detach {
        progress::wait_updated(client, &svc.id, svc.update_status.clone(), a.quiet, true).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::time::Duration;
    use swarm::api::{FailureAction, HealthConfig, MountType, UpdateOrder};

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        args: UpdateArgs,
    }

    fn parse(argv: &[&str]) -> Result<UpdateArgs, clap::Error> {
        T::try_parse_from(std::iter::once("update").chain(argv.iter().copied())).map(|t| t.args)
    }

    /// `web`: busybox, 3 replicas, two env vars, a label, a mount, a constraint, a generic resource.
    fn current() -> ServiceSpec {
        let mut s: ServiceSpec = serde_json::from_value(serde_json::json!({
            "name": "web", "labels": {"tier": "front"},
            "task_template": {"container": {"image": "docker.io/library/busybox:latest", "env": ["A=1", "B=2"],
                "mounts": [{"type": "tmpfs", "target": "/tmp"}]},
                "placement": {"constraints": ["node.role==manager"]},
                "resources": {"generic_reservations": {"gpu": 1}}},
            "mode": {"replicated": {"replicas": 3}}
        }))
        .unwrap();
        s.task_template.container.stop_grace_period = Duration::from_secs(10);
        s
    }

    fn updated(argv: &[&str]) -> Result<ServiceSpec, String> {
        let a = parse(&[argv, &["web"]].concat()).map_err(|e| e.to_string())?;
        a.updated(&current()).map_err(|e| e.to_string())
    }

    #[test]
    fn list_edits_follow_docker() {
        let s = updated(&[
            "--env-add",
            "B=3",
            "--env-add",
            "C=4",
            "--env-rm",
            "A",
            "--label-add",
            "owner=me",
            "--label-rm",
            "tier",
            "--container-label-add",
            "x=y",
            "--mount-add",
            "type=tmpfs,target=/tmp,tmpfs-size=1m",
            "--mount-add",
            "type=bind,source=/srv,target=/srv",
            "--constraint-add",
            "node.labels.zone==east",
            "--constraint-rm",
            "node.role == manager",
            "--placement-pref-add",
            "spread=node.labels.zone",
            "--generic-resource-add",
            "ssd=2",
            "--generic-resource-rm",
            "gpu",
        ])
        .unwrap();
        let c = &s.task_template.container;
        // Replaced in place, added at the end, removed by key.
        assert_eq!(c.env, vec!["B=3", "C=4"]);
        assert_eq!(s.annotations.labels, [("owner".to_string(), "me".to_string())].into());
        assert_eq!(c.labels.get("x").map(String::as_str), Some("y"));
        assert_eq!(c.mounts.len(), 2);
        assert_eq!((c.mounts[0].target.as_str(), c.mounts[0].tmpfs_size), ("/tmp", 1 << 20), "replaced by target");
        assert_eq!((c.mounts[1].kind, c.mounts[1].target.as_str()), (MountType::Bind, "/srv"));
        let p = &s.task_template.placement;
        assert_eq!(p.constraints.iter().map(ToString::to_string).collect::<Vec<_>>(), vec!["node.labels.zone==east"]);
        assert_eq!(p.preferences, vec![PlacementPreference::Spread("node.labels.zone".into())]);
        assert_eq!(s.task_template.resources.generic_reservations, [("ssd".to_string(), 2)].into());

        let s = updated(&["--mount-rm", "/tmp", "--placement-pref-rm", "spread=node.labels.rack"]).unwrap();
        assert!(s.task_template.container.mounts.is_empty());
    }

    #[test]
    fn scalar_flags_change_only_their_field() {
        let s = updated(&[
            "--image",
            "busybox:1.36",
            "--args",
            "sleep 1d",
            "--replicas",
            "5",
            "--update-parallelism",
            "2",
            "--update-order",
            "start-first",
            "--update-failure-action",
            "rollback",
            "--update-monitor",
            "10s",
            "--update-max-failure-ratio",
            "0.2",
            "--update-delay",
            "1s",
            "--rollback-parallelism",
            "0",
            "--rollback-failure-action",
            "continue",
            "--health-cmd",
            "wget -q localhost",
            "--health-interval",
            "2s",
            "--health-retries",
            "5",
            "--restart-delay",
            "1s",
            "--restart-max-delay",
            "1m",
            "--read-only",
        ])
        .unwrap();
        let mut want = current();
        let c = &mut want.task_template.container;
        c.image = "docker.io/library/busybox:1.36".into();
        c.args = vec!["sleep".into(), "1d".into()];
        c.read_only = true;
        c.healthcheck = Some(HealthConfig {
            test: vec!["CMD-SHELL".into(), "wget -q localhost".into()],
            interval: Duration::from_secs(2),
            retries: 5,
            ..Default::default()
        });
        want.mode = ServiceMode::Replicated { replicas: 5 };
        let u = &mut want.update_config;
        u.parallelism = 2;
        u.order = UpdateOrder::StartFirst;
        u.failure_action = FailureAction::Rollback;
        u.monitor = Duration::from_secs(10);
        u.max_failure_ratio = 0.2;
        u.delay = Duration::from_secs(1);
        want.rollback_config.parallelism = 0;
        want.rollback_config.failure_action = FailureAction::Continue;
        want.task_template.restart_policy.delay = Duration::from_secs(1);
        want.task_template.restart_policy.max_delay = Duration::from_secs(60);
        assert_eq!(s, want);

        // --read-only=false undoes it; --no-healthcheck disables the image's check.
        let mut ro = current();
        ro.task_template.container.read_only = true;
        let a = parse(&["--read-only=false", "--no-healthcheck", "web"]).unwrap();
        let s = a.updated(&ro).unwrap();
        assert!(!s.task_template.container.read_only);
        assert_eq!(s.task_template.container.healthcheck.unwrap().test, vec!["NONE"]);
    }

    #[test]
    fn an_update_that_changes_nothing_is_equal_and_force_bumps() {
        for argv in [
            &["--image", "busybox"][..],
            &["--env-add", "A=1"],
            &["--label-add", "tier=front"],
            &["--constraint-add", "node.role==manager"],
            &["--replicas", "3"],
            &["--mount-add", "type=tmpfs,target=/tmp"],
            &["--generic-resource-add", "gpu=1"],
            &["--update-order", "stop-first"],
            &["-d"],
        ] {
            assert_eq!(updated(argv).unwrap(), current(), "{argv:?} changes nothing");
        }
        let forced = updated(&["--force"]).unwrap();
        assert_eq!(forced.task_template.force_update, 1);
        assert_eq!(spec_diff(&current(), &forced), vec!["task_template.force_update: 0 → 1"]);
    }

    #[test]
    fn bad_input_is_one_clear_error() {
        for (argv, want) in [
            (&["--update-order", "sideways"][..], "invalid order \"sideways\": must be stop-first or start-first"),
            (&["--update-delay", "-5s"], "duration cannot be negative"),
            (&["--rollback-failure-action", "rollback"], "must be pause or continue"),
            (&["--update-max-failure-ratio", "2"], "must be between 0 and 1"),
            (&["--update-order", "start-first", "--update-order", "stop-first"], "cannot be used multiple times"),
            (&["--health-cmd", "true", "--no-healthcheck"], "--no-healthcheck conflicts with --health-* options"),
            (&["--max-concurrent", "2"], "max-concurrent can only be used with replicated-job mode"),
            (&["--mode", "global"], "service mode cannot be changed (from replicated to global)"),
            (&["--generic-resource-rm", "fpga"], "could not find generic-resource `fpga` to remove it"),
            (&["--mount-add", "type=tmpfs,target=/a", "--mount-add", "type=tmpfs,target=/a"], "duplicate mount target"),
            (&["--restart-delay", "10s", "--restart-max-delay", "1s"], "must not be shorter than restart-delay"),
            (&["--publish-add", "8080:80/sctp"], "invalid protocol \"sctp\""),
            (&["--network-add", "alias=x"], "network name/id is required"),
        ] {
            let e = updated(argv).unwrap_err();
            assert!(e.contains(want), "{argv:?}: {e}");
        }
        let a = parse(&["--rollback", "--image", "x", "web"]).unwrap();
        assert!(a.changes_something());
        let a = parse(&["--rollback", "-d", "-q", "--dry-run", "web"]).unwrap();
        assert!(!a.changes_something(), "-d, -q and --dry-run combine with --rollback");
    }

    #[test]
    fn dry_run_reports_the_diff_and_the_tasks_replaced() {
        let new = updated(&["--image", "busybox:1.36", "--env-add", "C=3"]).unwrap();
        assert_eq!(
            dry_run_text(&current(), &new, 3),
            "task_template.container.env: [\"A=1\",\"B=2\"] → [\"A=1\",\"B=2\",\"C=3\"]\n\
             task_template.container.image: docker.io/library/busybox:latest → docker.io/library/busybox:1.36\n\
             3 tasks would be replaced\n"
        );
        let scaled = updated(&["--replicas", "5"]).unwrap();
        assert_eq!(
            dry_run_text(&current(), &scaled, 3),
            "mode.replicated.replicas: 3 → 5\n0 tasks would be replaced\n2 tasks would be started\n"
        );
        let both = updated(&["--replicas", "1", "--hostname", "h"]).unwrap();
        assert_eq!(impact(&current(), &both, 3), Impact { replaced: 1, started: 0, removed: 2 });
        assert!(spec_diff(&current(), &both).contains(&"task_template.container.hostname: (none) → h".to_string()));
        assert_eq!(dry_run_text(&current(), &current(), 3), "no changes\n0 tasks would be replaced\n");
    }
}
