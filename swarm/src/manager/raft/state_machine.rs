//! The Raft state machine: applies committed proposals to the in-memory view ([`SharedView`]) and persists the
//! objects, the last applied log id, the membership and the current snapshot in a redb file (`state.redb`).
//!
//! Object writes are committed without fsync most of the time (the log already holds them durably; after a
//! crash redb rolls back to its last durable commit and openraft re-applies the committed entries after
//! `last_applied`). Every `DURABLE_EVERY` entries, and always when a snapshot is stored, the commit is durable,
//! so the log can be purged behind it.

use super::codec::{decode, encode};
use super::db::{open, open_backend, DbError, SharedDb};
use super::{NodeId, TypeConfig};
use crate::api::Object;
use crate::manager::store::{MemoryStore, ProposalResult, SharedView};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use redb::{Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::io::Cursor;
use std::path::Path;
use std::sync::{Arc, Mutex};

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");
const KEY_APPLIED: &str = "last_applied";
const KEY_MEMBERSHIP: &str = "membership";
const KEY_SNAP_META: &str = "meta";
const KEY_SNAP_DATA: &str = "data";

/// Entries between durable commits of the state machine.
const DURABLE_EVERY: u64 = 1000;

type Membership = StoredMembership<NodeId, BasicNode>;
type StResult<T> = Result<T, StorageError<NodeId>>;

/// A snapshot's content: every object at `last_applied`.
#[derive(Serialize, Deserialize)]
struct SnapshotDoc {
    last_applied: Option<LogId<NodeId>>,
    membership: Membership,
    objects: Vec<Object>,
}

struct Applied {
    last_applied: Option<LogId<NodeId>>,
    membership: Membership,
    last_durable: u64,
    snapshot_seq: u64,
}

/// The redb-backed state machine. Cloning shares everything (openraft takes a clone as the snapshot builder).
#[derive(Clone)]
pub struct RedbStateMachine {
    db: SharedDb,
    view: Arc<SharedView>,
    /// Held while applying and while building a snapshot, so a snapshot's objects match its `last_applied`.
    applied: Arc<Mutex<Applied>>,
}

fn key(o: &Object) -> String {
    format!("{}/{}", o.kind(), o.id())
}

fn rerr(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_state_machine(&e).into()
}

fn werr(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(&e).into()
}

impl RedbStateMachine {
    /// Opens the state at `path` and loads every object into a fresh view.
    pub fn open(path: &Path) -> Result<Self, DbError> {
        Self::loaded(path, open(path)?)
    }

    /// The state on another storage than a file (crash tests); `name` stands for its path in errors.
    pub fn open_backend(name: &Path, backend: impl redb::StorageBackend) -> Result<Self, DbError> {
        Self::loaded(name, open_backend(name, backend)?)
    }

    fn loaded(path: &Path, db: redb::Database) -> Result<Self, DbError> {
        let corrupt = |reason: String| DbError::Corrupt {
            path: path.to_path_buf(),
            dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
            reason,
        };
        let format = |source| DbError::Format { path: path.to_path_buf(), source };
        {
            let tx = db.begin_write().map_err(|e| corrupt(e.to_string()))?;
            for t in [OBJECTS, META, SNAPSHOT] {
                tx.open_table(t).map_err(|e| corrupt(e.to_string()))?;
            }
            tx.commit().map_err(|e| corrupt(e.to_string()))?;
        }
        let (objects, last_applied, membership) = {
            let tx = db.begin_read().map_err(|e| corrupt(e.to_string()))?;
            let t = tx.open_table(OBJECTS).map_err(|e| corrupt(e.to_string()))?;
            let mut objects = Vec::new();
            for item in t.iter().map_err(|e| corrupt(e.to_string()))? {
                let (_, v) = item.map_err(|e| corrupt(e.to_string()))?;
                objects.push(decode::<Object>(v.value()).map_err(format)?);
            }
            let m = tx.open_table(META).map_err(|e| corrupt(e.to_string()))?;
            let last_applied = match m.get(KEY_APPLIED).map_err(|e| corrupt(e.to_string()))? {
                Some(v) => decode::<Option<LogId<NodeId>>>(v.value()).map_err(format)?,
                None => None,
            };
            let membership = match m.get(KEY_MEMBERSHIP).map_err(|e| corrupt(e.to_string()))? {
                Some(v) => decode::<Membership>(v.value()).map_err(format)?,
                None => Membership::default(),
            };
            (objects, last_applied, membership)
        };
        let last_durable = last_applied.map(|l| l.index).unwrap_or(0);
        Ok(RedbStateMachine {
            db: SharedDb::new(db),
            view: SharedView::new(MemoryStore::from_objects(objects)),
            applied: Arc::new(Mutex::new(Applied { last_applied, membership, last_durable, snapshot_seq: 0 })),
        })
    }

    /// The view this state machine keeps current.
    /// Closes the file once operations in flight end; later operations fail (see [`SharedDb::close`]).
    pub async fn close(&self) {
        self.db.close().await
    }

    pub fn view(&self) -> Arc<SharedView> {
        self.view.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Applied> {
        self.applied.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the whole view, replacing what the file held (snapshot install).
    fn persist_all(&self, applied: &Applied, store: &MemoryStore) -> StResult<()> {
        let db = self.db.get().map_err(werr)?;
        let mut tx = db.begin_write().map_err(werr)?;
        tx.set_durability(Durability::Immediate).map_err(werr)?;
        {
            let mut t = tx.open_table(OBJECTS).map_err(werr)?;
            t.retain(|_, _| false).map_err(werr)?;
            for o in store.objects() {
                t.insert(key(&o).as_str(), encode(&o).as_slice()).map_err(werr)?;
            }
            let mut m = tx.open_table(META).map_err(werr)?;
            m.insert(KEY_APPLIED, encode(&applied.last_applied).as_slice()).map_err(werr)?;
            m.insert(KEY_MEMBERSHIP, encode(&applied.membership).as_slice()).map_err(werr)?;
        }
        tx.commit().map_err(werr)
    }

    fn store_snapshot(&self, meta: &SnapshotMeta<NodeId, BasicNode>, data: &[u8]) -> StResult<()> {
        let sig = Some(meta.signature());
        let db = self.db.get().map_err(|e| StorageIOError::write_snapshot(sig.clone(), &e))?;
        let mut tx = db.begin_write().map_err(|e| StorageIOError::write_snapshot(sig.clone(), &e))?;
        tx.set_durability(Durability::Immediate).map_err(|e| StorageIOError::write_snapshot(sig.clone(), &e))?;
        {
            let mut t = tx.open_table(SNAPSHOT).map_err(|e| StorageIOError::write_snapshot(sig.clone(), &e))?;
            t.insert(KEY_SNAP_META, encode(meta).as_slice())
                .map_err(|e| StorageIOError::write_snapshot(sig.clone(), &e))?;
            t.insert(KEY_SNAP_DATA, data).map_err(|e| StorageIOError::write_snapshot(sig.clone(), &e))?;
        }
        tx.commit().map_err(|e| StorageIOError::write_snapshot(sig, &e).into())
    }

    /// The stored snapshot's metadata, if any (for tests and `info`).
    pub fn snapshot_meta(&self) -> StResult<Option<SnapshotMeta<NodeId, BasicNode>>> {
        let db = self.db.get().map_err(rerr)?;
        let tx = db.begin_read().map_err(rerr)?;
        let t = tx.open_table(SNAPSHOT).map_err(rerr)?;
        match t.get(KEY_SNAP_META).map_err(rerr)? {
            Some(v) => Ok(Some(decode(v.value()).map_err(rerr)?)),
            None => Ok(None),
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for RedbStateMachine {
    async fn build_snapshot(&mut self) -> StResult<Snapshot<TypeConfig>> {
        let (meta, data) = {
            let mut applied = self.lock();
            applied.snapshot_seq += 1;
            let doc = self.view.read(|v| SnapshotDoc {
                last_applied: applied.last_applied,
                membership: applied.membership.clone(),
                objects: v.objects().collect(),
            });
            let snapshot_id = match applied.last_applied {
                Some(l) => format!("{}-{}-{}", l.leader_id, l.index, applied.snapshot_seq),
                None => format!("none-{}", applied.snapshot_seq),
            };
            let meta = SnapshotMeta {
                last_log_id: applied.last_applied,
                last_membership: applied.membership.clone(),
                snapshot_id,
            };
            (meta, encode(&doc))
        };
        self.store_snapshot(&meta, &data)?;
        tracing::info!(snapshot.id = %meta.snapshot_id, bytes = data.len(), "raft snapshot stored");
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<TypeConfig> for RedbStateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> StResult<(Option<LogId<NodeId>>, Membership)> {
        let a = self.lock();
        Ok((a.last_applied, a.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StResult<Vec<ProposalResult>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut applied = self.lock();
        let mut results = Vec::new();
        let mut puts: Vec<(String, Option<Object>)> = Vec::new();
        for entry in entries {
            let result = match &entry.payload {
                EntryPayload::Blank => ProposalResult { error: None },
                EntryPayload::Membership(m) => {
                    applied.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    ProposalResult { error: None }
                }
                EntryPayload::Normal(p) => match self.view.apply(entry.log_id.index, p) {
                    Ok(events) => {
                        for ev in events {
                            let k = key(&ev.object);
                            let value = match ev.action {
                                crate::manager::store::EventAction::Delete => None,
                                _ => Some(ev.object),
                            };
                            puts.push((k, value));
                        }
                        ProposalResult { error: None }
                    }
                    Err(e) => ProposalResult { error: Some(e) },
                },
            };
            applied.last_applied = Some(entry.log_id);
            results.push(result);
        }
        let Some(last) = applied.last_applied else { return Ok(results) };
        let db = self.db.get().map_err(werr)?;
        let mut tx = db.begin_write().map_err(werr)?;
        let durable = last.index >= applied.last_durable + DURABLE_EVERY;
        tx.set_durability(if durable { Durability::Immediate } else { Durability::None }).map_err(werr)?;
        {
            let mut t = tx.open_table(OBJECTS).map_err(werr)?;
            for (k, v) in puts {
                match v {
                    Some(o) => t.insert(k.as_str(), encode(&o).as_slice()).map_err(werr)?,
                    None => t.remove(k.as_str()).map_err(werr)?,
                };
            }
            let mut m = tx.open_table(META).map_err(werr)?;
            m.insert(KEY_APPLIED, encode(&applied.last_applied).as_slice()).map_err(werr)?;
            m.insert(KEY_MEMBERSHIP, encode(&applied.membership).as_slice()).map_err(werr)?;
        }
        tx.commit().map_err(werr)?;
        if durable {
            applied.last_durable = last.index;
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StResult<()> {
        let data = snapshot.into_inner();
        let doc: SnapshotDoc = decode(&data).map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        let store = MemoryStore::from_objects(doc.objects);
        let mut applied = self.lock();
        applied.last_applied = meta.last_log_id;
        applied.membership = meta.last_membership.clone();
        self.persist_all(&applied, &store)?;
        applied.last_durable = meta.last_log_id.map(|l| l.index).unwrap_or(0);
        self.view.replace(store);
        drop(applied);
        self.store_snapshot(meta, &data)
    }

    async fn get_current_snapshot(&mut self) -> StResult<Option<Snapshot<TypeConfig>>> {
        let db = self.db.get().map_err(rerr)?;
        let tx = db.begin_read().map_err(rerr)?;
        let t = tx.open_table(SNAPSHOT).map_err(rerr)?;
        let meta = match t.get(KEY_SNAP_META).map_err(rerr)? {
            Some(v) => decode::<SnapshotMeta<NodeId, BasicNode>>(v.value()).map_err(rerr)?,
            None => return Ok(None),
        };
        let data = match t.get(KEY_SNAP_DATA).map_err(rerr)? {
            Some(v) => v.value().to_vec(),
            None => return Ok(None),
        };
        Ok(Some(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) }))
    }
}
