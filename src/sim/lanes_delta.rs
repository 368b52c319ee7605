//! The DeltaManager over production's two lanes per member: a request's changes (synchronized
//! ack) and background messages (digests, answers, expiry) travel on different connections and
//! can overtake each other.

use super::*;

/// [`without_loss_every_node_ends_with_the_same_sessions_versions_and_attributes`] with two
/// lanes per member.
#[test]
fn with_two_lanes_every_node_ends_with_the_same_sessions_versions_and_attributes() {
    let (mut counts, mut sessions) = (Counts::default(), 0);
    let two = DeltaSimConfig {
        two_lanes: true,
        ..DeltaSimConfig::default()
    };
    for_each_seed(24, |seed| {
        let n = 3 + (seed % 3) as usize;
        let mut c = Cluster::new(seed, jitter(), &two, n);
        c.run_workload(ms(250), (Duration::ZERO, ms(2)), &Mix::default());
        c.settle(secs(10));
        c.assert_converged();
        counts += &c.counts;
        sessions += c.sessions.len();
    });
    eprintln!("two lanes, no loss: {sessions} sessions, {counts:?}");
    if !replaying() {
        assert!(counts.switches > 100 && counts.change_ids > 50);
    }
}
