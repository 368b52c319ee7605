//! The cluster key on real sockets (127.0.0.1, port 0): nodes without the key, or with another
//! one, are refused and change nothing; forged and replayed frames are refused and close only
//! their own connection; domains are kept apart. Multicast cases are in tests/multicast.rs.

mod common;

use common::*;
use parking_lot::Mutex;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tribecast::transport::lane::{Identity, Lane, Reply};
use tribecast::wire::frame::{
    encode_frame, FrameKind, FLAG_ACK, FLAG_SEALED, FLAG_SYNC_ACK, PROTOCOL_VERSION,
};
use tribecast::wire::{encode_body, parse_frame, DataBody, Envelope, Handshake};
use tribecast::{
    ChannelConfig, ClusterKey, GroupChannel, KeyError, Member, MemberId, SendFailure, SendOptions,
    StaticMember,
};

const LIMIT: Duration = Duration::from_secs(20);
const KEY: &str = "3f1c0e6d2a9b8c7d6e5f40312233445566778899aabbccddeeff001122334455";
const OTHER_KEY: &str = "aa1c0e6d2a9b8c7d6e5f40312233445566778899aabbccddeeff001122334455";

fn key(text: &str) -> Option<ClusterKey> {
    Some(ClusterKey::parse(text).expect("test key"))
}

fn node(name: &str, k: Option<ClusterKey>, peers: &[SocketAddr]) -> GroupChannel {
    let mut cfg = ChannelConfig::loopback(name);
    cfg.cluster_key = k;
    cfg.static_members = peers.iter().map(|&addr| StaticMember::new(addr)).collect();
    let ch = GroupChannel::new(cfg).expect("valid config");
    ch.start().expect("start");
    ch
}

fn addr(ch: &GroupChannel) -> SocketAddr {
    ch.local_member().expect("running").addr
}

fn names(ch: &GroupChannel) -> Vec<String> {
    let mut v: Vec<String> = ch.members().into_iter().map(|m| m.name).collect();
    v.sort();
    v
}

#[test]
fn keyed_members_talk_in_every_mode() {
    init_logs();
    let a = node("a", key(KEY), &[]);
    let b = node("b", key(KEY), &[addr(&a)]);
    let inbox_a = collecting(&a);
    wait_for("a and b see each other", LIMIT, || {
        a.members().len() == 1 && b.members().len() == 1
    });
    for (i, opts) in [
        SendOptions::ASYNCHRONOUS,
        SendOptions::USE_ACK,
        SendOptions::SYNC_ACK,
    ]
    .into_iter()
    .enumerate()
    {
        for n in 0..50u8 {
            b.send_to_all(vec![i as u8, n, 7, 7, 7], opts)
                .expect("keyed send");
        }
    }
    wait_for("a got 150", LIMIT, || inbox_a.len() == 150);
    let rx = a.receiver_stats().expect("running");
    assert_eq!(rx.auth_failures.load(Ordering::Relaxed), 0);
}

/// A node with another key, and a node with none, never become members of a keyed cluster (nor
/// the keyed nodes members of theirs), in either direction, and deliver nothing.
#[test]
fn wrong_key_and_no_key_cannot_join() {
    init_logs();
    let a = node("a", key(KEY), &[]);
    let b = node("b", key(KEY), &[addr(&a)]);
    let inbox_a = collecting(&a);
    let inbox_b = collecting(&b);
    wait_for("a and b see each other", LIMIT, || {
        a.members().len() == 1 && b.members().len() == 1
    });
    let wrong = node("wrong", key(OTHER_KEY), &[addr(&a), addr(&b)]);
    let plain = node("plain", None, &[addr(&a), addr(&b)]);
    let inbox_wrong = collecting(&wrong);
    let inbox_plain = collecting(&plain);
    // The keyed nodes probe them too, so each side tries both directions.
    let a2 = node(
        "a2",
        key(KEY),
        &[addr(&a), addr(&b), addr(&wrong), addr(&plain)],
    );
    wait_for("a2 joins a and b", LIMIT, || {
        names(&a2) == ["a", "b"] && a.members().len() == 2 && b.members().len() == 2
    });
    // Refusals are seen at the keyed receivers: the intruders tried and failed.
    wait_for("a refused both intruders", LIMIT, || {
        let rx = a.receiver_stats().expect("running");
        rx.connections_refused.load(Ordering::Relaxed) + rx.auth_failures.load(Ordering::Relaxed)
            >= 2
    });
    // Several ping rounds (100 ms in loopback configs) later nobody crossed over.
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        assert_eq!(names(&a), ["a2", "b"]);
        assert_eq!(names(&b), ["a", "a2"]);
        assert!(wrong.members().is_empty(), "{:?}", names(&wrong));
        assert!(plain.members().is_empty(), "{:?}", names(&plain));
        std::thread::sleep(Duration::from_millis(50));
    }
    // Their sends reach no one; the keyed cluster still works.
    let _ = wrong.send_to_all(b"intruder".to_vec(), SendOptions::SYNC_ACK);
    let _ = plain.send_to_all(b"intruder".to_vec(), SendOptions::SYNC_ACK);
    a2.send_to_all(b"hello".to_vec(), SendOptions::SYNC_ACK)
        .expect("keyed send");
    wait_for("hello", LIMIT, || inbox_a.len() == 1 && inbox_b.len() == 1);
    assert!(inbox_a.messages.lock().iter().all(|(_, p)| p == b"hello"));
    assert_eq!(inbox_wrong.len() + inbox_plain.len(), 0);
}

/// An identity for driving a lane by hand, as the channel's sender would.
fn identity(name: &str, k: Option<ClusterKey>) -> Identity {
    Identity {
        cluster: "tribecast".into(),
        local: Member {
            id: MemberId([0x42; 16]),
            name: name.into(),
            addr: "127.0.0.1:9".parse().expect("addr"),
            domain: String::new(),
        },
        incarnation: 77,
        max_frame_size: 4 << 20,
        next_seq: AtomicU64::new(0),
        key: k,
        peer_seen: None,
    }
}

fn target(addr: SocketAddr) -> Member {
    Member {
        id: MemberId([0; 16]),
        name: String::new(),
        addr,
        domain: String::new(),
    }
}

/// Sends one synchronized-ack message on a lane and waits for its ack.
fn send_sync(lane: &mut Lane, id: &Identity, payload: &[u8]) -> Result<(), SendFailure> {
    let deadline = Instant::now() + LIMIT;
    let body = DataBody::new(id.local.id, 1, SendOptions::SYNC_ACK.0, payload);
    lane.wbuf.clear();
    let seq = lane.stamp(
        id,
        id.number(),
        FLAG_ACK | FLAG_SYNC_ACK,
        &body,
        &crc32fast::Hasher::new(),
    );
    lane.flush_wbuf(deadline, LIMIT)?;
    loop {
        match lane.read_reply(deadline, LIMIT)? {
            Reply::Ack(s) if s == seq => return Ok(()),
            Reply::FailAck(s, why) if s == seq => return Err(SendFailure::Remote(why)),
            _ => {}
        }
    }
}

/// A TCP relay in front of a receiver that records what the sender sent and can inject bytes
/// into the receiver-bound stream: the attacker on the path. Serves one connection.
struct Tap {
    addr: SocketAddr,
    sent: Arc<Mutex<Vec<u8>>>,
    upstream: Arc<Mutex<Option<TcpStream>>>,
}

fn tap(to: SocketAddr) -> Tap {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind tap");
    let addr = l.local_addr().expect("tap addr");
    let sent = Arc::new(Mutex::new(Vec::new()));
    let upstream = Arc::new(Mutex::new(None));
    let (sent2, up2) = (sent.clone(), upstream.clone());
    std::thread::spawn(move || {
        let Ok((mut client, _)) = l.accept() else {
            return;
        };
        let Ok(server) = TcpStream::connect(to) else {
            return;
        };
        let (Ok(mut server_r), Ok(mut client_w)) = (server.try_clone(), client.try_clone()) else {
            return;
        };
        *up2.lock() = server.try_clone().ok();
        // Receiver to sender: copied as is.
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut server_r, &mut client_w);
            let _ = client_w.shutdown(std::net::Shutdown::Both);
        });
        let mut server_w = server;
        let mut buf = [0u8; 16 * 1024];
        loop {
            match client.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    sent2.lock().extend_from_slice(&buf[..n]);
                    if server_w.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = server_w.shutdown(std::net::Shutdown::Both);
    });
    Tap {
        addr,
        sent,
        upstream,
    }
}

/// The frames of a recorded stream, each whole (header and body).
fn frames(stream: &[u8]) -> Vec<(FrameKind, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Ok(Some((f, used))) = parse_frame(&stream[at..], 1 << 30) {
        out.push((f.header.kind, stream[at..at + used].to_vec()));
        at += used;
    }
    out
}

/// Writes `bytes` to a receiver and reads until it closes the connection; returns the kinds
/// of the frames it answered with.
fn answers(to: SocketAddr, bytes: &[u8]) -> Vec<FrameKind> {
    let mut s = TcpStream::connect(to).expect("connect");
    s.set_read_timeout(Some(LIMIT)).expect("timeout");
    s.write_all(bytes).expect("write");
    let mut got = Vec::new();
    // Ends when the receiver closes (EOF or reset) or after LIMIT (then the assertions fail).
    let _ = s.read_to_end(&mut got);
    frames(&got).into_iter().map(|(k, _)| k).collect()
}

fn rx_counts(ch: &GroupChannel) -> (u64, u64, u64) {
    let rx = ch.receiver_stats().expect("running");
    (
        rx.auth_failures.load(Ordering::Relaxed),
        rx.connections_refused.load(Ordering::Relaxed),
        rx.messages_delivered.load(Ordering::Relaxed),
    )
}

/// A recorded connection (handshake and data) replayed to the receiver on a new connection is
/// refused at its sealed handshake; a recorded data frame injected into the live connection
/// closes that connection and is not delivered; another connection is undisturbed; the sender
/// reconnects and goes on.
#[test]
fn captured_frames_replayed_are_refused() {
    init_logs();
    let a = node("a", key(KEY), &[]);
    // Listening before b starts: b's join may be reported as soon as b exists.
    let events = Arc::new(Events::default());
    a.add_membership_listener(events.clone());
    let b = node("b", key(KEY), &[addr(&a)]);
    let inbox = collecting(&a);
    wait_for("a and b see each other", LIMIT, || {
        a.members().len() == 1 && b.members().len() == 1
    });
    let id = identity("lane", key(KEY));
    let t = tap(addr(&a));
    let mut lane = Lane::new(5);
    lane.connect(&target(t.addr), &id, Instant::now() + LIMIT, LIMIT)
        .expect("keyed handshake through the tap");
    for p in [&b"one"[..], b"two", b"three"] {
        send_sync(&mut lane, &id, p).expect("sync send");
    }
    wait_for("3 delivered", LIMIT, || inbox.len() == 3);
    let captured = t.sent.lock().clone();
    let kinds: Vec<FrameKind> = frames(&captured).iter().map(|(k, _)| *k).collect();
    assert_eq!(
        kinds,
        [
            FrameKind::Handshake,
            FrameKind::Handshake,
            FrameKind::Data,
            FrameKind::Data,
            FrameKind::Data
        ]
    );
    // The ciphertext does not show the payload.
    assert!(!captured.windows(5).any(|w| w == b"three"));

    // 1. The whole recorded connection, replayed on a new one: the receiver's fresh challenge
    //    makes the recorded sealed handshake fail; nothing is delivered.
    let (auth0, _, delivered0) = rx_counts(&a);
    let got = answers(addr(&a), &captured);
    assert_eq!(got, [FrameKind::Challenge], "answers to the replay");
    wait_for("replay refused", LIMIT, || rx_counts(&a).0 == auth0 + 1);
    assert_eq!(rx_counts(&a).2, delivered0);

    // 2. A recorded data frame injected into the live connection, where the sender's next
    //    frame would go: refused (its nonce is not the next one), the connection closed.
    let (_, data) = frames(&captured).pop().expect("a data frame");
    let upstream = t.upstream.lock().as_ref().map(|s| s.try_clone());
    let mut upstream = upstream.expect("tap connected").expect("clone");
    upstream.write_all(&data).expect("inject");
    wait_for("injection refused", LIMIT, || rx_counts(&a).0 == auth0 + 2);
    assert_eq!(rx_counts(&a).2, delivered0);

    // Other connections are undisturbed, and no member changed.
    b.send_to_all(b"from b".to_vec(), SendOptions::SYNC_ACK)
        .expect("b's connection still works");
    wait_for("b's message", LIMIT, || inbox.len() == 4);
    // The hand-driven lane joined once (it holds the key); the replays made nobody join again.
    let joins = |who: &str| events.0.lock().iter().filter(|e| *e == who).count();
    // The membership service reports a join on its own thread, possibly after the lane's
    // messages were delivered.
    wait_for("a reports the lane's join", LIMIT, || joins("+lane") >= 1);
    assert_eq!(
        (joins("+b"), joins("+lane")),
        (1, 1),
        "{:?}",
        events.0.lock()
    );
    assert!(names(&a).contains(&"b".to_string()));
    // The lane whose connection was closed finds out and reconnects (directly this time).
    let mut lane2 = Lane::new(6);
    lane2
        .connect(&target(addr(&a)), &id, Instant::now() + LIMIT, LIMIT)
        .expect("new connection");
    send_sync(&mut lane2, &id, b"four").expect("send on a new connection");
    wait_for("5 delivered", LIMIT, || inbox.len() == 5);
    let got: Vec<Vec<u8>> = inbox
        .messages
        .lock()
        .iter()
        .map(|(_, p)| p.clone())
        .collect();
    assert_eq!(
        got,
        [
            b"one".to_vec(),
            b"two".to_vec(),
            b"three".to_vec(),
            b"from b".to_vec(),
            b"four".to_vec()
        ]
    );
    assert!(send_sync(&mut lane, &id, b"lost").is_err());
}

/// Hand-made frames from a party without the key: each is refused, closes only its own
/// connection, delivers nothing and changes no member.
#[test]
fn forged_frames_are_refused_and_change_nothing() {
    init_logs();
    let a = node("a", key(KEY), &[]);
    let b = node("b", key(KEY), &[addr(&a)]);
    let inbox = collecting(&a);
    wait_for("a and b see each other", LIMIT, || {
        a.members().len() == 1 && b.members().len() == 1
    });
    let me = identity("forger", None).local;
    let hs = encode_body(&Handshake {
        cluster: "tribecast".into(),
        protocol_version: PROTOCOL_VERSION,
        member: me.clone(),
        incarnation: 1,
        lane: 1,
    });
    let frame = |kind, flags, seq, body: &[u8]| {
        let mut v = Vec::new();
        encode_frame(&mut v, kind, flags, seq, body);
        v
    };
    let env = encode_body(&Envelope {
        sender: me.id,
        msg_id: 1,
        options: 0,
        payload: b"forged",
    });
    let nonce = [9u8; 32];
    let cases: Vec<(&str, Vec<u8>, Vec<FrameKind>)> = vec![
        (
            "plaintext handshake",
            frame(FrameKind::Handshake, 0, 0, &hs),
            vec![FrameKind::HandshakeRefuse],
        ),
        (
            "plaintext handshake then data",
            [
                frame(FrameKind::Handshake, 0, 0, &hs),
                frame(FrameKind::Data, 0, 1, &env),
            ]
            .concat(),
            vec![FrameKind::HandshakeRefuse],
        ),
        (
            "data without handshake",
            frame(FrameKind::Data, FLAG_SEALED, 1, &env),
            vec![],
        ),
        (
            "nonce, then a plaintext handshake marked sealed",
            [
                frame(FrameKind::Handshake, FLAG_SEALED, 0, &nonce),
                frame(FrameKind::Handshake, FLAG_SEALED, 0, &hs),
            ]
            .concat(),
            vec![FrameKind::Challenge],
        ),
        (
            "nonce, then random bytes as a sealed handshake",
            [
                frame(FrameKind::Handshake, FLAG_SEALED, 0, &nonce),
                frame(FrameKind::Handshake, FLAG_SEALED, 0, &[0x5a; 120]),
            ]
            .concat(),
            vec![FrameKind::Challenge],
        ),
        (
            "nonce, then sealed-looking data",
            [
                frame(FrameKind::Handshake, FLAG_SEALED, 0, &nonce),
                frame(FrameKind::Data, FLAG_SEALED, 1, &[0x5a; 64]),
            ]
            .concat(),
            vec![FrameKind::Challenge],
        ),
        (
            "nonce, then a leave",
            [
                frame(FrameKind::Handshake, FLAG_SEALED, 0, &nonce),
                frame(FrameKind::Leave, FLAG_SEALED, 0, &[0; 16]),
            ]
            .concat(),
            vec![FrameKind::Challenge],
        ),
        (
            "short nonce",
            frame(FrameKind::Handshake, FLAG_SEALED, 0, &nonce[..8]),
            vec![],
        ),
    ];
    let events = Arc::new(Events::default());
    a.add_membership_listener(events.clone());
    let (auth0, refused0, delivered0) = rx_counts(&a);
    let mut expected_closes = 0;
    for (what, bytes, want) in &cases {
        assert_eq!(&answers(addr(&a), bytes), want, "{what}");
        expected_closes += 1;
        // The keyed connection from b is undisturbed.
        b.send_to_all(what.as_bytes().to_vec(), SendOptions::SYNC_ACK)
            .unwrap_or_else(|e| panic!("b after {what}: {e}"));
    }
    let rx = a.receiver_stats().expect("running");
    wait_for("every forged connection closed", LIMIT, || {
        let (auth, refused, _) = rx_counts(&a);
        let other = rx.connections_closed_on_error.load(Ordering::Relaxed);
        auth + refused - auth0 - refused0 >= 2 && other >= expected_closes - 2
    });
    wait_for("b's messages", LIMIT, || inbox.len() == cases.len());
    assert!(inbox.messages.lock().iter().all(|(from, _)| from == "b"));
    assert_eq!(rx_counts(&a).2, delivered0 + cases.len() as u64);
    assert!(
        rx_counts(&a).0 >= auth0 + 3,
        "sealed forgeries fail authentication"
    );
    assert_eq!(names(&a), ["b"]);
    assert!(events.0.lock().is_empty(), "{:?}", events.0.lock());
}

/// `ChannelConfig::domain` (Tomcat's DomainFilterInterceptor): a member of another domain is
/// not seen, and its connections are refused, so its messages are dropped.
#[test]
fn other_domains_are_not_members_and_their_messages_are_dropped() {
    init_logs();
    let with_domain = |name: &str, domain: &str, peers: &[SocketAddr]| {
        let mut cfg = ChannelConfig::loopback(name);
        cfg.domain = domain.into();
        cfg.static_members = peers.iter().map(|&addr| StaticMember::new(addr)).collect();
        let ch = GroupChannel::new(cfg).expect("valid config");
        ch.start().expect("start");
        ch
    };
    let x1 = with_domain("x1", "x", &[]);
    let inbox = collecting(&x1);
    let x2 = with_domain("x2", "x", &[addr(&x1)]);
    let y = with_domain("y", "y", &[addr(&x1), addr(&x2)]);
    wait_for("x1 and x2 see each other", LIMIT, || {
        names(&x1) == ["x2"] && names(&x2) == ["x1"]
    });
    wait_for("y refused by x1", LIMIT, || rx_counts(&x1).1 >= 1);
    // y sends straight to x1's address: refused at the handshake, nothing delivered.
    let err = y
        .send(
            &[x1.local_member().expect("running")],
            b"from y".to_vec(),
            SendOptions::SYNC_ACK,
        )
        .expect_err("refused");
    assert!(err.to_string().contains("domain"), "{err}");
    x2.send_to_all(b"from x2".to_vec(), SendOptions::SYNC_ACK)
        .expect("same domain");
    wait_for("x2's message", LIMIT, || inbox.len() == 1);
    let until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < until {
        assert_eq!(names(&x1), ["x2"]);
        assert!(y.members().is_empty(), "{:?}", names(&y));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(inbox.messages.lock()[0].0, "x2");
    assert_eq!(inbox.len(), 1);
}

/// Key files and variables: typed errors that never contain the key text.
#[test]
fn key_loading_errors_are_typed_and_silent() {
    let dir = std::env::temp_dir().join(format!("tribecast-sec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let good = dir.join("good.key");
    std::fs::write(&good, format!("{KEY}\n")).expect("write");
    let k = ClusterKey::from_file(&good).expect("hex key file");
    assert_eq!(format!("{k:?}"), "ClusterKey(<redacted>)");
    let mut cfg = ChannelConfig::loopback("x");
    cfg.cluster_key = Some(k);
    assert!(
        !format!("{cfg:?}").contains(&KEY[..16]),
        "config Debug leaks the key"
    );
    let secret = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd"; // 62 digits
    let short = dir.join("short.key");
    std::fs::write(&short, secret).expect("write");
    for e in [
        ClusterKey::from_file(&short).expect_err("short key"),
        ClusterKey::from_file(dir.join("missing.key")).expect_err("missing"),
        ClusterKey::from_env("TRIBECAST_SECURITY_TEST_UNSET_VAR").expect_err("unset"),
        ClusterKey::parse(&format!("{secret}zz")).expect_err("not hex"),
    ] {
        assert!(!e.to_string().contains(&secret[..20]), "{e}");
        assert!(!format!("{e:?}").contains(&secret[..20]), "{e:?}");
    }
    assert!(matches!(
        ClusterKey::from_file(dir.join("missing.key")),
        Err(KeyError::Io { .. })
    ));
    assert!(matches!(
        ClusterKey::from_env("TRIBECAST_SECURITY_TEST_UNSET_VAR"),
        Err(KeyError::NotSet { .. })
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A keyed member's clean stop says goodbye, sealed, on its asynchronous connection after its
/// last messages: the other member gets every message before it hears the member left, and
/// hears it at once (not after a failed ping).
#[test]
fn keyed_goodbye_comes_after_the_last_asynchronous_messages() {
    const MESSAGES: usize = 2_000;
    init_logs();
    let a = node("a", key(KEY), &[]);
    let b = node("b", key(KEY), &[addr(&a)]);
    wait_for("a and b see each other", LIMIT, || {
        a.members().len() == 1 && b.members().len() == 1
    });
    let events = Arc::new(Events::default());
    b.add_membership_listener(events.clone());
    // (messages received, of which after b heard that a left)
    let seen = Arc::new(Mutex::new((0usize, 0usize)));
    let (s, ev) = (seen.clone(), events.clone());
    b.add_channel_listener(Arc::new(move |_: &tribecast::ChannelMessage<'_>| {
        let mut s = s.lock();
        s.0 += 1;
        if ev.has("-a") {
            s.1 += 1;
        }
        // A listener that takes its time, so b is still at work when the goodbye comes.
        let until = Instant::now() + Duration::from_micros(20);
        while Instant::now() < until {
            std::hint::spin_loop();
        }
        Ok(())
    }));
    for i in 0..MESSAGES {
        a.send_to_all(vec![(i % 251) as u8; 4096], SendOptions::ASYNCHRONOUS)
            .expect("queued");
    }
    let stopped = Instant::now();
    a.stop();
    wait_for("b hears that a left", LIMIT, || events.has("-a"));
    let heard_after = stopped.elapsed();
    wait_for("b got every message", LIMIT, || seen.lock().0 == MESSAGES);
    assert_eq!(seen.lock().1, 0, "messages handled after a's goodbye");
    assert!(
        heard_after < Duration::from_millis(900),
        "b heard of a's stop after {heard_after:?}: by a failed ping, not the goodbye"
    );
}
