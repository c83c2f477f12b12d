//! openraft's storage conformance suite, run against the redb log store and state machine.

use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use swarm::manager::raft::{NodeId, RedbLogStore, RedbStateMachine, TypeConfig};

struct RedbBuilder;

impl StoreBuilder<TypeConfig, RedbLogStore, RedbStateMachine, tempfile::TempDir> for RedbBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, RedbLogStore, RedbStateMachine), StorageError<NodeId>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = RedbLogStore::open(&dir.path().join("log.redb")).expect("open log");
        let sm = RedbStateMachine::open(&dir.path().join("state.redb")).expect("open state");
        Ok((dir, log, sm))
    }
}

#[test]
fn redb_storage_passes_openraft_suite() -> Result<(), StorageError<NodeId>> {
    Suite::test_all(RedbBuilder)?;
    Ok(())
}
