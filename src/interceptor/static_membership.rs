//! Static membership (Tribes' `StaticMembershipInterceptor` with `StaticMember`s).
//!
//! A listed member counts as present once a connection to it succeeds: when this node's probe
//! shakes hands with it. A member that connects to this node and shakes hands (same cluster name
//! and version) is added too, listed or not, as Tribes adds a member that announces its start:
//! so nodes listing each other find each other as soon as either starts. It disappears when it says it leaves
//! or when a connection to it fails. Absent members are probed again on every heartbeat.
//! (Liveness pings and failure verification come with the failure detector.)

use super::{ChannelInterceptor, PeerEvent, StackHandle};
use crate::config::StaticMember;
use crate::error::{ChannelError, SendFailure};
use log::{debug, warn};
use parking_lot::Mutex;
use std::time::Instant;

pub struct StaticMembershipInterceptor {
    members: Vec<StaticMember>,
    handle: Mutex<Option<StackHandle>>,
}

impl StaticMembershipInterceptor {
    pub fn new(members: Vec<StaticMember>) -> StaticMembershipInterceptor {
        StaticMembershipInterceptor {
            members,
            handle: Mutex::new(None),
        }
    }

    fn handle(&self) -> Option<StackHandle> {
        self.handle.lock().clone()
    }

    /// Probes every listed member that is not present.
    fn probe_absent(&self, handle: &StackHandle) {
        let present = handle.members();
        for s in &self.members {
            let here = present.iter().any(|m| match s.unique_id {
                Some(id) => m.id == id,
                None => m.addr == s.addr,
            });
            if here {
                continue;
            }
            match handle.probe(s.addr) {
                Ok(m) if s.unique_id.is_some_and(|id| id != m.id) => {
                    warn!("Static member {} answered with id {}, not the configured {:?}; ignoring it", s.addr, m.id, s.unique_id);
                }
                Ok(m) => handle.member_seen(&m),
                Err(e) => debug!("Static member {} not reachable: {e}", s.addr),
            }
        }
    }
}

impl ChannelInterceptor for StaticMembershipInterceptor {
    fn name(&self) -> &'static str {
        "StaticMembershipInterceptor"
    }

    fn start(&self, handle: StackHandle) -> Result<(), ChannelError> {
        *self.handle.lock() = Some(handle);
        Ok(())
    }

    fn stop(&self) {
        self.handle.lock().take();
    }

    fn peer_event(&self, event: &PeerEvent) {
        let Some(handle) = self.handle() else { return };
        match event {
            PeerEvent::Hello(m) => handle.member_seen(m),
            PeerEvent::Left(m) => handle.member_gone(m, "it left the group"),
            PeerEvent::SendFailed(m, SendFailure::Connect(e)) => {
                handle.member_gone(m, &format!("connect failed: {e}"))
            }
            _ => {}
        }
    }

    fn heartbeat(&self, _now: Instant) {
        if let Some(handle) = self.handle() {
            self.probe_absent(&handle);
        }
    }
}
