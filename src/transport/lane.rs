//! One outgoing connection ("lane") to a member, on a blocking socket: connect, handshake,
//! numbered data frames, acks. Tribes' `NioSender`, minus the selector: a lane is used by one
//! thread at a time (taken from the member's pool), so blocking I/O with deadlines is simplest
//! and costs no extra thread wake-up per message.

use super::tx_session::{time_left, TxSession};
use crate::crypto::{self, ClusterKey, Opener, Sealer, TAG_LEN};
use crate::error::SendFailure;
use crate::member::Member;
use crate::wire::frame::{self, FrameHeader, FrameKind, FLAG_SEALED};
use crate::wire::sealed;
use crate::wire::{decode_body, encode_body, parse_frame, DataBody, Handshake, Reason};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Replies (handshake answers, acks) are small; anything bigger is a protocol error.
const MAX_REPLY_LEN: u32 = 64 * 1024;

/// Who this node is, as told in every handshake.
pub struct Identity {
    pub cluster: String,
    pub local: Member,
    pub incarnation: u64,
    pub max_frame_size: u32,
    /// Source of sequence numbers for every lane of this node. One counter (not one per lane)
    /// keeps numbers rising on a lane even after it is dropped and made again, so a receiver's
    /// duplicate filter never mistakes new frames for old ones.
    pub next_seq: AtomicU64,
    /// With a key every connection is sealed (docs/SECURITY.md).
    pub key: Option<ClusterKey>,
    /// Called after every successful outbound handshake with the member's record and its
    /// incarnation (from its `HandshakeAccept`), on the connecting thread: return quickly. The
    /// channel uses it to notice a member that restarted even if that member connects to nobody.
    pub peer_seen: Option<PeerSeen>,
}

impl Identity {
    /// A new sequence number for a frame of any lane of this node.
    pub fn number(&self) -> u64 {
        self.next_seq.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// See [`Identity::peer_seen`].
pub type PeerSeen = Arc<dyn Fn(&Member, u64) + Send + Sync>;

/// A reply frame read from a lane.
pub enum Reply {
    Ack(u64),
    FailAck(u64, String),
}

/// The socket side of a lane; its protocol state (frames held, their numbers, acks, tries, the
/// handshake's answers) is `tx`, a [`TxSession`] whose frames carry a `T` of the owner's.
pub struct Lane<T = ()> {
    pub lane: u32,
    /// What is sent, resent, settled or failed, decided without I/O.
    pub tx: TxSession<T>,
    stream: Option<TcpStream>,
    /// Socket timeouts last set, so that back-to-back sends do not pay two `setsockopt` calls.
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    rbuf: Vec<u8>,
    rfilled: usize,
    /// Plain frames waiting to be written. On a keyed lane each body is followed by room for
    /// its tag, so the sealed bytes in `obuf` sit at the same offsets.
    pub wbuf: Vec<u8>,
    /// Keyed lanes: the connection's keys, once the handshake is done.
    keys: Option<(Sealer, Opener)>,
    /// Keyed lanes: `wbuf[..obuf.len()]` sealed for the current connection.
    obuf: Vec<u8>,
}

fn remaining(deadline: Instant) -> Option<Duration> {
    time_left(deadline, Instant::now())
}

/// How far a socket timeout may be from the time left before it is set again: a read may
/// overshoot its deadline by this much.
const TIMEOUT_SLACK: Duration = Duration::from_millis(20);

/// Whether the socket timeout `current` must be changed to `left`.
fn needs_timeout(current: Option<Duration>, left: Duration) -> bool {
    current.is_none_or(|c| c.abs_diff(left) > TIMEOUT_SLACK)
}

/// A read or write that returned without data only because of a signal or the socket timeout.
fn is_wait(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

impl<T> Lane<T> {
    /// A lane for control frames only (probe, ping, leave): one try, one frame at a time.
    pub fn new(lane: u32) -> Lane<T> {
        Lane::with_session(lane, 1, 1)
    }

    /// A lane whose data frames get `max_tries` connections each, with at most `window`
    /// frames written and waiting for their ack.
    pub fn with_session(lane: u32, max_tries: u32, window: usize) -> Lane<T> {
        Lane {
            lane,
            tx: TxSession::new(lane, max_tries, window),
            stream: None,
            read_timeout: None,
            write_timeout: None,
            rbuf: Vec::new(),
            rfilled: 0,
            wbuf: Vec::new(),
            keys: None,
            obuf: Vec::new(),
        }
    }

    pub fn is_connected(&self) -> bool {
        self.stream.is_some()
    }

    pub fn disconnect(&mut self) {
        // Charges the frames the connection held a try (the session ignores a second call).
        self.tx.disconnected();
        self.stream = None;
        // Sealed bytes belong to that connection's keys: a new connection seals again.
        self.keys = None;
        self.obuf.clear();
        self.rfilled = 0;
        self.read_timeout = None;
        self.write_timeout = None;
    }

    /// Connects and shakes hands; returns the member record the peer answered with.
    pub fn connect(
        &mut self,
        to: &Member,
        id: &Identity,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Member, SendFailure> {
        self.disconnect();
        self.tx.connecting();
        let result = self.open(to, id, deadline, timeout);
        match result {
            Ok((member, incarnation)) => {
                if let Some(seen) = &id.peer_seen {
                    seen(&member, incarnation);
                }
                Ok(member)
            }
            Err(e) => {
                self.disconnect();
                Err(e)
            }
        }
    }

    /// The TCP connection and the handshake.
    fn open(
        &mut self,
        to: &Member,
        id: &Identity,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<(Member, u64), SendFailure> {
        let left = remaining(deadline).ok_or(SendFailure::Timeout(timeout))?;
        let stream = TcpStream::connect_timeout(&to.addr, left)
            .map_err(|e| SendFailure::Connect(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        self.stream = Some(stream);
        let hs = self.tx.hello(&id.cluster, &id.local, id.incarnation);
        match &id.key {
            None => self.plain_handshake(&hs, deadline, timeout),
            Some(key) => self.sealed_handshake(key, &hs, deadline, timeout),
        }
    }

    fn plain_handshake(
        &mut self,
        hs: &Handshake,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<(Member, u64), SendFailure> {
        // Not through `wbuf`: it may hold queued frames waiting for this connection.
        let mut hello = Vec::new();
        frame::encode_frame(&mut hello, FrameKind::Handshake, 0, 0, &encode_body(hs));
        self.write_all(&hello, deadline, timeout)?;
        let (h, body) = self.read_frame(deadline, timeout)?;
        self.tx.on_handshake_answer(h.kind, h.flags, &body, false)
    }

    /// The keyed handshake: our nonce, the member's nonce back, then the handshake sealed under
    /// keys derived from both, answered sealed. Each side thus proves it holds the cluster key
    /// on this very connection, and nothing recorded from another connection opens here.
    fn sealed_handshake(
        &mut self,
        key: &ClusterKey,
        hs: &Handshake,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<(Member, u64), SendFailure> {
        let client = crypto::fresh_nonce().map_err(|e| SendFailure::Io(e.to_string()))?;
        let mut hello = Vec::new();
        frame::encode_frame(&mut hello, FrameKind::Handshake, FLAG_SEALED, 0, &client);
        self.write_all(&hello, deadline, timeout)?;
        let (h, body) = self.read_frame(deadline, timeout)?;
        let server = self.tx.on_challenge(h.kind, h.flags, &body)?;
        let (mut sealer, _, _, opener) = key.connection_keys(&client, &server);
        let mut sealed_hs = Vec::new();
        sealed::seal_frame(
            &mut sealer,
            &mut sealed_hs,
            FrameKind::Handshake,
            0,
            0,
            &encode_body(hs),
        )
        .map_err(|e| SendFailure::Io(e.to_string()))?;
        self.keys = Some((sealer, opener));
        self.write_all(&sealed_hs, deadline, timeout)?;
        let (h, body) = self.read_frame(deadline, timeout)?;
        self.tx.on_handshake_answer(h.kind, h.flags, &body, true)
    }

    /// Writes `wbuf` whole, within the deadline. On any failure the connection is dropped: a
    /// frame may have been cut.
    pub fn flush_wbuf(&mut self, deadline: Instant, timeout: Duration) -> Result<(), SendFailure> {
        if self.keys.is_some() {
            self.obuf.clear();
            self.seal_wbuf()?;
            let buf = std::mem::take(&mut self.obuf);
            let r = self.write_all(&buf, deadline, timeout);
            if self.keys.is_some() {
                self.obuf = buf;
            }
            return r;
        }
        let buf = std::mem::take(&mut self.wbuf);
        let r = self.write_all(&buf, deadline, timeout);
        self.wbuf = buf;
        r
    }

    /// Seals the frames of `wbuf` not yet in `obuf`, in order.
    fn seal_wbuf(&mut self) -> Result<(), SendFailure> {
        let Some((sealer, _)) = self.keys.as_mut() else {
            return Ok(());
        };
        if self.obuf.len() > self.wbuf.len() {
            self.obuf.clear(); // `wbuf` was cleared by its owner: seal what it holds now
        }
        let from = self.obuf.len();
        sealed::seal_frames(sealer, &self.wbuf[from..], true, &mut self.obuf).map_err(|e| {
            self.disconnect();
            SendFailure::Io(e.to_string())
        })
    }

    /// Drops the first `n` bytes (whole frames, written and settled) of `wbuf`.
    pub fn drain_front(&mut self, n: usize) {
        self.wbuf.drain(..n);
        let sealed = n.min(self.obuf.len());
        self.obuf.drain(..sealed);
    }

    /// Drops every frame waiting.
    pub fn clear_wbuf(&mut self) {
        self.wbuf.clear();
        self.obuf.clear();
    }

    /// Writes `wbuf[*written..]` until it is all written or the deadline passes, advancing
    /// `*written` as bytes go out, so a caller can stop at the deadline and carry on later on
    /// the same connection without cutting a frame. Only an I/O error drops the connection.
    pub fn write_from(
        &mut self,
        written: &mut usize,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<(), SendFailure> {
        if self.keys.is_some() {
            self.seal_wbuf()?;
            let buf = std::mem::take(&mut self.obuf);
            let r = self.write_bytes(&buf, written, deadline, timeout);
            if self.keys.is_some() {
                self.obuf = buf;
            }
            return r;
        }
        let buf = std::mem::take(&mut self.wbuf);
        let r = self.write_bytes(&buf, written, deadline, timeout);
        self.wbuf = buf;
        r
    }

    fn write_all(
        &mut self,
        bytes: &[u8],
        deadline: Instant,
        timeout: Duration,
    ) -> Result<(), SendFailure> {
        let r = self.write_bytes(bytes, &mut 0, deadline, timeout);
        if r.is_err() {
            self.disconnect();
        }
        r
    }

    fn write_bytes(
        &mut self,
        bytes: &[u8],
        written: &mut usize,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<(), SendFailure> {
        while *written < bytes.len() {
            let stream = self
                .stream
                .as_mut()
                .ok_or_else(|| SendFailure::Io("not connected".into()))?;
            let left = remaining(deadline).ok_or(SendFailure::Timeout(timeout))?;
            if needs_timeout(self.write_timeout, left) {
                self.write_timeout = Some(left);
                if let Err(e) = stream.set_write_timeout(Some(left)) {
                    self.disconnect();
                    return Err(SendFailure::Io(e.to_string()));
                }
            }
            match stream.write(&bytes[*written..]) {
                Ok(0) => {
                    self.disconnect();
                    return Err(SendFailure::Io("connection wrote 0 bytes".into()));
                }
                Ok(n) => *written += n,
                // A socket timeout within TIMEOUT_SLACK of the deadline: the loop decides.
                Err(e) if is_wait(&e) => {}
                Err(e) => {
                    self.disconnect();
                    return Err(SendFailure::Io(e.to_string()));
                }
            }
        }
        Ok(())
    }

    /// Appends data frame `seq` (numbered by [`Identity::number`], the same number when
    /// resent: the receiver then drops it if the first copy arrived) to `wbuf`.
    pub fn stamp(
        &mut self,
        id: &Identity,
        seq: u64,
        flags: u16,
        body: &DataBody<'_>,
        body_crc: &crc32fast::Hasher,
    ) -> u64 {
        if id.key.is_some() {
            // Sealed at write time, for the connection it goes out on; the header's length
            // counts the tag, and the checksum is computed then.
            let len = body.len() + TAG_LEN;
            self.wbuf
                .extend_from_slice(&frame::header_prefix(FrameKind::Data, flags, seq, len));
            self.wbuf.extend_from_slice(&[0; 4]);
            self.wbuf.extend_from_slice(body.head());
            self.wbuf.extend_from_slice(body.payload);
            self.wbuf.extend_from_slice(&[0; TAG_LEN]);
            return seq;
        }
        let header = frame::encode_header(FrameKind::Data, flags, seq, body.len(), body_crc);
        self.wbuf.extend_from_slice(&header);
        self.wbuf.extend_from_slice(body.head());
        self.wbuf.extend_from_slice(body.payload);
        seq
    }

    /// Reads the next frame the peer sends on this lane.
    pub fn read_frame(
        &mut self,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<(FrameHeader, Vec<u8>), SendFailure> {
        loop {
            match parse_frame(&self.rbuf[..self.rfilled], MAX_REPLY_LEN) {
                Ok(Some((f, used))) => {
                    let (header, mut body) = (f.header, f.body.to_vec());
                    if let Some((_, opener)) = self.keys.as_mut() {
                        match sealed::open_body(opener, &self.rbuf[..20], header.flags, &mut body) {
                            Ok(n) => body.truncate(n),
                            Err(e) => {
                                self.disconnect();
                                return Err(SendFailure::Protocol(format!(
                                    "{:?} frame from the member refused: {e}",
                                    header.kind
                                )));
                            }
                        }
                    }
                    self.rbuf.copy_within(used..self.rfilled, 0);
                    self.rfilled -= used;
                    return Ok((header, body));
                }
                Ok(None) => {}
                Err(e) => {
                    self.disconnect();
                    return Err(SendFailure::Protocol(e.to_string()));
                }
            }
            let stream = self
                .stream
                .as_mut()
                .ok_or_else(|| SendFailure::Io("not connected".into()))?;
            let Some(left) = remaining(deadline) else {
                // Past the deadline, take what already arrived before giving up: a send to
                // several members waits for their acks one after the other, and the ack of a
                // healthy member must not be lost because a stalled one used up the time.
                if self.read_arrived()? {
                    continue;
                }
                self.disconnect();
                return Err(SendFailure::Timeout(timeout));
            };
            if needs_timeout(self.read_timeout, left) {
                self.read_timeout = Some(left);
                if let Err(e) = stream.set_read_timeout(Some(left)) {
                    self.disconnect();
                    return Err(SendFailure::Io(e.to_string()));
                }
            }
            if self.rbuf.len() < self.rfilled + 4096 {
                self.rbuf.resize(self.rfilled + 16 * 1024, 0);
            }
            match stream.read(&mut self.rbuf[self.rfilled..]) {
                Ok(0) => {
                    self.disconnect();
                    return Err(SendFailure::Io("connection closed by member".into()));
                }
                Ok(n) => self.rfilled += n,
                // A socket timeout within TIMEOUT_SLACK of the deadline: the loop decides.
                Err(e) if is_wait(&e) => {}
                Err(e) => {
                    self.disconnect();
                    return Err(SendFailure::Io(e.to_string()));
                }
            }
        }
    }

    /// Reads, without waiting, what the socket already holds; returns whether anything came.
    fn read_arrived(&mut self) -> Result<bool, SendFailure> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(false);
        };
        if self.rbuf.len() < self.rfilled + 4096 {
            self.rbuf.resize(self.rfilled + 16 * 1024, 0);
        }
        if stream.set_nonblocking(true).is_err() {
            return Ok(false);
        }
        let r = stream.read(&mut self.rbuf[self.rfilled..]);
        if let Err(e) = stream.set_nonblocking(false) {
            self.disconnect();
            return Err(SendFailure::Io(e.to_string()));
        }
        match r {
            Ok(0) => {
                self.disconnect();
                Err(SendFailure::Io("connection closed by member".into()))
            }
            Ok(n) => {
                self.rfilled += n;
                Ok(true)
            }
            Err(e) if is_wait(&e) => Ok(false),
            Err(e) => {
                self.disconnect();
                Err(SendFailure::Io(e.to_string()))
            }
        }
    }

    /// Sends a ping and waits for its ack: the member's event loop answers it, or with
    /// `read_test` one of its workers. Connects first if needed.
    pub fn ping(
        &mut self,
        to: &Member,
        id: &Identity,
        read_test: bool,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<(), SendFailure> {
        if !self.is_connected() {
            self.connect(to, id, deadline, timeout)?;
        }
        let seq = id.number();
        let flags = if read_test { frame::FLAG_SYNC_ACK } else { 0 };
        let ping = self.control_frame(FrameKind::Ping, flags, seq)?;
        self.write_all(&ping, deadline, timeout)?;
        loop {
            match self.read_reply(deadline, timeout)? {
                Reply::Ack(s) if s == seq => return Ok(()),
                _ => {} // an answer to an earlier frame on this lane
            }
        }
    }

    /// Reads the next ack or fail-ack.
    pub fn read_reply(
        &mut self,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Reply, SendFailure> {
        let (h, body) = self.read_frame(deadline, timeout)?;
        match h.kind {
            FrameKind::Ack => Ok(Reply::Ack(h.seq)),
            FrameKind::FailAck => Ok(Reply::FailAck(
                h.seq,
                decode_body::<Reason>(&body)
                    .map_or_else(|e| format!("(undecodable reason: {e})"), |r| r.reason),
            )),
            k => {
                self.disconnect();
                Err(SendFailure::Protocol(format!(
                    "unexpected {k:?} frame from receiver"
                )))
            }
        }
    }

    /// Best-effort: tells the member we leave, then closes. Returns whether the goodbye was
    /// written.
    pub fn send_leave(&mut self, deadline: Instant, timeout: Duration) -> bool {
        if self.stream.is_none() {
            return false;
        }
        let sent = match self.control_frame(FrameKind::Leave, 0, 0) {
            Ok(bye) => self.write_all(&bye, deadline, timeout).is_ok(),
            Err(_) => false,
        };
        self.disconnect();
        sent
    }

    /// A frame with an empty body, sealed on a keyed connection.
    fn control_frame(
        &mut self,
        kind: FrameKind,
        flags: u16,
        seq: u64,
    ) -> Result<Vec<u8>, SendFailure> {
        let mut out = Vec::with_capacity(frame::HEADER_LEN + TAG_LEN);
        match self.keys.as_mut() {
            Some((sealer, _)) => sealed::seal_frame(sealer, &mut out, kind, flags, seq, &[])
                .map_err(|e| SendFailure::Io(e.to_string()))?,
            None => frame::encode_frame(&mut out, kind, flags, seq, &[]),
        }
        Ok(out)
    }
}
