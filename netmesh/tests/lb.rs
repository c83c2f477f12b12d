//! Real-kernel VIP tests: a client namespace and a server namespace with three backend addresses, joined by a
//! veth; the client's VIP table spreads connections over the backends. Needs root, nft and conntrack.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Instant;

use common::{add_addr, ask, connect, request, serve, underlay, unique_prefix, Guard};
use netmesh::lb::{self, Balancer};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 100);

fn backend(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 88, 0, 10 + n)
}

/// Client and server namespaces; the server answers on port 80 of backend(1..=3) with "b1".."b3".
fn setup(g: &mut Guard) -> (PathBuf, PathBuf) {
    let p = unique_prefix("lb");
    let (cl, sv) = (g.netns(&format!("{p}client")), g.netns(&format!("{p}server")));
    underlay(&cl, &sv, Ipv4Addr::new(10, 88, 0, 1), backend(1));
    add_addr(&sv, "ul1", backend(2), 24);
    add_addr(&sv, "ul1", backend(3), 24);
    for (n, reply) in [(1, "b1"), (2, "b2"), (3, "b3")] {
        serve(sv.clone(), SocketAddr::from((backend(n), 80)), reply);
    }
    (cl, sv)
}

fn spread(cl: &Path, n: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for i in 0..n {
        let r = request(cl, SocketAddr::from((VIP, 80))).unwrap_or_else(|e| panic!("connection {i} to the VIP: {e}"));
        *counts.entry(r).or_insert(0) += 1;
    }
    counts
}

#[test]
fn vip_spreads_connections_and_follows_backend_changes() {
    let mut g = Guard::default();
    let (cl, _sv) = setup(&mut g);
    let mut b = Balancer::new(cl.clone());
    b.set(BTreeMap::from([(VIP, vec![backend(1), backend(2), backend(3)])])).unwrap();

    let start = Instant::now();
    let counts = spread(&cl, 300);
    println!("300 connections through the VIP in {:?}: {counts:?}", start.elapsed());
    for name in ["b1", "b2", "b3"] {
        let c = counts.get(name).copied().unwrap_or(0);
        assert!((90..=110).contains(&c), "backend {name} got {c} of 300 connections (want 100 ± 10 %): {counts:?}");
    }

    // Two long-lived connections on different backends.
    let mut conns: Vec<(std::net::TcpStream, String)> = Vec::new();
    while conns.len() < 2 {
        let mut s = connect(&cl, SocketAddr::from((VIP, 80))).unwrap();
        let who = ask(&mut s).unwrap();
        if conns.iter().all(|(_, w)| *w != who) {
            conns.push((s, who));
        }
    }
    let (mut keep, keep_who) = conns.remove(0);
    let (mut gone, gone_who) = conns.remove(0);
    let gone_ip = backend(gone_who[1..].parse().unwrap());

    // Drop one backend: new connections avoid it, the flow to a live backend survives, the dropped backend's
    // flow is cut (its conntrack entry is deleted, so its next packet is NATed afresh and reset).
    let rest: Vec<Ipv4Addr> = (1..=3).map(backend).filter(|ip| *ip != gone_ip).collect();
    b.set_backends(VIP, rest).unwrap();
    let counts = spread(&cl, 60);
    assert!(!counts.contains_key(&gone_who), "removed backend {gone_who} still got new connections: {counts:?}");
    assert_eq!(ask(&mut keep).as_deref(), Ok(keep_who.as_str()), "established flow to a live backend broke");
    let after = ask(&mut gone);
    assert_ne!(after.as_deref(), Ok(gone_who.as_str()), "flow to the removed backend still reaches it");

    // No backends: refused at once rather than hanging.
    b.set_backends(VIP, vec![]).unwrap();
    let err = request(&cl, SocketAddr::from((VIP, 80))).expect_err("connected to a VIP without backends");
    assert!(err.contains("refused"), "want connection refused, got: {err}");

    b.clear().unwrap();
    assert_eq!(lb::cleanup_all(Some(&cl)).unwrap(), 0, "clear left a table behind");
}

#[test]
fn ruleset_text_is_one_replace_transaction() {
    let text =
        lb::render(&BTreeMap::from([(VIP, vec![backend(1), backend(2)]), (Ipv4Addr::new(10, 88, 0, 101), vec![])]));
    assert!(text.starts_with("table ip shoal {}\ndelete table ip shoal\ntable ip shoal {"), "{text}");
    assert!(
        text.contains("ip daddr 10.88.0.100 dnat to numgen inc mod 2 map { 0 : 10.88.0.11, 1 : 10.88.0.12 }"),
        "{text}"
    );
    assert!(text.contains("ip daddr { 10.88.0.101 } meta l4proto tcp reject with tcp reset"), "{text}");
}

#[test]
fn cleanup_all_deletes_shoal_tables_only() {
    let mut g = Guard::default();
    let ns = g.netns(&format!("{}lbc", unique_prefix("lc")));
    let mut b = Balancer::new(ns.clone());
    b.set(BTreeMap::from([(VIP, vec![backend(1)])])).unwrap();
    let out = netmesh::netns::command(
        Some(&ns),
        "nft",
        &["-f", "-"],
        Some("table inet other {}\ntable ip shoal_ingress {}\n"),
    )
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(lb::cleanup_all(Some(&ns)).unwrap(), 2);
    let out = netmesh::netns::command(Some(&ns), "nft", &["list", "tables"], None).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "table inet other");
}

/// Prints connection setup and request rates through the VIP as a ratio to direct connections (never asserts
/// timings).
#[test]
fn vip_overhead_figures() {
    let mut g = Guard::default();
    let (cl, _sv) = setup(&mut g);
    let mut b = Balancer::new(cl.clone());
    b.set(BTreeMap::from([(VIP, vec![backend(1), backend(2), backend(3)])])).unwrap();
    let rates = common::connection_rates(&cl, &[SocketAddr::from((backend(1), 80)), SocketAddr::from((VIP, 80))], 100);
    let (direct, via) = (rates[0], rates[1]);
    let reqs = |addr: Ipv4Addr| {
        let mut s = connect(&cl, SocketAddr::from((addr, 80))).unwrap();
        let t = Instant::now();
        for _ in 0..2000 {
            ask(&mut s).unwrap();
        }
        2000.0 / t.elapsed().as_secs_f64()
    };
    let (rd, rv) = (reqs(backend(1)), reqs(VIP));
    println!(
        "vip: connection+request {via:.0}/s vs direct {direct:.0}/s (ratio {:.2}); requests on one connection {rv:.0}/s vs direct {rd:.0}/s (ratio {:.2})",
        via / direct,
        rv / rd
    );
}

#[test]
fn a_missing_binary_is_named_in_the_error() {
    let err = netmesh::netns::command(None, "shoal-no-such-binary", &[], None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "network namespace host: running shoal-no-such-binary: No such file or directory (os error 2)"
    );
}
