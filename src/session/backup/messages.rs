//! What BackupManagers say to each other, and the claim each message about a session carries.

use crate::member::MemberId;
use crate::session::id::SessionId;
use crate::session::model::{DeltaOp, SessionState};
use crate::session::outputs;
use crate::session::reconcile::Stamp;
use serde::{Deserialize, Serialize};

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
    /// before while it moves. `version`: the newest copy the sender retires (its own, or one
    /// it was handed and refused; `u64::MAX`: any). A holder of a newer copy that it handed
    /// on to the sender (`Orphan`) keeps it until the sender answers: a hand-over that ended
    /// before the `Orphan` arrived must not retire the only copy of an acknowledged change.
    Drop {
        id: SessionId,
        epoch: u64,
        version: u64,
    },
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
            | BackupMessage::Drop { id, epoch, .. }
            | BackupMessage::Expired { id, epoch, .. }
            | BackupMessage::NewPrimary { id, epoch, .. } => Some((id, *epoch)),
            BackupMessage::ChangeId { old, epoch, .. } => Some((old, *epoch)),
            _ => None,
        }
    }
}

/// A message to send.
pub type Out = outputs::Out<BackupMessage>;
