//! What a manager core hands its shell, whichever manager it is (DeltaManager or
//! BackupManager): messages with their destinations, and the events the application's session
//! listeners hear. Kept apart from both managers so neither depends on the other.

use super::id::SessionId;
use super::model::{DeltaOp, Session};
use super::replica::SessionMessage;
use crate::member::MemberId;

/// Where a message goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dest {
    All,
    Member(MemberId),
}

/// A message to send (a `SessionMessage` for the DeltaManager).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Out<M = SessionMessage> {
    pub dest: Dest,
    pub msg: M,
}

/// What the application's listeners hear (when `notify_listeners_on_replication` allows it for
/// replicated changes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionEvent {
    /// A session was created (here, or on another member and replicated here).
    Created(SessionId),
    /// A session ended: invalidated, expired, or ended elsewhere.
    Destroyed(SessionId),
    /// A session was given a new id (a change of id at login, or a rebound route).
    IdChanged {
        /// The id it had.
        old: SessionId,
        /// The id it has now.
        new: SessionId,
    },
    /// An attribute was added, replaced or removed by a change from another member.
    Attribute {
        /// The session.
        id: SessionId,
        /// The attribute's name.
        name: String,
        /// What happened to it.
        change: AttributeChange,
    },
}

/// What happened to an attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttributeChange {
    /// It was not there before.
    Added,
    /// It had another value.
    Replaced,
    /// It was removed.
    Removed,
}

/// Attribute events of `ops`, decided against `session` before they apply to it.
pub(crate) fn attribute_events(session: &Session, ops: &[DeltaOp]) -> Vec<SessionEvent> {
    let had = |n: &str| session.state().attributes.contains_key(n);
    ops.iter()
        .filter_map(|op| {
            let (name, change) = match op {
                DeltaOp::SetAttribute(n, _) if had(n) => (n, AttributeChange::Replaced),
                DeltaOp::SetAttribute(n, _) => (n, AttributeChange::Added),
                DeltaOp::RemoveAttribute(n) if had(n) => (n, AttributeChange::Removed),
                _ => return None,
            };
            Some(SessionEvent::Attribute {
                id: session.id().clone(),
                name: name.clone(),
                change,
            })
        })
        .collect()
}
