//! Session types that evolve, over real sockets on 127.0.0.1: nodes whose application stores a
//! `User` of one version share sessions with nodes whose `User` has a defaulted field more or a
//! field fewer, through a rolling replacement of a node, for both managers (docs/design.md,
//! "Evolving session types").

mod common;

use common::*;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tribecast::{ClusterConfig, ManagerKind, SendOptions, SessionError, SimpleTcpCluster};

const LIMIT: Duration = Duration::from_secs(20);

/// The application's first version of its session types.
mod v1 {
    use super::*;
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct User {
        pub id: u64,
        pub name: String,
        pub cart: Vec<String>,
    }
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub enum Role {
        Reader,
        Editor { since: u64 },
    }
}

/// The next version: a field more (with a default) and an enum variant more.
mod v2 {
    use super::*;
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct User {
        pub id: u64,
        pub name: String,
        /// To be removed in version 3: a default first, so that this version reads the
        /// bytes of version 3 while both run.
        #[serde(default)]
        pub cart: Vec<String>,
        #[serde(default)]
        pub email: Option<String>,
        #[serde(default)]
        pub logins: u32,
    }
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub enum Role {
        Admin,
        Reader,
        Editor { since: u64 },
    }
}

/// The version after: the cart moved elsewhere (a field fewer).
mod v3 {
    use super::*;
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct User {
        pub id: u64,
        pub name: String,
        #[serde(default)]
        pub email: Option<String>,
        #[serde(default)]
        pub logins: u32,
    }
}

fn template(kind: ManagerKind) -> ClusterConfig {
    let mut cfg = ClusterConfig::default();
    // A request returns once every member (delta) or the backup (backup) applied it.
    cfg.channel_send_options = SendOptions::SYNC_ACK;
    cfg.manager.kind = kind;
    cfg
}

/// Attribute `name` of session `id` as a `T`, read by a request on `node` (a BackupManager node
/// that holds no copy fetches it). `None` when the node does not serve the session.
fn read<T: DeserializeOwned>(
    node: &SimpleTcpCluster,
    id: &str,
    name: &str,
) -> Option<Result<Option<T>, SessionError>> {
    let mut req = node
        .manager("/app")
        .expect("app")
        .request(Some(id), "/app/read");
    let got = req.session().map(|s| s.get::<T>(name));
    req.finish().expect("finish");
    got
}

/// Waits until `node` serves session `id` and its `name` reads as `T`, then returns it.
fn read_ok<T: DeserializeOwned + std::fmt::Debug>(
    node: &SimpleTcpCluster,
    id: &str,
    name: &str,
) -> T {
    let mut out = None;
    wait_for(&format!("{} serves {id}", route(node)), LIMIT, || {
        out = read::<T>(node, id, name);
        out.is_some()
    });
    match out {
        Some(Ok(Some(v))) => v,
        other => panic!("{name} of {id} on {}: {other:?}", route(node)),
    }
}

fn route(node: &SimpleTcpCluster) -> String {
    node.channel()
        .local_member()
        .map(|m| m.name)
        .unwrap_or_default()
}

/// Sets `name` to `value` in session `id` by a request on `node`.
fn write<T: Serialize>(node: &SimpleTcpCluster, id: &str, name: &str, value: &T) {
    let mut req = node
        .manager("/app")
        .expect("app")
        .request(Some(id), "/app/write");
    req.session()
        .expect("session")
        .set(name, value)
        .expect("set");
    req.finish().expect("replicated");
}

fn rolling_deploy_keeps_every_session_readable(kind: ManagerKind) {
    init_logs();
    let cfg = template(kind);
    // server1 runs the application's version 1, server2 already version 2.
    let mut nodes = cluster_nodes(2, &cfg);
    let (old, new) = (&nodes[0], &nodes[1]);

    // A login on the old node.
    let ann = v1::User {
        id: 7,
        name: "ann".into(),
        cart: vec!["book".into(), "pen".into()],
    };
    let mut req = old
        .manager("/app")
        .expect("app")
        .request(None, "/app/login");
    let s = req.session_or_create().expect("session");
    s.set("user", &ann).expect("set");
    s.set("role", &v1::Role::Editor { since: 2024 })
        .expect("set");
    s.set("visits", &1u32).expect("set");
    let id = req.session_id().expect("id").to_string();
    req.finish().expect("login replicated");

    // The new node reads V1's bytes as V2: the added fields take their defaults.
    let u: v2::User = read_ok(new, &id, "user");
    assert_eq!(
        u,
        v2::User {
            id: 7,
            name: "ann".into(),
            cart: ann.cart.clone(),
            email: None,
            logins: 0
        }
    );
    assert_eq!(
        read_ok::<v2::Role>(new, &id, "role"),
        v2::Role::Editor { since: 2024 }
    );
    // It writes V2 (with the new fields set); the old node reads it as V1 (they are skipped).
    write(
        new,
        &id,
        "user",
        &v2::User {
            email: Some("ann@example.com".into()),
            logins: 1,
            ..u
        },
    );
    write(new, &id, "visits", &2u32);
    wait_for("the old node sees the new node's change", LIMIT, || {
        read::<u32>(old, &id, "visits").is_some_and(|v| v == Ok(Some(2)))
    });
    assert_eq!(read_ok::<v1::User>(old, &id, "user"), ann);

    // A variant the old code does not know: a typed error on the old node, not a panic, and
    // the rest of the session stays readable there.
    write(new, &id, "role", &v2::Role::Admin);
    wait_for("the old node sees the new role", LIMIT, || {
        read::<v2::Role>(old, &id, "role").is_some_and(|r| r == Ok(Some(v2::Role::Admin)))
    });
    match read::<v1::Role>(old, &id, "role") {
        Some(Err(SessionError::Decode { name, reason })) => {
            assert_eq!(name, "role");
            assert!(reason.contains("Admin"), "{reason}");
        }
        other => panic!("an unknown variant read as {other:?}"),
    }
    assert_eq!(read_ok::<v1::User>(old, &id, "user"), ann);
    write(new, &id, "role", &v2::Role::Reader);

    // The old node is replaced by one running version 3 (the cart field is gone).
    let old = nodes.remove(0);
    old.stop();
    drop(old);
    let v3_node = cluster_node("server3", &[&nodes[0]], &cfg);
    nodes.push(v3_node);
    for n in &nodes {
        wait_for("the two members see each other", LIMIT, || {
            n.channel().members().len() == 1
        });
    }
    let (new, v3_node) = (&nodes[0], &nodes[1]);
    let u3: v3::User = read_ok(v3_node, &id, "user");
    assert_eq!(
        u3,
        v3::User {
            id: 7,
            name: "ann".into(),
            email: Some("ann@example.com".into()),
            logins: 1
        }
    );
    // V3 writes (no cart); V2 reads it with the cart at its default.
    write(
        v3_node,
        &id,
        "user",
        &v3::User {
            logins: 2,
            ..u3.clone()
        },
    );
    wait_for("version 2 reads version 3's user", LIMIT, || {
        read::<v2::User>(new, &id, "user")
            .is_some_and(|u| matches!(u, Ok(Some(u)) if u.logins == 2 && u.cart.is_empty()))
    });
    // Version 1 (no default on the cart) could not have run beside version 3: a typed error.
    match read::<v1::User>(new, &id, "user") {
        Some(Err(SessionError::Decode { reason, .. })) => {
            assert!(reason.contains("cart"), "{reason}")
        }
        other => panic!("version 1 read version 3's user as {other:?}"),
    }
    assert_eq!(read_ok::<u32>(v3_node, &id, "visits"), 2);
    assert_eq!(read_ok::<v2::Role>(v3_node, &id, "role"), v2::Role::Reader);
    for n in &nodes {
        n.stop();
    }
}

#[test]
fn delta_manager_sessions_stay_readable_through_a_rolling_deploy_of_changed_types() {
    rolling_deploy_keeps_every_session_readable(ManagerKind::Delta);
}

#[test]
fn backup_manager_sessions_stay_readable_through_a_rolling_deploy_of_changed_types() {
    rolling_deploy_keeps_every_session_readable(ManagerKind::Backup);
}
