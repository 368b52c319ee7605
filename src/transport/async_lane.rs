//! A member's asynchronous lane: frames from the dispatch thread, coalesced into large writes on
//! one connection, in queue order.
//!
//! A member that stops reading makes writes time out. That is not a broken connection: the lane
//! keeps the connection and the unwritten frames (whole frames, in order) and carries on at the
//! next flush, waiting only briefly while the member is stalled so other members are not held
//! up. Memory is bounded: once `max_queued_bytes_per_member` are waiting, further messages to the
//! member are dropped and counted. Only an I/O error (the member closed or reset the connection,
//! so it reads nothing more from it) makes the lane reconnect, on the same lane id, and resend
//! the frames not fully written; the receiver drops any it already had. Frames fully written to
//! a connection that then breaks may be lost: asynchronous sends ask for no ack.

use super::lane::{Identity, Lane, Reply};
use crate::error::{FaultyMember, SendFailure};
use crate::member::Member;
use crate::metrics::MemberCounters;
use crate::wire::DataBody;
use log::{debug, info, warn};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a flush waits on a member that is already stalled.
const STALLED_WAIT: Duration = Duration::from_millis(1);

struct Pending {
    seq: u64,
    /// Asked for an ack: kept in the buffer (to resend after a reconnect) until acked.
    ack: bool,
    acked: bool,
    /// Payload bytes, for the member's counters once settled.
    payload: u32,
    /// Offset in the lane's buffer just past this frame.
    end: usize,
}

/// What a flush settled, for the caller's counters and logs.
#[derive(Default, Debug)]
pub struct FlushReport {
    /// Messages fully written (and acked, where asked).
    pub sent: u64,
    /// Their payload bytes.
    pub bytes: u64,
    /// Of the messages in `failed`, those dropped because the queue was full.
    pub dropped: u64,
    /// Messages given up on, and why.
    pub failed: Option<(u64, SendFailure)>,
    /// The member stopped reading (reported once per stall).
    pub stalled: bool,
    /// Reconnections after an I/O error.
    pub retries: u64,
    pub connects: u64,
}

pub struct AsyncLane {
    pub member: Member,
    lane: Lane,
    frames: VecDeque<Pending>,
    /// Bytes at the front of the buffer already written to the current connection.
    written: usize,
    stalled: bool,
    /// Messages dropped since the last report because too much was waiting.
    dropped: u64,
    pub counters: Arc<MemberCounters>,
}

impl AsyncLane {
    pub fn new(member: Member, lane_id: u32, counters: Arc<MemberCounters>) -> AsyncLane {
        AsyncLane {
            member,
            lane: Lane::new(lane_id),
            frames: VecDeque::new(),
            written: 0,
            stalled: false,
            dropped: 0,
            counters,
        }
    }

    /// Bytes not yet written.
    pub fn unwritten(&self) -> usize {
        self.lane.wbuf.len() - self.written
    }

    /// Bytes held: unwritten, or written and waiting for their ack.
    pub fn queued(&self) -> usize {
        self.lane.wbuf.len()
    }

    pub fn has_work(&self) -> bool {
        !self.frames.is_empty() || self.dropped > 0
    }

    /// Appends a frame; returns false (and counts it) when too much is already waiting.
    pub fn push(
        &mut self,
        id: &Identity,
        flags: u16,
        body: &DataBody<'_>,
        crc: &crc32fast::Hasher,
        limit: usize,
    ) -> bool {
        // Unwritten frames and written ones waiting for their ack count alike.
        if self.lane.wbuf.len() + body.len() > limit && !self.frames.is_empty() {
            self.dropped += 1;
            self.counters.dropped();
            return false;
        }
        let seq = self.lane.stamp(id, None, flags, body, crc);
        let ack = flags & crate::wire::frame::FLAG_ACK != 0;
        self.frames.push_back(Pending {
            seq,
            ack,
            acked: false,
            payload: body.payload.len() as u32,
            end: self.lane.wbuf.len(),
        });
        self.counters.set_queued(self.lane.wbuf.len());
        true
    }

    /// Writes what is waiting and collects the acks asked for, within `timeout` (or briefly, if
    /// the member is stalled).
    pub fn flush(&mut self, id: &Identity, timeout: Duration, retries: u32) -> FlushReport {
        let mut report = FlushReport::default();
        let wait = if self.stalled { STALLED_WAIT } else { timeout };
        let deadline = Instant::now() + wait;
        let mut retries_left = retries;
        let result = loop {
            match self.try_flush(id, deadline, timeout, &mut report) {
                Ok(()) => break Ok(()),
                Err(SendFailure::Timeout(_)) => break Err(None),
                Err(e @ SendFailure::Refused(_)) => break Err(Some(e)),
                Err(e) if retries_left == 0 => break Err(Some(e)),
                Err(e) => {
                    retries_left -= 1;
                    report.retries += 1;
                    debug!("Retrying asynchronous send to [{}] after: {e}", self.member);
                }
            }
        };
        match result {
            Ok(()) => {
                if self.stalled {
                    info!("Asynchronous sends to [{}] resumed", self.member);
                    self.stalled = false;
                }
            }
            Err(None) => {
                if !self.stalled {
                    warn!(
                        "Asynchronous sends to [{}] stalled: {} message(s), {} bytes waiting for it",
                        self.member,
                        self.frames.len(),
                        self.unwritten()
                    );
                    self.stalled = true;
                    report.stalled = true;
                }
            }
            Err(Some(reason)) => {
                // Give up on everything waiting: the member cannot be reached.
                let n = self.frames.len() as u64;
                self.frames.clear();
                self.lane.clear_wbuf();
                self.written = 0;
                self.lane.disconnect();
                self.stalled = false;
                report.failed = Some((n, reason));
            }
        }
        if self.dropped > 0 {
            let (n, reason) = report.failed.take().unwrap_or((0, SendFailure::QueueFull));
            report.failed = Some((n + self.dropped, reason));
            report.dropped = self.dropped;
            self.dropped = 0;
        }
        report
    }

    fn try_flush(
        &mut self,
        id: &Identity,
        deadline: Instant,
        timeout: Duration,
        report: &mut FlushReport,
    ) -> Result<(), SendFailure> {
        if !self.lane.is_connected() {
            report.connects += 1;
            // Everything still in the buffer (unwritten, or written and not yet acked) goes
            // again on the new connection: the old one is gone at the receiver too, which drops
            // the frames it already had and acks them again.
            self.written = 0;
            for f in &mut self.frames {
                f.acked = false;
            }
            self.lane.connect(&self.member, id, deadline, timeout)?;
        }
        let result = self.lane.write_from(&mut self.written, deadline, timeout);
        self.settle(report);
        result?;
        // Acks come in frame order on a connection; anything else is a stale answer.
        while let Some(want) = self
            .frames
            .iter()
            .find(|f| f.ack && !f.acked)
            .map(|f| f.seq)
        {
            let reply = self.lane.read_reply(deadline, timeout)?;
            let (seq, failure) = match reply {
                Reply::Ack(s) => (s, None),
                Reply::FailAck(s, reason) => (s, Some(reason)),
            };
            if seq != want {
                continue;
            }
            if let Some(reason) = failure {
                warn!(
                    "Asynchronous message to [{}] failed in its listener: {reason}",
                    self.member
                );
            }
            if let Some(f) = self.frames.iter_mut().find(|f| f.seq == want) {
                f.acked = true;
            }
            self.settle(report);
        }
        Ok(())
    }

    /// Drops from the front of the buffer the frames that are done: written, and acked if they
    /// asked for it.
    fn settle(&mut self, report: &mut FlushReport) {
        let mut done = 0;
        while let Some(f) = self.frames.front() {
            if f.end > self.written || (f.ack && !f.acked) {
                break;
            }
            done = f.end;
            report.sent += 1;
            report.bytes += u64::from(f.payload);
            self.frames.pop_front();
        }
        if done > 0 {
            self.lane.drain_front(done);
            self.written -= done;
            for f in &mut self.frames {
                f.end -= done;
            }
        }
    }

    pub fn disconnect(&mut self) {
        self.lane.disconnect();
    }

    pub fn faulty(&self, reason: SendFailure) -> FaultyMember {
        FaultyMember {
            id: self.member.id,
            member: Some(self.member.clone()),
            reason,
        }
    }
}
