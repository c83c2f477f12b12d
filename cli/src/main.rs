//! `shoal`: the Shoal command line. It only talks to the local daemon's gRPC API over its unix socket.
//!
//! This file is the binary's edge: clap parsing, the tokio runtime, dispatch to one module per noun, and turning
//! every error into exactly one line on stderr and a non-zero exit code.

mod client;
mod image;
mod info;
mod login;
mod network;
mod node;
mod output;
mod progress;
mod secret;
mod service;
mod stack;
mod swarm;
mod template;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Parser, Subcommand};
use client::{CannotConnect, Client, DaemonError, DEFAULT_HOST};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "shoal",
    version,
    about = "Shoal: Docker-Swarm-style container orchestration",
    propagate_version = true
)]
struct Cli {
    /// Daemon socket to connect to (unix:///path or a path)
    #[arg(short = 'H', long, env = "SHOAL_HOST", global = true, default_value = DEFAULT_HOST)]
    host: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage the swarm
    #[command(subcommand)]
    Swarm(crate::swarm::SwarmCmd),
    /// Manage swarm nodes
    #[command(subcommand)]
    Node(node::NodeCmd),
    /// Manage networks
    #[command(subcommand)]
    Network(network::NetworkCmd),
    /// Manage services
    #[command(subcommand)]
    Service(Box<service::ServiceCmd>),
    /// Manage stacks (applications from compose files)
    #[command(subcommand)]
    Stack(stack::StackCmd),
    /// Manage swarm secrets
    #[command(subcommand)]
    Secret(secret::SecretCmd),
    /// Manage swarm configs
    #[command(subcommand)]
    Config(secret::ConfigCmd),
    /// Manage images
    #[command(subcommand)]
    Image(image::ImageCmd),
    /// Download an image from a registry
    Pull(image::PullArgs),
    /// Upload an image to a registry
    Push(image::PushArgs),
    /// Log in to a registry
    Login(login::LoginArgs),
    /// Log out from a registry
    Logout(login::LogoutArgs),
    /// Display system-wide information
    Info(info::InfoArgs),
    /// Show the Shoal version information
    Version,
}

/// An error that was already printed (e.g. one line per failed item of `service rm a b c`); only the exit code
/// remains to be set.
#[derive(Debug)]
pub struct Failed;

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("one or more operations failed")
    }
}

impl std::error::Error for Failed {}

/// Tallies a command over several items (`service rm a b c`): each failure is printed at once, as Docker does,
/// and the exit code is set at the end.
#[derive(Default)]
pub struct Tally {
    failed: bool,
}

impl Tally {
    /// The value, or `None` after printing the error.
    pub fn ok<T, E: std::fmt::Display>(&mut self, r: Result<T, E>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                eprintln!("{e}");
                self.failed = true;
                None
            }
        }
    }

    pub fn finish(self) -> anyhow::Result<()> {
        if self.failed {
            Err(Failed.into())
        } else {
            Ok(())
        }
    }
}

/// One line for any error: the daemon's and connection errors as Docker words them, others with their causes.
pub fn render_error(e: &anyhow::Error) -> String {
    if let Some(d) = e.downcast_ref::<DaemonError>() {
        return d.to_string();
    }
    if let Some(c) = e.downcast_ref::<CannotConnect>() {
        return c.to_string();
    }
    format!("{e:#}").replace('\n', " ")
}

/// Clap's errors are several lines (error, tip, usage); we print one, in Docker's wording for bad flag values:
/// `invalid argument "-1" for "--replicas" flag: invalid replicas value -1: must be a non-negative integer`.
fn clap_error_line(e: &clap::Error) -> String {
    if e.kind() == ErrorKind::ValueValidation {
        let arg = match e.get(ContextKind::InvalidArg) {
            Some(ContextValue::String(s)) => s.split_whitespace().next().map(str::to_string),
            _ => None,
        };
        let value = match e.get(ContextKind::InvalidValue) {
            Some(ContextValue::String(s)) => Some(s.clone()),
            _ => None,
        };
        let reason = std::error::Error::source(e).map(|s| s.to_string());
        if let (Some(arg), Some(value), Some(reason)) = (arg, value, reason) {
            if arg.starts_with('-') {
                return format!("invalid argument \"{value}\" for \"{arg}\" flag: {reason}");
            }
            return format!("invalid argument \"{value}\" for \"{arg}\": {reason}");
        }
    }
    // Otherwise: the text up to the first blank line or usage, joined into one line.
    let text = e.render().to_string();
    let mut parts = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with("Usage:") {
            break;
        }
        parts.push(line);
    }
    let joined = parts.join(" ");
    joined.strip_prefix("error: ").unwrap_or(&joined).to_string()
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    // `version` prints its client half before connecting, so it handles the connection itself.
    if let Command::Version = cli.command {
        return info::version(&cli.host).await;
    }
    // Logging out only edits the local credentials file.
    if let Command::Logout(a) = cli.command {
        return login::logout(a);
    }
    // `stack config` only reads files.
    if let Command::Stack(stack::StackCmd::Config(a)) = &cli.command {
        return stack::config(a);
    }
    let mut client = Client::connect(&cli.host).await?;
    match cli.command {
        Command::Swarm(c) => crate::swarm::run(&mut client, c).await,
        Command::Node(c) => node::run(&mut client, c).await,
        Command::Network(c) => network::run(&mut client, c).await,
        Command::Service(c) => service::run(&mut client, *c).await,
        Command::Stack(c) => stack::run(&mut client, c).await,
        Command::Secret(c) => secret::run_secret(&mut client, c).await,
        Command::Config(c) => secret::run_config(&mut client, c).await,
        Command::Image(c) => image::run(&mut client, c).await,
        Command::Pull(a) => image::pull(&mut client, a).await,
        Command::Push(a) => image::push(&mut client, a).await,
        Command::Login(a) => login::login(&mut client, a).await,
        Command::Logout(_) => unreachable!("handled above"),
        Command::Info(a) => info::info(&mut client, a).await,
        Command::Version => unreachable!("handled above"),
    }
}

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`shoal service ls | head -1`) like other Unix tools, instead of panicking
    // in println!.
    // SAFETY: resetting a signal disposition to its default before any threads exist.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    let _ = e.print();
                    ExitCode::SUCCESS
                }
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    let _ = e.print();
                    ExitCode::from(2)
                }
                _ => {
                    eprintln!("{}", clap_error_line(&e));
                    ExitCode::from(2)
                }
            };
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if e.downcast_ref::<Failed>().is_none() {
                eprintln!("{}", render_error(&e));
            }
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_err(argv: &[&str]) -> String {
        let e = Cli::try_parse_from(std::iter::once("shoal").chain(argv.iter().copied())).unwrap_err();
        clap_error_line(&e)
    }

    #[test]
    fn flag_value_errors_are_one_docker_line() {
        assert_eq!(
            parse_err(&["service", "create", "--replicas", "-1", "busybox"]),
            "invalid argument \"-1\" for \"--replicas\" flag: invalid replicas value -1: must be a non-negative integer"
        );
        assert_eq!(
            parse_err(&["service", "create", "--mount", "type=bind", "busybox"]),
            "invalid argument \"type=bind\" for \"--mount\" flag: target is required"
        );
        assert_eq!(parse_err(&["service", "create", "--restart-delay", "soon", "busybox"]).lines().count(), 1);
        let unknown = parse_err(&["service", "create", "--bogus", "busybox"]);
        assert!(unknown.contains("--bogus") && !unknown.contains('\n'), "{unknown}");
        let missing = parse_err(&["service", "create"]);
        assert!(missing.contains("required"), "{missing}");
    }

    #[test]
    fn flags_that_did_nothing_are_gone() {
        // `-l/--log-level` set no level (the CLI does not log), so it was removed rather than left to mislead.
        // (`image rm -f` came back once the daemon refused removing an image a container uses.)
        assert!(parse_err(&["--log-level", "debug", "info"]).contains("--log-level"));
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
