//! Session attribute encodings: size, encode and decode time of typical attributes (a small
//! `User`, a counter, a cart of 20 items) in postcard (what `Session::set` wrote before) and in
//! the encoding it writes now, which tolerates added and removed fields (docs/PERFORMANCE.md,
//! "Session attribute encoding"; CBOR and JSON were measured too, in the commit that added this
//! bench's "tribecast" row).
//!
//! Run: `cargo bench --bench session_attr -- --warm-up-time 1 --measurement-time 2`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::hint::black_box;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
    email: String,
    roles: Vec<String>,
    admin: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Item {
    sku: String,
    qty: u32,
    price_cents: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Cart {
    items: Vec<Item>,
    coupon: Option<String>,
}

fn user() -> User {
    User {
        id: 1_234_567,
        name: "Ann Example".into(),
        email: "ann@example.com".into(),
        roles: vec!["user".into(), "editor".into()],
        admin: false,
    }
}

fn cart() -> Cart {
    Cart {
        items: (0..20u32)
            .map(|i| Item {
                sku: format!("SKU-{i:05}"),
                qty: 1 + i % 3,
                price_cents: 499 + 100 * i as u64,
            })
            .collect(),
        coupon: None,
    }
}

type Enc<T> = fn(&T) -> Vec<u8>;
type Dec<T> = fn(&[u8]) -> T;

/// What `Session::set` does (src/session/attr.rs): the tag, then MessagePack with field names.
fn tribecast_encode<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.push(1);
    let mut ser = rmp_serde::Serializer::new(&mut out)
        .with_struct_map()
        .with_binary();
    v.serialize(&mut ser).unwrap();
    out
}

/// What `Session::get` does: the tag checked, then one value read in place.
fn tribecast_decode<T: DeserializeOwned>(b: &[u8]) -> T {
    let (1, rest) = (b[0], &b[1..]) else {
        panic!("tag")
    };
    let mut de = rmp_serde::Deserializer::from_read_ref(rest).with_binary();
    de.set_max_depth(128);
    T::deserialize(&mut de).unwrap()
}

fn formats<T: Serialize + DeserializeOwned>() -> Vec<(&'static str, Enc<T>, Dec<T>)> {
    vec![
        (
            "postcard",
            |v| postcard::to_stdvec(v).unwrap(),
            |b| postcard::from_bytes(b).unwrap(),
        ),
        (
            "msgpack_named",
            |v| rmp_serde::to_vec_named(v).unwrap(),
            |b| rmp_serde::from_slice(b).unwrap(),
        ),
        ("tribecast", tribecast_encode, tribecast_decode),
    ]
}

fn one<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(
    c: &mut Criterion,
    what: &str,
    value: &T,
) {
    let mut g = c.benchmark_group(format!("attr_{what}"));
    for (name, enc, dec) in formats::<T>() {
        let bytes = enc(value);
        assert_eq!(&dec(&bytes), value, "{name} round trip");
        eprintln!("size attr={what} format={name} bytes={}", bytes.len());
        g.bench_with_input(BenchmarkId::new("encode", name), value, |b, v| {
            b.iter(|| black_box(enc(black_box(v))).len())
        });
        g.bench_with_input(BenchmarkId::new("decode", name), &bytes, |b, bytes| {
            b.iter(|| black_box(dec(black_box(bytes))))
        });
    }
    g.finish();
}

fn attrs(c: &mut Criterion) {
    one(c, "user", &user());
    one(c, "counter", &1_234u64);
    one(c, "cart20", &cart());
}

criterion_group!(benches, attrs);
criterion_main!(benches);
