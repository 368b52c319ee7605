//! The session bounds of issue 15 over real sockets on 127.0.0.1: `max_active_sessions`
//! (Tomcat's `maxActiveSessions`) refuses a new session with a typed error and counts it,
//! while existing sessions keep working on every node; `max_session_size` refuses an
//! attribute at `set()`, before anything is stored or sent, and a session at the limit still
//! fits one frame; a peer that sends a frame above `max_frame_size` is refused (typed error,
//! log line) and only its connection is dropped.

mod common;

use common::raw::{raw_member, shake_hands};
use common::wait_for;
use parking_lot::Mutex;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tribecast::wire::frame::{body_hasher, encode_header, FLAG_ACK};
use tribecast::wire::FrameKind;
use tribecast::{
    ChannelConfig, ClusterConfig, ClusterManager, ManagerError, SendOptions, SessionError,
    SessionRequestError, SimpleTcpCluster, StaticMember, TooManySessions,
};

const LIMIT: Duration = Duration::from_secs(20);

/// The log lines of this test binary, kept for the assertions on log lines (and printed).
static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Info
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            let line = format!("{} {}: {}", r.level(), r.target(), r.args());
            eprintln!("{line}");
            LOG.lock().push(line);
        }
    }
    fn flush(&self) {}
}

fn init_capture() {
    if log::set_boxed_logger(Box::new(Capture)).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}

fn log_lines(needle: &str) -> Vec<String> {
    LOG.lock()
        .iter()
        .filter(|l| l.contains(needle))
        .cloned()
        .collect()
}

/// A started node on 127.0.0.1 (OS-chosen port) with application "/app", listing `peers`;
/// synchronized ack, so a request's change is on every member when `finish` returns.
fn node(
    route: &str,
    peers: &[&SimpleTcpCluster],
    tweak: impl Fn(&mut ClusterConfig),
) -> SimpleTcpCluster {
    let mut cfg = ClusterConfig::default();
    cfg.channel = ChannelConfig::loopback(route);
    cfg.channel.static_members = peers
        .iter()
        .map(|p| StaticMember::new(p.channel().local_member().expect("running").addr))
        .collect();
    cfg.jvm_route = route.into();
    cfg.channel_send_options = SendOptions::SYNC_ACK;
    tweak(&mut cfg);
    let c = SimpleTcpCluster::new(cfg).expect("config");
    c.add_application("/app");
    c.start().expect("start");
    c
}

fn two_nodes(tweak: impl Fn(&mut ClusterConfig) + Copy) -> [SimpleTcpCluster; 2] {
    let a = node("node1", &[], tweak);
    let b = node("node2", &[&a], tweak);
    for n in [&a, &b] {
        wait_for("both members see each other", LIMIT, || {
            n.channel().members().len() == 1
        });
        let app = n.manager("/app").expect("app");
        assert!(
            app.wait_ready(LIMIT),
            "{} ready",
            n.channel().config().local_name
        );
    }
    [a, b]
}

fn app(n: &SimpleTcpCluster) -> Arc<ClusterManager> {
    n.manager("/app").expect("app")
}

/// A new session on `app` holding `user`; its id.
fn create(app: &Arc<ClusterManager>, user: &str) -> Result<String, SessionRequestError> {
    let mut req = app.request(None, "/app/login");
    req.session_or_create()?.set("user", user)?;
    let id = req.session_id().expect("made").to_string();
    req.finish()?;
    Ok(id)
}

fn refused(r: Result<String, SessionRequestError>) -> TooManySessions {
    match r {
        Err(SessionRequestError::TooManySessions(t)) => t,
        other => panic!("expected TooManySessions, got {other:?}"),
    }
}

fn rejected(app: &ClusterManager) -> u64 {
    app.stats.rejected_sessions.load(Ordering::Relaxed)
}

/// Two nodes bounded to 5 sessions: filled with sessions made on both, every further
/// creation is refused on either node with `TooManySessions` (HTTP 503), each refusal
/// counted where it happened and logged once per burst; the sessions held are read and
/// changed on both nodes meanwhile; once one ends everywhere, a new one is made.
#[test]
fn at_max_active_sessions_a_new_session_is_refused_and_the_others_keep_working() {
    init_capture();
    const MAX: usize = 5;
    let nodes = two_nodes(|c| c.manager.max_active_sessions = Some(MAX));
    let (a, b) = (app(&nodes[0]), app(&nodes[1]));
    let mut ids = Vec::new();
    for i in 0..MAX {
        let on = if i % 2 == 0 { &a } else { &b };
        ids.push(create(on, &format!("user{i}")).expect("within the bound"));
    }
    for n in [&a, &b] {
        assert_eq!(
            n.session_count(),
            MAX,
            "replicated: every node holds them all"
        );
    }
    // Refusals: 3 on node 1, 2 on node 2.
    for (n, times) in [(&a, 3), (&b, 2)] {
        for _ in 0..times {
            let e = create(n, "one too many");
            if let Err(e) = &e {
                #[cfg(feature = "http")]
                assert_eq!(e.http_status(), 503, "{e}");
                assert!(e.to_string().contains("max_active_sessions is 5"), "{e}");
            }
            assert_eq!(
                refused(e),
                TooManySessions {
                    active: MAX,
                    max: MAX
                }
            );
        }
    }
    // The error of `session_or_create` itself is typed too.
    let mut req = a.request(None, "/app/login");
    assert!(matches!(
        req.session_or_create(),
        Err(ManagerError::TooManySessions(TooManySessions {
            active: 5,
            max: 5
        }))
    ));
    assert!(req.set_cookie().is_none(), "no session, no cookie");
    req.finish().expect("nothing to send");
    assert_eq!(
        (rejected(&a), rejected(&b)),
        (4, 2),
        "counted where refused"
    );
    for (n, want) in [(&nodes[0], 4), (&nodes[1], 2)] {
        assert_eq!(
            n.manager("/app").expect("app").stats().rejected_sessions,
            want
        );
        let text = n.prometheus_text();
        assert!(
            text.contains(&format!(
                "tribecast_manager_rejected_sessions_total{{context=\"/app\"}} {want}\n"
            )),
            "{text}"
        );
        assert!(text.contains("tribecast_manager_max_active_sessions{context=\"/app\"} 5\n"));
    }
    // One warning per node for the burst, not one per refusal.
    let warnings = log_lines("new session refused");
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[0].contains("5 session(s) held here, max_active_sessions is 5"),
        "{warnings:?}"
    );
    // Every session held is read and changed, on both nodes, at the bound.
    for (i, id) in ids.iter().enumerate() {
        for (n, other, k) in [(&a, &b, 1u32), (&b, &a, 2)] {
            let mut req = n.request(Some(id), "/app/counter");
            let s = req.session().expect("served at the bound");
            assert_eq!(s.get::<String>("user").unwrap(), Some(format!("user{i}")));
            s.set("n", &k).expect("set");
            req.finish().expect("replicated");
            let copy = other.find(id).expect("held on the other node");
            assert_eq!(copy.get::<u32>("n").unwrap(), Some(k));
        }
    }
    // One session ends (everywhere): room for exactly one more, on either node.
    let mut req = b.request(Some(&ids[0]), "/app/logout");
    req.invalidate().expect("invalidated everywhere");
    drop(req);
    wait_for("node 1 dropped the session", LIMIT, || {
        a.session_count() == MAX - 1
    });
    let new = create(&a, "after logout").expect("room again");
    assert_eq!(
        b.find(&new)
            .and_then(|s| s.get::<String>("user").ok().flatten())
            .as_deref(),
        Some("after logout")
    );
    refused(create(&b, "full again"));
    assert_eq!(rejected(&b), 3);
}

/// `max_session_size`: a 10 MiB attribute is refused at `set()` with `TooLarge`; the session
/// is as it was, the request goes on (a small change in the same request is replicated),
/// and nothing of the 10 MiB is sent (one replication, for the small change; a few KiB at most,
/// with whatever background messages the members exchange meanwhile).
#[test]
fn a_10_mib_attribute_is_refused_at_set_and_nothing_is_sent() {
    init_capture();
    let nodes = two_nodes(|_| {});
    let (a, b) = (app(&nodes[0]), app(&nodes[1]));
    assert_eq!(
        a.max_session_size(),
        1 << 20,
        "the default, below max_frame_size"
    );
    let id = create(&a, "ann").expect("made");
    let sent = |n: &SimpleTcpCluster| n.channel().stats().totals.bytes_sent;
    let (sent_before, replications_before) = (sent(&nodes[0]), a.stats().replications);
    let big = "x".repeat(10 << 20);
    let mut req = a.request(Some(&id), "/app/cart");
    let s = req.session().expect("served");
    match s.set("cart", &big) {
        Err(SessionError::TooLarge { name, size, max }) => {
            assert_eq!((name.as_str(), max), ("cart", 1 << 20));
            assert!(size > 10 << 20, "{size}");
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // The same error through the request path's one error type, with `?`.
    let through: Result<(), SessionRequestError> = (|| {
        s.set("cart", &big)?;
        Ok(())
    })();
    let e = through.expect_err("refused");
    assert!(e.to_string().contains("more than max_session_size"), "{e}");
    #[cfg(feature = "http")]
    assert_eq!(e.http_status(), 500);
    assert_eq!(s.get::<String>("user").unwrap().as_deref(), Some("ann"));
    assert_eq!(s.get::<String>("cart").unwrap(), None);
    s.set("note", "small").expect("a small change still fits");
    req.finish().expect("replicated");
    let copy = b.find(&id).expect("held on node 2");
    assert_eq!(
        copy.get::<String>("note").unwrap().as_deref(),
        Some("small")
    );
    assert_eq!(copy.get::<String>("cart").unwrap(), None);
    assert_eq!(
        a.find(&id).expect("held").get::<String>("cart").unwrap(),
        None
    );
    assert_eq!(
        a.stats().replications,
        replications_before + 1,
        "the small change only"
    );
    let sent_bytes = sent(&nodes[0]) - sent_before;
    assert!(
        sent_bytes < 64 * 1024,
        "{sent_bytes} bytes sent for a small change"
    );
    // A request whose only change was refused sends nothing.
    let mut req = a.request(Some(&id), "/app/cart");
    assert!(req.session().expect("served").set("cart", &big).is_err());
    req.finish().expect("nothing to send");
    assert_eq!(a.stats().replications, replications_before + 1);
}

/// A session at the limit fits one frame, whole (the creating request's message carries the
/// whole session) and as a change: with `max_frame_size` 64 KiB and no `max_session_size`, a
/// request makes the session exactly `max_session_size()` bytes and it reaches node 2; a
/// byte more is refused at `set()`.
#[test]
fn a_session_at_the_limit_fits_one_frame() {
    init_capture();
    let nodes = two_nodes(|c| {
        c.channel.max_frame_size = 64 * 1024;
        c.manager.max_session_size = None;
    });
    let (a, b) = (app(&nodes[0]), app(&nodes[1]));
    let max = a.max_session_size();
    assert!(max < 64 * 1024 && max > 60 * 1024, "{max}");
    let mut req = a.request(None, "/app/login");
    let s = req.session_or_create().expect("made");
    s.set_principal(Some("ann"), Some("FORM"));
    // Grow one attribute to the largest value that fits, a byte at a time near the end.
    let base = s.size();
    let mut len = max - base - 64;
    s.set("data", &vec![7u8; len]).expect("well within");
    while s.set("data", &vec![7u8; len + 1]).is_ok() {
        len += 1;
    }
    assert!(
        s.size() <= max && s.size() > max - 8,
        "{} of {max}",
        s.size()
    );
    let id = s.id().to_string();
    req.finish().expect("the whole session in one frame");
    let copy = b.find(&id).expect("node 2 has it");
    assert_eq!(
        copy.get::<Vec<u8>>("data").unwrap().map(|v| v.len()),
        Some(len)
    );
    // And as a change: replace it with another value of the same size.
    let mut req = a.request(Some(&id), "/app/x");
    req.session()
        .expect("served")
        .set("data", &vec![8u8; len])
        .expect("same size");
    req.finish().expect("the change in one frame");
    let copy = b.find(&id).expect("node 2 has it");
    assert_eq!(copy.get::<Vec<u8>>("data").unwrap(), Some(vec![8u8; len]));
}

/// The receiving side: a peer that shakes hands and then sends a frame announcing 10 MiB,
/// above `max_frame_size` (4 MiB), is refused from the frame's header (the typed
/// `FrameError::TooLarge`, named in the warning) and its connection closed; nothing of the
/// body is buffered, and replication between the two nodes goes on undisturbed.
/// (`tests/faults.rs`, `hostile_input_closes_only_that_connection`, covers the same for a
/// bare channel under a stream of messages.)
#[test]
fn a_peer_sending_a_frame_above_max_frame_size_is_dropped_alone() {
    init_capture();
    let nodes = two_nodes(|_| {});
    let (a, b) = (app(&nodes[0]), app(&nodes[1]));
    let id = create(&a, "ann").expect("made");
    let rx = nodes[1].channel().local_member().expect("running");
    let closed = || {
        nodes[1]
            .channel()
            .receiver_stats()
            .expect("running")
            .connections_closed_on_error
            .get()
    };
    let closed_before = closed();
    let cluster = nodes[1].channel().config().cluster_name.clone();
    let mut raw =
        shake_hands(rx.addr, &cluster, &raw_member("oversized"), LIMIT).expect("handshake");
    let len = 10 << 20;
    let header = encode_header(FrameKind::Data, FLAG_ACK, 1, len, &body_hasher(&[]));
    raw.write_all(&header).expect("header");
    // Some of the body: the receiver has closed already, or closes now.
    let _ = raw.write_all(&vec![0u8; 256 * 1024]);
    wait_for("the oversized connection closed and counted", LIMIT, || {
        closed() == closed_before + 1
    });
    let warned = log_lines("exceeds max_frame_size");
    assert!(
        warned.iter().any(|l| l.contains(&format!(
            "frame of {len} bytes exceeds max_frame_size 4194304"
        ))),
        "{warned:?}"
    );
    // The members still replicate, both ways. The raw peer shook hands, so node 2 counts it
    // a member until the failure detector drops it: a synchronized send may name it (and only
    // it) as failed meanwhile.
    for (n, other, k) in [(&a, &b, 1u32), (&b, &a, 2)] {
        let mut req = n.request(Some(&id), "/app/counter");
        req.session().expect("served").set("n", &k).expect("set");
        if let Err(e) = req.finish() {
            let faulty: Vec<&str> = e
                .faulty_members()
                .iter()
                .filter_map(|f| f.member.as_ref().map(|m| m.name.as_str()))
                .collect();
            assert_eq!(faulty, ["oversized"], "only the raw peer failed: {e}");
        }
        assert_eq!(
            other.find(&id).expect("held").get::<u32>("n").unwrap(),
            Some(k)
        );
    }
    assert_eq!(nodes[0].channel().members().len(), 1, "still members");
}
