//! A multi-node test cluster: N real `shoald` processes, each (with its own managed containerd, data root,
//! exec root and socket) in its own network namespace, wired to one bridge in a "switch" namespace — nothing
//! touches the host's network. Fault helpers kill, freeze, unplug and partition nodes; dropping the
//! [`Cluster`] (also while a failed test unwinds) removes every process and namespace it made.
//!
//! Layout for cluster `t<pid>c<seq>` with subnet 10.213.K.0/24 (K derived from the pid and seq):
//!
//! ```text
//!  ns shoal-t<pid>c<seq>-sw:   bridge shb<pid>c<seq> ── v1, v2, … vN
//!  ns shoal-t<pid>c<seq>-<n>:  eth0 (peer of v<n>) 10.213.K.<n>/24, default route on eth0; lo
//! ```
//!
//! Each daemon also gets a UTS namespace with hostname `node-<n>`, its name in the swarm.
//!
//! The CLI reaches each daemon through its unix socket (sockets work across network namespaces).

use crate::netns::{self, NetNs};
use crate::{wait_for, Daemon};
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Clusters made by this process so far: part of every name, so one test process can hold several.
static SEQ: AtomicU32 = AtomicU32::new(0);

/// The nftables table the partition rules live in, in each node's namespace.
const NFT_TABLE: &str = "shoal_test";

/// Node `number`'s hostname.
fn hostname(number: usize) -> String {
    format!("node-{number}")
}

/// What `swarm join` needs, from the manager [`Cluster::init_swarm`] made.
#[derive(Debug, Clone)]
pub struct JoinInfo {
    pub worker_token: String,
    pub manager_token: String,
    /// The manager's cluster address, `ip:2377`.
    pub addr: String,
}

/// A node as `node ls --format json` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    pub hostname: String,
    /// `Ready`, `Down`, …
    pub status: String,
    /// `Leader` for the manager, empty for a worker.
    pub manager_status: String,
}

/// One node: a daemon in its own network namespace.
pub struct Node {
    /// 1-based, as in the namespace's name and the address's last byte.
    pub number: usize,
    /// Its address on the cluster's bridge.
    pub ip: Ipv4Addr,
    /// `node-<number>`: the daemon has a UTS namespace of its own, so the swarm's nodes have distinct names.
    pub hostname: String,
    // Declared before `ns`: the daemon stops before its namespace goes.
    daemon: Option<Daemon>,
    ns: NetNs,
    /// Addresses this node's partition rules drop.
    blocked: BTreeSet<Ipv4Addr>,
    stopped: bool,
}

impl std::ops::Deref for Node {
    type Target = Daemon;
    /// The node's daemon, for every single-daemon helper (`shoal`, `ok`, `fails`, `tasks`, `running`, …).
    fn deref(&self) -> &Daemon {
        self.daemon.as_ref().expect("daemon present until the cluster drops")
    }
}

impl Node {
    /// The network namespace's name (for `ip netns exec` by hand).
    pub fn netns(&self) -> &str {
        self.ns.name()
    }

    /// A command that runs `program` inside this node's network namespace.
    pub fn command(&self, program: &str) -> Command {
        self.ns.command(program).unwrap_or_else(|e| panic!("node {}: {e}", self.number))
    }

    /// Runs `ip args…` inside this node's namespace; panics saying what failed.
    pub fn ip(&self, args: &[&str]) -> String {
        self.ns.ip(args).unwrap_or_else(|e| panic!("node {}: {e}", self.number))
    }

    /// The IPv4 addresses on this node's `eth0`, as the kernel reports them.
    pub fn addresses(&self) -> Vec<Ipv4Addr> {
        self.ip(&["-4", "-o", "addr", "show", "dev", "eth0"])
            .lines()
            .filter_map(|l| l.split_whitespace().skip_while(|w| *w != "inet").nth(1))
            .filter_map(|cidr| cidr.split('/').next()?.parse().ok())
            .collect()
    }

    /// Whether one `ping` from this node to `ip` is answered within a second.
    pub fn ping(&self, ip: Ipv4Addr) -> bool {
        let mut cmd = self.command("busybox");
        cmd.args(["ping", "-c", "1", "-W", "1"]).arg(ip.to_string());
        netns::run(&mut cmd).is_ok()
    }

    /// A TCP listener on this node's address (a free port); the kernel completes handshakes without `accept`.
    pub fn tcp_listen(&self) -> TcpListener {
        let ip = self.ip;
        let bound = self.ns.within(move || TcpListener::bind((ip, 0)));
        bound
            .unwrap_or_else(|e| panic!("node {}: {e}", self.number))
            .unwrap_or_else(|e| panic!("node {}: listen on {ip}: {e}", self.number))
    }

    /// Opens a TCP connection from this node to `addr`, giving up after `timeout`.
    pub fn tcp_connect(&self, addr: SocketAddr, timeout: Duration) -> std::io::Result<()> {
        self.ns
            .within(move || TcpStream::connect_timeout(&addr, timeout).map(drop))
            .unwrap_or_else(|e| panic!("node {}: {e}", self.number))
    }

    /// SIGKILLs the daemon (its containerd and containers live on, as after a daemon crash).
    pub fn kill(&mut self) {
        self.stopped = false;
        self.daemon_mut().kill9();
    }

    /// Starts the daemon again on the same data root, in the same namespace, and waits until it answers.
    pub fn restart(&mut self) {
        self.stopped = false;
        self.daemon_mut().restart();
    }

    /// Freezes the daemon with SIGSTOP: it keeps its sockets but answers nothing (a hung node).
    pub fn sigstop(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
        self.stopped = true;
    }

    /// Thaws a daemon frozen with [`Node::sigstop`].
    pub fn sigcont(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
        self.stopped = false;
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = self.pid().unwrap_or_else(|| panic!("node {}: daemon is not running", self.number));
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
            .unwrap_or_else(|e| panic!("node {}: {sig} to shoald {pid}: {e}", self.number));
    }

    /// Unplugs the node: its `eth0` goes down (the kernel drops its routes through it).
    pub fn link_down(&self) {
        self.ip(&["link", "set", "eth0", "down"]);
    }

    /// Plugs the node back in: `eth0` up and its default route back.
    pub fn link_up(&self) {
        self.ip(&["link", "set", "eth0", "up"]);
        self.ip(&["route", "replace", "default", "dev", "eth0"]);
    }

    fn daemon_mut(&mut self) -> &mut Daemon {
        self.daemon.as_mut().expect("daemon present until the cluster drops")
    }

    /// Replaces this node's partition rules with drops of everything from `blocked`. Only incoming packets
    /// are dropped (on both sides, so both directions are cut): a sender then sees silence and timeouts, as
    /// on a real partition, rather than the immediate EPERM a local output drop would give it.
    fn apply_rules(&self) {
        let mut script = format!("table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n");
        if !self.blocked.is_empty() {
            let set = self.blocked.iter().map(Ipv4Addr::to_string).collect::<Vec<_>>().join(", ");
            script += &format!(
                "table inet {NFT_TABLE} {{\n  chain input {{\n    type filter hook input priority -100; policy accept;\n    ip saddr {{ {set} }} drop\n  }}\n}}\n"
            );
        }
        let mut cmd = self.command("nft");
        cmd.args(["-f", "-"]).stdin(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("node {}: run nft: {e}", self.number));
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("nft stdin");
            stdin.write_all(script.as_bytes()).expect("write nft rules");
        }
        let status = child.wait().expect("wait for nft");
        assert!(status.success(), "node {}: nft rejected:\n{script}", self.number);
    }
}

/// N nodes on one bridge. See the module doc for the layout.
pub struct Cluster {
    id: String,
    subnet: u8,
    nodes: Vec<Node>,
    // Dropped after the nodes (see Drop): the bridge lives here.
    switch: Option<NetNs>,
}

impl Cluster {
    /// Sweeps leftovers of dead test processes, builds the network, starts `n` daemons in parallel and waits
    /// until each answers on its socket.
    pub fn start(n: usize) -> Cluster {
        assert!((1..=250).contains(&n), "a cluster has 1 to 250 nodes, not {n}");
        netns::sweep_dead();
        let pid = std::process::id();
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let id = format!("t{pid}c{seq}");
        // Each cluster has its own isolated bridge, so equal subnets could not clash; differing ones just make
        // addresses in logs say which cluster they belong to.
        let subnet = (1 + (pid.wrapping_mul(7).wrapping_add(seq)) % 254) as u8;
        let fail = |what: &str, e: netns::NetnsError| -> ! { panic!("cluster {id}: {what}: {e}") };

        let switch = NetNs::create(&format!("shoal-{id}-sw")).unwrap_or_else(|e| fail("switch namespace", e));
        let bridge = format!("shb{pid}c{seq}");
        switch.ip(&["link", "add", &bridge, "type", "bridge"]).unwrap_or_else(|e| fail("bridge", e));
        switch.ip(&["link", "set", &bridge, "up"]).unwrap_or_else(|e| fail("bridge", e));
        // The cluster owns its namespaces from here on, so a failure below still cleans them up.
        let mut cluster = Cluster { id: id.clone(), subnet, nodes: Vec::new(), switch: Some(switch) };

        let mut spaces = Vec::new();
        for number in 1..=n {
            let ns = NetNs::create(&format!("shoal-{id}-{number}")).unwrap_or_else(|e| fail("node namespace", e));
            let ip = Ipv4Addr::new(10, 213, subnet, number as u8);
            let veth = format!("v{number}");
            let sw = cluster.switch.as_ref().expect("switch");
            let wire = || -> Result<(), netns::NetnsError> {
                sw.ip(&["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", ns.name()])?;
                sw.ip(&["link", "set", &veth, "master", &bridge, "up"])?;
                ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
                ns.ip(&["link", "set", "eth0", "up"])?;
                // shoald's default advertise address is the default route's interface's.
                ns.ip(&["route", "add", "default", "dev", "eth0"])?;
                Ok(())
            };
            let wired = wire();
            spaces.push((number, ip, ns));
            if let Err(e) = wired {
                drop(spaces);
                fail(&format!("wiring node {number}"), e);
            }
        }

        // Daemons start in parallel: each waits for its containerd, which is most of the start-up time.
        let prefix = |number: usize| format!("shoal-{id}-n{number}-");
        let daemons: Vec<Daemon> = std::thread::scope(|s| {
            let handles: Vec<_> = spaces
                .iter()
                .map(|(number, _, ns)| {
                    let (path, prefix, host) = (ns.path(), prefix(*number), hostname(*number));
                    s.spawn(move || Daemon::start_in_netns(&path, &host, &prefix))
                })
                .collect();
            // Join every thread before re-raising a failure, so the daemons that did start drop (and stop).
            let results: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
            let mut daemons = Vec::new();
            let mut failure = None;
            for r in results {
                match r {
                    Ok(d) => daemons.push(d),
                    Err(p) => failure = failure.or(Some(p)),
                }
            }
            if let Some(p) = failure {
                drop(daemons);
                drop(std::mem::take(&mut spaces));
                std::panic::resume_unwind(p);
            }
            daemons
        });
        for ((number, ip, ns), daemon) in spaces.into_iter().zip(daemons) {
            cluster.nodes.push(Node {
                number,
                ip,
                hostname: hostname(number),
                daemon: Some(daemon),
                ns,
                blocked: BTreeSet::new(),
                stopped: false,
            });
        }
        cluster
    }

    /// The cluster's id, `t<pid>c<seq>`: every namespace and temp dir name it makes contains `shoal-<id>-`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The third byte of the nodes' 10.213.K.0/24 addresses.
    pub fn subnet(&self) -> u8 {
        self.subnet
    }

    /// Node `number` (1-based).
    pub fn node(&self, number: usize) -> &Node {
        self.nodes
            .get(number.wrapping_sub(1))
            .unwrap_or_else(|| panic!("no node {number} in a {}-node cluster", self.nodes.len()))
    }

    /// Node `number` (1-based), to kill, freeze or restart it.
    pub fn node_mut(&mut self, number: usize) -> &mut Node {
        let len = self.nodes.len();
        self.nodes.get_mut(number.wrapping_sub(1)).unwrap_or_else(|| panic!("no node {number} in a {len}-node cluster"))
    }

    /// Every node, in order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Cuts every node in `a` off from every node in `b` (both directions), with nftables drops in the nodes'
    /// namespaces. Partitions add up; [`Cluster::heal`] removes them all.
    pub fn partition(&mut self, a: &[usize], b: &[usize]) {
        for &x in a.iter().chain(b) {
            self.node(x);
        }
        let ips = |side: &[usize], c: &Cluster| side.iter().map(|&n| c.node(n).ip).collect::<Vec<_>>();
        let (ips_a, ips_b) = (ips(a, self), ips(b, self));
        for (side, other) in [(a, &ips_b), (b, &ips_a)] {
            for &n in side {
                let node = self.node_mut(n);
                node.blocked.extend(other.iter().copied());
                node.apply_rules();
            }
        }
    }

    /// Removes every partition.
    pub fn heal(&mut self) {
        for node in &mut self.nodes {
            if !node.blocked.is_empty() {
                node.blocked.clear();
                node.apply_rules();
            }
        }
    }

    /// `swarm init --advertise-addr <its ip>` on node `manager`; returns what other nodes need to join it.
    pub fn init_swarm(&self, manager: usize) -> JoinInfo {
        let m = self.node(manager);
        m.ok(&["swarm", "init", "--advertise-addr", &m.ip.to_string()]);
        let token = |role| m.ok(&["swarm", "join-token", "-q", role]).trim().to_string();
        JoinInfo { worker_token: token("worker"), manager_token: token("manager"), addr: format!("{}:2377", m.ip) }
    }

    /// `swarm join --token <worker token> --advertise-addr <its ip> <manager>` on node `number`.
    pub fn join_worker(&self, number: usize, join: &JoinInfo) {
        let n = self.node(number);
        n.ok(&["swarm", "join", "--token", &join.worker_token, "--advertise-addr", &n.ip.to_string(), &join.addr]);
    }

    /// `swarm join --token <manager token> --advertise-addr <its ip> <manager>` on node `number`.
    pub fn join_manager(&self, number: usize, join: &JoinInfo) {
        let n = self.node(number);
        let out =
            n.ok(&["swarm", "join", "--token", &join.manager_token, "--advertise-addr", &n.ip.to_string(), &join.addr]);
        assert!(out.contains("as a manager"), "node {number} joined, but not as a manager: {out}");
    }

    /// The number of the node that node `asked` lists as Leader, if it lists exactly one.
    pub fn leader(&self, asked: usize) -> Option<usize> {
        let out = self.node(asked).shoal_within(&["node", "ls", "--format", "json"], Duration::from_secs(5))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let leaders: Vec<usize> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v.get("ManagerStatus").and_then(|s| s.as_str()) == Some("Leader"))
            .filter_map(|v| v.get("Hostname")?.as_str()?.strip_prefix("node-")?.parse().ok())
            .collect();
        (leaders.len() == 1).then(|| leaders[0])
    }

    /// The nodes as node `manager` lists them (`node ls --format json`), parsed strictly.
    pub fn node_rows(&self, manager: usize) -> Vec<NodeRow> {
        let out = self.node(manager).ok(&["node", "ls", "--format", "json"]);
        let row = |line: &str| -> Result<NodeRow, String> {
            let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("{e} in {line:?}"))?;
            let f = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string).ok_or(format!("no {k} in {v}"));
            Ok(NodeRow { hostname: f("Hostname")?, status: f("Status")?, manager_status: f("ManagerStatus")? })
        };
        out.lines().map(|l| row(l).unwrap_or_else(|e| panic!("node ls --format json: {e}\n{out}"))).collect()
    }

    /// Waits until node `manager` lists exactly `hostnames`, each `Ready`, naming what is missing.
    pub fn wait_nodes_ready(&self, manager: usize, hostnames: &[&str], timeout: Duration) {
        let want: BTreeSet<&str> = hostnames.iter().copied().collect();
        wait_for(&format!("nodes {want:?} to be Ready on node {manager}"), timeout, || {
            let rows = self.node_rows(manager);
            let ready: BTreeSet<&str> =
                rows.iter().filter(|r| r.status == "Ready").map(|r| r.hostname.as_str()).collect();
            if ready == want && rows.len() == want.len() {
                Ok(())
            } else {
                Err(format!("{rows:?}"))
            }
        })
    }

    /// Waits until every node's daemon answers `shoal version`, naming the ones that do not.
    pub fn wait_all_answer(&self, timeout: Duration) {
        wait_for("every node's daemon to answer", timeout, || {
            let silent: Vec<String> = self
                .nodes
                .iter()
                .filter(|n| !n.shoal_within(&["version"], Duration::from_secs(2)).is_some_and(|o| o.status.success()))
                .map(|n| format!("node {}", n.number))
                .collect();
            if silent.is_empty() {
                Ok(())
            } else {
                Err(format!("not answering: {}", silent.join(", ")))
            }
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // A frozen daemon can neither leave nor handle SIGTERM.
        for node in &mut self.nodes {
            if node.stopped {
                if let Some(pid) = node.daemon.as_ref().and_then(Daemon::pid) {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGCONT);
                }
            }
        }
        // Daemons stop (leave, SIGTERM, wait) in parallel; then each node's namespace goes, with anything
        // still running in it and those processes' children (the containers of a daemon killed and not
        // restarted, whose containerd and shims live on); the switch namespace, and with it the bridge and the veths, last.
        std::thread::scope(|s| {
            for node in &mut self.nodes {
                if let Some(d) = node.daemon.take() {
                    s.spawn(move || drop(d));
                }
            }
        });
        self.nodes.clear();
        self.switch.take();
    }
}
