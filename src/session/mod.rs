//! Sessions (Tomcat's `DeltaSession` and its id): the model the managers replicate. The
//! managers themselves (DeltaManager, BackupManager) come next.

pub(crate) mod attr;
pub mod backup;
pub(crate) mod config;
pub mod cookie;
pub mod delta;
pub(crate) mod engine;
pub mod id;
pub mod manager;
pub(crate) mod manager_core;
pub mod model;
pub(crate) mod outbound;
pub(crate) mod outputs;
#[cfg(test)]
mod prop_tests;
pub mod reconcile;
pub mod replica;

pub use config::{compile_filter, ManagerConfig, ManagerKind, RebindRoute};
pub use cookie::{CookieConfig, SameSite};
pub use delta::{DeltaConfig, DeltaCore};
pub use engine::Payload;
pub use id::{IdSource, OsRandom, SessionId, SessionIdError};
#[allow(deprecated)]
pub use manager::Request;
pub use manager::{
    BackupManager, ClusterManager, DeltaManager, ManagerError, SessionListener, SessionRequest,
    SessionRequestError,
};
pub use model::{Applied, DeltaOp, Session, SessionError, SessionState, DEFAULT_MAX_INACTIVE};
pub use outputs::{AttributeChange, Dest, Out, SessionEvent};
pub use reconcile::{SessionMerger, Stamp};
pub use replica::{Outcome, ReplicaStore, SessionMessage};
