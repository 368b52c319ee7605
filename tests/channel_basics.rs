//! Real sockets on 127.0.0.1: the send modes, static membership and stop.

mod common;

use common::*;
use std::sync::Arc;
use std::time::Duration;
use tribecast::{SendFailure, SendOptions};

const LIMIT: Duration = Duration::from_secs(20);

#[test]
fn every_mode_delivers_to_every_member() {
    init_logs();
    let a = started("a");
    let b = started_with_peers("b", &[&a]);
    let inbox_a = collecting(&a);
    let inbox_b = collecting(&b);
    wait_for("b sees a", LIMIT, || b.members().len() == 1);
    wait_for("a sees b", LIMIT, || a.members().len() == 1);
    for (i, opts) in [
        SendOptions::ASYNCHRONOUS,
        SendOptions::USE_ACK,
        SendOptions::SYNC_ACK,
    ]
    .into_iter()
    .enumerate()
    {
        b.send_to_all(vec![i as u8; 10], opts).unwrap();
        a.send_to_all(vec![i as u8; 20], opts).unwrap();
    }
    wait_for("a got 3", LIMIT, || inbox_a.len() == 3);
    wait_for("b got 3", LIMIT, || inbox_b.len() == 3);
    // Each mode travels its own lane: order holds within a mode, not across modes.
    let mut got: Vec<_> = inbox_a.messages.lock().clone();
    got.sort();
    assert_eq!(
        got,
        (0..3u8)
            .map(|i| ("b".to_string(), vec![i; 10]))
            .collect::<Vec<_>>()
    );
}

#[test]
fn sync_ack_reports_listener_failure_for_that_member() {
    init_logs();
    let good = started("good");
    let bad = started("bad");
    let _inbox = collecting(&good);
    bad.add_channel_listener(Arc::new(|_: &tribecast::ChannelMessage<'_>| {
        Err("no thanks".to_string())
    }));
    let s = started_with_peers("sender", &[&good, &bad]);
    wait_for("both members", LIMIT, || s.members().len() == 2);
    let err = s
        .send_to_all(b"x".to_vec(), SendOptions::SYNC_ACK)
        .unwrap_err();
    let faulty = err.faulty_members();
    assert_eq!(faulty.len(), 1, "{err}");
    assert_eq!(faulty[0].member.as_ref().unwrap().name, "bad");
    assert_eq!(faulty[0].reason, SendFailure::Remote("no thanks".into()));
    // use-ack only waits for the read, so the listener error is not reported.
    s.send_to_all(b"y".to_vec(), SendOptions::USE_ACK).unwrap();
}

#[test]
fn auto_bind_takes_the_next_free_port_and_reports_when_none_is_left() {
    init_logs();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut cfg = tribecast::ChannelConfig::loopback("autobind");
    cfg.receiver.port = port;
    cfg.receiver.auto_bind = 1;
    let ch = tribecast::GroupChannel::new(cfg.clone()).unwrap();
    match ch.start() {
        Err(tribecast::ChannelError::Bind {
            address,
            auto_bind: 1,
            ..
        }) => assert_eq!(address.port(), port),
        other => panic!("expected a bind error, got {other:?}"),
    }
    assert!(!ch.is_running());
    cfg.receiver.auto_bind = 20;
    let ch = tribecast::GroupChannel::new(cfg).unwrap();
    ch.start().unwrap();
    let bound = ch.local_member().unwrap().addr.port();
    assert!(
        bound > port && bound < port + 20,
        "bound {bound}, first tried {port}"
    );
}
