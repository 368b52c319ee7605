//! Channel throughput and latency: one sender channel and R receiver channels on 127.0.0.1.
//!
//!     cargo run --release --example channel_bench -- --size 1024 --count 200000 --receivers 2 --mode async
//!
//! Prints one line:
//! `channel mode=M size=S receivers=R count=N msgs_per_s=X mb_per_s=Y p50_us=A p99_us=B`
//! where msgs_per_s counts messages delivered to each receiver (first send to last delivery) and
//! the latencies are those of the send call (for ack modes: until every receiver acked).
//! Every receiver checks each message's sequence number (per-sender order) and bytes.
//! With `--spawn` every receiver runs in a process of its own (this example re-run with
//! `--role receiver`), as separate servers would.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tribecast::{ChannelConfig, ChannelMessage, GroupChannel, SendOptions, StaticMember};

/// No run may take longer than this.
const RUN_LIMIT: Duration = Duration::from_secs(300);

struct Args {
    size: usize,
    count: u64,
    receivers: usize,
    mode: String,
    spawn: bool,
    role_receiver: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        size: 1024,
        count: 100_000,
        receivers: 2,
        mode: "async".into(),
        spawn: false,
        role_receiver: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match flag.as_str() {
            "--size" => {
                a.size = value("--size")?
                    .parse()
                    .map_err(|e| format!("--size: {e}"))?
            }
            "--count" => {
                a.count = value("--count")?
                    .parse()
                    .map_err(|e| format!("--count: {e}"))?
            }
            "--receivers" => {
                a.receivers = value("--receivers")?
                    .parse()
                    .map_err(|e| format!("--receivers: {e}"))?
            }
            "--mode" => a.mode = value("--mode")?,
            "--spawn" => a.spawn = true,
            "--role" => a.role_receiver = value("--role")? == "receiver",
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if a.size < 8 {
        return Err("--size must be at least 8 (the sequence number)".into());
    }
    if a.receivers == 0 {
        return Err("--receivers must be at least 1".into());
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

/// Payload of message `seq`: its number, then a byte pattern derived from it.
fn fill(buf: &mut [u8], seq: u64) {
    buf[..8].copy_from_slice(&seq.to_le_bytes());
    buf[8..].fill((seq % 251) as u8);
}

/// Counts and checks what one receiver gets.
struct Checker {
    size: usize,
    next: AtomicU64,
    errors: AtomicU64,
    done_at: parking_lot::Mutex<Option<Instant>>,
    count: u64,
}

impl Checker {
    fn new(size: usize, count: u64) -> Arc<Checker> {
        Arc::new(Checker {
            size,
            next: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            done_at: Default::default(),
            count,
        })
    }

    fn check(&self, msg: &ChannelMessage<'_>) -> Result<(), String> {
        let p = &msg.payload;
        let expected = self.next.load(Ordering::Relaxed);
        let ok = p.len() == self.size
            && u64::from_le_bytes(p[..8].try_into().unwrap_or_default()) == expected
            // A fold, not `all`: no early exit, so it vectorises and the check stays cheap.
            && p[8..].iter().fold(0u8, |acc, &b| acc | (b ^ (expected % 251) as u8)) == 0;
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        // One connection is drained by one worker at a time, so this is never raced.
        self.next.store(expected + 1, Ordering::Relaxed);
        if expected + 1 == self.count {
            *self.done_at.lock() = Some(Instant::now());
        }
        Ok(())
    }
}

fn receiver_config(name: &str) -> ChannelConfig {
    let mut cfg = ChannelConfig::loopback(name);
    cfg.cluster_name = "channel-bench".into();
    cfg
}

/// `--role receiver`: print our address, count until done, print the result.
fn run_receiver(a: &Args) -> Result<(), String> {
    let ch = GroupChannel::new(receiver_config("receiver")).map_err(|e| e.to_string())?;
    let checker = Checker::new(a.size, a.count);
    let c = checker.clone();
    ch.add_channel_listener(Arc::new(move |m: &ChannelMessage<'_>| c.check(m)));
    ch.start().map_err(|e| e.to_string())?;
    let addr = ch.local_member().ok_or("not running")?.addr;
    println!("listening {addr}");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    let deadline = Instant::now() + RUN_LIMIT;
    while checker.next.load(Ordering::Relaxed) < a.count && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    println!(
        "received {} errors {}",
        checker.next.load(Ordering::Relaxed),
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

fn run() -> Result<(), String> {
    let a = parse_args()?;
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
                .args([
                    "--role",
                    "receiver",
                    "--size",
                    &a.size.to_string(),
                    "--count",
                    &a.count.to_string(),
                ])
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
            let ch = GroupChannel::new(receiver_config(&format!("receiver-{i}")))
                .map_err(|e| e.to_string())?;
            let checker = Checker::new(a.size, a.count);
            let c = checker.clone();
            ch.add_channel_listener(Arc::new(move |m: &ChannelMessage<'_>| c.check(m)));
            ch.start().map_err(|e| e.to_string())?;
            addrs.push(ch.local_member().ok_or("not running")?.addr);
            local.push((ch, checker));
        }
    }
    let mut cfg = receiver_config("sender");
    cfg.static_members = addrs
        .iter()
        .map(|&addr| StaticMember {
            addr,
            unique_id: None,
        })
        .collect();
    let sender = GroupChannel::new(cfg).map_err(|e| e.to_string())?;
    sender.start().map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while sender.members().len() < a.receivers {
        if Instant::now() > deadline {
            return Err("receivers not seen within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }

    let mut lat = Vec::with_capacity(a.count as usize);
    let mut buf = vec![0u8; a.size];
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    for seq in 0..a.count {
        fill(&mut buf, seq);
        // Asynchronous sends take well under a microsecond: timing each one would cost more
        // than the send, so one in 64 is timed. Ack modes time every send.
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
    // Wait for every receiver to have everything.
    let mut errors = 0;
    let mut end = start;
    for (_, checker) in &local {
        while checker.done_at.lock().is_none() {
            if start.elapsed() > RUN_LIMIT {
                return Err(format!(
                    "receiver got {} of {}",
                    checker.next.load(Ordering::Relaxed),
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
        let mut words = line.split_whitespace();
        let got: u64 = words
            .nth(1)
            .and_then(|w| w.parse().ok())
            .ok_or(format!("bad receiver line {line:?}"))?;
        let errs: u64 = words
            .nth(1)
            .and_then(|w| w.parse().ok())
            .ok_or(format!("bad receiver line {line:?}"))?;
        if got != a.count {
            return Err(format!("a receiver got {got} of {}", a.count));
        }
        errors += errs;
        let _ = child.wait();
    }
    stop.store(true, Ordering::Relaxed);
    if errors > 0 {
        return Err(format!(
            "{errors} message(s) arrived corrupted or out of order"
        ));
    }
    let secs = (end - start).as_secs_f64();
    lat.sort_unstable();
    let rate = a.count as f64 / secs;
    println!(
        "channel mode={} size={} receivers={} count={} msgs_per_s={:.0} mb_per_s={:.1} p50_us={} p99_us={}",
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
