//! `${VAR}` interpolation of compose values, as `docker compose` does it: `$VAR`, `${VAR}`, `${VAR:-default}`
//! (unset or empty), `${VAR-default}` (unset), `${VAR:?message}` / `${VAR?message}` (required), `${VAR:+alt}` /
//! `${VAR+alt}`, and `$$` for a literal `$`. Defaults may themselves hold `${…}`. The variables come from the
//! environment, then a `.env` file next to the first compose file.

use super::yaml::{ComposeError, Document};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The variables interpolation reads: the process environment wins over the `.env` file, as in `docker compose`.
#[derive(Debug, Clone, Default)]
pub struct Vars {
    env: BTreeMap<String, String>,
    dotenv: BTreeMap<String, String>,
}

impl Vars {
    pub fn new(env: impl IntoIterator<Item = (String, String)>, dotenv: BTreeMap<String, String>) -> Vars {
        Vars { env: env.into_iter().collect(), dotenv }
    }

    /// The process environment plus `dir/.env` when it exists.
    pub fn from_environment(dir: &Path) -> Result<Vars, ComposeError> {
        let path = dir.join(".env");
        let mut dotenv = BTreeMap::new();
        if path.exists() {
            let iter = dotenvy::from_path_iter(&path)
                .map_err(|e| ComposeError(format!("cannot read {}: {e}", path.display())))?;
            for item in iter {
                let (k, v) = item.map_err(|e| ComposeError(format!("{}: {e}", path.display())))?;
                dotenv.insert(k, v);
            }
        }
        Ok(Vars::new(std::env::vars(), dotenv))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.env.get(name).or_else(|| self.dotenv.get(name)).map(String::as_str)
    }
}

/// What went wrong in one string; the caller adds where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterpolationError {
    Required { name: String, message: String },
    Syntax(String),
}

impl std::fmt::Display for InterpolationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InterpolationError::Required { name, message } if message.is_empty() => {
                write!(f, "required variable {name} is missing a value")
            }
            InterpolationError::Required { name, message } => {
                write!(f, "required variable {name} is missing a value: {message}")
            }
            InterpolationError::Syntax(s) => write!(f, "invalid interpolation format {s:?}"),
        }
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Interpolates one string. `unset` collects the names used without a value and without a default (they become
/// empty, with a warning, as in `docker compose`).
pub fn interpolate_str(s: &str, vars: &Vars, unset: &mut BTreeSet<String>) -> Result<String, InterpolationError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = closing_brace(body).ok_or_else(|| InterpolationError::Syntax(s.to_string()))?;
            out.push_str(&braced(&body[..end], s, vars, unset)?);
            rest = &body[end + 1..];
        } else {
            let n = after.find(|c: char| !is_name_char(c)).unwrap_or(after.len());
            if n == 0 || after.starts_with(|c: char| c.is_ascii_digit()) {
                // A lone `$` (e.g. "cost: 5$") is kept, as compose does.
                out.push('$');
                rest = after;
                continue;
            }
            let name = &after[..n];
            out.push_str(&lookup(name, vars, unset));
            rest = &after[n..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The index of the `}` closing a `${`, skipping nested `${…}` in defaults.
fn closing_brace(body: &str) -> Option<usize> {
    let mut depth = 0usize;
    let bytes = body.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

fn lookup(name: &str, vars: &Vars, unset: &mut BTreeSet<String>) -> String {
    match vars.get(name) {
        Some(v) => v.to_string(),
        None => {
            unset.insert(name.to_string());
            String::new()
        }
    }
}

fn braced(body: &str, whole: &str, vars: &Vars, unset: &mut BTreeSet<String>) -> Result<String, InterpolationError> {
    let n = body.find(|c: char| !is_name_char(c)).unwrap_or(body.len());
    let name = &body[..n];
    if name.is_empty() {
        return Err(InterpolationError::Syntax(whole.to_string()));
    }
    let op = &body[n..];
    let value = vars.get(name);
    let set_nonempty = value.is_some_and(|v| !v.is_empty());
    let (op, arg) = if op.is_empty() {
        return Ok(lookup(name, vars, unset));
    } else if let Some(a) = op.strip_prefix(":-") {
        (":-", a)
    } else if let Some(a) = op.strip_prefix(":?") {
        (":?", a)
    } else if let Some(a) = op.strip_prefix(":+") {
        (":+", a)
    } else if let Some(a) = op.strip_prefix('-') {
        ("-", a)
    } else if let Some(a) = op.strip_prefix('?') {
        ("?", a)
    } else if let Some(a) = op.strip_prefix('+') {
        ("+", a)
    } else {
        return Err(InterpolationError::Syntax(whole.to_string()));
    };
    let mut arg = || interpolate_str(arg, vars, unset);
    Ok(match op {
        ":-" if set_nonempty => value.unwrap_or_default().to_string(),
        ":-" => arg()?,
        "-" => match value {
            Some(v) => v.to_string(),
            None => arg()?,
        },
        ":?" if set_nonempty => value.unwrap_or_default().to_string(),
        "?" if value.is_some() => value.unwrap_or_default().to_string(),
        ":?" | "?" => return Err(InterpolationError::Required { name: name.to_string(), message: arg()? }),
        ":+" if set_nonempty => arg()?,
        "+" if value.is_some() => arg()?,
        _ => String::new(),
    })
}

/// Interpolates every string value of a document (keys are left as written). Returns the names of variables
/// that were not set, for one warning each.
pub fn interpolate(doc: &mut Document, vars: &Vars) -> Result<BTreeSet<String>, ComposeError> {
    let mut unset = BTreeSet::new();
    let mut value = std::mem::take(&mut doc.value);
    let r = walk(&mut value, String::new(), vars, &mut unset);
    doc.value = value;
    r.map_err(|(path, e)| doc.error_at(&path, e))?;
    Ok(unset)
}

/// Keys whose value is a number or a boolean: an interpolated value there gets that type back, as compose casts
/// by its schema (so `replicas: ${N}` prints as `replicas: 3` in `stack config`).
const TYPED_KEYS: &[&str] = &[
    "replicas",
    "parallelism",
    "max_attempts",
    "max_failure_ratio",
    "max_replicas_per_node",
    "retries",
    "published",
    "target",
    "init",
    "read_only",
    "attachable",
    "internal",
    "external",
    "disable",
    "cpus",
    "pids",
];

fn typed(key: &str, s: &str) -> Option<Value> {
    if !TYPED_KEYS.contains(&key) {
        return None;
    }
    match s {
        "true" => return Some(Value::Bool(true)),
        "false" => return Some(Value::Bool(false)),
        _ => {}
    }
    if let Ok(i) = s.parse::<i64>() {
        return Some(Value::from(i));
    }
    s.parse::<f64>().ok().and_then(serde_json::Number::from_f64).map(Value::Number)
}

fn walk(
    v: &mut Value,
    path: String,
    vars: &Vars,
    unset: &mut BTreeSet<String>,
) -> Result<(), (String, InterpolationError)> {
    match v {
        Value::String(s) => {
            let out = interpolate_str(s, vars, unset).map_err(|e| (path.clone(), e))?;
            let key = path.rsplit('.').next().unwrap_or_default();
            let changed = out != *s;
            match typed(key, &out).filter(|_| changed) {
                Some(t) => *v = t,
                None => *s = out,
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                walk(item, format!("{path}[{i}]"), vars, unset)?;
            }
        }
        Value::Object(m) => {
            for (k, item) in m.iter_mut() {
                // Extension fields are for anchors and tools; their text is not interpolated, as compose.
                if k.starts_with("x-") {
                    continue;
                }
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                walk(item, p, vars, unset)?;
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars {
        let env = [("TAG", "1.36"), ("EMPTY", ""), ("NAME", "web")].map(|(k, v)| (k.to_string(), v.to_string()));
        let dotenv = [("TAG", "from-dotenv"), ("PORT", "8080")].map(|(k, v)| (k.to_string(), v.to_string()));
        Vars::new(env, dotenv.into_iter().collect())
    }

    #[test]
    fn forms_as_docker_compose() {
        let v = vars();
        let cases: &[(&str, &str)] = &[
            ("busybox:${TAG}", "busybox:1.36"),
            ("busybox:$TAG", "busybox:1.36"),
            ("${PORT}", "8080"),
            ("${EMPTY:-d}", "d"),
            ("${EMPTY-d}", ""),
            ("${NOPE-d}", "d"),
            ("${NOPE:-${NAME}-x}", "web-x"),
            ("${NAME:+set}", "set"),
            ("${EMPTY:+set}", ""),
            ("${EMPTY+set}", "set"),
            ("$$HOME", "$HOME"),
            ("a $ b", "a $ b"),
            ("${NAME:?missing}", "web"),
        ];
        for (input, want) in cases {
            let mut unset = BTreeSet::new();
            assert_eq!(interpolate_str(input, &v, &mut unset).unwrap(), *want, "{input}");
            assert!(unset.is_empty(), "{input}");
        }
        let mut unset = BTreeSet::new();
        assert_eq!(interpolate_str("x${NOPE}y$ALSO_NOPE", &v, &mut unset).unwrap(), "xy");
        assert_eq!(unset.into_iter().collect::<Vec<_>>(), ["ALSO_NOPE", "NOPE"]);
    }

    #[test]
    fn errors_name_the_variable() {
        let v = vars();
        let mut unset = BTreeSet::new();
        let e = interpolate_str("${DB_PASSWORD:?set it in .env}", &v, &mut unset).unwrap_err();
        assert_eq!(e.to_string(), "required variable DB_PASSWORD is missing a value: set it in .env");
        let e = interpolate_str("${EMPTY:?}", &v, &mut unset).unwrap_err();
        assert_eq!(e.to_string(), "required variable EMPTY is missing a value");
        assert!(interpolate_str("${EMPTY?}", &v, &mut unset).is_ok(), "set but empty satisfies '?'");
        assert!(matches!(interpolate_str("${TAG", &v, &mut unset), Err(InterpolationError::Syntax(_))));
        assert!(matches!(interpolate_str("${TAG!x}", &v, &mut unset), Err(InterpolationError::Syntax(_))));
    }

    #[test]
    fn document_errors_name_file_line_and_variable() {
        let mut d =
            super::super::yaml::parse("c.yml", "services:\n  web:\n    image: \"busybox:${NOTAG:?no tag}\"\n").unwrap();
        let e = interpolate(&mut d, &vars()).unwrap_err();
        assert_eq!(e.0, "c.yml:3:5: services.web.image: required variable NOTAG is missing a value: no tag");
        let mut d =
            super::super::yaml::parse("c.yml", "deploy:\n  replicas: ${N}\n  image: ${N}\n  labels: {a: '7'}\n")
                .unwrap();
        let v = Vars::new([("N".to_string(), "3".to_string())], Default::default());
        interpolate(&mut d, &v).unwrap();
        assert_eq!(d.value["deploy"]["replicas"], 3, "a typed key gets its type back");
        assert_eq!(d.value["deploy"]["image"], "3");
        assert_eq!(d.value["deploy"]["labels"]["a"], "7", "an uninterpolated string stays a string");
    }
}
