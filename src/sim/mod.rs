//! Deterministic cluster simulation: the pure protocol parts run on a virtual clock over a
//! simulated network, with faults drawn from one seed, real codecs, and named invariants checked
//! after every step. No threads, sockets, real clock or sleeps.
//!
//! - [`harness`]: [`Sim`], the [`Node`] trait that protocol cores implement to be simulated, the
//!   [`Ctx`] they act through, and [`Fault`]s.
//! - [`net`]: connections (FIFO byte pipes cut into random chunks), datagrams (lost and
//!   reordered at random) and the fault knobs.
//! - [`rng`]: the seeded generator.
//! - `lane_*`: the transport's lanes (sender and receiver of data frames) as a simulated member.
//! - `backup_*`: the BackupManager core as a simulated member, with acknowledged changes and a
//!   membership view the test sets.
//! - `membership_*`: the membership detector with heartbeat datagrams, pings and verification
//!   as a simulated member.
//! - [`detected`]: that detector embedded in a session manager's member, whose view it feeds
//!   as production's cluster listener does (no view set by the test).
//!
//! A failing run prints its seed; `TRIBECAST_SIM_SEED=<seed> cargo test --lib sim` reruns the
//! seeded tests with that seed only.

pub mod backup_node;
pub mod backup_world;
pub mod delta_node;
pub mod detected;
pub mod frame_lanes;
pub mod frame_node;
pub mod harness;
pub mod lane_node;
pub mod lane_rx;
pub mod lane_tx;
pub mod membership_node;
pub mod net;
pub mod rng;

#[cfg(test)]
mod backup_tests;
#[cfg(test)]
mod delta_tests;
#[cfg(test)]
mod fault_users;
#[cfg(test)]
mod harness_tests;
#[cfg(test)]
mod lane_tests;
#[cfg(test)]
mod membership_tests;
#[cfg(test)]
mod replay_tests;

pub use harness::{Ctx, Fault, Node, Sim};
pub use net::{CloseReason, ConnId, Faults, NetStats, NodeId};
pub use rng::SimRng;

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

/// Environment variable that replaces a test's seed list with one seed.
pub const SEED_ENV: &str = "TRIBECAST_SIM_SEED";

/// The seeds a test runs: `0..count`, or only the seed in [`SEED_ENV`] when it is set.
///
/// # Panics
/// If [`SEED_ENV`] is set to something that is not a number.
pub fn seeds(count: u64) -> Vec<u64> {
    match std::env::var(SEED_ENV) {
        Ok(s) => {
            let s = s.trim();
            let parsed = match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => s.parse(),
            };
            match parsed {
                Ok(seed) => vec![seed],
                Err(e) => panic!("{SEED_ENV}={s:?} is not a seed: {e}"),
            }
        }
        Err(_) => (0..count).collect(),
    }
}

/// Runs `run` once per seed of [`seeds`]`(count)`. If a run panics (a failed assertion in the
/// test, not only an invariant), the seed and the command that replays it are printed first.
pub fn for_each_seed(count: u64, mut run: impl FnMut(u64)) {
    for seed in seeds(count) {
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| run(seed))) {
            let test = std::thread::current().name().unwrap_or("sim").to_string();
            eprintln!("simulation failed with seed={seed}; replay: {SEED_ENV}={seed} cargo test --lib {test}");
            resume_unwind(panic);
        }
    }
}
