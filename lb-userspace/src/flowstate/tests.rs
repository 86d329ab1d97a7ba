use lb_common::{FAMILY_V4, PROTO_TCP};

use super::*;

fn packed(owner: u32, previous: u32) -> u32 {
    Slot { owner, previous }.pack()
}

#[test]
fn a_first_table_is_stateless() {
    let m = merge(None, &[1, 2, 3]);
    assert_eq!(m.slots, vec![1, 2, 3]);
    assert!(m.moved.is_empty() && !m.carried_over);
}

#[test]
fn a_moved_slot_remembers_its_owner_and_keeps_the_oldest() {
    let m = merge(Some(&[1, 2, packed(3, 1)]), &[2, 2, 1]);
    assert_eq!(m.slots, vec![packed(2, 1), 2, packed(1, 1)]);
    assert_eq!(m.moved, vec![0, 2]);
    assert!(m.carried_over);
    // Unchanged owner: a changed slot stays changed, a stateless one stateless.
    let m = merge(Some(&[packed(2, 1), 2]), &[2, 2]);
    assert_eq!(m.slots, vec![packed(2, 1), 2]);
    assert!(m.moved.is_empty());
}

#[test]
fn a_table_of_another_size_starts_stateless() {
    let m = merge(Some(&[1, 2]), &[2, 1, 1]);
    assert_eq!(m.slots, vec![2, 1, 1]);
    assert!(!m.carried_over);
}

fn vip() -> VipKey {
    let mut addr = [0; 16];
    addr[..4].copy_from_slice(&[198, 18, 0, 10]);
    VipKey {
        addr,
        port_be: 80u16.to_be(),
        proto: PROTO_TCP,
        family: FAMILY_V4,
    }
}

fn flow(port: u16) -> FlowKey {
    let mut src = [0; 16];
    src[..4].copy_from_slice(&[198, 18, 1, 2]);
    FlowKey {
        src,
        dst: vip().addr,
        sport_be: port.to_be(),
        dport_be: 80u16.to_be(),
        proto: PROTO_TCP,
        family: FAMILY_V4,
        _pad: [0; 2],
    }
}

fn entry(backend_id: u32, last_seen_ns: u64) -> FlowValue {
    FlowValue {
        backend_id,
        generation: 2,
        last_seen_ns,
    }
}

/// Slot of `flow(port)` in a table of `size`.
fn slot_of(port: u16, size: u32) -> u32 {
    table_slot(flow_hash(&flow(port), 0), size)
}

#[test]
fn a_changed_slot_clears_once_its_old_flows_are_idle() {
    const S: u64 = 1_000_000_000;
    let size = 7;
    let slot = slot_of(1000, size);
    let mut slots = vec![1; size as usize];
    slots[slot as usize] = packed(1, 2);
    let table = || {
        vec![LiveTable {
            vip_id: 1,
            key: vip(),
            slots: slots.clone(),
        }]
    };
    let mut changes = SlotChanges::default();
    changes.mark(1, &[slot], 100 * S);
    // A flow on the previous owner, seen 5 s ago, holds the slot past the idle time.
    let old = (flow(1000), entry(2, 195 * S));
    let sweep = plan_sweep([old], &table(), 0, 200 * S, 10 * S, &mut changes);
    assert_eq!((sweep.entries, sweep.changed), (1, 1));
    assert!(sweep.clear.is_empty() && sweep.delete.is_empty());
    // Idle for 11 s: deleted, and the slot clears. An entry naming the owner does not
    // hold it.
    let old = (flow(1000), entry(2, 189 * S));
    let mut other = 1001;
    while slot_of(other, size) != slot {
        other += 1;
    }
    let new = (flow(other), entry(1, 199 * S));
    let sweep = plan_sweep([old, new], &table(), 0, 200 * S, 10 * S, &mut changes);
    assert_eq!(sweep.delete, vec![flow(1000)]);
    assert_eq!(sweep.clear, vec![(1, slot, packed(1, 2))]);
    assert_eq!(sweep.changed, 0);
}

#[test]
fn a_slot_changed_recently_waits_even_without_entries() {
    const S: u64 = 1_000_000_000;
    let table = vec![LiveTable {
        vip_id: 1,
        key: vip(),
        slots: vec![packed(1, 2), 1],
    }];
    let mut changes = SlotChanges::default();
    changes.mark(1, &[0], 195 * S);
    let sweep = plan_sweep([], &table, 0, 200 * S, 10 * S, &mut changes);
    assert_eq!((sweep.clear.len(), sweep.changed), (0, 1));
    // A changed slot found after a restart counts from its first sweep.
    let mut fresh = SlotChanges::default();
    let sweep = plan_sweep([], &table, 0, 200 * S, 10 * S, &mut fresh);
    assert_eq!(sweep.changed, 1);
    let sweep = plan_sweep([], &table, 0, 210 * S, 10 * S, &mut fresh);
    assert_eq!(sweep.clear, vec![(1, 0, packed(1, 2))]);
}

#[test]
fn entries_of_stateless_slots_and_unknown_vips_are_deleted() {
    let table = vec![LiveTable {
        vip_id: 1,
        key: vip(),
        slots: vec![1; 3],
    }];
    let mut elsewhere = flow(5);
    elsewhere.dport_be = 81u16.to_be();
    let sweep = plan_sweep(
        [(flow(5), entry(1, 0)), (elsewhere, entry(1, 0))],
        &table,
        0,
        1,
        10,
        &mut SlotChanges::default(),
    );
    assert_eq!(sweep.delete, vec![flow(5), elsewhere]);
}
