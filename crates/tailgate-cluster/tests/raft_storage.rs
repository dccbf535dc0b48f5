//! openraft's own storage suite against the cluster's in-memory Raft log and state machine:
//! the contract openraft relies on (log reads after appends, truncation, purge, vote and
//! membership recovery), checked by the library that defines it.

use std::sync::Arc;

use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};
use tailgate_cluster::raft::{LogStore, StateMachine, TypeConfig};
use tailgate_ring::ClusterState;
use tokio::sync::watch;

/// Fresh, empty stores for each case; the guard keeps the state machine's watch receiver
/// alive, as the node does.
struct InMemory;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, watch::Receiver<Arc<ClusterState>>>
    for InMemory
{
    async fn build(
        &self,
    ) -> Result<
        (watch::Receiver<Arc<ClusterState>>, LogStore, StateMachine),
        StorageError<TypeConfig>,
    > {
        let (state_machine, states) = StateMachine::new();
        Ok((states, LogStore::default(), state_machine))
    }
}

#[tokio::test]
async fn the_in_memory_log_and_state_machine_pass_openraft_storage_suite() {
    Suite::test_all(InMemory)
        .await
        .expect("every case of openraft's storage suite passes");
}
