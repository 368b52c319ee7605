//! The BackupManager over real sockets on 127.0.0.1: the reference scenario (the session moves
//! to the member a request reaches), changes sent to the backups only, and failover when the
//! primary stops.

mod common;

use common::*;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tribecast::{ClusterConfig, ManagerConfig, ManagerKind, SimpleTcpCluster};

const LIMIT: Duration = Duration::from_secs(20);

fn cluster_of(n: usize, backups: usize) -> Vec<SimpleTcpCluster> {
    let manager = {
        let mut manager = ManagerConfig::default();
        manager.kind = ManagerKind::Backup;
        manager.backups = backups;
        manager
    };
    cluster_nodes(n, &{
        let mut cluster = ClusterConfig::default();
        cluster.manager = manager;
        cluster
    })
}

fn holders(nodes: &[SimpleTcpCluster], id: &str) -> usize {
    nodes
        .iter()
        .filter(|n| n.channel().is_running() && n.manager("/app").unwrap().find(id).is_some())
        .count()
}

#[test]
fn reference_scenario_with_the_backup_manager() {
    init_logs();
    let nodes = cluster_of(3, 1);
    let app = |i: usize| nodes[i].manager("/app").unwrap();
    let mut req = app(0).request(None, "/app/login");
    req.session_or_create()
        .unwrap()
        .set("user", &"ann")
        .unwrap();
    let id = req.session_id().unwrap().to_string();
    req.finish().unwrap(); // map_send_options 6: the backup applied it
    assert_eq!(holders(&nodes, &id), 2, "primary and one backup");
    // Read on node 2: it takes the session over (fetching it if it is not its backup).
    let mut req = app(1).request(Some(&id), "/app/profile");
    assert_eq!(
        req.session()
            .expect("fetched")
            .get::<String>("user")
            .unwrap()
            .as_deref(),
        Some("ann")
    );
    req.session().unwrap().set("seen", &1u8).unwrap();
    req.finish().unwrap();
    let two = wait_until(LIMIT, || holders(&nodes, &id) == 2);
    let seen: Vec<(bool, Option<u64>)> = nodes
        .iter()
        .map(|n| {
            let m = n.manager("/app").unwrap();
            (m.find(&id).is_some(), m.stats().primaries)
        })
        .collect();
    assert!(
        two,
        "not two holders again: (holds, primaries) per node {seen:?}"
    );
    // Stop node 1: node 3 still gets it.
    nodes[0].stop();
    let mut req = app(2).request(Some(&id), "/app/profile");
    let s = req.session().expect("session on node 3");
    assert_eq!(s.get::<String>("user").unwrap().as_deref(), Some("ann"));
    assert_eq!(s.get::<u8>("seen").unwrap(), Some(1));
}

#[test]
fn changes_go_to_the_backups_only() {
    init_logs();
    let nodes = cluster_of(4, 1);
    let app = nodes[0].manager("/app").unwrap();
    let mut req = app.request(None, "/app/login");
    req.session_or_create().unwrap();
    let id = req.session_id().unwrap().to_string();
    req.finish().unwrap();
    let before = app.stats.messages_sent.load(Ordering::Relaxed);
    for i in 0..10u32 {
        let mut req = app.request(Some(&id), "/app/counter");
        req.session().unwrap().set("n", &i).unwrap();
        req.finish().unwrap();
    }
    assert_eq!(
        app.stats.messages_sent.load(Ordering::Relaxed) - before,
        10,
        "one message per change: to the one backup"
    );
    assert_eq!(holders(&nodes, &id), 2);
}

#[test]
fn the_backup_takes_over_when_the_primary_stops() {
    init_logs();
    let nodes = cluster_of(4, 1);
    let mut req = nodes[0]
        .manager("/app")
        .unwrap()
        .request(None, "/app/login");
    req.session_or_create().unwrap().set("k", &42u32).unwrap();
    let id = req.session_id().unwrap().to_string();
    req.finish().unwrap();
    let gone = nodes[0].channel().local_member().map(|m| m.id);
    nodes[0].stop();
    // The backup promotes itself and places a new backup.
    let restored = wait_until(LIMIT, || holders(&nodes, &id) == 2);
    // Every member has seen the stop (a request on a member that has not yet would send to the
    // stopped one and fail, as it should).
    wait_for("the others see the stop", LIMIT, || {
        nodes[1..]
            .iter()
            .all(|n| n.channel().members().iter().all(|m| Some(m.id) != gone))
    });
    let seen: Vec<(bool, bool)> = nodes
        .iter()
        .map(|n| {
            (
                n.channel().is_running(),
                n.manager("/app").unwrap().find(&id).is_some(),
            )
        })
        .collect();
    assert!(
        restored,
        "backup count not restored: (running, holds) per node {seen:?}"
    );
    // The client follows the cookie: the first request renames the session to the serving
    // node's route (node 1's is gone: RebindRoute::WhenRouteGone).
    let mut id = id;
    for n in &nodes[1..] {
        let mut req = n
            .manager("/app")
            .unwrap()
            .request(Some(&id), "/app/profile");
        assert_eq!(
            req.session()
                .expect("reachable from every node")
                .get::<u32>("k")
                .unwrap(),
            Some(42)
        );
        if let Some(new) = req.session_id().filter(|_| req.set_cookie().is_some()) {
            id = new.to_string();
        }
        req.finish().unwrap();
    }
}
