//! Members of the group: who they are and how to reach them (Tribes' `Member`, `MemberImpl`).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

/// A member's unique id: 16 bytes, like Tribes' `uniqueId`. Random unless configured.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MemberId(pub [u8; 16]);

impl MemberId {
    /// A fresh id. Uniqueness, not secrecy, is what matters: std's randomly keyed hasher mixed
    /// with the clock and the process id is plenty for that.
    pub fn random() -> MemberId {
        let mut out = [0u8; 16];
        for (i, chunk) in out.chunks_mut(8).enumerate() {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
            );
            h.write_u32(std::process::id());
            h.write_usize(i);
            chunk.copy_from_slice(&h.finish().to_le_bytes());
        }
        MemberId(out)
    }
}

/// The members of `these` not in `sorted` (a sorted list, as views keep them): who joined
/// between two views, or who left.
pub(crate) fn not_in<'a>(
    these: &'a [MemberId],
    sorted: &'a [MemberId],
) -> impl Iterator<Item = MemberId> + 'a {
    these
        .iter()
        .filter(|m| sorted.binary_search(m).is_err())
        .copied()
}

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MemberId({self})")
    }
}

/// A member of the group as the others see it: its id, a name (the jvmRoute in a Tomcat
/// cluster), the address of its receiver and its domain.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Member {
    /// Its unique id (Tomcat's `uniqueId`).
    pub id: MemberId,
    /// Its name (the jvmRoute of its cluster).
    pub name: String,
    /// Where its receiver listens: what others connect to.
    pub addr: SocketAddr,
    /// Membership domain (Tribes' `domain`); empty for none.
    pub domain: String,
}

impl fmt::Display for Member {
    /// `tcp://127.0.0.1:4000 name=server1 id=…`, close to Tribes' `MemberImpl` rendering.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tcp://{} name={} id={}", self.addr, self.name, self.id)?;
        if !self.domain.is_empty() {
            write!(f, " domain={}", self.domain)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Member[{self}]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_ids_differ() {
        let a = MemberId::random();
        let b = MemberId::random();
        assert_ne!(a, b);
        assert_eq!(a.to_string().len(), 32);
    }
}
