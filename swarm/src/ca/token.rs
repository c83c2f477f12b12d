//! Join tokens: `SWMTKN-1-<digest>-<secret>`. The digest (SHA-256 of the root CA certificate, base 36, 50 chars)
//! lets a joining node pin the CA it downloads; the secret (128 random bits, base 36, 25 chars) admits it.

use super::CaError;
use crate::api::base36;

const PREFIX: &str = "SWMTKN";
const VERSION: &str = "1";
const DIGEST_LEN: usize = 50;
const SECRET_LEN: usize = 25;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub version: u32,
    pub ca_digest_b36: String,
    pub secret: String,
}

/// Base 36 of a big-endian byte string, left-padded to `width`.
fn base36_bytes(bytes: &[u8], width: usize) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut num: Vec<u8> = bytes.to_vec();
    let mut out = Vec::new();
    while num.iter().any(|&b| b != 0) {
        let mut rem = 0u32;
        for b in num.iter_mut() {
            let cur = (rem << 8) | *b as u32;
            *b = (cur / 36) as u8;
            rem = cur % 36;
        }
        out.push(DIGITS[rem as usize]);
    }
    while out.len() < width {
        out.push(b'0');
    }
    out.reverse();
    String::from_utf8(out).expect("ascii digits")
}

fn is_b36(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
}

impl JoinToken {
    /// A new token for the CA whose certificate digest is `ca_digest_hex` (as `RootCa::digest`).
    pub fn generate(ca_digest_hex: &str) -> String {
        let digest = hex::decode(ca_digest_hex).unwrap_or_default();
        let secret: u128 = rand::random();
        format!("{PREFIX}-{VERSION}-{}-{}", base36_bytes(&digest, DIGEST_LEN), base36(secret, SECRET_LEN))
    }

    pub fn parse(token: &str) -> Result<JoinToken, CaError> {
        let bad = |why: &str| CaError::InvalidToken(why.to_string());
        let parts: Vec<&str> = token.trim().split('-').collect();
        if parts.len() != 4 {
            return Err(bad("expected SWMTKN-1-<digest>-<secret>"));
        }
        if parts[0] != PREFIX {
            return Err(bad("it does not start with SWMTKN"));
        }
        if parts[1] != VERSION {
            return Err(bad(&format!("unsupported token version {:?}", parts[1])));
        }
        if parts[2].len() != DIGEST_LEN || !is_b36(parts[2]) {
            return Err(bad(&format!("the CA digest must be {DIGEST_LEN} base-36 characters")));
        }
        if parts[3].len() != SECRET_LEN || !is_b36(parts[3]) {
            return Err(bad(&format!("the secret must be {SECRET_LEN} base-36 characters")));
        }
        Ok(JoinToken { version: 1, ca_digest_b36: parts[2].into(), secret: parts[3].into() })
    }

    /// Whether the token's digest names this CA certificate (DER).
    pub fn matches_ca(&self, ca_cert_der: &[u8]) -> bool {
        use sha2::{Digest, Sha256};
        base36_bytes(&Sha256::digest(ca_cert_der), DIGEST_LEN) == self.ca_digest_b36
    }

    /// Compares a presented token with an issued one in constant time.
    pub fn same_secret(presented: &str, issued: &str) -> bool {
        let (a, b) = (presented.as_bytes(), issued.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::RootCa;

    #[test]
    fn round_trip_and_pinning() {
        let ca = RootCa::generate().unwrap();
        let other = RootCa::generate().unwrap();
        let t = JoinToken::generate(&ca.digest());
        assert!(t.starts_with("SWMTKN-1-"));
        let p = JoinToken::parse(&t).unwrap();
        assert_eq!(p.ca_digest_b36.len(), 50);
        assert_eq!(p.secret.len(), 25);
        assert!(p.matches_ca(&crate::ca::root::cert_der(&ca.cert_pem).unwrap()));
        assert!(!p.matches_ca(&crate::ca::root::cert_der(&other.cert_pem).unwrap()));
        assert!(JoinToken::same_secret(&t, &t));
        assert!(!JoinToken::same_secret(&t, &JoinToken::generate(&ca.digest())));
    }

    #[test]
    fn malformed_tokens_say_what_is_wrong() {
        let good = JoinToken::generate(&"ab".repeat(32));
        let cases = [
            ("nonsense", "expected SWMTKN"),
            (&good.replacen("SWMTKN", "XWMTKN", 1)[..], "does not start"),
            (&good.replacen("-1-", "-2-", 1)[..], "version"),
            (&good[..good.len() - 1], "secret"),
        ];
        for (t, want) in cases {
            let e = JoinToken::parse(t).unwrap_err().to_string();
            assert!(e.contains(want), "{t}: {e}");
        }
    }

    #[test]
    fn base36_of_bytes_matches_u128() {
        let n: u128 = 0x0123_4567_89ab_cdef_0011_2233_4455_6677;
        assert_eq!(base36_bytes(&n.to_be_bytes(), 25), base36(n, 25));
    }
}
