//! `service inspect --pretty`: Docker's human layout of a service (its `serviceInspectPrettyTemplate`).

use crate::output::bytes_size;
use std::fmt::Write;
use swarm::api::{familiar_image_ref, format_duration, RestartCondition, Service, ServiceMode};

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
    let _ = writeln!(o, "Placement:");
    if !t.placement.constraints.is_empty() {
        let _ = writeln!(
            o,
            " Constraints:\t[{}]",
            t.placement.constraints.iter().map(ToString::to_string).collect::<Vec<_>>().join(" ")
        );
    }
    if t.placement.max_replicas > 0 {
        let _ = writeln!(o, " Max Replicas Per Node:\t{}", t.placement.max_replicas);
    }
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
    let has_res = res.reservations.nano_cpus > 0 || res.reservations.memory_bytes > 0;
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
        }
    }
    let _ = writeln!(o, "Endpoint Mode:\tvip");
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
}
