//! The in-memory index of one core's log: `(group, instance) -> location of the newest record`.
//!
//! Owns: where each group's records are. Must never do I/O, and must stay cheap per append
//! (it is updated for every record on the hot path): instances of a group mostly arrive in
//! increasing order, so each group keeps a dense array from its lowest indexed instance, with a
//! sorted map for the few instances that fall far outside it.
use crate::recovery::RecordLocation;
use crate::types::{GroupId, Instance, Lsn};
use std::collections::{BTreeMap, HashMap, VecDeque};

/// An instance further than this beyond a group's dense range goes to the sparse map (bounds
/// the empty slots one record can create).
const DENSE_GAP_MAX: u64 = 4096;

const EMPTY: RecordLocation = RecordLocation {
    lsn: Lsn::ZERO,
    segment: 0,
    offset: 0,
    len: 0,
};

#[derive(Default, Debug)]
struct GroupIndex {
    /// Instance of `dense[0]`.
    base: u64,
    /// Slot per instance from `base`; `lsn == Lsn::ZERO` means empty.
    dense: VecDeque<RecordLocation>,
    /// Instances outside the dense range.
    sparse: BTreeMap<Instance, RecordLocation>,
    /// Per segment (ascending) the highest instance of any record of this group in it, newest
    /// or not (purge must keep a segment while any of its records may be needed).
    segment_max: Vec<(u64, Instance)>,
    /// The batch (its first LSN) that last added a record of this group.
    last_batch: u64,
}

impl GroupIndex {
    fn insert(&mut self, instance: Instance, location: RecordLocation) {
        assert!(location.lsn != Lsn::ZERO, "a located record has an LSN");
        let at = instance.0;
        if self.dense.is_empty() {
            self.base = at;
        }
        let end = self.base + self.dense.len() as u64;
        let dense = if at >= self.base && at < end {
            self.dense[(at - self.base) as usize] = location;
            true
        } else if at >= end && at - end <= DENSE_GAP_MAX {
            self.dense.resize((at - self.base) as usize, EMPTY);
            self.dense.push_back(location);
            true
        } else {
            false
        };
        if dense {
            if !self.sparse.is_empty() {
                self.sparse.remove(&instance);
            }
        } else {
            self.sparse.insert(instance, location);
        }
        self.note_segment(location.segment, instance);
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

    fn get(&self, instance: Instance) -> Option<&RecordLocation> {
        let at = instance.0;
        if at >= self.base {
            if let Some(slot) = self.dense.get((at - self.base) as usize) {
                if slot.lsn != Lsn::ZERO {
                    return Some(slot);
                }
            }
        }
        self.sparse.get(&instance)
    }

    /// Forgets every record stored in `segment`.
    fn remove_segment(&mut self, segment: u64) {
        for slot in self.dense.iter_mut() {
            if slot.segment == segment {
                *slot = EMPTY;
            }
        }
        while self.dense.front().is_some_and(|slot| slot.lsn == Lsn::ZERO) {
            self.dense.pop_front();
            self.base += 1;
        }
        self.sparse
            .retain(|_, location| location.segment != segment);
        self.segment_max.retain(|(s, _)| *s != segment);
    }

    fn is_empty(&self) -> bool {
        self.dense.is_empty() && self.sparse.is_empty() && self.segment_max.is_empty()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.dense.iter().filter(|s| s.lsn != Lsn::ZERO).count() + self.sparse.len()
    }
}

/// Per group: instance -> location of its newest record, and of its newest record that
/// carries a value (where an empty `Chosen` mark's value is).
#[derive(Default, Debug)]
pub struct Index {
    groups: HashMap<GroupId, GroupIndex>,
    values: HashMap<GroupId, GroupIndex>,
    /// Per group: instance -> location of its newest `Chosen` mark (a Promise or Meta record
    /// may name the same instance later; it does not hide the mark).
    marks: HashMap<GroupId, GroupIndex>,
}

impl Index {
    /// Builds the index from recovery's.
    pub fn from_recovered(
        recovered: &BTreeMap<GroupId, BTreeMap<Instance, RecordLocation>>,
        values: &BTreeMap<GroupId, BTreeMap<Instance, RecordLocation>>,
        marks: &BTreeMap<GroupId, BTreeMap<Instance, RecordLocation>>,
    ) -> Index {
        let mut index = Index::default();
        for (group, instances) in recovered {
            for (instance, location) in instances {
                index.insert(*group, *instance, *location, Lsn::ZERO, false, false);
            }
        }
        for (group, instances) in marks {
            for (instance, location) in instances {
                index
                    .marks
                    .entry(*group)
                    .or_default()
                    .insert(*instance, *location);
            }
        }
        for (group, instances) in values {
            for (instance, location) in instances {
                index
                    .values
                    .entry(*group)
                    .or_default()
                    .insert(*instance, *location);
            }
        }
        index
    }

    /// The location of the newest `Chosen` mark of `(group, instance)`.
    pub fn get_mark(&self, group: GroupId, instance: Instance) -> Option<&RecordLocation> {
        self.marks.get(&group).and_then(|g| g.get(instance))
    }

    /// The location of the newest record of `(group, instance)` that carries a value.
    pub fn get_value(&self, group: GroupId, instance: Instance) -> Option<&RecordLocation> {
        self.values.get(&group).and_then(|g| g.get(instance))
    }

    /// Records that the newest record of `(group, instance)` is at `location` (callers insert
    /// in LSN order, so the last insert wins). `batch` names the batch (its first LSN); returns
    /// true when this is the group's first record in that batch.
    pub fn insert(
        &mut self,
        group: GroupId,
        instance: Instance,
        location: RecordLocation,
        batch: Lsn,
        carries_value: bool,
        is_mark: bool,
    ) -> bool {
        if is_mark {
            self.marks
                .entry(group)
                .or_default()
                .insert(instance, location);
        }
        if carries_value {
            self.values
                .entry(group)
                .or_default()
                .insert(instance, location);
        }
        let entry = self.groups.entry(group).or_default();
        entry.insert(instance, location);
        let first_in_batch = entry.last_batch != batch.0;
        entry.last_batch = batch.0;
        first_in_batch
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

    /// The location of the newest record of `(group, instance)`.
    pub fn get(&self, group: GroupId, instance: Instance) -> Option<&RecordLocation> {
        self.groups.get(&group).and_then(|g| g.get(instance))
    }

    /// Forgets every record stored in `segment` (it was purged).
    pub fn remove_segment(&mut self, segment: u64) {
        for group in self.groups.values_mut() {
            group.remove_segment(segment);
        }
        self.groups.retain(|_, group| !group.is_empty());
        for group in self.values.values_mut() {
            group.remove_segment(segment);
        }
        self.values.retain(|_, group| !group.is_empty());
        for group in self.marks.values_mut() {
            group.remove_segment(segment);
        }
        self.marks.retain(|_, group| !group.is_empty());
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

    fn loc(lsn: u64, segment: u64) -> RecordLocation {
        RecordLocation {
            lsn: Lsn(lsn),
            segment,
            offset: lsn * 64,
            len: 64,
        }
    }

    #[test]
    fn newest_wins_dense_and_sparse_and_purge_forgets() {
        let mut index = Index::default();
        let g = GroupId(1);
        assert!(index.insert(g, Instance(10), loc(1, 1), Lsn(1), false, false));
        assert!(!index.insert(g, Instance(12), loc(2, 1), Lsn(1), false, false));
        assert!(index.insert(g, Instance(10), loc(3, 2), Lsn(3), false, false));
        index.insert(g, Instance(5), loc(4, 2), Lsn(3), false, false); // below the dense base: sparse
        index.insert(g, Instance(1_000_000), loc(5, 2), Lsn(3), false, false); // far beyond: sparse
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
}
