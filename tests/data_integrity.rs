//! Data integrity over real sockets, after Tomcat's `TestDataIntegrity`: two senders each send
//! COUNT messages of random sizes (1 B to 64 KiB) to three receivers, concurrently, in each send
//! mode. Every receiver must get every message exactly once, intact and in per-sender order.
//!
//! Each payload is a pure function of (sender index, sequence number): a 5-byte header holding
//! both, then bytes from a PRNG seeded with them, cut to a length drawn from the same PRNG. A
//! receiver regenerates the payload it expects next from each sender and compares the bytes, so
//! a lost, duplicated, reordered, truncated or corrupted message is caught where it arrives.
//!
//! Sizes are log-uniform over 1 B..=64 KiB (each power of two as likely), and message 0 and 1 of
//! each sender are exactly 1 B and 64 KiB: both extremes and every size class are covered while
//! the average stays near 4 KiB, which keeps the three modes well under 20 s in release on two
//! busy cores. (Uniform sizes would average 32 KiB: 2 GB of loopback traffic per mode.)
//!
//! Run: `cargo test --release --test data_integrity`.

mod common;

use common::*;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tribecast::{ChannelMessage, GroupChannel, SendOptions};

/// Messages per sender, as in Tomcat's test. On two cores the three modes take about 3 s in
/// release (14 s with both cores busy) and 7 to 11 s in debug (17 s busy), so debug builds
/// keep the full count.
const COUNT: u32 = 10_000;
const SENDERS: usize = 2;
const RECEIVERS: usize = 3;
const MAX_SIZE: usize = 64 * 1024;
const SEED: u64 = 0x7472_6962_6563_6173; // "tribecas"
const LIMIT: Duration = Duration::from_secs(60);

/// The payload sender `s` sends as its message number `k`.
fn payload(s: u8, k: u32) -> Vec<u8> {
    let mut rng = SplitMix(SEED ^ (u64::from(s) << 32) ^ u64::from(k));
    let len = match k {
        0 => 1,
        1 => MAX_SIZE,
        _ => {
            let bits = rng.next_u64() % 17; // 0..=16
            1 + (rng.next_u64() % (1u64 << bits)) as usize // 1..=65536
        }
    };
    let mut p = Vec::with_capacity(len.max(5));
    p.push(s);
    p.extend_from_slice(&k.to_le_bytes());
    rng.fill(&mut p, len.saturating_sub(5));
    p.truncate(len);
    p
}

/// What one receiver checks: per sender, the number of the next message it must get.
struct Checker {
    next: Mutex<[u32; SENDERS]>,
    received: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Checker {
    fn on_message(&self, m: &ChannelMessage<'_>) {
        let s = match m.from.name.strip_prefix("sender-").map(str::parse::<usize>) {
            Some(Ok(s)) if s < SENDERS => s,
            _ => {
                self.error(format!("message from unexpected member {}", m.from));
                return;
            }
        };
        // One connection carries a sender's messages and one worker at a time drains it, so
        // this lock is not contended; it only makes the check independent of that.
        let k = {
            let mut next = self.next.lock();
            let k = next[s];
            next[s] += 1;
            k
        };
        self.received.fetch_add(1, Ordering::SeqCst);
        if k >= COUNT {
            self.error(format!(
                "sender {s}: extra message (#{k}, {} bytes)",
                m.payload.len()
            ));
            return;
        }
        let expected = payload(s as u8, k);
        if m.payload[..] != expected[..] {
            let got = match m.payload.get(..5) {
                Some(h) => format!(
                    "header says sender {} #{}",
                    h[0],
                    u32::from_le_bytes([h[1], h[2], h[3], h[4]])
                ),
                None => "too short for a header".into(),
            };
            self.error(format!(
                "sender {s}: expected #{k} ({} bytes), got {} bytes, {got}",
                expected.len(),
                m.payload.len()
            ));
        }
    }

    fn error(&self, e: String) {
        let mut errors = self.errors.lock();
        if errors.len() < 20 {
            errors.push(e);
        }
    }
}

fn run(opts: SendOptions) {
    init_logs();
    let started_at = Instant::now();
    let receivers: Vec<GroupChannel> = (0..RECEIVERS)
        .map(|i| started(&format!("receiver-{i}")))
        .collect();
    let checkers: Vec<Arc<Checker>> = receivers
        .iter()
        .map(|r| {
            let c = Arc::new(Checker {
                next: Mutex::new([0; SENDERS]),
                received: AtomicU64::new(0),
                errors: Mutex::new(Vec::new()),
            });
            let c2 = c.clone();
            r.add_channel_listener(Arc::new(move |m: &ChannelMessage<'_>| {
                c2.on_message(m);
                Ok(())
            }));
            c
        })
        .collect();
    let refs: Vec<&GroupChannel> = receivers.iter().collect();
    let senders: Vec<GroupChannel> = (0..SENDERS)
        .map(|i| started_with_peers(&format!("sender-{i}"), &refs))
        .collect();
    for s in &senders {
        wait_for("sender sees the 3 receivers", LIMIT, || {
            s.members().len() == RECEIVERS
        });
    }

    std::thread::scope(|scope| {
        for (i, s) in senders.iter().enumerate() {
            scope.spawn(move || {
                for k in 0..COUNT {
                    if let Err(e) = s.send_to_all(payload(i as u8, k), opts) {
                        panic!("sender {i}: send #{k} with {opts:?} failed: {e}");
                    }
                }
            });
        }
    });
    let sent_at = Instant::now();

    let total = u64::from(COUNT) * SENDERS as u64;
    if opts.wants_sync_ack() {
        // A synchronized-ack send returns once every receiver's listener processed it.
        for (r, c) in checkers.iter().enumerate() {
            assert_eq!(
                c.received.load(Ordering::SeqCst),
                total,
                "receiver {r}: sync-ack sends returned before the listener ran"
            );
        }
    }
    for (r, c) in checkers.iter().enumerate() {
        wait_for(&format!("receiver {r} gets all {total}"), LIMIT, || {
            c.received.load(Ordering::SeqCst) >= total || !c.errors.lock().is_empty()
        });
    }
    for (r, (c, ch)) in checkers.iter().zip(&receivers).enumerate() {
        let errors = c.errors.lock();
        assert!(errors.is_empty(), "receiver {r}: {errors:#?}");
        assert_eq!(*c.next.lock(), [COUNT; SENDERS], "receiver {r}");
        let stats = ch.receiver_stats().expect("running");
        assert_eq!(
            stats.messages_delivered.load(Ordering::SeqCst),
            total,
            "receiver {r}: messages handed to the listeners"
        );
    }
    for (i, s) in senders.iter().enumerate() {
        let (sent, failures) = s
            .with_sender_stats(|st| {
                (
                    st.messages_sent.load(Ordering::SeqCst),
                    st.failures.load(Ordering::SeqCst),
                )
            })
            .expect("running");
        assert_eq!(failures, 0, "sender {i}");
        assert_eq!(
            sent,
            total / SENDERS as u64 * RECEIVERS as u64,
            "sender {i}"
        );
    }
    eprintln!(
        "{opts:?}: {SENDERS}×{COUNT} messages to {RECEIVERS} receivers: sent in {:?}, all \
         checked after {:?}",
        sent_at - started_at,
        started_at.elapsed()
    );
}

#[test]
fn asynchronous_every_message_once_intact_in_order() {
    run(SendOptions::ASYNCHRONOUS);
}

#[test]
fn use_ack_every_message_once_intact_in_order() {
    run(SendOptions::USE_ACK);
}

#[test]
fn sync_ack_every_message_once_intact_in_order() {
    run(SendOptions::SYNC_ACK);
}
