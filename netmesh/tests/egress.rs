//! Egress tests: a container reaches a server outside the cluster through the host's egress bridge and is
//! masqueraded behind the host's address. Needs root and nft.

mod common;

use std::net::{Ipv4Addr, SocketAddr};

use common::{link, request, serve_with, unique_prefix, Guard};
use netmesh::egress;
use netmesh::netns;
use netmesh::overlay::Host;

const HOST_OUT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 1);
const CONTAINER: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 2);

#[test]
fn container_reaches_the_outside_masqueraded_and_cleanup_removes_everything() {
    let p = unique_prefix("eg");
    let mut g = Guard::default();
    let (h, out, c) = (g.netns(&format!("{p}host")), g.netns(&format!("{p}outside")), g.netns(&format!("{p}ctr")));
    link(&h, "wan0", HOST_OUT, &out, "ul1", OUTSIDE);
    serve_with(out.clone(), SocketAddr::from((OUTSIDE, 80)), |peer| format!("seen {}", peer.ip()));
    let host = Host { netns: Some(h.clone()), prefix: format!("{p}x-") };
    let hc = host.clone();
    g.defer(move || {
        let _ = netmesh::cleanup_all(&hc);
    });

    let err = egress::attach(&host, &c, "eth1", CONTAINER, 24, GATEWAY).unwrap_err();
    assert_eq!(err.to_string(), format!("egress bridge {} does not exist", egress::bridge_name(&host)));

    egress::ensure(&host, GATEWAY, 24).unwrap();
    egress::ensure(&host, GATEWAY, 24).unwrap(); // idempotent
    egress::attach(&host, &c, "eth1", CONTAINER, 24, GATEWAY).unwrap();
    // The outside has no route to 172.30.0.0/24: only masquerading makes the reply come back.
    let reply = request(&c, SocketAddr::from((OUTSIDE, 80))).unwrap();
    assert_eq!(reply, format!("seen {HOST_OUT}"));

    egress::detach(&host, CONTAINER).unwrap();
    egress::detach(&host, CONTAINER).unwrap(); // already gone: fine
    let err = request(&c, SocketAddr::from((OUTSIDE, 80))).expect_err("reached the outside after detach");
    assert!(err.contains("unreachable"), "want network unreachable, got: {err}");

    egress::attach(&host, &c, "eth1", CONTAINER, 24, GATEWAY).unwrap();
    assert_eq!(egress::cleanup_all(&host).unwrap(), 2, "the bridge and the container's veth");
    let out = netns::command(Some(&h), "nft", &["list", "tables"], None).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "", "egress table left");
    assert_eq!(egress::cleanup_all(&host).unwrap(), 0, "second run finds nothing");
}

#[test]
fn masquerade_rule_covers_the_subnet_leaving_by_other_interfaces() {
    let text = egress::render("shoal-gw0", Ipv4Addr::new(172, 30, 5, 1), 16);
    assert!(text.contains("ip saddr 172.30.0.0/16 oifname != \"shoal-gw0\" masquerade"), "{text}");
    assert!(text.starts_with("table ip shoal_egress {}\ndelete table ip shoal_egress\n"), "{text}");
}
