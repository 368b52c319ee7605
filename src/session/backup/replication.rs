//! A session's life on its primary and its backups: created here, its request's changes sent to
//! the backups only when the request ends (a whole copy the first time, then versioned deltas
//! or just the access time), ended or renamed on every holder, expired by the reaper. Backups
//! apply changes by version: a duplicate or stale one is ignored, a gap asks for a copy.

use super::claims::{Follows, Tomb};
use super::handover::Handover;
use super::placement::placement;
use super::{BackupCore, BackupMessage, Entry, Out, Role};
use crate::member::MemberId;
use crate::session::id::{SessionId, SessionIdError};
use crate::session::model::{Applied, DeltaOp, Session};
use crate::session::outputs::{attribute_events, SessionEvent};

impl BackupCore {
    /// A new session served here, announced to its backups when its request ends.
    pub fn create(&mut self, now_ms: u64) -> Result<SessionId, SessionIdError> {
        let id = SessionId::generate_from(&self.route, self.ids.as_mut())?;
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

    /// On a stop that leaves the sessions to the other members: drops every copy held here
    /// with no end remembered (a local tombstone only, so a late copy does not come back
    /// here). A member that asks this node before its channel stops (`GetCopy`, `Copy`,
    /// `Fetch`, a digest) is not told that these sessions ended; its backups fail them over
    /// when this node leaves. Ends that really happened earlier are still named.
    pub fn drop_copies(&mut self) -> Vec<SessionEvent> {
        let ids: Vec<SessionId> = self.entries.keys().cloned().collect();
        self.entries.clear();
        self.fetching.clear();
        self.answered.clear();
        ids.into_iter()
            .map(|id| {
                self.bury(&id, Tomb::Local);
                SessionEvent::Destroyed(id)
            })
            .collect()
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
        let new = SessionId::generate_from(&self.route, self.ids.as_mut())?;
        Ok(self.change_id_to(old, new))
    }

    /// This node's route (the suffix of the ids it makes).
    pub fn route(&self) -> &str {
        &self.route
    }

    /// Whether `id` names a session held here, or one that ended or was renamed here.
    pub fn id_known(&self, id: &SessionId) -> bool {
        self.entries.contains_key(id) || self.is_ended(id)
    }

    /// Gives a session served here the id `new` (a rebound route keeps the random part), as
    /// [`change_id`](Self::change_id) does. `None` when it is not served here or `new` is
    /// known here.
    pub fn change_id_to(
        &mut self,
        old: &SessionId,
        new: SessionId,
    ) -> Option<(SessionId, Vec<Out>)> {
        if !self.is_primary(old) || self.id_known(&new) {
            return None;
        }
        let mut e = self.entries.remove(old)?;
        self.bury(old, Tomb::Renamed { to: new.clone() });
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
        Some((new, outs))
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

    /// `Delta`: a request's changes from claim `(epoch, from)`, made on version `base` and
    /// giving `version`; applied only in step with that claim, else a copy is asked for.
    pub(super) fn on_delta(
        &mut self,
        from: MemberId,
        id: &SessionId,
        epoch: u64,
        (base, version): (u64, u64),
        ops: &[DeltaOp],
        last_accessed_ms: u64,
    ) -> (Vec<Out>, Vec<SessionEvent>) {
        let mut events = Vec::new();
        let mut outs = Vec::new();
        let c = (epoch, from);
        match self.follows(id, c) {
            Follows::Yes => {
                if let Some(e) = self.entries.get_mut(id) {
                    let attr = attribute_events(&e.session, ops);
                    match e.session.apply_delta(base, version, ops) {
                        Applied::Applied => {
                            e.session.access(last_accessed_ms);
                            events.extend(attr);
                        }
                        Applied::Stale => {}
                        Applied::Gap => {
                            outs.push(Self::to(from, BackupMessage::GetCopy { id: id.clone() }))
                        }
                    }
                }
            }
            Follows::Behind => outs.push(Self::to(from, BackupMessage::GetCopy { id: id.clone() })),
            Follows::Stale => outs.extend(self.ended_reply(id, from)),
        }
        (outs, events)
    }

    /// `Accessed`: only the access time moved; a copy behind `version` asks for a copy.
    pub(super) fn on_accessed(
        &mut self,
        from: MemberId,
        id: &SessionId,
        epoch: u64,
        version: u64,
        last_accessed_ms: u64,
    ) -> Vec<Out> {
        let mut outs = Vec::new();
        let c = (epoch, from);
        match self.follows(id, c) {
            Follows::Yes => {
                if let Some(e) = self.entries.get_mut(id) {
                    e.session.access(last_accessed_ms);
                    if e.session.version() < version {
                        outs.push(Self::to(from, BackupMessage::GetCopy { id: id.clone() }));
                    }
                }
            }
            Follows::Behind => outs.push(Self::to(from, BackupMessage::GetCopy { id: id.clone() })),
            Follows::Stale => outs.extend(self.ended_reply(id, from)),
        }
        outs
    }

    /// `GetCopy`: a backup that is behind gets a copy (listed backups only); a member asking
    /// for a session that ended here is told it ended.
    ///
    /// The copy asks for an ack, so a copy taken by a member this primary no longer counts as a
    /// holder gets it a `Drop` (`on_copy_ack`): the asker may be a restarted backup's new life,
    /// whose restart this primary noticed after it answered (it re-placed the session and
    /// forgot the member while it was gone), with the copy still on its way, or overtaken by
    /// the `Drop` this primary sent on the new life's connection (the kill -9 loop simulation
    /// with lanes that fail at a reset, seeds 298 and 187: a stray copy on the restarted
    /// member, never dropped).
    pub(super) fn on_get_copy(&self, from: MemberId, id: &SessionId) -> Vec<Out> {
        let mut outs: Vec<Out> = self.ended_reply(id, from).into_iter().collect();
        if let Some(e) = self.entries.get(id) {
            if let Role::Primary { backups, .. } = &e.role {
                if backups.contains(&from) {
                    outs.push(Self::to(
                        from,
                        BackupMessage::Copy {
                            state: e.session.state().clone(),
                            backups: backups.clone(),
                            epoch: e.epoch,
                            ack: true,
                        },
                    ));
                }
            }
        }
        outs
    }

    /// `Expired`: the session ended at `version` (ignored from a claim below the one followed).
    pub(super) fn on_expired(
        &mut self,
        from: MemberId,
        id: &SessionId,
        epoch: u64,
        version: u64,
    ) -> (Vec<Out>, Vec<SessionEvent>) {
        let mut events = Vec::new();
        let mut outs = Vec::new();
        let local = self.local;
        let c = (epoch, from);
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
        self.bury(id, Tomb::Ended { version });
        (outs, events)
    }

    /// `ChangeId`: the copy is renamed and listed under the new id's `backups`; acknowledged
    /// so the primary can place the new id.
    pub(super) fn on_change_id(
        &mut self,
        from: MemberId,
        old: &SessionId,
        new: &SessionId,
        epoch: u64,
        backups: &[MemberId],
    ) -> (Vec<Out>, Vec<SessionEvent>) {
        let mut events = Vec::new();
        let mut outs = Vec::new();
        let local = self.local;
        let c = (epoch, from);
        if self.entries.get(old).is_some_and(|e| e.claim(local) > c) {
            return (outs, events);
        }
        // The primary places the new id once its backups renamed.
        let ack = BackupMessage::CopyAck {
            id: new.clone(),
            epoch,
        };
        outs.push(Self::to(from, ack));
        self.bury(old, Tomb::Renamed { to: new.clone() });
        if let Some(mut e) = self.entries.remove(old) {
            let newer_here = self
                .entries
                .get(new)
                .is_some_and(|n| n.session.version() >= e.session.version());
            if !newer_here && !self.is_ended(new) {
                e.session.change_id(new.clone());
                if let Role::Backup { backups: list, .. } = &mut e.role {
                    *list = backups.to_vec();
                }
                self.entries.insert(new.clone(), e);
                events.push(SessionEvent::IdChanged {
                    old: old.clone(),
                    new: new.clone(),
                });
            }
        }
        (outs, events)
    }
}
