//! The local API's unix socket, created with its final owner and mode: it is bound inside a fresh 0700 directory
//! (no one but root can reach it there), given group ownership and mode 0660, then renamed into place. So the
//! socket is never reachable at a looser mode, whatever the umask, and a stale socket is replaced atomically.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The socket's mode: read/write for root and the socket group, nothing for others (as dockerd's).
pub const SOCKET_MODE: u32 = 0o660;
/// The group used when `--group` is not given, if it exists (as dockerd's `docker`).
pub const DEFAULT_GROUP: &str = "shoal";

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// `--group` names a group this host does not have.
    #[error("group {0:?} not found: create it or pass an existing group (or gid) to --group")]
    UnknownGroup(String),
    /// A filesystem step failed.
    #[error("{what} {}: {source}", path.display())]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SocketError + 'a {
    move |source| SocketError::Io { what, path: path.to_path_buf(), source }
}

/// The gid the socket belongs to: `--group` (a name or a number) when given, else `shoal` if that group exists,
/// else root's group (so only root can connect).
pub fn resolve_group(group: Option<&str>) -> Result<u32, SocketError> {
    let by_name = |name: &str| nix::unistd::Group::from_name(name).ok().flatten().map(|g| g.gid.as_raw());
    match group {
        Some(name) => by_name(name).or_else(|| name.parse().ok()).ok_or_else(|| SocketError::UnknownGroup(name.into())),
        None => Ok(by_name(DEFAULT_GROUP).unwrap_or_else(|| {
            tracing::info!(group = DEFAULT_GROUP, "no such group: the API socket is for root only");
            0
        })),
    }
}

/// Binds the socket at `path` owned by root:`gid` with mode 0660, creating its directory if needed.
pub fn bind(path: &Path, gid: u32) -> Result<tokio::net::UnixListener, SocketError> {
    bind_staged(path, gid, |_| {})
}

/// `bind`, calling `bound` with the staged socket's path as soon as it exists (tests look at it there).
fn bind_staged(path: &Path, gid: u32, bound: impl FnOnce(&Path)) -> Result<tokio::net::UnixListener, SocketError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
    // 0700 (the umask can only take bits away); the short name keeps the bind path within the 108-byte limit
    // whenever the final path is.
    let private = tempfile::Builder::new()
        .prefix(".s")
        .rand_bytes(6)
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(parent)
        .map_err(io("creating a directory in", parent))?;
    let staged = private.path().join("s");
    let listener = tokio::net::UnixListener::bind(&staged).map_err(io("binding", &staged))?;
    bound(&staged);
    std::os::unix::fs::chown(&staged, Some(0), Some(gid)).map_err(io("changing the group of", &staged))?;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(SOCKET_MODE))
        .map_err(io("changing the mode of", &staged))?;
    std::fs::rename(&staged, path).map_err(io("moving the socket to", path))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[tokio::test]
    async fn socket_appears_only_with_its_final_mode_and_group() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/shoal.sock");
        // A stale socket from a crashed daemon is replaced.
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let stale = std::fs::metadata(&path).unwrap().ino();
        let gid = 4242;

        // A permissive umask must not matter: the socket is born 0777 here, but out of everyone's reach.
        // SAFETY: umask only sets this process's file creation mask.
        let old = unsafe { libc::umask(0) };
        let mut checked = false;
        let listener = bind_staged(&path, gid, |staged| {
            let here = std::fs::metadata(staged).unwrap();
            assert_ne!(staged, path.as_path(), "bound somewhere other than the final path");
            assert_ne!(here.ino(), std::fs::metadata(&path).unwrap().ino(), "the final path is not the new socket yet");
            let d = std::fs::metadata(staged.parent().unwrap()).unwrap();
            assert_eq!((d.mode() & 0o777, d.uid()), (0o700, 0), "bound inside a directory only root can enter");
            checked = true;
        });
        unsafe { libc::umask(old) };
        let listener = listener.unwrap();
        assert!(checked);

        use std::os::unix::fs::FileTypeExt;
        let m = std::fs::metadata(&path).unwrap();
        assert!(m.file_type().is_socket());
        assert_ne!(m.ino(), stale, "the stale socket was replaced");
        assert_eq!(m.mode() & 0o777, 0o660);
        assert_eq!((m.uid(), m.gid()), (0, gid));
        // The staging directory is gone and the renamed socket accepts connections.
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from("shoal.sock")]);
        let (_client, accepted) = tokio::join!(tokio::net::UnixStream::connect(&path), listener.accept());
        accepted.expect("a client connects through the final path");
    }

    #[test]
    fn groups_resolve_like_dockerd() {
        assert_eq!(resolve_group(Some("root")).unwrap(), 0);
        assert_eq!(resolve_group(Some("1234")).unwrap(), 1234, "a gid is taken as is");
        let e = resolve_group(Some("no-such-group-here")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "group \"no-such-group-here\" not found: create it or pass an existing group (or gid) to --group"
        );
        let want = nix::unistd::Group::from_name(DEFAULT_GROUP).unwrap().map(|g| g.gid.as_raw()).unwrap_or(0);
        assert_eq!(resolve_group(None).unwrap(), want, "the default group, or root's when it does not exist");
    }
}
