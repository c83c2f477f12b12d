//! Placement constraints: `node.role==manager`, `node.labels.zone!=east`, `engine.labels.disk==ssd`.
//!
//! Keys (as Docker Swarm): `node.id`, `node.hostname`, `node.role`, `node.platform.os`, `node.platform.arch`,
//! `node.labels.<k>`, `engine.labels.<k>`. Operators `==` and `!=`. Values compare case-insensitively, except labels'
//! values which compare exactly (as SwarmKit).
//!
//! A spec holds constraints already parsed: they are parsed once, when the spec is decoded, so a bad expression
//! is refused at the door and no component can meet one it cannot evaluate (and skip it, failing open). On the
//! wire and on disk a constraint is its expression text, as in Swarm.

use crate::api::Node;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Constraint {
    pub key: String,
    pub op: ConstraintOp,
    pub value: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConstraintOp {
    Eq,
    NotEq,
}

/// A constraint expression that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid constraint {expr:?}: {reason}")]
pub struct ConstraintError {
    pub expr: String,
    pub reason: String,
}

impl Constraint {
    pub fn parse(expr: &str) -> Result<Constraint, ConstraintError> {
        let err = |reason: &str| ConstraintError { expr: expr.to_string(), reason: reason.to_string() };
        let (key, op, value) = if let Some((k, v)) = expr.split_once("!=") {
            (k, ConstraintOp::NotEq, v)
        } else if let Some((k, v)) = expr.split_once("==") {
            (k, ConstraintOp::Eq, v)
        } else {
            return Err(err("expected KEY==VALUE or KEY!=VALUE"));
        };
        let key = key.trim();
        let value = value.trim();
        if key.is_empty() {
            return Err(err("key is empty"));
        }
        if value.is_empty() {
            return Err(err("value is empty"));
        }
        if value.contains("==") || value.contains("!=") {
            return Err(err("more than one operator"));
        }
        let known = matches!(
            key.to_ascii_lowercase().as_str(),
            "node.id" | "node.hostname" | "node.role" | "node.platform.os" | "node.platform.arch"
        ) || label_key(key, "node.labels.").is_some()
            || label_key(key, "engine.labels.").is_some();
        if !known {
            return Err(err(
                "unknown key (expected node.id, node.hostname, node.role, node.platform.os, node.platform.arch, \
                 node.labels.<name> or engine.labels.<name>)",
            ));
        }
        Ok(Constraint { key: key.to_string(), op, value: value.to_string() })
    }

    /// Whether `node` satisfies the constraint. A missing label never equals anything.
    pub fn matches(&self, node: &Node) -> bool {
        let lower = self.key.to_ascii_lowercase();
        let (actual, exact): (Option<String>, bool) = match lower.as_str() {
            "node.id" => (Some(node.id.clone()), false),
            "node.hostname" => (Some(node.description.hostname.clone()), false),
            "node.role" => (Some(node.role.to_string()), false),
            "node.platform.os" => (Some(node.description.platform.os.clone()), false),
            "node.platform.arch" => (Some(node.description.platform.architecture.clone()), false),
            _ => {
                if let Some(k) = label_key(&self.key, "node.labels.") {
                    (node.spec.annotations.labels.get(k).cloned(), true)
                } else if let Some(k) = label_key(&self.key, "engine.labels.") {
                    (node.description.engine.labels.get(k).cloned(), true)
                } else {
                    (None, true)
                }
            }
        };
        let equal = match actual {
            Some(a) if exact => a == self.value,
            Some(a) => a.eq_ignore_ascii_case(&self.value),
            None => false,
        };
        match self.op {
            ConstraintOp::Eq => equal,
            ConstraintOp::NotEq => !equal,
        }
    }
}

fn label_key<'a>(key: &'a str, prefix: &str) -> Option<&'a str> {
    if key.len() > prefix.len() && key[..prefix.len()].eq_ignore_ascii_case(prefix) {
        Some(&key[prefix.len()..])
    } else {
        None
    }
}

impl std::fmt::Display for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let op = match self.op {
            ConstraintOp::Eq => "==",
            ConstraintOp::NotEq => "!=",
        };
        write!(f, "{}{op}{}", self.key, self.value)
    }
}

impl std::str::FromStr for Constraint {
    type Err = ConstraintError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Constraint::parse(s)
    }
}

impl TryFrom<String> for Constraint {
    type Error = ConstraintError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Constraint::parse(&s)
    }
}

impl From<Constraint> for String {
    fn from(c: Constraint) -> String {
        c.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::node;

    #[test]
    fn parses_and_matches() {
        let mut n = node("n1", "host-a");
        n.spec.annotations.labels.insert("zone".into(), "east".into());
        n.description.engine.labels.insert("disk".into(), "ssd".into());
        let ok = |e: &str| Constraint::parse(e).unwrap().matches(&n);
        assert!(ok("node.hostname==HOST-A"));
        assert!(ok("node.role==manager"));
        assert!(!ok("node.role!=manager"));
        assert!(ok("node.labels.zone==east"));
        assert!(!ok("node.labels.zone==East"));
        assert!(ok("node.labels.rack!=r1"));
        assert!(!ok("node.labels.rack==r1"));
        assert!(ok("engine.labels.disk==ssd"));
        assert!(ok("node.platform.os==linux"));
        assert!(ok("node.id==n1"));
    }

    #[test]
    fn travels_as_its_expression_and_refuses_bad_ones_when_decoded() {
        let c: Constraint = serde_json::from_str("\"node.labels.zone != east\"").unwrap();
        assert_eq!(serde_json::to_string(&c).unwrap(), "\"node.labels.zone!=east\"");
        let err = serde_json::from_str::<Constraint>("\"node.colour==red\"").unwrap_err().to_string();
        assert!(err.contains("invalid constraint \"node.colour==red\": unknown key"), "{err}");
    }

    #[test]
    fn rejects_malformed() {
        for bad in ["node.role", "==x", "node.role==", "node.colour==red", "node.role==a==b"] {
            assert!(Constraint::parse(bad).is_err(), "{bad}");
        }
    }
}
