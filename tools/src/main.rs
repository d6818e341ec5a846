//! `paxring`: run nodes and clusters, inspect WALs, run the simulator, talk to the KV example.
use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod checkpoint_cmd;
mod cluster_cmd;
mod kv;
mod kv_cmd;
mod node_cmd;
mod sim_cmd;
mod wal_cmd;

/// The paxring command.
#[derive(Parser, Debug)]
#[command(
    name = "paxring",
    version,
    about = "Multi-Paxos log replication on io_uring"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Inspect a WAL directory: dump, verify, stat.
    Wal(wal_cmd::WalArgs),
    /// List and verify checkpoint files: list, verify.
    Checkpoint(checkpoint_cmd::CheckpointArgs),
    /// Run the deterministic simulator over many seeds.
    Sim(sim_cmd::SimArgs),
    /// Run one node with the sample KV store and its client protocol.
    Node(node_cmd::NodeArgs),
    /// Start, stop or restart a local cluster of node processes.
    Cluster(cluster_cmd::ClusterArgs),
    /// Talk to the KV store: put, get, delete, cas, id, stats, digest, load.
    Kv(kv_cmd::KvArgs),
}

fn main() -> ExitCode {
    use std::io::IsTerminal as _;
    // Colour only for a person at a terminal: a log file (node.log) must stay greppable.
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_ansi(colour)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Wal(args) => wal_cmd::run(args),
        Command::Checkpoint(args) => checkpoint_cmd::run(args),
        Command::Sim(args) => sim_cmd::run(args),
        Command::Node(args) => node_cmd::run(args),
        Command::Cluster(args) => cluster_cmd::run(args),
        Command::Kv(args) => kv_cmd::run(args),
    }
}
