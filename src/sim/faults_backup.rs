//! Kill -9 and restart, simulated (BackupManager, 1 backup): the scenario of
//! `tests/http_faults.rs` on the simulated cluster. 3 or 4 members, `map_send_options` 6
//! (synchronized ack: a change is acknowledged when every member it went to applied it; a
//! member whose manager refuses it, or that leaves its sender's view first, fails the request),
//! a few users, each with a sticky home chosen as a balancer chooses it: the member named by the
//! route suffix of the session id (`.nodeN`, the member that made the id: created the session or
//! changed its id), while that member is in service (up, seeing every other up member and seen
//! by each); otherwise the next member in service after it (in member order), with the same
//! session id; back home as soon as it is in service again. A member that does not serve the
//! session asks the others for it (`Fetch`) and the request waits for the manager's verdict, as
//! in production. The balancer knows nothing else (no primary, no copy's version, no oracle).
//!
//! Faults, one at a time as in the real test: a random member is killed (kill -9: its memory and
//! every byte in flight to or from it are gone); each other member notices after its own
//! detection delay (1-10 ms); the killed member restarts under the same member id 0-5 ms after
//! the kill (with its static member list: it sees every up member at once) and each other
//! member notices the new incarnation 0-2 ms after the restart (the handshake of the first
//! connection). A member that notices the restart before it noticed the death sees the member
//! gone and back (its view drops it and takes it again at once, as the channel's restart
//! detection reports it). The next kill comes 10-30 ms after the previous one, and only once the
//! cluster is whole again (every member up, in service, seeing every other); 3 to 5 kills per
//! seed.
//!
//! Scale: the real test kills every 1.5 s, with requests every 5 ms per user, detection and
//! restart within a few milliseconds and loopback latency of tens of microseconds. Here virtual
//! time is compressed about 100 times for the faults and 5-10 times for the requests (a kill
//! every 10-30 ms, a user's next request 0.5-1 ms after its answer), but the detection delays
//! (1-10 ms), the restart delay (0-5 ms) and the latency (20 µs-1 ms per chunk) keep their
//! order: latency < detection and restart < the gap between kills, so each kill still sees
//! requests in flight, a detection window in which users have moved and the others have not
//! noticed, restarts before and after detection, and a whole cluster before the next kill.
//! Users wait for each answer as a sync-ack client does (a request's answer comes when every
//! member acked its change, or one refused it, or its member died).
//!
//! Checked: the invariants of `check_backup` after every step; per user, every request is served
//! from the state of the user's last acknowledged request or a later one made by a request of
//! the user's that failed (no acknowledged change lost, no stale copy served), and a member in
//! service never answers "no session" for a session whose creation was acknowledged and that
//! the user has not ended (no session lost; a session whose last request failed while it
//! changed id or ended is uncertain and not counted); at the end, after the faults stop, the
//! users go on for a while and the cluster settles: every session has one primary and the
//! backups of its placement, all at one version with the same attributes, no acknowledged
//! session or change is missing and no member holds a session no user made
//! ([`Cluster::assert_settled`]), and each user's session is at its acknowledged state.

use super::*;

use crate::session::config::RebindRoute;
use crate::sim::fault_users::{self, members, Attrs, Did, Jar};
use crate::sim::frame_lanes::LaneModel;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Latency from 20 µs to 1 ms per chunk: below the detection and restart delays.
fn latency() -> Faults {
    Faults {
        latency: (Duration::from_micros(20), ms(1)),
        max_chunk: 512,
        ..Faults::default()
    }
}

/// A request that reached a member not serving its session, waiting for the fetch's verdict.
struct Fetching {
    node: NodeId,
    life: u64,
    id: SessionId,
    did: Did,
    ops: Vec<Op>,
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
    fetching: Option<Fetching>,
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
    /// Requests that reached a member not serving the session (it fetched it), and of those
    /// the ones whose fetch found no session.
    pub fetches: u64,
    pub fetch_none: u64,
    /// Requests for an uncertain session that found none.
    pub gone_after_failure: u64,
    /// Moments a user found no member in service.
    pub waited: u64,
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
    /// Kill only while no user waits for an answer (no request in flight).
    quiet: bool,
}

impl Run {
    fn new(seed: u64, members: usize, users: usize, quiet: bool) -> Run {
        Run::rebinding(seed, members, users, quiet, RebindRoute::Never)
    }

    /// A run whose members rebind routes as `rebind` says.
    fn rebinding(seed: u64, members: usize, users: usize, quiet: bool, rebind: RebindRoute) -> Run {
        // The lane protocol is on by default for kills between requests without rebinding
        // only: otherwise it fails seeds not diagnosed yet (`kill_and_restart_loop_with_lanes_*`).
        let lanes = fault_users::lanes_from_env(quiet && matches!(rebind, RebindRoute::Never));
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
        let settings = BackupSimConfig {
            rebind,
            retry_lanes: lanes,
            ..cfg(1)
        };
        let mut c = Cluster::new(seed, latency(), &settings, members);
        let kills = 3 + c.w.below(3) as u32;
        let next_kill = ms(10) + c.w.duration_between(Duration::ZERO, ms(20));
        let users = (0..users)
            .map(|u| User {
                login_home: NodeId(u % members),
                id: None,
                uncertain: false,
                doubt: 0,
                acked: None,
                since: Vec::new(),
                waiting: None,
                fetching: None,
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

    /// Up, sees every other up member and is seen by each.
    fn in_service(&self, n: NodeId) -> bool {
        if !self.c.sim.is_up(n) || !self.c.sim.node(n).mgr.is_ready() {
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

    fn whole(&self) -> bool {
        self.c.sim.node_ids().all(|n| self.in_service(n))
    }

    fn set_view(&mut self, m: NodeId, v: NodeId, present: bool) {
        if std::env::var_os("TRIBECAST_FAULTS_TRACE").is_some() {
            let what = if present { "lists" } else { "drops" };
            eprintln!("{:?} n{}: view {what} n{}", self.c.sim.now(), m.0, v.0);
        }
        self.c.epoch += 1;
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
        let in_flight = self
            .users
            .iter()
            .any(|u| u.waiting.is_some() || u.fetching.is_some());
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
            if std::env::var_os("TRIBECAST_FAULTS_TRACE").is_some() {
                eprintln!("{now:?} n{}: killed", victim.0);
            }
            self.c.crash(&[victim]);
            let mut detect = BTreeMap::new();
            let others: Vec<NodeId> = up.into_iter().filter(|m| *m != victim).collect();
            for &m in &others {
                detect.insert(m, now + self.c.w.duration_between(ms(1), ms(10)));
            }
            self.outage = Some(Outage {
                victim,
                others,
                restart_at: now + self.c.w.duration_between(Duration::ZERO, ms(5)),
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
            self.c.epoch += 1;
            if std::env::var_os("TRIBECAST_FAULTS_TRACE").is_some() {
                eprintln!("{now:?} n{}: restarted", v.0);
            }
            self.c.sim.fault(Fault::Restart(v));
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
            if ok && std::env::var_os("TRIBECAST_FAULTS_TRACE").is_some() {
                eprintln!(
                    "{now:?} user {u}: {:?} on {} acknowledged: {:?}",
                    wt.did,
                    wt.node,
                    wt.after.as_ref().map(|a| (&a.0.as_str()[..6], a.1))
                );
            }
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
                after.as_ref().map(|a| (&a.0.as_str()[..6], a.1))
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

    /// The user's copy check: `copy` must be the state of its last acknowledged request or
    /// one a failed request made since.
    fn check_copy(&mut self, u: usize, n: NodeId, id: &SessionId, copy: &(u64, Attrs)) {
        let now = self.c.sim.now();
        let user = &self.users[u];
        let known = user.acked.as_ref() == Some(copy) || user.since.contains(copy);
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

    /// The member answered "no session" for the user's session.
    fn no_session(&mut self, u: usize, n: NodeId, id: &SessionId) {
        let now = self.c.sim.now();
        let user = &mut self.users[u];
        if user.uncertain || user.acked.is_none() {
            self.f.gone_after_failure += 1;
        } else {
            self.f.lost_sessions += 1;
            self.errors.push(format!(
                "session lost: {n} (in service) found no {id} at {now:?}; acknowledged at version {:?}",
                user.acked.as_ref().map(|a| a.0)
            ));
        }
        user.id = None;
        user.acked = None;
        user.since.clear();
        user.uncertain = false;
        user.next_at = now + us(500);
    }

    /// Serves the user's request on `n`, which serves the session (`copy`: the working copy a
    /// fetch's verdict gave; `ticket`: the acks of the take-over the user's answer waits for).
    fn serve(
        &mut self,
        u: usize,
        n: NodeId,
        id: &SessionId,
        (did, ops): (Did, Vec<Op>),
        copy: Option<Session>,
        mut ticket: Vec<u64>,
    ) {
        let life = self.c.world.borrow().lives.get(&n).copied().unwrap_or(0);
        let refused_before = self.c.sim.node(n).journal.refused_ends;
        let mut r = (Served::Missing, Vec::new());
        self.c
            .sim
            .call(n, |node, ctx| r = node.request(ctx, id, &ops, copy));
        ticket.extend(r.1);
        let refused = self.c.sim.node(n).journal.refused_ends > refused_before;
        if std::env::var_os("TRIBECAST_FAULTS_TRACE").is_some() {
            eprintln!(
                "{:?} user {u}: served on {n}: {:?} refused {refused} ticket {ticket:?}",
                self.c.sim.now(),
                r.0
            );
        }
        let after = match &r.0 {
            Served::Live(new) => self
                .c
                .sim
                .node(n)
                .copy(new)
                .map(|(v, a)| (new.clone(), v, a.clone())),
            _ => None,
        };
        let rebound = fault_users::with_rebinding(did, id, after.as_ref().map(|a| &a.0));
        self.f.rebound += u64::from(rebound != did);
        let did = rebound;
        if refused {
            // The manager refused the end: the answer is an error at once.
            self.users[u].next_at = self.c.sim.now() + self.c.w.duration_between(us(500), ms(1));
            self.failed_request(u, did, after, true);
            return;
        }
        if let Served::Missing = r.0 {
            self.c
                .sim
                .fail(format_args!("{n} serves {id} but the request found none"));
        }
        self.users[u].waiting = Some(Waiting {
            node: n,
            life,
            ticket,
            did,
            after,
        });
    }

    fn request(&mut self, u: usize) {
        let now = self.c.sim.now();
        let home = match &self.users[u].id {
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
            let before = self.c.sessions.len();
            let mut r = (Served::Missing, Vec::new());
            self.c
                .sim
                .call(n, |node, ctx| r = node.create(ctx, &[Op::Set("user")]));
            self.c.counts.creates += 1;
            let after = match &r.0 {
                Served::Live(id) => {
                    self.c.live.push(before);
                    self.c.sessions.push(Logical {
                        root: id.clone(),
                        id: id.clone(),
                        server: n,
                        fate: Fate::Live,
                        ticket: (n, r.1.clone()),
                        moving: None,
                        check_move: false,
                        move_epoch: 0,
                    });
                    self.c
                        .sim
                        .node(n)
                        .copy(id)
                        .map(|(v, a)| (id.clone(), v, a.clone()))
                }
                _ => None,
            };
            self.users[u].waiting = Some(Waiting {
                node: n,
                life,
                ticket: r.1,
                did: Did::Created,
                after,
            });
            return;
        };
        let op = self.ops();
        if std::env::var_os("TRIBECAST_FAULTS_TRACE").is_some() {
            eprintln!(
                "{now:?} user {u}: {:?} {} at {n} (home {home})",
                op.0,
                &id.as_str()[..6]
            );
        }
        if !self.c.sim.node(n).core().is_primary(&id) {
            self.f.fetches += 1;
            self.c.sim.call(n, |node, ctx| node.fetch(ctx, &id));
            self.users[u].fetching = Some(Fetching {
                node: n,
                life,
                id,
                did: op.0,
                ops: op.1,
            });
            return;
        }
        let copy = self.c.sim.node(n).copy(&id).map(|(v, a)| (v, a.clone()));
        let Some(copy) = copy else {
            self.no_session(u, n, &id);
            return;
        };
        self.check_copy(u, n, &id, &copy);
        self.serve(u, n, &id, op, None, Vec::new());
    }

    /// Fetches whose verdict came: the request goes on with the copy, or finds no session.
    fn fetches(&mut self) {
        for u in 0..self.users.len() {
            let Some(fe) = self.users[u].fetching.as_ref() else {
                continue;
            };
            let (n, id) = (fe.node, fe.id.clone());
            let life = self.c.world.borrow().lives.get(&n).copied();
            if !self.c.sim.is_up(n) || life != Some(fe.life) {
                // The member died with the request: no answer.
                if std::env::var_os("TRIBECAST_FAULTS_TRACE").is_some() {
                    eprintln!("{:?} user {u}: fetch on {n} died", self.c.sim.now());
                }
                self.users[u].fetching = None;
                self.f.failed += 1;
                self.users[u].next_at =
                    self.c.sim.now() + self.c.w.duration_between(us(500), ms(1));
                continue;
            }
            let mut verdict = None;
            self.c
                .sim
                .call(n, |node, _| verdict = node.take_fetched(&id));
            let Some(verdict) = verdict else { continue };
            let fe = self.users[u].fetching.take().expect("fetching");
            let Some(copy) = verdict else {
                self.f.fetch_none += 1;
                self.no_session(u, n, &id);
                continue;
            };
            self.check_copy(
                u,
                n,
                &id,
                &(copy.version(), copy.state().attributes.to_map()),
            );
            let mut ticket = Vec::new();
            self.c.sim.call(n, |node, _| ticket = node.take_move(&id));
            self.serve(u, n, &id, (fe.did, fe.ops), Some(copy), ticket);
        }
    }

    fn requests(&mut self, open: bool) {
        for u in 0..self.users.len() {
            let idle = self.users[u].waiting.is_none() && self.users[u].fetching.is_none();
            if idle && open && self.users[u].next_at <= self.c.sim.now() {
                self.request(u);
            }
        }
    }

    fn next_request(&self) -> Duration {
        self.users
            .iter()
            .filter(|u| u.waiting.is_none() && u.fetching.is_none())
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
            self.fetches();
            self.faults();
            self.requests(true);
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
        while self
            .users
            .iter()
            .any(|u| u.waiting.is_some() || u.fetching.is_some())
        {
            if self.c.sim.now() > deadline {
                let waits: Vec<String> = self
                    .c
                    .sim
                    .node_ids()
                    .filter(|n| self.c.sim.is_up(*n))
                    .flat_map(|n| {
                        let node = self.c.sim.node(n);
                        node.waiting_for()
                            .into_iter()
                            .map(move |w| format!("{n} {w}"))
                    })
                    .collect();
                self.c.sim.fail(format_args!(
                    "a request never got its answer; {}",
                    waits.join("; ")
                ));
            }
            let t = self.c.sim.now() + us(50);
            self.c.sim.run_until(t, |_| false);
            self.answers();
            self.fetches();
        }
        self.c.settle();
    }

    /// Every session has one primary and its placement's backups at one version, nothing
    /// acknowledged is missing, no member holds a session no user made
    /// ([`Cluster::assert_settled`]); each user's session is at its acknowledged state (or a
    /// later one it made) on its primary.
    fn assert_converged(&mut self) {
        self.c.assert_settled();
        let up = self.c.up();
        for user in &self.users {
            let (Some(id), Some(acked)) = (&user.id, &user.acked) else {
                continue;
            };
            if user.uncertain {
                continue;
            }
            let primary: Vec<NodeId> = up
                .iter()
                .copied()
                .filter(|n| self.c.sim.node(*n).core().is_primary(id))
                .collect();
            let copy = primary
                .first()
                .and_then(|p| self.c.sim.node(*p).copy(id).map(|(v, a)| (v, a.clone())));
            let ok = copy
                .as_ref()
                .is_some_and(|c| c == acked || user.since.contains(c));
            if !ok {
                self.errors.push(format!(
                    "at the end {id} (primaries {primary:?}) is {:?}, acknowledged at v{}",
                    copy.map(|c| c.0),
                    acked.0
                ));
            }
        }
    }
}

/// One seed: faults while users work, then the users go on for `ms(20)` and the cluster settles.
fn run(seed: u64, members: usize, quiet: bool, rebind: RebindRoute, total: &mut Figures) {
    let lanes = fault_users::lanes_from_env(quiet && matches!(rebind, RebindRoute::Never));
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
        self.fetches += f.fetches;
        self.fetch_none += f.fetch_none;
        self.gone_after_failure += f.gone_after_failure;
        self.waited += f.waited;
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
    eprintln!("BackupManager control, no faults: {total:?}");
    if !replaying() {
        assert!(
            total.acked_changes > 5_000 && total.sessions > 300,
            "{total:?}"
        );
    }
}

/// The scenario of the module doc, 500 seeds (3 members, every fourth seed 4), kills at any
/// moment (requests and fetches in flight included), none failing (about 3 s in a release
/// build).
#[test]
fn kill_and_restart_loop_loses_no_acknowledged_change_or_session() {
    let mut total = Figures::default();
    for_each_seed(500, |seed| {
        run(seed, members(seed), false, RebindRoute::Never, &mut total)
    });
    eprintln!("BackupManager kill -9 and restart loop: {total:?}");
}

/// The same with kills only at a moment when no user waits for an answer or a fetch: 500
/// seeds, none failing (about 3 s in a release build).
#[test]
fn kill_and_restart_loop_between_requests_loses_no_acknowledged_change_or_session() {
    let mut total = Figures::default();
    for_each_seed(500, |seed| {
        run(seed, members(seed), true, RebindRoute::Never, &mut total)
    });
    eprintln!("BackupManager kill -9 and restart loop, quiet kills: {total:?}");
    if !replaying() {
        assert!(
            total.kills > 1_500 && total.failovers > 2_000 && total.acked_changes > 100_000,
            "{total:?}"
        );
    }
}

/// The same with route rebinding on (`RebindRoute::WhenRouteGone`, as `http_node
/// --rebind-route when_route_gone`): a user served away from its home while the home is gone
/// gets the serving member's route, and the balancer follows the cookie. 500 seeds, none failing.
#[test]
fn kill_and_restart_loop_between_requests_with_rebinding_loses_nothing() {
    let mut total = Figures::default();
    for_each_seed(500, |seed| {
        run(
            seed,
            members(seed),
            true,
            RebindRoute::WhenRouteGone,
            &mut total,
        )
    });
    eprintln!("BackupManager kill -9 and restart loop, quiet kills, rebinding: {total:?}");
    if !replaying() {
        assert!(
            total.rebound > 300 && total.kills > 1_500 && total.acked_changes > 100_000,
            "{total:?}"
        );
    }
}

/// Kills at any moment with route rebinding on, 500 seeds, none failing.
#[test]
fn kill_and_restart_loop_with_rebinding_loses_no_acknowledged_change_or_session() {
    let mut total = Figures::default();
    for_each_seed(500, |seed| {
        run(
            seed,
            members(seed),
            false,
            RebindRoute::WhenRouteGone,
            &mut total,
        )
    });
    eprintln!("BackupManager kill -9 and restart loop, rebinding: {total:?}");
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
        eprintln!("BackupManager survey (quiet kills: {quiet}, rebinding {rebind:?}): {} failing seeds of 500; passing seeds: {f:?}", failing.len());
        for (seed, msg) in failing.iter().take(20) {
            eprintln!("  seed {seed}: {msg}");
        }
    }
}

/// Kills at any moment with production's lane protocol under the messages
/// (`Frames::retry_lanes`): these seeds of the 500 fail (docs/RELIABILITY.md, "The managers'
/// simulations over production's lanes"); `TRIBECAST_SIM_SEED` replays one.
#[test]
#[ignore = "open: with the lane protocol, kills at any moment fail 11 of 500 seeds (acknowledged sessions lost after two kills within a re-replication window (304), an ended session still held, a request never answered)"]
fn kill_and_restart_loop_with_lanes_at_any_moment_reproducer() {
    let list = match std::env::var(crate::sim::SEED_ENV) {
        Ok(_) => crate::sim::seeds(0),
        Err(_) => vec![9, 63, 122, 152, 288, 294, 304, 321, 341, 384, 414],
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

/// Kills between requests with route rebinding over production's lanes: these seeds of the 500
/// fail (a session held by a member its placement no longer names, at the end).
#[test]
#[ignore = "open: with the lane protocol and rebinding, kills between requests fail 3 of 500 seeds (9, 115, 462: an extra copy held at the end)"]
fn kill_and_restart_loop_between_requests_with_rebinding_and_lanes_reproducer() {
    let list = match std::env::var(crate::sim::SEED_ENV) {
        Ok(_) => crate::sim::seeds(0),
        Err(_) => vec![9, 115, 462],
    };
    let mut total = Figures::default();
    for seed in list {
        let lanes = Some(fault_users::kill_loop_lanes());
        let rebind = RebindRoute::WhenRouteGone;
        run_with(seed, members(seed), true, rebind, lanes, &mut total);
    }
}
