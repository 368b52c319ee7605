//! A request for a session this node does not serve: it asks every member (`Fetch`), takes the
//! best copy answered (the highest claim, then the highest version) and becomes its primary. It
//! serves at once on the primary's answer; without it, it waits for every member's, and a
//! timeout (`end_fetch`) serves the best copy so far.

use super::claims::{Claim, Tomb};
use super::{BackupCore, BackupMessage, Entry, Out};
use crate::member::MemberId;
use crate::session::id::SessionId;
use crate::session::model::{Session, SessionState};
use crate::session::outputs::{Dest, SessionEvent};

/// A fetch in progress.
pub(super) struct Fetching {
    /// Members whose answer is still awaited.
    waiting: Vec<MemberId>,
    /// The best copy answered so far, with its claim.
    best: Option<(Claim, SessionState)>,
}

impl BackupCore {
    /// A request needs a session this node does not serve and cannot take over: ask every
    /// member.
    pub fn fetch(&mut self, id: &SessionId) -> Vec<Out> {
        if self.is_primary(id) || self.is_ended(id) || self.members.is_empty() {
            return Vec::new();
        }
        let f = Fetching {
            waiting: self.members.clone(),
            best: None,
        };
        self.fetching.insert(id.clone(), f);
        vec![Out {
            dest: Dest::All,
            msg: BackupMessage::Fetch { id: id.clone() },
        }]
    }

    /// Why `fetch(id)` asks nobody, if it does not.
    pub fn not_fetched(&self, id: &SessionId) -> Option<&'static str> {
        match self.ended.get(id) {
            Some(Tomb::Ended { .. }) => Some("it ended"),
            Some(Tomb::Local) => Some("its copy expired here"),
            Some(Tomb::Renamed) => Some("its id was changed"),
            None if self.members.is_empty() => Some("no other member is known"),
            None => None,
        }
    }

    /// Whether a fetch of `id` still waits for answers.
    pub fn is_fetching(&self, id: &SessionId) -> bool {
        self.fetching.contains_key(id)
    }

    /// Gives up a fetch (timeout).
    pub fn end_fetch(&mut self, id: &SessionId) -> Vec<Out> {
        // Serve the best copy answered, or the one held here: a member that never answered (it
        // died, or restarted under the same id before anyone saw it go) must not cost the user
        // the session.
        let best = self.fetching.remove(id).and_then(|f| f.best);
        self.adopt(id, best, false, &mut Vec::new())
    }

    /// The members changed from `before`: fetches stop waiting for members that left (one
    /// with nobody left to ask ends) and ask the ones that joined (a member that restarted
    /// under its id answers again).
    pub(super) fn refetch(&mut self, before: &[MemberId]) -> Vec<Out> {
        let mut outs = Vec::new();
        let mut done = Vec::new();
        for (id, f) in self.fetching.iter_mut() {
            f.waiting.retain(|m| self.members.binary_search(m).is_ok());
            for m in self
                .members
                .iter()
                .filter(|m| before.binary_search(m).is_err())
            {
                f.waiting.push(*m);
                outs.push(Self::to(*m, BackupMessage::Fetch { id: id.clone() }));
            }
            if f.waiting.is_empty() {
                done.push(id.clone());
            }
        }
        // A copy adopted here is not news for the session listeners: its events are dropped.
        let mut events = Vec::new();
        for id in done {
            let best = self.fetching.remove(&id).and_then(|f| f.best);
            outs.extend(self.adopt(&id, best, false, &mut events));
        }
        outs
    }

    /// Ends a fetch: serves the best copy answered (or the one held here if better, or if
    /// nobody answered one) from now on. `from_primary`: the copy is the primary's answer.
    ///
    /// Without the primary's answer the primary is gone (or restarted empty), and its first
    /// backup fails it over at the same moment, from the same copy, with the epoch + 1. This
    /// claim takes the epoch + 2, above that failover's: the member a request waits on keeps
    /// the session. (With + 1 the tie went to the higher member id; when that was the backup,
    /// this member yielded while its request ran: the request found no session, or its change,
    /// made on what had become a backup copy, reached no member that kept it. Found on real
    /// processes, `tests/http_faults.rs`; reproduced in `src/sim/backup_tests.rs`,
    /// `a_fetch_racing_the_failover_of_the_copy_it_takes_keeps_the_requests_change`.)
    fn adopt(
        &mut self,
        id: &SessionId,
        best: Option<(Claim, SessionState)>,
        from_primary: bool,
        events: &mut Vec<SessionEvent>,
    ) -> Vec<Out> {
        if self.is_ended(id) || self.is_primary(id) {
            return Vec::new();
        }
        let local = self.local;
        let mine = self
            .entries
            .get(id)
            .map(|e| (e.claim(local), e.session.version()));
        if let Some((c, state)) = best {
            let better = mine.is_none_or(|(m, v)| c > m || (c == m && state.version > v));
            if better {
                let had = mine.is_some();
                let entry = Entry::backup(Session::from_state(state), c.1, Vec::new(), c.0);
                self.entries.insert(id.clone(), entry);
                if !had {
                    events.push(SessionEvent::Created(id.clone()));
                }
            }
        }
        if self.entries.contains_key(id) {
            self.promote_by(id, false, if from_primary { 1 } else { 2 })
        } else {
            Vec::new()
        }
    }

    /// `Fetch`: `from` needs the session; the answer is the copy held here, if any, with the
    /// claim it follows.
    pub(super) fn on_fetch(&self, from: MemberId, id: &SessionId) -> Vec<Out> {
        let local = self.local;
        let held = self.entries.get(id).filter(|e| !e.unannounced);
        let state = held.map(|e| e.session.state().clone());
        let (epoch, owner) = held.map_or((0, local), |e| e.claim(local));
        let current = self.is_primary(id);
        vec![Self::to(
            from,
            BackupMessage::Fetched {
                id: id.clone(),
                state,
                epoch,
                owner,
                current,
            },
        )]
    }

    /// `Fetched`: one member's answer to this node's fetch.
    pub(super) fn on_fetched(
        &mut self,
        from: MemberId,
        id: &SessionId,
        state: Option<&SessionState>,
        (epoch, owner): Claim,
        current: bool,
    ) -> (Vec<Out>, Vec<SessionEvent>) {
        let mut events = Vec::new();
        let mut outs = Vec::new();
        let Some(f) = self.fetching.get_mut(id) else {
            return (outs, events);
        };
        f.waiting.retain(|m| *m != from);
        // The best answer so far: the highest claim, then the highest version.
        if let Some(state) = state {
            let c = (epoch, owner);
            let better = f
                .best
                .as_ref()
                .is_none_or(|(b, s)| c > *b || (c == *b && state.version > s.version));
            if better {
                f.best = Some((c, state.clone()));
            }
        }
        // Serve at once from the primary's copy; any other may be behind, so without
        // the primary's answer it waits for every member's.
        let (done, ready) = (f.waiting.is_empty(), current && state.is_some());
        if ready || done {
            let best = self.fetching.remove(id).and_then(|f| f.best);
            outs.extend(self.adopt(id, best, ready, &mut events));
        }
        (outs, events)
    }
}
