//! Duplicate filter for the receiver: the last sequence number delivered per sender lane.
//!
//! A sender numbers the frames of each of its connections ("lanes") 1, 2, 3, … and keeps the
//! numbering when it reconnects a lane to retry. So a frame whose number is not above the last
//! one delivered on its lane is a retry of something already delivered, and is dropped: a retry
//! is never delivered twice (Tribes delivers it twice).

use crate::member::MemberId;
use std::collections::HashMap;

/// Identifies one numbered stream of frames: a sender, its channel start, and its lane.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LaneKey {
    pub member: MemberId,
    pub incarnation: u64,
    pub lane: u32,
}

struct Entry {
    last: u64,
    touched: u64,
}

/// Bounded map from lane to last delivered sequence number.
pub struct DedupTable {
    entries: HashMap<LaneKey, Entry>,
    capacity: usize,
    tick: u64,
}

impl DedupTable {
    /// `capacity` bounds memory: past it the least recently used lane is forgotten (a retry on
    /// a lane idle through `capacity` newer lanes could then be delivered twice).
    pub fn new(capacity: usize) -> DedupTable {
        DedupTable {
            entries: HashMap::new(),
            capacity: capacity.max(1),
            tick: 0,
        }
    }

    /// The last sequence number delivered on `key` (0 if none).
    pub fn last(&self, key: &LaneKey) -> u64 {
        self.entries.get(key).map_or(0, |e| e.last)
    }

    /// Records `seq` on `key` if it is new; returns whether it is.
    pub fn accept(&mut self, key: &LaneKey, seq: u64) -> bool {
        self.tick += 1;
        let tick = self.tick;
        if let Some(e) = self.entries.get_mut(key) {
            e.touched = tick;
            if seq <= e.last {
                return false;
            }
            e.last = seq;
            return true;
        }
        if self.entries.len() >= self.capacity {
            // Rare (only past `capacity` lanes): a linear scan keeps the structure simple.
            if let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.touched)
                .map(|(k, _)| *k)
            {
                self.entries.remove(&oldest);
            }
        }
        self.entries.insert(
            *key,
            Entry {
                last: seq,
                touched: tick,
            },
        );
        true
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(lane: u32) -> LaneKey {
        LaneKey {
            member: MemberId([1; 16]),
            incarnation: 5,
            lane,
        }
    }

    #[test]
    fn drops_repeats_and_older() {
        let mut t = DedupTable::new(10);
        assert!(t.accept(&key(0), 1));
        assert!(t.accept(&key(0), 2));
        assert!(!t.accept(&key(0), 2));
        assert!(!t.accept(&key(0), 1));
        assert!(t.accept(&key(1), 1), "lanes are independent");
        assert!(t.accept(&key(0), 5), "gaps are allowed (lost async frames)");
    }

    #[test]
    fn bounded() {
        let mut t = DedupTable::new(3);
        for lane in 0..100 {
            assert!(t.accept(&key(lane), 1));
        }
        assert_eq!(t.len(), 3);
    }
}
