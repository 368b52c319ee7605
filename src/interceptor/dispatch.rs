//! The asynchronous queue (Tribes' `MessageDispatchInterceptor`).
//!
//! Asynchronous sends are queued and the caller returns. One dispatch thread drains the queue
//! in order and passes the messages down, then flushes, so the transport writes each member's
//! frames coalesced and in queue order. Tribes uses a pool of dispatch threads, which reorders
//! messages to the same member.
//!
//! The queue is bounded by payload bytes (`max_queue_size`). When a message does not fit, the
//! `full_policy` decides: `Block` waits for room until the send timeout and then fails with
//! `QueueFull`; `Fail` fails at once. Either way nothing already queued is dropped and order is
//! kept. (Tribes' default sends on the caller's thread instead, overtaking the queue.)

use super::{ChannelInterceptor, Next, OutMessage, StackHandle};
use crate::config::{DispatchConfig, QueueFullPolicy};
use crate::error::ChannelError;
use crate::member::Member;
use log::warn;
use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Messages taken from the queue in one go: bounded so a full queue is released in steps.
const MAX_BATCH: usize = 4096;
/// The least a queued message counts against `max_queue_size`, whatever its payload: its
/// bookkeeping, so that small or empty messages cannot pile up without bound.
const MIN_MESSAGE_COST: usize = 64;

/// What a message counts against `max_queue_size`.
fn cost(payload: usize) -> usize {
    payload.max(MIN_MESSAGE_COST)
}

struct Queued {
    dests: Arc<[Member]>,
    msg: OutMessage,
}

#[derive(Default)]
struct State {
    items: VecDeque<Queued>,
    /// Payload bytes queued or being sent.
    bytes: usize,
    closed: bool,
    consumer_waiting: bool,
    producers_waiting: usize,
}

/// A FIFO bounded by bytes, with one consumer.
struct ByteQueue {
    state: Mutex<State>,
    not_empty: Condvar,
    not_full: Condvar,
    max: usize,
}

impl ByteQueue {
    fn push(
        &self,
        item: Queued,
        policy: QueueFullPolicy,
        deadline: Instant,
    ) -> Result<(), ChannelError> {
        let size = cost(item.msg.payload.len());
        let mut st = self.state.lock();
        // A message alone larger than the queue is let in when the queue is empty, so it can
        // always be sent (config validation keeps max_queue_size >= max_frame_size anyway).
        while !st.closed && st.bytes > 0 && st.bytes + size > self.max {
            if policy == QueueFullPolicy::Fail {
                return Err(ChannelError::QueueFull {
                    queued_bytes: st.bytes,
                    max_bytes: self.max,
                });
            }
            st.producers_waiting += 1;
            let timed_out = self.not_full.wait_until(&mut st, deadline).timed_out();
            st.producers_waiting -= 1;
            if timed_out && st.bytes > 0 && st.bytes + size > self.max {
                return Err(ChannelError::QueueFull {
                    queued_bytes: st.bytes,
                    max_bytes: self.max,
                });
            }
        }
        if st.closed {
            return Err(ChannelError::NotRunning);
        }
        st.bytes += size;
        st.items.push_back(item);
        if st.consumer_waiting {
            self.not_empty.notify_one();
        }
        Ok(())
    }

    /// Waits for messages (at most `wait`, if given) and moves up to `MAX_BATCH` of them into
    /// `out`. Returns false once the queue is closed and empty.
    fn pop_batch(&self, out: &mut Vec<Queued>, wait: Option<Duration>) -> bool {
        let mut st = self.state.lock();
        let deadline = wait.map(|w| Instant::now() + w);
        while st.items.is_empty() {
            if st.closed {
                return false;
            }
            st.consumer_waiting = true;
            let timed_out = match deadline {
                Some(d) => self.not_empty.wait_until(&mut st, d).timed_out(),
                None => {
                    self.not_empty.wait(&mut st);
                    false
                }
            };
            st.consumer_waiting = false;
            if timed_out {
                return true;
            }
        }
        let n = st.items.len().min(MAX_BATCH);
        out.extend(st.items.drain(..n));
        true
    }

    fn release(&self, bytes: usize) {
        let mut st = self.state.lock();
        st.bytes -= bytes;
        if st.producers_waiting > 0 {
            self.not_full.notify_all();
        }
    }

    fn close(&self) {
        self.state.lock().closed = true;
        self.not_empty.notify_all();
        self.not_full.notify_all();
    }

    fn reopen(&self) {
        let mut st = self.state.lock();
        st.closed = false;
    }
}

/// Counters of the dispatch queue.
#[derive(Default, Debug)]
#[non_exhaustive]
pub struct DispatchStats {
    /// Messages put on the queue.
    pub queued: crate::metrics::Counter,
    /// Messages refused because the queue stayed full.
    pub refused_full: crate::metrics::Counter,
    /// Queued messages whose send failed.
    pub send_errors: crate::metrics::Counter,
}

/// Tomcat's `MessageDispatchInterceptor`: asynchronous sends go on a bounded queue that one thread drains.
pub struct MessageDispatchInterceptor {
    cfg: DispatchConfig,
    timeout: Duration,
    queue: Arc<ByteQueue>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Its counters.
    pub stats: Arc<DispatchStats>,
}

impl MessageDispatchInterceptor {
    /// `timeout` bounds how long a `Block` policy waits for room (the sender timeout).
    pub fn new(cfg: DispatchConfig, timeout: Duration) -> MessageDispatchInterceptor {
        let queue = Arc::new(ByteQueue {
            state: Mutex::new(State {
                closed: true,
                ..State::default()
            }),
            not_empty: Condvar::new(),
            not_full: Condvar::new(),
            max: cfg.max_queue_size,
        });
        MessageDispatchInterceptor {
            cfg,
            timeout,
            queue,
            thread: Mutex::new(None),
            stats: Arc::default(),
        }
    }

    /// Payload bytes queued or in flight (each message counting at least 64).
    pub fn queued_bytes(&self) -> usize {
        self.queue.state.lock().bytes
    }
}

/// How soon the dispatch thread tries again to write to a member that was not reading.
const STALLED_RETRY: Duration = Duration::from_millis(10);

fn dispatch_loop(queue: Arc<ByteQueue>, handle: StackHandle, stats: Arc<DispatchStats>) {
    let mut batch = Vec::new();
    let mut pending = false;
    while queue.pop_batch(&mut batch, pending.then_some(STALLED_RETRY)) {
        let mut bytes = 0;
        for Queued { dests, mut msg } in batch.drain(..) {
            bytes += cost(msg.payload.len());
            msg.batched = true;
            if let Err(e) = handle.send_below(&dests, msg) {
                stats.send_errors.fetch_add(1, Ordering::Relaxed);
                warn!("Asynchronous send failed: {e}");
            }
        }
        pending = handle.flush_below();
        queue.release(bytes);
    }
    // Closed: one last try for frames still waiting on a slow member.
    handle.flush_below();
}

impl ChannelInterceptor for MessageDispatchInterceptor {
    fn name(&self) -> &'static str {
        "MessageDispatchInterceptor"
    }

    fn start(&self, handle: StackHandle) -> Result<(), ChannelError> {
        let mut t = self.thread.lock();
        if t.is_some() {
            return Ok(());
        }
        self.queue.reopen();
        let (queue, stats) = (self.queue.clone(), self.stats.clone());
        *t = Some(
            std::thread::Builder::new()
                .name("tribecast-dispatch".into())
                .spawn(move || dispatch_loop(queue, handle, stats))
                .map_err(ChannelError::Io)?,
        );
        Ok(())
    }

    /// Sends what is queued, then joins the dispatch thread.
    fn stop(&self) {
        self.queue.close();
        if let Some(t) = self.thread.lock().take() {
            if t.join().is_err() {
                warn!("Dispatch thread panicked");
            }
        }
    }

    fn send_message(
        &self,
        dests: &Arc<[Member]>,
        msg: OutMessage,
        next: Next<'_>,
    ) -> Result<(), ChannelError> {
        if !msg.options.is_async() || msg.batched {
            return next.send_message(dests, msg);
        }
        let deadline = Instant::now() + self.timeout;
        match self.queue.push(
            Queued {
                dests: dests.clone(),
                msg,
            },
            self.cfg.full_policy,
            deadline,
        ) {
            Ok(()) => {
                self.stats.queued.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                if matches!(e, ChannelError::QueueFull { .. }) {
                    self.stats.refused_full.fetch_add(1, Ordering::Relaxed);
                }
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::SendOptions;

    fn item(size: usize) -> Queued {
        Queued {
            dests: Arc::from(Vec::new()),
            msg: OutMessage {
                msg_id: 0,
                options: SendOptions::ASYNCHRONOUS,
                payload: vec![0; size],
                batched: false,
            },
        }
    }

    fn queue(max: usize) -> ByteQueue {
        ByteQueue {
            state: Mutex::new(State::default()),
            not_empty: Condvar::new(),
            not_full: Condvar::new(),
            max,
        }
    }

    #[test]
    fn fail_policy_refuses_when_full_and_keeps_what_is_queued() {
        let q = queue(200);
        let soon = Instant::now() + Duration::from_secs(5);
        q.push(item(120), QueueFullPolicy::Fail, soon).unwrap();
        let e = q.push(item(120), QueueFullPolicy::Fail, soon).unwrap_err();
        assert!(matches!(
            e,
            ChannelError::QueueFull {
                queued_bytes: 120,
                max_bytes: 200
            }
        ));
        q.push(item(80), QueueFullPolicy::Fail, soon).unwrap();
        let mut out = Vec::new();
        assert!(q.pop_batch(&mut out, None));
        assert_eq!(
            out.iter().map(|q| q.msg.payload.len()).collect::<Vec<_>>(),
            [120, 80]
        );
    }

    #[test]
    fn empty_messages_count_their_bookkeeping() {
        let q = queue(4096);
        let soon = Instant::now() + Duration::from_secs(5);
        let mut queued = 0;
        while q.push(item(0), QueueFullPolicy::Fail, soon).is_ok() {
            queued += 1;
            assert!(queued <= 4096, "empty messages are never refused");
        }
        assert_eq!(queued, 4096 / MIN_MESSAGE_COST);
    }

    #[test]
    fn block_policy_times_out_then_succeeds_after_release() {
        let q = Arc::new(queue(100));
        q.push(item(80), QueueFullPolicy::Block, Instant::now())
            .unwrap();
        let e = q.push(
            item(80),
            QueueFullPolicy::Block,
            Instant::now() + Duration::from_millis(20),
        );
        assert!(matches!(e, Err(ChannelError::QueueFull { .. })));
        let q2 = q.clone();
        let waiter = std::thread::spawn(move || {
            q2.push(
                item(80),
                QueueFullPolicy::Block,
                Instant::now() + Duration::from_secs(30),
            )
        });
        // Wait until the producer is actually blocked, then make room.
        let until = Instant::now() + Duration::from_secs(30);
        while q.state.lock().producers_waiting == 0 {
            assert!(Instant::now() < until, "producer never blocked");
            std::thread::yield_now();
        }
        let mut out = Vec::new();
        assert!(q.pop_batch(&mut out, None));
        q.release(80);
        waiter.join().unwrap().unwrap();
        assert_eq!(q.state.lock().bytes, 80);
    }

    #[test]
    fn close_wakes_consumer() {
        let q = queue(100);
        q.close();
        let mut out = Vec::new();
        assert!(!q.pop_batch(&mut out, None));
    }
}
