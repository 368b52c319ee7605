//! Transport: the NIO receiver and the pooled parallel sender, around pure per-connection logic.

pub mod async_lane;
pub mod dedup;
pub mod lane;
pub mod receiver;
pub mod rx_session;
pub mod sender;
pub mod tx_session;
