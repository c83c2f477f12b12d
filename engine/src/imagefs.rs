//! Reading files of an image's root filesystem straight from its snapshot layers, without mounting it and
//! without trusting it.
//!
//! The layers are directories on the host and the image is untrusted: a symlink in it must mean what it means
//! inside the container (relative to the image root), never a host path, and a FIFO or device must never be
//! opened. So paths are resolved component by component over the layers top-down, as overlayfs merges them
//! (whiteouts delete, opaque directories hide what is below, a non-directory hides the lower layers' subtree),
//! symlinks are followed within the image root (`..` stops at the root, as in a chroot), and only regular files
//! up to a size cap are read. Everything here blocks: call it from `spawn_blocking`.

use std::ffi::OsString;
use std::fs::Metadata;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

/// The most bytes read from one file of an image (/etc/passwd, /etc/group).
pub const MAX_FILE_SIZE: u64 = 1 << 20;
/// Linux's limit on symlinks followed in one lookup.
const MAX_SYMLINKS: usize = 40;
/// How deep a volume copy descends into an image directory.
const MAX_COPY_DEPTH: usize = 64;

/// Reading a path of an image failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageFsError {
    /// Resolving the path followed more symlinks than Linux would.
    #[error("{0} in the image: too many levels of symbolic links")]
    SymlinkLoop(String),
    /// The path names a directory, FIFO, device or socket where a regular file was needed.
    #[error("{0} in the image is not a regular file")]
    NotRegular(String),
    /// The file is larger than the cap.
    #[error("{path} in the image is larger than {limit} bytes")]
    TooLarge { path: String, limit: u64 },
    /// The layer directories could not be read.
    #[error("reading {path} in the image: {source}")]
    Io { path: String, source: std::io::Error },
}

/// An image's root filesystem as a stack of layer directories.
#[derive(Debug, Clone, Default)]
pub struct ImageRoot {
    /// Top-most first, as overlayfs lists `lowerdir`.
    layers: Vec<PathBuf>,
}

fn is_whiteout(md: &Metadata) -> bool {
    md.file_type().is_char_device() && md.rdev() == 0
}

fn is_opaque(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else { return false };
    let mut v = [0u8; 2];
    // SAFETY: c is NUL-terminated, v is a valid buffer of v.len() bytes; lgetxattr does not follow symlinks.
    let n = unsafe {
        libc::lgetxattr(c.as_ptr(), c"trusted.overlay.opaque".as_ptr(), v.as_mut_ptr() as *mut libc::c_void, v.len())
    };
    n == 1 && v[0] == b'y'
}

impl ImageRoot {
    /// The image made of `layers`, top-most first.
    pub fn new(layers: Vec<PathBuf>) -> Self {
        ImageRoot { layers }
    }

    /// The layers of a snapshot's mounts: a bind mount's source, or an overlay's upperdir then lowerdirs.
    pub fn from_mounts(mounts: &[containerd_client::types::Mount]) -> Self {
        let mut layers = Vec::new();
        for m in mounts {
            if m.r#type == "bind" {
                layers.push(PathBuf::from(&m.source));
                continue;
            }
            let opt = |k: &str| m.options.iter().find_map(|o| o.strip_prefix(k).map(str::to_string));
            if let Some(u) = opt("upperdir=") {
                layers.push(PathBuf::from(u));
            }
            if let Some(l) = opt("lowerdir=") {
                layers.extend(l.split(':').map(PathBuf::from));
            }
        }
        ImageRoot { layers }
    }

    fn io(path: &str) -> impl FnOnce(std::io::Error) -> ImageFsError + '_ {
        move |source| ImageFsError::Io { path: path.to_string(), source }
    }

    /// The top-most entry for `comps` (already free of symlinks up to the last component) in the merged view:
    /// its host path and lstat, or None when it does not exist or is whited out.
    fn lookup(&self, comps: &[OsString], shown: &str) -> Result<Option<(PathBuf, Metadata)>, ImageFsError> {
        if comps.is_empty() {
            return Ok(self.layers.first().and_then(|l| Some((l.clone(), std::fs::symlink_metadata(l).ok()?))));
        }
        'layers: for layer in &self.layers {
            let mut p = layer.clone();
            let mut opaque = false;
            for (i, c) in comps.iter().enumerate() {
                p.push(c);
                let md = match std::fs::symlink_metadata(&p) {
                    Ok(md) => md,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        if opaque {
                            return Ok(None);
                        }
                        continue 'layers;
                    }
                    Err(e) => return Err(Self::io(shown)(e)),
                };
                if is_whiteout(&md) {
                    return Ok(None);
                }
                if i + 1 == comps.len() {
                    return Ok(Some((p, md)));
                }
                // Never lstat through a non-directory: a symlink there would be followed on the host. It also
                // hides whatever the lower layers hold below it, as in overlayfs.
                if !md.is_dir() {
                    return Ok(None);
                }
                opaque |= is_opaque(&p);
            }
        }
        Ok(None)
    }

    /// Resolves `path` inside the image, following symlinks relative to the image root. Returns the host path
    /// of the final entry (never a symlink) and its lstat, or None if it does not exist.
    fn resolve(&self, path: &str) -> Result<Option<(PathBuf, Metadata)>, ImageFsError> {
        let push_all = |todo: &mut Vec<OsString>, p: &Path| {
            let parts: Vec<OsString> = p
                .components()
                .filter_map(|c| match c {
                    Component::Normal(n) => Some(n.to_os_string()),
                    Component::ParentDir => Some(OsString::from("..")),
                    _ => None,
                })
                .collect();
            todo.extend(parts.into_iter().rev());
        };
        let mut todo = Vec::new();
        push_all(&mut todo, Path::new(path));
        let mut cur: Vec<OsString> = Vec::new();
        let mut links = 0;
        while let Some(c) = todo.pop() {
            if c == ".." {
                // `cur` is already free of symlinks, so `..` is lexical; at the root it stays there.
                cur.pop();
                continue;
            }
            cur.push(c);
            let Some((host, md)) = self.lookup(&cur, path)? else { return Ok(None) };
            if md.file_type().is_symlink() {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(ImageFsError::SymlinkLoop(path.to_string()));
                }
                let target = std::fs::read_link(&host).map_err(Self::io(path))?;
                cur.pop();
                if target.is_absolute() {
                    cur.clear();
                }
                push_all(&mut todo, &target);
                continue;
            }
            if todo.is_empty() {
                return Ok(Some((host, md)));
            }
            if !md.is_dir() {
                return Ok(None);
            }
        }
        self.lookup(&cur, path)
    }

    /// Reads the regular file at `path` in the image, at most `limit` bytes; None if it does not exist.
    pub fn read_file(&self, path: &str, limit: u64) -> Result<Option<Vec<u8>>, ImageFsError> {
        let Some((host, md)) = self.resolve(path)? else { return Ok(None) };
        if !md.is_file() {
            return Err(ImageFsError::NotRegular(path.to_string()));
        }
        if md.len() > limit {
            return Err(ImageFsError::TooLarge { path: path.to_string(), limit });
        }
        // O_NOFOLLOW and O_NONBLOCK: should the entry change under us, a symlink fails to open and a FIFO does
        // not block the open; fstat then refuses anything but a regular file.
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&host)
            .map_err(Self::io(path))?;
        if !f.metadata().map_err(Self::io(path))?.is_file() {
            return Err(ImageFsError::NotRegular(path.to_string()));
        }
        let mut out = Vec::new();
        f.take(limit + 1).read_to_end(&mut out).map_err(Self::io(path))?;
        if out.len() as u64 > limit {
            return Err(ImageFsError::TooLarge { path: path.to_string(), limit });
        }
        Ok(Some(out))
    }

    /// Reads a text file as [`read_file`](Self::read_file) does with [`MAX_FILE_SIZE`] (invalid UTF-8 replaced).
    pub fn read_text(&self, path: &str) -> Result<Option<String>, ImageFsError> {
        Ok(self.read_file(path, MAX_FILE_SIZE)?.map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    /// The names in the merged directory `comps` (resolved, free of symlinks), each with its top-most entry.
    fn list_dir(&self, comps: &[OsString], shown: &str) -> Result<Vec<(OsString, PathBuf, Metadata)>, ImageFsError> {
        let mut names = std::collections::BTreeSet::new();
        'layers: for layer in &self.layers {
            let mut p = layer.clone();
            for c in comps {
                p.push(c);
                match std::fs::symlink_metadata(&p) {
                    Ok(md) if md.is_dir() => {}
                    Ok(_) => break 'layers,
                    Err(_) => continue 'layers,
                }
            }
            if let Ok(rd) = std::fs::read_dir(&p) {
                for e in rd.flatten() {
                    names.insert(e.file_name());
                }
            }
            if is_opaque(&p) {
                break;
            }
        }
        let mut out = Vec::new();
        for n in names {
            let mut full = comps.to_vec();
            full.push(n.clone());
            if let Some((host, md)) = self.lookup(&full, shown)? {
                out.push((n, host, md));
            }
        }
        Ok(out)
    }

    /// Copies what the image holds at `path` (a directory) into `dest`, as Docker fills a new volume: regular
    /// files, directories and symlinks (copied as links, never followed), with their modes and owners. Returns
    /// false when the image has no directory there.
    pub fn copy_dir(&self, path: &str, dest: &Path) -> Result<bool, ImageFsError> {
        let Some((host, md)) = self.resolve(path)? else { return Ok(false) };
        if !md.is_dir() {
            return Ok(false);
        }
        // The resolved components: the host path's part below its layer.
        let Some(layer) = self.layers.iter().find(|l| host.starts_with(l)) else { return Ok(false) };
        let comps: Vec<OsString> =
            host.strip_prefix(layer).unwrap_or(Path::new("")).components().map(|c| c.as_os_str().to_owned()).collect();
        self.copy_tree(&comps, dest, path, 0)?;
        // The volume's root takes the directory's owner and mode too: a non-root image must be able to write it.
        let io = |e: std::io::Error| ImageFsError::Io { path: path.to_string(), source: e };
        std::os::unix::fs::lchown(dest, Some(md.uid()), Some(md.gid())).map_err(io)?;
        std::fs::set_permissions(dest, std::os::unix::fs::PermissionsExt::from_mode(md.mode() & 0o7777)).map_err(io)?;
        Ok(true)
    }

    fn copy_tree(&self, comps: &[OsString], dest: &Path, shown: &str, depth: usize) -> Result<(), ImageFsError> {
        if depth > MAX_COPY_DEPTH {
            return Ok(());
        }
        let io = |e: std::io::Error| ImageFsError::Io { path: shown.to_string(), source: e };
        for (name, host, md) in self.list_dir(comps, shown)? {
            let to = dest.join(&name);
            let ft = md.file_type();
            if ft.is_dir() {
                std::fs::create_dir_all(&to).map_err(io)?;
                let mut sub = comps.to_vec();
                sub.push(name);
                self.copy_tree(&sub, &to, shown, depth + 1)?;
            } else if ft.is_file() {
                let mut src = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                    .open(&host)
                    .map_err(io)?;
                if !src.metadata().map_err(io)?.is_file() {
                    continue;
                }
                let mut out = std::fs::File::create(&to).map_err(io)?;
                std::io::copy(&mut src, &mut out).map_err(io)?;
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&host).map_err(io)?;
                std::os::unix::fs::symlink(target, &to).map_err(io)?;
            } else {
                // Devices, FIFOs and sockets are not volume content.
                continue;
            }
            std::os::unix::fs::lchown(&to, Some(md.uid()), Some(md.gid())).map_err(io)?;
            if !ft.is_symlink() {
                std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(md.mode() & 0o7777))
                    .map_err(io)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn write(root: &Path, p: &str, text: &str) {
        let p = root.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn symlinks_resolve_inside_the_image_root() {
        let host = tempfile::tempdir().unwrap();
        let secret = host.path().join("shadow");
        std::fs::write(&secret, "host-secret\n").unwrap();
        let layer = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(layer.path().join("etc")).unwrap();
        // Absolute, and relative climbing far above the root: both stay inside the image.
        std::os::unix::fs::symlink(&secret, layer.path().join("etc/passwd")).unwrap();
        let climb = format!("../../../../../../../..{}", secret.display());
        std::os::unix::fs::symlink(&climb, layer.path().join("etc/group")).unwrap();
        let root = ImageRoot::new(vec![layer.path().to_path_buf()]);
        assert_eq!(root.read_text("/etc/passwd").unwrap(), None, "the host file is not followed");
        assert_eq!(root.read_text("/etc/group").unwrap(), None, "the host file is not followed");

        // The same target path inside the image is what the link means.
        write(layer.path(), &secret.display().to_string()[1..], "image-file\n");
        assert_eq!(root.read_text("/etc/passwd").unwrap().as_deref(), Some("image-file\n"));
        assert_eq!(root.read_text("/etc/group").unwrap().as_deref(), Some("image-file\n"));

        // A symlinked directory is followed inside the image too.
        let l2 = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(host.path(), l2.path().join("etc")).unwrap();
        let root = ImageRoot::new(vec![l2.path().to_path_buf()]);
        assert_eq!(root.read_text("/etc/shadow").unwrap(), None, "a directory symlink does not lead to the host");

        let l3 = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("loop", l3.path().join("loop")).unwrap();
        let e = ImageRoot::new(vec![l3.path().to_path_buf()]).read_text("/loop").unwrap_err();
        assert!(matches!(e, ImageFsError::SymlinkLoop(_)), "{e}");
    }

    #[test]
    fn layers_merge_as_overlayfs_does() {
        let lower = tempfile::tempdir().unwrap();
        let upper = tempfile::tempdir().unwrap();
        write(lower.path(), "etc/passwd", "lower\n");
        write(lower.path(), "etc/group", "lower group\n");
        write(lower.path(), "data/a", "a");
        write(upper.path(), "etc/passwd", "upper\n");
        // A whiteout (char device 0:0) in the upper layer deletes the lower file.
        let wh = std::ffi::CString::new(upper.path().join("etc/group").to_str().unwrap()).unwrap();
        // SAFETY: a valid path; mknod of a 0:0 char device as overlayfs whiteouts are made (needs root).
        assert_eq!(unsafe { libc::mknod(wh.as_ptr(), libc::S_IFCHR, 0) }, 0, "mknod needs root");
        std::os::unix::fs::symlink("/etc", upper.path().join("data")).unwrap();
        let root = ImageRoot::new(vec![upper.path().to_path_buf(), lower.path().to_path_buf()]);
        assert_eq!(root.read_text("etc/passwd").unwrap().as_deref(), Some("upper\n"));
        assert_eq!(root.read_text("etc/group").unwrap(), None, "whited out");
        assert_eq!(root.read_text("data/a").unwrap(), None, "the upper symlink hides the lower directory");
        assert_eq!(root.read_text("data/passwd").unwrap().as_deref(), Some("upper\n"), "followed in the image");
    }

    #[test]
    fn fifos_devices_and_big_files_are_refused_without_blocking() {
        let layer = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(layer.path().join("etc")).unwrap();
        let fifo = std::ffi::CString::new(layer.path().join("etc/passwd").to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        std::fs::write(layer.path().join("etc/group"), vec![b'x'; (MAX_FILE_SIZE + 1) as usize]).unwrap();
        let root = ImageRoot::new(vec![layer.path().to_path_buf()]);
        let (tx, rx) = std::sync::mpsc::channel();
        let r2 = root.clone();
        std::thread::spawn(move || tx.send(r2.read_text("/etc/passwd").map_err(|e| e.to_string())).unwrap());
        let r = rx.recv_timeout(Duration::from_secs(10)).expect("reading a FIFO must not block");
        assert_eq!(r.unwrap_err(), "/etc/passwd in the image is not a regular file");
        let e = root.read_text("/etc/group").unwrap_err().to_string();
        assert_eq!(e, "/etc/group in the image is larger than 1048576 bytes");
        let e = root.read_text("/etc").unwrap_err().to_string();
        assert_eq!(e, "/etc in the image is not a regular file");
    }

    #[test]
    fn copy_dir_copies_the_merged_directory_without_following_links() {
        let lower = tempfile::tempdir().unwrap();
        let upper = tempfile::tempdir().unwrap();
        write(lower.path(), "data/a", "a");
        write(lower.path(), "data/sub/b", "b");
        write(upper.path(), "data/c", "c");
        std::os::unix::fs::symlink("/etc/hostname", upper.path().join("data/link")).unwrap();
        std::os::unix::fs::chown(upper.path().join("data"), Some(65534), Some(65534)).unwrap();
        let root = ImageRoot::new(vec![upper.path().to_path_buf(), lower.path().to_path_buf()]);
        let dest = tempfile::tempdir().unwrap();
        assert!(root.copy_dir("/data", dest.path()).unwrap());
        assert_eq!(std::fs::metadata(dest.path()).unwrap().uid(), 65534, "the top-most /data's owner");
        assert_eq!(std::fs::read_to_string(dest.path().join("a")).unwrap(), "a");
        assert_eq!(std::fs::read_to_string(dest.path().join("sub/b")).unwrap(), "b");
        assert_eq!(std::fs::read_to_string(dest.path().join("c")).unwrap(), "c");
        assert_eq!(std::fs::read_link(dest.path().join("link")).unwrap(), Path::new("/etc/hostname"));
        assert!(!root.copy_dir("/nothing", dest.path()).unwrap());
    }
}
