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
        ifname: "eth0".into(),
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

    assert_eq!(overlay::list_remotes(&host_a, NET).unwrap(), vec![ep_b], "programmed endpoints of host a");
    assert_eq!(link_mtu(&ca, "eth0"), 1500 - 50, "container MTU = underlay − VXLAN overhead");

    // Reconcile removes an endpoint that should not be there and keeps the right one.
    let stale =
        RemoteEndpoint { ip: Ipv4Addr::new(10, 77, 0, 9), mac: mac_for_ip(Ipv4Addr::new(10, 77, 0, 9)), host: ub };
    overlay::add_remote(&host_a, NET, &stale).unwrap();
    assert_eq!(overlay::reconcile_remotes(&host_a, NET, &[ep_b]).unwrap(), (0, 1));
    assert_eq!(overlay::list_remotes(&host_a, NET).unwrap(), vec![ep_b]);

    // Without the remote entries, the overlay no longer carries the traffic.
    overlay::remove_remote(&host_a, NET, &ep_b).unwrap();
    overlay::remove_remote(&host_a, NET, &ep_b).unwrap(); // already gone: fine
    assert_eq!(overlay::list_remotes(&host_a, NET).unwrap(), vec![], "entries left after remove_remote");
    let err = request(&ca, SocketAddr::from((ipb, 8080))).expect_err("reached b after its entries were removed");
    assert!(err.contains("connect"), "unexpected failure: {err}");

    // Reconcile repairs the drift and traffic flows again.
    assert_eq!(overlay::reconcile_remotes(&host_a, NET, &[ep_b]).unwrap(), (1, 0));
    let reply = eventually("TCP from a to b after reconcile", Duration::from_secs(10), || {
        request(&ca, SocketAddr::from((ipb, 8080)))
    });
    assert_eq!(reply, "pong from b");

    overlay::detach(&host_b, NET, ipb).unwrap();
    overlay::remove_network(&host_a, NET).unwrap();
    assert!(!netns::exists(&host_a.sandbox_name(NET)), "sandbox of host a still there after remove_network");
}

fn link_mtu(ns: &std::path::Path, name: &str) -> u32 {
    use futures::TryStreamExt;
    netns::with_netlink(Some(ns), |h| async move {
        let l = h.link().get().match_name(name.to_string()).execute().try_next().await.unwrap().unwrap();
        l.attributes
            .iter()
            .find_map(|a| if let rtnetlink::packet_route::link::LinkAttribute::Mtu(m) = a { Some(*m) } else { None })
            .unwrap()
    })
    .unwrap()
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
    // A VXLAN device a crash left in the host namespace before it moved into its sandbox.
    let stray = format!("{}0000ff", host.vxlan_prefix());
    let s2 = stray.clone();
    netns::with_netlink(Some(&h), |nl| async move {
        nl.link().add(rtnetlink::LinkVxlan::new(&s2, 255).port(4789).build()).execute().await.unwrap();
    })
    .unwrap();
    assert_eq!(overlay::cleanup_all(&host).unwrap(), 3, "two sandboxes and the stray device");
    let s3 = stray.clone();
    let left = netns::with_netlink(Some(&h), |nl| async move { netns::link_index(&nl, &s3).await.unwrap() }).unwrap();
    assert_eq!(left, None, "stray {stray} still in the host namespace");
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

#[test]
fn ensure_network_completes_a_sandbox_a_crash_left_half_made() {
    let p = unique_prefix("or");
    let mut g = Guard::default();
    let h = g.netns(&format!("{p}host"));
    common::add_lo_addr(&h, Ipv4Addr::new(192, 168, 79, 1), 32);
    let host = Host { netns: Some(h.clone()), prefix: format!("{p}x-") };
    let hc = host.clone();
    g.defer(move || {
        let _ = overlay::cleanup_all(&hc);
    });
    let net = Network { id: "halfmade".into(), vni: 77, local: Ipv4Addr::new(192, 168, 79, 1), gateway: None };
    overlay::ensure_network(&host, &net).unwrap();
    // The crash: vxlan0 moved into the sandbox but not yet renamed.
    let sandbox = netns::path(&host.sandbox_name("halfmade"));
    let tmp = format!("{}{:06x}", host.vxlan_prefix(), 77);
    let t = tmp.clone();
    netns::with_netlink(Some(&sandbox), |nl| async move {
        let i = netns::link_index(&nl, "vxlan0").await.unwrap().unwrap();
        nl.link().set(rtnetlink::LinkUnspec::new_with_index(i).name(t).build()).execute().await.unwrap();
    })
    .unwrap();
    overlay::ensure_network(&host, &net).unwrap();
    let t = tmp.clone();
    let (vx, stale) = netns::with_netlink(Some(&sandbox), |nl| async move {
        (netns::link_index(&nl, "vxlan0").await.unwrap(), netns::link_index(&nl, &t).await.unwrap())
    })
    .unwrap();
    assert!(vx.is_some(), "vxlan0 not recreated");
    assert_eq!(stale, None, "half-made {tmp} left in the sandbox");
}

#[test]
fn create_replaces_a_mount_point_a_crash_left_unmounted() {
    let name = format!("{}stale", unique_prefix("ns"));
    let mut g = Guard::default();
    std::fs::create_dir_all(netns::NETNS_DIR).unwrap();
    std::fs::write(netns::path(&name), b"").unwrap();
    let p = g.netns(&name);
    // It is a real namespace now: netlink works inside and sees loopback up.
    let lo = netns::with_netlink(Some(&p), |h| async move { netns::link_index(&h, "lo").await.unwrap() }).unwrap();
    assert!(lo.is_some(), "no loopback in {name}");
    netns::delete(&name).unwrap();
    assert!(!netns::exists(&name));
}
