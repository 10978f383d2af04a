//! The replicated KV state machine (put/get/delete/compare-and-swap) with per-client
//! de-duplication: (client id, sequence) → last reply, so a retry after fail-over executes once.

/// One KV operation. Keys and values are byte strings.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KvOp {
    Put { key: Vec<u8>, value: Vec<u8> },
    Get { key: Vec<u8> },
    Delete { key: Vec<u8> },
    /// Set `key` to `new` if its current value equals `expected` (`None`: the key is absent).
    Cas { key: Vec<u8>, expected: Option<Vec<u8>>, new: Vec<u8> },
}

/// The state machine's answer to one operation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KvReply {
    /// A put was applied.
    Stored,
    /// The value read by a get (`None`: absent).
    Value(Option<Vec<u8>>),
    /// A delete was applied; whether the key existed.
    Deleted(bool),
    /// A compare-and-swap was applied; whether it swapped.
    Cas(bool),
    /// The command was refused deterministically (malformed, over a limit, stale sequence).
    Rejected(String),
}

/// A client's command as carried in the log: who sent it, its sequence number, the operation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Command {
    pub client: u64,
    pub seq: u64,
    pub op: KvOp,
}
