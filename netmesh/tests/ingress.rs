//! Routing-mesh tests: a "host" namespace between a client namespace (192.168.91.0/24) and a namespace with
//! two tasks (10.91.0.0/24); the host publishes port 8080 to the tasks' port 80. Needs root, nft, conntrack.

mod common;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use common::{add_addr, link, request, serve_with, unique_prefix, Guard};
use netmesh::ingress::{self, Ingress, Protocol, PublishedPort};
use netmesh::netns;

const HOST_PUBLIC: Ipv4Addr = Ipv4Addr::new(192, 168, 91, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 91, 2);
const HOST_INGRESS: Ipv4Addr = Ipv4Addr::new(10, 91, 0, 1);

fn task(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 91, 0, 10 + n)
}

fn port(backends: Vec<Ipv4Addr>, masquerade: bool) -> PublishedPort {
    PublishedPort { protocol: Protocol::Tcp, published: 8080, target: 80, backends, masquerade, standby: vec![] }
}

/// client ↔ host ↔ tasks; the tasks answer "t<n> <peer ip>" and route back via the host.
fn setup(g: &mut Guard) -> (PathBuf, PathBuf, PathBuf) {
    let p = unique_prefix("in");
    let (client, host, tasks) =
        (g.netns(&format!("{p}client")), g.netns(&format!("{p}host")), g.netns(&format!("{p}tasks")));
    link(&client, "ul0", CLIENT, &host, "pub0", HOST_PUBLIC);
    link(&host, "ing0", HOST_INGRESS, &tasks, "ul1", task(1));
    add_addr(&tasks, "ul1", task(2), 24);
    netns::with_netlink(Some(&tasks), |h| async move {
        let i = netns::link_index(&h, "ul1").await.unwrap().unwrap();
        let route = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new().gateway(HOST_INGRESS).output_interface(i).build();
        h.route().add(route).execute().await.unwrap();
    })
    .unwrap();
    for n in [1, 2] {
        serve_with(tasks.clone(), SocketAddr::from((task(n), 80)), move |peer| format!("t{n} {}", peer.ip()));
    }
    (client, host, tasks)
}

#[test]
fn published_port_reaches_every_task_from_outside_and_from_the_host() {
    let mut g = Guard::default();
    let (client, host, _tasks) = setup(&mut g);
    let mut ing = Ingress::new(Some(host.clone()));
    ing.set(vec![port(vec![task(1), task(2)], true)]).unwrap();

    let mut seen: HashMap<String, usize> = HashMap::new();
    for i in 0..40 {
        let r = request(&client, SocketAddr::from((HOST_PUBLIC, 8080))).unwrap_or_else(|e| panic!("request {i}: {e}"));
        let (who, src) = r.split_once(' ').unwrap();
        assert_eq!(src, HOST_INGRESS.to_string(), "masqueraded: the task sees the host, got {r}");
        *seen.entry(who.to_string()).or_default() += 1;
    }
    assert_eq!(seen.get("t1").zip(seen.get("t2")), Some((&20, &20)), "round-robin over both tasks: {seen:?}");

    // From the host itself (output hook).
    let r = request(&host, SocketAddr::from((HOST_PUBLIC, 8080))).unwrap();
    assert!(r.starts_with('t'), "host-local request answered by a task: {r}");

    // Scale to one task: it alone answers.
    ing.set(vec![port(vec![task(2)], true)]).unwrap();
    for _ in 0..6 {
        assert!(request(&client, SocketAddr::from((HOST_PUBLIC, 8080))).unwrap().starts_with("t2 "));
    }
    // No task: refused at once.
    ing.set(vec![port(vec![], true)]).unwrap();
    let err = request(&client, SocketAddr::from((HOST_PUBLIC, 8080))).expect_err("connected without tasks");
    assert!(err.contains("refused"), "want connection refused, got: {err}");

    ing.clear().unwrap();
    let out = netns::command(Some(&host), "nft", &["list", "tables"], None).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "", "clear left tables");
}

#[test]
fn without_masquerade_the_task_sees_the_client_address() {
    let mut g = Guard::default();
    let (client, host, _tasks) = setup(&mut g);
    let mut ing = Ingress::new(Some(host.clone()));
    ing.set(vec![port(vec![task(1)], false)]).unwrap();
    let r = request(&client, SocketAddr::from((HOST_PUBLIC, 8080))).unwrap();
    assert_eq!(r, format!("t1 {CLIENT}"));
    assert_eq!(netmesh::lb::cleanup_all(Some(&host)).unwrap(), 1, "lb::cleanup_all removes the ingress table");
}

/// A port switching its new connections to other backends (`client-ip=preserve` when a task starts on this
/// host) keeps the flows of backends still live (`standby`); a backend that leaves for good loses them.
#[test]
fn standby_backends_keep_their_established_connections() {
    let mut g = Guard::default();
    let (client, host, _tasks) = setup(&mut g);
    let mut ing = Ingress::new(Some(host.clone()));
    ing.set(vec![port(vec![task(1)], true)]).unwrap();
    let addr = SocketAddr::from((HOST_PUBLIC, 8080));
    let mut open = common::connect(&client, addr).unwrap();
    assert_eq!(common::ask(&mut open).unwrap(), format!("t1 {HOST_INGRESS}"));

    let mut local = port(vec![task(2)], false);
    local.standby = vec![task(1)];
    ing.set(vec![local]).unwrap();
    assert_eq!(request(&client, addr).unwrap(), format!("t2 {CLIENT}"), "new connections: t2, unmasqueraded");
    assert_eq!(common::ask(&mut open).unwrap(), format!("t1 {HOST_INGRESS}"), "the open flow to t1 is kept");

    ing.set(vec![port(vec![task(2)], false)]).unwrap();
    let after = common::ask(&mut open);
    assert!(!after.as_ref().is_ok_and(|r| r.starts_with("t1 ")), "t1 left, yet its flow lives: {after:?}");
    ing.clear().unwrap();
}

#[test]
fn render_marks_only_masqueraded_ports() {
    let mut udp = port(vec![task(1)], false);
    udp.protocol = Protocol::Udp;
    udp.published = 5353;
    udp.target = 53;
    let text = ingress::render(&[port(vec![task(1), task(2)], true), udp]);
    assert!(
        text.contains("tcp dport 8080 meta mark set meta mark | 0x01000000 dnat to numgen inc mod 2 map { 0 : 10.91.0.11, 1 : 10.91.0.12 } : 80"),
        "{text}"
    );
    assert!(text.contains("udp dport 5353 dnat to numgen inc mod 1 map { 0 : 10.91.0.11 } : 53"), "{text}");
}

#[test]
fn crate_cleanup_all_removes_sandboxes_and_tables() {
    let mut g = Guard::default();
    let p = unique_prefix("ca");
    let h = g.netns(&format!("{p}host"));
    common::add_lo_addr(&h, Ipv4Addr::new(192, 168, 92, 1), 32);
    let host = netmesh::overlay::Host { netns: Some(h.clone()), prefix: format!("{p}x-") };
    let hc = host.clone();
    g.defer(move || {
        let _ = netmesh::cleanup_all(&hc);
    });
    let net = netmesh::overlay::Network {
        id: "cleanupnet".into(),
        vni: 99,
        local: Ipv4Addr::new(192, 168, 92, 1),
        gateway: None,
    };
    netmesh::overlay::ensure_network(&host, &net).unwrap();
    Ingress::new(Some(h.clone())).set(vec![port(vec![task(1)], true)]).unwrap();
    assert_eq!(netmesh::cleanup_all(&host).unwrap(), 2, "one sandbox and one table");
    assert!(netns::list(&host.prefix).is_empty());
    let out = netns::command(Some(&h), "nft", &["list", "tables"], None).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "");
    assert_eq!(netmesh::cleanup_all(&host).unwrap(), 0, "second run finds nothing");
}

/// Prints connection setup and request rates through the mesh (published port on the host) as a ratio to
/// connecting to the task directly through the same host (routed, no NAT); never asserts timings.
#[test]
fn mesh_overhead_figures() {
    let mut g = Guard::default();
    let (client, host, _tasks) = setup(&mut g);
    let mut ing = Ingress::new(Some(host.clone()));
    ing.set(vec![port(vec![task(1)], true)]).unwrap();
    netns::with_netlink(Some(&client), |h| async move {
        let i = netns::link_index(&h, "ul0").await.unwrap().unwrap();
        let route = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::new(10, 91, 0, 0), 24)
            .gateway(HOST_PUBLIC)
            .output_interface(i)
            .build();
        h.route().add(route).execute().await.unwrap();
    })
    .unwrap();
    let rates = common::connection_rates(
        &client,
        &[SocketAddr::from((task(1), 80)), SocketAddr::from((HOST_PUBLIC, 8080))],
        100,
    );
    let (direct, mesh) = (rates[0], rates[1]);
    let reqs = |addr: SocketAddr| {
        let mut s = common::connect(&client, addr).unwrap();
        let t = std::time::Instant::now();
        for _ in 0..2000 {
            common::ask(&mut s).unwrap();
        }
        2000.0 / t.elapsed().as_secs_f64()
    };
    let (rd, rm) = (reqs(SocketAddr::from((task(1), 80))), reqs(SocketAddr::from((HOST_PUBLIC, 8080))));
    println!(
        "mesh: connection+request {mesh:.0}/s vs direct {direct:.0}/s (ratio {:.2}); requests on one connection {rm:.0}/s vs direct {rd:.0}/s (ratio {:.2})",
        mesh / direct,
        rm / rd
    );
}
