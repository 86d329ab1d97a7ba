//! Which table slots need flow state, and when they stop needing it: the pure half of
//! the stateless fast path (`lb_common::Slot`; docs/datapath.md "Flow state").
//!
//! - [`merge`] turns a new table's owners into stored slots. A slot whose owner changes
//!   gets the old owner as its previous owner, so flows older than the change stay where
//!   they are; a slot that is already changed keeps its oldest previous owner (the flows
//!   started in between have entries).
//! - [`plan_sweep`] decides, from the flow table and the live tables, which entries are
//!   idle (deleted) and which changed slots may become stateless again: those changed
//!   at least `idle` ago in which no live entry names a backend other than the owner.
//!   A flow older than the change that has neither sent a packet nor got an entry since
//!   is idle by then, and every other flow of the slot either has an entry naming its
//!   backend or belongs to the owner.

use std::collections::BTreeMap;

use lb_common::{FlowKey, FlowValue, Slot, VipKey, flow_hash, table_slot};

/// A new table's stored slots and the slots whose owner it changed.
#[derive(Debug, PartialEq, Eq)]
pub struct Merged {
    pub slots: Vec<u32>,
    pub moved: Vec<u32>,
    /// Whether the live table's slots were carried over (same size); if not, every
    /// slot starts stateless.
    pub carried_over: bool,
}

/// The stored slots for a table with `owners` replacing the live stored slots `live`
/// (none, or a table of another size: nothing to carry over).
pub fn merge(live: Option<&[u32]>, owners: &[u32]) -> Merged {
    let live = live.filter(|l| l.len() == owners.len());
    let mut moved = Vec::new();
    let slots = owners
        .iter()
        .enumerate()
        .map(|(i, &owner)| {
            let Some(old) = live.map(|l| Slot::unpack(l[i])) else {
                return Slot { owner, previous: 0 }.pack();
            };
            let previous = if old.owner == owner {
                old.previous
            } else {
                moved.push(i as u32);
                match (old.previous, old.owner) {
                    (0, 0) => 0,
                    (0, was) => was,
                    (oldest, _) => oldest,
                }
            };
            Slot { owner, previous }.pack()
        })
        .collect();
    Merged {
        slots,
        moved,
        carried_over: live.is_some(),
    }
}

/// When each changed slot last changed owner (`CLOCK_MONOTONIC` ns), per VIP id.
#[derive(Clone, Debug, Default)]
pub struct SlotChanges(BTreeMap<u32, BTreeMap<u32, u64>>);

impl SlotChanges {
    /// Slots `moved` of VIP `vip_id` changed owner at `now`.
    pub fn mark(&mut self, vip_id: u32, moved: &[u32], now: u64) {
        let vip = self.0.entry(vip_id).or_default();
        for &slot in moved {
            vip.insert(slot, now);
        }
    }

    /// VIP `vip_id`'s table was replaced by one of another size, or removed.
    pub fn forget(&mut self, vip_id: u32) {
        self.0.remove(&vip_id);
    }

    /// When slot `slot` of `vip_id` changed; a changed slot this process never saw
    /// change (it was changed before a restart) counts from `now`.
    fn since(&mut self, vip_id: u32, slot: u32, now: u64) -> u64 {
        *self.0.entry(vip_id).or_default().entry(slot).or_insert(now)
    }

    fn cleared(&mut self, vip_id: u32, slot: u32) {
        if let Some(vip) = self.0.get_mut(&vip_id) {
            vip.remove(&slot);
        }
    }
}

/// A VIP's live table, as the sweep needs it.
pub struct LiveTable {
    pub vip_id: u32,
    pub key: VipKey,
    /// Stored slots.
    pub slots: Vec<u32>,
}

/// What one sweep does.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Entries to delete: idle, of no VIP, or in a stateless slot.
    pub delete: Vec<FlowKey>,
    /// (VIP id, slot, stored value it must still have) to make stateless.
    pub clear: Vec<(u32, u32, u32)>,
    /// Entries the table holds (before the deletions).
    pub entries: usize,
    /// Changed slots after this sweep.
    pub changed: usize,
}

/// Plans a sweep at `now` with entries idle for more than `idle` ns expiring.
pub fn plan_sweep(
    entries: impl IntoIterator<Item = (FlowKey, FlowValue)>,
    tables: &[LiveTable],
    seed: u32,
    now: u64,
    idle: u64,
    changes: &mut SlotChanges,
) -> Sweep {
    let mut sweep = Sweep::default();
    // (table index, slot) of every slot a live entry keeps changed.
    let mut held = std::collections::BTreeSet::new();
    for (key, value) in entries {
        sweep.entries += 1;
        let table = tables.iter().position(|t| t.key.matches(&key));
        let place = table.and_then(|t| {
            let slots = &tables[t].slots;
            let slot = table_slot(flow_hash(&key, seed), slots.len().max(1) as u32);
            Some((t, slot, Slot::unpack(*slots.get(slot as usize)?)))
        });
        match place {
            Some((t, slot, s))
                if s.is_changed() && now.saturating_sub(value.last_seen_ns) <= idle =>
            {
                if value.backend_id != s.owner {
                    held.insert((t, slot));
                }
            }
            _ => sweep.delete.push(key),
        }
    }
    for (t, table) in tables.iter().enumerate() {
        for (slot, &stored) in (0u32..).zip(&table.slots) {
            let s = Slot::unpack(stored);
            if !s.is_changed() {
                continue;
            }
            let since = changes.since(table.vip_id, slot, now);
            if now.saturating_sub(since) >= idle && !held.contains(&(t, slot)) {
                sweep.clear.push((table.vip_id, slot, stored));
                changes.cleared(table.vip_id, slot);
            } else {
                sweep.changed += 1;
            }
        }
    }
    sweep
}

#[cfg(test)]
mod tests;
