//! Backpressure over real sockets on 127.0.0.1 (issue 7, "Backpressure everywhere"): a member
//! that stops reading, a receiver whose listener blocks, and a flood of idle or garbage
//! connections. Every queue involved is bounded, and the policy when it fills is the one
//! docs/operations.md ("Queues and backpressure") documents; these tests check it from outside.
//!
//! Run: `cargo test --release --test backpressure`.

mod common;

use common::*;
use parking_lot::{Condvar, Mutex};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tribecast::wire::frame::{encode_frame, HEADER_LEN, PROTOCOL_VERSION};
use tribecast::wire::{decode_body, encode_body, FrameKind, Handshake, HandshakeAccept};
use tribecast::{
    ChannelConfig, ChannelError, ChannelMessage, GroupChannel, Member, MemberId, SendOptions,
};

const LIMIT: Duration = Duration::from_secs(20);

fn local(ch: &GroupChannel) -> Member {
    ch.local_member().expect("running")
}

fn read_raw_frame(s: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut f = vec![0u8; HEADER_LEN];
    s.read_exact(&mut f)?;
    let len = u32::from_le_bytes([f[8], f[9], f[10], f[11]]) as usize;
    if len > 64 << 10 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "frame too big"));
    }
    f.resize(HEADER_LEN + len, 0);
    s.read_exact(&mut f[HEADER_LEN..])?;
    Ok(f)
}

// ---------------------------------------------------------------------------------------------
// A member that stops reading
// ---------------------------------------------------------------------------------------------

/// A raw TCP peer posing as a member: it accepts connections and, while `answer` is set, answers
/// each handshake as a tribecast member would, then never reads that connection again. With
/// `answer` cleared it still accepts (the kernel completes connects anyway) but says nothing:
/// a member whose process hangs.
struct StalledPeer {
    member: Member,
    answer: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    held: Arc<Mutex<Vec<TcpStream>>>,
    thread: Option<JoinHandle<()>>,
}

impl StalledPeer {
    fn start(answer: bool) -> StalledPeer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let member = Member {
            id: MemberId::random(),
            name: "stalled".into(),
            addr: listener.local_addr().expect("addr"),
            domain: String::new(),
        };
        let answer = Arc::new(AtomicBool::new(answer));
        let stop = Arc::new(AtomicBool::new(false));
        let held = Arc::new(Mutex::new(Vec::new()));
        let (a, st, h, m) = (answer.clone(), stop.clone(), held.clone(), member.clone());
        let thread = std::thread::spawn(move || {
            // Bounded: a test never makes more connections than this.
            for _ in 0..10_000 {
                let Ok((mut s, _)) = listener.accept() else {
                    return;
                };
                if st.load(SeqCst) {
                    return;
                }
                if a.load(SeqCst) {
                    let _ = s.set_read_timeout(Some(LIMIT));
                    if read_raw_frame(&mut s).is_ok() {
                        let mut f = Vec::new();
                        let body = encode_body(&HandshakeAccept { member: m.clone() });
                        encode_frame(&mut f, FrameKind::HandshakeAccept, 0, 0, &body);
                        let _ = s.write_all(&f);
                    }
                }
                h.lock().push(s);
            }
        });
        StalledPeer {
            member,
            answer,
            stop,
            held,
            thread: Some(thread),
        }
    }
}

impl Drop for StalledPeer {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
        let _ = TcpStream::connect_timeout(&self.member.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The numbers a listener received, from the first 4 bytes of each payload.
fn numbering(ch: &GroupChannel) -> Arc<Mutex<Vec<u32>>> {
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    ch.add_channel_listener(Arc::new(move |m: &ChannelMessage<'_>| {
        let n = m
            .payload
            .get(..4)
            .map_or(u32::MAX, |h| u32::from_le_bytes([h[0], h[1], h[2], h[3]]));
        g.lock().push(n);
        Ok(())
    }));
    got
}

fn numbered(n: u32, len: usize) -> Vec<u8> {
    let mut p = n.to_le_bytes().to_vec();
    p.resize(len.max(4), (n % 251) as u8);
    p
}

/// Synchronous sends to a healthy member and to a member that stopped reading (first a peer that
/// still answers handshakes, then one that answers nothing) return within the send timeout, in
/// either order of the destinations: the healthy member gets every message and only the stalled
/// one is reported faulty. Sends to the healthy member alone are not slowed at all. Asynchronous
/// messages to both then keep flowing to the healthy member, in order and all of them, while the
/// stalled member's queue stays within `sender.max_queued_bytes_per_member` and the excess is
/// dropped and counted.
#[test]
fn stalled_member_does_not_stall_sends_to_healthy_members() {
    init_logs();
    let timeout = Duration::from_millis(400);
    // Slack over the timeout: a busy 2-core machine may schedule late.
    let slack = Duration::from_millis(600);
    let healthy = started("healthy");
    let got = numbering(&healthy);
    let mut cfg = ChannelConfig::loopback("sender");
    cfg.sender.timeout = timeout;
    cfg.max_frame_size = 8192;
    cfg.dispatch.max_queue_size = 64 * 1024;
    cfg.sender.max_queued_bytes_per_member = 64 * 1024;
    let s = GroupChannel::new(cfg).expect("config");
    s.start().expect("start");
    let peer = StalledPeer::start(true);
    let (h, p) = (local(&healthy), peer.member.clone());
    let mut n = 0u32;
    let mut slowest = Duration::ZERO;
    for answering in [true, false] {
        peer.answer.store(answering, SeqCst);
        for round in 0..2 {
            for dests in [[p.clone(), h.clone()], [h.clone(), p.clone()]] {
                for opts in [SendOptions::SYNC_ACK, SendOptions::USE_ACK] {
                    let t = Instant::now();
                    let r = s.send(&dests, numbered(n, 100), opts);
                    let took = t.elapsed();
                    slowest = slowest.max(took);
                    let what = format!(
                        "send #{n} (answering {answering}, round {round}, {opts:?}, first {})",
                        dests[0].name
                    );
                    match r {
                        Err(ChannelError::Faulty(f)) => {
                            let ids: Vec<MemberId> = f.iter().map(|f| f.id).collect();
                            assert_eq!(ids, vec![p.id], "{what}: only the stalled one: {f:?}");
                        }
                        other => panic!("{what}: expected the stalled member faulty, got {other:?}"),
                    }
                    assert!(
                        took <= timeout + slack,
                        "{what} took {took:?}, past the timeout {timeout:?}"
                    );
                    n += 1;
                    wait_for(&format!("{what} delivered"), LIMIT, || got.lock().len() == n as usize);
                    // The healthy member alone: no wait for the stalled one.
                    let t = Instant::now();
                    s.send(std::slice::from_ref(&h), numbered(n, 100), SendOptions::SYNC_ACK)
                        .expect("healthy alone");
                    let took = t.elapsed();
                    assert!(took < timeout, "{what}: healthy alone took {took:?}");
                    n += 1;
                }
            }
        }
    }
    eprintln!("synchronous sends: slowest {slowest:?} with a {timeout:?} timeout");
    let member = |id: &MemberId| s.stats().member(id).cloned().expect("figures");
    assert_eq!(member(&h.id).send_errors, 0, "{:?}", member(&h.id));
    assert_eq!(member(&p.id).async_queued_bytes, 0, "nothing queued by sync sends");
    // Asynchronous: the stalled member's lane fills to its limit and drops; the healthy one
    // gets everything, in order.
    peer.answer.store(true, SeqCst);
    let first_async = n;
    let deadline = Instant::now() + LIMIT;
    let mut sent = 0u32;
    let mut queue_full = 0u32;
    while member(&p.id).async_dropped == 0 {
        assert!(
            Instant::now() < deadline && sent < 100_000,
            "nothing dropped for the stalled member after {sent} messages: {:?}",
            member(&p.id)
        );
        sent += 1;
        match s.send(&[p.clone(), h.clone()], numbered(n, 4000), SendOptions::ASYNCHRONOUS) {
            Ok(()) => n += 1,
            // While the dispatch thread waits out the first stalled write (up to the timeout),
            // the shared queue may fill: the Block policy then fails the send. Try again.
            Err(ChannelError::QueueFull { .. }) => queue_full += 1,
            Err(e) => panic!("asynchronous send: {e}"),
        }
    }
    wait_for("every asynchronous message at the healthy member", LIMIT, || {
        got.lock().len() == n as usize
    });
    let seen = got.lock().clone();
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]) && seen[first_async as usize] == first_async,
        "in order"
    );
    let (ms, mh) = (member(&p.id), member(&h.id));
    eprintln!(
        "asynchronous: {} messages ({queue_full} refused QueueFull); stalled member: {} B queued, {} dropped",
        n - first_async,
        ms.async_queued_bytes,
        ms.async_dropped
    );
    assert!(
        ms.async_queued_bytes <= 64 * 1024 + 8192,
        "the stalled member's queue stays bounded: {ms:?}"
    );
    // Every message for the stalled member is accounted for: written to its socket (the
    // kernel's buffers take some), dropped and counted, or waiting in its bounded queue.
    let total = u64::from(n - first_async);
    let waiting = total
        .checked_sub(ms.messages_sent + ms.async_dropped)
        .unwrap_or_else(|| panic!("more sent and dropped than queued: {ms:?}"));
    assert!(
        waiting * 4000 <= ms.async_queued_bytes,
        "{waiting} messages unaccounted for: {ms:?}"
    );
    assert_eq!((mh.async_dropped, mh.send_errors), (0, 0), "{mh:?}");
    assert!(s.with_sender_stats(|x| x.stalls.load(SeqCst)).expect("running") >= 1);
    drop(peer);
}
