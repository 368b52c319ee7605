//! Faults over real sockets on 127.0.0.1: a member that is down, a connection cut before the ack
//! (through a small TCP proxy), hostile bytes from the network, static membership coming and
//! going, and the asynchronous queue filling up behind a stalled member.
//!
//! Run: `cargo test --release --test faults`.

mod common;

use common::raw::read_raw_frame;
use common::*;
use parking_lot::{Condvar, Mutex};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tribecast::transport::receiver::ReceiverStats;
use tribecast::wire::frame::{
    body_hasher, encode_frame, encode_header, FLAG_ACK, HEADER_LEN, PROTOCOL_VERSION,
};
use tribecast::wire::{
    decode_body, encode_body, parse_frame, FrameKind, Handshake, HandshakeAccept, Reason,
};
use tribecast::{
    ChannelConfig, ChannelError, ChannelMessage, GroupChannel, Member, MemberId, QueueFullPolicy,
    SendFailure, SendOptions,
};

const LIMIT: Duration = Duration::from_secs(20);

fn local(ch: &GroupChannel) -> Member {
    ch.local_member().expect("running")
}

fn stat(s: &tribecast::metrics::Counter) -> u64 {
    s.load(SeqCst)
}

fn retries(ch: &GroupChannel) -> u64 {
    ch.with_sender_stats(|s| s.retries.load(SeqCst))
        .expect("running")
}

/// The payloads an inbox holds, in arrival order.
fn payloads(inbox: &Inbox) -> Vec<Vec<u8>> {
    inbox
        .messages
        .lock()
        .iter()
        .map(|(_, p)| p.clone())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 1. A member that is down
// ---------------------------------------------------------------------------------------------

/// A destination whose receiver is gone is reported as faulty, with a connect failure, well
/// within the send timeout, and the live destinations still get the message.
#[test]
fn down_member_is_reported_faulty_and_the_others_receive() {
    init_logs();
    let b = started("b");
    let c = started("c");
    let inbox_b = collecting(&b);
    let inbox_c = collecting(&c);
    let down = {
        let d = started("d");
        let m = local(&d);
        d.stop();
        m
    };
    assert!(
        TcpStream::connect(down.addr).is_err(),
        "the stopped member's port still accepts connections"
    );
    let s = started("s");
    let timeout = s.config().sender.timeout;
    let dests = [local(&b), down.clone(), local(&c)];
    for (n, opts) in [SendOptions::SYNC_ACK, SendOptions::USE_ACK]
        .into_iter()
        .enumerate()
    {
        let t0 = Instant::now();
        let err = s
            .send(&dests, vec![n as u8; 100], opts)
            .expect_err("a destination is down");
        let elapsed = t0.elapsed();
        assert!(
            elapsed < timeout,
            "{opts:?}: failure took {elapsed:?}, timeout is {timeout:?}"
        );
        let ChannelError::Faulty(faulty) = &err else {
            panic!("{opts:?}: expected Faulty, got {err}");
        };
        assert_eq!(faulty.len(), 1, "{opts:?}: exactly the down member: {err}");
        assert_eq!(faulty[0].id, down.id);
        assert_eq!(faulty[0].member.as_ref(), Some(&down));
        assert!(
            matches!(faulty[0].reason, SendFailure::Connect(_)),
            "{opts:?}: {:?}",
            faulty[0].reason
        );
        if opts.wants_sync_ack() {
            // Synchronized ack: the live members' listeners ran before send returned.
            assert_eq!(inbox_b.len(), n + 1);
            assert_eq!(inbox_c.len(), n + 1);
        }
        wait_for("b and c get the message", LIMIT, || {
            inbox_b.len() == n + 1 && inbox_c.len() == n + 1
        });
    }
    let expected: Vec<Vec<u8>> = vec![vec![0; 100], vec![1; 100]];
    assert_eq!(payloads(&inbox_b), expected);
    assert_eq!(payloads(&inbox_c), expected);
}

// ---------------------------------------------------------------------------------------------
// 2. A connection cut before the ack: the retry delivers once
// ---------------------------------------------------------------------------------------------

/// A TCP proxy on 127.0.0.1:0 in front of a receiver, forwarding whole frames both ways, that can
/// cut all its connections at a chosen point.
struct Proxy {
    addr: SocketAddr,
    shared: Arc<ProxyShared>,
    accept: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct ProxyShared {
    stop: AtomicBool,
    /// Armed: when the ack of the next data frame comes back, drop it and cut every connection.
    cut_on_ack: AtomicBool,
    cuts: AtomicUsize,
    data_frames: AtomicUsize,
    streams: Mutex<Vec<TcpStream>>,
    pumps: Mutex<Vec<JoinHandle<()>>>,
}

impl ProxyShared {
    fn cut_all(&self) {
        for s in self.streams.lock().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        self.cuts.fetch_add(1, SeqCst);
    }
}

fn kind_of(frame: &[u8]) -> u8 {
    frame[5]
}

impl Proxy {
    fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(ProxyShared::default());
        let sh = shared.clone();
        let accept = std::thread::Builder::new()
            .name("proxy-accept".into())
            .spawn(move || {
                for client in listener.incoming() {
                    if sh.stop.load(SeqCst) {
                        return;
                    }
                    let Ok(client) = client else { continue };
                    let Ok(server) = TcpStream::connect(upstream) else {
                        let _ = client.shutdown(Shutdown::Both);
                        continue;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let clone = |s: &TcpStream| s.try_clone().expect("clone socket");
                    sh.streams.lock().extend([clone(&client), clone(&server)]);
                    let pending = Arc::new(AtomicBool::new(false));
                    let (c, s, p, shc) =
                        (clone(&client), clone(&server), pending.clone(), sh.clone());
                    let up = std::thread::spawn(move || pump_up(c, s, &p, &shc));
                    let (c, s, shc) = (client, server, sh.clone());
                    let down = std::thread::spawn(move || pump_down(c, s, &pending, &shc));
                    sh.pumps.lock().extend([up, down]);
                }
            })
            .expect("spawn proxy");
        Proxy {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    fn arm_cut_on_ack(&self) {
        self.shared.cut_on_ack.store(true, SeqCst);
    }

    fn cuts(&self) -> usize {
        self.shared.cuts.load(SeqCst)
    }
}

/// Sender to receiver. A data frame forwarded while armed makes the next ack trigger the cut.
fn pump_up(mut client: TcpStream, mut server: TcpStream, pending: &AtomicBool, sh: &ProxyShared) {
    while let Ok(f) = read_raw_frame(&mut client) {
        if kind_of(&f) == FrameKind::Data as u8 {
            sh.data_frames.fetch_add(1, SeqCst);
            if sh.cut_on_ack.load(SeqCst) {
                pending.store(true, SeqCst);
            }
        }
        if server.write_all(&f).is_err() {
            break;
        }
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
}

/// Receiver to sender.
fn pump_down(mut client: TcpStream, mut server: TcpStream, pending: &AtomicBool, sh: &ProxyShared) {
    while let Ok(f) = read_raw_frame(&mut server) {
        let k = kind_of(&f);
        let is_ack = k == FrameKind::Ack as u8 || k == FrameKind::FailAck as u8;
        if is_ack && pending.load(SeqCst) && sh.cut_on_ack.swap(false, SeqCst) {
            // The receiver got the frame and answered; the sender never hears it.
            sh.cut_all();
            return;
        }
        if client.write_all(&f).is_err() {
            break;
        }
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, SeqCst);
        let _ = TcpStream::connect(self.addr); // wakes the accept loop
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        self.shared.cut_all();
        for t in self.shared.pumps.lock().drain(..) {
            let _ = t.join();
        }
    }
}

/// The connection breaks after the receiver got a frame but before its ack reaches the sender:
/// the sender retries once with the same sequence number on a new connection, the receiver
/// drops the duplicate (and answers it), the send succeeds and the listener ran exactly once.
#[test]
fn retry_after_cut_connection_delivers_once() {
    init_logs();
    let r = started("r");
    let inbox = collecting(&r);
    let s = started("s");
    let proxy = Proxy::start(local(&r).addr);
    let mut via_proxy = local(&r);
    via_proxy.addr = proxy.addr;
    let stats = r.receiver_stats().expect("running");
    for (n, opts) in [SendOptions::USE_ACK, SendOptions::SYNC_ACK]
        .into_iter()
        .enumerate()
    {
        let (dups, delivered, retried) = (
            stat(&stats.duplicates_dropped),
            stat(&stats.messages_delivered),
            retries(&s),
        );
        proxy.arm_cut_on_ack();
        let payload = format!("message {n} with {opts:?}").into_bytes();
        s.send(std::slice::from_ref(&via_proxy), payload.clone(), opts)
            .unwrap_or_else(|e| panic!("{opts:?}: the retry should have delivered: {e}"));
        assert_eq!(
            proxy.cuts(),
            n + 1,
            "{opts:?}: the proxy cut the connection"
        );
        assert_eq!(retries(&s), retried + 1, "{opts:?}: one retry");
        assert_eq!(
            proxy.shared.data_frames.load(SeqCst),
            2 * (n + 1),
            "{opts:?}: the frame and its resent copy went through the proxy"
        );
        // The receiver counts the duplicate before it acks it, so this holds at return.
        assert_eq!(
            stat(&stats.duplicates_dropped),
            dups + 1,
            "{opts:?}: the resent frame is dropped as a duplicate"
        );
        if opts.wants_sync_ack() {
            assert_eq!(inbox.len(), n + 1, "{opts:?}: listener ran before the ack");
        }
        wait_for("the listener gets the message", LIMIT, || inbox.len() > n);
        assert_eq!(stat(&stats.messages_delivered), delivered + 1, "{opts:?}");
    }
    // One more message, no cut, on the same lane: it comes after the two, and nothing else came.
    s.send(
        std::slice::from_ref(&via_proxy),
        b"last".to_vec(),
        SendOptions::SYNC_ACK,
    )
    .expect("send without cut");
    assert_eq!(proxy.cuts(), 2);
    assert_eq!(proxy.shared.data_frames.load(SeqCst), 5);
    assert_eq!(
        payloads(&inbox),
        [
            b"message 0 with SendOptions(2 = use_ack)".to_vec(),
            b"message 1 with SendOptions(6 = use_ack|synchronized_ack)".to_vec(),
            b"last".to_vec(),
        ]
    );
    assert_eq!(stat(&stats.messages_delivered), 3);
    assert_eq!(stat(&stats.duplicates_dropped), 2);
    // Per member: the two retries, three messages each way, the duplicates not counted twice.
    let bytes: u64 = payloads(&inbox).iter().map(|p| p.len() as u64).sum();
    let to_r = s.stats().member(&local(&r).id).cloned().expect("figures");
    assert_eq!(
        (
            to_r.retries,
            to_r.messages_sent,
            to_r.bytes_sent,
            to_r.send_errors
        ),
        (2, 3, bytes, 0),
        "{to_r:?}"
    );
    assert!(to_r.rtt_count >= 2 && to_r.rtt_last_us > 0, "{to_r:?}");
    let from_s = r.stats().member(&local(&s).id).cloned().expect("figures");
    assert_eq!(
        (from_s.messages_received, from_s.bytes_received),
        (3, bytes)
    );
}

/// A gate a listener (or interceptor) waits at until the test opens it. It opens by itself a
/// minute after it was made, so a failed test cannot hang the channel's threads for ever.
struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
    entered: AtomicUsize,
    backstop: Instant,
}

impl Gate {
    fn new() -> Arc<Gate> {
        Arc::new(Gate {
            open: Mutex::new(false),
            cv: Condvar::new(),
            entered: AtomicUsize::new(0),
            backstop: Instant::now() + Duration::from_secs(60),
        })
    }

    fn pass(&self) {
        self.entered.fetch_add(1, SeqCst);
        let mut open = self.open.lock();
        while !*open {
            if self.cv.wait_until(&mut open, self.backstop).timed_out() {
                return;
            }
        }
    }

    fn open(&self) {
        *self.open.lock() = true;
        self.cv.notify_all();
    }

    fn entered(&self) -> usize {
        self.entered.load(SeqCst)
    }
}

/// Opens the gate when dropped: declared after the channels, it is dropped before them, so a
/// failing test still stops its channels promptly.
struct OpenOnDrop(Arc<Gate>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

/// A synchronized-ack connection breaks after the receiver read the frame but while its listener
/// is still running. The sender resends on a new connection; the receiver drops the copy as a
/// duplicate, and must answer it with the original's outcome once the listener is done: `send`
/// may not return before that, and a listener failure must come back as `Remote`, not be turned
/// into a success by a plain ack of the duplicate. (This failed until 81529fe, which fixed the
/// bug the simulation found too; it is the real-socket regression test.)
#[test]
fn sync_ack_retry_waits_for_the_listener_and_reports_its_failure() {
    init_logs();
    let r = started("r");
    let gate = Gate::new();
    let g = gate.clone();
    r.add_channel_listener(Arc::new(move |_: &ChannelMessage<'_>| {
        g.pass();
        Err("rejected by the listener".to_string())
    }));
    let mut cfg = ChannelConfig::loopback("s");
    cfg.sender.timeout = Duration::from_secs(10);
    let s = GroupChannel::new(cfg).expect("config");
    s.start().expect("start");
    let proxy = Proxy::start(local(&r).addr);
    let mut via_proxy = local(&r);
    via_proxy.addr = proxy.addr;
    let _open = OpenOnDrop(gate.clone());

    let (tx, rx) = crossbeam_channel::bounded(1);
    let opened = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let (s, via, opened) = (&s, &via_proxy, &opened);
        scope.spawn(move || {
            let r = s.send(
                std::slice::from_ref(via),
                b"x".to_vec(),
                SendOptions::SYNC_ACK,
            );
            let _ = tx.send((r, opened.load(SeqCst)));
        });
        wait_for("the listener has the message", LIMIT, || {
            gate.entered() == 1
        });
        // Cut before the listener finished: no answer has been sent yet. A correct receiver
        // answers the resent copy only with the original's outcome, so nothing may come back
        // while the gate is closed. One second is the window in which we look.
        proxy.shared.cut_all();
        let early = rx.recv_timeout(Duration::from_secs(1)).ok();
        opened.store(true, SeqCst);
        gate.open();
        let (result, after_open) = match early {
            Some(x) => x,
            None => rx.recv_timeout(LIMIT).expect("send returns"),
        };
        assert!(
            after_open,
            "sync-ack send returned {result:?} while the listener was still blocked (the \
             resent frame was acked as a duplicate before the original was processed)"
        );
        let err = result.expect_err("the listener rejected the message");
        assert_eq!(
            err.faulty_members()[0].reason,
            SendFailure::Remote("rejected by the listener".into())
        );
    });
    assert_eq!(gate.entered(), 1, "delivered once");
}

// ---------------------------------------------------------------------------------------------
// 3. Hostile input closes only its own connection
// ---------------------------------------------------------------------------------------------

fn fake_member(name: &str) -> Member {
    Member {
        id: MemberId::random(),
        name: name.into(),
        addr: "127.0.0.1:9".parse().expect("addr"),
        domain: String::new(),
    }
}

fn handshake_frame(cluster: &str, version: u8, name: &str) -> Vec<u8> {
    let hs = Handshake {
        cluster: cluster.into(),
        protocol_version: version,
        member: fake_member(name),
        incarnation: 1,
        lane: 1,
    };
    let mut v = Vec::new();
    encode_frame(&mut v, FrameKind::Handshake, 0, 0, &encode_body(&hs));
    v
}

/// A raw connection to `addr` whose reads give up after LIMIT.
fn raw(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(LIMIT)).expect("timeout");
    s
}

/// Reads until the peer closes (EOF or reset); returns what came before. Fails after LIMIT.
fn expect_closed(s: &mut TcpStream, what: &str) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                panic!("{what}: the receiver did not close the connection within {LIMIT:?}")
            }
            Err(_) => return got, // reset: closed too
        }
    }
}

/// Shakes hands as a fake member and checks the receiver accepts.
fn raw_member(addr: SocketAddr, cluster: &str, name: &str) -> TcpStream {
    let mut s = raw(addr);
    s.write_all(&handshake_frame(cluster, PROTOCOL_VERSION, name))
        .expect("write handshake");
    let f = read_raw_frame(&mut s).expect("handshake answer");
    assert_eq!(kind_of(&f), FrameKind::HandshakeAccept as u8, "{name}");
    s
}

/// A frame as encode_frame makes it, but with another protocol version in its header (and a
/// checksum that matches, so only the version is wrong).
fn frame_with_version(version: u8, kind: FrameKind, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    encode_frame(&mut f, kind, 0, 0, body);
    f[4] = version;
    let mut crc = body_hasher(body);
    crc.update(&f[0..20]);
    let sum = crc.finalize();
    f[20..24].copy_from_slice(&sum.to_le_bytes());
    f
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Counters {
    closed_on_error: u64,
    refused: u64,
}

fn counters(st: &ReceiverStats) -> Counters {
    Counters {
        closed_on_error: stat(&st.connections_closed_on_error),
        refused: stat(&st.connections_refused),
    }
}

/// While a real sender streams use-ack messages to a receiver, raw connections send garbage,
/// a truncated frame, an oversized header, another cluster's handshake and frames of another
/// protocol version. Each raw connection is closed by the receiver (the bad handshakes after a
/// HandshakeRefuse), counted, and the real sender's stream is untouched: every message arrives,
/// in order, with no error and no retry.
#[test]
fn hostile_input_closes_only_that_connection() {
    init_logs();
    let r = started("r");
    let inbox = collecting(&r);
    let s = started("s");
    let rm = local(&r);
    let addr = rm.addr;
    let cluster = r.config().cluster_name.clone();
    let max = r.config().max_frame_size;
    let st = r.receiver_stats().expect("running");

    let done = AtomicBool::new(false);
    let sent = AtomicU64::new(0);
    let total = std::thread::scope(|scope| {
        let streamer = scope.spawn(|| {
            let mut n: u32 = 0;
            while !done.load(SeqCst) && n < 1_000_000 {
                s.send(
                    std::slice::from_ref(&rm),
                    n.to_le_bytes().to_vec(),
                    SendOptions::USE_ACK,
                )
                .unwrap_or_else(|e| panic!("legitimate send #{n} failed: {e}"));
                n += 1;
                sent.store(u64::from(n), SeqCst);
            }
            n
        });
        wait_for("the stream flows", LIMIT, || sent.load(SeqCst) >= 20);
        let sent_before = sent.load(SeqCst);

        let check = |what: &str, before: Counters, closed: u64, refused: u64| {
            assert_eq!(
                counters(&st),
                Counters {
                    closed_on_error: before.closed_on_error + closed,
                    refused: before.refused + refused,
                },
                "{what}: receiver counters"
            );
        };

        // (a) Garbage: not even the magic.
        let before = counters(&st);
        let mut c = raw(addr);
        let mut garbage = vec![b'G'];
        SplitMix(42).fill(&mut garbage, 4095);
        let _ = c.write_all(&garbage);
        let reply = expect_closed(&mut c, "garbage");
        assert!(reply.is_empty(), "garbage got an answer: {reply:?}");
        check("garbage", before, 1, 0);

        // (b) A valid handshake, then a frame cut short, then close. (Its counting is checked
        // by `truncated_frame_at_eof_is_counted`.)
        let mut c = raw_member(addr, &cluster, "raw-truncated");
        let mut frame = Vec::new();
        encode_frame(&mut frame, FrameKind::Data, FLAG_ACK, 1, &[7u8; 1000]);
        c.write_all(&frame[..HEADER_LEN + 100]).expect("write");
        c.shutdown(Shutdown::Write).expect("shutdown");
        let reply = expect_closed(&mut c, "truncated frame");
        assert!(reply.is_empty(), "a truncated frame was acked: {reply:?}");

        // (c) A header announcing a body larger than max_frame_size, after a valid handshake.
        let before = counters(&st);
        let mut c = raw_member(addr, &cluster, "raw-oversized");
        let header = encode_header(
            FrameKind::Data,
            FLAG_ACK,
            1,
            max as usize + 1,
            &body_hasher(&[]),
        );
        c.write_all(&header).expect("write");
        let reply = expect_closed(&mut c, "oversized frame");
        assert!(reply.is_empty(), "an oversized frame got an answer");
        check("oversized", before, 1, 0);

        // (d) A handshake naming another cluster: refused with a reason, then closed.
        let before = counters(&st);
        let mut c = raw(addr);
        c.write_all(&handshake_frame(
            "other-cluster",
            PROTOCOL_VERSION,
            "raw-other",
        ))
        .expect("write");
        let reply = expect_closed(&mut c, "other cluster");
        let (f, used) = parse_frame(&reply, 1 << 20)
            .expect("a valid frame")
            .expect("a whole frame before the close");
        assert_eq!(f.header.kind, FrameKind::HandshakeRefuse);
        let reason: Reason = decode_body(f.body).expect("a reason");
        assert!(reason.reason.contains("other-cluster"), "{}", reason.reason);
        assert_eq!(used, reply.len(), "nothing after the refusal");
        check("other cluster", before, 0, 1);

        // (e) Another protocol version (the next one): in a frame header, and in a handshake
        // body carried by a frame of this version: both refused with a reason.
        let other = PROTOCOL_VERSION + 1;
        let before = counters(&st);
        let mut c = raw(addr);
        let hs = Handshake {
            cluster: cluster.clone(),
            protocol_version: other,
            member: fake_member("raw-v2"),
            incarnation: 1,
            lane: 1,
        };
        c.write_all(&frame_with_version(
            other,
            FrameKind::Handshake,
            &encode_body(&hs),
        ))
        .expect("write");
        let reply = expect_closed(&mut c, "next version frame");
        let (f, _) = parse_frame(&reply, 1 << 20)
            .expect("a valid frame")
            .expect("a whole frame before the close");
        assert_eq!(f.header.kind, FrameKind::HandshakeRefuse);
        let reason: Reason = decode_body(f.body).expect("a reason");
        assert!(
            reason.reason.contains(&format!("protocol version {other}")),
            "{}",
            reason.reason
        );
        check("next version frame", before, 0, 1);

        let before = counters(&st);
        let mut c = raw(addr);
        c.write_all(&handshake_frame(&cluster, other, "raw-v2-body"))
            .expect("write");
        let reply = expect_closed(&mut c, "next version handshake");
        let (f, _) = parse_frame(&reply, 1 << 20)
            .expect("a valid frame")
            .expect("a whole frame");
        assert_eq!(f.header.kind, FrameKind::HandshakeRefuse);
        check("next version handshake", before, 0, 1);

        // (f) A corrupted frame (bad checksum) after a valid handshake.
        let before = counters(&st);
        let mut c = raw_member(addr, &cluster, "raw-corrupt");
        let mut frame = Vec::new();
        encode_frame(&mut frame, FrameKind::Data, FLAG_ACK, 1, b"payload");
        let last = frame.len() - 1;
        frame[last] ^= 0x40;
        c.write_all(&frame).expect("write");
        let reply = expect_closed(&mut c, "corrupted frame");
        assert!(reply.is_empty(), "a corrupted frame was acked");
        check("corrupted", before, 1, 0);

        // The attacks take milliseconds; on busy cores the streamer may not have been
        // scheduled yet: its connection must still carry traffic after them.
        wait_for(
            "the legitimate stream runs alongside the attacks",
            LIMIT,
            || sent.load(SeqCst) > sent_before,
        );
        done.store(true, SeqCst);
        streamer.join().expect("streamer")
    });

    wait_for("every legitimate message arrives", LIMIT, || {
        inbox.len() >= total as usize
    });
    let got = inbox.messages.lock().clone();
    assert_eq!(got.len(), total as usize, "no more, no less");
    for (i, (from, p)) in got.iter().enumerate() {
        assert_eq!(from, "s", "message {i} from a raw connection was delivered");
        assert_eq!(p[..], (i as u32).to_le_bytes(), "message {i} out of order");
    }
    assert_eq!(
        retries(&s),
        0,
        "the legitimate connection was never disturbed"
    );
    assert_eq!(s.with_sender_stats(|x| x.failures.load(SeqCst)), Some(0));
}

/// A connection that has shaken hands and ends in the middle of a frame is closed on error,
/// with a logged reason, not as a normal close.
#[test]
fn truncated_frame_at_eof_is_counted() {
    init_logs();
    let r = started("r");
    let addr = local(&r).addr;
    let cluster = r.config().cluster_name.clone();
    let st = r.receiver_stats().expect("running");
    let before = counters(&st);
    let mut c = raw_member(addr, &cluster, "raw-truncated");
    let mut frame = Vec::new();
    encode_frame(&mut frame, FrameKind::Data, FLAG_ACK, 1, &[7u8; 1000]);
    c.write_all(&frame[..HEADER_LEN + 100]).expect("write");
    c.shutdown(Shutdown::Write).expect("shutdown");
    expect_closed(&mut c, "truncated frame");
    assert_eq!(
        counters(&st),
        Counters {
            closed_on_error: before.closed_on_error + 1,
            refused: before.refused,
        },
        "a connection that ends inside a frame is closed on error"
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Static membership events
// ---------------------------------------------------------------------------------------------

/// Builds a channel with an Events listener and starts it, so no event is missed.
fn with_events(cfg: ChannelConfig) -> (GroupChannel, Arc<Events>) {
    let ch = GroupChannel::new(cfg).expect("config");
    let ev = Arc::new(Events::default());
    ch.add_membership_listener(ev.clone());
    ch.start().expect("start");
    (ch, ev)
}

fn sorted(ev: &Events) -> Vec<String> {
    let mut v = ev.0.lock().clone();
    v.sort();
    v
}

/// A starts; B lists A; C lists A and B. Every node hears of the two others exactly once (as
/// listed member or as one that connected); when C stops it says so and A and B drop it.
#[test]
fn static_members_find_each_other_and_see_a_leave() {
    init_logs();
    let (a, ev_a) = with_events(ChannelConfig::loopback("a"));
    let (b, ev_b) = with_events(config_with_peers("b", &[&a]));
    let (c, ev_c) = with_events(config_with_peers("c", &[&a, &b]));
    for (name, ch, ev, others) in [
        ("a", &a, &ev_a, ["+b", "+c"]),
        ("b", &b, &ev_b, ["+a", "+c"]),
        ("c", &c, &ev_c, ["+a", "+b"]),
    ] {
        wait_for(&format!("{name} sees the two others"), LIMIT, || {
            ch.members().len() == 2
        });
        assert_eq!(sorted(ev), others, "{name}'s events");
    }
    c.stop();
    for (name, ch, ev, other) in [("a", &a, &ev_a, "b"), ("b", &b, &ev_b, "a")] {
        wait_for(&format!("{name} sees c leave"), LIMIT, || ev.has("-c"));
        let events = ev.0.lock().clone();
        assert_eq!(
            events.iter().filter(|e| *e == "-c").count(),
            1,
            "{events:?}"
        );
        assert_eq!(events.last().map(String::as_str), Some("-c"), "{events:?}");
        let members: Vec<String> = ch.members().iter().map(|m| m.name.clone()).collect();
        assert_eq!(members, [other], "{name}'s members after c left");
    }
    // C, stopped, keeps no members and heard no departures of the others.
    assert!(c.members().is_empty());
    assert_eq!(sorted(&ev_c), ["+a", "+b"]);
}

// ---------------------------------------------------------------------------------------------
// 6. The asynchronous queue fills up
// ---------------------------------------------------------------------------------------------

const ASYNC_PAYLOAD: usize = 1000;
const SMALL_FRAME: u32 = 4096;

fn numbered(n: u32) -> Vec<u8> {
    let mut p = n.to_le_bytes().to_vec();
    p.resize(ASYNC_PAYLOAD, (n % 251) as u8);
    p
}

/// A receiver that takes at most 4 KiB per connection into its mailbox (so a stalled listener
/// stalls the connection at the TCP level), whose listener waits at `gate` if given and records
/// the numbers it gets (u32::MAX for a corrupted payload).
fn numbered_receiver(gate: Option<&Arc<Gate>>) -> (GroupChannel, Arc<Mutex<Vec<u32>>>) {
    let mut cfg = ChannelConfig::loopback("numbered");
    cfg.max_frame_size = SMALL_FRAME;
    cfg.receiver.max_queued_bytes_per_connection = SMALL_FRAME as usize;
    cfg.receiver.max_threads = 2;
    let r = GroupChannel::new(cfg).expect("config");
    let got = Arc::new(Mutex::new(Vec::new()));
    let (g, got2) = (gate.cloned(), got.clone());
    r.add_channel_listener(Arc::new(move |m: &ChannelMessage<'_>| {
        if let Some(g) = &g {
            g.pass();
        }
        let n = m
            .payload
            .get(..4)
            .map_or(u32::MAX, |h| u32::from_le_bytes([h[0], h[1], h[2], h[3]]));
        let intact = n != u32::MAX && m.payload[..] == numbered(n)[..];
        got2.lock().push(if intact { n } else { u32::MAX });
        Ok(())
    }));
    r.start().expect("start");
    (r, got)
}

/// A sender with a 4 KiB dispatch queue (the smallest allowed: max_frame_size is 4096).
fn async_sender_config(policy: QueueFullPolicy, timeout: Duration) -> ChannelConfig {
    let mut cfg = ChannelConfig::loopback("async-sender");
    cfg.max_frame_size = SMALL_FRAME;
    cfg.dispatch.max_queue_size = SMALL_FRAME as usize;
    cfg.dispatch.full_policy = policy;
    cfg.sender.timeout = timeout;
    cfg
}

/// The receiver must have got exactly 0..count, in order, intact.
fn check_all_delivered(got: &Mutex<Vec<u32>>, count: u32) {
    wait_until(LIMIT, || got.lock().len() >= count as usize);
    let got = got.lock().clone();
    let expected: Vec<u32> = (0..count).collect();
    if got != expected {
        let i = got
            .iter()
            .zip(&expected)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(expected.len()));
        panic!(
            "receiver got {} messages, expected {count}; first difference at #{i}: got {:?}, \
             expected {:?}",
            got.len(),
            &got[i..(i + 5).min(got.len())],
            &expected[i..(i + 5).min(expected.len())],
        );
    }
}

/// Fail policy, end to end: the member's listener blocks, its connection stops being read, the
/// TCP buffers fill, the dispatch thread's write blocks, and the 4 KiB queue fills. From then on
/// every asynchronous send fails at once with QueueFull. Once the listener proceeds, everything
/// accepted before arrives, in order and intact, and sends work again.
///
/// The sender timeout is long (10 s) so that the blocked write does not time out while the test
/// holds the listener (about 300 ms): see `stalled_member_keeps_order_drops_past_its_limit_and_recovers`
/// for what happens when it does.
#[test]
fn async_queue_full_fail_policy_fails_fast_and_loses_nothing() {
    init_logs();
    let gate = Gate::new();
    let (r, got) = numbered_receiver(Some(&gate));
    let timeout = Duration::from_secs(10);
    let s = GroupChannel::new(async_sender_config(QueueFullPolicy::Fail, timeout)).expect("config");
    s.start().expect("start");
    let _open = OpenOnDrop(gate.clone());
    let dest = [local(&r)];
    let deadline = Instant::now() + LIMIT;
    let mut accepted: u32 = 0;
    let mut refusals = 0u32;
    let mut full_since: Option<Instant> = None;
    // While the member keeps up, the queue is full only for moments (the dispatch thread is
    // writing); behind a stalled member it stays full. Fill until it has refused every send for
    // 300 ms after the listener blocked.
    loop {
        assert!(
            Instant::now() < deadline,
            "the queue never stayed full ({accepted} accepted, {refusals} refusals)"
        );
        let t0 = Instant::now();
        match s.send(&dest, numbered(accepted), SendOptions::ASYNCHRONOUS) {
            Ok(()) => {
                accepted += 1;
                full_since = None;
            }
            Err(ChannelError::QueueFull {
                queued_bytes,
                max_bytes,
            }) => {
                let took = t0.elapsed();
                assert!(took < timeout / 10, "Fail policy waited {took:?}");
                assert_eq!(max_bytes, SMALL_FRAME as usize);
                assert!(queued_bytes + ASYNC_PAYLOAD > max_bytes, "{queued_bytes}");
                refusals += 1;
                let since = *full_since.get_or_insert(t0);
                if gate.entered() > 0 && since.elapsed() >= Duration::from_millis(300) {
                    break;
                }
                // Back off while the dispatch thread works (polling, not synchronisation).
                std::thread::sleep(Duration::from_micros(200));
            }
            Err(e) => panic!("unexpected error after {accepted} sends: {e}"),
        }
    }
    assert!(
        accepted as usize * ASYNC_PAYLOAD > 256 * 1024,
        "only {accepted} messages went out before the queue stayed full: the stall did not \
         reach TCP"
    );
    assert_eq!(
        gate.entered(),
        1,
        "the listener is still blocked in the first message"
    );
    gate.open();
    check_all_delivered(&got, accepted);
    s.send(&dest, numbered(accepted), SendOptions::ASYNCHRONOUS)
        .expect("room again");
    check_all_delivered(&got, accepted + 1);
    assert_eq!(s.with_sender_stats(|x| x.failures.load(SeqCst)), Some(0));
}

/// Holds asynchronous messages coming out of the dispatch queue at a gate: stalls the dispatch
/// thread without involving the transport or its timeout.
struct StallAsync(Arc<Gate>);

impl tribecast::ChannelInterceptor for StallAsync {
    fn name(&self) -> &'static str {
        "StallAsync"
    }

    fn send_message(
        &self,
        dests: &Arc<[Member]>,
        msg: tribecast::OutMessage,
        next: tribecast::interceptor::Next<'_>,
    ) -> Result<(), ChannelError> {
        if msg.options.is_async() {
            self.0.pass();
        }
        next.send_message(dests, msg)
    }
}

/// Block policy: with the dispatch thread stalled and the 4 KiB queue full, an asynchronous
/// send waits for room for `sender.timeout` (300 ms) and then fails with QueueFull; what was
/// accepted is kept and, once the stall ends, delivered in order; then sends work again.
///
/// The stall is an interceptor under the queue rather than a stalled member: with a stalled
/// member the lane takes the frames off the queue and keeps them itself (see
/// `stalled_member_keeps_order_drops_past_its_limit_and_recovers`), so the queue would not fill.
#[test]
fn async_queue_full_block_policy_waits_then_fails_and_loses_nothing() {
    init_logs();
    let (r, got) = numbered_receiver(None);
    let gate = Gate::new();
    let timeout = Duration::from_millis(300);
    let cfg = async_sender_config(QueueFullPolicy::Block, timeout);
    let dispatch = Arc::new(tribecast::MessageDispatchInterceptor::new(
        cfg.dispatch.clone(),
        timeout,
    ));
    let s = GroupChannel::builder(cfg)
        .interceptor(dispatch.clone())
        .interceptor(Arc::new(StallAsync(gate.clone())))
        .build()
        .expect("config");
    s.start().expect("start");
    let _open = OpenOnDrop(gate.clone());
    let dest = [local(&r)];
    let mut accepted: u32 = 0;
    let waited = loop {
        assert!(accepted < 100, "the queue never filled");
        let t0 = Instant::now();
        match s.send(&dest, numbered(accepted), SendOptions::ASYNCHRONOUS) {
            Ok(()) => accepted += 1,
            Err(ChannelError::QueueFull {
                queued_bytes,
                max_bytes,
            }) => {
                assert_eq!((queued_bytes, max_bytes), (4 * ASYNC_PAYLOAD, 4096));
                break t0.elapsed();
            }
            Err(e) => panic!("unexpected error after {accepted} sends: {e}"),
        }
    };
    assert!(
        waited >= timeout && waited < timeout * 10,
        "Block waited {waited:?}, sender.timeout is {timeout:?}"
    );
    // One message held below the queue plus three queued: 4 × 1000 bytes fit in 4096.
    assert_eq!(accepted, 4);
    assert_eq!(dispatch.queued_bytes(), 4 * ASYNC_PAYLOAD);
    assert_eq!(dispatch.stats.refused_full.load(SeqCst), 1);
    assert!(got.lock().is_empty(), "nothing passed the stall");
    gate.open();
    check_all_delivered(&got, accepted);
    for n in accepted..accepted + 20 {
        s.send(&dest, numbered(n), SendOptions::ASYNCHRONOUS)
            .expect("room again");
    }
    check_all_delivered(&got, accepted + 20);
    assert_eq!(dispatch.stats.refused_full.load(SeqCst), 1);
}

/// A member that stops reading stalls its asynchronous lane. The lane keeps its connection and
/// the unwritten frames (a stall is not a broken connection), waits only briefly at each flush
/// while stalled, and past `max_queued_bytes_per_member` drops further messages and counts them.
/// When the member reads again, everything kept arrives, in order, exactly once: delivered plus
/// dropped equals accepted. (Before this policy the lane reconnected on timeout, and the frames
/// left in the old connection were dropped at the receiver as "duplicates" of the new one's.)
#[test]
fn stalled_member_keeps_order_drops_past_its_limit_and_recovers() {
    init_logs();
    let gate = Gate::new();
    let (r, got) = numbered_receiver(Some(&gate));
    let timeout = Duration::from_millis(300);
    let mut cfg = async_sender_config(QueueFullPolicy::Block, timeout);
    cfg.sender.max_queued_bytes_per_member = 64 * 1024;
    let s = GroupChannel::new(cfg).expect("config");
    s.start().expect("start");
    let _open = OpenOnDrop(gate.clone());
    let dest = [local(&r)];
    let stat = |f: fn(&tribecast::transport::sender::SenderStats) -> u64| {
        s.with_sender_stats(f).expect("running")
    };
    // Fill until messages to the stalled member are dropped.
    let deadline = Instant::now() + LIMIT;
    let mut accepted: u32 = 0;
    while stat(|x| x.failures.load(SeqCst)) == 0 {
        assert!(Instant::now() < deadline, "nothing was ever dropped");
        match s.send(&dest, numbered(accepted), SendOptions::ASYNCHRONOUS) {
            Ok(()) => accepted += 1,
            Err(ChannelError::QueueFull { .. }) => {}
            Err(e) => panic!("unexpected error after {accepted} sends: {e}"),
        }
    }
    assert!(
        stat(|x| x.stalls.load(SeqCst)) >= 1,
        "the stall was noticed"
    );
    // The member's figures show the stall: a bounded queue, drops, no errors.
    let member = |ch: &GroupChannel, of: &tribecast::Member| {
        ch.stats().member(&of.id).cloned().expect("figures")
    };
    let m = member(&s, &dest[0]);
    assert!(m.async_dropped > 0, "{m:?}");
    assert!(
        m.async_queued_bytes > 0 && m.async_queued_bytes <= 64 * 1024 + u64::from(SMALL_FRAME),
        "{m:?}"
    );
    assert_eq!(m.send_errors, 0, "drops are not errors: {m:?}");
    gate.open();
    // Everything accepted is either delivered or counted as dropped; wait for the sum.
    let settled = || got.lock().len() as u64 + stat(|x| x.failures.load(SeqCst));
    wait_for("delivered + dropped = accepted", LIMIT, || {
        settled() >= u64::from(accepted)
    });
    let seen = got.lock().clone();
    let dropped = stat(|x| x.failures.load(SeqCst));
    assert_eq!(
        seen.len() as u64 + dropped,
        u64::from(accepted),
        "nothing lost silently, nothing twice"
    );
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "in order (gaps are the dropped ones)"
    );
    assert!(dropped > 0 && !seen.is_empty());
    assert_eq!(
        stat(|x| x.retries.load(SeqCst)),
        0,
        "no reconnect: a stall is not a broken connection"
    );
    // The lane is healthy again: new messages arrive.
    let n = accepted;
    s.send(&dest, numbered(n), SendOptions::ASYNCHRONOUS)
        .expect("send after recovery");
    wait_for("the message after recovery", LIMIT, || {
        got.lock().contains(&n)
    });
    let delivered = got.lock().len() as u64;
    wait_for("the sender counted it", LIMIT, || {
        member(&s, &dest[0]).messages_sent == delivered
    });
    let m = member(&s, &dest[0]);
    assert_eq!(m.bytes_sent, delivered * ASYNC_PAYLOAD as u64);
    assert_eq!(m.async_dropped, dropped, "every drop counted once");
    assert_eq!((m.async_queued_bytes, m.send_errors, m.retries), (0, 0, 0));
    let from = member(&r, &local(&s));
    assert_eq!(
        (from.messages_received, from.bytes_received),
        (delivered, delivered * ASYNC_PAYLOAD as u64)
    );
}

/// A member killed and restarted under the same id faster than the failure detector notices
/// comes back empty: when its new incarnation shakes hands, the others report it gone and back
/// at once ("Member disappeared [...]: it restarted"), so session managers copy to it again.
#[test]
fn a_member_restarted_under_the_same_id_is_reported_gone_and_back() {
    init_logs();
    let a = started("a");
    let events = Arc::new(Events::default());
    a.add_membership_listener(events.clone());
    let b = started_with_peers("b", &[&a]);
    wait_for("A sees B", LIMIT, || events.has("+b"));
    // B's next run: the same member, a new incarnation, shaking hands with A.
    let hs = Handshake {
        cluster: ChannelConfig::default().cluster_name,
        protocol_version: PROTOCOL_VERSION,
        member: b.local_member().expect("running"),
        incarnation: 0x5eed,
        lane: 1,
    };
    let mut frame = Vec::new();
    encode_frame(&mut frame, FrameKind::Handshake, 0, 0, &encode_body(&hs));
    let mut s = raw(local(&a).addr);
    s.write_all(&frame).expect("write");
    wait_for("A reports B gone and back", LIMIT, || {
        let e = events.0.lock();
        e.iter().filter(|x| *x == "+b").count() == 2 && e.iter().any(|x| x == "-b")
    });
    assert!(
        a.members().iter().any(|m| m.name == "b"),
        "B is a member again"
    );
    // B's own connections (pings, same incarnation as before) did not count as restarts.
    assert_eq!(events.0.lock().iter().filter(|x| *x == "-b").count(), 1);
    drop(s);
    b.stop();
    a.stop();
}

/// A stand-in for a member's first run, killed with -9 later: it accepts handshakes as
/// `member` with `incarnation`, acks what asks for an ack, and at `kill` closes everything
/// without a word (no `Leave`), as a killed process does.
struct FakeRun {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    accept: Option<JoinHandle<()>>,
}

impl FakeRun {
    fn start(member: impl Fn(SocketAddr) -> Member, incarnation: u64) -> FakeRun {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let member = member(addr);
        let stop = Arc::new(AtomicBool::new(false));
        let streams = Arc::new(Mutex::new(Vec::new()));
        let (st, sv) = (stop.clone(), streams.clone());
        let accept = std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(s) = s else { continue };
                if st.load(SeqCst) {
                    return; // the listener closes with this thread
                }
                sv.lock().push(s.try_clone().expect("clone"));
                let m = member.clone();
                std::thread::spawn(move || fake_run_conn(s, &m, incarnation));
            }
        });
        FakeRun {
            addr,
            stop,
            streams,
            accept: Some(accept),
        }
    }

    /// Closes the listener and every connection, sending nothing.
    fn kill(mut self) {
        self.stop.store(true, SeqCst);
        let _ = TcpStream::connect(self.addr); // wakes the accept loop, which then returns
        if let Some(t) = self.accept.take() {
            t.join().expect("accept thread");
        }
        for s in self.streams.lock().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

fn fake_run_conn(mut s: TcpStream, me: &Member, incarnation: u64) {
    while let Ok(f) = read_raw_frame(&mut s) {
        let flags = u16::from_le_bytes([f[6], f[7]]);
        let seq = u64::from_le_bytes(f[12..20].try_into().expect("8 bytes"));
        let mut out = Vec::new();
        match kind_of(&f) {
            k if k == FrameKind::Handshake as u8 => {
                let body = encode_body(&HandshakeAccept {
                    member: me.clone(),
                    incarnation,
                });
                encode_frame(&mut out, FrameKind::HandshakeAccept, 0, 0, &body);
            }
            k if k == FrameKind::Ping as u8 => encode_frame(&mut out, FrameKind::Ack, 0, seq, &[]),
            k if k == FrameKind::Data as u8 && flags & FLAG_ACK != 0 => {
                encode_frame(&mut out, FrameKind::Ack, 0, seq, &[])
            }
            _ => {}
        }
        if !out.is_empty() && s.write_all(&out).is_err() {
            return;
        }
    }
}

/// The restarted member is the one that connects to nobody: B's first run is killed (-9, no
/// leave), B starts again under the same id on the same port, knowing no one. A's next send
/// connects to it, and B's answer to the handshake carries its new incarnation: A reports B
/// gone and back at once. Pings are an hour apart on both sides, so neither A's pings nor B's
/// (which would show B's new incarnation to A's receiver) can be what noticed the restart.
#[test]
fn a_restarted_member_that_connects_to_nobody_is_reported_gone_and_back_by_its_answer() {
    init_logs();
    let quiet = |cfg: &mut ChannelConfig| {
        cfg.membership.ping_interval = Duration::from_secs(3600);
        cfg.membership.expiration_time = Duration::from_secs(7200);
    };
    let b_id = MemberId::random();
    let b1 = FakeRun::start(
        |addr| Member {
            id: b_id,
            name: "b".into(),
            addr,
            domain: String::new(),
        },
        0xb1,
    );
    let mut cfg_a = ChannelConfig::loopback("a");
    quiet(&mut cfg_a);
    cfg_a.static_members = vec![tribecast::StaticMember::with_unique_id(b1.addr, b_id)];
    let (a, events) = with_events(cfg_a);
    wait_for("A sees B's first run", LIMIT, || events.has("+b"));
    let b = a
        .members()
        .into_iter()
        .find(|m| m.id == b_id)
        .expect("B is a member");
    a.send(
        std::slice::from_ref(&b),
        b"to the first run".to_vec(),
        SendOptions::USE_ACK,
    )
    .expect("send to B's first run");

    b1.kill();
    let mut cfg_b = ChannelConfig::loopback("b");
    quiet(&mut cfg_b);
    cfg_b.unique_id = Some(b_id);
    cfg_b.receiver.port = b.addr.port();
    let b2 = GroupChannel::new(cfg_b).expect("config");
    let inbox = collecting(&b2);
    b2.start().expect("B's second run binds B's port");
    assert_eq!(local(&b2).addr, b.addr);

    let t0 = Instant::now();
    // The pooled connection to the first run is dead: the send reconnects (a retry, or a
    // failed send that the next one follows) and the second run answers.
    wait_for("a send reaches B's second run", LIMIT, || {
        let _ = a.send(
            std::slice::from_ref(&b),
            b"to the second run".to_vec(),
            SendOptions::SYNC_ACK,
        );
        inbox.len() > 0
    });
    wait_for("A reports B gone and back", LIMIT, || {
        let e = events.0.lock();
        e.iter().filter(|x| *x == "+b").count() == 2 && e.iter().any(|x| x == "-b")
    });
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "noticed after {took:?}: not by the handshake answer"
    );
    let seen = events.0.lock().clone();
    assert_eq!(seen, ["+b", "-b", "+b"], "A's membership events");
    assert!(
        a.members().iter().any(|m| m.id == b_id),
        "B is a member again"
    );
    b2.stop();
    a.stop();
}
