//! The session manager of one application (Tomcat's `ClusterManager`: a `DeltaManager` or a
//! `BackupManager`, chosen by `ManagerConfig::kind`, with the `ReplicationValve`'s request hook):
//! the request API a synchronous server calls, over a pure core ([`DeltaCore`] or
//! [`BackupCore`](super::backup::BackupCore)).
//!
//! A request takes a working copy of its session; the application reads and changes it freely;
//! when the request ends (`finish`, or drop) the copy's changes go into the stored session and,
//! unless the valve filter matched the URI, out as one message: to every member (delta), or to
//! the session's backups (backup). A backup manager asked for a session it does not serve fetches
//! it from the member that has it and serves it from then on. With the
//! cluster's send options 8 (asynchronous) `finish` never waits; with 6 (synchronized ack) it
//! returns once every member applied the change, or an error naming those that did not.

use super::backup::{BackupConfig, BackupCore};
use super::delta::{DeltaConfig, DeltaCore, Dest, SessionEvent};
use super::engine::{Core, POut, Payload};
use super::id::{SessionId, SessionIdError};
use super::model::Session;
use super::replica::SessionMessage;
use crate::cluster::ClusterInner;
use crate::cluster::ManagerKind;
use crate::error::ChannelError;
use crate::member::{Member, MemberId};
use crate::options::SendOptions;
use log::{error, info, warn};
use parking_lot::{Condvar, Mutex, RwLock};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Hears sessions come and go and their attributes change (Tomcat's `HttpSessionListener` and
/// `HttpSessionAttributeListener`). Called for local changes and, with
/// `notify_listeners_on_replication`, for changes made on other members.
pub trait SessionListener: Send + Sync + 'static {
    fn event(&self, context: &str, event: &SessionEvent);
}

impl<F: Fn(&str, &SessionEvent) + Send + Sync + 'static> SessionListener for F {
    fn event(&self, context: &str, event: &SessionEvent) {
        self(context, event)
    }
}

/// Why a request could not get its session.
#[derive(Debug)]
pub enum ManagerError {
    Id(SessionIdError),
    /// The session was replicated but could not be sent.
    Send(ChannelError),
}

impl std::fmt::Display for ManagerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ManagerError::Id(e) => e.fmt(f),
            ManagerError::Send(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ManagerError {}

/// Counters of a manager.
#[derive(Default, Debug)]
pub struct ManagerStats {
    pub messages_sent: AtomicU64,
    pub messages_received: AtomicU64,
    pub resyncs: AtomicU64,
    pub state_transfers: AtomicU64,
    /// Session copies received for reconciliation.
    pub reconciled: AtomicU64,
    /// Requests whose session changes were sent.
    pub replications: AtomicU64,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

struct Transfer {
    /// No state transfer asked for yet: the first member seen is asked.
    pending: bool,
    /// When to stop waiting: for a first member to appear (`None`), or for its sessions.
    deadline: Option<(Instant, Option<Member>)>,
}

/// The sessions of one distributable application, replicated by a DeltaManager or a
/// BackupManager (Tomcat's `ClusterManager`).
pub struct ClusterManager {
    context: String,
    core: Mutex<Core>,
    /// Signalled when the core may have changed state a waiter cares about: ready, or a
    /// fetched session arrived.
    ready_changed: Condvar,
    /// Held by a receiver or membership thread from before it changes the core until what the
    /// change makes it send is queued; a request that waited for such a change passes through it
    /// before going on, so its own messages (a hand-over's copies, then its Drop) never overtake
    /// the change's (the take-over's NewPrimary) on the asynchronous lane. (With a full
    /// dispatch queue and the Block policy, the holder waits up to `sender.timeout` and the
    /// manager's other receiver threads with it.)
    send_order: Mutex<()>,
    rpc_timeout: Duration,
    cluster: Weak<ClusterInner>,
    options: SendOptions,
    notify_on_replication: bool,
    state_transfer_timeout: Duration,
    listeners: RwLock<Vec<Arc<dyn SessionListener>>>,
    transfer: Mutex<Transfer>,
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
        cfg: &crate::cluster::ManagerConfig,
        options: SendOptions,
        cluster: Weak<ClusterInner>,
    ) -> ClusterManager {
        let core = match cfg.kind {
            ManagerKind::Delta => {
                let dcfg = DeltaConfig {
                    max_inactive: cfg.max_inactive,
                    send_all_sessions_size: cfg.send_all_sessions_size,
                    ..DeltaConfig::default()
                };
                Core::Delta(DeltaCore::new(dcfg, route))
            }
            ManagerKind::Backup => {
                let bcfg = BackupConfig {
                    backups: cfg.backups,
                    max_inactive: cfg.max_inactive,
                    ..BackupConfig::default()
                };
                // The local member id is known once the channel has started (`started`).
                Core::Backup(BackupCore::new(bcfg, MemberId([0; 16]), route))
            }
        };
        ClusterManager {
            context: context.to_string(),
            core: Mutex::new(core),
            ready_changed: Condvar::new(),
            send_order: Mutex::new(()),
            rpc_timeout: cfg.rpc_timeout,
            cluster,
            options,
            notify_on_replication: cfg.notify_listeners_on_replication,
            state_transfer_timeout: cfg.state_transfer_timeout,
            listeners: RwLock::new(Vec::new()),
            transfer: Mutex::new(Transfer {
                pending: true,
                deadline: None,
            }),
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
        self.core.lock().set_merger(Some(merger));
    }

    pub fn add_listener(&self, l: Arc<dyn SessionListener>) {
        self.listeners.write().push(l);
    }

    /// A snapshot of the manager's figures.
    pub fn stats(&self) -> crate::metrics::ManagerSnapshot {
        let (sessions, primaries) = {
            let core = self.core.lock();
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
        }
    }

    /// Live sessions held here (own and replicated).
    pub fn session_count(&self) -> usize {
        self.core.lock().len()
    }

    /// A copy of a session, for reading outside a request.
    pub fn find(&self, id: &str) -> Option<Session> {
        let id = SessionId::parse(id).ok()?;
        self.core.lock().session(&id).cloned()
    }

    /// Ends a session everywhere, outside a request (an administrator's logout, say).
    pub fn invalidate(&self, id: &str) -> Result<bool, ChannelError> {
        let Ok(id) = SessionId::parse(id) else {
            return Ok(false);
        };
        let (outs, events) = self.core.lock().invalidate(&id);
        let existed = !events.is_empty();
        self.notify(&events, true);
        self.send(outs)?;
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

    /// Starts a request. `cookie` is the session id the client sent (`JSESSIONID`), if any;
    /// `uri` is checked against the valve filter.
    pub fn request(self: &Arc<Self>, cookie: Option<&str>, uri: &str) -> Request {
        let replicate = self.cluster.upgrade().is_none_or(|c| !c.filtered(uri));
        let mut copy = None;
        if let Some(id) = cookie.and_then(|c| SessionId::parse(c).ok()) {
            copy = self.acquire(&id);
        }
        // The copy starts with no changes of its own: what the stored session still has pending
        // (a filtered request's) stays there and is not applied twice.
        if let Some(c) = copy.as_mut() {
            c.take_pending();
        }
        Request {
            mgr: self.clone(),
            copy,
            replicate,
            done: false,
        }
    }

    /// The stored session for a request. A backup manager makes itself the session's primary
    /// first: it fetches the session from its primary (or, if the primary is gone, the best copy
    /// any member has), waiting up to `rpc_timeout`.
    fn acquire(&self, id: &SessionId) -> Option<Session> {
        // Two rounds: a node that took over a copy it backed up may lose to a claim made at the
        // same time elsewhere (and drop the copy); then it fetches from the winner.
        for _ in 0..2 {
            let (outs, wait) = self.core.lock().acquire(id);
            if let Err(e) = self.send_background(outs) {
                warn!(
                    "Manager [{}]: taking over session {id} not told to every member: {e}",
                    self.context
                );
            }
            let mut core = self.core.lock();
            let mut late = Vec::new();
            if wait {
                let deadline = Instant::now() + self.rpc_timeout;
                while core.served(id).is_none() && core.is_fetching(id) {
                    if self
                        .ready_changed
                        .wait_until(&mut core, deadline)
                        .timed_out()
                    {
                        warn!(
                            "Manager [{}]: session {id} not fetched within {} ms; serving the best copy answered or held here, if any",
                            self.context,
                            self.rpc_timeout.as_millis()
                        );
                        late = core.end_fetch(id);
                        break;
                    }
                }
            }
            let served = core.served(id).cloned();
            drop(core);
            // What the thread that answered the fetch sent because of it is queued before this
            // request sends anything (see `send_order`).
            drop(self.send_order.lock());
            if let Err(e) = self.send_background(late) {
                warn!(
                    "Manager [{}]: taking over session {id} not told to every member: {e}",
                    self.context
                );
            }
            if let Some(s) = served {
                return Some(s);
            }
            if wait {
                info!(
                    "Manager [{}]: session {id} not found on any member; the request has none",
                    self.context
                );
                return None;
            }
        }
        if let Some(why) = self.core.lock().not_fetched(id) {
            info!(
                "Manager [{}]: session {id} not fetched: {why}; the request has none",
                self.context
            );
        }
        None
    }

    fn notify(&self, events: &[SessionEvent], local: bool) {
        if events.is_empty() || (!local && !self.notify_on_replication) {
            return;
        }
        for l in self.listeners.read().iter() {
            for e in events {
                l.event(&self.context, e);
            }
        }
    }

    /// Sends what the core decided for a request, with the manager's send options (the caller
    /// waits as they say).
    fn send(&self, outs: Vec<POut>) -> Result<(), ChannelError> {
        self.send_with(outs, self.options)
    }

    /// Sends from a receiver worker or a background thread: asynchronously, as such a thread
    /// must not wait on another member.
    fn send_background(&self, outs: Vec<POut>) -> Result<(), ChannelError> {
        self.send_with(outs, SendOptions::ASYNCHRONOUS)
    }

    fn send_with(&self, outs: Vec<POut>, options: SendOptions) -> Result<(), ChannelError> {
        let Some(cluster) = self.cluster.upgrade() else {
            return Ok(());
        };
        let mut faulty = Vec::new();
        let mut other = None;
        for out in outs {
            self.stats.messages_sent.fetch_add(1, Ordering::Relaxed);
            let r = match out.dest {
                Dest::All => cluster.send_all(&self.context, &out.msg, options),
                Dest::Member(id) => cluster.send_to(id, &self.context, &out.msg, options),
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

    /// A message from another member, on a receiver worker.
    pub(crate) fn receive(&self, from: MemberId, msg: &Payload) -> Result<(), String> {
        self.stats.messages_received.fetch_add(1, Ordering::Relaxed);
        let order = self.send_order.lock();
        let (outs, events, ready, superseded) = {
            let mut core = self.core.lock();
            let was_ready = core.is_ready();
            let (outs, events) = core.handle(from, msg)?;
            let ready = !was_ready && core.is_ready();
            (outs, events, ready, core.superseded(from, msg))
        };
        let resync = Core::asks_for_session(&outs);
        if resync.is_some() {
            self.stats.resyncs.fetch_add(1, Ordering::Relaxed);
        }
        match msg {
            Payload::Delta(SessionMessage::GetAllSessions) => {
                self.stats.state_transfers.fetch_add(1, Ordering::Relaxed);
            }
            Payload::Delta(SessionMessage::Merge(states)) => {
                let n = states.len() as u64;
                self.stats.reconciled.fetch_add(n, Ordering::Relaxed);
                info!(
                    "Manager [{}]: reconciled {n} session(s) with member {from}",
                    self.context
                );
            }
            _ => {}
        }
        if ready {
            self.transfer.lock().deadline = None;
            info!(
                "Manager [{}]: session state transfer complete, {} session(s)",
                self.context,
                self.session_count()
            );
            self.ready_changed.notify_all();
        }
        let sent = self.send_background(outs);
        drop(order);
        // A fetch may have been answered (its request passes `send_order` before going on).
        self.ready_changed.notify_all();
        // Listeners run without `send_order` held: one may make a request of its own.
        self.notify(&events, false);
        sent.map_err(|e| e.to_string())?;
        match (resync, superseded) {
            // Not applied (yet): a synchronized-ack sender must not count this member as done.
            (Some(id), _) => Err(format!(
                "session {id} not applied here: an earlier change is missing; asked for the session"
            )),
            // Ignored: the sender no longer serves the session; its request must not succeed.
            (None, Some(id)) => Err(format!(
                "session {id} not applied here: another member serves it now"
            )),
            (None, None) => Ok(()),
        }
    }

    /// A member appeared: a manager that has not yet asked anyone for the sessions asks it.
    pub(crate) fn member_added(&self, m: &Member) {
        if matches!(*self.core.lock(), Core::Backup(_)) {
            return; // joins take their share by re-placement (members_changed)
        }
        let mut t = self.transfer.lock();
        if !t.pending {
            return;
        }
        t.pending = false;
        t.deadline = Some((
            Instant::now() + self.state_transfer_timeout,
            Some(m.clone()),
        ));
        drop(t);
        let outs = self.core.lock().begin_state_transfer(m.id);
        if outs.is_empty() {
            return;
        }
        info!("Manager [{}]: asking [{m}] for all sessions", self.context);
        if let Err(e) = self.send_background(outs) {
            warn!(
                "Manager [{}]: cannot ask [{m}] for sessions: {e}",
                self.context
            );
        }
    }

    /// The members changed: a backup manager fails over and re-places its sessions.
    pub(crate) fn members_changed(&self, members: Vec<MemberId>) {
        // Membership events come from more than one thread: read the list under the core's
        // lock, so that whichever call comes last applies the newest list (a departure and a
        // quick rejoin must not end with the departure's list).
        let order = self.send_order.lock();
        let mut core = self.core.lock();
        let members = self.cluster.upgrade().map_or(members, |c| c.member_ids());
        let outs = core.set_members(members, now_ms());
        drop(core);
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
        if let Err(e) = self.send_background(outs) {
            warn!(
                "Manager [{}]: re-placing sessions not told to every member: {e}",
                self.context
            );
        }
        drop(order);
        // A fetch waiting only for members that left has ended.
        self.ready_changed.notify_all();
    }

    /// The cluster started. With members to expect (static or multicast membership), the
    /// manager is not ready until the first one is asked for its sessions, or `settle` passes
    /// without any: then it starts empty, as the first node of a cluster does.
    pub(crate) fn started(&self, local: MemberId, settle: Option<Duration>) {
        if let Core::Backup(c) = &mut *self.core.lock() {
            c.set_local(local);
        }
        if let Some(settle) = settle.filter(|_| matches!(*self.core.lock(), Core::Delta(_))) {
            let mut t = self.transfer.lock();
            if t.pending {
                t.deadline = Some((Instant::now() + settle, None));
                drop(t);
                self.core.lock().expect_members();
            }
        }
        self.ready_changed.notify_all();
    }

    /// The reaper's periodic work: expire idle sessions, give up on a late state transfer.
    pub(crate) fn background(&self, now: Instant) {
        let (outs, events) = self.core.lock().expire(now_ms());
        if !events.is_empty() {
            info!(
                "Manager [{}]: {} session(s) expired",
                self.context,
                events.len()
            );
        }
        self.notify(&events, true);
        if let Err(e) = self.send_background(outs) {
            warn!(
                "Manager [{}]: expiry not replicated to every member: {e}",
                self.context
            );
        }
        self.check_transfer_deadline(now);
    }

    fn check_transfer_deadline(&self, now: Instant) {
        let late = {
            let mut t = self.transfer.lock();
            match &t.deadline {
                Some((d, m)) if now >= *d => {
                    let m = m.clone();
                    t.deadline = None;
                    Some(m)
                }
                _ => None,
            }
        };
        match late {
            Some(Some(m)) => error!(
                "Manager [{}]: no session state received from [{m}] within {} ms; starting with what arrived",
                self.context,
                self.state_transfer_timeout.as_millis()
            ),
            Some(None) => info!("Manager [{}]: no other member found; starting with no sessions", self.context),
            None => return,
        }
        self.transfer.lock().pending = false;
        let (outs, events) = self.core.lock().end_state_transfer();
        self.ready_changed.notify_all();
        self.notify(&events, false);
        if let Err(e) = self.send_background(outs) {
            warn!(
                "Manager [{}]: reconciliation after the state transfer not sent to every member: {e}",
                self.context
            );
        }
    }

    /// Only the state-transfer deadline (between expiry runs).
    pub(crate) fn background_transfer_only(&self, now: Instant) {
        self.check_transfer_deadline(now);
    }

    /// On shutdown with `expire_sessions_on_shutdown`: ends every session everywhere.
    pub(crate) fn expire_all(&self, everywhere: bool) {
        let ids: Vec<SessionId> = self.core.lock().ids();
        for id in ids {
            let (outs, events) = self.core.lock().invalidate(&id);
            self.notify(&events, true);
            if everywhere {
                let _ = self.send(outs);
            }
        }
    }
}

/// One request's use of its session. Ends when `finish` is called or it is dropped.
pub struct Request {
    mgr: Arc<DeltaManager>,
    copy: Option<Session>,
    replicate: bool,
    done: bool,
}

impl Request {
    /// The session the client's cookie named, if it exists here.
    pub fn session(&mut self) -> Option<&mut Session> {
        self.copy.as_mut()
    }

    /// The request's session, created if there is none.
    pub fn session_or_create(&mut self) -> Result<&mut Session, ManagerError> {
        if self.copy.is_none() {
            let copy = {
                let mut core = self.mgr.core.lock();
                let id = core.create(now_ms()).map_err(ManagerError::Id)?;
                core.session(&id).cloned().map(|mut c| {
                    c.take_pending();
                    c
                })
            };
            if let Some(c) = &copy {
                self.mgr
                    .notify(&[SessionEvent::Created(c.id().clone())], true);
            }
            self.copy = copy;
        }
        self.copy
            .as_mut()
            .ok_or(ManagerError::Id(SessionIdError::BadRandomPart))
    }

    /// The id to give the client (`JSESSIONID`).
    pub fn session_id(&self) -> Option<&SessionId> {
        self.copy.as_ref().map(Session::id)
    }

    /// Ends the session everywhere.
    pub fn invalidate(&mut self) -> Result<(), ChannelError> {
        let Some(copy) = self.copy.take() else {
            return Ok(());
        };
        let (outs, events) = self.mgr.core.lock().invalidate(copy.id());
        self.mgr.notify(&events, true);
        self.mgr.send(outs)
    }

    /// Gives the session a new id everywhere (after login: fixation protection); returns it.
    pub fn change_id(&mut self) -> Result<Option<SessionId>, ManagerError> {
        let Some(copy) = self.copy.as_mut() else {
            return Ok(None);
        };
        let changed = self
            .mgr
            .core
            .lock()
            .change_id(copy.id())
            .map_err(ManagerError::Id)?;
        let Some((new, outs, events)) = changed else {
            return Ok(None);
        };
        copy.change_id(new.clone());
        self.mgr.notify(&events, true);
        self.mgr.send(outs).map_err(ManagerError::Send)?;
        Ok(Some(new))
    }

    /// Ends the request: its changes go into the session and out to the members.
    pub fn finish(mut self) -> Result<(), ChannelError> {
        self.end()
    }

    fn end(&mut self) -> Result<(), ChannelError> {
        if std::mem::replace(&mut self.done, true) {
            return Ok(());
        }
        let Some(mut copy) = self.copy.take() else {
            return Ok(());
        };
        let ops = copy.take_pending();
        let now = now_ms();
        let (outs, local_events) = {
            let mut core = self.mgr.core.lock();
            if let Some(m) = core.served_elsewhere(copy.id()) {
                // Another member took the session over while this request ran: its change is
                // not kept, so the request must not succeed.
                let why = format!("session {} not applied: it serves it now", copy.id());
                return Err(ChannelError::Faulty(vec![crate::error::FaultyMember {
                    id: m,
                    member: None,
                    reason: crate::error::SendFailure::Remote(why),
                }]));
            }
            let Some(stored) = core.session_mut(copy.id()) else {
                return Ok(()); // invalidated or expired meanwhile
            };
            let events = super::delta::attribute_events(stored, &ops);
            stored.record_ops(ops);
            let outs = if self.replicate {
                core.end_request(copy.id(), now)
            } else {
                // A filtered URI (a static file): changes stay pending for the next request.
                stored.access(now);
                Vec::new()
            };
            (outs, events)
        };
        self.mgr.notify(&local_events, true);
        if !outs.is_empty() {
            self.mgr.stats.replications.fetch_add(1, Ordering::Relaxed);
        }
        self.mgr.send(outs)
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        if let Err(e) = self.end() {
            warn!(
                "Manager [{}]: request's session changes not replicated to every member: {e}",
                self.mgr.context
            );
        }
    }
}
