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
