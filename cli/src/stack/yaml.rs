//! Reading one compose file: YAML text into a JSON-like value (anchors and aliases resolved by saphyr, merge keys
//! `<<` applied here, as YAML 1.1 and the compose-spec define them) plus the line and column of every key, so a
//! later error can name where in the file it is.

use serde_json::{Map, Number, Value};
use std::collections::HashMap;
use std::path::Path;

use saphyr::{LoadableYamlNode, MarkedYamlOwned, ScalarOwned, YamlDataOwned};

/// A position in a file: 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

/// One file's content and where each of its keys and list items is, by path (`services.web.deploy`,
/// `services.web.ports[0]`).
#[derive(Debug, Clone)]
pub struct Document {
    pub file: String,
    pub value: Value,
    positions: HashMap<String, Pos>,
}

/// A compose file that cannot be used; the message names the file and, where known, the line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ComposeError(pub String);

impl Document {
    /// Where `path` (or its nearest known parent) is written.
    pub fn pos(&self, path: &str) -> Option<Pos> {
        let mut p = path;
        loop {
            if let Some(pos) = self.positions.get(p) {
                return Some(*pos);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }

    /// `file:line:col: path: message` (the position left out when the path is not from this file).
    pub fn error_at(&self, path: &str, msg: impl std::fmt::Display) -> ComposeError {
        let path_text = if path.is_empty() { String::new() } else { format!("{path}: ") };
        match self.pos(path) {
            Some(p) => ComposeError(format!("{}:{}:{}: {path_text}{msg}", self.file, p.line, p.col)),
            None => ComposeError(format!("{}: {path_text}{msg}", self.file)),
        }
    }
}

/// Parses `text` (read from `file`) into a [`Document`]; an empty file is an empty mapping.
pub fn parse(file: &str, text: &str) -> Result<Document, ComposeError> {
    let docs = MarkedYamlOwned::load_from_str(text).map_err(|e| {
        let m = e.marker();
        ComposeError(format!("{file}:{}:{}: invalid YAML: {}", m.line(), m.col() + 1, e.info()))
    })?;
    if docs.len() > 1 {
        return Err(ComposeError(format!("{file}: expected one YAML document, found {}", docs.len())));
    }
    let mut positions = HashMap::new();
    let value = match docs.into_iter().next() {
        Some(root) => convert(file, &root, String::new(), &mut positions)?,
        None => Value::Object(Map::new()),
    };
    let value = if value.is_null() { Value::Object(Map::new()) } else { value };
    if !value.is_object() {
        return Err(ComposeError(format!("{file}: top-level object must be a mapping")));
    }
    Ok(Document { file: file.to_string(), value, positions })
}

/// Reads and parses a file.
pub fn read(path: &Path) -> Result<Document, ComposeError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ComposeError(format!("cannot read {shown}: {e}")))?;
    parse(&shown, &text)
}

fn pos_of(n: &MarkedYamlOwned) -> Pos {
    Pos { line: n.span.start.line(), col: n.span.start.col() + 1 }
}

fn scalar(s: &ScalarOwned) -> Value {
    match s {
        ScalarOwned::Null => Value::Null,
        ScalarOwned::Boolean(b) => Value::Bool(*b),
        ScalarOwned::Integer(i) => Value::Number((*i).into()),
        ScalarOwned::FloatingPoint(f) => Number::from_f64(f.into_inner()).map(Value::Number).unwrap_or(Value::Null),
        ScalarOwned::String(s) => Value::String(s.clone()),
    }
}

/// A mapping key as text (compose keys are strings; `80: …` style keys are kept as their text).
fn key_text(file: &str, k: &MarkedYamlOwned) -> Result<String, ComposeError> {
    match &k.data {
        YamlDataOwned::Value(s) => Ok(match scalar(s) {
            Value::String(s) => s,
            Value::Null => "null".into(),
            other => other.to_string(),
        }),
        YamlDataOwned::Representation(s, _, _) => Ok(s.clone()),
        YamlDataOwned::Tagged(_, inner) => key_text(file, inner),
        _ => {
            let p = pos_of(k);
            Err(ComposeError(format!("{file}:{}:{}: a mapping key must be a scalar", p.line, p.col)))
        }
    }
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn convert(
    file: &str,
    n: &MarkedYamlOwned,
    path: String,
    positions: &mut HashMap<String, Pos>,
) -> Result<Value, ComposeError> {
    Ok(match &n.data {
        YamlDataOwned::Value(s) => scalar(s),
        YamlDataOwned::Representation(s, _, _) => Value::String(s.clone()),
        YamlDataOwned::Tagged(_, inner) => convert(file, inner, path, positions)?,
        YamlDataOwned::Sequence(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let p = format!("{path}[{i}]");
                positions.insert(p.clone(), pos_of(item));
                out.push(convert(file, item, p, positions)?);
            }
            Value::Array(out)
        }
        YamlDataOwned::Mapping(entries) => {
            let mut out = Map::new();
            let mut merges = Vec::new();
            for (k, v) in entries {
                let key = key_text(file, k)?;
                if key == "<<" {
                    merges.push(v);
                    continue;
                }
                let p = child(&path, &key);
                positions.insert(p.clone(), pos_of(k));
                let v = convert(file, v, p, positions)?;
                out.insert(key, v);
            }
            // Merge keys: explicit keys win, then the merged mappings in the order given.
            for m in merges {
                let sources: Vec<&MarkedYamlOwned> = match &m.data {
                    YamlDataOwned::Sequence(items) => items.iter().collect(),
                    _ => vec![m],
                };
                for src in sources {
                    let YamlDataOwned::Mapping(entries) = &src.data else {
                        let p = pos_of(src);
                        return Err(ComposeError(format!(
                            "{file}:{}:{}: a merge key '<<' must name a mapping or a list of mappings",
                            p.line, p.col
                        )));
                    };
                    for (k, v) in entries {
                        let key = key_text(file, k)?;
                        if key == "<<" || out.contains_key(&key) {
                            continue;
                        }
                        let p = child(&path, &key);
                        positions.insert(p.clone(), pos_of(k));
                        let v = convert(file, v, p, positions)?;
                        out.insert(key, v);
                    }
                }
            }
            Value::Object(out)
        }
        YamlDataOwned::Alias(_) => {
            let p = pos_of(n);
            return Err(ComposeError(format!("{file}:{}:{}: unknown alias", p.line, p.col)));
        }
        YamlDataOwned::BadValue => {
            let p = pos_of(n);
            return Err(ComposeError(format!("{file}:{}:{}: invalid value", p.line, p.col)));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn anchors_aliases_and_merge_keys() {
        let text = "\
x-defaults: &defaults
  image: busybox
  environment:
    A: \"1\"
services:
  web:
    <<: *defaults
    image: httpd
  db:
    <<: [*defaults]
    command: [\"sleep\", 10]
";
        let d = parse("c.yml", text).unwrap();
        assert_eq!(d.value["services"]["web"], json!({"image": "httpd", "environment": {"A": "1"}}));
        assert_eq!(d.value["services"]["db"]["image"], "busybox");
        assert_eq!(d.value["services"]["db"]["command"], json!(["sleep", 10]));
        assert_eq!(d.pos("services.web.image"), Some(Pos { line: 8, col: 5 }));
        assert_eq!(d.pos("services.db.command[1]").unwrap().line, 11);
        // An unknown path falls back to its nearest known parent.
        assert_eq!(d.pos("services.web.nope.deeper"), Some(Pos { line: 6, col: 3 }));
    }

    #[test]
    fn bad_yaml_names_file_and_line() {
        let e = parse("c.yml", "services:\n  web: [a\n").unwrap_err();
        assert!(e.0.starts_with("c.yml:"), "{e}");
        assert!(e.0.contains("invalid YAML"), "{e}");
        let e = parse("c.yml", "- a\n- b\n").unwrap_err();
        assert_eq!(e.0, "c.yml: top-level object must be a mapping");
        assert!(parse("c.yml", "").unwrap().value.as_object().unwrap().is_empty());
    }
}
