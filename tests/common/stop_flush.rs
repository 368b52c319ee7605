//! A clean stop right after many asynchronous changes: the member that stays must hold every
//! session as the stopping member last changed it (the goodbye, on any path, must not be
//! handled before those changes).

use super::{login_on, wait_for, wait_until};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tribecast::{SessionEvent, SessionListener, SimpleTcpCluster};

const SESSIONS: usize = 300;
const ROUNDS: u32 = 2;
const PAD: usize = 32 * 1024;

/// An application listener on the member that stays, slow on every replicated change, so that
/// member is still working through the stopping member's last changes when it says goodbye.
struct SlowListener;

impl SessionListener for SlowListener {
    fn event(&self, _context: &str, event: &SessionEvent) {
        if let SessionEvent::Attribute { .. } = event {
            let until = Instant::now() + Duration::from_micros(100);
            while Instant::now() < until {
                std::hint::spin_loop();
            }
        }
    }
}

/// `nodes` (two, seeing each other, "/app" replicated asynchronously): node 1 logs in
/// `SESSIONS` users, changes each `ROUNDS` times with bulk, and stops cleanly. Returns how many
/// sessions on node 2 lack node 1's last change, and a sample of what they hold.
pub fn sessions_behind_after_a_clean_stop(nodes: &[SimpleTcpCluster]) -> (usize, Vec<Option<u32>>) {
    let app = |i: usize| nodes[i].manager("/app").expect("app");
    let ids: Vec<String> = (0..SESSIONS)
        .map(|i| login_on(&app(0), &format!("user{i}")))
        .collect();
    wait_for("node 2 has every login", Duration::from_secs(20), || {
        ids.iter().all(|id| app(1).find(id).is_some())
    });
    app(1).add_listener(Arc::new(SlowListener));
    let pad = "x".repeat(PAD);
    for round in 1..=ROUNDS {
        for id in &ids {
            let mut req = app(0).request(Some(id), "/app/cart");
            let s = req.session().expect("session on node 1");
            s.set("n", &round).expect("set");
            // Bulk, so node 2 still has work queued when the goodbye comes.
            s.set("cart", &pad).expect("set");
            req.finish().expect("queued");
        }
    }
    nodes[0].stop();
    let last = |id: &String| {
        app(1)
            .find(id)
            .and_then(|s| s.get::<u32>("n").ok().flatten())
    };
    wait_until(Duration::from_secs(5), || {
        ids.iter().all(|id| last(id) == Some(ROUNDS))
    });
    let behind: Vec<Option<u32>> = ids
        .iter()
        .map(last)
        .filter(|n| *n != Some(ROUNDS))
        .collect();
    let sample = behind[..behind.len().min(10)].to_vec();
    (behind.len(), sample)
}

/// The assertion both membership kinds' tests make, with `what` naming the run.
pub fn assert_none_behind(nodes: &[SimpleTcpCluster], what: &str) {
    let (behind, sample) = sessions_behind_after_a_clean_stop(nodes);
    assert_eq!(
        behind, 0,
        "{what}: {behind} of {SESSIONS} sessions on node 2 lack node 1's last change (they \
         hold {sample:?})"
    );
}
