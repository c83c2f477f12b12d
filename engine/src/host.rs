//! Facts about the host the daemon reads once at start: its default-route IPv4 address (the advertise address
//! when none is given), and the exclusive lock on the data root.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The data root cannot be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another shoald holds it.
    #[error("another shoald (pid {pid}) is using data root {root}; stop it or choose another --data-root")]
    Held { root: PathBuf, pid: String },
    #[error("locking {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// An exclusive lock on a data root, held for the daemon's life (released when dropped or when the process dies).
pub struct DataRootLock {
    _file: std::fs::File,
}

impl DataRootLock {
    pub fn acquire(root: &Path) -> Result<Self, LockError> {
        let path = root.join("shoald.lock");
        let io = |source| LockError::Io { path: path.clone(), source };
        std::fs::create_dir_all(root).map_err(io)?;
        let mut file =
            std::fs::OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&path).map_err(io)?;
        // SAFETY: flock on a file descriptor we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let pid = std::fs::read_to_string(&path).unwrap_or_default().trim().to_string();
            return Err(LockError::Held {
                root: root.to_path_buf(),
                pid: if pid.is_empty() { "unknown".into() } else { pid },
            });
        }
        use std::io::{Seek, Write};
        file.set_len(0).map_err(io)?;
        file.seek(std::io::SeekFrom::Start(0)).map_err(io)?;
        write!(file, "{}", std::process::id()).map_err(io)?;
        Ok(DataRootLock { _file: file })
    }
}

/// The IPv4 address of the interface holding the default route, if any (read from /proc/net/route).
pub fn default_route_ip() -> Option<IpAddr> {
    let routes = std::fs::read_to_string("/proc/net/route").ok()?;
    let iface = routes.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 2 && f[1] == "00000000").then(|| f[0].to_string())
    })?;
    interface_ipv4(&iface).map(IpAddr::V4)
}

/// The first IPv4 address of an interface.
pub fn interface_ipv4(name: &str) -> Option<Ipv4Addr> {
    let mut addrs: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we free with freeifaddrs; we only read it in between.
    unsafe {
        if libc::getifaddrs(&mut addrs) != 0 {
            return None;
        }
        let mut cur = addrs;
        let mut found = None;
        while !cur.is_null() {
            let a = &*cur;
            if !a.ifa_addr.is_null() && (*a.ifa_addr).sa_family as i32 == libc::AF_INET {
                let n = std::ffi::CStr::from_ptr(a.ifa_name).to_string_lossy();
                if n == name {
                    let sin = &*(a.ifa_addr as *const libc::sockaddr_in);
                    found = Some(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
                    break;
                }
            }
            cur = a.ifa_next;
        }
        libc::freeifaddrs(addrs);
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_on_a_data_root_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = DataRootLock::acquire(dir.path()).unwrap();
        let err = DataRootLock::acquire(dir.path()).err().expect("second lock must fail");
        let msg = err.to_string();
        assert!(msg.contains("another shoald") && msg.contains(&std::process::id().to_string()), "{msg}");
    }

    #[test]
    fn loopback_has_an_ipv4_address() {
        assert_eq!(interface_ipv4("lo"), Some(Ipv4Addr::LOCALHOST));
    }
}
