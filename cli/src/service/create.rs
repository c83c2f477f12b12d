//! `shoal service create`: turns Docker's flags into a [`ServiceSpec`], creates it, prints the id and (unless
//! `--detach`) follows convergence. Values are parsed and checked here so mistakes are caught before anything
//! is sent; the control API still validates everything (names, image references, constraints) and has the last
//! word.

use super::flags::{FlagError, SpecFlags};
use super::image::{pin_image, registry_auth, ImageFlags};
use super::opts;
use crate::client::{rpc, Client};
use crate::progress;
use clap::Args;
use std::time::Duration;
use swarm::api::control::CreateServiceRequest;
use swarm::api::{
    Annotations, ContainerSpec, Mount, Placement, PlacementPreference, ResourceRequirements, RestartPolicy,
    ServiceMode, ServiceSpec, TaskSpec, Ulimit,
};

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Service name (default: a generated one)
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub flags: SpecFlags,
    #[command(flatten)]
    pub image_flags: ImageFlags,
    #[command(flatten)]
    pub files: super::files::CreateFiles,
    /// Set environment variables
    #[arg(short = 'e', long = "env", value_parser = opts::env, value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Service labels
    #[arg(long = "label", value_parser = opts::label, value_name = "KEY=VALUE")]
    pub labels: Vec<(String, String)>,
    /// Container labels
    #[arg(long = "container-label", value_parser = opts::label, value_name = "KEY=VALUE")]
    pub container_labels: Vec<(String, String)>,
    /// Attach a filesystem mount to the service (type=bind|volume|tmpfs,source=…,target=…[,readonly])
    #[arg(long = "mount", value_parser = opts::mount, value_name = "MOUNT")]
    pub mounts: Vec<Mount>,
    /// Placement constraints (e.g. node.role==manager)
    #[arg(long = "constraint", value_name = "EXPR")]
    pub constraints: Vec<swarm::api::Constraint>,
    /// Add a placement preference (spread=node.labels.X)
    #[arg(long = "placement-pref", value_parser = opts::placement_pref, value_name = "PREF")]
    pub placement_prefs: Vec<PlacementPreference>,
    /// Reserve a count of a resource the nodes advertise (KIND=N)
    #[arg(long = "generic-resource", value_parser = opts::generic_resource, value_name = "KIND=N")]
    pub generic_resources: Vec<(String, u64)>,
    /// Ulimit options (NAME=SOFT[:HARD])
    #[arg(long = "ulimit", value_parser = opts::ulimit, value_name = "ULIMIT")]
    pub ulimits: Vec<Ulimit>,
    /// Network attachments (NAME or name=NAME,alias=ALIAS)
    #[arg(long = "network", value_parser = super::endpoint::network, value_name = "NETWORK")]
    pub networks: Vec<swarm::api::NetworkAttachmentConfig>,
    /// Publish a port as a node port ([published:]target[/proto], ranges N-M, or
    /// published=,target=,protocol=,mode=,client-ip=masquerade|preserve)
    #[arg(short = 'p', long = "publish", value_parser = super::endpoint::publish, value_name = "PORT")]
    pub publish: Vec<super::endpoint::Ports>,
    /// Image to run
    #[arg(value_name = "IMAGE")]
    pub image: String,
    /// Command and arguments (everything after IMAGE, flags included, belongs to the command)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

impl CreateArgs {
    /// Builds the spec the flags describe. Defaults left unset are the server's (and Docker's) defaults.
    pub fn spec(&self) -> Result<ServiceSpec, FlagError> {
        let mut spec = ServiceSpec {
            annotations: Annotations {
                name: self.name.clone().unwrap_or_else(generated_name),
                labels: self.labels.iter().cloned().collect(),
            },
            task_template: TaskSpec {
                container: ContainerSpec {
                    image: self.image.clone(),
                    args: self.command.clone(),
                    env: self.env.clone(),
                    labels: self.container_labels.iter().cloned().collect(),
                    mounts: self.mounts.clone(),
                    stop_grace_period: Duration::from_secs(10),
                    ulimits: self.ulimits.clone(),
                    ..Default::default()
                },
                resources: ResourceRequirements {
                    generic_reservations: self.generic_resources.iter().cloned().collect(),
                    ..Default::default()
                },
                restart_policy: RestartPolicy::default(),
                placement: Placement {
                    constraints: self.constraints.clone(),
                    max_replicas: 0,
                    preferences: self.placement_prefs.clone(),
                },
                force_update: 0,
                log_driver: None,
                networks: self.networks.clone(),
            },
            mode: ServiceMode::Replicated { replicas: 1 },
            update_config: Default::default(),
            rollback_config: Default::default(),
            endpoint_spec: swarm::api::EndpointSpec {
                mode: Default::default(),
                ports: super::endpoint::Ports::flatten(&self.publish),
            },
        };
        self.flags.apply(&mut spec, true)?;
        self.files.apply(&mut spec);
        Ok(spec)
    }
}

pub async fn run(client: &mut Client, args: CreateArgs) -> anyhow::Result<()> {
    let mut spec = args.spec()?;
    let c = &mut spec.task_template.container;
    if args.image_flags.with_registry_auth {
        c.pull_options = registry_auth(&c.image)?;
    }
    let mut warning = None;
    if !args.image_flags.no_resolve_image {
        let pinned = pin_image(client, &c.image).await?;
        (c.image, warning) = (pinned.image, pinned.warning);
    }
    let service = rpc(client.control.create_service(CreateServiceRequest { spec }).await)?;
    if let Some(w) = warning {
        eprintln!("{w}");
    }
    println!("{}", service.id);
    if !args.flags.detach {
        progress::wait_converged(client, &service.id, &service.spec.annotations.name, args.flags.quiet).await?;
    }
    Ok(())
}

/// A Docker-style generated name (`adjective-scientist`), with a hyphen instead of Docker's underscore because
/// service names must be DNS labels. The control API requires a name, so an unnamed service gets one here.
fn generated_name() -> String {
    const LEFT: &[&str] = &[
        "admiring",
        "brave",
        "clever",
        "dazzling",
        "eager",
        "focused",
        "gallant",
        "happy",
        "inspiring",
        "jolly",
        "keen",
        "loving",
        "modest",
        "nifty",
        "optimistic",
        "peaceful",
        "quirky",
        "relaxed",
        "sharp",
        "tender",
        "upbeat",
        "vibrant",
        "wizardly",
        "xenodochial",
        "youthful",
        "zealous",
    ];
    const RIGHT: &[&str] = &[
        "archimedes",
        "babbage",
        "curie",
        "darwin",
        "euclid",
        "feynman",
        "galileo",
        "hopper",
        "hypatia",
        "johnson",
        "kepler",
        "lovelace",
        "mcclintock",
        "noether",
        "pascal",
        "ritchie",
        "shannon",
        "thompson",
        "turing",
        "wozniak",
    ];
    // The clock's nanoseconds are random enough to pick a pair; collisions just fail creation with a clear error.
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let l = LEFT[(n % LEFT.len() as u128) as usize];
    let r = RIGHT[((n / 7919) % RIGHT.len() as u128) as usize];
    format!("{l}-{r}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use swarm::api::{Resources, RestartCondition, Seccomp};

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        args: CreateArgs,
    }

    fn parse(argv: &[&str]) -> Result<CreateArgs, clap::Error> {
        T::try_parse_from(std::iter::once("create").chain(argv.iter().copied())).map(|t| t.args)
    }

    #[test]
    fn flags_become_a_spec() {
        let a = parse(&[
            "--name",
            "web",
            "--replicas",
            "3",
            "-e",
            "A=1",
            "--env",
            "B=2",
            "--label",
            "tier=front",
            "--container-label",
            "c=d",
            "--log-driver",
            "json-file",
            "--log-opt",
            "max-size=1m",
            "--log-opt",
            "max-file=3",
            "-w",
            "/srv",
            "-u",
            "nobody",
            "--hostname",
            "h1",
            "--mount",
            "type=tmpfs,target=/tmp",
            "--constraint",
            "node.role==manager",
            "--constraint",
            "node.labels.zone!=east",
            "--reserve-cpu",
            "0.5",
            "--reserve-memory",
            "64M",
            "--limit-cpu",
            "2",
            "--limit-memory",
            "1g",
            "--replicas-max-per-node",
            "2",
            "--restart-condition",
            "on-failure",
            "--restart-delay",
            "2s",
            "--restart-max-attempts",
            "4",
            "--restart-window",
            "1m",
            "--stop-signal",
            "SIGINT",
            "--stop-grace-period",
            "30s",
            "--entrypoint",
            "sh -c",
            "-d",
            "busybox",
            "echo",
            "-n",
            "hi",
        ])
        .unwrap();
        assert!(a.flags.detach);
        let s = a.spec().unwrap();
        assert_eq!(s.annotations.name, "web");
        assert_eq!(s.annotations.labels.get("tier").map(String::as_str), Some("front"));
        assert_eq!(s.mode, ServiceMode::Replicated { replicas: 3 });
        let c = &s.task_template.container;
        assert_eq!(c.image, "busybox");
        assert_eq!(c.command, vec!["sh", "-c"]);
        assert_eq!(c.args, vec!["echo", "-n", "hi"]);
        assert_eq!(c.env, vec!["A=1", "B=2"]);
        assert_eq!((c.dir.as_str(), c.user.as_str(), c.hostname.as_str()), ("/srv", "nobody", "h1"));
        assert_eq!(c.labels.get("c").map(String::as_str), Some("d"));
        let log = s.task_template.log_driver.as_ref().expect("log driver");
        assert_eq!(log.name, "json-file");
        assert_eq!(log.options, [("max-size".into(), "1m".into()), ("max-file".into(), "3".into())].into());
        assert_eq!(c.mounts.len(), 1);
        assert_eq!(c.stop_signal, "SIGINT");
        assert_eq!(c.stop_grace_period, Duration::from_secs(30));
        let t = &s.task_template;
        // Constraints pass through untouched: the server parses and validates them.
        assert_eq!(
            t.placement.constraints.iter().map(ToString::to_string).collect::<Vec<_>>(),
            vec!["node.role==manager", "node.labels.zone!=east"]
        );
        assert_eq!(t.placement.max_replicas, 2);
        assert_eq!(t.resources.reservations, Resources { nano_cpus: 500_000_000, memory_bytes: 64 << 20, pids: 0 });
        assert_eq!(t.resources.limits, Resources { nano_cpus: 2_000_000_000, memory_bytes: 1 << 30, pids: 0 });
        assert_eq!(
            t.restart_policy,
            RestartPolicy {
                condition: RestartCondition::OnFailure,
                delay: Duration::from_secs(2),
                max_attempts: 4,
                window: Duration::from_secs(60),
                max_delay: Duration::ZERO,
            }
        );
    }

    #[test]
    fn defaults_match_docker() {
        let s = parse(&["busybox"]).unwrap().spec().unwrap();
        assert_eq!(s.mode, ServiceMode::Replicated { replicas: 1 });
        assert_eq!(s.task_template.restart_policy, RestartPolicy::default());
        assert_eq!(s.task_template.container.stop_grace_period, Duration::from_secs(10));
        assert!(!s.annotations.name.is_empty());
        assert!(s.task_template.container.args.is_empty());
    }

    #[test]
    fn security_and_limit_flags() {
        let s = parse(&[
            "--cap-add",
            "net_admin",
            "--cap-add",
            "CAP_SYS_TIME",
            "--cap-drop",
            "all",
            "--read-only",
            "--init",
            "--ulimit",
            "nofile=1024:2048",
            "--ulimit",
            "nproc=64",
            "--limit-pids",
            "100",
            "--security-opt",
            "seccomp=unconfined",
            "busybox",
        ])
        .unwrap()
        .spec()
        .unwrap();
        let c = &s.task_template.container;
        assert_eq!(c.capability_add, vec!["CAP_NET_ADMIN", "CAP_SYS_TIME"]);
        assert_eq!(c.capability_drop, vec!["ALL"]);
        assert!(c.read_only && c.init);
        assert_eq!(
            c.ulimits,
            vec![
                Ulimit { name: "nofile".into(), soft: 1024, hard: 2048 },
                Ulimit { name: "nproc".into(), soft: 64, hard: 64 }
            ]
        );
        assert_eq!(c.seccomp, Seccomp::Unconfined);
        assert_eq!(s.task_template.resources.limits.pids, 100);

        let d = parse(&["busybox"]).unwrap().spec().unwrap();
        let c = &d.task_template.container;
        assert!(!c.read_only && !c.init && c.capability_add.is_empty() && c.ulimits.is_empty());
        assert_eq!((c.seccomp.clone(), d.task_template.resources.limits.pids), (Seccomp::Default, 0));

        for (argv, want) in [
            (&["--ulimit", "nofile=abc"][..], "invalid ulimit value \"abc\" for nofile: must be an integer"),
            (&["--cap-add", "NOPE"][..], "unknown capability: \"NOPE\""),
            (&["--limit-pids", "-1"][..], "invalid value -1: must be a non-negative integer"),
            (&["--security-opt", "apparmor=x"][..], "security option \"apparmor=x\" is not supported"),
        ] {
            let e = parse(&[argv, &["busybox"]].concat()).unwrap_err();
            assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation, "{argv:?}");
            assert!(e.to_string().contains(want), "{argv:?}: {e}");
        }
    }

    #[test]
    fn global_mode_rejects_replicas() {
        let s = parse(&["--mode", "global", "busybox"]).unwrap().spec().unwrap();
        assert_eq!(s.mode, ServiceMode::Global);
        let e = parse(&["--mode", "global", "--replicas", "2", "busybox"]).unwrap().spec().unwrap_err();
        assert_eq!(e.to_string(), "replicas can only be used with replicated or replicated-job mode");
    }

    #[test]
    fn lifecycle_flags_become_a_spec() {
        let s = parse(&[
            "--update-parallelism",
            "2",
            "--update-order",
            "start-first",
            "--update-failure-action",
            "rollback",
            "--rollback-monitor",
            "1s",
            "--rollback-order",
            "start-first",
            "--health-cmd",
            "true",
            "--health-timeout",
            "3s",
            "--health-start-period",
            "10s",
            "--health-start-interval",
            "1s",
            "--placement-pref",
            "spread=node.labels.zone",
            "--placement-pref",
            "spread=node.labels.rack",
            "--generic-resource",
            "gpu=2",
            "--restart-max-delay",
            "1m",
            "busybox",
        ])
        .unwrap()
        .spec()
        .unwrap();
        assert_eq!(s.update_config.parallelism, 2);
        assert_eq!(s.update_config.order, swarm::api::UpdateOrder::StartFirst);
        assert_eq!(s.update_config.failure_action, swarm::api::FailureAction::Rollback);
        assert_eq!(s.update_config.monitor, Duration::from_secs(5), "untouched fields keep Swarm's defaults");
        assert_eq!(s.rollback_config.monitor, Duration::from_secs(1));
        assert_eq!(s.rollback_config.order, swarm::api::UpdateOrder::StartFirst);
        let h = s.task_template.container.healthcheck.clone().expect("health check");
        assert_eq!(h.test, vec!["CMD-SHELL", "true"]);
        assert_eq!(
            (h.timeout, h.start_period, h.start_interval),
            (Duration::from_secs(3), Duration::from_secs(10), Duration::from_secs(1))
        );
        assert_eq!((h.interval, h.retries), (Duration::ZERO, 0), "unset: the image's or Docker's defaults");
        let p = &s.task_template.placement.preferences;
        assert_eq!(p.len(), 2);
        assert_eq!(opts::placement_pref_text(&p[1]), "spread=node.labels.rack");
        assert_eq!(s.task_template.resources.generic_reservations, [("gpu".to_string(), 2)].into());
        assert_eq!(s.task_template.restart_policy.max_delay, Duration::from_secs(60));

        let none = parse(&["--no-healthcheck", "busybox"]).unwrap().spec().unwrap();
        assert_eq!(none.task_template.container.healthcheck.unwrap().test, vec!["NONE"]);
        assert_eq!(parse(&["busybox"]).unwrap().spec().unwrap().task_template.container.healthcheck, None);
        let e = parse(&["--no-healthcheck", "--health-retries", "2", "busybox"]).unwrap().spec().unwrap_err();
        assert_eq!(e.to_string(), "--no-healthcheck conflicts with --health-* options");
    }

    #[test]
    fn job_modes() {
        let s = parse(&["--mode", "replicated-job", "--replicas", "6", "--max-concurrent", "2", "busybox"])
            .unwrap()
            .spec()
            .unwrap();
        assert_eq!(s.mode, ServiceMode::ReplicatedJob { max_concurrent: 2, total_completions: 6 });
        let s = parse(&["--mode", "replicated-job", "--replicas", "4", "busybox"]).unwrap().spec().unwrap();
        assert_eq!(s.mode, ServiceMode::ReplicatedJob { max_concurrent: 4, total_completions: 4 }, "Docker's default");
        let s = parse(&["--mode", "replicated-job", "busybox"]).unwrap().spec().unwrap();
        assert_eq!(s.mode, ServiceMode::ReplicatedJob { max_concurrent: 1, total_completions: 1 });
        let s = parse(&["--mode", "global-job", "busybox"]).unwrap().spec().unwrap();
        assert_eq!(s.mode, ServiceMode::GlobalJob);
        for (argv, want) in [
            (&["--max-concurrent", "2"][..], "max-concurrent can only be used with replicated-job mode"),
            (
                &["--mode", "global-job", "--replicas", "2"],
                "replicas can only be used with replicated or replicated-job mode",
            ),
            (&["--mode", "global", "--replicas-max-per-node", "1"], "replicas-max-per-node can only be used with"),
        ] {
            let e = parse(&[argv, &["busybox"]].concat()).unwrap().spec().unwrap_err();
            assert!(e.to_string().contains(want), "{argv:?}: {e}");
        }
        let e = parse(&["--mode", "batch", "busybox"]).unwrap_err();
        assert!(e.to_string().contains("replicated-job"), "{e}");
    }

    #[test]
    fn negative_replicas_are_a_value_error() {
        let e = parse(&["--replicas", "-1", "busybox"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation);
        assert!(e.to_string().contains("invalid replicas value -1: must be a non-negative integer"), "{e}");
        let e = parse(&["--mount", "type=bind", "busybox"]).unwrap_err();
        assert!(e.to_string().contains("target is required"), "{e}");
    }

    #[test]
    fn flags_after_the_image_belong_to_the_command() {
        let a = parse(&["busybox", "sh", "-c", "--name x"]).unwrap();
        assert_eq!(a.name, None);
        assert_eq!(a.image, "busybox");
        assert_eq!(a.command, vec!["sh", "-c", "--name x"]);
    }

    #[test]
    fn generated_names_are_dns_labels() {
        let n = generated_name();
        assert!(n.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'), "{n}");
    }
}
