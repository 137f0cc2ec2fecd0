//! A linearizability checker for key-value histories.
//!
//! Owns: [`Operation`] (one client call as observed from outside), [`check`] and
//! [`check_with_budget`], and the [`Violation`] they report. The sequential model is
//! [`KvCommand::step`]; nothing here re-implements the store's semantics.
//!
//! The search is Wing & Gong's with Lowe's memoization, as in Porcupine: walk the call and
//! return events in time order, try to linearize each call whose operation is still open, back
//! off when a return is reached for an operation not yet linearized, and never explore the same
//! (set of linearized operations, model state) twice. A KV map is linearizable iff each key's
//! sub-history is (P-compositionality), so every key is searched on its own; that keeps the
//! exponential part of the search as small as the per-key concurrency.
//!
//! Intervals are closed: an operation that returns at `t` and one invoked at `t` are treated
//! as concurrent, so a report never hinges on how events within one tick were ordered.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

use crate::kv::{KvCommand, KvOutput};

/// One client operation in a history. Times are in any monotone unit (virtual ticks or
/// nanoseconds).
#[derive(Clone, Debug)]
pub struct Operation {
    /// The client that issued the operation (for reports only; the checker does not assume
    /// clients are sequential).
    pub client: u64,
    /// The command the client sent.
    pub command: KvCommand,
    /// When the client sent it.
    pub invoked_at: u64,
    /// When the client received the reply, and the reply: the key's value after the command.
    ///
    /// `None`: the operation's outcome is unknown (timed out / client gave up): it may or may
    /// not have taken effect, at any time after invocation.
    pub completed: Option<(u64, KvOutput)>,
}

/// Why a history is not linearizable: the first key (in key order) whose sub-history has no
/// linearization, or which holds an operation that returns before it is invoked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The key whose sub-history is not linearizable.
    pub key: String,
    /// Human-readable detail: the key's operations with their times, and the longest
    /// linearizable prefix the search found.
    pub explanation: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "history is not linearizable on key {:?}: {}", self.key, self.explanation)
    }
}

impl std::error::Error for Violation {}

/// The result of a budgeted check that found no violation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckOutcome {
    /// Every key's sub-history has a linearization.
    Linearizable,
    /// Some key's search ran out of steps before deciding, and no other key is violated.
    Unknown,
}

/// Checks that the history is linearizable with respect to the KV model ([`KvCommand::step`]),
/// partitioned per key (P-compositionality: a KV map is linearizable iff each key's sub-history
/// is). Keys start absent. The search is unbounded; see [`check_with_budget`] to cap it.
///
/// # Errors
///
/// The first key, in key order, whose sub-history has no linearization.
pub fn check(history: &[Operation]) -> Result<(), Violation> {
    match check_keys(history, Budget(None))? {
        CheckOutcome::Linearizable => Ok(()),
        CheckOutcome::Unknown => unreachable!("an unlimited budget never runs out"),
    }
}

/// Same as [`check`], with a budget of `max_steps_per_key` search steps for each key. Returns
/// `Ok(CheckOutcome::Unknown)` when some key's budget runs out and no key is shown violated.
///
/// # Errors
///
/// The first key, in key order, whose sub-history was shown to have no linearization.
pub fn check_with_budget(
    history: &[Operation],
    max_steps_per_key: u64,
) -> Result<CheckOutcome, Violation> {
    check_keys(history, Budget(Some(max_steps_per_key)))
}

/// The model state of one key: its value, `None` while absent.
type State = KvOutput;

/// Checks every key in key order, so the reported violation does not depend on history order.
fn check_keys(history: &[Operation], budget: Budget) -> Result<CheckOutcome, Violation> {
    let mut outcome = CheckOutcome::Linearizable;
    for (key, ops) in by_key(history) {
        // Keep going after an undecided key: a violation elsewhere is still a definite answer.
        if check_key(key, ops, budget)? == CheckOutcome::Unknown {
            outcome = CheckOutcome::Unknown;
        }
    }
    Ok(outcome)
}

/// Splits the history into per-key sub-histories, preserving history order within each.
fn by_key(history: &[Operation]) -> BTreeMap<&str, Vec<&Operation>> {
    let mut keys: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for op in history {
        keys.entry(op.command.key()).or_default().push(op);
    }
    keys
}

/// Searches one key's sub-history for a linearization.
fn check_key(
    key: &str,
    mut ops: Vec<&Operation>,
    budget: Budget,
) -> Result<CheckOutcome, Violation> {
    let before = ops.len();
    drop_invisible_pending(&mut ops);
    let dropped = before - ops.len();
    // Stable sort: ties keep history order, so operation numbers in reports are deterministic.
    ops.sort_by_key(|op| (op.invoked_at, return_time(op)));
    validate(key, &ops)?;
    let mut search = Search::new(&ops);
    match search.run(budget) {
        Verdict::Linearizable => Ok(CheckOutcome::Linearizable),
        Verdict::Unknown => Ok(CheckOutcome::Unknown),
        Verdict::Violation => Err(search.violation(key, dropped)),
    }
}

/// Drops pending operations that cannot change the verdict: each stays open to the end of the
/// history, so each one left in multiplies the search. A pending read changes nothing and
/// reports nothing. A pending write whose value occurs in no completed output is invisible:
/// from it until the next put the key's value contains that value, so every operation in
/// between must be pending too, and removing it from a linearization leaves the rest valid
/// (while omitting it is always allowed).
fn drop_invisible_pending(ops: &mut Vec<&Operation>) {
    let outputs: Vec<&str> =
        ops.iter().filter_map(|op| op.completed.as_ref()?.1.as_deref()).collect();
    ops.retain(|op| {
        op.completed.is_some()
            || written_value(&op.command).is_some_and(|v| outputs.iter().any(|o| o.contains(v)))
    });
}

/// The value a write puts into the key (whole or as a suffix); `None` for a read.
fn written_value(command: &KvCommand) -> Option<&str> {
    match command {
        KvCommand::Put { value, .. } | KvCommand::Append { value, .. } => Some(value),
        KvCommand::Get { .. } => None,
    }
}

/// Rejects an operation that returns before it is invoked: no linearization point fits it,
/// and it almost certainly means the harness recorded the wrong clock.
fn validate(key: &str, ops: &[&Operation]) -> Result<(), Violation> {
    match ops.iter().position(|op| return_time(op) < op.invoked_at) {
        None => Ok(()),
        Some(index) => Err(Violation {
            key: key.to_owned(),
            explanation: format!(
                "operation returns before it is invoked: {}",
                describe(index, ops[index])
            ),
        }),
    }
}

/// When `op` returned; an operation with an unknown outcome never returns, so it stays open
/// (linearizable anywhere after its call) for the whole history.
fn return_time(op: &Operation) -> u64 {
    op.completed.as_ref().map_or(u64::MAX, |(at, _)| *at)
}

/// The model's verdict on applying `op` in `state`: the state after it, or `None` if the
/// operation's recorded output contradicts the model. Outputs are the value *after* the
/// command, so the new state and the expected output are the same value.
fn apply(op: &Operation, state: &State) -> Option<State> {
    let after = op.command.step(state);
    match &op.completed {
        Some((_, output)) if *output != after => None,
        _ => Some(after),
    }
}

/// How one key's search ended.
enum Verdict {
    Linearizable,
    Unknown,
    Violation,
}

/// A cap on search steps; `None` means unlimited.
#[derive(Clone, Copy)]
struct Budget(Option<u64>);

impl Budget {
    /// Takes one step from the budget; false once it is exhausted.
    fn spend(&mut self) -> bool {
        match &mut self.0 {
            None => true,
            Some(0) => false,
            Some(left) => {
                *left -= 1;
                true
            }
        }
    }
}

/// The memoization set's hasher: word at a time (FxHash's mixing). The keys are our own
/// (bitsets and model states), so SipHash's defence against chosen keys buys nothing here,
/// and it was a tenth of the simulator's time. Equality still decides membership.
#[derive(Default)]
struct WordHasher(u64);

impl Hasher for WordHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for word in words.by_ref() {
            self.write_u64(u64::from_le_bytes(word.try_into().expect("8 bytes")));
        }
        let mut tail = [0u8; 8];
        let rest = words.remainder();
        tail[..rest.len()].copy_from_slice(rest);
        self.write_u64(u64::from_le_bytes(tail) ^ ((rest.len() as u64) << 59));
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn write_u8(&mut self, v: u8) {
        self.write_u64(u64::from(v));
    }

    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }
}

type Seen = HashSet<(Bitset, State), BuildHasherDefault<WordHasher>>;

/// A set of operation indices, hashable so it can be part of the memoization key.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bitset(Vec<u64>);

impl Bitset {
    fn new(len: usize) -> Self {
        Bitset(vec![0; len.div_ceil(64)])
    }

    fn insert(&mut self, index: usize) {
        self.0[index / 64] |= 1 << (index % 64);
    }

    fn remove(&mut self, index: usize) {
        self.0[index / 64] &= !(1 << (index % 64));
    }
}

/// One call or return event, ordered by time; at equal times calls sort before returns, so
/// intervals that touch count as overlapping.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Event {
    time: u64,
    is_return: bool,
    op: usize,
}

/// The start sentinel of an [`EventList`].
const HEAD: usize = 0;

/// The call and return events of one key, in time order, as a doubly linked list over an
/// arena (node 0 and the last node are sentinels). Linearizing an operation lifts its two
/// events out in O(1); backtracking restores them in O(1) because the removed nodes keep
/// their own links (dancing links), provided restores happen in reverse order of removals,
/// which the search's stack guarantees.
struct EventList {
    next: Vec<usize>,
    prev: Vec<usize>,
    /// `Some(op)` for the node holding `op`'s call event.
    call_of: Vec<Option<usize>>,
    call_node: Vec<usize>,
    return_node: Vec<usize>,
}

impl EventList {
    fn new(ops: &[&Operation]) -> Self {
        let events = sorted_events(ops);
        let len = events.len() + 2;
        let mut list = EventList {
            // The end sentinel links to itself; the search stops at a return before reaching it.
            next: (1..len).chain([len - 1]).collect(),
            prev: [HEAD].into_iter().chain(0..len - 1).collect(),
            call_of: vec![None; len],
            call_node: vec![HEAD; ops.len()],
            return_node: vec![HEAD; ops.len()],
        };
        for (position, event) in events.iter().enumerate() {
            list.place(position + 1, event);
        }
        list
    }

    fn place(&mut self, node: usize, event: &Event) {
        if event.is_return {
            self.return_node[event.op] = node;
        } else {
            self.call_of[node] = Some(event.op);
            self.call_node[event.op] = node;
        }
    }

    /// The earliest event still in the list.
    fn first(&self) -> usize {
        self.next[HEAD]
    }

    fn next(&self, node: usize) -> usize {
        self.next[node]
    }

    /// The operation whose call is at `node`, or `None` for a return event or the end.
    fn call_at(&self, node: usize) -> Option<usize> {
        self.call_of[node]
    }

    /// The node after `op`'s call; valid while that call is in the list.
    fn after_call(&self, op: usize) -> usize {
        self.next[self.call_node[op]]
    }

    fn lift(&mut self, op: usize) {
        self.unlink(self.call_node[op]);
        self.unlink(self.return_node[op]);
    }

    fn unlift(&mut self, op: usize) {
        self.relink(self.return_node[op]);
        self.relink(self.call_node[op]);
    }

    fn unlink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = next;
        self.prev[next] = prev;
    }

    fn relink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = node;
        self.prev[next] = node;
    }
}

/// Every operation's call and return events, sorted by [`Event`]'s order.
fn sorted_events(ops: &[&Operation]) -> Vec<Event> {
    let mut events: Vec<Event> = ops
        .iter()
        .enumerate()
        .flat_map(|(op, operation)| {
            let call = Event { time: operation.invoked_at, is_return: false, op };
            let ret = Event { time: return_time(operation), is_return: true, op };
            [call, ret]
        })
        .collect();
    events.sort();
    events
}

/// An operation linearized on the current path, and the state before it, to undo it.
struct Frame {
    op: usize,
    before: State,
}

/// The iterative search over one key's operations. The explicit stack of [`Frame`]s is the
/// current candidate linearization, so depth is bounded by memory, not the call stack.
struct Search<'a> {
    ops: &'a [&'a Operation],
    events: EventList,
    linearized: Bitset,
    state: State,
    /// (linearized set, state) pairs already explored: the rest of the search depends only on
    /// that pair, so a second visit cannot succeed where the first failed (Lowe).
    seen: Seen,
    stack: Vec<Frame>,
    /// Completed operations not yet linearized. The search succeeds when this reaches zero:
    /// operations with unknown outcomes may be left out, i.e. never take effect.
    unfinished: usize,
    longest: Vec<usize>,
    longest_state: State,
}

impl<'a> Search<'a> {
    fn new(ops: &'a [&'a Operation]) -> Self {
        Search {
            ops,
            events: EventList::new(ops),
            linearized: Bitset::new(ops.len()),
            state: None,
            seen: Seen::default(),
            stack: Vec::new(),
            unfinished: ops.iter().filter(|op| op.completed.is_some()).count(),
            longest: Vec::new(),
            longest_state: None,
        }
    }

    fn run(&mut self, mut budget: Budget) -> Verdict {
        let mut node = self.events.first();
        while self.unfinished > 0 {
            if !budget.spend() {
                return Verdict::Unknown;
            }
            node = match self.events.call_at(node) {
                Some(op) => self.try_linearize(op, node),
                // A return of an operation not yet linearized: every way to extend the current
                // prefix has been tried, so an earlier choice must change.
                None => match self.backtrack() {
                    Some(next) => next,
                    None => return Verdict::Violation,
                },
            };
        }
        Verdict::Linearizable
    }

    /// Linearizes `op` next if the model allows it and the result is unexplored; returns the
    /// node to look at next.
    fn try_linearize(&mut self, op: usize, node: usize) -> usize {
        match apply(self.ops[op], &self.state) {
            Some(after) if self.first_visit(op, &after) => self.descend(op, after),
            _ => self.events.next(node),
        }
    }

    /// Marks (linearized + `op`, `after`) explored; false if it already was.
    fn first_visit(&mut self, op: usize, after: &State) -> bool {
        let mut linearized = self.linearized.clone();
        linearized.insert(op);
        self.seen.insert((linearized, after.clone()))
    }

    fn descend(&mut self, op: usize, after: State) -> usize {
        let before = std::mem::replace(&mut self.state, after);
        self.stack.push(Frame { op, before });
        self.linearized.insert(op);
        self.events.lift(op);
        if self.ops[op].completed.is_some() {
            self.unfinished -= 1;
        }
        self.record_progress();
        self.events.first()
    }

    /// Undoes the last linearized operation; returns the node after its call, to try the
    /// next candidate in its place, or `None` when there is nothing left to undo.
    fn backtrack(&mut self) -> Option<usize> {
        let Frame { op, before } = self.stack.pop()?;
        self.state = before;
        self.linearized.remove(op);
        self.events.unlift(op);
        if self.ops[op].completed.is_some() {
            self.unfinished += 1;
        }
        Some(self.events.after_call(op))
    }

    /// Keeps the deepest prefix seen, for the report. Copies only when the record grows, so
    /// at most once per operation.
    fn record_progress(&mut self) {
        if self.stack.len() > self.longest.len() {
            self.longest = self.stack.iter().map(|frame| frame.op).collect();
            self.longest_state = self.state.clone();
        }
    }

    /// The report: every operation searched, and the deepest prefix reached. `dropped` counts
    /// the pending operations left out beforehand.
    fn violation(&self, key: &str, dropped: usize) -> Violation {
        let header =
            format!("no linearization of its {} operations{}:", self.ops.len(), moot(dropped));
        let ops =
            self.ops.iter().enumerate().map(|(index, op)| format!("  {}", describe(index, op)));
        let lines: Vec<String> =
            std::iter::once(header).chain(ops).chain([self.describe_longest()]).collect();
        Violation { key: key.to_owned(), explanation: lines.join("\n") }
    }

    fn describe_longest(&self) -> String {
        let order: Vec<String> = self.longest.iter().map(|op| format!("#{op}")).collect();
        format!(
            "longest linearizable prefix ({} of {}): [{}], leaving value {:?}",
            self.longest.len(),
            self.ops.len(),
            order.join(", "),
            self.longest_state
        )
    }
}

/// Notes how many pending operations [`drop_invisible_pending`] left out, if any.
fn moot(dropped: usize) -> String {
    match dropped {
        0 => String::new(),
        _ => format!(" ({dropped} with unknown outcomes left out as moot)"),
    }
}

/// One line of a report: number, client, interval, command and output.
fn describe(index: usize, op: &Operation) -> String {
    let (returned, output) = match &op.completed {
        Some((at, output)) => (at.to_string(), format!("{output:?}")),
        None => ("?".to_owned(), "unknown".to_owned()),
    };
    let command = describe_command(&op.command);
    format!("#{index} client {} [{}, {returned}] {command} -> {output}", op.client, op.invoked_at)
}

fn describe_command(command: &KvCommand) -> String {
    match command {
        KvCommand::Put { value, .. } => format!("put {value:?}"),
        KvCommand::Append { value, .. } => format!("append {value:?}"),
        KvCommand::Get { .. } => "get".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str) -> KvCommand {
        KvCommand::Put { key: key.into(), value: value.into() }
    }

    fn append(key: &str, value: &str) -> KvCommand {
        KvCommand::Append { key: key.into(), value: value.into() }
    }

    fn get(key: &str) -> KvCommand {
        KvCommand::Get { key: key.into() }
    }

    /// A completed operation on `[invoked, returned]` that observed `output`.
    fn done(client: u64, command: KvCommand, span: (u64, u64), output: Option<&str>) -> Operation {
        Operation {
            client,
            command,
            invoked_at: span.0,
            completed: Some((span.1, output.map(Into::into))),
        }
    }

    /// An operation whose outcome the client never learned.
    fn pending(client: u64, command: KvCommand, invoked_at: u64) -> Operation {
        Operation { client, command, invoked_at, completed: None }
    }

    fn violation_key(history: &[Operation]) -> String {
        check(history).expect_err("history should be rejected").key
    }

    #[test]
    fn accepts_empty_history() {
        assert_eq!(check(&[]), Ok(()));
    }

    #[test]
    fn accepts_sequential_put_then_get() {
        let history = [
            done(1, get("a"), (0, 1), None),
            done(1, put("a", "x"), (2, 3), Some("x")),
            done(2, get("a"), (4, 5), Some("x")),
            done(2, append("a", "y"), (6, 7), Some("xy")),
            done(1, get("a"), (8, 9), Some("xy")),
        ];
        assert_eq!(check(&history), Ok(()));
    }

    #[test]
    fn accepts_concurrent_get_seeing_old_value() {
        let history = [
            done(1, put("a", "old"), (0, 1), Some("old")),
            done(1, put("a", "new"), (10, 20), Some("new")),
            done(2, get("a"), (12, 18), Some("old")),
        ];
        assert_eq!(check(&history), Ok(()));
    }

    #[test]
    fn accepts_concurrent_get_seeing_new_value() {
        let history = [
            done(1, put("a", "old"), (0, 1), Some("old")),
            done(1, put("a", "new"), (10, 20), Some("new")),
            done(2, get("a"), (12, 18), Some("new")),
        ];
        assert_eq!(check(&history), Ok(()));
    }

    #[test]
    fn accepts_concurrent_appends_in_either_order() {
        let outputs = [[Some("x"), Some("xy"), Some("xy")], [Some("yx"), Some("y"), Some("yx")]];
        for [x, y, read] in outputs {
            let history = [
                done(1, append("a", "x"), (0, 10), x),
                done(2, append("a", "y"), (1, 11), y),
                done(3, get("a"), (12, 13), read),
            ];
            assert_eq!(check(&history), Ok(()), "appends observing {x:?} and {y:?}");
        }
    }

    #[test]
    fn accepts_intervals_touching_at_one_instant_as_concurrent() {
        let history = [done(1, put("a", "x"), (0, 5), Some("x")), done(2, get("a"), (5, 6), None)];
        assert_eq!(check(&history), Ok(()));
    }

    #[test]
    fn accepts_timed_out_write_that_later_reads_observe() {
        let history = [
            done(1, put("a", "old"), (0, 1), Some("old")),
            pending(1, put("a", "new"), 2),
            done(2, get("a"), (10, 11), Some("new")),
            done(2, get("a"), (12, 13), Some("new")),
        ];
        assert_eq!(check(&history), Ok(()));
    }

    #[test]
    fn accepts_timed_out_write_that_never_shows_up() {
        let mut history = vec![
            done(1, put("a", "old"), (0, 1), Some("old")),
            pending(1, put("a", "new"), 2),
            pending(3, get("a"), 3),
            done(2, get("a"), (10, 11), Some("old")),
            done(2, get("a"), (100, 101), Some("old")),
        ];
        assert_eq!(check(&history), Ok(()), "no output mentions \"new\"");
        // Now "new" occurs in an output, so the search itself must leave the write out.
        history.push(done(4, put("a", "newer"), (200, 201), Some("newer")));
        assert_eq!(check(&history), Ok(()), "a later write mentions \"new\"");
    }

    #[test]
    fn rejects_timed_out_write_observed_before_it_was_invoked() {
        let history = [done(2, get("a"), (0, 1), Some("new")), pending(1, put("a", "new"), 2)];
        assert_eq!(violation_key(&history), "a");
    }

    #[test]
    fn rejects_stale_read() {
        let history = [
            done(1, put("a", "old"), (0, 1), Some("old")),
            done(1, put("a", "new"), (2, 3), Some("new")),
            done(2, get("a"), (4, 5), Some("old")),
        ];
        assert_eq!(violation_key(&history), "a");
    }

    #[test]
    fn rejects_lost_acknowledged_write() {
        let history = [
            done(1, put("a", "v1"), (0, 1), Some("v1")),
            done(1, put("a", "v2"), (2, 10), Some("v2")),
            done(2, get("a"), (5, 6), Some("v1")),
            done(2, get("a"), (11, 12), Some("v1")),
            done(3, get("a"), (20, 21), Some("v1")),
        ];
        assert_eq!(violation_key(&history), "a");
    }

    #[test]
    fn rejects_duplicated_apply() {
        let history =
            [done(1, append("a", "x"), (0, 5), Some("x")), done(2, get("a"), (6, 7), Some("xx"))];
        assert_eq!(violation_key(&history), "a");
    }

    #[test]
    fn rejects_read_of_value_never_written() {
        let history =
            [done(1, put("a", "x"), (0, 10), Some("x")), done(2, get("a"), (2, 8), Some("ghost"))];
        assert_eq!(violation_key(&history), "a");
    }

    #[test]
    fn rejects_write_whose_output_contradicts_the_model() {
        let history = [done(1, put("a", "x"), (0, 1), Some("y"))];
        assert_eq!(violation_key(&history), "a");
    }

    #[test]
    fn rejects_operation_returning_before_its_invocation() {
        let violation = check(&[done(1, get("a"), (5, 4), None)]).expect_err("malformed interval");
        assert!(violation.explanation.contains("returns before it is invoked"), "{violation}");
    }

    #[test]
    fn reports_violation_on_the_offending_key() {
        let history = [
            done(1, put("a", "1"), (0, 1), Some("1")),
            done(1, put("b", "1"), (2, 3), Some("1")),
            done(2, get("a"), (4, 5), Some("1")),
            done(2, get("b"), (6, 7), None),
            done(3, put("c", "1"), (8, 9), Some("1")),
        ];
        let violation = check(&history).expect_err("b's read lost the write");
        assert_eq!(violation.key, "b");
        assert!(violation.explanation.contains("#1 client 2 [6, 7] get -> None"), "{violation}");
        assert!(violation.explanation.contains("(1 of 2): [#0]"), "{violation}");
        assert!(violation.to_string().contains("key \"b\""), "{violation}");
    }

    #[test]
    fn budget_exhaustion_is_unknown_not_a_verdict() {
        let history =
            [done(1, put("a", "x"), (0, 10), Some("x")), done(2, get("a"), (1, 11), Some("x"))];
        assert_eq!(check_with_budget(&history, 1), Ok(CheckOutcome::Unknown));
        assert_eq!(check_with_budget(&history, 1_000), Ok(CheckOutcome::Linearizable));
    }

    #[test]
    fn budget_does_not_hide_a_violation_on_another_key() {
        let history = [
            done(1, put("a", "x"), (0, 10), Some("x")),
            done(2, put("a", "y"), (1, 11), Some("y")),
            done(3, get("a"), (2, 12), Some("x")),
            done(4, get("b"), (0, 1), Some("ghost")),
        ];
        // Two steps decide "b" but not "a", which must backtrack once.
        assert_eq!(check_with_budget(&history[..3], 2), Ok(CheckOutcome::Unknown));
        let violation = check_with_budget(&history, 2).expect_err("b reads a ghost");
        assert_eq!(violation.key, "b");
    }

    #[test]
    fn long_sequential_history_does_not_exhaust_the_stack() {
        let history: Vec<Operation> = (0..5_000)
            .map(|i| done(1, put("a", &i.to_string()), (2 * i, 2 * i + 1), Some(&i.to_string())))
            .collect();
        assert_eq!(check(&history), Ok(()));
    }

    /// A tiny deterministic PRNG, so the randomized tests need no crates and always replay.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, bound: u64) -> u64 {
            self.next() % bound
        }
    }

    fn random_command(rng: &mut XorShift, keys: &[&str], serial: u64) -> KvCommand {
        let key = keys[rng.below(keys.len() as u64) as usize];
        match rng.below(3) {
            0 => put(key, &format!("p{serial}")),
            1 => append(key, &format!("+{serial}")),
            _ => get(key),
        }
    }

    /// Runs `count` random commands on three keys through the model one after another, the
    /// `i`th taking effect at `10 * i` (plus an offset), then widens each interval by up to
    /// `slack` on both sides, so operations overlap while each still contains its true
    /// linearization point. Client `i % clients` issues operation `i`; with
    /// `slack <= 5 * clients` each client stays sequential.
    fn widened_history(seed: u64, count: u64, clients: u64, slack: u64) -> Vec<Operation> {
        let (mut rng, keys) = (XorShift(seed), ["a", "b", "c"]);
        let mut values: BTreeMap<String, KvOutput> = BTreeMap::new();
        (0..count)
            .map(|i| {
                let command = random_command(&mut rng, &keys, i);
                let after = command.step(values.get(command.key()).unwrap_or(&None));
                if after.is_some() {
                    values.insert(command.key().to_owned(), after.clone());
                }
                let at = 10 * (i + 1) + slack;
                let span = (at - rng.below(slack), at + rng.below(slack));
                Operation {
                    client: i % clients,
                    command,
                    invoked_at: span.0,
                    completed: Some((span.1, after)),
                }
            })
            .collect()
    }

    /// Forgets the outcome of roughly one write in ten, as if the client had timed out.
    fn drop_some_write_outcomes(history: &mut [Operation], rng: &mut XorShift) {
        for op in history.iter_mut() {
            if !matches!(op.command, KvCommand::Get { .. }) && rng.below(10) == 0 {
                op.completed = None;
            }
        }
    }

    #[test]
    fn accepts_widened_random_histories_and_rejects_a_corrupted_read() {
        for seed in 1..=30 {
            let mut history = widened_history(seed, 120, 4, 20);
            drop_some_write_outcomes(&mut history, &mut XorShift(seed * 7919));
            assert_eq!(check(&history), Ok(()), "seed {seed}");

            let read = history
                .iter()
                .rposition(|op| matches!(op.command, KvCommand::Get { .. }))
                .expect("120 random commands include a read");
            let key = history[read].command.key().to_owned();
            history[read].completed = Some((history[read].invoked_at + 1, Some("corrupt".into())));
            assert_eq!(violation_key(&history), key, "seed {seed}");
        }
    }

    /// The definition, by brute force: some order of the completed operations (plus any subset
    /// of pending ones) respects real time and replays through the model.
    fn brute_force(ops: &[Operation], remaining: &mut [bool], state: &State) -> bool {
        let open: Vec<usize> = (0..ops.len()).filter(|&i| remaining[i]).collect();
        if open.iter().all(|&i| ops[i].completed.is_none()) {
            return true;
        }
        for &i in &open {
            let must_wait = open.iter().any(|&j| return_time(&ops[j]) < ops[i].invoked_at);
            let Some(after) = apply(&ops[i], state).filter(|_| !must_wait) else { continue };
            remaining[i] = false;
            let found = brute_force(ops, remaining, &after);
            remaining[i] = true;
            if found {
                return true;
            }
        }
        false
    }

    /// Five operations on one key, replayed through the model at points 4 ticks apart inside
    /// random intervals, then with about one output in four replaced by a random one, so
    /// about half the histories are linearizable.
    fn random_small_history(rng: &mut XorShift) -> Vec<Operation> {
        let outputs = [None, Some("x"), Some("y"), Some("xy"), Some("yx"), Some("xx")];
        let mut state: State = None;
        (0..5)
            .map(|client| {
                let command = [put("k", "x"), append("k", "x"), append("k", "y"), get("k")]
                    [rng.below(4) as usize]
                    .clone();
                state = command.step(&state);
                let mut output = state.clone();
                if rng.below(4) == 0 {
                    output = outputs[rng.below(outputs.len() as u64) as usize].map(Into::into);
                }
                let point = 10 + 4 * client;
                let invoked_at = point - rng.below(10);
                let completed = (rng.below(5) > 0).then(|| (point + rng.below(10), output));
                Operation { client, command, invoked_at, completed }
            })
            .collect()
    }

    #[test]
    fn agrees_with_brute_force_on_small_random_histories() {
        let (mut rng, mut verdicts) = (XorShift(0x9e37_79b9_7f4a_7c15), [0, 0]);
        for _ in 0..3_000 {
            let history = random_small_history(&mut rng);
            let expected = brute_force(&history, &mut vec![true; history.len()], &None);
            assert_eq!(check(&history).is_ok(), expected, "{history:#?}");
            verdicts[usize::from(expected)] += 1;
        }
        // Both verdicts must be well represented, or the comparison proves little.
        assert!(verdicts.iter().all(|&count| count > 200), "{verdicts:?}");
    }

    #[test]
    fn checks_five_clients_of_two_hundred_overlapping_ops_on_three_keys() {
        // Spacing 50 per client and slack up to 20 each side: every op overlaps its neighbours
        // from the other clients; this runs in milliseconds in a debug build.
        let history = widened_history(42, 5 * 200, 5, 20);
        assert!(history.windows(2).any(|w| w[1].invoked_at < return_time(&w[0])));
        assert_eq!(check(&history), Ok(()));
    }
}
