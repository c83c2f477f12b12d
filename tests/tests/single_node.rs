//! A one-node swarm on real containerd: services become containers, the cluster keeps them at the declared
//! state, and survives a SIGKILLed daemon.

use shoal_tests::{step, wait_for, Daemon, TaskRow};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(90);

/// Waits until the service has exactly `n` tasks desired and observed running, and containerd runs exactly
/// those tasks' containers (no more, no fewer). Returns the running task ids.
fn wait_converged(d: &Daemon, service: &str, n: usize) -> Vec<String> {
    wait_for(&format!("{service} to run exactly {n} tasks, each with one running container"), T, || {
        let tasks = d.tasks(service);
        let mut running: Vec<String> =
            tasks.iter().filter(|t| t.desired == "running" && t.state == "running").map(|t| t.id.clone()).collect();
        running.sort();
        let live = tasks.iter().filter(|t| t.desired == "running").count();
        let mut containers: Vec<String> = d.running().into_iter().map(|c| c.id).collect();
        containers.sort();
        if running.len() == n && live == n && containers == running {
            Ok(running)
        } else {
            Err(format!("running tasks {running:?} (live {live}), running containers {containers:?}"))
        }
    })
}

/// Creates a one-task service, waits until it runs, removes it and waits until its container is gone. Used
/// as a barrier: the orchestrator, scheduler and agent have handled everything that came before it.
fn run_probe(d: &Daemon) {
    d.ok(&["service", "create", "-d", "--name", "probe", "--stop-grace-period", "1s", "busybox", "sleep", "100000"]);
    let id = wait_for("the probe service to run", T, || {
        let tasks = d.tasks("probe");
        let running = tasks.iter().find(|t| t.state == "running").ok_or(format!("{tasks:?}"))?;
        if d.running().iter().any(|c| c.id == running.id) {
            Ok(running.id.clone())
        } else {
            Err(format!("task {} runs but no container yet", running.id))
        }
    });
    d.ok(&["service", "rm", "probe"]);
    wait_for("the probe's container to be deleted", T, || {
        let c = d.ctr_containers();
        if c.contains(&id) {
            Err(format!("{c:?}"))
        } else {
            Ok(())
        }
    });
}

#[test]
fn services_become_containers_and_stay_converged() {
    let mut d = Daemon::start();
    step!("init a one-node swarm");
    d.init_swarm();
    let info = d.ok(&["info"]);
    for line in ["Swarm: active", "Is Manager: true", "Managers: 1", "Nodes: 1"] {
        assert!(info.contains(line), "info lacks {line:?}:\n{info}");
    }

    step!("create a 3-replica busybox service");
    d.ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "3",
        "--stop-grace-period",
        "1s",
        "busybox",
        "sleep",
        "100000",
    ]);
    let first = wait_converged(&d, "web", 3);
    let ls = d.ok(&["service", "ls"]);
    assert!(ls.contains("web") && ls.contains("3/3"), "service ls:\n{ls}");

    step!("containers carry labels linking them to their tasks");
    let info = std::process::Command::new("ctr")
        .arg("-a")
        .arg(d.containerd_socket())
        .args(["-n", "shoal", "containers", "info", &first[0]])
        .output()
        .expect("ctr containers info");
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains("com.docker.swarm.task.id") && info.contains(&first[0]), "labels missing:\n{info}");

    step!("kill one container's process: a replacement runs, the old task shows failed");
    let victim = d.running().into_iter().find(|c| c.id == first[0]).expect("victim container");
    unsafe {
        libc::kill(victim.pid as i32, libc::SIGKILL);
    }
    let after = wait_converged(&d, "web", 3);
    assert!(!after.contains(&victim.id), "the killed task must be replaced, not restarted in place");
    let old = d.tasks("web").into_iter().find(|t| t.id == victim.id).expect("old task kept in history");
    assert_eq!(old.state, "failed", "old task: {old:?}");
    let ps = d.ok(&["service", "ps", "web"]);
    assert!(ps.contains("Failed") && ps.contains("non-zero exit (137)"), "service ps:\n{ps}");

    step!("scale 3 → 10 → 1");
    d.ok(&["service", "scale", "web=10", "-d"]);
    wait_converged(&d, "web", 10);
    d.ok(&["service", "scale", "web=1", "-d"]);
    let one = wait_converged(&d, "web", 1);
    let slots: Vec<Option<u64>> = d.tasks("web").iter().filter(|t| t.desired == "running").map(TaskRow::slot).collect();
    assert_eq!(slots.len(), 1, "one live slot after scaling to 1: {slots:?}");
    assert!(slots[0].is_some(), "a replicated task has a slot: {slots:?}");

    step!("SIGKILL shoald mid-run and restart it: still converged, no duplicate containers");
    d.ok(&["service", "scale", "web=3", "-d"]);
    wait_converged(&d, "web", 3);
    d.kill9();
    assert_eq!(d.running().len(), 3, "containers outlive the daemon");
    d.restart();
    let again = wait_converged(&d, "web", 3);
    // A service created now runs only once the restarted managers and agent have worked through their state,
    // web's tasks included: after that, web must still be the same three tasks.
    step!("a service created after the restart runs; web is unchanged once it does");
    run_probe(&d);
    let stable = wait_converged(&d, "web", 3);
    assert_eq!(again, stable, "re-adopted containers, not replacements");
    assert!(one.iter().all(|t| again.contains(t)), "the surviving task of the scale-down was re-adopted");

    step!("service rm leaves no containers");
    d.ok(&["service", "rm", "web"]);
    wait_for("every container of web to be deleted", T, || {
        let c = d.ctr_containers();
        if c.is_empty() {
            Ok(())
        } else {
            Err(format!("{c:?}"))
        }
    });
    let ls = d.ok(&["service", "ls", "-q"]);
    assert!(ls.trim().is_empty(), "service ls -q after rm: {ls}");
}

#[test]
fn restart_policy_constraints_and_bad_input() {
    let d = Daemon::start();
    d.init_swarm();

    step!("a second shoald on the same data root refuses to start, saying why; the harness says so at once");
    let started = Instant::now();
    let second = std::panic::catch_unwind(|| Daemon::start_with_data_root(&d.data_root));
    let Err(panic) = second else { panic!("a second daemon on {} must not start", d.data_root.display()) };
    let msg = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("shoald exited while starting"), "harness message: {msg}");
    assert!(msg.contains("another shoald") && msg.contains(&d.data_root.display().to_string()), "{msg}");
    // The harness's wait is 60 s; noticing the exit must not take anywhere near that.
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?} to notice", started.elapsed());

    step!("--restart-condition none leaves a killed task dead");
    d.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "once",
        "--replicas",
        "2",
        "--restart-condition",
        "none",
        "--stop-grace-period",
        "1s",
        "busybox",
        "sleep",
        "100000",
    ]);
    let ids = wait_converged(&d, "once", 2);
    let victim = d.running().into_iter().find(|c| c.id == ids[0]).expect("container");
    unsafe {
        libc::kill(victim.pid as i32, libc::SIGKILL);
    }
    // The restart decision and the shutdown of the old task are one write: once the killed task is desired
    // shut down, a replacement (even a delayed one) would already be listed.
    wait_for("the killed task to show failed and be desired shut down", T, || {
        let t = d.tasks("once").into_iter().find(|t| t.id == victim.id).ok_or("gone")?;
        if t.state == "failed" && t.desired == "shutdown" {
            Ok(())
        } else {
            Err(format!("{t:?}"))
        }
    });
    // And the slot left empty is not refilled by a later reconciliation either.
    run_probe(&d);
    let tasks = d.tasks("once");
    assert_eq!(tasks.len(), 2, "no replacement was created: {tasks:?}");
    assert_eq!(d.running().len(), 1);

    step!("a constraint no node satisfies leaves tasks pending with a reason");
    d.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "nowhere",
        "--replicas",
        "2",
        "--constraint",
        "node.labels.zone==mars",
        "busybox",
        "sleep",
        "100000",
    ]);
    let pending = wait_for("nowhere's tasks to be pending with a reason", T, || {
        let tasks = d.tasks("nowhere");
        let ok = tasks.len() == 2
            && tasks.iter().all(|t| {
                t.state == "pending" && t.error == "no suitable node (scheduling constraints not satisfied on 1 node)"
            });
        if ok {
            Ok(tasks)
        } else {
            Err(format!("{tasks:?}"))
        }
    });
    assert!(pending.iter().all(|t| t.node.is_empty()), "pending tasks are on no node: {pending:?}");
    let ps = d.ok(&["service", "ps", "nowhere", "--no-trunc"]);
    assert!(ps.contains("Pending") && ps.contains("no suitable node"), "service ps:\n{ps}");

    step!("reservations beyond the node's memory: pending with 'insufficient memory'");
    d.ok(&["service", "create", "-d", "--name", "huge", "--reserve-memory", "100000G", "busybox", "sleep", "1"]);
    wait_for("huge's task to be pending for memory", T, || {
        let tasks = d.tasks("huge");
        match tasks.as_slice() {
            [t] if t.state == "pending" && t.error == "no suitable node (insufficient memory on 1 node)" => Ok(()),
            _ => Err(format!("{tasks:?}")),
        }
    });

    step!("a missing image: the node tries to pull it and the task is rejected with the pull's reason");
    d.ok(&["service", "create", "-d", "--name", "ghost", "nosuchimage:1.0", "sh"]);
    wait_for("ghost's task to be rejected", T, || {
        let tasks = d.tasks("ghost");
        let t = tasks.iter().find(|t| t.state == "rejected").ok_or(format!("{tasks:?}"))?;
        // Offline the reason is the registry's host failing to resolve; online, the registry's "not found".
        if t.error.contains("nosuchimage") || t.error.contains("docker.io") {
            Ok(())
        } else {
            Err(t.error.clone())
        }
    });

    step!("bad input gets clear errors and changes nothing");
    let before = d.ok(&["service", "ls", "-q"]);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["service", "create", "--name", "Bad.Name", "busybox"], "invalid name"),
        (vec!["service", "create", "--name", "neg", "--replicas", "-1", "busybox"], "replicas"),
        (vec!["service", "create", "--name", "once", "busybox"], "already exists"),
        (vec!["service", "create", "--name", "m1", "--mount", "type=bind,target=/x", "busybox"], "mount"),
        (vec!["service", "create", "--name", "m2", "--mount", "type=nonsense,source=/a,target=/b", "busybox"], "mount"),
        (vec!["service", "create", "--name", "img", "Not A Ref"], "invalid reference format"),
        (vec!["service", "create", "--name", "dur", "--restart-delay", "soon", "busybox"], "soon"),
        (vec!["service", "create", "--name", "mode", "--mode", "sometimes", "busybox"], "sometimes"),
        (vec!["service", "scale", "nosuch=3"], "not found"),
        (vec!["swarm", "init"], "already part of a swarm"),
        (vec!["swarm", "leave"], "--force"),
    ];
    for (args, needle) in cases {
        let err = d.fails(&args);
        assert!(
            err.to_lowercase().contains(&needle.to_lowercase()),
            "`shoal {}`: expected {needle:?} in {err:?}",
            args.join(" ")
        );
        assert_eq!(err.trim().lines().count(), 1, "one clear line, got: {err}");
    }
    assert_eq!(d.ok(&["service", "ls", "-q"]), before, "bad input changed no state");
    let names = d.service_names();
    for absent in ["neg", "m1", "m2", "img", "dur", "mode"] {
        assert!(!names.iter().any(|n| n == absent), "{absent} must not exist: {names:?}");
    }
    assert!(names.iter().any(|n| n == "once"), "the listing is not empty by accident: {names:?}");
}
