//! Multicast membership over real sockets and real processes, inside a private network
//! namespace that each test makes itself (DESIGN.md, "Network rule"): never on a real interface.
//!
//! Each `#[test]` here re-executes this binary under `unshare -n`, brings `lo` up with multicast
//! and a 224.0.0.0/4 route, and runs one `#[ignore]`d `inner_*` test there. Inner tests refuse to
//! run unless the outer test sent them (an environment variable) and they find themselves in a
//! new namespace whose only interface is `lo`. The cluster test starts its members as processes
//! (this binary again, as the ignored `mcast_node` test) so that one can be killed with SIGKILL.
//!
//! Needs root (or CAP_SYS_ADMIN) for `unshare -n`; without it the tests fail and say so.
//! Run: `cargo test --release --test multicast -- --nocapture` (prints the measured figures).

mod common;

use common::netns;
use common::node::{self, NodeProc, NodeSpec};
use common::*;
use parking_lot::Mutex;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;
use tribecast::membership::mcast;
use tribecast::membership::record::{self, Kind, McastRecord};
use tribecast::wire::frame::PROTOCOL_VERSION;
use tribecast::{
    ChannelConfig, ClusterConfig, ClusterKey, GroupChannel, ManagerKind, McastConfig, Member,
    MemberId, SendOptions, SimpleTcpCluster,
};

/// The group port chosen by the outer test for this run.
const PORT_ENV: &str = "TRIBECAST_TEST_MCAST_PORT";
const GROUP_ADDR: Ipv4Addr = Ipv4Addr::new(228, 0, 0, 4);
/// Multicast interface (`McastConfig::bind`, Tomcat's `bind`) of the members. Needed: without
/// it heartbeats on lo leave from 0.0.0.0 and are all refused; see
/// `multicast_default_interface_on_lo_forms_a_group`.
const IFACE: Option<Ipv4Addr> = Some(Ipv4Addr::LOCALHOST);

/// Heartbeat period and drop time of the cluster test: short, for speed.
const FREQ_MS: u64 = 100;
const DROP_MS: u64 = 600;
/// TCP verification's connect timeout (the library default).
const CONNECT_MS: u64 = 1000;
/// Pings over TCP would find a killed member on their own, at some random moment; they are
/// pushed out of the way so that the heartbeats alone decide.
const NO_PINGS_MS: u64 = 3_600_000;
/// Allowed beyond 2 × frequency for discovery: thread wake-ups on two busy cores.
const DISCOVERY_ALLOWANCE_MS: u64 = 100;
/// Allowed beyond drop_time + connect_timeout for a killed member: the detector's tick
/// (frequency / 5) and thread wake-ups.
const KILL_MARGIN_MS: u64 = 300;
/// A killed member's silence is timed from its last heartbeat as this test process received it,
/// while the member that drops it timed it from its own receipt: allowed difference.
const SILENCE_ALLOWANCE_MS: u64 = 50;
const LIMIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// The namespace: outer tests and the guard of inner ones
// ---------------------------------------------------------------------------------------------

/// Runs the ignored test `inner` in a new network namespace with multicast on `lo`, and fails
/// unless it passed. Prints its `FIGURE` lines.
fn run_in_netns(inner: &str) {
    netns::require_unshare("multicast tests run");
    let port = 20_000 + (std::process::id() % 20_000) as u16;
    let out = netns::run_inner(
        inner,
        "ip link set lo up; ip link set lo multicast on; ip route add 224.0.0.0/4 dev lo",
        &[(PORT_ENV, port.to_string())],
    );
    for line in out.lines().filter(|l| l.contains("FIGURE")) {
        println!("{}", &line[line.find("FIGURE").unwrap_or(0)..]);
    }
}

/// True inside the namespace made by [`run_in_netns`]; false, doing nothing, when run by hand.
fn in_private_netns(test: &str) -> bool {
    netns::isolated(test)
}

fn group() -> SocketAddrV4 {
    let port = std::env::var(PORT_ENV)
        .expect("group port from the outer test")
        .parse()
        .expect("port");
    SocketAddrV4::new(GROUP_ADDR, port)
}

/// The members' multicast settings: this run's group, the short heartbeat period and drop time,
/// and `bind` as the multicast interface.
fn test_mcast(group: &SocketAddrV4, bind: Option<Ipv4Addr>) -> McastConfig {
    let mut mcast = McastConfig::default();
    mcast.address = *group.ip();
    mcast.port = group.port();
    mcast.frequency = Duration::from_millis(FREQ_MS);
    mcast.drop_time = Duration::from_millis(DROP_MS);
    mcast.bind = bind;
    mcast
}

#[test]
fn multicast_cluster_discovers_leaves_drops_and_keeps_domains_apart() {
    run_in_netns("inner_cluster");
}

#[test]
fn multicast_hostile_datagrams_are_refused() {
    run_in_netns("inner_hostile");
}

/// Two members on one host with multicast at its defaults (no `bind`) find each other in the
/// namespace DESIGN.md prescribes. (Found by this test: the kernel used to send heartbeats from
/// 0.0.0.0 there, and receivers refuse a record whose member address is not the datagram's
/// source; the multicast interface now defaults to the receiver's address.)
#[test]
fn multicast_default_interface_on_lo_forms_a_group() {
    run_in_netns("inner_default_interface");
}

/// A member that stops gracefully is seen leaving once: "-P", not "-P +P -P". (Found by this
/// test: the goodbye connection's handshake used to re-add the member that the leave datagram
/// had just removed; the receiver no longer announces the goodbye lane.)
#[test]
fn multicast_graceful_stop_is_one_departure() {
    run_in_netns("inner_leave_once");
}

/// A BackupManager member found by multicast stops cleanly right after many asynchronous
/// changes: the member that stays holds every session as it was last changed. The multicast
/// leave must not reach it (and make it take the sessions over, refusing the late changes as
/// stale) before those changes.
#[test]
fn multicast_clean_stop_keeps_the_last_asynchronous_changes() {
    run_in_netns("inner_stop_flush");
}

/// With a cluster key: members without it or with another are never seen (nor see the keyed
/// ones), a recorded heartbeat of a member that left does not bring it back, and its recorded
/// leave datagram, replayed after it came back, evicts nobody.
#[test]
fn multicast_cluster_key_refuses_strangers_and_replays() {
    run_in_netns("inner_keyed");
}

/// The body of a member process (spawned by `inner_cluster`).
#[test]
#[ignore = "a node process of inner_cluster, started by it"]
fn mcast_node() {
    let Some(spec) = NodeSpec::from_env() else {
        eprintln!("mcast_node: not run: it is a node process that inner_cluster starts");
        return;
    };
    assert!(
        in_private_netns("mcast_node"),
        "a multicast node runs only inside the test's private network namespace"
    );
    assert!(spec.mcast.is_some(), "mcast_node without a group");
    node::run(&spec);
}

// ---------------------------------------------------------------------------------------------
// The cluster: discovery, leave, kill, domains
// ---------------------------------------------------------------------------------------------

fn spec(name: &str, domain: &str) -> NodeSpec {
    NodeSpec {
        name: name.into(),
        domain: domain.into(),
        port: 0,
        mcast: Some(SocketAddr::V4(group())),
        mcast_bind: IFACE,
        frequency_ms: FREQ_MS,
        drop_time_ms: DROP_MS,
        ping_ms: NO_PINGS_MS,
        connect_ms: CONNECT_MS,
        ..NodeSpec::default()
    }
}

fn start(name: &str, domain: &str) -> NodeProc {
    NodeProc::spawn("mcast_node", &spec(name, domain), LIMIT)
}

fn ms(us: i64) -> f64 {
    us as f64 / 1000.0
}

/// Waits until every node in `nodes` has added every other one (from line `marks[i]` on) and
/// returns the latest of those events' times.
fn all_see_each_other(nodes: &[&NodeProc], marks: &[usize]) -> u64 {
    let mut last = 0;
    for (i, n) in nodes.iter().enumerate() {
        for o in nodes.iter().filter(|o| o.name != n.name) {
            last = last.max(n.event_us(marks[i], &format!("+{}", o.name), LIMIT));
        }
    }
    last
}

/// This test process listening to the group: when each member's heartbeats arrive.
struct GroupTap {
    stop: Arc<AtomicBool>,
    beats: Arc<Mutex<Vec<(String, u64)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GroupTap {
    fn start() -> GroupTap {
        let group = group();
        let cfg = {
            let mut mcast = McastConfig::default();
            mcast.address = *group.ip();
            mcast.port = group.port();
            mcast.bind = IFACE;
            mcast
        };
        let sock = mcast::open(&cfg, [127, 0, 0, 1].into(), Duration::from_millis(20))
            .expect("open the group");
        let stop = Arc::new(AtomicBool::new(false));
        let beats = Arc::new(Mutex::new(Vec::new()));
        let (stop2, beats2) = (stop.clone(), beats.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; record::MAX_DATAGRAM + 1];
            while !stop2.load(SeqCst) {
                let Ok((n, _)) = sock.recv_from(&mut buf) else {
                    continue; // the read timeout: look at `stop`
                };
                let t = node::now_us();
                if let Ok((Kind::Heartbeat, rec)) = record::decode(&buf[..n]) {
                    beats2.lock().push((rec.member.name, t));
                }
            }
        });
        GroupTap {
            stop,
            beats,
            thread: Some(thread),
        }
    }

    fn last_heartbeat(&self, name: &str) -> Option<u64> {
        self.beats
            .lock()
            .iter()
            .filter(|(n, _)| n == name)
            .map(|&(_, t)| t)
            .max()
    }
}

impl Drop for GroupTap {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Three members of domain "main" find each other within 2 × frequency; a fourth of domain
/// "other" hears them and is heard, yet neither side adds the other; a gracefully stopped member
/// is dropped at once (leave datagram); a restarted one rejoins; a killed one (no leave) is
/// dropped after drop_time, once TCP verification fails.
#[test]
#[ignore = "runs only inside the namespace made by multicast_cluster_discovers_leaves_drops_and_keeps_domains_apart"]
fn inner_cluster() {
    if !in_private_netns("inner_cluster") {
        return;
    }
    let (freq, drop, connect) = (FREQ_MS as i64, DROP_MS as i64, CONNECT_MS as i64);

    let tap = GroupTap::start();

    // 1. Discovery, measured from the last member's start (its own clock reading right after
    // `start()` returned) to the last "+X" event on any of the three.
    let mut a = start("A", "main");
    let mut b = start("B", "main");
    let mut c = start("C", "main");
    let last_start = a.started_us.max(b.started_us).max(c.started_us);
    let seen = all_see_each_other(&[&a, &b, &c], &[0, 0, 0]);
    let discovery = seen as i64 - last_start as i64;
    println!(
        "FIGURE discovery of 3 members: {:.1} ms after the last start (frequency {freq} ms, \
         bound {} ms)",
        ms(discovery),
        2 * freq + DISCOVERY_ALLOWANCE_MS as i64
    );
    assert!(
        discovery < (2 * freq + DISCOVERY_ALLOWANCE_MS as i64) * 1000,
        "discovery took {:.1} ms, more than 2 × {freq} ms + {DISCOVERY_ALLOWANCE_MS} ms",
        ms(discovery)
    );
    for n in [&a, &b, &c] {
        assert_eq!(n.events().len(), 2, "{}: {:?}", n.name, n.events());
    }

    // 2. Another domain. D's heartbeats reach A, B and C and theirs reach D, for at least ten
    // heartbeat periods (30 heartbeats from three senders), and nobody adds anybody.
    let mut d = start("D", "other");
    let mut polls = 0;
    let heard = wait_until(LIMIT, || {
        polls += 1;
        if polls > 1 {
            // Between polls: one fifth of a heartbeat period, not a synchronisation.
            std::thread::sleep(Duration::from_millis(FREQ_MS / 5));
        }
        d.stat("hb_rx") >= 30
    });
    let d_heard = d.stat("hb_rx");
    assert!(heard, "D received {d_heard} heartbeats in {LIMIT:?}");
    println!("FIGURE domain: D (domain other) received {d_heard} heartbeats and added no one");
    assert_eq!(
        d.events(),
        Vec::<String>::new(),
        "D added members of domain main"
    );
    assert_eq!(d.members(), Vec::<String>::new());
    assert!(d.log_lines(&["Added member"]).is_empty());
    for n in [&mut a, &mut b] {
        assert!(
            !n.events().contains(&"+D".to_string()),
            "{} added D",
            n.name
        );
        let mut others = vec!["A", "B", "C"];
        others.retain(|o| *o != n.name);
        assert_eq!(n.members(), others, "{}'s members", n.name);
    }
    assert!(!c.events().contains(&"+D".to_string()), "C added D");
    d.stop(LIMIT);

    // 3. Graceful stop of C: its leave datagram drops it at once on A and B, measured from C's
    // clock reading just before `stop()`.
    let marks = [a.mark(), b.mark()];
    let stopping = c.stop(LIMIT);
    let mut leave = 0;
    for (n, mark) in [&a, &b].into_iter().zip(marks) {
        let t = n.event_us(mark, "-C", LIMIT);
        leave = leave.max(t as i64 - stopping as i64);
        n.wait_log(
            mark,
            &["Member disappeared [", "name=C ", "it left the group"],
            LIMIT,
        );
    }
    println!(
        "FIGURE leave: A and B dropped C {:.1} ms after it began to stop (drop_time {drop} ms, \
         bound {} ms)",
        ms(leave),
        drop / 2
    );
    assert!(
        leave < drop / 2 * 1000,
        "leave took {:.1} ms: not well before drop_time",
        ms(leave)
    );

    // 4. A new member (C2) joins the two that remain, as fast as the first three did.
    let marks = [a.mark(), b.mark()];
    let mut c2 = start("C2", "main");
    let mut last = 0;
    for (n, mark) in [&a, &b].into_iter().zip(marks) {
        last = last.max(n.event_us(mark, "+C2", LIMIT));
    }
    last = last
        .max(c2.event_us(0, "+A", LIMIT))
        .max(c2.event_us(0, "+B", LIMIT));
    let rejoin = last as i64 - c2.started_us as i64;
    println!(
        "FIGURE join of C2 (started after C left) with A and B: {:.1} ms after its start",
        ms(rejoin)
    );
    assert!(
        rejoin < (2 * freq + DISCOVERY_ALLOWANCE_MS as i64) * 1000,
        "C2 joined in {:.1} ms",
        ms(rejoin)
    );

    // 5. SIGKILL of C2: no leave datagram. A and B hear nothing more; after drop_time of
    // silence they verify it over TCP (refused: the process is gone) and drop it. The silence
    // starts at its last heartbeat, which this process hears too, up to one period before the
    // kill.
    let marks = [a.mark(), b.mark()];
    let verifications = a.stat("verifications");
    let killed = c2.kill();
    let mut drops = Vec::new();
    for (n, mark) in [&a, &b].into_iter().zip(marks) {
        let t = n.event_us(mark, "-C2", LIMIT);
        drops.push((n.name.clone(), t as i64));
        n.wait_log(
            mark,
            &["Member disappeared [", "name=C2 ", "verification failed"],
            LIMIT,
        );
    }
    let last_beat = tap
        .last_heartbeat("C2")
        .expect("C2's heartbeats heard by the test") as i64;
    let (low, high) = (
        drop - SILENCE_ALLOWANCE_MS as i64,
        drop + connect + KILL_MARGIN_MS as i64,
    );
    for (name, t) in &drops {
        let (silence, since_kill) = (t - last_beat, t - killed as i64);
        println!(
            "FIGURE kill: {name} dropped C2 {:.1} ms after its last heartbeat, {:.1} ms after \
             SIGKILL (drop_time {drop} ms; bounds: silence >= {low} ms, after kill <= {high} ms)",
            ms(silence),
            ms(since_kill)
        );
        assert!(
            silence >= low * 1000,
            "{name} dropped C2 {:.1} ms after its last heartbeat: before drop_time",
            ms(silence)
        );
        assert!(
            since_kill <= high * 1000,
            "{name} dropped the killed C2 {:.1} ms after SIGKILL, more than {high} ms",
            ms(since_kill)
        );
    }
    assert!(
        a.stat("verifications") > verifications,
        "no TCP verification"
    );

    // 6. Nothing else happened: A and B never lost each other, and end with each other only.
    // The first two, heard in either order, are the discovery.
    for (n, first) in [(&a, ["+B", "+C"]), (&b, ["+A", "+C"])] {
        let mut events = n.events();
        assert!(events.len() >= 2, "{}'s events: {events:?}", n.name);
        events[..2].sort();
        assert_eq!(
            events,
            [first[0], first[1], "-C", "+C2", "-C2"],
            "{}'s events",
            n.name
        );
    }
    assert_eq!(a.members(), ["B"]);
    assert_eq!(b.members(), ["A"]);
    a.stop(LIMIT);
    b.stop(LIMIT);
}

// ---------------------------------------------------------------------------------------------
// Hostile datagrams
// ---------------------------------------------------------------------------------------------

/// A member that heartbeats properly is added and its leave drops it; bad datagrams (garbage,
/// empty, truncated, wrong magic, version, kind or checksum, an undecodable body with a good
/// checksum, a record sent from another address than the one it claims) add no one and are
/// each counted in `datagrams_refused`; records of another cluster or with our own id are
/// ignored.
#[test]
#[ignore = "runs only inside the namespace made by multicast_hostile_datagrams_are_refused"]
fn inner_hostile() {
    if !in_private_netns("inner_hostile") {
        return;
    }
    init_logs();
    let group = group();
    let mut cfg = ChannelConfig::loopback("target");
    cfg.membership.ping_interval = Duration::from_millis(NO_PINGS_MS);
    cfg.membership.mcast = Some(test_mcast(&group, IFACE));
    let ch = GroupChannel::new(cfg).expect("config");
    let events = Arc::new(Events::default());
    ch.add_membership_listener(events.clone());
    ch.start().expect("start");
    let st = ch.membership_stats().expect("running");
    let me = ch.local_member().expect("running");
    // Its own heartbeats loop back to it: they are neither counted nor refused.
    wait_for("two own heartbeats", LIMIT, || {
        st.heartbeats_sent.load(SeqCst) >= 2
    });

    let ghost = Member {
        id: MemberId([7; 16]),
        name: "ghost".into(),
        addr: "127.0.0.1:9".parse().expect("addr"),
        domain: String::new(),
    };
    let rec = |cluster: &str, member: &Member| McastRecord {
        cluster: cluster.into(),
        member: member.clone(),
        alive_ms: 42,
    };
    let cluster = ch.config().cluster_name.clone();
    let valid = record::encode(Kind::Heartbeat, &rec(&cluster, &ghost));
    let edit = |i: usize, f: &dyn Fn(u8) -> u8| {
        let mut v = valid.clone();
        v[i] = f(v[i]);
        v
    };
    let bad_body = {
        let body = [0xffu8; 40];
        let mut v = valid[..12].to_vec();
        v[8..12].copy_from_slice(&crc32fast::hash(&body).to_le_bytes());
        v.extend_from_slice(&body);
        v
    };
    let last = valid.len() - 1;
    let hostile: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"definitely not a membership datagram".to_vec()),
        ("empty", Vec::new()),
        ("shorter than the header", valid[..8].to_vec()),
        ("truncated body", valid[..valid.len() - 5].to_vec()),
        ("bad magic", edit(0, &|b| b ^ 0xff)),
        (
            "wrong version",
            edit(4, &|_| PROTOCOL_VERSION.wrapping_add(1)),
        ),
        ("unknown kind", edit(5, &|_| 9)),
        ("bad checksum", edit(last, &|b| b ^ 1)),
        ("undecodable body, good checksum", bad_body),
    ];
    let ignored = [
        record::encode(Kind::Heartbeat, &rec("another-cluster", &ghost)),
        record::encode(
            Kind::Heartbeat,
            &rec(
                &cluster,
                &Member {
                    id: me.id,
                    ..ghost.clone()
                },
            ),
        ),
    ];

    let tx = UdpSocket::bind("127.0.0.1:0").expect("bind sender");
    // From 127.0.0.2 (also lo's): a record claiming 127.0.0.1 sent from another address.
    let forger = UdpSocket::bind("127.0.0.2:0").expect("bind 127.0.0.2");
    forger.send_to(&valid, group).expect("send forged");
    for d in ignored.iter().chain(hostile.iter().map(|(_, d)| d)) {
        tx.send_to(d, group).expect("send hostile");
    }
    let refused = hostile.len() as u64 + 1;
    wait_for("every bad datagram refused", LIMIT, || {
        st.datagrams_refused.load(SeqCst) >= refused
    });
    assert!(ch.members().is_empty(), "{:?}", ch.members());
    assert!(events.0.lock().is_empty(), "{:?}", events.0.lock());
    assert_eq!(st.heartbeats_received.load(SeqCst), 0);

    // The control: the same record, well formed and from the right address, is accepted, and
    // its leave is too. Datagrams from one socket arrive in order, so by now every earlier one
    // has been judged.
    tx.send_to(&valid, group).expect("send heartbeat");
    wait_for("ghost added", LIMIT, || events.has("+ghost"));
    let leave = record::encode(Kind::Leave, &rec(&cluster, &ghost));
    tx.send_to(&leave, group).expect("send leave");
    wait_for("ghost left", LIMIT, || events.has("-ghost"));
    assert_eq!(*events.0.lock(), ["+ghost", "-ghost"]);
    assert_eq!(st.heartbeats_received.load(SeqCst), 2);
    assert_eq!(st.datagrams_refused.load(SeqCst), refused);
    assert!(ch.members().is_empty());
    println!(
        "FIGURE hostile: {refused} bad datagrams refused ({} kinds + a forged source), 2 ignored \
         (other cluster, own id), 0 members added by them",
        hostile.len()
    );
    ch.stop();
}

// ---------------------------------------------------------------------------------------------
// The default multicast interface
// ---------------------------------------------------------------------------------------------

/// Two in-process members with `McastConfig::bind` unset should see each other within a few
/// heartbeats. See `multicast_default_interface_on_lo_forms_a_group`.
#[test]
#[ignore = "runs only inside the namespace made by multicast_default_interface_on_lo_forms_a_group"]
fn inner_default_interface() {
    if !in_private_netns("inner_default_interface") {
        return;
    }
    init_logs();
    let group = group();
    let make = |name: &str| {
        let mut cfg = ChannelConfig::loopback(name);
        cfg.membership.mcast = Some(test_mcast(&group, None));
        let ch = GroupChannel::new(cfg).expect("config");
        ch.start().expect("start");
        ch
    };
    let (p, q) = (make("P"), make("Q"));
    let formed = wait_until(Duration::from_millis(10 * FREQ_MS), || {
        p.members().len() == 1 && q.members().len() == 1
    });
    let st = p.membership_stats().expect("running");
    assert!(
        formed,
        "P and Q (McastConfig::bind unset) did not find each other in 10 heartbeat periods: P \
         refused {} datagrams and accepted {}; their source is 0.0.0.0, not the member's \
         127.0.0.1",
        st.datagrams_refused.load(SeqCst),
        st.heartbeats_received.load(SeqCst)
    );
}

// ---------------------------------------------------------------------------------------------
// One departure per graceful stop
// ---------------------------------------------------------------------------------------------

/// P stops gracefully: Q must see exactly "+P" then "-P", and nothing more within ten heartbeat
/// periods (the flap comes within milliseconds). See `multicast_graceful_stop_is_one_departure`.
#[test]
#[ignore = "runs only inside the namespace made by multicast_graceful_stop_is_one_departure"]
fn inner_leave_once() {
    if !in_private_netns("inner_leave_once") {
        return;
    }
    init_logs();
    let group = group();
    let make = |name: &str| {
        let mut cfg = ChannelConfig::loopback(name);
        cfg.membership.ping_interval = Duration::from_millis(NO_PINGS_MS);
        cfg.membership.mcast = Some(test_mcast(&group, IFACE));
        let ch = GroupChannel::new(cfg).expect("config");
        let ev = Arc::new(Events::default());
        ch.add_membership_listener(ev.clone());
        ch.start().expect("start");
        (ch, ev)
    };
    let (p, _) = make("P");
    let (q, ev_q) = make("Q");
    wait_for("Q adds P", LIMIT, || ev_q.has("+P"));
    p.stop();
    wait_for("Q drops P", LIMIT, || ev_q.has("-P"));
    let more = wait_until(Duration::from_millis(10 * FREQ_MS), || {
        ev_q.0.lock().len() > 2
    });
    let events = ev_q.0.lock().clone();
    assert!(
        !more && events == ["+P", "-P"],
        "Q saw {events:?} for one graceful stop of P: its TCP goodbye re-added it"
    );
    q.stop();
}

// ---------------------------------------------------------------------------------------------
// The cluster key
// ---------------------------------------------------------------------------------------------

/// See `multicast_cluster_key_refuses_strangers_and_replays`.
#[test]
#[ignore = "runs only inside the namespace made by multicast_cluster_key_refuses_strangers_and_replays"]
fn inner_keyed() {
    if !in_private_netns("inner_keyed") {
        return;
    }
    init_logs();
    let group = group();
    let mc = test_mcast(&group, IFACE);
    let key = ClusterKey::parse("3f1c0e6d2a9b8c7d6e5f40312233445566778899aabbccddeeff001122334455")
        .expect("key");
    let other = ClusterKey::random().expect("random key");
    let make = |name: &str, k: Option<&ClusterKey>, id: Option<MemberId>| {
        let mut cfg = ChannelConfig::loopback(name);
        cfg.membership.ping_interval = Duration::from_millis(NO_PINGS_MS);
        cfg.membership.mcast = Some(mc.clone());
        cfg.cluster_key = k.cloned();
        cfg.unique_id = id;
        let ch = GroupChannel::new(cfg).expect("config");
        let ev = Arc::new(Events::default());
        ch.add_membership_listener(ev.clone());
        ch.start().expect("start");
        (ch, ev)
    };
    let count = |ev: &Events, e: &str| ev.0.lock().iter().filter(|x| *x == e).count();
    let cap = mcast::open(&mc, [127, 0, 0, 1].into(), Duration::from_millis(20)).expect("tap");
    let dk = key.datagram_key();
    // The next datagram of `id` of `kind` that the tap hears (sealed with the cluster key).
    let capture = |kind: Kind, id: MemberId| -> Vec<u8> {
        let deadline = std::time::Instant::now() + LIMIT;
        let mut buf = vec![0u8; record::MAX_DATAGRAM + 1];
        while std::time::Instant::now() < deadline {
            let Ok((n, _)) = cap.recv_from(&mut buf) else {
                continue;
            };
            if let Ok((k, _, rec)) = record::open(&buf[..n], Some(&dk)) {
                if k == kind && rec.member.id == id {
                    return buf[..n].to_vec();
                }
            }
        }
        panic!("no {kind:?} datagram of {id} within {LIMIT:?}");
    };

    let b_id = MemberId([0xb0; 16]);
    let (a, ev_a) = make("A", Some(&key), None);
    let (b, _) = make("B", Some(&key), Some(b_id));
    let (plain, _) = make("plain", None, None);
    let (wrong, _) = make("wrong", Some(&other), None);
    let st = a.membership_stats().expect("running");
    wait_for("A adds B", LIMIT, || ev_a.has("+B"));
    wait_for("A refuses the strangers' heartbeats", LIMIT, || {
        st.datagrams_refused.load(SeqCst) >= 4
    });
    let names = |ch: &GroupChannel| ch.members().into_iter().map(|m| m.name).collect::<Vec<_>>();
    let until = std::time::Instant::now() + Duration::from_millis(10 * FREQ_MS);
    while std::time::Instant::now() < until {
        assert_eq!(names(&a), ["B"]);
        assert!(plain.members().is_empty(), "plain sees {:?}", names(&plain));
        assert!(wrong.members().is_empty(), "wrong sees {:?}", names(&wrong));
        std::thread::sleep(Duration::from_millis(FREQ_MS / 2));
    }

    // A heartbeat of B recorded while it was up, and its leave datagram.
    let old_beat = capture(Kind::Heartbeat, b_id);
    b.stop();
    let leave = capture(Kind::Leave, b_id);
    wait_for("A drops B", LIMIT, || ev_a.has("-B"));
    let tx = UdpSocket::bind("127.0.0.1:0").expect("bind replayer");
    let refused = st.datagrams_refused.load(SeqCst);
    tx.send_to(&old_beat, group).expect("replay heartbeat");
    wait_for("the replayed heartbeat refused", LIMIT, || {
        st.datagrams_refused.load(SeqCst) > refused
    });
    // Past the leave grace (connect timeout), a fresh heartbeat would re-add B: the replay not.
    let back = wait_until(Duration::from_millis(CONNECT_MS + 5 * FREQ_MS), || {
        tx.send_to(&old_beat, group).is_ok() && count(&ev_a, "+B") > 1
    });
    assert!(
        !back,
        "a replayed heartbeat re-added B: {:?}",
        ev_a.0.lock()
    );

    // B comes back (same id); its recorded leave, replayed, evicts nobody.
    let (b2, _) = make("B", Some(&key), Some(b_id));
    wait_for("A adds B again", LIMIT, || count(&ev_a, "+B") == 2);
    let refused = st.datagrams_refused.load(SeqCst);
    tx.send_to(&leave, group).expect("replay leave");
    wait_for("the replayed leave refused", LIMIT, || {
        st.datagrams_refused.load(SeqCst) > refused
    });
    // A forged leave (sealed flag, made-up body with a good checksum) is refused too.
    let mut forged = leave.clone();
    for b in &mut forged[12..] {
        *b ^= 0x5a;
    }
    let crc = crc32fast::hash(&forged[12..]);
    forged[8..12].copy_from_slice(&crc.to_le_bytes());
    tx.send_to(&forged, group).expect("forged leave");
    let evicted = wait_until(Duration::from_millis(10 * FREQ_MS), || {
        count(&ev_a, "-B") > 1 || !names(&a).contains(&"B".to_string())
    });
    assert!(
        !evicted,
        "a replayed or forged leave evicted B: {:?}",
        ev_a.0.lock()
    );
    assert_eq!(*ev_a.0.lock(), ["+B", "-B", "+B"]);
    println!(
        "FIGURE keyed: {} datagrams refused at A in all (no key, wrong key, replayed heartbeats, replayed \
         and forged leave), members of A: {:?}",
        st.datagrams_refused.load(SeqCst),
        names(&a)
    );
    for ch in [&a, &b2, &plain, &wrong] {
        ch.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// A clean stop with multicast membership
// ---------------------------------------------------------------------------------------------

/// See `multicast_clean_stop_keeps_the_last_asynchronous_changes`.
#[test]
#[ignore = "runs only inside the namespace made by multicast_clean_stop_keeps_the_last_asynchronous_changes"]
fn inner_stop_flush() {
    if !in_private_netns("inner_stop_flush") {
        return;
    }
    init_logs();
    let group = group();
    let node = |route: &str| {
        let mut cfg = ClusterConfig::default();
        cfg.manager.kind = ManagerKind::Backup;
        cfg.manager.map_send_options = SendOptions::ASYNCHRONOUS;
        cfg.channel_send_options = SendOptions::ASYNCHRONOUS;
        cfg.channel = ChannelConfig::loopback(route);
        cfg.channel.membership.ping_interval = Duration::from_millis(NO_PINGS_MS);
        cfg.channel.membership.mcast = Some(test_mcast(&group, IFACE));
        cfg.jvm_route = route.into();
        let c = SimpleTcpCluster::new(cfg).expect("config");
        c.add_application("/app");
        c.start().expect("start");
        c
    };
    for attempt in 1..=3 {
        let nodes = [node("server1"), node("server2")];
        wait_for("the two find each other", LIMIT, || {
            nodes.iter().all(|n| n.channel().members().len() == 1)
        });
        stop_flush::assert_none_behind(&nodes, &format!("multicast, attempt {attempt}"));
        nodes[1].stop();
    }
}
