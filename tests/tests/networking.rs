//! Networking on real daemons across hosts (the multi-node harness, 3 nodes): a published port on node 1 reaches
//! tasks running only on node 3 (routing mesh) and spreads 300 requests evenly over 3 tasks; a killed task stops
//! getting new connections; containers on different nodes reach each other by service name over an overlay (VIP),
//! `tasks.<svc>` follows scaling, dnsrr resolves to task IPs and has no VIP, and `service rm` takes a VIP out of
//! every container's balancer; `mode=host` and `client-ip=preserve` keep the client address; a long request
//! through the mesh survives scaling; bad input gets a clear error; `service rm` removes the published port's
//! rules from every node.
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

/// A manager (node 1) and two workers, every node holding the test image.
fn three_nodes() -> Cluster {
    let c = Cluster::start(3);
    let join = c.init_swarm(1);
    c.join_worker(2, &join);
    c.join_worker(3, &join);
    c.wait_nodes_ready(1, &["node-1", "node-2", "node-3"], T);
    let image = shoal_tests::test_image().to_str().expect("utf-8 path");
    for n in 1..=3 {
        c.node(n).ok(&["image", "load", "-i", image]);
    }
    c
}

/// The VIP balancer table (`shoal`) inside every running container of `node`, one per container.
fn container_vip_tables(node: &Node) -> Vec<String> {
    node.running()
        .iter()
        .map(|t| sh(node, &format!("nsenter --net=/proc/{}/ns/net nft list table ip shoal 2>&1", t.pid)))
        .collect()
}

/// The node's own address on the ingress network (its `…ing0` interface), what masqueraded mesh traffic
/// comes from.
fn ingress_address(node: &Node) -> String {
    sh(node, "ip -4 -o addr show | awk '$2 ~ /ing0$/ {print $4}' | cut -d/ -f1").trim().to_string()
}

fn running(node: &Node, service: &str) -> usize {
    node.tasks(service).iter().filter(|t| t.desired == "running" && t.state == "running").count()
}

#[test]
fn routing_mesh_across_hosts_even_spread_bad_input_and_cleanup() {
    let c = three_nodes();
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

    step!("a killed task's address stops getting new connections (time to 20 answers in a row printed)");
    let victim = c.node(3).running().into_iter().next().expect("a container running on node 3");
    let killed_at = std::time::Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim.pid as i32), nix::sys::signal::Signal::SIGKILL)
        .expect("SIGKILL a task's process");
    wait_for("the killed task's process is gone", T, || {
        (!shoal_tests::pid_alive(victim.pid as i32)).then_some(()).ok_or(format!("pid {} alive", victim.pid))
    });
    wait_for("20 answers in a row through the mesh after the kill", T, || {
        let out = sh(c.node(2), &format!("for i in $(seq 20); do curl -sf -m 1 {url} || echo FAILED; done"));
        let failed = out.lines().filter(|l| l.trim() == "FAILED").count();
        (failed == 0).then_some(()).ok_or(format!("{failed} of 20 failed"))
    });
    eprintln!("    new connections all answered {:.1} s after the kill", killed_at.elapsed().as_secs_f64());
    wait_for("web: 3 running again", T, || {
        (running(m, "web") == 3).then_some(()).ok_or(format!("{:?}", m.tasks("web")))
    });

    step!("bad input: a port already published, an unknown network, a network in use");
    let err = m.fails(&["service", "create", "-d", "--name", "web2", "-p", "8080:80", "busybox", "sleep", "1000"]);
    assert!(err.contains("8080"), "port conflict error: {err}");
    assert!(err.lines().count() <= 2, "not a one-line error: {err}");
    let err =
        m.fails(&["service", "create", "-d", "--name", "lost", "--network", "nosuchnet", "busybox", "sleep", "1"]);
    assert!(err.contains("nosuchnet"), "unknown network error: {err}");
    m.ok(&["network", "create", "-d", "overlay", "--subnet", "10.77.0.0/16", "backend"]);
    let err = m.fails(&["network", "create", "-d", "overlay", "--subnet", "10.77.5.0/24", "inside"]);
    assert!(err.contains("10.77.5.0/24") && err.contains("overlap"), "overlapping subnet error: {err}");
    assert!(!m.ok(&["network", "ls"]).contains("inside"), "a refused create left a network");
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

/// The last line of `service logs SERVICE` that starts with `tag ` (after the `task@node | ` prefix), without the tag.
fn last_logged(node: &Node, service: &str, tag: &str) -> Option<String> {
    let out = node.ok(&["service", "logs", service]);
    out.lines()
        .filter_map(|l| l.split_once("| ").map(|(_, m)| m.trim()))
        .filter_map(|m| m.strip_prefix(tag).map(|r| r.trim().to_string()))
        .last()
}

/// Space-separated words, sorted.
fn words(s: &str) -> Vec<String> {
    let mut w: Vec<String> = s.split_whitespace().map(str::to_string).collect();
    w.sort();
    w
}

fn service_json(node: &Node, name: &str) -> serde_json::Value {
    let out = node.ok(&["service", "inspect", name]);
    let v: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("service inspect {name}: {e}\n{out}"));
    v[0].clone()
}

#[test]
fn by_name_over_an_overlay_across_hosts_tasks_follow_scaling_and_dnsrr() {
    let c = three_nodes();
    let m = c.node(1);
    m.ok(&["network", "create", "-d", "overlay", "backend"]);

    step!("web (VIP, 2 tasks on node 3) and rr (dnsrr, 2 tasks on node 3) on the overlay; a client on node 2");
    // Each web task serves its own addresses, so the client's answers name the task that served them.
    let serve = "echo $(hostname) $(ip -4 -o addr | awk '{print $4}' | cut -d/ -f1 | grep -v '^127\\.') \
                 > /var/www/index.html && exec httpd -f -p 80 -h /var/www";
    for (name, mode) in [("web", "vip"), ("rr", "dnsrr")] {
        m.ok(&[
            "service",
            "create",
            "-d",
            "--name",
            name,
            "--replicas",
            "2",
            "--network",
            "backend",
            "--endpoint-mode",
            mode,
            "--constraint",
            "node.hostname==node-3",
            "busybox",
            "sh",
            "-c",
            serve,
        ]);
    }
    // The client resolves through the embedded DNS (busybox's nslookup), then connects to the address it got:
    // the static busybox's own name lookup (used by nc NAME) is not usable in these containers.
    let client = r#"addrs() { nslookup "$1" 2>/dev/null | awk '/^Address/ && $NF !~ /:53$/ {print $NF}' | sort | tr '\n' ' '; }
while true; do
  echo "TASKS $(addrs tasks.web)"
  echo "WEB $(addrs web)"
  echo "RR $(addrs rr)"
  echo "RRTASKS $(addrs tasks.rr)"
  vip=$(addrs web | awk '{print $1}')
  [ -n "$vip" ] && echo "PAGE $(printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 2 $vip 80 | tail -n 1)"
  sleep 0.5
done"#;
    m.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "client",
        "--network",
        "backend",
        "--constraint",
        "node.hostname==node-2",
        "busybox",
        "sh",
        "-c",
        client,
    ]);
    for (name, n) in [("web", 2), ("rr", 2), ("client", 1)] {
        wait_for(&format!("{name}: {n} running"), T, || {
            (running(m, name) == n).then_some(()).ok_or(format!("{:?}", m.tasks(name)))
        });
    }

    step!("`web` resolves to its VIP (service inspect's), and a connection to it reaches a task on node 3");
    let vips = service_json(m, "web")["endpoint"]["virtual_ips"].clone();
    let vip = vips
        .as_array()
        .and_then(|a| a.first())
        .and_then(|v| v["addr"].as_str())
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("web has no VIP: {vips}"))
        .to_string();
    wait_for("the client resolves web to its VIP", T, || {
        let got = last_logged(m, "client", "WEB ").unwrap_or_default();
        (words(&got) == vec![vip.clone()]).then_some(()).ok_or(format!("web → {got:?}, VIP {vip}"))
    });
    let page = wait_for("the client gets a page through the VIP", T, || {
        let p = last_logged(m, "client", "PAGE ").unwrap_or_default();
        (p.split_whitespace().count() >= 2).then_some(p.clone()).ok_or(format!("page {p:?}"))
    });
    eprintln!("    page through the VIP: {page}");

    step!("tasks.web lists every task's IP and follows scale up and down");
    for replicas in [3usize, 1] {
        m.ok(&["service", "scale", &format!("web={replicas}")]);
        wait_for(&format!("web: {replicas} running"), T, || {
            (running(m, "web") == replicas).then_some(()).ok_or(format!("{:?}", m.tasks("web")))
        });
        wait_for(&format!("tasks.web lists {replicas} addresses"), T, || {
            let got = words(&last_logged(m, "client", "TASKS ").unwrap_or_default());
            (got.len() == replicas).then_some(()).ok_or(format!("tasks.web → {got:?}"))
        });
        // Every answer through the VIP comes from a task tasks.web lists.
        wait_for("pages through the VIP come from listed tasks", T, || {
            let tasks = words(&last_logged(m, "client", "TASKS ").unwrap_or_default());
            let page = last_logged(m, "client", "PAGE ").unwrap_or_default();
            let served_by: Vec<&str> = page.split_whitespace().skip(1).collect();
            (tasks.len() == replicas && served_by.iter().any(|a| tasks.iter().any(|t| t == a)))
                .then_some(())
                .ok_or(format!("page {page:?} not from tasks.web {tasks:?}"))
        });
    }

    step!("dnsrr: `rr` resolves to its task IPs (the same as tasks.rr) and has no VIP");
    let rr = service_json(m, "rr");
    let rr_vips = rr["endpoint"]["virtual_ips"].as_array().map(Vec::len).unwrap_or(0);
    assert_eq!(rr_vips, 0, "a dnsrr service has VIPs: {}", rr["endpoint"]);
    wait_for("rr resolves to its 2 task IPs", T, || {
        let by_name = words(&last_logged(m, "client", "RR ").unwrap_or_default());
        let tasks = words(&last_logged(m, "client", "RRTASKS ").unwrap_or_default());
        (by_name.len() == 2 && by_name == tasks).then_some(()).ok_or(format!("rr → {by_name:?}, tasks.rr → {tasks:?}"))
    });

    step!("service rm web: no container's balancer on any node names web's VIP or its task's address any more");
    let web_ips = words(&last_logged(m, "client", "TASKS ").unwrap_or_default());
    assert_eq!(web_ips.len(), 1, "web's one task: {web_ips:?}");
    // Every container on the overlay (client on node 2, rr's tasks and web's on node 3) balances web's VIP now.
    let names_web = |table: &str| {
        let addrs: Vec<&str> = table.split(|ch: char| !ch.is_ascii_digit() && ch != '.').collect();
        addrs.iter().any(|a| *a == vip || web_ips.iter().any(|ip| a == ip))
    };
    for n in [2, 3] {
        let tables = container_vip_tables(c.node(n));
        assert!(tables.iter().any(|t| names_web(t)), "node {n}: no balancer names web before rm: {tables:?}");
    }
    m.ok(&["service", "rm", "web"]);
    for n in 1..=3 {
        wait_for(&format!("node {n}: no container balancer names web"), T, || {
            let tables = container_vip_tables(c.node(n));
            let stale: Vec<&String> = tables.iter().filter(|t| names_web(t)).collect();
            stale.is_empty().then_some(()).ok_or(format!("{stale:?}"))
        });
    }
    let left = container_vip_tables(c.node(2));
    assert!(left.iter().all(|t| t.contains("table ip shoal")), "the client's balancer table itself stays: {left:?}");
}

/// busybox httpd's REMOTE_ADDR for an IPv4 peer, `[::ffff:10.0.0.2]`, as plain IPv4.
fn plain_addr(a: &str) -> String {
    let a = a.trim().trim_start_matches('[').trim_end_matches(']');
    a.strip_prefix("::ffff:").unwrap_or(a).to_string()
}

/// A web server whose `/cgi-bin/ip` answers the client address it sees and `/cgi-bin/slow` answers after 15 s.
const CGI_SERVER: &str = r#"mkdir -p /var/www/cgi-bin
printf '#!/bin/sh\necho Content-Type: text/plain\necho\necho "$REMOTE_ADDR"\n' > /var/www/cgi-bin/ip
printf '#!/bin/sh\necho Content-Type: text/plain\necho\nsleep 15\necho slow-done\n' > /var/www/cgi-bin/slow
chmod +x /var/www/cgi-bin/ip /var/www/cgi-bin/slow
exec httpd -f -p 80 -h /var/www"#;

#[test]
fn host_mode_and_preserved_client_ip_see_the_client_and_a_long_connection_survives_scaling() {
    let c = three_nodes();
    let m = c.node(1);

    step!("mode=host publish on node 3: a request from node 2 sees node 2's own address");
    m.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "direct",
        "--constraint",
        "node.hostname==node-3",
        "--publish",
        "published=9090,target=80,mode=host",
        "busybox",
        "sh",
        "-c",
        CGI_SERVER,
    ]);
    // Ingress with client-ip=preserve on node 3 too: node 3 forwards to its own task unmasqueraded.
    m.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "keep",
        "--constraint",
        "node.hostname==node-3",
        "--publish",
        "published=8082,target=80,mode=ingress,client-ip=preserve",
        "busybox",
        "sh",
        "-c",
        CGI_SERVER,
    ]);
    // Ingress too, on a second service, to show the difference the mode makes.
    m.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "slow",
        "--constraint",
        "node.hostname==node-3",
        "-p",
        "8081:80",
        "busybox",
        "sh",
        "-c",
        CGI_SERVER,
    ]);
    for name in ["direct", "keep", "slow"] {
        wait_for(&format!("{name}: 1 running"), T, || {
            (running(m, name) == 1).then_some(()).ok_or(format!("{:?}", m.tasks(name)))
        });
    }
    let host_url = format!("http://{}:9090/cgi-bin/ip", c.node(3).ip);
    let seen = wait_for("an answer on node 3's host-mode port", T, || {
        let a = plain_addr(&sh(c.node(2), &format!("curl -sf -m 2 {host_url}")));
        (!a.is_empty()).then_some(a).ok_or(format!("no answer; node 3 rules:\n{}", ruleset(c.node(3))))
    });
    assert_eq!(seen, c.node(2).ip.to_string(), "mode=host should keep the client's address");
    // A host-mode port is only on the node running the task.
    let other = sh(c.node(2), &format!("curl -s -m 2 http://{}:9090/cgi-bin/ip", c.node(1).ip));
    assert!(other.trim().is_empty(), "node 1 answers a host-mode port it runs no task for: {other}");
    let mesh_url = format!("http://{}:8081/cgi-bin/ip", c.node(1).ip);
    let via_mesh = wait_for("an answer through the mesh", T, || {
        let a = plain_addr(&sh(c.node(2), &format!("curl -sf -m 2 {mesh_url}")));
        (!a.is_empty()).then_some(a).ok_or("no answer".to_string())
    });
    eprintln!("    client address seen: mode=host {seen}, through the ingress mesh {via_mesh}");
    assert_eq!(via_mesh, ingress_address(c.node(1)), "the mesh masquerades behind node 1's ingress address");

    step!("client-ip=preserve: through node 3 (which runs the task) the task sees node 2; through node 1, node 1");
    let ask = |node: usize, port: u16| {
        let url = format!("http://{}:{port}/cgi-bin/ip", c.node(node).ip);
        wait_for(&format!("an answer on node {node}'s port {port}"), T, || {
            let a = plain_addr(&sh(c.node(2), &format!("curl -sf -m 2 {url}")));
            (!a.is_empty()).then_some(a).ok_or(format!("no answer; node {node} rules:\n{}", ruleset(c.node(node))))
        })
    };
    let kept = ask(3, 8082);
    assert_eq!(kept, c.node(2).ip.to_string(), "client-ip=preserve on the task's node keeps the client address");
    let plain = ask(3, 8081);
    assert_eq!(plain, ingress_address(c.node(3)), "without the option, node 3 masquerades too");
    // No task on node 1: it falls back to the mesh, masqueraded.
    let fallback = ask(1, 8082);
    assert_eq!(fallback, ingress_address(c.node(1)), "client-ip=preserve without a local task falls back");
    eprintln!(
        "    client address seen on port 8082: via node 3 {kept}, via node 1 {fallback}; port 8081 via node 3 {plain}"
    );

    step!("a 15 s request through the mesh completes while the service scales 1 → 3");
    let url = format!("http://{}:8081/cgi-bin/slow", c.node(1).ip);
    let long = c.node(2).command("curl").args(["-s", "-m", "40", &url]).stdout(std::process::Stdio::piped()).spawn();
    let long = long.expect("start curl in node 2's namespace");
    std::thread::sleep(Duration::from_secs(2));
    m.ok(&["service", "scale", "slow=3"]);
    wait_for("slow: 3 running", T, || (running(m, "slow") == 3).then_some(()).ok_or(format!("{:?}", m.tasks("slow"))));
    let out = long.wait_with_output().expect("wait for the long request");
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(body.contains("slow-done"), "the long request broke during scaling: {:?} {body:?}", out.status);
}
