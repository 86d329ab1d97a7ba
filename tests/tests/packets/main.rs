//! Packet tests through BPF_PROG_TEST_RUN: each fixture is {what, input frame, expected
//! verdict, expected output bytes, expected counter deltas}, run against the real program
//! with maps filled by the real control-plane code (table builder and map writer).

#![cfg(test)]

mod changed_slots;
mod decap;
mod fixtures;
mod ipip;
mod setup;

use lb_common::{Reason, flow_hash, table_slot};
use xlb::dataplane::Dataplane;
use xlb_lab::require_root;

use fixtures::{Expect, fixtures};
use setup::{SEED, TestVip, counters, flow_key, forwarded, run, setup};

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
                *v = (v.0 + 1, v.1 + len, v.2 + u64::from(new_flow), v.3, v.4);
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
    // Every slot is stateless: no packet, SYN or not, wrote a flow entry.
    assert_eq!(
        s.dp.maps().flows(),
        vec![],
        "steady state created flow entries"
    );
    assert_eq!(s.dp.maps().flow_stats().unwrap().inserts, 0);
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

#[test]
fn vips_sharing_a_filter_bit_are_told_apart_by_the_hash_lookup() {
    if !require_root("vips_sharing_a_filter_bit_are_told_apart_by_the_hash_lookup") {
        return;
    }
    let mut s = setup();
    let web = s.vips[0].key;
    let bit = web.filter_bit();
    assert_eq!(
        s.dp.maps().vip_index(bit).unwrap().key,
        web,
        "one VIP: its own entry"
    );
    // A second VIP with web's bit: the entry says "shared", and both are served.
    let (addr, port) = fixtures::filter_twin(&web);
    let twin = TestVip {
        key: setup::v4_key(&addr, port, lb_common::PROTO_TCP),
        id: 6,
        backends: vec![(10, "twin-a", 1, [0x02, 0xbe, 0, 0, 0, 10])],
    };
    setup::install(&mut s.dp, &twin, &[1], 1);
    let entry = s.dp.maps().vip_index(bit).unwrap();
    assert_eq!(entry.info.vip_id, lb_common::VIP_INDEX_SHARED);
    let to_web = xlb_lab::packet::v4(
        setup::C4,
        setup::VIP4,
        xlb_lab::packet::tcp(40000, 80, 0x10),
    );
    let to_twin = xlb_lab::packet::v4(setup::C4, &addr, xlb_lab::packet::tcp(40000, port, 0x10));
    for frame in [&to_web, &to_twin] {
        let (action, _) = run(&mut s.dp, &frame.bytes());
        assert_eq!(action, Reason::Forwarded.action(), "{frame:?}");
    }
    let (_, out) = run(&mut s.dp, &to_twin.bytes());
    assert_eq!(out, forwarded(&to_twin.bytes(), twin.backends[0].3));
    // Removing the twin gives web its own entry back; the twin's packets pass.
    s.dp.maps().remove_vip(&twin.key).unwrap();
    assert_eq!(s.dp.maps().vip_index(bit).unwrap().key, web);
    let (action, _) = run(&mut s.dp, &to_twin.bytes());
    assert_eq!(action, Reason::PassNotVip.action());
    // Removing web too leaves the entry empty; the trim agrees.
    s.dp.maps().remove_vip(&web).unwrap();
    assert_eq!(s.dp.maps().vip_index(bit).unwrap().info.vip_id, 0);
    s.dp.maps().trim_vip_filter().unwrap();
    assert_eq!(s.dp.maps().vip_index(bit).unwrap(), Default::default());
}

#[test]
fn a_pinned_reason_map_of_an_older_build_grows_and_keeps_its_counts() {
    if !require_root("a_pinned_reason_map_of_an_older_build_grows_and_keeps_its_counts") {
        return;
    }
    // An older build's `xlb_reasons`: 11 entries, with counts for reason 0 (forwarded).
    let pins = xlb_lab::PinDir::new("oldreasons");
    std::fs::create_dir_all(pins.path()).unwrap();
    let map = pins.path().join(lb_common::maps::REASON_STATS);
    xlb_lab::netns::sh(&format!(
        "bpftool map create {} type percpu_array key 4 value 16 entries 11 name xlb_reasons",
        map.display()
    ));
    // 7 packets and 700 bytes on every CPU.
    xlb_lab::netns::sh(&format!(
        "bpftool map update pinned {} key 0 0 0 0 value 7 0 0 0 0 0 0 0 188 2 0 0 0 0 0 0",
        map.display()
    ));
    let cpus = xlb_lab::bpftool_dump(&map)[0]["values"]
        .as_array()
        .map_or(0, Vec::len) as u64;
    assert!(cpus > 0);
    let mut dp = Dataplane::load(&xlb::dataplane::LoadOptions {
        pin_dir: pins.path().into(),
        ..xlb::dataplane::LoadOptions::default()
    })
    .unwrap();
    let stats = dp.maps().reason_stats().unwrap();
    assert_eq!(stats.len(), lb_common::reason::REASON_COUNT as usize);
    assert_eq!(
        stats[0].1.packets,
        7 * cpus,
        "the old counts are carried over"
    );
    assert_eq!(stats[0].1.bytes, 700 * cpus);
    let info = xlb_lab::netns::sh(&format!("bpftool -j map show pinned {}", map.display()));
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(
        info["max_entries"].as_u64(),
        Some(u64::from(lb_common::reason::REASON_COUNT))
    );
}
