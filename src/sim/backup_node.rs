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
//! - The oracle of every state a primary made and which changes were acknowledged, and the
//!   invariants that read it, are in [`super::backup_world`].
//!
//! Session ids come from a generator seeded by the run ([`SimIds`]), so a seed replays exactly,
//! placements included. Set [`TRACE_ENV`] to print every message applied.

pub use super::backup_world::{check_backup, Acked, Change, SharedWorld, World};
use super::delta_node::{now_ms, Op, Served, Val};
use super::detected::{Detector, Routed, ViewEvent};
use super::frame_lanes::{LaneModel, LaneStats};
use super::frame_node::{count, edit, next_val, view_of, Acks, Frames, Lane, Wire};
use super::lane_node::{node_of, sim_member, sim_members};
use super::membership_node::MembershipSimConfig;
use super::net::{CloseReason, ConnId, NodeId};
use super::rng::SimIds;
use super::{Ctx, Node, SimRng};
use crate::member::MemberId;
use crate::options::SendOptions;
use crate::session::backup::{placement, BackupConfig, BackupCore, BackupMessage, Out};
use crate::session::config::{ManagerConfig, ManagerKind, RebindRoute};
use crate::session::engine::{Core, POut, Payload};
use crate::session::manager_core::{Begin, ManagerCore, Ready, Token};
use crate::session::{Dest, Session, SessionEvent, SessionId};
use crate::wire::encode_body;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

/// Set (to anything) to print every message each node applies.
pub const TRACE_ENV: &str = "TRIBECAST_BACKUP_TRACE";
/// The lanes run as the DeltaManager simulation's do: a connection's reset fails the
/// synchronized-ack sends written on it that its destination had not acked (as production's
/// sender fails them), and a member's new life connecting makes the others forget their
/// connections to the old one. On by default; set to `0` for the older model, whose resets
/// leave those sends waiting for their timeout (kept to compare surveys, docs/RELIABILITY.md).
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
    /// Production's lane protocol under the messages (handshake, transport acks, duplicate
    /// filter, retries on a new connection, deadlines; see `frame_lanes`); `None`: one plain
    /// FIFO connection per destination. With it, the sends a lane gives up on fail (as
    /// production's sender fails them) whether or not [`RESET_FAILS_ENV`] is set.
    pub retry_lanes: Option<LaneModel>,
}

impl Default for BackupSimConfig {
    fn default() -> Self {
        BackupSimConfig {
            core: BackupConfig::default(),
            reaper: None,
            rpc_timeout: Duration::from_millis(50),
            two_lanes: false,
            rebind: RebindRoute::Never,
            retry_lanes: None,
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
    /// [`RESET_FAILS_ENV`] is not `0`.
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
        if let Some(model) = &cfg.retry_lanes {
            frames.retry_lanes(model.clone(), id);
        }
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
            reset_fails: std::env::var_os(RESET_FAILS_ENV).is_none_or(|v| v != "0"),
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
    fn accept(&mut self, conn: ConnId, from: NodeId, ctx: &mut Ctx<'_>) {
        if self.reset_fails || self.frames.has_retry_lanes() {
            let life = self.world.borrow().lives.get(&from).copied().unwrap_or(0);
            self.frames.accept_from(conn, from, life, ctx);
            let failed = self.frames.take_failed();
            self.fail_sends(failed);
        } else {
            self.frames.accept(conn, from);
        }
    }

    fn frames_bytes(&mut self, conn: ConnId, bytes: &[u8], ctx: &mut Ctx<'_>) {
        // On a connection this node opened: replies of its lanes, taken by `frames`.
        if let Some((from, wires)) = self.frames.read(self.id, conn, bytes, ctx) {
            for wire in wires {
                self.receive(from, wire, ctx);
            }
        }
        let failed = self.frames.take_failed();
        self.fail_sends(failed);
    }

    /// Sends that failed for their destination (their connection broke before the ack, or
    /// their lane gave up on them): like a refusal, settled at once (a BackupManager send has
    /// one destination in nearly every case).
    fn fail_sends(&mut self, failed: Vec<(NodeId, u64)>) {
        for (to, req) in failed {
            if self.acks.fail_at_once_to(req, to) {
                self.world.borrow_mut().oracle.failed += 1;
            }
        }
    }

    /// What this node's lanes did (with [`BackupSimConfig::retry_lanes`]).
    pub fn lane_stats(&self) -> LaneStats {
        self.frames.lane_stats()
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
        self.frames.keep_only(&view, ctx);
        let failed = self.frames.take_failed();
        self.fail_sends(failed);
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
    pub(super) fn has(&self, change: &Change) -> bool {
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
        self.frames.started(self.journal.life);
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

    fn on_accept(&mut self, conn: ConnId, from: NodeId, ctx: &mut Ctx<'_>) {
        match &mut self.detector {
            Some(d) => d.on_accept(conn, from),
            None => {
                self.accept(conn, from, ctx);
            }
        }
    }

    fn on_bytes(&mut self, conn: ConnId, bytes: &[u8], ctx: &mut Ctx<'_>) {
        match self.detector.as_mut().map(|d| d.on_bytes(conn, bytes, ctx)) {
            Some(Routed::Taken(events)) => self.view_events(events, ctx),
            Some(Routed::Accepted { from, bytes }) => {
                self.accept(conn, from, ctx);
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
        // with it (with lanes: those its lane gave up on), as production's sender fails them.
        let failed = self.frames.closed(conn, ctx);
        if reset_fails || self.frames.has_retry_lanes() {
            self.fail_sends(failed);
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
        if let Some(failed) = self.frames.on_timer(token, ctx) {
            self.fail_sends(failed);
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
