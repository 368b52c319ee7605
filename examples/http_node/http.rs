//! A small synchronous HTTP/1.1 server: one mio event loop accepts connections and reads them,
//! and only a complete request (head and body) is handed to a fixed pool of worker threads
//! over a bounded channel; the answer goes back to the loop, which writes it. A client that is
//! slow, idle or sends a byte now and then holds a slot in the connection table and some
//! bytes of buffer, never a thread, and each request has one deadline for its whole head and
//! body. Malformed input gets a 4xx answer and the connection is closed; nothing a client sends
//! can panic a thread or grow memory past the limits. This is the same shape as tribecast's own
//! receiver (DESIGN.md, "transport"): enough for the demo node and for embedding tribecast in a
//! server of your own.
//!
//! Bounds and what happens when they are reached:
//! - connections: at most [`Limits::max_connections`] open; one more is answered `503` at once
//!   and closed (up to 64 of those are kept for a second to read what they sent, so the answer
//!   is not lost to a reset; past that they are closed at once);
//! - a request: head [`Limits::max_head_bytes`] (`431`), body [`Limits::max_body_bytes`]
//!   (`413`), [`Limits::max_headers`] (`431`); head and body within
//!   [`Limits::request_timeout`] of the first byte (`408`);
//! - idle: a connection with no request started is closed after [`Limits::keep_alive`];
//! - the workers' queue: [`Limits::max_queued_requests`] complete requests waiting; one more is
//!   answered `503` by the event loop;
//! - writing an answer: within [`Limits::request_timeout`], or the connection is closed.
#![allow(dead_code)] // shared by http_node and cluster_demo, which use different parts

use crossbeam_channel::{Receiver, Sender, TrySendError};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use serde::Serialize;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Bounds on what clients may send and how long they may take.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Request line and headers together.
    pub max_head_bytes: usize,
    pub max_body_bytes: usize,
    pub max_headers: usize,
    /// Time to receive one whole request (head and body) once its first byte arrived, and to
    /// write an answer.
    pub request_timeout: Duration,
    /// How long a connection may stay open with no request started (a new one, or between
    /// keep-alive requests).
    pub keep_alive: Duration,
    /// Requests served on one connection before it is closed.
    pub max_requests_per_connection: usize,
    /// Connections open at once; one more is answered 503 and closed.
    pub max_connections: usize,
    /// Complete requests waiting for a worker; one more is answered 503.
    pub max_queued_requests: usize,
    /// On stop, how long requests already being served may take to be answered.
    pub stop_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: 8 * 1024,
            max_body_bytes: 64 * 1024,
            max_headers: 64,
            request_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(5),
            max_requests_per_connection: 100,
            max_connections: 1024,
            max_queued_requests: 256,
            stop_grace: Duration::from_secs(2),
        }
    }
}

/// A parsed request.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// The path part of the request target, not decoded.
    pub path: String,
    /// What follows `?`, not decoded; empty when none.
    pub query: String,
    /// HTTP/1.0 or HTTP/1.1.
    pub http10: bool,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The value of cookie `name` from any `Cookie` header (parsed by the `cookie` crate;
    /// malformed pairs are skipped).
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"))
            .flat_map(|(_, v)| cookie::Cookie::split_parse(v.as_str()))
            .filter_map(Result::ok)
            .find(|c| c.name() == name)
            .map(|c| c.value_trimmed().to_string())
    }

    fn keep_alive(&self) -> bool {
        let conn = self.header("connection").unwrap_or("");
        let has = |t: &str| conn.split(',').any(|x| x.trim().eq_ignore_ascii_case(t));
        if self.http10 {
            has("keep-alive")
        } else {
            !has("close")
        }
    }
}

/// An answer.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            headers: vec![("Content-Type".into(), content_type.into())],
            body: body.into(),
        }
    }

    pub fn text(status: u16, body: impl Into<String>) -> Response {
        let mut b = body.into();
        b.push('\n');
        Response::new(status, "text/plain; charset=utf-8", b)
    }

    /// `body` as JSON (serde_json), or a 500 if it cannot be serialized.
    pub fn json(status: u16, body: &impl Serialize) -> Response {
        match serde_json::to_vec(body) {
            Ok(mut b) => {
                b.push(b'\n');
                Response::new(status, "application/json", b)
            }
            Err(e) => Response::text(500, format!("cannot serialize the answer: {e}")),
        }
    }

    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Response {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The bytes on the wire.
    fn encode(&self, keep: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.body.len());
        // Writing into a Vec cannot fail.
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\nContent-Length: {}\r\nConnection: {}\r\n",
            self.status,
            reason(self.status),
            self.body.len(),
            if keep { "keep-alive" } else { "close" }
        );
        for (n, v) in &self.headers {
            let _ = write!(out, "{n}: {v}\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        301 => "Moved Permanently",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// What the application does with a request.
pub type Handler = dyn Fn(&Request) -> Response + Send + Sync;

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
/// Connection `i` of the table is token `FIRST_CONN + i`.
const FIRST_CONN: usize = 2;
/// Bytes read per `read` call.
const READ_CHUNK: usize = 16 * 1024;
/// After a refused request, how long the rest of what the client sends is read and dropped
/// before closing (closing with unread bytes resets the connection, and the client could lose
/// the answer).
const LINGER: Duration = Duration::from_secs(1);
/// Connections past `max_connections` kept at once just to answer them 503 properly.
const REFUSED_LINGERING: usize = 64;
/// After a failed `accept` (out of descriptors), when to try again.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// A running server; stops (and joins its threads) on `stop` or drop.
pub struct HttpServer {
    addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    waker: Arc<Waker>,
    threads: Vec<JoinHandle<()>>,
}

/// A complete request for a worker.
struct Job {
    slot: usize,
    id: u64,
    may_keep: bool,
    req: Request,
}

/// A worker's answer for the event loop.
struct Done {
    slot: usize,
    id: u64,
    bytes: Vec<u8>,
    keep: bool,
}

impl HttpServer {
    /// Binds `addr` (port 0: the OS chooses) and serves with one event-loop thread and
    /// `workers` worker threads.
    pub fn start(
        addr: SocketAddr,
        workers: usize,
        limits: Limits,
        handler: Arc<Handler>,
    ) -> io::Result<HttpServer> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (job_tx, job_rx) = crossbeam_channel::bounded::<Job>(limits.max_queued_requests.max(1));
        // Every answer is for a connection in the table: at most `max_connections` in flight.
        let (done_tx, done_rx) = crossbeam_channel::bounded::<Done>(limits.max_connections.max(1));
        // Built up thread by thread: should a spawn fail, dropping it stops those already running.
        let mut server = HttpServer {
            addr,
            stopping: Arc::new(AtomicBool::new(false)),
            waker: waker.clone(),
            threads: Vec::new(),
        };
        for i in 0..workers.max(1) {
            let (rx, tx, waker, handler) = (
                job_rx.clone(),
                done_tx.clone(),
                waker.clone(),
                handler.clone(),
            );
            let t = std::thread::Builder::new()
                .name(format!("http-{i}"))
                // The handler's frames are small: a 256 KiB stack instead of 2 MiB keeps the footprint down.
                .stack_size(256 * 1024)
                .spawn(move || worker(&rx, &tx, &waker, &*handler))?;
            server.threads.push(t);
        }
        drop((job_rx, done_tx));
        let mut event_loop = EventLoop {
            poll,
            listener: Some(listener),
            conns: Vec::new(),
            free: Vec::new(),
            next_id: 0,
            limits,
            jobs: job_tx,
            done: done_rx,
            stopping: server.stopping.clone(),
            accept_retry: None,
            accept_failing: false,
        };
        event_loop.poll.registry().register(
            event_loop.listener.as_mut().expect("just set"),
            LISTENER,
            Interest::READABLE,
        )?;
        let t = std::thread::Builder::new()
            .name("http-io".into())
            .stack_size(256 * 1024)
            .spawn(move || event_loop.run())?;
        server.threads.push(t);
        Ok(server)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, closes idle connections, lets requests already being served be
    /// answered (within [`Limits::stop_grace`]) and joins every thread. Safe twice.
    pub fn stop(&mut self) {
        if self.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        let _ = self.waker.wake();
        // The event loop goes first (its end closes the workers' queue), then the workers.
        while let Some(t) = self.threads.pop() {
            let _ = t.join();
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn worker(jobs: &Receiver<Job>, done: &Sender<Done>, waker: &Waker, handler: &Handler) {
    while let Ok(job) = jobs.recv() {
        let keep = job.may_keep && job.req.keep_alive();
        // A bug in a handler answers 500 and costs this request, not the worker.
        let resp = catch_unwind(AssertUnwindSafe(|| handler(&job.req)))
            .unwrap_or_else(|_| Response::text(500, "internal error"));
        let d = Done {
            slot: job.slot,
            id: job.id,
            bytes: resp.encode(keep),
            keep,
        };
        if done.send(d).is_err() {
            return; // the event loop is gone: stopping
        }
        let _ = waker.wake();
    }
}

enum State {
    /// Waiting for (the rest of) a request. `started`: its first byte came, and the deadline
    /// is the request's, not the idle time's.
    Reading { started: bool },
    /// A worker has the request; nothing is read meanwhile (pipelined bytes wait).
    Busy,
    /// Writing an answer; then keep the connection or close it.
    Writing {
        out: Vec<u8>,
        pos: usize,
        keep: bool,
    },
    /// A refused request was answered: read and drop until the client closes or the deadline.
    Draining,
}

struct Conn {
    stream: TcpStream,
    /// Unique per connection: an answer for a closed connection whose slot was reused is dropped.
    id: u64,
    buf: Vec<u8>,
    state: State,
    deadline: Instant,
    served: usize,
    /// The client closed its side.
    eof: bool,
}

struct EventLoop {
    poll: Poll,
    listener: Option<TcpListener>,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    next_id: u64,
    limits: Limits,
    jobs: Sender<Job>,
    done: Receiver<Done>,
    stopping: Arc<AtomicBool>,
    /// Set after a failed `accept`: when to try again.
    accept_retry: Option<Instant>,
    /// The last `accept` failed (its warning is logged once).
    accept_failing: bool,
}

impl EventLoop {
    fn run(mut self) {
        let mut events = Events::with_capacity(256);
        let mut stop_by: Option<Instant> = None;
        loop {
            if stop_by.is_none() && self.stopping.load(Ordering::SeqCst) {
                stop_by = Some(Instant::now() + self.limits.stop_grace);
                self.begin_stop();
            }
            if let Some(by) = stop_by {
                if self.open() == 0 || Instant::now() >= by {
                    return;
                }
            }
            // Rounded up a millisecond so a deadline is past when the poll returns.
            let wake_at = self.next_deadline().into_iter().chain(stop_by).min();
            let timeout = wake_at
                .map(|d| d.saturating_duration_since(Instant::now()) + Duration::from_millis(1));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                log::error!("HTTP event loop: poll failed: {e}; the server stops");
                return;
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(),
                    WAKER => {}
                    Token(t) => self.drive(t - FIRST_CONN),
                }
            }
            while let Ok(d) = self.done.try_recv() {
                self.answer(d);
            }
            if self.accept_retry.is_some_and(|at| Instant::now() >= at) {
                self.accept_retry = None;
                self.accept();
            }
            self.expire();
        }
    }

    fn open(&self) -> usize {
        self.conns.len() - self.free.len()
    }

    /// No new connections; idle ones are closed; the others finish their request.
    fn begin_stop(&mut self) {
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        for slot in 0..self.conns.len() {
            let idle = matches!(
                &self.conns[slot],
                Some(Conn {
                    state: State::Reading { .. } | State::Draining,
                    ..
                })
            );
            if idle {
                self.close(slot);
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let conns = self
            .conns
            .iter()
            .flatten()
            .filter(|c| !matches!(c.state, State::Busy))
            .map(|c| c.deadline);
        conns.chain(self.accept_retry).min()
    }

    fn accept(&mut self) {
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            let (mut stream, _) = match listener.accept() {
                Ok(s) => {
                    self.accept_failing = false;
                    s
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of descriptors and the like: the pending connections wait in the
                    // backlog, and the next try is on a timer, as no new event may come.
                    // Logged once per run of failures, not every retry.
                    if self.accept_failing {
                        log::debug!("HTTP accept failed again: {e}");
                    } else {
                        log::warn!("HTTP accept failed: {e}; retrying every {ACCEPT_RETRY:?}");
                    }
                    self.accept_failing = true;
                    self.accept_retry = Some(Instant::now() + ACCEPT_RETRY);
                    return;
                }
            };
            // Past the limit a connection is only answered 503: kept (a few) until that is
            // written and the client's request read and dropped, or a reset could lose it.
            let over = self.open() >= self.limits.max_connections;
            if over && self.open() >= self.limits.max_connections + REFUSED_LINGERING {
                // Best effort on a fresh socket, whose send buffer is empty.
                let busy = Response::text(503, "too many connections").encode(false);
                let _ = stream.write(&busy);
                continue; // dropped: closed
            }
            let _ = stream.set_nodelay(true);
            let slot = self.free.pop().unwrap_or_else(|| {
                self.conns.push(None);
                self.conns.len() - 1
            });
            let token = Token(FIRST_CONN + slot);
            if let Err(e) = self.poll.registry().register(
                &mut stream,
                token,
                Interest::READABLE | Interest::WRITABLE,
            ) {
                log::warn!("HTTP: cannot register a connection: {e}");
                self.free.push(slot);
                continue;
            }
            self.next_id += 1;
            let mut c = Conn {
                stream,
                id: self.next_id,
                buf: Vec::new(),
                state: State::Reading { started: false },
                deadline: Instant::now() + self.limits.keep_alive,
                served: 0,
                eof: false,
            };
            if over {
                refuse(&mut c, &self.limits, 503, "too many connections");
                c.deadline = Instant::now() + LINGER;
            }
            self.conns[slot] = Some(c);
            // Bytes may already be there: the edge came before the registration.
            self.drive(slot);
        }
    }

    fn close(&mut self, slot: usize) {
        if let Some(Some(mut c)) = self.conns.get_mut(slot).map(Option::take) {
            let _ = self.poll.registry().deregister(&mut c.stream);
            self.free.push(slot);
        }
    }

    /// A worker's answer: write it.
    fn answer(&mut self, d: Done) {
        let Some(Some(c)) = self.conns.get_mut(d.slot) else {
            return;
        };
        if c.id != d.id || !matches!(c.state, State::Busy) {
            return;
        }
        c.served += 1;
        c.state = State::Writing {
            out: d.bytes,
            pos: 0,
            keep: d.keep,
        };
        c.deadline = Instant::now() + self.limits.request_timeout;
        self.drive(d.slot);
    }

    /// Connections past their deadline: a request not received in time gets 408, an idle
    /// connection or an answer not taken in time is closed.
    fn expire(&mut self) {
        let now = Instant::now();
        for slot in 0..self.conns.len() {
            let Some(c) = &mut self.conns[slot] else {
                continue;
            };
            if matches!(c.state, State::Busy) || c.deadline > now {
                continue;
            }
            match c.state {
                State::Reading { started: true } => {
                    refuse(c, &self.limits, 408, "request not received in time");
                    self.drive(slot);
                }
                _ => self.close(slot),
            }
        }
    }

    /// Moves the connection on as far as it goes without blocking.
    fn drive(&mut self, slot: usize) {
        let stopping = self.stopping.load(Ordering::SeqCst);
        let step = loop {
            let Some(Some(c)) = self.conns.get_mut(slot) else {
                return;
            };
            match step(c, slot, &self.limits, &self.jobs, stopping) {
                Step::Again => {}
                s => break s,
            }
        };
        if matches!(step, Step::Close) {
            self.close(slot);
        }
    }
}

/// What one step of a connection ended in.
enum Step {
    /// Waiting for the socket or a worker.
    Open,
    /// Done with it.
    Close,
    /// The state changed: step again.
    Again,
}

/// Switches `c` to writing a refusal, closed once written.
fn refuse(c: &mut Conn, limits: &Limits, status: u16, why: &str) {
    c.state = State::Writing {
        out: Response::text(status, why).encode(false),
        pos: 0,
        keep: false,
    };
    c.deadline = Instant::now() + limits.request_timeout;
}

/// One state's worth of work on connection `c`, without blocking.
fn step(c: &mut Conn, slot: usize, limits: &Limits, jobs: &Sender<Job>, stopping: bool) -> Step {
    match &mut c.state {
        State::Busy => Step::Open,
        State::Reading { started } => {
            // Enough for a head and a body at their limits: past it, parsing refuses.
            let cap = limits.max_head_bytes + 4 + limits.max_body_bytes;
            let mut chunk = [0u8; READ_CHUNK];
            while !c.eof && c.buf.len() <= cap {
                match c.stream.read(&mut chunk) {
                    Ok(0) => c.eof = true,
                    Ok(n) => c.buf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return Step::Close,
                }
            }
            if !c.buf.is_empty() && !*started {
                *started = true;
                c.deadline = Instant::now() + limits.request_timeout;
            }
            match parse_request(&c.buf, limits) {
                Ok(Some((req, used))) => {
                    c.buf.drain(..used);
                    let may_keep =
                        !c.eof && c.served + 1 < limits.max_requests_per_connection && !stopping;
                    let job = Job {
                        slot,
                        id: c.id,
                        may_keep,
                        req,
                    };
                    c.state = State::Busy;
                    match jobs.try_send(job) {
                        Ok(()) => Step::Open,
                        Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                            refuse(c, limits, 503, "server busy");
                            Step::Again
                        }
                    }
                }
                Ok(None) if c.eof && c.buf.is_empty() => Step::Close,
                Ok(None) if c.eof => {
                    refuse(c, limits, 400, "connection closed mid-request");
                    Step::Again
                }
                Ok(None) => Step::Open,
                Err((status, why)) => {
                    refuse(c, limits, status, why);
                    Step::Again
                }
            }
        }
        State::Writing { out, pos, keep } => {
            while *pos < out.len() {
                match c.stream.write(&out[*pos..]) {
                    Ok(0) => return Step::Close,
                    Ok(n) => *pos += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Open,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return Step::Close,
                }
            }
            if *keep && !stopping {
                let started = !c.buf.is_empty();
                c.state = State::Reading { started };
                c.deadline = Instant::now()
                    + if started {
                        limits.request_timeout
                    } else {
                        limits.keep_alive
                    };
                Step::Again
            } else if c.eof {
                Step::Close
            } else {
                let _ = c.stream.shutdown(std::net::Shutdown::Write);
                c.state = State::Draining;
                c.deadline = Instant::now() + LINGER;
                c.buf = Vec::new();
                Step::Again
            }
        }
        State::Draining => {
            // Bounded per wake-up; a client that floods is closed at the deadline.
            let mut chunk = [0u8; READ_CHUNK];
            for _ in 0..16 {
                match c.stream.read(&mut chunk) {
                    Ok(0) => return Step::Close,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Open,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return Step::Close,
                }
            }
            Step::Open
        }
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Why a request is refused: the status and a short reason.
type Reject = (u16, &'static str);

/// One request from the front of `buf`: `Ok(None)` while incomplete, else the request and the
/// bytes it took. Pure: the event loop feeds it what it has read.
pub fn parse_request(buf: &[u8], limits: &Limits) -> Result<Option<(Request, usize)>, Reject> {
    let Some(head_end) = find_head_end(&buf[..buf.len().min(limits.max_head_bytes + 4)]) else {
        if buf.len() > limits.max_head_bytes {
            return Err((431, "request head too large"));
        }
        return Ok(None);
    };
    let head =
        std::str::from_utf8(&buf[..head_end]).map_err(|_| (400, "request head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err((400, "malformed request line"));
    };
    if !is_token(method) {
        return Err((400, "malformed method"));
    }
    if !target.starts_with('/') || target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err((400, "malformed request target"));
    }
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        v if v.starts_with("HTTP/") => return Err((505, "only HTTP/1.0 and HTTP/1.1")),
        _ => return Err((400, "malformed HTTP version")),
    };
    let mut headers = Vec::new();
    for line in lines {
        if headers.len() == limits.max_headers {
            return Err((431, "too many headers"));
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err((400, "malformed header line"));
        };
        // Also refuses obsolete line folding (a line starting with a space).
        if !is_token(name) {
            return Err((400, "malformed header name"));
        }
        headers.push((name.to_string(), value.trim().to_string()));
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target.to_string(), String::new()),
    };
    let mut req = Request {
        method: method.to_string(),
        path,
        query,
        http10,
        headers,
        body: Vec::new(),
    };
    if req.header("transfer-encoding").is_some() {
        return Err((501, "chunked bodies are not supported"));
    }
    let mut lengths = req
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.as_str());
    let len = match lengths.next() {
        None => 0,
        Some(v) => {
            // Digits only: "+5" and "5, 6" are request-smuggling material.
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) || v.len() > 12 {
                return Err((400, "malformed Content-Length"));
            }
            let n: usize = v.parse().map_err(|_| (400, "malformed Content-Length"))?;
            if lengths.any(|other| other != v) {
                return Err((400, "conflicting Content-Length"));
            }
            n
        }
    };
    if len > limits.max_body_bytes {
        return Err((413, "request body too large"));
    }
    let body_start = head_end + 4;
    if buf.len() < body_start + len {
        return Ok(None);
    }
    req.body = buf[body_start..body_start + len].to_vec();
    Ok(Some((req, body_start + len)))
}

/// Decodes `application/x-www-form-urlencoded` text (also a query string): `+` is a space,
/// `%XX` a byte; a bad escape is kept as it is. Pairs without `=` get an empty value.
pub fn parse_form(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding() {
        let f = parse_form("user=ad%6Din&pass=a+b%&x");
        assert_eq!(f[0], ("user".into(), "admin".into()));
        assert_eq!(f[1], ("pass".into(), "a b%".into()));
        assert_eq!(f[2], ("x".into(), "".into()));
    }

    #[test]
    fn requests_are_parsed_only_once_complete() {
        let l = Limits::default();
        let raw = b"POST /a?b=1 HTTP/1.1\r\nContent-Length: 3\r\n\r\nxyzGET";
        for cut in 0..raw.len() - 3 {
            assert!(matches!(parse_request(&raw[..cut], &l), Ok(None)), "{cut}");
        }
        let (req, used) = parse_request(raw, &l).expect("valid").expect("complete");
        assert_eq!((req.path.as_str(), req.query.as_str()), ("/a", "b=1"));
        assert_eq!((req.body.as_slice(), used), (&b"xyz"[..], raw.len() - 3));
    }
}
