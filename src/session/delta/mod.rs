//! The DeltaManager's decisions for one application on one node, pure (Tomcat's
//! `DeltaManager`, `DeltaRequest` handling, `ClusterSessionListener` for its context): local
//! requests and messages from other members in, with `now`; messages to send and events for the
//! application's listeners out.
//!
//! Every change goes to every member. A session created and changed in the same request goes
//! out as one CREATED carrying the changes, so no replica ever sees its attributes missing (the
//! race Tomcat's asynchronous dispatch has between CREATED and DELTA). Replicas apply changes
//! by version ([`ReplicaStore`]); a missing change makes them ask the sender for the session.

use super::id::{IdSource, OsRandom, SessionId, SessionIdError};
use super::model::{Served, Session, SessionState};
use super::outputs::{attribute_events, Dest, Out, SessionEvent};
use super::reconcile::{fingerprint, live_beats_end, reconcile, SessionMerger};
use super::replica::{DigestEntry, Outcome, ReplicaStore, SessionMessage};
use crate::member::{not_in, MemberId};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

mod digest;
mod refused;

/// Bytes of sessions (by [`Session::size`]) in one state-transfer chunk, at most, well under
/// any `max_frame_size`: a session larger than this goes alone in its chunk (the session size
/// limit keeps it within one frame).
pub const CHUNK_BYTES: usize = 1 << 20;

/// The `count` of a state-transfer chunk that is not the last: a streaming donor knows the
/// number of chunks only when it sends the last, which carries `index + 1`. A joiner counts the
/// indexes it has until they reach a count, so one of any version waits for the last chunk.
pub const COUNT_UNKNOWN: u32 = u32::MAX;

/// State transfers this node streams at once, at most (the oldest asker's is dropped first;
/// it asks again when no chunk comes).
const MAX_DONATIONS: usize = 64;

/// Where the state transfer to one joiner stands: the next chunk holds ids after `after`.
struct Donation {
    after: Option<SessionId>,
    index: u32,
}

/// Settings of a DeltaManager (Tomcat's `<Manager className="…DeltaManager">` attributes).
#[derive(Clone, Debug)]
pub struct DeltaConfig {
    /// Default max inactive interval of new sessions (`<session-timeout>`, 30 min).
    pub max_inactive: Duration,
    /// Sessions per state-transfer chunk (`sendAllSessionsSize`, 1000).
    pub send_all_sessions_size: usize,
    /// Ended session ids remembered so a late message cannot revive one. Default 100,000.
    pub max_tombstones: usize,
}

impl Default for DeltaConfig {
    fn default() -> Self {
        DeltaConfig {
            max_inactive: Duration::from_secs(30 * 60),
            send_all_sessions_size: 1000,
            max_tombstones: 100_000,
        }
    }
}

/// The sessions of one application on this node and the rules that keep them replicated.
pub struct DeltaCore {
    cfg: DeltaConfig,
    route: String,
    store: ReplicaStore,
    /// Created here and not yet announced: the request that created them has not ended.
    unannounced: std::collections::HashSet<SessionId>,
    /// State transfer done (or not needed).
    ready: bool,
    /// Chunks of the current state transfer received so far.
    chunks_seen: BTreeSet<u32>,
    /// The other members, sorted: a new one gets this node's digest.
    members: Vec<MemberId>,
    /// The application's say on diverged copies (else the rule of [`super::reconcile`]).
    merger: Option<Arc<dyn SessionMerger>>,
    /// Digests received before this node was ready, read once it is.
    pending_digests: Vec<(MemberId, Vec<DigestEntry>)>,
    /// Entries in `pending_digests` (kept, not summed per digest: a joiner may hold many).
    pending_digest_entries: usize,
    /// Where new session ids come from.
    ids: Box<dyn IdSource>,
    /// Members that asked for this node's digest (`GetDigest`) before they were members here.
    digests_owed: BTreeSet<MemberId>,
    /// State transfers under way from this node, by joiner: one chunk leaves per
    /// [`DeltaCore::next_chunk`], so no snapshot of the store is ever made.
    donations: std::collections::BTreeMap<MemberId, Donation>,
    /// Ended sessions, by the members whose live copies of them do not bring them back
    /// here (`merge`; see [`refused`]).
    refused: refused::Refusals,
}

impl DeltaCore {
    pub fn new(cfg: DeltaConfig, route: &str) -> DeltaCore {
        let store = ReplicaStore::new(cfg.max_tombstones);
        DeltaCore {
            cfg,
            route: route.to_string(),
            store,
            unannounced: Default::default(),
            ready: true,
            chunks_seen: BTreeSet::new(),
            members: Vec::new(),
            merger: None,
            pending_digests: Vec::new(),
            pending_digest_entries: 0,
            ids: Box::new(OsRandom),
            digests_owed: BTreeSet::new(),
            donations: Default::default(),
            refused: Default::default(),
        }
    }

    #[cfg(test)]
    /// Draws new session ids from `ids` instead of the operating system (a seeded source makes
    /// a simulation replay exactly).
    pub fn set_id_source(&mut self, ids: Box<dyn IdSource>) {
        self.ids = ids;
    }

    /// Lets the application decide between diverged copies after a partition.
    pub fn set_merger(&mut self, merger: Option<Arc<dyn SessionMerger>>) {
        self.merger = merger;
    }

    pub fn store(&self) -> &ReplicaStore {
        &self.store
    }

    /// What the network can fill: digests held until ready, their entries, chunk indexes seen.
    #[cfg(test)]
    pub(crate) fn buffer_load(&self) -> (usize, usize, usize) {
        let entries = self.pending_digests.iter().map(|(_, e)| e.len()).sum();
        assert_eq!(entries, self.pending_digest_entries);
        (self.pending_digests.len(), entries, self.chunks_seen.len())
    }

    /// Chunks of the current state transfer received so far.
    pub fn transfer_chunks(&self) -> usize {
        self.chunks_seen.len()
    }

    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// Asks `donor` for every session (on start, when other members exist).
    pub fn begin_state_transfer(&mut self, donor: MemberId) -> Out {
        self.ready = false;
        self.chunks_seen.clear();
        Out {
            dest: Dest::Member(donor),
            msg: SessionMessage::GetAllSessions,
        }
    }

    /// Not ready until a member is found and asked, or none is found in time.
    pub fn expect_members(&mut self) {
        self.ready = false;
    }

    /// Gives up waiting for the state transfer (timeout, or the donor has no such application).
    pub fn end_state_transfer(&mut self) -> (Vec<Out>, Vec<SessionEvent>) {
        self.ready = true;
        // The chunk indexes of a transfer given up are not kept until the next one.
        self.chunks_seen.clear();
        self.read_pending_digests()
    }

    /// The members changed. Each new one gets this node's digest: after a partition heals both
    /// sides learn which of the other's copies may win over theirs; a joiner learns of changes
    /// that reached the donor too late for its snapshot. When a member left, every member that
    /// stays gets it too: a change (CREATED, DELTA, change of id, end) the one that left made
    /// just before it died may have reached only some of them, and no later message names the
    /// session (its user's request failed). A node still joining sends none: its transfer
    /// brings everything.
    pub fn set_members(&mut self, mut members: Vec<MemberId>, now_ms: u64) -> Vec<Out> {
        members.sort();
        members.dedup();
        let before = std::mem::replace(&mut self.members, members);
        let added: Vec<MemberId> = not_in(&self.members, &before).collect();
        let gone: BTreeSet<MemberId> = not_in(&before, &self.members).collect();
        let left = !gone.is_empty();
        // Copies whose version came from a member that left: a later message of the member
        // serving the session at a lower version shows that version was its failed change.
        self.store.for_each_mut(|s| {
            if s.served.writer.is_some_and(|w| gone.contains(&w)) {
                s.served.writer_left = true;
            }
        });
        // A transfer to a member that left has no one to reach.
        let members = &self.members;
        self.donations
            .retain(|m, _| members.binary_search(m).is_ok());
        // A member that left may come back from a partition whose changes were acknowledged
        // without this one: its copies win over an end by version again.
        self.refused.forget_members(&gone);
        if !self.ready {
            return Vec::new();
        }
        let survivors: Vec<MemberId> = if left {
            self.members
                .iter()
                .filter(|m| before.binary_search(m).is_ok())
                .copied()
                .collect()
        } else {
            Vec::new()
        };
        // A member that asked for the digest before it was listed here gets it whole now.
        let whole: Vec<bool> = added.iter().map(|m| self.digests_owed.remove(m)).collect();
        let to: Vec<(MemberId, bool)> = added.into_iter().zip(whole).collect();
        if to.is_empty() && survivors.is_empty() {
            return Vec::new();
        }
        let mut copies = Self::digest_copies(self.digest(now_ms), to.len() + survivors.len());
        let mut outs: Vec<Out> = to
            .into_iter()
            .zip(copies.by_ref())
            .flat_map(|((m, whole), chunks)| Self::digest_out(chunks, m, whole))
            .collect();
        outs.extend(survivors.into_iter().zip(copies).flat_map(|(m, chunks)| {
            chunks.into_iter().map(move |c| Out {
                dest: Dest::Member(m),
                msg: SessionMessage::DigestAfterLeave(c),
            })
        }));
        outs
    }

    /// The other members, sorted.
    pub fn members(&self) -> &[MemberId] {
        &self.members
    }

    /// The session of a change (DELTA, ACCESSED) for a session that ended here (not renamed):
    /// ignored, and so not to be acknowledged.
    pub fn ended_here(&self, msg: &SessionMessage) -> Option<SessionId> {
        let (SessionMessage::Delta { id, .. } | SessionMessage::Accessed { id, .. }) = msg else {
            return None;
        };
        let cur = self.store.resolve(id);
        let ended = self.store.get(cur).is_none()
            && self
                .store
                .tombstone(cur)
                .is_some_and(|t| t.renamed.is_none());
        ended.then(|| cur.clone())
    }

    /// Copies asked for after a digest (under their current ids here).
    fn answer_get_sessions(&self, from: MemberId, ids: &[SessionId]) -> Vec<Out> {
        // Each session once, however often it is asked for (or named by old ids): a request
        // repeating one id must not make this node send its copy that many times.
        let mut seen = BTreeSet::new();
        let states: Vec<SessionState> = ids
            .iter()
            .map(|id| self.store.resolve(id))
            .filter(|id| seen.insert(*id))
            .filter(|id| !self.unannounced.contains(*id))
            // A forked copy waits for the copy of the member serving the session, which
            // replaces it: offered to reconcile with, it beat that copy elsewhere at the same
            // version by its fingerprint (a dead member's failed change came back on a
            // joiner: seeds 42, 265, 367 of the kill -9 simulation).
            .filter(|id| !self.store.is_forked(id))
            .filter_map(|id| self.store.get(id))
            .map(|s| s.state().clone())
            .collect();
        // The last chunk empty: the asker stops waiting for copies this node lacks.
        states
            .chunks(self.cfg.send_all_sessions_size.max(1))
            .map(<[SessionState]>::to_vec)
            .chain([Vec::new()])
            .map(|c| Out {
                dest: Dest::Member(from),
                msg: SessionMessage::Merge(c),
            })
            .collect()
    }

    /// Reconciles copies from another member with this node's (see [`super::reconcile`]).
    fn merge(&mut self, from: MemberId, states: &[SessionState]) -> Vec<SessionEvent> {
        let mut events = Vec::new();
        for theirs in states {
            // The dead renamer's state, under a change of id undone here
            // (`ReplicaStore::is_undone`).
            if self.store.is_undone(&theirs.id) {
                continue;
            }
            let id = self.store.resolve(&theirs.id).clone();
            let merger = self.merger.as_deref();
            match self.store.get(&id) {
                // Created here by a request still running: nobody else can have it.
                Some(_) if self.unannounced.contains(&id) => {}
                Some(mine) => {
                    let mut theirs = theirs.clone();
                    theirs.id = id.clone();
                    if let Some(next) = reconcile(mine.state(), &theirs, merger) {
                        self.store.put(next);
                    }
                }
                None => {
                    let back = match self.store.tombstone(&id) {
                        Some(t) if t.renamed.is_some() => false,
                        // The sender went on from a copy without the end, in this member's
                        // view, and its changes were refused here: its copy is above the end
                        // only by changes never acknowledged (seed 379 of the kill -9
                        // simulation: an end that reached only this member before its maker
                        // died came undone by the sender's answer to a digest). Or this node
                        // ended the session and told the sender, whose copy was made before
                        // the end reached it (seed 366: a copy asked for before a logout).
                        Some(_) if self.refused.refuses(&id, from) => false,
                        Some(t) => live_beats_end(theirs.version, t.version),
                        None => true,
                    };
                    if back {
                        let mut st = theirs.clone();
                        st.id = id.clone();
                        self.store.put(st);
                        events.push(SessionEvent::Created(id));
                    }
                }
            }
        }
        events
    }

    /// A new session, announced to the others when its request ends.
    pub fn create(&mut self, now_ms: u64) -> Result<SessionId, SessionIdError> {
        let id = SessionId::generate_from(&self.route, self.ids.as_mut())?;
        let mut s = Session::new(id.clone(), now_ms, self.cfg.max_inactive);
        s.served = Served {
            here: true,
            replicated_access_ms: now_ms,
            ..Served::default()
        };
        self.store.insert_local(s);
        self.unannounced.insert(id.clone());
        Ok(id)
    }

    pub fn session(&self, id: &SessionId) -> Option<&Session> {
        self.store.get(id).filter(|s| s.is_valid())
    }

    pub fn session_mut(&mut self, id: &SessionId) -> Option<&mut Session> {
        self.store.get_mut(id).filter(|s| s.is_valid())
    }

    /// The end of a request that used session `id`: what to tell the others. A session created
    /// by this request goes out whole (with what the request stored in it); otherwise its
    /// changes as one DELTA; otherwise, if the others' access time is getting old (or another
    /// node served it last), an ACCESSED.
    pub fn end_request(&mut self, id: &SessionId, now_ms: u64) -> Vec<Out> {
        let Some(s) = self.store.get_mut(id).filter(|s| s.is_valid()) else {
            return Vec::new();
        };
        s.access(now_ms);
        s.mark_not_new();
        let was_primary = std::mem::replace(&mut s.served.here, true);
        (s.served.writer, s.served.writer_left) = (None, false);
        let msg = if self.unannounced.remove(id) {
            // Changes made before the announcement are part of the state it carries.
            let _ = s.take_delta();
            Some(SessionMessage::Created(s.state().clone()))
        } else if let Some((base, version, ops)) = s.take_delta() {
            Some(SessionMessage::Delta {
                id: id.clone(),
                base,
                version,
                ops,
                last_accessed_ms: s.last_accessed_ms(),
                fingerprint: s.fingerprint(),
            })
        } else {
            let stale = s.access_refresh_due(s.served.replicated_access_ms, now_ms);
            (!was_primary || stale).then(|| SessionMessage::Accessed {
                id: id.clone(),
                version: s.version(),
                last_accessed_ms: s.last_accessed_ms(),
                fingerprint: s.fingerprint(),
            })
        };
        match msg {
            Some(msg) => {
                s.served.replicated_access_ms = now_ms;
                // A change made here on a copy still waiting for a sender's (the request went
                // on): the copy it is made on stands, and the sender's, when it comes, must
                // not take its place (seeds 195, 257, 361 of the kill -9 simulation made a
                // version twice when a joiner's awaited copy replaced its own change).
                if matches!(msg, SessionMessage::Delta { .. }) {
                    self.store.unfork(id);
                }
                vec![Out {
                    dest: Dest::All,
                    msg,
                }]
            }
            None => Vec::new(),
        }
    }

    /// A stop that leaves the sessions to the other members: every copy here goes, and no
    /// end is remembered. A remembered end is this node's word that the session ended, given
    /// while its channel still runs (the digest a joiner asks for, `Expired` for a
    /// `GetSession`): the joiner ended its copy, and its digest after the leave the others'
    /// (the real-socket reference scenario; the clean-stop simulation, seed 4).
    pub fn drop_copies(&mut self) -> Vec<SessionEvent> {
        self.unannounced.clear();
        let ids: Vec<SessionId> = self.store.ids().cloned().collect();
        ids.into_iter()
            .filter(|id| self.store.forget(id).is_some())
            .map(SessionEvent::Destroyed)
            .collect()
    }

    /// Ends a session everywhere (invalidate).
    pub fn invalidate(&mut self, id: &SessionId) -> (Vec<Out>, Vec<SessionEvent>) {
        self.end_here(id, true)
    }

    /// Ends a session here and, if `tell`, on every member. Told, the end wins here over every
    /// copy the members in view hold now (`refused`): each ends its own when the end arrives,
    /// so a copy of theirs still on its way (the answer to a question asked before the end)
    /// that brought the session back here would live on here alone, and undo a logout (seed
    /// 366 of the kill -9 simulation with route rebinding). Not told (a copy served elsewhere
    /// expiring here), the others keep their copies, which still win by version.
    fn end_here(&mut self, id: &SessionId, tell: bool) -> (Vec<Out>, Vec<SessionEvent>) {
        let announced = !self.unannounced.remove(id);
        match self.store.end(id) {
            Some(s) if announced && tell => {
                self.refused.add(id, self.members.iter().copied());
                (
                    vec![Out {
                        dest: Dest::All,
                        msg: SessionMessage::Expired {
                            id: id.clone(),
                            version: s.version(),
                        },
                    }],
                    vec![SessionEvent::Destroyed(id.clone())],
                )
            }
            Some(_) => (Vec::new(), vec![SessionEvent::Destroyed(id.clone())]),
            None => (Vec::new(), Vec::new()),
        }
    }

    /// Gives session `old` a new id (after login), everywhere.
    pub fn change_id(
        &mut self,
        old: &SessionId,
    ) -> Result<(SessionId, Vec<Out>, Vec<SessionEvent>), SessionIdError> {
        if self.session(old).is_none() {
            // Nothing to rename: the id stays (the caller's session ended meanwhile).
            return Ok((old.clone(), Vec::new(), Vec::new()));
        }
        let new = SessionId::generate_from(&self.route, self.ids.as_mut())?;
        Ok(self
            .change_id_to(old, new)
            .unwrap_or_else(|| (old.clone(), Vec::new(), Vec::new())))
    }

    /// This node's route (the suffix of the ids it makes).
    pub fn route(&self) -> &str {
        &self.route
    }

    /// Whether `id` names a session here, or one that ended or was renamed here: a rename to
    /// it would be refused (or lost) by the members that remember it.
    pub fn id_known(&self, id: &SessionId) -> bool {
        self.store.get(id).is_some() || self.store.tombstone(id).is_some()
    }

    /// Whether `id` is an id session `current` had before (renamed away from it here): a
    /// rename back to it is taken by every member (`ReplicaStore::rename_at`).
    pub fn is_former_id(&self, id: &SessionId, current: &SessionId) -> bool {
        self.store.is_former_id(id, current)
    }

    /// Gives session `old` the id `new`, everywhere, as a change of id does (a rebound route
    /// keeps the random part). `None` when `old` is not here or `new` is known here (other
    /// than as an id this session had).
    pub fn change_id_to(
        &mut self,
        old: &SessionId,
        new: SessionId,
    ) -> Option<(SessionId, Vec<Out>, Vec<SessionEvent>)> {
        if self.session(old).is_none() || (self.id_known(&new) && !self.is_former_id(&new, old)) {
            return None;
        }
        // What the others' copies should be, named with the rename (no content when changes
        // made here wait for the next request to be replicated).
        let (version, named) = self.store.get(old).map_or((0, None), |s| {
            (s.version(), (!s.has_pending()).then(|| s.fingerprint()))
        });
        // Retires the old id here too, so changes from other nodes still in flight for it follow.
        self.store.rename_at(old, &new, Some(version));
        let ev = vec![SessionEvent::IdChanged {
            old: old.clone(),
            new: new.clone(),
        }];
        if self.unannounced.remove(old) {
            self.unannounced.insert(new.clone());
            return Some((new, Vec::new(), ev));
        }
        Some((
            new.clone(),
            vec![Out {
                dest: Dest::All,
                msg: SessionMessage::ChangeId {
                    old: old.clone(),
                    new,
                    version,
                    fingerprint: named,
                },
            }],
            ev,
        ))
    }

    /// The reaper: sessions this node served last expire at their max inactive interval and
    /// the others are told; copies served elsewhere expire here only at twice that, in case
    /// their primary died before telling.
    pub fn expire(&mut self, now_ms: u64) -> (Vec<Out>, Vec<SessionEvent>) {
        let mut outs = Vec::new();
        let mut events = Vec::new();
        let due: Vec<SessionId> = self
            .store
            .ids()
            .filter(|id| {
                let Some(s) = self.store.get(id) else {
                    return false;
                };
                let primary = s.served.here;
                let idle = now_ms.saturating_sub(s.last_accessed_ms());
                let max = s.max_inactive().as_millis() as u64;
                max > 0
                    && if primary {
                        idle > max
                    } else {
                        idle > max.saturating_mul(2)
                    }
            })
            .cloned()
            .collect();
        for id in due {
            // Only the node that served it last tells the others (Tomcat: a backup copy expires
            // locally): a replica whose access time is stale must not end a session in use.
            let primary = self.store.get(&id).is_some_and(|s| s.served.here);
            let (o, e) = self.end_here(&id, primary);
            outs.extend(o);
            events.extend(e);
        }
        (outs, events)
    }

    /// A message from member `from` (a copy of it: see [`Self::handle_taking`]).
    #[cfg(test)]
    pub fn handle(
        &mut self,
        from: MemberId,
        msg: &SessionMessage,
    ) -> (Vec<Out>, Vec<SessionEvent>) {
        self.handle_taking(from, &mut msg.clone())
    }

    /// A message from member `from`. The sessions it carries are moved into the store
    /// ([`ReplicaStore::apply_taking`]: what is left of the message is their ids).
    pub fn handle_taking(
        &mut self,
        from: MemberId,
        msg: &mut SessionMessage,
    ) -> (Vec<Out>, Vec<SessionEvent>) {
        match msg {
            SessionMessage::GetSession { id } => {
                let outs = self
                    .answer_get_session(id)
                    .into_iter()
                    .map(|msg| Out {
                        dest: Dest::Member(from),
                        msg,
                    })
                    .collect();
                (outs, Vec::new())
            }
            SessionMessage::GetAllSessions => {
                self.start_donation(from);
                (self.next_chunk(from).into_iter().collect(), Vec::new())
            }
            SessionMessage::NoContextManager => self.end_state_transfer(),
            // Answered by `answer_get_digest`, which needs the time.
            SessionMessage::GetDigest => (Vec::new(), Vec::new()),
            SessionMessage::Digest(entries) if !self.ready => {
                self.hold_digest(from, entries);
                (Vec::new(), Vec::new())
            }
            SessionMessage::Digest(entries) => self.read_digest(from, entries),
            // A joiner's transfer and the digests it asks for bring what it could miss.
            SessionMessage::DigestAfterLeave(_) if !self.ready => (Vec::new(), Vec::new()),
            SessionMessage::DigestAfterLeave(entries) => {
                self.read_digest_after_leave(from, entries)
            }
            SessionMessage::GetSessions(ids) => (self.answer_get_sessions(from, ids), Vec::new()),
            // The copy held here stays (the manager stops waiting for that member's).
            SessionMessage::NotHere { .. } => (Vec::new(), Vec::new()),
            SessionMessage::Merge(states) => (Vec::new(), self.merge(from, states)),
            _ => {
                let was_ready = self.ready;
                let (mut outs, mut events) = self.apply_remote(from, msg);
                if self.ready && !was_ready {
                    let (o, e) = self.read_pending_digests();
                    outs.extend(o);
                    events.extend(e);
                }
                (outs, events)
            }
        }
    }

    /// The answer to `GetSession`: the copy; the end remembered here; or, for an id this node
    /// never held (or holds unannounced), `NotHere`, which is not an end: a change of id or a
    /// CREATED that reached the asker and not this node must not end the asker's live copy.
    ///
    /// An id renamed here is answered with the change of id, then the answer for the new id:
    /// the session lives on (an `Expired` for the old id ended the asker's copy).
    fn answer_get_session(&self, id: &SessionId) -> Vec<SessionMessage> {
        let cur = self.store.resolve(id);
        let mut answer = Vec::new();
        if cur != id {
            let t = self.store.tombstone(id);
            answer.push(SessionMessage::ChangeId {
                old: id.clone(),
                new: cur.clone(),
                version: t.map_or(0, |t| t.version),
                fingerprint: None,
            });
        }
        answer.push(match (self.store.get(cur), self.store.tombstone(cur)) {
            (Some(s), _) if s.is_valid() && !self.unannounced.contains(cur) => {
                SessionMessage::State(s.state().clone())
            }
            (_, Some(t)) if t.renamed.is_none() => SessionMessage::Expired {
                id: cur.clone(),
                version: t.version,
            },
            _ => SessionMessage::NotHere { id: cur.clone() },
        });
        answer
    }

    /// Starts a state transfer to `from`, which asked for every session (`GetAllSessions`);
    /// its chunks come from [`Self::next_chunk`]. Asked again, the transfer starts over (the
    /// joiner lost what came).
    pub fn start_donation(&mut self, from: MemberId) {
        if !self.donations.contains_key(&from) && self.donations.len() >= MAX_DONATIONS {
            self.donations.pop_first();
        }
        let start = Donation {
            after: None,
            index: 0,
        };
        self.donations.insert(from, start);
    }

    /// Whether a state transfer to `to` has chunks still to send.
    pub fn is_donating_to(&self, to: MemberId) -> bool {
        self.donations.contains_key(&to)
    }

    /// Stops the state transfer to `to` (a chunk could not be sent; the joiner asks again).
    pub fn cancel_donation(&mut self, to: MemberId) {
        self.donations.remove(&to);
    }

    /// The next chunk of the state transfer to `to`, if one is under way: the sessions after
    /// the last one sent, in id order, at most `send_all_sessions_size` of them and
    /// [`CHUNK_BYTES`]. Sessions the cursor has passed reach the joiner by replication (it is
    /// a member by then), like those made later; one ended before its turn is not sent.
    pub fn next_chunk(&mut self, to: MemberId) -> Option<Out> {
        let d = self.donations.get(&to)?;
        let n = self.cfg.send_all_sessions_size.max(1);
        // One more than a chunk holds: whether another chunk follows this one.
        let mut ids = self.store.ids_after(d.after.as_ref(), n + 1);
        let mut done = ids.len() <= n;
        ids.truncate(n);
        let (mut states, mut bytes, mut last) = (Vec::new(), 0usize, None);
        for (i, id) in ids.iter().enumerate() {
            let Some(s) = self.store.get(id) else {
                continue;
            };
            // A forked copy is not offered either (see `answer_get_sessions`): the joiner's
            // catch-up brings the copy of the member serving the session (seed 284).
            if self.unannounced.contains(*id) || !s.is_valid() || self.store.is_forked(id) {
                last = Some(i);
                continue;
            }
            let size = s.size();
            if !states.is_empty() && bytes + size > CHUNK_BYTES {
                done = false;
                break;
            }
            bytes += size;
            states.push(s.state().clone());
            last = Some(i);
        }
        let after = last.map(|i| ids[i].clone());
        let index = d.index;
        if done {
            self.donations.remove(&to);
        } else if let Some(d) = self.donations.get_mut(&to) {
            d.index += 1;
            d.after = after.or(d.after.take());
        }
        let count = if done { index + 1 } else { COUNT_UNKNOWN };
        Some(Out {
            dest: Dest::Member(to),
            msg: SessionMessage::AllSessions {
                states,
                index,
                count,
            },
        })
    }

    /// An ACCESSED from the member serving the session now, at a version below this copy's,
    /// when this copy's version came from a member that left since: that version is the dead
    /// member's change that failed (the member serving the session never had it, so it was
    /// never acknowledged), and the user was served the state before it. This copy forked:
    /// the sender's copy is asked for and replaces it (a digest after the death no longer
    /// brings the failed change back over what the user was served: seeds 209, 265, 392 of
    /// the kill -9 simulation). A member that left makes no later message, so a late ACCESSED
    /// of a member that served the session before it is told apart from this case: the
    /// writer of a later version it did not have is still a member.
    fn served_below_a_dead_writers_version(
        &mut self,
        from: MemberId,
        msg: &SessionMessage,
    ) -> Option<Out> {
        let SessionMessage::Accessed {
            id,
            version,
            fingerprint,
            ..
        } = msg
        else {
            return None;
        };
        let cur = self.store.resolve(id).clone();
        let newer = self.store.get(&cur).is_some_and(|s| s.version() > *version);
        let s = self
            .store
            .get_mut(&cur)
            .filter(|s| s.served.writer_left && newer)?;
        s.served.here = false;
        self.store.note_fork(&cur, *version, Some(*fingerprint));
        Some(Out {
            dest: Dest::Member(from),
            msg: SessionMessage::GetSession { id: cur },
        })
    }

    /// A change (DELTA, ACCESSED) from a member serving the session under `old`, an id renamed
    /// here to `new` by a change of id whose maker left since, no member having changed the
    /// session here since: that change of id is the dead member's, and failed (the member
    /// serving the session never had it; its user's request was not answered). It is undone
    /// here: the copy under `new` (the dead member's state) is dropped, `new` now leads back to
    /// `old`, and the sender's copy of `old` is asked for. A session renamed by a change of id
    /// that reached only some members before its maker died went on under the old id at
    /// the member the user moved to, and under the new id on the others, until the digests
    /// after the death renamed the served copy too (seeds 89, 135, 144, 368 of the kill -9
    /// simulation: a copy under a state its origin never made). So does the copy (`State`)
    /// of `old` a forked copy under `new` waits for, which then applies under `old` (seed 427:
    /// the fork took the sender's state under `new`, an id no live member serves it under),
    /// whether or not the maker of the change of id was seen to leave (seed 78).
    ///
    /// A DELTA under `old` made on the version the change of id was made at or a later one
    /// undoes it too, its maker listed or not, when the sender is not the member that brought
    /// the copy's version: the sender served the session under `old` without ever having had
    /// the change of id, which therefore failed (a change of id that stands reached every
    /// member before its user's request was answered; a change made before it is on a lower
    /// version). Seeds 99, 227, 427 of the kill -9 simulation: the change applied under `new`
    /// before its maker's death was seen, and `new` held a state its origin never made under
    /// it; seeds 78, 147, 271: the change forked the copy under `new`, whose awaited copy
    /// could then only come under `old` and was taken under `new`.
    fn undo_a_dead_members_change_of_id(
        &mut self,
        from: MemberId,
        msg: &SessionMessage,
    ) -> Option<(Out, SessionEvent)> {
        let (old, awaited, base) = match msg {
            SessionMessage::Delta { id, base, .. } => (id, None, Some(*base)),
            SessionMessage::Accessed { id, .. } => (id, None, None),
            SessionMessage::State(st) => (&st.id, Some((st.version, fingerprint(st))), None),
            _ => return None,
        };
        let t = self.store.tombstone(old)?;
        // An access under `old`, no newer than the change of id, from the member whose digest
        // told it here: that member held the session under `new`, so its access was made
        // before the change of id and came late (donor-leaves seed 96 with changes of id: the
        // copy's writer had left, and a change of id that stands came undone here).
        if let SessionMessage::Accessed { version, .. } = msg {
            if t.told_by == Some(from) && *version <= t.version {
                return None;
            }
        }
        let (new, renamed_at) = (t.renamed.clone()?, t.version);
        let copy = self.store.get(&new)?;
        let beyond =
            !t.undone && base.is_some_and(|b| b >= renamed_at) && copy.served.writer != Some(from);
        let writer_left = copy.served.writer_left;
        // A state under `old` is taken only as the one a fork here waits for (a late answer
        // of a member that had not yet had a change of id that stands is not). That answer
        // shows the change of id never reached the member serving the session (it holds
        // `old`), so it was never acknowledged: it is undone even before its maker is seen
        // to leave (seed 78 of the kill -9 simulation: the user's next changes under `old`,
        // taken under `new` here, were acknowledged, and a request under `old` found none).
        match awaited {
            Some((v, fp)) if !self.store.fork_awaits(&new, v, fp) => return None,
            Some(_) => {}
            None if !writer_left && !beyond => return None,
            None => {}
        }
        self.store.undo_rename(old, &new);
        let ask = Out {
            dest: Dest::Member(from),
            msg: SessionMessage::GetSession { id: old.clone() },
        };
        let undone = SessionEvent::IdChanged {
            old: new,
            new: old.clone(),
        };
        Some((ask, undone))
    }

    /// Remembers which member brought the copy's version (see [`Served::writer`]).
    fn note_writer(&mut self, from: MemberId, msg: &SessionMessage) {
        let id = match msg {
            SessionMessage::Delta { id, .. } => id,
            SessionMessage::Created(st) | SessionMessage::State(st) => &st.id,
            _ => return,
        };
        // Held under another id than the message names: the sender has not had the change of
        // id, which stays its maker's (undone if that member left since and the sender goes
        // on under the old id: `undo_a_dead_members_change_of_id`; seed 50 of the kill -9
        // simulation, where the sender's copy taken under the new id hid the dead renamer).
        if let Some(s) = self.store.get_mut(id) {
            (s.served.writer, s.served.writer_left) = (Some(from), false);
        }
    }

    fn apply_remote(
        &mut self,
        from: MemberId,
        msg: &mut SessionMessage,
    ) -> (Vec<Out>, Vec<SessionEvent>) {
        let mut events = Vec::new();
        if let Some(id) = self.ended_here(msg) {
            self.refused.add(&id, [from]);
        }
        let existed = |c: &DeltaCore, id: &SessionId| c.store.get(id).is_some();
        let before: Vec<(SessionId, bool)> = match msg {
            SessionMessage::Created(st) | SessionMessage::State(st) => {
                vec![(st.id.clone(), existed(self, &st.id))]
            }
            SessionMessage::AllSessions { states, .. } => states
                .iter()
                .map(|st| (st.id.clone(), existed(self, &st.id)))
                .collect(),
            SessionMessage::Expired { id, .. } => vec![(id.clone(), existed(self, id))],
            _ => Vec::new(),
        };
        // Attribute events of a delta, decided against the copy before it changes.
        let attr_events = match msg {
            SessionMessage::Delta { id, ops, .. } => self
                .store
                .get(id)
                .map_or(Vec::new(), |s| attribute_events(s, ops)),
            _ => Vec::new(),
        };
        if let Some(ask) = self.served_below_a_dead_writers_version(from, msg) {
            return (vec![ask], events);
        }
        if let Some((ask, undone)) = self.undo_a_dead_members_change_of_id(from, msg) {
            // A whole copy of `old` applies at once; a change asks for one.
            if !matches!(msg, SessionMessage::State(_)) {
                return (vec![ask], vec![undone]);
            }
            events.push(undone);
        }
        let outcome = self.store.apply_taking(msg);
        if outcome == Outcome::Applied {
            events.extend(attr_events);
            self.note_writer(from, msg);
        }
        // A change of id applied on a copy that is not the sender's: the rename stands.
        let renamed = matches!(outcome, Outcome::Applied | Outcome::Forked(_));
        match (&outcome, &*msg) {
            // Ready once every chunk arrived (one lost on a reset leaves the transfer to time out
            // rather than pretend it is complete). Only while a transfer runs, and only indexes
            // below the count: chunks from the network cannot grow the set.
            (_, SessionMessage::AllSessions { index, count, .. })
                if !self.ready && index < count =>
            {
                self.chunks_seen.insert(*index);
                if self.chunks_seen.len() >= *count as usize {
                    self.ready = true;
                    self.chunks_seen.clear();
                }
            }
            (Outcome::Applied, SessionMessage::Expired { id, .. }) => {
                events.push(SessionEvent::Destroyed(id.clone()));
            }
            (_, SessionMessage::ChangeId { old, new, .. }) if renamed => {
                if let Some(s) = self.store.get_mut(new) {
                    // The copy now has the renamer's id: a rename is the renamer's change.
                    (s.served.writer, s.served.writer_left) = (Some(from), false);
                }
                events.push(SessionEvent::IdChanged {
                    old: old.clone(),
                    new: new.clone(),
                });
            }
            _ => {}
        }
        for (id, had) in before {
            if !had && self.store.get(&id).is_some() {
                events.push(SessionEvent::Created(id.clone()));
            }
        }
        // Another node served this session: it is no longer primary here.
        match msg {
            SessionMessage::Delta { id, .. } | SessionMessage::Accessed { id, .. } => {
                if let Some(s) = self.store.get_mut(id) {
                    s.served.here = false;
                }
            }
            _ => {}
        }
        let outs = match outcome {
            Outcome::Resync(id) | Outcome::Forked(id) => vec![Out {
                dest: Dest::Member(from),
                msg: SessionMessage::GetSession { id },
            }],
            _ => Vec::new(),
        };
        (outs, events)
    }
}

#[cfg(test)]
mod tests;
