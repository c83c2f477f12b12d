//! Files a node writes under its state dir: every write replaces the whole file atomically, so a crash leaves
//! either the old content or the new, never a mix.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Writes `path` through `path.tmp`: created fresh with `mode`, synced, renamed over the target, and the directory
/// synced so the rename itself survives a crash. Creates the parent directory when missing.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    // A leftover from a crash may have other permissions; start from nothing so `mode` applies.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let written = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_the_file_with_the_given_mode_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/key.pem");
        write_atomic(&path, b"one", 0o600).unwrap();
        // A stale temporary with a wider mode must not leak its mode into the new file.
        std::fs::write(dir.path().join("sub/key.pem.tmp"), b"stale").unwrap();
        std::fs::set_permissions(dir.path().join("sub/key.pem.tmp"), std::fs::Permissions::from_mode(0o666)).unwrap();
        write_atomic(&path, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(!dir.path().join("sub/key.pem.tmp").exists(), "the temporary file is left behind");
    }
}
