//! `shoal service logs`: streams a service's task logs from the daemon and prints them as Docker does,
//! `web.1.abcdefghijkl@host    | line`, with stderr lines on stderr.

use crate::client::Client;
use crate::client::{rpc, DaemonError};
use crate::output::short_id;
use clap::Args;
use engine_api::{LogMessage, ServiceLogsRequest};
use std::io::Write;
use swarm::api::control::GetRequest;
use swarm::api::ServiceMode;

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Service (name, id or id prefix)
    #[arg(value_name = "SERVICE")]
    service: String,
    /// Follow log output
    #[arg(short, long)]
    follow: bool,
    /// Number of lines to show from the end of the logs ("all" or a number)
    #[arg(short = 'n', long, default_value = "all", value_parser = parse_tail, allow_hyphen_values = true)]
    tail: Tail,
    /// Show timestamps
    #[arg(short, long)]
    timestamps: bool,
    /// Do not include task IDs in output
    #[arg(long = "no-task-ids")]
    no_task_ids: bool,
    /// Do not truncate output
    #[arg(long = "no-trunc")]
    no_trunc: bool,
}

/// `--tail`: how many lines from the end of each task's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tail(Option<usize>);

fn parse_tail(s: &str) -> Result<Tail, String> {
    if s == "all" {
        return Ok(Tail(None));
    }
    s.parse::<usize>()
        .map(|n| Tail(Some(n)))
        .map_err(|_| format!("invalid tail value {s}: must be \"all\" or a non-negative integer"))
}

/// How contexts are shown.
struct Prefixer {
    /// Digits of the highest slot, so `web.2` and `web.10` line up (Docker pads after the node name).
    slot_width: usize,
    no_task_ids: bool,
    no_trunc: bool,
    timestamps: bool,
}

impl Prefixer {
    /// `web.1.<task id>@<host>` → `web.1.abcdefghijkl@host` (+ padding), per the flags.
    fn context(&self, raw: &str) -> String {
        let (task, node) = raw.split_once('@').unwrap_or((raw, ""));
        // The task part is `<service>.<slot or node id>.<task id>`; service names hold no dots.
        let (name, id) = match task.rsplit_once('.') {
            Some((name, id)) if name.contains('.') => (name, Some(id)),
            _ => (task, None),
        };
        let mut out = name.to_string();
        if let (false, Some(id)) = (self.no_task_ids, id) {
            out.push('.');
            out.push_str(if self.no_trunc { id } else { short_id(id) });
        }
        if !node.is_empty() {
            out.push('@');
            out.push_str(node);
        }
        let slot_digits = name.rsplit_once('.').and_then(|(_, s)| s.parse::<u64>().ok()).map(digits);
        if let Some(d) = slot_digits {
            out.push_str(&" ".repeat(self.slot_width.saturating_sub(d)));
        }
        out
    }

    fn line(&self, m: &LogMessage) -> String {
        let line = m.line.strip_suffix('\n').unwrap_or(&m.line);
        let line = line.strip_suffix('\r').unwrap_or(line);
        let ctx = self.context(&m.context);
        if self.timestamps {
            format!("{} {ctx}    | {line}", m.time)
        } else {
            format!("{ctx}    | {line}")
        }
    }
}

fn digits(n: u64) -> usize {
    n.to_string().len()
}

pub async fn run(client: &mut Client, a: LogsArgs) -> anyhow::Result<()> {
    // Looked up first so an unknown service is reported as such, and for the slot padding.
    let svc = rpc(client.control.get_service(GetRequest { id_or_name: a.service.clone() }).await)?;
    let slot_width = match svc.spec.mode {
        ServiceMode::Replicated { replicas } => digits(replicas.max(1)),
        ServiceMode::Global => 0,
    };
    let p = Prefixer { slot_width, no_task_ids: a.no_task_ids, no_trunc: a.no_trunc, timestamps: a.timestamps };
    let mut stream = rpc(client
        .engine
        .service_logs(ServiceLogsRequest { service: svc.id.clone(), follow: a.follow, tail: a.tail.0 })
        .await)?;
    loop {
        let msg = stream.message().await.map_err(DaemonError)?;
        let Some(m) = msg else { return Ok(()) };
        let text = p.line(&m);
        // A closed pipe (`| head`) ends the command quietly rather than as an error.
        let res = if m.stream == "stderr" {
            writeln!(std::io::stderr(), "{text}")
        } else {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{text}").and_then(|_| if a.follow { out.flush() } else { Ok(()) })
        };
        if res.is_err() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(ctx: &str, line: &str) -> LogMessage {
        LogMessage {
            time: "2024-01-02T03:04:05.000000000Z".into(),
            stream: "stdout".into(),
            context: ctx.into(),
            line: line.into(),
        }
    }

    const CTX: &str = "web.2.abcdefghijklmnopqrstuvwxy@host-a";

    #[test]
    fn lines_look_like_docker() {
        let mut p = Prefixer { slot_width: 1, no_task_ids: false, no_trunc: false, timestamps: false };
        assert_eq!(p.line(&msg(CTX, "hello\n")), "web.2.abcdefghijkl@host-a    | hello");
        p.slot_width = 2;
        assert_eq!(p.line(&msg(CTX, "hello")), "web.2.abcdefghijkl@host-a     | hello");
        p.slot_width = 1;
        p.no_task_ids = true;
        assert_eq!(p.line(&msg(CTX, "hello")), "web.2@host-a    | hello");
        p.no_task_ids = false;
        p.no_trunc = true;
        p.timestamps = true;
        assert_eq!(
            p.line(&msg(CTX, "hello")),
            "2024-01-02T03:04:05.000000000Z web.2.abcdefghijklmnopqrstuvwxy@host-a    | hello"
        );
    }

    #[test]
    fn tail_values() {
        assert_eq!(parse_tail("all"), Ok(Tail(None)));
        assert_eq!(parse_tail("10"), Ok(Tail(Some(10))));
        assert!(parse_tail("-1").is_err());
    }
}
