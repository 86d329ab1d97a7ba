//! Flow state in changed slots: which packets consult and create flow entries after a
//! table change, the UDP grace window, the sweep that makes a slot stateless again, and
//! the flood guard. Each test changes weights through the real table installer.

use lb_common::{Reason, Slot, flow_hash, table_slot};
use xlb_lab::{
    packet::{ACK, SYN, tcp, udp, v4},
    require_root,
};

use super::setup::{
    C4, SEED, Setup, VIP4, counters, flow_key, forwarded, install, run, setup, setup_with, v4_key,
};

/// Stored slot of `frame`'s flow in VIP `vip`'s live table.
fn slot_of(s: &mut Setup, vip: usize, frame: &xlb_lab::packet::Frame) -> Slot {
    let (_, slots) = s.dp.maps().table_slots(s.vips[vip].id).unwrap();
    let i = table_slot(flow_hash(&flow_key(frame), SEED), slots.len() as u32);
    Slot::unpack(slots[i as usize])
}

fn mac_of(s: &Setup, vip: usize, id: u32) -> [u8; 6] {
    s.vips[vip].backends.iter().find(|b| b.0 == id).unwrap().3
}

/// Installs new weights for VIP `vip` as generation `generation`.
fn change(s: &mut Setup, vip: usize, weights: &[u32], generation: u32) {
    let v = std::mem::replace(
        &mut s.vips[vip],
        super::setup::TestVip {
            key: v4_key("0.0.0.0", 0, 0),
            id: 0,
            backends: vec![],
        },
    );
    install(&mut s.dp, &v, weights, generation);
    s.vips[vip] = v;
}

/// The first `n` client ports from `from` whose TCP flow to VIP 0 lands in a slot
/// matching `want`.
fn ports(s: &mut Setup, from: u16, n: usize, want: impl Fn(Slot) -> bool) -> Vec<u16> {
    (from..u16::MAX)
        .filter(|&p| want(slot_of(s, 0, &v4(C4, VIP4, tcp(p, 80, ACK)))))
        .take(n)
        .collect()
}

#[test]
fn a_changed_slot_keeps_old_flows_and_sends_syns_to_the_new_owner() {
    if !require_root("a_changed_slot_keeps_old_flows_and_sends_syns_to_the_new_owner") {
        return;
    }
    let mut s = setup();
    // Connections opened in generation 1 (stateless: no entries).
    let opened: Vec<u16> = (30000..30400).collect();
    for &p in &opened {
        run(&mut s.dp, &v4(C4, VIP4, tcp(p, 80, SYN)).bytes());
    }
    assert!(s.dp.maps().flows().is_empty());
    let owner_then: Vec<u32> = opened
        .iter()
        .map(|&p| slot_of(&mut s, 0, &v4(C4, VIP4, tcp(p, 80, ACK))).owner)
        .collect();
    change(&mut s, 0, &[6, 1, 1], 2);

    let moved = ports(&mut s, 30000, 1, |slot| slot.is_changed())[0];
    let slot = slot_of(&mut s, 0, &v4(C4, VIP4, tcp(moved, 80, ACK)));
    assert_ne!(slot.owner, slot.previous);
    let before = counters(&mut s.dp);
    // An ACK of a connection older than the change follows the previous owner and is
    // recorded; its next packet finds the entry.
    for _ in 0..2 {
        let ack = v4(C4, VIP4, tcp(moved, 80, ACK)).bytes();
        let (action, out) = run(&mut s.dp, &ack);
        assert_eq!(action, Reason::Forwarded.action());
        assert_eq!(out, forwarded(&ack, mac_of(&s, 0, slot.previous)));
    }
    let key = flow_key(&v4(C4, VIP4, tcp(moved, 80, ACK)));
    let entry = s.dp.maps().flow(&key).unwrap();
    assert_eq!((entry.backend_id, entry.generation), (slot.previous, 2));
    let after = counters(&mut s.dp);
    let vip = s.vips[0].id as usize;
    assert_eq!(
        after.vips[vip].4 - before.vips[vip].4,
        2,
        "stateful packets"
    );
    assert_eq!(
        after.vips[vip].2, before.vips[vip].2,
        "an old flow is no new flow"
    );
    assert_eq!(s.dp.maps().flow_stats().unwrap().inserts, 1);

    // Every connection of generation 1 still reaches its backend, and only those in
    // changed slots got an entry.
    for (&p, &then) in opened.iter().zip(&owner_then) {
        let ack = v4(C4, VIP4, tcp(p, 80, ACK)).bytes();
        assert_eq!(run(&mut s.dp, &ack).1, forwarded(&ack, mac_of(&s, 0, then)));
        let changed = slot_of(&mut s, 0, &v4(C4, VIP4, tcp(p, 80, ACK))).is_changed();
        let key = flow_key(&v4(C4, VIP4, tcp(p, 80, ACK)));
        assert_eq!(s.dp.maps().flow(&key).is_some(), changed, "port {p}");
    }

    // A SYN in a changed slot is a new connection: the new owner, recorded, counted.
    let fresh = ports(&mut s, 31000, 1, |x| {
        x.is_changed() && x.owner != x.previous
    })[0];
    let fresh_slot = slot_of(&mut s, 0, &v4(C4, VIP4, tcp(fresh, 80, SYN)));
    let syn = v4(C4, VIP4, tcp(fresh, 80, SYN)).bytes();
    assert_eq!(
        run(&mut s.dp, &syn).1,
        forwarded(&syn, mac_of(&s, 0, fresh_slot.owner))
    );
    let key = flow_key(&v4(C4, VIP4, tcp(fresh, 80, SYN)));
    assert_eq!(s.dp.maps().flow(&key).unwrap().backend_id, fresh_slot.owner);
    let ack = v4(C4, VIP4, tcp(fresh, 80, ACK)).bytes();
    assert_eq!(
        run(&mut s.dp, &ack).1,
        forwarded(&ack, mac_of(&s, 0, fresh_slot.owner)),
        "the new connection's ACK follows its entry, not the previous owner"
    );

    // A SYN on the old connection's 5-tuple opens a new connection: its entry moves.
    let syn = v4(C4, VIP4, tcp(moved, 80, SYN)).bytes();
    assert_eq!(
        run(&mut s.dp, &syn).1,
        forwarded(&syn, mac_of(&s, 0, slot.owner))
    );
    let entry =
        s.dp.maps()
            .flow(&flow_key(&v4(C4, VIP4, tcp(moved, 80, SYN))));
    assert_eq!(entry.unwrap().backend_id, slot.owner);

    // A second change keeps the oldest previous owner of a slot that is still changed.
    change(&mut s, 0, &[1, 1, 6], 3);
    let again = slot_of(&mut s, 0, &v4(C4, VIP4, tcp(moved, 80, ACK)));
    assert_eq!(again.previous, slot.previous);

    // Back to the first weights: slots whose owner came back are still changed (flows
    // started in between have entries), but an unknown flow there goes to the owner by
    // either rule, so nothing is written for it.
    change(&mut s, 0, &[1, 2, 3], 4);
    let back = ports(&mut s, 50000, 1, |x| {
        x.is_changed() && x.owner == x.previous
    })[0];
    let owner = slot_of(&mut s, 0, &v4(C4, VIP4, tcp(back, 80, ACK))).owner;
    let inserts = s.dp.maps().flow_stats().unwrap().inserts;
    for flags in [SYN, ACK] {
        let frame = v4(C4, VIP4, tcp(back, 80, flags)).bytes();
        assert_eq!(
            run(&mut s.dp, &frame).1,
            forwarded(&frame, mac_of(&s, 0, owner))
        );
    }
    assert!(
        s.dp.maps()
            .flow(&flow_key(&v4(C4, VIP4, tcp(back, 80, ACK))))
            .is_none()
    );
    assert_eq!(s.dp.maps().flow_stats().unwrap().inserts, inserts);
}

#[test]
fn udp_in_a_changed_slot_follows_the_grace_window() {
    if !require_root("udp_in_a_changed_slot_follows_the_grace_window") {
        return;
    }
    let mut s = setup();
    let dns = |p: u16| v4(C4, VIP4, udp(p, 53));
    let udp_slot = |s: &mut Setup, p: u16| slot_of(s, 2, &dns(p));
    change(&mut s, 2, &[1, 0], 2);
    // Within the grace window (30 s by default) an unknown UDP flow is an old one.
    let moved: Vec<u16> = (5000..9000)
        .filter(|&p| udp_slot(&mut s, p).is_changed())
        .take(2)
        .collect();
    let (old, late) = (moved[0], moved[1]);
    let slot = udp_slot(&mut s, old);
    let frame = dns(old).bytes();
    assert_eq!(
        run(&mut s.dp, &frame).1,
        forwarded(&frame, mac_of(&s, 2, slot.previous))
    );
    let entry = s.dp.maps().flow(&flow_key(&dns(old))).unwrap();
    assert_eq!(entry.backend_id, slot.previous);
    // A table installed with no grace: unknown UDP flows are new ones, and go to the
    // owner; the recorded flow stays.
    s.dp.maps().set_udp_grace(0);
    change(&mut s, 2, &[1, 0], 3);
    let slot = udp_slot(&mut s, late);
    assert!(slot.is_changed() && slot.owner != slot.previous);
    let frame = dns(late).bytes();
    assert_eq!(
        run(&mut s.dp, &frame).1,
        forwarded(&frame, mac_of(&s, 2, slot.owner))
    );
    let frame = dns(old).bytes();
    let previous = udp_slot(&mut s, old).previous;
    assert_eq!(
        run(&mut s.dp, &frame).1,
        forwarded(&frame, mac_of(&s, 2, previous))
    );
}

#[test]
fn a_sweep_makes_a_slot_stateless_once_its_old_flows_are_idle() {
    if !require_root("a_sweep_makes_a_slot_stateless_once_its_old_flows_are_idle") {
        return;
    }
    let mut s = setup();
    change(&mut s, 0, &[6, 1, 1], 2);
    let moved = ports(&mut s, 30000, 1, |x| {
        x.is_changed() && x.owner != x.previous
    })[0];
    let slot = slot_of(&mut s, 0, &v4(C4, VIP4, tcp(moved, 80, ACK)));
    let ack = v4(C4, VIP4, tcp(moved, 80, ACK)).bytes();
    run(&mut s.dp, &ack);
    let (_, slots) = s.dp.maps().table_slots(1).unwrap();
    let changed = slots.iter().filter(|&&x| Slot::unpack(x).is_changed());
    assert!(
        changed.count() > 10_000,
        "6:1:1 after 1:2:3 moves many slots"
    );
    // Refused: the old flow is not idle for an hour, so its slot stays changed.
    let sweep = s.dp.maps().sweep_flows(3600 * 1_000_000_000).unwrap();
    assert_eq!((sweep.entries, sweep.deleted, sweep.cleared), (1, 0, 0));
    assert!(slot_of(&mut s, 0, &v4(C4, VIP4, tcp(moved, 80, ACK))).is_changed());
    assert_eq!(
        run(&mut s.dp, &ack).1,
        forwarded(&ack, mac_of(&s, 0, slot.previous))
    );
    // Applied: with no idle time allowed, the entry expires and every changed slot
    // becomes stateless; the flow now follows the owner and writes nothing.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let sweep = s.dp.maps().sweep_flows(0).unwrap();
    assert_eq!((sweep.entries, sweep.deleted, sweep.changed), (1, 1, 0));
    assert!(sweep.cleared > 0);
    let (_, slots) = s.dp.maps().table_slots(1).unwrap();
    assert!(slots.iter().all(|&x| !Slot::unpack(x).is_changed()));
    assert_eq!(
        run(&mut s.dp, &ack).1,
        forwarded(&ack, mac_of(&s, 0, slot.owner))
    );
    assert!(s.dp.maps().flows().is_empty());
}

#[test]
fn the_flood_guard_bounds_new_entries_and_a_full_table_evicts_nothing() {
    if !require_root("the_flood_guard_bounds_new_entries_and_a_full_table_evicts_nothing") {
        return;
    }
    let mut s = setup_with(64);
    change(&mut s, 0, &[6, 1, 1], 2);
    let changed = ports(&mut s, 20000, 200, |x| {
        x.is_changed() && x.owner != x.previous
    });
    let (old, syns) = (changed[0], &changed[1..]);
    let ack = v4(C4, VIP4, tcp(old, 80, ACK)).bytes();
    let previous = slot_of(&mut s, 0, &v4(C4, VIP4, tcp(old, 80, ACK))).previous;
    run(&mut s.dp, &ack);
    // The guard: 10 new entries a second on this CPU. A SYN it refuses goes to the
    // slot's previous owner, where the connection's unrecorded packets will go too; a
    // recorded one to the owner.
    s.dp.maps().set_flow_insert_rate(10).unwrap();
    for &p in &syns[..40] {
        let syn = v4(C4, VIP4, tcp(p, 80, SYN)).bytes();
        let slot = slot_of(&mut s, 0, &v4(C4, VIP4, tcp(p, 80, SYN)));
        let before = counters(&mut s.dp);
        let out = run(&mut s.dp, &syn).1;
        let key = flow_key(&v4(C4, VIP4, tcp(p, 80, SYN)));
        let (to, new) = match s.dp.maps().flow(&key) {
            Some(_) => (slot.owner, 1),
            // Refused: the previous owner, and not counted as a new flow (it follows
            // the old table).
            None => (slot.previous, 0),
        };
        assert_eq!(out, forwarded(&syn, mac_of(&s, 0, to)), "port {p}");
        let after = counters(&mut s.dp);
        let at = to as usize;
        assert_eq!(
            after.backends[at].2 - before.backends[at].2,
            new,
            "port {p}"
        );
        let ack = v4(C4, VIP4, tcp(p, 80, ACK)).bytes();
        assert_eq!(
            run(&mut s.dp, &ack).1,
            forwarded(&ack, mac_of(&s, 0, to)),
            "the connection's ACK follows its SYN"
        );
    }
    let stats = s.dp.maps().flow_stats().unwrap();
    let entries = s.dp.maps().flows().len() as u64;
    assert!(
        (2..=21).contains(&entries),
        "{entries} entries (1 old flow, at most 10 a second)"
    );
    assert_eq!(stats.inserts, entries);
    assert!(stats.refused_rate >= 40 - entries, "{stats:?}");
    // A full table (64 entries) refuses new ones and keeps every entry it has.
    s.dp.maps().set_flow_insert_rate(u32::MAX).unwrap();
    for &p in &syns[40..] {
        run(&mut s.dp, &v4(C4, VIP4, tcp(p, 80, SYN)).bytes());
    }
    let stats = s.dp.maps().flow_stats().unwrap();
    assert_eq!(s.dp.maps().flows().len(), 64);
    let sent = (syns.len() - 40) as u64;
    assert_eq!(stats.refused_full, sent - (64 - entries));
    assert_eq!(
        run(&mut s.dp, &ack).1,
        forwarded(&ack, mac_of(&s, 0, previous)),
        "the old flow lost its place"
    );
    let key = flow_key(&v4(C4, VIP4, tcp(old, 80, ACK)));
    assert_eq!(s.dp.maps().flow(&key).unwrap().backend_id, previous);
}

#[test]
fn flow_of_a_dead_backend_is_rehomed() {
    if !require_root("flow_of_a_dead_backend_is_rehomed") {
        return;
    }
    let mut s = setup();
    let syn = v4(C4, VIP4, tcp(41000, 80, SYN)).bytes();
    let (_, out) = run(&mut s.dp, &syn);
    let first: [u8; 6] = out[..6].try_into().unwrap();
    let (id, name, ..) = *s.vips[0].backends.iter().find(|b| b.3 == first).unwrap();
    // Take the backend out of the table, then mark it not live, as the control plane does.
    let weights: Vec<u32> = s.vips[0]
        .backends
        .iter()
        .map(|b| if b.0 == id { 0 } else { b.2 })
        .collect();
    change(&mut s, 0, &weights, 2);
    let mut dead = s.dp.maps().backend(id).unwrap();
    dead.flags = 0;
    s.dp.maps().put_backend(id, &dead).unwrap();

    let before = counters(&mut s.dp);
    let ack = v4(C4, VIP4, tcp(41000, 80, ACK)).bytes();
    let (action, out) = run(&mut s.dp, &ack);
    assert_eq!(action, Reason::Forwarded.action());
    assert_ne!(out[..6], first, "flow still sent to removed backend {name}");
    let entry =
        s.dp.maps()
            .flow(&flow_key(&v4(C4, VIP4, tcp(41000, 80, ACK))));
    let entry = entry.unwrap();
    assert_ne!(entry.backend_id, id);
    assert_eq!(entry.generation, 2);
    let after = counters(&mut s.dp);
    assert_eq!(after.backends[id as usize], before.backends[id as usize]);
    let to = entry.backend_id as usize;
    assert_eq!(
        after.backends[to].2,
        before.backends[to].2 + 1,
        "re-homed: a new flow"
    );
}

#[test]
fn a_flow_entry_never_forwards_to_an_address_that_is_no_longer_a_vip() {
    if !require_root("a_flow_entry_never_forwards_to_an_address_that_is_no_longer_a_vip") {
        return;
    }
    let mut s = setup();
    change(&mut s, 0, &[6, 1, 1], 2);
    let port = ports(&mut s, 42000, 1, |x| x.is_changed())[0];
    let ack = v4(C4, VIP4, tcp(port, 80, ACK)).bytes();
    run(&mut s.dp, &ack);
    let key = flow_key(&v4(C4, VIP4, tcp(port, 80, ACK)));
    let entry = s.dp.maps().flow(&key).unwrap();
    // The VIP moves to another address, as an apply does it: the backend first serves
    // the new key, then the old key stops being a VIP.
    let old_key = s.vips[0].key;
    let mut backend = s.dp.maps().backend(entry.backend_id).unwrap();
    backend.vip_key = v4_key("198.18.0.11", 80, lb_common::PROTO_TCP);
    s.dp.maps().put_backend(entry.backend_id, &backend).unwrap();
    s.dp.maps().remove_vip(&old_key).unwrap();

    let before = counters(&mut s.dp);
    let (action, out) = run(&mut s.dp, &ack);
    assert_eq!(action, Reason::PassNotVip.action());
    assert_eq!(out, ack, "a packet to the old address was rewritten");
    let after = counters(&mut s.dp);
    assert_eq!(
        after.backends, before.backends,
        "forwarded by a stale entry"
    );
}
