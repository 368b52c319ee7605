//! Sessions (Tomcat's `DeltaSession` and its id): the model the managers replicate. The
//! managers themselves (DeltaManager, BackupManager) come next.

pub(crate) mod attr;
pub(crate) mod backup;
pub(crate) mod config;
pub mod cookie;
pub(crate) mod delta;
pub(crate) mod donor;
pub(crate) mod engine;
pub mod id;
pub(crate) mod limits;
pub mod manager;
pub(crate) mod manager_core;
pub mod model;
pub(crate) mod outbound;
pub(crate) mod outputs;
#[cfg(test)]
mod prop_tests;
pub mod reconcile;
pub(crate) mod replica;
pub(crate) mod table;

pub use config::{
    compile_filter, ManagerConfig, ManagerKind, RebindRoute, DEFAULT_MAX_ACTIVE_SESSIONS,
    DEFAULT_MAX_SESSION_SIZE,
};
pub use cookie::{CookieConfig, SameSite};
pub use id::{IdSource, OsRandom, SessionId, SessionIdError};
pub use limits::TooManySessions;
#[allow(deprecated)]
pub use manager::Request;
pub use manager::{
    BackupManager, ClusterManager, DeltaManager, ManagerError, SessionListener, SessionRequest,
    SessionRequestError,
};
pub use model::{
    Attributes, AttributesIter, Session, SessionError, SessionState, DEFAULT_MAX_INACTIVE,
};
pub use outputs::{AttributeChange, SessionEvent};
pub use reconcile::SessionMerger;

// The protocol's own types, for the simulation and the unit tests.
#[cfg(test)]
pub(crate) use {
    delta::{DeltaConfig, DeltaCore},
    outputs::{Dest, Out},
    reconcile::Stamp,
    replica::SessionMessage,
};
