//! Templated secrets and configs (`--template-driver golang`), as SwarmKit's `template` package: the object's
//! data is a Go `text/template` (rendered with `gtmpl`) that the node running a task renders for that task when
//! it writes the task's files, with Docker's context — `.Service.{ID,Name,Labels}`, `.Node.{ID,Hostname}`,
//! `.Node.Platform.{OS,Architecture}`, `.Task.{ID,Name,Slot}` — and the functions `env` (the task's
//! environment), `secret` and `config` (another file of the same task, by its target, as stored).
//!
//! Unlike SwarmKit, which logs a failed expansion and mounts the template text as it is, a template that fails
//! fails the task with the error, naming the secret or config.

use crate::agent::exec::ExecError;
use crate::api::{Driver, FileTarget, NodeDescription, Task, TaskFiles, TEMPLATE_DRIVER_GOLANG};
use gtmpl::{FuncError, Value};
use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;

/// Refuses a template driver other than Docker's only one.
pub fn check_driver(d: &Driver) -> Result<(), String> {
    if d.name == TEMPLATE_DRIVER_GOLANG {
        Ok(())
    } else {
        Err(format!("unsupported template driver {:?}: the only template driver is {TEMPLATE_DRIVER_GOLANG:?}", d.name))
    }
}

/// Checks a new object's template: a known driver and text that parses (so a typo is refused when the object
/// is created, not by every task that mounts it).
pub fn check(driver: &Driver, data: &[u8]) -> Result<(), String> {
    check_driver(driver)?;
    compile(data).map(|_| ())
}

const FUNCS: &[(&str, gtmpl::Func)] = &[("env", env), ("secret", secret), ("config", config)];

fn compile(data: &[u8]) -> Result<gtmpl::Template, String> {
    let text = std::str::from_utf8(data).map_err(|_| "a template must be UTF-8 text".to_string())?;
    let mut t = gtmpl::Template::default();
    t.add_funcs(FUNCS);
    t.parse(text).map_err(|e| format!("template parsing error: {e}"))?;
    Ok(t)
}

/// What `env`, `secret` and `config` read while one payload renders. gtmpl's functions are plain `fn` pointers
/// with no context of their own, so the task's values reach them through this thread-local, set only for the
/// duration of one (synchronous) render on the rendering thread.
struct Lookups {
    env: HashMap<String, String>,
    secrets: HashMap<String, String>,
    configs: HashMap<String, String>,
}

thread_local! {
    static LOOKUPS: RefCell<Option<Lookups>> = const { RefCell::new(None) };
}

/// Clears the lookups when a render ends, even by a panic, so no secret outlives it in the thread.
struct LookupsGuard;

impl Drop for LookupsGuard {
    fn drop(&mut self) {
        LOOKUPS.with(|l| l.borrow_mut().take());
    }
}

fn one_string(func: &str, args: &[Value]) -> Result<String, FuncError> {
    match args {
        [Value::String(s)] => Ok(s.clone()),
        [_] => Err(FuncError::Generic(format!("{func}: the argument must be a string"))),
        _ => Err(FuncError::ExactlyXArgs(func.into(), 1)),
    }
}

fn lookup(func: &str, args: &[Value], pick: fn(&Lookups, &str) -> Option<String>) -> Result<Value, FuncError> {
    let key = one_string(func, args)?;
    let found = LOOKUPS.with(|l| l.borrow().as_ref().map(|l| pick(l, &key)));
    match found {
        None => Err(FuncError::Generic(format!("{func}: not available here"))),
        Some(Some(v)) => Ok(Value::String(v)),
        // Go's `env` gives "" for an unset variable; an unknown target is an error, as in SwarmKit.
        Some(None) if func == "env" => Ok(Value::String(String::new())),
        Some(None) => Err(FuncError::Generic(format!("{func} target {key} not found"))),
    }
}

fn env(args: &[Value]) -> Result<Value, FuncError> {
    lookup("env", args, |l, k| l.env.get(k).cloned())
}

fn secret(args: &[Value]) -> Result<Value, FuncError> {
    lookup("secret", args, |l, k| l.secrets.get(k).cloned())
}

fn config(args: &[Value]) -> Result<Value, FuncError> {
    lookup("config", args, |l, k| l.configs.get(k).cloned())
}

fn object<const N: usize>(fields: [(&str, Value); N]) -> Value {
    Value::Object(fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

fn string(s: &str) -> Value {
    Value::String(s.to_string())
}

/// Docker's template context for `task` on the node `node` describes (SwarmKit's `NewContext`).
fn context(task: &Task, node: &NodeDescription) -> Value {
    let labels = task.service_annotations.labels.iter().map(|(k, v)| (k.clone(), string(v))).collect();
    // A global task has no slot; Docker gives its node id instead.
    let slot = if task.slot > 0 { task.slot.to_string() } else { task.node_id.clone() };
    object([
        (
            "Service",
            object([
                ("ID", string(&task.service_id)),
                ("Name", string(&task.service_annotations.name)),
                ("Labels", Value::Map(labels)),
            ]),
        ),
        (
            "Node",
            object([
                ("ID", string(&task.node_id)),
                ("Hostname", string(&node.hostname)),
                (
                    "Platform",
                    object([("OS", string(&node.platform.os)), ("Architecture", string(&node.platform.architecture))]),
                ),
            ]),
        ),
        (
            "Task",
            object([("ID", string(&task.id)), ("Name", string(&task.container_name())), ("Slot", Value::String(slot))]),
        ),
    ])
}

/// One secret or config file of a task, with its data for that task.
pub struct TaskFile<'a> {
    pub target: &'a FileTarget,
    /// A secret (mounted under `/run/secrets`), or a config.
    pub secret: bool,
    pub data: Cow<'a, [u8]>,
}

/// The secret and config files `task` mounts, in its spec's order (secrets first), with their data from the
/// node's set `files`: a templated one rendered for this task on this node. A reference whose data has not
/// reached the node, or whose template fails, is an error naming it.
pub fn task_files<'a>(
    task: &'a Task,
    node: &NodeDescription,
    files: &'a TaskFiles,
) -> Result<Vec<TaskFile<'a>>, ExecError> {
    let c = &task.spec.container;
    let mut out = Vec::with_capacity(c.secrets.len() + c.configs.len());
    let mut payloads = Vec::with_capacity(out.capacity());
    for r in &c.secrets {
        let p = files.secrets.get(&r.secret_id).ok_or_else(|| {
            ExecError::InvalidSpec(format!("secret {} ({}) is not available on this node", r.secret_name, r.secret_id))
        })?;
        payloads.push((p, &r.target, true));
    }
    for r in &c.configs {
        let p = files.configs.get(&r.config_id).ok_or_else(|| {
            ExecError::InvalidSpec(format!("config {} ({}) is not available on this node", r.config_name, r.config_id))
        })?;
        payloads.push((p, &r.target, false));
    }
    let templated = payloads.iter().any(|(p, _, _)| p.templating.is_some());
    let _guard = templated.then(|| {
        let by_target = |secret: bool| -> HashMap<String, String> {
            payloads
                .iter()
                .filter(|(_, _, s)| *s == secret)
                .map(|(p, t, _)| (t.name.clone(), String::from_utf8_lossy(&p.data).into_owned()))
                .collect()
        };
        let env: HashMap<String, String> =
            c.env.iter().filter_map(|e| e.split_once('=')).map(|(k, v)| (k.into(), v.into())).collect();
        let lookups = Lookups { env, secrets: by_target(true), configs: by_target(false) };
        LOOKUPS.with(|l| *l.borrow_mut() = Some(lookups));
        LookupsGuard
    });
    let ctx = templated.then(|| gtmpl::Context::from(context(task, node)));
    for (p, target, secret) in payloads {
        let data = match (&p.templating, &ctx) {
            (Some(driver), Some(ctx)) => {
                let kind = if secret { "secret" } else { "config" };
                let fail = |e: String| ExecError::Runtime(format!("templated {kind} {}: {e}", p.name));
                check_driver(driver).map_err(fail)?;
                let t = compile(&p.data).map_err(fail)?;
                Cow::Owned(t.render(ctx).map_err(|e| fail(e.to_string()))?.into_bytes())
            }
            _ => Cow::Borrowed(p.data.as_slice()),
        };
        out.push(TaskFile { target, secret, data });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ConfigReference, FilePayload, Platform, SecretReference};

    fn target(name: &str) -> FileTarget {
        FileTarget { name: name.into(), uid: "0".into(), gid: "0".into(), mode: 0o444 }
    }

    fn golang() -> Option<Driver> {
        Some(Driver { name: "golang".into(), options: Default::default() })
    }

    fn payload(id: &str, data: &str, templating: Option<Driver>) -> FilePayload {
        FilePayload { id: id.into(), name: format!("name-{id}"), data: data.as_bytes().to_vec(), templating }
    }

    fn node() -> NodeDescription {
        NodeDescription {
            hostname: "node-2".into(),
            platform: Platform { os: "linux".into(), architecture: "amd64".into() },
            ..Default::default()
        }
    }

    /// Task `t1` of service `web` (slot 3, label `tier=front`, env `MODE=prod`) on node `n2`, mounting secret
    /// `s1` at `pw` and config `c1` at `app.conf`.
    fn task() -> Task {
        let mut t = crate::testing::task("t1", "svc1", 3);
        t.service_annotations.name = "web".into();
        t.service_annotations.labels.insert("tier".into(), "front".into());
        t.node_id = "n2".into();
        t.spec_mut().container.env = vec!["MODE=prod".into(), "EMPTY=".into()];
        t.spec_mut().container.secrets =
            vec![SecretReference { secret_id: "s1".into(), secret_name: "pw".into(), target: target("pw") }];
        t.spec_mut().container.configs =
            vec![ConfigReference { config_id: "c1".into(), config_name: "app".into(), target: target("app.conf") }];
        t
    }

    fn files(secret: FilePayload, config: FilePayload) -> TaskFiles {
        TaskFiles {
            secrets: [(secret.id.clone(), secret)].into_iter().collect(),
            configs: [(config.id.clone(), config)].into_iter().collect(),
        }
    }

    fn rendered(f: &TaskFiles) -> Result<Vec<String>, ExecError> {
        let t = task();
        let out = task_files(&t, &node(), f)?;
        Ok(out.iter().map(|f| String::from_utf8(f.data.to_vec()).unwrap()).collect())
    }

    #[test]
    fn a_template_renders_docker_s_context_for_the_task() {
        let text = "{{.Service.ID}} {{.Service.Name}} {{index .Service.Labels \"tier\"}} {{.Node.ID}} \
                    {{.Node.Hostname}} {{.Node.Platform.OS}}/{{.Node.Platform.Architecture}} {{.Task.ID}} \
                    {{.Task.Name}} {{.Task.Slot}} {{env \"MODE\"}}[{{env \"UNSET\"}}] {{secret \"pw\"}}";
        let f = files(payload("s1", "hunter2", None), payload("c1", text, golang()));
        assert_eq!(
            rendered(&f).unwrap(),
            vec![
                "hunter2".to_string(),
                "svc1 web front n2 node-2 linux/amd64 t1 web.3.t1 3 prod[] hunter2".to_string()
            ]
        );
    }

    #[test]
    fn untemplated_data_is_passed_as_it_is_and_a_secret_can_read_a_config() {
        let f = files(
            payload("s1", "pw for {{.Task.Slot}}: {{config \"app.conf\"}}", golang()),
            payload("c1", "{{x}}", None),
        );
        assert_eq!(rendered(&f).unwrap(), vec!["pw for 3: {{x}}".to_string(), "{{x}}".to_string()]);
    }

    #[test]
    fn a_global_task_s_slot_is_its_node_id() {
        let mut t = task();
        t.slot = 0;
        let f = files(payload("s1", "{{.Task.Slot}}", golang()), payload("c1", "x", None));
        let out = task_files(&t, &node(), &f).unwrap();
        assert_eq!(&*out[0].data, b"n2");
    }

    #[test]
    fn a_failing_template_names_the_object_and_the_problem() {
        for (text, want) in [
            ("{{.Nope}}", "templated config name-c1: "),
            ("{{secret \"other\"}}", "secret target other not found"),
            ("{{config}}", "config requires exactly 1 argument(s)"),
            ("{{.Task.Slot", "templated config name-c1: template parsing error"),
        ] {
            let f = files(payload("s1", "x", None), payload("c1", text, golang()));
            let e = rendered(&f).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e:?} lacks {want:?}");
        }
        let other = Some(Driver { name: "jinja".into(), options: Default::default() });
        let e = rendered(&files(payload("s1", "x", other), payload("c1", "y", None))).unwrap_err().to_string();
        assert!(e.contains("templated secret name-s1: unsupported template driver \"jinja\""), "{e}");
        // Nothing of the task's values stays behind in the thread.
        assert!(LOOKUPS.with(|l| l.borrow().is_none()));
    }

    #[test]
    fn a_missing_payload_is_named() {
        let mut f = files(payload("s1", "x", None), payload("c1", "y", None));
        f.secrets.clear();
        let e = rendered(&f).unwrap_err().to_string();
        assert!(e.contains("secret pw (s1) is not available on this node"), "{e}");
    }

    #[test]
    fn create_checks_the_driver_and_the_syntax() {
        let g = golang().unwrap();
        assert!(check(&g, b"{{env \"A\"}} {{secret \"b\"}} {{.Task.Slot}}").is_ok());
        assert!(check(&g, b"{{.Task.Slot").unwrap_err().contains("template parsing error"));
        assert!(check(&g, &[0xff, 0xfe]).unwrap_err().contains("UTF-8"));
        let e = check(&Driver { name: "x".into(), options: Default::default() }, b"a").unwrap_err();
        assert_eq!(e, "unsupported template driver \"x\": the only template driver is \"golang\"");
    }
}
