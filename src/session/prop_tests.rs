//! Property tests of the session layer's network input (issue 7): the decoders of
//! `ClusterMessage` and `Payload` on arbitrary and mutated bytes, and the replication cores
//! (`DeltaCore`, `BackupCore`) fed hostile but well-formed message sequences. Inside the crate
//! because `ClusterMessage` is private; `tests/decoders_prop.rs` covers the layers below.
//!
//! Run: `cargo test --release --lib session::prop_tests`.

use super::backup::{BackupConfig, BackupCore, BackupMessage};
use super::delta::{DeltaConfig, DeltaCore};
use super::engine::Payload;
use super::id::SessionId;
use super::model::{DeltaOp, SessionState};
use super::outbound::{decode_cluster_message, encode_cluster_message};
use super::outputs::{Dest, Out};
use super::reconcile::Stamp;
use super::replica::{DigestEntry, SessionMessage};
use crate::member::MemberId;
use crate::wire::{decode_body, encode_body};
use proptest::prelude::*;
use proptest::sample::Index;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

const CASES: u32 = 256;

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

/// The route of the cores under test: generated ids are 32 hex digits + ".n", as long as the
/// pool's, so an encoded message can have a pool id swapped for a generated one in place.
const ROUTE: &str = "n";
/// Pool slots that stand for the ids of sessions created by the core under test (when there
/// are that many); the others stay ids only the network knows.
const LOCAL_SLOTS: usize = 3;
const POOL: usize = 6;

fn pool_id(i: usize) -> SessionId {
    let s = format!("{:032X}.{ROUTE}", 0xA0 + i);
    SessionId::parse(&s).expect("pool id")
}

fn arb_id() -> impl Strategy<Value = SessionId> {
    (0..POOL).prop_map(pool_id)
}

const MEMBERS: [MemberId; 4] = [
    MemberId([1; 16]),
    MemberId([2; 16]),
    MemberId([3; 16]),
    MemberId([4; 16]),
];
/// The core under test (above every pool member in the claim order's tie-break).
const LOCAL: MemberId = MemberId([9; 16]);

fn arb_member() -> impl Strategy<Value = MemberId> {
    prop_oneof![
        8 => prop::sample::select(MEMBERS.to_vec()),
        1 => Just(LOCAL),
        1 => any::<[u8; 16]>().prop_map(MemberId),
    ]
}

fn arb_members() -> impl Strategy<Value = Vec<MemberId>> {
    prop::collection::vec(arb_member(), 0..6)
}

/// Versions, epochs, times: the edges (0, u64::MAX) often.
fn arb_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        2 => Just(0u64),
        2 => Just(u64::MAX),
        4 => 0u64..6,
        1 => (u64::MAX - 3)..=u64::MAX,
        2 => any::<u64>(),
    ]
}

fn arb_time() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0u64..100_000,
        1 => Just(u64::MAX),
        1 => any::<u64>(),
    ]
}

fn arb_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(u32::MAX),
        0u32..5,
        (u32::MAX - 2)..=u32::MAX,
        any::<u32>(),
    ]
}

fn arb_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["a", "b", "user"]).prop_map(str::to_string),
        1 => "\\PC{0,6}",
    ]
}

fn arb_value() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..6)
}

fn arb_state() -> impl Strategy<Value = SessionState> {
    (
        arb_id(),
        prop::collection::btree_map(arb_name(), arb_value(), 0..3),
        arb_time(),
        arb_time(),
        prop_oneof![Just(0u64), Just(10_000u64), Just(u64::MAX), any::<u64>()],
        prop::option::of(arb_name()),
        prop::option::of(arb_name()),
        arb_u64(),
    )
        .prop_map(
            |(id, attributes, creation_ms, last_accessed_ms, max_inactive_ms, p, a, version)| {
                SessionState {
                    id,
                    attributes: attributes.into(),
                    creation_ms,
                    last_accessed_ms,
                    max_inactive_ms,
                    principal: p,
                    auth_type: a,
                    version,
                }
            },
        )
}

fn arb_states() -> impl Strategy<Value = Vec<SessionState>> {
    prop::collection::vec(arb_state(), 0..4)
}

fn arb_op() -> impl Strategy<Value = DeltaOp> {
    prop_oneof![
        (arb_name(), arb_value()).prop_map(|(n, v)| DeltaOp::SetAttribute(n, v)),
        arb_name().prop_map(DeltaOp::RemoveAttribute),
        arb_u64().prop_map(DeltaOp::MaxInactive),
        (prop::option::of(arb_name()), prop::option::of(arb_name()))
            .prop_map(|(p, a)| DeltaOp::Principal(p, a)),
    ]
}

fn arb_ops() -> impl Strategy<Value = Vec<DeltaOp>> {
    prop::collection::vec(arb_op(), 0..4)
}

fn arb_stamp() -> impl Strategy<Value = Stamp> {
    prop_oneof![
        (arb_u64(), any::<u64>(), arb_time()).prop_map(|(version, fingerprint, t)| Stamp {
            version,
            fingerprint,
            last_accessed_ms: t,
        }),
        // A real one: same contents as a copy elsewhere, sometimes.
        arb_state().prop_map(|s| Stamp::of(&s)),
    ]
}

fn arb_digest_entry() -> impl Strategy<Value = DigestEntry> {
    prop_oneof![
        (arb_id(), arb_stamp()).prop_map(|(i, s)| DigestEntry::Live(i, s)),
        (arb_id(), arb_u64()).prop_map(|(i, v)| DigestEntry::Ended(i, v)),
        (arb_id(), arb_id(), any::<u64>()).prop_map(|(a, b, v)| DigestEntry::Renamed(a, b, v)),
    ]
}

/// Every `SessionMessage` variant.
fn arb_session_message() -> impl Strategy<Value = SessionMessage> {
    prop_oneof![
        arb_state().prop_map(SessionMessage::Created),
        (
            arb_id(),
            arb_u64(),
            arb_u64(),
            arb_ops(),
            arb_time(),
            any::<u64>()
        )
            .prop_map(|(id, base, version, ops, last_accessed_ms, fingerprint)| {
                SessionMessage::Delta {
                    id,
                    base,
                    version,
                    ops,
                    last_accessed_ms,
                    fingerprint,
                }
            }),
        (arb_id(), arb_u64(), arb_time(), any::<u64>()).prop_map(
            |(id, version, last_accessed_ms, fingerprint)| SessionMessage::Accessed {
                id,
                version,
                last_accessed_ms,
                fingerprint,
            }
        ),
        (arb_id(), arb_u64()).prop_map(|(id, version)| SessionMessage::Expired { id, version }),
        (arb_id(), arb_id(), arb_u64(), any::<Option<u64>>()).prop_map(
            |(old, new, version, fingerprint)| SessionMessage::ChangeId {
                old,
                new,
                version,
                fingerprint,
            }
        ),
        arb_id().prop_map(|id| SessionMessage::GetSession { id }),
        arb_id().prop_map(|id| SessionMessage::NotHere { id }),
        arb_state().prop_map(SessionMessage::State),
        Just(SessionMessage::GetAllSessions),
        Just(SessionMessage::GetDigest),
        (arb_states(), arb_u32(), arb_u32()).prop_map(|(states, index, count)| {
            SessionMessage::AllSessions {
                states,
                index,
                count,
            }
        }),
        Just(SessionMessage::NoContextManager),
        prop::collection::vec(arb_digest_entry(), 0..6).prop_map(SessionMessage::Digest),
        prop::collection::vec(arb_digest_entry(), 0..6).prop_map(SessionMessage::DigestAfterLeave),
        prop::collection::vec(arb_id(), 0..8).prop_map(SessionMessage::GetSessions),
        arb_states().prop_map(SessionMessage::Merge),
    ]
}

/// Every `BackupMessage` variant of main. A branch adding variants adds them here.
fn arb_backup_message() -> impl Strategy<Value = BackupMessage> {
    prop_oneof![
        (arb_state(), arb_members(), arb_u64(), any::<bool>()).prop_map(
            |(state, backups, epoch, ack)| BackupMessage::Copy {
                state,
                backups,
                epoch,
                ack,
            }
        ),
        (arb_id(), arb_u64()).prop_map(|(id, epoch)| BackupMessage::CopyAck { id, epoch }),
        (
            arb_id(),
            arb_u64(),
            arb_u64(),
            arb_u64(),
            arb_ops(),
            arb_time()
        )
            .prop_map(|(id, epoch, base, version, ops, last_accessed_ms)| {
                BackupMessage::Delta {
                    id,
                    epoch,
                    base,
                    version,
                    ops,
                    last_accessed_ms,
                }
            }),
        (arb_id(), arb_u64(), arb_u64(), arb_time()).prop_map(
            |(id, epoch, version, last_accessed_ms)| BackupMessage::Accessed {
                id,
                epoch,
                version,
                last_accessed_ms,
            }
        ),
        (arb_id(), arb_u64(), arb_u64()).prop_map(|(id, epoch, version)| BackupMessage::Drop {
            id,
            epoch,
            version
        }),
        (arb_id(), arb_u64(), arb_u64())
            .prop_map(|(id, epoch, version)| { BackupMessage::Expired { id, epoch, version } }),
        (arb_id(), arb_id(), arb_u64(), arb_members()).prop_map(|(old, new, epoch, backups)| {
            BackupMessage::ChangeId {
                old,
                new,
                epoch,
                backups,
            }
        }),
        arb_id().prop_map(|id| BackupMessage::GetCopy { id }),
        arb_id().prop_map(|id| BackupMessage::Fetch { id }),
        (
            arb_id(),
            prop::option::of(arb_state()),
            arb_u64(),
            arb_member(),
            any::<bool>()
        )
            .prop_map(
                |(id, state, epoch, owner, current)| BackupMessage::Fetched {
                    id,
                    state,
                    epoch,
                    owner,
                    current,
                }
            ),
        (arb_id(), arb_stamp(), arb_members(), arb_u64()).prop_map(
            |(id, stamp, backups, epoch)| BackupMessage::NewPrimary {
                id,
                stamp,
                backups,
                epoch,
            }
        ),
        (arb_state(), arb_u64(), arb_member()).prop_map(|(state, epoch, primary)| {
            BackupMessage::Orphan {
                state,
                epoch,
                primary,
            }
        }),
        (arb_state(), prop::option::of((arb_u64(), any::<u64>())))
            .prop_map(|(state, base)| BackupMessage::Reconcile { state, base }),
        (
            prop::collection::vec((arb_id(), arb_u64(), arb_stamp()), 0..6),
            prop::collection::vec((arb_id(), arb_u64()), 0..6)
        )
            .prop_map(|(entries, ended)| BackupMessage::Digest { entries, ended }),
    ]
}

fn arb_payload() -> impl Strategy<Value = Payload> {
    prop_oneof![
        arb_session_message().prop_map(Payload::Delta),
        arb_backup_message().prop_map(Payload::Backup),
    ]
}

fn arb_context() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), Just("/app".to_string()), "\\PC{0,10}"]
}

// ---------------------------------------------------------------------------------------------
// 1. Decoders: arbitrary and mutated bytes
// ---------------------------------------------------------------------------------------------

/// What the cluster's receiving side and the managers decode must guarantee on any input: no
/// panic, round-trip, and no amplification (the canonical encoding of what was decoded is never
/// longer than the input: every string, byte string and element comes from the input).
fn check_decoders(bytes: &[u8]) {
    if let Ok((context, msg)) = decode_cluster_message(bytes) {
        let again = encode_cluster_message(&context, &msg);
        assert!(
            again.len() <= bytes.len(),
            "{} > {}",
            again.len(),
            bytes.len()
        );
        let back = decode_cluster_message(&again).expect("re-encoding decodes");
        assert_eq!(back, (context, msg));
    }
    if let Ok(p) = decode_body::<Payload>(bytes) {
        let again = encode_body(&p);
        assert!(again.len() <= bytes.len());
        assert_eq!(
            decode_body::<Payload>(&again).expect("re-encoding decodes"),
            p
        );
    }
    if let Ok(s) = decode_body::<SessionState>(bytes) {
        let again = encode_body(&s);
        assert!(again.len() <= bytes.len());
        assert_eq!(decode_body::<SessionState>(&again).expect("decodes"), s);
    }
}

#[derive(Clone, Debug)]
enum Mutation {
    FlipBit(Index),
    SetByte(Index, u8),
    Truncate(Index),
    Append(Vec<u8>),
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
    /// Overwrites bytes at an offset with a varint (a length prefix, a tag, a count).
    Varint(Index, u64),
    /// A piece of another valid encoding put in at an offset.
    Splice(Index, Index, Index),
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => any::<Index>().prop_map(Mutation::FlipBit),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::SetByte(i, b)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => prop::collection::vec(any::<u8>(), 1..20).prop_map(Mutation::Append),
        1 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, v)| Mutation::Insert(i, v)),
        1 => (any::<Index>(), 1usize..8).prop_map(|(i, n)| Mutation::Delete(i, n)),
        2 => (any::<Index>(), prop_oneof![0u64..40, Just(u64::from(u32::MAX)), Just(u64::MAX), any::<u64>()])
            .prop_map(|(i, v)| Mutation::Varint(i, v)),
        1 => (any::<Index>(), any::<Index>(), any::<Index>())
            .prop_map(|(a, b, c)| Mutation::Splice(a, b, c)),
    ]
}

fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

fn mutate(buf: &mut Vec<u8>, donor: &[u8], muts: &[Mutation]) {
    for m in muts {
        let len = buf.len();
        match m {
            Mutation::FlipBit(i) if len > 0 => {
                let bit = i.index(len * 8);
                buf[bit / 8] ^= 1 << (bit % 8);
            }
            Mutation::SetByte(i, b) if len > 0 => {
                let at = i.index(len);
                buf[at] = *b;
            }
            Mutation::Truncate(i) => buf.truncate(i.index(len + 1)),
            Mutation::Append(v) => buf.extend_from_slice(v),
            Mutation::Insert(i, v) => {
                let at = i.index(len + 1);
                buf.splice(at..at, v.iter().copied());
            }
            Mutation::Delete(i, n) if len > 0 => {
                let at = i.index(len);
                buf.drain(at..(at + n).min(len));
            }
            Mutation::Varint(i, v) => {
                let at = i.index(len + 1);
                let v = varint(*v);
                let end = (at + v.len()).min(len);
                buf.splice(at..end, v);
            }
            Mutation::Splice(at, from, to) if !donor.is_empty() => {
                let at = at.index(len + 1);
                let (a, b) = (from.index(donor.len()), to.index(donor.len() + 1));
                let (a, b) = (a.min(b), a.max(b));
                buf.splice(at..at, donor[a..b].iter().copied());
            }
            _ => {}
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// Arbitrary bytes as a session message: no panic, round-trip, no amplification.
    #[test]
    fn arbitrary_bytes_as_session_messages(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
        // Mostly noise after a plausible start: a short context, then a Payload tag.
        context_len in 0u8..4,
        tag in 0u8..3,
        variant in 0u8..16,
    ) {
        check_decoders(&bytes);
        let mut framed = vec![context_len];
        framed.extend(std::iter::repeat_n(b'x', usize::from(context_len)));
        framed.extend([tag, variant]);
        framed.extend_from_slice(&bytes);
        check_decoders(&framed);
    }

    /// Valid encodings, mangled (bits, bytes, truncation, length prefixes, splices): no panic,
    /// round-trip, no amplification. Unmangled, they decode to what was encoded.
    #[test]
    fn mutated_session_messages(
        context in arb_context(),
        msg in arb_payload(),
        donor in arb_payload(),
        muts in prop::collection::vec(arb_mutation(), 0..5),
    ) {
        let clean = encode_cluster_message(&context, &msg);
        prop_assert_eq!(decode_cluster_message(&clean).expect("valid"), (context, msg.clone()));
        let body = encode_body(&msg);
        prop_assert_eq!(&decode_body::<Payload>(&body).expect("valid"), &msg);
        let donor = encode_body(&donor);
        let mut bytes = clean;
        mutate(&mut bytes, &donor, &muts);
        check_decoders(&bytes);
        let mut bytes = body;
        mutate(&mut bytes, &donor, &muts);
        check_decoders(&bytes);
    }
}

// ---------------------------------------------------------------------------------------------
// 2. The cores: hostile but well-formed sequences
// ---------------------------------------------------------------------------------------------

/// Swaps the pool's local slots for the ids of sessions the core created (same length, so the
/// encoding stays valid), so that messages collide with local sessions as well as remote ones.
fn localize<M: serde::Serialize + serde::de::DeserializeOwned>(msg: &M, local: &[SessionId]) -> M {
    let mut bytes = encode_body(msg);
    for (slot, id) in local.iter().enumerate().take(LOCAL_SLOTS) {
        let from = pool_id(slot);
        let (from, to) = (from.as_str().as_bytes(), id.as_str().as_bytes());
        assert_eq!(from.len(), to.len());
        let mut i = 0;
        while i + from.len() <= bytes.len() {
            if &bytes[i..i + from.len()] == from {
                bytes[i..i + from.len()].copy_from_slice(to);
                i += from.len();
            } else {
                i += 1;
            }
        }
    }
    decode_body(&bytes).expect("same-length ids keep the encoding valid")
}

/// The id a step's slot stands for: as [`localize`] maps it.
fn slot_id(slot: usize, local: &[SessionId]) -> SessionId {
    local
        .get(slot)
        .filter(|_| slot < LOCAL_SLOTS)
        .cloned()
        .unwrap_or_else(|| pool_id(slot))
}

/// How much a message names: ids, states, entries, ops (what its outs may be proportional to).
fn size_of_session_message(m: &SessionMessage) -> usize {
    match m {
        SessionMessage::Delta { ops, .. } => 1 + ops.len(),
        SessionMessage::AllSessions { states, .. } | SessionMessage::Merge(states) => {
            1 + states.len()
        }
        SessionMessage::Digest(e) | SessionMessage::DigestAfterLeave(e) => 1 + e.len(),
        SessionMessage::GetSessions(ids) => 1 + ids.len(),
        _ => 1,
    }
}

use crate::session::reconcile::test_support::UnionMerger as Union;

/// What happens to the core between two messages, or a message.
#[derive(Clone, Debug)]
enum Step<M> {
    Msg(MemberId, M),
    SetMembers(Vec<MemberId>, u64),
    Create(u64),
    /// End a request on a slot's session, having set an attribute or not.
    EndRequest(usize, u64, Option<(String, Vec<u8>)>),
    Invalidate(usize),
    ChangeId(usize),
    Expire(u64),
    /// Delta: begin a state transfer from a member; Backup: fetch the slot's session.
    Begin(MemberId, usize),
    /// Delta: end the state transfer; Backup: end the slot's fetch.
    End(usize),
}

fn arb_step<M: std::fmt::Debug + Clone>(
    msg: impl Strategy<Value = M>,
) -> impl Strategy<Value = Step<M>> {
    prop_oneof![
        12 => (arb_member(), msg).prop_map(|(f, m)| Step::Msg(f, m)),
        2 => (arb_members(), arb_time()).prop_map(|(m, t)| Step::SetMembers(m, t)),
        2 => arb_time().prop_map(Step::Create),
        2 => (0..POOL, arb_time(), prop::option::of((arb_name(), arb_value())))
            .prop_map(|(s, t, a)| Step::EndRequest(s, t, a)),
        1 => (0..POOL).prop_map(Step::Invalidate),
        1 => (0..POOL).prop_map(Step::ChangeId),
        1 => arb_time().prop_map(Step::Expire),
        1 => (arb_member(), 0..POOL).prop_map(|(m, s)| Step::Begin(m, s)),
        1 => (0..POOL).prop_map(Step::End),
    ]
}

const MAX_TOMBSTONES: usize = 3;
const CHUNK: usize = 2;

fn ends_in_a_slot(local: &mut Vec<SessionId>, old: &SessionId, new: Option<SessionId>) {
    if let Some(i) = local.iter().position(|l| l == old) {
        match new {
            Some(n) => local[i] = n,
            None => {
                local.remove(i);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// A DeltaCore fed any sequence of well-formed messages (ids colliding, versions at the
    /// edges, chunk indexes and counts up to u32::MAX) among its own operations: no panic, its
    /// bounded memories stay within bounds, and no step sends more than a small function of
    /// what the step carries (only a state transfer sends in proportion to the store, by design).
    #[test]
    fn delta_core_survives_hostile_sequences(
        steps in prop::collection::vec(arb_step(arb_session_message()), 1..40),
        merger in any::<bool>(),
        joining in any::<bool>(),
    ) {
        let cfg = DeltaConfig {
            max_inactive: Duration::from_secs(10),
            send_all_sessions_size: CHUNK,
            max_tombstones: MAX_TOMBSTONES,
        };
        let mut core = DeltaCore::new(cfg, ROUTE);
        if merger {
            core.set_merger(Some(Arc::new(Union)));
        }
        if joining {
            core.expect_members();
        }
        let mut local: Vec<SessionId> = Vec::new();
        let mut received = 0usize;
        for step in steps {
            let store = core.store().len();
            let tombs = core.store().tombstone_load().0;
            let (_, pending_before, _) = core.buffer_load();
            let outs: Vec<Out> = match step {
                Step::Msg(from, m) => {
                    received += 1;
                    let m = localize(&m, &local);
                    let n = size_of_session_message(&m);
                    let (outs, events) = core.handle(from, &m);
                    // Events: a few per item named, plus those of the digests read on becoming
                    // ready.
                    prop_assert!(events.len() <= 2 * (n + pending_before) + 2, "{} events", events.len());
                    let bound = match &m {
                        // The state transfer: its first chunk (the others come one per
                        // `next_chunk`).
                        SessionMessage::GetAllSessions => 1,
                        _ => 1 + n + pending_before,
                    };
                    prop_assert!(outs.len() <= bound, "{} outs > {bound} for {m:?}", outs.len());
                    // Answers, to the sender (or to the senders of digests read now): a
                    // message never makes this core broadcast.
                    prop_assert!(outs.iter().all(|o| matches!(o.dest, Dest::Member(_))));
                    if let SessionMessage::GetSessions(ids) = &m {
                        // Each session at most once, however often it is asked for.
                        let sent: Vec<&SessionId> = outs.iter().flat_map(|o| match &o.msg {
                            SessionMessage::Merge(s) => s.iter().map(|s| &s.id).collect(),
                            _ => Vec::new(),
                        }).collect();
                        let distinct: HashSet<&SessionId> = sent.iter().copied().collect();
                        prop_assert_eq!(sent.len(), distinct.len(), "a session sent twice");
                        prop_assert!(sent.len() <= ids.len().min(store));
                    }
                    outs
                }
                Step::SetMembers(m, now) => {
                    let outs = core.set_members(m.clone(), now);
                    let added = m.len();
                    // A digest (the store and the tombstones, in chunks) to each new member.
                    let chunks = 1 + (store + tombs).div_ceil(CHUNK);
                    prop_assert!(outs.len() <= added * chunks, "{} outs", outs.len());
                    outs
                }
                Step::Create(now) => {
                    let id = core.create(now).expect("an id");
                    local.push(id);
                    Vec::new()
                }
                Step::EndRequest(slot, now, attr) => {
                    let id = slot_id(slot, &local);
                    if let (Some((n, v)), Some(s)) = (attr, core.session_mut(&id)) {
                        // A name the API refuses is refused; the rest goes through.
                        let _ = s.set(&n, &v);
                    }
                    let outs = core.end_request(&id, now);
                    prop_assert!(outs.len() <= 1);
                    outs
                }
                Step::Invalidate(slot) => {
                    let id = slot_id(slot, &local);
                    let (outs, events) = core.invalidate(&id);
                    prop_assert!(outs.len() <= 1 && events.len() <= 1);
                    ends_in_a_slot(&mut local, &id, None);
                    outs
                }
                Step::ChangeId(slot) => {
                    let id = slot_id(slot, &local);
                    if core.session(&id).is_some() {
                        let (new, outs, _) = core.change_id(&id).expect("an id");
                        prop_assert!(outs.len() <= 1);
                        ends_in_a_slot(&mut local, &id, Some(new));
                        outs
                    } else {
                        Vec::new()
                    }
                }
                Step::Expire(now) => {
                    let (outs, events) = core.expire(now);
                    prop_assert!(outs.len() <= store && events.len() <= store);
                    outs
                }
                Step::Begin(donor, _) => vec![core.begin_state_transfer(donor)],
                Step::End(_) => {
                    let (outs, _) = core.end_state_transfer();
                    prop_assert!(outs.len() <= pending_before);
                    outs
                }
            };
            // Every message this core sends decodes as sent.
            for o in &outs {
                let p = Payload::Delta(o.msg.clone());
                let bytes = encode_cluster_message("/app", &p);
                prop_assert_eq!(decode_cluster_message(&bytes).expect("own output decodes").1, p);
            }
            let (t, order) = core.store().tombstone_load();
            prop_assert!(t <= MAX_TOMBSTONES && order <= MAX_TOMBSTONES, "tombstones {t}/{order}");
            // A forked copy is remembered once per DELTA received.
            prop_assert!(core.store().forked_load() <= received);
            let (digests, entries, chunks) = core.buffer_load();
            // Kept digests are never empty (the bound counts entries), and chunk indexes only
            // come one per message.
            prop_assert!(digests <= entries && chunks <= received);
            if core.is_ready() {
                prop_assert_eq!((digests, chunks), (0, 0));
            }
        }
    }
}

/// BackupCore config: two backups (so failover orders and re-placement have choices).
const BACKUPS: usize = 2;

fn size_of_backup_message(m: &BackupMessage) -> usize {
    match m {
        BackupMessage::Copy { backups, .. }
        | BackupMessage::ChangeId { backups, .. }
        | BackupMessage::NewPrimary { backups, .. } => 1 + backups.len(),
        BackupMessage::Delta { ops, .. } => 1 + ops.len(),
        _ => 1,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// A BackupCore fed any sequence of well-formed messages (claims at the edges, members
    /// coming and going, failovers) among its own operations: no panic, bounded memories stay
    /// bounded, and no message makes it send more than a small function of the backups, the
    /// members and what the message carries. Generic over the variants of `arb_backup_message`.
    #[test]
    fn backup_core_survives_hostile_sequences(
        steps in prop::collection::vec(arb_step(arb_backup_message()), 1..40),
        merger in any::<bool>(),
    ) {
        let cfg = BackupConfig {
            backups: BACKUPS,
            max_inactive: Duration::from_secs(10),
            max_tombstones: MAX_TOMBSTONES,
        };
        let mut core = BackupCore::new(cfg, LOCAL, ROUTE);
        if merger {
            core.set_merger(Some(Arc::new(Union)));
        }
        let mut local: Vec<SessionId> = Vec::new();
        let mut members: Vec<MemberId> = Vec::new();
        let mut fetched: HashSet<SessionId> = HashSet::new();
        for step in steps {
            let held = core.len();
            let m = members.len();
            let outs = match step {
                Step::Msg(from, msg) => {
                    let msg = localize(&msg, &local);
                    let n = size_of_backup_message(&msg);
                    let (outs, events) = core.handle(from, &msg);
                    prop_assert!(events.len() <= 2 * n + 2, "{} events", events.len());
                    // One answer, copies to the backups, drops to the old holders (at most the
                    // members) or to the backups the message named.
                    let bound = 4 + 3 * BACKUPS + 2 * m + n;
                    prop_assert!(outs.len() <= bound, "{} outs > {bound} for {msg:?}", outs.len());
                    outs
                }
                Step::SetMembers(ms, _) => {
                    let outs = core.set_members(ms.clone());
                    let before = std::mem::replace(&mut members, ms);
                    let m = members.len().max(before.len());
                    // Per session held: a failover or a re-placement; per fetch: asks to the
                    // new members.
                    let bound = (1 + held) * (4 + 3 * BACKUPS + 2 * m) + fetched.len() * m;
                    prop_assert!(outs.len() <= bound, "{} outs > {bound}", outs.len());
                    outs
                }
                Step::Create(now) => {
                    local.push(core.create(now).expect("an id"));
                    Vec::new()
                }
                Step::EndRequest(slot, now, attr) => {
                    let id = slot_id(slot, &local);
                    if let (Some((n, v)), Some(s)) = (attr, core.session_mut(&id)) {
                        let _ = s.set(&n, &v);
                    }
                    let outs = core.end_request(&id, now);
                    prop_assert!(outs.len() <= BACKUPS + 2 * m + 1, "{} outs", outs.len());
                    outs
                }
                Step::Invalidate(slot) => {
                    let id = slot_id(slot, &local);
                    let (outs, _) = core.invalidate(&id);
                    prop_assert!(outs.len() <= BACKUPS + m);
                    ends_in_a_slot(&mut local, &id, None);
                    outs
                }
                Step::ChangeId(slot) => {
                    let id = slot_id(slot, &local);
                    match core.change_id(&id).expect("an id") {
                        Some((new, outs)) => {
                            prop_assert!(outs.len() <= 2 * (BACKUPS + m) + 1);
                            ends_in_a_slot(&mut local, &id, Some(new));
                            outs
                        }
                        None => Vec::new(),
                    }
                }
                Step::Expire(now) => {
                    let (outs, _) = core.expire(now);
                    prop_assert!(outs.len() <= held * (BACKUPS + m));
                    outs
                }
                Step::Begin(_, slot) => {
                    let id = slot_id(slot, &local);
                    fetched.insert(id.clone());
                    let outs = core.fetch(&id);
                    prop_assert!(outs.len() <= 1);
                    outs
                }
                Step::End(slot) => {
                    let id = slot_id(slot, &local);
                    let outs = core.end_fetch(&id);
                    prop_assert!(outs.len() <= 1 + BACKUPS + m);
                    outs
                }
            };
            for o in &outs {
                let p = Payload::Backup(o.msg.clone());
                let bytes = encode_cluster_message("/app", &p);
                prop_assert_eq!(decode_cluster_message(&bytes).expect("own output decodes").1, p);
            }
            let [ended, ended_order, claims, claims_order, fetching, seen] = core.buffer_load();
            prop_assert!(ended <= MAX_TOMBSTONES && ended_order <= MAX_TOMBSTONES);
            prop_assert!(claims <= MAX_TOMBSTONES && claims_order <= MAX_TOMBSTONES);
            // Fetches only come from this node's requests.
            prop_assert!(fetching <= fetched.len());
            prop_assert!(seen <= 4096 + 6);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reproductions of what the properties found
// ---------------------------------------------------------------------------------------------

/// An `Orphan` (or any take-over) of a session whose claim is at epoch u64::MAX: promoting it
/// overflowed `epoch + 1` (a panic with overflow checks, a wrap to the lowest claim without).
#[test]
fn a_take_over_at_the_highest_epoch_neither_panics_nor_wraps() {
    let mut core = BackupCore::new(BackupConfig::default(), LOCAL, ROUTE);
    core.set_members(MEMBERS.to_vec());
    let state = SessionState {
        id: pool_id(0),
        attributes: Default::default(),
        creation_ms: 0,
        last_accessed_ms: 0,
        max_inactive_ms: 10_000,
        principal: None,
        auth_type: None,
        version: 3,
    };
    let orphan = BackupMessage::Orphan {
        state,
        epoch: u64::MAX,
        primary: MEMBERS[0],
    };
    let (outs, _) = core.handle(MEMBERS[1], &orphan);
    assert!(core.is_primary(&pool_id(0)));
    let epochs: Vec<u64> = outs
        .iter()
        .filter_map(|o| match &o.msg {
            BackupMessage::NewPrimary { epoch, .. } => Some(*epoch),
            _ => None,
        })
        .collect();
    assert_eq!(epochs, vec![u64::MAX]);
    // Its claim (u64::MAX, LOCAL) stays above the dead primary's.
    assert!(core.is_superseded(&pool_id(0), u64::MAX, MEMBERS[0]));
}

/// A `GetSessions` naming one id many times: the copy went out once per mention (a request of
/// 35 bytes per mention made this node send a whole session per mention).
#[test]
fn get_sessions_sends_each_session_once() {
    let mut core = DeltaCore::new(DeltaConfig::default(), ROUTE);
    let id = core.create(0).expect("an id");
    core.session_mut(&id)
        .expect("session")
        .set("big", &vec![7u8; 10_000])
        .expect("set");
    core.end_request(&id, 0);
    let (outs, _) = core.handle(
        MEMBERS[0],
        &SessionMessage::GetSessions(vec![id.clone(); 50]),
    );
    let states: usize = outs
        .iter()
        .map(|o| match &o.msg {
            SessionMessage::Merge(s) => s.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(states, 1);
}

/// Empty digests while joining: each was kept (the bound counts entries, and an empty one has
/// none), so a stream of them grew the buffer without limit.
#[test]
fn empty_digests_are_not_kept_while_joining() {
    let mut core = DeltaCore::new(DeltaConfig::default(), ROUTE);
    core.begin_state_transfer(MEMBERS[0]);
    for _ in 0..1000 {
        core.handle(MEMBERS[1], &SessionMessage::Digest(Vec::new()));
    }
    assert_eq!(core.buffer_load(), (0, 0, 0));
    let entry = DigestEntry::Ended(pool_id(1), 4);
    core.handle(MEMBERS[1], &SessionMessage::Digest(vec![entry]));
    assert_eq!(core.buffer_load(), (1, 1, 0));
    core.end_state_transfer();
    assert_eq!(core.buffer_load(), (0, 0, 0));
    assert!(core.store().is_ended(&pool_id(1)));
}

/// A session id longer than any this library makes (or not of its form) in a message from the
/// network is refused when decoded, with the id's own error.
#[test]
fn hostile_ids_in_messages_are_refused() {
    let long = format!("{}.{}", "A".repeat(32), "r".repeat(10_000));
    let msg = encode_body(&SessionMessage::GetSession { id: pool_id(0) });
    let good = pool_id(0);
    let mut forged = msg.clone();
    let at = forged.len() - good.as_str().len() - 1;
    forged.truncate(at);
    forged.extend(encode_body(&long));
    assert!(decode_body::<SessionMessage>(&forged).is_err());
    assert!(decode_body::<SessionMessage>(&msg).is_ok());
    let not_hex = format!("{}.n", "g".repeat(32));
    assert!(decode_body::<SessionId>(&encode_body(&not_hex)).is_err());
}

/// A state transfer given up (timeout, or `NoContextManager`) kept the chunk indexes it had
/// recorded, as many as chunks had come, until the next transfer (if any).
#[test]
fn a_transfer_given_up_forgets_its_chunks() {
    let mut core = DeltaCore::new(DeltaConfig::default(), ROUTE);
    core.begin_state_transfer(MEMBERS[0]);
    for index in 0..100 {
        let chunk = SessionMessage::AllSessions {
            states: Vec::new(),
            index,
            count: u32::MAX,
        };
        core.handle(MEMBERS[0], &chunk);
    }
    assert_eq!(core.buffer_load(), (0, 0, 100));
    core.handle(MEMBERS[0], &SessionMessage::NoContextManager);
    assert!(core.is_ready());
    assert_eq!(core.buffer_load(), (0, 0, 0));
}
