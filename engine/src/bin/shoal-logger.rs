//! `shoal-logger`: the logging binary containerd's runc shim starts for each task (`binary://` stdio). It reads
//! the container's stdout on fd 3 and stderr on fd 4, signals readiness by closing fd 5, and appends each line
//! to the task's log file in Docker's json-file format. It belongs to the shim, not to shoald, so logs keep
//! being written while shoald is stopped or restarting.
//!
//! Usage (as the shim calls it): `shoal-logger file <path>`.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::FromRawFd;
use std::sync::{Arc, Mutex};

extern "C" {
    fn signal(signum: i32, handler: usize) -> usize;
}
const SIGTERM: i32 = 15;
const SIG_IGN: usize = 1;

fn main() {
    // On task delete the shim closes its ends of the pipes, then sends SIGTERM and waits (12 s) for us: ignore
    // it so that what is still in the pipes gets written; end of file ends us right after.
    // SAFETY: installing SIG_IGN has no preconditions.
    unsafe { signal(SIGTERM, SIG_IGN) };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = match args.iter().position(|a| a == "file" || a == "--file") {
        Some(i) if i + 1 < args.len() => args[i + 1].clone(),
        _ => {
            eprintln!("usage: shoal-logger file <path>");
            std::process::exit(2);
        }
    };
    // SAFETY: the shim hands us these descriptors; we own them from here on.
    let (stdout, stderr, ready) = unsafe { (File::from_raw_fd(3), File::from_raw_fd(4), File::from_raw_fd(5)) };
    let out = match std::fs::OpenOptions::new().create(true).append(true).open(&path) {
        Ok(f) => Arc::new(Mutex::new(f)),
        Err(e) => {
            eprintln!("shoal-logger: opening {path}: {e}");
            std::process::exit(1);
        }
    };
    // Closing the ready pipe lets the shim start the container.
    drop(ready);
    let threads: Vec<_> = [(stdout, "stdout"), (stderr, "stderr")]
        .into_iter()
        .map(|(f, stream)| {
            let out = out.clone();
            std::thread::spawn(move || copy(f, stream, &out))
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

/// Docker's json-file splits lines longer than this into several records (only the last ends with "\n"), so
/// a process that never writes a newline cannot make the logger buffer without bound.
const MAX_LINE: usize = 16 * 1024;

fn copy(f: File, stream: &str, out: &Mutex<File>) {
    let mut reader = BufReader::with_capacity(64 * 1024, f);
    let mut line = Vec::new();
    loop {
        line.clear();
        // read_until, bounded by MAX_LINE.
        let eof = loop {
            let buf = match reader.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break true,
            };
            if buf.is_empty() {
                break true;
            }
            let room = MAX_LINE - line.len();
            let (n, done) = match buf.iter().take(room).position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (buf.len().min(room), buf.len() >= room),
            };
            line.extend_from_slice(&buf[..n]);
            reader.consume(n);
            if done {
                break false;
            }
        };
        if !line.is_empty() {
            write_record(&line, stream, out);
        }
        if eof {
            return;
        }
    }
}

fn write_record(line: &[u8], stream: &str, out: &Mutex<File>) {
    let record = serde_json::json!({
        "log": String::from_utf8_lossy(line),
        "stream": stream,
        "time": humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string(),
    });
    let mut text = record.to_string();
    text.push('\n');
    // One write per record on an O_APPEND file: the stdout and stderr threads never interleave inside a line.
    let mut f = out.lock().unwrap_or_else(|e| e.into_inner());
    let _ = f.write_all(text.as_bytes());
}
