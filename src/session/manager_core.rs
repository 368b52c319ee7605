//! The sans-IO core of one application's manager: every protocol decision of a DeltaManager or
//! BackupManager that is not about one message's content lives here, next to the replication
//! core ([`Core`]): how long a request waits for a fetched session and what it gets then, the
//! verdict a synchronized-ack sender gets for its message, the state-transfer deadline, when
//! sessions expire, and which options each batch of messages leaves with.
//!
//! It follows raft-rs's `Ready` loop: the shell locks it, feeds one input (a request's begin or
//! end, a received message, a membership change, `tick(now)`), takes the [`Ready`] batch out,
//! unlocks, and performs the batch in order: sends, then listener events, then wakes the requests
//! the batch has verdicts for. A waiting request is woken only after the messages its answer made
//! this node send are queued, so its own messages never overtake them. Time comes in as
//! milliseconds since the epoch; nothing here reads a clock, sleeps or does I/O.

use super::backup::{BackupConfig, BackupCore};
use super::config::{ManagerConfig, ManagerKind, RebindRoute};
use super::delta::{DeltaConfig, DeltaCore};
use super::engine::{Core, POut, Payload};
#[cfg(test)]
use super::id::IdSource;
use super::id::{SessionId, SessionIdError};
use super::model::Session;
use super::outputs::{Dest, SessionEvent};
use super::replica::SessionMessage;
use crate::member::{Member, MemberId};
use crate::options::SendOptions;
use log::{error, info};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// What a request that asked for a session waits for.
pub(crate) type Token = u64;

/// One batch of work for the shell, performed in this order: `outs` (with `options`), then
/// `events` to the listeners, then `verdicts` to the waiting requests.
#[derive(Default)]
pub(crate) struct Ready {
    pub outs: Vec<POut>,
    /// Send options of `outs`: the manager's for a request's own changes; asynchronous for what
    /// a receiver, membership or background thread sends (it must not wait on a member).
    pub options: SendOptions,
    /// Listener events (those of other members' changes only with
    /// `notify_listeners_on_replication`).
    pub events: Vec<SessionEvent>,
    /// Requests whose wait for a session is over, and what they get.
    pub verdicts: Vec<(Token, Option<Session>)>,
    /// The manager became ready (state transfer done, or given up).
    pub became_ready: bool,
    /// Counters for the manager's statistics.
    pub counts: Counts,
}

/// What one input adds to the manager's counters.
#[derive(Default, Clone, Copy)]
pub(crate) struct Counts {
    pub resyncs: u64,
    pub state_transfers: u64,
    pub reconciled: u64,
    pub replications: u64,
}

impl Ready {
    fn background(outs: Vec<POut>) -> Ready {
        Ready {
            outs,
            options: SendOptions::ASYNCHRONOUS,
            ..Ready::default()
        }
    }

    /// Nothing to perform (a request for a session served here, most of the time).
    pub fn is_empty(&self) -> bool {
        let c = self.counts;
        self.outs.is_empty()
            && self.events.is_empty()
            && self.verdicts.is_empty()
            && !self.became_ready
            && c.resyncs + c.state_transfers + c.reconciled + c.replications == 0
    }
}

/// A request's end that must not be acknowledged: while it ran, this member yielded the
/// session to another member's higher claim, so its change would be made on a copy that follows
/// `by`, which never gets it.
#[derive(Debug)]
pub(crate) struct ServedElsewhere {
    pub id: SessionId,
    pub by: MemberId,
}

/// How a request starts.
pub(crate) enum Begin {
    /// Served now: the session, or none.
    Now(Option<Session>),
    /// Asked the other members; the verdict comes with the [`Ready`] of a later input, at the
    /// latest with the first `tick` at or after `deadline_ms`.
    Wait { token: Token, deadline_ms: u64 },
}

/// The state transfer of a joining DeltaManager.
struct Transfer {
    /// No member asked yet: the first member seen is asked.
    pending: bool,
    /// When to stop waiting: for a first member to appear (`None`), or for its sessions.
    deadline: Option<(u64, Option<Member>)>,
    /// When to ask the donor again if none of its chunks has come (the answer can be lost: a
    /// donor that answers over a connection to this member's previous incarnation).
    reask_at: Option<u64>,
}

/// How long a joiner waits for the first chunk of its state transfer before it asks again.
const TRANSFER_REASK_MS: u64 = 2_000;

struct Wait {
    id: SessionId,
    deadline_ms: u64,
}

/// One application's manager, without threads, sockets or clocks.
pub(crate) struct ManagerCore {
    context: String,
    core: Core,
    options: SendOptions,
    notify_on_replication: bool,
    rpc_timeout_ms: u64,
    state_transfer_timeout_ms: u64,
    expire_every_ms: u64,
    next_expire_ms: Option<u64>,
    transfer: Transfer,
    waits: BTreeMap<Token, Wait>,
    next_token: Token,
    /// Sessions this member knows its copy of is behind (it asked a member for the session
    /// after a gap, a fork, or a digest), until the copy arrives, that member leaves, or the
    /// deadline: a request for one waits for the copy rather than be served the stale one.
    /// Bounded by `MAX_RESYNCING`.
    resyncing: BTreeMap<SessionId, Behind>,
    /// DeltaManager joiner: the members it asked for their digest once its state transfer was
    /// done (`GetDigest`), until each has answered whole, left, or the deadline. Until then a
    /// request waits: a change made after the donor's snapshot, before that member listed this
    /// one, shows only in its digest.
    catch_up: BTreeMap<MemberId, u64>,
    /// When a request for another route's session renames it to this node's route.
    rebind: RebindRoute,
    /// The routes (member names) of the current members other than this node.
    routes: BTreeSet<String>,
}

/// Sessions remembered as behind at most (a member that sends many gaps cannot grow it).
const MAX_RESYNCING: usize = 10_000;

/// A session whose copy here is known to be behind another member's.
#[derive(Clone, Copy)]
struct Behind {
    until: u64,
    /// The member asked for its copy.
    of: MemberId,
    /// Asked in a `GetSessions` after a digest (answered by `Merge` chunks, the last empty).
    by_digest: bool,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl ManagerCore {
    pub fn new(context: &str, route: &str, cfg: &ManagerConfig, options: SendOptions) -> Self {
        let core = match cfg.kind {
            ManagerKind::Delta => Core::Delta(DeltaCore::new(
                DeltaConfig {
                    max_inactive: cfg.max_inactive,
                    send_all_sessions_size: cfg.send_all_sessions_size,
                    ..DeltaConfig::default()
                },
                route,
            )),
            // The local member id is known once the channel has started (`started`).
            ManagerKind::Backup => Core::Backup(BackupCore::new(
                BackupConfig {
                    backups: cfg.backups,
                    max_inactive: cfg.max_inactive,
                    ..BackupConfig::default()
                },
                MemberId([0; 16]),
                route,
            )),
        };
        ManagerCore::with_core(context, core, cfg, options)
    }

    /// A manager over a replication core the caller made (the simulation's, with its own
    /// settings); `cfg` gives the rest.
    pub fn with_core(context: &str, core: Core, cfg: &ManagerConfig, options: SendOptions) -> Self {
        ManagerCore {
            context: context.to_string(),
            core,
            options,
            notify_on_replication: cfg.notify_listeners_on_replication,
            rpc_timeout_ms: ms(cfg.rpc_timeout),
            state_transfer_timeout_ms: ms(cfg.state_transfer_timeout),
            expire_every_ms: ms(cfg.expire_frequency).max(1),
            next_expire_ms: None,
            transfer: Transfer {
                pending: true,
                deadline: None,
                reask_at: None,
            },
            waits: BTreeMap::new(),
            next_token: 0,
            resyncing: BTreeMap::new(),
            catch_up: BTreeMap::new(),
            rebind: cfg.rebind_route,
            routes: BTreeSet::new(),
        }
    }

    /// The replication core, for reads (and for tests that drive it directly).
    pub fn core(&self) -> &Core {
        &self.core
    }

    pub fn core_mut(&mut self) -> &mut Core {
        &mut self.core
    }

    #[cfg(test)]
    pub fn set_id_source(&mut self, ids: Box<dyn IdSource>) {
        self.core.set_id_source(ids);
    }

    pub fn is_ready(&self) -> bool {
        self.core.is_ready()
    }

    /// The earliest time `tick` has something to do, if any.
    pub fn next_deadline(&self) -> Option<u64> {
        let fetch = self.waits.values().map(|w| w.deadline_ms).min();
        let transfer = self.transfer.deadline.as_ref().map(|(d, _)| *d);
        [fetch, transfer, self.transfer.reask_at, self.next_expire_ms]
            .into_iter()
            .flatten()
            .min()
    }

    // ---- requests ----

    /// A request for session `id`. A DeltaManager serves its copy; a BackupManager serves a
    /// session it is primary for, and otherwise makes itself primary: it takes over or asks the
    /// other members (`Fetch`) and the request waits up to `rpc_timeout` for the answer.
    ///
    /// A DeltaManager whose copy is known to be behind (it asked for the session after a gap)
    /// waits the same way for the copy, rather than serve a state older than a change another
    /// member made.
    pub fn begin_request(&mut self, id: &SessionId, now_ms: u64) -> (Begin, Ready) {
        if let Some(until) = self.behind_until(id, now_ms) {
            return (self.wait_for(id, until), Ready::default());
        }
        if let Some(s) = self.core.served(id) {
            return (Begin::Now(Some(s.clone())), Ready::default());
        }
        let (outs, wait) = self.core.acquire(id);
        let mut ready = Ready::background(outs);
        if !wait {
            if let Some(why) = self.core.not_fetched(id) {
                info!(
                    "Manager [{}]: session {id} not fetched: {why}; the request has none",
                    self.context
                );
            }
            return (Begin::Now(self.served_copy(id)), ready);
        }
        if !self.core.is_fetching(id) {
            // Taken over here at once (a copy this node backed up).
            return (Begin::Now(self.served_copy(id)), ready);
        }
        let begin = self.wait_for(id, now_ms.saturating_add(self.rpc_timeout_ms));
        self.settle_waits(&mut ready);
        match begin {
            Begin::Wait { token, .. } => match ready.verdicts.iter().position(|(t, _)| *t == token)
            {
                Some(i) => {
                    let (_, s) = ready.verdicts.remove(i);
                    (Begin::Now(s), ready)
                }
                None => (begin, ready),
            },
            now => (now, ready),
        }
    }

    /// A request that waits for `id` to arrive here, until `deadline_ms`.
    fn wait_for(&mut self, id: &SessionId, deadline_ms: u64) -> Begin {
        self.next_token += 1;
        let token = self.next_token;
        self.waits.insert(
            token,
            Wait {
                id: id.clone(),
                deadline_ms,
            },
        );
        Begin::Wait { token, deadline_ms }
    }

    /// Until when a request for `id` must wait here: its copy is known to be behind, or this
    /// joiner has not yet heard every member's digest.
    fn behind_until(&self, id: &SessionId, now_ms: u64) -> Option<u64> {
        let copy = self.resyncing.get(id).map(|b| b.until);
        let digests = self.catch_up.values().copied().max();
        copy.into_iter()
            .chain(digests)
            .filter(|d| now_ms < *d)
            .max()
    }

    /// Whether a request for `id` still waits: for a fetch's answer, for the copy this
    /// member asked for (after a gap, a fork or a digest), or for the members' digests.
    fn still_waiting(&self, id: &SessionId) -> bool {
        self.resyncing.contains_key(id)
            || !self.catch_up.is_empty()
            || (self.core.served(id).is_none() && self.core.is_fetching(id))
    }

    /// Keeps track of the sessions this member asked another for, and of their arrival; and of
    /// the digests a joiner waits for.
    fn note_resync(&mut self, from: MemberId, msg: &Payload, outs: &[POut], now_ms: u64) {
        if let Payload::Delta(m) = msg {
            match m {
                SessionMessage::State(st) | SessionMessage::Created(st) => {
                    self.resyncing.remove(&st.id);
                }
                SessionMessage::Expired { id, .. } | SessionMessage::ChangeId { old: id, .. } => {
                    self.resyncing.remove(id);
                }
                SessionMessage::Merge(states) if states.is_empty() => {
                    // The last chunk of an answer to `GetSessions`: what it lacked, it lacks.
                    self.resyncing.retain(|_, b| !(b.by_digest && b.of == from));
                }
                SessionMessage::Merge(states) => {
                    for st in states {
                        self.resyncing.remove(&st.id);
                    }
                }
                // The last chunk of an answer to `GetDigest` (what it made this member ask
                // for is in `outs`, noted below).
                SessionMessage::Digest(entries) if entries.is_empty() => {
                    self.catch_up.remove(&from);
                }
                SessionMessage::NoContextManager => {
                    self.catch_up.remove(&from);
                }
                _ => {}
            }
        }
        self.note_asked(outs, now_ms);
    }

    /// Notes the sessions `outs` ask other members for: a request waits for their copies.
    fn note_asked(&mut self, outs: &[POut], now_ms: u64) {
        let until = now_ms.saturating_add(self.rpc_timeout_ms);
        for o in outs {
            let (Dest::Member(of), Payload::Delta(m)) = (&o.dest, &o.msg) else {
                continue;
            };
            let (ids, by_digest) = match m {
                SessionMessage::GetSession { id } => (std::slice::from_ref(id), false),
                SessionMessage::GetSessions(ids) => (ids.as_slice(), true),
                _ => continue,
            };
            for id in ids {
                if self.resyncing.len() >= MAX_RESYNCING {
                    self.resyncing.retain(|_, b| now_ms < b.until);
                }
                if self.resyncing.len() < MAX_RESYNCING {
                    let b = Behind {
                        until,
                        of: *of,
                        by_digest,
                    };
                    self.resyncing.insert(id.clone(), b);
                }
            }
        }
    }

    /// A DeltaManager joiner whose state transfer is done asks each member it knows (and its
    /// donor) for its digest, and holds requests until each has answered.
    fn begin_catch_up(&mut self, donor: Option<MemberId>, now_ms: u64, ready: &mut Ready) {
        let Core::Delta(c) = &self.core else {
            return;
        };
        let mut members: BTreeSet<MemberId> = c.members().iter().copied().collect();
        members.extend(donor);
        let until = now_ms.saturating_add(self.rpc_timeout_ms);
        for m in members {
            self.catch_up.insert(m, until);
            ready.outs.push(POut {
                dest: Dest::Member(m),
                msg: Payload::Delta(SessionMessage::GetDigest),
            });
        }
    }

    /// The session a request may use here.
    fn served_copy(&self, id: &SessionId) -> Option<Session> {
        self.core.served(id).cloned()
    }

    /// A new session for a request; its creation is announced when the request ends.
    pub fn create(&mut self, now_ms: u64) -> Result<(Session, Ready), SessionIdError> {
        let id = self.core.create(now_ms)?;
        let copy = self
            .core
            .session(&id)
            .cloned()
            .ok_or(SessionIdError::BadRandomPart)?;
        let ready = Ready {
            events: vec![SessionEvent::Created(id)],
            ..Ready::default()
        };
        Ok((copy, ready))
    }

    /// The end of a request: the working copy's changes go into the stored session and out to
    /// the members (unless `replicate` is false: the valve filter matched, and the changes wait
    /// for the next request). A copy the request invalidated ends the session everywhere. A
    /// BackupManager that no longer serves the session refuses the end ([`ServedElsewhere`]).
    pub fn end_request(
        &mut self,
        mut copy: Session,
        replicate: bool,
        now_ms: u64,
    ) -> (Result<(), ServedElsewhere>, Ready) {
        if let Some(by) = self.core.served_elsewhere(copy.id()) {
            let id = copy.id().clone();
            return (Err(ServedElsewhere { id, by }), Ready::default());
        }
        if !copy.is_valid() {
            return (Ok(()), self.invalidate(copy.id()).1);
        }
        let ops = copy.take_pending();
        let Some(stored) = self.core.session_mut(copy.id()) else {
            return (Ok(()), Ready::default()); // invalidated or expired meanwhile
        };
        let events = super::outputs::attribute_events(stored, &ops);
        stored.record_ops(ops);
        let outs = if replicate {
            self.core.end_request(copy.id(), now_ms)
        } else {
            stored.access(now_ms);
            Vec::new()
        };
        let ready = Ready {
            counts: Counts {
                replications: u64::from(!outs.is_empty()),
                ..Counts::default()
            },
            outs,
            options: self.options,
            events,
            ..Ready::default()
        };
        (Ok(()), ready)
    }

    /// Ends a session on every member; returns whether it was here.
    pub fn invalidate(&mut self, id: &SessionId) -> (bool, Ready) {
        let (outs, events) = self.core.invalidate(id);
        let existed = !events.is_empty();
        let ready = Ready {
            outs,
            options: self.options,
            events,
            ..Ready::default()
        };
        (existed, ready)
    }

    /// Gives the session a new id everywhere; `None` when it is not served here.
    pub fn change_id(
        &mut self,
        id: &SessionId,
    ) -> Result<Option<(SessionId, Ready)>, SessionIdError> {
        Ok(self.core.change_id(id)?.map(|(new, outs, events)| {
            let ready = Ready {
                outs,
                options: self.options,
                events,
                ..Ready::default()
            };
            (new, ready)
        }))
    }

    /// Tomcat's `JvmRouteBinderValve`, decided here: a request served here for session `id`
    /// whose route names another node renames the session to this node's route (the same
    /// random part), through a change of id replicated and ordered like any other, when the
    /// policy says so: `Always`, or `WhenRouteGone` and no current member has that route. An id
    /// without a route, or made here, keeps it; so does one whose rebound id is known here
    /// (it ended or was renamed before: a member remembering it would refuse it), which gets a
    /// new random part with this node's route instead. `None`: no rename (or the session is
    /// not served here).
    pub fn rebind_route(
        &mut self,
        id: &SessionId,
    ) -> Result<Option<(SessionId, Ready)>, SessionIdError> {
        let here = self.core.route();
        let Some(route) = id.route() else {
            return Ok(None);
        };
        if here.is_empty() || route == here || self.core.served(id).is_none() {
            return Ok(None);
        }
        let rebind = match self.rebind {
            RebindRoute::Never => false,
            RebindRoute::WhenRouteGone => !self.routes.contains(route),
            RebindRoute::Always => true,
        };
        if !rebind {
            return Ok(None);
        }
        let target = id.with_route(here)?;
        let renamed = if self.core.id_known(&target) {
            self.core.change_id(id)?
        } else {
            self.core.change_id_to(id, target)
        };
        Ok(renamed.map(|(new, outs, events)| {
            info!(
                "Manager [{}]: session {id} of route {route} now served here: renamed {new}",
                self.context
            );
            let ready = Ready {
                outs,
                options: self.options,
                events,
                ..Ready::default()
            };
            (new, ready)
        }))
    }

    // ---- other members ----

    /// The routes (member names, the jvmRoute of each node) of the current members other than
    /// this node, for [`rebind_route`](Self::rebind_route). Given with every membership change.
    pub fn member_routes(&mut self, routes: impl IntoIterator<Item = String>) {
        self.routes = routes.into_iter().collect();
    }

    /// A message from another member. The verdict is what a synchronized-ack sender gets: `Err`
    /// when the change was not applied here (a gap: the session was asked for; or the sender
    /// no longer serves the session), so its request is not acknowledged.
    pub fn receive(
        &mut self,
        from: MemberId,
        msg: &Payload,
        now_ms: u64,
    ) -> (Ready, Result<(), String>) {
        let was_ready = self.core.is_ready();
        let donor = match &self.transfer.deadline {
            Some((_, Some(m))) => Some(m.id),
            _ => None,
        };
        let (outs, events) = match self.core.handle(from, msg) {
            Ok(r) => r,
            Err(why) => return (Ready::default(), Err(why)),
        };
        let mut ready = Ready::background(outs);
        if let Payload::Delta(SessionMessage::GetDigest) = msg {
            ready.outs.extend(self.core.answer_get_digest(from, now_ms));
        }
        ready.events = self.replicated(events);
        let resync = Core::asks_for_session(&ready.outs);
        self.note_resync(from, msg, &ready.outs, now_ms);
        let superseded = self.core.superseded(from, msg);
        ready.counts.resyncs = u64::from(resync.is_some());
        match msg {
            Payload::Delta(SessionMessage::GetAllSessions) => ready.counts.state_transfers = 1,
            Payload::Delta(SessionMessage::Merge(states)) if !states.is_empty() => {
                ready.counts.reconciled = states.len() as u64;
                info!(
                    "Manager [{}]: reconciled {} session(s) with member {from}",
                    self.context,
                    states.len()
                );
            }
            _ => {}
        }
        if !was_ready && self.core.is_ready() {
            self.transfer.deadline = None;
            self.transfer.reask_at = None;
            ready.became_ready = true;
            self.begin_catch_up(donor.or(Some(from)), now_ms, &mut ready);
            info!(
                "Manager [{}]: session state transfer complete, {} session(s)",
                self.context,
                self.core.len()
            );
        }
        self.settle_waits(&mut ready);
        let verdict = match (resync, superseded) {
            (Some(id), _) => Err(format!(
                "session {id} not applied here: an earlier change is missing; asked for the session"
            )),
            (None, Some(id)) => Err(format!(
                "session {id} not applied here: another member serves it now"
            )),
            (None, None) => Ok(()),
        };
        (ready, verdict)
    }

    /// A member appeared: a DeltaManager that has not yet asked anyone for the sessions asks it.
    pub fn member_added(&mut self, m: &Member, now_ms: u64) -> Ready {
        if matches!(self.core, Core::Backup(_)) || !self.transfer.pending {
            return Ready::default(); // a BackupManager's joins take their share by re-placement
        }
        self.transfer.pending = false;
        self.transfer.deadline = Some((
            now_ms.saturating_add(self.state_transfer_timeout_ms),
            Some(m.clone()),
        ));
        self.transfer.reask_at = Some(now_ms.saturating_add(TRANSFER_REASK_MS));
        let outs = self.core.begin_state_transfer(m.id);
        if !outs.is_empty() {
            info!("Manager [{}]: asking [{m}] for all sessions", self.context);
        }
        Ready::background(outs)
    }

    /// The member list is now `members`: failover, re-placement, digests to new members.
    pub fn members_changed(&mut self, members: Vec<MemberId>, now_ms: u64) -> Ready {
        let outs = self.core.set_members(members, now_ms);
        let digests = outs
            .iter()
            .filter(|o| matches!(o.msg, Payload::Delta(SessionMessage::Digest(_))))
            .count();
        if digests > 0 {
            info!(
                "Manager [{}]: members appeared: sent them this node's session digest ({digests} message(s)) to reconcile",
                self.context
            );
        }
        let mut ready = Ready::background(outs);
        // Copies and digests asked of members that left will not come.
        let Core::Delta(c) = &self.core else {
            self.settle_waits(&mut ready);
            return ready;
        };
        let here = |m: &MemberId| c.members().binary_search(m).is_ok();
        self.resyncing.retain(|_, b| here(&b.of));
        self.catch_up.retain(|m, _| here(m));
        // A fetch waiting only for members that left has ended.
        self.settle_waits(&mut ready);
        ready
    }

    /// The cluster started. With members to expect (static or multicast membership), a
    /// DeltaManager is not ready until the first one is asked for its sessions, or `settle`
    /// passes without any: then it starts empty, as the first node of a cluster does.
    pub fn started(&mut self, local: MemberId, settle: Option<Duration>, now_ms: u64) -> Ready {
        self.next_expire_ms = Some(now_ms.saturating_add(self.expire_every_ms));
        if let Core::Backup(c) = &mut self.core {
            c.set_local(local);
        }
        if let Some(settle) = settle.filter(|_| matches!(self.core, Core::Delta(_))) {
            if self.transfer.pending {
                self.transfer.deadline = Some((now_ms.saturating_add(ms(settle)), None));
                self.core.expect_members();
            }
        }
        Ready {
            became_ready: true,
            ..Ready::default()
        }
    }

    // ---- time ----

    /// Time passed: fetches past their deadline serve the best copy answered (or none), a
    /// state transfer past its deadline is given up, and idle sessions expire when due.
    pub fn tick(&mut self, now_ms: u64) -> Ready {
        let mut ready = Ready::background(Vec::new());
        self.resyncing.retain(|_, b| now_ms < b.until);
        let late_digests: Vec<MemberId> = self
            .catch_up
            .iter()
            .filter(|(_, d)| now_ms >= **d)
            .map(|(m, _)| *m)
            .collect();
        for m in late_digests {
            self.catch_up.remove(&m);
            log::warn!(
                "Manager [{}]: member {m} did not send its session digest within {} ms; serving without it",
                self.context,
                self.rpc_timeout_ms
            );
        }
        let late: Vec<Token> = self
            .waits
            .iter()
            .filter(|(_, w)| now_ms >= w.deadline_ms)
            .map(|(t, _)| *t)
            .collect();
        for token in late {
            let Some(w) = self.waits.remove(&token) else {
                continue;
            };
            if self.resyncing.remove(&w.id).is_some() {
                log::warn!(
                    "Manager [{}]: the copy of session {} asked for after a gap did not arrive within {} ms; serving the copy held here",
                    self.context,
                    w.id,
                    self.rpc_timeout_ms
                );
            } else if self.core.served(&w.id).is_none() && self.core.is_fetching(&w.id) {
                log::warn!(
                    "Manager [{}]: session {} not fetched within {} ms; serving the best copy answered or held here, if any",
                    self.context,
                    w.id,
                    self.rpc_timeout_ms
                );
                ready.outs.extend(self.core.end_fetch(&w.id));
            }
            self.give_verdict(token, &w.id, &mut ready);
        }
        // Other requests for the same sessions see what the given-up fetches served.
        self.settle_waits(&mut ready);
        if self.next_expire_ms.is_some_and(|t| now_ms >= t) {
            self.next_expire_ms = Some(now_ms.saturating_add(self.expire_every_ms));
            let (outs, events) = self.core.expire(now_ms);
            if !events.is_empty() {
                info!(
                    "Manager [{}]: {} session(s) expired",
                    self.context,
                    events.len()
                );
            }
            ready.outs.extend(outs);
            ready.events.extend(events);
        }
        self.check_transfer_deadline(now_ms, &mut ready);
        self.reask_transfer(now_ms, &mut ready);
        ready
    }

    /// A joiner that has had no chunk of its state transfer for `TRANSFER_REASK_MS` asks its
    /// donor again (until the transfer's deadline).
    fn reask_transfer(&mut self, now_ms: u64, ready: &mut Ready) {
        let Some(at) = self.transfer.reask_at.filter(|at| now_ms >= *at) else {
            return;
        };
        let donor = match &self.transfer.deadline {
            Some((_, Some(m))) if !self.core.is_ready() => m.clone(),
            _ => {
                self.transfer.reask_at = None;
                return;
            }
        };
        self.transfer.reask_at = Some(now_ms.saturating_add(TRANSFER_REASK_MS));
        if self.core.transfer_chunks() > 0 {
            return; // chunks are coming
        }
        info!(
            "Manager [{}]: no session state from [{donor}] after {} ms; asking again",
            self.context,
            now_ms.saturating_sub(at) + TRANSFER_REASK_MS
        );
        ready.outs.extend(self.core.begin_state_transfer(donor.id));
    }

    fn check_transfer_deadline(&mut self, now_ms: u64, ready: &mut Ready) {
        let late = match &self.transfer.deadline {
            Some((d, m)) if now_ms >= *d => m.clone(),
            _ => return,
        };
        self.transfer.deadline = None;
        self.transfer.reask_at = None;
        match late {
            Some(ref m) => error!(
                "Manager [{}]: no session state received from [{m}] within {} ms; starting with what arrived",
                self.context, self.state_transfer_timeout_ms
            ),
            None => info!(
                "Manager [{}]: no other member found; starting with no sessions",
                self.context
            ),
        }
        self.transfer.pending = false;
        let (outs, events) = self.core.end_state_transfer();
        self.note_asked(&outs, now_ms);
        ready.outs.extend(outs);
        ready.events.extend(self.replicated(events));
        ready.became_ready = true;
        // The members may hold what the transfer did not bring.
        self.begin_catch_up(late.map(|m| m.id), now_ms, ready);
    }

    /// On shutdown: ends every session here (and, with `everywhere`, on every member).
    pub fn expire_all(&mut self, everywhere: bool) -> Ready {
        let mut ready = Ready {
            options: self.options,
            ..Ready::default()
        };
        for id in self.core.ids() {
            let (outs, events) = self.core.invalidate(&id);
            if everywhere {
                ready.outs.extend(outs);
            }
            ready.events.extend(events);
        }
        ready
    }

    // ---- helpers ----

    /// Events of other members' changes, for listeners that asked for them.
    fn replicated(&self, events: Vec<SessionEvent>) -> Vec<SessionEvent> {
        if self.notify_on_replication {
            events
        } else {
            Vec::new()
        }
    }

    /// Waiting requests whose session is now served here, or whose fetch ended without it.
    fn settle_waits(&mut self, ready: &mut Ready) {
        let done: Vec<Token> = self
            .waits
            .iter()
            .filter(|(_, w)| !self.still_waiting(&w.id))
            .map(|(t, _)| *t)
            .collect();
        for token in done {
            if let Some(w) = self.waits.remove(&token) {
                self.give_verdict(token, &w.id, ready);
            }
        }
    }

    /// The waiting request `token` gets the session as served here now, or none.
    fn give_verdict(&self, token: Token, id: &SessionId, ready: &mut Ready) {
        let s = self.served_copy(id);
        if s.is_none() {
            info!(
                "Manager [{}]: session {id} not found on any member; the request has none",
                self.context
            );
        }
        ready.verdicts.push((token, s));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::id::OsRandom;

    const T0: u64 = 1_700_000_000_000;

    fn m(i: u8) -> MemberId {
        MemberId([i; 16])
    }

    /// Members 1..=n, each a ManagerCore of `kind`, started and seeing every other.
    fn cluster(kind: ManagerKind, n: u8) -> Vec<ManagerCore> {
        let cfg = ManagerConfig {
            kind,
            rpc_timeout: Duration::from_millis(100),
            ..ManagerConfig::default()
        };
        let all: Vec<MemberId> = (1..=n).map(m).collect();
        (1..=n)
            .map(|i| {
                let mut c = ManagerCore::new("/app", &format!("n{i}"), &cfg, SendOptions::SYNC_ACK);
                c.set_id_source(Box::new(OsRandom));
                c.started(m(i), None, T0);
                c.members_changed(all.clone(), T0);
                c
            })
            .collect()
    }

    /// Delivers `outs` of member `from` and everything they cause; returns the verdicts given.
    fn deliver(
        nodes: &mut [ManagerCore],
        from: u8,
        outs: Vec<POut>,
    ) -> Vec<(u8, Token, Option<Session>)> {
        let mut queue: Vec<(u8, POut)> = outs.into_iter().map(|o| (from, o)).collect();
        let mut verdicts = Vec::new();
        while !queue.is_empty() {
            let (src, out) = queue.remove(0);
            let dests: Vec<u8> = match out.dest {
                Dest::All => (1..=nodes.len() as u8).filter(|d| *d != src).collect(),
                Dest::Member(id) => vec![id.0[0]],
            };
            for d in dests {
                let (ready, _) = nodes[usize::from(d - 1)].receive(m(src), &out.msg, T0);
                verdicts.extend(ready.verdicts.into_iter().map(|(t, s)| (d, t, s)));
                queue.extend(ready.outs.into_iter().map(|o| (d, o)));
            }
        }
        verdicts
    }

    /// A DeltaManager member 2 that expects members, and its request for every session to
    /// member 1, which it has just seen.
    fn joiner_asking_member_one() -> (ManagerCore, Ready) {
        let cfg = ManagerConfig::default();
        let mut joiner = ManagerCore::new("/app", "n2", &cfg, SendOptions::SYNC_ACK);
        joiner.started(m(2), Some(Duration::from_secs(1)), T0);
        let donor = Member {
            id: m(1),
            name: "n1".into(),
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], 4001)),
            domain: String::new(),
        };
        let ask = joiner.member_added(&donor, T0);
        (joiner, ask)
    }

    fn login(nodes: &mut [ManagerCore], on: u8) -> SessionId {
        let c = &mut nodes[usize::from(on - 1)];
        let (mut copy, _) = c.create(T0).expect("id");
        copy.set("user", &"ann").expect("set");
        let id = copy.id().clone();
        let (_, ready) = c.end_request(copy, true, T0);
        assert_eq!(
            ready.options,
            SendOptions::SYNC_ACK,
            "a request's own options"
        );
        deliver(nodes, on, ready.outs);
        id
    }

    /// A backup manager asked for a session another member serves waits; the verdict comes in
    /// the batch of the answer, after the messages the answer made this member send.
    #[test]
    fn a_fetch_waits_and_its_verdict_follows_the_messages_of_the_answer() {
        let mut nodes = cluster(ManagerKind::Backup, 3);
        let id = login(&mut nodes, 1);
        // The member that is neither primary nor backup.
        let third = (2..=3u8)
            .find(|i| nodes[usize::from(i - 1)].core().session(&id).is_none())
            .expect("one member holds no copy");
        let (begin, ready) = nodes[usize::from(third - 1)].begin_request(&id, T0);
        let Begin::Wait { token, deadline_ms } = begin else {
            panic!("a session served elsewhere is fetched");
        };
        assert_eq!(deadline_ms, T0 + 100);
        assert_eq!(
            nodes[usize::from(third - 1)].next_deadline(),
            Some(T0 + 100)
        );
        assert!(
            ready.options.is_async(),
            "a fetch is sent in the background"
        );
        let verdicts = deliver(&mut nodes, third, ready.outs);
        let got: Vec<_> = verdicts
            .iter()
            .filter(|(n, t, _)| *n == third && *t == token)
            .collect();
        assert_eq!(got.len(), 1, "one verdict: {verdicts:?}");
        let s = got[0].2.as_ref().expect("the session");
        assert_eq!(s.get::<String>("user").unwrap().as_deref(), Some("ann"));
        assert!(nodes[usize::from(third - 1)].core().served(&id).is_some());
    }

    /// Nobody answers: the first tick at the deadline gives the request its verdict (the copy
    /// held here, or none), not before.
    #[test]
    fn an_unanswered_fetch_ends_at_its_deadline() {
        let mut nodes = cluster(ManagerKind::Backup, 3);
        let id = login(&mut nodes, 1);
        let third = (2..=3u8)
            .find(|i| nodes[usize::from(i - 1)].core().session(&id).is_none())
            .expect("one member holds no copy");
        let c = &mut nodes[usize::from(third - 1)];
        let (Begin::Wait { token, deadline_ms }, _) = c.begin_request(&id, T0) else {
            panic!("fetched");
        };
        assert!(
            c.tick(deadline_ms - 1).verdicts.is_empty(),
            "not before the deadline"
        );
        let ready = c.tick(deadline_ms);
        assert_eq!(ready.verdicts.len(), 1);
        assert_eq!(ready.verdicts[0].0, token);
        assert!(
            ready.verdicts[0].1.is_none(),
            "no copy anywhere it heard from"
        );
    }

    /// A BackupManager's backup that asked its primary for a copy (a gap) still fetches the
    /// session for a request at once: it does not wait for that copy, which it would not serve
    /// (before, the request waited until the deadline and then had no session).
    #[test]
    fn a_backup_behind_its_primary_fetches_for_a_request() {
        let mut nodes = cluster(ManagerKind::Backup, 2);
        let id = login(&mut nodes, 1);
        let mut copy = nodes[0].core().session(&id).cloned().expect("held");
        copy.set("n", &1u8).expect("set");
        let (_, first) = nodes[0].end_request(copy, true, T0 + 1);
        drop(first); // member 2 misses it
        let mut copy = nodes[0].core().session(&id).cloned().expect("held");
        copy.set("n", &2u8).expect("set");
        let (_, second) = nodes[0].end_request(copy, true, T0 + 2);
        let (ready, verdict) = nodes[1].receive(m(1), &second.outs[0].msg, T0 + 2);
        assert!(verdict.is_err(), "a gap");
        assert_eq!(ready.counts.resyncs, 1, "asked for a copy");
        let (begin, ready) = nodes[1].begin_request(&id, T0 + 3);
        assert!(matches!(begin, Begin::Wait { .. }), "waits for the fetch");
        let verdicts = deliver(&mut nodes, 2, ready.outs);
        let s = verdicts
            .into_iter()
            .find_map(|(n, _, s)| s.filter(|_| n == 2))
            .expect("the fetch's verdict: the session");
        assert_eq!(s.get::<u8>("n").expect("n"), Some(2));
    }

    /// A change that cannot be applied (a gap) is refused for a synchronized-ack sender, and
    /// the session is asked for.
    #[test]
    fn a_change_with_a_gap_gets_a_refusal_verdict() {
        let mut nodes = cluster(ManagerKind::Delta, 2);
        let (copy, _) = nodes[0].create(T0).expect("id");
        let id = copy.id().clone();
        let (_, created) = nodes[0].end_request(copy, true, T0);
        // Member 2 never gets the creation; the next change shows it the gap.
        drop(created);
        let mut copy = nodes[0].core().session(&id).cloned().expect("held");
        copy.set("n", &1u8).expect("set");
        let (_, change) = nodes[0].end_request(copy, true, T0 + 1);
        let (ready, verdict) = nodes[1].receive(m(1), &change.outs[0].msg, T0 + 1);
        let why = verdict.expect_err("not applied");
        assert!(why.contains("an earlier change is missing"), "{why}");
        assert_eq!(ready.counts.resyncs, 1);
    }

    /// Two changes on member 1; member 2 gets only the second (a gap). Returns the session
    /// and what member 2 sent after the gap (its request for the session).
    fn behind_on_member_two(nodes: &mut [ManagerCore]) -> (SessionId, Vec<POut>) {
        let (copy, _) = nodes[0].create(T0).expect("id");
        let id = copy.id().clone();
        let (_, created) = nodes[0].end_request(copy, true, T0);
        deliver(nodes, 1, created.outs);
        let mut outs = Vec::new();
        for n in 1..=2u8 {
            let mut c = nodes[0].core().session(&id).cloned().expect("held");
            c.set("n", &n).expect("set");
            let (_, ready) = nodes[0].end_request(c, true, T0 + u64::from(n));
            outs.push(ready.outs);
        }
        let (ready, verdict) = nodes[1].receive(m(1), &outs[1][0].msg, T0 + 3);
        assert!(verdict.is_err(), "a gap is refused");
        (id, ready.outs)
    }

    /// A DeltaManager that asked for a session after a gap does not serve its stale copy: a
    /// request waits, and gets the copy when it arrives.
    #[test]
    fn a_request_for_a_copy_known_to_be_behind_waits_for_the_copy() {
        let mut nodes = cluster(ManagerKind::Delta, 2);
        let (id, asked) = behind_on_member_two(&mut nodes);
        let (Begin::Wait { token, .. }, _) = nodes[1].begin_request(&id, T0 + 4) else {
            panic!("a copy known to be behind was served");
        };
        let verdicts = deliver(&mut nodes, 2, asked);
        let (_, _, copy) = verdicts
            .iter()
            .find(|(n, t, _)| *n == 2 && *t == token)
            .expect("the copy's arrival gives the verdict");
        let copy = copy.as_ref().expect("the session");
        assert_eq!(copy.get::<u8>("n").unwrap(), Some(2), "the current copy");
        let (Begin::Now(Some(_)), _) = nodes[1].begin_request(&id, T0 + 5) else {
            panic!("once the copy is here, requests are served at once");
        };
    }

    /// The copy asked for never comes (its sender died): at the deadline the request is served
    /// the copy held here.
    #[test]
    fn a_copy_asked_for_that_never_comes_is_given_up_at_the_deadline() {
        let mut nodes = cluster(ManagerKind::Delta, 2);
        let (id, _lost) = behind_on_member_two(&mut nodes);
        let (Begin::Wait { token, deadline_ms }, _) = nodes[1].begin_request(&id, T0 + 4) else {
            panic!("waits");
        };
        assert!(nodes[1].tick(deadline_ms - 1).verdicts.is_empty());
        let ready = nodes[1].tick(deadline_ms);
        assert_eq!(ready.verdicts.len(), 1);
        assert_eq!(ready.verdicts[0].0, token);
        let copy = ready.verdicts[0].1.as_ref().expect("the copy held here");
        assert_eq!(
            copy.get::<u8>("n").unwrap(),
            None,
            "behind, but the best there is"
        );
    }

    /// A joiner is ready once its state transfer is complete, but a change its donor made
    /// after the snapshot, before the donor listed the joiner, reaches the joiner only with the
    /// donor's digest. The joiner asks every member for its digest when its transfer is done and
    /// holds requests until each has answered whole and the copies it showed behind arrived:
    /// the request is served the donor's latest change, not the snapshot's copy.
    #[test]
    fn a_joiner_does_not_serve_a_copy_older_than_its_donors_latest_change() {
        let cfg = ManagerConfig::default();
        let mut donor = ManagerCore::new("/app", "n1", &cfg, SendOptions::SYNC_ACK);
        donor.started(m(1), None, T0);
        let (mut copy, _) = donor.create(T0).expect("id");
        copy.set("n", &1u8).expect("set");
        let id = copy.id().clone();
        let _ = donor.end_request(copy, true, T0);
        let (mut joiner, ask) = joiner_asking_member_one();
        let (snapshot, _) = donor.receive(m(2), &ask.outs[0].msg, T0);
        // The donor changes the session before it lists the joiner: not sent to it.
        let mut c = donor.core().session(&id).cloned().expect("held");
        c.set("n", &2u8).expect("set");
        let _ = donor.end_request(c, true, T0 + 1);
        let mut asks = Vec::new();
        for o in snapshot.outs {
            asks.extend(joiner.receive(m(1), &o.msg, T0 + 2).0.outs);
        }
        assert!(joiner.is_ready());
        assert!(
            matches!(
                asks.as_slice(),
                [POut {
                    msg: Payload::Delta(SessionMessage::GetDigest),
                    ..
                }]
            ),
            "asks its donor for its digest"
        );
        let (begin, _) = joiner.begin_request(&id, T0 + 3);
        let Begin::Wait { token, deadline_ms } = begin else {
            panic!("served before the catch-up");
        };
        assert_eq!(deadline_ms, T0 + 2 + ms(cfg.rpc_timeout));
        // The donor answers only once it lists the joiner (every later change goes to the
        // joiner too); its digest shows the newer copy; the joiner asks for it and gets it.
        for o in &asks {
            let (ready, _) = donor.receive(m(2), &o.msg, T0 + 3);
            assert!(ready.outs.is_empty(), "not listed yet: the answer waits");
        }
        let listed = donor.members_changed(vec![m(2)], T0 + 4);
        let mut queue: Vec<(u8, POut)> = listed.outs.into_iter().map(|o| (1, o)).collect();
        let mut verdicts = Vec::new();
        while !queue.is_empty() {
            let (src, out) = queue.remove(0);
            let (ready, _) = if src == 2 {
                donor.receive(m(2), &out.msg, T0 + 4)
            } else {
                joiner.receive(m(1), &out.msg, T0 + 4)
            };
            verdicts.extend(ready.verdicts);
            queue.extend(ready.outs.into_iter().map(|o| (3 - src, o)));
        }
        let [(t, Some(s))] = verdicts.as_slice() else {
            panic!("one verdict with the session: {}", verdicts.len());
        };
        assert_eq!(*t, token);
        assert_eq!(
            s.get::<u8>("n").unwrap(),
            Some(2),
            "the donor's latest change"
        );
        // Caught up: the next request is served at once.
        assert!(matches!(
            joiner.begin_request(&id, T0 + 5).0,
            Begin::Now(Some(_))
        ));
    }

    /// A joiner that asked a member for its digest does not wait for it once that member has
    /// left; one that never answers is given up at the deadline.
    #[test]
    fn a_joiner_stops_waiting_for_a_digest_of_a_member_gone_or_silent() {
        let cfg = ManagerConfig::default();
        let mut donor = ManagerCore::new("/app", "n1", &cfg, SendOptions::SYNC_ACK);
        donor.started(m(1), None, T0);
        let (copy, _) = donor.create(T0).expect("id");
        let id = copy.id().clone();
        let _ = donor.end_request(copy, true, T0);
        for gone in [true, false] {
            let (mut joiner, ask) = joiner_asking_member_one();
            let _ = joiner.members_changed(vec![m(1)], T0);
            let (snapshot, _) = donor.receive(m(2), &ask.outs[0].msg, T0);
            for o in snapshot.outs {
                let _ = joiner.receive(m(1), &o.msg, T0 + 1);
            }
            let (Begin::Wait { token, deadline_ms }, _) = joiner.begin_request(&id, T0 + 2) else {
                panic!("waits for the digest");
            };
            let ready = if gone {
                joiner.members_changed(Vec::new(), T0 + 3)
            } else {
                assert!(joiner.tick(deadline_ms - 1).verdicts.is_empty());
                joiner.tick(deadline_ms)
            };
            assert_eq!(ready.verdicts.len(), 1, "gone: {gone}");
            assert_eq!(ready.verdicts[0].0, token);
            assert!(ready.verdicts[0].1.is_some(), "the copy held here");
        }
    }

    /// Known limit (docs/design.md): the donor of a state transfer makes every chunk of the
    /// snapshot in one step, under the manager's lock (issue 15 streams it).
    #[test]
    #[ignore = "known limit: the state-transfer snapshot is made whole under the lock, not streamed (issue 15); docs/design.md"]
    fn a_state_transfer_is_streamed_a_few_chunks_at_a_time() {
        let cfg = ManagerConfig {
            send_all_sessions_size: 10,
            ..ManagerConfig::default()
        };
        let mut donor = ManagerCore::new("/app", "n1", &cfg, SendOptions::SYNC_ACK);
        donor.started(m(1), None, T0);
        for _ in 0..100 {
            let (copy, _) = donor.create(T0).expect("id");
            let _ = donor.end_request(copy, true, T0);
        }
        let (ready, _) = donor.receive(m(2), &Payload::Delta(SessionMessage::GetAllSessions), T0);
        assert!(
            ready.outs.len() <= 2,
            "{} chunks made at once",
            ready.outs.len()
        );
    }

    /// A joiner whose donor's answer is lost (it went to this member's previous incarnation)
    /// asks again after `TRANSFER_REASK_MS` and becomes ready with the second answer, long
    /// before `state_transfer_timeout`.
    #[test]
    fn a_joiner_asks_again_when_no_chunk_of_its_state_transfer_comes() {
        let mut nodes = cluster(ManagerKind::Delta, 1);
        let (copy, _) = nodes[0].create(T0).expect("id");
        let _ = nodes[0].end_request(copy, true, T0);
        let (mut joiner, lost) = joiner_asking_member_one();
        assert_eq!(lost.outs.len(), 1, "asked once");
        assert!(joiner.tick(T0 + TRANSFER_REASK_MS - 1).outs.is_empty());
        let again = joiner.tick(T0 + TRANSFER_REASK_MS);
        assert!(
            matches!(
                again.outs.as_slice(),
                [POut {
                    msg: Payload::Delta(SessionMessage::GetAllSessions),
                    ..
                }]
            ),
            "asked again"
        );
        let (answer, _) = nodes[0].receive(m(2), &again.outs[0].msg, T0 + TRANSFER_REASK_MS);
        for o in answer.outs {
            let _ = joiner.receive(m(1), &o.msg, T0 + TRANSFER_REASK_MS + 1);
        }
        assert!(joiner.is_ready());
        assert_eq!(joiner.core().len(), 1);
        assert!(
            joiner.tick(T0 + 3 * TRANSFER_REASK_MS).outs.is_empty(),
            "not again"
        );
    }

    /// Members 1..=n of `kind` with `policy`, each told the routes of the others (`n1`..).
    fn routed(kind: ManagerKind, n: u8, policy: RebindRoute) -> Vec<ManagerCore> {
        let mut nodes = cluster(kind, n);
        for (i, c) in nodes.iter_mut().enumerate() {
            c.rebind = policy;
            c.member_routes(
                (1..=n)
                    .filter(|j| usize::from(*j) != i + 1)
                    .map(|j| format!("n{j}")),
            );
        }
        nodes
    }

    /// A request for `id` begins on member `on` (a BackupManager takes it over or fetches it
    /// first); returns its copy.
    fn begin(nodes: &mut [ManagerCore], on: u8, id: &SessionId) -> Session {
        let (begin, ready) = nodes[usize::from(on - 1)].begin_request(id, T0);
        let verdicts = deliver(nodes, on, ready.outs);
        match begin {
            Begin::Now(s) => s.expect("served at once"),
            Begin::Wait { token, .. } => verdicts
                .into_iter()
                .find(|(n, t, _)| *n == on && *t == token)
                .and_then(|(_, _, s)| s)
                .expect("fetched"),
        }
    }

    /// A request for `id` on member `on`, begun and ended.
    fn serve(nodes: &mut [ManagerCore], on: u8, id: &SessionId) {
        let copy = begin(nodes, on, id);
        let (ended, ready) = nodes[usize::from(on - 1)].end_request(copy, true, T0);
        assert!(ended.is_ok());
        deliver(nodes, on, ready.outs);
    }

    /// Tomcat's JvmRouteBinderValve: node 1 is gone, a request for its session on node 2
    /// renames it to the same random part with node 2's route; the change of id is replicated,
    /// and node 3 serves the session under the new id with its data, the old id nowhere.
    fn rebinds_when_the_route_is_gone(kind: ManagerKind) {
        let mut nodes = routed(kind, 3, RebindRoute::WhenRouteGone);
        let id = login(&mut nodes, 1);
        serve(&mut nodes, 2, &id);
        assert!(
            nodes[1].rebind_route(&id).unwrap().is_none(),
            "node 1 is a member: the id keeps its route"
        );
        // Node 1 leaves; node 2 is nodes[0] and node 3 nodes[1] from here.
        nodes.remove(0);
        for i in 0..2 {
            let other = 3 - i as u8;
            nodes[i].member_routes([format!("n{other}")]);
            let ready = nodes[i].members_changed(vec![m(other)], T0);
            deliver_renumbered(&mut nodes, i, ready.outs);
        }
        // A request on node 2, as the shell makes it: begin, rebind, the handler, end.
        let (begin, ready) = nodes[0].begin_request(&id, T0 + 1);
        deliver_renumbered(&mut nodes, 0, ready.outs);
        let Begin::Now(Some(mut copy)) = begin else {
            panic!("node 2 serves the session it served before");
        };
        let (new, ready) = nodes[0].rebind_route(&id).unwrap().expect("rebound");
        assert_eq!(new, id.with_route("n2").unwrap());
        assert_eq!(
            ready.options,
            SendOptions::SYNC_ACK,
            "a request's change of id"
        );
        assert!(
            ready
                .events
                .iter()
                .any(|e| matches!(e, SessionEvent::IdChanged { .. })),
            "listeners hear the change of id"
        );
        deliver_renumbered(&mut nodes, 0, ready.outs);
        copy.change_id(new.clone());
        copy.set("seen", &1u8).expect("set");
        let (ended, ready) = nodes[0].end_request(copy, true, T0 + 2);
        assert!(ended.is_ok());
        deliver_renumbered(&mut nodes, 0, ready.outs);
        for c in &nodes {
            assert!(c.core().session(&id).is_none(), "the old id is gone");
        }
        // Node 3 holds a copy (delta: every member; backup: the new id's backup).
        let s = nodes[1]
            .core()
            .session(&new)
            .expect("node 3 has the session");
        assert_eq!(s.get::<String>("user").unwrap().as_deref(), Some("ann"));
        assert_eq!(s.get::<u8>("seen").unwrap(), Some(1));
        assert!(
            nodes[0].rebind_route(&new).unwrap().is_none(),
            "made here now: no second rename"
        );
    }

    /// `deliver` for a cluster whose member i+2 sits at index i (member 1 removed).
    fn deliver_renumbered(nodes: &mut [ManagerCore], from: usize, outs: Vec<POut>) {
        let mut queue: Vec<(usize, POut)> = outs.into_iter().map(|o| (from, o)).collect();
        while !queue.is_empty() {
            let (src, out) = queue.remove(0);
            let dests: Vec<usize> = match out.dest {
                Dest::All => (0..nodes.len()).filter(|d| *d != src).collect(),
                Dest::Member(id) if id.0[0] >= 2 => vec![usize::from(id.0[0]) - 2],
                Dest::Member(_) => vec![],
            };
            for d in dests {
                let from = m(u8::try_from(src + 2).expect("small"));
                let (ready, _) = nodes[d].receive(from, &out.msg, T0);
                queue.extend(ready.outs.into_iter().map(|o| (d, o)));
            }
        }
    }

    #[test]
    fn delta_a_session_of_a_gone_route_is_rebound_to_this_node() {
        rebinds_when_the_route_is_gone(ManagerKind::Delta);
    }

    #[test]
    fn backup_a_session_of_a_gone_route_is_rebound_to_this_node() {
        rebinds_when_the_route_is_gone(ManagerKind::Backup);
    }

    /// `Never` keeps every id; `Always` rebinds even while the route's node lives; an id made
    /// here, one without a route, and one not served here keep theirs.
    #[test]
    fn the_rebind_policy_decides() {
        for kind in [ManagerKind::Delta, ManagerKind::Backup] {
            let mut never = routed(kind, 2, RebindRoute::Never);
            let id = login(&mut never, 1);
            serve(&mut never, 2, &id);
            never[1].member_routes(Vec::new());
            assert!(
                never[1].rebind_route(&id).unwrap().is_none(),
                "{kind:?} Never"
            );

            let mut always = routed(kind, 2, RebindRoute::Always);
            let id = login(&mut always, 1);
            assert!(always[0].rebind_route(&id).unwrap().is_none(), "made here");
            let unknown = SessionId::parse("0123456789ABCDEF0123456789ABCDEF.n1").unwrap();
            assert!(
                always[1].rebind_route(&unknown).unwrap().is_none(),
                "not here"
            );
            let no_route = SessionId::parse("0123456789ABCDEF0123456789ABCDEF").unwrap();
            assert!(
                always[1].rebind_route(&no_route).unwrap().is_none(),
                "no route"
            );
            serve(&mut always, 2, &id);
            let (new, _) = always[1]
                .rebind_route(&id)
                .unwrap()
                .expect("{kind:?} Always");
            assert_eq!(new.route(), Some("n2"));
            assert_eq!(new.as_str()[..32], id.as_str()[..32], "same random part");
        }
    }

    /// Known limit (docs/design.md, "One manager core per application"): node 1 is gone and
    /// its user's requests reach node 2 and node 3 at once; each rebinds the session to its own
    /// route before hearing of the other's rename, and the session goes on under two ids.
    #[test]
    #[ignore = "known limit: two nodes rebinding one session at once each rename it (two ids); docs/design.md"]
    fn concurrent_rebinds_on_two_nodes_leave_one_session() {
        let mut nodes = routed(ManagerKind::Delta, 3, RebindRoute::WhenRouteGone);
        let id = login(&mut nodes, 1);
        for c in &mut nodes[1..] {
            c.member_routes(["n2".to_string(), "n3".to_string()]);
        }
        let (_, on2) = nodes[1].rebind_route(&id).unwrap().expect("node 2 rebinds");
        let (_, on3) = nodes[2].rebind_route(&id).unwrap().expect("node 3 rebinds");
        // Node 1 is gone: deliver between nodes 2 and 3 only.
        for (from, to, outs) in [(2u8, 3usize, on2.outs), (3, 2, on3.outs)] {
            for o in outs {
                let _ = nodes[to - 1].receive(m(from), &o.msg, T0);
            }
        }
        let live: std::collections::BTreeSet<SessionId> = nodes[1..]
            .iter()
            .flat_map(|c| c.core().ids())
            .filter(|i| nodes[1..].iter().any(|c| c.core().session(i).is_some()))
            .collect();
        assert_eq!(live.len(), 1, "the session goes on under {live:?}");
    }

    /// A rebound id that is known here (a member remembering it retired would refuse it) is
    /// not reused: rebound to node 2 and then back to node 1, whose old id node 1 retired, the
    /// session gets a new random part with node 1's route.
    #[test]
    fn a_rebound_id_known_here_is_not_reused() {
        let mut nodes = routed(ManagerKind::Delta, 2, RebindRoute::Always);
        let id = login(&mut nodes, 1);
        let (to2, ready) = nodes[1].rebind_route(&id).unwrap().expect("rebound to n2");
        deliver(&mut nodes, 2, ready.outs);
        assert!(
            nodes[0].core().id_known(&id),
            "node 1 remembers the retired id"
        );
        let (back, _) = nodes[0].rebind_route(&to2).unwrap().expect("rebound to n1");
        assert_eq!(back.route(), Some("n1"));
        assert_ne!(back, id, "not the retired id");
        let s = nodes[0].core().session(&back).expect("renamed here");
        assert_eq!(s.get::<String>("user").unwrap().as_deref(), Some("ann"));
    }

    /// A DeltaManager expecting members is not ready until its state-transfer deadline; the
    /// tick at the deadline makes it ready with no sessions.
    #[test]
    fn the_state_transfer_deadline_is_kept_by_tick() {
        let cfg = ManagerConfig::default();
        let mut c = ManagerCore::new("/app", "n1", &cfg, SendOptions::ASYNCHRONOUS);
        c.started(m(1), Some(Duration::from_millis(500)), T0);
        assert!(!c.is_ready());
        assert_eq!(c.next_deadline(), Some(T0 + 500));
        assert!(!c.tick(T0 + 499).became_ready);
        assert!(c.tick(T0 + 500).became_ready);
        assert!(c.is_ready());
    }
}
