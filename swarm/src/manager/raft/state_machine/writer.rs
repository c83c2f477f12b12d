//! Writes the applied objects to `state.redb` behind the apply.
//!
//! The apply hands each batch of entries' changes to one writer thread and returns once the view has them, so
//! the next entries are applied while these are written. The writer takes every batch queued by the time it is
//! free into one redb transaction, in key order, an object changed several times in it written once (a task is
//! created, assigned and reported running within a few entries). Batches are committed in the order they were
//! applied, and [`ObjectWriter::flush`] returns once everything queued before it is committed.
//!
//! Nothing committed is at risk: an object not yet written is in the Raft log, which keeps every entry until a
//! snapshot at or after it is recorded, and recording or installing a snapshot flushes the writer first. After a
//! crash openraft re-applies the entries after the `last_applied` that `state.redb` holds with its objects.

use super::{record_key, werr, Membership, StResult, KEY_APPLIED, KEY_MEMBERSHIP, META, OBJECTS};
use crate::manager::raft::codec::{encode, AtRest};
use crate::manager::raft::db::WeakDb;
use crate::manager::raft::NodeId;
use crate::manager::store::{Event, EventAction};
use openraft::LogId;
use redb::Durability;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// Batches the apply may run ahead of the writer before it waits for it.
const QUEUE: usize = 16;

/// The changes of one apply call, and the state they leave.
pub(super) struct Batch {
    /// The applied events, in order (shared with the watchers, not copies of their objects).
    pub events: Vec<Arc<Event>>,
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: Membership,
    /// Whether the commit must reach the disk (see `DURABLE_EVERY`).
    pub durable: bool,
}

enum Job {
    Write(Batch),
    Flush(oneshot::Sender<()>),
}

/// The writer failed: the state machine refuses to go on (openraft stops the node; the log still has it all).
#[derive(Debug, Clone, thiserror::Error)]
#[error("writing the applied state to state.redb failed: {0}")]
pub(super) struct WriteFailed(String);

/// A handle to the writer thread of one state machine; clones share it. The thread ends when the last is dropped.
#[derive(Clone)]
pub(super) struct ObjectWriter {
    jobs: mpsc::Sender<Job>,
    failed: Arc<Mutex<Option<WriteFailed>>>,
}

impl ObjectWriter {
    /// Starts the writer of `db` (held weakly: dropping the state machine closes the file).
    pub(super) fn start(db: WeakDb, at_rest: AtRest) -> std::io::Result<Self> {
        let (jobs, rx) = mpsc::channel(QUEUE);
        let failed: Arc<Mutex<Option<WriteFailed>>> = Default::default();
        let status = failed.clone();
        std::thread::Builder::new().name("state-writer".into()).spawn(move || run(rx, &db, &at_rest, &status))?;
        Ok(ObjectWriter { jobs, failed })
    }

    fn failure(&self) -> Option<WriteFailed> {
        self.failed.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Queues a batch; waits only while the writer is [`QUEUE`] batches behind.
    pub(super) async fn write(&self, batch: Batch) -> StResult<()> {
        if let Some(e) = self.failure() {
            return Err(werr(e));
        }
        self.jobs.send(Job::Write(batch)).await.map_err(|_| werr(WriteFailed("the writer stopped".into())))
    }

    /// Returns once every batch queued before it is committed (or the writer failed).
    pub(super) async fn flush(&self) -> StResult<()> {
        let (done, wait) = oneshot::channel();
        if self.jobs.send(Job::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
        match self.failure() {
            Some(e) => Err(werr(e)),
            None => Ok(()),
        }
    }
}

fn run(mut jobs: mpsc::Receiver<Job>, db: &WeakDb, at_rest: &AtRest, failed: &Mutex<Option<WriteFailed>>) {
    while let Some(first) = jobs.blocking_recv() {
        let mut taken = vec![first];
        while let Ok(job) = jobs.try_recv() {
            taken.push(job);
        }
        // The last write of each object wins; redb is written in key order.
        let mut objects: BTreeMap<String, Option<Arc<Event>>> = BTreeMap::new();
        let mut state = None;
        let mut durable = false;
        let mut flushes = Vec::new();
        for job in taken {
            match job {
                Job::Write(b) => {
                    for ev in b.events {
                        let value = (ev.action != EventAction::Delete).then(|| ev.clone());
                        objects.insert(record_key(at_rest, &ev.object), value);
                    }
                    state = Some((b.last_applied, b.membership));
                    durable |= b.durable;
                }
                Job::Flush(done) => flushes.push(done),
            }
        }
        let ok = failed.lock().unwrap_or_else(|e| e.into_inner()).is_none();
        if let (Some((last_applied, membership)), true) = (state, ok) {
            if let Err(e) = commit(db, at_rest, objects, &last_applied, &membership, durable) {
                tracing::error!(error = %e, "cannot write the applied state to state.redb");
                *failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

fn commit(
    db: &WeakDb,
    at_rest: &AtRest,
    objects: BTreeMap<String, Option<Arc<Event>>>,
    last_applied: &Option<LogId<NodeId>>,
    membership: &Membership,
    durable: bool,
) -> Result<(), WriteFailed> {
    let failed = |e: &dyn std::fmt::Display| WriteFailed(e.to_string());
    let db = db.get().map_err(|e| failed(&e))?;
    let mut tx = db.begin_write().map_err(|e| failed(&e))?;
    tx.set_durability(if durable { Durability::Immediate } else { Durability::None }).map_err(|e| failed(&e))?;
    {
        let mut t = tx.open_table(OBJECTS).map_err(|e| failed(&e))?;
        for (k, v) in objects {
            match v {
                Some(ev) => t.insert(k.as_str(), at_rest.encode(&ev.object).as_slice()).map_err(|e| failed(&e))?,
                None => t.remove(k.as_str()).map_err(|e| failed(&e))?,
            };
        }
        let mut m = tx.open_table(META).map_err(|e| failed(&e))?;
        m.insert(KEY_APPLIED, encode(last_applied).as_slice()).map_err(|e| failed(&e))?;
        m.insert(KEY_MEMBERSHIP, encode(membership).as_slice()).map_err(|e| failed(&e))?;
    }
    tx.commit().map_err(|e| failed(&e))
}
