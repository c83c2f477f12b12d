//! Opening redb files with errors that name the file and say what to do.

use std::path::{Path, PathBuf};

/// A Raft data file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Another process (another shoald on the same data root) has the file open.
    #[error("{path} is in use by another process: is another shoald running with the same --data-root?")]
    InUse { path: PathBuf },
    /// The file is damaged (truncated, overwritten, or not a redb file at all).
    #[error("{path} is corrupt or truncated ({reason}); restore it from a backup, or delete this node's swarm state (the directory holding {dir}) to leave the swarm and start afresh")]
    Corrupt { path: PathBuf, dir: PathBuf, reason: String },
    /// The file was written in a format this release cannot read.
    #[error("{path}: {source}")]
    Format { path: PathBuf, source: super::codec::CodecError },
    /// The current snapshot file named by `state.redb` is missing or damaged.
    #[error(transparent)]
    Snapshot(#[from] super::state_machine::SnapshotFileError),
    /// Any other I/O or database error.
    #[error("{path}: {reason}")]
    Io { path: PathBuf, reason: String },
}

pub(crate) fn open(path: &Path) -> Result<redb::Database, DbError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| DbError::Io { path: dir.to_path_buf(), reason: e.to_string() })?;
    }
    // An existing file too short to hold a redb header is a truncated one; redb would treat it as new.
    if let Ok(md) = std::fs::metadata(path) {
        if md.len() > 0 && md.len() < 512 {
            return Err(corrupt(path, format!("only {} bytes long", md.len())));
        }
    }
    opened(path, redb::Builder::new().set_cache_size(CACHE_BYTES).create(path))
}

/// redb's page cache per file (its write buffer is held to half of it). Its default, 1 GiB, fills to the file's
/// size (the log grows past a GiB at a million tasks). The manager reads the log only at start and for followers
/// catching up (recent log entries, still in the OS page cache), and `state.redb` holds only the snapshot's
/// record: every other read is served from the in-memory store. 16 MiB is enough, and at a million tasks 64 MiB
/// per file was about 100 MiB of the manager's peak.
const CACHE_BYTES: usize = 16 << 20;

/// Opens a database on another storage than a file (tests simulate crashes this way); `path` names it in errors.
pub(crate) fn open_backend(path: &Path, backend: impl redb::StorageBackend) -> Result<redb::Database, DbError> {
    opened(path, redb::Builder::new().set_cache_size(CACHE_BYTES).create_with_backend(backend))
}

fn corrupt(path: &Path, reason: String) -> DbError {
    DbError::Corrupt { path: path.to_path_buf(), dir: path.parent().map(Path::to_path_buf).unwrap_or_default(), reason }
}

fn opened(path: &Path, r: Result<redb::Database, redb::DatabaseError>) -> Result<redb::Database, DbError> {
    match r {
        Ok(db) => Ok(db),
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => Err(DbError::InUse { path: path.to_path_buf() }),
        Err(redb::DatabaseError::Storage(redb::StorageError::Corrupted(reason))) => Err(corrupt(path, reason)),
        Err(redb::DatabaseError::Storage(redb::StorageError::Io(e)))
            if matches!(e.kind(), std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData) =>
        {
            Err(corrupt(path, e.to_string()))
        }
        Err(e) => Err(DbError::Io { path: path.to_path_buf(), reason: e.to_string() }),
    }
}

/// The store was closed by [`SharedDb::close`] (the member shut down); late calls from openraft's tasks get this.
#[derive(Debug, thiserror::Error)]
#[error("the raft store is closed (the manager is shutting down)")]
pub struct Closed;

/// A redb database shared by the clones of a store, closed at a known moment: openraft keeps clones in tasks it
/// drops on its own schedule, and the file lock must be released when shutdown returns, so that the same process
/// can open the files again (a node restarted in place, `swarm leave` then `swarm init`).
#[derive(Clone)]
pub(crate) struct SharedDb {
    inner: std::sync::Arc<std::sync::Mutex<Option<std::sync::Arc<redb::Database>>>>,
}

impl SharedDb {
    pub(crate) fn new(db: redb::Database) -> Self {
        SharedDb { inner: std::sync::Arc::new(std::sync::Mutex::new(Some(std::sync::Arc::new(db)))) }
    }

    /// The database, for the length of one operation. Hold it until the transaction ends.
    pub(crate) fn get(&self) -> Result<std::sync::Arc<redb::Database>, Closed> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone().ok_or(Closed)
    }

    /// Refuses new operations, waits for those in flight, and closes the file.
    pub(crate) async fn close(&self) {
        let Some(mut db) = self.inner.lock().unwrap_or_else(|e| e.into_inner()).take() else { return };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match std::sync::Arc::try_unwrap(db) {
                Ok(db) => return drop(db),
                Err(held) if std::time::Instant::now() < deadline => {
                    db = held;
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                Err(_) => {
                    tracing::warn!("a raft store operation did not finish within 10 s of shutdown; file left open");
                    return;
                }
            }
        }
    }
}
