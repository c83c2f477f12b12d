//! Several `-c` files into one, as `docker stack deploy` merges them: later files override earlier ones key by
//! key; environment, labels and networks merge by name (list and mapping forms alike); volumes merge by target,
//! secrets and configs by source, ports are added; other lists (command, entrypoint, constraints…) are replaced.

use serde_json::{Map, Value};

/// `["A=1", "B"]` → `{"A": "1", "B": null}`; a mapping is kept.
fn list_to_map(v: &Value) -> Value {
    match v {
        Value::Array(items) => {
            let mut m = Map::new();
            for item in items {
                let text = match item {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                match text.split_once('=') {
                    Some((k, val)) => m.insert(k.to_string(), Value::String(val.to_string())),
                    None => m.insert(text, Value::Null),
                };
            }
            Value::Object(m)
        }
        other => other.clone(),
    }
}

/// `networks: [a, b]` → `{a: null, b: null}`.
fn names_to_map(v: &Value) -> Value {
    match v {
        Value::Array(items) => Value::Object(
            items
                .iter()
                .map(|i| (i.as_str().map(str::to_string).unwrap_or_else(|| i.to_string()), Value::Null))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The key that identifies an entry of a list merged by key.
fn entry_key(list: &str, item: &Value) -> Option<String> {
    match (list, item) {
        ("volumes", Value::String(s)) => {
            let parts: Vec<&str> = s.split(':').collect();
            Some(if parts.len() >= 2 { parts[1] } else { parts[0] }.to_string())
        }
        ("volumes", Value::Object(m)) => m.get("target").and_then(Value::as_str).map(str::to_string),
        ("secrets" | "configs", Value::String(s)) => Some(s.clone()),
        ("secrets" | "configs", Value::Object(m)) => m.get("source").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

fn merge_keyed(list: &str, base: &[Value], over: &[Value]) -> Value {
    let mut out: Vec<Value> = base.to_vec();
    for item in over {
        let key = entry_key(list, item);
        match out.iter().position(|b| key.is_some() && entry_key(list, b) == key) {
            Some(i) => out[i] = item.clone(),
            None => out.push(item.clone()),
        }
    }
    Value::Array(out)
}

fn merge_union(base: &[Value], over: &[Value]) -> Value {
    let mut out = base.to_vec();
    for item in over {
        if !out.contains(item) {
            out.push(item.clone());
        }
    }
    Value::Array(out)
}

/// Normalizes a service's list-or-mapping fields to mappings so two files' forms merge.
fn normalize_service(svc: &mut Value) {
    let Value::Object(m) = svc else { return };
    for k in ["environment", "labels"] {
        if let Some(v) = m.get(k).map(list_to_map) {
            m.insert(k.into(), v);
        }
    }
    if let Some(v) = m.get("networks").map(names_to_map) {
        m.insert("networks".into(), v);
    }
    if let Some(Value::Object(d)) = m.get_mut("deploy") {
        if let Some(v) = d.get("labels").map(list_to_map) {
            d.insert("labels".into(), v);
        }
    }
}

fn merge_value(base: &mut Value, over: &Value, key: &str) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, ov) in o {
                match b.get_mut(k) {
                    Some(bv) => merge_value(bv, ov, k),
                    None => {
                        b.insert(k.clone(), ov.clone());
                    }
                }
            }
        }
        (b @ Value::Array(_), Value::Array(o)) => {
            let Value::Array(bl) = &*b else { return };
            *b = match key {
                "volumes" | "secrets" | "configs" => merge_keyed(key, bl, o),
                "ports" | "expose" => merge_union(bl, o),
                _ => Value::Array(o.clone()),
            };
        }
        (b, o) => *b = o.clone(),
    }
}

/// Merges the files' values in order into one.
pub fn merge(values: Vec<Value>) -> Value {
    let mut out = Value::Object(Map::new());
    for mut v in values {
        if let Some(Value::Object(services)) = v.get_mut("services") {
            for svc in services.values_mut() {
                normalize_service(svc);
            }
        }
        merge_value(&mut out, &v, "");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn later_files_override_and_extend() {
        let base = json!({"services": {"web": {
            "image": "busybox:1", "command": ["a", "b"], "environment": ["A=1", "B=2"],
            "ports": ["80:80"], "volumes": ["data:/data", "/logs"], "networks": ["front"],
            "secrets": ["s1"], "deploy": {"replicas": 2, "labels": ["x=1"]}}},
            "networks": {"front": null}});
        let over = json!({"services": {"web": {
            "image": "busybox:2", "command": ["c"], "environment": {"B": "3", "C": "4"},
            "ports": ["443:443", "80:80"], "volumes": [{"type": "volume", "source": "other", "target": "/data"}],
            "networks": {"back": {"aliases": ["w"]}}, "secrets": [{"source": "s1", "target": "t"}],
            "deploy": {"labels": {"y": "2"}}},
            "db": {"image": "db"}}});
        let m = merge(vec![base, over]);
        let web = &m["services"]["web"];
        assert_eq!(web["image"], "busybox:2");
        assert_eq!(web["command"], json!(["c"]), "lists like command are replaced");
        assert_eq!(web["environment"], json!({"A": "1", "B": "3", "C": "4"}));
        assert_eq!(web["ports"], json!(["80:80", "443:443"]));
        assert_eq!(web["volumes"], json!([{"type": "volume", "source": "other", "target": "/data"}, "/logs"]));
        assert_eq!(web["networks"], json!({"front": null, "back": {"aliases": ["w"]}}));
        assert_eq!(web["secrets"], json!([{"source": "s1", "target": "t"}]));
        assert_eq!(web["deploy"], json!({"replicas": 2, "labels": {"x": "1", "y": "2"}}));
        assert_eq!(m["services"]["db"]["image"], "db");
        assert_eq!(m["networks"], json!({"front": null}));
    }
}
