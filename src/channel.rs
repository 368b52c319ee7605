//! The channel (Tribes' `GroupChannel` + `ChannelCoordinator`): the interceptor stack on top of
//! the receiver, the sender and the member list.

use crate::config::ChannelConfig;
use crate::error::{ChannelError, FaultyMember, SendFailure};
use crate::interceptor::{
    ChannelInterceptor, ChannelMessage, MessageDispatchInterceptor, Next, OutMessage, PeerEvent,
    StackEnds, StackHandle, Up,
};
use crate::member::{Member, MemberId};
use crate::membership::incarnation::Incarnations;
use crate::membership::service::{self, Event, MembershipService, Sink};
use crate::membership::state::Source;
use crate::membership::{Change, Membership};
use crate::metrics::{ChannelStats, MemberCounters, MemberRegistry};
use crate::options::SendOptions;
use crate::transport::lane::{Identity, PeerSeen};
use crate::transport::receiver::{self, NioReceiver, ReceiverHandler, ReceiverStats};
use crate::transport::sender::{PooledParallelSender, SenderStats};
use crate::wire::{compress, DataBody, Envelope};
use crossbeam_channel::{RecvTimeoutError, Sender};
use log::{info, warn};
use parking_lot::{Mutex, RwLock};
use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

/// Receives the messages that reach the top of the stack (Tribes' `ChannelListener`).
pub trait ChannelListener: Send + Sync + 'static {
    /// Whether this listener wants the message; every accepting listener gets it.
    fn accept(&self, _msg: &ChannelMessage<'_>) -> bool {
        true
    }
    /// `Err` fails a synchronized-ack send for this member, with the text as reason.
    fn message_received(&self, msg: &ChannelMessage<'_>) -> Result<(), String>;
}

impl<F> ChannelListener for F
where
    F: Fn(&ChannelMessage<'_>) -> Result<(), String> + Send + Sync + 'static,
{
    fn message_received(&self, msg: &ChannelMessage<'_>) -> Result<(), String> {
        self(msg)
    }
}

/// Hears members come and go (Tribes' `MembershipListener`). Called on the channel's threads:
/// return quickly.
pub trait MembershipListener: Send + Sync + 'static {
    /// A member joined (or came back).
    fn member_added(&self, member: &Member);
    /// A member left, crashed or was dropped by the failure detector.
    fn member_disappeared(&self, member: &Member);
}

/// Largest envelope overhead around a payload (id, varints), for the size check before queueing.
const ENVELOPE_OVERHEAD: usize = 48;

/// Parts that exist while the channel runs.
struct Runtime {
    local: Member,
    sender: PooledParallelSender,
}

struct ChannelInner {
    config: ChannelConfig,
    interceptors: Vec<Arc<dyn ChannelInterceptor>>,
    listeners: RwLock<Vec<Arc<dyn ChannelListener>>>,
    membership_listeners: RwLock<Vec<Arc<dyn MembershipListener>>>,
    membership: Mutex<Membership>,
    runtime: RwLock<Option<Arc<Runtime>>>,
    /// Where transport news about members goes while running (the membership service).
    membership_events: RwLock<Option<crossbeam_channel::Sender<Event>>>,
    next_msg_id: AtomicU64,
    /// The incarnation each member last shook hands with (restart detection).
    incarnations: Mutex<Incarnations>,
    /// Per-member counters; kept across restarts of the channel.
    member_counters: Arc<MemberRegistry>,
    /// Connections each member has open to us, from handshake to their last frame handled: a
    /// multicast leave waits for them (see `Sink::connected`).
    connected: Mutex<HashMap<MemberId, u32>>,
}

fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

impl ChannelInner {
    fn runtime(&self) -> Option<Arc<Runtime>> {
        self.runtime.read().clone()
    }

    fn up(&self) -> Up<'_> {
        Up::bottom(self)
    }

    fn peer_event(&self, ev: PeerEvent) {
        for i in &self.interceptors {
            i.peer_event(&ev);
        }
        let Some(events) = self.membership_events.read().clone() else {
            return;
        };
        let ev = match ev {
            PeerEvent::Hello(m) => Event::Heard(m, Source::Direct),
            PeerEvent::Left(m) => Event::Left(m.id),
            // A listener's refusal says the member is alive; the rest casts doubt on it.
            PeerEvent::SendFailed(_, SendFailure::Remote(_)) => return,
            PeerEvent::SendFailed(m, why) => Event::SendFailed(m.id, why.to_string()),
        };
        service::notify(&events, ev, None);
    }

    fn async_failures(&self, failures: Vec<crate::transport::sender::AsyncFailure>) {
        for f in failures {
            // A stall (nothing lost yet) is logged by the lane itself.
            if f.messages > 0 {
                warn!(
                    "Asynchronous send of {} message(s) failed for {}",
                    f.messages, f.faulty
                );
            }
            self.report_send_failure(&f.faulty);
        }
    }

    fn report_send_failure(&self, f: &FaultyMember) {
        if let Some(m) = &f.member {
            self.peer_event(PeerEvent::SendFailed(m.clone(), f.reason.clone()));
        }
    }

    pub(crate) fn member_seen(&self, m: &Member) {
        if self.runtime().is_some_and(|rt| rt.local.id == m.id) {
            return;
        }
        let change = self.membership.lock().seen(m);
        match change {
            Change::Added(m) => {
                info!("Added member [{m}]");
                self.up().member_added(&m);
            }
            Change::Updated(m) => info!("Member updated [{m}]"),
            Change::Unchanged => {}
        }
    }

    pub(crate) fn member_gone(&self, m: &Member, why: &str) {
        let removed = self.membership.lock().remove(&m.id);
        if let Some(m) = removed {
            info!("Member disappeared [{m}]: {why}");
            // Its next incarnation is a new member anyway: a restart noticed as a disappearance
            // first must not be reported gone and back again at its first handshake.
            self.incarnations.lock().forget(&m.id);
            if let Some(rt) = self.runtime() {
                rt.sender.forget(&m.id);
            }
            self.up().member_disappeared(&m);
        }
    }

    /// Remembers the incarnation a member shook hands with, either way round (its handshake to
    /// us, or its answer to ours). A changed non-zero one means it restarted under the same id
    /// and lost what it held: it is reported gone (and back with its hello). Returns whether it
    /// was such a restart.
    fn note_incarnation(&self, member: &Member, incarnation: u64) -> bool {
        let restarted = self.incarnations.lock().note(member.id, incarnation);
        if restarted {
            // A member killed and restarted faster than the failure detector notices comes
            // back empty: report it gone and back, so session managers copy to it again.
            info!("Member [{member}] restarted (a new incarnation): it left and joins again");
            if let Some(events) = self.membership_events.read().clone() {
                service::notify(&events, Event::Restarted(member.id), None);
            }
        }
        restarted
    }

    /// One of our lanes shook hands with a member (`Identity::peer_seen`). A restart it reveals
    /// is reported gone and back at once, without waiting for the member to connect to us.
    fn peer_seen(&self, member: &Member, incarnation: u64) {
        if self.note_incarnation(member, incarnation) {
            self.peer_event(PeerEvent::Hello(member.clone()));
        }
    }
}

impl StackEnds for ChannelInner {
    fn interceptors(&self) -> &[Arc<dyn ChannelInterceptor>] {
        &self.interceptors
    }

    /// Bottom of the send path: encode the envelope and hand it to the sender.
    fn transport_send(&self, dests: &Arc<[Member]>, msg: OutMessage) -> Result<(), ChannelError> {
        let rt = self.runtime().ok_or(ChannelError::NotRunning)?;
        if dests.is_empty() {
            return Ok(());
        }
        // The limit is on the message as the application made it: a receiver never holds more
        // than `max_frame_size` of it, compressed or not.
        let options = msg.options.0 & !SendOptions::COMPRESSED;
        let max = self.config.max_frame_size as usize;
        let plain = DataBody::new(rt.local.id, msg.msg_id, options, &msg.payload);
        if plain.len() > max {
            return Err(ChannelError::TooLarge {
                len: plain.len(),
                max,
            });
        }
        let packed = self
            .config
            .compression_min_size
            .and_then(|min| compress::compress(&msg.payload, min));
        let body = match &packed {
            Some(p) => DataBody::new(
                rt.local.id,
                msg.msg_id,
                options | SendOptions::COMPRESSED,
                p,
            ),
            None => plain,
        };
        if msg.options.is_async() {
            let mut failures = rt.sender.queue_async(dests, &body, msg.options);
            if !msg.batched {
                failures.extend(rt.sender.flush_async().0);
            }
            self.async_failures(failures);
            return Ok(());
        }
        rt.sender.send(dests, &body, msg.options).map_err(|faulty| {
            for f in &faulty {
                self.report_send_failure(f);
            }
            ChannelError::Faulty(faulty)
        })
    }

    /// True if frames are still waiting for a member that does not read.
    fn transport_flush(&self) -> bool {
        let Some(rt) = self.runtime() else {
            return false;
        };
        let (failures, pending) = rt.sender.flush_async();
        self.async_failures(failures);
        pending
    }

    fn deliver_to_listeners(&self, msg: &ChannelMessage<'_>) -> Result<(), String> {
        let listeners = self.listeners.read();
        let mut result = Ok(());
        for l in listeners.iter().filter(|l| l.accept(msg)) {
            if let Err(e) = l.message_received(msg) {
                result = Err(e);
            }
        }
        result
    }

    fn notify_member_added(&self, m: &Member) {
        for l in self.membership_listeners.read().iter() {
            l.member_added(m);
        }
    }

    fn notify_member_disappeared(&self, m: &Member) {
        for l in self.membership_listeners.read().iter() {
            l.member_disappeared(m);
        }
    }

    fn members(&self) -> Arc<[Member]> {
        self.membership.lock().snapshot()
    }
}

impl ReceiverHandler for ChannelInner {
    fn message_received(&self, from: &Member, env: Envelope<'_>) -> Result<(), String> {
        let payload = if env.options & SendOptions::COMPRESSED == 0 {
            Cow::Borrowed(env.payload)
        } else {
            let max = self.config.max_frame_size as usize;
            let bytes = compress::decompress(env.payload, max).map_err(|e| {
                warn!("Message {} from {from} refused: {e}", env.msg_id);
                e.to_string()
            })?;
            Cow::Owned(bytes)
        };
        let msg = ChannelMessage {
            from,
            msg_id: env.msg_id,
            options: SendOptions(env.options & !SendOptions::COMPRESSED),
            payload,
        };
        self.up().message_received(&msg)
    }

    fn peer_hello(&self, member: &Member, incarnation: u64) {
        self.note_incarnation(member, incarnation);
        self.peer_event(PeerEvent::Hello(member.clone()));
    }

    fn peer_left(&self, member: &Member) {
        self.peer_event(PeerEvent::Left(member.clone()));
    }

    fn member_counters(&self, member: &Member) -> Option<Arc<MemberCounters>> {
        Some(self.member_counters.counters(member))
    }

    fn peer_connection(&self, member: &Member, open: bool) {
        let mut connected = self.connected.lock();
        if open {
            *connected.entry(member.id).or_default() += 1;
        } else if let Some(n) = connected.get_mut(&member.id) {
            *n -= 1;
            if *n == 0 {
                connected.remove(&member.id);
            }
        }
    }
}

/// The channel as the membership service sees it; weak, so the service's threads do not keep
/// a dropped channel alive.
struct ChannelSink(std::sync::Weak<ChannelInner>);

impl Sink for ChannelSink {
    fn added(&self, m: &Member) {
        if let Some(i) = self.0.upgrade() {
            i.member_seen(m);
        }
    }
    fn gone(&self, m: &Member, why: &str) {
        if let Some(i) = self.0.upgrade() {
            i.member_gone(m, why);
        }
    }
    fn probe(
        &self,
        addr: std::net::SocketAddr,
        timeout: std::time::Duration,
    ) -> Result<Member, SendFailure> {
        let rt = self
            .0
            .upgrade()
            .and_then(|i| i.runtime())
            .ok_or(SendFailure::NotAMember)?;
        rt.sender.probe(addr, timeout)
    }
    fn ping(
        &self,
        m: &Member,
        read_test: bool,
        timeout: std::time::Duration,
    ) -> Result<(), SendFailure> {
        let rt = self
            .0
            .upgrade()
            .and_then(|i| i.runtime())
            .ok_or(SendFailure::NotAMember)?;
        rt.sender.ping(m, read_test, timeout)
    }
    fn connected(&self, id: &MemberId) -> bool {
        self.0
            .upgrade()
            .is_some_and(|i| i.connected.lock().contains_key(id))
    }
}

/// The threads of a running channel.
struct Running {
    receiver: NioReceiver,
    membership: MembershipService,
    heartbeat_stop: Sender<()>,
    heartbeat: JoinHandle<()>,
    receiver_stats: Arc<ReceiverStats>,
}

/// A group channel: start it, send to members, hear messages and membership changes, stop it.
pub struct GroupChannel {
    inner: Arc<ChannelInner>,
    running: Mutex<Option<Running>>,
}

/// Assembles a channel: interceptors in order, top first.
pub struct ChannelBuilder {
    config: ChannelConfig,
    interceptors: Vec<Arc<dyn ChannelInterceptor>>,
    defaults: bool,
}

impl ChannelBuilder {
    /// Adds an interceptor below those already added.
    pub fn interceptor(mut self, i: Arc<dyn ChannelInterceptor>) -> Self {
        self.interceptors.push(i);
        self
    }

    /// Do not add the default interceptors (see [`ChannelBuilder::build`]).
    pub fn without_defaults(mut self) -> Self {
        self.defaults = false;
        self
    }

    /// Validates the config and builds the channel. Unless told otherwise it adds, as Tomcat
    /// does, a `MessageDispatchInterceptor` on top when none was given. Membership (static
    /// members, multicast, failure detection, pings) is configured in `config.membership` and
    /// `config.static_members`.
    pub fn build(mut self) -> Result<GroupChannel, ChannelError> {
        self.config.validate()?;
        let has_dispatch = self
            .interceptors
            .iter()
            .any(|i| i.name() == "MessageDispatchInterceptor");
        if self.defaults && !has_dispatch {
            let mdi = MessageDispatchInterceptor::new(
                self.config.dispatch.clone(),
                self.config.sender.timeout,
            );
            self.interceptors.insert(0, Arc::new(mdi));
        }
        Ok(GroupChannel {
            inner: Arc::new(ChannelInner {
                config: self.config,
                interceptors: self.interceptors,
                listeners: RwLock::new(Vec::new()),
                membership_listeners: RwLock::new(Vec::new()),
                membership: Mutex::new(Membership::default()),
                runtime: RwLock::new(None),
                membership_events: RwLock::new(None),
                next_msg_id: AtomicU64::new(1),
                incarnations: Mutex::new(Incarnations::default()),
                member_counters: Arc::default(),
                connected: Mutex::default(),
            }),
            running: Mutex::new(None),
        })
    }
}

impl GroupChannel {
    /// A builder for a channel with its own interceptor stack (Tomcat's `<Channel>` element).
    pub fn builder(config: ChannelConfig) -> ChannelBuilder {
        ChannelBuilder {
            config,
            interceptors: Vec::new(),
            defaults: true,
        }
    }

    /// A channel with the default interceptors.
    pub fn new(config: ChannelConfig) -> Result<GroupChannel, ChannelError> {
        Self::builder(config).build()
    }

    /// The configuration this channel was made with.
    pub fn config(&self) -> &ChannelConfig {
        &self.inner.config
    }

    /// Adds a listener for the messages this channel receives (Tomcat's `ChannelListener`).
    pub fn add_channel_listener(&self, l: Arc<dyn ChannelListener>) {
        self.inner.listeners.write().push(l);
    }

    /// Adds a listener for members joining and leaving (Tomcat's `MembershipListener`).
    pub fn add_membership_listener(&self, l: Arc<dyn MembershipListener>) {
        self.inner.membership_listeners.write().push(l);
    }

    /// Binds the receiver, starts the sender, the interceptors and the heartbeat. Calling it on
    /// a running channel does nothing.
    pub fn start(&self) -> Result<(), ChannelError> {
        let mut running = self.running.lock();
        if running.is_some() {
            return Ok(());
        }
        let cfg = &self.inner.config;
        let listener = receiver::bind(&cfg.receiver)?;
        let addr = listener.local_addr().map_err(ChannelError::Io)?;
        let local = Member {
            id: cfg.unique_id.unwrap_or_else(MemberId::random),
            name: if cfg.local_name.is_empty() {
                addr.to_string()
            } else {
                cfg.local_name.clone()
            },
            addr,
            domain: cfg.domain.clone(),
        };
        let incarnation = random_u64();
        // Weak: the sender's identity must not keep the channel alive.
        let seen_by = Arc::downgrade(&self.inner);
        let peer_seen: PeerSeen = Arc::new(move |m: &Member, incarnation: u64| {
            if let Some(inner) = seen_by.upgrade() {
                inner.peer_seen(m, incarnation);
            }
        });
        let identity = Arc::new(Identity {
            cluster: cfg.cluster_name.clone(),
            local: local.clone(),
            incarnation,
            max_frame_size: cfg.max_frame_size,
            next_seq: AtomicU64::new(0),
            key: cfg.cluster_key.clone(),
            peer_seen: Some(peer_seen),
        });
        if cfg.cluster_key.is_some() {
            info!("Cluster key configured: TCP frames and membership datagrams are authenticated and encrypted (AES-256-GCM); members without the key are refused");
        } else {
            info!("No cluster key configured: cluster traffic is neither authenticated nor encrypted, and anyone who can reach this node can join the cluster (set ChannelConfig::cluster_key)");
        }
        let sender = PooledParallelSender::new(
            identity,
            cfg.sender.clone(),
            self.inner.member_counters.clone(),
        );
        *self.inner.runtime.write() = Some(Arc::new(Runtime {
            local: local.clone(),
            sender,
        }));
        let started = (|| {
            let receiver = NioReceiver::start(
                listener,
                local.clone(),
                incarnation,
                cfg,
                self.inner.clone(),
            )?;
            for (index, i) in self.inner.interceptors.iter().enumerate() {
                let ends = Arc::downgrade(&self.inner) as std::sync::Weak<dyn StackEnds>;
                i.start(StackHandle::new(ends, index))?;
            }
            let (heartbeat_stop, stop_rx) = crossbeam_channel::bounded::<()>(1);
            let inner = Arc::downgrade(&self.inner);
            let period = cfg.heartbeat_interval;
            let heartbeat = std::thread::Builder::new()
                .name("tribecast-heartbeat".into())
                .spawn(move || loop {
                    // First beat at once: static members are probed as soon as we start.
                    match inner.upgrade() {
                        Some(inner) => {
                            let now = Instant::now();
                            for i in &inner.interceptors {
                                i.heartbeat(now);
                            }
                        }
                        None => return,
                    }
                    match stop_rx.recv_timeout(period) {
                        Err(RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                })
                .map_err(ChannelError::Io)?;
            let receiver_stats = receiver.stats.clone();
            let sink = Arc::new(ChannelSink(Arc::downgrade(&self.inner)));
            let membership = MembershipService::start(cfg, local.clone(), sink)?;
            *self.inner.membership_events.write() = Some(membership.events());
            Ok(Running {
                receiver,
                membership,
                heartbeat_stop,
                heartbeat,
                receiver_stats,
            })
        })();
        match started {
            Ok(r) => {
                info!(
                    "Channel started: local member [{local}], cluster '{}'",
                    cfg.cluster_name
                );
                *running = Some(r);
                Ok(())
            }
            Err(e) => {
                for i in &self.inner.interceptors {
                    i.stop();
                }
                *self.inner.runtime.write() = None;
                Err(e)
            }
        }
    }

    /// Sends queued messages, tells the members we leave, and joins every thread. Safe to call
    /// twice; the channel can be started again.
    pub fn stop(&self) {
        let Some(mut r) = self.running.lock().take() else {
            return;
        };
        // Membership first: no more events, heartbeats or probes.
        self.inner.membership_events.write().take();
        r.membership.stop_threads();
        let _ = r.heartbeat_stop.send(());
        if r.heartbeat.join().is_err() {
            warn!("Heartbeat thread panicked");
        }
        for i in &self.inner.interceptors {
            i.stop();
        }
        let members = self.inner.members();
        if let Some(rt) = self.inner.runtime() {
            // Until the members handled our last messages, the receiver runs (their failure
            // detectors find us) and no leave is said: a BackupManager member that took over
            // first refused those messages as stale (the clean-stop tests).
            rt.sender.flush_to(&members);
            rt.sender.leave(&members);
        }
        // The multicast leave after each lane's goodbye (heard first, it lost 300 of 300
        // sessions' last change in `multicast.rs`'s clean-stop test).
        r.membership.stop();
        let mut receiver = r.receiver;
        receiver.stop();
        *self.inner.runtime.write() = None;
        let gone: Vec<Member> = members.to_vec();
        for m in &gone {
            self.inner.membership.lock().remove(&m.id);
        }
        info!("Channel stopped");
    }

    /// Whether the channel has started and not stopped.
    pub fn is_running(&self) -> bool {
        self.running.lock().is_some()
    }

    /// This node as the others see it, while running.
    pub fn local_member(&self) -> Option<Member> {
        self.inner.runtime().map(|rt| rt.local.clone())
    }

    /// Current members (other than this node).
    pub fn members(&self) -> Vec<Member> {
        self.inner.members().to_vec()
    }

    /// Sends `payload` to `dests` with `options` (Tribes' `Channel.send`). With asynchronous
    /// options it returns once queued; with use-ack once every destination read it; with
    /// synchronized ack once every destination's listeners processed it. A failure names each
    /// member that did not get it.
    pub fn send(
        &self,
        dests: &[Member],
        payload: Vec<u8>,
        options: SendOptions,
    ) -> Result<(), ChannelError> {
        self.send_to(&Arc::from(dests), payload, options)
    }

    /// Sends to every current member.
    pub fn send_to_all(&self, payload: Vec<u8>, options: SendOptions) -> Result<(), ChannelError> {
        self.send_to(&self.inner.members(), payload, options)
    }

    fn send_to(
        &self,
        dests: &Arc<[Member]>,
        payload: Vec<u8>,
        options: SendOptions,
    ) -> Result<(), ChannelError> {
        let max = self.inner.config.max_frame_size as usize;
        if payload.len() + ENVELOPE_OVERHEAD > max {
            return Err(ChannelError::TooLarge {
                len: payload.len(),
                max: max - ENVELOPE_OVERHEAD,
            });
        }
        if self.inner.runtime.read().is_none() {
            return Err(ChannelError::NotRunning);
        }
        let msg = OutMessage {
            msg_id: self.inner.next_msg_id.fetch_add(1, Ordering::Relaxed),
            options: options.normalized(),
            payload,
            batched: false,
        };
        Next::top(&*self.inner).send_message(dests, msg)
    }

    /// Membership counters (heartbeats, refused datagrams, verifications), while running.
    pub fn membership_stats(&self) -> Option<Arc<crate::membership::service::MembershipStats>> {
        self.running
            .lock()
            .as_ref()
            .map(|r| r.membership.stats.clone())
    }

    /// Receiver counters.
    pub fn receiver_stats(&self) -> Option<Arc<ReceiverStats>> {
        self.running
            .lock()
            .as_ref()
            .map(|r| r.receiver_stats.clone())
    }

    /// Per-member figures (every member this node exchanged messages with, including those that
    /// left) and channel totals. A snapshot: each figure is read once, without a lock on the
    /// send or receive path.
    pub fn stats(&self) -> ChannelStats {
        let current = self.inner.members();
        // A member not talked to yet is listed too, with zeros.
        for m in current.iter() {
            self.inner.member_counters.counters(m);
        }
        let mut s = ChannelStats::sum(self.inner.member_counters.stats(&current));
        let t = &mut s.totals;
        if let Some(rt) = self.inner.runtime() {
            t.connects = rt.sender.stats.connects.load(Ordering::Relaxed);
            t.stalls = rt.sender.stats.stalls.load(Ordering::Relaxed);
        }
        if let Some(r) = self.receiver_stats() {
            t.connections_accepted = r.connections_accepted.load(Ordering::Relaxed);
            t.connections_refused = r.connections_refused.load(Ordering::Relaxed);
            t.connections_closed_on_error = r.connections_closed_on_error.load(Ordering::Relaxed);
            t.auth_failures = r.auth_failures.load(Ordering::Relaxed);
            t.duplicates_dropped = r.duplicates_dropped.load(Ordering::Relaxed);
        }
        s
    }

    /// Sender counters, while running.
    pub fn with_sender_stats<R>(&self, f: impl FnOnce(&SenderStats) -> R) -> Option<R> {
        self.inner.runtime().map(|rt| f(&rt.sender.stats))
    }
}

impl Drop for GroupChannel {
    fn drop(&mut self) {
        self.stop();
    }
}
