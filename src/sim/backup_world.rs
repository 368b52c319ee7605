//! What the BackupManager simulation observes and checks, apart from the nodes it drives:
//! the [`Oracle`] of every state a primary made and which changes were acknowledged, the
//! shared [`World`] (views, lives, the oracle), and the invariants ([`holds`],
//! [`check_backup`]) the tests assert over a [`BackupNode`] cluster.

use super::backup_node::BackupNode;
use super::delta_node::{show, Made};
use super::frame_node::{chain, EndedSeen};
use super::lane_node::{node_of, sim_member};
use super::net::NodeId;
use super::Sim;
use crate::session::SessionId;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::rc::Rc;
use std::time::Duration;

/// What a receiver must have done before it acks a message.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Change {
    /// The session at this version or newer (also under an id it was renamed to here), or
    /// ended here.
    Version(SessionId, u64),
    /// The session is gone here.
    Ended(SessionId),
    /// The session is here under this (new) id, or ended, or was never here under the old
    /// one (a holder that only may have had a copy is told too).
    Renamed(SessionId, SessionId),
    /// This member does not serve the session (a `NewPrimary` was taken in).
    Moved(SessionId),
    /// The message arrived (a `Drop` or an `Accessed`: the sender only waits to know it was
    /// delivered).
    Delivered(SessionId),
}

/// A change every member it was sent to acknowledged.
#[derive(Clone, Debug)]
pub struct Acked {
    pub origin: NodeId,
    pub at: Duration,
    pub change: Change,
    /// The members that acked it, with their life then.
    pub by: Vec<(NodeId, u64)>,
    /// Made by a request (the application's change), not by re-placement or an answer.
    pub request: bool,
}

/// A session's attributes.
pub type Attrs = BTreeMap<String, Vec<u8>>;

/// Every state a primary made and what became of each session. Written by the nodes, read by
/// the invariants and the tests.
#[derive(Default)]
pub struct Oracle {
    /// The attributes of each session at each version, as its maker had them, with the maker
    /// and its life.
    pub states: HashMap<SessionId, HashMap<u64, Made>>,
    /// Two states made for one (id, version) while the first one's maker lived.
    pub forks: Vec<String>,
    /// Other states made for one (id, version) by members that did not see each other (a
    /// partition), and states a reconciliation made: a copy may be any of them.
    pub alts: HashMap<(SessionId, u64), Vec<Attrs>>,
    /// Versions made again after their maker died before anyone acked them.
    pub superseded: u64,
    /// Acknowledged versions made again (an acknowledged change was lost).
    pub lost: Vec<String>,
    pub renamed: HashMap<SessionId, SessionId>,
    pub previous: HashMap<SessionId, SessionId>,
    /// Ids invalidated or expired by a primary's decision.
    pub ended: HashSet<SessionId>,
    /// Sessions (by first id) whose end was acknowledged.
    pub end_acked: HashSet<SessionId>,
    /// Highest acknowledged version of each session (by first id).
    pub acked_version: HashMap<SessionId, u64>,
    pub counter: u64,
    pub acked: Vec<Acked>,
    /// Tracked sends that failed (a receiver left before acking).
    pub failed: u64,
    /// Per request change (kind, number of members it was sent to): how many.
    pub fanout: BTreeMap<(&'static str, usize), u64>,
    /// Broken rules seen where they happen (wrong fan-out).
    pub violations: Vec<String>,
    /// Renamed sessions whose backups (the old id's placement) are not their placement.
    pub misplaced: HashSet<SessionId>,
    /// Delta messages received, per (id, version).
    pub delta_receipts: HashMap<(SessionId, u64), u32>,
}

impl Oracle {
    /// The first id of the session `id` belongs to.
    pub fn root(&self, id: &SessionId) -> SessionId {
        let mut id = id;
        for _ in 0..=self.previous.len() {
            match self.previous.get(id) {
                Some(p) => id = p,
                None => break,
            }
        }
        id.clone()
    }

    /// Whether `attrs` is one of the other states made for `id` at `version` (see `alts`).
    pub fn is_alt(&self, id: &SessionId, version: u64, attrs: &BTreeMap<String, Vec<u8>>) -> bool {
        self.alts
            .get(&(id.clone(), version))
            .is_some_and(|v| v.contains(attrs))
    }

    /// The attributes made for the session at `version`, under `id` or an earlier id.
    pub fn state(&self, id: &SessionId, version: u64) -> Option<&BTreeMap<String, Vec<u8>>> {
        let mut id = id;
        for _ in 0..=self.previous.len() {
            if let Some((s, _, _)) = self.states.get(id).and_then(|v| v.get(&version)) {
                return Some(s);
            }
            id = self.previous.get(id)?;
        }
        None
    }

    /// `id` and the ids it was renamed to, in order.
    pub fn chain(&self, id: &SessionId) -> Vec<SessionId> {
        chain(&self.renamed, id)
    }
}

/// What the nodes share: membership views (the test plays the failure detector), lives, the
/// configured backup count and the oracle.
#[derive(Default)]
pub struct World {
    pub views: BTreeMap<NodeId, BTreeSet<NodeId>>,
    pub lives: BTreeMap<NodeId, u64>,
    pub down: BTreeSet<NodeId>,
    pub oracle: Oracle,
    /// A partition is healing: a backup may hold the claimant's copy from before the
    /// reconciliation for a moment, below a version its side acknowledged.
    pub healing: bool,
    /// Pairs (low, high) on different sides of a partition, from the split until the heal
    /// has settled: while members notice the heal one after another, each side may still
    /// serve a session the other serves until the reconciliation, so the states they make
    /// are alternatives (`Oracle::alts`), not a fork, even once they list each other again.
    pub split: BTreeSet<(NodeId, NodeId)>,
    /// Nodes stopping cleanly ([`BackupNode::stop_cleanly`]): their copies go by design, so
    /// the per-node invariants leave them out.
    pub leaving: BTreeSet<NodeId>,
}

impl World {
    fn alive(&self, node: NodeId, life: u64) -> bool {
        !self.down.contains(&node) && self.lives.get(&node).copied() == Some(life)
    }

    /// Records the state `node` made for `id` at `version`.
    pub(super) fn record(
        &mut self,
        node: NodeId,
        id: &SessionId,
        version: u64,
        attrs: &BTreeMap<String, Vec<u8>>,
    ) {
        let life = self.lives.get(&node).copied().unwrap_or(0);
        match self.oracle.states.get(id).and_then(|v| v.get(&version)) {
            Some((known, ..)) if known == attrs => return,
            Some((known, maker, maker_life)) => {
                let (known, maker, maker_life) = (known.clone(), *maker, *maker_life);
                let apart = !self.views.get(&node).is_some_and(|v| v.contains(&maker))
                    || self.split.contains(&(node.min(maker), node.max(maker)));
                if self.alive(maker, maker_life) && apart {
                    // Both sides of a partition serve the session: reconciled at the heal.
                    self.add_alt(id, version, attrs);
                    return;
                }
                if self.alive(maker, maker_life) {
                    let msg = format!(
                        "{id} version {version}: {} by {maker} and {} by {node}",
                        show(&known),
                        show(attrs)
                    );
                    self.oracle.forks.push(msg);
                    return;
                }
                let root = self.oracle.root(id);
                if self
                    .oracle
                    .acked_version
                    .get(&root)
                    .is_some_and(|a| *a >= version)
                {
                    let msg = format!(
                        "{node} made {id} version {version} again ({}) although version {} was acknowledged; {maker} had made {}",
                        show(attrs),
                        self.oracle.acked_version[&root],
                        show(&known)
                    );
                    self.oracle.lost.push(msg);
                }
                self.oracle.superseded += 1;
            }
            None => {}
        }
        self.oracle
            .states
            .entry(id.clone())
            .or_default()
            .insert(version, (attrs.clone(), node, life));
    }

    fn add_alt(&mut self, id: &SessionId, version: u64, attrs: &BTreeMap<String, Vec<u8>>) {
        let alts = self.oracle.alts.entry((id.clone(), version)).or_default();
        if !alts.contains(attrs) {
            alts.push(attrs.clone());
        }
    }

    /// Records the state a reconciliation left on the primary `node`.
    pub(super) fn record_reconciled(
        &mut self,
        node: NodeId,
        id: &SessionId,
        version: u64,
        attrs: &BTreeMap<String, Vec<u8>>,
    ) {
        match self.oracle.states.get(id).and_then(|v| v.get(&version)) {
            Some((known, ..)) if known == attrs => {}
            Some(_) => self.add_alt(id, version, attrs),
            None => self.record(node, id, version, attrs),
        }
    }

    pub(super) fn note_acked(&mut self, a: Acked) {
        if a.request {
            match &a.change {
                Change::Version(id, v) => {
                    let root = self.oracle.root(id);
                    let e = self.oracle.acked_version.entry(root).or_insert(*v);
                    *e = (*e).max(*v);
                }
                Change::Ended(id) => {
                    let root = self.oracle.root(id);
                    self.oracle.end_acked.insert(root);
                }
                Change::Renamed(..) | Change::Moved(_) | Change::Delivered(_) => {}
            }
        }
        self.oracle.acked.push(a);
    }
}

pub type SharedWorld = Rc<RefCell<World>>;

// ---- invariants ----

/// Whether node `n` (in its current life) holds `change`.
///
/// A version is also held on a later id of the session's chain (by the oracle) at that version
/// or newer, as the DeltaManager's `holds` counts it: a member that acked a copy of the old id,
/// was told to drop it (re-placement) and then got the renamed session as a new backup holds
/// the change, though it never renamed anything itself.
pub fn holds(sim: &Sim<BackupNode>, world: &World, n: NodeId, change: &Change) -> bool {
    let node = sim.node(n);
    node.has(change)
        || match change {
            Change::Version(id, v) => world
                .oracle
                .chain(id)
                .iter()
                .any(|c| node.core().session(c).is_some_and(|s| s.version() >= *v)),
            _ => false,
        }
}

/// Per (node, life, id): the last version seen.
type Seen = HashMap<(NodeId, u64, SessionId), u64>;

/// Installs the BackupManager invariants, each checked after every step:
///
/// - `history-never-forks`: no two different states were made for one (id, version) while
///   the first one's maker lived (two primaries serving one session would do it).
/// - `no-acknowledged-change-is-lost`: no version at or below an acknowledged one is made
///   again (a failover that came back from a copy missing an acknowledged change would).
/// - `changes-go-to-exactly-the-backups`: every change a request makes is sent to exactly
///   `min(backups, other members)` distinct members, the session's placement.
/// - `copy-is-an-origin-state`: a copy a request may be served from (the primary's, or a listed
///   backup's in step with it) at version v has exactly the attributes its primary had at
///   version v (no copy mixes states or misses a change it claims).
/// - `versions-never-go-back`: on each node (in one life), a session's version never decreases
///   below an acknowledged one, even across a drop and a later copy (a failover replaces a
///   change only some backups got with the new primary's copy).
/// - `ended-stays-ended`: a session a node destroyed or renamed never reappears on it.
/// - `destroyed-at-most-once`: a node reports `Destroyed` once per session.
/// - `acked-is-on-every-acker`: when a change is acknowledged, every member that acked it (and
///   is still in the same life) holds it, unless it was told to drop the session meanwhile (it
///   then holds no copy and no primary counts on it: none lists it as a backup, or the one that
///   does still owes it a copy; "holds" counts the acked change's id and the session's later
///   ids, not an earlier id a change of id missed). While a partition heals (`World::healing`), not for a session
///   a member of the other side of the split (`World::split`) serves: the acker may follow
///   that claimant's copy until the reconciliation.
pub fn check_backup(sim: &mut Sim<BackupNode>, world: &SharedWorld) {
    let w = world.clone();
    sim.invariant("history-never-forks", move |_| {
        match w.borrow().oracle.forks.first() {
            Some(f) => Err(format!("two states for one version: {f}")),
            None => Ok(()),
        }
    });
    let w = world.clone();
    sim.invariant("no-acknowledged-change-is-lost", move |_| {
        match w.borrow().oracle.lost.first() {
            Some(f) => Err(f.clone()),
            None => Ok(()),
        }
    });
    let w = world.clone();
    sim.invariant("changes-go-to-exactly-the-backups", move |_| {
        match w.borrow().oracle.violations.first() {
            Some(f) => Err(f.clone()),
            None => Ok(()),
        }
    });

    let w = world.clone();
    let mut cursor: HashMap<NodeId, usize> = HashMap::new();
    let mut seen: Seen = HashMap::new();
    let mut ended = EndedSeen::default();
    sim.invariant("copies-follow-their-primary", move |sim| {
        let w = w.borrow();
        for n in sim.node_ids() {
            let node = sim.node(n);
            let j = &node.journal;
            ended.read(n, &j.events)?;
            let from = cursor.insert(n, j.touched.len()).unwrap_or(0);
            if !sim.is_up(n) || w.leaving.contains(&n) {
                continue;
            }
            for (life, id) in &j.touched[from..] {
                if *life != j.life {
                    continue;
                }
                let Some((version, ref attrs)) = node.copy(id) else {
                    continue;
                };
                // After a partition, a copy used after an end on the other side lives on.
                if ended.ended(n, *life, id) && !w.healing {
                    return Err(format!(
                        "ended-stays-ended: {n} holds {id} again (version {version}) after it ended there"
                    ));
                }
                // A former holder's copy, or one waiting for its new primary's copy, may be a
                // state the failover superseded: it is not served and is replaced or dropped.
                let current = node.core().is_current_copy(id);
                let alt = w.oracle.is_alt(id, version, attrs);
                match w.oracle.state(id, version).filter(|_| current && !alt) {
                    None if !current || alt => {}
                    None => {
                        return Err(format!(
                            "copy-is-an-origin-state: {n} holds {id} at version {version}, which no primary made"
                        ))
                    }
                    Some(want) if want != attrs => {
                        return Err(format!(
                            "copy-is-an-origin-state: {n} holds {id} v{version} as {}, its primary made {}",
                            show(attrs),
                            show(want)
                        ))
                    }
                    Some(_) => {}
                }
                let last = seen.entry((n, *life, id.clone())).or_insert(version);
                // A failover may replace a change only some backups got, never an
                // acknowledged one.
                let acked = w.oracle.acked_version.get(&w.oracle.root(id)).copied();
                if version < *last && acked.is_some_and(|a| a >= *last) && !w.healing {
                    return Err(format!(
                        "versions-never-go-back: {n} holds {id} at version {version} after {last}"
                    ));
                }
                *last = version;
            }
        }
        Ok(())
    });

    let w = world.clone();
    let mut acked_cursor = 0usize;
    sim.invariant("acked-is-on-every-acker", move |sim| {
        let w = w.borrow();
        let from = std::mem::replace(&mut acked_cursor, w.oracle.acked.len());
        for a in &w.oracle.acked[from.min(w.oracle.acked.len())..] {
            let id = match &a.change {
                Change::Version(id, _) | Change::Ended(id) | Change::Renamed(id, _) => id,
                // Whether a member serves a session can change again before the last ack.
                Change::Moved(_) | Change::Delivered(_) => continue,
            };
            for &(n, life) in &a.by {
                let current = w.lives.get(&n).copied() == Some(life)
                    && sim.is_up(n)
                    && !w.leaving.contains(&n);
                if !current || holds(sim, &w, n, &a.change) {
                    continue;
                }
                // Between its ack and the last one, the acker may have been told to drop its
                // copy (re-placement, a new primary elsewhere): then it holds none and no
                // primary counts on it.
                let chain = w.oracle.chain(&w.oracle.root(id));
                // While a split heals, the acker may already follow the other side's claimant
                // and hold its copy from before the reconciliation (which then decides by the
                // rule; the end of the run checks the outcome).
                let other_side = |p: NodeId| w.split.contains(&(p.min(a.origin), p.max(a.origin)));
                if w.healing
                    && sim.node_ids().filter(|p| sim.is_up(*p)).any(|p| {
                        other_side(p) && chain.iter().any(|c| sim.node(p).core().is_primary(c))
                    })
                {
                    continue;
                }
                // The acked change's id and the ids the session had after it: a copy of an
                // earlier id is a leftover of a change of id that missed the acker (its `Drop`
                // or `ChangeId` lost with a dead primary), not this change's copy going back;
                // the end of the run checks that no session is held under two ids.
                let since = chain.iter().position(|c| c == id).unwrap_or(0);
                let later = &chain[since..];
                let has_copy = later.iter().any(|c| sim.node(n).core().session(c).is_some());
                // A primary still handing the session over to it will send its copy.
                let me = sim_member(n).id;
                let counted_on = sim.node_ids().filter(|p| sim.is_up(*p)).any(|p| {
                    later.iter().any(|c| {
                        let core = sim.node(p).core();
                        core.backups_of(c).is_some_and(|b| b.contains(&me))
                            && !core.awaits_copy(c, me)
                    })
                });
                if has_copy || counted_on || matches!(a.change, Change::Ended(_)) {
                    let primaries: Vec<String> = sim
                        .node_ids()
                        .filter(|p| sim.is_up(*p))
                        .filter_map(|p| {
                            let b = chain.iter().find_map(|c| sim.node(p).core().backups_of(c))?;
                            let b: Vec<NodeId> = b.iter().filter_map(node_of).collect();
                            Some(format!("{p} with backups {b:?}"))
                        })
                        .collect();
                    return Err(format!(
                        "{n} acked {:?} from {} (acknowledged at {:?}) but does not hold it; served by {primaries:?}",
                        a.change, a.origin, a.at
                    ));
                }
            }
        }
        Ok(())
    });
}
