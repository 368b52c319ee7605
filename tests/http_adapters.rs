//! The adapters users copy, as real processes: three `tiny_http_node` processes, then three
//! `rouille_node` processes, on 127.0.0.1 with OS-chosen ports, run the seed's curl scenario
//! with a cookie jar: log in on node 1, read the profile on node 2, SIGKILL node 1, read the
//! profile (and the counter) on node 3. Each adapter once with the DeltaManager and once with
//! the BackupManager, one cluster at a time (the machine may be small and busy).
//!
//! Run: `cargo test --release --test http_adapters`.

mod common;

use common::client::{exchange, Client, Reply};
use common::procs::{example_exe, get, get_until, json_number, Proc, LIMIT};
use common::wait_until;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The adapter processes, as the shared [`Proc`] (the adapter examples are built with the
/// others, by `example_exe`).
impl Proc {
    /// Starts `exe` as node `name` on ephemeral ports, with `members`' receivers as static
    /// members, and waits for its ready line.
    fn spawn(exe: &str, name: &str, manager: &str, members: &[&Proc]) -> Proc {
        let mut cmd = Command::new(example_exe(exe));
        cmd.args(["--name", name, "--manager", manager]).args([
            "--http",
            "127.0.0.1:0",
            "--receiver=127.0.0.1:0",
        ]);
        for m in members {
            cmd.args(["--member", &m.receiver.to_string()]);
        }
        cmd.env("RUST_LOG", "info").stdin(Stdio::null());
        let mut p = Proc::start(format!("{exe} {name}"), &mut cmd)
            .unwrap_or_else(|e| panic!("spawn {exe}: {e}"));
        p.wait_ready();
        p
    }

    /// `/app/health` (200 once ready, 503 before).
    fn health(&self) -> Reply {
        Client::new()
            .get(self.http, "/app/health")
            .unwrap_or_else(|e| panic!("{} health: {e}\n{}", self.name, self.dump()))
    }
}

/// Sessions held, summed over `nodes`, until it is `want` (the BackupManager's hand-over of a
/// session that moved is done once it is on its primary and one backup).
fn wait_sessions(nodes: &[Proc], want: u64) {
    let mut seen = Vec::new();
    let ok = wait_until(LIMIT, || {
        seen = nodes
            .iter()
            .map(|n| json_number(&n.health().body, "sessions"))
            .collect();
        seen.iter().sum::<u64>() == want
    });
    assert!(ok, "sessions held per node never sum to {want}: {seen:?}");
}

fn scenario(exe: &str, manager: &str) {
    // Three nodes that all see each other and are ready (health 200).
    let n1 = Proc::spawn(exe, "node1", manager, &[]);
    let n2 = Proc::spawn(exe, "node2", manager, &[&n1]);
    let n3 = Proc::spawn(exe, "node3", manager, &[&n1, &n2]);
    let mut nodes = [n1, n2, n3];
    for n in &nodes {
        let ok = wait_until(LIMIT, || {
            let h = n.health();
            h.status == 200 && h.body.matches("\"name\":").count() == 2
        });
        assert!(ok, "{} never saw both others: {:?}", n.name, n.health());
    }
    let mut jar = Client::new();

    // 1. Log in on node 1: the library's cookie policy writes the cookie.
    let login = jar
        .post_form(
            nodes[0].http,
            "/app/login",
            &[("user", "admin"), ("pass", "secret")],
        )
        .expect("login");
    assert_eq!(login.status, 200, "{login:?}");
    let set_cookie = login.header("set-cookie").expect("Set-Cookie").to_string();
    assert!(
        set_cookie.ends_with("; Path=/app; HttpOnly; SameSite=Lax"),
        "{set_cookie}"
    );
    let id = jar.cookie("JSESSIONID").expect("cookie stored").to_string();
    assert!(id.ends_with(".node1"), "jvmRoute suffix: {id}");
    let bad = Client::new()
        .post_form(
            nodes[0].http,
            "/app/login",
            &[("user", "admin"), ("pass", "x")],
        )
        .expect("bad login");
    assert_eq!(bad.status, 401, "{bad:?}");
    assert_eq!(
        get(&mut Client::new(), &nodes[1], "/app/profile").status,
        401
    );
    // No session for an anonymous counter either: sessions are made at login only.
    let anonymous = get(&mut Client::new(), &nodes[1], "/app/counter");
    assert_eq!(anonymous.status, 401, "{anonymous:?}");
    assert!(anonymous.header("set-cookie").is_none(), "{anonymous:?}");
    if manager == "backup" {
        wait_sessions(&nodes, 2);
    }

    // 2. The same cookie jar on node 2: still logged in.
    let profile = get_until(&mut jar, &nodes[1], "/app/profile", 200);
    assert!(
        profile.body.contains("\"username\":\"admin\""),
        "{}",
        profile.body
    );
    assert!(profile.header("set-cookie").is_none(), "{profile:?}");
    if manager == "backup" {
        wait_sessions(&nodes, 2);
    }
    // A counter, on node 1; node 3 has it before node 1 dies, as a user's next click would.
    for want in 1..=3u64 {
        let r = get(&mut jar, &nodes[0], "/app/counter");
        assert_eq!(json_number(&r.body, "counter"), want, "{}", r.body);
    }
    if manager == "backup" {
        wait_sessions(&nodes, 2);
    } else {
        let ok = wait_until(LIMIT, || {
            json_number(
                &get(&mut jar, &nodes[2], "/app/counter?peek").body,
                "counter",
            ) == 3
        });
        assert!(ok, "node 3 never saw the counter at 3");
    }
    let css = get(&mut jar, &nodes[1], "/app/static/style.css");
    assert_eq!(css.status, 200, "{css:?}");

    // 3. SIGKILL node 1, and wait until node 3 no longer lists it (what a balancer sees).
    nodes[0].kill();
    let ok = wait_until(LIMIT, || {
        !nodes[2].health().body.contains("\"name\":\"node1\"")
    });
    assert!(ok, "node 3 never dropped the killed node 1");

    // 4. Node 3: still logged in, the counter kept, the same cookie (rebinding is off).
    let profile = get_until(&mut jar, &nodes[2], "/app/profile", 200);
    assert!(
        profile.body.contains("\"username\":\"admin\""),
        "{}",
        profile.body
    );
    assert_eq!(jar.cookie("JSESSIONID"), Some(id.as_str()));
    let r = get(&mut jar, &nodes[2], "/app/counter");
    assert_eq!(
        json_number(&r.body, "counter"),
        4,
        "counter survives: {}",
        r.body
    );

    // Logout on node 3 expires the cookie; node 2 then has no session for it.
    let out = jar
        .post_form(nodes[2].http, "/app/logout", &[])
        .expect("logout");
    assert_eq!(out.status, 200, "{out:?}");
    let expired = out
        .header("set-cookie")
        .expect("an expired cookie")
        .to_string();
    assert!(expired.contains("Max-Age=0"), "{expired}");
    assert_eq!(
        jar.cookie("JSESSIONID"),
        None,
        "the jar dropped the expired cookie"
    );
    let raw = format!(
        "GET /app/profile HTTP/1.1\r\nHost: x\r\nCookie: JSESSIONID={id}\r\nConnection: close\r\n\r\n"
    );
    let ok = wait_until(LIMIT, || {
        exchange(nodes[1].http, raw.as_bytes(), LIMIT).is_ok_and(|r| r.status == 401)
    });
    assert!(ok, "the ended session is still served on node 2");
    for n in &nodes[1..] {
        n.wait_line("an `Added member [` log line", |stderr, l| {
            stderr && l.contains("Added member [")
        });
    }
}

#[test]
fn tiny_http_node_cluster_survives_sigkill_of_node_1() {
    scenario("tiny_http_node", "delta");
    scenario("tiny_http_node", "backup");
}

#[test]
fn rouille_node_cluster_survives_sigkill_of_node_1() {
    scenario("rouille_node", "delta");
    scenario("rouille_node", "backup");
}

/// `tribecast::http::begin` on a node still waiting for the cluster's sessions: a member that
/// never answers the state transfer (a bare channel with no application) keeps the
/// DeltaManager not ready, and a request gets `NotReady` (503) after its wait, not a session
/// lookup that would miss the cluster's sessions.
#[test]
fn a_request_before_the_state_transfer_gets_not_ready_503() {
    use tribecast::{http, ChannelConfig, ClusterConfig, SessionRequestError, SimpleTcpCluster};
    let silent = common::started("silent");
    let mut cfg = ClusterConfig::default();
    cfg.jvm_route = "b".into();
    cfg.channel = ChannelConfig::loopback("b");
    let addr = silent.local_member().expect("running").addr;
    cfg.channel.static_members = vec![tribecast::StaticMember::new(addr)];
    let cluster = SimpleTcpCluster::new(cfg).expect("cluster");
    let app = cluster.add_application("/app");
    cluster.start().expect("start");
    let seen = wait_until(LIMIT, || cluster.channel().members().len() == 1);
    assert!(seen, "the node never saw the silent member");
    assert!(!app.is_ready(), "ready with no state received");
    let started = Instant::now();
    let wait = Duration::from_millis(200);
    match http::begin(&app, "/app/profile", [("Cookie", "a=b")], wait) {
        Err(e @ SessionRequestError::NotReady) => {
            assert_eq!(e.http_status(), 503);
            assert!(started.elapsed() >= wait, "answered before its wait");
        }
        Err(e) => panic!("not NotReady: {e}"),
        Ok(_) => panic!("served before the state transfer"),
    }
    cluster.stop();
    silent.stop();
}
