//! A tonic codec that carries serde types as MessagePack, after a format byte.
//!
//! Structs are MessagePack maps keyed by field name (as the Raft log's objects are), so a field can be added or
//! left out as with JSON, at about half JSON's size and far less work per byte: a manager sends every task to
//! its node and hears every status change back. The format byte lets a node name a message it cannot read
//! (JSON from a Shoal before this codec, or a newer format) instead of failing on its bytes.

use bytes::{Buf, BufMut};
use serde::{de::DeserializeOwned, Serialize};
use std::marker::PhantomData;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

/// The format byte of a MessagePack message.
const FORMAT_MSGPACK: u8 = 1;

/// A stream's encode and decode buffers start (and grow in steps) at this size rather than tonic's 8 KiB: a
/// manager holds two streams per agent for as long as the agent lives, mostly carrying small messages, so at
/// 5,000 nodes tonic's default kept about 80 MiB of buffers that were nearly always empty.
const BUFFER_BYTES: usize = 1024;

fn buffer_settings() -> BufferSettings {
    // 32 KiB: tonic's own yield threshold (it batches ready messages up to it).
    BufferSettings::new(BUFFER_BYTES, 32 * 1024)
}

pub struct WireCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for WireCodec<T, U> {
    fn default() -> Self {
        WireCodec(PhantomData)
    }
}

pub struct WireEncoder<T>(PhantomData<T>);
pub struct WireDecoder<U>(PhantomData<U>);

impl<T: Serialize> Encoder for WireEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_u8(FORMAT_MSGPACK);
        item.serialize(&mut rmp_serde::Serializer::new(dst.writer()).with_struct_map())
            .map_err(|e| Status::internal(format!("encoding message: {e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        buffer_settings()
    }
}

impl<U: DeserializeOwned> Decoder for WireDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        if !src.has_remaining() {
            return Ok(None);
        }
        let bytes = src.copy_to_bytes(src.remaining());
        decode(&bytes).map(Some)
    }

    fn buffer_settings(&self) -> BufferSettings {
        buffer_settings()
    }
}

/// One message's bytes as `U`, or why they are not one.
fn decode<U: DeserializeOwned>(bytes: &[u8]) -> Result<U, Status> {
    match bytes.split_first() {
        Some((&FORMAT_MSGPACK, rest)) => {
            rmp_serde::from_slice(rest).map_err(|e| Status::invalid_argument(format!("malformed message: {e}")))
        }
        Some((b'{' | b'[' | b'"', _)) => Err(Status::invalid_argument(
            "message in JSON, from an older Shoal (its wire format before MessagePack): upgrade the node that sent it",
        )),
        Some((&v, _)) => Err(Status::invalid_argument(format!(
            "message in wire format {v}; this node reads format {FORMAT_MSGPACK}: upgrade it"
        ))),
        None => Err(Status::invalid_argument("empty message")),
    }
}

impl<T, U> Codec for WireCodec<T, U>
where
    T: Serialize + Send + 'static,
    U: DeserializeOwned + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = WireEncoder<T>;
    type Decoder = WireDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        WireEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        WireDecoder(PhantomData)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::dispatch::{AssignmentsKind, AssignmentsMessage};

    fn assignments(tasks: Vec<crate::api::Task>) -> AssignmentsMessage {
        AssignmentsMessage {
            kind: AssignmentsKind::Complete,
            updated: tasks,
            removed: vec!["gone".into()],
            ..AssignmentsMessage::incremental()
        }
    }

    fn encoded<T: Serialize>(item: &T) -> Vec<u8> {
        let mut out = vec![FORMAT_MSGPACK];
        item.serialize(&mut rmp_serde::Serializer::new(&mut out).with_struct_map()).unwrap();
        out
    }

    #[test]
    fn a_message_round_trips_and_is_smaller_than_json() {
        let mut task = crate::testing::task("t1", "s1", 3);
        task.node_id = "n1".into();
        let msg = assignments(vec![task.clone(), task]);
        let bytes = encoded(&msg);
        let back: AssignmentsMessage = decode(&bytes).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), serde_json::to_value(&msg).unwrap());
        let json = serde_json::to_vec(&msg).unwrap();
        assert!(bytes.len() < json.len(), "{} bytes against JSON's {}", bytes.len(), json.len());
    }

    #[test]
    fn a_message_it_cannot_read_is_named() {
        let json = serde_json::to_vec(&assignments(vec![])).unwrap();
        let e = decode::<AssignmentsMessage>(&json).unwrap_err();
        assert!(e.message().contains("JSON"), "{}", e.message());
        let mut newer = encoded(&assignments(vec![]));
        newer[0] = 7;
        let e = decode::<AssignmentsMessage>(&newer).unwrap_err();
        assert!(e.message().contains("wire format 7"), "{}", e.message());
        let cut = encoded(&crate::testing::task("t1", "s1", 3));
        let e = decode::<crate::api::Task>(&cut[..cut.len() / 2]).unwrap_err();
        assert!(e.message().contains("malformed message"), "{}", e.message());
        assert!(decode::<crate::api::Task>(&[]).is_err());
    }
}
