//! Stacks on a real daemon: every `compose-examples/` stack deploys and converges, a re-deploy with one changed
//! service replaces only that service's tasks, `--prune`, a bad file deploys nothing, and `stack rm` leaves no
//! service, network or container behind.
//!
//! Run: `cargo build --workspace --bins && cargo test -p shoal-tests --test stacks -- --test-threads=1`.

use shoal_tests::{shoal_command, step, wait_for, Daemon};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

/// The two tests run one at a time: each daemon makes its stacks' overlays in the host's namespace, and two
/// daemons there would both ask the kernel for the first VXLAN VNI (4096) on port 4789.
static ONE_DAEMON_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

const T: Duration = Duration::from_secs(120);

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("repo root").join("compose-examples")
}

fn example(name: &str) -> String {
    examples().join(name).join("compose.yml").to_str().expect("utf-8 path").to_string()
}

/// Loads the image the examples run, built by their own script.
fn start() -> Daemon {
    let d = Daemon::start();
    let out = tempfile::tempdir().expect("tempdir");
    let st = std::process::Command::new("bash")
        .arg(examples().join("build-images.sh"))
        .arg(out.path())
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .status()
        .expect("run build-images.sh");
    assert!(st.success(), "compose-examples/build-images.sh failed");
    d.ok(&["image", "load", "-i", out.path().join("busybox.tar").to_str().expect("utf-8")]);
    d.ok(&["swarm", "init", "--listen-addr", "127.0.0.1:0"]);
    d
}

/// `stack deploy` with extra environment variables; its stdout, or a panic with its stderr.
fn deploy(d: &Daemon, file: &str, stack: &str, env: &[(&str, &str)], extra: &[&str]) -> String {
    let mut args = vec!["stack", "deploy", "-c", file];
    args.extend_from_slice(extra);
    args.push(stack);
    let mut cmd = shoal_command(&d.socket, &args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o = cmd.output().expect("run shoal");
    assert!(
        o.status.success(),
        "stack deploy {stack} failed: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        d.log_tail(30)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Running tasks' ids of every service, by service name.
fn running_ids(d: &Daemon, services: &[&str]) -> BTreeMap<String, Vec<String>> {
    services
        .iter()
        .map(|s| {
            let mut ids: Vec<String> = d
                .tasks(s)
                .into_iter()
                .filter(|t| t.desired == "running" && t.state == "running")
                .map(|t| t.id)
                .collect();
            ids.sort();
            (s.to_string(), ids)
        })
        .collect()
}

fn wait_running(d: &Daemon, service: &str, n: usize) {
    wait_for(&format!("{service}: {n} tasks running"), T, || {
        let tasks = d.tasks(service);
        let running = tasks.iter().filter(|t| t.desired == "running" && t.state == "running").count();
        (running == n).then_some(()).ok_or(format!("{tasks:?}"))
    });
}

const VOTING: &[(&str, usize)] =
    &[("vote_vote", 2), ("vote_redis", 1), ("vote_worker", 1), ("vote_db", 1), ("vote_result", 1)];

#[test]
fn compose_examples_deploy_redeploy_prune_and_rm() {
    let _alone = ONE_DAEMON_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let d = start();

    step!("voting: five services; result is created once db is healthy");
    let out = deploy(&d, &example("voting"), "vote", &[], &[]);
    eprintln!("{out}");
    assert!(out.contains("Creating network vote_frontend") && out.contains("Creating network vote_backend"), "{out}");
    let pos = |line: &str| out.find(line).unwrap_or_else(|| panic!("no {line:?} in {out}"));
    assert!(pos("Creating service vote_db") < pos("Waiting for vote_db to be healthy before creating vote_result"));
    assert!(pos("Waiting for vote_db") < pos("Creating service vote_result"));
    for (s, n) in VOTING {
        wait_running(&d, s, *n);
    }

    step!("rolling: four web tasks; monitoring: one global agent");
    deploy(&d, &example("rolling"), "demo", &[], &[]);
    deploy(&d, &example("monitoring"), "mon", &[], &[]);
    wait_running(&d, "demo_web", 4);
    wait_running(&d, "mon_agent", 1);
    assert_eq!(d.ok(&["stack", "ls"]), "NAME      SERVICES\ndemo      1\nmon       1\nvote      5\n");
    let services = d.ok(&["stack", "services", "vote", "--format", "{{.Name}} {{.Replicas}}"]);
    assert_eq!(
        services,
        "vote_db 1/1 (max 1 per node)\nvote_redis 1/1\nvote_result 1/1\nvote_vote 2/2\nvote_worker 1/1\n"
    );
    let ps = d.ok(&["stack", "ps", "mon", "--format", "{{.Name}} {{.DesiredState}}"]);
    assert!(ps.starts_with("mon_agent.") && ps.trim_end().ends_with("Running"), "{ps}");

    step!("re-deploy: unchanged stacks are untouched, VERSION=2 replaces only demo_web's tasks");
    let all: Vec<&str> = VOTING.iter().map(|(s, _)| *s).chain(["demo_web", "mon_agent"]).collect();
    let before = running_ids(&d, &all);
    assert_eq!(deploy(&d, &example("voting"), "vote", &[], &[]), "", "nothing changed");
    assert_eq!(deploy(&d, &example("monitoring"), "mon", &[], &[]), "");
    let out = deploy(&d, &example("rolling"), "demo", &[("VERSION", "2")], &[]);
    assert!(out.starts_with("Updating service demo_web (id: ") && out.lines().count() == 1, "{out}");
    wait_for("demo_web: four new tasks running", T, || {
        let now = running_ids(&d, &["demo_web"]);
        let ids = &now["demo_web"];
        let fresh = ids.len() == 4 && ids.iter().all(|id| !before["demo_web"].contains(id));
        fresh.then_some(()).ok_or(format!("{now:?}"))
    });
    let inspected: serde_json::Value = serde_json::from_str(&d.ok(&["service", "inspect", "demo_web"])).unwrap();
    let env = &inspected[0]["spec"]["task_template"]["container"]["env"];
    assert!(env.as_array().is_some_and(|e| e.iter().any(|v| v == "VERSION=2")), "{env}");
    let after = running_ids(&d, &all);
    for s in all.iter().filter(|s| **s != "demo_web") {
        assert_eq!(after[*s], before[*s], "{s} was not to be touched");
    }

    step!("--prune removes the services no longer in the file, and only with --prune");
    let dir = tempfile::tempdir().expect("tempdir");
    let two = dir.path().join("two.yml");
    let one = dir.path().join("one.yml");
    std::fs::write(&two, "services:\n  a:\n    image: busybox\n    command: [sleep, \"1000\"]\n  b:\n    image: busybox\n    command: [sleep, \"1000\"]\n").unwrap();
    std::fs::write(&one, "services:\n  a:\n    image: busybox\n    command: [sleep, \"1000\"]\n").unwrap();
    let (two, one) = (two.to_str().unwrap(), one.to_str().unwrap());
    deploy(&d, two, "p", &[], &[]);
    wait_running(&d, "p_a", 1);
    wait_running(&d, "p_b", 1);
    let a_before = running_ids(&d, &["p_a"]);
    assert_eq!(deploy(&d, one, "p", &[], &[]), "");
    assert!(d.ok(&["stack", "services", "p", "--format", "{{.Name}}"]).contains("p_b"));
    assert_eq!(deploy(&d, one, "p", &[], &["--prune"]), "Removing service p_b\n");
    assert_eq!(d.ok(&["stack", "services", "p", "--format", "{{.Name}}"]), "p_a\n");
    assert_eq!(running_ids(&d, &["p_a"]), a_before);

    step!("a bad file names the file, line and variable, and deploys nothing");
    let bad = dir.path().join("bad.yml");
    std::fs::write(&bad, "services:\n  x:\n    image: \"busybox:${X_TAG:?set X_TAG}\"\n").unwrap();
    let err = d.fails(&["stack", "deploy", "-c", bad.to_str().unwrap(), "bad"]);
    assert_eq!(
        err.trim_end(),
        format!("{}:3:5: services.x.image: required variable X_TAG is missing a value: set X_TAG", bad.display())
    );
    assert!(!d.ok(&["stack", "ls"]).contains("bad"));

    step!("stack rm leaves nothing");
    let out = d.ok(&["stack", "rm", "vote", "demo", "mon", "p"]);
    assert!(out.contains("Removing service vote_db") && out.contains("Removing network vote_backend"), "{out}");
    assert_eq!(d.ok(&["stack", "ls"]), "NAME      SERVICES\n");
    assert_eq!(d.ok(&["service", "ls", "-q"]), "");
    assert_eq!(d.ok(&["network", "ls", "--format", "{{.Name}}"]), "ingress\n");
    wait_for("no containers left", T, || {
        let left = d.ctr_containers();
        left.is_empty().then_some(()).ok_or(format!("{left:?}"))
    });
}

/// A plain HTTP GET from the host; the body, or why not.
fn http_get(port: u16) -> Result<String, String> {
    let mut s = std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2))
        .map_err(|e| format!("connect :{port}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(3))).map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n").map_err(|e| e.to_string())?;
    let mut body = String::new();
    s.read_to_string(&mut body).map_err(|e| format!("read :{port}: {e}"))?;
    Ok(body)
}

/// Needs the routing mesh and secrets: the published ports answer and the database read its password.
#[test]
fn compose_examples_answer() {
    let _alone = ONE_DAEMON_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let d = start();
    deploy(&d, &example("voting"), "vote", &[], &[]);
    for (s, n) in VOTING {
        wait_running(&d, s, *n);
    }
    deploy(&d, &example("rolling"), "demo", &[], &[]);
    wait_running(&d, "demo_web", 4);
    for (port, want) in [(8080, "Vote: cats or dogs"), (8081, "Results"), (8090, "Version 1")] {
        wait_for(&format!("port {port} answers {want:?}"), Duration::from_secs(30), || {
            http_get(port).and_then(|b| if b.contains(want) { Ok(()) } else { Err(b) })
        });
    }
    wait_for("vote_db read its password secret", Duration::from_secs(30), || {
        let logs = d.ok(&["service", "logs", "vote_db"]);
        logs.contains("password loaded").then_some(()).ok_or(logs)
    });
    d.ok(&["stack", "rm", "vote", "demo"]);
}
