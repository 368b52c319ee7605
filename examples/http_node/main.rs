//! One cluster node per process: tribecast embedded in a small synchronous HTTP/1.1 server,
//! serving the demo application at `/app`: a page for a person at `/app/` (log in, profile,
//! counter, log out, the node that answered and the members it sees), the JSON endpoints it
//! calls (`/app/login`, `/app/profile`, `/app/counter`, `/app/logout`, `/app/health`),
//! Prometheus metrics at `/app/metrics` and static files under `/app/static/`.
//!
//!     cargo run --release --example http_node -- --name node1 --http 127.0.0.1:8081 \
//!         --receiver 127.0.0.1:4001 --member 127.0.0.1:4002 --member 127.0.0.1:4003
//!
//! `--help` describes every flag; `--flag value` and `--flag=value` are both accepted. Flags
//! override the config file. Once serving it prints one line on stdout:
//! `http_node node1 listening on http://127.0.0.1:8081 (cluster receiver 127.0.0.1:4001)`.
//! The log (stderr, `RUST_LOG`, default info) carries the membership lines
//! (`Added member [...]`, `Member disappeared [...]`).
//!
//! SIGTERM and SIGINT stop it cleanly: the HTTP server stops accepting and answers the
//! requests it has (at most 2 s), then the node leaves the cluster, so the other members log
//! `Member disappeared [...]` at once and keep the sessions. A second signal during the stop
//! ends the process at once. `/app/health` answers 503 until the session manager is ready (the
//! state transfer from an existing member done), 200 after.

mod app;
mod http;

use app::{Node, NodeOptions, REFERENCE_VALVE_FILTER};
use clap::{Parser, ValueEnum};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;
use tribecast::{
    ClusterConfig, ManagerKind, McastConfig, NodeConfig, RebindRoute, SendOptions, StaticMember,
};

/// One tribecast cluster node serving the demo application over HTTP.
#[derive(Parser, Debug)]
#[command(name = "http_node", version, after_help = AFTER_HELP, args_override_self = true)]
struct Args {
    /// A TOML file with the node's settings (the layout of examples/config/server1.toml);
    /// the flags below override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The node's name: its jvmRoute, the suffix of its session ids (default node1).
    #[arg(long)]
    name: Option<String>,
    /// HTTP address to serve on; port 0 lets the OS choose (default 127.0.0.1:8080).
    #[arg(long, value_name = "IP:PORT")]
    http: Option<SocketAddr>,
    /// Cluster receiver address (Tomcat's NioReceiver address and port); port 0 lets the OS
    /// choose.
    #[arg(long, value_name = "IP:PORT")]
    receiver: Option<SocketAddr>,
    /// A static member's receiver address; repeat for each. Replaces the file's static members.
    #[arg(long = "member", value_name = "IP:PORT")]
    members: Vec<SocketAddr>,
    /// None of the config file's static members (a first node on OS-chosen ports).
    #[arg(long)]
    no_members: bool,
    /// Discover members by multicast heartbeats (Tomcat's McastService defaults). Only inside
    /// a private network namespace: never on a real interface.
    #[arg(long)]
    multicast: bool,
    /// Session manager: delta (every change to every member) or backup (one primary, one
    /// backup).
    #[arg(long, value_enum)]
    manager: Option<Manager>,
    /// Tomcat's JvmRouteBinderValve: whether a session whose node is gone is renamed to this
    /// node's route (and the new cookie sent). Default: the config file's `rebind_route`
    /// (when_route_gone in examples/config), when_route_gone without a file.
    #[arg(long, value_enum, value_name = "WHEN")]
    rebind_route: Option<Rebind>,
    /// Authenticate and encrypt all cluster traffic with the key in this file (see
    /// docs/SECURITY.md).
    #[arg(long, value_name = "FILE")]
    cluster_key_file: Option<PathBuf>,
    /// How session changes are sent: a number like 6 (synchronized ack: a request ends once the
    /// members applied its change) or 8 (asynchronous), or names like use_ack,sync. Sets the
    /// DeltaManager's channel_send_options and the BackupManager's map_send_options.
    #[arg(long, value_name = "OPTS", value_parser = parse_send_options)]
    send_options: Option<SendOptions>,
    /// A login, logout or counter request whose change was not applied by every member answers
    /// 503, not 200 (with --send-options 6 a 200 then means every member has the change).
    #[arg(long)]
    strict_replication: bool,
    /// Directory of the page (index.html) and the files under /app/static/.
    #[arg(long = "static", value_name = "DIR",
          default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/static"))]
    static_dir: PathBuf,
    /// HTTP worker threads: they run complete requests only; reading and writing is one event
    /// loop, so slow or idle clients hold no worker.
    #[arg(long, value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    http_threads: u16,
    /// HTTP connections open at once; one more is answered 503 and closed.
    #[arg(long, value_name = "N", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=65_536))]
    http_max_connections: u32,
    /// The most sessions this node holds (its own and the other members' copies) before it
    /// refuses a new one with 503: Tomcat's maxActiveSessions; -1 for no bound (default
    /// 10,000, or the config file's max_active_sessions).
    #[arg(long, value_name = "N", value_parser = parse_bound, allow_hyphen_values = true)]
    max_active_sessions: Option<Bound>,
    /// Sessions made at start, for footprint measurements.
    #[arg(long, value_name = "N", default_value_t = 0)]
    preload: usize,
    /// Bytes of data in each preloaded session.
    #[arg(long, value_name = "BYTES", default_value_t = 1024)]
    preload_size: usize,
    /// Also stop cleanly when stdin closes (for a parent process that cannot send signals).
    #[arg(long)]
    stop_on_stdin_eof: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Manager {
    /// DeltaManager: every change to every member, full state transfer to a joining member.
    Delta,
    /// BackupManager: one primary and one backup per session.
    Backup,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
#[value(rename_all = "snake_case")]
enum Rebind {
    /// Never rename a session (the library's default).
    Never,
    /// Rename a session whose node is no longer a member.
    WhenRouteGone,
    /// Rename every session served here whose route is another node's.
    Always,
}

const AFTER_HELP: &str = "\
Endpoints: /app/ (the page), /app/login (POST user, pass), /app/profile, /app/counter, \
/app/logout (POST), /app/health (200 when ready, 503 before), /app/metrics, /app/static/FILE.
Signals: SIGTERM or SIGINT stop the node cleanly (the other members log `Member disappeared` \
at once); a second one ends it at once.
Log: stderr, filtered by RUST_LOG (default info).";

/// A bound from the command line: `-1` for none.
#[derive(Clone, Copy, Debug)]
struct Bound(Option<usize>);

fn parse_bound(v: &str) -> Result<Bound, String> {
    match v.trim().parse::<i64>() {
        Ok(-1) => Ok(Bound(None)),
        Ok(n) if n > 0 => usize::try_from(n)
            .map(|n| Bound(Some(n)))
            .map_err(|e| e.to_string()),
        _ => Err("a positive integer, or -1 for no bound".into()),
    }
}

fn parse_send_options(v: &str) -> Result<SendOptions, String> {
    SendOptions::parse(v)
        .map_err(|e| format!("{e} (a number like 6 or 8, or names like use_ack,sync)"))
}

/// The node's settings: the file's (or the defaults), then the flags over them.
fn node_options(a: &Args, started: Instant) -> Result<NodeOptions, String> {
    let (mut http, context, mut cluster) = match &a.config {
        Some(path) => load_config(path)?,
        None => {
            let mut c = ClusterConfig::default();
            c.valve_filter = REFERENCE_VALVE_FILTER.into();
            c.jvm_route = "node1".into();
            // The reference server.xml's NioReceiver maxThreads.
            c.channel.receiver.max_threads = 6;
            // The demo rebinds, as examples/config/server*.toml do (the library does not:
            // an application must send `set_cookie()` with every response for it).
            c.manager.rebind_route = RebindRoute::WhenRouteGone;
            (None, "/app".to_string(), c)
        }
    };
    if let Some(name) = &a.name {
        cluster.jvm_route = name.clone();
    }
    cluster.channel.local_name = cluster.jvm_route.clone();
    if let Some(h) = a.http {
        http = Some(h);
    }
    if let Some(r) = a.receiver {
        cluster.channel.receiver.address = r.ip();
        cluster.channel.receiver.port = r.port();
        if r.port() == 0 {
            cluster.channel.receiver.auto_bind = 1;
        }
    }
    if !a.members.is_empty() || a.no_members {
        cluster.channel.static_members = a
            .members
            .iter()
            .map(|&addr| StaticMember::new(addr))
            .collect();
    }
    if a.multicast && cluster.channel.membership.mcast.is_none() {
        cluster.channel.membership.mcast = Some(McastConfig::default());
    }
    if let Some(kind) = a.manager {
        cluster.manager.kind = match kind {
            Manager::Delta => ManagerKind::Delta,
            Manager::Backup => ManagerKind::Backup,
        };
    }
    if let Some(r) = a.rebind_route {
        cluster.manager.rebind_route = match r {
            Rebind::Never => RebindRoute::Never,
            Rebind::WhenRouteGone => RebindRoute::WhenRouteGone,
            Rebind::Always => RebindRoute::Always,
        };
    }
    if let Some(path) = &a.cluster_key_file {
        let key = tribecast::ClusterKey::from_file(path)
            .map_err(|e| format!("--cluster-key-file {}: {e}", path.display()))?;
        cluster.channel.cluster_key = Some(key);
    }
    if let Some(Bound(n)) = a.max_active_sessions {
        cluster.manager.max_active_sessions = n;
    }
    if let Some(o) = a.send_options {
        // Each manager reads its own: the DeltaManager `channel_send_options`, the
        // BackupManager `map_send_options`.
        cluster.channel_send_options = o;
        cluster.manager.map_send_options = o;
    }
    Ok(NodeOptions {
        http: http.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
        http_threads: usize::from(a.http_threads),
        http_max_connections: a.http_max_connections as usize,
        context,
        cluster,
        static_dir: a.static_dir.clone(),
        started,
        strict_replication: a.strict_replication,
    })
}

/// (HTTP address, context, cluster) from a TOML file (`tribecast::NodeConfig`, the layout of
/// `examples/config/server1.toml`).
fn load_config(
    path: &std::path::Path,
) -> Result<(Option<SocketAddr>, String, ClusterConfig), String> {
    let c = NodeConfig::from_file(path).map_err(|e| format!("--config {}: {e}", path.display()))?;
    Ok((c.http, c.context, c.cluster))
}

fn main() -> ExitCode {
    let started = Instant::now();
    // `--help` and `--version` print and exit 0; a bad flag prints why and exits 2.
    let args = Args::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    let opts = match node_options(&args, started) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("http_node: {e}");
            return ExitCode::from(2);
        }
    };
    // Registered before the node starts: a signal from then on is a clean stop.
    let mut signals = match stop_signals() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("http_node: cannot handle SIGTERM and SIGINT: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut node = match Node::start(opts) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("http_node: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.preload > 0 {
        let t = Instant::now();
        if let Err(e) = node.preload(args.preload, args.preload_size) {
            log::warn!("preload: not every session replicated: {e}");
        }
        log::info!(
            "Preloaded {} session(s) of {} bytes in {} ms",
            args.preload,
            args.preload_size,
            t.elapsed().as_millis()
        );
    }
    let http = node.http_addr().map_or("?".into(), |a| a.to_string());
    let rx = node.receiver_addr().map_or("?".into(), |a| a.to_string());
    {
        let mut out = std::io::stdout().lock();
        // A parent that stopped reading is no reason to stop serving.
        let _ = writeln!(
            out,
            "http_node {} listening on http://{http} (cluster receiver {rx})",
            node.name
        );
        let _ = out.flush();
    }
    let handle = signals.handle();
    if args.stop_on_stdin_eof {
        let spawned = std::thread::Builder::new()
            .name("stdin-eof".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                let mut sink = [0u8; 256];
                let mut stdin = std::io::stdin().lock();
                while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
                log::info!("stdin closed: stopping");
                // Ends the wait for a signal below.
                handle.close();
            });
        if let Err(e) = spawned {
            log::warn!("--stop-on-stdin-eof: cannot watch stdin: {e}");
        }
    }
    // Waits for SIGTERM or SIGINT (or the stdin watcher's close).
    if let Some(sig) = signals.forever().next() {
        let name = if sig == SIGTERM { "SIGTERM" } else { "SIGINT" };
        log::info!("{name} received: stopping");
    }
    node.stop();
    log::info!("Node stopped");
    ExitCode::SUCCESS
}

/// SIGTERM and SIGINT, delivered to the iterator; a second one (while the first one's clean
/// stop runs) ends the process at once with status 1.
fn stop_signals() -> std::io::Result<Signals> {
    let signalled = Arc::new(AtomicBool::new(false));
    for sig in [SIGTERM, SIGINT] {
        // In this order: the exit checks the flag before the first signal sets it.
        signal_hook::flag::register_conditional_shutdown(sig, 1, signalled.clone())?;
        signal_hook::flag::register(sig, signalled.clone())?;
    }
    Signals::new([SIGTERM, SIGINT])
}
