//! The wire format: frames and their bodies (docs/wire-format.md).

pub mod bytes;
pub mod compress;
pub mod envelope;
pub mod frame;
pub mod sealed;

pub use envelope::{
    decode_body, encode_body, DataBody, Envelope, Handshake, HandshakeAccept, Reason,
};
pub use frame::{parse_frame, Frame, FrameError, FrameHeader, FrameKind};
