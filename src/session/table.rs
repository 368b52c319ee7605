//! The sessions of a store, by id: a hash table of boxed sessions found by the id inside each
//! session. A `HashMap<SessionId, Session>` held every id twice (the key and the session's own)
//! and a slot of about 200 bytes per bucket, a third to a half of them empty; here a bucket is
//! one pointer and a control byte (docs/PERFORMANCE.md, "Footprint of one node").

use super::id::SessionId;
use super::model::Session;
use hashbrown::hash_table::{Entry, HashTable};
use std::hash::{BuildHasher, RandomState};

/// Sessions by id. A session's id must not change while it is in the table: a rename removes
/// it and inserts it again ([`super::replica::ReplicaStore::rename`]).
pub(crate) struct SessionTable {
    table: HashTable<Box<Session>>,
    /// SipHash with random keys, as `HashMap`'s: ids come from the network.
    hasher: RandomState,
}

/// Below this many buckets the table is not shrunk after removals.
const MIN_SHRINK_CAPACITY: usize = 1024;

impl SessionTable {
    pub(crate) fn new() -> SessionTable {
        SessionTable {
            table: HashTable::new(),
            hasher: RandomState::new(),
        }
    }

    fn hash(&self, id: &SessionId) -> u64 {
        self.hasher.hash_one(id)
    }

    pub(crate) fn get(&self, id: &SessionId) -> Option<&Session> {
        self.table
            .find(self.hash(id), |s| s.id() == id)
            .map(|s| &**s)
    }

    /// The session, to change it (not its id).
    pub(crate) fn get_mut(&mut self, id: &SessionId) -> Option<&mut Session> {
        let hash = self.hash(id);
        self.table
            .find_mut(hash, |s| s.id() == id)
            .map(|s| &mut **s)
    }

    pub(crate) fn contains_key(&self, id: &SessionId) -> bool {
        self.get(id).is_some()
    }

    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    /// Puts `s` under its id; returns the session it replaces, if any.
    pub(crate) fn insert(&mut self, s: Session) -> Option<Session> {
        let hasher = &self.hasher;
        let hash = hasher.hash_one(s.id());
        match self
            .table
            .entry(hash, |x| x.id() == s.id(), |x| hasher.hash_one(x.id()))
        {
            Entry::Occupied(mut o) => Some(std::mem::replace(&mut **o.get_mut(), s)),
            Entry::Vacant(v) => {
                v.insert(Box::new(s));
                None
            }
        }
    }

    /// Takes the session out; the table shrinks once it is a quarter full (a flood of
    /// sessions that expired does not keep its buckets).
    pub(crate) fn remove(&mut self, id: &SessionId) -> Option<Session> {
        let hash = self.hash(id);
        let (s, _) = self.table.find_entry(hash, |s| s.id() == id).ok()?.remove();
        let capacity = self.table.capacity();
        if capacity > MIN_SHRINK_CAPACITY && self.table.len() < capacity / 4 {
            let hasher = &self.hasher;
            self.table
                .shrink_to(self.table.len() * 2, |x| hasher.hash_one(x.id()));
        }
        Some(*s)
    }

    /// Every session, in no particular order.
    pub(crate) fn values(&self) -> impl Iterator<Item = &Session> {
        self.table.iter().map(|s| &**s)
    }

    /// Every session, mutable, in no particular order.
    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut Session> {
        self.table.iter_mut().map(|s| &mut **s)
    }

    /// Every id, in no particular order.
    pub(crate) fn ids(&self) -> impl Iterator<Item = &SessionId> {
        self.values().map(Session::id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn session(route: &str) -> Session {
        Session::new(
            SessionId::generate(route).unwrap(),
            0,
            Duration::from_secs(60),
        )
    }

    #[test]
    fn finds_replaces_and_removes_by_the_id_inside_the_session() {
        let mut t = SessionTable::new();
        let a = session("a");
        let id = a.id().clone();
        assert!(t.insert(a).is_none());
        assert!(t.contains_key(&id));
        let mut b = Session::from_state(t.get(&id).unwrap().state().clone());
        b.set("k", &1u8).unwrap();
        let old = t.insert(b).expect("replaced");
        assert_eq!(old.get::<u8>("k").unwrap(), None);
        assert_eq!(t.get(&id).unwrap().get::<u8>("k").unwrap(), Some(1));
        t.get_mut(&id).unwrap().set("k", &2u8).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t.remove(&id).unwrap().get::<u8>("k").unwrap(), Some(2));
        assert!(t.remove(&id).is_none());
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn shrinks_after_most_sessions_left_and_keeps_the_others() {
        let mut t = SessionTable::new();
        let ids: Vec<SessionId> = (0..20_000)
            .map(|_| {
                let s = session("n");
                let id = s.id().clone();
                t.insert(s);
                id
            })
            .collect();
        let full = t.table.capacity();
        for id in &ids[100..] {
            assert!(t.remove(id).is_some());
        }
        assert!(
            t.table.capacity() < full / 8,
            "{} of {full}",
            t.table.capacity()
        );
        assert_eq!(t.len(), 100);
        assert!(ids[..100].iter().all(|id| t.contains_key(id)));
        let mut seen: Vec<&SessionId> = t.ids().collect();
        seen.sort_unstable();
        let mut want: Vec<&SessionId> = ids[..100].iter().collect();
        want.sort_unstable();
        assert_eq!(seen, want);
    }
}
