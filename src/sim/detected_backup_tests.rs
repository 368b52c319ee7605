//! BackupManager members whose views come only from the real failure detector
//! (`BackupNode::detected`): heartbeats over lossy simulated multicast, pings and TCP
//! verification over the same simulated network as the sessions' messages. Nothing here sets a
//! view or tells a node that another left: crashes, restarts under the same member id and
//! partitions are noticed by each detector in its own time (not at the same instant on every
//! member), a partition makes members falsely suspect live ones, a heal makes them re-add
//! them, and a restart is noticed as "gone and back" (a new incarnation in a handshake) or as a
//! disappearance followed by an addition.
//!
//! The workload is the parent module's ([`Cluster::request`]); the invariants of
//! `check_backup` stay on after every step. What a partition allows, as in the parent's
//! partition tests: while the network is split and until the cluster has settled after the
//! heal (`World::healing`), a session may be served on both sides, so a backup may briefly hold
//! the other side's older copy (`versions-never-go-back` and `ended-stays-ended` are relaxed
//! then, nothing else), and states made on both sides by members that do not list each other
//! are alternatives the heal reconciles (`Oracle::alts`).

use super::*;
use crate::sim::backup_node::Change;
use crate::sim::membership_node::{EventKind, MembershipSimConfig};

/// Membership timing scaled down with the workload (production: 500 ms heartbeats, 3 s drop
/// time, 1 s pings): heartbeats every 25 ms, silence suspected after 150 ms, pings every
/// 50 ms, verification and pings time out after 25 ms.
fn detector_cfg() -> MembershipSimConfig {
    MembershipSimConfig {
        frequency: ms(25),
        drop_time: ms(150),
        expiration_time: ms(250),
        ping_interval: Some(ms(50)),
        connect_timeout: ms(25),
        verify: true,
        ..MembershipSimConfig::default()
    }
}

/// The parent's latency jitter, and heartbeats lost at random (5 %, any number in a row).
fn hostile() -> Faults {
    Faults {
        datagram_loss: 0.05,
        datagram_latency: (us(50), ms(3)),
        ..jitter()
    }
}

/// What the runs add up to.
#[derive(Debug, Default)]
struct Totals {
    seeds: u64,
    sessions: u64,
    /// Changes made by requests and acknowledged by every member they went to.
    acked_changes: u64,
    /// A member announced the crashed member gone while it was down.
    detections: u64,
    /// A member announced a live member gone (partitions; lost heartbeats that verification
    /// could not refute).
    false_suspicions: u64,
    /// Restarts noticed by a new incarnation in a handshake (gone and back at once).
    restarts_seen: u64,
    /// Restarts done before any member had noticed the crash.
    restarts_before_detection: u64,
    /// Ends acknowledged on one side of a split that the other side's later copy overrode
    /// (the rule: `live_beats_end`).
    ends_overridden: u64,
    failovers: u64,
    waited: u64,
    failed_sends: u64,
    counts: Counts,
}

/// A [`Cluster`] of detected members, and when the crashed member was down.
struct Detected {
    c: Cluster,
    /// Membership announcements already counted in the cluster's epoch.
    seen_events: usize,
    /// (member, down from, down until).
    downs: Vec<(NodeId, Duration, Option<Duration>)>,
    /// Announcements up to this time were printed (replaying).
    last_said: Duration,
    /// When the network split.
    split_at: Option<Duration>,
}

impl Detected {
    fn new(seed: u64, k: usize, n: usize) -> Detected {
        let world: SharedWorld = Rc::new(RefCell::new(World::default()));
        let mut sim = Sim::new(seed, hostile());
        let (cfg, mcfg) = (cfg(k), detector_cfg());
        for _ in 0..n {
            let (c, w, m) = (cfg.clone(), world.clone(), mcfg.clone());
            sim.add_node(move |id, rng| BackupNode::new(id, c, w, rng).detected(&m, rng));
        }
        Detected {
            c: Cluster::around(sim, world, &cfg),
            seen_events: 0,
            downs: Vec::new(),
            last_said: Duration::ZERO,
            split_at: None,
        }
    }

    /// Every up member lists exactly the other up members.
    fn views_agree(sim: &Sim<BackupNode>) -> bool {
        let up: BTreeSet<NodeId> = sim.node_ids().filter(|n| sim.is_up(*n)).collect();
        up.iter().all(|n| {
            let d = sim.node(*n).detector.as_ref().expect("a detected member");
            d.listed().len() + 1 == up.len() && d.listed().iter().all(|m| up.contains(m))
        })
    }

    /// Membership announcements so far, on every member.
    fn events(&self) -> usize {
        let sim = &self.c.sim;
        sim.node_ids()
            .filter_map(|n| sim.node(n).detector.as_ref())
            .map(|d| d.node.journal.events.len())
            .sum()
    }

    /// The cluster's epoch (which decides whether a move is checked) moves with every
    /// announcement, as it moved with every view the parent's tests set.
    fn sync_epoch(&mut self) {
        let e = self.events();
        if replaying() && e > self.seen_events {
            let sim = &self.c.sim;
            for n in sim.node_ids() {
                let Some(d) = sim.node(n).detector.as_ref() else {
                    continue;
                };
                for ev in d
                    .node
                    .journal
                    .events
                    .iter()
                    .filter(|ev| ev.at > self.last_said)
                {
                    eprintln!(
                        "  {:?} {n} (life {}): {} {:?}",
                        ev.at, ev.life, ev.member, ev.kind
                    );
                }
            }
            self.last_said = sim.now();
        }
        self.c.epoch += (e - self.seen_events) as u64;
        self.seen_events = e;
    }

    /// Requests at random gaps until `until`, as [`Cluster::run_workload`].
    fn run(&mut self, until: Duration, gap: (Duration, Duration), mix: &Mix) {
        loop {
            let t = self.c.sim.now() + self.c.w.duration_between(gap.0, gap.1);
            if t > until {
                self.c.sim.run_until(until, |_| false);
                self.sync_epoch();
                return;
            }
            self.c.sim.run_until(t, |_| false);
            self.sync_epoch();
            self.c.request(mix);
        }
    }

    /// Runs (no requests) until the detectors agree; fails after `within`.
    fn converge(&mut self, within: Duration) {
        let deadline = self.c.sim.now() + within;
        if !self.c.sim.run_until(deadline, Self::views_agree) {
            let views: Vec<(NodeId, BTreeSet<NodeId>)> = self
                .c
                .up()
                .into_iter()
                .map(|n| (n, self.c.sim.node(n).view()))
                .collect();
            self.c.sim.fail(format_args!(
                "no full membership within {within:?}: {views:?}"
            ));
        }
        self.sync_epoch();
    }

    /// No new requests: runs until the detectors agree, no fetch is pending, every tracked send
    /// is settled and every ack paid (the detectors' heartbeats never stop, so "idle" is this).
    fn settle(&mut self) {
        let deadline = self.c.sim.now() + Duration::from_secs(5);
        let quiet = |sim: &Sim<BackupNode>| {
            Self::views_agree(sim)
                && sim
                    .node_ids()
                    .filter(|n| sim.is_up(*n))
                    .all(|n| sim.node(n).unsettled() == 0 && sim.node(n).owed() == 0)
        };
        loop {
            let step = self.c.sim.now() + ms(5);
            let done = self.c.sim.run_until(step, quiet);
            self.sync_epoch();
            self.c.progress_moves();
            if done && self.c.moving.is_empty() {
                break;
            }
            if self.c.sim.now() > deadline {
                let waiting: Vec<(NodeId, Vec<String>)> = self
                    .c
                    .up()
                    .into_iter()
                    .map(|n| (n, self.c.sim.node(n).waiting_for()))
                    .filter(|(_, w)| !w.is_empty())
                    .collect();
                self.c.sim.fail(format_args!(
                    "the cluster did not settle: views agree {}, {} fetches pending, acks {waiting:?}",
                    Self::views_agree(&self.c.sim),
                    self.c.moving.len()
                ));
            }
        }
        // Let the last acks' effects land, then check the moves made.
        let until = self.c.sim.now() + ms(5);
        self.c.sim.run_until(until, |_| false);
        self.c.check_moves();
    }

    /// Replaying one seed: says what happens when.
    fn say(&self, what: impl std::fmt::Display) {
        if replaying() {
            eprintln!("{:?} {what}", self.c.sim.now());
        }
    }

    /// What a partition allows: an end acknowledged on one side after the split loses to the
    /// other side's copy if that side changed it past the end (`live_beats_end`, as the
    /// parent's partition tests expect): the session lives on for its user, and its end is no
    /// longer an acknowledged one. Only for a copy whose version a member of the other side
    /// made. Returns how many.
    fn ends_the_rule_overrode(&mut self) -> u64 {
        let Some(split_at) = self.split_at else {
            return 0;
        };
        let mut overridden = 0;
        let up = self.c.up();
        let mut w = self.c.world.borrow_mut();
        for s in 0..self.c.sessions.len() {
            let root = self.c.sessions[s].root.clone();
            if !w.oracle.end_acked.contains(&root) {
                continue;
            }
            let origin = w.oracle.acked.iter().rev().find_map(|a| match &a.change {
                Change::Ended(id) if a.request && a.at >= split_at && w.oracle.root(id) == root => {
                    Some(a.origin)
                }
                _ => None,
            });
            let Some(origin) = origin else { continue };
            let chain = w.oracle.chain(&root);
            let live = up.iter().find_map(|p| {
                let node = self.c.sim.node(*p);
                let id = chain.iter().find(|id| node.core().is_primary(id))?;
                node.copy(id).map(|(v, a)| (id.clone(), v, a.clone()))
            });
            let Some((id, v, attrs)) = live else { continue };
            let maker = w
                .oracle
                .states
                .get(&id)
                .and_then(|m| m.get(&v))
                .map(|m| m.1);
            let across = |m: NodeId| w.split.contains(&(m.min(origin), m.max(origin)));
            if maker.is_some_and(across) || w.oracle.is_alt(&id, v, &attrs) {
                w.oracle.end_acked.remove(&root);
                for id in &chain {
                    w.oracle.ended.remove(id);
                }
                w.oracle.acked_version.insert(root, v);
                if self.c.sessions[s].fate == Fate::Ended {
                    self.c.sessions[s].fate = Fate::Live;
                    self.c.live.push(s);
                }
                overridden += 1;
            }
        }
        overridden
    }

    fn crash(&mut self, x: NodeId) {
        self.say(format_args!("crash {x}"));
        self.downs.push((x, self.c.sim.now(), None));
        self.c.crash(&[x]);
    }

    /// `x` starts again under the same member id (a new incarnation, knowing nobody).
    fn restart(&mut self, x: NodeId) {
        self.say(format_args!("restart {x}"));
        self.c.epoch += 1;
        let now = self.c.sim.now();
        if let Some(d) = self.downs.iter_mut().rev().find(|d| d.0 == x) {
            d.2 = Some(now);
        }
        self.c.world.borrow_mut().down.remove(&x);
        self.c.sim.fault(Fault::Restart(x));
    }

    fn was_down(&self, m: NodeId, at: Duration) -> bool {
        self.downs
            .iter()
            .any(|&(x, from, until)| x == m && at >= from && until.is_none_or(|u| at <= u))
    }

    /// Adds this run's figures to `t`.
    fn count(&self, t: &mut Totals) {
        let sim = &self.c.sim;
        for n in sim.node_ids() {
            let Some(d) = sim.node(n).detector.as_ref() else {
                continue;
            };
            t.restarts_seen += d.node.journal.restarts_seen;
            for e in d.node.journal.disappeared() {
                if self.was_down(e.member, e.at) {
                    t.detections += 1;
                } else if !matches!(&e.kind, EventKind::Disappeared(why) if why.contains("restarted"))
                {
                    t.false_suspicions += 1;
                }
            }
        }
        let w = self.c.world.borrow();
        t.seeds += 1;
        t.sessions += self.c.sessions.len() as u64;
        t.acked_changes += w.oracle.acked.iter().filter(|a| a.request).count() as u64;
        t.failed_sends += w.oracle.failed;
        t.failovers += self.c.counts.failovers;
        t.waited += self.c.counts.waited;
        t.counts += &self.c.counts;
    }
}

/// One seed: 4 or 5 members (backups 1) come up and find each other by heartbeats; requests
/// (creates, changes, reads, changes of id, invalidations; `moves`: also requests that reach
/// another member, which fetches the session) go on throughout. A random member crashes and
/// restarts under the same id 10 to 250 ms later (before or after the others noticed); later
/// the network splits in two (one or two members on one side) for 250 ms and heals. Then the
/// requests stop and the cluster settles: every detector lists every member, every send is
/// settled, and [`Cluster::assert_settled`] holds (one primary per session, its backup, no
/// acknowledged session or change lost).
/// Which faults and requests a run has.
#[derive(Clone, Copy, Debug)]
struct Variant {
    /// Requests that reach another member than the session's primary.
    moves: bool,
    /// The crashed member restarts under the same id (else it stays down).
    restart: bool,
    /// A partition and heal after the crash.
    split: bool,
    /// Changes of id and moves during the partition and its heal.
    split_renames: bool,
    /// Changes of id at all.
    renames: bool,
    /// Invalidations during the partition and its heal.
    split_ends: bool,
}

fn detected_run(seed: u64, v: Variant, t: &mut Totals) {
    let n = 4 + (seed % 2) as usize;
    let mut d = Detected::new(seed, 1, n);
    let mix = Mix {
        sessions: 150,
        switch: if v.moves { 1 } else { 0 },
        change_id: if v.renames { 1 } else { 0 },
        ..Mix::default()
    };
    let gap = (Duration::ZERO, us(400));
    d.converge(ms(500));
    let until = d.c.sim.now() + ms(100);
    d.run(until, gap, &mix);

    // A crash, noticed by each detector in its own time, and a restart under the same id.
    let x = NodeId(d.c.w.below(n as u64) as usize);
    d.crash(x);
    let until = d.c.sim.now() + d.c.w.duration_between(ms(10), ms(250));
    d.run(until, gap, &mix);
    let noticed =
        d.c.up()
            .iter()
            .any(|o| !d.c.sim.node(*o).view().contains(&x));
    if v.restart && !noticed {
        t.restarts_before_detection += 1;
    }
    if v.restart {
        d.restart(x);
    }
    let until = d.c.sim.now() + ms(150);
    d.run(until, gap, &mix);

    if v.split {
        split_and_heal(&mut d, &mix, gap, (v.split_renames, v.split_ends));
    }

    d.settle();
    t.ends_overridden += d.ends_the_rule_overrode();
    d.c.world.borrow_mut().healing = false;
    d.c.world.borrow_mut().split.clear();
    d.c.assert_settled();
    d.count(t);
}

/// A partition under load: each side suspects the other (falsely: they are alive), then the
/// heal, noticed by each member in its own time.
fn split_and_heal(
    d: &mut Detected,
    mix: &Mix,
    gap: (Duration, Duration),
    (split_renames, ends): (bool, bool),
) {
    let mut order: Vec<NodeId> = d.c.up();
    for i in (1..order.len()).rev() {
        order.swap(i, d.c.w.below(i as u64 + 1) as usize);
    }
    let small = 1 + d.c.w.below(2) as usize;
    let (a, b) = order.split_at(small);
    d.say(format_args!("partition {a:?} | {b:?}"));
    d.split_at = Some(d.c.sim.now());
    d.c.world.borrow_mut().healing = true;
    for x in a {
        for y in b {
            d.c.sim.fault(Fault::Partition(*x, *y));
            d.c.world.borrow_mut().split.insert((*x.min(y), *x.max(y)));
        }
    }
    // Without `split_renames`, no change of id or move from the split until the heal is
    // settled, as in the parent's partition tests (see the ignored test below).
    let split_mix = Mix {
        change_id: if split_renames { mix.change_id } else { 0 },
        switch: if split_renames { mix.switch } else { 0 },
        invalidate: if ends { mix.invalidate } else { 0 },
        ..mix.clone()
    };
    let until = d.c.sim.now() + ms(250);
    d.run(until, gap, &split_mix);
    d.c.sim.fault(Fault::HealAll);
    d.say("heal");
    let until = d.c.sim.now() + ms(250);
    d.run(until, gap, &split_mix);
}

fn detected_runs(seeds: u64, variant: Variant) -> Totals {
    let mut t = Totals::default();
    let start = std::time::Instant::now();
    for_each_seed(seeds, |seed| detected_run(seed, variant, &mut t));
    eprintln!(
        "detected membership, backups 1 ({seeds} seeds, {variant:?}, {:?}): {t:#?}",
        start.elapsed()
    );
    t
}

/// See [`detected_run`]: 100 seeds, a crash (the member stays down) noticed by each detector in
/// its own time, then a partition (false suspicions) and a heal (re-adds) under load. No
/// request moves a session and no change of id in the whole run, no invalidation from the split
/// until the heal has settled: the variants below have each, and fail (ignored, with why).
#[test]
fn membership_detected_failover_loses_no_acknowledged_change() {
    let v = Variant {
        moves: false,
        restart: false,
        split: true,
        split_renames: false,
        renames: false,
        split_ends: false,
    };
    let t = detected_runs(100, v);
    if !replaying() {
        assert!(t.detections > 0 && t.false_suspicions > 0, "{t:#?}");
        assert!(t.acked_changes > 1000, "{t:#?}");
    }
}

/// [`detected_run`] with the crashed member restarting under the same id 10 to 250 ms after its
/// crash (before or after the others noticed; a new incarnation in a handshake is "gone and
/// back"), with changes of id, no partition. 100 seeds.
#[test]
fn membership_detected_restart_loses_no_acknowledged_change() {
    let v = Variant {
        moves: false,
        restart: true,
        split: false,
        split_renames: false,
        renames: true,
        split_ends: false,
    };
    let t = detected_runs(100, v);
    if !replaying() {
        assert!(t.detections > 0 && t.restarts_seen > 0, "{t:#?}");
        assert!(t.acked_changes > 1000, "{t:#?}");
    }
}

/// The restart and the partition in one run. (It failed on 6 of 100 seeds, history-never-forks,
/// until `BackupCore::set_members` stopped failing over a session whose primary spoke since it
/// was last listed, or that a fetcher the backup answered will claim; which of the two it needed
/// was not measured.)
#[test]
fn membership_detected_restart_and_partition_lose_no_acknowledged_change() {
    let v = Variant {
        moves: false,
        restart: true,
        split: true,
        split_renames: false,
        renames: false,
        split_ends: false,
    };
    detected_runs(100, v);
}

/// Changes of id before the split (the default mix).
#[test]
#[ignore = "bug: 32 of 100 seeds (e.g. 4): a change of id in flight when the network splits never reaches the backup on the other side, which fails the session over under its old id; at the heal the digests meet a `Renamed` tombstone, which nothing reconciles: one user's session lives under two ids, and an acknowledged end of the new id leaves the old one held"]
fn membership_detected_partition_with_renames_loses_no_acknowledged_change() {
    let v = Variant {
        moves: false,
        restart: false,
        split: true,
        split_renames: false,
        renames: true,
        split_ends: false,
    };
    detected_runs(100, v);
}

/// Invalidations during the partition and while the members notice the heal.
#[test]
#[ignore = "bug: 2 of 100 seeds (37, 83): the higher claim ends the session while the members notice the heal; the lower claim's Reconcile (a copy past the end's version, which the rule keeps) then reaches a member with no entry for it, and the session ends up held without a primary (its acknowledged end neither kept nor overridden)"]
fn membership_detected_partition_with_ends_loses_no_acknowledged_change() {
    let v = Variant {
        moves: false,
        restart: false,
        split: true,
        split_renames: false,
        renames: false,
        split_ends: true,
    };
    detected_runs(100, v);
}
