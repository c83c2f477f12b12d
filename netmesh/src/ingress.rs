//! The ingress routing mesh on a host: nftables table `shoal_ingress` in the host namespace DNATs each
//! published port on the host's own addresses (`fib daddr type local`, from outside via `prerouting` and from
//! the host itself via `output`) round-robin to the service's tasks, and masquerades that traffic so replies
//! come back through this host. A port may opt out of masquerading to keep the client's source address (Swarm's
//! `mode=host`, or a task reachable without this host's help): then the task must route replies via this host.
//! The whole table is replaced in one `nft -f -` transaction per change, as in [`crate::lb`].

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::lb::LbError;
use crate::netns::{self, NetnsError};

/// The nftables table of published ports (family `ip`); its `shoal` prefix makes [`crate::lb::cleanup_all`]
/// remove it too.
pub const TABLE: &str = "shoal_ingress";
/// Packet mark bit that tells `postrouting` to masquerade a published-port connection.
pub const MASQUERADE_MARK: u32 = 0x0100_0000;

/// A transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    fn nft(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// One published port and where it leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedPort {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The port on every address of this host.
    pub published: u16,
    /// The port the tasks listen on.
    pub target: u16,
    /// The tasks' addresses (on the ingress network); none: connections are refused.
    pub backends: Vec<Ipv4Addr>,
    /// Masquerade (the default, Swarm's ingress); `false` keeps the client's source address.
    pub masquerade: bool,
    /// Live tasks new connections do not go to from this host (another node's, when the port prefers this
    /// node's own tasks): connections already forwarded to them are kept, not flushed as a removed backend's.
    pub standby: Vec<Ipv4Addr>,
}

/// Renders the complete replace transaction for `ports`.
pub fn render(ports: &[PublishedPort]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "table ip {TABLE} {{}}\ndelete table ip {TABLE}\ntable ip {TABLE} {{");
    let _ = writeln!(s, "  chain ports {{");
    for p in ports.iter().filter(|p| !p.backends.is_empty()) {
        let map: Vec<String> = p.backends.iter().enumerate().map(|(i, b)| format!("{i} : {b}")).collect();
        let mark =
            if p.masquerade { format!("meta mark set meta mark | {MASQUERADE_MARK:#010x} ") } else { String::new() };
        let _ = writeln!(
            s,
            "    {} dport {} {mark}dnat to numgen inc mod {} map {{ {} }} : {}",
            p.protocol.nft(),
            p.published,
            p.backends.len(),
            map.join(", "),
            p.target
        );
    }
    let _ = writeln!(s, "  }}");
    let _ = writeln!(s, "  chain prerouting {{ type nat hook prerouting priority -100; policy accept; fib daddr type local jump ports; }}");
    let _ = writeln!(
        s,
        "  chain output {{ type nat hook output priority -100; policy accept; fib daddr type local jump ports; }}"
    );
    let _ = writeln!(
        s,
        "  chain postrouting {{ type nat hook postrouting priority 100; policy accept; meta mark & {MASQUERADE_MARK:#010x} == {MASQUERADE_MARK:#010x} masquerade; }}"
    );
    // `route_localnet` (set with the table, see `Ingress::set`) lets `localhost:PORT` be DNATed to a task, as
    // Docker's published ports answer on localhost; the guard drops what that sysctl would otherwise let in:
    // packets for 127/8 arriving from outside that no DNAT rewrote (as kube-proxy does).
    let _ = writeln!(
        s,
        "  chain localnet_guard {{ type filter hook input priority -10; policy accept; meta iifname != \"lo\" ip daddr 127.0.0.0/8 ct status & dnat == 0 drop; }}"
    );
    let empty: Vec<&PublishedPort> = ports.iter().filter(|p| p.backends.is_empty()).collect();
    if !empty.is_empty() {
        // A published port without tasks refuses at once, as Swarm's does, instead of reaching whatever else
        // might listen on the host.
        let _ = writeln!(s, "  chain no_backends {{ type filter hook input priority -10; policy accept;");
        for p in empty {
            let reject = if p.protocol == Protocol::Tcp { "reject with tcp reset" } else { "reject" };
            let _ = writeln!(s, "    fib daddr type local {} dport {} {reject}", p.protocol.nft(), p.published);
        }
        let _ = writeln!(s, "  }}");
    }
    let _ = writeln!(s, "}}");
    s
}

/// A host's published ports.
#[derive(Debug)]
pub struct Ingress {
    netns: Option<PathBuf>,
    ports: Vec<PublishedPort>,
}

impl Ingress {
    /// The ingress rules of the host namespace `netns` (the process's own for `None`); nothing is applied until
    /// [`Ingress::set`].
    pub fn new(netns: Option<PathBuf>) -> Self {
        Ingress { netns, ports: Vec::new() }
    }

    /// The ports last applied.
    pub fn ports(&self) -> &[PublishedPort] {
        &self.ports
    }

    /// Makes the published ports exactly `ports`, in one transaction, and turns on IPv4 forwarding (needed to
    /// send DNATed traffic on to other hosts' tasks). Conntrack entries of backends that left are deleted.
    pub fn set(&mut self, ports: Vec<PublishedPort>) -> Result<(), LbError> {
        enable_forwarding(self.netns.as_deref())?;
        enable_route_localnet(self.netns.as_deref())?;
        let ns = self.netns.as_deref();
        let label = ns.map(|p| p.display().to_string()).unwrap_or_else(|| "host".into());
        let out = netns::command(ns, "nft", &["-f", "-"], Some(&render(&ports)))?;
        if !out.status.success() {
            return Err(LbError::Nft {
                table: TABLE.into(),
                ns: label,
                stderr: String::from_utf8_lossy(&out.stderr).trim().into(),
            });
        }
        let old = std::mem::replace(&mut self.ports, ports);
        for p in old {
            let now = self.ports.iter().find(|n| n.protocol == p.protocol && n.published == p.published);
            let live = |b: &Ipv4Addr| now.is_some_and(|n| n.backends.contains(b) || n.standby.contains(b));
            for b in p.backends.iter().chain(&p.standby).filter(|b| !live(b)) {
                forget(ns, &p, *b)?;
            }
        }
        Ok(())
    }

    /// Deletes the table.
    pub fn clear(&mut self) -> Result<(), LbError> {
        self.set(Vec::new())?;
        let ns = self.netns.as_deref();
        let out = netns::command(ns, "nft", &["delete", "table", "ip", TABLE], None)?;
        if !out.status.success() {
            let label = ns.map(|p| p.display().to_string()).unwrap_or_else(|| "host".into());
            return Err(LbError::Nft {
                table: TABLE.into(),
                ns: label,
                stderr: String::from_utf8_lossy(&out.stderr).trim().into(),
            });
        }
        Ok(())
    }
}

/// Deletes the conntrack entries of connections to published port `p` that went to `backend`.
fn forget(ns: Option<&Path>, p: &PublishedPort, backend: Ipv4Addr) -> Result<(), LbError> {
    let (port, b) = (p.published.to_string(), backend.to_string());
    let args = ["-D", "-p", p.protocol.nft(), "--orig-port-dst", &port, "--reply-src", &b];
    let out = netns::command(ns, "conntrack", &args, None)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || stderr.contains(" 0 flow entries") {
        return Ok(());
    }
    let label = ns.map(|p| p.display().to_string()).unwrap_or_else(|| "host".into());
    Err(LbError::Conntrack { backend, ns: label, stderr: stderr.trim().into() })
}

/// Turns on IPv4 forwarding in the namespace `ns` (the process's own for `None`).
pub fn enable_forwarding(ns: Option<&Path>) -> Result<(), LbError> {
    sysctl_on(ns, "/proc/sys/net/ipv4/ip_forward", "enable ip forwarding")
}

/// Lets traffic to 127.0.0.1 be DNATed to another address (published ports answering on `localhost`).
pub fn enable_route_localnet(ns: Option<&Path>) -> Result<(), LbError> {
    sysctl_on(ns, "/proc/sys/net/ipv4/conf/all/route_localnet", "enable route_localnet")
}

fn sysctl_on(ns: Option<&Path>, path: &'static str, op: &'static str) -> Result<(), LbError> {
    let label = ns.map(|p| p.display().to_string()).unwrap_or_else(|| "host".into());
    // /proc/sys/net follows the namespace of the thread that opens it, hence the helper thread.
    netns::run_in(ns, || std::fs::write(path, "1"))?
        .map_err(|source| LbError::Netns(NetnsError::Sys { ns: label, op, source }))
}
