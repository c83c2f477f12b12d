//! The Raft log, the vote and the committed index, in a redb file (`log.redb`).
//!
//! Appends are durable before openraft is told they are flushed. Entries are kept until a snapshot covers them
//! and openraft purges them (keeping `log_entries_for_slow_followers` behind the snapshot). Every commit (append,
//! vote, committed index, truncate, purge) runs on tokio's blocking pool, so a slow fsync never stalls the
//! runtime's workers (heartbeats, elections).

use super::codec::{decode, encode, AtRest};
use super::db::{open, open_backend, DbError, SharedDb};
use super::{NodeId, TypeConfig};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_PURGED: &str = "last_purged";

/// The redb-backed Raft log. Cloning shares the file.
#[derive(Clone)]
pub struct RedbLogStore {
    db: SharedDb,
    written: Arc<Written>,
    /// Entries are sealed with the data key at rest (the vote and log ids are not: they say nothing of the
    /// cluster's objects).
    at_rest: AtRest,
}

/// What this process appended to the log: entries and their encoded bytes (what a benchmark reports).
#[derive(Debug, Default)]
struct Written {
    entries: AtomicU64,
    bytes: AtomicU64,
}

type StResult<T> = Result<T, StorageError<NodeId>>;

fn io_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_logs(&e).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_logs(&e).into()
}

/// Runs a commit on tokio's blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> StResult<T> + Send + 'static) -> StResult<T> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| Err(write_err(e)))
}

impl RedbLogStore {
    /// Opens (or creates) the log at `path`, checking that every stored entry and record can be read.
    pub fn open(path: &Path) -> Result<Self, DbError> {
        Self::open_with(path, AtRest::default())
    }

    /// Opens the log whose entries are kept as `at_rest` says.
    pub fn open_with(path: &Path, at_rest: AtRest) -> Result<Self, DbError> {
        Self::checked(path, open(path)?, at_rest)
    }

    /// The log on another storage than a file (crash tests); `name` stands for its path in errors.
    pub fn open_backend(name: &Path, backend: impl redb::StorageBackend) -> Result<Self, DbError> {
        Self::checked(name, open_backend(name, backend)?, AtRest::default())
    }

    fn checked(path: &Path, db: redb::Database, at_rest: AtRest) -> Result<Self, DbError> {
        let fmt = |reason: String| DbError::Corrupt {
            path: path.to_path_buf(),
            dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
            reason,
        };
        {
            let tx = db.begin_write().map_err(|e| fmt(e.to_string()))?;
            tx.open_table(LOG).map_err(|e| fmt(e.to_string()))?;
            tx.open_table(META).map_err(|e| fmt(e.to_string()))?;
            tx.commit().map_err(|e| fmt(e.to_string()))?;
        }
        // Decode the records now so that a damaged file is reported at start, naming the file.
        {
            let tx = db.begin_read().map_err(|e| fmt(e.to_string()))?;
            let meta = tx.open_table(META).map_err(|e| fmt(e.to_string()))?;
            for key in [KEY_VOTE, KEY_COMMITTED, KEY_PURGED] {
                if let Some(v) = meta.get(key).map_err(|e| fmt(e.to_string()))? {
                    if key == KEY_VOTE {
                        decode::<Vote<NodeId>>(v.value())
                            .map_err(|source| DbError::Format { path: path.to_path_buf(), source })?;
                    } else {
                        decode::<LogId<NodeId>>(v.value())
                            .map_err(|source| DbError::Format { path: path.to_path_buf(), source })?;
                    }
                }
            }
            let log = tx.open_table(LOG).map_err(|e| fmt(e.to_string()))?;
            for item in log.iter().map_err(|e| fmt(e.to_string()))? {
                let (_, v) = item.map_err(|e| fmt(e.to_string()))?;
                at_rest
                    .decode::<Entry<TypeConfig>>(v.value())
                    .map_err(|source| DbError::Format { path: path.to_path_buf(), source })?;
            }
        }
        Ok(RedbLogStore { db: SharedDb::new(db), written: Arc::default(), at_rest })
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> StResult<Option<T>> {
        let db = self.db.get().map_err(io_err)?;
        let tx = db.begin_read().map_err(io_err)?;
        let t = tx.open_table(META).map_err(io_err)?;
        match t.get(key).map_err(io_err)? {
            Some(v) => Ok(Some(decode(v.value()).map_err(io_err)?)),
            None => Ok(None),
        }
    }

    /// Stores one record durably (off the runtime's workers).
    async fn put_meta<T: serde::Serialize>(&self, key: &'static str, value: &T) -> StResult<()> {
        let db = self.db.get().map_err(write_err)?;
        let value = encode(value);
        blocking(move || {
            let tx = db.begin_write().map_err(write_err)?;
            {
                let mut t = tx.open_table(META).map_err(write_err)?;
                t.insert(key, value.as_slice()).map_err(write_err)?;
            }
            tx.commit().map_err(write_err)
        })
        .await
    }

    /// Stores entries durably: the commit is synced (redb's default durability) before it returns, because
    /// openraft counts an entry towards a quorum as soon as `append` reports it flushed.
    fn write_entries(&self, entries: impl IntoIterator<Item = Entry<TypeConfig>>) -> StResult<()> {
        let db = self.db.get().map_err(write_err)?;
        let tx = db.begin_write().map_err(write_err)?;
        {
            let mut t = tx.open_table(LOG).map_err(write_err)?;
            for e in entries {
                let bytes = self.at_rest.encode(&e);
                self.written.entries.fetch_add(1, Ordering::Relaxed);
                self.written.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                t.insert(e.log_id.index, bytes.as_slice()).map_err(write_err)?;
            }
        }
        tx.commit().map_err(write_err)
    }

    /// Entries and bytes appended since the log was opened.
    pub fn written(&self) -> (u64, u64) {
        (self.written.entries.load(Ordering::Relaxed), self.written.bytes.load(Ordering::Relaxed))
    }

    /// Closes the file once operations in flight end; later operations fail (see [`SharedDb::close`]).
    pub async fn close(&self) {
        self.db.close().await
    }

    /// Number of entries currently stored (for tests and `info`).
    pub fn len(&self) -> Result<u64, StorageError<NodeId>> {
        let db = self.db.get().map_err(io_err)?;
        let tx = db.begin_read().map_err(io_err)?;
        let t = tx.open_table(LOG).map_err(io_err)?;
        t.len().map_err(io_err)
    }

    pub fn is_empty(&self) -> Result<bool, StorageError<NodeId>> {
        Ok(self.len()? == 0)
    }
}

impl RaftLogReader<TypeConfig> for RedbLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StResult<Vec<Entry<TypeConfig>>> {
        let db = self.db.get().map_err(io_err)?;
        let tx = db.begin_read().map_err(io_err)?;
        let t = tx.open_table(LOG).map_err(io_err)?;
        let mut out = Vec::new();
        for item in t.range(range).map_err(io_err)? {
            let (_, v) = item.map_err(io_err)?;
            out.push(self.at_rest.decode(v.value()).map_err(io_err)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for RedbLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StResult<LogState<TypeConfig>> {
        let last_purged: Option<LogId<NodeId>> = self.get_meta(KEY_PURGED)?;
        let db = self.db.get().map_err(io_err)?;
        let tx = db.begin_read().map_err(io_err)?;
        let t = tx.open_table(LOG).map_err(io_err)?;
        let last = match t.last().map_err(io_err)? {
            Some((_, v)) => Some(self.at_rest.decode::<Entry<TypeConfig>>(v.value()).map_err(io_err)?.log_id),
            None => last_purged,
        };
        Ok(LogState { last_purged_log_id: last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StResult<()> {
        self.put_meta(KEY_VOTE, vote)
            .await
            .map_err(|e| StorageIOError::write_vote(&std::io::Error::other(e.to_string())).into())
    }

    async fn read_vote(&mut self) -> StResult<Option<Vote<NodeId>>> {
        self.get_meta(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StResult<()> {
        match committed {
            Some(c) => self.put_meta(KEY_COMMITTED, &c).await,
            None => Ok(()),
        }
    }

    async fn read_committed(&mut self) -> StResult<Option<LogId<NodeId>>> {
        self.get_meta(KEY_COMMITTED)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        let this = self.clone();
        match blocking(move || this.write_entries(entries)).await {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StResult<()> {
        let db = self.db.get().map_err(write_err)?;
        blocking(move || {
            let tx = db.begin_write().map_err(write_err)?;
            {
                let mut t = tx.open_table(LOG).map_err(write_err)?;
                t.retain_in(log_id.index.., |_, _| false).map_err(write_err)?;
            }
            tx.commit().map_err(write_err)
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StResult<()> {
        let db = self.db.get().map_err(write_err)?;
        blocking(move || {
            let tx = db.begin_write().map_err(write_err)?;
            {
                let mut meta = tx.open_table(META).map_err(write_err)?;
                meta.insert(KEY_PURGED, encode(&log_id).as_slice()).map_err(write_err)?;
                let mut t = tx.open_table(LOG).map_err(write_err)?;
                t.retain_in(..=log_id.index, |_, _| false).map_err(write_err)?;
            }
            tx.commit().map_err(write_err)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::store::Proposal;
    use crate::testing::CrashableStorage;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Proposal { ops: vec![], timestamp: Default::default() }),
        }
    }

    /// The contract `append` relies on: once `write_entries` returns, a power cut loses none of the entries.
    #[tokio::test]
    async fn appended_entries_survive_a_power_cut() {
        let disk = CrashableStorage::new();
        let name = Path::new("log.redb");
        let log = RedbLogStore::open_backend(name, disk.clone()).unwrap();
        for batch in 0..5u64 {
            log.write_entries((batch * 10 + 1..=batch * 10 + 10).map(entry)).unwrap();
        }
        // The power goes while the store is open: a clean close would sync whatever was left unsynced.
        let mut log = RedbLogStore::open_backend(name, disk.after_power_cut()).unwrap();
        let got: Vec<u64> = log.try_get_log_entries(..).await.unwrap().iter().map(|e| e.log_id.index).collect();
        assert_eq!(got, (1..=50).collect::<Vec<_>>(), "entries lost by a crash after they were reported stored");
    }
}
