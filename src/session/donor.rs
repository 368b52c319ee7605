//! The donor's side of DeltaManager state transfers, kept off the receiver workers.
//!
//! The receiver worker that gets a joiner's `GetAllSessions` only starts its transfer: the
//! joiner goes in this queue, and one pump thread per manager (started when a transfer starts,
//! gone when none is left) makes and sends the chunks, one at a time, each with an
//! acknowledgement, taking the joiners in turn. One chunk is in memory whatever the number of
//! joiners, and no receiver worker waits on a joiner: with `max_threads = 1` that wait stopped
//! every replication to this node for the whole transfer (docs/design.md, "State transfer").

use crate::member::MemberId;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::thread::JoinHandle;

/// The joiners whose chunks are still to come, and the pump thread that sends them.
#[derive(Default)]
pub(crate) struct Donations {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Joiners in turn, each with whether its previous chunk left (true when it starts).
    queue: VecDeque<(MemberId, bool)>,
    /// The pump thread (the last one, once it ended).
    pump: Option<JoinHandle<()>>,
    /// A pump runs: it takes the queue's next joiner until none is left.
    running: bool,
    /// The cluster stops: no transfer starts or goes on.
    stopped: bool,
}

impl Donations {
    /// `to` asked for every session (again, perhaps: its transfer starts over in the core):
    /// it gets a turn. When no pump runs, `spawn` starts one (under the lock, so that a pump
    /// that is ending cannot miss `to`); if it cannot, `to` is taken out again and the error
    /// returned, for the caller to send the transfer itself.
    pub fn start(
        &self,
        to: MemberId,
        spawn: impl FnOnce() -> std::io::Result<JoinHandle<()>>,
    ) -> std::io::Result<()> {
        let mut s = self.state.lock();
        if s.stopped {
            return Ok(());
        }
        match s.queue.iter_mut().find(|(m, _)| *m == to) {
            Some(turn) => turn.1 = true,
            None => s.queue.push_back((to, true)),
        }
        if s.running {
            return Ok(());
        }
        match spawn() {
            Ok(pump) => {
                s.running = true;
                // The previous pump has left its loop: dropping its handle detaches it.
                s.pump = Some(pump);
                Ok(())
            }
            Err(e) => {
                s.queue.retain(|(m, _)| *m != to);
                Err(e)
            }
        }
    }

    /// The pump's next joiner and whether its previous chunk left; `None` ends the pump.
    pub fn next(&self) -> Option<(MemberId, bool)> {
        let mut s = self.state.lock();
        let next = if s.stopped { None } else { s.queue.pop_front() };
        s.running = next.is_some();
        next
    }

    /// A chunk to `to` left (`sent`) or could not, and more follow: `to` gets another turn,
    /// unless it asked again meanwhile (its new turn stands, from the first chunk).
    pub fn again(&self, to: MemberId, sent: bool) {
        let mut s = self.state.lock();
        if !s.stopped && !s.queue.iter().any(|(m, _)| *m == to) {
            s.queue.push_back((to, sent));
        }
    }

    /// Joiners waiting for a turn (not counting the one whose chunk is being sent).
    #[cfg(test)]
    pub fn waiting(&self) -> usize {
        self.state.lock().queue.len()
    }

    /// The cluster stops: transfers end after the chunk being sent. Returns the pump thread,
    /// to join once the channel is stopped (its send then fails at once).
    pub fn stop(&self) -> Option<JoinHandle<()>> {
        let mut s = self.state.lock();
        s.stopped = true;
        s.queue.clear();
        s.pump.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(i: u8) -> MemberId {
        MemberId([i; 16])
    }

    fn idle() -> std::io::Result<JoinHandle<()>> {
        Ok(std::thread::spawn(|| {}))
    }

    #[test]
    fn joiners_take_turns_and_one_pump_serves_them_all() {
        let d = Donations::default();
        let mut spawned = 0;
        for to in [m(1), m(2)] {
            d.start(to, || {
                spawned += 1;
                idle()
            })
            .expect("spawned");
        }
        assert_eq!(spawned, 1, "one pump for both");
        assert_eq!(d.next(), Some((m(1), true)));
        d.again(m(1), true);
        assert_eq!(d.next(), Some((m(2), true)), "the other joiner's turn");
        d.again(m(2), false);
        assert_eq!(d.next(), Some((m(1), true)));
        assert_eq!(
            d.next(),
            Some((m(2), false)),
            "told its chunk did not leave"
        );
        assert_eq!(d.next(), None, "none left: the pump ends");
        d.start(m(3), || {
            spawned += 1;
            idle()
        })
        .expect("spawned");
        assert_eq!(spawned, 2, "a new transfer starts a new pump");
    }

    #[test]
    fn a_joiner_that_asks_again_keeps_one_turn_from_the_first_chunk() {
        let d = Donations::default();
        d.start(m(1), idle).expect("spawned");
        assert_eq!(d.next(), Some((m(1), true)));
        // Asked again while its chunk was being sent, which then failed.
        d.start(m(1), idle).expect("queued");
        d.again(m(1), false);
        assert_eq!(d.waiting(), 1);
        assert_eq!(
            d.next(),
            Some((m(1), true)),
            "the new transfer's turn stands"
        );
        // Asked again while waiting for a turn after a failed chunk: starts over.
        d.again(m(1), false);
        d.start(m(1), idle).expect("queued");
        assert_eq!(d.next(), Some((m(1), true)));
    }

    #[test]
    fn no_thread_no_turn_and_stopped_no_more_turns() {
        let d = Donations::default();
        let refused = d.start(m(1), || Err(std::io::Error::other("no threads")));
        assert!(refused.is_err());
        assert_eq!(d.waiting(), 0, "the caller sends it");
        d.start(m(2), idle).expect("spawned");
        assert!(d.stop().is_some(), "the pump to join");
        assert_eq!(d.next(), None);
        d.start(m(3), || panic!("no pump once stopped"))
            .expect("ignored");
        d.again(m(3), true);
        assert_eq!(d.waiting(), 0);
    }
}
