//! The connection to the daemon: `-H/--host` handling, one gRPC channel over the unix socket shared by the
//! `Engine` (node-local) and `Control` (cluster) clients, and the two error types that end up on the user's
//! terminal ("Cannot connect …" and "Error response from daemon: …").

use engine_api::EngineClient;
use std::path::PathBuf;
use swarm::api::control::{ListServicesRequest, ListTasksRequest, PageRequest, ServiceWithStatus};
use swarm::api::Task;
use swarm::transport::control::control_client::ControlClient;
use tonic::transport::Channel;

/// Where the daemon listens when neither `-H` nor `SHOAL_HOST` says otherwise.
pub use engine_api::DEFAULT_HOST;

/// Listings of a big cluster's tasks easily exceed tonic's 4 MiB default; the socket is local, so be generous.
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// The daemon could not be reached at all (socket missing, refused, not a socket).
#[derive(Debug)]
pub struct CannotConnect {
    pub host: String,
}

impl std::fmt::Display for CannotConnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cannot connect to the Shoal daemon at {}. Is the shoal daemon running?", self.host)
    }
}

impl std::error::Error for CannotConnect {}

/// The daemon answered with an error; printed as Docker prints them.
#[derive(Debug)]
pub struct DaemonError(pub tonic::Status);

impl std::fmt::Display for DaemonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Messages are meant for one line; a multi-line one would break "exactly one line on stderr".
        let msg = self.0.message().trim().replace('\n', " ");
        if msg.is_empty() {
            write!(f, "Error response from daemon: {}", self.0.code())
        } else {
            write!(f, "Error response from daemon: {msg}")
        }
    }
}

impl std::error::Error for DaemonError {}

/// Unwraps a gRPC response, turning a `Status` into a [`DaemonError`].
pub fn rpc<T>(r: Result<tonic::Response<T>, tonic::Status>) -> anyhow::Result<T> {
    r.map(tonic::Response::into_inner).map_err(|s| DaemonError(s).into())
}

/// Resolves `-H` / `SHOAL_HOST` to a socket path (see [`engine_api::socket_path`]).
pub fn socket_path(host: &str) -> anyhow::Result<PathBuf> {
    Ok(engine_api::socket_path(host)?)
}

/// The host as it is shown in messages: always in `unix://` form.
pub fn display_host(host: &str) -> String {
    match socket_path(host) {
        Ok(p) => format!("unix://{}", p.display()),
        Err(_) => host.to_string(),
    }
}

/// Both API clients over one channel.
#[derive(Clone)]
pub struct Client {
    pub engine: EngineClient<Channel>,
    pub control: ControlClient<Channel>,
}

impl Client {
    /// Connects eagerly, so a missing daemon is reported before any work (and before any output) is done.
    pub async fn connect(host: &str) -> anyhow::Result<Client> {
        let path = socket_path(host)?;
        let channel = engine_api::connect_unix(path).await.map_err(|_| CannotConnect { host: display_host(host) })?;
        Ok(Client {
            engine: EngineClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            control: ControlClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        })
    }
}

/// Items per listing page: a page of tasks stays well under the message limit, and a large listing never
/// holds the daemon's store for long.
const PAGE_SIZE: u32 = 5_000;

impl Client {
    /// Every task `req` selects, fetched page by page.
    pub async fn list_tasks(&self, mut req: ListTasksRequest) -> anyhow::Result<Vec<Task>> {
        req.page = PageRequest { size: PAGE_SIZE, token: String::new() };
        let mut out = Vec::new();
        loop {
            let r = rpc(self.control.clone().list_tasks(req.clone()).await)?;
            out.extend(r.tasks);
            if r.next_page_token.is_empty() {
                return Ok(out);
            }
            req.page.token = r.next_page_token;
        }
    }

    /// Every service `req` selects, with its counts, fetched page by page.
    pub async fn list_services(&self, mut req: ListServicesRequest) -> anyhow::Result<Vec<ServiceWithStatus>> {
        req.page = PageRequest { size: PAGE_SIZE, token: String::new() };
        let mut out = Vec::new();
        loop {
            let r = rpc(self.control.clone().list_services(req.clone()).await)?;
            out.extend(r.services);
            if r.next_page_token.is_empty() {
                return Ok(out);
            }
            req.page.token = r.next_page_token;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_forms() {
        assert_eq!(display_host("/tmp/s.sock"), "unix:///tmp/s.sock");
    }

    #[test]
    fn daemon_errors_are_one_line() {
        let e = DaemonError(tonic::Status::not_found("service web\nnot found"));
        assert_eq!(e.to_string(), "Error response from daemon: service web not found");
    }
}
