//! Channel throughput and latency: one sender channel and R receiver channels on 127.0.0.1.
//!
//!     cargo run --release --example channel_bench -- --size 1024 --count 200000 --receivers 2 --mode async
//!
//! Prints one line:
//! `channel mode=M size=S receivers=R count=N msgs_per_s=X mb_per_s=Y p50_us=A p99_us=B`
//! where msgs_per_s counts messages delivered to each receiver (first send to last delivery) and
//! the latencies are those of the send call (ack modes: until every receiver acked; async: one
//! send in 64 is timed, timing each would cost more than the send). Every receiver checks each
//! message's bytes and, where the mode promises it, per-sender-thread order.
//!
//! `--mode raw-ack` is the floor to compare sync-ack with, measured in the same conditions: no
//! tribecast, one blocking TCP connection per receiver thread, the sender writes the message to
//! every receiver and waits for an 8-byte answer from each.
//!
//! Flags: `--size BYTES --count N --receivers R --mode async|ack|sync-ack|raw-ack`, `--threads T`
//! (T application threads share the sender channel, as request threads of a server do; default
//! 1; `threads=T` is then added to the line), `--spawn` (each receiver in a process of its own,
//! this example re-run with `--role receiver`, as separate servers would), `--key` (every
//! channel shares a cluster key: all traffic sealed with AES-256-GCM; `key=on` is then added to
//! the line).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tribecast::{ChannelConfig, ChannelMessage, GroupChannel, SendOptions, StaticMember};

/// No run may take longer than this.
const RUN_LIMIT: Duration = Duration::from_secs(300);
/// A message's tag: sending thread in the high bits, its sequence number in the low ones.
const SEQ_BITS: u32 = 40;

/// Channel throughput and latency: one sender channel and R receiver channels on 127.0.0.1.
/// Prints one line: `channel mode=M size=S receivers=R count=N msgs_per_s=X mb_per_s=Y
/// p50_us=A p99_us=B`.
#[derive(Clone, clap::Parser)]
#[command(name = "channel_bench", version, args_override_self = true)]
struct Args {
    /// Bytes per message (at least 8: the message tag).
    #[arg(long, value_name = "BYTES", default_value_t = 1024)]
    size: usize,
    /// Messages sent in all.
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    count: u64,
    /// Receiver channels, each a member the sender sends every message to.
    #[arg(long, value_name = "R", default_value_t = 2)]
    receivers: usize,
    /// Application threads sharing the sender channel, as request threads of a server do
    /// (`threads=T` is then added to the line).
    #[arg(long, value_name = "T", default_value_t = 1)]
    threads: u64,
    /// How messages are sent: async, ack (use-ack), sync-ack (synchronized ack), or raw-ack
    /// (the floor: no tribecast, blocking TCP and an 8-byte answer per receiver).
    #[arg(long, default_value = "async",
          value_parser = ["async", "ack", "sync-ack", "raw-ack"])]
    mode: String,
    /// Each receiver in a process of its own (this program re-run with `--role receiver`), as
    /// separate servers would.
    #[arg(long)]
    spawn: bool,
    /// Every channel shares a cluster key: all traffic sealed with AES-256-GCM (`key=on` is
    /// then added to the line).
    #[arg(long)]
    key: bool,
    /// Internal: `receiver` when run by `--spawn` as one receiver process.
    #[arg(long, hide = true, value_name = "ROLE")]
    role: Option<String>,
    #[arg(skip)]
    role_receiver: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = <Args as clap::Parser>::parse();
    a.role_receiver = a.role.as_deref() == Some("receiver");
    if a.size < 8 {
        return Err("--size must be at least 8 (the message tag)".into());
    }
    if a.receivers == 0 || a.threads == 0 || a.threads > 1024 {
        return Err("--receivers must be >= 1 and --threads 1..=1024".into());
    }
    Ok(a)
}

fn options(mode: &str) -> Result<SendOptions, String> {
    match mode {
        "async" => Ok(SendOptions::ASYNCHRONOUS),
        "ack" => Ok(SendOptions::USE_ACK),
        "sync-ack" => Ok(SendOptions::SYNC_ACK),
        m => Err(format!("unknown mode {m} (async|ack|sync-ack)")),
    }
}

/// Payload of a message: its tag, then a byte pattern derived from it.
fn fill(buf: &mut [u8], tag: u64) {
    buf[..8].copy_from_slice(&tag.to_le_bytes());
    buf[8..].fill((tag % 251) as u8);
}

/// Counts and checks what one receiver gets.
struct Checker {
    size: usize,
    total: u64,
    /// Next sequence number expected from each sending thread.
    next: Vec<AtomicU64>,
    /// Whether the mode promises per-thread order: asynchronous sends share one ordered lane,
    /// a synchronized ack returns after processing; a use-ack returns once the frame is read,
    /// so two sends of one thread on two pooled connections may be processed in either order.
    ordered: bool,
    received: AtomicU64,
    errors: AtomicU64,
    done_at: parking_lot::Mutex<Option<Instant>>,
}

impl Checker {
    fn new(a: &Args) -> Arc<Checker> {
        Arc::new(Checker {
            size: a.size,
            total: a.count,
            next: (0..a.threads).map(|_| AtomicU64::new(0)).collect(),
            ordered: a.threads == 1 || a.mode != "ack",
            received: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            done_at: Default::default(),
        })
    }

    fn check(&self, msg: &ChannelMessage<'_>) -> Result<(), String> {
        let p = &msg.payload;
        let tag = p.get(..8).map_or(u64::MAX, |b| {
            u64::from_le_bytes(b.try_into().unwrap_or_default())
        });
        let (thread, seq) = ((tag >> SEQ_BITS) as usize, tag & ((1 << SEQ_BITS) - 1));
        // A fold, not `all`: no early exit, so it vectorises and the check stays cheap.
        let mut ok = p.len() == self.size
            && thread < self.next.len()
            && p[8..]
                .iter()
                .fold(0u8, |acc, &b| acc | (b ^ (tag % 251) as u8))
                == 0;
        if ok && self.ordered {
            ok = self.next[thread].swap(seq + 1, Ordering::Relaxed) == seq;
        }
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        if self.received.fetch_add(1, Ordering::Relaxed) + 1 == self.total {
            *self.done_at.lock() = Some(Instant::now());
        }
        Ok(())
    }
}

/// The benchmark's cluster key: a fixed, public value; only the cost of sealing is measured.
const BENCH_KEY: &str = "62656e63682d6b65792d6e6f742d7365637265742d30313233343536373839ab";

fn bench_config(name: &str, a: &Args) -> ChannelConfig {
    let mut cfg = ChannelConfig::loopback(name);
    cfg.cluster_name = "channel-bench".into();
    if a.key {
        cfg.cluster_key = tribecast::ClusterKey::parse(BENCH_KEY).ok();
    }
    cfg
}

fn receiver(name: &str, a: &Args) -> Result<(GroupChannel, Arc<Checker>), String> {
    let ch = GroupChannel::new(bench_config(name, a)).map_err(|e| e.to_string())?;
    let checker = Checker::new(a);
    let c = checker.clone();
    ch.add_channel_listener(Arc::new(move |m: &ChannelMessage<'_>| c.check(m)));
    ch.start().map_err(|e| e.to_string())?;
    Ok((ch, checker))
}

/// `--role receiver`: print our address, count until done, print the result.
fn run_receiver(a: &Args) -> Result<(), String> {
    let (ch, checker) = receiver("receiver", a)?;
    println!("listening {}", ch.local_member().ok_or("not running")?.addr);
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    let deadline = Instant::now() + RUN_LIMIT;
    while checker.done_at.lock().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let got = checker.received.load(Ordering::Relaxed);
    println!(
        "received {got} errors {}",
        checker.errors.load(Ordering::Relaxed)
    );
    ch.stop();
    Ok(())
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    if let Err(e) = run() {
        eprintln!("channel_bench: {e}");
        std::process::exit(1);
    }
}

/// One sending thread's share: returns the send latencies it measured, in µs.
fn send_share(
    sender: &GroupChannel,
    a: &Args,
    opts: SendOptions,
    thread: u64,
    start: Instant,
) -> Result<Vec<u32>, String> {
    let n = a.count / a.threads + u64::from(thread < a.count % a.threads);
    let mut lat = Vec::with_capacity(n as usize);
    let mut buf = vec![0u8; a.size];
    for seq in 0..n {
        fill(&mut buf, (thread << SEQ_BITS) | seq);
        let timed = !opts.is_async() || seq % 64 == 0;
        let t = timed.then(Instant::now);
        sender
            .send_to_all(buf.clone(), opts)
            .map_err(|e| format!("send {seq}: {e}"))?;
        if let Some(t) = t {
            lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
        }
        if seq % 1024 == 0 && start.elapsed() > RUN_LIMIT {
            return Err(format!("sending took longer than {RUN_LIMIT:?}"));
        }
    }
    Ok(lat)
}

/// `--mode raw-ack`: plain sockets, no tribecast; prints the same line.
fn run_raw(a: &Args) -> Result<(), String> {
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
    let mut conns = Vec::new();
    let mut echoes = Vec::new();
    for _ in 0..a.receivers {
        let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let c = TcpStream::connect(l.local_addr().map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        c.set_nodelay(true).map_err(|e| e.to_string())?;
        let (mut s, _) = l.accept().map_err(|e| e.to_string())?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        let (size, count) = (a.size, a.count);
        echoes.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; size];
            for _ in 0..count {
                if s.read_exact(&mut buf).is_err() || s.write_all(&buf[..8]).is_err() {
                    return;
                }
            }
        }));
        conns.push(c);
    }
    let mut buf = vec![0u8; a.size];
    let mut ack = [0u8; 8];
    let mut lat = Vec::with_capacity(a.count as usize);
    let start = Instant::now();
    for seq in 0..a.count {
        fill(&mut buf, seq);
        let t = Instant::now();
        for c in &mut conns {
            c.write_all(&buf).map_err(|e| e.to_string())?;
        }
        for c in &mut conns {
            c.read_exact(&mut ack).map_err(|e| e.to_string())?;
        }
        lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
    }
    let secs = start.elapsed().as_secs_f64();
    for e in echoes {
        let _ = e.join();
    }
    lat.sort_unstable();
    let rate = a.count as f64 / secs;
    println!(
        "channel mode=raw-ack size={} receivers={} count={} msgs_per_s={rate:.0} mb_per_s={:.1} p50_us={} p99_us={}",
        a.size,
        a.receivers,
        a.count,
        rate * a.size as f64 / 1e6,
        percentile(&lat, 0.50),
        percentile(&lat, 0.99)
    );
    Ok(())
}

fn run() -> Result<(), String> {
    let a = parse_args()?;
    if a.mode == "raw-ack" {
        return run_raw(&a);
    }
    let opts = options(&a.mode)?;
    if a.role_receiver {
        return run_receiver(&a);
    }
    // Receivers: channels in this process, or child processes.
    let mut local = Vec::new();
    let mut children: Vec<(Child, BufReader<std::process::ChildStdout>)> = Vec::new();
    let mut addrs = Vec::new();
    for i in 0..a.receivers {
        if a.spawn {
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            let mut child = Command::new(exe)
                .args(["--role", "receiver", "--mode", &a.mode])
                .args([
                    "--size",
                    &a.size.to_string(),
                    "--count",
                    &a.count.to_string(),
                ])
                .args(["--threads", &a.threads.to_string()])
                .args(a.key.then_some("--key"))
                .stdout(Stdio::piped())
                .spawn()
                .map_err(|e| format!("spawn receiver: {e}"))?;
            let mut out = BufReader::new(child.stdout.take().ok_or("no stdout")?);
            let mut line = String::new();
            out.read_line(&mut line).map_err(|e| e.to_string())?;
            let addr = line
                .trim()
                .strip_prefix("listening ")
                .ok_or(format!("bad receiver line {line:?}"))?;
            addrs.push(addr.parse().map_err(|e| format!("{e}"))?);
            children.push((child, out));
        } else {
            let (ch, checker) = receiver(&format!("receiver-{i}"), &a)?;
            addrs.push(ch.local_member().ok_or("not running")?.addr);
            local.push((ch, checker));
        }
    }
    let mut cfg = bench_config("sender", &a);
    cfg.static_members = addrs.iter().map(|&addr| StaticMember::new(addr)).collect();
    let sender = GroupChannel::new(cfg).map_err(|e| e.to_string())?;
    sender.start().map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while sender.members().len() < a.receivers {
        if Instant::now() > deadline {
            return Err("receivers not seen within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }

    let start = Instant::now();
    let mut lat: Vec<u32> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..a.threads)
            .map(|t| {
                let (sender, a) = (&sender, &a);
                s.spawn(move || send_share(sender, a, opts, t, start))
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            all.extend(
                h.join()
                    .map_err(|_| "a sending thread panicked".to_string())??,
            );
        }
        Ok::<_, String>(all)
    })?;
    // Wait for every receiver to have everything.
    let mut errors = 0;
    let mut end = start;
    for (_, checker) in &local {
        while checker.done_at.lock().is_none() {
            if start.elapsed() > RUN_LIMIT {
                return Err(format!(
                    "a receiver got {} of {}",
                    checker.received.load(Ordering::Relaxed),
                    a.count
                ));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        end = end.max(checker.done_at.lock().unwrap_or(end));
        errors += checker.errors.load(Ordering::Relaxed);
    }
    for (child, out) in &mut children {
        let mut line = String::new();
        out.read_line(&mut line).map_err(|e| e.to_string())?;
        end = end.max(Instant::now());
        let words: Vec<&str> = line.split_whitespace().collect();
        let (got, errs) = match words.as_slice() {
            ["received", got, "errors", errs] => (got.parse::<u64>(), errs.parse::<u64>()),
            _ => return Err(format!("bad receiver line {line:?}")),
        };
        let (got, errs) = (
            got.map_err(|e| e.to_string())?,
            errs.map_err(|e| e.to_string())?,
        );
        if got != a.count {
            return Err(format!("a receiver got {got} of {}", a.count));
        }
        errors += errs;
        let _ = child.wait();
    }
    if errors > 0 {
        return Err(format!(
            "{errors} message(s) arrived corrupted or out of order"
        ));
    }
    let secs = (end - start).as_secs_f64();
    lat.sort_unstable();
    let rate = a.count as f64 / secs;
    let mut threads = if a.threads > 1 {
        format!(" threads={}", a.threads)
    } else {
        String::new()
    };
    if a.key {
        threads.push_str(" key=on");
    }
    println!(
        "channel mode={} size={} receivers={} count={}{threads} msgs_per_s={:.0} mb_per_s={:.1} p50_us={} p99_us={}",
        a.mode,
        a.size,
        a.receivers,
        a.count,
        rate,
        rate * a.size as f64 / 1e6,
        percentile(&lat, 0.50),
        percentile(&lat, 0.99)
    );
    sender.stop();
    for (ch, _) in &local {
        ch.stop();
    }
    Ok(())
}
