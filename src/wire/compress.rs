//! Payload compression (Tribes' `GzipInterceptor`, with LZ4): a compressed payload is the
//! uncompressed length (4 bytes, little-endian) then an LZ4 block. The envelope's options carry
//! `SendOptions::COMPRESSED`, so every member reads it whatever its own setting.

use std::fmt;

/// Why a compressed payload could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompressError {
    /// Shorter than its length prefix.
    Truncated,
    /// It says it holds more than a frame may.
    TooLarge {
        /// The length it claims.
        len: usize,
        /// The largest accepted (`max_frame_size`).
        max: usize,
    },
    /// The block is not valid LZ4 for the length it claims.
    Corrupt(String),
}

impl fmt::Display for CompressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CompressError::Truncated => write!(f, "compressed payload shorter than its header"),
            CompressError::TooLarge { len, max } => write!(
                f,
                "compressed payload claims {len} bytes, more than max_frame_size ({max})"
            ),
            CompressError::Corrupt(why) => write!(f, "compressed payload is corrupt: {why}"),
        }
    }
}

impl std::error::Error for CompressError {}

/// `payload` compressed, when it is at least `min` bytes and compressing makes it smaller.
pub fn compress(payload: &[u8], min: u32) -> Option<Vec<u8>> {
    if payload.is_empty() || payload.len() < min as usize {
        return None;
    }
    let packed = lz4_flex::block::compress_prepend_size(payload);
    (packed.len() < payload.len()).then_some(packed)
}

/// The payload `packed` holds, refused before any allocation when it claims more than `max`
/// bytes (a hostile length cannot make this node allocate).
pub fn decompress(packed: &[u8], max: usize) -> Result<Vec<u8>, CompressError> {
    let head: [u8; 4] = packed
        .get(..4)
        .and_then(|h| h.try_into().ok())
        .ok_or(CompressError::Truncated)?;
    let len = u32::from_le_bytes(head) as usize;
    if len > max {
        return Err(CompressError::TooLarge { len, max });
    }
    let out = lz4_flex::block::decompress(&packed[4..], len)
        .map_err(|e| CompressError::Corrupt(e.to_string()))?;
    // A block cut short can decode to fewer bytes than its header promised.
    if out.len() != len {
        return Err(CompressError::Corrupt(format!(
            "{} bytes where the header says {len}",
            out.len()
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repetitive_payload_shrinks_and_comes_back() {
        let json = br#"{"item":"book","qty":1,"price":12.5},"#.repeat(200);
        let packed = compress(&json, 0).expect("smaller");
        assert!(
            packed.len() * 5 < json.len(),
            "{} of {}",
            packed.len(),
            json.len()
        );
        assert_eq!(decompress(&packed, json.len()).expect("valid"), json);
    }

    #[test]
    fn small_or_incompressible_payloads_stay_as_they_are() {
        assert_eq!(compress(b"short", 100), None);
        assert_eq!(compress(b"", 0), None);
        let mut noise = Vec::new();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..4096 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            noise.push(x as u8);
        }
        assert_eq!(compress(&noise, 0), None, "random bytes do not shrink");
    }

    #[test]
    fn hostile_bytes_are_refused_without_a_panic_or_a_large_allocation() {
        assert_eq!(decompress(&[1, 2], 1 << 20), Err(CompressError::Truncated));
        // Claims 4 GiB: refused before anything is allocated.
        assert_eq!(
            decompress(&[0xff, 0xff, 0xff, 0xff, 0], 1 << 20),
            Err(CompressError::TooLarge {
                len: u32::MAX as usize,
                max: 1 << 20
            })
        );
        let good = compress(&b"abcabcabc".repeat(100), 0).expect("smaller");
        for cut in 4..good.len() {
            assert!(decompress(&good[..cut], 1 << 20).is_err(), "cut at {cut}");
        }
        let mut lying = good.clone();
        lying[0] = lying[0].wrapping_add(7); // the length says more than the block holds
        assert!(decompress(&lying, 1 << 20).is_err());
        let mut x: u32 = 1;
        for _ in 0..2000 {
            let junk: Vec<u8> = (0..64)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                    (x >> 16) as u8
                })
                .collect();
            let mut framed = 300u32.to_le_bytes().to_vec();
            framed.extend(junk);
            let _ = decompress(&framed, 1 << 20); // any result, never a panic
        }
    }
}
