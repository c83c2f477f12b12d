//! Watches filtered by node: a subscriber gets only the task events of one node, as shared (`Arc`) events, so the
//! cost of a change is paid by the sessions it concerns, not by every session in the cluster. Events are routed
//! synchronously while the store applies them, so a read taken under the same lock as the subscription is followed
//! by exactly the changes after it. A subscriber that falls behind (its queue full) is told so on its next receive
//! and must re-read the store.

use super::Event;
use crate::api::Object;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// How many events a node watch may queue before it is marked behind.
const NODE_WATCH_CAPACITY: usize = 4096;

struct Subscriber {
    tx: mpsc::Sender<Arc<Event>>,
    behind: Arc<AtomicBool>,
}

/// The node watches of one store.
#[derive(Default)]
pub(super) struct NodeRouter {
    by_node: Mutex<HashMap<String, Vec<Subscriber>>>,
}

impl NodeRouter {
    pub(super) fn subscribe(&self, node_id: &str) -> NodeWatch {
        let (tx, rx) = mpsc::channel(NODE_WATCH_CAPACITY);
        let behind = Arc::new(AtomicBool::new(false));
        let mut by_node = self.by_node.lock().unwrap_or_else(|e| e.into_inner());
        by_node.entry(node_id.to_string()).or_default().push(Subscriber { tx, behind: behind.clone() });
        NodeWatch { rx, behind }
    }

    /// Hands each task event to the watches of the task's node (and of its previous node, if it changed).
    pub(super) fn route(&self, events: &[Arc<Event>]) {
        let mut by_node = self.by_node.lock().unwrap_or_else(|e| e.into_inner());
        if by_node.is_empty() {
            return;
        }
        for e in events {
            let Object::Task(t) = &e.object else { continue };
            let old = match &e.old {
                Some(Object::Task(o)) if o.node_id != t.node_id => Some(o.node_id.as_str()),
                _ => None,
            };
            let shared = e.clone();
            for node in std::iter::once(t.node_id.as_str()).chain(old) {
                if let Some(subs) = by_node.get_mut(node) {
                    subs.retain(|s| !s.tx.is_closed());
                    for s in subs.iter() {
                        if s.tx.try_send(shared.clone()).is_err() {
                            s.behind.store(true, Ordering::Release);
                        }
                    }
                }
            }
        }
        by_node.retain(|_, subs| !subs.is_empty());
    }

    /// Every watch must re-read (the whole view was replaced by a snapshot).
    pub(super) fn all_behind(&self) {
        let by_node = self.by_node.lock().unwrap_or_else(|e| e.into_inner());
        for s in by_node.values().flatten() {
            s.behind.store(true, Ordering::Release);
        }
    }
}

/// Why a node watch cannot go on.
#[derive(Debug, PartialEq, Eq)]
pub enum NodeWatchError {
    /// Events were dropped: re-read the store and watch again.
    Behind,
    /// The store is gone.
    Closed,
}

/// The task events of one node, in commit order.
pub struct NodeWatch {
    rx: mpsc::Receiver<Arc<Event>>,
    behind: Arc<AtomicBool>,
}

impl NodeWatch {
    pub async fn recv(&mut self) -> Result<Arc<Event>, NodeWatchError> {
        if self.behind.load(Ordering::Acquire) {
            return Err(NodeWatchError::Behind);
        }
        let e = self.rx.recv().await.ok_or(NodeWatchError::Closed)?;
        // Events queued before the drop are still in order; the gap comes after them.
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::store::{Store, StoreError};
    use crate::testing::task;

    fn on(id: &str, node: &str) -> crate::api::Task {
        let mut t = task(id, "s1", 1);
        t.node_id = node.into();
        t
    }

    #[tokio::test]
    async fn a_node_watch_gets_its_own_tasks_events_only_after_its_read() {
        let store = Store::in_memory();
        store.update(|tx| Ok::<_, StoreError>(tx.create(on("before", "n1")))).await.unwrap();
        let (seen, mut w1) = store.view_and_watch_node("n1", |v| v.tasks_by_node("n1").count());
        let (_, mut w2) = store.view_and_watch_node("n2", |_| ());
        assert_eq!(seen, 1);
        store
            .update(|tx| {
                tx.create(on("a", "n1"));
                tx.create(on("b", "n2"));
                tx.create(on("c", "n3"));
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        let e = w1.recv().await.unwrap();
        assert_eq!(e.object.id(), "a", "n1 hears of its task, not of the one it read");
        assert_eq!(w2.recv().await.unwrap().object.id(), "b");
        // A task that moves is news to both nodes.
        let mut moved = store.view(|v| v.task("a").cloned()).unwrap();
        moved.node_id = "n2".into();
        store.update(|tx| Ok::<_, StoreError>(tx.update(moved))).await.unwrap();
        assert_eq!(w1.recv().await.unwrap().object.id(), "a");
        assert_eq!(w2.recv().await.unwrap().object.id(), "a");
        // n3 had no watch and n1 hears nothing more.
        assert!(tokio::time::timeout(std::time::Duration::from_millis(50), w1.recv()).await.is_err());
    }

    #[tokio::test]
    async fn a_watch_that_falls_behind_is_told_so() {
        let store = Store::in_memory();
        let (_, mut w) = store.view_and_watch_node("n1", |_| ());
        for chunk in 0..(NODE_WATCH_CAPACITY / 100 + 1) {
            store
                .update(|tx| {
                    for i in 0..100 {
                        tx.create(on(&format!("t{chunk}-{i}"), "n1"));
                    }
                    Ok::<_, StoreError>(())
                })
                .await
                .unwrap();
        }
        assert_eq!(w.recv().await.unwrap_err(), NodeWatchError::Behind, "dropped events are never silent");
    }
}
