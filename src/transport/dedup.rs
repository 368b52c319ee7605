//! Duplicate filter for the receiver: the last sequence number delivered per sender lane.
//!
//! A sender numbers the frames of each of its connections ("lanes") 1, 2, 3, … and keeps the
//! numbering when it reconnects a lane to retry. So a frame whose number is not above the last
//! one delivered on its lane is a retry of something already delivered, and is dropped: a retry
//! is never delivered twice (Tribes delivers it twice).

use crate::member::MemberId;
use std::collections::{HashMap, VecDeque};

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

/// What became of a synchronized-ack frame, kept so that a retry of it gets the same answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Delivered to the listeners, not finished yet: a retry must wait for it.
    Pending,
    Done(Result<(), String>),
    /// Too old to remember (or never seen).
    Unknown,
}

/// Longest listener failure reason kept for a retry.
const MAX_REASON: usize = 256;

/// Outcomes of recent synchronized-ack frames, by lane and sequence number.
///
/// A sender that loses the connection before the answer resends the frame; the receiver drops
/// the copy as a duplicate and must answer it as it answered (or will answer) the original: a
/// plain ack would turn a listener failure into a success.
pub struct SyncOutcomes {
    map: HashMap<(LaneKey, u64), Outcome>,
    order: VecDeque<(LaneKey, u64)>,
    capacity: usize,
}

impl SyncOutcomes {
    /// Remembers the last `capacity` frames of all lanes.
    pub fn new(capacity: usize) -> SyncOutcomes {
        SyncOutcomes {
            map: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// A synchronized-ack frame was accepted for delivery.
    pub fn begin(&mut self, key: LaneKey, seq: u64) {
        if self.order.len() >= self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
        self.order.push_back((key, seq));
        self.map.insert((key, seq), Outcome::Pending);
    }

    /// The listeners finished with it.
    pub fn finish(&mut self, key: LaneKey, seq: u64, result: &Result<(), String>) {
        if let Some(o) = self.map.get_mut(&(key, seq)) {
            let mut result = result.clone();
            if let Err(r) = &mut result {
                if r.len() > MAX_REASON {
                    let mut cut = MAX_REASON;
                    while !r.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    r.truncate(cut);
                }
            }
            *o = Outcome::Done(result);
        }
    }

    pub fn lookup(&self, key: &LaneKey, seq: u64) -> Outcome {
        self.map
            .get(&(*key, seq))
            .cloned()
            .unwrap_or(Outcome::Unknown)
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
    fn outcomes_are_remembered_and_bounded() {
        let mut o = SyncOutcomes::new(2);
        o.begin(key(0), 1);
        assert_eq!(o.lookup(&key(0), 1), Outcome::Pending);
        o.finish(key(0), 1, &Err("x".repeat(1000)));
        assert_eq!(
            o.lookup(&key(0), 1),
            Outcome::Done(Err("x".repeat(MAX_REASON)))
        );
        o.begin(key(0), 2);
        o.begin(key(1), 1);
        assert_eq!(o.lookup(&key(0), 1), Outcome::Unknown, "evicted");
        assert_eq!(o.lookup(&key(1), 1), Outcome::Pending);
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
