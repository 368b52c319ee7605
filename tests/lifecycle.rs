//! Start and stop over real sockets: `stop` joins every thread the channel started and frees its
//! port, twice in a row, and a stopped channel starts again and works.
//!
//! This file holds a single test on purpose: it counts the threads of the whole process
//! (/proc/self/task), which other tests running in parallel in the same binary would disturb.
//! Every thread the library starts is named `tribecast-…`.
//!
//! Run: `cargo test --release --test lifecycle`.

mod common;

use common::*;
use std::net::TcpListener;
use std::time::Duration;
use tribecast::{ChannelError, GroupChannel, SendOptions};

const LIMIT: Duration = Duration::from_secs(20);
/// `join` returns once a thread has exited; the kernel may list it in /proc for a few
/// microseconds more, and a new thread takes its name a moment after `spawn` returns. This is
/// how long we give either.
const REAP: Duration = Duration::from_secs(1);

/// Names of this process's threads that the library started.
fn tribecast_threads() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim_end().to_string())
        .filter(|n| n.starts_with("tribecast-"))
        .collect();
    names.sort();
    names
}

/// The library's threads once every thread started since `baseline` has its name (a thread
/// names itself once it runs, a moment after `spawn` returns).
fn named_threads(baseline: usize) -> Vec<String> {
    wait_until(REAP, || {
        tribecast_threads().len() == os_threads() - baseline
    });
    let names = tribecast_threads();
    assert_eq!(
        names.len(),
        os_threads() - baseline,
        "threads without a tribecast- name: {names:?}"
    );
    names
}

/// The `Threads:` line of /proc/self/status.
fn os_threads() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("a Threads: line")
}

fn wait_threads(what: &str, expected: &[String], os_expected: usize) {
    wait_until(REAP, || {
        tribecast_threads() == expected && os_threads() == os_expected
    });
    assert_eq!(tribecast_threads(), expected, "{what}: library threads");
    assert_eq!(os_threads(), os_expected, "{what}: threads of the process");
}

/// A sends to P and P to A with synchronized ack, then A to P asynchronously: each listener gets
/// exactly the new messages, in order.
fn exchange(a: &GroupChannel, p: &GroupChannel, inbox_a: &Inbox, inbox_p: &Inbox, tag: &str) {
    wait_for("a and p see each other", LIMIT, || {
        a.members().len() == 1 && p.members().len() == 1
    });
    let (na, np) = (inbox_a.len(), inbox_p.len());
    a.send_to_all(format!("from a {tag}").into_bytes(), SendOptions::SYNC_ACK)
        .expect("a sends");
    p.send_to_all(format!("from p {tag}").into_bytes(), SendOptions::SYNC_ACK)
        .expect("p sends");
    a.send_to_all(
        format!("async from a {tag}").into_bytes(),
        SendOptions::ASYNCHRONOUS,
    )
    .expect("a queues");
    wait_for("the messages arrive", LIMIT, || {
        inbox_a.len() == na + 1 && inbox_p.len() == np + 2
    });
    let last = |i: &Inbox, n: usize| i.messages.lock()[n..].to_vec();
    assert_eq!(
        last(inbox_a, na),
        [("p".to_string(), format!("from p {tag}").into_bytes())]
    );
    assert_eq!(
        last(inbox_p, np),
        [
            ("a".to_string(), format!("from a {tag}").into_bytes()),
            ("a".to_string(), format!("async from a {tag}").into_bytes()),
        ]
    );
}

#[test]
fn stop_joins_every_thread_frees_the_port_and_the_channel_restarts() {
    init_logs();
    assert_eq!(tribecast_threads(), Vec::<String>::new(), "clean start");
    let baseline = os_threads();

    let p = started("p");
    let inbox_p = collecting(&p);
    let p_threads = named_threads(baseline);
    assert!(
        p_threads.len() >= 3,
        "a running channel has its threads: {p_threads:?}"
    );
    let with_p = os_threads();

    let a = GroupChannel::new(config_with_peers("a", &[&p])).expect("config");
    let inbox_a = collecting(&a);
    for round in 0..2 {
        a.start().expect("start");
        a.start().expect("start on a running channel does nothing");
        let a_threads = named_threads(baseline);
        let mut twice = [p_threads.clone(), p_threads.clone()].concat();
        twice.sort();
        assert_eq!(a_threads, twice, "a runs the same threads as p, once");
        let a_addr = a.local_member().expect("running").addr;
        exchange(&a, &p, &inbox_a, &inbox_p, &format!("round {round}"));

        a.stop();
        a.stop();
        assert!(!a.is_running());
        assert!(a.local_member().is_none());
        assert!(matches!(
            a.send_to_all(b"late".to_vec(), SendOptions::SYNC_ACK),
            Err(ChannelError::NotRunning)
        ));
        // The port is free at once: a listener binds the very same address.
        drop(TcpListener::bind(a_addr).expect("a's port is free after stop"));
        wait_threads(&format!("round {round}: a stopped"), &p_threads, with_p);
        wait_for("p sees a leave", LIMIT, || p.members().is_empty());
    }

    let p_addr = p.local_member().expect("running").addr;
    p.stop();
    p.stop();
    drop(TcpListener::bind(p_addr).expect("p's port is free after stop"));
    wait_threads("all stopped", &[], baseline);

    // Both again, from stopped, and a last exchange.
    p.start().expect("restart p");
    let a = {
        // a lists p's new address.
        drop(a);
        let a = GroupChannel::new(config_with_peers("a", &[&p])).expect("config");
        a.start().expect("start");
        a
    };
    let inbox_a2 = collecting(&a);
    exchange(&a, &p, &inbox_a2, &inbox_p, "after restart");
    drop(a);
    p.stop();
    wait_threads("dropped and stopped", &[], baseline);
}
