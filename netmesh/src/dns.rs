//! The embedded DNS server every container resolves through at 127.0.0.11 (Docker's address), built on
//! hickory-server. A shared [`Records`] table (per network scope: name → A records) is updated at runtime;
//! each container gets a [`DnsServer`] whose UDP and TCP sockets are bound inside the container's namespace by
//! a helper thread and then served by the daemon's tokio runtime, so no tokio worker ever changes namespace.
//!
//! Answers: names in the container's networks (`<service>` → VIP or task IPs, `tasks.<service>` → task IPs,
//! aliases) from the table with TTL 0 so changes show at once; other single-label names and `tasks.*` →
//! NXDOMAIN; everything else is forwarded to the upstream resolvers from the daemon's own namespace.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, UdpSocket};
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_proto::op::{Header, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{RData, Record, RecordType};
use hickory_proto::xfer::Protocol;
use hickory_resolver::config::{NameServerConfig, NameServerConfigGroup, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::TokioResolver;
use hickory_server::authority::MessageResponseBuilder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::ServerFuture;
use tracing::{debug, warn};

use crate::netns::{self, NetnsError};

/// Where containers find the embedded server (their `/etc/resolv.conf` nameserver).
pub const DNS_ADDR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);
/// TTL of local answers: 0, so a client never keeps an address after a task stops.
pub const LOCAL_TTL: u32 = 0;
/// How long an idle TCP client may keep its connection.
const TCP_TIMEOUT: Duration = Duration::from_secs(5);

/// A failure starting a DNS server.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// Entering the container namespace failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// Binding or registering a socket failed.
    #[error("dns server on {addr}: {op}: {source}")]
    Socket { addr: SocketAddr, op: &'static str, source: std::io::Error },
    /// The host's resolver configuration could not be read.
    #[error("reading the host resolvers: {0}")]
    SystemConf(String),
}

/// Name → addresses per network scope; shared by every container's server and updated at runtime.
#[derive(Debug, Default)]
pub struct Records {
    scopes: RwLock<HashMap<String, HashMap<String, Vec<Ipv4Addr>>>>,
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl Records {
    /// An empty table, shareable between servers.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Sets the addresses of `name` on `network`; an empty list removes the name.
    pub fn set(&self, network: &str, name: &str, ips: Vec<Ipv4Addr>) {
        let mut scopes = self.scopes.write().expect("records lock");
        let scope = scopes.entry(network.to_string()).or_default();
        if ips.is_empty() {
            scope.remove(&normalize(name));
        } else {
            scope.insert(normalize(name), ips);
        }
    }

    /// Sets a service's names on `network`: `name` (and each alias) → the VIP, or the task IPs without one
    /// (`dnsrr`); `tasks.<name>` → the task IPs.
    pub fn set_service(
        &self,
        network: &str,
        name: &str,
        aliases: &[&str],
        vip: Option<Ipv4Addr>,
        tasks: Vec<Ipv4Addr>,
    ) {
        let main = vip.map(|v| vec![v]).unwrap_or_else(|| tasks.clone());
        for n in std::iter::once(&name).chain(aliases) {
            self.set(network, n, main.clone());
            self.set(network, &format!("tasks.{n}"), tasks.clone());
        }
    }

    /// Removes a service's names (and aliases) from `network`.
    pub fn remove_service(&self, network: &str, name: &str, aliases: &[&str]) {
        self.set_service(network, name, aliases, None, Vec::new());
    }

    /// Drops every name of `network`.
    pub fn remove_network(&self, network: &str) {
        self.scopes.write().expect("records lock").remove(network);
    }

    /// The addresses of `name` on any of `networks` (in that order, without repeats); `None` if no network
    /// knows it.
    pub fn lookup(&self, networks: &[String], name: &str) -> Option<Vec<Ipv4Addr>> {
        let name = normalize(name);
        let scopes = self.scopes.read().expect("records lock");
        let mut out: Option<Vec<Ipv4Addr>> = None;
        for ips in networks.iter().filter_map(|n| scopes.get(n)?.get(&name)) {
            let acc = out.get_or_insert_with(Vec::new);
            acc.extend(ips.iter().filter(|ip| !acc.contains(ip)).copied().collect::<Vec<_>>());
        }
        out
    }
}

/// Whether `name` belongs to the swarm's namespace: answered locally or NXDOMAIN, never forwarded.
fn is_swarm_name(name: &str) -> bool {
    let name = normalize(name);
    !name.contains('.') || name.starts_with("tasks.")
}

struct Handler {
    records: Arc<Records>,
    networks: Arc<RwLock<Vec<String>>>,
    upstream: Option<TokioResolver>,
}

impl Handler {
    async fn answer(&self, request: &Request) -> Result<(ResponseCode, Vec<Record>), ResponseCode> {
        if request.message_type() != MessageType::Query || request.op_code() != OpCode::Query {
            return Err(ResponseCode::NotImp);
        }
        let info = request.request_info().map_err(|_| ResponseCode::FormErr)?;
        let query = info.query.original().clone();
        let name = query.name().to_string();
        let networks = self.networks.read().expect("networks lock").clone();
        if let Some(ips) = self.records.lookup(&networks, &name) {
            // Known name: A records; other types get an empty NOERROR (not NXDOMAIN, or AAAA would hide A).
            let records = match query.query_type() {
                RecordType::A | RecordType::ANY => ips
                    .into_iter()
                    .map(|ip| Record::from_rdata(query.name().clone(), LOCAL_TTL, RData::A(ip.into())))
                    .collect(),
                _ => Vec::new(),
            };
            return Ok((ResponseCode::NoError, records));
        }
        if is_swarm_name(&name) {
            return Ok((ResponseCode::NXDomain, Vec::new()));
        }
        let Some(resolver) = &self.upstream else { return Ok((ResponseCode::Refused, Vec::new())) };
        match resolver.lookup(query.name().clone(), query.query_type()).await {
            Ok(lookup) => Ok((ResponseCode::NoError, lookup.records().to_vec())),
            Err(e) if e.is_nx_domain() => Ok((ResponseCode::NXDomain, Vec::new())),
            Err(e) if e.is_no_records_found() => Ok((ResponseCode::NoError, Vec::new())),
            Err(e) => {
                debug!(%name, error = %e, "forwarding failed");
                Err(ResponseCode::ServFail)
            }
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler>(&self, request: &Request, mut response: R) -> ResponseInfo {
        let builder = MessageResponseBuilder::from_message_request(request);
        let sent = match self.answer(request).await {
            Ok((code, records)) => {
                let mut header = Header::response_from_request(request.header());
                header.set_recursion_available(true);
                header.set_response_code(code);
                response.send_response(builder.build(header, records.iter(), &[], &[], &[])).await
            }
            Err(code) => response.send_response(builder.error_msg(request.header(), code)).await,
        };
        sent.unwrap_or_else(|e| {
            warn!(error = %e, "sending a dns response failed");
            let mut header = Header::new();
            header.set_response_code(ResponseCode::ServFail);
            header.into()
        })
    }
}

/// The host's resolvers, from `/etc/resolv.conf` (forwarding happens from the daemon's namespace, so even a
/// loopback resolver there works).
pub fn system_upstreams() -> Result<Vec<SocketAddr>, DnsError> {
    let (conf, _) =
        hickory_resolver::system_conf::read_system_conf().map_err(|e| DnsError::SystemConf(e.to_string()))?;
    let mut out: Vec<SocketAddr> = conf.name_servers().iter().map(|n| n.socket_addr).collect();
    out.dedup();
    Ok(out)
}

fn resolver(upstream: &[SocketAddr]) -> Option<TokioResolver> {
    if upstream.is_empty() {
        return None;
    }
    let servers: Vec<NameServerConfig> = upstream
        .iter()
        .flat_map(|a| [NameServerConfig::new(*a, Protocol::Udp), NameServerConfig::new(*a, Protocol::Tcp)])
        .collect();
    let config = ResolverConfig::from_parts(None, vec![], NameServerConfigGroup::from(servers));
    let mut opts = ResolverOpts::default();
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 1;
    // The client caches (or not) by the upstream TTLs; a second cache here would only delay changes.
    opts.cache_size = 0;
    Some(TokioResolver::builder_with_config(config, TokioConnectionProvider::default()).with_options(opts).build())
}

/// One container's DNS server; stops when dropped.
pub struct DnsServer {
    server: ServerFuture<Handler>,
    networks: Arc<RwLock<Vec<String>>>,
    addr: SocketAddr,
}

impl DnsServer {
    /// Starts a server on 127.0.0.11:53 inside the namespace at `netns`, answering from `records` for the
    /// container's `networks` and forwarding other names to `upstream`. Must be called within a tokio runtime.
    pub async fn start(
        netns: &Path,
        records: Arc<Records>,
        networks: Vec<String>,
        upstream: &[SocketAddr],
    ) -> Result<Self, DnsError> {
        let addr = SocketAddr::V4(SocketAddrV4::new(DNS_ADDR, 53));
        let ns = netns.to_path_buf();
        let (udp, tcp) = tokio::task::spawn_blocking(move || {
            netns::run_in(Some(&ns), || -> Result<_, DnsError> {
                let udp = UdpSocket::bind(addr).map_err(|source| DnsError::Socket { addr, op: "bind udp", source })?;
                let tcp =
                    TcpListener::bind(addr).map_err(|source| DnsError::Socket { addr, op: "bind tcp", source })?;
                Ok((udp, tcp))
            })
        })
        .await
        .expect("socket binding thread")??;
        Self::serve(udp, tcp, records, networks, upstream)
    }

    /// Serves on sockets bound already (in any namespace). Must be called within a tokio runtime.
    pub fn serve(
        udp: UdpSocket,
        tcp: TcpListener,
        records: Arc<Records>,
        networks: Vec<String>,
        upstream: &[SocketAddr],
    ) -> Result<Self, DnsError> {
        let addr = udp.local_addr().map_err(|source| DnsError::Socket {
            addr: ([0, 0, 0, 0], 0).into(),
            op: "local address",
            source,
        })?;
        let networks = Arc::new(RwLock::new(networks));
        let handler = Handler { records, networks: networks.clone(), upstream: resolver(upstream) };
        let mut server = ServerFuture::new(handler);
        server.register_socket_std(udp).map_err(|source| DnsError::Socket { addr, op: "register udp", source })?;
        server.register_listener_std(tcp, TCP_TIMEOUT).map_err(|source| DnsError::Socket {
            addr,
            op: "register tcp",
            source,
        })?;
        debug!(%addr, "dns server started");
        Ok(DnsServer { server, networks, addr })
    }

    /// The address served (inside the container namespace for [`DnsServer::start`]).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the networks whose names this container sees.
    pub fn set_networks(&self, networks: Vec<String>) {
        *self.networks.write().expect("networks lock") = networks;
    }

    /// Stops serving and waits for in-flight queries.
    pub async fn stop(mut self) {
        if let Err(e) = self.server.shutdown_gracefully().await {
            warn!(addr = %self.addr, error = %e, "dns server stopped with an error");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_joins_the_container_networks_without_repeats() {
        let r = Records::new();
        let (a, b, c) = (Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 1, 2), Ipv4Addr::new(10, 0, 2, 2));
        r.set("n1", "Web", vec![a, b]);
        r.set("n2", "web.", vec![b, c]);
        r.set("n3", "web", vec![c]);
        let nets = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(r.lookup(&nets(&["n1", "n2"]), "WEB."), Some(vec![a, b, c]));
        assert_eq!(r.lookup(&nets(&["n3"]), "web"), Some(vec![c]));
        assert_eq!(r.lookup(&nets(&["n4"]), "web"), None);
        r.set("n1", "web", vec![]);
        assert_eq!(r.lookup(&nets(&["n1"]), "web"), None, "empty list removes");
    }

    #[test]
    fn only_single_labels_and_tasks_names_stay_in_the_swarm() {
        assert!(is_swarm_name("web."));
        assert!(is_swarm_name("tasks.web"));
        assert!(!is_swarm_name("example.com."));
    }
}
