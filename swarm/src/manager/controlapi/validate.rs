//! Validation of specs the control API receives. Every error names the field and what is wrong.

use crate::api::{normalize_image_ref, FailureAction, Mount, MountType, NodeSpec, ServiceSpec, TaskSpec};

/// A spec the control API refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidSpec(pub String);

/// Whether `name` is a DNS label: 1–63 of letters, digits and '-', not starting or ending with '-'.
pub fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// Whether `name` is a valid service or network name, by Swarm's rule: 1–63 letters, digits, '-' and '_',
/// starting and ending with a letter or digit. The '_' is what joins a stack's name to its services' and
/// networks' (`app_web`).
pub fn is_object_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric()
}

/// Checks a service spec and normalizes what has a canonical form (the image reference).
pub fn service_spec(spec: &mut ServiceSpec) -> Result<(), InvalidSpec> {
    let name = &spec.annotations.name;
    if !is_object_name(name) {
        return Err(InvalidSpec(format!(
            "invalid name {name:?}: a service name must be 1 to 63 letters, digits, '-' or '_', starting and \
             ending with a letter or digit"
        )));
    }
    let c = &mut spec.task_template.container;
    if c.image.is_empty() {
        return Err(InvalidSpec("image reference must be provided".into()));
    }
    c.image = normalize_image_ref(&c.image).map_err(|e| InvalidSpec(e.to_string()))?;
    if let Some(h) = &c.healthcheck {
        healthcheck(h)?;
    }
    for e in &c.env {
        if e.is_empty() || e.starts_with('=') {
            return Err(InvalidSpec(format!("invalid environment variable {e:?}: expected KEY=VALUE")));
        }
    }
    if !c.hostname.is_empty() && c.hostname.len() > 253 {
        return Err(InvalidSpec("hostname is longer than 253 characters".into()));
    }
    for m in &c.mounts {
        mount(m)?;
    }
    for (flag, caps) in [("--cap-add", &mut c.capability_add), ("--cap-drop", &mut c.capability_drop)] {
        for cap in caps.iter_mut() {
            *cap = crate::api::normalize_capability(cap).map_err(|e| InvalidSpec(format!("invalid {flag}: {e}")))?;
        }
    }
    if let crate::api::Seccomp::Custom(profile) = &c.seccomp {
        // The node reads the profile's rules; here it only has to be a JSON object with a default action.
        let json: serde_json::Value =
            serde_json::from_str(profile).map_err(|e| InvalidSpec(format!("invalid seccomp profile: {e}")))?;
        if json.get("defaultAction").and_then(|a| a.as_str()).is_none() {
            return Err(InvalidSpec("invalid seccomp profile: defaultAction is missing".into()));
        }
    }
    for u in &c.ulimits {
        u.check().map_err(|e| InvalidSpec(format!("invalid --ulimit: {e}")))?;
    }
    let r = &spec.task_template.resources;
    for (what, v) in [
        ("--limit-cpu", r.limits.nano_cpus),
        ("--limit-memory", r.limits.memory_bytes),
        ("--reserve-cpu", r.reservations.nano_cpus),
        ("--reserve-memory", r.reservations.memory_bytes),
        ("--limit-pids", r.limits.pids),
    ] {
        if v < 0 {
            return Err(InvalidSpec(format!("{what} must not be negative")));
        }
    }
    if r.limits.memory_bytes > 0 && r.limits.memory_bytes < 6 * 1024 * 1024 {
        return Err(InvalidSpec("--limit-memory must be at least 6MB".into()));
    }
    update_configs(spec)?;
    if spec.task_template.placement.max_replicas > 0 && spec.mode == crate::api::ServiceMode::Global {
        return Err(InvalidSpec("--replicas-max-per-node cannot be used with global mode".into()));
    }
    if spec.task_template.placement.max_replicas > 0 && spec.mode == crate::api::ServiceMode::GlobalJob {
        return Err(InvalidSpec("--replicas-max-per-node cannot be used with global-job mode".into()));
    }
    // Jobs are run again, not rolled out: an update or rollback config would be ignored (Docker refuses it).
    let defaults = crate::api::UpdateConfig::default();
    if spec.mode.is_job() && (spec.update_config != defaults || spec.rollback_config != defaults) {
        return Err(InvalidSpec("update and rollback configuration is not supported for jobs".into()));
    }
    placement_and_generic_resources(&spec.task_template)?;
    super::endpoint::check_ports(&spec.endpoint_spec)?;
    Ok(())
}

/// Checks the update and rollback settings: failure ratios are fractions, and a rollback cannot itself roll back.
fn update_configs(spec: &ServiceSpec) -> Result<(), InvalidSpec> {
    for (flag, c) in [("update", &spec.update_config), ("rollback", &spec.rollback_config)] {
        let r = c.max_failure_ratio;
        if !(0.0..=1.0).contains(&r) {
            return Err(InvalidSpec(format!("--{flag}-max-failure-ratio must be between 0 and 1, got {r}")));
        }
    }
    if spec.rollback_config.failure_action == FailureAction::Rollback {
        return Err(InvalidSpec(
            "--rollback-failure-action must be pause or continue: a rollback cannot be rolled back".into(),
        ));
    }
    Ok(())
}

/// The service's own health check, refused here rather than as a REJECTED task on every node (the image's
/// HEALTHCHECK is only known there, and checked there with the same rules).
fn healthcheck(h: &crate::api::HealthConfig) -> Result<(), InvalidSpec> {
    let bad = |why: String| Err(InvalidSpec(format!("invalid health check: {why}")));
    match h.test.first().map(String::as_str) {
        None | Some("NONE") => {}
        Some(kind @ ("CMD" | "CMD-SHELL")) => {
            if h.test.len() < 2 || h.test.last().is_some_and(|a| a.is_empty()) {
                return bad(format!("{kind} without a command"));
            }
        }
        Some(other) => return bad(format!("unknown test type {other:?}: expected NONE, CMD or CMD-SHELL")),
    }
    // Docker's floor: a non-zero duration under a millisecond is a mistake, not "inherit".
    for (name, d) in [
        ("Interval", h.interval),
        ("Timeout", h.timeout),
        ("StartPeriod", h.start_period),
        ("StartInterval", h.start_interval),
    ] {
        if !d.is_zero() && d < std::time::Duration::from_millis(1) {
            return bad(format!("{name} in Healthcheck cannot be less than 1ms"));
        }
    }
    Ok(())
}

/// Checks a node spec: label keys must be non-empty and free of whitespace and '=' (they are written `k=v`).
pub fn node_spec(spec: &NodeSpec) -> Result<(), InvalidSpec> {
    for k in spec.annotations.labels.keys() {
        if k.is_empty() {
            return Err(InvalidSpec("invalid label: the key must not be empty".into()));
        }
        if k.contains('=') || k.chars().any(char::is_whitespace) {
            return Err(InvalidSpec(format!("invalid label key {k:?}: must not contain '=' or whitespace")));
        }
    }
    Ok(())
}

/// Checks the spread preferences' descriptors and the generic resources a task reserves (`KIND=N`, N ≥ 1).
fn placement_and_generic_resources(t: &TaskSpec) -> Result<(), InvalidSpec> {
    for crate::api::PlacementPreference::Spread(d) in &t.placement.preferences {
        if !crate::manager::scheduler::spread::is_known_descriptor(d) {
            return Err(InvalidSpec(format!(
                "invalid placement preference spread={d}: unknown descriptor (expected node.labels.<name>, \
                 engine.labels.<name>, node.id, node.hostname, node.role, node.platform.os or node.platform.arch)"
            )));
        }
    }
    for (kind, n) in &t.resources.generic_reservations {
        if kind.is_empty() || kind.contains('=') || kind.chars().any(char::is_whitespace) {
            return Err(InvalidSpec(format!("invalid --generic-resource {kind:?}: expected KIND=N")));
        }
        if *n == 0 {
            return Err(InvalidSpec(format!("invalid --generic-resource {kind}={n}: the count must be at least 1")));
        }
    }
    Ok(())
}

fn mount(m: &Mount) -> Result<(), InvalidSpec> {
    let bad = |why: String| Err(InvalidSpec(format!("invalid mount config for type {:?}: {why}", m.kind.to_string())));
    if !m.target.starts_with('/') {
        return bad(format!("invalid mount target, must be an absolute path: {:?}", m.target));
    }
    match m.kind {
        MountType::Bind => {
            if m.source.is_empty() {
                return bad("field Source must not be empty".into());
            }
            if !m.source.starts_with('/') {
                return bad(format!("invalid mount source, must be an absolute path: {:?}", m.source));
            }
        }
        MountType::Volume => {
            if !m.source.is_empty() && !m.source.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)) {
                return bad(format!("invalid volume name {:?}: only [a-zA-Z0-9_.-] are allowed", m.source));
            }
        }
        MountType::Tmpfs => {
            if !m.source.is_empty() {
                return bad("field Source must not be specified".into());
            }
        }
    }
    if m.tmpfs_size > 0 && m.kind != MountType::Tmpfs {
        return bad("tmpfs-size can only be used with type tmpfs".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::service;

    #[test]
    fn names_must_be_dns_labels() {
        assert!(is_dns_label("web"));
        assert!(is_dns_label("web-2"));
        assert!(!is_dns_label("Web_2"));
        assert!(!is_dns_label("-web"));
        assert!(!is_dns_label(&"a".repeat(64)));
        assert!(is_object_name("app_web") && is_object_name("web-2") && is_object_name("Web"));
        assert!(!is_object_name("_web") && !is_object_name("web-") && !is_object_name("a.b"));
        let mut s = service("s", "bad.name", 1).spec;
        assert!(service_spec(&mut s).unwrap_err().0.contains("invalid name \"bad.name\""));
    }

    #[test]
    fn normalizes_image_and_checks_mounts() {
        let mut s = service("s", "web", 1).spec;
        s.task_template.container.image = "busybox".into();
        service_spec(&mut s).unwrap();
        assert_eq!(s.task_template.container.image, "docker.io/library/busybox:latest");
        s.task_template.container.mounts.push(Mount {
            kind: MountType::Bind,
            source: "relative".into(),
            target: "/data".into(),
            readonly: false,
            tmpfs_size: 0,
        });
        assert!(service_spec(&mut s).unwrap_err().0.contains("must be an absolute path"));
    }

    #[test]
    fn checks_capabilities_ulimits_and_pids() {
        let mut s = service("s", "web", 1).spec;
        s.task_template.container.capability_add = vec!["net_admin".into(), "all".into()];
        s.task_template.container.ulimits = vec!["nofile=1024:2048".parse().unwrap()];
        s.task_template.resources.limits.pids = 100;
        service_spec(&mut s).unwrap();
        assert_eq!(s.task_template.container.capability_add, vec!["CAP_NET_ADMIN", "ALL"], "normalized");
        s.task_template.container.capability_drop = vec!["NOPE".into()];
        assert_eq!(service_spec(&mut s).unwrap_err().0, "invalid --cap-drop: unknown capability: \"NOPE\"");
        let mut s = service("s", "web", 1).spec;
        s.task_template.container.ulimits = vec![crate::api::Ulimit { name: "nofile".into(), soft: 10, hard: 5 }];
        assert!(service_spec(&mut s).unwrap_err().0.contains("soft limit must be less than or equal to hard"));
        let mut s = service("s", "web", 1).spec;
        s.task_template.container.seccomp = crate::api::Seccomp::Custom("{\"syscalls\": []}".into());
        assert_eq!(service_spec(&mut s).unwrap_err().0, "invalid seccomp profile: defaultAction is missing");
        s.task_template.container.seccomp = crate::api::Seccomp::Custom("not json".into());
        assert!(service_spec(&mut s).unwrap_err().0.starts_with("invalid seccomp profile: expected"));
        let mut s = service("s", "web", 1).spec;
        s.task_template.resources.limits.pids = -1;
        assert_eq!(service_spec(&mut s).unwrap_err().0, "--limit-pids must not be negative");
    }

    #[test]
    fn accepts_jobs_but_not_a_per_node_limit_on_a_global_job() {
        let mut s = service("s", "job", 1).spec;
        s.mode = crate::api::ServiceMode::ReplicatedJob { max_concurrent: 2, total_completions: 6 };
        service_spec(&mut s).unwrap();
        s.mode = crate::api::ServiceMode::GlobalJob;
        service_spec(&mut s).unwrap();
        s.task_template.placement.max_replicas = 1;
        assert_eq!(service_spec(&mut s).unwrap_err().0, "--replicas-max-per-node cannot be used with global-job mode");
        s.task_template.placement.max_replicas = 0;
        s.update_config.parallelism = 2;
        assert_eq!(service_spec(&mut s).unwrap_err().0, "update and rollback configuration is not supported for jobs");
    }

    #[test]
    fn refuses_a_malformed_health_check() {
        let mut s = service("s", "web", 1).spec;
        let check = |test: &[&str]| crate::api::HealthConfig {
            test: test.iter().map(|t| t.to_string()).collect(),
            ..Default::default()
        };
        for ok in [&["CMD", "true"][..], &["CMD-SHELL", "test -f /ok"], &["NONE"], &[]] {
            s.task_template.container.healthcheck = Some(check(ok));
            service_spec(&mut s).unwrap_or_else(|e| panic!("{ok:?}: {}", e.0));
        }
        for (test, why) in [
            (&["CMD"][..], "invalid health check: CMD without a command"),
            (&["CMD-SHELL", ""], "invalid health check: CMD-SHELL without a command"),
            (&["SHELL", "true"], "invalid health check: unknown test type \"SHELL\": expected NONE, CMD or CMD-SHELL"),
        ] {
            s.task_template.container.healthcheck = Some(check(test));
            assert_eq!(service_spec(&mut s).unwrap_err().0, why);
        }
        let mut tiny = check(&["CMD", "true"]);
        tiny.interval = std::time::Duration::from_micros(10);
        s.task_template.container.healthcheck = Some(tiny);
        assert_eq!(
            service_spec(&mut s).unwrap_err().0,
            "invalid health check: Interval in Healthcheck cannot be less than 1ms"
        );
    }

    #[test]
    fn checks_update_and_rollback_settings() {
        let mut s = service("s", "web", 1).spec;
        s.update_config.max_failure_ratio = 0.25;
        s.rollback_config.failure_action = FailureAction::Continue;
        service_spec(&mut s).unwrap();
        s.update_config.max_failure_ratio = 1.5;
        assert_eq!(service_spec(&mut s).unwrap_err().0, "--update-max-failure-ratio must be between 0 and 1, got 1.5");
        s.update_config.max_failure_ratio = 0.0;
        s.rollback_config.max_failure_ratio = -0.1;
        assert_eq!(
            service_spec(&mut s).unwrap_err().0,
            "--rollback-max-failure-ratio must be between 0 and 1, got -0.1"
        );
        s.rollback_config.max_failure_ratio = f64::NAN;
        assert!(service_spec(&mut s).is_err(), "NaN is no ratio");
        s.rollback_config.max_failure_ratio = 1.0;
        s.rollback_config.failure_action = FailureAction::Rollback;
        assert_eq!(
            service_spec(&mut s).unwrap_err().0,
            "--rollback-failure-action must be pause or continue: a rollback cannot be rolled back"
        );
        s.rollback_config.failure_action = FailureAction::Pause;
        s.update_config.failure_action = FailureAction::Rollback;
        service_spec(&mut s).unwrap();
    }

    #[test]
    fn rejects_bad_constraints_and_images() {
        // Constraints are parsed as the spec is decoded: a bad one never reaches a component.
        let mut json = serde_json::to_value(service("s", "web", 1).spec).unwrap();
        json["task_template"]["placement"]["constraints"] = serde_json::json!(["node.role=manager"]);
        let err = serde_json::from_value::<crate::api::ServiceSpec>(json).unwrap_err().to_string();
        assert!(err.contains("invalid constraint \"node.role=manager\""), "{err}");
        let mut s = service("s", "web", 1).spec;
        s.task_template.container.image = "Bad Image".into();
        assert!(service_spec(&mut s).unwrap_err().0.contains("invalid reference format"));
    }

    #[test]
    fn checks_spread_descriptors_and_generic_resources() {
        use crate::api::PlacementPreference::Spread;
        let mut s = service("s", "web", 1).spec;
        s.task_template.placement.preferences = vec![Spread("node.labels.zone".into()), Spread("node.role".into())];
        s.task_template.resources.generic_reservations.insert("gpu".into(), 2);
        service_spec(&mut s).unwrap();
        s.task_template.placement.preferences = vec![Spread("zone".into())];
        assert!(service_spec(&mut s).unwrap_err().0.starts_with("invalid placement preference spread=zone: unknown"));
        let mut s = service("s", "web", 1).spec;
        s.task_template.resources.generic_reservations.insert("gpu".into(), 0);
        assert_eq!(
            service_spec(&mut s).unwrap_err().0,
            "invalid --generic-resource gpu=0: the count must be at least 1"
        );
    }
}
