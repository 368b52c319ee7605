//! Kill -9 and restart, simulated (DeltaManager): the scenario of `tests/http_faults.rs` on the
//! simulated cluster. 3 or 4 members, synchronized ack (a change is acknowledged when every
//! member in the sender's view applied it; a member whose manager refuses it fails the
//! request), a few users, each with a sticky home chosen as a balancer chooses it: the member
//! named by the route suffix of the session id (`.nodeN`, the member that made the id: created
//! the session or changed its id), while that member is in service (up, state transfer done,
//! seeing every other up member and seen by each); otherwise the next member in service after
//! it (in member order), with the same session id; back home as soon as it is in service again.
//! The balancer knows nothing else (no copy's version, no oracle).
//!
//! Half the users (the odd ones; all with `TRIBECAST_FAULTS_PINNED=1`) have a balancer that ignores the route: sticky by user, as the
//! real test's balancer is (user *u* goes to member *u* mod n while it is in service, else to the
//! next one), so a session rebound to another member's route comes back to the user's home with
//! that route, and may be rebound there to a route it had before.
//!
//! Faults, one at a time as in the real test: a random member is killed (kill -9: its memory and
//! every byte in flight to or from it are gone); each other member notices after its own
//! detection delay (1-10 ms); the killed member restarts under the same member id 0-15 ms after
//! the kill (with its static member list: it sees every up member at once) and each other
//! member notices the new incarnation 0-2 ms after the restart (the handshake of the first
//! connection). Measured on the real test (release build, 2 cores): the others notice the death
//! 3-7 ms after the kill when they send to it, the restarted process is ready 11-15 ms after
//! it and the cluster whole 13-21 ms after it; a member that sent nothing to the dead one
//! meanwhile notices only the new incarnation. So most restarts come after the death was
//! noticed, some before. A member that notices the restart before it noticed the death sees the member
//! gone and back (its view drops it and takes it again at once, as the channel's restart
//! detection reports it). The next kill comes 10-30 ms after the previous one, and only once the
//! cluster is whole again (every member up, in service, seeing every other); 3 to 5 kills per
//! seed.
//!
//! Scale: the real test kills every 1.5 s, with requests every 5 ms per user, detection and
//! restart within a few milliseconds and loopback latency of tens of microseconds. Here virtual
//! time is compressed about 100 times for the faults and 5-10 times for the requests (a kill
//! every 10-30 ms, a user's next request 0.5-1 ms after its answer), but the detection delays
//! (1-10 ms), the restart delay (0-15 ms) and the latency (20 µs-1 ms per chunk) keep their
//! order: latency < detection and restart < the gap between kills, so each kill still sees
//! requests in flight, a detection window in which users have moved and the others have not
//! noticed, restarts before and after detection, and a whole cluster before the next kill.
//! Users wait for each answer as a sync-ack client does (a request's answer comes when every
//! member acked its change, or one refused it, or the connection to one broke before its ack,
//! or its member died). Each member's core is ticked at its next deadline, as production's
//! timer thread does, with the state transfer's re-ask compressed from 2 s to 20 ms.
//!
//! Checked: the invariants of `check_delta` after every step; per user, every request is served
//! from the state of the user's last acknowledged request or a later one made by a request of
//! the user's that failed (no acknowledged change lost, no stale copy served), and a member in
//! service never answers "no session" for a session whose creation was acknowledged and that
//! the user has not ended (no session lost; a session whose last request failed while it
//! changed id or ended is uncertain and not counted); at the end, after the faults stop, the
//! users go on for a while and the cluster settles, every member holds the same sessions at the
//! same versions with the same attributes, and each user's session at its acknowledged state.

use super::*;

use crate::session::config::RebindRoute;
use crate::sim::fault_users::{self, members, Attrs, Did, Jar};
use crate::sim::frame_lanes::LaneModel;

/// Prints a line of the fault plan with `TRIBECAST_FAULTS_TRACE` set.
fn trace(line: std::fmt::Arguments<'_>) {
    if std::env::var_os("TRIBECAST_FAULTS_TRACE").is_some() {
        eprintln!("{line}");
    }
}

/// Latency from 20 µs to 1 ms per chunk: below the detection and restart delays.
fn latency() -> Faults {
    Faults {
        latency: (Duration::from_micros(20), ms(1)),
        max_chunk: 512,
        ..Faults::default()
    }
}

fn us(n: u64) -> Duration {
    Duration::from_micros(n)
}

/// A request waiting for its answer.
struct Waiting {
    node: NodeId,
    life: u64,
    ticket: Vec<u64>,
    did: Did,
    /// The session as the request left it on its member (none if it ended).
    after: Option<(SessionId, u64, Attrs)>,
}

/// A user: a cookie jar and what the answers told it.
struct User {
    /// Where its logins go first.
    login_home: NodeId,
    /// Its balancer ignores the route: every request goes to `login_home` while it is in
    /// service (the real test's balancer), not to the member the session id's route names.
    pinned: bool,
    /// Its session's id (cookie), if logged in.
    id: Option<SessionId>,
    /// A request that changed the id or ended the session failed, leaving it at most at this
    /// version: the session may be gone or under another id until a change above that version
    /// is acknowledged (an end beats a copy of its version or below, docs/design.md).
    uncertain: bool,
    doubt: u64,
    /// The session's state (version, attributes) after the last acknowledged request.
    acked: Option<(u64, Attrs)>,
    /// States made by requests that failed since then (each may or may not have survived).
    since: Vec<(u64, Attrs)>,
    waiting: Option<Waiting>,
    next_at: Duration,
    /// Its last request went to another member than the home.
    away: bool,
}

impl User {
    fn jar(&mut self) -> Jar<'_> {
        Jar {
            id: &mut self.id,
            uncertain: &mut self.uncertain,
            doubt: &mut self.doubt,
            acked: &mut self.acked,
            since: &mut self.since,
        }
    }
}

/// What the runs did.
#[derive(Clone, Debug, Default)]
pub(super) struct Figures {
    pub seeds: u64,
    pub sessions: u64,
    pub kills: u64,
    pub restarts: u64,
    /// Members that noticed a restart before they noticed the death (gone and back).
    pub gone_and_back: u64,
    pub requests: u64,
    /// Requests served by another member than the session's home (it was down or not in
    /// service).
    pub failovers: u64,
    /// Users sent back home after a failover.
    pub returns: u64,
    /// Requests whose session route rebinding renamed to their member's route.
    pub rebound: u64,
    /// Acknowledged requests that changed a session (created, changed, renamed, ended it).
    pub acked_changes: u64,
    /// Requests whose member died before the answer.
    pub failed: u64,
    /// Requests a member refused (the answer is an error).
    pub refused: u64,
    /// Requests for an uncertain session that found none.
    pub gone_after_failure: u64,
    /// Moments a user found no member in service.
    pub waited: u64,
    /// Requests a member held until its copy caught up (tried again).
    pub held: u64,
    /// Synchronized-ack sends failed for a member by a reset of their connection.
    pub failed_by_reset: u64,
    pub lost_sessions: u64,
    pub lost_changes: u64,
    /// What the members' lanes did (with the lane protocol on).
    pub lanes: crate::sim::frame_lanes::LaneStats,
}

/// The fault in progress.
struct Outage {
    victim: NodeId,
    others: Vec<NodeId>,
    restart_at: Duration,
    restarted: bool,
    /// Each other member: when it notices the death, and when it notices the restart.
    detect: BTreeMap<NodeId, Duration>,
    back: BTreeMap<NodeId, Duration>,
}

struct Run {
    c: Cluster,
    users: Vec<User>,
    f: Figures,
    errors: Vec<String>,
    kills_left: u32,
    next_kill: Duration,
    outage: Option<Outage>,
    /// Kill only while no user waits for an answer (no request in flight); when a kill is due,
    /// users start no request until the ones in flight are answered.
    quiet: bool,
}

impl Run {
    fn new(seed: u64, members: usize, users: usize, quiet: bool) -> Run {
        Run::rebinding(seed, members, users, quiet, RebindRoute::Never)
    }

    /// A run whose members rebind routes as `rebind` says.
    fn rebinding(seed: u64, members: usize, users: usize, quiet: bool, rebind: RebindRoute) -> Run {
        // The lane protocol is on by default for kills between requests only: with kills at
        // any moment it fails seeds not diagnosed yet (`kill_and_restart_loop_with_lanes_*`).
        let lanes = fault_users::lanes_from_env(quiet);
        Run::with_lanes(seed, members, users, quiet, rebind, lanes)
    }

    /// A run whose members send through production's lane protocol when `lanes` is set.
    fn with_lanes(
        seed: u64,
        members: usize,
        users: usize,
        quiet: bool,
        rebind: RebindRoute,
        lanes: Option<LaneModel>,
    ) -> Run {
        let settings = DeltaSimConfig {
            rebind,
            // Production's 2 s re-ask of a lost state transfer, compressed as the faults are.
            shell_ticks: Some(ms(20)),
            retry_lanes: lanes,
            ..DeltaSimConfig::default()
        };
        let mut c = Cluster::new(seed, latency(), &settings, members);
        let kills = 3 + c.w.below(3) as u32;
        let next_kill = ms(10) + c.w.duration_between(Duration::ZERO, ms(20));
        // `TRIBECAST_FAULTS_PINNED=1`: every user pinned, as in the real test.
        let pin_all = std::env::var("TRIBECAST_FAULTS_PINNED").as_deref() == Ok("1");
        let users = (0..users)
            .map(|u| User {
                login_home: NodeId(u % members),
                pinned: u % 2 == 1 || pin_all,
                id: None,
                uncertain: false,
                doubt: 0,
                acked: None,
                since: Vec::new(),
                waiting: None,
                next_at: Duration::ZERO,
                away: false,
            })
            .collect();
        Run {
            c,
            users,
            f: Figures {
                seeds: 1,
                ..Figures::default()
            },
            errors: Vec::new(),
            kills_left: kills,
            next_kill,
            outage: None,
            quiet,
        }
    }

    fn view(&self, n: NodeId) -> BTreeSet<NodeId> {
        self.c
            .world
            .borrow()
            .views
            .get(&n)
            .cloned()
            .unwrap_or_default()
    }

    /// Up, state transfer done, sees every other up member and is seen by each.
    fn in_service(&self, n: NodeId) -> bool {
        if !self.c.sim.is_up(n) || !self.c.sim.node(n).core().is_ready() {
            return false;
        }
        let up = self.c.up();
        let mine = self.view(n);
        up.iter()
            .all(|&m| m == n || (mine.contains(&m) && self.view(m).contains(&n)))
    }

    /// The member a balancer sends a request with home `home` to.
    fn route(&self, home: NodeId) -> Option<NodeId> {
        let n = self.c.sim.node_ids().count();
        (0..n)
            .map(|i| NodeId((home.0 + i) % n))
            .find(|&m| self.in_service(m))
    }

    fn take_ticket(&mut self, n: NodeId) -> Vec<u64> {
        let mut ticket = Vec::new();
        self.c
            .sim
            .call(n, |node, _| ticket = std::mem::take(&mut node.ticket));
        ticket
    }

    fn whole(&self) -> bool {
        self.c.sim.node_ids().all(|n| self.in_service(n))
    }

    fn set_view(&mut self, m: NodeId, v: NodeId, present: bool) {
        {
            let mut w = self.c.world.borrow_mut();
            let view = w.views.entry(m).or_default();
            if present {
                view.insert(v);
            } else {
                view.remove(&v);
            }
        }
        self.c.sim.call(m, |node, ctx| node.view_changed(ctx));
    }

    // ---- faults ----

    fn faults(&mut self) {
        let now = self.c.sim.now();
        let in_flight = self.users.iter().any(|u| u.waiting.is_some());
        if self.outage.is_none()
            && self.kills_left > 0
            && now >= self.next_kill
            && self.whole()
            && !(self.quiet && in_flight)
        {
            let up = self.c.up();
            let victim = up[self.c.w.below(up.len() as u64) as usize];
            self.kills_left -= 1;
            self.f.kills += 1;
            self.c.crash(victim);
            trace(format_args!("{now:?} kill {victim}"));
            let mut detect = BTreeMap::new();
            let others: Vec<NodeId> = up.into_iter().filter(|m| *m != victim).collect();
            for &m in &others {
                detect.insert(m, now + self.c.w.duration_between(ms(1), ms(10)));
            }
            self.outage = Some(Outage {
                victim,
                others,
                restart_at: now + self.c.w.duration_between(Duration::ZERO, ms(15)),
                restarted: false,
                detect,
                back: BTreeMap::new(),
            });
            self.next_kill = now + self.c.w.duration_between(ms(10), ms(30));
        }
        let Some(mut o) = self.outage.take() else {
            return;
        };
        if !o.restarted && now >= o.restart_at {
            o.restarted = true;
            self.f.restarts += 1;
            let v = o.victim;
            let others = o.others.clone();
            {
                let mut w = self.c.world.borrow_mut();
                w.down.remove(&v);
                let mut all: BTreeSet<NodeId> = others.iter().copied().collect();
                all.insert(v);
                w.views.insert(v, all);
            }
            self.c.sim.fault(Fault::Restart(v));
            trace(format_args!("{now:?} restart {v}"));
            for m in others {
                let at = now + self.c.w.duration_between(Duration::ZERO, ms(2));
                o.back.insert(m, at);
            }
        }
        let v = o.victim;
        let due: Vec<NodeId> = o
            .detect
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(m, _)| *m)
            .collect();
        for m in due {
            o.detect.remove(&m);
            // Noticed the new incarnation first: the old one's death is news to nobody.
            if o.back.get(&m).is_none_or(|t| *t != Duration::MAX) {
                trace(format_args!("{now:?} {m} notices {v} died"));
                self.set_view(m, v, false);
            }
        }
        let due: Vec<NodeId> = o
            .back
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(m, _)| *m)
            .collect();
        for m in due {
            trace(format_args!("{now:?} {m} notices {v} restarted"));
            if self.view(m).contains(&v) {
                self.f.gone_and_back += 1;
                self.set_view(m, v, false);
            }
            self.set_view(m, v, true);
            o.back.insert(m, Duration::MAX);
        }
        let done =
            o.restarted && o.back.values().all(|t| *t == Duration::MAX) && o.detect.is_empty();
        if !done {
            self.outage = Some(o);
        }
    }

    /// When the fault plan next has something to do.
    fn next_fault(&self) -> Duration {
        match &self.outage {
            Some(o) => {
                let mut t = o.detect.values().chain(o.back.values()).copied().min();
                if !o.restarted {
                    t = Some(t.map_or(o.restart_at, |t| t.min(o.restart_at)));
                }
                t.unwrap_or(Duration::MAX)
            }
            None if self.kills_left > 0 => self.next_kill,
            None => Duration::MAX,
        }
    }

    // ---- users ----

    fn answers(&mut self) {
        let now = self.c.sim.now();
        for u in 0..self.users.len() {
            let Some(wt) = self.users[u].waiting.as_ref() else {
                continue;
            };
            let life = self.c.world.borrow().lives.get(&wt.node).copied();
            let alive = self.c.sim.is_up(wt.node) && life == Some(wt.life);
            let outcome = if !alive {
                Some(false)
            } else {
                let node = self.c.sim.node(wt.node);
                node.settled(&wt.ticket).then(|| !node.failed(&wt.ticket))
            };
            let Some(ok) = outcome else { continue };
            let wt = self.users[u].waiting.take().expect("waiting");
            let next = now + self.c.w.duration_between(us(500), ms(1));
            let user = &mut self.users[u];
            user.next_at = next;
            if ok {
                let got = user.jar().acknowledged(wt.did, wt.after);
                self.f.sessions += u64::from(got.session);
                self.f.acked_changes += u64::from(got.change);
                continue;
            }
            self.failed_request(u, wt.did, wt.after, alive);
        }
    }

    /// The user's request failed: its member answered with an error (`alive`), or died first.
    fn failed_request(
        &mut self,
        u: usize,
        did: Did,
        after: Option<(SessionId, u64, Attrs)>,
        alive: bool,
    ) {
        if std::env::var_os("TRIBECAST_FAULTS_TRACE").is_some() {
            eprintln!(
                "{:?} user {u}: {did:?} failed (alive {alive}) after {:?}",
                self.c.sim.now(),
                after.as_ref().map(|a| (
                    format!("{}.{}", &a.0.as_str()[..6], a.0.route().unwrap_or("")),
                    a.1
                ))
            );
        }
        if alive {
            self.f.refused += 1;
        } else {
            self.f.failed += 1;
        }
        self.users[u].jar().failed(did, after, alive);
    }

    fn ops(&mut self) -> (Did, Vec<Op>) {
        let roll = self.c.w.below(100);
        fault_users::ops(roll, || self.c.change_ops())
    }

    fn request(&mut self, u: usize) {
        let now = self.c.sim.now();
        let home = match &self.users[u].id {
            Some(_) if self.users[u].pinned => self.users[u].login_home,
            Some(id) => id
                .route()
                .and_then(|r| r.strip_prefix("node"))
                .and_then(|n| n.parse().ok())
                .map_or(self.users[u].login_home, NodeId),
            None => self.users[u].login_home,
        };
        let Some(n) = self.route(home) else {
            self.f.waited += 1;
            self.users[u].next_at = now + us(500);
            return;
        };
        self.f.requests += 1;
        if n != home {
            self.f.failovers += 1;
        } else if self.users[u].away {
            self.f.returns += 1;
        }
        self.users[u].away = n != home;
        let life = self.c.world.borrow().lives.get(&n).copied().unwrap_or(0);
        let Some(id) = self.users[u].id.clone() else {
            self.c.sim.call(n, |node, _| node.ticket.clear());
            let s = self.c.create_on(n, &[Op::Set("user")]);
            let after = s.and_then(|s| {
                let id = self.c.sessions[s].id.clone();
                let (v, a) = self.c.sim.node(n).copy(&id)?;
                Some((id, v, a.clone()))
            });
            let ticket = self.take_ticket(n);
            self.users[u].waiting = Some(Waiting {
                node: n,
                life,
                ticket,
                did: Did::Created,
                after,
            });
            return;
        };
        // The copy the member serves, unless it holds the request until its copy caught up.
        let copy = self.c.sim.node(n).copy(&id).map(|(v, a)| (v, a.clone()));
        let (did, ops) = self.ops();
        self.c.sim.call(n, |node, _| node.ticket.clear());
        let mut served = Served::Missing;
        self.c
            .sim
            .call(n, |node, ctx| served = node.request(ctx, &id, &ops));
        if served == Served::Waiting {
            // The user's client sees a slow answer: it tries again a moment later (nothing
            // was changed).
            self.f.held += 1;
            self.users[u].next_at = now + us(200);
            return;
        }
        let Some(copy) = copy else {
            let user = &mut self.users[u];
            if user.uncertain || user.acked.is_none() {
                self.f.gone_after_failure += 1;
            } else {
                self.f.lost_sessions += 1;
                let ended = self.c.sim.node(n).core().store().is_ended(&id);
                self.errors.push(format!(
                    "session lost: {n} (in service) has no {id} (ended there: {ended}) at {now:?}; acknowledged at version {:?}",
                    user.acked.as_ref().map(|a| a.0)
                ));
            }
            user.id = None;
            user.acked = None;
            user.since.clear();
            user.uncertain = false;
            user.next_at = now + us(500);
            return;
        };
        {
            let user = &self.users[u];
            let known = user.acked.as_ref() == Some(&copy) || user.since.contains(&copy);
            if let (false, Some((av, aa))) = (known, user.acked.as_ref()) {
                self.f.lost_changes += 1;
                self.errors.push(format!(
                    "acknowledged change lost: {n} serves {id} at v{} {}, acknowledged v{av} {} at {now:?} (later failed: {:?})",
                    copy.0,
                    show(&copy.1),
                    show(aa),
                    user.since.iter().map(|s| s.0).collect::<Vec<_>>()
                ));
            }
        }
        let ticket = self.take_ticket(n);
        let after = match &served {
            Served::Live(new) => self
                .c
                .sim
                .node(n)
                .copy(new)
                .map(|(v, a)| (new.clone(), v, a.clone())),
            _ => None,
        };
        let rebound = fault_users::with_rebinding(did, &id, after.as_ref().map(|a| &a.0));
        self.f.rebound += u64::from(rebound != did);
        let did = rebound;
        self.users[u].waiting = Some(Waiting {
            node: n,
            life,
            ticket,
            did,
            after,
        });
    }

    fn requests(&mut self, open: bool) {
        for u in 0..self.users.len() {
            if self.users[u].waiting.is_none() && open && self.users[u].next_at <= self.c.sim.now()
            {
                self.request(u);
            }
        }
    }

    fn next_request(&self) -> Duration {
        self.users
            .iter()
            .filter(|u| u.waiting.is_none())
            .map(|u| u.next_at)
            .min()
            .unwrap_or(Duration::MAX)
    }

    /// Requests and faults until the last outage is over and `after` more has passed.
    fn drive(&mut self, after: Duration) {
        let mut stop: Option<Duration> = None;
        loop {
            let now = self.c.sim.now();
            self.answers();
            self.faults();
            // Kills only between requests: when one is due, no user starts a request until the
            // ones in flight are answered (else that moment may never come).
            let drain = self.quiet
                && self.outage.is_none()
                && self.kills_left > 0
                && now >= self.next_kill
                && self.whole();
            self.requests(!drain);
            if stop.is_none() && self.kills_left == 0 && self.outage.is_none() {
                stop = Some(now + after);
            }
            if stop.is_some_and(|s| now >= s) {
                return;
            }
            if now > secs(2) {
                let up = self.c.up();
                let service: Vec<bool> =
                    self.c.sim.node_ids().map(|n| self.in_service(n)).collect();
                self.c.sim.fail(format_args!(
                    "the faults never ended: {} kills left, outage {}, up {up:?}, in service {service:?}",
                    self.kills_left,
                    self.outage.is_some()
                ));
            }
            let poll = now + us(50);
            let next = poll
                .min(self.next_fault())
                .min(self.next_request())
                .min(stop.unwrap_or(Duration::MAX))
                .max(now + us(1));
            self.c.sim.run_until(next, |_| false);
        }
    }

    /// No new requests; every answer comes; then the cluster settles.
    fn quiesce(&mut self) {
        let deadline = self.c.sim.now() + secs(10);
        while self.users.iter().any(|u| u.waiting.is_some()) {
            if self.c.sim.now() > deadline {
                let stuck: Vec<String> = self
                    .users
                    .iter()
                    .filter_map(|u| u.waiting.as_ref())
                    .map(|w| {
                        let node = self.c.sim.node(w.node);
                        let pending: Vec<String> = w
                            .ticket
                            .iter()
                            .filter_map(|r| node.pending_of(*r))
                            .collect();
                        format!(
                            "{:?} on {} (life {}) waits for {pending:?}",
                            w.did, w.node, w.life
                        )
                    })
                    .collect();
                self.c.sim.fail(format_args!(
                    "a request never got its answer: {stuck:?}; views {:?}",
                    self.c.world.borrow().views
                ));
            }
            let t = self.c.sim.now() + us(50);
            self.c.sim.run_until(t, |_| false);
            self.answers();
        }
        self.c.settle(secs(10));
    }

    /// Every up member holds the same sessions, at the same versions and attributes; each user's
    /// session is there at its acknowledged state (or a later one it made).
    fn assert_converged(&mut self) {
        let up = self.c.up();
        let mut ids: BTreeSet<SessionId> = BTreeSet::new();
        for &n in &up {
            ids.extend(self.c.sim.node(n).core().store().ids().cloned());
        }
        for id in &ids {
            let copies: Vec<(NodeId, Option<(u64, Attrs)>)> = up
                .iter()
                .map(|&n| (n, self.c.sim.node(n).copy(id).map(|(v, a)| (v, a.clone()))))
                .collect();
            if copies.iter().any(|(_, c)| *c != copies[0].1) {
                let shown: Vec<String> = copies
                    .iter()
                    .map(|(n, c)| match c {
                        Some((v, a)) => format!("{n}: v{v} {}", show(a)),
                        None => format!("{n}: none"),
                    })
                    .collect();
                self.errors
                    .push(format!("not converged: {id}: {}", shown.join("; ")));
            }
        }
        for user in &self.users {
            let (Some(id), Some(acked)) = (&user.id, &user.acked) else {
                continue;
            };
            if user.uncertain {
                continue;
            }
            for &n in &up {
                let copy = self.c.sim.node(n).copy(id).map(|(v, a)| (v, a.clone()));
                let ok = copy
                    .as_ref()
                    .is_some_and(|c| c == acked || user.since.contains(c));
                if !ok {
                    self.errors.push(format!(
                        "at the end {n} has {id} as {:?}, acknowledged at v{}",
                        copy.map(|c| c.0),
                        acked.0
                    ));
                }
            }
        }
    }
}

/// One seed: faults while users work, then the users go on for `ms(20)` and the cluster settles.
fn run(seed: u64, members: usize, quiet: bool, rebind: RebindRoute, total: &mut Figures) {
    let lanes = fault_users::lanes_from_env(quiet);
    run_with(seed, members, quiet, rebind, lanes, total);
}

/// [`run`] with the lanes given.
fn run_with(
    seed: u64,
    members: usize,
    quiet: bool,
    rebind: RebindRoute,
    lanes: Option<LaneModel>,
    total: &mut Figures,
) {
    let mut r = Run::with_lanes(seed, members, 4, quiet, rebind, lanes);
    r.drive(ms(20));
    r.quiesce();
    r.assert_converged();
    for n in r.c.sim.node_ids().collect::<Vec<_>>() {
        r.f.lanes.add(&r.c.sim.node(n).lane_stats());
    }
    r.f.failed_by_reset =
        r.c.sim
            .node_ids()
            .map(|n| r.c.sim.node(n).journal.failed_by_reset)
            .sum();
    if !r.errors.is_empty() {
        r.c.sim.fail(format_args!(
            "{} problems, e.g.:\n  {}",
            r.errors.len(),
            r.errors[..r.errors.len().min(6)].join("\n  ")
        ));
    }
    total.add(&r.f);
}

impl Figures {
    fn add(&mut self, f: &Figures) {
        self.seeds += f.seeds;
        self.sessions += f.sessions;
        self.kills += f.kills;
        self.restarts += f.restarts;
        self.gone_and_back += f.gone_and_back;
        self.requests += f.requests;
        self.failovers += f.failovers;
        self.returns += f.returns;
        self.rebound += f.rebound;
        self.acked_changes += f.acked_changes;
        self.failed += f.failed;
        self.refused += f.refused;

        self.gone_after_failure += f.gone_after_failure;
        self.waited += f.waited;
        self.held += f.held;
        self.failed_by_reset += f.failed_by_reset;
        self.lost_sessions += f.lost_sessions;
        self.lost_changes += f.lost_changes;
        self.lanes.add(&f.lanes);
    }
}

/// Every seed, the failing ones with their failure, and the figures of the passing ones.
fn survey(seeds: u64, quiet: bool, rebind: RebindRoute) -> (Figures, Vec<(u64, String)>) {
    let mut total = Figures::default();
    let failing = fault_users::failing_seeds(seeds, |seed| {
        let mut f = Figures::default();
        run(seed, members(seed), quiet, rebind, &mut f);
        total.add(&f);
    });
    (total, failing)
}

/// The control run, as `tests/http_faults.rs` has one: the same users, routing, checks and
/// convergence for 80 ms of virtual time without a fault, 100 seeds. Nothing may fail: no
/// request refused or failed, no session or acknowledged change lost.
#[test]
fn control_without_faults_loses_nothing() {
    let mut total = Figures::default();
    for_each_seed(100, |seed| {
        let mut r = Run::new(seed, members(seed), 4, false);
        r.kills_left = 0;
        r.drive(ms(80));
        r.quiesce();
        r.assert_converged();
        if !r.errors.is_empty() || r.f.failed + r.f.refused > 0 {
            r.c.sim.fail(format_args!(
                "control run: {:?}; {}",
                r.f,
                r.errors[..r.errors.len().min(6)].join("\n  ")
            ));
        }
        total.add(&r.f);
    });
    eprintln!("DeltaManager control, no faults: {total:?}");
    if !replaying() {
        assert!(
            total.acked_changes > 5_000 && total.sessions > 300,
            "{total:?}"
        );
    }
}

/// The kill -9 loop over 500 seeds, kills between requests only when `quiet`; prints and
/// returns the figures over the seeds.
fn kill_loop(quiet: bool, rebind: RebindRoute) -> Figures {
    let mut total = Figures::default();
    for_each_seed(500, |seed| {
        run(seed, members(seed), quiet, rebind, &mut total)
    });
    eprintln!("DeltaManager kill -9 and restart loop, quiet kills {quiet}, rebinding {rebind:?}: {total:?}");
    total
}

/// The scenario of the module doc, 500 seeds (3 members, every fourth seed 4), kills at any
/// moment (requests in flight included).
#[test]
fn kill_and_restart_loop_loses_no_acknowledged_change_or_session() {
    kill_loop(false, RebindRoute::Never);
}

/// The same with route rebinding (`WhenRouteGone`; seeds 74 and 237 failed before the fixes
/// of docs/RELIABILITY.md, "What holds now"; a seed replays with `TRIBECAST_SIM_SEED=<seed>`).
#[test]
fn kill_and_restart_loop_with_route_rebinding_loses_no_acknowledged_change_or_session() {
    kill_loop(false, RebindRoute::WhenRouteGone);
}

/// The same with kills only at a moment when no user waits for an answer.
#[test]
fn kill_and_restart_loop_between_requests_loses_no_acknowledged_change_or_session() {
    kill_loop(true, RebindRoute::Never);
}

/// The same with route rebinding (`http_node`'s default): a request for a route that is gone
/// renames the session to the serving member's route.
#[test]
fn kill_and_restart_loop_between_requests_with_route_rebinding_loses_nothing() {
    let total = kill_loop(true, RebindRoute::WhenRouteGone);
    if !replaying() {
        assert!(total.rebound > 100, "routes were rebound: {total:?}");
    }
}

/// Kills at any moment, requests in flight included, 500 seeds: how many fail, and how (run it
/// alone, `--test-threads 1`: it silences the panic hook while it runs).
#[test]
#[ignore = "measures the open races (see the module doc); run with --nocapture"]
fn kill_and_restart_loop_survey() {
    let modes: &[bool] = match std::env::var("TRIBECAST_FAULTS_QUIET").as_deref() {
        Ok("1") => &[true],
        Ok("0") => &[false],
        _ => &[false, true],
    };
    let rebind = fault_users::rebind_from_env();
    for &quiet in modes {
        let (f, failing) = survey(500, quiet, rebind);
        eprintln!("DeltaManager survey (quiet kills: {quiet}, rebinding {rebind:?}): {} failing seeds of 500; passing seeds: {f:?}", failing.len());
        for (seed, msg) in &failing {
            eprintln!("  seed {seed}: {msg}");
        }
    }
}

/// Kills at any moment with production's lane protocol under the messages
/// (`Frames::retry_lanes`): these seeds of the 500 fail (docs/RELIABILITY.md, "The managers'
/// simulations over production's lanes"); `TRIBECAST_SIM_SEED` replays one.
#[test]
#[ignore = "open: with the lane protocol, kills at any moment fail 3 of 500 seeds (59: not converged; 147, 339: two states of one version, a value going back)"]
fn kill_and_restart_loop_with_lanes_at_any_moment_reproducer() {
    let list = match std::env::var(crate::sim::SEED_ENV) {
        Ok(_) => crate::sim::seeds(0),
        Err(_) => vec![59, 147, 339],
    };
    let mut total = Figures::default();
    for seed in list {
        let lanes = Some(fault_users::kill_loop_lanes());
        run_with(
            seed,
            members(seed),
            false,
            RebindRoute::Never,
            lanes,
            &mut total,
        );
    }
}
