//! Task exits from containerd's event stream: one `/tasks/exit` subscription per executor, routed to the tasks'
//! waiters, instead of one Wait stream held open in containerd per task.
//!
//! An exit published while the stream was down (containerd restarting) is never delivered, so each time the
//! subscription is (re)established the hub bumps its generation and every waiter looks at its task again. containerd
//! answers a subscription only with its first event, so the hub learns that the stream is live by publishing a
//! marker event of its own (repeatedly, until the marker comes back on the stream).

use crate::containerd::{req, NAMESPACE};
use containerd_client::events::TaskExit;
use containerd_client::services::v1::events_client::EventsClient;
use containerd_client::services::v1::{PublishRequest, SubscribeRequest};
use prost::Message;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::watch;
use tonic::transport::Channel;

const TOPIC_EXIT: &str = "/tasks/exit";
/// The hub's own marker: seen on the stream, it proves the subscription is live.
const TOPIC_SYNC: &str = "/shoal/exits-sync";
/// How often the marker is published until it comes back.
const SYNC_EVERY: Duration = Duration::from_millis(200);
/// A waiter looks at its task this often even without an event: insurance against an exit lost some other way.
const RECHECK: Duration = Duration::from_secs(300);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// The exit subscription and the tasks waiting on it.
pub struct ExitHub {
    ch: Channel,
    started: AtomicBool,
    /// Bumped each time the subscription becomes live: whatever exited before may have been missed.
    generation: watch::Sender<u64>,
    /// Container id → its init process's exit status, once the event came.
    waiters: Mutex<HashMap<String, watch::Sender<Option<u32>>>>,
}

/// One wait for a container's exit. Registered before the caller looks at the task, so an exit after that look
/// is never missed.
pub struct ExitWaiter {
    hub: Arc<ExitHub>,
    id: String,
    exit: Option<watch::Receiver<Option<u32>>>,
    generation: watch::Receiver<u64>,
}

/// What a waiter learnt.
#[derive(Debug, PartialEq, Eq)]
pub enum Woken {
    /// The init process exited with this status.
    Exited(u32),
    /// Events may have been missed (resubscribed), or it is time for the periodic look: check the task.
    Recheck,
}

impl ExitHub {
    pub fn new(ch: Channel) -> Arc<Self> {
        Arc::new(ExitHub {
            ch,
            started: AtomicBool::new(false),
            generation: watch::Sender::new(0),
            waiters: Mutex::default(),
        })
    }

    /// Waits for `container_id`'s exit from now on. Starts the subscription on first use (it needs a runtime).
    pub fn waiter(self: &Arc<Self>, container_id: &str) -> ExitWaiter {
        if !self.started.swap(true, Ordering::SeqCst) {
            tokio::spawn(subscribe(Arc::downgrade(self)));
        }
        let exit = {
            let mut w = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
            w.entry(container_id.to_string()).or_insert_with(|| watch::Sender::new(None)).subscribe()
        };
        let mut generation = self.generation.subscribe();
        generation.borrow_and_update();
        ExitWaiter { hub: self.clone(), id: container_id.to_string(), exit: Some(exit), generation }
    }

    /// How many containers have a waiter (for tests: waiters must not leak).
    pub fn waiting(&self) -> usize {
        self.waiters.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn exited(&self, e: &TaskExit) {
        // Exec'd processes (health checks) exit too; only the init process (id = container id) ends the task.
        if e.id != e.container_id {
            return;
        }
        if let Some(tx) = self.waiters.lock().unwrap_or_else(|e| e.into_inner()).get(&e.container_id) {
            tx.send_replace(Some(e.exit_status));
        }
    }
}

impl ExitWaiter {
    /// The next thing worth acting on: the exit, or a reason to look at the task again.
    pub async fn next(&mut self) -> Woken {
        let Some(exit) = self.exit.as_mut() else { return Woken::Recheck };
        if let Some(code) = *exit.borrow_and_update() {
            return Woken::Exited(code);
        }
        tokio::select! {
            r = exit.changed() => match (r, *exit.borrow_and_update()) {
                (Ok(()), Some(code)) => Woken::Exited(code),
                _ => Woken::Recheck,
            },
            r = self.generation.changed() => {
                if r.is_err() {
                    // The hub is gone with its executor: nothing will come; look again after a while.
                    tokio::time::sleep(RECHECK).await;
                }
                Woken::Recheck
            }
            _ = tokio::time::sleep(RECHECK) => Woken::Recheck,
        }
    }
}

impl Drop for ExitWaiter {
    fn drop(&mut self) {
        let mut w = self.hub.waiters.lock().unwrap_or_else(|e| e.into_inner());
        // Our receiver goes first, under the lock, so the last waiter of a container always sees none left.
        self.exit = None;
        if w.get(&self.id).is_some_and(|tx| tx.receiver_count() == 0) {
            w.remove(&self.id);
        }
    }
}

/// Keeps one subscription open for the hub's life, resubscribing after any break.
async fn subscribe(hub: Weak<ExitHub>) {
    let filters = [TOPIC_EXIT, TOPIC_SYNC].map(|t| format!("topic==\"{t}\",namespace==\"{NAMESPACE}\"")).to_vec();
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(ch) = hub.upgrade().map(|h| h.ch.clone()) else { return };
        match follow(&hub, &ch, filters.clone()).await {
            Ok(()) => return,
            Err(s) => tracing::debug!(error = %s.message(), "containerd event stream broken; subscribing again"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Follows one subscription until it breaks (Err) or the hub is gone (Ok).
async fn follow(hub: &Weak<ExitHub>, ch: &Channel, filters: Vec<String>) -> Result<(), tonic::Status> {
    let mut events = EventsClient::new(ch.clone());
    let mut tick = tokio::time::interval(SYNC_EVERY);
    let open = events.subscribe(req(SubscribeRequest { filters }));
    tokio::pin!(open);
    // The call returns with the first event: publish markers until it does.
    let mut stream = loop {
        tokio::select! {
            r = &mut open => break r?.into_inner(),
            _ = tick.tick() => publish_marker(ch).await?,
        }
    };
    let mut live = false;
    loop {
        let msg = tokio::select! {
            m = stream.message() => m?,
            _ = tick.tick(), if !live => {
                publish_marker(ch).await?;
                continue;
            }
        };
        let Some(envelope) = msg else { return Err(tonic::Status::unavailable("event stream ended")) };
        let Some(hub) = hub.upgrade() else { return Ok(()) };
        match envelope.topic.as_str() {
            TOPIC_SYNC if !live => {
                live = true;
                hub.generation.send_modify(|g| *g += 1);
                tracing::debug!("following containerd's task exits");
            }
            TOPIC_EXIT => match envelope.event.map(|a| TaskExit::decode(a.value.as_slice())) {
                Some(Ok(e)) => hub.exited(&e),
                Some(Err(e)) => tracing::warn!(error = %e, "undecodable task exit event"),
                None => {}
            },
            _ => {}
        }
    }
}

async fn publish_marker(ch: &Channel) -> Result<(), tonic::Status> {
    let event = prost_types::Any { type_url: "types.shoal.io/exits-sync".into(), value: Vec::new() };
    EventsClient::new(ch.clone())
        .publish(req(PublishRequest { topic: TOPIC_SYNC.into(), event: Some(event) }))
        .await
        .map(|_| ())
}
