//! A request for a session this node does not serve: it asks every member (`Fetch`), takes the
//! best copy answered (the highest claim, then the highest version) and becomes its primary. It
//! serves at once on the primary's answer; without it, it waits for every member's, and a
//! timeout (`end_fetch`) serves the best copy so far.

use super::claims::{Claim, Tomb};
use super::{BackupCore, BackupMessage, Entry, Out, Role};
use crate::member::{not_in, MemberId};
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
            Some(Tomb::Renamed { .. }) => Some("its id was changed"),
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
        self.adopt(id, best, false, false, &mut Vec::new())
    }

    /// The members changed from `before`: fetches stop waiting for members that left (one
    /// with nobody left to ask ends) and ask the ones that joined (a member that restarted
    /// under its id answers again).
    pub(super) fn refetch(&mut self, before: &[MemberId]) -> Vec<Out> {
        let mut outs = Vec::new();
        let mut done = Vec::new();
        for (id, f) in self.fetching.iter_mut() {
            f.waiting.retain(|m| self.members.binary_search(m).is_ok());
            for m in not_in(&self.members, before) {
                f.waiting.push(m);
                outs.push(Self::to(m, BackupMessage::Fetch { id: id.clone() }));
            }
            if f.waiting.is_empty() {
                done.push(id.clone());
            }
        }
        // A copy adopted here is not news for the session listeners: its events are dropped.
        let mut events = Vec::new();
        for id in done {
            let best = self.fetching.remove(&id).and_then(|f| f.best);
            outs.extend(self.adopt(&id, best, false, false, &mut events));
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
    ///
    /// `copy_now`: no request waits for the session (the primary's answer came after the fetch
    /// ended); its backups get the copy at once rather than at the end of a request.
    fn adopt(
        &mut self,
        id: &SessionId,
        best: Option<(Claim, SessionState)>,
        from_primary: bool,
        copy_now: bool,
        events: &mut Vec<SessionEvent>,
    ) -> Vec<Out> {
        if self.is_ended(id) || self.is_primary(id) {
            return Vec::new();
        }
        let local = self.local;
        let mine = self
            .entries
            .get(id)
            .map(|e| (e.claim(local), e.session.version(), e.synced));
        if let Some((c, state)) = best {
            // A copy held here that awaits its claim's copy (`synced` false: it followed a new
            // claim's `NewPrimary` only) has the content of an older claim: it is compared by
            // version alone. Compared by the new claim it lost to nothing, and a member that
            // heard of a failover while its fetch ran served its own older copy instead of the
            // failed-over one answered (the kill -9 loop simulation, seed 407: an acknowledged
            // version made again).
            let better = mine.is_none_or(|(m, v, synced)| {
                if synced {
                    c > m || (c == m && state.version > v)
                } else {
                    state.version >= v
                }
            });
            if better {
                let had = mine.is_some();
                // The epoch known here stays: the claim made on this copy must outrank it.
                let epoch = mine.map_or(c.0, |(m, _, _)| m.0.max(c.0));
                let entry = Entry::backup(Session::from_state(state), c.1, Vec::new(), epoch);
                self.entries.insert(id.clone(), entry);
                if !had {
                    events.push(SessionEvent::Created(id.clone()));
                }
            }
        }
        if self.entries.contains_key(id) {
            self.promote_by(id, copy_now, if from_primary { 1 } else { 2 })
        } else {
            Vec::new()
        }
    }

    /// `Fetch`: `from` needs the session; the answer is the copy held here, if any, with the
    /// claim it follows.
    ///
    /// A primary that answers hands the session over at once: the fetcher serves from this
    /// answer and claims the session one epoch above it, so this node follows that claim from
    /// now on (as a backup first in its failover order, in case the fetcher dies before its
    /// `NewPrimary` arrives). Serving on until that `NewPrimary` arrives let both members serve
    /// one session: a request here in that window made a second state of the version the
    /// fetcher's request made (the kill -9 loop simulation, `faults_backup.rs`, seed 15 of the
    /// quiet variant: the user's home answered the fetch of the member the user had gone to,
    /// then served the user back home before the fetcher's claim reached it). A request running
    /// here meanwhile is refused at its end (`served_elsewhere`).
    pub(super) fn on_fetch(&mut self, from: MemberId, id: &SessionId) -> Vec<Out> {
        let local = self.local;
        let held = self.entries.get(id).filter(|e| !e.unannounced);
        let state = held.map(|e| e.session.state().clone());
        let (epoch, owner) = held.map_or((0, local), |e| e.claim(local));
        let current = self.is_primary(id);
        if current && state.is_some() && from != local {
            self.hand_over_to(id, from, epoch.saturating_add(1));
        } else if state.is_some() && from != local {
            self.answered.insert(id.clone(), (from, epoch));
        }
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

    /// This primary answered `fetcher`'s fetch with its copy: it follows the claim the fetcher
    /// makes with it, `(epoch, fetcher)`, listing only itself as backup so that it takes the
    /// session back if the fetcher leaves before saying more.
    fn hand_over_to(&mut self, id: &SessionId, fetcher: MemberId, epoch: u64) {
        let local = self.local;
        if let Some(e) = self.entries.get_mut(id) {
            e.role = Role::Backup {
                primary: fetcher,
                backups: vec![local],
            };
            e.epoch = epoch;
            e.copy_pending = false;
            e.synced = true;
        }
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
            // The primary's answer after this fetch ended (its deadline passed): that primary
            // handed the session over when it answered (`on_fetch`) and follows this node's
            // claim now, so this node takes the session, as a move without a request: its
            // backups get the copy at once. Ignored, the session would have no primary.
            if let Some(state) = state.filter(|_| current) {
                if self.is_ended(id) {
                    outs.extend(self.ended_reply(id, from));
                } else {
                    let best = Some(((epoch, owner), state.clone()));
                    outs.extend(self.adopt(id, best, true, true, &mut events));
                }
            }
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
            outs.extend(self.adopt(id, best, ready, false, &mut events));
        }
        (outs, events)
    }
}
