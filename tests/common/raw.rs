//! A raw peer: a TCP connection that speaks the wire format by hand, for tests that send what
//! a real member never would.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use tribecast::wire::frame::{encode_frame, HEADER_LEN, PROTOCOL_VERSION};
use tribecast::wire::{encode_body, FrameKind, Handshake};
use tribecast::{Member, MemberId};

/// The largest body [`read_raw_frame`] reads: 64 MiB, room for the largest frames the tests
/// relay (a proxy between two members passes data frames of any size the channel allows);
/// a length claimed above it is taken for garbage.
pub const MAX_RAW_BODY: usize = 64 << 20;

/// Reads one frame (header and body); refuses a body over [`MAX_RAW_BODY`] (64 MiB).
pub fn read_raw_frame(s: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut f = vec![0u8; HEADER_LEN];
    s.read_exact(&mut f)?;
    let len = u32::from_le_bytes([f[8], f[9], f[10], f[11]]) as usize;
    if len > MAX_RAW_BODY {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "frame too big"));
    }
    f.resize(HEADER_LEN + len, 0);
    s.read_exact(&mut f[HEADER_LEN..])?;
    Ok(f)
}

/// Connects to `addr` as `me` and shakes hands (the answer awaited at most `wait`); later
/// reads give up after 20 s.
pub fn shake_hands(
    addr: SocketAddr,
    cluster: &str,
    me: &Member,
    wait: Duration,
) -> io::Result<TcpStream> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(wait))?;
    let mut f = Vec::new();
    let hs = Handshake {
        cluster: cluster.into(),
        protocol_version: PROTOCOL_VERSION,
        member: me.clone(),
        incarnation: 1,
        lane: 1,
    };
    encode_frame(&mut f, FrameKind::Handshake, 0, 0, &encode_body(&hs));
    s.write_all(&f)?;
    let answer = read_raw_frame(&mut s)?;
    if answer[5] != FrameKind::HandshakeAccept as u8 {
        return Err(io::Error::other("handshake not accepted"));
    }
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    Ok(s)
}

/// A member record for a raw peer (its address is never dialled).
pub fn raw_member(name: &str) -> Member {
    Member {
        id: MemberId::random(),
        name: name.into(),
        addr: "127.0.0.1:9".parse().expect("addr"),
        domain: String::new(),
    }
}
