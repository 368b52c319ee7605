//! The session API as web code uses it, over real sockets on 127.0.0.1: a logout written the
//! Servlet way (`session.invalidate()` on the request's session) ends the session on every node.

mod common;

use common::*;
use std::time::Duration;
use tribecast::{ClusterConfig, ManagerConfig, ManagerKind, SimpleTcpCluster};

const LIMIT: Duration = Duration::from_secs(20);

fn cluster_of(kind: ManagerKind) -> Vec<SimpleTcpCluster> {
    let manager = ManagerConfig {
        kind,
        ..ManagerConfig::default()
    };
    cluster_nodes(
        3,
        &ClusterConfig {
            manager,
            ..ClusterConfig::default()
        },
    )
}

/// Whether a request for `id` on node `i` finds a session (a BackupManager node fetches it).
fn served(nodes: &[SimpleTcpCluster], i: usize, id: &str) -> bool {
    let mut req = nodes[i]
        .manager("/app")
        .expect("app")
        .request(Some(id), "/app/profile");
    let found = req.session().is_some();
    req.finish().expect("finish");
    found
}

fn logout_by_session_invalidate_ends_it_everywhere(kind: ManagerKind) {
    init_logs();
    let nodes = cluster_of(kind);
    let app = |i: usize| nodes[i].manager("/app").expect("app");
    let mut req = app(0).request(None, "/app/login");
    req.session_or_create()
        .expect("session")
        .set("user", &"ann")
        .expect("set");
    let id = req.session_id().expect("id").to_string();
    req.finish().expect("login replicated");
    wait_for("node 2 serves the login", LIMIT, || served(&nodes, 1, &id));
    // Log out on node 2 the Servlet way: the request's session, then the end of the request.
    let mut req = app(1).request(Some(&id), "/app/logout");
    let session = req.session().expect("logged in on node 2");
    session.invalidate();
    assert!(
        session.set("after", &1u8).is_err(),
        "an ended session refuses changes"
    );
    req.finish().expect("logout replicated");
    for i in 0..nodes.len() {
        wait_for(&format!("node {} no longer has it", i + 1), LIMIT, || {
            app(i).find(&id).is_none()
        });
        assert!(!served(&nodes, i, &id), "node {} still serves it", i + 1);
    }
}

#[test]
fn delta_manager_logout_by_session_invalidate_ends_it_on_every_node() {
    logout_by_session_invalidate_ends_it_everywhere(ManagerKind::Delta);
}

#[test]
fn backup_manager_logout_by_session_invalidate_ends_it_on_every_node() {
    logout_by_session_invalidate_ends_it_everywhere(ManagerKind::Backup);
}
