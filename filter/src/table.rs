//! The table of live HTTP contexts, by context id: open addressing with linear probing and
//! backward-shift deletion, no hashing.
//!
//! The host numbers contexts with consecutive integers, so a context id modulo the capacity
//! already spreads the live ones evenly; a lookup is an index and a compare, and opening or
//! closing a stream allocates nothing once the table has grown to the worker's concurrency.

use alloc::vec::Vec;

/// Context id to `V`.
pub struct Table<V> {
    slots: Vec<Option<(u32, V)>>,
    len: usize,
}

impl<V> Table<V> {
    /// An empty table (allocates on the first insert).
    pub const fn new() -> Table<V> {
        Table {
            slots: Vec::new(),
            len: 0,
        }
    }

    /// How many entries the table holds.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    fn home(&self, key: u32) -> usize {
        key as usize & (self.slots.len() - 1)
    }

    fn next(&self, i: usize) -> usize {
        (i + 1) & (self.slots.len() - 1)
    }

    fn find(&self, key: u32) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let mut i = self.home(key);
        loop {
            match &self.slots[i] {
                Some((k, _)) if *k == key => return Some(i),
                Some(_) => i = self.next(i),
                None => return None,
            }
        }
    }

    /// Insert or replace the entry for `key`.
    pub fn insert(&mut self, key: u32, value: V) {
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let mut i = self.home(key);
        loop {
            match &mut self.slots[i] {
                Some((k, v)) if *k == key => {
                    *v = value;
                    return;
                }
                Some(_) => i = self.next(i),
                slot @ None => {
                    *slot = Some((key, value));
                    self.len += 1;
                    return;
                }
            }
        }
    }

    /// The entry for `key`.
    pub fn get_mut(&mut self, key: u32) -> Option<&mut V> {
        let i = self.find(key)?;
        self.slots[i].as_mut().map(|(_, v)| v)
    }

    /// Take the entry for `key` out of the table.
    pub fn remove(&mut self, key: u32) -> Option<V> {
        let mut hole = self.find(key)?;
        let (_, value) = self.slots[hole].take()?;
        self.len -= 1;
        // Move back every entry of the run after the hole that may sit there, so that a probe
        // from any entry's home still reaches it without crossing an empty slot.
        let mask = self.slots.len() - 1;
        let mut j = self.next(hole);
        while let Some((k, _)) = &self.slots[j] {
            let home = self.home(*k);
            if (j.wrapping_sub(home) & mask) >= (j.wrapping_sub(hole) & mask) {
                self.slots[hole] = self.slots[j].take();
                hole = j;
            }
            j = self.next(j);
        }
        Some(value)
    }

    fn grow(&mut self) {
        let capacity = (self.slots.len() * 2).max(16);
        let old = core::mem::replace(&mut self.slots, Vec::with_capacity(capacity));
        self.slots.resize_with(capacity, || None);
        self.len = 0;
        for (k, v) in old.into_iter().flatten() {
            self.insert(k, v);
        }
    }
}

impl<V> Default for Table<V> {
    fn default() -> Table<V> {
        Table::new()
    }
}

#[cfg(test)]
mod tests {
    use super::Table;
    use std::collections::BTreeMap;

    /// Inserts and removes in an order that wraps around the slots and collides, checked against
    /// a BTreeMap after every step.
    #[test]
    fn agrees_with_a_map_under_churn() {
        let mut t = Table::new();
        let mut m = BTreeMap::new();
        let mut x: u32 = 12345;
        for step in 0..20_000u32 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            // Keys from a narrow window (consecutive ids, as a host gives) plus strays that
            // collide modulo the capacity.
            let key = if x.is_multiple_of(4) {
                (x % 8) * 64 + 1
            } else {
                step / 3 + x % 40 + 1
            };
            if x.is_multiple_of(3) {
                assert_eq!(t.remove(key), m.remove(&key), "remove {key} at step {step}");
            } else {
                t.insert(key, step);
                m.insert(key, step);
            }
            assert_eq!(t.len(), m.len());
            for (k, v) in &m {
                assert_eq!(t.get_mut(*k).copied(), Some(*v), "key {k} at step {step}");
            }
        }
        assert_eq!(t.get_mut(999_999), None);
    }

    #[test]
    fn replaces_and_empties() {
        let mut t = Table::new();
        assert_eq!(t.remove(1), None);
        t.insert(1, "a");
        t.insert(1, "b");
        assert_eq!(t.len(), 1);
        assert_eq!(t.get_mut(1).copied(), Some("b"));
        assert_eq!(t.remove(1), Some("b"));
        assert_eq!(t.get_mut(1), None);
        assert_eq!(t.len(), 0);
    }
}
