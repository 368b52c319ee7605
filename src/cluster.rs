//! The cluster (Tomcat's `SimpleTcpCluster` with its `ClusterSessionListener` and
//! `ReplicationValve` filter): one object the application starts and stops, owning the channel
//! and a session manager (DeltaManager or BackupManager) per distributable application, and
//! routing each session message to the
//! manager of its application.

use crate::channel::{ChannelListener, GroupChannel, MembershipListener};
use crate::config::ChannelConfig;
use crate::error::ChannelError;
use crate::interceptor::ChannelMessage;
use crate::member::{Member, MemberId};
use crate::metrics::{self, ManagerSnapshot};
use crate::options::SendOptions;
pub use crate::session::config::{compile_filter, ManagerConfig, ManagerKind, RebindRoute};
use crate::session::engine::Payload;
use crate::session::manager::ClusterManager;
use crate::session::outbound::{decode_cluster_message, encode_cluster_message, Outbound};
use crate::session::replica::SessionMessage;
use log::{info, warn};
use parking_lot::{Mutex, RwLock};
use regex::Regex;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

/// Everything a [`SimpleTcpCluster`] needs.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ClusterConfig {
    /// The channel under the cluster (Tomcat's `<Channel>`).
    pub channel: ChannelConfig,
    /// This node's jvmRoute: the suffix of the session ids it makes, and its member name.
    pub jvm_route: String,
    /// How session changes are sent (Tomcat: `channelSendOptions`, 8 asynchronous).
    pub channel_send_options: SendOptions,
    /// The session manager of every application (Tomcat's `<Manager>`).
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

pub(crate) struct ClusterInner {
    channel: GroupChannel,
    cfg: ClusterConfig,
    /// The valve filter, compiled once; each manager is given it.
    filter: Option<Regex>,
    managers: RwLock<HashMap<String, Arc<ClusterManager>>>,
    /// Senders of messages received, by id: a reply (to GET_ALL_SESSIONS, say) can reach a
    /// member whose hello the membership service has not processed yet. Bounded; entries go when
    /// the member does.
    senders: Mutex<HashMap<MemberId, Member>>,
}

/// Most senders remembered; past it the map starts over (it is only a fallback).
const MAX_SENDERS: usize = 1024;

impl Outbound for ClusterInner {
    fn members(&self) -> Vec<Member> {
        self.channel.members()
    }

    fn send_all(
        &self,
        context: &str,
        msg: &Payload,
        options: SendOptions,
    ) -> Result<(), ChannelError> {
        self.channel
            .send_to_all(encode_cluster_message(context, msg), options)
    }

    fn send_to(
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
        self.channel
            .send(&[m], encode_cluster_message(context, msg), options)
    }
}

impl ClusterInner {
    /// The ClusterSessionListener: routes a message to its application's manager.
    fn received(&self, m: &ChannelMessage<'_>) -> Result<(), String> {
        let (context, msg) = decode_cluster_message(&m.payload)
            .map_err(|e| format!("not a session message: {e}"))?;
        {
            let mut senders = self.senders.lock();
            if senders.get(&m.from.id) != Some(m.from) {
                if senders.len() >= MAX_SENDERS {
                    senders.clear();
                }
                senders.insert(m.from.id, m.from.clone());
            }
        }
        let mgr = self.managers.read().get(&context).cloned();
        match mgr {
            Some(mgr) => mgr.receive(m.from.id, msg),
            None => {
                if !matches!(msg, Payload::Delta(SessionMessage::NoContextManager)) {
                    // Say so, rather than leave a joining member waiting for state.
                    let _ = self.send_to(
                        m.from.id,
                        &context,
                        &Payload::Delta(SessionMessage::NoContextManager),
                        SendOptions::ASYNCHRONOUS,
                    );
                }
                Err(format!(
                    "no application '{}' on member {}",
                    context, self.cfg.jvm_route
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
            for mgr in managers {
                mgr.member_added(m);
                mgr.members_changed();
            }
        }
    }
    fn member_disappeared(&self, m: &Member) {
        if let Some(c) = self.0.upgrade() {
            c.senders.lock().remove(&m.id);
            let managers: Vec<Arc<ClusterManager>> = c.managers.read().values().cloned().collect();
            for mgr in managers {
                mgr.members_changed();
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
    /// A cluster from `cfg` (validated); `start` starts its channel.
    pub fn new(mut cfg: ClusterConfig) -> Result<SimpleTcpCluster, ChannelError> {
        let filter = compile_filter(&cfg.valve_filter)?;
        cfg.manager.cookie.validate()?;
        cfg.manager.validate()?;
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
        // Weak: the cluster owns its managers.
        let outbound = Arc::downgrade(&self.inner) as Weak<dyn Outbound>;
        let options = match c.manager.kind {
            ManagerKind::Delta => c.channel_send_options,
            ManagerKind::Backup => c.manager.map_send_options,
        };
        let mgr = Arc::new(ClusterManager::new(
            context,
            &c.jvm_route,
            &c.manager,
            options,
            self.inner.filter.clone(),
            outbound,
            c.channel.max_frame_size,
        ));
        self.inner
            .managers
            .write()
            .insert(context.to_string(), mgr.clone());
        mgr
    }

    /// The manager of the application at `context`, if one was added.
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

    /// A snapshot of every application's manager, sorted by context.
    pub fn manager_stats(&self) -> Vec<ManagerSnapshot> {
        self.managers().iter().map(|m| m.stats()).collect()
    }

    /// The Prometheus text (format 0.0.4) of this node: its channel's member figures and each
    /// application's manager. Serve it with content type `text/plain; version=0.0.4`.
    pub fn prometheus_text(&self) -> String {
        metrics::render(&self.inner.channel.stats(), &self.manager_stats())
    }

    /// The channel under this cluster (for members, statistics and raw sends).
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
        // The managers' cores decide what is due (expiry at its frequency, fetch and
        // state-transfer deadlines); this thread only tells them the time, at least every second.
        let period = self
            .inner
            .cfg
            .manager
            .expire_frequency
            .min(Duration::from_secs(1));
        let t = std::thread::Builder::new()
            .name("tribecast-reaper".into())
            .spawn(move || {
                let mut wait = period;
                while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                    stop_rx.recv_timeout(wait)
                {
                    let Some(inner) = weak.upgrade() else { return };
                    let managers: Vec<Arc<ClusterManager>> =
                        inner.managers.read().values().cloned().collect();
                    wait = period;
                    for mgr in managers {
                        mgr.tick();
                        if let Some(due) = mgr.next_due() {
                            wait = wait.min(due.max(Duration::from_millis(5)));
                        }
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
        let mut pumps = Vec::new();
        for mgr in self.inner.managers.read().values() {
            pumps.extend(mgr.stop_transfers());
            mgr.expire_all(everywhere);
        }
        self.inner.channel.stop();
        // A pump sending a chunk finds the channel stopped and ends.
        for p in pumps {
            if p.join().is_err() {
                warn!("State transfer thread panicked");
            }
        }
    }
}

impl Drop for SimpleTcpCluster {
    fn drop(&mut self) {
        self.stop();
    }
}
