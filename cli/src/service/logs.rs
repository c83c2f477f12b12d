//! `shoal service logs`: streams a service's (or one task's) logs, gathered by the leader from every node that
//! ran its tasks (`Control.SubscribeLogs`), and prints them as Docker does, `web.1.abcdefghijkl@host    | line`,
//! with stderr lines on stderr. A node whose logs cannot be had is named on stderr; the others' lines still come.

use crate::client::Client;
use crate::client::{rpc, DaemonError};
use crate::output::short_id;
use crate::Failed;
use clap::Args;
use std::io::Write;
use std::time::{Duration, SystemTime};
use swarm::api::control::GetRequest;
use swarm::api::logs::{LogMessage, LogStream, LogsOptions, SubscribeLogsRequest};
use swarm::api::ServiceMode;

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Service or task (name, id or id prefix)
    #[arg(value_name = "SERVICE|TASK")]
    service: String,
    /// Show extra details provided to logs
    #[arg(long)]
    details: bool,
    /// Follow log output
    #[arg(short, long)]
    follow: bool,
    /// Do not include task IDs in output
    #[arg(long = "no-task-ids")]
    no_task_ids: bool,
    /// Do not neatly format logs
    #[arg(long)]
    raw: bool,
    /// Do not truncate output
    #[arg(long = "no-trunc")]
    no_trunc: bool,
    /// Show logs since timestamp (e.g. "2013-01-02T13:23:37Z") or relative (e.g. "42m" for 42 minutes)
    #[arg(long, value_parser = parse_since)]
    since: Option<String>,
    /// Number of lines to show from the end of the logs ("all" or a number)
    #[arg(short = 'n', long, default_value = "all", value_parser = parse_tail, allow_hyphen_values = true)]
    tail: Tail,
    /// Show timestamps
    #[arg(short, long)]
    timestamps: bool,
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

/// `--since` as Docker takes it: a duration before now ("42m", "1h30m"), a Unix time ("1700000000.5"), or an
/// RFC 3339 time (the zone may be left out: UTC). Returned as RFC 3339 UTC.
fn parse_since(s: &str) -> Result<String, String> {
    since_at(s, SystemTime::now())
}

fn since_at(s: &str, now: SystemTime) -> Result<String, String> {
    let t = if let Ok(d) = humantime::parse_duration(s) {
        now.checked_sub(d).unwrap_or(SystemTime::UNIX_EPOCH)
    } else if let Ok(secs) = s.parse::<f64>() {
        if !secs.is_finite() || secs < 0.0 {
            return Err(format!("invalid value for \"since\": {s}"));
        }
        SystemTime::UNIX_EPOCH + Duration::from_secs_f64(secs)
    } else {
        humantime::parse_rfc3339_weak(s).map_err(|_| {
            format!("invalid value for \"since\": {s} (a duration such as 42m, a Unix time or an RFC 3339 time)")
        })?
    };
    Ok(humantime::format_rfc3339_nanos(t).to_string())
}

/// How contexts are shown.
struct Prefixer {
    /// Digits of the highest slot, so `web.2` and `web.10` line up (Docker pads after the node name).
    slot_width: usize,
    no_task_ids: bool,
    no_trunc: bool,
    timestamps: bool,
    raw: bool,
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
        let time = if self.timestamps { format!("{} ", m.time) } else { String::new() };
        if self.raw {
            return format!("{time}{line}");
        }
        format!("{time}{}    | {line}", self.context(&m.context))
    }
}

fn digits(n: u64) -> usize {
    n.to_string().len()
}

/// Digits of the service's highest slot, for the padding; 0 when the selector names no service or task (the
/// subscription then reports it).
async fn slot_width(client: &mut Client, selector: &str) -> usize {
    let svc = match client.control.get_service(GetRequest { id_or_name: selector.into() }).await {
        Ok(s) => Some(s.into_inner()),
        Err(_) => match client.control.get_task(GetRequest { id_or_name: selector.into() }).await {
            Ok(t) => {
                let id = t.into_inner().service_id;
                client.control.get_service(GetRequest { id_or_name: id }).await.ok().map(|s| s.into_inner())
            }
            Err(_) => None,
        },
    };
    match svc.map(|s| s.spec.mode) {
        Some(ServiceMode::Replicated { replicas }) => digits(replicas.max(1)),
        _ => 0,
    }
}

pub async fn run(client: &mut Client, a: LogsArgs) -> anyhow::Result<()> {
    let p = Prefixer {
        slot_width: slot_width(client, &a.service).await,
        no_task_ids: a.no_task_ids,
        no_trunc: a.no_trunc,
        timestamps: a.timestamps,
        raw: a.raw,
    };
    // `--details` shows the attributes a log driver was given; Shoal's logger takes none, so there is nothing
    // more to show.
    let _ = a.details;
    let options = LogsOptions { follow: a.follow, tail: a.tail.0, since: a.since.clone() };
    let req = SubscribeLogsRequest { selector: a.service.clone(), options };
    let mut stream = rpc(client.control.subscribe_logs(req).await)?;
    let mut incomplete = false;
    loop {
        let msg = stream.message().await.map_err(DaemonError)?;
        let Some(m) = msg else { break };
        for w in &m.warnings {
            incomplete = true;
            eprintln!("error from daemon in stream: Error grabbing logs: {w}");
        }
        for l in &m.messages {
            let text = p.line(l);
            // A closed pipe (`| head`) ends the command quietly rather than as an error.
            let res = if l.stream == LogStream::Stderr {
                writeln!(std::io::stderr(), "{text}")
            } else {
                writeln!(std::io::stdout().lock(), "{text}")
            };
            if res.is_err() {
                return Ok(());
            }
        }
        if a.follow && std::io::stdout().flush().is_err() {
            return Ok(());
        }
    }
    // As Docker, logs that could not all be had make the command fail (the reason is printed above).
    if incomplete {
        return Err(Failed.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(ctx: &str, line: &str) -> LogMessage {
        LogMessage {
            time: "2024-01-02T03:04:05.000000000Z".into(),
            stream: LogStream::Stdout,
            context: ctx.into(),
            task_id: String::new(),
            node_id: String::new(),
            line: line.into(),
        }
    }

    const CTX: &str = "web.2.abcdefghijklmnopqrstuvwxy@host-a";

    #[test]
    fn lines_look_like_docker() {
        let mut p = Prefixer { slot_width: 1, no_task_ids: false, no_trunc: false, timestamps: false, raw: false };
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
        p.raw = true;
        assert_eq!(p.line(&msg(CTX, "hello")), "2024-01-02T03:04:05.000000000Z hello", "--raw: no context");
    }

    #[test]
    fn since_values() {
        let now = humantime::parse_rfc3339("2026-01-01T01:00:00Z").unwrap();
        assert_eq!(since_at("42m", now).unwrap(), "2026-01-01T00:18:00.000000000Z");
        assert_eq!(since_at("1700000000.5", now).unwrap(), "2023-11-14T22:13:20.500000000Z");
        assert_eq!(since_at("2026-01-01T00:00:02Z", now).unwrap(), "2026-01-01T00:00:02.000000000Z");
        assert_eq!(since_at("2026-01-01T00:00:02", now).unwrap(), "2026-01-01T00:00:02.000000000Z");
        let e = since_at("yesterday", now).unwrap_err();
        assert!(e.starts_with("invalid value for \"since\": yesterday"), "{e}");
    }

    #[test]
    fn tail_values() {
        assert_eq!(parse_tail("all"), Ok(Tail(None)));
        assert_eq!(parse_tail("10"), Ok(Tail(Some(10))));
        assert!(parse_tail("-1").is_err());
    }
}
