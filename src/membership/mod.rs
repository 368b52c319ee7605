//! Membership: who is in the group (Tribes' `Membership`, `McastService`, static members,
//! `TcpFailureDetector`, `TcpPingInterceptor`).
//!
//! The decisions are pure ([`state::MembershipState`]): heartbeats, pings, leaves and failed
//! sends in, with `now`; members added, suspects to verify and members gone out. The shell
//! ([`service`]) runs the multicast socket and a prober thread that pings and verifies.

pub mod incarnation;
pub mod list;
pub mod mcast;
pub mod record;
pub mod service;
pub mod state;

pub use list::{Change, Membership};
