//! The content fingerprint a session keeps: the same value as computed afresh after every kind
//! of change, and pinned values of the function (the simulations' tie-breaks and mixed builds
//! of one cluster depend on them).

use super::{Checked, DeltaOp, Session, SessionState, DEFAULT_MAX_INACTIVE};
use crate::session::id::SessionId;
use crate::session::reconcile::fingerprint;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::time::Duration;

fn state(attributes: BTreeMap<String, Vec<u8>>) -> SessionState {
    SessionState {
        id: SessionId::generate("n").unwrap(),
        attributes: attributes.into(),
        creation_ms: 1,
        last_accessed_ms: 2,
        max_inactive_ms: 1_800_000,
        principal: None,
        auth_type: None,
        version: 3,
    }
}

/// Values of the function (FNV-1a on 8-byte words): a change of value changes the simulations'
/// recorded outcomes (their tie-breaks) and breaks mixed builds of one cluster.
#[test]
fn fingerprint_values_are_pinned() {
    assert_eq!(fingerprint(&state(BTreeMap::new())), 0x25a4_0ef6_06de_d622);
    let mut full = state(BTreeMap::from([
        ("user".to_string(), b"ann".to_vec()),
        (
            "blob".to_string(),
            (0..1024u32).map(|i| (i * 31 % 251) as u8).collect(),
        ),
    ]));
    full.principal = Some("ann".into());
    full.auth_type = Some("FORM".into());
    full.max_inactive_ms = 0;
    assert_eq!(fingerprint(&full), 0x90ed_0e0a_bba5_7bdf);
}

fn arb_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["a", "b", "user"]).prop_map(str::to_string),
        1 => "\\PC{0,4}",
    ]
}

fn arb_value() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..40)
}

fn arb_op() -> impl Strategy<Value = DeltaOp> {
    prop_oneof![
        (arb_name(), arb_value()).prop_map(|(n, v)| DeltaOp::SetAttribute(n, v)),
        arb_name().prop_map(DeltaOp::RemoveAttribute),
        prop_oneof![Just(0u64), Just(1_000), any::<u64>()].prop_map(DeltaOp::MaxInactive),
        (prop::option::of(arb_name()), prop::option::of(arb_name()))
            .prop_map(|(p, a)| DeltaOp::Principal(p, a)),
    ]
}

/// Every way a session changes, through its own methods.
#[derive(Clone, Debug)]
enum Step {
    Set(String, Vec<u8>),
    Remove(String),
    MaxInactive(u64),
    Principal(Option<String>, Option<String>),
    /// A request's working copy hands its changes over.
    Record(Vec<DeltaOp>),
    TakeDelta,
    /// A replicated change on this version (or `skip` versions above: a gap, or below: stale).
    Apply(Vec<DeltaOp>, i8),
    /// The same, naming a result: the right one or another (a fork).
    Checked(Vec<DeltaOp>, i8, bool),
    Access(u64),
    ChangeId,
    Invalidate,
    /// A copy (a request's working copy), changed in its turn.
    CloneIt,
}

fn arb_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (arb_name(), arb_value()).prop_map(|(n, v)| Step::Set(n, v)),
        arb_name().prop_map(Step::Remove),
        prop_oneof![Just(0u64), Just(1_000), 0u64..5_000_000].prop_map(Step::MaxInactive),
        (prop::option::of(arb_name()), prop::option::of(arb_name()))
            .prop_map(|(p, a)| Step::Principal(p, a)),
        prop::collection::vec(arb_op(), 0..4).prop_map(Step::Record),
        Just(Step::TakeDelta),
        (prop::collection::vec(arb_op(), 0..4), -1i8..2).prop_map(|(o, d)| Step::Apply(o, d)),
        (
            prop::collection::vec(arb_op(), 0..4),
            -1i8..2,
            any::<bool>()
        )
            .prop_map(|(o, d, right)| Step::Checked(o, d, right)),
        any::<u64>().prop_map(Step::Access),
        Just(Step::ChangeId),
        Just(Step::Invalidate),
        Just(Step::CloneIt),
    ]
}

/// The base of a replicated change `d` versions from this copy's (-1: a duplicate's).
fn base_of(s: &Session, d: i8) -> (u64, u64) {
    let v = s.version();
    let base = match d {
        -1 => v.saturating_sub(1),
        0 => v,
        _ => v.saturating_add(1),
    };
    (base, base.saturating_add(1))
}

fn step(s: &mut Session, st: &Step) {
    match st {
        Step::Set(n, v) => {
            let _ = s.set(n, v);
        }
        Step::Remove(n) => {
            let _ = s.remove(n);
        }
        Step::MaxInactive(ms) => s.set_max_inactive(Duration::from_millis(*ms)),
        Step::Principal(p, a) => s.set_principal(p.as_deref(), a.as_deref()),
        Step::Record(ops) => s.record_ops(ops.clone()),
        Step::TakeDelta => {
            let _ = s.take_delta();
            let _ = s.take_pending();
        }
        Step::Apply(ops, d) => {
            let (base, version) = base_of(s, *d);
            s.apply_delta(base, version, ops);
        }
        Step::Checked(ops, d, right) => {
            let (base, version) = base_of(s, *d);
            let mut after = Session::from_state(s.state().clone());
            after.apply_delta(base, version, ops);
            let named = if *right {
                fingerprint(after.state())
            } else {
                fingerprint(after.state()) ^ 1
            };
            let before = s.state().clone();
            let outcome = s.apply_delta_checked(base, version, ops, named);
            if matches!(outcome, Checked::Differs) {
                assert_eq!(s.state(), &before, "a fork changes nothing");
            }
        }
        Step::Access(ms) => s.access(*ms),
        Step::ChangeId => {
            s.change_id(SessionId::generate("n").unwrap());
        }
        Step::Invalidate => s.invalidate(),
        Step::CloneIt => *s = s.clone(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The fingerprint is read after every step, so a change that kept a stale one shows.
    #[test]
    fn the_kept_fingerprint_is_always_the_fresh_one(
        steps in prop::collection::vec(arb_step(), 1..40),
        from_state in any::<bool>(),
    ) {
        let mut s = Session::new(SessionId::generate("n").unwrap(), 5, DEFAULT_MAX_INACTIVE);
        if from_state {
            s = Session::from_state(s.state().clone());
        }
        prop_assert_eq!(s.fingerprint(), fingerprint(s.state()));
        for st in &steps {
            step(&mut s, st);
            prop_assert_eq!(s.fingerprint(), fingerprint(s.state()), "after {:?}", st);
        }
    }
}
