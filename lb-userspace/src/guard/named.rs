//! A VIP's table by backend name: shares, fingerprint, and how much of one table's
//! traffic another sends elsewhere.

use std::collections::BTreeMap;

/// A VIP's table by backend name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedTable {
    /// Backends in config order; `slots` index into this.
    pub names: Vec<String>,
    pub slots: Vec<u32>,
}

impl NamedTable {
    /// Share of the table owned by each backend, by name.
    pub fn shares(&self) -> BTreeMap<&str, f64> {
        let mut counts = vec![0u64; self.names.len()];
        for &s in &self.slots {
            counts[s as usize] += 1;
        }
        self.names
            .iter()
            .zip(counts)
            .map(|(n, c)| (n.as_str(), c as f64 / self.slots.len() as f64))
            .collect()
    }

    /// FNV-1a over size, names and slots: equal on every host that built the same table.
    pub fn fingerprint(&self) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for &b in bytes {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        };
        eat(&(self.slots.len() as u64).to_le_bytes());
        for n in &self.names {
            eat(n.as_bytes());
            eat(&[0]);
        }
        for s in &self.slots {
            eat(&s.to_le_bytes());
        }
        format!("{h:016x}")
    }

    /// Fraction of flows whose owner differs between `self` and `new`, over all flows and
    /// over each of `self`'s backends' flows. Equal sizes compare slot by slot (exact);
    /// different sizes compare a fixed sample of hash values. One pass, whatever the
    /// number of backends.
    pub fn moved(&self, new: &NamedTable) -> Moved<'_> {
        let new_index: BTreeMap<&str, u32> = new
            .names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i as u32))
            .collect();
        // Owner index in `self` -> the same backend's index in `new`, if it is there.
        let same: Vec<Option<u32>> = self
            .names
            .iter()
            .map(|n| new_index.get(n.as_str()).copied())
            .collect();
        let mut seen = vec![0u64; self.names.len()];
        let mut moved = vec![0u64; self.names.len()];
        let mut count = |old: u32, new: u32| {
            seen[old as usize] += 1;
            moved[old as usize] += u64::from(same[old as usize] != Some(new));
        };
        if self.slots.len() == new.slots.len() {
            for (&old, &new) in self.slots.iter().zip(&new.slots) {
                count(old, new);
            }
        } else {
            let mut x: u32 = 0x9e37_79b9;
            for _ in 0..(1 << 18) {
                // xorshift32: a fixed, host-independent sample of hash values.
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                count(
                    self.slots[x as usize % self.slots.len()],
                    new.slots[x as usize % new.slots.len()],
                );
            }
        }
        let fraction = |m: u64, s: u64| if s == 0 { 0.0 } else { m as f64 / s as f64 };
        Moved {
            all: fraction(moved.iter().sum(), seen.iter().sum()),
            by_backend: self
                .names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.as_str(), fraction(moved[i], seen[i])))
                .collect(),
        }
    }
}

/// How much of a table's traffic another table sends elsewhere.
#[derive(Debug)]
pub struct Moved<'a> {
    /// Fraction of all flows.
    pub all: f64,
    /// Fraction of the flows of each backend of the old table, by name.
    pub by_backend: BTreeMap<&'a str, f64>,
}
