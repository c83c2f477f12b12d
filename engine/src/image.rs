//! Images in containerd's store: import from archives (OCI image layout, `docker save`), list, remove, and
//! resolve a reference to what the executor needs (config + the snapshot chain to start from).
//!
//! containerd 1.6 has no transfer service, so an import writes every blob through the content service, unpacks
//! the layers through snapshots (prepare) + diff (apply) + commit keyed by chain id, then creates the image
//! record — all under one lease, with the GC labels that keep blobs and snapshots referenced.

use crate::containerd::{create_lease, delete_lease, is_not_found, req, req_leased};
use crate::spec::ImageConfig;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    ApplyRequest, CreateImageRequest, DeleteImageRequest, GetImageRequest, Image, InfoRequest, ListContainersRequest,
    ListImagesRequest, ReadContentRequest, UpdateImageRequest, WriteAction, WriteContentRequest,
};
use containerd_client::types::Descriptor;
use oci_spec::image::{Descriptor as OciDescriptor, ImageConfiguration, ImageIndex, ImageManifest};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::path::{Component, Path, PathBuf};
use swarm::api::{familiar_image_ref, normalize_image_ref};
use tokio::io::AsyncReadExt;
use tonic::transport::Channel;

pub const SNAPSHOTTER: &str = "overlayfs";
const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const MT_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const MT_DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
const MT_DOCKER_LAYER_GZ: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// The default cap on an uploaded archive (`load_reader`).
pub const DEFAULT_MAX_UPLOAD: u64 = 10 << 30;
/// Blobs go to containerd in chunks of this size; at most a few chunks are in memory at once.
pub(crate) const CHUNK: usize = 1 << 20;
/// Manifests, indexes and configs are small: a larger one is refused before it is read into memory.
pub(crate) const MAX_JSON: u64 = 16 << 20;

/// Image operations that failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The image is not in the store.
    #[error("No such image: {0}")]
    NotFound(String),
    /// The archive is not an OCI layout or `docker save` tarball, or is damaged.
    #[error("invalid image archive: {0}")]
    InvalidArchive(String),
    /// An uploaded archive is larger than the configured limit.
    #[error("invalid image archive: larger than the limit of {0} bytes")]
    TooLarge(u64),
    /// A layer's uncompressed content does not hash to the diff id its image config lists for it.
    #[error("invalid image archive: layer {layer} unpacks to {actual}, but the image config says {expected}")]
    LayerMismatch { layer: String, expected: String, actual: String },
    /// An image in the store is damaged (a manifest or config that does not parse).
    #[error("invalid image {image}: {why}")]
    InvalidImage { image: String, why: String },
    /// The image is built for another OS or architecture than this node's.
    #[error("image {image} is for {image_platform}, this node is {node_platform}")]
    Platform { image: String, image_platform: String, node_platform: String },
    /// A reference is malformed.
    #[error(transparent)]
    Reference(#[from] swarm::api::ReferenceError),
    /// `image rm` without `--force` of the last reference to an image a container uses.
    #[error("conflict: unable to remove repository reference \"{reference}\" (must force) - container {container} is using its referenced image {image}")]
    InUse { reference: String, container: String, image: String },
    /// containerd refused a request.
    #[error("containerd: {0}")]
    Containerd(String),
    /// Reading or writing a local file failed.
    #[error("{0}")]
    Io(String),
}

pub(crate) fn cd_err(s: tonic::Status) -> ImageError {
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
    max_upload: u64,
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

/// Reads a typed JSON document of an archive; a missing or malformed field is an error naming the file.
fn read_json<T: DeserializeOwned>(root: &Path, path: &Path) -> Result<T, ImageError> {
    let shown = path.strip_prefix(root).unwrap_or(path).display().to_string();
    let bad = |e: String| ImageError::InvalidArchive(format!("{shown}: {e}"));
    let md = std::fs::symlink_metadata(path).map_err(|e| bad(e.to_string()))?;
    if !md.is_file() {
        return Err(bad("not a regular file".into()));
    }
    if md.len() > MAX_JSON {
        return Err(bad(format!("larger than {MAX_JSON} bytes")));
    }
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))
}

pub(crate) fn descriptor(media_type: &str, digest: &str, size: u64) -> Descriptor {
    Descriptor { media_type: media_type.into(), digest: digest.into(), size: size as i64, annotations: HashMap::new() }
}

fn cd_descriptor(d: &OciDescriptor) -> Descriptor {
    descriptor(d.media_type().as_ref(), d.digest().as_ref(), d.size())
}

fn blob_path(root: &Path, digest: &str) -> Result<PathBuf, ImageError> {
    let hexpart = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| ImageError::InvalidArchive(format!("unsupported digest {digest:?}")))?;
    Ok(root.join("blobs/sha256").join(hexpart))
}

/// This node's platform as Docker writes it (`linux/amd64`).
pub(crate) fn node_platform() -> String {
    let p = swarm::api::Platform::current();
    format!("{}/{}", p.os, p.architecture)
}

/// `os/arch[/variant]` of an image config or index entry, and whether this node runs it (the variant is not
/// compared: every arm64 node runs v8).
pub(crate) fn platform_of(os: &str, arch: &str, variant: Option<&str>) -> (String, bool) {
    let node = swarm::api::Platform::current();
    let shown = match variant {
        Some(v) if !v.is_empty() => format!("{os}/{arch}/{v}"),
        _ => format!("{os}/{arch}"),
    };
    (shown, os == node.os && arch == node.architecture)
}

/// The entry of an index for this node's platform. As in containerd, an entry without a platform may be
/// anything: it is taken when no entry names this platform, and its config's platform is checked later.
pub(crate) fn pick_platform(index: &ImageIndex) -> Option<&OciDescriptor> {
    let ours = |p: &oci_spec::image::Platform| {
        platform_of(&p.os().to_string(), &p.architecture().to_string(), p.variant().as_deref()).1
    };
    let ms = index.manifests();
    ms.iter().find(|m| m.platform().as_ref().is_some_and(ours)).or_else(|| ms.iter().find(|m| m.platform().is_none()))
}

/// The platforms an index offers, for the error when none is this node's.
pub(crate) fn index_platforms(index: &ImageIndex) -> String {
    let ps: Vec<String> = index
        .manifests()
        .iter()
        .filter_map(|m| m.platform().as_ref())
        .map(|p| platform_of(&p.os().to_string(), &p.architecture().to_string(), p.variant().as_deref()).0)
        .collect();
    if ps.is_empty() {
        "no platform".into()
    } else {
        ps.join(", ")
    }
}

pub(crate) fn is_index(media_type: &str) -> bool {
    media_type == MT_OCI_INDEX || media_type == MT_DOCKER_LIST
}

/// Checks a `docker save` manifest.json path: relative, no `..`, and a regular file of the archive (not a link).
fn archive_member(root: &Path, name: &str, links: &HashSet<PathBuf>) -> Result<PathBuf, ImageError> {
    let bad = |why: &str| ImageError::InvalidArchive(format!("manifest.json entry {name:?} {why}"));
    let p = Path::new(name);
    if p.is_absolute() {
        return Err(bad("is an absolute path"));
    }
    if p.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
        return Err(bad("contains \"..\""));
    }
    let clean: PathBuf = p.components().filter(|c| matches!(c, Component::Normal(_))).collect();
    if links.contains(&clean) {
        return Err(bad("is a symlink or hardlink in the archive"));
    }
    let full = root.join(&clean);
    match std::fs::symlink_metadata(&full) {
        Ok(md) if md.is_file() => Ok(full),
        Ok(_) => Err(bad("is not a regular file")),
        Err(_) => Err(bad("is not in the archive")),
    }
}

/// Unpacks an archive into `root`: regular files and directories only, each path checked to stay inside
/// `root`. Links are never created (so nothing in `root` can point outside it); their names are returned so
/// that a manifest naming one is refused.
fn unpack_archive(archive: &Path, root: &Path) -> Result<HashSet<PathBuf>, ImageError> {
    let not_tar = |e: std::io::Error| ImageError::InvalidArchive(format!("not a tar archive: {e}"));
    let f = std::fs::File::open(archive).map_err(|e| ImageError::Io(format!("{}: {e}", archive.display())))?;
    let mut tar = tar::Archive::new(f);
    tar.set_preserve_permissions(false);
    tar.set_unpack_xattrs(false);
    let mut links = HashSet::new();
    let outside = |p: &Path| {
        ImageError::InvalidArchive(format!("entry {:?} points outside the archive", p.display().to_string()))
    };
    for entry in tar.entries().map_err(not_tar)? {
        let mut entry = entry.map_err(not_tar)?;
        let path = entry.path().map_err(not_tar)?.into_owned();
        if path.is_absolute() || path.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(outside(&path));
        }
        let clean: PathBuf = path.components().filter(|c| matches!(c, Component::Normal(_))).collect();
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::Directory => {
                // unpack_in refuses paths leaving root, also through symlinked directories (there are none).
                let unpacked = entry
                    .unpack_in(root)
                    .map_err(|e| ImageError::InvalidArchive(format!("{}: {e}", path.display())))?;
                if !unpacked {
                    return Err(outside(&path));
                }
            }
            tar::EntryType::Symlink | tar::EntryType::Link => {
                links.insert(clean);
            }
            // Devices, FIFOs and the like have no place in an image archive: skipped.
            _ => {}
        }
    }
    Ok(links)
}

impl ImageService {
    pub fn new(ch: Channel, tmp_dir: PathBuf) -> Self {
        ImageService { ch, tmp_dir, max_upload: DEFAULT_MAX_UPLOAD }
    }

    /// Sets the largest archive `load_reader` accepts, in bytes.
    pub fn with_max_upload(mut self, bytes: u64) -> Self {
        self.max_upload = bytes;
        self
    }

    /// The largest archive an upload may be, in bytes.
    pub fn max_upload(&self) -> u64 {
        self.max_upload
    }

    /// Imports every image of an archive read from `reader` (an upload, stdin); returns their normalized names.
    /// The archive is spooled to a file first: a docker-save tarball may put manifest.json after the layers.
    pub async fn load_reader(&self, reader: impl std::io::Read + Send + 'static) -> Result<Vec<String>, ImageError> {
        std::fs::create_dir_all(&self.tmp_dir)
            .map_err(|e| ImageError::Io(format!("{}: {e}", self.tmp_dir.display())))?;
        let tmp = self.tmp_dir.clone();
        let limit = self.max_upload;
        let file = tokio::task::spawn_blocking(move || -> Result<tempfile::NamedTempFile, ImageError> {
            let mut f = tempfile::Builder::new()
                .prefix("upload-")
                .tempfile_in(&tmp)
                .map_err(|e| ImageError::Io(format!("{}: {e}", tmp.display())))?;
            // One byte past the limit tells an archive of exactly the limit from a larger one.
            let n = std::io::copy(&mut reader.take(limit.saturating_add(1)), &mut f)
                .map_err(|e| ImageError::Io(format!("reading the archive: {e}")))?;
            if n > limit {
                return Err(ImageError::TooLarge(limit));
            }
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
            let links = unpack_archive(&archive, &root)?;
            if root.join("index.json").is_file() {
                parse_oci(&root)
            } else if root.join("manifest.json").is_file() {
                parse_docker(&root, &links)
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
        for (name, target) in &import.images {
            self.set_image(name, target, lease).await?;
            tracing::info!(image = %name, "image loaded");
        }
        Ok(())
    }

    /// The containerd channel (the registry puller writes through the same content store).
    pub(crate) fn channel(&self) -> Channel {
        self.ch.clone()
    }

    /// Creates or retargets the image record `name` (normalized).
    pub(crate) async fn set_image(&self, name: &str, target: &Descriptor, lease: &str) -> Result<(), ImageError> {
        let mut images = ImagesClient::new(self.ch.clone());
        let image = Image { name: name.to_string(), target: Some(target.clone()), ..Default::default() };
        match images
            .create(req_leased(CreateImageRequest { image: Some(image.clone()), source_date_epoch: None }, lease))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::AlreadyExists => {
                images
                    .update(req(UpdateImageRequest {
                        image: Some(image),
                        update_mask: Some(prost_types::FieldMask { paths: vec!["target".into()] }),
                        source_date_epoch: None,
                    }))
                    .await
                    .map_err(cd_err)?;
                Ok(())
            }
            Err(s) => Err(cd_err(s)),
        }
    }

    /// The target of image record `name` (normalized), if there is one.
    pub(crate) async fn image_target(&self, name: &str) -> Result<Option<Descriptor>, ImageError> {
        match ImagesClient::new(self.ch.clone()).get(req(GetImageRequest { name: name.to_string() })).await {
            Ok(r) => Ok(r.into_inner().image.and_then(|i| i.target)),
            Err(s) if is_not_found(&s) => Ok(None),
            Err(s) => Err(cd_err(s)),
        }
    }

    async fn write_blob(&self, b: &Blob, lease: &str) -> Result<(), ImageError> {
        let mut content = ContentClient::new(self.ch.clone());
        if content.info(req(InfoRequest { digest: b.digest.clone() })).await.is_ok() {
            return self.label_blob(b).await;
        }
        // A ref of our own: two imports writing the same blob at once must not share an ingest (containerd
        // locks a ref to one writer). The loser's commit finds the blob there, which is success.
        let r#ref = format!("shoal-{}-{}", swarm::api::new_id(), b.digest);
        let (tx, rx) = tokio::sync::mpsc::channel::<WriteContentRequest>(2);
        let (path, digest, size, labels) = (b.path.clone(), b.digest.clone(), b.size, b.labels.clone());
        // The file goes out chunk by chunk: at most the channel's few chunks are in memory, whatever its size.
        let producer = tokio::spawn(async move {
            let io = |e: std::io::Error| ImageError::Io(format!("{}: {e}", path.display()));
            let mut f = tokio::fs::File::open(&path).await.map_err(io)?;
            let mut offset = 0u64;
            loop {
                let mut data = Vec::with_capacity(CHUNK);
                (&mut f).take(CHUNK as u64).read_to_end(&mut data).await.map_err(io)?;
                if data.is_empty() {
                    break;
                }
                let n = data.len() as u64;
                let msg = WriteContentRequest {
                    action: WriteAction::Write as i32,
                    r#ref: r#ref.clone(),
                    total: size as i64,
                    expected: digest.clone(),
                    offset: offset as i64,
                    data,
                    labels: HashMap::new(),
                };
                if tx.send(msg).await.is_err() {
                    // containerd ended the call; its status says why.
                    return Ok(());
                }
                offset += n;
            }
            if offset != size {
                return Err(ImageError::Io(format!("{}: changed while being imported", path.display())));
            }
            let commit = WriteContentRequest {
                action: WriteAction::Commit as i32,
                r#ref,
                total: size as i64,
                expected: digest,
                offset: offset as i64,
                data: vec![],
                labels,
            };
            let _ = tx.send(commit).await;
            Ok(())
        });
        let already =
            |s: &tonic::Status| s.code() == tonic::Code::AlreadyExists || s.message().contains("already exists");
        let result = async {
            let mut stream =
                match content.write(req_leased(tokio_stream::wrappers::ReceiverStream::new(rx), lease)).await {
                    Ok(r) => r.into_inner(),
                    // The status can come before any response: the blob was committed by another import meanwhile.
                    Err(s) if already(&s) => return Ok(true),
                    Err(s) => return Err(cd_err(s)),
                };
            // The server answers at its own pace: read to the end so the commit is known to be done.
            loop {
                match stream.message().await {
                    Ok(Some(_)) => {}
                    Ok(None) => return Ok(false),
                    Err(s) if already(&s) => return Ok(true),
                    Err(s) => return Err(cd_err(s)),
                }
            }
        }
        .await;
        let produced = producer.await.map_err(|e| ImageError::Io(e.to_string()))?;
        let existed = result?;
        produced?;
        if existed {
            // Written by a concurrent import meanwhile: ours was not committed, so neither were our labels.
            self.label_blob(b).await?;
        }
        Ok(())
    }

    /// Sets a blob's GC labels when the blob is already in the store.
    async fn label_blob(&self, b: &Blob) -> Result<(), ImageError> {
        if b.labels.is_empty() {
            return Ok(());
        }
        let info = containerd_client::services::v1::Info {
            digest: b.digest.clone(),
            labels: b.labels.clone(),
            ..Default::default()
        };
        let paths = b.labels.keys().map(|k| format!("labels.{k}")).collect();
        ContentClient::new(self.ch.clone())
            .update(req(containerd_client::services::v1::UpdateRequest {
                info: Some(info),
                update_mask: Some(prost_types::FieldMask { paths }),
            }))
            .await
            .map_err(cd_err)?;
        Ok(())
    }

    /// Unpacks each layer as a committed snapshot named by its chain id, as containerd's unpacker does: every
    /// applied layer is checked against its diff id before its snapshot is committed, so a committed chain id
    /// always holds what its name says (and an existing one can be trusted and skipped).
    async fn unpack(&self, layers: &[Descriptor], diff_ids: &[String], lease: &str) -> Result<(), ImageError> {
        self.unpack_reporting(layers, diff_ids, lease, |_, _| {}).await
    }

    /// [`Self::unpack`], telling `report` about each layer: `(index, false)` before it is extracted, `(index,
    /// true)` once its snapshot is there (extracted now or earlier).
    pub(crate) async fn unpack_reporting(
        &self,
        layers: &[Descriptor],
        diff_ids: &[String],
        lease: &str,
        mut report: impl FnMut(usize, bool) + Send,
    ) -> Result<(), ImageError> {
        let mut snaps = SnapshotsClient::new(self.ch.clone());
        let mut diff = DiffClient::new(self.ch.clone());
        let chains = chain_ids(diff_ids);
        let mut parent = String::new();
        for (i, ((layer, chain), diff_id)) in layers.iter().zip(&chains).zip(diff_ids).enumerate() {
            let exists = snaps
                .stat(req(StatSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key: chain.clone() }))
                .await
                .is_ok();
            if !exists {
                report(i, false);
                self.unpack_layer(&mut snaps, &mut diff, layer, chain, diff_id, &parent, lease).await?;
            }
            report(i, true);
            parent = chain.clone();
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn unpack_layer(
        &self,
        snaps: &mut SnapshotsClient<Channel>,
        diff: &mut DiffClient<Channel>,
        layer: &Descriptor,
        chain: &str,
        diff_id: &str,
        parent: &str,
        lease: &str,
    ) -> Result<(), ImageError> {
        let key = format!("extract-{}-{}", swarm::api::new_id(), chain);
        let mounts = snaps
            .prepare(req_leased(
                PrepareSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: key.clone(),
                    parent: parent.to_string(),
                    labels: HashMap::new(),
                },
                lease,
            ))
            .await
            .map_err(cd_err)?
            .into_inner()
            .mounts;
        let remove = |mut snaps: SnapshotsClient<Channel>, key: String| async move {
            let _ = snaps.remove(req(RemoveSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key })).await;
        };
        let applied = diff
            .apply(req_leased(
                ApplyRequest { diff: Some(layer.clone()), mounts, payloads: HashMap::new(), sync_fs: false },
                lease,
            ))
            .await;
        let actual = match applied {
            Ok(r) => r.into_inner().applied.map(|d| d.digest).unwrap_or_default(),
            Err(s) => {
                remove(snaps.clone(), key).await;
                return Err(cd_err(s));
            }
        };
        if actual != diff_id {
            remove(snaps.clone(), key).await;
            return Err(ImageError::LayerMismatch {
                layer: layer.digest.clone(),
                expected: diff_id.to_string(),
                actual,
            });
        }
        let mut labels = HashMap::new();
        labels.insert("containerd.io/snapshot.ref".to_string(), chain.to_string());
        match snaps
            .commit(req_leased(
                CommitSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    name: chain.to_string(),
                    key: key.clone(),
                    labels,
                },
                lease,
            ))
            .await
        {
            Ok(_) => Ok(()),
            // A concurrent import committed the same verified layer first: use it.
            Err(s) if s.code() == tonic::Code::AlreadyExists || s.message().contains("already exists") => {
                remove(snaps.clone(), key).await;
                snaps
                    .stat(req(StatSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key: chain.to_string() }))
                    .await
                    .map_err(cd_err)?;
                Ok(())
            }
            Err(s) => {
                remove(snaps.clone(), key).await;
                Err(cd_err(s))
            }
        }
    }

    /// A blob small enough to be a manifest or config (at most `MAX_JSON` bytes).
    pub(crate) async fn read_blob(&self, digest: &str) -> Result<Vec<u8>, ImageError> {
        self.read_blob_capped(digest, Some(MAX_JSON)).await
    }

    async fn read_blob_capped(&self, digest: &str, cap: Option<u64>) -> Result<Vec<u8>, ImageError> {
        let mut content = ContentClient::new(self.ch.clone());
        let mut stream = content
            .read(req(ReadContentRequest { digest: digest.into(), offset: 0, size: 0 }))
            .await
            .map_err(cd_err)?
            .into_inner();
        let mut out = Vec::new();
        while let Some(chunk) = stream.message().await.map_err(cd_err)? {
            out.extend_from_slice(&chunk.data);
            if let Some(cap) = cap.filter(|c| out.len() as u64 > *c) {
                return Err(ImageError::Containerd(format!("blob {digest} is larger than {cap} bytes")));
            }
        }
        Ok(out)
    }

    /// Reads a typed JSON blob of image `name` from the content store.
    async fn read_typed<T: DeserializeOwned>(&self, name: &str, what: &str, digest: &str) -> Result<T, ImageError> {
        serde_json::from_slice(&self.read_blob(digest).await?)
            .map_err(|e| ImageError::InvalidImage { image: name.to_string(), why: format!("{what} {digest}: {e}") })
    }

    /// The manifest an image's target leads to on this platform (an index without one is a platform error).
    async fn manifest_of(&self, name: &str, target: &Descriptor) -> Result<ImageManifest, ImageError> {
        let mut desc = target.clone();
        for _ in 0..3 {
            let v: serde_json::Value = self.read_typed(name, "manifest", &desc.digest).await?;
            let mt = v.get("mediaType").and_then(|m| m.as_str()).unwrap_or(&desc.media_type).to_string();
            let invalid = |e: serde_json::Error| ImageError::InvalidImage {
                image: name.to_string(),
                why: format!("manifest {}: {e}", desc.digest),
            };
            if is_index(&mt) || v.get("manifests").is_some() {
                let index: ImageIndex = serde_json::from_value(v).map_err(invalid)?;
                let m = pick_platform(&index).ok_or_else(|| ImageError::Platform {
                    image: name.to_string(),
                    image_platform: index_platforms(&index),
                    node_platform: node_platform(),
                })?;
                desc = cd_descriptor(m);
                continue;
            }
            return serde_json::from_value(v).map_err(invalid);
        }
        Err(ImageError::InvalidImage { image: name.to_string(), why: "image index nesting too deep".into() })
    }

    /// The config and top snapshot of an image (reference normalized here). An image for another platform is
    /// an error naming both.
    pub async fn resolve(&self, reference: &str) -> Result<ResolvedImage, ImageError> {
        let name = normalize_image_ref(reference)?;
        let mut images = ImagesClient::new(self.ch.clone());
        let image = match images.get(req(GetImageRequest { name: name.clone() })).await {
            Ok(r) => r.into_inner().image,
            Err(s) if is_not_found(&s) => None,
            Err(s) => return Err(cd_err(s)),
        };
        let target = image.and_then(|i| i.target).ok_or_else(|| ImageError::NotFound(familiar_image_ref(&name)))?;
        let manifest = self.manifest_of(&name, &target).await?;
        let config_digest = manifest.config().digest().to_string();
        let raw = self.read_blob(&config_digest).await?;
        let config: ImageConfiguration = serde_json::from_slice(&raw).map_err(|e| ImageError::InvalidImage {
            image: name.to_string(),
            why: format!("config {config_digest}: {e}"),
        })?;
        let (platform, ours) =
            platform_of(&config.os().to_string(), &config.architecture().to_string(), config.variant().as_deref());
        if !ours {
            return Err(ImageError::Platform { image: name, image_platform: platform, node_platform: node_platform() });
        }
        let chain_id = chain_ids(config.rootfs().diff_ids()).pop().unwrap_or_default();
        let c = config.config().clone().unwrap_or_default();
        // A JSON object in the config: sorted, so a volume keeps its index (and its directory) across resolves.
        let mut volumes = c.volumes().clone().unwrap_or_default();
        volumes.sort();
        Ok(ResolvedImage {
            config: ImageConfig {
                entrypoint: c.entrypoint().clone().unwrap_or_default(),
                cmd: c.cmd().clone().unwrap_or_default(),
                env: c.env().clone().unwrap_or_default(),
                working_dir: c.working_dir().clone().unwrap_or_default(),
                user: c.user().clone().unwrap_or_default(),
                stop_signal: c.stop_signal().clone().unwrap_or_default(),
                volumes,
                // Docker's, not in the OCI image spec: read from the same JSON.
                healthcheck: crate::health::image_healthcheck(&raw),
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
            let (id, created, size) = match self.manifest_of(&i.name, &target).await {
                Ok(m) => {
                    let cfg = m.config().digest().to_string();
                    let size: u64 = m.layers().iter().map(|l| l.size()).sum();
                    let created = self
                        .read_typed::<ImageConfiguration>(&i.name, "config", &cfg)
                        .await
                        .ok()
                        .and_then(|c| c.created().clone());
                    (cfg, created, size)
                }
                Err(_) => (target.digest.clone(), None, 0),
            };
            out.push(ImageSummary { reference: i.name, id, created, size });
        }
        out.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(out)
    }

    /// Names the content of image `source` also `target` (both normalized here), as `docker tag`.
    pub async fn tag(&self, source: &str, target: &str) -> Result<String, ImageError> {
        let from = normalize_image_ref(source)?;
        let to = normalize_image_ref(target)?;
        let desc = self.image_target(&from).await?.ok_or_else(|| ImageError::NotFound(source.to_string()))?;
        let lease = create_lease(&self.ch, "shoal-tag", std::time::Duration::from_secs(60)).await.map_err(cd_err)?;
        let r = self.set_image(&to, &desc, &lease).await;
        delete_lease(&self.ch, &lease).await;
        r?;
        tracing::info!(image = %to, source = %from, "image tagged");
        Ok(to)
    }

    /// What `image inspect` shows of an image: its config, names, digests and layers.
    pub async fn inspect(&self, reference: &str) -> Result<engine_api::ImageInspect, ImageError> {
        let name = normalize_image_ref(reference)?;
        let target = self.image_target(&name).await?.ok_or_else(|| ImageError::NotFound(reference.to_string()))?;
        let manifest = self.manifest_of(&name, &target).await?;
        let config_digest = manifest.config().digest().to_string();
        let raw: serde_json::Value = self.read_typed(&name, "config", &config_digest).await?;
        let typed: ImageConfiguration = serde_json::from_value(raw.clone())
            .map_err(|e| ImageError::InvalidImage { image: name.clone(), why: format!("config: {e}") })?;
        let mut images = ImagesClient::new(self.ch.clone());
        let all = images.list(req(ListImagesRequest { filters: vec![] })).await.map_err(cd_err)?.into_inner().images;
        let mut repo_tags = Vec::new();
        let mut repo_digests = Vec::new();
        for i in all.iter().filter(|i| i.target.as_ref().is_some_and(|t| t.digest == target.digest)) {
            let familiar = familiar_image_ref(&i.name);
            let repo = familiar.split('@').next().unwrap_or(&familiar);
            let last_slash = repo.rfind('/').map(|p| p + 1).unwrap_or(0);
            let repo = match repo[last_slash..].rfind(':') {
                Some(p) => &repo[..last_slash + p],
                None => repo,
            };
            if !i.name.contains('@') {
                repo_tags.push(familiar.clone());
            }
            let d = format!("{repo}@{}", target.digest);
            if !repo_digests.contains(&d) {
                repo_digests.push(d);
            }
        }
        repo_tags.sort();
        repo_digests.sort();
        Ok(engine_api::ImageInspect {
            id: config_digest,
            repo_tags,
            repo_digests,
            created: typed.created().clone().unwrap_or_default(),
            architecture: typed.architecture().to_string(),
            variant: typed.variant().clone().unwrap_or_default(),
            os: typed.os().to_string(),
            size: manifest.layers().iter().map(|l| l.size()).sum(),
            config: raw.get("config").cloned().unwrap_or(serde_json::Value::Null),
            rootfs: engine_api::RootFs { r#type: "layers".into(), layers: typed.rootfs().diff_ids().clone() },
        })
    }

    /// Removes one reference. Unless `force`, the last reference to an image a container uses is kept, as
    /// Docker refuses it: removing it would leave the container (and a restart of its task) without its image.
    pub async fn remove(&self, reference: &str, force: bool) -> Result<String, ImageError> {
        let name = normalize_image_ref(reference)?;
        let mut images = ImagesClient::new(self.ch.clone());
        if !force {
            self.refuse_if_in_use(reference, &name).await?;
        }
        match images.delete(req(DeleteImageRequest { name: name.clone(), sync: true, target: None })).await {
            Ok(_) => Ok(name),
            Err(s) if is_not_found(&s) => Err(ImageError::NotFound(reference.to_string())),
            Err(s) => Err(cd_err(s)),
        }
    }
}

impl ImageService {
    /// `InUse` when `name` is the only reference to its image and a container was made from that image.
    async fn refuse_if_in_use(&self, reference: &str, name: &str) -> Result<(), ImageError> {
        let mut images = ImagesClient::new(self.ch.clone());
        let all = images.list(req(ListImagesRequest { filters: vec![] })).await.map_err(cd_err)?.into_inner().images;
        let target_of =
            |n: &str| all.iter().find(|i| i.name == n).and_then(|i| i.target.as_ref()).map(|t| t.digest.clone());
        let Some(target) = target_of(name) else { return Ok(()) };
        if all.iter().any(|i| i.name != name && i.target.as_ref().is_some_and(|t| t.digest == target)) {
            return Ok(()); // another tag keeps the image: this is an untag only
        }
        let mut containers = ContainersClient::new(self.ch.clone());
        let list = containers.list(req(ListContainersRequest { filters: vec![] })).await.map_err(cd_err)?.into_inner();
        // A container records its image as the task spec gave it: short, normalized or pinned by digest.
        let uses = |image: &str| {
            let image = normalize_image_ref(image).unwrap_or_else(|_| image.to_string());
            image == name
                || target_of(&image).as_deref() == Some(&target)
                || image.rsplit_once('@').is_some_and(|(_, digest)| digest == target)
        };
        let user = list.containers.iter().find(|c| uses(&c.image));
        match user {
            Some(c) => Err(ImageError::InUse {
                reference: reference.to_string(),
                container: c.id.chars().take(12).collect(),
                image: target.trim_start_matches("sha256:").chars().take(12).collect(),
            }),
            None => Ok(()),
        }
    }
}

/// The layers and diff ids of a manifest, checked to match in number.
fn layers_of(root: &Path, manifest: &ImageManifest) -> Result<(String, Vec<Descriptor>, Vec<String>), ImageError> {
    let config = manifest.config().digest().to_string();
    let layers: Vec<Descriptor> = manifest.layers().iter().map(cd_descriptor).collect();
    let cfg: ImageConfiguration = read_json(root, &blob_path(root, &config)?)?;
    let diff_ids = cfg.rootfs().diff_ids().clone();
    if diff_ids.len() != layers.len() {
        return Err(ImageError::InvalidArchive(format!(
            "config {config} has {} diff ids for {} layers",
            diff_ids.len(),
            layers.len()
        )));
    }
    Ok((config, layers, diff_ids))
}

/// Reads an OCI image layout.
fn parse_oci(root: &Path) -> Result<Import, ImageError> {
    let index: ImageIndex = read_json(root, &root.join("index.json"))?;
    let mut import = Import { blobs: vec![], images: vec![], unpack: vec![] };
    let mut labels_for: HashMap<String, HashMap<String, String>> = HashMap::new();
    for m in index.manifests() {
        let digest = m.digest().to_string();
        let mt = m.media_type().to_string();
        let ann = m.annotations().clone().unwrap_or_default();
        let name = ann
            .get("io.containerd.image.name")
            .cloned()
            .or_else(|| ann.get("org.opencontainers.image.ref.name").filter(|r| r.contains(['/', ':'])).cloned());
        let mut manifests = vec![digest.clone()];
        // An index inside: every manifest is stored, the one for this platform unpacked (none: resolve says so).
        if is_index(&mt) {
            let inner: ImageIndex = read_json(root, &blob_path(root, &digest)?)?;
            let mut l = HashMap::new();
            for (i, im) in inner.manifests().iter().enumerate() {
                l.insert(format!("containerd.io/gc.ref.content.m.{i}"), im.digest().to_string());
            }
            labels_for.insert(digest.clone(), l);
            manifests = pick_platform(&inner).map(|im| im.digest().to_string()).into_iter().collect();
        }
        for md in manifests {
            let manifest: ImageManifest = read_json(root, &blob_path(root, &md)?)?;
            let (config, layers, diff_ids) = layers_of(root, &manifest)?;
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
            import.images.push((normalize_image_ref(&n)?, descriptor(&mt, &digest, m.size())));
        }
    }
    let dir = root.join("blobs/sha256");
    let entries = std::fs::read_dir(&dir).map_err(|e| ImageError::InvalidArchive(format!("blobs/sha256: {e}")))?;
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

/// One image of a `docker save` manifest.json.
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerSaveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Reads a `docker save` archive, synthesizing a schema 2 manifest per image.
fn parse_docker(root: &Path, links: &HashSet<PathBuf>) -> Result<Import, ImageError> {
    let manifest: Vec<DockerSaveEntry> = read_json(root, &root.join("manifest.json"))?;
    let mut import = Import { blobs: vec![], images: vec![], unpack: vec![] };
    let gen = tempfile::Builder::new()
        .prefix(".shoal-generated-")
        .tempdir_in(root)
        .map_err(|e| ImageError::Io(e.to_string()))?
        .keep();
    for (n, entry) in manifest.iter().enumerate() {
        let config_path = archive_member(root, &entry.config, links)?;
        let (config_digest, config_size) = sha256_file(&config_path)?;
        let cfg: ImageConfiguration = read_json(root, &config_path)?;
        let diff_ids = cfg.rootfs().diff_ids().clone();
        let mut layers = Vec::new();
        for l in &entry.layers {
            let p = archive_member(root, l, links)?;
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
                entry.config,
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
        ml.insert("containerd.io/gc.ref.content.config".to_string(), config_digest.clone());
        for (i, l) in layers.iter().enumerate() {
            ml.insert(format!("containerd.io/gc.ref.content.l.{i}"), l.digest.clone());
        }
        import.blobs.push(Blob { path: mpath, digest: mdigest.clone(), size: msize, labels: ml });
        for t in entry.repo_tags.iter().flatten() {
            import.images.push((normalize_image_ref(t)?, descriptor(MT_DOCKER_MANIFEST, &mdigest, msize)));
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

    /// A tar archive of (name, kind, data): kind 'f' file, 's' symlink to data, 'h' hardlink to data.
    fn tarball(entries: &[(&str, char, &str)]) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        let mut b = tar::Builder::new(f.reopen().unwrap());
        for (name, kind, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            // Raw names: the builder's own path checks would refuse the hostile ones this test needs.
            let bytes = name.as_bytes();
            h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
            match kind {
                'f' => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(data.len() as u64);
                }
                's' | 'h' => {
                    h.set_entry_type(if *kind == 's' { tar::EntryType::Symlink } else { tar::EntryType::Link });
                    h.set_size(0);
                    h.set_link_name(data).unwrap();
                }
                _ => unreachable!(),
            }
            h.set_cksum();
            let body: &[u8] = if *kind == 'f' { data.as_bytes() } else { &[] };
            b.append(&h, body).unwrap();
        }
        b.into_inner().unwrap();
        f
    }

    #[test]
    fn unpacking_never_leaves_the_directory() {
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        for (entries, want) in [
            (vec![("../escaped", 'f', "x")], "entry \"../escaped\" points outside the archive"),
            (vec![("a/../../escaped", 'f', "x")], "entry \"a/../../escaped\" points outside the archive"),
        ] {
            let root = tempfile::tempdir().unwrap();
            let ar = tarball(&entries);
            let e = unpack_archive(ar.path(), root.path()).unwrap_err().to_string();
            assert_eq!(e, format!("invalid image archive: {want}"));
            assert!(!root.path().parent().unwrap().join("escaped").exists());
        }
        // A symlinked directory followed by a file through it: the link is never created, so the file lands
        // inside the directory (or nowhere), never at the link's target.
        let root = tempfile::tempdir().unwrap();
        let target = outside.path().display().to_string();
        let ar = tarball(&[("dir", 's', &target), ("dir/victim", 'f', "pwned"), ("hard", 'h', "/etc/passwd")]);
        let links = unpack_archive(ar.path(), root.path()).unwrap();
        assert!(!victim.exists(), "nothing was written through the symlink");
        assert!(links.contains(Path::new("dir")) && links.contains(Path::new("hard")), "{links:?}");
        assert!(!root.path().join("hard").exists(), "hardlinks are not created");
    }

    #[test]
    fn docker_save_entries_must_be_plain_files_of_the_archive() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("abc")).unwrap();
        std::fs::write(root.path().join("abc/layer.tar"), "x").unwrap();
        let links: HashSet<PathBuf> = [PathBuf::from("def/layer.tar")].into();
        assert_eq!(archive_member(root.path(), "./abc/layer.tar", &links).unwrap(), root.path().join("abc/layer.tar"));
        for (name, why) in [
            ("/etc/passwd", "is an absolute path"),
            ("../x/layer.tar", "contains \"..\""),
            ("abc/../abc/layer.tar", "contains \"..\""),
            ("def/layer.tar", "is a symlink or hardlink in the archive"),
            ("abc", "is not a regular file"),
            ("nope.json", "is not in the archive"),
        ] {
            let e = archive_member(root.path(), name, &links).unwrap_err().to_string();
            assert_eq!(e, format!("invalid image archive: manifest.json entry {name:?} {why}"));
        }
    }

    #[test]
    fn a_missing_field_is_a_clear_error() {
        let root = tempfile::tempdir().unwrap();
        let index =
            r#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","size":1}]}"#;
        std::fs::write(root.path().join("index.json"), index).unwrap();
        let e = parse_oci(root.path()).err().unwrap().to_string();
        assert!(e.starts_with("invalid image archive: index.json: missing field `digest`"), "{e}");
    }

    #[test]
    fn an_index_entry_is_picked_for_this_platform() {
        let node = swarm::api::Platform::current().architecture;
        let other = if node == "amd64" { "arm64" } else { "amd64" };
        let entry = |n: char, arch: Option<&str>| {
            let mut e = serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": format!("sha256:{}", n.to_string().repeat(64)),
                "size": 1,
            });
            if let Some(a) = arch {
                e["platform"] = serde_json::json!({"os": "linux", "architecture": a});
            }
            e
        };
        let index = |es: Vec<serde_json::Value>| -> ImageIndex {
            serde_json::from_value(serde_json::json!({"schemaVersion": 2, "manifests": es})).unwrap()
        };
        let picked = |i: &ImageIndex| pick_platform(i).map(|d| d.digest().to_string().chars().last().unwrap());
        assert_eq!(picked(&index(vec![entry('a', Some(other)), entry('b', Some(&node))])), Some('b'));
        assert_eq!(picked(&index(vec![entry('a', None), entry('b', Some(&node))])), Some('b'), "a named match wins");
        assert_eq!(picked(&index(vec![entry('a', Some(other)), entry('b', None)])), Some('b'));
        let foreign = index(vec![entry('a', Some(other))]);
        assert_eq!(picked(&foreign), None);
        assert_eq!(index_platforms(&foreign), format!("linux/{other}"));
    }

    #[test]
    fn platforms_compare_os_and_architecture() {
        let node = swarm::api::Platform::current();
        assert!(platform_of("linux", &node.architecture, None).1);
        assert_eq!(platform_of("linux", "arm", Some("v7")), ("linux/arm/v7".to_string(), node.architecture == "arm"));
        assert!(!platform_of("windows", &node.architecture, None).1);
        assert_eq!(node_platform(), format!("linux/{}", node.architecture));
    }
}
