//! A real network partition between two in-process nodes, then its heal, for both managers.
//!
//! Each outer test runs its inner test in a private network namespace (tests/common/netns.rs)
//! whose routing can be cut: the kernel's `local` routing rule is moved behind a free slot, so
//! that `ip rule add ... ipproto tcp dport P blackhole` drops every packet to or from a node's
//! cluster port P on loopback (established connections go silent, new ones are refused). That
//! is a partition as the members see it: heartbeats and replication stop, each side drops the
//! other and serves on. Deleting the rules heals it.
//!
//! What it shows: while cut, both sides serve the same session and change it; after the heal
//! the application's `SessionMerger` (`ClusterManager::set_merger`) builds the surviving copy on
//! both nodes (a shopping cart keeps every item added on either side); without a merger the
//! default rule keeps the copy with more changes on both (docs/design.md, "Partitions").
//!
//! Needs root (or CAP_SYS_ADMIN) for `unshare -n`, like tests/multicast.rs.
//! Run: `cargo test --release --test partition`.

mod common;

use common::{cluster_nodes, init_logs, netns, wait_for};
use std::collections::BTreeSet;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;
use tribecast::{
    ClusterConfig, ClusterManager, ManagerConfig, ManagerKind, SessionMerger, SessionState,
    SimpleTcpCluster,
};

const LIMIT: Duration = Duration::from_secs(30);
/// The namespace's routing, made cuttable: the `local` rule (pref 0) moves to pref 100, so that
/// the blackhole rules below (pref 10) are looked at first.
const SETUP: &str = "ip link set lo up; ip rule add pref 100 lookup local; ip rule del pref 0";
const CUT_PREF: &str = "10";

/// The application's merge of a cart (a set of items) kept in the session: every item added on
/// either side survives. Deterministic and idempotent, as `SessionMerger` asks.
#[derive(Default)]
struct CartUnion {
    calls: AtomicUsize,
}

fn cart_of(s: &SessionState) -> BTreeSet<String> {
    s.attribute("cart")
        .expect("a cart this test wrote")
        .unwrap_or_default()
}

impl SessionMerger for CartUnion {
    fn merge(&self, preferred: &SessionState, other: &SessionState) -> SessionState {
        self.calls.fetch_add(1, SeqCst);
        let mut out = preferred.clone();
        let all: BTreeSet<String> = cart_of(preferred).union(&cart_of(other)).cloned().collect();
        out.set_attribute("cart", &all).expect("a set encodes");
        out
    }
}

fn ip(args: &str) {
    let out = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .expect("ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn cluster_port(n: &SimpleTcpCluster) -> u16 {
    n.channel().local_member().expect("running").addr.port()
}

/// Drops every TCP packet to or from the nodes' cluster ports.
fn cut(nodes: &[SimpleTcpCluster]) {
    for n in nodes {
        let p = cluster_port(n);
        ip(&format!(
            "rule add pref {CUT_PREF} ipproto tcp dport {p} blackhole"
        ));
        ip(&format!(
            "rule add pref {CUT_PREF} ipproto tcp sport {p} blackhole"
        ));
    }
}

fn heal() {
    // Every rule at the cut's preference, one `del` each.
    while Command::new("ip")
        .args(["rule", "del", "pref", CUT_PREF])
        .output()
        .expect("ip")
        .status
        .success()
    {}
}

fn app(n: &SimpleTcpCluster) -> Arc<ClusterManager> {
    n.manager("/app").expect("app")
}

/// A request on `n` adding `item` to the cart of session `id` (made when `id` is None);
/// returns the session's id.
fn add_item(n: &SimpleTcpCluster, id: Option<&str>, item: &str) -> String {
    let mut req = app(n).request(id, "/app/cart");
    let s = req.session_or_create().expect("session");
    let mut cart: BTreeSet<String> = s.get("cart").expect("readable").unwrap_or_default();
    cart.insert(item.to_string());
    s.set("cart", &cart).expect("set");
    let id = req.session_id().expect("id").to_string();
    req.finish().expect("request ends");
    id
}

fn cart_on(n: &SimpleTcpCluster, id: &str) -> Option<BTreeSet<String>> {
    app(n)
        .find(id)
        .map(|s| s.get("cart").expect("readable").unwrap_or_default())
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Two nodes; a cart made on node 1 and replicated; the partition; changes on both sides
/// (`left` on node 1, `right` on node 2); the heal. Returns the nodes and the session's id.
fn partitioned_changes(
    kind: ManagerKind,
    merger: Option<Arc<CartUnion>>,
    left: &[&str],
    right: &[&str],
) -> (Vec<SimpleTcpCluster>, String) {
    init_logs();
    let mut cfg = ClusterConfig::default();
    cfg.manager = {
        let mut m = ManagerConfig::default();
        m.kind = kind;
        m
    };
    let nodes = cluster_nodes(2, &cfg);
    if let Some(m) = &merger {
        for n in &nodes {
            app(n).set_merger(m.clone());
        }
    }
    let id = add_item(&nodes[0], None, "book");
    wait_for("the cart on both nodes", LIMIT, || {
        nodes
            .iter()
            .all(|n| cart_on(n, &id) == Some(set(&["book"])))
    });

    cut(&nodes);
    wait_for("each side drops the other", LIMIT, || {
        nodes.iter().all(|n| n.channel().members().is_empty())
    });
    for item in left {
        add_item(&nodes[0], Some(&id), item);
    }
    for item in right {
        add_item(&nodes[1], Some(&id), item);
    }
    assert_eq!(
        cart_on(&nodes[0], &id),
        Some(set(&[&["book"], left].concat()))
    );
    assert_eq!(
        cart_on(&nodes[1], &id),
        Some(set(&[&["book"], right].concat()))
    );

    heal();
    wait_for("the sides see each other again", LIMIT, || {
        nodes.iter().all(|n| n.channel().members().len() == 1)
    });
    (nodes, id)
}

fn a_merger_keeps_both_sides_changes(kind: ManagerKind) {
    let merger = Arc::new(CartUnion::default());
    let (nodes, id) = partitioned_changes(kind, Some(merger.clone()), &["pen"], &["lamp"]);
    let all = set(&["book", "pen", "lamp"]);
    wait_for("the merged cart on both nodes", LIMIT, || {
        nodes.iter().all(|n| cart_on(n, &id).as_ref() == Some(&all))
    });
    assert!(merger.calls.load(SeqCst) >= 1, "the merger decided");
    // The merged session is one session again: a change on either node reaches the other (one
    // writer at a time, as a sticky user makes them: two writers at once fork a session,
    // docs/design.md).
    add_item(&nodes[1], Some(&id), "cup");
    wait_for("node 2's change on node 1", LIMIT, || {
        cart_on(&nodes[0], &id).is_some_and(|c| c.contains("cup"))
    });
    add_item(&nodes[0], Some(&id), "map");
    let after = set(&["book", "pen", "lamp", "cup", "map"]);
    let ok = common::wait_until(LIMIT, || {
        nodes
            .iter()
            .all(|n| cart_on(n, &id).as_ref() == Some(&after))
    });
    assert!(
        ok,
        "later changes on both nodes: {:?} and {:?}",
        cart_on(&nodes[0], &id),
        cart_on(&nodes[1], &id)
    );
}

/// No merger: the copy with more changes (node 1's two against node 2's one) wins everywhere.
fn the_default_rule_keeps_the_side_with_more_changes(kind: ManagerKind) {
    let (nodes, id) = partitioned_changes(kind, None, &["pen", "ink"], &["lamp"]);
    let left = set(&["book", "pen", "ink"]);
    wait_for("node 1's copy on both nodes", LIMIT, || {
        nodes
            .iter()
            .all(|n| cart_on(n, &id).as_ref() == Some(&left))
    });
}

/// The outer test: runs `inner` in its own network namespace.
fn in_netns(inner: &str) {
    netns::require_unshare("the partition tests cut loopback traffic");
    netns::run_inner(inner, SETUP, &[]);
}

#[test]
fn delta_manager_merger_after_a_partition() {
    in_netns("inner_delta_merger");
}

#[test]
fn backup_manager_merger_after_a_partition() {
    in_netns("inner_backup_merger");
}

#[test]
fn delta_manager_default_rule_after_a_partition() {
    in_netns("inner_delta_default");
}

#[test]
fn backup_manager_default_rule_after_a_partition() {
    in_netns("inner_backup_default");
}

#[test]
#[ignore = "run by delta_manager_merger_after_a_partition"]
fn inner_delta_merger() {
    if netns::isolated("inner_delta_merger") {
        a_merger_keeps_both_sides_changes(ManagerKind::Delta);
    }
}

#[test]
#[ignore = "run by backup_manager_merger_after_a_partition"]
fn inner_backup_merger() {
    if netns::isolated("inner_backup_merger") {
        a_merger_keeps_both_sides_changes(ManagerKind::Backup);
    }
}

#[test]
#[ignore = "run by delta_manager_default_rule_after_a_partition"]
fn inner_delta_default() {
    if netns::isolated("inner_delta_default") {
        the_default_rule_keeps_the_side_with_more_changes(ManagerKind::Delta);
    }
}

#[test]
#[ignore = "run by backup_manager_default_rule_after_a_partition"]
fn inner_backup_default() {
    if netns::isolated("inner_backup_default") {
        the_default_rule_keeps_the_side_with_more_changes(ManagerKind::Backup);
    }
}
