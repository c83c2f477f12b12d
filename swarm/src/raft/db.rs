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
    /// Any other I/O or database error.
    #[error("{path}: {reason}")]
    Io { path: PathBuf, reason: String },
}

pub(crate) fn open(path: &Path) -> Result<redb::Database, DbError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| DbError::Io { path: dir.to_path_buf(), reason: e.to_string() })?;
    }
    let corrupt = |reason: String| DbError::Corrupt {
        path: path.to_path_buf(),
        dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
        reason,
    };
    // An existing file too short to hold a redb header is a truncated one; redb would treat it as new.
    if let Ok(md) = std::fs::metadata(path) {
        if md.len() > 0 && md.len() < 512 {
            return Err(corrupt(format!("only {} bytes long", md.len())));
        }
    }
    match redb::Database::create(path) {
        Ok(db) => Ok(db),
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => Err(DbError::InUse { path: path.to_path_buf() }),
        Err(redb::DatabaseError::Storage(redb::StorageError::Corrupted(reason))) => Err(corrupt(reason)),
        Err(redb::DatabaseError::Storage(redb::StorageError::Io(e)))
            if matches!(e.kind(), std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData) =>
        {
            Err(corrupt(e.to_string()))
        }
        Err(e) => Err(DbError::Io { path: path.to_path_buf(), reason: e.to_string() }),
    }
}
