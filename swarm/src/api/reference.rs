//! Image references, normalized as Docker does: `busybox` → `docker.io/library/busybox:latest`.

/// A reference that is not well formed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid reference format: {reference:?}: {reason}")]
pub struct ReferenceError {
    pub reference: String,
    pub reason: &'static str,
}

/// Normalizes an image reference to its full form (`registry/path:tag` or `registry/path@sha256:…`).
pub fn normalize_image_ref(reference: &str) -> Result<String, ReferenceError> {
    let err = |reason| ReferenceError { reference: reference.to_string(), reason };
    if reference.is_empty() {
        return Err(err("empty reference"));
    }
    if reference.len() > 255 {
        return Err(err("longer than 255 characters"));
    }
    let (name, digest) = match reference.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (reference, None),
    };
    if let Some(d) = digest {
        let ok = d
            .strip_prefix("sha256:")
            .map(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
            .unwrap_or(false);
        if !ok {
            return Err(err("digest must be sha256: followed by 64 lowercase hex digits"));
        }
    }
    // A tag is after the last ':' that comes after the last '/' (a ':' before it is a registry port).
    let last_slash = name.rfind('/').map(|i| i + 1).unwrap_or(0);
    let (repo, tag) = match name[last_slash..].rfind(':') {
        Some(i) => (&name[..last_slash + i], Some(&name[last_slash + i + 1..])),
        None => (name, None),
    };
    if let Some(t) = tag {
        let valid = !t.is_empty()
            && t.len() <= 128
            && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
            && !t.starts_with(['.', '-']);
        if !valid {
            return Err(err("tag must be 1-128 of [A-Za-z0-9_.-], not starting with '.' or '-'"));
        }
    }
    let mut parts: Vec<&str> = repo.split('/').collect();
    // The first part is a registry if it looks like a host: has a '.', a ':' or is "localhost".
    let registry = if parts.len() > 1 && (parts[0].contains(['.', ':']) || parts[0] == "localhost") {
        Some(parts.remove(0))
    } else {
        None
    };
    if let Some(r) = registry {
        if !r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b':') {
            return Err(err("registry host has invalid characters"));
        }
    }
    for p in &parts {
        let valid = !p.is_empty()
            && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_' || b == b'-')
            && p.as_bytes()[0].is_ascii_alphanumeric()
            && p.as_bytes()[p.len() - 1].is_ascii_alphanumeric();
        if !valid {
            return Err(err("repository name must be lowercase alphanumerics separated by '.', '_' or '-'"));
        }
    }
    let registry = registry.unwrap_or("docker.io");
    let path =
        if registry == "docker.io" && parts.len() == 1 { format!("library/{}", parts[0]) } else { parts.join("/") };
    let mut out = format!("{registry}/{path}");
    match (tag, digest) {
        (Some(t), Some(d)) => out.push_str(&format!(":{t}@{d}")),
        (Some(t), None) => out.push_str(&format!(":{t}")),
        (None, Some(d)) => out.push_str(&format!("@{d}")),
        (None, None) => out.push_str(":latest"),
    }
    Ok(out)
}

/// The short form Docker shows: `docker.io/library/busybox:latest` → `busybox:latest`.
pub fn familiar_image_ref(normalized: &str) -> String {
    let s = normalized.strip_prefix("docker.io/").unwrap_or(normalized);
    s.strip_prefix("library/").unwrap_or(s).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_like_docker() {
        assert_eq!(normalize_image_ref("busybox").unwrap(), "docker.io/library/busybox:latest");
        assert_eq!(normalize_image_ref("busybox:1.36").unwrap(), "docker.io/library/busybox:1.36");
        assert_eq!(normalize_image_ref("me/app").unwrap(), "docker.io/me/app:latest");
        assert_eq!(normalize_image_ref("localhost:5000/app:v1").unwrap(), "localhost:5000/app:v1");
        assert_eq!(normalize_image_ref("ghcr.io/a/b/c").unwrap(), "ghcr.io/a/b/c:latest");
        let d = format!("busybox@sha256:{}", "a".repeat(64));
        assert_eq!(normalize_image_ref(&d).unwrap(), format!("docker.io/library/{d}"));
        assert_eq!(familiar_image_ref("docker.io/library/busybox:latest"), "busybox:latest");
    }

    #[test]
    fn rejects_malformed_references() {
        for bad in ["", "BusyBox", "busybox:", "busybox::1", "a//b", "busybox@sha256:xyz", "-x", "busybox:-t"] {
            assert!(normalize_image_ref(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
