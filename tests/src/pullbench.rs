//! `bench pull`: pull time of a multi-layer image from a local plain-HTTP registry (Debian's `docker-registry`),
//! `shoal image pull` against `ctr image pull --plain-http` on the same registry and the same containerd, in the
//! same run. The image (5 layers of 10 MiB of incompressible bytes, uncompressed tar) is built here, loaded
//! into the daemon and pushed with `shoal image push`; before every pull the image and its content are deleted,
//! so each pull downloads and unpacks everything.

use crate::{wait_for, Daemon};
use sha2::Digest;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const LAYERS: usize = 5;
const LAYER_BYTES: usize = 10 << 20;

fn sha(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))
}

/// Bytes no compressor shrinks (xorshift64), different per `seed`.
fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

/// A tar holding one file of `data`.
fn layer_tar(name: &str, data: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_cksum();
    b.append_data(&mut h, name, data).expect("tar in memory");
    b.into_inner().expect("tar in memory")
}

/// An OCI layout archive of a 5-layer image named `name`.
fn build_image(name: &str) -> Vec<u8> {
    let mut blobs: Vec<(String, Vec<u8>)> = Vec::new();
    let mut layers = Vec::new();
    for i in 0..LAYERS {
        let tar = layer_tar(&format!("layer{i}.bin"), &noise(i as u64 + 1, LAYER_BYTES));
        let d = sha(&tar);
        layers.push(
            serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": tar.len()}),
        );
        blobs.push((d, tar));
    }
    let diff_ids: Vec<&str> = layers.iter().map(|l| l["digest"].as_str().unwrap_or_default()).collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    }))
    .expect("json");
    let config_digest = sha(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": layers
    }))
    .expect("json");
    let manifest_digest = sha(&manifest);
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
                       "size": manifest.len(), "annotations": {"io.containerd.image.name": name}}]
    }))
    .expect("json");
    blobs.push((config_digest, config));
    blobs.push((manifest_digest, manifest));
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, path, data).expect("tar in memory");
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    add("index.json", &index);
    for (d, data) in &blobs {
        add(&format!("blobs/sha256/{}", d.trim_start_matches("sha256:")), data);
    }
    drop(add);
    b.into_inner().expect("tar in memory")
}

/// A plain-HTTP registry on a free loopback port; killed on drop.
struct Registry {
    child: Child,
    _dir: tempfile::TempDir,
    host: String,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_registry() -> Registry {
    let dir = tempfile::Builder::new().prefix("shoal-bench-reg-").tempdir_in("/tmp").expect("temp dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("addr").port();
    let host = format!("127.0.0.1:{port}");
    let p = |n: &str| dir.path().join(n).display().to_string();
    let config = format!(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {host}\n",
        p("data")
    );
    std::fs::write(p("config.yml"), config).expect("registry config");
    let log = std::fs::File::create(p("registry.log")).expect("registry log");
    let child = Command::new("/usr/bin/docker-registry")
        .arg("serve")
        .arg(p("config.yml"))
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("docker-registry (apt-get install docker-registry)");
    wait_for("the registry to listen", Duration::from_secs(20), || {
        std::net::TcpStream::connect(&host).map(|_| ()).map_err(|e| e.to_string())
    });
    Registry { child, _dir: dir, host }
}

fn ctr(d: &Daemon, args: &[&str]) -> std::process::Output {
    Command::new("ctr").arg("-a").arg(d.containerd_socket()).args(["-n", "shoal"]).args(args).output().expect("run ctr")
}

/// Deletes the image (by whichever tool) and waits until containerd holds none of its layers.
fn delete(d: &Daemon, image: &str, layers: &[String]) {
    let o = ctr(d, &["image", "rm", "--sync", image]);
    assert!(o.status.success(), "ctr image rm: {}", String::from_utf8_lossy(&o.stderr));
    wait_for("the image's content to be collected", Duration::from_secs(60), || {
        let o = ctr(d, &["content", "ls", "-q"]);
        let listed = String::from_utf8_lossy(&o.stdout).into_owned();
        let left = layers.iter().filter(|l| listed.contains(l.as_str())).count();
        if left == 0 {
            Ok(())
        } else {
            let args: Vec<&str> = ["content", "rm"].into_iter().chain(layers.iter().map(String::as_str)).collect();
            let _ = ctr(d, &args);
            Err(format!("{left} layers left"))
        }
    });
}

/// Runs the benchmark `rounds` times and prints each round and the medians.
pub fn run(rounds: usize) {
    let reg = start_registry();
    let d = Daemon::start_with_args(&["--insecure-registry", &reg.host]);
    let image = format!("{}/bench/layers:v1", reg.host);
    let dir = tempfile::tempdir().expect("temp dir");
    let archive = dir.path().join("image.tar");
    let built = build_image(&image);
    std::fs::write(&archive, &built).expect("writing the image archive");
    d.ok(&["image", "load", "-i", archive.to_str().expect("utf-8 path")]);
    d.ok(&["image", "push", &image]);
    let layers: Vec<String> =
        (0..LAYERS).map(|i| sha(&layer_tar(&format!("layer{i}.bin"), &noise(i as u64 + 1, LAYER_BYTES)))).collect();
    delete(&d, &image, &layers);
    let total: u64 = (LAYERS * LAYER_BYTES) as u64;
    println!(
        "pull of {LAYERS} layers, {:.1} MiB, from {} (plain HTTP), {rounds} rounds",
        total as f64 / 1048576.0,
        reg.host
    );
    println!("{:>5}  {:>12}  {:>16}  {:>7}", "round", "shoal pull", "ctr pull", "ratio");
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let start = Instant::now();
        d.ok(&["image", "pull", "-q", &image]);
        let s = start.elapsed().as_secs_f64();
        delete(&d, &image, &layers);
        let start = Instant::now();
        let o = ctr(&d, &["image", "pull", "--plain-http", &image]);
        let c = start.elapsed().as_secs_f64();
        assert!(o.status.success(), "ctr image pull: {}", String::from_utf8_lossy(&o.stderr));
        delete(&d, &image, &layers);
        println!("{round:>5}  {s:>10.2} s  {c:>14.2} s  {:>6.2}x", s / c);
        ours.push(s);
        theirs.push(c);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (s, c) = (median(&mut ours), median(&mut theirs));
    let mib = total as f64 / 1048576.0;
    println!("median  {s:>10.2} s  {c:>14.2} s  {:>6.2}x   ({:.0} MiB/s vs {:.0} MiB/s)", s / c, mib / s, mib / c);
}
