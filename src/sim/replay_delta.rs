//! The DeltaManager's replay workload: requests of every kind (changes of id included), a kill
//! and a restart under the same member id within milliseconds, a partition and its heal. The
//! same seed must give the same trace, message for message and event for event.

use super::*;
use crate::sim::replay_tests::{run_hash, Trace};

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
    let cfg = DeltaSimConfig {
        core: DeltaConfig {
            max_inactive: secs(10),
            ..DeltaConfig::default()
        },
        reaper: Some(secs(1)),
        chaos: None,
        two_lanes: false,
        rebind: Default::default(),
        shell_ticks: None,
        retry_lanes: lanes,
    };
    let mut c = Cluster::new(seed, jitter(), &cfg, 4);
    let mix = Mix {
        change_id: 2,
        careful_change_id: true,
        ..Mix::default()
    };
    let gap = (Duration::ZERO, ms(1));
    c.run_workload(ms(60), gap, &mix);
    // A kill, noticed a few milliseconds later, and a restart under the same member id.
    let victim = NodeId(c.w.below(4) as usize);
    c.crash(victim);
    let detect = c.sim.now() + c.w.duration_between(ms(1), ms(5));
    c.run_workload(detect, gap, &mix);
    c.forget(victim);
    c.restart(victim);
    c.run_workload(c.sim.now() + ms(60), gap, &mix);
    c.settle(ms(100));
    // A partition 2/2 with requests on both sides, then the heal.
    let up = c.up();
    let (a, b) = (up[..2].to_vec(), up[2..].to_vec());
    c.split([&a, &b]);
    let mut ids: Vec<SessionId> = c
        .live()
        .into_iter()
        .map(|s| c.sessions[s].id.clone())
        .collect();
    for _ in 0..40 {
        let side = if c.w.below(2) == 0 { &a } else { &b };
        if let Some(new) = c.side_request(side, &ids, true) {
            ids.push(new);
        }
        let t = c.sim.now() + c.w.duration_between(Duration::ZERO, ms(1));
        c.sim.run_until(t, |_| false);
    }
    c.heal();
    c.settle(ms(200));
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
