//! Reading task logs: the json-file lines `shoal-logger` writes, from several tasks merged by time, with
//! `--tail` and `--follow`.

use serde::Deserialize;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::mpsc;

/// One line of a task's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub time: String,
    pub stream: String,
    /// Which source (task) it came from: the index into the sources given.
    pub source: usize,
    pub line: String,
}

#[derive(Deserialize)]
struct Record {
    log: String,
    stream: String,
    time: String,
}

fn parse(text: &str, source: usize) -> Option<LogLine> {
    let r: Record = serde_json::from_str(text).ok()?;
    let line = r.log.strip_suffix('\n').unwrap_or(&r.log).to_string();
    Some(LogLine { time: r.time, stream: r.stream, source, line })
}

#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    pub follow: bool,
    /// Last lines of each source (None: all).
    pub tail: Option<usize>,
}

/// Reads every source's existing lines (the last `tail` of each), merged by time, and the byte offset each
/// source was read to.
fn read_existing(sources: &[PathBuf], tail: Option<usize>) -> (Vec<LogLine>, Vec<u64>) {
    let mut all = Vec::new();
    let mut offsets = Vec::new();
    for (i, p) in sources.iter().enumerate() {
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
                if let Some(l) = parse(buf.trim_end(), i) {
                    lines.push(l);
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
    mut added: Option<mpsc::UnboundedReceiver<PathBuf>>,
) -> mpsc::Receiver<LogLine> {
    let (tx, rx) = mpsc::channel(256);
    tokio::task::spawn_blocking(move || {
        let mut sources = sources;
        let (lines, mut offsets) = read_existing(&sources, opts.tail);
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
                    if let Some(l) = parse(buf.trim_end(), i) {
                        new.push(l);
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
        let mut rx = stream(vec![a, b], LogOptions { follow: false, tail: Some(1) }, None);
        let mut got = Vec::new();
        while let Some(l) = rx.recv().await {
            got.push(l.line);
        }
        assert_eq!(got, vec!["b1", "a2"]);
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
