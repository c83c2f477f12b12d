//! `shoal stack …`: applications from compose files, done in the client as `docker stack` does. `yaml.rs` reads a
//! file (positions, merge keys), `interpolate.rs` substitutes `${VAR}`, `schema.rs` is the strict compose schema,
//! `merge.rs` merges several `-c` files, `load.rs` runs those steps, `convert.rs` turns the result into specs and
//! `deploy.rs` applies them. Everything a stack creates carries the label `com.docker.stack.namespace=<stack>`;
//! `ls`, `ps`, `services` and `rm` find stacks by it.

mod convert;
mod deploy;
mod interpolate;
mod load;
mod merge;
mod schema;
mod yaml;

use crate::client::{rpc, Client};
use crate::output::{check_format, print_rows, short_id, table_of, Format};
use crate::service;
use clap::{Args, Subcommand};
use convert::NAMESPACE_LABEL;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};
use swarm::api::control::{
    GetRequest, ListNetworksRequest, ListSecretsRequest, ListServicesRequest, ListTasksRequest, ServiceWithStatus,
};

#[derive(Debug, Subcommand)]
pub enum StackCmd {
    /// Deploy a new stack or update an existing stack
    #[command(visible_alias = "up")]
    Deploy(DeployArgs),
    /// List stacks
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// List the tasks in the stack
    Ps(PsArgs),
    /// List the services in the stack
    Services(ServicesArgs),
    /// Remove one or more stacks
    #[command(visible_aliases = ["remove", "down"])]
    Rm(RmArgs),
    /// Outputs the final config file, after doing merges and interpolations
    Config(ConfigArgs),
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// Path to a Compose file, or "-" to read from stdin (repeat to merge several)
    #[arg(short = 'c', long = "compose-file", required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Prune services that are no longer referenced
    #[arg(long)]
    prune: bool,
    /// Send registry authentication details to Swarm agents
    #[arg(long = "with-registry-auth")]
    with_registry_auth: bool,
    /// Query the registry to resolve image digest and supported platforms ("always", "changed", "never")
    #[arg(long = "resolve-image", value_enum, default_value_t = deploy::ResolveImage::Always, value_name = "string")]
    resolve_image: deploy::ResolveImage,
    /// Stack name
    #[arg(value_name = "STACK")]
    name: String,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Format output using a custom template: 'table', 'table TEMPLATE', 'json', or a Go template
    #[arg(long, value_parser = check_format, value_name = "FORMAT")]
    format: Option<String>,
}

#[derive(Debug, Args)]
pub struct PsArgs {
    #[arg(value_name = "STACK")]
    name: String,
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
    #[arg(short, long = "filter", value_parser = service::parse_filter, value_name = "FILTER")]
    filter: Vec<service::PsFilter>,
}

#[derive(Debug, Args)]
pub struct ServicesArgs {
    #[arg(value_name = "STACK")]
    name: String,
    /// Only display IDs
    #[arg(short, long)]
    quiet: bool,
    /// Format output using a custom template: 'table', 'table TEMPLATE', 'json', or a Go template
    #[arg(long, value_parser = check_format, value_name = "FORMAT")]
    format: Option<String>,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    #[arg(required = true, value_name = "STACK")]
    names: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// Path to a Compose file, or "-" to read from stdin (repeat to merge several)
    #[arg(short = 'c', long = "compose-file", required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Skip interpolation and output only merged config
    #[arg(long = "skip-interpolation")]
    skip_interpolation: bool,
}

/// `stack config` needs no daemon: it runs before connecting.
pub fn config(a: &ConfigArgs) -> anyhow::Result<()> {
    let loaded = load::load_files(&a.files, !a.skip_interpolation)?;
    for w in loaded.warnings() {
        eprintln!("{w}");
    }
    print!("{}", to_yaml(&loaded.merged)?);
    Ok(())
}

pub async fn run(client: &mut Client, cmd: StackCmd) -> anyhow::Result<()> {
    match cmd {
        StackCmd::Deploy(a) => deploy_cmd(client, a).await,
        StackCmd::Ls(a) => ls(client, a).await,
        StackCmd::Ps(a) => ps(client, a).await,
        StackCmd::Services(a) => services(client, a).await,
        StackCmd::Rm(a) => rm(client, a).await,
        StackCmd::Config(a) => config(&a),
    }
}

async fn deploy_cmd(client: &mut Client, a: DeployArgs) -> anyhow::Result<()> {
    let loaded = load::load_files(&a.files, true)?;
    let plan = loaded.plan(&a.name)?;
    for w in loaded.warnings() {
        eprintln!("{w}");
    }
    if !plan.unsupported.is_empty() {
        eprintln!("Ignoring unsupported options: {}", plan.unsupported.iter().cloned().collect::<Vec<_>>().join(", "));
        eprintln!();
    }
    let opts = deploy::DeployOptions {
        prune: a.prune,
        resolve_image: a.resolve_image,
        with_registry_auth: a.with_registry_auth,
    };
    deploy::deploy(client, plan, opts).await
}

/// The merged file as YAML, extension fields left out (their anchors are already resolved).
fn to_yaml(v: &Value) -> anyhow::Result<String> {
    let mut v = v.clone();
    schema::strip_extensions(&mut v);
    let mut out = String::new();
    let y = yaml_of(&v);
    saphyr::YamlEmitter::new(&mut out).dump(&y).map_err(|e| anyhow::anyhow!("cannot write YAML: {e}"))?;
    // The emitter writes a document marker first and no final newline.
    let body = out.strip_prefix("---\n").unwrap_or(&out);
    Ok(format!("{body}\n"))
}

fn yaml_of(v: &Value) -> saphyr::Yaml<'static> {
    use saphyr::{Scalar, Yaml};
    use std::borrow::Cow;
    match v {
        Value::Null => Yaml::Value(Scalar::Null),
        Value::Bool(b) => Yaml::Value(Scalar::Boolean(*b)),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Yaml::Value(Scalar::Integer(i)),
            None => Yaml::value_from_cow(Cow::Owned(n.to_string())),
        },
        Value::String(s) => Yaml::Value(Scalar::String(Cow::Owned(s.clone()))),
        Value::Array(items) => Yaml::Sequence(items.iter().map(yaml_of).collect()),
        Value::Object(m) => {
            let mut out = saphyr::Mapping::new();
            for (k, v) in m {
                out.insert(Yaml::Value(Scalar::String(Cow::Owned(k.clone()))), yaml_of(v));
            }
            Yaml::Mapping(out)
        }
    }
}

/// The stack a labelled object belongs to.
fn stack_of(labels: &BTreeMap<String, String>) -> Option<&str> {
    labels.get(NAMESPACE_LABEL).map(String::as_str)
}

async fn stack_services(client: &mut Client, name: &str) -> anyhow::Result<Vec<ServiceWithStatus>> {
    let mut all = client.list_services(ListServicesRequest::default()).await?;
    all.retain(|s| stack_of(&s.service.spec.annotations.labels) == Some(name));
    all.sort_by(|a, b| a.service.spec.annotations.name.cmp(&b.service.spec.annotations.name));
    Ok(all)
}

const LS_COLUMNS: &[(&str, &str)] = &[("Name", "NAME"), ("Services", "SERVICES")];

/// `stack ls` rows: every stack with at least one service, by name.
fn ls_rows(services: &[ServiceWithStatus]) -> Vec<Value> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for s in services {
        if let Some(stack) = stack_of(&s.service.spec.annotations.labels) {
            *counts.entry(stack).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .map(|(name, n)| json!({"Name": name, "Services": n.to_string(), "Orchestrator": "Swarm"}))
        .collect()
}

async fn ls(client: &mut Client, a: LsArgs) -> anyhow::Result<()> {
    let format = Format::from_flags(false, a.format.as_deref())?;
    let services = client.list_services(ListServicesRequest::default()).await?;
    let rows = ls_rows(&services);
    match format {
        Format::Template(t) => print_rows(&t, &rows, LS_COLUMNS),
        _ => {
            table_of(&rows, LS_COLUMNS).print();
            Ok(())
        }
    }
}

async fn services(client: &mut Client, a: ServicesArgs) -> anyhow::Result<()> {
    let format = Format::from_flags(a.quiet, a.format.as_deref())?;
    let services = stack_services(client, &a.name).await?;
    if services.is_empty() {
        eprintln!("Nothing found in stack: {}", a.name);
        return Ok(());
    }
    let rows: Vec<Value> = services.iter().map(|s| service::ls_row(s, 0)).collect();
    match format {
        Format::Template(t) => print_rows(&t, &rows, service::LS_COLUMNS),
        Format::Quiet => {
            for s in &services {
                println!("{}", short_id(&s.service.id));
            }
            Ok(())
        }
        Format::Table => {
            table_of(&rows, service::LS_COLUMNS).print();
            Ok(())
        }
    }
}

async fn ps(client: &mut Client, a: PsArgs) -> anyhow::Result<()> {
    let format = Format::from_flags(a.quiet, a.format.as_deref())?;
    let services = stack_services(client, &a.name).await?;
    if services.is_empty() {
        anyhow::bail!("nothing found in stack: {}", a.name);
    }
    let service_ids = services.iter().map(|s| s.service.id.clone()).collect();
    let desired_states = service::desired_states(&a.filter);
    let mut tasks = client.list_tasks(ListTasksRequest { service_ids, desired_states, ..Default::default() }).await?;
    let names = service::node_names(client).await?;
    tasks.retain(|t| service::keep_task(t, &a.filter, &names));
    service::sort_tasks(&mut tasks);
    let now = SystemTime::now();
    match format {
        Format::Template(t) => {
            print_rows(&t, &service::ps_rows(&tasks, &names, a.no_trunc, t.table, now), service::PS_COLUMNS)
        }
        Format::Quiet => {
            for t in &tasks {
                println!("{}", if a.no_trunc { t.id.as_str() } else { short_id(&t.id) });
            }
            Ok(())
        }
        Format::Table => {
            table_of(&service::ps_rows(&tasks, &names, a.no_trunc, true, now), service::PS_COLUMNS).print();
            Ok(())
        }
    }
}

/// How long `stack rm` retries removing a network its just-removed services' tasks may still be leaving.
const NETWORK_RM_PATIENCE: Duration = Duration::from_secs(20);

async fn rm(client: &mut Client, a: RmArgs) -> anyhow::Result<()> {
    let mut failed = false;
    for name in &a.names {
        let services = stack_services(client, name).await?;
        let mut networks = rpc(client.control.list_networks(ListNetworksRequest::default()).await)?.networks;
        networks.retain(|n| stack_of(&n.spec.annotations.labels) == Some(name.as_str()));
        networks.sort_by(|a, b| a.spec.annotations.name.cmp(&b.spec.annotations.name));
        let mut secrets = rpc(client.control.list_secrets(ListSecretsRequest::default()).await)?.secrets;
        secrets.retain(|x| stack_of(&x.spec.annotations.labels) == Some(name.as_str()));
        let mut configs = rpc(client.control.list_configs(ListSecretsRequest::default()).await)?.configs;
        configs.retain(|x| stack_of(&x.spec.annotations.labels) == Some(name.as_str()));
        if services.is_empty() && networks.is_empty() && secrets.is_empty() && configs.is_empty() {
            eprintln!("Nothing found in stack: {name}");
            continue;
        }
        for s in &services {
            println!("Removing service {}", s.service.spec.annotations.name);
            if let Err(e) = rpc(client.control.remove_service(GetRequest { id_or_name: s.service.id.clone() }).await) {
                eprintln!("Failed to remove service {}: {}", s.service.id, crate::render_error(&e));
                failed = true;
            }
        }
        // Secrets and configs go once their services are removed (a secret a service still names is refused).
        for x in &secrets {
            println!("Removing secret {}", x.spec.annotations.name);
            if let Err(e) = rpc(client.control.remove_secret(GetRequest { id_or_name: x.id.clone() }).await) {
                eprintln!("Failed to remove secret {}: {}", x.id, crate::render_error(&e));
                failed = true;
            }
        }
        for x in &configs {
            println!("Removing config {}", x.spec.annotations.name);
            if let Err(e) = rpc(client.control.remove_config(GetRequest { id_or_name: x.id.clone() }).await) {
                eprintln!("Failed to remove config {}: {}", x.id, crate::render_error(&e));
                failed = true;
            }
        }
        for n in &networks {
            println!("Removing network {}", n.spec.annotations.name);
            let start = Instant::now();
            loop {
                match rpc(client.control.remove_network(GetRequest { id_or_name: n.id.clone() }).await) {
                    Ok(_) => break,
                    Err(e) if start.elapsed() < NETWORK_RM_PATIENCE && !is_not_found(&e) => {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(e) if is_not_found(&e) => break,
                    Err(e) => {
                        eprintln!("Failed to remove network {}: {}", n.id, crate::render_error(&e));
                        failed = true;
                        break;
                    }
                }
            }
        }
    }
    if failed {
        Err(crate::Failed.into())
    } else {
        Ok(())
    }
}

fn is_not_found(e: &anyhow::Error) -> bool {
    e.downcast_ref::<crate::client::DaemonError>().is_some_and(|d| d.0.code() == tonic::Code::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_prints_yaml_that_reads_back_the_same() {
        let text = "x-img: &img busybox:1.36\nservices:\n  web:\n    image: *img\n    environment:\n      N: \"3\"\n    deploy:\n      replicas: 2\n";
        let d = yaml::parse("c.yml", text).unwrap();
        let out = to_yaml(&d.value).unwrap();
        assert!(!out.contains("x-img"), "{out}");
        let back = yaml::parse("out.yml", &out).unwrap();
        let mut want = d.value.clone();
        schema::strip_extensions(&mut want);
        assert_eq!(back.value, want, "{out}");
        assert_eq!(back.value["services"]["web"]["environment"]["N"], "3", "a number-like string stays a string");
    }

    #[test]
    fn ls_counts_services_per_stack() {
        let svc = |name: &str, stack: Option<&str>| {
            let mut labels = BTreeMap::new();
            if let Some(s) = stack {
                labels.insert(NAMESPACE_LABEL.to_string(), s.to_string());
            }
            ServiceWithStatus {
                service: swarm::api::Service {
                    id: name.into(),
                    meta: Default::default(),
                    spec: swarm::api::ServiceSpec {
                        annotations: swarm::api::Annotations { name: name.into(), labels },
                        task_template: Default::default(),
                        mode: swarm::api::ServiceMode::Global,
                        update_config: Default::default(),
                        rollback_config: Default::default(),
                        endpoint_spec: Default::default(),
                    },
                    previous_spec: None,
                    spec_version: 1,
                    update_status: None,
                    endpoint: None,
                },
                running_tasks: 0,
                desired_tasks: 0,
            }
        };
        let rows = ls_rows(&[svc("b_x", Some("b")), svc("a_x", Some("a")), svc("a_y", Some("a")), svc("lone", None)]);
        assert_eq!(
            rows,
            vec![
                json!({"Name": "a", "Services": "2", "Orchestrator": "Swarm"}),
                json!({"Name": "b", "Services": "1", "Orchestrator": "Swarm"}),
            ]
        );
    }
}
