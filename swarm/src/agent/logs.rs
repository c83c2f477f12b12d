//! The agent's side of `service logs`: for each subscription the dispatcher pushes, reads the named tasks' logs
//! from the executor and publishes them back in bounded batches (`PublishLogs`), then closes (unless following).
//! While following a service, tasks of it that this node starts later are read too.

use super::exec::Executor;
use super::worker::Worker;
use crate::api::logs::*;
use crate::transport::dispatcher::dispatcher_client::DispatcherClient;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Mutex};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// How often a followed service's tasks on this node are looked at for new ones.
const NEW_TASKS_EVERY: Duration = Duration::from_millis(500);

/// What one reader hands the publisher: a line, or why a task's logs cannot be read.
type Item = Result<TaskLogLine, String>;

/// Reads `task_ids`' logs into `tx` until they end or `cancel`.
fn spawn_reader<E: Executor>(
    executor: Arc<E>,
    task_ids: Vec<String>,
    opts: LogsOptions,
    tx: mpsc::Sender<Item>,
    cancel: CancellationToken,
) {
    tokio::spawn(async move {
        let mut rx = match executor.logs(&task_ids, &opts).await {
            Ok(rx) => rx,
            Err(e) => {
                let _ = tx.send(Err(format!("reading the logs of {}: {e}", task_ids.join(", ")))).await;
                return;
            }
        };
        loop {
            let l = tokio::select! {
                _ = cancel.cancelled() => return,
                l = rx.recv() => l,
            };
            let Some(l) = l else { return };
            if tx.send(Ok(l)).await.is_err() {
                return;
            }
        }
    });
}

/// Fills `req` with `first` and the items `more` has ready, up to [`MAX_LOG_BATCH_BYTES`] of lines (one line at
/// least, cut into pieces of [`MAX_LOG_LINE_BYTES`]); returns the item that did not fit, for the next batch.
fn fill(req: &mut PublishLogsRequest, first: Item, mut more: impl FnMut() -> Option<Item>) -> Option<Item> {
    let mut bytes = 0;
    let mut next = Some(first);
    while let Some(item) = next.take() {
        match item {
            Ok(l) => {
                let pieces = split_line(&l.line);
                let size: usize = pieces.iter().map(|p| p.len() + 64).sum();
                if bytes + size > MAX_LOG_BATCH_BYTES && bytes > 0 {
                    return Some(Ok(l));
                }
                bytes += size;
                for p in pieces {
                    req.lines.push(TaskLogLine { line: p.to_string(), ..l.clone() });
                }
            }
            Err(e) => {
                req.error = Some(match req.error.take() {
                    Some(prev) => format!("{prev}; {e}"),
                    None => e,
                });
            }
        }
        next = more();
    }
    None
}

/// Serves subscription `sub` until it is done (not following), the dispatcher refuses a batch (the subscriber
/// left) or `cancel` (a close from the dispatcher, or the session ended).
pub(super) async fn serve<E: Executor>(
    executor: Arc<E>,
    worker: Arc<Mutex<Worker<E>>>,
    mut client: DispatcherClient<Channel>,
    session_id: String,
    sub: LogSubscription,
    cancel: CancellationToken,
) {
    let _done = cancel.clone().drop_guard();
    let (tx, mut rx) = mpsc::channel::<Item>(256);
    let mut known: HashSet<String> = sub.task_ids.iter().cloned().collect();
    if !sub.task_ids.is_empty() {
        spawn_reader(executor.clone(), sub.task_ids.clone(), sub.options.clone(), tx.clone(), cancel.clone());
    }
    if let (true, Some(service_id)) = (sub.options.follow, sub.service_id.clone()) {
        // A task that starts later is read from its first line.
        let opts = LogsOptions { tail: None, ..sub.options.clone() };
        let (executor, tx, cancel) = (executor.clone(), tx.clone(), cancel.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(NEW_TASKS_EVERY) => {}
                }
                let ids = worker.lock().await.task_ids_of_service(&service_id);
                for id in ids {
                    if known.insert(id.clone()) {
                        spawn_reader(executor.clone(), vec![id], opts.clone(), tx.clone(), cancel.clone());
                    }
                }
            }
        });
    }
    drop(tx);
    let mut carry: Option<Item> = None;
    loop {
        let first = match carry.take() {
            Some(i) => Some(i),
            None => tokio::select! {
                _ = cancel.cancelled() => return,
                i = rx.recv() => i,
            },
        };
        let mut req = PublishLogsRequest {
            session_id: session_id.clone(),
            subscription_id: sub.id.clone(),
            ..Default::default()
        };
        let Some(first) = first else {
            // Every reader ended: all was sent.
            req.close = true;
            let _ = client.publish_logs(req).await;
            return;
        };
        carry = fill(&mut req, first, || rx.try_recv().ok());
        let r = tokio::select! {
            _ = cancel.cancelled() => return,
            // No deadline: the broker holds a node that runs ahead of the others back by not answering; a lost
            // manager ends the session, which cancels this.
            r = client.publish_logs(req) => r,
        };
        if let Err(e) = r {
            tracing::debug!(subscription = %sub.id, error = %e, "log subscription ended by the dispatcher");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str) -> Item {
        Ok(TaskLogLine {
            task_id: "t1".into(),
            time: "2026-01-01T00:00:01.000000000Z".into(),
            stream: LogStream::Stdout,
            line: text.into(),
        })
    }

    #[test]
    fn batches_are_bounded_long_lines_cut_and_errors_kept() {
        // 20 lines of 64 KiB and a 200 KiB one, all ready at once.
        let mut ready: std::collections::VecDeque<Item> = (0..20).map(|_| line(&"x".repeat(64 * 1024))).collect();
        ready.push_back(Err("reading the logs of t2: gone".into()));
        ready.push_back(line(&"y".repeat(200 * 1024)));
        let mut batches = Vec::new();
        let mut carry = None;
        while let Some(first) = carry.take().or_else(|| ready.pop_front()) {
            let mut req = PublishLogsRequest::default();
            carry = fill(&mut req, first, || ready.pop_front());
            batches.push(req);
        }
        assert!(batches.len() > 2, "{} batches", batches.len());
        for b in &batches {
            let bytes: usize = b.lines.iter().map(|l| l.line.len()).sum();
            assert!(bytes <= MAX_LOG_BATCH_BYTES, "a batch of {bytes} bytes");
            assert!(b.lines.iter().all(|l| l.line.len() <= MAX_LOG_LINE_BYTES));
        }
        let all: Vec<&TaskLogLine> = batches.iter().flat_map(|b| &b.lines).collect();
        assert_eq!(all.iter().filter(|l| l.line.starts_with('x')).count(), 20, "every line sent once");
        let ys: String = all.iter().filter(|l| l.line.starts_with('y')).map(|l| l.line.as_str()).collect();
        assert_eq!(ys.len(), 200 * 1024, "the long line arrives whole, in pieces");
        let errors: Vec<&str> = batches.iter().filter_map(|b| b.error.as_deref()).collect();
        assert_eq!(errors, ["reading the logs of t2: gone"]);
    }
}
