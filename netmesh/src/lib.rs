//! Shoal's network dataplane. It *applies* network state it is given and never allocates addresses (the
//! manager's allocator does). The engine drives it (`engine/src/network.rs`) from the dispatcher's network state.
//!
//! - [`netns`]: named network namespaces; running code or commands inside one without moving a tokio worker.
//! - [`overlay`]: VXLAN overlays (bridge + VXLAN per network in a sandbox namespace, veth per container).
//! - [`egress`]: a per-host bridge with masquerade for traffic leaving the cluster.
//! - [`lb`]: service VIPs as an nftables DNAT table in a container namespace.
//! - [`dns`]: the embedded DNS server on 127.0.0.11 of each container, from a runtime-updated records table.
//! - [`ingress`]: the routing mesh's published ports as an nftables DNAT + masquerade table on a host.
//!
//! Everything created carries a name prefix (`shoal` by default) so a restarted daemon can find and delete
//! its own namespaces, devices and nftables tables: [`cleanup_all`]. DNS servers hold no kernel state; they
//! end with the process. See docs/design.md §6.

pub mod dns;
pub mod egress;
pub mod ingress;
pub mod lb;
pub mod netns;
pub mod overlay;

/// A failure while removing leftovers.
#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    /// Removing overlay namespaces or devices failed.
    #[error(transparent)]
    Overlay(Box<overlay::OverlayError>),
    /// Removing the egress bridge or veths failed.
    #[error(transparent)]
    Egress(Box<egress::EgressError>),
    /// Removing nftables tables failed.
    #[error(transparent)]
    Tables(Box<lb::LbError>),
}

/// Removes everything this host's dataplane created (overlay sandboxes, stray VXLAN devices, the egress
/// bridge and veths, `shoal*` nftables tables in the host namespace), for daemon start-up after a crash,
/// shutdown and `swarm leave`. Container namespaces go with their containers. Returns how many objects went.
pub fn cleanup_all(host: &overlay::Host) -> Result<usize, CleanupError> {
    let sandboxes = overlay::cleanup_all(host).map_err(|e| CleanupError::Overlay(Box::new(e)))?;
    let egress = egress::cleanup_all(host).map_err(|e| CleanupError::Egress(Box::new(e)))?;
    let tables = lb::cleanup_all(host.netns.as_deref()).map_err(|e| CleanupError::Tables(Box::new(e)))?;
    Ok(sandboxes + egress + tables)
}
