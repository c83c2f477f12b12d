//! Join tokens: `SWMTKN-1-<digest>-<secret>`, as SwarmKit makes them.
//!
//! The digest is the SHA-256 of the root CA certificate (DER) in base 36, 50 characters: a joining node checks the
//! CA certificate it downloads against it before trusting it. The secret is 128 random bits in base 36,
//! 25 characters: it admits the node, as a worker or a manager depending on which of the cluster's two tokens it is.

use super::CaError;
use crate::api::{base36, base36_bytes, NodeRole};
use sha2::{Digest, Sha256};

const PREFIX: &str = "SWMTKN";
const VERSION: u32 = 1;
const DIGEST_LEN: usize = 50;
const SECRET_LEN: usize = 25;

/// A parsed join token. `Debug` does not show the secret; `Display` gives the token back.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// The token format version (always 1).
    pub version: u32,
    /// SHA-256 of the root CA certificate's DER, base 36, 50 characters.
    pub ca_digest_b36: String,
    /// 128 random bits, base 36, 25 characters.
    pub secret: String,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken")
            .field("version", &self.version)
            .field("ca_digest_b36", &self.ca_digest_b36)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PREFIX}-{}-{}-{}", self.version, self.ca_digest_b36, self.secret)
    }
}

/// The 256-bit number a base-36 string stands for, big-endian; `None` if it needs more than 256 bits.
/// The caller has checked that every character is 0-9 or a-z.
fn b36_to_256(text: &str) -> Option<[u8; 32]> {
    let mut num = [0u8; 32];
    for c in text.bytes() {
        let mut carry = u32::from(if c.is_ascii_digit() { c - b'0' } else { c - b'a' + 10 });
        for b in num.iter_mut().rev() {
            let cur = u32::from(*b) * 36 + carry;
            *b = cur as u8;
            carry = cur >> 8;
        }
        if carry != 0 {
            return None;
        }
    }
    Some(num)
}

/// The base-36 digest a token carries for a CA certificate (DER).
fn digest_b36(ca_cert_der: &[u8]) -> String {
    base36_bytes(&Sha256::digest(ca_cert_der), DIGEST_LEN)
}

/// The first character of `s` that is not a lowercase base-36 digit, with its position.
fn non_b36(s: &str) -> Option<(usize, char)> {
    s.char_indices().find(|(_, c)| !(c.is_ascii_digit() || c.is_ascii_lowercase()))
}

/// Equality of two byte strings whose time depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

impl JoinToken {
    /// A new token (with a fresh secret) for the CA whose certificate digest is `ca_digest_hex`: SHA-256 of the CA
    /// certificate's DER in hex, as [`super::RootCa::digest`] returns it. A digest that is not 64 hex digits is a
    /// programming error; the token then carries an all-zero digest, which no CA matches, so joins fail closed.
    pub fn generate(ca_digest_hex: &str) -> String {
        let digest = match hex::decode(ca_digest_hex) {
            Ok(d) if d.len() == 32 => d,
            _ => {
                tracing::error!(digest = ca_digest_hex, "join token requested for a malformed CA digest");
                debug_assert!(false, "malformed CA digest {ca_digest_hex:?}");
                vec![0; 32]
            }
        };
        let secret: u128 = rand::random();
        format!("{PREFIX}-{VERSION}-{}-{}", base36_bytes(&digest, DIGEST_LEN), base36(secret, SECRET_LEN))
    }

    /// A new token for the CA certificate `ca_cert_der`.
    pub fn generate_for_ca(ca_cert_der: &[u8]) -> String {
        JoinToken::generate(&hex::encode(Sha256::digest(ca_cert_der)))
    }

    /// Parses a token (surrounding whitespace allowed). Errors say what is wrong and never repeat the secret.
    pub fn parse(token: &str) -> Result<JoinToken, CaError> {
        let bad = |why: String| CaError::InvalidToken(why);
        let token = token.trim();
        if token.is_empty() {
            return Err(bad("the token is empty".into()));
        }
        let parts: Vec<&str> = token.split('-').collect();
        if parts.len() != 4 {
            return Err(bad(format!(
                "expected {PREFIX}-{VERSION}-<CA digest>-<secret>, found {} dash-separated parts",
                parts.len()
            )));
        }
        let (prefix, version, digest, secret) = (parts[0], parts[1], parts[2], parts[3]);
        if prefix != PREFIX {
            let shown: String = prefix.chars().take(12).collect();
            return Err(bad(format!("it starts with {shown:?} instead of {PREFIX:?}")));
        }
        if version != VERSION.to_string() {
            let shown: String = version.chars().take(12).collect();
            return Err(bad(format!("unsupported version {shown:?} (this node understands \"{VERSION}\")")));
        }
        if digest.chars().count() != DIGEST_LEN {
            return Err(bad(format!(
                "the CA digest is {} characters long, expected {DIGEST_LEN}",
                digest.chars().count()
            )));
        }
        if let Some((i, c)) = non_b36(digest) {
            return Err(bad(format!(
                "the CA digest contains {c:?} at position {}; only 0-9 and a-z are allowed",
                i + 1
            )));
        }
        if b36_to_256(digest).is_none() {
            return Err(bad("the CA digest is larger than a SHA-256 value".into()));
        }
        if secret.chars().count() != SECRET_LEN {
            return Err(bad(format!(
                "the secret is {} characters long, expected {SECRET_LEN}",
                secret.chars().count()
            )));
        }
        if let Some((i, _)) = non_b36(secret) {
            return Err(bad(format!("the secret has a character other than 0-9 and a-z at position {}", i + 1)));
        }
        if u128::from_str_radix(secret, 36).is_err() {
            return Err(bad("the secret is larger than 128 bits".into()));
        }
        Ok(JoinToken { version: VERSION, ca_digest_b36: digest.into(), secret: secret.into() })
    }

    /// Whether the token's digest is that of this CA certificate (DER): the check a joining node makes on the CA
    /// certificate it downloaded before trusting it.
    pub fn matches_ca(&self, ca_cert_der: &[u8]) -> bool {
        digest_b36(ca_cert_der) == self.ca_digest_b36
    }

    /// The CA digest the token carries, as SHA-256 hex (what `RootCa::digest` returns).
    pub fn ca_digest_hex(&self) -> String {
        // `parse` checked that the digest fits in 256 bits.
        b36_to_256(&self.ca_digest_b36).map(hex::encode).unwrap_or_default()
    }

    /// Whether two tokens are the same: same CA digest and same secret, the secret compared in constant time.
    pub fn same_as(&self, other: &JoinToken) -> bool {
        let secret = constant_time_eq(self.secret.as_bytes(), other.secret.as_bytes());
        let digest = self.ca_digest_b36 == other.ca_digest_b36;
        secret & digest & (self.version == other.version)
    }

    /// The role a presented token admits a node as, checked (in constant time) against the cluster's current
    /// worker and manager tokens. A malformed token is [`CaError::InvalidToken`]; a well-formed one that is neither
    /// is [`CaError::WrongToken`].
    pub fn role_for(presented: &str, worker_token: &str, manager_token: &str) -> Result<NodeRole, CaError> {
        let presented = JoinToken::parse(presented)?;
        let is = |issued: &str| JoinToken::parse(issued).map(|t| presented.same_as(&t)).unwrap_or(false);
        let (worker, manager) = (is(worker_token), is(manager_token));
        if manager {
            Ok(NodeRole::Manager)
        } else if worker {
            Ok(NodeRole::Worker)
        } else {
            Err(CaError::WrongToken)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::RootCa;

    #[test]
    fn generate_parse_round_trip() {
        let ca = RootCa::generate().unwrap();
        let t = JoinToken::generate(&ca.digest());
        assert_eq!(t.len(), "SWMTKN-1-".len() + 50 + 1 + 25);
        let p = JoinToken::parse(&format!("  {t}\n")).unwrap();
        assert_eq!(p.version, 1);
        assert_eq!(p.ca_digest_b36.len(), 50);
        assert_eq!(p.secret.len(), 25);
        assert_eq!(p.to_string(), t);
        assert_eq!(b36_to_256(&p.ca_digest_b36).unwrap().to_vec(), hex::decode(ca.digest()).unwrap());
        assert_eq!(JoinToken::generate_for_ca(ca.cert_der())[..59], t[..59], "same digest part");
        let dbg = format!("{p:?}");
        assert!(!dbg.contains(&p.secret) && dbg.contains("redacted"), "{dbg}");
        assert_ne!(JoinToken::parse(&JoinToken::generate(&ca.digest())).unwrap().secret, p.secret);
    }

    #[test]
    fn the_digest_pins_the_ca() {
        let ca = RootCa::generate().unwrap();
        let other = RootCa::generate().unwrap();
        let p = JoinToken::parse(&JoinToken::generate(&ca.digest())).unwrap();
        assert!(p.matches_ca(ca.cert_der()));
        assert_eq!(p.ca_digest_hex(), ca.digest());
        assert!(!p.matches_ca(other.cert_der()));
        let mut one_bit_off = ca.cert_der().to_vec();
        one_bit_off[100] ^= 1;
        assert!(!p.matches_ca(&one_bit_off));
    }

    #[test]
    fn role_for_compares_against_both_tokens() {
        let ca = RootCa::generate().unwrap();
        let (worker, manager) = (JoinToken::generate(&ca.digest()), JoinToken::generate(&ca.digest()));
        assert_eq!(JoinToken::role_for(&worker, &worker, &manager).unwrap(), NodeRole::Worker);
        assert_eq!(JoinToken::role_for(&manager, &worker, &manager).unwrap(), NodeRole::Manager);
        let stranger = JoinToken::generate(&ca.digest());
        assert!(matches!(JoinToken::role_for(&stranger, &worker, &manager), Err(CaError::WrongToken)));
        // Right secret, another CA's digest.
        let other = RootCa::generate().unwrap();
        let secret = &worker[worker.len() - 25..];
        let forged = format!("{}{secret}", &JoinToken::generate(&other.digest())[..60]);
        assert!(matches!(JoinToken::role_for(&forged, &worker, &manager), Err(CaError::WrongToken)));
        let e = JoinToken::role_for("SWMTKN-1-x", &worker, &manager).unwrap_err();
        assert!(matches!(e, CaError::InvalidToken(_)), "{e}");
        assert_eq!(
            CaError::WrongToken.to_string(),
            "invalid join token: it is not a current join token of this cluster"
        );
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn malformed_tokens_say_what_is_wrong() {
        let good = JoinToken::generate(&"ab".repeat(32));
        let digest = &good[9..59];
        let secret = &good[60..];
        assert!(JoinToken::parse(&good).is_ok());
        let upper_secret = format!("{}A", &secret[..24]);
        let cases: Vec<(String, &str)> = vec![
            ("".into(), "the token is empty"),
            ("   ".into(), "the token is empty"),
            ("nonsense".into(), "found 1 dash-separated parts"),
            (format!("{good}-extra"), "found 5 dash-separated parts"),
            (good.replacen("SWMTKN", "SWMTKX", 1), "starts with \"SWMTKX\" instead of \"SWMTKN\""),
            (good.replacen("-1-", "-2-", 1), "unsupported version \"2\""),
            (format!("SWMTKN-1-{}-{secret}", &digest[1..]), "the CA digest is 49 characters long, expected 50"),
            (format!("SWMTKN-1-{digest}0-{secret}"), "the CA digest is 51 characters long"),
            (format!("SWMTKN-1-{}_-{secret}", &digest[..49]), "the CA digest contains '_' at position 50"),
            (format!("SWMTKN-1-Z{}-{secret}", &digest[1..]), "the CA digest contains 'Z' at position 1"),
            (format!("SWMTKN-1-{}-{secret}", "z".repeat(50)), "larger than a SHA-256 value"),
            (format!("SWMTKN-1-{digest}-{}", &secret[1..]), "the secret is 24 characters long, expected 25"),
            (format!("SWMTKN-1-{digest}-"), "the secret is 0 characters long"),
            (
                format!("SWMTKN-1-{digest}-{upper_secret}"),
                "the secret has a character other than 0-9 and a-z at position 25",
            ),
            (format!("SWMTKN-1-{digest}-{}", "z".repeat(25)), "the secret is larger than 128 bits"),
        ];
        for (t, want) in &cases {
            let e = JoinToken::parse(t).unwrap_err();
            assert!(matches!(e, CaError::InvalidToken(_)));
            let e = e.to_string();
            assert!(e.starts_with("invalid join token: "), "{e}");
            assert!(e.contains(want), "{t:?}: got {e:?}, want {want:?}");
            assert!(!e.contains(&secret[..20]), "the secret leaked into {e:?}");
        }
    }

    #[test]
    fn base36_of_bytes_matches_u128_and_decodes_back() {
        let n: u128 = 0x0123_4567_89ab_cdef_0011_2233_4455_6677;
        assert_eq!(base36_bytes(&n.to_be_bytes(), 25), base36(n, 25));
        assert_eq!(base36_bytes(&[0; 32], 50), "0".repeat(50));
        let max = [0xffu8; 32];
        let text = base36_bytes(&max, 50);
        assert_eq!(text.len(), 50);
        assert_eq!(b36_to_256(&text), Some(max));
        let digest: [u8; 32] = Sha256::digest(b"x").into();
        assert_eq!(b36_to_256(&base36_bytes(&digest, 50)), Some(digest));
    }
}
