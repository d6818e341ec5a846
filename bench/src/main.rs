//! `paxring-bench`: benchmarks that print ratios against ceilings measured in the same run.
use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod net;
mod wal;

/// The paxring benchmark harness.
#[derive(Parser, Debug)]
#[command(name = "paxring-bench", version, about = "paxring benchmarks against same-run baselines")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The WAL against raw O_DIRECT writes with the same durability.
    Wal(wal::WalBenchArgs),
    /// The network thread against raw loopback TCP.
    Net(net::NetBenchArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Wal(args) => wal::run(args),
        Command::Net(args) => net::run(args),
    }
}
