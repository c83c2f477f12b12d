//! The managers' data key: the 256-bit key that seals secrets before they are proposed (ChaCha20-Poly1305), so
//! the Raft log, snapshots hold only ciphertext. `swarm init` creates it; a manager joining
//! (or a worker promoted) receives it from the leader over its TLS-protected certificate request; each manager
//! keeps it in its state dir (`data.key`, mode 0600) and the running store holds it in memory.
//!
//! With autolock (`swarm init --autolock`), the unlock key ([`UnlockKey`], Docker's `SWMKEY-1-…` key-encryption
//! key) wraps `data.key` (file format 2) so that a restarted manager cannot read it until `swarm unlock`.

use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use std::path::Path;

/// The first byte of every sealed value: the sealing format.
const SEALED_FORMAT: u8 = 1;
/// The data key file's format: the key in clear.
const FILE_FORMAT: u32 = 1;
/// The data key file's format when the swarm is locked: the key's text sealed with the unlock key.
const FILE_FORMAT_WRAPPED: u32 = 2;
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
    /// The file is wrapped with an unlock key and none (or another one) was given.
    #[error("swarm could not be unlocked: invalid key provided")]
    Locked,
    /// An unlock key's text is not `SWMKEY-1-…`.
    #[error("invalid unlock key: expected SWMKEY-1-<key>, as `shoal swarm unlock-key` prints it")]
    MalformedUnlockKey,
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

    /// A keyed digest of `name` (HMAC-SHA256 under a key derived from this one): a stable, opaque stand-in
    /// for a name that must not rest in clear but is still looked up by equality.
    pub fn tag(&self, name: &[u8]) -> [u8; 32] {
        let derived =
            ring::digest::digest(&ring::digest::SHA256, &[b"shoal-name-tag-1:".as_slice(), &self.raw].concat());
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, derived.as_ref());
        ring::hmac::sign(&key, name).as_ref().try_into().expect("HMAC-SHA256 is 32 bytes")
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
        self.save_wrapped(path, None)
    }

    /// Writes the key file, wrapped with `unlock` when the swarm is locked (format 2: the key's text sealed with
    /// the unlock key, base64), in clear otherwise.
    pub fn save_wrapped(&self, path: &Path, unlock: Option<&UnlockKey>) -> Result<(), DataKeyError> {
        let text = match unlock {
            None => format!("{FILE_FORMAT}\n{}\n", self.to_text()),
            Some(k) => format!(
                "{FILE_FORMAT_WRAPPED}\n{}\n",
                base64::engine::general_purpose::STANDARD.encode(k.0.seal(self.to_text().as_bytes()))
            ),
        };
        crate::fsutil::write_atomic(path, text.as_bytes(), 0o600)
            .map_err(|e| DataKeyError::File { path: path.display().to_string(), reason: e.to_string() })
    }

    /// Whether the key file at `path` is wrapped with an unlock key (the manager starts locked).
    pub fn is_wrapped(path: &Path) -> bool {
        std::fs::read_to_string(path).is_ok_and(|t| t.lines().next().map(str::trim) == Some("2"))
    }

    /// Reads the key file `save` wrote; `None` if there is none. A wrapped one is [`DataKeyError::Locked`].
    pub fn load(path: &Path) -> Result<Option<Self>, DataKeyError> {
        Self::load_wrapped(path, None)
    }

    /// Reads the key file, unwrapping it with `unlock` if it is wrapped: a wrong or missing key is
    /// [`DataKeyError::Locked`].
    pub fn load_wrapped(path: &Path, unlock: Option<&UnlockKey>) -> Result<Option<Self>, DataKeyError> {
        let file_err = |reason: String| DataKeyError::File { path: path.display().to_string(), reason };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(file_err(e.to_string())),
        };
        let mut lines = text.lines();
        let wrapped = match lines.next().map(str::trim) {
            Some(v) if v == FILE_FORMAT.to_string() => false,
            Some(v) if v == FILE_FORMAT_WRAPPED.to_string() => true,
            other => return Err(file_err(format!("unknown format {:?}", other.unwrap_or("")))),
        };
        let key = lines.next().ok_or_else(|| file_err("no key".into()))?;
        if !wrapped {
            return DataKey::from_text(key).map(Some).map_err(|e| file_err(e.to_string()));
        }
        let sealed =
            base64::engine::general_purpose::STANDARD.decode(key.trim()).map_err(|e| file_err(e.to_string()))?;
        let plain = unlock.ok_or(DataKeyError::Locked)?.0.open(&sealed).map_err(|_| DataKeyError::Locked)?;
        let text = String::from_utf8(plain).map_err(|_| file_err("the unwrapped key is not text".into()))?;
        DataKey::from_text(&text).map(Some).map_err(|e| file_err(e.to_string()))
    }
}

/// The prefix of an unlock key's text, as Docker's.
const UNLOCK_PREFIX: &str = "SWMKEY-1-";

/// A locked swarm's unlock key (Docker's manager key-encryption key): it wraps each manager's data key and TLS
/// key on disk. The cluster object holds it, sealed with the data key, so every manager learns it and a rotation
/// reaches them all; `swarm unlock-key` is the only call that returns it.
#[derive(Clone)]
pub struct UnlockKey(DataKey);

impl std::fmt::Debug for UnlockKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UnlockKey(..)")
    }
}

impl PartialEq for UnlockKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.raw == other.0.raw
    }
}

impl UnlockKey {
    pub fn generate() -> Self {
        UnlockKey(DataKey::generate())
    }

    /// `SWMKEY-1-<base64>`, what the user keeps.
    pub fn to_text(&self) -> String {
        format!("{UNLOCK_PREFIX}{}", base64::engine::general_purpose::STANDARD_NO_PAD.encode(self.0.raw))
    }

    pub fn from_text(text: &str) -> Result<Self, DataKeyError> {
        let b64 = text.trim().strip_prefix(UNLOCK_PREFIX).ok_or(DataKeyError::MalformedUnlockKey)?;
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(b64.trim_end_matches('='))
            .map_err(|_| DataKeyError::MalformedUnlockKey)?;
        let raw: [u8; 32] = bytes.try_into().map_err(|_| DataKeyError::MalformedUnlockKey)?;
        Ok(UnlockKey(DataKey { raw }))
    }

    /// Seals `plain` (a key file's content) with this key.
    pub fn seal(&self, plain: &[u8]) -> Vec<u8> {
        self.0.seal(plain)
    }

    /// Opens what [`UnlockKey::seal`] sealed; another key is [`DataKeyError::Locked`].
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, DataKeyError> {
        self.0.open(sealed).map_err(|_| DataKeyError::Locked)
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

    #[test]
    fn a_wrapped_key_file_opens_only_with_its_unlock_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.key");
        let (k, unlock) = (DataKey::generate(), UnlockKey::generate());
        k.save_wrapped(&path, Some(&unlock)).unwrap();
        assert!(DataKey::is_wrapped(&path));
        let on_disk = std::fs::read_to_string(&path).unwrap();
        assert!(!on_disk.contains(&k.to_text()[11..]), "the data key in clear: {on_disk}");
        assert_eq!(DataKey::load(&path).unwrap_err(), DataKeyError::Locked);
        assert_eq!(DataKey::load_wrapped(&path, Some(&UnlockKey::generate())).unwrap_err(), DataKeyError::Locked);
        let back = DataKey::load_wrapped(&path, Some(&unlock)).unwrap().unwrap();
        assert_eq!(back.open(&k.seal(b"x")).unwrap(), b"x");
        k.save_wrapped(&path, None).unwrap();
        assert!(!DataKey::is_wrapped(&path));
        assert!(DataKey::load(&path).unwrap().is_some());

        let text = unlock.to_text();
        assert!(text.starts_with("SWMKEY-1-"), "{text}");
        assert_eq!(UnlockKey::from_text(&format!(" {text}\n")).unwrap(), unlock);
        for bad in ["", "SWMKEY-1-", "SWMKEY-1-abc", "SWMTKN-1-x", &text[1..]] {
            assert_eq!(UnlockKey::from_text(bad).unwrap_err(), DataKeyError::MalformedUnlockKey, "{bad:?}");
        }
    }
}
