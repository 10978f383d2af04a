//! The replicated KV state machine (put/get/delete/compare-and-swap) with per-client
//! de-duplication: (client id, sequence) → last reply, so a retry after fail-over executes once.
//!
//! Everything here is deterministic: two replicas that apply the same log bytes in the same order
//! end in the same state (same [`KvStore::digest`]) and produce the same replies, including for
//! malformed commands, over-limit keys and values, and stale sequence numbers.
//!
//! # Wire format
//!
//! All integers are little-endian. A byte string is a `u32` length followed by that many bytes,
//! at most [`MAX_FIELD_BYTES`]. An optional byte string is a flag byte (0: absent, 1: present)
//! followed, when present, by the byte string. A boolean is one byte, 0 or 1. The encoding is
//! canonical: a buffer that decodes re-encodes to the same bytes.
//!
//! ```text
//! Command  = client:u64 seq:u64 tag:u8 body
//!   tag 1 Put    key value
//!   tag 2 Get    key
//!   tag 3 Delete key
//!   tag 4 Cas    key expected:optional-bytes new
//! KvReply  = tag:u8 body
//!   tag 1 Stored
//!   tag 2 Value   optional-bytes
//!   tag 3 Deleted bool
//!   tag 4 Cas     bool
//!   tag 5 Rejected message (UTF-8 bytes)
//! ```

use imbl::OrdMap;
use std::collections::BTreeMap;

use xxhash_rust::xxh3::Xxh3;

/// One KV operation. Keys and values are byte strings.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KvOp {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Get {
        key: Vec<u8>,
    },
    Delete {
        key: Vec<u8>,
    },
    /// Set `key` to `new` if its current value equals `expected` (`None`: the key is absent).
    Cas {
        key: Vec<u8>,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
    },
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

// ---------------------------------------------------------------------------------------------
// Codec
// ---------------------------------------------------------------------------------------------

/// The largest byte string the codec accepts in any one field (a sanity bound on length
/// prefixes; the state machine's own, smaller, limits are in [`KvLimits`]).
pub const MAX_FIELD_BYTES: usize = 1 << 20;

const OP_PUT: u8 = 1;
const OP_GET: u8 = 2;
const OP_DELETE: u8 = 3;
const OP_CAS: u8 = 4;

const REPLY_STORED: u8 = 1;
const REPLY_VALUE: u8 = 2;
const REPLY_DELETED: u8 = 3;
const REPLY_CAS: u8 = 4;
const REPLY_REJECTED: u8 = 5;

/// Why a command or reply could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum KvCodecError {
    #[error("truncated input: field `{field}` needs {needed} bytes but only {available} remain")]
    Truncated {
        field: &'static str,
        needed: usize,
        available: usize,
    },
    #[error("unknown op tag {0} in command")]
    UnknownOpTag(u8),
    #[error("unknown reply tag {0} in reply")]
    UnknownReplyTag(u8),
    #[error("invalid flag byte {value} in field `{field}` (expected 0 or 1)")]
    InvalidFlag { field: &'static str, value: u8 },
    #[error("field `{field}` has length {len}, over the limit of {max} bytes")]
    LengthOverLimit {
        field: &'static str,
        len: u64,
        max: usize,
    },
    #[error("field `{field}` is not valid UTF-8")]
    InvalidUtf8 { field: &'static str },
    #[error("{0} trailing bytes after the end of the message")]
    TrailingBytes(usize),
    #[error("bad snapshot: {0}")]
    BadSnapshot(&'static str),
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    // A field this large is a bug upstream (the transport bounds requests far below 4 GiB).
    let len = u32::try_from(bytes.len()).expect("kv field longer than u32::MAX bytes");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
}

fn put_bool(out: &mut Vec<u8>, b: bool) {
    out.push(u8::from(b));
}

fn put_opt_bytes(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => out.push(0),
        Some(b) => {
            out.push(1);
            put_bytes(out, b);
        }
    }
}

/// A bounds-checked cursor over an input buffer; every read either succeeds or returns a typed
/// error naming the field, never panics.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], KvCodecError> {
        let available = self.remaining();
        if n > available {
            return Err(KvCodecError::Truncated {
                field,
                needed: n,
                available,
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, KvCodecError> {
        Ok(self.take(1, field)?[0])
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, KvCodecError> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4, field)?);
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, KvCodecError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8, field)?);
        Ok(u64::from_le_bytes(b))
    }

    fn bool(&mut self, field: &'static str) -> Result<bool, KvCodecError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(KvCodecError::InvalidFlag { field, value }),
        }
    }

    /// A length-prefixed byte string; `len_field` names the prefix, `field` the bytes.
    fn bytes(
        &mut self,
        len_field: &'static str,
        field: &'static str,
    ) -> Result<&'a [u8], KvCodecError> {
        let len = self.u32(len_field)?;
        if u64::from(len) > MAX_FIELD_BYTES as u64 {
            return Err(KvCodecError::LengthOverLimit {
                field,
                len: u64::from(len),
                max: MAX_FIELD_BYTES,
            });
        }
        // `len` is at most MAX_FIELD_BYTES, so it fits a usize.
        self.take(len as usize, field)
    }

    fn opt_bytes(
        &mut self,
        flag_field: &'static str,
        len_field: &'static str,
        field: &'static str,
    ) -> Result<Option<&'a [u8]>, KvCodecError> {
        if self.bool(flag_field)? {
            Ok(Some(self.bytes(len_field, field)?))
        } else {
            Ok(None)
        }
    }

    fn finish(&self) -> Result<(), KvCodecError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(KvCodecError::TrailingBytes(n)),
        }
    }
}

impl Command {
    /// The length of [`Command::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        let field = |b: &[u8]| 4 + b.len();
        17 + match &self.op {
            KvOp::Put { key, value } => field(key) + field(value),
            KvOp::Get { key } | KvOp::Delete { key } => field(key),
            KvOp::Cas { key, expected, new } => {
                field(key) + 1 + expected.as_deref().map_or(0, field) + field(new)
            }
        }
    }

    /// Append the encoding of this command to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_u64(out, self.client);
        put_u64(out, self.seq);
        match &self.op {
            KvOp::Put { key, value } => {
                out.push(OP_PUT);
                put_bytes(out, key);
                put_bytes(out, value);
            }
            KvOp::Get { key } => {
                out.push(OP_GET);
                put_bytes(out, key);
            }
            KvOp::Delete { key } => {
                out.push(OP_DELETE);
                put_bytes(out, key);
            }
            KvOp::Cas { key, expected, new } => {
                out.push(OP_CAS);
                put_bytes(out, key);
                put_opt_bytes(out, expected.as_deref());
                put_bytes(out, new);
            }
        }
    }

    /// Decode exactly one command occupying all of `buf`. Never panics.
    pub fn decode(buf: &[u8]) -> Result<Command, KvCodecError> {
        let (client, seq, op) = Self::parse(buf)?;
        let op = match op {
            OpRef::Put { key, value } => KvOp::Put {
                key: key.to_vec(),
                value: value.to_vec(),
            },
            OpRef::Get { key } => KvOp::Get { key: key.to_vec() },
            OpRef::Delete { key } => KvOp::Delete { key: key.to_vec() },
            OpRef::Cas { key, expected, new } => KvOp::Cas {
                key: key.to_vec(),
                expected: expected.map(<[u8]>::to_vec),
                new: new.to_vec(),
            },
        };
        Ok(Command { client, seq, op })
    }

    /// The client and sequence number of the command occupying all of `buf`, checked as
    /// [`Command::decode`] checks it, without copying its keys and values (the data plane's
    /// door). Never panics.
    pub fn check(buf: &[u8]) -> Result<(u64, u64), KvCodecError> {
        Self::parse(buf).map(|(client, seq, _)| (client, seq))
    }

    fn parse(buf: &[u8]) -> Result<(u64, u64, OpRef<'_>), KvCodecError> {
        let mut r = Reader::new(buf);
        let client = r.u64("client")?;
        let seq = r.u64("seq")?;
        let op = match r.u8("op tag")? {
            OP_PUT => {
                let key = r.bytes("key length", "key")?;
                let value = r.bytes("value length", "value")?;
                OpRef::Put { key, value }
            }
            OP_GET => OpRef::Get {
                key: r.bytes("key length", "key")?,
            },
            OP_DELETE => OpRef::Delete {
                key: r.bytes("key length", "key")?,
            },
            OP_CAS => {
                let key = r.bytes("key length", "key")?;
                let expected = r.opt_bytes("expected flag", "expected length", "expected")?;
                let new = r.bytes("new length", "new")?;
                OpRef::Cas { key, expected, new }
            }
            tag => return Err(KvCodecError::UnknownOpTag(tag)),
        };
        r.finish()?;
        Ok((client, seq, op))
    }
}

/// A decoded operation borrowing its keys and values from the encoded command.
#[derive(Clone, Copy)]
enum OpRef<'a> {
    Put {
        key: &'a [u8],
        value: &'a [u8],
    },
    Get {
        key: &'a [u8],
    },
    Delete {
        key: &'a [u8],
    },
    Cas {
        key: &'a [u8],
        expected: Option<&'a [u8]>,
        new: &'a [u8],
    },
}

impl<'a> OpRef<'a> {
    fn of(op: &'a KvOp) -> OpRef<'a> {
        match op {
            KvOp::Put { key, value } => OpRef::Put { key, value },
            KvOp::Get { key } => OpRef::Get { key },
            KvOp::Delete { key } => OpRef::Delete { key },
            KvOp::Cas { key, expected, new } => OpRef::Cas {
                key,
                expected: expected.as_deref(),
                new,
            },
        }
    }
}

impl KvReply {
    /// Append the encoding of this reply to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            KvReply::Stored => out.push(REPLY_STORED),
            KvReply::Value(v) => {
                out.push(REPLY_VALUE);
                put_opt_bytes(out, v.as_deref());
            }
            KvReply::Deleted(existed) => {
                out.push(REPLY_DELETED);
                put_bool(out, *existed);
            }
            KvReply::Cas(swapped) => {
                out.push(REPLY_CAS);
                put_bool(out, *swapped);
            }
            KvReply::Rejected(msg) => {
                out.push(REPLY_REJECTED);
                put_bytes(out, msg.as_bytes());
            }
        }
    }

    /// Decode exactly one reply occupying all of `buf`. Never panics.
    pub fn decode(buf: &[u8]) -> Result<KvReply, KvCodecError> {
        let mut r = Reader::new(buf);
        let reply = match r.u8("reply tag")? {
            REPLY_STORED => KvReply::Stored,
            REPLY_VALUE => KvReply::Value(
                r.opt_bytes("value flag", "value length", "value")?
                    .map(<[u8]>::to_vec),
            ),
            REPLY_DELETED => KvReply::Deleted(r.bool("deleted flag")?),
            REPLY_CAS => KvReply::Cas(r.bool("cas flag")?),
            REPLY_REJECTED => {
                let msg = r.bytes("message length", "message")?;
                let msg = std::str::from_utf8(msg)
                    .map_err(|_| KvCodecError::InvalidUtf8 { field: "message" })?;
                KvReply::Rejected(msg.to_owned())
            }
            tag => return Err(KvCodecError::UnknownReplyTag(tag)),
        };
        r.finish()?;
        Ok(reply)
    }
}

// ---------------------------------------------------------------------------------------------
// State machine
// ---------------------------------------------------------------------------------------------

/// Size limits the state machine enforces (deterministically: an over-limit command is
/// `Rejected` on every replica).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KvLimits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
}

impl Default for KvLimits {
    fn default() -> Self {
        KvLimits {
            max_key_bytes: 256,
            max_value_bytes: 4096,
        }
    }
}

/// The outcome of applying one log entry's bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Applied {
    /// The command decoded and was applied (or answered from the de-duplication table).
    Reply {
        client: u64,
        seq: u64,
        reply: KvReply,
    },
    /// The bytes were not a command; the state is unchanged. Every replica reports the same.
    Malformed(KvCodecError),
}

/// The replicated KV store: the map plus the per-client de-duplication table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvStore {
    /// Structurally shared: [`KvStore::freeze`] is a copy of the root, not of the keys.
    map: OrdMap<Vec<u8>, Vec<u8>>,
    /// client id → (last applied sequence, its reply).
    sessions: BTreeMap<u64, (u64, KvReply)>,
    limits: KvLimits,
}

impl KvStore {
    pub fn new(limits: KvLimits) -> Self {
        KvStore {
            map: OrdMap::new(),
            sessions: BTreeMap::new(),
            limits,
        }
    }

    pub fn limits(&self) -> KvLimits {
        self.limits
    }

    /// Apply one command, exactly once per (client, seq):
    /// - seq 0 is invalid and rejected (not recorded);
    /// - the client's last applied seq returns the stored reply without executing again;
    /// - a lower seq is rejected as stale without executing (not recorded);
    /// - a higher seq executes (or is rejected for a limit), and its reply is recorded.
    pub fn apply(&mut self, cmd: &Command) -> KvReply {
        self.apply_op(cmd.client, cmd.seq, OpRef::of(&cmd.op))
    }

    /// [`KvStore::apply`] on an operation borrowed from its encoding (the log's bytes): a put
    /// over an existing key allocates nothing.
    fn apply_op(&mut self, client: u64, seq: u64, op: OpRef<'_>) -> KvReply {
        if seq == 0 {
            return KvReply::Rejected(format!(
                "invalid sequence 0 from client {client}: sequences start at 1"
            ));
        }
        if let Some((last, reply)) = self.sessions.get(&client) {
            if seq == *last {
                return reply.clone();
            }
            if seq < *last {
                return KvReply::Rejected(format!(
                    "stale sequence {seq} from client {client}: already applied {last}"
                ));
            }
        }
        let reply = match self.check_limits(&op) {
            Err(msg) => KvReply::Rejected(msg),
            Ok(()) => self.execute(op),
        };
        match self.sessions.get_mut(&client) {
            Some(s) => {
                s.0 = seq;
                s.1.clone_from(&reply);
            }
            None => {
                self.sessions.insert(client, (seq, reply.clone()));
            }
        }
        reply
    }

    /// Decode and apply one log entry's payload. A malformed payload changes nothing and yields
    /// the same [`Applied::Malformed`] on every replica.
    pub fn apply_bytes(&mut self, bytes: &[u8]) -> Applied {
        match Command::parse(bytes) {
            Ok((client, seq, op)) => Applied::Reply {
                client,
                seq,
                reply: self.apply_op(client, seq, op),
            },
            Err(e) => Applied::Malformed(e),
        }
    }

    fn check_limits(&self, op: &OpRef<'_>) -> Result<(), String> {
        let check = |what: &str, len: usize, max: usize| {
            if len > max {
                Err(format!(
                    "{what} of {len} bytes is over the limit of {max} bytes"
                ))
            } else {
                Ok(())
            }
        };
        let (max_k, max_v) = (self.limits.max_key_bytes, self.limits.max_value_bytes);
        match *op {
            OpRef::Put { key, value } => {
                check("key", key.len(), max_k)?;
                check("value", value.len(), max_v)
            }
            OpRef::Get { key } | OpRef::Delete { key } => check("key", key.len(), max_k),
            OpRef::Cas { key, expected, new } => {
                check("key", key.len(), max_k)?;
                if let Some(expected) = expected {
                    check("expected value", expected.len(), max_v)?;
                }
                check("new value", new.len(), max_v)
            }
        }
    }

    fn execute(&mut self, op: OpRef<'_>) -> KvReply {
        match op {
            OpRef::Put { key, value } => {
                self.store(key, value);
                KvReply::Stored
            }
            OpRef::Get { key } => KvReply::Value(self.map.get(key).cloned()),
            OpRef::Delete { key } => KvReply::Deleted(self.map.remove(key).is_some()),
            OpRef::Cas { key, expected, new } => {
                if self.map.get(key).map(Vec::as_slice) == expected {
                    self.store(key, new);
                    KvReply::Cas(true)
                } else {
                    KvReply::Cas(false)
                }
            }
        }
    }

    /// Sets `key` to `value`; overwriting a key reuses its value's buffer (no allocation).
    fn store(&mut self, key: &[u8], value: &[u8]) {
        match self.map.get_mut(key) {
            Some(v) => {
                v.clear();
                v.extend_from_slice(value);
            }
            None => {
                self.map.insert(key.to_vec(), value.to_vec());
            }
        }
    }

    /// The value stored under `key`, read locally (not through the log).
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.map.get(key).map(Vec::as_slice)
    }

    /// The number of keys stored.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The client's last applied sequence number and its reply.
    pub fn last_reply(&self, client: u64) -> Option<(u64, &KvReply)> {
        self.sessions.get(&client).map(|(seq, reply)| (*seq, reply))
    }

    /// A deterministic xxh3 digest of the whole replicated state: the digest of its snapshot
    /// encoding ([`KvStore::write_state`]). The limits are configuration, not state.
    pub fn digest(&self) -> u64 {
        let mut h = Xxh3::new();
        self.write_state(&mut |b| h.update(b));
        h.digest()
    }

    /// The whole replicated state, deterministically encoded: the map and the de-duplication
    /// table, each in key order, every field length-prefixed so distinct states never give the
    /// same bytes. Replicas with equal state give equal bytes.
    pub fn snapshot(&self, out: &mut Vec<u8>) {
        self.snapshot_with(out, &mut || {});
    }

    /// [`KvStore::snapshot`], calling `progress` every megabyte; returns the digest (the
    /// digest is that of these bytes).
    pub fn snapshot_with(&self, out: &mut Vec<u8>, progress: &mut dyn FnMut()) -> u64 {
        encode_state(&self.map, &self.sessions, out, progress)
    }

    fn write_state(&self, sink: &mut impl FnMut(&[u8])) {
        write_state(&self.map, &self.sessions, sink);
    }

    /// The state as it is now, to encode later (on another thread): O(1) for the map, whose
    /// nodes the copy shares until either side changes them.
    pub fn freeze(&self) -> FrozenKv {
        FrozenKv {
            map: self.map.clone(),
            sessions: self.sessions.clone(),
        }
    }

    /// Replaces the state with the one `bytes` encode (as [`KvStore::snapshot`] wrote it). On
    /// any error the state is unchanged. Never panics.
    pub fn restore(&mut self, bytes: &[u8]) -> Result<(), KvCodecError> {
        self.restore_with(bytes, &mut || {})
    }

    /// [`KvStore::restore`], calling `progress` every 4096 keys.
    pub fn restore_with(
        &mut self,
        bytes: &[u8],
        progress: &mut dyn FnMut(),
    ) -> Result<(), KvCodecError> {
        let mut r = Reader::new(bytes);
        if r.take(SNAPSHOT_MAGIC.len(), "snapshot magic")? != SNAPSHOT_MAGIC {
            return Err(KvCodecError::BadSnapshot("not a rapax KV snapshot"));
        }
        let mut map = OrdMap::new();
        let keys = r.u64("key count")?;
        let mut last: Option<&[u8]> = None;
        for i in 0..keys {
            if i % 4096 == 4095 {
                progress();
            }
            let k = r.bytes("key length", "key")?;
            let v = r.bytes("value length", "value")?;
            if last.is_some_and(|last| last >= k) {
                return Err(KvCodecError::BadSnapshot("keys out of order"));
            }
            last = Some(k);
            map.insert(k.to_vec(), v.to_vec());
        }
        let mut sessions = BTreeMap::new();
        let clients = r.u64("client count")?;
        for _ in 0..clients {
            let client = r.u64("client")?;
            let seq = r.u64("sequence")?;
            let reply = KvReply::decode(r.bytes("reply length", "reply")?)?;
            if sessions
                .last_key_value()
                .is_some_and(|(&last, _)| last >= client)
            {
                return Err(KvCodecError::BadSnapshot("clients out of order"));
            }
            sessions.insert(client, (seq, reply));
        }
        r.finish()?;
        self.map = map;
        self.sessions = sessions;
        Ok(())
    }
}

/// The encoding of a state (see [`KvStore::snapshot`]).
fn write_state(
    map: &OrdMap<Vec<u8>, Vec<u8>>,
    sessions: &BTreeMap<u64, (u64, KvReply)>,
    sink: &mut impl FnMut(&[u8]),
) {
    let mut scratch = Vec::new();
    sink(SNAPSHOT_MAGIC);
    sink(&(map.len() as u64).to_le_bytes());
    for (k, v) in map {
        scratch.clear();
        put_bytes(&mut scratch, k);
        put_bytes(&mut scratch, v);
        sink(&scratch);
    }
    sink(&(sessions.len() as u64).to_le_bytes());
    for (client, (seq, reply)) in sessions {
        scratch.clear();
        scratch.extend_from_slice(&client.to_le_bytes());
        scratch.extend_from_slice(&seq.to_le_bytes());
        let mut r = Vec::new();
        reply.encode(&mut r);
        put_bytes(&mut scratch, &r);
        sink(&scratch);
    }
}

/// Encodes `map` and `sessions` into `out`, calling `progress` every megabyte; the digest.
fn encode_state(
    map: &OrdMap<Vec<u8>, Vec<u8>>,
    sessions: &BTreeMap<u64, (u64, KvReply)>,
    out: &mut Vec<u8>,
    progress: &mut dyn FnMut(),
) -> u64 {
    out.clear();
    let mut next = 1 << 20;
    write_state(map, sessions, &mut |b| {
        out.extend_from_slice(b);
        if out.len() >= next {
            next += 1 << 20;
            progress();
        }
    });
    xxhash_rust::xxh3::xxh3_64(out)
}

/// A KV state frozen by [`KvStore::freeze`].
#[derive(Clone, Debug)]
pub struct FrozenKv {
    map: OrdMap<Vec<u8>, Vec<u8>>,
    sessions: BTreeMap<u64, (u64, KvReply)>,
}

impl super::node::FrozenState for FrozenKv {
    fn encode(&self, out: &mut Vec<u8>, progress: &mut dyn FnMut()) -> u64 {
        encode_state(&self.map, &self.sessions, out, progress)
    }
}

/// The first bytes of every KV snapshot (and of the digest's input).
const SNAPSHOT_MAGIC: &[u8] = b"rapax-kv-v2";

impl Default for KvStore {
    fn default() -> Self {
        KvStore::new(KvLimits::default())
    }
}

/// The node core applies committed commands to the KV store through this.
impl super::node::StateMachine for KvStore {
    fn apply(&mut self, command: &[u8]) -> Option<(u64, u64, Vec<u8>)> {
        match self.apply_bytes(command) {
            Applied::Reply { client, seq, reply } => {
                let mut out = Vec::new();
                reply.encode(&mut out);
                Some((client, seq, out))
            }
            Applied::Malformed(_) => None,
        }
    }

    fn digest(&self) -> u64 {
        KvStore::digest(self)
    }

    fn snapshot(&self, out: &mut Vec<u8>, progress: &mut dyn FnMut()) -> u64 {
        KvStore::snapshot_with(self, out, progress)
    }

    fn restore(&mut self, bytes: &[u8], progress: &mut dyn FnMut()) -> Result<(), String> {
        KvStore::restore_with(self, bytes, progress).map_err(|e| e.to_string())
    }

    fn freeze(&self) -> Box<dyn super::node::FrozenState> {
        Box::new(KvStore::freeze(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(client: u64, seq: u64, op: KvOp) -> Command {
        Command { client, seq, op }
    }

    fn put(k: &[u8], v: &[u8]) -> KvOp {
        KvOp::Put {
            key: k.to_vec(),
            value: v.to_vec(),
        }
    }

    fn get(k: &[u8]) -> KvOp {
        KvOp::Get { key: k.to_vec() }
    }

    fn del(k: &[u8]) -> KvOp {
        KvOp::Delete { key: k.to_vec() }
    }

    fn cas(k: &[u8], expected: Option<&[u8]>, new: &[u8]) -> KvOp {
        KvOp::Cas {
            key: k.to_vec(),
            expected: expected.map(<[u8]>::to_vec),
            new: new.to_vec(),
        }
    }

    fn is_rejected(r: &KvReply) -> bool {
        matches!(r, KvReply::Rejected(_))
    }

    /// A seeded generator for the garbage tests.
    struct Gen(rand_xoshiro::Xoshiro256PlusPlus);

    impl Gen {
        fn new(seed: u64) -> Gen {
            use rand::SeedableRng;
            Gen(rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(seed))
        }

        fn next(&mut self) -> u64 {
            rand::RngCore::next_u64(&mut self.0)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn bytes(&mut self, max_len: u64) -> Vec<u8> {
            let len = self.below(max_len + 1);
            (0..len).map(|_| self.next() as u8).collect()
        }
    }

    fn sample_commands() -> Vec<Command> {
        let big = vec![0xabu8; 300];
        vec![
            cmd(1, 1, put(b"", b"")),
            cmd(1, 2, put(b"k", b"value")),
            cmd(u64::MAX, u64::MAX, put(&big, &big)),
            cmd(2, 1, get(b"")),
            cmd(2, 2, get(b"key")),
            cmd(3, 7, del(b"")),
            cmd(3, 8, del(b"gone")),
            cmd(4, 1, cas(b"k", None, b"")),
            cmd(4, 2, cas(b"k", None, b"new")),
            cmd(4, 3, cas(b"k", Some(b""), b"x")),
            cmd(4, 4, cas(b"", Some(b"old"), b"")),
            cmd(0, 9, cas(&big, Some(&big), &big)),
        ]
    }

    fn sample_replies() -> Vec<KvReply> {
        vec![
            KvReply::Stored,
            KvReply::Value(None),
            KvReply::Value(Some(vec![])),
            KvReply::Value(Some(b"v".to_vec())),
            KvReply::Deleted(false),
            KvReply::Deleted(true),
            KvReply::Cas(false),
            KvReply::Cas(true),
            KvReply::Rejected(String::new()),
            KvReply::Rejected("stale sequence 3 — ünïcode".into()),
        ]
    }

    fn encoded<T>(x: &T, enc: impl Fn(&T, &mut Vec<u8>)) -> Vec<u8> {
        let mut out = Vec::new();
        enc(x, &mut out);
        out
    }

    // --- codec -----------------------------------------------------------------------------

    #[test]
    fn command_codec_round_trips() {
        for c in sample_commands() {
            let buf = encoded(&c, Command::encode);
            assert_eq!(Command::decode(&buf), Ok(c.clone()), "{c:?}");
            assert_eq!(buf.len(), c.encoded_len(), "{c:?}");
        }
    }

    #[test]
    fn reply_codec_round_trips() {
        for r in sample_replies() {
            let buf = encoded(&r, KvReply::encode);
            assert_eq!(KvReply::decode(&buf), Ok(r.clone()), "{r:?}");
        }
    }

    #[test]
    fn encode_appends_without_clearing() {
        let mut out = vec![0xee];
        KvReply::Stored.encode(&mut out);
        assert_eq!(out, vec![0xee, REPLY_STORED]);
    }

    #[test]
    fn command_encoding_layout_is_little_endian_and_length_prefixed() {
        let buf = encoded(&cmd(0x0102, 3, put(b"ab", b"c")), Command::encode);
        let mut want = Vec::new();
        want.extend_from_slice(&[0x02, 0x01, 0, 0, 0, 0, 0, 0]);
        want.extend_from_slice(&[3, 0, 0, 0, 0, 0, 0, 0]);
        want.push(OP_PUT);
        want.extend_from_slice(&[2, 0, 0, 0, b'a', b'b']);
        want.extend_from_slice(&[1, 0, 0, 0, b'c']);
        assert_eq!(buf, want);
    }

    #[test]
    fn every_strict_prefix_is_truncated() {
        for c in sample_commands() {
            let buf = encoded(&c, Command::encode);
            for i in 0..buf.len() {
                match Command::decode(&buf[..i]) {
                    Err(KvCodecError::Truncated { .. }) => {}
                    other => panic!("prefix {i} of {c:?}: {other:?}"),
                }
            }
        }
        for r in sample_replies() {
            let buf = encoded(&r, KvReply::encode);
            for i in 0..buf.len() {
                match KvReply::decode(&buf[..i]) {
                    Err(KvCodecError::Truncated { .. }) => {}
                    other => panic!("prefix {i} of {r:?}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut buf = encoded(&cmd(1, 1, get(b"k")), Command::encode);
        buf.extend_from_slice(&[0, 0]);
        assert_eq!(Command::decode(&buf), Err(KvCodecError::TrailingBytes(2)));
        let mut buf = encoded(&KvReply::Cas(true), KvReply::encode);
        buf.push(9);
        assert_eq!(KvReply::decode(&buf), Err(KvCodecError::TrailingBytes(1)));
    }

    #[test]
    fn specific_decode_errors() {
        let mut head = Vec::new();
        put_u64(&mut head, 1);
        put_u64(&mut head, 1);

        // Unknown op tag.
        let mut b = head.clone();
        b.push(0x7f);
        assert_eq!(Command::decode(&b), Err(KvCodecError::UnknownOpTag(0x7f)));
        // Unknown reply tag.
        assert_eq!(KvReply::decode(&[0]), Err(KvCodecError::UnknownReplyTag(0)));
        // A length prefix over the codec limit is refused before looking for the bytes.
        let mut b = head.clone();
        b.push(OP_GET);
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            Command::decode(&b),
            Err(KvCodecError::LengthOverLimit {
                field: "key",
                len: u64::from(u32::MAX),
                max: MAX_FIELD_BYTES,
            })
        );
        // A length within the limit but past the end is truncation of that field.
        let mut b = head.clone();
        b.push(OP_GET);
        b.extend_from_slice(&5u32.to_le_bytes());
        b.extend_from_slice(b"ab");
        assert_eq!(
            Command::decode(&b),
            Err(KvCodecError::Truncated {
                field: "key",
                needed: 5,
                available: 2,
            })
        );
        // Bad option flag in a CAS.
        let mut b = head.clone();
        b.push(OP_CAS);
        put_bytes(&mut b, b"k");
        b.push(2);
        assert_eq!(
            Command::decode(&b),
            Err(KvCodecError::InvalidFlag {
                field: "expected flag",
                value: 2,
            })
        );
        // Bad boolean in a reply.
        assert_eq!(
            KvReply::decode(&[REPLY_DELETED, 3]),
            Err(KvCodecError::InvalidFlag {
                field: "deleted flag",
                value: 3,
            })
        );
        // Non-UTF-8 rejection message.
        let mut b = vec![REPLY_REJECTED];
        put_bytes(&mut b, &[0xff, 0xfe]);
        assert_eq!(
            KvReply::decode(&b),
            Err(KvCodecError::InvalidUtf8 { field: "message" })
        );
    }

    #[test]
    fn error_messages_name_the_problem() {
        let msg = KvCodecError::Truncated {
            field: "seq",
            needed: 8,
            available: 3,
        }
        .to_string();
        assert!(
            msg.contains("seq") && msg.contains('8') && msg.contains('3'),
            "{msg}"
        );
        assert!(KvCodecError::UnknownOpTag(200).to_string().contains("200"));
        assert!(KvCodecError::TrailingBytes(4)
            .to_string()
            .contains("4 trailing"));
        let msg = KvCodecError::LengthOverLimit {
            field: "value",
            len: 9_999_999,
            max: MAX_FIELD_BYTES,
        }
        .to_string();
        assert!(msg.contains("value") && msg.contains("9999999"), "{msg}");
    }

    #[test]
    fn garbage_never_panics_and_successes_are_canonical() {
        let mut g = Gen::new(0x5eed);
        let valid: Vec<Vec<u8>> = sample_commands()
            .iter()
            .map(|c| encoded(c, Command::encode))
            .collect();
        for i in 0..20_000 {
            // Half pure noise, half mutated valid encodings (which reach the deeper fields).
            let buf = if i % 2 == 0 {
                g.bytes(64)
            } else {
                let mut b = valid[g.below(valid.len() as u64) as usize].clone();
                for _ in 0..=g.below(3) {
                    let at = g.below(b.len() as u64) as usize;
                    b[at] = g.next() as u8;
                }
                if g.below(4) == 0 {
                    let cut = g.below(b.len() as u64 + 1) as usize;
                    b.truncate(cut);
                }
                b
            };
            let decoded = Command::decode(&buf);
            // The door's check agrees with decoding on every input, success or error.
            assert_eq!(
                Command::check(&buf),
                decoded
                    .as_ref()
                    .map(|c| (c.client, c.seq))
                    .map_err(Clone::clone),
                "check and decode disagree on {buf:?}"
            );
            if let Ok(c) = decoded {
                assert_eq!(encoded(&c, Command::encode), buf, "non-canonical");
            }
            if let Ok(r) = KvReply::decode(&buf) {
                assert_eq!(encoded(&r, KvReply::encode), buf, "non-canonical");
            }
            // And a store fed garbage stays consistent.
            let mut s = KvStore::default();
            let _ = s.apply_bytes(&buf);
        }
    }

    // --- state machine -----------------------------------------------------------------------

    #[test]
    fn put_get_delete() {
        let mut s = KvStore::default();
        assert!(s.is_empty());
        assert_eq!(s.apply(&cmd(1, 1, get(b"a"))), KvReply::Value(None));
        assert_eq!(s.apply(&cmd(1, 2, put(b"a", b"1"))), KvReply::Stored);
        assert_eq!(
            s.apply(&cmd(1, 3, get(b"a"))),
            KvReply::Value(Some(b"1".to_vec()))
        );
        assert_eq!(s.apply(&cmd(1, 4, put(b"a", b"2"))), KvReply::Stored);
        assert_eq!(s.get(b"a"), Some(&b"2"[..]));
        assert_eq!(s.apply(&cmd(1, 5, put(b"", b""))), KvReply::Stored);
        assert_eq!(s.get(b""), Some(&b""[..]));
        assert_eq!(s.len(), 2);
        assert_eq!(s.apply(&cmd(1, 6, del(b"a"))), KvReply::Deleted(true));
        assert_eq!(s.apply(&cmd(1, 7, del(b"a"))), KvReply::Deleted(false));
        assert_eq!(s.get(b"a"), None);
        assert_eq!(s.len(), 1);
        assert!(!s.is_empty());
    }

    #[test]
    fn cas_semantics() {
        let mut s = KvStore::default();
        // expected None: succeeds only while the key is absent.
        assert_eq!(
            s.apply(&cmd(1, 1, cas(b"k", None, b"v1"))),
            KvReply::Cas(true)
        );
        assert_eq!(s.get(b"k"), Some(&b"v1"[..]));
        assert_eq!(
            s.apply(&cmd(1, 2, cas(b"k", None, b"v2"))),
            KvReply::Cas(false)
        );
        assert_eq!(s.get(b"k"), Some(&b"v1"[..]));
        // expected Some: succeeds only on an exact match.
        assert_eq!(
            s.apply(&cmd(1, 3, cas(b"k", Some(b"zz"), b"v2"))),
            KvReply::Cas(false)
        );
        assert_eq!(s.get(b"k"), Some(&b"v1"[..]));
        assert_eq!(
            s.apply(&cmd(1, 4, cas(b"k", Some(b"v1"), b"v2"))),
            KvReply::Cas(true)
        );
        assert_eq!(s.get(b"k"), Some(&b"v2"[..]));
        // expected Some on an absent key fails; an empty value is not absence.
        assert_eq!(
            s.apply(&cmd(1, 5, cas(b"n", Some(b""), b"x"))),
            KvReply::Cas(false)
        );
        assert_eq!(s.get(b"n"), None);
        assert_eq!(s.apply(&cmd(1, 6, put(b"e", b""))), KvReply::Stored);
        assert_eq!(
            s.apply(&cmd(1, 7, cas(b"e", None, b"x"))),
            KvReply::Cas(false)
        );
        assert_eq!(
            s.apply(&cmd(1, 8, cas(b"e", Some(b""), b"x"))),
            KvReply::Cas(true)
        );
        assert_eq!(s.get(b"e"), Some(&b"x"[..]));
    }

    #[test]
    fn retry_returns_first_reply_without_executing_again() {
        let mut s = KvStore::default();
        assert_eq!(s.apply(&cmd(1, 1, put(b"k", b"a"))), KvReply::Stored);
        // Client 2 swaps a → b.
        let c = cmd(2, 1, cas(b"k", Some(b"a"), b"b"));
        assert_eq!(s.apply(&c), KvReply::Cas(true));
        // Client 1 sets the key back to a.
        assert_eq!(s.apply(&cmd(1, 2, put(b"k", b"a"))), KvReply::Stored);
        let digest = s.digest();
        // Client 2's retry (after a fail-over, say) must not swap again.
        assert_eq!(s.apply(&c), KvReply::Cas(true));
        assert_eq!(s.get(b"k"), Some(&b"a"[..]), "the retry must not execute");
        assert_eq!(s.digest(), digest);
        assert_eq!(s.last_reply(2), Some((1, &KvReply::Cas(true))));

        // A retried put after someone else's delete does not re-create the key.
        assert_eq!(s.apply(&cmd(3, 5, put(b"p", b"1"))), KvReply::Stored);
        assert_eq!(s.apply(&cmd(4, 1, del(b"p"))), KvReply::Deleted(true));
        assert_eq!(s.apply(&cmd(3, 5, put(b"p", b"1"))), KvReply::Stored);
        assert_eq!(s.get(b"p"), None);
        // Even a retry with a different op under the same seq answers with the recorded reply.
        assert_eq!(s.apply(&cmd(3, 5, del(b"k"))), KvReply::Stored);
        assert_eq!(s.get(b"k"), Some(&b"a"[..]));
    }

    #[test]
    fn stale_and_zero_sequences_are_rejected_without_executing() {
        let mut s = KvStore::default();
        assert_eq!(s.apply(&cmd(1, 3, put(b"k", b"3"))), KvReply::Stored);
        let r = s.apply(&cmd(1, 2, put(b"k", b"2")));
        match &r {
            KvReply::Rejected(m) => assert!(m.contains("stale sequence 2"), "{m}"),
            other => panic!("expected a rejection, got {other:?}"),
        }
        assert_eq!(s.get(b"k"), Some(&b"3"[..]));
        // The stale attempt does not replace the recorded reply.
        assert_eq!(s.last_reply(1), Some((3, &KvReply::Stored)));

        assert!(is_rejected(&s.apply(&cmd(9, 0, put(b"z", b"0")))));
        assert_eq!(s.get(b"z"), None);
        assert_eq!(s.last_reply(9), None);
        assert!(is_rejected(&s.apply(&cmd(1, 0, put(b"k", b"0")))));
        assert_eq!(s.last_reply(1), Some((3, &KvReply::Stored)));

        // Gaps are allowed: a higher seq executes.
        assert_eq!(
            s.apply(&cmd(1, 10, get(b"k"))),
            KvReply::Value(Some(b"3".to_vec()))
        );
        assert_eq!(s.last_reply(1).map(|(seq, _)| seq), Some(10));
    }

    #[test]
    fn limits_reject_deterministically_and_are_recorded() {
        let limits = KvLimits {
            max_key_bytes: 4,
            max_value_bytes: 8,
        };
        let mut s = KvStore::new(limits);
        assert_eq!(s.limits(), limits);
        // At the limits: accepted.
        assert_eq!(
            s.apply(&cmd(1, 1, put(b"kkkk", b"vvvvvvvv"))),
            KvReply::Stored
        );
        let over_key = [
            put(b"kkkkk", b""),
            get(b"kkkkk"),
            del(b"kkkkk"),
            cas(b"kkkkk", None, b""),
        ];
        let over_value = [
            put(b"k", b"vvvvvvvvv"),
            cas(b"kkkk", None, b"vvvvvvvvv"),
            cas(b"kkkk", Some(b"vvvvvvvvv"), b"v"),
        ];
        let mut seq = 1;
        for op in over_key.into_iter().chain(over_value) {
            seq += 1;
            let before = s.digest();
            let map_before = s.map.clone();
            let r = s.apply(&cmd(1, seq, op.clone()));
            let KvReply::Rejected(m) = &r else {
                panic!("{op:?} should be rejected, got {r:?}");
            };
            assert!(m.contains("over the limit"), "{m}");
            assert_eq!(s.map, map_before, "{op:?} must not execute");
            // Recorded as the client's last reply, so a retry gets the same answer.
            assert_eq!(s.last_reply(1), Some((seq, &r)));
            assert_ne!(s.digest(), before);
            assert_eq!(s.apply(&cmd(1, seq, op)), r);
        }
    }

    #[test]
    fn apply_bytes_decodes_or_reports_malformed() {
        let mut s = KvStore::default();
        let buf = encoded(&cmd(7, 1, put(b"k", b"v")), Command::encode);
        assert_eq!(
            s.apply_bytes(&buf),
            Applied::Reply {
                client: 7,
                seq: 1,
                reply: KvReply::Stored,
            }
        );
        let digest = s.digest();
        let mut bad = buf.clone();
        bad[16] = 0x42; // the op tag
        let a = s.apply_bytes(&bad);
        assert_eq!(a, Applied::Malformed(KvCodecError::UnknownOpTag(0x42)));
        assert_eq!(s.digest(), digest, "a malformed entry changes nothing");
        // Every replica sees the same outcome.
        let mut other = KvStore::default();
        other.apply_bytes(&buf);
        assert_eq!(other.apply_bytes(&bad), a);
        assert_eq!(other.digest(), s.digest());
        assert!(matches!(
            s.apply_bytes(&buf[..buf.len() - 1]),
            Applied::Malformed(KvCodecError::Truncated { field: "value", .. })
        ));
    }

    fn history() -> Vec<Command> {
        vec![
            cmd(1, 1, put(b"a", b"1")),
            cmd(2, 1, put(b"b", b"2")),
            cmd(1, 2, cas(b"a", Some(b"1"), b"3")),
            cmd(2, 2, del(b"a")),
            cmd(4, 1, get(b"b")),
            cmd(3, 2, cas(b"c", None, b"4")),
        ]
    }

    fn digest_of(cmds: &[Command]) -> u64 {
        let mut s = KvStore::default();
        for c in cmds {
            s.apply(c);
        }
        s.digest()
    }

    #[test]
    fn a_frozen_state_encodes_as_it_was_when_frozen_while_the_store_moves_on() {
        use crate::protocol::node::FrozenState;
        let mut s = KvStore::default();
        let h = history();
        let (first, rest) = h.split_at(h.len() / 2);
        for c in first {
            s.apply(c);
        }
        let mut then = Vec::new();
        let digest_then = s.snapshot_with(&mut then, &mut || {});
        let frozen = s.freeze();
        for c in rest {
            s.apply(c);
        }
        s.apply(&cmd(9, 1, put(b"late", b"value")));
        assert_ne!(s.digest(), digest_then, "the store moved on");
        // Encoded on another thread, as the daemon's checkpoint writer does.
        let (digest, bytes) = std::thread::spawn(move || {
            let mut out = Vec::new();
            (frozen.encode(&mut out, &mut || {}), out)
        })
        .join()
        .unwrap();
        assert_eq!(bytes, then);
        assert_eq!(digest, digest_then);
    }

    #[test]
    fn a_snapshot_restores_the_same_state_and_garbage_changes_nothing() {
        let mut s = KvStore::default();
        for c in &history() {
            s.apply(c);
        }
        let mut bytes = Vec::new();
        let mut beats = 0;
        let digest = s.snapshot_with(&mut bytes, &mut || beats += 1);
        assert_eq!(digest, s.digest(), "the digest is the snapshot's");
        let mut r = KvStore::default();
        r.restore(&bytes).unwrap();
        assert_eq!(r, s);
        // Every truncation and a flipped magic byte are refused, leaving the state alone.
        let before = r.clone();
        for cut in 0..bytes.len() {
            assert!(r.restore(&bytes[..cut]).is_err(), "cut at {cut}");
            assert_eq!(r, before);
        }
        let mut bad = bytes.clone();
        bad[0] ^= 1;
        assert!(r.restore(&bad).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            r.restore(&longer),
            Err(KvCodecError::TrailingBytes(1))
        ));
        // Keys out of order are not a snapshot this store wrote.
        let mut two = KvStore::default();
        two.apply(&cmd(1, 1, put(b"a", b"1")));
        two.apply(&cmd(1, 2, put(b"b", b"2")));
        let mut b2 = Vec::new();
        two.snapshot(&mut b2);
        let at = SNAPSHOT_MAGIC.len() + 8;
        // Swap the two key/value records (4 + 1 + 4 + 1 bytes each).
        let rec = 10;
        let (first, second) = (
            b2[at..at + rec].to_vec(),
            b2[at + rec..at + 2 * rec].to_vec(),
        );
        b2[at..at + rec].copy_from_slice(&second);
        b2[at + rec..at + 2 * rec].copy_from_slice(&first);
        assert!(matches!(
            KvStore::default().restore(&b2),
            Err(KvCodecError::BadSnapshot("keys out of order"))
        ));
    }

    #[test]
    fn digest_is_equal_for_the_same_history() {
        let h = history();
        assert_eq!(digest_of(&h), digest_of(&h));
        // Through the codec too, as replicas apply log bytes.
        let mut s = KvStore::default();
        for c in &h {
            s.apply_bytes(&encoded(c, Command::encode));
        }
        assert_eq!(s.digest(), digest_of(&h));
        // The digest is stable: a retry (answered from the table) changes nothing.
        let before = s.digest();
        s.apply(&h[5]);
        assert_eq!(s.digest(), before);
        assert_ne!(digest_of(&h), KvStore::default().digest());
    }

    #[test]
    fn digest_differs_for_missed_or_reordered_commands() {
        let h = history();
        let full = digest_of(&h);
        for skip in 0..h.len() {
            let mut missed = h.clone();
            missed.remove(skip);
            assert_ne!(digest_of(&missed), full, "missing command {skip}");
        }
        // Swap the CAS and the delete of "a": same commands, different order.
        let mut reordered = h.clone();
        reordered.swap(2, 3);
        assert_ne!(digest_of(&reordered), full);
        // Two states with the same map but different de-dup tables differ.
        let a = digest_of(&[cmd(1, 1, put(b"k", b"v"))]);
        let b = digest_of(&[cmd(2, 1, put(b"k", b"v"))]);
        let c = digest_of(&[cmd(1, 2, put(b"k", b"v"))]);
        assert_ne!(a, b);
        assert_ne!(a, c);
        // Length prefixes keep key/value boundaries apart.
        let x = digest_of(&[cmd(1, 1, put(b"ab", b"c"))]);
        let y = digest_of(&[cmd(1, 1, put(b"a", b"bc"))]);
        assert_ne!(x, y);
    }
}
