//! rapax data plane.
//!
//! - [`protocol`]: every protocol core of rapax, sans-I/O (events in, actions out): the log layout
//!   and entry codec, quorum arithmetic, pull-score election, permission handover, recovery, the
//!   replication fast path, view change, and the replicated KV state machine. Start reading there.
//! - [`fabric`]: the fabric contract and its backends (`sim` so far).

pub mod agent;
pub mod channel;
pub mod client;
pub mod daemon;
pub mod fabric;
pub mod mailbox;
pub mod mapped;
pub mod profile;
pub mod protocol;

/// What the unit tests of several modules share.
#[cfg(test)]
pub(crate) mod testing {
    use std::time::{Duration, Instant};

    /// Polls `ready` every millisecond until it holds; fails the test after `limit`, naming
    /// `what` it waited for.
    pub(crate) fn wait_until(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + limit;
        while !ready() {
            assert!(
                Instant::now() < deadline,
                "timed out after {limit:?} waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
