//! The `shm` fabric's memory: every node's regions are one file in a per-cluster directory
//! (tmpfs, mode 0600), mapped by every node process of the host.
//!
//! A one-sided write is a copy into the target's mapping under the target's rights word:
//!
//! - the rights area of each region holds the granted ballot (`holder`), one in-flight guard word
//!   per writer, and per-writer connection-error bits;
//! - a writer raises its guard (its pid), then checks the holder; if it may write it copies and
//!   lowers the guard (release); `revoke` clears the holder, then waits until the revoked writer's
//!   guard is down (or its process is gone). Either the writer sees the cleared holder or
//!   `revoke` sees the raised guard: revocation is complete when `revoke` returns (contract
//!   point 3). The store-then-load order this needs on the writer's side is paid by `revoke`:
//!   writer processes register for `membarrier(2)`'s expedited global barrier, raise the guard
//!   with a plain store and only a compiler barrier before the holder check, and `revoke` runs
//!   the barrier after clearing the holder, so every running writer's raised guard is visible
//!   before it looks (a stopped writer passed a barrier when it was switched out). A guard store
//!   with a full fence, on every write, would wait for the previous copy's cache lines to reach
//!   this core: one cross-core transfer per follower per command. Without the barrier (a kernel
//!   before 4.16) writers fence every guard, as sequentially consistent stores;
//! - a writer stopped (SIGSTOP, a debugger) with its guard raised would hold `revoke` for as
//!   long as it stays stopped, which is the whole time a paused old leader is deposed. The shm
//!   analogue of a NIC flushing a queue pair is to fence it: a writer that stays stopped with
//!   its guard raised for [`FENCE_STOPPED_WRITER_AFTER`] is killed (only a process of this
//!   same executable, never the revoker itself), so its copy can never land;
//! - every byte is moved with atomic loads and stores, so concurrent copies are well defined; a
//!   reader may see a copy torn by a write in progress, which the checksums catch.
//!
//! Operations complete at once (the memory is local). A region whose owner has gone offline
//! (shut down, or its memory lost) answers with [`FabricError::Unreachable`].

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::mapped::MappedFile;

use super::{Completion, FabricError, LocalMemory, Op, Post, Region};
use crate::protocol::layout::{peer_may_write_control, LogGeometry, CB_BYTES};
use crate::protocol::{Ballot, NodeId, MAX_NODES};

const MAGIC: u64 = 0x7261_7061_785f_7368; // "rapax_sh"
const HDR_MAGIC: usize = 0;
const HDR_LOG_BYTES: usize = 8;
const HDR_ONLINE: usize = 16;
const RIGHTS_HOLDER: usize = 64;
const RIGHTS_ERROR_BITS: usize = 72;
const RIGHTS_REVOKED_BITS: usize = 80;
const RIGHTS_GUARDS: usize = 128;
const CONTROL_AT: usize = RIGHTS_GUARDS + 8 * MAX_NODES + 128;
const LOG_AT: usize = (CONTROL_AT + CB_BYTES).next_multiple_of(4096);

/// Errors setting up shared-memory regions.
#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    #[error("shm region {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("shm region {path} is not a rapax region of this geometry")]
    Layout { path: PathBuf },
    #[error(
        "shm region {path}: cannot reserve {bytes} bytes ({source}); the tmpfs holding it is too \
         small for the profile's log (a smaller log.capacity_entries or slot_bytes, or a larger \
         /dev/shm)"
    )]
    NoSpace {
        path: PathBuf,
        bytes: u64,
        source: std::io::Error,
    },
}

/// One node's region file, mapped, and the size of its log.
struct Mapped {
    file: MappedFile,
    log_bytes: usize,
}

impl std::ops::Deref for Mapped {
    type Target = MappedFile;

    fn deref(&self) -> &MappedFile {
        &self.file
    }
}

/// The size of one node's region file (rights area, control block, log) for `geometry`.
pub fn region_bytes(geometry: &LogGeometry) -> u64 {
    (LOG_AT + geometry.log_bytes()) as u64
}

fn region_path(dir: &Path, node: NodeId) -> PathBuf {
    dir.join(format!("node-{node}.region"))
}

/// How a region is mapped: faulted in at once (a data plane, which writes and reads logs on its
/// fast path) or on demand (set-up, and observers that read only control blocks).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Faults {
    Now,
    OnDemand,
}

fn map_file(path: &Path, len: u64, create: bool, faults: Faults) -> Result<Mapped, ShmError> {
    let io = |source| ShmError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut opts = OpenOptions::new();
    opts.read(true).write(true);
    if create {
        use std::os::unix::fs::OpenOptionsExt;
        opts.create(true).mode(0o600);
    }
    let file: File = opts.open(path).map_err(io)?;
    let existing = file.metadata().map_err(io)?.len();
    if create && existing == 0 {
        file.set_len(len).map_err(io)?;
        // Reserve every page now: a full tmpfs is an error here, not a SIGBUS in the middle of
        // a run, and no write on the fast path waits for the kernel to allocate and zero a page.
        nix::fcntl::posix_fallocate(std::os::fd::AsRawFd::as_raw_fd(&file), 0, len as i64)
            .map_err(|e| ShmError::NoSpace {
                path: path.to_path_buf(),
                bytes: len,
                source: e.into(),
            })?;
    } else if existing != len {
        // Never resize a region that exists: it holds a node's accepted values.
        return Err(ShmError::Layout {
            path: path.to_path_buf(),
        });
    }
    let file = match faults {
        Faults::Now => MappedFile::map_populated(&file),
        Faults::OnDemand => MappedFile::map(&file),
    };
    Ok(Mapped {
        file: file.map_err(io)?,
        log_bytes: len as usize - LOG_AT,
    })
}

/// The regions of one cluster on this host, as seen by one node's processes.
pub struct ShmFabric {
    me: NodeId,
    regions: Vec<Mapped>,
    pid: u64,
    completions: Vec<Completion>,
    fenced: u64,
    last_fenced: Option<(NodeId, u64)>,
    /// Guards raised without a fence (this process is registered for the expedited global
    /// membarrier that `revoke` runs).
    light_guards: bool,
    /// The log's slot size: a log write is followed by a prefetch of the same span one slot
    /// further, where the leader's next entry goes.
    slot_bytes: usize,
}

/// How long `revoke` lets a writer stay stopped with a write in flight before fencing it.
pub const FENCE_STOPPED_WRITER_AFTER: Duration = Duration::from_millis(1);

impl ShmFabric {
    /// Creates (or re-opens, keeping its memory) node `me`'s region in `dir`, maps every node's
    /// region (all `nodes` must exist; create them first), and marks `me` online.
    pub fn open(
        dir: &Path,
        me: NodeId,
        nodes: usize,
        geometry: &LogGeometry,
    ) -> Result<ShmFabric, ShmError> {
        let len = (LOG_AT + geometry.log_bytes()) as u64;
        let mut regions = Vec::with_capacity(nodes);
        for n in 0..nodes as NodeId {
            let path = region_path(dir, n);
            let m = map_file(&path, len, n == me, Faults::Now)?;
            if n == me && m.word(HDR_MAGIC).load(Ordering::SeqCst) != MAGIC {
                m.word(HDR_LOG_BYTES)
                    .store(geometry.log_bytes() as u64, Ordering::SeqCst);
                m.word(HDR_MAGIC).store(MAGIC, Ordering::SeqCst);
            }
            regions.push(m);
        }
        let fabric = ShmFabric {
            me,
            regions,
            pid: u64::from(std::process::id()),
            completions: Vec::new(),
            fenced: 0,
            last_fenced: None,
            light_guards: rapax_ffi::sched::membarrier_register_global_expedited().is_ok(),
            slot_bytes: geometry.slot_bytes,
        };
        for (n, m) in fabric.regions.iter().enumerate() {
            if m.word(HDR_MAGIC).load(Ordering::SeqCst) != MAGIC
                || m.word(HDR_LOG_BYTES).load(Ordering::SeqCst) != geometry.log_bytes() as u64
            {
                return Err(ShmError::Layout {
                    path: region_path(dir, n as NodeId),
                });
            }
        }
        fabric.set_online(true);
        Ok(fabric)
    }

    /// Maps every node's region in `dir` (all must exist) without touching any: the view of a
    /// node's control-plane process, which only reads peers' control blocks (heartbeat reads).
    pub fn open_observer(
        dir: &Path,
        me: NodeId,
        nodes: usize,
        geometry: &LogGeometry,
    ) -> Result<ShmFabric, ShmError> {
        let len = (LOG_AT + geometry.log_bytes()) as u64;
        let regions = (0..nodes as NodeId)
            .map(|n| map_file(&region_path(dir, n), len, false, Faults::OnDemand))
            .collect::<Result<Vec<_>, _>>()?;
        for (n, m) in regions.iter().enumerate() {
            if m.word(HDR_MAGIC).load(Ordering::SeqCst) != MAGIC {
                return Err(ShmError::Layout {
                    path: region_path(dir, n as NodeId),
                });
            }
        }
        Ok(ShmFabric {
            me,
            regions,
            pid: u64::from(std::process::id()),
            completions: Vec::new(),
            fenced: 0,
            last_fenced: None,
            light_guards: false,
            slot_bytes: geometry.slot_bytes,
        })
    }

    /// Whether node `me`'s region in `dir` exists and was set up (its memory can be kept).
    pub fn region_exists(dir: &Path, me: NodeId, geometry: &LogGeometry) -> bool {
        let len = (LOG_AT + geometry.log_bytes()) as u64;
        match map_file(&region_path(dir, me), len, false, Faults::OnDemand) {
            Ok(m) => m.word(HDR_MAGIC).load(Ordering::SeqCst) == MAGIC,
            Err(_) => false,
        }
    }

    /// Creates every node's region file in `dir` (mode 0600, zeroed) where missing; existing
    /// regions of this geometry are kept, others refused.
    pub fn create_all(dir: &Path, nodes: usize, geometry: &LogGeometry) -> Result<(), ShmError> {
        std::fs::create_dir_all(dir).map_err(|source| ShmError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let len = (LOG_AT + geometry.log_bytes()) as u64;
        for n in 0..nodes as NodeId {
            let m = map_file(&region_path(dir, n), len, true, Faults::OnDemand)?;
            m.word(HDR_LOG_BYTES)
                .store(geometry.log_bytes() as u64, Ordering::SeqCst);
            m.word(HDR_MAGIC).store(MAGIC, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Zeroes this node's control block and log: its memory is lost (a restart that must not
    /// trust what the region holds).
    pub fn zero_own(&mut self) {
        let own = &self.regions[self.me as usize];
        for at in (CONTROL_AT..CONTROL_AT + CB_BYTES).step_by(8) {
            own.word(at).store(0, Ordering::SeqCst);
        }
        for at in (LOG_AT..LOG_AT + own.log_bytes).step_by(8) {
            own.word(at).store(0, Ordering::Relaxed);
        }
        std::sync::atomic::fence(Ordering::SeqCst);
    }

    /// Marks this node's region reachable (or not) by peers.
    pub fn set_online(&self, online: bool) {
        self.regions[self.me as usize]
            .word(HDR_ONLINE)
            .store(u64::from(online), Ordering::SeqCst);
    }

    /// Carries out `post` at once; its completion is queued for [`ShmFabric::poll`].
    pub fn post(&mut self, post: Post) {
        let result = self.execute(&post);
        self.completions.push(Completion {
            wr_id: post.wr_id,
            result,
        });
    }

    /// Takes the completions of everything posted so far.
    pub fn poll(&mut self) -> Vec<Completion> {
        std::mem::take(&mut self.completions)
    }

    /// Moves the completions of everything posted so far to the end of `out` (the data plane's
    /// turn: both vectors keep their allocations).
    pub fn poll_into(&mut self, out: &mut Vec<Completion>) {
        out.append(&mut self.completions);
    }

    fn execute(&self, post: &Post) -> Result<Option<Vec<u8>>, FabricError> {
        let me = self.me;
        let Some(t) = self.regions.get(post.target as usize) else {
            return Err(FabricError::Unreachable);
        };
        if t.word(HDR_ONLINE).load(Ordering::SeqCst) == 0 {
            return Err(FabricError::Unreachable);
        }
        let bit = 1u64 << me;
        if post.reconnect {
            t.word(RIGHTS_ERROR_BITS).fetch_and(!bit, Ordering::SeqCst);
            t.word(RIGHTS_REVOKED_BITS)
                .fetch_and(!bit, Ordering::SeqCst);
        }
        match &post.op {
            Op::Read {
                region,
                offset,
                len,
            } => {
                let (base, size) = region_span(t, *region);
                if offset + len > size {
                    return Err(FabricError::Permission);
                }
                if *region == Region::Log && self.broken(t, bit) {
                    return Err(self.broken_error(t, bit));
                }
                let mut buf = vec![0u8; *len];
                t.load(base + offset, &mut buf);
                Ok(Some(buf))
            }
            Op::Write {
                region: Region::Control,
                offset,
                bytes,
            } => {
                if !peer_may_write_control(me, *offset, bytes.len()) {
                    return Err(FabricError::Permission);
                }
                t.store(CONTROL_AT + offset, bytes);
                Ok(None)
            }
            Op::Write {
                region: Region::Log,
                offset,
                bytes,
            } => {
                if offset + bytes.len() > t.log_bytes {
                    return Err(FabricError::Permission);
                }
                if self.broken(t, bit) {
                    return Err(self.broken_error(t, bit));
                }
                let light = self.light_guards;
                guarded_write(t, me, self.pid, light, post.ballot, LOG_AT + offset, bytes)
                    .inspect_err(|_| {
                        // A refused write breaks the connection, as on an RC queue pair.
                        t.word(RIGHTS_ERROR_BITS).fetch_or(bit, Ordering::SeqCst);
                    })?;
                self.prefetch_next(t, *offset, bytes.len());
                Ok(None)
            }
        }
    }

    /// Prefetches the span a log write at `offset` of `len` bytes covers, one slot further
    /// (where a leader's next entry goes), unless that runs past the log's end: the next copy
    /// then finds its lines in this core's cache instead of missing on each (a log laps far
    /// beyond the caches, so they come from memory).
    fn prefetch_next(&self, t: &Mapped, offset: usize, len: usize) {
        let next = offset + self.slot_bytes;
        if next + len <= t.log_bytes {
            t.prefetch(LOG_AT + next, len);
        }
    }

    fn broken(&self, t: &Mapped, bit: u64) -> bool {
        t.word(RIGHTS_ERROR_BITS).load(Ordering::SeqCst) & bit != 0
    }

    fn broken_error(&self, t: &Mapped, bit: u64) -> FabricError {
        if t.word(RIGHTS_REVOKED_BITS).load(Ordering::SeqCst) & bit != 0 {
            FabricError::Permission
        } else {
            FabricError::Unreachable
        }
    }

    fn own(&self) -> &Mapped {
        &self.regions[self.me as usize]
    }
}

fn region_span(t: &Mapped, region: Region) -> (usize, usize) {
    match region {
        Region::Control => (CONTROL_AT, CB_BYTES),
        Region::Log => (LOG_AT, t.log_bytes),
    }
}

/// The write path under the target's rights: raise our guard, check the holder, copy, lower.
/// `light`: the guard is raised without a fence (the process is registered for the barrier
/// `revoke` runs; module docs).
fn guarded_write(
    t: &Mapped,
    writer: NodeId,
    pid: u64,
    light: bool,
    ballot: Ballot,
    at: usize,
    bytes: &[u8],
) -> Result<(), FabricError> {
    let guard = t.word(RIGHTS_GUARDS + 8 * writer as usize);
    let holder = if light {
        guard.store(pid, Ordering::Relaxed);
        // Keeps the compiler from moving the check above the raise; the processor's order is
        // `revoke`'s membarrier.
        std::sync::atomic::compiler_fence(Ordering::SeqCst);
        t.word(RIGHTS_HOLDER).load(Ordering::Relaxed)
    } else {
        guard.store(pid, Ordering::SeqCst);
        t.word(RIGHTS_HOLDER).load(Ordering::SeqCst)
    };
    if holder != ballot.0 || ballot == Ballot::ZERO {
        guard.store(0, Ordering::SeqCst);
        return Err(FabricError::Permission);
    }
    t.store(at, bytes);
    guard.store(0, Ordering::Release);
    Ok(())
}

/// Whether process `pid` exists (a zombie still does).
pub(crate) fn process_alive(pid: u64) -> bool {
    use nix::errno::Errno;
    use nix::sys::signal::kill;
    use nix::unistd::Pid;
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    !matches!(kill(Pid::from_raw(pid), None), Err(Errno::ESRCH))
}

/// What a writer process can still do to memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriterState {
    /// Exited, or a zombie: it runs no more code.
    Gone,
    /// Stopped by a signal or a tracer: its write stays in flight until it is continued.
    Stopped,
    /// Running or waiting to run.
    Running,
}

/// What `/proc/PID/stat` says of a process (or a thread, by its id).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcStat {
    /// The state letter: `R`, `S`, `T` stopped, `t` traced, `Z` zombie, ...
    pub state: char,
    /// The kernel's `PF_EXITING` flag: killed and tearing its memory down, while its state
    /// letter may still read `R` or `D` for a few milliseconds.
    pub exiting: bool,
    /// SIGKILL is pending: the process was killed and runs no more of its own code once each
    /// thread enters the kernel, but a thread that has not run since (the main thread, asleep
    /// on a busy core) has neither exited nor set `exiting` yet. A kill puts SIGKILL in every
    /// thread's own pending set at once, so this shows from the moment of the kill.
    pub killed: bool,
}

/// [`ProcStat`] of process `pid`, or `None` when it cannot be read (the process is gone).
pub fn proc_stat(pid: u64) -> Option<ProcStat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// [`ProcStat`] from the text of a `/proc/PID/stat` file.
fn parse_stat(stat: &str) -> Option<ProcStat> {
    const PF_EXITING: u64 = 0x4;
    const SIGKILL_BIT: u64 = 1 << (9 - 1);
    // The command name is in parentheses and may hold anything: after the last ')' come the
    // state (field 3), then ppid, pgrp, session, tty_nr, tpgid, flags (field 9), ..., and the
    // thread's pending signals (field 31).
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    let flags = field(9).unwrap_or(0);
    let pending = field(31).unwrap_or(0);
    Some(ProcStat {
        state,
        exiting: flags & PF_EXITING != 0,
        killed: pending & SIGKILL_BIT != 0,
    })
}

/// The state letter of process `pid` ([`ProcStat::state`]), or `None` when it is gone.
pub fn proc_state(pid: u64) -> Option<char> {
    proc_stat(pid).map(|s| s.state)
}

fn writer_state(pid: u64) -> WriterState {
    match proc_state(pid) {
        None | Some('Z' | 'X' | 'x') => WriterState::Gone,
        Some('T' | 't') => WriterState::Stopped,
        Some(_) => WriterState::Running,
    }
}

/// Kills writer `pid` if it is another process of this same executable (never this one, never
/// a stranger that happens to hold a reused pid). Returns whether it was signalled.
fn fence(pid: u64) -> bool {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    if pid == u64::from(std::process::id()) {
        return false;
    }
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    let (Ok(theirs), Ok(ours)) = (
        std::fs::read_link(format!("/proc/{pid}/exe")),
        std::fs::read_link("/proc/self/exe"),
    ) else {
        return false;
    };
    // A stopped process that receives SIGKILL dies without returning to user code.
    theirs == ours && kill(Pid::from_raw(raw), Signal::SIGKILL).is_ok()
}

impl ShmFabric {
    /// Writers this node fenced (killed while stopped with a write in flight) in `revoke`.
    pub fn fenced_writers(&self) -> u64 {
        self.fenced
    }

    /// The node and pid of the last writer fenced.
    pub fn last_fenced(&self) -> Option<(NodeId, u64)> {
        self.last_fenced
    }
}

impl LocalMemory for ShmFabric {
    fn id(&self) -> NodeId {
        self.me
    }

    fn read_control(&self, offset: usize, buf: &mut [u8]) {
        self.own().load(CONTROL_AT + offset, buf);
    }

    fn control_word(&self, offset: usize) -> u64 {
        self.own().word(CONTROL_AT + offset).load(Ordering::Acquire)
    }

    fn set_control_word(&mut self, offset: usize, value: u64) {
        self.own()
            .word(CONTROL_AT + offset)
            .store(value, Ordering::Release);
    }

    fn log_len(&self) -> usize {
        self.own().log_bytes
    }

    fn read_log(&self, offset: usize, buf: &mut [u8]) {
        self.own().load(LOG_AT + offset, buf);
    }

    fn log_word(&self, offset: usize) -> u64 {
        self.own().word(LOG_AT + offset).load(Ordering::Acquire)
    }

    fn write_log_owner(&mut self, offset: usize, bytes: &[u8]) {
        self.own().store(LOG_AT + offset, bytes);
    }

    fn write_log_as_holder(
        &mut self,
        ballot: Ballot,
        offset: usize,
        bytes: &[u8],
    ) -> Result<(), FabricError> {
        guarded_write(
            self.own(),
            self.me,
            self.pid,
            self.light_guards,
            ballot,
            LOG_AT + offset,
            bytes,
        )?;
        self.prefetch_next(self.own(), offset, bytes.len());
        Ok(())
    }

    fn grant(&mut self, peer: NodeId, ballot: Ballot) {
        assert_eq!(ballot.node(), peer, "a ballot belongs to its node");
        self.own()
            .word(RIGHTS_HOLDER)
            .store(ballot.0, Ordering::SeqCst);
    }

    fn revoke(&mut self, peer: NodeId) {
        let own = self.own();
        // Mark the connection broken by revoke before anything can see it broken, so every
        // refusal from here on reads as a permission error.
        own.word(RIGHTS_REVOKED_BITS)
            .fetch_or(1 << peer, Ordering::SeqCst);
        own.word(RIGHTS_ERROR_BITS)
            .fetch_or(1 << peer, Ordering::SeqCst);
        let holder = own.word(RIGHTS_HOLDER);
        let current = holder.load(Ordering::SeqCst);
        if current != 0 && Ballot(current).node() == peer {
            holder.store(0, Ordering::SeqCst);
        }
        // Every running writer that raised its guard without a fence has it visible now (module
        // docs). Writers of a kernel without the barrier could not register, and fence their
        // guards themselves.
        let _ = rapax_ffi::sched::membarrier_global_expedited();
        // Wait out a write of `peer` that checked the holder before we cleared it.
        let guard = own.word(RIGHTS_GUARDS + 8 * peer as usize);
        let mut stopped_since: Option<Instant> = None;
        let mut signalled = None;
        let mut turns = 0u32;
        loop {
            let pid = guard.load(Ordering::SeqCst);
            if pid == 0 {
                break;
            }
            match writer_state(pid) {
                WriterState::Gone => break,
                WriterState::Running => stopped_since = None,
                WriterState::Stopped => {
                    let since = *stopped_since.get_or_insert_with(Instant::now);
                    if signalled.is_none()
                        && since.elapsed() >= FENCE_STOPPED_WRITER_AFTER
                        && fence(pid)
                    {
                        signalled = Some(pid);
                    }
                }
            }
            // Spin briefly, then give the core away: on a small host the writer may need it.
            turns += 1;
            if turns < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        if let Some(pid) = signalled {
            self.fenced += 1;
            self.last_fenced = Some((peer, pid));
        }
    }

    fn writers(&self) -> Vec<(NodeId, Ballot)> {
        let b = self.own().word(RIGHTS_HOLDER).load(Ordering::SeqCst);
        if b == 0 {
            Vec::new()
        } else {
            vec![(Ballot(b).node(), Ballot(b))]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fabric::contract::{self, ContractHarness};
    use std::sync::atomic::AtomicUsize;

    const GEO: LogGeometry = LogGeometry {
        capacity: 64,
        slot_bytes: 256,
    };

    fn temp_dir() -> PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "rapax-shm-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// Three nodes in one process, each with its own mappings of the cluster's files.
    struct ShmHarness {
        dir: PathBuf,
        nodes: Vec<ShmFabric>,
    }

    impl ShmHarness {
        fn new() -> ShmHarness {
            let dir = temp_dir();
            ShmFabric::create_all(&dir, 3, &GEO).unwrap();
            let nodes = (0..3)
                .map(|i| ShmFabric::open(&dir, i, 3, &GEO).unwrap())
                .collect();
            ShmHarness { dir, nodes }
        }
    }

    impl Drop for ShmHarness {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    impl ContractHarness for ShmHarness {
        fn geometry(&self) -> LogGeometry {
            GEO
        }

        fn post(&mut self, src: NodeId, post: Post) {
            self.nodes[src as usize].post(post);
        }

        fn step(&mut self) -> Vec<(NodeId, Completion)> {
            let mut done = Vec::new();
            for (i, n) in self.nodes.iter_mut().enumerate() {
                done.extend(n.poll().into_iter().map(|c| (i as NodeId, c)));
            }
            done
        }

        fn drain(&mut self) -> Vec<(NodeId, Completion)> {
            self.step()
        }

        fn memory(&mut self, node: NodeId) -> &mut dyn LocalMemory {
            &mut self.nodes[node as usize]
        }

        fn isolate(&mut self, node: NodeId) {
            self.nodes[node as usize].set_online(false);
        }
    }

    #[test]
    fn the_contract_holds_on_shm() {
        contract::run_all(&mut || Box::new(ShmHarness::new()));
    }

    #[test]
    fn a_stat_line_gives_state_exiting_and_a_pending_kill() {
        // Fields 3.. of a real line, with a command name holding ") " to be skipped over.
        let line = |state: &str, flags: u64, pending: u64| {
            let mut f: Vec<String> = (4..=52).map(|n| (n * 10).to_string()).collect();
            f[9 - 4] = flags.to_string();
            f[31 - 4] = pending.to_string();
            format!("4242 (rapax ) x) {state} {}", f.join(" "))
        };
        let s = parse_stat(&line("S", 0x40_0040, 0)).unwrap();
        assert_eq!((s.state, s.exiting, s.killed), ('S', false, false));
        let s = parse_stat(&line("R", 0x40_0044, 0)).unwrap();
        assert_eq!((s.state, s.exiting, s.killed), ('R', true, false));
        // SIGKILL (9) is bit 8; SIGTERM (15) beside it is not a kill.
        let s = parse_stat(&line("S", 0x40_0040, 256 | 16384)).unwrap();
        assert_eq!((s.state, s.exiting, s.killed), ('S', false, true));
        let s = parse_stat(&line("S", 0x40_0040, 16384)).unwrap();
        assert!(!s.killed);
        assert!(parse_stat("garbage").is_none());
        // This process: alive, not exiting, not killed.
        let me = proc_stat(u64::from(std::process::id())).unwrap();
        assert!(!me.exiting && !me.killed);
    }

    #[test]
    fn region_files_are_private_to_the_owner() {
        use std::os::unix::fs::PermissionsExt;
        let h = ShmHarness::new();
        for n in 0..3 {
            let mode = std::fs::metadata(region_path(&h.dir, n))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "node {n}");
        }
    }

    #[test]
    fn a_region_of_another_geometry_is_refused() {
        let h = ShmHarness::new();
        let other = LogGeometry::new(128, 256).unwrap();
        let before = std::fs::metadata(region_path(&h.dir, 0)).unwrap().len();
        assert!(matches!(
            ShmFabric::open(&h.dir, 0, 3, &other),
            Err(ShmError::Layout { .. })
        ));
        let after = std::fs::metadata(region_path(&h.dir, 0)).unwrap().len();
        assert_eq!(before, after, "the existing region was not resized");
    }

    /// Revocation completeness under a concurrent writer thread: after `revoke` returns, not one
    /// byte of the revoked writer lands, and it is refused from then on.
    #[test]
    fn revocation_is_complete_under_a_concurrent_writer() {
        let b = Ballot::new(1, 1);
        for round in 0..20 {
            let h = ShmHarness::new();
            let dir = h.dir.clone();
            let mut owner = ShmFabric::open(&dir, 0, 3, &GEO).unwrap();
            owner.grant(1, b);
            let writer = std::thread::spawn(move || {
                let mut w = ShmFabric::open(&dir, 1, 3, &GEO).unwrap();
                let mut refused_at = None;
                for i in 0..200_000u64 {
                    let s = i % GEO.capacity;
                    let bytes = vec![(i % 251) as u8 + 1; 200];
                    w.post(Post {
                        wr_id: i,
                        target: 0,
                        op: Op::Write {
                            region: Region::Log,
                            offset: GEO.slot_offset(s),
                            bytes,
                        },
                        reconnect: false,
                        ballot: b,
                    });
                    let c = w.poll().pop().unwrap();
                    if c.result.is_err() {
                        assert_eq!(c.result, Err(FabricError::Permission));
                        refused_at.get_or_insert(i);
                    } else {
                        assert!(refused_at.is_none(), "a write succeeded after a refusal");
                    }
                }
                refused_at
            });
            // Let the writer run a little, then revoke.
            std::thread::sleep(std::time::Duration::from_micros(200 * (round % 5 + 1)));
            owner.revoke(1);
            let mut after = vec![0u8; owner.log_len()];
            owner.read_log(0, &mut after);
            let refused_at = writer.join().unwrap();
            let mut end = vec![0u8; owner.log_len()];
            owner.read_log(0, &mut end);
            assert!(
                refused_at.is_some(),
                "round {round}: the writer was refused"
            );
            assert!(
                after == end,
                "round {round}: the revoked writer changed the log after revoke returned"
            );
        }
    }
}

#[cfg(test)]
mod fence_tests {
    use super::*;
    use crate::testing::wait_until;
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    use std::os::unix::process::ExitStatusExt;
    use std::process::Command;

    const GEO: LogGeometry = LogGeometry {
        capacity: 64,
        slot_bytes: 256,
    };
    const CHILD_DIR: &str = "RAPAX_SHM_STOPPED_WRITER_DIR";

    /// The writer half of `a_writer_stopped_mid_write_is_fenced_by_revoke`, run in a child
    /// process of this test executable: node 1 raises its guard in node 0's region, finds the
    /// holder is its ballot, and stops before its copy, as a SIGSTOP between the two would.
    /// Continued, it would copy 0xAB bytes into node 0's log.
    #[test]
    fn stopped_writer_child() {
        let Some(dir) = std::env::var_os(CHILD_DIR) else {
            return; // only meaningful as the child
        };
        let w = ShmFabric::open(Path::new(&dir), 1, 3, &GEO).unwrap();
        let target = &w.regions[0];
        target
            .word(RIGHTS_GUARDS + 8)
            .store(w.pid, Ordering::SeqCst);
        assert_eq!(
            target.word(RIGHTS_HOLDER).load(Ordering::SeqCst),
            Ballot::new(1, 1).0
        );
        nix::sys::signal::raise(Signal::SIGSTOP).unwrap();
        target.store(LOG_AT, &[0xAB; 64]);
        target.word(RIGHTS_GUARDS + 8).store(0, Ordering::Release);
    }

    /// A writer stopped with its write in flight does not hold `revoke` for ever: it is killed,
    /// and its copy never lands.
    #[test]
    fn a_writer_stopped_mid_write_is_fenced_by_revoke() {
        let dir = std::env::temp_dir().join(format!("rapax-shm-fence-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        ShmFabric::create_all(&dir, 3, &GEO).unwrap();
        let mut owner = ShmFabric::open(&dir, 0, 3, &GEO).unwrap();
        owner.grant(1, Ballot::new(1, 1));
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "fabric::shm::fence_tests::stopped_writer_child"])
            .env(CHILD_DIR, &dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let pid = u64::from(child.id());
        let guard = owner.own().word(RIGHTS_GUARDS + 8);
        wait_until(
            "the child raises its guard and stops",
            Duration::from_secs(30),
            || guard.load(Ordering::SeqCst) == pid && writer_state(pid) == WriterState::Stopped,
        );
        owner.revoke(1);
        assert_eq!(owner.fenced_writers(), 1);
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(Signal::SIGKILL as i32), "{status:?}");
        let mut log = [0u8; 64];
        owner.read_log(0, &mut log);
        assert_ne!(log, [0xAB; 64], "the fenced writer's copy landed");
        assert!(owner.writers().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Fencing kills only processes of this executable: a stopped stranger (a reused pid in a
    /// stale guard) is left alone.
    #[test]
    fn a_stranger_is_never_fenced() {
        let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = sleeper.id();
        kill(Pid::from_raw(pid as i32), Signal::SIGSTOP).unwrap();
        wait_until("sleep stops", Duration::from_secs(30), || {
            writer_state(u64::from(pid)) == WriterState::Stopped
        });
        assert!(!fence(u64::from(pid)));
        assert!(!fence(u64::from(std::process::id())), "never itself");
        assert_eq!(writer_state(u64::from(pid)), WriterState::Stopped);
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();
        assert_eq!(writer_state(u64::from(pid)), WriterState::Gone);
    }
}
