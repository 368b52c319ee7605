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
use super::limits::{ActiveBound, TooManySessions};
use super::model::Session;
use super::outputs::{Dest, SessionEvent};
use super::replica::SessionMessage;
use crate::member::{Member, MemberId};
use crate::options::SendOptions;
use log::{error, info, warn};
use resync::Resyncing;
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
    /// A state transfer to this member starts (`outs` hold no chunk), or `outs` hold a chunk
    /// of one and more follow: once it is sent, the shell says so
    /// ([`ManagerCore::transfer_chunk_sent`]) for the next one.
    pub chunk_to: Option<MemberId>,
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

/// Why no session was made for a request.
#[derive(Debug)]
pub(crate) enum CreateError {
    /// No id could be made.
    Id(SessionIdError),
    /// The node holds `max_active_sessions` already.
    TooMany(TooManySessions),
}

impl std::fmt::Display for CreateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CreateError::Id(e) => e.fmt(f),
            CreateError::TooMany(e) => e.fmt(f),
        }
    }
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
    /// How long a joiner waits for its donor's first chunk before asking again.
    transfer_reask_ms: u64,
    expire_every_ms: u64,
    next_expire_ms: Option<u64>,
    transfer: Transfer,
    waits: BTreeMap<Token, Wait>,
    next_token: Token,
    /// Sessions this member knows its copy of is behind (it asked members for the session
    /// after a gap, a fork, or a digest), until every member asked has answered, left, or the
    /// deadline: a request for one waits for the copy rather than be served the stale one.
    resyncing: Resyncing,
    /// DeltaManager joiner: the members it asked for their digest once its state transfer was
    /// done (`GetDigest`), until each has answered whole, left, or the deadline. Until then a
    /// request waits: a change made after the donor's snapshot, before that member listed this
    /// one, shows only in its digest.
    catch_up: BTreeMap<MemberId, u64>,
    /// When a request for another route's session renames it to this node's route.
    rebind: RebindRoute,
    /// The routes (member names) of the current members other than this node.
    routes: BTreeSet<String>,
    /// `max_active_sessions`, and its refusals' log.
    bound: ActiveBound,
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
            transfer_reask_ms: TRANSFER_REASK_MS,
            expire_every_ms: ms(cfg.expire_frequency).max(1),
            next_expire_ms: None,
            transfer: Transfer {
                pending: true,
                deadline: None,
                reask_at: None,
            },
            waits: BTreeMap::new(),
            next_token: 0,
            resyncing: Resyncing::default(),
            catch_up: BTreeMap::new(),
            rebind: cfg.rebind_route,
            routes: BTreeSet::new(),
            bound: ActiveBound::new(cfg.max_active_sessions),
        }
    }

    /// How long a joiner waits for its donor's first chunk before it asks again
    /// (`TRANSFER_REASK_MS` unless set; the simulation scales it with its compressed time).
    #[cfg(test)]
    pub fn set_transfer_reask(&mut self, after: Duration) {
        self.transfer_reask_ms = ms(after).max(1);
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

    /// Whether this joiner still holds requests for the members' digests (its catch-up).
    #[cfg(test)]
    pub fn catching_up(&self) -> bool {
        !self.catch_up.is_empty()
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
        let copy = self.resyncing.until(id);
        let digests = self.catch_up.values().copied().max();
        copy.into_iter()
            .chain(digests)
            .filter(|d| now_ms < *d)
            .max()
    }

    /// Whether a request for `id` still waits: for a fetch's answer, for the copy this
    /// member asked for (after a gap, a fork or a digest), or for the members' digests.
    fn still_waiting(&self, id: &SessionId) -> bool {
        self.resyncing.contains(id)
            || !self.catch_up.is_empty()
            || (self.core.served(id).is_none() && self.core.is_fetching(id))
    }

    /// Keeps track of the sessions this member asked another for, and of their arrival; and of
    /// the digests a joiner waits for.
    fn note_resync(&mut self, from: MemberId, msg: &Payload, outs: &[POut], now_ms: u64) {
        if let Payload::Delta(m) = msg {
            self.resyncing.answered(from, m);
            match m {
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
            self.resyncing.asked(*of, ids, by_digest, now_ms, until);
        }
    }

    /// A DeltaManager joiner whose state transfer is done asks each member it knows (and its
    /// donor) for its digest, and holds requests until each has answered.
    fn begin_catch_up(&mut self, donor: Option<MemberId>, now_ms: u64, ready: &mut Ready) {
        // Digests this node owes members that asked while it was joining too.
        ready.outs.extend(self.core.answer_owed_digests(now_ms));
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

    /// A new session for a request; its creation is announced when the request ends. Refused
    /// when this node holds `max_active_sessions` sessions already (its own and the other
    /// members' copies, however many of either); the first refusal of a burst is logged.
    pub fn create(&mut self, now_ms: u64) -> Result<(Session, Ready), CreateError> {
        if let Err((refused, log)) = self.bound.admit(self.core.len(), now_ms) {
            if let Some(unlogged) = log {
                warn!(
                    "Manager [{}]: new session refused: {} session(s) held here, max_active_sessions is {} ({unlogged} more refused since the last warning; counted in rejected_sessions)",
                    self.context, refused.active, refused.max
                );
            }
            return Err(CreateError::TooMany(refused));
        }
        let id = self.core.create(now_ms).map_err(CreateError::Id)?;
        let copy = self
            .core
            .session(&id)
            .cloned()
            .ok_or(CreateError::Id(SessionIdError::BadRandomPart))?;
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
    /// new random part with this node's route instead, unless (DeltaManager) it is an id this
    /// session had, which every member takes back. `None`: no rename (or the session is
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
        // A DeltaManager session may take back a route it had (S.node1 -> S.node2 -> S.node1):
        // the members that remember the old id take it back too.
        let renamed = if self.core.id_known(&target) && !self.core.is_former_id(&target, id) {
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

    /// A request's rebinding, the step right after its begin (the shell's and the
    /// simulation's): renames the working copy when [`rebind_route`](Self::rebind_route) says
    /// so. The `Ready` (the replicated change of id) goes out before the request's changes.
    pub fn rebind_request(&mut self, copy: &mut Session) -> Result<Option<Ready>, SessionIdError> {
        Ok(self.rebind_route(copy.id())?.map(|(new, ready)| {
            copy.change_id(new);
            ready
        }))
    }

    // ---- other members ----

    /// [`Self::receive_owned`] with a copy of `msg`.
    #[cfg(test)]
    pub fn receive(
        &mut self,
        from: MemberId,
        msg: &Payload,
        now_ms: u64,
    ) -> (Ready, Result<(), String>) {
        self.receive_owned(from, msg.clone(), now_ms)
    }

    /// A message from another member, taken by value: the sessions it carries go into the
    /// store as they were decoded, not copied. The verdict is what a synchronized-ack sender
    /// gets: `Err` when the change was not applied here (a gap: the session was asked for; or
    /// the sender no longer serves the session), so its request is not acknowledged.
    pub fn receive_owned(
        &mut self,
        from: MemberId,
        mut msg: Payload,
        now_ms: u64,
    ) -> (Ready, Result<(), String>) {
        if let (Payload::Delta(SessionMessage::GetAllSessions), Core::Delta(_)) = (&msg, &self.core)
        {
            return (self.start_transfer(from), Ok(()));
        }
        let was_ready = self.core.is_ready();
        let donor = match &self.transfer.deadline {
            Some((_, Some(m))) => Some(m.id),
            _ => None,
        };
        let (outs, events) = match self.core.handle(from, &mut msg) {
            Ok(r) => r,
            Err(why) => return (Ready::default(), Err(why)),
        };
        let msg = &msg;
        let mut ready = Ready::background(outs);
        if let Payload::Delta(SessionMessage::GetDigest) = msg {
            ready.outs.extend(self.core.answer_get_digest(from, now_ms));
        }
        ready.events = self.replicated(events);
        let resync = Core::asks_for_session(&ready.outs);
        self.note_resync(from, msg, &ready.outs, now_ms);
        let superseded = self.core.superseded(from, msg);
        let ended = self.core.ended_here(msg);
        ready.counts.resyncs = u64::from(resync.is_some());
        match msg {
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
        let verdict = match (resync, superseded, ended) {
            (Some(id), _, _) => Err(format!(
                "session {id} not applied here: an earlier change is missing; asked for the session"
            )),
            (None, Some(id), _) => Err(format!(
                "session {id} not applied here: another member serves it now"
            )),
            (None, None, Some(id)) => {
                Err(format!("session {id} not applied here: it has ended here"))
            }
            (None, None, None) => Ok(()),
        };
        (ready, verdict)
    }

    /// `from` asked for every session: a state transfer to it starts. No chunk is made here:
    /// the `Ready` names the joiner (`chunk_to`) and the shell asks for each chunk in turn
    /// ([`Self::transfer_chunk_sent`], the first with `sent` true), on a thread of its own, so
    /// the receiver thread that got the ask is not held for the transfer.
    fn start_transfer(&mut self, from: MemberId) -> Ready {
        self.core.start_donation(from);
        let mut ready = Ready::background(Vec::new());
        ready.counts.state_transfers = 1;
        ready.chunk_to = Some(from);
        ready
    }

    /// A chunk of the state transfer to `to` left (`sent`), or could not (or the transfer
    /// starts: `sent` true): the next chunk, if any, or the transfer's end (the joiner asks
    /// again when no chunk comes). One chunk at a time, each sent with an acknowledgement, so
    /// the donor holds a chunk or two, not the store.
    pub fn transfer_chunk_sent(&mut self, to: MemberId, sent: bool) -> Ready {
        if !sent {
            self.core.cancel_donation(to);
            log::warn!(
                "Manager [{}]: a session state chunk for [{to}] was not sent; the transfer stops",
                self.context
            );
            return Ready::default();
        }
        let (outs, more) = self.core.next_chunk(to);
        let mut ready = Ready::background(outs);
        Self::stream(&mut ready, more.then_some(to));
        ready
    }

    /// Marks `ready`'s chunk as part of a transfer to `more` (when more chunks follow): sent
    /// with an acknowledgement, so that "sent" means the joiner has read it.
    fn stream(ready: &mut Ready, more: Option<MemberId>) {
        if ready.outs.is_empty() {
            return;
        }
        ready.options = SendOptions::USE_ACK;
        ready.chunk_to = more;
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
        self.transfer.reask_at = Some(now_ms.saturating_add(self.transfer_reask_ms));
        let outs = self.core.begin_state_transfer(m.id);
        if !outs.is_empty() {
            info!("Manager [{}]: asking [{m}] for all sessions", self.context);
        }
        Ready::background(outs)
    }

    /// The member list (other than this node) is now `members`: failover, re-placement,
    /// digests to new members; their names are the routes [`rebind_route`](Self::rebind_route)
    /// takes for alive.
    pub fn members_changed(&mut self, members: &[Member], now_ms: u64) -> Ready {
        self.routes = members.iter().map(|m| m.name.clone()).collect();
        let outs = self
            .core
            .set_members(members.iter().map(|m| m.id).collect(), now_ms);
        let digests = outs
            .iter()
            .filter(|o| matches!(o.msg, Payload::Delta(SessionMessage::Digest(_))))
            .count();
        if digests > 0 {
            info!(
                "Manager [{}]: members changed: sent this node's session digest to the members that appeared (or stayed, when one left) to reconcile ({digests} message(s))",
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
        self.resyncing.keep_members(here);
        self.catch_up.retain(|m, _| here(m));
        self.donor_left(members, now_ms, &mut ready);
        // A fetch waiting only for members that left has ended.
        self.settle_waits(&mut ready);
        ready
    }

    /// A joiner whose donor left before the transfer ended asks the first member that stays
    /// (or, with none, starts with what arrived): asking the gone donor again until the
    /// transfer's deadline kept it out of service for `state_transfer_timeout` (a member
    /// joining while another stops cleanly: tests/clean_stop.rs).
    fn donor_left(&mut self, members: &[Member], now_ms: u64, ready: &mut Ready) {
        let donor = match &self.transfer.deadline {
            Some((_, Some(d))) if !self.core.is_ready() => d.clone(),
            _ => return,
        };
        if members.iter().any(|m| m.id == donor.id) {
            return;
        }
        let Some(next) = members.first() else {
            // No one left to ask: the deadline path, now.
            self.transfer.deadline = Some((now_ms, None));
            self.check_transfer_deadline(now_ms, ready);
            return;
        };
        info!(
            "Manager [{}]: state transfer donor [{donor}] left; asking [{next}] for all sessions",
            self.context
        );
        self.transfer.deadline = Some((
            now_ms.saturating_add(self.state_transfer_timeout_ms),
            Some(next.clone()),
        ));
        self.transfer.reask_at = Some(now_ms.saturating_add(self.transfer_reask_ms));
        ready.outs.extend(self.core.begin_state_transfer(next.id));
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
        self.resyncing.expire(now_ms);
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
            if self.resyncing.give_up(&w.id) {
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

    /// A joiner that has had no chunk of its state transfer for `transfer_reask_ms` asks its
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
        self.transfer.reask_at = Some(now_ms.saturating_add(self.transfer_reask_ms));
        if self.core.transfer_chunks() > 0 {
            return; // chunks are coming
        }
        info!(
            "Manager [{}]: no session state from [{donor}] after {} ms; asking again",
            self.context,
            now_ms.saturating_sub(at) + self.transfer_reask_ms
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

    /// On shutdown: with `everywhere`, ends every session on every member. Without, the copies
    /// here (of either manager) are dropped with no end remembered, so nothing this node answers
    /// before its channel stops ends them on the members that keep them.
    ///
    /// A start after this stop joins again (the copies go now): its first member is asked
    /// for every session and the manager is not ready until they came, as on a first start.
    pub fn expire_all(&mut self, everywhere: bool) -> Ready {
        self.transfer = Transfer {
            pending: true,
            deadline: None,
            reask_at: None,
        };
        self.catch_up.clear();
        self.resyncing = Resyncing::default();
        let mut ready = Ready {
            options: self.options,
            ..Ready::default()
        };
        if !everywhere {
            ready.events = self.core.drop_copies();
            return ready;
        }
        for id in self.core.ids() {
            let (outs, events) = self.core.invalidate(&id);
            ready.outs.extend(outs);
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

mod resync;
#[cfg(test)]
mod tests;
