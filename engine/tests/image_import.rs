//! Image import and use against a real containerd, with archives crafted here to be hostile: layers that lie
//! about their diff id, `/etc/passwd` as a symlink to a host file or a FIFO, docker-save manifests naming paths
//! outside the archive, concurrent imports, and the image config's StopSignal, Volumes and platform.
//!
//! Needs root, containerd, runc and busybox-static (nothing is skipped). Run:
//! `cargo test -p shoal-engine --test image_import -- --test-threads=1`.

use engine::image::ImageError;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};
use swarm::agent::exec::{Controller, ExecError, Executor};

#[macro_use]
mod common;
use common::*;

fn sha(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// One entry of a crafted layer.
enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
    Fifo(&'a str),
}

/// An uncompressed layer tarball (its digest is its diff id).
fn layer(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(0);
        match e {
            E::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                b.append_data(&mut h, p, &[][..]).unwrap();
            }
            E::File(p, data) => {
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, *data).unwrap();
            }
            E::Symlink(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                b.append_link(&mut h, p, target).unwrap();
            }
            E::Fifo(p) => {
                h.set_entry_type(tar::EntryType::Fifo);
                b.append_data(&mut h, p, &[][..]).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

/// The files of a tarball by name.
fn tar_files(path: &Path) -> HashMap<String, Vec<u8>> {
    let mut files = HashMap::new();
    let mut ar = tar::Archive::new(std::fs::File::open(path).unwrap());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().trim_start_matches("./").to_string();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        files.insert(name, data);
    }
    files
}

/// The busybox test image's layer and the `config` section of its image config.
fn busybox() -> (Vec<u8>, Value) {
    let files = tar_files(test_image());
    let json = |p: &str| -> Value { serde_json::from_slice(&files[p]).unwrap() };
    let blob = |d: &Value| format!("blobs/sha256/{}", d.as_str().unwrap().trim_start_matches("sha256:"));
    let index = json("index.json");
    let manifest = json(&blob(&index["manifests"][0]["digest"]));
    let config = json(&blob(&manifest["config"]["digest"]));
    (files[&blob(&manifest["layers"][0]["digest"])].clone(), config["config"].clone())
}

/// An image to craft.
struct Img {
    name: &'static str,
    layers: Vec<Vec<u8>>,
    /// What the config claims (default: the layers' real diff ids).
    diff_ids: Option<Vec<String>>,
    /// The image config's `config` section.
    config: Value,
    architecture: String,
    /// Put the manifest behind an index whose only entry has this platform's architecture.
    in_index: bool,
}

impl Img {
    fn new(name: &'static str, layers: Vec<Vec<u8>>, config: Value) -> Img {
        let arch = swarm::api::Platform::current().architecture;
        Img { name, layers, diff_ids: None, config, architecture: arch, in_index: false }
    }

    fn config_json(&self) -> Vec<u8> {
        let diff_ids = self.diff_ids.clone().unwrap_or_else(|| self.layers.iter().map(|l| sha(l)).collect());
        serde_json::to_vec(&json!({
            "architecture": self.architecture, "os": "linux", "config": self.config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .unwrap()
    }

    /// Writes it as an OCI image layout tarball.
    fn oci(&self, out: &Path) {
        let mut blobs: Vec<Vec<u8>> = self.layers.clone();
        let config = self.config_json();
        let desc = |mt: &str, b: &[u8]| json!({"mediaType": mt, "digest": sha(b), "size": b.len()});
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": desc("application/vnd.oci.image.config.v1+json", &config),
            "layers": self.layers.iter().map(|l| desc("application/vnd.oci.image.layer.v1.tar", l)).collect::<Vec<_>>(),
        }))
        .unwrap();
        let mut top = desc("application/vnd.oci.image.manifest.v1+json", &manifest);
        if self.in_index {
            let mut entry = top.clone();
            entry["platform"] = json!({"os": "linux", "architecture": self.architecture});
            let index = serde_json::to_vec(&json!({
                "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [entry],
            }))
            .unwrap();
            top = desc("application/vnd.oci.image.index.v1+json", &index);
            blobs.push(index);
        }
        blobs.push(config);
        blobs.push(manifest);
        top["annotations"] = json!({"io.containerd.image.name": self.name});
        let index = json!({"schemaVersion": 2, "manifests": [top]}).to_string();
        let mut files: Vec<(String, Vec<u8>)> =
            blobs.into_iter().map(|b| (format!("blobs/sha256/{}", &sha(&b)[7..]), b)).collect();
        files.push(("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()));
        files.push(("index.json".into(), index.into_bytes()));
        write_tar(out, &files, &[]);
    }

    /// Writes it as a `docker save` tarball tagged `tag`.
    fn docker_save(&self, out: &Path, tag: &str) {
        let config = self.config_json();
        let config_name = format!("{}.json", &sha(&config)[7..]);
        let mut files = vec![(config_name.clone(), config)];
        let mut names = Vec::new();
        for l in &self.layers {
            let n = format!("{}/layer.tar", &sha(l)[7..]);
            names.push(n.clone());
            files.push((n, l.clone()));
        }
        let mj = json!([{ "Config": config_name, "RepoTags": [tag], "Layers": names }]);
        files.insert(0, ("manifest.json".into(), mj.to_string().into_bytes()));
        write_tar(out, &files, &[]);
    }
}

/// A tarball of regular files plus symlinks (name, target).
fn write_tar(out: &Path, files: &[(String, Vec<u8>)], links: &[(&str, &str)]) {
    let mut b = tar::Builder::new(std::fs::File::create(out).unwrap());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    for (name, target) in links {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, name, target).unwrap();
    }
    b.into_inner().unwrap().flush().unwrap();
}

fn image_task(image: &str, args: &[&str]) -> swarm::api::Task {
    let mut t = task(args);
    t.spec_mut().container.image = image.into();
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_that_does_not_match_its_diff_id_is_refused() {
    let env = Env::start_empty().await;
    let images = env.images();
    let dir = tempfile::tempdir().unwrap();
    let (bb_layer, bb_config) = busybox();
    let bb_diff = sha(&bb_layer);

    step!("an archive claiming busybox's diff id for other content, under busybox's name");
    let evil = layer(&[
        E::Dir("bin"),
        E::File("bin/sh", b"#!/planted\n"),
        E::Dir("etc"),
        E::File("etc/passwd", b"root:x:0:0:hacked:/:/bin/sh\n"),
    ]);
    let mut img = Img::new("docker.io/library/busybox:latest", vec![evil.clone()], bb_config);
    img.diff_ids = Some(vec![bb_diff.clone()]);
    let path = dir.path().join("evil.tar");
    img.oci(&path);
    let e = images.load(&path).await.unwrap_err();
    assert!(matches!(e, ImageError::LayerMismatch { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!(
            "invalid image archive: layer {} unpacks to {}, but the image config says {bb_diff}",
            sha(&evil),
            sha(&evil)
        )
    );
    assert!(!env.snapshot_exists(&bb_diff).await, "no snapshot was committed under busybox's chain id");
    assert!(matches!(images.resolve("busybox").await, Err(ImageError::NotFound(_))), "no image record either");

    step!("the genuine image then loads and runs with its own content");
    images.load(test_image()).await.expect("the genuine busybox loads");
    assert!(env.snapshot_exists(&bb_diff).await);
    let exec = env.executor();
    let t = task(&["sh", "-c", "cat /etc/passwd; echo done"]);
    let c = exec.controller(&t).unwrap();
    c.prepare().await.unwrap();
    c.start().await.unwrap();
    assert_eq!(c.wait().await.unwrap().exit_code, 0);
    wait_for_stdout(&env.log_path(&t.id), "done\n", Duration::from_secs(10)).await;
    let recs = log_records(&env.log_path(&t.id));
    assert!(has_record(&recs, "root:x:0:0:root:/root:/bin/sh\n", "stdout"), "{recs:?}");
    assert!(!recs.iter().any(|r| r["log"].as_str().unwrap_or_default().contains("hacked")), "{recs:?}");
    c.remove().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_lookup_never_leaves_the_image() {
    let env = Env::start().await;
    let images = env.images();
    let exec = env.executor();
    let dir = tempfile::tempdir().unwrap();
    let (bb_layer, bb_config) = busybox();
    let host = tempfile::tempdir().unwrap();
    let secret = host.path().join("passwd");
    std::fs::write(&secret, "shoalhacker:x:4242:4242::/:/bin/sh\n").unwrap();
    let secret = secret.display().to_string();

    let load = |name: &'static str, top: Vec<u8>| {
        let path = dir.path().join(format!("{}.tar", name.replace(['/', ':'], "_")));
        Img::new(name, vec![bb_layer.clone(), top], bb_config.clone()).oci(&path);
        let images = images.clone();
        async move { images.load(&path).await.unwrap_or_else(|e| panic!("loading {name}: {e}")) }
    };
    let prepare_as = |image: &str, user: &str| {
        let mut t = image_task(image, &["id", "-u"]);
        t.spec_mut().container.user = user.into();
        let c = exec.controller(&t).unwrap();
        async move {
            let r = tokio::time::timeout(Duration::from_secs(30), c.prepare())
                .await
                .expect("prepare finished within 30s (a FIFO must not block it)");
            (c, t.id, r)
        }
    };

    step!("control: a regular /etc/passwd in the top layer resolves the name");
    load(
        "docker.io/shoal-test/passwd:ok",
        layer(&[E::Dir("etc"), E::File("etc/passwd", b"shoalhacker:x:4242:4242::/:/bin/sh\n")]),
    )
    .await;
    let (c, id, r) = prepare_as("shoal-test/passwd:ok", "shoalhacker").await;
    r.expect("the user is found in the image's own file");
    c.start().await.unwrap();
    assert_eq!(c.wait().await.unwrap().exit_code, 0);
    wait_for_stdout(&env.log_path(&id), "4242\n", Duration::from_secs(10)).await;
    c.remove().await.unwrap();

    step!("/etc/passwd a symlink to a host file: the link is resolved inside the image, the host file unread");
    load("docker.io/shoal-test/passwd:symlink", layer(&[E::Dir("etc"), E::Symlink("etc/passwd", &secret)])).await;
    let (_, _, r) = prepare_as("shoal-test/passwd:symlink", "shoalhacker").await;
    let e = r.unwrap_err();
    assert_eq!(
        e,
        ExecError::InvalidSpec("unable to find user shoalhacker: no matching entries in passwd file".into()),
        "the host's file was not read"
    );
    let climb = format!("../../../../../../../../..{secret}");
    load("docker.io/shoal-test/passwd:climb", layer(&[E::Dir("etc"), E::Symlink("etc/passwd", &climb)])).await;
    let (_, _, r) = prepare_as("shoal-test/passwd:climb", "shoalhacker").await;
    assert!(matches!(&r, Err(ExecError::InvalidSpec(m)) if m.contains("unable to find user shoalhacker")), "{r:?}");

    step!("/etc/passwd a FIFO: refused at once, nothing blocks");
    load("docker.io/shoal-test/passwd:fifo", layer(&[E::Dir("etc"), E::Fifo("etc/passwd")])).await;
    let t0 = Instant::now();
    let (_, _, r) = prepare_as("shoal-test/passwd:fifo", "nobody").await;
    assert_eq!(
        r.unwrap_err(),
        ExecError::InvalidSpec("resolving the user: /etc/passwd in the image is not a regular file".into())
    );
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());

    step!("an oversized /etc/group is refused");
    let big = vec![b'#'; (2 << 20) as usize];
    load("docker.io/shoal-test/group:big", layer(&[E::Dir("etc"), E::File("etc/group", &big)])).await;
    let (_, _, r) = prepare_as("shoal-test/group:big", "nobody:nogroup").await;
    assert_eq!(
        r.unwrap_err(),
        ExecError::InvalidSpec("resolving the user: /etc/group in the image is larger than 1048576 bytes".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_docker_save_archives_are_refused() {
    let env = Env::start_empty().await;
    let images = env.images();
    let dir = tempfile::tempdir().unwrap();
    let (bb_layer, bb_config) = busybox();
    let config = Img::new("x", vec![bb_layer.clone()], bb_config).config_json();
    let layer_name = format!("{}/layer.tar", &sha(&bb_layer)[7..]);
    let base = vec![("c.json".to_string(), config), (layer_name.clone(), bb_layer)];
    // (manifest.json, symlinks in the archive, the error)
    type Case = (Value, Vec<(&'static str, &'static str)>, String);
    let cases: Vec<Case> = vec![
        (
            json!([{"Config": "/etc/passwd", "RepoTags": ["evil:1"], "Layers": [layer_name]}]),
            vec![],
            "manifest.json entry \"/etc/passwd\" is an absolute path".into(),
        ),
        (
            json!([{"Config": "c.json", "RepoTags": ["evil:1"], "Layers": ["../../../../etc/passwd"]}]),
            vec![],
            "manifest.json entry \"../../../../etc/passwd\" contains \"..\"".into(),
        ),
        (
            json!([{"Config": "c.json", "RepoTags": ["evil:1"], "Layers": ["link/layer.tar"]}]),
            vec![("link/layer.tar", "/etc/passwd")],
            "manifest.json entry \"link/layer.tar\" is a symlink or hardlink in the archive".into(),
        ),
        (
            json!([{"Config": "c.json", "RepoTags": ["evil:1"], "Layers": ["up/layer.tar"]}]),
            vec![("up", "/etc")],
            "manifest.json entry \"up/layer.tar\" is not in the archive".into(),
        ),
        (json!([{"RepoTags": ["evil:1"], "Layers": []}]), vec![], "manifest.json: missing field `Config`".into()),
    ];
    for (i, (manifest, links, want)) in cases.into_iter().enumerate() {
        step!("case {i}: {want}");
        let mut files = base.clone();
        files.push(("manifest.json".into(), manifest.to_string().into_bytes()));
        let path = dir.path().join(format!("case{i}.tar"));
        write_tar(&path, &files, &links);
        let e = images.load(&path).await.unwrap_err().to_string();
        assert!(e.starts_with(&format!("invalid image archive: {want}")), "{e}");
    }
    assert!(images.list().await.unwrap().is_empty());

    step!("an upload over the configured limit is refused");
    let small = env.images().with_max_upload(4096);
    let e = small.load_reader(std::fs::File::open(test_image()).unwrap()).await.unwrap_err();
    assert_eq!(e.to_string(), "invalid image archive: larger than the limit of 4096 bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_imports_of_a_shared_layer_both_succeed() {
    let env = Env::start_empty().await;
    let images = env.images();
    let dir = tempfile::tempdir().unwrap();
    let (bb_layer, bb_config) = busybox();
    let chain = sha(&bb_layer);
    let a = dir.path().join("a.tar");
    let b = dir.path().join("b.tar");
    Img::new("docker.io/shoal-test/a:1", vec![bb_layer.clone()], bb_config.clone()).oci(&a);
    Img::new("unused", vec![bb_layer.clone()], bb_config.clone()).docker_save(&b, "shoal-test/b:1");
    for round in 0..3 {
        step!("round {round}: both archives at once");
        let (ra, rb) = tokio::join!(images.load(&a), images.load(&b));
        assert_eq!(ra.expect("the OCI import"), vec!["docker.io/shoal-test/a:1".to_string()]);
        assert_eq!(rb.expect("the docker-save import"), vec!["docker.io/shoal-test/b:1".to_string()]);
        assert!(env.snapshot_exists(&chain).await);
        for name in ["shoal-test/a:1", "shoal-test/b:1"] {
            assert_eq!(images.resolve(name).await.unwrap().chain_id, chain);
        }
        if round == 2 {
            break;
        }
        images.remove("shoal-test/a:1", false).await.unwrap();
        images.remove("shoal-test/b:1", false).await.unwrap();
        wait_for("the shared layer collected", Duration::from_secs(10), || async {
            if env.snapshot_exists(&chain).await {
                Err("still there".to_string())
            } else {
                Ok(())
            }
        })
        .await;
    }
    step!("a task runs from each");
    let exec = env.executor();
    for name in ["shoal-test/a:1", "shoal-test/b:1"] {
        let t = image_task(name, &["echo", "ran"]);
        let c = exec.controller(&t).unwrap();
        c.prepare().await.unwrap();
        c.start().await.unwrap();
        assert_eq!(c.wait().await.unwrap().exit_code, 0);
        wait_for_stdout(&env.log_path(&t.id), "ran\n", Duration::from_secs(10)).await;
        c.remove().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_stop_signal_volumes_and_platform() {
    let env = Env::start_empty().await;
    let images = env.images();
    let exec = env.executor();
    let dir = tempfile::tempdir().unwrap();
    let (bb_layer, mut config) = busybox();

    step!("an image with StopSignal SIGUSR1 and volumes at /data (holding a file) and /aaa");
    config["StopSignal"] = json!("SIGUSR1");
    config["Volumes"] = json!({"/data": {}, "/aaa": {}});
    let top = layer(&[E::Dir("data"), E::File("data/seed", b"seeded\n")]);
    let path = dir.path().join("vol.tar");
    Img::new("docker.io/shoal-test/vol:1", vec![bb_layer.clone(), top], config).oci(&path);
    images.load(&path).await.unwrap();
    let r = images.resolve("shoal-test/vol:1").await.unwrap();
    assert_eq!(r.config.stop_signal, "SIGUSR1");
    assert_eq!(r.config.volumes, vec!["/aaa".to_string(), "/data".to_string()], "sorted: stable indexes");

    let mut t = image_task(
        "shoal-test/vol:1",
        &[
            "sh",
            "-c",
            "trap 'echo got usr1; exit 0' USR1; cat /data/seed; echo written > /data/new; echo ready; \
             while true; do sleep 0.1; done",
        ],
    );
    t.spec_mut().container.stop_grace_period = Duration::from_secs(20);
    let c = exec.controller(&t).unwrap();
    c.prepare().await.unwrap();
    c.start().await.unwrap();
    let log = env.log_path(&t.id);
    wait_for_stdout(&log, "ready\n", Duration::from_secs(10)).await;
    assert!(has_record(&log_records(&log), "seeded\n", "stdout"), "the volume starts with the image's content");
    let vol = env.data_root.join(format!("volumes/{}-image-1/_data", t.id));
    assert!(env.data_root.join(format!("volumes/{}-image-0/_data", t.id)).is_dir(), "/aaa has its own");
    assert_eq!(std::fs::read_to_string(vol.join("new")).unwrap(), "written\n", "the volume is a host directory");
    assert_eq!(std::fs::read_to_string(vol.join("seed")).unwrap(), "seeded\n");

    step!("shutdown sends the image's stop signal (the service sets none)");
    assert!(t.spec.container.stop_signal.is_empty());
    let t0 = Instant::now();
    c.shutdown().await.unwrap();
    assert!(t0.elapsed() < Duration::from_secs(5), "SIGUSR1 ended it, not the SIGKILL after 20s: {:?}", t0.elapsed());
    assert_eq!(c.wait().await.unwrap().exit_code, 0);
    wait_for_stdout(&log, "got usr1\n", Duration::from_secs(5)).await;
    c.remove().await.unwrap();
    assert!(!vol.parent().unwrap().exists(), "the anonymous volume is removed with the container");
    assert!(!env.data_root.join(format!("volumes/{}-image-0", t.id)).exists());

    step!("a mount at the volume's path replaces the anonymous volume");
    let mut t = image_task("shoal-test/vol:1", &["true"]);
    t.spec_mut().container.mounts.push(swarm::api::Mount {
        kind: swarm::api::MountType::Tmpfs,
        source: String::new(),
        target: "/data".into(),
        readonly: false,
        tmpfs_size: 0,
    });
    let c = exec.controller(&t).unwrap();
    c.prepare().await.unwrap();
    assert!(!env.data_root.join(format!("volumes/{}-image-1", t.id)).exists(), "no volume under the tmpfs");
    assert!(env.data_root.join(format!("volumes/{}-image-0", t.id)).exists(), "/aaa still gets one");
    c.remove().await.unwrap();

    step!("an image for another architecture, alone or behind an index, is refused naming both platforms");
    let node = swarm::api::Platform::current().architecture;
    let other = if node == "amd64" { "arm64" } else { "amd64" };
    for (name, in_index) in [("docker.io/shoal-test/foreign:1", false), ("docker.io/shoal-test/foreign:index", true)] {
        let mut img = Img::new(name, vec![bb_layer.clone()], json!({"Cmd": ["sh"]}));
        img.architecture = other.into();
        img.in_index = in_index;
        let path = dir.path().join("foreign.tar");
        img.oci(&path);
        images.load(&path).await.unwrap_or_else(|e| panic!("{name} loads (as docker load does): {e}"));
        let t = image_task(name, &["true"]);
        let e = exec.controller(&t).unwrap().prepare().await.unwrap_err();
        assert_eq!(e.to_string(), format!("image {name} is for linux/{other}, this node is linux/{node}"));
    }
}

/// A field of /proc/self/status, in KiB.
fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_layer_is_imported_in_bounded_memory() {
    const LAYER: u64 = 128 << 20;
    let env = Env::start_empty().await;
    let dir = tempfile::tempdir().unwrap();

    step!("a {} MiB layer, written to disk without holding it in memory", LAYER >> 20);
    let layer_path = dir.path().join("layer.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&layer_path).unwrap());
    let mut h = tar::Header::new_gnu();
    h.set_size(LAYER);
    h.set_mode(0o644);
    b.append_data(&mut h, "big", std::io::repeat(b'z').take(LAYER)).unwrap();
    b.into_inner().unwrap().flush().unwrap();
    let mut hasher = Sha256::new();
    std::io::copy(&mut std::fs::File::open(&layer_path).unwrap(), &mut hasher).unwrap();
    let layer_digest = format!("sha256:{}", hex::encode(hasher.finalize()));
    let layer_size = std::fs::metadata(&layer_path).unwrap().len();
    let config = serde_json::to_vec(&json!({
        "architecture": swarm::api::Platform::current().architecture, "os": "linux", "config": {"Cmd": ["true"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}],
    }))
    .unwrap();
    let index = json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(&manifest), "size": manifest.len(),
        "annotations": {"io.containerd.image.name": "docker.io/shoal-test/big:1"},
    }]});
    let archive = dir.path().join("big.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&archive).unwrap());
    for (name, data) in [
        ("index.json".to_string(), index.to_string().into_bytes()),
        (format!("blobs/sha256/{}", &sha(&config)[7..]), config.clone()),
        (format!("blobs/sha256/{}", &sha(&manifest)[7..]), manifest.clone()),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    b.append_path_with_name(&layer_path, format!("blobs/sha256/{}", &layer_digest[7..])).unwrap();
    b.into_inner().unwrap().flush().unwrap();
    std::fs::remove_file(&layer_path).unwrap();

    step!("importing it raises this process's peak memory by far less than the layer's size");
    let rss = status_kib("VmRSS:");
    // Writing 5 resets the peak resident size (VmHWM) to the current one.
    std::fs::write("/proc/self/clear_refs", "5").expect("resetting VmHWM");
    let loaded = env.images().load(&archive).await.expect("loading the big image");
    assert_eq!(loaded, vec!["docker.io/shoal-test/big:1".to_string()]);
    let grew = status_kib("VmHWM:").saturating_sub(rss);
    step!("peak resident size grew by {} KiB", grew);
    assert!(grew < 64 << 10, "the peak grew by {} MiB for a {} MiB layer", grew >> 10, LAYER >> 20);
    let r = env.images().resolve("shoal-test/big:1").await.unwrap();
    assert!(env.snapshot_exists(&r.chain_id).await, "the layer is unpacked");
}
