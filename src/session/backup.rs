//! The BackupManager's decisions for one application on one node, pure (Tomcat's
//! `BackupManager` over `LazyReplicatedMap`): each session has one primary (the member serving
//! it) and `backups` backup members; changes go to the backups only, so the cost of a change
//! does not grow with the cluster.
//!
//! Placement is rendezvous hashing: a session's backups are the `backups` members (other than
//! its primary) with the highest score hash(session id, member id). It spreads sessions evenly
//! and moves few of them when members come and go; any member computes it alone. Tomcat keeps
//! exactly one backup, picked round-robin, and a proxy entry for every session on every node;
//! here there are no proxies: a member that needs a session it does not hold asks the others.
//!
//! Failover: when a primary disappears, the first of its backups still alive (in the order the
//! primary last sent) promotes itself and restores the backup count; when a backup disappears
//! or joins, the primary re-places. Changes carry the same versions as the DeltaManager's, so a
//! duplicate or stale one is never applied and a gap makes the backup ask for a copy.

use super::delta::{Dest, Out as DeltaOut, SessionEvent};
use super::id::{SessionId, SessionIdError};
use super::model::{Applied, DeltaOp, Session, SessionState};
use super::reconcile::{fingerprint, live_beats_end, reconcile, SessionMerger, Stamp};
use crate::member::MemberId;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// What BackupManagers say to each other.
///
/// Every message about a session that comes from its primary carries the primary's ownership
/// epoch: with the sender it forms the message's *claim* `(epoch, member)`. Claims are totally
/// ordered (epoch first, then member id); a holder follows the highest claim it knows and
/// ignores messages from lower ones, so a former primary that has not yet heard of its
/// successor can neither change, drop nor end the session behind the successor's back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackupMessage {
    /// A whole copy for a backup. `backups` is the primary's backup list, in failover order.
    /// With `ack` the backup answers `CopyAck` once it holds the copy (a hand-over waits for it).
    Copy {
        state: SessionState,
        backups: Vec<MemberId>,
        epoch: u64,
        ack: bool,
    },
    /// A backup holds the copy the primary asked an ack for (or renamed its copy: `id` is the
    /// new id).
    CopyAck { id: SessionId, epoch: u64 },
    /// A request's changes, made on version `base`, giving `version`.
    Delta {
        id: SessionId,
        epoch: u64,
        base: u64,
        version: u64,
        ops: Vec<DeltaOp>,
        last_accessed_ms: u64,
    },
    /// Only the access time moved; `version` lets a backup notice it is behind.
    Accessed {
        id: SessionId,
        epoch: u64,
        version: u64,
        last_accessed_ms: u64,
    },
    /// The receiver is no longer a backup of this session: sent only once the primary's
    /// current backups acknowledged their copies, so a session never has fewer copies than
    /// before while it moves.
    Drop { id: SessionId, epoch: u64 },
    /// Ended (invalidated or expired). `version`: the session's version when it ended (a copy
    /// of a higher version lives on after a partition: see `reconcile::live_beats_end`).
    Expired {
        id: SessionId,
        epoch: u64,
        version: u64,
    },
    /// The session's new id, and the backups of the new id's placement.
    ChangeId {
        old: SessionId,
        new: SessionId,
        epoch: u64,
        backups: Vec<MemberId>,
    },
    /// A backup that is behind asks its primary for a copy (answered to listed backups only).
    GetCopy { id: SessionId },
    /// A request for this session reached a member that does not hold it: who has it?
    Fetch { id: SessionId },
    /// The answer to `Fetch`: the session and the claim it follows, or nothing. `current`: the
    /// answer comes from the primary or one of its listed backups, not a former holder.
    Fetched {
        id: SessionId,
        state: Option<SessionState>,
        epoch: u64,
        owner: MemberId,
        current: bool,
    },
    /// The sender is now the session's primary (after a fetch or a failover).
    NewPrimary {
        id: SessionId,
        /// The new primary's copy, so a primary that yields knows whether to hand its own on.
        stamp: Stamp,
        /// The new primary's backups, in failover order. The others keep their copy until the
        /// new primary's `Drop`.
        backups: Vec<MemberId>,
        /// Rises with each change of primary (see the claim order above).
        epoch: u64,
    },
    /// The primary `primary` (claim `epoch`) is gone and the receiver comes first in its
    /// failover order: it takes the session over with this copy if it has none as recent.
    Orphan {
        state: SessionState,
        epoch: u64,
        primary: MemberId,
    },
    /// A primary that yielded to the receiver's claim held a copy the reconciliation rule (or
    /// the merger) may prefer (a partition let both serve it): the receiver reconciles it with
    /// its own and copies the result to its holders. The merger is used only if both copies
    /// changed since one of the two took the session over: a copy that did not is the other's
    /// past, and merging it would bring back what the other removed.
    Reconcile {
        state: SessionState,
        /// The (version, fingerprint) of the copy the sender took the session over with (see
        /// `Entry::base`).
        base: Option<(u64, u64)>,
    },
    /// Sent to a member that joined the sender's list: the sessions the sender serves, with
    /// its claim and its copy's stamp (at most [`DIGEST_CHUNK`] per message). A receiver that
    /// serves one of them under a lower claim yields to the sender (after a partition heals,
    /// both sides may serve a session).
    Digest {
        entries: Vec<(SessionId, u64, Stamp)>,
        /// Sessions ended here, with the version they ended at (sent only to a member that was listed
        /// before: one that cannot hold copies from before the end learns nothing from it).
        ended: Vec<(SessionId, u64)>,
    },
}

/// Sessions per `Digest` message (each entry is under 100 bytes, a message well under 1 MiB).
pub const DIGEST_CHUNK: usize = 1000;

impl BackupMessage {
    /// The session and epoch of a message that carries its sender's claim.
    pub fn claim(&self) -> Option<(&SessionId, u64)> {
        match self {
            BackupMessage::Copy { state, epoch, .. } => Some((&state.id, *epoch)),
            BackupMessage::Delta { id, epoch, .. }
            | BackupMessage::Accessed { id, epoch, .. }
            | BackupMessage::Drop { id, epoch }
            | BackupMessage::Expired { id, epoch, .. }
            | BackupMessage::NewPrimary { id, epoch, .. } => Some((id, *epoch)),
            BackupMessage::ChangeId { old, epoch, .. } => Some((old, *epoch)),
            _ => None,
        }
    }
}

/// A message to send.
pub type Out = DeltaOut<BackupMessage>;

/// Settings of a BackupManager.
#[derive(Clone, Debug)]
pub struct BackupConfig {
    /// Backup copies per session (Tomcat: exactly 1). Default 1.
    pub backups: usize,
    pub max_inactive: Duration,
    /// Ended session ids remembered so a late message cannot revive one.
    pub max_tombstones: usize,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            backups: 1,
            max_inactive: Duration::from_secs(30 * 60),
            max_tombstones: 100_000,
        }
    }
}

/// A stable 64-bit hash (FNV-1a, then a finaliser to spread the bits): every member computes
/// the same placement, whatever its build.
fn score(id: &SessionId, m: &MemberId) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.as_str().bytes().chain(m.0.iter().copied()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

/// The backups of session `id` whose primary is `primary`: the `k` other members with the
/// highest score, best first.
pub fn placement(
    id: &SessionId,
    primary: MemberId,
    members: &[MemberId],
    k: usize,
) -> Vec<MemberId> {
    let mut c: Vec<(u64, MemberId)> = members
        .iter()
        .filter(|m| **m != primary)
        .map(|m| (score(id, m), *m))
        .collect();
    c.sort_by(|a, b| b.cmp(a));
    c.dedup_by_key(|x| x.1);
    c.into_iter().take(k).map(|(_, m)| m).collect()
}

/// A copy's (version, content fingerprint).
fn key(s: &SessionState) -> (u64, u64) {
    (s.version, fingerprint(s))
}

/// Members remembered as once listed (see `BackupCore::seen`).
const MAX_SEEN: usize = 4096;

/// Who owns a session, as a holder knows it: `(epoch, member)`, higher wins.
type Claim = (u64, MemberId);

/// A primary's hand-over in progress: the copies it waits to be acknowledged, and the members
/// to tell `Drop` once they are.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Handover {
    unacked: Vec<MemberId>,
    retire: Vec<MemberId>,
    /// Copies may be anywhere (after a take-over or a failover): tell every non-backup.
    retire_all: bool,
    /// A change of id waits for its backups to rename their copies before the new id is
    /// placed (so a crash never leaves copies under both ids).
    replace_after: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Role {
    Primary {
        backups: Vec<MemberId>,
        handover: Handover,
    },
    /// A copy kept for `primary`; when this node is not in `backups` it is a former holder
    /// that keeps its copy until the primary's `Drop`.
    Backup {
        primary: MemberId,
        backups: Vec<MemberId>,
    },
}

struct Entry {
    session: Session,
    role: Role,
    /// Created here; its request has not ended yet.
    unannounced: bool,
    /// Taken over for a request: its backups get a whole copy when that request ends (sent
    /// with the request's send options, so no change can overtake it).
    copy_pending: bool,
    /// Ownership epoch: how many times the session changed primary, as far as known here.
    epoch: u64,
    /// False once a new claim is known but not its copy: the next copy of that claim replaces
    /// this one whatever its version (a change only this node got was never acknowledged), and
    /// deltas wait for it.
    synced: bool,
    replicated_access_ms: u64,
    /// The (version, fingerprint) of the copy this node took the session over with, if it did
    /// (failover, fetch): a copy met later with this content is this one's past.
    base: Option<(u64, u64)>,
}

impl Entry {
    fn claim(&self, local: MemberId) -> Claim {
        match &self.role {
            Role::Primary { .. } => (self.epoch, local),
            Role::Backup { primary, .. } => (self.epoch, *primary),
        }
    }

    fn backup(session: Session, primary: MemberId, backups: Vec<MemberId>, epoch: u64) -> Entry {
        Entry {
            session,
            role: Role::Backup { primary, backups },
            unannounced: false,
            copy_pending: false,
            epoch,
            synced: true,
            replicated_access_ms: 0,
            base: None,
        }
    }
}

/// A bounded memory of ids, oldest forgotten first (tombstones and claims).
struct Bounded<V> {
    map: HashMap<SessionId, V>,
    order: VecDeque<SessionId>,
    max: usize,
}

impl<V> Bounded<V> {
    fn new(max: usize) -> Self {
        Bounded {
            map: HashMap::new(),
            order: VecDeque::new(),
            max,
        }
    }

    fn get(&self, id: &SessionId) -> Option<&V> {
        self.map.get(id)
    }

    /// Forgets `id` (its place in the order is freed when it comes up).
    fn remove(&mut self, id: &SessionId) {
        self.map.remove(id);
    }

    fn iter(&self) -> impl Iterator<Item = (&SessionId, &V)> {
        self.map.iter()
    }

    /// Keeps only the entries `keep` says to (the places of the others are freed when they
    /// come up).
    fn retain(&mut self, keep: impl FnMut(&SessionId, &mut V) -> bool) {
        self.map.retain(keep);
    }

    /// Inserts or replaces; a new id counts against the bound.
    fn insert(&mut self, id: &SessionId, v: V) {
        if self.map.insert(id.clone(), v).is_none() {
            self.order.push_back(id.clone());
            if self.order.len() > self.max {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
    }
}

/// The sessions of one application on this node: those it serves and those it backs up.
pub struct BackupCore {
    cfg: BackupConfig,
    local: MemberId,
    route: String,
    members: Vec<MemberId>,
    /// Every member ever in the list: only a primary seen and then gone is failed over (at
    /// start, a copy may arrive from a member the list does not hold yet).
    seen: std::collections::HashSet<MemberId>,
    entries: HashMap<SessionId, Entry>,
    ended: Bounded<Tomb>,
    /// The highest claim heard for sessions not held here, so a late copy from a superseded
    /// primary is refused.
    claims: Bounded<Claim>,
    /// Fetches in progress: answers still awaited, and the claim of the copy taken so far.
    fetching: HashMap<SessionId, Fetching>,
    /// The application's say on copies that diverged (see `reconcile`).
    merger: Option<Arc<dyn SessionMerger>>,
}

impl BackupCore {
    pub fn new(cfg: BackupConfig, local: MemberId, route: &str) -> BackupCore {
        let max = cfg.max_tombstones;
        BackupCore {
            cfg,
            local,
            route: route.to_string(),
            members: Vec::new(),
            seen: std::collections::HashSet::new(),
            entries: HashMap::new(),
            ended: Bounded::new(max),
            claims: Bounded::new(max),
            fetching: HashMap::new(),
            merger: None,
        }
    }

    /// The application's merger of diverged copies (`None`: the rule of `reconcile` alone).
    pub fn set_merger(&mut self, merger: Option<Arc<dyn SessionMerger>>) {
        self.merger = merger;
    }

    fn to(m: MemberId, msg: BackupMessage) -> Out {
        Out {
            dest: Dest::Member(m),
            msg,
        }
    }

    fn bury(&mut self, id: &SessionId, how: Tomb) {
        // An end the application decided is not weakened by a later local record.
        if self.ended_at(id).is_none() {
            self.ended.insert(id, how);
        }
    }

    /// The answer to a message that treats `id` as alive when it was ended here by its
    /// primary's decision: the sender ends it too (an end, even unacknowledged, wins over a
    /// copy that survived it, so every member agrees).
    fn ended_reply(&self, id: &SessionId, to: MemberId) -> Option<Out> {
        let version = self.ended_at(id)?;
        Some(Self::to(
            to,
            BackupMessage::Expired {
                id: id.clone(),
                epoch: u64::MAX,
                version,
            },
        ))
    }

    /// The version at which `id` was ended by its primary's decision, as known here.
    fn ended_at(&self, id: &SessionId) -> Option<u64> {
        match self.ended.get(id) {
            Some(Tomb::Ended { version }) => Some(*version),
            _ => None,
        }
    }

    /// A regained member serves `id` at `version`: if that is above the version the end known
    /// here ended (a partition: its users changed it on the other side), the end is forgotten,
    /// so the copies it places are taken. Only here: elsewhere an end wins over any copy, which
    /// may be a superseded primary's.
    fn revive(&mut self, id: &SessionId, version: u64) {
        if self
            .ended_at(id)
            .is_some_and(|ended| live_beats_end(version, ended))
        {
            self.ended.remove(id);
        }
    }

    fn is_ended(&self, id: &SessionId) -> bool {
        self.ended.get(id).is_some()
    }

    /// What the network can fill, for the property tests: (ended ids and their order, claims and
    /// their order, fetches, members seen).
    #[cfg(test)]
    pub(crate) fn buffer_load(&self) -> [usize; 6] {
        [
            self.ended.map.len(),
            self.ended.order.len(),
            self.claims.map.len(),
            self.claims.order.len(),
            self.fetching.len(),
            self.seen.len(),
        ]
    }

    /// Whether `id` ended (or was renamed) here: a late message cannot bring it back.
    pub fn has_ended(&self, id: &SessionId) -> bool {
        self.is_ended(id)
    }

    /// Remembers a claim for a session not held here (the highest wins).
    fn remember(&mut self, id: &SessionId, c: Claim) {
        if self.claims.get(id).is_none_or(|k| *k < c) {
            self.claims.insert(id, c);
        }
    }

    /// Whether a message about `id` from `from` with `epoch` comes from a claim older than the
    /// one this node follows (it was or will be ignored).
    pub fn is_superseded(&self, id: &SessionId, epoch: u64, from: MemberId) -> bool {
        let c = (epoch, from);
        match self.entries.get(id) {
            Some(e) => e.claim(self.local) > c,
            None => self.superseded(id, c),
        }
    }

    /// Whether a claim is older than one already heard for a session not held here.
    fn superseded(&self, id: &SessionId, c: Claim) -> bool {
        self.claims.get(id).is_some_and(|k| *k > c)
    }

    /// This node's member id (known once its channel has started).
    pub fn set_local(&mut self, local: MemberId) {
        self.local = local;
    }

    /// Ids of the sessions held here.
    pub fn ids(&self) -> impl Iterator<Item = &SessionId> {
        self.entries.keys()
    }

    /// Sessions this node serves.
    pub fn primaries(&self) -> usize {
        self.entries
            .values()
            .filter(|e| matches!(e.role, Role::Primary { .. }))
            .count()
    }

    /// Sessions this node holds (served or backed up).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn is_primary(&self, id: &SessionId) -> bool {
        self.entries
            .get(id)
            .is_some_and(|e| matches!(e.role, Role::Primary { .. }))
    }

    /// Whether the copy held here follows its primary: this node is the primary, or a listed
    /// backup in step with it. (A request still fetches from the primary first: the primary may
    /// have re-placed the session a moment ago, which this backup learns only later.)
    pub fn is_current_copy(&self, id: &SessionId) -> bool {
        self.entries.get(id).is_some_and(|e| match &e.role {
            Role::Primary { .. } => true,
            Role::Backup { backups, .. } => e.synced && backups.contains(&self.local),
        })
    }

    /// The member that serves `id` now, when a request that began on this node's primary copy
    /// can no longer end here: this node yielded to a higher claim while the request ran (it
    /// holds a copy for that claim, or the claim's `Drop` took it). Such a request must be
    /// refused, not acknowledged: its change would be made on a copy that follows another
    /// primary, which never gets it. `None`: this node serves `id`, or holds nothing of it and
    /// knows no claim (it ended: nothing to refuse).
    pub fn served_elsewhere(&self, id: &SessionId) -> Option<MemberId> {
        match self.entries.get(id).map(|e| &e.role) {
            Some(Role::Primary { .. }) => None,
            Some(Role::Backup { primary, .. }) => Some(*primary),
            None if self.is_ended(id) => None,
            None => self.claims.get(id).map(|c| c.1),
        }
    }

    /// Whether this primary still owes `member` a copy of `id` it has not seen acknowledged (a
    /// hand-over in progress: the copy goes out with the end of the request, or is on its way).
    pub fn awaits_copy(&self, id: &SessionId, member: MemberId) -> bool {
        self.entries.get(id).is_some_and(|e| match &e.role {
            Role::Primary { backups, handover } => {
                backups.contains(&member) && (e.copy_pending || handover.unacked.contains(&member))
            }
            Role::Backup { .. } => false,
        })
    }

    /// Whether this node keeps a copy of `id` only until its primary's `Drop` (it is not one
    /// of the primary's backups: a hand-over is in progress).
    pub fn is_retiring(&self, id: &SessionId) -> bool {
        self.entries.get(id).is_some_and(|e| match &e.role {
            Role::Primary { .. } => false,
            Role::Backup { backups, .. } => !backups.contains(&self.local),
        })
    }

    /// The backups of a session this node serves.
    pub fn backups_of(&self, id: &SessionId) -> Option<&[MemberId]> {
        match &self.entries.get(id)?.role {
            Role::Primary { backups, .. } => Some(backups),
            Role::Backup { .. } => None,
        }
    }

    pub fn session(&self, id: &SessionId) -> Option<&Session> {
        self.entries
            .get(id)
            .map(|e| &e.session)
            .filter(|s| s.is_valid())
    }

    pub fn session_mut(&mut self, id: &SessionId) -> Option<&mut Session> {
        self.entries
            .get_mut(id)
            .map(|e| &mut e.session)
            .filter(|s| s.is_valid())
    }

    fn place(&self, id: &SessionId) -> Vec<MemberId> {
        placement(id, self.local, &self.members, self.cfg.backups)
    }

    /// A new session served here, announced to its backups when its request ends.
    pub fn create(&mut self, now_ms: u64) -> Result<SessionId, SessionIdError> {
        let id = SessionId::generate(&self.route)?;
        let backups = self.place(&id);
        let entry = Entry {
            session: Session::new(id.clone(), now_ms, self.cfg.max_inactive),
            role: Role::Primary {
                backups,
                handover: Handover::default(),
            },
            unannounced: true,
            copy_pending: false,
            epoch: 0,
            synced: true,
            replicated_access_ms: now_ms,
            base: None,
        };
        self.entries.insert(id.clone(), entry);
        Ok(id)
    }

    /// Makes this node the primary of a session it backs up, in step with its primary, without
    /// asking anyone (the manager fetches instead; the simulation uses this to stage moves):
    /// tells every member, and copies it to its backups when the request ends.
    pub fn take_over(&mut self, id: &SessionId) -> Vec<Out> {
        if !self.is_current_copy(id) || self.is_primary(id) {
            return Vec::new();
        }
        self.promote(id, false)
    }

    /// Makes this node the session's primary with a claim above the one its copy follows. With
    /// `copy_now` its backups get a copy at once (failover); otherwise with the end of the
    /// request that needed it. The other holders keep their copies until the backups have
    /// acknowledged theirs.
    fn promote(&mut self, id: &SessionId, copy_now: bool) -> Vec<Out> {
        self.promote_by(id, copy_now, 1)
    }

    /// `promote`, the epoch raised by `by` above the highest one known.
    fn promote_by(&mut self, id: &SessionId, copy_now: bool, by: u64) -> Vec<Out> {
        let backups = self.place(id);
        let heard = self.claims.get(id).map_or(0, |c| c.0);
        let Some(e) = self.entries.get_mut(id) else {
            return Vec::new();
        };
        e.epoch = e.epoch.max(heard);
        e.base = Some(key(e.session.state()));
        e.role = Role::Primary {
            backups: backups.clone(),
            handover: Handover {
                unacked: if copy_now {
                    backups.clone()
                } else {
                    Vec::new()
                },
                retire: Vec::new(),
                retire_all: true,
                replace_after: false,
            },
        };
        // Saturating: an epoch of u64::MAX from the network must neither panic nor wrap to
        // the lowest claim.
        e.epoch = e.epoch.saturating_add(by);
        e.copy_pending = !copy_now;
        e.unannounced = false;
        e.synced = true;
        let epoch = e.epoch;
        let state = e.session.state().clone();
        let mut outs = vec![Out {
            dest: Dest::All,
            msg: BackupMessage::NewPrimary {
                id: id.clone(),
                stamp: Stamp::of(&state),
                backups: backups.clone(),
                epoch,
            },
        }];
        if copy_now {
            for b in &backups {
                let copy = BackupMessage::Copy {
                    state: state.clone(),
                    backups: backups.clone(),
                    epoch,
                    ack: true,
                };
                outs.push(Self::to(*b, copy));
            }
            outs.extend(self.finish_handover(id));
        }
        outs
    }

    /// Once every backup acknowledged its copy: `Drop` to the holders the session left.
    fn finish_handover(&mut self, id: &SessionId) -> Vec<Out> {
        let members = &self.members;
        let Some(e) = self.entries.get_mut(id) else {
            return Vec::new();
        };
        let Role::Primary { backups, handover } = &mut e.role else {
            return Vec::new();
        };
        if e.copy_pending || !handover.unacked.is_empty() {
            return Vec::new();
        }
        if std::mem::take(&mut handover.replace_after) {
            return self.replace(id);
        }
        let targets: Vec<MemberId> = members
            .iter()
            .filter(|m| {
                !backups.contains(m) && (handover.retire_all || handover.retire.contains(m))
            })
            .copied()
            .collect();
        handover.retire.clear();
        handover.retire_all = false;
        let epoch = e.epoch;
        targets
            .into_iter()
            .map(|m| {
                Self::to(
                    m,
                    BackupMessage::Drop {
                        id: id.clone(),
                        epoch,
                    },
                )
            })
            .collect()
    }

    /// Members that may hold a copy of a session served here (for `Expired`, `ChangeId`).
    fn holders_of(&self, e: &Entry) -> Vec<MemberId> {
        match &e.role {
            Role::Primary { handover, .. } if handover.retire_all => self.members.clone(),
            Role::Primary { backups, handover } => {
                let mut h = backups.clone();
                h.extend(handover.retire.iter().filter(|m| !backups.contains(m)));
                h
            }
            Role::Backup { .. } => Vec::new(),
        }
    }

    /// The end of a request on a session served here.
    pub fn end_request(&mut self, id: &SessionId, now_ms: u64) -> Vec<Out> {
        let Some(e) = self.entries.get_mut(id).filter(|e| e.session.is_valid()) else {
            return Vec::new();
        };
        let Role::Primary { backups, handover } = &mut e.role else {
            return Vec::new();
        };
        let backups = backups.clone();
        e.session.access(now_ms);
        e.session.mark_not_new();
        let s = &mut e.session;
        let epoch = e.epoch;
        let copy_pending = std::mem::take(&mut e.copy_pending);
        let msg = if std::mem::take(&mut e.unannounced) || copy_pending {
            let _ = s.take_delta();
            if copy_pending {
                handover.unacked = backups.clone();
            }
            Some(BackupMessage::Copy {
                state: s.state().clone(),
                backups: backups.clone(),
                epoch,
                ack: copy_pending,
            })
        } else if let Some((base, version, ops)) = s.take_delta() {
            Some(BackupMessage::Delta {
                id: id.clone(),
                epoch,
                base,
                version,
                ops,
                last_accessed_ms: s.last_accessed_ms(),
            })
        } else {
            s.access_refresh_due(e.replicated_access_ms, now_ms)
                .then(|| BackupMessage::Accessed {
                    id: id.clone(),
                    epoch,
                    version: s.version(),
                    last_accessed_ms: s.last_accessed_ms(),
                })
        };
        let Some(msg) = msg else { return Vec::new() };
        e.replicated_access_ms = now_ms;
        let mut outs: Vec<Out> = backups
            .into_iter()
            .map(|b| Self::to(b, msg.clone()))
            .collect();
        if copy_pending {
            outs.extend(self.finish_handover(id));
        }
        outs
    }

    /// Ends a session served here, on every member that may hold a copy.
    pub fn invalidate(&mut self, id: &SessionId) -> (Vec<Out>, Vec<SessionEvent>) {
        let Some(e) = self.entries.remove(id) else {
            return (Vec::new(), Vec::new());
        };
        let primary = matches!(e.role, Role::Primary { .. });
        let version = e.session.version();
        self.bury(
            id,
            if primary {
                Tomb::Ended { version }
            } else {
                Tomb::Local
            },
        );
        let outs = match e.role {
            Role::Primary { .. } if !e.unannounced => {
                let epoch = e.epoch;
                self.holders_of(&e)
                    .into_iter()
                    .map(|b| {
                        Self::to(
                            b,
                            BackupMessage::Expired {
                                id: id.clone(),
                                epoch,
                                version,
                            },
                        )
                    })
                    .collect()
            }
            _ => Vec::new(),
        };
        (outs, vec![SessionEvent::Destroyed(id.clone())])
    }

    /// Gives a session served here a new id, on its holders too, and re-places it: the new
    /// id has its own placement.
    pub fn change_id(
        &mut self,
        old: &SessionId,
    ) -> Result<Option<(SessionId, Vec<Out>)>, SessionIdError> {
        if !self.is_primary(old) {
            return Ok(None);
        }
        let new = SessionId::generate(&self.route)?;
        let Some(mut e) = self.entries.remove(old) else {
            return Ok(None);
        };
        self.bury(old, Tomb::Renamed);
        e.session.change_id(new.clone());
        let holders = self.holders_of(&e);
        let mut outs = Vec::new();
        if e.unannounced {
            if let Role::Primary { backups, .. } = &mut e.role {
                *backups = placement(&new, self.local, &self.members, self.cfg.backups);
            }
        } else if let Role::Primary { backups, handover } = &mut e.role {
            // The holders rename first; the backups' acks then let the new id be placed.
            for h in holders {
                let msg = BackupMessage::ChangeId {
                    old: old.clone(),
                    new: new.clone(),
                    epoch: e.epoch,
                    backups: backups.clone(),
                };
                outs.push(Self::to(h, msg));
            }
            handover.unacked = backups.clone();
            handover.replace_after = true;
        }
        self.entries.insert(new.clone(), e);
        outs.extend(self.finish_handover(&new));
        Ok(Some((new, outs)))
    }

    /// Re-places a session served here after its placement changed: a copy to every member of
    /// the new placement (so each learns the new failover order), `Drop` to the old backups
    /// once those copies are acknowledged.
    fn replace(&mut self, id: &SessionId) -> Vec<Out> {
        let now = self.place(id);
        let members = &self.members;
        let alive = |m: &MemberId| members.binary_search(m).is_ok();
        let Some(e) = self.entries.get_mut(id) else {
            return Vec::new();
        };
        let Role::Primary { backups, handover } = &mut e.role else {
            return Vec::new();
        };
        handover.unacked.retain(alive);
        let mut outs = Vec::new();
        if handover.replace_after {
            // A change of id in progress places the new id when its renames are acknowledged.
            return self.finish_handover(id);
        }
        if now != *backups {
            if !e.unannounced {
                let old = std::mem::replace(backups, now.clone());
                handover
                    .retire
                    .extend(old.iter().filter(|b| !now.contains(b)));
                if !e.copy_pending {
                    // Newcomers get a copy; kept backups only the new failover order.
                    handover.unacked.retain(|m| now.contains(m));
                    let state = e.session.state().clone();
                    for b in &now {
                        let msg = if !old.contains(b) {
                            if !handover.unacked.contains(b) {
                                handover.unacked.push(*b);
                            }
                            BackupMessage::Copy {
                                state: state.clone(),
                                backups: now.clone(),
                                epoch: e.epoch,
                                ack: true,
                            }
                        } else {
                            BackupMessage::NewPrimary {
                                id: id.clone(),
                                stamp: Stamp::of(&state),
                                backups: now.clone(),
                                epoch: e.epoch,
                            }
                        };
                        outs.push(Self::to(*b, msg));
                    }
                    // The old backups learn at once that they no longer are (a request
                    // reaching one fetches rather than serving its copy, which stops
                    // following); they keep the copy until the Drop.
                    for b in old.iter().filter(|b| !now.contains(b) && alive(b)) {
                        let msg = BackupMessage::NewPrimary {
                            id: id.clone(),
                            stamp: Stamp::of(&state),
                            backups: now.clone(),
                            epoch: e.epoch,
                        };
                        outs.push(Self::to(*b, msg));
                    }
                }
            } else {
                *backups = now.clone();
            }
        }
        handover.retire.retain(|m| alive(m) && !now.contains(m));
        outs.extend(self.finish_handover(id));
        outs
    }

    /// The reaper: sessions served here expire at their max inactive interval and their holders
    /// are told; a backup copy expires locally only at twice that.
    pub fn expire(&mut self, now_ms: u64) -> (Vec<Out>, Vec<SessionEvent>) {
        let due: Vec<(SessionId, bool)> = self
            .entries
            .values()
            .filter_map(|e| {
                let primary = matches!(e.role, Role::Primary { .. });
                let max = e.session.max_inactive().as_millis() as u64;
                let idle = now_ms.saturating_sub(e.session.last_accessed_ms());
                let due = max > 0
                    && if primary {
                        idle > max
                    } else {
                        idle > max.saturating_mul(2)
                    };
                due.then(|| (e.session.id().clone(), primary))
            })
            .collect();
        let (mut outs, mut events) = (Vec::new(), Vec::new());
        for (id, primary) in due {
            let (o, ev) = self.invalidate(&id);
            if primary {
                outs.extend(o);
            }
            events.extend(ev);
        }
        (outs, events)
    }

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

    /// The members changed: failover and re-placement.
    pub fn set_members(&mut self, mut members: Vec<MemberId>) -> Vec<Out> {
        members.retain(|m| *m != self.local);
        members.sort();
        members.dedup();
        // Bounded: ids that keep coming and going (an unkeyed cluster lets anyone claim one)
        // must not grow it; after a reset only members seen since fail over.
        if self.seen.len() > MAX_SEEN {
            self.seen.clear();
        }
        let regained: Vec<MemberId> = members
            .iter()
            .filter(|m| self.seen.contains(m) && self.members.binary_search(m).is_err())
            .copied()
            .collect();
        self.seen.extend(members.iter().copied());
        let members_before = std::mem::replace(&mut self.members, members);
        // A claim remembered for a session not held here dies with its member: nobody serves
        // the session under it any more. Kept, it refused forever the copies and changes of a
        // live primary with a lower claim that never heard of it (the claimant died with its
        // `NewPrimary` on the way there). Claims of members not listed yet are kept (at start a
        // member lists the others one at a time).
        let (listed, seen) = (&self.members, &self.seen);
        self.claims
            .retain(|_, c| listed.binary_search(&c.1).is_ok() || !seen.contains(&c.1));
        let mut outs = Vec::new();
        // Fetches stop waiting for members that left (one with nobody left to ask ends) and
        // ask the ones that joined: a member that restarted under its id answers again.
        let mut done = Vec::new();
        for (id, f) in self.fetching.iter_mut() {
            f.waiting.retain(|m| self.members.binary_search(m).is_ok());
            for m in self
                .members
                .iter()
                .filter(|m| members_before.binary_search(m).is_err())
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
        let ids: Vec<SessionId> = self.entries.keys().cloned().collect();
        for id in ids {
            let Some(e) = self.entries.get(&id) else {
                continue;
            };
            let Role::Backup { primary, backups } = &e.role else {
                outs.extend(self.replace(&id));
                continue;
            };
            if self.members.binary_search(primary).is_ok() || !self.seen.contains(primary) {
                continue;
            }
            // The first of the primary's backups still alive takes over; a holder that is not
            // first hands it its copy, in case it never got one.
            let first = backups
                .iter()
                .find(|b| **b == self.local || self.members.binary_search(b).is_ok())
                .copied();
            match first {
                Some(f) if f != self.local => {
                    let orphan = BackupMessage::Orphan {
                        state: e.session.state().clone(),
                        epoch: e.epoch,
                        primary: *primary,
                    };
                    outs.push(Self::to(f, orphan));
                }
                _ => outs.extend(self.promote(&id, true)),
            }
        }
        // Digests first: on each connection they reach a regained member before the copies
        // re-placement sends it (which it takes only once it forgot an end they outlived).
        let mut digests = self.digests(&members_before, &regained);
        digests.extend(outs);
        digests
    }

    /// To each member not in `before`: the sessions served here, so two primaries of one
    /// session (one on each side of a healed partition) meet; the lower claim yields.
    fn digests(&self, before: &[MemberId], regained: &[MemberId]) -> Vec<Out> {
        let added: Vec<MemberId> = self
            .members
            .iter()
            .filter(|m| before.binary_search(m).is_err())
            .copied()
            .collect();
        if added.is_empty() {
            return Vec::new();
        }
        let mut entries: Vec<(SessionId, u64, Stamp)> = self
            .entries
            .iter()
            .filter(|(_, e)| matches!(e.role, Role::Primary { .. }) && !e.unannounced)
            .map(|(id, e)| (id.clone(), e.epoch, Stamp::of(e.session.state())))
            .collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut outs = Vec::new();
        for chunk in entries.chunks(DIGEST_CHUNK) {
            for m in &added {
                let msg = BackupMessage::Digest {
                    entries: chunk.to_vec(),
                    ended: Vec::new(),
                };
                outs.push(Self::to(*m, msg));
            }
        }
        if regained.is_empty() {
            return outs;
        }
        let mut ended: Vec<(SessionId, u64)> = self
            .ended
            .iter()
            .filter_map(|(id, t)| match t {
                Tomb::Ended { version } => Some((id.clone(), *version)),
                _ => None,
            })
            .collect();
        ended.sort();
        for chunk in ended.chunks(DIGEST_CHUNK) {
            for m in regained {
                let msg = BackupMessage::Digest {
                    entries: Vec::new(),
                    ended: chunk.to_vec(),
                };
                outs.push(Self::to(*m, msg));
            }
        }
        outs
    }

    /// This node learns of a claim above the one its copy follows: it follows the claimant
    /// (whose copy is `theirs`). A primary that yields hands its copy on if reconciling it
    /// could change the claimant's, and drops the copies it placed that the claimant does not
    /// list.
    fn follow(
        &mut self,
        id: &SessionId,
        from: MemberId,
        epoch: u64,
        chosen: &[MemberId],
        theirs: &Stamp,
        must_hand: bool,
    ) -> Vec<Out> {
        let mut outs = Vec::new();
        let merging = self.merger.is_some();
        let Some(e) = self.entries.get_mut(id) else {
            return outs;
        };
        let mine = Stamp::of(e.session.state());
        if let Role::Primary { backups, handover } = &e.role {
            // The rule keeps the later access and, between different contents, the higher
            // rank; a merger may use any content.
            let differs = !mine.same_contents(theirs);
            // `must_hand`: the claimant does not know this copy exists and must retire it.
            let hand = must_hand
                || (differs && (merging || mine.rank(theirs) == Ordering::Greater))
                || mine.last_accessed_ms > theirs.last_accessed_ms;
            if hand {
                let state = e.session.state().clone();
                let base = e.base;
                outs.push(Self::to(from, BackupMessage::Reconcile { state, base }));
            }
            let mine = backups.iter().chain(handover.retire.iter());
            for b in mine.filter(|b| **b != from && !chosen.contains(b)) {
                let drop = BackupMessage::Drop {
                    id: id.clone(),
                    epoch: e.epoch,
                };
                outs.push(Self::to(*b, drop));
            }
        }
        e.synced = mine.same_contents(theirs);
        e.role = Role::Backup {
            primary: from,
            backups: chosen.to_vec(),
        };
        e.epoch = epoch;
        e.copy_pending = false;
        e.unannounced = false;
        outs
    }

    /// A message from member `from`.
    pub fn handle(&mut self, from: MemberId, msg: &BackupMessage) -> (Vec<Out>, Vec<SessionEvent>) {
        let mut events = Vec::new();
        let mut outs = Vec::new();
        let local = self.local;
        match msg {
            BackupMessage::Copy {
                state,
                backups,
                epoch,
                ack,
            } => {
                let id = &state.id;
                let c = (*epoch, from);
                let ack_msg = Self::to(
                    from,
                    BackupMessage::CopyAck {
                        id: id.clone(),
                        epoch: *epoch,
                    },
                );
                if self.is_ended(id) {
                    // Nothing to keep; the primary must not wait for it.
                    if *ack {
                        outs.push(ack_msg);
                    }
                    outs.extend(self.ended_reply(id, from));
                    return (outs, events);
                }
                let held = self.entries.get(id).map(|e| {
                    (
                        e.claim(local),
                        e.synced,
                        e.session.version(),
                        matches!(e.role, Role::Primary { .. }),
                    )
                });
                let take = match held {
                    None => !self.superseded(id, c),
                    Some((ec, _, _, true)) => {
                        if c < ec {
                            // A superseded primary: tell it who serves the session now. Its
                            // copy outside this placement is then dropped (the Drop follows the
                            // NewPrimary on the connection): after a partition nothing else
                            // would retire it.
                            outs.extend(self.announce_to(id, from));
                            if !self.backups_of(id).is_some_and(|b| b.contains(&from)) {
                                let drop = BackupMessage::Drop {
                                    id: id.clone(),
                                    epoch: ec.0,
                                };
                                outs.push(Self::to(from, drop));
                            }
                        }
                        c > ec
                    }
                    Some((ec, synced, v, false)) => {
                        c > ec || (c == ec && (!synced || state.version >= v))
                    }
                };
                if take {
                    if held.is_some_and(|h| h.3) {
                        // A primary meets a higher claim's copy (a healed partition): it hands
                        // on its own and drops its backups before taking the copy.
                        outs.extend(self.follow(
                            id,
                            from,
                            *epoch,
                            backups,
                            &Stamp::of(state),
                            false,
                        ));
                    }
                    let had = self.entries.contains_key(id);
                    let entry = Entry::backup(
                        Session::from_state(state.clone()),
                        from,
                        backups.clone(),
                        *epoch,
                    );
                    self.entries.insert(id.clone(), entry);
                    if !had {
                        events.push(SessionEvent::Created(id.clone()));
                    }
                }
                if *ack && (take || held.is_some_and(|h| h.0 == c)) {
                    outs.push(ack_msg);
                }
            }
            BackupMessage::CopyAck { id, epoch } => {
                let e = self.entries.get_mut(id).filter(|e| e.epoch == *epoch);
                if let Some(Role::Primary { handover, .. }) = e.map(|e| &mut e.role) {
                    handover.unacked.retain(|m| *m != from);
                    outs.extend(self.finish_handover(id));
                }
            }
            BackupMessage::Delta {
                id,
                epoch,
                base,
                version,
                ops,
                last_accessed_ms,
            } => {
                let c = (*epoch, from);
                match self.follows(id, c) {
                    Follows::Yes => {
                        if let Some(e) = self.entries.get_mut(id) {
                            let attr = super::delta::attribute_events(&e.session, ops);
                            match e.session.apply_delta(*base, *version, ops) {
                                Applied::Applied => {
                                    e.session.access(*last_accessed_ms);
                                    events.extend(attr);
                                }
                                Applied::Stale => {}
                                Applied::Gap => outs.push(Self::to(
                                    from,
                                    BackupMessage::GetCopy { id: id.clone() },
                                )),
                            }
                        }
                    }
                    Follows::Behind => {
                        outs.push(Self::to(from, BackupMessage::GetCopy { id: id.clone() }))
                    }
                    Follows::Stale => outs.extend(self.ended_reply(id, from)),
                }
            }
            BackupMessage::Accessed {
                id,
                epoch,
                version,
                last_accessed_ms,
            } => {
                let c = (*epoch, from);
                match self.follows(id, c) {
                    Follows::Yes => {
                        if let Some(e) = self.entries.get_mut(id) {
                            e.session.access(*last_accessed_ms);
                            if e.session.version() < *version {
                                outs.push(Self::to(
                                    from,
                                    BackupMessage::GetCopy { id: id.clone() },
                                ));
                            }
                        }
                    }
                    Follows::Behind => {
                        outs.push(Self::to(from, BackupMessage::GetCopy { id: id.clone() }))
                    }
                    Follows::Stale => outs.extend(self.ended_reply(id, from)),
                }
            }
            BackupMessage::Drop { id, epoch } => {
                let c = (*epoch, from);
                let drop = self
                    .entries
                    .get(id)
                    .is_some_and(|e| matches!(e.role, Role::Backup { .. }) && e.claim(local) <= c);
                if drop {
                    if let Some(e) = self.entries.remove(id) {
                        let ec = e.claim(local);
                        self.remember(id, ec.max(c));
                    }
                } else if !self.entries.contains_key(id) {
                    // A copy from a lower claim still on its way is refused when it arrives.
                    self.remember(id, c);
                }
            }
            BackupMessage::Expired { id, epoch, version } => {
                let c = (*epoch, from);
                if self.entries.get(id).is_some_and(|e| e.claim(local) > c) {
                    return (outs, events);
                }
                if self.is_primary(id) {
                    // Another member knew it ended: end it on this primary's holders too.
                    let (o, ev) = self.invalidate(id);
                    outs.extend(o);
                    events.extend(ev);
                    return (outs, events);
                }
                if self.entries.remove(id).is_some() {
                    events.push(SessionEvent::Destroyed(id.clone()));
                }
                self.bury(id, Tomb::Ended { version: *version });
            }
            BackupMessage::ChangeId {
                old,
                new,
                epoch,
                backups,
            } => {
                let c = (*epoch, from);
                if self.entries.get(old).is_some_and(|e| e.claim(local) > c) {
                    return (outs, events);
                }
                // The primary places the new id once its backups renamed.
                let ack = BackupMessage::CopyAck {
                    id: new.clone(),
                    epoch: *epoch,
                };
                outs.push(Self::to(from, ack));
                self.bury(old, Tomb::Renamed);
                if let Some(mut e) = self.entries.remove(old) {
                    let newer_here = self
                        .entries
                        .get(new)
                        .is_some_and(|n| n.session.version() >= e.session.version());
                    if !newer_here && !self.is_ended(new) {
                        e.session.change_id(new.clone());
                        if let Role::Backup { backups: list, .. } = &mut e.role {
                            *list = backups.clone();
                        }
                        self.entries.insert(new.clone(), e);
                        events.push(SessionEvent::IdChanged {
                            old: old.clone(),
                            new: new.clone(),
                        });
                    }
                }
            }
            BackupMessage::GetCopy { id } => {
                if let Some(e) = self.entries.get(id) {
                    if let Role::Primary { backups, .. } = &e.role {
                        if backups.contains(&from) {
                            outs.push(Self::to(
                                from,
                                BackupMessage::Copy {
                                    state: e.session.state().clone(),
                                    backups: backups.clone(),
                                    epoch: e.epoch,
                                    ack: false,
                                },
                            ));
                        }
                    }
                }
            }
            BackupMessage::Fetch { id } => {
                let held = self.entries.get(id).filter(|e| !e.unannounced);
                let state = held.map(|e| e.session.state().clone());
                let (epoch, owner) = held.map_or((0, local), |e| e.claim(local));
                let current = self.is_primary(id);
                outs.push(Self::to(
                    from,
                    BackupMessage::Fetched {
                        id: id.clone(),
                        state,
                        epoch,
                        owner,
                        current,
                    },
                ));
            }
            BackupMessage::Fetched {
                id,
                state,
                epoch,
                owner,
                current,
            } => {
                let Some(f) = self.fetching.get_mut(id) else {
                    return (outs, events);
                };
                f.waiting.retain(|m| *m != from);
                // The best answer so far: the highest claim, then the highest version.
                if let Some(state) = state {
                    let c = (*epoch, *owner);
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
                let (done, ready) = (f.waiting.is_empty(), *current && state.is_some());
                if ready || done {
                    let best = self.fetching.remove(id).and_then(|f| f.best);
                    outs.extend(self.adopt(id, best, ready, &mut events));
                }
            }
            BackupMessage::NewPrimary {
                id,
                stamp,
                backups: chosen,
                epoch,
            } => {
                let c = (*epoch, from);
                let Some(e) = self.entries.get(id) else {
                    self.remember(id, c);
                    return (outs, events);
                };
                let ec = e.claim(local);
                if c < ec {
                    if matches!(e.role, Role::Primary { .. }) {
                        outs.extend(self.announce_to(id, from));
                    }
                } else if c == ec {
                    if let Some(Entry {
                        role: Role::Backup { backups, .. },
                        ..
                    }) = self.entries.get_mut(id)
                    {
                        *backups = chosen.clone();
                    }
                } else {
                    outs.extend(self.follow(id, from, *epoch, chosen, stamp, false));
                }
            }
            BackupMessage::Orphan {
                state,
                epoch,
                primary,
            } => {
                let id = &state.id;
                let oc = (*epoch, *primary);
                if self.is_ended(id) {
                    outs.extend(self.ended_reply(id, from));
                    return (outs, events);
                }
                // A primary whose claim is older than the dead one's never heard of it (its
                // NewPrimary was lost with it): the dead claim's copy is the one that counts.
                let take = match self.entries.get(id) {
                    None => !self.superseded(id, oc),
                    Some(e) => match e.role {
                        Role::Primary { .. } => e.claim(local) < oc,
                        Role::Backup { .. } => e.claim(local) <= oc,
                    },
                };
                if take {
                    let keep = self
                        .entries
                        .get(id)
                        .is_some_and(|e| e.claim(local) == oc && e.synced);
                    if !keep {
                        let had = self.entries.contains_key(id);
                        let entry = Entry::backup(
                            Session::from_state(state.clone()),
                            *primary,
                            Vec::new(),
                            *epoch,
                        );
                        self.entries.insert(id.clone(), entry);
                        if !had {
                            events.push(SessionEvent::Created(id.clone()));
                        }
                    }
                    outs.extend(self.promote(id, true));
                }
            }
            BackupMessage::Reconcile { state, base } => {
                outs.extend(self.take_reconciled(from, state, *base))
            }
            BackupMessage::Digest { entries, ended } => {
                // Handled entry by entry, nothing kept: a digest is bounded by the frame size.
                for (id, version) in ended {
                    let ends = self.entries.get(id).is_some_and(|e| {
                        matches!(e.role, Role::Primary { .. })
                            && !live_beats_end(e.session.version(), *version)
                    });
                    if ends {
                        let (o, ev) = self.invalidate(id);
                        outs.extend(o);
                        events.extend(ev);
                    }
                }
                for (id, epoch, stamp) in entries {
                    self.revive(id, stamp.version);
                    let yields = self.entries.get(id).is_some_and(|e| {
                        matches!(e.role, Role::Primary { .. }) && e.claim(local) < (*epoch, from)
                    });
                    if yields {
                        outs.extend(self.follow(id, from, *epoch, &[], stamp, true));
                    }
                }
            }
        }
        (outs, events)
    }

    /// A yielding primary's copy: a primary reconciles it with its own (`reconcile`, with the
    /// merger if set) and, if that changed its copy, copies the result to its backups and drops
    /// every other holder once they acknowledged; a holder that is not the primary any more
    /// passes it on to the claim it follows.
    fn take_reconciled(
        &mut self,
        from: MemberId,
        state: &SessionState,
        their_base: Option<(u64, u64)>,
    ) -> Vec<Out> {
        let id = &state.id;
        let local = self.local;
        let pass_to = |m: MemberId| {
            (m != local && m != from).then(|| {
                Self::to(
                    m,
                    BackupMessage::Reconcile {
                        state: state.clone(),
                        base: their_base,
                    },
                )
            })
        };
        let Some(e) = self.entries.get_mut(id) else {
            return self
                .claims
                .get(id)
                .and_then(|c| pass_to(c.1))
                .into_iter()
                .collect();
        };
        let Role::Primary { backups, handover } = &mut e.role else {
            return pass_to(e.claim(local).1).into_iter().collect();
        };
        let epoch = e.epoch;
        // One copy unchanged since either side took the session over is the other's past:
        // the rule (the higher version) decides, not the merger.
        let past = [e.base, their_base]
            .iter()
            .flatten()
            .any(|b| *b == key(state) || *b == key(e.session.state()));
        let merger = if past { None } else { self.merger.as_deref() };
        let Some(merged) = reconcile(e.session.state(), state, merger) else {
            // Nothing changes here; the sender still holds its copy, not one of this claim's.
            let msg = if backups.contains(&from) {
                BackupMessage::Copy {
                    state: e.session.state().clone(),
                    backups: backups.clone(),
                    epoch,
                    ack: false,
                }
            } else {
                BackupMessage::Drop {
                    id: id.clone(),
                    epoch,
                }
            };
            return vec![Self::to(from, msg)];
        };
        e.session = Session::from_state(merged);
        // Copies of either side's state may be anywhere.
        handover.retire_all = true;
        if e.copy_pending {
            // The end of the request sends the copy, with an ack.
            return Vec::new();
        }
        handover.unacked = backups.clone();
        let state = e.session.state().clone();
        let mut outs: Vec<Out> = backups
            .iter()
            .map(|b| {
                let copy = BackupMessage::Copy {
                    state: state.clone(),
                    backups: backups.clone(),
                    epoch,
                    ack: true,
                };
                Self::to(*b, copy)
            })
            .collect();
        outs.extend(self.finish_handover(id));
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

    /// Tells `to`, whose claim lost, who serves the session here.
    fn announce_to(&self, id: &SessionId, to: MemberId) -> Vec<Out> {
        let Some(e) = self.entries.get(id) else {
            return Vec::new();
        };
        let Role::Primary { backups, .. } = &e.role else {
            return Vec::new();
        };
        vec![Self::to(
            to,
            BackupMessage::NewPrimary {
                id: id.clone(),
                stamp: Stamp::of(e.session.state()),
                backups: backups.clone(),
                epoch: e.epoch,
            },
        )]
    }

    /// How a change from claim `c` relates to the copy held here.
    fn follows(&self, id: &SessionId, c: Claim) -> Follows {
        if self.is_ended(id) {
            return Follows::Stale;
        }
        match self.entries.get(id) {
            None if self.superseded(id, c) => Follows::Stale,
            None => Follows::Behind,
            Some(e) => match &e.role {
                Role::Primary { .. } => Follows::Stale,
                Role::Backup { .. } => {
                    let ec = e.claim(self.local);
                    if c < ec {
                        Follows::Stale
                    } else if c > ec || !e.synced {
                        Follows::Behind
                    } else {
                        Follows::Yes
                    }
                }
            },
        }
    }
}

/// Why an id is remembered as gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tomb {
    /// Invalidated or expired by its primary (here, or told so), at `version` (the ended
    /// copy's).
    Ended { version: u64 },
    /// A backup copy expired here on its own (the primary may still serve it).
    Local,
    /// Renamed: the session lives on under its new id.
    Renamed,
}

/// A fetch in progress.
struct Fetching {
    /// Members whose answer is still awaited.
    waiting: Vec<MemberId>,
    /// The best copy answered so far, with its claim.
    best: Option<(Claim, SessionState)>,
}

/// How a primary's message relates to the copy a node holds.
enum Follows {
    /// From the claim the copy follows: apply it.
    Yes,
    /// From a newer claim, or the copy awaits its claim's copy: ask for a copy.
    Behind,
    /// From a superseded claim, or about a session that ended: ignore it.
    Stale,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(n: u8) -> MemberId {
        MemberId([n; 16])
    }

    #[test]
    fn placement_is_deterministic_spread_and_stable() {
        let members: Vec<MemberId> = (1..=8).map(m).collect();
        let ids: Vec<SessionId> = (0..4000)
            .map(|_| SessionId::generate("x").unwrap())
            .collect();
        let mut count = HashMap::new();
        for id in &ids {
            let p = placement(id, m(1), &members, 2);
            assert_eq!(p, placement(id, m(1), &members, 2));
            assert_eq!(p.len(), 2);
            assert!(!p.contains(&m(1)));
            for b in p {
                *count.entry(b).or_insert(0usize) += 1;
            }
        }
        // 8000 backup slots over 7 members: each near 1143.
        for (_, c) in count {
            assert!((900..1400).contains(&c), "{c}");
        }
        // Removing one member moves only the sessions it backed up.
        let fewer: Vec<MemberId> = members.iter().copied().filter(|x| *x != m(5)).collect();
        let moved = ids.iter().filter(|id| {
            let a = placement(id, m(1), &members, 1);
            a != placement(id, m(1), &fewer, 1) && !a.contains(&m(5))
        });
        assert_eq!(moved.count(), 0);
    }

    fn node(n: u8, members: &[u8], k: usize) -> BackupCore {
        let mut c = BackupCore::new(
            BackupConfig {
                backups: k,
                ..BackupConfig::default()
            },
            m(n),
            &format!("n{n}"),
        );
        c.set_members(members.iter().map(|x| m(*x)).collect());
        c
    }

    /// Delivers messages until quiet; returns how many Delta messages were sent.
    fn run(nodes: &mut [BackupCore], mut queue: Vec<(MemberId, Out)>) -> usize {
        let mut deltas = 0;
        while let Some((from, out)) = queue.pop() {
            if matches!(out.msg, BackupMessage::Delta { .. }) {
                deltas += 1;
            }
            let targets: Vec<usize> = match out.dest {
                Dest::All => (0..nodes.len())
                    .filter(|i| nodes[*i].local != from)
                    .collect(),
                Dest::Member(t) => nodes
                    .iter()
                    .position(|n| n.local == t)
                    .into_iter()
                    .collect(),
            };
            for i in targets {
                let me = nodes[i].local;
                let (outs, _) = nodes[i].handle(from, &out.msg);
                queue.extend(outs.into_iter().map(|o| (me, o)));
            }
        }
        deltas
    }

    #[test]
    fn changes_go_to_the_backups_only_and_failover_keeps_the_session() {
        let all = [1u8, 2, 3, 4, 5];
        let mut nodes: Vec<BackupCore> = all.iter().map(|n| node(*n, &all, 1)).collect();
        let id = nodes[0].create(0).unwrap();
        nodes[0].session_mut(&id).unwrap().set("u", &"ann").unwrap();
        let outs = nodes[0].end_request(&id, 0);
        assert_eq!(outs.len(), 1, "one backup");
        run(&mut nodes, outs.into_iter().map(|o| (m(1), o)).collect());
        let holders: Vec<u8> = nodes
            .iter()
            .filter(|n| n.session(&id).is_some())
            .map(|n| n.local.0[0])
            .collect();
        assert_eq!(holders.len(), 2, "primary and one backup: {holders:?}");
        // A change reaches exactly one member.
        nodes[0].session_mut(&id).unwrap().set("n", &1u8).unwrap();
        let outs = nodes[0].end_request(&id, 1);
        assert_eq!(
            run(&mut nodes, outs.into_iter().map(|o| (m(1), o)).collect()),
            1
        );
        // The primary dies: its backup takes over and re-places.
        let survivors: Vec<u8> = all[1..].to_vec();
        let mut rest: Vec<BackupCore> = nodes.drain(1..).collect();
        let mut queue = Vec::new();
        for n in rest.iter_mut() {
            let me = n.local;
            queue.extend(
                n.set_members(survivors.iter().map(|x| m(*x)).collect())
                    .into_iter()
                    .map(|o| (me, o)),
            );
        }
        run(&mut rest, queue);
        let primaries: Vec<&BackupCore> = rest.iter().filter(|n| n.is_primary(&id)).collect();
        assert_eq!(primaries.len(), 1);
        assert_eq!(
            primaries[0].session(&id).unwrap().get::<u8>("n").unwrap(),
            Some(1)
        );
        assert_eq!(
            rest.iter().filter(|n| n.session(&id).is_some()).count(),
            2,
            "backup count restored"
        );
    }

    /// At start a copy can arrive from a member that this node's list does not hold yet (found
    /// on real processes: a restarted backup took over every session it was sent and refused
    /// the live primary's changes). Only a primary seen and then gone is failed over.
    #[test]
    fn a_copy_from_a_member_not_yet_listed_is_not_taken_for_a_dead_primary() {
        let mut p = node(1, &[1, 2], 1);
        let id = p.create(0).unwrap();
        let outs = p.end_request(&id, 0);
        let [Out { msg: copy, .. }] = &outs[..] else {
            panic!("one copy: {outs:?}")
        };
        let mut b = node(2, &[2], 1); // has not seen member 1 yet
        b.handle(m(1), copy);
        let outs = b.set_members(vec![m(2), m(3)]);
        assert!(outs.is_empty() && !b.is_primary(&id), "{outs:?}");
        b.set_members(vec![m(1), m(2), m(3)]);
        let outs = b.set_members(vec![m(2), m(3)]); // member 1 seen, then gone
        assert!(b.is_primary(&id), "{outs:?}");
    }

    #[test]
    fn a_request_on_a_third_node_fetches_the_session_and_serves_it_from_then_on() {
        let all = [1u8, 2, 3, 4];
        let mut nodes: Vec<BackupCore> = all.iter().map(|n| node(*n, &all, 1)).collect();
        let id = nodes[0].create(0).unwrap();
        nodes[0].session_mut(&id).unwrap().set("u", &7u8).unwrap();
        let outs = nodes[0].end_request(&id, 0);
        run(&mut nodes, outs.into_iter().map(|o| (m(1), o)).collect());
        // Pick a node that holds nothing.
        let third = (0..4).find(|i| nodes[*i].session(&id).is_none()).unwrap();
        let me = nodes[third].local;
        let ask = nodes[third].fetch(&id);
        run(&mut nodes, ask.into_iter().map(|o| (me, o)).collect());
        assert!(nodes[third].is_primary(&id));
        // The old copies stay until the new backup acknowledged the copy sent with the end of
        // the request.
        assert_eq!(nodes.iter().filter(|n| n.session(&id).is_some()).count(), 3);
        let outs = nodes[third].end_request(&id, 1);
        run(&mut nodes, outs.into_iter().map(|o| (me, o)).collect());
        assert_eq!(
            nodes[third].session(&id).unwrap().get::<u8>("u").unwrap(),
            Some(7)
        );
        assert_eq!(
            nodes.iter().filter(|n| n.is_primary(&id)).count(),
            1,
            "one primary"
        );
        assert_eq!(
            nodes.iter().filter(|n| n.session(&id).is_some()).count(),
            2,
            "primary + 1 backup, old copies dropped"
        );
    }

    /// Two members that lost each other: each serves the session (the backup took over), both
    /// change it, then they meet again.
    fn split_and_heal(
        a_changes: &[(&str, u8)],
        b_changes: &[(&str, u8)],
        merger: Option<Arc<dyn SessionMerger>>,
    ) -> (Vec<BackupCore>, SessionId, [SessionState; 2]) {
        let mut nodes = vec![node(1, &[1, 2], 1), node(2, &[1, 2], 1)];
        for n in nodes.iter_mut() {
            n.set_merger(merger.clone());
        }
        let id = nodes[0].create(0).unwrap();
        nodes[0].session_mut(&id).unwrap().set("u", &7u8).unwrap();
        let outs = nodes[0].end_request(&id, 0);
        run(&mut nodes, outs.into_iter().map(|o| (m(1), o)).collect());
        // The partition: nothing crosses it.
        nodes[0].set_members(vec![m(1)]);
        nodes[1].set_members(vec![m(2)]);
        assert!(nodes[0].is_primary(&id) && nodes[1].is_primary(&id));
        for (i, changes) in [a_changes, b_changes].into_iter().enumerate() {
            for (k, v) in changes {
                nodes[i].session_mut(&id).unwrap().set(k, v).unwrap();
                nodes[i].end_request(&id, 10 + i as u64);
            }
        }
        let at_heal = [0, 1].map(|i| nodes[i].session(&id).unwrap().state().clone());
        let mut queue = Vec::new();
        for n in nodes.iter_mut() {
            let me = n.local;
            queue.extend(n.set_members(vec![m(1), m(2)]).into_iter().map(|o| (me, o)));
        }
        run(&mut nodes, queue);
        (nodes, id, at_heal)
    }

    /// One primary left, both members hold its copy, and it is `want`.
    fn assert_one_copy(nodes: &[BackupCore], id: &SessionId, want: &SessionState) {
        let primaries: Vec<_> = nodes.iter().filter(|n| n.is_primary(id)).collect();
        assert_eq!(primaries.len(), 1);
        for n in nodes {
            let s = n.session(id).unwrap().state();
            assert_eq!(
                (s.version, &s.attributes, s.last_accessed_ms),
                (want.version, &want.attributes, want.last_accessed_ms)
            );
        }
    }

    #[test]
    fn two_primaries_that_meet_again_leave_one_with_the_rules_copy() {
        // Higher version wins, even from the member whose claim is lower (member 1 yields).
        let (nodes, id, [a, b]) = split_and_heal(&[("x", 1), ("x", 2)], &[("y", 3)], None);
        assert!(a.version > b.version);
        assert!(nodes[1].is_primary(&id), "the higher claim serves");
        let want = reconcile(&b, &a, None).unwrap();
        assert_eq!(want.attributes, a.attributes);
        assert_one_copy(&nodes, &id, &want);
        // Equal versions: the content fingerprint decides, alike whichever side computes it.
        let (nodes, id, [a, b]) = split_and_heal(&[("x", 1)], &[("y", 3)], None);
        assert_eq!(a.version, b.version);
        let want = reconcile(&b, &a, None).unwrap_or(b);
        assert_eq!(
            Some(want.clone()),
            reconcile(&a, &want, None).or(Some(want.clone()))
        );
        assert_one_copy(&nodes, &id, &want);
    }

    use crate::session::reconcile::test_support::UnionMerger as Union;

    #[test]
    fn a_merger_decides_instead_of_the_rule() {
        let (nodes, id, [a, b]) =
            split_and_heal(&[("x", 1), ("x", 2)], &[("y", 3)], Some(Arc::new(Union)));
        let want = reconcile(&b, &a, Some(&Union)).unwrap();
        assert_eq!(want.attributes.len(), 3, "u, x and y");
        assert_eq!(want.version, a.version.max(b.version) + 1);
        assert_one_copy(&nodes, &id, &want);
    }

    /// Members 1 and 2 see each other again; messages are delivered in sending order (on each
    /// connection a digest comes before the copies sent after it).
    fn heal_in_order(nodes: &mut [BackupCore]) {
        let mut queue = VecDeque::new();
        for n in nodes.iter_mut() {
            let me = n.local;
            queue.extend(n.set_members(vec![m(1), m(2)]).into_iter().map(|o| (me, o)));
        }
        run_in_order(nodes, queue);
    }

    /// One member serves `id`, and only its placement's backups hold a copy besides it.
    fn assert_one_primary_and_no_stray_copy(nodes: &[BackupCore], id: &SessionId) {
        let p: Vec<&BackupCore> = nodes.iter().filter(|n| n.is_primary(id)).collect();
        let [p] = p[..] else {
            panic!("{} primaries", p.len())
        };
        let backups = p.backups_of(id).unwrap_or_default().to_vec();
        for n in nodes {
            if n.session(id).is_some() {
                assert!(
                    n.local == p.local || backups.contains(&n.local),
                    "stray copy on {}",
                    n.local.0[0]
                );
            }
        }
    }

    /// Delivers messages until quiet, in sending order (FIFO on each connection, as the
    /// transport is).
    fn run_in_order(nodes: &mut [BackupCore], mut queue: VecDeque<(MemberId, Out)>) {
        while let Some((from, out)) = queue.pop_front() {
            let to = |n: &BackupCore| match out.dest {
                Dest::Member(t) => n.local == t,
                Dest::All => n.local != from,
            };
            for n in nodes.iter_mut().filter(|n| to(n)) {
                let me = n.local;
                let (outs, _) = n.handle(from, &out.msg);
                queue.extend(outs.into_iter().map(|o| (me, o)));
            }
        }
    }

    #[test]
    fn an_end_on_one_side_loses_only_to_a_copy_changed_past_its_version() {
        for used_after in [true, false] {
            let mut nodes = vec![node(1, &[1, 2], 1), node(2, &[1, 2], 1)];
            let id = nodes[0].create(0).unwrap();
            let outs = nodes[0].end_request(&id, 0);
            run(&mut nodes, outs.into_iter().map(|o| (m(1), o)).collect());
            nodes[0].set_members(vec![m(1)]);
            nodes[1].set_members(vec![m(2)]);
            // Member 1 changes it once and ends it (at version 1); member 2 changes it twice
            // (version 2, above the end), or once (version 1: the end wins the tie).
            nodes[0].session_mut(&id).unwrap().set("x", &1u8).unwrap();
            nodes[0].end_request(&id, 10);
            nodes[0].invalidate(&id);
            nodes[1].session_mut(&id).unwrap().set("y", &1u8).unwrap();
            nodes[1].end_request(&id, 20);
            if used_after {
                nodes[1].session_mut(&id).unwrap().set("y", &2u8).unwrap();
                nodes[1].end_request(&id, 30);
            }
            heal_in_order(&mut nodes);
            let held: Vec<_> = nodes.iter().filter_map(|n| n.session(&id)).collect();
            if used_after {
                assert_eq!(
                    held.len(),
                    2,
                    "the copy changed past the end lives, on both"
                );
                assert!(held.iter().all(|s| s.get::<u8>("y").unwrap() == Some(2)));
                assert_eq!(nodes.iter().filter(|n| n.is_primary(&id)).count(), 1);
            } else {
                assert!(
                    held.is_empty(),
                    "the end wins over a copy of the same version"
                );
            }
        }
    }

    /// The session expires on one side only because its users were on the other, where they
    /// changed it: the changed copy lives on.
    #[test]
    fn a_session_that_expired_on_one_side_while_used_on_the_other_lives_on() {
        let mut nodes = vec![node(1, &[1, 2], 1), node(2, &[1, 2], 1)];
        let id = nodes[0].create(0).unwrap();
        let outs = nodes[0].end_request(&id, 0);
        run(&mut nodes, outs.into_iter().map(|o| (m(1), o)).collect());
        nodes[0].set_members(vec![m(1)]);
        nodes[1].set_members(vec![m(2)]);
        nodes[1].session_mut(&id).unwrap().set("y", &2u8).unwrap();
        nodes[1].end_request(&id, 1_000_000);
        // 30 minutes idle on member 1: its reaper ends it (at version 0).
        let (outs, _) = nodes[0].expire(1_800_001);
        assert!(nodes[0].session(&id).is_none() && outs.is_empty());
        heal_in_order(&mut nodes);
        for n in &nodes {
            assert_eq!(n.session(&id).unwrap().get::<u8>("y").unwrap(), Some(2));
        }
        assert!(nodes[1].is_primary(&id) && !nodes[0].is_primary(&id));
    }

    /// Both sides served the session and neither changed it; the lower claim learns of the
    /// higher one from a `NewPrimary` before the digest (messages delivered last sent first).
    /// No copy stays outside the primary's placement.
    #[test]
    fn a_primary_that_yields_with_the_same_copy_keeps_no_stray_copy() {
        for _ in 0..50 {
            let all = [1u8, 2, 3];
            let mut nodes: Vec<BackupCore> = all.iter().map(|n| node(*n, &all, 1)).collect();
            let id = nodes[0].create(0).unwrap();
            let outs = nodes[0].end_request(&id, 0);
            run(&mut nodes, outs.into_iter().map(|o| (m(1), o)).collect());
            // Member 1 alone on one side; the other side takes the session over if it holds it.
            nodes[0].set_members(vec![m(1)]);
            let mut queue = Vec::new();
            for n in nodes[1..].iter_mut() {
                let me = n.local;
                queue.extend(n.set_members(vec![m(2), m(3)]).into_iter().map(|o| (me, o)));
            }
            run(&mut nodes[1..], queue);
            let mut queue = Vec::new();
            for n in nodes.iter_mut() {
                let me = n.local;
                queue.extend(
                    n.set_members(vec![m(1), m(2), m(3)])
                        .into_iter()
                        .map(|o| (me, o)),
                );
            }
            run(&mut nodes, queue);
            assert_one_primary_and_no_stray_copy(&nodes, &id);
        }
    }

    /// The lower claim's member sees the other side again first: its re-placement copy reaches
    /// the higher claim's primary before that one's digest goes out, so it yields on the
    /// `NewPrimary` answer, with the same copy. No copy stays outside the primary's placement.
    #[test]
    fn a_primary_that_yields_before_the_others_digest_keeps_no_stray_copy() {
        // The stray copy needs the winner's placement to leave member 1 out: half the ids.
        for _ in 0..40 {
            yields_before_the_others_digest();
        }
    }

    fn yields_before_the_others_digest() {
        let all = [1u8, 2, 3];
        let mut nodes: Vec<BackupCore> = all.iter().map(|n| node(*n, &all, 1)).collect();
        let id = nodes[0].create(0).unwrap();
        let outs = nodes[0].end_request(&id, 0);
        run(&mut nodes, outs.into_iter().map(|o| (m(1), o)).collect());
        nodes[0].set_members(vec![m(1)]);
        let mut queue = Vec::new();
        for n in nodes[1..].iter_mut() {
            let me = n.local;
            queue.extend(n.set_members(vec![m(2), m(3)]).into_iter().map(|o| (me, o)));
        }
        run(&mut nodes[1..], queue);
        assert_eq!(nodes.iter().filter(|n| n.is_primary(&id)).count(), 2);
        // Member 1 first, and its messages delivered before the others notice it.
        let outs = nodes[0].set_members(vec![m(1), m(2), m(3)]);
        run_in_order(&mut nodes, outs.into_iter().map(|o| (m(1), o)).collect());
        let mut queue = VecDeque::new();
        for n in nodes[1..].iter_mut() {
            let me = n.local;
            queue.extend(
                n.set_members(vec![m(1), m(2), m(3)])
                    .into_iter()
                    .map(|o| (me, o)),
            );
        }
        run_in_order(&mut nodes, queue);
        assert_one_primary_and_no_stray_copy(&nodes, &id);
    }
}
