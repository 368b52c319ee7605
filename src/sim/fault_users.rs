//! The users of the kill -9 loop simulations (`faults_delta`, `faults_backup`): what a user's
//! cookie jar knows after each answer, the same for both managers.

use super::delta_node::Op;
use super::frame_lanes::LaneModel;
use crate::session::config::RebindRoute;
use crate::session::SessionId;
use std::collections::BTreeMap;

/// A session's attributes.
pub type Attrs = BTreeMap<String, Vec<u8>>;

/// What a request on `asked` that left the session as `served` did: `did`, or a change of id
/// when route rebinding (`ManagerConfig::rebind_route`) renamed the session at its begin (the
/// user's jar then believes what it believes after a change of id).
pub fn with_rebinding(did: Did, asked: &SessionId, served: Option<&SessionId>) -> Did {
    match served {
        Some(new) if new != asked && matches!(did, Did::Changed | Did::Read) => Did::Renamed,
        _ => did,
    }
}

/// What a request did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Did {
    Created,
    Changed,
    Read,
    Renamed,
    Ended,
}

/// A request of each kind, from a roll in 0..100 (`change`: the ops of a change).
pub fn ops(roll: u64, change: impl FnOnce() -> Vec<Op>) -> (Did, Vec<Op>) {
    if roll < 8 {
        (Did::Renamed, vec![Op::ChangeId, Op::Set("user")])
    } else if roll < 11 {
        (Did::Ended, vec![Op::Invalidate])
    } else if roll < 25 {
        (Did::Read, vec![Op::Read])
    } else {
        (Did::Changed, change())
    }
}

/// A user's cookie jar and what the answers told it, borrowed from the user.
pub struct Jar<'a> {
    /// Its session's id (cookie), if logged in.
    pub id: &'a mut Option<SessionId>,
    /// A request that changed the id or ended the session failed, leaving it at most at
    /// `doubt`: the session may be gone or under another id until a change above that version
    /// is acknowledged (an end beats a copy of its version or below, docs/design.md).
    pub uncertain: &'a mut bool,
    pub doubt: &'a mut u64,
    /// The session's state (version, attributes) after the last acknowledged request.
    pub acked: &'a mut Option<(u64, Attrs)>,
    /// States made by requests that failed since then (each may or may not have survived).
    pub since: &'a mut Vec<(u64, Attrs)>,
}

/// What an acknowledged answer adds to the figures.
pub struct Acknowledged {
    pub session: bool,
    pub change: bool,
}

impl Jar<'_> {
    /// The request was acknowledged (200): `after` is the session as it left it.
    pub fn acknowledged(self, did: Did, after: Option<(SessionId, u64, Attrs)>) -> Acknowledged {
        match (did, after) {
            (Did::Ended, _) | (_, None) => {
                *self.id = None;
                *self.acked = None;
                self.since.clear();
                *self.uncertain = false;
                Acknowledged {
                    session: false,
                    change: did == Did::Ended,
                }
            }
            // An answer that left the session in a state a failed request made (a read, or a
            // change that changed nothing) acknowledges no change: nothing was replicated
            // before it. That state may still not survive, and a doubt stays (seeds 225, 372
            // of the DeltaManager's kill -9 loop).
            (_, Some((id, v, attrs))) if self.since.iter().any(|s| s.0 == v && s.1 == attrs) => {
                *self.id = Some(id);
                Acknowledged {
                    session: false,
                    change: false,
                }
            }
            (did, Some((id, v, attrs))) => {
                *self.id = Some(id);
                *self.acked = Some((v, attrs));
                self.since.clear();
                *self.uncertain &= v <= *self.doubt;
                Acknowledged {
                    session: did == Did::Created,
                    change: did != Did::Read,
                }
            }
        }
    }

    /// The request failed: its member answered with an error (`alive`), or died first.
    pub fn failed(self, did: Did, after: Option<(SessionId, u64, Attrs)>, alive: bool) {
        let newest_since = self.since.iter().map(|s| s.0).max().unwrap_or(0);
        match did {
            // No 200: the user logs in again.
            Did::Created => {
                *self.id = None;
                *self.acked = None;
                self.since.clear();
            }
            Did::Changed | Did::Read => {
                if let Some((_, v, attrs)) = after {
                    self.since.push((v, attrs));
                }
            }
            Did::Renamed => {
                *self.uncertain = true;
                *self.doubt = after
                    .as_ref()
                    .map(|a| a.1)
                    .or(self.acked.as_ref().map(|a| a.0))
                    .unwrap_or(0)
                    .max(newest_since);
                if let Some((id, v, attrs)) = after {
                    // An error page still carries the new cookie; a dead member sends none.
                    if alive {
                        *self.id = Some(id);
                    }
                    self.since.push((v, attrs));
                }
            }
            Did::Ended => {
                *self.uncertain = true;
                *self.doubt = self.acked.as_ref().map_or(0, |a| a.0).max(newest_since);
            }
        }
    }
}

/// The surveys' route rebinding: `TRIBECAST_FAULTS_REBIND=1` rebinds when the route is gone
/// (`RebindRoute::WhenRouteGone`), anything else never.
pub fn rebind_from_env() -> RebindRoute {
    match std::env::var("TRIBECAST_FAULTS_REBIND").as_deref() {
        Ok("1") => RebindRoute::WhenRouteGone,
        _ => RebindRoute::Never,
    }
}

/// Production's lane protocol in the kill loops (`Frames::retry_lanes`): production's sender
/// settings, with the send timeout compressed as the faults are (3 s to 30 ms).
pub fn kill_loop_lanes() -> LaneModel {
    LaneModel {
        timeout: std::time::Duration::from_millis(30),
        ..LaneModel::default()
    }
}

/// The kill loops' lanes: `TRIBECAST_SIM_LANES=1` production's lane protocol
/// ([`kill_loop_lanes`]), `0` the plain FIFO model, unset `default_on` says which.
pub fn lanes_from_env(default_on: bool) -> Option<LaneModel> {
    let on = match std::env::var("TRIBECAST_SIM_LANES").as_deref() {
        Ok("1") => true,
        Ok("0") => false,
        _ => default_on,
    };
    on.then(kill_loop_lanes)
}

/// 3 members, every fourth seed 4.
pub(super) fn members(seed: u64) -> usize {
    if seed % 4 == 3 {
        4
    } else {
        3
    }
}

/// Runs `one` for `seeds` seeds and returns the failing ones with the first lines of their
/// failure, instead of stopping at the first (for measuring how often the open races hit).
pub(super) fn failing_seeds(seeds: u64, mut one: impl FnMut(u64)) -> Vec<(u64, String)> {
    let mut failing = Vec::new();
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    for seed in super::seeds(seeds) {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| one(seed)));
        if let Err(e) = r {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_string()))
                .unwrap_or_default();
            failing.push((seed, msg.lines().take(2).collect::<Vec<_>>().join(" / ")));
        }
    }
    std::panic::set_hook(hook);
    failing
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seeds 225 and 372 of the DeltaManager's kill -9 loop: a request answered 200 on a state
    /// a failed request made, changing nothing (nothing replicated), counted as acknowledging
    /// it, and as clearing the doubt of a failed end; the acknowledged state and the doubt
    /// stay.
    #[test]
    fn an_answer_on_a_failed_requests_state_acknowledges_nothing() {
        let id = SessionId::generate("node1").unwrap();
        let attrs = |v: u8| Attrs::from([("a".to_string(), vec![v])]);
        let (mut cookie, mut uncertain, mut doubt) = (Some(id.clone()), false, 0);
        let (mut acked, mut since) = (Some((11, attrs(11))), Vec::new());
        macro_rules! jar {
            () => {
                Jar {
                    id: &mut cookie,
                    uncertain: &mut uncertain,
                    doubt: &mut doubt,
                    acked: &mut acked,
                    since: &mut since,
                }
            };
        }
        jar!().failed(Did::Ended, None, true);
        jar!().failed(Did::Changed, Some((id.clone(), 12, attrs(12))), true);
        jar!().acknowledged(Did::Read, Some((id.clone(), 12, attrs(12))));
        assert!(uncertain, "the end may still win");
        assert_eq!(acked, Some((11, attrs(11))));
        assert_eq!(since, vec![(12, attrs(12))]);
        // So does a change that changed nothing (the session stays at the failed state).
        jar!().acknowledged(Did::Changed, Some((id.clone(), 12, attrs(12))));
        assert!(uncertain);
        assert_eq!(acked, Some((11, attrs(11))));
        // A change acknowledged above the doubt clears it.
        jar!().acknowledged(Did::Changed, Some((id, 13, attrs(13))));
        assert!(!uncertain);
        assert_eq!(acked, Some((13, attrs(13))));
    }
}
