//! Reading task logs: the json-file lines `shoal-logger` writes (`<data root>/containers/<task id>/task.log`),
//! from several tasks merged by time, with `--tail`, `--since` and `--follow`. Whether times are printed
//! (`--timestamps`) is the caller's choice: every line carries its time.

use serde::Deserialize;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;
use std::time::SystemTime;
use tokio::sync::mpsc;

/// One line of a task's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub time: String,
    pub stream: String,
    /// Which source (task) it came from: the index into the sources given.
    pub source: usize,
    /// The task it came from: the name of the directory holding its log file.
    pub task_id: String,
    pub line: String,
}

#[derive(Deserialize)]
struct Record {
    log: String,
    stream: String,
    time: String,
}

fn parse(text: &str, source: usize, task_id: &str) -> Option<LogLine> {
    let r: Record = serde_json::from_str(text).ok()?;
    let line = r.log.strip_suffix('\n').unwrap_or(&r.log).to_string();
    Some(LogLine { time: r.time, stream: r.stream, source, task_id: task_id.to_string(), line })
}

fn task_id_of(path: &Path) -> String {
    path.parent().and_then(|d| d.file_name()).map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// The directory of a task's log files (removed with its container).
pub fn task_dir(data_root: &Path, task_id: &str) -> PathBuf {
    data_root.join("containers").join(task_id)
}

/// Where a task's log file is.
pub fn task_log_path(data_root: &Path, task_id: &str) -> PathBuf {
    task_dir(data_root, task_id).join("task.log")
}

/// Streams the logs of tasks by id (see [`stream_since`]).
pub fn read_logs(
    data_root: &Path,
    task_ids: &[String],
    opts: LogOptions,
    since: Option<SystemTime>,
) -> mpsc::Receiver<LogLine> {
    stream_since(task_ids.iter().map(|t| task_log_path(data_root, t)).collect(), opts, since, None)
}

#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    pub follow: bool,
    /// Last lines of each source (None: all).
    pub tail: Option<usize>,
}

/// Reads every source's existing lines (the last `tail` of each), merged by time, and the byte offset each
/// source was read to.
fn read_existing(sources: &[PathBuf], tail: Option<usize>, since: Option<&str>) -> (Vec<LogLine>, Vec<u64>) {
    let mut all = Vec::new();
    let mut offsets = Vec::new();
    for (i, p) in sources.iter().enumerate() {
        let task_id = task_id_of(p);
        let mut lines = Vec::new();
        let mut offset = 0;
        if let Ok(f) = std::fs::File::open(p) {
            let mut r = BufReader::new(f);
            let mut buf = String::new();
            while let Ok(n) = r.read_line(&mut buf) {
                if n == 0 || !buf.ends_with('\n') {
                    break; // a partial last line is read again when complete
                }
                offset += n as u64;
                if let Some(l) = parse(buf.trim_end(), i, &task_id) {
                    if since.is_none_or(|t| l.time.as_str() >= t) {
                        lines.push(l);
                    }
                }
                buf.clear();
            }
        }
        if let Some(t) = tail {
            let skip = lines.len().saturating_sub(t);
            lines.drain(..skip);
        }
        all.extend(lines);
        offsets.push(offset);
    }
    // RFC 3339 with fixed-width nanoseconds sorts as text.
    all.sort_by(|a, b| a.time.cmp(&b.time));
    (all, offsets)
}

/// Streams the logs of `sources`; ends after the existing lines unless `follow`, then when the receiver drops.
/// While following, sources sent on `added` (tasks that started later) are read from their beginning; their
/// `source` index continues after the initial ones, in the order they were added.
pub fn stream(
    sources: Vec<PathBuf>,
    opts: LogOptions,
    added: Option<mpsc::UnboundedReceiver<PathBuf>>,
) -> mpsc::Receiver<LogLine> {
    stream_since(sources, opts, None, added)
}

/// [`stream`], keeping only lines written at or after `since`.
pub fn stream_since(
    sources: Vec<PathBuf>,
    opts: LogOptions,
    since: Option<SystemTime>,
    mut added: Option<mpsc::UnboundedReceiver<PathBuf>>,
) -> mpsc::Receiver<LogLine> {
    let (tx, rx) = mpsc::channel(256);
    // The logger writes fixed-width RFC 3339 UTC times, which compare correctly as text.
    let since = since.map(|t| humantime::format_rfc3339_nanos(t).to_string());
    tokio::task::spawn_blocking(move || {
        let mut sources = sources;
        let (lines, mut offsets) = read_existing(&sources, opts.tail, since.as_deref());
        for l in lines {
            if tx.blocking_send(l).is_err() {
                return;
            }
        }
        if !opts.follow {
            return;
        }
        loop {
            std::thread::sleep(Duration::from_millis(200));
            if tx.is_closed() {
                return;
            }
            if let Some(rx) = added.as_mut() {
                while let Ok(p) = rx.try_recv() {
                    sources.push(p);
                    offsets.push(0);
                }
            }
            let mut new = Vec::new();
            for (i, p) in sources.iter().enumerate() {
                let task_id = task_id_of(p);
                let Ok(mut f) = std::fs::File::open(p) else { continue };
                if f.seek(SeekFrom::Start(offsets[i])).is_err() {
                    continue;
                }
                let mut r = BufReader::new(f);
                let mut buf = String::new();
                while let Ok(n) = r.read_line(&mut buf) {
                    if n == 0 || !buf.ends_with('\n') {
                        break;
                    }
                    offsets[i] += n as u64;
                    if let Some(l) = parse(buf.trim_end(), i, &task_id) {
                        if since.as_deref().is_none_or(|t| l.time.as_str() >= t) {
                            new.push(l);
                        }
                    }
                    buf.clear();
                }
            }
            new.sort_by(|a, b| a.time.cmp(&b.time));
            for l in new {
                if tx.blocking_send(l).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(t: &str, s: &str, l: &str) -> String {
        serde_json::json!({"log": format!("{l}\n"), "stream": s, "time": t}).to_string() + "\n"
    }

    #[tokio::test]
    async fn merges_by_time_and_tails() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.log");
        let b = dir.path().join("b.log");
        std::fs::write(
            &a,
            rec("2026-01-01T00:00:01.000000000Z", "stdout", "a1")
                + &rec("2026-01-01T00:00:03.000000000Z", "stderr", "a2"),
        )
        .unwrap();
        std::fs::write(&b, rec("2026-01-01T00:00:02.000000000Z", "stdout", "b1")).unwrap();
        let mut rx = stream(vec![a.clone(), b.clone()], LogOptions::default(), None);
        let mut got = Vec::new();
        while let Some(l) = rx.recv().await {
            got.push((l.source, l.line, l.stream));
        }
        assert_eq!(
            got,
            vec![
                (0, "a1".into(), "stdout".into()),
                (1, "b1".into(), "stdout".into()),
                (0, "a2".into(), "stderr".into())
            ]
        );
        let mut rx = stream(vec![a.clone(), b.clone()], LogOptions { follow: false, tail: Some(1) }, None);
        let mut got = Vec::new();
        while let Some(l) = rx.recv().await {
            got.push(l.line);
        }
        assert_eq!(got, vec!["b1", "a2"]);

        let since = humantime::parse_rfc3339("2026-01-01T00:00:02Z").unwrap();
        let mut rx = stream_since(vec![a, b], LogOptions::default(), Some(since), None);
        let mut got = Vec::new();
        while let Some(l) = rx.recv().await {
            got.push(l.line);
        }
        assert_eq!(got, vec!["b1", "a2"], "--since keeps lines at or after it");
    }

    #[tokio::test]
    async fn read_logs_names_each_lines_task() {
        let dir = tempfile::tempdir().unwrap();
        for (id, t) in [("task1", "2026-01-01T00:00:02.000000000Z"), ("task2", "2026-01-01T00:00:01.000000000Z")] {
            let p = task_log_path(dir.path(), id);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, rec(t, "stdout", id)).unwrap();
        }
        let mut rx = read_logs(dir.path(), &["task1".into(), "task2".into()], LogOptions::default(), None);
        let mut got = Vec::new();
        while let Some(l) = rx.recv().await {
            got.push((l.task_id, l.line));
        }
        assert_eq!(got, vec![("task2".into(), "task2".into()), ("task1".into(), "task1".into())]);
    }

    #[tokio::test]
    async fn follows_appended_lines() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.log");
        std::fs::write(&a, rec("2026-01-01T00:00:01.000000000Z", "stdout", "first")).unwrap();
        let (add, added) = mpsc::unbounded_channel();
        let mut rx = stream(vec![a.clone()], LogOptions { follow: true, tail: None }, Some(added));
        assert_eq!(rx.recv().await.unwrap().line, "first");
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&a).unwrap();
        f.write_all(rec("2026-01-01T00:00:02.000000000Z", "stdout", "second").as_bytes()).unwrap();
        let next = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
        assert_eq!(next.line, "second");

        // A task that started later is followed from its first line.
        let b = dir.path().join("b.log");
        std::fs::write(&b, rec("2026-01-01T00:00:03.000000000Z", "stdout", "later")).unwrap();
        add.send(b).unwrap();
        let next = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
        assert_eq!((next.line.as_str(), next.source), ("later", 1));
    }
}
