//! A service's registry credentials (`--with-registry-auth`) at rest: sealed with the managers' data key before
//! the spec is proposed, so the Raft log, snapshots hold only ciphertext, as a secret's data. The
//! dispatcher opens them (`open_for_node`) only in the assignments it sends the node running the task.

use crate::api::{ContainerSpec, PullOptions, Task};
use crate::manager::datakey::DataKey;
use tonic::Status;

/// The message when credentials arrive at a manager without the data key to seal them.
pub const NO_DATA_KEY: &str =
    "this manager does not hold the swarm's data key; registry credentials cannot be stored here";

/// Seals the credentials a create or update carries in `spec`, in place. `current` is what the service holds now
/// (sealed): a spec without credentials keeps it (reads never return them, so a spec read back and sent again has
/// none), and the same credentials sent again keep its ciphertext, so an unchanged spec stays unchanged. Empty
/// credentials remove them. A `sealed` value from the client is never trusted.
pub fn seal(spec: &mut ContainerSpec, current: Option<&PullOptions>, key: Option<&DataKey>) -> Result<(), Status> {
    let Some(sent) = spec.pull_options.take() else {
        spec.pull_options = current.cloned();
        return Ok(());
    };
    if sent.registry_auth.is_empty() {
        return Ok(());
    }
    let key = key.ok_or_else(|| Status::unavailable(NO_DATA_KEY))?;
    let plain = sent.registry_auth.as_bytes();
    if let Some(cur) = current.filter(|c| key.open(&c.sealed).is_ok_and(|p| p == plain)) {
        spec.pull_options = Some(cur.clone());
        return Ok(());
    }
    spec.pull_options = Some(PullOptions { registry_auth: String::new(), sealed: key.seal(plain) });
    Ok(())
}

/// Opens a task's sealed credentials for the node that runs it. Credentials that cannot be opened are dropped
/// (logged): the pull then goes without them and fails with the registry's reason on the task.
pub fn open_for_node(task: &mut Task, key: Option<&DataKey>) {
    if task.spec.container.pull_options.as_ref().is_none_or(|p| p.sealed.is_empty()) {
        return;
    }
    let Some(p) = task.spec_mut().container.pull_options.as_mut() else { return };
    let opened = key
        .ok_or_else(|| "no data key".to_string())
        .and_then(|k| k.open(&p.sealed).map_err(|e| e.to_string()))
        .and_then(|b| String::from_utf8(b).map_err(|e| e.to_string()));
    match opened {
        Ok(auth) => *p = PullOptions { registry_auth: auth, sealed: Vec::new() },
        Err(e) => {
            tracing::error!(task.id = %task.id, node.id = %task.node_id, error = %e,
                "cannot open the task's registry credentials; its image is pulled without them");
            task.spec_mut().container.pull_options = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(auth: &str) -> ContainerSpec {
        ContainerSpec {
            pull_options: Some(PullOptions { registry_auth: auth.into(), sealed: vec![] }),
            ..Default::default()
        }
    }

    #[test]
    fn credentials_are_sealed_kept_replaced_and_removed() {
        let key = DataKey::generate();
        let mut spec = sent("c2VjcmV0");
        seal(&mut spec, None, Some(&key)).unwrap();
        let stored = spec.pull_options.clone().unwrap();
        assert!(stored.registry_auth.is_empty(), "no plaintext kept");
        assert_eq!(key.open(&stored.sealed).unwrap(), b"c2VjcmV0");

        // No credentials sent: the stored ones stay; the same ones sent again keep their ciphertext.
        let mut spec = ContainerSpec::default();
        seal(&mut spec, Some(&stored), Some(&key)).unwrap();
        assert_eq!(spec.pull_options.as_ref(), Some(&stored));
        let mut spec = sent("c2VjcmV0");
        seal(&mut spec, Some(&stored), Some(&key)).unwrap();
        assert_eq!(spec.pull_options.as_ref(), Some(&stored));

        // Other ones replace them; empty ones remove them.
        let mut spec = sent("bmV3");
        seal(&mut spec, Some(&stored), Some(&key)).unwrap();
        assert_eq!(key.open(&spec.pull_options.unwrap().sealed).unwrap(), b"bmV3");
        let mut spec = sent("");
        seal(&mut spec, Some(&stored), Some(&key)).unwrap();
        assert_eq!(spec.pull_options, None);

        // A client's own "sealed" value is not stored.
        let mut spec = ContainerSpec {
            pull_options: Some(PullOptions { registry_auth: String::new(), sealed: vec![1, 2, 3] }),
            ..Default::default()
        };
        seal(&mut spec, None, Some(&key)).unwrap();
        assert_eq!(spec.pull_options, None);

        let e = seal(&mut sent("x"), None, None).unwrap_err();
        assert_eq!(e.message(), NO_DATA_KEY);
    }

    #[test]
    fn the_node_gets_them_opened_or_not_at_all() {
        let key = DataKey::generate();
        let mut t = crate::testing::task("t1", "s1", 1);
        let mut spec = sent("c2VjcmV0");
        seal(&mut spec, None, Some(&key)).unwrap();
        t.spec_mut().container = spec;
        let mut opened = t.clone();
        open_for_node(&mut opened, Some(&key));
        assert_eq!(
            opened.spec.container.pull_options,
            Some(PullOptions { registry_auth: "c2VjcmV0".into(), sealed: vec![] })
        );
        let mut wrong_key = t.clone();
        open_for_node(&mut wrong_key, Some(&DataKey::generate()));
        assert_eq!(wrong_key.spec.container.pull_options, None);
        let mut no_key = t.clone();
        open_for_node(&mut no_key, None);
        assert_eq!(no_key.spec.container.pull_options, None);
        // Credentials stored before they were sealed go as they are.
        let mut old = t;
        old.spec_mut().container = sent("b2xk");
        open_for_node(&mut old, None);
        assert_eq!(old.spec.container.pull_options.as_ref().unwrap().registry_auth, "b2xk");
    }
}
