use super::*;
use crate::member::MemberId;
use crate::wire::frame::parse_frame;
use std::net::{Ipv4Addr, SocketAddr};

fn member(n: u8) -> Member {
    Member {
        id: MemberId([n; 16]),
        name: format!("m{n}"),
        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 4000 + u16::from(n))),
        domain: String::new(),
    }
}

/// A session whose connection is ready, holding frames `seqs` (`ack` for all).
fn ready(max_tries: u32, window: usize, seqs: &[u64], ack: bool) -> TxSession<u64> {
    let mut s = TxSession::new(7, max_tries, window);
    for &q in seqs {
        s.push(q, ack, q * 10);
    }
    accept(&mut s);
    s
}

fn accept(s: &mut TxSession<u64>) {
    s.connecting();
    let body = encode_body(&HandshakeAccept {
        member: member(2),
        incarnation: 9,
    });
    let (m, inc) = s
        .on_handshake_answer(FrameKind::HandshakeAccept, 0, &body, false)
        .expect("accepted");
    assert_eq!((m, inc), (member(2), 9));
    assert_eq!(s.phase(), TxPhase::Ready);
}

/// Writes what the session allows; returns the numbers written.
fn write_all(s: &mut TxSession<u64>) -> Vec<u64> {
    let mut out = Vec::new();
    while let Some(f) = s.next_write() {
        out.push(f.seq);
    }
    out
}

#[test]
fn hello_is_a_handshake_frame_for_the_lane() {
    let s: TxSession<()> = TxSession::new(5, 2, 1);
    let mut out = Vec::new();
    s.write_hello("c", &member(1), 42, &mut out);
    let (f, used) = parse_frame(&out, 1 << 20).expect("frame").expect("whole");
    assert_eq!((f.header.kind, used), (FrameKind::Handshake, out.len()));
    let hs: Handshake = decode_body(f.body).expect("handshake");
    assert_eq!((hs.cluster.as_str(), hs.lane, hs.incarnation), ("c", 5, 42));
    assert_eq!(hs.member, member(1));
}

#[test]
fn nothing_is_written_before_the_handshake_is_accepted() {
    let mut s = TxSession::new(1, 2, 4);
    s.push(1, true, 0u64);
    assert!(s.wants_connection());
    assert!(s.next_write().is_none());
    s.connecting();
    assert!(!s.wants_connection());
    assert!(s.next_write().is_none());
    let refuse = encode_body(&Reason {
        reason: "other cluster".into(),
    });
    let r = s.on_handshake_answer(FrameKind::HandshakeRefuse, 0, &refuse, false);
    assert!(matches!(r, Err(SendFailure::Refused(ref m)) if m == "other cluster"));
    assert_eq!(s.phase(), TxPhase::Handshake);
    // A sealed answer to a plain handshake: the member has a key we lack.
    let r = s.on_handshake_answer(FrameKind::HandshakeAccept, FLAG_SEALED, &[], false);
    assert!(matches!(r, Err(SendFailure::Refused(_))));
    let r = s.on_handshake_answer(FrameKind::Ack, 0, &[], false);
    assert!(matches!(r, Err(SendFailure::Protocol(_))));
}

#[test]
fn challenge_answers() {
    let s: TxSession<()> = TxSession::new(1, 2, 1);
    let nonce = [3u8; HANDSHAKE_NONCE_LEN];
    assert_eq!(
        s.on_challenge(FrameKind::Challenge, FLAG_SEALED, &nonce)
            .expect("nonce"),
        nonce
    );
    assert!(matches!(
        s.on_challenge(FrameKind::Challenge, FLAG_SEALED, &nonce[1..]),
        Err(SendFailure::Protocol(_))
    ));
    assert!(matches!(
        s.on_challenge(FrameKind::Challenge, 0, &nonce),
        Err(SendFailure::Protocol(_))
    ));
    assert!(matches!(
        s.on_challenge(FrameKind::HandshakeAccept, 0, &[]),
        Err(SendFailure::Refused(_))
    ));
}

#[test]
fn the_window_bounds_frames_waiting_for_acks_and_order_holds() {
    let mut s = ready(2, 2, &[1, 2, 3], true);
    assert_eq!(write_all(&mut s), vec![1, 2]);
    assert_eq!((s.unacked(), s.awaited()), (2, Some(1)));
    // A stale ack (a number not waiting) changes nothing.
    assert_eq!(s.on_ack(9), AckMatch::Stale);
    assert_eq!(s.on_ack(1), AckMatch::Frame(0));
    assert_eq!(s.on_ack(1), AckMatch::Stale, "settled once");
    assert_eq!(s.pop_done().map(|f| f.token), Some(10));
    assert_eq!(write_all(&mut s), vec![3]);
    // 3's ack overtakes 2's: 3 is settled but released only after 2.
    assert_eq!(s.on_ack(3), AckMatch::Frame(1));
    assert!(s.pop_done().is_none());
    assert_eq!(s.awaited(), Some(2));
    assert_eq!(s.on_ack(2), AckMatch::Frame(0));
    let released: Vec<u64> = std::iter::from_fn(|| s.pop_done()).map(|f| f.seq).collect();
    assert_eq!(released, vec![2, 3]);
    assert!(s.is_empty() && s.awaited().is_none());
}

#[test]
fn frames_without_acks_are_released_once_written() {
    let mut s = ready(2, 1, &[1, 2], false);
    assert!(s.pop_done().is_none(), "not written yet");
    assert_eq!(write_all(&mut s), vec![1, 2]);
    assert_eq!(s.awaited(), None);
    assert_eq!(std::iter::from_fn(|| s.pop_done()).count(), 2);
}

#[test]
fn a_broken_connection_resends_under_the_same_numbers_until_tries_run_out() {
    let mut s = ready(2, 4, &[5, 6], true);
    assert_eq!(write_all(&mut s), vec![5, 6]);
    s.disconnected();
    assert_eq!(s.phase(), TxPhase::Closed);
    assert!(!s.has_failed());
    assert!(s.wants_connection());
    accept(&mut s);
    assert_eq!(write_all(&mut s), vec![5, 6], "same numbers again");
    assert!(s.frames().iter().all(|f| f.writes == 2 && f.tries == 1));
    assert_eq!(s.on_ack(5), AckMatch::Frame(0));
    s.disconnected();
    // 5 was acked: it costs nothing; 6 used its second try and fails.
    assert!(s.has_failed());
    assert!(s.next_write().is_none());
    assert_eq!(s.pop_failed().map(|f| (f.seq, f.tries)), Some((6, 2)));
    assert!(s.pop_failed().is_none());
    assert_eq!(s.pop_done().map(|f| f.seq), Some(5));
    assert!(s.is_empty() && !s.wants_connection());
}

#[test]
fn a_connection_lost_before_the_handshake_costs_every_frame_a_try() {
    let mut s = TxSession::new(1, 2, 1);
    s.push(1, true, 0u64);
    s.push(2, false, 0);
    s.connecting();
    s.disconnected();
    assert!(s.frames().iter().all(|f| f.tries == 1 && f.writes == 0));
    s.connecting();
    s.disconnected();
    let failed: Vec<u64> = std::iter::from_fn(|| s.pop_failed())
        .map(|f| f.seq)
        .collect();
    assert_eq!(failed, vec![1, 2]);
    // Closing without a connection costs nothing.
    s.push(3, true, 0);
    s.disconnected();
    assert_eq!(s.frames()[0].tries, 0);
}

#[test]
fn frames_behind_a_waiting_one_are_written_again_and_charged() {
    let mut s = ready(3, 1, &[], true);
    s.push(1, true, 0);
    s.push(2, false, 0);
    assert_eq!(write_all(&mut s), vec![1, 2]);
    assert!(s.pop_done().is_none(), "2 waits behind 1");
    s.disconnected();
    accept(&mut s);
    assert_eq!(write_all(&mut s), vec![1, 2]);
    assert!(s.frames().iter().all(|f| f.tries == 1));
}

#[test]
fn an_acked_frame_is_not_counted_as_written_again() {
    let mut s = ready(3, 4, &[1], true);
    s.push(2, true, 0);
    write_all(&mut s);
    assert_eq!(s.on_ack(2), AckMatch::Frame(1));
    s.disconnected();
    accept(&mut s);
    let again: Vec<(u64, bool, u32)> =
        std::iter::from_fn(|| s.next_write().map(|f| (f.seq, f.acked, f.writes))).collect();
    assert_eq!(again, vec![(1, false, 2), (2, true, 1)]);
    assert_eq!(s.unacked(), 1);
    assert_eq!(s.on_ack(2), AckMatch::Stale, "its answer again is stale");
}

#[test]
fn drain_gives_up_on_everything() {
    let mut s = ready(2, 4, &[1, 2, 3], true);
    write_all(&mut s);
    let all: Vec<u64> = s.drain().map(|f| f.seq).collect();
    assert_eq!(all, vec![1, 2, 3]);
    assert!(s.is_empty() && s.awaited().is_none());
    s.push(4, true, 0);
    assert_eq!(write_all(&mut s), vec![4]);
}

#[test]
fn own_numbering_rises_and_helpers() {
    let mut n: TxSession<()> = TxSession::new(1, 0, 0);
    assert_eq!((n.next_seq(), n.next_seq()), (1, 2));
    assert!(is_retriable(&SendFailure::Io("x".into())));
    assert!(!is_retriable(&SendFailure::Timeout(Duration::from_secs(1))));
    let t = Instant::now();
    assert_eq!(time_left(t, t + Duration::from_millis(1)), None);
    assert_eq!(
        time_left(t + Duration::from_millis(5), t),
        Some(Duration::from_millis(5))
    );
    // At least one try and a window of one.
    let mut s = ready(0, 0, &[1, 2], true);
    assert_eq!(write_all(&mut s), vec![1]);
    s.disconnected();
    assert_eq!(s.pop_failed().map(|f| f.seq), Some(1));
}

#[test]
fn mark_written_counts_what_the_owner_wrote() {
    let mut s = ready(2, 1, &[1, 2, 3], true);
    s.mark_written(|&t| t <= 20);
    assert_eq!((s.written(), s.unacked(), s.awaited()), (2, 2, Some(1)));
    assert_eq!(s.on_ack(2), AckMatch::Frame(1));
    s.disconnected();
    // Not without a ready connection.
    s.mark_written(|_| true);
    assert_eq!(s.written(), 0);
    accept(&mut s);
    s.mark_written(|_| true);
    assert_eq!(s.unacked(), 2, "2 was acked: not waited for again");
    let writes: Vec<u32> = s.frames().iter().map(|f| f.writes).collect();
    assert_eq!(writes, vec![2, 1, 1]);
}

#[test]
fn a_goodbye_follows_only_once_every_frame_is_released_on_a_ready_connection() {
    let mut s: TxSession<u64> = TxSession::new(3, 2, 4);
    assert!(!s.may_say_goodbye(), "no connection");
    s.push(1, false, 0);
    s.push(2, true, 0);
    s.connecting();
    assert!(!s.may_say_goodbye(), "handshake not answered");
    accept(&mut s);
    assert!(!s.may_say_goodbye(), "frames not written");
    assert_eq!(write_all(&mut s), vec![1, 2]);
    assert_eq!(s.pop_done().map(|f| f.seq), Some(1));
    assert!(!s.may_say_goodbye(), "frame 2 waits for its ack");
    assert_eq!(s.on_ack(2), AckMatch::Frame(0));
    assert_eq!(s.pop_done().map(|f| f.seq), Some(2));
    assert!(s.may_say_goodbye());
    s.disconnected();
    assert!(!s.may_say_goodbye(), "the connection is gone");
}

/// A send whose deadline passed is given up on once its connection is closed; the frames
/// behind it stay held and go out, under their numbers, on the next connection.
#[test]
fn frames_given_up_leave_the_others_held_and_only_without_a_connection() {
    let mut s = ready(5, 1, &[1, 2, 3], true);
    assert_eq!(write_all(&mut s), [1]);
    assert!(s.give_up(|t| *t <= 20).is_empty(), "the connection is open");
    s.disconnected();
    let gone: Vec<u64> = s.give_up(|t| *t <= 20).iter().map(|f| f.seq).collect();
    assert_eq!(gone, [1, 2]);
    assert!(!s.has_failed());
    assert!(s.wants_connection());
    accept(&mut s);
    assert_eq!(write_all(&mut s), [3]);
    assert_eq!(s.on_ack(3), AckMatch::Frame(0));
    assert_eq!(s.pop_done().map(|f| f.seq), Some(3));
    assert!(s.is_empty());
}

/// A frame out of tries that is also given up on leaves no failure counted behind.
#[test]
fn giving_up_on_a_failed_frame_clears_its_failure() {
    let mut s = ready(1, 1, &[1, 2], true);
    assert_eq!(write_all(&mut s), [1]);
    s.disconnected();
    assert!(s.has_failed());
    assert_eq!(s.give_up(|t| *t == 10).len(), 1);
    assert!(!s.has_failed());
    accept(&mut s);
    assert_eq!(write_all(&mut s), [2]);
}
