//! `rapax-control`: the control-plane process of one rapax node.

use std::process::ExitCode;

use clap::Parser;

use rapax_control::{run_control, ControlOptions};
use rapax_dataplane::daemon::DaemonArgs;

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
    #[command(flatten)]
    daemon: DaemonArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let opts = ControlOptions {
        dir: args.daemon.dir,
        node: args.daemon.node,
        profile: args.daemon.profile,
        cluster: args.daemon.cluster,
    };
    match run_control(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rapax-control: node {}: {e}", opts.node);
            ExitCode::FAILURE
        }
    }
}
