//! Restart detection: the incarnation each member last shook hands with. A member killed and
//! restarted under the same id faster than the failure detector notices comes back with a new
//! incarnation and nothing in memory; the member list must report it gone and back so that the
//! session managers copy to it again. Pure: the channel (and the simulation) feed it the
//! incarnations handshakes reveal, either way round.

use crate::member::MemberId;
use std::collections::HashMap;

/// Members whose incarnation is remembered; past it the table starts afresh rather than grow
/// (anyone reaching an unkeyed receiver can claim ids).
pub const MAX_INCARNATIONS: usize = 4096;

/// The incarnation each member last shook hands with.
#[derive(Default)]
pub struct Incarnations {
    known: HashMap<MemberId, u64>,
}

impl Incarnations {
    /// Notes that `member` shook hands with `incarnation`; returns whether that reveals a
    /// restart (a changed incarnation, neither being 0, which means "unknown").
    pub fn note(&mut self, member: MemberId, incarnation: u64) -> bool {
        if self.known.len() >= MAX_INCARNATIONS && !self.known.contains_key(&member) {
            self.known.clear();
        }
        let before = self.known.insert(member, incarnation);
        before.is_some_and(|b| b != incarnation && b != 0 && incarnation != 0)
    }

    /// The member left the list: its next incarnation is a new member, not a restart (a
    /// restart noticed as a disappearance first must not be reported gone and back again).
    pub fn forget(&mut self, member: &MemberId) {
        self.known.remove(member);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(i: u8) -> MemberId {
        MemberId([i; 16])
    }

    #[test]
    fn a_new_incarnation_is_a_restart_the_same_one_and_unknown_ones_are_not() {
        let mut t = Incarnations::default();
        assert!(!t.note(m(1), 7), "first sight");
        assert!(!t.note(m(1), 7), "the same incarnation again");
        assert!(t.note(m(1), 8), "a new one: restarted");
        assert!(!t.note(m(1), 0), "unknown says nothing");
        assert!(!t.note(m(1), 9), "after unknown, nothing to compare");
        assert!(!t.note(m(2), 8), "another member");
    }

    #[test]
    fn the_table_is_bounded() {
        let mut t = Incarnations::default();
        for i in 0..(MAX_INCARNATIONS as u64 + 10) {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&i.to_le_bytes());
            t.note(MemberId(id), 1);
        }
        assert!(t.known.len() <= MAX_INCARNATIONS);
    }
}
