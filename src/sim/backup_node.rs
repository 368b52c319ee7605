//! A simulated member running the BackupManager as production runs it: the manager's core
//! ([`ManagerCore`] over a [`BackupCore`]) fed the same inputs the shell feeds it, and its
//! [`Ready`] batches performed in the shell's order (messages, then verdicts, then events).
//! Every message goes to its destination(s) as a postcard body in a real data frame, over one
//! FIFO connection per destination (a crash resets them, losing what was in flight). A request
//! begins and ends through the manager on a working copy; a request for a session served
//! elsewhere waits for the manager's verdict on its fetch (a timer ticks the manager at the
//! fetch's deadline); a received message gets the manager's sync-ack verdict (a refusal fails
//! the sender's send). Nothing here decides what the shell would decide.
//!
//! Around the core, for the tests (mirroring `delta_node`):
//! - Acknowledged changes, modelled on `map_send_options` 6 (use-ack + sync-ack): every message
//!   that changes something on its receiver (a copy, a delta, an end, a change of id, a new
//!   primary) carries a request number per call and change; a receiver the manager refused it
//!   answers `Refused`, otherwise it acks once the change is in its core; the sender records the
//!   change as acknowledged when every member it was sent to acked. `Drop` and `Accessed` are
//!   acked on arrival (a sync-ack send waits for them too). A member that leaves the
//!   sender's view before acking makes the send fail: the change is never acknowledged (a
//!   sync-ack send to a member that dies fails). Changes made by requests are the application's
//!   acknowledged changes; the others (re-placement, answers) are counted too.
//! - A membership view per node in the shared [`World`], set by the test, which calls
//!   [`BackupNode::view_changed`] (so [`BackupCore::set_members`]) on the nodes that notice, as
//!   the failure detector would.
//! - An [`Oracle`] of every state a primary made, which sessions' changes were acknowledged, and
//!   how many members each change went to; the invariants ([`check_backup`]) read it.
//!
//! Session ids come from a generator seeded by the run ([`SimIds`]), so a seed replays exactly,
//! placements included. Set [`TRACE_ENV`] to print every message applied.

use super::delta_node::{now_ms, show, Made, Op, Served, Val};
use super::detected::{Detector, Routed, ViewEvent};
use super::frame_node::{
    chain, count, edit, next_val, view_of, Acks, EndedSeen, Frames, Lane, Wire,
};
use super::lane_node::{node_of, sim_member, sim_members};
use super::membership_node::MembershipSimConfig;
use super::net::{CloseReason, ConnId, NodeId};
use super::rng::SimIds;
use super::{Ctx, Node, Sim, SimRng};
use crate::member::MemberId;
use crate::options::SendOptions;
use crate::session::backup::{placement, BackupConfig, BackupCore, BackupMessage, Out};
use crate::session::config::{ManagerConfig, ManagerKind, RebindRoute};
use crate::session::engine::{Core, POut, Payload};
use crate::session::manager_core::{Begin, ManagerCore, Ready, Token};
use crate::session::{Dest, Session, SessionEvent, SessionId};
use crate::wire::encode_body;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::rc::Rc;
use std::time::Duration;

/// Set (to anything) to print every message each node applies.
pub const TRACE_ENV: &str = "TRIBECAST_BACKUP_TRACE";
/// Set (to anything) to run the lanes as the DeltaManager simulation's do: a connection's
/// reset fails the synchronized-ack sends written on it that its destination had not acked
/// (as production's sender fails them), and a member's new life connecting makes the others
/// forget their connections to the old one. Off by default: some seeds of the kill -9 loop
/// still fail with it (docs/RELIABILITY.md).
pub const RESET_FAILS_ENV: &str = "TRIBECAST_BACKUP_RESET_FAILS";
/// Timer token of the reaper; a fetch's deadline uses `TICK`.
const REAPER: u64 = 1;
const TICK: u64 = 2;

/// Settings of a simulated BackupManager member.
#[derive(Clone, Debug)]
pub struct BackupSimConfig {
    pub core: BackupConfig,
    /// Period of the reaper (the manager's `expire_frequency`); `None`: no reaper.
    pub reaper: Option<Duration>,
    /// How long a request waits for a fetched session (the manager's `rpc_timeout`).
    pub rpc_timeout: Duration,
    /// Production's two lanes per member (see [`Frames::two_lanes`]).
    pub two_lanes: bool,
    /// Route rebinding (`ManagerConfig::rebind_route`), done after each request's begin.
    pub rebind: RebindRoute,
}

impl Default for BackupSimConfig {
    fn default() -> Self {
        BackupSimConfig {
            core: BackupConfig::default(),
            reaper: None,
            rpc_timeout: Duration::from_millis(50),
            two_lanes: false,
            rebind: RebindRoute::Never,
        }
    }
}

/// The backup messages of a batch (the manager wraps them for the wire).
fn backup_outs(outs: Vec<POut>) -> Vec<Out> {
    outs.into_iter()
        .filter_map(|o| match o.msg {
            Payload::Backup(msg) => Some(Out { dest: o.dest, msg }),
            Payload::Delta(_) => None,
        })
        .collect()
}

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
    fn record(
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
    fn record_reconciled(
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

    fn note_acked(&mut self, a: Acked) {
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

/// What a node did, kept across restarts.
#[derive(Clone, Debug, Default)]
pub struct Journal {
    pub life: u64,
    /// Sessions whose copy may have changed, with the life it happened in.
    pub touched: Vec<(u64, SessionId)>,
    /// Listener events (and changes of id made here), with the life they happened in.
    pub events: Vec<(u64, SessionEvent)>,
    pub sent: BTreeMap<&'static str, u64>,
    pub received: BTreeMap<&'static str, u64>,
    /// Bytes of frames written.
    pub bytes: u64,
    /// Acks sent only after a copy the message made this node ask for.
    pub late_acks: u64,
    /// Fetches this node started, and how many ended with it serving the session.
    pub fetches: u64,
    pub fetched: u64,
    /// Request ends the manager refused (the session moved away while the request waited).
    pub refused_ends: u64,
}

impl Journal {
    pub fn sent(&self, kind: &str) -> u64 {
        count(&self.sent, kind)
    }
    pub fn received(&self, kind: &str) -> u64 {
        count(&self.received, kind)
    }
}

/// The message's kind, for counters.
pub fn kind(msg: &BackupMessage) -> &'static str {
    match msg {
        BackupMessage::Copy { .. } => "copy",
        BackupMessage::Delta { .. } => "delta",
        BackupMessage::Accessed { .. } => "accessed",
        BackupMessage::Drop { .. } => "drop",
        BackupMessage::Expired { .. } => "expired",
        BackupMessage::ChangeId { .. } => "change-id",
        BackupMessage::GetCopy { .. } => "get-copy",
        BackupMessage::Fetch { .. } => "fetch",
        BackupMessage::Fetched { .. } => "fetched",
        BackupMessage::NewPrimary { .. } => "new-primary",
        BackupMessage::CopyAck { .. } => "copy-ack",
        BackupMessage::Orphan { .. } => "orphan",
        BackupMessage::Reconcile { .. } => "reconcile",
        BackupMessage::Digest { .. } => "digest",
    }
}

/// The sessions a message is about.
/// A session id as traces print it: its first 6 characters (as the kill -9 loop's user traces
/// print it) and its route (the member that made it).
fn short_id(id: &SessionId) -> String {
    let s = id.as_str();
    let route = id.route().map(|r| format!(".{r}")).unwrap_or_default();
    format!("{}{route}", &s[..s.len().min(6)])
}

fn ids_of(msg: &BackupMessage) -> Vec<SessionId> {
    match msg {
        BackupMessage::Copy { state, .. }
        | BackupMessage::Orphan { state, .. }
        | BackupMessage::Reconcile { state, .. } => vec![state.id.clone()],
        BackupMessage::Digest { entries, ended } => entries
            .iter()
            .map(|e| e.0.clone())
            .chain(ended.iter().map(|e| e.0.clone()))
            .collect(),
        BackupMessage::Delta { id, .. }
        | BackupMessage::Accessed { id, .. }
        | BackupMessage::Drop { id, .. }
        | BackupMessage::Expired { id, .. }
        | BackupMessage::CopyAck { id, .. }
        | BackupMessage::GetCopy { id }
        | BackupMessage::Fetch { id }
        | BackupMessage::Fetched { id, .. }
        | BackupMessage::NewPrimary { id, .. } => vec![id.clone()],
        BackupMessage::ChangeId { old, new, .. } => vec![old.clone(), new.clone()],
    }
}

/// The change a message makes on its receiver, if the sender waits for an ack.
fn change_of(msg: &BackupMessage) -> Option<Change> {
    match msg {
        BackupMessage::Copy { state, .. } => Some(Change::Version(state.id.clone(), state.version)),
        BackupMessage::Delta { id, version, .. } => Some(Change::Version(id.clone(), *version)),
        BackupMessage::Expired { id, .. } => Some(Change::Ended(id.clone())),
        BackupMessage::ChangeId { new, old, .. } => Some(Change::Renamed(new.clone(), old.clone())),
        BackupMessage::NewPrimary { id, .. } => Some(Change::Moved(id.clone())),
        // Under sync-ack every send waits for its ack; these only need to arrive.
        BackupMessage::Drop { id, .. } | BackupMessage::Accessed { id, .. } => {
            Some(Change::Delivered(id.clone()))
        }
        _ => None,
    }
}

/// A simulated member running the manager's core ([`ManagerCore`] over a [`BackupCore`]), the
/// same one production runs: requests begin and end through it, fetches wait for its verdict,
/// and a message's sync-ack verdict is the one it gives.
pub struct BackupNode {
    pub id: NodeId,
    pub cfg: BackupSimConfig,
    world: SharedWorld,
    pub mgr: ManagerCore,
    /// Fetches waiting for the manager's verdict, and the verdicts given (per session).
    waits: BTreeMap<Token, SessionId>,
    fetched: BTreeMap<SessionId, Option<Session>>,
    frames: Frames,
    /// Sends waiting for acks, and acks owed once their change is in the core.
    acks: Acks<Change>,
    /// Ids this node ended or moved away from (mirrors the core's tombstones).
    ended_here: HashSet<SessionId>,
    /// Old id → new id, as this node applied them.
    renamed_here: HashMap<SessionId, SessionId>,
    /// Acks awaited for the promotion that ended a fetch, per session.
    moves: HashMap<SessionId, Vec<u64>>,
    /// The view and member list the core was last given (`set_members`).
    known: (BTreeSet<NodeId>, Vec<MemberId>),
    trace: bool,
    /// [`RESET_FAILS_ENV`] is set.
    reset_fails: bool,
    pub journal: Journal,
    /// The member's failure detector, when its view comes from one ([`BackupNode::detected`])
    /// rather than from the test.
    pub detector: Option<Detector>,
}

impl BackupNode {
    /// A node whose session ids come from `rng` (the run's generator), so a seed replays them.
    pub fn new(
        id: NodeId,
        cfg: BackupSimConfig,
        world: SharedWorld,
        rng: &mut SimRng,
    ) -> BackupNode {
        let core = BackupCore::new(
            cfg.core.clone(),
            sim_member(id).id,
            &format!("node{}", id.0),
        );
        let mcfg = ManagerConfig {
            kind: ManagerKind::Backup,
            backups: cfg.core.backups,
            max_inactive: cfg.core.max_inactive,
            rpc_timeout: cfg.rpc_timeout,
            expire_frequency: cfg.reaper.unwrap_or(Duration::MAX),
            notify_listeners_on_replication: true,
            rebind_route: cfg.rebind,
            ..ManagerConfig::default()
        };
        let mut mgr =
            ManagerCore::with_core("/app", Core::Backup(core), &mcfg, SendOptions::SYNC_ACK);
        mgr.set_id_source(SimIds::from_run(rng));
        let mut frames = Frames::default();
        frames.two_lanes = cfg.two_lanes;
        BackupNode {
            id,
            cfg,
            world,
            mgr,
            waits: BTreeMap::new(),
            fetched: BTreeMap::new(),
            frames,
            acks: Acks::default(),
            ended_here: HashSet::new(),
            renamed_here: HashMap::new(),
            moves: HashMap::new(),
            known: (BTreeSet::new(), Vec::new()),
            trace: std::env::var_os(TRACE_ENV).is_some(),
            reset_fails: std::env::var_os(RESET_FAILS_ENV).is_some(),
            journal: Journal::default(),
            detector: None,
        }
    }

    /// This node with the real failure detector embedded (see `detected`): its view is the
    /// detector's member list only, fed to the manager as production's cluster listener does;
    /// the test no longer sets it.
    pub fn detected(mut self, cfg: &MembershipSimConfig, rng: &mut SimRng) -> BackupNode {
        self.detector = Some(Detector::new(self.id, cfg, rng));
        self
    }

    /// The detector's announcements, in order, as `cluster.rs`'s listener hands them to the
    /// manager: the view becomes the member list after each, and an addition is
    /// `member_added(m)` then `members_changed`, a disappearance `members_changed`.
    fn view_events(&mut self, events: Vec<ViewEvent>, ctx: &mut Ctx<'_>) {
        for e in events {
            let mut view = e.list().clone();
            view.insert(self.id);
            self.world.borrow_mut().views.insert(self.id, view);
            if let ViewEvent::Added { member, .. } = e {
                let ready = self.mgr.member_added(&sim_member(member), now_ms(ctx));
                self.perform(ready, false, ctx);
            }
            self.view_changed(ctx);
        }
    }

    /// A connection from `from` was accepted; with [`RESET_FAILS_ENV`], a new life of `from`
    /// makes this node forget its connections to the old one (`Frames::accept_from`).
    fn accept(&mut self, conn: ConnId, from: NodeId) {
        if self.reset_fails {
            let life = self.world.borrow().lives.get(&from).copied().unwrap_or(0);
            self.frames.accept_from(conn, from, life);
        } else {
            self.frames.accept(conn, from);
        }
    }

    fn frames_bytes(&mut self, conn: ConnId, bytes: &[u8], ctx: &mut Ctx<'_>) {
        let Some((from, wires)) = self.frames.read(self.id, conn, bytes) else {
            return;
        };
        for wire in wires {
            self.receive(from, wire, ctx);
        }
    }

    pub fn member(&self) -> MemberId {
        sim_member(self.id).id
    }

    /// The replication core under the manager, for reads.
    pub fn core(&self) -> &BackupCore {
        self.mgr.core().backup().expect("a BackupManager")
    }

    pub fn core_mut(&mut self) -> &mut BackupCore {
        self.mgr.core_mut().backup_mut().expect("a BackupManager")
    }

    /// Performs a batch the manager made, as the shell does: messages (`request`: made by a
    /// request, tracked as the application's changes), then verdicts, then events. Returns
    /// the request numbers of the messages.
    fn perform(&mut self, ready: Ready, request: bool, ctx: &mut Ctx<'_>) -> Vec<u64> {
        let lane = Lane::of(ready.options);
        let reqs = self.send_outs(backup_outs(ready.outs), request, lane, ctx);
        for (token, copy) in ready.verdicts {
            if let Some(id) = self.waits.remove(&token) {
                self.fetched.insert(id, copy);
            }
        }
        self.note_events(ready.events);
        reqs
    }

    /// The verdict of the fetch of `id` begun here, once given: `Some(None)` when the request
    /// gets no session.
    pub fn take_fetched(&mut self, id: &SessionId) -> Option<Option<Session>> {
        self.fetched.remove(id)
    }

    /// The other members, as this node sees them.
    pub fn view(&self) -> BTreeSet<NodeId> {
        view_of(&self.world.borrow().views, self.id)
    }

    /// Every member this node sees, itself included.
    pub fn members(&self) -> Vec<MemberId> {
        let mut m: Vec<MemberId> = self.view().into_iter().map(|n| sim_member(n).id).collect();
        m.push(self.member());
        m
    }

    /// This node's copy of `id`: version and attributes.
    pub fn copy(&self, id: &SessionId) -> Option<(u64, BTreeMap<String, Vec<u8>>)> {
        self.core()
            .session(id)
            .map(|s| (s.version(), s.state().attributes.to_map()))
    }

    /// Whether every request number of `ticket` is settled (acknowledged or failed).
    pub fn settled(&self, ticket: &[u64]) -> bool {
        ticket.iter().all(|r| !self.acks.waiting.contains_key(r))
    }

    /// Whether a send of `ticket` failed (refused, or a member left before acking).
    pub fn failed(&self, ticket: &[u64]) -> bool {
        ticket.iter().any(|r| self.acks.has_failed(*r))
    }

    /// Tracked sends still waiting for acks.
    pub fn unsettled(&self) -> usize {
        self.acks.waiting.len()
    }

    /// Tracked sends not made by requests (re-placement, failover, answers) still waiting.
    pub fn unsettled_background(&self) -> usize {
        self.acks.waiting.values().filter(|w| !w.request).count()
    }

    /// Acks this node still owes.
    pub fn owed(&self) -> usize {
        self.acks.owed()
    }

    /// The acks this node still owes, and the sends it waits for, described.
    pub fn waiting_for(&self) -> Vec<String> {
        let owed = self
            .acks
            .owed_list()
            .map(|(to, c)| format!("owes {to} {c:?}"));
        let waits = self.acks.waiting.values();
        owed.chain(waits.map(|w| format!("waits for {:?}: {:?}", w.pending, w.change)))
            .collect()
    }

    /// Takes the acks awaited for the promotion a fetch of `id` ended with.
    pub fn take_move(&mut self, id: &SessionId) -> Vec<u64> {
        self.moves.remove(id).unwrap_or_default()
    }
    /// The shell's step after a request's begin ([`ManagerCore::rebind_request`]): the copy
    /// may take this node's route; the rename goes out before the request's changes. Returns
    /// the requests whose acks the user waits for.
    fn rebind(&mut self, copy: &mut Session, ctx: &mut Ctx<'_>) -> Vec<u64> {
        let old = copy.id().clone();
        match self.mgr.rebind_request(copy) {
            Ok(Some(ready)) => {
                self.renamed(&old, copy.id());
                self.perform(ready, true, ctx)
            }
            Ok(None) => Vec::new(),
            Err(e) => panic!("{}: rebinding {old}: {e}", self.id),
        }
    }

    /// This node renamed `old` to `new`: the oracle learns it.
    fn renamed(&mut self, old: &SessionId, new: &SessionId) {
        {
            let mut w = self.world.borrow_mut();
            w.oracle.renamed.insert(old.clone(), new.clone());
            w.oracle.previous.insert(new.clone(), old.clone());
        }
        self.touch(old);
        self.touch(new);
    }

    /// A clean stop without `expire_sessions_on_shutdown`, as `SimpleTcpCluster::stop` makes
    /// it: the manager ends its sessions here only, then the node goes on handling what it
    /// receives until the test stops it (production stops the channel right after, but
    /// messages already received are still handled meanwhile).
    pub fn stop_cleanly(&mut self, ctx: &mut Ctx<'_>) {
        self.world.borrow_mut().leaving.insert(self.id);
        let ready = self.mgr.expire_all(false);
        self.perform(ready, false, ctx);
    }

    /// A new session, then `ops` on it, in one request.
    pub fn create(&mut self, ctx: &mut Ctx<'_>, ops: &[Op]) -> (Served, Vec<u64>) {
        let (copy, ready) = match self.mgr.create(now_ms(ctx)) {
            Ok(r) => r,
            Err(e) => panic!("{}: no session id: {e}", self.id),
        };
        self.perform(ready, true, ctx);
        let id = copy.id().clone();
        self.request(ctx, &id, ops, Some(copy))
    }

    /// One request on a session this node serves: `ops` on the request's working copy (the
    /// one the manager gave it: `copy`, or the one it gives now), then the request's end.
    /// Returns what became of the session and the request numbers whose acks the user waits
    /// for.
    pub fn request(
        &mut self,
        ctx: &mut Ctx<'_>,
        id: &SessionId,
        ops: &[Op],
        copy: Option<Session>,
    ) -> (Served, Vec<u64>) {
        let copy = match copy {
            Some(c) => Some(c),
            None if self.core().is_primary(id) => match self.mgr.begin_request(id, now_ms(ctx)) {
                (Begin::Now(s), ready) => {
                    self.perform(ready, true, ctx);
                    s
                }
                (Begin::Wait { .. }, _) => panic!("{}: a primary fetched {id}", self.id),
            },
            None => None,
        };
        let Some(mut copy) = copy else {
            return (Served::Missing, Vec::new());
        };
        copy.take_pending();
        let mut ticket = self.rebind(&mut copy, ctx);
        let mut id = copy.id().clone();
        // A change of id the manager refused (the session moved to another member's claim
        // while the request waited for its fetch, e.g. seed 365 with the lanes failing sends
        // at a reset): the application sees `change_id() == None`, answers an error, and the
        // request still ends, as `SessionRequest::finish` would end it.
        let mut rename_refused = false;
        for op in ops {
            match op {
                Op::Set(_) | Op::Remove(_) | Op::Read | Op::MaxInactive(_) => {
                    let val = matches!(op, Op::Set(_)).then(|| self.next_val());
                    edit(self.id, &id, Some(&mut copy), op, val);
                }
                Op::ChangeId => {
                    let (new, ready) = match self.mgr.change_id(&id) {
                        Ok(Some(r)) => r,
                        Ok(None) => {
                            rename_refused = true;
                            break;
                        }
                        Err(e) => panic!("{}: change of id of {id}: {e}", self.id),
                    };
                    self.renamed(&id, &new);
                    copy.change_id(new.clone());
                    ticket.extend(self.perform(ready, true, ctx));
                    id = new;
                }
                Op::Invalidate => {
                    if self.trace {
                        eprintln!("{:?} {}: invalidate {id}", ctx.now(), self.id);
                    }
                    // The Servlet way: the request's session, ended when the request ends.
                    copy.invalidate();
                    let (ended, ready) = self.mgr.end_request(copy, true, now_ms(ctx));
                    if ended.is_err() {
                        self.journal.refused_ends += 1;
                        return (Served::Live(id), ticket);
                    }
                    self.world.borrow_mut().oracle.ended.insert(id.clone());
                    self.ended_here.insert(id.clone());
                    self.touch(&id);
                    ticket.extend(self.perform(ready, true, ctx));
                    return (Served::Ended, ticket);
                }
            }
        }
        let (ended, mut ready) = self.mgr.end_request(copy, true, now_ms(ctx));
        if ended.is_err() {
            // The session moved to a higher claim between the fetch's verdict and the end of
            // the request: the manager refused the end; the user's request failed.
            self.journal.refused_ends += 1;
            return (Served::Live(id), ticket);
        }
        let outs = backup_outs(std::mem::take(&mut ready.outs));
        self.check_fanout(&id, &outs);
        if let Some(s) = self.core().session(&id) {
            let (version, attrs) = (s.version(), s.state().attributes.to_map());
            self.world
                .borrow_mut()
                .record(self.id, &id, version, &attrs);
        }
        self.touch(&id);
        ticket.extend(self.send_outs(outs, true, Lane::of(ready.options), ctx));
        ticket.extend(self.perform(ready, true, ctx));
        self.journal.refused_ends += u64::from(rename_refused);
        (Served::Live(id), ticket)
    }

    /// A request reached this node, which does not serve `id`: the manager takes the session
    /// over or asks the others, and the request waits for its verdict ([`Self::take_fetched`]),
    /// at the latest until its deadline (a timer ticks the manager then).
    pub fn fetch(&mut self, ctx: &mut Ctx<'_>, id: &SessionId) {
        self.journal.fetches += 1;
        let now = now_ms(ctx);
        let (begin, ready) = self.mgr.begin_request(id, now);
        if self.trace {
            eprintln!(
                "{:?} {}: request for {id} begins: {}",
                ctx.now(),
                self.id,
                match &begin {
                    Begin::Now(Some(_)) => "served at once".to_string(),
                    Begin::Now(None) => "no session".to_string(),
                    Begin::Wait { deadline_ms, .. } => format!("waits until {deadline_ms} ms"),
                }
            );
        }
        let reqs = self.perform(ready, false, ctx);
        match begin {
            Begin::Now(copy) => {
                if copy.is_some() && !reqs.is_empty() {
                    self.journal.fetched += 1;
                    self.moves.entry(id.clone()).or_default().extend(reqs);
                }
                self.fetched.insert(id.clone(), copy);
            }
            Begin::Wait { token, deadline_ms } => {
                self.waits.insert(token, id.clone());
                ctx.set_timer(Duration::from_millis(deadline_ms.saturating_sub(now)), TICK);
            }
        }
    }

    /// Time passed: the manager ends fetches past their deadline (serving the best copy
    /// answered or held, if any) and expires idle sessions when due.
    fn tick(&mut self, ctx: &mut Ctx<'_>) {
        let mut ready = self.mgr.tick(now_ms(ctx));
        let ended_fetches: Vec<SessionId> = ready
            .verdicts
            .iter()
            .filter(|(_, s)| s.is_some())
            .filter_map(|(t, _)| self.waits.get(t).cloned())
            .collect();
        for e in &ready.events {
            if let SessionEvent::Destroyed(id) = e {
                self.touch(id);
            }
        }
        let outs = backup_outs(std::mem::take(&mut ready.outs));
        // Only a primary's expiry is the application's decision; its Expired goes out.
        for o in &outs {
            if let BackupMessage::Expired { id, .. } = &o.msg {
                self.world.borrow_mut().oracle.ended.insert(id.clone());
            }
        }
        let reqs = self.send_outs(outs, true, Lane::of(ready.options), ctx);
        if let [id] = &ended_fetches[..] {
            if !reqs.is_empty() {
                self.journal.fetched += 1;
                self.touch(id);
                self.moves.entry(id.clone()).or_default().extend(reqs);
            }
        }
        self.perform(ready, true, ctx);
    }

    /// The test changed this node's view (the failure detector's verdict, or a join): the core
    /// re-places and fails over; sends still waiting for members that left have failed.
    pub fn view_changed(&mut self, ctx: &mut Ctx<'_>) {
        let view = self.view();
        self.world.borrow_mut().oracle.failed += self.acks.fail_outside(&view);
        self.frames.keep_only(&view);
        self.known = (view, self.members());
        let ready = self
            .mgr
            .members_changed(&sim_members(&self.known.0, self.id), now_ms(ctx));
        for o in &ready.outs {
            if let Payload::Backup(msg) = &o.msg {
                for id in ids_of(msg) {
                    self.touch(&id);
                }
            }
        }
        self.perform(ready, false, ctx);
    }

    /// Every change a request makes goes to exactly the session's backups: `min(backups,
    /// other members)` distinct members, which are its placement. (After a change of id the
    /// core keeps the old id's backups: counted in `Oracle::misplaced`, see the ignored test
    /// `after_a_change_of_id_the_backups_are_the_new_ids_placement`.)
    fn check_fanout(&mut self, id: &SessionId, outs: &[Out]) {
        let Some(first) = outs.first() else { return };
        let k = kind(&first.msg);
        let dests: Vec<MemberId> = outs
            .iter()
            .filter_map(|o| match o.dest {
                Dest::Member(m) => Some(m),
                Dest::All => None,
            })
            .collect();
        let distinct: BTreeSet<MemberId> = dests.iter().copied().collect();
        let want_n = self.cfg.core.backups.min(self.known.0.len());
        let listed: BTreeSet<MemberId> = self
            .core()
            .backups_of(id)
            .unwrap_or_default()
            .iter()
            .copied()
            .collect();
        let placed: BTreeSet<MemberId> =
            placement(id, self.member(), &self.known.1, self.cfg.core.backups)
                .into_iter()
                .collect();
        let names = |m: &BTreeSet<MemberId>| m.iter().filter_map(node_of).collect::<Vec<_>>();
        let mut w = self.world.borrow_mut();
        *w.oracle.fanout.entry((k, outs.len())).or_default() += 1;
        if outs.len() != want_n || distinct.len() != outs.len() || distinct != listed {
            let msg = format!(
                "{}: a {k} of {id} went to {} members {:?}, want the {want_n} backups {:?}",
                self.id,
                outs.len(),
                dests.iter().filter_map(node_of).collect::<Vec<_>>(),
                names(&listed)
            );
            w.oracle.violations.push(msg);
        } else if listed != placed {
            if w.oracle.previous.contains_key(id) {
                w.oracle.misplaced.insert(id.clone());
            } else {
                let msg = format!(
                    "{}: {id} has backups {:?}, its placement is {:?}",
                    self.id,
                    names(&listed),
                    names(&placed)
                );
                w.oracle.violations.push(msg);
            }
        }
    }

    fn next_val(&mut self) -> Val {
        next_val(&mut self.world.borrow_mut().oracle.counter, self.id)
    }

    fn touch(&mut self, id: &SessionId) {
        self.journal.touched.push((self.journal.life, id.clone()));
    }

    fn note_events(&mut self, events: Vec<SessionEvent>) {
        let life = self.journal.life;
        for e in &events {
            match e {
                SessionEvent::Destroyed(id) => {
                    self.ended_here.insert(id.clone());
                }
                SessionEvent::IdChanged { old, new } => {
                    self.ended_here.insert(old.clone());
                    self.renamed_here.insert(old.clone(), new.clone());
                }
                _ => {}
            }
        }
        self.journal
            .events
            .extend(events.into_iter().map(|e| (life, e)));
    }

    /// Whether `change` is in this node's core.
    fn has(&self, change: &Change) -> bool {
        match change {
            Change::Version(id, v) => {
                let mut id = id;
                for _ in 0..=self.renamed_here.len() {
                    if self.core().session(id).is_some_and(|s| s.version() >= *v) {
                        return true;
                    }
                    match self.renamed_here.get(id) {
                        Some(next) => id = next,
                        None => break,
                    }
                }
                self.ended_here.contains(id)
            }
            Change::Ended(id) => self.core().session(id).is_none(),
            Change::Renamed(new, old) => {
                self.core().session(new).is_some()
                    || self.ended_here.contains(new)
                    || self.core().session(old).is_none()
            }
            Change::Moved(id) => !self.core().is_primary(id),
            Change::Delivered(_) => true,
        }
    }

    /// Sends `outs`; each change gets one request number for all the members it goes to.
    /// `request`: made by a request (the application's change). Returns the request numbers.
    fn send_outs(
        &mut self,
        outs: Vec<Out>,
        request: bool,
        lane: Lane,
        ctx: &mut Ctx<'_>,
    ) -> Vec<u64> {
        let mut reqs: Vec<(Change, u64)> = Vec::new();
        let mut made = Vec::new();
        for out in outs {
            let k = kind(&out.msg);
            if self.trace {
                let ids: Vec<String> = ids_of(&out.msg).iter().map(short_id).collect();
                eprintln!(
                    "{:?} {} -> {:?}: {k} {ids:?} (request {request})",
                    ctx.now(),
                    self.id,
                    out.dest
                );
            }
            let targets: BTreeSet<NodeId> = match out.dest {
                Dest::All => self.known.0.clone(),
                Dest::Member(m) => match node_of(&m) {
                    Some(n) => [n].into_iter().collect(),
                    None => panic!("{}: message for unknown member {m}", self.id),
                },
            };
            let req = match change_of(&out.msg) {
                Some(change) => {
                    let req = match reqs.iter().find(|(c, _)| *c == change) {
                        Some((_, r)) => *r,
                        None => {
                            let r = self.acks.track(change.clone(), BTreeSet::new(), request);
                            reqs.push((change, r));
                            made.push(r);
                            r
                        }
                    };
                    if let Some(w) = self.acks.waiting.get_mut(&req) {
                        w.pending.extend(targets.iter().copied());
                    }
                    req
                }
                None => 0,
            };
            let body = encode_body(&Wire::Msg { req, msg: out.msg });
            for t in targets {
                *self.journal.sent.entry(k).or_default() += 1;
                self.journal.bytes += self.frames.send_tracked(self.id, t, lane, req, &body, ctx);
            }
        }
        for r in &made {
            self.settle(*r, ctx.now());
        }
        made
    }

    fn send_body(&mut self, to: NodeId, body: &[u8], ctx: &mut Ctx<'_>) {
        self.journal.bytes += self.frames.send(self.id, to, body, ctx);
    }

    /// Records `req` as acknowledged if every member it was sent to acked it.
    fn settle(&mut self, req: u64, now: Duration) {
        if let Some(w) = self.acks.take_settled(req) {
            self.world.borrow_mut().note_acked(Acked {
                origin: self.id,
                at: now,
                change: w.change,
                by: w.by,
                request: w.request,
            });
        }
    }

    fn receive(&mut self, from: NodeId, wire: Wire<BackupMessage>, ctx: &mut Ctx<'_>) {
        match wire {
            Wire::Ack { req } => {
                *self.journal.received.entry("ack").or_default() += 1;
                let life = self.world.borrow().lives.get(&from).copied().unwrap_or(0);
                self.frames.acked(from, req);
                self.acks.acked(req, from, life);
                self.settle(req, ctx.now());
            }
            Wire::Refused { req } => {
                *self.journal.received.entry("refused").or_default() += 1;
                self.frames.acked(from, req);
                if self.acks.refuse(req) {
                    self.world.borrow_mut().oracle.failed += 1;
                }
            }
            Wire::Msg { req, msg } => self.apply(from, req, msg, ctx),
        }
    }

    /// Applies a message from `from`, sends what the core answers, then the acks owed.
    fn apply(&mut self, from: NodeId, req: u64, msg: BackupMessage, ctx: &mut Ctx<'_>) {
        let k = kind(&msg);
        *self.journal.received.entry(k).or_default() += 1;
        if let BackupMessage::Delta { id, version, .. } = &msg {
            let mut w = self.world.borrow_mut();
            *w.oracle
                .delta_receipts
                .entry((id.clone(), *version))
                .or_default() += 1;
        }
        if self.trace {
            let v = match &msg {
                BackupMessage::Delta { base, version, .. } => format!(" v{base}->v{version}"),
                BackupMessage::Copy { state, .. } => format!(" v{}", state.version),
                BackupMessage::NewPrimary { stamp, .. } => format!(" v{}", stamp.version),
                BackupMessage::Reconcile { state, .. } => format!(" v{}", state.version),
                _ => String::new(),
            };
            let ids = ids_of(&msg);
            let short: Vec<String> = ids.iter().map(short_id).collect();
            let e = msg
                .claim()
                .map(|c| format!(" e{}", c.1))
                .unwrap_or_default();
            eprintln!("{:?} {} <- {from}: {k} {short:?}{v}{e}", ctx.now(), self.id);
        }
        let fetched = match &msg {
            BackupMessage::Fetched { id, .. } => Some(id.clone()),
            _ => None,
        };
        let ids = ids_of(&msg);
        let (ready, verdict) = self.mgr.receive(
            sim_member(from).id,
            &Payload::Backup(msg.clone()),
            now_ms(ctx),
        );
        if let BackupMessage::Reconcile { state, .. } = &msg {
            if let Some(s) = self
                .core()
                .session(&state.id)
                .filter(|_| self.core().is_primary(&state.id))
            {
                let (v, attrs) = (s.version(), s.state().attributes.to_map());
                self.world
                    .borrow_mut()
                    .record_reconciled(self.id, &state.id, v, &attrs);
            }
        }
        // Mirror the ids the core buried (a superseded sender's end is ignored).
        if let BackupMessage::Expired { id, .. } | BackupMessage::ChangeId { old: id, .. } = &msg {
            if self.core().has_ended(id) {
                self.ended_here.insert(id.clone());
            }
        }
        for id in &ids {
            self.touch(id);
        }
        match fetched {
            Some(id) if !ready.outs.is_empty() => {
                self.journal.fetched += 1;
                let reqs = self.perform(ready, true, ctx);
                self.moves.entry(id).or_default().extend(reqs);
            }
            _ => {
                self.perform(ready, false, ctx);
            }
        }
        if req > 0 {
            // The manager's verdict is what a synchronized-ack sender gets: a refusal (the
            // change was not applied: a gap, or the sender no longer serves the session) fails
            // its send, as a real listener's error does.
            match change_of(&msg) {
                _ if verdict.is_err() => {
                    let body = encode_body(&Wire::<BackupMessage>::Refused { req });
                    *self.journal.sent.entry("refused").or_default() += 1;
                    self.send_body(from, &body, ctx);
                }
                Some(change) => self.acks.owe(from, req, change),
                None => self.send_ack(from, req, ctx),
            }
        }
        self.pay_acks(ctx);
    }

    fn send_ack(&mut self, to: NodeId, req: u64, ctx: &mut Ctx<'_>) {
        let body = encode_body(&Wire::<BackupMessage>::Ack { req });
        *self.journal.sent.entry("ack").or_default() += 1;
        self.send_body(to, &body, ctx);
    }

    /// Sends every owed ack whose change is now in the core.
    fn pay_acks(&mut self, ctx: &mut Ctx<'_>) {
        // `has` reads the core, not the acks: take them out while it looks.
        let mut acks = std::mem::take(&mut self.acks);
        let due = acks.take_due(|c| self.has(c));
        self.acks = acks;
        for o in due {
            self.journal.late_acks += u64::from(o.deferred);
            self.send_ack(o.to, o.req, ctx);
        }
    }
}

impl Node for BackupNode {
    fn on_start(&mut self, ctx: &mut Ctx<'_>) {
        if self.detector.is_some() {
            // A (re)started member knows nobody until its detector hears from them.
            let me: BTreeSet<NodeId> = [self.id].into_iter().collect();
            self.world.borrow_mut().views.insert(self.id, me);
        }
        self.journal.life += 1;
        self.world
            .borrow_mut()
            .lives
            .insert(self.id, self.journal.life);
        if let Some(period) = self.cfg.reaper {
            ctx.set_timer(period, REAPER);
        }
        let ready = self.mgr.started(self.member(), None, now_ms(ctx));
        self.perform(ready, false, ctx);
        self.known = (self.view(), self.members());
        let ready = self
            .mgr
            .members_changed(&sim_members(&self.known.0, self.id), now_ms(ctx));
        self.perform(ready, false, ctx);
        if let Some(events) = self.detector.as_mut().map(|d| d.on_start(ctx)) {
            self.view_events(events, ctx);
        }
    }

    fn on_accept(&mut self, conn: ConnId, from: NodeId, _ctx: &mut Ctx<'_>) {
        match &mut self.detector {
            Some(d) => d.on_accept(conn, from),
            None => {
                self.accept(conn, from);
            }
        }
    }

    fn on_bytes(&mut self, conn: ConnId, bytes: &[u8], ctx: &mut Ctx<'_>) {
        match self.detector.as_mut().map(|d| d.on_bytes(conn, bytes, ctx)) {
            Some(Routed::Taken(events)) => self.view_events(events, ctx),
            Some(Routed::Accepted { from, bytes }) => {
                self.accept(conn, from);
                self.frames_bytes(conn, &bytes, ctx);
            }
            Some(Routed::Pass) | None => self.frames_bytes(conn, bytes, ctx),
        }
    }

    fn on_closed(&mut self, conn: ConnId, why: CloseReason, ctx: &mut Ctx<'_>) {
        let reset_fails = self.reset_fails;
        if let Some(events) = self
            .detector
            .as_mut()
            .and_then(|d| d.on_closed(conn, why, ctx))
        {
            self.view_events(events, ctx);
            return;
        }
        // The synchronized-ack sends written on it that its destination had not acked failed
        // with it, as production's sender fails them (a BackupManager send has one destination
        // in nearly every case: it fails at once, as a refusal does).
        let Some((to, reqs)) = self.frames.closed(conn).filter(|_| reset_fails) else {
            return;
        };
        for req in reqs {
            if self.acks.fail_at_once_to(req, to) {
                self.world.borrow_mut().oracle.failed += 1;
            }
        }
    }

    fn on_datagram(&mut self, from: NodeId, bytes: &[u8], ctx: &mut Ctx<'_>) {
        if let Some(events) = self
            .detector
            .as_mut()
            .map(|d| d.on_datagram(from, bytes, ctx))
        {
            self.view_events(events, ctx);
        }
    }

    fn on_timer(&mut self, token: u64, ctx: &mut Ctx<'_>) {
        if let Some(events) = self.detector.as_mut().and_then(|d| d.on_timer(token, ctx)) {
            self.view_events(events, ctx);
            return;
        }
        match token {
            REAPER => {
                self.tick(ctx);
                if let Some(period) = self.cfg.reaper {
                    ctx.set_timer(period, REAPER);
                }
            }
            TICK => self.tick(ctx),
            _ => {}
        }
    }

    fn restarted(&self, rng: &mut SimRng) -> BackupNode {
        let mut n = BackupNode::new(self.id, self.cfg.clone(), self.world.clone(), rng);
        n.journal = self.journal.clone();
        n.detector = self.detector.as_ref().map(|d| d.restarted(rng));
        n
    }
}

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
///   does still owes it a copy). While a partition heals (`World::healing`), not for a session
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
                let has_copy = chain.iter().any(|c| sim.node(n).core().session(c).is_some());
                // A primary still handing the session over to it will send its copy.
                let me = sim_member(n).id;
                let counted_on = sim.node_ids().filter(|p| sim.is_up(*p)).any(|p| {
                    chain.iter().any(|c| {
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
