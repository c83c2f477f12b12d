//! Snapshot files (`<raft dir>/snapshots/*.snap`): the whole store at one log id, streamed to and from disk one
//! object at a time, so no snapshot is ever held whole in one buffer.
//!
//! ```text
//!   {"format":1,"meta":{…snapshot meta…},"objects":N}      header: format version, what the snapshot is
//!   {"Service":{…}}                                        one object per line, N lines
//!   {"end":N,"sha256":"…"}                                 trailer: digest of every byte before it
//! ```
//! A manager with a data key writes each object line sealed ([`AtRest`]): a JSON string holding the base64 of the
//! sealed object. The header and trailer stay in clear (they say which snapshot the file is, nothing of its
//! objects). The trailer makes a truncated or altered file an error rather than a smaller store. Files are written under a
//! `.tmp` name, synced, and renamed into place by the state machine; anything not named by `state.redb` is a
//! leftover and removed.

use crate::api::Object;
use crate::manager::raft::codec::AtRest;
use crate::manager::raft::NodeId;
use base64::Engine;
use openraft::{BasicNode, SnapshotMeta};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

/// The snapshot file format this release writes and reads.
pub const SNAPSHOT_FORMAT: u8 = 1;

type Meta = SnapshotMeta<NodeId, BasicNode>;

/// A snapshot file that cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotFileError {
    /// The file system refused an operation on the file.
    #[error("snapshot file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// The file was written in a format this release does not know.
    #[error("snapshot file {path} has format version {version}; this shoald reads version {SNAPSHOT_FORMAT} (was it written by a newer release?)")]
    UnsupportedVersion { path: PathBuf, version: u64 },
    /// A line of the file is not what the format says.
    #[error("snapshot file {path} is corrupt at line {line}: {reason}")]
    Corrupt { path: PathBuf, line: u64, reason: String },
    /// The file ends before its trailer.
    #[error("snapshot file {path} is truncated: it ends after {got} of its {want} objects")]
    Truncated { path: PathBuf, got: u64, want: u64 },
    /// Every line parses but the bytes are not the ones written.
    #[error("snapshot file {path} is corrupt: its content does not match its checksum")]
    Checksum { path: PathBuf },
    /// The file holds another snapshot than the one it stands for.
    #[error("snapshot file {path} holds snapshot {found}, not {expected}")]
    Mismatch { path: PathBuf, found: String, expected: String },
}

#[derive(Serialize, Deserialize)]
struct Header {
    format: u64,
    meta: Meta,
    objects: u64,
}

/// Only the version, read first so that a newer header is refused by version, not by shape.
#[derive(Deserialize)]
struct Version {
    format: u64,
}

#[derive(Serialize, Deserialize)]
struct Trailer {
    end: u64,
    sha256: String,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotFileError + '_ {
    move |source| SnapshotFileError::Io { path: path.to_path_buf(), source }
}

/// Feeds everything written through it to a digest.
struct Hashing<W> {
    inner: W,
    digest: Sha256,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.digest.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes a new snapshot file at `path` (which must not exist) holding `objects` (exactly `count` of them), and
/// syncs it. The caller renames it into place.
pub fn write(
    path: &Path,
    meta: &Meta,
    count: u64,
    objects: impl Iterator<Item = Object>,
    at_rest: &AtRest,
) -> Result<(), SnapshotFileError> {
    let file = std::fs::OpenOptions::new().write(true).create_new(true).open(path).map_err(io(path))?;
    let mut out = Hashing { inner: BufWriter::with_capacity(256 * 1024, file), digest: Sha256::new() };
    write_line(path, &mut out, &Header { format: SNAPSHOT_FORMAT as u64, meta: meta.clone(), objects: count })?;
    let mut written = 0u64;
    for o in objects {
        if at_rest.is_sealed() {
            let json = serde_json::to_vec(&o).expect("serializing plain data to a Vec cannot fail");
            let sealed = base64::engine::general_purpose::STANDARD.encode(at_rest.seal(json));
            write_line(path, &mut out, &sealed)?;
        } else {
            write_line(path, &mut out, &o)?;
        }
        written += 1;
    }
    // A count that disagrees with the objects would make a file that reads as truncated; catch it here.
    assert_eq!(written, count, "snapshot object count changed while writing");
    let sha256 = hex::encode(out.digest.clone().finalize());
    let mut inner = out.inner;
    write_line(path, &mut inner, &Trailer { end: written, sha256 })?;
    let file =
        inner.into_inner().map_err(|e| SnapshotFileError::Io { path: path.to_path_buf(), source: e.into_error() })?;
    file.sync_all().map_err(io(path))
}

fn write_line(path: &Path, out: &mut impl Write, value: &impl Serialize) -> Result<(), SnapshotFileError> {
    serde_json::to_writer(&mut *out, value)
        .map_err(|e| SnapshotFileError::Io { path: path.to_path_buf(), source: e.into() })?;
    out.write_all(b"\n").map_err(io(path))
}

/// Reads lines, hashing the bytes of every line read, and numbering them for errors.
struct Lines<'a> {
    path: &'a Path,
    reader: BufReader<std::fs::File>,
    digest: Sha256,
    line: u64,
    buf: Vec<u8>,
}

impl<'a> Lines<'a> {
    fn open(path: &'a Path) -> Result<Self, SnapshotFileError> {
        let file = std::fs::File::open(path).map_err(io(path))?;
        Ok(Lines {
            path,
            reader: BufReader::with_capacity(256 * 1024, file),
            digest: Sha256::new(),
            line: 0,
            buf: vec![],
        })
    }

    /// The next whole line (without its newline), or None at the end of the file or of a partial last line.
    fn next(&mut self, hash: bool) -> Result<Option<&[u8]>, SnapshotFileError> {
        self.buf.clear();
        let n = self.reader.read_until(b'\n', &mut self.buf).map_err(io(self.path))?;
        if n == 0 || self.buf.last() != Some(&b'\n') {
            return Ok(None);
        }
        self.line += 1;
        if hash {
            self.digest.update(&self.buf);
        }
        Ok(Some(&self.buf[..self.buf.len() - 1]))
    }

    fn corrupt(&self, reason: impl ToString) -> SnapshotFileError {
        SnapshotFileError::Corrupt { path: self.path.to_path_buf(), line: self.line, reason: reason.to_string() }
    }

    fn header(&mut self) -> Result<Header, SnapshotFileError> {
        let path = self.path;
        let Some(line) = self.next(true)? else {
            return Err(SnapshotFileError::Corrupt { path: path.to_path_buf(), line: 1, reason: "no header".into() });
        };
        let version: Version = serde_json::from_slice(line).map_err(|e| SnapshotFileError::Corrupt {
            path: path.to_path_buf(),
            line: 1,
            reason: format!("not a snapshot header: {e}"),
        })?;
        if version.format != SNAPSHOT_FORMAT as u64 {
            return Err(SnapshotFileError::UnsupportedVersion { path: path.to_path_buf(), version: version.format });
        }
        serde_json::from_slice(line).map_err(|e| SnapshotFileError::Corrupt {
            path: path.to_path_buf(),
            line: 1,
            reason: format!("bad header: {e}"),
        })
    }
}

/// Reads the whole file, checking every line and the checksum; the objects are handed to `each` as they are read.
pub fn read(path: &Path, at_rest: &AtRest, mut each: impl FnMut(Object)) -> Result<Meta, SnapshotFileError> {
    read_lines(path, Some((at_rest, &mut each)))
}

/// Checks the whole file (header, number of lines, checksum) without decoding the objects: cheap enough to run
/// on every start.
pub fn verify(path: &Path) -> Result<Meta, SnapshotFileError> {
    read_lines(path, None)
}

fn read_lines(path: &Path, mut each: Option<(&AtRest, &mut dyn FnMut(Object))>) -> Result<Meta, SnapshotFileError> {
    let mut lines = Lines::open(path)?;
    let header = lines.header()?;
    for got in 0..header.objects {
        let Some(line) = lines.next(true)? else {
            return Err(SnapshotFileError::Truncated { path: path.to_path_buf(), got, want: header.objects });
        };
        if let Some((at_rest, each)) = each.as_mut() {
            let object = if line.first() == Some(&b'"') {
                let text: String = serde_json::from_slice(line).map_err(|e| lines.corrupt(e))?;
                let sealed = base64::engine::general_purpose::STANDARD
                    .decode(text.as_bytes())
                    .map_err(|e| lines.corrupt(format!("sealed object: {e}")))?;
                let json = at_rest.open(&sealed).map_err(|e| lines.corrupt(e))?;
                serde_json::from_slice::<Object>(&json).map_err(|e| lines.corrupt(e))?
            } else {
                serde_json::from_slice::<Object>(line).map_err(|e| lines.corrupt(e))?
            };
            each(object);
        }
    }
    let digest = hex::encode(lines.digest.clone().finalize());
    let Some(line) = lines.next(false)? else {
        return Err(SnapshotFileError::Truncated {
            path: path.to_path_buf(),
            got: header.objects,
            want: header.objects,
        });
    };
    let trailer: Trailer =
        serde_json::from_slice(line).map_err(|e| lines.corrupt(format!("expected the end of the snapshot: {e}")))?;
    if trailer.end != header.objects {
        return Err(lines.corrupt(format!("the end says {} objects, the header {}", trailer.end, header.objects)));
    }
    if trailer.sha256 != digest {
        return Err(SnapshotFileError::Checksum { path: path.to_path_buf() });
    }
    if lines.next(false)?.is_some() || !lines.buf.is_empty() {
        return Err(lines.corrupt("data after the end of the snapshot"));
    }
    Ok(header.meta)
}

/// Checks that the file holds the snapshot `expected` describes.
pub fn check_meta(path: &Path, found: &Meta, expected: &Meta) -> Result<(), SnapshotFileError> {
    if found.last_log_id != expected.last_log_id || found.snapshot_id != expected.snapshot_id {
        return Err(SnapshotFileError::Mismatch {
            path: path.to_path_buf(),
            found: format!("{} at {:?}", found.snapshot_id, found.last_log_id),
            expected: format!("{} at {:?}", expected.snapshot_id, expected.last_log_id),
        });
    }
    Ok(())
}

/// A fresh name for a file in the snapshot directory.
pub fn unique_name(prefix: &str, suffix: &str) -> String {
    format!("{prefix}-{:016x}{suffix}", rand::random::<u64>())
}

/// The name a snapshot file gets when it is put in place: ordered by log index, unique.
pub fn snap_name(meta: &Meta) -> String {
    unique_name(&format!("{:020}", meta.last_log_id.map(|l| l.index).unwrap_or(0)), ".snap")
}

/// Syncs a directory, so that renames and creations in it survive a crash.
pub fn sync_dir(dir: &Path) -> Result<(), SnapshotFileError> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// Renames `tmp` to `dir/name` and syncs the directory.
pub fn put_in_place(tmp: &Path, dir: &Path, name: &str) -> Result<PathBuf, SnapshotFileError> {
    let path = dir.join(name);
    std::fs::rename(tmp, &path).map_err(io(tmp))?;
    sync_dir(dir)?;
    Ok(path)
}

/// Removes every file in `dir` whose name starts with `prefix` and ends with `suffix`, except the one `keep` names.
/// Failures are logged: a leftover file costs space, not correctness, and the next removal tries again.
pub fn remove_others(dir: &Path, prefix: &str, suffix: &str, keep: Option<&str>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with(prefix) && name.ends_with(suffix) && Some(name) != keep {
            if let Err(e) = std::fs::remove_file(entry.path()) {
                tracing::warn!(file = %entry.path().display(), error = %e, "cannot remove an old snapshot file");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, LogId, StoredMembership};

    fn meta(index: u64) -> Meta {
        SnapshotMeta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), index)),
            last_membership: StoredMembership::default(),
            snapshot_id: format!("s-{index}"),
        }
    }

    fn objects(n: usize) -> Vec<Object> {
        (0..n).map(|i| Object::Service(crate::testing::service(&format!("id-{i}"), &format!("svc-{i}"), 1))).collect()
    }

    fn written(dir: &Path, n: usize) -> PathBuf {
        let path = dir.join("a.snap");
        write(&path, &meta(7), n as u64, objects(n).into_iter(), &AtRest::default()).unwrap();
        path
    }

    #[test]
    fn writes_one_line_per_object_and_reads_them_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = written(dir.path(), 3);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "header, 3 objects, trailer: {text}");
        assert!(lines[0].starts_with("{\"format\":1,"), "the file starts with its format version: {}", lines[0]);
        let mut got = vec![];
        let m = read(&path, &AtRest::default(), |o| got.push(o)).unwrap();
        assert_eq!(m, meta(7));
        assert_eq!(serde_json::to_string(&got).unwrap(), serde_json::to_string(&objects(3)).unwrap());
        assert_eq!(verify(&path).unwrap(), meta(7));
    }

    #[test]
    fn damaged_files_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let good = std::fs::read(written(dir.path(), 20)).unwrap();
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("cut mid-object", good[..good.len() / 2].to_vec(), "truncated"),
            (
                "cut before the trailer",
                {
                    let end = good[..good.len() - 1].iter().rposition(|b| *b == b'\n').unwrap() + 1;
                    good[..end].to_vec()
                },
                "truncated",
            ),
            ("empty", vec![], "corrupt"),
            ("garbage", b"not a snapshot\n".to_vec(), "corrupt"),
            (
                "newer format",
                {
                    let mut b = good.clone();
                    b[10] = b'9';
                    b
                },
                "format version 9",
            ),
            (
                "a changed byte inside an object",
                {
                    let s = String::from_utf8(good.clone()).unwrap().replacen("svc-13", "svc-99", 1);
                    s.into_bytes()
                },
                "checksum",
            ),
            (
                "a line that is not an object",
                {
                    let s = String::from_utf8(good.clone()).unwrap();
                    let mut lines: Vec<&str> = s.lines().collect();
                    lines[4] = "{\"nope\":1}";
                    (lines.join("\n") + "\n").into_bytes()
                },
                "line 5",
            ),
            ("trailing data", [good.clone(), b"{}\n".to_vec()].concat(), "after the end"),
        ];
        for (what, bytes, says) in cases {
            let path = dir.path().join("bad.snap");
            std::fs::write(&path, &bytes).unwrap();
            let err = read(&path, &AtRest::default(), |_| {}).expect_err(what).to_string();
            if says != "line 5" {
                // Only decoding the objects tells a well-formed line from an object.
                let quick = verify(&path).expect_err(what).to_string();
                assert!(quick.contains(says), "{what}: verify says {says:?}: {quick}");
            }
            assert!(err.contains(&path.display().to_string()), "{what}: the error names the file: {err}");
            assert!(err.contains(says), "{what}: the error says {says:?}: {err}");
        }
    }
}
