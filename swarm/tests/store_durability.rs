//! The store on disk: every committed object survives a SIGKILL of the process at any moment; snapshots are
//! taken and the log compacted behind them; a damaged file gives an error naming it; a new member gets the
//! snapshot file in chunks; a slow fsync does not stall the runtime.
//!
//! The writer runs in a child process (this same test binary, re-executed with `SHOAL_STORE_CHILD` set) so it
//! can be killed for real.

use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::storage::RaftLogStorage;
use openraft::BasicNode;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use swarm::manager::raft::{NodeId, RaftHandle, RaftSettings, RedbLogStore, RedbStateMachine, TypeConfig};
use swarm::manager::store::{SharedView, Store, StoreError};

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

/// A power cut (not a process kill: unsynced writes are lost): the state file keeps no object (there is no
/// snapshot), so the restarted member must re-apply every committed entry from the log, creates, updates and
/// deletes alike, each once and in order.
#[test]
fn committed_entries_are_reapplied_after_a_power_cut() {
    use swarm::api::ObjectKind;
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

/// Raft messages between members in this process: each call goes straight to the target's `Raft`. Records the
/// size of every snapshot chunk sent.
#[derive(Clone, Default)]
struct Router {
    members: Arc<Mutex<BTreeMap<NodeId, openraft::Raft<TypeConfig>>>>,
    chunks: Arc<Mutex<Vec<usize>>>,
}

struct Peer {
    router: Router,
    target: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for Router {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> Peer {
        Peer { router: self.clone(), target }
    }
}

impl Peer {
    fn raft<E: std::error::Error>(&self) -> Result<openraft::Raft<TypeConfig>, RPCError<NodeId, BasicNode, E>> {
        let members = self.router.members.lock().unwrap();
        members.get(&self.target).cloned().ok_or_else(|| {
            RPCError::Unreachable(Unreachable::new(&std::io::Error::other(format!("no member {}", self.target))))
        })
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let raft = self.raft()?;
        raft.append_entries(rpc).await.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.router.chunks.lock().unwrap().push(rpc.data.len());
        let raft = self.raft()?;
        raft.install_snapshot(rpc).await.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let raft = self.raft()?;
        raft.vote(rpc).await.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// The only `.snap` file in a Raft dir's snapshot directory.
fn snapshot_file(dir: &Path) -> PathBuf {
    let snaps: Vec<PathBuf> = std::fs::read_dir(dir.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "snap"))
        .collect();
    assert_eq!(snaps.len(), 1, "one snapshot file in {}: {snaps:?}", dir.display());
    snaps.into_iter().next().unwrap()
}

/// A member that joins after the log was purged gets the leader's snapshot file, sent by openraft in chunks of at
/// most 1 MiB into the file `begin_receiving_snapshot` made, and installs it.
#[test]
fn a_new_member_receives_the_snapshot_file_in_1mib_chunks() {
    const CHUNK: u64 = 1024 * 1024;
    const SERVICES: usize = 400;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    rt.block_on(async {
        let config = Arc::new(
            openraft::Config {
                cluster_name: "shoal-test".into(),
                heartbeat_interval: 100,
                election_timeout_min: 400,
                election_timeout_max: 600,
                snapshot_max_chunk_size: CHUNK,
                snapshot_policy: openraft::SnapshotPolicy::Never,
                max_in_snapshot_log_to_keep: 0,
                purge_batch_size: 1,
                ..Default::default()
            }
            .validate()
            .unwrap(),
        );
        let router = Router::default();
        let member = |id: NodeId, dir: PathBuf| {
            let (config, router) = (config.clone(), router.clone());
            async move {
                let log = RedbLogStore::open(&dir.join("log.redb")).unwrap();
                let sm = RedbStateMachine::open(&dir.join("state.redb")).unwrap();
                let view = sm.view();
                let raft = openraft::Raft::new(id, config, router.clone(), log, sm).await.unwrap();
                router.members.lock().unwrap().insert(id, raft.clone());
                (raft, view)
            }
        };
        let (leader, leader_view) = member(1, d1.path().to_path_buf()).await;
        leader.initialize(BTreeMap::from([(1, BasicNode { addr: "n1".into() })])).await.unwrap();
        leader.wait(Some(Duration::from_secs(10))).state(openraft::ServerState::Leader, "leader").await.unwrap();

        eprintln!("--- {SERVICES} services of ~4 KiB each: a snapshot of several chunks");
        let mut writes = tokio::task::JoinSet::new();
        for i in 0..SERVICES {
            let leader = leader.clone();
            let mut s = swarm::testing::service(&format!("id-{i}"), &name(i), 1);
            s.spec.annotations.labels.insert("filler".into(), "x".repeat(4096));
            writes.spawn(async move {
                let op = swarm::manager::store::Op::create(swarm::api::Object::Service(s));
                let p = swarm::manager::store::Proposal { ops: vec![op], timestamp: Default::default() };
                leader.client_write(p).await.map(|r| r.data.error)
            });
        }
        while let Some(r) = writes.join_next().await {
            assert_eq!(r.unwrap().unwrap(), None, "a create failed");
        }
        leader.trigger().snapshot().await.unwrap();
        let last = leader.metrics().borrow().last_applied;
        leader
            .wait(Some(Duration::from_secs(20)))
            .metrics(|m| m.snapshot == last && m.purged == last, "snapshot of every entry, log purged behind it")
            .await
            .unwrap();
        let sent = std::fs::read(snapshot_file(d1.path())).unwrap();
        assert!(sent.len() as u64 > CHUNK, "the snapshot ({} bytes) must span several chunks", sent.len());

        eprintln!("--- a new member joins: the log is gone, so it gets the snapshot");
        let (follower, follower_view) = member(2, d2.path().to_path_buf()).await;
        leader.add_learner(2, BasicNode { addr: "n2".into() }, true).await.unwrap();
        follower
            .wait(Some(Duration::from_secs(20)))
            .metrics(|m| m.snapshot == last && m.last_applied >= last, "the leader's snapshot installed")
            .await
            .unwrap();
        let chunks = router.chunks.lock().unwrap().clone();
        assert!(chunks.len() >= 2, "sent in {} chunk(s)", chunks.len());
        assert!(chunks.iter().all(|c| *c as u64 <= CHUNK), "a chunk exceeds 1 MiB: {chunks:?}");
        let got = std::fs::read(snapshot_file(d2.path())).unwrap();
        assert!(got == sent, "the installed file differs from the one sent");
        let services = |v: &Arc<SharedView>| v.read(|v| v.services().count());
        assert_eq!(services(&follower_view), SERVICES);
        assert_eq!(services(&leader_view), SERVICES);
        follower.shutdown().await.unwrap();
        leader.shutdown().await.unwrap();
    });
}

/// Storage whose next sync waits until the test releases it (or 5 s pass, which the test then reports): the test
/// can release it only if the runtime is not the thread stuck in the sync.
#[derive(Debug)]
struct GatedStorage {
    inner: redb::backends::InMemoryBackend,
    gate: Arc<Gate>,
}

#[derive(Debug, Default)]
struct Gate {
    state: Mutex<GateState>,
}

#[derive(Debug, Default)]
struct GateState {
    armed: Option<(tokio::sync::oneshot::Sender<()>, std::sync::mpsc::Receiver<()>)>,
    blocked: bool,
}

impl Gate {
    /// Stops the next sync: returns what tells the test it started and what releases it.
    fn arm(&self) -> (tokio::sync::oneshot::Receiver<()>, std::sync::mpsc::Sender<()>) {
        let (entered_tx, entered) = tokio::sync::oneshot::channel();
        let (release, release_rx) = std::sync::mpsc::channel();
        self.state.lock().unwrap().armed = Some((entered_tx, release_rx));
        (entered, release)
    }

    fn at_sync(&self) {
        let armed = self.state.lock().unwrap().armed.take();
        if let Some((entered, release)) = armed {
            let _ = entered.send(());
            if release.recv_timeout(Duration::from_secs(5)).is_err() {
                self.state.lock().unwrap().blocked = true;
            }
        }
    }

    fn blocked(&self) -> bool {
        self.state.lock().unwrap().blocked
    }
}

impl redb::StorageBackend for GatedStorage {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.gate.at_sync();
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.inner.write(offset, data)
    }
}

/// Runs `work` while `gate` holds up its next sync; fails if that sync held the runtime's only thread.
async fn through_gate<T: Send + 'static>(
    gate: &Gate,
    what: &str,
    work: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    let (entered, release) = gate.arm();
    let task = tokio::spawn(work);
    tokio::time::timeout(Duration::from_secs(30), entered)
        .await
        .unwrap_or_else(|_| panic!("{what}: no fsync within 30 s"))
        .unwrap();
    let _ = release.send(()); // fails if the sync gave up waiting: reported below
    let out = task.await.unwrap();
    assert!(!gate.blocked(), "{what}: its fsync ran on the runtime's only thread and blocked it");
    out
}

/// A slow fsync (vote and log writes, snapshots, purges) holds up only the operation waiting for it: on a
/// one-thread runtime, the test's own task still runs while a sync is in progress, so the commits are not made on
/// the runtime's thread.
#[test]
fn a_slow_fsync_does_not_block_the_runtime() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (log_gate, state_gate) = (Arc::new(Gate::default()), Arc::new(Gate::default()));
    rt.block_on(async {
        let storage = |gate: &Arc<Gate>| GatedStorage { inner: Default::default(), gate: gate.clone() };
        let log = RedbLogStore::open_backend(Path::new("log.redb"), storage(&log_gate)).unwrap();
        let sm = RedbStateMachine::open_backend(&dir.path().join("state.redb"), storage(&state_gate)).unwrap();
        let (raft, store) = RaftHandle::start_with(1, log, sm, &settings()).await.unwrap();

        // The vote and the committed index (openraft saves them on elections and commits), saved directly.
        let direct_gate = Arc::new(Gate::default());
        let direct = RedbLogStore::open_backend(Path::new("direct.redb"), storage(&direct_gate)).unwrap();
        let mut l = direct.clone();
        through_gate(&direct_gate, "a vote save", async move {
            l.save_vote(&openraft::Vote::new(1, 1)).await.unwrap();
        })
        .await;
        let mut l = direct.clone();
        through_gate(&direct_gate, "a committed index save", async move {
            l.save_committed(Some(openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), 3))).await.unwrap();
        })
        .await;
        direct.close().await;

        let r = raft.clone();
        through_gate(&log_gate, "initialize (vote, membership entry)", async move {
            r.initialize("127.0.0.1:2377").await.unwrap();
        })
        .await;
        raft.wait_leader(Duration::from_secs(10)).await.unwrap();

        let s = store.clone();
        through_gate(&log_gate, "a log append", async move {
            let svc = swarm::testing::service("id-0", &name(0), 1);
            s.update(|tx| Ok::<_, StoreError>(tx.create(svc))).await.unwrap();
        })
        .await;

        // Enough writes for a snapshot worth purging behind (applying them syncs nothing but the log).
        let mut writes = tokio::task::JoinSet::new();
        for i in 1..=1_100 {
            let s = store.clone();
            writes.spawn(async move {
                let svc = swarm::testing::service(&format!("id-{i}"), &name(i), 1);
                s.update(|tx| Ok::<_, StoreError>(tx.create(svc))).await.unwrap();
            });
            if writes.len() >= 32 {
                writes.join_next().await.unwrap().unwrap();
            }
        }
        while let Some(r) = writes.join_next().await {
            r.unwrap();
        }

        // The snapshot's commit syncs the state; the purge behind it then syncs the log.
        let (purge_entered, purge_release) = log_gate.arm();
        let r = raft.clone();
        through_gate(&state_gate, "a snapshot", async move {
            r.snapshot().await.unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            while r.snapshot_index().is_none() {
                assert!(Instant::now() < deadline, "the snapshot was never stored");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        tokio::time::timeout(Duration::from_secs(30), purge_entered)
            .await
            .expect("the log was not purged behind the snapshot within 30 s")
            .unwrap();
        let _ = purge_release.send(());
        let deadline = Instant::now() + Duration::from_secs(10);
        while raft.log_len() > 1_000 {
            assert!(Instant::now() < deadline, "the log still holds {} entries", raft.log_len());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!log_gate.blocked(), "the purge's fsync ran on the runtime's only thread and blocked it");
        assert_eq!(store.view(|v| v.services().count()), 1_101);
        raft.shutdown().await;
    });
}
