//! The reference scenario, end to end, in one command: three cluster nodes on 127.0.0.1, each
//! the `http_node` application (tribecast behind a small HTTP server), then over real HTTP with a
//! cookie jar: log in on node 1, read the profile on node 2, stop node 1, read the profile on
//! node 3. Prints each step and exits 0 only if every step passed.
//!
//!     cargo run --release --example cluster_demo
//!     cargo run --release --example cluster_demo -- --manager backup
//!     cargo run --release --example cluster_demo -- --serve     # nodes on :8081..:8083 for curl
//!
//! The three nodes run in this process (threads, OS-chosen ports) so the demo needs nothing
//! built beforehand; `http_node` runs one node per process the same way.

#[path = "http_node/app.rs"]
mod app;
#[path = "http_node/client.rs"]
mod client;
#[path = "http_node/http.rs"]
mod http;

use app::{Node, NodeOptions, REFERENCE_VALVE_FILTER};
use client::Client;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tribecast::{ClusterConfig, ManagerKind, StaticMember};

/// Longest wait for anything: members, readiness, replication.
const LIMIT: Duration = Duration::from_secs(20);

fn node_options(
    name: &str,
    http_port: u16,
    kind: ManagerKind,
    members: &[&Node],
    started: Instant,
) -> NodeOptions {
    let mut cluster = ClusterConfig::default();
    cluster.jvm_route = name.into();
    cluster.valve_filter = REFERENCE_VALVE_FILTER.into();
    cluster.manager.kind = kind;
    cluster.channel.local_name = name.into();
    cluster.channel.receiver.port = 0; // the OS chooses: the demo runs beside anything
    cluster.channel.receiver.auto_bind = 1;
    cluster.channel.receiver.max_threads = 6;
    cluster.channel.static_members = members
        .iter()
        .filter_map(|n| n.receiver_addr())
        .map(StaticMember::new)
        .collect();
    NodeOptions {
        http: SocketAddr::from(([127, 0, 0, 1], http_port)),
        http_threads: 4,
        http_max_connections: 1024,
        context: "/app".into(),
        cluster,
        static_dir: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/static")),
        strict_replication: false,
        started,
    }
}

/// Polls `cond` every 5 ms until it holds or `limit` passes.
fn wait(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn start_cluster(kind: ManagerKind, serve: bool) -> Result<Vec<Node>, String> {
    let started = Instant::now();
    let mut nodes: Vec<Node> = Vec::new();
    for i in 1..=3u16 {
        let port = if serve { 8080 + i } else { 0 };
        let name = format!("node{i}");
        let peers: Vec<&Node> = nodes.iter().collect();
        let node = Node::start(node_options(&name, port, kind, &peers, started))
            .map_err(|e| format!("{name}: {e}"))?;
        println!(
            "  {name}: http://{} (cluster receiver {})",
            node.http_addr().map_or("?".into(), |a| a.to_string()),
            node.receiver_addr().map_or("?".into(), |a| a.to_string())
        );
        nodes.push(node);
    }
    for n in &nodes {
        let ok = wait(LIMIT, || {
            n.cluster().channel().members().len() == 2 && n.app().is_ready()
        });
        if !ok {
            return Err(format!(
                "{} did not see both other nodes within {LIMIT:?}",
                n.name
            ));
        }
    }
    println!(
        "  every node sees the two others ({} ms after start)",
        started.elapsed().as_millis()
    );
    Ok(nodes)
}

fn addr(n: &Node) -> SocketAddr {
    n.http_addr()
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)))
}

struct Steps {
    failed: usize,
}

impl Steps {
    fn check(&mut self, step: &str, ok: bool, detail: &str) {
        println!("[{}] {step}", if ok { "PASS" } else { "FAIL" });
        if !detail.is_empty() {
            println!("       {detail}");
        }
        if !ok {
            self.failed += 1;
        }
    }
}

fn scenario(mut nodes: Vec<Node>) -> bool {
    let mut steps = Steps { failed: 0 };
    let mut browser = Client::new();
    browser.timeout = LIMIT;

    println!("\n== 1. Log in on node1: POST /app/login user=admin&pass=secret");
    match browser.post_form(
        addr(&nodes[0]),
        "/app/login",
        &[("user", "admin"), ("pass", "secret")],
    ) {
        Ok(r) => steps.check(
            "node1 answers 200 and sets the session cookie",
            r.status == 200 && browser.cookie("JSESSIONID").is_some(),
            &format!(
                "{} Set-Cookie: {}\n       {}",
                r.status,
                r.header("set-cookie").unwrap_or("(none)"),
                r.body.trim()
            ),
        ),
        Err(e) => steps.check("node1 answers the login", false, &e.to_string()),
    }

    println!("\n== 2. Same cookie on node2: GET /app/profile");
    // Replication is asynchronous with the DeltaManager (channelSendOptions 8): it takes a
    // moment, as long as a user's next click at most.
    let t = Instant::now();
    let mut last = None;
    let ok = wait(LIMIT, || {
        let r = browser.get(addr(&nodes[1]), "/app/profile");
        let done = matches!(&r, Ok(r) if r.status == 200);
        last = Some(r);
        done
    });
    let detail = match &last {
        Some(Ok(r)) => format!(
            "{} {} (after {} ms)",
            r.status,
            r.body.trim(),
            t.elapsed().as_millis()
        ),
        Some(Err(e)) => e.to_string(),
        None => String::new(),
    };
    steps.check("node2 has the session: still logged in", ok, &detail);

    println!("\n== 3. Stop node1 (like `systemctl stop tomcat1`)");
    nodes[0].stop();
    steps.check("node1 stopped", true, "");

    println!("\n== 4. Same cookie on node3: GET /app/profile");
    match browser.get(addr(&nodes[2]), "/app/profile") {
        Ok(r) => steps.check(
            "node3 has the session: still logged in",
            r.status == 200 && r.body.contains("\"username\":\"admin\""),
            &format!("{} {}", r.status, r.body.trim()),
        ),
        Err(e) => steps.check("node3 answers", false, &e.to_string()),
    }
    match browser.get(addr(&nodes[2]), "/app/health") {
        Ok(r) => println!("       node3 health: {}", r.body.trim()),
        Err(e) => println!("       node3 health: {e}"),
    }
    for n in &mut nodes {
        n.stop();
    }
    println!();
    if steps.failed == 0 {
        println!("All steps passed: the session survived the loss of the node that made it.");
        true
    } else {
        println!("{} step(s) failed.", steps.failed);
        false
    }
}

fn serve(mut nodes: Vec<Node>) {
    let a = |i: usize| addr(&nodes[i]);
    println!(
        "\nThe cluster is up. In a browser: http://{}/app/ (log in, count), then after\n\
         stopping node1 below, http://{}/app/: still logged in. Or, from another terminal:\n\n\
         curl -c cookies.txt -X POST http://{}/app/login -d \"user=admin&pass=secret\"\n\
         curl -b cookies.txt http://{}/app/profile\n\
         curl -b cookies.txt -c cookies.txt http://{}/app/counter\n\
         curl http://{}/app/health\n\n\
         Press Enter here to stop node1, then:\n\n\
         curl -b cookies.txt http://{}/app/profile\n\n\
         Press Enter again (or Ctrl-D) to stop everything; Ctrl-C ends it at once.",
        a(0),
        a(1),
        a(0),
        a(1),
        a(1),
        a(2),
        a(2)
    );
    let mut lines = std::io::stdin().lock().lines();
    if matches!(lines.next(), Some(Ok(_))) {
        nodes[0].stop();
        println!("node1 stopped. Press Enter (or Ctrl-D) to stop the others.");
        let _ = lines.next();
    }
    for n in &mut nodes {
        n.stop();
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    let mut kind = ManagerKind::Delta;
    let mut serve_mode = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--serve" => serve_mode = true,
            "--manager" => match args.next().as_deref() {
                Some("delta") => kind = ManagerKind::Delta,
                Some("backup") => kind = ManagerKind::Backup,
                other => {
                    eprintln!("--manager {other:?}: delta or backup");
                    return ExitCode::from(2);
                }
            },
            other => {
                eprintln!(
                    "unknown flag {other}\nusage: cluster_demo [--serve] [--manager delta|backup]"
                );
                return ExitCode::from(2);
            }
        }
    }
    println!(
        "Starting three nodes on 127.0.0.1 with the {} (the log on stderr shows the membership lines)",
        match kind {
            ManagerKind::Delta => "DeltaManager",
            ManagerKind::Backup => "BackupManager",
        }
    );
    let nodes = match start_cluster(kind, serve_mode) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("cluster_demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    if serve_mode {
        serve(nodes);
        return ExitCode::SUCCESS;
    }
    if scenario(nodes) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
