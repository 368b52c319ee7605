//! The session manager of one application (Tomcat's `ClusterManager`: a `DeltaManager` or a
//! `BackupManager`, chosen by `ManagerConfig::kind`, with the `ReplicationValve`'s request hook):
//! the request API a synchronous server calls, over a pure core (`DeltaCore` or
//! `BackupCore`).
//!
//! A request takes a working copy of its session; the application reads and changes it freely;
//! when the request ends (`finish`, or drop) the copy's changes go into the stored session and,
//! unless the valve filter matched the URI, out as one message: to every member (delta), or to
//! the session's backups (backup). A backup manager asked for a session it does not serve fetches
//! it from the member that has it and serves it from then on. With the
//! cluster's send options 8 (asynchronous) `finish` never waits; with 6 (synchronized ack) it
//! returns once every member applied the change, or an error naming those that did not.

use super::config::ManagerConfig;
use super::cookie::{cookie_change, CookieChange, CookieConfig};
use super::donor::Donations;
use super::engine::{POut, Payload};
use super::id::{SessionId, SessionIdError};
use super::limits::{effective_size_limit, TooManySessions};
use super::manager_core::{Begin, CreateError, ManagerCore, Ready, ServedElsewhere, Token};
use super::model::{Session, SessionError};
use super::outbound::Outbound;
use super::outputs::{Dest, SessionEvent};
use crate::error::{ChannelError, FaultyMember, SendFailure};
use crate::member::{Member, MemberId};
use crate::options::SendOptions;
use log::warn;
use parking_lot::{Condvar, Mutex, MutexGuard, RwLock};
use regex::Regex;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Hears sessions come and go and their attributes change (Tomcat's `HttpSessionListener` and
/// `HttpSessionAttributeListener`). Called for local changes and, with
/// `notify_listeners_on_replication`, for changes made on other members.
pub trait SessionListener: Send + Sync + 'static {
    /// Called for every event of application `context`, on the thread that caused it.
    fn event(&self, context: &str, event: &SessionEvent);
}

impl<F: Fn(&str, &SessionEvent) + Send + Sync + 'static> SessionListener for F {
    fn event(&self, context: &str, event: &SessionEvent) {
        self(context, event)
    }
}

/// Why a request could not get its session.
#[derive(Debug)]
#[non_exhaustive]
pub enum ManagerError {
    /// The session id could not be made (the operating system's random source failed).
    Id(SessionIdError),
    /// The session was replicated but could not be sent.
    Send(ChannelError),
    /// No new session: this node holds `ManagerConfig::max_active_sessions` already (Tomcat's
    /// `TooManyActiveSessionsException`). Counted in `rejected_sessions`.
    TooManySessions(TooManySessions),
}

impl std::fmt::Display for ManagerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ManagerError::Id(e) => e.fmt(f),
            ManagerError::Send(e) => e.fmt(f),
            ManagerError::TooManySessions(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ManagerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ManagerError::Id(e) => Some(e),
            ManagerError::Send(e) => Some(e),
            ManagerError::TooManySessions(e) => Some(e),
        }
    }
}

/// Any error of a request's use of its session, so that `?` works in a handler that returns
/// one error type: getting or creating the session ([`ManagerError`]), reading or changing an
/// attribute ([`SessionError`]), and sending the request's changes ([`ChannelError`], from
/// `finish`, `invalidate`).
///
/// ```no_run
/// # use tribecast::{ClusterManager, SessionRequestError};
/// # use std::sync::Arc;
/// fn login(app: &Arc<ClusterManager>, cookie: Option<&str>) -> Result<Option<String>, SessionRequestError> {
///     let mut req = app.request(cookie, "/app/login");
///     req.session_or_create()?.set("user", "ann")?;
///     req.change_id()?;
///     let set_cookie = req.set_cookie();
///     req.finish()?;
///     Ok(set_cookie)
/// }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum SessionRequestError {
    /// A session id could not be made (no randomness) or is not valid.
    Id(SessionIdError),
    /// An attribute could not be stored or read, or the session was invalidated.
    Attribute(SessionError),
    /// The request's changes did not reach every member (or could not be sent at all); the
    /// members that failed are named ([`ChannelError::faulty_members`]).
    Send(ChannelError),
    /// The manager has not received the cluster's sessions yet (a starting node's state
    /// transfer is still running), so a session could not be looked up; see
    /// [`ClusterManager::wait_ready`]. An HTTP server answers 503 and the client retries.
    NotReady,
    /// No new session: this node holds `ManagerConfig::max_active_sessions` sessions already.
    /// An HTTP server answers 503; existing sessions keep working.
    TooManySessions(TooManySessions),
}

impl std::fmt::Display for SessionRequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionRequestError::Id(e) => e.fmt(f),
            SessionRequestError::Attribute(e) => e.fmt(f),
            SessionRequestError::Send(e) => e.fmt(f),
            SessionRequestError::NotReady => {
                f.write_str("the session state transfer from the cluster is still running")
            }
            SessionRequestError::TooManySessions(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for SessionRequestError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SessionRequestError::Id(e) => Some(e),
            SessionRequestError::Attribute(e) => Some(e),
            SessionRequestError::Send(e) => Some(e),
            SessionRequestError::NotReady => None,
            SessionRequestError::TooManySessions(e) => Some(e),
        }
    }
}

impl From<ManagerError> for SessionRequestError {
    fn from(e: ManagerError) -> Self {
        match e {
            ManagerError::Id(e) => SessionRequestError::Id(e),
            ManagerError::Send(e) => SessionRequestError::Send(e),
            ManagerError::TooManySessions(e) => SessionRequestError::TooManySessions(e),
        }
    }
}

impl From<SessionError> for SessionRequestError {
    fn from(e: SessionError) -> Self {
        SessionRequestError::Attribute(e)
    }
}

impl From<ChannelError> for SessionRequestError {
    fn from(e: ChannelError) -> Self {
        SessionRequestError::Send(e)
    }
}

impl From<SessionIdError> for SessionRequestError {
    fn from(e: SessionIdError) -> Self {
        SessionRequestError::Id(e)
    }
}

/// Counters of a manager.
#[derive(Default, Debug)]
#[non_exhaustive]
pub struct ManagerStats {
    /// Session messages sent.
    pub messages_sent: crate::metrics::Counter,
    /// Session messages received.
    pub messages_received: crate::metrics::Counter,
    /// Sessions asked for again because a change arrived out of step.
    pub resyncs: crate::metrics::Counter,
    /// Full state transfers served to a joining member.
    pub state_transfers: crate::metrics::Counter,
    /// Session copies received for reconciliation.
    pub reconciled: crate::metrics::Counter,
    /// Requests whose session changes were sent.
    pub replications: crate::metrics::Counter,
    /// New sessions refused because `max_active_sessions` were held (Tomcat:
    /// `rejectedSessions`).
    pub rejected_sessions: crate::metrics::Counter,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The sessions of one distributable application, replicated by a DeltaManager or a
/// BackupManager (Tomcat's `ClusterManager`).
///
/// A thin shell over `ManagerCore`, which makes every decision: each call locks the core,
/// feeds it one input, takes the `Ready` batch, unlocks, and performs the batch in order.
pub struct ClusterManager {
    context: String,
    core: Mutex<ManagerCore>,
    /// Signalled (with `core`) when the manager becomes ready.
    ready_changed: Condvar,
    /// Batches leave in the order the core made them: taken before the core is unlocked, held
    /// while a background batch is queued. A request's own batch (which may wait for acks)
    /// only passes through it, so it never overtakes an earlier batch and never makes a
    /// receiver thread wait on another member.
    perform: Mutex<()>,
    /// Verdicts for requests waiting for a fetched session, by token.
    verdicts: Mutex<HashMap<Token, Option<Session>>>,
    verdict_ready: Condvar,
    /// Where messages go (the cluster); nothing is sent once it is gone.
    outbound: Weak<dyn Outbound>,
    /// URIs whose requests are not replicated (the `ReplicationValve` filter).
    filter: Option<Regex>,
    listeners: RwLock<Vec<Arc<dyn SessionListener>>>,
    /// The session cookie's policy.
    cookie: CookieConfig,
    /// The largest a request may make a session (`max_session_size`, within one frame).
    size_limit: usize,
    /// `max_active_sessions`, for the statistics (the core decides).
    max_active: Option<usize>,
    /// State transfers this node sends, and the thread that sends them.
    donations: Donations,
    /// Its counters (read them with `stats()` for a snapshot).
    pub stats: ManagerStats,
}

/// Tomcat's name for the all-to-all manager; the same type, configured with `ManagerKind::Delta`.
pub type DeltaManager = ClusterManager;
/// Tomcat's name for the primary/backup manager; the same type, configured with
/// `ManagerKind::Backup`.
pub type BackupManager = ClusterManager;

impl ClusterManager {
    pub(crate) fn new(
        context: &str,
        route: &str,
        cfg: &ManagerConfig,
        options: SendOptions,
        filter: Option<Regex>,
        outbound: Weak<dyn Outbound>,
        max_frame_size: u32,
    ) -> ClusterManager {
        ClusterManager {
            context: context.to_string(),
            core: Mutex::new(ManagerCore::new(context, route, cfg, options)),
            ready_changed: Condvar::new(),
            perform: Mutex::new(()),
            verdicts: Mutex::new(HashMap::new()),
            verdict_ready: Condvar::new(),
            outbound,
            filter,
            listeners: RwLock::new(Vec::new()),
            cookie: cfg.cookie.clone(),
            size_limit: effective_size_limit(cfg.max_session_size, max_frame_size, context),
            max_active: cfg.max_active_sessions,
            donations: Donations::default(),
            stats: ManagerStats::default(),
        }
    }

    /// The application (context) name.
    pub fn context(&self) -> &str {
        &self.context
    }

    /// Lets the application decide how copies of a session that diverged during a network
    /// partition are merged when the members meet again (by default the copy with the higher
    /// version wins; see docs/RELIABILITY.md). Call it on every member, before traffic.
    pub fn set_merger(&self, merger: Arc<dyn super::reconcile::SessionMerger>) {
        self.core.lock().core_mut().set_merger(Some(merger));
    }

    /// Adds a listener for this application's session events (Tomcat's `HttpSessionListener` and attribute listeners).
    pub fn add_listener(&self, l: Arc<dyn SessionListener>) {
        self.listeners.write().push(l);
    }

    /// A snapshot of the manager's figures.
    pub fn stats(&self) -> crate::metrics::ManagerSnapshot {
        let (sessions, primaries) = {
            let core = self.core.lock();
            let core = core.core();
            (core.len() as u64, core.primaries().map(|p| p as u64))
        };
        let s = &self.stats;
        crate::metrics::ManagerSnapshot {
            context: self.context.clone(),
            sessions,
            primaries,
            messages_sent: s.messages_sent.load(Ordering::Relaxed),
            messages_received: s.messages_received.load(Ordering::Relaxed),
            replications: s.replications.load(Ordering::Relaxed),
            resyncs: s.resyncs.load(Ordering::Relaxed),
            state_transfers: s.state_transfers.load(Ordering::Relaxed),
            reconciled: s.reconciled.load(Ordering::Relaxed),
            rejected_sessions: s.rejected_sessions.load(Ordering::Relaxed),
            max_active_sessions: self.max_active.map(|m| m as u64),
        }
    }

    /// The largest a request may make a session, in bytes ([`Session::size`]):
    /// `max_session_size`, lowered to what one frame carries.
    pub fn max_session_size(&self) -> usize {
        self.size_limit
    }

    /// Live sessions held here (own and replicated).
    pub fn session_count(&self) -> usize {
        self.core.lock().core().len()
    }

    /// A copy of a session, for reading outside a request.
    pub fn find(&self, id: &str) -> Option<Session> {
        let id = SessionId::parse(id).ok()?;
        self.core.lock().core().session(&id).cloned()
    }

    /// Ends a session everywhere, outside a request (an administrator's logout, say).
    pub fn invalidate(&self, id: &str) -> Result<bool, ChannelError> {
        let Ok(id) = SessionId::parse(id) else {
            return Ok(false);
        };
        let (existed, sent) = self.input(|c| c.invalidate(&id));
        sent?;
        Ok(existed)
    }

    /// Whether the state transfer from an existing member is done (or was not needed).
    pub fn is_ready(&self) -> bool {
        self.core.lock().is_ready()
    }

    /// Waits until the manager is ready, at most `timeout`; returns whether it is.
    pub fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut core = self.core.lock();
        while !core.is_ready() {
            if self
                .ready_changed
                .wait_until(&mut core, deadline)
                .timed_out()
            {
                return core.is_ready();
            }
        }
        true
    }

    /// Starts a request. `cookie` is the session id the client sent (`JSESSIONID`), if any
    /// (from a `Cookie` header: [`session_id_from_cookie_header`](Self::session_id_from_cookie_header));
    /// `uri` is checked against the valve filter.
    ///
    /// A session whose id names another node's route is renamed to this node's route first,
    /// as [`ManagerConfig::rebind_route`] says (Tomcat's `JvmRouteBinderValve`); the request's
    /// [`set_cookie`](SessionRequest::set_cookie) then gives the client the new id.
    pub fn request(self: &Arc<Self>, cookie: Option<&str>, uri: &str) -> SessionRequest {
        let replicate = !self.filter.as_ref().is_some_and(|f| f.is_match(uri));
        let mut copy = cookie
            .and_then(|c| SessionId::parse(c).ok())
            .and_then(|id| self.acquire(&id));
        if let Some(c) = copy.as_mut() {
            self.rebind(c);
        }
        SessionRequest {
            mgr: self.clone(),
            sent: cookie.map(str::to_string),
            copy,
            ended: false,
            replicate,
            done: false,
        }
    }

    /// The session id in a `Cookie` request header, by the cookie policy's name
    /// ([`CookieConfig::session_id_from_cookie_header`]).
    pub fn session_id_from_cookie_header<'h>(&self, header: &'h str) -> Option<&'h str> {
        self.cookie.session_id_from_cookie_header(header)
    }

    /// The session cookie's policy.
    pub fn cookie_config(&self) -> &CookieConfig {
        &self.cookie
    }

    /// Renames the request's session to this node's route if the core says so.
    fn rebind(&self, copy: &mut Session) {
        let ((), sent) = self.input(|c| match c.rebind_request(copy) {
            Ok(ready) => ((), ready.unwrap_or_default()),
            Err(e) => {
                warn!(
                    "Manager [{}]: session {} not rebound to this node's route: {e}",
                    self.context,
                    copy.id()
                );
                ((), Ready::default())
            }
        });
        if let Err(e) = sent {
            warn!(
                "Manager [{}]: rebinding session {} not told to every member: {e}",
                self.context,
                copy.id()
            );
        }
    }

    /// The stored session for a request, as a working copy. A backup manager makes itself the
    /// session's primary first; when it asked the other members, the request waits for the
    /// core's verdict (at most `rpc_timeout`: the core ends the wait at its deadline).
    fn acquire(&self, id: &SessionId) -> Option<Session> {
        let (begin, sent) = self.input(|c| c.begin_request(id, now_ms()));
        if let Err(e) = sent {
            warn!(
                "Manager [{}]: taking over session {id} not told to every member: {e}",
                self.context
            );
        }
        let copy = match begin {
            Begin::Now(s) => s,
            Begin::Wait { token, deadline_ms } => self.wait_verdict(token, deadline_ms),
        };
        // The copy starts with no changes of its own: what the stored session still has pending
        // (a filtered request's) stays there and is not applied twice.
        copy.map(|mut c| {
            c.take_pending();
            c.limit_size(self.size_limit);
            c
        })
    }

    /// Waits for the verdict on `token`; past its deadline this thread ticks the core itself.
    fn wait_verdict(&self, token: Token, deadline_ms: u64) -> Option<Session> {
        let mut verdicts = self.verdicts.lock();
        loop {
            if let Some(s) = verdicts.remove(&token) {
                return s;
            }
            let now = now_ms();
            if now > deadline_ms {
                drop(verdicts);
                self.tick_at(now);
                verdicts = self.verdicts.lock();
                continue;
            }
            let left = Duration::from_millis(deadline_ms - now + 1);
            self.verdict_ready.wait_for(&mut verdicts, left);
        }
    }

    /// Feeds one input to the core and performs the batch it makes. Returns the input's own
    /// result and whether the batch's messages reached every member.
    fn input<R>(
        &self,
        f: impl FnOnce(&mut ManagerCore) -> (R, Ready),
    ) -> (R, Result<(), ChannelError>) {
        let mut core = self.core.lock();
        let (r, ready) = f(&mut core);
        if ready.is_empty() {
            // Nothing leaves, so nothing can overtake: no need to pass the `perform` lock.
            return (r, Ok(()));
        }
        let order = self.perform.lock();
        drop(core);
        (r, self.perform(ready, order))
    }

    /// Performs a batch: its messages, then the verdicts of waiting requests, then listeners.
    fn perform(&self, ready: Ready, order: MutexGuard<'_, ()>) -> Result<(), ChannelError> {
        let c = ready.counts;
        for (counter, n) in [
            (&self.stats.resyncs, c.resyncs),
            (&self.stats.state_transfers, c.state_transfers),
            (&self.stats.reconciled, c.reconciled),
            (&self.stats.replications, c.replications),
        ] {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        }
        let sent = if ready.options.is_async() {
            let sent = self.send_with(ready.outs, ready.options);
            drop(order);
            sent
        } else {
            drop(order);
            self.send_with(ready.outs, ready.options)
        };
        if ready.became_ready {
            self.ready_changed.notify_all();
        }
        if !ready.verdicts.is_empty() {
            self.verdicts.lock().extend(ready.verdicts);
            self.verdict_ready.notify_all();
        }
        // Listeners run with nothing held: one may make a request of its own.
        if !ready.events.is_empty() {
            for l in self.listeners.read().iter() {
                for e in &ready.events {
                    l.event(&self.context, e);
                }
            }
        }
        sent
    }

    fn send_with(&self, outs: Vec<POut>, options: SendOptions) -> Result<(), ChannelError> {
        if outs.is_empty() {
            return Ok(());
        }
        let Some(outbound) = self.outbound.upgrade() else {
            return Ok(());
        };
        let mut faulty = Vec::new();
        let mut other = None;
        for out in outs {
            self.stats.messages_sent.fetch_add(1, Ordering::Relaxed);
            let r = match out.dest {
                Dest::All => outbound.send_all(&self.context, &out.msg, options),
                Dest::Member(id) => outbound.send_to(id, &self.context, &out.msg, options),
            };
            match r {
                Ok(()) => {}
                Err(ChannelError::Faulty(f)) => faulty.extend(f),
                Err(e) => other = Some(e),
            }
        }
        match (other, faulty.is_empty()) {
            (Some(e), _) => Err(e),
            (None, false) => Err(ChannelError::Faulty(faulty)),
            (None, true) => Ok(()),
        }
    }

    /// A message from another member, on a receiver worker. `Err` is the core's verdict for a
    /// synchronized-ack sender (not applied here), or a send that failed. A joiner's ask for
    /// every session only starts its transfer: the donor's pump thread sends the chunks.
    pub(crate) fn receive(self: &Arc<Self>, from: MemberId, msg: Payload) -> Result<(), String> {
        self.stats.messages_received.fetch_add(1, Ordering::Relaxed);
        let ((verdict, chunk_to), sent) = self.input(|c| {
            let (ready, verdict) = c.receive_owned(from, msg, now_ms());
            ((verdict, ready.chunk_to), ready)
        });
        if let Some(to) = chunk_to {
            self.start_transfer(to);
        }
        sent.map_err(|e| e.to_string())?;
        verdict
    }

    /// Gives joiner `to` a turn of the pump thread, started if none runs. Without a thread
    /// (the system refuses one) the transfer is sent from this thread, as it once always was.
    fn start_transfer(self: &Arc<Self>, to: MemberId) {
        let weak = Arc::downgrade(self);
        let spawn = move || {
            std::thread::Builder::new()
                .name("tribecast-donor".into())
                .spawn(move || pump(&weak))
        };
        if let Err(e) = self.donations.start(to, spawn) {
            warn!(
                "Manager [{}]: no thread for the state transfer to [{to}] ({e}); sending it from \
                 the receiver thread",
                self.context
            );
            let mut sent = true;
            while let Some(ok) = self.send_next_chunk(to, sent) {
                sent = ok;
            }
        }
    }

    /// Makes and sends the next chunk of the transfer to `to` (`sent`: whether the previous one
    /// left). `Some(left)` when more chunks follow: whether this one left (with an
    /// acknowledgement, so the joiner has read it). The core's lock is taken for the chunk
    /// only, so requests and replication go on between chunks.
    fn send_next_chunk(&self, to: MemberId, sent: bool) -> Option<bool> {
        let (more, r) = self.input(|c| {
            let ready = c.transfer_chunk_sent(to, sent);
            (ready.chunk_to.is_some(), ready)
        });
        more.then_some(r.is_ok())
    }

    /// The cluster stops: state transfers end after the chunk being sent. Returns the pump
    /// thread, to join once the channel is stopped.
    pub(crate) fn stop_transfers(&self) -> Option<std::thread::JoinHandle<()>> {
        self.donations.stop()
    }

    /// A member appeared: a manager that has not yet asked anyone for the sessions asks it.
    pub(crate) fn member_added(&self, m: &Member) {
        let ((), sent) = self.input(|c| ((), c.member_added(m, now_ms())));
        if let Err(e) = sent {
            warn!(
                "Manager [{}]: cannot ask [{m}] for sessions: {e}",
                self.context
            );
        }
    }

    /// The members changed: a backup manager fails over and re-places its sessions.
    pub(crate) fn members_changed(&self) {
        // Membership events come from more than one thread: the list is read under the core's
        // lock, so that whichever call comes last applies the newest list (a departure and a
        // quick rejoin must not end with the departure's list).
        let Some(outbound) = self.outbound.upgrade() else {
            return; // the cluster is gone
        };
        let ((), sent) = self.input(|c| ((), c.members_changed(&outbound.members(), now_ms())));
        if let Err(e) = sent {
            warn!(
                "Manager [{}]: re-placing sessions not told to every member: {e}",
                self.context
            );
        }
    }

    /// The cluster started (see [`ManagerCore::started`]).
    pub(crate) fn started(&self, local: MemberId, settle: Option<Duration>) {
        let ((), _) = self.input(|c| ((), c.started(local, settle, now_ms())));
    }

    /// How long until the core has something due (expiry, a deadline), if anything.
    pub(crate) fn next_due(&self) -> Option<Duration> {
        let due = self.core.lock().next_deadline()?;
        Some(Duration::from_millis(due.saturating_sub(now_ms())))
    }

    /// Time passed: expiry, fetch and state-transfer deadlines, as the core decides.
    pub(crate) fn tick(&self) {
        self.tick_at(now_ms());
    }

    fn tick_at(&self, now: u64) {
        let ((), sent) = self.input(|c| ((), c.tick(now)));
        if let Err(e) = sent {
            warn!(
                "Manager [{}]: expiry or a fetch's end not replicated to every member: {e}",
                self.context
            );
        }
    }

    /// On shutdown: with `everywhere` (`expire_sessions_on_shutdown`) ends every session on
    /// every member; without, drops this node's copies and leaves the sessions to the others.
    pub(crate) fn expire_all(&self, everywhere: bool) {
        let ((), _) = self.input(|c| ((), c.expire_all(everywhere)));
    }
}

/// The pump thread of a manager's state transfers: a chunk to each joiner in turn, until no
/// transfer is left (or the manager is gone).
fn pump(mgr: &Weak<ClusterManager>) {
    while let Some(mgr) = mgr.upgrade() {
        let Some((to, sent)) = mgr.donations.next() else {
            return;
        };
        if let Some(left) = mgr.send_next_chunk(to, sent) {
            mgr.donations.again(to, left);
        }
    }
}

/// One request's use of its session. Ends when `finish` is called or it is dropped.
pub struct SessionRequest {
    mgr: Arc<DeltaManager>,
    /// The session id the client's cookie named, as sent.
    sent: Option<String>,
    copy: Option<Session>,
    /// The request ended its session (`invalidate`).
    ended: bool,
    replicate: bool,
    done: bool,
}

impl SessionRequest {
    /// The session the client's cookie named, if it exists here.
    pub fn session(&mut self) -> Option<&mut Session> {
        self.copy.as_mut()
    }

    /// The request's session, created if there is none. Refused with
    /// [`ManagerError::TooManySessions`] when the node holds `max_active_sessions` already.
    pub fn session_or_create(&mut self) -> Result<&mut Session, ManagerError> {
        if self.copy.is_none() {
            let (made, _) = self.mgr.input(|c| match c.create(now_ms()) {
                Ok((mut copy, ready)) => {
                    copy.take_pending();
                    (Ok(copy), ready)
                }
                Err(e) => (Err(e), Ready::default()),
            });
            let mut copy = made.map_err(|e| match e {
                CreateError::Id(e) => ManagerError::Id(e),
                CreateError::TooMany(e) => {
                    self.mgr
                        .stats
                        .rejected_sessions
                        .fetch_add(1, Ordering::Relaxed);
                    ManagerError::TooManySessions(e)
                }
            })?;
            copy.limit_size(self.mgr.size_limit);
            self.copy = Some(copy);
        }
        self.copy
            .as_mut()
            .ok_or(ManagerError::Id(SessionIdError::BadRandomPart))
    }

    /// The id to give the client (`JSESSIONID`).
    pub fn session_id(&self) -> Option<&SessionId> {
        self.copy.as_ref().map(Session::id)
    }

    /// Ends the session everywhere, now. `session.invalidate()` on the request's session does
    /// the same when the request ends.
    pub fn invalidate(&mut self) -> Result<(), ChannelError> {
        let Some(copy) = self.copy.take() else {
            return Ok(());
        };
        self.ended = true;
        self.mgr.input(|c| c.invalidate(copy.id())).1
    }

    /// Gives the session a new id everywhere (after login: fixation protection); returns it.
    pub fn change_id(&mut self) -> Result<Option<SessionId>, ManagerError> {
        let Some(copy) = self.copy.as_mut() else {
            return Ok(None);
        };
        let (changed, sent) = self.mgr.input(|c| match c.change_id(copy.id()) {
            Ok(Some((new, ready))) => (Ok(Some(new)), ready),
            Ok(None) => (Ok(None), Ready::default()),
            Err(e) => (Err(e), Ready::default()),
        });
        let Some(new) = changed.map_err(ManagerError::Id)? else {
            return Ok(None);
        };
        copy.change_id(new.clone());
        sent.map_err(ManagerError::Send)?;
        Ok(Some(new))
    }

    /// The `Set-Cookie` header value the response needs, by the manager's cookie policy
    /// ([`ManagerConfig::cookie`]), or `None` when the client's cookie is right: the new id for
    /// a new session, a changed id (`change_id`) or a route rebound after failover; an expired
    /// cookie (`Max-Age=0`) for a session the request ended (`invalidate`, on the request or on
    /// its session). Call it after the handler's last change to the session and before
    /// `finish` (which consumes the request); what `finish` does cannot change it.
    pub fn set_cookie(&self) -> Option<String> {
        let valid = self.copy.as_ref().filter(|c| c.is_valid());
        let ended = self.ended || (self.copy.is_some() && valid.is_none());
        let cookie = &self.mgr.cookie;
        match cookie_change(self.sent.as_deref(), valid.map(Session::id), ended) {
            CookieChange::Keep => None,
            CookieChange::Set(id) => Some(cookie.set_cookie(&self.mgr.context, &id)),
            CookieChange::Expire => Some(cookie.expire_cookie(&self.mgr.context)),
        }
    }

    /// Ends the request: its changes go into the session and out to the members. A session
    /// the request invalidated (`session.invalidate()`) ends on every member.
    pub fn finish(mut self) -> Result<(), ChannelError> {
        self.end()
    }

    fn end(&mut self) -> Result<(), ChannelError> {
        if std::mem::replace(&mut self.done, true) {
            return Ok(());
        }
        let Some(copy) = self.copy.take() else {
            return Ok(());
        };
        let replicate = self.replicate;
        let (ended, sent) = self.mgr.input(|c| c.end_request(copy, replicate, now_ms()));
        if let Err(ServedElsewhere { id, by }) = ended {
            // Another member took the session over while this request ran: its change is not
            // kept, so the request must not succeed.
            let why = format!("session {id} not applied: this member serves it now");
            return Err(ChannelError::Faulty(vec![FaultyMember {
                id: by,
                member: None,
                reason: SendFailure::Remote(why),
            }]));
        }
        sent
    }
}

/// The former name of [`SessionRequest`].
#[deprecated(note = "renamed SessionRequest (it clashed with every server's Request)")]
pub type Request = SessionRequest;

impl Drop for SessionRequest {
    fn drop(&mut self) {
        if let Err(e) = self.end() {
            warn!(
                "Manager [{}]: request's session changes not replicated to every member: {e}",
                self.mgr.context
            );
        }
    }
}
