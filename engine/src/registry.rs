//! Pulling images from OCI distribution registries (Docker Hub style, a private registry with TLS and basic auth,
//! or a plain-HTTP one marked insecure) and checking registry credentials (`login`).
//!
//! The distribution protocol is `oci-client`'s; what is Shoal's: the platform picked from an index, every blob
//! verified against its digest and written through containerd's content store under one ingest ref per blob (a
//! second pull of the same layer waits on containerd's lock of that ref instead of downloading it again; a pull
//! interrupted mid-layer resumes from the ingest's offset), then the layers unpacked by [`ImageService`] exactly as
//! `image load` does (each checked against the config's diff ids).

use crate::containerd::{create_lease, delete_lease, req, req_leased};
use crate::image::{
    cd_err, chain_ids, descriptor, is_index, platform_of, ImageError, ImageService, CHUNK, MAX_JSON, SNAPSHOTTER,
};
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::{AbortRequest, InfoRequest, WriteAction, WriteContentRequest};
use engine_api::ImagePullProgress;
use futures::{StreamExt, TryStreamExt};
use oci_client::client::{BlobResponse, Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use oci_spec::image::{Descriptor as OciDescriptor, ImageConfiguration, ImageIndex, ImageManifest};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;
use swarm::api::{familiar_image_ref, normalize_image_ref};
use tokio::sync::mpsc;
use tonic::transport::Channel;

/// Where `shoald` looks for registry CAs, in Docker's layout: `<dir>/<host[:port]>/*.crt`.
pub const DEFAULT_CERTS_DIR: &str = "/etc/shoal/certs.d";
/// Layers downloaded at once, as dockerd's default `max-concurrent-downloads`.
const CONCURRENT_DOWNLOADS: usize = 3;
const MT_DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1";
const ACCEPT: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// Registry settings of the daemon (`--insecure-registry`, `--registry-mirror`, the certs.d directory).
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// `HOST[:PORT]` of registries spoken to over plain HTTP.
    pub insecure: Vec<String>,
    /// Mirrors of Docker Hub (`https://host[:port]` or `http://…`), tried in order before Docker Hub itself.
    pub mirrors: Vec<String>,
    /// `<certs_dir>/<host[:port]>/*.crt` are CAs trusted for that registry, besides the system roots.
    pub certs_dir: PathBuf,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig { insecure: vec![], mirrors: vec![], certs_dir: DEFAULT_CERTS_DIR.into() }
    }
}

/// A user name and password for a registry's basic or token authentication.
#[derive(Clone, Default)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password: these end up in logs.
        write!(f, "Credentials({})", self.username)
    }
}

/// Pulling or logging in failed; each message is one line naming the registry or image.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry's host name does not resolve.
    #[error("registry {host}: no such host")]
    UnknownHost { host: String },
    /// Nothing listens at the registry's address.
    #[error("registry {host}: connection refused")]
    ConnectionRefused { host: String },
    /// The TLS handshake failed (an untrusted certificate, or a plain-HTTP registry not marked insecure).
    #[error("registry {host}: tls: {why}")]
    Tls { host: String, why: String },
    /// The registry wants credentials and none were sent.
    #[error("pull access denied for {image}: 401 Unauthorized: authentication required (run 'shoal login {host}')")]
    NoCredentials { image: String, host: String },
    /// The registry refused the credentials sent.
    #[error("registry {host}: 401 Unauthorized: incorrect username or password")]
    BadCredentials { host: String },
    /// The registry has no manifest for this tag or digest.
    #[error("manifest for {reference} not found: manifest unknown")]
    ManifestUnknown { reference: String },
    /// A downloaded manifest, config or layer does not hash to the digest it was asked by.
    #[error("digest mismatch: {what} {expected} from {host} hashes to {actual}; nothing was stored")]
    DigestMismatch { what: &'static str, expected: String, actual: String, host: String },
    /// An index lists no manifest for the wanted platform.
    #[error("no matching manifest for {wanted} in the manifest list entries (the image offers {offered})")]
    NoPlatform { wanted: String, offered: String },
    /// The image (not an index) is for another platform than the one asked for.
    #[error("image {image} is for {image_platform}, not {wanted}")]
    WrongPlatform { image: String, image_platform: String, wanted: String },
    /// `--platform` is not `os/arch[/variant]`.
    #[error("invalid platform {0:?}: expected os/arch[/variant], e.g. linux/amd64")]
    InvalidPlatform(String),
    /// A manifest or config that does not parse, or that this engine cannot use.
    #[error("invalid image {image}: {why}")]
    InvalidImage { image: String, why: String },
    /// A CA file under the certs.d directory cannot be read.
    #[error("{path}: {why}")]
    Certs { path: String, why: String },
    /// The disk under containerd's content store or snapshots filled up; the pull's ingests were dropped.
    #[error("no space left on device while storing {image}; nothing was stored")]
    DiskFull { image: String },
    /// Any other answer or failure of the registry.
    #[error("registry {host}: {message}")]
    Registry { host: String, message: String },
    /// Storing or unpacking in containerd failed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The reference is malformed.
    #[error(transparent)]
    Reference(#[from] swarm::api::ReferenceError),
}

impl RegistryError {
    /// Whether the network failed mid-transfer: what was downloaded stays leased for a retry to resume from.
    fn is_transfer_failure(&self) -> bool {
        matches!(self, RegistryError::Registry { .. } | RegistryError::ConnectionRefused { .. })
    }

    /// Whether containerd failed a write for want of space (ENOSPC, passed on as its message).
    fn is_disk_full(&self) -> bool {
        matches!(self, RegistryError::Image(_)) && self.to_string().contains("no space left on device")
    }
}

/// The OS, architecture and (optional) variant a pull is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedPlatform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl WantedPlatform {
    /// This node's platform (the variant is left open: any variant of its architecture is taken).
    pub fn node() -> Self {
        let p = swarm::api::Platform::current();
        WantedPlatform { os: p.os, architecture: p.architecture, variant: None }
    }

    /// `os/arch[/variant]`, as `--platform` takes it.
    pub fn parse(s: &str) -> Result<Self, RegistryError> {
        let parts: Vec<&str> = s.trim().split('/').collect();
        let ok = |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => Ok(WantedPlatform {
                os: os.to_ascii_lowercase(),
                architecture: arch.to_ascii_lowercase(),
                variant: None,
            }),
            [os, arch, v] if ok(os) && ok(arch) && ok(v) => Ok(WantedPlatform {
                os: os.to_ascii_lowercase(),
                architecture: arch.to_ascii_lowercase(),
                variant: Some(v.to_ascii_lowercase()),
            }),
            _ => Err(RegistryError::InvalidPlatform(s.to_string())),
        }
    }

    fn matches(&self, os: &str, arch: &str, variant: Option<&str>) -> bool {
        let variant = variant.filter(|v| !v.is_empty());
        os == self.os
            && arch == self.architecture
            && match (&self.variant, variant) {
                (None, _) => true,
                (Some(w), Some(v)) => w == v,
                // arm64 images rarely say v8, which is the only arm64 variant there is.
                (Some(w), None) => self.architecture == "arm64" && w == "v8",
            }
    }

    fn shown(&self) -> String {
        match &self.variant {
            Some(v) => format!("{}/{}/{v}", self.os, self.architecture),
            None => format!("{}/{}", self.os, self.architecture),
        }
    }
}

/// The index entry for `wanted`: with several for its architecture (arm v6 and v7), the first listed, as in
/// containerd when no variant is asked for.
fn pick_entry<'a>(index: &'a ImageIndex, wanted: &WantedPlatform) -> Option<&'a OciDescriptor> {
    index.manifests().iter().find(|m| {
        m.platform()
            .as_ref()
            .is_some_and(|p| wanted.matches(&p.os().to_string(), &p.architecture().to_string(), p.variant().as_deref()))
    })
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The 12 hex digits Docker names a layer by in progress lines.
fn short_id(digest: &str) -> String {
    digest.strip_prefix("sha256:").unwrap_or(digest).chars().take(12).collect()
}

pub use engine_api::registry_host;

/// Turns a client error into one line saying what went wrong where.
fn classify(e: OciDistributionError, host: &str, image: &str, authed: bool) -> RegistryError {
    let host = host.to_string();
    match e {
        OciDistributionError::UnauthorizedError { .. } | OciDistributionError::AuthenticationFailure(_) => {
            if authed {
                RegistryError::BadCredentials { host }
            } else {
                RegistryError::NoCredentials { image: image.to_string(), host }
            }
        }
        OciDistributionError::RegistryError { envelope, .. } => {
            if envelope.errors.iter().any(|e| e.code == OciErrorCode::ManifestUnknown) {
                return RegistryError::ManifestUnknown { reference: image.to_string() };
            }
            if envelope.errors.iter().any(|e| e.code == OciErrorCode::Unauthorized) {
                return classify(OciDistributionError::UnauthorizedError { url: String::new() }, &host, image, authed);
            }
            let message = envelope
                .errors
                .iter()
                .map(|e| format!("{}: {}", format!("{:?}", e.code).to_lowercase(), e.message))
                .collect::<Vec<_>>()
                .join("; ");
            RegistryError::Registry { host, message }
        }
        OciDistributionError::ImageManifestNotFoundError(_) => {
            RegistryError::ManifestUnknown { reference: image.to_string() }
        }
        OciDistributionError::ServerError { code: 404, .. } => {
            RegistryError::ManifestUnknown { reference: image.to_string() }
        }
        OciDistributionError::ServerError { code, message, .. } => {
            let first = message.lines().next().unwrap_or("").trim().to_string();
            RegistryError::Registry { host, message: format!("HTTP {code} {first}").trim().to_string() }
        }
        OciDistributionError::DigestError(oci_client::errors::DigestError::VerificationError { expected, actual }) => {
            RegistryError::DigestMismatch { what: "blob", expected, actual, host }
        }
        OciDistributionError::RequestError(r) => transport(&r, host),
        other => RegistryError::Registry { host, message: other.to_string() },
    }
}

/// Classifies a failed HTTP request by the innermost causes (resolver, socket, TLS).
fn transport(e: &(dyn std::error::Error + 'static), host: String) -> RegistryError {
    let mut chain = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return RegistryError::ConnectionRefused { host };
            }
        }
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return RegistryError::Tls { host, why: tls.to_string() };
        }
        chain.push(err.to_string());
        cur = err.source();
    }
    let all = chain.join(": ");
    if all.contains("dns error")
        || all.contains("failed to lookup address")
        || all.contains("Name or service not known")
    {
        return RegistryError::UnknownHost { host };
    }
    if ["InvalidContentType", "received corrupt message", "tls", "certificate", "handshake"]
        .iter()
        .any(|w| all.contains(w))
    {
        return RegistryError::Tls { host, why: chain.last().cloned().unwrap_or_default() };
    }
    // reqwest's outer message carries the URL; the innermost cause says what happened.
    RegistryError::Registry { host, message: chain.last().cloned().unwrap_or(all) }
}

/// What one pull did, for the caller's summary.
#[derive(Debug, Clone)]
pub struct PullOutcome {
    /// Normalized name the image is stored under.
    pub name: String,
    /// Digest of what the reference resolved to at the registry (an index or a manifest).
    pub digest: String,
    /// The image record already pointed at this digest.
    pub up_to_date: bool,
}

/// Pulls images and checks credentials, with the daemon's registry settings.
#[derive(Clone)]
pub struct Registries {
    cfg: RegistryConfig,
}

/// A manifest or index as fetched: its bytes, digest and media type.
struct Fetched {
    body: bytes::Bytes,
    digest: String,
    media_type: String,
}

impl Fetched {
    fn descriptor(&self) -> containerd_client::types::Descriptor {
        descriptor(&self.media_type, &self.digest, self.body.len() as u64)
    }
}

/// Sends progress lines, ignoring a client that went away (the pull still finishes, as dockerd's does).
#[derive(Clone)]
struct Progress(mpsc::Sender<ImagePullProgress>);

impl Progress {
    async fn line(&self, status: String) {
        let _ = self.0.send(ImagePullProgress { id: String::new(), status, current: 0, total: 0 }).await;
    }

    async fn layer(&self, id: &str, status: &str, current: u64, total: u64) {
        let _ = self.0.send(ImagePullProgress { id: id.to_string(), status: status.to_string(), current, total }).await;
    }
}

/// A layer going from the content store to a registry: read in containerd's chunks, sent on in pieces of
/// about `PUSH_PIECE` bytes (one PATCH each), so a layer of any size costs a few MiB of memory; each piece sent is
/// a Pushing line.
struct Upload {
    ch: Channel,
    digest: String,
    reader: Option<tonic::Streaming<containerd_client::services::v1::ReadContentResponse>>,
    id: String,
    sent: u64,
    total: u64,
    progress: Progress,
}

/// The bytes of one PATCH of a layer push (oci-client's own chunk limit).
const PUSH_PIECE: usize = 4 << 20;

impl Upload {
    fn new(ch: Channel, digest: &str, id: String, total: u64, progress: Progress) -> Self {
        Upload { ch, digest: digest.to_string(), reader: None, id, sent: 0, total, progress }
    }

    fn stream(self) -> impl futures::Stream<Item = oci_client::errors::Result<bytes::Bytes>> + Send + 'static {
        let read_err = |s: tonic::Status| {
            OciDistributionError::GenericError(Some(format!(
                "reading the layer from the content store: {}",
                s.message()
            )))
        };
        futures::stream::try_unfold(self, move |mut u| async move {
            if u.reader.is_none() {
                let r = containerd_client::services::v1::ReadContentRequest {
                    digest: u.digest.clone(),
                    offset: 0,
                    size: 0,
                };
                u.reader = Some(ContentClient::new(u.ch.clone()).read(req(r)).await.map_err(read_err)?.into_inner());
            }
            let reader = u.reader.as_mut().expect("opened above");
            let mut piece = Vec::with_capacity(PUSH_PIECE);
            while piece.len() < PUSH_PIECE {
                match reader.message().await.map_err(read_err)? {
                    Some(chunk) => piece.extend_from_slice(&chunk.data),
                    None => break,
                }
            }
            if piece.is_empty() {
                return Ok(None);
            }
            u.sent += piece.len() as u64;
            u.progress.layer(&u.id, "Pushing", u.sent, u.total).await;
            Ok(Some((bytes::Bytes::from(piece), u)))
        })
    }
}

impl Registries {
    pub fn new(cfg: RegistryConfig) -> Self {
        // reqwest is built without a default crypto provider: ring, as everywhere else in Shoal. Installing it
        // twice is harmless (the second attempt reports the first and is ignored).
        let _ = rustls::crypto::ring::default_provider().install_default();
        Registries { cfg }
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.cfg
    }

    /// A client for one registry host: plain HTTP if it is marked insecure (or is an `http://` mirror), and the
    /// CAs of `certs.d/<host>/` trusted besides the system roots.
    fn client(&self, host: &str) -> Result<Client, RegistryError> {
        let mut http: Vec<String> = self.cfg.insecure.clone();
        for m in &self.cfg.mirrors {
            if let Some(h) = m.strip_prefix("http://") {
                http.push(h.trim_end_matches('/').to_string());
            }
        }
        let mut extra = Vec::new();
        let dir = self.cfg.certs_dir.join(host);
        if let Ok(entries) = std::fs::read_dir(&dir) {
            let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
            paths.sort();
            for p in paths.into_iter().filter(|p| p.extension().is_some_and(|e| e == "crt")) {
                let data = std::fs::read(&p)
                    .map_err(|e| RegistryError::Certs { path: p.display().to_string(), why: e.to_string() })?;
                extra.push(Certificate { encoding: CertificateEncoding::Pem, data });
            }
        }
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(http),
            extra_root_certificates: extra,
            // Shoal picks the platform itself (variant, --platform); the client must hand indexes back.
            platform_resolver: None,
            connect_timeout: Some(Duration::from_secs(15)),
            read_timeout: Some(Duration::from_secs(60)),
            user_agent: concat!("shoal/", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        };
        Client::try_from(config).map_err(|e| RegistryError::Registry { host: host.into(), message: e.to_string() })
    }

    /// Where to fetch `reference` from: Docker Hub's mirrors first (in order), then the registry itself.
    fn sources(&self, reference: &Reference) -> Vec<Reference> {
        let mut out = Vec::new();
        if reference.registry() == "docker.io" {
            for m in &self.cfg.mirrors {
                let host = m.trim_start_matches("https://").trim_start_matches("http://").trim_end_matches('/');
                let mut r = reference.clone();
                r.set_mirror_registry(host.to_string());
                out.push(r);
            }
        }
        out.push(reference.clone());
        out
    }

    /// Checks credentials against a registry, as `docker login` does before storing them.
    pub async fn login(&self, server: &str, creds: &Credentials) -> Result<(), RegistryError> {
        let host = registry_host(server);
        let r = Reference::with_tag(host.clone(), "library/shoal-login".into(), "latest".into());
        let client = self.client(r.resolve_registry())?;
        let auth = RegistryAuth::Basic(creds.username.clone(), creds.password.clone());
        // The catalog needs the same credentials as any pull; a registry that keeps it private (403/404) has
        // still accepted them by then.
        match client.catalog(&r, &auth, Some(1), None).await {
            Ok(_) => Ok(()),
            Err(e) => match classify(e, &host, &host, true) {
                RegistryError::Registry { .. } | RegistryError::ManifestUnknown { .. } => Ok(()),
                other => Err(other),
            },
        }
    }

    /// Pushes image `reference` to its registry, telling `progress` as Docker does (per layer Preparing, Pushing,
    /// then Pushed or Layer already exists; then `TAG: digest: … size: …`); returns the digest now under the tag.
    /// Layers stream from the content store (a few MiB in memory, whatever their size). The stored bytes go, so
    /// the digests stay: an image pulled as a multi-platform index is pushed as that index when the registry
    /// holds every manifest it lists (it does when the image goes back to the repository it came from; only this
    /// node's platform was pulled), else as this node's manifest.
    pub async fn push(
        &self,
        images: &ImageService,
        reference: &str,
        creds: Option<Credentials>,
        progress: mpsc::Sender<ImagePullProgress>,
    ) -> Result<String, RegistryError> {
        let name = normalize_image_ref(reference)?;
        let shown = familiar_image_ref(&name);
        let progress = Progress(progress);
        let target = images.image_target(&name).await?.ok_or_else(|| ImageError::NotFound(shown.clone()))?;
        let top = images.read_blob(&target.digest).await?;
        // The manifest for this node: the target itself, or its entry in the index (the only one stored).
        let (index, desc, body) = if is_index(&target.media_type)
            || serde_json::from_slice::<serde_json::Value>(&top).is_ok_and(|v| v.get("manifests").is_some())
        {
            let idx: ImageIndex = serde_json::from_slice(&top)
                .map_err(|e| RegistryError::InvalidImage { image: shown.clone(), why: format!("index: {e}") })?;
            let m = crate::image::pick_platform(&idx).ok_or_else(|| RegistryError::NoPlatform {
                wanted: WantedPlatform::node().shown(),
                offered: crate::image::index_platforms(&idx),
            })?;
            let desc = descriptor(m.media_type().as_ref(), m.digest().as_ref(), m.size());
            let body = images.read_blob(&desc.digest).await?;
            (Some((idx, target, top)), desc, body)
        } else {
            (None, target, top)
        };
        let manifest: ImageManifest = serde_json::from_slice(&body)
            .map_err(|e| RegistryError::InvalidImage { image: shown.clone(), why: format!("manifest: {e}") })?;
        let origin: Reference = name.parse().map_err(|e: oci_client::ParseError| RegistryError::InvalidImage {
            image: name.clone(),
            why: e.to_string(),
        })?;
        let host = origin.resolve_registry().to_string();
        let client = self.client(&host)?;
        let authed = creds.is_some();
        let auth = match &creds {
            Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
            None => RegistryAuth::Anonymous,
        };
        let fail = |e| classify(e, &host, &shown, authed);
        let repo = familiar_image_ref(&format!("{}/{}", origin.registry(), origin.repository()));
        progress.line(format!("The push refers to repository [{repo}]")).await;
        client.auth(&origin, &auth, oci_client::RegistryOperation::Push).await.map_err(fail)?;
        // Layers top first, as Docker lists them; all are Preparing before the first goes.
        let layers: Vec<&OciDescriptor> = manifest.layers().iter().rev().collect();
        for l in &layers {
            progress.layer(&short_id(l.digest().as_ref()), "Preparing", 0, 0).await;
        }
        for l in &layers {
            let (digest, id) = (l.digest().to_string(), short_id(l.digest().as_ref()));
            if client.blob_exists(&origin, &digest).await.map_err(fail)? {
                progress.layer(&id, "Layer already exists", 0, 0).await;
                continue;
            }
            let upload = Upload::new(images.channel(), &digest, id.clone(), l.size(), progress.clone());
            client.push_blob_stream(&origin, upload.stream(), &digest, Some(l.size())).await.map_err(fail)?;
            progress.layer(&id, "Pushed", 0, 0).await;
        }
        let config = manifest.config().digest().to_string();
        if !client.blob_exists(&origin, &config).await.map_err(fail)? {
            let data = images.read_blob(&config).await?;
            client.push_blob(&origin, data, &config).await.map_err(fail)?;
        }
        let content_type = |d: &containerd_client::types::Descriptor| {
            http::HeaderValue::from_str(&d.media_type).map_err(|e| RegistryError::InvalidImage {
                image: shown.clone(),
                why: format!("media type {:?}: {e}", d.media_type),
            })
        };
        let (tagged, tagged_body) = match index {
            None => (desc, body),
            Some((idx, idx_desc, idx_body)) => {
                let by_digest = origin.clone_with_digest(desc.digest.clone());
                client.push_manifest_raw(&by_digest, body.clone(), content_type(&desc)?).await.map_err(fail)?;
                let mut missing = None;
                for m in idx.manifests().iter().filter(|m| m.digest().as_ref() != desc.digest) {
                    let there = origin.clone_with_digest(m.digest().to_string());
                    if client.fetch_manifest_digest(&there, &auth).await.is_err() {
                        missing = Some(m.digest().to_string());
                        break;
                    }
                }
                match missing {
                    None => (idx_desc, idx_body),
                    Some(m) => {
                        tracing::info!(image = %name, missing = %m,
                            "the registry lacks a manifest of the index: pushing this node's platform only");
                        (desc, body)
                    }
                }
            }
        };
        client.push_manifest_raw(&origin, tagged_body.clone(), content_type(&tagged)?).await.map_err(fail)?;
        let tag = origin.tag().unwrap_or("latest");
        progress.line(format!("{tag}: digest: {} size: {}", tagged.digest, tagged_body.len())).await;
        tracing::info!(image = %name, digest = %tagged.digest, "image pushed");
        Ok(tagged.digest)
    }

    /// Pulls `reference` for `platform` (this node's when `None`) into containerd, telling `progress` as Docker
    /// does: a line per layer and status, then `Digest:` and `Status:`.
    pub async fn pull(
        &self,
        images: &ImageService,
        reference: &str,
        platform: Option<&str>,
        creds: Option<Credentials>,
        progress: mpsc::Sender<ImagePullProgress>,
    ) -> Result<PullOutcome, RegistryError> {
        let name = normalize_image_ref(reference)?;
        let wanted = match platform.filter(|p| !p.trim().is_empty()) {
            Some(p) => WantedPlatform::parse(p)?,
            None => WantedPlatform::node(),
        };
        let origin: Reference = name.parse().map_err(|e: oci_client::ParseError| RegistryError::InvalidImage {
            image: name.clone(),
            why: e.to_string(),
        })?;
        let shown = familiar_image_ref(&name);
        let progress = Progress(progress);
        let what = origin.digest().or(origin.tag()).unwrap_or("latest").to_string();
        let repo = familiar_image_ref(&format!("{}/{}", origin.registry(), origin.repository()));
        progress.line(format!("{what}: Pulling from {repo}")).await;
        let auth = match &creds {
            Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
            None => RegistryAuth::Anonymous,
        };

        // The first source that has the manifest serves the whole pull.
        let mut last_err = None;
        let mut found = None;
        for source in self.sources(&origin) {
            let host = source.resolve_registry().to_string();
            let client = self.client(&host)?;
            match self.fetch_manifest(&client, &source, &auth, creds.is_some(), &shown).await {
                Ok(top) => {
                    found = Some((client, source, top));
                    break;
                }
                Err(e) => {
                    if source.resolve_registry() != origin.resolve_registry() {
                        tracing::warn!(mirror = %host, error = %e, "registry mirror failed, trying the next source");
                    }
                    last_err = Some(e);
                }
            }
        }
        let Some((client, source, top)) = found else {
            return Err(last_err.expect("at least the registry itself was tried"));
        };
        let host = source.resolve_registry().to_string();
        let authed = creds.is_some();

        // An index: the wanted platform's manifest, fetched by digest.
        let (index, manifest) = if is_index(&top.media_type) {
            let idx: ImageIndex = serde_json::from_slice(&top.body)
                .map_err(|e| RegistryError::InvalidImage { image: shown.clone(), why: format!("index: {e}") })?;
            let entry = pick_entry(&idx, &wanted).ok_or_else(|| RegistryError::NoPlatform {
                wanted: wanted.shown(),
                offered: crate::image::index_platforms(&idx),
            })?;
            let by_digest = source.clone_with_digest(entry.digest().to_string());
            let m = self.fetch_manifest(&client, &by_digest, &auth, authed, &shown).await?;
            if is_index(&m.media_type) {
                return Err(RegistryError::InvalidImage { image: shown, why: "an index inside an index".into() });
            }
            (Some(top), m)
        } else {
            (None, top)
        };
        let parsed: ImageManifest = serde_json::from_slice(&manifest.body)
            .map_err(|e| RegistryError::InvalidImage { image: shown.clone(), why: format!("manifest: {e}") })?;

        // The config: small, read into memory, verified, and checked against the platform and the layers.
        let cfg_desc = parsed.config();
        if cfg_desc.size() > MAX_JSON {
            return Err(RegistryError::InvalidImage {
                image: shown,
                why: format!("config larger than {MAX_JSON} bytes"),
            });
        }
        let mut cfg_bytes = Vec::new();
        client
            .pull_blob(&source, cfg_desc.digest().as_ref(), &mut cfg_bytes)
            .await
            .map_err(|e| classify(e, &host, &shown, authed))?;
        let actual = sha256(&cfg_bytes);
        if actual != cfg_desc.digest().as_ref() {
            return Err(RegistryError::DigestMismatch {
                what: "config",
                expected: cfg_desc.digest().to_string(),
                actual,
                host,
            });
        }
        let config: ImageConfiguration = serde_json::from_slice(&cfg_bytes)
            .map_err(|e| RegistryError::InvalidImage { image: shown.clone(), why: format!("config: {e}") })?;
        let (image_platform, _) =
            platform_of(&config.os().to_string(), &config.architecture().to_string(), config.variant().as_deref());
        if !wanted.matches(&config.os().to_string(), &config.architecture().to_string(), config.variant().as_deref()) {
            return Err(RegistryError::WrongPlatform { image: shown, image_platform, wanted: wanted.shown() });
        }
        let diff_ids = config.rootfs().diff_ids().clone();
        if diff_ids.len() != parsed.layers().len() {
            return Err(RegistryError::InvalidImage {
                image: shown,
                why: format!("config has {} diff ids for {} layers", diff_ids.len(), parsed.layers().len()),
            });
        }

        let ch = images.channel();
        let lease = create_lease(&ch, "shoal-pull", Duration::from_secs(3600)).await.map_err(cd_err)?;
        let result = self
            .store(
                images,
                &client,
                &source,
                &shown,
                &name,
                &wanted,
                index.as_ref(),
                &manifest,
                &parsed,
                &cfg_bytes,
                &diff_ids,
                &lease,
                &progress,
            )
            .await;
        // A full disk: the partial ingests go (they cannot be finished and only hold the space), and with the
        // lease everything this pull wrote.
        let result = match result {
            Err(e) if e.is_disk_full() => {
                for l in parsed.layers() {
                    abort(&ch, &format!("shoal-pull-{}", l.digest())).await;
                }
                tracing::warn!(image = %name, error = %e, "disk full while pulling");
                Err(RegistryError::DiskFull { image: shown.clone() })
            }
            other => other,
        };
        // After a transfer failure the downloaded blobs and ingests stay leased (an hour) for a retry to resume
        // from; otherwise nothing of a failed pull is kept.
        if !matches!(&result, Err(e) if e.is_transfer_failure()) {
            delete_lease(&ch, &lease).await;
        }
        let up_to_date = result?;
        let digest = index.as_ref().unwrap_or(&manifest).digest.clone();
        progress.line(format!("Digest: {digest}")).await;
        if up_to_date {
            progress.line(format!("Status: Image is up to date for {shown}")).await;
        } else {
            progress.line(format!("Status: Downloaded newer image for {shown}")).await;
        }
        tracing::info!(image = %name, %digest, "image pulled");
        Ok(PullOutcome { name, digest, up_to_date })
    }

    /// What `reference` points at in its registry now (Docker's distribution inspect): the media type, digest
    /// and size of its index or manifest, verified, without pulling anything. Mirrors are tried first, as for a
    /// pull.
    pub async fn inspect(
        &self,
        reference: &str,
        creds: Option<Credentials>,
    ) -> Result<engine_api::DistributionInspectResponse, RegistryError> {
        let name = normalize_image_ref(reference)?;
        let origin: Reference = name.parse().map_err(|e: oci_client::ParseError| RegistryError::InvalidImage {
            image: name.clone(),
            why: e.to_string(),
        })?;
        let shown = familiar_image_ref(&name);
        let auth = match &creds {
            Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
            None => RegistryAuth::Anonymous,
        };
        let mut last_err = None;
        for source in self.sources(&origin) {
            let client = self.client(source.resolve_registry())?;
            match self.fetch_manifest(&client, &source, &auth, creds.is_some(), &shown).await {
                Ok(top) => {
                    return Ok(engine_api::DistributionInspectResponse {
                        size: top.body.len() as u64,
                        media_type: top.media_type,
                        digest: top.digest,
                    })
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.expect("at least the registry itself was tried"))
    }

    /// Fetches a manifest or index and checks that its bytes hash to the digest the registry gave (and to the
    /// one asked for, when the reference has one).
    async fn fetch_manifest(
        &self,
        client: &Client,
        source: &Reference,
        auth: &RegistryAuth,
        authed: bool,
        shown: &str,
    ) -> Result<Fetched, RegistryError> {
        let host = source.resolve_registry().to_string();
        let (body, digest) = client.pull_manifest_raw(source, auth, ACCEPT).await.map_err(|e| {
            let e = classify(e, &host, shown, authed);
            // A digest the registry's header contradicts: the manifest was tampered with on the way.
            match e {
                RegistryError::DigestMismatch { expected, actual, host, .. } => {
                    RegistryError::DigestMismatch { what: "manifest", expected, actual, host }
                }
                e => e,
            }
        })?;
        let actual = sha256(&body);
        let expected = source.digest().unwrap_or(&digest).to_string();
        if actual != expected {
            return Err(RegistryError::DigestMismatch { what: "manifest", expected, actual, host });
        }
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| RegistryError::InvalidImage { image: shown.to_string(), why: format!("manifest: {e}") })?;
        let media_type = v.get("mediaType").and_then(|m| m.as_str()).map(str::to_string).unwrap_or_else(|| {
            // OCI documents may leave mediaType out: an index has "manifests".
            if v.get("manifests").is_some() {
                "application/vnd.oci.image.index.v1+json".into()
            } else {
                "application/vnd.oci.image.manifest.v1+json".into()
            }
        });
        if media_type.starts_with(MT_DOCKER_SCHEMA1) || v.get("schemaVersion").and_then(|s| s.as_i64()) == Some(1) {
            return Err(RegistryError::InvalidImage {
                image: shown.to_string(),
                why: "Docker image manifest schema 1 is not supported".into(),
            });
        }
        Ok(Fetched { body, digest: actual, media_type })
    }

    /// Downloads the layers, writes config, manifest and index with their GC labels, unpacks, and names the
    /// image. Returns whether the image record already pointed at this content.
    #[allow(clippy::too_many_arguments)]
    async fn store(
        &self,
        images: &ImageService,
        client: &Client,
        source: &Reference,
        shown: &str,
        name: &str,
        wanted: &WantedPlatform,
        index: Option<&Fetched>,
        manifest: &Fetched,
        parsed: &ImageManifest,
        cfg_bytes: &[u8],
        diff_ids: &[String],
        lease: &str,
        progress: &Progress,
    ) -> Result<bool, RegistryError> {
        let ch = images.channel();
        let host = source.resolve_registry().to_string();
        let layers = parsed.layers();
        // Docker's first lines: every layer, either already here or about to be fetched.
        let mut missing: Vec<OciDescriptor> = Vec::new();
        for l in layers {
            let id = short_id(l.digest().as_ref());
            if blob_exists(&ch, l.digest().as_ref()).await? {
                progress.layer(&id, "Already exists", 0, 0).await;
            } else if !missing.iter().any(|m| m.digest() == l.digest()) {
                progress.layer(&id, "Pulling fs layer", 0, 0).await;
                missing.push(l.clone());
            }
        }
        let downloaded: Vec<String> = missing.iter().map(|l| l.digest().to_string()).collect();
        let downloads: Vec<_> = missing
            .into_iter()
            .map(|l| {
                let (ch, host) = (ch.clone(), host.clone());
                async move { fetch_layer(&ch, client, source, &l, lease, progress, &host, shown).await }
            })
            .collect();
        futures::stream::iter(downloads).buffer_unordered(CONCURRENT_DOWNLOADS).try_collect::<Vec<()>>().await?;

        // Configs and layers before what points at them, each with the GC labels `image load` gives them.
        let top_chain = chain_ids(diff_ids).pop();
        let mut cfg_labels = HashMap::new();
        if let Some(top) = &top_chain {
            cfg_labels.insert(format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}"), top.clone());
        }
        let cfg_digest = parsed.config().digest().to_string();
        write_small(&ch, &cfg_digest, cfg_bytes, cfg_labels, lease).await?;
        let mut m_labels = HashMap::new();
        m_labels.insert("containerd.io/gc.ref.content.config".to_string(), cfg_digest);
        for (i, l) in layers.iter().enumerate() {
            m_labels.insert(format!("containerd.io/gc.ref.content.l.{i}"), l.digest().to_string());
        }
        write_small(&ch, &manifest.digest, &manifest.body, m_labels, lease).await?;
        if let Some(idx) = index {
            let labels = HashMap::from([("containerd.io/gc.ref.content.m.0".to_string(), manifest.digest.clone())]);
            write_small(&ch, &idx.digest, &idx.body, labels, lease).await?;
        }

        let descs: Vec<_> =
            layers.iter().map(|l| descriptor(l.media_type().as_ref(), l.digest().as_ref(), l.size())).collect();
        let events = std::sync::Mutex::new(Vec::new());
        images
            .unpack_reporting(&descs, diff_ids, lease, |i, done| {
                if let Ok(mut ev) = events.lock() {
                    ev.push((i, done));
                }
            })
            .await?;
        // A layer that was here already says so once ("Already exists"); the others end with "Pull complete".
        let events = events.into_inner().unwrap_or_default();
        for &(i, done) in &events {
            let fresh = downloaded.contains(&descs[i].digest) || events.contains(&(i, false));
            if fresh {
                let id = short_id(&descs[i].digest);
                progress.layer(&id, if done { "Pull complete" } else { "Extracting" }, 0, 0).await;
            }
        }

        // The index is the image (as Docker records it) when the pull was for this node; a pull for another
        // platform names that platform's manifest, the only one stored.
        let target = match index {
            Some(idx) if *wanted == WantedPlatform::node() => idx.descriptor(),
            _ => manifest.descriptor(),
        };
        let before = images.image_target(name).await?;
        images.set_image(name, &target, lease).await?;
        Ok(before.is_some_and(|b| b.digest == target.digest))
    }
}

async fn blob_exists(ch: &Channel, digest: &str) -> Result<bool, RegistryError> {
    match ContentClient::new(ch.clone()).info(req(InfoRequest { digest: digest.into() })).await {
        Ok(_) => Ok(true),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
        Err(s) => Err(cd_err(s).into()),
    }
}

fn already_exists(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::AlreadyExists || s.message().contains("already exists")
}

/// containerd lets one writer hold an ingest ref; another pull of the same blob is told it is locked.
fn locked(s: &tonic::Status) -> bool {
    s.message().contains("locked")
}

/// Writes a small verified blob (config, manifest, index) from memory, or sets its labels if it is there.
async fn write_small(
    ch: &Channel,
    digest: &str,
    data: &[u8],
    labels: HashMap<String, String>,
    lease: &str,
) -> Result<(), RegistryError> {
    let mut content = ContentClient::new(ch.clone());
    if !blob_exists(ch, digest).await? {
        let r#ref = format!("shoal-pull-{}-{digest}", swarm::api::new_id());
        let base =
            WriteContentRequest { r#ref, total: data.len() as i64, expected: digest.into(), ..Default::default() };
        let msgs = vec![
            WriteContentRequest { action: WriteAction::Write as i32, data: data.to_vec(), ..base.clone() },
            WriteContentRequest {
                action: WriteAction::Commit as i32,
                offset: data.len() as i64,
                labels: labels.clone(),
                ..base
            },
        ];
        match content.write(req_leased(futures::stream::iter(msgs), lease)).await {
            Ok(r) => {
                let mut s = r.into_inner();
                loop {
                    match s.message().await {
                        Ok(Some(_)) => {}
                        Ok(None) => return Ok(()),
                        Err(s) if already_exists(&s) => break,
                        Err(s) => return Err(cd_err(s).into()),
                    }
                }
            }
            Err(s) if already_exists(&s) => {}
            Err(s) => return Err(cd_err(s).into()),
        }
    }
    // Already there (another pull or load wrote it): ours were not committed, so set the labels.
    let info =
        containerd_client::services::v1::Info { digest: digest.into(), labels: labels.clone(), ..Default::default() };
    let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
    content
        .update(req(containerd_client::services::v1::UpdateRequest {
            info: Some(info),
            update_mask: Some(prost_types::FieldMask { paths }),
        }))
        .await
        .map_err(cd_err)?;
    Ok(())
}

/// One layer from the registry into the content store, resuming an ingest left by an interrupted pull and
/// waiting for a concurrent pull of the same layer rather than downloading it twice.
#[allow(clippy::too_many_arguments)]
async fn fetch_layer(
    ch: &Channel,
    client: &Client,
    source: &Reference,
    layer: &OciDescriptor,
    lease: &str,
    progress: &Progress,
    host: &str,
    shown: &str,
) -> Result<(), RegistryError> {
    let digest = layer.digest().to_string();
    let size = layer.size();
    let id = short_id(&digest);
    // One ref per blob, the same in every pull: containerd locks it to one writer and keeps its data across
    // interruptions.
    let r#ref = format!("shoal-pull-{digest}");
    let mut content = ContentClient::new(ch.clone());
    let mut said_waiting = false;
    loop {
        if blob_exists(ch, &digest).await? {
            progress.layer(&id, "Download complete", size, size).await;
            return Ok(());
        }
        let (tx, rx) = mpsc::channel::<WriteContentRequest>(2);
        let base = WriteContentRequest {
            r#ref: r#ref.clone(),
            total: size as i64,
            expected: digest.clone(),
            ..Default::default()
        };
        let _ = tx.send(WriteContentRequest { action: WriteAction::Stat as i32, ..base.clone() }).await;
        let opened = match content.write(req_leased(tokio_stream::wrappers::ReceiverStream::new(rx), lease)).await {
            Ok(r) => {
                let mut resp = r.into_inner();
                match resp.message().await {
                    Ok(Some(first)) => Ok((resp, first.offset.max(0) as u64)),
                    Ok(None) => Err(tonic::Status::unknown("containerd ended the write at once")),
                    Err(s) => Err(s),
                }
            }
            Err(s) => Err(s),
        };
        let (mut resp, mut offset) = match opened {
            Ok(v) => v,
            Err(s) if already_exists(&s) => continue,
            Err(s) if locked(&s) => {
                if !said_waiting {
                    progress.layer(&id, "Waiting", 0, size).await;
                    said_waiting = true;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(s) => return Err(cd_err(s).into()),
        };
        // Our own hash when the whole blob passes through here; a resumed one is checked by containerd's
        // commit, which hashes the whole ingest.
        let mut hasher = None;
        let mut stream = if offset > 0 && offset < size {
            match client.pull_blob_stream_partial(source, &digest.as_str(), offset, None).await {
                Ok(BlobResponse::Partial(s)) => {
                    tracing::info!(layer = %digest, offset, "resuming a layer download");
                    s
                }
                Ok(BlobResponse::Full(s)) => {
                    offset = 0;
                    s
                }
                Err(e) => return Err(classify(e, host, shown, false)),
            }
        } else {
            offset = 0;
            client.pull_blob_stream(source, &digest.as_str()).await.map_err(|e| classify(e, host, shown, false))?
        };
        if offset == 0 {
            hasher = Some(Sha256::new());
        }
        let mut buf = Vec::with_capacity(CHUNK);
        let mut last_shown = 0u64;
        let write = |data: Vec<u8>, at: u64| WriteContentRequest {
            action: WriteAction::Write as i32,
            offset: at as i64,
            data,
            ..base.clone()
        };
        loop {
            let next = stream.next().await;
            let end = next.is_none();
            if let Some(chunk) = next {
                let chunk = match chunk {
                    Ok(c) => c,
                    // The client's own check failed at the end of a whole blob: ours says what arrived instead.
                    Err(_) if offset + buf.len() as u64 == size && hasher.is_some() => break,
                    Err(e) => {
                        return Err(RegistryError::Registry {
                            host: host.to_string(),
                            message: format!("downloading {digest}: {e}"),
                        })
                    }
                };
                if let Some(h) = hasher.as_mut() {
                    h.update(&chunk);
                }
                buf.extend_from_slice(&chunk);
                if (offset + buf.len() as u64) > size {
                    drop(tx);
                    abort(ch, &r#ref).await;
                    return Err(RegistryError::DigestMismatch {
                        what: "layer",
                        expected: digest.clone(),
                        actual: format!("more than its {size} bytes"),
                        host: host.to_string(),
                    });
                }
            }
            if buf.len() >= CHUNK || (end && !buf.is_empty()) {
                let data = std::mem::replace(&mut buf, Vec::with_capacity(CHUNK));
                let n = data.len() as u64;
                if tx.send(write(data, offset)).await.is_err() {
                    return Err(cd_err(
                        resp.message().await.err().unwrap_or_else(|| tonic::Status::unknown("write ended")),
                    )
                    .into());
                }
                match resp.message().await {
                    Ok(Some(_)) => {}
                    Ok(None) => return Err(cd_err(tonic::Status::unknown("containerd ended the write")).into()),
                    Err(s) => return Err(cd_err(s).into()),
                }
                offset += n;
                // A line per 1% or so: enough for a live bar, not a flood.
                if offset - last_shown >= (size / 100).max(CHUNK as u64) || offset == size {
                    progress.layer(&id, "Downloading", offset, size).await;
                    last_shown = offset;
                }
            }
            if end {
                break;
            }
        }
        progress.layer(&id, "Verifying Checksum", offset, size).await;
        let mismatch = |actual: String| RegistryError::DigestMismatch {
            what: "layer",
            expected: digest.clone(),
            actual,
            host: host.to_string(),
        };
        if let Some(h) = hasher {
            let actual = format!("sha256:{}", hex::encode(h.finalize()));
            if actual != digest {
                drop(tx);
                abort(ch, &r#ref).await;
                return Err(mismatch(actual));
            }
        }
        if offset != size {
            drop(tx);
            abort(ch, &r#ref).await;
            return Err(mismatch(format!("{offset} bytes instead of {size}")));
        }
        let commit = WriteContentRequest { action: WriteAction::Commit as i32, offset: offset as i64, ..base.clone() };
        let _ = tx.send(commit).await;
        drop(tx);
        let committed = loop {
            match resp.message().await {
                Ok(Some(_)) => {}
                Ok(None) => break Ok(()),
                Err(s) => break Err(s),
            }
        };
        match committed {
            Ok(()) => {}
            Err(s) if already_exists(&s) => {}
            Err(s)
                if s.code() == tonic::Code::FailedPrecondition || s.message().contains("unexpected commit digest") =>
            {
                abort(ch, &r#ref).await;
                return Err(mismatch("other content (containerd refused the commit)".into()));
            }
            Err(s) => return Err(cd_err(s).into()),
        }
        progress.layer(&id, "Download complete", size, size).await;
        return Ok(());
    }
}

/// Drops an ingest whose content is wrong, so no later pull resumes from it.
async fn abort(ch: &Channel, r#ref: &str) {
    // The write session must have let go of the ref first; it does once our request stream ended.
    for _ in 0..20 {
        match ContentClient::new(ch.clone()).abort(req(AbortRequest { r#ref: r#ref.into() })).await {
            Ok(_) => return,
            Err(s) if s.code() == tonic::Code::NotFound => return,
            Err(s) if locked(&s) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(s) => {
                tracing::warn!(ingest = r#ref, error = %s.message(), "aborting a bad ingest");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_parse_and_match() {
        let p = WantedPlatform::parse("linux/arm/v7").unwrap();
        assert_eq!(p.shown(), "linux/arm/v7");
        assert!(p.matches("linux", "arm", Some("v7")));
        assert!(!p.matches("linux", "arm", Some("v6")));
        assert!(!p.matches("linux", "arm", None));
        let any = WantedPlatform::parse("linux/arm").unwrap();
        assert!(any.matches("linux", "arm", Some("v6")));
        assert!(WantedPlatform::parse("linux/arm64/v8").unwrap().matches("linux", "arm64", None));
        for bad in ["linux", "", "linux/", "linux/amd64/v1/x", "linux amd64"] {
            let e = WantedPlatform::parse(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("invalid platform {bad:?}")), "{e}");
        }
    }

    #[test]
    fn an_index_entry_is_picked_by_os_arch_and_variant() {
        let entry = |n: char, arch: &str, variant: Option<&str>| {
            let mut p = serde_json::json!({"os": "linux", "architecture": arch});
            if let Some(v) = variant {
                p["variant"] = v.into();
            }
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": format!("sha256:{}", n.to_string().repeat(64)),
                "size": 1,
                "platform": p,
            })
        };
        let index: ImageIndex = serde_json::from_value(serde_json::json!({"schemaVersion": 2, "manifests": [
            entry('a', "arm", Some("v6")), entry('b', "arm", Some("v7")), entry('c', "amd64", None),
            entry('d', "arm64", Some("v8")),
        ]}))
        .unwrap();
        let pick = |p: &str| pick_entry(&index, &WantedPlatform::parse(p).unwrap()).map(|d| d.digest().to_string());
        let digest = |c: char| Some(format!("sha256:{}", c.to_string().repeat(64)));
        assert_eq!(pick("linux/arm/v7"), digest('b'));
        assert_eq!(pick("linux/arm"), digest('a'), "no variant asked: the first of the architecture");
        assert_eq!(pick("linux/amd64"), digest('c'));
        assert_eq!(pick("linux/arm64"), digest('d'));
        assert_eq!(pick("linux/s390x"), None);
        assert_eq!(crate::image::index_platforms(&index), "linux/arm/v6, linux/arm/v7, linux/amd64, linux/arm64/v8");
    }

    #[test]
    fn credentials_never_print_the_password() {
        let c = Credentials { username: "me".into(), password: "hunter2".into() };
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn registry_errors_are_one_clear_line() {
        let e = classify(OciDistributionError::UnauthorizedError { url: "u".into() }, "r:5000", "r:5000/a:1", false);
        assert_eq!(
            e.to_string(),
            "pull access denied for r:5000/a:1: 401 Unauthorized: authentication required (run 'shoal login r:5000')"
        );
        let e = classify(OciDistributionError::UnauthorizedError { url: "u".into() }, "r:5000", "r:5000/a:1", true);
        assert_eq!(e.to_string(), "registry r:5000: 401 Unauthorized: incorrect username or password");
        let env: oci_client::errors::OciEnvelope = serde_json::from_str(
            r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"nope"}}]}"#,
        )
        .unwrap();
        let e =
            classify(OciDistributionError::RegistryError { envelope: env, url: "u".into() }, "r", "r/a:nope", false);
        assert_eq!(e.to_string(), "manifest for r/a:nope not found: manifest unknown");
    }
}
