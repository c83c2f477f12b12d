//! The multi-node harness itself (`shoal_tests::cluster`): nodes start in their own namespaces with their
//! addresses and hostnames, reach each other, and every fault helper does what it says and can be undone; a
//! worker joins a manager across the bridge; dropping a cluster leaves nothing behind, and leftovers of dead
//! test processes are swept.
//! Run: `cargo build --workspace --bins && cargo test -p shoal-tests --test cluster_harness -- --test-threads=1`.

use shoal_tests::cluster::Cluster;
use shoal_tests::netns::{self, NetNs};
use shoal_tests::{pid_alive, step, wait_for};
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

/// Namespaces `ip netns list` shows whose name contains `part`.
fn namespaces_named(part: &str) -> Vec<String> {
    let out = netns::run(Command::new("ip").args(["netns", "list"])).expect("ip netns list");
    out.lines().filter_map(|l| l.split_whitespace().next()).filter(|n| n.contains(part)).map(str::to_string).collect()
}

/// A helper process that is SIGKILLed when the test ends, passed or failed, so a failing sweep leaks nothing.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A process that is not this test's child, SIGKILLed when the test ends.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if pid_alive(self.0) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

fn connect(c: &Cluster, from: usize, to: SocketAddr) -> std::io::Result<()> {
    c.node(from).tcp_connect(to, Duration::from_secs(1))
}

#[test]
fn three_nodes_reach_each_other_and_every_fault_can_be_undone() {
    let mut c = Cluster::start(3);
    let sub = c.subnet();

    step!("each daemon answers and each namespace has its own address");
    for node in c.nodes() {
        let version = node.ok(&["version"]);
        assert!(version.contains("Server"), "node {} version: {version}", node.number);
        let info = node.ok(&["info"]);
        assert!(info.contains("Swarm: inactive"), "node {} info: {info}", node.number);
        assert!(info.contains(&format!("Name: node-{}", node.number)), "node {} hostname: {info}", node.number);
        let expected: std::net::Ipv4Addr = format!("10.213.{sub}.{}", node.number).parse().unwrap();
        assert_eq!(node.ip, expected);
        assert_eq!(node.addresses(), vec![expected], "node {} addresses", node.number);
        assert!(namespaces_named(node.netns()).contains(&node.netns().to_string()));
    }
    // Nothing of the cluster's network is in the test's own namespace.
    let host_addrs = netns::run(Command::new("ip").args(["-4", "-o", "addr"])).expect("ip addr");
    assert!(!host_addrs.contains(&format!("10.213.{sub}.")), "a test address leaked to the host: {host_addrs}");

    step!("nodes ping each other and accept TCP connections from each other");
    for a in c.nodes() {
        for b in c.nodes() {
            if a.number != b.number {
                assert!(a.ping(b.ip), "node {} cannot ping node {} ({})", a.number, b.number, b.ip);
            }
        }
    }
    // One listener per node, alive for the rest of the story.
    let (l1, l2, l3) = (c.node(1).tcp_listen(), c.node(2).tcp_listen(), c.node(3).tcp_listen());
    let (a1, a2, a3) = (l1.local_addr().unwrap(), l2.local_addr().unwrap(), l3.local_addr().unwrap());
    connect(&c, 1, a2).expect("node 1 → node 2 before any fault");
    connect(&c, 2, a1).expect("node 2 → node 1 before any fault");

    step!("a partition {{1}} | {{2}} cuts both directions between them, not to node 3; heal restores it");
    c.partition(&[1], &[2]);
    assert!(connect(&c, 1, a2).is_err(), "node 1 reached node 2 across the partition");
    assert!(connect(&c, 2, a1).is_err(), "node 2 reached node 1 across the partition");
    assert!(!c.node(1).ping(c.node(2).ip), "node 1 pinged node 2 across the partition");
    connect(&c, 1, a3).expect("node 1 → node 3 is not partitioned");
    connect(&c, 3, a2).expect("node 3 → node 2 is not partitioned");
    c.heal();
    connect(&c, 1, a2).expect("node 1 → node 2 after heal");
    connect(&c, 2, a1).expect("node 2 → node 1 after heal");

    step!("link down unplugs node 3, link up plugs it back");
    c.node(3).link_down();
    assert!(connect(&c, 1, a3).is_err(), "node 1 reached node 3 with its link down");
    c.node(3).link_up();
    // A port that just came up may take a moment before the bridge forwards through it.
    wait_for("node 1 to reach node 3 after link up", Duration::from_secs(10), || {
        connect(&c, 1, a3).map_err(|e| e.to_string())
    });

    step!("SIGSTOP freezes node 2's API; SIGCONT brings it back");
    c.node_mut(2).sigstop();
    let frozen = c.node(2).shoal_within(&["version"], Duration::from_secs(2));
    assert!(frozen.is_none(), "a SIGSTOPped daemon answered: {frozen:?}");
    c.node_mut(2).sigcont();
    c.wait_all_answer(Duration::from_secs(10));

    step!("SIGKILL and restart node 3: it answers again on the same data root and address");
    c.node_mut(3).kill();
    assert!(!c.node(3).shoal(&["version"]).status.success(), "a killed daemon answered");
    c.node_mut(3).restart();
    c.node(3).ok(&["info"]);
    assert_eq!(c.node(3).addresses(), vec![c.node(3).ip]);
}

#[test]
fn a_worker_joins_runs_a_task_and_the_cluster_drops_clean_even_with_a_killed_node() {
    let mut c = Cluster::start(2);
    let id = c.id().to_string();

    step!("swarm init on node 1 with its address");
    let join = c.init_swarm(1);
    let n1 = c.node(1);
    let info = n1.ok(&["info"]);
    assert!(info.contains("Swarm: active"), "node 1 info after init: {info}");
    assert!(info.contains(&n1.ip.to_string()), "node 1 info does not show its address {}: {info}", n1.ip);
    assert_eq!(join.addr, format!("{}:2377", n1.ip));
    // The cluster listener is reachable from the other node, across the bridge.
    let listener: SocketAddr = (n1.ip, 2377).into();
    c.node(2).tcp_connect(listener, Duration::from_secs(2)).expect("node 2 → node 1's cluster port");

    step!("node 2 joins as a worker; the manager lists both nodes, Ready, by their own hostnames");
    c.join_worker(2, &join);
    assert!(c.node(2).ok(&["info"]).contains("Swarm: active"), "node 2 is not in a swarm after join");
    c.wait_nodes_ready(1, &["node-1", "node-2"], Duration::from_secs(30));
    let leader: Vec<_> = c.node_rows(1).into_iter().filter(|r| r.manager_status == "Leader").collect();
    assert_eq!(leader.len(), 1, "one leader expected: {leader:?}");
    assert_eq!(leader[0].hostname, "node-1");

    step!("a service constrained to node 2 runs there, from the image loaded on node 2");
    let image = shoal_tests::test_image().to_str().expect("utf-8 path");
    c.node(2).ok(&["image", "load", "-i", image]);
    c.node(1).ok(&["image", "load", "-i", image]);
    c.node(1).ok(&[
        "service",
        "create",
        "--name",
        "pinned",
        "--constraint",
        "node.hostname==node-2",
        "busybox",
        "sleep",
        "1000",
    ]);
    let container = wait_for("the service's container to run on node 2", Duration::from_secs(30), || {
        let tasks = c.node(1).tasks("pinned");
        match (tasks.as_slice(), c.node(2).running().as_slice()) {
            ([t], [running]) if t.state == "running" && t.node == "node-2" => Ok(running.pid as i32),
            (tasks, running) => Err(format!("tasks {tasks:?}, running on node 2: {running:?}")),
        }
    });
    assert!(c.node(1).running().is_empty(), "node 1 runs a container pinned to node 2");

    step!("shoald runs without transparent huge pages; its containerd and the containers keep them");
    let thp = |pid: i32| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status.lines().find_map(|l| l.strip_prefix("THP_enabled:")).map(|v| v.trim() == "1")
    };
    let (daemon, containerd) = (c.node(2).pid().unwrap(), c.node(2).containerd_pid().unwrap());
    // The field is there since Linux 5.0.
    if thp(daemon).is_some() {
        assert_eq!(thp(daemon), Some(false), "shoald's own memory");
        assert_eq!(thp(containerd), Some(true), "containerd inherited shoald's setting");
        assert_eq!(thp(container), Some(true), "the container inherited shoald's setting");
    }

    step!("SIGKILL node 2's daemon: its container lives on until the cluster drops");
    c.node_mut(2).kill();
    assert!(pid_alive(container), "the container died with its daemon");

    step!("after drop no namespace, process or temp dir of the cluster remains");
    let mut pids: Vec<i32> = c.nodes().iter().flat_map(|n| [n.pid(), n.containerd_pid()]).flatten().collect();
    assert_eq!(pids.len(), 3, "expected node 1's shoald and both containerds: {pids:?}");
    pids.push(container);
    assert!(!namespaces_named(&id).is_empty());
    drop(c);
    let names = namespaces_named(&format!("shoal-{id}-"));
    assert!(names.is_empty(), "namespaces left: {names:?}");
    wait_for("the cluster's processes to be gone", Duration::from_secs(10), || {
        let alive: Vec<_> = pids.iter().filter(|p| pid_alive(**p)).collect();
        if alive.is_empty() {
            Ok(())
        } else {
            Err(format!("alive: {alive:?}"))
        }
    });
    let dirs: Vec<_> = std::fs::read_dir("/tmp")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("shoal-{id}-")))
        .collect();
    assert!(dirs.is_empty(), "temp dirs left: {dirs:?}");
}

#[test]
fn leftovers_of_a_dead_test_process_are_swept_and_a_live_ones_kept() {
    // A process that has exited: its pid names the "leftovers".
    let mut gone = Command::new("true").spawn().expect("run true");
    gone.wait().expect("wait");
    let dead = gone.id();
    assert!(!pid_alive(dead as i32));
    let stale = format!("shoal-t{dead}c0-1");
    let stale_dir = std::path::PathBuf::from(format!("/tmp/shoal-t{dead}c0-n1-x"));
    netns::run(Command::new("ip").args(["netns", "add", &stale])).expect("create a stale namespace");
    std::fs::create_dir_all(stale_dir.join("data")).unwrap();
    // Something still running in it, as a containerd shim would be, with a child in a network namespace of
    // its own, as a container would be.
    let mut shim = {
        let ns = std::fs::File::open(format!("/run/netns/{stale}")).unwrap();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "unshare -n sleep 600 & echo $!; wait"]).stdout(std::process::Stdio::piped());
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || netns::enter(&ns));
        }
        Reaped(cmd.spawn().expect("start a process in the stale namespace"))
    };
    let container: i32 = {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(shim.0.stdout.as_mut().unwrap()), &mut line)
            .expect("read the child's pid");
        line.trim().parse().unwrap_or_else(|e| panic!("child pid {line:?}: {e}"))
    };
    // Killed in any case when the test ends, so a failing sweep leaks nothing.
    let _container_guard = KillOnDrop(container);
    wait_for("the child to be in a network namespace of its own", Duration::from_secs(5), || {
        let (own, shim_ns) = (
            std::fs::read_link(format!("/proc/{container}/ns/net")),
            std::fs::read_link(format!("/proc/{}/ns/net", shim.0.id())),
        );
        match (own, shim_ns) {
            (Ok(a), Ok(b)) if a != b => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    // This process's own namespaces are in use and must survive the sweep.
    let live = NetNs::create(&format!("shoal-t{}c999-1", std::process::id())).expect("create a live namespace");

    netns::sweep_dead();

    assert!(namespaces_named(&stale).is_empty(), "stale namespace {stale} was not swept");
    assert!(!stale_dir.exists(), "stale temp dir {} was not swept", stale_dir.display());
    let exited = wait_for("the process in the stale namespace to be killed", Duration::from_secs(5), || {
        shim.0.try_wait().expect("try_wait").ok_or_else(|| format!("pid {} still running", shim.0.id()))
    });
    assert!(!exited.success(), "the process in the stale namespace exited by itself: {exited}");
    wait_for("its child in another namespace to be killed", Duration::from_secs(5), || {
        if pid_alive(container) {
            Err(format!("pid {container} still running"))
        } else {
            Ok(())
        }
    });
    assert_eq!(namespaces_named(live.name()), vec![live.name().to_string()], "a live namespace was swept");
    drop(live);
    assert!(namespaces_named(&format!("shoal-t{}c999-", std::process::id())).is_empty());
}
