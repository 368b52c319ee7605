//! The simulated network: TCP-like connections, each two FIFO byte pipes, and the fault knobs.
//!
//! Bytes written on a connection arrive in order, in chunks cut at random places (so a frame can
//! arrive split anywhere, as from a real socket). A reset drops every byte in flight in both
//! directions, and each end hears of it after a delay. TCP does not lose bytes without breaking
//! the connection, so "loss" on a connection is a reset.
//!
//! Datagrams (multicast heartbeats) are another matter: each copy to each receiver is lost on
//! its own with probability `datagram_loss`, arrives after its own random delay (so datagrams
//! can overtake each other), and never breaks anything.

use super::rng::SimRng;
use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

/// A node of the simulation (an index into the simulation's node list).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub usize);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

/// A connection, unique over the whole run (never reused, so a stale id is never confused with a
/// new connection).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// Why a node lost a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The connection was never made: the peer is down, partitioned away, or is this node.
    ConnectFailed,
    /// Reset: bytes in flight were lost (random fault, partition, or the peer crashed).
    Reset,
    /// The peer closed its end; everything it wrote before has been delivered.
    PeerClosed,
}

/// Network behaviour and random faults. Crashes, restarts and partitions are scheduled
/// explicitly (see `Fault`).
#[derive(Clone, Debug)]
pub struct Faults {
    /// Delay of each chunk, and of the news that a connection was reset (min, max).
    pub latency: (Duration, Duration),
    /// Time from `connect` to the connection being open or refused (min, max).
    pub connect_delay: (Duration, Duration),
    /// Largest chunk delivered at once.
    pub max_chunk: usize,
    /// Probability that a chunk, instead of arriving, resets its connection.
    pub reset_per_chunk: f64,
    /// Delay of each datagram copy (min, max).
    pub datagram_latency: (Duration, Duration),
    /// Probability that one copy of a datagram (one sender, one receiver) is lost.
    pub datagram_loss: f64,
    /// At most this many copies in a row from one sender to one receiver are lost at random;
    /// the next one arrives. `None`: losses are independent, runs of any length.
    pub datagram_max_lost_in_a_row: Option<u32>,
    /// A connect across a partition gets no answer at all (a firewall dropping packets)
    /// instead of failing: the connecting node hears nothing and must time out by itself.
    /// Connects to a node that is down still fail (the host answers with a reset).
    pub partitioned_connects_hang: bool,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            latency: (Duration::from_micros(20), Duration::from_micros(300)),
            connect_delay: (Duration::from_micros(100), Duration::from_millis(1)),
            max_chunk: 64 * 1024,
            reset_per_chunk: 0.0,
            datagram_latency: (Duration::from_micros(50), Duration::from_millis(1)),
            datagram_loss: 0.0,
            datagram_max_lost_in_a_row: None,
            partitioned_connects_hang: false,
        }
    }
}

impl Faults {
    /// Default latencies and chunking, with random resets.
    pub fn with_resets(reset_per_chunk: f64) -> Faults {
        Faults {
            reset_per_chunk,
            ..Faults::default()
        }
    }

    /// Default latencies, each datagram copy lost independently with probability `loss`.
    pub fn with_datagram_loss(loss: f64) -> Faults {
        Faults {
            datagram_loss: loss,
            ..Faults::default()
        }
    }
}

/// Counters of what the network did; tests assert that faults really happened.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct NetStats {
    pub connects: u64,
    pub connect_failures: u64,
    pub chunks: u64,
    pub bytes: u64,
    pub resets: u64,
    pub crashes: u64,
    pub restarts: u64,
    /// Datagram copies handed to the network (one per receiver that was up and reachable).
    pub datagrams_sent: u64,
    /// Copies lost at random (`datagram_loss`).
    pub datagrams_lost: u64,
    /// Copies dropped by a fault: the sender muted, the receiver down or partitioned away.
    pub datagrams_blocked: u64,
    pub datagrams_delivered: u64,
}

/// One direction of a connection.
#[derive(Default)]
pub(super) struct Pipe {
    pub buf: VecDeque<u8>,
    /// The writer closed: after `buf` drains, the reader hears `PeerClosed`.
    pub fin: bool,
    /// A delivery event for this pipe is queued (at most one, which keeps the pipe FIFO).
    pub scheduled: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Connecting,
    Open,
}

/// A connection: `ends[0]` opened it, `ends[1]` accepted it; `pipes[i]` carries bytes from
/// `ends[i]` to the other end. A connection leaves the table once neither end holds it.
pub(super) struct Conn {
    pub ends: [NodeId; 2],
    /// Whether each end still holds the connection (has not closed it or heard it is gone).
    pub open: [bool; 2],
    pub pipes: [Pipe; 2],
    pub phase: Phase,
}

impl Conn {
    pub fn new(from: NodeId, to: NodeId) -> Conn {
        Conn {
            ends: [from, to],
            open: [true, false],
            pipes: [Pipe::default(), Pipe::default()],
            phase: Phase::Connecting,
        }
    }

    /// Which end `node` is (self-connections are refused, so this is unambiguous).
    pub fn end_of(&self, node: NodeId) -> Option<usize> {
        self.ends.iter().position(|e| *e == node)
    }
}

/// How many of `avail` bytes the next chunk carries. A mix of whole writes, arbitrary cuts and
/// tiny pieces, so headers get split as well as bodies.
pub(super) fn chunk_len(rng: &mut SimRng, avail: usize, max_chunk: usize) -> usize {
    let cap = avail.min(max_chunk.max(1)) as u64;
    let n = match rng.below(10) {
        0..=3 => cap,
        4..=7 => rng.between(1, cap),
        _ => rng.between(1, cap.min(30)),
    };
    n as usize
}
