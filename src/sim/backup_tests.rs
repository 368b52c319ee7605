//! Simulation tests of the BackupManager core (`BackupCore`, `placement`): clusters of 5 to 8
//! [`BackupNode`]s with about a thousand sessions each, driven by a seeded workload of requests
//! (create, set and remove attributes, read, change of id, invalidate, and requests that reach
//! another member than the session's primary, which takes it over or fetches it), under latency
//! jitter, crashes and joins. The invariants of `backup_node` are checked after every step; at
//! quiescence [`Cluster::assert_settled`] checks that every session has exactly one primary and
//! its backups, all at one version, and that nothing acknowledged was lost.
//!
//! The user behaves as a sync-ack client does: a session's next request comes only once its last
//! request's messages (changes, and access refreshes) are acknowledged (or failed).
//!
//! The workload keeps clear of the open bugs these tests found (each has an ignored test at the
//! end of this file, most with an ignored simulation that hits it):
//! - No request moves a session (take-over or fetch) from shortly before a crash or join until
//!   failover and re-placement are acknowledged ([`Cluster::calm`]): a move racing a membership
//!   change leaves stray copies, drops a new primary's backup, or leaves no primary.
//! - With two backups, the members crash at a quiet moment: with deltas in flight, a backup
//!   keeps a newer unacknowledged delta and diverges from the new primary.
//! - After a change of id a session keeps its old id's backups: checks accept that list (as many
//!   members, distinct) instead of the new id's placement, and count the extra moves it causes.

use super::backup_node::{check_backup, BackupNode, BackupSimConfig, SharedWorld, World};
use super::delta_node::show;
use super::delta_node::{Op, Served, EPOCH_MS};
use super::lane_node::sim_member;
use super::*;
use crate::member::MemberId;
use crate::session::backup::{placement, BackupConfig, BackupCore, BackupMessage, Out};
use crate::session::reconcile::{fingerprint, live_beats_end, reconcile};
use crate::session::{Dest, Session, SessionEvent, SessionId, SessionMerger, SessionState, Stamp};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn us(n: u64) -> Duration {
    Duration::from_micros(n)
}

/// How long a member waits for answers to a fetch (Tomcat's `rpcTimeout` is 15 s; virtual time
/// here is short).
const RPC_TIMEOUT: Duration = Duration::from_millis(50);

/// Attribute names the workload uses.
const NAMES: [&str; 4] = ["a", "b", "c", "d"];

/// Latency jitter from 20 µs to 3 ms per chunk, and small chunks, so messages on different
/// connections overtake each other and frames arrive in pieces.
fn jitter() -> Faults {
    Faults {
        latency: (us(20), ms(3)),
        max_chunk: 512,
        ..Faults::default()
    }
}

/// Replaying one seed: counts about the whole seed list are not asserted.
#[path = "replay_backup.rs"]
pub(super) mod replay;

#[path = "lanes_backup.rs"]
mod lanes;

/// Kill -9 and restart of a random member in a loop, with sticky users.
#[path = "faults_backup.rs"]
mod faults;

/// The members' views come from the real failure detector (see `detected`).
#[path = "detected_backup_tests.rs"]
mod detected;

fn replaying() -> bool {
    std::env::var(SEED_ENV).is_ok()
}

fn cfg(backups: usize) -> BackupSimConfig {
    BackupSimConfig {
        core: BackupConfig {
            backups,
            // Short enough that reads send ACCESSED now and then (after 50 ms of a session's
            // use); there is no reaper, so nothing expires.
            max_inactive: ms(100),
            ..BackupConfig::default()
        },
        reaper: None,
        rpc_timeout: RPC_TIMEOUT,
        two_lanes: false,
        rebind: Default::default(),
        retry_lanes: None,
    }
}

/// Relative weights of request kinds.
#[derive(Clone, Debug)]
struct Mix {
    create: u64,
    change: u64,
    read: u64,
    change_id: u64,
    invalidate: u64,
    /// A request that reaches another member than the session's primary.
    switch: u64,
    /// Sessions created at most.
    sessions: usize,
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            create: 10,
            change: 8,
            read: 3,
            change_id: 1,
            invalidate: 1,
            switch: 1,
            sessions: 1000,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Live,
    Ended,
}

/// A user's session as the workload follows it.
#[derive(Clone, Debug)]
struct Logical {
    /// The first id (the oracle's key for the session).
    root: SessionId,
    id: SessionId,
    server: NodeId,
    fate: Fate,
    /// Request numbers the user waits for, on this node.
    ticket: (NodeId, Vec<u64>),
    /// Requested on this other node, which is fetching the session since then; the request's
    /// ops.
    moving: Option<(NodeId, Duration, Vec<Op>)>,
    /// Moved to `server` and not checked yet.
    check_move: bool,
    /// The cluster's membership epoch when the move began.
    move_epoch: u64,
}

#[derive(Clone, Debug, Default)]
struct Counts {
    creates: u64,
    changes: u64,
    reads: u64,
    change_ids: u64,
    invalidations: u64,
    fetches: u64,
    moves_checked: u64,
    fetch_failed: u64,
    failovers: u64,
    /// Requests a user could not make (no primary reachable yet).
    waited: u64,
}

impl std::ops::AddAssign<&Counts> for Counts {
    fn add_assign(&mut self, o: &Counts) {
        self.creates += o.creates;
        self.changes += o.changes;
        self.reads += o.reads;
        self.change_ids += o.change_ids;
        self.invalidations += o.invalidations;
        self.fetches += o.fetches;
        self.moves_checked += o.moves_checked;
        self.fetch_failed += o.fetch_failed;
        self.failovers += o.failovers;
        self.waited += o.waited;
    }
}

/// What the nodes sent, summed.
#[derive(Clone, Debug, Default)]
struct Traffic {
    /// Frames per kind.
    sent: BTreeMap<&'static str, u64>,
    bytes: u64,
    /// Request changes per (kind, members it went to).
    fanout: BTreeMap<(&'static str, usize), u64>,
    acked: u64,
    failed: u64,
    superseded: u64,
    late_acks: u64,
}

impl std::ops::AddAssign<&Traffic> for Traffic {
    fn add_assign(&mut self, o: &Traffic) {
        for (k, v) in &o.sent {
            *self.sent.entry(k).or_default() += v;
        }
        for (k, v) in &o.fanout {
            *self.fanout.entry(*k).or_default() += v;
        }
        self.bytes += o.bytes;
        self.acked += o.acked;
        self.failed += o.failed;
        self.superseded += o.superseded;
        self.late_acks += o.late_acks;
    }
}

impl Traffic {
    fn sent(&self, k: &str) -> u64 {
        self.sent.get(k).copied().unwrap_or(0)
    }
    fn changes(&self, k: &str) -> u64 {
        self.fanout
            .iter()
            .filter(|((kk, _), _)| *kk == k)
            .map(|(_, v)| v)
            .sum()
    }
}

/// How many members hold each session at quiescence: holders → sessions.
type Holders = BTreeMap<usize, u64>;

fn add_holders(into: &mut Holders, from: &Holders) {
    for (k, v) in from {
        *into.entry(*k).or_default() += v;
    }
}

struct Cluster {
    sim: Sim<BackupNode>,
    world: SharedWorld,
    cfg: BackupSimConfig,
    sessions: Vec<Logical>,
    live: Vec<usize>,
    moving: Vec<usize>,
    /// Moved sessions to check once settled.
    to_check: Vec<usize>,
    /// Membership changes so far (crashes, detections, joins).
    epoch: u64,
    /// The workload's own generator.
    w: SimRng,
    counts: Counts,
}

impl Cluster {
    /// `n` members that all see each other, invariants installed.
    fn new(seed: u64, faults: Faults, cfg: &BackupSimConfig, n: usize) -> Cluster {
        let world: SharedWorld = Rc::new(RefCell::new(World::default()));
        let all: BTreeSet<NodeId> = (0..n).map(NodeId).collect();
        for &id in &all {
            world.borrow_mut().views.insert(id, all.clone());
        }
        let mut sim = Sim::new(seed, faults);
        for _ in 0..n {
            let (c, w) = (cfg.clone(), world.clone());
            sim.add_node(move |id, rng| BackupNode::new(id, c, w, rng));
        }
        Cluster::around(sim, world, cfg)
    }

    /// A cluster of `sim`'s nodes, which share `world`; installs the invariants.
    fn around(mut sim: Sim<BackupNode>, world: SharedWorld, cfg: &BackupSimConfig) -> Cluster {
        check_backup(&mut sim, &world);
        let w = sim.rng().fork();
        Cluster {
            sim,
            world,
            cfg: cfg.clone(),
            sessions: Vec::new(),
            live: Vec::new(),
            moving: Vec::new(),
            to_check: Vec::new(),
            epoch: 0,
            w,
            counts: Counts::default(),
        }
    }

    fn k(&self) -> usize {
        self.cfg.core.backups
    }

    fn up(&self) -> Vec<NodeId> {
        self.sim.node_ids().filter(|n| self.sim.is_up(*n)).collect()
    }

    /// A new member: it sees every up node and they see it (the membership layer's join).
    fn join(&mut self) -> NodeId {
        self.epoch += 1;
        let id = NodeId(self.sim.node_ids().count());
        let up: BTreeSet<NodeId> = self.up().into_iter().collect();
        {
            let mut w = self.world.borrow_mut();
            let mut all = up.clone();
            all.insert(id);
            w.views.insert(id, all);
            for n in &up {
                w.views.entry(*n).or_default().insert(id);
            }
        }
        let (c, w) = (self.cfg.clone(), self.world.clone());
        let got = self
            .sim
            .add_node(move |id, rng| BackupNode::new(id, c, w, rng));
        assert_eq!(got, id);
        for n in up {
            self.sim.call(n, |node, ctx| node.view_changed(ctx));
        }
        id
    }

    /// `gone` crash at once.
    fn crash(&mut self, gone: &[NodeId]) {
        self.epoch += 1;
        for &n in gone {
            self.world.borrow_mut().down.insert(n);
            self.sim.fault(Fault::Crash(n));
        }
    }

    /// The survivors notice that `gone` left (the failure detector's verdict).
    fn forget(&mut self, gone: &[NodeId]) {
        self.epoch += 1;
        for n in self.up() {
            {
                let mut w = self.world.borrow_mut();
                let v = w.views.entry(n).or_default();
                for g in gone {
                    v.remove(g);
                }
            }
            self.sim.call(n, |node, ctx| node.view_changed(ctx));
        }
    }

    fn primaries(&self, id: &SessionId) -> Vec<NodeId> {
        self.up()
            .into_iter()
            .filter(|n| self.sim.node(*n).core().is_primary(id))
            .collect()
    }

    /// Whether the user of session `s` is waiting for an answer.
    fn busy(&self, s: usize) -> bool {
        let l = &self.sessions[s];
        let (n, ticket) = &l.ticket;
        l.moving.is_some() || (self.sim.is_up(*n) && !self.sim.node(*n).settled(ticket))
    }

    /// The member serving session `s`: its last one, or the one that took over.
    fn route(&mut self, s: usize) -> Option<NodeId> {
        let (id, cur) = (self.sessions[s].id.clone(), self.sessions[s].server);
        if self.sim.is_up(cur) && self.sim.node(cur).core().is_primary(&id) {
            return Some(cur);
        }
        match self.primaries(&id)[..] {
            [p] => {
                self.counts.failovers += 1;
                self.sessions[s].server = p;
                Some(p)
            }
            _ => {
                self.counts.waited += 1;
                None
            }
        }
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

    fn create_on(&mut self, n: NodeId, ops: &[Op]) {
        let mut r = (Served::Missing, Vec::new());
        self.sim.call(n, |node, ctx| r = node.create(ctx, ops));
        self.counts.creates += 1;
        if let (Served::Live(id), ticket) = r {
            self.live.push(self.sessions.len());
            self.sessions.push(Logical {
                root: id.clone(),
                id,
                server: n,
                fate: Fate::Live,
                ticket: (n, ticket),
                moving: None,
                check_move: false,
                move_epoch: 0,
            });
        }
    }

    /// Request `ops` on session `s` at node `n`, which serves it (`copy`: the working copy
    /// the manager gave a request that waited for a fetch).
    fn serve_at(
        &mut self,
        s: usize,
        n: NodeId,
        ops: &[Op],
        mut ticket: Vec<u64>,
        copy: Option<Session>,
    ) {
        let id = self.sessions[s].id.clone();
        let mut r = (Served::Missing, Vec::new());
        self.sim
            .call(n, |node, ctx| r = node.request(ctx, &id, ops, copy));
        ticket.extend(r.1);
        let l = &mut self.sessions[s];
        l.ticket = (n, ticket);
        match r.0 {
            Served::Live(new) => {
                l.id = new;
                l.server = n;
            }
            Served::Ended => {
                l.fate = Fate::Ended;
                self.live.retain(|x| *x != s);
            }
            Served::Missing | Served::Waiting => self
                .sim
                .fail(format_args!("{n} was routed {id} but does not serve it")),
        }
    }

    /// A request of session `s` reaches `t`, another member than its primary: `t` fetches the
    /// session (from its primary, or the best copy if the primary is gone; a backup's own copy
    /// may be behind a re-placement it has not heard of yet) and serves the request once it has
    /// it.
    fn switch(&mut self, s: usize, t: NodeId, ops: Vec<Op>) {
        let id = self.sessions[s].id.clone();
        self.counts.fetches += 1;
        self.sim.call(t, |node, ctx| node.fetch(ctx, &id));
        self.sessions[s].moving = Some((t, self.sim.now(), ops));
        self.sessions[s].move_epoch = self.epoch;
        self.moving.push(s);
    }

    /// Serves the requests whose fetch has ended with the manager's verdict: the copy it
    /// gave, or none (counted; the user's request has no session). A fetch nobody answers
    /// ends at its deadline ([`RPC_TIMEOUT`]), when the node's timer ticks its manager.
    fn progress_moves(&mut self) {
        let moving = std::mem::take(&mut self.moving);
        for s in moving {
            let Some((t, _, ops)) = self.sessions[s].moving.clone() else {
                continue;
            };
            let id = self.sessions[s].id.clone();
            if !self.sim.is_up(t) {
                self.sessions[s].moving = None;
                continue;
            }
            let mut verdict = None;
            self.sim.call(t, |node, _| verdict = node.take_fetched(&id));
            match verdict {
                Some(Some(copy)) => {
                    self.sessions[s].moving = None;
                    self.sessions[s].check_move = true;
                    self.to_check.push(s);
                    let mut ticket = Vec::new();
                    self.sim.call(t, |node, _| ticket = node.take_move(&id));
                    self.serve_at(s, t, &ops, ticket, Some(copy));
                }
                Some(None) => {
                    self.counts.fetch_failed += 1;
                    self.sessions[s].moving = None;
                }
                None => self.moving.push(s),
            }
        }
    }

    /// After a move has settled (the new primary's copies, its `NewPrimary` and the request
    /// acknowledged): the new primary is the only one, the old copies are its backups or gone.
    fn check_moves(&mut self) {
        let to_check = std::mem::take(&mut self.to_check);
        for s in to_check {
            if !self.sessions[s].check_move {
                continue;
            }
            if self.busy(s) {
                self.to_check.push(s);
                continue;
            }
            self.sessions[s].check_move = false;
            let l = &self.sessions[s];
            // A move is checked only if membership stayed as it was meanwhile.
            if l.fate != Fate::Live || !self.sim.is_up(l.server) || l.move_epoch != self.epoch {
                continue;
            }
            let (id, server) = (self.sessions[s].id.clone(), self.sessions[s].server);
            if let Err(e) = self.check_session(&id, Some(server), true) {
                self.sim.fail(format_args!("after a move to {server}: {e}"));
            }
            self.counts.moves_checked += 1;
        }
    }

    /// One request drawn from `mix`.
    fn request(&mut self, mix: &Mix) {
        self.progress_moves();
        self.check_moves();
        let up = self.up();
        let weights = [
            mix.create,
            mix.change,
            mix.read,
            mix.change_id,
            mix.invalidate,
            mix.switch,
        ];
        let mut roll = self.w.below(weights.iter().sum());
        let mut kind = 0;
        while roll >= weights[kind] {
            roll -= weights[kind];
            kind += 1;
        }
        if self.live.is_empty() || (kind == 0 && self.sessions.len() < mix.sessions) {
            let n = up[self.w.below(up.len() as u64) as usize];
            let mut ops = self.change_ops();
            ops.retain(|op| matches!(op, Op::Set(_)));
            self.create_on(n, &ops);
            return;
        }
        // A user not waiting for an answer.
        let mut pick = None;
        for _ in 0..8 {
            let s = self.live[self.w.below(self.live.len() as u64) as usize];
            if !self.busy(s) {
                pick = Some(s);
                break;
            }
        }
        let Some(s) = pick else { return };
        let Some(n) = self.route(s) else { return };
        let ops = match kind {
            0 | 1 => {
                self.counts.changes += 1;
                self.change_ops()
            }
            2 => {
                self.counts.reads += 1;
                vec![Op::Read]
            }
            3 => {
                self.counts.change_ids += 1;
                vec![Op::ChangeId, Op::Set("user")]
            }
            4 => {
                self.counts.invalidations += 1;
                vec![Op::Invalidate]
            }
            _ => {
                let others: Vec<NodeId> = up.iter().copied().filter(|t| *t != n).collect();
                if others.is_empty() {
                    return;
                }
                let t = others[self.w.below(others.len() as u64) as usize];
                let ops = self.change_ops();
                self.switch(s, t, ops);
                return;
            }
        };
        self.serve_at(s, n, &ops, Vec::new(), None);
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

    /// Requests go on without moves (no request reaches another member than the primary) for at
    /// least `min` and until no move is in progress and every copy, drop and `NewPrimary` that
    /// re-placement, failover or a move sent has been acknowledged. Works around the bugs of
    /// moves racing membership changes (see the ignored tests).
    fn calm(&mut self, min: Duration, gap: (Duration, Duration), mix: &Mix) {
        // No moves, and no changes of id (whose re-placement runs in the background).
        let still = Mix {
            switch: 0,
            change_id: 0,
            ..mix.clone()
        };
        let until = self.sim.now() + min;
        self.run_workload(until, gap, &still);
        let deadline = self.sim.now() + Duration::from_secs(10);
        while !self.moving.is_empty()
            || self.to_check.iter().any(|s| self.busy(*s))
            || self
                .up()
                .iter()
                .any(|n| self.sim.node(*n).unsettled_background() > 0)
        {
            if self.sim.now() > deadline {
                self.sim.fail("moves and re-placement did not settle");
            }
            let until = self.sim.now() + ms(1);
            self.run_workload(until, gap, &still);
        }
    }

    /// Runs until nothing is left to do, serving fetched requests as they become ready.
    fn settle(&mut self) {
        let deadline = self.sim.now() + Duration::from_secs(10);
        loop {
            if !self.sim.run_until_idle(deadline) {
                self.sim.fail("the cluster did not settle");
            }
            if self.moving.is_empty() {
                break;
            }
            let before = self.moving.len();
            self.progress_moves();
            if self.moving.len() == before {
                // Quiet, so every fetch's deadline has passed: each has its verdict.
                self.sim
                    .fail("a request waits for a fetch the manager never ended");
            }
        }
        self.check_moves();
    }

    /// Session `id` on the up members: exactly one primary (`want` if given), held by it and
    /// the backups of its placement among the up members and nobody else, every copy at one
    /// version with the same attributes. `strict` (right after a move, under load): former
    /// holders waiting for the new primary's `Drop` are left out. Returns the number of holders
    /// and the version.
    fn check_session(
        &self,
        id: &SessionId,
        want: Option<NodeId>,
        strict: bool,
    ) -> Result<(usize, u64), String> {
        let up = self.up();
        let members: Vec<MemberId> = up.iter().map(|n| sim_member(*n).id).collect();
        let holders: Vec<NodeId> = up
            .iter()
            .copied()
            .filter(|n| self.sim.node(*n).core().session(id).is_some())
            .collect();
        let primaries = self.primaries(id);
        let [p] = primaries[..] else {
            return Err(format!(
                "{id} has primaries {primaries:?} (held by {holders:?})"
            ));
        };
        if want.is_some_and(|w| w != p) {
            return Err(format!("{id} is served by {p}, not {want:?}"));
        }
        let place: Vec<NodeId> = placement(id, sim_member(p).id, &members, self.k())
            .iter()
            .filter_map(super::lane_node::node_of)
            .collect();
        let node = self.sim.node(p);
        let listed: Vec<NodeId> = node
            .core()
            .backups_of(id)
            .unwrap_or_default()
            .iter()
            .filter_map(super::lane_node::node_of)
            .collect();
        if listed != place {
            return Err(format!(
                "{p} lists {listed:?} as backups of {id}, its placement is {place:?}"
            ));
        }
        let place = listed;
        let mut expect: BTreeSet<NodeId> = place.iter().copied().collect();
        expect.insert(p);
        // While a hand-over is in progress the former holders keep their copies until the
        // primary's Drop (quiescence allows none).
        let holders: Vec<NodeId> = holders
            .into_iter()
            .filter(|h| expect.contains(h) || !strict || !self.sim.node(*h).core().is_retiring(id))
            .collect();
        let have: BTreeSet<NodeId> = holders.iter().copied().collect();
        if have != expect {
            return Err(format!(
                "{id} (primary {p}) is held by {have:?}, its placement wants {expect:?}"
            ));
        }
        let (v, attrs) = node
            .copy(id)
            .map(|(v, a)| (v, a.clone()))
            .unwrap_or_default();
        for h in &holders {
            let c = self.sim.node(*h).copy(id).map(|(v, a)| (v, a.clone()));
            if c.as_ref() != Some(&(v, attrs.clone())) {
                return Err(format!(
                    "{h} has {id} at {:?}, its primary {p} at version {v}",
                    c.map(|c| c.0)
                ));
            }
        }
        Ok((holders.len(), v))
    }

    /// At quiescence: every session whose creation was acknowledged and whose end was not is
    /// held under exactly one of its ids, by one primary and its placement's backups, at a
    /// version no older than its last acknowledged one; a session whose end was acknowledged
    /// is nowhere; no member holds a session no user has, except under the new id of a change
    /// of id its user never got (see [`Cluster::unacked_renames`]). Returns the holder counts.
    fn assert_settled(&self) -> Holders {
        let mut holders = Holders::new();
        let w = self.world.borrow();
        let mut owned: BTreeSet<SessionId> = BTreeSet::new();
        let mut errors = Vec::new();
        for l in &self.sessions {
            let chain = w.oracle.chain(&l.root);
            owned.extend(chain.iter().cloned());
            let held: Vec<&SessionId> = chain
                .iter()
                .filter(|id| {
                    self.up()
                        .iter()
                        .any(|n| self.sim.node(*n).core().session(id).is_some())
                })
                .collect();
            if w.oracle.end_acked.contains(&l.root) {
                if !held.is_empty() {
                    errors.push(format!("{held:?} ended (acknowledged) but still held"));
                }
                continue;
            }
            let acked = w.oracle.acked_version.get(&l.root).copied();
            // Ended by the application, unacknowledged: the end may or may not have reached
            // the copies that survive.
            let ended = chain.iter().any(|id| w.oracle.ended.contains(id));
            // Earlier ids held only as leftovers (see `is_leftover`) do not count: the session
            // is checked under its latest id held.
            let held: Vec<&SessionId> = match held.split_last() {
                Some((last, earlier)) if earlier.iter().all(|id| self.is_leftover(id)) => {
                    vec![*last]
                }
                _ => held,
            };
            match (&held[..], acked) {
                ([], None) => {}
                ([], Some(_)) if ended => {}
                ([], Some(v)) => errors.push(format!(
                    "{} (acknowledged at version {v}) is lost",
                    chain.last().unwrap_or(&l.root)
                )),
                ([id], _) => match self.check_session(id, None, false) {
                    Ok((n, v)) => {
                        if acked.is_some_and(|a| v < a) {
                            errors.push(format!(
                                "{id} is at version {v}, below its acknowledged {acked:?}"
                            ));
                        }
                        *holders.entry(n).or_default() += 1;
                    }
                    Err(e) => errors.push(e),
                },
                (ids, _) => errors.push(format!("one session is held under ids {ids:?}")),
            }
        }
        let unacked = self.unacked_renames(&owned);
        for n in self.up() {
            let node = self.sim.node(n);
            let listed = node.core().len();
            let known = owned
                .iter()
                .chain(&unacked)
                .filter(|id| node.core().session(id).is_some())
                .count();
            if listed != known {
                let extra: Vec<String> = node
                    .core()
                    .ids()
                    .filter(|id| !owned.contains(*id) && !unacked.contains(*id))
                    .map(|id| id.to_string())
                    .collect();
                errors.push(format!(
                    "{n} holds {} sessions no user has: {extra:?}",
                    listed - known
                ));
            }
        }
        if !errors.is_empty() {
            self.sim.fail(format_args!(
                "{} problems at quiescence, e.g.:\n  {}",
                errors.len(),
                errors[..errors.len().min(6)].join("\n  ")
            ));
        }
        holders
    }

    /// The new ids of changes of id made on a session a user has (`owned`: every id its user got)
    /// that its user never got, with an end: a kill -9 of the renaming primary between its
    /// `ChangeId`s (or a `ChangeId` written but lost at a reset) leaves the old id on one holder
    /// and the new one on another; the request fails, its user keeps the old id and may go on
    /// with it on the holder that kept it, and the new id, which no user has, lives on where it
    /// went until it expires (docs/RELIABILITY.md, BackupManager: "a change of id whose request
    /// failed"). Nothing acknowledged is lost, and neither id may be ended in its place: no
    /// member can tell which of the two the user holds. The bound: such a session expires after
    /// its max inactive interval, which must therefore be finite (non-zero).
    fn unacked_renames(&self, owned: &BTreeSet<SessionId>) -> BTreeSet<SessionId> {
        let mut unacked: BTreeSet<SessionId> = BTreeSet::new();
        // A chain of such renames is followed a few steps (each step needs a new kill).
        for _ in 0..4 {
            let before = unacked.len();
            for n in self.sim.node_ids() {
                for (_, e) in &self.sim.node(n).journal.events {
                    if let SessionEvent::IdChanged { old, new } = e {
                        let from_owned = owned.contains(old) || unacked.contains(old);
                        if from_owned && !owned.contains(new) {
                            unacked.insert(new.clone());
                        }
                    }
                }
            }
            if unacked.len() == before {
                break;
            }
        }
        unacked.retain(|id| {
            self.up().iter().all(|n| {
                self.sim
                    .node(*n)
                    .core()
                    .session(id)
                    .is_none_or(|s| s.max_inactive() > Duration::ZERO)
            })
        });
        unacked
    }

    /// Whether every live copy of `id` (an id its session had before its latest one) is a
    /// former holder's, kept until a `Drop` that was lost: a holder retired before the change
    /// of id (its primary's `Drop` written on a connection a reset then cut, the primary killed
    /// soon after) is no holder the renamer knows, and its `ChangeId` does not go there. No
    /// member serves or counts on that copy (not a primary, not a listed backup in step), and it
    /// cannot be ended without a rule that would also end the copy a user whose change of id
    /// failed goes on with (see [`Cluster::unacked_renames`]). The bound: a backup copy expires
    /// on its own at twice its max inactive interval, which must be finite (non-zero).
    fn is_leftover(&self, id: &SessionId) -> bool {
        self.up().iter().all(|n| {
            let core = self.sim.node(*n).core();
            core.session(id).is_none_or(|s| {
                !core.is_primary(id)
                    && !core.is_current_copy(id)
                    && s.max_inactive() > Duration::ZERO
            })
        })
    }

    /// Every id any session had.
    fn known_ids(&self) -> BTreeSet<SessionId> {
        let w = self.world.borrow();
        self.sessions
            .iter()
            .flat_map(|l| w.oracle.chain(&l.root))
            .collect()
    }

    /// No-fault runs: every tracked send was acknowledged and every ack paid.
    fn assert_all_acknowledged(&self) {
        for n in self.up() {
            let node = self.sim.node(n);
            if node.unsettled() > 0 || node.owed() > 0 {
                self.sim.fail(format_args!(
                    "{n} waits for {} acks and owes {}",
                    node.unsettled(),
                    node.owed()
                ));
            }
        }
    }

    fn traffic(&self) -> Traffic {
        let mut t = Traffic::default();
        for n in self.sim.node_ids() {
            let j = &self.sim.node(n).journal;
            for k in j.sent.keys() {
                *t.sent.entry(k).or_default() += j.sent(k);
            }
            t.bytes += j.bytes;
            t.late_acks += j.late_acks;
        }
        let w = self.world.borrow();
        t.fanout = w.oracle.fanout.clone();
        t.acked = w.oracle.acked.iter().filter(|a| a.request).count() as u64;
        t.failed = w.oracle.failed;
        t.superseded = w.oracle.superseded;
        t
    }
}

// ---- 1. fan-out ----

/// 5 to 8 nodes, backups 1, 2, 3 or more than there are other members, about 1000 sessions per
/// seed and 2000 requests (creates, changes, reads, changes of id, invalidations, and requests
/// that reach another member), with latency jitter and no loss. Every change a request makes
/// goes to exactly `min(backups, members - 1)` members, its placement (checked at each request
/// by `changes-go-to-exactly-the-backups`, and here from the counters: each Delta (id, version)
/// was received by exactly that many members). At quiescence every session is held by
/// `1 + min(backups, members - 1)` members and every send was acknowledged.
#[test]
fn every_change_goes_to_exactly_the_backups() {
    let (mut counts, mut traffic, mut holders) =
        (Counts::default(), Traffic::default(), Holders::new());
    let mut per_k: BTreeMap<(usize, usize), (u64, u64)> = BTreeMap::new();
    for_each_seed(6, |seed| {
        let n = 5 + (seed % 4) as usize;
        let k = [1, 2, 3, 9, 9, 2][seed as usize % 6];
        let mut c = Cluster::new(seed, jitter(), &cfg(k), n);
        c.run_workload(ms(110), (Duration::ZERO, us(100)), &Mix::default());
        c.settle();
        let h = c.assert_settled();
        c.assert_all_acknowledged();
        let want = k.min(n - 1);
        if let Some((&got, _)) = h.iter().find(|(got, _)| **got != 1 + want) {
            c.sim.fail(format_args!(
                "sessions held by {got} members, want {}",
                1 + want
            ));
        }
        let w = c.world.borrow();
        for ((id, v), r) in &w.oracle.delta_receipts {
            if *r as usize != want {
                c.sim.fail(format_args!(
                    "delta {id} v{v} reached {r} members, want {want}"
                ));
            }
        }
        let t = c.traffic();
        // Nothing is lost without a crash: every frame sent of each kind was received.
        for (kind, sent) in &t.sent {
            let received: u64 = c
                .sim
                .node_ids()
                .map(|n| c.sim.node(n).journal.received(kind))
                .sum();
            if received != *sent {
                c.sim
                    .fail(format_args!("{sent} {kind} sent, {received} received"));
            }
        }
        for (kind, to) in t.fanout.keys() {
            if *to != want {
                c.sim
                    .fail(format_args!("a {kind} went to {to} members, want {want}"));
            }
        }
        let e = per_k.entry((n, k)).or_default();
        e.0 += t.changes("delta");
        e.1 += t.sent("delta");
        drop(w);
        counts += &c.counts;
        traffic += &t;
        add_holders(&mut holders, &h);
    });
    let per: Vec<String> = per_k
        .iter()
        .map(|((n, k), (changes, sent))| {
            format!(
                "n={n} k={k}: {:.2} deltas/change",
                *sent as f64 / (*changes).max(1) as f64
            )
        })
        .collect();
    eprintln!(
        "fan-out: {counts:?}\n  {traffic:?}\n  holders {holders:?}\n  {}",
        per.join(", ")
    );
    if !replaying() {
        assert!(counts.creates >= 5_000, "{counts:?}");
        assert!(traffic.changes("delta") > 2_000 && traffic.sent("accessed") > 0);
        assert!(counts.fetches > 130 && counts.change_ids > 300);
    }
}

// ---- 2. failover ----

/// What a crash run adds up to.
#[derive(Debug, Default)]
struct CrashTotals {
    counts: Counts,
    traffic: Traffic,
    holders: Holders,
    /// Sessions whose primary (or first backup) was among the crashed nodes.
    hit: u64,
    /// Sessions that existed at the crash with an acknowledged creation.
    acked_at_crash: u64,
}

/// `kill` random members of `n` crash at once while requests are going on (or, `quiet`, once
/// everything sent is acknowledged), requests go on for a few milliseconds more (users of the
/// dead members wait), then the survivors' failure detectors remove them (`set_members`) and
/// requests go on again; at quiescence [`Cluster::assert_settled`] holds. `careful`: no move is
/// in progress from before the crash until failover and re-placement are acknowledged (see
/// [`Cluster::calm`]).
fn crash_run(seed: u64, n: usize, k: usize, kill: usize, flags: (bool, bool), t: &mut CrashTotals) {
    crash_run_with(seed, n, &cfg(k), kill, flags, t);
}

/// [`crash_run`] with the members' settings given.
fn crash_run_with(
    seed: u64,
    n: usize,
    settings: &BackupSimConfig,
    kill: usize,
    (quiet, careful): (bool, bool),
    t: &mut CrashTotals,
) {
    let k = settings.core.backups;
    let mut c = Cluster::new(seed, jitter(), settings, n);
    let mix = Mix {
        sessions: 1000,
        ..Mix::default()
    };
    let gap = (Duration::ZERO, us(100));
    let until = c.sim.now() + ms(80) + c.w.duration_between(Duration::ZERO, ms(30));
    c.run_workload(until, gap, &mix);
    if careful {
        c.calm(ms(5), gap, &mix);
    }
    if quiet {
        c.settle();
    }
    let mut victims: Vec<NodeId> = Vec::new();
    while victims.len() < kill {
        let v = NodeId(c.w.below(n as u64) as usize);
        if !victims.contains(&v) {
            victims.push(v);
        }
    }
    {
        let w = c.world.borrow();
        let members: Vec<MemberId> = (0..n).map(|i| sim_member(NodeId(i)).id).collect();
        let dead: Vec<MemberId> = victims.iter().map(|v| sim_member(*v).id).collect();
        for l in &c.sessions {
            if l.fate != Fate::Live || !w.oracle.acked_version.contains_key(&l.root) {
                continue;
            }
            t.acked_at_crash += 1;
            let p = sim_member(l.server).id;
            let place = placement(&l.id, p, &members, k);
            if dead.contains(&p) || place.first().is_some_and(|b| dead.contains(b)) {
                t.hit += 1;
            }
        }
    }
    c.crash(&victims);
    let detect = c.sim.now() + c.w.duration_between(ms(1), ms(10));
    let still = Mix {
        switch: if careful { 0 } else { mix.switch },
        ..mix.clone()
    };
    c.run_workload(detect, gap, &still);
    c.forget(&victims);
    if careful {
        c.calm(ms(5), gap, &mix);
    }
    let until = c.sim.now() + ms(20);
    c.run_workload(until, gap, &mix);
    c.settle();
    let h = c.assert_settled();
    let want = 1 + k.min(n - kill - 1);
    if let Some((&got, _)) = h.iter().find(|(got, _)| **got != want) {
        c.sim
            .fail(format_args!("sessions held by {got} members, want {want}"));
    }
    t.counts += &c.counts;
    t.traffic += &c.traffic();
    add_holders(&mut t.holders, &h);
}

/// Backups = 1, 5 to 8 members, ~1000 sessions per seed: one member crashes while requests
/// are in flight (no session moves to another member around the crash: see the module doc).
/// No session whose creation was acknowledged is lost and no acknowledged change is lost (the
/// invariant `no-acknowledged-change-is-lost` after every step, and each session's
/// version at least its last acknowledged one at the end); every session has one primary among
/// the survivors and one backup again (holders 2). Unacknowledged changes in flight to or from
/// the dead member may be lost (counted: failed sends, superseded versions).
#[test]
fn killing_any_one_member_with_one_backup_loses_no_acknowledged_session_or_change() {
    let mut t = CrashTotals::default();
    for_each_seed(6, |seed| {
        let n = 5 + (seed % 4) as usize;
        crash_run(seed, n, 1, 1, (false, true), &mut t);
    });
    eprintln!(
        "one crash, backups 1: {} acknowledged sessions at the crash, {} hit; {:?}\n  {:?}\n  holders {:?}",
        t.acked_at_crash, t.hit, t.counts, t.traffic, t.holders
    );
    if !replaying() {
        assert!(t.hit > 500 && t.counts.failovers > 100, "{t:?}");
        assert!(t.traffic.failed > 0, "some sends should fail at the crash");
    }
}

/// Backups = 2, 5 to 8 members: two members crash at once, after a quiet moment (every change
/// acknowledged; the next test crashes them with changes in flight). No session is
/// lost, each has one primary among the survivors and two backups again (holders 3).
#[test]
fn killing_any_two_members_at_once_with_two_backups_loses_no_session() {
    let mut t = CrashTotals::default();
    for_each_seed(5, |seed| {
        let n = 5 + (seed % 4) as usize;
        crash_run(seed, n, 2, 2, (true, true), &mut t);
    });
    eprintln!(
        "two crashes, backups 2: {} acknowledged sessions at the crash, {} hit; {:?}\n  {:?}\n  holders {:?}",
        t.acked_at_crash, t.hit, t.counts, t.traffic, t.holders
    );
    if !replaying() {
        assert!(t.hit > 500 && t.counts.failovers > 100, "{t:?}");
    }
}

/// The same with changes in flight at the crash.
#[test]
fn killing_any_two_members_at_once_with_changes_in_flight_loses_no_acknowledged_change() {
    let mut t = CrashTotals::default();
    for_each_seed(8, |seed| {
        let n = 5 + (seed % 4) as usize;
        crash_run(seed, n, 2, 2, (false, true), &mut t);
    });
}

// ---- 3. a request on another member ----

/// 5 to 8 members, backups 1 or 2: one request in three reaches another member than the
/// session's primary. A member that backs the session up takes it over; a third member fetches
/// it, becomes its primary, and the old copies become its backups or are dropped. Each move is
/// checked once its acks are in: the new member is the only primary, the session is held by
/// exactly it and its placement's backups, all at one version with the same attributes; the
/// invariants check after every step that no copy ever goes back in version or shows a state its
/// primary did not make.
#[test]
fn a_session_requested_on_a_third_member_moves_there_and_stays_consistent() {
    let (mut counts, mut traffic) = (Counts::default(), Traffic::default());
    for_each_seed(5, |seed| {
        let n = 5 + (seed % 4) as usize;
        let k = 1 + (seed % 2) as usize;
        let mut c = Cluster::new(seed, jitter(), &cfg(k), n);
        let mix = Mix {
            switch: 6,
            sessions: 1000,
            ..Mix::default()
        };
        c.run_workload(ms(100), (Duration::ZERO, us(100)), &mix);
        c.settle();
        c.assert_settled();
        c.assert_all_acknowledged();
        counts += &c.counts;
        traffic += &c.traffic();
    });
    eprintln!("moves: {counts:?}\n  {traffic:?}");
    if !replaying() {
        assert!(counts.fetches > 700, "{counts:?}");
        assert!(counts.moves_checked > 700, "{counts:?}");
    }
}

// ---- 4. joins ----

/// One to three members join, 20 to 40 ms apart, while requests go on; then 30 ms more of
/// requests and quiescence. `careful`: no move is in progress around a join (see
/// [`Cluster::calm`]).
fn joins_under_load(c: &mut Cluster, mix: &Mix, careful: bool) {
    let gap = (Duration::ZERO, us(100));
    let joins = 1 + c.w.below(3);
    for _ in 0..joins {
        let at = c.sim.now() + ms(20) + c.w.duration_between(Duration::ZERO, ms(20));
        c.run_workload(at, gap, mix);
        if careful {
            c.calm(ms(2), gap, mix);
        }
        c.join();
        if careful {
            c.calm(ms(2), gap, mix);
        }
    }
    let until = c.sim.now() + ms(30);
    c.run_workload(until, gap, mix);
    c.settle();
}

/// 5 members, backups 1 or 2, ~1000 sessions: one to three members join while requests go on;
/// sessions whose placement now includes a newcomer are copied to it and the displaced backups
/// drop theirs. At quiescence nothing is lost, every acknowledged change is kept and every
/// session is held by 1 + backups members, its placement. Then one more member joins at a quiet
/// moment: exactly the sessions whose backups change move (one copy to the newcomer and one drop
/// per change of backup); apart from renamed sessions (whose backups were their old id's
/// placement, see the ignored test) each moves one backup to the newcomer, and at most 1.2 ×
/// `backups / (members - 1)` of all sessions do (members counted after the join).
#[test]
fn joins_rebalance_without_loss_and_move_only_what_placement_moves() {
    let (mut counts, mut traffic, mut holders) =
        (Counts::default(), Traffic::default(), Holders::new());
    let (mut moved, mut total, mut expected_frac) = (0u64, 0u64, 0f64);
    let mut misplaced_moved = 0u64;
    for_each_seed(5, |seed| {
        let k = 1 + (seed % 2) as usize;
        let mut c = Cluster::new(seed, jitter(), &cfg(k), 5);
        let mix = Mix {
            sessions: 1000,
            ..Mix::default()
        };
        joins_under_load(&mut c, &mix, true);
        let h = c.assert_settled();
        let n = c.up().len();
        if let Some((&got, _)) = h.iter().find(|(got, _)| **got != 1 + k) {
            c.sim.fail(format_args!(
                "sessions held by {got} members, want {}",
                1 + k
            ));
        }
        add_holders(&mut holders, &h);

        // A join at a quiet moment: predict the moves from each primary's backups.
        let joiner = NodeId(c.sim.node_ids().count());
        let mut members: Vec<MemberId> = c.up().iter().map(|x| sim_member(*x).id).collect();
        members.push(sim_member(joiner).id);
        let (mut want_copies, mut want_drops, mut sessions, mut changing) = (0, 0, 0u64, 0u64);
        let known = c.known_ids();
        let renamed: BTreeSet<SessionId> =
            c.world.borrow().oracle.previous.keys().cloned().collect();
        for p in c.up() {
            let node = c.sim.node(p);
            for id in &known {
                let Some(old) = node.core().backups_of(id) else {
                    continue;
                };
                sessions += 1;
                let new = placement(id, sim_member(p).id, &members, k);
                let added = new.iter().filter(|b| !old.contains(b)).count();
                let gone = old.iter().filter(|b| !new.contains(b)).count();
                want_copies += added as u64;
                want_drops += gone as u64;
                if added + gone > 0 {
                    if new.contains(&sim_member(joiner).id) && added == 1 {
                        changing += 1;
                    } else if renamed.contains(id) {
                        // Its backups were the old id's placement: re-placed now.
                        misplaced_moved += 1;
                    } else {
                        c.sim.fail(format_args!(
                            "{id} would move to {new:?} though the newcomer is not among them"
                        ));
                    }
                }
            }
        }
        let before = c.traffic();
        c.join();
        c.settle();
        let after = c.traffic();
        let copies = after.sent("copy") - before.sent("copy");
        let drops = after.sent("drop") - before.sent("drop");
        if (copies, drops) != (want_copies, want_drops) {
            c.sim.fail(format_args!(
                "the join sent {copies} copies and {drops} drops; placement moves {want_copies} and {want_drops}"
            ));
        }
        let h = c.assert_settled();
        if let Some((&got, _)) = h.iter().find(|(got, _)| **got != 1 + k) {
            c.sim.fail(format_args!(
                "after the quiet join: held by {got}, want {}",
                1 + k
            ));
        }
        moved += changing;
        total += sessions;
        expected_frac += k as f64 / n as f64 * sessions as f64;
        counts += &c.counts;
        traffic += &c.traffic();
    });
    eprintln!(
        "joins: {counts:?}\n  {traffic:?}\n  holders {holders:?}\n  quiet join moved {moved} of {total} sessions to the newcomer ({:.3}; backups/(members-1) predicts {:.3}), and re-placed {misplaced_moved} renamed sessions",
        moved as f64 / total.max(1) as f64,
        expected_frac / total.max(1) as f64
    );
    if !replaying() {
        assert!(
            (moved as f64) < 1.2 * expected_frac + 20.0,
            "a join moved {moved} sessions, placement predicts about {expected_frac:.0}"
        );
    }
}

/// The same with requests moving sessions to other members around the joins.
#[test]
fn joins_while_sessions_move_rebalance_without_loss() {
    for_each_seed(5, |seed| {
        let k = 1 + (seed % 2) as usize;
        let mut c = Cluster::new(seed, jitter(), &cfg(k), 5);
        let mix = Mix {
            switch: 4,
            ..Mix::default()
        };
        joins_under_load(&mut c, &mix, false);
        c.assert_settled();
    });
}

/// Backups = 1: a member joins and, within a millisecond, an old member crashes (at the same
/// moment as the join's re-placement traffic).
#[test]
fn a_crash_right_after_a_join_loses_no_acknowledged_session_in_a_cluster() {
    for_each_seed(5, |seed| {
        let mut c = Cluster::new(seed, jitter(), &cfg(1), 5);
        let mix = Mix::default();
        let gap = (Duration::ZERO, us(100));
        c.run_workload(ms(60), gap, &mix);
        c.calm(ms(2), gap, &mix);
        c.join();
        let at = c.sim.now() + c.w.duration_between(Duration::ZERO, ms(1));
        c.run_workload(
            at,
            gap,
            &Mix {
                switch: 0,
                ..mix.clone()
            },
        );
        let victim = NodeId(c.w.below(5) as usize);
        c.crash(&[victim]);
        let at = c.sim.now() + ms(3);
        c.run_workload(
            at,
            gap,
            &Mix {
                switch: 0,
                ..mix.clone()
            },
        );
        c.forget(&[victim]);
        c.settle();
        c.assert_settled();
    });
}

/// Backups = 2: members join (the cluster then quiet), then two old members crash at once.
#[test]
fn killing_two_members_after_joins_with_two_backups_loses_no_session() {
    for_each_seed(5, |seed| {
        let mut c = Cluster::new(seed, jitter(), &cfg(2), 5);
        let mix = Mix::default();
        joins_under_load(&mut c, &mix, true);
        let first = c.w.below(5) as usize;
        let victims = [
            NodeId(first),
            NodeId((first + 1 + c.w.below(4) as usize) % 5),
        ];
        c.crash(&victims);
        c.forget(&victims);
        c.settle();
        c.assert_settled();
    });
}

/// Backups = 1: a member crashes while requests for its sessions reach other members (which
/// fetch them while the backups take over).
#[test]
#[ignore = "bug: a fetch racing the failover of the same session makes two claims of one epoch; both serve before the tie is settled and an unacknowledged change forks (history-never-forks), about 1 run in 10; see docs/design.md"]
fn killing_a_member_while_its_sessions_are_requested_elsewhere_leaves_one_primary() {
    let mut t = CrashTotals::default();
    for_each_seed(6, |seed| {
        let n = 5 + (seed % 4) as usize;
        crash_run(seed, n, 1, 1, (false, false), &mut t);
    });
}

// ---- 5. placement ----

/// `count` random session ids.
fn ids(count: usize) -> Vec<SessionId> {
    (0..count)
        .map(|_| SessionId::generate("x").expect("session id"))
        .collect()
}

/// Rendezvous placement over 5 to 8 members, backups 1 to 3, 10,000 sessions per case, each
/// session's primary drawn at random: every member gets within 12 % of its fair share of backup
/// copies (the fair share is `sessions × backups / members`; its standard deviation is at most
/// 2.6 % of it, so 12 % is over four and a half of them). Removing a member moves only the
/// sessions it backed up (none other changes), each by replacing it alone; adding one moves
/// only sessions into which it enters, by displacing one backup. Either way at most 1.1 ×
/// `backups / (members - 1)` of the sessions move (members counted with the one that joins or
/// leaves), the share that member has or takes. The result does not depend on the order the
/// members are listed in.
#[test]
fn placement_spreads_evenly_and_moves_few_sessions_on_membership_changes() {
    let mut rng = SimRng::new(0x5eed);
    let mut worst_spread = 0f64;
    let mut worst_move = 0f64;
    for case in 0..5u64 {
        let n = 5 + (case % 4) as usize;
        let k = 1 + (case % 3) as usize;
        let members: Vec<MemberId> = (0..n).map(|i| sim_member(NodeId(i)).id).collect();
        let sessions = ids(10_000);
        let mut load: HashMap<MemberId, u64> = HashMap::new();
        let mut shuffled = members.clone();
        shuffled.reverse();
        shuffled.rotate_left(case as usize % n);
        let (mut left_moved, mut joined_moved) = (0u64, 0u64);
        let gone = members[rng.below(n as u64) as usize];
        let fewer: Vec<MemberId> = members.iter().copied().filter(|m| *m != gone).collect();
        let newcomer = sim_member(NodeId(100 + case as usize)).id;
        let mut more = members.clone();
        more.push(newcomer);
        for (i, id) in sessions.iter().enumerate() {
            let p = members[rng.below(n as u64) as usize];
            let place = placement(id, p, &members, k);
            assert_eq!(place.len(), k.min(n - 1));
            assert!(!place.contains(&p));
            if i % 8 == 0 {
                let again = placement(id, p, &shuffled, k);
                assert_eq!(place, again, "order of members matters");
            }
            for b in &place {
                *load.entry(*b).or_default() += 1;
            }
            if p != gone {
                let after = placement(id, p, &fewer, k);
                if place.contains(&gone) {
                    left_moved += 1;
                    let kept: Vec<&MemberId> = place.iter().filter(|b| **b != gone).collect();
                    assert!(
                        kept.iter().all(|b| after.contains(b)),
                        "a kept backup moved"
                    );
                } else {
                    assert_eq!(after, place, "a session that did not use the leaver moved");
                }
            }
            let after = placement(id, p, &more, k);
            if after != place {
                joined_moved += 1;
                assert!(
                    after.contains(&newcomer),
                    "a join moved a session elsewhere"
                );
                let kept = place.iter().filter(|b| after.contains(b)).count();
                assert_eq!(
                    kept,
                    place.len() - 1,
                    "a join displaced more than one backup"
                );
            }
        }
        let fair = (sessions.len() * k.min(n - 1)) as f64 / n as f64;
        for m in &members {
            let got = load.get(m).copied().unwrap_or(0) as f64;
            let off = (got - fair).abs() / fair;
            worst_spread = worst_spread.max(off);
            assert!(
                off < 0.10,
                "n={n} k={k}: a member backs up {got}, fair share {fair:.0}"
            );
        }
        let share = k as f64 / (n - 1) as f64;
        let frac_join = joined_moved as f64 / sessions.len() as f64;
        let frac_leave = left_moved as f64 / sessions.len() as f64;
        worst_move = worst_move.max(frac_join / (k as f64 / n as f64));
        assert!(
            frac_join <= 1.1 * k as f64 / n as f64,
            "n={n} k={k}: a join moved {frac_join:.3} of the sessions"
        );
        assert!(
            frac_leave <= 1.1 * share,
            "n={n} k={k}: a leave moved {frac_leave:.3} of the sessions"
        );
    }
    eprintln!(
        "placement: worst spread {:.1} % off the fair share; a join moved at most {:.2} × its fair share",
        worst_spread * 100.0,
        worst_move
    );
}

// ---- 6. partitions ----

use crate::session::reconcile::test_support::UnionMerger as Union;

/// What the partition runs add up to.
#[derive(Debug, Default)]
struct SplitTotals {
    /// Live sessions at the heal.
    sessions: u64,
    /// Served on both sides at the heal.
    both_sides: u64,
    /// Of those, with different contents on the two sides (changed on both, or on one).
    diverged: u64,
    /// Of those, whose expected result is a merge neither side had.
    merged: u64,
    /// Ended on one side, served on the other.
    ended_one_side: u64,
    /// Of those, used after the end on the live side (the session lives on).
    revived: u64,
    digests: u64,
    reconciles: u64,
}

impl Cluster {
    /// The network splits into `sides`, and each node's view becomes its side (the failure
    /// detectors' verdict): each side fails over the sessions whose primary is on the other.
    fn split(&mut self, sides: &[BTreeSet<NodeId>]) {
        self.epoch += 1;
        for (i, x) in sides.iter().enumerate() {
            for y in &sides[i + 1..] {
                for a in x {
                    for b in y {
                        self.sim.fault(Fault::Partition(*a, *b));
                    }
                }
            }
        }
        for side in sides {
            for n in side {
                self.world.borrow_mut().views.insert(*n, side.clone());
            }
        }
        for n in self.up() {
            self.sim.call(n, |node, ctx| node.view_changed(ctx));
        }
    }

    /// The partition heals: every node sees every other again (`set_members` sends digests to
    /// the members it regained). `stagger`: the nodes notice one after another, in random
    /// order, up to this long apart (the network heals at once: a node may hear from members
    /// it does not list yet).
    fn heal(&mut self, stagger: Option<Duration>) {
        self.epoch += 1;
        self.sim.fault(Fault::HealAll);
        let mut order = self.up();
        let all: BTreeSet<NodeId> = order.iter().copied().collect();
        self.world.borrow_mut().healing = true;
        for i in (1..order.len()).rev() {
            order.swap(i, self.w.below(i as u64 + 1) as usize);
        }
        for n in order {
            self.world.borrow_mut().views.insert(n, all.clone());
            self.sim.call(n, |node, ctx| node.view_changed(ctx));
            if let Some(max) = stagger {
                let until = self.sim.now() + self.w.duration_between(Duration::ZERO, max);
                self.sim.run_until(until, |_| false);
            }
        }
    }

    /// The one primary of `id` in `side` (`None` if it has none; fails if it has several).
    fn primary_in(&self, side: &BTreeSet<NodeId>, id: &SessionId) -> Option<NodeId> {
        let p: Vec<NodeId> = side
            .iter()
            .copied()
            .filter(|n| self.sim.node(*n).core().is_primary(id))
            .collect();
        if p.len() > 1 {
            self.sim
                .fail(format_args!("{id} has primaries {p:?} on one side"));
        }
        p.first().copied()
    }

    /// One round of requests on one side of a partition: `creates` new sessions, and changes,
    /// reads or (one in `end_one_in`) invalidations of `changes` of the sessions this side
    /// serves, then quiescence. Returns the sessions ended, with the end's time (the ended
    /// copy's last access).
    fn side_round(
        &mut self,
        side: &BTreeSet<NodeId>,
        creates: usize,
        changes: usize,
        end_one_in: u64,
    ) -> Vec<(SessionId, u64)> {
        let nodes: Vec<NodeId> = side.iter().copied().collect();
        for _ in 0..creates {
            let n = nodes[self.w.below(nodes.len() as u64) as usize];
            let mut ops = self.change_ops();
            ops.retain(|op| matches!(op, Op::Set(_)));
            self.create_on(n, &ops);
        }
        // Every session this side serves, even one the other side ended.
        let mut served: Vec<(usize, NodeId)> = (0..self.sessions.len())
            .filter_map(|s| Some((s, self.primary_in(side, &self.sessions[s].id)?)))
            .collect();
        let mut ended = Vec::new();
        for _ in 0..changes.min(served.len()) {
            let (s, n) = served.swap_remove(self.w.below(served.len() as u64) as usize);
            let ops = if end_one_in > 0 && self.w.below(end_one_in) == 0 {
                let id = &self.sessions[s].id;
                let at = self.sim.node(n).core().session(id).map(|x| x.version());
                ended.push((id.clone(), at.unwrap_or(0)));
                vec![Op::Invalidate]
            } else if self.w.chance(0.2) {
                vec![Op::Read]
            } else {
                self.change_ops()
            };
            self.serve_at(s, n, &ops, Vec::new(), None);
        }
        self.settle();
        ended
    }
}

/// 5 members, backups `k`: requests (all kinds) and quiescence; the network splits 3/2 (the
/// sides chosen at random) and each side fails over; on both sides, rounds of requests create
/// sessions and change, read or invalidate sessions it serves (the same sessions on both
/// sides, and others), without changes of id or moves; then the partition heals. At
/// quiescence every session is served by exactly one member, held by its placement's backups
/// at the same version with the same attributes ([`Cluster::assert_settled`]), and it is what
/// the rule makes of the two sides' primary copies at the heal: `reconcile` (with `merger`) of
/// two live copies (same version, attributes and last access time), the one side's copy, or,
/// for a session ended on one side, the other side's copy if its version is above the one the
/// session ended at (`live_beats_end`) and nothing otherwise. The merger is expected only for sessions both
/// sides changed.
fn partition_run(
    seed: u64,
    k: usize,
    merger: Option<Arc<dyn SessionMerger>>,
    end_one_in: u64,
    stagger: bool,
    t: &mut SplitTotals,
) {
    let n = 5;
    let mut c = Cluster::new(seed, jitter(), &cfg(k), n);
    for m in c.up() {
        let merger = merger.clone();
        c.sim.call(m, |node, _| node.core_mut().set_merger(merger));
    }
    let mix = Mix {
        sessions: 300,
        ..Mix::default()
    };
    let gap = (Duration::ZERO, us(100));
    let until = c.sim.now() + ms(30);
    c.run_workload(until, gap, &mix);
    c.calm(ms(2), gap, &mix);
    c.settle();
    // Each session's copy at the split (every copy alike after quiescence).
    let key = |s: &SessionState| (s.version, fingerprint(s));
    let mut at_split: HashMap<SessionId, (u64, u64)> = HashMap::new();
    for s in &c.live {
        let id = &c.sessions[*s].id;
        if let Some(p) = c.primaries(id).first() {
            if let Some(s) = c.sim.node(*p).core().session(id) {
                at_split.insert(id.clone(), key(s.state()));
            }
        }
    }
    let mut order: Vec<NodeId> = (0..n).map(NodeId).collect();
    for i in (1..n).rev() {
        order.swap(i, c.w.below(i as u64 + 1) as usize);
    }
    let sides: [BTreeSet<NodeId>; 2] = [
        order[..3].iter().copied().collect(),
        order[3..].iter().copied().collect(),
    ];
    c.split(&sides);
    c.settle();
    let rounds = c.w.between(2, 5);
    let mut ended: [HashMap<SessionId, u64>; 2] = Default::default();
    for _ in 0..rounds {
        for (i, side) in sides.iter().enumerate() {
            let creates = c.w.between(0, 20) as usize;
            let changes = c.w.between(10, 80) as usize;
            ended[i].extend(c.side_round(side, creates, changes, end_one_in));
        }
    }
    // What each side has of each session at the heal.
    let mut at_heal: Vec<(usize, [Side; 2])> = Vec::new();
    for s in 0..c.sessions.len() {
        let id = c.sessions[s].id.clone();
        let sides = [0, 1].map(|i| {
            let copy = c
                .primary_in(&sides[i], &id)
                .and_then(|p| c.sim.node(p).core().session(&id))
                .map(|s| s.state().clone());
            match (copy, ended[i].get(&id)) {
                (Some(s), _) => Side::Live(s),
                (None, Some(at)) => Side::Ended(*at),
                (None, None) => Side::Nothing,
            }
        });
        if !matches!(sides, [Side::Nothing, Side::Nothing]) {
            at_heal.push((s, sides));
        }
    }
    c.heal(stagger.then_some(ms(3)));
    c.settle();
    c.world.borrow_mut().healing = false;
    let mut errors = Vec::new();
    for (s, [a, b]) in &at_heal {
        let id = &c.sessions[*s].id;
        let want = match (a, b) {
            (Side::Live(a), Side::Live(b)) => {
                t.both_sides += 1;
                if Stamp::of(a) != Stamp::of(b) {
                    t.diverged += 1;
                }
                // The merger only if both sides changed it (see `BackupMessage::Reconcile`).
                let past = at_split
                    .get(id)
                    .is_some_and(|k| key(a) == *k || key(b) == *k);
                let m = if past { None } else { merger.as_deref() };
                let r = reconcile(a, b, m).unwrap_or_else(|| a.clone());
                if r.version > a.version.max(b.version) {
                    t.merged += 1;
                }
                Some(r)
            }
            (Side::Live(x), Side::Ended(at)) | (Side::Ended(at), Side::Live(x)) => {
                t.ended_one_side += 1;
                let lives = live_beats_end(x.version, *at);
                t.revived += u64::from(lives);
                lives.then(|| x.clone())
            }
            (Side::Live(x), Side::Nothing) | (Side::Nothing, Side::Live(x)) => Some(x.clone()),
            _ => None,
        };
        t.sessions += 1;
        let got = c
            .primaries(id)
            .first()
            .and_then(|p| c.sim.node(*p).core().session(id))
            .map(|s| s.state().clone());
        let brief = |x: &Side| match x {
            Side::Live(s) => format!(
                "v{} {} (accessed {})",
                s.version,
                show(&s.attributes.to_map()),
                s.last_accessed_ms
            ),
            Side::Ended(at) => format!("ended at v{at}"),
            Side::Nothing => "nothing".to_string(),
        };
        match (got, want) {
            (None, None) => {
                if let Some(n) = c
                    .up()
                    .into_iter()
                    .find(|n| c.sim.node(*n).core().session(id).is_some())
                {
                    errors.push(format!("{id} ended by the rule, still held by {n}"));
                }
            }
            (Some(g), None) => errors.push(format!(
                "{id} should have ended ({} and {}), is v{}",
                brief(a),
                brief(b),
                g.version
            )),
            (None, Some(_)) => errors.push(format!("{id} is lost ({} and {})", brief(a), brief(b))),
            (Some(g), Some(want)) => {
                let key = |s: &SessionState| (s.version, s.attributes.clone(), s.last_accessed_ms);
                if key(&g) != key(&want) {
                    errors.push(format!(
                        "{id}: v{} {} (accessed {}), the rule makes v{} {} (accessed {}) of {} and {}",
                        g.version,
                        show(&g.attributes.to_map()),
                        g.last_accessed_ms,
                        want.version,
                        show(&want.attributes.to_map()),
                        want.last_accessed_ms,
                        brief(a),
                        brief(b),
                    ));
                }
                // An end the rule overrode: the session lives on for its user, as the other
                // side had it (what the ended side acknowledged before its end is gone).
                let root = c.sessions[*s].root.clone();
                if matches!((a, b), (Side::Ended(_), _) | (_, Side::Ended(_))) {
                    let mut w = c.world.borrow_mut();
                    w.oracle.end_acked.remove(&root);
                    w.oracle.ended.remove(id);
                    w.oracle.acked_version.insert(root, g.version);
                }
                if c.sessions[*s].fate == Fate::Ended {
                    c.sessions[*s].fate = Fate::Live;
                    c.live.push(*s);
                }
            }
        }
    }
    if !errors.is_empty() {
        c.sim.fail(format_args!(
            "{} sessions not as the rule makes them, e.g.:\n  {}",
            errors.len(),
            errors[..errors.len().min(6)].join("\n  ")
        ));
    }
    c.assert_settled();
    let tr = c.traffic();
    t.digests += tr.sent("digest");
    t.reconciles += tr.sent("reconcile");
}

/// A session at the heal, on one side.
enum Side {
    /// Served there: its primary's copy.
    Live(SessionState),
    /// Ended there (invalidated), at this time.
    Ended(u64),
    Nothing,
}

/// Runs [`partition_run`] over `seeds` seeds, backups 1 and 2 alternately, and for half the
/// seeds of each the members notice the heal up to 3 ms apart.
/// One change in `end_one_in` on each side is an invalidation (0: none).
fn partition_runs(
    seeds: u64,
    merger: Option<Arc<dyn SessionMerger>>,
    end_one_in: u64,
) -> SplitTotals {
    let mut t = SplitTotals::default();
    let start = std::time::Instant::now();
    for_each_seed(seeds, |seed| {
        let k = 1 + (seed % 2) as usize;
        let stagger = (seed / 2) % 2 == 1;
        partition_run(seed, k, merger.clone(), end_one_in, stagger, &mut t);
    });
    eprintln!("partitions ({seeds} seeds, {:?}): {t:?}", start.elapsed());
    t
}

/// A 3/2 split of 5 members, requests on both sides, heal: every member converges to the
/// sessions the reconciliation rule makes (see [`partition_run`]). 200 seeds, backups 1 and 2.
#[test]
fn a_healed_partition_converges_to_the_rule_on_every_member() {
    let t = partition_runs(200, None, 10);
    if !replaying() {
        assert!(t.diverged > 1000 && t.both_sides > t.diverged, "{t:?}");
        assert!(t.revived > 100 && t.ended_one_side > t.revived, "{t:?}");
    }
}

/// The same with a merger (the union of both sides' attributes): a session both sides changed
/// survives as the merge, at a version above both sides'. 100 seeds.
#[test]
fn a_healed_partition_with_a_merger_converges_to_the_merged_sessions() {
    let t = partition_runs(100, Some(Arc::new(Union)), 10);
    if !replaying() {
        assert!(t.merged > 500, "{t:?}");
    }
}

// ---- the bugs, each reproduced on bare cores with a chosen delivery order ----

/// Bare [`BackupCore`]s with one FIFO queue per (sender, receiver), delivered in the order a
/// test chooses: the shortest way to show a race the simulation finds.
struct Cores {
    k: usize,
    nodes: BTreeMap<usize, BackupCore>,
    queues: BTreeMap<(usize, usize), std::collections::VecDeque<BackupMessage>>,
}

fn member(i: usize) -> MemberId {
    sim_member(NodeId(i)).id
}

fn index(m: &MemberId) -> usize {
    super::lane_node::node_of(m).map_or(usize::MAX, |n| n.0)
}

impl Cores {
    /// `n` members that all see each other.
    fn new(n: usize, k: usize) -> Cores {
        let mut c = Cores {
            k,
            nodes: BTreeMap::new(),
            queues: BTreeMap::new(),
        };
        for i in 0..n {
            c.add(i);
        }
        c.set_members();
        c
    }

    fn add(&mut self, i: usize) {
        let cfg = BackupConfig {
            backups: self.k,
            ..BackupConfig::default()
        };
        self.nodes
            .insert(i, BackupCore::new(cfg, member(i), &format!("node{i}")));
    }

    fn alive(&self) -> Vec<usize> {
        self.nodes.keys().copied().collect()
    }

    fn send(&mut self, from: usize, outs: Vec<Out>) {
        for o in outs {
            let to: Vec<usize> = match o.dest {
                Dest::All => self.alive().into_iter().filter(|i| *i != from).collect(),
                Dest::Member(m) => vec![index(&m)],
            };
            for t in to {
                if self.nodes.contains_key(&t) {
                    self.queues
                        .entry((from, t))
                        .or_default()
                        .push_back(o.msg.clone());
                }
            }
        }
    }

    /// Every member learns the current membership (failure detector or join).
    fn set_members(&mut self) {
        let members: Vec<MemberId> = self.alive().into_iter().map(member).collect();
        for i in self.alive() {
            let outs = self
                .nodes
                .get_mut(&i)
                .map(|c| c.set_members(members.clone()));
            self.send(i, outs.unwrap_or_default());
        }
    }

    /// Delivers the messages queued from `from` to `to`, in order.
    fn deliver(&mut self, from: usize, to: usize) {
        while let Some(msg) = self.queues.get_mut(&(from, to)).and_then(|q| q.pop_front()) {
            let Some(core) = self.nodes.get_mut(&to) else {
                return;
            };
            let (outs, _) = core.handle(member(from), &msg);
            self.send(to, outs);
        }
    }

    /// Delivers everything, queue by queue, until nothing is left.
    fn deliver_all(&mut self) {
        while let Some(&(from, to)) = self
            .queues
            .iter()
            .find(|(_, q)| !q.is_empty())
            .map(|(k, _)| k)
        {
            self.deliver(from, to);
        }
    }

    /// `i` crashes: what it had not delivered is lost.
    fn crash(&mut self, i: usize) {
        self.nodes.remove(&i);
        self.queues.retain(|(f, t), _| *f != i && *t != i);
    }

    fn core(&mut self, i: usize) -> &mut BackupCore {
        self.nodes.get_mut(&i).expect("a live member")
    }

    /// A session created on `p` with one attribute, replicated.
    fn session_on(&mut self, p: usize) -> SessionId {
        let id = self.core(p).create(EPOCH_MS).expect("id");
        let s = self.core(p).session_mut(&id).expect("session");
        s.set("a", &1u32).expect("set");
        let outs = self.core(p).end_request(&id, EPOCH_MS);
        self.send(p, outs);
        self.deliver_all();
        id
    }

    /// One change on `p` (`name` set to `v`), left undelivered.
    fn change(&mut self, p: usize, id: &SessionId, name: &str, v: u32) {
        let s = self.core(p).session_mut(id).expect("session");
        s.set(name, &v).expect("set");
        let outs = self.core(p).end_request(id, EPOCH_MS + 1);
        self.send(p, outs);
    }

    fn backups(&self, p: usize, id: &SessionId) -> Vec<usize> {
        self.nodes[&p]
            .backups_of(id)
            .unwrap_or_default()
            .iter()
            .map(index)
            .collect()
    }

    fn holders(&self, id: &SessionId) -> Vec<usize> {
        self.alive()
            .into_iter()
            .filter(|i| self.nodes[i].session(id).is_some())
            .collect()
    }

    fn primaries(&self, id: &SessionId) -> Vec<usize> {
        self.alive()
            .into_iter()
            .filter(|i| self.nodes[i].is_primary(id))
            .collect()
    }

    /// Version and attributes of `i`'s copy.
    fn attrs(&self, i: usize, id: &SessionId) -> Option<(u64, BTreeMap<String, Vec<u8>>)> {
        let s = self.nodes[&i].session(id)?;
        Some((s.version(), s.state().attributes.to_map()))
    }

    fn placement_of(&self, id: &SessionId, p: usize, members: &[usize]) -> Vec<usize> {
        let ms: Vec<MemberId> = members.iter().map(|i| member(*i)).collect();
        placement(id, member(p), &ms, self.k)
            .iter()
            .map(index)
            .collect()
    }
}

impl Cores {
    /// Delivers everything except the queues in `hold`.
    fn deliver_all_but(&mut self, hold: &[(usize, usize)]) {
        while let Some(&(from, to)) = self
            .queues
            .iter()
            .find(|(k, q)| !q.is_empty() && !hold.contains(k))
            .map(|(k, _)| k)
        {
            self.deliver(from, to);
        }
    }

    /// `t` fetches `id` and promotes itself on the first answer; its claim reaches only the
    /// members in `tell`.
    fn fetch_to(&mut self, t: usize, id: &SessionId, tell: &[usize]) {
        let ask = self.core(t).fetch(id);
        self.send(t, ask);
        let others: Vec<usize> = self.alive().into_iter().filter(|o| *o != t).collect();
        for o in &others {
            self.deliver(t, *o);
        }
        for o in &others {
            self.deliver(*o, t);
        }
        for o in tell {
            self.deliver(t, *o);
        }
    }

    /// Exactly one primary, held by it and the backups it lists (`1 + k` members).
    fn assert_placed(&self, id: &SessionId, what: &str) {
        let primaries = self.primaries(id);
        let [p] = primaries[..] else {
            panic!(
                "{what}: primaries {primaries:?}, held by {:?}",
                self.holders(id)
            );
        };
        let mut want = self.backups(p, id);
        want.push(p);
        want.sort();
        assert_eq!(self.holders(id), want, "{what}: held by, primary {p}");
        assert_eq!(want.len(), 1 + self.k.min(self.alive().len() - 1), "{what}");
    }
}

// Fixed by the ownership epochs (commit 05cd145); found against b4d20bb, kept as regressions.

/// Backups = 1. A request for a session reaches a third member T just as the primary dies: T
/// fetches, the backup B answers, then the failure detector makes B promote itself, and T
/// promotes itself on B's answer. Exactly one of the two claims wins (before the epochs, each
/// yielded to the other's `NewPrimary`, leaving no primary).
#[test]
fn a_fetch_during_a_failover_leaves_one_primary() {
    let mut c = Cores::new(5, 1);
    let id = c.session_on(0);
    let b = c.backups(0, &id)[0];
    let t = (1..5).find(|t| *t != b).expect("a third member");
    let ask = c.core(t).fetch(&id);
    c.send(t, ask);
    c.deliver(t, b); // B answers with its copy, queued to T
    c.crash(0);
    c.set_members(); // B promotes itself
    c.deliver_all(); // T promotes itself on B's answer; both see the other's claim
    assert_eq!(c.primaries(&id).len(), 1, "held by {:?}", c.holders(&id));
}

/// A member T fetches a session whose placement under T includes the old primary P, and P gets
/// T's messages last. P does not forward anything that re-creates the copy its backup B dropped
/// (before, T's promotion sent P an equal-version Copy, which P, still primary, forwarded to B).
#[test]
fn an_old_primary_does_not_forward_the_new_primarys_copy() {
    for _ in 0..200 {
        let mut c = Cores::new(4, 1);
        let id = c.session_on(0);
        let b = c.backups(0, &id)[0];
        let all = c.alive();
        let Some(t) = (1..4).find(|t| *t != b && c.placement_of(&id, *t, &all) == vec![0]) else {
            continue;
        };
        c.fetch_to(t, &id, &[b]);
        let outs = c.core(t).end_request(&id, EPOCH_MS + 1);
        c.send(t, outs);
        c.deliver_all_but(&[(t, 0)]);
        c.deliver(t, 0);
        c.deliver_all();
        c.assert_placed(&id, "after the move");
        c.crash(0);
        c.set_members();
        c.deliver_all();
        assert_eq!(c.primaries(&id), vec![t], "after P died");
        return;
    }
    panic!("no session with the wanted placement");
}

/// Backups = 2, primary P with backups [A, B]. A member J joins that ranks first for the
/// session: P sends J a Copy with backups [J, A] and drops B, but A keeps its list [A, B]. P
/// dies: A and J both promote themselves, and exactly one claim wins.
#[test]
fn after_a_join_the_two_backups_that_claim_agree_on_one_primary() {
    for joiner in 5..200 {
        let mut c = Cores::new(5, 2);
        let id = c.session_on(0);
        let a = c.backups(0, &id)[0];
        let mut with = c.alive();
        with.push(joiner);
        if c.placement_of(&id, 0, &with) != vec![joiner, a] {
            continue;
        }
        c.add(joiner);
        c.set_members();
        c.deliver_all();
        c.crash(0);
        c.set_members();
        c.deliver_all();
        assert_eq!(c.primaries(&id).len(), 1, "held by {:?}", c.holders(&id));
        assert_eq!(c.holders(&id).len(), 3);
        return;
    }
    panic!("no joiner ranks first");
}

// Fixed by the acknowledged hand-over (claims on every message, Drop only after the new
// holders acknowledged their copies, Orphan copies to the first backup, change of id
// re-placed after its renames); found against 4ab1c85, kept as regressions.

/// After a change of id the session keeps the old id's backups, which are not its new id's
/// placement: no member computing the placement finds them, and the next membership change moves
/// the session although no member it uses changed (the joins test counts these moves). With
/// stale failover lists it can also leave a session without primary (see
/// `after_a_join_a_renamed_session_still_fails_over`). Fix: `change_id` re-places (ChangeId to
/// the backups it keeps, Copy under the new id to new ones, Drop to the others).
#[test]
fn after_a_change_of_id_the_backups_are_the_new_ids_placement() {
    let mut c = Cores::new(5, 1);
    let mut id = c.session_on(0);
    for _ in 0..40 {
        let (new, outs) = c.core(0).change_id(&id).expect("id").expect("primary");
        c.send(0, outs);
        c.deliver_all();
        id = new;
        let want = c.placement_of(&id, 0, &c.alive());
        assert_eq!(
            c.backups(0, &id),
            want,
            "backups of {id} after a change of id"
        );
    }
}

/// Backups = 2, backups B1 (first in failover order) and B2. A delta reaches B2 but not B1, and
/// the primary dies: B1 promotes itself at the older version and B2 keeps the newer,
/// unacknowledged state (`NewPrimary` sends a newer copy back only from a member that was
/// primary). B1's next change has the same version number: B2 skips it as stale, then applies
/// B1's following change on top of the dead primary's state, a state nobody made. If B1 dies
/// next, B2 serves that. Fix: a backup whose copy is newer than a new primary's takes the
/// primary's copy (the primary's promotion Copy at a lower version must replace it: the change
/// it drops was never acknowledged), or sends its copy to the new primary whatever its role.
#[test]
fn after_a_failover_every_backup_follows_the_new_primary() {
    let mut c = Cores::new(5, 2);
    let id = c.session_on(0);
    let [b1, b2] = c.backups(0, &id)[..] else {
        panic!("two backups")
    };
    c.change(0, &id, "x", 1);
    c.deliver(0, b2);
    c.crash(0);
    c.set_members();
    c.deliver_all();
    assert_eq!(c.primaries(&id), vec![b1]);
    c.change(b1, &id, "y", 2);
    c.deliver_all();
    c.change(b1, &id, "z", 3);
    c.deliver_all();
    for h in c.holders(&id) {
        assert_eq!(c.attrs(h, &id), c.attrs(b1, &id), "copy on {h} (b2 = {b2})");
    }
}

/// Backups = 2. A new session's Copy reaches its second backup B2 but not its first B1, and the
/// primary dies: B1 (first alive in the failover order) does not hold it and B2 does not promote
/// because B1 is alive. The session stays a backup copy with no primary and its backup count is
/// never restored (a request reaching B2, or a fetch, would still find it). Fix: when the primary
/// dies, a backup that is not first sends its copy to the first one alive, which promotes itself
/// on it if it has none.
#[test]
fn a_copy_held_only_by_the_second_backup_is_promoted() {
    let mut c = Cores::new(5, 2);
    let id = c.core(0).create(EPOCH_MS).expect("id");
    let outs = c.core(0).end_request(&id, EPOCH_MS);
    c.send(0, outs);
    let [_, b2] = c.backups(0, &id)[..] else {
        panic!("two backups")
    };
    c.deliver(0, b2);
    c.crash(0);
    c.set_members();
    c.deliver_all();
    assert_eq!(c.primaries(&id).len(), 1, "held by {:?}", c.holders(&id));
}

/// Backups = 1. A member joins and becomes a session's backup: its primary P sends it a Copy and
/// sends the old backup B a Drop, on two connections. The Drop arrives first and P dies before
/// the Copy arrives: the session, whose last change B had acknowledged, is gone everywhere.
/// Fix: drop the old backup only once the new one has the copy (P sends Drop when the Copy is
/// acknowledged, or the new backup tells the displaced one).
#[test]
fn a_crash_right_after_a_join_loses_no_acknowledged_session() {
    for joiner in 5..200 {
        let mut c = Cores::new(5, 1);
        let id = c.session_on(0); // acknowledged: B has it
        let b = c.backups(0, &id)[0];
        let mut with = c.alive();
        with.push(joiner);
        if c.placement_of(&id, 0, &with) != vec![joiner] {
            continue;
        }
        c.add(joiner);
        c.set_members(); // P: Copy to the joiner, Drop to B
        c.deliver(0, b);
        c.crash(0);
        c.set_members();
        c.deliver_all();
        assert!(!c.holders(&id).is_empty(), "the session is lost");
        return;
    }
    panic!("no joiner takes the session");
}

/// Backups = 2, primary P with backups T and B. T takes the session over (a request reached
/// it) and keeps B as a backup. Before T's `NewPrimary` reaches P, a member joins; P, still
/// primary in its own eyes, re-places and its new placement leaves B out: it sends B a Drop. B,
/// now T's backup, drops its copy (`Drop` is taken from any sender): T has one backup instead of
/// two, and nobody repairs it until the next membership change. Fix: take a Drop only from the
/// member this node backs the session up for (`Role::Backup { primary }`), or carry the epoch
/// in Drop and ignore older ones.
#[test]
fn a_drop_from_a_former_primary_leaves_the_new_primarys_backup() {
    for _ in 0..200 {
        let mut c = Cores::new(5, 2);
        let id = c.session_on(0);
        let all = c.alive();
        let backups = c.backups(0, &id);
        // T and B, P's backups; after a join P leaves B out while T keeps it.
        let found = backups.iter().find_map(|&t| {
            let b = *backups.iter().find(|x| **x != t)?;
            let j = (5..100).find(|j| {
                let mut with = all.clone();
                with.push(*j);
                c.placement_of(&id, t, &all).contains(&b)
                    && !c.placement_of(&id, 0, &with).contains(&b)
                    && c.placement_of(&id, t, &with).contains(&b)
            })?;
            Some((t, b, j))
        });
        let Some((t, b, joiner)) = found else {
            continue;
        };
        let outs = c.core(t).take_over(&id);
        c.send(t, outs);
        let outs = c.core(t).end_request(&id, EPOCH_MS + 1);
        c.send(t, outs);
        c.deliver(t, b); // B backs T up
        c.add(joiner);
        c.set_members(); // P, not yet told, drops B
        c.deliver(0, b);
        c.deliver_all();
        c.assert_placed(&id, "after the join");
        return;
    }
    panic!("no session with the wanted placement");
}

/// Backups = 2. A session renamed many times (each change of id re-places it) and a member
/// joins that changes the new id's placement; the primary dies: the session fails over to one
/// primary held by its placement. (Before, a renamed session kept the old id's backups and their
/// stale failover order, and nobody promoted.)
#[test]
fn after_a_join_a_renamed_session_still_fails_over() {
    let mut c = Cores::new(5, 2);
    let mut id = c.session_on(0);
    for _ in 0..60 {
        let (new, outs) = c.core(0).change_id(&id).expect("id").expect("primary");
        c.send(0, outs);
        c.deliver_all();
        id = new;
        c.assert_placed(&id, "after the change of id");
        let all = c.alive();
        let before = c.placement_of(&id, 0, &all);
        let joiner = (5..60).find(|j| {
            let mut with = all.clone();
            with.push(*j);
            c.placement_of(&id, 0, &with) != before
        });
        let Some(joiner) = joiner else { continue };
        c.add(joiner);
        c.set_members();
        c.deliver_all();
        c.assert_placed(&id, "after the join");
        c.crash(0);
        c.set_members();
        c.deliver_all();
        c.assert_placed(&id, "after the primary died");
        return;
    }
    panic!("no renamed session with the wanted placement");
}

/// Backups = 1. T fetches a session from its primary P and claims it; the backup B, whose
/// primary P dies at that moment, claims it too (same epoch) and sends its Copy to its own
/// choice X. T's claim reaches X first (X holds nothing yet and ignores it), then B's Copy and
/// `NewPrimary`: X keeps a copy as B's backup. T wins the tie, B yields, but nobody tells X: a
/// stray copy that names B as primary. Fix: members remember claims for sessions they do not
/// hold (a bounded map like the tombstones) and refuse older or losing Copies, or the winner
/// re-sends its `NewPrimary` to every member rather than only to the loser.
#[test]
fn a_claim_that_loses_a_tie_leaves_no_stray_copy() {
    for _ in 0..200 {
        let mut c = Cores::new(5, 1);
        let id = c.session_on(0);
        let b = c.backups(0, &id)[0];
        let rest: Vec<usize> = (1..5).filter(|x| *x != b).collect();
        // T wins the tie against B (higher member id); X is B's choice, not T's.
        let pick = rest.iter().copied().find(|t| {
            let x = c.placement_of(&id, b, &rest.iter().copied().chain([b]).collect::<Vec<_>>());
            member(*t) > member(b)
                && x.first().is_some_and(|x| x != t)
                && c.placement_of(
                    &id,
                    *t,
                    &rest.iter().copied().chain([b]).collect::<Vec<_>>(),
                ) != x
        });
        let Some(t) = pick else { continue };
        let ask = c.core(t).fetch(&id);
        c.send(t, ask);
        c.deliver(t, b); // B answers with its copy, queued to T
        c.crash(0);
        c.set_members(); // B promotes itself: Copy to X, NewPrimary to all
        let survivors: Vec<usize> = c.alive();
        let x = c.placement_of(&id, b, &survivors)[0];
        c.deliver_all_but(&[(b, x)]); // T claims; X hears T first
        c.deliver(b, x);
        c.deliver_all();
        c.assert_placed(&id, "after the tie");
        return;
    }
    panic!("no session with the wanted placement");
}

/// Backups = 1, primary P, backup B. B takes the session over (a request reached it); before
/// its `NewPrimary` reaches P, a member J joins that ranks first under P. P, still primary in its
/// own eyes, re-places and sends J a Copy. J, which was not a member when B claimed the session
/// (and a member that holds nothing ignores claims anyway), keeps it as a backup of P: a stray
/// copy B does not know of. In the simulation a later request that reaches J makes J take this
/// stale copy over: two members serve the session, the history forks (`history-never-forks`) and
/// the tie-break by member id can discard acknowledged changes. Fix: a demoted primary sends
/// Drop to the backups it chose since (or members refuse a Copy from a member whose claim they
/// know is superseded: remember claims for sessions not held, in a bounded map).
#[test]
fn a_late_copy_from_a_former_primary_leaves_no_stray_copy() {
    for _ in 0..200 {
        let mut c = Cores::new(5, 1);
        let id = c.session_on(0);
        let b = c.backups(0, &id)[0];
        let all = c.alive();
        let joiner = (5..100).find(|j| {
            let mut with = all.clone();
            with.push(*j);
            c.placement_of(&id, 0, &with) == vec![*j] && c.placement_of(&id, b, &with) == vec![0]
        });
        let Some(joiner) = joiner else { continue };
        let outs = c.core(b).take_over(&id);
        c.send(b, outs);
        let outs = c.core(b).end_request(&id, EPOCH_MS + 1);
        c.send(b, outs);
        c.add(joiner);
        c.set_members(); // P, not yet told, copies the session to J
        c.deliver_all_but(&[(b, 0)]);
        c.deliver_all();
        c.assert_placed(&id, "after the join");
        return;
    }
    panic!("no session with the wanted placement");
}

/// Backups = 1, primary P, backup B. P's access refresh (`Accessed`, sent at the end of a read)
/// is still on its way to B when T fetches the session, names P as its backup and so makes B
/// drop its copy. The late `Accessed` then reaches B, which no longer holds the session: B asks
/// P for a copy (`GetCopy`), and P, not yet told of T's claim, answers it (a primary answers any
/// member). B keeps a copy as P's backup that nobody knows of; a later request reaching B takes
/// this copy over (see `a_late_copy_from_a_former_primary_leaves_no_stray_copy`). In the
/// simulation this needs the refresh to be slower than the move: with sync-ack the user waits for
/// it, so the workload does. Fix: answer `GetCopy` only from a member in the session's backups
/// (else answer `Drop`), and do not ask for a copy on `Accessed` of a session not held.
#[test]
fn a_late_access_refresh_leaves_no_stray_copy() {
    for _ in 0..200 {
        let mut c = Cores::new(5, 1);
        let id = c.session_on(0);
        let b = c.backups(0, &id)[0];
        let all = c.alive();
        let t = (1..5).find(|t| *t != b && c.placement_of(&id, *t, &all) == vec![0]);
        let Some(t) = t else { continue };
        let later = EPOCH_MS + 16 * 60 * 1000;
        let outs = c.core(0).end_request(&id, later); // Accessed to B, in flight
        assert!(matches!(
            outs[..],
            [Out {
                msg: BackupMessage::Accessed { .. },
                ..
            }]
        ));
        c.send(0, outs);
        let others: Vec<usize> = all.iter().copied().filter(|o| *o != 0).collect();
        c.fetch_to(t, &id, &others); // B follows T's claim
        c.deliver(0, b); // the late Accessed, from a superseded claim
        c.deliver(b, 0);
        c.deliver(0, b);
        let outs = c.core(t).end_request(&id, later);
        c.send(t, outs);
        c.deliver_all();
        c.assert_placed(&id, "after the move");
        return;
    }
    panic!("no session with the wanted placement");
}

/// Backups = 1, primary P, backup B. T fetches the session and claims it, naming B as its
/// backup; P, not named, drops its copy on T's `NewPrimary`. T dies before its claim (and the
/// copy that goes with the end of its request) reaches B. B still backs the session up for P,
/// which is alive but no longer has it: nobody promotes, the session has no primary (and in the
/// simulation, where T's request may have changed it, the acknowledged change is lost). The
/// issue asks for no window in which a moving session is missing. Fix: the old primary keeps its
/// copy (as a backup of the new one) until the new primary's backups acknowledge its copy, e.g.
/// the new primary sends its Copy before `NewPrimary` and `NewPrimary` only once the Copy is
/// acknowledged, or holders drop on a later `Drop` rather than on the claim.
#[test]
fn a_new_primary_that_dies_right_after_a_move_leaves_a_primary() {
    for _ in 0..100 {
        let mut c = Cores::new(5, 1);
        let id = c.session_on(0);
        let b = c.backups(0, &id)[0];
        let all = c.alive();
        let t = (1..5).find(|t| *t != b && c.placement_of(&id, *t, &all) == vec![b]);
        let Some(t) = t else { continue };
        c.fetch_to(t, &id, &[0]);
        assert_eq!(c.primaries(&id), vec![t]);
        c.crash(t); // before its request ends and before B heard of it
        c.set_members();
        c.deliver_all();
        assert_eq!(c.primaries(&id).len(), 1, "held by {:?}", c.holders(&id));
        return;
    }
    panic!("no session with the wanted placement");
}

// ---- found on real processes (tests/http_faults.rs, BackupManager, strict) ----

impl Cores {
    /// Ends a request on `t` that began on the copy `t` served (`value` set in the request's
    /// own copy of the session) the way `Request::end` does: the change recorded on the stored
    /// session, `end_request`'s messages sent. `Err(m)`: the request is refused (answered 503
    /// under `--strict-replication`): `m` serves the session now.
    fn end_request_like_the_shell(
        &mut self,
        t: usize,
        id: &SessionId,
        value: u32,
    ) -> Result<(), MemberId> {
        if let Some(m) = self.core(t).served_elsewhere(id) {
            return Err(m);
        }
        let Some(stored) = self.core(t).session_mut(id) else {
            return Ok(()); // invalidated meanwhile
        };
        stored.set("n", &value).expect("set");
        let outs = self.core(t).end_request(id, EPOCH_MS + 2);
        self.send(t, outs);
        Ok(())
    }
}

/// Found by `backup_manager_strict_replication_loses_no_acknowledged_change_under_sigkill`
/// (3 of 15 runs, docs/RELIABILITY.md): primary P (node 0) dies; its backup B fails over while
/// the member T the user's next request reached fetches the session and, P not answering, takes
/// B's copy over. Both claims come from the same copy with the same epoch, and the tie went to
/// the higher member id, B: T yielded while the request ran, so the request found no session
/// (the app made a new one), or its change, recorded on what was now a backup copy, sent
/// nothing and was answered 200 with no member keeping it. The member serving the user must
/// keep the session, and a change answered 200 must be on the primary and its backup.
#[test]
fn a_fetch_racing_the_failover_of_the_copy_it_takes_keeps_the_requests_change() {
    let mut hits = 0;
    for _ in 0..400 {
        let mut c = Cores::new(3, 1);
        let id = c.session_on(0);
        let b = c.backups(0, &id)[0];
        if b != 2 {
            continue; // the race lost: B's member id above T's
        }
        let t = 1;
        hits += 1;
        c.crash(0);
        // The user's request reaches T, which asks every member; B answers with its copy (P's
        // claim, not current); T still waits for P.
        let ask = c.core(t).fetch(&id);
        c.send(t, ask);
        c.deliver(t, b);
        c.deliver(b, t);
        assert!(c.core(t).is_fetching(&id));
        // Both notice that P left (the restart detection's "gone and back"): T's fetch ends on
        // B's copy, B fails over. Neither has heard the other's claim yet.
        c.set_members();
        assert!(
            c.core(t).is_primary(&id),
            "T serves the session for the waiting request"
        );
        // The request reads T's copy, then the claims cross while it runs.
        c.deliver_all();
        let ended = c.end_request_like_the_shell(t, &id, 7);
        c.deliver_all();
        assert_eq!(
            ended,
            Ok(()),
            "a request on the member that won the session"
        );
        c.assert_placed(&id, "after the race");
        let primary = c.primaries(&id)[0];
        for h in c.holders(&id) {
            let n = c.nodes[&h]
                .session(&id)
                .and_then(|s| s.get::<u32>("n").ok().flatten());
            assert_eq!(
                n,
                Some(7),
                "the change answered 200 on {t}: holder {h} (primary {primary})"
            );
        }
    }
    assert!(hits > 50, "{hits} sessions with the wanted placement");
}

/// The other half of the loss above, for any higher claim: a member whose request is running on
/// the session yields it to a higher claim (here another member's fetch) before the request
/// ends. The request must be refused: before, its change was recorded on what had become a
/// backup copy, `end_request` sent nothing, and the shell answered 200 with the change on no
/// member that kept the session.
#[test]
fn a_request_whose_session_moved_away_while_it_ran_is_refused() {
    let mut c = Cores::new(4, 1);
    let id = c.session_on(0);
    let all = c.alive();
    let b = c.backups(0, &id)[0];
    let mut others = all.iter().copied().filter(|m| *m != 0 && *m != b);
    let (t, u) = (others.next().expect("T"), others.next().expect("U"));
    c.fetch_to(t, &id, &all); // T serves the session; its request reads it
    assert_eq!(c.primaries(&id), vec![t]);
    c.fetch_to(u, &id, &all); // a request for it on U: U takes it from T, T yields
    c.deliver_all();
    assert_eq!(c.core(t).served_elsewhere(&id), Some(member(u)));
    assert_eq!(c.end_request_like_the_shell(t, &id, 7), Err(member(u)));
    let outs = c.core(u).end_request(&id, EPOCH_MS + 3); // U's request ends: the hand-over
    c.send(u, outs);
    c.deliver_all();
    c.assert_placed(&id, "after the move");
    assert_eq!(c.primaries(&id), vec![u]);
    for h in c.holders(&id) {
        let n = c.nodes[&h]
            .session(&id)
            .and_then(|s| s.get::<u32>("n").ok().flatten());
        assert_eq!(n, None, "the refused change on holder {h}");
    }
}

/// Why a refusal loop ("not applied here: another member serves it now" for every change of a
/// session its primary keeps serving) never ended: a claim remembered for a session not held
/// here outlived its claimant. Backups = 1, primary P, backup B. Q takes the session over (a
/// request reached it; its fetch never reached P, whose answer would have handed the session
/// over, and ended at its deadline on B's copy) and dies with its `NewPrimary` on the way to P,
/// after R got it: R, which holds no copy, remembers Q's claim. P never heard of Q and serves
/// on. B dies too: P places the session on R, which refuses P's copy and then every change as
/// coming from a superseded claim, although nobody serves the session under Q's claim any more.
#[test]
fn a_claim_remembered_for_a_member_that_left_does_not_refuse_the_live_primary() {
    let mut c = Cores::new(4, 1);
    let id = c.session_on(0);
    let b = c.backups(0, &id)[0];
    let mut others = (1..4).filter(|m| *m != b);
    let (q, r) = (others.next().expect("Q"), others.next().expect("R"));
    let ask = c.core(q).fetch(&id);
    c.send(q, ask);
    for o in [b, r] {
        c.deliver(q, o);
        c.deliver(o, q);
    }
    let outs = c.core(q).end_fetch(&id); // the deadline: B's copy
    c.send(q, outs);
    c.deliver(q, r); // Q's claim reaches R only
    assert!(c.core(q).is_primary(&id), "Q serves it");
    assert!(c.core(r).is_superseded(&id, 0, member(0)));
    c.crash(q); // its NewPrimary to P and B dies with it
    c.set_members();
    c.deliver_all();
    assert_eq!(c.primaries(&id), vec![0], "P serves on");
    c.crash(b);
    c.set_members(); // P places the session on R
    c.deliver_all();
    for v in 2..5 {
        c.change(0, &id, "n", v);
        c.deliver_all();
        assert!(!c.core(r).is_superseded(&id, 0, member(0)), "R refuses P");
    }
    c.assert_placed(&id, "after B left");
    assert_eq!(c.attrs(r, &id), c.attrs(0, &id), "R follows P");
}

/// Backups = 1, members 0, 1, 2; a session served by 0. The network splits {0} | {1, 2}: its
/// backup takes it over on the other side, where it stays at version 1; on 0 its users change
/// it (version 3). The members notice the heal one after another: 0 first, which sends its
/// digest; then 0's user ends the session (version 3). The other side's claimant (the higher
/// claim) gets 0's digest (it does not yield to a lower claim), notices the heal, sends its
/// digest, then gets 0's copy and `Expired`, which it ignores (a superseded claim). Its digest
/// reaches 0, which no longer serves the session: before the fix 0 said nothing, and the
/// claimant's older copy lived on. The rule says an end beats a copy not changed past its version: the session must
/// end everywhere, not live on at version 1 (found by the detected-membership simulation,
/// seed 4: the session lived on below a version acknowledged on 0's side).
#[test]
fn an_end_made_while_a_heal_is_noticed_beats_the_other_sides_older_copy() {
    let mut c = Cores::new(3, 1);
    let id = c.session_on(0);
    let b = c.backups(0, &id)[0];
    let other = 3 - b; // the third member, on b's side
    let (all, side): (Vec<MemberId>, Vec<MemberId>) =
        ((0..3).map(member).collect(), vec![member(b), member(other)]);
    // The split: each side's detector drops the other.
    let outs = c.core(0).set_members(vec![member(0)]);
    c.send(0, outs);
    for i in [b, other] {
        let outs = c.core(i).set_members(side.clone());
        c.send(i, outs);
    }
    c.queues.retain(|(f, t), _| (*f == 0) == (*t == 0));
    c.deliver_all();
    assert_eq!(c.primaries(&id), vec![0, b], "both sides serve it");
    c.change(0, &id, "a", 2);
    c.change(0, &id, "a", 3);
    c.queues.clear(); // 0 has no backup on its side
    assert_eq!(c.attrs(0, &id).map(|a| a.0), Some(3));
    // The heal, noticed by 0 first: its digest goes out, then its user ends the session.
    let outs = c.core(0).set_members(all.clone());
    c.send(0, outs);
    let (outs, _) = c.core(0).invalidate(&id);
    c.send(0, outs);
    // 0's digest reaches the claimant, which then notices the heal; 0's copy and end follow.
    let digest = c.queues.get_mut(&(0, b)).and_then(|q| q.pop_front());
    assert!(matches!(digest, Some(BackupMessage::Digest { .. })));
    if let Some(msg) = digest {
        let (outs, _) = c.core(b).handle(member(0), &msg);
        c.send(b, outs);
    }
    for i in [b, other] {
        let outs = c.core(i).set_members(all.clone());
        c.send(i, outs);
    }
    c.deliver(0, b);
    c.deliver(0, other);
    c.deliver_all();
    assert_eq!(
        c.holders(&id),
        Vec::<usize>::new(),
        "the end at version 3 beats the copy at version 1"
    );
}

/// A clean stop without `expire_sessions_on_shutdown` ends the stopping member's sessions
/// there only: the members that stay keep every session. While it still receives (for up to
/// 30 ms before it goes), the users of the sessions it served reach other members (a balancer
/// moves them): each fetches the session, takes it over from its backup's copy and places a
/// copy on the stopping member, which is still listed. Before the fix that member had buried
/// each session it served as ended, so it answered that copy with the end, and the new primary
/// ended the session.
#[test]
fn a_clean_stop_ends_no_session_on_the_members_that_stay() {
    let (mut moved, mut kept, mut asked) = (0u64, 0u64, 0u64);
    for_each_seed(64, |seed| {
        let n = 4 + (seed % 2) as usize;
        let mut c = Cluster::new(seed, jitter(), &cfg(1), n);
        let mix = Mix {
            sessions: 200,
            ..Mix::default()
        };
        let gap = (Duration::ZERO, us(200));
        let until = c.sim.now() + ms(40);
        c.run_workload(until, gap, &mix);
        c.calm(ms(5), gap, &mix);
        c.settle();
        let victim = NodeId(c.w.below(n as u64) as usize);
        let j = &c.sim.node(victim).journal;
        let before = j.received("copy") + j.received("get-copy") + j.received("fetch");
        c.sim.call(victim, |node, ctx| node.stop_cleanly(ctx));
        // Moves made while the member leaves are checked at the end, not one by one.
        c.epoch += 1;
        let others: Vec<NodeId> = c.up().into_iter().filter(|x| *x != victim).collect();
        let theirs: Vec<usize> = c
            .live
            .iter()
            .copied()
            .filter(|s| c.sessions[*s].server == victim && !c.busy(*s))
            .collect();
        for s in theirs {
            let t = others[c.w.below(others.len() as u64) as usize];
            // A read leaves the version where the stop found it (a change would beat an end).
            let ops = if c.w.below(2) == 0 {
                vec![Op::Read]
            } else {
                c.change_ops()
            };
            c.switch(s, t, ops);
            moved += 1;
        }
        // The moved requests are served (and their copies placed) as their fetches end.
        let gone_at = c.sim.now() + c.w.duration_between(Duration::ZERO, ms(30));
        while c.sim.now() < gone_at {
            let t = (c.sim.now() + us(200)).min(gone_at);
            c.sim.run_until(t, |_| false);
            c.progress_moves();
        }
        let j = &c.sim.node(victim).journal;
        asked += j.received("copy") + j.received("get-copy") + j.received("fetch") - before;
        c.crash(&[victim]);
        c.forget(&[victim]);
        c.settle();
        let h = c.assert_settled();
        kept += h.values().sum::<u64>();
    });
    eprintln!(
        "clean stop: {moved} sessions moved off the stopping member, {asked} copies, fetches \
         and copy requests it answered after its stop, {kept} sessions held at the end"
    );
    if !replaying() {
        assert!(moved > 0 && asked > 0, "nobody asked the stopping member");
    }
}
