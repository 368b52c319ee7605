//! A static three-member cluster on 127.0.0.1, each member a real process (this test binary
//! re-executed as the ignored `static_node` test), so that one can die by SIGKILL: the others
//! find out by their TCP pings, a synchronous send to the dead member fails fast and names it
//! while the live one still gets the message, and the member restarted on its port is taken
//! back.
//!
//! Run: `cargo test --release --test static_liveness -- --nocapture` (prints the figures).

mod common;

use common::node::{self, NodeProc, NodeSpec};
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;
use tribecast::ChannelConfig;

const NAMES: [&str; 3] = ["A", "B", "C"];
/// Pings keep connections warm and find dead members (Tomcat's TcpPingInterceptor interval,
/// shortened from 1000 ms for speed).
const PING_MS: u64 = 250;
/// Silence tolerated from a static member; pings find a dead one well before it.
const EXPIRATION_MS: u64 = 2000;
/// Connect timeout of pings and verification (the library default).
const CONNECT_MS: u64 = 1000;
/// Allowed beyond ping interval + connect timeout: scheduling on two busy cores.
const MARGIN_MS: u64 = 500;
const LIMIT: Duration = Duration::from_secs(20);

/// The body of a member process.
#[test]
#[ignore = "a node process of static_cluster_survives_a_killed_member_and_takes_it_back"]
fn static_node() {
    let Some(spec) = NodeSpec::from_env() else {
        eprintln!("static_node: not run: it is a node process that the static test starts");
        return;
    };
    assert!(spec.mcast.is_none(), "static nodes never multicast");
    node::run(&spec);
}

/// Three ports free a moment ago: static members must know each other's address in advance.
/// Another process could take one meanwhile; a node retries its bind for a while.
fn free_ports() -> [u16; 3] {
    let ls: Vec<TcpListener> = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind port 0"))
        .collect();
    let port = |i: usize| ls[i].local_addr().expect("addr").port();
    [port(0), port(1), port(2)]
}

fn ms(us: i64) -> f64 {
    us as f64 / 1000.0
}

/// Parses a `send` reply: `ok us=N`, `faulty us=N C:Connect,...` or `error us=N Kind`.
fn send_result(reply: &str) -> (String, Duration, String) {
    let mut w = reply.split_whitespace();
    let outcome = w.next().expect("outcome").to_string();
    let us: u64 = NodeProc::field(reply, "us").parse().expect("us");
    let _ = w.next();
    let rest = w.collect::<Vec<_>>().join(" ");
    (outcome, Duration::from_micros(us), rest)
}

/// Kill C (SIGKILL): A and B drop it within ping interval + connect timeout (+ margin); a
/// synchronized-ack send from A to B and C, before and after A dropped C, fails for C alone,
/// with a connect failure, in well under the send timeout, and B gets both messages; C
/// restarted on its port is added back by A and B and receives again.
#[test]
fn static_cluster_survives_a_killed_member_and_takes_it_back() {
    let ports = free_ports();
    let spec = |i: usize| NodeSpec {
        name: NAMES[i].into(),
        port: ports[i],
        peers: (0..3)
            .filter(|&j| j != i)
            .map(|j| SocketAddr::from(([127, 0, 0, 1], ports[j])))
            .collect(),
        ping_ms: PING_MS,
        expiration_ms: EXPIRATION_MS,
        connect_ms: CONNECT_MS,
        ..NodeSpec::default()
    };
    let send_timeout = ChannelConfig::default().sender.timeout;
    let fast = send_timeout / 6;
    let detect_bound = (PING_MS + CONNECT_MS + MARGIN_MS) as i64;

    // 1. The three find each other: those already up probe the listed addresses every ping
    // interval, and a newcomer probes them at once.
    let mut a = NodeProc::spawn("static_node", &spec(0), LIMIT);
    let mut b = NodeProc::spawn("static_node", &spec(1), LIMIT);
    let mut c = NodeProc::spawn("static_node", &spec(2), LIMIT);
    for (n, port) in [&a, &b, &c].into_iter().zip(ports) {
        assert_eq!(n.addr.port(), port, "{} bound another port", n.name);
    }
    let last_start = a.started_us.max(b.started_us).max(c.started_us);
    let mut seen = 0;
    for n in [&a, &b, &c] {
        for o in NAMES.iter().filter(|o| **o != n.name) {
            seen = seen.max(n.event_us(0, &format!("+{o}"), LIMIT));
        }
    }
    let discovery = seen as i64 - last_start as i64;
    println!(
        "FIGURE static discovery of 3 members: {:.1} ms after the last start (ping interval \
         {PING_MS} ms)",
        ms(discovery)
    );
    assert!(discovery <= detect_bound * 1000, "discovery too slow");
    let reply = a.request("send t1 B,C", LIMIT);
    assert!(reply.starts_with("ok "), "send t1: {reply}");
    for n in [&b, &c] {
        n.wait_line(0, "t1 arrives", LIMIT, |l| l == "msg A t1");
    }

    // 2. SIGKILL of C. At once, A sends to B and C: C fails (its pooled connection is dead, the
    // retry's connect is refused), B gets it.
    let marks = [a.mark(), b.mark()];
    let killed = c.kill();
    let reply = a.request("send t2 B,C", LIMIT);
    let (outcome, took, faulty) = send_result(&reply);
    println!(
        "FIGURE send to B and the killed C, right after the kill: {outcome} {faulty} in {:.1} ms \
         (send timeout {} ms)",
        took.as_secs_f64() * 1000.0,
        send_timeout.as_millis()
    );
    assert_eq!((outcome.as_str(), faulty.as_str()), ("faulty", "C:Connect"));
    assert!(took < fast, "the failed send took {took:?}");
    b.wait_line(marks[1], "t2 arrives on B", LIMIT, |l| l == "msg A t2");

    // 3. A and B drop C: B by its pings alone, A by its failed send or its pings.
    for (n, mark) in [&a, &b].into_iter().zip(marks) {
        let t = n.event_us(mark, "-C", LIMIT) as i64 - killed as i64;
        println!(
            "FIGURE {} dropped the killed C {:.1} ms after SIGKILL (bound: ping {PING_MS} + \
             connect {CONNECT_MS} + margin {MARGIN_MS} = {detect_bound} ms)",
            n.name,
            ms(t)
        );
        assert!(
            t <= detect_bound * 1000,
            "{} dropped C after {:.1} ms",
            n.name,
            ms(t)
        );
        n.wait_log(mark, &["Member disappeared [", "name=C "], LIMIT);
    }

    // 4. Once dropped, a send to C's old record still fails fast (a fresh connect, refused) and
    // B still gets it.
    let mark_b = b.mark();
    let reply = a.request("send t3 B,C", LIMIT);
    let (outcome, took, faulty) = send_result(&reply);
    println!(
        "FIGURE send to B and the dropped C: {outcome} {faulty} in {:.1} ms",
        took.as_secs_f64() * 1000.0
    );
    assert_eq!((outcome.as_str(), faulty.as_str()), ("faulty", "C:Connect"));
    assert!(took < fast, "the failed send took {took:?}");
    b.wait_line(mark_b, "t3 arrives on B", LIMIT, |l| l == "msg A t3");
    assert_eq!(a.members(), ["B"]);
    assert_eq!(b.members(), ["A"]);

    // 5. C restarts on the same port (a new id): A and B probe the listed address each ping
    // interval and add it back; it finds them at once.
    let marks = [a.mark(), b.mark()];
    let mut c = NodeProc::spawn("static_node", &spec(2), LIMIT);
    assert_eq!(c.addr.port(), ports[2]);
    let mut back = 0;
    for (n, mark) in [&a, &b].into_iter().zip(marks) {
        back = back.max(n.event_us(mark, "+C", LIMIT));
        n.wait_log(mark, &["Added member [", "name=C "], LIMIT);
    }
    back = back
        .max(c.event_us(0, "+A", LIMIT))
        .max(c.event_us(0, "+B", LIMIT));
    let rejoin = back as i64 - c.started_us as i64;
    println!(
        "FIGURE restarted C back in the cluster {:.1} ms after its start",
        ms(rejoin)
    );
    assert!(rejoin <= detect_bound * 1000, "rejoin too slow");
    let reply = a.request("send t4 B,C", LIMIT);
    assert!(reply.starts_with("ok "), "send t4: {reply}");
    c.wait_line(0, "t4 arrives on the new C", LIMIT, |l| l == "msg A t4");
    assert_eq!(a.members(), ["B", "C"]);
    assert_eq!(b.members(), ["A", "C"]);

    // 6. Nothing else happened: one departure and one return each, no flapping of the others.
    for (n, first) in [(&a, ["+B", "+C"]), (&b, ["+A", "+C"])] {
        let mut events = n.events();
        assert!(events.len() >= 2, "{}'s events: {events:?}", n.name);
        events[..2].sort();
        assert_eq!(
            events,
            [first[0], first[1], "-C", "+C"],
            "{}'s events",
            n.name
        );
    }
    let mut events = c.events();
    events.sort();
    assert_eq!(events, ["+A", "+B"], "the new C's events");
    for n in [&mut c, &mut a, &mut b] {
        n.stop(LIMIT);
    }
}
