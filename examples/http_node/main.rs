//! One cluster node per process: tribecast embedded in a small synchronous HTTP/1.1 server,
//! serving the demo application at `/app` (login, profile, counter, health, Prometheus
//! metrics at `/app/metrics`, static files).
//!
//!     cargo run --release --example http_node -- --name node1 --http 127.0.0.1:8081 \
//!         --receiver 127.0.0.1:4001 --member 127.0.0.1:4002 --member 127.0.0.1:4003
//!
//! Flags: `--config FILE` (TOML), `--name NAME` (the jvmRoute), `--http ADDR`, `--receiver ADDR`,
//! `--member ADDR` (repeat; replaces the file's static members), `--no-members` (none of the
//! file's static members: a first node on OS-chosen ports), `--multicast` (discover members
//! by multicast: only inside a private network namespace), `--manager delta|backup`,
//! `--rebind-route never|when_route_gone|always` (Tomcat's JvmRouteBinderValve: a session whose
//! node is gone is renamed to this node's route and the new cookie sent; `when_route_gone` by
//! default),
//! `--cluster-key-file FILE` (authenticate and encrypt all cluster traffic with this key; see
//! docs/SECURITY.md),
//! `--send-options OPTS` (how session changes are sent: `channel_send_options` for the
//! DeltaManager and `map_send_options` for the BackupManager, e.g. `6` (synchronized ack: a
//! request ends once the members applied its change), `8` (asynchronous) or names like
//! `use_ack,sync`), `--strict-replication` (a login or counter request whose change was not
//! applied by every member answers 503, not 200: with `--send-options 6` a 200 then means the
//! change is on every member this node knows), `--static DIR`, `--http-threads N`, `--preload N` and `--preload-size BYTES` (sessions made at
//! start, for footprint measurements), `--stop-on-stdin-eof` (stop cleanly when stdin closes).
//! Flags override the file. Once serving it prints one line on stdout:
//! `http_node node1 listening on http://127.0.0.1:8081 (cluster receiver 127.0.0.1:4001)`.
//! The log (stderr, `RUST_LOG`, default info) carries the membership lines
//! (`Added member [...]`, `Member disappeared [...]`).

mod app;
mod http;

use app::{Node, NodeOptions, REFERENCE_VALVE_FILTER};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;
use tribecast::{
    ClusterConfig, ManagerKind, McastConfig, NodeConfig, RebindRoute, SendOptions, StaticMember,
};

struct Args {
    config: Option<PathBuf>,
    name: Option<String>,
    http: Option<SocketAddr>,
    receiver: Option<SocketAddr>,
    members: Vec<SocketAddr>,
    no_members: bool,
    multicast: bool,
    manager: Option<ManagerKind>,
    rebind_route: Option<RebindRoute>,
    cluster_key_file: Option<PathBuf>,
    send_options: Option<SendOptions>,
    strict_replication: bool,
    static_dir: PathBuf,
    http_threads: usize,
    preload: usize,
    preload_size: usize,
    stop_on_stdin_eof: bool,
}

const USAGE: &str =
    "usage: http_node [--config FILE] [--name NAME] [--http ADDR] [--receiver ADDR] \
[--member ADDR]... [--no-members] [--multicast] [--manager delta|backup] [--rebind-route never|when_route_gone|always] [--cluster-key-file FILE] [--send-options OPTS] [--strict-replication] [--static DIR] [--http-threads N] \
[--preload N] [--preload-size BYTES] [--stop-on-stdin-eof]";

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        config: None,
        name: None,
        http: None,
        receiver: None,
        members: Vec::new(),
        no_members: false,
        multicast: false,
        manager: None,
        rebind_route: None,
        cluster_key_file: None,
        send_options: None,
        strict_replication: false,
        static_dir: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/static")),
        http_threads: 4,
        preload: 0,
        preload_size: 1024,
        stop_on_stdin_eof: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let addr = |v: String| {
            v.parse::<SocketAddr>()
                .map_err(|e| format!("{flag} {v}: {e} (want IP:PORT)"))
        };
        let num = |v: String| v.parse::<usize>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--config" => a.config = Some(PathBuf::from(value()?)),
            "--name" => a.name = Some(value()?),
            "--http" => a.http = Some(addr(value()?)?),
            "--receiver" => a.receiver = Some(addr(value()?)?),
            "--member" => a.members.push(addr(value()?)?),
            "--no-members" => a.no_members = true,
            "--multicast" => a.multicast = true,
            "--cluster-key-file" => a.cluster_key_file = Some(PathBuf::from(value()?)),
            "--manager" => {
                a.manager = Some(match value()?.as_str() {
                    "delta" => ManagerKind::Delta,
                    "backup" => ManagerKind::Backup,
                    m => return Err(format!("--manager {m}: delta or backup")),
                })
            }
            "--rebind-route" => {
                a.rebind_route = Some(match value()?.as_str() {
                    "never" => RebindRoute::Never,
                    "when_route_gone" => RebindRoute::WhenRouteGone,
                    "always" => RebindRoute::Always,
                    r => {
                        return Err(format!(
                            "--rebind-route {r}: never, when_route_gone or always"
                        ))
                    }
                })
            }
            "--send-options" => {
                let v = value()?;
                a.send_options = Some(SendOptions::parse(&v).map_err(|e| {
                    format!("--send-options {v}: {e} (a number like 6 or 8, or names like use_ack,sync)")
                })?)
            }
            "--strict-replication" => a.strict_replication = true,
            "--static" => a.static_dir = PathBuf::from(value()?),
            "--http-threads" => a.http_threads = num(value()?)?.clamp(1, 256),
            "--preload" => a.preload = num(value()?)?,
            "--preload-size" => a.preload_size = num(value()?)?,
            "--stop-on-stdin-eof" => a.stop_on_stdin_eof = true,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown flag {other}\n{USAGE}")),
        }
    }
    Ok(a)
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
        cluster.manager.kind = kind;
    }
    if let Some(r) = a.rebind_route {
        cluster.manager.rebind_route = r;
    }
    if let Some(path) = &a.cluster_key_file {
        let key = tribecast::ClusterKey::from_file(path)
            .map_err(|e| format!("--cluster-key-file {}: {e}", path.display()))?;
        cluster.channel.cluster_key = Some(key);
    }
    if let Some(o) = a.send_options {
        // Each manager reads its own: the DeltaManager `channel_send_options`, the
        // BackupManager `map_send_options`.
        cluster.channel_send_options = o;
        cluster.manager.map_send_options = o;
    }
    Ok(NodeOptions {
        http: http.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
        http_threads: a.http_threads,
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
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let opts = match node_options(&args, started) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("http_node: {e}");
            return ExitCode::from(2);
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
    if args.stop_on_stdin_eof {
        // std has no signal handling without unsafe code: a parent closes our stdin instead.
        let mut sink = [0u8; 256];
        let mut stdin = std::io::stdin().lock();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        log::info!("stdin closed: stopping");
        node.stop();
        log::info!("Node stopped");
        return ExitCode::SUCCESS;
    }
    // SIGTERM and SIGINT end the process (their default action); the others keep the sessions.
    loop {
        std::thread::park();
    }
}
