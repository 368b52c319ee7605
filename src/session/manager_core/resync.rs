//! The copies a DeltaManager member knows to be behind another member's: it asked for them
//! (after a gap, a fork or a digest) and not every answer has come. A request for one waits
//! rather than be served the stale copy.
//!
//! A session may be asked of several members, and of one member more than once (each digest
//! that shows a newer copy asks again). The wait ends when every member asked has answered
//! its last question (or left, or the deadline passed): an answer to an earlier question can
//! carry a copy older than the one a later question was asked for (seed 237 of the kill -9
//! simulation with route rebinding: a restarted member asked one member twice and another
//! once; the first answer, a copy two versions behind, ended the wait; the member served it,
//! and the newer copy that came next replaced the change made on it).

use super::super::id::SessionId;
use super::super::model::SessionState;
use super::super::replica::SessionMessage;
use crate::member::MemberId;
use std::collections::BTreeMap;

/// Sessions remembered as behind at most (a member that sends many gaps cannot grow it).
const MAX_RESYNCING: usize = 10_000;

/// The sessions asked for and not yet answered, and each member's `GetSessions` count.
#[derive(Default)]
pub(super) struct Resyncing {
    behind: BTreeMap<SessionId, Behind>,
    /// Per member asked: its `GetSessions` sent and answered whole. A member answers them in
    /// order, each with `Merge` chunks and a last empty one.
    batches: BTreeMap<MemberId, Batches>,
}

/// A session whose copy here is known to be behind.
struct Behind {
    until: u64,
    /// The members asked and what of theirs is still to come.
    asked: BTreeMap<MemberId, Asked>,
}

/// What is still to come from one member asked for one session.
#[derive(Default)]
struct Asked {
    /// `GetSession`s not yet answered (a `State` or `NotHere` of the id each).
    gets: u32,
    /// The number of the last `GetSessions` naming the session, while unanswered.
    batch: Option<u64>,
}

impl Asked {
    fn done(&self) -> bool {
        self.gets == 0 && self.batch.is_none()
    }
}

#[derive(Default)]
struct Batches {
    sent: u64,
    answered: u64,
}

impl Resyncing {
    /// Until when a request for `id` waits for the copies asked, if it does.
    pub fn until(&self, id: &SessionId) -> Option<u64> {
        self.behind.get(id).map(|b| b.until)
    }

    pub fn contains(&self, id: &SessionId) -> bool {
        self.behind.contains_key(id)
    }

    /// `of` was asked for `ids` at `now_ms`, in one `GetSessions` if `by_digest`, else a
    /// `GetSession` each; their copies are waited for until `until`.
    pub fn asked(
        &mut self,
        of: MemberId,
        ids: &[SessionId],
        by_digest: bool,
        now_ms: u64,
        until: u64,
    ) {
        let batch = by_digest.then(|| {
            let b = self.batches.entry(of).or_default();
            b.sent += 1;
            b.sent
        });
        for id in ids {
            if self.behind.len() >= MAX_RESYNCING && !self.behind.contains_key(id) {
                self.expire(now_ms);
                if self.behind.len() >= MAX_RESYNCING {
                    continue;
                }
            }
            let b = self.behind.entry(id.clone()).or_insert(Behind {
                until,
                asked: BTreeMap::new(),
            });
            b.until = b.until.max(until);
            let a = b.asked.entry(of).or_default();
            match batch {
                Some(n) => a.batch = Some(n),
                None => a.gets += 1,
            }
        }
    }

    /// A message from `from` that may answer what was asked of it, or end the session here.
    pub fn answered(&mut self, from: MemberId, msg: &SessionMessage) {
        match msg {
            // Not held here before, or ended, or renamed: nothing older to serve.
            SessionMessage::Created(st) => {
                self.behind.remove(&st.id);
            }
            SessionMessage::Expired { id, .. } | SessionMessage::ChangeId { old: id, .. } => {
                self.behind.remove(id);
            }
            // The answer to one `GetSession` (`NotHere`: that member has no copy; the one held
            // here is the best it knows of).
            SessionMessage::State(SessionState { id, .. }) | SessionMessage::NotHere { id } => {
                self.one_get_answered(from, id);
            }
            // The last chunk of an answer to `GetSessions`: what it lacked, it lacks.
            SessionMessage::Merge(states) if states.is_empty() => {
                let Some(b) = self.batches.get_mut(&from) else {
                    return;
                };
                // Never beyond what was asked: batches written off at a deadline stay so.
                b.answered = (b.answered + 1).min(b.sent);
                let answered = b.answered;
                self.behind.retain(|_, b| {
                    if let Some(a) = b.asked.get_mut(&from) {
                        if a.batch.is_some_and(|n| n <= answered) {
                            a.batch = None;
                        }
                    }
                    b.asked.retain(|_, a| !a.done());
                    !b.asked.is_empty()
                });
            }
            _ => {}
        }
    }

    fn one_get_answered(&mut self, from: MemberId, id: &SessionId) {
        let Some(b) = self.behind.get_mut(id) else {
            return;
        };
        if let Some(a) = b.asked.get_mut(&from) {
            a.gets = a.gets.saturating_sub(1);
            if a.done() {
                b.asked.remove(&from);
            }
        }
        if b.asked.is_empty() {
            self.behind.remove(id);
        }
    }

    /// Only members that `stays` are still waited for: the others' answers will not come.
    pub fn keep_members(&mut self, stays: impl Fn(&MemberId) -> bool) {
        self.batches.retain(|m, _| stays(m));
        self.behind.retain(|_, b| {
            b.asked.retain(|m, _| stays(m));
            !b.asked.is_empty()
        });
    }

    /// Sessions waited for past their deadline are given up.
    pub fn expire(&mut self, now_ms: u64) {
        let late: Vec<SessionId> = self
            .behind
            .iter()
            .filter(|(_, b)| now_ms >= b.until)
            .map(|(id, _)| id.clone())
            .collect();
        for id in late {
            self.give_up(&id);
        }
    }

    /// Stops waiting for `id`'s copies; whether it was waited for. A member whose answer to
    /// a `GetSessions` did not come is written off up to its last one (one lost would
    /// otherwise hold every later wait on it until its deadline).
    pub fn give_up(&mut self, id: &SessionId) -> bool {
        let Some(b) = self.behind.remove(id) else {
            return false;
        };
        for (m, a) in b.asked {
            if let (Some(_), Some(n)) = (a.batch, self.batches.get_mut(&m)) {
                n.answered = n.sent;
            }
        }
        true
    }
}
