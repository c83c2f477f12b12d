//! Convergence progress after `service create` / `service scale`, as `docker service create` shows it:
//!
//! ```text
//! overall progress: 2 out of 3 tasks
//! 1/3: running   [==================================================>]
//! 2/3: running   [==================================================>]
//! 3/3: preparing [=================================>                ]
//! verify: Waiting 1 seconds to verify that tasks are stable...
//! ```
//!
//! Jobs (`--mode replicated-job|global-job`) show Docker's job progress instead and end, without a verify step,
//! once every task of the job's current run completed ([`JobProgress`]):
//!
//! ```text
//! job progress: 3 out of 6 complete [=========================>                         ]
//! active tasks: 2 out of 2 tasks
//! 1/6: complete  [==================================================>]
//! 4/6: running   [=============================================>     ]
//! job complete
//! ```
//!
//! The bookkeeping ([`observe`], [`Verifier`]) is pure so it can be tested; [`wait_converged`] polls the control
//! API and draws with indicatif on a terminal, or prints a plain line whenever one changes when stdout is not a
//! terminal (logs, CI, tests), so it never emits cursor movement into a file.
//!
//! `service update` / `service rollback` follow the same display over the up-to-date tasks only ([`UpdateWatch`],
//! [`wait_updated`]), and end on the update's status: paused, rolled back, or converged.

use crate::client::{rpc, Client};
use crate::output::short_id;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::{BTreeMap, HashSet};
use std::io::IsTerminal;
use std::time::{Duration, Instant};
use swarm::api::control::{Empty, GetRequest, ListTasksRequest};
use swarm::api::{NodeState, Service, ServiceMode, Task, TaskState, UpdateState, UpdateStatus};

/// How long every task must stay running before we call the service converged. Docker waits 5 s (its update
/// monitor period); we use less because our failover and restart paths are faster, and a CLI that sits idle for
/// 5 s after every create feels broken.
pub const STABLE_FOR: Duration = Duration::from_secs(1);

/// How often the control API is polled.
pub const POLL_EVERY: Duration = Duration::from_millis(200);

/// The width of the state column: the longest state Docker shows ("preparing").
const STATE_WIDTH: usize = 9;

/// Docker's `numberedStates`: how far along a live task is, out of [`MAX_PROGRESS`]; 0 means "not live".
fn numbered(state: TaskState) -> u64 {
    match state {
        TaskState::New => 1,
        TaskState::Pending => 3,
        TaskState::Assigned => 4,
        TaskState::Accepted => 5,
        TaskState::Preparing => 6,
        TaskState::Ready => 7,
        TaskState::Starting => 8,
        TaskState::Running => 9,
        _ => 0,
    }
}

const MAX_PROGRESS: u64 = 9;

/// One line of the display: a slot (`2/3`) or a node (its short id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotLine {
    /// Orders the lines and identifies them across polls.
    pub key: String,
    pub text: String,
}

/// What one poll saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub overall: String,
    pub lines: Vec<SlotLine>,
    /// Every slot (or node) has its live task running.
    pub converged: bool,
}

/// Docker's `truncError`: one line, at most 75 characters.
fn trunc_error(err: &str) -> String {
    let one_line = err.replace('\n', " ");
    crate::output::ellipsis(&one_line, 75)
}

/// `running   [=========>          ]`: the state padded to the widest state, then Docker's 50-wide bar.
fn bar_text(state: TaskState) -> String {
    let bars = (numbered(state) * 100 / MAX_PROGRESS / 2) as usize;
    format!("{:<width$} [{}>{}]", state.name(), "=".repeat(bars), " ".repeat(50 - bars), width = STATE_WIDTH)
}

/// Picks each slot's live task as Docker does (`tasksBySlot`): only tasks whose desired and observed states are
/// both live, on nodes that are not down; among several, the lowest desired state, then the lowest observed one.
fn live_tasks<'a, K: Ord>(
    tasks: &'a [Task],
    active_nodes: &HashSet<String>,
    key: impl Fn(&Task) -> K,
) -> BTreeMap<K, &'a Task> {
    let mut by_key: BTreeMap<K, &Task> = BTreeMap::new();
    for t in tasks {
        if numbered(t.desired_state) == 0 || numbered(t.status.state) == 0 {
            continue;
        }
        if !t.node_id.is_empty() && !active_nodes.contains(&t.node_id) {
            continue;
        }
        let k = key(t);
        if let Some(existing) = by_key.get(&k) {
            if existing.desired_state < t.desired_state {
                continue;
            }
            if existing.desired_state == t.desired_state && existing.status.state <= t.status.state {
                continue;
            }
        }
        by_key.insert(k, t);
    }
    by_key
}

/// The text of one line: the live task's error if it has one, else (while it is not yet running) the error that
/// ended the slot's previous attempt — so a crash-looping service shows why — else the state and its bar.
fn line_text(live: Option<&Task>, previous_failure: Option<&Task>) -> String {
    match live {
        Some(t) if !t.status.err.is_empty() => trunc_error(&t.status.err),
        Some(t) if t.status.state < TaskState::Running && previous_failure.is_some() => {
            previous_failure.map(|p| trunc_error(&p.status.err)).unwrap_or_default()
        }
        Some(t) => bar_text(t.status.state),
        None => match previous_failure {
            Some(p) => trunc_error(&p.status.err),
            None => bar_text(TaskState::New),
        },
    }
}

/// The newest task that ended with an error, among `tasks` matching `pred`.
fn newest_failure(tasks: &[Task], pred: impl Fn(&Task) -> bool) -> Option<&Task> {
    tasks
        .iter()
        .filter(|t| pred(t) && t.status.state.is_terminal() && !t.status.err.is_empty())
        .max_by_key(|t| (t.meta.created_at, t.status.timestamp))
}

/// Computes the display from the service, its tasks and the nodes that are not down.
pub fn observe(service: &Service, tasks: &[Task], active_nodes: &HashSet<String>) -> Snapshot {
    match service.spec.mode {
        ServiceMode::Replicated { replicas } => {
            let live = live_tasks(tasks, active_nodes, |t| t.slot);
            let mut running = 0;
            let mut lines = Vec::new();
            for slot in 1..=replicas {
                let task = live.get(&slot).copied();
                if task.is_some_and(|t| t.status.state == TaskState::Running && t.desired_state == TaskState::Running) {
                    running += 1;
                }
                let failure = newest_failure(tasks, |t| t.slot == slot);
                // Zero-padded keys keep slot 10 after slot 9 when lines are ordered by key.
                lines.push(SlotLine {
                    key: format!("{slot:020}"),
                    text: format!("{slot}/{replicas}: {}", line_text(task, failure)),
                });
            }
            Snapshot {
                overall: format!("overall progress: {running} out of {replicas} tasks"),
                lines,
                converged: running == replicas,
            }
        }
        // Jobs count completions, not running tasks ([`JobProgress`]; a global job's nodes as of this poll).
        ServiceMode::ReplicatedJob { .. } | ServiceMode::GlobalJob => {
            JobProgress::default().observe(service, tasks, active_nodes)
        }
        ServiceMode::Global => {
            let live = live_tasks(tasks, active_nodes, |t| t.node_id.clone());
            if live.is_empty() {
                // Either the orchestrator has not made the tasks yet or no node fits; either way, wait (as Docker).
                return Snapshot {
                    overall: "overall progress: waiting for new tasks".into(),
                    lines: vec![],
                    converged: false,
                };
            }
            let mut running = 0;
            let mut lines = Vec::new();
            for (node, task) in &live {
                if task.status.state == TaskState::Running && task.desired_state == TaskState::Running {
                    running += 1;
                }
                let failure = newest_failure(tasks, |t| &t.node_id == node);
                lines.push(SlotLine {
                    key: node.clone(),
                    text: format!("{}: {}", short_id(node), line_text(Some(task), failure)),
                });
            }
            Snapshot {
                overall: format!("overall progress: {running} out of {} tasks", live.len()),
                converged: running == live.len(),
                lines,
            }
        }
    }
}

/// Docker's `numberedStates` as its job progress uses them: every state has a number, COMPLETE (10) is the end of
/// the bar; 0 means a state Docker does not show (REMOVE, ORPHANED).
fn job_numbered(state: TaskState) -> u64 {
    match state {
        TaskState::Complete => 10,
        TaskState::Shutdown => 11,
        TaskState::Failed => 12,
        TaskState::Rejected => 13,
        TaskState::Remove | TaskState::Orphaned => 0,
        live => numbered(live),
    }
}

/// The steps of a job task's bar: COMPLETE fills it.
const MAX_JOB_PROGRESS: u64 = 10;

/// Docker's 50-wide bar for `current` out of `total`: `[=====>     ]`, full at or beyond the total.
fn bar(current: u64, total: u64) -> String {
    let bars = (current.min(total) * 100).checked_div(total).map_or(50, |pct| (pct / 2) as usize);
    format!("[{}>{}]", "=".repeat(bars), " ".repeat(50 - bars))
}

/// Docker shows per-task lines only for jobs of at most this many tasks.
const MAX_PROGRESS_BARS: u64 = 20;

/// One job task's line text: its error, or its state and bar.
fn job_task_text(t: &Task) -> String {
    if !t.status.err.is_empty() {
        return trunc_error(&t.status.err);
    }
    let state = t.status.state;
    format!("{:<width$} {}", state.name(), bar(job_numbered(state), MAX_JOB_PROGRESS), width = STATE_WIDTH)
}

/// Picks, per key, the task of the job's current run with the lowest observed state (Docker: a retry in progress
/// shows rather than the attempt that failed); tasks in states Docker does not show are left out.
fn job_tasks_by<'a, K: Ord>(service: &Service, tasks: &'a [Task], key: impl Fn(&Task) -> K) -> BTreeMap<K, &'a Task> {
    let run = Some(service.spec_version);
    let mut by_key: BTreeMap<K, &Task> = BTreeMap::new();
    for t in tasks.iter().filter(|t| t.job_iteration == run) {
        if job_numbered(t.desired_state) == 0 || job_numbered(t.status.state) == 0 {
            continue;
        }
        let k = key(t);
        match by_key.get(&k) {
            Some(existing) if job_numbered(existing.status.state) <= job_numbered(t.status.state) => {}
            _ => {
                by_key.insert(k, t);
            }
        }
    }
    by_key
}

/// `job progress: 3 out of 6 complete [====>   ]`, the count padded to the total's width as Docker does.
fn job_overall(complete: u64, total: u64) -> String {
    let width = total.to_string().len();
    format!("job progress: {complete:>width$} out of {total} complete {}", bar(complete, total))
}

/// Job progress, as Docker draws it for `--mode replicated-job` (completions out of the total, the active tasks
/// out of those allowed at once, one line per slot) and `--mode global-job` (completions out of the nodes the run
/// started on, one line per node). Only tasks of the service's current run count (`Task::job_iteration`).
#[derive(Debug, Default)]
pub struct JobProgress {
    /// A global job's nodes, fixed by the first poll that saw tasks of its run (as Docker: nodes joining later do
    /// not get a task, and would never complete).
    nodes: Option<std::collections::BTreeSet<String>>,
}

impl JobProgress {
    /// Computes the display; `converged` means the job's run is complete.
    pub fn observe(&mut self, service: &Service, tasks: &[Task], active_nodes: &HashSet<String>) -> Snapshot {
        match service.spec.mode {
            ServiceMode::ReplicatedJob { max_concurrent, total_completions } => {
                Self::replicated(service, tasks, max_concurrent, total_completions)
            }
            ServiceMode::GlobalJob => self.global(service, tasks, active_nodes),
            _ => observe(service, tasks, active_nodes),
        }
    }

    fn replicated(service: &Service, tasks: &[Task], max_concurrent: u64, total: u64) -> Snapshot {
        // The server runs as many at once as the total when the limit is 0 (Docker's CLI sends the total).
        let concurrent = if max_concurrent == 0 { total } else { max_concurrent };
        let by_slot = job_tasks_by(service, tasks, |t| t.slot);
        let complete = by_slot.values().filter(|t| t.status.state == TaskState::Complete).count() as u64;
        let active = by_slot.values().filter(|t| t.status.state < TaskState::Complete).count() as u64;
        let allowed = total.saturating_sub(complete).min(concurrent);
        let w = concurrent.to_string().len();
        // The empty key sorts the active-tasks line above the slots.
        let mut lines = vec![SlotLine {
            key: String::new(),
            text: format!("active tasks: {active:>w$} out of {allowed:>w$} tasks"),
        }];
        if total <= MAX_PROGRESS_BARS {
            for slot in 1..=total {
                let text = match by_slot.get(&slot) {
                    Some(t) => format!("{slot}/{total}: {}", job_task_text(t)),
                    None => format!("{slot}/{total}:"),
                };
                lines.push(SlotLine { key: format!("{slot:020}"), text });
            }
        }
        Snapshot { overall: job_overall(complete, total), lines, converged: complete >= total }
    }

    fn global(&mut self, service: &Service, tasks: &[Task], active_nodes: &HashSet<String>) -> Snapshot {
        let by_node = job_tasks_by(service, tasks, |t| t.node_id.clone());
        if self.nodes.is_none() {
            if by_node.is_empty() && !active_nodes.is_empty() {
                // The orchestrator has not made the run's tasks yet.
                return Snapshot { overall: "job progress: waiting for tasks".into(), lines: vec![], converged: false };
            }
            self.nodes = Some(by_node.keys().cloned().collect());
        }
        let nodes = self.nodes.as_ref().map(|n| n.iter().collect::<Vec<_>>()).unwrap_or_default();
        let total = nodes.len() as u64;
        let mut complete = 0;
        let mut lines = Vec::new();
        for node in nodes {
            let Some(t) = by_node.get(node) else { continue };
            if t.status.state == TaskState::Complete {
                complete += 1;
            }
            if total <= MAX_PROGRESS_BARS {
                lines.push(SlotLine { key: node.clone(), text: format!("{}: {}", short_id(node), job_task_text(t)) });
            }
        }
        Snapshot { overall: job_overall(complete, total), lines, converged: complete >= total }
    }
}

/// The `verify:` step: converged must hold for [`STABLE_FOR`] before we stop.
#[derive(Debug, Default)]
pub struct Verifier {
    since: Option<Instant>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verify {
    /// Not converged (and never was, or we already said it failed).
    NotYet,
    /// Converged; waiting out the rest of the window (whole seconds left, rounded up).
    Waiting(u64),
    /// Was converged, now is not.
    Failed,
    Converged,
}

impl Verifier {
    pub fn step(&mut self, converged: bool, now: Instant) -> Verify {
        match (converged, self.since) {
            (false, None) => Verify::NotYet,
            (false, Some(_)) => {
                self.since = None;
                Verify::Failed
            }
            (true, None) => {
                self.since = Some(now);
                if STABLE_FOR.is_zero() {
                    Verify::Converged
                } else {
                    Verify::Waiting(STABLE_FOR.as_secs_f64().ceil() as u64)
                }
            }
            (true, Some(t)) => {
                let waited = now.saturating_duration_since(t);
                if waited >= STABLE_FOR {
                    Verify::Converged
                } else {
                    Verify::Waiting((STABLE_FOR - waited).as_secs_f64().ceil() as u64)
                }
            }
        }
    }
}

impl Verify {
    fn text(&self) -> Option<String> {
        match self {
            Verify::NotYet => None,
            Verify::Waiting(n) => Some(format!("verify: Waiting {n} seconds to verify that tasks are stable...")),
            Verify::Failed => Some("verify: Detected task failure".into()),
            Verify::Converged => Some("verify: Service converged".into()),
        }
    }
}

/// A line on screen: an indicatif bar on a terminal, or remembered text that is printed when it changes.
struct Line {
    bar: Option<ProgressBar>,
    last: String,
}

/// Draws snapshots; knows nothing of the API.
struct Screen {
    multi: Option<MultiProgress>,
    overall: Line,
    slots: Vec<(String, Line)>,
    verify: Option<Line>,
}

impl Screen {
    fn new(tty: bool) -> Screen {
        let multi = tty.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stdout()));
        let mut s = Screen { multi, overall: Line { bar: None, last: String::new() }, slots: vec![], verify: None };
        s.overall.bar = s.new_bar(None);
        s
    }

    fn style() -> ProgressStyle {
        // "{msg}" is a valid template; the fallback only guards against a future indicatif rejecting it.
        ProgressStyle::with_template("{msg}").unwrap_or_else(|_| ProgressStyle::default_bar())
    }

    /// Adds a bar at `index` (counting the overall line as 0), or at the end.
    fn new_bar(&self, index: Option<usize>) -> Option<ProgressBar> {
        let multi = self.multi.as_ref()?;
        let pb = ProgressBar::new(MAX_PROGRESS).with_style(Self::style());
        Some(match index {
            Some(i) => multi.insert(i, pb),
            None => multi.add(pb),
        })
    }

    fn set(line: &mut Line, text: &str) {
        if line.last == text {
            return;
        }
        line.last = text.to_string();
        match &line.bar {
            Some(pb) => pb.set_message(text.to_string()),
            None => println!("{text}"),
        }
    }

    fn draw(&mut self, snap: &Snapshot) {
        Self::set(&mut self.overall, &snap.overall);
        // Drop lines that are gone (a node left, the service was scaled during the wait).
        let keep: HashSet<&str> = snap.lines.iter().map(|l| l.key.as_str()).collect();
        let multi = self.multi.clone();
        self.slots.retain(|(k, line)| {
            let keep = keep.contains(k.as_str());
            if let (false, Some(m), Some(pb)) = (keep, &multi, &line.bar) {
                m.remove(pb);
            }
            keep
        });
        for l in &snap.lines {
            let pos = self.slots.iter().position(|(k, _)| k == &l.key);
            let i = match pos {
                Some(i) => i,
                None => {
                    let at = self.slots.iter().position(|(k, _)| k > &l.key).unwrap_or(self.slots.len());
                    let bar = self.new_bar(Some(at + 1));
                    self.slots.insert(at, (l.key.clone(), Line { bar, last: String::new() }));
                    at
                }
            };
            Self::set(&mut self.slots[i].1, &l.text);
        }
    }

    fn verify(&mut self, v: &Verify) {
        if let Some(text) = v.text() {
            self.last_line(&text);
        }
    }

    /// Sets the line under the slots (`verify: …`, `job complete`).
    fn last_line(&mut self, text: &str) {
        if self.verify.is_none() {
            let bar = self.new_bar(None);
            self.verify = Some(Line { bar, last: String::new() });
        }
        if let Some(line) = self.verify.as_mut() {
            Self::set(line, text);
        }
    }

    /// Leaves the last state on screen.
    fn finish(&self) {
        let all = std::iter::once(&self.overall).chain(self.slots.iter().map(|(_, l)| l)).chain(self.verify.iter());
        for line in all {
            if let Some(pb) = &line.bar {
                pb.finish();
            }
        }
    }
}

/// One poll: the service (re-read, as it may change or vanish), its tasks, and the nodes that are up.
async fn poll(client: &mut Client, service_id: &str) -> anyhow::Result<Snapshot> {
    let (service, tasks, active) = fetch(client, service_id).await?;
    Ok(observe(&service, &tasks, &active))
}

/// The service, its tasks, and the nodes that are not down.
async fn fetch(client: &mut Client, service_id: &str) -> anyhow::Result<(Service, Vec<Task>, HashSet<String>)> {
    let service = rpc(client.control.get_service(GetRequest { id_or_name: service_id.to_string() }).await)?;
    let tasks = rpc(client
        .control
        .list_tasks(ListTasksRequest { service_ids: vec![service.id.clone()], ..Default::default() })
        .await)?
    .tasks;
    let nodes = rpc(client.control.list_nodes(Empty {}).await)?.nodes;
    let active: HashSet<String> =
        nodes.into_iter().filter(|n| n.status.state != NodeState::Down).map(|n| n.id).collect();
    Ok((service, tasks, active))
}

/// Waits until the service converges, drawing progress unless `quiet` (`service create -q` still waits, as
/// Docker's does, only silently). Ctrl-C leaves it running in the background, as Docker.
pub async fn wait_converged(
    client: &mut Client,
    service_id: &str,
    service_name: &str,
    quiet: bool,
) -> anyhow::Result<()> {
    let mode = rpc(client.control.get_service(GetRequest { id_or_name: service_id.to_string() }).await)?.spec.mode;
    if mode.is_job() {
        return wait_job_complete(client, service_id, service_name, quiet).await;
    }
    let mut screen = Screen::new(std::io::stdout().is_terminal() && !quiet);
    let mut verifier = Verifier::default();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let snap = match poll(client, service_id).await {
            Ok(s) => s,
            Err(e) => {
                screen.finish();
                return Err(e);
            }
        };
        if !quiet {
            screen.draw(&snap);
        }
        let v = verifier.step(snap.converged, Instant::now());
        // After a failure the verify line keeps saying so (NotYet draws nothing) until convergence comes back.
        if v != Verify::NotYet && !quiet {
            screen.verify(&v);
        }
        if v == Verify::Converged {
            screen.finish();
            return Ok(());
        }
        next_poll(&mut ctrl_c, &mut screen, service_name).await;
    }
}

/// Waits one poll period. On Ctrl-C the operation goes on without us, as with docker: say how to follow it and
/// exit 130.
async fn next_poll(ctrl_c: &mut (impl std::future::Future + Unpin), screen: &mut Screen, service: &str) {
    tokio::select! {
        _ = tokio::time::sleep(POLL_EVERY) => {}
        _ = ctrl_c => {
            screen.finish();
            eprintln!("Operation continuing in background.");
            eprintln!("Use `shoal service ps --no-trunc {service}` to check progress.");
            std::process::exit(130);
        }
    }
}

/// Whether a task was made from the service's current spec (Docker's `_up-to-date` task filter): its recorded
/// spec version is the service's, or its spec is the current task template (tasks a scale left alone).
pub fn up_to_date(service: &Service, task: &Task) -> bool {
    task.spec_version == service.spec_version || *task.spec == service.spec.task_template
}

/// What one poll of an update (or rollback) means for the display and whether the wait is over.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateStep {
    pub snap: Snapshot,
    /// Lines to print once, above the progress (`rollback: <why>`).
    pub notes: Vec<String>,
    pub verify: Option<String>,
    /// `Some(Ok(lines))`: done, print `lines` last; `Some(Err(msg))`: the update failed with `msg`.
    pub done: Option<Result<Vec<String>, String>>,
}

/// Follows an update from the service's `update_status` and its up-to-date tasks, as `docker service update`
/// does: paused states end the wait with Docker's error, a rollback is announced and counted as one, and the
/// service must stay converged for a while before we say so — the update's monitor window while the server
/// still reports the rollout in progress, else [`STABLE_FOR`].
#[derive(Debug)]
pub struct UpdateWatch {
    /// The status before the request: until the server writes a new one, it says nothing about this update.
    before: Option<UpdateStatus>,
    /// `service rollback` / `update --rollback`: ending rolled back is success, not failure.
    rollback_requested: bool,
    announced_rollback: bool,
    converged_since: Option<Instant>,
}

impl UpdateWatch {
    pub fn new(before: Option<UpdateStatus>, rollback_requested: bool) -> UpdateWatch {
        UpdateWatch { before, rollback_requested, announced_rollback: false, converged_since: None }
    }

    pub fn step(&mut self, service: &Service, tasks: &[Task], active: &HashSet<String>, now: Instant) -> UpdateStep {
        let status = service.update_status.as_ref().filter(|s| Some(*s) != self.before.as_ref());
        let state = status.map(|s| s.state);
        let message = status.map(|s| s.message.clone()).unwrap_or_default();
        let rolling_back = matches!(
            state,
            Some(UpdateState::RollbackStarted | UpdateState::RollbackPaused | UpdateState::RollbackCompleted)
        );
        let current: Vec<Task> = tasks.iter().filter(|t| up_to_date(service, t)).cloned().collect();
        let mut snap = observe(service, &current, active);
        if rolling_back {
            snap.overall = snap.overall.replacen("overall progress: ", "overall progress: rolling back update: ", 1);
        }
        let mut step = UpdateStep { snap, notes: vec![], verify: None, done: None };
        if rolling_back && !self.announced_rollback && !message.is_empty() {
            self.announced_rollback = true;
            step.notes.push(format!("rollback: {message}"));
        }
        match state {
            Some(UpdateState::Paused) => {
                step.done = Some(Err(format!("service update paused: {message}")));
                return step;
            }
            Some(UpdateState::RollbackPaused) => {
                step.done = Some(Err(format!("service rollback paused: {message}")));
                return step;
            }
            _ => {}
        }
        let settled = matches!(state, None | Some(UpdateState::Completed | UpdateState::RollbackCompleted));
        let config = if rolling_back { &service.spec.rollback_config } else { &service.spec.update_config };
        let window = if settled { STABLE_FOR } else { config.monitor.max(STABLE_FOR) };
        if !step.snap.converged {
            if self.converged_since.take().is_some() {
                step.verify = Some("verify: Detected task failure".into());
            }
            return step;
        }
        let since = *self.converged_since.get_or_insert(now);
        let waited = now.saturating_duration_since(since);
        if waited < window {
            let left = (window - waited).as_secs_f64().ceil() as u64;
            step.verify = Some(format!("verify: Waiting {left} seconds to verify that tasks are stable..."));
            return step;
        }
        step.verify = Some("verify: Service converged".into());
        step.done = Some(match state {
            Some(UpdateState::RollbackCompleted) if !self.rollback_requested => {
                Err(format!("service rolled back: {message}"))
            }
            Some(UpdateState::RollbackCompleted) if !message.is_empty() => Ok(vec![format!("rollback: {message}")]),
            _ => Ok(vec![]),
        });
        step
    }
}

/// Follows an update or rollback just sent for `service_id` until it converges (Ok), or fails, pauses or rolls
/// back when an update was asked for (Err with Docker's message). `before` is the service's update status
/// before the request. `quiet` waits without drawing.
pub async fn wait_updated(
    client: &mut Client,
    service_id: &str,
    before: Option<UpdateStatus>,
    quiet: bool,
    rollback_requested: bool,
) -> anyhow::Result<()> {
    let mut screen = Screen::new(std::io::stdout().is_terminal() && !quiet);
    let mut watch = UpdateWatch::new(before, rollback_requested);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let polled = async {
            let service = rpc(client.control.get_service(GetRequest { id_or_name: service_id.to_string() }).await)?;
            let tasks = rpc(client
                .control
                .list_tasks(ListTasksRequest { service_ids: vec![service.id.clone()], ..Default::default() })
                .await)?
            .tasks;
            let nodes = rpc(client.control.list_nodes(Empty {}).await)?.nodes;
            let active: HashSet<String> =
                nodes.into_iter().filter(|n| n.status.state != NodeState::Down).map(|n| n.id).collect();
            anyhow::Ok(watch.step(&service, &tasks, &active, Instant::now()))
        }
        .await;
        let step = match polled {
            Ok(s) => s,
            Err(e) => {
                screen.finish();
                return Err(e);
            }
        };
        if !quiet {
            for note in &step.notes {
                screen.note(note);
            }
            screen.draw(&step.snap);
            if let Some(v) = &step.verify {
                screen.verify_text(v);
            }
        }
        match step.done {
            Some(Ok(lines)) => {
                if !quiet {
                    for l in &lines {
                        screen.note(l);
                    }
                }
                screen.finish();
                return Ok(());
            }
            Some(Err(msg)) => {
                screen.finish();
                anyhow::bail!(msg);
            }
            None => {}
        }
        next_poll(&mut ctrl_c, &mut screen, service_id).await;
    }
}

impl Screen {
    /// A line printed once above the bars (or in sequence, without a terminal).
    fn note(&self, text: &str) {
        match &self.multi {
            Some(m) => {
                let _ = m.println(text);
            }
            None => println!("{text}"),
        }
    }

    /// The `verify:` line with the given text.
    fn verify_text(&mut self, text: &str) {
        if self.verify.is_none() {
            let bar = self.new_bar(None);
            self.verify = Some(Line { bar, last: String::new() });
        }
        if let Some(line) = self.verify.as_mut() {
            Self::set(line, text);
        }
    }
}

/// Waits until a job's current run is complete, drawing Docker's job progress unless `quiet`, then says
/// `job complete` (no verify step: a completed job stays done). Ctrl-C leaves it running in the background.
pub async fn wait_job_complete(
    client: &mut Client,
    service_id: &str,
    service_name: &str,
    quiet: bool,
) -> anyhow::Result<()> {
    let mut screen = Screen::new(std::io::stdout().is_terminal() && !quiet);
    let mut progress = JobProgress::default();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let snap = match fetch(client, service_id).await {
            Ok((service, tasks, active)) => progress.observe(&service, &tasks, &active),
            Err(e) => {
                screen.finish();
                return Err(e);
            }
        };
        if !quiet {
            screen.draw(&snap);
        }
        if snap.converged {
            if !quiet {
                screen.last_line("job complete");
            }
            screen.finish();
            return Ok(());
        }
        next_poll(&mut ctrl_c, &mut screen, service_name).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;
    use swarm::api::Timestamp;

    // Fixtures are built from JSON so they keep compiling when the API gains (defaulted) fields.
    fn service(mode: ServiceMode) -> Service {
        let mut s: Service = serde_json::from_value(serde_json::json!({
            "id": "svc",
            "spec": {"name": "web", "task_template": {"container": {"image": "busybox"}}, "mode": "global"}
        }))
        .unwrap();
        s.spec.mode = mode;
        s
    }

    fn task(id: &str, slot: u64, node: &str, state: TaskState, desired: TaskState, age_s: u64) -> Task {
        let mut t: Task = serde_json::from_value(serde_json::json!({
            "id": id, "service_id": "svc", "service_annotations": {"name": "web"}, "slot": slot,
            "node_id": node, "spec": {"container": {"image": "busybox"}},
            "status": {"state": "new"}, "desired_state": "running"
        }))
        .unwrap();
        let created = Timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 - age_s));
        t.meta.created_at = created;
        t.status.timestamp = created;
        t.status.state = state;
        t.desired_state = desired;
        t
    }

    use TaskState::*;

    fn active(nodes: &[&str]) -> HashSet<String> {
        nodes.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn replicated_counts_running_slots() {
        let svc = service(ServiceMode::Replicated { replicas: 3 });
        let tasks = vec![
            task("a", 1, "n1", Running, Running, 5),
            task("b", 2, "n1", Preparing, Running, 5),
            task("c", 3, "", Pending, Running, 5),
        ];
        let snap = observe(&svc, &tasks, &active(&["n1"]));
        assert_eq!(snap.overall, "overall progress: 1 out of 3 tasks");
        assert!(!snap.converged);
        assert_eq!(snap.lines[0].text, format!("1/3: running   [{}>]", "=".repeat(50)));
        assert_eq!(snap.lines[1].text, format!("2/3: preparing [{}>{}]", "=".repeat(33), " ".repeat(17)));
        assert!(snap.lines[2].text.starts_with("3/3: pending   [================>"));
    }

    #[test]
    fn replicated_converges_when_all_slots_run() {
        let svc = service(ServiceMode::Replicated { replicas: 2 });
        let tasks = vec![
            task("old", 1, "n1", Failed, Shutdown, 30),
            task("a", 1, "n1", Running, Running, 5),
            task("b", 2, "n1", Running, Running, 5),
            // A slot beyond the replica count (being scaled down) does not count.
            task("c", 3, "n1", Running, Shutdown, 5),
        ];
        let snap = observe(&svc, &tasks, &active(&["n1"]));
        assert_eq!(snap.overall, "overall progress: 2 out of 2 tasks");
        assert_eq!(snap.lines.len(), 2);
        assert!(snap.converged);
    }

    #[test]
    fn errors_show_in_the_slot_line() {
        let svc = service(ServiceMode::Replicated { replicas: 2 });
        let mut pending = task("a", 1, "", Pending, Running, 5);
        pending.status.err = "no suitable node (scheduling constraints not satisfied on 1 node)".into();
        let mut failed = task("b0", 2, "n1", Failed, Shutdown, 10);
        failed.status.err = "task: non-zero exit (1)".into();
        let restarting = task("b1", 2, "n1", Ready, Running, 1);
        let snap = observe(&svc, &[pending, failed, restarting], &active(&["n1"]));
        assert_eq!(snap.lines[0].text, "1/2: no suitable node (scheduling constraints not satisfied on 1 node)");
        assert_eq!(snap.lines[1].text, "2/2: task: non-zero exit (1)");
        assert!(!snap.converged);
    }

    #[test]
    fn tasks_on_down_nodes_are_ignored() {
        let svc = service(ServiceMode::Replicated { replicas: 1 });
        let tasks = vec![task("a", 1, "gone", Running, Running, 5)];
        let snap = observe(&svc, &tasks, &active(&["n1"]));
        assert!(!snap.converged);
        assert_eq!(snap.lines[0].text, format!("1/1: new       [=====>{}]", " ".repeat(45)));
    }

    #[test]
    fn global_waits_for_tasks_then_tracks_nodes() {
        let svc = service(ServiceMode::Global);
        let snap = observe(&svc, &[], &active(&["n1"]));
        assert_eq!(snap.overall, "overall progress: waiting for new tasks");
        assert!(!snap.converged);
        let tasks = vec![
            task("a", 0, "node1aaaaaaaaaaaaaa", Running, Running, 5),
            task("b", 0, "node2bbbbbbbbbbbbbb", Starting, Running, 5),
        ];
        let snap = observe(&svc, &tasks, &active(&["node1aaaaaaaaaaaaaa", "node2bbbbbbbbbbbbbb"]));
        assert_eq!(snap.overall, "overall progress: 1 out of 2 tasks");
        assert!(snap.lines[0].text.starts_with("node1aaaaaaa: running"));
        assert!(!snap.converged);
    }

    #[test]
    fn zero_replicas_converge_at_once() {
        let svc = service(ServiceMode::Replicated { replicas: 0 });
        let snap = observe(&svc, &[task("a", 1, "n1", Running, Shutdown, 5)], &active(&["n1"]));
        assert!(snap.converged);
        assert_eq!(snap.overall, "overall progress: 0 out of 0 tasks");
    }

    /// A task of the job's current run (the fixture service's spec version is 0).
    fn job_task(id: &str, slot: u64, node: &str, state: TaskState, desired: TaskState) -> Task {
        let mut t = task(id, slot, node, state, desired, 5);
        t.job_iteration = Some(0);
        t
    }

    #[test]
    fn a_replicated_job_shows_completions_active_tasks_and_its_slots() {
        let svc = service(ServiceMode::ReplicatedJob { max_concurrent: 2, total_completions: 6 });
        let mut failed = job_task("f", 3, "n1", Failed, Shutdown);
        failed.status.err = "task: non-zero exit (1)".into();
        let mut old_run = job_task("o", 5, "n1", Complete, Complete);
        old_run.job_iteration = None;
        let tasks = vec![
            job_task("a", 1, "n1", Complete, Complete),
            job_task("b", 2, "n1", Running, Running),
            failed,
            job_task("c", 3, "n1", Pending, Running), // the retry of slot 3 shows, not its failed attempt
            old_run,
        ];
        let snap = JobProgress::default().observe(&svc, &tasks, &active(&["n1"]));
        assert_eq!(snap.overall, format!("job progress: 1 out of 6 complete [========>{}]", " ".repeat(42)));
        assert!(!snap.converged);
        let texts: Vec<&str> = snap.lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts[0], "active tasks: 2 out of 2 tasks");
        assert_eq!(texts[1], format!("1/6: complete  [{}>]", "=".repeat(50)));
        assert_eq!(texts[2], format!("2/6: running   [{}>{}]", "=".repeat(45), " ".repeat(5)));
        assert!(texts[3].starts_with("3/6: pending   [===============>"), "{}", texts[3]);
        assert_eq!(&texts[4..], ["4/6:", "5/6:", "6/6:"], "slots not started yet, the old run's ignored");
    }

    #[test]
    fn a_replicated_job_converges_when_every_completion_is_in_and_failures_show() {
        let svc = service(ServiceMode::ReplicatedJob { max_concurrent: 0, total_completions: 2 });
        let mut failed = job_task("b", 2, "n1", Failed, Shutdown);
        failed.status.err = "task: non-zero exit (1)".into();
        let tasks = vec![job_task("a", 1, "n1", Complete, Complete), failed.clone()];
        let snap = observe(&svc, &tasks, &active(&["n1"]));
        assert_eq!(snap.lines[0].text, "active tasks: 0 out of 1 tasks", "0 means as many as the total");
        assert_eq!(snap.lines[2].text, "2/2: task: non-zero exit (1)");
        assert!(!snap.converged);
        let done = vec![job_task("a", 1, "n1", Complete, Complete), failed, job_task("c", 2, "n1", Complete, Complete)];
        let snap = observe(&svc, &done, &active(&["n1"]));
        assert_eq!(snap.overall, format!("job progress: 2 out of 2 complete [{}>]", "=".repeat(50)));
        assert!(snap.converged);
    }

    #[test]
    fn a_global_job_waits_for_its_tasks_then_keeps_the_nodes_it_started_on() {
        let svc = service(ServiceMode::GlobalJob);
        let mut p = JobProgress::default();
        let nodes = active(&["node1aaaaaaaaaaaaaa", "node2bbbbbbbbbbbbbb", "node3ccccccccccccc"]);
        let snap = p.observe(&svc, &[], &nodes);
        assert_eq!(snap.overall, "job progress: waiting for tasks");
        assert!(!snap.converged);
        let tasks = vec![
            job_task("a", 0, "node1aaaaaaaaaaaaaa", Complete, Complete),
            job_task("b", 0, "node2bbbbbbbbbbbbbb", Running, Running),
        ];
        let snap = p.observe(&svc, &tasks, &nodes);
        assert_eq!(snap.overall, format!("job progress: 1 out of 2 complete [{}>{}]", "=".repeat(25), " ".repeat(25)));
        assert!(snap.lines[0].text.starts_with("node1aaaaaaa: complete "));
        assert!(!snap.converged);
        // Node 3's task (it was not there when the run started, by our first poll) does not count.
        let mut later = tasks.clone();
        later[1] = job_task("b", 0, "node2bbbbbbbbbbbbbb", Complete, Complete);
        later.push(job_task("c", 0, "node3ccccccccccccc", Running, Running));
        let snap = p.observe(&svc, &later, &nodes);
        assert_eq!(snap.lines.len(), 2);
        assert!(snap.converged, "{snap:?}");
    }

    #[test]
    fn verifier_needs_a_stable_window() {
        let t0 = Instant::now();
        let mut v = Verifier::default();
        assert_eq!(v.step(false, t0), Verify::NotYet);
        assert_eq!(v.step(true, t0), Verify::Waiting(1));
        assert_eq!(v.step(true, t0 + STABLE_FOR / 2), Verify::Waiting(1));
        assert_eq!(v.step(false, t0 + STABLE_FOR / 2), Verify::Failed);
        assert_eq!(v.step(false, t0 + STABLE_FOR), Verify::NotYet);
        let t1 = t0 + STABLE_FOR * 2;
        assert_eq!(v.step(true, t1), Verify::Waiting(1));
        assert_eq!(v.step(true, t1 + STABLE_FOR), Verify::Converged);
        assert_eq!(Verify::Converged.text().unwrap(), "verify: Service converged");
    }

    fn status(state: UpdateState, message: &str, started_s: u64) -> UpdateStatus {
        UpdateStatus {
            state,
            started_at: Timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(started_s)),
            completed_at: None,
            message: message.into(),
        }
    }

    /// A service at spec version 2 (image v2) with `replicas` slots, each holding an old task (running, spec
    /// version 1) and, for the slots in `new_running`, a new one running.
    fn updating(replicas: u64, new_running: &[u64], st: Option<UpdateStatus>) -> (Service, Vec<Task>) {
        let mut svc = service(ServiceMode::Replicated { replicas });
        svc.spec.task_template.container.image = "busybox:v2".into();
        svc.spec_version = 2;
        svc.update_status = st;
        let mut tasks = vec![];
        for slot in 1..=replicas {
            let mut old = task(&format!("old{slot}"), slot, "n1", Running, Running, 60);
            old.spec_version = 1;
            if new_running.contains(&slot) {
                old.desired_state = Shutdown;
                old.status.state = Shutdown;
                let mut new = task(&format!("new{slot}"), slot, "n1", Running, Running, 5);
                new.spec = svc.spec.task_template.clone().into();
                new.spec_version = 2;
                tasks.push(new);
            }
            tasks.push(old);
        }
        (svc, tasks)
    }

    #[test]
    fn up_to_date_is_by_spec_version_or_by_spec() {
        let (svc, tasks) = updating(2, &[1], None);
        let current: Vec<&str> = tasks.iter().filter(|t| up_to_date(&svc, t)).map(|t| t.id.as_str()).collect();
        assert_eq!(current, ["new1"]);
        // A task a scale left alone keeps its older version but runs the current template.
        let mut kept = tasks[1].clone();
        kept.spec = svc.spec.task_template.clone().into();
        assert!(up_to_date(&svc, &kept));
    }

    #[test]
    fn an_update_counts_only_new_tasks_and_waits_out_the_monitor() {
        let t0 = Instant::now();
        let mut w = UpdateWatch::new(None, false);
        let (svc, tasks) = updating(3, &[1], Some(status(UpdateState::Updating, "update in progress", 10)));
        let step = w.step(&svc, &tasks, &active(&["n1"]), t0);
        assert_eq!(step.snap.overall, "overall progress: 1 out of 3 tasks");
        assert_eq!(step.snap.lines[1].text, format!("2/3: new       [=====>{}]", " ".repeat(45)));
        assert_eq!((step.verify, step.done), (None, None));
        // All new, but the server still says updating: wait out its monitor window (5 s by default).
        let (svc, tasks) = updating(3, &[1, 2, 3], Some(status(UpdateState::Updating, "", 10)));
        let step = w.step(&svc, &tasks, &active(&["n1"]), t0);
        assert_eq!(step.verify.as_deref(), Some("verify: Waiting 5 seconds to verify that tasks are stable..."));
        assert_eq!(step.done, None);
        let step = w.step(&svc, &tasks, &active(&["n1"]), t0 + Duration::from_secs(5));
        assert_eq!(step.verify.as_deref(), Some("verify: Service converged"));
        assert_eq!(step.done, Some(Ok(vec![])));
        // Completed by the server: the short window is enough.
        let mut w = UpdateWatch::new(None, false);
        let (svc, tasks) = updating(3, &[1, 2, 3], Some(status(UpdateState::Completed, "update completed", 10)));
        assert_eq!(w.step(&svc, &tasks, &active(&["n1"]), t0).done, None);
        assert_eq!(w.step(&svc, &tasks, &active(&["n1"]), t0 + STABLE_FOR).done, Some(Ok(vec![])));
    }

    #[test]
    fn a_paused_update_fails_with_dockers_message() {
        let mut w = UpdateWatch::new(None, false);
        let msg = "update paused due to failure or early termination of task abc";
        let (svc, tasks) = updating(2, &[], Some(status(UpdateState::Paused, msg, 10)));
        let step = w.step(&svc, &tasks, &active(&["n1"]), Instant::now());
        assert_eq!(step.done, Some(Err(format!("service update paused: {msg}"))));
        let (svc, tasks) = updating(2, &[], Some(status(UpdateState::RollbackPaused, "rollback paused", 10)));
        let step = UpdateWatch::new(None, false).step(&svc, &tasks, &active(&["n1"]), Instant::now());
        assert_eq!(step.done, Some(Err("service rollback paused: rollback paused".into())));
    }

    #[test]
    fn a_status_from_before_the_request_is_ignored() {
        // The last update was paused; a new one was just sent and the server has not written its status yet.
        let old = status(UpdateState::Paused, "update paused due to failure", 10);
        let mut w = UpdateWatch::new(Some(old.clone()), false);
        let (svc, tasks) = updating(1, &[], Some(old));
        let step = w.step(&svc, &tasks, &active(&["n1"]), Instant::now());
        assert_eq!(step.done, None);
        assert_eq!(step.snap.overall, "overall progress: 0 out of 1 tasks");
    }

    #[test]
    fn an_automatic_rollback_is_announced_and_fails_the_update() {
        let t0 = Instant::now();
        let why = "update rolled back due to failure or early termination of task new1";
        let mut w = UpdateWatch::new(None, false);
        let (svc, tasks) = updating(2, &[1], Some(status(UpdateState::RollbackStarted, why, 10)));
        let step = w.step(&svc, &tasks, &active(&["n1"]), t0);
        assert_eq!(step.notes, vec![format!("rollback: {why}")]);
        assert_eq!(step.snap.overall, "overall progress: rolling back update: 1 out of 2 tasks");
        assert!(w.step(&svc, &tasks, &active(&["n1"]), t0).notes.is_empty(), "announced once");
        let (svc, tasks) = updating(2, &[1, 2], Some(status(UpdateState::RollbackCompleted, "rollback completed", 10)));
        w.step(&svc, &tasks, &active(&["n1"]), t0);
        let step = w.step(&svc, &tasks, &active(&["n1"]), t0 + STABLE_FOR);
        assert_eq!(step.verify.as_deref(), Some("verify: Service converged"));
        assert_eq!(step.done, Some(Err("service rolled back: rollback completed".into())));
        // Asked for, the same end is success, with Docker's closing line.
        let mut w = UpdateWatch::new(None, true);
        w.step(&svc, &tasks, &active(&["n1"]), t0);
        let step = w.step(&svc, &tasks, &active(&["n1"]), t0 + STABLE_FOR);
        assert_eq!(step.done, Some(Ok(vec!["rollback: rollback completed".into()])));
    }

    #[test]
    fn a_task_failing_after_convergence_is_reported() {
        let t0 = Instant::now();
        let mut w = UpdateWatch::new(None, false);
        let (svc, mut tasks) = updating(1, &[1], Some(status(UpdateState::Updating, "", 10)));
        assert!(w.step(&svc, &tasks, &active(&["n1"]), t0).verify.unwrap().starts_with("verify: Waiting"));
        tasks[0].status.state = Failed;
        tasks[0].status.err = "task: non-zero exit (1)".into();
        let step = w.step(&svc, &tasks, &active(&["n1"]), t0 + Duration::from_secs(1));
        assert_eq!(step.verify.as_deref(), Some("verify: Detected task failure"));
        assert_eq!(step.snap.lines[0].text, "1/1: task: non-zero exit (1)");
    }
}
