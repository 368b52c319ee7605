//! The BackupManager's decisions for one application on one node, pure (Tomcat's
//! `BackupManager` over `LazyReplicatedMap`): each session has one primary (the member serving
//! it) and `backups` backup members; changes go to the backups only, so the cost of a change
//! does not grow with the cluster.
//!
//! Placement is rendezvous hashing: a session's backups are the `backups` members (other than
//! its primary) with the highest score hash(session id, member id). It spreads sessions evenly
//! and moves few of them when members come and go; any member computes it alone. Tomcat keeps
//! exactly one backup, picked round-robin, and a proxy entry for every session on every node;
//! here there are no proxies: a member that needs a session it does not hold asks the others.
//!
//! Failover: when a primary disappears, the first of its backups still alive (in the order the
//! primary last sent) promotes itself and restores the backup count; when a backup disappears
//! or joins, the primary re-places. Changes carry the same versions as the DeltaManager's, so a
//! duplicate or stale one is never applied and a gap makes the backup ask for a copy.

use super::delta::{Dest, Out as DeltaOut, SessionEvent};
use super::id::{SessionId, SessionIdError};
use super::model::{Applied, DeltaOp, Session, SessionState};
use crate::member::MemberId;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

/// What BackupManagers say to each other.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackupMessage {
    /// A whole copy for a backup. `backups` is the primary's backup list, in failover order.
    Copy {
        state: SessionState,
        backups: Vec<MemberId>,
        /// The primary's ownership epoch (see `NewPrimary`).
        epoch: u64,
    },
    /// A request's changes, made on version `base`, giving `version`.
    Delta {
        id: SessionId,
        base: u64,
        version: u64,
        ops: Vec<DeltaOp>,
        last_accessed_ms: u64,
    },
    /// Only the access time moved; `version` lets a backup notice it is behind.
    Accessed {
        id: SessionId,
        version: u64,
        last_accessed_ms: u64,
    },
    /// The receiver is no longer a backup of this session.
    Drop {
        id: SessionId,
    },
    /// Ended (invalidated or expired).
    Expired {
        id: SessionId,
    },
    ChangeId {
        old: SessionId,
        new: SessionId,
    },
    /// A backup that is behind asks its primary for a copy.
    GetCopy {
        id: SessionId,
    },
    /// A request for this session reached a member that does not hold it: who has it?
    Fetch {
        id: SessionId,
    },
    /// The answer to `Fetch`: the session, or nothing.
    Fetched {
        id: SessionId,
        state: Option<SessionState>,
        epoch: u64,
    },
    /// The sender is now the session's primary (after a fetch or a failover).
    NewPrimary {
        id: SessionId,
        version: u64,
        /// The new primary's backups: they keep (or will get) a copy, the others drop theirs.
        backups: Vec<MemberId>,
        /// Rises with each change of primary: of two claims, the higher epoch wins (ties: the
        /// higher member id), so a late claim never undoes a newer one.
        epoch: u64,
    },
}

/// A message to send.
pub type Out = DeltaOut<BackupMessage>;

/// Settings of a BackupManager.
#[derive(Clone, Debug)]
pub struct BackupConfig {
    /// Backup copies per session (Tomcat: exactly 1). Default 1.
    pub backups: usize,
    pub max_inactive: Duration,
    /// Ended session ids remembered so a late message cannot revive one.
    pub max_tombstones: usize,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            backups: 1,
            max_inactive: Duration::from_secs(30 * 60),
            max_tombstones: 100_000,
        }
    }
}

/// A stable 64-bit hash (FNV-1a, then a finaliser to spread the bits): every member computes
/// the same placement, whatever its build.
fn score(id: &SessionId, m: &MemberId) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.as_str().bytes().chain(m.0.iter().copied()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

/// The backups of session `id` whose primary is `primary`: the `k` other members with the
/// highest score, best first.
pub fn placement(
    id: &SessionId,
    primary: MemberId,
    members: &[MemberId],
    k: usize,
) -> Vec<MemberId> {
    let mut c: Vec<(u64, MemberId)> = members
        .iter()
        .filter(|m| **m != primary)
        .map(|m| (score(id, m), *m))
        .collect();
    c.sort_by(|a, b| b.cmp(a));
    c.dedup_by_key(|x| x.1);
    c.into_iter().take(k).map(|(_, m)| m).collect()
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Role {
    Primary {
        backups: Vec<MemberId>,
    },
    Backup {
        primary: MemberId,
        backups: Vec<MemberId>,
    },
}

struct Entry {
    session: Session,
    role: Role,
    /// Created here; its request has not ended yet.
    unannounced: bool,
    /// Taken over for a request: its backups get a whole copy when that request ends (sent
    /// with the request's send options, so no change can overtake it).
    copy_pending: bool,
    /// Ownership epoch: how many times the session changed primary, as far as known here.
    epoch: u64,
    replicated_access_ms: u64,
}

/// The sessions of one application on this node: those it serves and those it backs up.
pub struct BackupCore {
    cfg: BackupConfig,
    local: MemberId,
    route: String,
    members: Vec<MemberId>,
    entries: HashMap<SessionId, Entry>,
    ended: HashSet<SessionId>,
    ended_order: VecDeque<SessionId>,
    /// Fetches in progress: answers still awaited.
    fetching: HashMap<SessionId, usize>,
}

impl BackupCore {
    pub fn new(cfg: BackupConfig, local: MemberId, route: &str) -> BackupCore {
        BackupCore {
            cfg,
            local,
            route: route.to_string(),
            members: Vec::new(),
            entries: HashMap::new(),
            ended: HashSet::new(),
            ended_order: VecDeque::new(),
            fetching: HashMap::new(),
        }
    }

    fn to(m: MemberId, msg: BackupMessage) -> Out {
        Out {
            dest: Dest::Member(m),
            msg,
        }
    }

    fn bury(&mut self, id: &SessionId) {
        if self.ended.insert(id.clone()) {
            self.ended_order.push_back(id.clone());
            if self.ended_order.len() > self.cfg.max_tombstones {
                if let Some(old) = self.ended_order.pop_front() {
                    self.ended.remove(&old);
                }
            }
        }
    }

    /// This node's member id (known once its channel has started).
    pub fn set_local(&mut self, local: MemberId) {
        self.local = local;
    }

    /// Ids of the sessions held here.
    pub fn ids(&self) -> impl Iterator<Item = &SessionId> {
        self.entries.keys()
    }

    /// Sessions this node serves.
    pub fn primaries(&self) -> usize {
        self.entries
            .values()
            .filter(|e| matches!(e.role, Role::Primary { .. }))
            .count()
    }

    /// Sessions this node holds (served or backed up).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn is_primary(&self, id: &SessionId) -> bool {
        self.entries
            .get(id)
            .is_some_and(|e| matches!(e.role, Role::Primary { .. }))
    }

    /// The backups of a session this node serves.
    pub fn backups_of(&self, id: &SessionId) -> Option<&[MemberId]> {
        match &self.entries.get(id)?.role {
            Role::Primary { backups } => Some(backups),
            Role::Backup { .. } => None,
        }
    }

    pub fn session(&self, id: &SessionId) -> Option<&Session> {
        self.entries
            .get(id)
            .map(|e| &e.session)
            .filter(|s| s.is_valid())
    }

    pub fn session_mut(&mut self, id: &SessionId) -> Option<&mut Session> {
        self.entries
            .get_mut(id)
            .map(|e| &mut e.session)
            .filter(|s| s.is_valid())
    }

    fn place(&self, id: &SessionId) -> Vec<MemberId> {
        placement(id, self.local, &self.members, self.cfg.backups)
    }

    /// A new session served here, announced to its backups when its request ends.
    pub fn create(&mut self, now_ms: u64) -> Result<SessionId, SessionIdError> {
        let id = SessionId::generate(&self.route)?;
        let backups = self.place(&id);
        let entry = Entry {
            session: Session::new(id.clone(), now_ms, self.cfg.max_inactive),
            role: Role::Primary { backups },
            unannounced: true,
            copy_pending: false,
            epoch: 0,
            replicated_access_ms: now_ms,
        };
        self.entries.insert(id.clone(), entry);
        Ok(id)
    }

    /// Makes this node the primary of a session it holds as a backup (a request reached it):
    /// tells every member, and copies it to its new backups.
    pub fn take_over(&mut self, id: &SessionId) -> Vec<Out> {
        let Some(e) = self.entries.get(id) else {
            return Vec::new();
        };
        if matches!(e.role, Role::Primary { .. }) {
            return Vec::new();
        }
        self.promote(id, false)
    }

    /// Makes this node the session's primary. With `copy_now` its backups get a copy at once
    /// (failover); otherwise with the end of the request that needed it.
    fn promote(&mut self, id: &SessionId, copy_now: bool) -> Vec<Out> {
        let backups = self.place(id);
        let Some(e) = self.entries.get_mut(id) else {
            return Vec::new();
        };
        e.role = Role::Primary {
            backups: backups.clone(),
        };
        e.epoch += 1;
        e.copy_pending = !copy_now;
        let epoch = e.epoch;
        let state = e.session.state().clone();
        let version = state.version;
        let copies = if copy_now { &backups[..] } else { &[][..] };
        let mut outs: Vec<Out> = copies
            .iter()
            .map(|b| {
                Self::to(
                    *b,
                    BackupMessage::Copy {
                        state: state.clone(),
                        backups: backups.clone(),
                        epoch,
                    },
                )
            })
            .collect();
        outs.push(Out {
            dest: Dest::All,
            msg: BackupMessage::NewPrimary {
                id: id.clone(),
                version,
                backups: backups.clone(),
                epoch,
            },
        });
        outs
    }

    /// The end of a request on a session served here.
    pub fn end_request(&mut self, id: &SessionId, now_ms: u64) -> Vec<Out> {
        let Some(e) = self.entries.get_mut(id).filter(|e| e.session.is_valid()) else {
            return Vec::new();
        };
        let Role::Primary { backups } = &e.role else {
            return Vec::new();
        };
        let backups = backups.clone();
        e.session.access(now_ms);
        e.session.mark_not_new();
        let s = &mut e.session;
        let epoch = e.epoch;
        let copy_pending = std::mem::take(&mut e.copy_pending);
        let msg = if std::mem::take(&mut e.unannounced) || copy_pending {
            let _ = s.take_delta();
            Some(BackupMessage::Copy {
                state: s.state().clone(),
                backups: backups.clone(),
                epoch,
            })
        } else if let Some((base, version, ops)) = s.take_delta() {
            Some(BackupMessage::Delta {
                id: id.clone(),
                base,
                version,
                ops,
                last_accessed_ms: s.last_accessed_ms(),
            })
        } else {
            s.access_refresh_due(e.replicated_access_ms, now_ms)
                .then(|| BackupMessage::Accessed {
                    id: id.clone(),
                    version: s.version(),
                    last_accessed_ms: s.last_accessed_ms(),
                })
        };
        let Some(msg) = msg else { return Vec::new() };
        e.replicated_access_ms = now_ms;
        backups
            .into_iter()
            .map(|b| Self::to(b, msg.clone()))
            .collect()
    }

    /// Ends a session served here, on its backups too.
    pub fn invalidate(&mut self, id: &SessionId) -> (Vec<Out>, Vec<SessionEvent>) {
        let Some(e) = self.entries.remove(id) else {
            return (Vec::new(), Vec::new());
        };
        self.bury(id);
        let outs = match e.role {
            Role::Primary { backups } if !e.unannounced => backups
                .into_iter()
                .map(|b| Self::to(b, BackupMessage::Expired { id: id.clone() }))
                .collect(),
            _ => Vec::new(),
        };
        (outs, vec![SessionEvent::Destroyed(id.clone())])
    }

    /// Gives a session served here a new id, on its backups too.
    pub fn change_id(
        &mut self,
        old: &SessionId,
    ) -> Result<Option<(SessionId, Vec<Out>)>, SessionIdError> {
        if !self.is_primary(old) {
            return Ok(None);
        }
        let new = SessionId::generate(&self.route)?;
        let Some(mut e) = self.entries.remove(old) else {
            return Ok(None);
        };
        self.bury(old);
        e.session.change_id(new.clone());
        let outs = match &e.role {
            Role::Primary { backups } if !e.unannounced => backups
                .iter()
                .map(|b| {
                    Self::to(
                        *b,
                        BackupMessage::ChangeId {
                            old: old.clone(),
                            new: new.clone(),
                        },
                    )
                })
                .collect(),
            _ => Vec::new(),
        };
        self.entries.insert(new.clone(), e);
        Ok(Some((new, outs)))
    }

    /// The reaper: sessions served here expire at their max inactive interval and their backups
    /// are told; a backup copy expires locally only at twice that.
    pub fn expire(&mut self, now_ms: u64) -> (Vec<Out>, Vec<SessionEvent>) {
        let due: Vec<(SessionId, bool)> = self
            .entries
            .values()
            .filter_map(|e| {
                let primary = matches!(e.role, Role::Primary { .. });
                let max = e.session.max_inactive().as_millis() as u64;
                let idle = now_ms.saturating_sub(e.session.last_accessed_ms());
                let due = max > 0
                    && if primary {
                        idle > max
                    } else {
                        idle > max.saturating_mul(2)
                    };
                due.then(|| (e.session.id().clone(), primary))
            })
            .collect();
        let (mut outs, mut events) = (Vec::new(), Vec::new());
        for (id, primary) in due {
            let (o, ev) = self.invalidate(&id);
            if primary {
                outs.extend(o);
            }
            events.extend(ev);
        }
        (outs, events)
    }

    /// A request needs a session this node does not hold: ask every member.
    pub fn fetch(&mut self, id: &SessionId) -> Vec<Out> {
        if self.entries.contains_key(id) || self.ended.contains(id) || self.members.is_empty() {
            return Vec::new();
        }
        self.fetching.insert(id.clone(), self.members.len());
        vec![Out {
            dest: Dest::All,
            msg: BackupMessage::Fetch { id: id.clone() },
        }]
    }

    /// Whether a fetch of `id` still waits for answers.
    pub fn is_fetching(&self, id: &SessionId) -> bool {
        self.fetching.contains_key(id)
    }

    /// Gives up a fetch (timeout).
    pub fn end_fetch(&mut self, id: &SessionId) {
        self.fetching.remove(id);
    }

    /// The members changed: failover and re-placement.
    pub fn set_members(&mut self, mut members: Vec<MemberId>) -> Vec<Out> {
        members.retain(|m| *m != self.local);
        members.sort();
        members.dedup();
        self.members = members;
        let alive = |m: &MemberId, members: &[MemberId]| members.binary_search(m).is_ok();
        let mut outs = Vec::new();
        let ids: Vec<SessionId> = self.entries.keys().cloned().collect();
        for id in ids {
            let Some(e) = self.entries.get(&id) else {
                continue;
            };
            match e.role.clone() {
                Role::Primary { backups } => {
                    let now = self.place(&id);
                    if now == backups {
                        continue;
                    }
                    let state = e.session.state().clone();
                    let (announced, epoch) = (!e.unannounced, e.epoch);
                    if announced {
                        for b in now.iter().filter(|b| !backups.contains(b)) {
                            outs.push(Self::to(
                                *b,
                                BackupMessage::Copy {
                                    state: state.clone(),
                                    backups: now.clone(),
                                    epoch,
                                },
                            ));
                        }
                        for b in backups
                            .iter()
                            .filter(|b| !now.contains(b) && alive(b, &self.members))
                        {
                            outs.push(Self::to(*b, BackupMessage::Drop { id: id.clone() }));
                        }
                    }
                    if let Some(e) = self.entries.get_mut(&id) {
                        e.role = Role::Primary { backups: now };
                    }
                }
                Role::Backup { primary, backups } if !alive(&primary, &self.members) => {
                    // The first backup still alive, in the primary's order, takes over.
                    let first = backups
                        .iter()
                        .find(|b| **b == self.local || alive(b, &self.members));
                    if first == Some(&self.local) {
                        outs.extend(self.promote(&id, true));
                    }
                }
                Role::Backup { .. } => {}
            }
        }
        outs
    }

    /// A message from member `from`.
    pub fn handle(&mut self, from: MemberId, msg: &BackupMessage) -> (Vec<Out>, Vec<SessionEvent>) {
        let mut events = Vec::new();
        let mut outs = Vec::new();
        match msg {
            BackupMessage::Copy {
                state,
                backups,
                epoch,
            } => {
                if self.ended.contains(&state.id) {
                    return (outs, events);
                }
                // A copy from an older owner than the one known here is stale.
                if self
                    .entries
                    .get(&state.id)
                    .is_some_and(|e| e.epoch > *epoch)
                {
                    return (outs, events);
                }
                let newer = self
                    .entries
                    .get(&state.id)
                    .is_none_or(|e| e.session.version() <= state.version);
                let still_mine = self.is_primary(&state.id)
                    && self
                        .entries
                        .get(&state.id)
                        .is_some_and(|e| e.epoch >= *epoch);
                if newer && still_mine {
                    // A newer copy reached the primary (it had fetched an older one): take it
                    // and pass it on to its backups.
                    let mine = self
                        .backups_of(&state.id)
                        .map(<[MemberId]>::to_vec)
                        .unwrap_or_default();
                    let mut own = *epoch;
                    if let Some(e) = self.entries.get_mut(&state.id) {
                        e.session = Session::from_state(state.clone());
                        own = e.epoch;
                    }
                    for b in &mine {
                        let copy = BackupMessage::Copy {
                            state: state.clone(),
                            backups: mine.clone(),
                            epoch: own,
                        };
                        outs.push(Self::to(*b, copy));
                    }
                } else if newer {
                    let had = self.entries.contains_key(&state.id);
                    let role = Role::Backup {
                        primary: from,
                        backups: backups.clone(),
                    };
                    self.entries.insert(
                        state.id.clone(),
                        Entry {
                            session: Session::from_state(state.clone()),
                            role,
                            unannounced: false,
                            copy_pending: false,
                            epoch: *epoch,
                            replicated_access_ms: 0,
                        },
                    );
                    if !had {
                        events.push(SessionEvent::Created(state.id.clone()));
                    }
                }
            }
            BackupMessage::Delta {
                id,
                base,
                version,
                ops,
                last_accessed_ms,
            } => {
                if self.ended.contains(id) {
                    return (outs, events);
                }
                match self.entries.get_mut(id) {
                    Some(e) => {
                        let attr = super::delta::attribute_events(&e.session, ops);
                        match e.session.apply_delta(*base, *version, ops) {
                            Applied::Applied => {
                                e.session.access(*last_accessed_ms);
                                if let Role::Backup { primary, .. } = &mut e.role {
                                    *primary = from;
                                }
                                events.extend(attr);
                            }
                            Applied::Stale => {}
                            Applied::Gap => {
                                outs.push(Self::to(from, BackupMessage::GetCopy { id: id.clone() }))
                            }
                        }
                    }
                    None => outs.push(Self::to(from, BackupMessage::GetCopy { id: id.clone() })),
                }
            }
            BackupMessage::Accessed {
                id,
                version,
                last_accessed_ms,
            } => {
                if let Some(e) = self.entries.get_mut(id) {
                    e.session.access(*last_accessed_ms);
                    if e.session.version() < *version {
                        outs.push(Self::to(from, BackupMessage::GetCopy { id: id.clone() }));
                    }
                } else if !self.ended.contains(id) {
                    outs.push(Self::to(from, BackupMessage::GetCopy { id: id.clone() }));
                }
            }
            BackupMessage::Drop { id } => {
                if self
                    .entries
                    .get(id)
                    .is_some_and(|e| matches!(e.role, Role::Backup { .. }))
                {
                    self.entries.remove(id);
                }
            }
            BackupMessage::Expired { id } => {
                if self.entries.remove(id).is_some() {
                    events.push(SessionEvent::Destroyed(id.clone()));
                }
                self.bury(id);
            }
            BackupMessage::ChangeId { old, new } => {
                self.bury(old);
                if let Some(mut e) = self.entries.remove(old) {
                    let newer_here = self
                        .entries
                        .get(new)
                        .is_some_and(|n| n.session.version() >= e.session.version());
                    if !newer_here && !self.ended.contains(new) {
                        e.session.change_id(new.clone());
                        self.entries.insert(new.clone(), e);
                        events.push(SessionEvent::IdChanged {
                            old: old.clone(),
                            new: new.clone(),
                        });
                    }
                }
            }
            BackupMessage::GetCopy { id } => {
                if let Some(e) = self.entries.get(id) {
                    if let Role::Primary { backups } = &e.role {
                        outs.push(Self::to(
                            from,
                            BackupMessage::Copy {
                                state: e.session.state().clone(),
                                backups: backups.clone(),
                                epoch: e.epoch,
                            },
                        ));
                    }
                }
            }
            BackupMessage::Fetch { id } => {
                let held = self.entries.get(id).filter(|e| !e.unannounced);
                let state = held.map(|e| e.session.state().clone());
                let epoch = held.map_or(0, |e| e.epoch);
                outs.push(Self::to(
                    from,
                    BackupMessage::Fetched {
                        id: id.clone(),
                        state,
                        epoch,
                    },
                ));
            }
            BackupMessage::Fetched { id, state, epoch } => {
                let Some(left) = self.fetching.get_mut(id) else {
                    return (outs, events);
                };
                *left = left.saturating_sub(1);
                let done = *left == 0;
                if let Some(state) = state {
                    if !self.ended.contains(id) {
                        let newer = self
                            .entries
                            .get(id)
                            .is_none_or(|e| e.session.version() < state.version);
                        if newer {
                            let had = self.entries.contains_key(id);
                            let entry = Entry {
                                session: Session::from_state(state.clone()),
                                role: Role::Backup {
                                    primary: from,
                                    backups: Vec::new(),
                                },
                                unannounced: false,
                                copy_pending: false,
                                epoch: *epoch,
                                replicated_access_ms: 0,
                            };
                            self.entries.insert(id.clone(), entry);
                            if !had {
                                events.push(SessionEvent::Created(id.clone()));
                            }
                            // This member serves it from now on.
                            outs.extend(self.promote(id, false));
                        }
                    }
                }
                if done {
                    self.fetching.remove(id);
                }
            }
            BackupMessage::NewPrimary {
                id,
                version,
                backups: chosen,
                epoch,
            } => {
                let Some(e) = self.entries.get(id) else {
                    return (outs, events);
                };
                let mine = matches!(e.role, Role::Primary { .. });
                // Of two claims the higher epoch wins; on a tie, the higher member id.
                let keep = e.epoch > *epoch || (e.epoch == *epoch && mine && self.local > from);
                if keep {
                    if mine {
                        // Tell the claimant it lost, with this copy (which may be newer).
                        let (state, my_epoch) = (e.session.state().clone(), e.epoch);
                        let backups = self
                            .backups_of(id)
                            .map(<[MemberId]>::to_vec)
                            .unwrap_or_default();
                        outs.push(Self::to(
                            from,
                            BackupMessage::NewPrimary {
                                id: id.clone(),
                                version: state.version,
                                backups,
                                epoch: my_epoch,
                            },
                        ));
                    }
                    return (outs, events);
                }
                if mine && e.session.version() > *version {
                    // This copy is newer than the new primary's: send it on.
                    let state = e.session.state().clone();
                    outs.push(Self::to(
                        from,
                        BackupMessage::Copy {
                            state,
                            backups: Vec::new(),
                            epoch: *epoch,
                        },
                    ));
                }
                // The new primary's choice, not a placement computed from this node's view,
                // which may still list a member that is gone.
                if chosen.contains(&self.local) {
                    if let Some(e) = self.entries.get_mut(id) {
                        e.role = Role::Backup {
                            primary: from,
                            backups: chosen.clone(),
                        };
                        e.epoch = *epoch;
                    }
                } else {
                    self.entries.remove(id);
                }
            }
        }
        (outs, events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(n: u8) -> MemberId {
        MemberId([n; 16])
    }

    #[test]
    fn placement_is_deterministic_spread_and_stable() {
        let members: Vec<MemberId> = (1..=8).map(m).collect();
        let ids: Vec<SessionId> = (0..4000)
            .map(|_| SessionId::generate("x").unwrap())
            .collect();
        let mut count = HashMap::new();
        for id in &ids {
            let p = placement(id, m(1), &members, 2);
            assert_eq!(p, placement(id, m(1), &members, 2));
            assert_eq!(p.len(), 2);
            assert!(!p.contains(&m(1)));
            for b in p {
                *count.entry(b).or_insert(0usize) += 1;
            }
        }
        // 8000 backup slots over 7 members: each near 1143.
        for (_, c) in count {
            assert!((900..1400).contains(&c), "{c}");
        }
        // Removing one member moves only the sessions it backed up.
        let fewer: Vec<MemberId> = members.iter().copied().filter(|x| *x != m(5)).collect();
        let moved = ids.iter().filter(|id| {
            let a = placement(id, m(1), &members, 1);
            a != placement(id, m(1), &fewer, 1) && !a.contains(&m(5))
        });
        assert_eq!(moved.count(), 0);
    }

    fn node(n: u8, members: &[u8], k: usize) -> BackupCore {
        let mut c = BackupCore::new(
            BackupConfig {
                backups: k,
                ..BackupConfig::default()
            },
            m(n),
            &format!("n{n}"),
        );
        c.set_members(members.iter().map(|x| m(*x)).collect());
        c
    }

    /// Delivers messages until quiet; returns how many Delta messages were sent.
    fn run(nodes: &mut [BackupCore], mut queue: Vec<(MemberId, Out)>) -> usize {
        let mut deltas = 0;
        while let Some((from, out)) = queue.pop() {
            if matches!(out.msg, BackupMessage::Delta { .. }) {
                deltas += 1;
            }
            let targets: Vec<usize> = match out.dest {
                Dest::All => (0..nodes.len())
                    .filter(|i| nodes[*i].local != from)
                    .collect(),
                Dest::Member(t) => nodes
                    .iter()
                    .position(|n| n.local == t)
                    .into_iter()
                    .collect(),
            };
            for i in targets {
                let me = nodes[i].local;
                let (outs, _) = nodes[i].handle(from, &out.msg);
                queue.extend(outs.into_iter().map(|o| (me, o)));
            }
        }
        deltas
    }

    #[test]
    fn changes_go_to_the_backups_only_and_failover_keeps_the_session() {
        let all = [1u8, 2, 3, 4, 5];
        let mut nodes: Vec<BackupCore> = all.iter().map(|n| node(*n, &all, 1)).collect();
        let id = nodes[0].create(0).unwrap();
        nodes[0].session_mut(&id).unwrap().set("u", &"ann").unwrap();
        let outs = nodes[0].end_request(&id, 0);
        assert_eq!(outs.len(), 1, "one backup");
        run(&mut nodes, outs.into_iter().map(|o| (m(1), o)).collect());
        let holders: Vec<u8> = nodes
            .iter()
            .filter(|n| n.session(&id).is_some())
            .map(|n| n.local.0[0])
            .collect();
        assert_eq!(holders.len(), 2, "primary and one backup: {holders:?}");
        // A change reaches exactly one member.
        nodes[0].session_mut(&id).unwrap().set("n", &1u8).unwrap();
        let outs = nodes[0].end_request(&id, 1);
        assert_eq!(
            run(&mut nodes, outs.into_iter().map(|o| (m(1), o)).collect()),
            1
        );
        // The primary dies: its backup takes over and re-places.
        let survivors: Vec<u8> = all[1..].to_vec();
        let mut rest: Vec<BackupCore> = nodes.drain(1..).collect();
        let mut queue = Vec::new();
        for n in rest.iter_mut() {
            let me = n.local;
            queue.extend(
                n.set_members(survivors.iter().map(|x| m(*x)).collect())
                    .into_iter()
                    .map(|o| (me, o)),
            );
        }
        run(&mut rest, queue);
        let primaries: Vec<&BackupCore> = rest.iter().filter(|n| n.is_primary(&id)).collect();
        assert_eq!(primaries.len(), 1);
        assert_eq!(
            primaries[0].session(&id).unwrap().get::<u8>("n").unwrap(),
            Some(1)
        );
        assert_eq!(
            rest.iter().filter(|n| n.session(&id).is_some()).count(),
            2,
            "backup count restored"
        );
    }

    #[test]
    fn a_request_on_a_third_node_fetches_the_session_and_serves_it_from_then_on() {
        let all = [1u8, 2, 3, 4];
        let mut nodes: Vec<BackupCore> = all.iter().map(|n| node(*n, &all, 1)).collect();
        let id = nodes[0].create(0).unwrap();
        nodes[0].session_mut(&id).unwrap().set("u", &7u8).unwrap();
        let outs = nodes[0].end_request(&id, 0);
        run(&mut nodes, outs.into_iter().map(|o| (m(1), o)).collect());
        // Pick a node that holds nothing.
        let third = (0..4).find(|i| nodes[*i].session(&id).is_none()).unwrap();
        let me = nodes[third].local;
        let ask = nodes[third].fetch(&id);
        run(&mut nodes, ask.into_iter().map(|o| (me, o)).collect());
        assert!(nodes[third].is_primary(&id));
        assert_eq!(
            nodes[third].session(&id).unwrap().get::<u8>("u").unwrap(),
            Some(7)
        );
        assert_eq!(
            nodes.iter().filter(|n| n.is_primary(&id)).count(),
            1,
            "one primary"
        );
        assert_eq!(
            nodes.iter().filter(|n| n.session(&id).is_some()).count(),
            2,
            "primary + 1 backup, old copies dropped"
        );
    }
}
