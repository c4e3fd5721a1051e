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
/// Storage is one byte buffer (each entry's name then value, in entry order) and a list of
/// offsets into it, so a map costs two allocations however many headers it holds, and none when
/// [`HeaderMap::clear`]ed and refilled: the harness reuses maps across streams.
#[derive(Clone, Default)]
pub struct HeaderMap {
    entries: Vec<Entry>,
    bytes: Vec<u8>,
}

/// Where one entry's name and value are in `bytes`: name at `at..at + name`, value right after.
/// Entries are in buffer order (`at` grows with the index).
#[derive(Clone, Copy)]
struct Entry {
    at: usize,
    name: usize,
    value: usize,
}

impl Entry {
    fn name<'a>(&self, bytes: &'a [u8]) -> &'a [u8] {
        &bytes[self.at..self.at + self.name]
    }

    fn value<'a>(&self, bytes: &'a [u8]) -> &'a [u8] {
        let from = self.at + self.name;
        &bytes[from..from + self.value]
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
        let size: usize = pairs
            .iter()
            .map(|(k, v)| k.as_ref().len() + v.as_ref().len())
            .sum();
        self.entries.reserve(pairs.len());
        self.bytes.reserve(size);
        for (k, v) in pairs {
            self.push(k.as_ref(), v.as_ref());
        }
    }

    /// Remove every entry, keeping the storage for reuse.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes.clear();
    }

    /// Bytes of storage held (for callers that pool maps and drop oversized ones).
    pub(crate) fn capacity(&self) -> usize {
        self.bytes.capacity() + self.entries.capacity() * std::mem::size_of::<Entry>()
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
            .find(|e| e.name(&self.bytes).eq_ignore_ascii_case(name.as_bytes()))
            .map(|e| e.value(&self.bytes))
    }

    /// Every value of `name`, in order, as text (lossy).
    pub fn get_all(&self, name: &str) -> Vec<String> {
        self.entries
            .iter()
            .filter(|e| e.name(&self.bytes).eq_ignore_ascii_case(name.as_bytes()))
            .map(|e| String::from_utf8_lossy(e.value(&self.bytes)).into_owned())
            .collect()
    }

    /// Whether `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.get_bytes(name).is_some()
    }

    /// Append a value (Envoy's `addCopy`).
    pub fn add(&mut self, name: &str, value: impl AsRef<[u8]>) {
        self.push(name, value.as_ref());
    }

    /// `add`, inlined into the loop of `extend_from_pairs`: a map of a stream's headers is built
    /// for every stream, and a call per header was a measurable part of it.
    #[inline(always)]
    fn push(&mut self, name: &str, value: &[u8]) {
        let at = self.bytes.len();
        // Names come in as `&str` and lower-casing ASCII keeps them UTF-8 (see `iter`). Most
        // names are lower-case already: they are copied as they are, and only a name with an
        // upper-case letter is lower-cased in place.
        self.bytes.extend_from_slice(name.as_bytes());
        if has_ascii_uppercase(name.as_bytes()) {
            self.bytes[at..].make_ascii_lowercase();
        }
        self.bytes.extend_from_slice(value);
        self.entries.push(Entry {
            at,
            name: name.len(),
            value: value.len(),
        });
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
        let bytes = &mut self.bytes;
        let mut end = 0;
        // Entries are in buffer order, so each kept one moves down (or stays) without
        // overwriting one not yet visited.
        self.entries.retain_mut(|e| {
            if e.name(bytes).eq_ignore_ascii_case(name) {
                return false;
            }
            let len = e.name + e.value;
            bytes.copy_within(e.at..e.at + len, end);
            e.at = end;
            end += len;
            true
        });
        bytes.truncate(end);
    }

    /// The entries, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> + Clone {
        self.entries.iter().map(|e| {
            // Always UTF-8 (see `add`); the fallback is never taken.
            let name = std::str::from_utf8(e.name(&self.bytes)).unwrap_or_default();
            (name, e.value(&self.bytes))
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
        self.entries.iter().map(|e| e.name + e.value).sum()
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

/// Whether `s` has a byte in `A..=Z`. Eight bytes at a time: header names are checked on every
/// header of every stream, and a byte-at-a-time scan was the largest part of building a map.
#[inline(always)]
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
    let n = s.len();
    let word = |at: usize| s.get(at..at + 8).and_then(|w| w.first_chunk::<8>());
    let half = |at: usize| s.get(at..at + 4).and_then(|w| w.first_chunk::<4>());
    let mut found = 0;
    if n >= 8 {
        let (words, _) = s.as_chunks::<8>();
        for w in words {
            found |= upper(u64::from_le_bytes(*w));
        }
        // The last eight bytes again (checking a byte twice changes nothing).
        if let Some(w) = word(n - 8) {
            found |= upper(u64::from_le_bytes(*w));
        }
    } else if let (Some(a), Some(b)) = (half(0), half(n.saturating_sub(4))) {
        // 4 to 7 bytes: the first four and the last four, overlapping.
        found = upper(u64::from(u32::from_le_bytes(*a)) | u64::from(u32::from_le_bytes(*b)) << 32);
    } else if n > 0 {
        // 1 to 3 bytes: first, middle and last cover them all.
        let w = u64::from(s[0]) | u64::from(s[n / 2]) << 8 | u64::from(s[n - 1]) << 16;
        found = upper(w);
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
        assert_eq!(
            h.to_pairs(),
            [
                ("x-mixed-case-header-name".into(), "V".into()),
                ("x-lower".into(), "W".into())
            ]
        );
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
