//! The receiving side of a simulated member, built on the real receive path: one
//! [`RxSession`] per connection and one [`DedupTable`] per member, as the real receiver has.
//!
//! The "listener" processes each delivery at once and fails on the message ids it is told to,
//! so a synchronized-ack sender gets a `FailAck` for exactly those. `RxJournal` records what the
//! listener saw; like the sender's journal it survives a crash (the member's memory does not:
//! a restart brings a fresh dedup table).

use super::net::ConnId;
use super::Ctx;
use crate::member::{Member, MemberId};
use crate::transport::dedup::{DedupTable, Outcome, SyncOutcomes};
use crate::transport::rx_session::{RxClose, RxOutput, RxSession, RxSettings};
use crate::wire::frame::{self, FrameKind};
use crate::wire::{decode_body, encode_body, Envelope, Reason};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Receiver settings.
#[derive(Clone, Debug)]
pub struct RxConfig {
    pub cluster: String,
    pub max_frame_size: u32,
    pub dedup_capacity: usize,
}

/// A message the listener got.
#[derive(Clone, Debug)]
pub struct Received {
    pub from: MemberId,
    pub msg_id: u64,
    pub seq: u64,
    pub payload: Vec<u8>,
    /// Which life of the receiver got it (0, then +1 per restart).
    pub life: u32,
    /// The listener processed it without failing.
    pub listener_ok: bool,
}

/// The observer's record of a receiver.
#[derive(Clone, Debug, Default)]
pub struct RxJournal {
    pub received: Vec<Received>,
    counts: HashMap<(MemberId, u64), u32>,
    pub life: u32,
    /// Handshakes accepted.
    pub hellos: u64,
    /// Duplicate data frames the dedup table dropped.
    pub duplicates: u64,
    /// Reads that ended inside a frame (the rest came in a later chunk).
    pub partial_reads: u64,
    /// Why connections were closed by this receiver.
    pub closes: Vec<String>,
    /// Reasons of refused handshakes.
    pub refusals: Vec<String>,
    pub fail_acks: u64,
}

impl RxJournal {
    /// How many times the listener got message `msg_id` of `from`, over all lives.
    pub fn times_received(&self, from: MemberId, msg_id: u64) -> u32 {
        self.counts.get(&(from, msg_id)).copied().unwrap_or(0)
    }
}

#[derive(Default)]
struct RxConn {
    session: RxSession,
    /// Bytes read and not yet consumed (a partial frame).
    buf: Vec<u8>,
}

/// The receiving side of one member.
pub struct RxSide {
    cfg: RxConfig,
    member: Member,
    dedup: DedupTable,
    outcomes: SyncOutcomes,
    conns: BTreeMap<ConnId, RxConn>,
    out: RxOutput,
    /// Message ids the listener fails on.
    failing: BTreeSet<u64>,
    pub journal: RxJournal,
}

impl RxSide {
    pub fn new(cfg: RxConfig, member: Member) -> RxSide {
        RxSide {
            dedup: DedupTable::new(cfg.dedup_capacity),
            outcomes: SyncOutcomes::new(cfg.dedup_capacity),
            cfg,
            member,
            conns: BTreeMap::new(),
            out: RxOutput::default(),
            failing: BTreeSet::new(),
            journal: RxJournal::default(),
        }
    }

    /// After a crash: same member, config and listener; fresh dedup table and connections.
    pub fn restarted(&self) -> RxSide {
        let mut rx = RxSide::new(self.cfg.clone(), self.member.clone());
        rx.failing = self.failing.clone();
        rx.journal = self.journal.clone();
        rx.journal.life += 1;
        rx
    }

    /// Makes the listener fail on these message ids (of any sender).
    pub fn fail_listener_on(&mut self, msg_ids: impl IntoIterator<Item = u64>) {
        self.failing.extend(msg_ids);
    }

    pub fn on_accept(&mut self, conn: ConnId) {
        self.conns.insert(conn, RxConn::default());
    }

    pub fn on_closed(&mut self, conn: ConnId) {
        self.conns.remove(&conn);
    }

    pub fn on_bytes(&mut self, conn: ConnId, bytes: &[u8], ctx: &mut Ctx<'_>) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.buf.extend_from_slice(bytes);
        self.out.clear();
        let settings = RxSettings {
            cluster: &self.cfg.cluster,
            local: &self.member,
            // Unknown (0): the simulated senders do not look for restarts in the answer.
            incarnation: 0,
            max_frame_size: self.cfg.max_frame_size,
            key: None,
        };
        let result = c
            .session
            .on_bytes(&mut c.buf, &settings, &mut self.dedup, &mut self.out);
        let j = &mut self.journal;
        j.duplicates += self.out.duplicates;
        j.hellos += u64::from(self.out.hello.is_some());
        // Replies from the session (handshake answer, use-acks, acks of duplicates) go first,
        // then the synchronized acks of what the listener just processed.
        let mut reply = std::mem::take(&mut self.out.reply);
        let mut close = result.as_ref().err().map(ToString::to_string);
        for d in &self.out.deliveries {
            let env: Envelope<'_> = match decode_body(&c.buf[d.start..d.end]) {
                Ok(env) => env,
                Err(e) => {
                    close = Some(format!("undecodable envelope: {e}"));
                    break;
                }
            };
            let ok = !self.failing.contains(&env.msg_id);
            *j.counts.entry((env.sender, env.msg_id)).or_default() += 1;
            j.received.push(Received {
                from: env.sender,
                msg_id: env.msg_id,
                seq: d.seq,
                payload: env.payload.to_vec(),
                life: j.life,
                listener_ok: ok,
            });
            if d.sync_ack {
                let result = if ok {
                    Ok(())
                } else {
                    j.fail_acks += 1;
                    Err(format!("listener failed on message {}", env.msg_id))
                };
                if let Some(key) = c.session.lane_key() {
                    // The listener runs at once here, so begin and finish come together.
                    self.outcomes.begin(key, d.seq);
                    self.outcomes.finish(key, d.seq, &result);
                }
                sync_answer(&mut reply, d.seq, &result);
            }
        }
        // Retries of synchronized-ack frames get the original's outcome.
        if let Some(key) = c.session.lane_key() {
            for &seq in &self.out.reacks {
                let result = match self.outcomes.lookup(&key, seq) {
                    Outcome::Done(r) => r,
                    Outcome::Pending | Outcome::Unknown => Err("outcome unknown".into()),
                };
                sync_answer(&mut reply, seq, &result);
            }
        }
        ctx.send(conn, reply);
        match (result, close) {
            (Ok(used), None) => {
                c.buf.drain(..used);
                j.partial_reads += u64::from(!c.buf.is_empty());
            }
            (result, why) => {
                if let Err(RxClose::Refused(reason)) = result {
                    j.refusals.push(reason);
                }
                j.closes.push(why.unwrap_or_default());
                ctx.close(conn);
                self.conns.remove(&conn);
            }
        }
    }
}

fn sync_answer(reply: &mut Vec<u8>, seq: u64, result: &Result<(), String>) {
    match result {
        Ok(()) => frame::encode_frame(reply, FrameKind::Ack, 0, seq, &[]),
        Err(reason) => {
            let body = encode_body(&Reason {
                reason: reason.clone(),
            });
            frame::encode_frame(reply, FrameKind::FailAck, 0, seq, &body);
        }
    }
}
