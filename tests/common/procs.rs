//! Example binaries run as processes by the HTTP tests: locating (and building) them, and
//! collecting their output lines for waits with a deadline.

use parking_lot::{Condvar, Mutex};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

/// The binary of example `name` for this build profile. Under cargo the examples the tests run
/// are (re)built once per test binary, as `cargo test --test X` alone would not rebuild
/// examples and a stale binary would be tested.
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
