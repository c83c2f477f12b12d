//! Overlay networks: per network a sandbox namespace `<prefix>ov-<short id>` holding bridge `br0` and VXLAN
//! device `vxlan0` (VNI, UDP 4789, no learning, proxy ARP); containers attach by a veth whose inner end is
//! `eth0`; endpoints on other hosts are programmed as static neighbour (IP→MAC) and FDB (MAC→underlay IP)
//! entries on `vxlan0`. Applies the state it is given; addresses come from the manager's allocator.
//!
//! The VXLAN device is created in the host (underlay) namespace and then moved into the sandbox, so its UDP
//! socket stays on the underlay while its traffic enters the sandbox's bridge (the layout Docker uses).

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder};
use tracing::{debug, info};

use crate::netns::{self, is_errno, link_index, NetnsError};

/// The IANA VXLAN port, as Docker uses.
pub const VXLAN_PORT: u16 = 4789;
/// Bytes of VXLAN encapsulation (outer Ethernet + IP + UDP + VXLAN headers).
pub const VXLAN_OVERHEAD: u32 = 50;
/// Name of the bridge in a sandbox.
pub const BRIDGE: &str = "br0";
/// Name of the VXLAN device in a sandbox.
pub const VXLAN: &str = "vxlan0";

/// A failure applying overlay state.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// Creating, entering or deleting a namespace failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// A netlink operation on a device failed.
    #[error("overlay {network}: {op}: {source}")]
    Device { network: String, op: String, source: rtnetlink::Error },
    /// A device the sandbox should hold is missing (deleted behind our back, or the sandbox is half-made).
    #[error("overlay {network}: device {device} not found")]
    MissingDevice { network: String, device: String },
    /// No link in the host namespace carries the underlay address.
    #[error("overlay {network}: no interface has the underlay address {addr}")]
    NoUnderlay { network: String, addr: Ipv4Addr },
    /// The network's sandbox has not been created on this host.
    #[error("overlay {0}: network sandbox does not exist")]
    NoSandbox(String),
    /// A VNI outside 1..2^24.
    #[error("overlay {network}: invalid vni {vni}")]
    InvalidVni { network: String, vni: u32 },
}

/// Where this host's overlays live: the underlay namespace and the name prefix of everything created.
#[derive(Debug, Clone)]
pub struct Host {
    /// The namespace holding the underlay address (`None`: the process's own).
    pub netns: Option<PathBuf>,
    /// Prefix of every namespace and host device created, so a restart can find and delete them.
    pub prefix: String,
}

impl Default for Host {
    fn default() -> Self {
        Host { netns: None, prefix: "shoal-".into() }
    }
}

impl Host {
    /// The sandbox namespace name of network `id` (its first 12 characters, as Docker shortens ids).
    pub fn sandbox_name(&self, id: &str) -> String {
        format!("{}ov-{}", self.prefix, &id[..id.len().min(12)])
    }

    /// Prefix of a VXLAN device's temporary name in the host namespace (before it moves into its sandbox):
    /// 9 characters, so that with 6 hex digits of VNI it fits the kernel's 15.
    pub fn vxlan_prefix(&self) -> String {
        format!("{}vx", self.prefix).chars().take(9).collect()
    }

    fn sandbox_path(&self, id: &str) -> PathBuf {
        netns::path(&self.sandbox_name(id))
    }
}

/// An overlay network as this host applies it.
#[derive(Debug, Clone)]
pub struct Network {
    /// The network id.
    pub id: String,
    /// Its VXLAN network identifier.
    pub vni: u32,
    /// This host's underlay address (the VXLAN source).
    pub local: Ipv4Addr,
    /// The gateway address and prefix length put on the sandbox bridge, if any.
    pub gateway: Option<(Ipv4Addr, u8)>,
}

/// A container's attachment to a network.
#[derive(Debug, Clone)]
pub struct Attachment {
    /// The container's network namespace (e.g. `/proc/<pid>/ns/net` or `/run/netns/<name>`).
    pub netns: PathBuf,
    /// The task's address on the network.
    pub ip: Ipv4Addr,
    /// The network's prefix length.
    pub prefix_len: u8,
    /// Add a default route via this gateway.
    pub default_route: Option<Ipv4Addr>,
    /// The interface name in the container (`eth0`, `eth1`, … in the order of its networks).
    pub ifname: String,
}

/// An endpoint on another host, as programmed here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteEndpoint {
    /// The endpoint's overlay address.
    pub ip: Ipv4Addr,
    /// Its MAC (see [`mac_for_ip`]).
    pub mac: [u8; 6],
    /// The underlay address of the host it runs on.
    pub host: Ipv4Addr,
}

/// The MAC of the endpoint with overlay address `ip`: locally administered `02:42` + the address, as Docker
/// does, so every host derives it without asking.
pub fn mac_for_ip(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

fn sandbox_veth(ip: Ipv4Addr) -> String {
    format!("v{:08x}", u32::from(ip))
}

fn device_err(network: &str, op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> OverlayError {
    let (network, op) = (network.to_string(), op.into());
    move |source| OverlayError::Device { network, op, source }
}

async fn require(h: &Handle, network: &str, name: &str) -> Result<u32, OverlayError> {
    link_index(h, name).await.map_err(device_err(network, format!("look up {name}")))?.ok_or_else(|| {
        OverlayError::Device {
            network: network.to_string(),
            op: format!("look up {name}"),
            source: rtnetlink::Error::RequestFailed,
        }
    })
}

/// Finds the MTU of the link carrying `addr`.
async fn underlay_mtu(h: &Handle, network: &str, addr: Ipv4Addr) -> Result<u32, OverlayError> {
    let mut addrs = h.address().get().set_address_filter(IpAddr::V4(addr)).execute();
    let mut index = None;
    while let Some(m) = addrs.try_next().await.map_err(device_err(network, "list addresses"))? {
        if m.attributes.iter().any(|a| matches!(a, AddressAttribute::Address(IpAddr::V4(a)) | AddressAttribute::Local(IpAddr::V4(a)) if *a == addr)) {
            index = Some(m.header.index);
            break;
        }
    }
    let index = index.ok_or(OverlayError::NoUnderlay { network: network.to_string(), addr })?;
    let link = h
        .link()
        .get()
        .match_index(index)
        .execute()
        .try_next()
        .await
        .map_err(device_err(network, "get underlay link"))?;
    let mtu = link
        .and_then(|l| l.attributes.iter().find_map(|a| if let LinkAttribute::Mtu(m) = a { Some(*m) } else { None }));
    Ok(mtu.unwrap_or(1500))
}

/// Creates (or completes) the network's sandbox: namespace, `br0`, `vxlan0`, gateway address. Idempotent; a
/// network's VNI never changes (an existing `vxlan0` is kept as it is).
pub fn ensure_network(host: &Host, net: &Network) -> Result<(), OverlayError> {
    let id = net.id.as_str();
    if net.vni == 0 || net.vni >= 1 << 24 {
        return Err(OverlayError::InvalidVni { network: id.into(), vni: net.vni });
    }
    let sandbox = host.sandbox_path(id);
    netns::create(&host.sandbox_name(id))?;

    let mtu = netns::with_netlink(host.netns.as_deref(), |h| async move { underlay_mtu(&h, id, net.local).await })??
        .saturating_sub(VXLAN_OVERHEAD);

    netns::with_netlink(Some(&sandbox), |h| async move {
        if link_index(&h, BRIDGE).await.map_err(device_err(id, "look up br0"))?.is_none() {
            h.link()
                .add(LinkBridge::new(BRIDGE).mtu(mtu).build())
                .execute()
                .await
                .map_err(device_err(id, "create br0"))?;
        }
        let br = require(&h, id, BRIDGE).await?;
        h.link()
            .set(LinkUnspec::new_with_index(br).mtu(mtu).up().build())
            .execute()
            .await
            .map_err(device_err(id, "set br0 up"))?;
        if let Some((gw, len)) = net.gateway {
            h.address()
                .add(br, IpAddr::V4(gw), len)
                .replace()
                .execute()
                .await
                .map_err(device_err(id, "add gateway address to br0"))?;
        }
        Ok::<_, OverlayError>(())
    })??;

    // A host-unique temporary name: several networks' devices may be in flight at once.
    let tmp = format!("{}{:06x}", host.vxlan_prefix(), net.vni);
    let t = tmp.as_str();
    let have_vxlan = netns::with_netlink(Some(&sandbox), |h| async move {
        // A crash between moving and renaming leaves the temporary name here; it still holds the VNI.
        if let Some(stale) = link_index(&h, t).await.map_err(device_err(id, "look up vxlan"))? {
            h.link().del(stale).execute().await.map_err(device_err(id, "delete stale vxlan"))?;
        }
        link_index(&h, VXLAN).await.map(|i| i.is_some()).map_err(device_err(id, "look up vxlan0"))
    })??;
    if !have_vxlan {
        let fd = std::fs::File::open(&sandbox).map_err(|source| NetnsError::Sys {
            ns: host.sandbox_name(id),
            op: "open",
            source,
        })?;
        let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
        let tmp2 = tmp.clone();
        netns::with_netlink(host.netns.as_deref(), |h| async move {
            if let Some(stale) = link_index(&h, &tmp2).await.map_err(device_err(id, "look up vxlan"))? {
                h.link().del(stale).execute().await.map_err(device_err(id, "delete stale vxlan"))?;
            }
            h.link()
                .add(
                    LinkVxlan::new(&tmp2, net.vni)
                        .port(VXLAN_PORT)
                        .local(net.local)
                        .learning(false)
                        .proxy(true)
                        .mtu(mtu)
                        .build(),
                )
                .execute()
                .await
                .map_err(device_err(id, format!("create vxlan vni {}", net.vni)))?;
            let idx = require(&h, id, &tmp2).await?;
            h.link()
                .set(LinkUnspec::new_with_index(idx).setns_by_fd(raw).build())
                .execute()
                .await
                .map_err(device_err(id, "move vxlan into sandbox"))
        })??;
        drop(fd);
        netns::with_netlink(Some(&sandbox), |h| async move {
            let idx = require(&h, id, &tmp).await?;
            let br = require(&h, id, BRIDGE).await?;
            h.link()
                .set(LinkUnspec::new_with_index(idx).name(VXLAN.to_string()).controller(br).build())
                .execute()
                .await
                .map_err(device_err(id, "rename vxlan0 and attach to br0"))?;
            h.link()
                .set(LinkUnspec::new_with_index(idx).up().build())
                .execute()
                .await
                .map_err(device_err(id, "set vxlan0 up"))
        })??;
    }
    info!(network.id = id, vni = net.vni, mtu, "overlay network ready");
    Ok(())
}

/// Deletes the network's sandbox and with it every device inside (bridge, VXLAN, sandbox ends of veths).
pub fn remove_network(host: &Host, id: &str) -> Result<(), OverlayError> {
    netns::delete(&host.sandbox_name(id))?;
    info!(network.id = id, "overlay network removed");
    Ok(())
}

/// Attaches a container: a veth from the sandbox's bridge to `ifname` in the container namespace, with the
/// task's address, its derived MAC and the overlay MTU; a default route if asked. Replaces an earlier
/// attachment of the same address.
pub fn attach(host: &Host, network: &str, a: &Attachment) -> Result<(), OverlayError> {
    let sandbox = host.sandbox_path(network);
    if !sandbox.exists() {
        return Err(OverlayError::NoSandbox(network.into()));
    }
    attach_veth(&Veth {
        label: network,
        outer_ns: Some(&sandbox),
        bridge: BRIDGE,
        outer: sandbox_veth(a.ip),
        container: &a.netns,
        ifname: &a.ifname,
        ip: a.ip,
        prefix_len: a.prefix_len,
        default_route: a.default_route,
    })?;
    debug!(network.id = network, ip = %a.ip, ifname = %a.ifname, "container attached");
    Ok(())
}

/// A veth from a bridge to an interface of a container.
pub(crate) struct Veth<'a> {
    /// What errors name (the network).
    pub label: &'a str,
    /// The namespace of the bridge (`None`: the process's).
    pub outer_ns: Option<&'a Path>,
    /// The bridge the outer end joins; the veth takes its MTU.
    pub bridge: &'a str,
    /// The outer end's name (≤ 15 characters, unique in `outer_ns`).
    pub outer: String,
    /// The container's namespace.
    pub container: &'a Path,
    /// The inner end's name.
    pub ifname: &'a str,
    /// The inner end's address and prefix length.
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    /// A default route via this gateway.
    pub default_route: Option<Ipv4Addr>,
}

/// Creates the veth (replacing one of the same names), moves the inner end into the container, names it,
/// sets its MAC ([`mac_for_ip`]), MTU, address and route.
pub(crate) fn attach_veth(v: &Veth<'_>) -> Result<(), OverlayError> {
    let network = v.label;
    // The inner end's temporary name, unique in the bridge's namespace until it moves.
    let inner = format!("c{:08x}", u32::from(v.ip));
    let fd = std::fs::File::open(v.container).map_err(|source| NetnsError::Sys {
        ns: v.container.display().to_string(),
        op: "open",
        source,
    })?;
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    let (o, i, bridge) = (v.outer.as_str(), inner.as_str(), v.bridge);
    let mtu = netns::with_netlink(v.outer_ns, |h| async move {
        let br = require(&h, network, bridge).await?;
        let mtu = h
            .link()
            .get()
            .match_index(br)
            .execute()
            .try_next()
            .await
            .map_err(device_err(network, format!("get {bridge}")))?
            .and_then(|l| l.attributes.iter().find_map(|a| if let LinkAttribute::Mtu(m) = a { Some(*m) } else { None }))
            .unwrap_or(1500);
        for stale in [o, i] {
            if let Some(old) = link_index(&h, stale).await.map_err(device_err(network, "look up veth"))? {
                h.link().del(old).execute().await.map_err(device_err(network, format!("delete old veth {stale}")))?;
            }
        }
        h.link()
            .add(LinkVeth::new(o, i).mtu(mtu).build())
            .execute()
            .await
            .map_err(device_err(network, format!("create veth {o}")))?;
        let oi = require(&h, network, o).await?;
        let ii = require(&h, network, i).await?;
        h.link()
            .set(LinkUnspec::new_with_index(oi).controller(br).up().build())
            .execute()
            .await
            .map_err(device_err(network, format!("attach {o} to {bridge}")))?;
        h.link()
            .set(LinkUnspec::new_with_index(ii).setns_by_fd(raw).build())
            .execute()
            .await
            .map_err(device_err(network, "move veth into container namespace"))?;
        Ok::<_, OverlayError>(mtu)
    })??;
    drop(fd);
    let mac = mac_for_ip(v.ip).to_vec();
    let (ifname, ip, len, gw) = (v.ifname, v.ip, v.prefix_len, v.default_route);
    netns::with_netlink(Some(v.container), |h| async move {
        let ii = require(&h, network, i).await?;
        if let Some(old) = link_index(&h, ifname).await.map_err(device_err(network, format!("look up {ifname}")))? {
            h.link().del(old).execute().await.map_err(device_err(network, format!("delete old {ifname}")))?;
        }
        h.link()
            .set(LinkUnspec::new_with_index(ii).name(ifname.to_string()).address(mac).mtu(mtu).build())
            .execute()
            .await
            .map_err(device_err(network, format!("rename to {ifname}")))?;
        h.address()
            .add(ii, IpAddr::V4(ip), len)
            .replace()
            .execute()
            .await
            .map_err(device_err(network, format!("add address {ip}/{len}")))?;
        h.link()
            .set(LinkUnspec::new_with_index(ii).up().build())
            .execute()
            .await
            .map_err(device_err(network, format!("set {ifname} up")))?;
        if let Some(gw) = gw {
            let route = RouteMessageBuilder::<Ipv4Addr>::new().gateway(gw).output_interface(ii).build();
            h.route()
                .add(route)
                .replace()
                .execute()
                .await
                .map_err(device_err(network, format!("default route via {gw}")))?;
        }
        Ok::<_, OverlayError>(())
    })?
}

/// Deletes the link `name` in namespace `ns` if it exists.
pub(crate) fn delete_link(ns: Option<&Path>, label: &str, name: &str) -> Result<(), OverlayError> {
    netns::with_netlink(ns, |h| async move {
        if let Some(i) = link_index(&h, name).await.map_err(device_err(label, format!("look up {name}")))? {
            ignore_missing(h.link().del(i).execute().await).map_err(device_err(label, format!("delete {name}")))?;
        }
        Ok(())
    })?
}

/// Detaches the container with overlay address `ip` (deletes its veth pair); a missing one is not an error.
pub fn detach(host: &Host, network: &str, ip: Ipv4Addr) -> Result<(), OverlayError> {
    let sandbox = host.sandbox_path(network);
    if !sandbox.exists() {
        return Ok(());
    }
    delete_link(Some(&sandbox), network, &sandbox_veth(ip))
}

/// Programs an endpoint on another host: neighbour `ip → mac` (answered by VXLAN proxy ARP) and FDB
/// `mac → host`. Idempotent (replaces).
pub fn add_remote(host: &Host, network: &str, ep: &RemoteEndpoint) -> Result<(), OverlayError> {
    let sandbox = host.sandbox_path(network);
    if !sandbox.exists() {
        return Err(OverlayError::NoSandbox(network.into()));
    }
    netns::with_netlink(Some(&sandbox), |h| async move {
        let vx = require(&h, network, VXLAN).await?;
        h.neighbours()
            .add(vx, IpAddr::V4(ep.ip))
            .link_layer_address(&ep.mac)
            .replace()
            .execute()
            .await
            .map_err(device_err(network, format!("neighbour {}", ep.ip)))?;
        h.neighbours()
            .add_bridge(vx, &ep.mac)
            .destination(IpAddr::V4(ep.host))
            .flags(NeighbourFlags::Own)
            .replace()
            .execute()
            .await
            .map_err(device_err(network, format!("fdb {} via {}", ep.ip, ep.host)))
    })??;
    debug!(network.id = network, ip = %ep.ip, host = %ep.host, "remote endpoint programmed");
    Ok(())
}

/// Removes a remote endpoint's neighbour and FDB entries; missing ones are not an error.
pub fn remove_remote(host: &Host, network: &str, ep: &RemoteEndpoint) -> Result<(), OverlayError> {
    let sandbox = host.sandbox_path(network);
    if !sandbox.exists() {
        return Ok(());
    }
    netns::with_netlink(Some(&sandbox), |h| async move {
        let Some(vx) = link_index(&h, VXLAN).await.map_err(device_err(network, "look up vxlan0"))? else {
            return Ok(());
        };
        let mut neigh = h.neighbours().add(vx, IpAddr::V4(ep.ip)).message_mut().clone();
        neigh.attributes.retain(|a| matches!(a, NeighbourAttribute::Destination(_)));
        ignore_missing(h.neighbours().del(neigh).execute().await)
            .map_err(device_err(network, format!("delete neighbour {}", ep.ip)))?;
        let mut fdb = h.neighbours().add_bridge(vx, &ep.mac).message_mut().clone();
        fdb.header.flags = NeighbourFlags::Own;
        fdb.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ep.host)));
        fdb.header.family = AddressFamily::Bridge;
        ignore_missing(h.neighbours().del(fdb).execute().await)
            .map_err(device_err(network, format!("delete fdb {}", ep.ip)))
    })?
}

/// The remote endpoints programmed in the network's sandbox: permanent neighbours on `vxlan0` joined with
/// the FDB entries of their MACs. Entries missing either half are left out (so a reconcile re-adds them).
pub fn list_remotes(host: &Host, network: &str) -> Result<Vec<RemoteEndpoint>, OverlayError> {
    let sandbox = host.sandbox_path(network);
    if !sandbox.exists() {
        return Err(OverlayError::NoSandbox(network.into()));
    }
    netns::with_netlink(Some(&sandbox), |h| async move {
        let vx = require(&h, network, VXLAN).await?;
        let mut neighbours = Vec::new();
        let mut fdb = std::collections::HashMap::new();
        for family in [AddressFamily::Inet, AddressFamily::Bridge] {
            let mut dump = h.neighbours().get().set_address_family(family).execute();
            while let Some(m) = dump.try_next().await.map_err(device_err(network, "list neighbours"))? {
                if m.header.ifindex != vx {
                    continue;
                }
                let mut dst = None;
                let mut mac = None;
                for a in &m.attributes {
                    match a {
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => dst = Some(*ip),
                        // FDB destinations come back unparsed (bridge family).
                        NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                            dst = <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from)
                        }
                        NeighbourAttribute::LinkLayerAddress(l) => mac = <[u8; 6]>::try_from(l.as_slice()).ok(),
                        _ => {}
                    }
                }
                let (Some(dst), Some(mac)) = (dst, mac) else { continue };
                if family == AddressFamily::Inet {
                    neighbours.push((dst, mac));
                } else {
                    fdb.insert(mac, dst);
                }
            }
        }
        let mut out: Vec<RemoteEndpoint> = neighbours
            .into_iter()
            .filter_map(|(ip, mac)| Some(RemoteEndpoint { ip, mac, host: *fdb.get(&mac)? }))
            .collect();
        out.sort_by_key(|e| e.ip);
        Ok(out)
    })?
}

/// Makes the network's remote endpoints exactly `want`: programs missing or changed ones, removes the rest.
/// The periodic repair of drift; returns (programmed, removed).
pub fn reconcile_remotes(host: &Host, network: &str, want: &[RemoteEndpoint]) -> Result<(usize, usize), OverlayError> {
    let have = list_remotes(host, network)?;
    let mut added = 0;
    for ep in want.iter().filter(|ep| !have.contains(ep)) {
        add_remote(host, network, ep)?;
        added += 1;
    }
    let mut removed = 0;
    for ep in have.iter().filter(|h| !want.iter().any(|w| w.ip == h.ip)) {
        remove_remote(host, network, ep)?;
        removed += 1;
    }
    if added + removed > 0 {
        info!(network.id = network, added, removed, "overlay endpoints repaired");
    }
    Ok((added, removed))
}

fn ignore_missing(r: Result<(), rtnetlink::Error>) -> Result<(), rtnetlink::Error> {
    match r {
        Err(e) if is_errno(&e, libc::ENOENT) => Ok(()),
        r => r,
    }
}

/// Deletes every overlay sandbox of this host's prefix and any VXLAN device left in the host namespace by a
/// crash between creating and moving it. For daemon start-up, shutdown and `swarm leave`.
pub fn cleanup_all(host: &Host) -> Result<usize, OverlayError> {
    let mut n = 0;
    for name in netns::list(&format!("{}ov-", host.prefix)) {
        netns::delete(&name)?;
        n += 1;
    }
    let vx_prefix = host.vxlan_prefix();
    let p = vx_prefix.as_str();
    n += netns::with_netlink(host.netns.as_deref(), |h| async move {
        let mut links = h.link().get().execute();
        let mut stale = Vec::new();
        while let Some(l) = links.try_next().await.map_err(device_err("*", "list links"))? {
            if l.attributes.iter().any(|a| matches!(a, LinkAttribute::IfName(n) if n.starts_with(p))) {
                stale.push(l.header.index);
            }
        }
        for i in &stale {
            ignore_missing(h.link().del(*i).execute().await).map_err(device_err("*", "delete stale vxlan"))?;
        }
        Ok::<_, OverlayError>(stale.len())
    })??;
    Ok(n)
}
