//! `rapax-control`: the control-plane process of one rapax node.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use rapax_control::{run_control, ControlOptions};

/// The control plane of one node: pull-score heartbeat reads of every peer over its own
/// endpoints, and the verdicts handed to the node's data plane over the shared-memory channel.
/// Normally started by `rapax up`.
///
/// Example:
///   rapax-control --dir /dev/shm/rapax/local-3 --node 0
#[derive(Parser)]
#[command(
    name = "rapax-control",
    version,
    about,
    long_about,
    verbatim_doc_comment
)]
struct Args {
    /// The cluster directory (profile.toml, cluster.toml, channels).
    #[arg(long)]
    dir: PathBuf,
    /// This node's id in the cluster file.
    #[arg(long)]
    node: u8,
    /// The hardware profile (default: DIR/profile.toml).
    #[arg(long)]
    profile: Option<PathBuf>,
    /// The cluster file (default: DIR/cluster.toml).
    #[arg(long)]
    cluster: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let opts = ControlOptions {
        dir: args.dir,
        node: args.node,
        profile: args.profile,
        cluster: args.cluster,
    };
    match run_control(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rapax-control: node {}: {e}", opts.node);
            ExitCode::FAILURE
        }
    }
}
