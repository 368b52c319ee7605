//! What the session layer is configured with: which manager replicates an application's
//! sessions and how (Tomcat's `<Manager>` attributes), and the `ReplicationValve`'s filter of
//! URIs whose requests are not replicated. The cluster's `ClusterConfig` holds them (and
//! re-exports them, as the crate root does).

use super::cookie::CookieConfig;
use crate::error::ConfigError;
use crate::options::SendOptions;
use regex::Regex;
use std::time::Duration;

/// Which manager replicates an application's sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManagerKind {
    /// Every change to every member (Tomcat's `DeltaManager`): for 2 to 4 servers.
    Delta,
    /// One primary and `backups` backups per session (Tomcat's `BackupManager`): the cost of a
    /// change does not grow with the cluster.
    Backup,
}

/// When a request for a session whose id names another node's route renames the session to
/// this node's route (Tomcat's `JvmRouteBinderValve`): the same random part, this node's
/// jvmRoute, through a change of id replicated like any other, and a new cookie in the response,
/// so that a sticky load balancer sends the user to the node that now serves them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RebindRoute {
    /// Never: the id keeps the route it was made with (Tomcat without the valve). The default
    /// for now: with rebinding on, the DeltaManager's kill -9 loop of `tests/http_faults.rs`
    /// loses sessions (docs/RELIABILITY.md, "Route rebinding under kill -9").
    #[default]
    Never,
    /// When the route is not the name of a current member (its node failed or stopped). A
    /// request the balancer sent elsewhere while the node lives keeps its id.
    WhenRouteGone,
    /// Whenever the route is not this node's (Tomcat's `JvmRouteBinderValve` as installed).
    Always,
}

/// Settings of the session managers (Tomcat's `<Manager>` attributes).
#[derive(Clone, Debug)]
#[non_exhaustive]
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
    /// Rename a session whose id names another node's route, after a failover (Tomcat:
    /// `JvmRouteBinderValve`, with `enabled`). Default `WhenRouteGone`. The member name must
    /// be the node's jvmRoute (`ClusterConfig::jvm_route`, the default name) for
    /// `WhenRouteGone` to see that a route's node is alive.
    pub rebind_route: RebindRoute,
    /// The session cookie (Tomcat: the `Context`'s `sessionCookieName`, `sessionCookiePath`,
    /// `useHttpOnly`, ...; `sameSiteCookies`).
    pub cookie: CookieConfig,
    /// The most sessions this node holds before it refuses a new one (Tomcat:
    /// `maxActiveSessions`, unbounded by default there): counted over every session held here,
    /// its own and the other members' copies (a DeltaManager holds them all). A refused
    /// creation fails with `ManagerError::TooManySessions` (HTTP 503) and is counted in
    /// `rejected_sessions`; sessions that exist keep working, and copies arriving from other
    /// members are never refused. `None`: no bound. Default 10,000: what a node fits in about
    /// 30 MiB with sessions of 1 KiB (docs/configuration.md).
    pub max_active_sessions: Option<usize>,
    /// The largest a session may grow, in bytes ([`Session::size`](super::Session::size)):
    /// `Session::set` refuses a value that would pass it (`SessionError::TooLarge`), before
    /// anything is stored or sent. Lowered to what one `max_frame_size` frame carries; `None`:
    /// that alone. Default 1 MiB.
    pub max_session_size: Option<usize>,
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
            rebind_route: RebindRoute::Never,
            cookie: CookieConfig::default(),
            max_active_sessions: Some(DEFAULT_MAX_ACTIVE_SESSIONS),
            max_session_size: Some(DEFAULT_MAX_SESSION_SIZE),
        }
    }
}

/// Default [`ManagerConfig::max_active_sessions`]: 10,000.
pub const DEFAULT_MAX_ACTIVE_SESSIONS: usize = 10_000;
/// Default [`ManagerConfig::max_session_size`]: 1 MiB.
pub const DEFAULT_MAX_SESSION_SIZE: usize = 1 << 20;

impl ManagerConfig {
    /// Checks the bounds: a bound of 0 would refuse every session (use `None` for no bound).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_active_sessions == Some(0) {
            return Err(ConfigError {
                key: "manager.max_active_sessions",
                reason: "0 would refuse every new session; at least 1, or None for no bound".into(),
            });
        }
        if self.max_session_size == Some(0) {
            return Err(ConfigError {
                key: "manager.max_session_size",
                reason: "0 would refuse every attribute; at least 1, or None for the frame's size"
                    .into(),
            });
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bound_of_zero_is_refused() {
        ManagerConfig::default().validate().unwrap();
        let none = ManagerConfig {
            max_active_sessions: None,
            max_session_size: None,
            ..ManagerConfig::default()
        };
        none.validate().unwrap();
        for (cfg, key) in [
            (
                ManagerConfig {
                    max_active_sessions: Some(0),
                    ..ManagerConfig::default()
                },
                "manager.max_active_sessions",
            ),
            (
                ManagerConfig {
                    max_session_size: Some(0),
                    ..ManagerConfig::default()
                },
                "manager.max_session_size",
            ),
        ] {
            assert_eq!(cfg.validate().unwrap_err().key, key);
        }
    }

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
