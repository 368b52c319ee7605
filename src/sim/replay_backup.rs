//! The BackupManager's replay workload: requests of every kind (changes of id and moves
//! included), a kill and a restart under the same member id within milliseconds, a partition
//! and its heal. The same seed must give the same trace, message for message and event for
//! event.

use super::*;
use crate::sim::replay_tests::{run_hash, Trace};

impl Cluster {
    /// `n` starts again under the same member id, with nothing in memory; every up member sees
    /// it and it sees them.
    fn restart(&mut self, n: NodeId) {
        self.epoch += 1;
        let up: BTreeSet<NodeId> = self.up().into_iter().collect();
        {
            let mut w = self.world.borrow_mut();
            w.down.remove(&n);
            let mut all = up.clone();
            all.insert(n);
            w.views.insert(n, all);
            for m in &up {
                w.views.entry(*m).or_default().insert(n);
            }
        }
        self.sim.fault(Fault::Restart(n));
        for m in up {
            self.sim.call(m, |node, ctx| node.view_changed(ctx));
        }
    }
}

/// One run of `seed`: the hash of every message delivered and every listener event, and what
/// the run did.
pub(in crate::sim) fn trace(seed: u64) -> Trace {
    trace_with(seed, None)
}

/// [`trace`] with the members sending through production's lane protocol.
pub(in crate::sim) fn trace_over_lanes(seed: u64) -> Trace {
    trace_with(seed, Some(crate::sim::frame_lanes::LaneModel::default()))
}

fn trace_with(seed: u64, lanes: Option<crate::sim::frame_lanes::LaneModel>) -> Trace {
    let settings = BackupSimConfig {
        retry_lanes: lanes,
        ..cfg(1)
    };
    let mut c = Cluster::new(seed, jitter(), &settings, 4);
    let mix = Mix {
        sessions: 200,
        change_id: 2,
        ..Mix::default()
    };
    let gap = (Duration::ZERO, us(200));
    c.run_workload(c.sim.now() + ms(40), gap, &mix);
    c.calm(ms(2), gap, &mix);
    // A kill, noticed a few milliseconds later, and a restart under the same member id.
    let victim = NodeId(c.w.below(4) as usize);
    c.crash(&[victim]);
    let still = Mix {
        switch: 0,
        ..mix.clone()
    };
    let detect = c.sim.now() + c.w.duration_between(ms(1), ms(5));
    c.run_workload(detect, gap, &still);
    c.forget(&[victim]);
    c.calm(ms(2), gap, &mix);
    c.restart(victim);
    c.calm(ms(20), gap, &mix);
    c.settle();
    // A partition 2/2 with requests on both sides, then the heal.
    let up: Vec<NodeId> = c.up();
    let sides: Vec<BTreeSet<NodeId>> = vec![
        up[..2].iter().copied().collect(),
        up[2..].iter().copied().collect(),
    ];
    c.split(&sides);
    c.settle();
    for side in &sides {
        c.side_round(side, 5, 20, 6);
    }
    c.heal(Some(ms(2)));
    c.settle();
    let events = c
        .sim
        .node_ids()
        .map(|n| (n.0, c.sim.node(n).journal.events.as_slice()));
    Trace {
        hash: run_hash(c.sim.trace_hash(), events),
        steps: c.sim.steps(),
        requests: c.counts.creates + c.counts.changes + c.counts.reads,
        change_ids: c.counts.change_ids,
        restarts: c.sim.stats().restarts,
    }
}
