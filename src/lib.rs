//! tribecast: in-memory HTTP session replication for synchronous Rust servers, after Tomcat's
//! Tribes clustering. See README.md and docs/.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod channel;
pub mod cluster;
pub mod config;
#[cfg(feature = "config-file")]
pub mod config_file;
pub mod crypto;
pub mod error;
#[cfg(feature = "http")]
pub mod http;
pub mod interceptor;
pub mod member;
#[doc(hidden)]
pub mod membership;
pub mod metrics;
pub mod options;
pub mod session;
#[doc(hidden)]
pub mod transport;
#[doc(hidden)]
pub mod wire;

pub use channel::{ChannelBuilder, ChannelListener, GroupChannel, MembershipListener};
pub use cluster::{ClusterConfig, ManagerConfig, ManagerKind, RebindRoute, SimpleTcpCluster};
pub use config::{
    ChannelConfig, DispatchConfig, McastConfig, MembershipConfig, QueueFullPolicy, ReceiverConfig,
    SenderConfig, StaticMember,
};
#[cfg(feature = "config-file")]
pub use config_file::{ConfigFileError, ConfigFileErrorKind, NodeConfig};
pub use crypto::{ClusterKey, CryptoError, KeyError};
pub use error::{ChannelError, ConfigError, FaultyMember, SendFailure};
pub use interceptor::{
    ChannelInterceptor, ChannelMessage, MessageDispatchInterceptor, OutMessage, PeerEvent,
};
pub use member::{Member, MemberId};
pub use options::SendOptions;
#[allow(deprecated)]
pub use session::Request;
pub use session::{
    Attributes, BackupManager, ClusterManager, CookieConfig, DeltaManager, ManagerError, SameSite,
    Session, SessionError, SessionEvent, SessionId, SessionIdError, SessionListener, SessionMerger,
    SessionRequest, SessionRequestError, SessionState, TooManySessions,
};
#[cfg(test)]
mod sim;

/// The README's code blocks, compiled as doc tests (its "Embed it" example runs a rouille server).
#[cfg(all(doctest, feature = "http"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
