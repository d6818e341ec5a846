//! `paxring-bench wal`: not built yet (see the open issue that owns it).
use std::process::ExitCode;

/// Arguments of `paxring-bench wal`.
#[derive(clap::Args, Debug)]
pub struct WalBenchArgs {}

/// Runs `paxring-bench wal`.
pub fn run(_args: WalBenchArgs) -> ExitCode {
    eprintln!("paxring-bench wal: not built yet");
    ExitCode::from(2)
}
