//! The sender (Tribes' `ReplicationTransmitter` + `PooledParallelSender`).
//!
//! Synchronous sends take one pooled lane per destination, write the frame to all of them, then
//! collect the acks: the destinations work in parallel while the caller waits once. Asynchronous
//! frames (from the dispatch thread) go to one dedicated lane per member, lane 0, where they are
//! coalesced into large writes: per-destination order is the queue's order.

use super::async_lane::AsyncLane;
use super::lane::{Identity, Lane, Reply};
use super::tx_session::{is_retriable, AckMatch};
use crate::config::SenderConfig;
use crate::error::{FaultyMember, SendFailure};
use crate::member::{Member, MemberId};
use crate::metrics::{MemberCounters, MemberRegistry};
use crate::options::SendOptions;
use crate::wire::frame::{FLAG_ACK, FLAG_SYNC_ACK};
use crate::wire::DataBody;
use log::{debug, warn};
use parking_lot::{Condvar, Mutex, RwLock};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Counters of the sender.
#[derive(Default, Debug)]
#[non_exhaustive]
pub struct SenderStats {
    pub messages_sent: crate::metrics::Counter,
    pub bytes_sent: crate::metrics::Counter,
    pub retries: crate::metrics::Counter,
    pub failures: crate::metrics::Counter,
    pub connects: crate::metrics::Counter,
    /// Times an asynchronous lane found its member not reading.
    pub stalls: crate::metrics::Counter,
}

/// First lane id of asynchronous lanes; pooled lanes count up from 1.
const ASYNC_LANES: u32 = 1 << 31;
/// Lane id of a probe connection (handshake only).
pub const PROBE_LANE: u32 = u32::MAX;
/// Lane id of the connection that only says goodbye; its handshake does not announce the
/// member (which is leaving) to the receiver's membership.
pub const LEAVE_LANE: u32 = u32::MAX - 1;

pub fn frame_flags(opts: SendOptions) -> u16 {
    let mut f = 0;
    if opts.wants_ack() {
        f |= FLAG_ACK;
    }
    if opts.wants_sync_ack() {
        f |= FLAG_SYNC_ACK;
    }
    f
}

struct Pool {
    idle: Vec<Lane>,
    /// Lanes handed out or idle; at most `pool_size`.
    created: u32,
}

struct MemberLink {
    member: Member,
    /// This member's counters, looked up once for the link's life.
    counters: Arc<MemberCounters>,
    pool: Mutex<Pool>,
    freed: Condvar,
    /// Its last synchronous send timed out (it does not read, or answers late): it is written
    /// to and waited for after the others, so it cannot use up their time.
    slow: AtomicBool,
}

/// A send in progress to one destination: its frame is held by the lane's session.
struct InFlight {
    link: Arc<MemberLink>,
    lane: Option<Lane>,
    result: Option<SendFailure>,
    /// When the frame was last written, for the round-trip time of a synchronized ack.
    written_at: Instant,
}

pub struct PooledParallelSender {
    id: Arc<Identity>,
    cfg: SenderConfig,
    links: RwLock<HashMap<MemberId, Arc<MemberLink>>>,
    /// One per member; a short list searched linearly (no hashing per frame).
    async_lanes: Mutex<Vec<AsyncLane>>,
    /// Lane ids of asynchronous lanes: a new one each time a member's lane is made, so a lane
    /// made after a member left and came back is never confused with the old one.
    next_async_lane: AtomicU32,
    pub stats: SenderStats,
    members: Arc<MemberRegistry>,
}

/// Outcome of a failed asynchronous flush for one member.
pub struct AsyncFailure {
    pub faulty: FaultyMember,
    pub messages: usize,
}

impl PooledParallelSender {
    pub(crate) fn new(
        id: Arc<Identity>,
        cfg: SenderConfig,
        members: Arc<MemberRegistry>,
    ) -> PooledParallelSender {
        PooledParallelSender {
            id,
            cfg,
            links: RwLock::new(HashMap::new()),
            async_lanes: Mutex::new(Vec::new()),
            next_async_lane: AtomicU32::new(ASYNC_LANES),
            stats: SenderStats::default(),
            members,
        }
    }

    fn link(&self, m: &Member) -> Arc<MemberLink> {
        if let Some(l) = self.links.read().get(&m.id) {
            if l.member.addr == m.addr {
                return l.clone();
            }
        }
        let mut links = self.links.write();
        let l = links.entry(m.id).or_insert_with(|| {
            Arc::new(MemberLink {
                member: m.clone(),
                counters: self.members.counters(m),
                pool: Mutex::new(Pool {
                    idle: Vec::new(),
                    created: 0,
                }),
                freed: Condvar::new(),
                slow: AtomicBool::new(false),
            })
        });
        if l.member.addr != m.addr {
            // Same id, new address: a restarted member. Start over with fresh connections.
            *l = Arc::new(MemberLink {
                member: m.clone(),
                counters: self.members.counters(m),
                pool: Mutex::new(Pool {
                    idle: Vec::new(),
                    created: 0,
                }),
                freed: Condvar::new(),
                slow: AtomicBool::new(false),
            });
        }
        l.clone()
    }

    fn checkout(&self, link: &MemberLink, deadline: Instant) -> Option<Lane> {
        let mut pool = link.pool.lock();
        loop {
            if let Some(lane) = self.take_lane(&mut pool) {
                return Some(lane);
            }
            if link.freed.wait_until(&mut pool, deadline).timed_out() {
                return None;
            }
        }
    }

    /// A free lane of the member's pool (connected or not), if one is free now.
    fn try_checkout(&self, link: &MemberLink) -> Option<Lane> {
        self.take_lane(&mut link.pool.lock())
    }

    fn take_lane(&self, pool: &mut Pool) -> Option<Lane> {
        if let Some(lane) = pool.idle.pop() {
            return Some(lane);
        }
        if (pool.created as usize) < self.cfg.pool_size {
            pool.created += 1;
            // Pooled lanes are 1..=pool_size; asynchronous lanes start at ASYNC_LANES. One
            // frame at a time, tried on `max_retry_attempts` connections after the first.
            let tries = self.cfg.max_retry_attempts.saturating_add(1);
            return Some(Lane::with_session(pool.created, tries, 1));
        }
        None
    }

    fn checkin(link: &MemberLink, mut lane: Lane) {
        if !lane.tx.is_empty() {
            lane.tx.drain(); // a send given up on (timed out, refused)
        }
        link.pool.lock().idle.push(lane);
        link.freed.notify_one();
    }

    /// Connects to `addr`, shakes hands and returns who answered, then closes. Membership uses
    /// it to learn a static member's id and to check that it is up.
    pub fn probe(
        &self,
        addr: std::net::SocketAddr,
        timeout: Duration,
    ) -> Result<Member, SendFailure> {
        let placeholder = Member {
            id: MemberId([0; 16]),
            name: String::new(),
            addr,
            domain: String::new(),
        };
        let mut lane = Lane::<()>::new(PROBE_LANE);
        let deadline = Instant::now() + timeout;
        self.stats.connects.fetch_add(1, Ordering::Relaxed);
        lane.connect(&placeholder, &self.id, deadline, timeout)
    }

    /// Pings a member on one of its pooled connections (keeping it warm): Ok once it answered
    /// within `timeout`.
    pub fn ping(&self, m: &Member, read_test: bool, timeout: Duration) -> Result<(), SendFailure> {
        let deadline = Instant::now() + timeout;
        let link = self.link(m);
        let Some(mut lane) = self.checkout(&link, deadline) else {
            return Err(SendFailure::Timeout(timeout));
        };
        let mut r = Ok(());
        if !lane.is_connected() {
            self.stats.connects.fetch_add(1, Ordering::Relaxed);
            // Connected apart, so the round trip timed below is the ping's alone.
            r = lane.connect(m, &self.id, deadline, timeout).map(drop);
        }
        if r.is_ok() {
            let start = Instant::now();
            r = lane.ping(m, &self.id, read_test, deadline, timeout);
            if r.is_ok() {
                link.counters.rtt(start.elapsed());
            }
        }
        if r.is_err() {
            lane.disconnect();
        }
        Self::checkin(&link, lane);
        r
    }

    /// Sends one message to every destination and waits as `opts` asks. Returns the members
    /// that failed and why; the others got it.
    pub fn send(
        &self,
        dests: &[Member],
        body: &DataBody<'_>,
        opts: SendOptions,
    ) -> Result<(), Vec<FaultyMember>> {
        let timeout = self.cfg.timeout;
        let deadline = Instant::now() + timeout;
        let flags = frame_flags(opts);
        // A keyed lane checksums the sealed body instead.
        let crc = if self.id.key.is_some() {
            crc32fast::Hasher::new()
        } else {
            body.hasher()
        };
        let mut links: Vec<Arc<MemberLink>> = dests.iter().map(|m| self.link(m)).collect();
        // Members whose last send timed out go last (a stable sort keeps the order otherwise):
        // one that stopped reading can then block only its own write and ack wait, never the
        // other members' (the deadline is shared by all destinations).
        if links.iter().any(|l| l.slow.load(Ordering::Relaxed)) {
            links.sort_by_key(|l| l.slow.load(Ordering::Relaxed));
        }
        let mut flights: Vec<InFlight> = Vec::with_capacity(dests.len());
        // Phase 1: write to every destination; first on connections already open and free,
        // then where that means waiting (for a free connection, a connect and a handshake), so
        // a member that hangs there cannot hold up the writes to the others.
        let mut waits = Vec::new();
        for link in links {
            let mut f = InFlight {
                link,
                lane: None,
                result: None,
                written_at: Instant::now(),
            };
            f.lane = self.try_checkout(&f.link);
            if f.lane.as_ref().is_some_and(Lane::is_connected) {
                if let Err(e) = self.write_with_retry(&mut f, flags, body, &crc, deadline) {
                    f.result = Some(e);
                }
                flights.push(f);
            } else {
                waits.push(f);
            }
        }
        for mut f in waits {
            if f.lane.is_none() {
                f.lane = self.checkout(&f.link, deadline);
            }
            if f.lane.is_some() {
                if let Err(e) = self.write_with_retry(&mut f, flags, body, &crc, deadline) {
                    f.result = Some(e);
                }
            } else {
                f.result = Some(SendFailure::Timeout(timeout));
            }
            flights.push(f);
        }
        // Phase 2: collect the acks.
        if flags & FLAG_ACK != 0 {
            for f in flights.iter_mut().filter(|f| f.result.is_none()) {
                if let Err(e) = self.await_ack(f, flags, body, &crc, deadline) {
                    f.result = Some(e);
                }
            }
        }
        let mut faulty = Vec::new();
        for f in flights {
            if let Some(lane) = f.lane {
                Self::checkin(&f.link, lane);
            }
            let timed_out = matches!(f.result, Some(SendFailure::Timeout(_)));
            if f.link.slow.load(Ordering::Relaxed) != timed_out {
                f.link.slow.store(timed_out, Ordering::Relaxed);
            }
            match f.result {
                None => {
                    self.stats.messages_sent.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .bytes_sent
                        .fetch_add(body.len() as u64, Ordering::Relaxed);
                    f.link.counters.sent(1, body.payload.len() as u64);
                }
                Some(reason) => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    f.link.counters.send_errors(1);
                    faulty.push(FaultyMember {
                        id: f.link.member.id,
                        member: Some(f.link.member.clone()),
                        reason,
                    });
                }
            }
        }
        if faulty.is_empty() {
            Ok(())
        } else {
            Err(faulty)
        }
    }

    /// Writes the frame (a new one, or the one the lane's session holds, under its number),
    /// reconnecting and retrying as the session allows.
    fn write_with_retry(
        &self,
        f: &mut InFlight,
        flags: u16,
        body: &DataBody<'_>,
        crc: &crc32fast::Hasher,
        deadline: Instant,
    ) -> Result<(), SendFailure> {
        let timeout = self.cfg.timeout;
        let Some(lane) = f.lane.as_mut() else {
            return Err(SendFailure::Io("no lane".into()));
        };
        if lane.tx.is_empty() {
            lane.tx.push(self.id.number(), flags & FLAG_ACK != 0, ());
        }
        loop {
            let attempt = (|| {
                if !lane.is_connected() {
                    self.stats.connects.fetch_add(1, Ordering::Relaxed);
                    lane.connect(&f.link.member, &self.id, deadline, timeout)?;
                }
                let seq = lane
                    .tx
                    .next_write()
                    .map(|fr| fr.seq)
                    .ok_or_else(|| SendFailure::Io("no frame to write".into()))?;
                lane.wbuf.clear();
                lane.stamp(&self.id, seq, flags, body, crc);
                lane.flush_wbuf(deadline, timeout)
            })();
            match attempt {
                Ok(()) => {
                    f.written_at = Instant::now();
                    // Without an ack to wait for, written is sent.
                    let _ = lane.tx.pop_done();
                    return Ok(());
                }
                Err(e) => Self::retry_or_fail(f.link.as_ref(), lane, e, &self.stats)?,
            }
        }
    }

    /// After a failed attempt: Ok if the lane's frame may go again on a new connection, else
    /// the failure (the frame is given up on).
    fn retry_or_fail(
        link: &MemberLink,
        lane: &mut Lane,
        e: SendFailure,
        stats: &SenderStats,
    ) -> Result<(), SendFailure> {
        lane.disconnect(); // already done by the failing call; charges the frame its try
        if !is_retriable(&e) || lane.tx.has_failed() {
            lane.tx.drain();
            return Err(e);
        }
        stats.retries.fetch_add(1, Ordering::Relaxed);
        link.counters.retries(1);
        debug!("Retrying send to [{}] after: {e}", link.member);
        Ok(())
    }

    fn await_ack(
        &self,
        f: &mut InFlight,
        flags: u16,
        body: &DataBody<'_>,
        crc: &crc32fast::Hasher,
        deadline: Instant,
    ) -> Result<(), SendFailure> {
        let timeout = self.cfg.timeout;
        loop {
            let Some(lane) = f.lane.as_mut() else {
                return Err(SendFailure::Io("no lane".into()));
            };
            let (seq, failure) = match lane.read_reply(deadline, timeout) {
                Ok(Reply::Ack(s)) => (s, None),
                Ok(Reply::FailAck(s, reason)) => (s, Some(reason)),
                Err(e) => {
                    // The connection broke before the ack: the session resends the frame under
                    // its number on a new connection; if the first copy arrived the receiver
                    // drops this one and answers again.
                    Self::retry_or_fail(f.link.as_ref(), lane, e, &self.stats)?;
                    self.write_with_retry(f, flags, body, crc, deadline)?;
                    continue;
                }
            };
            if lane.tx.on_ack(seq) == AckMatch::Stale {
                continue; // an answer to an earlier frame on this lane: not ours
            }
            let _ = lane.tx.pop_done();
            return match failure {
                None => {
                    if flags & FLAG_SYNC_ACK != 0 {
                        f.link.counters.rtt(f.written_at.elapsed());
                    }
                    Ok(())
                }
                Some(reason) => Err(SendFailure::Remote(reason)),
            };
        }
    }

    /// Appends an asynchronous frame for each destination to its lane's buffer, writing a
    /// buffer out when it passes `coalesce_bytes`.
    pub fn queue_async(
        &self,
        dests: &[Member],
        body: &DataBody<'_>,
        opts: SendOptions,
    ) -> Vec<AsyncFailure> {
        let flags = frame_flags(opts);
        // A keyed lane checksums the sealed body instead.
        let crc = if self.id.key.is_some() {
            crc32fast::Hasher::new()
        } else {
            body.hasher()
        };
        let mut lanes = self.async_lanes.lock();
        let mut failures = Vec::new();
        for m in dests {
            let i = match lanes.iter().position(|al| al.member.id == m.id) {
                Some(i) => i,
                None => {
                    let lane = self.next_async_lane.fetch_add(1, Ordering::Relaxed);
                    lanes.push(AsyncLane::new(m.clone(), lane, self.members.counters(m)));
                    lanes.len() - 1
                }
            };
            let al = &mut lanes[i];
            if al.member.addr != m.addr {
                al.member = m.clone();
                al.disconnect();
            }
            if al.push(
                &self.id,
                flags,
                body,
                &crc,
                self.cfg.max_queued_bytes_per_member,
            ) {
                self.stats
                    .bytes_sent
                    .fetch_add(body.len() as u64, Ordering::Relaxed);
            }
            if al.unwritten() >= self.cfg.coalesce_bytes {
                failures.extend(self.flush_lane(al));
            }
        }
        failures
    }

    /// Writes every member's queued asynchronous frames and waits for the acks they asked for.
    /// Also returns whether frames are still waiting (for a member that is not reading).
    pub fn flush_async(&self) -> (Vec<AsyncFailure>, bool) {
        let mut lanes = self.async_lanes.lock();
        let failures = lanes
            .iter_mut()
            .filter(|al| al.has_work())
            .filter_map(|al| self.flush_lane(al))
            .collect();
        (failures, lanes.iter().any(|al| al.has_work()))
    }

    /// Flushes one lane, counts what it settled, and returns what failed.
    fn flush_lane(&self, al: &mut AsyncLane) -> Option<AsyncFailure> {
        let r = al.flush(&self.id, self.cfg.timeout, self.cfg.max_retry_attempts);
        let st = &self.stats;
        st.messages_sent.fetch_add(r.sent, Ordering::Relaxed);
        st.retries.fetch_add(r.retries, Ordering::Relaxed);
        st.connects.fetch_add(r.connects, Ordering::Relaxed);
        al.counters.sent(r.sent, r.bytes);
        al.counters.retries(r.retries);
        al.counters.set_queued(al.queued());
        if r.stalled {
            st.stalls.fetch_add(1, Ordering::Relaxed);
        }
        let (messages, reason) = match r.failed {
            Some(f) => f,
            None if r.stalled => (0, SendFailure::Timeout(self.cfg.timeout)),
            None => return None,
        };
        st.failures.fetch_add(messages, Ordering::Relaxed);
        // Dropped messages are counted apart, as they were refused.
        al.counters.send_errors(messages.saturating_sub(r.dropped));
        Some(AsyncFailure {
            faulty: al.faulty(reason),
            messages: messages as usize,
        })
    }

    /// Writes the frames queued on every asynchronous lane (see `finish_async`), then waits
    /// until each of `members` has handled them, within one send timeout in all: a read-test
    /// ping behind them on its asynchronous lane. A stopping channel keeps its receiver
    /// running meanwhile, so a member still working through our last messages finds us
    /// there: neither its failure detector (a ping or a reply refused by a stopped receiver)
    /// nor a leave heard first lets it take our sessions over and refuse those messages.
    pub fn flush_to(&self, members: &[Member]) {
        self.finish_async(Instant::now() + self.cfg.timeout);
        let deadline = Instant::now() + self.cfg.timeout;
        let mut lanes = self.async_lanes.lock();
        for al in lanes.iter_mut().filter(|al| {
            members
                .iter()
                .any(|m| al.member.id == m.id && al.member.addr == m.addr)
        }) {
            if !al.barrier(&self.id, deadline, self.cfg.timeout) {
                debug!(
                    "At stop, [{}] did not confirm it handled our last asynchronous messages",
                    al.member
                );
            }
        }
    }

    /// Says goodbye to each member (best effort), then closes every connection. Frames still
    /// queued on the asynchronous lanes are written first (Tomcat's sender finishes its queue
    /// before it disconnects), within one send timeout in all: a member that does not read
    /// cannot hold the stop longer. The goodbye goes on the member's asynchronous lane, after
    /// its last frames, where that lane is connected and empty: the receiver handles a
    /// connection's frames in order, whereas a goodbye on a connection of its own could be
    /// handled first (the member would then take over from us, and refuse our last changes).
    /// Otherwise it goes on a connection of its own.
    pub fn leave(&self, members: &[Member]) {
        self.finish_async(Instant::now() + self.cfg.timeout);
        let timeout = Duration::from_millis(500).min(self.cfg.timeout);
        let mut lanes = self.async_lanes.lock();
        for m in members {
            let deadline = Instant::now() + timeout;
            let on_async_lane = lanes
                .iter_mut()
                .find(|al| al.member.id == m.id && al.member.addr == m.addr)
                .is_some_and(|al| al.say_goodbye(deadline, timeout));
            if on_async_lane {
                continue;
            }
            let mut lane = Lane::<()>::new(LEAVE_LANE);
            if lane.connect(m, &self.id, deadline, timeout).is_ok() {
                lane.send_leave(deadline, timeout);
            }
        }
        self.links.write().clear();
        for al in lanes.drain(..) {
            al.counters.set_queued(0);
        }
    }

    /// Writes the frames queued on every asynchronous lane until they are all written (and
    /// acked where asked) or `deadline` passes. A lane stalled on a member that does not read
    /// is retried in turn with the others until then, not given up after one short wait as a
    /// running flush does; what is left at the deadline is dropped with a warning.
    fn finish_async(&self, deadline: Instant) {
        let mut lanes = self.async_lanes.lock();
        while lanes.iter().any(|al| al.has_work()) {
            for al in lanes.iter_mut().filter(|al| al.has_work()) {
                if let Some(f) = self.flush_lane(al) {
                    debug!(
                        "At stop, {} asynchronous message(s) to [{}] not sent: {}",
                        f.messages, al.member, f.faulty.reason
                    );
                }
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        let left: usize = lanes.iter().map(|al| al.queued()).sum();
        if left > 0 {
            warn!("Stopping with {left} bytes of asynchronous messages not sent (a member does not read)");
        }
    }

    /// Closes the connections to a member that left.
    pub fn forget(&self, id: &MemberId) {
        self.links.write().remove(id);
        self.async_lanes.lock().retain(|al| {
            let keep = al.member.id != *id;
            if !keep {
                al.counters.set_queued(0);
            }
            keep
        });
    }
}
