//! Real sockets on 127.0.0.1: the per-member counters of `GroupChannel::stats` count exactly
//! what two channels exchanged, and the Prometheus text of a cluster.

mod common;

use common::*;
use std::time::Duration;
use tribecast::metrics::MemberStats;
use tribecast::{GroupChannel, Member, SendOptions};

const LIMIT: Duration = Duration::from_secs(20);

fn of(ch: &GroupChannel, m: &Member) -> MemberStats {
    ch.stats()
        .member(&m.id)
        .cloned()
        .unwrap_or_else(|| panic!("no figures for {}", m.name))
}

#[test]
fn per_member_counters_count_messages_bytes_rtt_and_errors() {
    init_logs();
    let a = started("a");
    let inbox_a = collecting(&a);
    let b = started_with_peers("b", &[&a]);
    let inbox_b = collecting(&b);
    wait_for("b sees a", LIMIT, || b.members().len() == 1);
    wait_for("a sees b", LIMIT, || a.members().len() == 1);
    let (ma, mb) = (a.local_member().unwrap(), b.local_member().unwrap());

    // 50 synchronized-ack messages of 1000 bytes, b to a.
    for i in 0..50u8 {
        b.send(
            std::slice::from_ref(&ma),
            vec![i; 1000],
            SendOptions::SYNC_ACK,
        )
        .unwrap();
    }
    let s = of(&b, &ma);
    assert_eq!((s.messages_sent, s.bytes_sent), (50, 50_000));
    assert_eq!(s.send_errors, 0);
    assert!(s.rtt_last_us > 0, "{s:?}");
    assert!(s.rtt_count >= 50, "every sync ack timed: {s:?}");
    assert!(s.rtt_avg_us > 0 && s.rtt_avg_us <= s.rtt_sum_us, "{s:?}");
    assert!(s.current);
    assert_eq!(s.name, "a");
    // Counted before the listener ran, so already there when the ack came back.
    let r = of(&a, &mb);
    assert_eq!((r.messages_received, r.bytes_received), (50, 50_000));

    // 200 asynchronous messages of 300 bytes: counted once written.
    for i in 0..200u32 {
        b.send(
            std::slice::from_ref(&ma),
            vec![i as u8; 300],
            SendOptions::ASYNCHRONOUS,
        )
        .unwrap();
    }
    wait_for("a got 250", LIMIT, || inbox_a.len() == 250);
    wait_for("b counted 250 sent", LIMIT, || {
        of(&b, &ma).messages_sent == 250
    });
    wait_for("b's async queue empty", LIMIT, || {
        of(&b, &ma).async_queued_bytes == 0
    });
    let s = of(&b, &ma);
    assert_eq!(s.bytes_sent, 50_000 + 200 * 300);
    assert_eq!(s.async_dropped, 0);
    let r = of(&a, &mb);
    assert_eq!((r.messages_received, r.bytes_received), (250, 110_000));

    // 7 use-ack messages of 10 bytes the other way.
    for _ in 0..7 {
        a.send(std::slice::from_ref(&mb), vec![9; 10], SendOptions::USE_ACK)
            .unwrap();
    }
    wait_for("b got 7", LIMIT, || inbox_b.len() == 7);
    let s = of(&a, &mb);
    assert_eq!((s.messages_sent, s.bytes_sent), (7, 70));
    wait_for("b counted 7", LIMIT, || of(&b, &ma).messages_received == 7);
    assert_eq!(of(&b, &ma).bytes_received, 70);

    let t = b.stats().totals;
    assert_eq!((t.messages_sent, t.bytes_sent), (250, 110_000));
    assert_eq!((t.messages_received, t.bytes_received), (7, 70));
    assert_eq!(t.members, 1);

    // a goes down: a send to it fails and is counted; its figures stay, marked gone.
    a.stop();
    let err = b
        .send(
            std::slice::from_ref(&ma),
            vec![1; 100],
            SendOptions::SYNC_ACK,
        )
        .unwrap_err();
    assert_eq!(err.faulty_members().len(), 1, "{err}");
    let s = of(&b, &ma);
    assert_eq!(s.send_errors, 1, "{s:?}");
    assert_eq!(
        (s.messages_sent, s.bytes_sent),
        (250, 110_000),
        "a failed send is not counted as sent"
    );
    wait_for("a no longer current", LIMIT, || !of(&b, &ma).current);
    assert_eq!(b.stats().totals.send_errors, 1);
}

#[test]
fn cluster_prometheus_text_lists_members_and_managers() {
    init_logs();
    let mk = |route: &str, peers: &[&GroupChannel]| {
        let cfg = {
            let mut cluster = tribecast::ClusterConfig::default();
            cluster.channel = config_with_peers(route, peers);
            cluster.jvm_route = route.into();
            cluster.channel_send_options = SendOptions::SYNC_ACK;
            cluster
        };
        let c = tribecast::SimpleTcpCluster::new(cfg).unwrap();
        c.add_application("/app");
        c.start().unwrap();
        c
    };
    let n1 = mk("n1", &[]);
    let n2 = mk("n2", &[n1.channel()]);
    wait_for("n1 sees n2", LIMIT, || n1.channel().members().len() == 1);
    let mgr = n2.manager("/app").unwrap();
    assert!(mgr.wait_ready(LIMIT));
    let mut r = mgr.request(None, "/app/x");
    r.session_or_create().unwrap().set("k", "v").unwrap();
    r.finish().unwrap();
    let s = mgr.stats();
    assert_eq!((s.sessions, s.replications, s.primaries), (1, 1, None));
    wait_for("n1 holds the session", LIMIT, || {
        n1.manager("/app").unwrap().stats().sessions == 1
    });
    let text = n2.prometheus_text();
    assert!(text.contains("# TYPE tribecast_member_messages_sent_total counter\n"));
    assert!(
        text.contains("tribecast_manager_sessions{context=\"/app\"} 1\n"),
        "{text}"
    );
    assert!(text.contains("tribecast_manager_replications_total{context=\"/app\"} 1\n"));
    let n1_id = n1.channel().local_member().unwrap().id;
    assert!(
        text.lines().any(|l| l.starts_with(&format!(
            "tribecast_member_up{{member=\"n1\",member_id=\"{n1_id}\"}} 1"
        ))),
        "{text}"
    );
}
