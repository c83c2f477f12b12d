//! Secrets and configs in the control API: Docker's checks (names, sizes, labels-only updates, no removal while a
//! service uses one), sealing a secret's data before it is proposed, resolving a service's `--secret` /
//! `--config` names to objects, and `secret rotate` (a new version, and the services using the family moved to it
//! in the same write).

use super::resolve;
use crate::api::{
    check_file_object_name, new_id, Annotations, Config, ConfigSpec, Driver, Secret, SecretSpec, SecretVersion,
    ServiceSpec, MAX_CONFIG_SIZE, MAX_SECRET_SIZE,
};
use crate::manager::datakey::DataKey;
use crate::manager::store::MemoryStore;
use std::collections::BTreeSet;
use tonic::Status;

/// The refusal when this manager has no data key (it should always have one once its manager runs).
pub const NO_DATA_KEY: &str = "this manager does not hold the swarm's data key; secrets cannot be read or written here";

pub fn find_secret<'a>(v: &'a MemoryStore, key: &str) -> Result<&'a Secret, Status> {
    resolve(v.secrets(), key, |s| &s.id, |s| &s.spec.annotations.name, "secret")
}

pub fn find_config<'a>(v: &'a MemoryStore, key: &str) -> Result<&'a Config, Status> {
    resolve(v.configs(), key, |s| &s.id, |s| &s.spec.annotations.name, "config")
}

/// A secret as the API returns it: never its data, sealed or not.
pub fn redacted(s: &Secret) -> Secret {
    let mut s = s.clone();
    s.sealed.clear();
    s.spec.data.clear();
    s
}

fn check_annotations(a: &Annotations) -> Result<(), Status> {
    check_file_object_name(&a.name).map_err(Status::invalid_argument)?;
    if let Some(k) = a.labels.keys().find(|k| k.is_empty() || k.contains('=') || k.chars().any(char::is_whitespace)) {
        return Err(Status::invalid_argument(format!(
            "invalid label key {k:?}: must be non-empty, without '=' or whitespace"
        )));
    }
    Ok(())
}

fn check_size(what: &str, len: usize, max: usize) -> Result<(), Status> {
    if len == 0 || len > max {
        return Err(Status::invalid_argument(format!(
            "{what} data must be larger than 0 and less than {} bytes ({} KiB); this one is {len} bytes",
            max + 1,
            max / 1024
        )));
    }
    Ok(())
}

/// A template driver other than `golang`, or a template that does not parse, is refused when the object is made.
fn check_templating(kind: &str, name: &str, templating: Option<&Driver>, data: &[u8]) -> Result<(), Status> {
    match templating {
        Some(d) => crate::template::check(d, data).map_err(|e| Status::invalid_argument(format!("{kind} {name}: {e}"))),
        None => Ok(()),
    }
}

/// Checks a new secret's spec (name, labels, size, template); the data is still in clear.
pub fn check_secret_spec(spec: &SecretSpec) -> Result<(), Status> {
    check_annotations(&spec.annotations)?;
    check_size("secret", spec.data.len(), MAX_SECRET_SIZE)?;
    check_templating("secret", &spec.annotations.name, spec.templating.as_ref(), &spec.data)
}

pub fn check_config_spec(spec: &ConfigSpec) -> Result<(), Status> {
    check_annotations(&spec.annotations)?;
    check_size("config", spec.data.len(), MAX_CONFIG_SIZE)?;
    check_templating("config", &spec.annotations.name, spec.templating.as_ref(), &spec.data)
}

/// The secret object `spec` becomes: its data sealed with `key`, out of the spec.
pub fn sealed_secret(mut spec: SecretSpec, key: &DataKey, rotation: Option<SecretVersion>) -> Secret {
    let data = std::mem::take(&mut spec.data);
    Secret { id: new_id(), meta: Default::default(), sealed: key.seal(&data), spec, rotation }
}

/// Names of the services whose spec uses any of `secret_ids` (sorted).
pub fn services_using_secrets(v: &MemoryStore, secret_ids: &BTreeSet<&str>) -> Vec<String> {
    let mut names: Vec<String> = v
        .services()
        .filter(|s| s.spec.task_template.container.secrets.iter().any(|r| secret_ids.contains(r.secret_id.as_str())))
        .map(|s| s.spec.annotations.name.clone())
        .collect();
    names.sort();
    names
}

pub fn services_using_config(v: &MemoryStore, config_id: &str) -> Vec<String> {
    let mut names: Vec<String> = v
        .services()
        .filter(|s| s.spec.task_template.container.configs.iter().any(|r| r.config_id == config_id))
        .map(|s| s.spec.annotations.name.clone())
        .collect();
    names.sort();
    names
}

/// Docker's refusal to remove an object a service uses.
pub fn in_use(kind: &str, name: &str, services: &[String]) -> Status {
    let plural = if services.len() == 1 { "" } else { "s" };
    Status::invalid_argument(format!(
        "{kind} '{name}' is in use by the following service{plural}: {}",
        services.join(", ")
    ))
}

/// A labels-only update: same name, no data (secrets) or the same data (configs).
pub fn relabelled_secret(cur: &Secret, spec: SecretSpec) -> Result<Secret, Status> {
    if spec.annotations.name != cur.spec.annotations.name || !spec.data.is_empty() {
        return Err(Status::invalid_argument("only updates to Labels are allowed"));
    }
    check_annotations(&spec.annotations)?;
    let mut next = cur.clone();
    next.spec.annotations.labels = spec.annotations.labels;
    Ok(next)
}

pub fn relabelled_config(cur: &Config, spec: ConfigSpec) -> Result<Config, Status> {
    if spec.annotations.name != cur.spec.annotations.name || spec.data != cur.spec.data {
        return Err(Status::invalid_argument("only updates to Labels are allowed"));
    }
    check_annotations(&spec.annotations)?;
    let mut next = cur.clone();
    next.spec.annotations.labels = spec.annotations.labels;
    Ok(next)
}

/// Fills in a service spec's secret and config references from `v`: each names its object by name or id (the
/// CLI sends names), and gets the object's id and name, and its target file name defaults to the object's name
/// (Docker's). An unknown name, or two references with the same target, is refused.
pub fn resolve_references(v: &MemoryStore, spec: &mut ServiceSpec) -> Result<(), Status> {
    let c = &mut spec.task_template.container;
    let mut targets = BTreeSet::new();
    for r in &mut c.secrets {
        let key = if r.secret_id.is_empty() { &r.secret_name } else { &r.secret_id };
        let s = v
            .secret(key)
            .or_else(|| v.secret_by_name(key))
            .or_else(|| v.secret_by_name(&r.secret_name))
            .ok_or_else(|| Status::invalid_argument(format!("secret not found: {key}")))?;
        r.secret_id = s.id.clone();
        r.secret_name = s.spec.annotations.name.clone();
        if r.target.name.is_empty() {
            r.target.name = s.family().to_string();
        }
        check_target("secret", &r.target)?;
        if !targets.insert(r.target.name.clone()) {
            return Err(Status::invalid_argument(format!("duplicate secret target for {} not allowed", r.target.name)));
        }
    }
    let mut targets = BTreeSet::new();
    for r in &mut c.configs {
        let key = if r.config_id.is_empty() { &r.config_name } else { &r.config_id };
        let o = v
            .config(key)
            .or_else(|| v.config_by_name(key))
            .or_else(|| v.config_by_name(&r.config_name))
            .ok_or_else(|| Status::invalid_argument(format!("config not found: {key}")))?;
        r.config_id = o.id.clone();
        r.config_name = o.spec.annotations.name.clone();
        if r.target.name.is_empty() {
            r.target.name = o.spec.annotations.name.clone();
        }
        check_target("config", &r.target)?;
        if !targets.insert(r.target.name.clone()) {
            return Err(Status::invalid_argument(format!("duplicate config target for {} not allowed", r.target.name)));
        }
    }
    Ok(())
}

fn check_target(kind: &str, t: &crate::api::FileTarget) -> Result<(), Status> {
    if t.name.split('/').any(|p| p == "..") || t.name.contains('\0') {
        return Err(Status::invalid_argument(format!("invalid {kind} target {:?}: must not contain \"..\"", t.name)));
    }
    if t.mode > 0o7777 {
        return Err(Status::invalid_argument(format!("invalid {kind} file mode {:o}", t.mode)));
    }
    for (what, id) in [("uid", &t.uid), ("gid", &t.gid)] {
        if id.parse::<u32>().is_err() {
            return Err(Status::invalid_argument(format!("invalid {kind} {what} {id:?}: must be a number")));
        }
    }
    Ok(())
}

/// `secret rotate`: the family of the secret `key` names, its next version (named `<family>.v<N>`), sealed with
/// `key`; and every service using a version of the family, moved to the new one. Returns the new secret and the
/// updated services; older versions that no service and no task still uses are returned for deletion (a task
/// still running on an old version keeps it until it is gone).
pub struct Rotation {
    pub secret: Secret,
    pub services: Vec<crate::api::Service>,
    pub unused: Vec<Secret>,
}

pub fn rotate(v: &MemoryStore, key: &str, data: Vec<u8>, dk: &DataKey) -> Result<Rotation, Status> {
    let cur = find_secret(v, key)?;
    let family = cur.family().to_string();
    let versions: Vec<&Secret> = v.secrets().filter(|s| s.family() == family).collect();
    let latest = versions.iter().max_by_key(|s| s.version()).copied().unwrap_or(cur);
    let version = latest.version() + 1;
    let spec = SecretSpec {
        annotations: Annotations {
            name: format!("{family}.v{version}"),
            labels: latest.spec.annotations.labels.clone(),
        },
        data,
        // A templated secret's new version is a template too.
        templating: latest.spec.templating.clone(),
    };
    check_secret_spec(&spec)?;
    let secret = sealed_secret(spec, dk, Some(SecretVersion { family: family.clone(), version }));
    let ids: BTreeSet<&str> = versions.iter().map(|s| s.id.as_str()).collect();
    let mut services = Vec::new();
    for s in v.services() {
        let uses = s.spec.task_template.container.secrets.iter().any(|r| ids.contains(r.secret_id.as_str()));
        if !uses {
            continue;
        }
        let mut spec = s.spec.clone();
        for r in &mut spec.task_template.container.secrets {
            if ids.contains(r.secret_id.as_str()) {
                r.secret_id = secret.id.clone();
                r.secret_name = secret.spec.annotations.name.clone();
            }
        }
        services.push(super::updated(s, spec)?);
    }
    let in_tasks: BTreeSet<&str> =
        v.tasks().flat_map(|t| t.spec.container.secrets.iter().map(|r| r.secret_id.as_str())).collect();
    // The version services used until now stays while their tasks run; earlier ones nothing uses go.
    let unused = versions
        .into_iter()
        .filter(|s| s.id != latest.id && !in_tasks.contains(s.id.as_str()))
        .filter(|s| services_using_secrets(v, &BTreeSet::from([s.id.as_str()])).is_empty())
        .filter(|s| {
            !services.iter().any(|svc| {
                svc.previous_spec
                    .as_ref()
                    .is_some_and(|p| p.task_template.container.secrets.iter().any(|r| r.secret_id == s.id))
            })
        })
        .cloned()
        .collect();
    Ok(Rotation { secret, services, unused })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::control::*;
    use crate::api::{FileTarget, SecretReference};
    use crate::manager::controlapi::ControlApi;
    use crate::manager::store::Store;
    use crate::transport::control::control_server::Control;
    use tonic::{Code, Request};

    fn spec(name: &str, data: &[u8]) -> SecretSpec {
        SecretSpec {
            annotations: Annotations { name: name.into(), labels: Default::default() },
            data: data.to_vec(),
            templating: None,
        }
    }

    fn reference(name: &str, target: &str) -> SecretReference {
        SecretReference {
            secret_id: String::new(),
            secret_name: name.into(),
            target: FileTarget { name: target.into(), uid: "0".into(), gid: "0".into(), mode: 0o400 },
        }
    }

    async fn create(api: &ControlApi, name: &str, data: &[u8]) -> Result<Secret, Status> {
        api.create_secret(Request::new(CreateSecretRequest { spec: spec(name, data) })).await.map(|r| r.into_inner())
    }

    async fn create_service(
        api: &ControlApi,
        name: &str,
        refs: Vec<SecretReference>,
    ) -> Result<crate::api::Service, Status> {
        let mut s = crate::testing::service("", name, 1).spec;
        s.task_template.container.secrets = refs;
        api.create_service(Request::new(CreateServiceRequest { spec: s })).await.map(|r| r.into_inner())
    }

    #[tokio::test]
    async fn a_secret_is_stored_sealed_and_never_shown() {
        let store = Store::in_memory();
        let api = ControlApi::with_store(store.clone());
        let s = create(&api, "db_pw", b"hunter2-plaintext").await.unwrap();
        assert!(s.sealed.is_empty() && s.spec.data.is_empty(), "create returned data");
        let stored = store.view(|v| v.secret(&s.id).cloned()).unwrap();
        assert!(stored.spec.data.is_empty());
        let json = serde_json::to_string(&stored).unwrap();
        assert!(!json.contains("hunter2") && !json.contains(&base64_of(b"hunter2-plaintext")), "{json}");
        assert_eq!(store.data_key().unwrap().open(&stored.sealed).unwrap(), b"hunter2-plaintext");

        let got = api.get_secret(Request::new(GetRequest { id_or_name: "db_pw".into() })).await.unwrap().into_inner();
        assert!(got.sealed.is_empty() && got.spec.data.is_empty());
        let listed = api.list_secrets(Request::new(ListSecretsRequest::default())).await.unwrap().into_inner();
        assert_eq!(listed.secrets.len(), 1);
        assert!(listed.secrets[0].sealed.is_empty());
    }

    fn base64_of(b: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(b)
    }

    #[tokio::test]
    async fn refused_secret_and_config_calls_change_nothing() {
        let store = Store::in_memory();
        let api = ControlApi::with_store(store.clone());
        create(&api, "pw", b"x").await.unwrap();
        create_service(&api, "web", vec![reference("pw", "")]).await.unwrap();
        create_service(&api, "api", vec![reference("pw", "other")]).await.unwrap();
        let before = store.view(|v| v.objects().collect::<Vec<_>>());

        let cases: Vec<(SecretSpec, Code, &str)> = vec![
            (spec("pw", b"y"), Code::AlreadyExists, "secret pw already exists"),
            (spec("-bad", b"y"), Code::InvalidArgument, "only 64 [a-zA-Z0-9-_.] characters allowed"),
            (spec("empty", b""), Code::InvalidArgument, "secret data must be larger than 0"),
            (spec("big", &vec![7; MAX_SECRET_SIZE + 1]), Code::InvalidArgument, "less than 512001 bytes (500 KiB)"),
        ];
        for (s, code, msg) in cases {
            let e = api.create_secret(Request::new(CreateSecretRequest { spec: s })).await.unwrap_err();
            assert_eq!(e.code(), code, "{}", e.message());
            assert!(e.message().contains(msg), "{:?} lacks {msg:?}", e.message());
        }
        let e = api.remove_secret(Request::new(GetRequest { id_or_name: "pw".into() })).await.unwrap_err();
        assert_eq!(e.message(), "secret 'pw' is in use by the following services: api, web");
        let e = create_service(&api, "ghost", vec![reference("nope", "")]).await.unwrap_err();
        assert_eq!((e.code(), e.message()), (Code::InvalidArgument, "secret not found: nope"));
        let e = create_service(&api, "twice", vec![reference("pw", "a"), reference("pw", "a")]).await.unwrap_err();
        assert!(e.message().contains("duplicate secret target for a"), "{}", e.message());
        let e = create_service(&api, "up", vec![reference("pw", "../../etc/passwd")]).await.unwrap_err();
        assert!(e.message().contains("must not contain \"..\""), "{}", e.message());
        let cur = store.view(|v| v.secret_by_name("pw").cloned()).unwrap();
        let e = api
            .update_secret(Request::new(UpdateSecretRequest {
                id: cur.id.clone(),
                version: cur.meta.version,
                spec: spec("pw", b"new"),
            }))
            .await
            .unwrap_err();
        assert_eq!(e.message(), "only updates to Labels are allowed");
        let big = ConfigSpec {
            annotations: Annotations { name: "c".into(), labels: Default::default() },
            data: vec![1; MAX_CONFIG_SIZE + 1],
            templating: None,
        };
        assert!(api.create_config(Request::new(CreateConfigRequest { spec: big })).await.is_err());
        assert_eq!(store.view(|v| v.objects().collect::<Vec<_>>()), before, "refused calls changed the store");

        // A labels-only update goes through.
        let mut relabel = spec("pw", b"");
        relabel.annotations.labels.insert("env".into(), "prod".into());
        let s = api
            .update_secret(Request::new(UpdateSecretRequest {
                id: cur.id.clone(),
                version: cur.meta.version,
                spec: relabel,
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(s.spec.annotations.labels.get("env").map(String::as_str), Some("prod"));
    }

    #[tokio::test]
    async fn references_resolve_to_ids_and_default_their_target() {
        let store = Store::in_memory();
        let api = ControlApi::with_store(store.clone());
        let s = create(&api, "pw", b"x").await.unwrap();
        let cfg = ConfigSpec {
            annotations: Annotations { name: "nginx.conf".into(), labels: Default::default() },
            data: b"server {}".to_vec(),
            templating: None,
        };
        let c = api.create_config(Request::new(CreateConfigRequest { spec: cfg })).await.unwrap().into_inner();
        assert_eq!(c.spec.data, b"server {}", "configs show their data");
        let mut spec = crate::testing::service("", "web", 1).spec;
        spec.task_template.container.secrets = vec![reference("pw", "")];
        spec.task_template.container.configs = vec![crate::api::ConfigReference {
            config_id: String::new(),
            config_name: "nginx.conf".into(),
            target: FileTarget { name: "/etc/nginx/nginx.conf".into(), uid: "0".into(), gid: "0".into(), mode: 0o444 },
        }];
        let svc = api.create_service(Request::new(CreateServiceRequest { spec })).await.unwrap().into_inner();
        let r = &svc.spec.task_template.container.secrets[0];
        assert_eq!((r.secret_id.as_str(), r.target.name.as_str()), (s.id.as_str(), "pw"));
        assert_eq!(svc.spec.task_template.container.configs[0].config_id, c.id);
        let e = api.remove_config(Request::new(GetRequest { id_or_name: "nginx.conf".into() })).await.unwrap_err();
        assert_eq!(e.message(), "config 'nginx.conf' is in use by the following service: web");
    }

    #[tokio::test]
    async fn templates_are_checked_at_create_and_kept_by_a_rotation() {
        let store = Store::in_memory();
        let api = ControlApi::with_store(store.clone());
        let driver = |name: &str| Some(Driver { name: name.into(), options: Default::default() });
        let config = |name: &str, data: &[u8], templating| ConfigSpec {
            annotations: Annotations { name: name.into(), labels: Default::default() },
            data: data.to_vec(),
            templating,
        };
        for (spec, msg) in [
            (config("a", b"x", driver("jinja")), "config a: unsupported template driver \"jinja\""),
            (config("b", b"{{.Task.Slot", driver("golang")), "config b: template parsing error"),
        ] {
            let e = api.create_config(Request::new(CreateConfigRequest { spec })).await.unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument);
            assert!(e.message().contains(msg), "{:?} lacks {msg:?}", e.message());
        }
        let cfg = config("c", b"{{.Node.Hostname}}", driver("golang"));
        let c = api.create_config(Request::new(CreateConfigRequest { spec: cfg })).await.unwrap().into_inner();
        assert_eq!(c.spec.templating, driver("golang"));

        let mut s = spec("pw", b"{{env \"A\"}}");
        s.templating = driver("golang");
        api.create_secret(Request::new(CreateSecretRequest { spec: s })).await.unwrap();
        let rotate = RotateSecretRequest { id_or_name: "pw".into(), data: b"{{env \"B\"}}".to_vec() };
        let r = api.rotate_secret(Request::new(rotate)).await.unwrap().into_inner();
        assert_eq!(r.secret.spec.templating, driver("golang"));
        let bad = RotateSecretRequest { id_or_name: "pw".into(), data: b"{{".to_vec() };
        let e = api.rotate_secret(Request::new(bad)).await.unwrap_err();
        assert!(e.message().contains("template parsing error"), "{}", e.message());
    }

    #[tokio::test]
    async fn rotation_makes_a_new_version_and_moves_the_services_to_it() {
        let store = Store::in_memory();
        let api = ControlApi::with_store(store.clone());
        let v1 = create(&api, "pw", b"one").await.unwrap();
        let web = create_service(&api, "web", vec![reference("pw", "")]).await.unwrap();
        let rotate = |data: &'static [u8]| {
            api.rotate_secret(Request::new(RotateSecretRequest { id_or_name: "pw".into(), data: data.to_vec() }))
        };
        let r = rotate(b"two").await.unwrap().into_inner();
        assert_eq!((r.secret.spec.annotations.name.as_str(), r.secret.version()), ("pw.v2", 2));
        assert_eq!(r.services, vec!["web".to_string()]);
        let now = store.view(|v| v.service(&web.id).cloned()).unwrap();
        let refs = &now.spec.task_template.container.secrets;
        assert_eq!((refs[0].secret_id.as_str(), refs[0].target.name.as_str()), (r.secret.id.as_str(), "pw"));
        assert_eq!(now.spec_version, web.spec_version + 1, "the service rolls with its update policy");
        let sealed = store.view(|v| v.secret(&r.secret.id).unwrap().sealed.clone());
        assert_eq!(store.data_key().unwrap().open(&sealed).unwrap(), b"two");
        assert!(store.view(|v| v.secret(&v1.id).is_some()), "the previous version stays for rollback");

        let r3 = rotate(b"three").await.unwrap().into_inner();
        assert_eq!(r3.secret.spec.annotations.name, "pw.v3");
        // v1 is in no service spec (current or previous) and no task: it goes.
        assert!(store.view(|v| v.secret(&v1.id).is_none()));
        assert!(store.view(|v| v.secret(&r.secret.id).is_some()));
    }
}
