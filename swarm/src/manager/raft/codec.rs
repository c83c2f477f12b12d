//! How Raft data is written to disk: a format byte, then the value. Format 2 (written) is MessagePack with
//! named fields, self-describing so that flattened structs, internally tagged enums and skipped fields read
//! back as they do from JSON, at about half JSON's size; format 1 (JSON, written by older releases) is still
//! read. A value from a newer release is refused with a message rather than misread.
//!
//! A manager with a data key keeps what the Raft data holds about the cluster (log entries, stored objects,
//! snapshot objects) sealed with it at rest ([`AtRest`], format 3): with autolock the key itself is wrapped with
//! the unlock key, so a locked manager's Raft files are ciphertext until `swarm unlock`.

use crate::manager::datakey::DataKey;
use serde::{de::DeserializeOwned, Serialize};

/// The on-disk format this release writes: MessagePack with named fields.
pub const FORMAT_VERSION: u8 = 2;

/// The JSON format of older releases, still read.
pub const FORMAT_JSON: u8 = 1;

/// A value sealed with the manager's data key: the sealed bytes of a format-2 value follow.
pub const FORMAT_SEALED: u8 = 3;

/// A value on disk that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The value was written by a format this release does not know.
    #[error("unsupported format version {0} (this shoald reads versions {FORMAT_JSON} and {FORMAT_VERSION}; was it written by a newer release?)")]
    UnsupportedVersion(u8),
    /// The value is empty.
    #[error("empty value")]
    Empty,
    /// The bytes are not the JSON format 1 says.
    #[error("malformed value: {0}")]
    Malformed(#[from] serde_json::Error),
    /// The bytes are not the MessagePack format 2 says.
    #[error("malformed value: {0}")]
    MalformedBinary(#[from] rmp_serde::decode::Error),
    /// The value is sealed and this manager has no data key to open it.
    #[error("the value is encrypted and this manager has no data key to read it")]
    NoKey,
    /// The value is sealed with another key, or was altered.
    #[error("the value is encrypted with another data key, or was altered")]
    Sealed,
}

/// How a manager keeps Raft data at rest: sealed with its data key, or (a swarm from before data keys) in clear.
/// Values written in clear stay readable with a key, so such a swarm moves to sealed data as it writes.
#[derive(Clone, Default, Debug)]
pub struct AtRest(Option<DataKey>);

impl AtRest {
    pub fn sealed_with(key: Option<DataKey>) -> Self {
        AtRest(key)
    }

    /// Whether new values are written sealed.
    pub fn is_sealed(&self) -> bool {
        self.0.is_some()
    }

    pub fn encode<T: Serialize>(&self, value: &T) -> Vec<u8> {
        self.seal(encode(value))
    }

    pub fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        decode(&self.open(bytes)?)
    }

    /// `plain` as written at rest: sealed (format byte, then the sealed bytes) when there is a key.
    pub fn seal(&self, plain: Vec<u8>) -> Vec<u8> {
        match &self.0 {
            None => plain,
            Some(key) => {
                let sealed = key.seal(&plain);
                let mut out = Vec::with_capacity(1 + sealed.len());
                out.push(FORMAT_SEALED);
                out.extend_from_slice(&sealed);
                out
            }
        }
    }

    /// The plain bytes of a value [`AtRest::seal`] wrote (a value in clear is returned as it is).
    pub fn open<'a>(&self, bytes: &'a [u8]) -> Result<std::borrow::Cow<'a, [u8]>, CodecError> {
        match bytes.split_first() {
            Some((&FORMAT_SEALED, sealed)) => {
                let key = self.0.as_ref().ok_or(CodecError::NoKey)?;
                Ok(std::borrow::Cow::Owned(key.open(sealed).map_err(|_| CodecError::Sealed)?))
            }
            _ => Ok(std::borrow::Cow::Borrowed(bytes)),
        }
    }
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![FORMAT_VERSION];
    value
        .serialize(&mut rmp_serde::Serializer::new(&mut out).with_struct_map())
        .expect("serializing plain data to a Vec cannot fail");
    out
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    match bytes.split_first() {
        None => Err(CodecError::Empty),
        Some((&FORMAT_VERSION, rest)) => Ok(rmp_serde::from_slice(rest)?),
        Some((&FORMAT_JSON, rest)) => Ok(serde_json::from_slice(rest)?),
        Some((&FORMAT_SEALED, _)) => Err(CodecError::NoKey),
        Some((&v, _)) => Err(CodecError::UnsupportedVersion(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Object, PlacementPreference, ServiceMode, TaskState, Timestamp};
    use crate::manager::raft::TypeConfig;
    use crate::manager::store::{Op, Proposal};
    use crate::testing::{node, service, task};
    use openraft::{Entry, EntryPayload, LogId};

    #[test]
    fn round_trips_and_refuses_unknown_versions() {
        let bytes = encode(&vec![1u32, 2, 3]);
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(decode::<Vec<u32>>(&bytes).unwrap(), vec![1, 2, 3]);
        let mut newer = bytes.clone();
        newer[0] = 9;
        assert!(matches!(decode::<Vec<u32>>(&newer), Err(CodecError::UnsupportedVersion(9))));
        assert!(matches!(decode::<Vec<u32>>(&[]), Err(CodecError::Empty)));
        assert!(matches!(decode::<Vec<u32>>(&bytes[..3]), Err(CodecError::MalformedBinary(_))));
    }

    /// Objects of every shape the API uses (flattened specs, tagged enums, skipped empty fields, durations as
    /// text) and a whole Raft entry read back equal, from the binary format and from older releases' JSON.
    fn objects() -> Vec<Object> {
        let mut s = service("s1", "web", 3);
        s.spec.task_template.placement.preferences.push(PlacementPreference::Spread("node.labels.zone".into()));
        s.spec.annotations.labels.insert("tier".into(), "front".into());
        let mut g = service("s2", "agent", 0);
        g.spec.mode = ServiceMode::Global;
        let mut t = task("t1", "s1", 1);
        t.status.state = TaskState::Running;
        t.status.err = "exit 1".into();
        t.spec_mut().resources.generic_reservations.insert("gpu".into(), 2);
        let mut n = node("n1", "host");
        n.description.generic_resources.insert("gpu".into(), 4);
        vec![s.into(), g.into(), t.into(), n.into()]
    }

    #[test]
    fn api_objects_and_raft_entries_round_trip_in_both_formats() {
        for o in objects() {
            assert_eq!(decode::<Object>(&encode(&o)).unwrap(), o);
            let mut json = vec![FORMAT_JSON];
            json.extend(serde_json::to_vec(&o).unwrap());
            assert_eq!(decode::<Object>(&json).unwrap(), o, "an older release's JSON still reads");
        }
        let proposal = Proposal {
            ops: objects()
                .into_iter()
                .map(Op::update)
                .chain([
                    Op::Delete { kind: crate::api::ObjectKind::Task, id: "t9".into(), version: 4 },
                    Op::TaskProgress(Box::new(crate::manager::store::TaskProgress {
                        id: "t1".into(),
                        version: 7,
                        node_id: "n1".into(),
                        desired_state: TaskState::Running,
                        status: crate::api::TaskStatus { state: TaskState::Assigned, ..Default::default() },
                        networks: vec![],
                        endpoint: Some(Default::default()),
                    })),
                ])
                .collect(),
            timestamp: Timestamp::now(),
        };
        let entry: Entry<TypeConfig> = Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(3, 1), 42),
            payload: EntryPayload::Normal(proposal.clone()),
        };
        let back: Entry<TypeConfig> = decode(&encode(&entry)).unwrap();
        assert_eq!(back.log_id, entry.log_id);
        match back.payload {
            EntryPayload::Normal(p) => assert_eq!(p, proposal),
            other => panic!("payload changed: {other:?}"),
        }
    }

    /// Membership changes (a manager joining) are entries too, with node ids as map keys.
    #[test]
    fn membership_entries_and_raft_metadata_round_trip() {
        use openraft::{BasicNode, Membership, StoredMembership, Vote};
        use std::collections::{BTreeMap, BTreeSet};
        let nodes: BTreeMap<u64, BasicNode> =
            [(5721440022263293001u64, BasicNode::new("127.0.0.1:1")), (7, BasicNode::new("127.0.0.1:2"))].into();
        let m = Membership::new(
            vec![BTreeSet::from([5721440022263293001u64]), BTreeSet::from([5721440022263293001u64, 7])],
            nodes,
        );
        let entry: Entry<TypeConfig> = Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(2, 7), 9),
            payload: EntryPayload::Membership(m.clone()),
        };
        let back: Entry<TypeConfig> = decode(&encode(&entry)).unwrap();
        match back.payload {
            EntryPayload::Membership(got) => assert_eq!(got, m),
            other => panic!("payload changed: {other:?}"),
        }
        let stored = StoredMembership::new(Some(entry.log_id), m);
        assert_eq!(decode::<StoredMembership<u64, BasicNode>>(&encode(&stored)).unwrap(), stored);
        let vote = Vote::new_committed(3, 7);
        assert_eq!(decode::<Vote<u64>>(&encode(&vote)).unwrap(), vote);
        let blank: Entry<TypeConfig> = Entry { log_id: entry.log_id, payload: EntryPayload::Blank };
        assert!(matches!(decode::<Entry<TypeConfig>>(&encode(&blank)).unwrap().payload, EntryPayload::Blank));
    }

    #[test]
    fn sealed_values_need_the_key_and_clear_ones_still_read() {
        let key = DataKey::generate();
        let at_rest = AtRest::sealed_with(Some(key.clone()));
        let o = objects().remove(0);
        let sealed = at_rest.encode(&o);
        assert_eq!(sealed[0], FORMAT_SEALED);
        let plain = encode(&o);
        assert!(!sealed.windows(3).any(|w| w == b"web"), "the service's name is not in the sealed bytes");
        assert!(plain.windows(3).any(|w| w == b"web"));
        assert_eq!(at_rest.decode::<Object>(&sealed).unwrap(), o);
        assert_eq!(at_rest.decode::<Object>(&plain).unwrap(), o, "a value written in clear still reads");
        assert!(matches!(AtRest::default().decode::<Object>(&sealed), Err(CodecError::NoKey)));
        assert!(matches!(decode::<Object>(&sealed), Err(CodecError::NoKey)));
        let other = AtRest::sealed_with(Some(DataKey::generate()));
        assert!(matches!(other.decode::<Object>(&sealed), Err(CodecError::Sealed)));
        let mut altered = sealed.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert!(matches!(at_rest.decode::<Object>(&altered), Err(CodecError::Sealed)));
    }

    #[test]
    fn the_binary_format_is_smaller_than_json() {
        let tasks: Vec<Object> = (0..100).map(|i| task(&format!("t{i}"), "s1", i).into()).collect();
        let json = serde_json::to_vec(&tasks).unwrap().len();
        let binary = encode(&tasks).len();
        assert!(binary < json, "MessagePack {binary} bytes, JSON {json}");
    }
}
