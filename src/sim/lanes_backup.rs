//! The BackupManager over production's two lanes per member: a request's batch (synchronized
//! ack) and a background batch (asynchronous: re-placement, a take-over's `NewPrimary`, a
//! hand-over's `Drop`) travel on different connections and can overtake each other.

use super::*;

/// [`killing_any_one_member_with_one_backup_loses_no_acknowledged_session_or_change`] with two
/// lanes per member.
#[test]
fn with_two_lanes_killing_any_one_member_loses_no_acknowledged_session_or_change() {
    let mut t = CrashTotals::default();
    let two = BackupSimConfig {
        two_lanes: true,
        ..cfg(1)
    };
    for_each_seed(6, |seed| {
        let n = 5 + (seed % 4) as usize;
        crash_run_with(seed, n, &two, 1, (false, true), &mut t);
    });
    eprintln!(
        "two lanes, one crash: {} acknowledged sessions at the crash, {} hit; {:?}\n  {:?}",
        t.acked_at_crash, t.hit, t.counts, t.traffic
    );
    if !replaying() {
        assert!(t.hit > 500 && t.counts.failovers > 100, "{t:?}");
    }
}
