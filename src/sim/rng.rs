//! The simulation's only source of randomness. One `u64` seed fixes every choice a run makes, so
//! a failing seed replays exactly. The crate has no `rand`; splitmix64 is small and good enough
//! for choosing delays, chunk sizes and faults.

use std::time::Duration;

/// A seeded splitmix64 generator.
#[derive(Clone, Debug)]
pub struct SimRng {
    state: u64,
}

impl SimRng {
    pub fn new(seed: u64) -> SimRng {
        SimRng { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`; 0 when `n` is 0. Multiply-shift: the bias is far below what a test
    /// could notice.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `lo..=hi` (`lo` when `hi <= lo`).
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        // 53 random bits make an exact f64 in [0, 1).
        ((self.next_u64() >> 11) as f64) * (1.0 / (1u64 << 53) as f64) < p
    }

    /// Uniform in `lo..=hi`, to the nanosecond.
    pub fn duration_between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let lo_ns = u64::try_from(lo.as_nanos()).unwrap_or(u64::MAX);
        let hi_ns = u64::try_from(hi.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.between(lo_ns, hi_ns))
    }

    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(len);
        out
    }

    /// An independent generator, e.g. for a workload that must not shift when the network's use
    /// of randomness changes.
    pub fn fork(&mut self) -> SimRng {
        SimRng::new(self.next_u64())
    }
}

/// Session ids for a simulated node, drawn from a seed taken from the run's generator: a seed
/// replays the same ids, so the same placements and the same message order.
pub struct SimIds(SimRng);

impl SimIds {
    pub fn from_run(rng: &mut SimRng) -> Box<SimIds> {
        Box::new(SimIds(SimRng::new(rng.next_u64())))
    }
}

impl crate::session::IdSource for SimIds {
    fn fill(&mut self, bytes: &mut [u8]) -> Result<(), crate::session::SessionIdError> {
        for chunk in bytes.chunks_mut(8) {
            let r = self.0.next_u64().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_ranges_hold() {
        let mut a = SimRng::new(7);
        let mut b = SimRng::new(7);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        assert_ne!(SimRng::new(1).next_u64(), SimRng::new(2).next_u64());
        let mut r = SimRng::new(3);
        let mut seen = [false; 5];
        for _ in 0..1000 {
            let v = r.between(2, 6);
            assert!((2..=6).contains(&v));
            seen[(v - 2) as usize] = true;
        }
        assert!(
            seen.iter().all(|s| *s),
            "every value of a small range comes up"
        );
        assert_eq!(r.below(0), 0);
        assert_eq!(r.bytes(13).len(), 13);
        let hits = (0..10_000).filter(|_| r.chance(0.25)).count();
        assert!(
            (2_000..3_000).contains(&hits),
            "chance(0.25) hit {hits} of 10000"
        );
    }
}
