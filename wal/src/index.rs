//! The in-memory index of one core's log: per `(group, instance)`, where its newest record is
//! and which record holds its chosen value.
//!
//! Owns: where each group's records are, and the rule that says which record holds the chosen
//! value of an instance ([`LogIndex::resolve_chosen`]). Pure: must never do I/O. The WAL notes
//! every record it appends and builds the index from its recovery; the simulator's disk notes
//! every record it makes durable and builds the index from the same recovery, so both resolve
//! chosen values with this code. Must stay cheap per append (it is updated for every record on
//! the hot path): one slot per `(group, instance)`, one map lookup per record; instances of a
//! group mostly arrive in increasing order, so each group keeps a dense array of slots from its
//! lowest indexed instance, with a sorted map for the few instances that fall far outside it.
use crate::recovery::{RecordLocation, Recovery};
use crate::types::{Ballot, GroupId, Instance, Lsn, RecordKind, RecordRef};
use std::collections::{BTreeMap, HashMap, VecDeque};

/// An instance further than this beyond a group's dense range goes to the sparse map (bounds
/// the empty slots one record can create).
const DENSE_GAP_MAX: u64 = 4096;

const NOWHERE: RecordLocation = RecordLocation {
    lsn: Lsn::ZERO,
    segment: 0,
    offset: 0,
    len: 0,
};

fn is_nowhere(location: &RecordLocation) -> bool {
    location.lsn == Lsn::ZERO
}

/// What the index keeps of one `(group, instance)`. Each field is set by the newest record of
/// its kind, so the slot is the same whether every record was noted or only the newest of each
/// kind (which is what recovery locates). A location with `lsn == Lsn::ZERO` is "none".
#[derive(Clone, Copy, Debug)]
struct Slot {
    /// The newest record (any kind).
    newest: RecordLocation,
    /// The newest record that carries a value: an `Accept`, or a `Chosen` mark with a payload.
    value: RecordLocation,
    /// `value`'s accepted ballot when it is an `Accept` (`None` for a mark with a payload).
    value_accepted: Option<Ballot>,
    /// The newest `Chosen` mark. A later Promise or Meta record naming the same instance (a
    /// Promise names the first instance it covers) does not replace it: only `newest` moves.
    mark: RecordLocation,
    /// The ballot of the `Accept` an empty `mark` names (`None` for a mark with a payload).
    mark_names: Option<Ballot>,
}

impl Slot {
    const EMPTY: Slot = Slot {
        newest: NOWHERE,
        value: NOWHERE,
        value_accepted: None,
        mark: NOWHERE,
        mark_names: None,
    };

    fn is_empty(&self) -> bool {
        is_nowhere(&self.newest) && is_nowhere(&self.value) && is_nowhere(&self.mark)
    }

    fn note(&mut self, location: RecordLocation, record: &RecordRef<'_>) {
        self.newest = location;
        match record.kind {
            RecordKind::Accept => {
                self.value = location;
                self.value_accepted = Some(record.accepted);
            }
            RecordKind::Chosen if record.payload.is_empty() => {
                self.mark = location;
                self.mark_names = Some(record.accepted);
            }
            RecordKind::Chosen => {
                self.mark = location;
                self.mark_names = None;
                self.value = location;
                self.value_accepted = None;
            }
            RecordKind::Promise | RecordKind::Meta => {}
        }
    }

    /// The chosen-value rule: the newest `Chosen` mark holds the value when it carries a
    /// payload; an empty mark names the ballot of the `Accept` that holds it, which must be the
    /// newest record carrying a value (a newer value at another ballot, or none: nothing here,
    /// the caller serves the instance from elsewhere).
    fn chosen(&self) -> Option<RecordLocation> {
        if is_nowhere(&self.mark) {
            return None;
        }
        match self.mark_names {
            None => Some(self.mark),
            Some(ballot) => (!is_nowhere(&self.value) && self.value_accepted == Some(ballot))
                .then_some(self.value),
        }
    }

    /// Forgets every location in `segment`.
    fn forget_segment(&mut self, segment: u64) {
        if self.newest.segment == segment {
            self.newest = NOWHERE;
        }
        if self.value.segment == segment {
            self.value = NOWHERE;
            self.value_accepted = None;
        }
        if self.mark.segment == segment {
            self.mark = NOWHERE;
            self.mark_names = None;
        }
    }
}

#[derive(Default, Debug)]
struct GroupIndex {
    /// Instance of `dense[0]`.
    base: u64,
    /// Slot per instance from `base` (empty slots where nothing is indexed).
    dense: VecDeque<Slot>,
    /// Instances outside the dense range (never an empty slot; never one the dense range also
    /// holds a non-empty slot for).
    sparse: BTreeMap<Instance, Slot>,
    /// Per segment (ascending) the highest instance of any record of this group in it, newest
    /// or not (purge must keep a segment while any of its records may be needed).
    segment_max: Vec<(u64, Instance)>,
    /// The batch (its first LSN) that last added a record of this group.
    last_batch: u64,
}

impl GroupIndex {
    /// The slot of `instance`, made (empty) if it has none.
    fn slot_mut(&mut self, instance: Instance) -> &mut Slot {
        let at = instance.0;
        if self.dense.is_empty() {
            self.base = at;
        }
        let end = self.base + self.dense.len() as u64;
        let dense = if at >= self.base && at < end {
            true
        } else if at >= end && at - end <= DENSE_GAP_MAX {
            self.dense
                .resize((at - self.base + 1) as usize, Slot::EMPTY);
            true
        } else {
            false
        };
        if !dense {
            return self.sparse.entry(instance).or_insert(Slot::EMPTY);
        }
        let slot = &mut self.dense[(at - self.base) as usize];
        if !self.sparse.is_empty() {
            // The dense range grew over an instance the sparse map holds: move it in.
            if let Some(moved) = self.sparse.remove(&instance) {
                debug_assert!(slot.is_empty(), "one slot per instance");
                *slot = moved;
            }
        }
        slot
    }

    fn note_segment(&mut self, segment: u64, instance: Instance) {
        match self.segment_max.last_mut() {
            Some((last, high)) if *last == segment => *high = (*high).max(instance),
            Some((last, _)) if *last > segment => {
                // Out of order (only while loading a recovered index): keep the list sorted.
                match self.segment_max.binary_search_by_key(&segment, |(s, _)| *s) {
                    Ok(at) => {
                        let high = &mut self.segment_max[at].1;
                        *high = (*high).max(instance);
                    }
                    Err(at) => self.segment_max.insert(at, (segment, instance)),
                }
            }
            _ => self.segment_max.push((segment, instance)),
        }
    }

    fn max_in_segment(&self, segment: u64) -> Option<Instance> {
        self.segment_max
            .binary_search_by_key(&segment, |(s, _)| *s)
            .ok()
            .map(|at| self.segment_max[at].1)
    }

    fn get(&self, instance: Instance) -> Option<&Slot> {
        let at = instance.0;
        if at >= self.base {
            if let Some(slot) = self.dense.get((at - self.base) as usize) {
                if !slot.is_empty() {
                    return Some(slot);
                }
            }
        }
        self.sparse.get(&instance)
    }

    /// Forgets every record stored in `segment`.
    fn remove_segment(&mut self, segment: u64) {
        for slot in self.dense.iter_mut() {
            slot.forget_segment(segment);
        }
        while self.dense.front().is_some_and(Slot::is_empty) {
            self.dense.pop_front();
            self.base += 1;
        }
        self.sparse.retain(|_, slot| {
            slot.forget_segment(segment);
            !slot.is_empty()
        });
        self.segment_max.retain(|(s, _)| *s != segment);
    }

    fn is_empty(&self) -> bool {
        self.dense.is_empty() && self.sparse.is_empty() && self.segment_max.is_empty()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        let has_newest = |slot: &&Slot| !is_nowhere(&slot.newest);
        self.dense.iter().filter(has_newest).count()
            + self.sparse.values().filter(has_newest).count()
    }
}

/// The index of one core's log. Per group and instance: the location of its newest record, and
/// of the record holding its chosen value ([`LogIndex::resolve_chosen`]); per group and
/// segment, the highest instance it holds there (for purge). No answer depends on the order of
/// its hash map (the simulator, deterministic, runs it too).
#[derive(Default, Debug)]
pub struct LogIndex {
    groups: HashMap<GroupId, GroupIndex>,
}

impl LogIndex {
    /// The index of what `recovery` found: the same answers as noting every recovered record
    /// in LSN order (recovery locates each instance's newest record, newest value and newest
    /// mark, which is all a slot keeps), except that each group's per-segment highest
    /// instances come from the newest records only.
    pub fn from_recovery(recovery: &Recovery) -> LogIndex {
        let located: HashMap<Lsn, RecordLocation> =
            [&recovery.index, &recovery.values, &recovery.marks]
                .into_iter()
                .flat_map(BTreeMap::values)
                .flat_map(BTreeMap::values)
                .map(|location| (location.lsn, *location))
                .collect();
        let mut index = LogIndex::default();
        for (lsn, record) in &recovery.records {
            if let Some(location) = located.get(lsn) {
                index
                    .groups
                    .entry(record.group)
                    .or_default()
                    .slot_mut(record.instance)
                    .note(*location, &record.as_ref());
            }
        }
        for (group, instances) in &recovery.index {
            let entry = index.groups.entry(*group).or_default();
            for (instance, location) in instances {
                entry.note_segment(location.segment, *instance);
            }
        }
        index
    }

    /// Notes that `record` is at `location`, the newest record so far (callers note in LSN
    /// order). `batch` names the batch holding it (its first LSN); returns true when this is
    /// the group's first record in that batch.
    pub fn note(&mut self, location: RecordLocation, record: &RecordRef<'_>, batch: Lsn) -> bool {
        assert!(!is_nowhere(&location), "a located record has an LSN");
        let entry = self.groups.entry(record.group).or_default();
        entry.slot_mut(record.instance).note(location, record);
        entry.note_segment(location.segment, record.instance);
        let first_in_batch = entry.last_batch != batch.0;
        entry.last_batch = batch.0;
        first_in_batch
    }

    /// The location of the newest record of `(group, instance)`.
    pub fn get(&self, group: GroupId, instance: Instance) -> Option<&RecordLocation> {
        let slot = self.groups.get(&group)?.get(instance)?;
        (!is_nowhere(&slot.newest)).then_some(&slot.newest)
    }

    /// The location of the record whose payload is the chosen value of `(group, instance)` as
    /// this log holds it: its newest `Chosen` mark when that carries a payload; for an empty
    /// mark, the `Accept` with the ballot the mark names, when that is the instance's newest
    /// record carrying a value. `None` when the log holds no mark for the instance (not chosen
    /// here, not yet marked, or purged) or the mark's `Accept` is not the one it names
    /// (replaced at another ballot, damaged and re-learnt, or purged): the caller serves the
    /// instance from elsewhere. A later Promise or Meta record naming the instance hides
    /// nothing.
    pub fn resolve_chosen(&self, group: GroupId, instance: Instance) -> Option<RecordLocation> {
        self.groups.get(&group)?.get(instance)?.chosen()
    }

    /// The groups with records in `segment`, each with its highest instance there.
    pub fn groups_in_segment(&self, segment: u64) -> Vec<(GroupId, Instance)> {
        let mut groups: Vec<(GroupId, Instance)> = self
            .groups
            .iter()
            .filter_map(|(group, index)| index.max_in_segment(segment).map(|high| (*group, high)))
            .collect();
        groups.sort_unstable();
        groups
    }

    /// Forgets every record stored in `segment` (it was purged).
    pub fn remove_segment(&mut self, segment: u64) {
        for group in self.groups.values_mut() {
            group.remove_segment(segment);
        }
        self.groups.retain(|_, group| !group.is_empty());
    }

    /// Number of indexed `(group, instance)` pairs.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.groups.values().map(GroupIndex::len).sum()
    }

    /// True when nothing is indexed.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{encode_batch, record_bytes, BATCH_HEADER_BYTES};
    use crate::recovery::recover_images;

    fn loc(lsn: u64, segment: u64) -> RecordLocation {
        RecordLocation {
            lsn: Lsn(lsn),
            segment,
            offset: lsn * 64,
            len: 64,
        }
    }

    const B1: Ballot = Ballot { number: 1, node: 1 };
    const B2: Ballot = Ballot { number: 2, node: 2 };

    fn rec(
        kind: RecordKind,
        group: u32,
        instance: u64,
        accepted: Ballot,
        payload: &'static [u8],
    ) -> RecordRef<'static> {
        RecordRef {
            kind,
            group: GroupId(group),
            instance: Instance(instance),
            promised: accepted,
            accepted,
            payload,
        }
    }

    fn meta(instance: u64) -> RecordRef<'static> {
        rec(RecordKind::Meta, 1, instance, B1, b"m")
    }

    #[test]
    fn newest_wins_dense_and_sparse_and_purge_forgets() {
        let mut index = LogIndex::default();
        let g = GroupId(1);
        assert!(index.note(loc(1, 1), &meta(10), Lsn(1)));
        assert!(!index.note(loc(2, 1), &meta(12), Lsn(1)));
        assert!(index.note(loc(3, 2), &meta(10), Lsn(3)));
        index.note(loc(4, 2), &meta(5), Lsn(3)); // below the dense base: sparse
        index.note(loc(5, 2), &meta(1_000_000), Lsn(3)); // far beyond: sparse
        assert_eq!(index.groups_in_segment(1), vec![(g, Instance(12))]);
        assert_eq!(index.groups_in_segment(2), vec![(g, Instance(1_000_000))]);
        assert_eq!(index.get(g, Instance(10)).map(|l| l.lsn), Some(Lsn(3)));
        assert_eq!(index.get(g, Instance(11)), None);
        assert_eq!(index.get(g, Instance(12)).map(|l| l.lsn), Some(Lsn(2)));
        assert_eq!(index.get(g, Instance(5)).map(|l| l.lsn), Some(Lsn(4)));
        assert_eq!(
            index.get(g, Instance(1_000_000)).map(|l| l.lsn),
            Some(Lsn(5))
        );
        assert_eq!(index.get(GroupId(2), Instance(10)), None);
        assert_eq!(index.len(), 4);
        index.remove_segment(1);
        assert!(index.groups_in_segment(1).is_empty());
        assert_eq!(index.get(g, Instance(12)), None);
        assert_eq!(index.get(g, Instance(10)).map(|l| l.lsn), Some(Lsn(3)));
        assert_eq!(index.len(), 3);
        index.remove_segment(2);
        assert!(index.is_empty());
    }

    /// A slot in the sparse map keeps its chosen value when the dense range grows over it.
    #[test]
    fn sparse_slot_moves_into_the_dense_range_whole() {
        let mut index = LogIndex::default();
        let g = GroupId(1);
        let far = 2 * DENSE_GAP_MAX;
        index.note(loc(1, 1), &meta(0), Lsn(1));
        index.note(
            loc(2, 1),
            &rec(RecordKind::Accept, 1, far, B1, b"v"),
            Lsn(2),
        );
        index.note(loc(3, 1), &rec(RecordKind::Chosen, 1, far, B1, b""), Lsn(2));
        // The dense range reaches `far`, whose slot is still in the sparse map.
        index.note(loc(4, 1), &meta(DENSE_GAP_MAX), Lsn(4));
        index.note(loc(5, 1), &meta(far - 1), Lsn(4));
        assert_eq!(index.resolve_chosen(g, Instance(far)), Some(loc(2, 1)));
        index.note(
            loc(6, 1),
            &rec(RecordKind::Promise, 1, far, B2, b""),
            Lsn(6),
        );
        assert_eq!(index.get(g, Instance(far)), Some(&loc(6, 1)));
        assert_eq!(index.resolve_chosen(g, Instance(far)), Some(loc(2, 1)));
        assert_eq!(index.len(), 4);
    }

    /// Which record holds the chosen value of an instance: the rule the WAL's `read_chosen`
    /// and the simulator's disk both run.
    #[test]
    fn chosen_value_rule() {
        use RecordKind::{Accept, Chosen, Meta, Promise};
        let mut index = LogIndex::default();
        let mut next = 0;
        // Notes the next record (in segment 1) and returns its location.
        let mut note = |index: &mut LogIndex, r: RecordRef<'static>| {
            next += 1;
            let at = loc(next, 1);
            index.note(at, &r, Lsn(next));
            at
        };
        let resolve =
            |index: &LogIndex, instance| index.resolve_chosen(GroupId(1), Instance(instance));

        // 0: an Accept, then an empty mark naming its ballot: the Accept holds the value.
        let accept0 = note(&mut index, rec(Accept, 1, 0, B1, b"zero"));
        assert_eq!(
            resolve(&index, 0),
            None,
            "accepted, not marked: not chosen here"
        );
        note(&mut index, rec(Chosen, 1, 0, B1, b""));
        assert_eq!(resolve(&index, 0), Some(accept0));
        // A later Promise naming the instance (a lagging candidate's first covered instance)
        // and a Meta record naming it are the newest records, and hide no mark (18f55ba).
        let promise = note(&mut index, rec(Promise, 1, 0, B2, b""));
        assert_eq!(index.get(GroupId(1), Instance(0)), Some(&promise));
        assert_eq!(resolve(&index, 0), Some(accept0), "a Promise hid the mark");
        let meta0 = note(&mut index, rec(Meta, 1, 0, B2, b"meta"));
        assert_eq!(index.get(GroupId(1), Instance(0)), Some(&meta0));
        assert_eq!(
            resolve(&index, 0),
            Some(accept0),
            "a Meta record hid the mark"
        );

        // 1: a mark with a payload holds the value itself, whatever follows it.
        note(&mut index, rec(Accept, 1, 1, B1, b"one-accepted"));
        let mark1 = note(&mut index, rec(Chosen, 1, 1, Ballot::ZERO, b"one-chosen"));
        assert_eq!(resolve(&index, 1), Some(mark1));
        note(&mut index, rec(Accept, 1, 1, B2, b"one-b2"));
        note(&mut index, rec(Promise, 1, 1, B2, b""));
        assert_eq!(resolve(&index, 1), Some(mark1));

        // 2: a newer Accept at a higher ballot after the mark: the mark names the old ballot,
        // whose Accept is no longer the newest value: nothing here (served from elsewhere);
        // a mark naming the new ballot resolves to the new Accept.
        let accept2_b1 = note(&mut index, rec(Accept, 1, 2, B1, b"two-b1"));
        note(&mut index, rec(Chosen, 1, 2, B1, b""));
        assert_eq!(resolve(&index, 2), Some(accept2_b1));
        let accept2_b2 = note(&mut index, rec(Accept, 1, 2, B2, b"two-b2"));
        assert_eq!(resolve(&index, 2), None);
        note(&mut index, rec(Chosen, 1, 2, B2, b""));
        assert_eq!(resolve(&index, 2), Some(accept2_b2));

        // 3: the empty mark names another ballot than the Accept's: not this value.
        note(&mut index, rec(Accept, 1, 3, B1, b"three"));
        note(&mut index, rec(Chosen, 1, 3, B2, b""));
        assert_eq!(resolve(&index, 3), None);

        // 4: an empty mark with no Accept at all.
        note(&mut index, rec(Chosen, 1, 4, B1, b""));
        assert_eq!(resolve(&index, 4), None);

        // 5: an empty mark after a mark with a payload names an Accept that is not the newest
        // record carrying a value: nothing.
        note(&mut index, rec(Accept, 1, 5, B1, b"five"));
        note(&mut index, rec(Chosen, 1, 5, Ballot::ZERO, b"five-chosen"));
        note(&mut index, rec(Chosen, 1, 5, B1, b""));
        assert_eq!(resolve(&index, 5), None);

        // Unknown instance and group.
        assert_eq!(resolve(&index, 9), None);
        assert_eq!(index.resolve_chosen(GroupId(2), Instance(0)), None);
    }

    /// Purging the segment of a mark, or of the Accept it names, loses the chosen value.
    #[test]
    fn chosen_value_goes_with_its_segment() {
        let g = GroupId(1);
        let mut index = LogIndex::default();
        index.note(loc(1, 1), &rec(RecordKind::Accept, 1, 0, B1, b"a"), Lsn(1));
        index.note(loc(2, 1), &rec(RecordKind::Accept, 1, 1, B1, b"b"), Lsn(1));
        index.note(loc(3, 2), &rec(RecordKind::Chosen, 1, 0, B1, b""), Lsn(3));
        index.note(loc(4, 2), &rec(RecordKind::Chosen, 1, 1, B1, b""), Lsn(3));
        index.note(loc(5, 3), &rec(RecordKind::Promise, 1, 1, B2, b""), Lsn(5));
        assert_eq!(index.resolve_chosen(g, Instance(0)), Some(loc(1, 1)));
        assert_eq!(index.resolve_chosen(g, Instance(1)), Some(loc(2, 1)));
        index.remove_segment(1);
        assert_eq!(index.resolve_chosen(g, Instance(0)), None);
        assert_eq!(index.get(g, Instance(0)), Some(&loc(3, 2)));
        index.remove_segment(2);
        assert_eq!(index.get(g, Instance(0)), None);
        assert_eq!(index.get(g, Instance(1)), Some(&loc(5, 3)));
        assert_eq!(index.len(), 1);
    }

    /// The index built from a recovery answers as the one that noted every record.
    #[test]
    fn recovered_index_answers_as_the_noted_one() {
        use RecordKind::{Accept, Chosen, Meta, Promise};
        let batches: Vec<Vec<RecordRef<'static>>> = vec![
            vec![
                rec(Accept, 1, 0, B1, b"zero"),
                rec(Accept, 1, 1, B1, b"one"),
                rec(Accept, 1, 2, B1, b"two-b1"),
                rec(Accept, 2, 0, B1, b"g2-zero"),
            ],
            vec![
                rec(Chosen, 1, 0, B1, b""),
                rec(Chosen, 1, 1, Ballot::ZERO, b"one-chosen"),
                rec(Chosen, 1, 2, B1, b""),
                rec(Accept, 1, 3, B1, b"three"),
            ],
            vec![
                rec(Promise, 1, 0, B2, b""),
                rec(Meta, 1, 1, B2, b"meta"),
                rec(Accept, 1, 2, B2, b"two-b2"),
                rec(Chosen, 2, 0, B1, b""),
                rec(Chosen, 1, 3, B2, b""),
            ],
        ];
        let mut image = Vec::new();
        let mut noted = LogIndex::default();
        let mut next = 1;
        for batch in &batches {
            let first = Lsn(next);
            let mut offset = image.len() + BATCH_HEADER_BYTES;
            encode_batch(0, 0, first, batch, &mut image);
            for record in batch {
                let len = record_bytes(record.payload.len());
                let at = RecordLocation {
                    lsn: Lsn(next),
                    segment: 0,
                    offset: offset as u64,
                    len: len as u32,
                };
                noted.note(at, record, first);
                offset += len;
                next += 1;
            }
        }
        let recovery = recover_images(0, &[(0, &image)]);
        assert_eq!(recovery.records.len(), 13);
        let recovered = LogIndex::from_recovery(&recovery);
        let mut resolved = 0;
        for group in [GroupId(1), GroupId(2), GroupId(3)] {
            for instance in (0..5).map(Instance) {
                let chosen = noted.resolve_chosen(group, instance);
                assert_eq!(chosen, recovered.resolve_chosen(group, instance));
                assert_eq!(noted.get(group, instance), recovered.get(group, instance));
                resolved += usize::from(chosen.is_some());
            }
        }
        // 1/0 (its Accept), 1/1 (the mark's payload), 2/0; not 1/2 (re-accepted at b2 after
        // its mark at b1) nor 1/3 (the mark names b2, the Accept is at b1).
        assert_eq!(resolved, 3);
        assert_eq!(noted.groups_in_segment(0), recovered.groups_in_segment(0));
    }
}
