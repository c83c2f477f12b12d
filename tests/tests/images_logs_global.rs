//! Images in and out, service logs, global services and resource limits, on real containerd.

use serde_json::Value;
use shoal_tests::{step, test_image, wait_for, Daemon};
use std::io::Read;
use std::path::Path;
use std::time::Duration;

const T: Duration = Duration::from_secs(90);

/// Rewrites the OCI-layout test image as a `docker save` archive (manifest.json + config + layer tarballs).
fn docker_save_from_oci(oci: &Path, out: &Path, tag: &str) {
    let mut files = std::collections::HashMap::new();
    let mut ar = tar::Archive::new(std::fs::File::open(oci).unwrap());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let mut buf = Vec::new();
        e.read_to_end(&mut buf).unwrap();
        files.insert(name, buf);
    }
    let blob = |d: &str| files[&format!("blobs/sha256/{}", d.trim_start_matches("sha256:"))].clone();
    let index: Value = serde_json::from_slice(&files["index.json"]).unwrap();
    let manifest: Value = serde_json::from_slice(&blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap();
    let config_digest = manifest["config"]["digest"].as_str().unwrap();
    let layer_digest = manifest["layers"][0]["digest"].as_str().unwrap();
    let config_name = format!("{}.json", config_digest.trim_start_matches("sha256:"));
    let layer_name = format!("{}/layer.tar", &layer_digest.trim_start_matches("sha256:")[..16]);
    let m = serde_json::json!([{"Config": config_name, "RepoTags": [tag], "Layers": [layer_name]}]);
    let mut b = tar::Builder::new(std::fs::File::create(out).unwrap());
    for (name, data) in [
        ("manifest.json".to_string(), serde_json::to_vec(&m).unwrap()),
        (config_name.clone(), blob(config_digest)),
        (layer_name.clone(), blob(layer_digest)),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, &name, data.as_slice()).unwrap();
    }
    b.finish().unwrap();
}

#[test]
fn images_logs_global_services_and_limits() {
    let d = Daemon::start();
    step!("the API socket is root's and its group's only");
    let m = std::fs::metadata(&d.socket).expect("socket");
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777, 0o660);
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&m), 0);

    step!("before init: the swarm is inactive and swarm commands say so");
    assert!(d.ok(&["info"]).contains("Swarm: inactive"));
    let err = d.fails(&["service", "ls"]);
    assert!(err.contains("not a swarm manager"), "{err}");
    d.init_swarm();

    step!("a `docker save` archive loads under its RepoTag and runs");
    let saved = d.dir.path().join("saved.tar");
    docker_save_from_oci(test_image(), &saved, "example.com/tools/box:v1");
    let out = d.ok(&["image", "load", "-i", saved.to_str().unwrap()]);
    assert!(out.contains("example.com/tools/box:v1"), "{out}");
    let ls = d.ok(&["image", "ls"]);
    assert!(ls.contains("example.com/tools/box") && ls.contains("busybox"), "{ls}");

    step!("service logs: every task's lines, prefixed with the task, stdout and stderr");
    d.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "talk",
        "--replicas",
        "2",
        "--stop-grace-period",
        "1s",
        "example.com/tools/box:v1",
        "sh",
        "-c",
        "echo out-$(hostname); echo err-$(hostname) >&2; sleep 100000",
    ]);
    let logs = wait_for("both tasks' lines in service logs", T, || {
        let o = d.shoal(&["service", "logs", "talk"]);
        let all = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        if all.matches("out-").count() == 2 && all.matches("err-").count() == 2 {
            Ok(o)
        } else {
            Err(all)
        }
    });
    let stdout = String::from_utf8_lossy(&logs.stdout);
    let stderr = String::from_utf8_lossy(&logs.stderr);
    assert!(stdout.lines().all(|l| l.starts_with("talk.") && l.contains(" | out-")), "stdout:\n{stdout}");
    assert!(stderr.lines().all(|l| l.contains(" | err-")), "stderr:\n{stderr}");
    step!("service logs --timestamps --tail 1: each task's last line, after its time");
    // Each task's last line is its stdout or its stderr line (the logger reads the two pipes concurrently);
    // either way there is exactly one per task, on its stream, and it is exactly what the task wrote.
    let host = d.ok(&["node", "ls", "--format", "{{.Hostname}}"]).trim().to_string();
    let talk = d.tasks("talk");
    assert_eq!(talk.len(), 2, "{talk:?}");
    let o = d.shoal(&["service", "logs", "--timestamps", "--tail", "1", "talk"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    let mut got: Vec<String> = Vec::new();
    for (stream, text) in [("out", &out), ("err", &err)] {
        for line in text.lines() {
            let (time, rest) = line.split_once(' ').unwrap_or_else(|| panic!("no timestamp in {line:?}"));
            // RFC 3339 with nanoseconds in UTC, as Docker: 2024-01-02T03:04:05.123456789Z.
            let shape_ok = time.len() == 30
                && time.ends_with('Z')
                && time.char_indices().all(|(i, c)| match i {
                    4 | 7 => c == '-',
                    10 => c == 'T',
                    13 | 16 => c == ':',
                    19 => c == '.',
                    29 => c == 'Z',
                    _ => c.is_ascii_digit(),
                });
            assert!(shape_ok, "timestamp {time:?} in {line:?}");
            got.push(format!("{stream}: {rest}"));
        }
    }
    // Each line must be one task's stdout or stderr line, and the two lines must come from different tasks.
    let mut owners: Vec<usize> = got
        .iter()
        .map(|line| {
            talk.iter()
                .position(|t| {
                    let short = &t.id[..12];
                    let ctx = format!("{}.{short}@{host}", t.name);
                    *line == format!("out: {ctx}    | out-{short}") || *line == format!("err: {ctx}    | err-{short}")
                })
                .unwrap_or_else(|| panic!("{line:?} is no task's last line; tasks: {talk:?}"))
        })
        .collect();
    owners.sort();
    assert_eq!(owners, [0, 1], "exactly one line per task:\nstdout:\n{out}\nstderr:\n{err}");

    step!("service logs -f follows a replacement task started after the call");
    let mut follow = std::process::Command::new(shoal_tests::bin_dir().join("shoal"))
        .arg("-H")
        .arg(format!("unix://{}", d.socket.display()))
        .args(["service", "logs", "-f", "talk"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (line_tx, line_rx) = std::sync::mpsc::channel::<String>();
    let out = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if line_tx.send(l).is_err() {
                return;
            }
        }
    });
    let before: Vec<String> = d.tasks("talk").iter().map(|t| t.id.clone()).collect();
    let victim = d.running().into_iter().find(|c| before.contains(&c.id)).expect("a talk container");
    unsafe {
        libc::kill(victim.pid as i32, libc::SIGKILL);
    }
    let replacement = wait_for("a replacement talk task", T, || {
        let tasks = d.tasks("talk");
        tasks.iter().map(|t| t.id.clone()).find(|id| !before.contains(id)).ok_or(format!("{} tasks", tasks.len()))
    });
    let want = format!("out-{}", &replacement[..12]);
    let deadline = std::time::Instant::now() + T;
    let mut seen = Vec::new();
    let mut found = false;
    while !found && std::time::Instant::now() < deadline {
        if let Ok(l) = line_rx.recv_timeout(Duration::from_millis(500)) {
            found = l.contains(&want);
            seen.push(l);
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(found, "logs -f never showed {want}; saw {seen:?}");

    step!("a global service runs one task on the node");
    d.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "everywhere",
        "--mode",
        "global",
        "--stop-grace-period",
        "1s",
        "busybox",
        "sleep",
        "100000",
    ]);
    wait_for("one running global task", T, || {
        let tasks = d.tasks("everywhere");
        let running = tasks.iter().filter(|t| t.state == "running").count();
        // A global task is named after its node, not a slot.
        if tasks.len() == 1 && running == 1 && tasks[0].slot().is_none() {
            Ok(())
        } else {
            Err(format!("{tasks:?}"))
        }
    });

    step!("--limit-memory reaches the container's cgroup; --mount tmpfs is mounted");
    d.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "small",
        "--limit-memory",
        "64M",
        "--mount",
        "type=tmpfs,target=/scratch",
        "--stop-grace-period",
        "1s",
        "busybox",
        "sh",
        "-c",
        "grep -q ' /scratch tmpfs' /proc/mounts && echo tmpfs-ok; sleep 100000",
    ]);
    let task_id = wait_for("small to run", T, || {
        let tasks = d.tasks("small");
        tasks.iter().find(|t| t.state == "running").map(|t| t.id.clone()).ok_or(format!("{tasks:?}"))
    });
    let info = std::process::Command::new("ctr")
        .arg("-a")
        .arg(d.containerd_socket())
        .args(["-n", "shoal", "containers", "info", &task_id])
        .output()
        .unwrap();
    let info: Value = serde_json::from_slice(&info.stdout).expect("ctr containers info is JSON");
    assert_eq!(info["Spec"]["linux"]["resources"]["memory"]["limit"], 64 * 1024 * 1024, "{}", info["Spec"]["linux"]);
    wait_for("the tmpfs mount to be seen inside", T, || {
        let o = d.ok(&["service", "logs", "small"]);
        if o.contains("tmpfs-ok") {
            Ok(())
        } else {
            Err(o)
        }
    });

    step!("security and limit flags reach the container: caps, read-only rootfs, init, ulimit, pids, seccomp");
    d.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "locked",
        "--cap-drop",
        "ALL",
        "--cap-add",
        "chown",
        "--read-only",
        "--init",
        "--ulimit",
        "nofile=512:1024",
        "--limit-pids",
        "50",
        "busybox",
        "sh",
        "-c",
        "grep -E '^(CapEff|Seccomp):' /proc/self/status; touch /x 2>/dev/null || echo ro-ok; \
         echo pid1=$(tr '\\0' ' ' </proc/1/cmdline); echo nofile=$(ulimit -n):$(ulimit -Hn); sleep 100000",
    ]);
    let o = wait_for("the locked service's report in its logs", T, || {
        let o = d.ok(&["service", "logs", "locked"]);
        if o.contains("nofile=") {
            Ok(o)
        } else {
            Err(o)
        }
    });
    for want in
        ["CapEff:\t0000000000000001", "Seccomp:\t2", "ro-ok", "pid1=/sbin/docker-init -- sh -c", "nofile=512:1024"]
    {
        assert!(o.contains(want), "missing {want:?} in {o}");
    }
    let pretty = d.ok(&["service", "inspect", "--pretty", "locked"]);
    for want in
        [" Init:\t\ttrue", "Capabilities:\n Add: CAP_CHOWN\n Drop: ALL", "Ulimits:\n nofile: 512:1024", "  PIDs:\t\t50"]
    {
        assert!(pretty.contains(want), "missing {want:?} in\n{pretty}");
    }
    let err = d.fails(&["service", "create", "--ulimit", "nofile=abc", "busybox"]);
    assert!(err.contains("invalid ulimit value \"abc\" for nofile: must be an integer"), "{err}");

    step!("image rm refuses an image a container uses unless forced; a service using a removed image is rejected");
    let refused = d.fails(&["image", "rm", "example.com/tools/box:v1"]);
    assert!(refused.contains("(must force) - container"), "{refused}");
    assert!(d.ok(&["image", "ls"]).contains("example.com/tools/box"), "a refused rm kept the image");
    let rm = d.ok(&["image", "rm", "-f", "example.com/tools/box:v1"]);
    assert!(rm.contains("example.com/tools/box:v1"), "{rm}");
    assert!(!d.ok(&["image", "ls"]).contains("example.com/tools/box"));
    let err = d.fails(&["image", "rm", "example.com/tools/box:v1"]);
    assert!(err.contains("No such image"), "{err}");
    d.ok(&["service", "create", "-d", "--name", "orphan", "example.com/tools/box:v1", "sleep", "100000"]);
    let rejected = wait_for("orphan's task to be rejected for its removed image", T, || {
        let tasks = d.tasks("orphan");
        tasks.iter().find(|t| t.state == "rejected").cloned().ok_or(format!("{tasks:?}"))
    });
    // The node tries to pull what it lacks; example.com serves no registry, and the pull's failure is the reason.
    assert!(rejected.error.contains("example.com"), "{rejected:?}");
    assert!(!d.running().iter().any(|c| c.id == rejected.id), "a rejected task has no running container");
}
