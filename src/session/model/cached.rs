//! A session's state with its content fingerprint kept beside it. The fingerprint
//! ([`fingerprint`]) is read several times per replicated change (the DELTA names it, the
//! replica checks its result, ACCESSED, change of id and digests name it), and on a session of
//! a few KiB it costs more than the rest of a change's handling: it is computed at most once
//! per content. The fields are private to this module and it derefs only to `&SessionState`,
//! so the content can only be changed through [`Fingerprinted::content_mut`], which forgets the
//! fingerprint; the id, version and access time, which it does not cover, have setters of
//! their own.

use super::super::id::SessionId;
use super::super::reconcile::fingerprint;
use super::SessionState;
use std::ops::Deref;
use std::sync::OnceLock;

#[derive(Clone, Debug)]
pub(super) struct Fingerprinted {
    state: SessionState,
    /// `fingerprint(&state)`, once asked for; emptied whenever the content may change.
    fp: OnceLock<u64>,
}

impl Fingerprinted {
    pub(super) fn new(state: SessionState) -> Fingerprinted {
        Fingerprinted {
            state,
            fp: OnceLock::new(),
        }
    }

    /// The content fingerprint of the state, computed on the first call after a change.
    pub(super) fn fingerprint(&self) -> u64 {
        let fp = *self.fp.get_or_init(|| fingerprint(&self.state));
        debug_assert_eq!(fp, fingerprint(&self.state), "stale content fingerprint");
        fp
    }

    /// The state, to change its content (attributes, principal, auth type, max inactive):
    /// forgets the fingerprint.
    pub(super) fn content_mut(&mut self) -> &mut SessionState {
        self.fp.take();
        &mut self.state
    }

    /// Sets the version (not part of the fingerprint).
    pub(super) fn set_version(&mut self, version: u64) {
        self.state.version = version;
    }

    /// Sets the last access time (not part of the fingerprint).
    pub(super) fn set_last_accessed_ms(&mut self, ms: u64) {
        self.state.last_accessed_ms = ms;
    }

    /// Replaces the id (not part of the fingerprint), returning the old one.
    pub(super) fn replace_id(&mut self, id: SessionId) -> SessionId {
        std::mem::replace(&mut self.state.id, id)
    }
}

impl Deref for Fingerprinted {
    type Target = SessionState;

    fn deref(&self) -> &SessionState {
        &self.state
    }
}
