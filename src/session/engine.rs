//! One manager's replication core, DeltaManager or BackupManager, behind one interface for the
//! shell: the application-facing API is the same and the configuration chooses.

use super::backup::{BackupCore, BackupMessage};
use super::delta::DeltaCore;
#[cfg(test)]
use super::id::IdSource;
use super::id::{SessionId, SessionIdError};
use super::model::Session;
use super::outputs::{Out, SessionEvent};
use super::reconcile::SessionMerger;
use super::replica::SessionMessage;
use crate::member::MemberId;
use serde::{Deserialize, Serialize};

/// What managers send each other, by kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    Delta(SessionMessage),
    Backup(BackupMessage),
}

pub(crate) type POut = Out<Payload>;

/// A change of id: the new id, what to send, what to tell listeners.
pub(crate) type Renamed = (SessionId, Vec<POut>, Vec<SessionEvent>);

fn wrap<M>(outs: Vec<Out<M>>, f: fn(M) -> Payload) -> Vec<POut> {
    outs.into_iter()
        .map(|o| Out {
            dest: o.dest,
            msg: f(o.msg),
        })
        .collect()
}

pub(crate) enum Core {
    Delta(DeltaCore),
    Backup(BackupCore),
}

impl Core {
    pub fn session(&self, id: &SessionId) -> Option<&Session> {
        match self {
            Core::Delta(c) => c.session(id),
            Core::Backup(c) => c.session(id),
        }
    }

    /// The session if a request may use it here: any copy (DeltaManager), or one this node
    /// serves (BackupManager; a backup copy is taken over or fetched first).
    pub fn served(&self, id: &SessionId) -> Option<&Session> {
        match self {
            Core::Delta(c) => c.session(id),
            Core::Backup(c) => c.session(id).filter(|_| c.is_primary(id)),
        }
    }

    pub fn session_mut(&mut self, id: &SessionId) -> Option<&mut Session> {
        match self {
            Core::Delta(c) => c.session_mut(id),
            Core::Backup(c) => c.session_mut(id),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Core::Delta(c) => c.store().len(),
            Core::Backup(c) => c.len(),
        }
    }

    /// Sessions this node is primary for (BackupManager); `None` for a DeltaManager.
    pub fn primaries(&self) -> Option<usize> {
        match self {
            Core::Delta(_) => None,
            Core::Backup(c) => Some(c.primaries()),
        }
    }

    pub fn ids(&self) -> Vec<SessionId> {
        match self {
            Core::Delta(c) => c.store().ids().cloned().collect(),
            Core::Backup(c) => c.ids().cloned().collect(),
        }
    }

    pub fn create(&mut self, now_ms: u64) -> Result<SessionId, SessionIdError> {
        match self {
            Core::Delta(c) => c.create(now_ms),
            Core::Backup(c) => c.create(now_ms),
        }
    }

    pub fn end_request(&mut self, id: &SessionId, now_ms: u64) -> Vec<POut> {
        match self {
            Core::Delta(c) => wrap(c.end_request(id, now_ms), Payload::Delta),
            Core::Backup(c) => wrap(c.end_request(id, now_ms), Payload::Backup),
        }
    }

    pub fn invalidate(&mut self, id: &SessionId) -> (Vec<POut>, Vec<SessionEvent>) {
        match self {
            Core::Delta(c) => {
                let (o, e) = c.invalidate(id);
                (wrap(o, Payload::Delta), e)
            }
            Core::Backup(c) => {
                let (o, e) = c.invalidate(id);
                (wrap(o, Payload::Backup), e)
            }
        }
    }

    /// On a stop that leaves the sessions to the other members: ends every session here
    /// only, with no end remembered ([`DeltaCore::drop_copies`], [`BackupCore::drop_copies`]).
    pub fn drop_copies(&mut self) -> Vec<SessionEvent> {
        match self {
            Core::Delta(c) => c.drop_copies(),
            Core::Backup(c) => c.drop_copies(),
        }
    }

    /// `None` when the session is not here (or, for a backup copy, not served here).
    pub fn change_id(&mut self, id: &SessionId) -> Result<Option<Renamed>, SessionIdError> {
        match self {
            Core::Delta(c) => {
                if c.session(id).is_none() {
                    return Ok(None);
                }
                let (new, o, e) = c.change_id(id)?;
                Ok(Some((new, wrap(o, Payload::Delta), e)))
            }
            Core::Backup(c) => Ok(c.change_id(id)?.map(|(new, o)| {
                let e = vec![SessionEvent::IdChanged {
                    old: id.clone(),
                    new: new.clone(),
                }];
                (new, wrap(o, Payload::Backup), e)
            })),
        }
    }

    /// Gives the session the id `new` (see [`DeltaCore::change_id_to`]); `None` when it is
    /// not served here or `new` is known here.
    pub fn change_id_to(&mut self, old: &SessionId, new: SessionId) -> Option<Renamed> {
        match self {
            Core::Delta(c) => c
                .change_id_to(old, new)
                .map(|(new, o, e)| (new, wrap(o, Payload::Delta), e)),
            Core::Backup(c) => c.change_id_to(old, new).map(|(new, o)| {
                let e = vec![SessionEvent::IdChanged {
                    old: old.clone(),
                    new: new.clone(),
                }];
                (new, wrap(o, Payload::Backup), e)
            }),
        }
    }

    /// This node's route (the suffix of the ids it makes; empty for none).
    pub fn route(&self) -> &str {
        match self {
            Core::Delta(c) => c.route(),
            Core::Backup(c) => c.route(),
        }
    }

    /// Whether `id` names a session here, or one that ended or was renamed here.
    pub fn id_known(&self, id: &SessionId) -> bool {
        match self {
            Core::Delta(c) => c.id_known(id),
            Core::Backup(c) => c.id_known(id),
        }
    }

    /// Whether `id` is an id session `current` had before, which a rename may take back
    /// (DeltaManager; a BackupManager never reuses a retired id).
    pub fn is_former_id(&self, id: &SessionId, current: &SessionId) -> bool {
        match self {
            Core::Delta(c) => c.is_former_id(id, current),
            Core::Backup(_) => false,
        }
    }

    pub fn expire(&mut self, now_ms: u64) -> (Vec<POut>, Vec<SessionEvent>) {
        match self {
            Core::Delta(c) => {
                let (o, e) = c.expire(now_ms);
                (wrap(o, Payload::Delta), e)
            }
            Core::Backup(c) => {
                let (o, e) = c.expire(now_ms);
                (wrap(o, Payload::Backup), e)
            }
        }
    }

    /// A message from another member. A message of the other kind (a member configured with
    /// the other manager for this application) is refused with a reason. The sessions a
    /// DeltaManager's message carries are moved out of it into the store.
    pub fn handle(
        &mut self,
        from: MemberId,
        msg: &mut Payload,
    ) -> Result<(Vec<POut>, Vec<SessionEvent>), String> {
        match (self, msg) {
            (Core::Delta(c), Payload::Delta(m)) => {
                let (o, e) = c.handle_taking(from, m);
                Ok((wrap(o, Payload::Delta), e))
            }
            (Core::Backup(c), Payload::Backup(m)) => {
                let (o, e) = c.handle(from, m);
                Ok((wrap(o, Payload::Backup), e))
            }
            (Core::Delta(_), _) => Err("this member replicates the application with a DeltaManager, the sender with a BackupManager".into()),
            (Core::Backup(_), _) => Err("this member replicates the application with a BackupManager, the sender with a DeltaManager".into()),
        }
    }

    /// Delta: the next chunk of the state transfer to `to`, if one is under way, and whether
    /// more follow it. Backup: nothing.
    pub fn next_chunk(&mut self, to: MemberId) -> (Vec<POut>, bool) {
        match self {
            Core::Delta(c) => {
                let outs = wrap(c.next_chunk(to).into_iter().collect(), Payload::Delta);
                (outs, c.is_donating_to(to))
            }
            Core::Backup(_) => (Vec::new(), false),
        }
    }

    /// Delta: starts a state transfer to `to` (it asked for every session); its chunks come
    /// from [`Self::next_chunk`]. Backup: nothing (a joiner takes its share by re-placement).
    pub fn start_donation(&mut self, to: MemberId) {
        if let Core::Delta(c) = self {
            c.start_donation(to);
        }
    }

    /// Delta: stops the state transfer to `to`. Backup: nothing.
    pub fn cancel_donation(&mut self, to: MemberId) {
        if let Core::Delta(c) = self {
            c.cancel_donation(to);
        }
    }

    /// Delta: this node's digest for `to`, which asked for it (`GetDigest`), the last chunk
    /// empty. Backup: nothing.
    pub fn answer_get_digest(&mut self, to: MemberId, now_ms: u64) -> Vec<POut> {
        match self {
            Core::Delta(c) => wrap(c.answer_get_digest(to, now_ms), Payload::Delta),
            Core::Backup(_) => Vec::new(),
        }
    }

    /// Delta: the digests owed to members that asked while this node was joining, now that it
    /// is ready. Backup: nothing.
    pub fn answer_owed_digests(&mut self, now_ms: u64) -> Vec<POut> {
        match self {
            Core::Delta(c) => wrap(c.answer_owed_digests(now_ms), Payload::Delta),
            Core::Backup(_) => Vec::new(),
        }
    }

    /// Backup: the session of a message this member ignored because its sender's claim was
    /// superseded (a newer primary is known here).
    pub fn superseded(&self, from: MemberId, msg: &Payload) -> Option<SessionId> {
        match (self, msg) {
            (Core::Backup(c), Payload::Backup(m)) => m
                .claim()
                .filter(|(id, epoch)| c.is_superseded(id, *epoch, from))
                .map(|(id, _)| id.clone()),
            _ => None,
        }
    }

    /// Delta: the session of a change (DELTA, ACCESSED) this member ignored because the
    /// session ended here. Not acknowledged: an end that reached only some members (its maker
    /// died) must not let another member's change look replicated, as the end wins when the
    /// members compare what they hold after the death.
    pub fn ended_here(&self, msg: &Payload) -> Option<SessionId> {
        match (self, msg) {
            (Core::Delta(c), Payload::Delta(m)) => c.ended_here(m),
            _ => None,
        }
    }

    /// Whether `outs` ask a member for a session because a change could not be applied.
    pub fn asks_for_session(outs: &[POut]) -> Option<SessionId> {
        outs.iter().find_map(|o| match &o.msg {
            Payload::Delta(SessionMessage::GetSession { id })
            | Payload::Backup(BackupMessage::GetCopy { id }) => Some(id.clone()),
            _ => None,
        })
    }

    pub fn is_ready(&self) -> bool {
        match self {
            Core::Delta(c) => c.is_ready(),
            Core::Backup(_) => true,
        }
    }

    /// Delta: chunks of the current state transfer received so far.
    pub fn transfer_chunks(&self) -> usize {
        match self {
            Core::Delta(c) => c.transfer_chunks(),
            Core::Backup(_) => 0,
        }
    }

    pub fn expect_members(&mut self) {
        if let Core::Delta(c) = self {
            c.expect_members();
        }
    }

    /// Delta: stops waiting for the state transfer; digests that arrived meanwhile are read.
    pub fn end_state_transfer(&mut self) -> (Vec<POut>, Vec<SessionEvent>) {
        match self {
            Core::Delta(c) => {
                let (o, e) = c.end_state_transfer();
                (wrap(o, Payload::Delta), e)
            }
            Core::Backup(_) => (Vec::new(), Vec::new()),
        }
    }

    /// The DeltaManager's core, for the simulation's checks.
    #[cfg(test)]
    pub fn delta(&self) -> Option<&DeltaCore> {
        match self {
            Core::Delta(c) => Some(c),
            Core::Backup(_) => None,
        }
    }

    #[cfg(test)]
    pub fn delta_mut(&mut self) -> Option<&mut DeltaCore> {
        match self {
            Core::Delta(c) => Some(c),
            Core::Backup(_) => None,
        }
    }

    /// The BackupManager's core, for the simulation's checks.
    #[cfg(test)]
    pub fn backup(&self) -> Option<&BackupCore> {
        match self {
            Core::Backup(c) => Some(c),
            Core::Delta(_) => None,
        }
    }

    #[cfg(test)]
    pub fn backup_mut(&mut self) -> Option<&mut BackupCore> {
        match self {
            Core::Backup(c) => Some(c),
            Core::Delta(_) => None,
        }
    }

    /// Where new session ids come from (see [`IdSource`]).
    #[cfg(test)]
    pub fn set_id_source(&mut self, ids: Box<dyn IdSource>) {
        match self {
            Core::Delta(c) => c.set_id_source(ids),
            Core::Backup(c) => c.set_id_source(ids),
        }
    }

    /// Lets the application decide between copies that diverged in a partition.
    pub fn set_merger(&mut self, merger: Option<std::sync::Arc<dyn SessionMerger>>) {
        match self {
            Core::Delta(c) => c.set_merger(merger),
            Core::Backup(c) => c.set_merger(merger),
        }
    }

    /// Delta: asks `donor` for every session. Backup: nothing (joins take their share).
    pub fn begin_state_transfer(&mut self, donor: MemberId) -> Vec<POut> {
        match self {
            Core::Delta(c) => wrap(vec![c.begin_state_transfer(donor)], Payload::Delta),
            Core::Backup(_) => Vec::new(),
        }
    }

    /// The member list changed. Delta: a digest to each new member (reconciliation). Backup:
    /// failover, re-placement and reconciliation.
    pub fn set_members(&mut self, members: Vec<MemberId>, now_ms: u64) -> Vec<POut> {
        match self {
            Core::Delta(c) => wrap(c.set_members(members, now_ms), Payload::Delta),
            Core::Backup(c) => wrap(c.set_members(members), Payload::Backup),
        }
    }

    /// Backup: a request for a session held elsewhere (or only as a backup here). Returns what to
    /// send, and whether to wait for the session to arrive.
    pub fn acquire(&mut self, id: &SessionId) -> (Vec<POut>, bool) {
        match self {
            Core::Delta(_) => (Vec::new(), false),
            Core::Backup(c) if c.is_primary(id) => (Vec::new(), false),
            Core::Backup(c) => {
                let outs = wrap(c.fetch(id), Payload::Backup);
                let wait = !outs.is_empty();
                (outs, wait)
            }
        }
    }

    /// Backup: the member serving `id` now, if a request that began here on the session can
    /// no longer end here (see `BackupCore::served_elsewhere`).
    pub fn served_elsewhere(&self, id: &SessionId) -> Option<MemberId> {
        match self {
            Core::Backup(c) => c.served_elsewhere(id),
            Core::Delta(_) => None,
        }
    }

    pub fn is_fetching(&self, id: &SessionId) -> bool {
        matches!(self, Core::Backup(c) if c.is_fetching(id))
    }

    /// Backup: why a request for `id` did not ask the other members (for the log).
    pub fn not_fetched(&self, id: &SessionId) -> Option<&'static str> {
        match self {
            Core::Backup(c) => c.not_fetched(id),
            Core::Delta(_) => None,
        }
    }

    /// Backup: gives up waiting for answers; serves the best copy there is, if any.
    pub fn end_fetch(&mut self, id: &SessionId) -> Vec<POut> {
        match self {
            Core::Backup(c) => wrap(c.end_fetch(id), Payload::Backup),
            Core::Delta(_) => Vec::new(),
        }
    }
}
