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
