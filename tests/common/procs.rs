//! Example binaries run as processes by the HTTP tests: locating (and building) them,
//! collecting their output lines for waits with a deadline, and [`Proc`], one such process.

use super::client::{Client, Reply};
use super::wait_until;
use parking_lot::{Condvar, Mutex};
use std::io::{self, BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The binary of example `name` for this build profile. Under cargo the examples the tests run
/// (all of them, whichever test binary asks) are (re)built once per test binary, as `cargo test
/// --test X` alone would not rebuild examples and a stale binary would be tested.
pub fn example_exe(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test>-HASH -> target/<profile>/examples/<name>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    static BUILD: std::sync::Once = std::sync::Once::new();
    BUILD.call_once(|| {
        let Ok(cargo) = std::env::var("CARGO") else {
            return; // not run by cargo: use what is there
        };
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "--quiet",
            "--example",
            "http_node",
            "--example",
            "cluster_demo",
            "--example",
            "channel_bench",
            "--example",
            "session_bench",
            "--example",
            "tiny_http_node",
            "--example",
            "rouille_node",
        ]);
        if !cfg!(debug_assertions) {
            cmd.arg("--release");
        }
        let status = cmd
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo");
        assert!(status.success(), "cargo build of the examples failed");
    });
    let bin = profile_dir.join("examples").join(name);
    assert!(bin.exists(), "no {}", bin.display());
    bin
}

/// A process's output lines, each marked `true` when it came from stderr.
#[derive(Default)]
pub struct Output {
    pub lines: Mutex<Vec<(bool, String)>>,
    pub changed: Condvar,
}

impl Output {
    /// Every line so far, in arrival order.
    pub fn text(&self) -> String {
        let lines = self.lines.lock();
        let text: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
        text.join("\n")
    }
}

/// Copies the lines of `r` into `out` on a thread of its own, until the pipe closes.
pub fn pump(out: Arc<Output>, stderr: bool, r: impl Read + Send + 'static) {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            out.lines.lock().push((stderr, line));
            out.changed.notify_all();
        }
    });
}

/// How long [`Proc::wait_line`] and [`Proc::wait_exit_ok`] wait.
pub const LIMIT: Duration = Duration::from_secs(20);

/// A node process (an example binary) run by a test: its output collected line by line, its
/// HTTP and cluster receiver addresses once read from its ready line. Dropped, it is killed
/// unless it exited, and when the test is failing its output is printed (`dump_on_panic`).
pub struct Proc {
    pub name: String,
    pub http: SocketAddr,
    pub receiver: SocketAddr,
    pub child: Child,
    /// Its stdin when piped: kept open (`--stop-on-stdin-eof` stops the node when it closes).
    pub stdin: Option<ChildStdin>,
    pub out: Arc<Output>,
    pub exited: bool,
    /// Print the output when dropped during a panic (on unless a test keeps logs its own way).
    pub dump_on_panic: bool,
}

impl Proc {
    /// Spawns `cmd` as `name` with stdout and stderr piped and collected (stdin as `cmd` sets
    /// it); the addresses are unset (port 0) until [`Proc::wait_ready`] or
    /// [`Proc::read_addresses`].
    pub fn start(name: impl Into<String>, cmd: &mut Command) -> io::Result<Proc> {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        let out = Arc::new(Output::default());
        pump(out.clone(), false, child.stdout.take().expect("stdout"));
        pump(out.clone(), true, child.stderr.take().expect("stderr"));
        let unset = SocketAddr::from(([127, 0, 0, 1], 0));
        Ok(Proc {
            name: name.into(),
            http: unset,
            receiver: unset,
            stdin: child.stdin.take(),
            child,
            out,
            exited: false,
            dump_on_panic: true,
        })
    }

    /// Waits (up to [`LIMIT`]) for the ready line on stdout and reads the addresses from it.
    pub fn wait_ready(&mut self) {
        let line = self.wait_line("its ready line", |stderr, l| {
            !stderr && l.contains(" listening on http://")
        });
        self.read_addresses(&line);
    }

    /// Reads the HTTP and receiver addresses from a ready line:
    /// `<exe> node1 listening on http://127.0.0.1:P (cluster receiver 127.0.0.1:Q)`.
    pub fn read_addresses(&mut self, line: &str) {
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
            (Some(h), Some(r)) => (self.http, self.receiver) = (h, r),
            _ => panic!("cannot read addresses from `{line}`"),
        }
    }

    /// The first line `pred` accepts (`pred(from_stderr, line)`), waiting up to [`LIMIT`];
    /// fails the test with the output after that.
    pub fn wait_line(&self, what: &str, pred: impl Fn(bool, &str) -> bool) -> String {
        self.wait_line_by(Instant::now() + LIMIT, what, pred)
    }

    /// Like `wait_line`, by `deadline`.
    pub fn wait_line_by(
        &self,
        deadline: Instant,
        what: &str,
        pred: impl Fn(bool, &str) -> bool,
    ) -> String {
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

    /// Every line it wrote so far.
    pub fn text(&self) -> String {
        self.out.text()
    }

    /// Its output under its name, for failure messages.
    pub fn dump(&self) -> String {
        format!("--- {} ---\n{}", self.name, self.text())
    }

    /// A figure of its `/proc/<pid>/status` in KiB (`VmHWM`, the peak resident set; `VmRSS`).
    pub fn status_kib(&self, key: &str) -> u64 {
        let path = format!("/proc/{}/status", self.child.id());
        let status = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        status
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {path}"))
    }

    /// SIGKILL: no goodbye, no last replication.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
        self.exited = true;
    }

    /// Closes stdin (`--stop-on-stdin-eof`) and checks a clean exit.
    pub fn stop(&mut self) {
        self.stdin.take();
        self.wait_exit_ok();
    }

    /// Waits (up to [`LIMIT`]) for the process to end, and checks that it ended with status 0.
    pub fn wait_exit_ok(&mut self) {
        let mut status = None;
        let exited = wait_until(LIMIT, || {
            status = self.child.try_wait().expect("try_wait");
            status.is_some()
        });
        self.exited = exited;
        assert!(
            exited && status.is_some_and(|s| s.success()),
            "{} did not stop cleanly ({status:?})\n{}",
            self.name,
            self.dump()
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let dump = (self.dump_on_panic && std::thread::panicking()).then(|| self.dump());
        end_child(&mut self.child, self.exited, dump);
    }
}

/// The end of a test's process handle: kills and reaps `child` unless it `exited`, then prints
/// `dump` (the output, given when the test is failing).
pub fn end_child(child: &mut Child, exited: bool, dump: Option<String>) {
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
    }
    if let Some(dump) = dump {
        eprintln!("{dump}");
    }
}

/// GET `path` on `node`; fails the test when there is no answer.
pub fn get(c: &mut Client, node: &Proc, path: &str) -> Reply {
    c.get(node.http, path)
        .unwrap_or_else(|e| panic!("GET {path} on {}: {e}", node.name))
}

/// GET until the answer has `status`, within [`LIMIT`] (replication may still be on its way).
pub fn get_until(c: &mut Client, node: &Proc, path: &str, status: u16) -> Reply {
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

/// Logs `user` in on `node` through the demo's form, which must answer 200.
pub fn login(c: &mut Client, node: &Proc, user: &str, pass: &str) -> Reply {
    let r = c
        .post_form(node.http, "/app/login", &[("user", user), ("pass", pass)])
        .expect("login");
    assert_eq!(r.status, 200, "login of {user} on {}: {r:?}", node.name);
    r
}

/// The number after `"key":` in a flat JSON object, if there is one.
pub fn try_json_number(json: &str, key: &str) -> Option<u64> {
    let pat = format!("\"{key}\":");
    json.split(&pat)
        .nth(1)
        .map(|r| {
            r.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .and_then(|d| d.parse().ok())
}

/// The number after `"key":` in a flat JSON object; fails the test when there is none.
pub fn json_number(json: &str, key: &str) -> u64 {
    try_json_number(json, key).unwrap_or_else(|| panic!("no number {key} in {json}"))
}
