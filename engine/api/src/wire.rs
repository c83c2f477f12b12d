//! Messages of a node's local API (`shoal.Engine`), served by `shoald` on its unix socket for the CLI.

use serde::{Deserialize, Serialize};
use swarm::api::membership::SwarmInfo;

/// `docker info`'s Swarm section, plus the engine's own facts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InfoResponse {
    pub swarm: SwarmInfo,
    pub engine_version: String,
    pub containerd_version: String,
    pub containers_running: u64,
    pub images: u64,
    pub data_root: String,
    pub name: String,
    pub os: String,
    pub architecture: String,
    pub ncpu: u64,
    pub mem_total: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionResponse {
    pub version: String,
    pub api_version: String,
    pub os: String,
    pub arch: String,
    pub containerd_version: String,
}

/// A piece of an image archive (`image load`), base64 in JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageLoadChunk {
    #[serde(with = "base64_bytes")]
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImageLoadResponse {
    /// Normalized references of the loaded images.
    pub loaded: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageSummary {
    /// Normalized reference, `docker.io/library/busybox:latest`.
    pub reference: String,
    /// The image id (config digest, `sha256:…`).
    pub id: String,
    pub created: Option<String>,
    pub size: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImageListResponse {
    pub images: Vec<ImageSummary>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageRemoveRequest {
    pub reference: String,
    #[serde(default)]
    pub force: bool,
}

/// Credentials sent with a pull or checked by `login` (the CLI keeps them in its config.json).
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct AuthConfig {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password: requests get logged.
        write!(f, "AuthConfig({})", self.username)
    }
}

/// Docker's `X-Registry-Auth` form of [`AuthConfig`], as a service spec's `PullOptions.registry_auth` carries
/// it: base64url of `{"username","password","serveraddress"}`.
#[derive(Serialize, Deserialize)]
struct EncodedAuth {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default, rename = "serveraddress")]
    server_address: String,
}

/// A `registry_auth` that is not Docker's encoding of credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid registry auth in the service spec: {0}")]
pub struct AuthDecodeError(String);

impl AuthConfig {
    /// Encodes these credentials for registry `server` in Docker's `X-Registry-Auth` form.
    pub fn encode(&self, server: &str) -> String {
        use base64::Engine as _;
        let e = EncodedAuth {
            username: self.username.clone(),
            password: self.password.clone(),
            server_address: server.to_string(),
        };
        // Serializing three strings cannot fail.
        base64::engine::general_purpose::URL_SAFE.encode(serde_json::to_vec(&e).unwrap_or_default())
    }

    /// Decodes Docker's `X-Registry-Auth` form; `None` when it holds no user name (anonymous).
    pub fn decode(encoded: &str) -> Result<Option<AuthConfig>, AuthDecodeError> {
        use base64::Engine as _;
        let t = encoded.trim();
        if t.is_empty() {
            return Ok(None);
        }
        // Docker's clients write URL-safe base64, some with padding and some without; accept both alphabets.
        let cfg = base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent);
        let url = base64::engine::GeneralPurpose::new(&base64::alphabet::URL_SAFE, cfg);
        let std = base64::engine::GeneralPurpose::new(&base64::alphabet::STANDARD, cfg);
        let raw = url.decode(t).or_else(|_| std.decode(t)).map_err(|e| AuthDecodeError(format!("base64: {e}")))?;
        let e: EncodedAuth = serde_json::from_slice(&raw).map_err(|e| AuthDecodeError(format!("json: {e}")))?;
        Ok((!e.username.is_empty()).then_some(AuthConfig { username: e.username, password: e.password }))
    }
}

/// `Engine.DistributionInspect`: what a reference points at in its registry now, without pulling it (the CLI
/// pins a service's image to this digest).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DistributionInspectRequest {
    pub reference: String,
    #[serde(default)]
    pub auth: Option<AuthConfig>,
}

/// The descriptor of what the reference resolved to: an index's own digest for a multi-platform image, as
/// Docker reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DistributionInspectResponse {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

/// `image pull NAME[:TAG|@DIGEST]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImagePullRequest {
    pub reference: String,
    /// `os/arch[/variant]`; empty means the node's own.
    #[serde(default)]
    pub platform: String,
    #[serde(default)]
    pub auth: Option<AuthConfig>,
}

/// One line of a pull's progress, as Docker's JSON messages: a layer's (`id` set: its short digest, with bytes
/// done of `total` while downloading) or a line of its own (`id` empty: `Digest: …`, `Status: …`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImagePullProgress {
    #[serde(default)]
    pub id: String,
    pub status: String,
    #[serde(default)]
    pub current: u64,
    #[serde(default)]
    pub total: u64,
}

/// `login SERVER`: the daemon checks the credentials against the registry; the CLI stores them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RegistryLoginRequest {
    pub server: String,
    pub auth: AuthConfig,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RegistryLoginResponse {
    /// "Login Succeeded".
    pub status: String,
}

/// `image push NAME[:TAG]`; progress comes back as [`ImagePullProgress`] lines.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImagePushRequest {
    pub reference: String,
    #[serde(default)]
    pub auth: Option<AuthConfig>,
}

/// `image tag SOURCE TARGET`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImageTagRequest {
    pub source: String,
    pub target: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImageInspectRequest {
    pub reference: String,
}

/// `image inspect`, with Docker's field names (`Id`, `RepoTags`, `RootFS`, …).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageInspect {
    /// The config's digest.
    pub id: String,
    /// Every name pointing at the same content, familiar form (`busybox:latest`).
    pub repo_tags: Vec<String>,
    /// `repository@digest` of the manifest (or index) the names point at.
    pub repo_digests: Vec<String>,
    #[serde(default)]
    pub created: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub variant: String,
    pub os: String,
    /// Bytes of the layers as stored (compressed when they came compressed).
    pub size: u64,
    /// The image config's `config` section as the image has it (Env, Cmd, Entrypoint, …).
    #[serde(default)]
    pub config: serde_json::Value,
    #[serde(rename = "RootFS")]
    pub rootfs: RootFs,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RootFs {
    pub r#type: String,
    /// The diff ids, bottom layer first.
    pub layers: Vec<String>,
}

mod base64_bytes {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD.decode(s).map_err(serde::de::Error::custom)
    }
}
