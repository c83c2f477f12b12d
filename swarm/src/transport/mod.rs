//! gRPC plumbing: the MessagePack codec our services use and the generated clients/servers.
//!
//! Four services on the cluster's TLS listener: `shoal.Control` (cluster changes; CLI and managers),
//! `shoal.Dispatcher` (agent sessions), `shoal.NodeCA` (a joining node's certificate) and `shoal.Raft` (between
//! managers). The engine also serves Control on its unix socket. A node's own local API, `shoal.Engine`, lives in
//! the engine (`engine/api`).

mod codec;

pub use codec::WireCodec;

/// `shoal.Control`: generated client and server.
pub mod control {
    include!(concat!(env!("OUT_DIR"), "/shoal.Control.rs"));
}

/// `shoal.Dispatcher`: generated client and server.
pub mod dispatcher {
    include!(concat!(env!("OUT_DIR"), "/shoal.Dispatcher.rs"));
}

/// `shoal.Raft`: generated client and server (managers only).
pub mod raft {
    include!(concat!(env!("OUT_DIR"), "/shoal.Raft.rs"));
}

/// `shoal.NodeCA`: generated client and server.
pub mod node_ca {
    include!(concat!(env!("OUT_DIR"), "/shoal.NodeCA.rs"));
}
