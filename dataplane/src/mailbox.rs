//! The client ingress of the `shm` fabric: a mapped file per node (mode 0600, in the cluster's
//! directory) with one slot per attached client.
//!
//! A client claims a free slot (its owner word goes from 0 to the client's pid; a slot whose
//! owner process is gone is taken over) and marks it active (one bit per slot in one word).
//! To send, it writes a request frame into the slot and then publishes the request's post
//! number. The data plane watches the post word of every active slot; when one moves it reads
//! the frame (and re-reads the post number, so a frame being overwritten is skipped: the new
//! post shows on the next look), and later writes the reply frame and echoes the post number.
//! The frames are the `udp` fabric's client frames ([`crate::fabric::frame`]), checksummed, so a
//! torn or malformed request is caught and counted.
//!
//! Each direction costs one cache-line transfer before the data moves: the post number, the
//! length and the first bytes of the frame share a line, the rest of the frame follows in the
//! next lines (fetched together, not one after another), and an unchanged slot costs the data
//! plane a read of a line its own cache holds. A slot whose client let go (owner 0) leaves the
//! active set.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use crate::fabric::shm::process_alive;
use crate::mapped::MappedFile;

const MAGIC: u64 = 0x7261_7061_785f_6d63; // "rapax_mc"
const HDR_MAGIC: usize = 0;
const HDR_SLOTS: usize = 8;
const HDR_AREA: usize = 16;
const HDR_SERVER_PID: usize = 24;
/// One bit per slot whose client has attached; a line of its own.
const ACTIVE: usize = 64;
const SLOTS_AT: usize = 128;
// The request half of a slot: owner, post number, length, then the frame.
const SLOT_OWNER: usize = 0;
const SLOT_REQ_POST: usize = 8;
const SLOT_REQ_LEN: usize = 16;
const SLOT_REQ_AREA: usize = 24;
// The reply half, from the first line after the request area: post, length, frame.
const REP_POST: usize = 0;
const REP_LEN: usize = 8;
const REP_AREA: usize = 16;

/// Most client slots per node (one active-set word).
pub const MAX_SLOTS: usize = 64;

/// Errors of the shared-memory client ingress.
#[derive(Debug, thiserror::Error)]
pub enum MailboxError {
    #[error("mailbox {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("mailbox {path} is not a rapax mailbox (or of another size)")]
    Layout { path: PathBuf },
    #[error("mailbox {path}: all {slots} client slots are taken")]
    NoFreeSlot { path: PathBuf, slots: usize },
    #[error("request frame of {bytes} bytes exceeds the slot's {max}")]
    TooLarge { bytes: usize, max: usize },
}

/// The path of node `node`'s mailbox in the cluster directory `dir`.
pub fn mailbox_path(dir: &Path, node: u8) -> PathBuf {
    dir.join(format!("node-{node}.mailbox"))
}

/// Where a slot's reply half starts, from the slot's start.
fn reply_at(area: usize) -> usize {
    (SLOT_REQ_AREA + area).next_multiple_of(64)
}

/// Keeps asking for the lines past the first of a half (request or reply) at `at` whose frame
/// starts `area_at` bytes in, as far as a frame of `len` bytes (the last one) reached: while a
/// reader polls the half's first line, the rest of the next frame then arrives with it, not
/// one transfer after another.
fn prefetch_rest(map: &MappedFile, at: usize, area_at: usize, len: usize) {
    map.prefetch(at + 64, len.saturating_sub(64 - area_at));
}

fn slot_bytes(area: usize) -> usize {
    reply_at(area) + (REP_AREA + area).next_multiple_of(64)
}

fn open_mapped(path: &Path, create_len: Option<u64>) -> Result<MappedFile, MailboxError> {
    let io = |source| MailboxError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut opts = OpenOptions::new();
    opts.read(true).write(true);
    if create_len.is_some() {
        opts.create(true).mode(0o600);
    }
    let file = opts.open(path).map_err(io)?;
    if let Some(len) = create_len {
        let existing = file.metadata().map_err(io)?.len();
        if existing != len {
            file.set_len(0).map_err(io)?;
            file.set_len(len).map_err(io)?;
        }
    }
    MappedFile::map(&file).map_err(io)
}

/// The data plane's end: takes requests, writes replies.
pub struct MailboxServer {
    map: MappedFile,
    slots: usize,
    area: usize,
    /// The post number last taken from each slot.
    taken: Vec<u64>,
    /// The length of the last request taken from each slot.
    last_len: Vec<usize>,
    buf: Vec<u8>,
}

impl MailboxServer {
    /// Creates (or re-opens, keeping attached clients) the mailbox at `path` with `slots` slots
    /// of `area` bytes for a request frame and as many for a reply frame. Requests posted and not
    /// answered before a restart are taken again.
    pub fn create(path: &Path, slots: usize, area: usize) -> Result<MailboxServer, MailboxError> {
        assert!((1..=MAX_SLOTS).contains(&slots), "1..=64 mailbox slots");
        let area = area.next_multiple_of(64);
        let len = (SLOTS_AT + slots * slot_bytes(area)) as u64;
        let map = open_mapped(path, Some(len))?;
        let same = map.word(HDR_MAGIC).load(Ordering::SeqCst) == MAGIC
            && map.word(HDR_SLOTS).load(Ordering::SeqCst) == slots as u64
            && map.word(HDR_AREA).load(Ordering::SeqCst) == area as u64;
        if !same {
            map.store(0, &vec![0u8; len as usize]);
            map.word(HDR_SLOTS).store(slots as u64, Ordering::SeqCst);
            map.word(HDR_AREA).store(area as u64, Ordering::SeqCst);
            map.word(HDR_MAGIC).store(MAGIC, Ordering::SeqCst);
        }
        map.word(HDR_SERVER_PID)
            .store(u64::from(std::process::id()), Ordering::SeqCst);
        let mut taken = vec![0; slots];
        let mut pending = 0u64;
        for (k, t) in taken.iter_mut().enumerate() {
            let at = SLOTS_AT + k * slot_bytes(area);
            *t = map
                .word(at + reply_at(area) + REP_POST)
                .load(Ordering::SeqCst);
            if map.word(at + SLOT_REQ_POST).load(Ordering::SeqCst) != *t {
                pending |= 1 << k;
            }
        }
        map.word(ACTIVE).fetch_or(pending, Ordering::SeqCst);
        Ok(MailboxServer {
            map,
            slots,
            area,
            last_len: vec![0; taken.len()],
            taken,
            buf: vec![0; area],
        })
    }

    /// The largest frame a slot holds.
    pub fn area(&self) -> usize {
        self.area
    }

    fn slot_at(&self, k: usize) -> usize {
        SLOTS_AT + k * slot_bytes(self.area)
    }

    /// Takes every request posted since the last call: `f(slot, frame bytes)`; returns how many.
    /// A request whose length is out of bounds is passed as an empty frame (it fails to decode).
    pub fn poll(&mut self, mut f: impl FnMut(usize, &[u8])) -> usize {
        let mut n = 0;
        for k in self.active_slots() {
            let at = self.slot_at(k);
            let post = self.map.word(at + SLOT_REQ_POST).load(Ordering::Acquire);
            if post == self.taken[k] {
                if self.map.word(at + SLOT_OWNER).load(Ordering::Relaxed) == 0 {
                    self.retire(k);
                }
                // When the client writes its next request, its lines come with the first.
                prefetch_rest(&self.map, at, SLOT_REQ_AREA, self.last_len[k]);
                continue;
            }
            let len = self.map.word(at + SLOT_REQ_LEN).load(Ordering::Acquire) as usize;
            let len = if len <= self.area { len } else { 0 };
            let mut buf = std::mem::take(&mut self.buf);
            self.map.load(at + SLOT_REQ_AREA, &mut buf[..len]);
            if self.map.word(at + SLOT_REQ_POST).load(Ordering::Acquire) == post {
                self.taken[k] = post;
                self.last_len[k] = len;
                f(k, &buf[..len]);
                n += 1;
            }
            self.buf = buf;
        }
        n
    }

    /// Whether a request was posted since the last [`MailboxServer::poll`]: reads the active
    /// set and each active slot's post number, lines the data plane's cache keeps until a
    /// client writes one. For watching between polls.
    pub fn has_new(&self) -> bool {
        self.active_slots().any(|k| {
            self.map
                .word(self.slot_at(k) + SLOT_REQ_POST)
                .load(Ordering::Acquire)
                != self.taken[k]
        })
    }

    /// The slots in the active set now, lowest first (bits past the slot count ignored).
    fn active_slots(&self) -> impl Iterator<Item = usize> + use<> {
        let mut active = self.map.word(ACTIVE).load(Ordering::Acquire);
        let slots = self.slots;
        std::iter::from_fn(move || {
            while active != 0 {
                let k = active.trailing_zeros() as usize;
                active &= active - 1;
                if k < slots {
                    return Some(k);
                }
            }
            None
        })
    }

    /// Takes slot `k`, whose client let go, out of the active set, unless a new client claimed
    /// it meanwhile: the claimer sets its bit after its claim and this re-reads the owner after
    /// clearing it (both sequentially consistent), so one of the two sees the other.
    fn retire(&self, k: usize) {
        let bit = 1u64 << k;
        self.map.word(ACTIVE).fetch_and(!bit, Ordering::SeqCst);
        if self
            .map
            .word(self.slot_at(k) + SLOT_OWNER)
            .load(Ordering::SeqCst)
            != 0
        {
            self.map.word(ACTIVE).fetch_or(bit, Ordering::SeqCst);
        }
    }

    /// Answers the request last taken from `slot` with `frame` (dropped if it does not fit).
    pub fn reply(&self, slot: usize, frame: &[u8]) -> bool {
        if slot >= self.slots || frame.len() > self.area {
            return false;
        }
        let at = self.slot_at(slot) + reply_at(self.area);
        self.map.store(at + REP_AREA, frame);
        self.map
            .word(at + REP_LEN)
            .store(frame.len() as u64, Ordering::Release);
        self.map
            .word(at + REP_POST)
            .store(self.taken[slot], Ordering::Release);
        true
    }
}

/// A client's end: one claimed slot of one node's mailbox.
pub struct MailboxClient {
    map: MappedFile,
    path: PathBuf,
    slot: usize,
    area: usize,
    pid: u64,
    post: u64,
    /// The length of the last reply (the lines to ask for while waiting for the next).
    last_reply: std::cell::Cell<usize>,
}

impl MailboxClient {
    /// Opens the mailbox at `path` and claims a free slot.
    pub fn open(path: &Path) -> Result<MailboxClient, MailboxError> {
        let map = open_mapped(path, None)?;
        let layout = || MailboxError::Layout {
            path: path.to_path_buf(),
        };
        if map.len() < SLOTS_AT || map.word(HDR_MAGIC).load(Ordering::SeqCst) != MAGIC {
            return Err(layout());
        }
        let slots = map.word(HDR_SLOTS).load(Ordering::SeqCst) as usize;
        let area = map.word(HDR_AREA).load(Ordering::SeqCst) as usize;
        if slots == 0 || slots > MAX_SLOTS || SLOTS_AT + slots * slot_bytes(area) > map.len() {
            return Err(layout());
        }
        let pid = u64::from(std::process::id());
        for k in 0..slots {
            let at = SLOTS_AT + k * slot_bytes(area);
            let owner = map.word(at + SLOT_OWNER);
            let cur = owner.load(Ordering::SeqCst);
            let free = cur == 0 || (cur != pid && !process_alive(cur));
            if free
                && owner
                    .compare_exchange(cur, pid, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            {
                let post = map.word(at + SLOT_REQ_POST).load(Ordering::SeqCst);
                map.word(ACTIVE).fetch_or(1 << k, Ordering::SeqCst);
                return Ok(MailboxClient {
                    map,
                    path: path.to_path_buf(),
                    slot: k,
                    area,
                    pid,
                    post,
                    last_reply: std::cell::Cell::new(0),
                });
            }
        }
        Err(MailboxError::NoFreeSlot {
            path: path.to_path_buf(),
            slots,
        })
    }

    /// The largest frame this slot holds.
    pub fn area(&self) -> usize {
        self.area
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn at(&self) -> usize {
        SLOTS_AT + self.slot * slot_bytes(self.area)
    }

    /// Whether the data plane that serves this mailbox runs (its pid is alive).
    pub fn server_alive(&self) -> bool {
        process_alive(self.map.word(HDR_SERVER_PID).load(Ordering::Relaxed))
    }

    /// Posts `frame` as this slot's next request (any earlier unanswered one is abandoned).
    pub fn send(&mut self, frame: &[u8]) -> Result<(), MailboxError> {
        if frame.len() > self.area {
            return Err(MailboxError::TooLarge {
                bytes: frame.len(),
                max: self.area,
            });
        }
        let at = self.at();
        self.post += 1;
        self.map.store(at + SLOT_REQ_AREA, frame);
        self.map
            .word(at + SLOT_REQ_LEN)
            .store(frame.len() as u64, Ordering::Release);
        self.map
            .word(at + SLOT_REQ_POST)
            .store(self.post, Ordering::Release);
        // Back into the active set if the data plane retired the slot between our claim and
        // now (it saw the previous owner's release).
        let bit = 1u64 << self.slot;
        if self.map.word(ACTIVE).load(Ordering::SeqCst) & bit == 0 {
            self.map.word(ACTIVE).fetch_or(bit, Ordering::SeqCst);
        }
        Ok(())
    }

    /// The reply to the last request, copied into `out`, once it has arrived.
    pub fn try_recv(&self, out: &mut Vec<u8>) -> bool {
        let at = self.at() + reply_at(self.area);
        if self.map.word(at + REP_POST).load(Ordering::Acquire) != self.post {
            // When the data plane writes the reply, its lines come with the first.
            prefetch_rest(&self.map, at, REP_AREA, self.last_reply.get());
            return false;
        }
        let len = self.map.word(at + REP_LEN).load(Ordering::Acquire) as usize;
        if len > self.area {
            return false;
        }
        self.last_reply.set(len);
        out.resize(len, 0);
        self.map.load(at + REP_AREA, out);
        // The reply may have been overwritten by the answer to a later post of ours: impossible,
        // we post only after this one; but check the post again for a torn copy.
        self.map.word(at + REP_POST).load(Ordering::Acquire) == self.post
    }
}

impl Drop for MailboxClient {
    fn drop(&mut self) {
        let at = self.at();
        let _ = self.map.word(at + SLOT_OWNER).compare_exchange(
            self.pid,
            0,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> tempdir::Dir {
        tempdir::Dir::new("mailbox")
    }

    mod tempdir {
        use std::path::{Path, PathBuf};
        pub struct Dir(PathBuf);
        impl Dir {
            pub fn new(tag: &str) -> Dir {
                let p = std::env::temp_dir().join(format!(
                    "rapax-test-{tag}-{}-{:?}",
                    std::process::id(),
                    std::thread::current().id()
                ));
                let _ = std::fs::remove_dir_all(&p);
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
            pub fn path(&self) -> &Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn requests_and_replies_round_trip_per_slot() {
        let d = dir();
        let path = d.path().join("m");
        let mut server = MailboxServer::create(&path, 4, 256).unwrap();
        let mut a = MailboxClient::open(&path).unwrap();
        let mut b = MailboxClient::open(&path).unwrap();
        assert_ne!(a.slot, b.slot);
        assert!(!server.has_new());
        a.send(b"hello").unwrap();
        assert!(server.has_new(), "a post shows before the poll");
        b.send(b"world!").unwrap();
        let mut got = Vec::new();
        assert_eq!(server.poll(|k, f| got.push((k, f.to_vec()))), 2);
        assert!(!server.has_new(), "the poll took both");
        got.sort();
        assert_eq!(got[0], (a.slot, b"hello".to_vec()));
        assert_eq!(got[1], (b.slot, b"world!".to_vec()));
        // Nothing new: no requests.
        assert_eq!(server.poll(|_, _| panic!("no request")), 0);
        let mut out = Vec::new();
        assert!(!a.try_recv(&mut out));
        assert!(server.reply(a.slot, b"re:hello"));
        assert!(a.try_recv(&mut out));
        assert_eq!(out, b"re:hello");
        assert!(!b.try_recv(&mut out));
        // Oversize frames are refused on both sides.
        assert!(matches!(
            a.send(&[0u8; 257]),
            Err(MailboxError::TooLarge { .. })
        ));
        assert!(!server.reply(a.slot, &[0u8; 257]));
    }

    #[test]
    fn slots_run_out_and_are_released_on_drop() {
        let d = dir();
        let path = d.path().join("m");
        let _server = MailboxServer::create(&path, 2, 64).unwrap();
        let a = MailboxClient::open(&path).unwrap();
        let _b = MailboxClient::open(&path).unwrap();
        assert!(matches!(
            MailboxClient::open(&path),
            Err(MailboxError::NoFreeSlot { slots: 2, .. })
        ));
        drop(a);
        assert!(MailboxClient::open(&path).is_ok());
    }

    #[test]
    fn a_restarted_server_takes_unanswered_requests_again() {
        let d = dir();
        let path = d.path().join("m");
        let mut server = MailboxServer::create(&path, 2, 64).unwrap();
        let mut a = MailboxClient::open(&path).unwrap();
        a.send(b"one").unwrap();
        assert_eq!(server.poll(|_, _| {}), 1);
        drop(server); // died before replying
        let mut server = MailboxServer::create(&path, 2, 64).unwrap();
        let mut got = Vec::new();
        assert_eq!(server.poll(|_, f| got.push(f.to_vec())), 1);
        assert_eq!(got, vec![b"one".to_vec()]);
        server.reply(a.slot, b"ok");
        let mut out = Vec::new();
        assert!(a.try_recv(&mut out));
    }

    #[test]
    fn a_released_slot_leaves_the_active_set_and_a_new_client_rejoins_it() {
        let d = dir();
        let path = d.path().join("m");
        let mut server = MailboxServer::create(&path, 2, 64).unwrap();
        let active = |s: &MailboxServer| s.map.word(ACTIVE).load(Ordering::SeqCst);
        let mut a = MailboxClient::open(&path).unwrap();
        let slot = a.slot;
        assert_eq!(active(&server), 1 << slot, "a claim makes the slot active");
        a.send(b"one").unwrap();
        assert_eq!(server.poll(|_, _| {}), 1);
        assert!(server.reply(slot, b"ok"));
        drop(a);
        assert_eq!(server.poll(|_, _| panic!("no request")), 0);
        assert_eq!(active(&server), 0, "the released slot was retired");
        let mut b = MailboxClient::open(&path).unwrap();
        assert_eq!(b.slot, slot);
        // A retire that raced with the claim (it read the old owner's 0): the send puts the
        // slot back.
        server
            .map
            .word(ACTIVE)
            .fetch_and(!(1 << slot), Ordering::SeqCst);
        b.send(b"two").unwrap();
        let mut got = Vec::new();
        assert_eq!(server.poll(|_, f| got.push(f.to_vec())), 1);
        assert_eq!(got, vec![b"two".to_vec()]);
        assert!(server.reply(slot, b"ok2"));
        let mut out = Vec::new();
        assert!(b.try_recv(&mut out));
        assert_eq!(out, b"ok2");
    }

    #[test]
    fn not_a_mailbox_is_a_clear_error() {
        let d = dir();
        let path = d.path().join("m");
        std::fs::write(&path, vec![7u8; 4096]).unwrap();
        assert!(matches!(
            MailboxClient::open(&path),
            Err(MailboxError::Layout { .. })
        ));
        assert!(matches!(
            MailboxClient::open(&d.path().join("absent")),
            Err(MailboxError::Io { .. })
        ));
    }

    #[test]
    fn mailbox_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = dir();
        let path = d.path().join("m");
        let _server = MailboxServer::create(&path, 1, 64).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
