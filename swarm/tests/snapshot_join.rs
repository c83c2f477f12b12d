//! A manager that joins after 20,000 writes gets the state as a snapshot file streamed in 1 MiB chunks, not the
//! entries. In a binary of its own: the writes load the machine, and other multi-manager tests would share it.

use std::time::{Duration, Instant};
use swarm::manager::store::StoreError;
use swarm::testing::TestExecutor;

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_joining_after_20000_writes_gets_a_streamed_snapshot() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let execs: Vec<_> = (0..2).map(|i| TestExecutor::new(&format!("host-{i}"))).collect();
    let (m0, addr0) = init(dirs[0].path(), &execs[0], Some(5_000)).await;
    let store = m0.store().unwrap();

    step("20,000 writes, each a service with a 1 KiB label (about 20 MiB of state)");
    let t = Instant::now();
    let filler = "x".repeat(1024);
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let store = store.clone();
            let filler = filler.clone();
            tokio::spawn(async move {
                for i in 0..1250 {
                    let mut svc = swarm::testing::service(&swarm::api::new_id(), &format!("s-{w}-{i}"), 0);
                    svc.spec.annotations.labels.insert("filler".into(), filler.clone());
                    store.update(|tx| Ok::<_, StoreError>(tx.create(svc))).await.unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    eprintln!("20,000 writes took {:?}", t.elapsed());
    let raft0 = m0.raft().await.unwrap();
    let t = Instant::now();
    loop {
        // A trigger while an automatic snapshot is being built is dropped: trigger until one covers the writes.
        raft0.snapshot().await.unwrap();
        let wait = Instant::now();
        while wait.elapsed() < Duration::from_secs(5) && !raft0.snapshot_index().is_some_and(|i| i >= 20_000) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if raft0.snapshot_index().is_some_and(|i| i >= 20_000) {
            break;
        }
        // Generous: on a loaded machine the snapshot of ~20 MiB takes a while.
        assert!(t.elapsed() < Duration::from_secs(300), "no snapshot past index 20,000 after 300 s");
    }
    eprintln!("snapshot taken in {:?}", t.elapsed());

    step("a manager joins: it is sent the snapshot (in 1 MiB chunks), not 20,000 entries");
    let t = Instant::now();
    let m1 = join_manager(dirs[1].path(), &execs[1], &addr0, &manager_token(&m0)).await;
    eprintln!("join with a snapshot took {:?}", t.elapsed());
    let store1 = m1.store().unwrap();
    let count = store1.view(|v| v.services().count());
    assert_eq!(count, 20_000, "the new manager has every service");
    let raft1 = m1.raft().await.unwrap();
    assert!(raft1.snapshot_index().is_some_and(|i| i >= 20_000), "the state arrived as a snapshot");
    assert_eq!(raft1.voters().len(), 2);
    assert!(raft1.log_len() < 1_000, "the early entries never reached it: {} in its log", raft1.log_len());

    m1.shutdown().await;
    m0.shutdown().await;
}
