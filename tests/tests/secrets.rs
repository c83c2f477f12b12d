//! Secrets and configs on real daemons. One daemon: a task reads its secret at `/run/secrets/<name>` with the
//! asked mode and its config at its target; the data is on a tmpfs, nowhere on the node's disk; `inspect` never
//! shows a secret's data; a secret in use cannot be removed; `secret rotate` rolls the service onto the new
//! version. Three managers: a secret reaches only the node whose task uses it, never its disk, and still reaches
//! a new task after the leader is SIGKILLed; a templated config renders differently for each task.
//!
//! Run: `cargo build --workspace --bins && cargo test -p shoal-tests --test secrets -- --test-threads=1`.

use shoal_tests::cluster::Cluster;
use shoal_tests::{step, wait_for, Daemon};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

const T: Duration = Duration::from_secs(90);
const SECRET: &str = "s3cr3t-e2e-4b1d9c-plaintext";
const ROTATED: &str = "r0tated-e2e-77aa01-plaintext";

/// Files under `dir` on `dir`'s own filesystem (tmpfs and other mounts below it skipped) holding `needle`.
fn on_disk_holding(dir: &Path, needle: &[u8]) -> Vec<String> {
    holding(dir, needle, true)
}

/// Files under `dir` holding `needle`; with `disk_only`, only those on `dir`'s own filesystem.
fn holding(dir: &Path, needle: &[u8], disk_only: bool) -> Vec<String> {
    let dev = std::fs::metadata(dir).expect("data root").dev();
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else { continue };
            if disk_only && m.dev() != dev {
                continue;
            }
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() && std::fs::read(&p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle)) {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

/// `service logs --raw SERVICE` on `d` once they hold `want` (a failed call is retried: a manager may be
/// electing a leader).
fn logs_with(d: &Daemon, service: &str, want: &str) -> String {
    wait_for(&format!("{service}'s logs to show {want:?}"), T, || {
        let logs = String::from_utf8_lossy(&d.shoal(&["service", "logs", "--raw", service]).stdout).into_owned();
        if logs.contains(want) {
            Ok(logs)
        } else {
            Err(logs)
        }
    })
}

#[test]
fn a_task_reads_its_secret_from_a_tmpfs_and_a_rotation_rolls_the_service() {
    let d = Daemon::start();
    d.init_swarm();
    let file = d.dir.path().join("pw.txt");
    std::fs::write(&file, SECRET).unwrap();
    let conf = d.dir.path().join("app.conf");
    std::fs::write(&conf, "level=debug\n").unwrap();

    step!("secret create and config create; inspect and ls hide the secret's data");
    d.ok(&["secret", "create", "--label", "env=e2e", "db_pw", file.to_str().unwrap()]);
    d.ok(&["config", "create", "app_conf", conf.to_str().unwrap()]);
    let inspect = d.ok(&["secret", "inspect", "db_pw"]);
    assert!(inspect.contains("\"Name\": \"db_pw\"") && !inspect.contains(SECRET), "{inspect}");
    let ls = d.ok(&["secret", "ls"]);
    assert!(ls.contains("VERSION") && ls.contains("db_pw"), "{ls}");
    let e = d.fails(&["secret", "create", "db_pw", file.to_str().unwrap()]);
    assert!(e.contains("secret db_pw already exists"), "{e}");

    step!("a service mounts both; its task prints them and the secret's mode");
    d.ok(&[
        "service",
        "create",
        "--name",
        "app",
        "--stop-grace-period",
        "1s",
        "--secret",
        "source=db_pw,target=pw,mode=0400",
        "--config",
        "source=app_conf,target=/etc/app.conf",
        "busybox",
        "sh",
        "-c",
        // Upper-cased, so the log itself does not hold the plaintext the disk check looks for.
        "echo secret=$(tr a-z A-Z < /run/secrets/pw) mode=$(stat -c %a /run/secrets/pw) conf=$(cat /etc/app.conf); \
         sleep 100000",
    ]);
    let logs = logs_with(&d, "app", "mode=400");
    assert!(logs.contains(&format!("secret={}", SECRET.to_uppercase())) && logs.contains("conf=level=debug"), "{logs}");

    step!("the data is on the task's tmpfs and nowhere on the node's disk");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let taskfiles = d.data_root.join("taskfiles");
    assert!(
        mounts.lines().any(|l| l.contains(taskfiles.to_str().unwrap()) && l.contains(" - tmpfs ")),
        "no tmpfs under {}",
        taskfiles.display()
    );
    assert_eq!(on_disk_holding(&d.data_root, SECRET.as_bytes()), Vec::<String>::new());

    step!("a secret in use cannot be removed");
    let e = d.fails(&["secret", "rm", "db_pw"]);
    assert!(e.contains("secret 'db_pw' is in use by the following service: app"), "{e}");

    step!("secret rotate: a new version, and the service rolls onto it");
    std::fs::write(&file, ROTATED).unwrap();
    d.ok(&["secret", "rotate", "db_pw", file.to_str().unwrap()]);
    let logs = logs_with(&d, "app", &format!("secret={}", ROTATED.to_uppercase()));
    assert!(logs.contains("mode=400"), "the target and mode stay: {logs}");
    let ls = d.ok(&["secret", "ls", "--format", "{{.Name}} {{.Version}}"]);
    assert!(ls.contains("db_pw.v2 2"), "{ls}");
    assert_eq!(on_disk_holding(&d.data_root, ROTATED.as_bytes()), Vec::<String>::new());

    step!("the service removed, its tmpfs goes with its task");
    d.ok(&["service", "rm", "app"]);
    wait_for("no tmpfs left under taskfiles", T, || {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        if mounts.contains(taskfiles.to_str().unwrap()) {
            Err("still mounted".to_string())
        } else {
            Ok(())
        }
    });
    d.ok(&["secret", "rm", "db_pw.v2"]);
}

/// Node `n`'s mounts under its data root's `taskfiles` (the tmpfs of each task with secrets or configs), as its
/// daemon's mount namespace shows them.
fn taskfile_mounts(c: &Cluster, n: usize) -> Vec<String> {
    let node = c.node(n);
    let pid = node.pid().expect("daemon running");
    let info = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
    let dir = node.data_root.join("taskfiles");
    info.lines().filter(|l| l.contains(dir.to_str().unwrap())).map(str::to_string).collect()
}

#[test]
fn a_secret_reaches_only_its_task_s_node_survives_a_leader_kill_and_templates_render_per_task() {
    let mut c = Cluster::start(3);
    let join = c.init_swarm(1);
    c.join_manager(2, &join);
    c.join_manager(3, &join);
    c.wait_nodes_ready(1, &["node-1", "node-2", "node-3"], T);
    let image = shoal_tests::test_image().to_str().expect("utf-8 path");
    for n in 1..=3 {
        c.node(n).ok(&["image", "load", "-i", image]);
    }
    let leader = wait_for("one leader", T, || c.leader(1).ok_or_else(|| format!("{:?}", c.node_rows(1))));
    // The task's node and a node without it, both other than the leader (which is killed later).
    let mut others = (1..=3).filter(|n| *n != leader);
    let (with, without) = (others.next().unwrap(), others.next().unwrap());
    eprintln!("    leader node-{leader}; the secret's task on node-{with}; node-{without} without it");

    step!("a secret used by a service constrained to node {with}: its task reads it");
    let file = c.node(1).dir.path().join("pw.txt");
    std::fs::write(&file, SECRET).unwrap();
    c.node(1).ok(&["secret", "create", "db_pw", file.to_str().unwrap()]);
    let constraint = format!("node.hostname==node-{with}");
    c.node(1).ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "app",
        "--stop-grace-period",
        "1s",
        "--constraint",
        &constraint,
        "--secret",
        "source=db_pw,target=pw",
        "--env",
        "ROUND=1",
        "busybox",
        "sh",
        "-c",
        // Upper-cased, so the log itself does not hold the plaintext the disk checks look for.
        "echo secret=$(tr a-z A-Z < /run/secrets/pw) round=$ROUND; sleep 100000",
    ]);
    let upper = SECRET.to_uppercase();
    logs_with(c.node(1), "app", &format!("secret={upper} round=1"));

    step!("node {with} holds it on a tmpfs only; no other node has it anywhere under its data root");
    assert!(
        taskfile_mounts(&c, with).iter().any(|l| l.contains(" - tmpfs ")),
        "no tmpfs under node-{with}'s taskfiles"
    );
    assert_eq!(on_disk_holding(&c.node(with).data_root, SECRET.as_bytes()), Vec::<String>::new());
    for n in [without, leader] {
        assert_eq!(taskfile_mounts(&c, n), Vec::<String>::new(), "node-{n} mounted task files");
        // Managers hold the secret sealed in Raft: the plaintext is in no file, on disk or tmpfs.
        assert_eq!(holding(&c.node(n).data_root, SECRET.as_bytes(), false), Vec::<String>::new(), "node-{n}");
    }

    step!("a templated config: each task gets its own node's hostname, its slot and its environment");
    let tmpl = c.node(1).dir.path().join("tmpl.conf");
    std::fs::write(
        &tmpl,
        r#"host={{.Node.Hostname}} slot={{.Task.Slot}} svc={{.Service.Name}} greeting={{env "GREETING"}}"#,
    )
    .unwrap();
    c.node(1).ok(&["config", "create", "--template-driver", "golang", "tmpl_conf", tmpl.to_str().unwrap()]);
    let inspect = c.node(1).ok(&["config", "inspect", "--format", "{{json .Spec.Templating}}", "tmpl_conf"]);
    assert_eq!(inspect.trim(), r#"{"Name":"golang"}"#);
    c.node(1).ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "tmpl",
        "--replicas",
        "3",
        "--replicas-max-per-node",
        "1",
        "--stop-grace-period",
        "1s",
        "--env",
        "GREETING=hello",
        "--config",
        "source=tmpl_conf,target=/etc/tmpl.conf",
        "busybox",
        "sh",
        "-c",
        "cat /etc/tmpl.conf; echo; sleep 100000",
    ]);
    let lines = wait_for("3 rendered configs in tmpl's logs", T, || {
        let logs = c.node(1).shoal(&["service", "logs", "--raw", "tmpl"]);
        let logs = String::from_utf8_lossy(&logs.stdout).into_owned();
        let mut lines: Vec<String> = logs.lines().filter(|l| l.starts_with("host=")).map(str::to_string).collect();
        lines.sort();
        (lines.len() == 3).then_some(lines).ok_or(logs)
    });
    // A task's output can reach its log before its RUNNING report reaches the manager.
    let want = wait_for("tmpl's 3 tasks running", T, || {
        let tasks = c.node(1).tasks("tmpl");
        let mut want: Vec<String> = tasks
            .iter()
            .filter(|t| t.state == "running")
            .map(|t| format!("host={} slot={} svc=tmpl greeting=hello", t.node, t.slot().unwrap()))
            .collect();
        want.sort();
        (want.len() == 3).then_some(want).ok_or(format!("{tasks:?}"))
    });
    assert_eq!(lines, want, "each task renders its own node and slot");

    step!("a template that fails when rendered fails its task, naming the config; a bad driver or syntax is refused");
    std::fs::write(&tmpl, r#"{{secret "nope"}}"#).unwrap();
    c.node(1).ok(&["config", "create", "--template-driver", "golang", "bad_tmpl", tmpl.to_str().unwrap()]);
    c.node(1).ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "bad",
        "--restart-condition",
        "none",
        "--config",
        "source=bad_tmpl,target=/x",
        "busybox",
        "sleep",
        "100000",
    ]);
    let err = wait_for("bad's task to fail with the template's error", T, || {
        let tasks = c.node(1).tasks("bad");
        tasks.iter().find(|t| !t.error.is_empty()).map(|t| t.error.clone()).ok_or(format!("{tasks:?}"))
    });
    assert!(err.contains("templated config bad_tmpl") && err.contains("secret target nope not found"), "{err}");
    let e = c.node(1).fails(&["config", "create", "--template-driver", "jinja", "j", tmpl.to_str().unwrap()]);
    assert!(e.contains("unsupported template driver \"jinja\""), "{e}");
    std::fs::write(&tmpl, "{{.Task.Slot").unwrap();
    let e = c.node(1).fails(&["config", "create", "--template-driver", "golang", "syntax", tmpl.to_str().unwrap()]);
    assert!(e.contains("config syntax: template parsing error"), "{e}");

    step!("SIGKILL the leader, node {leader}: a new task of app still gets the secret, still only on node {with}");
    c.node_mut(leader).kill();
    wait_for("a new leader", T, || c.leader(with).filter(|l| *l != leader).ok_or_else(|| "none yet".to_string()));
    wait_for("service update accepted after the leader change", T, || {
        let o = c.node(with).shoal(&["service", "update", "-d", "--env-add", "ROUND=2", "app"]);
        o.status.success().then_some(()).ok_or_else(|| String::from_utf8_lossy(&o.stderr).into_owned())
    });
    logs_with(c.node(with), "app", &format!("secret={upper} round=2"));
    assert_eq!(on_disk_holding(&c.node(with).data_root, SECRET.as_bytes()), Vec::<String>::new());
    assert_eq!(holding(&c.node(without).data_root, SECRET.as_bytes(), false), Vec::<String>::new());
}
