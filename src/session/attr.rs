//! The bytes of one session attribute: a format tag, then the value in MessagePack with structs
//! as maps of field name to value (rmp-serde's "named" form).
//!
//! Self-describing on purpose: a value written by one version of the application's type reads
//! as the next version when that one has a field more (`#[serde(default)]`) or a field fewer
//! (unknown fields are skipped), so sessions survive a rolling deploy that changes a session
//! type. Postcard (the wire's envelopes) is positional and cannot do this. The measurements that
//! chose MessagePack over CBOR and JSON are in docs/PERFORMANCE.md; the rules for evolving a type
//! in docs/design.md ("Evolving session types").
//!
//! The leading tag names the encoding, so that bytes written by a later encoding are refused
//! with a clear error instead of being read as something else, and so that a later release can
//! read two encodings during a rolling change of encoding.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The tag of the one encoding this version writes and reads: MessagePack, structs as maps.
pub(crate) const TAG_MSGPACK_NAMED: u8 = 1;

/// How deep the decoder follows nested arrays and maps. Bytes come from other members: a
/// value nested deeper than any session type plausibly is fails instead of using up the stack.
const MAX_DEPTH: usize = 128;

/// The bytes of `value` as stored and replicated.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(64);
    out.push(TAG_MSGPACK_NAMED);
    let mut ser = rmp_serde::Serializer::new(&mut out)
        .with_struct_map()
        .with_binary();
    value.serialize(&mut ser).map_err(|e| e.to_string())?;
    Ok(out)
}

/// The value in `bytes` as a `T`, if they start with the tag of a known encoding. Bytes after
/// the value are not looked at: MessagePack's markers already catch a value of another type,
/// and checking for the end would cost a copy of every string (rmp-serde tells the position only
/// through its copying reader; docs/PERFORMANCE.md).
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let (tag, rest) = match bytes.split_first() {
        Some((t, rest)) => (*t, rest),
        None => return Err("no bytes".into()),
    };
    if tag != TAG_MSGPACK_NAMED {
        return Err(format!(
            "unknown attribute encoding {tag} (this version reads {TAG_MSGPACK_NAMED}: written by another tribecast version?)"
        ));
    }
    let mut de = rmp_serde::Deserializer::from_read_ref(rest).with_binary();
    de.set_max_depth(MAX_DEPTH);
    T::deserialize(&mut de).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct UserV1 {
        id: u64,
        name: String,
    }

    /// V1 with a field more: old bytes read with the default.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct UserV2 {
        id: u64,
        name: String,
        #[serde(default)]
        email: Option<String>,
        #[serde(default)]
        logins: u32,
    }

    /// V1 with a field fewer: the stored field is skipped.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct UserV3 {
        id: u64,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum RoleV1 {
        Reader,
        Editor { since: u64 },
    }

    /// A variant more, before the others: variants travel by name, not by position.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum RoleV2 {
        Admin,
        Reader,
        Editor { since: u64 },
    }

    #[test]
    fn round_trips_and_starts_with_the_tag() {
        let v = UserV1 {
            id: 7,
            name: "ann".into(),
        };
        let b = encode(&v).unwrap();
        assert_eq!(b[0], TAG_MSGPACK_NAMED);
        assert_eq!(decode::<UserV1>(&b).unwrap(), v);
        assert_eq!(decode::<u64>(&encode(&300u64).unwrap()).unwrap(), 300);
        assert_eq!(decode::<String>(&encode("x").unwrap()).unwrap(), "x");
    }

    #[test]
    fn added_and_removed_fields_and_added_variants_read() {
        let b = encode(&UserV1 {
            id: 7,
            name: "ann".into(),
        })
        .unwrap();
        assert_eq!(
            decode::<UserV2>(&b).unwrap(),
            UserV2 {
                id: 7,
                name: "ann".into(),
                email: None,
                logins: 0
            }
        );
        assert_eq!(decode::<UserV3>(&b).unwrap(), UserV3 { id: 7 });
        // And back: V2's bytes read as V1 (the new fields are skipped by the old code).
        let b2 = encode(&UserV2 {
            id: 8,
            name: "bob".into(),
            email: Some("b@x".into()),
            logins: 3,
        })
        .unwrap();
        assert_eq!(
            decode::<UserV1>(&b2).unwrap(),
            UserV1 {
                id: 8,
                name: "bob".into()
            }
        );
        for (old, new) in [
            (RoleV1::Reader, RoleV2::Reader),
            (RoleV1::Editor { since: 5 }, RoleV2::Editor { since: 5 }),
        ] {
            assert_eq!(decode::<RoleV2>(&encode(&old).unwrap()).unwrap(), new);
        }
        // What an old node cannot do: read a variant it does not know.
        let e = decode::<RoleV1>(&encode(&RoleV2::Admin).unwrap()).unwrap_err();
        assert!(e.contains("Admin"), "{e}");
    }

    #[test]
    fn an_option_field_needs_no_default_and_integers_read_across_widths() {
        #[derive(Debug, PartialEq, Deserialize)]
        struct WithOption {
            id: u64,
            nick: Option<String>,
        }
        let b = encode(&UserV1 {
            id: 7,
            name: "ann".into(),
        })
        .unwrap();
        assert_eq!(
            decode::<WithOption>(&b).unwrap(),
            WithOption { id: 7, nick: None }
        );
        assert_eq!(decode::<u64>(&encode(&7u32).unwrap()).unwrap(), 7);
        assert_eq!(decode::<u16>(&encode(&7u64).unwrap()).unwrap(), 7);
        assert!(decode::<u16>(&encode(&70_000u64).unwrap()).is_err());
    }

    #[test]
    fn what_does_not_evolve_fails_with_an_error() {
        let b = encode(&UserV1 {
            id: 7,
            name: "ann".into(),
        })
        .unwrap();
        // A field added without a default.
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct NoDefault {
            id: u64,
            name: String,
            email: String,
        }
        assert!(decode::<NoDefault>(&b).unwrap_err().contains("email"));
        // A field renamed: to the new code it is a missing field.
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Renamed {
            id: u64,
            full_name: String,
        }
        assert!(decode::<Renamed>(&b).is_err());
        // A field's type changed.
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Retyped {
            id: String,
            name: String,
        }
        assert!(decode::<Retyped>(&b).is_err());
    }

    #[test]
    fn bad_bytes_are_errors() {
        assert!(decode::<u8>(&[]).unwrap_err().contains("no bytes"));
        // Postcard's bytes of a User (the encoding before this one) and any other tag.
        let old = postcard::to_stdvec(&UserV1 {
            id: 7,
            name: "ann".into(),
        })
        .unwrap();
        assert!(decode::<UserV1>(&old)
            .unwrap_err()
            .contains("unknown attribute encoding 7"));
        // Truncated, another type.
        let b = encode(&UserV1 {
            id: 7,
            name: "ann".into(),
        })
        .unwrap();
        for cut in 1..b.len() {
            assert!(decode::<UserV1>(&b[..cut]).is_err(), "cut at {cut}");
        }
        assert!(decode::<u8>(&encode(&300u32).unwrap()).is_err());
        assert!(decode::<String>(&encode(&3u32).unwrap()).is_err());
        // A length far beyond the bytes: an error, not an allocation of 4 GiB.
        assert!(decode::<Vec<u8>>(&[TAG_MSGPACK_NAMED, 0xdd, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(decode::<String>(&[TAG_MSGPACK_NAMED, 0xdb, 0xff, 0xff, 0xff, 0xff]).is_err());
        // Arrays nested a million deep, in a field the type does not know: an error, not a
        // stack overflow.
        let mut deep = encode(&UserV1 {
            id: 7,
            name: "ann".into(),
        })
        .unwrap();
        deep[1] += 1; // one more entry in the map
        deep.push(0xa1);
        deep.push(b'x');
        deep.extend(std::iter::repeat_n(0x91, 1_000_000));
        deep.push(0xc0);
        assert!(decode::<UserV3>(&deep).is_err());
    }

    proptest::proptest! {
        /// Any bytes from the network decode to a value or an error, never a panic.
        #[test]
        fn any_bytes_decode_or_fail(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64), tag in 0u8..3) {
            let mut bytes = vec![tag];
            bytes.extend(body);
            let _ = decode::<UserV2>(&bytes);
            let _ = decode::<RoleV2>(&bytes);
            let _ = decode::<Vec<u64>>(&bytes);
            let _ = decode::<String>(&bytes);
            let _ = decode::<std::collections::BTreeMap<String, serde::de::IgnoredAny>>(&bytes);
        }
    }
}
