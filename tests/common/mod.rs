//! Helpers shared by the integration tests: loopback channels and waiting with a deadline.
#![allow(dead_code)]

use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tribecast::{
    ChannelConfig, ChannelMessage, GroupChannel, Member, MembershipListener, StaticMember,
};

pub fn init_logs() {
    let _ = env_logger::builder().is_test(true).try_init();
}

/// Waits until `cond` holds, failing the test with `what` after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// What a listener received: (sender name, payload).
#[derive(Default)]
pub struct Inbox {
    pub messages: Mutex<Vec<(String, Vec<u8>)>>,
}

impl Inbox {
    pub fn len(&self) -> usize {
        self.messages.lock().len()
    }
}

pub fn collecting(ch: &GroupChannel) -> Arc<Inbox> {
    let inbox = Arc::new(Inbox::default());
    let i = inbox.clone();
    ch.add_channel_listener(Arc::new(move |m: &ChannelMessage<'_>| {
        i.messages
            .lock()
            .push((m.from.name.clone(), m.payload.to_vec()));
        Ok(())
    }));
    inbox
}

/// Membership events as strings: "+name" and "-name".
#[derive(Default)]
pub struct Events(pub Mutex<Vec<String>>);

impl MembershipListener for Events {
    fn member_added(&self, m: &Member) {
        self.0.lock().push(format!("+{}", m.name));
    }
    fn member_disappeared(&self, m: &Member) {
        self.0.lock().push(format!("-{}", m.name));
    }
}

impl Events {
    pub fn has(&self, e: &str) -> bool {
        self.0.lock().iter().any(|x| x == e)
    }
}

pub fn started(name: &str) -> GroupChannel {
    let ch = GroupChannel::new(ChannelConfig::loopback(name)).expect("valid config");
    ch.start().expect("start");
    ch
}

/// A started channel that lists `peers` as static members.
pub fn started_with_peers(name: &str, peers: &[&GroupChannel]) -> GroupChannel {
    let mut cfg = ChannelConfig::loopback(name);
    cfg.static_members = peers
        .iter()
        .map(|p| StaticMember {
            addr: p.local_member().expect("running").addr,
            unique_id: None,
        })
        .collect();
    let ch = GroupChannel::new(cfg).expect("valid config");
    ch.start().expect("start");
    ch
}

/// A loopback config (port 0) that lists `peers` as static members; build and start it yourself,
/// e.g. to add listeners before the first heartbeat probes the peers.
pub fn config_with_peers(name: &str, peers: &[&GroupChannel]) -> ChannelConfig {
    let mut cfg = ChannelConfig::loopback(name);
    cfg.static_members = peers
        .iter()
        .map(|p| StaticMember {
            addr: p.local_member().expect("running").addr,
            unique_id: None,
        })
        .collect();
    cfg
}

/// A small deterministic PRNG (SplitMix64) for test data: no `rand` crate, same seed same bytes.
#[derive(Clone)]
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Appends `n` pseudo-random bytes to `out`.
    pub fn fill(&mut self, out: &mut Vec<u8>, n: usize) {
        let end = out.len() + n;
        while out.len() < end {
            let w = self.next_u64().to_le_bytes();
            let take = (end - out.len()).min(8);
            out.extend_from_slice(&w[..take]);
        }
    }
}

/// Like [`wait_for`], but returns whether `cond` came true within `limit` instead of failing, for
/// tests that report their own diagnostics.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
