//! A session's attributes as stored: a sorted vector of entries, each one allocation holding
//! the name and the value's bytes together. A `BTreeMap<String, Vec<u8>>` took a node of about
//! 550 bytes for a session's first attribute and three allocations per attribute
//! (docs/PERFORMANCE.md, "Footprint of one node"); sessions hold a few attributes, so a binary
//! search over a boxed slice finds one as fast.
//!
//! Replicated as the map it replaces (the same bytes on the wire): a map of name to bytes.

use serde::de::{self, DeserializeSeed, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;

/// A session's attributes: the bytes of each encoded value, by name, in name order (byte order
/// of the names, as `str` compares). The map's methods: [`get`](Self::get),
/// [`insert`](Self::insert), [`remove`](Self::remove), [`contains_key`](Self::contains_key),
/// [`iter`](Self::iter), [`keys`](Self::keys), [`len`](Self::len).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Attributes(Box<[Entry]>);

/// One attribute: its name's length (LEB128), its name, then its value, in one allocation.
#[derive(Clone, PartialEq, Eq)]
struct Entry(Box<[u8]>);

impl Entry {
    fn new(name: &str, value: &[u8]) -> Entry {
        let mut len = [0u8; 10];
        let n = write_len(name.len(), &mut len);
        let mut b = Vec::with_capacity(n + name.len() + value.len());
        b.extend_from_slice(&len[..n]);
        b.extend_from_slice(name.as_bytes());
        b.extend_from_slice(value);
        Entry(b.into_boxed_slice())
    }

    /// The name's bytes and the value.
    fn parts(&self) -> (&[u8], &[u8]) {
        let (len, n) = read_len(&self.0);
        self.0[n..].split_at(len)
    }

    fn name_bytes(&self) -> &[u8] {
        self.parts().0
    }

    fn name(&self) -> &str {
        // Always UTF-8: made from a `&str` by `new` only.
        std::str::from_utf8(self.name_bytes()).unwrap_or_default()
    }

    fn value(&self) -> &[u8] {
        self.parts().1
    }
}

fn write_len(mut len: usize, out: &mut [u8; 10]) -> usize {
    let mut i = 0;
    while len >= 0x80 {
        out[i] = (len as u8) | 0x80;
        len >>= 7;
        i += 1;
    }
    out[i] = len as u8;
    i + 1
}

/// The length `write_len` wrote at the start of `b`, and the bytes it took.
fn read_len(b: &[u8]) -> (usize, usize) {
    let (mut len, mut shift) = (0usize, 0);
    for (i, byte) in b.iter().enumerate() {
        len |= usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return (len, i + 1);
        }
        shift += 7;
    }
    (0, b.len())
}

impl Attributes {
    /// No attributes.
    pub fn new() -> Attributes {
        Attributes::default()
    }

    /// How many attributes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn find(&self, name: &str) -> Result<usize, usize> {
        self.0
            .binary_search_by(|e| e.name_bytes().cmp(name.as_bytes()))
    }

    /// The bytes of attribute `name`, if any.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.find(name).ok().map(|i| self.0[i].value())
    }

    /// Whether attribute `name` is here.
    pub fn contains_key(&self, name: &str) -> bool {
        self.find(name).is_ok()
    }

    /// Sets attribute `name` to `value`; true when it replaced a value.
    pub fn insert(&mut self, name: impl AsRef<str>, value: impl AsRef<[u8]>) -> bool {
        let (name, value) = (name.as_ref(), value.as_ref());
        let entry = Entry::new(name, value);
        match self.find(name) {
            Ok(i) => {
                self.0[i] = entry;
                true
            }
            Err(i) => {
                let mut v = std::mem::take(&mut self.0).into_vec();
                v.insert(i, entry);
                self.0 = v.into_boxed_slice();
                false
            }
        }
    }

    /// Removes attribute `name`; true when it was here.
    pub fn remove(&mut self, name: &str) -> bool {
        let Ok(i) = self.find(name) else {
            return false;
        };
        let mut v = std::mem::take(&mut self.0).into_vec();
        v.remove(i);
        self.0 = v.into_boxed_slice();
        true
    }

    /// Every attribute's name and bytes, in name order.
    pub fn iter(&self) -> AttributesIter<'_> {
        AttributesIter(self.0.iter())
    }

    /// Every attribute's name, in order.
    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &str> + ExactSizeIterator {
        self.0.iter().map(Entry::name)
    }

    /// The same attributes in a map (the simulations' records of what they saw).
    #[cfg(test)]
    pub(crate) fn to_map(&self) -> BTreeMap<String, Vec<u8>> {
        self.iter()
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect()
    }

    /// Every attribute's name as bytes and its value, in name order, without checking the names
    /// are UTF-8 again (the content fingerprint reads them on every change).
    pub(crate) fn raw(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.0.iter().map(Entry::parts)
    }
}

/// The iterator of [`Attributes::iter`]: name and bytes, in name order.
#[derive(Clone, Debug)]
pub struct AttributesIter<'a>(std::slice::Iter<'a, Entry>);

impl<'a> Iterator for AttributesIter<'a> {
    type Item = (&'a str, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        self.0.next().map(|e| (e.name(), e.value()))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

impl DoubleEndedIterator for AttributesIter<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.0.next_back().map(|e| (e.name(), e.value()))
    }
}

impl ExactSizeIterator for AttributesIter<'_> {}

impl<'a> IntoIterator for &'a Attributes {
    type Item = (&'a str, &'a [u8]);
    type IntoIter = AttributesIter<'a>;

    fn into_iter(self) -> AttributesIter<'a> {
        self.iter()
    }
}

/// As a map collects: sorted by name, the last value of a name repeated wins.
impl<K: AsRef<str>, V: AsRef<[u8]>> FromIterator<(K, V)> for Attributes {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Attributes {
        let mut v: Vec<Entry> = iter
            .into_iter()
            .map(|(k, v)| Entry::new(k.as_ref(), v.as_ref()))
            .collect();
        sorted(&mut v);
        Attributes(v.into_boxed_slice())
    }
}

/// Sorts by name (stable), then keeps the last entry of each name.
fn sorted(v: &mut Vec<Entry>) {
    v.sort_by(|a, b| a.name_bytes().cmp(b.name_bytes()));
    let mut i = v.len();
    while i > 1 {
        i -= 1;
        if v[i - 1].name_bytes() == v[i].name_bytes() {
            v.remove(i - 1);
        }
    }
}

impl<K: AsRef<str>, V: AsRef<[u8]>, const N: usize> From<[(K, V); N]> for Attributes {
    fn from(a: [(K, V); N]) -> Attributes {
        a.into_iter().collect()
    }
}

impl From<BTreeMap<String, Vec<u8>>> for Attributes {
    fn from(m: BTreeMap<String, Vec<u8>>) -> Attributes {
        m.into_iter().collect()
    }
}

impl fmt::Debug for Attributes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {:?}", self.name(), self.value())
    }
}

struct Raw<'a>(&'a [u8]);

impl Serialize for Raw<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// A map of name to bytes, as `crate::wire::bytes::map` writes a `BTreeMap<String, Vec<u8>>`.
impl Serialize for Attributes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.len()))?;
        for (k, v) in self {
            map.serialize_entry(k, &Raw(v))?;
        }
        map.end()
    }
}

/// Reads one value's bytes straight into its entry (one allocation per attribute).
struct EntrySeed<'n>(&'n str);

impl<'de> DeserializeSeed<'de> for EntrySeed<'_> {
    type Value = Entry;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Entry, D::Error> {
        d.deserialize_byte_buf(self)
    }
}

impl<'de> Visitor<'de> for EntrySeed<'_> {
    type Value = Entry;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("bytes")
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Entry, E> {
        Ok(Entry::new(self.0, v))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Entry, A::Error> {
        // Bounded by what the input holds: the hint is not trusted for the allocation.
        let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(b) = seq.next_element::<u8>()? {
            v.push(b);
        }
        Ok(Entry::new(self.0, &v))
    }
}

struct AttributesVisitor;

impl<'de> Visitor<'de> for AttributesVisitor {
    type Value = Attributes;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map of attribute name to bytes")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Attributes, A::Error> {
        // Bounded by what the input holds: the hint is not trusted for the allocation.
        let mut v = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
        while let Some(name) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            v.push(map.next_value_seed(EntrySeed(&name))?);
        }
        // A sender's map is already in order: then this is one pass.
        if !v.is_sorted_by(|a, b| a.name_bytes() < b.name_bytes()) {
            sorted(&mut v);
        }
        Ok(Attributes(v.into_boxed_slice()))
    }
}

impl<'de> Deserialize<'de> for Attributes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Attributes, D::Error> {
        d.deserialize_map(AttributesVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_as_the_map_it_replaces() {
        let mut a = Attributes::new();
        let mut m: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let long = "n".repeat(300); // a name length of two LEB128 bytes
        for (k, v) in [
            ("b", vec![1u8]),
            ("a", vec![]),
            (long.as_str(), vec![7; 200]),
            ("b", vec![2, 3]),
            ("é", vec![4]),
            ("", vec![5]),
        ] {
            assert_eq!(a.insert(k, &v), m.insert(k.to_string(), v).is_some());
            assert!(a
                .iter()
                .eq(m.iter().map(|(k, v)| (k.as_str(), v.as_slice()))));
        }
        assert_eq!(a.get("b"), Some(&[2u8, 3][..]));
        assert_eq!(a.get(&long).map(<[u8]>::len), Some(200));
        assert_eq!(a.get("c"), None);
        assert!(a.keys().eq(m.keys().map(String::as_str)));
        assert_eq!(a, Attributes::from(m.clone()));
        assert!(a.remove("a") && !a.remove("a"));
        m.remove("a");
        assert_eq!((a.len(), a.contains_key("a")), (m.len(), false));
        assert!(a
            .iter()
            .rev()
            .eq(m.iter().rev().map(|(k, v)| (k.as_str(), v.as_slice()))));
        // Collected as a map collects: the last value of a name wins.
        let c: Attributes = [("x", vec![1u8]), ("w", vec![2]), ("x", vec![3])].into();
        assert_eq!(c, Attributes::from([("w", [2u8]), ("x", [3])]));
    }

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Old {
        #[serde(with = "crate::wire::bytes::map")]
        m: BTreeMap<String, Vec<u8>>,
    }

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct New {
        m: Attributes,
    }

    #[test]
    fn the_same_bytes_on_the_wire_as_the_map() {
        let m: BTreeMap<String, Vec<u8>> = [
            ("cart".to_string(), vec![1, 2, 3]),
            ("user".to_string(), vec![0; 300]),
            ("n".repeat(200), vec![9]),
        ]
        .into();
        let old = postcard::to_stdvec(&Old { m: m.clone() }).unwrap();
        let new = New {
            m: Attributes::from(m.clone()),
        };
        assert_eq!(postcard::to_stdvec(&new).unwrap(), old);
        assert_eq!(postcard::from_bytes::<New>(&old).unwrap(), new);
        // A map out of order, or with a name twice, reads as a map would.
        let mixed: Vec<(String, serde_bytes_like::B)> = vec![
            ("z".into(), serde_bytes_like::B(vec![1])),
            ("a".into(), serde_bytes_like::B(vec![2])),
            ("z".into(), serde_bytes_like::B(vec![3])),
        ];
        let bytes = postcard::to_stdvec(&serde_bytes_like::AsMap(mixed)).unwrap();
        let got: Attributes = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(got, Attributes::from([("a", [2u8]), ("z", [3])]));
        let want: BTreeMap<String, Vec<u8>> =
            Old::deserialize(&mut postcard::Deserializer::from_bytes(&bytes))
                .map(|o| o.m)
                .unwrap();
        assert_eq!(got, Attributes::from(want));
    }

    /// A map written entry by entry, in any order (what another implementation might send).
    mod serde_bytes_like {
        use serde::ser::{SerializeMap, Serializer};

        pub struct B(pub Vec<u8>);

        impl serde::Serialize for B {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(&self.0)
            }
        }

        pub struct AsMap(pub Vec<(String, B)>);

        impl serde::Serialize for AsMap {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(Some(self.0.len()))?;
                for (k, v) in &self.0 {
                    m.serialize_entry(k, v)?;
                }
                m.end()
            }
        }
    }

    proptest::proptest! {
        /// Any bytes from the network read as attributes or fail, never panic; what reads
        /// writes back the same.
        #[test]
        fn any_bytes_read_or_fail(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            if let Ok(a) = postcard::from_bytes::<Attributes>(&bytes) {
                let again = postcard::to_stdvec(&a).unwrap();
                proptest::prop_assert_eq!(postcard::from_bytes::<Attributes>(&again).unwrap(), a);
            }
        }
    }
}
