//! The sending side of one lane as a pure state machine: which frames are held, which go out on
//! the current connection, which ack settles which frame, what a broken connection costs, and
//! the handshake's bytes and answers. No sockets and no clock: the blocking lanes
//! (`lane.rs`, `async_lane.rs`) and the simulation (`sim/lane_tx.rs`) do the I/O and feed it.
//!
//! A frame keeps its sequence number for its whole life: on a new connection every frame still
//! held is written again under the same number, and the receiver's duplicate filter drops the
//! copies it already had (and acks them again). Each connection a frame was written on, or
//! waited on, that then broke costs it one try; a frame out of tries (`max_tries`, Tribes'
//! `maxRetryAttempts + 1`) fails. Frames leave in order: one is released once written (and
//! acked, if it asked for an ack) and every frame before it was released.

use crate::crypto::HANDSHAKE_NONCE_LEN;
use crate::error::SendFailure;
use crate::member::Member;
use crate::wire::frame::{self, FrameKind, FLAG_SEALED};
use crate::wire::{decode_body, encode_body, Handshake, HandshakeAccept, Reason};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Where the lane's connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxPhase {
    /// No connection.
    Closed,
    /// Connecting, or the handshake is not answered yet: nothing is written.
    Handshake,
    /// The handshake was accepted: frames go out.
    Ready,
}

/// One data frame held by a lane.
#[derive(Debug)]
pub struct TxFrame<T> {
    /// Its sequence number, the same on every connection it is written on.
    pub seq: u64,
    /// It asked for an ack: it is held (and written again on a new connection) until acked.
    pub ack: bool,
    /// Its ack (or fail-ack) came.
    pub acked: bool,
    /// Connections it was written on, or waited on, that then broke.
    pub tries: u32,
    /// Times it was written on a connection.
    pub writes: u32,
    /// The owner's handle on the frame (its bytes' place, its record, ...).
    pub token: T,
}

/// What an ack or fail-ack matched.
#[derive(Debug, PartialEq, Eq)]
pub enum AckMatch {
    /// It settles the frame at this position in [`TxSession::frames`].
    Frame(usize),
    /// No frame written and waiting has that number: an answer to an earlier frame.
    Stale,
}

/// The sending state of one lane (one outgoing connection at a time, to one member).
#[derive(Debug)]
pub struct TxSession<T> {
    lane: u32,
    max_tries: u32,
    /// Most frames asking for an ack written and not yet acked.
    window: usize,
    phase: TxPhase,
    /// Numbers handed out by [`TxSession::next_seq`].
    last_seq: u64,
    /// Held frames, in sequence order: the first `handed` were written on the current
    /// connection, the rest wait.
    frames: VecDeque<TxFrame<T>>,
    handed: usize,
    /// Of the handed frames, those that ask for an ack and have none yet.
    unacked: usize,
    /// Frames that ran out of tries when a connection broke and were not taken yet.
    failed: usize,
}

/// Time left before `deadline` at `now`; `None` once it passed.
pub fn time_left(deadline: Instant, now: Instant) -> Option<Duration> {
    deadline
        .checked_duration_since(now)
        .filter(|d| !d.is_zero())
}

/// Whether a failure is worth a new connection: a refusal (another cluster, version or key)
/// and a timeout (the member does not answer in time) are not.
pub fn is_retriable(failure: &SendFailure) -> bool {
    !matches!(failure, SendFailure::Refused(_) | SendFailure::Timeout(_))
}

impl<T> TxSession<T> {
    /// A lane numbered `lane` whose frames get `max_tries` connections each (at least one),
    /// with at most `window` frames written and waiting for their ack (at least one).
    pub fn new(lane: u32, max_tries: u32, window: usize) -> TxSession<T> {
        TxSession {
            lane,
            max_tries: max_tries.max(1),
            window: window.max(1),
            phase: TxPhase::Closed,
            last_seq: 0,
            frames: VecDeque::new(),
            handed: 0,
            unacked: 0,
            failed: 0,
        }
    }

    /// The lane number told in the handshake.
    pub fn lane(&self) -> u32 {
        self.lane
    }

    /// Where the connection is.
    pub fn phase(&self) -> TxPhase {
        self.phase
    }

    /// The next number of this lane's own numbering (1, 2, 3, ...). A lane may number its
    /// frames from a source shared with other lanes instead, as long as numbers rise.
    pub fn next_seq(&mut self) -> u64 {
        self.last_seq += 1;
        self.last_seq
    }

    /// The frames held, in order.
    pub fn frames(&self) -> &VecDeque<TxFrame<T>> {
        &self.frames
    }

    /// The owners' handles of the frames held, in order.
    pub fn tokens_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.frames.iter_mut().map(|f| &mut f.token)
    }

    /// Frames at the front written on the current connection.
    pub fn written(&self) -> usize {
        self.handed
    }

    /// Whether no frame is held.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Frames written on the current connection that wait for their ack.
    pub fn unacked(&self) -> usize {
        self.unacked
    }

    /// Whether a goodbye written now on this connection comes after every frame the lane took:
    /// the connection is ready and holds nothing (each frame was written, and acked where
    /// asked). The receiver handles one connection's frames in order, so a goodbye sent here
    /// cannot overtake them as one on another connection can.
    pub fn may_say_goodbye(&self) -> bool {
        self.phase == TxPhase::Ready && self.frames.is_empty()
    }

    /// Whether frames wait and no connection is open or opening: the owner should connect.
    pub fn wants_connection(&self) -> bool {
        self.phase == TxPhase::Closed && self.frames.len() > self.failed
    }

    /// Holds a new frame numbered `seq` (above every number held), after those held.
    #[inline]
    pub fn push(&mut self, seq: u64, ack: bool, token: T) {
        debug_assert!(self.frames.back().is_none_or(|f| f.seq < seq));
        self.frames.push_back(TxFrame {
            seq,
            ack,
            acked: false,
            tries: 0,
            writes: 0,
            token,
        });
    }

    /// A new connection is being opened: every frame held goes out on it again, once it is
    /// ready.
    pub fn connecting(&mut self) {
        self.disconnected();
        self.phase = TxPhase::Handshake;
    }

    /// The handshake this lane sends.
    pub fn hello(&self, cluster: &str, local: &Member, incarnation: u64) -> Handshake {
        Handshake {
            cluster: cluster.to_owned(),
            protocol_version: frame::PROTOCOL_VERSION,
            member: local.clone(),
            incarnation,
            lane: self.lane,
        }
    }

    /// Appends the plain (unkeyed) handshake frame to `out`.
    pub fn write_hello(&self, cluster: &str, local: &Member, incarnation: u64, out: &mut Vec<u8>) {
        let hs = self.hello(cluster, local, incarnation);
        frame::encode_frame(out, FrameKind::Handshake, 0, 0, &encode_body(&hs));
    }

    /// The member's answer to our handshake (opened, on a keyed lane): on acceptance the lane
    /// is ready and this returns the member's record and incarnation. `keyed` says whether this
    /// node seals; a sealed answer to a plain handshake means the member holds a key we lack.
    pub fn on_handshake_answer(
        &mut self,
        kind: FrameKind,
        flags: u16,
        body: &[u8],
        keyed: bool,
    ) -> Result<(Member, u64), SendFailure> {
        if !keyed && flags & FLAG_SEALED != 0 {
            return Err(SendFailure::Refused(
                "the member uses a cluster key and this node has none".into(),
            ));
        }
        let answer = match kind {
            FrameKind::HandshakeAccept => decode_body::<HandshakeAccept>(body)
                .map(|a| (a.member, a.incarnation))
                .map_err(|e| SendFailure::Protocol(format!("undecodable handshake answer: {e}"))),
            FrameKind::HandshakeRefuse => Err(SendFailure::Refused(reason_of(body))),
            k => Err(SendFailure::Protocol(format!(
                "{k:?} frame instead of a handshake answer"
            ))),
        }?;
        if self.phase == TxPhase::Handshake {
            self.phase = TxPhase::Ready;
        }
        Ok(answer)
    }

    /// The first answer to a keyed handshake: the member's nonce. Anything else ends the
    /// attempt; a refusal is not authenticated (the member cannot seal before we proved the
    /// key), so it is only believed as far as giving up on this connection goes.
    pub fn on_challenge(
        &self,
        kind: FrameKind,
        flags: u16,
        body: &[u8],
    ) -> Result<[u8; HANDSHAKE_NONCE_LEN], SendFailure> {
        match kind {
            FrameKind::Challenge if flags & FLAG_SEALED != 0 => body
                .try_into()
                .map_err(|_| SendFailure::Protocol(format!("challenge of {} bytes", body.len()))),
            FrameKind::HandshakeRefuse => Err(SendFailure::Refused(format!(
                "{} (unauthenticated answer)",
                reason_of(body)
            ))),
            FrameKind::HandshakeAccept => Err(SendFailure::Refused(
                "the member runs without a cluster key and this node has one".into(),
            )),
            k => Err(SendFailure::Protocol(format!(
                "{k:?} frame instead of a challenge"
            ))),
        }
    }

    /// The next frame to write on the ready connection, now counted as written on it; `None`
    /// when none waits, the connection is not ready, or the window is full (a frame asking for
    /// an ack waits for earlier acks, and the frames after it wait behind it). A frame already
    /// acked on an earlier connection is returned too (the owner may skip its bytes) but not
    /// counted as written again.
    #[inline]
    pub fn next_write(&mut self) -> Option<&mut TxFrame<T>> {
        if self.phase != TxPhase::Ready || self.failed > 0 {
            return None;
        }
        let f = self.frames.get_mut(self.handed)?;
        let waits = f.ack && !f.acked;
        if waits && self.unacked >= self.window {
            return None;
        }
        self.handed += 1;
        if waits {
            self.unacked += 1;
        }
        if !f.acked {
            f.writes += 1;
        }
        Some(f)
    }

    /// For an owner that writes its whole buffer itself (no window): counts as written on the
    /// ready connection the next frames, in order, as long as `written` says their bytes went
    /// out. Frames already acked are passed over, as by [`TxSession::next_write`].
    #[inline]
    pub fn mark_written(&mut self, mut written: impl FnMut(&T) -> bool) {
        if self.phase != TxPhase::Ready || self.failed > 0 {
            return;
        }
        for f in self.frames.range_mut(self.handed..) {
            if !written(&f.token) {
                break;
            }
            self.handed += 1;
            if !f.acked {
                f.writes += 1;
                self.unacked += usize::from(f.ack);
            }
        }
    }

    /// An ack (or fail-ack) for `seq` came on the current connection. Acks come in order but a
    /// frame's ack may overtake an earlier one's (an acknowledged frame behind one waiting for
    /// its synchronized ack).
    #[inline]
    pub fn on_ack(&mut self, seq: u64) -> AckMatch {
        let waits = |f: &TxFrame<T>| f.seq == seq && f.ack && !f.acked;
        // Nearly always the first frame (a synchronous lane holds one): no search.
        let pos = match self.frames.front() {
            Some(f) if self.handed > 0 && waits(f) => Some(0),
            _ => self.frames.iter().take(self.handed).position(waits),
        };
        match pos {
            Some(i) => {
                self.frames[i].acked = true;
                self.unacked -= 1;
                AckMatch::Frame(i)
            }
            None => AckMatch::Stale,
        }
    }

    /// The sequence number of the first frame written on this connection that waits for its
    /// ack: the owner reads replies while there is one.
    #[inline]
    pub fn awaited(&self) -> Option<u64> {
        if self.unacked == 0 {
            return None;
        }
        let handed = self.frames.iter().take(self.handed);
        handed.filter(|f| f.ack && !f.acked).map(|f| f.seq).next()
    }

    /// Releases the first frame held if it is done: acked if it asked for an ack (on this
    /// connection or an earlier one), else written on this connection.
    #[inline]
    pub fn pop_done(&mut self) -> Option<TxFrame<T>> {
        let f = self.frames.front()?;
        let done = if f.ack { f.acked } else { self.handed > 0 };
        if self.failed > 0 || !done {
            return None;
        }
        self.handed = self.handed.saturating_sub(1);
        self.frames.pop_front()
    }

    /// The connection is gone (broken, refused, timed out, or closed by the owner). The frames
    /// it held cost one try each: those written on it and not released (waiting for their
    /// ack, or behind one that does), or every frame not acked if it broke before its
    /// handshake was accepted. Frames out of tries are to be taken with
    /// [`TxSession::pop_failed`] before anything else is written; the rest wait for the next
    /// connection. Does nothing without a connection.
    pub fn disconnected(&mut self) {
        let charged = match self.phase {
            TxPhase::Closed => return,
            TxPhase::Handshake => self.frames.len(),
            TxPhase::Ready => self.handed,
        };
        self.phase = TxPhase::Closed;
        self.handed = 0;
        self.unacked = 0;
        for f in self.frames.iter_mut().take(charged) {
            // Acked, or failed already and not taken yet.
            if f.acked || f.tries >= self.max_tries {
                continue;
            }
            f.tries += 1;
            self.failed += usize::from(f.tries >= self.max_tries);
        }
    }

    /// A frame that ran out of tries, in order.
    pub fn pop_failed(&mut self) -> Option<TxFrame<T>> {
        if self.failed == 0 {
            return None;
        }
        let i = self.frames.iter().position(|f| self.is_failed(f))?;
        self.failed -= 1;
        self.frames.remove(i)
    }

    fn is_failed(&self, f: &TxFrame<T>) -> bool {
        f.tries >= self.max_tries && !f.acked
    }

    /// Whether frames ran out of tries and were not taken yet.
    pub fn has_failed(&self) -> bool {
        self.failed > 0
    }

    /// Gives up on the frames not acked that `expired` picks (those whose send deadline
    /// passed, say), in order; the others stay held. A timeout ends the connection first
    /// (production's sender disconnects a lane whose ack did not come in time), so this is
    /// only for a session without one: nothing is given up while a connection is open.
    pub fn give_up(&mut self, mut expired: impl FnMut(&T) -> bool) -> Vec<TxFrame<T>> {
        if self.phase != TxPhase::Closed {
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut kept = VecDeque::with_capacity(self.frames.len());
        for f in self.frames.drain(..) {
            if !f.acked && expired(&f.token) {
                out.push(f);
            } else {
                kept.push_back(f);
            }
        }
        self.frames = kept;
        self.failed = self.frames.iter().filter(|f| self.is_failed(f)).count();
        out
    }

    /// Gives up on every frame held (a failure no new connection can help): they are removed,
    /// in order. The connection, if any, is left as it is.
    pub fn drain(&mut self) -> std::collections::vec_deque::Drain<'_, TxFrame<T>> {
        self.handed = 0;
        self.unacked = 0;
        self.failed = 0;
        self.frames.drain(..)
    }
}

/// The reason in a refusal's body.
fn reason_of(body: &[u8]) -> String {
    decode_body::<Reason>(body).map_or_else(|e| format!("(undecodable reason: {e})"), |r| r.reason)
}

#[cfg(test)]
#[path = "tx_session_tests.rs"]
mod tests;
