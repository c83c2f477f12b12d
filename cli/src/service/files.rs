//! The secret and config flags of `service create` (`--secret`, `--config`) and `service update`
//! (`--secret-add/--secret-rm`, `--config-add/--config-rm`), as Docker parses them: `NAME` or
//! `source=NAME,target=T,uid=U,gid=G,mode=0400`. The CLI sends names; the manager resolves them to objects (and
//! refuses unknown ones) and defaults an empty target to the name.

use super::flags::FlagError;
use clap::Args;
use swarm::api::{ConfigReference, FileTarget, SecretReference, ServiceSpec};

/// One parsed `--secret`/`--config` value: the object's name and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRef {
    pub source: String,
    pub target: FileTarget,
}

/// Parses `NAME` or `source=,target=,uid=,gid=,mode=` (mode in octal, Docker's 0444 by default).
pub fn file_ref(s: &str) -> Result<FileRef, String> {
    let mut r = FileRef {
        source: String::new(),
        target: FileTarget { name: String::new(), uid: "0".into(), gid: "0".into(), mode: 0o444 },
    };
    if !s.contains('=') {
        r.source = s.to_string();
    } else {
        for field in s.split(',') {
            let (k, v) =
                field.split_once('=').ok_or_else(|| format!("invalid field '{field}' must be a key=value pair"))?;
            match k.to_ascii_lowercase().as_str() {
                "source" | "src" => r.source = v.to_string(),
                "target" => r.target.name = v.to_string(),
                "uid" => r.target.uid = v.to_string(),
                "gid" => r.target.gid = v.to_string(),
                "mode" => {
                    r.target.mode =
                        u32::from_str_radix(v, 8).map_err(|_| format!("invalid mode {v:?}: must be octal"))?
                }
                _ => return Err(format!("invalid field key {k}")),
            }
        }
    }
    if r.source.is_empty() {
        return Err("source is required".into());
    }
    for (what, id) in [("uid", &r.target.uid), ("gid", &r.target.gid)] {
        if id.parse::<u32>().is_err() {
            return Err(format!("invalid {what} {id:?}: must be a number"));
        }
    }
    Ok(r)
}

fn secret(r: &FileRef) -> SecretReference {
    SecretReference { secret_id: String::new(), secret_name: r.source.clone(), target: r.target.clone() }
}

fn config(r: &FileRef) -> ConfigReference {
    ConfigReference { config_id: String::new(), config_name: r.source.clone(), target: r.target.clone() }
}

#[derive(Debug, Clone, Default, PartialEq, Args)]
pub struct CreateFiles {
    /// Specify secrets to expose to the service
    #[arg(long = "secret", value_parser = file_ref, value_name = "SECRET")]
    pub secrets: Vec<FileRef>,
    /// Specify configurations to expose to the service
    #[arg(long = "config", value_parser = file_ref, value_name = "CONFIG")]
    pub configs: Vec<FileRef>,
}

impl CreateFiles {
    pub fn apply(&self, spec: &mut ServiceSpec) {
        let c = &mut spec.task_template.container;
        c.secrets = self.secrets.iter().map(secret).collect();
        c.configs = self.configs.iter().map(config).collect();
    }
}

#[derive(Debug, Clone, Default, PartialEq, Args)]
pub struct UpdateFiles {
    /// Add or update a secret on a service
    #[arg(long = "secret-add", value_parser = file_ref, value_name = "SECRET")]
    pub secret_add: Vec<FileRef>,
    /// Remove a secret
    #[arg(long = "secret-rm", value_name = "SECRET")]
    pub secret_rm: Vec<String>,
    /// Add or update a config file on a service
    #[arg(long = "config-add", value_parser = file_ref, value_name = "CONFIG")]
    pub config_add: Vec<FileRef>,
    /// Remove a configuration file
    #[arg(long = "config-rm", value_name = "CONFIG")]
    pub config_rm: Vec<String>,
}

/// Whether a reference to `name` (or, for a rotated secret, `name.vN`) is the one `key` names.
fn names(name: &str, key: &str) -> bool {
    name == key
        || name
            .strip_prefix(key)
            .and_then(|r| r.strip_prefix(".v"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

impl UpdateFiles {
    /// Removes, then adds (an added source replaces the reference to the same source).
    pub fn apply(&self, spec: &mut ServiceSpec) -> Result<(), FlagError> {
        let c = &mut spec.task_template.container;
        c.secrets.retain(|r| !self.secret_rm.iter().any(|k| names(&r.secret_name, k) || r.secret_id == *k));
        c.configs.retain(|r| !self.config_rm.iter().any(|k| r.config_name == *k || r.config_id == *k));
        for a in &self.secret_add {
            c.secrets.retain(|r| !names(&r.secret_name, &a.source));
            c.secrets.push(secret(a));
        }
        for a in &self.config_add {
            c.configs.retain(|r| r.config_name != a.source);
            c.configs.push(config(a));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_forms_parse_like_docker() {
        let r = file_ref("db_pw").unwrap();
        assert_eq!((r.source.as_str(), r.target.name.as_str(), r.target.mode), ("db_pw", "", 0o444));
        let r = file_ref("source=db_pw,target=pw.txt,uid=1000,gid=1001,mode=0400").unwrap();
        assert_eq!(r.target, FileTarget { name: "pw.txt".into(), uid: "1000".into(), gid: "1001".into(), mode: 0o400 });
        assert!(file_ref("target=x").unwrap_err().contains("source is required"));
        assert!(file_ref("source=a,mode=9").unwrap_err().contains("must be octal"));
        assert!(file_ref("source=a,uid=root").unwrap_err().contains("invalid uid"));
        assert!(file_ref("source=a,bogus=1").unwrap_err().contains("invalid field key bogus"));
    }

    #[test]
    fn update_edits_remove_then_add_and_follow_rotated_names() {
        let mut spec: ServiceSpec = serde_json::from_value(serde_json::json!({
            "name": "web", "task_template": {"container": {"image": "busybox", "secrets": [
                {"secret_id": "s2", "secret_name": "pw.v2", "target": {"name": "pw"}},
                {"secret_id": "s3", "secret_name": "other", "target": {"name": "other"}}
            ]}}, "mode": {"replicated": {"replicas": 1}}
        }))
        .unwrap();
        let u = UpdateFiles {
            secret_rm: vec!["pw".into()],
            secret_add: vec![file_ref("source=other,target=o2").unwrap()],
            ..Default::default()
        };
        u.apply(&mut spec).unwrap();
        let refs = &spec.task_template.container.secrets;
        assert_eq!(refs.len(), 1);
        assert_eq!(
            (refs[0].secret_name.as_str(), refs[0].target.name.as_str(), refs[0].secret_id.as_str()),
            ("other", "o2", "")
        );
    }
}
