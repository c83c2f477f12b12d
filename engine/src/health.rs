//! Task health checks, with Docker's semantics (`daemon/health.go`): the effective check (the service's
//! `HealthConfig` merged over the image's HEALTHCHECK, then Docker's defaults), and the monitor that runs it
//! inside the task with containerd exec and decides starting → healthy / unhealthy.
//!
//! The check is decided when the container is created and kept on it as a label, so that a re-adopted task (after
//! a shoald restart) is checked the same way without its image at hand.

use crate::containerd::{is_not_found, is_unavailable, req};
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    DeleteProcessRequest, ExecProcessRequest, GetRequest, KillRequest, StartRequest, WaitRequest,
};
use containerd_client::types::v1::Status as ProcStatus;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;
use swarm::agent::exec::{ExecError, HealthStatus};
use swarm::api::{Health, HealthConfig};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tonic::transport::Channel;

/// Docker's defaults for what neither the service nor the image sets.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_START_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_RETRIES: u64 = 3;
/// How much of a check's output is kept (Docker's `maxOutputLen`).
const MAX_OUTPUT: usize = 4096;
/// How many check results are kept (Docker's `maxLogEntries`), logged when a task turns unhealthy.
const KEEP_RESULTS: usize = 5;
/// How much of the last output the task's error shows.
const SUMMARY_LEN: usize = 200;
/// The label holding a container's effective check.
pub const LABEL_HEALTHCHECK: &str = "io.shoal.healthcheck";
/// containerd's limit on a label's key and value together.
const MAX_LABEL: usize = 4096;
const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";

/// A check ready to run: the command and when, every field resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// Format of this record (it is stored on containers).
    pub version: u32,
    /// What runs inside the container (`CMD-SHELL x` is `/bin/sh -c x`).
    pub args: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub start_period: Duration,
    pub start_interval: Duration,
    pub retries: u64,
}

const CHECK_VERSION: u32 = 1;

impl Check {
    /// The check recorded on a container by [`Check::to_label`].
    pub fn from_label(s: &str) -> Result<Check, ExecError> {
        let c: Check = serde_json::from_str(s)
            .map_err(|e| ExecError::Runtime(format!("the container's health check label is unreadable: {e}")))?;
        if c.version != CHECK_VERSION {
            return Err(ExecError::Runtime(format!(
                "the container's health check label has format {}, this shoald reads {CHECK_VERSION}",
                c.version
            )));
        }
        Ok(c)
    }

    pub fn to_label(&self) -> String {
        serde_json::to_string(self).expect("a check serializes")
    }
}

/// The image config's `config.Healthcheck` (Docker's; durations in nanoseconds). Not in the OCI image spec,
/// hence read apart from it.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct DockerHealthcheck {
    test: Option<Vec<String>>,
    interval: i64,
    timeout: i64,
    start_period: i64,
    start_interval: i64,
    retries: i64,
}

/// The HEALTHCHECK of an image, from its config JSON; `None` if it declares none. Negative values (invalid in
/// Docker) count as unset.
pub fn image_healthcheck(config_json: &[u8]) -> Option<HealthConfig> {
    #[derive(Deserialize)]
    struct Outer {
        #[serde(default)]
        config: Option<Inner>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Inner {
        #[serde(default)]
        healthcheck: Option<DockerHealthcheck>,
    }
    let h = serde_json::from_slice::<Outer>(config_json).ok()?.config?.healthcheck?;
    let d = |ns: i64| Duration::from_nanos(ns.max(0) as u64);
    Some(HealthConfig {
        test: h.test.unwrap_or_default(),
        interval: d(h.interval),
        timeout: d(h.timeout),
        retries: h.retries.max(0) as u64,
        start_period: d(h.start_period),
        start_interval: d(h.start_interval),
    })
}

/// The check a task runs: the service's config merged over the image's (an empty test or a zero field inherits),
/// then Docker's defaults. `None` when there is no test or it is `["NONE"]`.
pub fn effective(spec: Option<&HealthConfig>, image: Option<&HealthConfig>) -> Result<Option<Check>, ExecError> {
    let none = HealthConfig::default();
    let (s, i) = (spec.unwrap_or(&none), image.unwrap_or(&none));
    let test = if s.test.is_empty() { &i.test } else { &s.test };
    let bad = |why: String| ExecError::InvalidSpec(format!("health check: {why}"));
    let args = match test.first().map(String::as_str) {
        None | Some("NONE") => return Ok(None),
        Some("CMD") => test[1..].to_vec(),
        Some("CMD-SHELL") => {
            let mut a = vec!["/bin/sh".to_string(), "-c".to_string()];
            a.extend(test[1..].iter().cloned());
            a
        }
        Some(other) => return Err(bad(format!("unknown test type {other:?}: expected NONE, CMD or CMD-SHELL"))),
    };
    if args.is_empty() || args.last().is_some_and(|a| a.is_empty()) {
        return Err(bad(format!("{} without a command", test[0])));
    }
    let pick = |a: Duration, b: Duration, default: Duration| {
        if !a.is_zero() {
            a
        } else if !b.is_zero() {
            b
        } else {
            default
        }
    };
    let retries = if s.retries > 0 {
        s.retries
    } else if i.retries > 0 {
        i.retries
    } else {
        DEFAULT_RETRIES
    };
    let check = Check {
        version: CHECK_VERSION,
        args,
        interval: pick(s.interval, i.interval, DEFAULT_INTERVAL),
        timeout: pick(s.timeout, i.timeout, DEFAULT_TIMEOUT),
        start_period: pick(s.start_period, i.start_period, Duration::ZERO),
        start_interval: pick(s.start_interval, i.start_interval, DEFAULT_START_INTERVAL),
        retries,
    };
    // containerd refuses a label whose key and value exceed 4096 bytes: say so before anything is made.
    let size = LABEL_HEALTHCHECK.len() + check.to_label().len();
    if size > MAX_LABEL {
        return Err(bad(format!("the command is too long ({size} bytes recorded, at most {MAX_LABEL})")));
    }
    Ok(Some(check))
}

/// How one run of the check ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The check's process exited; its output (stdout and stderr, at most 4 KiB).
    Exited { code: i32, output: String },
    /// It ran longer than the timeout and was killed.
    TimedOut(Duration),
    /// It could not be run (counts as a failure, as in Docker).
    Error(String),
    /// The container's process is gone: checking ends (its exit is reported by `wait`).
    Gone,
    /// containerd could not be reached (restarting): no verdict on the container either way.
    Unavailable(String),
}

impl Outcome {
    /// One line for the task's error: "exit 1: curl: connection refused", Docker's timeout message….
    fn summary(&self) -> String {
        let s = match self {
            Outcome::Exited { code, output } => {
                let out = output.split_whitespace().collect::<Vec<_>>().join(" ");
                if out.is_empty() {
                    format!("exit {code}")
                } else {
                    format!("exit {code}: {out}")
                }
            }
            Outcome::TimedOut(t) => format!("Health check exceeded timeout ({})", humantime::format_duration(*t)),
            Outcome::Error(e) => e.clone(),
            Outcome::Gone => "the container's process is gone".into(),
            Outcome::Unavailable(e) => format!("containerd unreachable: {e}"),
        };
        match s.char_indices().nth(SUMMARY_LEN) {
            Some((end, _)) => format!("{}…", &s[..end]),
            None => s,
        }
    }
}

/// Runs a check's command once (containerd exec in the real executor; a script in tests).
pub trait Prober: Send + Sync + 'static {
    fn probe(&self, args: &[String], timeout: Duration) -> impl Future<Output = Outcome> + Send;
}

/// Starts checking with `check` through `prober`, now (the container just started or was re-adopted). The
/// verdicts go to the returned receiver, a new value each time the health changes; the checks stop when every
/// receiver is dropped or the container's process is gone.
pub fn monitor<P: Prober>(prober: P, check: Check, task_id: String) -> watch::Receiver<HealthStatus> {
    let (tx, rx) = watch::channel(HealthStatus::starting());
    let span = tracing::info_span!("health", task.id = %task_id);
    tokio::spawn(tracing::Instrument::instrument(run_monitor(prober, check, tx), span));
    rx
}

async fn run_monitor<P: Prober>(prober: P, check: Check, tx: watch::Sender<HealthStatus>) {
    let started = Instant::now();
    let mut status = HealthStatus::starting();
    let mut results: VecDeque<(Instant, String)> = VecDeque::with_capacity(KEEP_RESULTS);
    loop {
        let in_start_period = |status: &HealthStatus, at: Instant| {
            status.health == Health::Starting && at.duration_since(started) < check.start_period
        };
        // Docker's probe interval: the start interval while starting within the start period (only when the
        // start period is at least one interval long), else the interval.
        let wait = if check.start_period >= check.interval && in_start_period(&status, Instant::now()) {
            check.start_interval
        } else {
            check.interval
        };
        tokio::select! {
            _ = tx.closed() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let at = Instant::now();
        let outcome = tokio::select! {
            _ = tx.closed() => return,
            o = prober.probe(&check.args, check.timeout) => o,
        };
        let passed = match &outcome {
            Outcome::Gone => return,
            Outcome::Unavailable(e) => {
                // The runtime's hiccup says nothing of the container: check again at the next tick.
                tracing::debug!(error = %e, "health check skipped");
                continue;
            }
            Outcome::Exited { code: 0, .. } => true,
            _ => false,
        };
        let summary = outcome.summary();
        tracing::debug!(passed, result = %summary, "health check");
        if results.len() == KEEP_RESULTS {
            results.pop_front();
        }
        results.push_back((at, summary.clone()));
        let before = status.health;
        if passed {
            status.failing_streak = 0;
            status.health = Health::Healthy;
        } else if !in_start_period(&status, at) {
            // Failures while starting within the start period do not count (Docker's).
            status.failing_streak += 1;
            if status.failing_streak >= check.retries {
                status.health = Health::Unhealthy;
            }
        }
        status.last_output = summary;
        if status.health != before {
            if status.health == Health::Unhealthy {
                let last: Vec<String> =
                    results.iter().map(|(t, s)| format!("+{:?}: {s}", t.duration_since(started))).collect();
                tracing::info!(streak = status.failing_streak, results = ?last, "container unhealthy");
            } else {
                tracing::info!(health = ?status.health, "container health");
            }
        }
        // Only a change of health wakes the receiver; the streak and output ride along.
        let changed = status.health != before;
        tx.send_if_modified(|cur| {
            *cur = status.clone();
            changed
        });
    }
}

/// Starts the checks of a container whose process runs, per the check recorded on it (see
/// [`LABEL_HEALTHCHECK`]); `None` if it has none. Outputs are written under `dir` (the task's directory).
pub fn start_checks(
    ch: Channel,
    container: &containerd_client::services::v1::Container,
    dir: PathBuf,
) -> Result<Option<watch::Receiver<HealthStatus>>, ExecError> {
    let Some(label) = container.labels.get(LABEL_HEALTHCHECK) else { return Ok(None) };
    let check = Check::from_label(label)?;
    let spec: serde_json::Value = container
        .spec
        .as_ref()
        .map(|s| serde_json::from_slice(&s.value))
        .transpose()
        .map_err(|e| ExecError::Runtime(format!("the container's runtime spec is unreadable: {e}")))?
        .unwrap_or_default();
    let process = spec.get("process").cloned().ok_or_else(|| {
        ExecError::Runtime("the container's runtime spec has no process to derive the health check from".into())
    })?;
    let prober = ExecProber { ch, container_id: container.id.clone(), process, dir };
    Ok(Some(monitor(prober, check, container.id.clone())))
}

/// Runs a check inside a container's task with containerd exec: a process spec derived from the container's
/// (its user, environment, working directory, capabilities), its output read from a FIFO the shim writes.
pub struct ExecProber {
    pub ch: Channel,
    pub container_id: String,
    /// The container's OCI process spec (`process` of its runtime spec).
    pub process: serde_json::Value,
    /// Where the check's output FIFO is made (the task's directory).
    pub dir: PathBuf,
}

impl ExecProber {
    fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.ch.clone())
    }

    /// Whether the container's own process still runs (an exec that fails because it does not is no failure).
    async fn main_running(&self) -> bool {
        match self
            .tasks()
            .get(req(GetRequest { container_id: self.container_id.clone(), exec_id: String::new() }))
            .await
        {
            Ok(r) => r.into_inner().process.is_some_and(|p| p.status == ProcStatus::Running as i32),
            Err(s) if is_not_found(&s) => false,
            // containerd unreachable: keep checking; a real exit is reported by `wait`.
            Err(_) => true,
        }
    }

    /// What an exec that could not be created or started means.
    async fn failed_to_run(&self, s: &tonic::Status) -> Outcome {
        if is_unavailable(s) {
            Outcome::Unavailable(s.message().to_string())
        } else if self.main_running().await {
            Outcome::Error(s.message().to_string())
        } else {
            Outcome::Gone
        }
    }

    async fn delete(&self, exec_id: &str) {
        let r = self
            .tasks()
            .delete_process(req(DeleteProcessRequest {
                container_id: self.container_id.clone(),
                exec_id: exec_id.into(),
            }))
            .await;
        if let Err(s) = r {
            if !is_not_found(&s) {
                tracing::debug!(exec_id, error = %s.message(), "deleting the health check process");
            }
        }
    }

    async fn run(&self, args: &[String], timeout: Duration, exec_id: &str, out: &std::path::Path) -> Outcome {
        let mut process = self.process.clone();
        process["args"] = serde_json::json!(args);
        process["terminal"] = serde_json::json!(false);
        let value = match serde_json::to_vec(&process) {
            Ok(v) => v,
            Err(e) => return Outcome::Error(e.to_string()),
        };
        // A path without a scheme is a FIFO to the shim. Both streams go into the same one, as Docker keeps them.
        let fifo = out.to_string_lossy().into_owned();
        let exec = ExecProcessRequest {
            container_id: self.container_id.clone(),
            stdin: String::new(),
            stdout: fifo.clone(),
            stderr: fifo,
            terminal: false,
            spec: Some(prost_types::Any { type_url: PROCESS_TYPE_URL.into(), value }),
            exec_id: exec_id.into(),
        };
        if let Err(s) = self.tasks().exec(req(exec)).await {
            return self.failed_to_run(&s).await;
        }
        let id = || (self.container_id.clone(), exec_id.to_string());
        let (container_id, eid) = id();
        if let Err(s) = self.tasks().start(req(StartRequest { container_id, exec_id: eid })).await {
            self.delete(exec_id).await;
            return self.failed_to_run(&s).await;
        }
        let (container_id, eid) = id();
        let mut tasks = self.tasks();
        let waited = tokio::time::timeout(timeout, tasks.wait(req(WaitRequest { container_id, exec_id: eid }))).await;
        let outcome = match waited {
            // The output is filled in by the caller, which reads the FIFO.
            Ok(Ok(r)) => Outcome::Exited { code: r.into_inner().exit_status as i32, output: String::new() },
            Ok(Err(s)) if is_unavailable(&s) => Outcome::Unavailable(s.message().to_string()),
            Ok(Err(s)) => Outcome::Error(s.message().to_string()),
            Err(_) => {
                let (container_id, eid) = id();
                let kill = KillRequest { container_id, exec_id: eid, signal: libc::SIGKILL as u32, all: false };
                let _ = self.tasks().kill(req(kill)).await;
                let (container_id, eid) = id();
                let _ = tokio::time::timeout(
                    Duration::from_secs(5),
                    self.tasks().wait(req(WaitRequest { container_id, exec_id: eid })),
                )
                .await;
                Outcome::TimedOut(timeout)
            }
        };
        // Deleting the process waits for the shim to finish copying its output into the FIFO.
        self.delete(exec_id).await;
        outcome
    }
}

/// Reads a check's FIFO until told to stop, keeping at most [`MAX_OUTPUT`] bytes and draining the rest so the
/// shim never blocks on a full pipe. Opened read-write, the FIFO never reports end-of-file: the caller says
/// when the output is complete (the exec was deleted), and what is still buffered is read then.
async fn collect_output(fifo: tokio::net::unix::pipe::Receiver, mut done: oneshot::Receiver<()>) -> String {
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    let mut drain = |kept: &mut Vec<u8>| loop {
        match fifo.try_read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => {
                let room = MAX_OUTPUT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    };
    loop {
        tokio::select! {
            r = fifo.readable() => {
                if r.is_err() || !drain(&mut kept) {
                    break;
                }
            }
            _ = &mut done => {
                drain(&mut kept);
                break;
            }
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}

impl Prober for ExecProber {
    async fn probe(&self, args: &[String], timeout: Duration) -> Outcome {
        // A fresh id per run: a run cut short (shoald killed) leaves no id a later run would collide with.
        let exec_id = format!("health-{}", &swarm::api::new_id()[..12]);
        if let Err(e) = tokio::fs::create_dir_all(&self.dir).await {
            return Outcome::Error(format!("creating {}: {e}", self.dir.display()));
        }
        // The output goes through a FIFO shoald reads, not a file the shim writes: given one file for both
        // streams, containerd's shim can close it after a fast process's stdout and drop its stderr.
        let out = self.dir.join(format!("{exec_id}.out"));
        if let Err(e) = nix::unistd::mkfifo(&out, nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR) {
            return Outcome::Error(format!("creating {}: {e}", out.display()));
        }
        let fifo = match tokio::net::unix::pipe::OpenOptions::new().read_write(true).open_receiver(&out) {
            Ok(f) => f,
            Err(e) => {
                let _ = tokio::fs::remove_file(&out).await;
                return Outcome::Error(format!("opening {}: {e}", out.display()));
            }
        };
        let (done, finished) = oneshot::channel();
        let reader = tokio::spawn(collect_output(fifo, finished));
        let outcome = self.run(args, timeout, &exec_id, &out).await;
        let _ = done.send(());
        let output = reader.await.unwrap_or_default();
        let _ = tokio::fs::remove_file(&out).await;
        match outcome {
            Outcome::Exited { code, .. } => Outcome::Exited { code, output },
            o => o,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn cfg(test: &[&str]) -> HealthConfig {
        HealthConfig { test: test.iter().map(|s| s.to_string()).collect(), ..Default::default() }
    }

    #[test]
    fn the_spec_is_merged_over_the_image_then_dockers_defaults() {
        let image = HealthConfig {
            test: vec!["CMD-SHELL".into(), "wget -q localhost".into()],
            interval: Duration::from_secs(10),
            retries: 5,
            start_period: Duration::from_secs(7),
            ..Default::default()
        };
        let c = effective(None, Some(&image)).unwrap().expect("the image's check");
        assert_eq!(c.args, vec!["/bin/sh", "-c", "wget -q localhost"]);
        assert_eq!(
            (c.interval, c.timeout, c.retries, c.start_period, c.start_interval),
            (Duration::from_secs(10), DEFAULT_TIMEOUT, 5, Duration::from_secs(7), DEFAULT_START_INTERVAL)
        );

        // An empty test inherits the image's; set fields win.
        let spec = HealthConfig { interval: Duration::from_secs(2), retries: 1, ..Default::default() };
        let c = effective(Some(&spec), Some(&image)).unwrap().unwrap();
        assert_eq!(c.args, vec!["/bin/sh", "-c", "wget -q localhost"]);
        assert_eq!((c.interval, c.retries, c.start_period), (Duration::from_secs(2), 1, Duration::from_secs(7)));

        let c = effective(Some(&cfg(&["CMD", "test", "-f", "/ok"])), None).unwrap().unwrap();
        assert_eq!(c.args, vec!["test", "-f", "/ok"]);
        assert_eq!((c.interval, c.timeout, c.retries), (DEFAULT_INTERVAL, DEFAULT_TIMEOUT, DEFAULT_RETRIES));
        assert_eq!(c.start_period, Duration::ZERO);

        assert_eq!(effective(Some(&cfg(&["NONE"])), Some(&image)).unwrap(), None, "--no-healthcheck");
        assert_eq!(effective(None, None).unwrap(), None);
        assert_eq!(effective(Some(&spec), None).unwrap(), None, "durations without a test anywhere");
    }

    #[test]
    fn bad_tests_are_refused() {
        let err = |t: &[&str]| effective(Some(&cfg(t)), None).unwrap_err().to_string();
        assert_eq!(err(&["CMD"]), "invalid task spec: health check: CMD without a command");
        assert_eq!(err(&["CMD-SHELL", ""]), "invalid task spec: health check: CMD-SHELL without a command");
        let long = "x".repeat(5000);
        assert!(err(&["CMD-SHELL", &long]).starts_with("invalid task spec: health check: the command is too long ("));
        assert_eq!(
            err(&["curl", "x"]),
            "invalid task spec: health check: unknown test type \"curl\": expected NONE, CMD or CMD-SHELL"
        );
    }

    #[test]
    fn the_image_healthcheck_is_read_from_the_docker_config() {
        let json = br#"{"architecture":"amd64","config":{"Cmd":["sh"],"Healthcheck":{"Test":["CMD-SHELL","true"],
            "Interval":1000000000,"Timeout":2000000000,"StartPeriod":3000000000,"StartInterval":-1,"Retries":4}}}"#;
        let h = image_healthcheck(json).expect("a healthcheck");
        assert_eq!(h.test, vec!["CMD-SHELL", "true"]);
        assert_eq!(
            (h.interval, h.timeout, h.start_period, h.start_interval, h.retries),
            (Duration::from_secs(1), Duration::from_secs(2), Duration::from_secs(3), Duration::ZERO, 4)
        );
        assert_eq!(image_healthcheck(br#"{"config":{"Cmd":["sh"]}}"#), None);
        assert_eq!(image_healthcheck(br#"{"architecture":"amd64"}"#), None);
    }

    #[test]
    fn a_check_survives_its_label() {
        let c = effective(Some(&cfg(&["CMD", "true"])), None).unwrap().unwrap();
        assert_eq!(Check::from_label(&c.to_label()).unwrap(), c);
        let old = c.to_label().replace("\"version\":1", "\"version\":9");
        assert!(Check::from_label(&old).unwrap_err().to_string().contains("format 9"));
    }

    /// Answers each probe with the next scripted outcome (the last one forever), recording when it was asked.
    #[derive(Clone)]
    struct Script {
        outcomes: Arc<Mutex<VecDeque<Outcome>>>,
        asked: Arc<Mutex<Vec<Instant>>>,
    }

    impl Script {
        fn new(o: Vec<Outcome>) -> Self {
            Script { outcomes: Arc::new(Mutex::new(o.into())), asked: Arc::default() }
        }
    }

    impl Prober for Script {
        async fn probe(&self, _: &[String], _: Duration) -> Outcome {
            self.asked.lock().unwrap().push(Instant::now());
            let mut o = self.outcomes.lock().unwrap();
            if o.len() > 1 {
                o.pop_front().unwrap()
            } else {
                o.front().cloned().unwrap()
            }
        }
    }

    fn ok() -> Outcome {
        Outcome::Exited { code: 0, output: String::new() }
    }
    fn fail() -> Outcome {
        Outcome::Exited { code: 1, output: "not\n ready ".into() }
    }

    /// A check with its times in units of 10 ms (real time: these tests assert lower bounds and order).
    fn check(interval: u64, retries: u64, start_period: u64, start_interval: u64) -> Check {
        let t = |n: u64| Duration::from_millis(10 * n);
        Check {
            version: CHECK_VERSION,
            args: vec!["true".into()],
            interval: t(interval),
            timeout: t(100),
            start_period: t(start_period),
            start_interval: t(start_interval),
            retries,
        }
    }

    #[tokio::test]
    async fn healthy_after_a_pass_then_unhealthy_after_retries_consecutive_failures() {
        let t0 = Instant::now();
        let script = Script::new(vec![fail(), ok(), fail(), fail(), ok(), fail(), fail(), fail()]);
        let mut rx = monitor(script.clone(), check(2, 3, 0, 1), "t1".into());
        assert_eq!(rx.borrow().health, Health::Starting);
        rx.changed().await.unwrap();
        assert_eq!(rx.borrow_and_update().health, Health::Healthy);
        assert_eq!(script.asked.lock().unwrap().len(), 2, "healthy at the second check");
        assert!(t0.elapsed() >= Duration::from_millis(40), "the first check after one interval");
        // Two failures, a pass (the streak resets), then three failures.
        rx.changed().await.unwrap();
        let s = rx.borrow_and_update().clone();
        assert_eq!(s.health, Health::Unhealthy);
        assert_eq!(s.failing_streak, 3);
        assert_eq!(s.last_output, "exit 1: not ready");
        assert_eq!(script.asked.lock().unwrap().len(), 8);
        let asked = script.asked.lock().unwrap().clone();
        assert!(asked.windows(2).all(|w| w[1] - w[0] >= Duration::from_millis(20)), "one interval apart: {asked:?}");
        drop(rx);
        // Proving an absence: the monitor, woken within one interval, sees no receiver and stops.
        tokio::time::sleep(Duration::from_millis(60)).await;
        let n = script.asked.lock().unwrap().len();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(script.asked.lock().unwrap().len(), n, "no checks once the receiver is gone");
    }

    #[tokio::test]
    async fn failures_in_the_start_period_do_not_count_and_run_every_start_interval() {
        let t0 = Instant::now();
        let script = Script::new(vec![fail()]);
        let mut rx = monitor(script.clone(), check(10, 2, 30, 2), "t1".into());
        rx.changed().await.unwrap();
        assert_eq!(rx.borrow().health, Health::Unhealthy);
        let asked: Vec<Duration> = script.asked.lock().unwrap().iter().map(|t| t.duration_since(t0)).collect();
        let (during, after): (Vec<Duration>, Vec<Duration>) =
            asked.iter().partition(|d| **d < Duration::from_millis(300));
        // Every 20 ms within the start period (300 ms), uncounted; then every 100 ms: two counted failures.
        assert!(during.len() >= 3, "checks every start interval during the start period: {asked:?}");
        assert_eq!(after.len(), 2, "{asked:?}");
        assert!(after[1] - after[0] >= Duration::from_millis(100), "the interval after the start period: {asked:?}");
    }

    #[tokio::test]
    async fn a_timeout_or_an_exec_error_is_a_failure_and_a_gone_process_ends_the_checks() {
        let script = Script::new(vec![
            Outcome::TimedOut(Duration::from_secs(1)),
            Outcome::Unavailable("connection refused".into()),
            Outcome::Error("boom".into()),
        ]);
        let mut rx = monitor(script.clone(), check(1, 2, 0, 1), "t1".into());
        rx.changed().await.unwrap();
        assert_eq!(rx.borrow().health, Health::Unhealthy);
        assert_eq!(rx.borrow().last_output, "boom");
        assert_eq!(rx.borrow().failing_streak, 2, "containerd being unreachable is no failure of the container");
        assert_eq!(script.asked.lock().unwrap().len(), 3);

        let script = Script::new(vec![Outcome::TimedOut(Duration::from_millis(1500)), Outcome::Gone]);
        let mut rx = monitor(script, check(1, 3, 0, 1), "t2".into());
        assert!(rx.changed().await.is_err(), "the checks ended without a verdict");
        assert_eq!(rx.borrow().health, Health::Starting);
        assert_eq!(rx.borrow().last_output, "Health check exceeded timeout (1s 500ms)");
    }
}
