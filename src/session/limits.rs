//! The session bounds of one manager, decided without clocks or I/O: how many sessions a node
//! may hold before it refuses a new one (Tomcat's `maxActiveSessions`), when a refusal is worth
//! a log line (once per burst, not once per request), and the largest a session may grow
//! (`max_session_size`, checked by `Session::set`).

use std::fmt;

/// A new session refused: the node already holds `active` sessions, `max` at most.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooManySessions {
    /// Sessions held here when the new one was asked for (own and replicas).
    pub active: usize,
    /// The bound (`ManagerConfig::max_active_sessions`).
    pub max: usize,
}

impl fmt::Display for TooManySessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no new session: {} session(s) held here, max_active_sessions is {}",
            self.active, self.max
        )
    }
}

impl std::error::Error for TooManySessions {}

/// One warning per this many ms at most for refused sessions; the others are counted into it.
pub(crate) const REFUSAL_LOG_EVERY_MS: u64 = 10_000;

/// The bound on the sessions a node holds, and the rate limit of its refusal warnings.
#[derive(Debug)]
pub(crate) struct ActiveBound {
    max: Option<usize>,
    /// When the last refusal warning was logged.
    logged_ms: Option<u64>,
    /// Refusals since then, not logged.
    unlogged: u64,
}

/// What to log for a refusal: `Some(n)` logs a warning that also names the `n` refusals not
/// logged since the last one; `None` logs nothing (counted only).
pub(crate) type LogRefusal = Option<u64>;

impl ActiveBound {
    /// `max`: `None` for no bound.
    pub fn new(max: Option<usize>) -> ActiveBound {
        ActiveBound {
            max,
            logged_ms: None,
            unlogged: 0,
        }
    }

    /// Whether a node holding `held` sessions may make a new one at `now_ms`. Sessions
    /// arriving from other members are never asked about: refusing them would lose data.
    pub fn admit(&mut self, held: usize, now_ms: u64) -> Result<(), (TooManySessions, LogRefusal)> {
        let Some(max) = self.max.filter(|m| held >= *m) else {
            return Ok(());
        };
        let due = self
            .logged_ms
            .is_none_or(|t| now_ms.saturating_sub(t) >= REFUSAL_LOG_EVERY_MS);
        let log = if due {
            self.logged_ms = Some(now_ms);
            Some(std::mem::take(&mut self.unlogged))
        } else {
            self.unlogged += 1;
            None
        };
        Err((TooManySessions { active: held, max }, log))
    }
}

/// Bytes of a session message beyond the session itself, at most: the envelope, the
/// application's name (added separately), the message's tags, version numbers and fingerprint.
pub(crate) const MESSAGE_OVERHEAD: usize = 1024;

/// The size limit of a session of application `context` over a channel whose frames carry at
/// most `max_frame_size` bytes: `configured`, lowered so that a session at the limit still fits
/// one frame (the change of one request, or the session whole in a CREATED or state message).
pub(crate) fn effective_size_limit(
    configured: Option<usize>,
    max_frame_size: u32,
    context: &str,
) -> usize {
    let frame = (max_frame_size as usize).saturating_sub(MESSAGE_OVERHEAD + context.len());
    configured.map_or(frame, |c| c.min(frame))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_bound_admits_everything() {
        let mut b = ActiveBound::new(None);
        assert_eq!(b.admit(usize::MAX, 0), Ok(()));
    }

    #[test]
    fn the_bound_is_inclusive_and_refusals_log_once_per_burst() {
        let mut b = ActiveBound::new(Some(3));
        assert_eq!(b.admit(0, 0), Ok(()));
        assert_eq!(b.admit(2, 0), Ok(()), "the third session is admitted");
        let refused = TooManySessions { active: 3, max: 3 };
        assert_eq!(
            b.admit(3, 1_000),
            Err((refused, Some(0))),
            "the first is logged"
        );
        for t in [1_001, 5_000, 10_999] {
            assert_eq!(b.admit(3, t), Err((refused, None)), "counted only, at {t}");
        }
        // A replica arrived meanwhile: the node holds more than the bound; still refused.
        let over = TooManySessions { active: 4, max: 3 };
        assert_eq!(
            b.admit(4, 11_000),
            Err((over, Some(3))),
            "10 s on: logged with the 3"
        );
        assert_eq!(b.admit(4, 11_001), Err((over, None)));
        // Room again (an invalidate, an expiry): admitted, and the burst state is kept.
        assert_eq!(b.admit(2, 11_002), Ok(()));
        assert_eq!(b.admit(3, 30_000), Err((refused, Some(1))));
    }

    #[test]
    fn a_session_at_the_limit_fits_a_frame() {
        assert_eq!(
            effective_size_limit(Some(1 << 20), 4 << 20, "/app"),
            1 << 20
        );
        let small = effective_size_limit(Some(1 << 20), 64 * 1024, "/app");
        assert_eq!(small, 64 * 1024 - MESSAGE_OVERHEAD - 4);
        assert_eq!(
            effective_size_limit(None, 4 << 20, "/app"),
            (4 << 20) - MESSAGE_OVERHEAD - 4
        );
        assert_eq!(effective_size_limit(Some(10), 100, "/app"), 0, "saturates");
    }
}
