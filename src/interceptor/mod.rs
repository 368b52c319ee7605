//! The interceptor stack (Tribes' `ChannelInterceptor` chain).
//!
//! Interceptors are listed top (next to the application) to bottom (next to the transport).
//! A send walks down: each interceptor gets the message and a [`Next`] to pass it on (or not).
//! A received message and membership events walk up with an [`Up`]. Calls are plain function
//! calls on the caller's thread; an interceptor that needs a thread of its own (the dispatch
//! queue) keeps the [`StackHandle`] it gets at start.

pub mod dispatch;

use crate::error::{ChannelError, SendFailure};
use crate::member::Member;
use crate::options::SendOptions;
use std::borrow::Cow;
use std::sync::{Arc, Weak};
use std::time::Instant;

pub use dispatch::MessageDispatchInterceptor;

/// A message on its way down the stack.
#[derive(Clone, Debug)]
pub struct OutMessage {
    /// Unique per sender and channel start (Tribes' `ChannelData.uniqueId`).
    pub msg_id: u64,
    /// How it was sent.
    pub options: SendOptions,
    /// The application's bytes.
    pub payload: Vec<u8>,
    /// Set by the dispatch thread: the transport may hold the frame until `flush`.
    pub(crate) batched: bool,
}

/// A message delivered up the stack to the listeners.
#[derive(Clone, Debug)]
pub struct ChannelMessage<'a> {
    /// The member that sent it, as it introduced itself on its connection.
    pub from: &'a Member,
    /// The sender's id of this message (for duplicates and acks).
    pub msg_id: u64,
    /// How to send it.
    pub options: SendOptions,
    /// The bytes, as interceptors above made them.
    pub payload: Cow<'a, [u8]>,
}

/// What the transport tells interceptors about a peer, for membership decisions.
#[derive(Clone, Debug)]
pub enum PeerEvent {
    /// A member connected to us and shook hands; or a member we connected to answered with a
    /// new incarnation (it restarted), reported on the connecting thread as `SendFailed` is.
    Hello(Member),
    /// A member said it leaves the group.
    Left(Member),
    /// A send to this member failed.
    SendFailed(Member, SendFailure),
}

/// What lies beyond the two ends of the stack: the transport below the last interceptor, the
/// listeners above the first, and the member list. The channel implements it; the stack reaches
/// the channel only through it.
pub(crate) trait StackEnds: Send + Sync {
    /// The interceptors, top first.
    fn interceptors(&self) -> &[Arc<dyn ChannelInterceptor>];

    /// Below the last interceptor: hand the message to the transport.
    fn transport_send(&self, dests: &Arc<[Member]>, msg: OutMessage) -> Result<(), ChannelError>;

    /// Below the last interceptor: push out batched frames; true if some are still waiting.
    fn transport_flush(&self) -> bool;

    /// Above the first interceptor: hand a message to the listeners.
    fn deliver_to_listeners(&self, msg: &ChannelMessage<'_>) -> Result<(), String>;

    /// Above the first interceptor: tell the membership listeners.
    fn notify_member_added(&self, m: &Member);

    /// Above the first interceptor: tell the membership listeners.
    fn notify_member_disappeared(&self, m: &Member);

    /// Current members.
    fn members(&self) -> Arc<[Member]>;
}

/// One layer of the channel.
pub trait ChannelInterceptor: Send + Sync + 'static {
    /// Shown in logs.
    fn name(&self) -> &'static str;

    /// Called when the channel starts, top to bottom, with a handle for later calls.
    fn start(&self, _handle: StackHandle) -> Result<(), ChannelError> {
        Ok(())
    }

    /// Called when the channel stops, top to bottom. Must return once its threads are joined.
    fn stop(&self) {}

    /// A message on its way down to the transport; pass it on with `down.send_message`.
    fn send_message(
        &self,
        dests: &Arc<[Member]>,
        msg: OutMessage,
        next: Next<'_>,
    ) -> Result<(), ChannelError> {
        next.send_message(dests, msg)
    }

    /// Pushes out anything held back for batching. Returns true if something is still waiting
    /// (a member not reading), so the caller flushes again soon.
    fn flush(&self, next: Next<'_>) -> bool {
        next.flush()
    }

    /// `Err` is the failure reported to a synchronized-ack sender.
    fn message_received(&self, msg: &ChannelMessage<'_>, up: Up<'_>) -> Result<(), String> {
        up.message_received(msg)
    }

    /// A member joined; pass it on with `up.member_added`.
    fn member_added(&self, member: &Member, up: Up<'_>) {
        up.member_added(member)
    }

    /// A member left; pass it on with `up.member_disappeared`.
    fn member_disappeared(&self, member: &Member, up: Up<'_>) {
        up.member_disappeared(member)
    }

    /// Transport news about a peer; every interceptor hears every event.
    fn peer_event(&self, _event: &PeerEvent) {}

    /// Periodic work, every `heartbeat_interval`, with the time passed in.
    fn heartbeat(&self, _now: Instant) {}
}

/// The rest of the stack below an interceptor.
#[derive(Clone, Copy)]
pub struct Next<'a> {
    rest: &'a [Arc<dyn ChannelInterceptor>],
    inner: &'a dyn StackEnds,
}

impl<'a> Next<'a> {
    /// The whole stack, from the top: where a send starts.
    pub(crate) fn top(ends: &'a dyn StackEnds) -> Next<'a> {
        Next {
            rest: ends.interceptors(),
            inner: ends,
        }
    }

    /// Sends `msg` to `dests` through the interceptors below (then the transport).
    pub fn send_message(self, dests: &Arc<[Member]>, msg: OutMessage) -> Result<(), ChannelError> {
        match self.rest.split_first() {
            Some((first, rest)) => first.send_message(
                dests,
                msg,
                Next {
                    rest,
                    inner: self.inner,
                },
            ),
            None => self.inner.transport_send(dests, msg),
        }
    }

    /// Flushes what the interceptors below hold (a dispatch queue): `true` when all was sent.
    pub fn flush(self) -> bool {
        match self.rest.split_first() {
            Some((first, rest)) => first.flush(Next {
                rest,
                inner: self.inner,
            }),
            None => self.inner.transport_flush(),
        }
    }
}

/// The rest of the stack above an interceptor, up to the listeners.
#[derive(Clone, Copy)]
pub struct Up<'a> {
    rest: &'a [Arc<dyn ChannelInterceptor>],
    inner: &'a dyn StackEnds,
}

impl<'a> Up<'a> {
    /// The whole stack, from the bottom: where a received message or membership event starts.
    pub(crate) fn bottom(ends: &'a dyn StackEnds) -> Up<'a> {
        Up {
            rest: ends.interceptors(),
            inner: ends,
        }
    }

    /// Hands `msg` to the interceptors above (then the channel's listeners).
    pub fn message_received(self, msg: &ChannelMessage<'_>) -> Result<(), String> {
        match self.rest.split_last() {
            Some((last, rest)) => last.message_received(
                msg,
                Up {
                    rest,
                    inner: self.inner,
                },
            ),
            None => self.inner.deliver_to_listeners(msg),
        }
    }

    /// Tells the interceptors above (then the membership listeners) that `m` joined.
    pub fn member_added(self, m: &Member) {
        match self.rest.split_last() {
            Some((last, rest)) => last.member_added(
                m,
                Up {
                    rest,
                    inner: self.inner,
                },
            ),
            None => self.inner.notify_member_added(m),
        }
    }

    /// Tells the interceptors above (then the membership listeners) that `m` left.
    pub fn member_disappeared(self, m: &Member) {
        match self.rest.split_last() {
            Some((last, rest)) => last.member_disappeared(
                m,
                Up {
                    rest,
                    inner: self.inner,
                },
            ),
            None => self.inner.notify_member_disappeared(m),
        }
    }
}

/// An interceptor's way back into the channel from its own threads.
#[derive(Clone)]
pub struct StackHandle {
    inner: Weak<dyn StackEnds>,
    index: usize,
}

impl StackHandle {
    /// The handle of the interceptor at `index` (0 = top).
    pub(crate) fn new(ends: Weak<dyn StackEnds>, index: usize) -> StackHandle {
        StackHandle { inner: ends, index }
    }

    fn with<R>(&self, f: impl FnOnce(&dyn StackEnds) -> R) -> Option<R> {
        self.inner.upgrade().map(|i| f(&*i))
    }

    /// Sends through the interceptors below this one.
    pub fn send_below(&self, dests: &Arc<[Member]>, msg: OutMessage) -> Result<(), ChannelError> {
        self.with(|i| {
            Next {
                rest: i.interceptors().get(self.index + 1..).unwrap_or_default(),
                inner: i,
            }
            .send_message(dests, msg)
        })
        .unwrap_or(Err(ChannelError::NotRunning))
    }

    /// Flushes the interceptors below this one; true if something is still waiting.
    pub fn flush_below(&self) -> bool {
        self.with(|i| {
            Next {
                rest: i.interceptors().get(self.index + 1..).unwrap_or_default(),
                inner: i,
            }
            .flush()
        })
        .unwrap_or(false)
    }

    /// Current members.
    pub fn members(&self) -> Arc<[Member]> {
        self.with(|i| i.members())
            .unwrap_or_else(|| Arc::from(Vec::new()))
    }
}
