//! Autolock on a manager: its key files (`data.key`, `certificates/swarm-node.key`) wrapped with the swarm's
//! unlock key while the cluster says `auto_lock_managers`, in clear otherwise. The cluster object holds the unlock
//! key (sealed with the data key), so each manager follows it from its own store: turning autolock on or off and
//! `unlock-key --rotate` re-write every manager's files as soon as the change is applied there. A manager down
//! during a rotation still has its files wrapped with the old key and is unlocked with it (as Docker's).

use crate::api::Cluster;
use crate::ca::{CaError, NodeIdentity};
use crate::manager::datakey::{DataKey, DataKeyError, UnlockKey};
use crate::manager::store::Store;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(transparent)]
    DataKey(#[from] DataKeyError),
    #[error(transparent)]
    Ca(#[from] CaError),
}

/// A manager's key files and the unlock key they are wrapped with now (None: in clear). Every write of either
/// file goes through here, so a certificate renewal and a re-wrap never interleave.
#[derive(Clone)]
pub struct KeyFiles {
    data_key: PathBuf,
    certs: PathBuf,
    current: Arc<Mutex<Option<UnlockKey>>>,
}

impl KeyFiles {
    pub fn new(data_key: PathBuf, certs: PathBuf) -> Self {
        KeyFiles { data_key, certs, current: Default::default() }
    }

    /// Whether the files on disk are wrapped: a manager restarted in that state is locked.
    pub fn wrapped_on_disk(&self) -> bool {
        DataKey::is_wrapped(&self.data_key) || NodeIdentity::key_is_wrapped(&self.certs)
    }

    /// The key the files are wrapped with.
    pub fn current(&self) -> Option<UnlockKey> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<UnlockKey>> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks `key` against the files (a wrong key is [`DataKeyError::Locked`] / [`CaError::Locked`], nothing
    /// changed) and remembers it as the key they are wrapped with.
    pub fn unlock(&self, key: UnlockKey) -> Result<NodeIdentity, LockError> {
        let mut cur = self.lock();
        let identity = NodeIdentity::load_wrapped(&self.certs, Some(&key))?;
        DataKey::load_wrapped(&self.data_key, Some(&key))?;
        *cur = Some(key);
        Ok(identity)
    }

    /// Forgets the key (the node left the swarm or was demoted).
    pub fn clear(&self) {
        *self.lock() = None;
    }

    pub fn load_identity(&self) -> Result<NodeIdentity, CaError> {
        NodeIdentity::load_wrapped(&self.certs, self.lock().as_ref())
    }

    pub fn save_identity(&self, identity: &NodeIdentity) -> Result<(), CaError> {
        identity.save_wrapped(&self.certs, self.lock().as_ref())
    }

    pub fn load_data_key(&self) -> Result<Option<DataKey>, DataKeyError> {
        DataKey::load_wrapped(&self.data_key, self.lock().as_ref())
    }

    pub fn save_data_key(&self, key: &DataKey) -> Result<(), DataKeyError> {
        key.save_wrapped(&self.data_key, self.lock().as_ref())
    }

    /// Re-writes both files wrapped with `want` (None: in clear), unless they already are. The certificate file
    /// is written before the data key, so a crash in between leaves files that one of the two keys opens;
    /// [`KeyFiles::unlock`] then needs the key the data key file still has.
    pub fn rewrap(&self, want: Option<UnlockKey>) -> Result<bool, LockError> {
        let mut cur = self.lock();
        if *cur == want {
            return Ok(false);
        }
        let identity = NodeIdentity::load_wrapped(&self.certs, cur.as_ref())?;
        let data_key = DataKey::load_wrapped(&self.data_key, cur.as_ref())?;
        identity.save_wrapped(&self.certs, want.as_ref())?;
        if let Some(k) = data_key {
            k.save_wrapped(&self.data_key, want.as_ref())?;
        }
        *cur = want;
        Ok(true)
    }
}

/// The unlock key `cluster` asks managers to wrap their files with: None without autolock. `data_key` opens it.
pub fn wanted_key(cluster: &Cluster, data_key: Option<&DataKey>) -> Result<Option<UnlockKey>, DataKeyError> {
    if !cluster.spec.encryption_config.auto_lock_managers || cluster.unlock_key.is_empty() {
        return Ok(None);
    }
    let text = data_key.ok_or(DataKeyError::Open)?.open(&cluster.unlock_key)?;
    UnlockKey::from_text(&String::from_utf8_lossy(&text)).map(Some)
}

/// The cluster's unlock key as `swarm unlock-key` prints it (empty without autolock).
pub fn unlock_key_text(store: &Store) -> Result<String, DataKeyError> {
    let Some(cluster) = store.view(|v| v.cluster().cloned()) else { return Ok(String::new()) };
    Ok(wanted_key(&cluster, store.data_key().as_ref())?.map(|k| k.to_text()).unwrap_or_default())
}

/// A new unlock key, sealed for the cluster object.
pub fn new_sealed_key(data_key: &DataKey) -> (UnlockKey, Vec<u8>) {
    let key = UnlockKey::generate();
    let sealed = data_key.seal(key.to_text().as_bytes());
    (key, sealed)
}

/// Keeps `files` wrapped as the cluster in `store` says, until `shutdown`.
pub async fn follow_unlock_key(files: KeyFiles, store: Store, shutdown: CancellationToken) {
    store
        .follow_cluster(&shutdown, |cluster, store| match wanted_key(cluster, store.data_key().as_ref()) {
            Ok(want) => match files.rewrap(want.clone()) {
                Ok(true) => tracing::info!(locked = want.is_some(), "re-wrote this manager's key files"),
                Ok(false) => {}
                Err(e) => tracing::error!(error = %e, "re-writing this manager's key files for autolock"),
            },
            Err(e) => tracing::error!(error = %e, "the cluster's unlock key cannot be opened on this manager"),
        })
        .await
}
