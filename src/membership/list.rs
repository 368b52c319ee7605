//! The member list (Tribes' `Membership`): pure bookkeeping, events decided by the caller.

use crate::member::{Member, MemberId};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Current members other than this node, by id.
#[derive(Default)]
pub struct Membership {
    members: BTreeMap<MemberId, Member>,
    snapshot: Arc<[Member]>,
}

/// What a change did to the list.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    Added(Member),
    /// A known member came back with a new address or name: the old record is replaced.
    Updated(Member),
    Unchanged,
}

impl Membership {
    /// Records that `m` is present.
    pub fn seen(&mut self, m: &Member) -> Change {
        let change = match self.members.get(&m.id) {
            None => Change::Added(m.clone()),
            Some(old) if old != m => Change::Updated(m.clone()),
            Some(_) => return Change::Unchanged,
        };
        self.members.insert(m.id, m.clone());
        self.refresh();
        change
    }

    /// Removes a member; returns its record if it was present.
    pub fn remove(&mut self, id: &MemberId) -> Option<Member> {
        let m = self.members.remove(id);
        if m.is_some() {
            self.refresh();
        }
        m
    }

    /// The members, cheap to clone: sends to "everyone" share it instead of copying the list.
    pub fn snapshot(&self) -> Arc<[Member]> {
        self.snapshot.clone()
    }

    fn refresh(&mut self) {
        self.snapshot = self.members.values().cloned().collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(n: u8, port: u16) -> Member {
        Member {
            id: MemberId([n; 16]),
            name: format!("n{n}"),
            addr: ([127, 0, 0, 1], port).into(),
            domain: String::new(),
        }
    }

    #[test]
    fn add_update_remove() {
        let mut ms = Membership::default();
        assert_eq!(ms.seen(&m(1, 10)), Change::Added(m(1, 10)));
        assert_eq!(ms.seen(&m(1, 10)), Change::Unchanged);
        assert_eq!(ms.seen(&m(1, 11)), Change::Updated(m(1, 11)));
        assert_eq!(ms.snapshot().len(), 1);
        assert!(ms.remove(&MemberId([1; 16])).is_some());
        assert!(ms.remove(&MemberId([1; 16])).is_none());
        assert!(ms.snapshot().is_empty());
    }
}
