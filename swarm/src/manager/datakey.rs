//! The managers' data key: the 256-bit key that seals secrets before they are proposed (ChaCha20-Poly1305), so
//! the Raft log, snapshots and `state.redb` hold only ciphertext. `swarm init` creates it; a manager joining
//! (or a worker promoted) receives it from the leader over its TLS-protected certificate request; each manager
//! keeps it in its state dir (`data.key`, mode 0600) and the running store holds it in memory.

use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use std::path::Path;

/// The first byte of every sealed value: the sealing format.
const SEALED_FORMAT: u8 = 1;
/// The data key file's format.
const FILE_FORMAT: u32 = 1;
/// The text form's prefix (what travels in a certificate response and rests in `data.key`).
const TEXT_PREFIX: &str = "SHOALDEK-1-";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataKeyError {
    #[error("the data key is malformed")]
    Malformed,
    /// Wrong key, or the sealed value was damaged.
    #[error("sealed data cannot be opened with this manager's data key (damaged, or sealed with another key)")]
    Open,
    #[error("data key file {path}: {reason}")]
    File { path: String, reason: String },
}

/// The managers' shared data key.
#[derive(Clone)]
pub struct DataKey {
    raw: [u8; 32],
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl DataKey {
    pub fn generate() -> Self {
        let mut raw = [0u8; 32];
        SystemRandom::new().fill(&mut raw).expect("the system's random source failed");
        DataKey { raw }
    }

    /// The key as text (`SHOALDEK-1-<base64>`), to hand to a joining manager.
    pub fn to_text(&self) -> String {
        format!("{TEXT_PREFIX}{}", base64::engine::general_purpose::STANDARD.encode(self.raw))
    }

    pub fn from_text(text: &str) -> Result<Self, DataKeyError> {
        let b64 = text.trim().strip_prefix(TEXT_PREFIX).ok_or(DataKeyError::Malformed)?;
        let bytes = base64::engine::general_purpose::STANDARD.decode(b64).map_err(|_| DataKeyError::Malformed)?;
        let raw: [u8; 32] = bytes.try_into().map_err(|_| DataKeyError::Malformed)?;
        Ok(DataKey { raw })
    }

    fn aead(&self) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &self.raw).expect("a 32-byte key"))
    }

    /// Seals `plain` under a fresh random nonce: format byte, nonce, ciphertext and tag.
    pub fn seal(&self, plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).expect("the system's random source failed");
        let mut buf = plain.to_vec();
        self.aead()
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from([SEALED_FORMAT]), &mut buf)
            .expect("sealing cannot fail for inputs under 256 GiB");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + buf.len());
        out.push(SEALED_FORMAT);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        out
    }

    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, DataKeyError> {
        if sealed.len() < 1 + NONCE_LEN || sealed[0] != SEALED_FORMAT {
            return Err(DataKeyError::Open);
        }
        let nonce: [u8; NONCE_LEN] = sealed[1..1 + NONCE_LEN].try_into().expect("length checked");
        let mut buf = sealed[1 + NONCE_LEN..].to_vec();
        let plain = self
            .aead()
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from([SEALED_FORMAT]), &mut buf)
            .map_err(|_| DataKeyError::Open)?;
        Ok(plain.to_vec())
    }

    /// Writes the key file (format line, then the key's text), readable by root only.
    pub fn save(&self, path: &Path) -> Result<(), DataKeyError> {
        let text = format!("{FILE_FORMAT}\n{}\n", self.to_text());
        crate::fsutil::write_atomic(path, text.as_bytes(), 0o600)
            .map_err(|e| DataKeyError::File { path: path.display().to_string(), reason: e.to_string() })
    }

    /// Reads the key file `save` wrote; `None` if there is none.
    pub fn load(path: &Path) -> Result<Option<Self>, DataKeyError> {
        let file_err = |reason: String| DataKeyError::File { path: path.display().to_string(), reason };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(file_err(e.to_string())),
        };
        let mut lines = text.lines();
        match lines.next().map(str::trim) {
            Some(v) if v == FILE_FORMAT.to_string() => {}
            other => return Err(file_err(format!("unknown format {:?}", other.unwrap_or("")))),
        }
        let key = lines.next().ok_or_else(|| file_err("no key".into()))?;
        DataKey::from_text(key).map(Some).map_err(|e| file_err(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_data_opens_only_with_its_key_and_intact() {
        let k = DataKey::generate();
        let sealed = k.seal(b"hunter2");
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"), "ciphertext holds the plaintext");
        assert_ne!(sealed, k.seal(b"hunter2"), "a fresh nonce each time");
        assert_eq!(k.open(&sealed).unwrap(), b"hunter2");
        assert_eq!(DataKey::generate().open(&sealed), Err(DataKeyError::Open));
        let mut damaged = sealed.clone();
        *damaged.last_mut().unwrap() ^= 1;
        assert_eq!(k.open(&damaged), Err(DataKeyError::Open));
        assert_eq!(k.open(&sealed[..5]), Err(DataKeyError::Open));
    }

    #[test]
    fn the_key_survives_its_text_and_file_forms() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.key");
        assert!(DataKey::load(&path).unwrap().is_none());
        let k = DataKey::generate();
        k.save(&path).unwrap();
        let back = DataKey::load(&path).unwrap().unwrap();
        assert_eq!(back.open(&k.seal(b"x")).unwrap(), b"x");
        assert!(!format!("{k:?}").contains(&k.to_text()[11..]));
        assert_eq!(DataKey::from_text("SHOALDEK-1-abc").unwrap_err(), DataKeyError::Malformed);
        std::fs::write(&path, "9\nx\n").unwrap();
        assert!(DataKey::load(&path).unwrap_err().to_string().contains("unknown format"));
    }
}
