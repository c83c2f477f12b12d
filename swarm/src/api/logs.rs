//! Messages of cluster-wide logs (`service logs`): what the CLI asks the control API for, what the dispatcher
//! pushes to agents and what agents publish back.
//!
//! ```text
//!  CLI ── Control.SubscribeLogs(selector, options) ──▶ leader's log broker
//!        agents with selected tasks ◀── LogSubscription{id, task ids, options} ── (Dispatcher.Logs stream)
//!        ── PublishLogs{id, lines…}… then {close} ──▶ broker ── SubscribeLogsMessage{lines, warnings} ──▶ CLI
//! ```
//! Lines carry RFC 3339 UTC times with fixed-width nanoseconds, so they order as text.

use serde::{Deserialize, Serialize};

/// The most line bytes one message carries (a `PublishLogs` call or a `SubscribeLogsMessage`): well under
/// gRPC's 4 MiB default message limit, JSON escaping included.
pub const MAX_LOG_BATCH_BYTES: usize = 512 * 1024;
/// The longest piece of one line a message carries; longer lines are cut into pieces of this size.
pub const MAX_LOG_LINE_BYTES: usize = 64 * 1024;

/// What to read of each task's log, as `service logs`' flags say.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsOptions {
    /// Go on with new lines until the subscriber leaves (`-f`).
    #[serde(default)]
    pub follow: bool,
    /// Only the last lines of each task's log (None: all; `--tail`).
    #[serde(default)]
    pub tail: Option<usize>,
    /// Only lines written at or after this RFC 3339 time (`--since`).
    #[serde(default)]
    pub since: Option<String>,
}

/// `Control.SubscribeLogs`: the logs of a service's tasks, or of one task.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubscribeLogsRequest {
    /// A service (name, id or id prefix) or, failing that, a task (id or id prefix).
    pub selector: String,
    #[serde(default)]
    pub options: LogsOptions,
}

/// Which output a line was written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
}

impl LogStream {
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }
}

/// One line (or a piece of a long one) as an agent publishes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskLogLine {
    pub task_id: String,
    /// RFC 3339 UTC, fixed-width nanoseconds.
    pub time: String,
    pub stream: LogStream,
    /// The line without its newline.
    pub line: String,
}

/// One line as the subscriber gets it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogMessage {
    /// RFC 3339 UTC, fixed-width nanoseconds.
    pub time: String,
    pub stream: LogStream,
    /// `web.1.<task id>@<node hostname>`, as Docker prefixes lines.
    pub context: String,
    pub task_id: String,
    pub node_id: String,
    pub line: String,
}

/// A piece of a `SubscribeLogs` stream: lines, and warnings about logs that cannot be had (a node that is down).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SubscribeLogsMessage {
    #[serde(default)]
    pub messages: Vec<LogMessage>,
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// `Dispatcher.Logs`: the agent's stream of log subscriptions, for its session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogsSessionRequest {
    pub session_id: String,
}

/// A subscription pushed to an agent: read these tasks' logs and publish them under `id`; or, with `close`,
/// stop publishing `id` (the subscriber left).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LogSubscription {
    pub id: String,
    /// The selected tasks on this node.
    #[serde(default)]
    pub task_ids: Vec<String>,
    /// When following a service: tasks of it that start on this node later are read too.
    #[serde(default)]
    pub service_id: Option<String>,
    #[serde(default)]
    pub options: LogsOptions,
    #[serde(default)]
    pub close: bool,
}

/// `Dispatcher.PublishLogs`: a batch of a subscription's lines from one node. `close` says the node sent all it
/// had (it comes last, never when following); `error` that some of it could not be read.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PublishLogsRequest {
    pub session_id: String,
    pub subscription_id: String,
    #[serde(default)]
    pub lines: Vec<TaskLogLine>,
    #[serde(default)]
    pub close: bool,
    #[serde(default)]
    pub error: Option<String>,
}

/// Cuts `line` into pieces of at most [`MAX_LOG_LINE_BYTES`] (on char boundaries), so no message outgrows
/// its limit.
pub fn split_line(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = line;
    while rest.len() > MAX_LOG_LINE_BYTES {
        let mut cut = MAX_LOG_LINE_BYTES;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        out.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    out.push(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_are_cut_on_char_boundaries() {
        assert_eq!(split_line("short"), vec!["short"]);
        assert_eq!(split_line(""), vec![""]);
        let long = "é".repeat(MAX_LOG_LINE_BYTES); // 2 bytes each
        let pieces = split_line(&long);
        assert_eq!(pieces.len(), 2);
        assert!(pieces.iter().all(|p| p.len() <= MAX_LOG_LINE_BYTES));
        assert_eq!(pieces.concat(), long);
    }
}
