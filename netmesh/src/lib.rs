//! Shoal's network dataplane. It *applies* network state it is given and never allocates addresses.
//!
//! Today every task gets a network namespace of its own with loopback only; runc creates it from the runtime
//! spec the engine builds (`engine/src/spec.rs`, a `network` namespace entry without a path), so this crate has
//! nothing to do yet. The networking issue brings here: overlays (bridge + VXLAN per network in a sandbox
//! namespace), the embedded DNS server on 127.0.0.11, service VIPs and the ingress routing mesh as nftables
//! rules (docs/design.md §6); the engine will then create the namespace here and pass its path to the spec.
