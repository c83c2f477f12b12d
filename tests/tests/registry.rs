//! `shoal login` and `shoal pull` on a real `shoald` against a real registry (Debian's `docker-registry`) with TLS
//! from a test CA (trusted through `--registry-certs-dir`) and htpasswd auth; then a service runs the pulled image.
//!
//! Needs root, containerd, runc, busybox-static, docker-registry and apache2-utils (nothing is skipped); the
//! binaries must be built (`cargo build --workspace --bins`).

use oci_client::manifest::{OciImageManifest, OciManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;
use serde_json::Value;
use shoal_tests::*;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const USER: &str = "shoal";
const PASSWORD: &str = "e2e-pw";

/// A TLS + htpasswd registry on a free loopback port; killed on drop.
struct Registry {
    child: Child,
    _dir: tempfile::TempDir,
    host: String,
    ca_pem: String,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_registry() -> Registry {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
    let dir = tempfile::Builder::new().prefix("shoal-e2e-reg-").tempdir_in("/tmp").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let host = format!("127.0.0.1:{port}");
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, &ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let cert = params.signed_by(&key, &issuer).unwrap();
    let p = |n: &str| dir.path().join(n).display().to_string();
    std::fs::write(p("cert.pem"), cert.pem()).unwrap();
    std::fs::write(p("key.pem"), key.serialize_pem()).unwrap();
    let out = Command::new("htpasswd").args(["-Bbn", USER, PASSWORD]).output().expect("htpasswd (apache2-utils)");
    assert!(out.status.success());
    std::fs::write(p("htpasswd"), out.stdout).unwrap();
    let config = format!(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {host}\n  \
         tls:\n    certificate: {}\n    key: {}\nauth:\n  htpasswd:\n    realm: e2e\n    path: {}\n",
        p("data"),
        p("cert.pem"),
        p("key.pem"),
        p("htpasswd")
    );
    std::fs::write(p("config.yml"), config).unwrap();
    let log = std::fs::File::create(p("registry.log")).unwrap();
    let child = Command::new("/usr/bin/docker-registry")
        .arg("serve")
        .arg(p("config.yml"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("docker-registry (apt-get install docker-registry)");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(&host).is_err() {
        assert!(
            Instant::now() < deadline,
            "registry did not listen: {}",
            std::fs::read_to_string(p("registry.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Registry { child, _dir: dir, host, ca_pem: ca.pem() }
}

fn sha(b: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))
}

/// Pushes the busybox test image as `<host>/<repo>:<tag>`; returns (manifest digest, config digest).
fn push_busybox(reg: &Registry, repo: &str, tag: &str) -> (String, String) {
    push_variant(reg, repo, tag, None)
}

/// Pushes busybox as `<host>/<repo>:<tag>`, with `MARKER=<marker>` added to its config's environment when
/// given (another config, so another image digest over the same layer).
fn push_variant(reg: &Registry, repo: &str, tag: &str, marker: Option<&str>) -> (String, String) {
    let mut files = HashMap::new();
    let mut ar = tar::Archive::new(std::fs::File::open(test_image()).unwrap());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().trim_start_matches("./").to_string();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        files.insert(name, data);
    }
    let blob =
        |d: &Value| files[&format!("blobs/sha256/{}", d.as_str().unwrap().trim_start_matches("sha256:"))].clone();
    let index: Value = serde_json::from_slice(&files["index.json"]).unwrap();
    let manifest = blob(&index["manifests"][0]["digest"]);
    let m: Value = serde_json::from_slice(&manifest).unwrap();
    let (mut config, layer) = (blob(&m["config"]["digest"]), blob(&m["layers"][0]["digest"]));
    let mut manifest = manifest;
    if let Some(marker) = marker {
        let mut c: Value = serde_json::from_slice(&config).unwrap();
        let env = c["config"]["Env"].as_array_mut().expect("the config has an Env");
        env.push(Value::String(format!("MARKER={marker}")));
        config = serde_json::to_vec(&c).unwrap();
        let mut m = m.clone();
        m["config"]["digest"] = Value::String(sha(&config));
        m["config"]["size"] = Value::from(config.len());
        manifest = serde_json::to_vec(&m).unwrap();
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut cfg = oci_client::client::ClientConfig::default();
        cfg.extra_root_certificates.push(oci_client::client::Certificate {
            encoding: oci_client::client::CertificateEncoding::Pem,
            data: reg.ca_pem.as_bytes().to_vec(),
        });
        let client = oci_client::Client::try_from(cfg).unwrap();
        let r = Reference::with_tag(reg.host.clone(), repo.into(), tag.into());
        let auth = RegistryAuth::Basic(USER.into(), PASSWORD.into());
        client.store_auth_if_needed(r.resolve_registry(), &auth).await;
        client.auth(&r, &auth, oci_client::RegistryOperation::Push).await.expect("auth");
        client.push_blob(&r, config.clone(), &sha(&config)).await.expect("push config");
        client.push_blob(&r, layer.clone(), &sha(&layer)).await.expect("push layer");
        let m: OciImageManifest = serde_json::from_slice(&manifest).unwrap();
        client.push_manifest(&r, &OciManifest::Image(m)).await.expect("push manifest");
        (client.fetch_manifest_digest(&r, &auth).await.expect("digest"), sha(&config))
    })
}

/// `shoal` with a credentials directory of its own and `stdin`.
fn shoal(d: &Daemon, config: &Path, stdin: &str, args: &[&str]) -> (bool, String, String) {
    let mut cmd = shoal_command(&d.socket, args);
    cmd.env("SHOAL_CONFIG", config).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run shoal");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn login_pull_and_run_from_a_private_tls_registry() {
    let reg = start_registry();
    let (digest, config) = push_busybox(&reg, "private/busybox", "v1");
    let certs = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(certs.path().join(&reg.host)).unwrap();
    std::fs::write(certs.path().join(&reg.host).join("ca.crt"), &reg.ca_pem).unwrap();
    let d = Daemon::start_with_args(&["--registry-certs-dir", certs.path().to_str().unwrap()]);
    let creds = tempfile::tempdir().unwrap();
    let image = format!("{}/private/busybox:v1", reg.host);

    let (ok, _, err) = shoal(&d, creds.path(), "", &["pull", &image]);
    assert!(!ok);
    assert_eq!(
        err,
        format!(
            "Error response from daemon: pull access denied for {image}: 401 Unauthorized: authentication required \
             (run 'shoal login {}')\n",
            reg.host
        )
    );
    let (ok, _, err) = shoal(&d, creds.path(), "nope\n", &["login", "-u", USER, "--password-stdin", &reg.host]);
    assert!(!ok);
    assert_eq!(
        err,
        format!(
            "Error response from daemon: registry {}: 401 Unauthorized: incorrect username or password\n",
            reg.host
        )
    );
    let (ok, out, err) =
        shoal(&d, creds.path(), &format!("{PASSWORD}\n"), &["login", "-u", USER, "--password-stdin", &reg.host]);
    assert!(ok, "{err}");
    assert_eq!(out, "Login Succeeded\n");

    let (ok, out, err) = shoal(&d, creds.path(), "", &["image", "pull", &image]);
    assert!(ok, "{err}\n{}", d.log_tail(30));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "v1: Pulling from {}/private/busybox".replace("{}", &reg.host));
    assert!(lines.iter().any(|l| l.ends_with(": Pull complete")), "{out}");
    assert_eq!(lines[lines.len() - 2], format!("Digest: {digest}"));
    assert_eq!(lines[lines.len() - 1], format!("Status: Downloaded newer image for {image}"));
    let ls = d.ok(&["image", "ls", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"]);
    assert_eq!(ls, format!("{}/private/busybox:v1 {}\n", reg.host, &config["sha256:".len()..][..12]));

    d.ok(&["swarm", "init", "--listen-addr", "127.0.0.1:0"]);
    d.ok(&["service", "create", "-d", "--name", "web", &image, "sleep", "1000"]);
    wait_for("the service's task running from the pulled image", Duration::from_secs(60), || {
        let tasks = d.tasks("web");
        if tasks.iter().any(|t| t.state == "running") {
            Ok(())
        } else {
            Err(format!("{tasks:?}"))
        }
    });
}

/// The value of a `service inspect` field.
fn inspect(d: &Daemon, service: &str, template: &str) -> String {
    d.ok(&["service", "inspect", service, "--format", template]).trim().to_string()
}

/// The `marker=…` lines the service's tasks printed, sorted.
fn markers(d: &Daemon, service: &str) -> Vec<String> {
    let out = d.ok(&["service", "logs", "--raw", service]);
    let mut m: Vec<String> = out.lines().filter(|l| l.starts_with("marker=")).map(str::to_string).collect();
    m.sort();
    m
}

#[test]
fn services_pull_on_demand_pinned_to_the_digest_with_the_clients_credentials() {
    let reg = start_registry();
    let (one, _) = push_variant(&reg, "private/app", "v1", Some("one"));
    let certs = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(certs.path().join(&reg.host)).unwrap();
    std::fs::write(certs.path().join(&reg.host).join("ca.crt"), &reg.ca_pem).unwrap();
    // This daemon never loads an image: everything its tasks run comes from the registry.
    let d = Daemon::start_with_args(&["--registry-certs-dir", certs.path().to_str().unwrap()]);
    d.ok(&["swarm", "init", "--listen-addr", "127.0.0.1:0"]);
    let creds = tempfile::tempdir().unwrap();
    let image = format!("{}/private/app:v1", reg.host);
    let cmd = ["sh", "-c", "echo marker=$MARKER; exec sleep 1000"];
    let run = |args: &[&str]| {
        let (ok, out, err) = shoal(&d, creds.path(), "", args);
        assert!(ok, "`shoal {}` failed: {err}\n{}", args.join(" "), d.log_tail(30));
        (out, err)
    };

    step!("without credentials the digest cannot be recorded: Docker's warning, and the tag is kept");
    let (_, err) = run(&[&["service", "create", "-d", "--name", "anon", &image][..], &cmd[..]].concat());
    assert_eq!(
        err,
        format!(
            "image {image} could not be accessed on a registry to record its digest. Each node will access {image} \
             independently, possibly leading to different nodes running different versions of the image.\n"
        )
    );
    assert_eq!(inspect(&d, "anon", "{{.Spec.TaskTemplate.Container.Image}}"), image);
    step!("the node cannot pull without credentials: the task is rejected with the registry's reason");
    wait_for("anon's task rejected", Duration::from_secs(60), || {
        let tasks = d.tasks("anon");
        match tasks.iter().find(|t| t.state == "rejected") {
            Some(t) => Ok(t.error.clone()),
            None => Err(format!("{tasks:?}")),
        }
    });
    let rejected = d.tasks("anon").into_iter().find(|t| t.state == "rejected").unwrap();
    assert_eq!(
        rejected.error,
        format!(
            "pull access denied for {image}: 401 Unauthorized: authentication required (run 'shoal login {}')",
            reg.host
        )
    );
    d.ok(&["service", "rm", "anon"]);

    let (ok, _, err) =
        shoal(&d, creds.path(), &format!("{PASSWORD}\n"), &["login", "-u", USER, "--password-stdin", &reg.host]);
    assert!(ok, "{err}");

    step!("an image the registry does not have: rejected with its reason");
    let missing = format!("{}/private/nope:v1", reg.host);
    let (_, err) =
        run(&[&["service", "create", "-d", "--with-registry-auth", "--name", "nope", &missing][..], &cmd[..]].concat());
    assert!(err.contains("could not be accessed on a registry"), "{err}");
    let error = wait_for("nope's task rejected", Duration::from_secs(60), || {
        let tasks = d.tasks("nope");
        tasks.iter().find(|t| t.state == "rejected").map(|t| t.error.clone()).ok_or(format!("{tasks:?}"))
    });
    assert_eq!(error, format!("manifest for {missing} not found: manifest unknown"));
    d.ok(&["service", "rm", "nope"]);

    step!("3 replicas with the client's credentials, pinned to the tag's digest");
    let (out, err) = run(&[
        &["service", "create", "-d", "--with-registry-auth", "--replicas", "3", "--name", "web", &image][..],
        &cmd[..],
    ]
    .concat());
    assert_eq!(err, "", "the digest was recorded: no warning");
    let id = out.trim().to_string();
    let pinned = format!("{image}@{one}");
    assert_eq!(inspect(&d, "web", "{{.Spec.TaskTemplate.Container.Image}}"), pinned);
    let ls = d.ok(&["service", "ls", "--format", "{{.Name}} {{.Image}}"]);
    assert_eq!(ls, format!("web {image}\n"), "service ls shows name:tag, as Docker");
    wait_for("3 tasks running from the registry", Duration::from_secs(90), || {
        let tasks = d.tasks("web");
        let running = tasks.iter().filter(|t| t.state == "running").count();
        if running == 3 {
            Ok(())
        } else {
            Err(format!("{tasks:?}\n{}", d.log_tail(10)))
        }
    });
    let log = std::fs::read_to_string(d.log_path()).unwrap();
    assert_eq!(log.matches("pulled for a task").count(), 1, "the three tasks shared one pull:\n{log}");
    wait_for("each task printed its image's marker", Duration::from_secs(30), || {
        let m = markers(&d, "web");
        if m == ["marker=one"; 3] {
            Ok(())
        } else {
            Err(format!("{m:?}"))
        }
    });

    step!("the credentials are kept for the agents but never shown");
    let b64 = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
    };
    for args in [
        &["service", "inspect", "web"][..],
        &["service", "inspect", "--pretty", "web"][..],
        &["service", "ls", "--format", "json"][..],
        &["service", "ps", "--no-trunc", "--format", "json", "web"][..],
    ] {
        let out = d.ok(args);
        for secret in [PASSWORD, b64.as_str(), "registry_auth", "RegistryAuth"] {
            assert!(!out.contains(secret), "`shoal {}` shows {secret:?}:\n{out}", args.join(" "));
        }
    }

    step!("they rest sealed: the swarm's Raft log and state hold no trace of them");
    // What `--with-registry-auth` sent: base64url of {"username","password","serveraddress"}; its first 36
    // characters encode the user name and most of the password whatever follows.
    let sent = {
        use base64::Engine as _;
        let json = format!(r#"{{"username":"{USER}","password":"{PASSWORD}","serveraddress":"#);
        base64::engine::general_purpose::URL_SAFE.encode(json)
    };
    let (mut stack, mut read, mut holding_cert) = (vec![d.data_root.join("swarm")], 0, 0);
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let bytes = std::fs::read(&p).unwrap_or_default();
            let holds = |needle: &str| bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
            for secret in [&sent[..36], PASSWORD, b64.as_str()] {
                assert!(!holds(secret), "{} holds {secret:?}", p.display());
            }
            read += 1;
            // The whole spec rests sealed with the data key, the image's name too; the node's certificate does
            // not, which shows the grep reads what it walks.
            assert!(
                !p.starts_with(d.data_root.join("swarm/raft")) || !holds("private/app"),
                "{} holds the spec",
                p.display()
            );
            holding_cert += usize::from(holds("BEGIN CERTIFICATE"));
        }
    }
    assert!(read > 3 && holding_cert > 0, "the grep reads the files ({read} files)");

    step!("moving the tag changes nothing that runs");
    let before: Vec<String> = d.tasks("web").into_iter().filter(|t| t.state == "running").map(|t| t.id).collect();
    let (two, _) = push_variant(&reg, "private/app", "v1", Some("two"));
    assert_ne!(one, two);
    // An update that does not name the image (here: a label) keeps the pinned digest.
    run(&["service", "update", "-d", "--label-add", "moved=yes", "web"]);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(inspect(&d, "web", "{{.Spec.TaskTemplate.Container.Image}}"), pinned);
    let now: Vec<String> = d.tasks("web").into_iter().filter(|t| t.state == "running").map(|t| t.id).collect();
    assert_eq!(now, before, "the same tasks run");
    assert_eq!(markers(&d, "web"), ["marker=one"; 3]);

    step!("service update --image re-resolves the tag: the tasks move to the new digest");
    let (_, err) = run(&["service", "update", "-d", "--image", &image, "web"]);
    assert_eq!(err, "");
    assert_eq!(inspect(&d, "web", "{{.Spec.TaskTemplate.Container.Image}}"), format!("{image}@{two}"));
    wait_for("3 tasks running the new digest", Duration::from_secs(120), || {
        let m = markers(&d, "web");
        let tasks = d.tasks("web");
        let running = tasks.iter().filter(|t| t.state == "running" && !before.contains(&t.id)).count();
        if running == 3 && m.iter().filter(|l| *l == "marker=two").count() == 3 {
            Ok(())
        } else {
            Err(format!("{m:?} {tasks:?}"))
        }
    });
    assert_eq!(inspect(&d, "web", "{{.ID}}"), id);
}
