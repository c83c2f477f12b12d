//! `--format` templates: Docker's Go-template formats (`{{.Name}}`, `{{json .}}`, `table {{.ID}}\t{{.Name}}`),
//! rendered with the `gtmpl` crate (Go's `text/template` language) plus the functions Docker adds (`json`,
//! `join`, `split`, `lower`, `upper`, `title`, `pad`, `truncate`).
//!
//! Values reach templates as JSON: listings build one object per row with Docker's field names; `inspect`
//! objects are converted with [`go_names`] so `{{.ID}}` and `{{json .Spec}}` work as they do with Docker.

use gtmpl::error::ExecError;
use gtmpl::{FuncError, Value};
use std::collections::HashMap;

/// A `--format` value that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The template text does not parse.
    #[error("template parsing error: {0}")]
    Parse(String),
    /// The template asks for a field the value does not have.
    #[error("template: executing \"\" at <.{0}>: can't evaluate field {0}")]
    NoField(String),
    /// Any other failure while rendering (a function's error, a bad pipeline).
    #[error("template: executing \"\": {0}")]
    Exec(String),
}

/// A parsed `--format` template. With Docker's `table` prefix the output is aligned in columns under a header
/// row, which is the template rendered with each field replaced by its column title.
pub struct Template {
    /// Whether the `table` prefix was given.
    pub table: bool,
    body: gtmpl::Template,
    header: gtmpl::Template,
}

impl std::fmt::Debug for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Template").field("table", &self.table).finish_non_exhaustive()
    }
}

/// Docker's template functions (`templates.basicFunctions`).
const FUNCS: &[(&str, gtmpl::Func)] = &[
    ("json", json),
    ("join", join),
    ("split", split),
    ("lower", lower),
    ("upper", upper),
    ("title", title),
    ("pad", pad),
    ("truncate", truncate),
];

/// The same names for the header row, where each function returns its first argument untouched so the title
/// shows as is (Docker's `templates.HeaderFunctions`).
const HEADER_FUNCS: &[(&str, gtmpl::Func)] = &[
    ("json", first_arg),
    ("join", first_arg),
    ("split", first_arg),
    ("lower", first_arg),
    ("upper", first_arg),
    ("title", first_arg),
    ("pad", first_arg),
    ("truncate", first_arg),
];

impl Template {
    /// Parses a `--format` value. `json` means `{{json .}}`; a leading `table` asks for a header and columns;
    /// `\t` and `\n` written literally (as shells pass them) become a tab and a newline, as in Docker.
    pub fn parse(format: &str) -> Result<Template, TemplateError> {
        let (table, text) = match format.strip_prefix("table") {
            Some(rest) => (true, rest),
            None => (false, format),
        };
        let text = text.trim_matches(' ').replace("\\t", "\t").replace("\\n", "\n");
        let text = if text == "json" { "{{json .}}".to_string() } else { text };
        let compile = |funcs: &[(&str, gtmpl::Func)]| {
            let mut t = gtmpl::Template::default();
            t.add_funcs(funcs);
            t.parse(text.as_str()).map_err(|e| TemplateError::Parse(e.to_string()))?;
            Ok::<_, TemplateError>(t)
        };
        Ok(Template { table, body: compile(FUNCS)?, header: compile(HEADER_FUNCS)? })
    }

    /// Renders the template for one value (no trailing newline added).
    pub fn render(&self, value: &serde_json::Value) -> Result<String, TemplateError> {
        exec(&self.body, to_gtmpl(value))
    }

    /// Renders a listing: one line per row, and for `table` formats a header row (from `titles`, field name →
    /// column title; a field without a title is shown upper-cased) with everything aligned in Docker's columns.
    pub fn render_rows(&self, rows: &[serde_json::Value], titles: &[(&str, &str)]) -> Result<String, TemplateError> {
        let mut out = String::new();
        for row in rows {
            out.push_str(&self.render(row)?);
            out.push('\n');
        }
        if !self.table {
            return Ok(out);
        }
        let mut header: HashMap<String, Value> =
            titles.iter().map(|(k, v)| (k.to_string(), Value::String(v.to_string()))).collect();
        for row in rows {
            if let serde_json::Value::Object(m) = row {
                for k in m.keys() {
                    header.entry(k.clone()).or_insert_with(|| Value::String(k.to_uppercase()));
                }
            }
        }
        let mut text = exec(&self.header, Value::Map(header))?;
        text.push('\n');
        text.push_str(&out);
        Ok(crate::output::tabulate(&text))
    }
}

fn exec(t: &gtmpl::Template, value: Value) -> Result<String, TemplateError> {
    t.render(&gtmpl::Context::from(value)).map_err(|e| match e {
        ExecError::NoFiledFor(field, _) => TemplateError::NoField(field),
        other => TemplateError::Exec(other.to_string()),
    })
}

/// JSON → template value. Objects become gtmpl objects, so a missing field is an error (as with Go structs)
/// rather than an empty string.
fn to_gtmpl(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Nil,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                Value::from(n.as_f64().unwrap_or(0.0))
            }
        }
        serde_json::Value::String(s) => Value::String(s.clone()),
        serde_json::Value::Array(a) => Value::Array(a.iter().map(to_gtmpl).collect()),
        serde_json::Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), to_gtmpl(v))).collect()),
    }
}

/// Template value → JSON, for the `json` function. Object keys come out sorted (serde_json's map is ordered),
/// as Go sorts map keys.
fn to_json(v: &Value) -> serde_json::Value {
    match v {
        Value::NoValue | Value::Nil | Value::Function(_) => serde_json::Value::Null,
        Value::Bool(b) => serde_json::Value::Bool(*b),
        Value::String(s) => serde_json::Value::String(s.clone()),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into()
            } else if let Some(u) = n.as_u64() {
                u.into()
            } else {
                n.as_f64().and_then(serde_json::Number::from_f64).map(serde_json::Value::Number).unwrap_or_default()
            }
        }
        Value::Array(a) => serde_json::Value::Array(a.iter().map(to_json).collect()),
        Value::Object(m) | Value::Map(m) => {
            serde_json::Value::Object(m.iter().map(|(k, v)| (k.clone(), to_json(v))).collect())
        }
    }
}

/// The text of a value as Go's `fmt.Sprint` would give it for the simple cases the functions handle.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::NoValue => String::new(),
        other => other.to_string(),
    }
}

fn arg<'a>(name: &str, args: &'a [Value], n: usize) -> Result<&'a [Value], FuncError> {
    if args.len() != n {
        return Err(FuncError::ExactlyXArgs(name.into(), n));
    }
    Ok(args)
}

fn json(args: &[Value]) -> Result<Value, FuncError> {
    let a = arg("json", args, 1)?;
    serde_json::to_string(&to_json(&a[0])).map(Value::String).map_err(|e| FuncError::Generic(e.to_string()))
}

/// `join LIST SEP`.
fn join(args: &[Value]) -> Result<Value, FuncError> {
    let a = arg("join", args, 2)?;
    let sep = text(&a[1]);
    match &a[0] {
        Value::Array(items) => Ok(Value::String(items.iter().map(text).collect::<Vec<_>>().join(&sep))),
        other => Ok(Value::String(text(other))),
    }
}

/// `split STRING SEP`.
fn split(args: &[Value]) -> Result<Value, FuncError> {
    let a = arg("split", args, 2)?;
    let (s, sep) = (text(&a[0]), text(&a[1]));
    Ok(Value::Array(s.split(sep.as_str()).map(|p| Value::String(p.to_string())).collect()))
}

fn lower(args: &[Value]) -> Result<Value, FuncError> {
    Ok(Value::String(text(&arg("lower", args, 1)?[0]).to_lowercase()))
}

fn upper(args: &[Value]) -> Result<Value, FuncError> {
    Ok(Value::String(text(&arg("upper", args, 1)?[0]).to_uppercase()))
}

/// Upper-cases the first letter of each word.
fn title(args: &[Value]) -> Result<Value, FuncError> {
    let s = text(&arg("title", args, 1)?[0]);
    let mut out = String::with_capacity(s.len());
    let mut start = true;
    for c in s.chars() {
        if start {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        start = c.is_whitespace();
    }
    Ok(Value::String(out))
}

/// `pad STRING BEFORE AFTER`: spaces around the text.
fn pad(args: &[Value]) -> Result<Value, FuncError> {
    let a = arg("pad", args, 3)?;
    let n = |v: &Value| text(v).parse::<usize>().map_err(|_| FuncError::UnableToConvertFromValue);
    Ok(Value::String(format!("{}{}{}", " ".repeat(n(&a[1])?), text(&a[0]), " ".repeat(n(&a[2])?))))
}

/// `truncate STRING N`: at most N characters.
fn truncate(args: &[Value]) -> Result<Value, FuncError> {
    let a = arg("truncate", args, 2)?;
    let n = text(&a[1]).parse::<usize>().map_err(|_| FuncError::UnableToConvertFromValue)?;
    Ok(Value::String(text(&a[0]).chars().take(n).collect()))
}

fn first_arg(args: &[Value]) -> Result<Value, FuncError> {
    Ok(args.first().cloned().unwrap_or(Value::NoValue))
}

/// Words that Go spells in capitals inside field names (`ID`, `NodeID`, `NanoCPUs`).
const INITIALISMS: &[(&str, &str)] = &[
    ("id", "ID"),
    ("ids", "IDs"),
    ("ip", "IP"),
    ("ips", "IPs"),
    ("cpu", "CPU"),
    ("cpus", "CPUs"),
    ("os", "OS"),
    ("tls", "TLS"),
    ("ca", "CA"),
    ("url", "URL"),
    ("api", "API"),
    ("pem", "PEM"),
    ("dns", "DNS"),
];

/// `task_template` → `TaskTemplate`, `node_id` → `NodeID`: Go's exported-field spelling of a JSON key.
pub fn go_name(key: &str) -> String {
    key.split('_')
        .map(|w| match INITIALISMS.iter().find(|(lower, _)| *lower == w) {
            Some((_, go)) => go.to_string(),
            None => {
                let mut c = w.chars();
                c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
            }
        })
        .collect()
}

/// An API object as templates see it: keys spelled as Go fields ([`go_name`]), except inside label maps,
/// whose keys are the user's own (`{{index .Spec.Labels "tier"}}`).
pub fn go_names(v: &serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => serde_json::Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let is_label_map = k == "labels" || k.ends_with("_labels");
                    // A task's attachments (network id and addresses) are Docker's `NetworksAttachments`; a
                    // spec's `networks` (targets) stay `Networks`.
                    let attachments = k == "networks"
                        && v.as_array().and_then(|a| a.first()).is_some_and(|n| n.get("network_id").is_some());
                    let name = if attachments { "NetworksAttachments".to_string() } else { go_name(k) };
                    (name, if is_label_map { v.clone() } else { go_names(v) })
                })
                .collect(),
        ),
        serde_json::Value::Array(a) => serde_json::Value::Array(a.iter().map(go_names).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row() -> serde_json::Value {
        json!({"ID": "abc", "Name": "web", "Image": "busybox:latest", "Mode": "replicated", "Replicas": "2/2",
               "Ports": "", "Self": true})
    }

    #[test]
    fn fields_and_json() {
        assert_eq!(Template::parse("{{.Name}} {{.Replicas}}").unwrap().render(&row()).unwrap(), "web 2/2");
        assert_eq!(
            Template::parse("json").unwrap().render(&json!({"b": 1, "a": "x<y"})).unwrap(),
            r#"{"a":"x<y","b":1}"#
        );
        assert_eq!(Template::parse("{{json .Name}}").unwrap().render(&row()).unwrap(), r#""web""#);
        assert_eq!(Template::parse("{{if .Self}}me{{end}}").unwrap().render(&row()).unwrap(), "me");
        assert_eq!(Template::parse("{{.Name | printf \"%s!\"}}").unwrap().render(&row()).unwrap(), "web!");
    }

    #[test]
    fn docker_functions() {
        let r = |t: &str| Template::parse(t).unwrap().render(&json!({"N": "Web App", "L": ["a", "b"]})).unwrap();
        assert_eq!(r("{{lower .N}}|{{upper .N}}"), "web app|WEB APP");
        assert_eq!(r("{{title (lower .N)}}"), "Web App");
        assert_eq!(r("{{join .L \",\"}}"), "a,b");
        assert_eq!(r("{{index (split \"x:y\" \":\") 1}}"), "y");
        assert_eq!(r("{{truncate .N 3}}|{{pad .N 1 1}}|"), "Web| Web App |");
    }

    #[test]
    fn tables_have_a_header_and_columns() {
        let t = Template::parse("table {{.Name}}\\t{{.Image}}").unwrap();
        assert!(t.table);
        let rows = vec![row(), json!({"Name": "a-much-longer-name", "Image": "x"})];
        let out = t.render_rows(&rows, &[("Name", "NAME"), ("Image", "IMAGE")]).unwrap();
        assert_eq!(out, "NAME                 IMAGE\nweb                  busybox:latest\na-much-longer-name   x\n");
        // Without `table`, rows are printed as rendered, tab included, and no header.
        let plain = Template::parse("{{.Name}}\\t{{upper .Image}}").unwrap();
        assert_eq!(plain.render_rows(&[row()], &[]).unwrap(), "web\tBUSYBOX:LATEST\n");
        // Functions leave header titles as they are.
        let t = Template::parse("table {{lower .Name}}").unwrap();
        assert_eq!(t.render_rows(&[row()], &[("Name", "NAME")]).unwrap(), "NAME\nweb\n");
    }

    #[test]
    fn unknown_fields_are_named() {
        let e = Template::parse("{{.Nope}}").unwrap().render(&row()).unwrap_err();
        assert_eq!(e.to_string(), "template: executing \"\" at <.Nope>: can't evaluate field Nope");
        assert!(Template::parse("{{.Name").is_err());
        assert!(Template::parse("{{nosuchfunc .Name}}").and_then(|t| t.render(&row())).is_err());
    }

    #[test]
    fn objects_get_go_field_names() {
        assert_eq!(go_name("id"), "ID");
        assert_eq!(go_name("task_template"), "TaskTemplate");
        assert_eq!(go_name("node_id"), "NodeID");
        assert_eq!(go_name("nano_cpus"), "NanoCPUs");
        let svc = json!({"id": "s1", "spec": {"name": "web", "labels": {"tier_x": "front"},
                         "task_template": {"container": {"image": "busybox"}}}});
        let v = go_names(&svc);
        let r = |t: &str| Template::parse(t).unwrap().render(&v).unwrap();
        assert_eq!(r("{{.ID}}"), "s1");
        assert_eq!(r("{{.Spec.TaskTemplate.Container.Image}}"), "busybox");
        assert_eq!(r("{{index .Spec.Labels \"tier_x\"}}"), "front");
        assert_eq!(
            r("{{json .Spec}}"),
            r#"{"Labels":{"tier_x":"front"},"Name":"web","TaskTemplate":{"Container":{"Image":"busybox"}}}"#
        );
    }
}
