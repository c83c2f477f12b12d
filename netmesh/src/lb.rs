//! Service VIPs inside a container's namespace: nftables table `shoal` whose nat `output` and `prerouting`
//! chains DNAT each VIP to `numgen inc mod N map { 0 : backend0, … }` (round-robin per new connection; every
//! port, as Swarm's VIPs forward every port). The whole table is replaced in one `nft -f -` transaction per
//! change, so a connection never sees a half-applied set; conntrack keeps established flows on their backend,
//! and the entries of removed backends are deleted so their flows stop too. A VIP without backends rejects.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use tracing::{debug, warn};

use crate::netns::{self, NetnsError};

/// The nftables table of the VIPs (family `ip`).
pub const TABLE: &str = "shoal";

/// A failure applying VIP rules.
#[derive(Debug, thiserror::Error)]
pub enum LbError {
    /// Entering the namespace or starting a command failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// `nft` refused the ruleset.
    #[error("nftables table {table} in {ns}: {stderr}")]
    Nft { table: String, ns: String, stderr: String },
    /// `conntrack` could not delete a removed backend's entries.
    #[error("conntrack entries of backend {backend} in {ns}: {stderr}")]
    Conntrack { backend: Ipv4Addr, ns: String, stderr: String },
    /// `nft` printed JSON this crate does not understand.
    #[error("nftables table list in {ns}: {reason}")]
    BadListing { ns: String, reason: String },
}

/// The VIPs of one container namespace and their current backends.
#[derive(Debug)]
pub struct Balancer {
    netns: PathBuf,
    vips: BTreeMap<Ipv4Addr, Vec<Ipv4Addr>>,
}

/// Renders the complete transaction for `vips`: create-if-missing, delete, recreate, so `nft` applies it
/// atomically whether or not the table existed.
pub fn render(vips: &BTreeMap<Ipv4Addr, Vec<Ipv4Addr>>) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "table ip {TABLE} {{}}\ndelete table ip {TABLE}\ntable ip {TABLE} {{");
    let _ = writeln!(s, "  chain vips {{");
    for (vip, backends) in vips.iter().filter(|(_, b)| !b.is_empty()) {
        let map: Vec<String> = backends.iter().enumerate().map(|(i, b)| format!("{i} : {b}")).collect();
        let _ =
            writeln!(s, "    ip daddr {vip} dnat to numgen inc mod {} map {{ {} }}", backends.len(), map.join(", "));
    }
    let _ = writeln!(s, "  }}");
    let _ = writeln!(s, "  chain output {{ type nat hook output priority -100; policy accept; jump vips; }}");
    let _ = writeln!(s, "  chain prerouting {{ type nat hook prerouting priority -100; policy accept; jump vips; }}");
    let empty: Vec<String> = vips.iter().filter(|(_, b)| b.is_empty()).map(|(v, _)| v.to_string()).collect();
    if !empty.is_empty() {
        // Refuse at once rather than let connections to a backend-less VIP hang.
        let set = empty.join(", ");
        let _ = writeln!(s, "  chain no_backends {{ type filter hook output priority 0; policy accept;");
        let _ = writeln!(s, "    ip daddr {{ {set} }} meta l4proto tcp reject with tcp reset");
        let _ = writeln!(s, "    ip daddr {{ {set} }} reject");
        let _ = writeln!(s, "  }}");
    }
    let _ = writeln!(s, "}}");
    s
}

fn nft(ns: &Path, script: &str) -> Result<(), LbError> {
    let out = netns::command(Some(ns), "nft", &["-f", "-"], Some(script))?;
    if !out.status.success() {
        return Err(LbError::Nft {
            table: TABLE.into(),
            ns: ns.display().to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Deletes the conntrack entries of connections to `vip` that were sent to `backend`.
pub fn forget_backend(ns: &Path, vip: Ipv4Addr, backend: Ipv4Addr) -> Result<(), LbError> {
    let (v, b) = (vip.to_string(), backend.to_string());
    let out = netns::command(Some(ns), "conntrack", &["-D", "--orig-dst", &v, "--reply-src", &b], None)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // conntrack exits 1 when nothing matched: no entry is what we want.
    if out.status.success() || stderr.contains(" 0 flow entries") {
        return Ok(());
    }
    Err(LbError::Conntrack { backend, ns: ns.display().to_string(), stderr: stderr.trim().to_string() })
}

impl Balancer {
    /// A balancer for the container namespace at `netns`, with no VIPs yet (nothing is applied until
    /// [`Balancer::set`]).
    pub fn new(netns: PathBuf) -> Self {
        Balancer { netns, vips: BTreeMap::new() }
    }

    /// The VIPs and backends last applied.
    pub fn vips(&self) -> &BTreeMap<Ipv4Addr, Vec<Ipv4Addr>> {
        &self.vips
    }

    /// Makes the VIP table exactly `vips` (VIP → backends, in map order) in one transaction, then deletes the
    /// conntrack entries of every backend that left a VIP.
    pub fn set(&mut self, vips: BTreeMap<Ipv4Addr, Vec<Ipv4Addr>>) -> Result<(), LbError> {
        nft(&self.netns, &render(&vips))?;
        let old = std::mem::replace(&mut self.vips, vips);
        for (vip, before) in old {
            let now: BTreeSet<Ipv4Addr> = self.vips.get(&vip).into_iter().flatten().copied().collect();
            for b in before.into_iter().filter(|b| !now.contains(b)) {
                debug!(%vip, backend = %b, "backend removed; deleting its conntrack entries");
                forget_backend(&self.netns, vip, b)?;
            }
        }
        Ok(())
    }

    /// Sets the backends of one VIP (empty: it rejects), keeping the others.
    pub fn set_backends(&mut self, vip: Ipv4Addr, backends: Vec<Ipv4Addr>) -> Result<(), LbError> {
        let mut vips = self.vips.clone();
        vips.insert(vip, backends);
        self.set(vips)
    }

    /// Removes one VIP.
    pub fn remove_vip(&mut self, vip: Ipv4Addr) -> Result<(), LbError> {
        let mut vips = self.vips.clone();
        vips.remove(&vip);
        self.set(vips)
    }

    /// Deletes the table (the container leaves every network with VIPs).
    pub fn clear(&mut self) -> Result<(), LbError> {
        nft(&self.netns, &format!("table ip {TABLE} {{}}\ndelete table ip {TABLE}\n"))?;
        self.vips.clear();
        Ok(())
    }
}

/// Deletes every nftables table whose name starts with `shoal` in the namespace `ns` (the process's own for
/// `None`), for crash clean-up; returns how many.
pub fn cleanup_all(ns: Option<&Path>) -> Result<usize, LbError> {
    let label = ns.map(|p| p.display().to_string()).unwrap_or_else(|| "host".into());
    let out = netns::command(ns, "nft", &["-j", "list", "tables"], None)?;
    if !out.status.success() {
        return Err(LbError::Nft { table: "*".into(), ns: label, stderr: String::from_utf8_lossy(&out.stderr).into() });
    }
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| LbError::BadListing { ns: label.clone(), reason: e.to_string() })?;
    let mut script = String::new();
    let tables = json["nftables"].as_array().cloned().unwrap_or_default();
    for t in tables.iter().filter_map(|e| e.get("table")) {
        let (Some(family), Some(name)) = (t["family"].as_str(), t["name"].as_str()) else {
            return Err(LbError::BadListing { ns: label, reason: format!("table without family or name: {t}") });
        };
        if name.starts_with(TABLE) {
            let _ = writeln!(script, "delete table {family} {name}");
        }
    }
    let n = script.lines().count();
    if n > 0 {
        let out = netns::command(ns, "nft", &["-f", "-"], Some(&script))?;
        if !out.status.success() {
            warn!(ns = %label, "deleting stale nftables tables failed");
            return Err(LbError::Nft {
                table: "*".into(),
                ns: label,
                stderr: String::from_utf8_lossy(&out.stderr).into(),
            });
        }
    }
    Ok(n)
}
