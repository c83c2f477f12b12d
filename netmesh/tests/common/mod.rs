//! Helpers for the real-kernel tests: uniquely named namespaces removed on drop, an underlay veth between two
//! "hosts", and TCP exchanges from threads that entered a namespace. Needs root; never skips.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use netmesh::netns;

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A name prefix unique to this test process and call, `shoal-t<pid>c<seq>-<tag>-`: the e2e harness's naming,
/// so its sweep (`tests/src/netns.rs`) removes what a killed test process left behind.
pub fn unique_prefix(tag: &str) -> String {
    format!("shoal-t{}c{}-{tag}-", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed))
}

/// Namespaces created for a test; deleted on drop, also when the test panics. `on_drop` runs first (module
/// cleanups).
#[derive(Default)]
pub struct Guard {
    names: Vec<String>,
    on_drop: Vec<Box<dyn FnOnce()>>,
}

impl Guard {
    pub fn netns(&mut self, name: &str) -> PathBuf {
        netns::create(name).unwrap_or_else(|e| panic!("create netns {name}: {e}"));
        self.names.push(name.to_string());
        netns::path(name)
    }
    pub fn defer(&mut self, f: impl FnOnce() + 'static) {
        self.on_drop.push(Box::new(f));
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        for f in self.on_drop.drain(..) {
            f();
        }
        for n in &self.names {
            if let Err(e) = netns::delete(n) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// Links namespaces `a` and `b` by a veth pair `ul0`/`ul1` with `a_ip/24` and `b_ip/24` (the "underlay").
pub fn underlay(a: &Path, b: &Path, a_ip: Ipv4Addr, b_ip: Ipv4Addr) {
    link(a, "ul0", a_ip, b, "ul1", b_ip)
}

/// Links namespaces `a` and `b` by a veth pair `a_if`/`b_if` with `a_ip/24` and `b_ip/24`.
pub fn link(a: &Path, a_if: &str, a_ip: Ipv4Addr, b: &Path, b_if: &str, b_ip: Ipv4Addr) {
    use std::os::fd::AsRawFd;
    let fd = std::fs::File::open(b).unwrap();
    let raw = fd.as_raw_fd();
    netns::with_netlink(Some(a), |h| async move {
        h.link().add(rtnetlink::LinkVeth::new(a_if, b_if).build()).execute().await.unwrap();
        let i1 = netns::link_index(&h, b_if).await.unwrap().unwrap();
        h.link().set(rtnetlink::LinkUnspec::new_with_index(i1).setns_by_fd(raw).build()).execute().await.unwrap();
        let i0 = netns::link_index(&h, a_if).await.unwrap().unwrap();
        h.address().add(i0, a_ip.into(), 24).execute().await.unwrap();
        h.link().set(rtnetlink::LinkUnspec::new_with_index(i0).up().build()).execute().await.unwrap();
    })
    .unwrap();
    netns::with_netlink(Some(b), |h| async move {
        let i1 = netns::link_index(&h, b_if).await.unwrap().unwrap();
        h.address().add(i1, b_ip.into(), 24).execute().await.unwrap();
        h.link().set(rtnetlink::LinkUnspec::new_with_index(i1).up().build()).execute().await.unwrap();
    })
    .unwrap();
}

/// Adds `ip/len` to the link `ifname` in namespace `ns`.
pub fn add_addr(ns: &Path, ifname: &str, ip: Ipv4Addr, len: u8) {
    netns::with_netlink(Some(ns), |h| async move {
        let i = netns::link_index(&h, ifname).await.unwrap().unwrap_or_else(|| panic!("no link {ifname}"));
        h.address().add(i, ip.into(), len).execute().await.unwrap();
    })
    .unwrap();
}

/// Adds `ip/len` to the loopback of namespace `ns`.
pub fn add_lo_addr(ns: &Path, ip: Ipv4Addr, len: u8) {
    add_addr(ns, "lo", ip, len)
}

/// Opens a TCP connection from inside `ns` (the socket stays in that namespace whichever thread uses it).
pub fn connect(ns: &Path, addr: SocketAddr) -> Result<TcpStream, String> {
    netns::run_in(Some(ns), || {
        let s =
            TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        Ok(s)
    })
    .unwrap()
}

/// Sends a line on `s` and returns the reply.
pub fn ask(s: &mut TcpStream) -> Result<String, String> {
    s.write_all(b"hi\n").map_err(|e| format!("write: {e}"))?;
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => Err("connection closed".into()),
        Ok(n) => Ok(String::from_utf8_lossy(&buf[..n]).to_string()),
        Err(e) => Err(format!("read: {e}")),
    }
}

/// A TCP server on a thread inside `ns`: answers each line of each connection with `reply` and keeps the
/// connection open until the peer closes. Runs until the process ends.
pub fn serve(ns: PathBuf, addr: SocketAddr, reply: &'static str) {
    serve_with(ns, addr, move |_| reply.to_string())
}

/// Like [`serve`], the answer computed from the peer's address.
pub fn serve_with(ns: PathBuf, addr: SocketAddr, reply: impl Fn(SocketAddr) -> String + Send + Sync + 'static) {
    let reply = std::sync::Arc::new(reply);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        netns::enter(&ns).unwrap();
        let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        tx.send(()).unwrap();
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let reply = reply.clone();
            std::thread::spawn(move || {
                let Ok(peer) = s.peer_addr() else { return };
                let mut buf = [0u8; 64];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            if s.write_all(reply(peer).as_bytes()).is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("server did not start");
}

/// One request/response from a thread inside `ns`: connect, send a line, return the reply.
pub fn request(ns: &Path, addr: SocketAddr) -> Result<String, String> {
    netns::run_in(Some(ns), || {
        let mut s =
            TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.write_all(b"hi\n").map_err(|e| e.to_string())?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).map_err(|e| format!("read from {addr}: {e}"))?;
        Ok(String::from_utf8_lossy(&buf[..n]).to_string())
    })
    .unwrap()
}

/// Retries `f` until it succeeds or `deadline` passes; the error says what was still failing.
pub fn eventually<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let end = Instant::now() + deadline;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() > end => panic!("{what}: still failing after {deadline:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Connections per second (connect, one request/response, close) from one thread inside `ns` to `addrs`,
/// each measured in 5 interleaved rounds of `n` so neither side gets the warm or cold share.
pub fn connection_rates(ns: &Path, addrs: &[SocketAddr], n: usize) -> Vec<f64> {
    netns::run_in(Some(ns), || {
        let mut spent = vec![Duration::ZERO; addrs.len()];
        for _round in 0..5 {
            for (i, addr) in addrs.iter().enumerate() {
                let t = Instant::now();
                for _ in 0..n {
                    let mut s = TcpStream::connect_timeout(addr, Duration::from_secs(3)).expect("connect");
                    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                    ask(&mut s).expect("answer");
                }
                spent[i] += t.elapsed();
            }
        }
        spent.iter().map(|d| (5 * n) as f64 / d.as_secs_f64()).collect()
    })
    .unwrap()
}

/// A DNS query message for `name`.
pub fn message(name: &str, qtype: hickory_proto::rr::RecordType) -> Vec<u8> {
    let mut m = hickory_proto::op::Message::new();
    m.set_id(4242).set_recursion_desired(true);
    m.add_query(hickory_proto::op::Query::query(hickory_proto::rr::Name::from_ascii(name).unwrap(), qtype));
    m.to_vec().unwrap()
}

/// One DNS query from inside `ns` to 127.0.0.11:53 (UDP, or TCP with its length prefix).
pub fn query(ns: &Path, name: &str, qtype: hickory_proto::rr::RecordType, tcp: bool) -> hickory_proto::op::Message {
    let server = SocketAddr::from((netmesh::dns::DNS_ADDR, 53));
    let bytes = message(name, qtype);
    let reply = netns::run_in(Some(ns), || {
        if tcp {
            let mut s =
                TcpStream::connect_timeout(&server, Duration::from_secs(3)).expect("tcp connect to 127.0.0.11:53");
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            s.write_all(&(bytes.len() as u16).to_be_bytes()).unwrap();
            s.write_all(&bytes).unwrap();
            let mut len = [0u8; 2];
            s.read_exact(&mut len).expect("tcp reply length");
            let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
            s.read_exact(&mut buf).expect("tcp reply");
            buf
        } else {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            s.send_to(&bytes, server).unwrap();
            let mut buf = [0u8; 1500];
            let n = s.recv(&mut buf).unwrap_or_else(|e| panic!("no udp answer for {name}: {e}"));
            buf[..n].to_vec()
        }
    })
    .unwrap();
    hickory_proto::op::Message::from_vec(&reply).unwrap()
}

pub fn a_records(m: &hickory_proto::op::Message) -> Vec<Ipv4Addr> {
    let mut ips: Vec<Ipv4Addr> = m
        .answers()
        .iter()
        .filter_map(|r| if let hickory_proto::rr::RData::A(a) = r.data() { Some(a.0) } else { None })
        .collect();
    ips.sort();
    ips
}
