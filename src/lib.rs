//! tribecast: in-memory HTTP session replication for synchronous Rust servers, after Tomcat's
//! Tribes clustering. See README.md and docs/.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod channel;
pub mod cluster;
pub mod config;
pub mod config_file;
pub mod crypto;
pub mod error;
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
    BackupManager, ClusterManager, CookieConfig, DeltaManager, ManagerError, SameSite, Session,
    SessionError, SessionEvent, SessionId, SessionIdError, SessionListener, SessionMerger,
    SessionRequest, SessionRequestError, SessionState,
};
#[cfg(test)]
mod sim;
