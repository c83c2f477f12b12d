//! Shoal's network dataplane. It *applies* network state it is given and never allocates addresses.
//!
//! - [`netns`]: named network namespaces and running code inside one on a helper thread.
//! - [`dns`]: the embedded DNS server on 127.0.0.11 of each container, from a runtime-updated records table.
//! - [`lb`]: service VIPs as an nftables DNAT table in a container namespace.
//! - [`overlay`]: VXLAN overlays (bridge + VXLAN per network in a sandbox namespace, veth per container).
//!
//! Everything created carries a name prefix (`shoal-` by default) so a restarted daemon can find and delete
//! its own devices, namespaces and nftables tables (each module's `cleanup_all`). See docs/design.md §6.

pub mod dns;
pub mod lb;
pub mod netns;
pub mod overlay;
