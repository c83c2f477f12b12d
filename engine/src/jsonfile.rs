//! Docker's json-file log format as `shoal-logger` writes it: one JSON record per line
//! (`{"log":"…\n","stream":"stdout","time":"…"}`), rotated by size as `--log-opt max-size=…,max-file=…` say.
//! `task.log` is the file being written; `task.log.1` … `task.log.<max-file - 1>` are older, `.1` the newest.
//!
//! Rotation is on by default (Docker's json-file default is unbounded; a node that runs services for months
//! must not fill its disk): [`DEFAULT_MAX_SIZE`] × [`DEFAULT_MAX_FILE`] per task.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The one log driver tasks can use.
pub const DRIVER: &str = "json-file";
/// 10 MB (decimal, as Docker's `max-size=10m`).
pub const DEFAULT_MAX_SIZE: u64 = 10_000_000;
pub const DEFAULT_MAX_FILE: u32 = 5;

/// A bad log driver or log option in a task spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogOptError {
    /// A driver other than json-file.
    #[error("log driver {0:?} is not supported (use json-file)")]
    Driver(String),
    /// An option json-file does not know.
    #[error("unknown log opt '{0}' for json-file log driver")]
    Unknown(String),
    /// An option Docker's json-file knows that this one does not implement.
    #[error("log opt '{0}' of the json-file log driver is not supported (only max-size and max-file are)")]
    Unsupported(String),
    /// `max-size` is not a size.
    #[error("invalid max-size '{0}': expected a size such as 10m, 512k or -1 (unlimited)")]
    MaxSize(String),
    /// `max-file` is not a positive number.
    #[error("invalid max-file '{0}': expected a number of files of at least 1")]
    MaxFile(String),
}

/// When a log file is rotated and how many files are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// Rotate before a record would take the file past this many bytes; `None`: never.
    pub max_size: Option<u64>,
    /// Files kept, the one being written included (1: the file is truncated instead of rotated).
    pub max_file: u32,
}

impl Default for Rotation {
    fn default() -> Self {
        Rotation { max_size: Some(DEFAULT_MAX_SIZE), max_file: DEFAULT_MAX_FILE }
    }
}

impl Rotation {
    /// From a log driver's name (empty: json-file) and options; what is not given keeps its default.
    pub fn from_driver<'a>(
        name: &str,
        options: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Rotation, LogOptError> {
        if !name.is_empty() && name != DRIVER {
            return Err(LogOptError::Driver(name.into()));
        }
        let mut r = Rotation::default();
        for (k, v) in options {
            match k {
                "max-size" => r.max_size = parse_max_size(v)?,
                "max-file" => {
                    r.max_file =
                        v.trim().parse().ok().filter(|n| *n >= 1).ok_or_else(|| LogOptError::MaxFile(v.into()))?
                }
                "compress" | "labels" | "labels-regex" | "env" | "env-regex" | "tag" => {
                    return Err(LogOptError::Unsupported(k.into()))
                }
                other => return Err(LogOptError::Unknown(other.into())),
            }
        }
        Ok(r)
    }

    /// As `max-size`/`max-file` option pairs, for the logger's command line.
    pub fn to_options(&self) -> Vec<(&'static str, String)> {
        let size = self.max_size.map_or("-1".to_string(), |n| n.to_string());
        vec![("max-size", size), ("max-file", self.max_file.to_string())]
    }
}

/// go-units `FromHumanSize` (decimal multiples, as Docker's json-file reads `max-size`): `10m`, `1.5k`, `100`,
/// `2GB`; `-1` is unlimited.
fn parse_max_size(s: &str) -> Result<Option<u64>, LogOptError> {
    let err = || LogOptError::MaxSize(s.into());
    let t = s.trim();
    if t == "-1" {
        return Ok(None);
    }
    let end = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(end);
    let value: f64 = num.parse().map_err(|_| err())?;
    let unit = unit.trim_start().to_ascii_lowercase();
    let (mult, rest) = match unit.chars().next() {
        Some(c @ ('k' | 'm' | 'g' | 't' | 'p')) => {
            let exp = "kmgtp".find(c).expect("listed") as i32 + 1;
            (1000f64.powi(exp), &unit[1..])
        }
        _ => (1.0, unit.as_str()),
    };
    if !matches!(rest, "" | "b" | "i" | "ib") {
        return Err(err());
    }
    let bytes = value * mult;
    if !(1.0..u64::MAX as f64).contains(&bytes) {
        return Err(err());
    }
    Ok(Some(bytes as u64))
}

/// `task.log` for 0, `task.log.<n>` for the n-th newest rotated file.
pub fn rotated_path(log: &Path, n: u32) -> PathBuf {
    if n == 0 {
        return log.to_path_buf();
    }
    let mut s = log.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// The rotated files of `log` that exist, newest first (`task.log.1`, `task.log.2`, …), without `log` itself.
pub fn rotated_files(log: &Path) -> Vec<PathBuf> {
    (1..).map(|n| rotated_path(log, n)).take_while(|p| p.exists()).collect()
}

/// One json-file record for `line` (its newline, if any, included) as a line of text.
pub fn record(line: &[u8], stream: &str, time: std::time::SystemTime) -> Vec<u8> {
    let record = serde_json::json!({
        "log": String::from_utf8_lossy(line),
        "stream": stream,
        "time": humantime::format_rfc3339_nanos(time).to_string(),
    });
    let mut text = record.to_string().into_bytes();
    text.push(b'\n');
    text
}

/// Appends records to a log file, rotating it as `rotation` says.
pub struct Writer {
    path: PathBuf,
    file: File,
    size: u64,
    rotation: Rotation,
}

impl Writer {
    pub fn open(path: &Path, rotation: Rotation) -> std::io::Result<Writer> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(Writer { path: path.to_path_buf(), file, size, rotation })
    }

    /// Writes one record in one `write` (O_APPEND: concurrent writers never interleave inside a line).
    pub fn write_record(&mut self, rec: &[u8]) -> std::io::Result<()> {
        if let Some(max) = self.rotation.max_size {
            // Rotate first, so a file stays within max-size unless a single record is larger.
            if self.size > 0 && self.size + rec.len() as u64 > max {
                self.rotate()?;
            }
        }
        self.file.write_all(rec)?;
        self.size += rec.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        if self.rotation.max_file <= 1 {
            self.file.set_len(0)?;
            self.size = 0;
            return Ok(());
        }
        let last = self.rotation.max_file - 1;
        match std::fs::remove_file(rotated_path(&self.path, last)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        for n in (1..last).rev() {
            match std::fs::rename(rotated_path(&self.path, n), rotated_path(&self.path, n + 1)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        std::fs::rename(&self.path, rotated_path(&self.path, 1))?;
        // Readers following the old file by its descriptor see the rename and move on to the new file.
        self.file = std::fs::OpenOptions::new().create(true).append(true).open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_like_dockers_json_file() {
        assert_eq!(Rotation::from_driver("", []).unwrap(), Rotation { max_size: Some(10_000_000), max_file: 5 });
        let r = Rotation::from_driver("json-file", [("max-size", "1.5k"), ("max-file", "3")]).unwrap();
        assert_eq!(r, Rotation { max_size: Some(1500), max_file: 3 });
        assert_eq!(Rotation::from_driver("", [("max-size", "2MB")]).unwrap().max_size, Some(2_000_000));
        assert_eq!(Rotation::from_driver("", [("max-size", "-1")]).unwrap().max_size, None);
        assert_eq!(
            Rotation::from_driver("", [("max-size", "ten")]).unwrap_err().to_string(),
            "invalid max-size 'ten': expected a size such as 10m, 512k or -1 (unlimited)"
        );
        assert_eq!(Rotation::from_driver("", [("max-size", "10q")]), Err(LogOptError::MaxSize("10q".into())));
        assert_eq!(Rotation::from_driver("", [("max-file", "0")]), Err(LogOptError::MaxFile("0".into())));
        assert_eq!(
            Rotation::from_driver("", [("colour", "red")]).unwrap_err().to_string(),
            "unknown log opt 'colour' for json-file log driver"
        );
        assert_eq!(
            Rotation::from_driver("", [("compress", "true")]).unwrap_err().to_string(),
            "log opt 'compress' of the json-file log driver is not supported (only max-size and max-file are)"
        );
        assert_eq!(Rotation::from_driver("syslog", []), Err(LogOptError::Driver("syslog".into())));
        let r = Rotation { max_size: Some(1500), max_file: 3 };
        let opts = r.to_options();
        assert_eq!(Rotation::from_driver("", opts.iter().map(|(k, v)| (*k, v.as_str()))).unwrap(), r);
    }

    #[test]
    fn rotation_keeps_at_most_max_file_files_each_within_max_size() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("task.log");
        let rotation = Rotation { max_size: Some(1000), max_file: 3 };
        let mut w = Writer::open(&log, rotation).unwrap();
        let mut written = Vec::new();
        for i in 0..500 {
            let rec = record(format!("line {i}\n").as_bytes(), "stdout", std::time::SystemTime::now());
            w.write_record(&rec).unwrap();
            written.push(format!("line {i}\n"));
        }
        let mut files: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        files.sort();
        assert_eq!(files, vec!["task.log", "task.log.1", "task.log.2"], "max-file=3 keeps three files");
        let mut kept = Vec::new();
        for p in [rotated_path(&log, 2), rotated_path(&log, 1), log.clone()] {
            let text = std::fs::read_to_string(&p).unwrap();
            assert!(text.len() <= 1000, "{} is {} bytes, over max-size", p.display(), text.len());
            for l in text.lines() {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                kept.push(v["log"].as_str().unwrap().to_string());
            }
        }
        assert!(kept.len() > 10, "{kept:?}");
        assert_eq!(
            kept,
            written[written.len() - kept.len()..],
            "the newest records, in order, none lost between files"
        );
        assert_eq!(rotated_files(&log), vec![rotated_path(&log, 1), rotated_path(&log, 2)]);

        // max-file=1 truncates in place.
        let one = dir.path().join("one.log");
        let mut w = Writer::open(&one, Rotation { max_size: Some(100), max_file: 1 }).unwrap();
        for _ in 0..20 {
            w.write_record(&record(b"0123456789\n", "stdout", std::time::SystemTime::now())).unwrap();
        }
        assert!(std::fs::metadata(&one).unwrap().len() <= 100);
        assert!(rotated_files(&one).is_empty());
    }
}
