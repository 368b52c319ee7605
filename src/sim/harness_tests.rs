//! Tests of the simulator itself, with a node that only records what happens to it.

use super::*;
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

#[derive(Default)]
struct Recorder {
    log: Vec<String>,
    got: BTreeMap<ConnId, Vec<u8>>,
    /// Sizes of the chunks received.
    chunks: Vec<usize>,
    lives: u32,
}

impl Node for Recorder {
    fn on_start(&mut self, _ctx: &mut Ctx<'_>) {
        self.log.push("start".into());
    }
    fn on_accept(&mut self, conn: ConnId, from: NodeId, _ctx: &mut Ctx<'_>) {
        self.log.push(format!("accept {} from {from}", conn.0));
    }
    fn on_connected(&mut self, conn: ConnId, _ctx: &mut Ctx<'_>) {
        self.log.push(format!("connected {}", conn.0));
    }
    fn on_bytes(&mut self, conn: ConnId, bytes: &[u8], _ctx: &mut Ctx<'_>) {
        self.got.entry(conn).or_default().extend_from_slice(bytes);
        self.chunks.push(bytes.len());
    }
    fn on_closed(&mut self, conn: ConnId, why: CloseReason, _ctx: &mut Ctx<'_>) {
        self.log.push(format!("closed {} {why:?}", conn.0));
    }
    fn on_timer(&mut self, token: u64, ctx: &mut Ctx<'_>) {
        self.log.push(format!("timer {token} at {:?}", ctx.now()));
    }
    fn restarted(&self, _rng: &mut SimRng) -> Recorder {
        Recorder {
            lives: self.lives + 1,
            ..Recorder::default()
        }
    }
}

fn pair(seed: u64, faults: Faults) -> (Sim<Recorder>, NodeId, NodeId) {
    let mut sim = Sim::new(seed, faults);
    let a = sim.add_node(|_, _| Recorder::default());
    let b = sim.add_node(|_, _| Recorder::default());
    (sim, a, b)
}

fn connect(sim: &mut Sim<Recorder>, from: NodeId, to: NodeId) -> ConnId {
    let mut conn = None;
    sim.call(from, |_, ctx| conn = Some(ctx.connect(to)));
    conn.expect("call ran")
}

fn has(sim: &Sim<Recorder>, n: NodeId, line: &str) -> bool {
    sim.node(n).log.iter().any(|l| l == line)
}

#[test]
fn bytes_arrive_in_order_in_chunks_cut_anywhere() {
    for_each_seed(20, |seed| {
        let faults = Faults {
            max_chunk: 100,
            ..Faults::default()
        };
        let (mut sim, a, b) = pair(seed, faults);
        let conn = connect(&mut sim, a, b);
        let mut w = SimRng::new(seed);
        let mut expected = Vec::new();
        let mut write_ends = Vec::new();
        for _ in 0..300 {
            let len = w.between(1, 200) as usize;
            let bytes = w.bytes(len);
            expected.extend_from_slice(&bytes);
            write_ends.push(expected.len());
            sim.call(a, |_, ctx| ctx.send(conn, bytes));
            // Let some writes meet a pipe that is already delivering.
            sim.run_until(sim.now() + Duration::from_micros(w.below(100)), |_| false);
        }
        assert!(sim.run_until_idle(Duration::from_secs(10)));
        let r = sim.node(b);
        assert_eq!(r.got.get(&conn), Some(&expected), "seed {seed}");
        let mut end = 0;
        let chunk_ends: Vec<usize> = r
            .chunks
            .iter()
            .map(|n| {
                end += n;
                end
            })
            .collect();
        assert!(
            chunk_ends
                .iter()
                .any(|e| write_ends.binary_search(e).is_err()),
            "a chunk ends inside a write"
        );
        let spans_writes = chunk_ends.windows(2).any(|w| {
            let inside = write_ends
                .iter()
                .filter(|e| **e > w[0] && **e < w[1])
                .count();
            inside > 0
        });
        assert!(
            spans_writes,
            "a chunk carries the end of one write and the start of the next"
        );
        assert!(r.chunks.iter().all(|n| *n <= 100));
        assert!(has(&sim, b, &format!("accept {} from {a}", conn.0)));
        assert!(has(&sim, a, &format!("connected {}", conn.0)));
    });
}

#[test]
fn reset_drops_bytes_in_flight_and_tells_both_ends() {
    let (mut sim, a, b) = pair(1, Faults::with_resets(1.0));
    let conn = connect(&mut sim, a, b);
    sim.call(a, |_, ctx| ctx.send(conn, vec![1; 1000]));
    assert!(sim.run_until_idle(Duration::from_secs(1)));
    assert!(
        sim.node(b).got.is_empty(),
        "nothing arrives through a reset"
    );
    assert!(has(&sim, a, &format!("closed {} Reset", conn.0)));
    assert!(has(&sim, b, &format!("closed {} Reset", conn.0)));
    assert_eq!(sim.stats().resets, 1);
    // Writes after the reset go nowhere and nothing else happens.
    sim.call(a, |_, ctx| ctx.send(conn, vec![2; 10]));
    assert!(sim.run_until_idle(Duration::from_secs(1)));
    assert!(sim.node(b).got.is_empty());
}

#[test]
fn graceful_close_delivers_what_was_written_then_tells_the_peer() {
    let (mut sim, a, b) = pair(2, Faults::default());
    let conn = connect(&mut sim, a, b);
    assert!(sim.run_until_idle(Duration::from_secs(1)));
    sim.call(a, |_, ctx| {
        ctx.send(conn, vec![7; 5000]);
        ctx.close(conn);
    });
    assert!(sim.run_until_idle(Duration::from_secs(1)));
    assert_eq!(sim.node(b).got.get(&conn).map(Vec::len), Some(5000));
    assert_eq!(
        sim.node(b).log.last().map(String::as_str),
        Some(&*format!("closed {} PeerClosed", conn.0))
    );
    assert!(
        !sim.node(a).log.iter().any(|l| l.starts_with("closed")),
        "the closer is not told"
    );
}

#[test]
fn partitions_refuse_connects_and_reset_open_connections_until_healed() {
    let (mut sim, a, b) = pair(3, Faults::default());
    let c = sim.add_node(|_, _| Recorder::default());
    let open = connect(&mut sim, a, b);
    assert!(sim.run_until_idle(Duration::from_secs(1)));
    sim.fault(Fault::Partition(a, b));
    let refused = connect(&mut sim, b, a);
    assert!(sim.run_until_idle(Duration::from_secs(1)));
    assert!(has(&sim, a, &format!("closed {} Reset", open.0)));
    assert!(has(&sim, b, &format!("closed {} Reset", open.0)));
    assert!(has(&sim, b, &format!("closed {} ConnectFailed", refused.0)));
    let other = connect(&mut sim, c, a);
    assert!(sim.run_until_idle(Duration::from_secs(1)));
    assert!(
        has(&sim, c, &format!("connected {}", other.0)),
        "only the partitioned pair is cut"
    );

    sim.fault(Fault::Heal(a, b));
    let healed = connect(&mut sim, b, a);
    sim.fault(Fault::Isolate(c));
    let isolated = connect(&mut sim, a, c);
    assert!(sim.run_until_idle(Duration::from_secs(1)));
    assert!(has(&sim, b, &format!("connected {}", healed.0)));
    assert!(has(
        &sim,
        a,
        &format!("closed {} ConnectFailed", isolated.0)
    ));
    assert!(
        has(&sim, c, &format!("closed {} Reset", other.0)),
        "isolating resets open connections"
    );

    sim.fault(Fault::HealAll);
    let back = connect(&mut sim, a, c);
    assert!(sim.run_until_idle(Duration::from_secs(1)));
    assert!(has(&sim, a, &format!("connected {}", back.0)));
    assert_eq!(sim.stats().connect_failures, 2);
}

#[test]
fn timers_fire_in_time_order_and_die_with_a_crash() {
    let (mut sim, a, b) = pair(4, Faults::default());
    sim.call(a, |_, ctx| {
        ctx.set_timer(Duration::from_millis(3), 3);
        ctx.set_timer(Duration::from_millis(1), 1);
        ctx.set_timer(Duration::from_millis(2), 2);
    });
    sim.call(b, |_, ctx| {
        assert_eq!(ctx.me(), b);
        let jitter = ctx.rng().below(1000);
        ctx.set_timer(Duration::from_millis(5) + Duration::from_micros(jitter), 5);
    });
    assert!(sim.run_until_idle(Duration::from_secs(1)));
    assert!(sim
        .node(b)
        .log
        .iter()
        .any(|l| l.starts_with("timer 5 at 5.")));
    let timers: Vec<&str> = sim
        .node(a)
        .log
        .iter()
        .filter(|l| l.starts_with("timer"))
        .map(String::as_str)
        .collect();
    assert_eq!(
        timers,
        ["timer 1 at 1ms", "timer 2 at 2ms", "timer 3 at 3ms"]
    );

    let conn = connect(&mut sim, a, b);
    assert!(sim.run_until_idle(Duration::from_secs(1)));
    sim.call(b, |_, ctx| ctx.set_timer(Duration::from_millis(5), 6));
    sim.fault_at(sim.now() + Duration::from_millis(1), Fault::Crash(b));
    assert!(sim.run_until_idle(Duration::from_secs(1)));
    assert!(!sim.is_up(b));
    assert!(
        !has(&sim, b, "timer 6 at 10ms")
            && !sim.node(b).log.iter().any(|l| l.starts_with("timer 6"))
    );
    assert!(
        has(&sim, a, &format!("closed {} Reset", conn.0)),
        "a crash resets the peer's connections"
    );
    sim.call(b, |_, _| panic!("a crashed node is not called"));
    let refused = connect(&mut sim, a, b);
    assert!(sim.run_until_idle(Duration::from_secs(1)));
    assert!(has(&sim, a, &format!("closed {} ConnectFailed", refused.0)));

    sim.fault(Fault::Restart(b));
    assert!(sim.is_up(b));
    assert_eq!(sim.node(b).lives, 1);
    assert_eq!(
        sim.node(b).log,
        ["start"],
        "a restarted node starts from fresh state"
    );
    assert_eq!((sim.stats().crashes, sim.stats().restarts), (1, 1));
}

#[test]
fn a_violated_invariant_names_itself_and_the_seed() {
    let (mut sim, a, b) = pair(42, Faults::default());
    sim.invariant("at-most-one-chunk", |s: &Sim<Recorder>| {
        if s.stats().chunks > 1 {
            Err(format!("{} chunks", s.stats().chunks))
        } else {
            Ok(())
        }
    });
    let conn = connect(&mut sim, a, b);
    assert!(sim.run_until_idle(Duration::from_secs(1)));
    sim.call(a, |_, ctx| {
        for _ in 0..10 {
            ctx.send(conn, vec![0; 10]);
        }
    });
    sim.call(b, |_, ctx| ctx.send(conn, vec![0; 10]));
    let panic = catch_unwind(AssertUnwindSafe(|| {
        sim.run_until_idle(Duration::from_secs(1))
    }))
    .expect_err("the invariant must fail");
    let msg = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        msg.contains("invariant `at-most-one-chunk` violated: 2 chunks"),
        "{msg}"
    );
    assert!(
        msg.contains("seed=42") && msg.contains("TRIBECAST_SIM_SEED=42"),
        "{msg}"
    );
}
