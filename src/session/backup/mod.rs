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
//!
//! The files follow the concepts: `messages` (what members say, and the claim a message
//! carries), `placement` (who backs a session up), `claims` (who owns a session; tombstones),
//! `replication` (a session's changes reaching its backups, its end, its new id), `handover`
//! (a session changing primary or backups), `failover` (members coming and going), `fetch` (a
//! request for a session not held here) and `heal` (two primaries meeting after a partition).
//! [`BackupCore::handle`] hands each message kind to one `on_*` function.

mod claims;
mod failover;
mod fetch;
mod handover;
mod heal;
mod messages;
mod placement;
mod replication;
#[cfg(test)]
mod tests;

pub use messages::{BackupMessage, Out, DIGEST_CHUNK};
#[cfg(test)]
pub use placement::placement;

use crate::member::MemberId;
use crate::session::id::{IdSource, OsRandom, SessionId};
use crate::session::model::Session;
use crate::session::outputs::{Dest, SessionEvent};
use crate::session::reconcile::SessionMerger;
use claims::{Bounded, Claim, Tomb};
use fetch::Fetching;
use handover::Handover;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

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

/// What this node is to a session it holds.
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

/// A session held here, with what this node knows of its ownership.
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
    /// False once a new claim is known but not its copy: deltas wait for the next copy of
    /// that claim at least as new as this one (an older one is refused: this copy was handed
    /// to the claimant, see `follow`).
    synced: bool,
    replicated_access_ms: u64,
    /// The (version, fingerprint) of the copy this node took the session over with, if it did
    /// (failover, fetch): a copy met later with this content is this one's past.
    base: Option<(u64, u64)>,
}

impl Entry {
    /// A copy kept for `primary`, in step with its claim.
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

/// The sessions of one application on this node: those it serves and those it backs up.
pub struct BackupCore {
    cfg: BackupConfig,
    local: MemberId,
    route: String,
    members: Vec<MemberId>,
    /// Every member ever in the list: only a primary seen and then gone is failed over (at
    /// start, a copy may arrive from a member the list does not hold yet).
    seen: std::collections::BTreeSet<MemberId>,
    /// Members seen before, not listed now, that spoke to this node since they were last
    /// listed: alive, only not noticed back yet (a partition healing one member after another).
    /// A session that follows one of them is not failed over (see `set_members`).
    unlisted_alive: std::collections::BTreeSet<MemberId>,
    entries: BTreeMap<SessionId, Entry>,
    ended: Bounded<Tomb>,
    /// The highest claim heard for sessions not held here, so a late copy from a superseded
    /// primary is refused.
    claims: Bounded<Claim>,
    /// Fetches in progress: answers still awaited, and the claim of the copy taken so far.
    fetching: BTreeMap<SessionId, Fetching>,
    /// Sessions backed up here whose copy this node gave to another member's fetch, with that
    /// member and the epoch the copy followed then: while it is listed, it takes the session
    /// with a claim above any failover made here, so this node does not fail the session over
    /// (see `set_members`).
    answered: BTreeMap<SessionId, (MemberId, u64)>,
    /// The application's say on copies that diverged (see `reconcile`).
    merger: Option<Arc<dyn SessionMerger>>,
    /// Where new session ids come from.
    ids: Box<dyn IdSource>,
}

impl BackupCore {
    pub fn new(cfg: BackupConfig, local: MemberId, route: &str) -> BackupCore {
        let max = cfg.max_tombstones;
        BackupCore {
            cfg,
            local,
            route: route.to_string(),
            members: Vec::new(),
            seen: std::collections::BTreeSet::new(),
            unlisted_alive: std::collections::BTreeSet::new(),
            entries: BTreeMap::new(),
            ended: Bounded::new(max),
            claims: Bounded::new(max),
            fetching: BTreeMap::new(),
            answered: BTreeMap::new(),
            merger: None,
            ids: Box::new(OsRandom),
        }
    }

    #[cfg(test)]
    /// Draws new session ids from `ids` instead of the operating system (a seeded source makes
    /// a simulation replay exactly).
    pub fn set_id_source(&mut self, ids: Box<dyn IdSource>) {
        self.ids = ids;
    }

    /// The application's merger of diverged copies (`None`: the rule of `reconcile` alone).
    pub fn set_merger(&mut self, merger: Option<Arc<dyn SessionMerger>>) {
        self.merger = merger;
    }

    /// A message to one member.
    fn to(m: MemberId, msg: BackupMessage) -> Out {
        Out {
            dest: Dest::Member(m),
            msg,
        }
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

    pub fn is_primary(&self, id: &SessionId) -> bool {
        self.entries
            .get(id)
            .is_some_and(|e| matches!(e.role, Role::Primary { .. }))
    }

    #[cfg(test)]
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

    #[cfg(test)]
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

    #[cfg(test)]
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

    /// A message from member `from`.
    pub fn handle(&mut self, from: MemberId, msg: &BackupMessage) -> (Vec<Out>, Vec<SessionEvent>) {
        use BackupMessage as M;
        if self.seen.contains(&from) && self.members.binary_search(&from).is_err() {
            self.unlisted_alive.insert(from);
        }
        match msg {
            M::Copy {
                state,
                backups,
                epoch,
                ack,
            } => self.on_copy(from, state, backups, *epoch, *ack),
            M::CopyAck { id, epoch } => (self.on_copy_ack(from, id, *epoch), Vec::new()),
            M::Delta {
                id,
                epoch,
                base,
                version,
                ops,
                last_accessed_ms,
            } => self.on_delta(from, id, *epoch, (*base, *version), ops, *last_accessed_ms),
            M::Accessed {
                id,
                epoch,
                version,
                last_accessed_ms,
            } => (
                self.on_accessed(from, id, *epoch, *version, *last_accessed_ms),
                Vec::new(),
            ),
            M::Drop { id, epoch, version } => {
                (self.on_drop(from, id, *epoch, *version), Vec::new())
            }
            M::Expired { id, epoch, version } => self.on_expired(from, id, *epoch, *version),
            M::ChangeId {
                old,
                new,
                epoch,
                backups,
            } => self.on_change_id(from, old, new, *epoch, backups),
            M::GetCopy { id } => (self.on_get_copy(from, id), Vec::new()),
            M::Fetch { id } => (self.on_fetch(from, id), Vec::new()),
            M::Fetched {
                id,
                state,
                epoch,
                owner,
                current,
            } => self.on_fetched(from, id, state.as_ref(), (*epoch, *owner), *current),
            M::NewPrimary {
                id,
                stamp,
                backups,
                epoch,
            } => (
                self.on_new_primary(from, id, stamp, backups, *epoch),
                Vec::new(),
            ),
            M::Orphan {
                state,
                epoch,
                primary,
            } => self.on_orphan(from, state, *epoch, *primary),
            M::Reconcile { state, base } => (self.on_reconcile(from, state, *base), Vec::new()),
            M::Digest { entries, ended } => self.on_digest(from, entries, ended),
        }
    }
}
