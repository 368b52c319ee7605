//! Two primaries of one session meet again after a partition heals. Each member sends a member
//! that joins its list a digest of the sessions it serves (and, to one it had listed before, the
//! ends it knows); the lower claim yields, handing its copy on (`Reconcile`) when the
//! reconciliation rule or the application's merger may prefer it, and drops the copies it
//! placed. An end known on one side loses only to a copy changed past its version.

use super::claims::Tomb;
use super::{BackupCore, BackupMessage, Out, Role, DIGEST_CHUNK};
use crate::member::{not_in, MemberId};
use crate::session::id::SessionId;
use crate::session::model::{Session, SessionState};
use crate::session::outputs::SessionEvent;
use crate::session::reconcile::{fingerprint, live_beats_end, reconcile, Stamp};
use std::cmp::Ordering;

/// A copy's (version, content fingerprint).
pub(super) fn key(s: &SessionState) -> (u64, u64) {
    (s.version, fingerprint(s))
}

/// A live session's (version, content fingerprint), with the fingerprint it keeps.
pub(super) fn session_key(s: &Session) -> (u64, u64) {
    (s.version(), s.fingerprint())
}

impl BackupCore {
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

    /// To each member not in `before`: the sessions served here, so two primaries of one
    /// session (one on each side of a healed partition) meet; the lower claim yields.
    pub(super) fn digests(&self, before: &[MemberId], regained: &[MemberId]) -> Vec<Out> {
        let added: Vec<MemberId> = not_in(&self.members, before).collect();
        if added.is_empty() {
            return Vec::new();
        }
        let mut entries: Vec<(SessionId, u64, Stamp)> = self
            .entries
            .iter()
            .filter(|(_, e)| matches!(e.role, Role::Primary { .. }) && !e.unannounced)
            .map(|(id, e)| (id.clone(), e.epoch, Stamp::of_session(&e.session)))
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
    pub(super) fn follow(
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
        let mine = Stamp::of_session(&e.session);
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
            let listed = |m: &&MemberId| self.members.binary_search(m).is_ok();
            let mine = backups.iter().chain(handover.retire.iter().filter(listed));
            for b in mine.filter(|b| **b != from && !chosen.contains(b)) {
                let drop = BackupMessage::Drop {
                    id: id.clone(),
                    epoch: e.epoch,
                    version: u64::MAX,
                };
                outs.push(Self::to(*b, drop));
            }
        } else if let Role::Backup { primary, .. } = &e.role {
            // A holder whose copy is newer than the claimant's hands it on: the claimant may
            // have taken over on an older copy than the one acknowledged (its holder had
            // not heard it was retired). The claimant takes it if it has not changed the
            // session since; this node keeps its copy until a copy as new arrives.
            if mine.version > theirs.version {
                let orphan = BackupMessage::Orphan {
                    state: e.session.state().clone(),
                    epoch: e.epoch,
                    primary: *primary,
                };
                outs.push(Self::to(from, orphan));
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

    /// `Reconcile`: a yielding primary's copy. A primary reconciles it with its own (`reconcile`, with the
    /// merger if set) and, if that changed its copy, copies the result to its backups and drops
    /// every other holder once they acknowledged; a holder that is not the primary any more
    /// passes it on to the claim it follows.
    pub(super) fn on_reconcile(
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
            .any(|b| *b == key(state) || *b == session_key(&e.session));
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
                    version: u64::MAX,
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

    /// `Digest`: the sessions `from` serves and the ends it knows. A primary here yields to a
    /// higher claim, and ends a session whose end its copy did not outlive.
    pub(super) fn on_digest(
        &mut self,
        from: MemberId,
        entries: &[(SessionId, u64, Stamp)],
        ended: &[(SessionId, u64)],
    ) -> (Vec<Out>, Vec<SessionEvent>) {
        let mut events = Vec::new();
        let mut outs = Vec::new();
        let local = self.local;
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
        // Sessions `from` serves that ended here at a version its copy does not beat: an end
        // made after this node's digest went out (its users ended the session while the members
        // noticed the heal one after another) reached `from` only as an `Expired` of a
        // superseded claim, which it ignored. Told now, so the end wins as the rule says.
        let mut ends = Vec::new();
        for (id, epoch, stamp) in entries {
            self.revive(id, stamp.version);
            if !self.entries.contains_key(id) {
                if let Some(ended) = self
                    .ended_at(id)
                    .filter(|ended| !live_beats_end(stamp.version, *ended))
                {
                    ends.push((id.clone(), ended));
                }
                outs.extend(self.renamed_claim_reply(id, stamp.version, from));
            }
            let yields = self.entries.get(id).is_some_and(|e| {
                matches!(e.role, Role::Primary { .. }) && e.claim(local) < (*epoch, from)
            });
            if yields {
                outs.extend(self.follow(id, from, *epoch, &[], stamp, true));
            }
        }
        for chunk in ends.chunks(DIGEST_CHUNK) {
            let msg = BackupMessage::Digest {
                entries: Vec::new(),
                ended: chunk.to_vec(),
            };
            outs.push(Self::to(from, msg));
        }
        (outs, events)
    }
}
