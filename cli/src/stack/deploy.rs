//! `stack deploy`: makes the cluster hold what a [`StackPlan`] describes. Networks first (external ones must
//! exist), then services: a new one is created, a changed one goes through `UpdateService` (so its update policy
//! rolls it out), an unchanged one is not touched; `--prune` removes the stack's services no longer in the file.
//! On a stack's first deployment, a service whose `depends_on` says `service_healthy` is created once those it
//! depends on run healthy. Images are pinned to their registry digests (`--resolve-image`) and the client's stored
//! credentials sent along (`--with-registry-auth`) as `service create` does.

use super::convert::{FilePlan, ServicePlan, StackPlan, NAMESPACE_LABEL};
use crate::client::{rpc, Client};
use crate::service::image::{pin_image, registry_auth};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};
use swarm::api::control::{CreateConfigRequest, CreateSecretRequest, ListSecretsRequest};
use swarm::api::control::{
    CreateNetworkRequest, CreateServiceRequest, GetRequest, ListNetworksRequest, ListServicesRequest, ListTasksRequest,
    UpdateServiceRequest,
};
use swarm::api::{Annotations, ConfigSpec, Driver, SecretSpec, Service, ServiceMode, ServiceSpec, TaskState};
use swarm::manager::controlapi::validate;

/// The service label holding the image as the compose file names it (Docker's), so a re-deploy knows whether
/// the file's image changed since the digest was recorded.
pub const IMAGE_LABEL: &str = "com.docker.stack.image";

/// `--resolve-image`: when a deploy asks the registry for an image's digest (Docker's modes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ResolveImage {
    /// Every deploy: a tag that moved is rolled out.
    #[default]
    Always,
    /// Only for new services and images the file changed.
    Changed,
    /// Never: the image as the file names it (or as last pinned, while the file names the same one).
    Never,
}

/// How long a service waits for those it depends on to be healthy before the deployment gives up.
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(300);

/// The services of a stack in the order they are created: each after those it depends on (`service_healthy`),
/// otherwise by name. A cycle is an error naming it.
pub fn creation_order(services: &[ServicePlan]) -> Result<Vec<&ServicePlan>, String> {
    let by_name: BTreeMap<&str, &ServicePlan> =
        services.iter().map(|s| (s.spec.annotations.name.as_str(), s)).collect();
    let mut done: BTreeSet<&str> = BTreeSet::new();
    let mut out = Vec::new();
    fn visit<'a>(
        s: &'a ServicePlan,
        by_name: &BTreeMap<&str, &'a ServicePlan>,
        done: &mut BTreeSet<&'a str>,
        path: &mut Vec<&'a str>,
        out: &mut Vec<&'a ServicePlan>,
    ) -> Result<(), String> {
        let name = s.spec.annotations.name.as_str();
        if done.contains(name) {
            return Ok(());
        }
        if let Some(i) = path.iter().position(|p| *p == name) {
            let mut cycle: Vec<&str> = path[i..].to_vec();
            cycle.push(name);
            return Err(format!("depends_on has a cycle: {}", cycle.join(" -> ")));
        }
        path.push(name);
        for dep in &s.after_healthy {
            if let Some(d) = by_name.get(dep.as_str()) {
                visit(d, by_name, done, path, out)?;
            }
        }
        path.pop();
        done.insert(name);
        out.push(s);
        Ok(())
    }
    for s in by_name.values() {
        visit(s, &by_name, &mut done, &mut Vec::new(), &mut out)?;
    }
    Ok(out)
}

/// The spec as the control API stores it (image reference normalized and so on), so an unchanged service
/// compares equal to what is stored; an invalid spec is refused here, before anything is sent.
pub fn normalized(spec: &ServiceSpec) -> Result<ServiceSpec, String> {
    let mut s = spec.clone();
    validate::service_spec(&mut s).map_err(|e| format!("service {}: {e}", spec.annotations.name))?;
    Ok(s)
}

/// What a re-deploy does with one service.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Create(ServiceSpec),
    /// Id, version, new spec.
    Update(String, u64, ServiceSpec),
    Unchanged,
}

/// Decides what to do with one service given what the cluster has (pure, so the rules are unit-tested).
pub fn action(desired: &ServiceSpec, current: Option<&Service>) -> Action {
    match current {
        None => Action::Create(desired.clone()),
        Some(cur) => {
            let mut want = desired.clone();
            // A `service update --force` counter is kept, as Docker does.
            want.task_template.force_update = cur.spec.task_template.force_update;
            // Reads never return the registry credentials: without new ones the stored ones stay (as the control
            // API does), and new ones are always sent.
            if want.task_template.container.pull_options.is_none() {
                want.task_template.container.pull_options = cur.spec.task_template.container.pull_options.clone();
            }
            // The file names secrets and configs; the stored spec also holds the ids the control API resolved.
            let (c, stored) = (&mut want.task_template.container, &cur.spec.task_template.container);
            for r in c.secrets.iter_mut().filter(|r| r.secret_id.is_empty()) {
                if let Some(s) = stored.secrets.iter().find(|s| s.secret_name == r.secret_name) {
                    r.secret_id = s.secret_id.clone();
                }
            }
            for r in c.configs.iter_mut().filter(|r| r.config_id.is_empty()) {
                if let Some(s) = stored.configs.iter().find(|s| s.config_name == r.config_name) {
                    r.config_id = s.config_id.clone();
                }
            }
            if want == cur.spec {
                Action::Unchanged
            } else {
                Action::Update(cur.id.clone(), cur.meta.version, want)
            }
        }
    }
}

/// Where a service's image comes from on this deploy (Docker's rules for `--resolve-image`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// Ask the registry for the digest its tag points at now.
    Registry,
    /// The image the last deploy pinned: the file still names the same one.
    AsDeployed(String),
    /// The image as the file names it.
    File,
}

/// Where the image of a service the file names `file_image` comes from, given the service as deployed (pure).
pub fn image_source(mode: ResolveImage, file_image: &str, current: Option<&Service>) -> ImageSource {
    let same_in_file = current
        .filter(|c| c.spec.annotations.labels.get(IMAGE_LABEL).map(String::as_str) == Some(file_image))
        .map(|c| c.spec.task_template.container.image.clone());
    match (mode, same_in_file) {
        (ResolveImage::Always, _) | (ResolveImage::Changed, None) => ImageSource::Registry,
        (_, Some(deployed)) => ImageSource::AsDeployed(deployed),
        (ResolveImage::Never, None) => ImageSource::File,
    }
}

pub struct DeployOptions {
    pub prune: bool,
    pub resolve_image: ResolveImage,
    pub with_registry_auth: bool,
}

pub async fn deploy(client: &mut Client, mut plan: StackPlan, opts: DeployOptions) -> anyhow::Result<()> {
    // Everything is checked before the first write.
    for s in &mut plan.services {
        let file_image = s.spec.task_template.container.image.clone();
        s.spec.annotations.labels.insert(IMAGE_LABEL.into(), file_image);
        s.spec = normalized(&s.spec).map_err(anyhow::Error::msg)?;
    }
    let order: Vec<ServicePlan> =
        creation_order(&plan.services).map_err(anyhow::Error::msg)?.into_iter().cloned().collect();

    let existing = rpc(client.control.list_networks(ListNetworksRequest::default()).await)?.networks;
    let mut network_ids: HashMap<String, String> =
        existing.iter().map(|n| (n.spec.annotations.name.clone(), n.id.clone())).collect();
    for n in plan.networks.iter().filter(|n| n.external) {
        if !network_ids.contains_key(&n.spec.annotations.name) {
            anyhow::bail!(
                "network \"{}\" is declared as external, but could not be found. You need to create a swarm-scoped \
                 network before the stack is deployed",
                n.spec.annotations.name
            );
        }
    }
    files(client, &plan.secrets, "secret").await?;
    files(client, &plan.configs, "config").await?;

    for n in plan.networks.iter().filter(|n| !n.external) {
        let name = &n.spec.annotations.name;
        if network_ids.contains_key(name) {
            continue;
        }
        println!("Creating network {name}");
        let created = rpc(client.control.create_network(CreateNetworkRequest { spec: n.spec.clone() }).await)?;
        network_ids.insert(name.clone(), created.id);
    }

    let services = client.list_services(ListServicesRequest::default()).await?;
    let current: HashMap<String, Service> = services
        .into_iter()
        .map(|s| s.service)
        .filter(|s| s.spec.annotations.labels.get(NAMESPACE_LABEL) == Some(&plan.name))
        .map(|s| (s.spec.annotations.name.clone(), s))
        .collect();
    let first_deployment = current.is_empty();
    for plan_svc in &order {
        let mut spec = plan_svc.spec.clone();
        for a in &mut spec.task_template.networks {
            if let Some(id) = network_ids.get(&a.target) {
                a.target = id.clone();
            }
        }
        let name = spec.annotations.name.clone();
        let mut warning = None;
        let c = &mut spec.task_template.container;
        match image_source(opts.resolve_image, &spec.annotations.labels[IMAGE_LABEL], current.get(&name)) {
            ImageSource::Registry => {
                let pinned = pin_image(client, &c.image).await?;
                (c.image, warning) = (pinned.image, pinned.warning);
            }
            ImageSource::AsDeployed(image) => c.image = image,
            ImageSource::File => {}
        }
        if opts.with_registry_auth {
            c.pull_options = registry_auth(&c.image)?;
        }
        match action(&spec, current.get(&name)) {
            Action::Create(spec) => {
                if first_deployment {
                    for dep in &plan_svc.after_healthy {
                        wait_healthy(client, dep, &name).await?;
                    }
                }
                println!("Creating service {name}");
                rpc(client.control.create_service(CreateServiceRequest { spec }).await)?;
            }
            Action::Update(id, version, spec) => {
                println!("Updating service {name} (id: {id})");
                rpc(client.control.update_service(UpdateServiceRequest { id, version, spec, rollback: false }).await)?;
                // As Docker, which prints the warnings of an update (not of a create) here.
                if let Some(w) = warning {
                    eprintln!("{w}");
                }
            }
            Action::Unchanged => {}
        }
    }
    if opts.prune {
        let wanted: BTreeSet<&str> = plan.services.iter().map(|s| s.spec.annotations.name.as_str()).collect();
        let mut stale: Vec<&Service> =
            current.values().filter(|s| !wanted.contains(s.spec.annotations.name.as_str())).collect();
        stale.sort_by(|a, b| a.spec.annotations.name.cmp(&b.spec.annotations.name));
        for s in stale {
            println!("Removing service {}", s.spec.annotations.name);
            rpc(client.control.remove_service(GetRequest { id_or_name: s.id.clone() }).await)?;
        }
    }
    Ok(())
}

/// Secrets and configs: the stack's own are created when missing (they are immutable, as in Swarm: an existing
/// one is used as it is), external ones must exist. Services name them; the control API resolves the names.
async fn files(client: &mut Client, objects: &[FilePlan], kind: &str) -> anyhow::Result<()> {
    let names: Vec<String> = objects.iter().map(|o| o.name.clone()).collect();
    if names.is_empty() {
        return Ok(());
    }
    let existing: BTreeSet<String> = match kind {
        "secret" => rpc(client.control.list_secrets(ListSecretsRequest { names: names.clone() }).await)?
            .secrets
            .into_iter()
            .map(|s| s.spec.annotations.name)
            .collect(),
        _ => rpc(client.control.list_configs(ListSecretsRequest { names }).await)?
            .configs
            .into_iter()
            .map(|c| c.spec.annotations.name)
            .collect(),
    };
    for o in objects {
        if existing.contains(&o.name) {
            continue;
        }
        if o.external {
            anyhow::bail!(
                "{kind} not found: {} (declared external: it must exist before the stack is deployed)",
                o.name
            );
        }
        println!("Creating {kind} {}", o.name);
        let annotations = Annotations { name: o.name.clone(), labels: o.labels.clone() };
        let templating =
            o.template_driver.as_ref().map(|name| Driver { name: name.clone(), options: Default::default() });
        match kind {
            "secret" => {
                let spec = SecretSpec { annotations, data: o.data.clone(), templating };
                rpc(client.control.create_secret(CreateSecretRequest { spec }).await)?;
            }
            _ => {
                let spec = ConfigSpec { annotations, data: o.data.clone(), templating };
                rpc(client.control.create_config(CreateConfigRequest { spec }).await)?;
            }
        }
    }
    Ok(())
}

/// Waits until every task `dep` wants is running (a health-checked task reaches RUNNING only once healthy).
async fn wait_healthy(client: &mut Client, dep: &str, waiter: &str) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut said = false;
    loop {
        let svc = rpc(client.control.get_service(GetRequest { id_or_name: dep.to_string() }).await)?;
        let tasks = rpc(client
            .control
            .list_tasks(ListTasksRequest {
                service_ids: vec![svc.id.clone()],
                node_ids: vec![],
                desired_states: vec![TaskState::Running],
                ..Default::default()
            })
            .await)?
        .tasks;
        let running = tasks.iter().filter(|t| t.status.state == TaskState::Running).count();
        let want = match svc.spec.mode {
            ServiceMode::Replicated { replicas } => replicas as usize,
            _ => tasks.len().max(1),
        };
        if running >= want && tasks.iter().all(|t| t.status.state == TaskState::Running) {
            return Ok(());
        }
        if start.elapsed() > HEALTHY_TIMEOUT {
            anyhow::bail!(
                "service {dep} was not healthy within {}s ({running}/{want} tasks running); {waiter} was not created",
                HEALTHY_TIMEOUT.as_secs()
            );
        }
        if !said {
            println!("Waiting for {dep} to be healthy before creating {waiter}");
            said = true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarm::api::{Annotations, ContainerSpec, TaskSpec};

    fn plan(name: &str, deps: &[&str]) -> ServicePlan {
        ServicePlan {
            key: name.into(),
            spec: ServiceSpec {
                annotations: Annotations { name: name.into(), labels: Default::default() },
                task_template: TaskSpec {
                    container: ContainerSpec { image: "busybox".into(), ..Default::default() },
                    ..Default::default()
                },
                mode: ServiceMode::Replicated { replicas: 1 },
                update_config: Default::default(),
                rollback_config: Default::default(),
                endpoint_spec: Default::default(),
            },
            after_healthy: deps.iter().map(|d| d.to_string()).collect(),
        }
    }

    #[test]
    fn dependencies_come_first_and_cycles_are_named() {
        let s = [plan("a_web", &["a_db", "a_cache"]), plan("a_cache", &[]), plan("a_db", &["a_cache"])];
        let names: Vec<&str> = creation_order(&s).unwrap().iter().map(|p| p.spec.annotations.name.as_str()).collect();
        assert_eq!(names, ["a_cache", "a_db", "a_web"]);
        let c = [plan("a_x", &["a_y"]), plan("a_y", &["a_x"])];
        assert_eq!(creation_order(&c).unwrap_err(), "depends_on has a cycle: a_x -> a_y -> a_x");
    }

    fn deployed_as(spec: ServiceSpec) -> Service {
        Service {
            id: "id1".into(),
            meta: Default::default(),
            spec,
            previous_spec: None,
            spec_version: 1,
            update_status: None,
            endpoint: None,
        }
    }

    #[test]
    fn the_image_is_resolved_as_docker_s_modes_say() {
        let mut cur = plan("a_web", &[]).spec;
        cur.annotations.labels.insert(IMAGE_LABEL.into(), "app:v1".into());
        cur.task_template.container.image = "r/app:v1@sha256:1".into();
        let cur = deployed_as(cur);
        let deployed = ImageSource::AsDeployed("r/app:v1@sha256:1".into());
        use ResolveImage::*;
        assert_eq!(image_source(Always, "app:v1", Some(&cur)), ImageSource::Registry, "a moved tag is rolled out");
        assert_eq!(image_source(Always, "app:v1", None), ImageSource::Registry);
        assert_eq!(image_source(Changed, "app:v1", Some(&cur)), deployed);
        assert_eq!(image_source(Changed, "app:v2", Some(&cur)), ImageSource::Registry);
        assert_eq!(image_source(Changed, "app:v1", None), ImageSource::Registry);
        assert_eq!(image_source(Never, "app:v1", Some(&cur)), deployed);
        assert_eq!(image_source(Never, "app:v2", Some(&cur)), ImageSource::File);
    }

    #[test]
    fn stored_credentials_stay_unless_new_ones_are_sent() {
        let desired = normalized(&plan("a_web", &[]).spec).unwrap();
        let mut cur = deployed_as(desired.clone());
        cur.spec.task_template.container.pull_options =
            Some(swarm::api::PullOptions { registry_auth: "old".into(), sealed: vec![] });
        assert_eq!(action(&desired, Some(&cur)), Action::Unchanged);
        let mut with = desired.clone();
        with.task_template.container.pull_options =
            Some(swarm::api::PullOptions { registry_auth: "new".into(), sealed: vec![] });
        assert!(matches!(action(&with, Some(&cur)), Action::Update(..)));
    }

    #[test]
    fn only_changed_services_are_updated() {
        let desired = normalized(&plan("a_web", &[]).spec).unwrap();
        assert_eq!(desired.task_template.container.image, "docker.io/library/busybox:latest");
        assert!(matches!(action(&desired, None), Action::Create(_)));
        let mut cur = deployed_as(desired.clone());
        cur.spec.task_template.force_update = 3;
        cur.meta.version = 7;
        assert_eq!(action(&desired, Some(&cur)), Action::Unchanged, "a forced-update counter is not a change");
        let mut changed = desired.clone();
        changed.task_template.container.env = vec!["A=1".into()];
        match action(&changed, Some(&cur)) {
            Action::Update(id, version, spec) => {
                assert_eq!((id.as_str(), version), ("id1", 7));
                assert_eq!(spec.task_template.force_update, 3);
                assert_eq!(spec.task_template.container.env, ["A=1"]);
            }
            other => panic!("{other:?}"),
        }
    }
}
