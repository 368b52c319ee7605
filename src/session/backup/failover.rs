//! Members coming and going. When a primary disappears, the first of its backups still alive
//! (in the order the primary last sent) promotes itself and restores the backup count; a holder
//! that is not first hands that backup its copy (`Orphan`) in case it never got one. When a
//! backup disappears or joins, the primary re-places.

use super::claims::{Claim, Tomb};
use super::heal::session_key;
use super::{BackupCore, BackupMessage, Entry, Out, Role};
use crate::member::MemberId;
use crate::session::id::SessionId;
use crate::session::model::{Session, SessionState};
use crate::session::outputs::SessionEvent;
use crate::session::reconcile::reconcile;

/// Members remembered as once listed (see `BackupCore::seen`).
const MAX_SEEN: usize = 4096;

impl BackupCore {
    /// The members changed: failover and re-placement.
    pub fn set_members(&mut self, mut members: Vec<MemberId>) -> Vec<Out> {
        members.retain(|m| *m != self.local);
        members.sort();
        members.dedup();
        // Bounded: ids that keep coming and going (an unkeyed cluster lets anyone claim one)
        // must not grow it; after a reset only members seen since fail over.
        if self.seen.len() > MAX_SEEN {
            self.seen.clear();
            self.unlisted_alive.clear();
        }
        let regained: Vec<MemberId> = members
            .iter()
            .filter(|m| self.seen.contains(m) && self.members.binary_search(m).is_err())
            .copied()
            .collect();
        self.seen.extend(members.iter().copied());
        let members_before = std::mem::replace(&mut self.members, members);
        // A member listed now, or one that left now, is no longer only "not noticed back yet".
        let (listed, before) = (&self.members, &members_before);
        self.unlisted_alive
            .retain(|m| listed.binary_search(m).is_err() && before.binary_search(m).is_err());
        // A claim remembered for a session not held here dies with its member: nobody serves
        // the session under it any more. Kept, it refused forever the copies and changes of a
        // live primary with a lower claim that never heard of it (the claimant died with its
        // `NewPrimary` on the way there). Claims of members not listed yet are kept (at start a
        // member lists the others one at a time).
        let (listed, seen) = (&self.members, &self.seen);
        self.claims
            .retain(|_, c| listed.binary_search(&c.1).is_ok() || !seen.contains(&c.1));
        // A fetcher this node answered that is still listed, and not yet followed here, will
        // claim the session; one that left will not. Its claim is one epoch above the copy it
        // was given (with the primary's answer) or two (without): a copy here that follows a
        // claim at least two epochs above the one it was answered under follows a later
        // primary (the fetcher's claim came and went, or was outrun), whose death is failed
        // over as usual. Kept, the answer held off the failover of a copy placed here long
        // after, by another fetch, and the session lost its primary (the crash simulation,
        // `killing_any_one_member_with_one_backup…`, seed 2 with word-wise fingerprints).
        //
        // A fetcher that left before its claim reached this node may have made it elsewhere,
        // and changed or ended the session there: this node asks the primary its copy follows,
        // which answers with its copy, or with the end it knows (the kill -9 loop simulation
        // with rebinding, seed 177: the fetcher ended the session and died with the `Expired`
        // to this node on its way; the copy here lived on with no primary).
        let (listed, entries) = (&self.members, &self.entries);
        let mut ask = Vec::new();
        self.answered.retain(|id, (f, answered_epoch)| {
            let follows = entries.get(id).and_then(|e| match &e.role {
                Role::Backup { primary, .. } if primary != f => Some((e.epoch, *primary)),
                _ => None,
            });
            if listed.binary_search(f).is_err() {
                if let Some((_, p)) = follows.filter(|(_, p)| listed.binary_search(p).is_ok()) {
                    ask.push(Self::to(p, BackupMessage::GetCopy { id: id.clone() }));
                }
                return false;
            }
            follows.is_some_and(|(epoch, _)| epoch < answered_epoch.saturating_add(2))
        });
        let mut outs = self.refetch(&members_before);
        outs.extend(ask);
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
            // A primary that is not listed but spoke to this node since it was last listed is
            // alive: this node only has not noticed it back yet. After a partition, a member
            // that followed the other side's primary on its digest or copy (yielding to its
            // higher claim) failed the session over on that copy at its next change of members
            // (another member noticed back first), from a version its own side had long passed,
            // and served that version again (the detected-failover simulation, seed 36: two
            // states of version 17). It is failed over if that member leaves once listed.
            if self.unlisted_alive.contains(primary) {
                continue;
            }
            // This node gave its copy to a member that fetches the session for a request:
            // without the primary's answer that member claims the session two epochs above
            // the copy, above any failover here. Failing over all the same placed this node's
            // copy, under its lower claim, on members that had not heard of the fetcher's
            // claim yet; when the fetcher changed the session's id right after, a member held
            // the old id's copy under the superseded claim next to the renamed session, until
            // this node yielded and dropped it (the kill -9 loop simulation, seed 62 of the
            // quiet variant: that member had acknowledged the stale copy). Had this node died
            // before yielding, the session would have lived on under both ids. If the fetcher
            // leaves before claiming, the next change of members fails the session over here.
            if self.answered.contains_key(&id) {
                continue;
            }
            // A request here is fetching the session: the fetch takes the best copy once every
            // member answered (or its deadline), this one included. Failing over on this copy
            // would serve that request at once from it, although another member may hold a
            // newer one of the same claim: a backup the primary re-placed the session on,
            // which acknowledged changes this displaced backup never got (it did not hear it
            // was displaced). Found by the kill -9 loop simulation, seed 315 of the quiet
            // variant: an acknowledged version was made again.
            if self.fetching.contains_key(&id) {
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

    /// `Orphan`: the primary of claim `(epoch, primary)` is gone and this node comes first in
    /// its failover order: it takes the session over, with `state` unless it holds that
    /// claim's copy in step.
    pub(super) fn on_orphan(
        &mut self,
        from: MemberId,
        state: &SessionState,
        epoch: u64,
        primary: MemberId,
    ) -> (Vec<Out>, Vec<SessionEvent>) {
        let mut events = Vec::new();
        let mut outs = Vec::new();
        let local = self.local;
        let id = &state.id;
        let oc = (epoch, primary);
        if self.is_ended(id) {
            outs.extend(self.ended_reply(id, from));
            outs.extend(self.renamed_reply(id, from));
            return (outs, events);
        }
        if let Some(outs) = self.newer_than_takeover(from, state, oc) {
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
            // Its own copy of that claim, in step, unless the orphan's is newer: the holder
            // that sent it may have got changes this node missed (the dead primary had
            // re-placed the session, and its copy to this node died with it). Keeping the
            // older copy sent it to the others as the new primary's, and a copy went back a
            // version (the kill -9 loop simulation with rebinding, seed 208 between requests).
            let keep = self.entries.get(id).is_some_and(|e| {
                e.claim(local) == oc && e.synced && e.session.version() >= state.version
            });
            if !keep {
                let had = self.entries.contains_key(id);
                let entry = Entry::backup(
                    Session::from_state(state.clone()),
                    primary,
                    Vec::new(),
                    epoch,
                );
                self.entries.insert(id.clone(), entry);
                if !had {
                    events.push(SessionEvent::Created(id.clone()));
                }
            }
            outs.extend(self.promote(id, true));
        }
        (outs, events)
    }

    /// An `Orphan` newer than the copy of the primary here, whose claim is above the orphan's:
    /// this node took the session over on an older copy (a holder that did not hear it was
    /// retired failed over, or the first backup failed over before a holder's newer copy
    /// arrived). If it has not changed the session since, it takes the newer copy and
    /// announces it under a new claim; otherwise its own changes stand, and a holder of a
    /// newer copy it lists as a backup is told to drop its copy and take this one (it refuses
    /// an older copy of this claim), acknowledging it: the hand-over waits for that ack, since
    /// the holder did not acknowledge the older copy it only followed. `None`: not such a case.
    fn newer_than_takeover(
        &mut self,
        from: MemberId,
        state: &SessionState,
        oc: Claim,
    ) -> Option<Vec<Out>> {
        let id = &state.id;
        let local = self.local;
        let e = self.entries.get_mut(id)?;
        let Role::Primary { backups, .. } = &e.role else {
            return None;
        };
        if state.version <= e.session.version() || e.claim(local) < oc {
            return None;
        }
        if e.base == Some(session_key(&e.session)) {
            // The rule's outcome: the newer copy, with the later access of the two.
            if let Some(newer) = reconcile(e.session.state(), state, None) {
                e.session = Session::from_state(newer);
            }
            return Some(self.promote(id, true));
        }
        let mut outs = vec![Self::to(
            from,
            BackupMessage::Drop {
                id: id.clone(),
                epoch: e.epoch,
                version: u64::MAX,
            },
        )];
        if backups.contains(&from) {
            let copy = BackupMessage::Copy {
                state: e.session.state().clone(),
                backups: backups.clone(),
                epoch: e.epoch,
                ack: true,
            };
            outs.push(Self::to(from, copy));
        }
        Some(outs)
    }

    /// The answer to an `Orphan` of an id this node renamed, when it serves the session under
    /// its new id: the holder tells the new id's `ChangeId`, under this node's claim, so it
    /// renames or drops its copy. Its copy is one the change of id missed (its renamer died
    /// with the `ChangeId` on the way); without the answer it failed the old id over and the
    /// session lived on under both ids (the kill -9 loop simulation, seed 419). The holder's
    /// acknowledgement, from a member that is no backup of the new id, gets it a `Drop`
    /// (`on_copy_ack`).
    fn renamed_reply(&self, id: &SessionId, to: MemberId) -> Option<Out> {
        let (new, e) = self.renamed_here(id)?;
        let Role::Primary { backups, .. } = &e.role else {
            return None;
        };
        let msg = BackupMessage::ChangeId {
            old: id.clone(),
            new: new.clone(),
            epoch: e.epoch,
            backups: backups.clone(),
        };
        Some(Self::to(to, msg))
    }

    /// The answer to a `Copy` of an id this node renamed, when it serves the session under its
    /// new id: the old id ended (an `Expired` that wins over every claim, as an end known here
    /// does). Its sender claimed the old id on a copy the change of id missed (it was down when
    /// its renamer fetched and renamed the session), under a claim above the renamer's, so the
    /// `ChangeId` an `Orphan` gets would be ignored (the kill -9 loop simulation with
    /// rebinding and lanes that fail at a reset, seed 213: the old id lived on beside the new
    /// one). The session lives on under the new id, here and on its backups.
    pub(super) fn renamed_end_reply(&self, id: &SessionId, to: MemberId) -> Option<Out> {
        let (_, e) = self.renamed_here(id)?;
        if !matches!(e.role, Role::Primary { .. }) {
            return None;
        }
        let msg = BackupMessage::Expired {
            id: id.clone(),
            epoch: u64::MAX,
            version: e.session.version(),
        };
        Some(Self::to(to, msg))
    }

    /// The answer to a claim on an id this node renamed and serves under its new id (a
    /// `NewPrimary` or a `Digest` entry of a member that serves the old id at `version`): the
    /// old id's end, as [`renamed_end_reply`](Self::renamed_end_reply) answers a `Copy`. The
    /// claimant failed the old id over on a copy this node had just placed, after it noticed
    /// this node restart (it read the new life's `Copy` before the restart), and ignores the
    /// `ChangeId` of the lower claim; without the end it kept the old id with its backups
    /// beside the new one, and the old id's copy came back when the claimant died (the kill -9
    /// loop simulation with lanes that fail at a reset, seed 377: an acknowledged session
    /// back at version 1 under its old id). A claimant's copy newer than the session here was
    /// changed under the old id after the change of id: it is not ended.
    pub(super) fn renamed_claim_reply(
        &self,
        id: &SessionId,
        version: u64,
        to: MemberId,
    ) -> Option<Out> {
        let (_, e) = self.renamed_here(id)?;
        if version > e.session.version() {
            return None;
        }
        self.renamed_end_reply(id, to)
    }

    /// Whether `id` was renamed here and the session it became is not served here: the change
    /// of id came from another member's `ChangeId` (when this node renamed it as primary, its
    /// own `ChangeId` went to the holders it knew).
    pub(super) fn renamed_by_another(&self, id: &SessionId) -> bool {
        matches!(self.ended.get(id), Some(Tomb::Renamed { .. }))
            && self
                .renamed_here(id)
                .is_none_or(|(_, e)| !matches!(e.role, Role::Primary { .. }))
    }

    /// The id `id` was renamed to here and its entry, when the chain of changes of id from
    /// `id` ends at a session held here.
    fn renamed_here<'a>(&'a self, id: &'a SessionId) -> Option<(&'a SessionId, &'a Entry)> {
        let mut new = id;
        // A chain of changes of id ends at the id served here, if any (bounded: a tombstone
        // cycle from the network must not loop).
        for _ in 0..8 {
            match self.ended.get(new) {
                Some(Tomb::Renamed { to }) => new = to,
                _ => break,
            }
        }
        let e = self.entries.get(new).filter(|_| new != id)?;
        Some((new, e))
    }
}
