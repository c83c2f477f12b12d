//! Published ports: which service holds an ingress port, and a service's ports with every dynamic one decided
//! (the lowest free of 30000–32767, per protocol; a port the service already had for the same entry is kept).
//! Host-mode ports are per node and never conflict across services here.

use crate::api::{PortConfig, PortProtocol, PublishMode, Service};
use crate::manager::store::MemoryStore;
use std::collections::BTreeSet;
use std::ops::RangeInclusive;

/// Where ingress ports published without a number come from (Docker's range).
pub const DYNAMIC_PORTS: RangeInclusive<u16> = 30000..=32767;

/// Why a service's ports could not be decided.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// Another service publishes the port on the routing mesh.
    #[error("port '{port}' is already in use by service '{service}' ({id}) as an ingress port")]
    InUse { port: u16, service: String, id: String },
    /// Every dynamic port of the protocol is taken.
    #[error("no free published port for {0} in 30000-32767")]
    Exhausted(&'static str),
}

/// The ingress ports `s` publishes or asks for: those of its spec with a number and those allocated to it.
fn ingress_ports(s: &Service) -> impl Iterator<Item = (u16, PortProtocol)> + '_ {
    let allocated = s.endpoint.iter().flat_map(|e| e.ports.iter());
    s.spec
        .endpoint_spec
        .ports
        .iter()
        .chain(allocated)
        .filter(|p| p.publish_mode == PublishMode::Ingress && p.published_port != 0)
        .map(|p| (p.published_port, p.protocol))
}

/// The service other than `except` that publishes (or asks for) ingress port `port`/`protocol`.
pub fn ingress_port_user<'a>(
    view: &'a MemoryStore,
    port: u16,
    protocol: PortProtocol,
    except: &str,
) -> Option<&'a Service> {
    view.services().filter(|s| s.id != except).find(|s| ingress_ports(s).any(|p| p == (port, protocol)))
}

/// The ports of `s`'s spec as allocated: explicit ingress ports checked against every other service, dynamic
/// ones kept from the current endpoint when the same entry had one (and no one else took it), else the lowest
/// free.
pub fn allocate(view: &MemoryStore, s: &Service) -> Result<Vec<PortConfig>, PortError> {
    let mut used: BTreeSet<(u16, PortProtocol)> =
        view.services().filter(|o| o.id != s.id).flat_map(ingress_ports).collect();
    let asked = &s.spec.endpoint_spec.ports;
    for p in asked.iter().filter(|p| p.publish_mode == PublishMode::Ingress && p.published_port != 0) {
        if used.contains(&(p.published_port, p.protocol)) {
            let other = ingress_port_user(view, p.published_port, p.protocol, &s.id).expect("a user of a used port");
            return Err(PortError::InUse {
                port: p.published_port,
                service: other.spec.annotations.name.clone(),
                id: other.id.clone(),
            });
        }
    }
    used.extend(
        asked
            .iter()
            .filter(|p| p.publish_mode == PublishMode::Ingress && p.published_port != 0)
            .map(|p| (p.published_port, p.protocol)),
    );
    // The current allocation, entry by entry (spec entry, allocated entry), each reusable once.
    let mut previous: Vec<(&PortConfig, &PortConfig)> =
        s.endpoint.iter().flat_map(|e| e.spec.ports.iter().zip(e.ports.iter())).collect();
    let mut out = Vec::with_capacity(asked.len());
    for p in asked {
        let mut a = p.clone();
        if p.publish_mode == PublishMode::Ingress && p.published_port == 0 {
            let kept = previous
                .iter()
                .position(|(spec, got)| *spec == p && !used.contains(&(got.published_port, p.protocol)))
                .map(|i| previous.remove(i).1.published_port)
                .filter(|port| DYNAMIC_PORTS.contains(port));
            let port = match kept {
                Some(port) => port,
                None => DYNAMIC_PORTS
                    .clone()
                    .find(|port| !used.contains(&(*port, p.protocol)))
                    .ok_or(PortError::Exhausted(p.protocol.name()))?,
            };
            used.insert((port, p.protocol));
            a.published_port = port;
        }
        out.push(a);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Endpoint;
    use crate::testing::service;

    fn port(published: u16, target: u16) -> PortConfig {
        PortConfig { target_port: target, published_port: published, ..Default::default() }
    }

    fn publishing(id: &str, name: &str, ports: Vec<PortConfig>) -> Service {
        let mut s = service(id, name, 1);
        s.spec.endpoint_spec.ports = ports;
        s
    }

    fn allocated(mut s: Service, view: &MemoryStore) -> Service {
        let ports = allocate(view, &s).unwrap();
        s.endpoint = Some(Endpoint { spec: s.spec.endpoint_spec.clone(), ports, virtual_ips: vec![] });
        s
    }

    #[test]
    fn dynamic_ports_are_the_lowest_free_and_explicit_ones_conflict_by_service() {
        let web = allocated(publishing("s1", "web", vec![port(0, 80), port(30001, 81)]), &MemoryStore::new());
        let got: Vec<u16> = web.endpoint.as_ref().unwrap().ports.iter().map(|p| p.published_port).collect();
        assert_eq!(got, vec![30000, 30001]);

        let view = MemoryStore::from_objects(vec![web.clone().into()]);
        let api = publishing("s2", "api", vec![port(0, 80), port(0, 443)]);
        let got: Vec<u16> = allocate(&view, &api).unwrap().iter().map(|p| p.published_port).collect();
        assert_eq!(got, vec![30002, 30003], "30000 and 30001 are web's");

        let mut udp = port(0, 53);
        udp.protocol = PortProtocol::Udp;
        assert_eq!(
            allocate(&view, &publishing("s3", "dns", vec![udp])).unwrap()[0].published_port,
            30000,
            "per protocol"
        );

        let clash = publishing("s4", "other", vec![port(30001, 8080)]);
        assert_eq!(
            allocate(&view, &clash).unwrap_err().to_string(),
            "port '30001' is already in use by service 'web' (s1) as an ingress port"
        );
        let mut host = port(30001, 80);
        host.publish_mode = PublishMode::Host;
        assert!(allocate(&view, &publishing("s5", "h", vec![host])).is_ok(), "host ports are per node");
    }

    #[test]
    fn an_update_keeps_the_dynamic_ports_of_entries_that_stay() {
        let web = allocated(publishing("s1", "web", vec![port(0, 80), port(0, 81)]), &MemoryStore::new());
        let mut next = web.clone();
        // Drop the first entry, add another: 81 keeps 30001, the new one takes the lowest free (30000).
        next.spec.endpoint_spec.ports = vec![port(0, 81), port(0, 82)];
        let got: Vec<(u16, u16)> =
            allocate(&MemoryStore::new(), &next).unwrap().iter().map(|p| (p.target_port, p.published_port)).collect();
        assert_eq!(got, vec![(81, 30001), (82, 30000)]);
    }

    #[test]
    fn the_dynamic_range_runs_out_with_a_reason() {
        let mut holder = publishing("s1", "big", vec![]);
        holder.endpoint = Some(Endpoint { ports: DYNAMIC_PORTS.map(|p| port(p, 80)).collect(), ..Default::default() });
        let view = MemoryStore::from_objects(vec![holder.into()]);
        let e = allocate(&view, &publishing("s2", "late", vec![port(0, 80)])).unwrap_err();
        assert_eq!(e.to_string(), "no free published port for tcp in 30000-32767");
    }
}
