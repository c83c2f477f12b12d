//! Autolock in one process: real Raft, real mTLS, `TestExecutor`s. A manager of a swarm made with `--autolock`
//! keeps its data key and TLS key wrapped with the unlock key (nothing in clear on disk, the unlock key itself
//! only sealed in the Raft files); restarted, it stays locked — control calls refused with Docker's message —
//! until `swarm unlock` with the right key, then runs its services as before. With three managers, turning
//! autolock on and rotating the key re-wraps every manager's files; a restarted one opens only with the new key.

use std::path::Path;
use std::time::Duration;
use swarm::api::control::*;
use swarm::api::membership::SwarmInitRequest;
use swarm::api::{NodeRole, TaskState};
use swarm::manager::controlapi::{ControlApi, SWARM_LOCKED};
use swarm::manager::datakey::{DataKey, UnlockKey};
use swarm::node::{NodeError, SwarmNode};
use swarm::testing::TestExecutor;
use swarm::transport::control::control_server::Control;
use tonic::Request;

mod common;
use common::*;

type Node = SwarmNode<TestExecutor>;

fn data_key_file(dir: &Path) -> std::path::PathBuf {
    dir.join("swarm").join("data.key")
}

fn node_key_file(dir: &Path) -> std::path::PathBuf {
    dir.join("swarm").join("certificates").join("swarm-node.key")
}

fn running(node: &Node, service_id: &str) -> usize {
    node.store().unwrap().view(|v| {
        v.tasks_by_service(service_id)
            .filter(|t| t.desired_state == TaskState::Running && t.status.state == TaskState::Running)
            .count()
    })
}

async fn wait_running(node: &Node, service_id: &str, n: usize) {
    wait_for(&format!("{n} running tasks of {service_id}"), || match running(node, service_id) {
        r if r == n => Ok(()),
        r => Err(format!("{r} running")),
    })
    .await;
}

/// `swarm update --autolock=<on>` or `unlock-key --rotate` through `api`.
async fn update_autolock(api: &ControlApi, on: bool, rotate: bool) -> Result<(), tonic::Status> {
    let cluster = api.get_cluster(Request::new(Empty {})).await?.into_inner().cluster;
    assert!(cluster.unlock_key.is_empty(), "GetCluster never returns the unlock key");
    let mut spec = cluster.spec;
    spec.encryption_config.auto_lock_managers = on;
    let req = UpdateClusterRequest { version: cluster.meta.version, spec, rotate_unlock_key: rotate };
    api.update_cluster(Request::new(req)).await.map(|_| ())
}

/// Whether the manager under `dir` has both key files wrapped with `key` (and so with no other key).
fn wrapped_with(dir: &Path, key: &UnlockKey) -> bool {
    let certs = dir.join("swarm").join("certificates");
    DataKey::is_wrapped(&data_key_file(dir))
        && swarm::ca::NodeIdentity::key_is_wrapped(&certs)
        && DataKey::load_wrapped(&data_key_file(dir), Some(key)).is_ok_and(|k| k.is_some())
        && swarm::ca::NodeIdentity::load_wrapped(&certs, Some(key)).is_ok()
}

/// Neither key file holds its key in clear: the data key's text and a PEM private key are absent.
fn assert_no_plain_keys(dir: &Path) {
    let data = std::fs::read_to_string(data_key_file(dir)).unwrap();
    assert!(DataKey::is_wrapped(&data_key_file(dir)) && !data.contains("SHOALDEK-1-"), "data.key in clear: {data}");
    let key = std::fs::read_to_string(node_key_file(dir)).unwrap();
    assert!(!key.contains("BEGIN PRIVATE KEY") && !key.contains("BEGIN EC PRIVATE KEY"), "TLS key in clear: {key}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_manager_waits_for_its_key_and_then_runs_as_before() {
    let dir = tempfile::tempdir().unwrap();
    let exec = TestExecutor::new("host-a");
    let node = new_node(dir.path(), &exec);

    step("swarm init --autolock: the key files are wrapped at once");
    node.init(SwarmInitRequest { listen_addr: "127.0.0.1:0".into(), autolock: true, ..Default::default() })
        .await
        .unwrap();
    let key_text = node.unlock_key().unwrap();
    let key = UnlockKey::from_text(&key_text).expect("unlock-key prints a SWMKEY-1- key");
    assert_no_plain_keys(dir.path());
    assert!(wrapped_with(dir.path(), &key));
    let raft_dir = dir.path().join("swarm").join("raft");
    assert_eq!(files_holding(&raft_dir, key_text.as_bytes()), Vec::<String>::new(), "the unlock key in clear in Raft");
    assert_eq!(files_holding(&raft_dir, &key_text.as_bytes()[9..]), Vec::<String>::new());

    step("a service with 2 replicas runs; its spec is in no Raft file in clear, nor in a snapshot");
    let api = node.control_api();
    let mut spec = swarm::testing::service("", "web", 2).spec;
    let marker = "spec-value-only-the-managers-may-read";
    spec.annotations.labels.insert("marker".into(), marker.into());
    let svc = api.create_service(Request::new(CreateServiceRequest { spec })).await.unwrap().into_inner();
    wait_running(&node, &svc.id, 2).await;
    let raft = node.raft().await.unwrap();
    raft.snapshot().await.unwrap();
    wait_for("a snapshot", || raft.snapshot_index().map(|_| ()).ok_or_else(|| "none yet".to_string())).await;
    let snapshots: Vec<_> = std::fs::read_dir(raft_dir.join("snapshots")).unwrap().flatten().collect();
    assert!(!snapshots.is_empty(), "a snapshot file was written");
    assert_eq!(files_holding(&raft_dir, marker.as_bytes()), Vec::<String>::new(), "a spec in clear in Raft's files");
    assert_eq!(files_holding(&raft_dir, svc.id.as_bytes()), Vec::<String>::new(), "an object id in clear");

    step("restart: locked, control calls and swarm commands refused with Docker's message");
    node.shutdown().await;
    drop(node);
    let node = new_node(dir.path(), &exec);
    assert!(node.resume().await.unwrap(), "still a member");
    let info = node.info().await;
    assert_eq!((info.local_node_state.as_str(), info.is_manager), ("locked", false));
    assert!(!info.node_id.is_empty());
    assert!(node.store().is_none() && node.raft().await.is_none(), "nothing runs while locked");
    let e = node.control_api().list_services(Request::new(Default::default())).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (tonic::Code::FailedPrecondition, SWARM_LOCKED));
    assert!(SWARM_LOCKED.contains("Please use \"shoal swarm unlock\" to unlock it."));
    let e = node.rotate_join_token(NodeRole::Worker).await.unwrap_err();
    assert_eq!(e.to_string(), SWARM_LOCKED);
    assert_eq!(node.unlock_key().unwrap_err().to_string(), SWARM_LOCKED);

    step("a wrong key and a malformed one are refused; nothing changes");
    let before = (std::fs::read(data_key_file(dir.path())).unwrap(), std::fs::read(node_key_file(dir.path())).unwrap());
    let e = node.unlock(&UnlockKey::generate().to_text()).await.unwrap_err();
    assert!(matches!(e, NodeError::InvalidUnlockKey), "{e:?}");
    assert_eq!(e.to_string(), "swarm could not be unlocked: invalid key provided");
    let e = node.unlock("SWMTKN-1-not-a-key").await.unwrap_err();
    assert!(matches!(e, NodeError::InvalidArgument(_)) && e.to_string().contains("SWMKEY-1-"), "{e:?}");
    let after = (std::fs::read(data_key_file(dir.path())).unwrap(), std::fs::read(node_key_file(dir.path())).unwrap());
    assert_eq!(before, after, "a failed unlock rewrote the key files");
    assert_eq!(node.info().await.local_node_state, "locked");

    step("the right key: the manager and its service run as before");
    node.unlock(&format!("  {key_text}\n")).await.expect("unlock with the right key");
    assert!(matches!(node.unlock(&key_text).await.unwrap_err(), NodeError::NotLocked));
    wait_running(&node, &svc.id, 2).await;
    let api = node.control_api();
    let got = api.get_service(Request::new(GetRequest { id_or_name: "web".into() })).await.unwrap().into_inner();
    assert_eq!(got.id, svc.id);
    assert_eq!(node.unlock_key().unwrap(), key_text, "the same key");
    assert_no_plain_keys(dir.path());

    step("--autolock=false: the files are re-written in clear, a restart is not locked");
    update_autolock(&api, false, false).await.unwrap();
    wait_for("data.key in clear", || match DataKey::is_wrapped(&data_key_file(dir.path())) {
        false if !swarm::ca::NodeIdentity::key_is_wrapped(&dir.path().join("swarm").join("certificates")) => Ok(()),
        _ => Err("still wrapped".into()),
    })
    .await;
    assert_eq!(node.unlock_key().unwrap(), "", "no unlock key without autolock");
    let e = update_autolock(&api, false, true).await.unwrap_err();
    assert_eq!(e.message(), "cannot rotate because autolock is not turned on");
    node.shutdown().await;
    drop(node);
    let node = new_node(dir.path(), &exec);
    assert!(node.resume().await.unwrap());
    assert_ne!(node.info().await.local_node_state, "locked");
    wait_running(&node, &svc.id, 2).await;
    node.leave(true).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autolock_and_rotation_reach_every_manager() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let execs: Vec<_> = (0..3).map(|i| TestExecutor::new(&format!("host-{i}"))).collect();
    let (m0, addr0) = init(dirs[0].path(), &execs[0], None).await;
    let token = manager_token(&m0);
    let m1 = join_manager(dirs[1].path(), &execs[1], &addr0, &token).await;
    let m2 = join_manager(dirs[2].path(), &execs[2], &addr0, &token).await;
    let api = m1.control_api();

    step("swarm update --autolock=true on a follower: every manager wraps its files with the one key");
    update_autolock(&api, true, false).await.unwrap();
    let key1 = m0.unlock_key().unwrap();
    let k1 = UnlockKey::from_text(&key1).unwrap();
    for (i, d) in dirs.iter().enumerate() {
        wait_for(&format!("manager {i} wrapped with the key"), || {
            wrapped_with(d.path(), &k1).then_some(()).ok_or_else(|| "not yet".to_string())
        })
        .await;
        assert_no_plain_keys(d.path());
    }
    for m in [&m1, &m2] {
        wait_for("the key reaches every manager", || match m.unlock_key() {
            Ok(k) if k == key1 => Ok(()),
            other => Err(format!("{other:?}")),
        })
        .await;
    }

    step("unlock-key --rotate: every manager re-wraps with the new key; the old one opens nothing");
    update_autolock(&api, true, true).await.unwrap();
    let key2 = m0.unlock_key().unwrap();
    assert_ne!(key2, key1);
    let k2 = UnlockKey::from_text(&key2).unwrap();
    for (i, d) in dirs.iter().enumerate() {
        wait_for(&format!("manager {i} re-wrapped"), || {
            wrapped_with(d.path(), &k2).then_some(()).ok_or_else(|| "not yet".to_string())
        })
        .await;
        assert!(!wrapped_with(d.path(), &k1), "manager {i} still opens with the old key");
    }

    step("a restarted manager is locked, refuses the old key, opens with the new one and rejoins");
    m2.shutdown().await;
    drop(m2);
    let m2 = new_node(dirs[2].path(), &execs[2]);
    assert!(m2.resume().await.unwrap());
    assert_eq!(m2.info().await.local_node_state, "locked");
    assert!(matches!(m2.unlock(&key1).await.unwrap_err(), NodeError::InvalidUnlockKey));
    m2.unlock(&key2).await.expect("the rotated key unlocks");
    let spec = swarm::testing::service("", "after", 1).spec;
    let svc = api.create_service(Request::new(CreateServiceRequest { spec })).await.unwrap().into_inner();
    wait_for("the restarted manager applies new writes", || match m2.store() {
        Some(s) if s.view(|v| v.service(&svc.id).is_some()) => Ok(()),
        _ => Err("not yet".into()),
    })
    .await;
    assert_eq!(m2.unlock_key().unwrap(), key2);
    tokio::time::sleep(Duration::from_millis(10)).await;
    for m in [m2, m1, m0] {
        m.shutdown().await;
    }
}
