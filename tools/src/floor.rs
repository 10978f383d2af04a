//! The fabric's floor, measured by rapax itself in the same run as a benchmark.
//!
//! Replication latency means little on its own; what counts is its ratio to the round trip of
//! one raw write on the same fabric, cores and sizes. This module measures that floor:
//!
//! * [`shm_floor`] / [`shm_floor_bytes`]: a cross-core cache-line round trip between two pinned
//!   threads — the pinger writes the payload and publishes a sequence number, the ponger waits
//!   for it, reads the payload and echoes the number back.
//! * [`udp_floor`]: a UDP datagram ping-pong over the loopback interface between two threads.
//! * [`dpdk_floor`]: a frame ping-pong over a pair of DPDK ring ports on the calling thread
//!   (`rapax_dataplane::fabric::dpdk::frame_round_trip_ns`: mbufs, PMD rx/tx and the Ethernet
//!   framing of the `dpdk` fabric, without a wire).
//!
//! All discard warm-up rounds and record every later round trip in nanoseconds.

use std::io;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::report::LatencyRecorder;

/// Round trips run before recording starts.
pub const WARMUP_ROUNDS: usize = 1_000;
/// Spins between yields while waiting, so two threads sharing one core still make progress.
pub const SPINS_PER_YIELD: u32 = 10_000;
/// How long a UDP ping-pong waits for a datagram before giving up.
pub const UDP_READ_TIMEOUT: Duration = Duration::from_secs(1);
/// Largest payload of one UDP datagram over IPv4, in bytes.
pub const UDP_MAX_PAYLOAD_BYTES: usize = 65_507;

/// Bytes per atomic word of the shared payload buffer.
const WORD_BYTES: usize = 8;
/// Atomic words per 64-byte cache line.
const WORDS_PER_LINE: usize = 8;

// ------------------------------------------------------------------------------------------------
// Shared memory

/// One 64-bit counter alone on its cache line.
#[repr(align(64))]
struct SeqLine(AtomicU64);

/// One cache line of payload words.
#[repr(align(64))]
struct PayloadLine([AtomicU64; WORDS_PER_LINE]);

/// What the two threads share: the pinger's sequence, the ponger's echo and the payload.
struct PingPong {
    ping: SeqLine,
    pong: SeqLine,
    payload: Box<[PayloadLine]>,
    payload_words: usize,
    /// Set when either thread unwinds, so the other stops waiting instead of spinning forever.
    aborted: AtomicBool,
}

impl PingPong {
    fn new(payload_bytes: usize) -> Self {
        let payload_words = payload_bytes.div_ceil(WORD_BYTES);
        let lines = payload_words.div_ceil(WORDS_PER_LINE);
        Self {
            ping: SeqLine(AtomicU64::new(0)),
            pong: SeqLine(AtomicU64::new(0)),
            payload: (0..lines)
                .map(|_| PayloadLine(std::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
            payload_words,
            aborted: AtomicBool::new(false),
        }
    }

    fn word(&self, index: usize) -> &AtomicU64 {
        &self.payload[index / WORDS_PER_LINE].0[index % WORDS_PER_LINE]
    }

    /// Spins (yielding now and then) until `line` holds `seq`.
    fn wait_for(&self, line: &SeqLine, seq: u64) {
        let mut spins = 0u32;
        while line.0.load(Ordering::Acquire) != seq {
            spins += 1;
            if spins >= SPINS_PER_YIELD {
                spins = 0;
                assert!(
                    !self.aborted.load(Ordering::Relaxed),
                    "the other floor thread failed"
                );
                thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

/// Flags the shared state as aborted if its thread unwinds.
struct AbortOnUnwind(Arc<PingPong>);

impl Drop for AbortOnUnwind {
    fn drop(&mut self) {
        if thread::panicking() {
            self.0.aborted.store(true, Ordering::Relaxed);
        }
    }
}

/// The two cores to pin to: the given pair, else cores 0 and 1 when there are two.
fn pick_cores(cores: Option<(usize, usize)>) -> Option<(usize, usize)> {
    cores.or_else(|| {
        let available = core_affinity::get_core_ids()?;
        (available.len() >= 2).then(|| (available[0].id, available[1].id))
    })
}

/// Pins the calling thread to core `id`; a core that does not exist leaves it unpinned.
fn pin_to(id: Option<usize>) {
    if let Some(id) = id {
        let _pinned = core_affinity::set_for_current(core_affinity::CoreId { id });
    }
}

/// Round trips of one 64-byte write between two cores, in nanoseconds: `samples` of them after
/// the warm-up.
///
/// `cores` names the two cores (pinger, ponger); `None` uses cores 0 and 1 when the machine has
/// at least two, and leaves the threads unpinned otherwise. A core that cannot be pinned to
/// leaves its thread unpinned.
pub fn shm_floor(samples: usize, cores: Option<(usize, usize)>) -> LatencyRecorder {
    shm_floor_bytes(samples, cores, 64)
}

/// Round trips of one `payload_bytes`-byte write between two cores, in nanoseconds.
///
/// Each round the pinger stores the payload into a shared buffer of atomic words and publishes
/// a sequence number with `Release`; the ponger sees the number with `Acquire`, reads (and
/// checks) the whole payload and echoes the number on its own cache line; the pinger's clock
/// stops when it sees the echo. Cores are chosen as for [`shm_floor`].
pub fn shm_floor_bytes(
    samples: usize,
    cores: Option<(usize, usize)>,
    payload_bytes: usize,
) -> LatencyRecorder {
    let shared = Arc::new(PingPong::new(payload_bytes));
    let cores = pick_cores(cores);
    let rounds = WARMUP_ROUNDS + samples;

    let ponger = {
        let guard = AbortOnUnwind(Arc::clone(&shared));
        let core = cores.map(|(_, pong)| pong);
        thread::Builder::new()
            .name("floor-pong".into())
            .spawn(move || {
                pin_to(core);
                let shared = &guard.0;
                for seq in 1..=rounds as u64 {
                    shared.wait_for(&shared.ping, seq);
                    for i in 0..shared.payload_words {
                        let word = shared.word(i).load(Ordering::Relaxed);
                        assert_eq!(word, seq ^ i as u64, "payload word {i} of round {seq}");
                    }
                    shared.pong.0.store(seq, Ordering::Release);
                }
            })
            .expect("spawning the floor's ponger thread")
    };

    let pinger = {
        let guard = AbortOnUnwind(Arc::clone(&shared));
        let core = cores.map(|(ping, _)| ping);
        thread::Builder::new()
            .name("floor-ping".into())
            .spawn(move || {
                pin_to(core);
                let shared = &guard.0;
                let mut recorder = LatencyRecorder::new();
                for seq in 1..=rounds as u64 {
                    let start = Instant::now();
                    for i in 0..shared.payload_words {
                        shared.word(i).store(seq ^ i as u64, Ordering::Relaxed);
                    }
                    shared.ping.0.store(seq, Ordering::Release);
                    shared.wait_for(&shared.pong, seq);
                    let elapsed = start.elapsed();
                    if seq > WARMUP_ROUNDS as u64 {
                        recorder.record_duration(elapsed);
                    }
                }
                recorder
            })
            .expect("spawning the floor's pinger thread")
    };

    let recorder = pinger.join();
    let echoed = ponger.join();
    match (recorder, echoed) {
        (Ok(recorder), Ok(())) => recorder,
        (Err(panic), _) | (_, Err(panic)) => std::panic::resume_unwind(panic),
    }
}

// ------------------------------------------------------------------------------------------------
// DPDK

/// Round trips of one `payload_bytes`-byte frame (8..=1500) over a fresh pair of DPDK ring
/// ports, in nanoseconds: `samples` of them after the warm-up. Starts this process's EAL on
/// first use (no hugepages, no PCI: `software_eal_args`); fails with the reason when the ffi was
/// built without DPDK or the EAL cannot start.
pub fn dpdk_floor(
    samples: usize,
    payload_bytes: usize,
) -> Result<LatencyRecorder, rapax_dataplane::fabric::dpdk::DpdkError> {
    use rapax_dataplane::fabric::dpdk::{process_dpdk, ring_pair_floor_ns, software_eal_args};
    let env = process_dpdk(&software_eal_args("rapax-floor"), 4095)?;
    let mut recorder = LatencyRecorder::new();
    for ns in ring_pair_floor_ns(env, payload_bytes, WARMUP_ROUNDS, samples)? {
        recorder.record_ns(ns);
    }
    Ok(recorder)
}

// ------------------------------------------------------------------------------------------------
// RDMA

/// Round trips of one RDMA WRITE of `payload_bytes` (rounded up to a multiple of 8, at least 8)
/// between two RC queue pairs on the profile's device, as `ib_write_lat` measures them: each side
/// polls the last word of its inbox for the round number and answers with a write of its own.
/// `samples` rounds after its warm-up.
pub fn rdma_floor(
    profile: &rapax_dataplane::profile::Profile,
    samples: usize,
    payload_bytes: usize,
) -> Result<LatencyRecorder, rapax_dataplane::fabric::rdma::RdmaError> {
    rdma_samples(
        profile,
        samples,
        payload_bytes,
        rapax_dataplane::fabric::rdma::write_floor_ns,
    )
}

/// One signaled RDMA WRITE of `payload_bytes` (as [`rdma_floor`] sizes it) to its completion,
/// `samples` times, on the profile's device.
pub fn rdma_completion(
    profile: &rapax_dataplane::profile::Profile,
    samples: usize,
    payload_bytes: usize,
) -> Result<LatencyRecorder, rapax_dataplane::fabric::rdma::RdmaError> {
    rdma_samples(
        profile,
        samples,
        payload_bytes,
        rapax_dataplane::fabric::rdma::write_completion_ns,
    )
}

/// `measure(settings, bytes, samples)` on the profile's rdma settings, as a recorder.
fn rdma_samples(
    profile: &rapax_dataplane::profile::Profile,
    samples: usize,
    payload_bytes: usize,
    measure: fn(
        &rapax_dataplane::fabric::rdma::RdmaSettings,
        usize,
        usize,
    ) -> Result<Vec<u64>, rapax_dataplane::fabric::rdma::RdmaError>,
) -> Result<LatencyRecorder, rapax_dataplane::fabric::rdma::RdmaError> {
    use rapax_dataplane::fabric::rdma::{RdmaError, RdmaSettings};
    let r = profile.fabric.rdma.as_ref().ok_or(RdmaError::Setting {
        field: "fabric.rdma",
        value: "missing".into(),
        why: "an rdma profile needs its [fabric.rdma] table",
    })?;
    let bytes = payload_bytes.max(8).next_multiple_of(8);
    let mut recorder = LatencyRecorder::new();
    for ns in measure(&RdmaSettings::from_profile(r), bytes, samples)? {
        recorder.record_ns(ns);
    }
    Ok(recorder)
}

// ------------------------------------------------------------------------------------------------
// UDP

/// Round trips of one `payload_bytes`-byte UDP datagram over 127.0.0.1 between two threads, in
/// nanoseconds: `samples` of them after the warm-up.
///
/// Each side waits at most [`UDP_READ_TIMEOUT`] for a datagram; a timeout, a short datagram or
/// an echo of the wrong round is an error. Payloads above [`UDP_MAX_PAYLOAD_BYTES`] are rejected
/// with [`io::ErrorKind::InvalidInput`].
pub fn udp_floor(samples: usize, payload_bytes: usize) -> io::Result<LatencyRecorder> {
    if payload_bytes > UDP_MAX_PAYLOAD_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("UDP payload of {payload_bytes} bytes exceeds {UDP_MAX_PAYLOAD_BYTES}"),
        ));
    }
    let pinger = UdpSocket::bind("127.0.0.1:0")?;
    let ponger = UdpSocket::bind("127.0.0.1:0")?;
    pinger.connect(ponger.local_addr()?)?;
    ponger.connect(pinger.local_addr()?)?;
    pinger.set_read_timeout(Some(UDP_READ_TIMEOUT))?;
    ponger.set_read_timeout(Some(UDP_READ_TIMEOUT))?;
    let rounds = WARMUP_ROUNDS + samples;

    let echo =
        thread::Builder::new()
            .name("floor-udp-pong".into())
            .spawn(move || -> io::Result<()> {
                // One byte spare, so an oversized datagram shows up as a wrong length.
                let mut buffer = vec![0u8; payload_bytes + 1];
                for seq in 1..=rounds as u64 {
                    let received = recv_round(&ponger, &mut buffer, "echoing")?;
                    check_round(&buffer[..received], payload_bytes, seq)?;
                    ponger.send(&buffer[..received])?;
                }
                Ok(())
            })?;

    let mut recorder = LatencyRecorder::new();
    let mut datagram = vec![0u8; payload_bytes];
    let mut buffer = vec![0u8; payload_bytes + 1];
    let mut ping_all = || -> io::Result<()> {
        for seq in 1..=rounds as u64 {
            stamp(&mut datagram, seq);
            let start = Instant::now();
            pinger.send(&datagram)?;
            let received = recv_round(&pinger, &mut buffer, "waiting for the echo")?;
            let elapsed = start.elapsed();
            check_round(&buffer[..received], payload_bytes, seq)?;
            if seq > WARMUP_ROUNDS as u64 {
                recorder.record_duration(elapsed);
            }
        }
        Ok(())
    };
    let pinged = ping_all();
    // On the pinger's error the echo thread times out within a second and returns.
    let echoed = match echo.join() {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    };
    pinged?;
    echoed?;
    Ok(recorder)
}

/// Receives one datagram, turning a read timeout into [`io::ErrorKind::TimedOut`].
fn recv_round(socket: &UdpSocket, buffer: &mut [u8], doing: &str) -> io::Result<usize> {
    socket.recv(buffer).map_err(|e| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => io::Error::new(
            io::ErrorKind::TimedOut,
            format!("UDP floor: no datagram within {UDP_READ_TIMEOUT:?} while {doing}"),
        ),
        _ => e,
    })
}

/// Writes the round number into the first bytes of the datagram (as many as fit).
fn stamp(datagram: &mut [u8], seq: u64) {
    let bytes = seq.to_le_bytes();
    let n = datagram.len().min(bytes.len());
    datagram[..n].copy_from_slice(&bytes[..n]);
}

/// Checks a received datagram's length and round number.
fn check_round(datagram: &[u8], payload_bytes: usize, seq: u64) -> io::Result<()> {
    if datagram.len() != payload_bytes {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "UDP floor: datagram of {} bytes, expected {payload_bytes}",
                datagram.len()
            ),
        ));
    }
    let mut expected = vec![0u8; payload_bytes.min(WORD_BYTES)];
    stamp(&mut expected, seq);
    if datagram[..expected.len()] != expected[..] {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("UDP floor: datagram is not round {seq}"),
        ));
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_shm_records_requested_samples() {
        let recorder = shm_floor(2_000, None);
        assert_eq!(recorder.len(), 2_000);
        assert!(recorder.percentile_us(50.0) > 0.0);
        assert!(recorder.max_us() >= recorder.percentile_us(50.0));
    }

    #[test]
    fn floor_shm_with_kilobyte_payload() {
        let recorder = shm_floor_bytes(1_000, None, 1024);
        assert_eq!(recorder.len(), 1_000);
        assert!(recorder.percentile_us(50.0) > 0.0);
    }

    #[test]
    fn floor_shm_odd_and_empty_payloads() {
        for payload_bytes in [0, 1, 13, 65] {
            let recorder = shm_floor_bytes(100, None, payload_bytes);
            assert_eq!(recorder.len(), 100, "payload {payload_bytes}");
        }
    }

    #[test]
    fn floor_shm_on_one_core_still_finishes() {
        // Both threads on the same core: progress relies on yielding.
        let recorder = shm_floor_bytes(200, Some((0, 0)), 64);
        assert_eq!(recorder.len(), 200);
        assert!(recorder.percentile_us(50.0) > 0.0);
    }

    #[test]
    fn floor_shm_payload_layout() {
        let shared = PingPong::new(1024);
        assert_eq!(shared.payload_words, 128);
        assert_eq!(shared.payload.len(), 16);
        assert_eq!(std::mem::align_of::<SeqLine>(), 64);
        assert_eq!(std::mem::align_of::<PayloadLine>(), 64);
        assert_eq!(std::mem::size_of::<PayloadLine>(), 64);
        let ping = std::ptr::addr_of!(shared.ping) as usize;
        let pong = std::ptr::addr_of!(shared.pong) as usize;
        assert!(
            ping.abs_diff(pong) >= 64,
            "ping and pong share a cache line"
        );
    }

    #[test]
    fn floor_dpdk_records_requested_samples() {
        if !rapax_dataplane::fabric::dpdk::available() {
            let err = dpdk_floor(1, 64).unwrap_err();
            println!("skipped floor_dpdk_records_requested_samples: {err}");
            return;
        }
        let recorder = dpdk_floor(300, 64).expect("dpdk floor");
        assert_eq!(recorder.len(), 300);
        // A payload that no frame carries is refused, on the same EAL.
        assert!(dpdk_floor(1, 4).is_err());
    }

    #[test]
    fn floor_udp_records_requested_samples() {
        let recorder = udp_floor(500, 64).unwrap();
        assert_eq!(recorder.len(), 500);
        assert!(recorder.percentile_us(50.0) > 0.0);
    }

    #[test]
    fn floor_udp_small_and_large_payloads() {
        for payload_bytes in [0, 3, 8192] {
            let recorder = udp_floor(50, payload_bytes).unwrap();
            assert_eq!(recorder.len(), 50, "payload {payload_bytes}");
        }
    }

    #[test]
    fn floor_udp_rejects_oversized_payload() {
        let err = udp_floor(1, UDP_MAX_PAYLOAD_BYTES + 1).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn floor_udp_checks_rounds() {
        let mut datagram = vec![0u8; 16];
        stamp(&mut datagram, 7);
        assert!(check_round(&datagram, 16, 7).is_ok());
        assert_eq!(
            check_round(&datagram, 16, 8).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        assert_eq!(
            check_round(&datagram[..15], 16, 7).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }
}
