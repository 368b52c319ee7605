//! A seed replays exactly: the same seed run twice gives an identical trace (every message
//! delivered, every listener event, the step count), for each manager, on a workload with a
//! kill, a restart under the same member id, a partition and changes of id. Session ids come
//! from the seed and the cores list sessions in id order, so nothing in a run depends on the
//! process it runs in.

use super::{backup_tests, delta_tests, seeds};
use crate::session::SessionEvent;
use std::hash::{DefaultHasher, Hash, Hasher};

/// What one run did, and the hash of all of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trace {
    pub hash: u64,
    pub steps: u64,
    pub requests: u64,
    pub change_ids: u64,
    pub restarts: u64,
}

/// The hash of a run: the simulator's trace (every message and event it processed) and every
/// node's listener events, with the node and its life.
pub fn run_hash<'a>(
    sim_trace: u64,
    events: impl Iterator<Item = (usize, &'a [(u64, SessionEvent)])>,
) -> u64 {
    let mut h = DefaultHasher::new();
    h.write_u64(sim_trace);
    for (node, events) in events {
        for (life, e) in events {
            (node, life, format!("{e:?}")).hash(&mut h);
        }
    }
    h.finish()
}

fn replays(manager: &str, run: fn(u64) -> Trace) {
    for seed in seeds(4) {
        let (a, b) = (run(seed), run(seed));
        assert_eq!(a, b, "{manager}, seed {seed}: two runs differ");
        assert!(
            a.requests > 50 && a.change_ids > 0 && a.restarts == 1,
            "{manager}, seed {seed}: the workload did not do what it claims: {a:?}"
        );
    }
}

#[test]
fn seeds_replay_exactly() {
    replays("DeltaManager", delta_tests::replay::trace);
    replays("BackupManager", backup_tests::replay::trace);
}

/// The same over production's lane protocol (`Frames::retry_lanes`): its retries, duplicate
/// filters and deadlines depend on nothing but the seed either.
#[test]
fn seeds_replay_exactly_over_lanes() {
    replays(
        "DeltaManager over lanes",
        delta_tests::replay::trace_over_lanes,
    );
    replays(
        "BackupManager over lanes",
        backup_tests::replay::trace_over_lanes,
    );
}
