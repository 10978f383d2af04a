//! Linearizability checker for client histories of the replicated KV store.
//!
//! The algorithm is Wing & Gong's, with Lowe's memoisation, as used by Porcupine:
//!
//! * Every operation contributes a *call* event at its invoke time and, if it got a reply, a
//!   *return* event at its response time. The events are sorted by time (a call sorts before a
//!   return at the same instant, so `A.response == B.invoke` means "concurrent") and threaded on a
//!   doubly linked list.
//! * A depth-first search builds a linearization one operation at a time. The candidates for the
//!   next operation are the calls in the list before the first return: an operation whose return
//!   is reached while it is still un-linearized has missed its deadline, so the search backtracks.
//!   A linearized operation is lifted out of the list (both events) and put back on backtracking
//!   (dancing links), so each step is O(1) plus the scan.
//! * Every (set of linearized operations, model state) pair reached is remembered (a bitset plus
//!   the state in a `HashSet`); reaching it again prunes the branch.
//! * The search uses an explicit stack, never recursion, so long histories cannot overflow.
//! * Operations that never got a reply have no return event (return time = +infinity): they may be
//!   linearized at any point after their invoke, and the search succeeds as soon as every
//!   *replied* operation is linearized, so they may also be left out (never took effect).
//! * P-compositionality: a KV history is partitioned by key and each key is checked on its own.
//!
//! The generic layer ([`Model`], [`Operation`], [`check_operations`]) works for any sequential
//! specification; [`KvModel`] is the one for the KV store, and [`check_kv_history`] is the entry
//! point the simulator and the drills use.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::hash::Hash;

use rapax_dataplane::protocol::kv::{KvOp, KvReply};

/// Default cap on the number of distinct (linearized set, state) pairs explored per key.
pub const DEFAULT_MAX_STATES_PER_KEY: usize = 1_000_000;

/// Longest partial linearizations longer than this are printed with their beginning elided.
const PREFIX_PRINT_LIMIT: usize = 24;
/// How many of the last prefix operations are printed when the beginning is elided.
const PREFIX_PRINT_TAIL: usize = 16;

// ------------------------------------------------------------------------------------------------
// KV histories
// ------------------------------------------------------------------------------------------------

/// One client operation in a history. Times are any monotonic clock (simulator ticks or ns).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryOp {
    pub client: u64,
    pub op: KvOp,
    pub invoke: u64,
    /// None: the client never got a reply (it may or may not have taken effect, at any time after
    /// invoke). A response time earlier than `invoke` is treated as equal to `invoke`.
    pub response: Option<(u64, KvReply)>,
}

/// A KV operation for the generic layer ([`check_operations`] with [`KvModel`]).
pub type KvOperation = Operation<KvOp, KvReply>;

/// The checker's answer for a whole history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// The operations on `key` admit no linearization; `explanation` names the key and gives the
    /// longest linearizable prefix found and the operations that could not be placed after it.
    NotLinearizable {
        key: Vec<u8>,
        explanation: String,
    },
    /// The search budget was exhausted on `key` (and no other key was found not linearizable).
    Unknown {
        key: Vec<u8>,
    },
}

impl Verdict {
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }
}

/// Checks a KV history with [`DEFAULT_MAX_STATES_PER_KEY`].
pub fn check_kv_history(history: &[HistoryOp]) -> Verdict {
    check_kv_history_with_budget(history, DEFAULT_MAX_STATES_PER_KEY)
}

/// Same, with an explicit cap on explored states per key (returns Unknown when exceeded).
///
/// Keys are checked in byte order; the first key found not linearizable is reported. A key whose
/// budget runs out is reported as `Unknown` only if no key is found not linearizable.
pub fn check_kv_history_with_budget(history: &[HistoryOp], max_states_per_key: usize) -> Verdict {
    // Partition by key, keeping each operation's index in `history` for the explanations.
    let mut parts: BTreeMap<&[u8], (Vec<KvOperation>, Vec<usize>)> = BTreeMap::new();
    for (index, h) in history.iter().enumerate() {
        if imposes_nothing(h) {
            continue;
        }
        let (ops, ids) = parts.entry(kv_key(&h.op)).or_default();
        ops.push(Operation {
            client: h.client,
            input: h.op.clone(),
            invoke: h.invoke,
            response: h.response.clone(),
        });
        ids.push(index);
    }

    let mut unknown = None;
    for (key, (ops, ids)) in parts {
        match check_with_ids(&KvModel, &ops, max_states_per_key, &ids) {
            CheckOutcome::Linearizable => {}
            CheckOutcome::NotLinearizable(failure) => {
                return Verdict::NotLinearizable {
                    key: key.to_vec(),
                    explanation: format!("key {}: {}", fmt_bytes(key), failure.explanation),
                };
            }
            CheckOutcome::Unknown { .. } => {
                if unknown.is_none() {
                    unknown = Some(key.to_vec());
                }
            }
        }
    }
    match unknown {
        Some(key) => Verdict::Unknown { key },
        None => Verdict::Linearizable,
    }
}

/// Operations that can be dropped before the search without changing the verdict: a rejected
/// operation and an un-answered get have no effect on the state and constrain nothing, so they
/// can always be linearized anywhere inside their interval.
fn imposes_nothing(h: &HistoryOp) -> bool {
    match &h.response {
        Some((_, KvReply::Rejected(_))) => true,
        None => matches!(h.op, KvOp::Get { .. }),
        Some(_) => false,
    }
}

/// The key an operation touches.
pub fn kv_key(op: &KvOp) -> &[u8] {
    match op {
        KvOp::Put { key, .. }
        | KvOp::Get { key }
        | KvOp::Delete { key }
        | KvOp::Cas { key, .. } => key,
    }
}

/// The sequential specification of one key of the KV store: the state is the key's value.
#[derive(Clone, Copy, Debug, Default)]
pub struct KvModel;

impl Model for KvModel {
    type State = Option<Vec<u8>>;
    type Input = KvOp;
    type Output = KvReply;

    fn init(&self) -> Self::State {
        None
    }

    fn step(
        &self,
        state: &Self::State,
        input: &KvOp,
        output: Option<&KvReply>,
    ) -> Option<Self::State> {
        if let Some(KvReply::Rejected(_)) = output {
            // Refused deterministically: no effect, matches any state.
            return Some(state.clone());
        }
        match input {
            KvOp::Put { value, .. } => match output {
                None | Some(KvReply::Stored) => Some(Some(value.clone())),
                Some(_) => None,
            },
            KvOp::Get { .. } => match output {
                None => Some(state.clone()),
                Some(KvReply::Value(read)) if read == state => Some(state.clone()),
                Some(_) => None,
            },
            KvOp::Delete { .. } => match output {
                None => Some(None),
                Some(KvReply::Deleted(existed)) if *existed == state.is_some() => Some(None),
                Some(_) => None,
            },
            KvOp::Cas { expected, new, .. } => {
                let swaps = state == expected;
                match output {
                    None => {}
                    Some(KvReply::Cas(swapped)) if *swapped == swaps => {}
                    Some(_) => return None,
                }
                Some(if swaps {
                    Some(new.clone())
                } else {
                    state.clone()
                })
            }
        }
    }

    fn describe_input(&self, input: &KvOp) -> String {
        match input {
            KvOp::Put { key, value } => format!("Put({}, {})", fmt_bytes(key), fmt_bytes(value)),
            KvOp::Get { key } => format!("Get({})", fmt_bytes(key)),
            KvOp::Delete { key } => format!("Delete({})", fmt_bytes(key)),
            KvOp::Cas { key, expected, new } => format!(
                "Cas({}, {} -> {})",
                fmt_bytes(key),
                fmt_value(expected.as_deref()),
                fmt_bytes(new)
            ),
        }
    }

    fn describe_output(&self, output: &KvReply) -> String {
        match output {
            KvReply::Stored => "Stored".to_string(),
            KvReply::Value(v) => format!("Value({})", fmt_value(v.as_deref())),
            KvReply::Deleted(existed) => format!("Deleted({existed})"),
            KvReply::Cas(swapped) => format!("Cas({swapped})"),
            KvReply::Rejected(why) => format!("Rejected({why:?})"),
        }
    }

    fn describe_state(&self, state: &Self::State) -> String {
        fmt_value(state.as_deref())
    }
}

/// A value for humans: `absent`, or the bytes as by [`fmt_bytes`].
fn fmt_value(v: Option<&[u8]>) -> String {
    match v {
        None => "absent".to_string(),
        Some(b) => fmt_bytes(b),
    }
}

/// Bytes for humans: a quoted string if they are printable UTF-8, else hex.
fn fmt_bytes(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) if !s.chars().any(char::is_control) => format!("{s:?}"),
        _ => {
            let mut out = String::with_capacity(2 + 2 * b.len());
            out.push_str("0x");
            for byte in b {
                let _ = write!(out, "{byte:02x}");
            }
            out
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Generic layer
// ------------------------------------------------------------------------------------------------

/// A sequential specification.
pub trait Model {
    type State: Clone + Eq + Hash;
    type Input;
    type Output;

    /// The state before any operation.
    fn init(&self) -> Self::State;

    /// Applies `input` to `state`. `output` is the reply the client saw, or `None` if it never got
    /// one (then any output is acceptable). Returns the next state, or `None` if `output` is not
    /// what the specification produces from `state`.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> Option<Self::State>;

    fn describe_input(&self, input: &Self::Input) -> String;
    fn describe_output(&self, output: &Self::Output) -> String;
    fn describe_state(&self, state: &Self::State) -> String;
}

/// One operation of a history for a generic [`Model`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation<I, O> {
    pub client: u64,
    pub input: I,
    pub invoke: u64,
    /// None: no reply (may be linearized at any time after invoke, or never).
    /// A response time earlier than `invoke` is treated as equal to `invoke`.
    pub response: Option<(u64, O)>,
}

/// The result of checking one (partition of a) history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckOutcome {
    Linearizable,
    NotLinearizable(Failure),
    /// More than the allowed number of states would have to be explored.
    Unknown {
        explored_states: usize,
    },
}

/// Why a history is not linearizable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The longest partial linearization found (counting the operations that got a reply), as
    /// indices into the checked slice, in linearization order.
    pub longest_prefix: Vec<usize>,
    /// The operations that could have gone next after that prefix (the operation whose response
    /// deadline came first and every operation invoked by then), as indices, by invoke time. None
    /// of them extends the prefix to a full linearization.
    pub stuck: Vec<usize>,
    /// Distinct (linearized set, state) pairs explored.
    pub explored_states: usize,
    /// A human-readable account of the above.
    pub explanation: String,
}

/// Checks a whole history against `model` (no partitioning), exploring at most `max_states`
/// distinct (linearized set, state) pairs.
pub fn check_operations<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    max_states: usize,
) -> CheckOutcome {
    let ids: Vec<usize> = (0..history.len()).collect();
    check_with_ids(model, history, max_states, &ids)
}

const NIL: usize = usize::MAX;
const HEAD: usize = 0;

/// The events of a history on a doubly linked list (node 0 is the head sentinel).
struct EventList {
    next: Vec<usize>,
    prev: Vec<usize>,
    /// The operation of each event node.
    op: Vec<usize>,
    /// For a call node, its return node (NIL if the operation got no reply); NIL for returns.
    ret: Vec<usize>,
    is_call: Vec<bool>,
}

impl EventList {
    fn new<I, O>(ops: &[Operation<I, O>]) -> Self {
        // (time, 0 = call / 1 = return, op): calls sort before returns at the same time, and an
        // operation's call always sorts before its own return (the return time is clamped).
        let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * ops.len());
        for (i, o) in ops.iter().enumerate() {
            events.push((o.invoke, 0, i));
            if let Some((t, _)) = &o.response {
                events.push(((*t).max(o.invoke), 1, i));
            }
        }
        events.sort_unstable();

        let nodes = events.len() + 1;
        let mut list = EventList {
            next: (1..=nodes)
                .map(|n| if n < nodes { n } else { NIL })
                .collect(),
            prev: (0..nodes)
                .map(|n| n.checked_sub(1).unwrap_or(NIL))
                .collect(),
            op: vec![0; nodes],
            ret: vec![NIL; nodes],
            is_call: vec![false; nodes],
        };
        let mut call_node = vec![NIL; ops.len()];
        for (k, &(_, kind, i)) in events.iter().enumerate() {
            let node = k + 1;
            list.op[node] = i;
            if kind == 0 {
                list.is_call[node] = true;
                call_node[i] = node;
            } else {
                list.ret[call_node[i]] = node;
            }
        }
        list
    }

    fn unlink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = node;
        if n != NIL {
            self.prev[n] = node;
        }
    }

    /// Removes a call node and its return node.
    fn lift(&mut self, call: usize) {
        self.unlink(call);
        let ret = self.ret[call];
        if ret != NIL {
            self.unlink(ret);
        }
    }

    /// Undoes [`EventList::lift`] (must be called in reverse order of the lifts).
    fn unlift(&mut self, call: usize) {
        let ret = self.ret[call];
        if ret != NIL {
            self.relink(ret);
        }
        self.relink(call);
    }
}

/// A fixed-size set of operation indices.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bitset(Vec<u64>);

impl Bitset {
    fn new(bits: usize) -> Self {
        Bitset(vec![0; bits.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// The search. `ids[i]` is how operation `i` is named in the explanation.
fn check_with_ids<M: Model>(
    model: &M,
    ops: &[Operation<M::Input, M::Output>],
    max_states: usize,
    ids: &[usize],
) -> CheckOutcome {
    let replied = ops.iter().filter(|o| o.response.is_some()).count();
    let mut remaining = replied;
    if remaining == 0 {
        return CheckOutcome::Linearizable;
    }

    let mut list = EventList::new(ops);
    let mut linearized = Bitset::new(ops.len());
    let mut seen: HashSet<(Bitset, M::State)> = HashSet::new();
    // (call node linearized, state before it)
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    // The longest partial linearization, by number of replied operations in it.
    let mut longest: Vec<usize> = Vec::new();
    let mut longest_replied = 0;
    let mut state = model.init();
    let mut entry = list.next[HEAD];

    loop {
        // While a replied operation is un-linearized its return is on the list, after its call,
        // so the scan meets a return before the end of the list.
        debug_assert_ne!(entry, NIL);
        if list.is_call[entry] {
            let i = list.op[entry];
            let output = ops[i].response.as_ref().map(|(_, o)| o);
            if let Some(next_state) = model.step(&state, &ops[i].input, output) {
                linearized.set(i);
                let key = (linearized.clone(), next_state);
                if !seen.contains(&key) {
                    let next_state = key.1.clone();
                    seen.insert(key);
                    if seen.len() > max_states {
                        return CheckOutcome::Unknown {
                            explored_states: seen.len(),
                        };
                    }
                    stack.push((entry, std::mem::replace(&mut state, next_state)));
                    list.lift(entry);
                    if ops[i].response.is_some() {
                        remaining -= 1;
                        if remaining == 0 {
                            return CheckOutcome::Linearizable;
                        }
                        if replied - remaining > longest_replied {
                            longest_replied = replied - remaining;
                            longest.clear();
                            longest.extend(stack.iter().map(|&(node, _)| list.op[node]));
                        }
                    }
                    entry = list.next[HEAD];
                    continue;
                }
                linearized.clear(i);
            }
            entry = list.next[entry];
        } else {
            // An operation reached its response un-linearized: undo the last choice.
            let Some((call, previous)) = stack.pop() else {
                let explored = seen.len();
                return CheckOutcome::NotLinearizable(explain(model, ops, ids, longest, explored));
            };
            let i = list.op[call];
            state = previous;
            linearized.clear(i);
            list.unlift(call);
            if ops[i].response.is_some() {
                remaining += 1;
            }
            entry = list.next[call];
        }
    }
}

/// Builds the [`Failure`] for the longest partial linearization the search found.
fn explain<M: Model>(
    model: &M,
    ops: &[Operation<M::Input, M::Output>],
    ids: &[usize],
    longest_prefix: Vec<usize>,
    explored_states: usize,
) -> Failure {
    let describe = |i: usize| -> String {
        let o = &ops[i];
        match &o.response {
            Some((t, out)) => format!(
                "#{} client {}: {} @[{}, {}] -> {}",
                ids[i],
                o.client,
                model.describe_input(&o.input),
                o.invoke,
                t,
                model.describe_output(out)
            ),
            None => format!(
                "#{} client {}: {} @[{}, inf) -> (no reply)",
                ids[i],
                o.client,
                model.describe_input(&o.input),
                o.invoke
            ),
        }
    };

    let mut text = String::new();
    let _ = writeln!(
        text,
        "not linearizable: no order of its {} operations respects both real time and the \
         sequential specification ({} states explored)",
        ops.len(),
        explored_states
    );

    // Replay the prefix.
    let mut done = vec![false; ops.len()];
    let mut state = model.init();
    let mut after = Vec::with_capacity(longest_prefix.len());
    for &i in &longest_prefix {
        done[i] = true;
        let output = ops[i].response.as_ref().map(|(_, o)| o);
        if let Some(next) = model.step(&state, &ops[i].input, output) {
            state = next;
        }
        after.push(model.describe_state(&state));
    }
    let _ = writeln!(
        text,
        "longest linearizable prefix found: {} of {} operations",
        longest_prefix.len(),
        ops.len()
    );
    let skip = if longest_prefix.len() > PREFIX_PRINT_LIMIT {
        longest_prefix.len() - PREFIX_PRINT_TAIL
    } else {
        0
    };
    if skip > 0 {
        let _ = writeln!(text, "  ... ({skip} earlier operations elided)");
    }
    for (&i, state_after) in longest_prefix.iter().zip(&after).skip(skip) {
        let _ = writeln!(text, "  {}   => {}", describe(i), state_after);
    }
    let _ = writeln!(
        text,
        "state after the prefix: {}",
        model.describe_state(&state)
    );

    // The first deadline among what is left, and everything that could go before it.
    let deadline = (0..ops.len())
        .filter(|&i| !done[i])
        .filter_map(|i| {
            ops[i]
                .response
                .as_ref()
                .map(|(t, _)| ((*t).max(ops[i].invoke), i))
        })
        .min();
    let mut stuck: Vec<usize> = Vec::new();
    if let Some((deadline, forced)) = deadline {
        stuck = (0..ops.len())
            .filter(|&i| !done[i] && ops[i].invoke <= deadline)
            .collect();
        stuck.sort_by_key(|&i| (ops[i].invoke, i));
        let _ = writeln!(
            text,
            "{} must take effect by t={}, but no operation that may go next can be placed \
             ({} candidates):",
            describe(forced),
            deadline,
            stuck.len()
        );
        for &i in &stuck {
            let output = ops[i].response.as_ref().map(|(_, o)| o);
            let why = match model.step(&state, &ops[i].input, output) {
                None => format!("impossible in state {}", model.describe_state(&state)),
                Some(_) => "possible here, but every continuation fails later".to_string(),
            };
            let _ = writeln!(text, "  {}: {}", describe(i), why);
        }
    }

    Failure {
        longest_prefix,
        stuck,
        explored_states,
        explanation: text.trim_end().to_string(),
    }
}

// ------------------------------------------------------------------------------------------------
// Tests
// ------------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    fn done(client: u64, op: KvOp, invoke: u64, response: u64, reply: KvReply) -> HistoryOp {
        HistoryOp {
            client,
            op,
            invoke,
            response: Some((response, reply)),
        }
    }

    fn put(client: u64, key: &str, value: &str, invoke: u64, response: u64) -> HistoryOp {
        let op = KvOp::Put {
            key: b(key),
            value: b(value),
        };
        done(client, op, invoke, response, KvReply::Stored)
    }

    fn get(client: u64, key: &str, read: Option<&str>, invoke: u64, response: u64) -> HistoryOp {
        let reply = KvReply::Value(read.map(b));
        done(client, KvOp::Get { key: b(key) }, invoke, response, reply)
    }

    fn del(client: u64, key: &str, existed: bool, invoke: u64, response: u64) -> HistoryOp {
        let reply = KvReply::Deleted(existed);
        done(
            client,
            KvOp::Delete { key: b(key) },
            invoke,
            response,
            reply,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn cas(
        client: u64,
        key: &str,
        expected: Option<&str>,
        new: &str,
        swapped: bool,
        invoke: u64,
        response: u64,
    ) -> HistoryOp {
        let op = KvOp::Cas {
            key: b(key),
            expected: expected.map(b),
            new: b(new),
        };
        done(client, op, invoke, response, KvReply::Cas(swapped))
    }

    fn pending_put(client: u64, key: &str, value: &str, invoke: u64) -> HistoryOp {
        HistoryOp {
            client,
            op: KvOp::Put {
                key: b(key),
                value: b(value),
            },
            invoke,
            response: None,
        }
    }

    fn assert_linearizable(history: &[HistoryOp]) {
        let verdict = check_kv_history(history);
        assert_eq!(verdict, Verdict::Linearizable, "history: {history:#?}");
    }

    /// Asserts the history is not linearizable on `key`; returns the explanation.
    fn assert_violation(history: &[HistoryOp], key: &str) -> String {
        match check_kv_history(history) {
            Verdict::NotLinearizable {
                key: k,
                explanation,
            } => {
                assert_eq!(k, b(key), "wrong key; explanation:\n{explanation}");
                assert!(
                    explanation.contains(&format!("{key:?}")),
                    "explanation does not name the key:\n{explanation}"
                );
                explanation
            }
            other => panic!("expected a violation on {key:?}, got {other:?}"),
        }
    }

    // ---- known good ------------------------------------------------------------------------

    #[test]
    fn empty_history_is_linearizable() {
        assert_linearizable(&[]);
    }

    #[test]
    fn sequential_history_is_linearizable() {
        assert_linearizable(&[
            get(1, "x", None, 0, 1),
            put(1, "x", "a", 2, 3),
            get(2, "x", Some("a"), 4, 5),
            put(2, "x", "b", 6, 7),
            get(1, "x", Some("b"), 8, 9),
            del(1, "x", true, 10, 11),
            del(2, "x", false, 12, 13),
            get(2, "x", None, 14, 15),
        ]);
    }

    #[test]
    fn concurrent_put_and_get_may_see_either_value() {
        // The get overlaps the put of "b": both "a" and "b" are fine.
        for read in ["a", "b"] {
            assert_linearizable(&[
                put(1, "x", "a", 0, 1),
                put(1, "x", "b", 10, 20),
                get(2, "x", Some(read), 12, 18),
            ]);
        }
        // A get overlapping the first put may see the key absent or written.
        for read in [None, Some("a")] {
            assert_linearizable(&[put(1, "x", "a", 0, 10), get(2, "x", read, 5, 6)]);
        }
        // Two overlapping puts, then two sequential reads that agree with either order.
        for last in ["a", "b"] {
            assert_linearizable(&[
                put(1, "x", "a", 0, 10),
                put(2, "x", "b", 5, 15),
                get(3, "x", Some(last), 20, 21),
                get(3, "x", Some(last), 22, 23),
            ]);
        }
    }

    #[test]
    fn response_equal_to_invoke_counts_as_concurrent() {
        // The get is invoked at the instant the put responds: they overlap, so the get may go
        // first and see the key absent.
        assert_linearizable(&[put(1, "x", "a", 0, 10), get(2, "x", None, 10, 12)]);
        // One tick later it may not.
        assert_violation(&[put(1, "x", "a", 0, 10), get(2, "x", None, 11, 12)], "x");
    }

    #[test]
    fn cas_chain_is_linearizable() {
        assert_linearizable(&[
            cas(1, "c", None, "1", true, 0, 1),
            cas(2, "c", None, "x", false, 2, 3),
            cas(2, "c", Some("1"), "2", true, 4, 5),
            cas(1, "c", Some("1"), "y", false, 6, 7),
            cas(3, "c", Some("2"), "3", true, 8, 9),
            get(1, "c", Some("3"), 10, 11),
        ]);
        // Concurrent CASes from the same value: exactly one wins, the other sees the winner.
        assert_linearizable(&[
            put(1, "c", "0", 0, 1),
            cas(2, "c", Some("0"), "a", false, 2, 10),
            cas(3, "c", Some("0"), "b", true, 3, 9),
            get(1, "c", Some("b"), 11, 12),
        ]);
    }

    #[test]
    fn delete_then_get_sees_absent() {
        assert_linearizable(&[
            put(1, "d", "a", 0, 1),
            del(2, "d", true, 2, 3),
            get(1, "d", None, 4, 5),
        ]);
    }

    #[test]
    fn pending_put_seen_by_a_later_get() {
        assert_linearizable(&[
            put(1, "p", "a", 0, 1),
            pending_put(2, "p", "b", 5),
            get(3, "p", Some("a"), 10, 11),
            get(3, "p", Some("b"), 100, 101),
            get(1, "p", Some("b"), 200, 201),
        ]);
    }

    #[test]
    fn pending_put_never_seen() {
        assert_linearizable(&[
            put(1, "p", "a", 0, 1),
            pending_put(2, "p", "b", 5),
            get(3, "p", Some("a"), 10, 11),
            get(3, "p", Some("a"), 100, 101),
        ]);
    }

    #[test]
    fn pending_ops_of_every_kind_impose_no_output_constraint() {
        let pending = |client, op, invoke| HistoryOp {
            client,
            op,
            invoke,
            response: None,
        };
        assert_linearizable(&[
            put(1, "q", "a", 0, 1),
            pending(2, KvOp::Get { key: b("q") }, 2),
            pending(
                3,
                KvOp::Cas {
                    key: b("q"),
                    expected: Some(b("a")),
                    new: b("c"),
                },
                3,
            ),
            pending(4, KvOp::Delete { key: b("q") }, 4),
            get(1, "q", Some("c"), 10, 11),
            get(1, "q", None, 12, 13),
        ]);
    }

    #[test]
    fn rejected_operations_have_no_effect() {
        let rejected = done(
            2,
            KvOp::Put {
                key: b("r"),
                value: b("b"),
            },
            2,
            3,
            KvReply::Rejected("value too large".to_string()),
        );
        assert_linearizable(&[
            put(1, "r", "a", 0, 1),
            rejected.clone(),
            get(1, "r", Some("a"), 4, 5),
        ]);
        // Its value can therefore never be read.
        assert_violation(
            &[
                put(1, "r", "a", 0, 1),
                rejected,
                get(1, "r", Some("b"), 4, 5),
            ],
            "r",
        );
    }

    #[test]
    fn keys_are_checked_independently() {
        // Interleaved operations on two keys; each key is fine on its own.
        assert_linearizable(&[
            put(1, "k1", "a", 0, 10),
            put(2, "k2", "b", 0, 10),
            get(3, "k1", Some("a"), 11, 12),
            get(3, "k2", Some("b"), 13, 14),
            get(4, "k2", None, 1, 2),
        ]);
    }

    // ---- known bad -------------------------------------------------------------------------

    #[test]
    fn stale_read_is_detected() {
        assert_violation(
            &[
                put(1, "x", "a", 0, 1),
                put(2, "x", "b", 2, 3),
                get(3, "x", Some("a"), 4, 5),
            ],
            "x",
        );
    }

    #[test]
    fn read_of_a_value_never_written_is_detected() {
        assert_violation(
            &[put(1, "x", "a", 0, 10), get(2, "x", Some("zzz"), 2, 8)],
            "x",
        );
        assert_violation(&[get(2, "y", Some("ghost"), 0, 1)], "y");
    }

    #[test]
    fn two_cas_from_the_same_value_both_succeeding_is_detected() {
        assert_violation(
            &[
                put(1, "c", "0", 0, 1),
                cas(2, "c", Some("0"), "a", true, 2, 10),
                cas(3, "c", Some("0"), "b", true, 3, 9),
            ],
            "c",
        );
    }

    #[test]
    fn lost_update_is_detected() {
        assert_violation(
            &[
                put(1, "x", "old", 0, 1),
                put(2, "x", "new", 2, 3),
                get(3, "x", Some("new"), 4, 5),
                get(4, "x", Some("old"), 6, 7),
            ],
            "x",
        );
    }

    #[test]
    fn delete_reporting_a_missing_key_that_existed_is_detected() {
        assert_violation(&[put(1, "d", "a", 0, 1), del(2, "d", false, 2, 3)], "d");
        // And the converse: existed=true on a key never written.
        assert_violation(&[del(2, "e", true, 0, 1)], "e");
    }

    #[test]
    fn pending_put_cannot_take_effect_before_its_invoke() {
        assert_violation(
            &[get(1, "p", Some("b"), 0, 1), pending_put(2, "p", "b", 5)],
            "p",
        );
    }

    #[test]
    fn reply_of_the_wrong_kind_is_detected() {
        let bogus = done(
            1,
            KvOp::Put {
                key: b("w"),
                value: b("a"),
            },
            0,
            1,
            KvReply::Cas(true),
        );
        assert_violation(&[bogus], "w");
    }

    #[test]
    fn violation_on_one_key_is_reported_with_that_key() {
        let explanation = assert_violation(
            &[
                put(1, "good", "a", 0, 1),
                get(2, "good", Some("a"), 2, 3),
                put(1, "bad", "a", 0, 1),
                put(1, "bad", "b", 2, 3),
                get(2, "bad", Some("a"), 4, 5),
            ],
            "bad",
        );
        assert!(!explanation.contains("\"good\""), "{explanation}");
    }

    #[test]
    fn explanation_names_the_key_the_prefix_and_the_stuck_operation() {
        let history = [
            put(1, "acct", "100", 0, 1),
            put(2, "acct", "200", 2, 3),
            get(7, "acct", Some("100"), 40, 45),
        ];
        let explanation = assert_violation(&history, "acct");
        assert!(explanation.starts_with("key \"acct\""), "{explanation}");
        assert!(
            explanation.contains("longest linearizable prefix found: 2 of 3"),
            "{explanation}"
        );
        // The offending get, with its client, times and reply, and the state it clashed with.
        assert!(
            explanation.contains("#2 client 7: Get(\"acct\") @[40, 45] -> Value(\"100\")"),
            "{explanation}"
        );
        assert!(
            explanation.contains("impossible in state \"200\""),
            "{explanation}"
        );

        // Also through the generic API: the structured failure.
        let ops: Vec<_> = history
            .iter()
            .map(|h| Operation {
                client: h.client,
                input: h.op.clone(),
                invoke: h.invoke,
                response: h.response.clone(),
            })
            .collect();
        match check_operations(&KvModel, &ops, 1000) {
            CheckOutcome::NotLinearizable(f) => {
                assert_eq!(f.longest_prefix, vec![0, 1]);
                assert_eq!(f.stuck, vec![2]);
            }
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn binary_keys_and_values_are_printed_in_hex() {
        let history = [HistoryOp {
            client: 1,
            op: KvOp::Get { key: vec![0, 0xff] },
            invoke: 0,
            response: Some((1, KvReply::Value(Some(vec![1, 2])))),
        }];
        match check_kv_history(&history) {
            Verdict::NotLinearizable { key, explanation } => {
                assert_eq!(key, vec![0, 0xff]);
                assert!(explanation.starts_with("key 0x00ff"), "{explanation}");
                assert!(explanation.contains("Value(0x0102)"), "{explanation}");
            }
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    #[test]
    fn exhausted_budget_gives_unknown() {
        // 12 overlapping puts and a get of a value nobody wrote: proving the violation needs
        // thousands of states.
        let mut history: Vec<HistoryOp> = (0..12)
            .map(|c| put(c, "u", &format!("v{c}"), c, 100 + c))
            .collect();
        history.push(get(99, "u", Some("nobody"), 200, 201));
        assert_eq!(
            check_kv_history_with_budget(&history, 100),
            Verdict::Unknown { key: b("u") }
        );
        assert_violation(&history, "u");
        // A violation on another key takes precedence over Unknown.
        history.push(put(1, "v", "a", 0, 1));
        history.push(get(1, "v", Some("b"), 2, 3));
        match check_kv_history_with_budget(&history, 100) {
            Verdict::NotLinearizable { key, .. } => assert_eq!(key, b("v")),
            other => panic!("expected a violation on \"v\", got {other:?}"),
        }
    }

    #[test]
    fn long_single_key_history_does_not_overflow_the_stack() {
        // 3000 sequential puts and gets on one key: the search is 3000 deep.
        let mut history = Vec::new();
        for i in 0..1500u64 {
            let v = format!("v{i}");
            history.push(put(i % 3, "deep", &v, 4 * i, 4 * i + 1));
            history.push(get(i % 5, "deep", Some(&v), 4 * i + 2, 4 * i + 3));
        }
        assert_linearizable(&history);
        let last = history.len() - 1;
        history[last].response = Some((4 * 1500, KvReply::Value(Some(b("v0")))));
        let explanation = assert_violation(&history, "deep");
        assert!(
            explanation.contains("earlier operations elided"),
            "{explanation}"
        );
    }

    // ---- random histories --------------------------------------------------------------------

    /// A seeded generator for the random histories.
    struct Rng64(rand_xoshiro::Xoshiro256PlusPlus);

    impl Rng64 {
        fn new(seed: u64) -> Rng64 {
            use rand::SeedableRng;
            Rng64(rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(seed))
        }

        fn next(&mut self) -> u64 {
            rand::RngCore::next_u64(&mut self.0)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// A history produced by really executing a sequential KV store: every operation takes effect
    /// at a random point inside its [invoke, response] interval (clients are sequential). About
    /// 1 in 25 operations never gets a reply (half of those take effect anyway) and about 1 in 50
    /// is rejected. Every written value is unique.
    fn random_history(seed: u64, n_ops: usize, clients: u64, keys: usize) -> Vec<HistoryOp> {
        struct Slot {
            client: u64,
            key: usize,
            invoke: u64,
            point: u64,
            response: Option<u64>,
            takes_effect: bool,
            rejected: bool,
        }
        let mut rng = Rng64::new(seed);
        let mut clock: Vec<u64> = (0..clients).map(|_| rng.below(10)).collect();
        let mut slots = Vec::with_capacity(n_ops);
        for _ in 0..n_ops {
            let client = rng.below(clients);
            let invoke = clock[client as usize] + rng.below(5);
            let point = invoke + rng.below(20);
            let response = point + rng.below(20);
            clock[client as usize] = response + 1;
            let pending = rng.below(25) == 0;
            slots.push(Slot {
                client,
                key: rng.below(keys as u64) as usize,
                invoke,
                point,
                response: (!pending).then_some(response),
                takes_effect: !pending || rng.below(2) == 0,
                rejected: !pending && rng.below(50) == 0,
            });
        }

        // Execute in the order of the linearization points.
        let mut order: Vec<usize> = (0..n_ops).collect();
        order.sort_by_key(|&i| (slots[i].point, i));
        let mut store: Vec<Option<Vec<u8>>> = vec![None; keys];
        let mut written: Vec<Vec<Vec<u8>>> = vec![Vec::new(); keys];
        let mut fresh = 0u64;
        let mut history: Vec<Option<HistoryOp>> = (0..n_ops).map(|_| None).collect();
        for i in order {
            let slot = &slots[i];
            let key = format!("key{}", slot.key).into_bytes();
            let current = store[slot.key].clone();
            let mut value = || {
                fresh += 1;
                format!("v{fresh}").into_bytes()
            };
            let (op, reply, next) = match rng.below(10) {
                0..=3 => {
                    let v = value();
                    let op = KvOp::Put {
                        key,
                        value: v.clone(),
                    };
                    (op, KvReply::Stored, Some(v))
                }
                4..=6 => (KvOp::Get { key }, KvReply::Value(current.clone()), current),
                7 => (
                    KvOp::Delete { key },
                    KvReply::Deleted(current.is_some()),
                    None,
                ),
                _ => {
                    let history_of_key = &written[slot.key];
                    let expected = match rng.below(4) {
                        0 | 1 => current.clone(),
                        2 => None,
                        _ if history_of_key.is_empty() => None,
                        _ => Some(
                            history_of_key[rng.below(history_of_key.len() as u64) as usize].clone(),
                        ),
                    };
                    let new = value();
                    let swaps = expected == current;
                    let next = if swaps { Some(new.clone()) } else { current };
                    let op = KvOp::Cas { key, expected, new };
                    (op, KvReply::Cas(swaps), next)
                }
            };
            let reply = if slot.rejected {
                KvReply::Rejected("over limit".to_string())
            } else {
                reply
            };
            if slot.takes_effect && !slot.rejected {
                if let Some(v) = &next {
                    written[slot.key].push(v.clone());
                }
                store[slot.key] = next;
            }
            history[i] = Some(HistoryOp {
                client: slot.client,
                op,
                invoke: slot.invoke,
                response: slot.response.map(|t| (t, reply)),
            });
        }
        history.into_iter().map(Option::unwrap).collect()
    }

    #[test]
    fn random_executed_histories_are_linearizable() {
        for seed in 0..20 {
            let history = random_history(seed, 500, 8, 4);
            let pending = history.iter().filter(|h| h.response.is_none()).count();
            assert!(
                pending > 0,
                "seed {seed}: the generator should leave some ops pending"
            );
            let start = std::time::Instant::now();
            // A small budget: a correct history must be accepted with little search.
            let verdict = check_kv_history_with_budget(&history, 50_000);
            assert_eq!(verdict, Verdict::Linearizable, "seed {seed}");
            eprintln!("seed {seed}: 500 ops checked in {:?}", start.elapsed());
        }
    }

    #[test]
    fn random_history_with_a_corrupted_read_is_not_linearizable() {
        for seed in 0..20 {
            let mut history = random_history(seed, 500, 8, 4);
            let mut rng = Rng64::new(seed ^ 0xdead_beef);
            let reads: Vec<usize> = (0..history.len())
                .filter(|&i| {
                    matches!(history[i].op, KvOp::Get { .. })
                        && matches!(history[i].response, Some((_, KvReply::Value(_))))
                })
                .collect();
            assert!(!reads.is_empty());
            let victim = reads[rng.below(reads.len() as u64) as usize];
            let key = kv_key(&history[victim].op).to_vec();
            let t = history[victim].response.as_ref().unwrap().0;
            // Never written by anyone: certainly a violation.
            history[victim].response = Some((t, KvReply::Value(Some(b("never-written")))));
            match check_kv_history(&history) {
                Verdict::NotLinearizable {
                    key: k,
                    explanation,
                } => {
                    assert_eq!(k, key, "seed {seed}");
                    assert!(
                        explanation.contains("\"never-written\""),
                        "seed {seed}: {explanation}"
                    );
                }
                other => panic!("seed {seed}: expected a violation, got {other:?}"),
            }
        }
    }

    #[test]
    fn random_history_with_a_flipped_cas_is_not_linearizable() {
        // Flip an acknowledged successful CAS whose (unique) new value some get later read: a
        // CAS that did not swap cannot have written it, and nothing else writes that value.
        let mut caught = 0;
        for seed in 0..20 {
            let mut history = random_history(seed, 500, 8, 4);
            let read = |v: &Vec<u8>| {
                history
                    .iter()
                    .any(|h| matches!(&h.response, Some((_, KvReply::Value(Some(r)))) if r == v))
            };
            let Some(victim) = history.iter().position(|h| match (&h.op, &h.response) {
                (KvOp::Cas { new, .. }, Some((_, KvReply::Cas(true)))) => read(new),
                _ => false,
            }) else {
                continue;
            };
            let t = history[victim].response.as_ref().unwrap().0;
            history[victim].response = Some((t, KvReply::Cas(false)));
            let key = kv_key(&history[victim].op).to_vec();
            match check_kv_history(&history) {
                Verdict::NotLinearizable { key: k, .. } => assert_eq!(k, key, "seed {seed}"),
                other => panic!("seed {seed}: expected a violation, got {other:?}"),
            }
            caught += 1;
        }
        assert!(
            caught >= 5,
            "too few seeds exercised the flipped CAS ({caught})"
        );
    }

    #[test]
    fn dense_single_key_history_checks_quickly() {
        // 2000 operations, 8 clients, all on one key.
        let history = random_history(7, 2000, 8, 1);
        assert_eq!(
            check_kv_history_with_budget(&history, 200_000),
            Verdict::Linearizable
        );
    }
}
