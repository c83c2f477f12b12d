//! `shoald`: parses flags, sets up logging and signals, and runs the daemon. Everything else is in the library.

use clap::Parser;
use engine::config::{DaemonConfig, LogFormat};
use tokio_util::sync::CancellationToken;

/// A manager holds millions of small objects that come and go; mimalloc keeps its memory closer to the live heap
/// than glibc's allocator, which also spent over a tenth of the manager's CPU in its free lists at a million tasks.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cfg = DaemonConfig::parse();
    let filter = cfg.log_filter();
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    match cfg.log_format {
        LogFormat::Text => {
            tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init()
        }
        LogFormat::Json => tracing_subscriber::fmt().json().with_env_filter(filter).with_writer(std::io::stderr).init(),
    }
    // No transparent huge pages for shoald's own memory (the containerd it starts gets them back): mimalloc asks
    // for them, and a manager's churn of short-lived objects had the kernel zero a fresh 2 MiB page again and
    // again, a fifth of its CPU and an eighth of its memory at 100,000 tasks.
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        tracing::debug!(error = %e, "transparent huge pages stay on");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shoald: starting the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    if cfg.cleanup {
        return match rt.block_on(engine::daemon::cleanup(&cfg)) {
            Ok(n) => {
                println!("removed {n} network namespaces, devices and tables of {}", cfg.data_root.display());
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("shoald: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let result: anyhow::Result<()> = rt.block_on(async {
        let shutdown = CancellationToken::new();
        let s = shutdown.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            // SIGUSR1 logs the containerd calls made so far (the benchmark counts them per task).
            let mut usr1 = signal(SignalKind::user_defined1()).expect("SIGUSR1 handler");
            loop {
                tokio::select! {
                    _ = term.recv() => break,
                    _ = tokio::signal::ctrl_c() => break,
                    _ = usr1.recv() => engine::containerd::log_call_counts(),
                }
            }
            tracing::info!("shutting down");
            s.cancel();
        });
        engine::daemon::run(cfg, shutdown).await?;
        Ok(())
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("shoald: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
