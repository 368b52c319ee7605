//! A clean stop (`SimpleTcpCluster::stop`) without `expire_sessions_on_shutdown` leaves every
//! session to the other members, over real sockets on 127.0.0.1.
//!
//! Run: `cargo test --release --test clean_stop`.

mod common;

use common::*;
use parking_lot::Mutex;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tribecast::{
    ChannelConfig, ClusterConfig, ManagerKind, SendOptions, SessionEvent, SessionListener,
    SimpleTcpCluster, StaticMember,
};

const LIMIT: Duration = Duration::from_secs(20);

fn addr(node: &SimpleTcpCluster) -> SocketAddr {
    node.channel().local_member().expect("running").addr
}

/// Starts "server3", listing `peers`, once node 1's stop ends its first session locally, and
/// holds that stop until server3's manager is ready: a member joining (or asking for the
/// digests) while node 1 stops.
struct JoinDuringStop {
    peers: Vec<SocketAddr>,
    joined: Mutex<Option<SimpleTcpCluster>>,
}

impl SessionListener for JoinDuringStop {
    fn event(&self, _context: &str, event: &SessionEvent) {
        let SessionEvent::Destroyed(_) = event else {
            return;
        };
        let mut joined = self.joined.lock();
        if joined.is_some() {
            return;
        }
        let mut cfg = ClusterConfig::default();
        cfg.channel = ChannelConfig::loopback("server3");
        cfg.channel.static_members = self.peers.iter().map(|&a| StaticMember::new(a)).collect();
        cfg.jvm_route = "server3".into();
        let node = SimpleTcpCluster::new(cfg).expect("config");
        let app = node.add_application("/app");
        node.start().expect("start");
        // Not ready yet: node 1 stopped its state transfers before its sessions (a joiner asks
        // it again until it leaves, then asks node 2). Its digests, asked for with the
        // transfer, are what could carry ends.
        drop(app);
        wait_for("server3 sees nodes 1 and 2", LIMIT, || {
            node.channel().members().len() == 2
        });
        *joined = Some(node);
    }
}

/// Node 1 stops while server3 joins: whatever node 1 tells server3 (its state transfer, its
/// digest) during the stop must not end the sessions node 2 and server3 keep. `stop` ends node
/// 1's sessions locally (recording their ends) while its channel still runs, and node 1 answers
/// server3's digest request with those ends: server3 ends the session (the reference scenario
/// of tests/delta_manager.rs loses its session on node 3 that way under load). Failed on every
/// run before the fix (6 of 6: a stop that leaves its sessions to the others drops its copies
/// with no end remembered).
#[test]
fn a_member_joining_during_a_clean_stop_keeps_the_sessions() {
    init_logs();
    let nodes = cluster_nodes(2, &ClusterConfig::default());
    let app = |i: usize| nodes[i].manager("/app").expect("app");
    let id = login_on(&app(0), "ann");
    wait_for("node 2 has the login", LIMIT, || app(1).find(&id).is_some());
    let join = Arc::new(JoinDuringStop {
        peers: vec![addr(&nodes[0]), addr(&nodes[1])],
        joined: Mutex::new(None),
    });
    app(0).add_listener(join.clone());
    nodes[0].stop();
    let third = join
        .joined
        .lock()
        .take()
        .expect("server3 joined during the stop");
    let third_app = third.manager("/app").expect("app");
    assert!(third_app.wait_ready(LIMIT), "server3 got the sessions");
    wait_for("server3 sees node 2", LIMIT, || {
        third.channel().members().len() == 1
    });
    // A request waits for the digests server3 asked for: the session as they left it.
    for (name, mgr) in [("node 2", app(1)), ("server3", third_app)] {
        let mut req = mgr.request(Some(&id), "/app/profile");
        let user = req
            .session()
            .unwrap_or_else(|| panic!("{name} lost the session at node 1's clean stop"))
            .get::<String>("user")
            .expect("get");
        assert_eq!(user.as_deref(), Some("ann"), "{name}");
        req.finish().expect("finish");
    }
}

/// A node stopped cleanly and started again (the same `SimpleTcpCluster`) joins as a new
/// member: its stop dropped its copies, so it must take the others' sessions by state transfer
/// again before its manager says it is ready, as on its first start.
#[test]
fn a_node_started_again_after_a_clean_stop_takes_the_sessions_again() {
    init_logs();
    let nodes = cluster_nodes(2, &ClusterConfig::default());
    let app = |i: usize| nodes[i].manager("/app").expect("app");
    // Node 2 lists node 1 as a static member, so it finds node 1 again after its restart.
    let ids: Vec<String> = ["ann", "bob", "cid"]
        .iter()
        .map(|u| login_on(&app(0), u))
        .collect();
    wait_for("node 2 has the logins", LIMIT, || {
        ids.iter().all(|id| app(1).find(id).is_some())
    });
    // The stop drops node 2's copies, but that is not checked here: a message from node 1
    // handled between the drop and the channel's stop can bring a copy back (1 run of 24).
    nodes[1].stop();
    wait_for("node 1 sees node 2 leave", LIMIT, || {
        nodes[0].channel().members().is_empty()
    });
    nodes[1].start().expect("start again");
    assert!(app(1).wait_ready(LIMIT), "node 2 ready again");
    // Ready means the transfer is done: no wait here.
    let missing: Vec<&String> = ids.iter().filter(|id| app(1).find(id).is_none()).collect();
    assert!(
        missing.is_empty(),
        "node 2, ready after its restart, lacks {} of {} sessions",
        missing.len(),
        ids.len()
    );
    for (id, user) in ids.iter().zip(["ann", "bob", "cid"]) {
        let mut req = app(1).request(Some(id), "/app/profile");
        let got = req
            .session()
            .expect("the session")
            .get::<String>("user")
            .expect("get");
        assert_eq!(got.as_deref(), Some(user));
        req.finish().expect("finish");
    }
}
/// Node 1 changes many sessions asynchronously, then stops cleanly: node 2 must hold every
/// session as node 1 last changed it. Node 1's stop writes the asynchronous lane's queue, then
/// says goodbye; if the goodbye went on a connection of its own, node 2's workers could handle
/// it (node 2 takes the sessions over) before the last changes, which came earlier on the
/// asynchronous lane's connection: a BackupManager then refuses them as stale ("another member
/// serves it now"), and changes the user got an answer for are lost on a clean stop.
fn last_asynchronous_changes_survive_a_clean_stop(kind: ManagerKind) {
    init_logs();
    let mut cfg = ClusterConfig::default();
    cfg.manager.kind = kind;
    cfg.manager.map_send_options = SendOptions::ASYNCHRONOUS;
    cfg.channel_send_options = SendOptions::ASYNCHRONOUS;
    // A few clusters in a row: one run then catches the race more often than not.
    for attempt in 1..=3 {
        let nodes = cluster_nodes(2, &cfg);
        stop_flush::assert_none_behind(&nodes, &format!("attempt {attempt}"));
    }
}

/// Failed on every run (20 of 20, 146 to 300 of 300 sessions behind) while the goodbye went on
/// a connection of its own.
#[test]
fn last_asynchronous_changes_survive_a_clean_stop_backup() {
    last_asynchronous_changes_survive_a_clean_stop(ManagerKind::Backup);
}

/// The DeltaManager applies a change that comes after its sender left (it passed before the
/// fix too); kept so it goes on doing so.
#[test]
fn last_asynchronous_changes_survive_a_clean_stop_delta() {
    last_asynchronous_changes_survive_a_clean_stop(ManagerKind::Delta);
}
