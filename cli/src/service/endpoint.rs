//! A service's networks and published ports on the command line: Docker's `--network` and `-p/--publish`
//! syntaxes (short and long), the `--network-add/-rm` and `--publish-add/-rm` edits, and the PORTS column.

use swarm::api::{Network, NetworkAttachmentConfig, PortConfig, PortProtocol, PublishMode, Service};

/// `--network NAME` or `--network name=NAME,alias=A[,alias=B]`.
pub fn network(s: &str) -> Result<NetworkAttachmentConfig, String> {
    if !s.contains('=') {
        if s.is_empty() {
            return Err("invalid network: the name must not be empty".into());
        }
        return Ok(NetworkAttachmentConfig { target: s.into(), aliases: vec![] });
    }
    let mut out = NetworkAttachmentConfig::default();
    for field in s.split(',') {
        let (k, v) =
            field.split_once('=').ok_or_else(|| format!("invalid field '{field}' must be a key=value pair"))?;
        match k.trim().to_ascii_lowercase().as_str() {
            "name" | "target" => out.target = v.into(),
            "alias" => out.aliases.push(v.into()),
            "driver-opt" => return Err("invalid network: driver-opt is not supported".into()),
            other => return Err(format!("invalid field key {other}")),
        }
    }
    if out.target.is_empty() {
        return Err(format!("invalid network {s:?}: network name/id is required"));
    }
    Ok(out)
}

/// `--endpoint-mode vip|dnsrr`.
pub fn endpoint_mode(s: &str) -> Result<swarm::api::EndpointMode, String> {
    match s.to_ascii_lowercase().as_str() {
        "vip" => Ok(swarm::api::EndpointMode::Vip),
        "dnsrr" => Ok(swarm::api::EndpointMode::Dnsrr),
        other => Err(format!("invalid endpoint mode {other:?}: expected vip or dnsrr")),
    }
}

fn protocol(s: &str) -> Result<PortProtocol, String> {
    match s.to_ascii_lowercase().as_str() {
        "tcp" => Ok(PortProtocol::Tcp),
        "udp" => Ok(PortProtocol::Udp),
        other => Err(format!("invalid protocol {other:?}: expected tcp or udp")),
    }
}

fn port_number(s: &str, what: &str) -> Result<u16, String> {
    if s.contains('-') {
        return Err(format!(
            "invalid {what} port {s:?}: port ranges are only supported in the short form (-p 8080-8081:80-81)"
        ));
    }
    s.parse::<u16>().map_err(|_| format!("invalid {what} port {s:?}: expected a number between 0 and 65535"))
}

/// `N` or `N-M` (Docker's short-form port range), as the ports it names in order.
fn port_range(s: &str, what: &str) -> Result<Vec<u16>, String> {
    let Some((a, b)) = s.split_once('-') else { return Ok(vec![port_number(s, what)?]) };
    let (a, b) = (port_number(a, what)?, port_number(b, what)?);
    if b < a {
        return Err(format!("invalid {what} port range {s:?}: it ends before it starts"));
    }
    Ok((a..=b).collect())
}

/// The ports one `-p/--publish` names: one, or several for a short-form range (`-p 8080-8082:80-82`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ports(pub Vec<PortConfig>);

impl Ports {
    /// Every port of every `-p`, in order.
    pub fn flatten(all: &[Ports]) -> Vec<PortConfig> {
        all.iter().flat_map(|p| p.0.iter().cloned()).collect()
    }
}

/// `-p [published:]target[/proto]` (either side may be a range `N-M`, as Docker's) or `--publish
/// published=P,target=T,protocol=tcp|udp,mode=ingress|host,client-ip=masquerade|preserve`.
pub fn publish(s: &str) -> Result<Ports, String> {
    if !s.contains('=') {
        return publish_short(s);
    }
    let mut p = PortConfig::default();
    for field in s.split(',') {
        let (k, v) =
            field.split_once('=').ok_or_else(|| format!("invalid field '{field}' must be a key=value pair"))?;
        match k.trim().to_ascii_lowercase().as_str() {
            "published" => p.published_port = port_number(v, "published")?,
            "target" => p.target_port = port_number(v, "target")?,
            "protocol" => p.protocol = protocol(v)?,
            "mode" => {
                p.publish_mode = match v.to_ascii_lowercase().as_str() {
                    "ingress" => PublishMode::Ingress,
                    "host" => PublishMode::Host,
                    other => {
                        return Err(format!("invalid publish mode value ({other}): must be either 'ingress' or 'host'"))
                    }
                }
            }
            // Beyond Docker: whether a node with a task of the service here forwards to it unmasqueraded.
            "client-ip" => {
                p.preserve_client_ip = match v.to_ascii_lowercase().as_str() {
                    "masquerade" => false,
                    "preserve" => true,
                    other => {
                        return Err(format!(
                            "invalid client-ip value ({other}): must be either 'masquerade' or 'preserve'"
                        ))
                    }
                }
            }
            other => return Err(format!("invalid field key '{other}'")),
        }
    }
    if p.target_port == 0 {
        return Err(format!("invalid port {s:?}: missing or zero target port"));
    }
    if p.preserve_client_ip && p.publish_mode == PublishMode::Host {
        return Err(format!(
            "invalid port {s:?}: client-ip=preserve is for mode=ingress (mode=host always keeps the client's address)"
        ));
    }
    Ok(Ports(vec![p]))
}

fn publish_short(s: &str) -> Result<Ports, String> {
    let (ports, proto) = match s.split_once('/') {
        Some((ports, proto)) => (ports, protocol(proto)?),
        None => (s, PortProtocol::Tcp),
    };
    let (published, targets) = match ports.split(':').collect::<Vec<_>>()[..] {
        [target] => (Vec::new(), port_range(target, "target")?),
        [published, target] => {
            let published = if published.is_empty() { Vec::new() } else { port_range(published, "published")? };
            (published, port_range(target, "target")?)
        }
        _ => return Err(format!("invalid port {s:?}: expected [published:]target[/protocol]")),
    };
    if !published.is_empty() && published.len() != targets.len() {
        return Err(format!(
            "invalid port {s:?}: the published range has {} ports and the target range {}; they must match",
            published.len(),
            targets.len()
        ));
    }
    if targets.contains(&0) {
        return Err(format!("invalid port {s:?}: missing or zero target port"));
    }
    let ports = targets
        .iter()
        .enumerate()
        .map(|(i, t)| PortConfig {
            protocol: proto,
            target_port: *t,
            published_port: published.get(i).copied().unwrap_or(0),
            ..Default::default()
        })
        .collect();
    Ok(Ports(ports))
}

/// `--publish-rm`: a target port, optionally with its protocol (`80`, `80/udp`; `8080:80` names target 80).
pub fn unpublish(s: &str) -> Result<(u16, Option<PortProtocol>), String> {
    let (port, proto) = match s.split_once('/') {
        Some((p, proto)) => (p, Some(protocol(proto)?)),
        None => (s, None),
    };
    let target = port.rsplit(':').next().unwrap_or(port);
    Ok((port_number(target, "target")?, proto))
}

/// Docker's `updatePorts`: `--publish-rm` removes the entries with that target port (and protocol, if given),
/// then each `--publish-add` replaces the entry publishing the same port (or, for a dynamic one, targeting the
/// same port) or is appended.
pub fn edit_ports(ports: &mut Vec<PortConfig>, add: &[PortConfig], rm: &[(u16, Option<PortProtocol>)]) {
    ports.retain(|p| !rm.iter().any(|(t, proto)| p.target_port == *t && proto.is_none_or(|x| x == p.protocol)));
    for a in add {
        let same = |p: &PortConfig| {
            p.protocol == a.protocol
                && if a.published_port != 0 {
                    p.published_port == a.published_port
                } else {
                    p.published_port == 0 && p.target_port == a.target_port
                }
        };
        match ports.iter_mut().find(|p| same(p)) {
            Some(cur) => *cur = a.clone(),
            None => ports.push(a.clone()),
        }
    }
}

/// `--network-rm` then `--network-add`, by network id (names are resolved first, [`resolve_targets`]); adding a
/// network already attached replaces its aliases.
pub fn edit_networks(nets: &mut Vec<NetworkAttachmentConfig>, add: &[NetworkAttachmentConfig], rm: &[String]) {
    nets.retain(|n| !rm.contains(&n.target));
    for a in add {
        match nets.iter_mut().find(|n| n.target == a.target) {
            Some(cur) => *cur = a.clone(),
            None => nets.push(a.clone()),
        }
    }
}

/// The id of the network `key` names (exact id, name, or unique id prefix, as the server resolves it), or `key`
/// itself when none does (the server then answers "network KEY not found").
pub fn network_id(networks: &[Network], key: &str) -> String {
    if let Some(n) =
        networks.iter().find(|n| n.id == key).or_else(|| networks.iter().find(|n| n.spec.annotations.name == key))
    {
        return n.id.clone();
    }
    match networks.iter().filter(|n| n.id.starts_with(key)).collect::<Vec<_>>()[..] {
        [n] => n.id.clone(),
        _ => key.to_string(),
    }
}

/// The PORTS column of `service ls`: `*:8080->80/tcp`, comma-separated (host-mode ports too, as Docker).
pub fn ports_column(s: &Service) -> String {
    let ports: &[PortConfig] = match &s.endpoint {
        Some(e) if !e.ports.is_empty() => &e.ports,
        _ => &s.spec.endpoint_spec.ports,
    };
    ports
        .iter()
        .filter(|p| p.published_port != 0)
        .map(|p| format!("*:{}->{}/{}", p.published_port, p.target_port, p.protocol.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The PORTS column of `service ps`: a task's host-mode ports (ingress ones are the service's, on every node).
pub fn task_ports_column(t: &swarm::api::Task) -> String {
    t.endpoint
        .iter()
        .flat_map(|e| e.ports.iter())
        .filter(|p| p.publish_mode == PublishMode::Host && p.published_port != 0)
        .map(|p| format!("*:{}->{}/{}", p.published_port, p.target_port, p.protocol.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(published: u16, target: u16, protocol: PortProtocol, mode: PublishMode) -> PortConfig {
        PortConfig {
            protocol,
            target_port: target,
            published_port: published,
            publish_mode: mode,
            ..Default::default()
        }
    }

    fn one(s: &str) -> PortConfig {
        let ports = publish(s).unwrap().0;
        assert_eq!(ports.len(), 1, "{s}: {ports:?}");
        ports[0].clone()
    }

    #[test]
    fn publish_short_and_long_forms() {
        use PortProtocol::*;
        use PublishMode::*;
        assert_eq!(one("8080:80"), port(8080, 80, Tcp, Ingress));
        assert_eq!(one("80"), port(0, 80, Tcp, Ingress), "a dynamic port");
        assert_eq!(one("53:53/udp"), port(53, 53, Udp, Ingress));
        assert_eq!(one("published=8080,target=80,protocol=udp,mode=host"), port(8080, 80, Udp, Host));
        assert_eq!(one("target=80"), port(0, 80, Tcp, Ingress));
        let keep = one("published=8080,target=80,mode=ingress,client-ip=preserve");
        assert!(keep.preserve_client_ip && keep.publish_mode == Ingress, "{keep:?}");
        assert!(!one("published=8080,target=80,client-ip=masquerade").preserve_client_ip);
        for (bad, msg) in [
            ("8080:80/sctp", "invalid protocol \"sctp\""),
            ("x:80", "invalid published port \"x\""),
            ("published=8080-8081,target=80-81", "only supported in the short form"),
            ("published=8080", "missing or zero target port"),
            ("target=80,mode=bridge", "invalid publish mode value (bridge)"),
            ("70000:80", "invalid published port \"70000\""),
            ("target=80,client-ip=keep", "invalid client-ip value (keep)"),
            ("published=80,target=80,mode=host,client-ip=preserve", "client-ip=preserve is for mode=ingress"),
        ] {
            let e = publish(bad).unwrap_err();
            assert!(e.contains(msg), "{bad}: {e}");
        }
    }

    #[test]
    fn publish_port_ranges_as_docker() {
        use PortProtocol::*;
        use PublishMode::*;
        let ports = |s: &str| publish(s).unwrap().0;
        assert_eq!(
            ports("8080-8082:80-82"),
            vec![port(8080, 80, Tcp, Ingress), port(8081, 81, Tcp, Ingress), port(8082, 82, Tcp, Ingress)]
        );
        assert_eq!(
            ports("9000-9001:9000-9001/udp"),
            vec![port(9000, 9000, Udp, Ingress), port(9001, 9001, Udp, Ingress)]
        );
        assert_eq!(ports("80-81"), vec![port(0, 80, Tcp, Ingress), port(0, 81, Tcp, Ingress)], "dynamic ports");
        assert_eq!(ports(":80-81"), vec![port(0, 80, Tcp, Ingress), port(0, 81, Tcp, Ingress)]);
        assert_eq!(ports("8080-8080:80"), vec![port(8080, 80, Tcp, Ingress)], "a range of one");
        for (bad, msg) in [
            ("8080-8082:80-81", "the published range has 3 ports and the target range 2"),
            ("8080:80-81", "the published range has 1 ports and the target range 2"),
            ("8082-8080:80-82", "invalid published port range \"8082-8080\": it ends before it starts"),
            ("8080-x:80", "invalid published port \"x\""),
            ("8080-8081:0-1", "missing or zero target port"),
        ] {
            let e = publish(bad).unwrap_err();
            assert!(e.contains(msg), "{bad}: {e}");
        }
    }

    #[test]
    fn network_short_and_long_forms() {
        assert_eq!(network("front").unwrap(), NetworkAttachmentConfig { target: "front".into(), aliases: vec![] });
        assert_eq!(
            network("name=front,alias=web,alias=www").unwrap(),
            NetworkAttachmentConfig { target: "front".into(), aliases: vec!["web".into(), "www".into()] }
        );
        assert!(network("alias=web").unwrap_err().contains("network name/id is required"));
        assert!(network("name=front,colour=red").unwrap_err().contains("invalid field key colour"));
    }

    #[test]
    fn port_and_network_edits() {
        use PortProtocol::*;
        use PublishMode::*;
        let mut ports = vec![port(8080, 80, Tcp, Ingress), port(0, 443, Tcp, Ingress), port(53, 53, Udp, Ingress)];
        edit_ports(
            &mut ports,
            &[port(8080, 8000, Tcp, Ingress), port(9000, 90, Tcp, Host)],
            &[unpublish("443").unwrap()],
        );
        assert_eq!(ports, vec![port(8080, 8000, Tcp, Ingress), port(53, 53, Udp, Ingress), port(9000, 90, Tcp, Host)]);
        edit_ports(&mut ports, &[], &[unpublish("53/tcp").unwrap()]);
        assert_eq!(ports.len(), 3, "53/tcp is not 53/udp");
        edit_ports(&mut ports, &[], &[unpublish("53").unwrap()]);
        assert_eq!(ports.len(), 2);

        let mut nets = vec![NetworkAttachmentConfig { target: "id1".into(), aliases: vec![] }];
        edit_networks(&mut nets, &[NetworkAttachmentConfig { target: "id2".into(), aliases: vec!["a".into()] }], &[]);
        edit_networks(&mut nets, &[], &["id1".into()]);
        assert_eq!(nets, vec![NetworkAttachmentConfig { target: "id2".into(), aliases: vec!["a".into()] }]);
    }
}
