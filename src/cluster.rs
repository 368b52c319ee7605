//! The cluster (Tomcat's `SimpleTcpCluster` with its `ClusterSessionListener` and
//! `ReplicationValve` filter): one object the application starts and stops, owning the channel
//! and a session manager (DeltaManager or BackupManager) per distributable application, and
//! routing each session message to the
//! manager of its application.

use crate::channel::{ChannelListener, GroupChannel, MembershipListener};
use crate::config::ChannelConfig;
use crate::error::{ChannelError, ConfigError};
use crate::interceptor::ChannelMessage;
use crate::member::{Member, MemberId};
use crate::options::SendOptions;
use crate::session::engine::Payload;
use crate::session::manager::ClusterManager;
use crate::session::replica::SessionMessage;
use crate::wire::{decode_body, encode_body};
use log::{info, warn};
use parking_lot::{Mutex, RwLock};
use regex::Regex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Which manager replicates an application's sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManagerKind {
    /// Every change to every member (Tomcat's `DeltaManager`): for 2 to 4 servers.
    Delta,
    /// One primary and `backups` backups per session (Tomcat's `BackupManager`): the cost of a
    /// change does not grow with the cluster.
    Backup,
}

/// Settings of the session managers (Tomcat's `<Manager>` attributes).
#[derive(Clone, Debug)]
pub struct ManagerConfig {
    /// `Delta` (default) or `Backup` (Tomcat: the `<Manager className>`).
    pub kind: ManagerKind,
    /// Backup copies per session, with `Backup` (Tomcat: exactly 1). Default 1.
    pub backups: usize,
    /// How a BackupManager sends changes to the backups (Tomcat: `mapSendOptions`, 6:
    /// use-ack and synchronized-ack).
    pub map_send_options: SendOptions,
    /// How long a BackupManager waits for a session it fetches from another member (Tomcat:
    /// `rpcTimeout`, 15 s).
    pub rpc_timeout: Duration,
    /// Max inactive interval of new sessions (`<session-timeout>`, 30 min).
    pub max_inactive: Duration,
    /// Period of the expiry check (Tomcat: `processExpiresFrequency` 6 × background delay
    /// 10 s = 60 s).
    pub expire_frequency: Duration,
    /// How long a starting manager waits for the sessions of an existing member
    /// (`stateTransferTimeout`, 60 s).
    pub state_transfer_timeout: Duration,
    /// Sessions per state-transfer chunk (`sendAllSessionsSize`, 1000).
    pub send_all_sessions_size: usize,
    /// End every session everywhere when this node stops (`expireSessionsOnShutdown`, false:
    /// the other members keep them).
    pub expire_sessions_on_shutdown: bool,
    /// Tell the application's listeners about changes made on other members
    /// (`notifyListenersOnReplication`, true).
    pub notify_listeners_on_replication: bool,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig {
            kind: ManagerKind::Delta,
            backups: 1,
            map_send_options: SendOptions::SYNC_ACK,
            rpc_timeout: Duration::from_secs(15),
            max_inactive: Duration::from_secs(30 * 60),
            expire_frequency: Duration::from_secs(60),
            state_transfer_timeout: Duration::from_secs(60),
            send_all_sessions_size: 1000,
            expire_sessions_on_shutdown: false,
            notify_listeners_on_replication: true,
        }
    }
}

/// Everything a [`SimpleTcpCluster`] needs.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub channel: ChannelConfig,
    /// This node's jvmRoute: the suffix of the session ids it makes, and its member name.
    pub jvm_route: String,
    /// How session changes are sent (Tomcat: `channelSendOptions`, 8 asynchronous).
    pub channel_send_options: SendOptions,
    pub manager: ManagerConfig,
    /// URIs not replicated (Tomcat's `ReplicationValve` `filter`): semicolon-separated regular
    /// expressions, each matched against the whole URI, e.g. `.*\.gif;.*\.js;.*\.css`.
    pub valve_filter: String,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            channel: ChannelConfig::default(),
            jvm_route: String::new(),
            channel_send_options: SendOptions::ASYNCHRONOUS,
            manager: ManagerConfig::default(),
            valve_filter: String::new(),
        }
    }
}

/// Compiles Tomcat's filter list into one anchored regex (`None` for an empty list).
pub fn compile_filter(filter: &str) -> Result<Option<Regex>, ConfigError> {
    let parts: Vec<&str> = filter
        .split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if parts.is_empty() {
        return Ok(None);
    }
    for p in &parts {
        Regex::new(p).map_err(|e| ConfigError {
            key: "valve_filter",
            reason: format!("'{p}': {e}"),
        })?;
    }
    let joined = format!(
        "^(?:{})$",
        parts
            .iter()
            .map(|p| format!("(?:{p})"))
            .collect::<Vec<_>>()
            .join("|")
    );
    Regex::new(&joined).map(Some).map_err(|e| ConfigError {
        key: "valve_filter",
        reason: e.to_string(),
    })
}

/// A session message on the wire: which application it is for, and what.
#[derive(Serialize, Deserialize)]
struct ClusterMessage {
    context: String,
    msg: Payload,
}

/// The decoder `ClusterInner::received` uses, for the property tests.
#[cfg(test)]
pub(crate) fn decode_cluster_message(bytes: &[u8]) -> Result<(String, Payload), postcard::Error> {
    decode_body::<ClusterMessage>(bytes).map(|m| (m.context, m.msg))
}

#[cfg(test)]
pub(crate) fn encode_cluster_message(context: &str, msg: &Payload) -> Vec<u8> {
    ClusterInner::encode(context, msg)
}

pub(crate) struct ClusterInner {
    channel: GroupChannel,
    cfg: ClusterConfig,
    filter: Option<Regex>,
    managers: RwLock<HashMap<String, Arc<ClusterManager>>>,
    /// Senders of messages received, by id: a reply (to GET_ALL_SESSIONS, say) can reach a
    /// member whose hello the membership service has not processed yet. Bounded; entries go when
    /// the member does.
    senders: Mutex<HashMap<MemberId, Member>>,
}

/// Most senders remembered; past it the map starts over (it is only a fallback).
const MAX_SENDERS: usize = 1024;

impl ClusterInner {
    /// The ids of the members the channel sees now.
    pub(crate) fn member_ids(&self) -> Vec<MemberId> {
        self.channel.members().iter().map(|m| m.id).collect()
    }

    pub(crate) fn filtered(&self, uri: &str) -> bool {
        self.filter.as_ref().is_some_and(|f| f.is_match(uri))
    }

    fn encode(context: &str, msg: &Payload) -> Vec<u8> {
        encode_body(&ClusterMessage {
            context: context.to_string(),
            msg: msg.clone(),
        })
    }

    pub(crate) fn send_all(
        &self,
        context: &str,
        msg: &Payload,
        options: SendOptions,
    ) -> Result<(), ChannelError> {
        self.channel
            .send_to_all(Self::encode(context, msg), options)
    }

    pub(crate) fn send_to(
        &self,
        id: MemberId,
        context: &str,
        msg: &Payload,
        options: SendOptions,
    ) -> Result<(), ChannelError> {
        let known = self.channel.members().into_iter().find(|m| m.id == id);
        let Some(m) = known.or_else(|| self.senders.lock().get(&id).cloned()) else {
            return Ok(()); // it left: nothing to answer
        };
        self.channel.send(&[m], Self::encode(context, msg), options)
    }

    /// The ClusterSessionListener: routes a message to its application's manager.
    fn received(&self, m: &ChannelMessage<'_>) -> Result<(), String> {
        let cm: ClusterMessage =
            decode_body(&m.payload).map_err(|e| format!("not a session message: {e}"))?;
        {
            let mut senders = self.senders.lock();
            if senders.get(&m.from.id) != Some(m.from) {
                if senders.len() >= MAX_SENDERS {
                    senders.clear();
                }
                senders.insert(m.from.id, m.from.clone());
            }
        }
        let mgr = self.managers.read().get(&cm.context).cloned();
        match mgr {
            Some(mgr) => mgr.receive(m.from.id, &cm.msg),
            None => {
                if !matches!(cm.msg, Payload::Delta(SessionMessage::NoContextManager)) {
                    // Say so, rather than leave a joining member waiting for state.
                    let _ = self.send_to(
                        m.from.id,
                        &cm.context,
                        &Payload::Delta(SessionMessage::NoContextManager),
                        SendOptions::ASYNCHRONOUS,
                    );
                }
                Err(format!(
                    "no application '{}' on member {}",
                    cm.context, self.cfg.jvm_route
                ))
            }
        }
    }
}

struct Listener(Weak<ClusterInner>);

impl ChannelListener for Listener {
    fn message_received(&self, m: &ChannelMessage<'_>) -> Result<(), String> {
        match self.0.upgrade() {
            Some(c) => c.received(m),
            None => Ok(()),
        }
    }
}

impl MembershipListener for Listener {
    fn member_added(&self, m: &Member) {
        if let Some(c) = self.0.upgrade() {
            let managers: Vec<Arc<ClusterManager>> = c.managers.read().values().cloned().collect();
            let members: Vec<MemberId> = c.channel.members().iter().map(|m| m.id).collect();
            for mgr in managers {
                mgr.member_added(m);
                mgr.members_changed(members.clone());
            }
        }
    }
    fn member_disappeared(&self, m: &Member) {
        if let Some(c) = self.0.upgrade() {
            c.senders.lock().remove(&m.id);
            let managers: Vec<Arc<ClusterManager>> = c.managers.read().values().cloned().collect();
            let members: Vec<MemberId> = c.channel.members().iter().map(|m| m.id).collect();
            for mgr in managers {
                mgr.members_changed(members.clone());
            }
        }
    }
}

/// The cluster a node runs: a channel and the session managers of its applications.
pub struct SimpleTcpCluster {
    inner: Arc<ClusterInner>,
    reaper: Mutex<Option<(crossbeam_channel::Sender<()>, JoinHandle<()>)>>,
}

impl SimpleTcpCluster {
    pub fn new(mut cfg: ClusterConfig) -> Result<SimpleTcpCluster, ChannelError> {
        let filter = compile_filter(&cfg.valve_filter)?;
        if cfg.channel.local_name.is_empty() {
            cfg.channel.local_name = cfg.jvm_route.clone();
        }
        let channel = GroupChannel::new(cfg.channel.clone())?;
        let inner = Arc::new(ClusterInner {
            channel,
            cfg,
            filter,
            managers: RwLock::new(HashMap::new()),
            senders: Mutex::new(HashMap::new()),
        });
        let l = Arc::new(Listener(Arc::downgrade(&inner)));
        inner.channel.add_channel_listener(l.clone());
        inner.channel.add_membership_listener(l);
        Ok(SimpleTcpCluster {
            inner,
            reaper: Mutex::new(None),
        })
    }

    /// Registers a distributable application; its sessions are replicated by the manager
    /// `ManagerConfig::kind` names (a DeltaManager by default).
    pub fn add_application(&self, context: &str) -> Arc<ClusterManager> {
        let c = &self.inner.cfg;
        let options = match c.manager.kind {
            ManagerKind::Delta => c.channel_send_options,
            ManagerKind::Backup => c.manager.map_send_options,
        };
        let mgr = Arc::new(ClusterManager::new(
            context,
            &c.jvm_route,
            &c.manager,
            options,
            Arc::downgrade(&self.inner),
        ));
        self.inner
            .managers
            .write()
            .insert(context.to_string(), mgr.clone());
        mgr
    }

    pub fn manager(&self, context: &str) -> Option<Arc<ClusterManager>> {
        self.inner.managers.read().get(context).cloned()
    }

    /// Every application's manager, sorted by context.
    pub fn managers(&self) -> Vec<Arc<ClusterManager>> {
        let mut v: Vec<Arc<ClusterManager>> =
            self.inner.managers.read().values().cloned().collect();
        v.sort_by(|a, b| a.context().cmp(b.context()));
        v
    }

    pub fn channel(&self) -> &GroupChannel {
        &self.inner.channel
    }

    /// Starts the channel and the expiry thread. Managers ask the first member they see for its
    /// sessions; `DeltaManager::wait_ready` waits for that.
    pub fn start(&self) -> Result<(), ChannelError> {
        let mut reaper = self.reaper.lock();
        if reaper.is_some() {
            return Ok(());
        }
        self.inner.channel.start()?;
        // With static or multicast membership, managers wait a moment for a first member to ask
        // for its sessions: long enough for a probe round or two heartbeats.
        let ch = &self.inner.cfg.channel;
        let expect = !ch.static_members.is_empty() || ch.membership.mcast.is_some();
        let settle = expect.then(|| {
            let beat = ch
                .membership
                .mcast
                .as_ref()
                .map_or(Duration::ZERO, |m| m.frequency * 2);
            beat.max(ch.membership.connect_timeout)
        });
        let local = self
            .inner
            .channel
            .local_member()
            .map_or(MemberId([0; 16]), |m| m.id);
        for mgr in self.inner.managers.read().values() {
            mgr.started(local, settle);
        }
        let (stop, stop_rx) = crossbeam_channel::bounded::<()>(1);
        let weak = Arc::downgrade(&self.inner);
        // Expiry at its frequency; state-transfer deadlines checked at least every second.
        let period = self
            .inner
            .cfg
            .manager
            .expire_frequency
            .min(Duration::from_secs(1));
        let expire_every = self.inner.cfg.manager.expire_frequency;
        let t = std::thread::Builder::new()
            .name("tribecast-reaper".into())
            .spawn(move || {
                let mut next_expire = Instant::now() + expire_every;
                while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                    stop_rx.recv_timeout(period)
                {
                    let Some(inner) = weak.upgrade() else { return };
                    let now = Instant::now();
                    let managers: Vec<Arc<ClusterManager>> =
                        inner.managers.read().values().cloned().collect();
                    for mgr in managers {
                        if now >= next_expire {
                            mgr.background(now);
                        } else {
                            mgr.background_transfer_only(now);
                        }
                    }
                    if now >= next_expire {
                        next_expire = now + expire_every;
                    }
                }
            })
            .map_err(ChannelError::Io)?;
        *reaper = Some((stop, t));
        info!(
            "Cluster started: jvmRoute '{}', send options {:?}",
            self.inner.cfg.jvm_route, self.inner.cfg.channel_send_options
        );
        Ok(())
    }

    /// Stops the expiry thread and the channel. With `expire_sessions_on_shutdown` every session
    /// is ended everywhere first; otherwise the other members keep them. Safe to call twice.
    pub fn stop(&self) {
        let Some((stop, t)) = self.reaper.lock().take() else {
            return;
        };
        let _ = stop.send(());
        if t.join().is_err() {
            warn!("Reaper thread panicked");
        }
        let everywhere = self.inner.cfg.manager.expire_sessions_on_shutdown;
        for mgr in self.inner.managers.read().values() {
            mgr.expire_all(everywhere);
        }
        self.inner.channel.stop();
    }
}

impl Drop for SimpleTcpCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tomcat_filter_list_matches_whole_uris() {
        let f = compile_filter(
            r".*\.gif;.*\.js;.*\.jpeg;.*\.jpg;.*\.png;.*\.htm;.*\.html;.*\.css;.*\.txt",
        )
        .unwrap()
        .unwrap();
        assert!(f.is_match("/app/static/site.css"));
        assert!(f.is_match("/logo.gif"));
        assert!(!f.is_match("/app/profile"));
        assert!(
            !f.is_match("/app/style.css/edit"),
            "whole-URI match, as Tomcat's matches()"
        );
        assert!(compile_filter("").unwrap().is_none());
        assert_eq!(compile_filter("(").unwrap_err().key, "valve_filter");
    }
}
