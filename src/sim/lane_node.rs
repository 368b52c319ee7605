//! A simulated member that sends and receives data frames (a [`TxSide`] and an [`RxSide`]),
//! and the invariants that lanes must keep.

use super::lane_rx::{RxConfig, RxSide};
use super::lane_tx::{Outcome, TxConfig, TxSide};
use super::net::{CloseReason, ConnId, NodeId};
use super::{Ctx, Node, Sim, SimRng};
use crate::member::{Member, MemberId};
use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};

/// Marks the ids of simulated members, so an id maps back to its node.
const ID_TAG: [u8; 8] = *b"tcsim\0\0\0";

/// The member record of node `id`: a fixed id (kept across restarts, like a configured
/// `uniqueId`), name `node<i>`, a loopback address that is never bound.
/// The members of `view` other than `me`, as the membership layer lists them to a manager.
pub fn sim_members(view: &std::collections::BTreeSet<NodeId>, me: NodeId) -> Vec<Member> {
    view.iter()
        .filter(|n| **n != me)
        .map(|n| sim_member(*n))
        .collect()
}

pub fn sim_member(id: NodeId) -> Member {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&(id.0 as u64).to_le_bytes());
    bytes[8..].copy_from_slice(&ID_TAG);
    Member {
        id: MemberId(bytes),
        name: format!("node{}", id.0),
        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 4000u16.wrapping_add(id.0 as u16))),
        domain: String::new(),
    }
}

/// The node a simulated member id belongs to.
pub fn node_of(id: &MemberId) -> Option<NodeId> {
    if id.0[8..] != ID_TAG {
        return None;
    }
    let mut n = [0u8; 8];
    n.copy_from_slice(&id.0[..8]);
    usize::try_from(u64::from_le_bytes(n)).ok().map(NodeId)
}

/// Settings of a lane member.
#[derive(Clone, Debug)]
pub struct LaneConfig {
    pub cluster: String,
    pub lanes: u32,
    pub window: usize,
    pub max_tries: u32,
    pub max_frame_size: u32,
    pub dedup_capacity: usize,
}

impl Default for LaneConfig {
    fn default() -> Self {
        LaneConfig {
            cluster: "tribecast-sim".into(),
            lanes: 1,
            window: 1,
            max_tries: 2,
            max_frame_size: 1 << 20,
            dedup_capacity: 1024,
        }
    }
}

/// A member: connections it opened belong to its sender, accepted ones to its receiver.
pub struct LaneNode {
    pub tx: TxSide,
    pub rx: RxSide,
}

impl LaneNode {
    pub fn new(id: NodeId, cfg: &LaneConfig, rng: &mut SimRng) -> LaneNode {
        let member = sim_member(id);
        let tx_cfg = TxConfig {
            cluster: cfg.cluster.clone(),
            lanes: cfg.lanes,
            window: cfg.window,
            max_tries: cfg.max_tries,
            max_frame_size: cfg.max_frame_size,
        };
        let rx_cfg = RxConfig {
            cluster: cfg.cluster.clone(),
            max_frame_size: cfg.max_frame_size,
            dedup_capacity: cfg.dedup_capacity,
        };
        LaneNode {
            tx: TxSide::new(tx_cfg, member.clone(), rng.next_u64()),
            rx: RxSide::new(rx_cfg, member),
        }
    }
}

impl Node for LaneNode {
    fn on_accept(&mut self, conn: ConnId, _from: NodeId, _ctx: &mut Ctx<'_>) {
        self.rx.on_accept(conn);
    }

    fn on_connected(&mut self, conn: ConnId, ctx: &mut Ctx<'_>) {
        self.tx.on_connected(conn, ctx);
    }

    fn on_bytes(&mut self, conn: ConnId, bytes: &[u8], ctx: &mut Ctx<'_>) {
        if self.tx.owns(conn) {
            self.tx.on_bytes(conn, bytes, ctx);
        } else {
            self.rx.on_bytes(conn, bytes, ctx);
        }
    }

    fn on_closed(&mut self, conn: ConnId, why: CloseReason, ctx: &mut Ctx<'_>) {
        if self.tx.owns(conn) {
            self.tx.on_closed(conn, why, ctx);
        } else {
            self.rx.on_closed(conn);
        }
    }

    fn restarted(&self, rng: &mut SimRng) -> LaneNode {
        LaneNode {
            tx: self.tx.restarted(rng.next_u64()),
            rx: self.rx.restarted(),
        }
    }
}

/// Invariant `lane-exactly-once-in-order`: every delivery is a message its sender sent to this
/// receiver, with the same bytes and sequence number; within one life of the receiver no message
/// is delivered twice, and on each lane (sender, incarnation, lane) sequence numbers rise.
///
/// Incremental: each check looks only at deliveries made since the previous one.
pub fn exactly_once_in_lane_order() -> impl FnMut(&Sim<LaneNode>) -> Result<(), String> {
    let mut cursor: HashMap<NodeId, usize> = HashMap::new();
    let mut seen: HashSet<(NodeId, u32, MemberId, u64)> = HashSet::new();
    let mut last_seq: HashMap<(NodeId, u32, MemberId, u64, u32), u64> = HashMap::new();
    move |sim| {
        for rx in sim.node_ids() {
            let received = &sim.node(rx).rx.journal.received;
            let from = cursor.insert(rx, received.len()).unwrap_or(0);
            for r in &received[from..] {
                let Some(sender) = node_of(&r.from) else {
                    return Err(format!("{rx} got a message from unknown member {}", r.from));
                };
                let Some(sent) = sim.node(sender).tx.journal.get(r.msg_id, rx) else {
                    return Err(format!(
                        "{rx} got message {} that {sender} never sent it",
                        r.msg_id
                    ));
                };
                if r.payload[..] != sent.payload[..] {
                    return Err(format!(
                        "{rx} got message {} of {sender} with other bytes ({} bytes, sent {})",
                        r.msg_id,
                        r.payload.len(),
                        sent.payload.len()
                    ));
                }
                if r.seq != sent.seq {
                    return Err(format!(
                        "{rx} got message {} of {sender} as seq {}, sent as {}",
                        r.msg_id, r.seq, sent.seq
                    ));
                }
                if !seen.insert((rx, r.life, r.from, r.msg_id)) {
                    return Err(format!(
                        "{rx} (life {}) got message {} of {sender} twice",
                        r.life, r.msg_id
                    ));
                }
                let lane = (rx, r.life, r.from, sent.incarnation, sent.lane);
                let last = last_seq.insert(lane, r.seq).unwrap_or(0);
                if r.seq <= last {
                    return Err(format!(
                        "{rx} got seq {} after seq {last} on lane {} of {sender}",
                        r.seq, sent.lane
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Invariant `acked-was-delivered`: a sender is told `Acked` only for a message its destination
/// has delivered (incremental over each sender's settled list).
pub fn acked_was_delivered() -> impl FnMut(&Sim<LaneNode>) -> Result<(), String> {
    let mut cursor: HashMap<NodeId, usize> = HashMap::new();
    move |sim| {
        for tx in sim.node_ids() {
            let journal = &sim.node(tx).tx.journal;
            let from = cursor.insert(tx, journal.settled.len()).unwrap_or(0);
            for &i in &journal.settled[from..] {
                let m = &journal.sent[i];
                if m.outcome != Outcome::Acked {
                    continue;
                }
                let member = sim_member(tx).id;
                if sim.node(m.dest).rx.journal.times_received(member, m.msg_id) == 0 {
                    return Err(format!(
                        "{tx} was acked message {} that {} never got",
                        m.msg_id, m.dest
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Installs the lane invariants on `sim`.
pub fn check_lanes(sim: &mut Sim<LaneNode>) {
    sim.invariant("lane-exactly-once-in-order", exactly_once_in_lane_order());
    sim.invariant("acked-was-delivered", acked_was_delivered());
}
