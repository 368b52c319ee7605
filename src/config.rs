//! Channel configuration. `Default` is Tomcat's default wherever Tomcat has one; each field names
//! the Tomcat attribute it stands for. docs/configuration.md lists them all.

use crate::error::ConfigError;
use crate::member::MemberId;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

/// Everything a [`GroupChannel`](crate::GroupChannel) needs.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ChannelConfig {
    /// Name every member of this cluster shares; a peer with another name is refused at the
    /// handshake. (Tomcat: `SimpleTcpCluster.clusterName`.)
    pub cluster_name: String,
    /// This member's name, shown in logs and to other members (the jvmRoute in a web cluster).
    pub local_name: String,
    /// This member's 16-byte id (Tomcat: `LocalMember uniqueId`); random when `None`.
    pub unique_id: Option<MemberId>,
    /// Membership domain (Tomcat: `McastService.domain`); empty for none.
    pub domain: String,
    /// Largest frame body accepted or sent, in bytes (Tribes has no limit). Default 4 MiB.
    pub max_frame_size: u32,
    /// Compress (LZ4) every payload of at least this many bytes before it is sent, when that
    /// makes it smaller (Tomcat: `GzipInterceptor.compressionMinSize`). `None` (default): send
    /// uncompressed. Every member reads compressed payloads whatever its own setting, so
    /// members with different settings work together.
    pub compression_min_size: Option<u32>,
    /// Period of the channel heartbeat that runs interceptors' periodic work
    /// (Tomcat: `GroupChannel.heartbeatSleeptime`, 5000 ms).
    pub heartbeat_interval: Duration,
    /// The receiver (Tomcat's `NioReceiver`).
    pub receiver: ReceiverConfig,
    /// The sender (Tomcat's `ReplicationTransmitter` and its `PooledParallelSender`).
    pub sender: SenderConfig,
    /// The asynchronous dispatch queue (Tomcat's `MessageDispatchInterceptor`).
    pub dispatch: DispatchConfig,
    /// Statically listed members (Tomcat: `StaticMembershipInterceptor` `<Member>` elements).
    pub static_members: Vec<StaticMember>,
    /// Membership: multicast, static members and failure detection (Tomcat's `McastService`, `StaticMembershipService`, `TcpFailureDetector`).
    pub membership: MembershipConfig,
    /// The secret shared by every member (Tomcat: `EncryptInterceptor.encryptionKey`; the
    /// algorithm is fixed, AES-256-GCM, Tomcat's default `encryptionAlgorithm` AES/GCM/NoPadding
    /// with a 256-bit key). With it every TCP frame and membership datagram is authenticated
    /// and encrypted, and nodes without it are refused; `None` (the default) runs the cluster
    /// in plaintext, as Tomcat without an EncryptInterceptor. Load it with
    /// [`ClusterKey::from_file`](crate::ClusterKey::from_file) or
    /// [`ClusterKey::from_env`](crate::ClusterKey::from_env). Never logged.
    pub cluster_key: Option<crate::crypto::ClusterKey>,
    /// With a cluster key: how far from this node's clock the timestamp of a membership
    /// datagram from a member not heard from recently may be (Tomcat:
    /// `EncryptInterceptor.replayWindowTime`, 10000 ms). Members' clocks must agree within it.
    pub replay_window: Duration,
}

/// How members are found and judged alive (Tomcat: `McastService`, `StaticMembershipService`,
/// `TcpFailureDetector`, `TcpPingInterceptor`).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct MembershipConfig {
    /// Multicast discovery; `None` (the default) for static members only. Tomcat's default
    /// cluster uses multicast; here it is opt-in, as multicast must stay off real networks
    /// unless meant.
    pub mcast: Option<McastConfig>,
    /// A member found by ping or connection (static) that has not answered for this long is
    /// suspected (Tomcat: `StaticMembershipService.expirationTime`, 5000 ms).
    pub expiration_time: Duration,
    /// Period of pings to every member over its data connection, which keep connections warm
    /// and feed the failure detector (Tomcat: `TcpPingInterceptor.interval`, 1000 ms).
    pub ping_interval: Duration,
    /// Verify a suspect over TCP before declaring it gone (Tomcat: a `TcpFailureDetector` in the
    /// stack). Default true.
    pub failure_detector: bool,
    /// Connect timeout of a verification and of a ping (Tomcat: `TcpFailureDetector.connectTimeout`,
    /// 1000 ms).
    pub connect_timeout: Duration,
    /// Verification also sends a ping that the member's worker pool must answer, not only its
    /// event loop (Tomcat: `TcpFailureDetector.performReadTest`, false).
    pub perform_read_test: bool,
}

/// Multicast heartbeats (Tomcat: `McastService`).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct McastConfig {
    /// Group address (Tomcat: `address`, 228.0.0.4).
    pub address: std::net::Ipv4Addr,
    /// Group port (Tomcat: `port`, 45564).
    pub port: u16,
    /// Heartbeat period (Tomcat: `frequency`, 500 ms).
    pub frequency: Duration,
    /// A member not heard for this long is suspected (Tomcat: `dropTime`, 3000 ms).
    pub drop_time: Duration,
    /// Interface address to send and join on (Tomcat: `bind`); default: the routing table's.
    pub bind: Option<std::net::Ipv4Addr>,
    /// Multicast TTL (Tomcat: `ttl`); default: the system's (1).
    pub ttl: Option<u32>,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        MembershipConfig {
            mcast: None,
            expiration_time: Duration::from_millis(5000),
            ping_interval: Duration::from_millis(1000),
            failure_detector: true,
            connect_timeout: Duration::from_millis(1000),
            perform_read_test: false,
        }
    }
}

impl Default for McastConfig {
    fn default() -> Self {
        McastConfig {
            address: std::net::Ipv4Addr::new(228, 0, 0, 4),
            port: 45564,
            frequency: Duration::from_millis(500),
            drop_time: Duration::from_millis(3000),
            bind: None,
            ttl: None,
        }
    }
}

/// The NIO receiver (Tomcat: `NioReceiver`).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ReceiverConfig {
    /// Address to bind and to advertise (Tomcat: `address`, default `auto`). Default 127.0.0.1:
    /// set the address other members reach this one on.
    pub address: IpAddr,
    /// First port to try (Tomcat: `port`, 4000). 0 lets the OS choose.
    pub port: u16,
    /// How many ports to try from `port` on (Tomcat: `autoBind`, 100).
    pub auto_bind: u16,
    /// Longest wait of the event loop before it runs its periodic checks
    /// (Tomcat: `selectorTimeout`, 5000 ms).
    pub selector_timeout: Duration,
    /// Worker threads that run listeners (Tomcat: `maxThreads`, 15; the reference server.xml
    /// uses 6).
    pub max_threads: usize,
    /// Most connections accepted at once; further ones are closed at accept. Default 1024.
    pub max_connections: usize,
    /// Bytes read and not yet processed, per connection, above which the connection is not read
    /// until workers catch up. Default 8 MiB (at least one max frame).
    pub max_queued_bytes_per_connection: usize,
    /// How long an accepted connection may take to complete its handshake before it is closed,
    /// so idle or trickling strangers cannot hold `max_connections` slots. Default 10 s.
    pub handshake_timeout: Duration,
}

/// The sender (Tomcat: `ReplicationTransmitter` + `PooledParallelSender`).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SenderConfig {
    /// Deadline of one send, connect and ack included (Tomcat: `timeout`, 3000 ms).
    pub timeout: Duration,
    /// Connections kept per member for concurrent synchronous sends (Tomcat: `poolSize`, 25).
    pub pool_size: usize,
    /// Retries after an I/O error (Tomcat: `maxRetryAttempts`, 1). The receiver drops the
    /// duplicate a retry may cause.
    pub max_retry_attempts: u32,
    /// Bytes of queued asynchronous frames coalesced into one write. Default 256 KiB.
    pub coalesce_bytes: usize,
    /// Bytes of asynchronous frames that may wait for one member that does not read (plus
    /// those waiting for an ack); past this, further messages to it are dropped and counted.
    /// Default 16 MiB, at least `max_frame_size`.
    pub max_queued_bytes_per_member: usize,
}

/// What an asynchronous send does when the dispatch queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueFullPolicy {
    /// Wait for room until the send timeout, then fail with `QueueFull`. Order is kept.
    Block,
    /// Fail at once with `QueueFull`.
    Fail,
}

/// The asynchronous queue (Tomcat: `MessageDispatchInterceptor`).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DispatchConfig {
    /// Bytes the queue may hold (Tomcat: `maxQueueSize`, 64 MiB).
    pub max_queue_size: usize,
    /// When the queue is full. Tomcat (`alwaysSend=true`) sends on the caller's thread instead,
    /// which reorders; we wait by default.
    pub full_policy: QueueFullPolicy,
}

/// One statically listed member (Tomcat: `StaticMember` host, port, uniqueId).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StaticMember {
    /// Its receiver's address (host and port).
    pub addr: SocketAddr,
    /// Its id, when known; checked against what the member says at the handshake.
    pub unique_id: Option<MemberId>,
}

impl StaticMember {
    /// The member at `addr`, its id not given (learnt at the handshake).
    pub fn new(addr: SocketAddr) -> StaticMember {
        StaticMember {
            addr,
            unique_id: None,
        }
    }

    /// The member at `addr` whose id must be `id`.
    pub fn with_unique_id(addr: SocketAddr, id: MemberId) -> StaticMember {
        StaticMember {
            addr,
            unique_id: Some(id),
        }
    }
}

impl Default for ChannelConfig {
    fn default() -> Self {
        ChannelConfig {
            cluster_name: "tribecast".into(),
            local_name: String::new(),
            unique_id: None,
            domain: String::new(),
            max_frame_size: 4 * 1024 * 1024,
            compression_min_size: None,
            heartbeat_interval: Duration::from_millis(5000),
            receiver: ReceiverConfig::default(),
            sender: SenderConfig::default(),
            dispatch: DispatchConfig::default(),
            static_members: Vec::new(),
            membership: MembershipConfig::default(),
            cluster_key: None,
            replay_window: Duration::from_millis(10_000),
        }
    }
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        ReceiverConfig {
            address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 4000,
            auto_bind: 100,
            selector_timeout: Duration::from_millis(5000),
            max_threads: 15,
            max_connections: 1024,
            max_queued_bytes_per_connection: 8 * 1024 * 1024,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

impl Default for SenderConfig {
    fn default() -> Self {
        SenderConfig {
            timeout: Duration::from_millis(3000),
            pool_size: 25,
            max_retry_attempts: 1,
            coalesce_bytes: 256 * 1024,
            max_queued_bytes_per_member: 16 * 1024 * 1024,
        }
    }
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            max_queue_size: 64 * 1024 * 1024,
            full_policy: QueueFullPolicy::Block,
        }
    }
}

fn check(ok: bool, key: &'static str, reason: impl FnOnce() -> String) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError {
            key,
            reason: reason(),
        })
    }
}

impl ChannelConfig {
    /// A config for tests and examples: loopback, an OS-chosen port, short timeouts kept at
    /// Tomcat's defaults otherwise.
    pub fn loopback(name: &str) -> ChannelConfig {
        let mut c = ChannelConfig {
            local_name: name.into(),
            ..ChannelConfig::default()
        };
        c.receiver.port = 0;
        c.receiver.auto_bind = 1;
        c.receiver.max_threads = 6;
        c
    }

    /// Checks every value; the error names the key at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let n = self.cluster_name.len();
        check(n > 0 && n <= 255, "cluster_name", || {
            format!("must be 1 to 255 bytes, got {n}")
        })?;
        check(self.local_name.len() <= 255, "local_name", || {
            "longer than 255 bytes".into()
        })?;
        check(self.domain.len() <= 255, "domain", || {
            "longer than 255 bytes".into()
        })?;
        check(!self.replay_window.is_zero(), "replay_window", || {
            "must be > 0".into()
        })?;
        let m = self.max_frame_size;
        check((4096..=1 << 30).contains(&m), "max_frame_size", || {
            format!("must be 4096 to 1073741824 bytes, got {m}")
        })?;
        check(
            !self.heartbeat_interval.is_zero(),
            "heartbeat_interval",
            || "must be > 0".into(),
        )?;
        let r = &self.receiver;
        check(r.auto_bind >= 1, "receiver.auto_bind", || {
            "must be >= 1".into()
        })?;
        check(
            !r.selector_timeout.is_zero(),
            "receiver.selector_timeout",
            || "must be > 0".into(),
        )?;
        check(
            (1..=1024).contains(&r.max_threads),
            "receiver.max_threads",
            || format!("must be 1 to 1024, got {}", r.max_threads),
        )?;
        check(r.max_connections >= 1, "receiver.max_connections", || {
            "must be >= 1".into()
        })?;
        check(
            r.max_queued_bytes_per_connection >= m as usize,
            "receiver.max_queued_bytes_per_connection",
            || format!("must be at least max_frame_size ({m})"),
        )?;
        check(
            !r.handshake_timeout.is_zero(),
            "receiver.handshake_timeout",
            || "must be > 0".into(),
        )?;
        let s = &self.sender;
        check(!s.timeout.is_zero(), "sender.timeout", || {
            "must be > 0".into()
        })?;
        check(
            (1..=1024).contains(&s.pool_size),
            "sender.pool_size",
            || format!("must be 1 to 1024, got {}", s.pool_size),
        )?;
        check(
            s.max_retry_attempts <= 10,
            "sender.max_retry_attempts",
            || "must be 0 to 10".into(),
        )?;
        check(s.coalesce_bytes >= 1024, "sender.coalesce_bytes", || {
            "must be >= 1024".into()
        })?;
        check(
            s.max_queued_bytes_per_member >= m as usize,
            "sender.max_queued_bytes_per_member",
            || format!("must be at least max_frame_size ({m})"),
        )?;
        check(
            self.dispatch.max_queue_size >= m as usize,
            "dispatch.max_queue_size",
            || format!("must be at least max_frame_size ({m})"),
        )?;
        let ms = &self.membership;
        check(
            !ms.expiration_time.is_zero(),
            "membership.expiration_time",
            || "must be > 0".into(),
        )?;
        check(
            !ms.ping_interval.is_zero(),
            "membership.ping_interval",
            || "must be > 0".into(),
        )?;
        check(
            !ms.connect_timeout.is_zero(),
            "membership.connect_timeout",
            || "must be > 0".into(),
        )?;
        if let Some(mc) = &ms.mcast {
            check(
                mc.address.is_multicast(),
                "membership.mcast.address",
                || format!("{} is not a multicast address", mc.address),
            )?;
            check(mc.port != 0, "membership.mcast.port", || {
                "must not be 0".into()
            })?;
            check(
                !mc.frequency.is_zero(),
                "membership.mcast.frequency",
                || "must be > 0".into(),
            )?;
            check(
                mc.drop_time > mc.frequency,
                "membership.mcast.drop_time",
                || "must be longer than frequency".into(),
            )?;
        }
        for sm in &self.static_members {
            check(sm.addr.port() != 0, "static_members.addr", || {
                format!("{} has port 0", sm.addr)
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_tomcats() {
        let c = ChannelConfig::default();
        c.validate().unwrap();
        assert_eq!(c.receiver.port, 4000);
        assert_eq!(c.receiver.auto_bind, 100);
        assert_eq!(c.receiver.selector_timeout, Duration::from_millis(5000));
        assert_eq!(c.sender.timeout, Duration::from_millis(3000));
        assert_eq!(c.dispatch.max_queue_size, 64 << 20);
    }

    #[test]
    fn bad_values_name_their_key() {
        let mut c = ChannelConfig::default();
        c.receiver.max_threads = 0;
        assert_eq!(c.validate().unwrap_err().key, "receiver.max_threads");
        let mut c = ChannelConfig::default();
        c.cluster_name.clear();
        assert_eq!(c.validate().unwrap_err().key, "cluster_name");
        let c = ChannelConfig {
            max_frame_size: 10,
            ..ChannelConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().key, "max_frame_size");
        let mut c = ChannelConfig::default();
        c.dispatch.max_queue_size = 100;
        assert_eq!(c.validate().unwrap_err().key, "dispatch.max_queue_size");
    }
}
