//! Root CA rotation (`swarm ca --rotate`): a new root replaces the cluster's, and every node moves to it without a
//! dropped session.
//!
//! ```text
//!  UpdateCluster with ca_config.force_rotate bumped ─▶ start_rotation: new root, previous = old root,
//!        rotation_pending = every node, join tokens regenerated (they embed the root's digest)
//!  every member: NodeCertificateStatus says root + previous ─▶ trusts both (servers and clients), and renews
//!        at once when its certificate is from another root ─▶ node_renewed: off the pending list
//!  pending list empty (renewed or removed) ─▶ previous dropped; members trust the new root alone
//! ```
//!
//! Simpler than SwarmKit's cross-signed intermediate: during the rotation both roots are trust anchors. The cost is
//! that a node must be reachable during the rotation to learn the new root (one that was off all along still
//! trusts only the old root, and must leave and join again once the rotation is over).

use super::{CaError, ClusterTls, JoinToken, RootCa};
use crate::api;
use crate::manager::store::Store;
use tokio_util::sync::CancellationToken;

/// Starts a rotation on the cluster's `root_ca`: a new root, the old one kept as `previous` until every node in
/// `nodes` renewed, new join tokens. Refused while a rotation is in progress.
pub fn start_rotation(root_ca: &mut api::RootCa, nodes: impl IntoIterator<Item = String>) -> Result<(), CaError> {
    if root_ca.rotating() {
        return Err(CaError::RotationInProgress);
    }
    let new = RootCa::generate()?;
    let digest = new.digest();
    let previous = root_ca.ca_cert_pem.clone();
    *root_ca = api::RootCa {
        ca_cert_pem: new.cert_pem,
        ca_key_pem: new.key_pem,
        join_tokens: api::JoinTokens { worker: JoinToken::generate(&digest), manager: JoinToken::generate(&digest) },
        ca_cert_digest: digest,
        previous_ca_cert_pem: previous,
        rotation_pending: nodes.into_iter().collect(),
    };
    Ok(())
}

/// Records that `node_id` holds a certificate from the current root (`None`: only re-checks), forgets pending
/// nodes `exists` no longer knows (removed), and ends the rotation once none is left. Returns whether `root_ca`
/// changed.
pub fn node_renewed(root_ca: &mut api::RootCa, node_id: Option<&str>, exists: impl Fn(&str) -> bool) -> bool {
    if !root_ca.rotating() {
        return false;
    }
    let before = root_ca.rotation_pending.len();
    if let Some(id) = node_id {
        root_ca.rotation_pending.remove(id);
    }
    root_ca.rotation_pending.retain(|n| exists(n));
    let mut changed = root_ca.rotation_pending.len() != before;
    if root_ca.rotation_pending.is_empty() {
        root_ca.previous_ca_cert_pem.clear();
        changed = true;
    }
    changed
}

/// Keeps a manager's `tls` trusting the roots its store's cluster names, until `shutdown`.
pub async fn follow_trusted_roots(tls: ClusterTls, store: Store, shutdown: CancellationToken) {
    store
        .follow_cluster(&shutdown, |c, _| {
            if let Err(e) = tls.set_roots(&c.root_ca.trusted_roots()) {
                tracing::warn!(error = %e, "the cluster's root CA certificates are unusable");
            }
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster_root() -> api::RootCa {
        let root = RootCa::generate().unwrap();
        let d = root.digest();
        api::RootCa {
            ca_cert_pem: root.cert_pem,
            ca_key_pem: root.key_pem,
            join_tokens: api::JoinTokens { worker: JoinToken::generate(&d), manager: JoinToken::generate(&d) },
            ca_cert_digest: d,
            ..Default::default()
        }
    }

    #[test]
    fn a_rotation_keeps_the_old_root_until_every_node_renewed() {
        let mut r = cluster_root();
        let old = r.clone();
        start_rotation(&mut r, ["a".to_string(), "b".into(), "c".into()]).unwrap();
        assert!(r.rotating());
        assert_ne!(r.ca_cert_pem, old.ca_cert_pem);
        assert_eq!(r.previous_ca_cert_pem, old.ca_cert_pem);
        assert_eq!(r.trusted_roots(), [r.ca_cert_pem.clone(), old.ca_cert_pem.clone()]);
        let new = RootCa::from_pem(&r.ca_cert_pem, &r.ca_key_pem).expect("the new root and its key");
        assert_eq!(r.ca_cert_digest, new.digest());
        for t in [&r.join_tokens.worker, &r.join_tokens.manager] {
            let t = JoinToken::parse(t).unwrap();
            assert!(t.matches_ca(new.cert_der()), "new tokens carry the new digest");
        }
        assert_ne!(r.join_tokens, old.join_tokens);
        let e = start_rotation(&mut r.clone(), ["a".to_string()]).unwrap_err();
        assert!(matches!(e, CaError::RotationInProgress), "{e:?}");

        let exists = |n: &str| n != "c";
        assert!(node_renewed(&mut r, Some("a"), |_| true));
        assert!(r.rotating(), "b and c have not renewed");
        assert!(!node_renewed(&mut r, Some("a"), |_| true), "a again changes nothing");
        // c was removed; b renews: over.
        assert!(node_renewed(&mut r, Some("b"), exists));
        assert!(!r.rotating() && r.rotation_pending.is_empty());
        assert_eq!(r.trusted_roots(), [r.ca_cert_pem.clone()]);
        assert!(!node_renewed(&mut r, Some("b"), |_| true), "no rotation, nothing to do");
    }
}
