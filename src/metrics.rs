//! Statistics an operator can read: per-member transport counters, per-manager figures, and
//! their Prometheus text exposition (format 0.0.4).
//!
//! The hot path only touches [`MemberCounters`]: relaxed atomics in an `Arc` that a lane, an
//! asynchronous lane or a receiving connection looks up once (when it is made or its peer shook
//! hands) and then keeps, so counting a message costs a few uncontended atomic adds and no lock
//! or map lookup.

use crate::member::{Member, MemberId};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// A counter the library updates and the application only reads: the statistics structs
/// (`ReceiverStats`, `SenderStats`, ...) hand these out, so no caller can change a figure.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// The current value, read with `order` (what `AtomicU64::load` takes).
    pub fn load(&self, order: Ordering) -> u64 {
        self.0.load(order)
    }

    pub(crate) fn fetch_add(&self, n: u64, order: Ordering) -> u64 {
        self.0.fetch_add(n, order)
    }

    /// For a figure that is a level, not a count (bytes held now).
    pub(crate) fn set(&self, n: u64, order: Ordering) {
        self.0.store(n, order)
    }
}

/// Counters of one member, shared by every lane and connection to or from it.
#[derive(Default, Debug)]
pub struct MemberCounters {
    messages_sent: AtomicU64,
    /// Payload bytes (after interceptors; no envelope, frame header or tag).
    bytes_sent: AtomicU64,
    messages_received: AtomicU64,
    bytes_received: AtomicU64,
    send_errors: AtomicU64,
    retries: AtomicU64,
    /// Gauge: bytes in the member's asynchronous lane (unwritten, or written and awaiting ack).
    async_queued_bytes: AtomicU64,
    async_dropped: AtomicU64,
    rtt_last_us: AtomicU64,
    rtt_sum_us: AtomicU64,
    rtt_count: AtomicU64,
}

impl MemberCounters {
    pub(crate) fn sent(&self, messages: u64, bytes: u64) {
        if messages > 0 {
            self.messages_sent.fetch_add(messages, Relaxed);
            self.bytes_sent.fetch_add(bytes, Relaxed);
        }
    }

    pub(crate) fn received(&self, messages: u64, bytes: u64) {
        if messages > 0 {
            self.messages_received.fetch_add(messages, Relaxed);
            self.bytes_received.fetch_add(bytes, Relaxed);
        }
    }

    pub(crate) fn send_errors(&self, n: u64) {
        if n > 0 {
            self.send_errors.fetch_add(n, Relaxed);
        }
    }

    pub(crate) fn retries(&self, n: u64) {
        if n > 0 {
            self.retries.fetch_add(n, Relaxed);
        }
    }

    pub(crate) fn dropped(&self) {
        self.async_dropped.fetch_add(1, Relaxed);
    }

    pub(crate) fn set_queued(&self, bytes: usize) {
        self.async_queued_bytes.store(bytes as u64, Relaxed);
    }

    /// A round trip (a synchronized ack, or a ping answered); at least 1 µs so that a measured
    /// trip is never mistaken for none.
    pub(crate) fn rtt(&self, d: Duration) {
        let us = (d.as_micros().min(u64::MAX as u128) as u64).max(1);
        self.rtt_last_us.store(us, Relaxed);
        self.rtt_sum_us.fetch_add(us, Relaxed);
        self.rtt_count.fetch_add(1, Relaxed);
    }
}

/// Most members remembered; past it, entries no lane or connection uses any more are dropped
/// (handshakes from arbitrary ids must not grow the table without bound).
const MAX_MEMBERS: usize = 1024;

/// The channel's per-member counters, by member id. Looked up when a lane or connection is made,
/// never per message.
#[derive(Default)]
pub(crate) struct MemberRegistry {
    entries: Mutex<HashMap<MemberId, (String, Arc<MemberCounters>)>>,
}

impl MemberRegistry {
    pub(crate) fn counters(&self, m: &Member) -> Arc<MemberCounters> {
        let mut entries = self.entries.lock();
        if let Some((name, c)) = entries.get_mut(&m.id) {
            if *name != m.name {
                name.clone_from(&m.name);
            }
            return c.clone();
        }
        if entries.len() >= MAX_MEMBERS {
            entries.retain(|_, (_, c)| Arc::strong_count(c) > 1);
            if entries.len() >= MAX_MEMBERS {
                // Counted nowhere rather than grow further.
                return Arc::default();
            }
        }
        let c = Arc::new(MemberCounters::default());
        entries.insert(m.id, (m.name.clone(), c.clone()));
        c
    }

    fn snapshot(&self) -> Vec<(MemberId, String, Arc<MemberCounters>)> {
        self.entries
            .lock()
            .iter()
            .map(|(id, (name, c))| (*id, name.clone(), c.clone()))
            .collect()
    }

    pub(crate) fn stats(&self, current: &[Member]) -> Vec<MemberStats> {
        let mut v: Vec<MemberStats> = self
            .snapshot()
            .into_iter()
            .map(|(id, name, c)| {
                let rtt_count = c.rtt_count.load(Relaxed);
                let rtt_sum_us = c.rtt_sum_us.load(Relaxed);
                MemberStats {
                    id,
                    name,
                    current: current.iter().any(|m| m.id == id),
                    messages_sent: c.messages_sent.load(Relaxed),
                    bytes_sent: c.bytes_sent.load(Relaxed),
                    messages_received: c.messages_received.load(Relaxed),
                    bytes_received: c.bytes_received.load(Relaxed),
                    send_errors: c.send_errors.load(Relaxed),
                    retries: c.retries.load(Relaxed),
                    async_queued_bytes: c.async_queued_bytes.load(Relaxed),
                    async_dropped: c.async_dropped.load(Relaxed),
                    rtt_last_us: c.rtt_last_us.load(Relaxed),
                    rtt_avg_us: rtt_sum_us.checked_div(rtt_count).unwrap_or(0),
                    rtt_sum_us,
                    rtt_count,
                }
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.0.cmp(&b.id.0)));
        v
    }
}

/// One member's figures, as counted by this node since it first talked to it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemberStats {
    /// The member's id.
    pub id: MemberId,
    /// The member's name.
    pub name: String,
    /// Whether it is a member now (figures of members that left are kept).
    pub current: bool,
    /// Messages this node sent it (written, and acked where asked).
    pub messages_sent: u64,
    /// Payload bytes of those messages (after interceptors; no envelope or frame overhead).
    pub bytes_sent: u64,
    /// Messages received from it and handed to the listeners.
    pub messages_received: u64,
    /// Payload bytes of those messages.
    pub bytes_received: u64,
    /// Messages to it that failed (not reachable, timed out, refused, failed in its listener).
    pub send_errors: u64,
    /// Reconnect-and-resend attempts after a broken connection.
    pub retries: u64,
    /// Bytes waiting in its asynchronous lane now.
    pub async_queued_bytes: u64,
    /// Asynchronous messages dropped because its queue was full.
    pub async_dropped: u64,
    /// Round-trip time of the last synchronized-ack send or ping, in µs (0: none yet).
    pub rtt_last_us: u64,
    /// Mean of all round trips measured, in µs (0: none yet).
    pub rtt_avg_us: u64,
    /// Sum of the measured round trips, in µs.
    pub rtt_sum_us: u64,
    /// Round trips measured.
    pub rtt_count: u64,
}

/// Sums over every member listed, plus channel-wide counters that belong to no member.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChannelTotals {
    /// Current members (other than this node).
    pub members: u64,
    /// Messages sent, over every member.
    pub messages_sent: u64,
    /// Payload bytes sent.
    pub bytes_sent: u64,
    /// Messages received.
    pub messages_received: u64,
    /// Payload bytes received.
    pub bytes_received: u64,
    /// Sends that failed.
    pub send_errors: u64,
    /// Reconnect-and-resend attempts.
    pub retries: u64,
    /// Bytes waiting in asynchronous lanes now.
    pub async_queued_bytes: u64,
    /// Asynchronous messages dropped on a full queue.
    pub async_dropped: u64,
    /// Mean round trip over every member, in µs.
    pub rtt_avg_us: u64,
    /// Connections made by the sender (pooled, asynchronous, probes).
    pub connects: u64,
    /// Times an asynchronous lane found its member not reading.
    pub stalls: u64,
    /// Connections the receiver accepted.
    pub connections_accepted: u64,
    /// Connections refused (over the limit, or a bad handshake).
    pub connections_refused: u64,
    /// Connections closed because of bad input.
    pub connections_closed_on_error: u64,
    /// Frames that failed authentication (wrong cluster key, altered).
    pub auth_failures: u64,
    /// Duplicate messages dropped (a resend of one already delivered).
    pub duplicates_dropped: u64,
}

/// A snapshot of [`GroupChannel::stats`](crate::GroupChannel::stats).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChannelStats {
    /// Sorted by name, then id.
    pub members: Vec<MemberStats>,
    /// Sums over every member, and channel-wide counters.
    pub totals: ChannelTotals,
}

impl ChannelStats {
    /// The figures of member `id`, if this node talked to it.
    pub fn member(&self, id: &MemberId) -> Option<&MemberStats> {
        self.members.iter().find(|m| m.id == *id)
    }

    pub(crate) fn sum(members: Vec<MemberStats>) -> ChannelStats {
        let mut t = ChannelTotals {
            members: members.iter().filter(|m| m.current).count() as u64,
            ..ChannelTotals::default()
        };
        let (mut rtt_sum, mut rtt_count) = (0u64, 0u64);
        for m in &members {
            t.messages_sent += m.messages_sent;
            t.bytes_sent += m.bytes_sent;
            t.messages_received += m.messages_received;
            t.bytes_received += m.bytes_received;
            t.send_errors += m.send_errors;
            t.retries += m.retries;
            t.async_queued_bytes += m.async_queued_bytes;
            t.async_dropped += m.async_dropped;
            rtt_sum = rtt_sum.saturating_add(m.rtt_sum_us);
            rtt_count += m.rtt_count;
        }
        t.rtt_avg_us = rtt_sum.checked_div(rtt_count).unwrap_or(0);
        ChannelStats { members, totals: t }
    }
}

/// A snapshot of [`ClusterManager::stats`](crate::ClusterManager::stats).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ManagerSnapshot {
    /// The application's context path.
    pub context: String,
    /// Live sessions held here (own and replicated).
    pub sessions: u64,
    /// BackupManager: sessions this node is primary for; `None` for a DeltaManager.
    pub primaries: Option<u64>,
    /// Session messages this manager sent.
    pub messages_sent: u64,
    /// Session messages this manager received.
    pub messages_received: u64,
    /// Requests whose session changes were sent to the other members.
    pub replications: u64,
    /// Sessions asked for again because a change arrived out of step.
    pub resyncs: u64,
    /// Full state transfers served to a joining member.
    pub state_transfers: u64,
    /// Session copies received to reconcile with after members met again (a partition healed,
    /// or a joiner catching up).
    pub reconciled: u64,
    /// New sessions refused because `max_active_sessions` were held (Tomcat:
    /// `rejectedSessions`).
    pub rejected_sessions: u64,
    /// The bound on sessions held here (`max_active_sessions`); `None` when unbounded.
    pub max_active_sessions: Option<u64>,
}

/// Escapes a label value: backslash, double quote and newline (format 0.0.4).
fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// One metric family: HELP, TYPE, then one sample per labelled row.
fn family<T>(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    rows: &[T],
    labels: impl Fn(&T) -> String,
    value: impl Fn(&T) -> Option<u64>,
) {
    let samples: Vec<(String, u64)> = rows
        .iter()
        .filter_map(|r| value(r).map(|v| (labels(r), v)))
        .collect();
    if samples.is_empty() {
        return;
    }
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (l, v) in samples {
        let _ = writeln!(out, "{name}{{{l}}} {v}");
    }
}

fn scalar(out: &mut String, name: &str, kind: &str, help: &str, v: u64) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    let _ = writeln!(out, "{name} {v}");
}

type MemberMetric = (
    &'static str,
    &'static str,
    &'static str,
    fn(&MemberStats) -> u64,
);

const MEMBER_METRICS: &[MemberMetric] = &[
    (
        "tribecast_member_up",
        "gauge",
        "1 if the peer is a current member, 0 if it left (its figures are kept).",
        |m| m.current as u64,
    ),
    (
        "tribecast_member_messages_sent_total",
        "counter",
        "Messages sent to the member (written, and acked where asked).",
        |m| m.messages_sent,
    ),
    (
        "tribecast_member_bytes_sent_total",
        "counter",
        "Payload bytes of the messages sent to the member.",
        |m| m.bytes_sent,
    ),
    (
        "tribecast_member_messages_received_total",
        "counter",
        "Messages received from the member and handed to the listeners.",
        |m| m.messages_received,
    ),
    (
        "tribecast_member_bytes_received_total",
        "counter",
        "Payload bytes of the messages received from the member.",
        |m| m.bytes_received,
    ),
    (
        "tribecast_member_send_errors_total",
        "counter",
        "Messages to the member that failed.",
        |m| m.send_errors,
    ),
    (
        "tribecast_member_retries_total",
        "counter",
        "Reconnect-and-resend attempts to the member.",
        |m| m.retries,
    ),
    (
        "tribecast_member_async_queue_bytes",
        "gauge",
        "Bytes waiting in the member's asynchronous lane.",
        |m| m.async_queued_bytes,
    ),
    (
        "tribecast_member_async_dropped_total",
        "counter",
        "Asynchronous messages to the member dropped because its queue was full.",
        |m| m.async_dropped,
    ),
    (
        "tribecast_member_rtt_last_microseconds",
        "gauge",
        "Round-trip time of the last synchronized-ack send or ping to the member (0: none yet).",
        |m| m.rtt_last_us,
    ),
    (
        "tribecast_member_rtt_microseconds_sum",
        "counter",
        "Sum of the round-trip times measured to the member.",
        |m| m.rtt_sum_us,
    ),
    (
        "tribecast_member_rtt_microseconds_count",
        "counter",
        "Round trips measured to the member.",
        |m| m.rtt_count,
    ),
];

type ManagerMetric = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ManagerSnapshot) -> Option<u64>,
);

const MANAGER_METRICS: &[ManagerMetric] = &[
    (
        "tribecast_manager_sessions",
        "gauge",
        "Live sessions held here (own and replicated).",
        |m| Some(m.sessions),
    ),
    (
        "tribecast_manager_primary_sessions",
        "gauge",
        "BackupManager: sessions this node is primary for.",
        |m| m.primaries,
    ),
    (
        "tribecast_manager_messages_sent_total",
        "counter",
        "Session messages sent by the manager.",
        |m| Some(m.messages_sent),
    ),
    (
        "tribecast_manager_messages_received_total",
        "counter",
        "Session messages received by the manager.",
        |m| Some(m.messages_received),
    ),
    (
        "tribecast_manager_replications_total",
        "counter",
        "Requests whose session changes were sent to the other members.",
        |m| Some(m.replications),
    ),
    (
        "tribecast_manager_resyncs_total",
        "counter",
        "Sessions asked for again after a change arrived out of step.",
        |m| Some(m.resyncs),
    ),
    (
        "tribecast_manager_state_transfers_total",
        "counter",
        "Full session state transfers served to joining members.",
        |m| Some(m.state_transfers),
    ),
    (
        "tribecast_manager_reconciled_total",
        "counter",
        "Session copies received to reconcile with after members met again.",
        |m| Some(m.reconciled),
    ),
    (
        "tribecast_manager_rejected_sessions_total",
        "counter",
        "New sessions refused because max_active_sessions were held.",
        |m| Some(m.rejected_sessions),
    ),
    (
        "tribecast_manager_max_active_sessions",
        "gauge",
        "The bound on sessions held here (max_active_sessions; absent when unbounded).",
        |m| m.max_active_sessions,
    ),
];

/// The Prometheus text (format 0.0.4) of a channel's and managers' figures, from snapshots
/// handed in ([`GroupChannel::stats`](crate::GroupChannel::stats),
/// [`ClusterManager::stats`](crate::ClusterManager::stats)); the cluster composes them for a
/// node (its `prometheus_text`).
pub fn render(ch: &ChannelStats, managers: &[ManagerSnapshot]) -> String {
    let mut out = String::new();
    let member_labels = |m: &MemberStats| {
        format!(
            "member=\"{}\",member_id=\"{}\"",
            escape_label(&m.name),
            m.id
        )
    };
    for (name, kind, help, f) in MEMBER_METRICS {
        family(
            &mut out,
            name,
            kind,
            help,
            &ch.members,
            member_labels,
            |m| Some(f(m)),
        );
    }
    let t = &ch.totals;
    scalar(
        &mut out,
        "tribecast_channel_members",
        "gauge",
        "Current members (other than this node).",
        t.members,
    );
    scalar(
        &mut out,
        "tribecast_channel_connects_total",
        "counter",
        "Connections the sender made.",
        t.connects,
    );
    scalar(
        &mut out,
        "tribecast_channel_async_stalls_total",
        "counter",
        "Times an asynchronous lane found its member not reading.",
        t.stalls,
    );
    scalar(
        &mut out,
        "tribecast_channel_connections_accepted_total",
        "counter",
        "Connections the receiver accepted.",
        t.connections_accepted,
    );
    scalar(
        &mut out,
        "tribecast_channel_connections_refused_total",
        "counter",
        "Connections the receiver refused (limit, handshake).",
        t.connections_refused,
    );
    scalar(
        &mut out,
        "tribecast_channel_connections_closed_on_error_total",
        "counter",
        "Connections the receiver closed on bad input or an I/O error.",
        t.connections_closed_on_error,
    );
    scalar(
        &mut out,
        "tribecast_channel_auth_failures_total",
        "counter",
        "Connections closed because a frame failed authentication.",
        t.auth_failures,
    );
    scalar(
        &mut out,
        "tribecast_channel_duplicates_dropped_total",
        "counter",
        "Resent frames the receiver already had.",
        t.duplicates_dropped,
    );
    let manager_labels = |m: &ManagerSnapshot| format!("context=\"{}\"", escape_label(&m.context));
    for (name, kind, help, f) in MANAGER_METRICS {
        family(&mut out, name, kind, help, managers, manager_labels, f);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, id: u8, sent: u64) -> MemberStats {
        MemberStats {
            id: MemberId([id; 16]),
            name: name.into(),
            current: true,
            messages_sent: sent,
            bytes_sent: 0,
            messages_received: 0,
            bytes_received: 0,
            send_errors: 0,
            retries: 0,
            async_queued_bytes: 0,
            async_dropped: 0,
            rtt_last_us: 0,
            rtt_avg_us: 0,
            rtt_sum_us: 0,
            rtt_count: 0,
        }
    }

    #[test]
    fn text_format_has_help_type_and_one_escaped_sample_per_member() {
        let ch = ChannelStats::sum(vec![member("plain", 1, 3), member("we\"ird\\na\nme", 2, 5)]);
        let mgr = ManagerSnapshot {
            context: "/app".into(),
            sessions: 7,
            primaries: None,
            ..ManagerSnapshot::default()
        };
        let text = render(&ch, &[mgr]);
        let sent: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("tribecast_member_messages_sent_total{"))
            .collect();
        assert_eq!(
            sent,
            [
                "tribecast_member_messages_sent_total{member=\"plain\",member_id=\"01010101010101010101010101010101\"} 3",
                "tribecast_member_messages_sent_total{member=\"we\\\"ird\\\\na\\nme\",member_id=\"02020202020202020202020202020202\"} 5",
            ]
        );
        assert!(text.contains(
            "# HELP tribecast_member_messages_sent_total Messages sent to the member (written, and acked where asked).\n# TYPE tribecast_member_messages_sent_total counter\n"
        ));
        assert!(text.contains("tribecast_manager_sessions{context=\"/app\"} 7\n"));
        assert!(text.contains("tribecast_manager_rejected_sessions_total{context=\"/app\"} 0\n"));
        assert!(
            !text.contains("tribecast_manager_max_active_sessions"),
            "unbounded: no family"
        );
        assert!(
            !text.contains("tribecast_manager_primary_sessions"),
            "a DeltaManager has no primaries: no family"
        );
        // Every line is a comment or `name{labels} value` / `name value`; every family has one
        // HELP and one TYPE, before its samples.
        let mut typed = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(["counter", "gauge"].contains(&kind));
                assert!(typed.insert(name.to_string()), "one TYPE per family");
            } else if !line.starts_with("# HELP ") {
                let (series, value) = line.rsplit_once(' ').unwrap();
                value.parse::<u64>().unwrap();
                let name = series.split('{').next().unwrap();
                assert!(typed.contains(name), "{name} sampled before its TYPE");
            }
        }
        assert_eq!(ch.totals.messages_sent, 8);
        assert_eq!(ch.totals.members, 2);
    }
}
