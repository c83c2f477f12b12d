//! The store on disk: every committed object survives a SIGKILL of the process at any moment; snapshots are
//! taken and the log compacted behind them; a damaged file gives an error naming it.
//!
//! The writer runs in a child process (this same test binary, re-executed with `SHOAL_STORE_CHILD` set) so it
//! can be killed for real.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use swarm::manager::raft::{RaftHandle, RaftSettings};
use swarm::manager::store::{Store, StoreError};

const TOTAL: usize = 10_000;
const SNAPSHOT_INTERVAL: u64 = 2_000;

fn settings() -> RaftSettings {
    RaftSettings { snapshot_interval: SNAPSHOT_INTERVAL, ..RaftSettings::default() }
}

fn name(i: usize) -> String {
    format!("svc-{i}")
}

async fn open(dir: &Path) -> (RaftHandle, Store) {
    let (raft, store) = RaftHandle::start(1, dir, &settings()).await.expect("open raft");
    if !raft.is_initialized().await.unwrap() {
        raft.initialize("127.0.0.1:2377").await.unwrap();
    }
    raft.wait_leader(Duration::from_secs(10)).await.unwrap();
    (raft, store)
}

/// The child: writes the services of `from..TOTAL` not yet stored, one proposal each, 32 at a time, printing each
/// commit.
fn child(dir: &str, from: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let (_raft, store) = open(Path::new(dir)).await;
        let mut set = tokio::task::JoinSet::new();
        let mut next = from;
        loop {
            while set.len() < 32 && next < TOTAL {
                let store = store.clone();
                let i = next;
                next += 1;
                // Proposals in flight commit in no set order, so a killed writer can leave gaps: a later writer
                // skips what is already there (creating it again would fail with "already exists").
                if store.view(|v| v.service_by_name(&name(i)).is_some()) {
                    continue;
                }
                set.spawn(async move {
                    let s = swarm::testing::service(&format!("id-{i}"), &name(i), 1);
                    store
                        .update(|tx| {
                            tx.create(s);
                            Ok::<_, StoreError>(())
                        })
                        .await
                        .map(|_| i)
                });
            }
            match set.join_next().await {
                Some(r) => {
                    let i = r.unwrap().expect("commit");
                    println!("committed {i}");
                }
                None => break,
            }
        }
        println!("all-done");
        tokio::time::sleep(Duration::from_secs(3600)).await;
    });
}

/// Runs a child writing from `from`; SIGKILLs it after `kill_after` commits (or once all are done). Returns the
/// indexes it reported committed. A child that dies before either fails the test with its stderr.
fn run_child(dir: &Path, from: usize, kill_after: Option<usize>) -> Vec<usize> {
    let stderr = tempfile::NamedTempFile::new().unwrap();
    let mut c = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "committed_objects_survive_sigkill", "--nocapture", "--test-threads=1"])
        .env("SHOAL_STORE_CHILD", dir)
        .env("SHOAL_STORE_FROM", from.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr.reopen().unwrap()))
        .spawn()
        .unwrap();
    let out = BufReader::new(c.stdout.take().unwrap());
    let mut committed = Vec::new();
    let mut finished = false;
    for line in out.lines() {
        let line = line.unwrap();
        if let Some(i) = line.strip_prefix("committed ") {
            committed.push(i.parse().unwrap());
            if Some(committed.len()) == kill_after {
                finished = true;
                break;
            }
        } else if line == "all-done" {
            finished = true;
            break;
        }
    }
    if !finished {
        c.wait().unwrap();
        let err = std::fs::read_to_string(stderr.path()).unwrap_or_default();
        panic!("the writer from {from} died after {} commits:\n{err}", committed.len());
    }
    c.kill().unwrap(); // SIGKILL
    c.wait().unwrap();
    committed
}

#[test]
fn committed_objects_survive_sigkill() {
    if let Ok(dir) = std::env::var("SHOAL_STORE_CHILD") {
        let from = std::env::var("SHOAL_STORE_FROM").unwrap().parse().unwrap();
        return child(&dir, from);
    }
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();

    eprintln!("--- writer killed mid-run: every commit it reported is on disk");
    let start = Instant::now();
    let first = run_child(dir.path(), 0, Some(3_500));
    assert_eq!(first.len(), 3_500);
    let present = rt.block_on(async {
        let (raft, store) = open(dir.path()).await;
        let names: std::collections::HashSet<String> =
            store.view(|v| v.services().map(|s| s.spec.annotations.name.clone()).collect());
        raft.shutdown().await;
        names
    });
    let missing: Vec<&usize> = first.iter().filter(|i| !present.contains(&name(**i))).collect();
    assert!(
        missing.is_empty(),
        "{} committed objects lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );

    eprintln!("--- a second writer finishes the 10,000, then is killed");
    let resume_from = (0..TOTAL).find(|i| !present.contains(&name(*i))).unwrap();
    run_child(dir.path(), resume_from, None);
    let elapsed = start.elapsed();
    rt.block_on(async {
        let (raft, store) = open(dir.path()).await;
        let n = store.view(|v| (0..TOTAL).filter(|i| v.service_by_name(&name(*i)).is_some()).count());
        assert_eq!(n, TOTAL, "all {TOTAL} objects present after SIGKILL and restart");

        eprintln!("--- snapshots were taken and the log compacted behind them");
        let snap = raft.snapshot_index().expect("a snapshot exists");
        assert!(snap >= SNAPSHOT_INTERVAL, "snapshot at {snap}");
        let log = raft.log_len();
        assert!(log <= SNAPSHOT_INTERVAL + 500 + 200, "log holds {log} entries; it should be compacted");
        raft.shutdown().await;
    });
    eprintln!("wrote {TOTAL} objects in {elapsed:?} (two processes, one SIGKILL)");
}

#[test]
fn damaged_files_are_named_in_the_error() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    for file in ["state.redb", "log.redb"] {
        let dir = tempfile::tempdir().unwrap();
        rt.block_on(async {
            let (raft, store) = open(dir.path()).await;
            for i in 0..50 {
                store
                    .update(|tx| {
                        tx.create(swarm::testing::service(&format!("id-{i}"), &name(i), 1));
                        Ok::<_, StoreError>(())
                    })
                    .await
                    .unwrap();
            }
            raft.shutdown().await;
        });
        let path = dir.path().join(file);
        let len = std::fs::metadata(&path).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len / 3).unwrap();
        drop(f);
        let err =
            rt.block_on(RaftHandle::start(1, dir.path(), &settings())).err().expect("a truncated file must be refused");
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "error names the file: {msg}");
        assert!(msg.contains("corrupt") || msg.contains("truncated"), "error says what is wrong: {msg}");
        eprintln!("{file}: {msg}");

        std::fs::write(&path, b"this is not a redb file at all, just some bytes").unwrap();
        let msg =
            rt.block_on(RaftHandle::start(1, dir.path(), &settings())).err().expect("garbage refused").to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
    }
}

/// Shutdown releases both files before it returns, so the same process can open them again at once (a node
/// restarted in place, `swarm leave` then `swarm init`) while openraft is still dropping its own copies.
#[test]
fn files_are_released_when_shutdown_returns() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(async {
        for round in 0..20 {
            let (raft, store) = open(dir.path()).await;
            store
                .update(|tx| {
                    tx.create(swarm::testing::service(&format!("id-{round}"), &name(round), 1));
                    Ok::<_, StoreError>(())
                })
                .await
                .unwrap();
            raft.shutdown().await;
            drop(store);
        }
        let (raft, store) = open(dir.path()).await;
        assert_eq!(store.view(|v| v.services().count()), 20);
        raft.shutdown().await;
    });
}

/// A power cut (not a process kill: unsynced writes are lost) while the state machine is behind the log: the
/// state file keeps only what it synced (every 1,000 entries), so the restarted member must re-apply every
/// committed entry after that point, creates, updates and deletes alike, each once and in order.
#[test]
fn committed_entries_are_reapplied_after_a_power_cut() {
    use std::collections::BTreeMap;
    use swarm::api::ObjectKind;
    use swarm::manager::raft::{RedbLogStore, RedbStateMachine};
    use swarm::testing::CrashableStorage;

    let rt = tokio::runtime::Runtime::new().unwrap();
    // The redb files live in memory; the directory holds the snapshot files (none are taken here).
    let dir = tempfile::tempdir().unwrap();
    let state_name = dir.path().join("state.redb");
    rt.block_on(async {
        let settings = RaftSettings { snapshot_interval: 100_000, ..RaftSettings::default() };
        let (log_disk, state_disk) = (CrashableStorage::new(), CrashableStorage::new());
        let start = |log: CrashableStorage, state: CrashableStorage| {
            let settings = settings.clone();
            let state_name = state_name.clone();
            async move {
                let log = RedbLogStore::open_backend(Path::new("log.redb"), log).unwrap();
                let sm = RedbStateMachine::open_backend(&state_name, state).unwrap();
                let (raft, store) = RaftHandle::start_with(1, log, sm, &settings).await.unwrap();
                if !raft.is_initialized().await.unwrap() {
                    raft.initialize("127.0.0.1:2377").await.unwrap();
                }
                raft.wait_leader(Duration::from_secs(10)).await.unwrap();
                (raft, store)
            }
        };
        let (raft, store) = start(log_disk.clone(), state_disk.clone()).await;

        eprintln!("--- 1,300 writes: creates, then updates and deletes of what was created");
        // name → (replicas, version of its last write); None once deleted.
        let mut model: BTreeMap<String, Option<(u64, u64)>> = BTreeMap::new();
        let version_of = |store: &Store, n: &str| store.view(|v| v.service_by_name(n).map(|s| s.meta.version));
        for i in 0..700 {
            let s = swarm::testing::service(&format!("id-{i}"), &name(i), 1);
            store.update(|tx| Ok::<_, StoreError>(tx.create(s))).await.unwrap();
            model.insert(name(i), Some((1, version_of(&store, &name(i)).unwrap())));
        }
        for i in 0..600 {
            let n = name(i);
            let current = store.view(|v| v.service_by_name(&n).cloned()).unwrap();
            if i % 3 == 0 {
                store
                    .update(|tx| Ok::<_, StoreError>(tx.delete(ObjectKind::Service, &current.id, current.meta.version)))
                    .await
                    .unwrap();
                model.insert(n, None);
            } else {
                let mut s = current;
                s.spec.mode = swarm::api::ServiceMode::Replicated { replicas: 2 + i as u64 };
                store.update(|tx| Ok::<_, StoreError>(tx.update(s))).await.unwrap();
                model.insert(n.clone(), Some((2 + i as u64, version_of(&store, &n).unwrap())));
            }
        }

        eprintln!("--- the power goes; the running member never gets to close its files");
        let (log_after, state_after) = (log_disk.after_power_cut(), state_disk.after_power_cut());
        raft.shutdown().await;
        let applied_on_disk = {
            let sm = RedbStateMachine::open_backend(&state_name, state_after.clone()).unwrap();
            let n = sm.view().read(|v| v.services().count());
            sm.close().await;
            n
        };
        let live = model.values().filter(|v| v.is_some()).count();
        assert!(
            applied_on_disk != live,
            "the state file kept every change ({applied_on_disk} services), so nothing needs re-applying: \
             the test would prove nothing"
        );

        eprintln!("--- restart: every committed entry after the state's last sync is applied again");
        let (raft, store) = start(log_after, state_after).await;
        let mut metrics = raft.metrics();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let m = metrics.borrow().clone();
            if m.last_applied.map(|l| l.index) >= m.last_log_index && m.last_log_index.is_some() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "entries not re-applied: applied {:?}, log {:?}",
                m.last_applied,
                m.last_log_index
            );
            let _ = tokio::time::timeout(Duration::from_millis(200), metrics.changed()).await;
        }
        let got: BTreeMap<String, Option<(u64, u64)>> = model
            .keys()
            .map(|n| {
                let s = store.view(|v| v.service_by_name(n).cloned());
                let replicas = |s: &swarm::api::Service| match s.spec.mode {
                    swarm::api::ServiceMode::Replicated { replicas } => replicas,
                    _ => 0,
                };
                (n.clone(), s.map(|s| (replicas(&s), s.meta.version)))
            })
            .collect();
        let wrong: Vec<_> = model.iter().filter(|(n, want)| got[*n] != **want).take(5).collect();
        assert!(wrong.is_empty(), "after re-applying, these differ from what was committed (want): {wrong:?}");
        let total = store.view(|v| v.services().count());
        assert_eq!(total, live, "services present after recovery");
        raft.shutdown().await;
    });
}
