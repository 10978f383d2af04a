//! The rapax protocol, in one place.
//!
//! Every core here is sans-I/O: it owns no clock, thread, socket or random source. It is driven by
//! events (a tick with the current time, a completion, a read result, a client request) and emits
//! actions (post a one-sided write or read, reply to a client). The simulator and the real daemons
//! drive the same code.
//!
//! Reading order: [`ballot`] and [`quorum`], [`layout`] (what lives in a node's memory),
//! [`election`] (who should lead), [`node`] (handover, recovery, fast path, apply, view change),
//! [`kv`] (the replicated state machine).

pub mod ballot;
pub mod election;
pub mod kv;
pub mod layout;
pub mod membership;
pub mod node;
pub mod quorum;
pub mod wordhash;

pub use ballot::{Ballot, NodeId, Slot, MAX_NODES};
