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
    /// The newest entries as they were appended, so the state machine applying them (moments later) need not
    /// read them back, open and decode them: that was a few percent of a busy manager's CPU.
    recent: Arc<std::sync::Mutex<Recent>>,
}

/// A suffix of the log (the newest entries, contiguous) kept in memory, at most [`RECENT_BYTES`] of them counted
/// in their encoded size.
#[derive(Default)]
struct Recent {
    entries: std::collections::VecDeque<(Entry<TypeConfig>, usize)>,
    bytes: usize,
}

/// The state machine reads each entry as soon as it is committed (one or two at a time on a busy manager), so a
/// few entries' worth is enough; a read from further back goes to the file.
const RECENT_BYTES: usize = 2 << 20;

impl Recent {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.log_id.index)
    }

    fn push(&mut self, e: Entry<TypeConfig>, size: usize) {
        // Only a contiguous suffix answers a read; anything else (never expected) starts it over.
        if self.entries.back().is_some_and(|(last, _)| last.log_id.index + 1 != e.log_id.index) {
            self.clear();
        }
        self.bytes += size;
        self.entries.push_back((e, size));
        while self.bytes > RECENT_BYTES && self.entries.len() > 1 {
            let (_, n) = self.entries.pop_front().expect("not empty");
            self.bytes -= n;
        }
    }

    /// Forgets the entries up to `index` included (a purge).
    fn purge(&mut self, index: u64) {
        while self.entries.front().is_some_and(|(e, _)| e.log_id.index <= index) {
            let (_, n) = self.entries.pop_front().expect("not empty");
            self.bytes -= n;
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// The entries in `[start, end)`, when they are all here: the suffix reaches the log's end, so a range that
    /// starts inside it is whole.
    fn range(&self, start: u64, end: u64) -> Option<Vec<Entry<TypeConfig>>> {
        let first = self.first_index()?;
        if start < first {
            return None;
        }
        let skip = usize::try_from(start - first).ok()?;
        Some(self.entries.iter().skip(skip).take_while(|(e, _)| e.log_id.index < end).map(|(e, _)| e.clone()).collect())
    }
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
        Ok(RedbLogStore { db: SharedDb::new(db), written: Arc::default(), at_rest, recent: Arc::default() })
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
        let mut written = Vec::new();
        {
            let mut t = tx.open_table(LOG).map_err(write_err)?;
            for e in entries {
                let bytes = self.at_rest.encode(&e);
                self.written.entries.fetch_add(1, Ordering::Relaxed);
                self.written.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                t.insert(e.log_id.index, bytes.as_slice()).map_err(write_err)?;
                written.push((e, bytes.len()));
            }
        }
        tx.commit().map_err(write_err)?;
        // Kept once durable, as openraft will read nothing it was not told is flushed.
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        for (e, size) in written {
            recent.push(e, size);
        }
        Ok(())
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
        use std::ops::Bound;
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => e.saturating_add(1),
            Bound::Excluded(&e) => e,
            Bound::Unbounded => u64::MAX,
        };
        if let Some(hit) = self.recent.lock().unwrap_or_else(|e| e.into_inner()).range(start, end) {
            return Ok(hit);
        }
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
        // Forgotten whole, not just from `log_id` on: should the truncate fail, what is left must still be the
        // log's newest entries (truncates are rare: a follower's conflicting entries).
        self.recent.lock().unwrap_or_else(|e| e.into_inner()).clear();
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
        self.recent.lock().unwrap_or_else(|e| e.into_inner()).purge(log_id.index);
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

    /// The newest entries are read back from memory; whatever is asked, the answer is the log's, across purges
    /// and truncates.
    #[tokio::test]
    async fn the_newest_entries_are_read_from_memory_and_agree_with_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = RedbLogStore::open(&dir.path().join("log.redb")).unwrap();
        let read = |log: &RedbLogStore, r: std::ops::Range<u64>| {
            let mut log = log.clone();
            async move {
                let got = log.try_get_log_entries(r).await.unwrap();
                got.iter().map(|e| (e.log_id.leader_id.term, e.log_id.index)).collect::<Vec<_>>()
            }
        };
        let cached = |log: &RedbLogStore| log.recent.lock().unwrap().entries.len();
        log.write_entries((1..=10).map(entry)).unwrap();
        assert_eq!(cached(&log), 10);
        assert_eq!(read(&log, 3..8).await, (3..8).map(|i| (1, i)).collect::<Vec<_>>());
        assert_eq!(read(&log, 9..100).await, [(1, 9), (1, 10)]);
        assert_eq!(read(&log, 11..20).await, []);

        log.purge(LogId::new(CommittedLeaderId::new(1, 1), 4)).await.unwrap();
        assert_eq!(log.recent.lock().unwrap().first_index(), Some(5));
        assert_eq!(read(&log, 0..100).await, (5..=10).map(|i| (1, i)).collect::<Vec<_>>());

        // A follower's conflicting entries are cut and replaced by the new leader's.
        log.truncate(LogId::new(CommittedLeaderId::new(1, 1), 8)).await.unwrap();
        assert_eq!(cached(&log), 0, "a truncate forgets what memory held");
        assert_eq!(read(&log, 5..100).await, [(1, 5), (1, 6), (1, 7)], "from the file");
        let newer = |i| Entry { log_id: LogId::new(CommittedLeaderId::new(2, 1), i), ..entry(i) };
        log.write_entries((8..=9).map(newer)).unwrap();
        assert_eq!(read(&log, 8..100).await, [(2, 8), (2, 9)], "from memory");
        assert_eq!(read(&log, 5..100).await, [(1, 5), (1, 6), (1, 7), (2, 8), (2, 9)], "from the file");

        // Only a contiguous suffix is kept, and within its byte budget.
        let mut r = Recent::default();
        r.push(entry(1), 10);
        r.push(entry(2), 10);
        r.push(entry(5), 10);
        assert_eq!((r.first_index(), r.entries.len()), (Some(5), 1), "a gap starts it over");
        r.push(entry(6), RECENT_BYTES);
        assert_eq!((r.first_index(), r.bytes), (Some(6), RECENT_BYTES), "the oldest go past the budget");
        assert_eq!(r.range(5, 7), None, "a range starting before the suffix is the file's to answer");
    }
}
