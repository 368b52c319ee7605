//! A member's asynchronous lane: frames from the dispatch thread, coalesced into large writes on
//! one connection, in queue order.
//!
//! A member that stops reading makes writes time out. That is not a broken connection: the lane
//! keeps the connection and the unwritten frames (whole frames, in order) and carries on at the
//! next flush, waiting only briefly while the member is stalled so other members are not held
//! up. Memory is bounded: once `max_queued_bytes_per_member` are waiting, further messages to the
//! member are dropped and counted. Only an I/O error (the member closed or reset the connection,
//! so it reads nothing more from it) makes the lane reconnect, on the same lane id, and resend
//! the frames its `TxSession` still holds (not fully written, written by the write that failed,
//! or waiting for an ack or behind one); the receiver drops any it already had. Frames released
//! before a connection breaks may be lost: asynchronous sends ask for no ack.

use super::lane::{Identity, Lane, Reply};
use super::tx_session::AckMatch;
use crate::error::{FaultyMember, SendFailure};
use crate::member::Member;
use crate::metrics::MemberCounters;
use crate::wire::DataBody;
use log::{debug, info, warn};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a flush waits on a member that is already stalled.
const STALLED_WAIT: Duration = Duration::from_millis(1);

/// A frame's place in the lane's buffer (the lane's session holds its number and ack state).
struct Pending {
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
    /// Its session holds the frames, in queue order; a frame asking for an ack stays (to be
    /// resent after a reconnect) until acked.
    lane: Lane<Pending>,
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
            // Retries are bounded per flush (see `flush`), not per frame; no window: every
            // frame is written, then the acks asked for are read.
            lane: Lane::with_session(lane_id, u32::MAX, usize::MAX),
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
        !self.lane.tx.is_empty() || self.dropped > 0
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
        if self.lane.wbuf.len() + body.len() > limit && !self.lane.tx.is_empty() {
            self.dropped += 1;
            self.counters.dropped();
            return false;
        }
        let seq = self.lane.stamp(id, id.number(), flags, body, crc);
        let ack = flags & crate::wire::frame::FLAG_ACK != 0;
        let pending = Pending {
            payload: body.payload.len() as u32,
            end: self.lane.wbuf.len(),
        };
        self.lane.tx.push(seq, ack, pending);
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
                        self.lane.tx.frames().len(),
                        self.unwritten()
                    );
                    self.stalled = true;
                    report.stalled = true;
                }
            }
            Err(Some(reason)) => {
                // Give up on everything waiting: the member cannot be reached.
                let n = self.lane.tx.drain().count() as u64;
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
            // again on the new connection (the session starts it over): the old one is gone at
            // the receiver too, which drops the frames it already had and acks them again.
            self.written = 0;
            self.lane.connect(&self.member, id, deadline, timeout)?;
        }
        let result = self.lane.write_from(&mut self.written, deadline, timeout);
        self.settle(report);
        result?;
        while self.lane.tx.awaited().is_some() {
            let reply = self.lane.read_reply(deadline, timeout)?;
            let (seq, failure) = match reply {
                Reply::Ack(s) => (s, None),
                Reply::FailAck(s, reason) => (s, Some(reason)),
            };
            if self.lane.tx.on_ack(seq) == AckMatch::Stale {
                continue; // an answer to a frame of an earlier connection
            }
            if let Some(reason) = failure {
                warn!(
                    "Asynchronous message to [{}] failed in its listener: {reason}",
                    self.member
                );
            }
            self.settle(report);
        }
        Ok(())
    }

    /// Tells the session which frames are now fully written, then drops from the front of the
    /// buffer the frames that are done: written, and acked if they asked for it.
    fn settle(&mut self, report: &mut FlushReport) {
        let tx = &mut self.lane.tx;
        let written = self.written;
        // Not if the connection broke: those frames go again on the next one.
        tx.mark_written(|p| p.end <= written);
        let mut done = 0;
        while tx
            .frames()
            .front()
            .is_some_and(|f| f.token.end <= self.written)
        {
            let Some(f) = tx.pop_done() else {
                break;
            };
            done = f.token.end;
            report.sent += 1;
            report.bytes += u64::from(f.token.payload);
        }
        if done > 0 {
            self.lane.drain_front(done);
            self.written -= done;
            for p in self.lane.tx.tokens_mut() {
                p.end -= done;
            }
        }
    }

    pub fn disconnect(&mut self) {
        self.lane.disconnect();
    }

    /// Waits until the member has handled every frame written on this connection: a read-test
    /// ping behind them, answered by the worker that handles the connection's frames in order.
    /// False, with nothing written, when the lane cannot carry it (as for the goodbye), or when
    /// no answer came in time.
    pub fn barrier(&mut self, id: &Identity, deadline: Instant, timeout: Duration) -> bool {
        if !self.lane.tx.may_say_goodbye() || !self.lane.is_connected() {
            return false;
        }
        let member = self.member.clone();
        self.lane.ping(&member, id, true, deadline, timeout).is_ok()
    }

    /// Says goodbye on this lane's connection, behind the frames already written on it, if
    /// everything queued went out on it (see `TxSession::may_say_goodbye`); then closes.
    /// Returns false, with nothing written, when the caller must say it on a connection of its
    /// own (no connection, or frames still held for a member that does not read), or when the
    /// write failed.
    pub fn say_goodbye(&mut self, deadline: Instant, timeout: Duration) -> bool {
        if !self.lane.tx.may_say_goodbye() || !self.lane.is_connected() {
            return false;
        }
        self.lane.send_leave(deadline, timeout)
    }

    pub fn faulty(&self, reason: SendFailure) -> FaultyMember {
        FaultyMember {
            id: self.member.id,
            member: Some(self.member.clone()),
            reason,
        }
    }
}
