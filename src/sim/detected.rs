//! The membership half of a simulated member, embeddable in a session manager's node: the real
//! failure detector ([`MembershipNode`]: `MembershipState`, heartbeat datagrams, pings and TCP
//! verification with the real codecs) sharing the node's network with the manager's traffic,
//! and feeding the manager's member list the way production's cluster listener does.
//!
//! A manager node that embeds a [`Detector`] (`BackupNode::detected`, …) hands it every input
//! first; the detector takes what is its own and says so:
//! - datagrams are all the detector's (the managers send none);
//! - timers at or above [`TIMER_BASE`] are the detector's;
//! - a connection the detector opened is known to it ([`MembershipNode::owns`]);
//! - an accepted connection is classified by its first frame, as the one listening port of a
//!   real member does: a `Handshake` opens a membership connection (a ping or a verification)
//!   unless it names a manager lane (`frame_lanes`), anything else is the manager's (its data
//!   frames). Until a whole frame has arrived the
//!   bytes wait here.
//!
//! What the detector announces (`Added`, `Disappeared`, restarts as gone-and-back) comes out
//! as [`ViewEvent`]s, in order, each with the member list as it is right after it. The manager
//! node applies them exactly as `impl MembershipListener for Listener` in `cluster.rs` feeds
//! `ClusterManager`: `member_added(m)` then `members_changed(list)` for an addition,
//! `members_changed(list)` for a disappearance. The list is the only source of the manager's
//! view: the test sets none.

use super::frame_lanes::is_manager_lane;
use super::membership_node::{EventKind, MembershipNode, MembershipSimConfig, TIMER_BASE};
use super::net::{CloseReason, ConnId, NodeId};
use super::{Ctx, Node, SimRng};
use crate::wire::frame::FrameKind;
use crate::wire::{decode_body, parse_frame, Handshake};
use std::collections::{BTreeMap, BTreeSet};

/// Largest first frame waited for on an accepted connection before it is classified.
const MAX_FIRST_FRAME: u32 = 16 << 20;

/// A change of the member list the detector announced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ViewEvent {
    /// `member` was added; `list` is the member list right after.
    Added {
        member: NodeId,
        list: BTreeSet<NodeId>,
    },
    /// `member` disappeared (or restarted: it comes back with a later `Added`).
    Gone {
        member: NodeId,
        why: String,
        list: BTreeSet<NodeId>,
    },
}

impl ViewEvent {
    /// The member list right after the event.
    pub fn list(&self) -> &BTreeSet<NodeId> {
        match self {
            ViewEvent::Added { list, .. } | ViewEvent::Gone { list, .. } => list,
        }
    }
}

/// Where an input went.
pub enum Routed {
    /// The detector's; these are the member list changes it caused (maybe none).
    Taken(Vec<ViewEvent>),
    /// The manager's.
    Pass,
    /// An accepted connection found to be the manager's: accept it from `from`, then take
    /// `bytes` (everything it carried so far).
    Accepted { from: NodeId, bytes: Vec<u8> },
}

/// The membership detector of a member, embedded in its manager's node.
pub struct Detector {
    pub node: MembershipNode,
    /// Accepted connections not classified yet: who opened it and the bytes so far.
    undecided: BTreeMap<ConnId, (NodeId, Vec<u8>)>,
    /// Journal events already turned into [`ViewEvent`]s.
    cursor: usize,
    /// The member list announced so far (the channel's list), without this member.
    listed: BTreeSet<NodeId>,
}

impl Detector {
    pub fn new(id: NodeId, cfg: &MembershipSimConfig, rng: &mut SimRng) -> Detector {
        Detector {
            node: MembershipNode::new(id, cfg, rng),
            undecided: BTreeMap::new(),
            cursor: 0,
            listed: BTreeSet::new(),
        }
    }

    /// The detector after a crash of its process: a new incarnation knowing nobody (its
    /// journal, the observer's record, is kept).
    pub fn restarted(&self, rng: &mut SimRng) -> Detector {
        let node = self.node.restarted(rng);
        Detector {
            cursor: node.journal.events.len(),
            node,
            undecided: BTreeMap::new(),
            listed: BTreeSet::new(),
        }
    }

    /// The member list announced so far, without this member.
    pub fn listed(&self) -> &BTreeSet<NodeId> {
        &self.listed
    }

    pub fn on_start(&mut self, ctx: &mut Ctx<'_>) -> Vec<ViewEvent> {
        self.node.on_start(ctx);
        self.drain()
    }

    /// Every accepted connection waits here until its first frame tells whose it is.
    pub fn on_accept(&mut self, conn: ConnId, from: NodeId) {
        self.undecided.insert(conn, (from, Vec::new()));
    }

    pub fn on_bytes(&mut self, conn: ConnId, bytes: &[u8], ctx: &mut Ctx<'_>) -> Routed {
        if let Some((from, buf)) = self.undecided.get_mut(&conn) {
            buf.extend_from_slice(bytes);
            let from = *from;
            let membership = match parse_frame(buf, MAX_FIRST_FRAME) {
                Ok(None) => return Routed::Taken(Vec::new()),
                // The managers' lanes shake hands too (with `Frames::retry_lanes`): their
                // handshake names a manager lane.
                Ok(Some((f, _))) => {
                    f.header.kind == FrameKind::Handshake
                        && !decode_body::<Handshake>(f.body).is_ok_and(|h| is_manager_lane(h.lane))
                }
                // Nonsense: the manager's reader fails on it as it did without a detector.
                Err(_) => false,
            };
            let Some((_, buf)) = self.undecided.remove(&conn) else {
                return Routed::Pass;
            };
            if !membership {
                return Routed::Accepted { from, bytes: buf };
            }
            self.node.on_accept(conn, from, ctx);
            self.node.on_bytes(conn, &buf, ctx);
            return Routed::Taken(self.drain());
        }
        if self.node.owns(conn) {
            self.node.on_bytes(conn, bytes, ctx);
            return Routed::Taken(self.drain());
        }
        Routed::Pass
    }

    /// `None`: the manager's connection.
    pub fn on_closed(
        &mut self,
        conn: ConnId,
        why: CloseReason,
        ctx: &mut Ctx<'_>,
    ) -> Option<Vec<ViewEvent>> {
        if self.undecided.remove(&conn).is_some() {
            return Some(Vec::new());
        }
        if !self.node.owns(conn) {
            return None;
        }
        self.node.on_closed(conn, why, ctx);
        Some(self.drain())
    }

    /// `None`: the manager's timer.
    pub fn on_timer(&mut self, token: u64, ctx: &mut Ctx<'_>) -> Option<Vec<ViewEvent>> {
        if token < TIMER_BASE {
            return None;
        }
        self.node.on_timer(token, ctx);
        Some(self.drain())
    }

    pub fn on_datagram(&mut self, from: NodeId, bytes: &[u8], ctx: &mut Ctx<'_>) -> Vec<ViewEvent> {
        self.node.on_datagram(from, bytes, ctx);
        self.drain()
    }

    /// The announcements made since the last call, as member list changes.
    fn drain(&mut self) -> Vec<ViewEvent> {
        let events = &self.node.journal.events;
        let mut out = Vec::new();
        for e in &events[self.cursor.min(events.len())..] {
            match &e.kind {
                EventKind::Added => {
                    self.listed.insert(e.member);
                    out.push(ViewEvent::Added {
                        member: e.member,
                        list: self.listed.clone(),
                    });
                }
                EventKind::Disappeared(why) => {
                    self.listed.remove(&e.member);
                    out.push(ViewEvent::Gone {
                        member: e.member,
                        why: why.clone(),
                        list: self.listed.clone(),
                    });
                }
                EventKind::StillAlive => {}
            }
        }
        self.cursor = events.len();
        out
    }
}
