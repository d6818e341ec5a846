//! `paxring-bench`: benchmarks that print ratios against ceilings measured in the same run.
//!
//! With no subcommand it runs the cluster benchmark (quick profile): ceilings first, then a
//! 3-replica cluster of separate processes on 127.0.0.1. Owns: command-line dispatch. Never:
//! measures anything itself.
use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod budget;
mod catchup;
mod ceilings;
mod cluster;
mod compare;
mod net;
mod reads;
mod report;
mod rss;
mod wal;

/// The paxring benchmark harness.
#[derive(Parser, Debug)]
#[command(
    name = "paxring-bench",
    version,
    about = "paxring benchmarks against same-run baselines (no subcommand: the cluster benchmark)",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    cluster: cluster::ClusterArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// A 3-replica cluster on 127.0.0.1 against the disk and loopback ceilings (the default).
    Cluster(cluster::ClusterArgs),
    /// Differences between two `--json` outputs of the cluster benchmark.
    Compare(compare::CompareArgs),
    /// The WAL against raw O_DIRECT writes with the same durability.
    Wal(wal::WalBenchArgs),
    /// The network thread against raw loopback TCP.
    Net(net::NetBenchArgs),
    /// A restarted follower catching up from its peers' WALs against the disk-read and
    /// loopback-stream ceilings, and the serving leader's p99 meanwhile.
    Catchup(catchup::CatchupArgs),
    /// The WAL budget under a soak: each node's disk peak against its budget while many
    /// budgets are written, and the throughput against the same load without a budget.
    Budget(budget::BudgetArgs),
    /// Lease, read-index and log reads on a 3-replica cluster against an in-process lookup
    /// plus the client hop, and a read/write mix.
    Reads(reads::ReadsArgs),
    /// One node of the cluster benchmark (started by the benchmark itself).
    #[command(hide = true)]
    NodeRole {
        /// The node's spec, as JSON.
        spec: String,
    },
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
        None => cluster::run(cli.cluster),
        Some(Command::Cluster(args)) => cluster::run(args),
        Some(Command::Compare(args)) => compare::run(args),
        Some(Command::Wal(args)) => wal::run(args),
        Some(Command::Net(args)) => net::run(args),
        Some(Command::Catchup(args)) => catchup::run(args),
        Some(Command::Budget(args)) => budget::run(args),
        Some(Command::Reads(args)) => reads::run(args),
        Some(Command::NodeRole { spec }) => cluster::node::run(&spec),
    }
}
