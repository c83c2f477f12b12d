//! Autolock on a real daemon: `swarm init --autolock` prints the unlock key; after a restart of `shoald` the
//! manager is locked (`info` says so, swarm commands are refused with Docker's message), a wrong key is refused,
//! and `echo KEY | shoal swarm unlock` brings it back with its service and secret as they were.

use shoal_tests::{shoal_command, step, wait_for, Daemon};
use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

const T: Duration = Duration::from_secs(90);

/// `echo <key> | shoal swarm unlock`: (success, stdout, stderr).
fn unlock(d: &Daemon, key: &str) -> (bool, String, String) {
    let mut child = shoal_command(&d.socket, &["swarm", "unlock"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run shoal swarm unlock");
    writeln!(child.stdin.take().unwrap(), "{key}").unwrap();
    let o = child.wait_with_output().unwrap();
    (o.status.success(), String::from_utf8_lossy(&o.stdout).into(), String::from_utf8_lossy(&o.stderr).into())
}

/// The running task of the one-replica service `web`, once there is one.
fn running_task(d: &Daemon) -> String {
    wait_for("web's task running", T, || {
        let tasks = d.tasks("web");
        match tasks.iter().find(|t| t.desired == "running" && t.state == "running") {
            Some(t) => Ok(t.id.clone()),
            None => Err(format!("{tasks:?}")),
        }
    })
}

#[test]
fn a_restarted_autolocked_manager_stays_locked_until_unlocked() {
    let mut d = Daemon::start();
    d.ok(&["image", "load", "-i", shoal_tests::test_image().to_str().unwrap()]);

    step!("swarm init --autolock prints the unlock key and how to unlock");
    let out = d.ok(&["swarm", "init", "--listen-addr", "127.0.0.1:0", "--autolock"]);
    assert!(out.contains("To unlock a swarm manager after it restarts, run the `shoal swarm unlock`"), "{out}");
    let key = out
        .split_whitespace()
        .find(|w| w.starts_with("SWMKEY-1-"))
        .unwrap_or_else(|| panic!("no unlock key in {out}"))
        .to_string();
    assert_eq!(d.ok(&["swarm", "unlock-key", "-q"]).trim(), key);
    let info = d.ok(&["info"]);
    assert!(info.contains("Swarm: active"), "{info}");

    step!("a secret and a service using it");
    let file = d.dir.path().join("pw.txt");
    std::fs::write(&file, "autolock-e2e-secret").unwrap();
    d.ok(&["secret", "create", "db_pw", file.to_str().unwrap()]);
    d.ok(&["service", "create", "--name", "web", "--secret", "db_pw", "busybox", "sleep", "100000"]);
    let task = running_task(&d);

    step!("the key files on disk hold no key in clear");
    let swarm_dir = d.data_root.join("swarm");
    let data_key = std::fs::read_to_string(swarm_dir.join("data.key")).unwrap();
    assert!(data_key.starts_with("2\n") && !data_key.contains("SHOALDEK-1-"), "{data_key}");
    let tls_key = std::fs::read_to_string(swarm_dir.join("certificates/swarm-node.key")).unwrap();
    assert!(!tls_key.contains("BEGIN PRIVATE KEY"), "{tls_key}");

    step!("restart shoald: locked");
    d.restart();
    let info = d.ok(&["info"]);
    assert!(info.contains("Swarm: locked"), "{info}");
    let e = d.fails(&["service", "ls"]);
    assert!(
        e.contains(
            "Swarm is encrypted and needs to be unlocked before it can be used. Please use \"shoal swarm unlock\" \
             to unlock it."
        ),
        "{e}"
    );
    let e = d.fails(&["swarm", "join-token", "worker"]);
    assert!(e.contains("Swarm is encrypted"), "{e}");

    step!("a wrong key is refused and the node stays locked");
    let (ok, out, err) = unlock(&d, "SWMKEY-1-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    assert!(!ok, "{out}");
    assert!(out.contains("Please enter unlock key:"), "{out}");
    assert!(err.contains("swarm could not be unlocked: invalid key provided"), "{err}");
    assert!(d.ok(&["info"]).contains("Swarm: locked"));

    step!("the right key: the service and its task are as before");
    let (ok, _, err) = unlock(&d, &key);
    assert!(ok, "unlock failed: {err}\n{}", d.log_tail(30));
    wait_for("info says active", T, || {
        let info = d.ok(&["info"]);
        if info.contains("Swarm: active") {
            Ok(())
        } else {
            Err(info)
        }
    });
    assert_eq!(running_task(&d), task, "the same task runs on");
    assert!(d.ok(&["secret", "ls"]).contains("db_pw"));
    let (ok, _, err) = unlock(&d, &key);
    assert!(!ok && err.contains("swarm is not locked"), "{err}");

    step!("unlock-key --rotate: a new key; --autolock=false: no key, a restart is not locked");
    let out = d.ok(&["swarm", "unlock-key", "--rotate"]);
    assert!(out.starts_with("Successfully rotated manager unlock key."), "{out}");
    let new_key = d.ok(&["swarm", "unlock-key", "-q"]).trim().to_string();
    assert!(new_key.starts_with("SWMKEY-1-") && new_key != key, "{new_key}");
    assert_eq!(d.ok(&["swarm", "update", "--autolock=false"]).trim(), "Swarm updated.");
    let e = d.fails(&["swarm", "unlock-key"]);
    assert!(e.contains("no unlock key is set"), "{e}");
    wait_for("data.key in clear", T, || {
        let k = std::fs::read_to_string(swarm_dir.join("data.key")).unwrap();
        if k.starts_with("1\n") {
            Ok(())
        } else {
            Err(k)
        }
    });
    d.restart();
    let info = d.ok(&["info"]);
    assert!(!info.contains("Swarm: locked"), "{info}");
    assert_eq!(running_task(&d), task);
}
