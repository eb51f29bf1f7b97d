//! How deep a document's shared types nest, tracked per live document so
//! that an update nesting them deeper than [`MAX_TYPE_DEPTH`] is refused
//! before it is stored.
//!
//! yrs deletes and garbage-collects a type's content recursively, one stack
//! frame per level: a deletion of the outer of 12,000 nested `Y.Array`s
//! overflowed the stack and aborted the process. The nesting is built up
//! over many updates, so no single update shows it; a [`Nesting`] remembers,
//! for every clock range of the document, how deep its items sit, and gives
//! each new struct the depth of what it refers to (its parent, or the
//! neighbour whose parent it shares). Structs whose references are not in
//! the document yet wait, as yrs keeps them pending, and get their depth
//! (and are checked) when the update that completes them arrives.
//!
//! No IO; the memory is one entry per run of same-depth clocks of a client
//! (a client typing into one text is one entry).

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::scan::{Id, Part, Place, ScanError, Struct, walk_update};

/// How deep shared types may nest. yjs itself cannot delete much deeper
/// (its recursive delete exceeds JavaScript's stack between 3,000 and 6,000
/// levels); editors nest a few dozen levels (y-prosemirror: one XML
/// element per block and list level).
pub const MAX_TYPE_DEPTH: u32 = 1000;

/// Structs of one document whose references have not arrived, at most (a
/// stock client sends what it builds on first).
pub const MAX_WAITING: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NestingError {
    #[error(transparent)]
    Scan(#[from] ScanError),
    #[error("shared types nested deeper than {MAX_TYPE_DEPTH} levels")]
    TooDeep,
    #[error("more than {MAX_WAITING} structs wait for what they refer to")]
    TooManyWaiting,
    /// The update builds on content the document does not hold.
    #[error("the update builds on content the document does not hold")]
    Missing,
}

/// The depths of a document's clock ranges, and the structs still waiting.
#[derive(Debug, Default)]
pub struct Nesting {
    /// Per client: range start → (range end, depth of its items).
    known: HashMap<u64, BTreeMap<u64, (u64, u32)>>,
    /// Per client and clock waited for: the structs waiting for it.
    waiting: HashMap<u64, BTreeMap<u64, Vec<Struct>>>,
    waiting_count: usize,
    /// The deepest nesting recorded.
    deepest: u32,
}

impl Nesting {
    /// Checks `update` against what is recorded and, if it nests no deeper
    /// than [`MAX_TYPE_DEPTH`], records it. Unless `may_wait`, it must not
    /// build on anything the document lacks ([`NestingError::Missing`]: it
    /// would wait, or its deletions would, for what may never come).
    pub fn admit(&mut self, update: &[u8], may_wait: bool) -> Result<(), NestingError> {
        self.apply(update, true, may_wait).map(|_| ())
    }

    /// Records an update already accepted (from the store or the log),
    /// whatever its depth: returns how deep the items it placed (its own, and
    /// those of waiting structs it completed) sit.
    pub fn record(&mut self, update: &[u8]) -> Result<u32, NestingError> {
        self.apply(update, false, true)
    }

    /// The deepest nesting recorded so far.
    pub fn deepest(&self) -> u32 {
        self.deepest
    }

    /// Checks (when `enforce`) and records `update`; how deep the items it
    /// placed sit.
    fn apply(&mut self, update: &[u8], enforce: bool, may_wait: bool) -> Result<u32, NestingError> {
        let mut structs = Vec::new();
        let mut deleted = Vec::new();
        walk_update(update, |part| match part {
            Part::Struct(s) => structs.push(s),
            Part::Deleted { id, len } => deleted.push((id, len)),
        })?;
        let mut trial = Trial::new(self);
        let mut queue = std::collections::VecDeque::from(structs);
        while let Some(s) = queue.pop_front() {
            let last = Id {
                clock: s.id.clock + s.len - 1,
                ..s.id
            };
            if s.place == Place::Skip
                || (trial.depth_at(s.id).is_some() && trial.depth_at(last).is_some())
            {
                continue; // says nothing about those clocks, or recorded already
            }
            match trial.resolve(&s) {
                Ok(depth) => {
                    if enforce && depth > MAX_TYPE_DEPTH {
                        return Err(NestingError::TooDeep);
                    }
                    trial.insert(s.id.client, s.id.clock, s.id.clock + s.len, depth);
                    queue.extend(trial.wake(s.id.client, s.id.clock, s.id.clock + s.len));
                }
                Err(missing) => trial.wait(missing, s),
            }
        }
        if !may_wait {
            let all_known = deleted.iter().all(|(id, len)| trial.knows(*id, *len));
            if trial.new_waiting_count > 0 || !all_known {
                return Err(NestingError::Missing);
            }
        }
        let at_most = self.waiting_count - trial.woken_count + trial.new_waiting_count;
        if enforce && at_most > MAX_WAITING && trial.new_waiting_count > 0 {
            return Err(NestingError::TooManyWaiting);
        }
        let trial_woken = trial.woken_count;
        let Trial {
            known,
            woken,
            new_waiting,
            deepest,
            ..
        } = trial;
        for (client, ranges) in known {
            for (start, (end, depth)) in ranges {
                insert_gaps(self.known.entry(client).or_default(), start, end, depth);
            }
        }
        for (client, clock) in woken {
            if let Some(by_clock) = self.waiting.get_mut(&client) {
                by_clock.remove(&clock);
            }
        }
        let mut waiting = self.waiting_count - trial_woken;
        for (id, s) in new_waiting.into_iter().flatten() {
            let list = self
                .waiting
                .entry(id.client)
                .or_default()
                .entry(id.clock)
                .or_default();
            // An update is recorded twice on the instance that admits it
            // (when admitted, and when the log delivers it).
            if !list.contains(&s) {
                list.push(s);
                waiting += 1;
            }
        }
        self.waiting.retain(|_, by_clock| !by_clock.is_empty());
        self.waiting_count = waiting;
        self.deepest = self.deepest.max(deepest);
        Ok(deepest)
    }
}

/// One update's effect, kept apart until it is known to be admissible.
struct Trial<'a> {
    base: &'a Nesting,
    known: HashMap<u64, BTreeMap<u64, (u64, u32)>>,
    /// Waiting entries of `base` woken (by client and clock waited for).
    woken: HashSet<(u64, u64)>,
    woken_count: usize,
    /// Structs of this update that wait, with the id they wait for (`None`
    /// once woken).
    new_waiting: Vec<Option<(Id, Struct)>>,
    new_waiting_count: usize,
    new_waiting_index: HashMap<u64, BTreeMap<u64, Vec<usize>>>,
    deepest: u32,
}

impl<'a> Trial<'a> {
    fn new(base: &'a Nesting) -> Self {
        Self {
            base,
            known: HashMap::new(),
            woken: HashSet::new(),
            woken_count: 0,
            new_waiting: Vec::new(),
            new_waiting_count: 0,
            new_waiting_index: HashMap::new(),
            deepest: 0,
        }
    }

    fn depth_at(&self, id: Id) -> Option<u32> {
        let find = |ranges: &BTreeMap<u64, (u64, u32)>| {
            ranges
                .range(..=id.clock)
                .next_back()
                .filter(|(_, (end, _))| *end > id.clock)
                .map(|(_, (_, depth))| *depth)
        };
        self.known
            .get(&id.client)
            .and_then(find)
            .or_else(|| self.base.known.get(&id.client).and_then(find))
    }

    /// Whether the first and the last clock of a range are recorded (the
    /// parts of one struct come together).
    fn knows(&self, id: Id, len: u64) -> bool {
        let last = Id {
            clock: id.clock + len - 1,
            ..id
        };
        self.depth_at(id).is_some() && self.depth_at(last).is_some()
    }

    /// The depth of the items of `s` (0 for a GC range: nothing in it can
    /// hold anything), or the id it still waits for.
    fn resolve(&self, s: &Struct) -> Result<u32, Id> {
        let at = |id: Id| self.depth_at(id).ok_or(id);
        match s.place {
            Place::Gc | Place::Skip => Ok(0),
            Place::Root => Ok(1),
            Place::In(parent) => Ok(at(parent)? + 1),
            Place::Beside { origin, right } => {
                // yjs integrates an item once both neighbours are there.
                let left = origin.map(at).transpose()?;
                let right = right.map(at).transpose()?;
                Ok(left.or(right).unwrap_or(0))
            }
        }
    }

    fn insert(&mut self, client: u64, start: u64, end: u64, depth: u32) {
        self.deepest = self.deepest.max(depth);
        insert_gaps(self.known.entry(client).or_default(), start, end, depth);
    }

    fn wait(&mut self, missing: Id, s: Struct) {
        self.new_waiting_index
            .entry(missing.client)
            .or_default()
            .entry(missing.clock)
            .or_default()
            .push(self.new_waiting.len());
        self.new_waiting.push(Some((missing, s)));
        self.new_waiting_count += 1;
    }

    /// The structs waiting for a clock of `client` in `start..end`.
    fn wake(&mut self, client: u64, start: u64, end: u64) -> Vec<Struct> {
        let mut ready = Vec::new();
        if let Some(by_clock) = self.base.waiting.get(&client) {
            for (clock, structs) in by_clock.range(start..end) {
                if self.woken.insert((client, *clock)) {
                    self.woken_count += structs.len();
                    ready.extend_from_slice(structs);
                }
            }
        }
        if let Some(by_clock) = self.new_waiting_index.get_mut(&client) {
            let clocks: Vec<u64> = by_clock.range(start..end).map(|(c, _)| *c).collect();
            for clock in clocks {
                for index in by_clock.remove(&clock).unwrap_or_default() {
                    if let Some((_, s)) = self.new_waiting[index].take() {
                        ready.push(s);
                        self.new_waiting_count -= 1;
                    }
                }
            }
        }
        ready
    }
}

/// Records `depth` for the parts of `start..end` not recorded yet (a
/// struct received twice, or overlapping one received before, keeps the
/// depth first recorded), merging with a touching range of the same depth.
fn insert_gaps(ranges: &mut BTreeMap<u64, (u64, u32)>, start: u64, end: u64, depth: u32) {
    let mut gaps = Vec::new();
    let mut at = start;
    if let Some((_, (prev_end, _))) = ranges.range(..start).next_back() {
        at = at.max(*prev_end);
    }
    for (s, (e, _)) in ranges.range(start..end) {
        if *s > at {
            gaps.push((at, *s));
        }
        at = at.max(*e);
    }
    if at < end {
        gaps.push((at, end));
    }
    for (s, e) in gaps {
        let merged_start = match ranges.range(..s).next_back() {
            Some((ps, (pe, pd))) if *pe == s && *pd == depth => Some(*ps),
            _ => None,
        };
        match merged_start {
            Some(ps) => {
                ranges.insert(ps, (e, depth));
            }
            None => {
                ranges.insert(s, (e, depth));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::updates::decoder::Decode;
    use yrs::{Array, ArrayPrelim, ArrayRef, Doc, ReadTxn, StateVector, Transact, Update};

    /// `depth` arrays nested in root array "a", one update per level (the
    /// way a client builds it up over time).
    fn nested_updates(depth: usize) -> Vec<Vec<u8>> {
        let doc = Doc::with_client_id(1);
        let mut array: ArrayRef = doc.get_or_insert_array("a");
        let mut updates = Vec::new();
        for _ in 0..depth {
            let before = doc.transact().state_vector();
            let mut txn = doc.transact_mut();
            // Something before it, so the new array is placed by its origin.
            array.push_back(&mut txn, 1);
            array = array.push_back(&mut txn, ArrayPrelim::default());
            drop(txn);
            updates.push(doc.transact().encode_diff_v1(&before));
        }
        updates
    }

    #[test]
    fn nesting_built_over_many_updates_stops_at_the_bound() {
        // Update n puts its items into the array of update n - 1: depth n.
        let updates = nested_updates(MAX_TYPE_DEPTH as usize + 1);
        let mut nesting = Nesting::default();
        for (n, update) in updates[..MAX_TYPE_DEPTH as usize].iter().enumerate() {
            assert_eq!(nesting.admit(update, true), Ok(()), "level {}", n + 1);
        }
        assert_eq!(nesting.deepest(), MAX_TYPE_DEPTH);
        let last = &updates[MAX_TYPE_DEPTH as usize];
        assert_eq!(nesting.admit(last, true), Err(NestingError::TooDeep));
        // Refused means not recorded: the same update is refused again.
        assert_eq!(nesting.admit(last, true), Err(NestingError::TooDeep));
        assert_eq!(nesting.deepest(), MAX_TYPE_DEPTH);
    }

    #[test]
    fn one_deep_update_is_refused_and_recording_never_refuses() {
        let updates = nested_updates(1500);
        let merged = Update::merge_updates(updates.iter().map(|u| Update::decode_v1(u).unwrap()));
        let whole = yrs::updates::encoder::Encode::encode_v1(&merged);
        assert_eq!(
            Nesting::default().admit(&whole, true),
            Err(NestingError::TooDeep)
        );
        let mut stored = Nesting::default();
        assert_eq!(stored.record(&whole), Ok(1500));
    }

    #[test]
    fn waiting_structs_are_checked_when_what_they_wait_for_arrives() {
        let updates = nested_updates(MAX_TYPE_DEPTH as usize + 2);
        let mut nesting = Nesting::default();
        // Newest first: each waits for the one before it.
        for update in updates[1..].iter().rev() {
            assert_eq!(nesting.admit(update, true), Ok(()));
        }
        assert_eq!(nesting.deepest(), 0, "nothing placed yet");
        // Recorded again (the log delivering what was admitted): no change.
        nesting.record(&updates[5]).unwrap();
        assert_eq!(
            nesting.waiting_count,
            2 * (updates.len() - 1),
            "two structs each"
        );
        assert_eq!(nesting.admit(&updates[0], true), Err(NestingError::TooDeep));
        // Whatever comes in the right order is placed.
        let mut ordered = Nesting::default();
        for update in &updates[..10] {
            ordered.admit(update, true).unwrap();
        }
        assert_eq!(ordered.deepest(), 10);
    }

    #[test]
    fn updates_building_on_missing_content_can_be_refused() {
        let updates = nested_updates(3);
        let mut nesting = Nesting::default();
        assert_eq!(
            nesting.admit(&updates[1], false),
            Err(NestingError::Missing)
        );
        assert_eq!(nesting.admit(&updates[0], false), Ok(()));
        assert_eq!(nesting.admit(&updates[1], false), Ok(()));
        // A deletion of something the document does not hold.
        let delete_unknown = [0, 1, 9, 1, 0, 1];
        assert_eq!(
            nesting.admit(&delete_unknown, false),
            Err(NestingError::Missing)
        );
        assert_eq!(nesting.admit(&delete_unknown, true), Ok(()));
        // Deleting what it holds is fine.
        assert_eq!(nesting.admit(&[0, 1, 1, 1, 0, 1], false), Ok(()));
    }

    #[test]
    fn a_document_of_many_clients_and_edits_is_admitted() {
        let a = Doc::with_client_id(1);
        let b = Doc::with_client_id(2);
        let mut nesting = Nesting::default();
        for round in 0..50 {
            let (writer, reader) = if round % 2 == 0 { (&a, &b) } else { (&b, &a) };
            let before = writer.transact().state_vector();
            {
                let array = writer.get_or_insert_array("list");
                let mut txn = writer.transact_mut();
                array.insert(&mut txn, 0, round);
                if round % 7 == 0 {
                    array.insert(&mut txn, 0, ArrayPrelim::default());
                }
            }
            let update = writer.transact().encode_diff_v1(&before);
            nesting.admit(&update, true).unwrap();
            let mut txn = reader.transact_mut();
            txn.apply_update(Update::decode_v1(&update).unwrap())
                .unwrap();
        }
        assert_eq!(nesting.deepest(), 1);
        assert_eq!(nesting.waiting_count, 0);
        let whole = a
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        let mut again = Nesting::default();
        assert_eq!(again.record(&whole), Ok(1));
    }
}
