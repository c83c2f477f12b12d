//! A decoded compose file into what a stack deploys: overlay networks, secrets, configs and service specs, named
//! `<stack>_<name>` and labelled `com.docker.stack.namespace=<stack>`, as `docker stack deploy` converts them.
//! Everything is checked here, before anything is sent: a bad file deploys nothing.

use super::interpolate::Vars;
use super::schema::{self, ComposeFile, External, FileRef, MapOrList, OneOrMany, Port, Scalar, ServiceVolume};
use crate::service::opts;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;
use swarm::api::{
    Annotations, ConfigReference, Constraint, ContainerSpec, EndpointMode, EndpointSpec, FailureAction, FileTarget,
    HealthConfig, IpamConfig, LogDriver, Mount, MountType, NetworkAttachmentConfig, NetworkSpec, Placement, PortConfig,
    PortProtocol, PublishMode, ResourceRequirements, Resources, RestartCondition, RestartPolicy, SecretReference,
    ServiceMode, ServiceSpec, TaskSpec, Ulimit, UpdateConfig, UpdateOrder,
};

/// The label that marks every object of a stack, as Docker's.
pub const NAMESPACE_LABEL: &str = "com.docker.stack.namespace";

/// Docker's limits on a secret's and a config's data.
pub const MAX_SECRET_BYTES: usize = 500 * 1024;
pub const MAX_CONFIG_BYTES: usize = 1000 * 1024;

/// A network the stack uses: created by it, or external (must exist already).
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkPlan {
    pub key: String,
    pub external: bool,
    pub spec: NetworkSpec,
}

/// A secret or config the stack uses.
#[derive(Debug, Clone, PartialEq)]
pub struct FilePlan {
    pub key: String,
    pub name: String,
    pub external: bool,
    /// Empty for an external one.
    pub data: Vec<u8>,
    pub labels: BTreeMap<String, String>,
    pub template_driver: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServicePlan {
    pub key: String,
    /// Network attachments name networks by their full name; deploy swaps in their ids.
    pub spec: ServiceSpec,
    /// Full names of the services this one is created after, once they are healthy (first deployment only).
    pub after_healthy: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct StackPlan {
    pub name: String,
    pub networks: Vec<NetworkPlan>,
    pub secrets: Vec<FilePlan>,
    pub configs: Vec<FilePlan>,
    pub services: Vec<ServicePlan>,
    /// Compose keys the file sets that Swarm does not apply.
    pub unsupported: BTreeSet<String>,
}

/// A conversion error: the path in the file and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertError {
    pub path: String,
    pub msg: String,
}

fn err<T>(path: impl Into<String>, msg: impl Into<String>) -> Result<T, ConvertError> {
    Err(ConvertError { path: path.into(), msg: msg.into() })
}

/// What conversion reads besides the file: the stack name, the directory relative paths are taken from, and the
/// variables (for `environment: [KEY]` without a value and `secrets: {environment: VAR}`).
pub struct Context<'a> {
    pub stack: &'a str,
    pub dir: &'a Path,
    pub vars: &'a Vars,
}

impl Context<'_> {
    fn scoped(&self, key: &str) -> String {
        format!("{}_{key}", self.stack)
    }

    fn labels(&self, user: BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut l = user;
        l.insert(NAMESPACE_LABEL.into(), self.stack.to_string());
        l
    }

    fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }
}

pub fn convert(file: &ComposeFile, cx: &Context) -> Result<StackPlan, ConvertError> {
    if !swarm::manager::controlapi::validate::is_dns_label(cx.stack) {
        return err(
            "",
            format!(
                "invalid stack name {:?}: 1 to 63 letters, digits or '-', not starting or ending with '-'",
                cx.stack
            ),
        );
    }
    let mut plan = StackPlan { name: cx.stack.to_string(), ..Default::default() };
    let uses_default = file.services.values().any(|s| s.networks.is_none());
    let mut networks = file.networks.clone();
    if uses_default && !networks.contains_key("default") {
        networks.insert("default".into(), None);
    }
    for (key, def) in &networks {
        plan.networks.push(network(key, def.as_ref(), cx)?);
    }
    for (key, def) in &file.secrets {
        plan.secrets.push(file_object("secrets", key, def, cx, MAX_SECRET_BYTES)?);
    }
    for (key, def) in &file.configs {
        plan.configs.push(file_object("configs", key, def, cx, MAX_CONFIG_BYTES)?);
    }
    for (key, svc) in &file.services {
        plan.unsupported.extend(svc.unsupported_keys().into_iter().map(str::to_string));
        plan.services.push(service(key, svc, file, &plan, cx)?);
    }
    Ok(plan)
}

fn map_of(v: &Option<MapOrList>) -> BTreeMap<String, String> {
    match v {
        None => BTreeMap::new(),
        Some(MapOrList::Map(m)) => {
            m.iter().map(|(k, v)| (k.clone(), v.as_ref().map(Scalar::text).unwrap_or_default())).collect()
        }
        Some(MapOrList::List(l)) => l
            .iter()
            .map(|i| match i.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (i.clone(), String::new()),
            })
            .collect(),
    }
}

fn external_name(ext: &Option<External>) -> Option<Option<String>> {
    match ext {
        Some(e) if e.is_external() => Some(match e {
            External::Named { name } => name.clone(),
            External::Flag(_) => None,
        }),
        _ => None,
    }
}

fn network(key: &str, def: Option<&schema::NetworkDef>, cx: &Context) -> Result<NetworkPlan, ConvertError> {
    let path = format!("networks.{key}");
    let def = def.cloned().unwrap_or_default();
    if let Some(ext_name) = external_name(&def.external) {
        let name = ext_name.or(def.name.clone()).unwrap_or_else(|| key.to_string());
        let spec = NetworkSpec {
            annotations: Annotations { name, labels: Default::default() },
            driver: "overlay".into(),
            ipam: None,
            attachable: false,
            internal: false,
            ingress: false,
        };
        return Ok(NetworkPlan { key: key.into(), external: true, spec });
    }
    let driver = def.driver.clone().unwrap_or_else(|| "overlay".into());
    if driver != "overlay" {
        return err(
            format!("{path}.driver"),
            format!("driver {driver:?} is not supported: a stack's networks are overlay networks"),
        );
    }
    let bool_of = |v: &Option<Scalar>, what: &str| -> Result<bool, ConvertError> {
        v.as_ref()
            .map(|s| s.as_bool())
            .transpose()
            .map(|b| b.unwrap_or(false))
            .map_err(|m| ConvertError { path: format!("{path}.{what}"), msg: m })
    };
    let ipam = match def.ipam.as_ref().map(|i| i.config.as_slice()) {
        None | Some([]) => None,
        Some([pool]) => match &pool.subnet {
            Some(subnet) => {
                Some(IpamConfig { subnet: subnet.clone(), gateway: pool.gateway.clone().unwrap_or_default() })
            }
            None => return err(format!("{path}.ipam.config[0]"), "subnet is required"),
        },
        Some(_) => return err(format!("{path}.ipam.config"), "only one address pool per network is supported"),
    };
    Ok(NetworkPlan {
        key: key.into(),
        external: false,
        spec: NetworkSpec {
            annotations: Annotations {
                name: def.name.clone().unwrap_or_else(|| cx.scoped(key)),
                labels: cx.labels(map_of(&def.labels)),
            },
            driver,
            ipam,
            attachable: bool_of(&def.attachable, "attachable")?,
            internal: bool_of(&def.internal, "internal")?,
            ingress: false,
        },
    })
}

fn file_object(
    kind: &str,
    key: &str,
    def: &schema::FileObjectDef,
    cx: &Context,
    max: usize,
) -> Result<FilePlan, ConvertError> {
    let path = format!("{kind}.{key}");
    let labels = cx.labels(map_of(&def.labels));
    if let Some(ext_name) = external_name(&def.external) {
        let name = ext_name.or(def.name.clone()).unwrap_or_else(|| key.to_string());
        return Ok(FilePlan { key: key.into(), name, external: true, data: vec![], labels, template_driver: None });
    }
    let data = match (&def.file, &def.content, &def.environment) {
        (Some(f), None, None) => {
            let p = cx.path(f);
            std::fs::read(&p).map_err(|e| ConvertError {
                path: format!("{path}.file"),
                msg: format!("cannot read {}: {e}", p.display()),
            })?
        }
        (None, Some(c), None) if kind == "configs" => c.clone().into_bytes(),
        (None, None, Some(var)) => match cx.vars.get(var) {
            Some(v) => v.as_bytes().to_vec(),
            None => return err(format!("{path}.environment"), format!("environment variable {var} is not set")),
        },
        (None, None, None) => {
            let what = if kind == "configs" {
                "file, content, environment or external"
            } else {
                "file, environment or external"
            };
            return err(path, format!("one of {what} is required"));
        }
        _ => return err(path, "only one of file, content and environment may be given"),
    };
    if data.len() > max {
        return err(path, format!("data is {} bytes, more than the limit of {} KiB", data.len(), max / 1024));
    }
    if let Some(d) = &def.template_driver {
        if d != "golang" {
            return err(format!("{path}.template_driver"), format!("unknown template driver {d:?} (expected golang)"));
        }
    }
    Ok(FilePlan {
        key: key.into(),
        name: def.name.clone().unwrap_or_else(|| cx.scoped(key)),
        external: false,
        data,
        labels,
        template_driver: def.template_driver.clone(),
    })
}

fn duration(v: &Option<String>, path: &str) -> Result<Option<Duration>, ConvertError> {
    v.as_ref().map(|s| opts::duration(s)).transpose().map_err(|m| ConvertError { path: path.into(), msg: m })
}

fn words(v: &OneOrMany, path: &str) -> Result<Vec<String>, ConvertError> {
    match v {
        OneOrMany::One(s) => opts::shell_words(s).map_err(|m| ConvertError { path: path.into(), msg: m }),
        OneOrMany::Many(items) => Ok(items.iter().map(Scalar::text).collect()),
    }
}

/// The environment: `env_file`s in order, then `environment`; a key without a value takes the variable's value
/// and is left out when it is unset, as Docker does.
fn environment(svc: &schema::Service, p: &str, cx: &Context) -> Result<Vec<String>, ConvertError> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    if let Some(files) = &svc.env_file {
        for f in files.items() {
            let path = cx.path(&f);
            let iter = dotenvy::from_path_iter(&path).map_err(|e| ConvertError {
                path: format!("{p}.env_file"),
                msg: format!("cannot read {}: {e}", path.display()),
            })?;
            for item in iter {
                let (k, v) = item.map_err(|e| ConvertError {
                    path: format!("{p}.env_file"),
                    msg: format!("{}: {e}", path.display()),
                })?;
                env.insert(k, v);
            }
        }
    }
    let unset_from_vars = |k: &str| cx.vars.get(k).map(str::to_string);
    match &svc.environment {
        None => {}
        Some(MapOrList::Map(m)) => {
            for (k, v) in m {
                match v {
                    Some(v) => {
                        env.insert(k.clone(), v.text());
                    }
                    None => {
                        if let Some(v) = unset_from_vars(k) {
                            env.insert(k.clone(), v);
                        }
                    }
                }
            }
        }
        Some(MapOrList::List(l)) => {
            for item in l {
                match item.split_once('=') {
                    Some(("", _)) => {
                        return err(format!("{p}.environment"), format!("invalid environment variable {item:?}"))
                    }
                    Some((k, v)) => {
                        env.insert(k.into(), v.into());
                    }
                    None => {
                        if let Some(v) = unset_from_vars(item) {
                            env.insert(item.clone(), v);
                        }
                    }
                }
            }
        }
    }
    Ok(env.into_iter().map(|(k, v)| format!("{k}={v}")).collect())
}

fn service(
    key: &str,
    svc: &schema::Service,
    file: &ComposeFile,
    plan: &StackPlan,
    cx: &Context,
) -> Result<ServicePlan, ConvertError> {
    let p = format!("services.{key}");
    let image = match &svc.image {
        Some(i) if !i.trim().is_empty() => i.clone(),
        _ => return err(&p, "image is required (Swarm does not build images)"),
    };
    let deploy = svc.deploy.clone().unwrap_or_default();
    let mut container = ContainerSpec {
        image,
        command: svc.entrypoint.as_ref().map(|e| words(e, &format!("{p}.entrypoint"))).transpose()?.unwrap_or_default(),
        args: svc.command.as_ref().map(|c| words(c, &format!("{p}.command"))).transpose()?.unwrap_or_default(),
        env: environment(svc, &p, cx)?,
        dir: svc.working_dir.clone().unwrap_or_default(),
        user: svc.user.as_ref().map(Scalar::text).unwrap_or_default(),
        hostname: svc.hostname.clone().unwrap_or_default(),
        labels: cx.labels(map_of(&svc.labels)),
        stop_signal: svc.stop_signal.clone().unwrap_or_default(),
        stop_grace_period: duration(&svc.stop_grace_period, &format!("{p}.stop_grace_period"))?
            .unwrap_or(Duration::from_secs(10)),
        ..Default::default()
    };
    let flag = |v: &Option<Scalar>, what: &str| -> Result<bool, ConvertError> {
        v.as_ref()
            .map(Scalar::as_bool)
            .transpose()
            .map(|b| b.unwrap_or(false))
            .map_err(|m| ConvertError { path: format!("{p}.{what}"), msg: m })
    };
    container.init = flag(&svc.init, "init")?;
    container.read_only = flag(&svc.read_only, "read_only")?;
    for (list, out, what) in [
        (&svc.cap_add, &mut container.capability_add, "cap_add"),
        (&svc.cap_drop, &mut container.capability_drop, "cap_drop"),
    ] {
        for c in list {
            out.push(opts::capability(c).map_err(|m| ConvertError { path: format!("{p}.{what}"), msg: m })?);
        }
    }
    for (name, u) in &svc.ulimits {
        let up = format!("{p}.ulimits.{name}");
        let num = |s: &Scalar| {
            s.text()
                .trim()
                .parse::<i64>()
                .map_err(|_| ConvertError { path: up.clone(), msg: format!("{:?} is not an integer", s.text()) })
        };
        let (soft, hard) = match u {
            schema::UlimitDef::Single(v) => (num(v)?, num(v)?),
            schema::UlimitDef::Pair { soft, hard } => (num(soft)?, num(hard)?),
        };
        let u = Ulimit { name: name.clone(), soft, hard };
        u.check().map_err(|m| ConvertError { path: up.clone(), msg: m })?;
        container.ulimits.push(u);
    }
    container.healthcheck = healthcheck(svc.healthcheck.as_ref(), &format!("{p}.healthcheck"))?;
    container.mounts = mounts(svc, file, &p, cx)?;
    container.secrets = secret_refs(&svc.secrets, plan, &format!("{p}.secrets"))?;
    container.configs = config_refs(&svc.configs, plan, &format!("{p}.configs"))?;

    let mode = mode(&deploy, &p)?;
    let placement = placement(deploy.placement.as_ref(), &format!("{p}.deploy.placement"))?;
    let resources = resources(deploy.resources.as_ref(), &format!("{p}.deploy.resources"))?;
    let restart_policy = restart_policy(deploy.restart_policy.as_ref(), &format!("{p}.deploy.restart_policy"))?;
    let update = update_config(deploy.update_config.as_ref(), &format!("{p}.deploy.update_config"), true)?;
    let rollback = update_config(deploy.rollback_config.as_ref(), &format!("{p}.deploy.rollback_config"), false)?;
    let endpoint_mode = match deploy.endpoint_mode.as_deref() {
        None | Some("vip") => EndpointMode::Vip,
        Some("dnsrr") => EndpointMode::Dnsrr,
        Some(other) => {
            return err(
                format!("{p}.deploy.endpoint_mode"),
                format!("invalid endpoint mode {other:?} (expected vip or dnsrr)"),
            )
        }
    };
    let mut ports = Vec::new();
    for (i, port) in svc.ports.iter().enumerate() {
        ports.extend(ports_of(port, &format!("{p}.ports[{i}]"))?);
    }
    if endpoint_mode == EndpointMode::Dnsrr && ports.iter().any(|p| p.publish_mode == PublishMode::Ingress) {
        return err(
            format!("{p}.ports"),
            "ports published in ingress mode need endpoint_mode vip (use mode: host with dnsrr)",
        );
    }
    let log_driver = svc.logging.as_ref().and_then(|l| {
        l.driver.as_ref().map(|d| LogDriver {
            name: d.clone(),
            options: l.options.iter().map(|(k, v)| (k.clone(), v.text())).collect(),
        })
    });
    let networks = attachments(svc, plan, &p)?;
    let after_healthy = match &svc.depends_on {
        Some(d) => {
            let mut out = Vec::new();
            for dep in d.healthy() {
                if !file.services.contains_key(&dep) {
                    return err(format!("{p}.depends_on"), format!("service {dep:?} is not defined in the file"));
                }
                out.push(cx.scoped(&dep));
            }
            out
        }
        None => vec![],
    };
    let spec = ServiceSpec {
        annotations: Annotations { name: cx.scoped(key), labels: cx.labels(map_of(&deploy.labels)) },
        task_template: TaskSpec {
            container,
            resources,
            restart_policy,
            placement,
            force_update: 0,
            log_driver,
            networks,
        },
        mode,
        update_config: update,
        rollback_config: rollback,
        endpoint_spec: EndpointSpec { mode: endpoint_mode, ports },
    };
    Ok(ServicePlan { key: key.into(), spec, after_healthy })
}

fn mode(d: &schema::Deploy, p: &str) -> Result<ServiceMode, ConvertError> {
    let replicas = d
        .replicas
        .as_ref()
        .map(Scalar::as_u64)
        .transpose()
        .map_err(|m| ConvertError { path: format!("{p}.deploy.replicas"), msg: m })?;
    Ok(match d.mode.as_deref().unwrap_or("replicated") {
        "replicated" => ServiceMode::Replicated { replicas: replicas.unwrap_or(1) },
        "global" if replicas.is_some() => {
            return err(format!("{p}.deploy.replicas"), "replicas can only be used with replicated mode")
        }
        "global" => ServiceMode::Global,
        "replicated-job" => {
            let n = replicas.unwrap_or(1);
            ServiceMode::ReplicatedJob { max_concurrent: n, total_completions: n }
        }
        "global-job" => ServiceMode::GlobalJob,
        other => {
            return err(
                format!("{p}.deploy.mode"),
                format!("invalid mode {other:?} (expected replicated, global, replicated-job or global-job)"),
            )
        }
    })
}

fn placement(pl: Option<&schema::Placement>, p: &str) -> Result<Placement, ConvertError> {
    let Some(pl) = pl else { return Ok(Placement::default()) };
    let mut out = Placement::default();
    for (i, c) in pl.constraints.iter().enumerate() {
        out.constraints.push(
            Constraint::parse(c)
                .map_err(|e| ConvertError { path: format!("{p}.constraints[{i}]"), msg: e.to_string() })?,
        );
    }
    for (i, pref) in pl.preferences.iter().enumerate() {
        let pref = opts::placement_pref(&format!("spread={}", pref.spread))
            .map_err(|m| ConvertError { path: format!("{p}.preferences[{i}]"), msg: m })?;
        out.preferences.push(pref);
    }
    if let Some(m) = &pl.max_replicas_per_node {
        out.max_replicas =
            m.as_u64().map_err(|msg| ConvertError { path: format!("{p}.max_replicas_per_node"), msg })?;
    }
    Ok(out)
}

fn amounts(
    a: Option<&schema::ResourceAmounts>,
    p: &str,
    limits: bool,
) -> Result<(Resources, BTreeMap<String, u64>), ConvertError> {
    let Some(a) = a else { return Ok(Default::default()) };
    let mut r = Resources::default();
    if let Some(c) = &a.cpus {
        r.nano_cpus = opts::nano_cpus(&c.text()).map_err(|m| ConvertError { path: format!("{p}.cpus"), msg: m })?;
    }
    if let Some(m) = &a.memory {
        r.memory_bytes = opts::size(&m.text()).map_err(|msg| ConvertError { path: format!("{p}.memory"), msg })?;
    }
    if let Some(n) = &a.pids {
        if !limits {
            return err(format!("{p}.pids"), "pids can only be a limit");
        }
        r.pids = n.as_u64().map_err(|msg| ConvertError { path: format!("{p}.pids"), msg })? as i64;
    }
    let mut generic = BTreeMap::new();
    for (i, g) in a.generic_resources.iter().enumerate() {
        if limits {
            return err(format!("{p}.generic_resources"), "generic resources can only be reserved");
        }
        let v = g
            .discrete_resource_spec
            .value
            .as_u64()
            .map_err(|msg| ConvertError { path: format!("{p}.generic_resources[{i}]"), msg })?;
        generic.insert(g.discrete_resource_spec.kind.clone(), v);
    }
    Ok((r, generic))
}

fn resources(r: Option<&schema::Resources>, p: &str) -> Result<ResourceRequirements, ConvertError> {
    let Some(r) = r else { return Ok(Default::default()) };
    let (limits, _) = amounts(r.limits.as_ref(), &format!("{p}.limits"), true)?;
    let (reservations, generic) = amounts(r.reservations.as_ref(), &format!("{p}.reservations"), false)?;
    Ok(ResourceRequirements { limits, reservations, generic_reservations: generic })
}

fn restart_policy(r: Option<&schema::RestartPolicy>, p: &str) -> Result<RestartPolicy, ConvertError> {
    let mut out = RestartPolicy::default();
    let Some(r) = r else { return Ok(out) };
    if let Some(c) = &r.condition {
        out.condition = match c.as_str() {
            // The compose-spec's "unless-stopped" is Docker's "any" for a swarm service.
            "unless-stopped" => RestartCondition::Any,
            other => other.parse().map_err(|m| ConvertError { path: format!("{p}.condition"), msg: m })?,
        };
    }
    if let Some(d) = duration(&r.delay, &format!("{p}.delay"))? {
        out.delay = d;
    }
    if let Some(w) = duration(&r.window, &format!("{p}.window"))? {
        out.window = w;
    }
    if let Some(m) = &r.max_attempts {
        out.max_attempts = m.as_u64().map_err(|msg| ConvertError { path: format!("{p}.max_attempts"), msg })?;
    }
    Ok(out)
}

fn update_config(u: Option<&schema::UpdateConfig>, p: &str, update: bool) -> Result<UpdateConfig, ConvertError> {
    let mut out = UpdateConfig::default();
    let Some(u) = u else { return Ok(out) };
    if let Some(n) = &u.parallelism {
        out.parallelism = n.as_u64().map_err(|msg| ConvertError { path: format!("{p}.parallelism"), msg })?;
    }
    if let Some(d) = duration(&u.delay, &format!("{p}.delay"))? {
        out.delay = d;
    }
    if let Some(d) = duration(&u.monitor, &format!("{p}.monitor"))? {
        out.monitor = d;
    }
    if let Some(a) = &u.failure_action {
        out.failure_action = match (a.as_str(), update) {
            ("pause", _) => FailureAction::Pause,
            ("continue", _) => FailureAction::Continue,
            ("rollback", true) => FailureAction::Rollback,
            _ => {
                let allowed = if update { "pause, continue or rollback" } else { "pause or continue" };
                return err(
                    format!("{p}.failure_action"),
                    format!("invalid failure action {a:?} (expected {allowed})"),
                );
            }
        };
    }
    if let Some(r) = &u.max_failure_ratio {
        let v = r.as_f64().map_err(|msg| ConvertError { path: format!("{p}.max_failure_ratio"), msg })?;
        if !(0.0..=1.0).contains(&v) {
            return err(format!("{p}.max_failure_ratio"), "must be between 0 and 1");
        }
        out.max_failure_ratio = v;
    }
    if let Some(o) = &u.order {
        out.order = match o.as_str() {
            "stop-first" => UpdateOrder::StopFirst,
            "start-first" => UpdateOrder::StartFirst,
            other => {
                return err(
                    format!("{p}.order"),
                    format!("invalid order {other:?} (expected stop-first or start-first)"),
                )
            }
        };
    }
    Ok(out)
}

fn healthcheck(h: Option<&schema::Healthcheck>, p: &str) -> Result<Option<HealthConfig>, ConvertError> {
    let Some(h) = h else { return Ok(None) };
    if h.disable
        .as_ref()
        .map(Scalar::as_bool)
        .transpose()
        .map_err(|m| ConvertError { path: format!("{p}.disable"), msg: m })?
        == Some(true)
    {
        if h.test.is_some() {
            return err(p, "test and disable cannot both be set");
        }
        return Ok(Some(HealthConfig { test: vec!["NONE".into()], ..Default::default() }));
    }
    let test = match &h.test {
        None => vec![],
        Some(OneOrMany::One(s)) => vec!["CMD-SHELL".into(), s.clone()],
        Some(OneOrMany::Many(items)) => {
            let t: Vec<String> = items.iter().map(Scalar::text).collect();
            match t.first().map(String::as_str) {
                Some("CMD" | "CMD-SHELL" | "NONE") => t,
                _ => return err(format!("{p}.test"), "a test list must start with CMD, CMD-SHELL or NONE"),
            }
        }
    };
    let retries = h
        .retries
        .as_ref()
        .map(Scalar::as_u64)
        .transpose()
        .map_err(|m| ConvertError { path: format!("{p}.retries"), msg: m })?;
    Ok(Some(HealthConfig {
        test,
        interval: duration(&h.interval, &format!("{p}.interval"))?.unwrap_or_default(),
        timeout: duration(&h.timeout, &format!("{p}.timeout"))?.unwrap_or_default(),
        retries: retries.unwrap_or(0),
        start_period: duration(&h.start_period, &format!("{p}.start_period"))?.unwrap_or_default(),
        start_interval: duration(&h.start_interval, &format!("{p}.start_interval"))?.unwrap_or_default(),
    }))
}

/// `"8080:80/udp"`, `"80"`, `"8000-8001:80-81"`, `80`, or the long form.
fn ports_of(port: &Port, p: &str) -> Result<Vec<PortConfig>, ConvertError> {
    let bad = |m: String| ConvertError { path: p.into(), msg: m };
    let protocol = |s: Option<&str>| -> Result<PortProtocol, ConvertError> {
        match s.unwrap_or("tcp") {
            "tcp" => Ok(PortProtocol::Tcp),
            "udp" => Ok(PortProtocol::Udp),
            other => Err(bad(format!("invalid protocol {other:?} (expected tcp or udp)"))),
        }
    };
    let number = |s: &str| -> Result<u16, ConvertError> {
        s.trim().parse::<u16>().ok().filter(|n| *n > 0).ok_or_else(|| bad(format!("invalid port {s:?}")))
    };
    let range = |s: &str| -> Result<Vec<u16>, ConvertError> {
        match s.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (number(a)?, number(b)?);
                if a > b {
                    return Err(bad(format!("invalid port range {s:?}")));
                }
                Ok((a..=b).collect())
            }
            None => Ok(vec![number(s)?]),
        }
    };
    match port {
        Port::Short(s) => {
            let text = s.text();
            let (body, proto) = match text.split_once('/') {
                Some((b, pr)) => (b.to_string(), protocol(Some(pr))?),
                None => (text.clone(), PortProtocol::Tcp),
            };
            let parts: Vec<&str> = body.split(':').collect();
            let (published, target) = match parts[..] {
                [t] => (None, t),
                [pb, t] => (Some(pb), t),
                [_ip, _, _] => return Err(bad("a host IP cannot be given for a swarm service's port".into())),
                _ => return Err(bad(format!("invalid port {text:?}"))),
            };
            let targets = range(target)?;
            let published = match published {
                Some(pb) => range(pb)?,
                None => vec![],
            };
            if !published.is_empty() && published.len() != targets.len() {
                return Err(bad(format!("invalid port {text:?}: the published and target ranges differ in length")));
            }
            Ok(targets
                .iter()
                .enumerate()
                .map(|(i, t)| PortConfig {
                    name: String::new(),
                    protocol: proto,
                    target_port: *t,
                    published_port: published.get(i).copied().unwrap_or(0),
                    publish_mode: PublishMode::Ingress,
                    preserve_client_ip: false,
                })
                .collect())
        }
        Port::Long(l) => {
            if l.host_ip.is_some() {
                return Err(bad("host_ip cannot be given for a swarm service's port".into()));
            }
            let publish_mode = match l.mode.as_deref().unwrap_or("ingress") {
                "ingress" => PublishMode::Ingress,
                "host" => PublishMode::Host,
                other => return Err(bad(format!("invalid mode {other:?} (expected ingress or host)"))),
            };
            Ok(vec![PortConfig {
                name: l.name.clone().unwrap_or_default(),
                protocol: protocol(l.protocol.as_deref())?,
                target_port: number(&l.target.text())?,
                published_port: l.published.as_ref().map(|s| number(&s.text())).transpose()?.unwrap_or(0),
                publish_mode,
                preserve_client_ip: false,
            }])
        }
    }
}

fn attachments(svc: &schema::Service, plan: &StackPlan, p: &str) -> Result<Vec<NetworkAttachmentConfig>, ConvertError> {
    let wanted: Vec<(String, Vec<String>)> = match &svc.networks {
        None => vec![("default".into(), vec![])],
        Some(schema::ServiceNetworks::List(l)) => l.iter().map(|n| (n.clone(), vec![])).collect(),
        Some(schema::ServiceNetworks::Map(m)) => {
            m.iter().map(|(n, c)| (n.clone(), c.as_ref().map(|c| c.aliases.clone()).unwrap_or_default())).collect()
        }
    };
    let mut out = Vec::new();
    for (key, aliases) in wanted {
        let Some(n) = plan.networks.iter().find(|n| n.key == key) else {
            return err(format!("{p}.networks"), format!("network {key:?} is not declared in the top-level networks"));
        };
        out.push(NetworkAttachmentConfig { target: n.spec.annotations.name.clone(), aliases });
    }
    Ok(out)
}

fn volume_source(key: &str, file: &ComposeFile, cx: &Context, p: &str) -> Result<String, ConvertError> {
    let Some(def) = file.volumes.get(key) else {
        return err(p, format!("volume {key:?} is not declared in the top-level volumes"));
    };
    let def = def.clone().unwrap_or_default();
    if let Some(driver) = def.driver.as_deref().filter(|d| *d != "local") {
        return err(format!("volumes.{key}.driver"), format!("volume driver {driver:?} is not supported (only local)"));
    }
    Ok(match external_name(&def.external) {
        Some(ext) => ext.or(def.name).unwrap_or_else(|| key.to_string()),
        None => def.name.unwrap_or_else(|| cx.scoped(key)),
    })
}

fn mounts(svc: &schema::Service, file: &ComposeFile, p: &str, cx: &Context) -> Result<Vec<Mount>, ConvertError> {
    let mut out = Vec::new();
    let is_path = |s: &str| s.starts_with('/') || s.starts_with('.') || s.starts_with('~');
    let host_path = |s: &str| -> String {
        if let Some(rest) = s.strip_prefix("~/") {
            if let Some(home) = cx.vars.get("HOME") {
                return Path::new(home).join(rest).display().to_string();
            }
        }
        cx.path(s).display().to_string()
    };
    for (i, v) in svc.volumes.iter().enumerate() {
        let vp = format!("{p}.volumes[{i}]");
        out.push(match v {
            ServiceVolume::Short(s) => {
                let parts: Vec<&str> = s.split(':').collect();
                let (src, target, mode) = match parts[..] {
                    [t] => ("", t, ""),
                    [s, t] => (s, t, ""),
                    [s, t, m] => (s, t, m),
                    _ => return err(vp, format!("invalid volume {s:?}")),
                };
                let readonly = mode.split(',').any(|m| m == "ro");
                if src.is_empty() {
                    Mount {
                        kind: MountType::Volume,
                        source: String::new(),
                        target: target.into(),
                        readonly,
                        tmpfs_size: 0,
                    }
                } else if is_path(src) {
                    Mount {
                        kind: MountType::Bind,
                        source: host_path(src),
                        target: target.into(),
                        readonly,
                        tmpfs_size: 0,
                    }
                } else {
                    Mount {
                        kind: MountType::Volume,
                        source: volume_source(src, file, cx, &vp)?,
                        target: target.into(),
                        readonly,
                        tmpfs_size: 0,
                    }
                }
            }
            ServiceVolume::Long(l) => {
                let readonly = l
                    .read_only
                    .as_ref()
                    .map(Scalar::as_bool)
                    .transpose()
                    .map_err(|m| ConvertError { path: format!("{vp}.read_only"), msg: m })?
                    .unwrap_or(false);
                let src = l.source.clone().unwrap_or_default();
                match l.kind.as_str() {
                    "bind" if src.is_empty() => return err(vp, "a bind mount needs a source"),
                    "bind" => Mount {
                        kind: MountType::Bind,
                        source: host_path(&src),
                        target: l.target.clone(),
                        readonly,
                        tmpfs_size: 0,
                    },
                    "volume" => {
                        let source = if src.is_empty() { String::new() } else { volume_source(&src, file, cx, &vp)? };
                        Mount { kind: MountType::Volume, source, target: l.target.clone(), readonly, tmpfs_size: 0 }
                    }
                    "tmpfs" => {
                        let size = match l.tmpfs.as_ref().and_then(|t| t.size.as_ref()) {
                            Some(s) => opts::size(&s.text())
                                .map_err(|m| ConvertError { path: format!("{vp}.tmpfs.size"), msg: m })?
                                as u64,
                            None => 0,
                        };
                        Mount {
                            kind: MountType::Tmpfs,
                            source: String::new(),
                            target: l.target.clone(),
                            readonly,
                            tmpfs_size: size,
                        }
                    }
                    other => {
                        return err(
                            format!("{vp}.type"),
                            format!("mount type {other:?} is not supported (bind, volume or tmpfs)"),
                        )
                    }
                }
            }
        });
    }
    if let Some(t) = &svc.tmpfs {
        for target in t.items() {
            let target = target.split(':').next().unwrap_or_default().to_string();
            out.push(Mount { kind: MountType::Tmpfs, source: String::new(), target, readonly: false, tmpfs_size: 0 });
        }
    }
    Ok(out)
}

/// A file mode as compose files write it: `0440` (YAML 1.1 octal, read by a YAML 1.2 parser as the integer 440,
/// so digits 0–7 are taken as octal), `"0440"`, or `0o440`.
fn file_mode(s: &Scalar) -> Result<u32, String> {
    let text = s.text();
    let t = text.trim();
    let digits = t.strip_prefix("0o").unwrap_or(t);
    if !digits.is_empty() && digits.chars().all(|c| ('0'..='7').contains(&c)) {
        return u32::from_str_radix(digits, 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| format!("invalid file mode {t}"));
    }
    t.parse::<u32>().ok().filter(|m| *m <= 0o777).ok_or_else(|| format!("invalid file mode {t}"))
}

fn file_target(
    r: &FileRef,
    default_target: impl Fn(&str) -> String,
    p: &str,
) -> Result<(String, FileTarget), ConvertError> {
    Ok(match r {
        FileRef::Short(s) => {
            (s.clone(), FileTarget { name: default_target(s), uid: "0".into(), gid: "0".into(), mode: 0o444 })
        }
        FileRef::Long(l) => {
            let mode = l
                .mode
                .as_ref()
                .map(file_mode)
                .transpose()
                .map_err(|m| ConvertError { path: format!("{p}.mode"), msg: m })?;
            (
                l.source.clone(),
                FileTarget {
                    name: l.target.clone().unwrap_or_else(|| default_target(&l.source)),
                    uid: l.uid.as_ref().map(Scalar::text).unwrap_or_else(|| "0".into()),
                    gid: l.gid.as_ref().map(Scalar::text).unwrap_or_else(|| "0".into()),
                    mode: mode.unwrap_or(0o444),
                },
            )
        }
    })
}

fn secret_refs(refs: &[FileRef], plan: &StackPlan, p: &str) -> Result<Vec<SecretReference>, ConvertError> {
    let mut out = Vec::new();
    for (i, r) in refs.iter().enumerate() {
        let rp = format!("{p}[{i}]");
        let (source, target) = file_target(r, |s| s.to_string(), &rp)?;
        let Some(s) = plan.secrets.iter().find(|s| s.key == source) else {
            return err(rp, format!("secret {source:?} is not declared in the top-level secrets"));
        };
        out.push(SecretReference { secret_id: String::new(), secret_name: s.name.clone(), target });
    }
    Ok(out)
}

fn config_refs(refs: &[FileRef], plan: &StackPlan, p: &str) -> Result<Vec<ConfigReference>, ConvertError> {
    let mut out = Vec::new();
    for (i, r) in refs.iter().enumerate() {
        let rp = format!("{p}[{i}]");
        let (source, target) = file_target(r, |s| format!("/{s}"), &rp)?;
        let Some(c) = plan.configs.iter().find(|c| c.key == source) else {
            return err(rp, format!("config {source:?} is not declared in the top-level configs"));
        };
        out.push(ConfigReference { config_id: String::new(), config_name: c.name.clone(), target });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::{load, yaml};

    fn plan_in(dir: &Path, text: &str) -> Result<StackPlan, String> {
        let docs = vec![yaml::parse("c.yml", text).map_err(|e| e.0)?];
        let env = [("FROM_ENV", "e"), ("SECRET_VAR", "s3cret")].map(|(k, v)| (k.to_string(), v.to_string()));
        let loaded =
            load::load_docs(docs, dir.to_path_buf(), Vars::new(env, Default::default()), true).map_err(|e| e.0)?;
        loaded.plan("app").map_err(|e| e.0)
    }

    fn plan(text: &str) -> StackPlan {
        plan_in(Path::new("/nonexistent"), text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    /// The spec of service `s` of a one-service file whose service body is `body` (indented by 4).
    fn spec_of(body: &str, top: &str) -> ServiceSpec {
        let indented: String = body.lines().map(|l| format!("    {l}\n")).collect();
        let text = format!("services:\n  s:\n    image: busybox\n{indented}{top}");
        plan(&text).services.remove(0).spec
    }

    #[test]
    fn service_keys_convert_like_docker_stack_deploy() {
        type Check = fn(&ServiceSpec);
        let cases: Vec<(&str, &str, Check)> = vec![
            ("command: echo \"a b\"\nentrypoint: [sh, -c]", "", |s| {
                assert_eq!(s.task_template.container.args, ["echo", "a b"]);
                assert_eq!(s.task_template.container.command, ["sh", "-c"]);
            }),
            ("environment:\n  B: 2\n  FROM_ENV:\n  UNSET:\n  A: x", "", |s| {
                assert_eq!(s.task_template.container.env, ["A=x", "B=2", "FROM_ENV=e"]);
            }),
            ("environment: [\"A=1\", FROM_ENV, NOPE]", "", |s| assert_eq!(s.task_template.container.env, ["A=1", "FROM_ENV=e"])),
            ("labels: {c: d}\ndeploy:\n  labels: [a=b]", "", |s| {
                assert_eq!(s.annotations.labels["a"], "b");
                assert_eq!(s.annotations.labels[NAMESPACE_LABEL], "app");
                assert_eq!(s.task_template.container.labels["c"], "d");
                assert_eq!(s.task_template.container.labels[NAMESPACE_LABEL], "app");
                assert_eq!(s.annotations.name, "app_s");
            }),
            ("deploy: {replicas: \"3\"}", "", |s| assert_eq!(s.mode, ServiceMode::Replicated { replicas: 3 })),
            ("deploy: {mode: global}", "", |s| assert_eq!(s.mode, ServiceMode::Global)),
            ("deploy: {mode: replicated-job, replicas: 4}", "", |s| {
                assert_eq!(s.mode, ServiceMode::ReplicatedJob { max_concurrent: 4, total_completions: 4 })
            }),
            ("", "", |s| {
                assert_eq!(s.mode, ServiceMode::Replicated { replicas: 1 });
                assert_eq!(s.task_template.container.stop_grace_period, Duration::from_secs(10));
                assert_eq!(s.task_template.restart_policy, RestartPolicy::default());
            }),
            (
                "deploy:\n  placement:\n    constraints: [node.role==manager, \"node.labels.zone != east\"]\n    preferences:\n      - spread: node.labels.zone\n    max_replicas_per_node: 2",
                "",
                |s| {
                    let p = &s.task_template.placement;
                    assert_eq!(p.constraints.iter().map(|c| c.to_string()).collect::<Vec<_>>(), ["node.role==manager", "node.labels.zone!=east"]);
                    assert_eq!(p.preferences, [swarm::api::PlacementPreference::Spread("node.labels.zone".into())]);
                    assert_eq!(p.max_replicas, 2);
                },
            ),
            (
                "deploy:\n  resources:\n    limits: {cpus: \"0.5\", memory: 64M, pids: 100}\n    reservations:\n      cpus: 0.25\n      memory: 1G\n      generic_resources:\n        - discrete_resource_spec: {kind: gpu, value: 2}",
                "",
                |s| {
                    let r = &s.task_template.resources;
                    assert_eq!((r.limits.nano_cpus, r.limits.memory_bytes, r.limits.pids), (500_000_000, 64 << 20, 100));
                    assert_eq!((r.reservations.nano_cpus, r.reservations.memory_bytes), (250_000_000, 1 << 30));
                    assert_eq!(r.generic_reservations["gpu"], 2);
                },
            ),
            ("deploy:\n  restart_policy: {condition: on-failure, delay: 2s, max_attempts: 3, window: 1m}", "", |s| {
                let r = &s.task_template.restart_policy;
                assert_eq!(r.condition, RestartCondition::OnFailure);
                assert_eq!((r.delay, r.max_attempts, r.window), (Duration::from_secs(2), 3, Duration::from_secs(60)));
            }),
            (
                "deploy:\n  update_config: {parallelism: 2, delay: 10s, failure_action: rollback, monitor: 30s, max_failure_ratio: 0.3, order: start-first}\n  rollback_config: {parallelism: 0, failure_action: continue}",
                "",
                |s| {
                    let u = &s.update_config;
                    assert_eq!((u.parallelism, u.delay, u.monitor), (2, Duration::from_secs(10), Duration::from_secs(30)));
                    assert_eq!((u.failure_action, u.order, u.max_failure_ratio), (FailureAction::Rollback, UpdateOrder::StartFirst, 0.3));
                    assert_eq!((s.rollback_config.parallelism, s.rollback_config.failure_action), (0, FailureAction::Continue));
                },
            ),
            ("deploy: {endpoint_mode: dnsrr}", "", |s| assert_eq!(s.endpoint_spec.mode, EndpointMode::Dnsrr)),
            ("healthcheck:\n  test: wget -q localhost\n  interval: 5s\n  timeout: 1s\n  retries: 4\n  start_period: 2s\n  start_interval: 1s", "", |s| {
                let h = s.task_template.container.healthcheck.clone().unwrap();
                assert_eq!(h.test, ["CMD-SHELL", "wget -q localhost"]);
                assert_eq!((h.interval, h.timeout, h.retries), (Duration::from_secs(5), Duration::from_secs(1), 4));
                assert_eq!((h.start_period, h.start_interval), (Duration::from_secs(2), Duration::from_secs(1)));
            }),
            ("healthcheck: {test: [CMD, true]}", "", |s| assert_eq!(s.task_template.container.healthcheck.clone().unwrap().test, ["CMD", "true"])),
            ("healthcheck: {disable: true}", "", |s| assert_eq!(s.task_template.container.healthcheck.clone().unwrap().test, ["NONE"])),
            (
                "ports:\n  - \"8080:80\"\n  - 53:53/udp\n  - \"9000-9001:90-91\"\n  - 7000\n  - {target: 443, published: 8443, mode: host, protocol: tcp}",
                "",
                |s| {
                    let p: Vec<(u16, u16, PortProtocol, PublishMode)> = s.endpoint_spec.ports.iter().map(|p| (p.published_port, p.target_port, p.protocol, p.publish_mode)).collect();
                    use PortProtocol::*;
                    use PublishMode::*;
                    assert_eq!(p, [(8080, 80, Tcp, Ingress), (53, 53, Udp, Ingress), (9000, 90, Tcp, Ingress), (9001, 91, Tcp, Ingress), (0, 7000, Tcp, Ingress), (8443, 443, Tcp, Host)]);
                },
            ),
            ("networks:\n  front:\n    aliases: [web, www]\n  back:", "networks:\n  front:\n  back:\n    external: true\n", |s| {
                let n: Vec<(&str, Vec<String>)> = s.task_template.networks.iter().map(|n| (n.target.as_str(), n.aliases.clone())).collect();
                assert_eq!(n, [("back", vec![]), ("app_front", vec!["web".to_string(), "www".to_string()])]);
            }),
            ("", "", |s| assert_eq!(s.task_template.networks, [NetworkAttachmentConfig { target: "app_default".into(), aliases: vec![] }])),
            (
                "volumes:\n  - data:/data:ro\n  - /host:/in\n  - ./rel:/rel\n  - /anon\n  - {type: tmpfs, target: /t, tmpfs: {size: 1m}}\n  - {type: volume, source: ext, target: /e}\ntmpfs: [/run, \"/cache:size=1m\"]",
                "volumes:\n  data:\n  ext:\n    external: true\n    name: shared\n",
                |s| {
                    let m: Vec<(MountType, &str, &str, bool, u64)> = s.task_template.container.mounts.iter().map(|m| (m.kind, m.source.as_str(), m.target.as_str(), m.readonly, m.tmpfs_size)).collect();
                    use MountType::*;
                    assert_eq!(m, [
                        (Volume, "app_data", "/data", true, 0),
                        (Bind, "/host", "/in", false, 0),
                        (Bind, "/nonexistent/./rel", "/rel", false, 0),
                        (Volume, "", "/anon", false, 0),
                        (Tmpfs, "", "/t", false, 1 << 20),
                        (Volume, "shared", "/e", false, 0),
                        (Tmpfs, "", "/run", false, 0),
                        (Tmpfs, "", "/cache", false, 0),
                    ]);
                },
            ),
            (
                "secrets: [pw, {source: ext, target: other, uid: \"1000\", gid: \"1000\", mode: 0400}]\nconfigs: [{source: site, target: /etc/site.conf, mode: \"0644\"}, site]",
                "secrets:\n  pw:\n    environment: SECRET_VAR\n  ext:\n    external: true\nconfigs:\n  site:\n    content: hello\n",
                |s| {
                    let c = &s.task_template.container;
                    assert_eq!(c.secrets[0], SecretReference { secret_id: String::new(), secret_name: "app_pw".into(), target: FileTarget { name: "pw".into(), uid: "0".into(), gid: "0".into(), mode: 0o444 } });
                    assert_eq!(c.secrets[1], SecretReference { secret_id: String::new(), secret_name: "ext".into(), target: FileTarget { name: "other".into(), uid: "1000".into(), gid: "1000".into(), mode: 0o400 } });
                    assert_eq!((c.configs[0].config_name.as_str(), c.configs[0].target.name.as_str(), c.configs[0].target.mode), ("app_site", "/etc/site.conf", 0o644));
                    assert_eq!(c.configs[1].target.name, "/site");
                },
            ),
            (
                "stop_grace_period: 1m30s\nstop_signal: SIGINT\nuser: \"1000:1000\"\nworking_dir: /srv\nhostname: h1\ninit: true\nread_only: true\ncap_add: [net_admin]\nulimits: {nofile: {soft: 10, hard: 20}, nproc: 5}\nlogging: {driver: json-file, options: {max-size: 1m}}",
                "",
                |s| {
                    let c = &s.task_template.container;
                    assert_eq!(c.stop_grace_period, Duration::from_secs(90));
                    assert_eq!((c.stop_signal.as_str(), c.user.as_str(), c.dir.as_str(), c.hostname.as_str()), ("SIGINT", "1000:1000", "/srv", "h1"));
                    assert!(c.init && c.read_only);
                    assert_eq!(c.capability_add, ["CAP_NET_ADMIN"]);
                    assert_eq!(c.ulimits, [Ulimit { name: "nofile".into(), soft: 10, hard: 20 }, Ulimit { name: "nproc".into(), soft: 5, hard: 5 }]);
                    let l = s.task_template.log_driver.clone().unwrap();
                    assert_eq!((l.name.as_str(), l.options["max-size"].as_str()), ("json-file", "1m"));
                },
            ),
        ];
        for (body, top, check) in cases {
            check(&spec_of(body, top));
        }
    }

    #[test]
    fn top_level_objects() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw.txt"), "hunter2").unwrap();
        let p = plan_in(
            dir.path(),
            "services:\n  s:\n    image: busybox\n    networks: [n]\nnetworks:\n  n:\n    internal: true\n    attachable: true\n    labels: {a: b}\n    ipam:\n      config: [{subnet: 10.9.0.0/24}]\n  ext:\n    external: true\n    name: shared-net\n\
             secrets:\n  pw:\n    file: ./pw.txt\n  old:\n    external:\n      name: legacy\nconfigs:\n  c:\n    content: hi\n    name: fixed-name\n",
        )
        .unwrap();
        let n = &p.networks[1];
        assert_eq!((n.key.as_str(), n.external, n.spec.annotations.name.as_str()), ("n", false, "app_n"));
        assert!(n.spec.internal && n.spec.attachable);
        assert_eq!(
            n.spec.annotations.labels,
            BTreeMap::from([("a".into(), "b".into()), (NAMESPACE_LABEL.into(), "app".into())])
        );
        assert_eq!(n.spec.ipam, Some(IpamConfig { subnet: "10.9.0.0/24".into(), gateway: String::new() }));
        assert_eq!((p.networks[0].external, p.networks[0].spec.annotations.name.as_str()), (true, "shared-net"));
        assert_eq!(p.networks.len(), 2, "no default network when every service names its networks");
        let names: Vec<(&str, bool, &[u8])> =
            p.secrets.iter().map(|s| (s.name.as_str(), s.external, s.data.as_slice())).collect();
        assert_eq!(names, [("legacy", true, &b""[..]), ("app_pw", false, &b"hunter2"[..])]);
        assert_eq!((p.configs[0].name.as_str(), p.configs[0].data.as_slice()), ("fixed-name", &b"hi"[..]));
    }

    #[test]
    fn bad_values_name_where_they_are() {
        let cases: &[(&str, &str)] = &[
            ("services:\n  s:\n    command: x\n", "c.yml:2:3: services.s: image is required"),
            (
                "services:\n  s:\n    image: b\n    deploy: {mode: global, replicas: 2}\n",
                "replicas can only be used with replicated mode",
            ),
            (
                "services:\n  s:\n    image: b\n    deploy: {replicas: -1}\n",
                "services.s.deploy.replicas: \"-1\" is not a non-negative integer",
            ),
            (
                "services:\n  s:\n    image: b\n    ports: [\"99999:80\"]\n",
                "c.yml:4:13: services.s.ports[0]: invalid port \"99999\"",
            ),
            ("services:\n  s:\n    image: b\n    ports: [\"1-3:1-2\"]\n", "differ in length"),
            ("services:\n  s:\n    image: b\n    volumes: [data:/d]\n", "volume \"data\" is not declared"),
            ("services:\n  s:\n    image: b\n    secrets: [pw]\n", "secret \"pw\" is not declared"),
            (
                "services:\n  s:\n    image: b\n    stop_grace_period: soon\n",
                "services.s.stop_grace_period: invalid duration",
            ),
            (
                "services:\n  s:\n    image: b\n    deploy: {placement: {constraints: [\"node.role=manager\"]}}\n",
                "services.s.deploy.placement.constraints[0]",
            ),
            (
                "services:\n  s:\n    image: b\n    deploy: {update_config: {failure_action: explode}}\n",
                "invalid failure action \"explode\"",
            ),
            (
                "services:\n  s:\n    image: b\n    deploy: {rollback_config: {failure_action: rollback}}\n",
                "expected pause or continue",
            ),
            ("services:\n  s:\n    image: b\n    healthcheck: {test: [wget]}\n", "must start with CMD"),
            (
                "services:\n  s:\n    image: b\n    depends_on: {nope: {condition: service_healthy}}\n",
                "service \"nope\" is not defined",
            ),
            (
                "services:\n  s:\n    image: b\nnetworks:\n  n: {driver: bridge}\n",
                "networks.n.driver: driver \"bridge\" is not supported",
            ),
            (
                "services:\n  s:\n    image: b\nsecrets:\n  pw: {file: ./missing.txt}\n",
                "secrets.pw.file: cannot read /nonexistent/./missing.txt",
            ),
            (
                "services:\n  s:\n    image: b\nsecrets:\n  pw: {environment: NOT_SET}\n",
                "environment variable NOT_SET is not set",
            ),
            (
                "services:\n  s:\n    image: b\nconfigs:\n  c: {}\n",
                "one of file, content, environment or external is required",
            ),
        ];
        for (text, want) in cases {
            let e = plan_in(Path::new("/nonexistent"), text).unwrap_err();
            assert!(e.contains(want), "{text}\n  got:  {e}\n  want: {want}");
        }
        let e = plan_in(Path::new("/"), "services:\n  s:\n    image: b\n").map(|_| ()).and_then(|_| {
            let docs = vec![yaml::parse("c.yml", "services: {}").unwrap()];
            let l = load::load_docs(docs, PathBuf::from("/"), Vars::default(), true).unwrap();
            l.plan("Bad_Stack").map(|_| ()).map_err(|e| e.0)
        });
        assert!(e.unwrap_err().contains("invalid stack name \"Bad_Stack\""));
    }

    #[test]
    fn secrets_over_the_limit_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("big"), vec![b'x'; MAX_SECRET_BYTES + 1]).unwrap();
        let e = plan_in(dir.path(), "services:\n  s:\n    image: b\nsecrets:\n  big: {file: big}\n").unwrap_err();
        assert!(e.contains("more than the limit of 500 KiB"), "{e}");
        let p = plan_in(dir.path(), "services:\n  s:\n    image: b\nconfigs:\n  big: {file: big}\n").unwrap();
        assert_eq!(p.configs[0].data.len(), MAX_SECRET_BYTES + 1, "a config may be up to 1000 KiB");
    }
}
