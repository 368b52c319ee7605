//! Sealed frames: the frame format of a connection whose members share a cluster key
//! (docs/wire-format.md, "Sealed frames"). The header keeps its layout, with `FLAG_SEALED` set
//! and the length counting the 16-byte tag; the body is the AES-256-GCM ciphertext of the plain
//! body followed by the tag, with header bytes 0..20 as associated data. The checksum is
//! computed over the sealed body as on any frame, so corruption is still told from forgery.

use super::frame::{self, body_hasher, FrameKind, FLAG_SEALED, HEADER_LEN};
use crate::crypto::{CryptoError, Opener, Sealer, TAG_LEN};

/// Seals the plain frames in `input` (as `encode_frame` writes them, or, with `tag_room`, as
/// `Lane::stamp` writes them for a keyed lane: each body followed by 16 spare bytes counted in
/// its length) and appends them to `out`, in order. With `tag_room` a sealed frame is exactly as
/// long as its plain one, so offsets into `input` are offsets into what is written.
pub fn seal_frames(
    sealer: &mut Sealer,
    input: &[u8],
    tag_room: bool,
    out: &mut Vec<u8>,
) -> Result<(), CryptoError> {
    let mut at = 0;
    while let Some(h) = input.get(at..at + HEADER_LEN) {
        // Our own frames: the header was written by `encode_header` a moment ago.
        let kind = FrameKind::from_u8(h[5]).unwrap_or(FrameKind::Data);
        let flags = u16::from_le_bytes([h[6], h[7]]);
        let len = u32::from_le_bytes([h[8], h[9], h[10], h[11]]) as usize;
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&h[12..20]);
        let seq = u64::from_le_bytes(seq);
        let plain_len = if tag_room {
            len.saturating_sub(TAG_LEN)
        } else {
            len
        };
        let body_at = at + HEADER_LEN;
        let Some(body) = input.get(body_at..body_at + plain_len) else {
            break;
        };
        let sealed_len = plain_len + TAG_LEN;
        let aad = frame::header_prefix(kind, flags | FLAG_SEALED, seq, sealed_len);
        let start = out.len();
        out.extend_from_slice(&[0; HEADER_LEN]);
        out.extend_from_slice(body);
        let tag = sealer.seal(&aad, &mut out[start + HEADER_LEN..])?;
        out.extend_from_slice(&tag);
        let header = frame::encode_header(
            kind,
            flags | FLAG_SEALED,
            seq,
            sealed_len,
            &body_hasher(&out[start + HEADER_LEN..]),
        );
        out[start..start + HEADER_LEN].copy_from_slice(&header);
        at = body_at + len;
    }
    Ok(())
}

/// Seals one plain body as a frame appended to `out`.
pub fn seal_frame(
    sealer: &mut Sealer,
    out: &mut Vec<u8>,
    kind: FrameKind,
    flags: u16,
    seq: u64,
    body: &[u8],
) -> Result<(), CryptoError> {
    let mut plain = Vec::with_capacity(HEADER_LEN + body.len());
    frame::encode_frame(&mut plain, kind, flags, seq, body);
    seal_frames(sealer, &plain, false, out)
}

/// Opens a sealed frame's body in place: `header` is the frame's 24 header bytes, `body` its
/// sealed body. Returns the length of the plain body now at the start of `body`. A frame
/// without `FLAG_SEALED`, too short to hold a tag, or failing authentication (wrong key,
/// forged, replayed or out of order) is an error.
pub fn open_body(
    opener: &mut Opener,
    header: &[u8],
    flags: u16,
    body: &mut [u8],
) -> Result<usize, CryptoError> {
    if flags & FLAG_SEALED == 0 || body.len() < TAG_LEN || header.len() < 20 {
        return Err(CryptoError::Auth);
    }
    let plain = body.len() - TAG_LEN;
    let (text, tag) = body.split_at_mut(plain);
    opener.open(&header[..20], text, tag)?;
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::ClusterKey;
    use crate::wire::frame::{encode_frame, parse_frame, FLAG_ACK};

    #[test]
    fn sealed_frames_round_trip_and_refuse_tampering() {
        let k = ClusterKey::random().unwrap();
        let (mut seal, mut open, _, _) = k.connection_keys(&[1; 32], &[2; 32]);
        let mut plain = Vec::new();
        encode_frame(&mut plain, FrameKind::Data, FLAG_ACK, 7, b"hello");
        encode_frame(&mut plain, FrameKind::Ack, 0, 7, b"");
        let mut sealed = Vec::new();
        seal_frames(&mut seal, &plain, false, &mut sealed).unwrap();
        assert_eq!(sealed.len(), plain.len() + 2 * TAG_LEN);
        // Every single-bit flip is refused, by the checksum or by authentication.
        let open_all = |b: &[u8], mut o: Opener| -> bool {
            let mut at = 0;
            while at < b.len() {
                let Ok(Some((f, used))) = parse_frame(&b[at..], 1 << 20) else {
                    return false;
                };
                let (hdr, flags) = (b[at..at + HEADER_LEN].to_vec(), f.header.flags);
                let mut body = b[at + HEADER_LEN..at + used].to_vec();
                if open_body(&mut o, &hdr, flags, &mut body).is_err() {
                    return false;
                }
                at += used;
            }
            true
        };
        assert!(open_all(&sealed, open.clone()));
        for i in 0..sealed.len() * 8 {
            let mut b = sealed.clone();
            b[i / 8] ^= 1 << (i % 8);
            assert!(!open_all(&b, open.clone()), "flip of bit {i} accepted");
        }
        let mut at = 0;
        let mut got = Vec::new();
        while let Ok(Some((f, used))) = parse_frame(&sealed[at..], 1 << 20) {
            let (hdr, h) = (sealed[at..at + HEADER_LEN].to_vec(), f.header);
            let mut body = sealed[at + HEADER_LEN..at + used].to_vec();
            let n = open_body(&mut open, &hdr, h.flags, &mut body).unwrap();
            got.push((h.kind, h.seq, body[..n].to_vec()));
            at += used;
        }
        assert_eq!(
            got,
            [
                (FrameKind::Data, 7, b"hello".to_vec()),
                (FrameKind::Ack, 7, Vec::new())
            ]
        );
    }

    #[test]
    fn tag_room_keeps_lengths() {
        let k = ClusterKey::random().unwrap();
        let (mut seal, mut open, _, _) = k.connection_keys(&[1; 32], &[2; 32]);
        let mut plain = Vec::new();
        let mut body = b"payload".to_vec();
        body.extend_from_slice(&[0; TAG_LEN]);
        encode_frame(&mut plain, FrameKind::Data, 0, 3, &body);
        let mut sealed = Vec::new();
        seal_frames(&mut seal, &plain, true, &mut sealed).unwrap();
        assert_eq!(sealed.len(), plain.len());
        let (f, _) = parse_frame(&sealed, 1024).unwrap().unwrap();
        let flags = f.header.flags;
        let mut b = f.body.to_vec();
        let n = open_body(&mut open, &sealed[..HEADER_LEN], flags, &mut b).unwrap();
        assert_eq!(&b[..n], b"payload");
    }
}
