//! What one node spends on its tasks, for the convergence benchmark: the containerd calls `shoald` makes (it logs
//! its counts on SIGUSR1) and the memory the node adds per container (the shims, the loggers, and the growth of
//! `shoald` and containerd), read from `/proc`.

use crate::{wait_for, Daemon};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

const CALLS_LINE: &str = "containerd calls total=";

/// The containerd calls the daemon made so far, by request type (`total` among them).
pub fn containerd_calls(d: &Daemon) -> BTreeMap<String, u64> {
    let lines = || std::fs::read_to_string(d.log_path()).unwrap_or_default().matches(CALLS_LINE).count();
    let before = lines();
    let pid = d.pid().expect("shoald runs");
    // SAFETY: a plain signal to the daemon this harness started.
    unsafe { libc::kill(pid, libc::SIGUSR1) };
    wait_for("shoald to log its containerd calls", Duration::from_secs(10), || {
        if lines() > before {
            Ok(())
        } else {
            Err("no new line".into())
        }
    });
    let log = std::fs::read_to_string(d.log_path()).unwrap_or_default();
    let line = log.rsplit_once(CALLS_LINE).map(|(_, rest)| rest.lines().next().unwrap_or_default()).unwrap_or_default();
    let mut counts = BTreeMap::new();
    let mut words = line.split_whitespace();
    if let Some(total) = words.next().and_then(|t| t.parse().ok()) {
        counts.insert("total".to_string(), total);
    }
    for w in words {
        if let Some((k, v)) = w.split_once('=') {
            counts.insert(k.to_string(), v.parse().unwrap_or(0));
        }
    }
    counts
}

/// `after - before`, per request type, divided by `n`, largest first.
pub fn calls_per_task(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, n: usize) -> Vec<(String, f64)> {
    let mut per: Vec<(String, f64)> = after
        .iter()
        .map(|(k, v)| (k.clone(), v.saturating_sub(before.get(k).copied().unwrap_or(0)) as f64 / n as f64))
        .filter(|(_, v)| *v > 0.0)
        .collect();
    per.sort_by(|a, b| b.1.total_cmp(&a.1));
    per
}

/// Memory of the node's processes, in KiB.
#[derive(Debug, Default, Clone, Copy)]
pub struct NodeMemory {
    pub shims: usize,
    /// Proportional set size of every shim of this daemon's containerd (shared pages split among them).
    pub shims_pss: u64,
    pub loggers: usize,
    pub loggers_pss: u64,
    pub shoald_rss: u64,
    pub containerd_rss: u64,
}

fn status_kib(pid: i32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    kib_field(&s, field)
}

fn kib_field(s: &str, field: &str) -> u64 {
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn pss_kib(pid: i32) -> u64 {
    kib_field(&std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default(), "Pss")
}

fn ppid(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name in parentheses: state, then ppid.
    stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0)
}

/// Measures the daemon's node: its shims are those started for its containerd socket, its loggers their children.
pub fn node_memory(d: &Daemon) -> NodeMemory {
    let socket = d.containerd_socket().to_string_lossy().into_owned();
    let mut procs: Vec<(i32, Vec<String>)> = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else { continue };
        let args: Vec<String> =
            raw.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into()).collect();
        procs.push((pid, args));
    }
    let base = |args: &[String]| {
        args.first()
            .and_then(|a| Path::new(a).file_name().map(|f| f.to_string_lossy().into_owned()))
            .unwrap_or_default()
    };
    let shims: Vec<i32> = procs
        .iter()
        .filter(|(_, a)| base(a).starts_with("containerd-shim") && a.iter().any(|x| x == &socket))
        .map(|(p, _)| *p)
        .collect();
    let loggers: Vec<i32> =
        procs.iter().filter(|(p, a)| base(a) == "shoal-logger" && shims.contains(&ppid(*p))).map(|(p, _)| *p).collect();
    NodeMemory {
        shims: shims.len(),
        shims_pss: shims.iter().map(|p| pss_kib(*p)).sum(),
        loggers: loggers.len(),
        loggers_pss: loggers.iter().map(|p| pss_kib(*p)).sum(),
        shoald_rss: d.pid().map(|p| status_kib(p, "VmRSS")).unwrap_or(0),
        containerd_rss: d.containerd_pid().map(|p| status_kib(p, "VmRSS")).unwrap_or(0),
    }
}

/// Prints what `n` running tasks added to the node (`before`: the node without tasks).
pub fn print_memory(n: usize, before: &NodeMemory, after: &NodeMemory) {
    let per = |kib: u64| kib as f64 / n as f64;
    let shoald = after.shoald_rss.saturating_sub(before.shoald_rss);
    let containerd = after.containerd_rss.saturating_sub(before.containerd_rss);
    let total = after.shims_pss + after.loggers_pss + shoald + containerd;
    println!("memory the node adds per container at {n} tasks (KiB; shims and loggers: PSS; daemons: RSS growth):");
    println!("  shim {:>8.0}  ({} shims, {} KiB)", per(after.shims_pss), after.shims, after.shims_pss);
    println!("  logger {:>6.0}  ({} loggers, {} KiB)", per(after.loggers_pss), after.loggers, after.loggers_pss);
    println!("  shoald {:>6.0}  ({} → {} KiB)", per(shoald), before.shoald_rss, after.shoald_rss);
    println!("  containerd {:>2.0}  ({} → {} KiB)", per(containerd), before.containerd_rss, after.containerd_rss);
    println!("  total {:>7.0}", per(total));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_fields_parse() {
        assert_eq!(kib_field("Name:\tx\nVmRSS:\t  1234 kB\n", "VmRSS"), 1234);
        assert_eq!(kib_field("Rss: 10 kB\nPss:                 77 kB\n", "Pss"), 77);
        assert_eq!(kib_field("", "Pss"), 0);
        let before = BTreeMap::from([("total".to_string(), 10u64), ("A".to_string(), 4)]);
        let after = BTreeMap::from([("total".to_string(), 30u64), ("A".to_string(), 14), ("B".to_string(), 0)]);
        assert_eq!(calls_per_task(&before, &after, 10), vec![("total".to_string(), 2.0), ("A".to_string(), 1.0)]);
    }
}
