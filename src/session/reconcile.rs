//! What happens when two copies of one session meet after the members holding them lost each
//! other (a network partition) and meet again. Tomcat does nothing here: the last message to
//! arrive wins, whichever side it comes from. Here one deterministic rule, the same on every
//! member and for both managers, decides; the application may decide instead
//! ([`SessionMerger`]).
//!
//! The rule, per session:
//! - Two live copies: the one with the **higher version** wins (it has seen more changes). At
//!   equal versions with different contents, the one with the higher content fingerprint wins
//!   (an arbitrary but stable choice every member makes alike). The last access time is the
//!   later of the two, the creation time the earlier.
//! - A live copy and an end (invalidated or expired on the other side): the end counts as a copy
//!   at the version the session had when it ended. The live copy wins if its version is higher
//!   (it was changed after, or apart from, what was ended); at equal versions the end wins.
//!   Versions, unlike access times, are the same on every member of a side, so every member
//!   decides alike. (A session only read on one side while it expired on the other ends.)
//! - A session that exists on one side only is kept.
//!
//! With a [`SessionMerger`] the application builds the surviving copy from both; the rule's
//! winner is passed first. Every member that meets the two copies calls it, so it must be a
//! deterministic function of its inputs, and idempotent (merging the result with either input
//! again gives the result): a member may meet the same copy from more than one member.

use super::model::{Session, SessionState};
use std::cmp::Ordering;

/// The application's say on two diverged copies of one session (set with
/// `SimpleTcpCluster::set_session_merger` or `ClusterManager::set_merger`).
pub trait SessionMerger: Send + Sync {
    /// The surviving contents (attributes, principal, max inactive interval) of a session whose
    /// copies diverged. `preferred` is the copy the default rule picks; returning it unchanged
    /// keeps the rule's choice. The id, times and version of the result are set by the manager.
    fn merge(&self, preferred: &SessionState, other: &SessionState) -> SessionState;
}

/// A stable 64-bit fingerprint of what a request can change in a session (attributes,
/// principal, max inactive interval), not of its id, times or version: FNV-1a (on 8-byte words) over a canonical
/// encoding, the same on every member and build.
pub fn fingerprint(s: &SessionState) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    // FNV-1a's step on 8-byte words instead of bytes: it runs on every replicated change, over
    // every attribute, and a byte at a time it was half of a replica's work (1 KiB sessions).
    // Each step is a bijection of `h`, so two contents that differ in one word always differ.
    let mut eat = |bytes: &[u8]| {
        // Length first, so ("ab","c") and ("a","bc") differ (and the zero padding below too).
        h = (h ^ bytes.len() as u64).wrapping_mul(PRIME);
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            h = (h ^ u64::from_le_bytes(b)).wrapping_mul(PRIME);
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 8];
            b[..rest.len()].copy_from_slice(rest);
            h = (h ^ u64::from_le_bytes(b)).wrapping_mul(PRIME);
        }
    };
    for (k, v) in s.attributes.raw() {
        eat(k);
        eat(v);
    }
    for opt in [&s.principal, &s.auth_type] {
        match opt {
            Some(p) => eat(p.as_bytes()),
            None => eat(&[0xff; 9]),
        }
    }
    eat(&s.max_inactive_ms.to_le_bytes());
    // Spread the high bits down: the rule compares fingerprints as numbers.
    (h ^ (h >> 29)).wrapping_mul(PRIME) ^ (h >> 32)
}

/// What a digest says about one session: enough to tell whether two copies differ and which
/// one the rule prefers, without sending the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stamp {
    /// The session's version.
    pub version: u64,
    /// A fingerprint of its contents (FNV-1a over attributes, principal, auth type, max inactive).
    pub fingerprint: u64,
    /// When it was last used, in ms since the epoch.
    pub last_accessed_ms: u64,
}

impl Stamp {
    /// The stamp of a session's state.
    pub fn of(s: &SessionState) -> Stamp {
        Stamp {
            version: s.version,
            fingerprint: fingerprint(s),
            last_accessed_ms: s.last_accessed_ms,
        }
    }

    /// The stamp of a live session's state, with the fingerprint it keeps.
    pub(crate) fn of_session(s: &Session) -> Stamp {
        Stamp {
            version: s.version(),
            fingerprint: s.fingerprint(),
            last_accessed_ms: s.last_accessed_ms(),
        }
    }

    /// Same contents at the same version (access times aside).
    pub fn same_contents(&self, o: &Stamp) -> bool {
        (self.version, self.fingerprint) == (o.version, o.fingerprint)
    }

    /// The rule's order between two live copies: `Greater` if `self` wins.
    pub fn rank(&self, o: &Stamp) -> Ordering {
        (self.version, self.fingerprint).cmp(&(o.version, o.fingerprint))
    }
}

/// Whether a live copy at `version` wins over an end of the session at `ended_version`.
pub fn live_beats_end(version: u64, ended_version: u64) -> bool {
    version > ended_version
}

/// The copy a member keeps when its live copy `local` meets `remote`: `None` if `local` stays
/// as it is, otherwise the new state (under `local`'s id).
pub fn reconcile(
    local: &SessionState,
    remote: &SessionState,
    merger: Option<&dyn SessionMerger>,
) -> Option<SessionState> {
    let (ls, rs) = (Stamp::of(local), Stamp::of(remote));
    let local_wins = ls.rank(&rs) != Ordering::Less;
    let (preferred, other) = if local_wins {
        (local, remote)
    } else {
        (remote, local)
    };
    let mut out = match merger {
        Some(m) if !ls.same_contents(&rs) => {
            let merged = m.merge(preferred, other);
            let mut out = preferred.clone();
            if fingerprint(&merged) != fingerprint(preferred) {
                // A new content: a version above both, which every member computes alike.
                out.attributes = merged.attributes;
                out.principal = merged.principal;
                out.auth_type = merged.auth_type;
                out.max_inactive_ms = merged.max_inactive_ms;
                out.version = local.version.max(remote.version).saturating_add(1);
            }
            out
        }
        _ => preferred.clone(),
    };
    out.id = local.id.clone();
    out.last_accessed_ms = local.last_accessed_ms.max(remote.last_accessed_ms);
    out.creation_ms = local.creation_ms.min(remote.creation_ms);
    (out != *local).then_some(out)
}

/// Mergers for tests and simulations.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// An application's merge: both copies' attributes, the preferred copy's value on a clash.
    pub(crate) struct UnionMerger;

    impl SessionMerger for UnionMerger {
        fn merge(&self, preferred: &SessionState, other: &SessionState) -> SessionState {
            let mut out = preferred.clone();
            for (k, v) in &other.attributes {
                if !out.attributes.contains_key(k) {
                    out.attributes.insert(k, v);
                }
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::SessionId;
    use std::collections::BTreeMap;

    fn state(id: &SessionId, version: u64, attrs: &[(&str, u8)], accessed: u64) -> SessionState {
        SessionState {
            id: id.clone(),
            attributes: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), vec![*v]))
                .collect::<BTreeMap<_, _>>()
                .into(),
            creation_ms: 10,
            last_accessed_ms: accessed,
            max_inactive_ms: 1_800_000,
            principal: None,
            auth_type: None,
            version,
        }
    }

    use super::test_support::UnionMerger as Union;

    #[test]
    fn the_higher_version_wins_and_ties_go_the_same_way_from_both_sides() {
        let id = SessionId::generate("n").unwrap();
        let a = state(&id, 7, &[("x", 1)], 100);
        let b = state(&id, 6, &[("y", 2)], 200);
        let kept_by_b = reconcile(&b, &a, None).unwrap();
        assert_eq!(kept_by_b.attributes, a.attributes);
        assert_eq!(kept_by_b.last_accessed_ms, 200, "the later access is kept");
        assert_eq!(reconcile(&a, &b, None).unwrap().attributes, a.attributes);
        // Equal versions, different contents: both sides pick the same one.
        let c = state(&id, 7, &[("z", 3)], 100);
        let from_a = reconcile(&a, &c, None).unwrap_or_else(|| a.clone());
        let from_c = reconcile(&c, &a, None).unwrap_or_else(|| c.clone());
        assert_eq!(from_a, from_c);
        // Same contents: nothing changes.
        assert_eq!(reconcile(&a, &a.clone(), None), None);
    }

    #[test]
    fn a_merger_builds_one_result_whichever_side_calls_it_and_is_not_called_again() {
        let id = SessionId::generate("n").unwrap();
        let a = state(&id, 7, &[("x", 1)], 100);
        let b = state(&id, 6, &[("y", 2)], 200);
        let on_a = reconcile(&a, &b, Some(&Union)).unwrap();
        let on_b = reconcile(&b, &a, Some(&Union)).unwrap();
        assert_eq!(on_a, on_b);
        assert_eq!(on_a.version, 8);
        assert_eq!(on_a.attributes.len(), 2);
        // Meeting either input again changes nothing (idempotent).
        assert_eq!(reconcile(&on_a, &a, Some(&Union)), None);
        assert_eq!(reconcile(&on_a, &b, Some(&Union)), None);
    }

    /// A merged copy's version is one above both: a copy at u64::MAX (from the network)
    /// overflowed it.
    #[test]
    fn merging_a_copy_at_the_highest_version_does_not_overflow() {
        let id = SessionId::generate("n").unwrap();
        let a = state(&id, u64::MAX, &[("x", 1)], 100);
        let b = state(&id, 6, &[("y", 2)], 200);
        let merged = reconcile(&b, &a, Some(&Union)).unwrap();
        assert_eq!((merged.version, merged.attributes.len()), (u64::MAX, 2));
    }

    #[test]
    fn fingerprints_see_every_field_a_request_changes() {
        let id = SessionId::generate("n").unwrap();
        let a = state(&id, 1, &[("ab", 1)], 0);
        let mut b = a.clone();
        b.principal = Some("ann".into());
        let mut c = a.clone();
        c.max_inactive_ms = 1;
        let d = state(&id, 9, &[("ab", 1)], 77);
        assert_ne!(fingerprint(&a), fingerprint(&b));
        assert_ne!(fingerprint(&a), fingerprint(&c));
        assert_eq!(
            fingerprint(&a),
            fingerprint(&d),
            "times and version do not count"
        );
        assert!(live_beats_end(101, 100) && !live_beats_end(100, 100));
    }
}
