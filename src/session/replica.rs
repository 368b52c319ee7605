//! The replicated session store of one application on one node, pure: the messages the
//! DeltaManager exchanges (Tomcat's `SessionMessage` types) and the rules that apply them, with
//! per-session versions so a duplicate, a stale or a reordered message never changes a session,
//! and a missing change makes this node ask for the whole session again.
//!
//! Where Tomcat is weak (tribes-inventory §7): its DELTA for an unknown session is dropped
//! silently and its dispatch threads can reorder CREATED and DELTA; here an unknown or skipped-
//! over session is asked for again (`Outcome::Resync`), and an expired session leaves a
//! tombstone so that a late CREATED or DELTA cannot bring it back.

use super::id::SessionId;
use super::model::{Checked, DeltaOp, Session, SessionState};
use super::reconcile::{fingerprint, Stamp};
use super::table::SessionTable;
use crate::member::MemberId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};

/// What the managers of one application say to each other (Tomcat's `SessionMessage` events).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionMessage {
    /// EVT_SESSION_CREATED: the whole new session.
    Created(SessionState),
    /// EVT_SESSION_DELTA: a request's changes, made on version `base`, giving `version`,
    /// whose result has the content fingerprint `fingerprint`
    /// ([`crate::session::reconcile::fingerprint`]): a replica whose copy at `version` (or
    /// whose result) has another content holds a fork, and asks for the sender's copy instead
    /// of taking the change for a duplicate.
    Delta {
        id: SessionId,
        base: u64,
        version: u64,
        ops: Vec<DeltaOp>,
        last_accessed_ms: u64,
        fingerprint: u64,
    },
    /// EVT_SESSION_ACCESSED: only the access time moved (sent throttled). It carries the
    /// session's version, so a replica that missed a change (or the whole session) notices and
    /// asks for it.
    /// With the content fingerprint of the sender's copy: a replica at the same version with
    /// another content holds a fork and asks for the sender's copy.
    Accessed {
        id: SessionId,
        version: u64,
        last_accessed_ms: u64,
        fingerprint: u64,
    },
    /// EVT_SESSION_EXPIRED: expired or invalidated, everywhere. `version`: the session's
    /// version when it ended, which every member remembers alike for reconciliation after a
    /// partition.
    Expired { id: SessionId, version: u64 },
    /// EVT_CHANGE_SESSION_ID: the session now has a new id (fixation protection). With the
    /// version and content fingerprint of the sender's copy when it renamed it (no
    /// fingerprint when the sender holds changes not yet replicated): a replica whose copy is
    /// newer or, at that version, another content holds a fork (a change of a member that died
    /// before it was acknowledged) and asks for the sender's copy.
    ChangeId {
        old: SessionId,
        new: SessionId,
        version: u64,
        fingerprint: Option<u64>,
    },
    /// Ask the sender for one session's whole state (after a gap).
    GetSession { id: SessionId },
    /// The answer to `GetSession`, or a session sent during state transfer.
    State(SessionState),
    /// EVT_GET_ALL_SESSIONS: a joining member asks for every session.
    GetAllSessions,
    /// EVT_ALL_SESSION_DATA: chunk `index` of `count` of the state transfer, each at most
    /// `sendAllSessionsSize` sessions (and [`super::delta::CHUNK_BYTES`]). The joiner is ready
    /// once it has every index. A streaming donor does not know the count before its last
    /// chunk: the others carry [`super::delta::COUNT_UNKNOWN`], the last `index + 1`.
    AllSessions {
        states: Vec<SessionState>,
        index: u32,
        count: u32,
    },
    /// EVT_ALL_SESSION_NOCONTEXTMANAGER: the member has no such application.
    NoContextManager,
    /// What the sender holds, sent to a member that appeared (after a partition heals, or to a
    /// joiner, which reads it once its state transfer is done): the receiver asks for the
    /// copies that may win over its own ([`crate::session::reconcile`]). In chunks.
    Digest(Vec<DigestEntry>),
    /// The copies of these sessions, please (after a digest).
    GetSessions(Vec<SessionId>),
    /// The answer to `GetSessions`: copies to reconcile with, not to adopt blindly. In
    /// chunks, the last one empty (the asker stops waiting for what the sender lacks).
    Merge(Vec<SessionState>),
    /// A joiner whose state transfer is done asks each member for its digest: a change made
    /// after the donor's snapshot, before that member listed the joiner, shows there. The
    /// answer is `Digest` chunks, the last one empty; the joiner holds requests until then.
    GetDigest,
    /// The answer to `GetSession` from a member that holds no copy of the session and
    /// remembers no end or change of id of it (a change that reached only some members before
    /// its maker died, or a copy not yet announced): not an end. The asker keeps its copy and
    /// stops waiting for this member's.
    NotHere { id: SessionId },
    /// What the sender holds (as in `Digest`), sent to every member that stays when a member
    /// left: a change the one that left made before it died (CREATED, DELTA, change of id,
    /// end) may have reached only some of them. The receiver catches up, and reconciles
    /// nothing: it takes changes of id and ends, and asks for copies newer than its own (or
    /// the one its forked copy waits for) with `GetSession`; copies at its version with
    /// another content stay (the member serving the session settles them with its next
    /// change).
    DigestAfterLeave(Vec<DigestEntry>),
}

/// One session in a [`SessionMessage::Digest`] or [`SessionMessage::DigestAfterLeave`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DigestEntry {
    Live(SessionId, Stamp),
    /// Ended at this version.
    Ended(SessionId, u64),
    /// Renamed at this version (the renamer's, or the copy's when it was renamed here; 0 if
    /// neither was known): a receiver whose copy of the old id is newer holds a session that
    /// went on under it since (route rebinding keeps the random part and can bring it back;
    /// any other change of id failed), and does not follow it.
    Renamed(SessionId, SessionId, u64),
}

/// What applying a message did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    /// Nothing changed: a duplicate, a stale message, or one about a session that has ended.
    Ignored(&'static str),
    /// A change is missing for this session: ask the sender for it (`GetSession`).
    Resync(SessionId),
    /// Applied (a change of id), but the copy is not the sender's: ask the sender for it.
    Forked(SessionId),
}

/// What is remembered of a session that is no longer here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tombstone {
    /// Its new id, if it was renamed rather than ended.
    pub renamed: Option<SessionId>,
    /// The session's version when it ended (reconciliation after a partition keeps a copy of a
    /// higher version); renamed, the version the change of id was made at (the renamer's when
    /// it told it, else the copy's here).
    pub version: u64,
    /// Until when a copy elsewhere could still be alive (twice its max inactive interval after
    /// the ended copy's last access): older ends are not worth telling other members about.
    pub relevant_until_ms: u64,
    /// A change of id undone here ([`ReplicaStore::undo_rename`]): `renamed` leads back to
    /// the id the session had before it.
    pub undone: bool,
    /// Renamed here as this member's digest told (it held the session under the new id).
    pub told_by: Option<MemberId>,
}

/// Until when a copy of `s` elsewhere may still be alive: twice its max inactive interval after
/// its last access here (the replicas' expiry).
fn horizon(s: &Session) -> u64 {
    let max = s.state().max_inactive_ms;
    if max == 0 {
        return u64::MAX;
    }
    s.last_accessed_ms().saturating_add(max.saturating_mul(2))
}

/// Sessions of one application, as replicated to this node.
pub struct ReplicaStore {
    /// Looked up on every message, so hashed; whatever iterates it (and makes messages from
    /// it) goes in id order, so a run does not depend on the hasher's keys.
    sessions: SessionTable,
    /// Ended sessions, remembered so that a late message cannot bring one back; a renamed one
    /// remembers its new id, so that changes still in flight for the old id follow it. Bounded:
    /// the oldest are forgotten first. Hashed (looked up on every message); iterated only
    /// through `tombstone_order`.
    tombstones: HashMap<SessionId, Tombstone>,
    tombstone_order: VecDeque<SessionId>,
    max_tombstones: usize,
    /// Sessions whose copy here forked from a sender's (a DELTA named another content at a
    /// version this copy has), with the version and fingerprint that sender named: its copy,
    /// asked for, replaces this one even at the same version. Bounded by `MAX_FORKED`.
    forked: BTreeMap<SessionId, (u64, Option<u64>)>,
}

/// Forked copies waiting for the sender's copy, at most (the oldest by id are dropped: such a
/// copy is then only replaced by a newer version).
const MAX_FORKED: usize = 10_000;

impl ReplicaStore {
    pub fn new(max_tombstones: usize) -> ReplicaStore {
        ReplicaStore {
            sessions: SessionTable::new(),
            tombstones: HashMap::new(),
            tombstone_order: VecDeque::new(),
            max_tombstones: max_tombstones.max(1),
            forked: BTreeMap::new(),
        }
    }

    pub fn get(&self, id: &SessionId) -> Option<&Session> {
        self.sessions.get(id)
    }

    pub fn get_mut(&mut self, id: &SessionId) -> Option<&mut Session> {
        self.sessions.get_mut(id)
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Calls `f` on every live copy (order unspecified: `f` must not decide outputs).
    pub(crate) fn for_each_mut(&mut self, f: impl FnMut(&mut Session)) {
        self.sessions.values_mut().for_each(f);
    }

    pub fn ids(&self) -> impl Iterator<Item = &SessionId> {
        let mut ids: Vec<&SessionId> = self.sessions.ids().collect();
        ids.sort_unstable();
        ids.into_iter()
    }

    /// The first `n` ids after `after` (from the first when `None`), in order: the next chunk
    /// of a state transfer, found without sorting (or copying) the whole store.
    pub fn ids_after(&self, after: Option<&SessionId>, n: usize) -> Vec<&SessionId> {
        let mut ids: Vec<&SessionId> = self
            .sessions
            .ids()
            .filter(|id| after.is_none_or(|a| *id > a))
            .collect();
        if ids.len() > n {
            ids.select_nth_unstable(n);
            ids.truncate(n);
        }
        ids.sort_unstable();
        ids
    }

    /// Adds a session made on this node.
    pub fn insert_local(&mut self, s: Session) {
        self.sessions.insert(s);
    }

    /// Ends a session on this node (invalidated or expired); returns it if it was here.
    pub fn end(&mut self, id: &SessionId) -> Option<Session> {
        let version = self.sessions.get(id).map_or(0, Session::version);
        self.end_at(id, version)
    }

    /// Drops this node's copy without remembering an end: the session lives on elsewhere.
    pub fn forget(&mut self, id: &SessionId) -> Option<Session> {
        self.forked.remove(id);
        self.sessions.remove(id)
    }

    /// Ends a session that ended at `version` (here, or as another member says).
    pub fn end_at(&mut self, id: &SessionId, version: u64) -> Option<Session> {
        let Some(s) = self.sessions.remove(id) else {
            match self.tombstones.get_mut(id) {
                // Ended twice (two members ended it at once, one after a change the other had
                // not seen): every member keeps the higher version, whichever end arrives
                // first, so all decide alike when a copy from a partition meets the end. With
                // the first end kept, members of one side held one end at versions 2 and 3, and
                // the other side's copy at version 3 lived on some and ended on others (the
                // partition simulation with changes of id, seed 87 with word-wise fingerprints).
                Some(t) if t.renamed.is_none() => t.version = t.version.max(version),
                // Renamed: the rename stands.
                Some(_) => {}
                None => self.bury(id.clone(), None, version, 0),
            }
            return None;
        };
        self.tombstones.remove(id);
        let until = horizon(&s);
        self.bury(id.clone(), None, version, until);
        Some(s)
    }

    /// Puts a session here whatever this node knew of it (reconciliation decided it): replaces
    /// the copy, or brings back an id ended here earlier than the copy was last used.
    pub fn put(&mut self, state: SessionState) {
        self.tombstones.remove(&state.id);
        self.replace_copy(Session::from_state(state));
    }

    /// Puts a copy from elsewhere in place of this node's, keeping what this node knows of
    /// serving it.
    fn replace_copy(&mut self, mut s: Session) {
        if let Some(old) = self.sessions.get(s.id()) {
            s.served = old.served;
        }
        self.sessions.insert(s);
    }

    /// Tombstones held and the length of their order (both bounded by `max_tombstones`).
    #[cfg(test)]
    pub(crate) fn tombstone_load(&self) -> (usize, usize) {
        (self.tombstones.len(), self.tombstone_order.len())
    }

    /// What is remembered of a session no longer here.
    pub fn tombstone(&self, id: &SessionId) -> Option<&Tombstone> {
        self.tombstones.get(id)
    }

    /// Every remembered end and rename, oldest first.
    pub fn tombstones(&self) -> impl Iterator<Item = (&SessionId, &Tombstone)> {
        self.tombstone_order
            .iter()
            .filter_map(|id| self.tombstones.get(id).map(|t| (id, t)))
    }

    /// Gives session `old` the id `new` (change of id): the old id is retired for good, and
    /// changes still in flight for it are applied to `new`. When a copy of `new` is already here
    /// (fetched by a resync), the newer of the two is kept. A rename told without a version
    /// (a digest's, from a member that held no copy) never takes a session back to a former
    /// id (see [`Self::rename_at`]).
    #[cfg(test)]
    pub fn rename(&mut self, old: &SessionId, new: &SessionId) -> Outcome {
        self.rename_at(old, new, None)
    }

    /// [`Self::rename`], told by the renamer at its copy's `version` (a `ChangeId`). Route
    /// rebinding keeps the random part, so a session can come back to an id it had (`S.node1`
    /// → `S.node2` → `S.node1`), renamed by a member that restarted since and no longer
    /// remembers that id as retired. Here, where the renames from `new` lead to `old`, a rename
    /// at or above the version `new` was retired at takes the session back to it; an older one,
    /// or one without a version, is news from before the return and changes nothing. (Before,
    /// the session was dropped as renamed to a retired id.) A change of id undone here
    /// ([`Self::undo_rename`]) and now made by a member that lives stands, whatever its version.
    pub fn rename_at(&mut self, old: &SessionId, new: &SessionId, told: Option<u64>) -> Outcome {
        let former = self
            .tombstones
            .get(new)
            .filter(|_| self.is_former_id(new, old))
            .map(|t| (t.version, t.undone));
        if let Some((retired_at, undone)) = former {
            if !undone && told.is_none_or(|v| v < retired_at) {
                return Outcome::Ignored("an older change of id: the session came back since");
            }
            self.tombstones.remove(new);
            self.tombstone_order.retain(|id| id != new);
        }
        // Dated by the renamer's version when it is told (this copy may lag behind it, or be
        // absent): a change under `old` made on a lower version predates the change of id,
        // and does not undo it (`DeltaCore::undo_a_dead_members_change_of_id`; quiet seed 37
        // of the kill -9 simulation: a joiner got the change of id before its transfer's copy,
        // then a late change made before it).
        let (version, until) = self
            .sessions
            .get(old)
            .map_or((0, 0), |s| (s.version(), horizon(s)));
        let version = version.max(told.unwrap_or(0));
        self.bury(old.clone(), Some(new.clone()), version, until);
        if self.tombstones.contains_key(new) {
            // The new id is already retired here (the session ended, or moved on to a newer
            // id): a late rename must not bring it back.
            self.sessions.remove(old);
            return Outcome::Ignored("the new id is already retired");
        }
        let Some(mut s) = self.sessions.remove(old) else {
            return if self.sessions.contains_key(new) {
                Outcome::Ignored("duplicate change of id")
            } else {
                Outcome::Resync(new.clone())
            };
        };
        if self
            .sessions
            .get(new)
            .is_some_and(|n| n.version() >= s.version())
        {
            return Outcome::Ignored("a newer copy of the new id is already here");
        }
        s.change_id(new.clone());
        self.sessions.insert(s);
        Outcome::Applied
    }

    /// Undoes the change of id `old` -> `new` (a dead member's, which failed): the copy under
    /// `new` is dropped, `old` is live again (not held until its copy is fetched), and `new`
    /// leads back to `old`, so that changes still in flight for `new` follow.
    pub fn undo_rename(&mut self, old: &SessionId, new: &SessionId) {
        // Dated by the copy under `new`, or, never held here (an undo read in a digest), by
        // the copy under `old`: undated, digests left the undo out (seed 124 of the kill -9
        // simulation: a joiner that followed the change of id was never told it was undone).
        let until = match self.sessions.remove(new) {
            Some(s) => horizon(&s),
            None => self.sessions.get(old).map_or(0, horizon),
        };
        self.tombstones.remove(old);
        self.tombstone_order.retain(|id| id != old);
        self.forked.remove(new);
        self.bury(new.clone(), Some(old.clone()), 0, until);
        if let Some(t) = self.tombstones.get_mut(new) {
            t.undone = true;
        }
    }

    /// `old` was renamed here as `by`'s digest told.
    pub fn note_rename_told_by(&mut self, old: &SessionId, by: MemberId) {
        if let Some(t) = self.tombstones.get_mut(old).filter(|t| t.renamed.is_some()) {
            t.told_by = Some(by);
        }
    }

    /// Whether `id` is the new id of a change of id undone here ([`Self::undo_rename`]): a
    /// copy sent under it is the state of the dead member that made the change of id (one
    /// that took it before the undo still answers with it: seed 427 of the kill -9
    /// simulation, where that state came back under the old id).
    pub fn is_undone(&self, id: &SessionId) -> bool {
        self.tombstones.get(id).is_some_and(|t| t.undone)
    }

    /// Whether `former` is an id the session now named `current` had: retired here by renames
    /// that lead to `current` (route rebinding keeps the random part, so a session can come
    /// back to it; [`Self::rename_at`] takes it back).
    pub fn is_former_id(&self, former: &SessionId, current: &SessionId) -> bool {
        self.tombstones
            .get(former)
            .is_some_and(|t| t.renamed.is_some())
            && self.resolve(former) == current
    }

    /// Follows changes of id from `id` to the session's current id (a few hops at most).
    pub fn resolve<'a>(&'a self, mut id: &'a SessionId) -> &'a SessionId {
        for _ in 0..8 {
            match self.tombstones.get(id).and_then(|t| t.renamed.as_ref()) {
                Some(next) => id = next,
                None => break,
            }
        }
        id
    }

    fn bury(&mut self, id: SessionId, renamed: Option<SessionId>, version: u64, until: u64) {
        let t = Tombstone {
            renamed,
            version,
            relevant_until_ms: until,
            undone: false,
            told_by: None,
        };
        if self.tombstones.insert(id.clone(), t).is_none() {
            self.tombstone_order.push_back(id);
            if self.tombstone_order.len() > self.max_tombstones {
                if let Some(old) = self.tombstone_order.pop_front() {
                    self.tombstones.remove(&old);
                }
            }
        }
    }

    pub fn is_ended(&self, id: &SessionId) -> bool {
        self.tombstones.contains_key(id)
    }

    #[cfg(test)]
    /// Sessions idle past their max inactive interval at `now_ms` (for the reaper).
    pub fn expired(&self, now_ms: u64) -> Vec<SessionId> {
        let mut ids: Vec<SessionId> = self
            .sessions
            .values()
            .filter(|s| s.is_expired(now_ms))
            .map(|s| s.id().clone())
            .collect();
        ids.sort_unstable();
        ids
    }

    #[cfg(test)]
    /// Every session's state, in chunks of at most `chunk` (state transfer).
    pub fn snapshot_chunks(&self, chunk: usize) -> Vec<Vec<SessionState>> {
        let mut states: Vec<SessionState> =
            self.sessions.values().map(|s| s.state().clone()).collect();
        states.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        if states.is_empty() {
            return vec![Vec::new()];
        }
        states
            .chunks(chunk.max(1))
            .map(<[SessionState]>::to_vec)
            .collect()
    }

    /// Takes a whole session state if it is newer than this copy, or if it is the copy of the
    /// member this copy forked from (same version, the content that member's DELTA named).
    /// A state sent under an id renamed here applies to the session's current id, as changes
    /// do (a member that missed the change of id answers under the old one). Not under an id
    /// whose change of id was undone here: that is the dead renamer's state.
    fn adopt(&mut self, state: SessionState) -> Outcome {
        if self.is_undone(&state.id) {
            return Outcome::Ignored("the id of a change of id undone here");
        }
        let cur = self.resolve(&state.id);
        if cur != &state.id {
            let renamed = SessionState {
                id: cur.clone(),
                ..state
            };
            return self.adopt_as_is(renamed);
        }
        self.adopt_as_is(state)
    }

    fn adopt_as_is(&mut self, state: SessionState) -> Outcome {
        if self.is_ended(&state.id) {
            return Outcome::Ignored("session has ended");
        }
        // The copy of the member this one forked from, at or after what it named: it replaces
        // this copy even at the same or a lower version (this copy's extra state is a change
        // that member never had, made by a member that died before it was acknowledged).
        let of_fork = self.forked.contains_key(&state.id)
            && self.fork_awaits(&state.id, state.version, fingerprint(&state));
        match self.sessions.get(&state.id) {
            Some(s) if s.version() >= state.version && !of_fork => {
                Outcome::Ignored("not newer than this copy")
            }
            _ => {
                // Still waiting for the copy the fork names, if this is not it.
                if of_fork {
                    self.forked.remove(&state.id);
                }
                self.replace_copy(Session::from_state(state));
                Outcome::Applied
            }
        }
    }

    /// Whether the copy of `id` here forked and waits for a copy at `version` with
    /// `fingerprint` (a copy [`Self::apply`] would take in its place).
    pub fn fork_awaits(&self, id: &SessionId, version: u64, fingerprint: u64) -> bool {
        self.forked.get(id).is_some_and(|&(v, fp)| {
            version > v || (version == v && fp.is_none_or(|f| f == fingerprint))
        })
    }

    /// This copy of `id` forked from a sender's, which named `fingerprint` at `version`.
    pub(crate) fn note_fork(&mut self, id: &SessionId, version: u64, fingerprint: Option<u64>) {
        if self.forked.len() >= MAX_FORKED && !self.forked.contains_key(id) {
            self.forked.pop_first();
        }
        self.forked.insert(id.clone(), (version, fingerprint));
    }

    /// Stops waiting for the copy a fork names: the user went on from this copy here.
    pub(crate) fn unfork(&mut self, id: &SessionId) {
        self.forked.remove(id);
    }

    /// Forked copies waiting for the sender's copy (bounded by `MAX_FORKED`).
    #[cfg(test)]
    pub(crate) fn forked_load(&self) -> usize {
        self.forked.len()
    }

    /// Whether this copy of `id` is known to have forked from a sender's, whose copy was asked
    /// for and not yet taken.
    pub fn is_forked(&self, id: &SessionId) -> bool {
        self.forked.contains_key(id)
    }

    /// Applies a message from another member, moving the sessions it carries into the store
    /// instead of copying them (a state transfer's chunk would otherwise be held twice): a
    /// `Created` or `State` keeps only its session's id, version and times, an `AllSessions`
    /// no states.
    pub fn apply_taking(&mut self, msg: &mut SessionMessage) -> Outcome {
        match msg {
            SessionMessage::Created(state) | SessionMessage::State(state) => {
                self.adopt(take_content(state))
            }
            SessionMessage::AllSessions { states, .. } => {
                let mut applied = false;
                for st in std::mem::take(states) {
                    applied |= self.adopt(st) == Outcome::Applied;
                }
                if applied {
                    Outcome::Applied
                } else {
                    Outcome::Ignored("no newer session in the chunk")
                }
            }
            _ => self.apply(msg),
        }
    }

    /// Applies a message from another member (the sessions it carries are copied).
    pub fn apply(&mut self, msg: &SessionMessage) -> Outcome {
        match msg {
            SessionMessage::Created(_)
            | SessionMessage::State(_)
            | SessionMessage::AllSessions { .. } => self.apply_taking(&mut msg.clone()),
            SessionMessage::Delta {
                id,
                base,
                version,
                ops,
                last_accessed_ms,
                fingerprint,
            } => {
                let id = &self.resolve(id).clone();
                if self.is_ended(id) {
                    return Outcome::Ignored("session has ended");
                }
                let Some(s) = self.sessions.get_mut(id) else {
                    // The sender's copy is asked for; one of that version with another
                    // content, arriving first (a joiner's transfer from a member that had not
                    // yet seen the fork), does not stand in for it (seed 306 of the kill -9
                    // simulation: a restarted member kept its former life's failed change).
                    self.note_fork(id, *version, Some(*fingerprint));
                    return Outcome::Resync(id.clone());
                };
                match s.apply_delta_checked(*base, *version, ops, *fingerprint) {
                    Checked::Applied => {
                        s.access(*last_accessed_ms);
                        // In line with the sender again: an older copy asked for must not
                        // replace this one.
                        self.forked.remove(id);
                        Outcome::Applied
                    }
                    Checked::Duplicate => Outcome::Ignored("duplicate change"),
                    Checked::Stale => Outcome::Ignored("stale change"),
                    Checked::Gap => Outcome::Resync(id.clone()),
                    // Another state at a version this copy has (the sender failed over to a
                    // copy that missed a change of a member that died): the sender's copy is
                    // the one its users go on from.
                    Checked::Differs => {
                        self.note_fork(id, *version, Some(*fingerprint));
                        Outcome::Resync(id.clone())
                    }
                }
            }
            SessionMessage::Accessed {
                id,
                version,
                last_accessed_ms,
                fingerprint: named,
            } => {
                let id = &self.resolve(id).clone();
                if self.is_ended(id) {
                    return Outcome::Ignored("session has ended");
                }
                match self.sessions.get_mut(id) {
                    // The same version with another content: forked.
                    Some(s) if s.version() == *version && s.fingerprint() != *named => {
                        s.access(*last_accessed_ms);
                        self.note_fork(id, *version, Some(*named));
                        Outcome::Resync(id.clone())
                    }
                    // Access times only move forward, so order does not matter. (A lower
                    // version may be a late message of a member that served the session
                    // before the one that changed it last.)
                    Some(s) if s.version() >= *version => {
                        s.access(*last_accessed_ms);
                        Outcome::Applied
                    }
                    // Behind, or never got it: a change was lost on the way.
                    Some(s) => {
                        s.access(*last_accessed_ms);
                        Outcome::Resync(id.clone())
                    }
                    None => Outcome::Resync(id.clone()),
                }
            }
            SessionMessage::Expired { id, version } => {
                // Not followed through a change of id: an invalidation that raced the renaming
                // loses to it everywhere alike (the renamed session lives on).
                let had = self.sessions.contains_key(id);
                self.end_at(id, *version);
                if had {
                    Outcome::Applied
                } else {
                    Outcome::Ignored("unknown session")
                }
            }
            SessionMessage::ChangeId {
                old,
                new,
                version,
                fingerprint: named,
            } => {
                let outcome = self.rename_at(old, new, Some(*version));
                // A renamer serves the session with every acknowledged change: a copy here that
                // is newer, or another content at its version, has a change that died with its
                // maker. (Older: the next change shows the gap.)
                let forked = self.sessions.get(new).is_some_and(|s| {
                    s.version() > *version
                        || (s.version() == *version
                            && named.is_some_and(|fp| s.fingerprint() != fp))
                });
                if outcome == Outcome::Applied && forked {
                    // Without a content named, any copy at that version is the sender's.
                    self.note_fork(new, *version, *named);
                    return Outcome::Forked(new.clone());
                }
                outcome
            }
            SessionMessage::GetSession { .. }
            | SessionMessage::GetAllSessions
            | SessionMessage::NoContextManager
            | SessionMessage::Digest(_)
            | SessionMessage::DigestAfterLeave(_)
            | SessionMessage::GetSessions(_)
            | SessionMessage::Merge(_)
            | SessionMessage::GetDigest => Outcome::Ignored("not a change to apply in order"),
            SessionMessage::NotHere { .. } => Outcome::Ignored("the member asked has no copy"),
        }
    }
}

/// Moves a received state's content out (what the store keeps), leaving its id, version and
/// times, which is all that is read of the message once applied.
fn take_content(st: &mut SessionState) -> SessionState {
    SessionState {
        id: st.id.clone(),
        attributes: std::mem::take(&mut st.attributes),
        principal: st.principal.take(),
        auth_type: st.auth_type.take(),
        ..*st
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::model::DEFAULT_MAX_INACTIVE;

    /// A primary session and the messages its requests produce.
    fn primary() -> Session {
        Session::new(
            SessionId::generate("n1").unwrap(),
            1_000,
            DEFAULT_MAX_INACTIVE,
        )
    }

    fn delta(s: &mut Session) -> SessionMessage {
        let (base, version, ops) = s.take_delta().unwrap();
        SessionMessage::Delta {
            id: s.id().clone(),
            base,
            version,
            ops,
            last_accessed_ms: s.last_accessed_ms(),
            fingerprint: s.fingerprint(),
        }
    }

    #[test]
    fn created_then_deltas_in_order_apply() {
        let mut p = primary();
        let mut r = ReplicaStore::new(100);
        assert_eq!(
            r.apply(&SessionMessage::Created(p.state().clone())),
            Outcome::Applied
        );
        p.set("user", &"ann").unwrap();
        assert_eq!(r.apply(&delta(&mut p)), Outcome::Applied);
        p.set("count", &2u32).unwrap();
        assert_eq!(r.apply(&delta(&mut p)), Outcome::Applied);
        let copy = r.get(p.id()).unwrap();
        assert_eq!(copy.get::<String>("user").unwrap().as_deref(), Some("ann"));
        assert_eq!(copy.get::<u32>("count").unwrap(), Some(2));
        assert_eq!(copy.version(), p.version());
    }

    #[test]
    fn reordered_and_duplicated_messages_never_leave_a_stale_attribute() {
        let mut p = primary();
        let created = SessionMessage::Created(p.state().clone());
        p.set("a", &1u32).unwrap();
        let d1 = delta(&mut p);
        p.set("a", &2u32).unwrap();
        let d2 = delta(&mut p);
        let mut r = ReplicaStore::new(100);
        // DELTA before CREATED (Tomcat's async reordering): asks for the session.
        assert_eq!(r.apply(&d1), Outcome::Resync(p.id().clone()));
        assert_eq!(r.apply(&created), Outcome::Applied);
        // d2 before d1: a gap, asks again; then the answer brings the latest state.
        assert_eq!(r.apply(&d2), Outcome::Resync(p.id().clone()));
        assert_eq!(
            r.apply(&SessionMessage::State(p.state().clone())),
            Outcome::Applied
        );
        // The late d1 and duplicates of everything change nothing.
        assert!(matches!(r.apply(&d1), Outcome::Ignored(_)));
        assert!(matches!(r.apply(&d2), Outcome::Ignored(_)));
        assert!(matches!(r.apply(&created), Outcome::Ignored(_)));
        assert_eq!(r.get(p.id()).unwrap().get::<u32>("a").unwrap(), Some(2));
    }

    /// Seed 2 of the kill -9 loop: the home makes version 1 and dies with its DELTA on the way;
    /// replica `a` got it, the fallback `b` did not and makes another version 1 for the user.
    /// `a` must not take `b`'s DELTA for a duplicate (and ack a change it does not hold): it
    /// asks for `b`'s copy and takes it at the same version; the dead home's state, arriving
    /// late, changes nothing.
    #[test]
    fn a_delta_naming_another_content_at_a_version_held_asks_for_the_senders_copy() {
        let mut home = primary();
        let created = SessionMessage::Created(home.state().clone());
        let (mut a, mut b) = (ReplicaStore::new(100), ReplicaStore::new(100));
        a.apply(&created);
        b.apply(&created);
        home.set("x", &1u32).unwrap();
        let from_home = delta(&mut home);
        assert_eq!(a.apply(&from_home), Outcome::Applied);
        // The fallback serves its copy (version 0) and makes version 1 again.
        let mut fallback = b.get(home.id()).unwrap().clone();
        fallback.set("y", &2u32).unwrap();
        let from_fallback = delta(&mut fallback);
        assert_eq!(b.apply(&from_fallback), Outcome::Applied);
        assert!(
            matches!(a.apply(&from_home), Outcome::Ignored(_)),
            "a true duplicate"
        );
        assert_eq!(
            a.apply(&from_fallback),
            Outcome::Resync(home.id().clone()),
            "not a duplicate: another content at version 1"
        );
        assert_eq!(a.get(home.id()).unwrap().get::<u32>("x").unwrap(), Some(1));
        // The fallback's answer replaces the copy at the same version.
        let answer = SessionMessage::State(b.get(home.id()).unwrap().state().clone());
        assert_eq!(a.apply(&answer), Outcome::Applied);
        let copy = a.get(home.id()).unwrap();
        assert_eq!(copy.state().attributes, fallback.state().attributes);
        assert_eq!(copy.version(), 1);
        // The dead home's copy, late, does not win it back; the fallback's next change applies.
        assert!(matches!(
            a.apply(&SessionMessage::State(home.state().clone())),
            Outcome::Ignored(_)
        ));
        assert_eq!(a.forked_load(), 0);
        fallback.set("z", &3u32).unwrap();
        assert_eq!(a.apply(&delta(&mut fallback)), Outcome::Applied);
        assert_eq!(
            a.get(home.id()).unwrap().state().attributes,
            fallback.state().attributes
        );
    }

    /// A DELTA made on another state at this copy's version (the copies forked one change
    /// earlier) is not applied on top of the wrong base: the copy stays as it was, and the
    /// sender's copy is asked for.
    #[test]
    fn a_delta_made_on_a_forked_base_is_not_applied() {
        let mut home = primary();
        let mut r = ReplicaStore::new(100);
        r.apply(&SessionMessage::Created(home.state().clone()));
        let mut other = home.clone();
        home.set("x", &1u32).unwrap();
        assert_eq!(r.apply(&delta(&mut home)), Outcome::Applied);
        let before = r.get(home.id()).unwrap().state().clone();
        other.set("y", &2u32).unwrap();
        let _lost = delta(&mut other);
        other.set("z", &3u32).unwrap();
        let on_fork = delta(&mut other);
        assert_eq!(r.apply(&on_fork), Outcome::Resync(home.id().clone()));
        assert_eq!(r.get(home.id()).unwrap().state(), &before, "undone whole");
        assert_eq!(
            r.apply(&SessionMessage::State(other.state().clone())),
            Outcome::Applied
        );
        let copy = r.get(home.id()).unwrap();
        assert_eq!(copy.state().attributes, other.state().attributes);
    }

    #[test]
    fn an_ended_session_cannot_come_back() {
        let mut p = primary();
        let created = SessionMessage::Created(p.state().clone());
        p.set("a", &1u32).unwrap();
        let d1 = delta(&mut p);
        let mut r = ReplicaStore::new(100);
        r.apply(&created);
        assert_eq!(
            r.apply(&SessionMessage::Expired {
                id: p.id().clone(),
                version: 1,
            }),
            Outcome::Applied
        );
        assert!(matches!(r.apply(&created), Outcome::Ignored(_)));
        assert!(matches!(r.apply(&d1), Outcome::Ignored(_)));
        assert!(
            matches!(
                r.apply(&SessionMessage::Expired {
                    id: p.id().clone(),
                    version: 1,
                }),
                Outcome::Ignored(_)
            ),
            "expiry happens once"
        );
        assert!(r.get(p.id()).is_none());
    }

    #[test]
    fn change_of_id_moves_the_session_and_buries_the_old_id() {
        let mut p = primary();
        let mut r = ReplicaStore::new(100);
        r.apply(&SessionMessage::Created(p.state().clone()));
        let new = SessionId::generate("n1").unwrap();
        let old = p.change_id(new.clone());
        let msg = SessionMessage::ChangeId {
            old: old.clone(),
            new: new.clone(),
            version: p.version(),
            fingerprint: Some(p.fingerprint()),
        };
        assert_eq!(r.apply(&msg), Outcome::Applied);
        assert!(r.get(&old).is_none() && r.get(&new).is_some());
        assert!(matches!(r.apply(&msg), Outcome::Ignored(_)));
        assert!(matches!(
            r.apply(&SessionMessage::Created(SessionState {
                id: old.clone(),
                ..p.state().clone()
            })),
            Outcome::Ignored(_)
        ));
    }

    /// A whole state sent under an id renamed here (by a member that missed the change of
    /// id) applies to the current id, as changes do, when it is newer.
    #[test]
    fn a_state_under_a_renamed_id_applies_to_the_current_id() {
        let mut p = primary();
        let mut r = ReplicaStore::new(100);
        r.apply(&SessionMessage::Created(p.state().clone()));
        let new = SessionId::generate("n1").unwrap();
        assert_eq!(r.rename(p.id(), &new), Outcome::Applied);
        assert!(matches!(
            r.apply(&SessionMessage::State(p.state().clone())),
            Outcome::Ignored(_)
        ));
        p.set("x", &1u8).unwrap();
        let _ = delta(&mut p);
        assert_eq!(
            r.apply(&SessionMessage::State(p.state().clone())),
            Outcome::Applied
        );
        assert!(r.get(p.id()).is_none());
        assert_eq!(r.get(&new).unwrap().get::<u8>("x").unwrap(), Some(1));
    }

    #[test]
    fn state_transfer_chunks_and_tombstones_are_bounded() {
        let mut src = ReplicaStore::new(100);
        for _ in 0..2500 {
            src.insert_local(primary());
        }
        let chunks = src.snapshot_chunks(1000);
        assert_eq!(
            chunks.iter().map(Vec::len).collect::<Vec<_>>(),
            [1000, 1000, 500]
        );
        let mut joiner = ReplicaStore::new(100);
        for (i, states) in chunks.iter().enumerate() {
            joiner.apply(&SessionMessage::AllSessions {
                states: states.clone(),
                index: i as u32,
                count: chunks.len() as u32,
            });
        }
        assert_eq!(joiner.len(), 2500);
        let ids: Vec<SessionId> = joiner.ids().cloned().collect();
        for id in &ids {
            joiner.end(id);
        }
        assert_eq!(joiner.tombstones.len(), 100);
        assert_eq!(
            ReplicaStore::new(5).snapshot_chunks(1000),
            vec![Vec::<SessionState>::new()]
        );
    }

    /// The sessions of a received message go into the store as they were decoded: the same
    /// attribute bytes (not a copy), the message left with ids, version and times only.
    #[test]
    fn received_sessions_are_moved_into_the_store_not_copied() {
        let mut p = primary();
        p.set("cart", &"x".repeat(1024)).unwrap();
        let mut q = primary();
        q.set("cart", &"y".repeat(1024)).unwrap();
        let at = |st: &SessionState| st.attributes.get("cart").unwrap().as_ptr();
        let mut r = ReplicaStore::new(10);
        let mut created = SessionMessage::Created(p.state().clone());
        let SessionMessage::Created(sent) = &created else {
            unreachable!()
        };
        let bytes = at(sent);
        assert_eq!(r.apply_taking(&mut created), Outcome::Applied);
        assert_eq!(at(r.get(p.id()).unwrap().state()), bytes);
        let SessionMessage::Created(left) = &created else {
            unreachable!()
        };
        assert!(left.attributes.is_empty());
        assert_eq!((&left.id, left.version), (p.id(), p.version()));
        assert_eq!(r.get(p.id()).unwrap().state(), p.state());

        let mut chunk = SessionMessage::AllSessions {
            states: vec![q.state().clone()],
            index: 0,
            count: 1,
        };
        let SessionMessage::AllSessions { states, .. } = &chunk else {
            unreachable!()
        };
        let bytes = at(&states[0]);
        assert_eq!(r.apply_taking(&mut chunk), Outcome::Applied);
        assert_eq!(at(r.get(q.id()).unwrap().state()), bytes);
        assert_eq!(r.get(q.id()).unwrap().state(), q.state());
        assert!(matches!(chunk, SessionMessage::AllSessions { states, .. } if states.is_empty()));
    }

    #[test]
    fn expiry_and_access() {
        let mut r = ReplicaStore::new(10);
        let p = Session::new(
            SessionId::generate("").unwrap(),
            0,
            std::time::Duration::from_secs(1),
        );
        r.apply(&SessionMessage::Created(p.state().clone()));
        assert!(r.expired(1_000).is_empty());
        assert_eq!(r.expired(1_001), vec![p.id().clone()]);
        r.apply(&SessionMessage::Accessed {
            id: p.id().clone(),
            version: 0,
            last_accessed_ms: 900,
            fingerprint: p.fingerprint(),
        });
        assert!(r.expired(1_500).is_empty());
        // An older access time arriving late does not move it back.
        r.apply(&SessionMessage::Accessed {
            id: p.id().clone(),
            version: 0,
            last_accessed_ms: 100,
            fingerprint: p.fingerprint(),
        });
        assert!(r.expired(1_500).is_empty());
    }
}
