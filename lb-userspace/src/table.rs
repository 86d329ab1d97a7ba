//! Weighted Maglev tables: a pure function from (backend names, weights, table size) to
//! the slot -> backend array the XDP program reads. No BPF in here.
//!
//! Every backend has its own permutation of the slots (offset and skip derived from its
//! name alone, as in Maglev, so the table depends neither on listing order nor on the
//! host). Backend `b` looks at the k-th slot of its permutation at time
//! `-ln(1 - k/size) / weight_b`; the first backend to look at a free slot owns it. Those
//! times are exponentially distributed per slot, so a backend wins a slot with
//! probability `weight / total` (an exponential race), and the owner of a slot is
//! `argmin_b time_b(slot)`: changing one backend's weight rescales only that backend's
//! times, so slots move only to or from that backend, the minimum. Unlike classic Maglev,
//! a backend that finds its slot taken does not retry at once; that retry is what
//! cascades into extra moves. `ln` is computed with IEEE-754 basic operations only
//! (`ln_deterministic`), so every host builds the same bytes.
//!
//! Shares: weights split `size` slots into exact quotas (largest remainder). The race on
//! its own lands each backend within a few standard deviations of its quota; a backend
//! stops claiming once it holds its quota plus a tolerance of 0.3 % of the table
//! (`SOFT_CAP_PER_MILLE`), which in practice binds only for tables of two or three
//! heavy backends. If a backend still ends more than that tolerance below its quota, the
//! table is rebuilt with exact caps. Either way every share is within 0.3 percentage
//! points of its weight share, and slots move beyond the minimum only where a cap binds.
//! A backend of weight 0 never plays. Both are measured by the property tests below and by
//! `cargo xtask bench`.
//!
//! The fallback does happen with many backends of mixed weights: the property tests found
//! a table of 70 backends where the soft race leaves one backend more than the tolerance
//! short (why the race starves that backend is not yet pinned down). Between two
//! exact-cap tables a weight change can move about twice the minimum
//! (`exact_cap_tables_keep_shares_but_move_more`); `Table::exact_caps` says which race a
//! table came from.

use std::{
    cmp::{Ordering, Reverse},
    collections::{BTreeMap, BinaryHeap, binary_heap::PeekMut},
    sync::{Arc, Mutex, PoisonError},
};

use thiserror::Error;

/// Marks a slot no backend owns (only while building; a finished table has none).
const EMPTY: u32 = u32::MAX;

/// One backend as the table builder sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Weighted<'a> {
    /// Stable name: it alone determines the backend's permutation.
    pub name: &'a str,
    pub weight: u32,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TableError {
    #[error("table size {size} is not a prime (try 65537, 131071 or 262139)")]
    SizeNotPrime { size: u32 },
    #[error("table size {size} is out of range {min}..={max}")]
    SizeOutOfRange { size: u32, min: u32, max: u32 },
    #[error("total weight is 0: at least one backend needs a weight above 0")]
    NoWeight,
    #[error("backend name {name:?} appears twice")]
    DuplicateName { name: String },
}

/// Smallest table size accepted: enough slots for shares to be meaningful.
pub const MIN_TABLE_SIZE: u32 = 251;

/// A built table: `slots[i]` is the index (into the builder's input) of slot i's owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    slots: Vec<u32>,
    backends: usize,
    exact_caps: bool,
}

impl Table {
    /// A table from its slots (each an index into an input of `backends` backends); for
    /// builders other than `build`, such as the guardrail tests' deliberately flawed one.
    pub fn from_slots(slots: Vec<u32>, backends: usize) -> Table {
        Table {
            slots,
            backends,
            exact_caps: false,
        }
    }

    /// Whether the table came from the exact-cap race (see the module notes): `build`'s
    /// fallback, or a table below 334 slots, whose 0.3 % tolerance rounds to 0. A weight
    /// change between such tables can move more slots than the minimum.
    pub fn exact_caps(&self) -> bool {
        self.exact_caps
    }

    /// Slot -> index into the input slice.
    pub fn slots(&self) -> &[u32] {
        &self.slots
    }

    /// Number of slots.
    pub fn size(&self) -> u32 {
        // A table is built from a u32 size, so the length always fits.
        self.slots.len() as u32
    }

    /// How many slots each input backend owns, in input order.
    pub fn slot_counts(&self) -> Vec<u32> {
        let mut counts = vec![0u32; self.backends];
        for &owner in &self.slots {
            counts[owner as usize] += 1;
        }
        counts
    }
}

/// Builds the table for `backends` with `size` slots.
pub fn build(backends: &[Weighted<'_>], size: u32) -> Result<Table, TableError> {
    check_size(size)?;
    let mut seen = BTreeMap::new();
    for b in backends {
        if seen.insert(b.name, ()).is_some() {
            return Err(TableError::DuplicateName {
                name: b.name.to_string(),
            });
        }
    }
    // Turn order is by name, not by input order, so listing order never matters.
    let mut order: Vec<usize> = (0..backends.len())
        .filter(|&i| backends[i].weight > 0)
        .collect();
    order.sort_by(|&a, &b| backends[a].name.cmp(backends[b].name));
    if order.is_empty() {
        return Err(TableError::NoWeight);
    }

    let quotas = quotas(backends, &order, size);
    let tolerance = size * SOFT_CAP_PER_MILLE / 1000;
    let soft = race(backends, &order, &quotas, size, tolerance);
    let counts = soft.slot_counts();
    let short = order
        .iter()
        .enumerate()
        .any(|(rank, &i)| counts[i] + tolerance < quotas[rank]);
    if short {
        Ok(race(backends, &order, &quotas, size, 0))
    } else {
        Ok(soft)
    }
}

/// Slots above its quota a backend may take in the first build, per mille of the table.
pub const SOFT_CAP_PER_MILLE: u32 = 3;

/// How far a built table's share may be from the weight share: the soft cap, as a fraction.
pub const SHARE_TOLERANCE: f64 = SOFT_CAP_PER_MILLE as f64 / 1000.0;

/// Runs the race; each backend stops at `quota + tolerance` slots.
///
/// A look at a slot that is already taken changes nothing, and a taken slot stays taken,
/// so a backend's next event is scheduled straight at the next slot of its permutation
/// that is free now. The outcome is the same as looking at every slot in turn, but the
/// event queue only sees looks that can still win, about `size` of them instead of
/// `size * ln(size)`.
fn race(
    backends: &[Weighted<'_>],
    order: &[usize],
    quotas: &[u32],
    size: u32,
    tolerance: u32,
) -> Table {
    let m = size as usize;
    let times = unit_times(size);
    let weights: Vec<f64> = order
        .iter()
        .map(|&i| f64::from(backends[i].weight))
        .collect();
    let mut placed = vec![0u32; order.len()];
    let mut slots = vec![EMPTY; m];
    let mut filled = 0usize;
    let mut events: BinaryHeap<Reverse<Event>> = BinaryHeap::with_capacity(order.len());
    let mut walks = Vec::with_capacity(order.len());
    for (rank, &i) in order.iter().enumerate() {
        let h = name_hash(backends[i].name);
        let m = m as u64;
        // Both are below `size`, a u32.
        walks.push(Walk {
            step: 0,
            slot: (splitmix(h ^ 0x6f66_6673_6574) % m) as usize,
            skip: (splitmix(h ^ 0x736b_6970) % (m - 1) + 1) as usize,
        });
        if quotas[rank] > 0 {
            events.push(Reverse(Event { time: 0.0, rank }));
        }
    }
    while filled < m {
        // The heap is non-empty while slots are free: a backend below its cap that has
        // walked its whole permutation has seen every slot taken, i.e. filled == m, and the
        // caps add up to at least m.
        let Some(mut next) = events.peek_mut() else {
            break;
        };
        let rank = next.0.rank;
        let walk = &mut walks[rank];
        if slots[walk.slot] == EMPTY {
            // Input indices come from a slice the config layer caps far below u32::MAX.
            slots[walk.slot] = order[rank] as u32;
            placed[rank] += 1;
            filled += 1;
        }
        if placed[rank] < quotas[rank] + tolerance && walk.next_free(&slots) {
            // Rescheduling the top in place: one sift instead of a pop and a push.
            next.0.time = times[walk.step] / weights[rank];
        } else {
            PeekMut::pop(next);
        }
    }
    Table {
        slots,
        backends: backends.len(),
        exact_caps: tolerance == 0,
    }
}

/// Where one backend is in its permutation of the slots: `slot = offset + step * skip`
/// (mod size), kept incrementally.
struct Walk {
    step: usize,
    slot: usize,
    skip: usize,
}

impl Walk {
    /// Moves to the next step whose slot is free; false when the permutation runs out.
    fn next_free(&mut self, slots: &[u32]) -> bool {
        let m = slots.len();
        loop {
            self.step += 1;
            if self.step >= m {
                return false;
            }
            self.slot += self.skip;
            if self.slot >= m {
                self.slot -= m;
            }
            if slots[self.slot] == EMPTY {
                return true;
            }
        }
    }
}

/// Backend `rank`'s next look happens at `time`.
#[derive(Clone, Copy, Debug)]
struct Event {
    time: f64,
    rank: usize,
}

impl Ord for Event {
    fn cmp(&self, other: &Self) -> Ordering {
        // Ties (equal times) go to the lower rank (name order): fully determined.
        self.time
            .total_cmp(&other.time)
            .then(self.rank.cmp(&other.rank))
    }
}

impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Event {}

/// `-ln(1 - k/size)` for every step k: the unit-weight time of a backend's k-th look.
/// Computing them costs more than a whole race, and every table of a config has the same
/// size, so the last size's times are kept.
fn unit_times(size: u32) -> Arc<[f64]> {
    static LAST: Mutex<Option<(u32, Arc<[f64]>)>> = Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((s, times)) = last.as_ref()
        && *s == size
    {
        return Arc::clone(times);
    }
    let m = f64::from(size);
    let times: Arc<[f64]> = (0..size)
        .map(|k| ln_deterministic(m / (m - f64::from(k))))
        .collect();
    *last = Some((size, Arc::clone(&times)));
    times
}

/// Natural log of `x >= 1` from IEEE-754 basic operations only (correctly rounded on every
/// conforming host, unlike a platform's libm): `x = 2^e * y` with `y` in [1, 2), then
/// `ln y = 2 atanh((y - 1) / (y + 1))` by its series, which converges fast for z <= 1/3.
fn ln_deterministic(x: f64) -> f64 {
    const LN_2: f64 = std::f64::consts::LN_2;
    let mut e = 0.0;
    let mut y = x;
    while y >= 2.0 {
        y /= 2.0;
        e += 1.0;
    }
    let z = (y - 1.0) / (y + 1.0);
    let z2 = z * z;
    let mut term = z;
    let mut sum = 0.0;
    let mut n = 1.0;
    while n < 60.0 {
        sum += term / n;
        term *= z2;
        n += 2.0;
    }
    e * LN_2 + 2.0 * sum
}

/// Each playing backend's exact slot count: `size * weight / total`, rounded by largest
/// remainder (ties to name order), so the counts add up to `size`.
fn quotas(backends: &[Weighted<'_>], order: &[usize], size: u32) -> Vec<u32> {
    let total: u64 = order.iter().map(|&i| u64::from(backends[i].weight)).sum();
    let size = u64::from(size);
    let mut quotas: Vec<u32> = Vec::with_capacity(order.len());
    let mut remainders: Vec<(u64, usize)> = Vec::with_capacity(order.len());
    for (rank, &i) in order.iter().enumerate() {
        let share = size * u64::from(backends[i].weight);
        // share / total <= size, which is a u32.
        quotas.push((share / total) as u32);
        remainders.push((share % total, rank));
    }
    let given: u64 = quotas.iter().map(|&q| u64::from(q)).sum();
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, rank) in remainders.iter().take((size - given) as usize) {
        quotas[rank] += 1;
    }
    quotas
}

/// Checks that `size` is a usable table size.
pub fn check_size(size: u32) -> Result<(), TableError> {
    let max = lb_common::maps::MAX_TABLE_SIZE;
    if !(MIN_TABLE_SIZE..=max).contains(&size) {
        return Err(TableError::SizeOutOfRange {
            size,
            min: MIN_TABLE_SIZE,
            max,
        });
    }
    if !is_prime(size) {
        return Err(TableError::SizeNotPrime { size });
    }
    Ok(())
}

fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u32;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// FNV-1a over the name: stable across hosts, releases and architectures.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// SplitMix64's finaliser: spreads FNV's weak low bits over the whole word.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Slots whose owner (by name) differs between two tables of equal size.
pub fn slots_moved(old: &Table, old_names: &[&str], new: &Table, new_names: &[&str]) -> u32 {
    old.slots
        .iter()
        .zip(&new.slots)
        .filter(|&(&a, &b)| old_names[a as usize] != new_names[b as usize])
        .count() as u32
}

#[cfg(test)]
mod tests;
