//! A DeltaManager joiner whose state-transfer donor leaves in the middle of the transfer: it
//! stops cleanly (production's `SimpleTcpCluster::stop`: its transfers end after the chunk
//! being sent, its copies are dropped, its channel closes) or is killed. The reference is
//! tests/clean_stop.rs, where a joiner asked the gone donor again every 2 s until
//! `state_transfer_timeout` (60 s) before `ManagerCore::donor_left` made it ask a member that
//! stays.
//!
//! Chunks leave one at a time ([`DeltaNode::pace_transfers`], 2 ms apart), so a transfer of 40
//! to 80 sessions in chunks of 4 takes 20 to 40 ms, and the donor leaves when the joiner has
//! `k` of its chunks, `k` drawn from 0 to all of them (all: it leaves right after its last
//! chunk, while the joiner asks the members for their digests). Requests go on meanwhile.

use super::*;
use crate::sim::delta_node::{holds, DeltaSimConfig, Op};

/// The joiner serves (ready, digests heard) within this of its join, far below
/// `state_transfer_timeout` (60 s) and `rpc_timeout` (15 s): the transfer takes tens of
/// milliseconds, the re-ask period is 20 ms, the membership verdict comes within 10 ms.
const BOUND: Duration = Duration::from_secs(1);

/// Sessions per chunk.
const CHUNK: usize = 4;

#[derive(Default, Debug)]
struct Figures {
    clean: u64,
    kills: u64,
    /// Left before the joiner had any chunk, in the middle, right after its last (the joiner
    /// ready, asking the members for their digests).
    before_first: u64,
    mid: u64,
    after_last: u64,
    /// Clean stops whose membership verdict reached the others before the channel closed.
    verdict_first: u64,
    sessions: u64,
    chunks: u64,
    /// Asks for every session the joiners sent (more than one: a re-ask or another donor).
    asks: u64,
    acked: u64,
    /// Runs that converged only after the repair phase.
    repaired: u64,
    /// Slowest join to ready, and to serving (catch-up done), in virtual ms.
    max_ready_ms: u128,
    max_serving_ms: u128,
}

fn chunks_of(j: NodeId, c: &Cluster) -> u64 {
    c.sim.node(j).journal.received("all-sessions")
}

fn serving(c: &Sim<DeltaNode>, j: NodeId) -> bool {
    c.node(j).mgr.is_ready() && !c.node(j).mgr.catching_up()
}

/// Requests (none to a stopping member) at random gaps until `done` holds or `until`; whether
/// it holds.
fn work_until(
    c: &mut Cluster,
    until: Duration,
    mix: &Mix,
    done: impl Fn(&Sim<DeltaNode>) -> bool,
) -> bool {
    loop {
        let t = (c.sim.now() + c.w.duration_between(Duration::ZERO, ms(1))).min(until);
        if c.sim.run_until(t, &done) {
            return true;
        }
        if c.sim.now() >= until {
            return false;
        }
        c.request(mix);
    }
}

#[test]
fn a_joiner_whose_donor_leaves_during_its_state_transfer_serves_within_a_second() {
    donor_leaves(200);
}

fn donor_leaves(seeds: u64) {
    let cfg = DeltaSimConfig {
        core: DeltaConfig {
            send_all_sessions_size: CHUNK,
            max_inactive: secs(10),
            ..DeltaConfig::default()
        },
        // Production's 2 s re-ask, compressed as the transfer is.
        shell_ticks: Some(ms(20)),
        // For the repair phase (below).
        reaper: Some(secs(1)),
        ..DeltaSimConfig::default()
    };
    let mut f = Figures::default();
    for_each_seed(seeds, |seed| {
        let faults = super::transfer_faults();
        let mut c = Cluster::new(seed, faults, &cfg, 3);
        for n in c.up() {
            c.sim.call(n, |node, _| node.pace_transfers(ms(2)));
        }
        let made = c.w.between(40, 80);
        for i in 0..made {
            c.create_on(NodeId(i as usize % 3), &[Op::Set("a")]);
        }
        c.settle(ms(200));
        let mix = Mix {
            max_live: 100,
            ..Mix::default()
        };
        // The joiner asks the lowest member of its view.
        let donor = NodeId(0);
        let held = c.sim.node(donor).core().store().len();
        let total = held.div_ceil(CHUNK).max(1) as u64;
        let j = c.join();
        let joined_at = c.sim.now();
        let k = c.w.between(0, total);
        let clean = c.w.chance(0.5);
        // `k` chunks in (a re-ask restarts the count: the donor starts over), or all of them:
        // the donor leaves in the step the joiner's transfer completes.
        let got = if k < total {
            work_until(&mut c, joined_at + BOUND, &mix, |s| {
                s.node(j).journal.received("all-sessions") >= k || s.node(j).mgr.is_ready()
            })
        } else {
            work_until(&mut c, joined_at + BOUND, &mix, |s| {
                s.node(j).mgr.is_ready()
            })
        };
        if !got {
            c.sim.fail(format_args!("the joiner never had {k} chunks"));
        }
        let had = chunks_of(j, &c);
        match (had, c.sim.node(j).mgr.is_ready()) {
            (_, true) => f.after_last += 1,
            (0, false) => f.before_first += 1,
            _ => f.mid += 1,
        }
        if replaying() {
            let how = if clean { "stops cleanly" } else { "is killed" };
            let now = c.sim.now();
            let ready = c.sim.node(j).mgr.is_ready();
            eprintln!(
                "{now:?}: donor {donor} {how}; joiner {j} had {had} chunks (a whole transfer: \
                 {total}), ready: {ready}"
            );
        }
        if clean {
            f.clean += 1;
            c.sim.call(donor, |node, ctx| node.stop_cleanly(ctx));
            // The membership verdict and the end of its channel come in either order.
            let gap = c.w.duration_between(Duration::ZERO, ms(5));
            let verdict_first = c.w.chance(0.5);
            if verdict_first {
                f.verdict_first += 1;
                c.forget(donor);
            }
            // No request goes to the stopping member: its copies are gone.
            let t = c.sim.now() + gap;
            c.sim.run_until(t, |_| false);
            c.crash(donor);
            if !verdict_first {
                c.forget(donor);
            }
        } else {
            f.kills += 1;
            c.crash(donor);
            let t = c.sim.now() + c.w.duration_between(Duration::ZERO, ms(10));
            work_until(&mut c, t, &mix, |_| false);
            c.forget(donor);
        }
        let ready = work_until(&mut c, joined_at + BOUND, &mix, |s| {
            s.node(j).mgr.is_ready()
        });
        let ready_ms = (c.sim.now() - joined_at).as_millis();
        let served = ready && work_until(&mut c, joined_at + BOUND, &mix, |s| serving(s, j));
        if !served {
            let m = &c.sim.node(j).mgr;
            c.sim.fail(format_args!(
                "joiner {j} not serving {BOUND:?} after its join (ready: {}, waiting for digests: \
                 {}); donor {donor} {} when it had {had} chunks (a whole transfer: {total}); {} \
                 asks for every session",
                m.is_ready(),
                m.catching_up(),
                if clean {
                    "stopped cleanly"
                } else {
                    "was killed"
                },
                c.sim.node(j).journal.sent("get-all"),
            ));
        }
        f.max_ready_ms = f.max_ready_ms.max(ready_ms);
        f.max_serving_ms = f.max_serving_ms.max((c.sim.now() - joined_at).as_millis());
        let t = c.sim.now() + ms(50);
        work_until(&mut c, t, &mix, |_| false);
        c.settle(ms(500));
        let up = c.up();
        let check_acked = |c: &Cluster| {
            let w = c.world.borrow();
            for a in &w.oracle.acked {
                for &n in &up {
                    if !holds(&c.sim, &w, n, &a.change) {
                        c.sim.fail(format_args!(
                            "{n} lacks {:?}, acknowledged to {} at {:?} (joiner {j})",
                            a.change, a.origin, a.at
                        ));
                    }
                }
            }
        };
        check_acked(&c);
        for s in c.live() {
            let id = &c.sessions[s].id;
            for &n in &up {
                if c.sim.node(n).copy(id).is_none() {
                    c.sim.fail(format_args!("{n} lost {id} (joiner {j})"));
                }
            }
        }
        // An unacknowledged end the donor made just before it left may reach only some members
        // (or reach one after the digests its leave made them exchange): the reaper's time
        // ends the copies left, as after any lost EXPIRED.
        if !c.diverged().is_empty() {
            f.repaired += 1;
            c.repair();
            check_acked(&c);
        }
        f.acked += c.world.borrow().oracle.acked.len() as u64;
        c.assert_converged();
        f.sessions += held as u64;
        f.chunks += chunks_of(j, &c);
        f.asks += c.sim.node(j).journal.sent("get-all");
    });
    eprintln!("donor leaves: {f:?}");
    if !replaying() {
        assert!(f.clean > 0 && f.kills > 0 && f.verdict_first > 0);
        assert!(f.before_first > 0 && f.mid > 0 && f.after_last > 0, "{f:?}");
    }
}

/// A member stopped cleanly and started again on the same manager (`SimpleTcpCluster::start`
/// after `stop`: tests/clean_stop.rs) joins again: its stop dropped its copies, so it takes
/// the others' sessions by state transfer again, and is not ready until it has every one
/// (checked after every step). It then holds exactly what the others hold.
#[test]
fn a_member_started_again_after_a_clean_stop_is_ready_only_with_every_session() {
    let cfg = DeltaSimConfig {
        core: DeltaConfig {
            send_all_sessions_size: CHUNK,
            ..DeltaConfig::default()
        },
        shell_ticks: Some(ms(20)),
        ..DeltaSimConfig::default()
    };
    let mut restarts = 0;
    for_each_seed(64, |seed| {
        let faults = super::transfer_faults();
        let mut c = Cluster::new(seed, faults, &cfg, 2);
        for n in 0..c.w.between(10, 40) {
            c.create_on(NodeId(n as usize % 2), &[Op::Set("a")]);
        }
        c.settle(ms(200));
        // A member that joined (its state transfer done) is the one that stops and starts
        // again, as server2 of the real-socket test.
        let n = c.join();
        c.settle(ms(300));
        if !c.sim.node(n).mgr.is_ready() {
            c.sim
                .fail("the joiner never finished its first state transfer");
        }
        c.sim.call(n, |node, ctx| node.stop_cleanly(ctx));
        let t = c.sim.now() + c.w.duration_between(Duration::ZERO, ms(5));
        c.sim.run_until(t, |_| false);
        c.forget(n);
        c.settle(ms(50));
        c.admit(n);
        c.sim.call(n, |node, ctx| node.start_again(ctx));
        c.announce(n);
        let started = c.sim.now();
        let live: Vec<SessionId> = c.live().iter().map(|&s| c.sessions[s].id.clone()).collect();
        let mut early = None;
        let done = c.sim.run_until(started + BOUND, |s| {
            let node = s.node(n);
            let missing = live.iter().filter(|id| node.copy(id).is_none()).count();
            if node.mgr.is_ready() && missing > 0 && early.is_none() {
                early = Some((s.now() - started, missing));
            }
            node.mgr.is_ready() && missing == 0
        });
        if let Some((after, missing)) = early {
            c.sim.fail(format_args!(
                "{n}, started again, was ready {after:?} after its start lacking {missing} of {} \
                 sessions",
                live.len()
            ));
        }
        if !done {
            c.sim
                .fail(format_args!("{n} not ready {BOUND:?} after its start"));
        }
        c.settle(ms(200));
        c.assert_converged();
        restarts += 1;
    });
    eprintln!("started again: {restarts} members");
}
