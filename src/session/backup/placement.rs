//! Rendezvous placement: a session's backups are the members (other than its primary) with the
//! highest score hash(session id, member id). Any member computes it alone, and a member that
//! comes or goes moves only the sessions it scores among the highest for.

use super::BackupCore;
use crate::member::MemberId;
use crate::session::id::SessionId;

/// A stable 64-bit hash (FNV-1a, then a finaliser to spread the bits): every member computes
/// the same placement, whatever its build.
fn score(id: &SessionId, m: &MemberId) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.as_str().bytes().chain(m.0.iter().copied()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

/// The backups of session `id` whose primary is `primary`: the `k` other members with the
/// highest score, best first.
pub fn placement(
    id: &SessionId,
    primary: MemberId,
    members: &[MemberId],
    k: usize,
) -> Vec<MemberId> {
    let mut c: Vec<(u64, MemberId)> = members
        .iter()
        .filter(|m| **m != primary)
        .map(|m| (score(id, m), *m))
        .collect();
    c.sort_by(|a, b| b.cmp(a));
    c.dedup_by_key(|x| x.1);
    c.into_iter().take(k).map(|(_, m)| m).collect()
}

impl BackupCore {
    /// The backups of `id` if this node serves it, under the current member list.
    pub(super) fn place(&self, id: &SessionId) -> Vec<MemberId> {
        placement(id, self.local, &self.members, self.cfg.backups)
    }
}
