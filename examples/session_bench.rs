//! Session replication throughput: N nodes on 127.0.0.1, each a `SimpleTcpCluster` with one
//! application; node 1 creates `--sessions` sessions, then runs `--updates` requests that each set
//! one attribute of `--attr-size` bytes on one of them (round robin).
//!
//!     cargo run --release --example session_bench -- --nodes 3 --sessions 1000 --updates 200000 --attr-size 1024
//!
//! Prints one line:
//! `session manager=M nodes=N updates_per_s=X p50_us=A p99_us=B replicated_bytes=Z
//! frames_per_update=F bytes_per_update=B options=O`
//! where updates_per_s counts updates applied on every replica (all other nodes with the
//! DeltaManager, the session's backups with the BackupManager; from the first update to the
//! moment the last replica applied the last one, counted by a session listener on each node),
//! p50/p99 are the request-end (`finish`) latencies on node 1, and replicated_bytes,
//! frames_per_update and bytes_per_update are what node 1's sender wrote for the updates.
//! Flags: `--nodes N --sessions S --updates U --attr-size BYTES --manager delta|backup
//! --backups K --options async|sync-ack` (default options: async for delta, Tomcat's
//! channelSendOptions 8; sync-ack for backup, Tomcat's mapSendOptions 6).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tribecast::session::AttributeChange;
use tribecast::{
    ChannelConfig, ClusterConfig, ManagerKind, SendOptions, SessionEvent, SimpleTcpCluster,
    StaticMember,
};

const RUN_LIMIT: Duration = Duration::from_secs(300);

/// Session replication throughput: N nodes in this process on 127.0.0.1, one application;
/// node 1 creates the sessions, then runs requests that each set one attribute of one of them
/// (round robin), replicated to the others.
#[derive(clap::Parser)]
#[command(name = "session_bench", version, args_override_self = true)]
struct Args {
    /// Cluster nodes (at least 2).
    #[arg(long, value_name = "N", default_value_t = 3)]
    nodes: usize,
    /// Sessions node 1 creates (at least 1).
    #[arg(long, value_name = "S", default_value_t = 1000)]
    sessions: usize,
    /// Requests, each setting one attribute.
    #[arg(long, value_name = "U", default_value_t = 100_000)]
    updates: u64,
    /// Bytes of each attribute value.
    #[arg(long, value_name = "BYTES", default_value_t = 1024)]
    attr_size: usize,
    /// Session manager: delta (every change to every member) or backup (primary + backups).
    #[arg(long, default_value = "delta", value_parser = ["delta", "backup"])]
    manager: String,
    #[arg(skip)]
    backup: bool,
    /// Backup copies per session (backup manager).
    #[arg(long, value_name = "K", default_value_t = 1)]
    backups: usize,
    /// How changes are sent: async or sync-ack (default: async for delta, sync-ack for
    /// backup, as Tomcat's defaults).
    #[arg(long, value_parser = ["async", "sync-ack"])]
    options: Option<String>,
    #[arg(skip)]
    send_options: Option<SendOptions>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = <Args as clap::Parser>::parse();
    a.backup = a.manager == "backup";
    a.send_options = match a.options.as_deref() {
        Some("sync-ack") => Some(SendOptions::SYNC_ACK),
        Some(_) => Some(SendOptions::ASYNCHRONOUS),
        None => None,
    };
    if a.nodes < 2 || a.sessions == 0 {
        return Err("--nodes must be >= 2 and --sessions >= 1".into());
    }
    Ok(a)
}

fn wait(what: &str, start: Instant, mut cond: impl FnMut() -> bool) -> Result<(), String> {
    while !cond() {
        if start.elapsed() > RUN_LIMIT {
            return Err(format!("timed out waiting for {what}"));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(())
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    if let Err(e) = run() {
        eprintln!("session_bench: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let a = parse_args()?;
    let default = if a.backup {
        SendOptions::SYNC_ACK
    } else {
        SendOptions::ASYNCHRONOUS
    };
    let options = a.send_options.unwrap_or(default);
    let kind = if a.backup {
        ManagerKind::Backup
    } else {
        ManagerKind::Delta
    };
    let mut nodes: Vec<SimpleTcpCluster> = Vec::new();
    let mut applied: Vec<Arc<AtomicU64>> = Vec::new();
    for i in 0..a.nodes {
        let mut channel = ChannelConfig::loopback(&format!("n{i}"));
        channel.cluster_name = "session-bench".into();
        channel.static_members = nodes
            .iter()
            .filter_map(|n| n.channel().local_member())
            .map(|m| StaticMember::new(m.addr))
            .collect();
        let mut cfg = ClusterConfig::default();
        cfg.channel = channel;
        cfg.jvm_route = format!("n{i}");
        cfg.channel_send_options = options;
        cfg.manager.kind = kind;
        cfg.manager.backups = a.backups;
        cfg.manager.map_send_options = options;
        let c = SimpleTcpCluster::new(cfg).map_err(|e| e.to_string())?;
        let m = c.add_application("/bench");
        let count = Arc::new(AtomicU64::new(0));
        let k = count.clone();
        m.add_listener(Arc::new(move |_: &str, e: &SessionEvent| {
            if matches!(
                e,
                SessionEvent::Attribute {
                    change: AttributeChange::Replaced,
                    ..
                }
            ) {
                k.fetch_add(1, Ordering::Relaxed);
            }
        }));
        c.start().map_err(|e| e.to_string())?;
        nodes.push(c);
        applied.push(count);
    }
    let start = Instant::now();
    for n in &nodes {
        wait("membership", start, || {
            n.channel().members().len() == a.nodes - 1
        })?;
    }
    let primary = nodes[0].manager("/bench").ok_or("no app")?;
    // A string attribute (what user records and the like serialize to): postcard writes it as
    // its length and bytes.
    let value = "x".repeat(a.attr_size.max(16));
    let mut ids = Vec::with_capacity(a.sessions);
    for _ in 0..a.sessions {
        let mut req = primary.request(None, "/bench/login");
        req.session_or_create()
            .map_err(|e| e.to_string())?
            .set("v", &value)
            .map_err(|e| e.to_string())?;
        ids.push(req.session_id().ok_or("no id")?.to_string());
        req.finish().map_err(|e| e.to_string())?;
    }
    // Every session has its copies: on every other node (delta) or on its backups (backup).
    let replicas = if a.backup {
        a.backups.min(a.nodes - 1)
    } else {
        a.nodes - 1
    };
    let held = |nodes: &[SimpleTcpCluster]| -> usize {
        nodes[1..]
            .iter()
            .filter_map(|n| n.manager("/bench"))
            .map(|m| m.session_count())
            .sum()
    };
    wait("sessions replicated", start, || {
        held(&nodes) == a.sessions * replicas
    })?;
    let sender = |f: fn(&tribecast::transport::sender::SenderStats) -> u64| {
        nodes[0].channel().with_sender_stats(f).unwrap_or(0)
    };
    let bytes_before = sender(|s| s.bytes_sent.load(Ordering::Relaxed));
    let frames_before = sender(|s| s.messages_sent.load(Ordering::Relaxed));
    let mut lat = Vec::with_capacity(a.updates as usize);
    let mut v = value.clone().into_bytes();
    let t0 = Instant::now();
    for u in 0..a.updates {
        // The update's number in a fixed 16-digit field, so the size stays the same.
        v[..16].copy_from_slice(format!("{u:016x}").as_bytes());
        let text = std::str::from_utf8(&v).map_err(|e| e.to_string())?;
        let t = Instant::now();
        let mut req = primary.request(
            Some(&ids[(u % a.sessions as u64) as usize]),
            "/bench/update",
        );
        req.session()
            .ok_or("session gone")?
            .set("v", text)
            .map_err(|e| e.to_string())?;
        req.finish().map_err(|e| e.to_string())?;
        lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
        if u % 1024 == 0 && t0.elapsed() > RUN_LIMIT {
            return Err("updates took too long".into());
        }
    }
    let total = |applied: &[Arc<AtomicU64>]| -> u64 {
        applied[1..].iter().map(|c| c.load(Ordering::Relaxed)).sum()
    };
    wait("updates applied", start, || {
        total(&applied) >= a.updates * replicas as u64
    })?;
    let secs = t0.elapsed().as_secs_f64();
    let bytes = sender(|s| s.bytes_sent.load(Ordering::Relaxed)) - bytes_before;
    let frames = sender(|s| s.messages_sent.load(Ordering::Relaxed)) - frames_before;
    // Spot check: every replica ends with the last value of a session.
    let last = a.updates - 1;
    let id = &ids[(last % a.sessions as u64) as usize];
    for s in nodes[1..]
        .iter()
        .filter_map(|n| n.manager("/bench").and_then(|m| m.find(id)))
    {
        let got: String = s
            .get("v")
            .map_err(|e| e.to_string())?
            .ok_or("attribute missing")?;
        if got.get(..16) != Some(format!("{last:016x}").as_str()) {
            return Err("a replica holds a stale value".into());
        }
    }
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len().saturating_sub(1)) as f64 * p).round() as usize)
            .copied()
            .unwrap_or(0)
    };
    println!(
        "session manager={} nodes={} updates_per_s={:.0} p50_us={} p99_us={} replicated_bytes={bytes} frames_per_update={:.2} bytes_per_update={:.0} options={}",
        if a.backup { "backup" } else { "delta" },
        a.nodes,
        a.updates as f64 / secs,
        pct(0.5),
        pct(0.99),
        frames as f64 / a.updates as f64,
        bytes as f64 / a.updates as f64,
        if options.wants_sync_ack() { "sync-ack" } else { "async" },
    );
    for n in &nodes {
        n.stop();
    }
    Ok(())
}
