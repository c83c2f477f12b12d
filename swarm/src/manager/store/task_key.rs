//! A task's id as the store's task map and task indexes hold it.
//!
//! Ids that Shoal makes ([`crate::api::new_id`]: 25 base-36 digits of a 128-bit number) are held as that number,
//! inside the tree node. A tree of a million `Arc<str>` ids read each id it compared from the heap (a cache miss
//! each, four per node visited), and copying a shared node for a write touched each id's reference count: a
//! random lookup took about 1.5 µs, a write to a node a reader shares about 6.5 µs. Held as numbers: about 1.0 µs
//! and 3.9 µs. Any other id (an older release's, a test's) is kept as text.
//!
//! The order is the ids' text order either way (the digits are fixed in number and `0`–`9` sort before `a`–`z`,
//! in ASCII as in value), so listings, pages and snapshots keep the order they had.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::sync::Arc;

/// How many digits a packed id has.
const DIGITS: usize = 25;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum TaskKey {
    /// A 25-digit base-36 id below 2^128, as two halves (a `u128` would align the key, and the tree node, to 16
    /// bytes).
    Packed {
        hi: u64,
        lo: u64,
    },
    Text(Arc<str>),
}

impl TaskKey {
    /// The key of `id`. The same id always gives the same variant, so equal keys are equal ids.
    pub(super) fn of(id: &str) -> TaskKey {
        match packed(id) {
            Some(n) => TaskKey::Packed { hi: (n >> 64) as u64, lo: n as u64 },
            None => TaskKey::Text(Arc::from(id)),
        }
    }

    /// The id as text (rendered again for a packed id: only a comparison with a text id needs it).
    fn text(&self) -> Cow<'_, str> {
        match self {
            TaskKey::Packed { hi, lo } => {
                Cow::Owned(crate::api::base36((u128::from(*hi) << 64) | u128::from(*lo), DIGITS))
            }
            TaskKey::Text(s) => Cow::Borrowed(s),
        }
    }
}

/// The number `id` writes, when it is exactly 25 lowercase base-36 digits of a number below 2^128 (the text form
/// that renders back to `id`; `from_str_radix` alone would also take upper case and a sign).
fn packed(id: &str) -> Option<u128> {
    let digits = id.len() == DIGITS && id.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase());
    digits.then(|| u128::from_str_radix(id, 36).ok()).flatten()
}

impl Ord for TaskKey {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (TaskKey::Packed { hi: a, lo: b }, TaskKey::Packed { hi: c, lo: d }) => (a, b).cmp(&(c, d)),
            (TaskKey::Text(a), TaskKey::Text(b)) => a.cmp(b),
            _ => self.text().cmp(&other.text()),
        }
    }
}

impl PartialOrd for TaskKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shoal_ids_are_packed_and_others_kept_as_text() {
        let id = crate::api::new_id();
        assert!(matches!(TaskKey::of(&id), TaskKey::Packed { .. }));
        assert_eq!(TaskKey::of(&id).text(), id);
        let upper = format!("{}A", "0".repeat(DIGITS - 1));
        let dash = format!("{}-", "0".repeat(DIGITS - 1));
        let long = "0".repeat(DIGITS + 1);
        // 25 digits, but above 2^128.
        let above = "z".repeat(DIGITS);
        let signed = format!("+{}", "0".repeat(DIGITS - 1));
        for other in ["t1", "", &upper, &dash, &long, &above, &signed] {
            assert_eq!(TaskKey::of(other), TaskKey::Text(Arc::from(other)), "{other}");
        }
        let max = crate::api::base36(u128::MAX, DIGITS);
        assert!(matches!(TaskKey::of(&max), TaskKey::Packed { .. }));
        assert_eq!(TaskKey::of(&max).text(), max);
    }

    #[test]
    fn keys_sort_as_their_ids_do() {
        let mut ids: Vec<String> = (0..200).map(|_| crate::api::new_id()).collect();
        ids.extend(
            ["t1", "a", "zz", "0", "1234", "zzzzzzzzzzzzzzzzzzzzzzzzz", "00000000000000000000000000"].map(String::from),
        );
        ids.push(crate::api::base36(0, DIGITS));
        ids.push(crate::api::base36(u128::MAX, DIGITS));
        let mut by_key: Vec<&String> = ids.iter().collect();
        by_key.sort_by_key(|id| TaskKey::of(id));
        let mut by_text: Vec<&String> = ids.iter().collect();
        by_text.sort();
        assert_eq!(by_key, by_text);
        for a in &ids {
            for b in ids.iter().step_by(7) {
                assert_eq!(TaskKey::of(a).cmp(&TaskKey::of(b)), a.cmp(b), "{a} against {b}");
                assert_eq!(TaskKey::of(a) == TaskKey::of(b), a == b);
            }
        }
    }
}
