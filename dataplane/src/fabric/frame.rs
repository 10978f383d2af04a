//! The wire frame of the `udp` and `dpdk` fabrics.
//!
//! Both backends carry the same frames (DESIGN §2); only the link differs. One frame carries one
//! of: a one-sided request ([`FrameBody::WriteRequest`], [`FrameBody::ReadRequest`]) from a
//! poster to the owner of a region, the owner's [`Completion`] of it, or a client message
//! ([`FrameBody::ClientRequest`], [`FrameBody::ClientReply`]). The owner's data plane decodes a
//! request, checks rights, applies it to its registered memory and sends back the completion.
//!
//! # Layout
//!
//! A fixed header of [`HEADER_BYTES`], little-endian, then `payload_len` payload bytes:
//!
//! | offset | size | field | meaning |
//! |---:|---:|---|---|
//! | 0 | 4 | magic | [`MAGIC`] (`b"RPXF"`) |
//! | 4 | 1 | version | [`VERSION`] |
//! | 5 | 1 | kind | 1 write request, 2 read request, 3 completion, 4 client request, 5 client reply |
//! | 6 | 1 | flags | bit 0 reconnect (requests), bit 1 completion carries read data |
//! | 7 | 1 | reserved | 0 |
//! | 8 | 1 | src | sending node |
//! | 9 | 1 | dst | receiving node |
//! | 10 | 1 | region | 0 control block, 1 log (requests) |
//! | 11 | 1 | status | 0 ok, 1 permission, 2 unreachable (completions); 3 client error (client replies) |
//! | 12 | 4 | length | bytes written or to read (requests) |
//! | 16 | 4 | payload_len | payload bytes after the header |
//! | 20 | 8 | wr_id | work request id (requests and completions) |
//! | 28 | 8 | ballot | ballot of the posting connection (requests) |
//! | 36 | 8 | cluster_id | the cluster this frame belongs to |
//! | 44 | 8 | offset | byte offset in the region (requests) |
//! | 52 | 8 | seq | sequence number on the poster's data connection (log requests); 0 otherwise |
//! | 60 | 8 | checksum | xxh3-64 of the payload, seeded with xxh3-64 of bytes 0..60 |
//!
//! Version 2 added `seq` (and moved the checksum); version 3 chains two one-shot hashes for
//! the checksum (the streaming hash it replaces cost four times as much on a client frame).
//! Frames of other versions are refused with [`FrameError::UnsupportedVersion`].
//!
//! The offset is 64 bits because a log may be up to 16 GiB (`profile::MAX_LOG_BYTES`).
//!
//! `seq` numbers the log-region requests of one poster to one target, one per frame, so the
//! target can refuse everything behind a lost or reordered frame (the fabric's business; see
//! `udp`). Control-region requests are unsequenced and carry 0; completions and client frames
//! carry 0 (a client message's own `seq` is in its payload).
//!
//! Payloads: a write request carries the bytes; a completion of a successful read carries the
//! bytes read; a client request carries `client` (u64), `seq` (u64), then the command; a client
//! reply carries `client`, `seq`, then either the result (status 0) or an error body (status 3):
//! the error's stable code (u8, see [`ClientErrorCode::code`]), its fields, then a u8 length and a
//! short UTF-8 message for foreign clients and packet captures. The code and fields are
//! authoritative; the message is checked to be UTF-8 and otherwise not interpreted.
//!
//! # Strictness
//!
//! [`Frame::decode`] accepts exactly what [`Frame::encode`] produces: every field a kind does not
//! use must be zero, unknown flag bits are rejected, trailing bytes are rejected, and the checksum
//! covers every byte but its own. Decoding never panics and allocates at most one payload
//! (bounded by [`MAX_FRAME_BYTES`]).
//!
//! # Cluster and addressing
//!
//! `cluster_id` is decoded, not checked: frames of another cluster on the same port (a test
//! cluster next to a production one, a restarted cluster with a fresh id) decode normally, and the
//! fabric must drop every frame for which [`Frame::is_addressed_to`] is false before acting on it.
//! Likewise `src` and `dst` are not checked against the configuration here.
//!
//! # Size
//!
//! A frame is at most [`MAX_FRAME_BYTES`] = 8952 bytes: a 9000-byte jumbo MTU less an IPv6 (40)
//! and UDP (8) header, so one frame is one unfragmented datagram over IPv4 or IPv6. Writes and
//! reads larger than [`MAX_PAYLOAD_BYTES`] do not fit one frame; the constructors refuse them
//! with [`FrameError::TooLarge`] (splitting is the fabric's business).

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::fabric::{Completion, FabricError, Op, Post, Region};
use crate::protocol::node::{BadRequest, ClientError, ClientReply, ClientRequest};
use crate::protocol::{Ballot, NodeId};

/// The first four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"RPXF";
/// The frame format version this code speaks.
pub const VERSION: u8 = 3;
/// The `src` of a client's request and the `dst` of a reply to a client: clients are not nodes.
pub const CLIENT_NODE: NodeId = 0xff;
/// Bytes of the fixed header, checksum included.
pub const HEADER_BYTES: usize = 68;
/// Largest encoded frame: a 9000-byte jumbo MTU less IPv6 and UDP headers.
pub const MAX_FRAME_BYTES: usize = 9000 - 40 - 8;
/// Largest payload of one frame.
pub const MAX_PAYLOAD_BYTES: usize = MAX_FRAME_BYTES - HEADER_BYTES;
/// Largest one-sided read: its completion must fit one frame.
pub const MAX_READ_BYTES: usize = MAX_PAYLOAD_BYTES;
/// Bytes of `client` and `seq` at the head of a client message's payload.
pub const CLIENT_HEADER_BYTES: usize = 16;
/// Largest client command (or reply result) that fits one frame.
pub const MAX_CLIENT_BYTES: usize = MAX_PAYLOAD_BYTES - CLIENT_HEADER_BYTES;
/// Longest human-readable message carried with a client error.
pub const MAX_CLIENT_MESSAGE_BYTES: usize = 160;

/// Flag bit: the first operation on a freshly re-established data connection ([`Post::reconnect`]).
pub const FLAG_RECONNECT: u8 = 1 << 0;
/// Flag bit: a successful completion carries read data (an empty read still carries it).
pub const FLAG_HAS_DATA: u8 = 1 << 1;

// Header field offsets.
const AT_MAGIC: usize = 0;
const AT_VERSION: usize = 4;
const AT_KIND: usize = 5;
const AT_FLAGS: usize = 6;
const AT_RESERVED: usize = 7;
const AT_SRC: usize = 8;
const AT_DST: usize = 9;
const AT_REGION: usize = 10;
const AT_STATUS: usize = 11;
const AT_LENGTH: usize = 12;
const AT_PAYLOAD_LEN: usize = 16;
const AT_WR_ID: usize = 20;
const AT_BALLOT: usize = 28;
const AT_CLUSTER_ID: usize = 36;
const AT_OFFSET: usize = 44;
const AT_SEQ: usize = 52;
const AT_CHECKSUM: usize = 60;
const _: () = assert!(AT_CHECKSUM + 8 == HEADER_BYTES);

const KIND_WRITE_REQUEST: u8 = 1;
const KIND_READ_REQUEST: u8 = 2;
const KIND_COMPLETION: u8 = 3;
const KIND_CLIENT_REQUEST: u8 = 4;
const KIND_CLIENT_REPLY: u8 = 5;

const REGION_CONTROL: u8 = 0;
const REGION_LOG: u8 = 1;

const STATUS_OK: u8 = 0;
const STATUS_PERMISSION: u8 = 1;
const STATUS_UNREACHABLE: u8 = 2;
const STATUS_CLIENT_ERROR: u8 = 3;

/// Why bytes are not a valid frame, or a frame cannot be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("truncated frame: {what} needs {needed} bytes, {available} available")]
    Truncated {
        what: &'static str,
        needed: usize,
        available: usize,
    },
    #[error("bad magic {0:#010x}")]
    BadMagic(u32),
    #[error("unsupported frame version {0} (this build speaks {VERSION})")]
    UnsupportedVersion(u8),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("unknown region {0}")]
    UnknownRegion(u8),
    #[error("unknown status {0}")]
    UnknownStatus(u8),
    #[error("unknown client error code {0}")]
    UnknownClientErrorCode(u8),
    /// A length field disagrees with the bytes present (trailing bytes included).
    #[error("{what}: declared {declared} bytes, {available} present")]
    LengthMismatch {
        what: &'static str,
        declared: usize,
        available: usize,
    },
    #[error("checksum mismatch: frame says {declared:#018x}, contents hash to {computed:#018x}")]
    ChecksumMismatch { declared: u64, computed: u64 },
    /// The frame (or, for a read, its completion) would exceed [`MAX_FRAME_BYTES`].
    #[error("frame of {bytes} bytes exceeds the limit of {max}")]
    TooLarge { bytes: usize, max: usize },
    /// A field holds a value its frame kind does not allow (a non-zero unused field, an unknown
    /// flag bit, a status or flag the kind cannot carry, an invalid message).
    #[error("field {field} holds {value}, not allowed in this frame")]
    BadField { field: &'static str, value: u64 },
}

/// One frame: who sends it to whom, in which cluster, and what it carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub src: NodeId,
    pub dst: NodeId,
    /// The fabric drops frames of another cluster; see [`Frame::is_addressed_to`].
    pub cluster_id: u64,
    pub body: FrameBody,
}

/// What a frame carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameBody {
    /// A one-sided write of `bytes` at `offset` of the receiver's `region`.
    WriteRequest {
        wr_id: u64,
        /// The frame's number on the poster's data connection (0 for the control region).
        seq: u64,
        ballot: Ballot,
        reconnect: bool,
        region: Region,
        offset: usize,
        bytes: Vec<u8>,
    },
    /// A one-sided read of `len` bytes (at most [`MAX_READ_BYTES`]) at `offset` of `region`.
    ReadRequest {
        wr_id: u64,
        /// The frame's number on the poster's data connection (0 for the control region).
        seq: u64,
        ballot: Ballot,
        reconnect: bool,
        region: Region,
        offset: usize,
        len: usize,
    },
    /// The owner's completion of a request; reads carry the bytes read.
    Completion(Completion),
    /// A client's command, sent to a node's client ingress.
    ClientRequest {
        client: u64,
        seq: u64,
        command: Vec<u8>,
    },
    /// A node's answer to a client.
    ClientReply {
        client: u64,
        seq: u64,
        result: Result<Vec<u8>, ClientErrorCode>,
    },
}

/// A client error on the wire: mirrors [`ClientError`] with a stable numeric code per variant
/// and fixed-width fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientErrorCode {
    #[error("not the leader; try node {leader_hint:?}")]
    NotLeader { leader_hint: Option<NodeId> },
    #[error("command of {bytes} bytes exceeds the limit of {max}")]
    TooLarge { bytes: u64, max: u64 },
    #[error("leader busy: client queue full")]
    Busy,
    #[error("log full: no slot left before the log is reused")]
    LogFull,
    #[error("bad request: {0}")]
    BadRequest(BadRequest),
}

impl ClientErrorCode {
    pub const CODE_NOT_LEADER: u8 = 1;
    pub const CODE_TOO_LARGE: u8 = 2;
    pub const CODE_BUSY: u8 = 3;
    pub const CODE_LOG_FULL: u8 = 4;
    pub const CODE_BAD_REQUEST: u8 = 5;

    /// The stable numeric code of this error; never reused for another meaning.
    pub fn code(&self) -> u8 {
        match self {
            ClientErrorCode::NotLeader { .. } => Self::CODE_NOT_LEADER,
            ClientErrorCode::TooLarge { .. } => Self::CODE_TOO_LARGE,
            ClientErrorCode::Busy => Self::CODE_BUSY,
            ClientErrorCode::LogFull => Self::CODE_LOG_FULL,
            ClientErrorCode::BadRequest(_) => Self::CODE_BAD_REQUEST,
        }
    }

    /// The short human-readable message sent with the code (at most
    /// [`MAX_CLIENT_MESSAGE_BYTES`]).
    pub fn message(&self) -> String {
        let mut m = self.to_string();
        if m.len() > MAX_CLIENT_MESSAGE_BYTES {
            let mut end = MAX_CLIENT_MESSAGE_BYTES;
            while !m.is_char_boundary(end) {
                end -= 1;
            }
            m.truncate(end);
        }
        m
    }

    /// Bytes of the error body: code, fields, message length, message.
    fn encoded_len(&self) -> usize {
        let fields = match self {
            ClientErrorCode::NotLeader { .. } => 2,
            ClientErrorCode::TooLarge { .. } => 16,
            ClientErrorCode::BadRequest(_) => 1,
            ClientErrorCode::Busy | ClientErrorCode::LogFull => 0,
        };
        1 + fields + 1 + self.message().len()
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.code());
        match *self {
            ClientErrorCode::NotLeader { leader_hint } => {
                out.push(u8::from(leader_hint.is_some()));
                out.push(leader_hint.unwrap_or(0));
            }
            ClientErrorCode::TooLarge { bytes, max } => {
                out.extend_from_slice(&bytes.to_le_bytes());
                out.extend_from_slice(&max.to_le_bytes());
            }
            ClientErrorCode::BadRequest(why) => out.push(why as u8),
            ClientErrorCode::Busy | ClientErrorCode::LogFull => {}
        }
        let message = self.message();
        out.push(message.len() as u8); // at most MAX_CLIENT_MESSAGE_BYTES < 256
        out.extend_from_slice(message.as_bytes());
    }

    fn decode(r: &mut Reader<'_>) -> Result<ClientErrorCode, FrameError> {
        let code = r.u8("client error code")?;
        let error = match code {
            Self::CODE_NOT_LEADER => {
                let present = r.u8("client error leader hint")?;
                let node = r.u8("client error leader hint")?;
                match (present, node) {
                    (0, 0) => ClientErrorCode::NotLeader { leader_hint: None },
                    (1, n) => ClientErrorCode::NotLeader {
                        leader_hint: Some(n),
                    },
                    (0, n) => return Err(bad("client error leader hint", n)),
                    (p, _) => return Err(bad("client error leader hint flag", p)),
                }
            }
            Self::CODE_TOO_LARGE => ClientErrorCode::TooLarge {
                bytes: r.u64("client error sizes")?,
                max: r.u64("client error sizes")?,
            },
            Self::CODE_BUSY => ClientErrorCode::Busy,
            Self::CODE_LOG_FULL => ClientErrorCode::LogFull,
            Self::CODE_BAD_REQUEST => {
                let why = r.u8("bad request reason")?;
                ClientErrorCode::BadRequest(
                    BadRequest::from_code(why).ok_or(bad("bad request reason", u64::from(why)))?,
                )
            }
            other => return Err(FrameError::UnknownClientErrorCode(other)),
        };
        let len = usize::from(r.u8("client error message length")?);
        if len > MAX_CLIENT_MESSAGE_BYTES {
            return Err(bad("client error message length", len as u64));
        }
        let message = r.bytes(len, "client error message")?;
        if std::str::from_utf8(message).is_err() {
            return Err(bad("client error message (not UTF-8)", len as u64));
        }
        r.finish("client error body")?;
        Ok(error)
    }
}

impl From<&ClientError> for ClientErrorCode {
    fn from(e: &ClientError) -> ClientErrorCode {
        match *e {
            ClientError::NotLeader { leader_hint } => ClientErrorCode::NotLeader { leader_hint },
            ClientError::TooLarge { bytes, max } => ClientErrorCode::TooLarge {
                bytes: bytes as u64,
                max: max as u64,
            },
            ClientError::Busy => ClientErrorCode::Busy,
            ClientError::LogFull => ClientErrorCode::LogFull,
            ClientError::BadRequest(why) => ClientErrorCode::BadRequest(why),
        }
    }
}

impl From<ClientError> for ClientErrorCode {
    fn from(e: ClientError) -> ClientErrorCode {
        ClientErrorCode::from(&e)
    }
}

impl From<ClientErrorCode> for ClientError {
    /// Sizes beyond `usize` (only on 32-bit hosts) saturate.
    fn from(e: ClientErrorCode) -> ClientError {
        let size = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        match e {
            ClientErrorCode::NotLeader { leader_hint } => ClientError::NotLeader { leader_hint },
            ClientErrorCode::TooLarge { bytes, max } => ClientError::TooLarge {
                bytes: size(bytes),
                max: size(max),
            },
            ClientErrorCode::Busy => ClientError::Busy,
            ClientErrorCode::LogFull => ClientError::LogFull,
            ClientErrorCode::BadRequest(why) => ClientError::BadRequest(why),
        }
    }
}

impl Frame {
    /// The request frame of `post`, from `src` to `post.target`, numbered `seq` on the data
    /// connection (`seq` must be 0 for a control-region operation). Fails with
    /// [`FrameError::TooLarge`] if the write, or the completion of the read, would not fit one
    /// frame, and with [`FrameError::BadField`] for a numbered control-region operation.
    pub fn from_post(
        src: NodeId,
        cluster_id: u64,
        seq: u64,
        post: &Post,
    ) -> Result<Frame, FrameError> {
        let body = match &post.op {
            Op::Write {
                region,
                offset,
                bytes,
            } => FrameBody::WriteRequest {
                wr_id: post.wr_id,
                seq,
                ballot: post.ballot,
                reconnect: post.reconnect,
                region: *region,
                offset: *offset,
                bytes: bytes.clone(),
            },
            Op::Read {
                region,
                offset,
                len,
            } => FrameBody::ReadRequest {
                wr_id: post.wr_id,
                seq,
                ballot: post.ballot,
                reconnect: post.reconnect,
                region: *region,
                offset: *offset,
                len: *len,
            },
        };
        Frame::checked(src, post.target, cluster_id, body)
    }

    /// The frame answering a request of `dst` with `completion`.
    pub fn completion(
        src: NodeId,
        dst: NodeId,
        cluster_id: u64,
        completion: &Completion,
    ) -> Result<Frame, FrameError> {
        Frame::checked(
            src,
            dst,
            cluster_id,
            FrameBody::Completion(completion.clone()),
        )
    }

    /// The frame carrying a client's request to node `dst`.
    pub fn client_request(
        src: NodeId,
        dst: NodeId,
        cluster_id: u64,
        request: &ClientRequest,
    ) -> Result<Frame, FrameError> {
        let body = FrameBody::ClientRequest {
            client: request.client,
            seq: request.seq,
            command: request.command.clone(),
        };
        Frame::checked(src, dst, cluster_id, body)
    }

    /// [`Frame::client_reply`], taking the reply (its result is moved, not copied).
    pub fn client_reply_owned(
        src: NodeId,
        dst: NodeId,
        cluster_id: u64,
        reply: ClientReply,
    ) -> Result<Frame, FrameError> {
        let body = FrameBody::ClientReply {
            client: reply.client,
            seq: reply.seq,
            result: reply.result.map_err(ClientErrorCode::from),
        };
        Frame::checked(src, dst, cluster_id, body)
    }

    /// The frame carrying node `src`'s reply to a client.
    pub fn client_reply(
        src: NodeId,
        dst: NodeId,
        cluster_id: u64,
        reply: &ClientReply,
    ) -> Result<Frame, FrameError> {
        Frame::client_reply_owned(src, dst, cluster_id, reply.clone())
    }

    fn checked(
        src: NodeId,
        dst: NodeId,
        cluster_id: u64,
        body: FrameBody,
    ) -> Result<Frame, FrameError> {
        let frame = Frame {
            src,
            dst,
            cluster_id,
            body,
        };
        frame.check_size()?;
        Ok(frame)
    }

    /// Whether the fabric of node `me` in cluster `cluster_id` should act on this frame. A
    /// fabric drops every frame for which this is false.
    pub fn is_addressed_to(&self, cluster_id: u64, me: NodeId) -> bool {
        self.cluster_id == cluster_id && self.dst == me
    }

    /// The request as a [`Post`] (with `target` = `dst`), for the owner to check and apply;
    /// `None` for other kinds. The poster is `src`; the sequence number is in
    /// [`FrameBody::seq`].
    pub fn into_post(self) -> Option<Post> {
        let target = self.dst;
        match self.body {
            FrameBody::WriteRequest {
                wr_id,
                ballot,
                reconnect,
                region,
                offset,
                bytes,
                ..
            } => Some(Post {
                wr_id,
                target,
                op: Op::Write {
                    region,
                    offset,
                    bytes,
                },
                reconnect,
                ballot,
            }),
            FrameBody::ReadRequest {
                wr_id,
                ballot,
                reconnect,
                region,
                offset,
                len,
                ..
            } => Some(Post {
                wr_id,
                target,
                op: Op::Read {
                    region,
                    offset,
                    len,
                },
                reconnect,
                ballot,
            }),
            _ => None,
        }
    }

    /// Bytes of the encoded frame.
    pub fn encoded_len(&self) -> usize {
        HEADER_BYTES + self.body.payload_len()
    }

    /// [`FrameError::TooLarge`] if the frame, or the completion of a read it requests, would
    /// exceed [`MAX_FRAME_BYTES`]; [`FrameError::BadField`] if it is a control-region request
    /// carrying a sequence number (decoding would refuse it).
    pub fn check_size(&self) -> Result<(), FrameError> {
        match self.body {
            FrameBody::WriteRequest {
                region: Region::Control,
                seq,
                ..
            }
            | FrameBody::ReadRequest {
                region: Region::Control,
                seq,
                ..
            } if seq != 0 => return Err(bad("seq", seq)),
            _ => {}
        }
        let bytes = match self.body {
            FrameBody::ReadRequest { len, .. } => HEADER_BYTES.saturating_add(len),
            _ => self.encoded_len(),
        };
        if bytes > MAX_FRAME_BYTES {
            return Err(FrameError::TooLarge {
                bytes,
                max: MAX_FRAME_BYTES,
            });
        }
        Ok(())
    }

    /// Appends the encoded frame to `out` and returns its length. On error `out` is untouched.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<usize, FrameError> {
        self.check_size()?;
        let h = self.header();
        Ok(encode_with(
            out,
            self.src,
            self.dst,
            self.cluster_id,
            &h,
            |out| self.body.encode_payload(out),
        ))
    }

    /// Appends the frame carrying a client's request to `out`, as [`Frame::encode`] encodes
    /// a [`FrameBody::ClientRequest`], from borrowed parts: a client encodes each command
    /// into buffers it keeps, without building a [`Frame`]. On error `out` is untouched.
    #[allow(clippy::too_many_arguments)]
    pub fn encode_client_request(
        out: &mut Vec<u8>,
        src: NodeId,
        dst: NodeId,
        cluster_id: u64,
        client: u64,
        seq: u64,
        command: &[u8],
    ) -> Result<usize, FrameError> {
        Frame::check_client_request(command)?;
        let h = Header {
            kind: KIND_CLIENT_REQUEST,
            payload_len: (CLIENT_HEADER_BYTES + command.len()) as u32,
            ..Header::default()
        };
        Ok(encode_with(out, src, dst, cluster_id, &h, |out| {
            out.extend_from_slice(&client.to_le_bytes());
            out.extend_from_slice(&seq.to_le_bytes());
            out.extend_from_slice(command);
        }))
    }

    /// [`FrameError::TooLarge`] if a client request carrying `command` would exceed
    /// [`MAX_FRAME_BYTES`] ([`Frame::check_size`] for [`Frame::encode_client_request`]).
    pub fn check_client_request(command: &[u8]) -> Result<(), FrameError> {
        let bytes = HEADER_BYTES + CLIENT_HEADER_BYTES + command.len();
        if bytes > MAX_FRAME_BYTES {
            return Err(FrameError::TooLarge {
                bytes,
                max: MAX_FRAME_BYTES,
            });
        }
        Ok(())
    }

    /// Decodes exactly one frame filling all of `buf` if it is a client reply, borrowing its
    /// result bytes from `buf` (what a client does with every answer; [`Frame::decode`]
    /// would copy them). Never panics; checks everything [`Frame::decode`] checks.
    pub fn decode_client_reply(buf: &[u8]) -> Result<ClientReplyFrame<'_>, FrameError> {
        let (addr, h, payload) = decode_checked(buf)?;
        if h.kind != KIND_CLIENT_REPLY {
            return Err(bad("kind (a client reply expected)", h.kind));
        }
        let (client, seq, result) = client_message(&h, payload)?;
        Ok(ClientReplyFrame {
            dst: addr.dst,
            cluster_id: addr.cluster_id,
            client,
            seq,
            result: result.map_err(ClientError::from),
        })
    }

    /// The encoded frame in a fresh buffer.
    pub fn to_bytes(&self) -> Result<Vec<u8>, FrameError> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode(&mut out)?;
        Ok(out)
    }

    /// Decodes exactly one frame filling all of `buf`. Never panics.
    pub fn decode(buf: &[u8]) -> Result<Frame, FrameError> {
        let (addr, h, payload) = decode_checked(buf)?;
        let body = FrameBody::decode(&h, payload)?;
        Ok(Frame {
            src: addr.src,
            dst: addr.dst,
            cluster_id: addr.cluster_id,
            body,
        })
    }

    fn header(&self) -> Header {
        let payload_len = self.body.payload_len() as u32; // checked against MAX_FRAME_BYTES
        let mut h = Header {
            payload_len,
            ..Header::default()
        };
        match &self.body {
            FrameBody::WriteRequest {
                wr_id,
                seq,
                ballot,
                reconnect,
                region,
                offset,
                bytes,
            } => {
                h.kind = KIND_WRITE_REQUEST;
                h.seq = *seq;
                h.flags = if *reconnect { FLAG_RECONNECT } else { 0 };
                h.region = region_code(*region);
                h.length = bytes.len() as u32;
                h.wr_id = *wr_id;
                h.ballot = ballot.0;
                h.offset = *offset as u64;
            }
            FrameBody::ReadRequest {
                wr_id,
                seq,
                ballot,
                reconnect,
                region,
                offset,
                len,
            } => {
                h.kind = KIND_READ_REQUEST;
                h.seq = *seq;
                h.flags = if *reconnect { FLAG_RECONNECT } else { 0 };
                h.region = region_code(*region);
                h.length = *len as u32; // checked against MAX_READ_BYTES
                h.wr_id = *wr_id;
                h.ballot = ballot.0;
                h.offset = *offset as u64;
            }
            FrameBody::Completion(c) => {
                h.kind = KIND_COMPLETION;
                h.wr_id = c.wr_id;
                match &c.result {
                    Ok(Some(_)) => h.flags = FLAG_HAS_DATA,
                    Ok(None) => {}
                    Err(FabricError::Permission) => h.status = STATUS_PERMISSION,
                    Err(FabricError::Unreachable) => h.status = STATUS_UNREACHABLE,
                }
            }
            FrameBody::ClientRequest { .. } => h.kind = KIND_CLIENT_REQUEST,
            FrameBody::ClientReply { result, .. } => {
                h.kind = KIND_CLIENT_REPLY;
                if result.is_err() {
                    h.status = STATUS_CLIENT_ERROR;
                }
            }
        }
        h
    }
}

impl FrameBody {
    /// The work request id of a request or completion.
    pub fn wr_id(&self) -> Option<u64> {
        match self {
            FrameBody::WriteRequest { wr_id, .. } | FrameBody::ReadRequest { wr_id, .. } => {
                Some(*wr_id)
            }
            FrameBody::Completion(c) => Some(c.wr_id),
            FrameBody::ClientRequest { .. } | FrameBody::ClientReply { .. } => None,
        }
    }

    /// The sequence number of a request (0 for the control region); `None` for other kinds.
    pub fn seq(&self) -> Option<u64> {
        match self {
            FrameBody::WriteRequest { seq, .. } | FrameBody::ReadRequest { seq, .. } => Some(*seq),
            _ => None,
        }
    }

    /// The completion this body carries, if it is one.
    pub fn into_completion(self) -> Option<Completion> {
        match self {
            FrameBody::Completion(c) => Some(c),
            _ => None,
        }
    }

    /// The client request this body carries, if it is one.
    pub fn into_client_request(self) -> Option<ClientRequest> {
        match self {
            FrameBody::ClientRequest {
                client,
                seq,
                command,
            } => Some(ClientRequest {
                client,
                seq,
                command,
            }),
            _ => None,
        }
    }

    /// The client reply this body carries, if it is one.
    pub fn into_client_reply(self) -> Option<ClientReply> {
        match self {
            FrameBody::ClientReply {
                client,
                seq,
                result,
            } => Some(ClientReply {
                client,
                seq,
                result: result.map_err(ClientError::from),
            }),
            _ => None,
        }
    }

    fn payload_len(&self) -> usize {
        match self {
            FrameBody::WriteRequest { bytes, .. } => bytes.len(),
            FrameBody::ReadRequest { .. } => 0,
            FrameBody::Completion(c) => match &c.result {
                Ok(Some(data)) => data.len(),
                Ok(None) | Err(_) => 0,
            },
            FrameBody::ClientRequest { command, .. } => CLIENT_HEADER_BYTES + command.len(),
            FrameBody::ClientReply { result, .. } => {
                CLIENT_HEADER_BYTES
                    + match result {
                        Ok(bytes) => bytes.len(),
                        Err(e) => e.encoded_len(),
                    }
            }
        }
    }

    fn encode_payload(&self, out: &mut Vec<u8>) {
        match self {
            FrameBody::WriteRequest { bytes, .. } => out.extend_from_slice(bytes),
            FrameBody::ReadRequest { .. } => {}
            FrameBody::Completion(c) => {
                if let Ok(Some(data)) = &c.result {
                    out.extend_from_slice(data);
                }
            }
            FrameBody::ClientRequest {
                client,
                seq,
                command,
            } => {
                out.extend_from_slice(&client.to_le_bytes());
                out.extend_from_slice(&seq.to_le_bytes());
                out.extend_from_slice(command);
            }
            FrameBody::ClientReply {
                client,
                seq,
                result,
            } => {
                out.extend_from_slice(&client.to_le_bytes());
                out.extend_from_slice(&seq.to_le_bytes());
                match result {
                    Ok(bytes) => out.extend_from_slice(bytes),
                    Err(e) => e.encode(out),
                }
            }
        }
    }

    /// The body of a frame whose header, length and checksum have been checked.
    fn decode(h: &Header, payload: &[u8]) -> Result<FrameBody, FrameError> {
        match h.kind {
            KIND_WRITE_REQUEST | KIND_READ_REQUEST => {
                h.flags_within(FLAG_RECONNECT)?;
                h.status_zero()?;
                let region = match h.region {
                    REGION_CONTROL => Region::Control,
                    REGION_LOG => Region::Log,
                    other => return Err(FrameError::UnknownRegion(other)),
                };
                if region == Region::Control && h.seq != 0 {
                    return Err(bad("seq", h.seq));
                }
                let seq = h.seq;
                let offset = usize::try_from(h.offset).map_err(|_| bad("offset", h.offset))?;
                let wr_id = h.wr_id;
                let ballot = Ballot(h.ballot);
                let reconnect = h.flags & FLAG_RECONNECT != 0;
                let length = h.length as usize;
                if h.kind == KIND_WRITE_REQUEST {
                    if length != payload.len() {
                        return Err(FrameError::LengthMismatch {
                            what: "write length",
                            declared: length,
                            available: payload.len(),
                        });
                    }
                    Ok(FrameBody::WriteRequest {
                        wr_id,
                        seq,
                        ballot,
                        reconnect,
                        region,
                        offset,
                        bytes: payload.to_vec(),
                    })
                } else {
                    if !payload.is_empty() {
                        return Err(bad("payload_len", h.payload_len));
                    }
                    if HEADER_BYTES + length > MAX_FRAME_BYTES {
                        return Err(FrameError::TooLarge {
                            bytes: HEADER_BYTES + length,
                            max: MAX_FRAME_BYTES,
                        });
                    }
                    Ok(FrameBody::ReadRequest {
                        wr_id,
                        seq,
                        ballot,
                        reconnect,
                        region,
                        offset,
                        len: length,
                    })
                }
            }
            KIND_COMPLETION => {
                h.flags_within(FLAG_HAS_DATA)?;
                h.request_fields_zero()?;
                let has_data = h.flags & FLAG_HAS_DATA != 0;
                let result = match h.status {
                    STATUS_OK if has_data => Ok(Some(payload.to_vec())),
                    STATUS_OK => Ok(None),
                    STATUS_PERMISSION => Err(FabricError::Permission),
                    STATUS_UNREACHABLE => Err(FabricError::Unreachable),
                    STATUS_CLIENT_ERROR => return Err(bad("status", h.status)),
                    other => return Err(FrameError::UnknownStatus(other)),
                };
                if result.is_err() && has_data {
                    return Err(bad("flags", h.flags));
                }
                if !has_data && !payload.is_empty() {
                    return Err(bad("payload_len", h.payload_len));
                }
                Ok(FrameBody::Completion(Completion {
                    wr_id: h.wr_id,
                    result,
                }))
            }
            KIND_CLIENT_REQUEST => {
                let (client, seq, command) = client_message(h, payload)?;
                Ok(FrameBody::ClientRequest {
                    client,
                    seq,
                    command: command.map_err(|_| bad("status", h.status))?.to_vec(),
                })
            }
            KIND_CLIENT_REPLY => {
                let (client, seq, result) = client_message(h, payload)?;
                Ok(FrameBody::ClientReply {
                    client,
                    seq,
                    result: result.map(<[u8]>::to_vec),
                })
            }
            other => Err(FrameError::UnknownKind(other)),
        }
    }
}

/// A client reply decoded in place by [`Frame::decode_client_reply`]: its result borrows the
/// frame's bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct ClientReplyFrame<'a> {
    pub dst: NodeId,
    pub cluster_id: u64,
    pub client: u64,
    pub seq: u64,
    pub result: Result<&'a [u8], ClientError>,
}

/// Who a frame is from and for.
struct Addressing {
    src: NodeId,
    dst: NodeId,
    cluster_id: u64,
}

/// Writes the header `h` (with the addressing) and then the payload `payload` appends to
/// `out`, then the checksum over both; returns the frame's length. The caller has checked
/// the frame's size.
fn encode_with(
    out: &mut Vec<u8>,
    src: NodeId,
    dst: NodeId,
    cluster_id: u64,
    h: &Header,
    payload: impl FnOnce(&mut Vec<u8>),
) -> usize {
    let mut hdr = [0u8; HEADER_BYTES];
    hdr[AT_MAGIC..AT_MAGIC + 4].copy_from_slice(&MAGIC);
    hdr[AT_VERSION] = VERSION;
    hdr[AT_KIND] = h.kind;
    hdr[AT_FLAGS] = h.flags;
    hdr[AT_RESERVED] = 0;
    hdr[AT_SRC] = src;
    hdr[AT_DST] = dst;
    hdr[AT_REGION] = h.region;
    hdr[AT_STATUS] = h.status;
    hdr[AT_LENGTH..AT_LENGTH + 4].copy_from_slice(&h.length.to_le_bytes());
    hdr[AT_PAYLOAD_LEN..AT_PAYLOAD_LEN + 4].copy_from_slice(&h.payload_len.to_le_bytes());
    hdr[AT_WR_ID..AT_WR_ID + 8].copy_from_slice(&h.wr_id.to_le_bytes());
    hdr[AT_BALLOT..AT_BALLOT + 8].copy_from_slice(&h.ballot.to_le_bytes());
    hdr[AT_CLUSTER_ID..AT_CLUSTER_ID + 8].copy_from_slice(&cluster_id.to_le_bytes());
    hdr[AT_OFFSET..AT_OFFSET + 8].copy_from_slice(&h.offset.to_le_bytes());
    hdr[AT_SEQ..AT_SEQ + 8].copy_from_slice(&h.seq.to_le_bytes());
    // The checksum (AT_CHECKSUM) is filled in once the payload is in place.
    let start = out.len();
    out.reserve(HEADER_BYTES + h.payload_len as usize);
    out.extend_from_slice(&hdr);
    payload(out);
    let frame = &mut out[start..];
    debug_assert_eq!(frame.len(), HEADER_BYTES + h.payload_len as usize);
    let sum = checksum(&frame[..AT_CHECKSUM], &frame[HEADER_BYTES..]);
    frame[AT_CHECKSUM..HEADER_BYTES].copy_from_slice(&sum.to_le_bytes());
    frame.len()
}

/// Checks what every frame must satisfy (magic, version, lengths, checksum, the reserved
/// byte) and splits it into addressing, header and payload.
fn decode_checked(buf: &[u8]) -> Result<(Addressing, Header, &[u8]), FrameError> {
    let Some(hdr) = buf.first_chunk::<HEADER_BYTES>() else {
        return Err(FrameError::Truncated {
            what: "header",
            needed: HEADER_BYTES,
            available: buf.len(),
        });
    };
    let magic = u32_at(hdr, AT_MAGIC);
    if magic != u32::from_le_bytes(MAGIC) {
        return Err(FrameError::BadMagic(magic));
    }
    let version = hdr[AT_VERSION];
    if version != VERSION {
        return Err(FrameError::UnsupportedVersion(version));
    }
    let payload_len = u32_at(hdr, AT_PAYLOAD_LEN);
    let declared_sum = u64_at(hdr, AT_CHECKSUM);

    let frame_len = HEADER_BYTES.saturating_add(payload_len as usize);
    if frame_len > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge {
            bytes: frame_len,
            max: MAX_FRAME_BYTES,
        });
    }
    if buf.len() < frame_len {
        return Err(FrameError::Truncated {
            what: "payload",
            needed: frame_len,
            available: buf.len(),
        });
    }
    if buf.len() > frame_len {
        return Err(FrameError::LengthMismatch {
            what: "frame (trailing bytes)",
            declared: frame_len,
            available: buf.len(),
        });
    }
    let payload = &buf[HEADER_BYTES..];
    let computed = checksum(&buf[..AT_CHECKSUM], payload);
    if computed != declared_sum {
        return Err(FrameError::ChecksumMismatch {
            declared: declared_sum,
            computed,
        });
    }

    let h = Header {
        kind: hdr[AT_KIND],
        flags: hdr[AT_FLAGS],
        region: hdr[AT_REGION],
        status: hdr[AT_STATUS],
        length: u32_at(hdr, AT_LENGTH),
        payload_len,
        wr_id: u64_at(hdr, AT_WR_ID),
        ballot: u64_at(hdr, AT_BALLOT),
        offset: u64_at(hdr, AT_OFFSET),
        seq: u64_at(hdr, AT_SEQ),
    };
    if hdr[AT_RESERVED] != 0 {
        return Err(bad("reserved", hdr[AT_RESERVED]));
    }
    Ok((
        Addressing {
            src: hdr[AT_SRC],
            dst: hdr[AT_DST],
            cluster_id: u64_at(hdr, AT_CLUSTER_ID),
        },
        h,
        payload,
    ))
}

/// A client message's client, sequence, and its rest: a command, result bytes, or an error.
type ClientMessage<'a> = (u64, u64, Result<&'a [u8], ClientErrorCode>);

/// The client, sequence and the rest of a client request or reply (checked, like every
/// frame, by [`decode_checked`] first): a request's rest is its command (`Ok`); a reply's is
/// its result bytes, or the error it carries.
fn client_message<'a>(h: &Header, payload: &'a [u8]) -> Result<ClientMessage<'a>, FrameError> {
    h.flags_within(0)?;
    h.request_fields_zero()?;
    if h.wr_id != 0 {
        return Err(bad("wr_id", h.wr_id));
    }
    let mut r = Reader::new(payload);
    let client = r.u64("client message header")?;
    let seq = r.u64("client message header")?;
    if h.kind == KIND_CLIENT_REQUEST {
        h.status_zero()?;
        return Ok((client, seq, Ok(r.rest())));
    }
    let result = match h.status {
        STATUS_OK => Ok(r.rest()),
        STATUS_CLIENT_ERROR => Err(ClientErrorCode::decode(&mut r)?),
        STATUS_PERMISSION | STATUS_UNREACHABLE => return Err(bad("status", h.status)),
        other => return Err(FrameError::UnknownStatus(other)),
    };
    Ok((client, seq, result))
}

/// The kind-dependent header fields.
#[derive(Default)]
struct Header {
    kind: u8,
    flags: u8,
    region: u8,
    status: u8,
    length: u32,
    payload_len: u32,
    wr_id: u64,
    ballot: u64,
    offset: u64,
    seq: u64,
}

impl Header {
    fn flags_within(&self, allowed: u8) -> Result<(), FrameError> {
        if self.flags & !allowed != 0 {
            return Err(bad("flags", self.flags));
        }
        Ok(())
    }

    fn status_zero(&self) -> Result<(), FrameError> {
        match self.status {
            STATUS_OK => Ok(()),
            s @ (STATUS_PERMISSION | STATUS_UNREACHABLE | STATUS_CLIENT_ERROR) => {
                Err(bad("status", s))
            }
            other => Err(FrameError::UnknownStatus(other)),
        }
    }

    /// The fields only requests use: region, length, ballot, offset, seq.
    fn request_fields_zero(&self) -> Result<(), FrameError> {
        if self.seq != 0 {
            return Err(bad("seq", self.seq));
        }
        if self.region != 0 {
            return Err(bad("region", self.region));
        }
        if self.length != 0 {
            return Err(bad("length", self.length));
        }
        if self.ballot != 0 {
            return Err(bad("ballot", self.ballot));
        }
        if self.offset != 0 {
            return Err(bad("offset", self.offset));
        }
        Ok(())
    }
}

/// A bounds-checked little-endian cursor; every read that runs short is [`FrameError::Truncated`].
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], FrameError> {
        let end = self.pos.saturating_add(n);
        match self.buf.get(self.pos..end) {
            Some(s) => {
                self.pos = end;
                Ok(s)
            }
            None => Err(FrameError::Truncated {
                what,
                needed: end,
                available: self.buf.len(),
            }),
        }
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], FrameError> {
        let mut a = [0; N];
        a.copy_from_slice(self.bytes(N, what)?);
        Ok(a)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, FrameError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, FrameError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn rest(&mut self) -> &'a [u8] {
        let rest = self.buf.get(self.pos..).unwrap_or(&[]);
        self.pos = self.buf.len();
        rest
    }

    fn finish(&self, what: &'static str) -> Result<(), FrameError> {
        if self.pos != self.buf.len() {
            return Err(FrameError::LengthMismatch {
                what,
                declared: self.pos,
                available: self.buf.len(),
            });
        }
        Ok(())
    }
}

fn bad(field: &'static str, value: impl Into<u64>) -> FrameError {
    FrameError::BadField {
        field,
        value: value.into(),
    }
}

fn u32_at(hdr: &[u8; HEADER_BYTES], at: usize) -> u32 {
    let mut b = [0; 4];
    b.copy_from_slice(&hdr[at..at + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(hdr: &[u8; HEADER_BYTES], at: usize) -> u64 {
    let mut b = [0; 8];
    b.copy_from_slice(&hdr[at..at + 8]);
    u64::from_le_bytes(b)
}

fn region_code(region: Region) -> u8 {
    match region {
        Region::Control => REGION_CONTROL,
        Region::Log => REGION_LOG,
    }
}

/// xxh3-64 of the payload, seeded with the xxh3-64 of the header up to the checksum: two
/// one-shot hashes, a quarter of the streaming hasher's cost on a client frame.
fn checksum(header: &[u8], payload: &[u8]) -> u64 {
    xxh3_64_with_seed(payload, xxh3_64(header))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_xoshiro::Xoshiro256PlusPlus;

    const CLUSTER: u64 = 0x5eed_c105_7e20_0001;

    fn frame(body: FrameBody) -> Frame {
        Frame {
            src: 2,
            dst: 5,
            cluster_id: CLUSTER,
            body,
        }
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 + 7) as u8).collect()
    }

    /// One frame of every kind and shape, edge values included.
    fn samples() -> Vec<Frame> {
        let mut v = vec![
            frame(FrameBody::WriteRequest {
                wr_id: 1,
                seq: 1,
                ballot: Ballot::new(3, 2),
                reconnect: false,
                region: Region::Log,
                offset: 128,
                bytes: pattern(64),
            }),
            frame(FrameBody::WriteRequest {
                wr_id: u64::MAX,
                seq: 0,
                ballot: Ballot(u64::MAX),
                reconnect: true,
                region: Region::Control,
                offset: usize::MAX,
                bytes: vec![],
            }),
            frame(FrameBody::WriteRequest {
                wr_id: 7,
                seq: u64::MAX,
                ballot: Ballot::ZERO,
                reconnect: false,
                region: Region::Log,
                offset: u32::MAX as usize + 1,
                bytes: pattern(MAX_PAYLOAD_BYTES),
            }),
            frame(FrameBody::ReadRequest {
                wr_id: 9,
                seq: 0,
                ballot: Ballot::ZERO,
                reconnect: false,
                region: Region::Control,
                offset: 0,
                len: 0,
            }),
            frame(FrameBody::ReadRequest {
                wr_id: 10,
                seq: 0x8000_0000_0000_0001,
                ballot: Ballot::new(1, 0),
                reconnect: true,
                region: Region::Log,
                offset: usize::MAX,
                len: MAX_READ_BYTES,
            }),
            frame(FrameBody::Completion(Completion {
                wr_id: 11,
                result: Ok(None),
            })),
            frame(FrameBody::Completion(Completion {
                wr_id: 12,
                result: Ok(Some(vec![])),
            })),
            frame(FrameBody::Completion(Completion {
                wr_id: 13,
                result: Ok(Some(pattern(300))),
            })),
            frame(FrameBody::Completion(Completion {
                wr_id: 14,
                result: Ok(Some(pattern(MAX_PAYLOAD_BYTES))),
            })),
            frame(FrameBody::Completion(Completion {
                wr_id: 15,
                result: Err(FabricError::Permission),
            })),
            frame(FrameBody::Completion(Completion {
                wr_id: u64::MAX,
                result: Err(FabricError::Unreachable),
            })),
            frame(FrameBody::ClientRequest {
                client: 42,
                seq: 1,
                command: vec![],
            }),
            frame(FrameBody::ClientRequest {
                client: u64::MAX,
                seq: u64::MAX,
                command: pattern(MAX_CLIENT_BYTES),
            }),
            frame(FrameBody::ClientReply {
                client: 42,
                seq: 2,
                result: Ok(vec![]),
            }),
            frame(FrameBody::ClientReply {
                client: 42,
                seq: 3,
                result: Ok(pattern(40)),
            }),
        ];
        for e in client_error_codes() {
            v.push(frame(FrameBody::ClientReply {
                client: 43,
                seq: 4,
                result: Err(e),
            }));
        }
        v
    }

    fn client_error_codes() -> Vec<ClientErrorCode> {
        vec![
            ClientErrorCode::NotLeader { leader_hint: None },
            ClientErrorCode::NotLeader {
                leader_hint: Some(0),
            },
            ClientErrorCode::NotLeader {
                leader_hint: Some(255),
            },
            ClientErrorCode::TooLarge { bytes: 0, max: 0 },
            ClientErrorCode::TooLarge {
                bytes: u64::MAX,
                max: u64::MAX,
            },
            ClientErrorCode::Busy,
            ClientErrorCode::LogFull,
            ClientErrorCode::BadRequest(BadRequest::Malformed),
            ClientErrorCode::BadRequest(BadRequest::ZeroSequence),
        ]
    }

    fn enc(f: &Frame) -> Vec<u8> {
        f.to_bytes().expect("sample encodes")
    }

    /// Recomputes the checksum of a (possibly altered) frame so decoding reaches the body checks.
    fn reseal(buf: &mut [u8]) {
        if buf.len() >= HEADER_BYTES {
            let sum = checksum(&buf[..AT_CHECKSUM], &buf[HEADER_BYTES..]);
            buf[AT_CHECKSUM..HEADER_BYTES].copy_from_slice(&sum.to_le_bytes());
        }
    }

    /// A valid frame with one header byte changed and the checksum recomputed.
    fn altered(f: &Frame, at: usize, value: u8) -> Vec<u8> {
        let mut b = enc(f);
        b[at] = value;
        reseal(&mut b);
        b
    }

    /// Any accepted input must be canonical up to the client error message: re-encoding what was
    /// decoded decodes to the same frame.
    fn assert_stable(f: &Frame) {
        let again = Frame::decode(&enc(f)).expect("re-encoded frame decodes");
        assert_eq!(&again, f);
    }

    #[test]
    fn every_kind_round_trips() {
        let mut out = vec![0xAA; 3]; // encode appends
        for f in samples() {
            out.truncate(3);
            let n = f.encode(&mut out).unwrap();
            assert_eq!(n, f.encoded_len());
            assert_eq!(out.len(), 3 + n);
            assert!(n <= MAX_FRAME_BYTES);
            assert_eq!(&out[..3], &[0xAA; 3]);
            let back = Frame::decode(&out[3..]).unwrap_or_else(|e| panic!("{f:?}: {e}"));
            assert_eq!(back, f);
            assert_eq!(enc(&back), out[3..], "encoding is deterministic");
        }
    }

    #[test]
    fn client_parts_encode_and_decode_as_whole_frames_do() {
        let (mut requests, mut replies) = (0, 0);
        for f in samples() {
            let bytes = enc(&f);
            let in_place = Frame::decode_client_reply(&bytes);
            match &f.body {
                FrameBody::ClientRequest {
                    client,
                    seq,
                    command,
                } => {
                    requests += 1;
                    let mut out = vec![0xAA];
                    let n = Frame::encode_client_request(
                        &mut out,
                        f.src,
                        f.dst,
                        f.cluster_id,
                        *client,
                        *seq,
                        command,
                    )
                    .unwrap();
                    assert_eq!(n, bytes.len());
                    assert_eq!(out[1..], bytes[..], "{f:?}");
                    assert!(in_place.is_err(), "a request is no reply");
                }
                FrameBody::ClientReply { .. } => {
                    replies += 1;
                    let r = in_place.unwrap_or_else(|e| panic!("{f:?}: {e}"));
                    let whole = f.body.clone().into_client_reply().unwrap();
                    assert_eq!((r.dst, r.cluster_id), (f.dst, f.cluster_id));
                    assert_eq!((r.client, r.seq), (whole.client, whole.seq));
                    assert_eq!(r.result.map(<[u8]>::to_vec), whole.result);
                }
                _ => assert!(in_place.is_err(), "{f:?} is no reply"),
            }
        }
        assert!(requests > 0 && replies > 1);
        // Too large to travel: refused, and nothing is written.
        let mut out = Vec::new();
        let command = vec![0; MAX_FRAME_BYTES];
        assert!(matches!(
            Frame::encode_client_request(&mut out, CLIENT_NODE, 0, CLUSTER, 1, 1, &command),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn layout_matches_the_documented_table() {
        let f = Frame {
            src: 3,
            dst: 4,
            cluster_id: 0x1122_3344_5566_7788,
            body: FrameBody::WriteRequest {
                wr_id: 0x0102_0304_0506_0708,
                seq: 0x1112_1314_1516_1718,
                ballot: Ballot::new(5, 3),
                reconnect: true,
                region: Region::Log,
                offset: 0x1_0000_0040,
                bytes: vec![9, 8, 7],
            },
        };
        let b = enc(&f);
        assert_eq!(b.len(), HEADER_BYTES + 3);
        assert_eq!(&b[AT_MAGIC..4], b"RPXF");
        assert_eq!(b[AT_VERSION], 3);
        assert_eq!(b[AT_KIND], KIND_WRITE_REQUEST);
        assert_eq!(b[AT_FLAGS], FLAG_RECONNECT);
        assert_eq!(b[AT_RESERVED], 0);
        assert_eq!((b[AT_SRC], b[AT_DST]), (3, 4));
        assert_eq!(b[AT_REGION], REGION_LOG);
        assert_eq!(b[AT_STATUS], STATUS_OK);
        assert_eq!(&b[AT_LENGTH..AT_LENGTH + 4], &3u32.to_le_bytes());
        assert_eq!(&b[AT_PAYLOAD_LEN..AT_PAYLOAD_LEN + 4], &3u32.to_le_bytes());
        assert_eq!(
            &b[AT_WR_ID..AT_WR_ID + 8],
            &[8, 7, 6, 5, 4, 3, 2, 1],
            "little-endian"
        );
        assert_eq!(
            &b[AT_BALLOT..AT_BALLOT + 8],
            &Ballot::new(5, 3).0.to_le_bytes()
        );
        assert_eq!(
            &b[AT_CLUSTER_ID..AT_CLUSTER_ID + 8],
            &0x1122_3344_5566_7788u64.to_le_bytes()
        );
        assert_eq!(
            &b[AT_OFFSET..AT_OFFSET + 8],
            &0x1_0000_0040u64.to_le_bytes()
        );
        assert_eq!(
            &b[AT_SEQ..AT_SEQ + 8],
            &[0x18, 0x17, 0x16, 0x15, 0x14, 0x13, 0x12, 0x11]
        );
        assert_eq!((AT_SEQ, AT_CHECKSUM, HEADER_BYTES), (52, 60, 68));
        assert_eq!(&b[HEADER_BYTES..], &[9, 8, 7]);
        // The checksum: xxh3-64 of the payload seeded with xxh3-64 of the header before it.
        let seed = xxhash_rust::xxh3::xxh3_64(&b[..AT_CHECKSUM]);
        assert_eq!(
            &b[AT_CHECKSUM..HEADER_BYTES],
            &xxhash_rust::xxh3::xxh3_64_with_seed(&b[HEADER_BYTES..], seed).to_le_bytes()
        );
    }

    #[test]
    fn every_prefix_is_truncated() {
        for f in samples() {
            let b = enc(&f);
            for n in 0..b.len() {
                match Frame::decode(&b[..n]) {
                    Err(FrameError::Truncated {
                        needed, available, ..
                    }) => {
                        assert_eq!(available, n);
                        assert!(needed > n);
                    }
                    other => panic!("prefix {n} of {} of {f:?}: {other:?}", b.len()),
                }
            }
        }
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        for f in samples() {
            let mut b = enc(&f);
            b.push(0);
            assert!(
                matches!(
                    Frame::decode(&b),
                    Err(FrameError::LengthMismatch { declared, available, .. })
                        if declared + 1 == available
                ),
                "{f:?}"
            );
        }
    }

    #[test]
    fn every_single_bit_flip_is_rejected() {
        for f in samples() {
            let b = enc(&f);
            let mut m = b.clone();
            for byte in 0..b.len() {
                for bit in 0..8 {
                    m[byte] ^= 1 << bit;
                    let r = Frame::decode(&m);
                    m[byte] ^= 1 << bit;
                    let ok = match byte {
                        0..4 => matches!(r, Err(FrameError::BadMagic(_))),
                        AT_VERSION => matches!(r, Err(FrameError::UnsupportedVersion(_))),
                        AT_PAYLOAD_LEN..AT_WR_ID => matches!(
                            r,
                            Err(FrameError::Truncated { .. }
                                | FrameError::LengthMismatch { .. }
                                | FrameError::TooLarge { .. })
                        ),
                        _ => matches!(r, Err(FrameError::ChecksumMismatch { .. })),
                    };
                    assert!(ok, "{f:?}: flip byte {byte} bit {bit}: {r:?}");
                }
            }
            assert_eq!(m, b);
        }
    }

    #[test]
    fn random_and_mutated_bytes_never_panic() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(0xF8A3E);
        let valid: Vec<Vec<u8>> = samples().iter().map(enc).collect();
        let (mut accepted, mut deep_rejects) = (0, 0);
        for i in 0..50_000 {
            let mut b = match i % 4 {
                // Pure noise, sometimes behind a valid magic and version.
                0 => {
                    let n = rng.gen_range(0..2 * HEADER_BYTES);
                    let mut b: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
                    if n >= 5 && rng.gen_bool(0.5) {
                        b[..4].copy_from_slice(&MAGIC);
                        b[4] = VERSION;
                    }
                    b
                }
                // A valid frame with a few bytes overwritten.
                _ => {
                    let mut b = valid[rng.gen_range(0..valid.len())].clone();
                    for _ in 0..rng.gen_range(1..4) {
                        let at = rng.gen_range(0..b.len());
                        b[at] = rng.gen();
                    }
                    match rng.gen_range(0..6) {
                        0 => b.truncate(rng.gen_range(0..b.len())),
                        1 => b.push(rng.gen()),
                        _ => {}
                    }
                    b
                }
            };
            // Half the mutants get a valid checksum, so the body checks run on garbage too.
            if i % 4 != 0 && i % 2 == 1 {
                reseal(&mut b);
            }
            // The client's in-place decoding takes exactly the replies the whole one takes.
            let whole = Frame::decode(&b).ok().and_then(|f| {
                let (dst, cluster_id) = (f.dst, f.cluster_id);
                let r = f.body.into_client_reply()?;
                Some((dst, cluster_id, r.client, r.seq, r.result))
            });
            let in_place = Frame::decode_client_reply(&b).ok().map(|r| {
                (
                    r.dst,
                    r.cluster_id,
                    r.client,
                    r.seq,
                    r.result.map(<[u8]>::to_vec),
                )
            });
            assert_eq!(in_place, whole, "{b:?}");
            match Frame::decode(&b) {
                Ok(f) => {
                    accepted += 1;
                    assert!(b.len() <= MAX_FRAME_BYTES);
                    assert_stable(&f);
                }
                Err(FrameError::ChecksumMismatch { .. }) => {}
                Err(_) => deep_rejects += 1,
            }
        }
        // The run reached both outcomes past the checksum, not only cheap rejections.
        assert!(accepted > 500, "accepted {accepted}");
        assert!(deep_rejects > 500, "deep rejects {deep_rejects}");
    }

    #[test]
    fn another_cluster_decodes_but_is_not_addressed_to_us() {
        let mut f = samples().remove(0);
        f.cluster_id = CLUSTER + 1;
        let back = Frame::decode(&enc(&f)).unwrap();
        assert_eq!(back.cluster_id, CLUSTER + 1);
        assert_ne!(back.cluster_id, CLUSTER);
        assert!(!back.is_addressed_to(CLUSTER, 5), "the fabric drops it");
        assert!(back.is_addressed_to(CLUSTER + 1, 5));
        assert!(!back.is_addressed_to(CLUSTER + 1, 2), "not for the sender");
    }

    #[test]
    fn oversize_payloads_are_too_large() {
        let post = |op| Post {
            wr_id: 1,
            target: 1,
            op,
            reconnect: false,
            ballot: Ballot::ZERO,
        };
        let write = |n| Op::Write {
            region: Region::Log,
            offset: 0,
            bytes: vec![0; n],
        };
        let read = |len| Op::Read {
            region: Region::Log,
            offset: 0,
            len,
        };
        let too_large = FrameError::TooLarge {
            bytes: MAX_FRAME_BYTES + 1,
            max: MAX_FRAME_BYTES,
        };
        assert!(Frame::from_post(0, CLUSTER, 3, &post(write(MAX_PAYLOAD_BYTES))).is_ok());
        assert_eq!(
            Frame::from_post(0, CLUSTER, 3, &post(write(MAX_PAYLOAD_BYTES + 1))),
            Err(too_large.clone())
        );
        assert!(Frame::from_post(0, CLUSTER, 3, &post(read(MAX_READ_BYTES))).is_ok());
        assert_eq!(
            Frame::from_post(0, CLUSTER, 3, &post(read(MAX_READ_BYTES + 1))),
            Err(too_large.clone())
        );
        assert!(matches!(
            Frame::from_post(0, CLUSTER, 3, &post(read(usize::MAX))),
            Err(FrameError::TooLarge { .. })
        ));
        let completion = |n| Completion {
            wr_id: 1,
            result: Ok(Some(vec![0; n])),
        };
        assert!(Frame::completion(1, 0, CLUSTER, &completion(MAX_PAYLOAD_BYTES)).is_ok());
        assert_eq!(
            Frame::completion(1, 0, CLUSTER, &completion(MAX_PAYLOAD_BYTES + 1)),
            Err(too_large.clone())
        );
        let request = |n| ClientRequest {
            client: 1,
            seq: 1,
            command: vec![0; n],
        };
        assert!(Frame::client_request(9, 0, CLUSTER, &request(MAX_CLIENT_BYTES)).is_ok());
        assert_eq!(
            Frame::client_request(9, 0, CLUSTER, &request(MAX_CLIENT_BYTES + 1)),
            Err(too_large.clone())
        );
        // A frame built by hand is checked by encode, which then leaves `out` alone.
        let f = frame(FrameBody::ClientReply {
            client: 1,
            seq: 1,
            result: Ok(vec![0; MAX_CLIENT_BYTES + 1]),
        });
        let mut out = vec![1, 2, 3];
        assert_eq!(f.encode(&mut out), Err(too_large.clone()));
        assert_eq!(out, vec![1, 2, 3]);
        // A header declaring an oversize payload is refused before the payload is looked at.
        let mut b = enc(&samples()[0]);
        b[AT_PAYLOAD_LEN..AT_PAYLOAD_LEN + 4]
            .copy_from_slice(&((MAX_PAYLOAD_BYTES + 1) as u32).to_le_bytes());
        assert_eq!(Frame::decode(&b), Err(too_large.clone()));
        b[AT_PAYLOAD_LEN..AT_PAYLOAD_LEN + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Frame::decode(&b),
            Err(FrameError::TooLarge { .. })
        ));
        // So is a read whose completion could not be sent.
        let r = frame(FrameBody::ReadRequest {
            wr_id: 1,
            seq: 1,
            ballot: Ballot::ZERO,
            reconnect: false,
            region: Region::Log,
            offset: 0,
            len: 0,
        });
        let mut b = enc(&r);
        b[AT_LENGTH..AT_LENGTH + 4].copy_from_slice(&((MAX_READ_BYTES + 1) as u32).to_le_bytes());
        reseal(&mut b);
        assert_eq!(Frame::decode(&b), Err(too_large.clone()));
    }

    #[test]
    fn client_error_codes_round_trip() {
        let errors = [
            ClientError::NotLeader { leader_hint: None },
            ClientError::NotLeader {
                leader_hint: Some(3),
            },
            ClientError::TooLarge {
                bytes: 1000,
                max: 512,
            },
            ClientError::Busy,
            ClientError::LogFull,
            ClientError::BadRequest(BadRequest::Malformed),
            ClientError::BadRequest(BadRequest::UnknownOperation),
            ClientError::BadRequest(BadRequest::Mismatch),
            ClientError::BadRequest(BadRequest::ZeroSequence),
        ];
        let codes = [1, 1, 2, 3, 4, 5, 5, 5, 5];
        for (e, code) in errors.iter().zip(codes) {
            let wire = ClientErrorCode::from(e);
            assert_eq!(wire.code(), code, "codes are stable: {e:?}");
            assert_eq!(ClientError::from(wire), *e);
            assert_eq!(wire.message(), e.to_string());
            let reply = ClientReply {
                client: 77,
                seq: 8,
                result: Err(e.clone()),
            };
            let f = Frame::client_reply(1, 200, CLUSTER, &reply).unwrap();
            let back = Frame::decode(&enc(&f)).unwrap();
            assert_eq!(back.body.into_client_reply(), Some(reply));
        }
        for e in client_error_codes() {
            assert!(e.message().len() <= MAX_CLIENT_MESSAGE_BYTES);
            assert_eq!(ClientErrorCode::from(ClientError::from(e)), e);
        }
        // The code byte sits right after client and seq; an unknown one is named.
        let f = frame(FrameBody::ClientReply {
            client: 1,
            seq: 1,
            result: Err(ClientErrorCode::Busy),
        });
        let at = HEADER_BYTES + CLIENT_HEADER_BYTES;
        assert_eq!(enc(&f)[at], ClientErrorCode::CODE_BUSY);
        for bad_code in [0, 6, 255] {
            assert_eq!(
                Frame::decode(&altered(&f, at, bad_code)),
                Err(FrameError::UnknownClientErrorCode(bad_code))
            );
        }
    }

    #[test]
    fn posts_and_completions_convert_both_ways() {
        let posts = [
            Post {
                wr_id: 5,
                target: 4,
                op: Op::Write {
                    region: Region::Log,
                    offset: 4096,
                    bytes: pattern(100),
                },
                reconnect: true,
                ballot: Ballot::new(2, 1),
            },
            Post {
                wr_id: 6,
                target: 0,
                op: Op::Read {
                    region: Region::Control,
                    offset: 8,
                    len: 8,
                },
                reconnect: false,
                ballot: Ballot::ZERO,
            },
        ];
        // Control-region operations are unsequenced: a numbered one is refused, not sent.
        assert_eq!(
            Frame::from_post(1, CLUSTER, 5, &posts[1]),
            Err(FrameError::BadField {
                field: "seq",
                value: 5
            })
        );
        for (p, seq) in posts.into_iter().zip([77, 0]) {
            let f = Frame::from_post(1, CLUSTER, seq, &p).unwrap();
            assert_eq!((f.src, f.dst), (1, p.target));
            assert_eq!(f.body.wr_id(), Some(p.wr_id));
            let back = Frame::decode(&enc(&f)).unwrap();
            assert_eq!(back.body.seq(), Some(seq));
            assert_eq!(back.clone().body.into_completion(), None);
            assert_eq!(back.into_post(), Some(p));
        }
        let c = Completion {
            wr_id: 6,
            result: Ok(Some(pattern(8))),
        };
        let f = Frame::completion(0, 1, CLUSTER, &c).unwrap();
        assert_eq!(f.body.seq(), None);
        assert_eq!(f.clone().into_post(), None);
        assert_eq!(
            Frame::decode(&enc(&f)).unwrap().body.into_completion(),
            Some(c)
        );
        let req = ClientRequest {
            client: 3,
            seq: 9,
            command: pattern(20),
        };
        let f = Frame::client_request(100, 2, CLUSTER, &req).unwrap();
        assert_eq!(f.body.wr_id(), None);
        let back = Frame::decode(&enc(&f)).unwrap();
        assert_eq!(back.body.into_client_request(), Some(req));
    }

    #[test]
    fn fields_a_kind_does_not_use_are_rejected() {
        let write = samples().remove(0);
        let read = samples().remove(3);
        let ok_none = frame(FrameBody::Completion(Completion {
            wr_id: 1,
            result: Ok(None),
        }));
        let denied = frame(FrameBody::Completion(Completion {
            wr_id: 1,
            result: Err(FabricError::Permission),
        }));
        let request = frame(FrameBody::ClientRequest {
            client: 1,
            seq: 1,
            command: vec![1],
        });
        let reply = frame(FrameBody::ClientReply {
            client: 1,
            seq: 1,
            result: Ok(vec![]),
        });
        let bad_field = |f: &Frame, at: usize, v: u8| match Frame::decode(&altered(f, at, v)) {
            Err(FrameError::BadField { .. }) => {}
            other => panic!("{f:?} with byte {at} = {v}: {other:?}"),
        };
        for f in [&write, &read, &ok_none, &request, &reply] {
            bad_field(f, AT_RESERVED, 1);
            bad_field(f, AT_FLAGS, 1 << 7);
        }
        bad_field(&write, AT_FLAGS, FLAG_HAS_DATA);
        bad_field(&write, AT_STATUS, STATUS_PERMISSION);
        // A read carrying a payload.
        let mut b = enc(&read);
        b[AT_PAYLOAD_LEN] = 1;
        b.push(0);
        reseal(&mut b);
        assert_eq!(
            Frame::decode(&b),
            Err(FrameError::BadField {
                field: "payload_len",
                value: 1
            })
        );
        // A completion without data carrying a payload.
        let mut b = enc(&ok_none);
        b[AT_PAYLOAD_LEN] = 1;
        b.push(0);
        reseal(&mut b);
        assert_eq!(
            Frame::decode(&b),
            Err(FrameError::BadField {
                field: "payload_len",
                value: 1
            })
        );
        // Only log requests are numbered: a sequence number anywhere else is refused.
        for f in [&read, &samples()[1], &ok_none, &denied, &request, &reply] {
            bad_field(f, AT_SEQ, 1);
            bad_field(f, AT_SEQ + 7, 0x80);
        }
        // A version 1 frame (the layout before `seq`) is refused as such.
        assert_eq!(
            Frame::decode(&altered(&write, AT_VERSION, 1)),
            Err(FrameError::UnsupportedVersion(1))
        );
        for f in [&ok_none, &request, &reply] {
            bad_field(f, AT_FLAGS, FLAG_RECONNECT);
            bad_field(f, AT_REGION, 1);
            bad_field(f, AT_LENGTH, 1);
            bad_field(f, AT_BALLOT, 1);
            bad_field(f, AT_OFFSET + 7, 1);
        }
        bad_field(&denied, AT_FLAGS, FLAG_HAS_DATA);
        bad_field(&ok_none, AT_STATUS, STATUS_CLIENT_ERROR);
        bad_field(&request, AT_WR_ID, 1);
        bad_field(&request, AT_STATUS, STATUS_CLIENT_ERROR);
        bad_field(&reply, AT_STATUS, STATUS_UNREACHABLE);
        // Unknown codes are named.
        assert_eq!(
            Frame::decode(&altered(&write, AT_KIND, 0)),
            Err(FrameError::UnknownKind(0))
        );
        assert_eq!(
            Frame::decode(&altered(&write, AT_KIND, 6)),
            Err(FrameError::UnknownKind(6))
        );
        assert_eq!(
            Frame::decode(&altered(&write, AT_REGION, 2)),
            Err(FrameError::UnknownRegion(2))
        );
        assert_eq!(
            Frame::decode(&altered(&ok_none, AT_STATUS, 4)),
            Err(FrameError::UnknownStatus(4))
        );
        // A write whose length disagrees with its payload.
        assert!(matches!(
            Frame::decode(&altered(&write, AT_LENGTH, 63)),
            Err(FrameError::LengthMismatch {
                declared: 63,
                available: 64,
                ..
            })
        ));
        // A client message too short for client and seq.
        let mut b = enc(&request);
        b.truncate(HEADER_BYTES + 8);
        b[AT_PAYLOAD_LEN..AT_PAYLOAD_LEN + 4].copy_from_slice(&8u32.to_le_bytes());
        reseal(&mut b);
        assert!(matches!(
            Frame::decode(&b),
            Err(FrameError::Truncated {
                what: "client message header",
                ..
            })
        ));
    }
}
