//! Snapshot files (`<raft dir>/snapshots/*.snap`): the whole store at one log id, streamed to and from disk one
//! object at a time, so no snapshot is ever held whole in one buffer.
//!
//! ```text
//!   {"format":2,"meta":{…snapshot meta…},"objects":N}\n    header line (JSON): format version, what the snapshot is
//!   <u32 LE length><record>                                 N records, one object each
//!   {"end":N,"sha256":"…"}\n                               trailer line: digest of every byte before it
//! ```
//! A record is an object as the state machine stores it ([`AtRest::encode`]: a format byte, then MessagePack, or
//! the same sealed with the data key). The header and trailer stay in clear (they say which snapshot the file is,
//! nothing of its objects). The trailer makes a truncated or altered file an error rather than a smaller store.
//! Format 1, written by older releases, is still read: the same header and trailer with one JSON object per line
//! (a JSON string holding the base64 of the sealed object when sealed). Files are written under a `.tmp` name,
//! synced, and renamed into place by the state machine; anything not named by `state.redb` is a leftover and
//! removed.

use crate::api::Object;
use crate::manager::raft::codec::AtRest;
use crate::manager::raft::NodeId;
use base64::Engine;
use openraft::{BasicNode, SnapshotMeta};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// The snapshot file format this release writes.
pub const SNAPSHOT_FORMAT: u8 = 2;

/// The format of older releases (one JSON object per line), still read.
pub const SNAPSHOT_FORMAT_LINES: u8 = 1;

/// The largest record a reader accepts: far above any object (a secret holds at most 500 KiB), so a length that
/// exceeds it is a damaged file, not a big object.
const MAX_RECORD: u32 = 64 << 20;

type Meta = SnapshotMeta<NodeId, BasicNode>;

/// A snapshot file that cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotFileError {
    /// The file system refused an operation on the file.
    #[error("snapshot file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// The file was written in a format this release does not know.
    #[error("snapshot file {path} has format version {version}; this shoald reads versions {SNAPSHOT_FORMAT_LINES} and {SNAPSHOT_FORMAT} (was it written by a newer release?)")]
    UnsupportedVersion { path: PathBuf, version: u64 },
    /// A part of the file (its header, an object, its trailer) is not what the format says.
    #[error("snapshot file {path} is corrupt at {at}: {reason}")]
    Corrupt { path: PathBuf, at: String, reason: String },
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
        let record = at_rest.encode(&o);
        let Some(len) = u32::try_from(record.len()).ok().filter(|n| *n <= MAX_RECORD) else {
            let too_big =
                format!("{} {} takes {} bytes, more than a snapshot record holds", o.kind(), o.id(), record.len());
            return Err(SnapshotFileError::Io { path: path.to_path_buf(), source: std::io::Error::other(too_big) });
        };
        out.write_all(&len.to_le_bytes()).and_then(|()| out.write_all(&record)).map_err(io(path))?;
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

/// Reads a snapshot file's lines and records, hashing the bytes read.
struct Reader<'a> {
    path: &'a Path,
    reader: BufReader<std::fs::File>,
    digest: Sha256,
    buf: Vec<u8>,
}

impl<'a> Reader<'a> {
    fn open(path: &'a Path) -> Result<Self, SnapshotFileError> {
        let file = std::fs::File::open(path).map_err(io(path))?;
        Ok(Reader { path, reader: BufReader::with_capacity(256 * 1024, file), digest: Sha256::new(), buf: vec![] })
    }

    /// The next whole line (without its newline), or None at the end of the file or of a partial last line.
    fn line(&mut self, hash: bool) -> Result<Option<&[u8]>, SnapshotFileError> {
        self.buf.clear();
        let n = self.reader.read_until(b'\n', &mut self.buf).map_err(io(self.path))?;
        if n == 0 || self.buf.last() != Some(&b'\n') {
            return Ok(None);
        }
        if hash {
            self.digest.update(&self.buf);
        }
        Ok(Some(&self.buf[..self.buf.len() - 1]))
    }

    /// The next record (its length, then its bytes), or None where the file ends before it does.
    fn record(&mut self, at: &str) -> Result<Option<&[u8]>, SnapshotFileError> {
        let mut len = [0u8; 4];
        if !fill(self.path, &mut self.reader, &mut len)? {
            return Ok(None);
        }
        let n = u32::from_le_bytes(len);
        if n > MAX_RECORD {
            return Err(corrupt(self.path, at, format!("a record of {n} bytes, more than any object")));
        }
        self.digest.update(len);
        self.buf.resize(n as usize, 0);
        if !fill(self.path, &mut self.reader, &mut self.buf)? {
            return Ok(None);
        }
        self.digest.update(&self.buf);
        Ok(Some(&self.buf))
    }

    fn header(&mut self) -> Result<Header, SnapshotFileError> {
        let path = self.path;
        let Some(line) = self.line(true)? else {
            return Err(corrupt(path, "line 1", "no header"));
        };
        let version: Version =
            serde_json::from_slice(line).map_err(|e| corrupt(path, "line 1", format!("not a snapshot header: {e}")))?;
        if version.format != SNAPSHOT_FORMAT as u64 && version.format != SNAPSHOT_FORMAT_LINES as u64 {
            return Err(SnapshotFileError::UnsupportedVersion { path: path.to_path_buf(), version: version.format });
        }
        serde_json::from_slice(line).map_err(|e| corrupt(path, "line 1", format!("bad header: {e}")))
    }
}

/// Reads exactly `out.len()` bytes; false if the file ends first.
fn fill(path: &Path, reader: &mut impl Read, out: &mut [u8]) -> Result<bool, SnapshotFileError> {
    match reader.read_exact(out) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(io(path)(e)),
    }
}

fn corrupt(path: &Path, at: &str, reason: impl ToString) -> SnapshotFileError {
    SnapshotFileError::Corrupt { path: path.to_path_buf(), at: at.to_string(), reason: reason.to_string() }
}

/// An object line of format 1: the object's JSON, or a JSON string holding the base64 of it sealed.
fn decode_line(line: &[u8], at_rest: &AtRest) -> Result<Object, String> {
    if line.first() != Some(&b'"') {
        return serde_json::from_slice::<Object>(line).map_err(|e| e.to_string());
    }
    let text: String = serde_json::from_slice(line).map_err(|e| e.to_string())?;
    let sealed =
        base64::engine::general_purpose::STANDARD.decode(text.as_bytes()).map_err(|e| format!("sealed object: {e}"))?;
    let json = at_rest.open(&sealed).map_err(|e| e.to_string())?;
    serde_json::from_slice::<Object>(&json).map_err(|e| e.to_string())
}

/// Reads the whole file, checking every object and the checksum; the objects are handed to `each` as they are
/// read.
pub fn read(path: &Path, at_rest: &AtRest, mut each: impl FnMut(Object)) -> Result<Meta, SnapshotFileError> {
    read_file(path, Some((at_rest, &mut each)))
}

/// Checks the whole file (header, number of objects, checksum) without decoding the objects.
#[cfg(test)]
pub fn verify(path: &Path) -> Result<Meta, SnapshotFileError> {
    read_file(path, None)
}

fn read_file(path: &Path, mut each: Option<(&AtRest, &mut dyn FnMut(Object))>) -> Result<Meta, SnapshotFileError> {
    let mut r = Reader::open(path)?;
    let header = r.header()?;
    let lines = header.format == SNAPSHOT_FORMAT_LINES as u64;
    for got in 0..header.objects {
        let at = format!("object {}", got + 1);
        let item = if lines { r.line(true)? } else { r.record(&at)? };
        let Some(bytes) = item else {
            return Err(SnapshotFileError::Truncated { path: path.to_path_buf(), got, want: header.objects });
        };
        if let Some((at_rest, each)) = each.as_mut() {
            let object = if lines {
                decode_line(bytes, at_rest)
            } else {
                at_rest.decode::<Object>(bytes).map_err(|e| e.to_string())
            };
            each(object.map_err(|reason| corrupt(path, &at, reason))?);
        }
    }
    let digest = hex::encode(r.digest.clone().finalize());
    let Some(line) = r.line(false)? else {
        return Err(SnapshotFileError::Truncated {
            path: path.to_path_buf(),
            got: header.objects,
            want: header.objects,
        });
    };
    let trailer: Trailer = serde_json::from_slice(line)
        .map_err(|e| corrupt(path, "the end", format!("expected the end of the snapshot: {e}")))?;
    if trailer.end != header.objects {
        let reason = format!("the end says {} objects, the header {}", trailer.end, header.objects);
        return Err(corrupt(path, "the end", reason));
    }
    if trailer.sha256 != digest {
        return Err(SnapshotFileError::Checksum { path: path.to_path_buf() });
    }
    if r.line(false)?.is_some() || !r.buf.is_empty() {
        return Err(corrupt(path, "the end", "data after the end of the snapshot"));
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

/// Writes `objects` (exactly `count` of them) as a new snapshot file in `dir`, through a temporary file removed if
/// the write fails, and puts it in place; returns its name. The caller records it.
pub fn write_in_place(
    dir: &Path,
    prefix: &str,
    meta: &Meta,
    count: u64,
    objects: impl Iterator<Item = Object>,
    at_rest: &AtRest,
) -> Result<String, SnapshotFileError> {
    let tmp = dir.join(unique_name(prefix, ".tmp"));
    if let Err(e) = write(&tmp, meta, count, objects, at_rest) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let name = snap_name(meta);
    put_in_place(&tmp, dir, &name)?;
    Ok(name)
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

    /// Where record `i` (from 0) of a format-2 file lies.
    fn record_span(bytes: &[u8], i: usize) -> std::ops::Range<usize> {
        let mut at = bytes.iter().position(|b| *b == b'\n').unwrap() + 1;
        for k in 0.. {
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            if k == i {
                return at + 4..at + 4 + len;
            }
            at += 4 + len;
        }
        unreachable!()
    }

    fn replaced(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
        let at = bytes.windows(from.len()).position(|w| w == from).unwrap();
        [&bytes[..at], to, &bytes[at + from.len()..]].concat()
    }

    #[test]
    fn writes_one_binary_record_per_object_and_reads_them_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = written(dir.path(), 3);
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.starts_with(b"{\"format\":2,"), "the file starts with its format version");
        let record = &bytes[record_span(&bytes, 0)];
        assert_eq!(record[0], crate::manager::raft::codec::FORMAT_VERSION, "a record is an object as stored");
        let json = serde_json::to_vec(&objects(1)[0]).unwrap();
        assert!(record.len() < json.len(), "MessagePack, smaller than the JSON ({} ≥ {})", record.len(), json.len());
        let mut got = vec![];
        let m = read(&path, &AtRest::default(), |o| got.push(o)).unwrap();
        assert_eq!(m, meta(7));
        assert_eq!(serde_json::to_string(&got).unwrap(), serde_json::to_string(&objects(3)).unwrap());
        assert_eq!(verify(&path).unwrap(), meta(7));

        // Sealed with a data key: the records are ciphertext, and read back with the key only.
        let key = crate::manager::datakey::DataKey::generate();
        let sealed = dir.path().join("sealed.snap");
        write(&sealed, &meta(7), 3, objects(3).into_iter(), &AtRest::sealed_with(Some(key.clone()))).unwrap();
        let bytes = std::fs::read(&sealed).unwrap();
        assert!(!bytes.windows(5).any(|w| w == b"svc-1"), "no object name in clear");
        let mut got = vec![];
        read(&sealed, &AtRest::sealed_with(Some(key)), |o| got.push(o)).unwrap();
        assert_eq!(got.len(), 3);
        let err = read(&sealed, &AtRest::default(), |_| {}).unwrap_err().to_string();
        assert!(err.contains("object 1") && err.contains("no data key"), "{err}");
    }

    /// Snapshots written by older releases (format 1: one JSON object per line) are still read.
    #[test]
    fn a_format_1_file_of_json_lines_is_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.snap");
        let mut body = serde_json::to_vec(&Header { format: 1, meta: meta(7), objects: 3 }).unwrap();
        body.push(b'\n');
        for o in objects(3) {
            body.extend(serde_json::to_vec(&o).unwrap());
            body.push(b'\n');
        }
        let sha256 = hex::encode(Sha256::digest(&body));
        let mut file = body;
        file.extend(serde_json::to_vec(&Trailer { end: 3, sha256 }).unwrap());
        file.push(b'\n');
        std::fs::write(&path, &file).unwrap();
        let mut got = vec![];
        assert_eq!(read(&path, &AtRest::default(), |o| got.push(o)).unwrap(), meta(7));
        assert_eq!(serde_json::to_string(&got).unwrap(), serde_json::to_string(&objects(3)).unwrap());
        let bad = replaced(&file, b"\"kind\":\"service\"", b"\"kind\":\"nothing\"");
        std::fs::write(&path, &bad).unwrap();
        let err = read(&path, &AtRest::default(), |_| {}).unwrap_err().to_string();
        assert!(err.contains("corrupt at object 1"), "{err}");
    }

    #[test]
    fn damaged_files_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let good = std::fs::read(written(dir.path(), 20)).unwrap();
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("cut mid-object", good[..good.len() / 2].to_vec(), "truncated"),
            ("cut before the trailer", good[..record_span(&good, 19).end].to_vec(), "truncated"),
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
            ("a changed byte inside an object", replaced(&good, b"svc-13", b"svc-99"), "checksum"),
            (
                "a record that is not an object",
                {
                    let mut b = good.clone();
                    b[record_span(&good, 3)].fill(0xff);
                    b
                },
                "object 4",
            ),
            (
                "a record longer than any object",
                {
                    let mut b = good.clone();
                    let at = record_span(&good, 2).start - 4;
                    b[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
                    b
                },
                "object 3: a record of 4294967295 bytes",
            ),
            ("trailing data", [good.clone(), b"{}\n".to_vec()].concat(), "after the end"),
        ];
        for (what, bytes, says) in cases {
            let path = dir.path().join("bad.snap");
            std::fs::write(&path, &bytes).unwrap();
            let err = read(&path, &AtRest::default(), |_| {}).expect_err(what).to_string();
            if says != "object 4" {
                // Only decoding the objects tells a well-formed record from an object.
                let quick = verify(&path).expect_err(what).to_string();
                assert!(quick.contains(says), "{what}: verify says {says:?}: {quick}");
            }
            assert!(err.contains(&path.display().to_string()), "{what}: the error names the file: {err}");
            assert!(err.contains(says), "{what}: the error says {says:?}: {err}");
        }
    }
}
