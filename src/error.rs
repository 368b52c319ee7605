//! Typed errors of the channel layer. Each says who is at fault: the configuration, a member, or
//! this node.

use crate::member::{Member, MemberId};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

/// A configuration value that cannot work. Names the key as it appears in the config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The key, as its field path (e.g. `receiver.max_threads`).
    pub key: &'static str,
    /// What is wrong with its value.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid config `{}`: {}", self.key, self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// Why one destination did not get a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendFailure {
    /// No connection could be made (refused, unreachable, connect timeout).
    Connect(String),
    /// The member answered the handshake with a refusal (other cluster name or version).
    Refused(String),
    /// The connection broke and the one retry failed too.
    Io(String),
    /// No ack within the send timeout.
    Timeout(Duration),
    /// The member's listener failed to process the message (synchronized ack's FAIL_ACK).
    Remote(String),
    /// The member spoke something that is not our protocol.
    Protocol(String),
    /// The destination is not a current member.
    NotAMember,
    /// The member does not read and `max_queued_bytes_per_member` of asynchronous frames
    /// already wait for it: the message was dropped.
    QueueFull,
}

impl fmt::Display for SendFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendFailure::Connect(e) => write!(f, "connect failed: {e}"),
            SendFailure::Refused(e) => write!(f, "refused by member: {e}"),
            SendFailure::Io(e) => write!(f, "I/O error after retry: {e}"),
            SendFailure::Timeout(t) => write!(f, "no ack within {} ms", t.as_millis()),
            SendFailure::Remote(e) => write!(f, "member's listener failed: {e}"),
            SendFailure::Protocol(e) => write!(f, "protocol error: {e}"),
            SendFailure::NotAMember => write!(f, "not a member of the group"),
            SendFailure::QueueFull => {
                write!(
                    f,
                    "dropped: the member is not reading and its asynchronous queue is full"
                )
            }
        }
    }
}

/// One destination that failed, and why (Tribes' `ChannelException.FaultyMember`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultyMember {
    /// The member's id.
    pub id: MemberId,
    /// The member record, when it is known.
    pub member: Option<Member>,
    /// Why the send to it failed.
    pub reason: SendFailure,
}

impl fmt::Display for FaultyMember {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.member {
            Some(m) => write!(f, "[{m}]: {}", self.reason),
            None => write!(f, "[id={}]: {}", self.id, self.reason),
        }
    }
}

/// Errors of the channel API.
#[derive(Debug)]
pub enum ChannelError {
    /// The configuration is not valid.
    Config(ConfigError),
    /// No port in `[port, port + auto_bind)` could be bound.
    Bind {
        /// The address.
        address: SocketAddr,
        /// How many ports above it were tried.
        auto_bind: u16,
        /// The last bind error.
        source: io::Error,
    },
    /// Some destinations failed; the others got the message.
    Faulty(Vec<FaultyMember>),
    /// The asynchronous queue is full and the policy refused to wait longer.
    QueueFull {
        /// Bytes queued when the message was refused.
        queued_bytes: usize,
        /// The queue's bound (`dispatch.max_queue_size`).
        max_bytes: usize,
    },
    /// The message is larger than `max_frame_size` allows.
    TooLarge {
        /// The message's length in bytes.
        len: usize,
        /// The largest the channel accepts.
        max: usize,
    },
    /// The channel is not running (not started yet, or stopped).
    NotRunning,
    /// A thread could not be spawned, or another local I/O failure.
    Io(io::Error),
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelError::Config(e) => e.fmt(f),
            ChannelError::Bind {
                address,
                auto_bind,
                source,
            } => write!(
                f,
                "cannot bind receiver on {address} or the next {} ports: {source}",
                auto_bind.saturating_sub(1)
            ),
            ChannelError::Faulty(members) => {
                write!(f, "send failed for {} member(s):", members.len())?;
                for m in members {
                    write!(f, " {m};")?;
                }
                Ok(())
            }
            ChannelError::QueueFull {
                queued_bytes,
                max_bytes,
            } => write!(
                f,
                "asynchronous queue full ({queued_bytes} of {max_bytes} bytes queued)"
            ),
            ChannelError::TooLarge { len, max } => {
                write!(f, "message of {len} bytes exceeds max_frame_size {max}")
            }
            ChannelError::NotRunning => write!(f, "channel is not running"),
            ChannelError::Io(e) => write!(f, "I/O error: {e}"),
        }
    }
}

impl std::error::Error for ChannelError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ChannelError::Config(e) => Some(e),
            ChannelError::Bind { source, .. } | ChannelError::Io(source) => Some(source),
            _ => None,
        }
    }
}

impl From<ConfigError> for ChannelError {
    fn from(e: ConfigError) -> Self {
        ChannelError::Config(e)
    }
}

impl ChannelError {
    /// The members a failed send names (empty for errors that are not per member).
    pub fn faulty_members(&self) -> &[FaultyMember] {
        match self {
            ChannelError::Faulty(m) => m,
            _ => &[],
        }
    }
}
