//! `paxring-bench net`: not built yet (see the open issue that owns it).
use std::process::ExitCode;

/// Arguments of `paxring-bench net`.
#[derive(clap::Args, Debug)]
pub struct NetBenchArgs {}

/// Runs `paxring-bench net`.
pub fn run(_args: NetBenchArgs) -> ExitCode {
    eprintln!("paxring-bench net: not built yet");
    ExitCode::from(2)
}
