//! How Raft data is written to disk: a format byte, then JSON. The byte lets a later release read old files and
//! migrate; a file from a newer release is refused with a message rather than misread.

use serde::{de::DeserializeOwned, Serialize};

/// The on-disk format this release writes.
pub const FORMAT_VERSION: u8 = 1;

/// A value on disk that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The value was written by a format this release does not know.
    #[error("unsupported format version {0} (this shoald reads version {FORMAT_VERSION}; was it written by a newer release?)")]
    UnsupportedVersion(u8),
    /// The value is empty.
    #[error("empty value")]
    Empty,
    /// The bytes are not the JSON the format says.
    #[error("malformed value: {0}")]
    Malformed(#[from] serde_json::Error),
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![FORMAT_VERSION];
    serde_json::to_writer(&mut out, value).expect("serializing plain data to a Vec cannot fail");
    out
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    match bytes.split_first() {
        None => Err(CodecError::Empty),
        Some((&FORMAT_VERSION, rest)) => Ok(serde_json::from_slice(rest)?),
        Some((&v, _)) => Err(CodecError::UnsupportedVersion(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_unknown_versions() {
        let bytes = encode(&vec![1u32, 2, 3]);
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(decode::<Vec<u32>>(&bytes).unwrap(), vec![1, 2, 3]);
        let mut newer = bytes.clone();
        newer[0] = 9;
        assert!(matches!(decode::<Vec<u32>>(&newer), Err(CodecError::UnsupportedVersion(9))));
        assert!(matches!(decode::<Vec<u32>>(&[]), Err(CodecError::Empty)));
        assert!(matches!(decode::<Vec<u32>>(&bytes[..3]), Err(CodecError::Malformed(_))));
    }
}
