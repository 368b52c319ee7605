//! The session API as web code uses it, over real sockets on 127.0.0.1: a logout written the
//! Servlet way (`session.invalidate()` on the request's session) ends the session on every node.

mod common;

use common::*;
use std::time::Duration;
use tribecast::{
    ClusterConfig, CookieConfig, ManagerConfig, ManagerKind, RebindRoute, SameSite,
    SessionRequestError, SimpleTcpCluster,
};

const LIMIT: Duration = Duration::from_secs(20);

fn cluster_of(kind: ManagerKind) -> Vec<SimpleTcpCluster> {
    let manager = {
        let mut manager = ManagerConfig::default();
        manager.kind = kind;
        manager.rebind_route = RebindRoute::WhenRouteGone;
        manager
    };
    cluster_nodes(3, &{
        let mut cluster = ClusterConfig::default();
        cluster.manager = manager;
        cluster
    })
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
    let id = login_on(&app(0), "ann");
    wait_for("node 2 serves the login", LIMIT, || served(&nodes, 1, &id));
    // Every DeltaManager node holds the login before the logout: a node the login had not
    // reached yet would pass "no longer has it" and then take the late login (the end, had it
    // come first, is remembered and refuses it). A BackupManager node without a copy fetches.
    if kind == ManagerKind::Delta {
        for i in 0..nodes.len() {
            wait_for(&format!("node {} holds the login", i + 1), LIMIT, || {
                app(i).find(&id).is_some()
            });
        }
    }
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

/// What a browser keeps of a `Set-Cookie`: the session id, or `None` for an expired cookie.
fn cookie_value(set_cookie: &str) -> Option<String> {
    let (pair, attrs) = set_cookie.split_once(';').unwrap_or((set_cookie, ""));
    let (name, value) = pair.split_once('=').expect("name=value");
    assert_eq!(name, "JSESSIONID");
    if attrs.contains("Max-Age=0") {
        assert!(
            value.is_empty(),
            "an expired cookie has no value: {set_cookie}"
        );
        None
    } else {
        Some(value.to_string())
    }
}

/// Every `Set-Cookie` a response needs, decided by the request and written by the policy: a new
/// session, none for the same session, a change of id at login, an expired cookie at logout
/// (`session.invalidate()` and `SessionRequest::invalidate`), and the attributes as configured.
fn set_cookie_cases(kind: ManagerKind) {
    init_logs();
    let nodes = cluster_of(kind);
    let app = |i: usize| nodes[i].manager("/app").expect("app");
    // A new session.
    let mut req = app(0).request(None, "/app/login");
    req.session_or_create()
        .expect("session")
        .set("user", &"ann")
        .expect("set");
    let id = req.session_id().expect("id").to_string();
    let set = req.set_cookie().expect("a new session sets the cookie");
    assert_eq!(
        set,
        format!("JSESSIONID={id}; Path=/app; HttpOnly; SameSite=Lax")
    );
    req.finish().expect("finish");
    // The cookie read back from a Cookie header; the same session needs no Set-Cookie.
    let header = format!("theme=dark; JSESSIONID={id}");
    let sent = app(0).session_id_from_cookie_header(&header);
    assert_eq!(sent, Some(id.as_str()));
    let req = app(0).request(sent, "/app/profile");
    assert_eq!(req.set_cookie(), None, "nothing changed");
    req.finish().expect("finish");
    // A change of id (login): the new id.
    let mut req = app(0).request(Some(&id), "/app/login");
    let new = req.change_id().expect("changed").expect("a session");
    assert_eq!(
        cookie_value(&req.set_cookie().expect("new id")),
        Some(new.to_string())
    );
    req.finish().expect("finish");
    let id = new.to_string();
    // A cookie for no session here, and none made: nothing to send.
    let other = "0123456789ABCDEF0123456789ABCDEF.server9";
    let req = app(0).request(Some(other), "/app/profile");
    assert_eq!(req.set_cookie(), None);
    drop(req);
    // Logout the Servlet way: the cookie expires.
    let mut req = app(0).request(Some(&id), "/app/logout");
    req.session().expect("logged in").invalidate();
    let set = req.set_cookie().expect("the cookie expires");
    assert_eq!(
        set,
        "JSESSIONID=; Path=/app; Max-Age=0; HttpOnly; SameSite=Lax; \
         Expires=Thu, 01 Jan 1970 00:00:00 GMT"
    );
    req.finish().expect("finish");
    // Logout by the request, and a session made and ended in one request.
    let mut req = app(0).request(None, "/app/login");
    req.session_or_create().expect("session");
    let id = req.session_id().expect("id").to_string();
    req.finish().expect("finish");
    let mut req = app(0).request(Some(&id), "/app/logout");
    req.invalidate().expect("ended everywhere");
    assert_eq!(req.set_cookie().and_then(|s| cookie_value(&s)), None);
    assert!(req.set_cookie().is_some(), "an expired cookie is sent");
    let mut req = app(0).request(None, "/app/login");
    req.session_or_create().expect("session").invalidate();
    assert_eq!(req.set_cookie(), None, "no cookie was sent, none to remove");
}

#[test]
fn delta_manager_set_cookie_for_each_case() {
    set_cookie_cases(ManagerKind::Delta);
}

#[test]
fn backup_manager_set_cookie_for_each_case() {
    set_cookie_cases(ManagerKind::Backup);
}

/// The cookie as configured: Secure, SameSite=Strict, Max-Age, Domain, Path, another name.
#[test]
fn set_cookie_follows_the_configured_policy() {
    init_logs();
    let manager = {
        let mut manager = ManagerConfig::default();
        manager.cookie = {
            let mut cookie = CookieConfig::default();
            cookie.name = "SID".into();
            cookie.path = Some("/".into());
            cookie.domain = Some("example.com".into());
            cookie.secure = true;
            cookie.same_site = SameSite::Strict;
            cookie.max_age = Some(Duration::from_secs(1800));
            cookie
        };
        manager
    };
    let node = cluster_node("server1", &[], &{
        let mut cluster = ClusterConfig::default();
        cluster.manager = manager;
        cluster
    });
    let app = node.manager("/app").expect("app");
    let mut req = app.request(None, "/app/login");
    req.session_or_create().expect("session");
    let id = req.session_id().expect("id").to_string();
    assert_eq!(
        req.set_cookie().expect("new"),
        format!(
            "SID={id}; Path=/; Domain=example.com; Max-Age=1800; Secure; HttpOnly; SameSite=Strict"
        )
    );
    req.finish().expect("finish");
    assert_eq!(
        app.session_id_from_cookie_header(&format!("JSESSIONID=x; SID={id}")),
        Some(id.as_str())
    );
    // A cookie that cannot be written is refused when the cluster is made.
    let bad = {
        let mut cluster = ClusterConfig::default();
        cluster.manager = {
            let mut manager = ManagerConfig::default();
            manager.cookie = {
                let mut cookie = CookieConfig::default();
                cookie.same_site = SameSite::None;
                cookie
            };
            manager
        };
        cluster
    };
    let err = SimpleTcpCluster::new(bad).err().expect("refused");
    assert!(err.to_string().contains("SameSite=None"), "{err}");
}

/// Tomcat's JvmRouteBinderValve: node 1 stops, the user's next request goes to node 3 with
/// `id.server1`; node 3 renames the session `id.server3` (the same random part), the response's
/// cookie carries it, the session keeps its data, the old id is refused everywhere, and later
/// requests on node 3 are served from node 3's own copy (no fetch, nothing sent for a read).
fn rebinds_the_route_after_a_failover(kind: ManagerKind) {
    init_logs();
    let nodes = cluster_of(kind);
    let app = |i: usize| nodes[i].manager("/app").expect("app");
    let mut req = app(0).request(None, "/app/login");
    req.session_or_create()
        .expect("session")
        .set("user", &"ann")
        .expect("set");
    let id = req.session_id().expect("id").to_string();
    assert!(id.ends_with(".server1"), "{id}");
    req.finish().expect("login replicated");
    wait_for("node 3 serves the login", LIMIT, || served(&nodes, 2, &id));
    // While node 1 lives, a request on node 3 keeps the id (WhenRouteGone).
    let req = app(2).request(Some(&id), "/app/profile");
    assert_eq!(req.set_cookie(), None, "node 1 is alive: no rebind");
    req.finish().expect("finish");
    let gone = nodes[0].channel().local_member().map(|m| m.id);
    nodes[0].stop();
    wait_for("the others see node 1 go", LIMIT, || {
        nodes[1..]
            .iter()
            .all(|n| n.channel().members().iter().all(|m| Some(m.id) != gone))
    });
    // The managers hear of the leave from the channel's listener, just after its member list
    // changed: until node 3's has, a request keeps the old id (nothing renamed, nothing sent).
    let mut req = None;
    wait_for("node 3 rebinds the session", LIMIT, || {
        let r = app(2).request(Some(&id), "/app/profile");
        let rebound = r.set_cookie().is_some();
        req = Some(r);
        rebound
    });
    let mut req = req.expect("a request");
    let s = req.session().expect("node 3 serves the session");
    assert_eq!(
        s.get::<String>("user").expect("get").as_deref(),
        Some("ann")
    );
    s.set("seen", &1u8).expect("set");
    let set = req.set_cookie().expect("the rebound id is sent");
    let new = cookie_value(&set).expect("an id");
    assert_eq!(new, format!("{}.server3", &id[..32]), "{set}");
    assert_eq!(req.session_id().map(|s| s.to_string()), Some(new.clone()));
    req.finish().expect("replicated");
    // The old id is gone everywhere; the new one is served with its data on both live nodes.
    for i in 1..3 {
        wait_for(&format!("node {} drops the old id", i + 1), LIMIT, || {
            app(i).find(&id).is_none()
        });
    }
    assert!(!served(&nodes, 2, &id), "the old id is refused on node 3");
    // Later requests on node 3: served from its own copy, nothing sent for a read.
    let sent_before = app(2).stats().messages_sent;
    for _ in 0..3 {
        let req = app(2).request(Some(&new), "/app/profile");
        assert_eq!(req.set_cookie(), None, "the cookie is right now");
        req.finish().expect("finish");
    }
    let mut req = app(2).request(Some(&new), "/app/profile");
    let s = req.session().expect("served on node 3");
    assert_eq!(
        s.get::<String>("user").expect("get").as_deref(),
        Some("ann")
    );
    assert_eq!(s.get::<u8>("seen").expect("get"), Some(1));
    drop(req);
    assert_eq!(
        app(2).stats().messages_sent,
        sent_before,
        "no fetch (or anything else) for reads on the node that serves the session"
    );
    // Node 2 serves it too (a delta copy, or fetched from node 3) under the new id.
    wait_for("node 2 serves the new id", LIMIT, || {
        served(&nodes, 1, &new)
    });
}

#[test]
fn delta_manager_rebinds_the_route_after_node_1_stops() {
    rebinds_the_route_after_a_failover(ManagerKind::Delta);
}

#[test]
fn backup_manager_rebinds_the_route_after_node_1_stops() {
    rebinds_the_route_after_a_failover(ManagerKind::Backup);
}

/// `RebindRoute::Never` (Tomcat without the valve) keeps the dead node's route.
#[test]
fn with_rebind_never_the_id_keeps_its_route() {
    init_logs();
    let manager = {
        let mut manager = ManagerConfig::default();
        manager.rebind_route = RebindRoute::Never;
        manager
    };
    let nodes = cluster_nodes(2, &{
        let mut cluster = ClusterConfig::default();
        cluster.manager = manager;
        cluster
    });
    let app = |i: usize| nodes[i].manager("/app").expect("app");
    let mut req = app(0).request(None, "/app/login");
    req.session_or_create().expect("session");
    let id = req.session_id().expect("id").to_string();
    req.finish().expect("finish");
    wait_for("node 2 has it", LIMIT, || app(1).find(&id).is_some());
    nodes[0].stop();
    wait_for("node 2 sees node 1 go", LIMIT, || {
        nodes[1].channel().members().is_empty()
    });
    let req = app(1).request(Some(&id), "/app/profile");
    assert_eq!(req.session_id().map(|s| s.to_string()), Some(id));
    assert_eq!(req.set_cookie(), None);
}

/// One error type for a handler: `?` on the manager's, the attribute's and the send's errors.
#[test]
fn one_error_type_serves_a_handler() {
    fn handler(
        app: &std::sync::Arc<tribecast::ClusterManager>,
    ) -> Result<Option<String>, SessionRequestError> {
        let mut req = app.request(None, "/app/login");
        req.session_or_create()?.set("user", "ann")?;
        req.change_id()?;
        let cookie = req.set_cookie();
        req.finish()?;
        Ok(cookie)
    }
    init_logs();
    let node = cluster_node("server1", &[], &ClusterConfig::default());
    let app = node.manager("/app").expect("app");
    assert!(handler(&app).expect("ok").is_some());
    let mut req = app.request(None, "/app/x");
    let s = req.session_or_create().expect("session");
    s.invalidate();
    let err: SessionRequestError = s.set("k", &1u8).expect_err("ended").into();
    assert!(matches!(err, SessionRequestError::Attribute(_)), "{err}");
    assert!(std::error::Error::source(&err).is_some());
}
