//! Images in containerd's store: import from archives (OCI image layout, `docker save`), list, remove, and
//! resolve a reference to what the executor needs (config + the snapshot chain to start from).
//!
//! containerd 1.6 has no transfer service, so an import writes every blob through the content service, unpacks
//! the layers through snapshots (prepare) + diff (apply) + commit keyed by chain id, then creates the image
//! record — all under one lease, with the GC labels that keep blobs and snapshots referenced.

use crate::containerd::{create_lease, delete_lease, is_not_found, req, req_leased};
use crate::spec::ImageConfig;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    ApplyRequest, CreateImageRequest, DeleteImageRequest, GetImageRequest, Image, InfoRequest, ListImagesRequest,
    ReadContentRequest, UpdateImageRequest, WriteAction, WriteContentRequest,
};
use containerd_client::types::Descriptor;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use swarm::api::{familiar_image_ref, normalize_image_ref};
use tonic::transport::Channel;

pub const SNAPSHOTTER: &str = "overlayfs";
const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const MT_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const MT_DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
const MT_DOCKER_LAYER_GZ: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Image operations that failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The image is not in the store.
    #[error("No such image: {0}")]
    NotFound(String),
    /// The archive is not an OCI layout or `docker save` tarball, or is damaged.
    #[error("invalid image archive: {0}")]
    InvalidArchive(String),
    /// A reference is malformed.
    #[error(transparent)]
    Reference(#[from] swarm::api::ReferenceError),
    #[error("containerd: {0}")]
    Containerd(String),
    #[error("{0}")]
    Io(String),
}

fn cd_err(s: tonic::Status) -> ImageError {
    ImageError::Containerd(s.message().to_string())
}

/// What `image ls` shows.
#[derive(Debug, Clone)]
pub struct ImageSummary {
    pub reference: String,
    pub id: String,
    pub created: Option<String>,
    pub size: u64,
}

/// A resolved image: its config and the snapshot its containers start from.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    pub config: ImageConfig,
    /// The chain id of the top layer (the parent of a container's snapshot).
    pub chain_id: String,
}

#[derive(Clone)]
pub struct ImageService {
    ch: Channel,
    tmp_dir: PathBuf,
}

/// One blob of an archive: where it is, and its descriptor.
struct Blob {
    path: PathBuf,
    digest: String,
    size: u64,
    labels: HashMap<String, String>,
}

/// What an archive holds once parsed: blobs to write, images to name, manifests to unpack.
struct Import {
    blobs: Vec<Blob>,
    /// (name, target descriptor)
    images: Vec<(String, Descriptor)>,
    /// (layers in order, diff ids in order)
    unpack: Vec<(Vec<Descriptor>, Vec<String>)>,
}

fn sha256_file(path: &Path) -> Result<(String, u64), ImageError> {
    let mut f = std::fs::File::open(path).map_err(|e| ImageError::Io(format!("{}: {e}", path.display())))?;
    let mut h = Sha256::new();
    let n = std::io::copy(&mut f, &mut h).map_err(|e| ImageError::Io(e.to_string()))?;
    Ok((format!("sha256:{}", hex::encode(h.finalize())), n))
}

/// The chain ids of a layer stack, as containerd names committed snapshots.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => format!("sha256:{}", hex::encode(Sha256::digest(format!("{prev} {d}").as_bytes()))),
        };
        out.push(next);
    }
    out
}

fn read_json(path: &Path) -> Result<Value, ImageError> {
    let bytes = std::fs::read(path).map_err(|e| ImageError::InvalidArchive(format!("{}: {e}", path.display())))?;
    serde_json::from_slice(&bytes).map_err(|e| ImageError::InvalidArchive(format!("{}: {e}", path.display())))
}

fn descriptor(media_type: &str, digest: &str, size: u64) -> Descriptor {
    Descriptor { media_type: media_type.into(), digest: digest.into(), size: size as i64, annotations: HashMap::new() }
}

fn blob_path(root: &Path, digest: &str) -> Result<PathBuf, ImageError> {
    let hexpart = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| ImageError::InvalidArchive(format!("unsupported digest {digest:?}")))?;
    Ok(root.join("blobs/sha256").join(hexpart))
}

fn platform_matches(p: &Value) -> bool {
    let arch = swarm::api::Platform::current().architecture;
    p["os"].as_str() == Some("linux") && p["architecture"].as_str() == Some(arch.as_str())
}

impl ImageService {
    pub fn new(ch: Channel, tmp_dir: PathBuf) -> Self {
        ImageService { ch, tmp_dir }
    }

    /// Imports every image of an archive read from `reader` (an upload, stdin); returns their normalized names.
    /// The archive is spooled to a file first: a docker-save tarball may put manifest.json after the layers.
    pub async fn load_reader(
        &self,
        mut reader: impl std::io::Read + Send + 'static,
    ) -> Result<Vec<String>, ImageError> {
        std::fs::create_dir_all(&self.tmp_dir)
            .map_err(|e| ImageError::Io(format!("{}: {e}", self.tmp_dir.display())))?;
        let tmp = self.tmp_dir.clone();
        let file = tokio::task::spawn_blocking(move || -> Result<tempfile::NamedTempFile, ImageError> {
            let mut f = tempfile::Builder::new()
                .prefix("upload-")
                .tempfile_in(&tmp)
                .map_err(|e| ImageError::Io(format!("{}: {e}", tmp.display())))?;
            std::io::copy(&mut reader, &mut f).map_err(|e| ImageError::Io(format!("reading the archive: {e}")))?;
            Ok(f)
        })
        .await
        .map_err(|e| ImageError::Io(e.to_string()))??;
        self.load(file.path()).await
    }

    /// Imports every image of an archive; returns their normalized names.
    pub async fn load(&self, archive: &Path) -> Result<Vec<String>, ImageError> {
        std::fs::create_dir_all(&self.tmp_dir)
            .map_err(|e| ImageError::Io(format!("{}: {e}", self.tmp_dir.display())))?;
        let dir = tempfile::Builder::new()
            .prefix("load-")
            .tempdir_in(&self.tmp_dir)
            .map_err(|e| ImageError::Io(e.to_string()))?;
        let root = dir.path().to_path_buf();
        let archive = archive.to_path_buf();
        let import = tokio::task::spawn_blocking(move || -> Result<Import, ImageError> {
            let f = std::fs::File::open(&archive).map_err(|e| ImageError::Io(format!("{}: {e}", archive.display())))?;
            let mut tar = tar::Archive::new(f);
            tar.set_preserve_permissions(false);
            tar.unpack(&root).map_err(|e| ImageError::InvalidArchive(format!("not a tar archive: {e}")))?;
            if root.join("index.json").exists() {
                parse_oci(&root)
            } else if root.join("manifest.json").exists() {
                parse_docker(&root)
            } else {
                Err(ImageError::InvalidArchive(
                    "neither index.json (OCI layout) nor manifest.json (docker save) found".into(),
                ))
            }
        })
        .await
        .map_err(|e| ImageError::Io(e.to_string()))??;
        if import.images.is_empty() {
            return Err(ImageError::InvalidArchive(
                "the archive names no image (no io.containerd.image.name / RepoTags)".into(),
            ));
        }

        // One lease over the whole import: blobs and snapshots are unreferenced until the image record exists.
        let lease = create_lease(&self.ch, "shoal-load", std::time::Duration::from_secs(3600)).await.map_err(cd_err)?;
        let r = self.import(&import, &lease).await;
        delete_lease(&self.ch, &lease).await;
        r?;
        Ok(import.images.into_iter().map(|(n, _)| n).collect())
    }

    async fn import(&self, import: &Import, lease: &str) -> Result<(), ImageError> {
        for b in &import.blobs {
            self.write_blob(b, lease).await?;
        }
        for (layers, diff_ids) in &import.unpack {
            self.unpack(layers, diff_ids, lease).await?;
        }
        let mut images = ImagesClient::new(self.ch.clone());
        for (name, target) in &import.images {
            let image = Image { name: name.clone(), target: Some(target.clone()), ..Default::default() };
            match images
                .create(req_leased(CreateImageRequest { image: Some(image.clone()), source_date_epoch: None }, lease))
                .await
            {
                Ok(_) => {}
                Err(s) if s.code() == tonic::Code::AlreadyExists => {
                    images
                        .update(req(UpdateImageRequest {
                            image: Some(image),
                            update_mask: Some(prost_types::FieldMask { paths: vec!["target".into()] }),
                            source_date_epoch: None,
                        }))
                        .await
                        .map_err(cd_err)?;
                }
                Err(s) => return Err(cd_err(s)),
            }
            tracing::info!(image = %name, "image loaded");
        }
        Ok(())
    }

    async fn write_blob(&self, b: &Blob, lease: &str) -> Result<(), ImageError> {
        let mut content = ContentClient::new(self.ch.clone());
        if content.info(req(InfoRequest { digest: b.digest.clone() })).await.is_ok() {
            if !b.labels.is_empty() {
                let info = containerd_client::services::v1::Info {
                    digest: b.digest.clone(),
                    labels: b.labels.clone(),
                    ..Default::default()
                };
                let paths = b.labels.keys().map(|k| format!("labels.{k}")).collect();
                content
                    .update(req(containerd_client::services::v1::UpdateRequest {
                        info: Some(info),
                        update_mask: Some(prost_types::FieldMask { paths }),
                    }))
                    .await
                    .map_err(cd_err)?;
            }
            return Ok(());
        }
        let data = tokio::fs::read(&b.path).await.map_err(|e| ImageError::Io(format!("{}: {e}", b.path.display())))?;
        let r#ref = format!("shoal-{}", b.digest);
        let mut msgs = Vec::new();
        const CHUNK: usize = 1 << 20;
        let mut offset = 0usize;
        while offset < data.len() {
            let end = (offset + CHUNK).min(data.len());
            msgs.push(WriteContentRequest {
                action: WriteAction::Write as i32,
                r#ref: r#ref.clone(),
                total: b.size as i64,
                expected: b.digest.clone(),
                offset: offset as i64,
                data: data[offset..end].to_vec(),
                labels: HashMap::new(),
            });
            offset = end;
        }
        msgs.push(WriteContentRequest {
            action: WriteAction::Commit as i32,
            r#ref,
            total: b.size as i64,
            expected: b.digest.clone(),
            offset: data.len() as i64,
            data: vec![],
            labels: b.labels.clone(),
        });
        let mut stream = content.write(req_leased(tokio_stream::iter(msgs), lease)).await.map_err(cd_err)?.into_inner();
        // The server answers at its own pace: read to the end so the commit is known to be done.
        loop {
            match stream.message().await {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(s) if s.code() == tonic::Code::AlreadyExists => break,
                Err(s) => return Err(cd_err(s)),
            }
        }
        Ok(())
    }

    async fn unpack(&self, layers: &[Descriptor], diff_ids: &[String], lease: &str) -> Result<(), ImageError> {
        let mut snaps = SnapshotsClient::new(self.ch.clone());
        let mut diff = DiffClient::new(self.ch.clone());
        let chains = chain_ids(diff_ids);
        let mut parent = String::new();
        for (layer, chain) in layers.iter().zip(&chains) {
            let exists = snaps
                .stat(req(StatSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key: chain.clone() }))
                .await
                .is_ok();
            if !exists {
                let key = format!("extract-{}-{}", swarm::api::new_id(), chain);
                let mounts = snaps
                    .prepare(req_leased(
                        PrepareSnapshotRequest {
                            snapshotter: SNAPSHOTTER.into(),
                            key: key.clone(),
                            parent: parent.clone(),
                            labels: HashMap::new(),
                        },
                        lease,
                    ))
                    .await
                    .map_err(cd_err)?
                    .into_inner()
                    .mounts;
                let applied = diff
                    .apply(req_leased(
                        ApplyRequest { diff: Some(layer.clone()), mounts, payloads: HashMap::new(), sync_fs: false },
                        lease,
                    ))
                    .await;
                if let Err(s) = applied {
                    let _ = snaps.remove(req(RemoveSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key })).await;
                    return Err(cd_err(s));
                }
                let mut labels = HashMap::new();
                labels.insert("containerd.io/snapshot.ref".to_string(), chain.clone());
                snaps
                    .commit(req_leased(
                        CommitSnapshotRequest { snapshotter: SNAPSHOTTER.into(), name: chain.clone(), key, labels },
                        lease,
                    ))
                    .await
                    .map_err(cd_err)?;
            }
            parent = chain.clone();
        }
        Ok(())
    }

    async fn read_blob(&self, digest: &str) -> Result<Vec<u8>, ImageError> {
        let mut content = ContentClient::new(self.ch.clone());
        let mut stream = content
            .read(req(ReadContentRequest { digest: digest.into(), offset: 0, size: 0 }))
            .await
            .map_err(cd_err)?
            .into_inner();
        let mut out = Vec::new();
        while let Some(chunk) = stream.message().await.map_err(cd_err)? {
            out.extend_from_slice(&chunk.data);
        }
        Ok(out)
    }

    /// The manifest (JSON) an image's target leads to on this platform.
    async fn manifest_of(&self, target: &Descriptor) -> Result<Value, ImageError> {
        let mut desc = target.clone();
        for _ in 0..3 {
            let v: Value = serde_json::from_slice(&self.read_blob(&desc.digest).await?)
                .map_err(|e| ImageError::Containerd(format!("manifest {}: {e}", desc.digest)))?;
            let mt = v["mediaType"].as_str().unwrap_or(&desc.media_type).to_string();
            if mt == MT_OCI_INDEX || mt == MT_DOCKER_LIST || v["manifests"].is_array() {
                let ms = v["manifests"].as_array().cloned().unwrap_or_default();
                let pick = ms.iter().find(|m| platform_matches(&m["platform"])).or(ms.first()).cloned();
                let m = pick.ok_or_else(|| ImageError::Containerd("empty image index".into()))?;
                desc = descriptor(
                    m["mediaType"].as_str().unwrap_or(""),
                    m["digest"].as_str().unwrap_or(""),
                    m["size"].as_u64().unwrap_or(0),
                );
                continue;
            }
            return Ok(v);
        }
        Err(ImageError::Containerd("image index nesting too deep".into()))
    }

    /// The config and top snapshot of an image (reference normalized here).
    pub async fn resolve(&self, reference: &str) -> Result<ResolvedImage, ImageError> {
        let name = normalize_image_ref(reference)?;
        let mut images = ImagesClient::new(self.ch.clone());
        let image = match images.get(req(GetImageRequest { name: name.clone() })).await {
            Ok(r) => r.into_inner().image,
            Err(s) if is_not_found(&s) => None,
            Err(s) => return Err(cd_err(s)),
        };
        let target = image.and_then(|i| i.target).ok_or_else(|| ImageError::NotFound(familiar_image_ref(&name)))?;
        let manifest = self.manifest_of(&target).await?;
        let config_digest = manifest["config"]["digest"].as_str().unwrap_or_default().to_string();
        let config: Value = serde_json::from_slice(&self.read_blob(&config_digest).await?)
            .map_err(|e| ImageError::Containerd(format!("config {config_digest}: {e}")))?;
        let strings = |v: &Value| -> Vec<String> {
            v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect()).unwrap_or_default()
        };
        let c = &config["config"];
        let diff_ids = strings(&config["rootfs"]["diff_ids"]);
        let chain_id = chain_ids(&diff_ids).pop().unwrap_or_default();
        Ok(ResolvedImage {
            config: ImageConfig {
                entrypoint: strings(&c["Entrypoint"]),
                cmd: strings(&c["Cmd"]),
                env: strings(&c["Env"]),
                working_dir: c["WorkingDir"].as_str().unwrap_or_default().to_string(),
                user: c["User"].as_str().unwrap_or_default().to_string(),
            },
            chain_id,
        })
    }

    pub async fn list(&self) -> Result<Vec<ImageSummary>, ImageError> {
        let mut images = ImagesClient::new(self.ch.clone());
        let list = images.list(req(ListImagesRequest { filters: vec![] })).await.map_err(cd_err)?.into_inner().images;
        let mut out = Vec::new();
        for i in list {
            let Some(target) = i.target.clone() else { continue };
            let (id, created, size) = match self.manifest_of(&target).await {
                Ok(m) => {
                    let cfg = m["config"]["digest"].as_str().unwrap_or_default().to_string();
                    let size: u64 = m["layers"]
                        .as_array()
                        .map(|ls| ls.iter().filter_map(|l| l["size"].as_u64()).sum())
                        .unwrap_or(0);
                    let created = match self.read_blob(&cfg).await {
                        Ok(b) => serde_json::from_slice::<Value>(&b)
                            .ok()
                            .and_then(|v| v["created"].as_str().map(str::to_string)),
                        Err(_) => None,
                    };
                    (cfg, created, size)
                }
                Err(_) => (target.digest.clone(), None, 0),
            };
            out.push(ImageSummary { reference: i.name, id, created, size });
        }
        out.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(out)
    }

    pub async fn remove(&self, reference: &str) -> Result<String, ImageError> {
        let name = normalize_image_ref(reference)?;
        let mut images = ImagesClient::new(self.ch.clone());
        match images.delete(req(DeleteImageRequest { name: name.clone(), sync: true, target: None })).await {
            Ok(_) => Ok(name),
            Err(s) if is_not_found(&s) => Err(ImageError::NotFound(reference.to_string())),
            Err(s) => Err(cd_err(s)),
        }
    }
}

/// Reads an OCI image layout.
fn parse_oci(root: &Path) -> Result<Import, ImageError> {
    let index = read_json(&root.join("index.json"))?;
    let mut import = Import { blobs: vec![], images: vec![], unpack: vec![] };
    let mut labels_for: HashMap<String, HashMap<String, String>> = HashMap::new();
    for m in index["manifests"].as_array().cloned().unwrap_or_default() {
        let digest = m["digest"].as_str().unwrap_or_default().to_string();
        let mt = m["mediaType"].as_str().unwrap_or_default().to_string();
        let ann = &m["annotations"];
        let name = ann["io.containerd.image.name"].as_str().map(str::to_string).or_else(|| {
            ann["org.opencontainers.image.ref.name"].as_str().filter(|r| r.contains(['/', ':'])).map(str::to_string)
        });
        let mut manifests = vec![(digest.clone(), mt.clone())];
        // An index inside: take each manifest (all platforms are stored; the one for this platform unpacked).
        if mt == MT_OCI_INDEX || mt == MT_DOCKER_LIST {
            let inner = read_json(&blob_path(root, &digest)?)?;
            manifests.clear();
            let ms = inner["manifests"].as_array().cloned().unwrap_or_default();
            let mut l = HashMap::new();
            for (i, im) in ms.iter().enumerate() {
                l.insert(
                    format!("containerd.io/gc.ref.content.m.{i}"),
                    im["digest"].as_str().unwrap_or_default().to_string(),
                );
            }
            labels_for.insert(digest.clone(), l);
            if let Some(im) = ms.iter().find(|im| platform_matches(&im["platform"])).or(ms.first()) {
                manifests.push((im["digest"].as_str().unwrap_or_default().to_string(), String::new()));
            }
        }
        for (md, _) in manifests {
            let manifest = read_json(&blob_path(root, &md)?)?;
            let config = manifest["config"]["digest"].as_str().unwrap_or_default().to_string();
            let layers: Vec<Descriptor> = manifest["layers"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|l| {
                    descriptor(
                        l["mediaType"].as_str().unwrap_or_default(),
                        l["digest"].as_str().unwrap_or_default(),
                        l["size"].as_u64().unwrap_or(0),
                    )
                })
                .collect();
            let cfg = read_json(&blob_path(root, &config)?)?;
            let diff_ids: Vec<String> = cfg["rootfs"]["diff_ids"]
                .as_array()
                .map(|a| a.iter().filter_map(|d| d.as_str().map(str::to_string)).collect())
                .unwrap_or_default();
            if diff_ids.len() != layers.len() {
                return Err(ImageError::InvalidArchive(format!(
                    "config {config} has {} diff ids for {} layers",
                    diff_ids.len(),
                    layers.len()
                )));
            }
            let mut ml = HashMap::new();
            ml.insert("containerd.io/gc.ref.content.config".to_string(), config.clone());
            for (i, l) in layers.iter().enumerate() {
                ml.insert(format!("containerd.io/gc.ref.content.l.{i}"), l.digest.clone());
            }
            labels_for.insert(md.clone(), ml);
            if let Some(top) = chain_ids(&diff_ids).pop() {
                let mut cl = HashMap::new();
                cl.insert(format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}"), top);
                labels_for.insert(config.clone(), cl);
            }
            import.unpack.push((layers, diff_ids));
        }
        if let Some(n) = name {
            let target = descriptor(&mt, &digest, m["size"].as_u64().unwrap_or(0));
            import.images.push((normalize_image_ref(&n)?, target));
        }
    }
    let dir = root.join("blobs/sha256");
    let entries = std::fs::read_dir(&dir).map_err(|e| ImageError::InvalidArchive(format!("{}: {e}", dir.display())))?;
    for e in entries {
        let path = e.map_err(|e| ImageError::Io(e.to_string()))?.path();
        let (digest, size) = sha256_file(&path)?;
        let expected = format!("sha256:{}", path.file_name().unwrap_or_default().to_string_lossy());
        if digest != expected {
            return Err(ImageError::InvalidArchive(format!(
                "blob {expected} is corrupt (its content hashes to {digest})"
            )));
        }
        let labels = labels_for.remove(&digest).unwrap_or_default();
        import.blobs.push(Blob { path, digest, size, labels });
    }
    // Configs and layers first, manifests and indexes last, so nothing points at a blob not yet written.
    import.blobs.sort_by_key(|b| b.labels.keys().any(|k| k.starts_with("containerd.io/gc.ref.content")));
    Ok(import)
}

/// Reads a `docker save` archive, synthesizing a schema 2 manifest per image.
fn parse_docker(root: &Path) -> Result<Import, ImageError> {
    let manifest = read_json(&root.join("manifest.json"))?;
    let mut import = Import { blobs: vec![], images: vec![], unpack: vec![] };
    let gen = root.join(".shoal-generated");
    std::fs::create_dir_all(&gen).map_err(|e| ImageError::Io(e.to_string()))?;
    for (n, entry) in manifest.as_array().cloned().unwrap_or_default().iter().enumerate() {
        let config_path = root.join(
            entry["Config"]
                .as_str()
                .ok_or_else(|| ImageError::InvalidArchive("manifest.json entry without Config".into()))?,
        );
        let (config_digest, config_size) = sha256_file(&config_path)?;
        let cfg = read_json(&config_path)?;
        let diff_ids: Vec<String> = cfg["rootfs"]["diff_ids"]
            .as_array()
            .map(|a| a.iter().filter_map(|d| d.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        let mut layers = Vec::new();
        for l in entry["Layers"].as_array().cloned().unwrap_or_default() {
            let p = root.join(l.as_str().unwrap_or_default());
            let (digest, size) = sha256_file(&p)?;
            let mut magic = [0u8; 2];
            let gz = std::fs::File::open(&p).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic)).is_ok()
                && magic == [0x1f, 0x8b];
            let d = descriptor(if gz { MT_DOCKER_LAYER_GZ } else { MT_DOCKER_LAYER }, &digest, size);
            if !import.blobs.iter().any(|b| b.digest == digest) {
                import.blobs.push(Blob { path: p, digest, size, labels: HashMap::new() });
            }
            layers.push(d);
        }
        if diff_ids.len() != layers.len() {
            return Err(ImageError::InvalidArchive(format!(
                "{} lists {} layers for {} diff ids",
                config_path.display(),
                layers.len(),
                diff_ids.len()
            )));
        }
        let mut cl = HashMap::new();
        if let Some(top) = chain_ids(&diff_ids).pop() {
            cl.insert(format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}"), top);
        }
        import.blobs.push(Blob { path: config_path, digest: config_digest.clone(), size: config_size, labels: cl });
        let m = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MT_DOCKER_MANIFEST,
            "config": {"mediaType": MT_DOCKER_CONFIG, "digest": config_digest, "size": config_size},
            "layers": layers.iter().map(|l| serde_json::json!({"mediaType": l.media_type, "digest": l.digest, "size": l.size})).collect::<Vec<_>>(),
        });
        let mpath = gen.join(format!("manifest-{n}.json"));
        std::fs::write(&mpath, serde_json::to_vec(&m).expect("json")).map_err(|e| ImageError::Io(e.to_string()))?;
        let (mdigest, msize) = sha256_file(&mpath)?;
        let mut ml = HashMap::new();
        ml.insert(
            "containerd.io/gc.ref.content.config".to_string(),
            m["config"]["digest"].as_str().unwrap_or_default().to_string(),
        );
        for (i, l) in layers.iter().enumerate() {
            ml.insert(format!("containerd.io/gc.ref.content.l.{i}"), l.digest.clone());
        }
        import.blobs.push(Blob { path: mpath, digest: mdigest.clone(), size: msize, labels: ml });
        for tag in entry["RepoTags"].as_array().cloned().unwrap_or_default() {
            if let Some(t) = tag.as_str() {
                import.images.push((normalize_image_ref(t)?, descriptor(MT_DOCKER_MANIFEST, &mdigest, msize)));
            }
        }
        import.unpack.push((layers, diff_ids));
    }
    Ok(import)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_definition() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let c = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(c[0], a);
        let want = format!("sha256:{}", hex::encode(Sha256::digest(format!("{a} {b}").as_bytes())));
        assert_eq!(c[1], want);
    }
}
