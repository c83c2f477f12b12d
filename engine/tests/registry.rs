//! Pulls from a real registry (Debian's `docker-registry`, the CNCF distribution registry 2.8) started by each test
//! on loopback, into a private containerd: plain HTTP marked insecure, and TLS from a test CA with htpasswd auth.
//! The busybox test image is pushed with `oci-client`, then pulled back and run; a tampered blob, a wrong password,
//! an unknown tag, a closed port and a foreign platform are refused with one clear line and leave nothing behind.
//!
//! Needs root, containerd, runc, busybox-static, docker-registry and apache2-utils (nothing is skipped). Run:
//! `cargo test -p shoal-engine --test registry -- --test-threads=1`.

use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::{InfoRequest, ListStatusesRequest};
use engine::containerd::req;
use engine::image::ImageError;
use engine::registry::{Credentials, Registries, RegistryConfig, RegistryError};
use engine_api::ImagePullProgress;
use oci_client::manifest::{OciImageIndex, OciImageManifest, OciManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;
use serde_json::Value;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use swarm::agent::exec::{Controller, Executor};

#[macro_use]
mod common;
use common::*;

const USER: &str = "shoal";
const PASSWORD: &str = "s3cret-pw";

/// A registry process on a free loopback port; killed on drop.
struct Registry {
    child: Child,
    dir: tempfile::TempDir,
    host: String,
    tls: bool,
    /// The test CA's certificate (PEM), when TLS.
    ca_pem: Option<String>,
}

impl Registry {
    fn start(tls_and_auth: bool) -> Registry {
        let bin = "/usr/bin/docker-registry";
        assert!(Path::new(bin).exists(), "{bin} is missing: apt-get install docker-registry (scripts/install-deps.sh)");
        let dir = tempfile::Builder::new().prefix("shoal-reg-").tempdir_in("/tmp").expect("temp dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let host = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    \
             rootdirectory: {}\nhttp:\n  addr: {host}\n",
            dir.path().join("data").display()
        );
        let mut ca_pem = None;
        if tls_and_auth {
            let (ca, cert, key) = test_certs();
            std::fs::write(dir.path().join("cert.pem"), cert).unwrap();
            std::fs::write(dir.path().join("key.pem"), key).unwrap();
            ca_pem = Some(ca);
            let out = Command::new("htpasswd")
                .args(["-Bbn", USER, PASSWORD])
                .output()
                .expect("running htpasswd (apt-get install apache2-utils; scripts/install-deps.sh installs it)");
            assert!(out.status.success(), "htpasswd: {}", String::from_utf8_lossy(&out.stderr));
            std::fs::write(dir.path().join("htpasswd"), out.stdout).unwrap();
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\nauth:\n  htpasswd:\n    realm: shoal-test\n    path: {}\n",
                dir.path().join("cert.pem").display(),
                dir.path().join("key.pem").display(),
                dir.path().join("htpasswd").display()
            ));
        }
        let cfg = dir.path().join("config.yml");
        std::fs::write(&cfg, config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(bin)
            .arg("serve")
            .arg(&cfg)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("starting docker-registry");
        let reg = Registry { child, dir, host, tls: tls_and_auth, ca_pem };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&reg.host).is_err() {
            assert!(Instant::now() < deadline, "registry at {} did not listen within 20s: {}", reg.host, reg.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        step!("registry {} up ({})", reg.host, if tls_and_auth { "TLS + htpasswd" } else { "plain HTTP" });
        reg
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Shoal's registry settings for this registry: insecure when plain, its CA in a certs.d dir when TLS.
    fn shoal_config(&self, with_ca: bool) -> (RegistryConfig, tempfile::TempDir) {
        let certs = tempfile::tempdir().unwrap();
        if let (true, Some(ca)) = (with_ca, &self.ca_pem) {
            let d = certs.path().join(&self.host);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("ca.crt"), ca).unwrap();
        }
        let insecure = if self.tls { vec![] } else { vec![self.host.clone()] };
        (RegistryConfig { insecure, mirrors: vec![], certs_dir: certs.path().to_path_buf() }, certs)
    }

    /// A client for pushing test content.
    fn pusher(&self) -> oci_client::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut cfg = oci_client::client::ClientConfig {
            protocol: if self.tls {
                oci_client::client::ClientProtocol::Https
            } else {
                oci_client::client::ClientProtocol::Http
            },
            ..Default::default()
        };
        if let Some(ca) = &self.ca_pem {
            cfg.extra_root_certificates.push(oci_client::client::Certificate {
                encoding: oci_client::client::CertificateEncoding::Pem,
                data: ca.as_bytes().to_vec(),
            });
        }
        oci_client::Client::try_from(cfg).unwrap()
    }

    /// The file holding a blob in the registry's storage.
    fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir.path().join("data/docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CA, and a server certificate from it for 127.0.0.1 and localhost: (CA PEM, cert PEM, key PEM).
fn test_certs() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "shoal test registry CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, &ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let cert = params.signed_by(&key, &issuer).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// The busybox test image's blobs: (manifest JSON, config bytes, layer bytes).
fn busybox_blobs() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
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
    (manifest.clone(), blob(&m["config"]["digest"]), blob(&m["layers"][0]["digest"]))
}

fn sha(b: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))
}

/// What was pushed: the manifest digest the registry serves, and the config and layer digests.
struct Pushed {
    manifest: String,
    config: String,
    layer: String,
}

/// Pushes busybox as `<registry>/<repo>:<tag>`.
async fn push_busybox(reg: &Registry, repo: &str, tag: &str) -> Pushed {
    let (manifest, config, layer) = busybox_blobs();
    let client = reg.pusher();
    let r = Reference::with_tag(reg.host.clone(), repo.into(), tag.into());
    let auth = if reg.tls { RegistryAuth::Basic(USER.into(), PASSWORD.into()) } else { RegistryAuth::Anonymous };
    client.store_auth_if_needed(r.resolve_registry(), &auth).await;
    client.auth(&r, &auth, oci_client::RegistryOperation::Push).await.expect("auth for push");
    client.push_blob(&r, config.clone(), &sha(&config)).await.expect("pushing the config");
    client.push_blob(&r, layer.clone(), &sha(&layer)).await.expect("pushing the layer");
    let m: OciImageManifest = serde_json::from_slice(&manifest).unwrap();
    client.push_manifest(&r, &OciManifest::Image(m)).await.expect("pushing the manifest");
    let digest = client.fetch_manifest_digest(&r, &auth).await.expect("the pushed manifest's digest");
    step!("pushed {}/{repo}:{tag} = {digest}", reg.host);
    Pushed { manifest: digest, config: sha(&config), layer: sha(&layer) }
}

/// Pulls and gathers the progress lines.
async fn pull(
    regs: &Registries,
    env: &Env,
    reference: &str,
    platform: Option<&str>,
    creds: Option<Credentials>,
) -> (Result<engine::registry::PullOutcome, RegistryError>, Vec<ImagePullProgress>) {
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    let images = env.images();
    let collect = tokio::spawn(async move {
        let mut lines = Vec::new();
        while let Some(p) = rx.recv().await {
            lines.push(p);
        }
        lines
    });
    let r = regs.pull(&images, reference, platform, creds, tx).await;
    (r, collect.await.unwrap())
}

/// Pushes and gathers the progress lines.
async fn push(
    regs: &Registries,
    env: &Env,
    reference: &str,
) -> (Result<String, RegistryError>, Vec<ImagePullProgress>) {
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    let collect = tokio::spawn(async move {
        let mut lines = Vec::new();
        while let Some(p) = rx.recv().await {
            lines.push(p);
        }
        lines
    });
    let r = regs.push(&env.images(), reference, None, tx).await;
    (r, collect.await.unwrap())
}

/// The progress lines but the byte counts (Downloading, Pushing).
fn statuses(lines: &[ImagePullProgress]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.status != "Downloading" && l.status != "Pushing")
        .map(|l| if l.id.is_empty() { l.status.clone() } else { format!("{}: {}", l.id, l.status) })
        .collect()
}

async fn has_blob(env: &Env, digest: &str) -> bool {
    ContentClient::new(env.ch.clone()).info(req(InfoRequest { digest: digest.into() })).await.is_ok()
}

async fn ingests(env: &Env) -> Vec<String> {
    ContentClient::new(env.ch.clone())
        .list_statuses(req(ListStatusesRequest { filters: vec![] }))
        .await
        .expect("content.list_statuses")
        .into_inner()
        .statuses
        .into_iter()
        .map(|s| s.r#ref)
        .collect()
}

/// Runs `sh -c echo` in the pulled image and waits for its output.
async fn runs(env: &Env, image: &str) {
    let exec = env.executor();
    let mut t = task(&["sh", "-c", "echo pulled-and-running"]);
    t.spec_mut().container.image = image.into();
    let (c, _) = run(&exec, &t).await;
    wait_for_stdout(&env.log_path(&t.id), "pulled-and-running\n", Duration::from_secs(20)).await;
    let _ = c.wait().await;
    exec.remove_task(&t.id).await.expect("removing the task");
}

#[tokio::test]
async fn pull_from_an_insecure_registry_gives_the_pushed_bytes_and_runs() {
    let env = Env::start_empty().await;
    let reg = Registry::start(false);
    let pushed = push_busybox(&reg, "test/busybox", "v1").await;
    let (cfg, _certs) = reg.shoal_config(false);
    let regs = Registries::new(cfg);
    let image = format!("{}/test/busybox:v1", reg.host);
    let id = &pushed.layer["sha256:".len()..][..12];

    step!("first pull: every layer downloaded, then Digest and Status");
    let (r, lines) = pull(&regs, &env, &image, None, None).await;
    let out = r.unwrap_or_else(|e| panic!("pull {image}: {e}\n{}", reg.log()));
    assert_eq!(out.digest, pushed.manifest, "the digest pulled is the one pushed");
    assert!(!out.up_to_date);
    assert_eq!(
        statuses(&lines),
        vec![
            "v1: Pulling from 127.0.0.1:PORT/test/busybox".replace("127.0.0.1:PORT", &reg.host),
            format!("{id}: Pulling fs layer"),
            format!("{id}: Verifying Checksum"),
            format!("{id}: Download complete"),
            format!("{id}: Extracting"),
            format!("{id}: Pull complete"),
            format!("Digest: {}", pushed.manifest),
            format!("Status: Downloaded newer image for {image}"),
        ]
    );
    let down: Vec<&ImagePullProgress> = lines.iter().filter(|l| l.status == "Downloading").collect();
    assert!(!down.is_empty(), "download progress is reported");
    assert!(down.iter().all(|l| l.total == down[0].total && l.current <= l.total), "{down:?}");
    assert_eq!(down.last().unwrap().current, down.last().unwrap().total);

    step!("the image is the pushed one: same config (image id), same layer, and it runs");
    let images = env.images();
    let listed = images.list().await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].reference, image);
    assert_eq!(listed[0].id, pushed.config, "image id is the pushed config's digest");
    assert!(has_blob(&env, &pushed.layer).await && has_blob(&env, &pushed.manifest).await);
    images.resolve(&image).await.expect("the pulled image resolves");
    runs(&env, &image).await;
    assert!(ingests(&env).await.is_empty(), "no ingest is left behind");

    step!("tag and inspect");
    images.tag(&image, "mine:v2").await.expect("tagging");
    let inspected = images.inspect("mine:v2").await.expect("inspecting");
    assert_eq!(inspected.id, pushed.config);
    assert_eq!(inspected.repo_tags, vec![format!("{}/test/busybox:v1", reg.host), "mine:v2".to_string()]);
    assert!(inspected.repo_digests.contains(&format!("{}/test/busybox@{}", reg.host, pushed.manifest)));
    assert_eq!(inspected.rootfs.layers, vec![pushed.layer.clone()], "the layer is uncompressed: digest = diff id");
    assert_eq!(inspected.architecture, swarm::api::Platform::current().architecture);
    assert!(matches!(images.tag("nope:1", "x:1").await, Err(ImageError::NotFound(_))));
    images.remove("mine:v2", false).await.unwrap();

    step!("push under another name, then pull that back: the same manifest digest");
    let copy = format!("{}/copy/busybox:v9", reg.host);
    images.tag(&image, &copy).await.unwrap();
    let (r, lines) = push(&regs, &env, &copy).await;
    let pushed_digest = r.unwrap_or_else(|e| panic!("push: {e}\n{}", reg.log()));
    assert_eq!(pushed_digest, pushed.manifest, "the manifest's bytes went up unchanged");
    let done = format!("v9: digest: {} size: {}", pushed.manifest, busybox_blobs().0.len());
    assert_eq!(
        statuses(&lines),
        vec![
            format!("The push refers to repository [{}/copy/busybox]", reg.host),
            format!("{id}: Preparing"),
            format!("{id}: Pushed"),
            done.clone(),
        ]
    );
    // The layer went up streamed, in pieces, each a Pushing line counting up to its size.
    let layer_size = busybox_blobs().2.len() as u64;
    let up: Vec<(u64, u64)> = lines.iter().filter(|l| l.status == "Pushing").map(|l| (l.current, l.total)).collect();
    assert!(!up.is_empty() && up.iter().all(|(_, t)| *t == layer_size), "{up:?}");
    assert!(up.windows(2).all(|w| w[0].0 < w[1].0), "{up:?}");
    assert_eq!(up.last().unwrap().0, layer_size);
    let (r, lines) = push(&regs, &env, &copy).await;
    assert_eq!(r.unwrap(), pushed.manifest);
    assert_eq!(
        statuses(&lines)[1..],
        [format!("{id}: Preparing"), format!("{id}: Layer already exists"), done],
        "pushed again: nothing goes up"
    );
    images.remove(&copy, false).await.unwrap();
    let (r, _) = pull(&regs, &env, &copy, None, None).await;
    assert_eq!(r.unwrap().digest, pushed.manifest);
    images.remove(&copy, false).await.unwrap();

    step!("second pull: up to date, nothing downloaded");
    let (r, lines) = pull(&regs, &env, &image, None, None).await;
    assert!(r.unwrap().up_to_date);
    assert_eq!(
        statuses(&lines)[1..],
        [
            format!("{id}: Already exists"),
            format!("Digest: {}", pushed.manifest),
            format!("Status: Image is up to date for {image}"),
        ]
    );

    step!("by digest");
    let by_digest = format!("{}/test/busybox@{}", reg.host, pushed.manifest);
    let (r, _) = pull(&regs, &env, &by_digest, None, None).await;
    assert_eq!(r.unwrap().digest, pushed.manifest);
    images.resolve(&by_digest).await.expect("the digest reference resolves");

    step!("unknown tag, unknown repository, foreign platform");
    let (r, _) = pull(&regs, &env, &format!("{}/test/busybox:nope", reg.host), None, None).await;
    assert_eq!(
        r.unwrap_err().to_string(),
        format!("manifest for {}/test/busybox:nope not found: manifest unknown", reg.host)
    );
    let (r, _) = pull(&regs, &env, &format!("{}/test/busybox:v1", reg.host), Some("linux/s390x"), None).await;
    let e = r.unwrap_err().to_string();
    let node = swarm::api::Platform::current().architecture;
    assert_eq!(e, format!("image {image} is for linux/{node}, not linux/s390x"));
}

#[tokio::test]
async fn a_tampered_layer_is_refused_and_nothing_is_stored() {
    let env = Env::start_empty().await;
    let reg = Registry::start(false);
    let pushed = push_busybox(&reg, "test/busybox", "v1").await;
    let file = reg.blob_file(&pushed.layer);
    let mut bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    // Same size, one byte changed in the middle of the layer.
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();
    let actual = sha(&bytes);

    let (cfg, _certs) = reg.shoal_config(false);
    let regs = Registries::new(cfg);
    let image = format!("{}/test/busybox:v1", reg.host);
    let (r, _) = pull(&regs, &env, &image, None, None).await;
    let e = r.unwrap_err();
    assert!(matches!(e, RegistryError::DigestMismatch { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!("digest mismatch: layer {} from {} hashes to {actual}; nothing was stored", pushed.layer, reg.host)
    );
    assert!(matches!(env.images().resolve(&image).await, Err(ImageError::NotFound(_))), "no image record");
    assert!(!has_blob(&env, &pushed.layer).await, "the tampered layer is not in the content store");
    assert!(!has_blob(&env, &pushed.manifest).await && !has_blob(&env, &pushed.config).await);
    assert!(ingests(&env).await.is_empty(), "the bad ingest was aborted: {:?}", ingests(&env).await);
}

#[tokio::test]
async fn tls_registry_with_htpasswd_wants_the_right_credentials() {
    let env = Env::start_empty().await;
    let reg = Registry::start(true);
    let pushed = push_busybox(&reg, "private/busybox", "v1").await;
    let image = format!("{}/private/busybox:v1", reg.host);
    let good = || Some(Credentials { username: USER.into(), password: PASSWORD.into() });

    step!("the test CA not trusted: a TLS error naming the registry");
    let (cfg, _c1) = reg.shoal_config(false);
    let (r, _) = pull(&Registries::new(cfg), &env, &image, None, good()).await;
    let e = r.unwrap_err();
    assert!(matches!(e, RegistryError::Tls { .. }), "{e:?}");
    assert!(e.to_string().starts_with(&format!("registry {}: tls: ", reg.host)), "{e}");

    let (cfg, _c2) = reg.shoal_config(true);
    let regs = Registries::new(cfg);
    step!("no credentials, wrong password: 401");
    let (r, _) = pull(&regs, &env, &image, None, None).await;
    assert_eq!(
        r.unwrap_err().to_string(),
        format!(
            "pull access denied for {image}: 401 Unauthorized: authentication required (run 'shoal login {}')",
            reg.host
        )
    );
    let wrong = Credentials { username: USER.into(), password: "wrong".into() };
    let (r, _) = pull(&regs, &env, &image, None, Some(wrong.clone())).await;
    assert_eq!(
        r.unwrap_err().to_string(),
        format!("registry {}: 401 Unauthorized: incorrect username or password", reg.host)
    );
    let e = regs.login(&reg.host, &wrong).await.unwrap_err();
    assert_eq!(e.to_string(), format!("registry {}: 401 Unauthorized: incorrect username or password", reg.host));
    assert!(env.images().list().await.unwrap().is_empty(), "nothing was stored");

    step!("the right credentials: login succeeds and the pull gives the pushed image");
    regs.login(&format!("https://{}", reg.host), &good().unwrap()).await.expect("login with the right password");
    let (r, _) = pull(&regs, &env, &image, None, good()).await;
    assert_eq!(r.unwrap_or_else(|e| panic!("{e}\n{}", reg.log())).digest, pushed.manifest);
    assert_eq!(env.images().list().await.unwrap()[0].id, pushed.config);
}

#[tokio::test]
async fn unreachable_registries_are_one_clear_line() {
    let env = Env::start_empty().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let host = format!("127.0.0.1:{port}");
    let regs = Registries::new(RegistryConfig {
        insecure: vec![host.clone()],
        mirrors: vec![],
        certs_dir: "/nonexistent".into(),
    });
    let (r, _) = pull(&regs, &env, &format!("{host}/a/b:1"), None, None).await;
    assert_eq!(r.unwrap_err().to_string(), format!("registry {host}: connection refused"));
    let (r, _) = pull(&regs, &env, "registry.invalid/a/b:1", None, None).await;
    assert_eq!(r.unwrap_err().to_string(), "registry registry.invalid: no such host");
    let (r, _) = pull(&regs, &env, &format!("{host}/a/b:1"), Some("linux"), None).await;
    assert_eq!(r.unwrap_err().to_string(), "invalid platform \"linux\": expected os/arch[/variant], e.g. linux/amd64");
}

#[tokio::test]
async fn a_multi_platform_index_gives_this_nodes_image_and_concurrent_pulls_share_layers() {
    let env = Env::start_empty().await;
    let reg = Registry::start(false);
    let pushed = push_busybox(&reg, "multi/busybox", "single").await;
    let client = reg.pusher();
    let node = swarm::api::Platform::current().architecture;
    let other = if node == "amd64" { "arm64" } else { "amd64" };
    // The same layer under a config for another architecture, pushed by digest: the index's first entry.
    let (manifest, config, layer) = busybox_blobs();
    let mut foreign_cfg: Value = serde_json::from_slice(&config).unwrap();
    foreign_cfg["architecture"] = other.into();
    let foreign_cfg = serde_json::to_vec(&foreign_cfg).unwrap();
    let mut foreign: Value = serde_json::from_slice(&manifest).unwrap();
    foreign["config"]["digest"] = sha(&foreign_cfg).into();
    foreign["config"]["size"] = foreign_cfg.len().into();
    let repo = |tag: &str| Reference::with_tag(reg.host.clone(), "multi/busybox".into(), tag.into());
    client.push_blob(&repo("x"), foreign_cfg.clone(), &sha(&foreign_cfg)).await.unwrap();
    client.push_blob(&repo("x"), layer.clone(), &sha(&layer)).await.unwrap();
    let m: OciImageManifest = serde_json::from_value(foreign).unwrap();
    client.push_manifest(&repo("foreign"), &OciManifest::Image(m)).await.expect("pushing the foreign manifest");
    let manifest_of = |tag: &'static str| {
        let client = &client;
        let r = repo(tag);
        async move {
            let (body, digest) = client
                .pull_manifest_raw(&r, &RegistryAuth::Anonymous, &["application/vnd.oci.image.manifest.v1+json"])
                .await
                .unwrap();
            (digest, body.len())
        }
    };
    let (foreign_digest, foreign_size) = manifest_of("foreign").await;
    let (ours_digest, ours_size) = manifest_of("single").await;
    assert_eq!(ours_digest, pushed.manifest);
    let entry = |digest: &str, size: usize, arch: &str| {
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "size": size,
            "platform": {"os": "linux", "architecture": arch},
        })
    };
    let index: OciImageIndex = serde_json::from_value(serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry(&foreign_digest, foreign_size, other), entry(&ours_digest, ours_size, &node)],
    }))
    .unwrap();
    let r = Reference::with_tag(reg.host.clone(), "multi/busybox".into(), "multi".into());
    client.push_manifest(&r, &OciManifest::ImageIndex(index)).await.expect("pushing the index");
    let index_digest = client.fetch_manifest_digest(&r, &RegistryAuth::Anonymous).await.unwrap();

    // Through a proxy that never cuts, to count the requests.
    let proxy = CutProxy::start(reg.host.clone(), 0).await;
    let regs = Registries::new(RegistryConfig {
        insecure: vec![proxy.host.clone()],
        mirrors: vec![],
        certs_dir: "/nonexistent".into(),
    });
    let image = format!("{}/multi/busybox:multi", proxy.host);
    step!("two pulls of the index at once");
    let (a, b) = tokio::join!(pull(&regs, &env, &image, None, None), pull(&regs, &env, &image, None, None));
    for (r, _) in [&a, &b] {
        let out = r.as_ref().unwrap_or_else(|e| panic!("{e}\n{}", reg.log()));
        assert_eq!(out.digest, index_digest, "Digest: is the index's");
    }
    let listed = env.images().list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, pushed.config, "this node's manifest was picked");
    let requests = proxy.requests.lock().unwrap().clone();
    let layer_gets = requests.matches(&format!("GET /v2/multi/busybox/blobs/{} ", pushed.layer)).count();
    assert_eq!(layer_gets, 1, "the shared layer was downloaded once: {requests}");
    assert!(!requests.contains(&foreign_digest), "the other platform's manifest was not fetched");
    runs(&env, &image).await;

    step!("pushed back to its repository: the index itself (its digest kept); elsewhere this node's manifest");
    let again = format!("{}/multi/busybox:again", proxy.host);
    env.images().tag(&image, &again).await.unwrap();
    let (r, lines) = push(&regs, &env, &again).await;
    assert_eq!(r.unwrap_or_else(|e| panic!("push: {e}\n{}", reg.log())), index_digest);
    let index_size = client
        .pull_manifest_raw(&repo("again"), &RegistryAuth::Anonymous, &["application/vnd.oci.image.index.v1+json"])
        .await
        .unwrap()
        .0
        .len();
    assert_eq!(statuses(&lines).last().unwrap(), &format!("again: digest: {index_digest} size: {index_size}"));
    let elsewhere = format!("{}/other/busybox:v1", proxy.host);
    env.images().tag(&image, &elsewhere).await.unwrap();
    let (r, _) = push(&regs, &env, &elsewhere).await;
    assert_eq!(r.unwrap(), ours_digest, "the other platform's manifest is not in that repository");
    env.images().remove(&again, false).await.unwrap();
    env.images().remove(&elsewhere, false).await.unwrap();

    step!("another platform than the index offers");
    let (r, _) = pull(&regs, &env, &image, Some("linux/s390x"), None).await;
    assert_eq!(
        r.unwrap_err().to_string(),
        format!("no matching manifest for linux/s390x in the manifest list entries (the image offers linux/{other}, linux/{node})")
    );
}

/// A TCP proxy in front of the registry that can cut each connection once it has passed `cut_after` bytes back
/// to the client (0: never), and keeps the text of every request it forwarded.
struct CutProxy {
    host: String,
    cut_after: std::sync::Arc<std::sync::atomic::AtomicU64>,
    requests: std::sync::Arc<std::sync::Mutex<String>>,
}

impl CutProxy {
    async fn start(upstream: String, cut_after: u64) -> CutProxy {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(cut_after));
        let requests = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (c, r) = (cut.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (cut, requests, upstream) = (c.clone(), r.clone(), upstream.clone());
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else { return };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = async {
                        let mut buf = vec![0u8; 16 << 10];
                        while let Ok(n) = cr.read(&mut buf).await {
                            if n == 0 || sw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                            requests.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
                        }
                    };
                    let down = async {
                        let mut buf = vec![0u8; 16 << 10];
                        let mut passed = 0u64;
                        while let Ok(n) = sr.read(&mut buf).await {
                            let limit = cut.load(Ordering::SeqCst);
                            if n == 0 || (limit > 0 && passed + n as u64 > limit) {
                                break;
                            }
                            if cw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                            passed += n as u64;
                        }
                    };
                    // Either direction ending drops both sockets: the client sees the connection cut.
                    tokio::select! { _ = up => {}, _ = down => {} }
                });
            }
        });
        CutProxy { host, cut_after: cut, requests }
    }
}

#[tokio::test]
async fn an_interrupted_pull_resumes_from_the_content_store() {
    let env = Env::start_empty().await;
    let reg = Registry::start(false);
    let pushed = push_busybox(&reg, "test/busybox", "v1").await;
    // The layer is about 2 MiB: cut after 1.5 MiB, when the first 1 MiB chunk is in containerd's ingest.
    let proxy = CutProxy::start(reg.host.clone(), 1536 << 10).await;
    let regs = Registries::new(RegistryConfig {
        insecure: vec![proxy.host.clone()],
        mirrors: vec![],
        certs_dir: "/nonexistent".into(),
    });
    let image = format!("{}/test/busybox:v1", proxy.host);

    step!("the first pull is cut mid-layer");
    let (r, _) = pull(&regs, &env, &image, None, None).await;
    let e = r.unwrap_err();
    assert!(matches!(e, RegistryError::Registry { .. }), "{e:?}");
    let statuses = ContentClient::new(env.ch.clone())
        .list_statuses(req(ListStatusesRequest { filters: vec![] }))
        .await
        .unwrap()
        .into_inner()
        .statuses;
    assert_eq!(statuses.len(), 1, "the layer's ingest is kept: {statuses:?}");
    let kept = statuses[0].offset;
    assert!(kept >= 1 << 20, "at least the first chunk was written: {kept}");
    assert!(matches!(env.images().resolve(&image).await, Err(ImageError::NotFound(_))));

    step!("the second pull asks the registry only for the rest");
    proxy.cut_after.store(0, std::sync::atomic::Ordering::SeqCst);
    let (r, _) = pull(&regs, &env, &image, None, None).await;
    assert_eq!(r.unwrap_or_else(|e| panic!("{e}\n{}", reg.log())).digest, pushed.manifest);
    let requests = proxy.requests.lock().unwrap().to_ascii_lowercase();
    assert!(requests.contains(&format!("range: bytes={kept}-")), "no ranged request from {kept}: {requests}");
    assert_eq!(env.images().list().await.unwrap()[0].id, pushed.config);
    assert!(has_blob(&env, &pushed.layer).await, "the resumed layer was committed (containerd checked its digest)");
    assert!(ingests(&env).await.is_empty());
    runs(&env, &image).await;
}

#[tokio::test]
async fn docker_schema_2_manifests_pull_too() {
    let env = Env::start_empty().await;
    let reg = Registry::start(false);
    // Push busybox first (its blobs), then the same image as a Docker schema 2 manifest with Docker's media types.
    let pushed = push_busybox(&reg, "docker/busybox", "oci").await;
    let (manifest, _, _) = busybox_blobs();
    let mut m: Value = serde_json::from_slice(&manifest).unwrap();
    m["mediaType"] = "application/vnd.docker.distribution.manifest.v2+json".into();
    m["config"]["mediaType"] = "application/vnd.docker.container.image.v1+json".into();
    m["layers"][0]["mediaType"] = "application/vnd.docker.image.rootfs.diff.tar".into();
    let m: OciImageManifest = serde_json::from_value(m).unwrap();
    let r = Reference::with_tag(reg.host.clone(), "docker/busybox".into(), "v2".into());
    let client = reg.pusher();
    client.push_manifest(&r, &OciManifest::Image(m)).await.expect("pushing the schema 2 manifest");
    let digest = client.fetch_manifest_digest(&r, &RegistryAuth::Anonymous).await.unwrap();
    assert_ne!(digest, pushed.manifest);

    let (cfg, _certs) = reg.shoal_config(false);
    let regs = Registries::new(cfg);
    let image = format!("{}/docker/busybox:v2", reg.host);
    let (r, _) = pull(&regs, &env, &image, None, None).await;
    assert_eq!(r.unwrap_or_else(|e| panic!("{e}\n{}", reg.log())).digest, digest);
    assert_eq!(env.images().inspect(&image).await.unwrap().id, pushed.config);
    runs(&env, &image).await;
}

/// A tmpfs mounted over a directory; unmounted on drop.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(dir).unwrap();
        let o = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(dir).output();
        let o = o.expect("mount");
        assert!(o.status.success(), "mount tmpfs: {}", String::from_utf8_lossy(&o.stderr));
        SmallDisk(dir.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_full_disk_is_one_line_and_leaves_nothing_half_stored() {
    require_machine();
    let reg = Registry::start(false);
    let pushed = push_busybox(&reg, "test/busybox", "v1").await;
    // containerd's content store on a 1 MiB tmpfs: the ~2 MiB layer cannot be written whole.
    let dir = tempfile::Builder::new().prefix("shoal-ce-").tempdir_in("/tmp").expect("temp dir");
    let data_root = dir.path().join("data");
    let exec_root = dir.path().join("exec");
    let _disk = SmallDisk::mount(&data_root.join("containerd/root/io.containerd.content.v1.content"), "1m");
    let managed = engine::containerd::ManagedContainerd::start(&data_root, &exec_root).await.expect("containerd");
    let ch = engine::containerd::connect(managed.socket(), Duration::from_secs(10)).await.expect("connect");
    let env = Env { dir: Some(dir), data_root, exec_root, managed: Some(managed), ch };
    let (cfg, _certs) = reg.shoal_config(false);
    let regs = Registries::new(cfg);
    let image = format!("{}/test/busybox:v1", reg.host);

    let (r, _) = pull(&regs, &env, &image, None, None).await;
    let e = r.expect_err("the pull cannot fit");
    assert!(matches!(e, RegistryError::DiskFull { .. }), "{e:?}");
    assert_eq!(e.to_string(), format!("no space left on device while storing {image}; nothing was stored"));
    assert!(ingests(&env).await.is_empty(), "no partial ingest is kept: {:?}", ingests(&env).await);
    assert!(!has_blob(&env, &pushed.layer).await && !has_blob(&env, &pushed.manifest).await);
    assert!(env.images().list().await.unwrap().is_empty(), "no image record");
    let used = std::fs::read_dir(env.data_root.join("containerd/root/io.containerd.content.v1.content/ingest"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(used, 0, "the ingest directories are gone, and their space with them");
}

#[tokio::test]
async fn concurrent_tasks_of_one_image_share_one_pull() {
    let env = Env::start_empty().await;
    let reg = Registry::start(false);
    let pushed = push_busybox(&reg, "shared/busybox", "v1").await;
    // Through a proxy that never cuts, to count the requests.
    let proxy = CutProxy::start(reg.host.clone(), 0).await;
    let regs = Registries::new(RegistryConfig {
        insecure: vec![proxy.host.clone()],
        mirrors: vec![],
        certs_dir: "/nonexistent".into(),
    });
    let exec = env.executor().with_registries(regs);
    let image = format!("{}/shared/busybox:v1", proxy.host);
    let tasks: Vec<_> = (0..2)
        .map(|_| {
            let mut t = task(&["true"]);
            t.spec_mut().container.image = image.clone();
            t
        })
        .collect();
    let (a, b) = (exec.controller(&tasks[0]).expect("controller"), exec.controller(&tasks[1]).expect("controller"));

    step!("two tasks of an image this node lacks, prepared at once");
    let (ra, rb) = tokio::join!(a.prepare(), b.prepare());
    ra.unwrap_or_else(|e| panic!("prepare: {e}\n{}", reg.log()));
    rb.unwrap_or_else(|e| panic!("prepare: {e}\n{}", reg.log()));
    let requests = proxy.requests.lock().unwrap().clone();
    let gets = |path: &str| requests.matches(&format!("GET /v2/shared/busybox/{path} ")).count();
    // Two pulls would each fetch the manifest and the config (only the layer's download is shared by the
    // content store): once each means one pull.
    assert_eq!(gets("manifests/v1"), 1, "one manifest fetch: {requests}");
    assert_eq!(gets(&format!("blobs/{}", pushed.config)), 1, "one config fetch: {requests}");
    assert_eq!(gets(&format!("blobs/{}", pushed.layer)), 1, "one layer download: {requests}");
    assert_eq!(env.images().list().await.unwrap()[0].id, pushed.config);

    step!("a third task finds the image here and asks the registry nothing");
    let before = proxy.requests.lock().unwrap().len();
    let mut third = task(&["true"]);
    third.spec_mut().container.image = image.clone();
    exec.controller(&third).expect("controller").prepare().await.expect("prepare from the local image");
    assert_eq!(proxy.requests.lock().unwrap().len(), before);
    for t in tasks.iter().chain([&third]) {
        exec.remove_task(&t.id).await.expect("removing the task");
    }
}
