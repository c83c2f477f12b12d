//! Egress to the outside world (Docker's `docker_gwbridge`): a bridge in the host namespace holding the
//! gateway address of a host-local subnet; each container gets one more veth on it (with its default route)
//! and nftables table `shoal_egress` masquerades that subnet's traffic leaving by any other interface. The
//! overlays carry traffic between tasks; this carries what leaves the cluster.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;

use crate::lb::LbError;
use crate::netns;
use crate::overlay::{attach_veth, delete_link, Host, OverlayError, Veth};

/// The nftables table of the masquerade rule (family `ip`; [`crate::lb::cleanup_all`] removes it too).
pub const TABLE: &str = "shoal_egress";

/// A failure setting up egress.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// Creating or deleting the bridge or a veth failed.
    #[error("egress: {0}")]
    Device(Box<OverlayError>),
    /// Applying the masquerade rule or turning on forwarding failed.
    #[error("egress: {0}")]
    Rules(Box<LbError>),
    /// The subnet's gateway was not set up with [`ensure`].
    #[error("egress bridge {0} does not exist")]
    NoBridge(String),
}

impl From<OverlayError> for EgressError {
    fn from(e: OverlayError) -> Self {
        EgressError::Device(Box::new(e))
    }
}

impl From<LbError> for EgressError {
    fn from(e: LbError) -> Self {
        EgressError::Rules(Box::new(e))
    }
}

impl From<netns::NetnsError> for EgressError {
    fn from(e: netns::NetnsError) -> Self {
        EgressError::Device(Box::new(e.into()))
    }
}

/// The egress bridge's name: the host prefix's first 9 characters + `gw0` (fits the kernel's 15).
pub fn bridge_name(host: &Host) -> String {
    format!("{}gw0", host.prefix.chars().take(9).collect::<String>())
}

/// Prefix of the host ends of egress veths: the host prefix's first 6 characters + `g`, then 8 hex digits of
/// the container's address.
fn veth_prefix(host: &Host) -> String {
    format!("{}g", host.prefix.chars().take(6).collect::<String>())
}

fn host_veth(host: &Host, ip: Ipv4Addr) -> String {
    format!("{}{:08x}", veth_prefix(host), u32::from(ip))
}

/// Renders the masquerade table for `subnet`.
pub fn render(bridge: &str, gateway: Ipv4Addr, prefix_len: u8) -> String {
    let net = u32::from(gateway) & (u32::MAX.checked_shl(32 - u32::from(prefix_len)).unwrap_or(0));
    let mut s = String::new();
    let _ = writeln!(s, "table ip {TABLE} {{}}\ndelete table ip {TABLE}\ntable ip {TABLE} {{");
    let _ = writeln!(s, "  chain postrouting {{ type nat hook postrouting priority 100; policy accept;");
    let _ = writeln!(s, "    ip saddr {}/{prefix_len} oifname != \"{bridge}\" masquerade", Ipv4Addr::from(net));
    let _ = writeln!(s, "  }}\n}}");
    s
}

/// Creates the egress bridge with `gateway/prefix_len`, the masquerade rule and IPv4 forwarding. Idempotent.
pub fn ensure(host: &Host, gateway: Ipv4Addr, prefix_len: u8) -> Result<(), EgressError> {
    let br = bridge_name(host);
    let b = br.as_str();
    netns::with_netlink(host.netns.as_deref(), |h| async move {
        let err = |op: String| move |source| OverlayError::Device { network: "egress".into(), op, source };
        if netns::link_index(&h, b).await.map_err(err(format!("look up {b}")))?.is_none() {
            h.link().add(rtnetlink::LinkBridge::new(b).build()).execute().await.map_err(err(format!("create {b}")))?;
        }
        let i = netns::link_index(&h, b).await.map_err(err(format!("look up {b}")))?.unwrap_or_default();
        h.address()
            .add(i, gateway.into(), prefix_len)
            .replace()
            .execute()
            .await
            .map_err(err(format!("add {gateway}/{prefix_len} to {b}")))?;
        h.link()
            .set(rtnetlink::LinkUnspec::new_with_index(i).up().build())
            .execute()
            .await
            .map_err(err(format!("set {b} up")))?;
        Ok::<_, OverlayError>(())
    })??;
    crate::ingress::enable_forwarding(host.netns.as_deref())?;
    let ns = host.netns.as_deref();
    let out = netns::command(ns, "nft", &["-f", "-"], Some(&render(b, gateway, prefix_len)))?;
    if !out.status.success() {
        let label = ns.map(|p| p.display().to_string()).unwrap_or_else(|| "host".into());
        return Err(LbError::Nft {
            table: TABLE.into(),
            ns: label,
            stderr: String::from_utf8_lossy(&out.stderr).trim().into(),
        }
        .into());
    }
    Ok(())
}

/// Gives the container at `container` the interface `ifname` on the egress bridge with `ip/prefix_len` and
/// its default route via `gateway`.
pub fn attach(
    host: &Host,
    container: &Path,
    ifname: &str,
    ip: Ipv4Addr,
    prefix_len: u8,
    gateway: Ipv4Addr,
) -> Result<(), EgressError> {
    let br = bridge_name(host);
    let exists = netns::with_netlink(host.netns.as_deref(), |h| async move { netns::link_index(&h, &br).await })?
        .map_err(|source| OverlayError::Device { network: "egress".into(), op: "look up bridge".into(), source })?;
    if exists.is_none() {
        return Err(EgressError::NoBridge(bridge_name(host)));
    }
    attach_veth(&Veth {
        label: "egress",
        outer_ns: host.netns.as_deref(),
        bridge: &bridge_name(host),
        outer: host_veth(host, ip),
        container,
        ifname,
        ip,
        prefix_len,
        default_route: Some(gateway),
    })?;
    Ok(())
}

/// Removes the egress veth of the container with address `ip`; a missing one is not an error.
pub fn detach(host: &Host, ip: Ipv4Addr) -> Result<(), EgressError> {
    Ok(delete_link(host.netns.as_deref(), "egress", &host_veth(host, ip))?)
}

/// Deletes the egress bridge, every egress veth of the host prefix and the masquerade table; returns how many
/// objects went.
pub fn cleanup_all(host: &Host) -> Result<usize, EgressError> {
    use futures::TryStreamExt;
    use rtnetlink::packet_route::link::LinkAttribute;
    let (br, vp) = (bridge_name(host), veth_prefix(host));
    let (b, v) = (br.as_str(), vp.as_str());
    let n = netns::with_netlink(host.netns.as_deref(), |h| async move {
        let err = |op: &str| {
            let op = op.to_string();
            move |source| OverlayError::Device { network: "egress".into(), op, source }
        };
        let mut links = h.link().get().execute();
        let mut doomed = Vec::new();
        while let Some(l) = links.try_next().await.map_err(err("list links"))? {
            let ours = l.attributes.iter().any(
                |a| matches!(a, LinkAttribute::IfName(n) if n == b || (n.starts_with(v) && n.len() == v.len() + 8)),
            );
            if ours {
                doomed.push(l.header.index);
            }
        }
        for i in &doomed {
            // Deleting a veth end takes its peer along; a second delete of the pair finds nothing.
            match h.link().del(*i).execute().await {
                Err(e) if !netns::is_errno(&e, libc::ENODEV) => return Err(err("delete link")(e)),
                _ => {}
            }
        }
        Ok::<_, OverlayError>(doomed.len())
    })??;
    let ns = host.netns.as_deref();
    let out =
        netns::command(ns, "nft", &["-f", "-"], Some(&format!("table ip {TABLE} {{}}\ndelete table ip {TABLE}\n")))?;
    if !out.status.success() {
        let label = ns.map(|p| p.display().to_string()).unwrap_or_else(|| "host".into());
        return Err(LbError::Nft {
            table: TABLE.into(),
            ns: label,
            stderr: String::from_utf8_lossy(&out.stderr).trim().into(),
        }
        .into());
    }
    Ok(n)
}
