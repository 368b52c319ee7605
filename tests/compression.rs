//! Payload compression over real sockets on 127.0.0.1 (`ChannelConfig::compression_min_size`,
//! Tomcat's GzipInterceptor): a member that compresses and one that does not exchange messages
//! both ways, the compressed ones take fewer bytes on the wire, and hostile compressed
//! payloads are refused with a reason while the connection goes on.

mod common;

use common::raw::{raw_member, read_raw_frame, shake_hands};
use common::*;
use std::io::Write;
use std::time::Duration;
use tribecast::wire::frame::{encode_frame, FLAG_ACK, FLAG_SYNC_ACK, HEADER_LEN};
use tribecast::wire::{decode_body, encode_body, Envelope, FrameKind, Reason};
use tribecast::{ChannelConfig, GroupChannel, Member, SendOptions};

const LIMIT: Duration = Duration::from_secs(20);

fn local(ch: &GroupChannel) -> Member {
    ch.local_member().expect("running")
}

fn bytes_sent(ch: &GroupChannel) -> u64 {
    ch.with_sender_stats(|s| s.bytes_sent.get())
        .expect("running")
}

/// A cart of `n` items as an application would store it (JSON: repetitive).
fn cart(n: usize) -> Vec<u8> {
    let items: Vec<String> = (0..n)
        .map(|i| format!(r#"{{"sku":"BOOK-{i:05}","title":"A book","qty":1,"price":12.50}}"#))
        .collect();
    format!("[{}]", items.join(",")).into_bytes()
}

#[test]
fn a_compressing_member_and_a_plain_one_understand_each_other() {
    init_logs();
    let plain = started("plain");
    let plain_inbox = collecting(&plain);
    let mut cfg = ChannelConfig::loopback("packer");
    cfg.compression_min_size = Some(512);
    cfg.static_members = vec![tribecast::StaticMember::new(local(&plain).addr)];
    let packer = GroupChannel::new(cfg).expect("valid config");
    let packer_inbox = collecting(&packer);
    packer.start().expect("start");
    wait_for("the members see each other", LIMIT, || {
        packer.members().len() == 1 && plain.members().len() == 1
    });
    let big = cart(400); // about 28 KiB
    let small = b"a small message under the threshold".to_vec();
    // Compressed one way (above the threshold), as it is below it.
    let before = bytes_sent(&packer);
    packer
        .send(&[local(&plain)], big.clone(), SendOptions::SYNC_ACK)
        .expect("delivered");
    let on_wire = bytes_sent(&packer) - before;
    packer
        .send(&[local(&plain)], small.clone(), SendOptions::SYNC_ACK)
        .expect("delivered");
    // Plain the other way: the compressing member reads plain messages.
    let before_plain = bytes_sent(&plain);
    plain
        .send(&[local(&packer)], big.clone(), SendOptions::SYNC_ACK)
        .expect("delivered");
    let plain_on_wire = bytes_sent(&plain) - before_plain;
    wait_for("both messages arrived", LIMIT, || plain_inbox.len() == 2);
    wait_for("the plain message arrived", LIMIT, || {
        packer_inbox.len() == 1
    });
    let got: Vec<Vec<u8>> = plain_inbox
        .messages
        .lock()
        .iter()
        .map(|(_, p)| p.clone())
        .collect();
    assert_eq!(got, vec![big.clone(), small], "the same bytes, in order");
    assert_eq!(packer_inbox.messages.lock()[0].1, big);
    eprintln!(
        "FIGURE cart of {} B: {on_wire} B on the wire compressed, {plain_on_wire} B plain",
        big.len()
    );
    assert!(
        on_wire * 4 < plain_on_wire,
        "compressed {on_wire} B vs plain {plain_on_wire} B"
    );
    assert!(plain_on_wire > big.len() as u64);
}

/// A synchronized-ack data frame with the compressed flag and `payload`, as sequence `seq`.
fn compressed_frame(me: &Member, seq: u64, payload: &[u8]) -> Vec<u8> {
    let body = encode_body(&Envelope {
        sender: me.id,
        msg_id: seq,
        options: 0x100 | SendOptions::SYNC_ACK.0,
        payload,
    });
    let mut frame = Vec::new();
    encode_frame(
        &mut frame,
        FrameKind::Data,
        FLAG_ACK | FLAG_SYNC_ACK,
        seq,
        &body,
    );
    frame
}

#[test]
fn hostile_compressed_payloads_are_refused_and_the_connection_goes_on() {
    init_logs();
    let mut cfg = ChannelConfig::loopback("receiver");
    cfg.max_frame_size = 64 * 1024;
    let cluster = cfg.cluster_name.clone();
    let r = GroupChannel::new(cfg).expect("config");
    let inbox = collecting(&r);
    r.start().expect("start");
    let me = raw_member("hostile");
    let mut s = shake_hands(local(&r).addr, &cluster, &me, LIMIT).expect("handshake");
    let mut huge_claim = u32::MAX.to_le_bytes().to_vec();
    huge_claim.extend_from_slice(&[0x1f, b'x', 0, 0, 0]);
    let mut over_frame = (1u32 << 20).to_le_bytes().to_vec(); // 1 MiB > max_frame_size
    over_frame.extend_from_slice(&[0x1f, b'x', 0, 0, 0]);
    let hostile: [(&str, Vec<u8>, &str); 4] = [
        ("no header", vec![1, 2], "shorter than its header"),
        ("a 4 GiB claim", huge_claim, "more than max_frame_size"),
        ("more than a frame", over_frame, "more than max_frame_size"),
        (
            "not LZ4",
            [&100u32.to_le_bytes()[..], &[0xff; 40]].concat(),
            "corrupt",
        ),
    ];
    for (seq, (what, payload, reason)) in (1u64..).zip(hostile) {
        s.write_all(&compressed_frame(&me, seq, &payload))
            .expect("write");
        let answer = read_raw_frame(&mut s).unwrap_or_else(|e| panic!("{what}: no answer: {e}"));
        assert_eq!(answer[5], FrameKind::FailAck as u8, "{what}: refused");
        let why: Reason = decode_body(&answer[HEADER_LEN..]).expect("a reason");
        assert!(why.reason.contains(reason), "{what}: {}", why.reason);
    }
    // The same connection then carries a good compressed message.
    let good = cart(100);
    let packed = tribecast::wire::compress::compress(&good, 0).expect("compressible");
    s.write_all(&compressed_frame(&me, 5, &packed))
        .expect("write");
    let answer = read_raw_frame(&mut s).expect("answer");
    assert_eq!(answer[5], FrameKind::Ack as u8, "the good message is acked");
    wait_for("delivered", LIMIT, || inbox.len() == 1);
    assert_eq!(inbox.messages.lock()[0].1, good, "delivered decompressed");
}
