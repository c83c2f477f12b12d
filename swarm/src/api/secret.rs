//! Secrets and configs: named blobs a service mounts as files in its tasks (`--secret`, `--config`), as Swarm's.
//!
//! A secret's data never travels or rests in clear on a manager: the control API seals it with the managers'
//! data key (`manager/datakey.rs`) before it is proposed, so the Raft log, snapshots hold only
//! `Secret::sealed`; the dispatcher opens it only to send it to a node whose task uses it. A config's data is
//! not secret and is stored as given. Both are immutable but for their labels; `secret rotate` makes a new
//! object (a new version of the same family) rather than changing one.

use super::{Annotations, Meta};
use serde::{Deserialize, Serialize};

/// Docker's limit on a secret's data (500 KiB).
pub const MAX_SECRET_SIZE: usize = 500 * 1024;
/// Docker's limit on a config's data (1000 KiB).
pub const MAX_CONFIG_SIZE: usize = 1000 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Secret {
    pub id: String,
    #[serde(default)]
    pub meta: Meta,
    /// Name and labels; `data` is always empty once stored (the data is in `sealed`).
    pub spec: SecretSpec,
    /// The data sealed with the managers' data key (nonce + ciphertext + tag). Never returned by the API.
    #[serde(default, with = "base64_bytes", skip_serializing_if = "Vec::is_empty")]
    pub sealed: Vec<u8>,
    /// `secret rotate`: the name every version shares and this object's version (1 for the one `secret create`
    /// made). Versions after the first are named `<family>.v<N>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<SecretVersion>,
}

/// Where a secret stands in its family of rotated versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretVersion {
    /// The name of the first version, which `secret rotate` is given.
    pub family: String,
    pub version: u64,
}

impl Secret {
    /// Its version number (1 unless rotated).
    pub fn version(&self) -> u64 {
        self.rotation.as_ref().map_or(1, |r| r.version)
    }

    /// The name its rotation family goes by (its own name unless rotated).
    pub fn family(&self) -> &str {
        self.rotation.as_ref().map_or(&self.spec.annotations.name, |r| &r.family)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretSpec {
    #[serde(flatten)]
    pub annotations: Annotations,
    /// The data in clear: only in `CreateSecretRequest`; empty in every stored or returned secret.
    #[serde(default, with = "base64_bytes", skip_serializing_if = "Vec::is_empty")]
    pub data: Vec<u8>,
    /// `--template-driver`: the data is a template each task's node renders for that task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub templating: Option<Driver>,
}

/// Docker's `Driver` (name and options), here only as a secret's or config's template driver.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Driver {
    pub name: String,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub options: std::collections::BTreeMap<String, String>,
}

/// The only template driver Docker has: Go's `text/template`.
pub const TEMPLATE_DRIVER_GOLANG: &str = "golang";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub id: String,
    #[serde(default)]
    pub meta: Meta,
    pub spec: ConfigSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigSpec {
    #[serde(flatten)]
    pub annotations: Annotations,
    #[serde(default, with = "base64_bytes")]
    pub data: Vec<u8>,
    /// `--template-driver`, as for secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub templating: Option<Driver>,
}

/// A secret or config as a node receives it: its id and data (in clear, over the mTLS session), kept in the
/// agent's memory and by the executor for the tasks that mount it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilePayload {
    pub id: String,
    pub name: String,
    #[serde(default, with = "base64_bytes")]
    pub data: Vec<u8>,
    /// Set when `data` is a template the node renders for each task that mounts it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub templating: Option<Driver>,
}

impl std::fmt::Debug for FilePayload {
    // The data stays out of logs and panics.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilePayload")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("templating", &self.templating)
            .finish_non_exhaustive()
    }
}

/// The secrets and configs a node's tasks use, as the executor is handed them (the whole set each time it
/// changes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskFiles {
    pub secrets: std::collections::BTreeMap<String, FilePayload>,
    pub configs: std::collections::BTreeMap<String, FilePayload>,
}

/// Why a secret or config name is refused: Docker's rule.
pub fn check_file_object_name(name: &str) -> Result<(), String> {
    let ok_edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && ok_edge(name.chars().next())
        && ok_edge(name.chars().last());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid name {name:?}: only 64 [a-zA-Z0-9-_.] characters allowed, and the start and end character must \
             be [a-zA-Z0-9]"
        ))
    }
}

/// Bytes as base64 text in JSON (the wire codec and the store's are JSON).
pub mod base64_bytes {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD.decode(s.as_bytes()).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_docker_s_rule() {
        for good in ["a", "db_password", "x.y-z", "A1"] {
            assert!(check_file_object_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "a-", ".a", "a b", "a/b", &"a".repeat(65)] {
            let e = check_file_object_name(bad).unwrap_err();
            assert!(e.contains("only 64 [a-zA-Z0-9-_.] characters allowed"), "{bad}: {e}");
        }
    }

    #[test]
    fn payloads_keep_their_data_out_of_debug_output() {
        let p = FilePayload { id: "s1".into(), name: "pw".into(), data: b"hunter2".to_vec(), templating: None };
        assert!(!format!("{p:?}").contains("hunter2"));
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<FilePayload>(&json).unwrap(), p);
    }
}
