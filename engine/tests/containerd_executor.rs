//! The containerd side of the engine against a real containerd (a private one per test, see `common/`): real
//! tasks run through the `Executor`/`Controller` traits the agent uses.
//!
//! Needs root, containerd, runc and busybox-static; a missing piece fails the test with a message saying so
//! (nothing is skipped). Run: `cargo test -p shoal-engine --test containerd_executor`.

use engine::containerd::ManagedContainerd;
use serde_json::Value;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use swarm::agent::exec::{ContainerState, Controller, ExecError, Executor};
use swarm::api::{Mount, MountType};

#[macro_use]
mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_runs_with_labels_logs_limits_and_survives_readoption() {
    let env = Env::start().await;
    let exec = env.executor();

    step!("describe reports this node");
    let d = exec.describe().await.expect("describe");
    assert!(!d.hostname.is_empty());
    let cpus = std::thread::available_parallelism().unwrap().get() as i64;
    assert_eq!(d.resources.nano_cpus, cpus * 1_000_000_000);
    assert!(d.resources.memory_bytes > 64 << 20, "memory from /proc/meminfo: {}", d.resources.memory_bytes);
    assert_eq!(d.platform, swarm::api::Platform::current());
    assert_eq!(d.engine.labels.get("zone").map(String::as_str), Some("test"));
    assert!(!d.engine.engine_version.is_empty());

    step!("run a task that writes to stdout and stderr, with a memory limit and a container label");
    let mut t = task(&["sh", "-c", "echo hello; echo oops >&2; while true; do echo tick; sleep 0.1; done"]);
    t.spec.resources.limits.memory_bytes = 64 << 20;
    t.spec.container.labels.insert("com.example.team".into(), "blue".into());
    let (c, pid) = run(&exec, &t).await;
    assert_eq!(c.inspect().await.unwrap(), Some(ContainerState::Running { pid }));

    step!("the container exists in namespace shoal with the swarm labels");
    let ctr = env.container(&t.id).await.expect("container exists in namespace shoal");
    let labels = &ctr.labels;
    for (k, v) in [
        ("com.docker.swarm.task.id", t.id.clone()),
        ("com.docker.swarm.task.name", t.container_name()),
        ("com.docker.swarm.service.id", t.service_id.clone()),
        ("com.docker.swarm.service.name", t.service_annotations.name.clone()),
        ("com.docker.swarm.node.id", t.node_id.clone()),
        ("com.example.team", "blue".to_string()),
    ] {
        assert_eq!(labels.get(k), Some(&v), "label {k} on {labels:?}");
    }
    assert_eq!(ctr.snapshotter, "overlayfs");
    assert_eq!(ctr.snapshot_key, t.id);
    assert_eq!(ctr.runtime.as_ref().map(|r| r.name.as_str()), Some("io.containerd.runc.v2"));
    assert_eq!(env.task_ids().await, vec![t.id.clone()]);

    step!("the memory limit is in the spec and in the task's cgroup");
    let spec: Value = serde_json::from_slice(&ctr.spec.expect("spec").value).expect("spec json");
    assert_eq!(spec["linux"]["resources"]["memory"]["limit"], 64 << 20);
    assert_eq!(spec["linux"]["cgroupsPath"], format!("/shoal/{}", t.id));
    assert_eq!(spec["hostname"], &t.id[..12]);
    let cg = PathBuf::from(format!("/sys/fs/cgroup/memory/shoal/{}/memory.limit_in_bytes", t.id));
    if Path::new("/sys/fs/cgroup/memory").is_dir() {
        let limit = std::fs::read_to_string(&cg).unwrap_or_else(|e| panic!("{}: {e}", cg.display()));
        assert_eq!(limit.trim(), (64u64 << 20).to_string(), "cgroup v1 memory limit");
    } else {
        let f = format!("/sys/fs/cgroup/shoal/{}/memory.max", t.id);
        assert_eq!(std::fs::read_to_string(&f).expect("memory.max").trim(), (64u64 << 20).to_string());
    }

    step!("both lines reach the json-file log with their stream");
    let log = env.log_path(&t.id);
    let recs = wait_for("hello and oops in the task log", Duration::from_secs(10), || async {
        let recs = log_records(&log);
        if has_record(&recs, "hello\n", "stdout") && has_record(&recs, "oops\n", "stderr") {
            Ok(recs)
        } else {
            Err(format!("{recs:?}"))
        }
    })
    .await;
    for r in &recs {
        let time = r["time"].as_str().expect("time");
        humantime::parse_rfc3339(time).unwrap_or_else(|e| panic!("time {time:?} is not RFC 3339: {e}"));
        assert_eq!(time.len(), "2026-01-01T00:00:00.000000000Z".len(), "nanosecond precision: {time}");
    }
    let mut rx = engine::logs::stream(vec![log.clone()], engine::logs::LogOptions { follow: false, tail: None }, None);
    let mut read = Vec::new();
    while let Some(l) = rx.recv().await {
        read.push((l.stream, l.line));
    }
    assert!(read.contains(&("stdout".into(), "hello".into())) && read.contains(&("stderr".into(), "oops".into())));

    step!("a second task that exits 3 is listed until removed");
    let t2 = task(&["sh", "-c", "exit 3"]);
    let (c2, _) = run(&exec, &t2).await;
    assert_eq!(c2.wait().await.expect("wait").exit_code, 3);
    assert_eq!(c2.inspect().await.unwrap(), Some(ContainerState::Exited { exit_code: 3 }));
    let mut want = vec![t.id.clone(), t2.id.clone()];
    want.sort();
    let mut listed = exec.list_tasks().await.unwrap();
    listed.sort();
    assert_eq!(listed, want);
    c2.remove().await.expect("remove");
    c2.remove().await.expect("remove is idempotent");
    assert!(env.container(&t2.id).await.is_none(), "container gone");
    assert!(!env.task_ids().await.contains(&t2.id), "task gone");
    assert!(!env.snapshot_exists(&t2.id).await, "snapshot gone");
    assert_eq!(exec.list_tasks().await.unwrap(), vec![t.id.clone()]);
    assert_eq!(c2.inspect().await.unwrap(), None);

    step!("re-adoption: a new executor finds the task running");
    drop(c);
    drop(exec);
    let exec = env.executor();
    let c = exec.controller(&t).unwrap();
    c.prepare().await.expect("prepare on an existing container is a no-op");
    assert_eq!(c.start().await.expect("start on a running task is a no-op"), pid);
    assert_eq!(c.inspect().await.unwrap(), Some(ContainerState::Running { pid }));
    let waiter = {
        let c = exec.controller(&t).unwrap();
        tokio::spawn(async move { c.wait().await })
    };

    step!("containerd is SIGKILLed: the supervisor restarts it, the task and its logger keep running");
    let ticks = || log_records(&log).iter().filter(|r| r["log"] == "tick\n").count();
    let old = env.managed.as_ref().unwrap().pid().expect("containerd pid");
    let before = ticks();
    unsafe { libc::kill(old, libc::SIGKILL) };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = ticks();
    assert!(during > before, "the logger kept writing with containerd dead ({before} → {during} ticks)");
    let new = wait_for("containerd restarted by the supervisor", Duration::from_secs(30), || async {
        match env.managed.as_ref().unwrap().pid() {
            Some(p) if p != old => Ok(p),
            other => Err(format!("pid {other:?}")),
        }
    })
    .await;
    step!("containerd pid {old} → {new}");
    wait_for("the task running again through the new containerd", Duration::from_secs(20), || async {
        match c.inspect().await {
            Ok(Some(ContainerState::Running { pid: p })) if p == pid => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // The agent's wait must not end (and fail the task) because containerd restarted under it.
    assert!(!waiter.is_finished(), "wait ended across the containerd restart: {:?}", waiter.await);

    step!("shutdown: sh as PID 1 ignores SIGTERM, so SIGKILL after the 1s grace period");
    let mut t_short = t.clone();
    t_short.spec.container.stop_grace_period = Duration::from_secs(1);
    let c = exec.controller(&t_short).unwrap();
    let t0 = Instant::now();
    c.shutdown().await.expect("shutdown");
    let took = t0.elapsed();
    assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(8), "shutdown took {took:?}");
    let status = tokio::time::timeout(Duration::from_secs(10), waiter).await.expect("wait returns").unwrap();
    assert_eq!(status.expect("wait").exit_code, 137, "killed by SIGKILL");
    assert_eq!(c.wait().await.expect("wait after exit").exit_code, 137, "wait on a stopped task reports its exit");
    assert_eq!(c.inspect().await.unwrap(), Some(ContainerState::Exited { exit_code: 137 }));
    c.shutdown().await.expect("shutdown of a stopped task is a no-op");

    step!("remove leaves no container, task or snapshot; the log stays");
    c.remove().await.expect("remove");
    assert!(env.container(&t.id).await.is_none());
    assert!(env.task_ids().await.is_empty(), "{:?}", env.task_ids().await);
    assert!(!env.snapshot_exists(&t.id).await);
    assert!(exec.list_tasks().await.unwrap().is_empty());
    assert!(log.exists(), "logs outlive the container");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_stop_signals_and_exit_codes() {
    let env = Env::start().await;
    let exec = env.executor();

    step!("a task has its own network namespace with only loopback, and it is up");
    let t = task(&["sh", "-c", "ip -o link; ip -o addr; exit 3"]);
    let (c, _) = run(&exec, &t).await;
    assert_eq!(c.wait().await.unwrap().exit_code, 3, "exit code 3 is reported");
    let out = wait_for("ip output in the log", Duration::from_secs(10), || async {
        let recs = log_records(&env.log_path(&t.id));
        let lines: Vec<String> = recs.iter().map(|r| r["log"].as_str().unwrap_or_default().to_string()).collect();
        if lines.iter().any(|l| l.contains("inet ")) {
            Ok(lines)
        } else {
            Err(format!("{lines:?}"))
        }
    })
    .await;
    let links: Vec<&String> = out.iter().filter(|l| l.contains(": <")).collect();
    let up: Vec<&&String> = links.iter().filter(|l| l.contains(",UP") || l.contains("<UP")).collect();
    assert!(links.iter().any(|l| l.contains(": lo: ") && l.contains("UP")), "lo is up: {out:?}");
    assert_eq!(up.len(), 1, "only lo is up: {out:?}");
    let inet: Vec<&String> = out.iter().filter(|l| l.contains("inet ")).collect();
    assert!(inet.iter().all(|l| l.contains("127.0.0.1")), "no address but loopback's (not the host network): {inet:?}");
    c.remove().await.unwrap();

    step!("a line longer than 16 KiB is split into records as Docker's json-file does");
    let t = task(&["sh", "-c", "head -c 20000 /dev/zero | tr '\\0' a; echo; echo short"]);
    let (c, _) = run(&exec, &t).await;
    assert_eq!(c.wait().await.unwrap().exit_code, 0);
    let recs = wait_for("three records", Duration::from_secs(10), || async {
        let recs = log_records(&env.log_path(&t.id));
        if recs.len() >= 3 {
            Ok(recs)
        } else {
            Err(format!("{} records", recs.len()))
        }
    })
    .await;
    let logs: Vec<&str> = recs.iter().map(|r| r["log"].as_str().unwrap()).collect();
    assert_eq!(logs[0], "a".repeat(16384));
    assert_eq!(logs[1], format!("{}\n", "a".repeat(20000 - 16384)));
    assert_eq!(logs[2], "short\n");
    c.remove().await.unwrap();

    step!("a task that traps the stop signal (\"TERM\") stops with it, well before the grace period");
    let mut t = task(&["sh", "-c", "trap 'echo got term; exit 0' TERM; echo trapped; while true; do sleep 0.1; done"]);
    t.spec.container.stop_signal = "TERM".into();
    t.spec.container.stop_grace_period = Duration::from_secs(20);
    let (c, _) = run(&exec, &t).await;
    // PID 1 ignores a signal it has no handler for, so stop only once the trap is in place.
    wait_for_stdout(&env.log_path(&t.id), "trapped\n", Duration::from_secs(10)).await;
    let t0 = Instant::now();
    c.shutdown().await.unwrap();
    assert!(t0.elapsed() < Duration::from_secs(5), "the stop signal ended it: {:?}", t0.elapsed());
    assert_eq!(c.wait().await.unwrap().exit_code, 0);
    wait_for_stdout(&env.log_path(&t.id), "got term\n", Duration::from_secs(5)).await;
    c.remove().await.unwrap();

    step!("sleep as PID 1 ignores SIGTERM (\"15\"): SIGKILL after the 1s grace");
    let mut t = task(&["sleep", "1000"]);
    t.spec.container.stop_signal = "15".into();
    t.spec.container.stop_grace_period = Duration::from_secs(1);
    let (c, _) = run(&exec, &t).await;
    let t0 = Instant::now();
    c.shutdown().await.unwrap();
    assert!(t0.elapsed() >= Duration::from_secs(1), "waited the grace period: {:?}", t0.elapsed());
    assert_eq!(c.wait().await.unwrap().exit_code, 137);
    c.remove().await.unwrap();

    step!("terminate kills at once");
    let t = task(&["sleep", "1000"]);
    let (c, _) = run(&exec, &t).await;
    let t0 = Instant::now();
    c.terminate().await.unwrap();
    assert_eq!(c.wait().await.unwrap().exit_code, 137);
    assert!(t0.elapsed() < Duration::from_secs(3));

    step!("remove_task cleans up an orphan");
    let orphan = task(&["sleep", "1000"]);
    run(&exec, &orphan).await;
    exec.remove_task(&orphan.id).await.unwrap();
    c.remove().await.unwrap();
    assert!(exec.list_tasks().await.unwrap().is_empty());
    assert!(env.task_ids().await.is_empty());
    assert!(!env.snapshot_exists(&orphan.id).await);
    exec.remove_task(&orphan.id).await.expect("remove_task is idempotent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_specs_are_refused_with_clear_errors() {
    let env = Env::start().await;
    let exec = env.executor();

    step!("a missing image");
    let mut t = task(&["true"]);
    t.spec.container.image = "nosuch".into();
    let c = exec.controller(&t).unwrap();
    let e = c.prepare().await.unwrap_err();
    assert_eq!(e, ExecError::ImageNotFound("nosuch:latest".into()));
    assert_eq!(e.to_string(), "No such image: nosuch:latest");
    assert_eq!(c.inspect().await.unwrap(), None, "no container left behind");

    step!("a bind mount whose source does not exist");
    let mut t = task(&["true"]);
    t.spec.container.mounts.push(Mount {
        kind: MountType::Bind,
        source: "/x/shoal/not/here".into(),
        target: "/data".into(),
        readonly: false,
        tmpfs_size: 0,
    });
    let c = exec.controller(&t).unwrap();
    let e = c.prepare().await.unwrap_err();
    assert_eq!(
        e,
        ExecError::InvalidSpec(
            "invalid mount config for type \"bind\": bind source path does not exist: /x/shoal/not/here".into()
        )
    );
    assert_eq!(c.inspect().await.unwrap(), None);
    assert!(!env.snapshot_exists(&t.id).await, "the snapshot prepared for it was removed");

    step!("an unknown user name");
    let mut t = task(&["true"]);
    t.spec.container.user = "ghost".into();
    let e = exec.controller(&t).unwrap().prepare().await.unwrap_err();
    assert!(matches!(&e, ExecError::InvalidSpec(m) if m.contains("unable to find user ghost")), "{e:?}");

    step!("wait before prepare says the container does not exist");
    let t = task(&["true"]);
    let c = exec.controller(&t).unwrap();
    assert!(matches!(c.wait().await, Err(ExecError::NotFound(_))));
    c.remove().await.expect("remove of nothing is fine");

    step!("mounts work: bind (read-only), named volume, tmpfs with size, and a user from /etc/passwd");
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("in.txt"), "from the host\n").unwrap();
    let mut t = task(&[
        "sh",
        "-c",
        "cat /in/in.txt; echo vol > /vol/f && echo wrote; touch /in/x 2>/dev/null || echo ro; \
         grep ' /scratch ' /proc/mounts; id -u; hostname",
    ]);
    t.spec.container.user = "nobody".into();
    t.spec.container.mounts = vec![
        Mount {
            kind: MountType::Bind,
            source: host.path().display().to_string(),
            target: "/in".into(),
            readonly: true,
            tmpfs_size: 0,
        },
        Mount {
            kind: MountType::Volume,
            source: "shoaltestvol".into(),
            target: "/vol".into(),
            readonly: false,
            tmpfs_size: 0,
        },
        Mount {
            kind: MountType::Tmpfs,
            source: String::new(),
            target: "/scratch".into(),
            readonly: false,
            tmpfs_size: 1 << 20,
        },
    ];
    let vol = env.data_root.join("volumes/shoaltestvol/_data");
    // nobody must be able to write the volume.
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::set_permissions(&vol, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let (c, _) = run(&exec, &t).await;
    assert_eq!(c.wait().await.unwrap().exit_code, 0);
    let lines = wait_for("the mount checks' output", Duration::from_secs(10), || async {
        let recs = log_records(&env.log_path(&t.id));
        let lines: Vec<String> =
            recs.iter().map(|r| r["log"].as_str().unwrap_or_default().trim_end().to_string()).collect();
        if lines.len() >= 6 {
            Ok(lines)
        } else {
            Err(format!("{lines:?}"))
        }
    })
    .await;
    assert_eq!(lines[0], "from the host");
    assert_eq!(lines[1], "wrote");
    assert_eq!(lines[2], "ro");
    assert!(lines[3].contains("tmpfs") && lines[3].contains("size=1024k"), "tmpfs with its size: {lines:?}");
    assert_eq!(lines[4], "65534", "runs as nobody");
    assert_eq!(lines[5], &t.id[..12], "hostname is the task id's first 12 characters");
    assert_eq!(std::fs::read_to_string(vol.join("f")).unwrap(), "vol\n", "the named volume is on the host");
    c.remove().await.unwrap();
}

/// A `docker save` archive of the OCI one: manifest.json + config + layer.tar.
fn docker_save_from_oci(oci: &Path, out: &Path, tag: &str) -> String {
    let mut files = std::collections::HashMap::new();
    let mut ar = tar::Archive::new(std::fs::File::open(oci).unwrap());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().trim_start_matches("./").to_string();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        files.insert(path, data);
    }
    let json = |p: &str| -> Value { serde_json::from_slice(&files[p]).unwrap() };
    let blob = |d: &str| format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
    let index = json("index.json");
    let manifest = json(&blob(index["manifests"][0]["digest"].as_str().unwrap()));
    let config_digest = manifest["config"]["digest"].as_str().unwrap().to_string();
    let layer_digest = manifest["layers"][0]["digest"].as_str().unwrap();
    let config_name = format!("{}.json", config_digest.trim_start_matches("sha256:"));
    let layer_name = format!("{}/layer.tar", layer_digest.trim_start_matches("sha256:"));
    let mj = serde_json::json!([{ "Config": config_name, "RepoTags": [tag], "Layers": [layer_name] }]);
    let mut b = tar::Builder::new(std::fs::File::create(out).unwrap());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
    };
    add("manifest.json", mj.to_string().as_bytes());
    add(&config_name, &files[&blob(&config_digest)]);
    add(&layer_name, &files[&blob(layer_digest)]);
    b.into_inner().unwrap().flush().unwrap();
    config_digest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_load_list_resolve_and_remove() {
    let env = Env::start().await;
    let images = env.images();

    step!("the OCI image is listed with its config digest as id");
    let list = images.list().await.unwrap();
    let bb = list.iter().find(|i| i.reference == IMAGE).unwrap_or_else(|| panic!("busybox in {list:?}"));
    assert!(bb.id.starts_with("sha256:") && bb.id.len() == 71, "{bb:?}");
    assert!(bb.size > 100_000, "size is the layers' size: {bb:?}");
    let r = images.resolve("busybox").await.unwrap();
    assert_eq!(r.config.cmd, vec!["sh"]);
    assert!(r.config.env.iter().any(|e| e.starts_with("PATH=")));
    assert!(r.chain_id.starts_with("sha256:"));
    assert!(env.snapshot_exists(&r.chain_id).await, "the layer is unpacked as a committed snapshot");

    step!("loading the same archive again (through a reader) is idempotent");
    let f = std::fs::File::open(test_image()).unwrap();
    assert_eq!(images.load_reader(f).await.unwrap(), vec![IMAGE.to_string()]);
    assert_eq!(images.list().await.unwrap().len(), list.len());

    step!("a docker save archive loads too");
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("saved.tar");
    let config_digest = docker_save_from_oci(test_image(), &saved, "shoal-test/saved:v1");
    assert_eq!(images.load(&saved).await.unwrap(), vec!["docker.io/shoal-test/saved:v1".to_string()]);
    let list = images.list().await.unwrap();
    let s = list.iter().find(|i| i.reference == "docker.io/shoal-test/saved:v1").expect("saved image listed");
    assert_eq!(s.id, config_digest);
    assert_eq!(s.id, bb.id, "same config, same image id");

    step!("a task runs from the docker-save image");
    let exec = env.executor();
    let mut t = task(&["echo", "from saved"]);
    t.spec.container.image = "shoal-test/saved:v1".into();
    let (c, _) = run(&exec, &t).await;
    assert_eq!(c.wait().await.unwrap().exit_code, 0);
    wait_for_stdout(&env.log_path(&t.id), "from saved\n", Duration::from_secs(5)).await;
    c.remove().await.unwrap();

    step!("remove deletes the record; resolving it then fails");
    images.remove("shoal-test/saved:v1").await.unwrap();
    assert!(matches!(
        images.resolve("shoal-test/saved:v1").await,
        Err(engine::image::ImageError::NotFound(r)) if r == "shoal-test/saved:v1"
    ));
    assert!(matches!(images.remove("shoal-test/saved:v1").await, Err(engine::image::ImageError::NotFound(_))));
    images.resolve("busybox:latest").await.expect("the other name is untouched");
    // remove asked for a synchronous GC: what the remaining image needs must have survived it (gc labels).
    assert!(env.snapshot_exists(&r.chain_id).await, "the remaining image's snapshot survived GC");
    let r2 = images.resolve("busybox").await.expect("its manifest and config blobs survived GC");
    assert_eq!(r2.chain_id, r.chain_id);

    step!("removing the last name lets GC take the unpacked layer");
    images.remove("busybox").await.unwrap();
    wait_for("the layer snapshot collected", Duration::from_secs(10), || async {
        if env.snapshot_exists(&r.chain_id).await {
            Err("still there".to_string())
        } else {
            Ok(())
        }
    })
    .await;
    assert!(images.list().await.unwrap().is_empty());

    step!("garbage is refused with a clear error");
    let junk = dir.path().join("junk.tar");
    std::fs::write(&junk, b"this is not a tarball at all").unwrap();
    let e = images.load(&junk).await.unwrap_err().to_string();
    assert!(e.contains("invalid image archive"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_containerd_is_reused_by_a_second_start() {
    let env = Env::start().await;
    let first = env.managed.as_ref().unwrap().pid().expect("pid");
    step!("a second start on the same dirs (shoald restarted after SIGKILL) reuses containerd {first}");
    let again = ManagedContainerd::start(&env.data_root, &env.exec_root).await.unwrap();
    assert_eq!(again.pid(), Some(first));
    assert_eq!(again.socket(), env.managed.as_ref().unwrap().socket());
    drop(again); // stops supervising only
    let cfg = std::fs::read_to_string(env.data_root.join("containerd/config.toml")).unwrap();
    assert!(cfg.contains("version = 2") && cfg.contains("io.containerd.grpc.v1.cri"));
    assert!(env.data_root.join("containerd/containerd.log").exists());
    assert!(env.exec_root.join("containerd/containerd.pid").exists());
    assert_eq!(env.managed.as_ref().unwrap().pid(), Some(first), "still running");
}
