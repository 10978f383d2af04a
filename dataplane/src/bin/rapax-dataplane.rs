//! `rapax-dataplane`: the data-plane process of one rapax node.

use std::process::ExitCode;

use clap::{Parser, ValueEnum};

use rapax_dataplane::daemon::{run_dataplane, DaemonArgs, DataplaneOptions};
use rapax_dataplane::protocol::node::Start;

/// The data plane of one node: registered memory, the data mesh, client ingress, the replicated
/// state machine. Normally started by `rapax up`; peer liveness comes from the node's
/// `rapax-control` process over the shared-memory channel in the cluster directory.
///
/// Example:
///   rapax-dataplane --dir /dev/shm/rapax/local-3 --node 0
#[derive(Parser)]
#[command(
    name = "rapax-dataplane",
    version,
    about,
    long_about,
    verbatim_doc_comment
)]
struct Args {
    #[command(flatten)]
    daemon: DaemonArgs,
    /// How the node's memory starts (default: kept if its shm region exists, lost on a udp
    /// restart, fresh otherwise).
    #[arg(long, value_enum)]
    start: Option<StartArg>,
}

#[derive(Clone, Copy, ValueEnum)]
enum StartArg {
    Fresh,
    Kept,
    Lost,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let opts = DataplaneOptions {
        dir: args.daemon.dir,
        node: args.daemon.node,
        profile: args.daemon.profile,
        cluster: args.daemon.cluster,
        start: args.start.map(|s| match s {
            StartArg::Fresh => Start::Fresh,
            StartArg::Kept => Start::MemoryKept,
            StartArg::Lost => Start::MemoryLost,
        }),
    };
    match run_dataplane(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rapax-dataplane: node {}: {e}", opts.node);
            ExitCode::FAILURE
        }
    }
}
