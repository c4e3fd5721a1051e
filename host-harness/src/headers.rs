//! Header maps as Envoy keeps them (ordered, lower-case names, repeated names allowed) and the
//! pairs serialization of `proxy_get_header_map_pairs` / `proxy_set_header_map_pairs`.
//!
//! Pairs format (little-endian): `u32 count`, then `count` × (`u32 key_len`, `u32 value_len`),
//! then for each pair the key bytes, a NUL, the value bytes, a NUL.
//!
//! ```
//! use proxy_wasm_harness::headers::HeaderMap;
//!
//! let mut h = HeaderMap::from_pairs(&[(":status", "200"), ("X-A", "1")]);
//! h.add("x-a", "2");
//! assert_eq!(h.get_all("x-a"), ["1", "2"]);
//! let bytes = h.serialize();
//! assert_eq!(HeaderMap::deserialize(&bytes).unwrap(), h);
//! ```

/// An ordered multimap of headers. Names are stored lower-case; values are bytes as Envoy allows
/// (not necessarily UTF-8).
///
/// Storage is two byte buffers, one of the names and one of the values (each in entry order),
/// and a list of offsets into them, so a map costs three allocations however many headers it
/// holds, and none when [`HeaderMap::clear`]ed and refilled: the harness reuses maps across
/// streams. Names apart from values let the names of a whole batch of headers be checked for
/// upper case in one pass.
#[derive(Clone, Default)]
pub struct HeaderMap {
    entries: Vec<Entry>,
    names: Vec<u8>,
    values: Vec<u8>,
}

/// Request headers that Envoy 1.40 keeps as one entry: its inline headers. A repeat from the
/// client (the codec) or an add from a filter (`addCopy`) joins the value to the first one with a
/// comma; any other repeated header stays a pair of its own. Measured against Envoy by
/// `tests/tests/header_maps.rs`, over the common headers it tries.
pub const JOINED_REQUEST_HEADERS: &[&str] = &[
    "accept",
    "accept-encoding",
    "authorization",
    "cache-control",
    "content-encoding",
    "content-type",
    "grpc-accept-encoding",
    "grpc-timeout",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "origin",
    "pragma",
    "referer",
    "user-agent",
    "via",
    "x-client-trace-id",
    "x-forwarded-for",
    "x-forwarded-host",
];

/// The same for response headers.
pub const JOINED_RESPONSE_HEADERS: &[&str] = &[
    "access-control-allow-headers",
    "access-control-allow-methods",
    "access-control-allow-origin",
    "access-control-expose-headers",
    "age",
    "cache-control",
    "content-encoding",
    "content-type",
    "etag",
    "expires",
    "last-modified",
    "location",
    "vary",
    "via",
];

/// Where one entry's name and value are: `names[name_at..name_at + name]` and
/// `values[value_at..value_at + value]`. Entries are in buffer order (offsets grow with the
/// index).
#[derive(Clone, Copy)]
struct Entry {
    name_at: usize,
    name: usize,
    value_at: usize,
    value: usize,
}

impl Entry {
    fn name<'a>(&self, names: &'a [u8]) -> &'a [u8] {
        &names[self.name_at..self.name_at + self.name]
    }

    fn value<'a>(&self, values: &'a [u8]) -> &'a [u8] {
        &values[self.value_at..self.value_at + self.value]
    }
}

impl PartialEq for HeaderMap {
    fn eq(&self, other: &HeaderMap) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for HeaderMap {}

impl std::fmt::Debug for HeaderMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderMap")
            .field("entries", &self.iter().collect::<Vec<_>>())
            .finish()
    }
}

impl HeaderMap {
    /// An empty map.
    pub fn new() -> HeaderMap {
        HeaderMap::default()
    }

    /// A map from `(name, value)` pairs (names are lower-cased).
    pub fn from_pairs<K: AsRef<str>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.extend_from_pairs(pairs);
        m
    }

    /// Append `(name, value)` pairs (names are lower-cased), sizing the storage once.
    pub fn extend_from_pairs<K: AsRef<str>, V: AsRef<[u8]>>(&mut self, pairs: &[(K, V)]) {
        let (names, values) = pairs.iter().fold((0, 0), |(n, v), (name, value)| {
            (n + name.as_ref().len(), v + value.as_ref().len())
        });
        self.entries.reserve(pairs.len());
        self.names.reserve(names);
        self.values.reserve(values);
        let from = self.names.len();
        for (k, v) in pairs {
            self.push(k.as_ref().as_bytes(), v.as_ref());
        }
        // Lower-casing every new name at once is lower-casing each (see `add`).
        lower_case(&mut self.names[from..]);
    }

    /// Remove every entry, keeping the storage for reuse.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.names.clear();
        self.values.clear();
    }

    /// Bytes of storage held (for callers that pool maps and drop oversized ones).
    pub(crate) fn capacity(&self) -> usize {
        self.names.capacity()
            + self.values.capacity()
            + self.entries.capacity() * std::mem::size_of::<Entry>()
    }

    /// Number of entries (a repeated name counts each time).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The first value of `name` as text (lossy), if present.
    pub fn get(&self, name: &str) -> Option<String> {
        self.get_bytes(name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// The first value of `name`, if present.
    pub fn get_bytes(&self, name: &str) -> Option<&[u8]> {
        self.entries
            .iter()
            .find(|e| e.name(&self.names).eq_ignore_ascii_case(name.as_bytes()))
            .map(|e| e.value(&self.values))
    }

    /// Every value of `name`, in order, as text (lossy).
    pub fn get_all(&self, name: &str) -> Vec<String> {
        self.entries
            .iter()
            .filter(|e| e.name(&self.names).eq_ignore_ascii_case(name.as_bytes()))
            .map(|e| String::from_utf8_lossy(e.value(&self.values)).into_owned())
            .collect()
    }

    /// Whether `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.get_bytes(name).is_some()
    }

    /// Append a value (Envoy's `addCopy`).
    pub fn add(&mut self, name: &str, value: impl AsRef<[u8]>) {
        let from = self.names.len();
        self.push(name.as_bytes(), value.as_ref());
        lower_case(&mut self.names[from..]);
    }

    /// Envoy's `addCopy`: append a value, except that a name in `joined` (Envoy's inline
    /// headers of this map, [`JOINED_REQUEST_HEADERS`] or [`JOINED_RESPONSE_HEADERS`]) already
    /// present gets the value appended to its first value after a comma, where it stands.
    pub fn add_or_join(&mut self, name: &str, value: impl AsRef<[u8]>, joined: &[&str]) {
        let value = value.as_ref();
        if joined.iter().any(|j| j.eq_ignore_ascii_case(name))
            && let Some(i) = self
                .entries
                .iter()
                .position(|e| e.name(&self.names).eq_ignore_ascii_case(name.as_bytes()))
        {
            let e = &self.entries[i];
            let mut v = self.values[e.value_at..e.value_at + e.value].to_vec();
            v.push(b',');
            v.extend_from_slice(value);
            // The old bytes stay behind in the value buffer; maps are short-lived.
            let at = self.values.len();
            self.values.extend_from_slice(&v);
            let e = &mut self.entries[i];
            e.value_at = at;
            e.value = v.len();
            return;
        }
        self.add(name, value);
    }

    /// Append an entry as it is (the caller lower-cases the name), inlined into the loop of
    /// `extend_from_pairs`: a map of a stream's headers is built for every stream.
    #[inline(always)]
    fn push(&mut self, name: &[u8], value: &[u8]) {
        self.entries.push(Entry {
            name_at: self.names.len(),
            name: name.len(),
            value_at: self.values.len(),
            value: value.len(),
        });
        self.names.extend_from_slice(name);
        self.values.extend_from_slice(value);
    }

    /// Replace every value of `name` with one value, at the end of the map (Envoy 1.40's
    /// `setCopy`: remove, then add).
    pub fn set(&mut self, name: &str, value: impl AsRef<[u8]>) {
        self.remove(name);
        self.add(name, value);
    }

    /// Remove every value of `name`.
    pub fn remove(&mut self, name: &str) {
        let name = name.as_bytes();
        let (names, values) = (&mut self.names, &mut self.values);
        let (mut names_end, mut values_end) = (0, 0);
        // Entries are in buffer order, so each kept one moves down (or stays) without
        // overwriting one not yet visited.
        self.entries.retain_mut(|e| {
            if e.name(names).eq_ignore_ascii_case(name) {
                return false;
            }
            names.copy_within(e.name_at..e.name_at + e.name, names_end);
            e.name_at = names_end;
            names_end += e.name;
            values.copy_within(e.value_at..e.value_at + e.value, values_end);
            e.value_at = values_end;
            values_end += e.value;
            true
        });
        names.truncate(names_end);
        values.truncate(values_end);
    }

    /// The entries, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> + Clone {
        self.entries.iter().map(|e| {
            // Always UTF-8 (see `add`); the fallback is never taken.
            let name = std::str::from_utf8(e.name(&self.names)).unwrap_or_default();
            (name, e.value(&self.values))
        })
    }

    /// The entries as text pairs (values lossy), for assertions.
    pub fn to_pairs(&self) -> Vec<(String, String)> {
        self.iter()
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v).into_owned()))
            .collect()
    }

    /// Size in bytes as Envoy's `byteSize` counts it: names plus values.
    pub fn byte_size(&self) -> usize {
        // The buffers hold exactly the entries' names and values (`remove` compacts them).
        self.names.len() + self.values.len()
    }

    /// The pairs serialization.
    pub fn serialize(&self) -> Vec<u8> {
        serialize_pairs(self.iter())
    }

    /// Parse the pairs serialization; `None` when it is malformed.
    pub fn deserialize(bytes: &[u8]) -> Option<HeaderMap> {
        let pairs = deserialize_pairs(bytes)?;
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.add(std::str::from_utf8(k).ok()?, v);
        }
        Some(m)
    }
}

/// Lower-case the ASCII letters of `names` (names come in as `&str`, and lower-casing ASCII keeps
/// them UTF-8, see `iter`). Most names are lower-case already: they are only checked.
#[inline(always)]
fn lower_case(names: &mut [u8]) {
    if has_ascii_uppercase(names) {
        names.make_ascii_lowercase();
    }
}

/// Whether `s` has a byte in `A..=Z`. Eight bytes at a time: header names are checked on every
/// header of every stream, and a byte-at-a-time scan was the largest part of building a map.
fn has_ascii_uppercase(s: &[u8]) -> bool {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = LO * 0x80;
    // Per byte: the high bit says whether it is in `A..=Z`. The low seven bits plus 0x3f (or
    // 0x25) carry into the high bit exactly when they are >= 'A' (or > 'Z'), and never into the
    // next byte; bytes with the high bit set (UTF-8 beyond ASCII) are masked out.
    fn upper(w: u64) -> u64 {
        let low = w & !HI;
        let at_least_a = low + LO * u64::from(0x80 - b'A');
        let above_z = low + LO * u64::from(0x80 - b'Z' - 1);
        at_least_a & !above_z & !w & HI
    }
    let (words, rest) = s.as_chunks::<8>();
    let mut found = 0;
    for w in words {
        found |= upper(u64::from_le_bytes(*w));
    }
    if !rest.is_empty() {
        // The last eight bytes again when there are that many (checking a byte twice changes
        // nothing), else the few bytes there are.
        match s.last_chunk::<8>() {
            Some(w) => found |= upper(u64::from_le_bytes(*w)),
            None => return rest.iter().any(u8::is_ascii_uppercase),
        }
    }
    found != 0
}

/// Serialize `(key, value)` pairs in the proxy-wasm pairs format.
pub fn serialize_pairs<'a>(pairs: impl Iterator<Item = (&'a str, &'a [u8])> + Clone) -> Vec<u8> {
    let (count, data) = pairs.clone().fold((0usize, 0usize), |(n, d), (k, v)| {
        (n + 1, d + k.len() + v.len() + 2)
    });
    let mut out = Vec::with_capacity(4 + count * 8 + data);
    out.extend_from_slice(&(count as u32).to_le_bytes());
    for (k, v) in pairs.clone() {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// Parse the pairs format into borrowed `(key, value)` slices; `None` when malformed.
pub fn deserialize_pairs(bytes: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    let word = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let count = word(0)?;
    let mut sizes = Vec::with_capacity(count.min(1024));
    let mut at = 4;
    for _ in 0..count {
        sizes.push((word(at)?, word(at + 4)?));
        at += 8;
    }
    let mut out = Vec::with_capacity(sizes.len());
    for (klen, vlen) in sizes {
        let k = bytes.get(at..at + klen)?;
        at += klen;
        if bytes.get(at) != Some(&0) {
            return None;
        }
        at += 1;
        let v = bytes.get(at..at + vlen)?;
        at += vlen;
        if bytes.get(at) != Some(&0) {
            return None;
        }
        at += 1;
        out.push((k, v));
    }
    Some(out)
}

#[cfg(test)]
mod tests {

    #[test]
    fn an_inline_header_joins_where_it_stands_and_others_repeat() {
        let mut m = HeaderMap::from_pairs(&[("vary", "accept"), ("content-length", "0")]);
        m.add_or_join("Vary", "origin", JOINED_RESPONSE_HEADERS);
        m.add_or_join("x-up", "1", JOINED_RESPONSE_HEADERS);
        m.add_or_join("x-up", "2", JOINED_RESPONSE_HEADERS);
        m.add_or_join("etag", "e", JOINED_RESPONSE_HEADERS);
        assert_eq!(
            m.to_pairs(),
            [
                ("vary".to_string(), "accept,origin".to_string()),
                ("content-length".to_string(), "0".to_string()),
                ("x-up".to_string(), "1".to_string()),
                ("x-up".to_string(), "2".to_string()),
                ("etag".to_string(), "e".to_string()),
            ]
        );
    }

    use super::*;

    #[test]
    fn pairs_round_trip_byte_for_byte() {
        let h = HeaderMap::from_pairs(&[("a", "1"), ("bc", "")]);
        let b = h.serialize();
        assert_eq!(
            b,
            [
                2, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, b'a', 0, b'1', 0, b'b',
                b'c', 0, 0
            ]
        );
        assert_eq!(HeaderMap::deserialize(&b).unwrap(), h);
    }

    #[test]
    fn malformed_pairs_are_refused() {
        assert!(deserialize_pairs(&[1, 0, 0, 0]).is_none());
        assert!(deserialize_pairs(&[1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, b'a', 1, 0]).is_none());
        assert_eq!(
            deserialize_pairs(&[]).unwrap(),
            Vec::<(&[u8], &[u8])>::new()
        );
    }

    #[test]
    fn upper_case_is_found_at_any_position_and_length() {
        for len in 0..20 {
            let lower = "abcdefghijklmnopqrstuvwxyz:-0@[`{~"
                .chars()
                .cycle()
                .take(len)
                .collect::<String>();
            assert!(!has_ascii_uppercase(lower.as_bytes()), "{lower}");
            for at in 0..len {
                for upper in ['A', 'M', 'Z'] {
                    let mut name = lower.clone().into_bytes();
                    name[at] = upper as u8;
                    assert!(has_ascii_uppercase(&name), "{upper} at {at} of {len}");
                }
            }
        }
        // Bytes of UTF-8 beyond ASCII are never upper-case letters, whatever their low bits.
        assert!(!has_ascii_uppercase("é-ÀÉ-ŽĀ".as_bytes()));
        for b in 0..=255u8 {
            assert_eq!(has_ascii_uppercase(&[b]), b.is_ascii_uppercase(), "{b}");
            assert_eq!(has_ascii_uppercase(&[b; 9]), b.is_ascii_uppercase(), "{b}");
        }
        let mut h = HeaderMap::new();
        h.add("X-Mixed-Case-Header-Name", "V");
        h.add("x-lower", "W");
        h.add("ÀB", "X");
        let expected: Vec<(String, String)> = vec![
            ("x-mixed-case-header-name".into(), "V".into()),
            ("x-lower".into(), "W".into()),
            ("Àb".into(), "X".into()),
        ];
        assert_eq!(h.to_pairs(), expected);
        // A batch lower-cases exactly as one name at a time; values keep their case.
        let batch = HeaderMap::from_pairs(&[
            ("X-Mixed-Case-Header-Name", "V"),
            ("x-lower", "W"),
            ("ÀB", "X"),
        ]);
        assert_eq!(batch.to_pairs(), expected);
        assert_eq!(batch, h);
        let mut m = HeaderMap::from_pairs(&[("a", "Value"), ("B", "2"), ("a", "x"), ("c", "3")]);
        m.remove("A");
        assert_eq!(
            m.to_pairs(),
            [("b".into(), "2".into()), ("c".into(), "3".into())]
        );
        assert_eq!(m.byte_size(), 4);
        m.extend_from_pairs(&[("D", "4")]);
        assert_eq!(m.get("d").as_deref(), Some("4"));
        assert_eq!(m.get_all("B"), ["2"]);
    }

    #[test]
    fn set_replaces_all_values_at_the_end() {
        // Envoy 1.40's setCopy removes every value, then adds one.
        let mut h = HeaderMap::from_pairs(&[("x", "1"), ("y", "2"), ("x", "3")]);
        h.set("X", "9");
        assert_eq!(
            h.to_pairs(),
            [("y".into(), "2".into()), ("x".into(), "9".into())]
        );
        h.remove("y");
        h.set("z", "new");
        assert_eq!(h.len(), 2);
        assert_eq!(h.byte_size(), 1 + 1 + 1 + 3);
    }
}
