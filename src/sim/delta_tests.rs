//! Simulation tests of the DeltaManager core (`DeltaCore`, `ReplicaStore`, `Session`): clusters
//! of [`DeltaNode`]s driven by a seeded workload of requests (create, set and remove
//! attributes, read, change of id, invalidate) on random nodes, including sessions served by
//! another node than the one that made them, under latency jitter, connection resets, crashes,
//! late joins, duplicated and delayed messages, and expiry. The invariants of `delta_node` are
//! checked after every step.
//!
//! What asynchronous replication does not repair by itself (see
//! `a_lost_change_stays_lost_until_the_session_changes_again`): a message lost on a reset is
//! noticed only when a later message about the same session shows the gap. A lost CREATED or
//! last DELTA leaves the copy missing or behind until the session changes again; a lost
//! EXPIRED leaves a copy until that node's reaper ends it (at twice the max inactive interval);
//! a lost change of id leaves the old id there until then too. ACCESSED carries no version, so
//! it reveals nothing. So convergence is asserted as is where nothing is lost, and after a
//! repair phase (every live session changed once more, then the reaper's time) where resets
//! lose messages; the lossy runs assert after every step that no stale state is ever shown.
//!
//! The workload keeps clear of the bugs these tests found (each has an ignored test at the end
//! of this file, and most an ignored variant of the simulation that hits it):
//! - A session moves to another node only if that node's copy is as new as the last node's
//!   (a user whose next request comes after replication; otherwise both nodes make version
//!   n+1 and the history forks), and a failover goes to the newest surviving copy.
//! - A change of id happens only when every node has the session's latest version, and a
//!   renamed session moves only once every node knows its new id (CHANGE-ID has no version);
//!   under the shuffler there is no change of id at all.
//! - Where messages wait longer than the max inactive interval (the expiry test), sessions are
//!   sticky (a stale "primary" expires them early).

use super::delta_node::{
    check_delta, holds, show, Change, Chaos, DeltaNode, DeltaSimConfig, Op, Served, SharedWorld,
    Val, World, EPOCH_MS,
};
use super::*;
use crate::member::MemberId;
use crate::session::reconcile::test_support::UnionMerger;
use crate::session::reconcile::{live_beats_end, reconcile, SessionMerger, Stamp};
use crate::session::{DeltaConfig, DeltaCore, Dest, Out, SessionId, SessionMessage, SessionState};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Attribute names the workload uses.
const NAMES: [&str; 4] = ["a", "b", "c", "d"];

/// Latency jitter from 20 µs to 3 ms per chunk, and small chunks, so messages on different
/// connections overtake each other and frames arrive in pieces.
fn jitter() -> Faults {
    Faults {
        latency: (Duration::from_micros(20), ms(3)),
        max_chunk: 512,
        ..Faults::default()
    }
}

/// Replaying one seed: the counts that show a test exercised what it claims are about the whole
/// seed list, so they are not asserted.
#[path = "replay_delta.rs"]
pub(super) mod replay;

#[path = "lanes_delta.rs"]
mod lanes;

/// Kill -9 and restart of a random member in a loop, with sticky users.
#[path = "faults_delta.rs"]
mod faults;

/// A joiner's state-transfer donor stops cleanly or is killed in the middle of the transfer.
#[path = "donor_leaves_delta.rs"]
mod donor_leaves;

fn replaying() -> bool {
    std::env::var(SEED_ENV).is_ok()
}

/// Relative weights of request kinds, and how often a request goes to another node.
#[derive(Clone, Debug)]
struct Mix {
    create: u64,
    change: u64,
    read: u64,
    change_id: u64,
    invalidate: u64,
    /// Probability that a request goes to another node than the session's last one (a load
    /// balancer without stickiness); only to a node whose copy is as new as the last one's.
    switch: f64,
    max_live: usize,
    /// Works around the CHANGE-ID bugs (see the ignored tests): a change of id is made only when
    /// every up node has the session at its node's version, and a session moves to another
    /// node only when every up node knows its current id. So a CHANGE-ID never races a message
    /// about the same session from another node.
    careful_change_id: bool,
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            create: 3,
            change: 8,
            read: 3,
            change_id: 1,
            invalidate: 1,
            switch: 0.25,
            max_live: 60,
            careful_change_id: true,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Live,
    Ended,
    /// No serving node has it any more (its only copies were lost with a crashed node).
    Abandoned,
}

/// A user's session as the workload follows it.
#[derive(Clone, Debug)]
struct Logical {
    id: SessionId,
    server: NodeId,
    fate: Fate,
}

#[derive(Clone, Debug, Default)]
struct Counts {
    creates: u64,
    changes: u64,
    reads: u64,
    change_ids: u64,
    invalidations: u64,
    switches: u64,
    failovers: u64,
    abandoned: u64,
}

impl std::ops::AddAssign<&Counts> for Counts {
    fn add_assign(&mut self, o: &Counts) {
        self.creates += o.creates;
        self.changes += o.changes;
        self.reads += o.reads;
        self.change_ids += o.change_ids;
        self.invalidations += o.invalidations;
        self.switches += o.switches;
        self.failovers += o.failovers;
        self.abandoned += o.abandoned;
    }
}

/// What the nodes' journals add up to.
#[derive(Clone, Debug, Default)]
struct Net {
    resyncs: u64,
    late_acks: u64,
    duplicated: u64,
    delayed: u64,
    after_end: u64,
    during_transfer: u64,
    transferred: u64,
    acked: u64,
    accessed: u64,
    resets: u64,
}

impl std::ops::AddAssign<&Net> for Net {
    fn add_assign(&mut self, o: &Net) {
        self.resyncs += o.resyncs;
        self.late_acks += o.late_acks;
        self.duplicated += o.duplicated;
        self.delayed += o.delayed;
        self.after_end += o.after_end;
        self.during_transfer += o.during_transfer;
        self.transferred += o.transferred;
        self.acked += o.acked;
        self.accessed += o.accessed;
        self.resets += o.resets;
    }
}

struct Cluster {
    sim: Sim<DeltaNode>,
    world: SharedWorld,
    cfg: DeltaSimConfig,
    sessions: Vec<Logical>,
    /// The workload's own generator, so network randomness does not shift the workload.
    w: SimRng,
    counts: Counts,
}

impl Cluster {
    /// `n` members that all see each other, invariants installed.
    fn new(seed: u64, faults: Faults, cfg: &DeltaSimConfig, n: usize) -> Cluster {
        let world: SharedWorld = Rc::new(RefCell::new(World::default()));
        let mut sim = Sim::new(seed, faults);
        for _ in 0..n {
            let (c, w) = (cfg.clone(), world.clone());
            sim.add_node(move |id, rng| DeltaNode::new(id, c, w, rng));
        }
        check_delta(&mut sim, &world);
        let all: BTreeSet<NodeId> = sim.node_ids().collect();
        for &id in &all {
            world.borrow_mut().views.insert(id, all.clone());
        }
        for &id in &all {
            sim.call(id, |node, ctx| node.view_changed(ctx));
        }
        let w = sim.rng().fork();
        Cluster {
            sim,
            world,
            cfg: cfg.clone(),
            sessions: Vec::new(),
            w,
            counts: Counts::default(),
        }
    }

    fn up(&self) -> Vec<NodeId> {
        self.sim.node_ids().filter(|n| self.sim.is_up(*n)).collect()
    }

    /// Nodes a load balancer sends requests to: up, state transfer done.
    fn serving(&self) -> Vec<NodeId> {
        self.up()
            .into_iter()
            .filter(|n| self.sim.node(*n).core().is_ready())
            .collect()
    }

    /// A new member: every up node sees it, it sees every up node, and it starts now (asking
    /// the lowest of them for every session).
    fn join(&mut self) -> NodeId {
        let id = NodeId(self.sim.node_ids().count());
        self.admit(id);
        let (c, w) = (self.cfg.clone(), self.world.clone());
        let got = self
            .sim
            .add_node(move |id, rng| DeltaNode::new(id, c, w, rng));
        assert_eq!(got, id);
        self.announce(id);
        id
    }

    /// Every up node sees `id`, `id` sees them.
    fn admit(&mut self, id: NodeId) {
        let up: BTreeSet<NodeId> = self.up().into_iter().filter(|n| *n != id).collect();
        {
            let mut w = self.world.borrow_mut();
            let mut all = up.clone();
            all.insert(id);
            w.views.insert(id, all);
            for &n in &up {
                w.views.entry(n).or_default().insert(id);
            }
        }
    }

    /// The others' managers hear that `id` (now running) joined.
    fn announce(&mut self, id: NodeId) {
        for n in self.up().into_iter().filter(|n| *n != id) {
            self.sim.call(n, |node, ctx| node.view_changed(ctx));
        }
    }

    /// The others notice that `gone` left (the membership layer's verdict).
    fn forget(&mut self, gone: NodeId) {
        for n in self.up() {
            self.world
                .borrow_mut()
                .views
                .entry(n)
                .or_default()
                .remove(&gone);
            self.sim.call(n, |node, ctx| node.view_changed(ctx));
        }
    }

    fn crash(&mut self, n: NodeId) {
        self.world.borrow_mut().down.insert(n);
        self.sim.fault(Fault::Crash(n));
    }

    fn restart(&mut self, n: NodeId) {
        self.world.borrow_mut().down.remove(&n);
        self.admit(n);
        self.sim.fault(Fault::Restart(n));
        self.announce(n);
    }

    fn version(&self, n: NodeId, id: &SessionId) -> Option<u64> {
        self.sim.node(n).copy(id).map(|(v, _)| v)
    }

    /// Where the next request of session `s` goes: its last node, or now and then another one
    /// whose copy is as new; if its node is gone, the serving node with the newest copy.
    fn route(&mut self, s: usize, switch: f64, careful: bool) -> Option<NodeId> {
        let (id, cur) = (self.sessions[s].id.clone(), self.sessions[s].server);
        let serving = self.serving();
        let cur_version = self.version(cur, &id).filter(|_| serving.contains(&cur));
        if let Some(v) = cur_version {
            let everywhere = self.up().iter().all(|&n| self.version(n, &id).is_some());
            if switch > 0.0 && self.w.chance(switch) && (!careful || everywhere) {
                let others: Vec<NodeId> = serving
                    .iter()
                    .copied()
                    .filter(|&n| n != cur && self.version(n, &id) == Some(v))
                    .collect();
                if !others.is_empty() {
                    self.counts.switches += 1;
                    return Some(others[self.w.below(others.len() as u64) as usize]);
                }
            }
            return Some(cur);
        }
        let best = serving
            .iter()
            .filter_map(|&n| self.version(n, &id).map(|v| (v, n)))
            .max_by_key(|(v, n)| (*v, std::cmp::Reverse(*n)))?;
        self.counts.failovers += 1;
        Some(best.1)
    }

    fn change_ops(&mut self) -> Vec<Op> {
        let k = self.w.between(1, 3);
        (0..k)
            .map(|_| {
                let name = NAMES[self.w.below(NAMES.len() as u64) as usize];
                if self.w.chance(0.25) {
                    Op::Remove(name)
                } else {
                    Op::Set(name)
                }
            })
            .collect()
    }

    /// Creates a session on `n` with `ops`.
    fn create_on(&mut self, n: NodeId, ops: &[Op]) -> Option<usize> {
        let mut served = Served::Missing;
        self.sim.call(n, |node, ctx| served = node.create(ctx, ops));
        self.counts.creates += 1;
        match served {
            Served::Live(id) => {
                self.sessions.push(Logical {
                    id,
                    server: n,
                    fate: Fate::Live,
                });
                Some(self.sessions.len() - 1)
            }
            _ => None,
        }
    }

    /// Whether every up node has session `s` at its node's version.
    fn replicated(&self, s: usize) -> bool {
        let l = &self.sessions[s];
        let v = self.version(l.server, &l.id);
        v.is_some() && self.up().iter().all(|&n| self.version(n, &l.id) == v)
    }

    /// Request `ops` on session `s`, routed as [`Cluster::route`] says.
    fn serve(&mut self, s: usize, ops: &[Op], mix: &Mix) {
        let Some(n) = self.route(s, mix.switch, mix.careful_change_id) else {
            self.sessions[s].fate = Fate::Abandoned;
            self.counts.abandoned += 1;
            return;
        };
        let id = self.sessions[s].id.clone();
        let mut served = Served::Missing;
        self.sim
            .call(n, |node, ctx| served = node.request(ctx, &id, ops));
        match served {
            Served::Live(new) => {
                self.sessions[s].id = new;
                self.sessions[s].server = n;
            }
            Served::Ended => self.sessions[s].fate = Fate::Ended,
            // Its copy is behind: the user's request waits for the copy (counted by the node).
            Served::Waiting => {}
            Served::Missing => self
                .sim
                .fail(format_args!("{n} was routed {id} but lacks it")),
        }
    }

    fn live(&self) -> Vec<usize> {
        (0..self.sessions.len())
            .filter(|&s| self.sessions[s].fate == Fate::Live)
            .collect()
    }

    /// One request drawn from `mix`.
    fn request(&mut self, mix: &Mix) {
        let serving = self.serving();
        if serving.is_empty() {
            return;
        }
        let live = self.live();
        let weights = [
            mix.create,
            mix.change,
            mix.read,
            mix.change_id,
            mix.invalidate,
        ];
        let mut roll = self.w.below(weights.iter().sum());
        let mut kind = 0;
        while roll >= weights[kind] {
            roll -= weights[kind];
            kind += 1;
        }
        if live.is_empty() || (kind == 0 && live.len() < mix.max_live) {
            let n = serving[self.w.below(serving.len() as u64) as usize];
            let mut ops = self.change_ops();
            ops.retain(|op| matches!(op, Op::Set(_)));
            self.create_on(n, &ops);
            return;
        }
        let s = live[self.w.below(live.len() as u64) as usize];
        let ops = match kind {
            0 | 1 => {
                self.counts.changes += 1;
                self.change_ops()
            }
            2 => {
                self.counts.reads += 1;
                vec![Op::Read]
            }
            3 if !mix.careful_change_id || self.replicated(s) => {
                self.counts.change_ids += 1;
                vec![Op::ChangeId, Op::Set("user")]
            }
            3 => {
                self.counts.changes += 1;
                self.change_ops()
            }
            _ => {
                self.counts.invalidations += 1;
                vec![Op::Invalidate]
            }
        };
        self.serve(s, &ops, mix);
    }

    /// Requests at random gaps in `gap` until virtual time `until`.
    fn run_workload(&mut self, until: Duration, gap: (Duration, Duration), mix: &Mix) {
        loop {
            let t = self.sim.now() + self.w.duration_between(gap.0, gap.1);
            if t > until {
                self.sim.run_until(until, |_| false);
                return;
            }
            self.sim.run_until(t, |_| false);
            self.request(mix);
        }
    }

    /// Runs until nothing is left to do (no reaper), or for `d` (with a reaper, which never
    /// stops).
    fn settle(&mut self, d: Duration) {
        let deadline = self.sim.now() + d;
        if self.cfg.reaper.is_some() || self.cfg.shell_ticks.is_some() {
            self.sim.run_until(deadline, |_| false);
        } else if !self.sim.run_until_idle(deadline) {
            self.sim.fail("the cluster did not settle");
        }
    }

    /// Every live session changed once more on its node (showing any gap to every replica).
    fn touch_all(&mut self) {
        let stay = Mix {
            switch: 0.0,
            ..Mix::default()
        };
        for s in self.live() {
            self.serve(s, &[Op::Set("touch")], &stay);
        }
    }

    /// The repair phase of lossy runs (no more resets): rounds of [`Cluster::touch_all`] that
    /// keep live sessions alive and show every gap, for longer than twice the max inactive
    /// interval so that the reaper ends the copies whose EXPIRED or change of id was lost.
    fn repair(&mut self) {
        self.sim.faults_mut().reset_per_chunk = 0.0;
        let max = self.cfg.core.max_inactive;
        let reaper = self.cfg.reaper.unwrap_or_default();
        let end = self.sim.now() + max * 2 + reaper + ms(100);
        while self.sim.now() < end {
            self.touch_all();
            let next = self.sim.now() + max / 3;
            self.sim.run_until(next, |_| false);
        }
        self.touch_all();
        self.settle(ms(500));
    }

    /// The copy every node should have of live session `s`: its node's, or (that node down)
    /// the newest up copy.
    fn reference(&self, s: usize) -> Option<(u64, BTreeMap<String, Vec<u8>>)> {
        let l = &self.sessions[s];
        let pick = if self.sim.is_up(l.server) {
            Some(l.server)
        } else {
            self.up()
                .into_iter()
                .filter(|n| self.version(*n, &l.id).is_some())
                .max_by_key(|n| self.version(*n, &l.id))
        }?;
        self.sim.node(pick).copy(&l.id).map(|(v, a)| (v, a.clone()))
    }

    /// Sessions (live or ended) on which some up node disagrees with the reference.
    fn diverged(&self) -> Vec<String> {
        let mut out = Vec::new();
        let live: BTreeSet<SessionId> = self
            .live()
            .into_iter()
            .map(|s| self.sessions[s].id.clone())
            .collect();
        for s in self.live() {
            let id = &self.sessions[s].id;
            let want = self.reference(s);
            for n in self.up() {
                let have = self.sim.node(n).copy(id).map(|(v, a)| (v, a.clone()));
                if have != want {
                    out.push(format!(
                        "{n} has {id} as {}, its node {} as {}",
                        describe(&have),
                        self.sessions[s].server,
                        describe(&want)
                    ));
                }
            }
        }
        let w = self.world.borrow();
        for n in self.up() {
            for id in self.sim.node(n).core().store().ids() {
                if !live.contains(id) {
                    let why = if w.oracle.renamed.contains_key(id) {
                        "renamed"
                    } else if w.oracle.ended.contains(id) {
                        "ended"
                    } else {
                        "abandoned"
                    };
                    out.push(format!(
                        "{n} still has {id}, which is not a live session ({why})"
                    ));
                }
            }
        }
        out
    }

    /// Every up node holds exactly the live sessions, each at the same version with the same
    /// attributes as the session's node.
    fn assert_converged(&self) {
        let diverged = self.diverged();
        if !diverged.is_empty() {
            self.sim.fail(format_args!(
                "{} disagreements at quiescence, e.g.:\n  {}",
                diverged.len(),
                diverged[..diverged.len().min(5)].join("\n  ")
            ));
        }
    }

    fn net(&self) -> Net {
        let mut t = Net::default();
        for n in self.sim.node_ids() {
            let j = &self.sim.node(n).journal;
            t.resyncs += j.resyncs;
            t.late_acks += j.late_acks;
            t.duplicated += j.duplicated;
            t.delayed += j.delayed;
            t.after_end += j.after_end;
            t.during_transfer += j.during_transfer;
            t.transferred += j.transferred;
            t.accessed += j.sent("accessed");
        }
        t.acked = self.world.borrow().oracle.acked.len() as u64;
        t.resets = self.sim.stats().resets;
        t
    }
}

fn describe(c: &Option<(u64, BTreeMap<String, Vec<u8>>)>) -> String {
    match c {
        Some((v, a)) => format!("v{v} {}", show(a)),
        None => "nothing".into(),
    }
}

// ---- 1. replication under jitter and resets ----

/// Sessions created, changed (also on other nodes than their creator), renamed and
/// invalidated on 3 to 5 nodes, with latency jitter and no loss: at quiescence every node has
/// the same sessions, each at the same version with the same attributes as the node that served
/// it last, and no ended session anywhere. Messages from different nodes about one session
/// overtake each other (after a switch of node), so replicas do see gaps and resync.
#[test]
fn without_loss_every_node_ends_with_the_same_sessions_versions_and_attributes() {
    let (mut counts, mut net, mut sessions) = (Counts::default(), Net::default(), 0);
    for_each_seed(24, |seed| {
        let n = 3 + (seed % 3) as usize;
        let mut c = Cluster::new(seed, jitter(), &DeltaSimConfig::default(), n);
        c.run_workload(ms(250), (Duration::ZERO, ms(2)), &Mix::default());
        c.settle(secs(10));
        c.assert_converged();
        counts += &c.counts;
        net += &c.net();
        sessions += c.sessions.len();
    });
    eprintln!("no loss: {sessions} sessions, {counts:?}, {net:?}");
    if !replaying() {
        assert!(counts.switches > 100 && counts.change_ids > 50 && counts.invalidations > 50);
        assert!(
            net.resyncs > 0,
            "switches should make deltas overtake each other"
        );
    }
}

/// The same without the workaround for the CHANGE-ID bugs: a change of id may race a DELTA of
/// the same session sent by another node (after a switch of node). A replica that gets the
/// CHANGE-ID first moves its older copy to the new id and buries the old id, so the DELTA is
/// dropped as "ended" (and acked); or, having fetched the new id already, gets its copy
/// replaced by the older one. Caught by `acked-is-on-every-acker`,
/// `versions-and-values-never-go-back` or the final comparison.
#[test]
#[ignore = "open: changes of id racing other nodes' deltas and acks across a cluster (rename now redirects deltas and keeps the newer copy; acks of renamed ids and rename chains still fail here) (fails within 24 seeds)"]
fn without_loss_and_with_unrestricted_changes_of_id_every_node_converges() {
    for_each_seed(24, |seed| {
        let n = 3 + (seed % 3) as usize;
        let mut c = Cluster::new(seed, jitter(), &DeltaSimConfig::default(), n);
        let mix = Mix {
            change_id: 3,
            careful_change_id: false,
            ..Mix::default()
        };
        c.run_workload(ms(250), (Duration::ZERO, ms(2)), &mix);
        c.settle(secs(10));
        c.assert_converged();
    });
}

/// The same workload with connection resets (1 % of chunks): asynchronous messages in flight
/// are lost. After every step no copy anywhere shows a state its origin did not make at that
/// version, a version going back, or an older value (the invariants). Right after the workload
/// some copies are behind or missing (asserted: the loss is real); after the repair phase
/// (every live session changed again, resets off, the reaper's 2 × max inactive time) every
/// node agrees.
#[test]
fn with_resets_no_stale_state_is_ever_shown_and_the_next_change_plus_the_reaper_repair_the_rest() {
    let (mut counts, mut net, mut behind, mut sessions) = (Counts::default(), Net::default(), 0, 0);
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
        retry_lanes: None,
    };
    for_each_seed(16, |seed| {
        let n = 3 + (seed % 3) as usize;
        let faults = Faults {
            reset_per_chunk: 0.01,
            ..jitter()
        };
        let mut c = Cluster::new(seed, faults, &cfg, n);
        c.run_workload(ms(250), (Duration::ZERO, ms(2)), &Mix::default());
        c.sim.faults_mut().reset_per_chunk = 0.0;
        c.settle(ms(200));
        behind += c.diverged().len();
        c.repair();
        c.assert_converged();
        counts += &c.counts;
        net += &c.net();
        sessions += c.sessions.len();
    });
    eprintln!(
        "resets: {sessions} sessions, {behind} copies behind before repair, {counts:?}, {net:?}"
    );
    if !replaying() {
        assert!(net.resets > 50, "{net:?}");
        assert!(behind > 0, "resets should leave some copy behind");
        assert!(net.resyncs > 0);
    }
}

/// The same workload with resets, the messages sent through production's lane protocol
/// (`Frames::retry_lanes`): frames cut by a reset are written again on a new connection under
/// their numbers, and the receiver's duplicate filter drops the copies it had (none is
/// delivered twice in one life of the receiver). The invariants hold after every step.
#[test]
fn with_resets_and_lanes_resent_frames_are_delivered_once() {
    let mut lanes = crate::sim::frame_lanes::LaneStats::default();
    let mut net = Net::default();
    let cfg = DeltaSimConfig {
        core: DeltaConfig {
            max_inactive: secs(10),
            ..DeltaConfig::default()
        },
        reaper: Some(secs(1)),
        retry_lanes: Some(crate::sim::frame_lanes::LaneModel::default()),
        ..DeltaSimConfig::default()
    };
    for_each_seed(8, |seed| {
        let faults = Faults {
            reset_per_chunk: 0.01,
            ..jitter()
        };
        let mut c = Cluster::new(seed, faults, &cfg, 3);
        c.run_workload(ms(250), (Duration::ZERO, ms(2)), &Mix::default());
        c.sim.faults_mut().reset_per_chunk = 0.0;
        c.settle(ms(200));
        for n in c.sim.node_ids().collect::<Vec<_>>() {
            lanes.add(&c.sim.node(n).lane_stats());
        }
        net += &c.net();
    });
    eprintln!("resets with lanes: {lanes:?}, {net:?}");
    assert_eq!(lanes.redelivered, 0, "{lanes:?}");
    if !replaying() {
        assert!(net.resets > 20, "{net:?}");
        assert!(lanes.resends > 0 && lanes.duplicates > 0, "{lanes:?}");
    }
}

/// With production's lane protocol, a member cut off by a firewall (connects get no answer,
/// the views still list it) does not make sends wait forever: a send not acked within the
/// lane's timeout fails (its request is answered), as production's `sender.timeout` fails it.
#[test]
fn with_lanes_a_send_to_a_member_that_never_answers_fails_at_its_deadline() {
    let mut lanes = crate::sim::frame_lanes::LaneStats::default();
    let mut failed = 0;
    let cfg = DeltaSimConfig {
        retry_lanes: Some(crate::sim::frame_lanes::LaneModel {
            timeout: ms(30),
            ..Default::default()
        }),
        ..DeltaSimConfig::default()
    };
    for_each_seed(8, |seed| {
        let faults = Faults {
            partitioned_connects_hang: true,
            ..jitter()
        };
        let mut c = Cluster::new(seed, faults, &cfg, 3);
        c.run_workload(ms(50), (Duration::ZERO, ms(2)), &Mix::default());
        c.sim.fault(Fault::Partition(NodeId(0), NodeId(1)));
        c.run_workload(ms(150), (Duration::ZERO, ms(2)), &Mix::default());
        c.sim.fault(Fault::HealAll);
        c.settle(ms(300));
        for n in c.sim.node_ids().collect::<Vec<_>>() {
            let node = c.sim.node(n);
            lanes.add(&node.lane_stats());
            failed += node.journal.failed_by_reset;
            let waits = node.waiting_sends();
            assert!(waits.is_empty(), "{n} still waits: {waits:?}");
        }
    });
    eprintln!("hung member with lanes: {lanes:?}, {failed} sends failed");
    assert_eq!(lanes.redelivered, 0, "{lanes:?}");
    if !replaying() {
        assert!(lanes.timeouts > 0 && failed > 0, "{lanes:?}");
    }
}

/// A DELTA lost on a reset, with no later change to that session: the next ACCESSED (sent at
/// the latest after half the max inactive interval) carries the session's version, shows the
/// replica it is behind, and the replica asks for the session.
#[test]
fn a_lost_change_is_repaired_by_the_next_access_refresh() {
    let mut a = DeltaCore::new(DeltaConfig::default(), "a");
    let mut b = DeltaCore::new(DeltaConfig::default(), "b");
    let id = a.create(EPOCH_MS).unwrap();
    a.session_mut(&id).unwrap().set("x", &1u32).unwrap();
    deliver_all(
        vec![(A, a.end_request(&id, EPOCH_MS))],
        &mut [&mut a, &mut b],
    );
    a.session_mut(&id).unwrap().set("x", &2u32).unwrap();
    let _lost = a.end_request(&id, EPOCH_MS + 1);
    assert_eq!(b.session(&id).unwrap().get::<u32>("x").unwrap(), Some(1));
    // Only accesses from now on: the refresh shows the gap; the resync brings the session.
    let accessed = a.end_request(&id, EPOCH_MS + 3_600_000);
    assert!(matches!(accessed[0].msg, SessionMessage::Accessed { .. }));
    deliver_all(vec![(A, accessed)], &mut [&mut a, &mut b]);
    let copy = b.session(&id).unwrap();
    assert_eq!(copy.get::<u32>("x").unwrap(), Some(2));
    assert_eq!(copy.version(), a.session(&id).unwrap().version());
}

// ---- 2. late join ----

/// A member that joins after sessions exist asks the lowest member for every session (chunks
/// of `send_all_sessions_size` = 4) while requests go on everywhere else; the changes it gets
/// directly during the transfer are applied (a DELTA for a session whose chunk has not come yet
/// makes it ask the sender for the session; an EXPIRED before the chunk leaves a tombstone
/// that the chunk cannot undo). Once ready it serves requests too, and at quiescence it has
/// exactly what the others have. The join comes after a quiet moment in which messages already
/// sent arrive (the next test joins without it).
#[test]
fn a_late_joiner_gets_every_session_by_state_transfer_and_keeps_changes_made_during_it() {
    late_join(16, true);
}

/// Up to 2 ms of latency and 256-byte chunks: a state transfer takes long enough for faults
/// to land in the middle of it.
fn transfer_faults() -> Faults {
    Faults {
        latency: (Duration::from_micros(20), ms(2)),
        max_chunk: 256,
        ..Faults::default()
    }
}

/// The same without the quiet moment: a message sent just before the joiner entered its
/// sender's view and still on its way to the donor when the donor takes its snapshot (a
/// CHANGE-ID, an EXPIRED or a DELTA) misses the snapshot and is not sent to the joiner. The
/// sender's digest, sent when it sees the joiner and read once the transfer is done, shows the
/// joiner what it lacks (the catch-up). 64 seeds.
#[test]
fn a_late_joiner_converges_even_when_changes_are_in_flight_at_the_join() {
    late_join(64, false);
}

fn late_join(seeds: u64, quiet_before_join: bool) {
    let (mut net, mut joiner_sessions, mut chunks) = (Net::default(), 0, 0);
    let cfg = DeltaSimConfig {
        core: DeltaConfig {
            send_all_sessions_size: 4,
            ..DeltaConfig::default()
        },
        ..DeltaSimConfig::default()
    };
    for_each_seed(seeds, |seed| {
        let faults = transfer_faults();
        let mut c = Cluster::new(seed, faults, &cfg, 3);
        let mix = Mix {
            max_live: 40,
            ..Mix::default()
        };
        c.run_workload(ms(150), (Duration::ZERO, ms(1)), &mix);
        if quiet_before_join {
            c.settle(secs(10));
        }
        let live_at_join = c.live().len();
        let j = c.join();
        assert!(!c.sim.node(j).core().is_ready());
        c.run_workload(ms(300), (Duration::ZERO, ms(1)), &mix);
        if !c.sim.node(j).core().is_ready() {
            c.sim.fail("the joiner never finished its state transfer");
        }
        c.settle(secs(10));
        c.assert_converged();
        let jj = &c.sim.node(j).journal;
        assert!(jj.transferred >= live_at_join as u64 / 2);
        chunks += jj.received("all-sessions");
        joiner_sessions += c.sim.node(j).core().store().len();
        net += &c.net();
    });
    eprintln!(
        "late join: {joiner_sessions} sessions on joiners at the end, {chunks} chunks, {net:?}"
    );
    if !replaying() {
        assert!(
            net.during_transfer > 0,
            "no change reached a joiner during its transfer"
        );
        assert!(chunks > seeds * 3);
    }
}

/// A clean stop without `expire_sessions_on_shutdown` ends the stopping member's sessions
/// there only: every member that stays keeps every session. The stop falls while a joiner's
/// state transfer and catch-up run, and the stopping member handles what it still receives
/// for a moment before it is gone (production ends its sessions, then stops its channel): the
/// real-socket reference scenario, where a member whose transfer ended after the login asked
/// the stopping one for its digest, which named every session it had just ended locally as
/// ended; the joiner ended its copy and its digest after the leave ended the others'.
#[test]
fn a_clean_stop_during_a_joiners_catch_up_ends_no_session_on_the_members_that_stay() {
    let cfg = DeltaSimConfig {
        shell_ticks: Some(ms(20)),
        ..DeltaSimConfig::default()
    };
    let (mut answered, mut kept) = (0, 0);
    for_each_seed(64, |seed| {
        let faults = transfer_faults();
        let mut c = Cluster::new(seed, faults, &cfg, 3);
        let mix = Mix {
            max_live: 20,
            ..Mix::default()
        };
        c.run_workload(ms(60), (Duration::ZERO, ms(1)), &mix);
        c.settle(ms(200));
        let j = c.join();
        let victim = NodeId(c.w.below(3) as usize);
        let stop_at = c.sim.now() + c.w.duration_between(Duration::ZERO, ms(40));
        c.sim.run_until(stop_at, |_| false);
        let digests = c.sim.node(victim).journal.sent("digest");
        c.sim.call(victim, |node, ctx| node.stop_cleanly(ctx));
        let gone_at = c.sim.now() + c.w.duration_between(Duration::ZERO, ms(30));
        c.sim.run_until(gone_at, |_| false);
        answered += c.sim.node(victim).journal.sent("digest") - digests;
        c.crash(victim);
        c.forget(victim);
        // Long enough for a joiner whose donor left before answering to give up on it.
        c.settle(secs(70));
        if !c.sim.node(j).core().is_ready() {
            c.sim.fail("the joiner never finished its state transfer");
        }
        for s in c.live() {
            let id = &c.sessions[s].id;
            for n in c.up() {
                if c.sim.node(n).copy(id).is_none() {
                    c.sim.fail(format_args!(
                        "{n} lost {id} at the clean stop of {victim} (joiner {j})"
                    ));
                }
            }
            kept += 1;
        }
        c.assert_converged();
    });
    eprintln!("clean stop: {kept} sessions kept, {answered} digest messages sent after the stop");
    if !replaying() {
        assert!(answered > 0, "no stopping member answered a digest");
    }
}

// ---- 3. crash of an originating node ----

/// Changes are acknowledged like the sync-ack mode (every member applied them). The node that
/// originated the latest acknowledged change is killed mid-stream (4 nodes); its in-flight
/// asynchronous messages are lost. The others notice after 5 ms, requests fail over to the
/// node with the newest copy (its unacknowledged last version may be gone: a failover node
/// then makes that version again, which the oracle allows only because its maker is dead), and
/// later the dead node restarts and rejoins by state transfer while requests go on. Every
/// acknowledged change (the victim's included) is on every surviving node, at the same or a
/// newer version (or the session was ended later), at the crash, after the failover and at
/// the end; after the repair phase all nodes, the restarted one included, agree.
#[test]
fn a_crashed_origin_loses_nothing_the_others_acknowledged() {
    let (mut counts, mut net, mut victims_acked) = (Counts::default(), Net::default(), 0);
    let mut superseded = 0;
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
        retry_lanes: None,
    };
    for_each_seed(16, |seed| {
        let mut c = Cluster::new(seed, jitter(), &cfg, 4);
        let mix = Mix::default();
        let crash_at = ms(80) + c.w.duration_between(Duration::ZERO, ms(80));
        c.run_workload(crash_at, (Duration::ZERO, ms(1)), &mix);
        let victim = {
            let w = c.world.borrow();
            w.oracle.acked.last().map_or(NodeId(0), |a| a.origin)
        };
        c.crash(victim);
        let survivors: Vec<NodeId> = c.up();
        let check = |c: &Cluster, when: &str| {
            let w = c.world.borrow();
            for a in &w.oracle.acked {
                for &n in &survivors {
                    if !holds(&c.sim, &w, n, &a.change) {
                        c.sim.fail(format_args!(
                            "{when}: {n} lacks {:?}, acknowledged to {} at {:?}",
                            a.change, a.origin, a.at
                        ));
                    }
                }
            }
        };
        check(&c, "at the crash");
        c.run_workload(c.sim.now() + ms(5), (Duration::ZERO, ms(1)), &mix);
        c.forget(victim);
        c.run_workload(c.sim.now() + ms(100), (Duration::ZERO, ms(1)), &mix);
        check(&c, "after the failover");
        superseded += c.world.borrow().oracle.superseded;
        victims_acked += c
            .world
            .borrow()
            .oracle
            .acked
            .iter()
            .filter(|a| a.origin == victim && matches!(a.change, Change::Version(..)))
            .count();
        c.restart(victim);
        c.run_workload(c.sim.now() + ms(100), (Duration::ZERO, ms(1)), &mix);
        c.settle(ms(100));
        check(&c, "at the end");
        c.repair();
        c.assert_converged();
        counts += &c.counts;
        net += &c.net();
    });
    eprintln!(
        "crash: {victims_acked} acknowledged changes of killed nodes, {superseded} unacknowledged \
         versions lost with them and made again, {counts:?}, {net:?}"
    );
    if !replaying() {
        assert!(victims_acked > 100 && counts.failovers > 0);
    }
}

// ---- 4. duplication and reordering ----

/// Each node's receive path duplicates 15 % of messages and holds back 15 % for up to 30 ms
/// (so CREATED, DELTA, CHANGE-ID and EXPIRED of one session arrive out of order and twice, as
/// Tomcat's dispatch threads and retries can deliver them). After every step: no copy ever
/// shows a version or a value older than one it showed before, nor a state its origin did not
/// make at that version. At the end every copy is at least at the last acknowledged version,
/// and no attribute value is older than in that acknowledged state.
#[test]
fn duplicated_and_reordered_messages_never_leave_a_stale_attribute() {
    reorder(20, 0);
}

/// The same with changes of id. A CHANGE-ID overtaken by a DELTA of the new id (the replica
/// asks for the new id and gets it at version n+1) then arrives and moves the replica's old
/// copy (version n) over the new one: the version goes back and attributes go stale.
#[test]
fn duplicated_and_reordered_messages_with_changes_of_id_never_leave_a_stale_attribute() {
    reorder(20, 1);
}

fn reorder(seeds: u64, change_id: u64) {
    let (mut counts, mut net, mut compared) = (Counts::default(), Net::default(), 0);
    let cfg = DeltaSimConfig {
        chaos: Some(Chaos {
            duplicate: 0.15,
            delay: 0.15,
            max_delay: ms(30),
        }),
        ..DeltaSimConfig::default()
    };
    for_each_seed(seeds, |seed| {
        let n = 3 + (seed % 2) as usize;
        let mut c = Cluster::new(seed, jitter(), &cfg, n);
        let mix = Mix {
            change_id,
            ..Mix::default()
        };
        c.run_workload(ms(250), (Duration::ZERO, ms(2)), &mix);
        c.settle(secs(10));
        let w = c.world.borrow();
        // The last acknowledged version of each live session (along its chain of ids).
        for s in c.live() {
            let id = &c.sessions[s].id;
            let last = w
                .oracle
                .acked
                .iter()
                .filter_map(|a| match &a.change {
                    Change::Version(aid, v) if w.oracle.chain(aid).contains(id) => {
                        Some((aid.clone(), *v))
                    }
                    _ => None,
                })
                .max_by_key(|(_, v)| *v);
            let Some((aid, v)) = last else { continue };
            let Some(acked_state) = w.oracle.state(&aid, v) else {
                c.sim
                    .fail(format_args!("no origin state for acked {aid} v{v}"));
            };
            for node in c.up() {
                let Some((have, ref attrs)) = c.sim.node(node).copy(id) else {
                    c.sim
                        .fail(format_args!("{node} lacks {id}, acknowledged at v{v}"));
                };
                if have < v {
                    c.sim.fail(format_args!(
                        "{node} has {id} at v{have}, acknowledged at v{v}"
                    ));
                }
                for (name, bytes) in acked_state {
                    let old = Val::decode(bytes).map(|x| x.counter);
                    let now = attrs
                        .get(name)
                        .and_then(|b| Val::decode(b))
                        .map(|x| x.counter);
                    let ok = match (old, now) {
                        (Some(o), Some(n)) => n >= o,
                        // Removed since: only by a newer version.
                        (Some(_), None) => have > v,
                        _ => true,
                    };
                    if !ok {
                        c.sim.fail(format_args!(
                            "{node} shows {id}.{name} older than acknowledged: {} vs {}",
                            show(attrs),
                            show(acked_state)
                        ));
                    }
                    compared += 1;
                }
            }
        }
        drop(w);
        c.assert_converged();
        counts += &c.counts;
        net += &c.net();
    });
    eprintln!("reorder: {compared} acknowledged values compared, {counts:?}, {net:?}");
    if !replaying() {
        assert!(net.duplicated > 500 && net.delayed > 500 && net.resyncs > 50);
        assert!(compared > 500);
    }
}

// ---- 5. expiry ----

/// Sessions with a 2 s max inactive interval; each node's reaper runs every 250 ms. Messages
/// are duplicated and held back for up to 3 s, so CREATED and DELTA copies arrive after the
/// session expired. Every node ends without any session, every node that held a session
/// reports it destroyed exactly once, and nothing late brings one back (`ended-stays-ended`,
/// after every step).
#[test]
fn expiry_happens_once_on_every_node_and_nothing_late_revives_a_session() {
    let (mut net, mut destroyed, mut sessions) = (Net::default(), 0, 0);
    let cfg = DeltaSimConfig {
        core: DeltaConfig {
            max_inactive: secs(2),
            ..DeltaConfig::default()
        },
        reaper: Some(ms(250)),
        chaos: Some(Chaos {
            duplicate: 0.2,
            delay: 0.2,
            max_delay: secs(3),
        }),
        two_lanes: false,
        rebind: Default::default(),
        shell_ticks: None,
        retry_lanes: None,
    };
    for_each_seed(16, |seed| {
        let n = 3 + (seed % 2) as usize;
        let mut c = Cluster::new(seed, jitter(), &cfg, n);
        // No change of id under reordering (see the ignored reorder test), and sticky
        // sessions: with messages held back longer than the max inactive interval, a node that
        // served a session before does not hear that another serves it now, and expires it
        // early (see the ignored stale-primary test).
        let mix = Mix {
            invalidate: 0,
            change_id: 0,
            switch: 0.0,
            ..Mix::default()
        };
        // Sessions made now live 2 s; some are shortened to 1 s by their first request.
        for _ in 0..10 {
            let n = NodeId(c.w.below(n as u64) as usize);
            c.create_on(n, &[Op::Set("a"), Op::MaxInactive(secs(1))]);
        }
        c.run_workload(ms(300), (Duration::ZERO, ms(3)), &mix);
        c.settle(secs(12));
        let w = c.world.borrow();
        for node in c.up() {
            let held = c.sim.node(node).core().store().len();
            if held > 0 {
                c.sim
                    .fail(format_args!("{node} still holds {held} sessions"));
            }
            let j = &c.sim.node(node).journal;
            for id in &j.held_ever {
                let times = j
                    .events
                    .iter()
                    .filter(|(_, e)| *e == crate::session::SessionEvent::Destroyed(id.clone()))
                    .count();
                let renamed = w.oracle.renamed.contains_key(id);
                // A renamed id ends by the change of id (or, if the change came before the
                // session, as a stray copy: see the ignored change-of-id test).
                let ok = if renamed { times <= 1 } else { times == 1 };
                if !ok {
                    c.sim.fail(format_args!(
                        "{node} reported {id} destroyed {times} times (renamed: {renamed})"
                    ));
                }
                destroyed += times;
            }
        }
        for l in &c.sessions {
            assert!(w.oracle.ended.contains(&l.id), "{} never expired", l.id);
        }
        sessions += c.sessions.len();
        drop(w);
        net += &c.net();
    });
    eprintln!("expiry: {sessions} sessions, {destroyed} destroyed events, {net:?}");
    if !replaying() {
        assert!(
            net.after_end > 20,
            "late messages should reach ended sessions: {net:?}"
        );
    }
}

// ---- 6. the Tomcat race ----

/// Tomcat's DeltaManager sends CREATED at `createSession` and the attributes as a separate
/// DELTA at the end of the request, through asynchronous dispatch threads that can reorder them;
/// a DELTA for an unknown session is dropped, so the replica has the session without the
/// attribute (Tomcat 10.1 lost the attribute in about 27 % of trials of this scenario). Here
/// the session goes out whole at the end of the request. 1,000 sessions (50 per seed), each
/// created with an attribute in one request, half of them changed again within 2 ms, with
/// messages duplicated and held back: every copy anywhere has the attribute at every step, never
/// stale, and every node ends with every session and its latest value.
#[test]
fn a_session_created_with_an_attribute_in_one_request_never_lacks_it_on_a_replica() {
    let (mut total, mut net) = (0, Net::default());
    let cfg = DeltaSimConfig {
        chaos: Some(Chaos {
            duplicate: 0.1,
            delay: 0.3,
            max_delay: ms(5),
        }),
        ..DeltaSimConfig::default()
    };
    for_each_seed(20, |seed| {
        let mut c = Cluster::new(seed, jitter(), &cfg, 3);
        let mut cursor: BTreeMap<NodeId, usize> = BTreeMap::new();
        c.sim
            .invariant("created-attribute-is-never-missing", move |sim| {
                for n in sim.node_ids() {
                    let node = sim.node(n);
                    let j = &node.journal;
                    let from = cursor.insert(n, j.touched.len()).unwrap_or(0);
                    for (_, id) in &j.touched[from..] {
                        if let Some((v, attrs)) = node.copy(id) {
                            if !attrs.contains_key("user") {
                                return Err(format!("{n} has {id} v{v} without its attribute"));
                            }
                        }
                    }
                }
                Ok(())
            });
        for _ in 0..50 {
            let t = c.sim.now() + c.w.duration_between(Duration::ZERO, ms(2));
            c.sim.run_until(t, |_| false);
            let n = NodeId(c.w.below(3) as usize);
            let Some(s) = c.create_on(n, &[Op::Set("user")]) else {
                c.sim.fail("create failed");
            };
            if c.w.chance(0.5) {
                let t = c.sim.now() + c.w.duration_between(Duration::ZERO, ms(2));
                c.sim.run_until(t, |_| false);
                let stay = Mix {
                    switch: 0.0,
                    ..Mix::default()
                };
                c.serve(s, &[Op::Set("user")], &stay);
            }
        }
        c.settle(secs(10));
        c.assert_converged();
        for s in c.live() {
            for n in c.up() {
                assert!(c.sim.node(n).copy(&c.sessions[s].id).is_some());
            }
        }
        total += c.sessions.len();
        net += &c.net();
    });
    eprintln!("created with attribute: {total} sessions, {net:?}");
    if !replaying() {
        assert_eq!(total, 1000);
        assert!(net.delayed > 100);
    }
}

// ---- 7. partitions ----

/// What one side holds of a session at the heal.
#[derive(Clone, Debug)]
enum SideCopy {
    Live(SessionState),
    Ended(u64),
    Renamed(SessionId),
    Absent,
}

/// What a partition run did, summed over seeds.
#[derive(Clone, Debug, Default)]
struct SplitCounts {
    /// Sessions live on both sides with different copies at the heal.
    diverged: u64,
    /// ... of which both sides had changed.
    changed_on_both: u64,
    /// ... which the application's merge made into a new copy.
    merged: u64,
    /// Live on one side only (made there during the split, or ended on the other).
    one_side_only: u64,
    /// Live copies found again under an id the other side renamed them to.
    renamed_across: u64,
    /// Ended on one side, live on the other: the live copy won / the end won.
    live_won: u64,
    end_won: u64,
    /// Sessions after the heal.
    sessions: u64,
}

impl Cluster {
    /// The network and the views split into `sides`; each manager hears who left.
    fn split(&mut self, sides: [&[NodeId]; 2]) {
        self.world.borrow_mut().split_brain = true;
        for &a in sides[0] {
            for &b in sides[1] {
                self.sim.fault(Fault::Partition(a, b));
            }
        }
        for side in sides {
            let set: BTreeSet<NodeId> = side.iter().copied().collect();
            for &n in side {
                self.world.borrow_mut().views.insert(n, set.clone());
            }
        }
        for n in self.up() {
            self.sim.call(n, |node, ctx| node.view_changed(ctx));
        }
    }

    /// The network heals and every member sees every other again.
    fn heal(&mut self) {
        self.sim.fault(Fault::HealAll);
        let all: BTreeSet<NodeId> = self.up().into_iter().collect();
        for &n in &all {
            self.world.borrow_mut().views.insert(n, all.clone());
        }
        for n in self.up() {
            self.sim.call(n, |node, ctx| node.view_changed(ctx));
        }
    }

    /// One request on `side`: a new session, or a change (sometimes an invalidation, and with
    /// `renames` a change of id once the side agrees on the session) of a session the side
    /// holds, on the side's node with the newest copy. Returns the id of a session it made or
    /// renamed.
    fn side_request(
        &mut self,
        side: &[NodeId],
        ids: &[SessionId],
        renames: bool,
    ) -> Option<SessionId> {
        let roll = self.w.below(10);
        if roll == 0 || ids.is_empty() {
            let n = side[self.w.below(side.len() as u64) as usize];
            let mut ops = self.change_ops();
            ops.retain(|op| matches!(op, Op::Set(_)));
            let mut served = Served::Missing;
            self.sim
                .call(n, |node, ctx| served = node.create(ctx, &ops));
            return match served {
                Served::Live(id) => Some(id),
                _ => None,
            };
        }
        let id = ids[self.w.below(ids.len() as u64) as usize].clone();
        let (v, n) = side
            .iter()
            .filter_map(|&n| self.version(n, &id).map(|v| (v, n)))
            .max_by_key(|(v, n)| (*v, std::cmp::Reverse(*n)))?;
        let agreed = side.iter().all(|&m| self.version(m, &id) == Some(v));
        let ops = match roll {
            1 => vec![Op::Invalidate],
            2 if renames && agreed => vec![Op::ChangeId, Op::Set("user")],
            _ => self.change_ops(),
        };
        let mut served = Served::Missing;
        self.sim
            .call(n, |node, ctx| served = node.request(ctx, &id, &ops));
        match served {
            Served::Live(new) if new != id => Some(new),
            _ => None,
        }
    }

    /// Every node of `side` holds the same copy of every session (as a side settles to), and
    /// that copy, by id.
    fn side_copies(&self, side: &[NodeId]) -> BTreeMap<SessionId, SideCopy> {
        let first = self.sim.node(side[0]);
        let mut out = BTreeMap::new();
        for id in first.core().store().ids() {
            if let Some(s) = first.core().session(id) {
                out.insert(id.clone(), SideCopy::Live(s.state().clone()));
            }
        }
        for (id, t) in first.core().store().tombstones() {
            let copy = match &t.renamed {
                Some(new) => SideCopy::Renamed(new.clone()),
                None => SideCopy::Ended(t.version),
            };
            out.entry(id.clone()).or_insert(copy);
        }
        for &n in &side[1..] {
            for (id, copy) in &out {
                let here = self.sim.node(n).core().session(id).map(|s| s.state());
                let same = match (copy, here) {
                    (SideCopy::Live(a), Some(b)) => {
                        (a.version, &a.attributes) == (b.version, &b.attributes)
                    }
                    (SideCopy::Live(_), None) => false,
                    // An end at the same version wherever it is known: the heal compares a
                    // copy from the other side with it on each member.
                    (SideCopy::Ended(v), None) => {
                        let t = self.sim.node(n).core().store().tombstone(id);
                        t.is_none_or(|t| t.renamed.is_some() || t.version == *v)
                    }
                    (_, here) => here.is_none(),
                };
                if !same {
                    self.sim.fail(format_args!(
                        "{n} disagrees with {} on {id} before the heal",
                        side[0]
                    ));
                }
            }
        }
        out
    }
}

fn brief(c: &SideCopy) -> String {
    match c {
        SideCopy::Live(s) => format!("live v{} accessed {}", s.version, s.last_accessed_ms),
        SideCopy::Ended(v) => format!("ended at v{v}"),
        SideCopy::Renamed(new) => format!("renamed to {new}"),
        SideCopy::Absent => "absent".into(),
    }
}

/// The copy the rule (or `merger`) predicts from the two sides' copies; `None`: ended.
fn predicted(
    a: &SideCopy,
    b: &SideCopy,
    merger: Option<&dyn SessionMerger>,
    counts: &mut SplitCounts,
) -> Option<(u64, BTreeMap<String, Vec<u8>>)> {
    let pick = |s: &SessionState| Some((s.version, s.attributes.to_map()));
    match (a, b) {
        (SideCopy::Live(x), SideCopy::Live(y)) => {
            if Stamp::of(x).same_contents(&Stamp::of(y)) {
                return pick(x);
            }
            counts.diverged += 1;
            let kept = reconcile(x, y, merger).unwrap_or_else(|| x.clone());
            if kept.version > x.version.max(y.version) {
                counts.merged += 1;
            }
            pick(&kept)
        }
        (SideCopy::Live(x), SideCopy::Ended(t)) | (SideCopy::Ended(t), SideCopy::Live(x)) => {
            if live_beats_end(x.version, *t) {
                counts.live_won += 1;
                pick(x)
            } else {
                counts.end_won += 1;
                None
            }
        }
        (SideCopy::Live(x), SideCopy::Absent) | (SideCopy::Absent, SideCopy::Live(x)) => {
            counts.one_side_only += 1;
            pick(x)
        }
        _ => None,
    }
}

type Holdings = BTreeMap<SessionId, (u64, BTreeMap<String, Vec<u8>>)>;

/// Node `n`'s live sessions: version and attributes.
fn holdings(c: &Cluster, n: NodeId) -> Holdings {
    let node = c.sim.node(n);
    node.core()
        .store()
        .ids()
        .filter_map(|id| node.copy(id).map(|(v, a)| (id.clone(), (v, a.clone()))))
        .collect()
}

/// What every node should hold after the heal, by the rule, from the two sides' copies.
fn predicted_all(
    ca: &BTreeMap<SessionId, SideCopy>,
    cb: &BTreeMap<SessionId, SideCopy>,
    at_split: &BTreeMap<SessionId, u64>,
    merger: Option<&dyn SessionMerger>,
    counts: &mut SplitCounts,
) -> Holdings {
    let all: BTreeSet<&SessionId> = ca.keys().chain(cb.keys()).collect();
    let mut want = BTreeMap::new();
    for id in all {
        let (x, y) = (
            ca.get(id).unwrap_or(&SideCopy::Absent),
            cb.get(id).unwrap_or(&SideCopy::Absent),
        );
        if let (SideCopy::Live(p), SideCopy::Live(q), Some(v)) = (x, y, at_split.get(id)) {
            if p.version > *v && q.version > *v {
                counts.changed_on_both += 1;
            }
        }
        if let Some(copy) = predicted(x, y, merger, counts) {
            want.insert(id.clone(), copy);
        }
    }
    want
}

/// With changes of id on both sides the copies are not predicted one by one; checked: every
/// node holds the same sessions, and every session live on a side at the heal lives on (under
/// its id or an id one side renamed it to) unless the other side ended it at a version as high.
fn converged_without_loss(
    c: &Cluster,
    sides: [&BTreeMap<SessionId, SideCopy>; 2],
    counts: &mut SplitCounts,
) -> Holdings {
    let up = c.up();
    let first = holdings(c, up[0]);
    for &n in &up[1..] {
        if holdings(c, n) != first {
            c.sim
                .fail(format_args!("{n} and {} differ after the heal", up[0]));
        }
    }
    let renamed = |id: &SessionId| {
        sides.iter().find_map(|s| match s.get(id) {
            Some(SideCopy::Renamed(new)) => Some(new.clone()),
            _ => None,
        })
    };
    for (i, side) in sides.iter().enumerate() {
        let other = sides[1 - i];
        for (id, copy) in side.iter() {
            let SideCopy::Live(st) = copy else { continue };
            // Under its id or a later one; or an end on the other side (of one of those ids)
            // won over it.
            let ended_there = |id: &SessionId| matches!(other.get(id), Some(SideCopy::Ended(v)) if !live_beats_end(st.version, *v));
            let mut cur = id.clone();
            let mut found = first.contains_key(&cur) || ended_there(&cur);
            for _ in 0..8 {
                if found {
                    break;
                }
                match renamed(&cur) {
                    Some(next) => {
                        counts.renamed_across += 1;
                        cur = next;
                        found = first.contains_key(&cur) || ended_there(&cur);
                    }
                    None => break,
                }
            }
            if !found {
                c.sim.fail(format_args!(
                    "{id}, live on side {i} at the heal ({}), is lost; the other side: {:?}",
                    brief(copy),
                    other.get(id).map(brief)
                ));
            }
        }
    }
    first
}

/// A 5-node cluster with sessions everywhere splits 3/2 at a quiet moment. Each side goes on
/// serving: new sessions, changes (also of sessions the other side changes too), some
/// invalidations, each side settling to one copy per session. Then the network heals and every
/// member sees every other again: their digests meet and every node converges on the copy the
/// rule predicts from the two sides' copies (`predicted`), with no session that lives on either
/// side lost unless an end on the other side came after its last use. Then requests go on, on
/// any node, and the cluster still converges (later deltas apply on the reconciled copies).
fn partition_and_heal(
    seeds: u64,
    merger: Option<Arc<dyn SessionMerger>>,
    renames: bool,
) -> SplitCounts {
    let mut counts = SplitCounts::default();
    for_each_seed(seeds, |seed| {
        let cfg = DeltaSimConfig::default();
        let mut c = Cluster::new(seed, jitter(), &cfg, 5);
        for n in c.up() {
            let m = merger.clone();
            c.sim.call(n, |node, _| node.core_mut().set_merger(m));
        }
        let mix = Mix {
            change_id: 0,
            max_live: 40,
            ..Mix::default()
        };
        c.run_workload(ms(100), (Duration::ZERO, ms(2)), &mix);
        c.settle(secs(10));
        c.assert_converged();
        let (a, b): (Vec<NodeId>, Vec<NodeId>) = (c.up()[..3].to_vec(), c.up()[3..].to_vec());
        let at_split: BTreeMap<SessionId, u64> = c
            .sim
            .node(a[0])
            .core()
            .store()
            .ids()
            .filter_map(|id| c.version(a[0], id).map(|v| (id.clone(), v)))
            .collect();
        c.split([&a, &b]);
        let mut ids: [Vec<SessionId>; 2] = [0, 1].map(|_| {
            c.live()
                .into_iter()
                .map(|s| c.sessions[s].id.clone())
                .collect()
        });
        let end = c.sim.now() + ms(100);
        while c.sim.now() < end {
            let side = c.w.below(2) as usize;
            let nodes = if side == 0 { &a } else { &b };
            if let Some(new) = c.side_request(nodes, &ids[side], renames) {
                // A renamed session is asked for by its new id only.
                let old = c.world.borrow().oracle.previous.get(&new).cloned();
                ids[side].retain(|id| Some(id) != old.as_ref());
                ids[side].push(new);
            }
            let t = c.sim.now() + c.w.duration_between(Duration::ZERO, ms(1));
            c.sim.run_until(t, |_| false);
        }
        c.settle(secs(10));
        let (ca, cb) = (c.side_copies(&a), c.side_copies(&b));
        c.heal();
        c.settle(secs(10));
        let want = if renames {
            converged_without_loss(&c, [&ca, &cb], &mut counts)
        } else {
            let want = predicted_all(&ca, &cb, &at_split, merger.as_deref(), &mut counts);
            for n in c.up() {
                let have = holdings(&c, n);
                if have != want {
                    let wrong: Vec<String> = want
                        .iter()
                        .filter(|(id, w)| have.get(*id) != Some(*w))
                        .map(|(id, w)| {
                            let h = have.get(id).map(|h| (h.0, show(&h.1)));
                            format!("{id}: want v{} {}, has {h:?}", w.0, show(&w.1))
                        })
                        .chain(have.keys().filter(|id| !want.contains_key(*id)).map(|id| {
                            let sides = (ca.get(id).map(brief), cb.get(id).map(brief));
                            format!("{id}: should have ended; sides: {sides:?}")
                        }))
                        .take(5)
                        .collect();
                    c.sim.fail(format_args!(
                        "{n} after the heal:\n  {}",
                        wrong.join("\n  ")
                    ));
                }
            }
            want
        };
        counts.sessions += want.len() as u64;
        // Requests go on anywhere after the heal.
        c.sessions = want
            .keys()
            .map(|id| Logical {
                id: id.clone(),
                server: a[0],
                fate: Fate::Live,
            })
            .collect();
        c.run_workload(c.sim.now() + ms(50), (Duration::ZERO, ms(2)), &mix);
        c.settle(secs(10));
        c.assert_converged();
    });
    counts
}

#[test]
fn a_partition_heals_to_the_copies_the_rule_picks_on_every_node() {
    let counts = partition_and_heal(100, None, false);
    eprintln!("partition, default rule: {counts:?}");
    if !replaying() {
        assert!(counts.changed_on_both > 100 && counts.one_side_only > 100);
        assert_eq!(counts.merged, 0);
        assert!(counts.live_won > 0 && counts.end_won > 0);
    }
}

/// Changes of id on both sides too (a login during the split): every node converges, and no
/// session that lived on either side is lost.
#[test]
fn a_partition_with_changes_of_id_converges_and_loses_no_session() {
    let counts = partition_and_heal(100, None, true);
    eprintln!("partition with changes of id: {counts:?}");
    if !replaying() {
        assert!(counts.renamed_across > 20);
    }
}

#[test]
fn a_partition_heals_to_the_applications_merge_on_every_node() {
    let counts = partition_and_heal(100, Some(Arc::new(UnionMerger)), false);
    eprintln!("partition, application's merge: {counts:?}");
    if !replaying() {
        assert!(counts.changed_on_both > 100 && counts.merged > 100);
    }
}

// ---- replay ----

/// What a run did, in counts.
fn fingerprint(c: &Cluster) -> String {
    let journals: Vec<String> = c
        .sim
        .node_ids()
        .map(|n| {
            let j = &c.sim.node(n).journal;
            format!(
                "{:?} {:?} {} {} {} {} {}",
                j.sent,
                j.received,
                j.resyncs,
                j.duplicated,
                j.delayed,
                j.touched.len(),
                j.events.len()
            )
        })
        .collect();
    format!(
        "{} {:?} {:?} {:?}",
        c.sim.steps(),
        c.sim.stats(),
        c.counts,
        journals
    )
}

/// A seed replays the same schedule: a run with a late joiner, a reaper and the shuffler,
/// twice, makes the same steps, network events, requests and messages, byte for byte (the
/// trace hash): session ids come from the seed and the core lists sessions in id order.
#[test]
fn a_seed_replays_the_same_schedule() {
    let run = |seed| {
        let cfg = DeltaSimConfig {
            core: DeltaConfig {
                max_inactive: ms(300),
                send_all_sessions_size: 3,
                ..DeltaConfig::default()
            },
            reaper: Some(ms(50)),
            chaos: Some(Chaos {
                duplicate: 0.1,
                delay: 0.1,
                max_delay: ms(10),
            }),
            two_lanes: false,
            rebind: Default::default(),
            shell_ticks: None,
            retry_lanes: None,
        };
        let mix = Mix {
            change_id: 0,
            ..Mix::default()
        };
        let mut c = Cluster::new(seed, jitter(), &cfg, 3);
        c.run_workload(ms(60), (Duration::ZERO, ms(1)), &mix);
        c.join();
        c.run_workload(ms(150), (Duration::ZERO, ms(1)), &mix);
        c.settle(secs(1));
        (fingerprint(&c), c.sim.trace_hash())
    };
    for_each_seed(3, |seed| assert_eq!(run(seed), run(seed)));
}

// ---- bugs found: pure scenarios on DeltaCore ----

const A: MemberId = MemberId([1; 16]);
const B: MemberId = MemberId([2; 16]);
const C: MemberId = MemberId([3; 16]);
const MEMBERS: [MemberId; 3] = [A, B, C];

/// Delivers every message (and every answer) between cores `nodes` (member i is `MEMBERS[i]`),
/// in order, until none is left.
fn deliver_all(first: Vec<(MemberId, Vec<Out>)>, nodes: &mut [&mut DeltaCore]) {
    let mut queue: VecDeque<(MemberId, MemberId, SessionMessage)> = VecDeque::new();
    let push = |q: &mut VecDeque<_>, from: MemberId, outs: Vec<Out>, n: usize| {
        for o in outs {
            match o.dest {
                Dest::All => {
                    for &to in MEMBERS[..n].iter().filter(|m| **m != from) {
                        q.push_back((from, to, o.msg.clone()));
                    }
                }
                Dest::Member(to) => q.push_back((from, to, o.msg)),
            }
        }
    };
    let n = nodes.len();
    for (from, outs) in first {
        push(&mut queue, from, outs, n);
    }
    while let Some((from, to, msg)) = queue.pop_front() {
        let i = MEMBERS.iter().position(|m| *m == to).unwrap_or(0);
        let (outs, _) = nodes[i].handle(from, &msg);
        push(&mut queue, to, outs, n);
    }
}

fn same_copies(nodes: &[&DeltaCore], id: &SessionId) -> bool {
    let copies: Vec<_> = nodes
        .iter()
        .map(|n| {
            n.session(id)
                .map(|s| (s.version(), s.state().attributes.clone()))
        })
        .collect();
    copies.windows(2).all(|w| w[0] == w[1])
}

/// Three cores that all have session `id` (created on `a` with attribute "x" = 0).
fn three_with_a_session() -> (DeltaCore, DeltaCore, DeltaCore, SessionId) {
    let mut a = DeltaCore::new(DeltaConfig::default(), "a");
    let mut b = DeltaCore::new(DeltaConfig::default(), "b");
    let mut c = DeltaCore::new(DeltaConfig::default(), "c");
    let id = a.create(EPOCH_MS).unwrap();
    a.session_mut(&id).unwrap().set("x", &0u32).unwrap();
    let outs = a.end_request(&id, EPOCH_MS);
    deliver_all(vec![(A, outs)], &mut [&mut a, &mut b, &mut c]);
    (a, b, c, id)
}

/// Two requests for one session served at the same time by two nodes (a load balancer without
/// stickiness, or a user with two tabs) both make version n+1 from version n. Each node sees
/// the other's delta as stale, a third keeps whichever came first, and the copies stay
/// different at the same version for good; a later delta from one then applies on top of the
/// other's different state (its base version matches), mixing them. The version has no origin
/// or epoch (tribes-inventory §7: "monotonically increasing per-session version (+ primary
/// epoch)").
#[test]
#[ignore = "bug: concurrent changes from two nodes fork a session's history at one version; copies never reconcile and later deltas apply on a mismatched base"]
fn concurrent_changes_on_two_nodes_leave_the_copies_equal() {
    let (mut a, mut b, mut c, id) = three_with_a_session();
    a.session_mut(&id).unwrap().set("x", &1u32).unwrap();
    let from_a = a.end_request(&id, EPOCH_MS + 10);
    b.session_mut(&id).unwrap().set("y", &2u32).unwrap();
    let from_b = b.end_request(&id, EPOCH_MS + 10);
    deliver_all(
        vec![(A, from_a), (B, from_b)],
        &mut [&mut a, &mut b, &mut c],
    );
    // Whatever the resolution (merge, or one wins everywhere), the copies must agree.
    assert!(
        same_copies(&[&a, &b, &c], &id),
        "a {:?} / b {:?} / c {:?}",
        a.session(&id).map(|s| s.state().attributes.clone()),
        b.session(&id).map(|s| s.state().attributes.clone()),
        c.session(&id).map(|s| s.state().attributes.clone())
    );
}

/// The same fork after a failover: `a` serves a request (version 2) whose asynchronous DELTA
/// reaches `b` but not `c`, then dies. The load balancer sends the user to `c` (version 1),
/// which makes its own version 2. `b` ignores it as stale; `b` and `c` now differ at the same
/// version, and `c`'s next delta (base 2) applies on `b`'s different version 2.
#[test]
#[ignore = "bug: failover to a replica that missed the last async delta forks the session: b keeps a's v2, c makes its own v2, later deltas from c apply on b's different v2"]
fn failover_to_a_replica_that_missed_the_last_delta_leaves_the_copies_equal() {
    let (mut a, mut b, mut c, id) = three_with_a_session();
    a.session_mut(&id).unwrap().set("x", &1u32).unwrap();
    let outs = a.end_request(&id, EPOCH_MS + 10);
    for o in &outs {
        b.handle(A, &o.msg); // reaches b; the copy to c is lost as a dies
    }
    drop(a);
    c.session_mut(&id).unwrap().set("y", &2u32).unwrap();
    let outs = c.end_request(&id, EPOCH_MS + 20);
    let mut none = DeltaCore::new(DeltaConfig::default(), "dead");
    deliver_all(vec![(C, outs)], &mut [&mut none, &mut b, &mut c]);
    c.session_mut(&id).unwrap().set("z", &3u32).unwrap();
    let outs = c.end_request(&id, EPOCH_MS + 30);
    deliver_all(vec![(C, outs)], &mut [&mut none, &mut b, &mut c]);
    assert!(
        same_copies(&[&b, &c], &id),
        "b {} / c {}",
        show(&b.session(&id).unwrap().state().attributes.to_map()),
        show(&c.session(&id).unwrap().state().attributes.to_map())
    );
}

/// Tomcat expires a copy served elsewhere locally only (at 2 × maxInactiveInterval, in case its
/// primary died). `DeltaCore::expire` runs `invalidate` for such copies too, which broadcasts
/// EXPIRED: a replica whose access time is old because two ACCESSED messages were lost (a
/// reset, a short partition) ends the session on its primary, which is serving it right now.
#[test]
fn a_replica_reaper_does_not_end_a_session_its_primary_keeps_using() {
    let cfg = DeltaConfig {
        max_inactive: secs(10),
        ..DeltaConfig::default()
    };
    let mut a = DeltaCore::new(cfg.clone(), "a");
    let mut b = DeltaCore::new(cfg, "b");
    let id = a.create(EPOCH_MS).unwrap();
    deliver_all(
        vec![(A, a.end_request(&id, EPOCH_MS))],
        &mut [&mut a, &mut b],
    );
    // The user comes back every 4 s; the ACCESSED at 8 s and 16 s are lost.
    for t in [4_000, 8_000, 12_000, 16_000, 20_000] {
        let outs = a.end_request(&id, EPOCH_MS + t);
        assert!(outs
            .iter()
            .all(|o| matches!(o.msg, SessionMessage::Accessed { .. })));
    }
    let (outs, _) = b.expire(EPOCH_MS + 20_001);
    deliver_all(vec![(B, outs)], &mut [&mut a, &mut b]);
    assert!(
        a.session(&id).is_some(),
        "the primary lost a session used 1 ms ago"
    );
}

/// The node that served a session last believes it is the primary until it hears that another
/// node served it. If that one asynchronous message (ACCESSED or DELTA) is lost, the old node
/// expires the session at its own last request plus the max inactive interval and sends
/// EXPIRED, which ends the session on the node serving it now, seconds after its last use.
/// (Tomcat's `DeltaSession` primary flag has the same weakness; EXPIRED carrying the expirer's
/// access time, refused by a member that saw a later one, would close it.) The simulation finds
/// it under resets (`no-session-expires-while-in-use`).
#[test]
#[ignore = "bug: a node whose 'primary' belief is stale (one lost ACCESSED/DELTA after the session moved) expires the session early and its EXPIRED ends it on the node serving it"]
fn a_stale_primary_does_not_expire_a_session_served_elsewhere_since() {
    let cfg = DeltaConfig {
        max_inactive: secs(10),
        ..DeltaConfig::default()
    };
    let mut a = DeltaCore::new(cfg.clone(), "a");
    let mut b = DeltaCore::new(cfg, "b");
    let id = a.create(EPOCH_MS).unwrap();
    deliver_all(
        vec![(A, a.end_request(&id, EPOCH_MS))],
        &mut [&mut a, &mut b],
    );
    // The user's next request goes to b; its ACCESSED to a is lost.
    let _lost = b.end_request(&id, EPOCH_MS + 1_000);
    let (outs, _) = a.expire(EPOCH_MS + 10_001);
    deliver_all(vec![(A, outs)], &mut [&mut a, &mut b]);
    assert!(
        b.session(&id).is_some(),
        "b lost a session it served 9 s ago (max inactive 10 s)"
    );
}

/// A CHANGE-ID for a session this node does not know yet (its CREATED overtaken, duplicated
/// late, or lost and then answered by a third node's STATE) asks for the new id but does not
/// bury the old one, so the late CREATED (or STATE) of the old id is adopted: the node then
/// holds the session under the old id too, which the change of id was meant to retire
/// (session fixation protection), until its reaper ends it.
#[test]
fn a_change_of_id_before_the_session_arrives_still_retires_the_old_id() {
    let mut a = DeltaCore::new(DeltaConfig::default(), "a");
    let mut b = DeltaCore::new(DeltaConfig::default(), "b");
    let old = a.create(EPOCH_MS).unwrap();
    a.session_mut(&old).unwrap().set("x", &1u32).unwrap();
    let created = a.end_request(&old, EPOCH_MS);
    let (new, rename, _) = a.change_id(&old).unwrap();
    // The change of id arrives first; b asks a for the new id.
    let (ask, _) = b.handle(A, &rename[0].msg);
    deliver_all(vec![(B, ask)], &mut [&mut a, &mut b]);
    assert!(b.session(&new).is_some());
    // Then the overtaken CREATED of the old id.
    b.handle(A, &created[0].msg);
    assert!(
        b.session(&old).is_none(),
        "b holds the retired id {old} again"
    );
}

/// The CHANGE-ID from one node overtakes the DELTA another node sent just before (the session
/// moved between them; messages from two nodes are not ordered). The replica moves its older
/// copy to the new id and buries the old id; the DELTA, addressed to the old id, is then
/// ignored as "session has ended". Nothing later shows the gap unless the session changes
/// again, and a sync-ack sender counts the DELTA as applied there.
#[test]
fn a_change_of_id_does_not_drop_a_delta_of_another_node_still_in_flight() {
    let (mut a, mut b, mut c, old) = three_with_a_session();
    a.session_mut(&old).unwrap().set("x", &1u32).unwrap();
    let delta = a.end_request(&old, EPOCH_MS + 10);
    b.handle(A, &delta[0].msg); // reaches b; still on its way to c
                                // The user's next request goes to b, which changes the id (after a login).
    let (new, rename, _) = b.change_id(&old).unwrap();
    let after = b.end_request(&new, EPOCH_MS + 20);
    deliver_all(vec![(B, rename), (B, after)], &mut [&mut a, &mut b, &mut c]);
    // Now the overtaken DELTA reaches c.
    deliver_all(vec![(A, delta)], &mut [&mut a, &mut b, &mut c]);
    assert!(
        same_copies(&[&a, &b, &c], &new),
        "b {} v{} / c {} v{}",
        show(&b.session(&new).unwrap().state().attributes.to_map()),
        b.session(&new).unwrap().version(),
        show(&c.session(&new).unwrap().state().attributes.to_map()),
        c.session(&new).unwrap().version()
    );
}

/// A DELTA of the new id overtakes the CHANGE-ID (reordering, or another node's DELTA): the
/// replica asks for the new id and gets it at version 2. The CHANGE-ID then arrives and moves
/// the replica's old copy (version 1) over it: version and attribute go back.
#[test]
fn a_late_change_of_id_does_not_replace_a_newer_copy_of_the_new_id() {
    let mut a = DeltaCore::new(DeltaConfig::default(), "a");
    let mut b = DeltaCore::new(DeltaConfig::default(), "b");
    let old = a.create(EPOCH_MS).unwrap();
    a.session_mut(&old).unwrap().set("x", &0u32).unwrap();
    deliver_all(
        vec![(A, a.end_request(&old, EPOCH_MS))],
        &mut [&mut a, &mut b],
    );
    let (new, rename, _) = a.change_id(&old).unwrap();
    a.session_mut(&new).unwrap().set("x", &1u32).unwrap();
    let delta = a.end_request(&new, EPOCH_MS + 10);
    deliver_all(vec![(A, delta)], &mut [&mut a, &mut b]); // resync: b gets the new id at v2
    assert_eq!(b.session(&new).unwrap().version(), 2);
    deliver_all(vec![(A, rename)], &mut [&mut a, &mut b]);
    let copy = b.session(&new).unwrap();
    assert_eq!(
        (copy.version(), copy.get::<u32>("x").unwrap()),
        (2, Some(1)),
        "the late CHANGE-ID moved the old copy over the newer one"
    );
}

/// A joiner asks the donor for every session while another member's DELTA is still on its way
/// to the donor and that member does not know the joiner yet (membership news takes time: up
/// to `dropTime`/heartbeats in a real cluster). The donor's snapshot misses the change and the
/// change is never sent to the joiner; when that member learns of the joiner, its digest shows
/// the newer version and the joiner asks for it.
#[test]
fn a_change_in_flight_to_the_donor_during_its_snapshot_reaches_the_joiner() {
    let mut donor = DeltaCore::new(DeltaConfig::default(), "a");
    let mut joiner = DeltaCore::new(DeltaConfig::default(), "b");
    let mut other = DeltaCore::new(DeltaConfig::default(), "c");
    other.set_members(vec![A], EPOCH_MS);
    let id = other.create(EPOCH_MS).unwrap();
    other.session_mut(&id).unwrap().set("x", &1u32).unwrap();
    for o in other.end_request(&id, EPOCH_MS) {
        donor.handle(C, &o.msg);
    }
    other.session_mut(&id).unwrap().set("x", &2u32).unwrap();
    let in_flight = other.end_request(&id, EPOCH_MS + 1); // to the donor only
    let ask = joiner.begin_state_transfer(A);
    let (chunks, _) = donor.handle(B, &ask.msg);
    for o in in_flight {
        donor.handle(C, &o.msg);
    }
    for o in chunks {
        joiner.handle(A, &o.msg);
    }
    assert!(joiner.is_ready());
    assert_eq!(
        joiner.session(&id).unwrap().version(),
        1,
        "the snapshot missed v2"
    );
    let digest = other.set_members(vec![A, B], EPOCH_MS + 2);
    deliver_all(
        vec![(C, digest)],
        &mut [&mut donor, &mut joiner, &mut other],
    );
    assert!(
        same_copies(&[&donor, &joiner, &other], &id),
        "joiner at v{} while the others are at v{}",
        joiner.session(&id).unwrap().version(),
        donor.session(&id).unwrap().version()
    );
}
