//! Reading task logs: the json-file lines `shoal-logger` writes (`<data root>/containers/<task id>/task.log`),
//! from several tasks merged by time, with `--tail`, `--since` and `--follow`. Whether times are printed
//! (`--timestamps`) is the caller's choice: every line carries its time.
//!
//! `--tail` reads each file backwards from its end in blocks (and into the rotated files when the current one
//! holds too few lines), so it costs what it returns. `--follow` holds each current file open, is woken by
//! inotify on the log directories, and moves to the new file when the logger rotates (renames) the old one.

use notify::Watcher;
use serde::Deserialize;
use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
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

/// Block size of the backwards reader.
const BLOCK: usize = 64 * 1024;
/// While following, how often the reader looks at sources it could not watch, at sources added and at whether
/// the receiver is gone. Writes wake it at once (inotify on the log directories).
const TICK: Duration = Duration::from_secs(2);
/// The poll period when inotify is unavailable (e.g. out of watches).
const POLL: Duration = Duration::from_millis(250);

/// Reads a file's lines from its end backwards, a block at a time: `--tail` costs what it returns, not what
/// the file holds.
struct Backward<'a> {
    file: &'a File,
    /// Everything before this offset is still unread.
    pos: u64,
    /// Read but not yet returned: the bytes from `pos` to the end of the last segment not returned.
    carry: Vec<u8>,
    block: usize,
    done: bool,
    /// Bytes read from the file so far.
    read: u64,
}

impl<'a> Backward<'a> {
    fn new(file: &'a File, len: u64, block: usize) -> Self {
        Backward { file, pos: len, carry: Vec::new(), block, done: false, read: 0 }
    }

    /// The next segment from the end: first what follows the last newline (a partial line, usually empty),
    /// then each complete line, newest first, without its newline.
    fn next_segment(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(i) = self.carry.iter().rposition(|&b| b == b'\n') {
                let seg = self.carry.split_off(i + 1);
                self.carry.truncate(i);
                return Ok(Some(seg));
            }
            if self.pos == 0 {
                if self.done {
                    return Ok(None);
                }
                self.done = true;
                return Ok(Some(std::mem::take(&mut self.carry)));
            }
            let n = (self.block as u64).min(self.pos) as usize;
            self.pos -= n as u64;
            let mut buf = vec![0u8; n];
            self.file.read_exact_at(&mut buf, self.pos)?;
            self.read += n as u64;
            buf.extend_from_slice(&self.carry);
            self.carry = buf;
        }
    }
}

/// One source being read: its current file, held open so that a rotation (a rename) does not lose what was
/// written to it last, and how far its complete lines were read.
struct Source {
    path: PathBuf,
    index: usize,
    task_id: String,
    file: Option<File>,
    ino: u64,
    offset: u64,
}

impl Source {
    fn new(path: PathBuf, index: usize) -> Source {
        let task_id = task_id_of(&path);
        let mut s = Source { path, index, task_id, file: None, ino: 0, offset: 0 };
        s.open();
        s
    }

    fn open(&mut self) {
        self.file = File::open(&self.path).ok();
        self.ino = self.file.as_ref().and_then(|f| f.metadata().ok()).map(|m| m.ino()).unwrap_or(0);
        self.offset = 0;
    }

    fn keep(&self, l: &LogLine, since: Option<&str>) -> bool {
        since.is_none_or(|t| l.time.as_str() >= t)
    }

    /// The existing lines (the last `tail`, across rotated files when needed), oldest first; following goes on
    /// from the end of the last complete line. Returns the bytes read too.
    fn existing(&mut self, tail: Option<usize>, since: Option<&str>, block: usize) -> (Vec<LogLine>, u64) {
        let Some(cur) = self.file.as_ref() else { return (Vec::new(), 0) };
        let len = cur.metadata().map(|m| m.len()).unwrap_or(0);
        let mut back = Backward::new(cur, len, block);
        let partial = back.next_segment().ok().flatten().unwrap_or_default();
        self.offset = len - partial.len() as u64;
        let rotated: Vec<File> =
            crate::jsonfile::rotated_files(&self.path).iter().filter_map(|p| File::open(p).ok()).collect();
        let size = |f: &File| f.metadata().map(|m| m.len()).unwrap_or(0);
        let Some(n) = tail else {
            // Everything: the rotated files oldest first, then the current one up to its last complete line.
            let mut lines = Vec::new();
            let mut read = back.read;
            for f in rotated.iter().rev() {
                read += self.forward(f, 0, size(f), since, &mut lines);
            }
            read += self.forward(cur, 0, self.offset, since, &mut lines);
            return (lines, read);
        };
        let mut lines = Vec::new();
        let mut read = 0;
        let mut older = rotated.iter();
        while lines.len() < n {
            match back.next_segment() {
                Ok(Some(seg)) => {
                    let Some(l) = parse(&String::from_utf8_lossy(&seg), self.index, &self.task_id) else { continue };
                    if !self.keep(&l, since) {
                        break; // lines only get older from here
                    }
                    lines.push(l);
                }
                _ => {
                    let Some(f) = older.next() else { break };
                    read += back.read;
                    back = Backward::new(f, size(f), block);
                    let _ = back.next_segment(); // a rotated file ends with a newline: nothing partial
                }
            }
        }
        read += back.read;
        lines.reverse();
        (lines, read)
    }

    /// Appends the records of the complete lines of `f` between `from` and `to` to `out`; returns how far they
    /// went (a partial last line is read again later, once complete).
    fn forward(&self, f: &File, from: u64, to: u64, since: Option<&str>, out: &mut Vec<LogLine>) -> u64 {
        let mut pos = from;
        let mut pending: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; BLOCK];
        while pos < to {
            let want = ((to - pos) as usize).min(BLOCK);
            let n = match f.read_at(&mut buf[..want], pos) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            pos += n as u64;
            pending.extend_from_slice(&buf[..n]);
            let mut start = 0;
            while let Some(i) = pending[start..].iter().position(|&b| b == b'\n') {
                let line = String::from_utf8_lossy(&pending[start..start + i]);
                if let Some(l) = parse(&line, self.index, &self.task_id) {
                    if self.keep(&l, since) {
                        out.push(l);
                    }
                }
                start += i + 1;
            }
            pending.drain(..start);
        }
        pos - from - pending.len() as u64
    }

    /// Reads what was appended since the last call, following the file across rotations and truncation.
    fn poll(&mut self, since: Option<&str>, out: &mut Vec<LogLine>) {
        // Look at the path first: once it names a new file, nothing more goes to the one we hold.
        let now = std::fs::metadata(&self.path).ok().map(|m| m.ino());
        if let Some(f) = self.file.take() {
            self.read_new(&f, since, out);
            self.file = Some(f);
        }
        let moved = match (&self.file, now) {
            (Some(_), Some(ino)) => ino != self.ino,
            (None, Some(_)) => true,
            _ => false,
        };
        if moved {
            self.open();
            if let Some(f) = self.file.take() {
                self.read_new(&f, since, out);
                self.file = Some(f);
            }
        }
    }

    fn read_new(&mut self, f: &File, since: Option<&str>, out: &mut Vec<LogLine>) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        if len < self.offset {
            self.offset = 0; // truncated in place (max-file=1)
        }
        self.offset += self.forward(f, self.offset, len, since, out);
    }
}

/// Reads every source's existing lines (the last `tail` of each), merged by time.
fn read_existing(sources: &mut [Source], tail: Option<usize>, since: Option<&str>) -> Vec<LogLine> {
    let mut all = Vec::new();
    for s in sources.iter_mut() {
        all.extend(s.existing(tail, since, BLOCK).0);
    }
    // RFC 3339 with fixed-width nanoseconds sorts as text.
    all.sort_by(|a, b| a.time.cmp(&b.time));
    all
}

/// Watches the directories of `sources` not watched yet (those that exist).
fn watch_dirs(watcher: Option<&mut notify::RecommendedWatcher>, sources: &[Source], watched: &mut HashSet<PathBuf>) {
    let Some(w) = watcher else { return };
    for s in sources {
        let Some(dir) = s.path.parent() else { continue };
        if !watched.contains(dir) && w.watch(dir, notify::RecursiveMode::NonRecursive).is_ok() {
            watched.insert(dir.to_path_buf());
        }
    }
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
        let since = since.as_deref();
        let mut sources: Vec<Source> = sources.into_iter().enumerate().map(|(i, p)| Source::new(p, i)).collect();
        // Watching starts before the existing lines are read, so a write in between wakes the follower. A wake
        // names the directories written to (none: look at every source).
        let (wake_tx, wake) = std::sync::mpsc::channel::<Vec<PathBuf>>();
        let mut watcher = if opts.follow {
            notify::recommended_watcher(move |e: notify::Result<notify::Event>| {
                let dirs = match e {
                    Ok(e) => e.paths.iter().filter_map(|p| p.parent().map(Path::to_path_buf)).collect(),
                    Err(_) => Vec::new(),
                };
                let _ = wake_tx.send(dirs);
            })
            .map_err(|e| tracing::warn!(error = %e, "cannot watch log files; polling them"))
            .ok()
        } else {
            None
        };
        let mut watched: HashSet<PathBuf> = HashSet::new();
        watch_dirs(watcher.as_mut(), &sources, &mut watched);
        for l in read_existing(&mut sources, opts.tail, since) {
            if tx.blocking_send(l).is_err() {
                return;
            }
        }
        if !opts.follow {
            return;
        }
        loop {
            // Which directories were written to; `None`: look at every source (a tick, or no inotify).
            let mut dirty: Option<HashSet<PathBuf>> = None;
            if watcher.is_some() {
                if let Ok(first) = wake.recv_timeout(TICK) {
                    let mut d = HashSet::new();
                    let mut all = first.is_empty();
                    d.extend(first);
                    while let Ok(more) = wake.try_recv() {
                        all |= more.is_empty();
                        d.extend(more);
                    }
                    dirty = (!all).then_some(d);
                }
            } else {
                std::thread::sleep(POLL);
            }
            if tx.is_closed() {
                return;
            }
            if let Some(rx) = added.as_mut() {
                while let Ok(p) = rx.try_recv() {
                    sources.push(Source::new(p, sources.len()));
                }
            }
            // Only the sources in a directory written to are read (with hundreds followed, a write to one must not
            // cost a look at each), and those not watched yet (new, or their directory did not exist).
            let look: Vec<bool> = sources
                .iter()
                .map(|s| {
                    let dir = s.path.parent().unwrap_or(Path::new(""));
                    dirty.as_ref().is_none_or(|d| d.contains(dir)) || !watched.contains(dir)
                })
                .collect();
            // A task's directory appears when it starts: watch what exists, try the rest each tick.
            watch_dirs(watcher.as_mut(), &sources, &mut watched);
            let mut new = Vec::new();
            for (s, look) in sources.iter_mut().zip(look) {
                if look {
                    s.poll(since, &mut new);
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

    #[test]
    fn backwards_reader_returns_lines_across_block_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let lines: Vec<String> = (0..50).map(|i| "x".repeat(i * 3 % 17) + &format!("<{i}>")).collect();
        let mut text = lines.join("\n") + "\n";
        text.push_str("partial");
        std::fs::write(&p, &text).unwrap();
        let f = File::open(&p).unwrap();
        for block in [1, 2, 7, 16, 4096] {
            let mut b = Backward::new(&f, text.len() as u64, block);
            assert_eq!(b.next_segment().unwrap().unwrap(), b"partial", "block {block}: the partial line first");
            let mut got = Vec::new();
            while let Some(seg) = b.next_segment().unwrap() {
                got.push(String::from_utf8(seg).unwrap());
            }
            got.reverse();
            assert_eq!(got, lines, "block {block}");
            assert_eq!(b.read, text.len() as u64, "each byte read once");
        }
        // A file ending with a newline has an empty partial line; an empty file has nothing else.
        let mut b = Backward::new(&f, 0, 8);
        assert_eq!(b.next_segment().unwrap().unwrap(), b"");
        assert!(b.next_segment().unwrap().is_none());
    }

    fn write_records(path: &Path, from: usize, to: usize) {
        let mut text = String::new();
        for i in from..to {
            text += &rec(&format!("2026-01-01T00:00:00.{i:09}Z"), "stdout", &format!("line {i}"));
        }
        use std::io::Write;
        std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap().write_all(text.as_bytes()).unwrap();
    }

    #[tokio::test]
    async fn tail_of_a_large_file_reads_only_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t1").join("task.log");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        write_records(&p, 0, 300_000);
        let size = std::fs::metadata(&p).unwrap().len();
        assert!(size > 20 << 20, "a file of many MB: {size}");
        let mut s = Source::new(p.clone(), 0);
        let (lines, read) = s.existing(Some(3), None, BLOCK);
        let got: Vec<&str> = lines.iter().map(|l| l.line.as_str()).collect();
        assert_eq!(got, vec!["line 299997", "line 299998", "line 299999"]);
        assert!(read <= BLOCK as u64, "tail 3 read {read} bytes of a {size}-byte file");
        assert_eq!(s.offset, size, "following starts at the end");

        // Through the public stream too.
        let mut rx = stream(vec![p], LogOptions { follow: false, tail: Some(2) }, None);
        let mut got = Vec::new();
        while let Some(l) = rx.recv().await {
            got.push(l.line);
        }
        assert_eq!(got, vec!["line 299998", "line 299999"]);
    }

    #[test]
    fn tail_and_full_reads_span_rotated_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t1").join("task.log");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let mut w =
            crate::jsonfile::Writer::open(&p, crate::jsonfile::Rotation { max_size: Some(1000), max_file: 3 }).unwrap();
        for i in 0..40 {
            let r = rec(&format!("2026-01-01T00:00:00.{i:09}Z"), "stdout", &format!("line {i}"));
            w.write_record(r.as_bytes()).unwrap();
        }
        assert_eq!(crate::jsonfile::rotated_files(&p).len(), 2);
        let current = std::fs::read_to_string(&p).unwrap().lines().count();
        let all = Source::new(p.clone(), 0).existing(None, None, 64).0;
        let all: Vec<String> = all.into_iter().map(|l| l.line).collect();
        assert!(all.len() > current, "the full read includes rotated files");
        let want: Vec<String> = (40 - all.len()..40).map(|i| format!("line {i}")).collect();
        assert_eq!(all, want, "oldest file first, in order");
        let n = current + 3;
        let tail = Source::new(p.clone(), 0).existing(Some(n), None, 64).0;
        let tail: Vec<String> = tail.into_iter().map(|l| l.line).collect();
        assert_eq!(tail, all[all.len() - n..], "tail reaches into task.log.1");
        let since = "2026-01-01T00:00:00.000000038Z";
        let tail = Source::new(p, 0).existing(Some(10), Some(since), 64).0;
        assert_eq!(tail.iter().map(|l| l.line.as_str()).collect::<Vec<_>>(), vec!["line 38", "line 39"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn follow_is_woken_by_writes_and_survives_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t1").join("task.log");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let mut w =
            crate::jsonfile::Writer::open(&p, crate::jsonfile::Rotation { max_size: Some(500), max_file: 2 }).unwrap();
        let mut write = |i: usize| {
            let r = rec(&format!("2026-01-01T00:00:00.{i:09}Z"), "stdout", &format!("line {i}"));
            w.write_record(r.as_bytes()).unwrap();
        };
        write(0);
        let mut rx = stream(vec![p.clone()], LogOptions { follow: true, tail: None }, None);
        assert_eq!(rx.recv().await.unwrap().line, "line 0");

        // Far sooner than the reader's own tick: a write wakes it.
        write(1);
        let t0 = std::time::Instant::now();
        let next = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("line 1").unwrap();
        assert_eq!(next.line, "line 1");
        assert!(t0.elapsed() < TICK / 2, "woken by the write, not by the tick: {:?}", t0.elapsed());

        // Several rotations (about 6 records per file): each line arrives promptly, also the first one written
        // to a new file after a rename.
        for i in 2..40 {
            write(i);
            let next = tokio::time::timeout(TICK / 2, rx.recv()).await;
            let next = next.unwrap_or_else(|_| panic!("line {i} not followed within {:?}", TICK / 2)).unwrap();
            assert_eq!(next.line, format!("line {i}"));
        }
        assert!(!crate::jsonfile::rotated_files(&p).is_empty(), "the file was rotated");
        let rotations = std::fs::read_to_string(&p).unwrap().lines().count();
        assert!(rotations < 38, "the current file holds only the newest lines");
    }
}
