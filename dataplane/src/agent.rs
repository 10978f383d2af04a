//! Agents and idle strategies (DESIGN.md §5), after Aeron's.
//!
//! Every thread of a node is an [`Agent`] driven by one loop:
//! `while !stopped { let n = agent.do_work(); idle.idle(n); }`. What a pass that found no work does
//! is the agent's [`IdleStrategy`], taken from the hardware profile with
//! [`IdleStrategy::from_profile`]: busy-spin, `sched_yield`, or [`BackoffIdle`] (spin, then
//! yield, then park with doubling sleeps), the one that still runs correctly on a machine with
//! fewer cores than agents.
//!
//! - [`AgentRunner`] runs one agent on its own thread, pinned to a core when the profile says so,
//!   and publishes two counters (passes and work done) that status tools read while it runs.
//! - [`step`] and [`ManualRunner`] are the test mode: they step agents by hand, round-robin in the
//!   calling thread, so a test is deterministic.
//!
//! The backoff's state machine is pure ([`BackoffIdle::next_action`] decides, [`IdleStrategy::idle`]
//! executes), so tests check its progression without sleeping.

use std::any::Any;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::profile::{AgentSpec, Backoff, IdleKind};

// ---- agents -------------------------------------------------------------------------------------

/// A unit of a node's work, run in a loop by an [`AgentRunner`] or stepped by a [`ManualRunner`].
pub trait Agent {
    /// Short name, used in thread names and error messages (`leader`, `heartbeat`, ...).
    fn name(&self) -> &str;
    /// Does one unit of work; returns how much it did (0 = idle).
    fn do_work(&mut self) -> usize;
    /// Called once after the agent's last `do_work`, on the thread that stops it.
    fn on_close(&mut self) {}
    /// Which of the runner's placements (idle strategy and core) the agent wants now: a data
    /// plane idles as the profile's `leader` agent while it leads and as its `follower_apply`
    /// agent otherwise. Index into the list given to [`AgentRunner::start_with_classes`].
    fn class(&self) -> usize {
        0
    }
    /// Parks the thread for at most `d` after idle passes (the `backoff` strategy's park). An
    /// agent with a source of wake-ups (a socket) waits on it instead, so work that arrives
    /// while it is parked wakes it at once.
    fn park(&mut self, d: Duration) {
        thread::sleep(d);
    }
    /// Busy-waits a little after an idle pass (the `spin` strategy's pause). An agent that can
    /// tell cheaply whether work has come watches for it here, between the processor's pauses,
    /// instead of running whole passes: work is seen sooner, and a core's other hardware
    /// thread gets the cycles a pass would have taken.
    fn spin(&mut self) {
        std::hint::spin_loop();
    }
}

/// Steps `agent` once: one `do_work`, no idling. Returns the work it did.
pub fn step(agent: &mut dyn Agent) -> usize {
    agent.do_work()
}

// ---- errors -------------------------------------------------------------------------------------

/// Why an agent could not be started, stopped or stepped to a condition.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(
        "cannot pin agent {agent} to core {core}: no such core on this host \
         ({available} cores usable by this process: {cores})"
    )]
    NoSuchCore {
        agent: String,
        core: usize,
        /// How many cores this process may run on.
        available: usize,
        /// Their ids, in cpulist form (`0-3,8`).
        cores: String,
    },
    #[error("cannot pin agent {agent} to core {core}: the host's core ids could not be read")]
    CoreIdsUnavailable { agent: String, core: usize },
    #[error("cannot pin agent {agent} to core {core}: sched_setaffinity refused it")]
    PinFailed { agent: String, core: usize },
    #[error("cannot start the thread of agent {agent}: {source}")]
    Spawn {
        agent: String,
        source: std::io::Error,
    },
    #[error("agent {agent} panicked: {message}")]
    Panicked { agent: String, message: String },
    #[error("condition still false after {rounds} rounds of {agents} agents ({names})")]
    RoundLimit {
        rounds: usize,
        agents: usize,
        names: String,
    },
}

// ---- idle strategies ----------------------------------------------------------------------------

/// What an idle strategy does after one pass of an agent's loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdleAction {
    /// The pass did work: go straight on.
    None,
    /// One `std::hint::spin_loop`.
    Spin,
    /// One `std::thread::yield_now`.
    Yield,
    /// `std::thread::sleep` for this long.
    Park(Duration),
}

/// Where a [`BackoffIdle`] is: counts are idle passes spent in the phase so far; `Parking` holds
/// the length of the last park (the next one is twice that, capped at `max_park`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackoffState {
    Spinning(u32),
    Yielding(u32),
    Parking(Duration),
}

/// The `backoff` idle strategy: `spins` idle passes spinning, then `yields` yielding, then parks of
/// `min_park`, doubling on every further idle pass up to `max_park`. A pass with work resets it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackoffIdle {
    spins: u32,
    yields: u32,
    min_park: Duration,
    max_park: Duration,
    state: BackoffState,
}

impl BackoffIdle {
    /// Panics if `min_park > max_park` (profiles are validated against that at load).
    pub fn new(spins: u32, yields: u32, min_park: Duration, max_park: Duration) -> BackoffIdle {
        assert!(
            min_park <= max_park,
            "backoff min_park {min_park:?} exceeds max_park {max_park:?}"
        );
        BackoffIdle {
            spins,
            yields,
            min_park,
            max_park,
            state: BackoffState::Spinning(0),
        }
    }

    /// The profile's `[backoff]` table.
    pub fn from_profile(backoff: &Backoff) -> BackoffIdle {
        BackoffIdle::new(
            backoff.spins,
            backoff.yields,
            Duration::from_micros(backoff.min_park_us),
            Duration::from_micros(backoff.max_park_us),
        )
    }

    pub fn state(&self) -> BackoffState {
        self.state
    }

    pub fn spins(&self) -> u32 {
        self.spins
    }

    pub fn yields(&self) -> u32 {
        self.yields
    }

    pub fn min_park(&self) -> Duration {
        self.min_park
    }

    pub fn max_park(&self) -> Duration {
        self.max_park
    }

    /// Back to the start of the spin phase.
    pub fn reset(&mut self) {
        self.state = BackoffState::Spinning(0);
    }

    /// Decides what to do after a pass that did `work_count` and advances the state; does not
    /// execute it.
    pub fn next_action(&mut self, work_count: usize) -> IdleAction {
        if work_count > 0 {
            self.reset();
            return IdleAction::None;
        }
        if let BackoffState::Spinning(n) = self.state {
            if n < self.spins {
                self.state = BackoffState::Spinning(n + 1);
                return IdleAction::Spin;
            }
            self.state = BackoffState::Yielding(0);
        }
        if let BackoffState::Yielding(n) = self.state {
            if n < self.yields {
                self.state = BackoffState::Yielding(n + 1);
                return IdleAction::Yield;
            }
            self.state = BackoffState::Parking(self.min_park);
            return IdleAction::Park(self.min_park);
        }
        let BackoffState::Parking(last) = self.state else {
            unreachable!("backoff state {:?} after the yield phase", self.state)
        };
        let park = last
            .checked_mul(2)
            .map_or(self.max_park, |d| d.min(self.max_park));
        self.state = BackoffState::Parking(park);
        IdleAction::Park(park)
    }
}

/// What an agent's loop does after a pass, by the work the pass did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdleStrategy {
    /// Busy-poll: lowest latency; needs a dedicated core.
    Spin,
    /// `sched_yield` after every idle pass.
    Yield,
    /// Spin, then yield, then park with doubling sleeps.
    Backoff(BackoffIdle),
}

impl IdleStrategy {
    /// The strategy a profile names; `backoff` takes its settings from the `[backoff]` table.
    pub fn from_profile(kind: IdleKind, backoff: &Backoff) -> IdleStrategy {
        match kind {
            IdleKind::Spin => IdleStrategy::Spin,
            IdleKind::Yield => IdleStrategy::Yield,
            IdleKind::Backoff => IdleStrategy::Backoff(BackoffIdle::from_profile(backoff)),
        }
    }

    /// The strategy of one agent of a profile (`[agents.NAME].idle`).
    /// `backoff` is the profile's `[backoff]` table; the agent's own `backoff` fields override it.
    pub fn for_agent(spec: &AgentSpec, backoff: &Backoff) -> IdleStrategy {
        IdleStrategy::from_profile(spec.idle, &spec.backoff(backoff))
    }

    pub fn kind(&self) -> IdleKind {
        match self {
            IdleStrategy::Spin => IdleKind::Spin,
            IdleStrategy::Yield => IdleKind::Yield,
            IdleStrategy::Backoff(_) => IdleKind::Backoff,
        }
    }

    /// Decides what to do after a pass that did `work_count`, advancing any state.
    pub fn next_action(&mut self, work_count: usize) -> IdleAction {
        if work_count > 0 {
            if let IdleStrategy::Backoff(b) = self {
                b.reset();
            }
            return IdleAction::None;
        }
        match self {
            IdleStrategy::Spin => IdleAction::Spin,
            IdleStrategy::Yield => IdleAction::Yield,
            IdleStrategy::Backoff(b) => b.next_action(0),
        }
    }

    /// Idles after a pass that did `work_count`: nothing (and a reset) if it did work.
    /// (An [`AgentRunner`] idles through its agent's [`Agent::spin`] and [`Agent::park`].)
    pub fn idle(&mut self, work_count: usize) {
        match self.next_action(work_count) {
            IdleAction::None => {}
            IdleAction::Spin => std::hint::spin_loop(),
            IdleAction::Yield => thread::yield_now(),
            IdleAction::Park(d) => thread::sleep(d),
        }
    }

    pub fn reset(&mut self) {
        if let IdleStrategy::Backoff(b) = self {
            b.reset();
        }
    }
}

// ---- the threaded runner ------------------------------------------------------------------------

/// An agent's counters, written only by its thread and readable by anyone while it runs.
#[derive(Clone, Debug, Default)]
pub struct AgentCounters {
    /// `do_work` calls made.
    pub do_work_calls: Arc<AtomicU64>,
    /// Sum of what `do_work` returned.
    pub work_done: Arc<AtomicU64>,
}

impl AgentCounters {
    pub fn do_work_calls(&self) -> u64 {
        self.do_work_calls.load(Ordering::Relaxed)
    }

    pub fn work_done(&self) -> u64 {
        self.work_done.load(Ordering::Relaxed)
    }

    /// Counts one pass. Single writer: a plain load and store, no locked read-modify-write.
    fn record(&self, work_count: usize) {
        let calls = self.do_work_calls.load(Ordering::Relaxed);
        self.do_work_calls.store(calls + 1, Ordering::Relaxed);
        if work_count > 0 {
            let done = self.work_done.load(Ordering::Relaxed);
            self.work_done
                .store(done + work_count as u64, Ordering::Relaxed);
        }
    }
}

/// Core ids in Linux's cpulist form: `0-3,8,10-11`.
/// Core ids in cpulist form (`0-3,8`), as the kernel prints them.
pub fn cpulist(ids: &[usize]) -> String {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let mut out = String::new();
    let mut i = 0;
    while i < ids.len() {
        let start = ids[i];
        let mut end = start;
        while i + 1 < ids.len() && ids[i + 1] == end + 1 {
            i += 1;
            end = ids[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}-{end}"));
        }
        i += 1;
    }
    out
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(panic payload is not a string)".to_string()
    }
}

/// Checks that `core` is one this process may run on, before any thread is spawned.
/// Pins the calling thread to `core`, or lets it run on every core of the host.
fn place(core: Option<usize>) {
    match core {
        Some(core) => {
            core_affinity::set_for_current(core_affinity::CoreId { id: core });
        }
        None => unpin(),
    }
}

/// The cores of this process's profile that a spinning agent owns, a bit each (cores 0-63):
/// an unpinned agent keeps off them.
static RESERVED: AtomicU64 = AtomicU64::new(0);

/// Reserves `cores` (the cores the profile gives its spinning agents, see
/// [`crate::profile::Agents::spin_cores`]) for the agents pinned there: from now on an
/// agent of this process without a core runs on every other core, so a follower's data plane
/// or a control plane never wakes up on the core the leader spins on. A daemon calls it once,
/// before starting its agents. Cores past 63 are not reserved.
pub fn reserve_cores(cores: &[usize]) {
    let mask = cores
        .iter()
        .filter(|&&c| c < 64)
        .fold(0u64, |m, &c| m | 1 << c);
    RESERVED.store(mask, Ordering::Relaxed);
}

/// The timer slack of every agent thread, in nanoseconds (`PR_SET_TIMERSLACK`): how much later
/// than asked the kernel may end a park, to batch wake-ups.
pub const AGENT_TIMER_SLACK_NS: u64 = 1_000;

/// Lets the calling thread run on every core but the reserved ones ([`reserve_cores`]), or on
/// every core when that would leave it none.
fn unpin() {
    allow_every_core();
    let reserved = RESERVED.load(Ordering::Relaxed);
    if reserved != 0 {
        let cores: Vec<usize> = (0..64).filter(|c| reserved & (1 << c) != 0).collect();
        avoid_cores(&cores);
    }
}

/// Places a helper thread whose calls take locks the agents' threads take too (verbs calls:
/// creating a queue pair maps its queues into the process, registering memory pins its pages,
/// both under the process's memory-map lock): off the reserved cores ([`reserve_cores`]), at
/// nice 10 rather than `SCHED_IDLE`. A `SCHED_IDLE` thread preempted while it holds such a lock
/// waits behind every busy thread of its core, and so does the agent that needs the lock
/// next; at nice 10 it gets its slice within the scheduler's period and still leaves the
/// agents about nine tenths of a shared core. Returns why the priority could not be lowered,
/// if so.
pub fn place_locking_helper_thread() -> std::io::Result<()> {
    unpin();
    rapax_ffi::sched::nice_thread(10)
}

/// Lets the calling thread run on every core of the host, whatever affinity it inherited (a
/// daemon started by a pinned thread inherits its pinning). Daemons call it first thing, so a
/// profile's cores are available to pin to.
pub fn allow_every_core() {
    use nix::sched::{sched_setaffinity, CpuSet};
    use nix::unistd::Pid;
    let mut all = CpuSet::new();
    for c in 0..CpuSet::count() {
        let _ = all.set(c);
    }
    // The kernel keeps the cores that exist.
    let _ = sched_setaffinity(Pid::from_raw(0), &all);
}

/// Moves the calling thread off `cores` (the cores a profile pins its agents to), unless that
/// would leave it none. A daemon's main thread calls it once its agents have started (an
/// agent may only be pinned to a core its spawner may use): its periodic shutdown watch then
/// never wakes up on a core an agent is pinned to.
pub fn avoid_cores(cores: &[usize]) {
    use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
    use nix::unistd::Pid;
    if cores.is_empty() {
        return;
    }
    let Ok(mut set) = sched_getaffinity(Pid::from_raw(0)) else {
        return;
    };
    let mut left = 0;
    for c in 0..CpuSet::count() {
        if set.is_set(c).unwrap_or(false) {
            if cores.contains(&c) {
                let _ = set.unset(c);
            } else {
                left += 1;
            }
        }
    }
    if left > 0 {
        let _ = sched_setaffinity(Pid::from_raw(0), &set);
    }
}

fn check_core(agent: &str, core: usize) -> Result<(), AgentError> {
    let ids = core_affinity::get_core_ids().ok_or_else(|| AgentError::CoreIdsUnavailable {
        agent: agent.to_string(),
        core,
    })?;
    if ids.iter().any(|c| c.id == core) {
        return Ok(());
    }
    let ids: Vec<usize> = ids.iter().map(|c| c.id).collect();
    Err(AgentError::NoSuchCore {
        agent: agent.to_string(),
        core,
        available: ids.len(),
        cores: cpulist(&ids),
    })
}

type AgentBox = Box<dyn Agent + Send>;

/// Runs one agent on its own thread until [`AgentRunner::stop`]. Dropping a runner without
/// stopping it stops it too (and ignores a panic).
pub struct AgentRunner {
    name: String,
    core: Option<usize>,
    stop: Arc<AtomicBool>,
    counters: AgentCounters,
    thread: Option<JoinHandle<AgentBox>>,
}

impl fmt::Debug for AgentRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentRunner")
            .field("name", &self.name)
            .field("core", &self.core)
            .field("do_work_calls", &self.counters.do_work_calls())
            .field("work_done", &self.counters.work_done())
            .finish()
    }
}

impl AgentRunner {
    /// Starts `agent` on a thread named after it, pinned to `core` if given. Returns once the
    /// thread is pinned and about to make its first pass; an unknown or refused core is an error
    /// and the agent never runs.
    pub fn start(
        agent: AgentBox,
        idle: IdleStrategy,
        core: Option<usize>,
    ) -> Result<AgentRunner, AgentError> {
        AgentRunner::start_with_classes(agent, vec![(idle, core)])
    }

    /// Starts `agent` with several placements; before each pass the runner takes the one
    /// [`Agent::class`] names (re-pinning the thread, or unpinning it for a placement without
    /// a core). The first placement's core must be valid; so must every other.
    pub fn start_with_classes(
        agent: AgentBox,
        mut classes: Vec<(IdleStrategy, Option<usize>)>,
    ) -> Result<AgentRunner, AgentError> {
        assert!(!classes.is_empty(), "an agent needs a placement");
        let name = agent.name().to_string();
        for (_, core) in &classes {
            if let Some(core) = *core {
                check_core(&name, core)?;
            }
        }
        let core = classes[0].1;
        let stop = Arc::new(AtomicBool::new(false));
        let counters = AgentCounters::default();
        let (pinned_tx, pinned_rx) = mpsc::sync_channel::<bool>(1);
        let thread = {
            let stop = Arc::clone(&stop);
            let counters = counters.clone();
            let mut agent = agent;
            thread::Builder::new()
                .name(name.clone())
                .spawn(move || {
                    match core {
                        Some(core) => {
                            if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
                                // The receiver waits for this message; it cannot be gone.
                                let _ = pinned_tx.send(false);
                                return agent;
                            }
                        }
                        None => unpin(),
                    }
                    let _ = pinned_tx.send(true);
                    // A park is as long as the idle strategy asks: the default timer slack of a
                    // normal thread (50 us) would stretch a 20 us park to 70.
                    let _ = nix::sys::prctl::set_timerslack(AGENT_TIMER_SLACK_NS);
                    let mut current = 0;
                    while !stop.load(Ordering::Acquire) {
                        let class = agent.class().min(classes.len() - 1);
                        if class != current {
                            current = class;
                            place(classes[class].1);
                            classes[class].0.reset();
                        }
                        let work_count = agent.do_work();
                        counters.record(work_count);
                        match classes[current].0.next_action(work_count) {
                            IdleAction::None => {}
                            IdleAction::Spin => agent.spin(),
                            IdleAction::Yield => thread::yield_now(),
                            IdleAction::Park(d) => agent.park(d),
                        }
                    }
                    agent
                })
                .map_err(|source| AgentError::Spawn {
                    agent: name.clone(),
                    source,
                })?
        };
        match pinned_rx.recv() {
            Ok(true) => Ok(AgentRunner {
                name,
                core,
                stop,
                counters,
                thread: Some(thread),
            }),
            Ok(false) => {
                // The thread returned at once without running the agent.
                let _ = thread.join();
                Err(AgentError::PinFailed {
                    agent: name,
                    core: core.expect("only a pinned agent can fail to pin"),
                })
            }
            Err(mpsc::RecvError) => match thread.join() {
                Err(payload) => Err(AgentError::Panicked {
                    agent: name,
                    message: panic_message(payload.as_ref()),
                }),
                Ok(_) => unreachable!("agent {name}'s thread returned without reporting"),
            },
        }
    }

    /// The agent's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The core the agent's thread is pinned to, if any.
    pub fn core(&self) -> Option<usize> {
        self.core
    }

    /// The agent's live counters (shared: they go on advancing after this returns).
    pub fn counters(&self) -> AgentCounters {
        self.counters.clone()
    }

    /// Whether the agent's thread has ended (only a panic ends it before a stop).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Asks the agent to stop after its current pass, without waiting; [`AgentRunner::stop`]
    /// waits. Lets a caller signal several runners before joining any.
    pub fn signal_stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// Stops the agent: signals it, waits for its thread (at most one pass and one idle later:
    /// a backoff park lasts at most `max_park`), then calls its `on_close`. An agent that panicked
    /// is reported by name and its `on_close` is not called (the agent was lost with its thread).
    pub fn stop(mut self) -> Result<(), AgentError> {
        self.join()
    }

    fn join(&mut self) -> Result<(), AgentError> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        self.signal_stop();
        match thread.join() {
            Ok(mut agent) => {
                agent.on_close();
                Ok(())
            }
            Err(payload) => Err(AgentError::Panicked {
                agent: self.name.clone(),
                message: panic_message(payload.as_ref()),
            }),
        }
    }
}

impl Drop for AgentRunner {
    fn drop(&mut self) {
        let _ = self.join();
    }
}

// ---- the test mode ------------------------------------------------------------------------------

/// Steps several agents by hand, round-robin in the calling thread: a round is one `do_work` of
/// each agent in the order they were added. What a deterministic test uses instead of
/// [`AgentRunner`].
#[derive(Default)]
pub struct ManualRunner<'a> {
    agents: Vec<Box<dyn Agent + 'a>>,
    rounds: usize,
    work_done: u64,
}

impl fmt::Debug for ManualRunner<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualRunner")
            .field("agents", &self.names())
            .field("rounds", &self.rounds)
            .field("work_done", &self.work_done)
            .finish()
    }
}

impl<'a> ManualRunner<'a> {
    pub fn new() -> ManualRunner<'a> {
        ManualRunner::default()
    }

    /// Adds an agent after the others.
    pub fn add(&mut self, agent: Box<dyn Agent + 'a>) -> &mut ManualRunner<'a> {
        self.agents.push(agent);
        self
    }

    pub fn len(&self) -> usize {
        self.agents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    /// The agents' names, in stepping order.
    pub fn names(&self) -> Vec<&str> {
        self.agents.iter().map(|a| a.name()).collect()
    }

    /// Rounds run so far.
    pub fn rounds(&self) -> usize {
        self.rounds
    }

    /// Work done by all agents so far.
    pub fn work_done(&self) -> u64 {
        self.work_done
    }

    /// One round: steps every agent once, in order. Returns the work done in the round.
    pub fn run_round(&mut self) -> usize {
        let work: usize = self.agents.iter_mut().map(|a| step(a.as_mut())).sum();
        self.rounds += 1;
        self.work_done += work as u64;
        work
    }

    /// Runs rounds until `cond` holds (checked before each round) or `max_rounds` rounds have
    /// run. Returns the rounds this call ran; an error if `cond` still fails after `max_rounds`.
    pub fn run_until(
        &mut self,
        mut cond: impl FnMut() -> bool,
        max_rounds: usize,
    ) -> Result<usize, AgentError> {
        for rounds in 0..max_rounds {
            if cond() {
                return Ok(rounds);
            }
            self.run_round();
        }
        if cond() {
            return Ok(max_rounds);
        }
        Err(AgentError::RoundLimit {
            rounds: max_rounds,
            agents: self.agents.len(),
            names: self.names().join(", "),
        })
    }

    /// Calls every agent's `on_close`, in order, and drops them.
    pub fn close(self) {
        for mut agent in self.agents {
            agent.on_close();
        }
    }
}

// ---- tests --------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::wait_until;
    use std::cell::{Cell, RefCell};
    use std::rc::Rc;
    use std::time::Instant;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    fn my_cores() -> Vec<usize> {
        use nix::sched::{sched_getaffinity, CpuSet};
        let set = sched_getaffinity(nix::unistd::Pid::from_raw(0)).expect("affinity");
        (0..CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap_or(false))
            .collect()
    }

    #[test]
    fn avoid_cores_leaves_the_pinned_cores_unless_none_would_remain() {
        // In a thread of its own: affinity is per thread.
        std::thread::spawn(|| {
            allow_every_core();
            let all = my_cores();
            // Every core avoided: the thread keeps them all rather than none.
            avoid_cores(&all);
            assert_eq!(my_cores(), all);
            avoid_cores(&[]);
            assert_eq!(my_cores(), all);
            if all.len() >= 2 {
                let dedicated = all[all.len() - 1];
                avoid_cores(&[dedicated]);
                let now = my_cores();
                assert!(
                    !now.contains(&dedicated),
                    "{now:?} still has core {dedicated}"
                );
                assert_eq!(now.len(), all.len() - 1);
            }
        })
        .join()
        .expect("thread");
    }

    /// Records the cores its thread may use, on every pass.
    struct Placement(Arc<std::sync::Mutex<Option<Vec<usize>>>>);

    impl Agent for Placement {
        fn name(&self) -> &str {
            "placement"
        }
        fn do_work(&mut self) -> usize {
            *self.0.lock().expect("lock") = Some(my_cores());
            0
        }
    }

    /// The cores an unpinned agent started now may use.
    fn unpinned_agent_cores() -> Vec<usize> {
        let seen = Arc::new(std::sync::Mutex::new(None));
        let agent = Placement(Arc::clone(&seen));
        let runner = AgentRunner::start(Box::new(agent), IdleStrategy::Yield, None).unwrap();
        wait_until("a pass", Duration::from_secs(10), || {
            seen.lock().expect("lock").is_some()
        });
        runner.stop().unwrap();
        let cores = seen.lock().expect("lock").clone();
        cores.expect("recorded")
    }

    #[test]
    fn an_unpinned_agent_keeps_off_the_reserved_cores() {
        let Some(ids) = core_affinity::get_core_ids() else {
            return;
        };
        let all: Vec<usize> = ids.iter().map(|c| c.id).collect();
        if all.len() < 2 {
            return;
        }
        let spin = all[all.len() - 1];
        reserve_cores(&[spin]);
        let kept_off = unpinned_agent_cores();
        // Every core reserved: an unpinned agent runs anywhere rather than nowhere.
        reserve_cores(&all);
        let everywhere = unpinned_agent_cores();
        reserve_cores(&[]);
        assert!(!kept_off.contains(&spin), "{kept_off:?} has core {spin}");
        assert_eq!(kept_off.len(), all.len() - 1, "{kept_off:?}");
        assert_eq!(everywhere, all);
        assert_eq!(unpinned_agent_cores(), all);
    }

    /// Records its thread's timer slack, on every pass.
    struct Slack(Arc<AtomicU64>);

    impl Agent for Slack {
        fn name(&self) -> &str {
            "slack"
        }
        fn do_work(&mut self) -> usize {
            let ns = nix::sys::prctl::get_timerslack().expect("PR_GET_TIMERSLACK") as u64;
            self.0.store(ns + 1, Ordering::SeqCst);
            0
        }
    }

    #[test]
    fn an_agent_parks_with_a_microsecond_of_timer_slack() {
        let seen = Arc::new(AtomicU64::new(0));
        let runner = AgentRunner::start(
            Box::new(Slack(Arc::clone(&seen))),
            IdleStrategy::Yield,
            None,
        )
        .unwrap();
        wait_until("a pass", Duration::from_secs(10), || {
            seen.load(Ordering::SeqCst) != 0
        });
        runner.stop().unwrap();
        assert_eq!(seen.load(Ordering::SeqCst) - 1, AGENT_TIMER_SLACK_NS);
        // The thread that started it keeps its own (the default is 50 us).
        assert_ne!(
            nix::sys::prctl::get_timerslack().unwrap() as u64,
            AGENT_TIMER_SLACK_NS
        );
    }

    #[test]
    fn backoff_spins_then_yields_then_parks_doubling_to_the_cap() {
        let mut b = BackoffIdle::new(3, 2, us(10), us(45));
        assert_eq!(b.state(), BackoffState::Spinning(0));
        let mut seen = Vec::new();
        for _ in 0..10 {
            seen.push((b.next_action(0), b.state()));
        }
        use BackoffState::*;
        use IdleAction as A;
        assert_eq!(
            seen,
            vec![
                (A::Spin, Spinning(1)),
                (A::Spin, Spinning(2)),
                (A::Spin, Spinning(3)),
                (A::Yield, Yielding(1)),
                (A::Yield, Yielding(2)),
                (A::Park(us(10)), Parking(us(10))),
                (A::Park(us(20)), Parking(us(20))),
                (A::Park(us(40)), Parking(us(40))),
                (A::Park(us(45)), Parking(us(45))),
                (A::Park(us(45)), Parking(us(45))),
            ]
        );
    }

    #[test]
    fn backoff_resets_on_work() {
        let mut b = BackoffIdle::new(2, 1, us(10), us(100));
        for _ in 0..5 {
            b.next_action(0);
        }
        assert_eq!(b.state(), BackoffState::Parking(us(20)));
        assert_eq!(b.next_action(7), IdleAction::None);
        assert_eq!(b.state(), BackoffState::Spinning(0));
        assert_eq!(b.next_action(0), IdleAction::Spin);
        assert_eq!(b.next_action(0), IdleAction::Spin);
        assert_eq!(b.next_action(0), IdleAction::Yield);
        // Work in the yield phase resets it too, and parking starts again at min_park.
        assert_eq!(b.next_action(1), IdleAction::None);
        for _ in 0..3 {
            b.next_action(0);
        }
        assert_eq!(b.next_action(0), IdleAction::Park(us(10)));
    }

    #[test]
    fn backoff_with_no_spins_or_yields_parks_at_once() {
        let mut b = BackoffIdle::new(0, 0, us(5), us(5));
        assert_eq!(b.next_action(0), IdleAction::Park(us(5)));
        assert_eq!(b.next_action(0), IdleAction::Park(us(5)));
        let mut b = BackoffIdle::new(0, 1, us(5), us(8));
        assert_eq!(b.next_action(0), IdleAction::Yield);
        assert_eq!(b.next_action(0), IdleAction::Park(us(5)));
        assert_eq!(b.next_action(0), IdleAction::Park(us(8)));
    }

    #[test]
    fn backoff_doubling_does_not_overflow() {
        let max = Duration::MAX;
        let mut b = BackoffIdle::new(0, 0, Duration::from_secs(u64::MAX / 2 + 1), max);
        b.next_action(0);
        assert_eq!(b.next_action(0), IdleAction::Park(max));
        assert_eq!(b.next_action(0), IdleAction::Park(max));
    }

    #[test]
    #[should_panic(expected = "exceeds max_park")]
    fn backoff_refuses_min_above_max() {
        BackoffIdle::new(1, 1, us(10), us(9));
    }

    #[test]
    fn spin_and_yield_actions() {
        let mut s = IdleStrategy::Spin;
        assert_eq!(s.next_action(0), IdleAction::Spin);
        assert_eq!(s.next_action(0), IdleAction::Spin);
        assert_eq!(s.next_action(4), IdleAction::None);
        let mut y = IdleStrategy::Yield;
        assert_eq!(y.next_action(0), IdleAction::Yield);
        assert_eq!(y.next_action(1), IdleAction::None);
        assert_eq!(y.next_action(0), IdleAction::Yield);
        // Executing them returns at once.
        s.idle(0);
        y.idle(0);
        s.idle(1);
    }

    #[test]
    fn idle_executes_the_backoff_state_machine() {
        let mut s = IdleStrategy::Backoff(BackoffIdle::new(2, 2, us(1), us(4)));
        for _ in 0..4 {
            s.idle(0);
        }
        let state = |s: &IdleStrategy| match s {
            IdleStrategy::Backoff(b) => b.state(),
            other => panic!("not a backoff: {other:?}"),
        };
        assert_eq!(state(&s), BackoffState::Yielding(2));
        let t = Instant::now();
        s.idle(0);
        s.idle(0);
        s.idle(0);
        assert!(t.elapsed() >= us(1 + 2 + 4), "parked {:?}", t.elapsed());
        assert_eq!(state(&s), BackoffState::Parking(us(4)));
        s.idle(3);
        assert_eq!(state(&s), BackoffState::Spinning(0));
        s.idle(0);
        s.reset();
        assert_eq!(state(&s), BackoffState::Spinning(0));
    }

    #[test]
    fn from_profile_maps_every_kind() {
        let backoff = Backoff {
            spins: 7,
            yields: 3,
            min_park_us: 20,
            max_park_us: 640,
        };
        assert_eq!(
            IdleStrategy::from_profile(IdleKind::Spin, &backoff),
            IdleStrategy::Spin
        );
        assert_eq!(
            IdleStrategy::from_profile(IdleKind::Yield, &backoff),
            IdleStrategy::Yield
        );
        let s = IdleStrategy::from_profile(IdleKind::Backoff, &backoff);
        assert_eq!(
            s,
            IdleStrategy::Backoff(BackoffIdle::new(7, 3, us(20), us(640)))
        );
        let IdleStrategy::Backoff(b) = &s else {
            unreachable!()
        };
        assert_eq!(
            (b.spins(), b.yields(), b.min_park(), b.max_park()),
            (7, 3, us(20), us(640))
        );
        for kind in [IdleKind::Spin, IdleKind::Yield, IdleKind::Backoff] {
            assert_eq!(IdleStrategy::from_profile(kind, &backoff).kind(), kind);
            let spec = AgentSpec {
                core: None,
                idle: kind,
                backoff: None,
            };
            assert_eq!(
                IdleStrategy::for_agent(&spec, &backoff),
                IdleStrategy::from_profile(kind, &backoff)
            );
        }
        // An agent's own backoff fields replace the table's; the rest are the table's.
        let spec = AgentSpec {
            core: None,
            idle: IdleKind::Backoff,
            backoff: Some(crate::profile::BackoffOverride {
                yields: Some(10),
                max_park_us: Some(900),
                ..Default::default()
            }),
        };
        assert_eq!(
            IdleStrategy::for_agent(&spec, &backoff),
            IdleStrategy::Backoff(BackoffIdle::new(7, 10, us(20), us(900)))
        );
        // The profile's default is backoff with the default table.
        let d = Backoff::default();
        assert_eq!(
            IdleStrategy::from_profile(IdleKind::default(), &d),
            IdleStrategy::Backoff(BackoffIdle::new(
                d.spins,
                d.yields,
                us(d.min_park_us),
                us(d.max_park_us)
            ))
        );
    }

    #[test]
    fn cpulist_compresses_ranges() {
        assert_eq!(cpulist(&[]), "");
        assert_eq!(cpulist(&[0]), "0");
        assert_eq!(cpulist(&[0, 1]), "0-1");
        assert_eq!(cpulist(&[3, 0, 1, 2, 8, 10, 11]), "0-3,8,10-11");
    }

    /// Works on every other pass; counts its own passes, work and close.
    struct Counting {
        name: &'static str,
        calls: Arc<AtomicU64>,
        work: Arc<AtomicU64>,
        closed: Arc<AtomicBool>,
        panic_at: Option<u64>,
    }

    impl Counting {
        fn new(name: &'static str) -> Counting {
            Counting {
                name,
                calls: Arc::default(),
                work: Arc::default(),
                closed: Arc::default(),
                panic_at: None,
            }
        }
    }

    impl Agent for Counting {
        fn name(&self) -> &str {
            self.name
        }

        fn do_work(&mut self) -> usize {
            let n = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
            if Some(n) == self.panic_at {
                panic!("boom on pass {n}");
            }
            let work = if n % 2 == 1 { 3 } else { 0 };
            self.work.fetch_add(work as u64, Ordering::Relaxed);
            work
        }

        fn on_close(&mut self) {
            assert!(
                !self.closed.swap(true, Ordering::Relaxed),
                "on_close called twice"
            );
        }
    }

    #[test]
    fn runner_runs_until_stopped_and_counts() {
        let agent = Counting::new("counter");
        let (calls, work, closed) = (
            agent.calls.clone(),
            agent.work.clone(),
            agent.closed.clone(),
        );
        let runner = AgentRunner::start(Box::new(agent), IdleStrategy::Yield, None).unwrap();
        assert_eq!(runner.name(), "counter");
        assert_eq!(runner.core(), None);
        let counters = runner.counters();
        wait_until("1000 passes", Duration::from_secs(10), || {
            counters.do_work_calls() >= 1000
        });
        let first = counters.do_work_calls();
        wait_until("more passes", Duration::from_secs(10), || {
            counters.do_work_calls() > first
        });
        assert!(counters.work_done() > 0);
        assert!(!runner.is_finished());
        assert!(!closed.load(Ordering::Relaxed));

        runner.stop().unwrap();
        assert!(closed.load(Ordering::Relaxed), "on_close not called");
        let (c, w) = (counters.do_work_calls(), counters.work_done());
        // The runner's counters agree with the agent's own.
        assert_eq!(c, calls.load(Ordering::Relaxed));
        assert_eq!(w, work.load(Ordering::Relaxed));
        assert_eq!(w, 3 * c.div_ceil(2));
        // Nothing runs after stop.
        thread::sleep(Duration::from_millis(20));
        assert_eq!(counters.do_work_calls(), c);
    }

    #[test]
    fn runner_with_backoff_stops_promptly() {
        let agent = Counting::new("idler");
        let closed = agent.closed.clone();
        let idle = IdleStrategy::Backoff(BackoffIdle::new(10, 10, us(50), us(1000)));
        let runner = AgentRunner::start(Box::new(agent), idle, None).unwrap();
        let counters = runner.counters();
        wait_until("100 passes", Duration::from_secs(10), || {
            counters.do_work_calls() >= 100
        });
        let t = Instant::now();
        runner.stop().unwrap();
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert!(closed.load(Ordering::Relaxed));
    }

    /// An idle agent that counts the runner's calls of its spin and park hooks.
    struct Hooks {
        spins: Arc<AtomicU64>,
        parks: Arc<AtomicU64>,
    }

    impl Agent for Hooks {
        fn name(&self) -> &str {
            "hooks"
        }

        fn do_work(&mut self) -> usize {
            0
        }

        fn park(&mut self, d: Duration) {
            self.parks.fetch_add(1, Ordering::Relaxed);
            thread::sleep(d);
        }

        fn spin(&mut self) {
            self.spins.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn the_runner_idles_through_the_agents_spin_and_park() {
        for (idle, spins) in [
            (IdleStrategy::Spin, true),
            (
                IdleStrategy::Backoff(BackoffIdle::new(0, 0, us(20), us(20))),
                false,
            ),
        ] {
            let (s, p) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
            let agent = Hooks {
                spins: s.clone(),
                parks: p.clone(),
            };
            let runner = AgentRunner::start(Box::new(agent), idle, None).unwrap();
            wait_until("idle passes", Duration::from_secs(10), || {
                s.load(Ordering::Relaxed) + p.load(Ordering::Relaxed) >= 20
            });
            runner.stop().unwrap();
            let (s, p) = (s.load(Ordering::Relaxed), p.load(Ordering::Relaxed));
            if spins {
                assert!(s >= 20 && p == 0, "spin: {s} spins, {p} parks");
            } else {
                assert!(s == 0 && p >= 20, "park at once: {s} spins, {p} parks");
            }
        }
    }

    #[test]
    fn dropping_a_runner_stops_it() {
        let agent = Counting::new("dropped");
        let closed = agent.closed.clone();
        let runner = AgentRunner::start(Box::new(agent), IdleStrategy::Yield, None).unwrap();
        let counters = runner.counters();
        wait_until("a pass", Duration::from_secs(10), || {
            counters.do_work_calls() > 0
        });
        drop(runner);
        assert!(closed.load(Ordering::Relaxed));
        let c = counters.do_work_calls();
        thread::sleep(Duration::from_millis(20));
        assert_eq!(counters.do_work_calls(), c);
    }

    #[test]
    fn stop_reports_a_panicking_agent_by_name() {
        let mut agent = Counting::new("exploder");
        agent.panic_at = Some(5);
        let closed = agent.closed.clone();
        let runner = AgentRunner::start(Box::new(agent), IdleStrategy::Yield, None).unwrap();
        wait_until("the panic", Duration::from_secs(10), || {
            runner.is_finished()
        });
        assert_eq!(
            runner.counters().do_work_calls(),
            4,
            "the panicking pass is not counted"
        );
        let err = runner.stop().unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(&err, AgentError::Panicked { agent, .. } if agent == "exploder"),
            "{err:?}"
        );
        assert_eq!(msg, "agent exploder panicked: boom on pass 5");
        assert!(!closed.load(Ordering::Relaxed));
    }

    #[test]
    fn pinning_to_a_missing_core_is_an_error() {
        let agent = Counting::new("pinned");
        let calls = agent.calls.clone();
        let err =
            AgentRunner::start(Box::new(agent), IdleStrategy::Spin, Some(10_000)).unwrap_err();
        let msg = err.to_string();
        match &err {
            AgentError::NoSuchCore {
                agent,
                core,
                available,
                cores,
            } => {
                assert_eq!((agent.as_str(), *core), ("pinned", 10_000));
                assert!(*available >= 1);
                assert!(!cores.is_empty());
            }
            other => panic!("expected NoSuchCore, got {other:?}"),
        }
        assert!(
            msg.starts_with("cannot pin agent pinned to core 10000: no such core"),
            "{msg}"
        );
        assert!(msg.contains("cores usable by this process"), "{msg}");
        assert_eq!(calls.load(Ordering::Relaxed), 0, "the agent ran");
    }

    #[test]
    fn pinning_to_a_real_core_runs() {
        let Some(ids) = core_affinity::get_core_ids() else {
            return;
        };
        let core = ids.last().expect("at least one core").id;
        let agent = Counting::new("pinned");
        let runner = AgentRunner::start(Box::new(agent), IdleStrategy::Yield, Some(core)).unwrap();
        assert_eq!(runner.core(), Some(core));
        let counters = runner.counters();
        wait_until("passes", Duration::from_secs(10), || {
            counters.do_work_calls() >= 10
        });
        runner.stop().unwrap();
    }

    /// Appends its name to a shared log on every pass; works until its budget is spent.
    struct Logging<'a> {
        name: &'static str,
        log: &'a RefCell<Vec<&'static str>>,
        budget: usize,
        closed: Rc<Cell<usize>>,
    }

    impl Agent for Logging<'_> {
        fn name(&self) -> &str {
            self.name
        }

        fn do_work(&mut self) -> usize {
            self.log.borrow_mut().push(self.name);
            if self.budget > 0 {
                self.budget -= 1;
                1
            } else {
                0
            }
        }

        fn on_close(&mut self) {
            self.closed.set(self.closed.get() + 1);
        }
    }

    fn manual<'a>(
        log: &'a RefCell<Vec<&'static str>>,
        closed: &Rc<Cell<usize>>,
    ) -> ManualRunner<'a> {
        let mut m = ManualRunner::new();
        for (name, budget) in [("a", 1), ("b", 2), ("c", 0)] {
            m.add(Box::new(Logging {
                name,
                log,
                budget,
                closed: closed.clone(),
            }));
        }
        m
    }

    #[test]
    fn manual_runner_steps_round_robin_until_the_condition() {
        let log = RefCell::new(Vec::new());
        let closed = Rc::new(Cell::new(0));
        let mut m = manual(&log, &closed);
        assert_eq!(m.names(), ["a", "b", "c"]);
        assert_eq!(m.len(), 3);

        // Already true: no round.
        assert_eq!(m.run_until(|| true, 10).unwrap(), 0);
        assert!(log.borrow().is_empty());

        let rounds = m.run_until(|| log.borrow().len() >= 6, 10).unwrap();
        assert_eq!(rounds, 2);
        assert_eq!(*log.borrow(), ["a", "b", "c", "a", "b", "c"]);
        assert_eq!(m.rounds(), 2);
        assert_eq!(m.work_done(), 3, "a once, b twice");

        assert_eq!(m.run_round(), 0, "budgets spent");
        assert_eq!(log.borrow().len(), 9);
        assert_eq!(m.rounds(), 3);

        assert_eq!(closed.get(), 0);
        m.close();
        assert_eq!(closed.get(), 3);
    }

    #[test]
    fn manual_runner_stops_at_the_round_limit() {
        let log = RefCell::new(Vec::new());
        let closed = Rc::new(Cell::new(0));
        let mut m = manual(&log, &closed);
        let err = m.run_until(|| false, 4).unwrap_err();
        assert!(
            matches!(
                err,
                AgentError::RoundLimit {
                    rounds: 4,
                    agents: 3,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "condition still false after 4 rounds of 3 agents (a, b, c)"
        );
        assert_eq!(log.borrow().len(), 12);
        assert_eq!(m.rounds(), 4);

        // A condition met by the last round counts as met.
        let target = log.borrow().len() + 3;
        assert_eq!(m.run_until(|| log.borrow().len() >= target, 1).unwrap(), 1);

        // step() is one do_work.
        let mut solo = Logging {
            name: "solo",
            log: &log,
            budget: 1,
            closed,
        };
        assert_eq!(step(&mut solo), 1);
        assert_eq!(step(&mut solo), 0);
        assert_eq!(log.borrow().last(), Some(&"solo"));
    }
}
