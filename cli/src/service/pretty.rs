//! `service inspect --pretty`: Docker's human layout of a service (its `serviceInspectPrettyTemplate`).

use super::opts::placement_pref_text;
use crate::output::{bytes_size, human_duration};
use std::fmt::Write;
use std::time::SystemTime;
use swarm::api::{
    familiar_image_ref, format_duration, FailureAction, RestartCondition, Service, ServiceMode, Timestamp,
    UpdateConfig, UpdateOrder,
};

fn cpus(nano: i64) -> String {
    // Docker prints the CPU count as a float ("0.5", "2").
    let v = nano as f64 / 1e9;
    let s = format!("{v:.9}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn condition(c: RestartCondition) -> &'static str {
    match c {
        RestartCondition::None => "none",
        RestartCondition::OnFailure => "on-failure",
        RestartCondition::Any => "any",
    }
}

fn ago(t: &Timestamp) -> String {
    let since = SystemTime::now().duration_since(t.0).unwrap_or_default();
    format!("{} ago", human_duration(since).to_lowercase())
}

fn failure_action(a: FailureAction) -> &'static str {
    match a {
        FailureAction::Pause => "pause",
        FailureAction::Continue => "continue",
        FailureAction::Rollback => "rollback",
    }
}

fn order(o: UpdateOrder) -> &'static str {
    match o {
        UpdateOrder::StopFirst => "stop-first",
        UpdateOrder::StartFirst => "start-first",
    }
}

/// Docker's `UpdateConfig:` / `RollbackConfig:` block.
fn update_config(o: &mut String, title: &str, order_title: &str, u: &UpdateConfig) {
    let _ = writeln!(o, "{title}:");
    let _ = writeln!(o, " Parallelism:\t{}", u.parallelism);
    if !u.delay.is_zero() {
        let _ = writeln!(o, " Delay:\t\t{}", format_duration(u.delay));
    }
    let _ = writeln!(o, " On failure:\t{}", failure_action(u.failure_action));
    if !u.monitor.is_zero() {
        let _ = writeln!(o, " Monitoring Period: {}", format_duration(u.monitor));
    }
    let _ = writeln!(o, " Max failure ratio: {}", u.max_failure_ratio);
    let _ = writeln!(o, " {order_title}:{:>w$}{}", "", order(u.order), w = 18 - order_title.len());
}

/// Renders one service. Writing to a `String` cannot fail, so the `writeln!` results are ignored.
pub fn service(s: &Service) -> String {
    let mut o = String::new();
    let spec = &s.spec;
    let t = &spec.task_template;
    let c = &t.container;
    let _ = writeln!(o);
    let _ = writeln!(o, "ID:\t\t{}", s.id);
    let _ = writeln!(o, "Name:\t\t{}", spec.annotations.name);
    if !spec.annotations.labels.is_empty() {
        let _ = writeln!(o, "Labels:");
        for (k, v) in &spec.annotations.labels {
            if v.is_empty() {
                let _ = writeln!(o, " {k}");
            } else {
                let _ = writeln!(o, " {k}={v}");
            }
        }
    }
    match spec.mode {
        ServiceMode::Replicated { replicas } => {
            let _ = writeln!(o, "Service Mode:\tReplicated");
            let _ = writeln!(o, " Replicas:\t{replicas}");
        }
        ServiceMode::Global => {
            let _ = writeln!(o, "Service Mode:\tGlobal");
        }
        ServiceMode::ReplicatedJob { max_concurrent, total_completions } => {
            let _ = writeln!(o, "Service Mode:\tReplicated Job");
            let _ = writeln!(o, " Max Concurrent:\t{max_concurrent}");
            let _ = writeln!(o, " Total Completions:\t{total_completions}");
        }
        ServiceMode::GlobalJob => {
            let _ = writeln!(o, "Service Mode:\tGlobal Job");
        }
    }
    if let Some(u) = &s.update_status {
        let _ = writeln!(o, "UpdateStatus:");
        let _ = writeln!(o, " State:\t\t{}", u.state.name());
        let _ = writeln!(o, " Started:\t{}", ago(&u.started_at));
        if let Some(done) = &u.completed_at {
            let _ = writeln!(o, " Completed:\t{}", ago(done));
        }
        let _ = writeln!(o, " Message:\t{}", u.message);
    }
    let _ = writeln!(o, "Placement:");
    if !t.placement.constraints.is_empty() {
        let _ = writeln!(
            o,
            " Constraints:\t[{}]",
            t.placement.constraints.iter().map(ToString::to_string).collect::<Vec<_>>().join(" ")
        );
    }
    if !t.placement.preferences.is_empty() {
        let prefs: Vec<String> = t.placement.preferences.iter().map(placement_pref_text).collect();
        let _ = writeln!(o, " Preferences:\t[{}]", prefs.join(" "));
    }
    if t.placement.max_replicas > 0 {
        let _ = writeln!(o, " Max Replicas Per Node:\t{}", t.placement.max_replicas);
    }
    update_config(&mut o, "UpdateConfig", "Update order", &spec.update_config);
    update_config(&mut o, "RollbackConfig", "Rollback order", &spec.rollback_config);
    let r = &t.restart_policy;
    let _ = writeln!(o, "RestartPolicy:");
    let _ = writeln!(o, " Condition:\t{}", condition(r.condition));
    let _ = writeln!(o, " Delay:\t\t{}", format_duration(r.delay));
    let _ = writeln!(o, " Max Attempts:\t{}", r.max_attempts);
    if !r.window.is_zero() {
        let _ = writeln!(o, " Window:\t{}", format_duration(r.window));
    }
    let _ = writeln!(o, "ContainerSpec:");
    let _ = writeln!(o, " Image:\t\t{}", familiar_image_ref(&c.image));
    if !c.command.is_empty() {
        let _ = writeln!(o, " Command:\t{}", c.command.join(" "));
    }
    if !c.args.is_empty() {
        let _ = writeln!(o, " Args:\t\t{}", c.args.join(" "));
    }
    if !c.env.is_empty() {
        let _ = writeln!(o, " Env:\t\t{}", c.env.join(" "));
    }
    if !c.dir.is_empty() {
        let _ = writeln!(o, " Dir:\t\t{}", c.dir);
    }
    if c.init {
        let _ = writeln!(o, " Init:\t\ttrue");
    }
    if !c.user.is_empty() {
        let _ = writeln!(o, " User:\t\t{}", c.user);
    }
    if !c.hostname.is_empty() {
        let _ = writeln!(o, " Hostname:\t{}", c.hostname);
    }
    if !c.stop_signal.is_empty() {
        let _ = writeln!(o, " StopSignal:\t{}", c.stop_signal);
    }
    let _ = writeln!(o, " StopGracePeriod:\t{}", format_duration(c.stop_grace_period));
    if let Some(h) = &c.healthcheck {
        let _ = writeln!(o, "Healthcheck:");
        match h.test.first().map(String::as_str) {
            Some("NONE") => {
                let _ = writeln!(o, " Disabled:\ttrue");
            }
            Some("CMD-SHELL") => {
                let _ = writeln!(o, " Test:\t\t{}", h.test[1..].join(" "));
            }
            Some(_) => {
                let _ = writeln!(o, " Test:\t\t{}", h.test.join(" "));
            }
            None => {
                let _ = writeln!(o, " Test:\t\t(the image's)");
            }
        }
        for (name, d) in [
            ("Interval", h.interval),
            ("Timeout", h.timeout),
            ("Start Period", h.start_period),
            ("Start Interval", h.start_interval),
        ] {
            if !d.is_zero() {
                let _ = writeln!(o, " {name}:\t{}", format_duration(d));
            }
        }
        if h.retries > 0 {
            let _ = writeln!(o, " Retries:\t{}", h.retries);
        }
    }
    if !c.capability_add.is_empty() || !c.capability_drop.is_empty() {
        let _ = writeln!(o, "Capabilities:");
        if !c.capability_add.is_empty() {
            let _ = writeln!(o, " Add: {}", c.capability_add.join(", "));
        }
        if !c.capability_drop.is_empty() {
            let _ = writeln!(o, " Drop: {}", c.capability_drop.join(", "));
        }
    }
    if !c.ulimits.is_empty() {
        // Docker ranges over a map here, so the names come sorted.
        let mut ulimits: Vec<_> = c.ulimits.iter().collect();
        ulimits.sort_by(|a, b| a.name.cmp(&b.name));
        let _ = writeln!(o, "Ulimits:");
        for u in ulimits {
            let _ = writeln!(o, " {}: {}:{}", u.name, u.soft, u.hard);
        }
    }
    if !c.mounts.is_empty() {
        let _ = writeln!(o, "Mounts:");
        for m in &c.mounts {
            let _ = writeln!(o, " Target:\t{}", m.target);
            let _ = writeln!(o, "  Source:\t{}", m.source);
            let _ = writeln!(o, "  ReadOnly:\t{}", m.readonly);
            let _ = writeln!(o, "  Type:\t\t{}", m.kind);
            if m.tmpfs_size > 0 {
                let _ = writeln!(o, "  Size:\t\t{}", bytes_size(m.tmpfs_size));
            }
        }
    }
    let res = &t.resources;
    let has_res =
        res.reservations.nano_cpus > 0 || res.reservations.memory_bytes > 0 || !res.generic_reservations.is_empty();
    let has_lim = res.limits.nano_cpus > 0 || res.limits.memory_bytes > 0 || res.limits.pids > 0;
    if has_res || has_lim {
        let _ = writeln!(o, "Resources:");
        for (title, r, shown) in [(" Reservations:", &res.reservations, has_res), (" Limits:", &res.limits, has_lim)] {
            if !shown {
                continue;
            }
            let _ = writeln!(o, "{title}");
            if r.nano_cpus > 0 {
                let _ = writeln!(o, "  CPU:\t\t{}", cpus(r.nano_cpus));
            }
            if r.memory_bytes > 0 {
                let _ = writeln!(o, "  Memory:\t{}", bytes_size(r.memory_bytes as u64));
            }
            if r.pids > 0 {
                let _ = writeln!(o, "  PIDs:\t\t{}", r.pids);
            }
            if title == " Reservations:" && !res.generic_reservations.is_empty() {
                let _ = writeln!(o, "  Generic Resources:");
                for (kind, n) in &res.generic_reservations {
                    let _ = writeln!(o, "   {kind}:\t{n}");
                }
            }
        }
    }
    let e = &s.spec.endpoint_spec;
    let _ = writeln!(o, "Endpoint Mode:\t{}", if e.mode == swarm::api::EndpointMode::Dnsrr { "dnsrr" } else { "vip" });
    let ports = s.endpoint.as_ref().filter(|x| !x.ports.is_empty()).map_or(&e.ports, |x| &x.ports);
    if !ports.is_empty() {
        let _ = writeln!(o, "Ports:");
        for p in ports {
            let mode = if p.publish_mode == swarm::api::PublishMode::Host { "host" } else { "ingress" };
            let _ = writeln!(o, " PublishedPort = {}", p.published_port);
            let _ = writeln!(o, "  Protocol = {}", p.protocol.name());
            let _ = writeln!(o, "  TargetPort = {}", p.target_port);
            let _ = writeln!(o, "  PublishMode = {mode}");
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pretty_service_has_docker_sections() {
        let mut s: Service = serde_json::from_value(serde_json::json!({
            "id": "abc",
            "spec": {"name": "web", "task_template": {"container": {"image": "docker.io/library/busybox:latest"}},
                     "mode": {"replicated": {"replicas": 3}}}
        }))
        .unwrap();
        let t = &mut s.spec.task_template;
        t.container.args = vec!["sleep".into(), "1d".into()];
        t.resources.reservations.nano_cpus = 500_000_000;
        t.resources.reservations.memory_bytes = 64 << 20;
        t.placement.constraints = vec!["node.role==manager".parse().unwrap()];
        let out = service(&s);
        for want in [
            "ID:\t\tabc",
            "Name:\t\tweb",
            "Service Mode:\tReplicated",
            " Replicas:\t3",
            " Constraints:\t[node.role==manager]",
            " Condition:\tany",
            " Delay:\t\t5s",
            " Image:\t\tbusybox:latest",
            " Args:\t\tsleep 1d",
            "  CPU:\t\t0.5",
            "  Memory:\t64MiB",
        ] {
            assert!(out.lines().any(|l| l == want), "missing {want:?} in\n{out}");
        }
        for absent in ["Init:", "Capabilities:", "Ulimits:", "PIDs:"] {
            assert!(!out.contains(absent), "{absent} shown without being set:\n{out}");
        }
    }

    #[test]
    fn pretty_service_shows_security_options_and_pids() {
        let mut s: Service = serde_json::from_value(serde_json::json!({
            "id": "abc",
            "spec": {"name": "web", "task_template": {"container": {"image": "busybox"}}, "mode": "global"}
        }))
        .unwrap();
        let c = &mut s.spec.task_template.container;
        c.init = true;
        c.capability_add = vec!["CAP_NET_ADMIN".into(), "CAP_SYS_TIME".into()];
        c.capability_drop = vec!["CAP_CHOWN".into()];
        c.ulimits = vec!["nproc=64".parse().unwrap(), "nofile=1024:2048".parse().unwrap()];
        s.spec.task_template.resources.limits.pids = 100;
        let out = service(&s);
        let want = "Capabilities:\n Add: CAP_NET_ADMIN, CAP_SYS_TIME\n Drop: CAP_CHOWN\nUlimits:\n nofile: 1024:2048\n nproc: 64:64\n";
        assert!(out.contains(want), "missing {want:?} in\n{out}");
        assert!(out.contains(" Init:\t\ttrue\n"), "{out}");
        assert!(out.contains(" Limits:\n  PIDs:\t\t100\n"), "{out}");
    }

    #[test]
    fn pretty_service_shows_the_lifecycle_settings() {
        let mut s: Service = serde_json::from_value(serde_json::json!({
            "id": "abc",
            "spec": {"name": "web", "task_template": {"container": {"image": "busybox"}},
                     "mode": {"replicatedjob": {"max_concurrent": 2, "total_completions": 6}},
                     "update_config": {"parallelism": 2, "delay": "10s", "failure_action": "rollback",
                                       "order": "start-first", "max_failure_ratio": 0.2}},
            "update_status": {"state": "paused", "started_at": "2024-01-02T03:04:05.000000000Z",
                              "message": "update paused due to failure or early termination of task x"}
        }))
        .unwrap();
        let t = &mut s.spec.task_template;
        t.placement.preferences = vec![swarm::api::PlacementPreference::Spread("node.labels.zone".into())];
        t.resources.generic_reservations = [("gpu".to_string(), 2)].into();
        t.container.healthcheck = Some(swarm::api::HealthConfig {
            test: vec!["CMD-SHELL".into(), "wget -q localhost".into()],
            interval: std::time::Duration::from_secs(5),
            retries: 3,
            ..Default::default()
        });
        let out = service(&s);
        for want in [
            "Service Mode:\tReplicated Job\n Max Concurrent:\t2\n Total Completions:\t6\n",
            "UpdateStatus:\n State:\t\tpaused\n Started:\t",
            " Message:\tupdate paused due to failure or early termination of task x\n",
            " Preferences:\t[spread=node.labels.zone]\n",
            "UpdateConfig:\n Parallelism:\t2\n Delay:\t\t10s\n On failure:\trollback\n Monitoring Period: 5s\n \
             Max failure ratio: 0.2\n Update order:      start-first\n",
            "RollbackConfig:\n Parallelism:\t1\n On failure:\tpause\n Monitoring Period: 5s\n Max failure ratio: 0\n \
             Rollback order:    stop-first\n",
            "Healthcheck:\n Test:\t\twget -q localhost\n Interval:\t5s\n Retries:\t3\n",
            " Reservations:\n  Generic Resources:\n   gpu:\t2\n",
        ] {
            assert!(out.contains(want), "missing {want:?} in\n{out}");
        }
        assert!(out.contains(" Started:\t") && out.contains(" ago\n"), "{out}");
    }
}
