//! `shoal-logger`: the logging binary containerd's runc shim starts for each task (`binary://` stdio). It reads
//! the container's stdout on fd 3 and stderr on fd 4, signals readiness by closing fd 5, and appends each line
//! to the task's log file in Docker's json-file format. It belongs to the shim, not to shoald, so logs keep
//! being written while shoald is stopped or restarting.
//!
//! Usage (as the shim calls it): `shoal-logger file <path> [max-size <size>] [max-file <n>]` (the query pairs of
//! the `binary://` URI); the file is rotated as `engine::jsonfile` describes.

use engine::jsonfile::{self, Rotation, Writer};
use std::fs::File;
use std::io::{BufRead, BufReader};
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
    let usage = || -> ! {
        eprintln!("usage: shoal-logger file <path> [max-size <size>] [max-file <n>]");
        std::process::exit(2);
    };
    if !args.len().is_multiple_of(2) {
        usage();
    }
    let mut path = None;
    let mut opts = Vec::new();
    for pair in args.chunks(2) {
        match pair[0].trim_start_matches("--") {
            "file" => path = Some(pair[1].clone()),
            k => opts.push((k.to_string(), pair[1].clone())),
        }
    }
    let Some(path) = path else { usage() };
    let rotation = match Rotation::from_driver("", opts.iter().map(|(k, v)| (k.as_str(), v.as_str()))) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("shoal-logger: {e}");
            std::process::exit(2);
        }
    };
    // SAFETY: the shim hands us these descriptors; we own them from here on.
    let (stdout, stderr, ready) = unsafe { (File::from_raw_fd(3), File::from_raw_fd(4), File::from_raw_fd(5)) };
    let out = match Writer::open(path.as_ref(), rotation) {
        Ok(w) => Arc::new(Mutex::new(w)),
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

fn copy(f: File, stream: &str, out: &Mutex<Writer>) {
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

fn write_record(line: &[u8], stream: &str, out: &Mutex<Writer>) {
    let rec = jsonfile::record(line, stream, std::time::SystemTime::now());
    let mut w = out.lock().unwrap_or_else(|e| e.into_inner());
    if let Err(e) = w.write_record(&rec) {
        // Nobody reads our stderr but the shim's log; losing a line beats stopping the container's output.
        eprintln!("shoal-logger: writing the log: {e}");
    }
}
