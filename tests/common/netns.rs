//! Private network namespaces for the tests that multicast or cut the network (DESIGN.md,
//! "Network rule"): an outer `#[test]` re-executes its own binary under `unshare -n`, runs a
//! setup script there (bringing `lo` up, routes, rules), then one `#[ignore]`d inner test. Inner
//! tests refuse to act unless the outer test sent them and they find themselves in a new
//! namespace whose only interface is `lo`: they never touch a real interface.
//!
//! Needs root (or CAP_SYS_ADMIN) for `unshare -n`; without it the outer tests fail and say so.

use super::wait_until;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Set by the outer test to its own namespace (`/proc/self/ns/net`): the inner test must be
/// somewhere else.
const NETNS_ENV: &str = "TRIBECAST_TEST_NETNS";
/// How long an inner test may take.
const LIMIT: Duration = Duration::from_secs(180);

/// Fails the calling test unless `unshare -n` works here; `why` says what the namespace is for.
pub fn require_unshare(why: &str) {
    match Command::new("unshare").args(["-n", "true"]).output() {
        Err(e) => panic!("{why} only inside a private network namespace, and `unshare` (util-linux) is missing: {e}"),
        Ok(o) if !o.status.success() => panic!(
            "{why} only inside a private network namespace, and `unshare -n` failed ({}): {}\n\
             It needs root or CAP_SYS_ADMIN (CI runs as root); the tests never fall back to a \
             real interface.",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Ok(_) => {}
    }
}

/// Runs the ignored test `inner` of this binary in a new network namespace after `setup` (a
/// `sh -e` script run there first), with `envs` set; fails unless it passed. Returns its stdout.
pub fn run_inner(inner: &str, setup: &str, envs: &[(&str, String)]) -> String {
    let exe = std::env::current_exe().expect("test binary path");
    let host_ns = std::fs::read_link("/proc/self/ns/net").expect("own network namespace");
    let script = format!(
        "set -e; {setup}; exec \"$0\" --exact \"$1\" --ignored --nocapture --test-threads 1"
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["-n", "--", "sh", "-c", &script])
        .arg(&exe)
        .arg(inner)
        .env(NETNS_ENV, &host_ns)
        // The inner test must not run cargo (it would rebuild in the namespace).
        .env_remove("CARGO")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn unshare");
    let collect = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = collect(Box::new(child.stdout.take().expect("stdout")));
    let err = collect(Box::new(child.stderr.take().expect("stderr")));
    let mut status = None;
    let finished = wait_until(LIMIT, || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    if !finished {
        let _ = child.kill();
        let _ = child.wait();
    }
    let (out, err) = (out.join().expect("stdout"), err.join().expect("stderr"));
    assert!(
        finished
            && status.is_some_and(|s| s.success())
            && out.contains("test result: ok. 1 passed"),
        "{inner} in a private network namespace: finished={finished} status={status:?}\n\
         --- stdout ---\n{out}\n--- stderr ---\n{err}"
    );
    out
}

/// True inside the namespace made by [`run_inner`]; false, doing nothing, when an inner test is
/// run by hand (`--ignored`). Panics if sent but not isolated: then it may not act.
pub fn isolated(test: &str) -> bool {
    let Ok(host_ns) = std::env::var(NETNS_ENV) else {
        eprintln!(
            "{test}: not run: it runs only inside the private network namespace that its outer \
             test makes"
        );
        return false;
    };
    let own = std::fs::read_link("/proc/self/ns/net").expect("own network namespace");
    assert_ne!(
        own.to_string_lossy(),
        host_ns,
        "{test}: still in the outer network namespace: refusing to go on"
    );
    let dev = std::fs::read_to_string("/proc/self/net/dev").expect("/proc/self/net/dev");
    let ifaces: Vec<&str> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(
        ifaces,
        ["lo"],
        "{test}: this namespace has other interfaces than lo: refusing to go on"
    );
    true
}
