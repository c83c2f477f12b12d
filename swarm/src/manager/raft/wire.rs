//! The messages of `shoal.Raft`, the manager-to-manager service: openraft's three RPCs, proposals a follower
//! forwards to the leader, and membership changes a manager asks of the leader. Replies carry the remote side's
//! error as a value, so the caller can tell "the peer said no" from "the peer could not be reached".

use super::{NodeId, TypeConfig};
use crate::manager::store::{ApplyError, Proposal};
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::{BasicNode, SnapshotMeta, Vote};
use serde::{Deserialize, Serialize};

pub type AppendEntriesRequest = openraft::raft::AppendEntriesRequest<TypeConfig>;
pub type AppendEntriesReply = Result<openraft::raft::AppendEntriesResponse<NodeId>, RaftError<NodeId>>;
pub type VoteRequest = openraft::raft::VoteRequest<NodeId>;
pub type VoteReply = Result<openraft::raft::VoteResponse<NodeId>, RaftError<NodeId>>;
pub type InstallSnapshotReply =
    Result<openraft::raft::InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>;

/// One chunk of a snapshot (openraft's `InstallSnapshotRequest`), its bytes as base64 so a chunk costs 4/3 of its
/// size on the wire rather than a JSON array of numbers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotChunk {
    pub vote: Vote<NodeId>,
    pub meta: SnapshotMeta<NodeId, BasicNode>,
    pub offset: u64,
    #[serde(with = "base64_bytes")]
    pub data: Vec<u8>,
    pub done: bool,
}

impl From<openraft::raft::InstallSnapshotRequest<TypeConfig>> for SnapshotChunk {
    fn from(r: openraft::raft::InstallSnapshotRequest<TypeConfig>) -> Self {
        SnapshotChunk { vote: r.vote, meta: r.meta, offset: r.offset, data: r.data, done: r.done }
    }
}

impl From<SnapshotChunk> for openraft::raft::InstallSnapshotRequest<TypeConfig> {
    fn from(c: SnapshotChunk) -> Self {
        openraft::raft::InstallSnapshotRequest {
            vote: c.vote,
            meta: c.meta,
            offset: c.offset,
            data: c.data,
            done: c.done,
        }
    }
}

/// A write a follower forwards to the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProposeRequest {
    pub proposal: Proposal,
}

/// The log index the proposal was committed at, or why it was not.
pub type ProposeReply = Result<u64, RemoteFailure>;

/// Why the leader did not do what a peer asked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RemoteFailure {
    /// The proposal was committed and refused by the state machine.
    Apply(ApplyError),
    /// The called manager does not lead (any more); `leader` is the cluster address of the one it knows.
    NotLeader { leader: Option<String> },
    /// The leader lost its quorum; `reachable` are the managers it still hears from.
    QuorumLost { reachable: Vec<String> },
    /// Removing the manager would leave `left` reachable managers out of `of`: no quorum.
    QuorumAtRisk { left: usize, of: usize },
    /// The request is not acceptable (the message says why).
    Refused(String),
    /// Raft failed.
    Raft(String),
}

/// A manager that has its certificate and a running (empty) Raft asks to be added to the group.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    pub raft_id: NodeId,
    /// Its cluster address (`ip:port`), where the others reach its Raft.
    pub addr: String,
}

/// A manager asks to be removed from the group (`swarm leave`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaveRequest {
    pub raft_id: NodeId,
    /// Leave even if the managers left would have no quorum (`swarm leave --force`).
    #[serde(default)]
    pub force: bool,
}

pub type MembershipReply = Result<(), RemoteFailure>;

mod base64_bytes {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        base64::engine::general_purpose::STANDARD.decode(text.as_bytes()).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_chunk_round_trips_with_its_bytes_as_base64() {
        let chunk = SnapshotChunk {
            vote: Vote::new(3, 7),
            meta: SnapshotMeta::default(),
            offset: 1 << 20,
            data: (0..=255u8).collect(),
            done: false,
        };
        let json = serde_json::to_string(&chunk).unwrap();
        assert!(json.len() < 600, "bytes are base64, not an array of numbers: {} chars", json.len());
        let back: SnapshotChunk = serde_json::from_str(&json).unwrap();
        assert_eq!((back.data, back.offset, back.done), (chunk.data, chunk.offset, chunk.done));
    }
}
