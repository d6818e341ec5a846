//! `paxring`: run nodes and clusters, inspect WALs, run the simulator, talk to the KV example.
use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod sim_cmd;
mod wal_cmd;

/// The paxring command.
#[derive(Parser, Debug)]
#[command(name = "paxring", version, about = "Multi-Paxos log replication on io_uring")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Inspect a WAL directory: dump, verify, stat.
    Wal(wal_cmd::WalArgs),
    /// Run the deterministic simulator over many seeds.
    Sim(sim_cmd::SimArgs),
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
        Command::Wal(args) => wal_cmd::run(args),
        Command::Sim(args) => sim_cmd::run(args),
    }
}
