//! The node's dataplane, driven by the network state the dispatcher sends (`Executor::apply_network_state`) and
//! by the tasks this node runs. It applies; it never allocates cluster addresses (the manager's allocator does).
//! Only the host-local egress addresses are chosen here.
//!
//! - Per network in the state: an overlay sandbox (bridge + VXLAN, MTU = underlay − 50), the neighbour and FDB
//!   entries of endpoints on other nodes, and the network's DNS names in the shared records table.
//! - Per task with networks (or `mode=host` ports): a named netns `<prefix>t-<task id>` with one veth per
//!   attachment (`eth0`, `eth1`… in order), an egress veth with the default route unless every network is
//!   internal, `/etc/resolv.conf`, `/etc/hosts`, `/etc/hostname` in the task's directory, an embedded DNS server
//!   scoped to its networks and a VIP balancer. A record of it (`<state dir>/tasks/<id>.json`) lets a restarted
//!   daemon find, re-attach and tear it down.
//! - On the host: an attachment to the `ingress` sandbox with the node's own ingress address, and one nftables
//!   table for published ports (ingress mode: every serving task on any node, masqueraded, or with
//!   `client-ip=preserve` this node's own serving tasks unmasqueraded when it has any; `mode=host`: local tasks
//!   only, client address kept).
//!
//! Every name carries a prefix derived from the data root, so several daemons on one kernel never touch each
//! other's namespaces and devices, and a restarted daemon finds its own. Kernel work blocks, so it runs on the
//! blocking pool under one lock; the periodic reconcile re-applies the last state to repair drift.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::Ipv4Net;
use netmesh::dns::{DnsServer, Records};
use netmesh::ingress::{Ingress, Protocol, PublishedPort};
use netmesh::lb::Balancer;
use netmesh::overlay::{self, mac_for_ip, Attachment, Host, RemoteEndpoint};
use netmesh::{egress, netns};
use serde::{Deserialize, Serialize};
use swarm::api::{EndpointMode, NetworkState, PortProtocol, PublishMode, Task};
use tracing::{debug, info, warn};

/// How often the last state is applied again, repairing what drifted (deleted devices, flushed rules).
pub const RECONCILE_INTERVAL: Duration = Duration::from_secs(10);
/// The host-local egress subnet (Docker's `docker_gwbridge`, on another range so both can coexist).
pub const DEFAULT_EGRESS: &str = "172.29.0.1/16";
/// Format version of the per-task records.
const TASK_RECORD_FORMAT: u32 = 1;

/// A failure wiring a task or applying the network state.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("network {0} is not known on this node (no network state names it)")]
    UnknownNetwork(String),
    #[error("invalid address {addr:?} on network {network}: {reason}")]
    BadAddress { network: String, addr: String, reason: String },
    #[error(transparent)]
    Overlay(Box<overlay::OverlayError>),
    #[error(transparent)]
    Egress(Box<egress::EgressError>),
    #[error(transparent)]
    Rules(Box<netmesh::lb::LbError>),
    #[error(transparent)]
    Netns(Box<netns::NetnsError>),
    #[error(transparent)]
    Dns(Box<netmesh::dns::DnsError>),
    #[error("the egress subnet {0} is full")]
    EgressFull(Ipv4Net),
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
}

/// Boxed: netmesh's errors are large, and every result here carries one.
macro_rules! boxed_from {
    ($($variant:ident: $ty:ty),*) => {$(
        impl From<$ty> for NetError {
            fn from(e: $ty) -> Self {
                NetError::$variant(Box::new(e))
            }
        }
    )*};
}

boxed_from!(
    Overlay: overlay::OverlayError,
    Egress: egress::EgressError,
    Rules: netmesh::lb::LbError,
    Netns: netns::NetnsError,
    Dns: netmesh::dns::DnsError
);

impl From<NetError> for swarm::agent::exec::ExecError {
    fn from(e: NetError) -> Self {
        match e {
            NetError::UnknownNetwork(_) | NetError::BadAddress { .. } => Self::InvalidSpec(e.to_string()),
            e => Self::Runtime(format!("network: {e}")),
        }
    }
}

/// Where and under which names this daemon's dataplane lives.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// The underlay namespace (`None`: the daemon's own) and the name prefix of everything created.
    pub host: Host,
    /// Per-task records (`tasks/<id>.json`).
    pub state_dir: PathBuf,
    /// The egress bridge's gateway and subnet.
    pub egress: Ipv4Net,
    /// The VXLAN source address; `None`: found among the endpoints' node addresses, else the default route's.
    pub underlay: Option<Ipv4Addr>,
    /// Resolvers for names outside the swarm (the host's, by default).
    pub upstream: Vec<SocketAddr>,
}

impl NetworkConfig {
    /// The configuration of the daemon with data root `data_root`: prefix `s<5 hex digits of its path>-`
    /// (short, because device names are at most 15 bytes and carry the prefix's first 6 characters).
    pub fn for_data_root(data_root: &Path) -> Self {
        let canonical = std::fs::canonicalize(data_root).unwrap_or_else(|_| data_root.to_path_buf());
        NetworkConfig {
            host: Host { netns: None, prefix: prefix_for(&canonical) },
            state_dir: data_root.join("network"),
            egress: DEFAULT_EGRESS.parse().expect("valid default"),
            underlay: None,
            upstream: netmesh::dns::system_upstreams().unwrap_or_default(),
        }
    }
}

/// `s` + 5 hex digits of an FNV-1a hash of the path + `-`.
pub fn prefix_for(path: &Path) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in path.as_os_str().as_encoded_bytes() {
        h = (h ^ u32::from(*b)).wrapping_mul(0x0100_0193);
    }
    format!("s{:05x}-", h & 0xf_ffff)
}

/// What a task's container needs from its network wiring: the namespace to join and files to bind-mount
/// (container path, host path).
#[derive(Debug, Clone)]
pub struct TaskWiring {
    pub netns: PathBuf,
    pub files: Vec<(String, PathBuf)>,
}

/// Adds the wiring's files to a runtime spec as bind mounts (after the spec's own, so they win over the image).
pub fn add_files(
    spec: &mut oci_spec::runtime::Spec,
    files: &[(String, PathBuf)],
) -> Result<(), swarm::agent::exec::ExecError> {
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    for (target, source) in files {
        let m = oci_spec::runtime::MountBuilder::default()
            .destination(target)
            .typ("bind")
            .source(source)
            .options(vec!["rbind".to_string(), "rw".to_string()])
            .build()
            .map_err(|e| swarm::agent::exec::ExecError::InvalidSpec(format!("mount for {target}: {e}")))?;
        mounts.push(m);
    }
    spec.set_mounts(Some(mounts));
    Ok(())
}

/// One interface of a task, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Iface {
    network_id: String,
    ifname: String,
    addr: Ipv4Net,
}

/// A local task's wiring, kept on disk so a restarted daemon can re-attach or remove it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TaskRecord {
    format: u32,
    task_id: String,
    service_id: String,
    netns: String,
    interfaces: Vec<Iface>,
    /// The egress address (and the default route through it), if the task may leave the cluster.
    #[serde(default)]
    egress: Option<Ipv4Addr>,
    /// `mode=host` ports: (protocol, published, target).
    #[serde(default)]
    host_ports: Vec<(PortProtocol, u16, u16)>,
}

struct LocalTask {
    record: TaskRecord,
    dns: Option<DnsServer>,
    balancer: Balancer,
    /// Its veths are in place (false after a restart until re-attached).
    attached: bool,
}

/// A network of the state, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Net {
    id: String,
    vni: u32,
    subnet: Ipv4Net,
    gateway: Ipv4Addr,
    internal: bool,
    ingress: bool,
}

#[derive(Default)]
struct Inner {
    state: Option<NetworkState>,
    nets: BTreeMap<String, Net>,
    /// Sandboxes made (network id → VNI).
    ready: BTreeMap<String, u32>,
    remotes: BTreeMap<String, Vec<RemoteEndpoint>>,
    /// DNS names set, per network.
    names: BTreeMap<String, BTreeMap<String, Vec<Ipv4Addr>>>,
    tasks: HashMap<String, LocalTask>,
    underlay: Option<Ipv4Addr>,
    /// The host's ingress attachment (network id, address).
    host_ingress: Option<(String, Ipv4Net)>,
    ingress: Option<Ingress>,
    egress_ready: bool,
}

/// The node's dataplane. Cheap to share (`Arc`).
pub struct Dataplane {
    cfg: NetworkConfig,
    records: Arc<Records>,
    inner: Mutex<Inner>,
    rt: tokio::runtime::Handle,
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> NetError {
    let path = path.to_path_buf();
    move |source| NetError::Io { what, path, source }
}

fn parse_net(network: &str, addr: &str) -> Result<Ipv4Net, NetError> {
    addr.parse::<Ipv4Net>().map_err(|e| NetError::BadAddress {
        network: network.into(),
        addr: addr.into(),
        reason: e.to_string(),
    })
}

fn parse_ip(network: &str, addr: &str) -> Result<Ipv4Addr, NetError> {
    // Endpoints carry plain addresses; VIPs and attachments carry CIDRs: accept both.
    let plain = addr.split('/').next().unwrap_or(addr);
    plain.parse::<Ipv4Addr>().map_err(|e| NetError::BadAddress {
        network: network.into(),
        addr: addr.into(),
        reason: e.to_string(),
    })
}

fn protocol(p: PortProtocol) -> Protocol {
    match p {
        PortProtocol::Tcp => Protocol::Tcp,
        PortProtocol::Udp => Protocol::Udp,
    }
}

/// The task's hostname, as the runtime spec sets it.
fn hostname(task: &Task) -> String {
    let c = &task.spec.container;
    if c.hostname.is_empty() {
        task.id.chars().take(12).collect()
    } else {
        c.hostname.clone()
    }
}

/// `/etc/hosts`: localhost and the task's own addresses under its hostname.
pub fn hosts_file(hostname: &str, ips: &[Ipv4Addr]) -> String {
    let mut s = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for ip in ips {
        s.push_str(&format!("{ip}\t{hostname}\n"));
    }
    s
}

/// `/etc/resolv.conf`: the embedded DNS server; `ndots:0` so single-label service names are asked as they are.
pub const RESOLV_CONF: &str = "nameserver 127.0.0.11\noptions ndots:0\n";

/// Whether the IPv4 address is one of the namespace's own (a socket can bind it).
fn is_local(ns: Option<&Path>, ip: Ipv4Addr) -> bool {
    netns::run_in(ns, || std::net::UdpSocket::bind((ip, 0)).is_ok()).unwrap_or(false)
}

impl Dataplane {
    /// The dataplane of `cfg`; loads the records of the tasks wired before a restart. Must be called within a
    /// tokio runtime (its DNS servers are served there).
    pub fn new(cfg: NetworkConfig) -> Arc<Self> {
        let mut inner = Inner::default();
        for record in load_records(&cfg.state_dir) {
            let balancer = Balancer::new(netns::path(&record.netns));
            inner.tasks.insert(record.task_id.clone(), LocalTask { record, dns: None, balancer, attached: false });
        }
        Arc::new(Dataplane {
            cfg,
            records: Records::new(),
            inner: Mutex::new(inner),
            rt: tokio::runtime::Handle::current(),
        })
    }

    pub fn config(&self) -> &NetworkConfig {
        &self.cfg
    }

    /// The namespace name of a task's container.
    pub fn task_netns(&self, task_id: &str) -> String {
        format!("{}t-{task_id}", self.cfg.host.prefix)
    }

    fn record_path(&self, task_id: &str) -> PathBuf {
        self.cfg.state_dir.join("tasks").join(format!("{task_id}.json"))
    }

    /// Removes what a previous run of this daemon left on the host (sandboxes, egress bridge and veths, host
    /// tables) and the namespaces of tasks it has no record of. Namespaces of recorded tasks stay: their
    /// containers may still run, and the next state re-attaches them. For start-up after a crash.
    pub async fn cleanup_stale(self: &Arc<Self>) -> Result<usize, NetError> {
        let me = self.clone();
        blocking(move || {
            let mut n = usize::from(me.delete_host_ingress()?);
            n += netmesh::cleanup_all(&me.cfg.host).map_err(|e| NetError::Io {
                what: "cleaning up",
                path: me.cfg.state_dir.clone(),
                source: std::io::Error::other(e.to_string()),
            })?;
            let known: BTreeSet<String> =
                me.inner.lock().expect("dataplane lock").tasks.values().map(|t| t.record.netns.clone()).collect();
            for name in netns::list(&format!("{}t-", me.cfg.host.prefix)) {
                if !known.contains(&name) {
                    netns::delete(&name)?;
                    n += 1;
                }
            }
            let mut inner = me.inner.lock().expect("dataplane lock");
            inner.ready.clear();
            inner.remotes.clear();
            inner.host_ingress = None;
            inner.egress_ready = false;
            for t in inner.tasks.values_mut() {
                t.attached = false;
            }
            Ok(n)
        })
        .await
    }

    /// Removes everything of this data root's prefix from the kernel, the namespaces of recorded tasks too, and
    /// forgets the task records, touching no container: `shoald --cleanup` after a daemon died (a dead
    /// daemon's records may name sandboxes already gone, so nothing is detached one by one).
    pub async fn sweep(self: &Arc<Self>) -> Result<usize, NetError> {
        self.inner.lock().expect("dataplane lock").tasks.clear();
        let n = self.cleanup_stale().await?;
        let dir = self.cfg.state_dir.join("tasks");
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("removing", &dir)(e)),
            _ => Ok(n),
        }
    }

    /// Removes everything of this daemon: every task's wiring (their containers are gone or lose their
    /// network), sandboxes, devices, host tables. For shutdown and `swarm leave`.
    pub async fn cleanup_all(self: &Arc<Self>) -> Result<usize, NetError> {
        let ids: Vec<String> = self.inner.lock().expect("dataplane lock").tasks.keys().cloned().collect();
        for id in &ids {
            self.remove_task(id).await?;
        }
        let me = self.clone();
        blocking(move || {
            let mut n = ids.len() + usize::from(me.delete_host_ingress()?);
            n += netmesh::cleanup_all(&me.cfg.host).map_err(|e| NetError::Io {
                what: "cleaning up",
                path: me.cfg.state_dir.clone(),
                source: std::io::Error::other(e.to_string()),
            })?;
            for name in netns::list(&format!("{}t-", me.cfg.host.prefix)) {
                netns::delete(&name)?;
                n += 1;
            }
            let mut inner = me.inner.lock().expect("dataplane lock");
            let tasks = std::mem::take(&mut inner.tasks);
            *inner = Inner { tasks, ..Inner::default() };
            for (net, _) in std::mem::take(&mut inner.names) {
                me.records.remove_network(&net);
            }
            Ok(n)
        })
        .await
    }

    /// Keeps `state` as the last one and applies it.
    pub async fn apply(self: &Arc<Self>, state: NetworkState) -> Result<(), NetError> {
        let me = self.clone();
        blocking(move || {
            let mut inner = me.inner.lock().expect("dataplane lock");
            inner.state = Some(state);
            me.apply_locked(&mut inner, false)
        })
        .await
    }

    /// Applies the last state again, forcing every rule and entry (the periodic repair).
    pub async fn reconcile(self: &Arc<Self>) -> Result<(), NetError> {
        let me = self.clone();
        blocking(move || {
            let mut inner = me.inner.lock().expect("dataplane lock");
            if inner.state.is_none() {
                return Ok(());
            }
            me.apply_locked(&mut inner, true)
        })
        .await
    }

    /// Runs [`Self::reconcile`] every `period` until `shutdown`.
    pub fn spawn_reconcile(self: &Arc<Self>, period: Duration, shutdown: tokio_util::sync::CancellationToken) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                if let Err(e) = me.reconcile().await {
                    warn!(error = %e, "network reconcile");
                }
            }
        });
    }

    /// Wires `task` (idempotent): `None` for a task without networks or host ports (loopback only).
    pub async fn prepare_task(
        self: &Arc<Self>,
        task: &Task,
        task_dir: PathBuf,
    ) -> Result<Option<TaskWiring>, NetError> {
        let host_ports: Vec<(PortProtocol, u16, u16)> = task
            .endpoint
            .iter()
            .flat_map(|e| &e.ports)
            .filter(|p| p.publish_mode == PublishMode::Host && p.published_port != 0)
            .map(|p| (p.protocol, p.published_port, p.target_port))
            .collect();
        if task.networks.is_empty() && host_ports.is_empty() {
            return Ok(None);
        }
        let me = self.clone();
        let task = task.clone();
        blocking(move || me.prepare_blocking(&task, &task_dir, host_ports)).await.map(Some)
    }

    fn prepare_blocking(
        &self,
        task: &Task,
        task_dir: &Path,
        host_ports: Vec<(PortProtocol, u16, u16)>,
    ) -> Result<TaskWiring, NetError> {
        let mut inner = self.inner.lock().expect("dataplane lock");
        let mut interfaces = Vec::new();
        for (i, a) in task.networks.iter().enumerate() {
            let net = inner.nets.get(&a.network_id).ok_or_else(|| NetError::UnknownNetwork(a.network_id.clone()))?;
            let addr = a.addresses.first().ok_or_else(|| NetError::BadAddress {
                network: a.network_id.clone(),
                addr: String::new(),
                reason: "the task has no address on it".into(),
            })?;
            let addr = parse_net(&net.id, addr)?;
            interfaces.push(Iface { network_id: net.id.clone(), ifname: format!("eth{i}"), addr });
        }
        let all_internal = !task.networks.is_empty()
            && task.networks.iter().all(|a| inner.nets.get(&a.network_id).is_some_and(|n| n.internal));
        let egress = if all_internal && host_ports.is_empty() {
            None
        } else {
            match inner.tasks.get(&task.id).and_then(|t| t.record.egress) {
                Some(ip) => Some(ip),
                None => Some(self.next_egress(&inner)?),
            }
        };
        let record = TaskRecord {
            format: TASK_RECORD_FORMAT,
            task_id: task.id.clone(),
            service_id: task.service_id.clone(),
            netns: self.task_netns(&task.id),
            interfaces,
            egress,
            host_ports,
        };
        // Recorded first: a crash from here on leaves something a restart can find and remove.
        write_record(&self.record_path(&task.id), &record)?;
        let ns_path = netns::path(&record.netns);
        if !inner.tasks.contains_key(&task.id) {
            inner.tasks.insert(
                task.id.clone(),
                LocalTask {
                    record: record.clone(),
                    dns: None,
                    balancer: Balancer::new(ns_path.clone()),
                    attached: false,
                },
            );
        }
        let local = inner.tasks.get_mut(&task.id).expect("inserted");
        local.record = record.clone();
        local.attached = false;
        self.wire(&mut inner, &task.id)?;

        // The files the container sees, kept in its task directory (removed with it).
        std::fs::create_dir_all(task_dir).map_err(io("creating", task_dir))?;
        let name = hostname(task);
        let ips: Vec<Ipv4Addr> = record.interfaces.iter().map(|i| i.addr.addr()).chain(record.egress).collect();
        let files = [
            ("/etc/resolv.conf", "resolv.conf", RESOLV_CONF.to_string()),
            ("/etc/hosts", "hosts", hosts_file(&name, &ips)),
            ("/etc/hostname", "hostname", format!("{name}\n")),
        ];
        let mut out = Vec::new();
        for (target, file, text) in files {
            let p = task_dir.join(file);
            std::fs::write(&p, text).map_err(io("writing", &p))?;
            out.push((target.to_string(), p));
        }
        // The node's published host ports may have changed.
        self.apply_host_ports(&mut inner, false)?;
        info!(task.id = %task.id, netns = %record.netns, "task network ready");
        Ok(TaskWiring { netns: ns_path, files: out })
    }

    /// The first free egress address.
    fn next_egress(&self, inner: &Inner) -> Result<Ipv4Addr, NetError> {
        let used: BTreeSet<Ipv4Addr> = inner.tasks.values().filter_map(|t| t.record.egress).collect();
        let gw = self.cfg.egress.addr();
        self.cfg.egress.hosts().find(|ip| *ip != gw && !used.contains(ip)).ok_or(NetError::EgressFull(self.cfg.egress))
    }

    /// Makes a recorded task's namespace, veths, DNS server and balancer (again).
    fn wire(&self, inner: &mut Inner, task_id: &str) -> Result<(), NetError> {
        let record = inner.tasks[task_id].record.clone();
        let ns_path = netns::path(&record.netns);
        netns::create(&record.netns)?;
        for iface in &record.interfaces {
            self.ensure_net(inner, &iface.network_id, false)?;
            overlay::attach(
                &self.cfg.host,
                &iface.network_id,
                &Attachment {
                    netns: ns_path.clone(),
                    ip: iface.addr.addr(),
                    prefix_len: iface.addr.prefix_len(),
                    default_route: None,
                    ifname: iface.ifname.clone(),
                },
            )?;
        }
        if let Some(ip) = record.egress {
            if !inner.egress_ready {
                egress::ensure(&self.cfg.host, self.cfg.egress.addr(), self.cfg.egress.prefix_len())?;
                inner.egress_ready = true;
            }
            let ifname = format!("eth{}", record.interfaces.len());
            egress::attach(
                &self.cfg.host,
                &ns_path,
                &ifname,
                ip,
                self.cfg.egress.prefix_len(),
                self.cfg.egress.addr(),
            )?;
        }
        let networks: Vec<String> = record.interfaces.iter().map(|i| i.network_id.clone()).collect();
        let local = inner.tasks.get_mut(task_id).expect("recorded");
        match &local.dns {
            Some(dns) => dns.set_networks(networks),
            None => {
                // A server of an earlier run (or dataplane) may still be closing its socket: retry briefly.
                let mut tries = 0;
                let dns = loop {
                    let start = DnsServer::start(&ns_path, self.records.clone(), networks.clone(), &self.cfg.upstream);
                    match self.rt.block_on(start) {
                        Err(netmesh::dns::DnsError::Socket { source, .. })
                            if source.kind() == std::io::ErrorKind::AddrInUse && tries < 20 =>
                        {
                            tries += 1;
                            std::thread::sleep(Duration::from_millis(100));
                        }
                        r => break r?,
                    }
                };
                local.dns = Some(dns);
            }
        }
        local.attached = true;
        let vips = vips_for(inner, &record);
        let local = inner.tasks.get_mut(task_id).expect("recorded");
        local.balancer.set(vips)?;
        Ok(())
    }

    /// Tears a task's wiring down: DNS server, veths, namespace, record. A task never wired is not an error.
    pub async fn remove_task(self: &Arc<Self>, task_id: &str) -> Result<(), NetError> {
        let me = self.clone();
        let id = task_id.to_string();
        blocking(move || {
            let mut inner = me.inner.lock().expect("dataplane lock");
            let Some(local) = inner.tasks.remove(&id) else {
                // No record, but maybe a namespace of a crashed prepare.
                return Ok(netns::delete(&me.task_netns(&id))?);
            };
            drop(local.dns);
            for iface in &local.record.interfaces {
                overlay::detach(&me.cfg.host, &iface.network_id, iface.addr.addr())?;
            }
            if let Some(ip) = local.record.egress {
                egress::detach(&me.cfg.host, ip)?;
            }
            netns::delete(&local.record.netns)?;
            let p = me.record_path(&id);
            match std::fs::remove_file(&p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io("removing", &p)(e)),
                _ => {}
            }
            if !local.record.host_ports.is_empty() {
                me.apply_host_ports(&mut inner, false)?;
            }
            info!(task.id = %id, "task network removed");
            Ok(())
        })
        .await
    }

    /// The records table the DNS servers answer from (for tests and benchmarks).
    pub fn records(&self) -> &Arc<Records> {
        &self.records
    }

    fn ensure_net(&self, inner: &mut Inner, id: &str, force: bool) -> Result<(), NetError> {
        let net = inner.nets.get(id).cloned().ok_or_else(|| NetError::UnknownNetwork(id.into()))?;
        if !force && inner.ready.get(id) == Some(&net.vni) {
            return Ok(());
        }
        let local = self.underlay(inner)?;
        overlay::ensure_network(
            &self.cfg.host,
            &overlay::Network {
                id: net.id.clone(),
                vni: net.vni,
                local,
                gateway: Some((net.gateway, net.subnet.prefix_len())),
            },
        )?;
        inner.ready.insert(id.into(), net.vni);
        Ok(())
    }

    /// This node's VXLAN source address.
    fn underlay(&self, inner: &mut Inner) -> Result<Ipv4Addr, NetError> {
        if let Some(ip) = self.cfg.underlay.or(inner.underlay) {
            return Ok(ip);
        }
        let ns = self.cfg.host.netns.as_deref();
        let from_state = inner.state.iter().flat_map(|s| &s.endpoints).filter_map(|e| e.node_addr.parse().ok());
        let found = from_state.collect::<BTreeSet<Ipv4Addr>>().into_iter().find(|ip| is_local(ns, *ip));
        let found = found.or_else(|| match crate::host::default_route_ip() {
            Some(std::net::IpAddr::V4(ip)) if ns.is_none() => Some(ip),
            _ => None,
        });
        match found {
            Some(ip) => {
                debug!(underlay = %ip, "vxlan source address");
                inner.underlay = Some(ip);
                Ok(ip)
            }
            // Nothing to go by yet (no endpoint, no default route): a later state will tell; not kept.
            None => Ok(Ipv4Addr::LOCALHOST),
        }
    }

    fn apply_locked(&self, inner: &mut Inner, force: bool) -> Result<(), NetError> {
        let state = inner.state.clone().unwrap_or_default();
        let mut first_err: Option<NetError> = None;
        let mut note = |what: &str, r: Result<(), NetError>| {
            if let Err(e) = r {
                warn!(error = %e, "{what}");
                first_err.get_or_insert(e);
            }
        };

        // Networks: parse, make sandboxes, drop the ones gone.
        let mut nets = BTreeMap::new();
        for n in &state.networks {
            match (parse_net(&n.id, &n.subnet), parse_ip(&n.id, &n.gateway)) {
                (Ok(subnet), Ok(gateway)) => {
                    nets.insert(
                        n.id.clone(),
                        Net {
                            id: n.id.clone(),
                            vni: n.vni,
                            subnet,
                            gateway,
                            internal: n.spec.internal,
                            ingress: n.spec.ingress,
                        },
                    );
                }
                (Err(e), _) | (_, Err(e)) => note("network in the state", Err(e)),
            }
        }
        inner.nets = nets.clone();
        for id in nets.keys() {
            let r = self.ensure_net(inner, id, force);
            note("overlay network", r);
        }
        let in_use: BTreeSet<String> =
            inner.tasks.values().flat_map(|t| t.record.interfaces.iter().map(|i| i.network_id.clone())).collect();
        let gone: Vec<String> =
            inner.ready.keys().filter(|id| !nets.contains_key(*id) && !in_use.contains(*id)).cloned().collect();
        for id in gone {
            note("removing a network", overlay::remove_network(&self.cfg.host, &id).map_err(Into::into));
            inner.ready.remove(&id);
            inner.remotes.remove(&id);
            if inner.host_ingress.as_ref().is_some_and(|(n, _)| *n == id) {
                inner.host_ingress = None;
            }
        }

        // Remote endpoints: neighbour + FDB for every endpoint on another node (tasks, and other nodes' own
        // ingress addresses, to which tasks here answer masqueraded routing-mesh traffic).
        let underlay = self.underlay(inner)?;
        let mut want: BTreeMap<String, Vec<RemoteEndpoint>> = BTreeMap::new();
        for e in &state.endpoints {
            let (Ok(ip), Ok(host)) = (parse_ip(&e.network_id, &e.ip), e.node_addr.parse::<Ipv4Addr>()) else {
                continue;
            };
            if host == underlay || !inner.ready.contains_key(&e.network_id) {
                continue;
            }
            want.entry(e.network_id.clone()).or_default().push(RemoteEndpoint { ip, mac: mac_for_ip(ip), host });
        }
        for id in inner.ready.keys().cloned().collect::<Vec<_>>() {
            let mut w = want.remove(&id).unwrap_or_default();
            w.sort_by_key(|e| e.ip);
            w.dedup_by_key(|e| e.ip);
            if force || inner.remotes.get(&id) != Some(&w) {
                match overlay::reconcile_remotes(&self.cfg.host, &id, &w) {
                    Ok(_) => {
                        inner.remotes.insert(id, w);
                    }
                    Err(e) => note("remote endpoints", Err(e.into())),
                }
            }
        }

        // DNS: per network, each service's name and aliases, and tasks.<name>.
        let names = dns_names(&state, &nets);
        for (net, want) in &names {
            let have = inner.names.get(net);
            for (name, ips) in want {
                if have.and_then(|h| h.get(name)) != Some(ips) {
                    self.records.set(net, name, ips.clone());
                }
            }
            for name in have.iter().flat_map(|h| h.keys()).filter(|n| !want.contains_key(*n)) {
                self.records.set(net, name, Vec::new());
            }
        }
        for net in inner.names.keys().filter(|n| !names.contains_key(*n)) {
            self.records.remove_network(net);
        }
        inner.names = names;

        // Local tasks: re-attach those found after a restart, then their VIP balancers.
        let ids: Vec<String> = inner.tasks.keys().cloned().collect();
        for id in &ids {
            let t = &inner.tasks[id];
            if !t.attached {
                if !netns::exists(&t.record.netns) {
                    // Recorded, but its namespace went (host reboot): it is torn down when the task is removed.
                    continue;
                }
                let r = self.wire(inner, id);
                note("re-attaching a task", r);
                continue;
            }
            let vips = vips_for(inner, &inner.tasks[id].record);
            let local = inner.tasks.get_mut(id).expect("listed");
            if force || *local.balancer.vips() != vips {
                note("vip balancer", local.balancer.set(vips).map_err(Into::into));
            }
        }

        // Host: the ingress attachment and the published ports.
        let r = self.apply_host_ingress(inner, &state, force);
        note("host ingress attachment", r);
        let r = self.apply_host_ports(inner, force);
        note("published ports", r);
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Attaches the host to the ingress sandbox with the node's own ingress address.
    fn apply_host_ingress(&self, inner: &mut Inner, state: &NetworkState, force: bool) -> Result<(), NetError> {
        let Some(net) = inner.nets.values().find(|n| n.ingress).cloned() else { return Ok(()) };
        let Some(addr) =
            state.node_attachments.iter().find(|a| a.network_id == net.id).and_then(|a| a.addresses.first())
        else {
            return Ok(());
        };
        let addr = parse_net(&net.id, addr)?;
        let want = (net.id.clone(), addr);
        if !force && inner.host_ingress.as_ref() == Some(&want) {
            return Ok(());
        }
        if force && inner.host_ingress.as_ref() == Some(&want) && self.host_ingress_present(&want) {
            return Ok(());
        }
        self.ensure_net(inner, &net.id, false)?;
        let host_ns = self.cfg.host.netns.clone().unwrap_or_else(|| PathBuf::from("/proc/self/ns/net"));
        overlay::attach(
            &self.cfg.host,
            &net.id,
            &Attachment {
                netns: host_ns,
                ip: addr.addr(),
                prefix_len: addr.prefix_len(),
                default_route: None,
                ifname: self.host_ingress_ifname(),
            },
        )?;
        info!(network.id = %net.id, address = %addr, "host attached to the ingress network");
        inner.host_ingress = Some(want);
        Ok(())
    }

    /// Deletes the host's end of the ingress attachment now (it would go with the ingress sandbox, but the
    /// kernel frees a deleted namespace's devices asynchronously). Returns whether there was one.
    fn delete_host_ingress(&self) -> Result<bool, NetError> {
        let name = self.host_ingress_ifname();
        let n = name.as_str();
        let r = netns::with_netlink(self.cfg.host.netns.as_deref(), |h| async move {
            match netns::link_index(&h, n).await? {
                Some(i) => h.link().del(i).execute().await.map(|_| true),
                None => Ok(false),
            }
        })?;
        r.map_err(|e| NetError::Io {
            what: "deleting the host's ingress interface",
            path: PathBuf::from(name.clone()),
            source: std::io::Error::other(e.to_string()),
        })
    }

    fn host_ingress_ifname(&self) -> String {
        format!("{}ing0", self.cfg.host.prefix.chars().take(9).collect::<String>())
    }

    fn host_ingress_present(&self, want: &(String, Ipv4Net)) -> bool {
        let name = self.host_ingress_ifname();
        let n = name.as_str();
        netns::with_netlink(self.cfg.host.netns.as_deref(), |h| async move { netns::link_index(&h, n).await })
            .ok()
            .and_then(|r| r.ok())
            .flatten()
            .is_some()
            && is_local(self.cfg.host.netns.as_deref(), want.1.addr())
    }

    /// The host's published-port table: ingress ports of every service (to its serving tasks on any node) and
    /// `mode=host` ports of local tasks.
    fn apply_host_ports(&self, inner: &mut Inner, force: bool) -> Result<(), NetError> {
        let state = inner.state.clone().unwrap_or_default();
        let ingress_net = inner.nets.values().find(|n| n.ingress).map(|n| n.id.clone());
        let local: HashMap<&str, Ipv4Addr> = inner
            .tasks
            .values()
            .filter(|t| t.attached)
            .filter_map(|t| Some((t.record.task_id.as_str(), t.record.egress?)))
            .collect();
        let mut ports = mesh_ports(&state, ingress_net.as_deref(), &local);
        let mut tasks: Vec<&LocalTask> = inner.tasks.values().filter(|t| t.attached).collect();
        tasks.sort_by(|a, b| a.record.task_id.cmp(&b.record.task_id));
        for t in tasks {
            let Some(ip) = t.record.egress else { continue };
            for (proto, published, target) in &t.record.host_ports {
                let taken = ports.iter().any(|p| p.protocol == protocol(*proto) && p.published == *published);
                if taken {
                    warn!(task.id = %t.record.task_id, port = published, "host port already published on this node");
                    continue;
                }
                ports.push(PublishedPort {
                    protocol: protocol(*proto),
                    published: *published,
                    target: *target,
                    backends: vec![ip],
                    masquerade: false,
                    standby: vec![],
                });
            }
        }
        ports.sort_by_key(|p| (p.protocol, p.published));
        let ingress = inner.ingress.get_or_insert_with(|| Ingress::new(self.cfg.host.netns.clone()));
        if ports.is_empty() && ingress.ports().is_empty() && !force {
            return Ok(());
        }
        if force || ingress.ports() != ports.as_slice() {
            ingress.set(ports)?;
        }
        Ok(())
    }
}

/// The routing mesh's ports in `state`: each ingress-published port to its service's serving tasks on the
/// ingress network `ingress_net` (any node), masqueraded. With `client-ip=preserve`, to this node's own serving
/// tasks instead when it has any (`local`: task id → egress address of the tasks wired here), unmasqueraded: on
/// their egress address (as `mode=host`) their default route brings replies back through this host. The other
/// tasks stand by, so connections already forwarded to them are kept.
fn mesh_ports(state: &NetworkState, ingress_net: Option<&str>, local: &HashMap<&str, Ipv4Addr>) -> Vec<PublishedPort> {
    let mut ports = Vec::new();
    for s in &state.services {
        for p in s.ports.iter().filter(|p| p.publish_mode == PublishMode::Ingress && p.published_port != 0) {
            let serving = || state.endpoints.iter().filter(|e| e.serving && e.service_id == s.service_id);
            let mut mesh: Vec<Ipv4Addr> = serving()
                .filter(|e| Some(e.network_id.as_str()) == ingress_net)
                .filter_map(|e| parse_ip(&e.network_id, &e.ip).ok())
                .collect();
            mesh.sort();
            mesh.dedup();
            let mut here: Vec<Ipv4Addr> = if p.preserve_client_ip {
                serving().filter_map(|e| local.get(e.task_id.as_str()).copied()).collect()
            } else {
                Vec::new()
            };
            here.sort();
            here.dedup();
            let masquerade = here.is_empty();
            let (backends, standby) = if masquerade { (mesh, Vec::new()) } else { (here, mesh) };
            ports.push(PublishedPort {
                protocol: protocol(p.protocol),
                published: p.published_port,
                target: p.target_port,
                backends,
                masquerade,
                standby,
            });
        }
    }
    ports
}

/// A local task's VIPs: every VIP on one of its networks → the serving backends on that network.
fn vips_for(inner: &Inner, record: &TaskRecord) -> BTreeMap<Ipv4Addr, Vec<Ipv4Addr>> {
    let Some(state) = &inner.state else { return BTreeMap::new() };
    let nets: BTreeSet<&str> = record.interfaces.iter().map(|i| i.network_id.as_str()).collect();
    let mut out = BTreeMap::new();
    for s in state.services.iter().filter(|s| s.mode == EndpointMode::Vip) {
        for v in s.virtual_ips.iter().filter(|v| nets.contains(v.network_id.as_str())) {
            let Ok(vip) = parse_ip(&v.network_id, &v.addr) else { continue };
            let mut backends: Vec<Ipv4Addr> = state
                .endpoints
                .iter()
                .filter(|e| e.serving && e.service_id == s.service_id && e.network_id == v.network_id)
                .filter_map(|e| parse_ip(&e.network_id, &e.ip).ok())
                .collect();
            backends.sort();
            backends.dedup();
            out.insert(vip, backends);
        }
    }
    out
}

/// The DNS names of every network: `<service>` and its aliases → the VIP (or, for dnsrr, the serving task IPs),
/// `tasks.<service>` / `tasks.<alias>` → the serving task IPs.
fn dns_names(state: &NetworkState, nets: &BTreeMap<String, Net>) -> BTreeMap<String, BTreeMap<String, Vec<Ipv4Addr>>> {
    let mut out: BTreeMap<String, BTreeMap<String, Vec<Ipv4Addr>>> = BTreeMap::new();
    for net in nets.keys() {
        let names = out.entry(net.clone()).or_default();
        for s in &state.services {
            let eps: Vec<_> =
                state.endpoints.iter().filter(|e| e.service_id == s.service_id && e.network_id == *net).collect();
            let vip = match s.mode {
                EndpointMode::Vip => {
                    s.virtual_ips.iter().find(|v| v.network_id == *net).and_then(|v| parse_ip(net, &v.addr).ok())
                }
                EndpointMode::Dnsrr => None,
            };
            if eps.is_empty() && vip.is_none() {
                continue;
            }
            let mut tasks: Vec<Ipv4Addr> =
                eps.iter().filter(|e| e.serving).filter_map(|e| parse_ip(net, &e.ip).ok()).collect();
            tasks.sort();
            tasks.dedup();
            let main = vip.map(|v| vec![v]).unwrap_or_else(|| tasks.clone());
            let aliases: BTreeSet<&str> = eps.iter().flat_map(|e| e.aliases.iter().map(String::as_str)).collect();
            for n in std::iter::once(s.name.as_str()).chain(aliases) {
                let n = n.to_ascii_lowercase();
                // Merged, not replaced: an alias shared by several services names all of their tasks.
                let mut add = |name: String, ips: &[Ipv4Addr]| {
                    if ips.is_empty() {
                        return;
                    }
                    let e = names.entry(name).or_default();
                    e.extend_from_slice(ips);
                    e.sort();
                    e.dedup();
                };
                add(n.clone(), &main);
                add(format!("tasks.{n}"), &tasks);
            }
        }
    }
    out
}

fn write_record(path: &Path, record: &TaskRecord) -> Result<(), NetError> {
    let dir = path.parent().expect("records live in a directory");
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let json = serde_json::to_vec_pretty(record).expect("records serialize");
    swarm::fsutil::write_atomic(path, &json, 0o600).map_err(io("writing", path))
}

fn load_records(state_dir: &Path) -> Vec<TaskRecord> {
    let dir = state_dir.join("tasks");
    let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
    let mut out = Vec::new();
    for e in entries.filter_map(|e| e.ok()) {
        let p = e.path();
        match std::fs::read(&p)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<TaskRecord>(&b).map_err(|e| e.to_string()))
        {
            Ok(r) if r.format == TASK_RECORD_FORMAT => out.push(r),
            Ok(r) => warn!(path = %p.display(), format = r.format, "task network record of an unknown format"),
            Err(e) => warn!(path = %p.display(), error = %e, "unreadable task network record"),
        }
    }
    out
}

/// Runs kernel work on the blocking pool.
async fn blocking<R: Send + 'static>(f: impl FnOnce() -> Result<R, NetError> + Send + 'static) -> Result<R, NetError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(NetError::Io {
            what: "dataplane worker",
            path: PathBuf::new(),
            source: std::io::Error::other(e.to_string()),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarm::api::{Network, NetworkEndpoint, NetworkSpec, ServiceEndpoint, VirtualIp};

    fn net(id: &str, subnet: &str) -> Network {
        Network {
            id: id.into(),
            meta: Default::default(),
            spec: NetworkSpec::default(),
            vni: 4097,
            subnet: subnet.into(),
            gateway: subnet.replace(".0/24", ".1"),
        }
    }

    fn ep(svc: &str, ip: &str, serving: bool) -> NetworkEndpoint {
        NetworkEndpoint {
            network_id: "n1".into(),
            task_id: format!("t{ip}"),
            service_id: svc.into(),
            node_id: "node".into(),
            node_addr: "192.168.1.1".into(),
            ip: ip.into(),
            aliases: vec!["db".into()],
            serving,
        }
    }

    #[test]
    fn names_point_at_the_vip_or_the_serving_tasks() {
        let state = NetworkState {
            networks: vec![net("n1", "10.0.1.0/24")],
            endpoints: vec![ep("s1", "10.0.1.3", true), ep("s1", "10.0.1.4", false), ep("s2", "10.0.1.5", true)],
            services: vec![
                ServiceEndpoint {
                    service_id: "s1".into(),
                    name: "Web".into(),
                    mode: EndpointMode::Vip,
                    virtual_ips: vec![VirtualIp { network_id: "n1".into(), addr: "10.0.1.2/24".into() }],
                    ports: vec![],
                },
                ServiceEndpoint {
                    service_id: "s2".into(),
                    name: "rr".into(),
                    mode: EndpointMode::Dnsrr,
                    virtual_ips: vec![],
                    ports: vec![],
                },
            ],
            node_attachments: vec![],
        };
        let nets: BTreeMap<String, Net> = [(
            "n1".to_string(),
            Net {
                id: "n1".into(),
                vni: 4097,
                subnet: "10.0.1.0/24".parse().unwrap(),
                gateway: "10.0.1.1".parse().unwrap(),
                internal: false,
                ingress: false,
            },
        )]
        .into();
        // Another node's own ingress address comes as an endpoint of no task: programmed as a remote endpoint
        // (replies to masqueraded mesh traffic go to it), never a name or a backend.
        let mut node_ep = ep("", "10.0.1.9", false);
        node_ep.aliases.clear();
        let mut state = state;
        state.endpoints.push(node_ep);
        let names = &dns_names(&state, &nets)["n1"];
        assert!(names.values().all(|ips| !ips.contains(&"10.0.1.9".parse().unwrap())), "{names:?}");
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(names["web"], vec![ip("10.0.1.2")], "the VIP, without its prefix length");
        assert_eq!(names["tasks.web"], vec![ip("10.0.1.3")], "only serving tasks");
        assert_eq!(names["rr"], vec![ip("10.0.1.5")], "dnsrr: the task IPs");
        // Both services' endpoints carry alias "db": it resolves to both (as Docker's alias on two services).
        assert_eq!(names["tasks.db"], vec![ip("10.0.1.3"), ip("10.0.1.5")]);
        let mut inner = Inner { state: Some(state), ..Inner::default() };
        inner.nets = nets;
        let record = TaskRecord {
            format: 1,
            task_id: "x".into(),
            service_id: "s2".into(),
            netns: "x".into(),
            interfaces: vec![Iface {
                network_id: "n1".into(),
                ifname: "eth0".into(),
                addr: "10.0.1.5/24".parse().unwrap(),
            }],
            egress: None,
            host_ports: vec![],
        };
        assert_eq!(vips_for(&inner, &record), BTreeMap::from([(ip("10.0.1.2"), vec![ip("10.0.1.3")])]));
    }

    #[test]
    fn preserved_client_ip_ports_prefer_local_tasks_unmasqueraded() {
        use swarm::api::PortConfig;
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let mut state = NetworkState::default();
        for (task, addr) in [("here", "10.0.0.3"), ("there", "10.0.0.4")] {
            let mut e = ep("s1", addr, true);
            e.task_id = task.into();
            e.network_id = "ing".into();
            state.endpoints.push(e);
        }
        let port = |published: u16, preserve: bool| PortConfig {
            target_port: 80,
            published_port: published,
            preserve_client_ip: preserve,
            ..Default::default()
        };
        state.services.push(ServiceEndpoint {
            service_id: "s1".into(),
            name: "web".into(),
            mode: EndpointMode::Vip,
            virtual_ips: vec![],
            ports: vec![port(8080, false), port(8082, true)],
        });
        let local = HashMap::from([("here", ip("172.29.0.5"))]);
        let ports = mesh_ports(&state, Some("ing"), &local);
        assert_eq!(ports[0].backends, vec![ip("10.0.0.3"), ip("10.0.0.4")], "every task through the mesh");
        assert!(ports[0].masquerade && ports[0].standby.is_empty());
        assert_eq!(ports[1].backends, vec![ip("172.29.0.5")], "the local task on its egress address");
        assert!(!ports[1].masquerade, "the client's address kept");
        assert_eq!(ports[1].standby, vec![ip("10.0.0.3"), ip("10.0.0.4")], "open flows elsewhere kept");
        let ports = mesh_ports(&state, Some("ing"), &HashMap::new());
        assert_eq!(ports[1].backends, vec![ip("10.0.0.3"), ip("10.0.0.4")], "no local task: the whole mesh");
        assert!(ports[1].masquerade, "…masqueraded");
    }

    #[test]
    fn prefixes_are_short_stable_and_differ_by_data_root() {
        let a = prefix_for(Path::new("/var/lib/shoal"));
        assert_eq!(a, prefix_for(Path::new("/var/lib/shoal")));
        assert_ne!(a, prefix_for(Path::new("/var/lib/shoal2")));
        assert_eq!(a.len(), 7);
        assert!(a.starts_with('s') && a.ends_with('-'));
    }

    #[test]
    fn hosts_file_names_the_task_on_each_address() {
        let h = hosts_file("abc", &["10.0.1.3".parse().unwrap(), "172.29.0.2".parse().unwrap()]);
        assert!(h.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(h.ends_with("10.0.1.3\tabc\n172.29.0.2\tabc\n"), "{h}");
    }
}
