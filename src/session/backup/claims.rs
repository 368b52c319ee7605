//! Who owns a session, as this node knows it, and what it remembers of sessions it no longer
//! holds. A claim `(epoch, member)` orders the primaries a session has had (see
//! [`BackupMessage`](super::BackupMessage)); ended ids (tombstones) and the claims heard for
//! sessions not held here sit in a bounded memory, so the network cannot grow them.

use super::{BackupCore, BackupMessage, Entry, Out, Role};
use crate::member::MemberId;
use crate::session::id::SessionId;
use std::collections::{BTreeMap, VecDeque};

/// Who owns a session, as a holder knows it: `(epoch, member)`, higher wins.
pub(super) type Claim = (u64, MemberId);

/// Why an id is remembered as gone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Tomb {
    /// Invalidated or expired by its primary (here, or told so), at `version` (the ended
    /// copy's).
    Ended { version: u64 },
    /// A backup copy expired here on its own (the primary may still serve it).
    Local,
    /// Renamed: the session lives on under the id `to` (so a copy of the old id met later,
    /// e.g. one a holder the change of id missed hands on, can be linked to it).
    Renamed { to: SessionId },
}

/// How a primary's message relates to the copy a node holds.
pub(super) enum Follows {
    /// From the claim the copy follows: apply it.
    Yes,
    /// From a newer claim, or the copy awaits its claim's copy: ask for a copy.
    Behind,
    /// From a superseded claim, or about a session that ended: ignore it.
    Stale,
}

impl Entry {
    pub(super) fn claim(&self, local: MemberId) -> Claim {
        match &self.role {
            Role::Primary { .. } => (self.epoch, local),
            Role::Backup { primary, .. } => (self.epoch, *primary),
        }
    }
}

/// A bounded memory of ids, oldest forgotten first (tombstones and claims).
pub(super) struct Bounded<V> {
    map: BTreeMap<SessionId, V>,
    order: VecDeque<SessionId>,
    max: usize,
}

impl<V> Bounded<V> {
    pub(super) fn new(max: usize) -> Self {
        Bounded {
            map: BTreeMap::new(),
            order: VecDeque::new(),
            max,
        }
    }

    pub(super) fn get(&self, id: &SessionId) -> Option<&V> {
        self.map.get(id)
    }

    /// Forgets `id` (its place in the order is freed when it comes up).
    pub(super) fn remove(&mut self, id: &SessionId) {
        self.map.remove(id);
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&SessionId, &V)> {
        self.map.iter()
    }

    /// Keeps only the entries `keep` says to (the places of the others are freed when they
    /// come up).
    pub(super) fn retain(&mut self, keep: impl FnMut(&SessionId, &mut V) -> bool) {
        self.map.retain(keep);
    }

    /// Inserts or replaces; a new id counts against the bound.
    pub(super) fn insert(&mut self, id: &SessionId, v: V) {
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

impl BackupCore {
    pub(super) fn bury(&mut self, id: &SessionId, how: Tomb) {
        // An end the application decided is not weakened by a later local record.
        if self.ended_at(id).is_none() {
            self.ended.insert(id, how);
        }
    }

    /// The answer to a message that treats `id` as alive when it was ended here by its
    /// primary's decision: the sender ends it too (an end, even unacknowledged, wins over a
    /// copy that survived it, so every member agrees).
    pub(super) fn ended_reply(&self, id: &SessionId, to: MemberId) -> Option<Out> {
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
    pub(super) fn ended_at(&self, id: &SessionId) -> Option<u64> {
        match self.ended.get(id) {
            Some(Tomb::Ended { version }) => Some(*version),
            _ => None,
        }
    }

    pub(super) fn is_ended(&self, id: &SessionId) -> bool {
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

    #[cfg(test)]
    /// Whether `id` ended (or was renamed) here: a late message cannot bring it back.
    pub fn has_ended(&self, id: &SessionId) -> bool {
        self.is_ended(id)
    }

    /// Remembers a claim for a session not held here (the highest wins).
    pub(super) fn remember(&mut self, id: &SessionId, c: Claim) {
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
    pub(super) fn superseded(&self, id: &SessionId, c: Claim) -> bool {
        self.claims.get(id).is_some_and(|k| *k > c)
    }

    /// How a change from claim `c` relates to the copy held here.
    pub(super) fn follows(&self, id: &SessionId, c: Claim) -> Follows {
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
