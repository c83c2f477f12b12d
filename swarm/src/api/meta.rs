//! Bookkeeping every object carries: its version (Raft index of its last write) and times.

use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime};

/// Version and timestamps of a stored object. `version` is the Raft log index of the write that last changed
/// the object; an update must carry the version it read, or the store refuses it ("update out of sequence").
/// The times are the proposing manager's clock: for display only. What must not depend on a manager's clock
/// (which task of a slot is newest) orders by `created_index`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    #[serde(default)]
    pub version: u64,
    /// The Raft log index of the write that created the object, set by the store when it applies the create
    /// (0 for objects stored before it was recorded).
    #[serde(default)]
    pub created_index: u64,
    #[serde(default)]
    pub created_at: Timestamp,
    #[serde(default)]
    pub updated_at: Timestamp,
}

/// A point in time, written as RFC 3339 in JSON (as Docker prints it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub SystemTime);

impl Default for Timestamp {
    fn default() -> Self {
        Timestamp(SystemTime::UNIX_EPOCH)
    }
}

impl Meta {
    /// The object's place in creation order: by the Raft index that created it (every replica agrees on it,
    /// whatever the clocks), then by its last write for objects stored before creation indexes were recorded.
    pub fn creation_order(&self) -> (u64, u64) {
        (self.created_index, self.version)
    }
}

impl Timestamp {
    pub fn now() -> Self {
        Timestamp(SystemTime::now())
    }

    /// Time elapsed since this timestamp (zero if it is in the future).
    pub fn elapsed(&self) -> Duration {
        SystemTime::now().duration_since(self.0).unwrap_or_default()
    }

    pub fn is_zero(&self) -> bool {
        self.0 == SystemTime::UNIX_EPOCH
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", humantime::format_rfc3339_nanos(self.0))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_rfc3339(&s)
            .map(Timestamp)
            .map_err(|e| serde::de::Error::custom(format!("invalid timestamp {s:?}: {e}")))
    }
}

/// A duration written as Go/Docker-style text in JSON ("5s", "1m30s"), parsed with `humantime`.
pub mod duration_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&super::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

/// Parses a duration as Docker does ("10s", "1m30s", "500ms", "0"); a bare "0" means zero.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(t).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// Formats a duration compactly ("5s", "1m30s", "0s").
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    humantime::format_duration(d).to_string().replace(' ', "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip() {
        for (text, d) in [("5s", 5_000), ("1m30s", 90_000), ("250ms", 250), ("0", 0)] {
            let parsed = parse_duration(text).unwrap();
            assert_eq!(parsed, Duration::from_millis(d));
            assert_eq!(parse_duration(&format_duration(parsed)).unwrap(), parsed);
        }
        assert!(parse_duration("five").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn timestamps_serialize_as_rfc3339() {
        let t = Timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(86_400));
        let j = serde_json::to_string(&t).unwrap();
        assert_eq!(j, "\"1970-01-02T00:00:00.000000000Z\"");
        assert_eq!(serde_json::from_str::<Timestamp>(&j).unwrap(), t);
    }
}
