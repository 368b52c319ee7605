//! The cluster key and what is built on it: per-connection AEAD keys for TCP frames and a
//! datagram key for membership heartbeats (docs/SECURITY.md). All cryptography is RustCrypto's
//! (`aes-gcm`, `hkdf`, `sha2`); this module only chooses keys and nonces.

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use base64::Engine;
use hkdf::Hkdf;
use sha2::Sha256;
use std::fmt;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// Length of a cluster key in bytes (AES-256).
pub const KEY_LEN: usize = 32;
/// Length of an AES-GCM tag.
pub const TAG_LEN: usize = 16;
/// Length of the random nonces each side contributes to a connection's keys.
pub const HANDSHAKE_NONCE_LEN: usize = 32;
/// Length of an AES-GCM nonce.
pub const AEAD_NONCE_LEN: usize = 12;

/// The secret all members of a cluster share (Tomcat: `EncryptInterceptor.encryptionKey`).
/// 32 bytes; never printed: `Debug` shows `ClusterKey(<redacted>)`, and errors from loading one
/// never contain its text. The bytes are wiped from memory when the last copy is dropped.
#[derive(Clone)]
pub struct ClusterKey(Zeroizing<[u8; KEY_LEN]>);

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterKey(<redacted>)")
    }
}

/// Why a cluster key could not be loaded. Never contains the key's text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyError {
    /// The environment variable is not set.
    NotSet {
        /// The variable's name.
        var: String,
    },
    /// The environment variable is not valid Unicode.
    NotUnicode {
        /// The variable's name.
        var: String,
    },
    /// The key file cannot be read.
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error kind.
        kind: std::io::ErrorKind,
        /// The operating system's message.
        message: String,
    },
    /// The text is neither 64 hex digits nor base64.
    BadEncoding,
    /// The text decodes, but not to 32 bytes.
    BadLength {
        /// How many bytes the text decodes to.
        len: usize,
    },
    /// Every byte is zero: a placeholder, not a key.
    AllZero,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::NotSet { var } => write!(f, "environment variable {var} is not set"),
            KeyError::NotUnicode { var } => {
                write!(f, "environment variable {var} is not valid Unicode")
            }
            KeyError::Io {
                path,
                kind,
                message,
            } => write!(
                f,
                "cannot read key file {}: {message} ({kind:?})",
                path.display()
            ),
            KeyError::BadEncoding => write!(
                f,
                "cluster key must be 32 bytes written as 64 hex digits or as base64"
            ),
            KeyError::BadLength { len } => {
                write!(f, "cluster key decodes to {len} bytes, not {KEY_LEN}")
            }
            KeyError::AllZero => write!(f, "cluster key is all zero bytes"),
        }
    }
}

impl std::error::Error for KeyError {}

impl ClusterKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Result<ClusterKey, KeyError> {
        if bytes.iter().all(|&b| b == 0) {
            return Err(KeyError::AllZero);
        }
        Ok(ClusterKey(Zeroizing::new(bytes)))
    }

    /// A fresh random key (for tests and for generating a key file).
    pub fn random() -> Result<ClusterKey, getrandom::Error> {
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        getrandom::fill(&mut k[..])?;
        Ok(ClusterKey(k))
    }

    /// Parses 64 hex digits or base64 (standard alphabet, padding optional) of 32 bytes;
    /// surrounding whitespace is ignored.
    pub fn parse(text: &str) -> Result<ClusterKey, KeyError> {
        let t = text.trim();
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        if t.len() == 2 * KEY_LEN && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            for (i, pair) in t.as_bytes().chunks_exact(2).enumerate() {
                bytes[i] = (hex_digit(pair[0]) << 4) | hex_digit(pair[1]);
            }
        } else {
            let engine = base64::engine::GeneralPurpose::new(
                &base64::alphabet::STANDARD,
                base64::engine::GeneralPurposeConfig::new()
                    .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
            );
            let decoded = Zeroizing::new(engine.decode(t).map_err(|_| KeyError::BadEncoding)?);
            if decoded.len() != KEY_LEN {
                return Err(KeyError::BadLength { len: decoded.len() });
            }
            bytes.copy_from_slice(&decoded);
        }
        ClusterKey::from_bytes(*bytes)
    }

    /// Reads a key file holding the key as text (see [`ClusterKey::parse`]).
    pub fn from_file(path: impl AsRef<Path>) -> Result<ClusterKey, KeyError> {
        let path = path.as_ref();
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| KeyError::Io {
            path: path.to_path_buf(),
            kind: e.kind(),
            message: e.to_string(),
        })?);
        ClusterKey::parse(&text)
    }

    /// Reads the key from an environment variable (see [`ClusterKey::parse`]).
    pub fn from_env(var: &str) -> Result<ClusterKey, KeyError> {
        match std::env::var(var) {
            Ok(text) => ClusterKey::parse(&Zeroizing::new(text)),
            Err(std::env::VarError::NotPresent) => Err(KeyError::NotSet { var: var.into() }),
            Err(std::env::VarError::NotUnicode(_)) => Err(KeyError::NotUnicode { var: var.into() }),
        }
    }

    /// An AEAD key derived from this one with HKDF-SHA256 (RFC 5869).
    fn derive(&self, salt: &[u8], info: &[u8]) -> Aes256Gcm {
        let hk = Hkdf::<Sha256>::new(Some(salt), &self.0[..]);
        let mut okm = Zeroizing::new([0u8; KEY_LEN]);
        // Cannot fail: 32 bytes is far below HKDF-SHA256's 8160-byte limit.
        let _ = hk.expand(info, &mut okm[..]);
        Aes256Gcm::new((&*okm).into())
    }

    /// The two keys of one TCP connection, from both sides' fresh nonces: (sender to receiver,
    /// receiver to sender). A connection's keys are used nowhere else, so a frame captured on
    /// one connection never authenticates on another.
    #[doc(hidden)]
    pub fn connection_keys(
        &self,
        client: &[u8; HANDSHAKE_NONCE_LEN],
        server: &[u8; HANDSHAKE_NONCE_LEN],
    ) -> (Sealer, Opener, Sealer, Opener) {
        let mut salt = [0u8; 2 * HANDSHAKE_NONCE_LEN];
        salt[..HANDSHAKE_NONCE_LEN].copy_from_slice(client);
        salt[HANDSHAKE_NONCE_LEN..].copy_from_slice(server);
        let s2r = self.derive(&salt, b"tribecast v1 tcp sender-to-receiver");
        let r2s = self.derive(&salt, b"tribecast v1 tcp receiver-to-sender");
        (
            Sealer::new(s2r.clone()),
            Opener::new(s2r),
            Sealer::new(r2s.clone()),
            Opener::new(r2s),
        )
    }

    /// The key of membership datagrams.
    #[doc(hidden)]
    pub fn datagram_key(&self) -> DatagramKey {
        DatagramKey(self.derive(b"", b"tribecast v1 membership datagram"))
    }
}

fn hex_digit(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        b'A'..=b'F' => b - b'A' + 10,
        _ => 0, // callers check is_ascii_hexdigit first
    }
}

/// Fresh random bytes for a handshake nonce.
pub(crate) fn fresh_nonce() -> Result<[u8; HANDSHAKE_NONCE_LEN], CryptoError> {
    let mut n = [0u8; HANDSHAKE_NONCE_LEN];
    getrandom::fill(&mut n).map_err(|e| CryptoError::NoRandomness(e.to_string()))?;
    Ok(n)
}

/// Why sealing or opening failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CryptoError {
    /// Wrong key, forged, corrupted, replayed or reordered input: AES-GCM cannot tell which.
    Auth,
    /// The 2^64 nonces of one connection direction are used up (never in practice).
    Exhausted,
    /// The OS gave no random bytes.
    NoRandomness(String),
}

impl fmt::Display for CryptoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CryptoError::Auth => write!(
                f,
                "authentication failed (no or wrong cluster key, or a forged, replayed or reordered frame)"
            ),
            CryptoError::Exhausted => write!(f, "nonce counter exhausted"),
            CryptoError::NoRandomness(e) => write!(f, "no randomness: {e}"),
        }
    }
}

impl std::error::Error for CryptoError {}

fn counter_nonce(n: u64) -> [u8; AEAD_NONCE_LEN] {
    let mut nonce = [0u8; AEAD_NONCE_LEN];
    nonce[..8].copy_from_slice(&n.to_le_bytes());
    nonce
}

/// Seals one direction of a connection. The AEAD nonce is the number of frames sealed before
/// (0, 1, 2 …), never sent: the other side counts too, so a frame dropped, repeated or moved
/// fails authentication.
#[derive(Clone)]
pub struct Sealer {
    cipher: Aes256Gcm,
    next: u64,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sealer(<key>, next {})", self.next)
    }
}

impl fmt::Debug for Opener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Opener(<key>, next {})", self.next)
    }
}

impl Sealer {
    fn new(cipher: Aes256Gcm) -> Sealer {
        Sealer { cipher, next: 0 }
    }

    /// Encrypts `buf` in place and returns the tag.
    pub fn seal(&mut self, aad: &[u8], buf: &mut [u8]) -> Result<[u8; TAG_LEN], CryptoError> {
        if self.next == u64::MAX {
            return Err(CryptoError::Exhausted);
        }
        let nonce = counter_nonce(self.next);
        let tag = self
            .cipher
            .encrypt_inout_detached(&Nonce::from(nonce), aad, buf.into())
            .map_err(|_| CryptoError::Exhausted)?;
        self.next += 1;
        Ok(tag.into())
    }
}

/// Opens one direction of a connection; the counterpart of [`Sealer`].
#[derive(Clone)]
pub struct Opener {
    cipher: Aes256Gcm,
    next: u64,
}

impl Opener {
    fn new(cipher: Aes256Gcm) -> Opener {
        Opener { cipher, next: 0 }
    }

    /// Decrypts `buf` in place if `tag` authenticates it (and `aad`) as the next frame.
    pub fn open(&mut self, aad: &[u8], buf: &mut [u8], tag: &[u8]) -> Result<(), CryptoError> {
        if tag.len() != TAG_LEN || self.next == u64::MAX {
            return Err(CryptoError::Auth);
        }
        let nonce = counter_nonce(self.next);
        let tag = Tag::try_from(tag).map_err(|_| CryptoError::Auth)?;
        self.cipher
            .decrypt_inout_detached(&Nonce::from(nonce), aad, buf.into(), &tag)
            .map_err(|_| CryptoError::Auth)?;
        self.next += 1;
        Ok(())
    }
}

/// The key of membership datagrams; each datagram carries its own random 96-bit nonce.
#[derive(Clone)]
pub struct DatagramKey(Aes256Gcm);

impl DatagramKey {
    /// Encrypts `buf` in place under a fresh random nonce; returns the nonce and the tag.
    pub fn seal(
        &self,
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<([u8; AEAD_NONCE_LEN], [u8; TAG_LEN]), CryptoError> {
        let mut nonce = [0u8; AEAD_NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| CryptoError::NoRandomness(e.to_string()))?;
        let tag = self
            .0
            .encrypt_inout_detached(&Nonce::from(nonce), aad, buf.into())
            .map_err(|_| CryptoError::Exhausted)?;
        Ok((nonce, tag.into()))
    }

    /// Decrypts `buf` in place; `CryptoError::Auth` when it was not sealed with this key and
    /// `nonce`, or was altered.
    pub fn open(
        &self,
        aad: &[u8],
        nonce: &[u8],
        buf: &mut [u8],
        tag: &[u8],
    ) -> Result<(), CryptoError> {
        if nonce.len() != AEAD_NONCE_LEN || tag.len() != TAG_LEN {
            return Err(CryptoError::Auth);
        }
        let nonce = Nonce::try_from(nonce).map_err(|_| CryptoError::Auth)?;
        let tag = Tag::try_from(tag).map_err(|_| CryptoError::Auth)?;
        self.0
            .decrypt_inout_detached(&nonce, aad, buf.into(), &tag)
            .map_err(|_| CryptoError::Auth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn parse_hex_and_base64_alike() {
        let a = ClusterKey::parse(HEX).unwrap();
        let b = ClusterKey::parse("  AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n").unwrap();
        let c = ClusterKey::parse("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8").unwrap();
        assert_eq!(a.0[..], b.0[..]);
        assert_eq!(a.0[..], c.0[..]);
        assert!(ClusterKey::parse(&HEX.to_uppercase()).is_ok());
    }

    #[test]
    fn bad_keys_are_typed_errors_without_the_text() {
        assert_eq!(ClusterKey::parse("zz").unwrap_err(), KeyError::BadEncoding);
        assert!(matches!(
            ClusterKey::parse("AAEC"),
            Err(KeyError::BadLength { len: 3 })
        ));
        assert!(matches!(
            ClusterKey::parse(&"0".repeat(64)),
            Err(KeyError::AllZero)
        ));
        let secret = "s3cr3t-not-a-key-but-private!!";
        let e = ClusterKey::parse(secret).unwrap_err();
        assert!(!e.to_string().contains(secret));
        assert!(!format!("{e:?}").contains(secret));
        let k = ClusterKey::parse(HEX).unwrap();
        assert_eq!(format!("{k:?}"), "ClusterKey(<redacted>)");
    }

    #[test]
    fn connection_directions_count_and_differ() {
        let k = ClusterKey::parse(HEX).unwrap();
        let (cn, sn) = ([1u8; 32], [2u8; 32]);
        let (mut s2r_seal, _, _, mut r2s_open) = k.connection_keys(&cn, &sn);
        let (_, mut s2r_open, _, _) = k.connection_keys(&cn, &sn);
        let mut a = *b"first";
        let ta = s2r_seal.seal(b"h", &mut a).unwrap();
        let mut b = *b"second";
        let tb = s2r_seal.seal(b"h", &mut b).unwrap();
        // Out of order: the second frame first fails, and the order then still works.
        let mut b2 = b;
        assert_eq!(s2r_open.open(b"h", &mut b2, &tb), Err(CryptoError::Auth));
        s2r_open.open(b"h", &mut a, &ta).unwrap();
        assert_eq!(&a, b"first");
        // A replay of the first fails.
        let mut a2 = *b"first";
        let mut s = s2r_seal.clone();
        s.next = 0;
        let t = s.seal(b"h", &mut a2).unwrap();
        assert_eq!(
            s2r_open.open(b"h", &mut a2.clone(), &t),
            Err(CryptoError::Auth)
        );
        s2r_open.open(b"h", &mut b, &tb).unwrap();
        assert_eq!(&b, b"second");
        // The other direction's key does not open it; nor other nonces; nor other AAD.
        let mut c = *b"third";
        let tc = s2r_seal.seal(b"h", &mut c).unwrap();
        assert_eq!(
            r2s_open.open(b"h", &mut c.clone(), &tc),
            Err(CryptoError::Auth)
        );
        let (_, mut other, _, _) = k.connection_keys(&cn, &[3u8; 32]);
        assert_eq!(
            other.open(b"h", &mut c.clone(), &tc),
            Err(CryptoError::Auth)
        );
        assert_eq!(
            s2r_open.open(b"x", &mut c.clone(), &tc),
            Err(CryptoError::Auth)
        );
        s2r_open.open(b"h", &mut c, &tc).unwrap();
        assert_eq!(&c, b"third");
    }

    #[test]
    fn datagram_seal_open_and_every_flip_fails() {
        let k = ClusterKey::random().unwrap().datagram_key();
        let mut buf = *b"heartbeat record";
        let (nonce, tag) = k.seal(b"hdr", &mut buf).unwrap();
        assert_ne!(&buf, b"heartbeat record");
        for i in 0..buf.len() * 8 {
            let mut b = buf;
            b[i / 8] ^= 1 << (i % 8);
            assert_eq!(k.open(b"hdr", &nonce, &mut b, &tag), Err(CryptoError::Auth));
        }
        let wrong = ClusterKey::random().unwrap().datagram_key();
        assert!(wrong.open(b"hdr", &nonce, &mut buf.clone(), &tag).is_err());
        k.open(b"hdr", &nonce, &mut buf, &tag).unwrap();
        assert_eq!(&buf, b"heartbeat record");
    }

    #[test]
    fn key_file_and_env_errors() {
        let dir = std::env::temp_dir().join(format!("tribecast-key-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let f = dir.join("k");
        std::fs::write(&f, format!("{HEX}\n")).unwrap();
        assert!(ClusterKey::from_file(&f).is_ok());
        assert!(matches!(
            ClusterKey::from_file(dir.join("missing")),
            Err(KeyError::Io {
                kind: std::io::ErrorKind::NotFound,
                ..
            })
        ));
        assert!(matches!(
            ClusterKey::from_env("TRIBECAST_TEST_KEY_THAT_IS_NOT_SET"),
            Err(KeyError::NotSet { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
