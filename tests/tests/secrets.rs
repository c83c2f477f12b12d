//! Secrets and configs on a real daemon: a task reads its secret at `/run/secrets/<name>` with the asked mode
//! and its config at its target; the data is on a tmpfs, nowhere on the node's disk; `inspect` never shows a
//! secret's data; a secret in use cannot be removed; `secret rotate` rolls the service onto the new version.

use shoal_tests::{step, wait_for, Daemon};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

const T: Duration = Duration::from_secs(90);
const SECRET: &str = "s3cr3t-e2e-4b1d9c-plaintext";
const ROTATED: &str = "r0tated-e2e-77aa01-plaintext";

/// Files under `dir` on `dir`'s own filesystem (tmpfs and other mounts below it skipped) holding `needle`.
fn on_disk_holding(dir: &Path, needle: &[u8]) -> Vec<String> {
    let dev = std::fs::metadata(dir).expect("data root").dev();
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else { continue };
            if m.dev() != dev {
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

/// The app service's logs once they hold `want`.
fn logs_with(d: &Daemon, want: &str) -> String {
    wait_for(&format!("the task's logs to show {want:?}"), T, || {
        let logs = d.ok(&["service", "logs", "--raw", "app"]);
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
    let logs = logs_with(&d, "mode=400");
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
    let logs = logs_with(&d, &format!("secret={}", ROTATED.to_uppercase()));
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
