//! Packet tests through BPF_PROG_TEST_RUN: each fixture is {what, input frame, expected
//! verdict, expected output bytes, expected counter deltas}, run against the real program
//! with maps filled by the real control-plane code (table builder and map writer).

#![cfg(test)]

mod fixtures;
mod setup;

use lb_common::{PROTO_TCP, Reason, flow_hash, maps::DEFAULT_TABLE_SIZE, table_slot};
use xlb::{
    dataplane::Dataplane,
    table::{self, Weighted},
};
use xlb_lab::{
    packet::{ACK, SYN, tcp, v4},
    require_root,
};

use fixtures::{Expect, fixtures};
use setup::{C4, SEED, TestVip, VIP4, counters, flow_key, forwarded, install, run, setup, v4_key};

#[test]
fn packet_fixtures() {
    if !require_root("packet_fixtures") {
        return;
    }
    let mut s = setup();
    let fixtures = fixtures();
    assert!(fixtures.len() >= 30, "only {} fixtures", fixtures.len());
    for f in fixtures {
        let before = counters(&mut s.dp);
        let (action, out) = run(&mut s.dp, &f.input);
        let after = counters(&mut s.dp);
        let mut expected = before.clone();
        let (reason, expected_out) = match f.expect {
            Expect::Forward { vip, new_flow } => {
                let frame = f.frame.as_ref().unwrap();
                let key = flow_key(frame);
                let table = &s.tables[vip];
                let id = table[table_slot(flow_hash(&key, SEED), table.len() as u32) as usize];
                let backend = s.vips[vip].backends.iter().find(|b| b.0 == id).unwrap();
                let len = f.input.len() as u64;
                let b = &mut expected.backends[id as usize];
                *b = (b.0 + 1, b.1 + len, b.2 + u64::from(new_flow));
                let v = &mut expected.vips[s.vips[vip].id as usize];
                *v = (v.0 + 1, v.1 + len, v.2 + u64::from(new_flow), v.3);
                (Reason::Forwarded, forwarded(&f.input, backend.3))
            }
            Expect::Untouched(reason) => (reason, f.input.clone()),
            Expect::VipDrop(vip) => {
                expected.vips[s.vips[vip].id as usize].3 += 1;
                (Reason::DropNoBackend, f.input.clone())
            }
        };
        expected.reasons[reason.index() as usize] += 1;
        assert_eq!(action, reason.action(), "{}: action", f.what);
        assert_eq!(out, expected_out, "{}: output bytes", f.what);
        assert_eq!(after, expected, "{}: counter deltas", f.what);
    }
}

#[test]
fn established_flow_keeps_its_backend_when_the_table_changes() {
    if !require_root("established_flow_keeps_its_backend_when_the_table_changes") {
        return;
    }
    let mut s = setup();
    // Find a client port whose slot changes owner between weights 1:2:3 and 6:1:1.
    let new_slots = {
        let input: Vec<Weighted> = s.vips[0]
            .backends
            .iter()
            .zip([6, 1, 1])
            .map(|(b, weight)| Weighted { name: b.1, weight })
            .collect();
        let t = table::build(&input, DEFAULT_TABLE_SIZE).unwrap();
        t.slots()
            .iter()
            .map(|&i| s.vips[0].backends[i as usize].0)
            .collect::<Vec<u32>>()
    };
    let owner = |slots: &[u32], port: u16| {
        let key = flow_key(&v4(C4, VIP4, tcp(port, 80, SYN)));
        slots[table_slot(flow_hash(&key, SEED), slots.len() as u32) as usize]
    };
    let port = (30000..31000)
        .find(|&p| owner(&s.tables[0], p) != owner(&new_slots, p))
        .unwrap();
    let old_backend = owner(&s.tables[0], port);
    let mac_of = |id: u32| s.vips[0].backends.iter().find(|b| b.0 == id).unwrap().3;

    let syn = v4(C4, VIP4, tcp(port, 80, SYN)).bytes();
    let (_, out) = run(&mut s.dp, &syn);
    assert_eq!(out, forwarded(&syn, mac_of(old_backend)));

    let vip = &s.vips[0];
    let installed = install(&mut s.dp, vip, &[6, 1, 1], 2);
    assert_eq!(installed, new_slots);
    assert_eq!(s.dp.maps().table(1).unwrap().1, 2, "generation 2 is live");

    let ack = v4(C4, VIP4, tcp(port, 80, ACK)).bytes();
    let (_, out) = run(&mut s.dp, &ack);
    assert_eq!(
        out,
        forwarded(&ack, mac_of(old_backend)),
        "established flow moved"
    );
    let entry =
        s.dp.maps()
            .flow(&flow_key(&v4(C4, VIP4, tcp(port, 80, ACK))))
            .unwrap();
    assert_eq!((entry.backend_id, entry.generation), (old_backend, 1));

    // A new flow that hashes to the same slot follows the new table.
    let fresh = (31000..40000)
        .find(|&p| {
            let k = flow_key(&v4(C4, VIP4, tcp(p, 80, SYN)));
            let k0 = flow_key(&v4(C4, VIP4, tcp(port, 80, SYN)));
            table_slot(flow_hash(&k, SEED), DEFAULT_TABLE_SIZE)
                == table_slot(flow_hash(&k0, SEED), DEFAULT_TABLE_SIZE)
        })
        .map(|p| v4(C4, VIP4, tcp(p, 80, SYN)).bytes());
    if let Some(fresh) = fresh {
        let (_, out) = run(&mut s.dp, &fresh);
        assert_eq!(out, forwarded(&fresh, mac_of(owner(&new_slots, port))));
    }

    // A new connection on the same 5-tuple (a SYN) follows the new table, and its entry
    // is re-homed.
    let (_, out) = run(&mut s.dp, &syn);
    assert_eq!(out, forwarded(&syn, mac_of(owner(&new_slots, port))));
    let entry =
        s.dp.maps()
            .flow(&flow_key(&v4(C4, VIP4, tcp(port, 80, SYN))))
            .unwrap();
    assert_eq!(
        (entry.backend_id, entry.generation),
        (owner(&new_slots, port), 2)
    );
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
    install(&mut s.dp, &s.vips.swap_remove(0), &weights, 2);
    let mut dead = s.dp.maps().backend(id).unwrap();
    dead.flags = 0;
    s.dp.maps().put_backend(id, &dead).unwrap();

    let before = s.dp.maps().backend_stats(id).unwrap();
    let ack = v4(C4, VIP4, tcp(41000, 80, ACK)).bytes();
    let (action, out) = run(&mut s.dp, &ack);
    assert_eq!(action, Reason::Forwarded.action());
    assert_ne!(out[..6], first, "flow still sent to removed backend {name}");
    let entry =
        s.dp.maps()
            .flow(&flow_key(&v4(C4, VIP4, tcp(41000, 80, ACK))))
            .unwrap();
    assert_ne!(entry.backend_id, id);
    assert_eq!(entry.generation, 2);
    assert_eq!(s.dp.maps().backend_stats(id).unwrap(), before);
}

#[test]
fn flow_entry_is_not_used_once_its_backend_serves_another_vip() {
    if !require_root("flow_entry_is_not_used_once_its_backend_serves_another_vip") {
        return;
    }
    let mut s = setup();
    let syn = v4(C4, VIP4, tcp(42000, 80, SYN)).bytes();
    let (action, _) = run(&mut s.dp, &syn);
    assert_eq!(action, Reason::Forwarded.action());
    let entry =
        s.dp.maps()
            .flow(&flow_key(&v4(C4, VIP4, tcp(42000, 80, SYN))))
            .unwrap();
    // The VIP moves to another address, as an apply does it: the backend first serves
    // the new key, then the old key stops being a VIP.
    let old_key = s.vips[0].key;
    let mut backend = s.dp.maps().backend(entry.backend_id).unwrap();
    backend.vip_key = v4_key("198.18.0.11", 80, PROTO_TCP);
    s.dp.maps().put_backend(entry.backend_id, &backend).unwrap();
    s.dp.maps().remove_vip(&old_key).unwrap();

    let before = counters(&mut s.dp);
    let ack = v4(C4, VIP4, tcp(42000, 80, ACK)).bytes();
    let (action, out) = run(&mut s.dp, &ack);
    assert_eq!(action, Reason::PassNotVip.action());
    assert_eq!(out, ack, "a packet to the old address was rewritten");
    let after = counters(&mut s.dp);
    assert_eq!(
        after.backends, before.backends,
        "forwarded by a stale entry"
    );
    assert_eq!(
        after.reasons[Reason::PassNotVip.index() as usize],
        before.reasons[Reason::PassNotVip.index() as usize] + 1
    );
}

#[test]
fn vip_filter_has_exactly_the_bits_of_the_vips() {
    if !require_root("vip_filter_has_exactly_the_bits_of_the_vips") {
        return;
    }
    let mut s = setup();
    let set_bits = |dp: &mut Dataplane| -> Vec<u32> {
        (0..lb_common::maps::VIP_FILTER_WORDS)
            .flat_map(|w| {
                let word = dp.maps().filter_word(w).unwrap();
                (0..64)
                    .filter(move |b| word >> b & 1 == 1)
                    .map(move |b| w * 64 + b)
            })
            .collect()
    };
    let want = |vips: &[TestVip]| -> Vec<u32> {
        let mut bits: Vec<u32> = vips.iter().map(|v| v.key.filter_bit()).collect();
        bits.sort_unstable();
        bits.dedup();
        bits
    };
    assert_eq!(
        set_bits(&mut s.dp),
        want(&s.vips),
        "put_vip sets each VIP's bit"
    );

    // Removing a VIP leaves its bit until the filter is trimmed; then only the others.
    let gone = s.vips.remove(0).key;
    s.dp.maps().remove_vip(&gone).unwrap();
    assert!(set_bits(&mut s.dp).contains(&gone.filter_bit()));
    s.dp.maps().trim_vip_filter().unwrap();
    assert_eq!(
        set_bits(&mut s.dp),
        want(&s.vips),
        "trim keeps exactly the VIPs' bits"
    );
}
