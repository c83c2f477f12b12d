//! The state machine's snapshots: files on disk, built without stalling apply, installed in one step, never
//! replaced by an older build, refused when damaged, and bounded in number.

use super::*;
use crate::manager::store::{Op, Proposal};
use crate::testing::CrashableStorage;
use openraft::CommittedLeaderId;
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::io::AsyncReadExt;

fn log_id(index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

/// Entries `from..=to`, each creating the service `<prefix>-<index>`.
fn creates(prefix: &str, from: u64, to: u64) -> Vec<Entry<TypeConfig>> {
    (from..=to)
        .map(|i| {
            let s = crate::testing::service(&format!("{prefix}-{i}"), &format!("{prefix}-{i}"), 1);
            Entry {
                log_id: log_id(i),
                payload: EntryPayload::Normal(Proposal {
                    ops: vec![Op::create(Object::Service(s))],
                    timestamp: Default::default(),
                }),
            }
        })
        .collect()
}

fn names(sm: &RedbStateMachine) -> BTreeSet<String> {
    sm.view().read(|v| v.services().map(|s| s.spec.annotations.name.clone()).collect())
}

fn expected(prefix: &str, from: u64, to: u64) -> BTreeSet<String> {
    (from..=to).map(|i| format!("{prefix}-{i}")).collect()
}

/// The file names in the snapshot directory, sorted.
fn files(sm: &RedbStateMachine) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(sm.snapshot_dir()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names
}

fn open_in(dir: &Path) -> RedbStateMachine {
    RedbStateMachine::open(&dir.join("state.redb")).unwrap()
}

async fn build(sm: &mut RedbStateMachine) -> Snapshot<TypeConfig> {
    sm.get_snapshot_builder().await.build_snapshot().await.unwrap()
}

async fn bytes_of(snapshot: Snapshot<TypeConfig>) -> Vec<u8> {
    let mut data = Vec::new();
    let mut file = snapshot.snapshot;
    file.read_to_end(&mut data).await.unwrap();
    data
}

/// Sends `bytes` the way openraft's receiver does: into the file `begin_receiving_snapshot` made, in chunks.
async fn install_bytes(sm: &mut RedbStateMachine, meta: &Meta, bytes: &[u8]) -> StResult<()> {
    let mut file = sm.begin_receiving_snapshot().await?;
    for chunk in bytes.chunks(64 * 1024) {
        file.write_all(chunk).await.unwrap();
    }
    sm.install_snapshot(meta, file).await
}

/// `source`'s current snapshot, installed on `target`.
async fn install_from(target: &mut RedbStateMachine, source: &mut RedbStateMachine) -> StResult<()> {
    let snap = source.get_current_snapshot().await?.expect("the source has a snapshot");
    let meta = snap.meta.clone();
    install_bytes(target, &meta, &bytes_of(snap).await).await
}

#[tokio::test]
async fn a_snapshot_is_a_versioned_file_in_the_snapshot_dir() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = open_in(dir.path());
    sm.apply(creates("a", 1, 50)).await.unwrap();
    let snap = build(&mut sm).await;
    assert_eq!(snap.meta.last_log_id, Some(log_id(50)));
    let meta = snap.meta.clone();
    let data = bytes_of(snap).await;

    assert_eq!(sm.snapshot_dir(), dir.path().join("snapshots"));
    let snaps = files(&sm);
    assert!(snaps.len() == 1 && snaps[0].ends_with(".snap"), "one snapshot file in snapshots/: {snaps:?}");
    let on_disk = std::fs::read(sm.snapshot_dir().join(&snaps[0])).unwrap();
    assert_eq!(data, on_disk, "the snapshot handed to openraft is the file");
    assert!(on_disk.starts_with(b"{\"format\":2,"), "the file starts with its format version");
    let mut objects = 0;
    snapshot_file::read(&sm.snapshot_dir().join(&snaps[0]), &Default::default(), |_| objects += 1).unwrap();
    assert_eq!(objects, 50, "one record per object");

    sm.close().await;
    let mut sm = open_in(dir.path());
    assert_eq!(sm.snapshot_meta().unwrap(), Some(meta.clone()), "the snapshot is recorded across a restart");
    let again = sm.get_current_snapshot().await.unwrap().expect("a current snapshot");
    assert_eq!(bytes_of(again).await, data);
}

#[tokio::test]
async fn building_a_snapshot_does_not_stall_apply() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = open_in(dir.path());
    sm.apply(creates("a", 1, 10)).await.unwrap();
    let pause = sm.pause_next_snapshot_build();
    let mut builder = sm.get_snapshot_builder().await;
    let building = tokio::spawn(async move { builder.build_snapshot().await });
    tokio::time::timeout(Duration::from_secs(10), pause.reached)
        .await
        .expect("the build never got to encoding")
        .unwrap();

    // The build is now between its copy of the state and its file: applying must go on.
    tokio::time::timeout(Duration::from_secs(10), sm.apply(creates("a", 11, 20)))
        .await
        .expect("apply waited for the snapshot being built")
        .unwrap();
    assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(20)));

    pause.release.send(()).unwrap();
    let snap = building.await.unwrap().unwrap();
    assert_eq!(snap.meta.last_log_id, Some(log_id(10)), "the snapshot is the state its build copied");
    let file = dir.path().join("from-build.snap");
    std::fs::write(&file, bytes_of(snap).await).unwrap();
    let mut objects = 0;
    snapshot_file::read(&file, &Default::default(), |_| objects += 1).unwrap();
    assert_eq!(objects, 10, "the 10 objects of index 10, not those applied during the build");
}

#[tokio::test]
async fn a_build_that_finishes_after_a_newer_install_is_discarded() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut a, mut b) = (open_in(da.path()), open_in(db.path()));
    a.apply(creates("a", 1, 10)).await.unwrap();
    b.apply(creates("b", 1, 30)).await.unwrap();
    build(&mut b).await;

    let pause = a.pause_next_snapshot_build();
    let mut builder = a.get_snapshot_builder().await;
    let building = tokio::spawn(async move { builder.build_snapshot().await });
    tokio::time::timeout(Duration::from_secs(10), pause.reached).await.expect("the build never started").unwrap();
    tokio::time::timeout(Duration::from_secs(10), install_from(&mut a, &mut b))
        .await
        .expect("the install waited for the paused build")
        .unwrap();
    pause.release.send(()).unwrap();
    let built = building.await.unwrap().unwrap();

    assert_eq!(built.meta.last_log_id, Some(log_id(30)), "the build hands openraft the newer, installed snapshot");
    let stored = a.snapshot_meta().unwrap().expect("a snapshot is stored");
    assert_eq!(stored.last_log_id, Some(log_id(30)), "the older build replaced the installed snapshot");
    assert_eq!(names(&a), expected("b", 1, 30));
    assert_eq!(a.applied_state().await.unwrap().0, Some(log_id(30)));
    let snaps = files(&a);
    assert_eq!(snaps.len(), 1, "only the installed snapshot's file is left: {snaps:?}");
    let on_disk = snapshot_file::verify(&a.snapshot_dir().join(&snaps[0])).unwrap();
    assert_eq!(on_disk, stored, "the file is the installed snapshot");

    a.close().await;
    let a = open_in(da.path());
    assert_eq!(a.snapshot_meta().unwrap().and_then(|m| m.last_log_id), Some(log_id(30)));
    assert_eq!(names(&a), expected("b", 1, 30));
}

/// What a reopened state machine holds: its services, last applied index, and its snapshot as recorded and as
/// found in its (only) file.
async fn state_of(sm: &mut RedbStateMachine) -> (BTreeSet<String>, Option<u64>, Option<u64>, Option<u64>) {
    let applied = sm.applied_state().await.unwrap().0.map(|l| l.index);
    let recorded = sm.snapshot_meta().unwrap().and_then(|m| m.last_log_id).map(|l| l.index);
    let snaps: Vec<String> = files(sm).into_iter().filter(|f| f.ends_with(".snap")).collect();
    assert!(snaps.len() <= 1, "leftover snapshot files after reopening: {snaps:?}");
    let in_file = snaps.first().map(|f| {
        let mut objects = 0;
        let meta = snapshot_file::read(&sm.snapshot_dir().join(f), &Default::default(), |_| objects += 1).unwrap();
        meta.last_log_id.unwrap().index
    });
    (names(sm), applied, recorded, in_file)
}

#[tokio::test]
async fn an_install_cut_short_at_any_step_leaves_the_old_state_or_the_new() {
    let root = tempfile::tempdir().unwrap();
    let disk = CrashableStorage::new();
    let mut a = RedbStateMachine::open_backend(&root.path().join("a/state.redb"), disk.clone()).unwrap();
    a.apply(creates("a", 1, 10)).await.unwrap();
    build(&mut a).await;
    let mut b = open_in(&root.path().join("b"));
    b.apply(creates("b", 1, 30)).await.unwrap();
    build(&mut b).await;

    // At each step, what a power cut would leave: redb's synced bytes and the snapshot directory's files.
    let crashes = Arc::new(std::sync::Mutex::new(Vec::new()));
    {
        let (crashes, disk, root) = (crashes.clone(), disk.clone(), root.path().to_path_buf());
        let from = a.snapshot_dir().to_path_buf();
        a.on_install_step(move |step| {
            let to = root.join(format!("crash-{step}/snapshots"));
            std::fs::create_dir_all(&to).unwrap();
            for f in std::fs::read_dir(&from).unwrap() {
                let f = f.unwrap();
                std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
            }
            crashes.lock().unwrap().push((step, disk.after_power_cut(), to.parent().unwrap().join("state.redb")));
        });
    }
    install_from(&mut a, &mut b).await.unwrap();

    let crashes = std::mem::take(&mut *crashes.lock().unwrap());
    let steps: Vec<&str> = crashes.iter().map(|c| c.0).collect();
    assert_eq!(steps, ["file-in-place", "committed", "old-files-removed"]);
    let old = (expected("a", 1, 10), Some(10), Some(10), Some(10));
    let new = (expected("b", 1, 30), Some(30), Some(30), Some(30));
    for (step, disk, name) in crashes {
        let mut sm = RedbStateMachine::open_backend(&name, disk).unwrap();
        let got = state_of(&mut sm).await;
        let want = if step == "file-in-place" { &old } else { &new };
        assert!(got == *want, "power cut after {step}: want {want:?}, got {got:?}");
        sm.close().await;
    }
}

#[tokio::test]
async fn a_damaged_snapshot_is_refused_naming_the_file_and_changes_nothing() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut a, mut b) = (open_in(da.path()), open_in(db.path()));
    a.apply(creates("a", 1, 10)).await.unwrap();
    let before = bytes_of(build(&mut a).await).await;
    b.apply(creates("b", 1, 30)).await.unwrap();
    let snap = build(&mut b).await;
    let meta = snap.meta.clone();
    let good = bytes_of(snap).await;

    // In a record (MessagePack), the id is a length byte then its bytes.
    let at = good.windows(5).position(|w| w == b"\xa4b-17").expect("b-17 in the file");
    let altered = [&good[..at], b"\xa4b-99".as_slice(), &good[at + 5..]].concat();
    assert_ne!(altered, good);
    let cases = [
        ("cut short", good[..good.len() / 2].to_vec(), "truncated"),
        ("altered", altered, "checksum"),
        ("garbage", b"hello\n".to_vec(), "corrupt"),
    ];
    for (what, bytes, says) in cases {
        let err = install_bytes(&mut a, &meta, &bytes).await.expect_err(what).to_string();
        assert!(
            err.contains(&a.snapshot_dir().join("recv-").display().to_string()),
            "{what}: the error names the received file: {err}"
        );
        assert!(err.contains(says), "{what}: the error says {says:?}: {err}");
        assert_eq!(names(&a), expected("a", 1, 10), "{what}: objects changed");
        assert_eq!(a.applied_state().await.unwrap().0, Some(log_id(10)), "{what}: last applied changed");
        assert_eq!(a.snapshot_meta().unwrap().and_then(|m| m.last_log_id), Some(log_id(10)), "{what}");
        let current = a.get_current_snapshot().await.unwrap().expect("the old snapshot is still there");
        assert_eq!(bytes_of(current).await, before, "{what}: the current snapshot file changed");
    }
    install_bytes(&mut a, &meta, &good).await.expect("the intact snapshot installs");
    assert_eq!(names(&a), expected("b", 1, 30));
    assert_eq!(files(&a).len(), 1, "the rejected received files are gone: {:?}", files(&a));
}

/// What survives a restart is the snapshot: the entries applied after it are the log's, which openraft applies
/// again at start.
#[tokio::test]
async fn a_restarted_state_is_its_snapshot_and_writes_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = open_in(dir.path());
    sm.apply(creates("a", 1, 10)).await.unwrap();
    sm.close().await;
    drop(sm);
    let mut sm = open_in(dir.path());
    assert_eq!(names(&sm), BTreeSet::new(), "without a snapshot, a restart starts from nothing");
    assert_eq!(sm.applied_state().await.unwrap().0, None, "so openraft applies the whole log again");

    sm.apply(creates("a", 1, 10)).await.unwrap();
    build(&mut sm).await;
    sm.apply(creates("a", 11, 12)).await.unwrap();
    sm.close().await;
    drop(sm);
    let mut sm = open_in(dir.path());
    assert_eq!(names(&sm), expected("a", 1, 10), "the snapshot's objects");
    assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(10)), "the log applies 11 and 12 again");
    let db = sm.db.get().unwrap();
    let tx = db.begin_read().unwrap();
    assert!(tx.open_table(OBJECTS).unwrap().is_empty().unwrap(), "no object is written to state.redb");
    assert!(tx.open_table(META).unwrap().get(KEY_APPLIED).unwrap().is_none());
}

#[tokio::test]
async fn a_damaged_current_snapshot_is_refused_at_start_naming_it_and_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = open_in(dir.path());
    sm.apply(creates("a", 1, 10)).await.unwrap();
    build(&mut sm).await;
    let name = files(&sm).pop().unwrap();
    let path = sm.snapshot_dir().join(&name);
    sm.close().await;
    drop(sm);
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(len - 10).unwrap();

    let e = RedbStateMachine::open(&dir.path().join("state.redb")).err().expect("a damaged snapshot is refused");
    let e = e.to_string();
    assert!(e.contains(&path.display().to_string()), "the error names the file: {e}");
    assert!(e.contains("truncated") || e.contains("corrupt"), "the error says what is wrong: {e}");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), len - 10, "the file is kept as it is, for inspection");
    assert_eq!(std::fs::read_dir(dir.path().join("snapshots")).unwrap().count(), 1);
}

#[tokio::test]
async fn old_snapshot_files_are_removed_once_a_newer_one_is_stored() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut a, mut b) = (open_in(da.path()), open_in(db.path()));
    for round in 1..=3u64 {
        a.apply(creates("a", round * 10 - 9, round * 10)).await.unwrap();
        build(&mut a).await;
        let f = files(&a);
        assert!(f.len() == 1 && f[0].ends_with(".snap"), "after build {round}: {f:?}");
    }
    b.apply(creates("b", 1, 40)).await.unwrap();
    build(&mut b).await;
    install_from(&mut a, &mut b).await.unwrap();
    let f = files(&a);
    assert!(f.len() == 1 && f[0].ends_with(".snap"), "after an install: {f:?}");

    // Leftovers of a crash (a file put in place but never recorded, temporaries) go at the next start.
    a.close().await;
    for stale in ["00000000000000000099-0000000000000000.snap", "build-1.tmp", "recv-2.tmp"] {
        std::fs::write(da.path().join("snapshots").join(stale), b"x").unwrap();
    }
    let a = open_in(da.path());
    assert_eq!(files(&a), f, "only the recorded snapshot is kept");
}

#[tokio::test]
async fn a_snapshot_kept_inside_state_redb_by_an_older_release_is_moved_to_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = open_in(dir.path());
    sm.apply(creates("a", 1, 5)).await.unwrap();
    let meta = build(&mut sm).await.meta;
    sm.close().await;

    // The older layout: the snapshot's bytes in state.redb, no file. Its objects differ from those applied, to
    // tell which ones the file and the state are made of.
    let old: Vec<Object> = creates("old", 1, 3)
        .into_iter()
        .map(|e| match e.payload {
            EntryPayload::Normal(mut p) => match p.ops.remove(0) {
                Op::Create(o) => *o,
                _ => unreachable!(),
            },
            _ => unreachable!(),
        })
        .collect();
    {
        let db = redb::Database::create(dir.path().join("state.redb")).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut t = tx.open_table(SNAPSHOT).unwrap();
            t.remove(KEY_SNAP_FILE).unwrap();
            let doc = serde_json::json!({
                "last_applied": meta.last_log_id,
                "membership": meta.last_membership,
                "objects": old,
            });
            t.insert(KEY_SNAP_DATA, encode(&doc).as_slice()).unwrap();
        }
        tx.commit().unwrap();
    }
    for f in std::fs::read_dir(dir.path().join("snapshots")).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }

    let sm = open_in(dir.path());
    assert_eq!(sm.snapshot_meta().unwrap(), Some(meta.clone()), "the snapshot is still the current one");
    let snaps = files(&sm);
    assert!(snaps.len() == 1 && snaps[0].ends_with(".snap"), "the snapshot was written out as a file: {snaps:?}");
    let mut got = BTreeSet::new();
    let in_file = snapshot_file::read(&sm.snapshot_dir().join(&snaps[0]), &Default::default(), |o| {
        got.insert(o.id().to_string());
    })
    .unwrap();
    assert_eq!(in_file, meta);
    assert_eq!(got, expected("old", 1, 3), "the file holds the snapshot's objects");
    assert_eq!(names(&sm), expected("old", 1, 3), "the state is the snapshot's");
    sm.close().await;
    let db = redb::Database::create(dir.path().join("state.redb")).unwrap();
    let tx = db.begin_read().unwrap();
    assert!(tx.open_table(SNAPSHOT).unwrap().get(KEY_SNAP_DATA).unwrap().is_none(), "the bytes left state.redb");
}

/// With a data key, objects rest sealed in snapshot files (names and ids included); a snapshot written in clear
/// by an older swarm is read, and the next snapshot is sealed; a manager without the key cannot read it, and a
/// manager with the same key installs its snapshots.
#[tokio::test]
async fn with_a_data_key_objects_rest_sealed_and_a_clear_snapshot_is_read() {
    use crate::manager::datakey::DataKey;
    let key = DataKey::generate();
    let sealed = || AtRest::sealed_with(Some(key.clone()));
    let dir = tempfile::tempdir().unwrap();

    // An older swarm's snapshot, in clear.
    let mut sm = open_in(dir.path());
    sm.apply(creates("clear", 1, 20)).await.unwrap();
    build(&mut sm).await;
    sm.close().await;
    drop(sm);
    assert!(!holding(dir.path(), "clear-7").is_empty(), "the test writes a snapshot in clear first");

    let mut sm = RedbStateMachine::open_with(&dir.path().join("state.redb"), sealed()).unwrap();
    assert_eq!(names(&sm), expected("clear", 1, 20), "the clear snapshot reads with a key");
    sm.apply(creates("new", 21, 40)).await.unwrap();
    build(&mut sm).await;
    sm.close().await;
    drop(sm);
    let sm = RedbStateMachine::open_with(&dir.path().join("state.redb"), sealed()).unwrap();
    let mut all = expected("clear", 1, 20);
    all.extend(expected("new", 21, 40));
    assert_eq!(names(&sm), all, "nothing lost or doubled by sealing");
    for name in ["clear-7", "new-23"] {
        assert_eq!(holding(dir.path(), name), Vec::<String>::new(), "{name} in clear");
    }
    let snaps = files(&sm);
    let mut sealed_records = 0;
    snapshot_file::read(&sm.snapshot_dir().join(&snaps[0]), &sealed(), |_| sealed_records += 1).unwrap();
    assert_eq!(sealed_records, 40, "every object in the snapshot, read back with the key");
    sm.close().await;
    drop(sm);

    // Without the key the state cannot be read, and says why.
    let e = RedbStateMachine::open(&dir.path().join("state.redb")).err().expect("refused without the key");
    assert!(e.to_string().contains("no data key"), "{e}");

    // Another manager with the same key installs the sealed snapshot.
    let mut source = RedbStateMachine::open_with(&dir.path().join("state.redb"), sealed()).unwrap();
    let other = tempfile::tempdir().unwrap();
    let mut target = RedbStateMachine::open_with(&other.path().join("state.redb"), sealed()).unwrap();
    install_from(&mut target, &mut source).await.unwrap();
    assert_eq!(names(&target), all);
    let elsewhere = tempfile::tempdir().unwrap();
    let stranger_key = AtRest::sealed_with(Some(DataKey::generate()));
    let mut stranger = RedbStateMachine::open_with(&elsewhere.path().join("state.redb"), stranger_key).unwrap();
    let e = install_from(&mut stranger, &mut source).await.unwrap_err();
    assert!(e.to_string().contains("another data key"), "{e}");
}

/// The files under `dir` (`state.redb` and the snapshot directory's) whose bytes hold `needle`.
fn holding(dir: &Path, needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for p in [dir.join("state.redb")]
        .into_iter()
        .chain(std::fs::read_dir(dir.join("snapshots")).unwrap().map(|e| e.unwrap().path()))
    {
        if std::fs::read(&p).unwrap().windows(needle.len()).any(|w| w == needle.as_bytes()) {
            out.push(p.display().to_string());
        }
    }
    out
}

/// Releases before this one kept every applied object in `state.redb` (in clear before data keys, under keys
/// that changed between releases): at start, those objects are the state, at their last applied log id, and
/// become the current snapshot, sealed; the tables are left empty.
#[tokio::test]
async fn an_older_releases_objects_in_state_redb_become_the_snapshot_at_start() {
    use crate::manager::datakey::DataKey;
    let sealed = AtRest::sealed_with(Some(DataKey::generate()));
    let dir = tempfile::tempdir().unwrap();
    // The older release's snapshot at 10; its objects then went on to 20.
    let mut sm = open_in(dir.path());
    sm.apply(creates("old", 1, 10)).await.unwrap();
    build(&mut sm).await;
    sm.apply(creates("old", 11, 20)).await.unwrap();
    let mut objects: Vec<Object> = sm.view().current().objects().collect();
    sm.close().await;
    drop(sm);
    // One object twice, under two releases' keys: the newer version is the state. And an older version of
    // another beside it.
    let held = |name: &str| -> crate::api::Service {
        objects
            .iter()
            .find_map(|o| match o {
                Object::Service(s) if s.spec.annotations.name == name => Some(s.clone()),
                _ => None,
            })
            .unwrap()
    };
    let (mut newer, mut older) = (held("old-2"), held("old-3"));
    newer.meta.version += 1;
    newer.spec.annotations.name = "old-2-newer".into();
    older.meta.version -= 1;
    older.spec.annotations.name = "old-3-stale".into();
    objects.extend([Object::Service(newer), Object::Service(older)]);
    {
        let db = redb::Database::create(dir.path().join("state.redb")).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut t = tx.open_table(OBJECTS).unwrap();
            for (i, o) in objects.iter().enumerate() {
                t.insert(format!("{i:04}-{}", o.id()).as_str(), AtRest::default().encode(o).as_slice()).unwrap();
            }
            let mut m = tx.open_table(META).unwrap();
            m.insert(KEY_APPLIED, encode(&Some(log_id(20))).as_slice()).unwrap();
            m.insert(KEY_MEMBERSHIP, encode(&Membership::default()).as_slice()).unwrap();
        }
        tx.commit().unwrap();
    }
    assert!(!holding(dir.path(), "old-17").is_empty(), "the test writes records in clear");

    let mut want = expected("old", 1, 20);
    want.remove("old-2");
    want.insert("old-2-newer".into());
    let state = dir.path().join("state.redb");
    let mut sm = RedbStateMachine::open_with(&state, sealed.clone()).unwrap();
    assert_eq!(names(&sm), want, "the records are the state, the newest version of each object once");
    assert_eq!(sm.view().read(|v| v.services().count()), 20);
    assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(20)));
    assert_eq!(sm.snapshot_meta().unwrap().and_then(|m| m.last_log_id), Some(log_id(20)), "now the snapshot");
    let snaps = files(&sm);
    assert!(snaps.len() == 1 && snaps[0].ends_with(".snap"), "one snapshot file, the new one: {snaps:?}");
    let mut in_file = BTreeSet::new();
    snapshot_file::read(&sm.snapshot_dir().join(&snaps[0]), &sealed, |o| {
        if let Object::Service(s) = o {
            in_file.insert(s.spec.annotations.name);
        }
    })
    .unwrap();
    assert_eq!(in_file, want, "the snapshot holds the records' state, sealed");
    {
        let db = sm.db.get().unwrap();
        let tx = db.begin_read().unwrap();
        assert!(tx.open_table(OBJECTS).unwrap().is_empty().unwrap(), "the records left state.redb");
        assert!(tx.open_table(META).unwrap().get(KEY_APPLIED).unwrap().is_none());
    }
    sm.close().await;
    drop(sm);
    assert_eq!(holding(dir.path(), "old-17"), Vec::<String>::new(), "a name in clear after sealing");

    let mut sm = RedbStateMachine::open_with(&state, sealed).unwrap();
    assert_eq!(names(&sm), want, "read back from the snapshot");
    assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(20)));
}
