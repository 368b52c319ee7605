//! The membership decisions, pure: the failure detector of Tribes' `TcpFailureDetector` over
//! the liveness signals of `McastService` (heartbeats), `TcpPingInterceptor` and static members
//! (pings), with `now` passed in.
//!
//! A member is *present* from the first time it is heard (a heartbeat, a successful ping or
//! probe, a connection it opened to us). It is *suspected* when it has not been heard for its
//! expiry time (multicast `drop_time`, static `expiration_time`) or when a send to it failed.
//! With verification on, a suspect is checked over TCP (connect + handshake on its data port)
//! before it is declared gone; one that answers stays (`Verification complete. Member still
//! alive`). A member that says it leaves is gone at once.

use crate::member::{Member, MemberId};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How a member was found, which decides how long silence is tolerated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Multicast heartbeats: gone after `drop_time` of silence.
    Multicast,
    /// Listed in the config, or connected to us: gone after `expiration_time` without a ping.
    Direct,
}

/// What the shell must do or announce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Added(Member),
    /// Check the member over TCP and report with [`MembershipState::verified`].
    Verify(Member),
    /// A suspect answered: it stays.
    StillAlive(Member),
    /// Gone, with the reason for the log line.
    Disappeared(Member, String),
}

/// Timing and policy of the detector.
#[derive(Clone, Debug)]
pub struct DetectorConfig {
    pub drop_time: Duration,
    pub expiration_time: Duration,
    /// Verify suspects over TCP before dropping them (TcpFailureDetector); else drop at once.
    pub verify: bool,
    /// Members of another domain are ignored (empty: accept any).
    pub domain: String,
    /// After a member leaves, what is heard of it for this long is ignored: a heartbeat sent
    /// just before its leave datagram may arrive after it, and a ping may complete while it
    /// stops. (Tribes re-adds it.) A member restarting with the same id rejoins after this.
    pub leave_grace: Duration,
}

struct Entry {
    member: Member,
    source: Source,
    last_heard: Instant,
    verifying: bool,
}

/// The members this node believes present, and the timers that question them.
pub struct MembershipState {
    cfg: DetectorConfig,
    local: MemberId,
    members: BTreeMap<MemberId, Entry>,
    /// Members that left, and when; forgotten after `leave_grace`.
    left: BTreeMap<MemberId, Instant>,
}

impl MembershipState {
    pub fn new(cfg: DetectorConfig, local: MemberId) -> MembershipState {
        MembershipState {
            cfg,
            local,
            members: BTreeMap::new(),
            left: BTreeMap::new(),
        }
    }

    #[cfg(test)]
    pub fn is_present(&self, id: &MemberId) -> bool {
        self.members.contains_key(id)
    }

    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values().map(|e| &e.member)
    }

    /// The member was heard from (heartbeat, ping answer, handshake). Refreshes its timer, and
    /// settles a suspicion: a member that speaks is alive.
    pub fn heard(&mut self, m: &Member, source: Source, now: Instant) -> Option<Action> {
        if m.id == self.local || (!self.cfg.domain.is_empty() && m.domain != self.cfg.domain) {
            return None;
        }
        if let Some(&t) = self.left.get(&m.id) {
            if now.saturating_duration_since(t) < self.cfg.leave_grace {
                return None; // an echo of a member that has just left
            }
            self.left.remove(&m.id);
        }
        match self.members.get_mut(&m.id) {
            Some(e) => {
                e.last_heard = e.last_heard.max(now);
                e.member = m.clone();
                // A multicast member stays judged by heartbeats even if it also connects.
                if source == Source::Multicast {
                    e.source = Source::Multicast;
                }
                let was_verifying = std::mem::take(&mut e.verifying);
                was_verifying.then(|| Action::StillAlive(m.clone()))
            }
            None => {
                let entry = Entry {
                    member: m.clone(),
                    source,
                    last_heard: now,
                    verifying: false,
                };
                self.members.insert(m.id, entry);
                Some(Action::Added(m.clone()))
            }
        }
    }

    /// The member restarted under the same id (a new incarnation shook hands): what it held
    /// is gone, so it leaves now and joins again with its next hello (no leave grace).
    pub fn restarted(&mut self, id: &MemberId) -> Option<Action> {
        self.members
            .remove(id)
            .map(|e| Action::Disappeared(e.member, "it restarted (a new incarnation)".into()))
    }

    /// The member said it leaves: gone at once, no verification, and deaf to its echoes for
    /// `leave_grace`.
    pub fn left(&mut self, id: &MemberId, now: Instant) -> Option<Action> {
        if *id != self.local {
            self.left.insert(*id, now);
        }
        self.members
            .remove(id)
            .map(|e| Action::Disappeared(e.member, "it left the group".into()))
    }

    /// A send to the member failed: suspect it now rather than at its expiry time.
    pub fn send_failed(&mut self, id: &MemberId, why: &str) -> Option<Action> {
        let e = self.members.get_mut(id)?;
        if e.verifying {
            return None;
        }
        if self.cfg.verify {
            e.verifying = true;
            return Some(Action::Verify(e.member.clone()));
        }
        let e = self.members.remove(id)?;
        Some(Action::Disappeared(e.member, format!("send failed: {why}")))
    }

    /// Expiry: members silent past their time are verified (or dropped without verification).
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        let grace = self.cfg.leave_grace;
        self.left
            .retain(|_, t| now.saturating_duration_since(*t) < grace);
        let mut out = Vec::new();
        let mut gone = Vec::new();
        for (id, e) in self.members.iter_mut() {
            let expiry = match e.source {
                Source::Multicast => self.cfg.drop_time,
                Source::Direct => self.cfg.expiration_time,
            };
            if e.verifying || now.saturating_duration_since(e.last_heard) <= expiry {
                continue;
            }
            if self.cfg.verify {
                e.verifying = true;
                out.push(Action::Verify(e.member.clone()));
            } else {
                gone.push(*id);
            }
        }
        for id in gone {
            if let Some(e) = self.members.remove(&id) {
                let why = format!("not heard for more than {} ms", self.expiry_ms(e.source));
                out.push(Action::Disappeared(e.member, why));
            }
        }
        out
    }

    fn expiry_ms(&self, s: Source) -> u128 {
        match s {
            Source::Multicast => self.cfg.drop_time.as_millis(),
            Source::Direct => self.cfg.expiration_time.as_millis(),
        }
    }

    /// The result of verifying a suspect: alive keeps it (and restarts its timer), dead drops it.
    pub fn verified(
        &mut self,
        id: &MemberId,
        alive: bool,
        why: &str,
        now: Instant,
    ) -> Option<Action> {
        let e = self.members.get_mut(id)?;
        if !e.verifying {
            return None; // settled meanwhile (heard from, or left)
        }
        e.verifying = false;
        if alive {
            e.last_heard = now;
            return Some(Action::StillAlive(e.member.clone()));
        }
        let e = self.members.remove(id)?;
        Some(Action::Disappeared(
            e.member,
            format!("verification failed: {why}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(n: u8) -> Member {
        Member {
            id: MemberId([n; 16]),
            name: format!("n{n}"),
            addr: ([127, 0, 0, 1], 4000 + n as u16).into(),
            domain: String::new(),
        }
    }

    fn state(verify: bool) -> MembershipState {
        let cfg = DetectorConfig {
            drop_time: Duration::from_millis(3000),
            expiration_time: Duration::from_millis(5000),
            verify,
            domain: String::new(),
            leave_grace: Duration::from_millis(1000),
        };
        MembershipState::new(cfg, MemberId([0; 16]))
    }

    #[test]
    fn silence_below_the_drop_time_keeps_a_member() {
        let t0 = Instant::now();
        let mut s = state(true);
        assert_eq!(
            s.heard(&m(1), Source::Multicast, t0),
            Some(Action::Added(m(1)))
        );
        assert!(s.tick(t0 + Duration::from_millis(2999)).is_empty());
        assert_eq!(
            s.tick(t0 + Duration::from_millis(3001)),
            vec![Action::Verify(m(1))]
        );
        // Verification is asked once, not at every tick.
        assert!(s.tick(t0 + Duration::from_millis(4000)).is_empty());
    }

    #[test]
    fn a_suspect_that_answers_stays_and_one_that_does_not_goes() {
        let t0 = Instant::now();
        let mut s = state(true);
        s.heard(&m(1), Source::Multicast, t0);
        s.heard(&m(2), Source::Direct, t0);
        let later = t0 + Duration::from_secs(6);
        assert_eq!(s.tick(later).len(), 2);
        assert_eq!(
            s.verified(&m(1).id, true, "", later),
            Some(Action::StillAlive(m(1)))
        );
        assert!(
            matches!(s.verified(&m(2).id, false, "refused", later), Some(Action::Disappeared(x, _)) if x == m(2))
        );
        assert!(s.is_present(&m(1).id) && !s.is_present(&m(2).id));
        // The survivor's timer restarted.
        assert!(s.tick(later + Duration::from_millis(2000)).is_empty());
    }

    #[test]
    fn send_failure_suspects_at_once_and_hearing_settles_it() {
        let t0 = Instant::now();
        let mut s = state(true);
        s.heard(&m(1), Source::Direct, t0);
        assert_eq!(s.send_failed(&m(1).id, "reset"), Some(Action::Verify(m(1))));
        assert_eq!(
            s.send_failed(&m(1).id, "reset"),
            None,
            "already being verified"
        );
        assert_eq!(
            s.heard(&m(1), Source::Direct, t0),
            Some(Action::StillAlive(m(1)))
        );
        assert_eq!(
            s.verified(&m(1).id, false, "late", t0),
            None,
            "settled before the result"
        );
    }

    #[test]
    fn without_verification_silence_and_failures_drop_directly() {
        let t0 = Instant::now();
        let mut s = state(false);
        s.heard(&m(1), Source::Multicast, t0);
        s.heard(&m(2), Source::Direct, t0);
        assert!(
            matches!(s.send_failed(&m(2).id, "refused").as_ref(), Some(Action::Disappeared(x, _)) if *x == m(2))
        );
        assert!(
            matches!(s.tick(t0 + Duration::from_secs(4)).as_slice(), [Action::Disappeared(x, _)] if *x == m(1))
        );
    }

    #[test]
    fn leave_local_and_domain() {
        let t0 = Instant::now();
        let mut s = state(true);
        assert_eq!(
            s.heard(
                &Member {
                    id: MemberId([0; 16]),
                    ..m(9)
                },
                Source::Multicast,
                t0
            ),
            None,
            "ourselves"
        );
        s.heard(&m(1), Source::Multicast, t0);
        assert!(matches!(
            s.left(&m(1).id, t0),
            Some(Action::Disappeared(..))
        ));
        assert_eq!(s.left(&m(1).id, t0), None);
        // A heartbeat overtaken by the leave, or a late ping answer, does not bring it back ...
        assert_eq!(
            s.heard(&m(1), Source::Multicast, t0 + Duration::from_millis(20)),
            None
        );
        assert_eq!(
            s.heard(&m(1), Source::Direct, t0 + Duration::from_millis(999)),
            None
        );
        // ... but a member that restarts with the same id rejoins after the grace.
        assert!(s.tick(t0 + Duration::from_millis(1001)).is_empty());
        assert_eq!(
            s.heard(&m(1), Source::Multicast, t0 + Duration::from_millis(1001)),
            Some(Action::Added(m(1)))
        );
        let mut s = MembershipState::new(
            DetectorConfig {
                domain: "a".into(),
                ..s.cfg.clone()
            },
            MemberId([0; 16]),
        );
        assert_eq!(
            s.heard(
                &Member {
                    domain: "b".into(),
                    ..m(2)
                },
                Source::Multicast,
                t0
            ),
            None
        );
        assert!(s
            .heard(
                &Member {
                    domain: "a".into(),
                    ..m(2)
                },
                Source::Multicast,
                t0
            )
            .is_some());
    }
}
