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

fn main() {
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

fn copy(f: File, stream: &str, out: &Mutex<File>) {
    let mut reader = BufReader::new(f);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let record = serde_json::json!({
                    "log": String::from_utf8_lossy(&line),
                    "stream": stream,
                    "time": humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string(),
                });
                let mut text = record.to_string();
                text.push('\n');
                let mut f = out.lock().unwrap_or_else(|e| e.into_inner());
                let _ = f.write_all(text.as_bytes());
            }
        }
    }
}
