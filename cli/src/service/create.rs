//! `shoal service create`: turns Docker's flags into a [`ServiceSpec`], creates it, prints the id and (unless
//! `--detach`) follows convergence. Values are parsed and checked here so mistakes are caught before anything
//! is sent; the control API still validates everything (names, image references, constraints) and has the last
//! word.

use super::opts::{self, Words};
use crate::client::{rpc, Client};
use crate::progress;
use clap::Args;
use std::collections::BTreeMap;
use std::time::Duration;
use swarm::api::control::CreateServiceRequest;
use swarm::api::{
    Annotations, ContainerSpec, LogDriver, Mount, Placement, ResourceRequirements, Resources, RestartCondition,
    RestartPolicy, Seccomp, ServiceMode, ServiceSpec, TaskSpec, Ulimit,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Replicated,
    Global,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Service name (default: a generated one)
    #[arg(long)]
    pub name: Option<String>,
    /// Number of tasks
    #[arg(long, value_parser = opts::replicas, allow_negative_numbers = true, allow_hyphen_values = true)]
    pub replicas: Option<u64>,
    /// Service mode
    #[arg(long, value_enum, default_value = "replicated")]
    pub mode: Mode,
    /// Maximum number of tasks per node (default 0 = unlimited)
    #[arg(long = "replicas-max-per-node", value_parser = opts::count, allow_negative_numbers = true, allow_hyphen_values = true, value_name = "N")]
    pub replicas_max_per_node: Option<u64>,
    /// Set environment variables
    #[arg(short = 'e', long = "env", value_parser = opts::env, value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Service labels
    #[arg(long = "label", value_parser = opts::label, value_name = "KEY=VALUE")]
    pub labels: Vec<(String, String)>,
    /// Container labels
    #[arg(long = "container-label", value_parser = opts::label, value_name = "KEY=VALUE")]
    pub container_labels: Vec<(String, String)>,
    /// Logging driver for the service's tasks (json-file)
    #[arg(long = "log-driver", value_name = "DRIVER")]
    pub log_driver: Option<String>,
    /// Logging driver options (json-file: max-size, default 10m; max-file, default 5)
    #[arg(long = "log-opt", value_parser = opts::log_opt, value_name = "KEY=VALUE")]
    pub log_opts: Vec<(String, String)>,
    /// Working directory inside the container
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// Username or UID (format: <name|uid>[:<group|gid>])
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Container hostname
    #[arg(long)]
    pub hostname: Option<String>,
    /// Attach a filesystem mount to the service (type=bind|volume|tmpfs,source=…,target=…[,readonly])
    #[arg(long = "mount", value_parser = opts::mount, value_name = "MOUNT")]
    pub mounts: Vec<Mount>,
    /// Placement constraints (e.g. node.role==manager)
    #[arg(long = "constraint", value_name = "EXPR")]
    pub constraints: Vec<swarm::api::Constraint>,
    /// Reserve CPUs
    #[arg(long = "reserve-cpu", value_parser = opts::nano_cpus, allow_hyphen_values = true, value_name = "CPUS")]
    pub reserve_cpu: Option<i64>,
    /// Reserve memory (e.g. 64M, 1g)
    #[arg(long = "reserve-memory", value_parser = opts::size, allow_hyphen_values = true, value_name = "BYTES")]
    pub reserve_memory: Option<i64>,
    /// Limit CPUs
    #[arg(long = "limit-cpu", value_parser = opts::nano_cpus, allow_hyphen_values = true, value_name = "CPUS")]
    pub limit_cpu: Option<i64>,
    /// Limit memory (e.g. 64M, 1g)
    #[arg(long = "limit-memory", value_parser = opts::size, allow_hyphen_values = true, value_name = "BYTES")]
    pub limit_memory: Option<i64>,
    /// Restart when condition is met ("none", "on-failure", "any") (default "any")
    #[arg(long = "restart-condition", value_parser = opts::restart_condition, value_name = "CONDITION")]
    pub restart_condition: Option<RestartCondition>,
    /// Delay between restart attempts (ns|us|ms|s|m|h) (default 5s)
    #[arg(long = "restart-delay", value_parser = opts::duration, allow_hyphen_values = true, value_name = "DURATION")]
    pub restart_delay: Option<Duration>,
    /// Maximum number of restarts before giving up
    #[arg(long = "restart-max-attempts", value_parser = opts::count, allow_negative_numbers = true, allow_hyphen_values = true, value_name = "N")]
    pub restart_max_attempts: Option<u64>,
    /// Window used to evaluate the restart policy (ns|us|ms|s|m|h)
    #[arg(long = "restart-window", value_parser = opts::duration, allow_hyphen_values = true, value_name = "DURATION")]
    pub restart_window: Option<Duration>,
    /// Signal to stop the container
    #[arg(long = "stop-signal", value_name = "SIGNAL")]
    pub stop_signal: Option<String>,
    /// Time to wait before force killing a container (ns|us|ms|s|m|h) (default 10s)
    #[arg(long = "stop-grace-period", value_parser = opts::duration, allow_hyphen_values = true, value_name = "DURATION")]
    pub stop_grace_period: Option<Duration>,
    /// Add Linux capabilities
    #[arg(long = "cap-add", value_parser = opts::capability, value_name = "CAPABILITY")]
    pub cap_add: Vec<String>,
    /// Drop Linux capabilities
    #[arg(long = "cap-drop", value_parser = opts::capability, value_name = "CAPABILITY")]
    pub cap_drop: Vec<String>,
    /// Mount the container's root filesystem as read only
    #[arg(long = "read-only")]
    pub read_only: bool,
    /// Use an init inside each service container to forward signals and reap processes
    #[arg(long)]
    pub init: bool,
    /// Ulimit options (NAME=SOFT[:HARD])
    #[arg(long = "ulimit", value_parser = opts::ulimit, value_name = "ULIMIT")]
    pub ulimits: Vec<Ulimit>,
    /// Limit maximum number of processes (default 0 = unlimited)
    #[arg(long = "limit-pids", value_parser = opts::count, allow_negative_numbers = true, allow_hyphen_values = true, value_name = "N")]
    pub limit_pids: Option<u64>,
    /// Security options (seccomp=unconfined or seccomp=PROFILE.json)
    #[arg(long = "security-opt", value_parser = opts::security_opt, value_name = "OPTION")]
    pub security_opts: Vec<Seccomp>,
    /// Overwrite the default ENTRYPOINT of the image
    #[arg(long, value_parser = opts::words, allow_hyphen_values = true, value_name = "COMMAND")]
    pub entrypoint: Option<Words>,
    /// Exit immediately instead of waiting for the service to converge
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Suppress progress output
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Image to run
    #[arg(value_name = "IMAGE")]
    pub image: String,
    /// Command and arguments (everything after IMAGE, flags included, belongs to the command)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

fn label_map(pairs: &[(String, String)]) -> BTreeMap<String, String> {
    pairs.iter().cloned().collect()
}

impl CreateArgs {
    /// `--log-driver`/`--log-opt`. Unlike Docker's CLI, options without a driver are kept (for the node's
    /// default driver) instead of being dropped silently. The node checks them when it runs a task.
    fn log_driver(&self) -> Option<LogDriver> {
        if self.log_driver.is_none() && self.log_opts.is_empty() {
            return None;
        }
        Some(LogDriver { name: self.log_driver.clone().unwrap_or_default(), options: label_map(&self.log_opts) })
    }

    /// Builds the spec the flags describe. Defaults left unset are the server's (and Docker's) defaults.
    pub fn spec(&self) -> anyhow::Result<ServiceSpec> {
        let (image, args) = (self.image.clone(), self.command.clone());
        let mode = match self.mode {
            Mode::Replicated => ServiceMode::Replicated { replicas: self.replicas.unwrap_or(1) },
            Mode::Global => {
                if self.replicas.is_some() {
                    anyhow::bail!("replicas can only be used with replicated mode");
                }
                if self.replicas_max_per_node.is_some() {
                    anyhow::bail!("replicas-max-per-node can only be used with replicated mode");
                }
                ServiceMode::Global
            }
        };
        let defaults = RestartPolicy::default();
        let restart_policy = RestartPolicy {
            condition: self.restart_condition.unwrap_or(defaults.condition),
            delay: self.restart_delay.unwrap_or(defaults.delay),
            max_attempts: self.restart_max_attempts.unwrap_or(defaults.max_attempts),
            window: self.restart_window.unwrap_or(defaults.window),
            max_delay: defaults.max_delay,
        };
        let container = ContainerSpec {
            image,
            command: self.entrypoint.clone().map(|w| w.0).unwrap_or_default(),
            args,
            env: self.env.clone(),
            dir: self.workdir.clone().unwrap_or_default(),
            user: self.user.clone().unwrap_or_default(),
            hostname: self.hostname.clone().unwrap_or_default(),
            labels: label_map(&self.container_labels),
            mounts: self.mounts.clone(),
            stop_signal: self.stop_signal.clone().unwrap_or_default(),
            stop_grace_period: self.stop_grace_period.unwrap_or(Duration::from_secs(10)),
            capability_add: self.cap_add.clone(),
            capability_drop: self.cap_drop.clone(),
            read_only: self.read_only,
            init: self.init,
            ulimits: self.ulimits.clone(),
            // The last --security-opt seccomp=… wins, as in Docker.
            seccomp: self.security_opts.last().cloned().unwrap_or_default(),
            healthcheck: None,
        };
        let resources = ResourceRequirements {
            limits: Resources {
                nano_cpus: self.limit_cpu.unwrap_or(0),
                memory_bytes: self.limit_memory.unwrap_or(0),
                pids: i64::try_from(self.limit_pids.unwrap_or(0))
                    .map_err(|_| anyhow::anyhow!("--limit-pids is too large"))?,
            },
            reservations: Resources {
                nano_cpus: self.reserve_cpu.unwrap_or(0),
                memory_bytes: self.reserve_memory.unwrap_or(0),
                pids: 0,
            },
            generic_reservations: Default::default(),
        };
        let placement = Placement {
            constraints: self.constraints.clone(),
            max_replicas: self.replicas_max_per_node.unwrap_or(0),
            preferences: vec![],
        };
        Ok(ServiceSpec {
            annotations: Annotations {
                name: self.name.clone().unwrap_or_else(generated_name),
                labels: label_map(&self.labels),
            },
            task_template: TaskSpec {
                container,
                resources,
                restart_policy,
                placement,
                force_update: 0,
                log_driver: self.log_driver(),
            },
            mode,
            update_config: Default::default(),
            rollback_config: Default::default(),
        })
    }
}

pub async fn run(client: &mut Client, args: CreateArgs) -> anyhow::Result<()> {
    let spec = args.spec()?;
    let service = rpc(client.control.create_service(CreateServiceRequest { spec }).await)?;
    println!("{}", service.id);
    if !args.detach {
        progress::wait_converged(client, &service.id, &service.spec.annotations.name, args.quiet).await?;
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
        assert!(a.detach);
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
        assert_eq!(e.to_string(), "replicas can only be used with replicated mode");
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
