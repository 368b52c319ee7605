//! How a manager's messages leave, and the form they travel in. The session layer does not know
//! the cluster: a manager sends through [`Outbound`], which the cluster implements over its
//! channel, and each message goes out as a context message (the application it is for, and
//! what), which the receiving cluster decodes to hand it to that application's manager
//! (Tomcat's `ClusterSessionListener`).

use super::engine::Payload;
use crate::error::ChannelError;
use crate::member::{Member, MemberId};
use crate::options::SendOptions;
use crate::wire::{decode_body, encode_body};
use serde::{Deserialize, Serialize};

/// Where a manager sends what its core decided. Implemented by the cluster; a manager holds it
/// weakly (the cluster owns the managers), and sends nothing once it is gone.
pub(crate) trait Outbound: Send + Sync {
    /// Sends `msg` for application `context` to every current member.
    fn send_all(
        &self,
        context: &str,
        msg: &Payload,
        options: SendOptions,
    ) -> Result<(), ChannelError>;

    /// Sends `msg` for application `context` to one member; `Ok` without sending if it left.
    fn send_to(
        &self,
        member: MemberId,
        context: &str,
        msg: &Payload,
        options: SendOptions,
    ) -> Result<(), ChannelError>;

    /// The current members (other than this node).
    fn members(&self) -> Vec<Member>;
}

/// A session message on the wire, as decoded: which application it is for, and what.
#[derive(Deserialize)]
struct ClusterMessage {
    context: String,
    msg: Payload,
}

/// The same, borrowed for encoding (the same bytes, without copying the payload).
#[derive(Serialize)]
struct ClusterMessageRef<'a> {
    context: &'a str,
    msg: &'a Payload,
}

/// The bytes of a session message for application `context`.
pub(crate) fn encode_cluster_message(context: &str, msg: &Payload) -> Vec<u8> {
    encode_body(&ClusterMessageRef { context, msg })
}

/// A received session message: its application and payload. `Err` for bytes that are not one.
pub(crate) fn decode_cluster_message(bytes: &[u8]) -> Result<(String, Payload), postcard::Error> {
    decode_body::<ClusterMessage>(bytes).map(|m| (m.context, m.msg))
}
