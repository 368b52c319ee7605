//! The membership shell: the multicast socket, the timers and the TCP checks around the pure
//! [`MembershipState`].
//!
//! Threads: `tribecast-membership` owns the state, sends heartbeats and runs the timers;
//! `tribecast-mcast-rx` (with multicast) reads heartbeats; `tribecast-prober` pings members,
//! probes absent static members and verifies suspects, so that a member that hangs a TCP
//! connect never delays heartbeats. Events reach the state over one bounded channel.

use super::record::{self, Kind, McastRecord, RecordError, ReplayGuard};
use super::state::{Action, DetectorConfig, MembershipState, Source};
use crate::config::{ChannelConfig, StaticMember};
use crate::crypto::DatagramKey;
use crate::error::{ChannelError, SendFailure};
use crate::member::{Member, MemberId};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use log::{debug, info, warn};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Events queued for the membership thread; past this, heartbeats are dropped (the next ones
/// will do) and counted.
const EVENT_QUEUE: usize = 4096;
/// Warnings about bad datagrams: at most one per this period, with the count.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// Members whose newest datagram timestamp is remembered for the replay check.
const REPLAY_MEMBERS: usize = 4096;

/// Makes this member's datagrams: plaintext, or sealed with a fresh timestamp each.
struct Beacon {
    cluster: String,
    member: Member,
    key: Option<DatagramKey>,
    /// Last timestamp used: each datagram gets a later one, even if the clock stands still or
    /// steps back, so receivers can refuse anything not newer than what they have.
    last_stamp: AtomicU64,
}

impl Beacon {
    fn datagram(&self, kind: Kind, alive_ms: u64) -> Result<Vec<u8>, crate::crypto::CryptoError> {
        let rec = McastRecord {
            cluster: self.cluster.clone(),
            member: self.member.clone(),
            alive_ms,
        };
        let Some(key) = &self.key else {
            return Ok(record::encode(kind, &rec));
        };
        let now = now_us();
        let prev = self
            .last_stamp
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
                Some(now.max(last.saturating_add(1)))
            })
            .unwrap_or(0);
        record::encode_sealed(kind, &rec, key, now.max(prev.saturating_add(1)))
    }
}

/// Wall-clock microseconds since the Unix epoch: datagram timestamps must be comparable across
/// members (their clocks must agree within the replay window).
fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// What the multicast reader checks datagrams against.
struct McastRx {
    me: MemberId,
    cluster: String,
    key: Option<DatagramKey>,
    guard: ReplayGuard,
}

/// What the membership thread hears.
pub enum Event {
    Heard(Member, Source),
    /// A goodbye on a connection, handled after every frame before it.
    Left(MemberId),
    /// A multicast leave datagram: it can overtake the member's last frames.
    LeaveDatagram(MemberId),
    /// A new incarnation of the member shook hands: it restarted.
    Restarted(MemberId),
    SendFailed(MemberId, String),
    Verified(MemberId, bool, String),
    /// The prober finished a round of pings and probes.
    RoundDone,
    Stop,
}

/// What the membership shell needs from the channel.
pub trait Sink: Send + Sync + 'static {
    fn added(&self, m: &Member);
    fn gone(&self, m: &Member, why: &str);
    /// Connects and shakes hands; returns who answered.
    fn probe(&self, addr: SocketAddr, timeout: Duration) -> Result<Member, SendFailure>;
    /// Pings a member on its data connection.
    fn ping(&self, m: &Member, read_test: bool, timeout: Duration) -> Result<(), SendFailure>;
    /// Whether the member has a connection open to us whose frames may still be handled. Its
    /// leave datagram is then not acted on: the goodbye it writes on that connection, behind
    /// its last frames, ends it (or its silence does, after the drop time).
    fn connected(&self, _id: &MemberId) -> bool {
        false
    }
}

enum Job {
    Verify(Member),
    Round {
        members: Vec<Member>,
        absent: Vec<StaticMember>,
    },
}

/// Counters of the membership service.
#[derive(Default, Debug)]
#[non_exhaustive]
pub struct MembershipStats {
    pub heartbeats_sent: crate::metrics::Counter,
    pub heartbeats_received: crate::metrics::Counter,
    pub datagrams_refused: crate::metrics::Counter,
    pub events_dropped: crate::metrics::Counter,
    pub verifications: crate::metrics::Counter,
}

pub struct MembershipService {
    events: Sender<Event>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Socket and datagram maker, to say goodbye on stop.
    leave: Option<(UdpSocket, Arc<Beacon>, SocketAddr)>,
    pub stats: Arc<MembershipStats>,
}

impl MembershipService {
    pub fn start(
        cfg: &ChannelConfig,
        local: Member,
        sink: Arc<dyn Sink>,
    ) -> Result<MembershipService, ChannelError> {
        let ms = &cfg.membership;
        let (events, events_rx) = crossbeam_channel::bounded::<Event>(EVENT_QUEUE);
        let (jobs, jobs_rx) = crossbeam_channel::bounded::<Job>(EVENT_QUEUE);
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(MembershipStats::default());
        let started = Instant::now();
        let mut threads = Vec::new();
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(ChannelError::Io)
        };
        let mut tick = ms.ping_interval.min(ms.expiration_time / 4);
        let mut mcast = None;
        let mut leave = None;
        if let Some(mc) = &ms.mcast {
            tick = tick.min(mc.frequency);
            let sock = super::mcast::open(
                mc,
                local.addr.ip(),
                mc.frequency.min(Duration::from_millis(100)),
            )
            .map_err(|e| {
                ChannelError::Io(std::io::Error::new(
                    e.kind(),
                    format!("multicast {}:{}: {e}", mc.address, mc.port),
                ))
            })?;
            let group = super::mcast::group(mc);
            let rx_sock = sock.try_clone().map_err(ChannelError::Io)?;
            let key = cfg.cluster_key.as_ref().map(|k| k.datagram_key());
            let beacon = Arc::new(Beacon {
                cluster: cfg.cluster_name.clone(),
                member: local.clone(),
                key: key.clone(),
                last_stamp: AtomicU64::new(0),
            });
            leave = Some((
                sock.try_clone().map_err(ChannelError::Io)?,
                beacon.clone(),
                group,
            ));
            let rx = McastRx {
                me: local.id,
                cluster: cfg.cluster_name.clone(),
                key,
                guard: ReplayGuard::new(cfg.replay_window, REPLAY_MEMBERS),
            };
            let (ev, st, stop2) = (events.clone(), stats.clone(), stop.clone());
            threads.push(spawn(
                "tribecast-mcast-rx",
                Box::new(move || mcast_rx(rx_sock, rx, ev, st, stop2)),
            )?);
            info!(
                "Multicast membership on {group} every {} ms, drop time {} ms",
                mc.frequency.as_millis(),
                mc.drop_time.as_millis()
            );
            mcast = Some((sock, group, mc.frequency, beacon));
        }
        let tick = (tick / 5).max(Duration::from_millis(5));
        let det = DetectorConfig {
            drop_time: ms.mcast.as_ref().map_or(Duration::MAX, |m| m.drop_time),
            expiration_time: ms.expiration_time,
            verify: ms.failure_detector,
            domain: cfg.domain.clone(),
            leave_grace: ms.connect_timeout,
        };
        let mut state = MembershipState::new(det, local.id);
        let statics = cfg.static_members.clone();
        let (ping_every, st) = (ms.ping_interval, stats.clone());
        let sink2 = sink.clone();
        threads.push(spawn(
            "tribecast-membership",
            Box::new(move || {
                let mut next_beat = Instant::now();
                let mut next_tick = Instant::now() + tick;
                let mut next_round = Instant::now();
                let mut prober_busy = false;
                loop {
                    let now = Instant::now();
                    let mut actions = Vec::new();
                    if let Some((sock, group, freq, beat)) = &mcast {
                        if now >= next_beat {
                            let alive_ms = now.duration_since(started).as_millis() as u64;
                            match beat.datagram(Kind::Heartbeat, alive_ms) {
                                Ok(bytes) => match sock.send_to(&bytes, *group) {
                                    Ok(_) => {
                                        st.heartbeats_sent.fetch_add(1, Ordering::Relaxed);
                                    }
                                    Err(e) => warn!("Multicast heartbeat to {group} failed: {e}"),
                                },
                                Err(e) => warn!("Cannot seal a heartbeat: {e}"),
                            }
                            next_beat = now + *freq;
                        }
                    }
                    if now >= next_tick {
                        actions.extend(state.tick(now));
                        next_tick = now + tick;
                    }
                    if now >= next_round {
                        // A round still running (a member slow to answer) makes this one skip.
                        if !prober_busy {
                            let members: Vec<Member> = state.members().cloned().collect();
                            let absent = statics
                                .iter()
                                .filter(|s| !members.iter().any(|m| listed(s, m)))
                                .cloned()
                                .collect();
                            prober_busy = jobs.try_send(Job::Round { members, absent }).is_ok();
                        }
                        next_round = now + ping_every;
                    }
                    for a in actions.drain(..) {
                        act(a, &mut state, &sink2, &jobs, &st);
                    }
                    let mut wake = next_tick.min(next_round);
                    if mcast.is_some() {
                        wake = wake.min(next_beat);
                    }
                    let ev = match events_rx
                        .recv_timeout(wake.saturating_duration_since(Instant::now()))
                    {
                        Ok(ev) => ev,
                        Err(RecvTimeoutError::Timeout) => continue,
                        Err(RecvTimeoutError::Disconnected) => return,
                    };
                    let now = Instant::now();
                    let action = match ev {
                        Event::Stop => return,
                        Event::Heard(m, source) => state.heard(&m, source, now),
                        Event::Left(id) => state.left(&id, now),
                        Event::LeaveDatagram(id) if sink2.connected(&id) => {
                            debug!("Leave datagram of member {id} not acted on: its connection is still open, and its goodbye there comes after its last messages");
                            None
                        }
                        Event::LeaveDatagram(id) => state.left(&id, now),
                        Event::Restarted(id) => state.restarted(&id),
                        Event::SendFailed(id, why) => state.send_failed(&id, &why),
                        Event::Verified(id, alive, why) => state.verified(&id, alive, &why, now),
                        Event::RoundDone => {
                            prober_busy = false;
                            None
                        }
                    };
                    if let Some(a) = action {
                        act(a, &mut state, &sink2, &jobs, &st);
                    }
                }
            }),
        )?);
        let (ev, timeout, read_test) = (events.clone(), ms.connect_timeout, ms.perform_read_test);
        threads.push(spawn(
            "tribecast-prober",
            Box::new(move || prober(jobs_rx, sink, ev, timeout, read_test)),
        )?);
        Ok(MembershipService {
            events,
            stop,
            threads,
            leave,
            stats,
        })
    }

    /// A sender for events from the channel (connections, leaves, failed sends).
    pub fn events(&self) -> Sender<Event> {
        self.events.clone()
    }

    /// Stops heartbeats and probing and joins the threads, without the leave datagram: a
    /// stopping channel flushes its last messages first, and a leave heard before them would
    /// let a member take this one's sessions over and refuse those messages as stale. Safe to
    /// call twice.
    pub fn stop_threads(&mut self) {
        if self.threads.is_empty() {
            return;
        }
        self.stop.store(true, Ordering::SeqCst);
        let _ = self
            .events
            .send_timeout(Event::Stop, Duration::from_secs(1));
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                warn!("A membership thread panicked");
            }
        }
    }

    /// Joins the threads, then sends the leave datagram (no heartbeat can follow it and bring
    /// this member back on the others). Safe to call twice.
    pub fn stop(&mut self) {
        self.stop_threads();
        if let Some((sock, beacon, group)) = self.leave.take() {
            match beacon.datagram(Kind::Leave, 0) {
                Ok(bytes) => {
                    if let Err(e) = sock.send_to(&bytes, group) {
                        warn!("Multicast leave datagram to {group} failed: {e}");
                    }
                }
                Err(e) => warn!("Cannot seal the leave datagram: {e}"),
            }
        }
    }
}

impl Drop for MembershipService {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Queues an event without blocking; a full queue drops it (a later heartbeat or ping repeats
/// what matters) and counts it.
pub fn notify(events: &Sender<Event>, ev: Event, stats: Option<&MembershipStats>) {
    if let Err(TrySendError::Full(_)) = events.try_send(ev) {
        if let Some(st) = stats {
            st.events_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn listed(s: &StaticMember, m: &Member) -> bool {
    match s.unique_id {
        Some(id) => id == m.id,
        None => s.addr == m.addr,
    }
}

fn act(
    a: Action,
    state: &mut MembershipState,
    sink: &Arc<dyn Sink>,
    jobs: &Sender<Job>,
    st: &MembershipStats,
) {
    match a {
        Action::Added(m) => sink.added(&m),
        Action::Disappeared(m, why) => sink.gone(&m, &why),
        Action::StillAlive(m) => info!("Verification complete. Member still alive [{m}]"),
        Action::Verify(m) => {
            st.verifications.fetch_add(1, Ordering::Relaxed);
            debug!("Suspecting member [{m}]: verifying it over TCP");
            if jobs.try_send(Job::Verify(m.clone())).is_err() {
                // The prober is swamped: count it as a failed check rather than leave it hanging.
                if let Some(a) =
                    state.verified(&m.id, false, "verification queue full", Instant::now())
                {
                    act(a, state, sink, jobs, st);
                }
            }
        }
    }
}

fn prober(
    jobs: Receiver<Job>,
    sink: Arc<dyn Sink>,
    events: Sender<Event>,
    timeout: Duration,
    read_test: bool,
) {
    for job in jobs {
        match job {
            Job::Verify(m) => {
                let check = sink.probe(m.addr, timeout).and_then(|answered| {
                    if answered.id != m.id {
                        return Err(SendFailure::Protocol(format!(
                            "another member answers there: {}",
                            answered.id
                        )));
                    }
                    if read_test {
                        sink.ping(&m, true, timeout)?;
                    }
                    Ok(())
                });
                let (alive, why) = match check {
                    Ok(()) => (true, String::new()),
                    Err(e) => (false, e.to_string()),
                };
                notify(&events, Event::Verified(m.id, alive, why), None);
            }
            Job::Round { members, absent } => {
                for m in members {
                    match sink.ping(&m, false, timeout) {
                        Ok(()) => notify(&events, Event::Heard(m, Source::Direct), None),
                        Err(e) => {
                            notify(&events, Event::SendFailed(m.id, format!("ping: {e}")), None)
                        }
                    }
                }
                for s in absent {
                    match sink.probe(s.addr, timeout) {
                        Ok(m) if s.unique_id.is_some_and(|id| id != m.id) => warn!(
                            "Static member {} answered with id {}, not the configured {:?}; ignoring it",
                            s.addr, m.id, s.unique_id
                        ),
                        Ok(m) => notify(&events, Event::Heard(m, Source::Direct), None),
                        Err(e) => debug!("Static member {} not reachable: {e}", s.addr),
                    }
                }
                notify(&events, Event::RoundDone, None);
            }
        }
    }
}

fn mcast_rx(
    sock: UdpSocket,
    mut rx: McastRx,
    events: Sender<Event>,
    st: Arc<MembershipStats>,
    stop: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; record::MAX_DATAGRAM + 1];
    let mut refused_since_warn = 0u64;
    let mut last_warn: Option<Instant> = None;
    let mut refuse = |why: String, from: SocketAddr| {
        st.datagrams_refused.fetch_add(1, Ordering::Relaxed);
        refused_since_warn += 1;
        if last_warn.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            warn!("Ignoring membership datagram from {from}: {why} ({refused_since_warn} ignored since the last warning)");
            refused_since_warn = 0;
            last_warn = Some(Instant::now());
        }
    };
    while !stop.load(Ordering::SeqCst) {
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => {
                warn!("Multicast receive failed: {e}");
                continue;
            }
        };
        let (kind, stamp, rec) = match record::open(&buf[..n], rx.key.as_ref()) {
            Ok(x) => x,
            Err(e) => {
                refuse(e.to_string(), from);
                continue;
            }
        };
        if rec.cluster != rx.cluster || rec.member.id == rx.me {
            continue; // another cluster on the same group, or our own heartbeat looped back
        }
        if rx.key.is_some() {
            // Authentic, but maybe recorded earlier: a replayed heartbeat must not revive a
            // member, nor a replayed leave evict one.
            if let Err(e) = rx.guard.check(rec.member.id, stamp, now_us()) {
                let e: RecordError = e;
                refuse(format!("{e} (member [{}])", rec.member), from);
                continue;
            }
        }
        // A record is only ever announced by its member: it must come from the member's host.
        if rec.member.addr.ip() != from.ip() {
            refuse(
                format!("record of [{}] sent from another host", rec.member),
                from,
            );
            continue;
        }
        st.heartbeats_received.fetch_add(1, Ordering::Relaxed);
        let ev = match kind {
            Kind::Heartbeat => Event::Heard(rec.member, Source::Multicast),
            Kind::Leave => Event::LeaveDatagram(rec.member.id),
        };
        notify(&events, ev, Some(&st));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_event_queue_drops_and_counts() {
        let (tx, rx) = crossbeam_channel::bounded::<Event>(2);
        let st = MembershipStats::default();
        for _ in 0..5 {
            notify(&tx, Event::RoundDone, Some(&st));
        }
        assert_eq!(rx.len(), 2, "the queue holds its bound");
        assert_eq!(
            st.events_dropped.load(Ordering::Relaxed),
            3,
            "the rest counted"
        );
    }
}
