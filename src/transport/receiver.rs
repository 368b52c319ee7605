//! The NIO receiver (Tribes' `NioReceiver`): one mio event loop thread accepts and reads, and a
//! fixed pool of `max_threads` workers runs the listeners.
//!
//! Each connection has a mailbox. The loop appends the frames it read to the mailbox and hands the
//! connection (not the frame) to the pool when it is not already scheduled, so one worker at a
//! time drains one connection: frames of a connection are processed in order, different
//! connections in parallel, and the loop never waits for a worker. A connection whose mailbox
//! holds more than `max_queued_bytes_per_connection` is not read until workers catch up; TCP
//! flow control then slows its sender. Tribes instead blocks the whole selector.

use super::dedup::{DedupTable, LaneKey, Outcome, SyncOutcomes};
use super::rx_session::{Delivery, RxClose, RxOutput, RxSession, RxSettings};
use crate::config::{ChannelConfig, ReceiverConfig};
use crate::crypto::{ClusterKey, Sealer};
use crate::error::ChannelError;
use crate::member::Member;
use crate::metrics::MemberCounters;
use crate::wire::frame::{encode_frame, FrameKind};
use crate::wire::{decode_body, encode_body, Envelope, Reason};
use crossbeam_channel::{Receiver, Sender};
use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST_CONN: usize = 2;
/// Reads per connection per wake-up before the loop turns to others (fairness).
const READS_PER_TURN: usize = 16;
const INITIAL_BUF: usize = 64 * 1024;
/// Read buffers grow while reads fill them, up to this (or one max frame, if larger).
const MAX_READ_BUF: usize = 1024 * 1024;
/// Unsent ack bytes a peer may leave unread before its connection is closed.
const MAX_PENDING_REPLY: usize = 1024 * 1024;
/// Batches spanning at least this many bytes take the read buffer with them instead of a copy.
const HANDOFF_MIN: usize = 32 * 1024;
/// Read buffers kept for reuse once workers are done with them.
const RECYCLED_BUFFERS: usize = 32;
/// Once a burst grew the read buffers, how long the receiver goes without any event before it
/// gives back what the burst grew (rather than waiting for the next sweep, up to 5 s later).
const IDLE_RELEASE: std::time::Duration = std::time::Duration::from_millis(200);
/// Synchronized-ack outcomes remembered for retries.
const SYNC_OUTCOMES: usize = 16 * 1024;
/// Longest a retried synchronized-ack frame waits for its original to be processed.
const REACK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
/// What a retried synchronized-ack frame waiting for its answer counts in its connection's
/// mailbox: at least its frame header was read, and it holds a worker until answered. Counted so
/// that a peer resending frames cannot grow a mailbox past its limit without bytes to show.
const REACK_COST: usize = 64;
/// Lanes remembered by the duplicate filter.
const DEDUP_LANES: usize = 65536;
/// Refused handshakes and authentication failures are logged at most once per this period
/// (with a count), so a stranger hammering the port cannot flood the log.
const REFUSAL_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// What the receiver hands upward. Runs on worker threads.
pub trait ReceiverHandler: Send + Sync + 'static {
    /// A message arrived; `Err` is the reason given back to a synchronized-ack sender.
    fn message_received(&self, from: &Member, env: Envelope<'_>) -> Result<(), String>;
    /// A member opened a connection to us and shook hands; `incarnation` identifies the run of
    /// its process (a new one after a restart under the same member id).
    fn peer_hello(&self, member: &Member, incarnation: u64);
    /// A member said it is leaving the group.
    fn peer_left(&self, member: &Member);
    /// The counters of messages from `member`; asked once per connection.
    fn member_counters(&self, _member: &Member) -> Option<Arc<MemberCounters>> {
        None
    }
    /// A connection of `member` opened (`open`: at its handshake) or ended (closed, and its last
    /// work handled): while one is open, frames of `member` may still come and be handled.
    fn peer_connection(&self, _member: &Member, _open: bool) {}
}

/// Counters of the receiver, readable while it runs.
#[derive(Default, Debug)]
#[non_exhaustive]
pub struct ReceiverStats {
    pub connections_accepted: crate::metrics::Counter,
    pub connections_refused: crate::metrics::Counter,
    pub connections_closed_on_error: crate::metrics::Counter,
    pub frames_received: crate::metrics::Counter,
    pub bytes_received: crate::metrics::Counter,
    pub duplicates_dropped: crate::metrics::Counter,
    pub messages_delivered: crate::metrics::Counter,
    /// Connections closed because a frame failed authentication (keyed clusters): no or wrong
    /// key, forgery, replay.
    pub auth_failures: crate::metrics::Counter,
    /// Bytes of read buffers the receiver gave back after bursts (spares and grown buffers of
    /// connections with no partial frame, at each sweep: every `handshake_timeout` / 2).
    pub read_buffer_bytes_released: crate::metrics::Counter,
    /// Bytes of the connections' read buffers after the last sweep (a level, not a count).
    pub read_buffer_bytes: crate::metrics::Counter,
}

/// Binds the first free port of `[port, port + auto_bind)`, as Tribes' `autoBind` does.
pub fn bind(cfg: &ReceiverConfig) -> Result<std::net::TcpListener, ChannelError> {
    let mut last_err = None;
    for i in 0..cfg.auto_bind {
        let Some(port) = cfg.port.checked_add(i) else {
            break;
        };
        let addr = SocketAddr::new(cfg.address, port);
        match std::net::TcpListener::bind(addr) {
            Ok(l) => return Ok(l),
            Err(e) => {
                debug!("Receiver port {addr} unavailable: {e}");
                last_err = Some(e);
            } // Port 0 means "any": one attempt is all there is.
        }
        if cfg.port == 0 {
            break;
        }
    }
    Err(ChannelError::Bind {
        address: SocketAddr::new(cfg.address, cfg.port),
        auto_bind: cfg.auto_bind,
        source: last_err
            .unwrap_or_else(|| io::Error::new(io::ErrorKind::AddrInUse, "no port left")),
    })
}

/// A running receiver. `stop` (or drop) ends its threads.
pub struct NioReceiver {
    local_addr: SocketAddr,
    waker: Arc<Waker>,
    stopping: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pub stats: Arc<ReceiverStats>,
}

impl NioReceiver {
    /// Starts the loop and the workers on a bound listener.
    pub fn start(
        listener: std::net::TcpListener,
        local: Member,
        incarnation: u64,
        cfg: &ChannelConfig,
        handler: Arc<dyn ReceiverHandler>,
    ) -> Result<NioReceiver, ChannelError> {
        let local_addr = listener.local_addr().map_err(ChannelError::Io)?;
        listener.set_nonblocking(true).map_err(ChannelError::Io)?;
        let mut listener = TcpListener::from_std(listener);
        let poll = Poll::new().map_err(ChannelError::Io)?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(ChannelError::Io)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(ChannelError::Io)?);
        let stopping = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(ReceiverStats::default());
        let rc = &cfg.receiver;
        // Each connection is in this queue at most once, and a closed connection keeps its slot
        // until its work is done, so the queue never holds more than max_connections entries
        // and the loop never blocks on it.
        let (work_tx, work_rx) = crossbeam_channel::bounded::<Arc<ConnShared>>(rc.max_connections);
        let (resume_tx, resume_rx) = crossbeam_channel::bounded::<usize>(rc.max_connections);
        let (release_tx, release_rx) = crossbeam_channel::bounded::<usize>(rc.max_connections);
        let (recycle_tx, recycled) = crossbeam_channel::bounded::<Vec<u8>>(RECYCLED_BUFFERS);
        let ctl = Arc::new(LoopCtl {
            waker: waker.clone(),
            resume_tx,
            release_tx,
            recycle_tx,
            stats: stats.clone(),
            board: OutcomeBoard {
                outcomes: Mutex::new(SyncOutcomes::new(SYNC_OUTCOMES)),
                done: Condvar::new(),
            },
        });
        let low_water = rc.max_queued_bytes_per_connection / 2;
        let mut threads = Vec::with_capacity(rc.max_threads + 1);
        for i in 0..rc.max_threads {
            let (rx, handler, ctl) = (work_rx.clone(), handler.clone(), ctl.clone());
            let t = std::thread::Builder::new()
                .name(format!("tribecast-rx-worker-{i}"))
                .spawn(move || worker(rx, handler, ctl, low_water))
                .map_err(ChannelError::Io)?;
            threads.push(t);
        }
        let mut el = EventLoop {
            poll,
            listener,
            conns: Vec::new(),
            free: Vec::new(),
            open: 0,
            dedup: DedupTable::new(DEDUP_LANES),
            out: RxOutput::default(),
            ready_again: VecDeque::new(),
            work_tx,
            resume_rx,
            release_rx,
            recycled,
            stopping: stopping.clone(),
            local,
            incarnation,
            cluster: cfg.cluster_name.clone(),
            max_frame_size: cfg.max_frame_size,
            selector_timeout: rc.selector_timeout,
            max_connections: rc.max_connections,
            max_queued: rc.max_queued_bytes_per_connection,
            handshake_timeout: rc.handshake_timeout,
            next_sweep: std::time::Instant::now() + rc.handshake_timeout,
            grown: false,
            ctl,
            handler,
            key: cfg.cluster_key.clone(),
            refusals: RateLimit {
                last: None,
                held: 0,
            },
        };
        let t = std::thread::Builder::new()
            .name(format!("tribecast-rx-{local_addr}"))
            .spawn(move || el.run())
            .map_err(ChannelError::Io)?;
        threads.push(t);
        info!(
            "Receiver listening on {local_addr} with {} worker threads",
            rc.max_threads
        );
        Ok(NioReceiver {
            local_addr,
            waker,
            stopping,
            threads,
            stats,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting and reading, closes every connection and joins all threads. Messages
    /// already read are processed first. Safe to call twice.
    pub fn stop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Err(e) = self.waker.wake() {
            warn!(
                "Receiver {}: cannot wake event loop to stop: {e}",
                self.local_addr
            );
        }
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                warn!("Receiver {}: a thread panicked", self.local_addr);
            }
        }
    }
}

impl Drop for NioReceiver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What workers use to talk back to the loop.
struct LoopCtl {
    waker: Arc<Waker>,
    resume_tx: Sender<usize>,
    /// Slots of closed connections whose last work a worker finished.
    release_tx: Sender<usize>,
    recycle_tx: Sender<Vec<u8>>,
    stats: Arc<ReceiverStats>,
    board: OutcomeBoard,
}

/// Outcomes of synchronized-ack frames: the loop records a frame as pending when it accepts it,
/// the worker that ran the listeners records the result, and a worker answering a retry of that
/// frame (which may have come on another connection) waits for it.
struct OutcomeBoard {
    outcomes: Mutex<SyncOutcomes>,
    done: Condvar,
}

impl OutcomeBoard {
    fn finish(&self, key: LaneKey, seq: u64, result: &Result<(), String>) {
        self.outcomes.lock().finish(key, seq, result);
        self.done.notify_all();
    }

    /// The original's outcome, waiting while it is still being processed.
    fn wait(&self, key: &LaneKey, seq: u64) -> Option<Result<(), String>> {
        let deadline = std::time::Instant::now() + REACK_WAIT;
        let mut o = self.outcomes.lock();
        loop {
            match o.lookup(key, seq) {
                Outcome::Done(r) => return Some(r),
                Outcome::Unknown => {
                    return Some(Err("outcome of the original unknown (too old)".into()))
                }
                Outcome::Pending => {
                    if self.done.wait_until(&mut o, deadline).timed_out() {
                        return None;
                    }
                }
            }
        }
    }
}

enum Item {
    Hello(Arc<Member>),
    Batch(Batch),
    /// Retries of synchronized-ack frames, to answer with their originals' outcomes.
    ReAck(Vec<u64>),
    Leave(Arc<Member>),
}

/// Complete data frames read from one connection in one go; `deliveries` index into `data`.
struct Batch {
    data: Vec<u8>,
    deliveries: Vec<Delivery>,
}

#[derive(Default)]
struct Mailbox {
    items: VecDeque<Item>,
    scheduled: bool,
    /// The loop closed the connection while a worker still had its work: the slot stays taken
    /// until that worker hands it back (`LoopCtl::release_tx`).
    closed: bool,
    bytes: usize,
    paused: bool,
    peer: Option<Arc<Member>>,
    key: Option<LaneKey>,
    /// The peer's counters, looked up by the first worker to deliver from it.
    counters: Option<Arc<MemberCounters>>,
}

/// Replies (handshake answers, acks) written from the loop and from workers.
struct ReplyWriter {
    stream: std::net::TcpStream,
    pending: Vec<u8>,
    broken: bool,
    /// Closed because the peer left this many bytes of answers unread; the loop says so when
    /// it sees the connection end.
    unread: Option<usize>,
    /// On a keyed connection, once the peer proved it holds the key: seals every reply. Sealing
    /// happens here, under the writer's lock, so the nonce order is the order on the wire.
    sealer: Option<Sealer>,
    sealed: Vec<u8>,
}

impl ReplyWriter {
    /// Writes plain frames, sealed first if the connection is keyed.
    fn write(&mut self, bytes: &[u8]) {
        if self.broken {
            return;
        }
        if let Some(sealer) = self.sealer.as_mut() {
            let mut sealed = std::mem::take(&mut self.sealed);
            sealed.clear();
            let r = crate::wire::sealed::seal_frames(sealer, bytes, false, &mut sealed);
            match r {
                Ok(()) => self.write_raw(&sealed),
                Err(e) => {
                    warn!("Cannot seal a reply: {e}; closing the connection");
                    self.broken = true;
                    let _ = self.stream.shutdown(Shutdown::Both);
                }
            }
            self.sealed = sealed;
        } else {
            self.write_raw(bytes);
        }
    }

    fn write_raw(&mut self, bytes: &[u8]) {
        if self.broken {
            return;
        }
        if self.pending.is_empty() {
            match self.stream.write(bytes) {
                Ok(n) if n == bytes.len() => return,
                Ok(n) => self.pending.extend_from_slice(&bytes[n..]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.pending.extend_from_slice(bytes)
                }
                Err(_) => self.broken = true, // the loop sees the error on its side and closes
            }
        } else {
            self.pending.extend_from_slice(bytes);
        }
        if self.pending.len() > MAX_PENDING_REPLY {
            self.unread = Some(self.pending.len());
            self.broken = true;
            let _ = self.stream.shutdown(Shutdown::Both);
        }
    }

    /// Called by the loop when the socket became writable again.
    fn flush(&mut self) {
        while !self.pending.is_empty() && !self.broken {
            match self.stream.write(&self.pending) {
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => self.broken = true,
            }
        }
    }
}

struct ConnShared {
    token: usize,
    peer_addr: SocketAddr,
    mailbox: Mutex<Mailbox>,
    writer: Mutex<ReplyWriter>,
}

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    filled: usize,
    session: RxSession,
    shared: Arc<ConnShared>,
    paused: bool,
    /// When it was accepted: a connection still without a handshake `handshake_timeout` later
    /// is closed.
    accepted: std::time::Instant,
}

struct EventLoop {
    poll: Poll,
    listener: TcpListener,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    open: usize,
    dedup: DedupTable,
    out: RxOutput,
    ready_again: VecDeque<usize>,
    work_tx: Sender<Arc<ConnShared>>,
    resume_rx: Receiver<usize>,
    release_rx: Receiver<usize>,
    recycled: Receiver<Vec<u8>>,
    stopping: Arc<AtomicBool>,
    local: Member,
    /// Ours, sent back in every `HandshakeAccept`.
    incarnation: u64,
    cluster: String,
    max_frame_size: u32,
    selector_timeout: std::time::Duration,
    max_connections: usize,
    max_queued: usize,
    handshake_timeout: std::time::Duration,
    /// Next look for connections past their handshake deadline.
    next_sweep: std::time::Instant,
    /// Read buffers grew (or were handed to workers) since they were last given back.
    grown: bool,
    ctl: Arc<LoopCtl>,
    handler: Arc<dyn ReceiverHandler>,
    key: Option<ClusterKey>,
    refusals: RateLimit,
}

/// At most one log line per period; counts what it held back.
struct RateLimit {
    last: Option<std::time::Instant>,
    held: u64,
}

impl RateLimit {
    /// Whether to log now, and how many were held back since the last line.
    fn allow(&mut self) -> Option<u64> {
        let now = std::time::Instant::now();
        if self
            .last
            .is_none_or(|t| now.duration_since(t) >= REFUSAL_LOG_EVERY)
        {
            self.last = Some(now);
            Some(std::mem::take(&mut self.held))
        } else {
            self.held += 1;
            None
        }
    }
}

impl EventLoop {
    fn run(&mut self) {
        let mut events = Events::with_capacity(256);
        // Connections past their handshake deadline are closed within half of it.
        let sweep_every = (self.handshake_timeout / 2).max(std::time::Duration::from_millis(10));
        while !self.stopping.load(Ordering::SeqCst) {
            let timeout = if !self.ready_again.is_empty() {
                Some(Default::default())
            } else if self.grown {
                Some(self.selector_timeout.min(sweep_every).min(IDLE_RELEASE))
            } else {
                Some(self.selector_timeout.min(sweep_every))
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                warn!("Receiver event loop failed: {e}; stopping it");
                break;
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(),
                    WAKER => {
                        while let Ok(idx) = self.resume_rx.try_recv() {
                            self.resume(idx);
                        }
                        while let Ok(idx) = self.release_rx.try_recv() {
                            self.free_slot(idx);
                        }
                    }
                    Token(t) => {
                        let idx = t - FIRST_CONN;
                        if ev.is_writable() {
                            if let Some(Some(c)) = self.conns.get(idx) {
                                c.shared.writer.lock().flush();
                            }
                        }
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            self.read(idx);
                        }
                    }
                }
            }
            for _ in 0..self.ready_again.len() {
                if let Some(idx) = self.ready_again.pop_front() {
                    self.read(idx);
                }
            }
            // A burst is over (nothing happened for IDLE_RELEASE): what it grew goes back now.
            if events.is_empty() && self.ready_again.is_empty() && self.grown {
                self.shrink_buffers();
            }
            let now = std::time::Instant::now();
            if now >= self.next_sweep {
                self.next_sweep = now + sweep_every;
                self.close_unintroduced(now);
                self.shrink_buffers();
            }
        }
        for idx in 0..self.conns.len() {
            self.close(idx, None);
        }
    }

    /// Closes the connections that did not complete their handshake in time: idle or trickling
    /// connections from strangers must not hold `max_connections` slots and read buffers.
    fn close_unintroduced(&mut self, now: std::time::Instant) {
        for idx in 0..self.conns.len() {
            let late = matches!(&self.conns[idx], Some(c) if c.session.peer().is_none()
                && now.duration_since(c.accepted) >= self.handshake_timeout);
            if late {
                let reason = format!(
                    "no handshake within handshake_timeout ({:?})",
                    self.handshake_timeout
                );
                self.close(idx, Some((reason, CloseKind::Refused)));
            }
        }
    }

    /// Gives back what a burst grew, once the receiver was idle for `IDLE_RELEASE` and at each
    /// sweep: the spare read buffers (a burst fills the pool with up to `RECYCLED_BUFFERS` of
    /// `MAX_READ_BUF`; the next one refills it), and the read buffer of every connection holding
    /// no partial frame, back to `INITIAL_BUF`. Kept, they stayed for the life of the process
    /// (about 12 MiB after 10,000 creations of 1 KiB, docs/PERFORMANCE.md). While workers still
    /// hold a connection's batches (their buffers come back to the pool) or a buffer holds a
    /// partial frame, the next idle turn looks again.
    fn shrink_buffers(&mut self) {
        let mut released = 0;
        while let Ok(spare) = self.recycled.try_recv() {
            released += spare.len();
        }
        let mut held = 0;
        let mut again = false;
        for c in self.conns.iter_mut().flatten() {
            if c.filled == 0 && c.buf.len() > INITIAL_BUF {
                released += c.buf.len() - INITIAL_BUF;
                c.buf = vec![0; INITIAL_BUF];
            }
            held += c.buf.len();
            again |= c.buf.len() > INITIAL_BUF || c.shared.mailbox.lock().scheduled;
        }
        self.grown = again;
        let stats = &self.ctl.stats;
        stats
            .read_buffer_bytes_released
            .fetch_add(released as u64, Ordering::Relaxed);
        stats.read_buffer_bytes.set(held as u64, Ordering::Relaxed);
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, addr)) => self.add_conn(stream, addr),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE and the like: leave the rest queued in the backlog for next time.
                    warn!("Receiver accept failed: {e}");
                    return;
                }
            }
        }
    }

    fn add_conn(&mut self, stream: TcpStream, addr: SocketAddr) {
        if self.open >= self.max_connections {
            if let Some(held) = self.refusals.allow() {
                warn!(
                    "Refusing connection from {addr}: max_connections ({}) reached ({held} similar refusals not logged in the last {REFUSAL_LOG_EVERY:?})",
                    self.max_connections
                );
            }
            self.ctl
                .stats
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        let std_stream: std::net::TcpStream = stream.into();
        let _ = std_stream.set_nodelay(true);
        let writer = match std_stream.try_clone() {
            Ok(w) => w,
            Err(e) => {
                warn!("Refusing connection from {addr}: cannot clone socket: {e}");
                return;
            }
        };
        let mut stream = TcpStream::from_std(std_stream);
        let idx = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(idx + FIRST_CONN),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!("Refusing connection from {addr}: cannot register: {e}");
            self.free.push(idx);
            return;
        }
        let shared = Arc::new(ConnShared {
            token: idx,
            peer_addr: addr,
            mailbox: Mutex::new(Mailbox::default()),
            writer: Mutex::new(ReplyWriter {
                stream: writer,
                pending: Vec::new(),
                broken: false,
                unread: None,
                sealer: None,
                sealed: Vec::new(),
            }),
        });
        self.conns[idx] = Some(Conn {
            stream,
            buf: vec![0; INITIAL_BUF],
            filled: 0,
            session: RxSession::default(),
            shared,
            paused: false,
            accepted: std::time::Instant::now(),
        });
        self.open += 1;
        self.ctl
            .stats
            .connections_accepted
            .fetch_add(1, Ordering::Relaxed);
        debug!("Accepted connection from {addr}");
        // Bytes may have arrived before registration; edge-triggered readiness would not repeat.
        self.read(idx);
    }

    fn resume(&mut self, idx: usize) {
        if let Some(Some(c)) = self.conns.get_mut(idx) {
            if c.paused {
                c.paused = false;
                self.read(idx);
            }
        }
    }

    /// Reads what the connection has, up to a fair share, and processes the frames.
    fn read(&mut self, idx: usize) {
        let max_buf =
            MAX_READ_BUF.max(crate::wire::frame::HEADER_LEN + self.max_frame_size as usize);
        for _ in 0..READS_PER_TURN {
            let Some(Some(c)) = self.conns.get_mut(idx) else {
                return;
            };
            if c.paused {
                return;
            }
            if c.filled == c.buf.len() {
                // Only reached while a frame is incomplete and larger than the buffer: the
                // session has already checked its length against max_frame_size.
                let len = (c.buf.len() * 2).min(max_buf);
                c.buf.resize(len, 0);
                self.grown = true;
            }
            let free = c.buf.len() - c.filled;
            match c.stream.read(&mut c.buf[c.filled..]) {
                Ok(0) => {
                    let unread = c.shared.writer.lock().unread;
                    let reason = if let Some(n) = unread {
                        Some(format!("peer does not read its acks ({n} bytes pending)"))
                    } else if c.filled > 0 {
                        Some(format!(
                            "closed in the middle of a frame ({} bytes buffered)",
                            c.filled
                        ))
                    } else if c.session.peer().is_none() {
                        Some("closed before handshake".into())
                    } else {
                        None
                    };
                    self.close(idx, reason.map(|r| (r, CloseKind::Error)));
                    return;
                }
                Ok(n) => {
                    c.filled += n;
                    if n == free && c.buf.len() < MAX_READ_BUF {
                        let len = (c.buf.len() * 2).min(MAX_READ_BUF);
                        c.buf.resize(len, 0);
                        self.grown = true;
                    }
                    self.ctl
                        .stats
                        .bytes_received
                        .fetch_add(n as u64, Ordering::Relaxed);
                    if !self.process(idx) {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.close(idx, Some((format!("read error: {e}"), CloseKind::Error)));
                    return;
                }
            }
        }
        self.ready_again.push_back(idx);
    }

    /// Runs the session over the buffered bytes; returns false if the connection was closed.
    fn process(&mut self, idx: usize) -> bool {
        let Some(Some(c)) = self.conns.get_mut(idx) else {
            return false;
        };
        let settings = RxSettings {
            cluster: &self.cluster,
            local: &self.local,
            incarnation: self.incarnation,
            max_frame_size: self.max_frame_size,
            key: self.key.as_ref(),
        };
        self.out.clear();
        let result = c.session.on_bytes(
            &mut c.buf[..c.filled],
            &settings,
            &mut self.dedup,
            &mut self.out,
        );
        let new_sealer = self.out.reply_sealer.take();
        let out = &self.out;
        let stats = &self.ctl.stats;
        stats
            .duplicates_dropped
            .fetch_add(out.duplicates, Ordering::Relaxed);
        stats.frames_received.fetch_add(
            out.deliveries.len() as u64 + out.duplicates,
            Ordering::Relaxed,
        );
        if new_sealer.is_some() || !out.reply.is_empty() {
            let mut w = c.shared.writer.lock();
            if new_sealer.is_some() {
                w.sealer = new_sealer;
            }
            w.write(&out.reply);
        }
        let key = c.session.lane_key();
        if let Some(key) = key {
            if out.deliveries.iter().any(|d| d.sync_ack && !d.ping) {
                let mut o = self.ctl.board.outcomes.lock();
                for d in out.deliveries.iter().filter(|d| d.sync_ack && !d.ping) {
                    o.begin(key, d.seq);
                }
            }
        }
        let mut schedule = false;
        let mut handed_off = false;
        {
            let mut mb = c.shared.mailbox.lock();
            if let Some(m) = &out.hello {
                let m = Arc::new(m.clone());
                debug!("Connection from {} is member [{m}]", c.shared.peer_addr);
                mb.peer = Some(m.clone());
                mb.key = key;
                self.handler.peer_connection(&m, true);
                // The goodbye connection of a leaving member must not announce it again.
                if key.is_some_and(|k| k.lane != super::sender::LEAVE_LANE) {
                    mb.items.push_back(Item::Hello(m));
                    schedule = true;
                }
            }
            if let (Some(first), Some(last)) = (out.deliveries.first(), out.deliveries.last()) {
                let (data, base) = if last.end - first.start < HANDOFF_MIN {
                    (c.buf[first.start..last.end].to_vec(), first.start)
                } else {
                    // Many bytes: give the worker the read buffer itself and go on in a
                    // recycled one holding the unparsed tail. Saves a copy and fresh pages.
                    let used = *result.as_ref().unwrap_or(&c.filled);
                    let tail = c.filled - used;
                    let mut next = self.recycled.try_recv().unwrap_or_default();
                    if next.len() < INITIAL_BUF.max(tail) {
                        next.resize(INITIAL_BUF.max(tail), 0);
                    }
                    next[..tail].copy_from_slice(&c.buf[used..c.filled]);
                    c.filled = tail;
                    handed_off = true;
                    self.grown = true;
                    (std::mem::replace(&mut c.buf, next), 0)
                };
                let deliveries = out
                    .deliveries
                    .iter()
                    .map(|d| Delivery {
                        start: d.start - base,
                        end: d.end - base,
                        ..*d
                    })
                    .collect();
                mb.bytes += data.len();
                mb.items.push_back(Item::Batch(Batch { data, deliveries }));
                schedule = true;
            }
            if !out.reacks.is_empty() {
                mb.bytes += out.reacks.len() * REACK_COST;
                mb.items.push_back(Item::ReAck(out.reacks.clone()));
                schedule = true;
            }
            if mb.bytes > self.max_queued {
                mb.paused = true;
                c.paused = true;
            }
            if out.leave {
                if let Some(p) = mb.peer.clone() {
                    mb.items.push_back(Item::Leave(p));
                    schedule = true;
                }
            }
            if schedule && !mb.scheduled {
                mb.scheduled = true;
            } else {
                schedule = false;
            }
        }
        if schedule {
            // Never blocks: see the channel's capacity.
            let _ = self.work_tx.send(c.shared.clone());
        }
        match result {
            Ok(used) => {
                if handed_off {
                    // The tail already moved with the buffer swap.
                } else {
                    c.buf.copy_within(used..c.filled, 0);
                    c.filled -= used;
                }
                true
            }
            Err(RxClose::Leave) => {
                self.close(idx, None);
                false
            }
            Err(reason) => {
                let kind = match reason {
                    RxClose::Refused(_) => CloseKind::Refused,
                    RxClose::Auth(_) => CloseKind::Auth,
                    _ => CloseKind::Error,
                };
                self.close(idx, Some((reason.to_string(), kind)));
                false
            }
        }
    }

    /// Closes a connection; `why` is logged (refusals and authentication failures rate-limited).
    fn close(&mut self, idx: usize, why: Option<(String, CloseKind)>) {
        let Some(slot) = self.conns.get_mut(idx) else {
            return;
        };
        let Some(mut c) = slot.take() else { return };
        let peer = c
            .session
            .peer()
            .map_or_else(|| "unknown member".to_string(), |m| format!("member [{m}]"));
        match why {
            Some((reason, kind)) => {
                let stats = &self.ctl.stats;
                match kind {
                    CloseKind::Error if c.session.peer().is_some() => {
                        warn!(
                            "Closing connection from {} ({peer}): {reason}",
                            c.shared.peer_addr
                        );
                        stats
                            .connections_closed_on_error
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    CloseKind::Error => {
                        // Before a handshake anyone can cause this: rate-limited, as refusals.
                        if let Some(held) = self.refusals.allow() {
                            warn!(
                                "Closing connection from {} ({peer}): {reason} ({held} similar refusals not logged in the last {REFUSAL_LOG_EVERY:?})",
                                c.shared.peer_addr
                            );
                        }
                        stats
                            .connections_closed_on_error
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    CloseKind::Refused | CloseKind::Auth => {
                        if let Some(held) = self.refusals.allow() {
                            warn!(
                                "Closing connection from {} ({peer}): {reason} ({held} similar refusals not logged in the last {REFUSAL_LOG_EVERY:?})",
                                c.shared.peer_addr
                            );
                        }
                        if kind == CloseKind::Auth {
                            stats.auth_failures.fetch_add(1, Ordering::Relaxed);
                            stats
                                .connections_closed_on_error
                                .fetch_add(1, Ordering::Relaxed);
                        } else {
                            stats.connections_refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            None => debug!("Connection from {} ({peer}) closed", c.shared.peer_addr),
        }
        let _ = self.poll.registry().deregister(&mut c.stream);
        {
            // Give a refusal or the last acks a chance to leave before the socket goes.
            let mut w = c.shared.writer.lock();
            w.flush();
        }
        let _ = c.stream.shutdown(Shutdown::Both);
        let mut mb = c.shared.mailbox.lock();
        if mb.scheduled && !self.stopping.load(Ordering::SeqCst) {
            // A worker still has this connection's work: the slot counts against
            // max_connections until it is done, which bounds the work queue.
            mb.closed = true;
        } else {
            if let Some(p) = mb.peer.take() {
                self.handler.peer_connection(&p, false);
            }
            drop(mb);
            self.free_slot(idx);
        }
    }

    fn free_slot(&mut self, idx: usize) {
        self.free.push(idx);
        self.open -= 1;
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum CloseKind {
    Error,
    Refused,
    Auth,
}

fn worker(
    rx: Receiver<Arc<ConnShared>>,
    handler: Arc<dyn ReceiverHandler>,
    ctl: Arc<LoopCtl>,
    low_water: usize,
) {
    let mut reply = Vec::new();
    while let Ok(conn) = rx.recv() {
        loop {
            let (item, peer, key, counters) = {
                let mut mb = conn.mailbox.lock();
                match mb.items.pop_front() {
                    Some(item) => {
                        if mb.counters.is_none() && matches!(item, Item::Batch(_)) {
                            mb.counters = mb.peer.as_ref().and_then(|p| handler.member_counters(p));
                        }
                        let counters = match item {
                            Item::Batch(_) => mb.counters.clone(),
                            _ => None,
                        };
                        (item, mb.peer.clone(), mb.key, counters)
                    }
                    None => {
                        mb.scheduled = false;
                        if mb.closed && ctl.release_tx.try_send(conn.token).is_ok() {
                            if let Some(p) = mb.peer.take() {
                                handler.peer_connection(&p, false);
                            }
                            let _ = ctl.waker.wake();
                        }
                        break;
                    }
                }
            };
            match item {
                Item::Hello(m) => handler.peer_hello(&m, key.map_or(0, |k| k.incarnation)),
                Item::Leave(m) => handler.peer_left(&m),
                Item::ReAck(seqs) => {
                    let cost = seqs.len() * REACK_COST;
                    if let Some(key) = key {
                        for seq in seqs {
                            match ctl.board.wait(&key, seq) {
                            Some(result) => sync_answer(&conn, seq, result, &mut reply),
                            None => warn!(
                                "Retried message {seq} from {}: original still not processed after {REACK_WAIT:?}; not answered",
                                conn.peer_addr
                            ),
                        }
                        }
                    }
                    release(&conn, &ctl, cost, low_water);
                }
                Item::Batch(batch) => {
                    if let (Some(peer), Some(key)) = (peer, key) {
                        deliver(
                            &conn,
                            &peer,
                            key,
                            &batch,
                            handler.as_ref(),
                            (&ctl, counters.as_deref()),
                            &mut reply,
                        );
                    }
                    let len = batch.data.len();
                    if (HANDOFF_MIN..=MAX_READ_BUF).contains(&len) {
                        // Full means enough spares already: this one is freed.
                        let _ = ctl.recycle_tx.try_send(batch.data);
                    }
                    release(&conn, &ctl, len, low_water);
                }
            }
        }
    }
}

/// A worker is done with `bytes` of the connection's mailbox: the loop reads it again once it
/// is down to `low_water`.
fn release(conn: &ConnShared, ctl: &LoopCtl, bytes: usize, low_water: usize) {
    let mut mb = conn.mailbox.lock();
    mb.bytes -= bytes;
    if mb.paused && mb.bytes <= low_water {
        mb.paused = false;
        if ctl.resume_tx.try_send(conn.token).is_ok() {
            let _ = ctl.waker.wake();
        }
    }
}

fn deliver(
    conn: &ConnShared,
    peer: &Member,
    key: LaneKey,
    batch: &Batch,
    handler: &dyn ReceiverHandler,
    (ctl, counters): (&LoopCtl, Option<&MemberCounters>),
    reply: &mut Vec<u8>,
) {
    // Messages and payload bytes handed up and not yet added to the peer's counters: added
    // once per batch, or before a synchronized ack (whose sender may then read them).
    let mut uncounted = (0u64, 0u64);
    let count = |uncounted: &mut (u64, u64)| {
        if let Some(c) = counters {
            c.received(uncounted.0, uncounted.1);
        }
        *uncounted = (0, 0);
    };
    for (i, d) in batch.deliveries.iter().enumerate() {
        if d.ping {
            // The read test: a worker got this far, which is what the pinger wants to know.
            sync_answer(conn, d.seq, Ok(()), reply);
            continue;
        }
        let result = match decode_body::<Envelope>(&batch.data[d.start..d.end]) {
            Ok(env) if env.sender == peer.id => {
                ctl.stats.messages_delivered.fetch_add(1, Ordering::Relaxed);
                uncounted.0 += 1;
                uncounted.1 += env.payload.len() as u64;
                handler.message_received(peer, env)
            }
            decoded => {
                let e = match decoded {
                    Ok(env) => format!(
                        "envelope names sender {}, not the member that shook hands",
                        env.sender
                    ),
                    Err(e) => format!("undecodable envelope: {e}"),
                };
                warn!(
                    "Closing connection from {} (member [{peer}]): {e}",
                    conn.peer_addr
                );
                ctl.stats
                    .connections_closed_on_error
                    .fetch_add(1, Ordering::Relaxed);
                let _ = conn.writer.lock().stream.shutdown(Shutdown::Both);
                // Settle what this batch left pending so no retry waits for it.
                for d in batch.deliveries[i..]
                    .iter()
                    .filter(|d| d.sync_ack && !d.ping)
                {
                    ctl.board
                        .finish(key, d.seq, &Err(format!("undecodable envelope: {e}")));
                }
                count(&mut uncounted);
                return;
            }
        };
        if d.sync_ack {
            count(&mut uncounted);
            ctl.board.finish(key, d.seq, &result);
            sync_answer(conn, d.seq, result, reply);
        } else if let Err(reason) = result {
            debug!("Listener failed on a message from [{peer}] (no ack requested): {reason}");
        }
    }
    count(&mut uncounted);
}

/// Writes the synchronized ack (or fail-ack) of frame `seq`.
fn sync_answer(conn: &ConnShared, seq: u64, result: Result<(), String>, reply: &mut Vec<u8>) {
    reply.clear();
    match result {
        Ok(()) => encode_frame(reply, FrameKind::Ack, 0, seq, &[]),
        Err(reason) => encode_frame(
            reply,
            FrameKind::FailAck,
            0,
            seq,
            &encode_body(&Reason { reason }),
        ),
    }
    conn.writer.lock().write(reply);
}

#[cfg(test)]
mod tests {
    use super::RateLimit;

    #[test]
    fn refusal_logs_are_rate_limited() {
        let mut r = RateLimit {
            last: None,
            held: 0,
        };
        assert_eq!(r.allow(), Some(0), "the first is logged");
        for _ in 0..1000 {
            assert_eq!(r.allow(), None, "the rest of the period is held back");
        }
        assert_eq!(r.held, 1000, "and counted for the next line");
    }
}
