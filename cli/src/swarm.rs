//! `shoal swarm …`: init, join, leave, join-token, update, ca, unlock and unlock-key, with Docker's messages and
//! hints.

use crate::client::{rpc, Client};
use clap::{Args, Subcommand, ValueEnum};
use engine_api::{RotateJoinTokenRequest, SwarmInitRequest, SwarmJoinRequest, SwarmLeaveRequest, SwarmUnlockRequest};
use std::time::Duration;
use swarm::api::control::{Empty, GetRequest};
use swarm::api::{NodeAvailability, NodeRole};

#[derive(Debug, Subcommand)]
pub enum SwarmCmd {
    /// Initialize a swarm
    Init(InitArgs),
    /// Join a swarm as a node and/or manager
    Join(JoinArgs),
    /// Leave the swarm
    Leave(LeaveArgs),
    /// Manage join tokens
    #[command(name = "join-token")]
    JoinToken(JoinTokenArgs),
    /// Update the swarm
    Update(UpdateArgs),
    /// Display and rotate the root CA
    Ca(CaArgs),
    /// Unlock swarm
    Unlock,
    /// Manage the unlock key
    #[command(name = "unlock-key")]
    UnlockKey(UnlockKeyArgs),
}

#[derive(Debug, Args)]
pub struct UnlockKeyArgs {
    /// Only display token
    #[arg(short, long)]
    quiet: bool,
    /// Rotate unlock key
    #[arg(long)]
    rotate: bool,
}

#[derive(Debug, Args)]
pub struct CaArgs {
    /// Rotate the swarm CA - if no certificate or key are provided, new ones will be generated
    #[arg(long)]
    rotate: bool,
    /// Exit immediately instead of waiting for the root rotation to converge
    #[arg(short, long)]
    detach: bool,
    /// Suppress progress output
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Validity period for node certificates (ns|us|ms|s|m|h) (default 2160h0m0s)
    #[arg(long = "cert-expiry", value_parser = swarm::api::parse_duration, allow_hyphen_values = true, value_name = "DURATION")]
    cert_expiry: Option<Duration>,
    /// Dispatcher heartbeat period (ns|us|ms|s|m|h) (default 5s)
    #[arg(long = "dispatcher-heartbeat", value_parser = swarm::api::parse_duration, allow_hyphen_values = true, value_name = "DURATION")]
    dispatcher_heartbeat: Option<Duration>,
    /// Number of log entries between Raft snapshots (default 10000)
    #[arg(long = "snapshot-interval", value_parser = count, allow_hyphen_values = true, value_name = "N")]
    snapshot_interval: Option<u64>,
    /// Task history retention limit (default 5)
    #[arg(long = "task-history-limit", value_parser = count, allow_hyphen_values = true, value_name = "N")]
    task_history_limit: Option<u64>,
    /// Change manager autolocking setting (true|false)
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    autolock: Option<bool>,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Advertised address (format: <ip>[:port]; interface names are not supported)
    #[arg(long = "advertise-addr", value_name = "ADDR")]
    advertise_addr: Option<String>,
    /// Listen address (format: <ip>[:port]) (default 0.0.0.0:2377)
    #[arg(long = "listen-addr", value_name = "ADDR")]
    listen_addr: Option<String>,
    /// Task history retention limit (default 5)
    #[arg(long = "task-history-limit", value_parser = count, allow_hyphen_values = true, value_name = "N")]
    task_history_limit: Option<u64>,
    /// Dispatcher heartbeat period (ns|us|ms|s|m|h) (default 5s)
    #[arg(long = "dispatcher-heartbeat", value_parser = swarm::api::parse_duration, allow_hyphen_values = true, value_name = "DURATION")]
    dispatcher_heartbeat: Option<Duration>,
    /// Number of log entries between Raft snapshots (default 10000)
    #[arg(long = "snapshot-interval", value_parser = count, allow_hyphen_values = true, value_name = "N")]
    snapshot_interval: Option<u64>,
    /// Validity period for node certificates (ns|us|ms|s|m|h) (default 2160h0m0s)
    #[arg(long = "cert-expiry", value_parser = swarm::api::parse_duration, allow_hyphen_values = true, value_name = "DURATION")]
    cert_expiry: Option<Duration>,
    /// Force create a new cluster from current state
    #[arg(long = "force-new-cluster")]
    force_new_cluster: bool,
    /// Enable manager autolocking (requiring an unlock key to start a stopped manager)
    #[arg(long)]
    autolock: bool,
    /// Default address pool in CIDR format (repeatable; default 10.0.0.0/8)
    #[arg(long = "default-addr-pool", value_name = "CIDR")]
    default_addr_pool: Vec<String>,
    /// Default address pool subnet mask length (default 24)
    #[arg(long = "default-addr-pool-mask-length", value_name = "N")]
    default_addr_pool_mask_length: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Availability {
    Active,
    Pause,
    Drain,
}

#[derive(Debug, Args)]
pub struct JoinArgs {
    /// Token for entry into the swarm
    #[arg(long, value_name = "string")]
    token: String,
    /// Advertised address (format: <ip>[:port]; interface names are not supported)
    #[arg(long = "advertise-addr", value_name = "ADDR")]
    advertise_addr: Option<String>,
    /// Listen address (format: <ip>[:port]) (default 0.0.0.0:2377)
    #[arg(long = "listen-addr", value_name = "ADDR")]
    listen_addr: Option<String>,
    /// Availability of the node ("active", "pause", "drain")
    #[arg(long, value_enum, default_value = "active")]
    availability: Availability,
    /// A manager's address
    #[arg(value_name = "HOST:PORT")]
    remote: String,
}

#[derive(Debug, Args)]
pub struct LeaveArgs {
    /// Force this node to leave the swarm, ignoring warnings
    #[arg(short, long)]
    force: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    Worker,
    Manager,
}

#[derive(Debug, Args)]
pub struct JoinTokenArgs {
    #[arg(value_enum)]
    role: Role,
    /// Only display token
    #[arg(short, long)]
    quiet: bool,
    /// Rotate join token
    #[arg(long)]
    rotate: bool,
}

fn count(s: &str) -> Result<u64, String> {
    s.parse::<u64>().map_err(|_| format!("invalid value {s}: must be a non-negative integer"))
}

pub async fn run(client: &mut Client, cmd: SwarmCmd) -> anyhow::Result<()> {
    match cmd {
        SwarmCmd::Init(a) => init(client, a).await,
        SwarmCmd::Join(a) => {
            rpc(client.engine.swarm_join(join_request(a)).await)?;
            let manager = rpc(client.engine.info(Empty {}).await).is_ok_and(|i| i.swarm.is_manager);
            println!("This node joined a swarm as a {}.", if manager { "manager" } else { "worker" });
            Ok(())
        }
        SwarmCmd::Leave(a) => {
            rpc(client.engine.swarm_leave(SwarmLeaveRequest { force: a.force }).await)?;
            println!("Node left the swarm.");
            Ok(())
        }
        SwarmCmd::JoinToken(a) => join_token(client, a).await,
        SwarmCmd::Ca(a) => ca(client, a).await,
        SwarmCmd::Update(a) => {
            let current = rpc(client.control.get_cluster(Empty {}).await)?.cluster;
            let was_locked = current.spec.encryption_config.auto_lock_managers;
            let spec = updated_spec(current.spec, &a);
            let locks = spec.encryption_config.auto_lock_managers && !was_locked;
            let req = swarm::api::control::UpdateClusterRequest {
                version: current.meta.version,
                spec,
                rotate_unlock_key: false,
            };
            rpc(client.control.update_cluster(req).await)?;
            println!("Swarm updated.");
            if locks {
                let key = rpc(client.engine.swarm_unlock_key(Empty {}).await)?.key;
                println!("{}", unlock_key_hint(&key));
            }
            Ok(())
        }
        SwarmCmd::Unlock => {
            // As Docker: asked only of a locked node; the key is read from the terminal without echo, or from
            // stdin when piped.
            match rpc(client.engine.info(Empty {}).await)?.swarm.local_node_state.as_str() {
                "locked" => {}
                "inactive" | "" => anyhow::bail!("This node is not part of a swarm"),
                _ => anyhow::bail!("swarm is not locked"),
            }
            print!("Please enter unlock key: ");
            std::io::Write::flush(&mut std::io::stdout())?;
            let key = crate::login::read_hidden_line()?;
            rpc(client.engine.swarm_unlock(SwarmUnlockRequest { key: key.trim().to_string() }).await)?;
            Ok(())
        }
        SwarmCmd::UnlockKey(a) => unlock_key(client, a).await,
    }
}

/// What Docker prints with an unlock key (`init --autolock`, `update --autolock=true`, `unlock-key`).
fn unlock_key_hint(key: &str) -> String {
    format!(
        "To unlock a swarm manager after it restarts, run the `shoal swarm unlock`\ncommand and provide the following \
         key:\n\n    {key}\n\nPlease remember to store this key in a password manager, since without it you\nwill not \
         be able to restart the manager.\n"
    )
}

/// `swarm unlock-key [-q] [--rotate]`.
async fn unlock_key(client: &mut Client, a: UnlockKeyArgs) -> anyhow::Result<()> {
    if a.rotate {
        let current = rpc(client.control.get_cluster(Empty {}).await)?.cluster;
        if !current.spec.encryption_config.auto_lock_managers {
            anyhow::bail!("cannot rotate because autolock is not turned on");
        }
        let req = swarm::api::control::UpdateClusterRequest {
            version: current.meta.version,
            spec: current.spec,
            rotate_unlock_key: true,
        };
        rpc(client.control.update_cluster(req).await)?;
        if !a.quiet {
            println!("Successfully rotated manager unlock key.\n");
        }
    }
    let key = rpc(client.engine.swarm_unlock_key(Empty {}).await)?.key;
    if key.is_empty() {
        anyhow::bail!("no unlock key is set");
    }
    if a.quiet {
        println!("{key}");
    } else {
        println!("{}", unlock_key_hint(&key));
    }
    Ok(())
}

/// The cluster spec with the flags `swarm update` was given applied; the rest is kept.
fn updated_spec(mut spec: swarm::api::ClusterSpec, a: &UpdateArgs) -> swarm::api::ClusterSpec {
    if let Some(e) = a.cert_expiry {
        spec.ca_config.node_cert_expiry = e;
    }
    if let Some(h) = a.dispatcher_heartbeat {
        spec.dispatcher.heartbeat_period = h;
    }
    if let Some(n) = a.snapshot_interval {
        spec.raft.snapshot_interval = n;
    }
    if let Some(n) = a.task_history_limit {
        spec.orchestration.task_history_retention_limit = n;
    }
    if let Some(l) = a.autolock {
        spec.encryption_config.auto_lock_managers = l;
    }
    spec
}

/// The worker or manager token and the address to join at (this manager's cluster address).
async fn token_and_addr(client: &mut Client, role: Role) -> anyhow::Result<(String, String)> {
    let cluster = rpc(client.control.get_cluster(Empty {}).await)?.cluster;
    let token = match role {
        Role::Worker => cluster.root_ca.join_tokens.worker,
        Role::Manager => cluster.root_ca.join_tokens.manager,
    };
    let info = rpc(client.engine.info(Empty {}).await)?;
    let node = rpc(client.control.get_node(GetRequest { id_or_name: info.swarm.node_id }).await)?;
    let addr = node.manager_status.map(|m| m.addr).unwrap_or_default();
    Ok((token, addr))
}

fn join_request(a: JoinArgs) -> SwarmJoinRequest {
    SwarmJoinRequest {
        remote_addr: a.remote,
        join_token: a.token,
        advertise_addr: a.advertise_addr.unwrap_or_default(),
        listen_addr: a.listen_addr.unwrap_or_default(),
        availability: match a.availability {
            Availability::Active => NodeAvailability::Active,
            Availability::Pause => NodeAvailability::Pause,
            Availability::Drain => NodeAvailability::Drain,
        },
    }
}

fn join_hint(role: Role, token: &str, addr: &str) -> String {
    let who = match role {
        Role::Worker => "a worker",
        Role::Manager => "a manager",
    };
    format!("To add {who} to this swarm, run the following command:\n\n    shoal swarm join --token {token} {addr}\n")
}

async fn init(client: &mut Client, a: InitArgs) -> anyhow::Result<()> {
    let req = SwarmInitRequest {
        advertise_addr: a.advertise_addr.unwrap_or_default(),
        listen_addr: a.listen_addr.unwrap_or_default(),
        task_history_limit: a.task_history_limit,
        dispatcher_heartbeat: a.dispatcher_heartbeat,
        snapshot_interval: a.snapshot_interval,
        cert_expiry: a.cert_expiry,
        force_new_cluster: a.force_new_cluster,
        default_addr_pool: a.default_addr_pool,
        default_addr_pool_mask_length: a.default_addr_pool_mask_length,
        autolock: a.autolock,
    };
    let resp = rpc(client.engine.swarm_init(req).await)?;
    println!("Swarm initialized: current node ({}) is now a manager.", resp.node_id);
    println!();
    // The hint is a convenience: the swarm exists even if fetching the token fails, so that is not an error.
    match token_and_addr(client, Role::Worker).await {
        Ok((token, addr)) if !token.is_empty() => println!("{}", join_hint(Role::Worker, &token, &addr)),
        _ => println!(
            "To add a worker to this swarm, run 'shoal swarm join-token worker' and follow the instructions.\n"
        ),
    }
    println!("To add a manager to this swarm, run 'shoal swarm join-token manager' and follow the instructions.");
    println!();
    if a.autolock {
        let key = rpc(client.engine.swarm_unlock_key(Empty {}).await)?.key;
        println!("{}", unlock_key_hint(&key));
    }
    Ok(())
}

/// `swarm ca`: prints the root CA certificate; `--rotate` starts a root rotation (as Docker: by bumping
/// `ca_config.force_rotate`) and, unless `--detach`, waits until every node holds a certificate from the new root.
async fn ca(client: &mut Client, a: CaArgs) -> anyhow::Result<()> {
    let current = rpc(client.control.get_cluster(Empty {}).await)?.cluster;
    if !a.rotate {
        print!("{}", current.root_ca.ca_cert_pem);
        return Ok(());
    }
    let mut spec = current.spec;
    spec.ca_config.force_rotate += 1;
    let req =
        swarm::api::control::UpdateClusterRequest { version: current.meta.version, spec, rotate_unlock_key: false };
    rpc(client.control.update_cluster(req).await)?;
    if a.detach {
        return Ok(());
    }
    let mut last = None;
    loop {
        let resp = rpc(client.control.get_cluster(Empty {}).await)?;
        let root_ca = resp.cluster.root_ca;
        if !root_ca.rotating() {
            print!("{}", root_ca.ca_cert_pem);
            return Ok(());
        }
        let progress = rotation_progress(resp.nodes, root_ca.rotation_pending.len() as u64);
        if !a.quiet && last.as_ref() != Some(&progress) {
            println!("{progress}");
            last = Some(progress);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The line `swarm ca --rotate` prints while it waits.
fn rotation_progress(nodes: u64, pending: u64) -> String {
    format!(
        "rotation in progress: {}/{nodes} nodes hold a certificate from the new root CA",
        nodes.saturating_sub(pending)
    )
}

async fn join_token(client: &mut Client, a: JoinTokenArgs) -> anyhow::Result<()> {
    if a.rotate {
        let (role, name) = match a.role {
            Role::Worker => (NodeRole::Worker, "worker"),
            Role::Manager => (NodeRole::Manager, "manager"),
        };
        rpc(client.engine.swarm_rotate_join_token(RotateJoinTokenRequest { role }).await)?;
        if !a.quiet {
            println!("Successfully rotated {name} join token.\n");
        }
    }
    let (token, addr) = token_and_addr(client, a.role).await?;
    if a.quiet {
        println!("{token}");
    } else {
        println!("{}", join_hint(a.role, &token, &addr));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swarm_update_changes_only_the_flags_given() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            a: UpdateArgs,
        }
        let t = T::try_parse_from(["x", "--cert-expiry", "1h", "--task-history-limit", "2"]).unwrap();
        let before = swarm::api::ClusterSpec {
            annotations: Default::default(),
            orchestration: Default::default(),
            raft: Default::default(),
            dispatcher: Default::default(),
            ca_config: Default::default(),
            encryption_config: Default::default(),
        };
        let after = updated_spec(before.clone(), &t.a);
        assert_eq!(after.ca_config.node_cert_expiry, Duration::from_secs(3600));
        assert_eq!(after.orchestration.task_history_retention_limit, 2);
        assert_eq!(
            (after.dispatcher, after.raft),
            (before.dispatcher.clone(), before.raft.clone()),
            "the rest is kept"
        );
        assert!(T::try_parse_from(["x", "--dispatcher-heartbeat", "soon"]).is_err());
        assert!(!after.encryption_config.auto_lock_managers, "autolock kept");
        let cases: [(&[&str], bool); 3] =
            [(&["x", "--autolock"], true), (&["x", "--autolock=true"], true), (&["x", "--autolock=false"], false)];
        for (args, want) in cases {
            let t = T::try_parse_from(args.iter().copied()).unwrap();
            assert_eq!(updated_spec(before.clone(), &t.a).encryption_config.auto_lock_managers, want, "{args:?}");
        }
        assert!(T::try_parse_from(["x", "--autolock=maybe"]).is_err());
    }

    #[test]
    fn unlock_key_takes_rotate_and_quiet_and_prints_dockers_hint() {
        let SwarmCmd::UnlockKey(a) = parse(&["unlock-key", "--rotate", "-q"]).unwrap() else {
            panic!("not unlock-key")
        };
        assert!(a.rotate && a.quiet);
        assert!(matches!(parse(&["unlock"]).unwrap(), SwarmCmd::Unlock));
        let SwarmCmd::Init(a) = parse(&["init", "--autolock"]).unwrap() else { panic!("not init") };
        assert!(a.autolock);
        let hint = unlock_key_hint("SWMKEY-1-abc");
        assert!(
            hint.starts_with("To unlock a swarm manager after it restarts, run the `shoal swarm unlock`\n"),
            "{hint}"
        );
        assert!(
            hint.contains("\n\n    SWMKEY-1-abc\n\nPlease remember to store this key in a password manager"),
            "{hint}"
        );
    }
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: SwarmCmd,
    }

    fn parse(args: &[&str]) -> Result<SwarmCmd, clap::Error> {
        Cli::try_parse_from(std::iter::once("swarm").chain(args.iter().copied())).map(|c| c.cmd)
    }

    #[test]
    fn ca_takes_rotate_detach_and_quiet() {
        let SwarmCmd::Ca(a) = parse(&["ca"]).unwrap() else { panic!("not ca") };
        assert!(!a.rotate && !a.detach && !a.quiet);
        let SwarmCmd::Ca(a) = parse(&["ca", "--rotate", "-q", "-d"]).unwrap() else { panic!("not ca") };
        assert!(a.rotate && a.detach && a.quiet);
        assert!(parse(&["ca", "--bogus"]).is_err());
        assert_eq!(rotation_progress(3, 1), "rotation in progress: 2/3 nodes hold a certificate from the new root CA");
    }

    #[test]
    fn init_takes_default_address_pools() {
        let SwarmCmd::Init(a) = parse(&[
            "init",
            "--default-addr-pool",
            "10.10.0.0/16",
            "--default-addr-pool",
            "10.20.0.0/16",
            "--default-addr-pool-mask-length",
            "26",
        ])
        .unwrap() else {
            panic!("not an init")
        };
        assert_eq!(a.default_addr_pool, ["10.10.0.0/16", "10.20.0.0/16"]);
        assert_eq!(a.default_addr_pool_mask_length, Some(26));
        assert!(parse(&["init", "--default-addr-pool-mask-length", "x"]).is_err());
    }

    #[test]
    fn join_flags_become_the_request() {
        let SwarmCmd::Join(a) = parse(&[
            "join",
            "--token",
            "SWMTKN-1-x",
            "--advertise-addr",
            "10.0.0.2",
            "--listen-addr",
            "0.0.0.0:2378",
            "--availability",
            "drain",
            "10.0.0.1:2377",
        ])
        .unwrap() else {
            panic!("not a join")
        };
        let r = join_request(a);
        assert_eq!(
            (r.remote_addr.as_str(), r.join_token.as_str(), r.advertise_addr.as_str(), r.listen_addr.as_str()),
            ("10.0.0.1:2377", "SWMTKN-1-x", "10.0.0.2", "0.0.0.0:2378")
        );
        assert_eq!(r.availability, NodeAvailability::Drain);

        let SwarmCmd::Join(a) = parse(&["join", "--token", "T", "10.0.0.1"]).unwrap() else { panic!("not a join") };
        let r = join_request(a);
        assert_eq!(
            (r.availability, r.advertise_addr.as_str(), r.listen_addr.as_str()),
            (NodeAvailability::Active, "", "")
        );

        assert!(parse(&["join", "10.0.0.1"]).is_err(), "--token is required");
        assert!(parse(&["join", "--token", "T"]).is_err(), "the manager address is required");
        let e = parse(&["join", "--token", "T", "--availability", "busy", "m"]).unwrap_err().to_string();
        assert!(e.contains("busy"), "{e}");
    }

    #[test]
    fn join_token_takes_rotate_and_quiet() {
        let SwarmCmd::JoinToken(a) = parse(&["join-token", "--rotate", "-q", "worker"]).unwrap() else {
            panic!("not join-token")
        };
        assert!(a.rotate && a.quiet && a.role == Role::Worker);
        assert_eq!(
            join_hint(Role::Worker, "SWMTKN-1-abc", "10.0.0.1:2377"),
            "To add a worker to this swarm, run the following command:\n\n    shoal swarm join --token SWMTKN-1-abc \
             10.0.0.1:2377\n"
        );
    }
}
