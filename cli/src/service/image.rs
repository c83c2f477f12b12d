//! The image a service runs, as the client prepares it: pinned to the digest its tag points at in the registry
//! now (unless `--no-resolve-image`), so every node runs the same bytes even if the tag moves, and the
//! client's stored credentials for that registry sent along with `--with-registry-auth`. `stack deploy` uses the
//! same two steps.

use crate::client::Client;
use clap::Args;
use engine_api::DistributionInspectRequest;
use swarm::api::{familiar_image_ref, normalize_image_ref, PullOptions};

/// Flags of `service create` and `service update` about the image.
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct ImageFlags {
    /// Send registry authentication details to swarm agents
    #[arg(long = "with-registry-auth")]
    pub with_registry_auth: bool,
    /// Do not query the registry to resolve image digest and supported platforms
    #[arg(long = "no-resolve-image")]
    pub no_resolve_image: bool,
}

/// An image reference after [`pin_image`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pinned {
    pub image: String,
    /// Docker's warning when the digest could not be recorded; printed (to stderr) once the service was
    /// created or updated, as Docker prints its daemon's warnings.
    pub warning: Option<String>,
}

/// How long `service create/update` waits for the registry to name an image's digest.
const RESOLVE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(3);

/// The image pinned to its current digest in the registry: `registry/repo:tag@sha256:…`, as Docker stores it.
/// An image already pinned, or whose registry cannot be reached, is kept as given (the latter with Docker's
/// warning: each node then resolves the tag itself).
pub async fn pin_image(client: &mut Client, image: &str) -> anyhow::Result<Pinned> {
    let unchanged = |warning| Pinned { image: image.to_string(), warning };
    // A malformed reference is left for the control API to refuse with its own message.
    let Ok(name) = normalize_image_ref(image) else { return Ok(unchanged(None)) };
    if name.contains('@') {
        return Ok(unchanged(None));
    }
    let auth = crate::image::stored_auth(&name)?;
    let req = DistributionInspectRequest { reference: name.clone(), auth };
    // Bounded: where no registry or DNS server is reachable (an offline cluster) the lookup would otherwise hold
    // every `service create` for the resolver's whole timeout; the service is created unpinned, with the warning.
    match tokio::time::timeout(RESOLVE_PATIENCE, client.engine.distribution_inspect(req)).await {
        Ok(Ok(r)) => Ok(Pinned { image: pinned(&name, &r.into_inner().digest), warning: None }),
        _ => Ok(unchanged(Some(unpinned_warning(&familiar_image_ref(&name))))),
    }
}

/// `registry/repo:tag` + digest → `registry/repo:tag@digest`.
fn pinned(normalized: &str, digest: &str) -> String {
    format!("{normalized}@{digest}")
}

/// Docker's warning for an image whose digest could not be recorded.
pub fn unpinned_warning(image: &str) -> String {
    format!(
        "image {image} could not be accessed on a registry to record its digest. Each node will access {image} \
         independently, possibly leading to different nodes running different versions of the image."
    )
}

/// The client's stored credentials for `image`'s registry, as a spec's pull options (`--with-registry-auth`);
/// `None` when it holds none for that registry.
pub fn registry_auth(image: &str) -> anyhow::Result<Option<PullOptions>> {
    registry_auth_in(&crate::login::config_path(), image)
}

fn registry_auth_in(config: &std::path::Path, image: &str) -> anyhow::Result<Option<PullOptions>> {
    let Ok(name) = normalize_image_ref(image) else { return Ok(None) };
    let host = engine_api::registry_host(name.split('/').next().unwrap_or(""));
    let creds = crate::login::load_credentials(config, &host)?;
    Ok(creds.map(|a| PullOptions { registry_auth: a.encode(&host), sealed: Vec::new() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_reference_keeps_its_tag() {
        let d = format!("sha256:{}", "b".repeat(64));
        let p = pinned("localhost:5000/app:v1", &d);
        assert_eq!(p, format!("localhost:5000/app:v1@{d}"));
        assert_eq!(normalize_image_ref(&p).unwrap(), p, "the pinned form parses and stays as it is");
        assert_eq!(familiar_image_ref(&pinned("docker.io/library/busybox:1.36", &d)), format!("busybox:1.36@{d}"));
    }

    #[test]
    fn the_warning_is_dockers() {
        assert_eq!(
            unpinned_warning("busybox:latest"),
            "image busybox:latest could not be accessed on a registry to record its digest. Each node will access \
             busybox:latest independently, possibly leading to different nodes running different versions of the \
             image."
        );
    }

    #[test]
    fn registry_auth_comes_from_the_credentials_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        crate::login::store_credentials(
            &path,
            "localhost:5000",
            &engine_api::AuthConfig { username: "u".into(), password: "p".into() },
        )
        .unwrap();
        let auth = registry_auth_in(&path, "localhost:5000/app:v1").unwrap().expect("credentials for localhost:5000");
        let back = engine_api::AuthConfig::decode(&auth.registry_auth).unwrap().unwrap();
        assert_eq!((back.username.as_str(), back.password.as_str()), ("u", "p"));
        assert_eq!(registry_auth_in(&path, "other.example:5000/app").unwrap(), None);
    }
}
