//! Networking on real daemons across hosts (the multi-node harness): the ingress routing mesh reaches a service
//! running on another node and spreads requests evenly over its tasks, bad input gets a clear error, and removing a
//! service removes its published-port rules from every node.
//! Run: `cargo build --workspace --bins && cargo test -p shoal-tests --test networking -- --test-threads=1`.

use shoal_tests::cluster::{Cluster, Node};
use shoal_tests::{step, wait_for};
use std::collections::BTreeMap;
use std::time::Duration;

const T: Duration = Duration::from_secs(120);

/// Runs a shell script inside `node`'s network namespace (the host's tools: `curl`, `nft`) and returns its stdout.
fn sh(node: &Node, script: &str) -> String {
    let out = node.command("sh").args(["-c", script]).output().expect("run sh in the node's namespace");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The node's nftables ruleset (every table shoald made in the node's namespace).
fn ruleset(node: &Node) -> String {
    sh(node, "nft list ruleset")
}

fn running(node: &Node, service: &str) -> usize {
    node.tasks(service).iter().filter(|t| t.desired == "running" && t.state == "running").count()
}

#[test]
fn routing_mesh_across_hosts_even_spread_bad_input_and_cleanup() {
    let c = Cluster::start(3);
    let join = c.init_swarm(1);
    c.join_worker(2, &join);
    c.join_worker(3, &join);
    c.wait_nodes_ready(1, &["node-1", "node-2", "node-3"], T);
    let image = shoal_tests::test_image().to_str().expect("utf-8 path");
    for n in 1..=3 {
        c.node(n).ok(&["image", "load", "-i", image]);
    }
    let m = c.node(1);

    step!("a 3-replica web service only on node 3, published on 8080: every task answers with its hostname");
    m.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "web",
        "--replicas",
        "3",
        "--constraint",
        "node.hostname==node-3",
        "-p",
        "8080:80",
        "busybox",
        "sh",
        "-c",
        "hostname > /var/www/index.html && exec httpd -f -p 80 -h /var/www",
    ]);
    wait_for("web: 3 tasks running", T, || {
        let tasks = m.tasks("web");
        (running(m, "web") == 3).then_some(()).ok_or(format!("{tasks:?}"))
    });
    assert!(m.tasks("web").iter().filter(|t| t.state == "running").all(|t| t.node == "node-3"));
    let ls = m.ok(&["service", "ls"]);
    assert!(ls.contains("*:8080->80/tcp"), "PORTS column: {ls}");

    step!("node 2 fetches node 1's port 8080: the mesh carries it to node 3 (no task runs on node 1)");
    let url = format!("http://{}:8080/", c.node(1).ip);
    let first = wait_for("a page through node 1's published port", T, || {
        let page = sh(c.node(2), &format!("curl -sf -m 2 {url}"));
        let page = page.trim().to_string();
        (!page.is_empty()).then_some(page).ok_or(format!("no answer; node 1 rules:\n{}", ruleset(c.node(1))))
    });
    eprintln!("    first answer: {first}");

    step!("300 requests through node 1 spread evenly: each of the 3 tasks gets 100 ± 10 %");
    // The mesh's backend set follows the tasks: wait until all three have answered once.
    wait_for("all 3 tasks answer through the mesh", T, || {
        let out = sh(c.node(2), &format!("for i in $(seq 30); do curl -s -m 2 {url}; done"));
        let seen: std::collections::BTreeSet<&str> = out.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        (seen.len() == 3).then_some(()).ok_or(format!("answers from {seen:?}"))
    });
    let out = sh(c.node(2), &format!("for i in $(seq 300); do curl -s -m 2 {url}; done"));
    let mut per: BTreeMap<&str, usize> = BTreeMap::new();
    for l in out.lines().map(str::trim).filter(|l| !l.is_empty()) {
        *per.entry(l).or_default() += 1;
    }
    eprintln!("    answers per task: {per:?}");
    assert_eq!(per.len(), 3, "answers came from {per:?}");
    assert_eq!(per.values().sum::<usize>(), 300, "some requests failed: {per:?}");
    for (task, n) in &per {
        assert!((90..=110).contains(n), "task {task} got {n} of 300: {per:?}");
    }

    step!("bad input: a port already published, an unknown network, a network in use");
    let err = m.fails(&["service", "create", "-d", "--name", "web2", "-p", "8080:80", "busybox", "sleep", "1000"]);
    assert!(err.contains("8080"), "port conflict error: {err}");
    assert!(err.lines().count() <= 2, "not a one-line error: {err}");
    let err = m.fails(&["service", "create", "-d", "--name", "lost", "--network", "nosuchnet", "busybox", "sleep", "1"]);
    assert!(err.contains("nosuchnet"), "unknown network error: {err}");
    m.ok(&["network", "create", "-d", "overlay", "backend"]);
    m.ok(&["service", "create", "-d", "--name", "user", "--network", "backend", "busybox", "sleep", "1000"]);
    let err = m.fails(&["network", "rm", "backend"]);
    assert!(err.contains("backend") && err.contains("in use"), "network in use error: {err}");
    assert!(m.ok(&["network", "ls"]).contains("backend"), "a refused rm removed the network");
    let ls = m.ok(&["service", "ls"]);
    assert!(!ls.contains("web2") && !ls.contains("lost"), "a refused create left a service: {ls}");

    step!("every node has the published port's rule; removing the service removes it everywhere");
    for n in 1..=3 {
        wait_for(&format!("node {n}: a rule for port 8080"), T, || {
            let rules = ruleset(c.node(n));
            rules.contains("dport 8080").then_some(()).ok_or(rules)
        });
    }
    m.ok(&["service", "rm", "web"]);
    for n in 1..=3 {
        wait_for(&format!("node {n}: no rule for port 8080 left"), T, || {
            let rules = ruleset(c.node(n));
            (!rules.contains("8080")).then_some(()).ok_or(rules)
        });
    }
    let page = sh(c.node(2), &format!("curl -s -m 2 {url}"));
    assert!(page.trim().is_empty(), "port 8080 still answers after service rm: {page}");
    // The port is free again.
    m.ok(&["service", "create", "-d", "--name", "web2", "-p", "8080:80", "busybox", "sleep", "1000"]);
}
