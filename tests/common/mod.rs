//! Helpers shared by the integration tests: loopback channels and waiting with a deadline.
#![allow(dead_code)]

// The HTTP client of the `http_node` example, for the tests that run its processes.
#[path = "../../examples/http_node/client.rs"]
pub mod client;
pub mod netns;
pub mod procs;
pub mod raw;
pub mod stop_flush;

use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tribecast::{
    ChannelConfig, ChannelMessage, GroupChannel, Member, MembershipListener, StaticMember,
};

pub fn init_logs() {
    let _ = env_logger::builder().is_test(true).try_init();
}

/// Waits until `cond` holds, failing the test with `what` after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A loopback TCP port that is free now and that no other socket of this machine will be given
/// in the meantime: taken below the kernel's ephemeral range (`ip_local_port_range`), where
/// only an explicit bind lands, so a test can name it before the process that binds it starts
/// (a port 0 that was freed can be handed to any connect's source port, another test's).
pub fn port_to_reserve() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let first = 10_000u16.min(low / 2);
    let span = u32::from(low - first);
    let start = std::process::id() % span;
    (0..span)
        .map(|i| first + ((start + i) % span) as u16)
        .find(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        .expect("a free port below the ephemeral range")
}

/// What a listener received: (sender name, payload).
#[derive(Default)]
pub struct Inbox {
    pub messages: Mutex<Vec<(String, Vec<u8>)>>,
}

impl Inbox {
    pub fn len(&self) -> usize {
        self.messages.lock().len()
    }
}

pub fn collecting(ch: &GroupChannel) -> Arc<Inbox> {
    let inbox = Arc::new(Inbox::default());
    let i = inbox.clone();
    ch.add_channel_listener(Arc::new(move |m: &ChannelMessage<'_>| {
        i.messages
            .lock()
            .push((m.from.name.clone(), m.payload.to_vec()));
        Ok(())
    }));
    inbox
}

/// Membership events as strings: "+name" and "-name".
#[derive(Default)]
pub struct Events(pub Mutex<Vec<String>>);

impl MembershipListener for Events {
    fn member_added(&self, m: &Member) {
        self.0.lock().push(format!("+{}", m.name));
    }
    fn member_disappeared(&self, m: &Member) {
        self.0.lock().push(format!("-{}", m.name));
    }
}

impl Events {
    pub fn has(&self, e: &str) -> bool {
        self.0.lock().iter().any(|x| x == e)
    }
}

pub fn started(name: &str) -> GroupChannel {
    let ch = GroupChannel::new(ChannelConfig::loopback(name)).expect("valid config");
    ch.start().expect("start");
    ch
}

/// A started channel that lists `peers` as static members.
pub fn started_with_peers(name: &str, peers: &[&GroupChannel]) -> GroupChannel {
    let mut cfg = ChannelConfig::loopback(name);
    cfg.static_members = peers
        .iter()
        .map(|p| StaticMember::new(p.local_member().expect("running").addr))
        .collect();
    let ch = GroupChannel::new(cfg).expect("valid config");
    ch.start().expect("start");
    ch
}

/// A loopback config (port 0) that lists `peers` as static members; build and start it yourself,
/// e.g. to add listeners before the first heartbeat probes the peers.
pub fn config_with_peers(name: &str, peers: &[&GroupChannel]) -> ChannelConfig {
    let mut cfg = ChannelConfig::loopback(name);
    cfg.static_members = peers
        .iter()
        .map(|p| StaticMember::new(p.local_member().expect("running").addr))
        .collect();
    cfg
}

/// A small deterministic PRNG (SplitMix64) for test data: no `rand` crate, same seed same bytes.
#[derive(Clone)]
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Appends `n` pseudo-random bytes to `out`.
    pub fn fill(&mut self, out: &mut Vec<u8>, n: usize) {
        let end = out.len() + n;
        while out.len() < end {
            let w = self.next_u64().to_le_bytes();
            let take = (end - out.len()).min(8);
            out.extend_from_slice(&w[..take]);
        }
    }
}

/// Like [`wait_for`], but returns whether `cond` came true within `limit` instead of failing, for
/// tests that report their own diagnostics.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Cluster members as real processes: the test binary re-executes itself as one node (an
/// `#[ignore]`d test that calls [`node::run`]), configured by one environment variable, driven
/// over stdin and reporting on stdout. A node can be stopped gracefully (stdin closed: the
/// channel stops and says goodbye) or killed with SIGKILL (no goodbye at all).
///
/// Node stdout protocol, one line each, times in microseconds of the wall clock (the same clock
/// in every process, so the parent can compare them with its own):
/// - `@node started <name> <addr> <t>` once the channel runs;
/// - `@node event +<name> <t>` / `@node event -<name> <t>` from its membership listener;
/// - `@node msg <from> <payload>` from its channel listener;
/// - `@node reply <id> <text>` for each command `<id> <command> <args>` read on stdin;
/// - `@node stopping <t>` / `@node stopped <t>` around the graceful stop at stdin EOF.
///
/// Its stderr carries the library's log (`tribecast=info`), kept so tests can check the lines
/// operators grep (`Added member [...]`, `Member disappeared [...]`).
pub mod node {
    use super::wait_until;
    use parking_lot::{Condvar, Mutex};
    use std::collections::HashMap;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{Ipv4Addr, SocketAddr};
    use std::process::{Child, ChildStdin, Command, Stdio};
    use std::sync::Arc;
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
    use tribecast::{
        ChannelConfig, ChannelError, ChannelMessage, GroupChannel, McastConfig, Member,
        MembershipListener, SendOptions, StaticMember,
    };

    /// The variable that carries a node's [`NodeSpec`]; a node test without it does nothing.
    pub const ENV: &str = "TRIBECAST_TEST_NODE";

    /// Wall-clock microseconds since the epoch: comparable between processes.
    pub fn now_us() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_micros() as u64
    }

    /// What a node process runs with. Times in milliseconds; 0 keeps the library default.
    #[derive(Clone, Debug, Default)]
    pub struct NodeSpec {
        pub name: String,
        pub domain: String,
        /// Receiver port on 127.0.0.1; 0 lets the OS choose.
        pub port: u16,
        /// Static members' receiver addresses.
        pub peers: Vec<SocketAddr>,
        /// Multicast group, with `frequency_ms` and `drop_time_ms`.
        pub mcast: Option<SocketAddr>,
        /// Multicast interface address (`McastConfig::bind`); `None` for the routing table's.
        pub mcast_bind: Option<Ipv4Addr>,
        pub frequency_ms: u64,
        pub drop_time_ms: u64,
        pub ping_ms: u64,
        pub expiration_ms: u64,
        pub connect_ms: u64,
    }

    impl NodeSpec {
        pub fn encode(&self) -> String {
            let peers: Vec<String> = self.peers.iter().map(|p| p.to_string()).collect();
            let mcast = self.mcast.map(|m| m.to_string()).unwrap_or_default();
            let bind = self.mcast_bind.map(|b| b.to_string()).unwrap_or_default();
            format!(
                "name={};domain={};port={};peers={};mcast={mcast};bind={bind};freq={};drop={};ping={};exp={};connect={}",
                self.name,
                self.domain,
                self.port,
                peers.join(","),
                self.frequency_ms,
                self.drop_time_ms,
                self.ping_ms,
                self.expiration_ms,
                self.connect_ms
            )
        }

        pub fn decode(s: &str) -> NodeSpec {
            let mut spec = NodeSpec::default();
            for kv in s.split(';') {
                let (k, v) = kv.split_once('=').expect("key=value");
                let ms = || v.parse::<u64>().expect("milliseconds");
                match k {
                    "name" => spec.name = v.into(),
                    "domain" => spec.domain = v.into(),
                    "port" => spec.port = v.parse().expect("port"),
                    "peers" => {
                        spec.peers = v
                            .split(',')
                            .filter(|p| !p.is_empty())
                            .map(|p| p.parse().expect("peer address"))
                            .collect()
                    }
                    "mcast" if v.is_empty() => {}
                    "mcast" => spec.mcast = Some(v.parse().expect("group address")),
                    "bind" if v.is_empty() => {}
                    "bind" => spec.mcast_bind = Some(v.parse().expect("interface address")),
                    "freq" => spec.frequency_ms = ms(),
                    "drop" => spec.drop_time_ms = ms(),
                    "ping" => spec.ping_ms = ms(),
                    "exp" => spec.expiration_ms = ms(),
                    "connect" => spec.connect_ms = ms(),
                    other => panic!("unknown node spec key {other}"),
                }
            }
            spec
        }

        /// The spec of this process, when it was started as a node.
        pub fn from_env() -> Option<NodeSpec> {
            std::env::var(ENV).ok().map(|s| NodeSpec::decode(&s))
        }

        pub fn config(&self) -> ChannelConfig {
            let mut cfg = ChannelConfig::loopback(&self.name);
            cfg.domain = self.domain.clone();
            cfg.receiver.port = self.port;
            cfg.static_members = self
                .peers
                .iter()
                .map(|&addr| StaticMember::new(addr))
                .collect();
            let ms = &mut cfg.membership;
            let set = |d: &mut Duration, v: u64| {
                if v > 0 {
                    *d = Duration::from_millis(v);
                }
            };
            set(&mut ms.ping_interval, self.ping_ms);
            set(&mut ms.expiration_time, self.expiration_ms);
            set(&mut ms.connect_timeout, self.connect_ms);
            if let Some(SocketAddr::V4(group)) = self.mcast {
                let mut mc = {
                    let mut mcast = McastConfig::default();
                    mcast.address = *group.ip();
                    mcast.port = group.port();
                    mcast.bind = self.mcast_bind;
                    mcast
                };
                set(&mut mc.frequency, self.frequency_ms);
                set(&mut mc.drop_time, self.drop_time_ms);
                assert!(mc.address.is_multicast() && mc.address != Ipv4Addr::UNSPECIFIED);
                ms.mcast = Some(mc);
            }
            cfg
        }
    }

    struct Printer {
        known: Arc<Mutex<HashMap<String, Member>>>,
    }

    fn say(line: String) {
        let mut out = std::io::stdout().lock();
        // A parent that went away closes the pipe: nothing left to tell.
        let _ = writeln!(out, "@node {line}");
        let _ = out.flush();
    }

    impl MembershipListener for Printer {
        fn member_added(&self, m: &Member) {
            self.known.lock().insert(m.name.clone(), m.clone());
            say(format!("event +{} {}", m.name, now_us()));
        }
        fn member_disappeared(&self, m: &Member) {
            say(format!("event -{} {}", m.name, now_us()));
        }
    }

    /// The variant name of a failure (`Connect`, `Io`, ...), without its text.
    fn kind<T: std::fmt::Debug>(x: &T) -> String {
        let s = format!("{x:?}");
        s.split(['(', ' ', '{'])
            .next()
            .unwrap_or_default()
            .to_string()
    }

    /// Runs a node until stdin closes: the body of the re-executed node test.
    pub fn run(spec: &NodeSpec) {
        let _ = env_logger::Builder::new()
            .parse_filters("tribecast=info")
            .format_timestamp_millis()
            .target(env_logger::Target::Stderr)
            .try_init();
        let ch = GroupChannel::new(spec.config()).expect("valid node config");
        let known = Arc::new(Mutex::new(HashMap::new()));
        ch.add_membership_listener(Arc::new(Printer {
            known: known.clone(),
        }));
        ch.add_channel_listener(Arc::new(|m: &ChannelMessage<'_>| {
            say(format!(
                "msg {} {}",
                m.from.name,
                String::from_utf8_lossy(&m.payload)
            ));
            Ok(())
        }));
        // A restarted node takes its old port back; should anything hold it a moment, retry.
        let mut last = None;
        let ok = wait_until(Duration::from_secs(10), || match ch.start() {
            Ok(()) => true,
            Err(e @ ChannelError::Bind { .. }) => {
                last = Some(e);
                false
            }
            Err(e) => panic!("node {} does not start: {e}", spec.name),
        });
        assert!(ok, "node {} cannot bind: {last:?}", spec.name);
        let me = ch.local_member().expect("running");
        say(format!("started {} {} {}", me.name, me.addr, now_us()));
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            let mut words = line.split_whitespace();
            let (Some(id), Some(cmd)) = (words.next(), words.next()) else {
                continue;
            };
            let answer = match cmd {
                "members" => {
                    let mut names: Vec<String> =
                        ch.members().iter().map(|m| m.name.clone()).collect();
                    names.sort();
                    format!("members={}", names.join(","))
                }
                "stats" => {
                    let st = ch.membership_stats().expect("running");
                    let get = tribecast::metrics::Counter::get;
                    format!(
                        "hb_rx={} hb_tx={} refused={} verifications={}",
                        get(&st.heartbeats_received),
                        get(&st.heartbeats_sent),
                        get(&st.datagrams_refused),
                        get(&st.verifications)
                    )
                }
                // `send <tag> <name,name>`: a synchronized-ack send to the last known record of
                // each name (a member already dropped included).
                "send" => {
                    let tag = words.next().expect("tag");
                    let names = words.next().expect("names");
                    let dests: Vec<Member> = names
                        .split(',')
                        .map(|n| known.lock().get(n).cloned().expect("a member seen before"))
                        .collect();
                    let t0 = Instant::now();
                    let r = ch.send(&dests, tag.as_bytes().to_vec(), SendOptions::SYNC_ACK);
                    let us = t0.elapsed().as_micros();
                    match r {
                        Ok(()) => format!("ok us={us}"),
                        Err(ChannelError::Faulty(f)) => {
                            let list: Vec<String> = f
                                .iter()
                                .map(|f| {
                                    let name = f.member.as_ref().map_or("?", |m| &m.name);
                                    format!("{name}:{}", kind(&f.reason))
                                })
                                .collect();
                            format!("faulty us={us} {}", list.join(","))
                        }
                        Err(e) => format!("error us={us} {}", kind(&e)),
                    }
                }
                other => format!("unknown command {other}"),
            };
            say(format!("reply {id} {answer}"));
        }
        say(format!("stopping {}", now_us()));
        ch.stop();
        say(format!("stopped {}", now_us()));
    }

    /// One line a node wrote.
    #[derive(Clone, Debug)]
    pub struct Line {
        pub stderr: bool,
        pub text: String,
    }

    #[derive(Default)]
    struct Output {
        lines: Mutex<Vec<Line>>,
        changed: Condvar,
    }

    impl Output {
        fn push(&self, stderr: bool, text: String) {
            self.lines.lock().push(Line { stderr, text });
            self.changed.notify_all();
        }
    }

    fn pump(out: Arc<Output>, stderr: bool, r: impl Read + Send + 'static) {
        std::thread::spawn(move || {
            for line in BufReader::new(r).lines() {
                let Ok(line) = line else { break };
                out.push(stderr, line);
            }
        });
    }

    /// A node process seen from the test.
    pub struct NodeProc {
        pub name: String,
        pub addr: SocketAddr,
        /// When its channel had started (its own clock reading, µs).
        pub started_us: u64,
        child: Child,
        stdin: Option<ChildStdin>,
        out: Arc<Output>,
        next_id: u64,
        exited: bool,
    }

    /// The `@node ...` part of a stdout line (libtest may print before it on the same line).
    fn node_part(l: &Line) -> Option<&str> {
        if l.stderr {
            return None;
        }
        l.text.find("@node ").map(|i| &l.text[i + 6..])
    }

    impl NodeProc {
        /// Re-executes this test binary as the ignored test `node_test`, with `spec`, and waits
        /// until its channel runs.
        pub fn spawn(node_test: &str, spec: &NodeSpec, limit: Duration) -> NodeProc {
            let exe = std::env::current_exe().expect("test binary path");
            let mut child = Command::new(exe)
                .args(["--exact", node_test, "--ignored", "--nocapture"])
                .args(["--test-threads", "1"])
                .env(ENV, spec.encode())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn node process");
            let out = Arc::new(Output::default());
            pump(out.clone(), false, child.stdout.take().expect("stdout"));
            pump(out.clone(), true, child.stderr.take().expect("stderr"));
            let mut p = NodeProc {
                name: spec.name.clone(),
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                started_us: 0,
                stdin: child.stdin.take(),
                child,
                out,
                next_id: 0,
                exited: false,
            };
            let what = format!("node {} starts", spec.name);
            let line = p.wait_line(0, &what, limit, |l| l.starts_with("started "));
            let w: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(w.len(), 4, "{line}");
            p.addr = w[2].parse().expect("address");
            p.started_us = w[3].parse().expect("time");
            p
        }

        /// How many lines it wrote so far: a mark to wait for later lines from.
        pub fn mark(&self) -> usize {
            self.out.lines.lock().len()
        }

        /// Waits for a `@node` line, from line `from` on, that `pred` accepts; returns its text
        /// after `@node `. Fails the test, with the node's output, after `limit`.
        pub fn wait_line(
            &self,
            from: usize,
            what: &str,
            limit: Duration,
            pred: impl Fn(&str) -> bool,
        ) -> String {
            let deadline = Instant::now() + limit;
            let mut lines = self.out.lines.lock();
            loop {
                if let Some(found) = lines
                    .iter()
                    .skip(from)
                    .filter_map(node_part)
                    .find(|l| pred(l))
                {
                    return found.to_string();
                }
                if self
                    .out
                    .changed
                    .wait_until(&mut lines, deadline)
                    .timed_out()
                {
                    let dump: Vec<String> = lines.iter().map(|l| l.text.clone()).collect();
                    drop(lines);
                    panic!(
                        "timed out after {limit:?} waiting for: {what}\n--- node {} ---\n{}",
                        self.name,
                        dump.join("\n")
                    );
                }
            }
        }

        /// Waits for membership event `ev` ("+B", "-C") from line `from` on; returns its time.
        pub fn event_us(&self, from: usize, ev: &str, limit: Duration) -> u64 {
            let prefix = format!("event {ev} ");
            let what = format!("{ev} on node {}", self.name);
            let line = self.wait_line(from, &what, limit, |l| l.starts_with(&prefix));
            line[prefix.len()..].trim().parse().expect("event time")
        }

        /// Every membership event so far ("+B", "-C", ...), in order.
        pub fn events(&self) -> Vec<String> {
            self.out
                .lines
                .lock()
                .iter()
                .filter_map(node_part)
                .filter_map(|l| l.strip_prefix("event "))
                .filter_map(|l| l.split_whitespace().next())
                .map(String::from)
                .collect()
        }

        /// Payloads received from `from`, in order.
        pub fn messages_from(&self, from: &str) -> Vec<String> {
            let prefix = format!("msg {from} ");
            self.out
                .lines
                .lock()
                .iter()
                .filter_map(node_part)
                .filter_map(|l| l.strip_prefix(&prefix))
                .map(String::from)
                .collect()
        }

        /// Waits for a log line (stderr) that contains every one of `needles`, from line `from`
        /// on: the log and the `@node` lines travel on different pipes, in no set order.
        pub fn wait_log(&self, from: usize, needles: &[&str], limit: Duration) -> String {
            let deadline = Instant::now() + limit;
            let mut lines = self.out.lines.lock();
            loop {
                if let Some(l) = lines
                    .iter()
                    .skip(from)
                    .find(|l| l.stderr && needles.iter().all(|n| l.text.contains(n)))
                {
                    return l.text.clone();
                }
                if self
                    .out
                    .changed
                    .wait_until(&mut lines, deadline)
                    .timed_out()
                {
                    let dump: Vec<String> = lines.iter().map(|l| l.text.clone()).collect();
                    drop(lines);
                    panic!(
                        "timed out after {limit:?} waiting for a log line with {needles:?}\n\
                         --- node {} ---\n{}",
                        self.name,
                        dump.join("\n")
                    );
                }
            }
        }

        /// Log lines (stderr) that contain every one of `needles`.
        pub fn log_lines(&self, needles: &[&str]) -> Vec<String> {
            self.out
                .lines
                .lock()
                .iter()
                .filter(|l| l.stderr && needles.iter().all(|n| l.text.contains(n)))
                .map(|l| l.text.clone())
                .collect()
        }

        /// Sends a command and waits for its reply (the text after the id).
        pub fn request(&mut self, cmd: &str, limit: Duration) -> String {
            self.next_id += 1;
            let id = self.next_id;
            let from = self.mark();
            let stdin = self.stdin.as_mut().expect("node still driven");
            writeln!(stdin, "{id} {cmd}").expect("write to node");
            stdin.flush().expect("flush to node");
            let prefix = format!("reply {id} ");
            let what = format!("reply to `{cmd}` from node {}", self.name);
            let line = self.wait_line(from, &what, limit, |l| l.starts_with(&prefix));
            line[prefix.len()..].to_string()
        }

        /// The value of `key=` in a reply such as `hb_rx=3 refused=0`.
        pub fn field(reply: &str, key: &str) -> String {
            let prefix = format!("{key}=");
            reply
                .split_whitespace()
                .find_map(|w| w.strip_prefix(&prefix))
                .unwrap_or_else(|| panic!("no {key} in `{reply}`"))
                .to_string()
        }

        /// A counter of the node's membership stats.
        pub fn stat(&mut self, key: &str) -> u64 {
            let reply = self.request("stats", Duration::from_secs(10));
            Self::field(&reply, key).parse().expect("number")
        }

        /// Names of the node's current members.
        pub fn members(&mut self) -> Vec<String> {
            let reply = self.request("members", Duration::from_secs(10));
            let list = Self::field(&reply, "members");
            list.split(',')
                .filter(|n| !n.is_empty())
                .map(String::from)
                .collect()
        }

        /// Graceful stop: closes stdin, so the node stops its channel (which says goodbye) and
        /// exits. Returns the node's clock reading just before `stop()`; checks a clean exit.
        pub fn stop(&mut self, limit: Duration) -> u64 {
            let from = self.mark();
            self.stdin.take();
            let what = format!("node {} stopping", self.name);
            let line = self.wait_line(from, &what, limit, |l| l.starts_with("stopping "));
            let t = line["stopping ".len()..].trim().parse().expect("time");
            let mut status = None;
            let exited = wait_until(limit, || {
                status = self.child.try_wait().expect("try_wait");
                status.is_some()
            });
            assert!(exited, "node {} did not exit after stop", self.name);
            self.exited = true;
            assert!(
                status.is_some_and(|s| s.success()),
                "node {} exited with {status:?}:\n{}",
                self.name,
                self.dump()
            );
            t
        }

        /// SIGKILL: the process dies at once, with no goodbye. Returns the time of the kill
        /// (read just before it), once the process is reaped and its sockets closed.
        pub fn kill(&mut self) -> u64 {
            let t = now_us();
            self.child.kill().expect("SIGKILL");
            self.child.wait().expect("reap");
            self.exited = true;
            t
        }

        /// Everything the node wrote, for failure messages.
        pub fn dump(&self) -> String {
            let lines = self.out.lines.lock();
            let text: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
            format!("--- node {} ---\n{}", self.name, text.join("\n"))
        }
    }

    impl Drop for NodeProc {
        fn drop(&mut self) {
            let dump = std::thread::panicking().then(|| self.dump());
            super::procs::end_child(&mut self.child, self.exited, dump);
        }
    }
}

/// A started `SimpleTcpCluster` node on 127.0.0.1 with application "/app", listing `peers` as
/// static members; `template` gives everything but the channel's address and the jvmRoute.
pub fn cluster_node(
    route: &str,
    peers: &[&tribecast::SimpleTcpCluster],
    template: &tribecast::ClusterConfig,
) -> tribecast::SimpleTcpCluster {
    let c =
        tribecast::SimpleTcpCluster::new(cluster_config(route, peers, template)).expect("config");
    c.add_application("/app");
    c.start().expect("start");
    c
}

/// The config `cluster_node` starts a node with: `template` on a loopback channel (port 0)
/// that lists `peers` as static members, with jvmRoute `route`.
pub fn cluster_config(
    route: &str,
    peers: &[&tribecast::SimpleTcpCluster],
    template: &tribecast::ClusterConfig,
) -> tribecast::ClusterConfig {
    let mut cfg = template.clone();
    cfg.channel = ChannelConfig::loopback(route);
    cfg.channel.static_members = peers
        .iter()
        .map(|p| StaticMember::new(p.channel().local_member().expect("running").addr))
        .collect();
    cfg.jvm_route = route.into();
    cfg
}

/// `n` cluster nodes "server1".."serverN", each listing the ones before it, all seeing each other.
pub fn cluster_nodes(
    n: usize,
    template: &tribecast::ClusterConfig,
) -> Vec<tribecast::SimpleTcpCluster> {
    let mut nodes: Vec<tribecast::SimpleTcpCluster> = Vec::new();
    for i in 1..=n {
        let peers: Vec<&tribecast::SimpleTcpCluster> = nodes.iter().collect();
        nodes.push(cluster_node(&format!("server{i}"), &peers, template));
    }
    for c in &nodes {
        wait_for("everyone sees everyone", Duration::from_secs(20), || {
            c.channel().members().len() == n - 1
        });
    }
    nodes
}

/// A login on `app` (a node's "/app" manager): a new session holding `user`, replicated;
/// returns its id.
pub fn login_on(app: &Arc<tribecast::ClusterManager>, user: &str) -> String {
    let mut req = app.request(None, "/app/login");
    req.session_or_create()
        .expect("session")
        .set("user", &user)
        .expect("set");
    let id = req.session_id().expect("id").to_string();
    req.finish().expect("login replicated");
    id
}
