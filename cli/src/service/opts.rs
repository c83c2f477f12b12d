//! Parsers for `service create` flag values, written as clap value parsers so a bad value is reported as
//! `invalid argument "<value>" for "--<flag>" flag: <reason>` (see `main.rs`), before anything is sent.
//!
//! Each one follows the Docker CLI's accepted syntax (`opts/mount.go`, go-units `RAMInBytes`, `NanoCPUs`,
//! `ValidateEnv`, `ValidateLabel`, `shlex`), because scripts written for `docker service create` should work.

use std::time::Duration;
use swarm::api::{FailureAction, Mount, MountType, PlacementPreference, UpdateOrder};

/// `--replicas`: a u64; clap is told to accept "-1" as a value so it reaches this check instead of being
/// mistaken for a flag.
pub fn replicas(s: &str) -> Result<u64, String> {
    s.trim().parse::<u64>().map_err(|_| format!("invalid replicas value {s}: must be a non-negative integer"))
}

/// Any other count (`--restart-max-attempts`, `--replicas-max-per-node`, …).
pub fn count(s: &str) -> Result<u64, String> {
    s.trim().parse::<u64>().map_err(|_| format!("invalid value {s}: must be a non-negative integer"))
}

/// Durations as Docker writes them ("10s", "1m30s", "500ms", "0"); a negative one is refused by name rather
/// than as a parse error, since "-1s" is a plausible thing to type.
pub fn duration(s: &str) -> Result<Duration, String> {
    if s.trim().starts_with('-') {
        return Err("duration cannot be negative".into());
    }
    swarm::api::parse_duration(s)
}

/// `--update-order` / `--rollback-order`.
pub fn update_order(s: &str) -> Result<UpdateOrder, String> {
    match s {
        "stop-first" => Ok(UpdateOrder::StopFirst),
        "start-first" => Ok(UpdateOrder::StartFirst),
        other => Err(format!("invalid order {other:?}: must be stop-first or start-first")),
    }
}

/// `--update-failure-action`: pause, continue or rollback.
pub fn update_failure_action(s: &str) -> Result<FailureAction, String> {
    match s {
        "pause" => Ok(FailureAction::Pause),
        "continue" => Ok(FailureAction::Continue),
        "rollback" => Ok(FailureAction::Rollback),
        other => Err(format!("invalid failure action {other:?}: must be pause, continue or rollback")),
    }
}

/// `--rollback-failure-action`: a failing rollback cannot itself roll back, so only pause or continue.
pub fn rollback_failure_action(s: &str) -> Result<FailureAction, String> {
    match s {
        "pause" => Ok(FailureAction::Pause),
        "continue" => Ok(FailureAction::Continue),
        other => Err(format!("invalid failure action {other:?}: must be pause or continue")),
    }
}

/// `--update-max-failure-ratio` / `--rollback-max-failure-ratio`: a fraction in 0..=1.
pub fn failure_ratio(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("invalid max failure ratio {s}: must be a number"))?;
    if !(0.0..=1.0).contains(&v) {
        return Err(format!("invalid max failure ratio {s}: must be between 0 and 1"));
    }
    Ok(v)
}

/// `--placement-pref spread=node.labels.zone` (Docker's `placementPrefOpts`; spread is the only strategy).
pub fn placement_pref(s: &str) -> Result<PlacementPreference, String> {
    let (strategy, arg) = s
        .split_once('=')
        .filter(|(k, v)| !k.is_empty() && !v.is_empty() && !v.contains('='))
        .ok_or_else(|| "placement preference must be of the format \"<strategy>=<arg>\"".to_string())?;
    if strategy != "spread" {
        return Err(format!("unsupported placement preference {strategy} (only spread is supported)"));
    }
    Ok(PlacementPreference::Spread(arg.to_string()))
}

/// How a placement preference is written on the command line (and shown by `inspect --pretty`).
pub fn placement_pref_text(p: &PlacementPreference) -> String {
    match p {
        PlacementPreference::Spread(arg) => format!("spread={arg}"),
    }
}

/// `--generic-resource KIND=N`: a count of a discrete resource the nodes advertise.
pub fn generic_resource(s: &str) -> Result<(String, u64), String> {
    let (kind, n) = s.split_once('=').ok_or_else(|| format!("invalid generic resource {s:?}: expected KIND=COUNT"))?;
    let kind = kind.trim();
    if kind.is_empty() {
        return Err(format!("invalid generic resource {s:?}: empty kind"));
    }
    let n = n
        .trim()
        .parse::<u64>()
        .map_err(|_| format!("invalid generic resource {s:?}: the count must be a non-negative integer"))?;
    Ok((kind.to_string(), n))
}

/// `--args "sh -c 'echo hi'"`: the command's arguments, split like a shell (Docker's `ShlexOpt`); empty clears
/// them so the image's CMD applies again.
pub fn args(s: &str) -> Result<Words, String> {
    shell_words(s).map(Words)
}

/// go-units `RAMInBytes`: `64m`, `1g`, `512k`, `1.5GiB`, `1024` (binary multiples, case-insensitive).
pub fn size(s: &str) -> Result<i64, String> {
    let err = || format!("invalid size: '{s}'");
    let t = s.trim();
    let num_end = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(num_end);
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') {
        return Err(err());
    }
    let value: f64 = num.parse().map_err(|_| err())?;
    let unit = unit.strip_prefix(' ').unwrap_or(unit).to_ascii_lowercase();
    let mut chars = unit.chars().peekable();
    let mult: f64 = match chars.peek() {
        Some('k') => 1024f64,
        Some('m') => 1024f64.powi(2),
        Some('g') => 1024f64.powi(3),
        Some('t') => 1024f64.powi(4),
        Some('p') => 1024f64.powi(5),
        _ => 1.0,
    };
    if mult > 1.0 {
        chars.next();
    }
    // What may follow the multiplier: an optional 'i' then an optional 'b' ("k", "kb", "kib", "b").
    let rest: String = chars.collect();
    if !matches!(rest.as_str(), "" | "b" | "i" | "ib") {
        return Err(err());
    }
    let bytes = value * mult;
    if bytes >= i64::MAX as f64 {
        return Err(format!("invalid size: '{s}': too large"));
    }
    Ok(bytes as i64)
}

/// Docker's `NanoCPUs`: a decimal number of CPUs ("0.5", "2", "1.25") as billionths of a CPU.
pub fn nano_cpus(s: &str) -> Result<i64, String> {
    let t = s.trim();
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    let digits_only = |p: &str| p.chars().all(|c| c.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !digits_only(int) || !digits_only(frac) {
        return Err(format!("failed to parse {s} as a non-negative decimal number of CPUs"));
    }
    if frac.len() > 9 {
        return Err("value is too precise".into());
    }
    let whole: i64 = if int.is_empty() { 0 } else { int.parse().map_err(|_| format!("{s} CPUs is too large"))? };
    let frac_nanos: i64 =
        if frac.is_empty() { 0 } else { format!("{frac:0<9}").parse().map_err(|_| "bad fraction")? };
    whole
        .checked_mul(1_000_000_000)
        .and_then(|n| n.checked_add(frac_nanos))
        .ok_or_else(|| format!("{s} CPUs is too large"))
}

/// Docker's `ValidateEnv`: `KEY=VALUE` as is; a bare `KEY` takes its value from this shell if set.
pub fn env(s: &str) -> Result<String, String> {
    match s.split_once('=') {
        Some(("", _)) => Err(format!("invalid environment variable: {s}")),
        Some(_) => Ok(s.to_string()),
        None if s.trim().is_empty() => Err(format!("invalid environment variable: {s:?}")),
        None => Ok(match std::env::var(s) {
            Ok(v) => format!("{s}={v}"),
            Err(_) => s.to_string(),
        }),
    }
}

/// Docker's `ValidateLabel`: `KEY=VALUE`, or `KEY` for an empty value.
pub fn label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').unwrap_or((s, ""));
    if k.trim().is_empty() {
        return Err(format!("invalid label '{s}': empty name"));
    }
    Ok((k.to_string(), v.to_string()))
}

/// `--log-opt`: `KEY=VALUE`.
pub fn log_opt(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("invalid log opt '{s}': expected KEY=VALUE")),
    }
}

/// `--restart-condition`: none, on-failure or any.
pub fn restart_condition(s: &str) -> Result<swarm::api::RestartCondition, String> {
    s.parse()
}

/// `--cap-add/--cap-drop`: Docker's names, case-insensitive, with or without `CAP_`, or `ALL`.
pub fn capability(s: &str) -> Result<String, String> {
    swarm::api::normalize_capability(s)
}

/// `--ulimit NAME=SOFT[:HARD]` (go-units' `ParseUlimit`).
pub fn ulimit(s: &str) -> Result<swarm::api::Ulimit, String> {
    s.parse()
}

/// `--security-opt`: of Docker's options, `seccomp=unconfined` (no filter) and `seccomp=PATH` (a profile in
/// Docker's JSON format, read here and sent with the spec, as `docker run` does); Docker's default profile
/// applies without either.
pub fn security_opt(s: &str) -> Result<swarm::api::Seccomp, String> {
    match s.split_once(['=', ':']) {
        Some(("seccomp", "unconfined")) => Ok(swarm::api::Seccomp::Unconfined),
        Some(("seccomp", path)) => {
            let profile =
                std::fs::read_to_string(path).map_err(|e| format!("opening seccomp profile ({path}) failed: {e}"))?;
            serde_json::from_str::<serde_json::Value>(&profile)
                .map_err(|e| format!("seccomp profile ({path}) is not valid JSON: {e}"))?;
            Ok(swarm::api::Seccomp::Custom(profile))
        }
        _ => Err(format!("security option {s:?} is not supported (only seccomp=unconfined and seccomp=PATH are)")),
    }
}

/// A command split into words (`--entrypoint "sh -c"`); a newtype so clap treats it as one value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Words(pub Vec<String>);

/// `--entrypoint`: split like a shell; an empty string is refused rather than silently meaning "no override".
pub fn words(s: &str) -> Result<Words, String> {
    let w = shell_words(s)?;
    if w.is_empty() {
        return Err("entrypoint must not be empty".into());
    }
    Ok(Words(w))
}

/// Splits a command line as a POSIX shell would (Docker's `--entrypoint` uses shlex).
pub fn shell_words(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err(format!("unterminated single quote in {s:?}")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => cur.push(c),
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => return Err(format!("unterminated double quote in {s:?}")),
                        },
                        Some(c) => cur.push(c),
                        None => return Err(format!("unterminated double quote in {s:?}")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => cur.push(c),
                    None => return Err(format!("trailing backslash in {s:?}")),
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

/// Splits one CSV record (Go's `encoding/csv`, which Docker's `--mount` uses): commas separate fields, a field
/// may be double-quoted, and `""` inside quotes is a quote.
fn csv_fields(s: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                    None => return Err("unterminated quote".into()),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => fields.push(field),
                Some(c) => return Err(format!("unexpected {c:?} after quoted field")),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some('"') => return Err("bare \" in non-quoted field".into()),
                    Some(c) => field.push(c),
                }
            }
            fields.push(field);
        }
    }
}

/// Go's `strconv.ParseBool`, which Docker uses for `readonly=…`.
fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// `--mount type=bind|volume|tmpfs,source|src=…,target|dst|destination=…,readonly|ro[=bool],tmpfs-size=…`.
/// The type defaults to `volume`, as in Docker.
pub fn mount(s: &str) -> Result<Mount, String> {
    let fields = csv_fields(s)?;
    let mut kind: Option<MountType> = None;
    let mut source = String::new();
    let mut target = String::new();
    let mut readonly = false;
    let mut tmpfs_size: Option<u64> = None;
    for field in fields {
        let field = field.trim();
        if field.is_empty() {
            continue;
        }
        let (key, value) = match field.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.trim())),
            None => (field.to_ascii_lowercase(), None),
        };
        match (key.as_str(), value) {
            ("readonly" | "ro", None) => readonly = true,
            ("readonly" | "ro", Some(v)) => {
                readonly = parse_bool(v).ok_or_else(|| format!("invalid value for {key}: {v}"))?;
            }
            (_, None) => return Err(format!("invalid field '{field}' must be a key=value pair")),
            ("type", Some(v)) => {
                kind = Some(match v.to_ascii_lowercase().as_str() {
                    "bind" => MountType::Bind,
                    "volume" => MountType::Volume,
                    "tmpfs" => MountType::Tmpfs,
                    other => return Err(format!("invalid mount type '{other}': must be bind, volume or tmpfs")),
                })
            }
            ("source" | "src", Some(v)) => source = v.to_string(),
            ("target" | "dst" | "destination", Some(v)) => target = v.to_string(),
            ("tmpfs-size", Some(v)) => {
                let n = size(v).map_err(|e| format!("invalid value for tmpfs-size: {e}"))?;
                tmpfs_size = Some(n as u64);
            }
            (
                "volume-nocopy" | "volume-label" | "volume-driver" | "volume-opt" | "volume-subpath"
                | "bind-propagation" | "bind-nonrecursive" | "bind-recursive" | "bind-create-src" | "tmpfs-mode"
                | "consistency",
                Some(_),
            ) => return Err(format!("mount option '{key}' is not supported by shoal")),
            (_, Some(_)) => return Err(format!("unexpected key '{key}' in '{field}'")),
        }
    }
    let kind = kind.unwrap_or(MountType::Volume);
    if target.is_empty() {
        return Err("target is required".into());
    }
    if !target.starts_with('/') {
        return Err(format!("target must be an absolute path, got '{target}'"));
    }
    match kind {
        MountType::Bind if source.is_empty() => return Err("source is required for bind mounts".into()),
        MountType::Bind if !source.starts_with('/') => {
            return Err(format!("bind source must be an absolute path, got '{source}'"))
        }
        MountType::Tmpfs if !source.is_empty() => return Err("source must not be set for tmpfs mounts".into()),
        _ => {}
    }
    if tmpfs_size.is_some() && kind != MountType::Tmpfs {
        return Err(format!("cannot mix 'tmpfs-*' options with mount type '{kind}'"));
    }
    Ok(Mount { kind, source, target, readonly, tmpfs_size: tmpfs_size.unwrap_or(0) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_parse_like_docker() {
        let m = mount("type=bind,source=/srv/data,target=/data,readonly").unwrap();
        assert_eq!(
            m,
            Mount {
                kind: MountType::Bind,
                source: "/srv/data".into(),
                target: "/data".into(),
                readonly: true,
                tmpfs_size: 0
            }
        );
        let m = mount("type=volume,src=cache,dst=/cache,ro=false").unwrap();
        assert_eq!(
            (m.kind, m.source.as_str(), m.target.as_str(), m.readonly),
            (MountType::Volume, "cache", "/cache", false)
        );
        let m = mount("type=tmpfs,destination=/tmp,tmpfs-size=64m").unwrap();
        assert_eq!((m.kind, m.tmpfs_size), (MountType::Tmpfs, 64 * 1024 * 1024));
        // The type defaults to volume; keys are case-insensitive; quoted fields may hold commas.
        let m = mount("Target=/x").unwrap();
        assert_eq!(m.kind, MountType::Volume);
        let m = mount("type=bind,\"source=/a,b\",target=/c").unwrap();
        assert_eq!(m.source, "/a,b");
    }

    #[test]
    fn malformed_mounts_say_what_is_wrong() {
        assert_eq!(mount("type=bind").unwrap_err(), "target is required");
        assert_eq!(mount("type=bind,target=/x").unwrap_err(), "source is required for bind mounts");
        assert_eq!(mount("type=nfs,target=/x").unwrap_err(), "invalid mount type 'nfs': must be bind, volume or tmpfs");
        assert_eq!(
            mount("type=bind,source=/a,target=/b,bogus").unwrap_err(),
            "invalid field 'bogus' must be a key=value pair"
        );
        assert_eq!(
            mount("type=bind,source=/a,target=/b,colour=red").unwrap_err(),
            "unexpected key 'colour' in 'colour=red'"
        );
        assert_eq!(mount("type=bind,source=/a,target=/b,ro=maybe").unwrap_err(), "invalid value for ro: maybe");
        assert!(mount("type=tmpfs,source=/a,target=/b").is_err());
        assert!(mount("type=volume,target=/b,tmpfs-size=1m").unwrap_err().contains("cannot mix"));
        assert!(mount("type=bind,source=/a,target=relative").unwrap_err().contains("absolute"));
        assert!(mount("type=tmpfs,target=/b,tmpfs-size=lots").unwrap_err().contains("invalid size"));
        assert!(mount("type=bind,\"source=/a,target=/b").unwrap_err().contains("quote"));
    }

    #[test]
    fn lifecycle_values_parse_and_refuse_like_docker() {
        assert_eq!(duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(duration("-1s").unwrap_err(), "duration cannot be negative");
        assert_eq!(update_order("start-first").unwrap(), UpdateOrder::StartFirst);
        assert_eq!(update_order("first").unwrap_err(), "invalid order \"first\": must be stop-first or start-first");
        assert_eq!(update_failure_action("rollback").unwrap(), FailureAction::Rollback);
        assert_eq!(rollback_failure_action("continue").unwrap(), FailureAction::Continue);
        assert_eq!(
            rollback_failure_action("rollback").unwrap_err(),
            "invalid failure action \"rollback\": must be pause or continue"
        );
        assert_eq!(failure_ratio("0.25").unwrap(), 0.25);
        assert_eq!(failure_ratio("1.5").unwrap_err(), "invalid max failure ratio 1.5: must be between 0 and 1");
        assert_eq!(failure_ratio("-0.1").unwrap_err(), "invalid max failure ratio -0.1: must be between 0 and 1");
        assert!(failure_ratio("half").is_err());
        assert_eq!(
            placement_pref("spread=node.labels.zone").unwrap(),
            PlacementPreference::Spread("node.labels.zone".into())
        );
        assert_eq!(
            placement_pref("pack=node.labels.zone").unwrap_err(),
            "unsupported placement preference pack (only spread is supported)"
        );
        assert!(placement_pref("spread").unwrap_err().contains("<strategy>=<arg>"));
        assert_eq!(generic_resource("gpu=2").unwrap(), ("gpu".into(), 2));
        assert!(generic_resource("gpu").unwrap_err().contains("expected KIND=COUNT"));
        assert!(generic_resource("gpu=-1").unwrap_err().contains("non-negative integer"));
        assert_eq!(args("sh -c 'echo hi'").unwrap(), Words(vec!["sh".into(), "-c".into(), "echo hi".into()]));
        assert_eq!(args("").unwrap(), Words(vec![]));
    }

    #[test]
    fn security_flags_parse_like_docker() {
        assert_eq!(capability("net_admin").unwrap(), "CAP_NET_ADMIN");
        assert_eq!(capability("CAP_SYS_PTRACE").unwrap(), "CAP_SYS_PTRACE");
        assert_eq!(capability("all").unwrap(), "ALL");
        assert_eq!(capability("NOPE").unwrap_err(), "unknown capability: \"NOPE\"");
        assert_eq!(
            ulimit("nofile=1024:2048").unwrap(),
            swarm::api::Ulimit { name: "nofile".into(), soft: 1024, hard: 2048 }
        );
        assert_eq!(ulimit("nofile=abc").unwrap_err(), "invalid ulimit value \"abc\" for nofile: must be an integer");
        assert!(ulimit("bogus=1").unwrap_err().starts_with("invalid ulimit type: \"bogus\""));
        assert_eq!(security_opt("seccomp=unconfined").unwrap(), swarm::api::Seccomp::Unconfined);
        assert_eq!(security_opt("seccomp:unconfined").unwrap(), swarm::api::Seccomp::Unconfined);
        assert!(security_opt("seccomp=/no/such/profile.json")
            .unwrap_err()
            .starts_with("opening seccomp profile (/no/such/profile.json) failed: "));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.json");
        std::fs::write(&path, r#"{"defaultAction": "SCMP_ACT_ALLOW"}"#).unwrap();
        let opt = format!("seccomp={}", path.display());
        assert_eq!(
            security_opt(&opt).unwrap(),
            swarm::api::Seccomp::Custom(r#"{"defaultAction": "SCMP_ACT_ALLOW"}"#.into())
        );
        std::fs::write(&path, "{").unwrap();
        assert!(security_opt(&opt).unwrap_err().contains("is not valid JSON"));
        assert_eq!(
            security_opt("no-new-privileges").unwrap_err(),
            "security option \"no-new-privileges\" is not supported (only seccomp=unconfined and seccomp=PATH are)"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(size("1024"), Ok(1024));
        assert_eq!(size("512k"), Ok(512 * 1024));
        assert_eq!(size("64M"), Ok(64 * 1024 * 1024));
        assert_eq!(size("64mb"), Ok(64 * 1024 * 1024));
        assert_eq!(size("1g"), Ok(1 << 30));
        assert_eq!(size("1GiB"), Ok(1 << 30));
        assert_eq!(size("1.5g"), Ok(3 << 29));
        assert_eq!(size("100b"), Ok(100));
        for bad in ["", "m", "-1m", "1x", "1.m", "1mm", "ten"] {
            assert!(size(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn cpus() {
        assert_eq!(nano_cpus("0.5"), Ok(500_000_000));
        assert_eq!(nano_cpus("2"), Ok(2_000_000_000));
        assert_eq!(nano_cpus(".25"), Ok(250_000_000));
        assert_eq!(nano_cpus("1.000000001"), Ok(1_000_000_001));
        assert_eq!(nano_cpus("1.0000000001"), Err("value is too precise".into()));
        assert!(nano_cpus("-1").is_err());
        assert!(nano_cpus("one").is_err());
        assert!(nano_cpus(".").is_err());
    }

    #[test]
    fn log_opts_are_key_value_pairs() {
        assert_eq!(log_opt("max-size=10m"), Ok(("max-size".into(), "10m".into())));
        assert_eq!(log_opt("max-size").unwrap_err(), "invalid log opt 'max-size': expected KEY=VALUE");
        assert!(log_opt("=1").is_err());
    }

    #[test]
    fn counts_and_durations() {
        assert_eq!(replicas("3"), Ok(3));
        assert_eq!(replicas("-1").unwrap_err(), "invalid replicas value -1: must be a non-negative integer");
        assert!(count("x").is_err());
        assert_eq!(duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(duration("0"), Ok(Duration::ZERO));
        assert!(duration("soon").is_err());
    }

    #[test]
    fn env_and_labels() {
        assert_eq!(env("A=b=c").unwrap(), "A=b=c");
        assert!(env("=x").is_err());
        assert_eq!(env("SHOAL_TEST_SURELY_UNSET_VAR").unwrap(), "SHOAL_TEST_SURELY_UNSET_VAR");
        assert_eq!(label("tier=web").unwrap(), ("tier".into(), "web".into()));
        assert_eq!(label("flag").unwrap(), ("flag".into(), "".into()));
        assert!(label("=x").is_err());
    }

    #[test]
    fn entrypoint_words() {
        assert_eq!(shell_words("sh -c").unwrap(), vec!["sh", "-c"]);
        assert_eq!(shell_words(r#"/bin/echo "a b" 'c d' e\ f"#).unwrap(), vec!["/bin/echo", "a b", "c d", "e f"]);
        assert_eq!(shell_words(r#""""#).unwrap(), vec![""]);
        assert!(shell_words("'open").is_err());
    }
}
