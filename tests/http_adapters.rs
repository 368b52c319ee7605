//! The adapters users copy, as real processes: three `tiny_http_node` processes, then three
//! `rouille_node` processes, on 127.0.0.1 with OS-chosen ports, run the seed's curl scenario
//! with a cookie jar: log in on node 1, read the profile on node 2, SIGKILL node 1, read the
//! profile (and the counter) on node 3. Each adapter once with the DeltaManager and once with
//! the BackupManager, one cluster at a time (the machine may be small and busy).
//!
//! Run: `cargo test --release --test http_adapters`.

#[path = "../examples/http_node/client.rs"]
mod client;
mod common;

use client::{exchange, Client, Reply};
use common::procs::{example_exe, pump, Output};
use common::wait_until;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(20);

/// The adapter examples for this build profile, (re)built once per test binary: `cargo test
/// --test http_adapters` alone builds no example, and a stale binary would be tested.
fn adapter_exe(name: &str) -> std::path::PathBuf {
    static BUILD: Once = Once::new();
    BUILD.call_once(|| {
        let Ok(cargo) = std::env::var("CARGO") else {
            return; // not run by cargo: use what is there
        };
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "--example", "tiny_http_node"])
            .args(["--example", "rouille_node"]);
        if !cfg!(debug_assertions) {
            cmd.arg("--release");
        }
        let status = cmd
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo");
        assert!(
            status.success(),
            "cargo build of the adapter examples failed"
        );
    });
    example_exe(name)
}

/// One adapter process.
struct Proc {
    name: String,
    http: SocketAddr,
    receiver: SocketAddr,
    child: Child,
    out: Arc<Output>,
    exited: bool,
}

impl Proc {
    /// Starts `exe` as node `name` on ephemeral ports, with `members`' receivers as static
    /// members, and waits for its ready line.
    fn spawn(exe: &str, name: &str, manager: &str, members: &[&Proc]) -> Proc {
        let mut cmd = Command::new(adapter_exe(exe));
        cmd.args(["--name", name, "--manager", manager]).args([
            "--http",
            "127.0.0.1:0",
            "--receiver=127.0.0.1:0",
        ]);
        for m in members {
            cmd.args(["--member", &m.receiver.to_string()]);
        }
        let mut child = cmd
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {exe}: {e}"));
        let out = Arc::new(Output::default());
        pump(out.clone(), false, child.stdout.take().expect("stdout"));
        pump(out.clone(), true, child.stderr.take().expect("stderr"));
        let unset = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut p = Proc {
            name: format!("{exe} {name}"),
            http: unset,
            receiver: unset,
            child,
            out,
            exited: false,
        };
        // `<exe> node1 listening on http://127.0.0.1:P (cluster receiver 127.0.0.1:Q)`
        let line = p.wait_line("its ready line", |stderr, l| {
            !stderr && l.contains(" listening on http://")
        });
        let http = line
            .split("http://")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|a| a.parse().ok());
        let receiver = line
            .split("cluster receiver ")
            .nth(1)
            .and_then(|r| r.trim_end_matches(')').parse().ok());
        match (http, receiver) {
            (Some(h), Some(r)) => (p.http, p.receiver) = (h, r),
            _ => panic!("cannot read addresses from `{line}`"),
        }
        p
    }

    fn wait_line(&self, what: &str, pred: impl Fn(bool, &str) -> bool) -> String {
        let deadline = Instant::now() + LIMIT;
        let mut lines = self.out.lines.lock();
        loop {
            if let Some((_, l)) = lines.iter().find(|(s, l)| pred(*s, l)) {
                return l.clone();
            }
            if self
                .out
                .changed
                .wait_until(&mut lines, deadline)
                .timed_out()
            {
                drop(lines);
                panic!("{} did not print {what}\n{}", self.name, self.dump());
            }
        }
    }

    fn dump(&self) -> String {
        format!("--- {} ---\n{}", self.name, self.out.text())
    }

    /// SIGKILL: no goodbye, no last replication.
    fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
        self.exited = true;
    }

    /// `/app/health` (200 once ready, 503 before).
    fn health(&self) -> Reply {
        Client::new()
            .get(self.http, "/app/health")
            .unwrap_or_else(|e| panic!("{} health: {e}\n{}", self.name, self.dump()))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.dump());
        }
    }
}

/// The number after `"key":` in a flat JSON object.
fn json_number(json: &str, key: &str) -> u64 {
    let pat = format!("\"{key}\":");
    json.split(&pat)
        .nth(1)
        .map(|r| {
            r.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| panic!("no number {key} in {json}"))
}

fn get(c: &mut Client, node: &Proc, path: &str) -> Reply {
    c.get(node.http, path)
        .unwrap_or_else(|e| panic!("GET {path} on {}: {e}", node.name))
}

/// GET until the answer has `status`, within the limit (replication may still be on its way).
fn get_until(c: &mut Client, node: &Proc, path: &str, status: u16) -> Reply {
    let mut last = None;
    let ok = wait_until(LIMIT, || {
        let r = get(c, node, path);
        let done = r.status == status;
        last = Some(r);
        done
    });
    assert!(ok, "GET {path} on {} never {status}: {last:?}", node.name);
    last.expect("at least one answer")
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
