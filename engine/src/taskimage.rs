//! The image a task runs: found in the node's image store, or else pulled from its registry when the task is
//! prepared (with the credentials its spec carries, `--with-registry-auth`, and its pinned digest, if any).
//! Tasks of one image on a node share one pull: the first starts it, the others wait for its outcome.
//!
//! What an image resolves to (its config, its top snapshot) is kept per manifest digest: a task then costs one
//! lookup of the name's current target instead of reading the manifest and config again. Keyed by content, the
//! cache needs no invalidation: an image removed, pulled anew or retagged changes what the name points at.

use crate::image::{ImageError, ImageService, ResolvedImage};
use crate::registry::{Credentials, Registries};
use futures::future::{BoxFuture, FutureExt, Shared};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use swarm::agent::exec::ExecError;
use swarm::api::{familiar_image_ref, normalize_image_ref, Task};

/// A pull in flight, awaited by every task that needs its image; the error is the registry's one line.
type Flight = Shared<BoxFuture<'static, Result<(), String>>>;

/// Resolves tasks' images, pulling the missing ones once per reference.
#[derive(Clone)]
pub struct TaskImages {
    images: ImageService,
    /// `None`: missing images are not pulled (the task is rejected with "No such image").
    registries: Option<Registries>,
    in_flight: Arc<Mutex<HashMap<String, Flight>>>,
    /// Manifest digest → what it resolves to on this node.
    resolved: Arc<Mutex<HashMap<String, ResolvedImage>>>,
}

/// Resolved images kept at most; past it the cache starts over (a node runs few distinct images).
const RESOLVED_MAX: usize = 256;

fn image_err(e: ImageError) -> ExecError {
    match e {
        ImageError::NotFound(r) => ExecError::ImageNotFound(r),
        ImageError::Reference(r) => ExecError::InvalidSpec(r.to_string()),
        other => ExecError::Runtime(other.to_string()),
    }
}

/// `name:tag@digest` → (`name:tag`, `digest`); `None` without both a tag and a digest.
fn split_pinned(normalized: &str) -> Option<(&str, &str)> {
    let (named, digest) = normalized.split_once('@')?;
    let last_slash = named.rfind('/').map(|i| i + 1).unwrap_or(0);
    named[last_slash..].contains(':').then_some((named, digest))
}

impl TaskImages {
    pub fn new(images: ImageService, registries: Option<Registries>) -> Self {
        TaskImages { images, registries, in_flight: Arc::default(), resolved: Arc::default() }
    }

    /// The image of `task`, pulled first if this node does not have it.
    pub async fn resolve(&self, task: &Task) -> Result<ResolvedImage, ExecError> {
        let reference = &task.spec.container.image;
        match self.local(reference).await {
            Err(ImageError::NotFound(_)) if self.registries.is_some() => {}
            other => return other.map_err(image_err),
        }
        let creds = match &task.spec.container.pull_options {
            Some(p) => engine_api::AuthConfig::decode(&p.registry_auth)
                .map_err(|e| ExecError::InvalidSpec(e.to_string()))?
                .map(|a| Credentials { username: a.username, password: a.password }),
            None => None,
        };
        let name = normalize_image_ref(reference).map_err(|e| ExecError::InvalidSpec(e.to_string()))?;
        tracing::info!(task.id = %task.id, image = %name, "image not on this node: pulling it");
        self.pull_once(&name, creds).await.map_err(ExecError::Runtime)?;
        self.local(reference).await.map_err(image_err)
    }

    /// The image as stored here. A pinned `name:tag@digest` is also found as `name:tag` when that points at
    /// the pinned digest (an image loaded or pulled by tag before the service pinned it).
    async fn local(&self, reference: &str) -> Result<ResolvedImage, ImageError> {
        let name = normalize_image_ref(reference)?;
        match self.cached(&name).await {
            Err(ImageError::NotFound(n)) => {
                let Some((tagged, digest)) = split_pinned(&name) else { return Err(ImageError::NotFound(n)) };
                match self.images.image_target(tagged).await? {
                    Some(t) if t.digest == digest => self.cached(tagged).await,
                    _ => Err(ImageError::NotFound(n)),
                }
            }
            other => other,
        }
    }

    /// Image record `name` (normalized) resolved: from the cache when its target was resolved before.
    async fn cached(&self, name: &str) -> Result<ResolvedImage, ImageError> {
        let target =
            self.images.image_target(name).await?.ok_or_else(|| ImageError::NotFound(familiar_image_ref(name)))?;
        if let Some(r) = self.resolved.lock().unwrap_or_else(|p| p.into_inner()).get(&target.digest) {
            return Ok(r.clone());
        }
        let r = self.images.resolve(name).await?;
        // Kept only if the name still points where it did: the resolve read whatever it points at now.
        if self.images.image_target(name).await?.is_some_and(|t| t.digest == target.digest) {
            let mut cache = self.resolved.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() >= RESOLVED_MAX {
                cache.clear();
            }
            cache.insert(target.digest, r.clone());
        }
        Ok(r)
    }

    /// Pulls `name`, or joins the pull of it already under way. The pull runs on its own task, so a task that
    /// stops waiting (shut down meanwhile) does not cut it short for the others.
    async fn pull_once(&self, name: &str, creds: Option<Credentials>) -> Result<(), String> {
        let Some(registries) = self.registries.clone() else {
            return Err(ExecError::ImageNotFound(familiar_image_ref(name)).to_string());
        };
        let flight = {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            match in_flight.get(name) {
                Some(f) => f.clone(),
                None => {
                    let (images, map, key) = (self.images.clone(), self.in_flight.clone(), name.to_string());
                    let handle = tokio::spawn(async move {
                        // Nobody reads the progress of a task's pull: a closed channel makes every line a no-op.
                        let (tx, _) = tokio::sync::mpsc::channel(1);
                        let r = registries.pull(&images, &key, None, creds, tx).await;
                        map.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
                        match r {
                            Ok(o) => {
                                tracing::info!(image = %key, digest = %o.digest, "pulled for a task");
                                Ok(())
                            }
                            Err(e) => {
                                tracing::warn!(image = %key, error = %e, "pull for a task failed");
                                Err(e.to_string())
                            }
                        }
                    });
                    let f: Flight =
                        async move { handle.await.unwrap_or_else(|e| Err(format!("pulling the image: {e}"))) }
                            .boxed()
                            .shared();
                    in_flight.insert(name.to_string(), f.clone());
                    f
                }
            }
        };
        flight.await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_references_split_into_tag_and_digest() {
        let d = format!("sha256:{}", "a".repeat(64));
        let pinned = format!("localhost:5000/app:v1@{d}");
        assert_eq!(split_pinned(&pinned), Some(("localhost:5000/app:v1", d.as_str())));
        assert_eq!(split_pinned(&format!("localhost:5000/app@{d}")), None, "a port is not a tag");
        assert_eq!(split_pinned("docker.io/library/busybox:latest"), None);
    }
}
