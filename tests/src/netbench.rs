//! `bench net`: the dataplane on real daemons and containers (2 nodes of the multi-node harness). Service `web`
//! (one busybox httpd task on node 2, on overlay `bench`, published on 8080) and a client container on node 1. It
//! prints, from interleaved rounds (each path measured once per round, the best round kept, so no path meets a
//! quieter moment of the shared machine than another):
//!
//! - connections/s (each one HTTP/1.0 request) and mean connection setup through web's VIP from the client
//!   container, against the task's overlay address from the same container;
//! - the same through the routing mesh (node 1's published port, from node 1's namespace), against the task's
//!   ingress address from node 1 (the same overlay path without the DNAT and masquerade);
//! - embedded DNS queries/s and p99 latency (sequential UDP queries for `web` from the client container);
//! - for a new service: when its task is RUNNING (as `service ps` shows it, polled) and when it first answers by
//!   name (DNS, then a request to the address given) and through the mesh, measured from `service create`.
//!
//! Figures only; nothing is asserted beyond the cluster working.

use crate::cluster::{Cluster, Node};
use crate::wait_for;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(120);
const CONNECTIONS: usize = 200;
const DNS_QUERIES: usize = 2000;
const SERVE: &str = "hostname > /var/www/index.html && exec httpd -f -p 80 -h /var/www";

/// Runs `f` on a thread inside the network namespace at `ns` (a node's `/run/netns` file or a container's
/// `/proc/<pid>/ns/net`); sockets it makes stay in that namespace.
fn within<T: Send>(ns: &Path, f: impl FnOnce() -> T + Send) -> T {
    let file = std::fs::File::open(ns).unwrap_or_else(|e| panic!("open {}: {e}", ns.display()));
    std::thread::scope(|s| {
        s.spawn(|| {
            crate::netns::enter(&file).unwrap_or_else(|e| panic!("enter {}: {e}", ns.display()));
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// One HTTP/1.0 GET on a new connection; the time the connection took to set up.
fn request(addr: SocketAddr, timeout: Duration) -> std::io::Result<Duration> {
    let t = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    let setup = t.elapsed();
    s.set_read_timeout(Some(timeout))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    if !out.starts_with(b"HTTP/1.") {
        return Err(std::io::Error::other("not an HTTP answer"));
    }
    Ok(setup)
}

/// Connections (one request each) per second to `addr` and the mean setup time, `n` in a row.
fn rate(addr: SocketAddr, n: usize) -> (f64, Duration) {
    let t0 = Instant::now();
    let mut setup = Duration::ZERO;
    for i in 0..n {
        setup += request(addr, Duration::from_secs(3)).unwrap_or_else(|e| panic!("request {i} to {addr}: {e}"));
    }
    (n as f64 / t0.elapsed().as_secs_f64(), setup / n as u32)
}

/// A DNS query for `name`, type A.
fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// The address of the last A record of a DNS answer, if it has one.
fn answer_addr(a: &[u8]) -> Option<Ipv4Addr> {
    let answers = u16::from_be_bytes([*a.get(6)?, *a.get(7)?]);
    let n = a.len();
    (answers > 0 && n >= 16 && a[n - 6..n - 4] == [0, 4]).then(|| Ipv4Addr::new(a[n - 4], a[n - 3], a[n - 2], a[n - 1]))
}

/// Asks the embedded DNS (127.0.0.11 in the calling thread's namespace) for `name` once.
fn resolve(sock: &UdpSocket, id: u16, name: &str) -> Option<Ipv4Addr> {
    sock.send(&dns_query(id, name)).ok()?;
    let mut buf = [0u8; 512];
    let len = sock.recv(&mut buf).ok()?;
    answer_addr(&buf[..len])
}

fn dns_socket() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").expect("a UDP socket");
    s.connect("127.0.0.11:53").expect("the embedded DNS address");
    s.set_read_timeout(Some(Duration::from_secs(2))).expect("a read timeout");
    s
}

/// Sequential queries for `name`: queries/s and p99 latency.
fn dns_rate(name: &str, n: usize) -> (f64, Duration) {
    let s = dns_socket();
    let mut lat = Vec::with_capacity(n);
    let t0 = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        resolve(&s, i as u16, name).unwrap_or_else(|| panic!("no answer for {name} (query {i})"));
        lat.push(t.elapsed());
    }
    let qps = n as f64 / t0.elapsed().as_secs_f64();
    lat.sort();
    (qps, lat[(n * 99 / 100).min(n - 1)])
}

/// The network namespace of the only container running on `node`.
fn container_ns(node: &Node) -> PathBuf {
    let running = node.running();
    match &running[..] {
        [t] => PathBuf::from(format!("/proc/{}/ns/net", t.pid)),
        other => panic!("node {}: expected one running container, found {other:?}", node.number),
    }
}

/// The IPv4 addresses inside the network namespace at `ns` (loopback left out).
fn addresses(ns: &Path) -> Vec<Ipv4Addr> {
    let mut cmd = std::process::Command::new("nsenter");
    cmd.arg(format!("--net={}", ns.display())).args(["ip", "-4", "-o", "addr"]);
    let out = crate::netns::run(&mut cmd).unwrap_or_else(|e| panic!("{e}"));
    out.lines()
        .filter_map(|l| l.split_whitespace().skip_while(|w| *w != "inet").nth(1))
        .filter_map(|cidr| cidr.split('/').next()?.parse().ok())
        .filter(|a: &Ipv4Addr| !a.is_loopback())
        .collect()
}

fn running(c: &Cluster, service: &str) -> bool {
    c.node(1).tasks(service).iter().any(|t| t.desired == "running" && t.state == "running")
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// One path's best connections/s and best mean setup over the rounds.
struct Best {
    rps: f64,
    setup: Duration,
}

impl Best {
    fn new() -> Self {
        Best { rps: 0.0, setup: Duration::MAX }
    }

    fn keep_best(&mut self, (rps, setup): (f64, Duration)) {
        self.rps = self.rps.max(rps);
        self.setup = self.setup.min(setup);
    }
}

fn row(name: &str, p: &Best, direct: &Best) {
    println!(
        "  {name:<34} {:>8.0} conn/s  setup {:>9}   vs direct: {:.2}x conn/s, {:.2}x setup",
        p.rps,
        ms(p.setup),
        p.rps / direct.rps,
        p.setup.as_secs_f64() / direct.setup.as_secs_f64()
    );
}

pub fn run(rounds: usize) {
    let c = Cluster::start(2);
    let join = c.init_swarm(1);
    c.join_worker(2, &join);
    c.wait_nodes_ready(1, &["node-1", "node-2"], DEADLINE);
    let image = crate::test_image().to_str().expect("utf-8 path");
    for n in 1..=2 {
        c.node(n).ok(&["image", "load", "-i", image]);
    }
    let m = c.node(1);
    m.ok(&["network", "create", "-d", "overlay", "bench"]);
    let on = |node: &str| format!("node.hostname=={node}");
    m.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "web",
        "--network",
        "bench",
        "-p",
        "8080:80",
        "--constraint",
        &on("node-2"),
        "busybox",
        "sh",
        "-c",
        SERVE,
    ]);
    m.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "client",
        "--network",
        "bench",
        "--constraint",
        &on("node-1"),
        "busybox",
        "sleep",
        "100000",
    ]);
    for s in ["web", "client"] {
        wait_for(&format!("{s} running"), DEADLINE, || running(&c, s).then_some(()).ok_or(format!("{:?}", m.tasks(s))));
    }

    let client = container_ns(m);
    let node1 = PathBuf::from("/run/netns").join(m.netns());
    let mesh = SocketAddr::from((m.ip, 8080));
    // web's addresses: the name gives the VIP, tasks.web the overlay address; the task's other address on the
    // ingress network is the one node 1 reaches over its own ingress attachment.
    let (vip, overlay) = wait_for("web and tasks.web resolve", DEADLINE, || {
        let got = within(&client, || {
            let s = dns_socket();
            (resolve(&s, 1, "web"), resolve(&s, 2, "tasks.web"))
        });
        match got {
            (Some(vip), Some(task)) => Ok((vip, task)),
            other => Err(format!("web, tasks.web → {other:?}")),
        }
    });
    let web_addrs = addresses(&container_ns(c.node(2)));
    let ingress = *web_addrs
        .iter()
        .find(|a| **a != overlay && !a.octets().starts_with(&[172, 29]))
        .unwrap_or_else(|| panic!("web's ingress address among {web_addrs:?} (overlay {overlay})"));
    let (vip, overlay, ingress) =
        (SocketAddr::from((vip, 80)), SocketAddr::from((overlay, 80)), SocketAddr::from((ingress, 80)));
    wait_for("web answering through the VIP and the mesh", DEADLINE, || {
        let v = within(&client, || request(vip, Duration::from_secs(2)));
        let h = within(&node1, || request(mesh, Duration::from_secs(2)));
        v.and(h).map_err(|e| e.to_string())
    });

    let (mut d, mut v, mut hd, mut h) = (Best::new(), Best::new(), Best::new(), Best::new());
    for _ in 0..rounds {
        d.keep_best(within(&client, || rate(overlay, CONNECTIONS)));
        v.keep_best(within(&client, || rate(vip, CONNECTIONS)));
        hd.keep_best(within(&node1, || rate(ingress, CONNECTIONS)));
        h.keep_best(within(&node1, || rate(mesh, CONNECTIONS)));
    }
    let (qps, p99) = within(&client, || dns_rate("web", DNS_QUERIES));
    println!(
        "net bench: 2 nodes, task on node 2, clients on node 1; best of {rounds} interleaved rounds of {CONNECTIONS} \
         connections (one HTTP/1.0 request each)"
    );
    row(&format!("VIP {vip} (container)"), &v, &d);
    row(&format!("direct {overlay} (container)"), &d, &d);
    row(&format!("mesh {mesh} (node 1)"), &h, &hd);
    row(&format!("direct {ingress} (node 1)"), &hd, &hd);
    println!("  DNS: {qps:.0} queries/s, p99 {} ({DNS_QUERIES} sequential queries for web)", ms(p99));

    // A new service: when its task runs, and when it first answers by name and through the mesh.
    let t0 = Instant::now();
    m.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "late",
        "--network",
        "bench",
        "-p",
        "8081:80",
        "--constraint",
        &on("node-2"),
        "busybox",
        "sh",
        "-c",
        SERVE,
    ]);
    let created = t0.elapsed();
    let seen: Mutex<(Option<Duration>, Option<Duration>, Option<Duration>)> = Mutex::new((None, None, None));
    let done = |s: &Mutex<(Option<Duration>, Option<Duration>, Option<Duration>)>| {
        let s = s.lock().expect("lock");
        s.0.is_some() && s.1.is_some() && s.2.is_some()
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done(&seen) && t0.elapsed() < DEADLINE {
                if running(&c, "late") {
                    seen.lock().expect("lock").0.get_or_insert(t0.elapsed());
                }
            }
        });
        s.spawn(|| {
            within(&client, || {
                let sock = dns_socket();
                let mut id = 0u16;
                while !done(&seen) && t0.elapsed() < DEADLINE {
                    id = id.wrapping_add(1);
                    let addr = resolve(&sock, id, "late");
                    if addr.is_some_and(|a| request((a, 80).into(), Duration::from_millis(200)).is_ok()) {
                        seen.lock().expect("lock").1.get_or_insert(t0.elapsed());
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        });
        s.spawn(|| {
            within(&node1, || {
                let late = SocketAddr::from((m.ip, 8081));
                while !done(&seen) && t0.elapsed() < DEADLINE {
                    if request(late, Duration::from_millis(200)).is_ok() {
                        seen.lock().expect("lock").2.get_or_insert(t0.elapsed());
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        });
    });
    let (run_at, name_at, mesh_at) = *seen.lock().expect("lock");
    let show = |at: Option<Duration>| at.map(ms).unwrap_or_else(|| "never (2 min)".into());
    let after = |at: Option<Duration>| match (at, run_at) {
        (Some(a), Some(r)) => format!("{:+.0} ms", (a.as_secs_f64() - r.as_secs_f64()) * 1000.0),
        _ => "-".into(),
    };
    println!(
        "  new service (create returned after {}): RUNNING seen at {} (service ps polled); reachable by name at {} \
         ({} from RUNNING), through the mesh at {} ({} from RUNNING)",
        ms(created),
        show(run_at),
        show(name_at),
        after(name_at),
        show(mesh_at),
        after(mesh_at)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_answers_give_their_last_a_record() {
        let q = dns_query(7, "web");
        assert_eq!(&q[..2], &[0, 7]);
        assert_eq!(&q[12..], &[3, b'w', b'e', b'b', 0, 0, 1, 0, 1]);
        let mut a = q.clone();
        a[7] = 1; // one answer
        a.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 0, 1, 2]);
        assert_eq!(answer_addr(&a), Some(Ipv4Addr::new(10, 0, 1, 2)));
        assert_eq!(answer_addr(&q), None, "no answer");
    }
}
