//! The DeltaManager over real sockets on 127.0.0.1: the user's reference scenario, the
//! create-and-set race Tomcat loses, synchronized replication, state transfer to a late joiner,
//! and an application a member does not have.

mod common;

use common::*;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tribecast::{ClusterConfig, SendOptions, SimpleTcpCluster};

const LIMIT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
    role: String,
}

fn template(options: SendOptions) -> ClusterConfig {
    {
        let mut cluster = ClusterConfig::default();
        cluster.channel_send_options = options;
        cluster.valve_filter = r".*\.gif;.*\.js;.*\.css".into();
        cluster
    }
}

fn node(route: &str, peers: &[&SimpleTcpCluster], options: SendOptions) -> SimpleTcpCluster {
    cluster_node(route, peers, &template(options))
}

fn cluster_of(n: usize, options: SendOptions) -> Vec<SimpleTcpCluster> {
    cluster_nodes(n, &template(options))
}

#[test]
fn reference_scenario_log_in_on_one_read_on_another_survive_a_stop() {
    init_logs();
    let nodes = cluster_of(3, SendOptions::ASYNCHRONOUS);
    let app = |i: usize| nodes[i].manager("/app").expect("app");
    // Log in on node 1.
    let ann = User {
        id: 1,
        name: "ann".into(),
        role: "admin".into(),
    };
    let mut req = app(0).request(None, "/app/login");
    req.session_or_create().unwrap().set("user", &ann).unwrap();
    let id = req.session_id().unwrap().to_string();
    req.finish().unwrap();
    assert!(id.ends_with(".server1"), "{id}");
    // Read it on node 2.
    wait_for("node 2 has the login", LIMIT, || {
        app(1)
            .find(&id)
            .is_some_and(|s| s.get::<User>("user").ok().flatten().is_some())
    });
    let mut req = app(1).request(Some(&id), "/app/profile");
    assert_eq!(
        req.session().unwrap().get::<User>("user").unwrap(),
        Some(ann.clone())
    );
    drop(req);
    // Stop node 1; node 3 still has it. A request waits, as http_node's 503 does, until node
    // 3's manager is ready: under load its state transfer can still be running here.
    nodes[0].stop();
    assert!(app(2).wait_ready(LIMIT), "node 3 ready");
    let mut req = app(2).request(Some(&id), "/app/profile");
    assert_eq!(
        req.session()
            .expect("session on node 3")
            .get::<User>("user")
            .unwrap(),
        Some(ann)
    );
}

/// Tomcat 10.1 with channelSendOptions=8 lost the attribute set in the request that created the
/// session in about 27% of such trials. Here the creating request's changes travel inside the
/// CREATED message, and per-destination order is kept.
#[test]
fn create_and_set_in_one_request_is_never_lost_asynchronously() {
    init_logs();
    let nodes = cluster_of(3, SendOptions::ASYNCHRONOUS);
    let trials = if cfg!(debug_assertions) { 300 } else { 1000 };
    let mut ids = Vec::new();
    for i in 0..trials {
        let mut req = nodes[0]
            .manager("/app")
            .unwrap()
            .request(None, "/app/login");
        req.session_or_create()
            .unwrap()
            .set("n", &(i as u64))
            .unwrap();
        ids.push(req.session_id().unwrap().to_string());
        req.finish().unwrap();
    }
    for replica in &nodes[1..] {
        let m = replica.manager("/app").unwrap();
        wait_for("every session replicated", LIMIT, || {
            m.session_count() == trials
        });
        for (i, id) in ids.iter().enumerate() {
            let s = m.find(id).expect("replicated");
            assert_eq!(s.get::<u64>("n").unwrap(), Some(i as u64), "trial {i}");
        }
    }
}

#[test]
fn synchronized_ack_returns_once_every_member_applied_it() {
    init_logs();
    let nodes = cluster_of(3, SendOptions::SYNC_ACK);
    let mut req = nodes[0]
        .manager("/app")
        .unwrap()
        .request(None, "/app/counter");
    req.session_or_create()
        .unwrap()
        .set("count", &1u32)
        .unwrap();
    let id = req.session_id().unwrap().to_string();
    req.finish().unwrap();
    for n in &nodes[1..] {
        // No waiting: finish() returned after every member applied it.
        assert_eq!(
            n.manager("/app")
                .unwrap()
                .find(&id)
                .unwrap()
                .get::<u32>("count")
                .unwrap(),
            Some(1)
        );
    }
    // A change from node 3, then node 2 reads it at once.
    let mut req = nodes[2]
        .manager("/app")
        .unwrap()
        .request(Some(&id), "/app/counter");
    req.session().unwrap().set("count", &2u32).unwrap();
    req.finish().unwrap();
    assert_eq!(
        nodes[1]
            .manager("/app")
            .unwrap()
            .find(&id)
            .unwrap()
            .get::<u32>("count")
            .unwrap(),
        Some(2)
    );
    // A session ended outside a request, by id.
    let mut req = nodes[0]
        .manager("/app")
        .unwrap()
        .request(None, "/app/login");
    req.session_or_create().unwrap();
    let other = req.session_id().unwrap().to_string();
    req.finish().unwrap();
    assert!(nodes[2]
        .manager("/app")
        .unwrap()
        .invalidate(&other)
        .unwrap());
    assert!(nodes[0].manager("/app").unwrap().find(&other).is_none());
    assert!(
        !nodes[2]
            .manager("/app")
            .unwrap()
            .invalidate(&other)
            .unwrap(),
        "once"
    );
    // Invalidation reaches everyone before invalidate() returns.
    let mut req = nodes[1]
        .manager("/app")
        .unwrap()
        .request(Some(&id), "/app/logout");
    req.invalidate().unwrap();
    for n in &nodes {
        assert!(n.manager("/app").unwrap().find(&id).is_none());
    }
}

#[test]
fn filtered_uris_are_not_replicated_until_a_later_request() {
    init_logs();
    let nodes = cluster_of(2, SendOptions::SYNC_ACK);
    let (a, b) = (
        nodes[0].manager("/app").unwrap(),
        nodes[1].manager("/app").unwrap(),
    );
    let mut req = a.request(None, "/app/login");
    req.session_or_create().unwrap().set("v", &1u8).unwrap();
    let id = req.session_id().unwrap().to_string();
    req.finish().unwrap();
    let mut req = a.request(Some(&id), "/app/static/site.css");
    req.session().unwrap().set("v", &2u8).unwrap();
    req.finish().unwrap();
    assert_eq!(
        b.find(&id).unwrap().get::<u8>("v").unwrap(),
        Some(1),
        "a .css request is not replicated"
    );
    a.request(Some(&id), "/app/profile").finish().unwrap();
    assert_eq!(
        b.find(&id).unwrap().get::<u8>("v").unwrap(),
        Some(2),
        "the next request carries it"
    );
}

#[test]
fn a_late_joiner_gets_every_session_and_says_when_it_is_ready() {
    init_logs();
    let first = cluster_of(2, SendOptions::ASYNCHRONOUS);
    let a = first[0].manager("/app").unwrap();
    let mut ids = Vec::new();
    for i in 0..2500u32 {
        let mut req = a.request(None, "/app/login");
        req.session_or_create().unwrap().set("i", &i).unwrap();
        ids.push(req.session_id().unwrap().to_string());
        req.finish().unwrap();
    }
    wait_for("node 2 has them", LIMIT, || {
        first[1].manager("/app").unwrap().session_count() == 2500
    });
    let late = node(
        "server9",
        &[&first[0], &first[1]],
        SendOptions::ASYNCHRONOUS,
    );
    let m = late.manager("/app").unwrap();
    assert!(m.wait_ready(LIMIT), "state transfer completes");
    assert_eq!(m.session_count(), 2500);
    for (i, id) in ids.iter().enumerate().step_by(97) {
        assert_eq!(m.find(id).unwrap().get::<u32>("i").unwrap(), Some(i as u32));
    }
}

#[test]
fn a_member_without_the_application_answers_clearly() {
    init_logs();
    let nodes = cluster_of(2, SendOptions::SYNC_ACK);
    let shop = nodes[0].add_application("/shop");
    let mut req = shop.request(None, "/shop/cart");
    req.session_or_create().unwrap().set("items", &3u8).unwrap();
    let err = req.finish().unwrap_err();
    let faulty = err.faulty_members();
    assert_eq!(faulty.len(), 1, "{err}");
    assert!(
        faulty[0]
            .reason
            .to_string()
            .contains("no application '/shop'"),
        "{err}"
    );
    let events = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let e = events.clone();
    nodes[1].manager("/app").unwrap().add_listener(Arc::new(
        move |_: &str, ev: &tribecast::SessionEvent| e.lock().push(ev.clone()),
    ));
    let local = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let l = local.clone();
    nodes[0].manager("/app").unwrap().add_listener(Arc::new(
        move |_: &str, ev: &tribecast::SessionEvent| l.lock().push(ev.clone()),
    ));
    let mut req = nodes[0]
        .manager("/app")
        .unwrap()
        .request(None, "/app/login");
    req.session_or_create().unwrap().set("x", &1u8).unwrap();
    req.finish().unwrap();
    // Synchronized ack: the replica's listener has run before finish() returned.
    assert!(
        matches!(
            events.lock().first(),
            Some(tribecast::SessionEvent::Created(_))
        ),
        "listeners hear replicated sessions"
    );
    use tribecast::session::AttributeChange::Added;
    use tribecast::SessionEvent::{Attribute, Created};
    let local = local.lock().clone();
    assert!(
        matches!(
            local.as_slice(),
            [Created(_), Attribute { change: Added, .. }]
        ),
        "local listeners hear the session and its attribute: {local:?}"
    );
}

/// The streamed state transfer over real sockets: 50,000 sessions of a 100-byte attribute
/// reach a late joiner, each with its value. The donor sends them a chunk at a time, each
/// chunk read by the joiner before the next is made (docs/design.md, "State transfer").
#[test]
fn fifty_thousand_sessions_stream_to_a_late_joiner() {
    init_logs();
    const N: u32 = 50_000;
    let mut t = template(SendOptions::ASYNCHRONOUS);
    t.manager.max_active_sessions = Some(2 * N as usize);
    let donor = cluster_node("server1", &[], &t);
    let a = donor.manager("/app").unwrap();
    let mut ids = Vec::new();
    for i in 0..N {
        let mut req = a.request(None, "/app/login");
        let s = req.session_or_create().unwrap();
        s.set("i", &i).unwrap();
        s.set("pad", &vec![i as u8; 100]).unwrap();
        ids.push(req.session_id().unwrap().to_string());
        req.finish().unwrap();
    }
    let late = cluster_node("server2", &[&donor], &t);
    let m = late.manager("/app").unwrap();
    assert!(
        m.wait_ready(Duration::from_secs(60)),
        "state transfer completes"
    );
    assert_eq!(m.session_count(), N as usize);
    for (i, id) in ids.iter().enumerate() {
        let s = m.find(id).unwrap_or_else(|| panic!("session {i} missing"));
        assert_eq!(s.get::<u32>("i").unwrap(), Some(i as u32));
        assert_eq!(s.get::<Vec<u8>>("pad").unwrap(), Some(vec![i as u8; 100]));
    }
    assert_eq!(
        a.stats().state_transfers,
        1,
        "one transfer, not asked again"
    );
}

/// A state transfer does not hold the donor's receiver worker: a donor with one
/// (`max_threads = 1`) applies another member's new session while its transfer to a joiner is
/// under way. The joiner's listener holds the joiner's first chunk until then, so the transfer
/// cannot end before; the joiner's mailbox fills and it stops reading, so the donor's chunk
/// waits for its acknowledgement the while. That wait was on the donor's only receiver worker
/// before the transfers had a thread of their own: the session came after the transfer.
#[test]
fn a_donor_with_one_receiver_thread_applies_changes_during_a_state_transfer() {
    use parking_lot::{Condvar, Mutex};
    use tribecast::SessionEvent;
    init_logs();
    const N: usize = 30_000;
    let mut t = template(SendOptions::ASYNCHRONOUS);
    t.manager.max_active_sessions = Some(2 * N);
    let mut cfg = cluster_config("server1", &[], &t);
    cfg.channel.receiver.max_threads = 1;
    // The chunk held up by the joiner must not time out before the test lets it go.
    cfg.channel.sender.timeout = Duration::from_secs(60);
    let donor = SimpleTcpCluster::new(cfg).expect("config");
    let d = donor.add_application("/app");
    donor.start().expect("start");
    let other = cluster_node("server2", &[&donor], &t);
    let c = other.manager("/app").unwrap();
    assert!(c.wait_ready(LIMIT));
    for i in 0..N {
        let mut req = d.request(None, "/app/login");
        req.session_or_create()
            .unwrap()
            .set("pad", &vec![i as u8; 1024])
            .unwrap();
        req.finish().unwrap();
    }
    wait_for("the other member has them", LIMIT, || {
        c.session_count() == N
    });

    // (entered, open): the joiner's listener holds its first chunk until the test opens.
    let gate = Arc::new((Mutex::new((false, false)), Condvar::new()));
    let mut cfg = cluster_config("server3", &[&donor], &t);
    cfg.channel.receiver.max_queued_bytes_per_connection = cfg.channel.max_frame_size as usize;
    let late = SimpleTcpCluster::new(cfg).expect("config");
    let j = late.add_application("/app");
    let g = gate.clone();
    j.add_listener(Arc::new(move |_: &str, _: &SessionEvent| {
        let (state, cv) = &*g;
        let mut s = state.lock();
        if !s.1 {
            s.0 = true;
            cv.notify_all();
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while !s.1 && !cv.wait_until(&mut s, deadline).timed_out() {}
        }
    }));
    late.start().expect("start");
    let (state, cv) = &*gate;
    {
        let mut s = state.lock();
        let deadline = std::time::Instant::now() + LIMIT;
        while !s.0 {
            assert!(
                !cv.wait_until(&mut s, deadline).timed_out(),
                "the joiner's first chunk never came"
            );
        }
    }
    let mut req = c.request(None, "/app/login");
    req.session_or_create()
        .unwrap()
        .set("during", &true)
        .unwrap();
    let id = req.session_id().unwrap().to_string();
    req.finish().unwrap();
    let applied = wait_until(LIMIT, || d.find(&id).is_some());
    let (ready, held) = (j.is_ready(), j.session_count());
    state.lock().1 = true;
    cv.notify_all();
    assert!(
        applied,
        "the donor did not apply the new session while its transfer was under way"
    );
    assert!(
        !ready && held < N,
        "the transfer was under way ({held} of {N} sessions at the joiner)"
    );
    assert!(j.wait_ready(Duration::from_secs(60)), "the transfer ends");
    assert!(j.session_count() >= N);
    wait_for("the joiner has the new session too", LIMIT, || {
        j.find(&id).is_some()
    });
}
