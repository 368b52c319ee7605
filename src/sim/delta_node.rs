//! A simulated member running the DeltaManager as production runs it: the manager's core
//! ([`ManagerCore`] over a [`DeltaCore`]) fed the inputs the shell feeds it (a request's begin
//! and end on a working copy, a received message, the member list, `tick`), its batches
//! performed in the shell's order. Every message goes to its destination(s) as a postcard body
//! in a real data frame, over one FIFO connection per destination (order is kept per
//! destination, as the channel keeps it for asynchronous sends, and a reset loses what was in
//! flight, as asynchronous sending allows; a synchronized-ack send the reset cut before its
//! ack fails for that destination, as production's sender fails it). A member seen to leave,
//! or whose new life connects, has its old connections forgotten, as the channel's sender
//! forgets them.
//!
//! Around the manager, for the tests:
//! - Acknowledged changes, modelled on the sync-ack mode: each change a node sends to every
//!   member carries a request number; a receiver whose manager refused it (a gap: it asked for
//!   the session) answers `Refused`, as a listener's error fails a real sync-ack send; otherwise
//!   it acks once the change is in its store; the originator records the change as acknowledged
//!   when every current member acked, and a refused one (or one whose connection to a
//!   member broke before that member acked) as failed once every other member answered (a
//!   real send collects every destination's answer before it returns).
//! - A shuffler ([`Chaos`]) that delivers some received messages twice and some late, standing
//!   in for Tomcat's reordering dispatch threads and for retries that duplicate.
//! - A reaper timer that ticks the manager (which expires what is due).
//! - A shared [`World`]: each node's membership view (set by the test, as the membership layer
//!   would) and the [`Oracle`] of every state an origin produced, which the invariants read.
//!
//! Session ids come from a generator seeded by the run ([`SimIds`]) and the core lists sessions
//! in id order, so a seed replays exactly, trace hash included. Set [`TRACE_ENV`] to print every
//! message applied.

use super::frame_lanes::{LaneModel, LaneStats};
use super::frame_node::{
    chain, count, edit, next_val, view_of, Acks, EndedSeen, Frames, Lane, Wire,
};
use super::lane_node::{node_of, sim_member, sim_members};
use super::net::{CloseReason, ConnId, NodeId};
use super::rng::SimIds;
use super::{Ctx, Node, Sim, SimRng};
use crate::member::MemberId;
use crate::options::SendOptions;
use crate::session::config::{ManagerConfig, ManagerKind, RebindRoute};
use crate::session::engine::{Core, Payload};
use crate::session::manager_core::{Begin, ManagerCore, Ready, ServedElsewhere};
use crate::session::replica::DigestEntry;
use crate::session::{
    DeltaConfig, DeltaCore, Dest, Out, Session, SessionEvent, SessionId, SessionMessage,
};
use crate::wire::encode_body;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::rc::Rc;
use std::time::Duration;

/// Set (to anything) to print every message each node applies, with the first six characters
/// of the session ids.
pub const TRACE_ENV: &str = "TRIBECAST_DELTA_TRACE";
/// Wall-clock milliseconds at virtual time zero (the core takes ms since the epoch).
pub const EPOCH_MS: u64 = 1_700_000_000_000;
/// Timer token of the reaper; held messages use tokens from `HELD_BASE` on.
const REAPER: u64 = 1;
/// Timer token of the shell's ticks at the core's next deadline.
const TICK: u64 = 2;
/// Timer token of the donor's pump when chunks are paced ([`DeltaNode::pace_transfers`]).
const PUMP: u64 = 3;
const HELD_BASE: u64 = 1 << 32;

/// The core's clock: virtual time as ms since the epoch.
pub fn now_ms(ctx: &Ctx<'_>) -> u64 {
    EPOCH_MS + u64::try_from(ctx.now().as_millis()).unwrap_or(u64::MAX)
}

/// Every attribute value the workload stores: who wrote it and a run-wide counter, so a value
/// older than another is recognisable anywhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Val {
    pub node: u32,
    pub counter: u64,
}

impl Val {
    /// The value in an attribute's bytes (as `Session::set` wrote them).
    pub fn decode(bytes: &[u8]) -> Option<Val> {
        crate::session::attr::decode(bytes).ok()
    }
}

/// Received messages delivered twice or late, at random.
#[derive(Clone, Debug)]
pub struct Chaos {
    /// Probability that a message is applied now and once more later.
    pub duplicate: f64,
    /// Probability that a message is held back and applied later instead of now.
    pub delay: f64,
    /// Longest hold.
    pub max_delay: Duration,
}

/// Settings of a simulated DeltaManager member.
#[derive(Clone, Debug, Default)]
pub struct DeltaSimConfig {
    pub core: DeltaConfig,
    /// Period of the reaper (Tomcat's `processExpiresFrequency` × background period); `None`:
    /// no reaper.
    pub reaper: Option<Duration>,
    pub chaos: Option<Chaos>,
    /// Production's two lanes per member (see [`Frames::two_lanes`]).
    pub two_lanes: bool,
    /// Route rebinding (`ManagerConfig::rebind_route`), done after each request's begin.
    pub rebind: RebindRoute,
    /// The shell's timer thread: the core is ticked at its next deadline (fetch and catch-up
    /// waits, the state transfer's re-ask), as `cluster.rs` does; the value is the re-ask
    /// delay (production's 2 s scaled to the run's compressed time). `None`: no such ticks.
    pub shell_ticks: Option<Duration>,
    /// Production's lane protocol under the messages (handshake, transport acks, duplicate
    /// filter, retries on a new connection, deadlines; see `frame_lanes`); `None`: one plain
    /// FIFO connection per destination, a reset fails what it carried.
    pub retry_lanes: Option<LaneModel>,
}

/// A change whose acknowledgement a node waits for, and what "applied" means for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The session at this version or newer (a later id after a change of id counts).
    Version(SessionId, u64),
    /// The session has ended.
    Ended(SessionId),
}

/// A change every member acknowledged.
#[derive(Clone, Debug)]
pub struct Acked {
    pub origin: NodeId,
    pub at: Duration,
    pub change: Change,
    /// The members that acked it, with their life (crash count) then.
    pub by: Vec<(NodeId, u64)>,
}

/// A session's attributes.
pub type Attrs = BTreeMap<String, Vec<u8>>;

/// A session's attributes as made at one version, by a node in one of its lives.
pub type Made = (BTreeMap<String, Vec<u8>>, NodeId, u64);

/// Every state an origin produced, and what became of its sessions. Written by the nodes as
/// they serve requests, read by the invariants and the tests.
#[derive(Default)]
pub struct Oracle {
    /// The attributes of each session at each version, as the node that made the version had
    /// them, and that node with its life.
    pub states: HashMap<(SessionId, u64), Made>,
    /// Two different states made for one (id, version) while the first one's maker lives: the
    /// session's history forked.
    pub forks: Vec<String>,
    /// Versions made again after their maker died before anyone else had them (its
    /// unacknowledged asynchronous change died with it).
    pub superseded: u64,
    /// The states those versions had before they were made again (the dead maker's): a copy
    /// that got one before its maker died may hold it only until it learns of the new one.
    pub superseded_states: HashMap<(SessionId, u64), Vec<Attrs>>,
    /// Old id → new id.
    pub renamed: HashMap<SessionId, SessionId>,
    /// New id → old id.
    pub previous: HashMap<SessionId, SessionId>,
    /// Ids invalidated or expired by a node's own decision.
    pub ended: HashSet<SessionId>,
    /// New ids of changes of id a member undid (a dead member's change of id that failed:
    /// the session went on under the old id).
    pub undone: HashSet<SessionId>,
    /// Values handed out so far.
    pub counter: u64,
    pub acked: Vec<Acked>,
    /// Each session's last request: when (ms) and its max inactive interval then (ms).
    pub last_request: HashMap<SessionId, (u64, u64)>,
    /// Sessions a reaper ended within their max inactive interval of a request.
    pub early: Vec<String>,
}

impl Oracle {
    /// The attributes made for the session at `version`, under `id` or an id it had before (a
    /// change of id keeps the version, so a lagging copy moved to the new id is still a state
    /// its origin made).
    pub fn state(&self, id: &SessionId, version: u64) -> Option<&BTreeMap<String, Vec<u8>>> {
        let mut id = id;
        for _ in 0..=self.previous.len() {
            if let Some((s, _, _)) = self.states.get(&(id.clone(), version)) {
                return Some(s);
            }
            id = self.previous.get(id)?;
        }
        None
    }

    /// Whether `attrs` is a state made for the session at `version` by a maker that died
    /// before the version was made again (under `id` or an id it had before).
    pub fn was_superseded(
        &self,
        id: &SessionId,
        version: u64,
        attrs: &BTreeMap<String, Vec<u8>>,
    ) -> bool {
        let mut id = id;
        for _ in 0..=self.previous.len() {
            let key = (id.clone(), version);
            if self
                .superseded_states
                .get(&key)
                .is_some_and(|v| v.contains(attrs))
            {
                return true;
            }
            match self.previous.get(id) {
                Some(p) => id = p,
                None => return false,
            }
        }
        false
    }

    /// `id` and the ids it was renamed to, in order.
    pub fn chain(&self, id: &SessionId) -> Vec<SessionId> {
        chain(&self.renamed, id)
    }
}

/// Attributes as `name=node:counter`, for messages.
pub fn show(attrs: &BTreeMap<String, Vec<u8>>) -> String {
    let parts: Vec<String> = attrs
        .iter()
        .map(|(k, v)| match Val::decode(v) {
            Some(v) => format!("{k}=n{}:{}", v.node, v.counter),
            None => format!("{k}={v:?}"),
        })
        .collect();
    format!("{{{}}}", parts.join(", "))
}

/// What the nodes share: membership views (the test plays the membership layer), the life of
/// each node, and the oracle.
#[derive(Default)]
pub struct World {
    /// Who each node believes the other members are.
    pub views: BTreeMap<NodeId, BTreeSet<NodeId>>,
    /// Each node's current life (1 on first start, +1 per restart).
    pub lives: BTreeMap<NodeId, u64>,
    /// Nodes crashed and not restarted (set by the test).
    pub down: BTreeSet<NodeId>,
    /// Nodes stopping cleanly ([`DeltaNode::stop_cleanly`]): their copies go by design, so
    /// the per-node invariants no longer read them.
    pub leaving: BTreeSet<NodeId>,
    pub oracle: Oracle,
    /// Set by partition tests: each side makes its own versions, and reconciliation may move a
    /// copy back or to a merged state, so the per-step history invariants stand down (the test
    /// checks the outcome).
    pub split_brain: bool,
}

impl World {
    /// Records the state `node` made for `id` at `version`. Another state for a known version
    /// is a fork, unless the node that made the first one has died since (then a survivor that
    /// held the first one would fail `copy-is-an-origin-state`).
    fn record(
        &mut self,
        node: NodeId,
        id: &SessionId,
        version: u64,
        attrs: &BTreeMap<String, Vec<u8>>,
    ) {
        let life = self.lives.get(&node).copied().unwrap_or(0);
        let key = (id.clone(), version);
        // The state made at this version under this id or one the session had before (a
        // change of id keeps the version).
        let mut prior = id;
        let mut known = self.oracle.states.get(&key);
        for _ in 0..self.oracle.previous.len() {
            if known.is_some() {
                break;
            }
            let Some(p) = self.oracle.previous.get(prior) else {
                break;
            };
            prior = p;
            known = self.oracle.states.get(&(prior.clone(), version));
        }
        match known {
            Some((known, ..)) if known == attrs => return,
            Some((known, maker, maker_life)) => {
                let dead = self.down.contains(maker)
                    || self.lives.get(maker).copied() != Some(*maker_life);
                if !dead {
                    let msg = format!(
                        "{id} version {version}: {} by {maker} and {} by {node}",
                        show(known),
                        show(attrs)
                    );
                    self.oracle.forks.push(msg);
                    return;
                }
                self.oracle.superseded += 1;
                let old = known.clone();
                let states = self.oracle.superseded_states.entry(key.clone());
                states.or_default().push(old);
            }
            None => {}
        }
        self.oracle.states.insert(key, (attrs.clone(), node, life));
    }
}

pub type SharedWorld = Rc<RefCell<World>>;

/// What a node did, kept across restarts (it is the test's record, not the node's memory).
#[derive(Clone, Debug, Default)]
pub struct Journal {
    pub life: u64,
    /// Sessions whose copy may have changed, with the life it happened in.
    pub touched: Vec<(u64, SessionId)>,
    /// Listener events, with the life they happened in.
    pub events: Vec<(u64, SessionEvent)>,
    pub sent: BTreeMap<&'static str, u64>,
    pub received: BTreeMap<&'static str, u64>,
    /// `GetSession` requests this node sent (gaps it noticed).
    pub resyncs: u64,
    pub duplicated: u64,
    pub delayed: u64,
    /// Acks sent only after a resync brought the change.
    pub late_acks: u64,
    /// Changes received while the state transfer was running.
    pub during_transfer: u64,
    /// Messages about a session this node had already ended.
    pub after_end: u64,
    /// Ids this node held at some point (any life).
    pub held_ever: BTreeSet<SessionId>,
    /// Sessions that came in a state-transfer chunk.
    pub transferred: u64,
    /// Requests the manager held for a copy it asked for (its own was behind).
    pub waited: u64,
    /// Synchronized-ack sends failed for one destination by a reset of their connection.
    pub failed_by_reset: u64,
}

impl Journal {
    pub fn sent(&self, kind: &str) -> u64 {
        count(&self.sent, kind)
    }
    pub fn received(&self, kind: &str) -> u64 {
        count(&self.received, kind)
    }
}

/// One step of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Store a fresh [`Val`] under the name.
    Set(&'static str),
    Remove(&'static str),
    /// Nothing but the access itself.
    Read,
    MaxInactive(Duration),
    /// Fixation protection: a new id, sent at once.
    ChangeId,
    Invalidate,
}

/// What became of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Served {
    /// The session lives on under this id.
    Live(SessionId),
    /// The request invalidated it, or it had ended here before.
    Ended,
    /// This node does not have it.
    Missing,
    /// The manager holds the request until a copy it asked for arrives (its own is known to
    /// be behind); the user tries again later.
    Waiting,
}

/// A simulated member running the DeltaManager as production runs it: the manager's core
/// ([`ManagerCore`] over a [`DeltaCore`]).
pub struct DeltaNode {
    pub id: NodeId,
    pub cfg: DeltaSimConfig,
    world: SharedWorld,
    pub mgr: ManagerCore,
    frames: Frames,
    /// Sends waiting for acks, and acks owed once their change is in the store.
    acks: Acks<Change>,
    held: BTreeMap<u64, (NodeId, u64, SessionMessage)>,
    next_token: u64,
    /// When the next shell tick is due (`shell_ticks`), if one is set.
    tick_at: Option<Duration>,
    /// Print every message applied ([`TRACE_ENV`]).
    trace: bool,
    pub journal: Journal,
    /// Request numbers of the tracked sends made since the test last emptied it (a request's
    /// ticket: the user's answer waits for them).
    pub ticket: Vec<u64>,
    /// The donor's pump: state-transfer chunks leave one per `gap` (the round trip of
    /// production's acknowledged chunk), to these joiners; `None`: all at once.
    pump: Option<Pump>,
}

/// A paced donor's transfers under way, and whether its clean stop ended them.
struct Pump {
    gap: Duration,
    to: BTreeSet<MemberId>,
    armed: bool,
    stopped: bool,
}

/// The message's kind, for counters.
pub fn kind(msg: &SessionMessage) -> &'static str {
    match msg {
        SessionMessage::Created(_) => "created",
        SessionMessage::Delta { .. } => "delta",
        SessionMessage::Accessed { .. } => "accessed",
        SessionMessage::Expired { .. } => "expired",
        SessionMessage::ChangeId { .. } => "change-id",
        SessionMessage::GetSession { .. } => "get-session",
        SessionMessage::State(_) => "state",
        SessionMessage::GetAllSessions => "get-all",
        SessionMessage::AllSessions { .. } => "all-sessions",
        SessionMessage::NoContextManager => "no-context-manager",
        SessionMessage::Digest(_) => "digest",
        SessionMessage::DigestAfterLeave(_) => "digest-after-leave",
        SessionMessage::GetSessions(_) => "get-sessions",
        SessionMessage::Merge(_) => "merge",
        SessionMessage::GetDigest => "get-digest",
        SessionMessage::NotHere { .. } => "not-here",
    }
}

/// The sessions a message is about.
fn ids_of(msg: &SessionMessage) -> Vec<SessionId> {
    match msg {
        SessionMessage::Created(st) | SessionMessage::State(st) => vec![st.id.clone()],
        SessionMessage::Delta { id, .. }
        | SessionMessage::Accessed { id, .. }
        | SessionMessage::Expired { id, .. }
        | SessionMessage::GetSession { id }
        | SessionMessage::NotHere { id } => vec![id.clone()],
        SessionMessage::ChangeId { old, new, .. } => vec![old.clone(), new.clone()],
        SessionMessage::AllSessions { states, .. } | SessionMessage::Merge(states) => {
            states.iter().map(|s| s.id.clone()).collect()
        }
        SessionMessage::Digest(entries) | SessionMessage::DigestAfterLeave(entries) => entries
            .iter()
            .flat_map(|e| match e {
                DigestEntry::Live(id, _) | DigestEntry::Ended(id, _) => vec![id.clone()],
                DigestEntry::Renamed(old, new, _) => vec![old.clone(), new.clone()],
            })
            .collect(),
        SessionMessage::GetSessions(ids) => ids.clone(),
        SessionMessage::GetAllSessions
        | SessionMessage::NoContextManager
        | SessionMessage::GetDigest => Vec::new(),
    }
}

impl DeltaNode {
    /// A node whose session ids come from `rng` (the run's generator), so a seed replays them.
    pub fn new(id: NodeId, cfg: DeltaSimConfig, world: SharedWorld, rng: &mut SimRng) -> DeltaNode {
        let core = DeltaCore::new(cfg.core.clone(), &format!("node{}", id.0));
        let mcfg = ManagerConfig {
            kind: ManagerKind::Delta,
            max_inactive: cfg.core.max_inactive,
            send_all_sessions_size: cfg.core.send_all_sessions_size,
            expire_frequency: cfg.reaper.unwrap_or(Duration::MAX),
            notify_listeners_on_replication: true,
            rebind_route: cfg.rebind,
            ..ManagerConfig::default()
        };
        let mut mgr =
            ManagerCore::with_core("/app", Core::Delta(core), &mcfg, SendOptions::SYNC_ACK);
        mgr.set_id_source(SimIds::from_run(rng));
        if let Some(reask) = cfg.shell_ticks {
            mgr.set_transfer_reask(reask);
        }
        let mut frames = Frames::default();
        frames.two_lanes = cfg.two_lanes;
        if let Some(model) = &cfg.retry_lanes {
            frames.retry_lanes(model.clone(), id);
        }
        DeltaNode {
            id,
            cfg,
            world,
            mgr,
            frames,
            acks: Acks::default(),
            held: BTreeMap::new(),
            next_token: HELD_BASE,
            tick_at: None,
            trace: std::env::var_os(TRACE_ENV).is_some(),
            journal: Journal::default(),
            ticket: Vec::new(),
            pump: None,
        }
    }

    /// Sends state-transfer chunks as production's pump thread does, one at a time, the next
    /// `gap` after the previous one (which stands for its acknowledgement), so a transfer
    /// takes time and a donor can leave in the middle of one; a clean stop ends the transfers
    /// after the chunk sent (`stop_transfers`). Not kept across a restart.
    pub fn pace_transfers(&mut self, gap: Duration) {
        self.pump = Some(Pump {
            gap,
            to: BTreeSet::new(),
            armed: false,
            stopped: false,
        });
    }

    /// The next chunk to `to` leaves in a `gap`, unless a clean stop ended the transfers.
    fn pump_later(&mut self, to: MemberId, ctx: &mut Ctx<'_>) {
        let Some(p) = self.pump.as_mut().filter(|p| !p.stopped) else {
            return;
        };
        p.to.insert(to);
        if !p.armed {
            p.armed = true;
            ctx.set_timer(p.gap, PUMP);
        }
    }

    /// The pump's turn: one chunk to each joiner whose transfer goes on.
    fn pump_chunks(&mut self, ctx: &mut Ctx<'_>) {
        let Some(p) = self.pump.as_mut() else {
            return;
        };
        p.armed = false;
        let due = std::mem::take(&mut p.to);
        if p.stopped {
            return;
        }
        for to in due {
            let ready = self.mgr.transfer_chunk_sent(to, true);
            let more = ready.chunk_to;
            self.perform(ready, false, ctx);
            if let Some(to) = more {
                self.pump_later(to, ctx);
            }
        }
    }

    /// Whether every send of `ticket` is settled (acknowledged or failed).
    pub fn settled(&self, ticket: &[u64]) -> bool {
        ticket.iter().all(|r| !self.acks.waiting.contains_key(r))
    }

    /// What the send `req` still waits for (for failure messages).
    pub fn pending_of(&self, req: u64) -> Option<String> {
        self.acks
            .waiting
            .get(&req)
            .map(|w| format!("{:?}: acks from {:?}", w.change, w.pending))
    }

    /// The tracked sends still waiting for acks, as [`DeltaNode::pending_of`] shows them.
    pub fn waiting_sends(&self) -> Vec<String> {
        let reqs = self.acks.waiting.keys();
        reqs.filter_map(|r| self.pending_of(*r)).collect()
    }

    /// Whether a send of `ticket` failed (a member refused it).
    pub fn failed(&self, ticket: &[u64]) -> bool {
        ticket.iter().any(|r| self.acks.has_failed(*r))
    }

    /// The other members, as this node sees them.
    pub fn view(&self) -> BTreeSet<NodeId> {
        view_of(&self.world.borrow().views, self.id)
    }

    /// The replication core under the manager, for reads.
    pub fn core(&self) -> &DeltaCore {
        self.mgr.core().delta().expect("a DeltaManager")
    }

    pub fn core_mut(&mut self) -> &mut DeltaCore {
        self.mgr.core_mut().delta_mut().expect("a DeltaManager")
    }

    /// A request's end: a request here runs in one step, so nothing can take its session
    /// over while it runs and the manager never refuses its end.
    fn ended(me: NodeId, (ended, ready): (Result<(), ServedElsewhere>, Ready)) -> Ready {
        if let Err(e) = ended {
            panic!("{me}: the end of a one-step request was refused: {e:?}");
        }
        ready
    }

    /// Performs a batch the manager made, in the shell's order: messages (`track`: the
    /// application's changes, whose acks are awaited), then events.
    fn perform(&mut self, ready: Ready, track: bool, ctx: &mut Ctx<'_>) {
        self.journal.resyncs += ready.counts.resyncs;
        let outs = ready
            .outs
            .into_iter()
            .filter_map(|o| match o.msg {
                Payload::Delta(msg) => Some(Out { dest: o.dest, msg }),
                Payload::Backup(_) => None,
            })
            .collect();
        self.send_outs(outs, track, Lane::of(ready.options), ctx);
        self.note_events(ready.events);
        self.schedule_tick(ctx);
    }

    /// With `shell_ticks`: a timer at the core's next deadline, unless one comes by then.
    fn schedule_tick(&mut self, ctx: &mut Ctx<'_>) {
        if self.cfg.shell_ticks.is_none() {
            return;
        }
        let Some(due) = self.mgr.next_deadline() else {
            return;
        };
        let at = Duration::from_millis(due.saturating_sub(EPOCH_MS));
        if at > ctx.now() + Duration::from_secs(3600) || self.tick_at.is_some_and(|t| t <= at) {
            return;
        }
        self.tick_at = Some(at);
        ctx.set_timer(at.saturating_sub(ctx.now()), TICK);
    }

    /// This node's copy of `id`: version and attributes.
    pub fn copy(&self, id: &SessionId) -> Option<(u64, BTreeMap<String, Vec<u8>>)> {
        self.core()
            .session(id)
            .map(|s| (s.version(), s.state().attributes.to_map()))
    }

    /// A clean stop without `expire_sessions_on_shutdown`, as `SimpleTcpCluster::stop` makes
    /// it: the manager ends its sessions here only, then the channel runs on until the test
    /// stops the node (production stops the channel right after, but messages already
    /// received are still handled meanwhile).
    pub fn stop_cleanly(&mut self, ctx: &mut Ctx<'_>) {
        self.world.borrow_mut().leaving.insert(self.id);
        if let Some(p) = self.pump.as_mut() {
            p.stopped = true;
            p.to.clear();
        }
        let ready = self.mgr.expire_all(false);
        self.perform(ready, false, ctx);
    }

    /// Starts this member again after [`Self::stop_cleanly`], on the same manager, as
    /// `SimpleTcpCluster::start` after `stop` does (the test first forgets it and admits it
    /// again, as the members see it leave and come back).
    pub fn start_again(&mut self, ctx: &mut Ctx<'_>) {
        self.world.borrow_mut().leaving.remove(&self.id);
        if let Some(p) = self.pump.as_mut() {
            p.stopped = false;
        }
        self.on_start(ctx);
    }

    /// A new session, then `ops` on it, in one request.
    pub fn create(&mut self, ctx: &mut Ctx<'_>, ops: &[Op]) -> Served {
        let (copy, ready) = match self.mgr.create(now_ms(ctx)) {
            Ok(r) => r,
            Err(e) => panic!("{}: no session id: {e}", self.id),
        };
        self.perform(ready, true, ctx);
        let id = copy.id().clone();
        self.request_with(ctx, &id, ops, Some(copy))
    }
    /// The shell's step after a request's begin ([`ManagerCore::rebind_request`]): the copy
    /// may take this node's route; the rename goes out before the request's changes.
    fn rebind(&mut self, copy: &mut Session, ctx: &mut Ctx<'_>) {
        let old = copy.id().clone();
        match self.mgr.rebind_request(copy) {
            Ok(Some(ready)) => {
                self.renamed(&old, copy.id());
                self.perform(ready, true, ctx)
            }
            Ok(None) => {}
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

    /// One request on session `id`: `ops` on the request's working copy, then the request's
    /// end (which sends its changes), both through the manager.
    pub fn request(&mut self, ctx: &mut Ctx<'_>, id: &SessionId, ops: &[Op]) -> Served {
        self.request_with(ctx, id, ops, None)
    }

    fn request_with(
        &mut self,
        ctx: &mut Ctx<'_>,
        id: &SessionId,
        ops: &[Op],
        copy: Option<Session>,
    ) -> Served {
        let copy = match copy {
            Some(c) => Some(c),
            None => match self.mgr.begin_request(id, now_ms(ctx)) {
                (Begin::Now(s), ready) => {
                    self.perform(ready, true, ctx);
                    s
                }
                (Begin::Wait { .. }, ready) => {
                    self.perform(ready, true, ctx);
                    self.journal.waited += 1;
                    return Served::Waiting;
                }
            },
        };
        let Some(mut copy) = copy else {
            return if self.core().store().is_ended(id) {
                Served::Ended
            } else {
                Served::Missing
            };
        };
        copy.take_pending();
        self.rebind(&mut copy, ctx);
        let mut id = copy.id().clone();
        for op in ops {
            match op {
                Op::Set(_) | Op::Remove(_) | Op::Read | Op::MaxInactive(_) => {
                    let val = matches!(op, Op::Set(_)).then(|| self.next_val());
                    edit(self.id, &id, Some(&mut copy), op, val);
                }
                Op::ChangeId => {
                    let (new, ready) = match self.mgr.change_id(&id) {
                        Ok(Some(r)) => r,
                        Ok(None) => panic!("{}: change of id of {id} refused", self.id),
                        Err(e) => panic!("{}: change of id of {id}: {e}", self.id),
                    };
                    self.renamed(&id, &new);
                    copy.change_id(new.clone());
                    self.perform(ready, true, ctx);
                    id = new;
                }
                Op::Invalidate => {
                    // The Servlet way: the request's session, ended when the request ends.
                    copy.invalidate();
                    let ready = Self::ended(self.id, self.mgr.end_request(copy, true, now_ms(ctx)));
                    self.world.borrow_mut().oracle.ended.insert(id.clone());
                    self.touch(&id);
                    self.perform(ready, true, ctx);
                    return Served::Ended;
                }
            }
        }
        let ready = Self::ended(self.id, self.mgr.end_request(copy, true, now_ms(ctx)));
        if let Some(s) = self.core().session(&id) {
            let (version, attrs) = (s.version(), s.state().attributes.to_map());
            let max = s.state().max_inactive_ms;
            let mut w = self.world.borrow_mut();
            w.record(self.id, &id, version, &attrs);
            w.oracle.last_request.insert(id.clone(), (now_ms(ctx), max));
        }
        self.touch(&id);
        self.perform(ready, true, ctx);
        Served::Live(id)
    }

    /// The test changed this node's view (a member joined or left), as the membership layer
    /// tells the manager: new members get this node's digest; acks are no longer awaited from
    /// members that left, and changes that waited only for them are now acknowledged.
    pub fn view_changed(&mut self, ctx: &mut Ctx<'_>) {
        let ready = self
            .mgr
            .members_changed(&sim_members(&self.view(), self.id), now_ms(ctx));
        self.perform(ready, false, ctx);
        // A member that left: the sender forgets its connections (`ChannelInner::member_gone`),
        // so the next message to it opens a new one. Sends in flight on the old ones still
        // settle (acked, or failed by their reset).
        let view = self.view();
        self.frames.keep_only(&view, ctx);
        self.acks.forget_outside(&view);
        let failed = self.frames.take_failed();
        self.fail_sends(failed, ctx);
    }

    fn next_val(&mut self) -> Val {
        next_val(&mut self.world.borrow_mut().oracle.counter, self.id)
    }

    fn touch(&mut self, id: &SessionId) {
        self.journal.touched.push((self.journal.life, id.clone()));
        if self.core().store().get(id).is_some() {
            self.journal.held_ever.insert(id.clone());
        }
    }

    fn note_events(&mut self, events: Vec<SessionEvent>) {
        let life = self.journal.life;
        for e in &events {
            if self.trace && !matches!(e, SessionEvent::Attribute { .. }) {
                eprintln!("  {} event: {e:?}", self.id);
            }
            // A change of id undone: the id it gave leads back to the one a request renamed.
            if let SessionEvent::IdChanged { old, new } = e {
                let mut w = self.world.borrow_mut();
                if w.oracle.renamed.get(new) == Some(old) {
                    w.oracle.undone.insert(old.clone());
                }
            }
        }
        self.journal
            .events
            .extend(events.into_iter().map(|e| (life, e)));
    }

    /// The change a sent message makes, if it is one the originator waits acks for.
    fn change_of(&self, msg: &SessionMessage) -> Option<Change> {
        match msg {
            SessionMessage::Created(st) => Some(Change::Version(st.id.clone(), st.version)),
            SessionMessage::Delta { id, version, .. } => {
                Some(Change::Version(id.clone(), *version))
            }
            // Applied once the new id is there (a lagging copy keeps its version when moved).
            SessionMessage::ChangeId { new, .. } => Some(Change::Version(new.clone(), 0)),
            SessionMessage::Expired { id, .. } => Some(Change::Ended(id.clone())),
            _ => None,
        }
    }

    /// Whether `change` is in this node's store: the session at that version or newer, or ended.
    fn has(&self, change: &Change) -> bool {
        let store = self.core().store();
        match change {
            Change::Version(id, v) => {
                store.get(id).is_some_and(|s| s.version() >= *v) || store.is_ended(id)
            }
            Change::Ended(id) => store.get(id).is_none(),
        }
    }

    fn send_outs(&mut self, outs: Vec<Out>, track: bool, lane: Lane, ctx: &mut Ctx<'_>) {
        for out in outs {
            *self.journal.sent.entry(kind(&out.msg)).or_default() += 1;
            match out.dest {
                Dest::All => {
                    let targets = self.view();
                    let req = match self.change_of(&out.msg).filter(|_| track) {
                        Some(change) => self.acks.track(change, targets.clone(), false),
                        None => 0,
                    };
                    if req > 0 {
                        self.ticket.push(req);
                    }
                    let body = encode_body(&Wire::Msg { req, msg: out.msg });
                    for t in targets {
                        self.frames.send_tracked(self.id, t, lane, req, &body, ctx);
                    }
                    self.settle_waiting(ctx.now());
                }
                Dest::Member(m) => {
                    let Some(to) = node_of(&m) else {
                        panic!("{}: message for unknown member {m}", self.id);
                    };
                    let body = encode_body(&Wire::Msg {
                        req: 0,
                        msg: out.msg,
                    });
                    self.frames.send_on(self.id, to, lane, &body, ctx);
                }
            }
        }
    }

    fn send_body(&mut self, to: NodeId, body: &[u8], ctx: &mut Ctx<'_>) {
        self.frames.send(self.id, to, body, ctx);
    }

    /// Sends that failed for their destination (their connection broke before the ack, or
    /// their lane gave up on them): like a refusal by it, settled once the others answered.
    fn fail_sends(&mut self, failed: Vec<(NodeId, u64)>, ctx: &mut Ctx<'_>) {
        for (to, req) in failed {
            self.journal.failed_by_reset += u64::from(self.acks.fail_to(req, to));
        }
        self.settle_waiting(ctx.now());
    }

    /// What this node's lanes did (with [`DeltaSimConfig::retry_lanes`]).
    pub fn lane_stats(&self) -> LaneStats {
        self.frames.lane_stats()
    }

    /// Records the changes every member (still in the view) has acknowledged.
    fn settle_waiting(&mut self, now: Duration) {
        let view = self.view();
        for w in self.acks.take_disjoint(&view) {
            self.world.borrow_mut().oracle.acked.push(Acked {
                origin: self.id,
                at: now,
                change: w.change,
                by: w.by,
            });
        }
    }

    fn receive(&mut self, from: NodeId, wire: Wire<SessionMessage>, ctx: &mut Ctx<'_>) {
        match wire {
            Wire::Ack { req } => {
                let life = self.world.borrow().lives.get(&from).copied().unwrap_or(0);
                self.frames.acked(from, req);
                self.acks.acked(req, from, life);
                self.settle_waiting(ctx.now());
            }
            // A member the manager refused it to (a gap): the send failed. The request is
            // answered once the other members answered too, as a real sync-ack send returns
            // (answering at the first refusal let the user read on a member the failed change
            // had not reached yet, which then applied it: quiet seed 123).
            Wire::Refused { req } => {
                self.frames.acked(from, req);
                self.acks.refuse_by(req, from);
                self.settle_waiting(ctx.now());
            }
            Wire::Msg { req, msg } => {
                if let Some(chaos) = self.cfg.chaos.clone() {
                    if ctx.rng().chance(chaos.delay) {
                        self.journal.delayed += 1;
                        self.hold(from, req, msg, chaos.max_delay, ctx);
                        return;
                    }
                    if ctx.rng().chance(chaos.duplicate) {
                        self.journal.duplicated += 1;
                        self.hold(from, req, msg.clone(), chaos.max_delay, ctx);
                    }
                }
                self.apply(from, req, msg, ctx);
            }
        }
    }

    fn hold(
        &mut self,
        from: NodeId,
        req: u64,
        msg: SessionMessage,
        max: Duration,
        ctx: &mut Ctx<'_>,
    ) {
        self.next_token += 1;
        self.held.insert(self.next_token, (from, req, msg));
        let after = ctx.rng().duration_between(Duration::ZERO, max);
        ctx.set_timer(after, self.next_token);
    }

    /// Applies a message from `from` and sends what the core answers, then the acks owed.
    fn apply(&mut self, from: NodeId, req: u64, msg: SessionMessage, ctx: &mut Ctx<'_>) {
        let k = kind(&msg);
        *self.journal.received.entry(k).or_default() += 1;
        let ids = ids_of(&msg);
        if ids.iter().any(|id| self.core().store().is_ended(id))
            && matches!(
                msg,
                SessionMessage::Created(_)
                    | SessionMessage::Delta { .. }
                    | SessionMessage::State(_)
            )
        {
            self.journal.after_end += 1;
        }
        let is_change = matches!(
            msg,
            SessionMessage::Created(_)
                | SessionMessage::Delta { .. }
                | SessionMessage::Expired { .. }
                | SessionMessage::ChangeId { .. }
        );
        if is_change && !self.mgr.is_ready() {
            self.journal.during_transfer += 1;
        }
        if let SessionMessage::AllSessions { states, .. } = &msg {
            self.journal.transferred += states.len() as u64;
        }
        if self.trace {
            let versions = match &msg {
                SessionMessage::Delta {
                    base,
                    version,
                    fingerprint,
                    ..
                } => format!(" v{base}->v{version} fp{:04x}", fingerprint & 0xffff),
                SessionMessage::Created(s) | SessionMessage::State(s) => format!(" v{}", s.version),
                SessionMessage::Expired { version, .. } => format!(" at v{version}"),
                SessionMessage::Digest(e) | SessionMessage::DigestAfterLeave(e) => {
                    let vs: Vec<String> = e
                        .iter()
                        .map(|e| match e {
                            DigestEntry::Live(_, st) => format!("v{}", st.version),
                            DigestEntry::Ended(..) => "end".into(),
                            DigestEntry::Renamed(..) => "ren".into(),
                        })
                        .collect();
                    format!(" {}", vs.join(","))
                }
                _ => String::new(),
            };
            // The random part's start and the route: a rebound id keeps the random part.
            let short: Vec<String> = ids
                .iter()
                .map(|i| {
                    format!(
                        "{}{}",
                        &i.as_str()[..6],
                        i.route().map_or(String::new(), |r| format!(".{r}"))
                    )
                })
                .collect();
            eprintln!(
                "{:?} {} <- {from}: {k} {short:?}{versions} (ready: {})",
                ctx.now(),
                self.id,
                self.mgr.is_ready()
            );
        }
        let (ready, verdict) = self.mgr.receive(
            sim_member(from).id,
            &Payload::Delta(msg.clone()),
            now_ms(ctx),
        );
        for id in &ids {
            self.touch(id);
        }
        // A state transfer streams as the shell streams it: the next chunk once one is sent.
        let mut chunk_to = ready.chunk_to;
        self.perform(ready, false, ctx);
        if let Some(to) = chunk_to.filter(|_| self.pump.is_some()) {
            self.pump_later(to, ctx);
            chunk_to = None;
        }
        while let Some(to) = chunk_to {
            let ready = self.mgr.transfer_chunk_sent(to, true);
            chunk_to = ready.chunk_to;
            self.perform(ready, false, ctx);
        }
        if req > 0 {
            match self.change_of(&msg) {
                // The manager's verdict is what a synchronized-ack sender gets: a change it
                // could not apply (a gap: it asked for the session) fails the send.
                _ if verdict.is_err() => {
                    let body = encode_body(&Wire::<SessionMessage>::Refused { req });
                    self.send_body(from, &body, ctx);
                }
                Some(change) => self.acks.owe(from, req, change),
                // Nothing to wait for (an access): acked on receipt.
                None => self.send_ack(from, req, ctx),
            }
        }
        self.pay_acks(ctx);
    }

    fn send_ack(&mut self, to: NodeId, req: u64, ctx: &mut Ctx<'_>) {
        let body = encode_body(&Wire::<SessionMessage>::Ack { req });
        self.send_body(to, &body, ctx);
    }

    /// Sends every owed ack whose change is now in the store.
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

    /// The reaper's period: the manager expires what is due.
    fn reap(&mut self, ctx: &mut Ctx<'_>) {
        let mut ready = self.mgr.tick(now_ms(ctx));
        let events = std::mem::take(&mut ready.events);
        let now = now_ms(ctx);
        for e in &events {
            if let SessionEvent::Destroyed(id) = e {
                let mut w = self.world.borrow_mut();
                if let Some(&(at, max)) = w.oracle.last_request.get(id) {
                    if max > 0 && now.saturating_sub(at) <= max {
                        let msg = format!(
                            "{} expired {id} {} ms after a request (max inactive {max} ms)",
                            self.id,
                            now - at
                        );
                        w.oracle.early.push(msg);
                    }
                }
                w.oracle.ended.insert(id.clone());
                drop(w);
                self.touch(id);
            }
        }
        self.note_events(events);
        self.perform(ready, true, ctx);
    }
}

impl Node for DeltaNode {
    fn on_start(&mut self, ctx: &mut Ctx<'_>) {
        self.journal.life += 1;
        self.frames.started(self.journal.life);
        self.world
            .borrow_mut()
            .lives
            .insert(self.id, self.journal.life);
        if let Some(period) = self.cfg.reaper {
            ctx.set_timer(period, REAPER);
        }
        // Tomcat asks the first member of its view (the oldest); here the lowest id.
        let ready = self.mgr.started(sim_member(self.id).id, None, now_ms(ctx));
        self.perform(ready, false, ctx);
        if let Some(&donor) = self.view().iter().next() {
            let ready = self.mgr.member_added(&sim_member(donor), now_ms(ctx));
            self.perform(ready, false, ctx);
        }
        // The members it starts with (a joiner sends them no digest).
        self.view_changed(ctx);
    }

    /// A connection from `from`: its handshake names `from`'s incarnation
    /// ([`Frames::accept_from`]).
    fn on_accept(&mut self, conn: ConnId, from: NodeId, ctx: &mut Ctx<'_>) {
        let life = self.world.borrow().lives.get(&from).copied().unwrap_or(0);
        self.frames.accept_from(conn, from, life, ctx);
        let failed = self.frames.take_failed();
        self.fail_sends(failed, ctx);
    }

    fn on_bytes(&mut self, conn: ConnId, bytes: &[u8], ctx: &mut Ctx<'_>) {
        // On a connection this node opened: replies of its lanes, taken by `frames`.
        if let Some((from, wires)) = self.frames.read(self.id, conn, bytes, ctx) {
            for wire in wires {
                self.receive(from, wire, ctx);
            }
        }
        let failed = self.frames.take_failed();
        self.fail_sends(failed, ctx);
    }

    /// A connection broke: the synchronized-ack sends written on it that its destination had
    /// not acked fail for that destination, as production's sender fails them (the request is
    /// answered with an error once the other destinations answered). Without this, a change
    /// written to a restarted member's old life, lost with the reset, waited forever.
    fn on_closed(&mut self, conn: ConnId, _why: CloseReason, ctx: &mut Ctx<'_>) {
        let failed = self.frames.closed(conn, ctx);
        self.fail_sends(failed, ctx);
    }

    fn on_timer(&mut self, token: u64, ctx: &mut Ctx<'_>) {
        if let Some(failed) = self.frames.on_timer(token, ctx) {
            self.fail_sends(failed, ctx);
        } else if token == REAPER {
            self.reap(ctx);
            if let Some(period) = self.cfg.reaper {
                ctx.set_timer(period, REAPER);
            }
        } else if token == PUMP {
            self.pump_chunks(ctx);
        } else if token == TICK {
            // A timer made obsolete by an earlier one still ticks: `tick` only acts on what
            // is due.
            if self.tick_at.is_some_and(|t| t <= ctx.now()) {
                self.tick_at = None;
            }
            self.reap(ctx);
        } else if let Some((from, req, msg)) = self.held.remove(&token) {
            self.apply(from, req, msg, ctx);
        }
    }

    fn restarted(&self, rng: &mut SimRng) -> DeltaNode {
        let mut n = DeltaNode::new(self.id, self.cfg.clone(), self.world.clone(), rng);
        n.journal = self.journal.clone();
        n
    }
}

// ---- invariants ----

/// Per (node, life, id): the last version seen and the newest value counter seen per attribute.
/// The flag: the copy held a dead maker's superseded state while it repaired its fork.
type Seen = HashMap<(NodeId, u64, SessionId), (u64, BTreeMap<String, u64>, bool)>;

/// Whether node `n` (in its current life) holds `change`: some id of the session's chain at the
/// version or newer, or the session has ended there (or everywhere, by the oracle).
pub fn holds(sim: &Sim<DeltaNode>, world: &World, n: NodeId, change: &Change) -> bool {
    let node = sim.node(n);
    match change {
        Change::Version(id, v) => {
            let chain = world.oracle.chain(id);
            // At the acknowledged version, with the content its maker made (a copy that kept
            // another state of that version does not hold it).
            chain.iter().any(|id| {
                node.copy(id).is_some_and(|(have, attrs)| {
                    have > *v || (have == *v && world.oracle.state(id, have) == Some(&attrs))
                })
            }) || chain.last().is_some_and(|last| {
                world.oracle.ended.contains(last) || node.core().store().is_ended(last)
            }) || ended_under_an_earlier_id(node, &chain)
        }
        Change::Ended(id) => node.copy(id).is_none(),
    }
}

/// Whether node `n` ended the session under an id of its `chain` and holds no copy under any:
/// a change of id after that id failed (its maker died before any member had it) or was
/// undone, and the session ended under the id it went on with. (Whether the change of id
/// stood elsewhere is for the convergence and lost-session checks.)
fn ended_under_an_earlier_id(node: &DeltaNode, chain: &[SessionId]) -> bool {
    let store = node.core().store();
    chain.iter().all(|id| node.copy(id).is_none())
        && chain
            .iter()
            .any(|id| store.tombstone(id).is_some_and(|t| t.renamed.is_none()))
}

/// Installs the DeltaManager invariants, each checked after every step:
///
/// - `history-never-forks`: no two different states were ever made for one (id, version).
/// - `copy-is-an-origin-state`: a copy at version v has exactly the attributes the node that
///   made version v had (so no stale, mixed or missing attribute is ever shown). One window
///   is allowed: a version made again after its maker died unacknowledged (a failover to a
///   copy that missed it) may still be held as the dead maker's state by a copy that got it,
///   until the new maker's next message names the new state and the copy takes it; the user
///   checks, `acked-is-on-every-acker` (which compares contents) and the convergence check see
///   the repair through.
/// - `versions-and-values-never-go-back`: on each node, a session's version never decreases and
///   no attribute shows a value older than one it showed before (values of a dead maker's
///   superseded state, shown during the window above, do not count once it is repaired).
/// - `copies-vanish-only-when-ended-or-renamed`: a node drops a copy only when the session was
///   ended (invalidated or expired by some node's decision) or changed id.
/// - `ended-stays-ended`: a session a node destroyed (or whose old id it moved away from) never
///   reappears on it, whatever arrives late; an id renamed away comes back only by a change of
///   id back to it (route rebinding to a route the session had).
/// - `destroyed-at-most-once`: a node reports `Destroyed` once per session.
/// - `acked-is-on-every-acker`: when a change is acknowledged, every member that acked it (and
///   is still in the same life) holds it: a newer version, or that version with the content
///   its maker made.
/// - `no-session-expires-while-in-use`: no reaper ends a session within its max inactive
///   interval of a request to it (on any node).
pub fn check_delta(sim: &mut Sim<DeltaNode>, world: &SharedWorld) {
    let w = world.clone();
    sim.invariant("history-never-forks", move |_| {
        let w = w.borrow();
        if w.split_brain {
            return Ok(());
        }
        match w.oracle.forks.first() {
            Some(f) => Err(format!("two states for one version: {f}")),
            None => Ok(()),
        }
    });

    let w = world.clone();
    sim.invariant("no-session-expires-while-in-use", move |_| {
        match w.borrow().oracle.early.first() {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    });

    let w = world.clone();
    let mut cursor: HashMap<NodeId, usize> = HashMap::new();
    let mut seen: Seen = HashMap::new();
    let mut ended = EndedSeen::default();
    sim.invariant("copies-follow-the-origin", move |sim| {
        let w = w.borrow();
        if w.split_brain {
            return Ok(());
        }
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
                let key = (n, *life, id.clone());
                match node.copy(id) {
                    Some((version, ref attrs)) => {
                        if ended.ended(n, *life, id) {
                            return Err(format!(
                                "ended-stays-ended: {n} holds {id} again (version {version}) after it ended there"
                            ));
                        }
                        // A copy that holds a dead maker's unacknowledged state of a version
                        // made again since, and knows its copy forked (it asked the new
                        // state's maker for its copy), is on its way to the new state.
                        // A dead maker's state of a version made again since: the copy got it
                        // before it could know (it learns from the new maker's next message).
                        let repairing = w.oracle.was_superseded(id, version, attrs);
                        let forked = repairing || node.core().store().is_forked(id);
                        match w.oracle.state(id, version) {
                            None => {
                                return Err(format!(
                                    "copy-is-an-origin-state: {n} holds {id} at version {version}, which no origin made"
                                ))
                            }
                            Some(want) if want != attrs && !repairing => {
                                return Err(format!(
                                    "copy-is-an-origin-state: {n} holds {id} v{version} as {}, its origin made {}",
                                    show(attrs),
                                    show(want)
                                ))
                            }
                            Some(_) => {}
                        }
                        let entry = seen
                            .entry(key)
                            .or_insert((version, BTreeMap::new(), false));
                        if std::mem::replace(&mut entry.2, forked) && !forked {
                            // The fork repaired (at the sender's version, which may be lower):
                            // the dead maker's state it showed was never acknowledged; compare
                            // from the sender's.
                            *entry = (version, BTreeMap::new(), false);
                        }
                        if version < entry.0 {
                            return Err(format!(
                                "versions-and-values-never-go-back: {n} holds {id} at version {version} after {}",
                                entry.0
                            ));
                        }
                        entry.0 = version;
                        for (name, bytes) in attrs {
                            let Some(val) = Val::decode(bytes) else {
                                continue;
                            };
                            let newest = entry.1.entry(name.clone()).or_insert(val.counter);
                            if val.counter < *newest {
                                return Err(format!(
                                    "versions-and-values-never-go-back: {n} shows {id}.{name} = value {} after value {}",
                                    val.counter, newest
                                ));
                            }
                            *newest = val.counter;
                        }
                    }
                    None => {
                        if seen.remove(&key).is_some()
                            && !w.oracle.ended.contains(id)
                            && !w.oracle.renamed.contains_key(id)
                            && !w.oracle.undone.contains(id)
                        {
                            return Err(format!(
                                "copies-vanish-only-when-ended-or-renamed: {n} dropped live session {id}"
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    });

    let w = world.clone();
    let mut acked_cursor = 0usize;
    sim.invariant("acked-is-on-every-acker", move |sim| {
        let w = w.borrow();
        if w.split_brain {
            // The rule keeps one side's copy of a session changed on both: the other side's
            // acknowledged changes to it are dropped by design.
            return Ok(());
        }
        let from = std::mem::replace(&mut acked_cursor, w.oracle.acked.len());
        for a in &w.oracle.acked[from.min(w.oracle.acked.len())..] {
            for &(n, life) in &a.by {
                let current = w.lives.get(&n).copied() == Some(life)
                    && sim.is_up(n)
                    && !w.leaving.contains(&n);
                if current && !holds(sim, &w, n, &a.change) {
                    let id = match &a.change {
                        Change::Version(id, _) | Change::Ended(id) => id,
                    };
                    let copies: Vec<String> = w
                        .oracle
                        .chain(id)
                        .iter()
                        .map(|id| {
                            format!(
                                "{id}: {:?} ended here {}",
                                sim.node(n).copy(id).map(|(v, _)| v),
                                sim.node(n).core().store().is_ended(id)
                            )
                        })
                        .collect();
                    return Err(format!(
                        "{n} acked {:?} of {} but does not hold it; its copies: {}",
                        a.change,
                        a.origin,
                        copies.join(", ")
                    ));
                }
            }
        }
        Ok(())
    });
}
