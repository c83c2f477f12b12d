//! The spec flags `service create` and `service update` share, defined once: each is an `Option` (or an empty
//! list) so "not given" can be told from "given", and [`SpecFlags::apply`] writes only the fields given onto a
//! spec — a fresh one for `create`, the service's current one for `update`. The list flags whose names differ
//! (`--env` on create, `--env-add/--env-rm` on update) live with their commands.

use super::opts::{self, Words};
use clap::Args;
use std::time::Duration;
use swarm::api::{
    FailureAction, HealthConfig, LogDriver, RestartCondition, Seccomp, ServiceMode, ServiceSpec, UpdateConfig,
    UpdateOrder,
};

/// `--mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Replicated,
    Global,
    ReplicatedJob,
    GlobalJob,
}

impl Mode {
    fn of(mode: &ServiceMode) -> Mode {
        match mode {
            ServiceMode::Replicated { .. } => Mode::Replicated,
            ServiceMode::Global => Mode::Global,
            ServiceMode::ReplicatedJob { .. } => Mode::ReplicatedJob,
            ServiceMode::GlobalJob => Mode::GlobalJob,
        }
    }
}

/// A bad combination of flags, or a flag that does not fit the service; one line, Docker's wording where Docker
/// has one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct FlagError(pub String);

fn bad<T>(msg: impl Into<String>) -> Result<T, FlagError> {
    Err(FlagError(msg.into()))
}

#[derive(Debug, Clone, Default, PartialEq, Args)]
pub struct SpecFlags {
    /// Number of tasks (for replicated-job: the number of successful completions)
    #[arg(long, value_parser = opts::replicas, allow_negative_numbers = true, allow_hyphen_values = true)]
    pub replicas: Option<u64>,
    /// Service mode (default "replicated"; an update cannot change it)
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// Number of job tasks to run concurrently (default equal to --replicas; replicated-job only)
    #[arg(long = "max-concurrent", value_parser = opts::count, allow_negative_numbers = true, allow_hyphen_values = true, value_name = "N")]
    pub max_concurrent: Option<u64>,
    /// Maximum number of tasks per node (default 0 = unlimited)
    #[arg(long = "replicas-max-per-node", value_parser = opts::count, allow_negative_numbers = true, allow_hyphen_values = true, value_name = "N")]
    pub replicas_max_per_node: Option<u64>,
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
    /// Limit maximum number of processes (default 0 = unlimited)
    #[arg(long = "limit-pids", value_parser = opts::count, allow_negative_numbers = true, allow_hyphen_values = true, value_name = "N")]
    pub limit_pids: Option<u64>,
    /// Restart when condition is met ("none", "on-failure", "any") (default "any")
    #[arg(long = "restart-condition", value_parser = opts::restart_condition, value_name = "CONDITION")]
    pub restart_condition: Option<RestartCondition>,
    /// Delay between restart attempts (ns|us|ms|s|m|h) (default 5s)
    #[arg(long = "restart-delay", value_parser = opts::duration, allow_hyphen_values = true, value_name = "DURATION")]
    pub restart_delay: Option<Duration>,
    /// Double the restart delay after each consecutive failure, up to this (default 0s = no backoff)
    #[arg(long = "restart-max-delay", value_parser = opts::duration, allow_hyphen_values = true, value_name = "DURATION")]
    pub restart_max_delay: Option<Duration>,
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
    /// Mount the container's root filesystem as read only (--read-only=false undoes it)
    #[arg(long = "read-only", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub read_only: Option<bool>,
    /// Use an init inside each service container to forward signals and reap processes (--init=false undoes it)
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub init: Option<bool>,
    /// Security options (seccomp=unconfined or seccomp=PROFILE.json)
    #[arg(long = "security-opt", value_parser = opts::security_opt, value_name = "OPTION")]
    pub security_opts: Vec<Seccomp>,
    /// Overwrite the default ENTRYPOINT of the image
    #[arg(long, value_parser = opts::words, allow_hyphen_values = true, value_name = "COMMAND")]
    pub entrypoint: Option<Words>,

    /// Maximum number of tasks updated simultaneously (0 to update all at once) (default 1)
    #[arg(long = "update-parallelism", value_parser = opts::count, allow_negative_numbers = true, allow_hyphen_values = true, value_name = "N")]
    pub update_parallelism: Option<u64>,
    /// Delay between updates (ns|us|ms|s|m|h) (default 0s)
    #[arg(long = "update-delay", value_parser = opts::duration, allow_hyphen_values = true, value_name = "DURATION")]
    pub update_delay: Option<Duration>,
    /// Update order ("start-first", "stop-first") (default "stop-first")
    #[arg(long = "update-order", value_parser = opts::update_order, value_name = "ORDER")]
    pub update_order: Option<UpdateOrder>,
    /// Duration after each task update to monitor for failure (ns|us|ms|s|m|h) (default 5s)
    #[arg(long = "update-monitor", value_parser = opts::duration, allow_hyphen_values = true, value_name = "DURATION")]
    pub update_monitor: Option<Duration>,
    /// Failure rate to tolerate during an update (default 0)
    #[arg(long = "update-max-failure-ratio", value_parser = opts::failure_ratio, allow_negative_numbers = true, allow_hyphen_values = true, value_name = "RATIO")]
    pub update_max_failure_ratio: Option<f64>,
    /// Action on update failure ("pause", "continue", "rollback") (default "pause")
    #[arg(long = "update-failure-action", value_parser = opts::update_failure_action, value_name = "ACTION")]
    pub update_failure_action: Option<FailureAction>,
    /// Maximum number of tasks rolled back simultaneously (0 to roll back all at once) (default 1)
    #[arg(long = "rollback-parallelism", value_parser = opts::count, allow_negative_numbers = true, allow_hyphen_values = true, value_name = "N")]
    pub rollback_parallelism: Option<u64>,
    /// Delay between task rollbacks (ns|us|ms|s|m|h) (default 0s)
    #[arg(long = "rollback-delay", value_parser = opts::duration, allow_hyphen_values = true, value_name = "DURATION")]
    pub rollback_delay: Option<Duration>,
    /// Rollback order ("start-first", "stop-first") (default "stop-first")
    #[arg(long = "rollback-order", value_parser = opts::update_order, value_name = "ORDER")]
    pub rollback_order: Option<UpdateOrder>,
    /// Duration after each task rollback to monitor for failure (ns|us|ms|s|m|h) (default 5s)
    #[arg(long = "rollback-monitor", value_parser = opts::duration, allow_hyphen_values = true, value_name = "DURATION")]
    pub rollback_monitor: Option<Duration>,
    /// Failure rate to tolerate during a rollback (default 0)
    #[arg(long = "rollback-max-failure-ratio", value_parser = opts::failure_ratio, allow_negative_numbers = true, allow_hyphen_values = true, value_name = "RATIO")]
    pub rollback_max_failure_ratio: Option<f64>,
    /// Action on rollback failure ("pause", "continue") (default "pause")
    #[arg(long = "rollback-failure-action", value_parser = opts::rollback_failure_action, value_name = "ACTION")]
    pub rollback_failure_action: Option<FailureAction>,

    /// Command to run to check health
    #[arg(long = "health-cmd", allow_hyphen_values = true, value_name = "COMMAND")]
    pub health_cmd: Option<String>,
    /// Time between running the check (ms|s|m|h) (default 30s)
    #[arg(long = "health-interval", value_parser = opts::duration, allow_hyphen_values = true, value_name = "DURATION")]
    pub health_interval: Option<Duration>,
    /// Maximum time to allow one check to run (ms|s|m|h) (default 30s)
    #[arg(long = "health-timeout", value_parser = opts::duration, allow_hyphen_values = true, value_name = "DURATION")]
    pub health_timeout: Option<Duration>,
    /// Consecutive failures needed to report unhealthy (default 3)
    #[arg(long = "health-retries", value_parser = opts::count, allow_negative_numbers = true, allow_hyphen_values = true, value_name = "N")]
    pub health_retries: Option<u64>,
    /// Start period for the container to initialize before counting retries towards unstable (ms|s|m|h) (default 0s)
    #[arg(long = "health-start-period", value_parser = opts::duration, allow_hyphen_values = true, value_name = "DURATION")]
    pub health_start_period: Option<Duration>,
    /// Time between running the check during the start period (ms|s|m|h) (default 5s)
    #[arg(long = "health-start-interval", value_parser = opts::duration, allow_hyphen_values = true, value_name = "DURATION")]
    pub health_start_interval: Option<Duration>,
    /// Disable any container-specified HEALTHCHECK
    #[arg(long = "no-healthcheck")]
    pub no_healthcheck: bool,

    /// Endpoint mode (vip or dnsrr) (default "vip")
    #[arg(long = "endpoint-mode", value_parser = super::endpoint::endpoint_mode, value_name = "MODE")]
    pub endpoint_mode: Option<swarm::api::EndpointMode>,

    /// Exit immediately instead of waiting for the service to converge
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Suppress progress output
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

impl SpecFlags {
    /// Whether any flag that changes the spec was given (`--detach` and `--quiet` only change how we wait).
    pub fn any_spec_flag(&self) -> bool {
        let mut f = self.clone();
        f.detach = false;
        f.quiet = false;
        f != SpecFlags::default()
    }

    /// Writes the given flags onto `spec`: `spec` is a fresh spec when creating and the current one when
    /// updating. Checks the combinations that depend on the result (mode, health, restart backoff).
    pub fn apply(&self, spec: &mut ServiceSpec, creating: bool) -> Result<(), FlagError> {
        self.apply_mode(spec, creating)?;
        let t = &mut spec.task_template;
        let c = &mut t.container;
        set(&mut c.dir, &self.workdir);
        set(&mut c.user, &self.user);
        set(&mut c.hostname, &self.hostname);
        set(&mut c.stop_signal, &self.stop_signal);
        set(&mut c.stop_grace_period, &self.stop_grace_period);
        if let Some(w) = &self.entrypoint {
            c.command = w.0.clone();
        }
        set(&mut c.read_only, &self.read_only);
        set(&mut c.init, &self.init);
        // The last --security-opt seccomp=… wins, as in Docker.
        if let Some(s) = self.security_opts.last() {
            c.seccomp = s.clone();
        }
        // Docker's update semantics, which are also create's when starting empty: adding a capability takes it
        // off the drop list and dropping one takes it off the add list.
        c.capability_drop.retain(|cap| !self.cap_add.contains(cap));
        c.capability_add.retain(|cap| !self.cap_drop.contains(cap));
        push_new(&mut c.capability_add, &self.cap_add);
        push_new(&mut c.capability_drop, &self.cap_drop);
        self.apply_health(&mut c.healthcheck)?;

        let r = &mut t.resources;
        set(&mut r.limits.nano_cpus, &self.limit_cpu);
        set(&mut r.limits.memory_bytes, &self.limit_memory);
        if let Some(p) = self.limit_pids {
            r.limits.pids = i64::try_from(p).map_err(|_| FlagError("--limit-pids is too large".into()))?;
        }
        set(&mut r.reservations.nano_cpus, &self.reserve_cpu);
        set(&mut r.reservations.memory_bytes, &self.reserve_memory);

        let rp = &mut t.restart_policy;
        set(&mut rp.condition, &self.restart_condition);
        set(&mut rp.delay, &self.restart_delay);
        set(&mut rp.max_attempts, &self.restart_max_attempts);
        set(&mut rp.window, &self.restart_window);
        set(&mut rp.max_delay, &self.restart_max_delay);
        if !rp.max_delay.is_zero() && rp.max_delay < rp.delay {
            return bad(format!(
                "restart-max-delay ({}) must not be shorter than restart-delay ({})",
                swarm::api::format_duration(rp.max_delay),
                swarm::api::format_duration(rp.delay)
            ));
        }

        set(&mut t.placement.max_replicas, &self.replicas_max_per_node);
        set(&mut spec.endpoint_spec.mode, &self.endpoint_mode);

        // --log-driver replaces the driver and its options; --log-opt alone adds to the current driver's options
        // (Docker drops them silently; keeping them is what was asked for).
        if let Some(name) = &self.log_driver {
            t.log_driver = Some(LogDriver { name: name.clone(), options: self.log_opts.iter().cloned().collect() });
        } else if !self.log_opts.is_empty() {
            t.log_driver.get_or_insert_with(LogDriver::default).options.extend(self.log_opts.iter().cloned());
        }

        apply_update_config(
            &mut spec.update_config,
            self.update_parallelism,
            self.update_delay,
            self.update_order,
            self.update_monitor,
            self.update_max_failure_ratio,
            self.update_failure_action,
        );
        apply_update_config(
            &mut spec.rollback_config,
            self.rollback_parallelism,
            self.rollback_delay,
            self.rollback_order,
            self.rollback_monitor,
            self.rollback_max_failure_ratio,
            self.rollback_failure_action,
        );
        Ok(())
    }

    /// `--mode`, `--replicas`, `--max-concurrent`, `--replicas-max-per-node`, with Docker's checks.
    fn apply_mode(&self, spec: &mut ServiceSpec, creating: bool) -> Result<(), FlagError> {
        if creating {
            spec.mode = match self.mode.unwrap_or(Mode::Replicated) {
                Mode::Replicated => ServiceMode::Replicated { replicas: self.replicas.unwrap_or(1) },
                Mode::Global => ServiceMode::Global,
                // Docker: the concurrency defaults to the number of completions.
                Mode::ReplicatedJob => ServiceMode::ReplicatedJob {
                    max_concurrent: self.max_concurrent.or(self.replicas).unwrap_or(1),
                    total_completions: self.replicas.unwrap_or(1),
                },
                Mode::GlobalJob => ServiceMode::GlobalJob,
            };
        } else {
            if let Some(m) = self.mode {
                if m != Mode::of(&spec.mode) {
                    return bad(format!(
                        "service mode cannot be changed (from {} to {}): create a new service instead",
                        spec.mode.name(),
                        m.name()
                    ));
                }
            }
            match (&mut spec.mode, self.replicas) {
                (_, None) => {}
                (ServiceMode::Replicated { replicas }, Some(n)) => *replicas = n,
                (ServiceMode::ReplicatedJob { total_completions, .. }, Some(n)) => *total_completions = n,
                _ => {}
            }
            if let (ServiceMode::ReplicatedJob { max_concurrent, .. }, Some(n)) = (&mut spec.mode, self.max_concurrent)
            {
                *max_concurrent = n;
            }
        }
        let replicated = matches!(spec.mode, ServiceMode::Replicated { .. } | ServiceMode::ReplicatedJob { .. });
        if self.replicas.is_some() && !replicated {
            return bad("replicas can only be used with replicated or replicated-job mode");
        }
        if self.replicas_max_per_node.is_some() && !replicated {
            return bad("replicas-max-per-node can only be used with replicated or replicated-job mode");
        }
        if self.max_concurrent.is_some() && !matches!(spec.mode, ServiceMode::ReplicatedJob { .. }) {
            return bad("max-concurrent can only be used with replicated-job mode");
        }
        Ok(())
    }

    /// Docker's `updateHealthcheck` (which, starting from no health check, is also what `create` does).
    fn apply_health(&self, hc: &mut Option<HealthConfig>) -> Result<(), FlagError> {
        let any_health = self.health_cmd.is_some()
            || self.health_interval.is_some()
            || self.health_timeout.is_some()
            || self.health_retries.is_some()
            || self.health_start_period.is_some()
            || self.health_start_interval.is_some();
        if self.no_healthcheck {
            if any_health {
                return bad("--no-healthcheck conflicts with --health-* options");
            }
            *hc = Some(HealthConfig { test: vec!["NONE".into()], ..Default::default() });
            return Ok(());
        }
        if !any_health {
            return Ok(());
        }
        let h = hc.get_or_insert_with(HealthConfig::default);
        if h.test.first().map(String::as_str) == Some("NONE") {
            h.test.clear();
        }
        set(&mut h.interval, &self.health_interval);
        set(&mut h.timeout, &self.health_timeout);
        set(&mut h.retries, &self.health_retries);
        set(&mut h.start_period, &self.health_start_period);
        set(&mut h.start_interval, &self.health_start_interval);
        match self.health_cmd.as_deref() {
            None => {}
            // An empty command goes back to the image's HEALTHCHECK, as in Docker.
            Some("") => h.test.clear(),
            Some(cmd) => h.test = vec!["CMD-SHELL".into(), cmd.to_string()],
        }
        Ok(())
    }
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Replicated => "replicated",
            Mode::Global => "global",
            Mode::ReplicatedJob => "replicated-job",
            Mode::GlobalJob => "global-job",
        }
    }
}

fn set<T: Clone>(field: &mut T, value: &Option<T>) {
    if let Some(v) = value {
        *field = v.clone();
    }
}

fn push_new(list: &mut Vec<String>, items: &[String]) {
    for i in items {
        if !list.contains(i) {
            list.push(i.clone());
        }
    }
}

fn apply_update_config(
    cfg: &mut UpdateConfig,
    parallelism: Option<u64>,
    delay: Option<Duration>,
    order: Option<UpdateOrder>,
    monitor: Option<Duration>,
    ratio: Option<f64>,
    action: Option<FailureAction>,
) {
    set(&mut cfg.parallelism, &parallelism);
    set(&mut cfg.delay, &delay);
    set(&mut cfg.order, &order);
    set(&mut cfg.monitor, &monitor);
    set(&mut cfg.max_failure_ratio, &ratio);
    set(&mut cfg.failure_action, &action);
}
