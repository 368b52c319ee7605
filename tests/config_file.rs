//! Configuration files (src/config_file): the example files load, and every kind of mistake is
//! a typed error naming its key and line, never a panic.
//!
//! Run: `cargo test --release --test config_file`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tribecast::config_file::ConfigFileErrorKind as Kind;
use tribecast::{ManagerKind, MemberId, NodeConfig, SendOptions};

fn example_configs() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/config");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_config_loads() {
    let files = example_configs();
    assert!(files.len() >= 3, "{files:?}");
    for f in &files {
        if let Err(e) = NodeConfig::from_file(f) {
            panic!("{e}");
        }
    }
}

#[test]
fn server1_is_the_reference_setup() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/config");
    for i in 1..=3u8 {
        let n = NodeConfig::from_file(&dir.join(format!("server{i}.toml"))).unwrap();
        let c = &n.cluster;
        assert_eq!(c.jvm_route, format!("node{i}"));
        assert_eq!(
            n.http,
            Some(SocketAddr::from(([127, 0, 0, 1], 8080 + u16::from(i))))
        );
        assert_eq!(n.context, "/app");
        assert_eq!(c.channel_send_options, SendOptions::ASYNCHRONOUS);
        assert_eq!(c.manager.kind, ManagerKind::Delta);
        assert!(!c.manager.expire_sessions_on_shutdown);
        assert!(c.manager.notify_listeners_on_replication);
        let r = &c.channel.receiver;
        assert_eq!(r.port, 4000 + u16::from(i));
        assert_eq!(r.max_threads, 6);
        assert_eq!(r.selector_timeout, Duration::from_millis(5000));
        let mut id = [0u8; 16];
        id[15] = i;
        assert_eq!(c.channel.unique_id, Some(MemberId(id)));
        assert!(c.channel.membership.mcast.is_none());
        assert!(c.channel.membership.failure_detector);
        let ports: Vec<u16> = c
            .channel
            .static_members
            .iter()
            .map(|m| m.addr.port())
            .collect();
        let want: Vec<u16> = (1..=3u16)
            .filter(|&j| j != u16::from(i))
            .map(|j| 4000 + j)
            .collect();
        assert_eq!(ports, want);
        assert!(c.valve_filter.contains(r".*\.css"));
    }
}

#[test]
fn empty_file_is_all_defaults() {
    let n = NodeConfig::from_toml_str("").unwrap();
    assert_eq!(n.http, None);
    assert_eq!(n.context, "/app");
    assert_eq!(n.cluster.channel.receiver.port, 4000);
    assert_eq!(n.cluster.channel.receiver.max_threads, 15);
}

#[test]
fn bad_value_names_key_and_line() {
    let text = "[cluster.channel.receiver]\nport = 4000\nmax_threads = -3\n";
    let e = NodeConfig::from_toml_str(text).unwrap_err();
    assert_eq!(e.kind, Kind::OutOfRange);
    assert_eq!(e.key, "cluster.channel.receiver.max_threads");
    assert_eq!(e.line, Some(3));
    assert_eq!(
        e.to_string(),
        "line 3: cluster.channel.receiver.max_threads: expected a positive integer, got -3"
    );
}
