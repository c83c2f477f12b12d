//! The Raft state machine: applies committed proposals to the in-memory view ([`SharedView`]). What survives a
//! restart is the current snapshot, a file in `snapshots/` (see [`snapshot_file`]), plus the Raft log after it:
//! at start the view is loaded from the snapshot and openraft applies the committed entries after it again, as
//! SwarmKit's managers do. `state.redb` records which snapshot file is current, and its metadata.
//!
//! Applying writes nothing to disk: the log already holds every entry durably, and until a snapshot at or after
//! an entry is recorded openraft keeps it. At a million tasks, writing every applied object to a second store as
//! well (as releases before this one did, in `state.redb`) cost a sixth of the manager's CPU.
//!
//! Every redb commit and file write runs on tokio's blocking pool, so a slow fsync never stalls the runtime
//! (heartbeats, elections). A snapshot is built from a copy of the view taken under the apply lock; encoding
//! it runs outside the lock, so applying goes on meanwhile.
//!
//! Installing a snapshot renames its file into place, then records it in `state.redb` in one durable
//! transaction; building or installing a snapshot removes the older files once the new one is recorded. A build
//! that finishes after a newer snapshot was installed is discarded. A damaged snapshot file is refused naming it,
//! whether received or found at start; it never replaces state.

mod snapshot_file;
#[cfg(test)]
mod tests;

pub use snapshot_file::SnapshotFileError;

use super::codec::{decode, encode, AtRest};
use super::db::{open, open_backend, DbError, SharedDb};
use super::{NodeId, TypeConfig};
use crate::api::Object;
use crate::manager::store::{MemoryStore, ProposalResult, SharedView};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use redb::{Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::Deserialize;
use std::collections::HashMap;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// Releases before this one kept every applied object here, and the last applied log id and membership in
/// [`META`]; such a state is made a snapshot when opened, and both tables left empty.
const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");
const KEY_APPLIED: &str = "last_applied";
const KEY_MEMBERSHIP: &str = "membership";
const KEY_SNAP_META: &str = "meta";
/// The name of the current snapshot's file in the snapshot directory.
const KEY_SNAP_FILE: &str = "file";
/// Before snapshot files, the snapshot's bytes were kept here; such a file is migrated when opened.
const KEY_SNAP_DATA: &str = "data";

/// The directory, next to `state.redb`, that holds the snapshot files.
const SNAPSHOT_DIR: &str = "snapshots";

type Membership = StoredMembership<NodeId, BasicNode>;
type Meta = SnapshotMeta<NodeId, BasicNode>;
type StResult<T> = Result<T, StorageError<NodeId>>;

/// The snapshot content format kept in `state.redb` before snapshot files (read only, to migrate).
#[derive(Deserialize)]
struct LegacySnapshotDoc {
    objects: Vec<Object>,
}

struct Applied {
    last_applied: Option<LogId<NodeId>>,
    membership: Membership,
    snapshot_seq: u64,
}

/// The snapshot files and the locks around them.
struct Snapshots {
    dir: PathBuf,
    /// Held while a snapshot file is put in place and recorded in `state.redb`, so a build and an install never
    /// interleave those steps (nor remove each other's file).
    publish: std::sync::Mutex<()>,
    /// Files made by `begin_receiving_snapshot`, by (device, inode): `install_snapshot` is handed the open file
    /// and renames it into place rather than copying it.
    receiving: std::sync::Mutex<HashMap<(u64, u64), PathBuf>>,
    hooks: std::sync::Mutex<Hooks>,
}

/// Points where tests stop or observe the state machine (set only through the `testing` feature's methods).
#[derive(Default)]
struct Hooks {
    build_pause: Option<(tokio::sync::oneshot::Sender<()>, tokio::sync::oneshot::Receiver<()>)>,
    install_step: Option<Arc<dyn Fn(&'static str) + Send + Sync>>,
}

/// A snapshot build stopped by [`RedbStateMachine::pause_next_snapshot_build`].
#[cfg(any(test, feature = "testing"))]
pub struct BuildPause {
    /// Resolves once the build has taken its copy of the state (and holds no lock).
    pub reached: tokio::sync::oneshot::Receiver<()>,
    /// Send (or drop) to let the build encode and store the snapshot.
    pub release: tokio::sync::oneshot::Sender<()>,
}

/// The redb-backed state machine. Cloning shares everything (openraft takes a clone as the snapshot builder).
#[derive(Clone)]
pub struct RedbStateMachine {
    db: SharedDb,
    view: Arc<SharedView>,
    /// Held while applying and while copying the view for a snapshot, so a snapshot's objects match its
    /// `last_applied`.
    applied: Arc<tokio::sync::Mutex<Applied>>,
    snapshots: Arc<Snapshots>,
    /// Objects (in `state.redb` and in snapshot files) are sealed with the data key at rest.
    at_rest: AtRest,
}

fn rerr(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_state_machine(&e).into()
}

fn werr(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(&e).into()
}

/// Runs blocking work (redb commits, fsync, file I/O) on tokio's blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> StResult<T> + Send + 'static) -> StResult<T> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| Err(werr(e)))
}

impl RedbStateMachine {
    /// Opens the state at `path` and loads every object into a fresh view. Snapshot files are kept in
    /// `snapshots/` next to it.
    pub fn open(path: &Path) -> Result<Self, DbError> {
        Self::open_with(path, AtRest::default())
    }

    /// Opens the state whose objects are kept as `at_rest` says.
    pub fn open_with(path: &Path, at_rest: AtRest) -> Result<Self, DbError> {
        Self::loaded(path, open(path)?, at_rest)
    }

    /// The state on another storage than a file (crash tests); `name` stands for its path in errors, and the
    /// snapshot files are kept in `snapshots/` in `name`'s directory.
    pub fn open_backend(name: &Path, backend: impl redb::StorageBackend) -> Result<Self, DbError> {
        Self::loaded(name, open_backend(name, backend)?, AtRest::default())
    }

    fn loaded(path: &Path, mut db: redb::Database, at_rest: AtRest) -> Result<Self, DbError> {
        let corrupt = |reason: String| DbError::Corrupt {
            path: path.to_path_buf(),
            dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
            reason,
        };
        {
            let tx = db.begin_write().map_err(|e| corrupt(e.to_string()))?;
            for t in [OBJECTS, META, SNAPSHOT] {
                tx.open_table(t).map_err(|e| corrupt(e.to_string()))?;
            }
            tx.commit().map_err(|e| corrupt(e.to_string()))?;
        }
        let dir = path.parent().unwrap_or(Path::new("")).join(SNAPSHOT_DIR);
        std::fs::create_dir_all(&dir).map_err(|e| DbError::Io { path: dir.clone(), reason: e.to_string() })?;
        let current = Self::migrate_legacy_snapshot(path, &db, &dir, &at_rest)?;

        let snapshot_at = current.as_ref().and_then(|(meta, _)| meta.last_log_id);
        let (objects, last_applied, membership, current) = match Self::read_records(path, &db, &at_rest)? {
            // An older release's objects are at or after its snapshot: they are the state, and become its snapshot.
            Some((objects, last_applied, membership)) if last_applied >= snapshot_at => {
                let made = match last_applied {
                    Some(l) => {
                        let meta = Meta {
                            last_log_id: Some(l),
                            last_membership: membership.clone(),
                            snapshot_id: format!("{}-{}-state", l.leader_id, l.index),
                        };
                        let name = snapshot_file::write_in_place(
                            &dir,
                            "migrate",
                            &meta,
                            objects.len() as u64,
                            objects.objects(),
                            &at_rest,
                        )?;
                        Some((meta, name))
                    }
                    None => None,
                };
                Self::retire_records(path, &db, made.as_ref())?;
                if let Some((meta, name)) = &made {
                    tracing::info!(snapshot.id = %meta.snapshot_id, objects = objects.len(), file = %name, "the objects an older release kept in state.redb are now a snapshot file");
                }
                let current = made.or(current);
                if let Err(e) = db.compact() {
                    tracing::warn!(file = %path.display(), error = %e, "cannot compact the state after moving its objects out");
                }
                (objects, last_applied, membership, current.map(|(_, name)| name))
            }
            records => {
                // Objects behind the snapshot (an older release never left such): the snapshot is the state.
                if records.is_some() {
                    Self::retire_records(path, &db, None)?;
                }
                match current {
                    None => (MemoryStore::new(), None, Membership::default(), None),
                    Some((meta, name)) => {
                        let file = dir.join(&name);
                        // Into the store as they are read: a list of them all first would hold the state twice.
                        let mut objects = MemoryStore::new();
                        snapshot_file::read(&file, &at_rest, |o| objects.put(o))
                            .and_then(|found| snapshot_file::check_meta(&file, &found, &meta))?;
                        (objects, meta.last_log_id, meta.last_membership, Some(name))
                    }
                }
            }
        };
        // Whatever the state does not name is a leftover of a crash or of an older snapshot.
        snapshot_file::remove_others(&dir, "", ".snap", current.as_deref());
        snapshot_file::remove_others(&dir, "", ".tmp", None);

        Ok(RedbStateMachine {
            db: SharedDb::new(db),
            view: SharedView::new(objects),
            applied: Arc::new(tokio::sync::Mutex::new(Applied { last_applied, membership, snapshot_seq: 0 })),
            snapshots: Arc::new(Snapshots {
                dir,
                publish: Default::default(),
                receiving: Default::default(),
                hooks: Default::default(),
            }),
            at_rest,
        })
    }

    /// The objects an older release kept in `state.redb`, with their last applied log id and membership; None
    /// when it holds none (this release keeps none there).
    #[allow(clippy::type_complexity)]
    fn read_records(
        path: &Path,
        db: &redb::Database,
        at_rest: &AtRest,
    ) -> Result<Option<(MemoryStore, Option<LogId<NodeId>>, Membership)>, DbError> {
        let corrupt = |e: &dyn std::fmt::Display| DbError::Corrupt {
            path: path.to_path_buf(),
            dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
            reason: e.to_string(),
        };
        let format = |source| DbError::Format { path: path.to_path_buf(), source };
        let tx = db.begin_read().map_err(|e| corrupt(&e))?;
        let t = tx.open_table(OBJECTS).map_err(|e| corrupt(&e))?;
        let m = tx.open_table(META).map_err(|e| corrupt(&e))?;
        let applied = m.get(KEY_APPLIED).map_err(|e| corrupt(&e))?;
        if applied.is_none() && t.is_empty().map_err(|e| corrupt(&e))? {
            return Ok(None);
        }
        let last_applied = match applied {
            Some(v) => decode::<Option<LogId<NodeId>>>(v.value()).map_err(format)?,
            None => None,
        };
        let membership = match m.get(KEY_MEMBERSHIP).map_err(|e| corrupt(&e))? {
            Some(v) => decode::<Membership>(v.value()).map_err(format)?,
            None => Membership::default(),
        };
        // Into the store as they are read. Releases that changed how records are keyed may have left an object
        // under two keys (a manager downgraded, then upgraded again): the newest version is kept.
        let mut objects = MemoryStore::new();
        for item in t.iter().map_err(|e| corrupt(&e))? {
            let (_, v) = item.map_err(|e| corrupt(&e))?;
            objects.put_newest(at_rest.decode::<Object>(v.value()).map_err(format)?);
        }
        Ok(Some((objects, last_applied, membership)))
    }

    /// Empties the older release's tables, recording `made` (a snapshot file already in place) as the current
    /// snapshot in the same durable transaction. A crash before it leaves the tables as they were, to do again.
    fn retire_records(path: &Path, db: &redb::Database, made: Option<&(Meta, String)>) -> Result<(), DbError> {
        let io = |e: &dyn std::fmt::Display| DbError::Io { path: path.to_path_buf(), reason: e.to_string() };
        let mut tx = db.begin_write().map_err(|e| io(&e))?;
        tx.set_durability(Durability::Immediate).map_err(|e| io(&e))?;
        {
            if let Some((meta, name)) = made {
                let mut t = tx.open_table(SNAPSHOT).map_err(|e| io(&e))?;
                t.insert(KEY_SNAP_META, encode(meta).as_slice()).map_err(|e| io(&e))?;
                t.insert(KEY_SNAP_FILE, encode(name).as_slice()).map_err(|e| io(&e))?;
            }
            tx.open_table(OBJECTS).map_err(|e| io(&e))?.retain(|_, _| false).map_err(|e| io(&e))?;
            let mut m = tx.open_table(META).map_err(|e| io(&e))?;
            m.remove(KEY_APPLIED).map_err(|e| io(&e))?;
            m.remove(KEY_MEMBERSHIP).map_err(|e| io(&e))?;
        }
        tx.commit().map_err(|e| io(&e))
    }

    /// The current snapshot's metadata and file name; a snapshot still kept inside `state.redb` (older releases)
    /// is first written out as a file.
    fn migrate_legacy_snapshot(
        path: &Path,
        db: &redb::Database,
        dir: &Path,
        at_rest: &AtRest,
    ) -> Result<Option<(Meta, String)>, DbError> {
        let io = |e: &dyn std::fmt::Display| DbError::Io { path: path.to_path_buf(), reason: e.to_string() };
        let format = |source| DbError::Format { path: path.to_path_buf(), source };
        let (meta, name, legacy) = {
            let tx = db.begin_read().map_err(|e| io(&e))?;
            let t = tx.open_table(SNAPSHOT).map_err(|e| io(&e))?;
            let meta = match t.get(KEY_SNAP_META).map_err(|e| io(&e))? {
                Some(v) => decode::<Meta>(v.value()).map_err(format)?,
                None => return Ok(None),
            };
            let name = match t.get(KEY_SNAP_FILE).map_err(|e| io(&e))? {
                Some(v) => Some(decode::<String>(v.value()).map_err(format)?),
                None => None,
            };
            let legacy = match t.get(KEY_SNAP_DATA).map_err(|e| io(&e))? {
                Some(v) => Some(decode::<LegacySnapshotDoc>(v.value()).map_err(format)?),
                None => None,
            };
            (meta, name, legacy)
        };
        let (Some(doc), None) = (legacy, &name) else { return Ok(name.map(|n| (meta, n))) };
        let name = snapshot_file::write_in_place(
            dir,
            "migrate",
            &meta,
            doc.objects.len() as u64,
            doc.objects.into_iter(),
            at_rest,
        )?;
        let mut tx = db.begin_write().map_err(|e| io(&e))?;
        tx.set_durability(Durability::Immediate).map_err(|e| io(&e))?;
        {
            let mut t = tx.open_table(SNAPSHOT).map_err(|e| io(&e))?;
            t.insert(KEY_SNAP_FILE, encode(&name).as_slice()).map_err(|e| io(&e))?;
            t.remove(KEY_SNAP_DATA).map_err(|e| io(&e))?;
        }
        tx.commit().map_err(|e| io(&e))?;
        tracing::info!(snapshot.id = %meta.snapshot_id, file = %name, "raft snapshot moved out of state.redb into a file");
        Ok(Some((meta, name)))
    }

    /// Closes the file once the operations in flight end; later operations fail (see
    /// [`SharedDb::close`]).
    pub async fn close(&self) {
        self.db.close().await
    }

    /// The view this state machine keeps current.
    pub fn view(&self) -> Arc<SharedView> {
        self.view.clone()
    }

    /// The directory holding the snapshot files.
    pub fn snapshot_dir(&self) -> &Path {
        &self.snapshots.dir
    }

    /// The stored snapshot's metadata, if any (for tests and `info`).
    pub fn snapshot_meta(&self) -> StResult<Option<Meta>> {
        Ok(self.stored_snapshot()?.map(|(meta, _)| meta))
    }

    /// The stored snapshot's metadata and file name.
    fn stored_snapshot(&self) -> StResult<Option<(Meta, String)>> {
        let db = self.db.get().map_err(rerr)?;
        let tx = db.begin_read().map_err(rerr)?;
        let t = tx.open_table(SNAPSHOT).map_err(rerr)?;
        let meta = match t.get(KEY_SNAP_META).map_err(rerr)? {
            Some(v) => decode::<Meta>(v.value()).map_err(rerr)?,
            None => return Ok(None),
        };
        match t.get(KEY_SNAP_FILE).map_err(rerr)? {
            Some(v) => Ok(Some((meta, decode(v.value()).map_err(rerr)?))),
            None => Ok(None),
        }
    }

    fn hooks(&self) -> std::sync::MutexGuard<'_, Hooks> {
        self.snapshots.hooks.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn install_step(&self, step: &'static str) {
        let hook = self.hooks().install_step.clone();
        if let Some(hook) = hook {
            hook(step);
        }
    }

    /// Test hook: the next snapshot build stops once it has copied the state, until released.
    #[cfg(any(test, feature = "testing"))]
    pub fn pause_next_snapshot_build(&self) -> BuildPause {
        let (reached_tx, reached) = tokio::sync::oneshot::channel();
        let (release, release_rx) = tokio::sync::oneshot::channel();
        self.hooks().build_pause = Some((reached_tx, release_rx));
        BuildPause { reached, release }
    }

    /// Test hook: `f` is called after each step of installing a snapshot: "file-in-place" (the file renamed
    /// into the snapshot directory), "committed" (`state.redb` holds the new state), "old-files-removed".
    #[cfg(any(test, feature = "testing"))]
    pub fn on_install_step(&self, f: impl Fn(&'static str) + Send + Sync + 'static) {
        self.hooks().install_step = Some(Arc::new(f));
    }

    /// Encodes a built snapshot to a file and makes it the current one, unless a snapshot at or after its log
    /// id was stored meanwhile (then the file is dropped and None returned). Blocking.
    fn store_built(&self, meta: &Meta, objects: MemoryStore) -> StResult<Option<PathBuf>> {
        let pause = self.hooks().build_pause.take();
        if let Some((reached, release)) = pause {
            let _ = reached.send(());
            let _ = release.blocking_recv();
        }
        let sig = Some(meta.signature());
        let serr = |e: &dyn std::error::Error| -> StorageError<NodeId> {
            StorageIOError::write_snapshot(sig.clone(), &std::io::Error::other(e.to_string())).into()
        };
        let dir = &self.snapshots.dir;
        let tmp = dir.join(snapshot_file::unique_name("build", ".tmp"));
        if let Err(e) = snapshot_file::write(&tmp, meta, objects.len() as u64, objects.objects(), &self.at_rest) {
            let _ = std::fs::remove_file(&tmp);
            return Err(serr(&e));
        }

        let _publishing = self.snapshots.publish.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((current, _)) = self.stored_snapshot()? {
            if current.last_log_id >= meta.last_log_id {
                let _ = std::fs::remove_file(&tmp);
                return Ok(None);
            }
        }
        let name = snapshot_file::snap_name(meta);
        let path = snapshot_file::put_in_place(&tmp, dir, &name).map_err(|e| serr(&e))?;
        let db = self.db.get().map_err(|e| serr(&e))?;
        // Durable: the log is purged behind the snapshot once it is recorded.
        let mut tx = db.begin_write().map_err(|e| serr(&e))?;
        tx.set_durability(Durability::Immediate).map_err(|e| serr(&e))?;
        {
            let mut t = tx.open_table(SNAPSHOT).map_err(|e| serr(&e))?;
            t.insert(KEY_SNAP_META, encode(meta).as_slice()).map_err(|e| serr(&e))?;
            t.insert(KEY_SNAP_FILE, encode(&name).as_slice()).map_err(|e| serr(&e))?;
        }
        tx.commit().map_err(|e| serr(&e))?;
        snapshot_file::remove_others(dir, "", ".snap", Some(&name));
        Ok(Some(path))
    }

    /// Takes the file handed to `install_snapshot` into the snapshot directory (renaming the one
    /// `begin_receiving_snapshot` made; copying any other) and reads it whole. Blocking; changes no state.
    fn receive_file(&self, mut file: std::fs::File, meta: &Meta) -> StResult<(PathBuf, MemoryStore)> {
        let sig = Some(meta.signature());
        let ioerr = |path: &Path, e: std::io::Error| -> StorageError<NodeId> {
            StorageIOError::read_snapshot(sig.clone(), &SnapshotFileError::Io { path: path.to_path_buf(), source: e })
                .into()
        };
        let dir = &self.snapshots.dir;
        let md = file.metadata().map_err(|e| ioerr(dir, e))?;
        let pending = self.snapshots.receiving.lock().unwrap_or_else(|e| e.into_inner()).remove(&(md.dev(), md.ino()));
        let path = match pending.filter(|p| p.exists()) {
            Some(path) => {
                file.sync_all().map_err(|e| ioerr(&path, e))?;
                path
            }
            None => {
                let path = dir.join(snapshot_file::unique_name("recv", ".tmp"));
                let copied = (|| {
                    let mut out = std::fs::OpenOptions::new().write(true).create_new(true).open(&path)?;
                    file.seek(SeekFrom::Start(0))?;
                    std::io::copy(&mut file, &mut out)?;
                    out.sync_all()
                })();
                copied.map_err(|e| ioerr(&path, e))?;
                path
            }
        };
        // Into the store as they are read: a list of them all first would hold the state twice.
        let mut store = MemoryStore::new();
        let read = snapshot_file::read(&path, &self.at_rest, |o| store.put(o))
            .and_then(|found| snapshot_file::check_meta(&path, &found, meta));
        // A rejected file is left for inspection; the next `begin_receiving_snapshot` removes it.
        read.map_err(|e| StorageIOError::read_snapshot(sig.clone(), &e))?;
        Ok((path, store))
    }

    /// Puts a received snapshot file in place and records it as the current one, in one durable transaction.
    /// Blocking; the caller holds the apply lock.
    fn commit_installed(&self, meta: &Meta, tmp: &Path) -> StResult<()> {
        let sig = Some(meta.signature());
        let serr = |e: &dyn std::error::Error| -> StorageError<NodeId> {
            StorageIOError::write_snapshot(sig.clone(), &std::io::Error::other(e.to_string())).into()
        };
        let dir = &self.snapshots.dir;
        let _publishing = self.snapshots.publish.lock().unwrap_or_else(|e| e.into_inner());
        let name = snapshot_file::snap_name(meta);
        snapshot_file::put_in_place(tmp, dir, &name).map_err(|e| serr(&e))?;
        self.install_step("file-in-place");
        let db = self.db.get().map_err(|e| serr(&e))?;
        let mut tx = db.begin_write().map_err(|e| serr(&e))?;
        tx.set_durability(Durability::Immediate).map_err(|e| serr(&e))?;
        {
            let mut s = tx.open_table(SNAPSHOT).map_err(|e| serr(&e))?;
            s.insert(KEY_SNAP_META, encode(meta).as_slice()).map_err(|e| serr(&e))?;
            s.insert(KEY_SNAP_FILE, encode(&name).as_slice()).map_err(|e| serr(&e))?;
        }
        tx.commit().map_err(|e| serr(&e))?;
        self.install_step("committed");
        snapshot_file::remove_others(dir, "", ".snap", Some(&name));
        self.install_step("old-files-removed");
        Ok(())
    }

    async fn open_snapshot(&self, meta: Meta, path: PathBuf) -> StResult<Snapshot<TypeConfig>> {
        match tokio::fs::File::open(&path).await {
            Ok(file) => Ok(Snapshot { meta, snapshot: Box::new(file) }),
            Err(source) => {
                let e = SnapshotFileError::Io { path, source };
                Err(StorageIOError::read_snapshot(Some(meta.signature()), &e).into())
            }
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for RedbStateMachine {
    async fn build_snapshot(&mut self) -> StResult<Snapshot<TypeConfig>> {
        let (meta, objects) = {
            let mut applied = self.applied.lock().await;
            applied.snapshot_seq += 1;
            // The view as of `last_applied`: a clone sharing its structure with the live one, so applying goes on
            // while the file is written from it.
            let objects = self.view.current();
            let snapshot_id = match applied.last_applied {
                Some(l) => format!("{}-{}-{}", l.leader_id, l.index, applied.snapshot_seq),
                None => format!("none-{}", applied.snapshot_seq),
            };
            let meta =
                Meta { last_log_id: applied.last_applied, last_membership: applied.membership.clone(), snapshot_id };
            (meta, objects)
        };
        let (this, built, count) = (self.clone(), meta.clone(), objects.len());
        match blocking(move || this.store_built(&built, objects)).await? {
            Some(path) => {
                tracing::info!(snapshot.id = %meta.snapshot_id, objects = count, file = %path.display(), "raft snapshot stored");
                self.open_snapshot(meta, path).await
            }
            None => {
                // openraft ignores a snapshot that is not newer than the one it knows; hand it the current one.
                tracing::info!(snapshot.id = %meta.snapshot_id, "raft snapshot discarded: a newer one was installed meanwhile");
                match self.stored_snapshot()? {
                    Some((current, name)) => self.open_snapshot(current, self.snapshots.dir.join(name)).await,
                    None => Err(werr(std::io::Error::other("the newer snapshot vanished"))),
                }
            }
        }
    }
}

impl RaftStateMachine<TypeConfig> for RedbStateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> StResult<(Option<LogId<NodeId>>, Membership)> {
        let a = self.applied.lock().await;
        Ok((a.last_applied, a.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StResult<Vec<ProposalResult>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut applied = self.applied.lock().await;
        let mut results = Vec::new();
        // A batch of committed entries may hold a hundred thousand task writes when the apply fell behind: it runs
        // beside the runtime, which goes on answering heartbeats meanwhile.
        crate::manager::long_step(|| {
            for entry in entries {
                let result = match &entry.payload {
                    EntryPayload::Blank => ProposalResult { error: None },
                    EntryPayload::Membership(m) => {
                        applied.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                        ProposalResult { error: None }
                    }
                    EntryPayload::Normal(p) => match self.view.apply(entry.log_id.index, p) {
                        Ok(_events) => ProposalResult { error: None },
                        Err(e) => ProposalResult { error: Some(e) },
                    },
                };
                applied.last_applied = Some(entry.log_id);
                results.push(result);
            }
        });
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StResult<Box<tokio::fs::File>> {
        let this = self.clone();
        let file = blocking(move || {
            let snaps = &this.snapshots;
            let mut receiving = snaps.receiving.lock().unwrap_or_else(|e| e.into_inner());
            // openraft receives one snapshot at a time: a file begun earlier was abandoned (or rejected).
            receiving.clear();
            snapshot_file::remove_others(&snaps.dir, "recv-", ".tmp", None);
            let path = snaps.dir.join(snapshot_file::unique_name("recv", ".tmp"));
            let opened = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path);
            let file = opened.and_then(|f| f.metadata().map(|md| (f, md))).map_err(|source| {
                StorageError::from(StorageIOError::write_snapshot(
                    None,
                    &SnapshotFileError::Io { path: path.clone(), source },
                ))
            })?;
            receiving.insert((file.1.dev(), file.1.ino()), path);
            Ok(file.0)
        })
        .await?;
        Ok(Box::new(tokio::fs::File::from_std(file)))
    }

    async fn install_snapshot(&mut self, meta: &Meta, snapshot: Box<tokio::fs::File>) -> StResult<()> {
        let mut file = *snapshot;
        // tokio writes in the background: wait for every chunk written to reach the file.
        file.flush().await.map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        let file = file.into_std().await;
        let (this, m) = (self.clone(), meta.clone());
        let (path, store) = blocking(move || this.receive_file(file, &m)).await?;

        let mut applied = self.applied.lock().await;
        let (this, m) = (self.clone(), meta.clone());
        blocking(move || this.commit_installed(&m, &path)).await?;
        let objects = store.len();
        self.view.replace(store);
        applied.last_applied = meta.last_log_id;
        applied.membership = meta.last_membership.clone();
        drop(applied);
        tracing::info!(snapshot.id = %meta.snapshot_id, objects, "raft snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StResult<Option<Snapshot<TypeConfig>>> {
        match self.stored_snapshot()? {
            Some((meta, name)) => Ok(Some(self.open_snapshot(meta, self.snapshots.dir.join(name)).await?)),
            None => Ok(None),
        }
    }
}
