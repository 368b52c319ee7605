//! Ended sessions whose live copies held by some members must not bring them back
//! (`DeltaCore::merge`, and the digest's verdict): such a copy is above the end only by
//! changes never acknowledged, or was made before its holder had the end.
//!
//! A member goes in for one session when:
//! - its change to the session was refused here, the session having ended here (seed 379 of
//!   the kill -9 simulation: the member went on from a copy without the end);
//! - this node ended the session and told every member (a logout, or its expiry where it was
//!   served last), and the member was one of them (seed 366 with route rebinding: a copy
//!   asked for before the logout came after it). Each of them ends its own copy when the end
//!   arrives, so a copy of theirs taken here over the end would live on here alone.
//!
//! A member that leaves goes out of every entry: it may come back from a partition whose
//! changes were acknowledged without this node, and its copies then win over an end by
//! version again (the rule of [`crate::session::reconcile`]).

use crate::member::MemberId;
use crate::session::id::SessionId;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Sessions remembered, at most: the oldest entry goes first. An entry is an id and the
/// members refused (about 100 bytes plus 16 per member), so about 2 MB at most with ten
/// members.
const MAX_REFUSED: usize = 10_000;

/// The members whose copies of an ended session do not bring it back here.
#[derive(Default)]
pub(super) struct Refusals {
    by_id: BTreeMap<SessionId, BTreeSet<MemberId>>,
    /// The ids of `by_id`, oldest first (each once): a logout per request fills the bound,
    /// and evicting by id order would drop the newest entries as often as the oldest, while
    /// the copies they stop are those in flight at the end.
    order: VecDeque<SessionId>,
}

impl Refusals {
    /// `members`' copies of `id` no longer bring it back here (until they leave).
    pub(super) fn add(&mut self, id: &SessionId, members: impl IntoIterator<Item = MemberId>) {
        let mut members = members.into_iter().peekable();
        if members.peek().is_none() {
            return;
        }
        if !self.by_id.contains_key(id) {
            if self.by_id.len() >= MAX_REFUSED {
                if let Some(old) = self.order.pop_front() {
                    self.by_id.remove(&old);
                }
            }
            self.order.push_back(id.clone());
        }
        self.by_id.entry(id.clone()).or_default().extend(members);
    }

    /// Whether `from`'s copy of the ended session `id` stays out.
    pub(super) fn refuses(&self, id: &SessionId, from: MemberId) -> bool {
        self.by_id.get(id).is_some_and(|by| by.contains(&from))
    }

    /// The members in `gone` left: their copies win over an end by version again.
    pub(super) fn forget_members(&mut self, gone: &BTreeSet<MemberId>) {
        if gone.is_empty() {
            return;
        }
        self.by_id.retain(|_, by| {
            by.retain(|m| !gone.contains(m));
            !by.is_empty()
        });
        let by_id = &self.by_id;
        self.order.retain(|id| by_id.contains_key(id));
    }

    /// Entries held and the length of their order (both bounded by `MAX_REFUSED`).
    #[cfg(test)]
    pub(super) fn load(&self) -> (usize, usize) {
        (self.by_id.len(), self.order.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> SessionId {
        SessionId::parse(&format!("{n:032X}.a")).unwrap()
    }

    #[test]
    fn the_oldest_entry_goes_first_whatever_its_id() {
        let mut r = Refusals::default();
        let m = MemberId([1; 16]);
        // Descending ids: evicting by id order would drop the newest entry each time.
        for n in (0..=MAX_REFUSED as u32).rev() {
            r.add(&id(n), [m]);
        }
        assert_eq!(r.load(), (MAX_REFUSED, MAX_REFUSED));
        assert!(!r.refuses(&id(MAX_REFUSED as u32), m), "the oldest went");
        assert!(r.refuses(&id(0), m), "the newest stays");
    }

    #[test]
    fn a_member_that_leaves_is_refused_no_more() {
        let mut r = Refusals::default();
        let (a, b) = (MemberId([1; 16]), MemberId([2; 16]));
        r.add(&id(1), [a, b]);
        r.add(&id(2), [a]);
        r.add(&id(3), []);
        r.forget_members(&BTreeSet::from([a]));
        assert!(!r.refuses(&id(1), a) && r.refuses(&id(1), b));
        assert!(!r.refuses(&id(2), a));
        assert_eq!(r.load(), (1, 1));
        // Back, it is an entry again, once in the order.
        r.add(&id(2), [a]);
        assert_eq!(r.load(), (2, 2));
    }
}
