//! Real-kernel overlay tests: two "hosts" (namespaces joined by a veth underlay), one overlay network, one
//! "container" namespace per host. Needs root.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::{eventually, request, serve, underlay, unique_prefix, Guard};
use netmesh::netns;
use netmesh::overlay::{self, mac_for_ip, Attachment, Host, Network, RemoteEndpoint};

const NET: &str = "0123456789abcdef0123";

#[test]
fn containers_on_two_hosts_talk_over_the_overlay() {
    let p = unique_prefix("ov");
    let mut g = Guard::default();
    let (ha, hb) = (g.netns(&format!("{p}hosta")), g.netns(&format!("{p}hostb")));
    let (ca, cb) = (g.netns(&format!("{p}ca")), g.netns(&format!("{p}cb")));
    let (ua, ub) = (Ipv4Addr::new(192, 168, 77, 1), Ipv4Addr::new(192, 168, 77, 2));
    underlay(&ha, &hb, ua, ub);
    let host_a = Host { netns: Some(ha.clone()), prefix: format!("{p}a-") };
    let host_b = Host { netns: Some(hb.clone()), prefix: format!("{p}b-") };
    for h in [host_a.clone(), host_b.clone()] {
        g.defer(move || {
            overlay::cleanup_all(&h).unwrap();
        });
    }
    let gw = Some((Ipv4Addr::new(10, 77, 0, 1), 24));
    overlay::ensure_network(&host_a, &Network { id: NET.into(), vni: 4242, local: ua, gateway: gw }).unwrap();
    overlay::ensure_network(&host_b, &Network { id: NET.into(), vni: 4242, local: ub, gateway: gw }).unwrap();
    // Idempotent: a second apply changes nothing and does not fail.
    overlay::ensure_network(&host_a, &Network { id: NET.into(), vni: 4242, local: ua, gateway: gw }).unwrap();
    assert!(netns::exists(&host_a.sandbox_name(NET)), "sandbox namespace of host a");

    let (ipa, ipb) = (Ipv4Addr::new(10, 77, 0, 2), Ipv4Addr::new(10, 77, 0, 3));
    let att = |ns: &std::path::PathBuf, ip| Attachment {
        netns: ns.clone(),
        ip,
        prefix_len: 24,
        default_route: Some(Ipv4Addr::new(10, 77, 0, 1)),
    };
    overlay::attach(&host_a, NET, &att(&ca, ipa)).unwrap();
    overlay::attach(&host_b, NET, &att(&cb, ipb)).unwrap();
    let ep_a = RemoteEndpoint { ip: ipa, mac: mac_for_ip(ipa), host: ua };
    let ep_b = RemoteEndpoint { ip: ipb, mac: mac_for_ip(ipb), host: ub };
    overlay::add_remote(&host_a, NET, &ep_b).unwrap();
    overlay::add_remote(&host_a, NET, &ep_b).unwrap(); // replace, not fail
    overlay::add_remote(&host_b, NET, &ep_a).unwrap();

    serve(cb.clone(), SocketAddr::from((ipb, 8080)), "pong from b");
    let reply = eventually("TCP from container a to b over the overlay", Duration::from_secs(10), || {
        request(&ca, SocketAddr::from((ipb, 8080)))
    });
    assert_eq!(reply, "pong from b");

    // Without the remote entries, the overlay no longer carries the traffic.
    overlay::remove_remote(&host_a, NET, &ep_b).unwrap();
    overlay::remove_remote(&host_a, NET, &ep_b).unwrap(); // already gone: fine
    let err = request(&ca, SocketAddr::from((ipb, 8080))).expect_err("reached b after its entries were removed");
    assert!(err.contains("connect"), "unexpected failure: {err}");

    overlay::detach(&host_b, NET, ipb).unwrap();
    overlay::remove_network(&host_a, NET).unwrap();
    assert!(!netns::exists(&host_a.sandbox_name(NET)), "sandbox of host a still there after remove_network");
}

#[test]
fn cleanup_all_removes_every_sandbox_of_the_prefix() {
    let p = unique_prefix("oc");
    let mut g = Guard::default();
    let h = g.netns(&format!("{p}host"));
    common::add_lo_addr(&h, Ipv4Addr::new(192, 168, 78, 1), 32);
    let host = Host { netns: Some(h.clone()), prefix: format!("{p}x-") };
    let hc = host.clone();
    g.defer(move || {
        let _ = overlay::cleanup_all(&hc);
    });
    for (id, vni) in [("net1aaaaaaaaaaaa", 11), ("net2bbbbbbbbbbbb", 12)] {
        overlay::ensure_network(
            &host,
            &Network { id: id.into(), vni, local: Ipv4Addr::new(192, 168, 78, 1), gateway: None },
        )
        .unwrap();
    }
    assert_eq!(netns::list(&format!("{p}x-ov-")).len(), 2);
    assert_eq!(overlay::cleanup_all(&host).unwrap(), 2);
    assert!(netns::list(&format!("{p}x-")).is_empty(), "left: {:?}", netns::list(&format!("{p}x-")));
}

#[test]
fn bad_vni_is_refused() {
    let err = overlay::ensure_network(
        &Host { netns: None, prefix: unique_prefix("ob") },
        &Network { id: "n".into(), vni: 1 << 24, local: Ipv4Addr::LOCALHOST, gateway: None },
    )
    .unwrap_err();
    assert_eq!(err.to_string(), "overlay n: invalid vni 16777216");
}
