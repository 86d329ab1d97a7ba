//! Packet tests through BPF_PROG_TEST_RUN: each fixture is {what, input frame, expected
//! verdict, expected output bytes, expected counter deltas}, run against the real program
//! with maps filled by the real control-plane code (table builder and map writer).

#![cfg(test)]

use std::net::{Ipv4Addr, Ipv6Addr};

use aya::programs::{TestRun, TestRunOptions};
use lb_common::{
    BACKEND_LIVE, Backend, FAMILY_V4, FAMILY_V6, FlowKey, PROTO_TCP, PROTO_UDP, Reason, VipInfo,
    VipKey, flow_hash, maps::DEFAULT_TABLE_SIZE, table_slot,
};
use xlb::{
    dataplane::{Dataplane, LoadOptions, TableWrite},
    table::{self, Weighted},
};
use xlb_lab::{
    PinDir,
    packet::{ACK, L3, L4, LB_MAC, SYN, tcp, udp, v4, v6},
    require_root,
};

const SEED: u32 = 0x5eed_0001;
const IF_MAC: [u8; 6] = LB_MAC;

/// A VIP of the test setup and its backends (id, name, weight, MAC).
struct TestVip {
    key: VipKey,
    id: u32,
    backends: Vec<(u32, &'static str, u32, [u8; 6])>,
}

fn mac(n: u8) -> [u8; 6] {
    [0x02, 0xbe, 0, 0, 0, n]
}

fn v4_key(addr: &str, port: u16, proto: u8) -> VipKey {
    let mut a = [0u8; 16];
    a[..4].copy_from_slice(&addr.parse::<Ipv4Addr>().unwrap().octets());
    VipKey {
        addr: a,
        port_be: port.to_be(),
        proto,
        family: FAMILY_V4,
    }
}

fn v6_key(addr: &str, port: u16, proto: u8) -> VipKey {
    let a = addr.parse::<Ipv6Addr>().unwrap().octets();
    VipKey {
        addr: a,
        port_be: port.to_be(),
        proto,
        family: FAMILY_V6,
    }
}

fn vips() -> Vec<TestVip> {
    vec![
        TestVip {
            key: v4_key("198.18.0.10", 80, PROTO_TCP),
            id: 1,
            backends: vec![
                (1, "web-a", 1, mac(1)),
                (2, "web-b", 2, mac(2)),
                (3, "web-c", 3, mac(3)),
            ],
        },
        TestVip {
            key: v6_key("2001:db8::10", 443, PROTO_TCP),
            id: 2,
            backends: vec![(4, "v6-a", 1, mac(4)), (5, "v6-b", 1, mac(5))],
        },
        TestVip {
            key: v4_key("198.18.0.10", 53, PROTO_UDP),
            id: 3,
            backends: vec![(6, "dns-a", 1, mac(6)), (7, "dns-b", 1, mac(7))],
        },
        // A VIP with no table at all.
        TestVip {
            key: v4_key("198.18.0.20", 80, PROTO_TCP),
            id: 4,
            backends: vec![],
        },
        TestVip {
            key: v6_key("2001:db8::20", 80, PROTO_UDP),
            id: 5,
            backends: vec![(8, "v6u-a", 1, mac(8)), (9, "v6u-b", 1, mac(9))],
        },
    ]
}

/// Installs `vip` through the control-plane code: backends first, then the VIP, then the
/// table built by `table::build`. Returns the backend id per slot.
fn install(dp: &mut Dataplane, vip: &TestVip, weights: &[u32], generation: u32) -> Vec<u32> {
    let maps = dp.maps();
    for &(id, _, _, mac) in &vip.backends {
        let backend = Backend {
            mac,
            flags: BACKEND_LIVE,
            vip_id: vip.id,
            family: vip.key.family,
            vip_key: vip.key,
            ..Backend::default()
        };
        maps.put_backend(id, &backend).unwrap();
    }
    maps.put_vip(
        &vip.key,
        &VipInfo {
            vip_id: vip.id,
            forwarding: 0,
        },
    )
    .unwrap();
    if vip.backends.is_empty() {
        return Vec::new();
    }
    let input: Vec<Weighted> = vip
        .backends
        .iter()
        .zip(weights)
        .map(|(&(_, name, _, _), &weight)| Weighted { name, weight })
        .collect();
    let built = table::build(&input, DEFAULT_TABLE_SIZE).unwrap();
    let slots: Vec<u32> = built
        .slots()
        .iter()
        .map(|&i| vip.backends[i as usize].0)
        .collect();
    maps.install_table(TableWrite {
        vip_id: vip.id,
        generation,
        slots: &slots,
    })
    .unwrap();
    slots
}

struct Setup {
    dp: Dataplane,
    vips: Vec<TestVip>,
    tables: Vec<Vec<u32>>,
    _pins: PinDir,
}

fn setup() -> Setup {
    let pins = PinDir::new("pkt");
    let mut dp = Dataplane::load(&LoadOptions {
        pin_dir: pins.path().into(),
        flow_capacity: 4096,
        ..LoadOptions::default()
    })
    .unwrap();
    dp.maps().set_hash_seed(SEED).unwrap();
    dp.maps().set_interface_mac(IF_MAC).unwrap();
    let vips = vips();
    let mut tables = Vec::new();
    for vip in &vips {
        let weights: Vec<u32> = vip.backends.iter().map(|b| b.2).collect();
        tables.push(install(&mut dp, vip, &weights, 1));
    }
    Setup {
        dp,
        vips,
        tables,
        _pins: pins,
    }
}

fn run(dp: &mut Dataplane, input: &[u8]) -> (u32, Vec<u8>) {
    let mut out = vec![0u8; input.len() + 64];
    let opts = TestRunOptions {
        data_in: Some(input),
        data_out: Some(&mut out),
        ..TestRunOptions::default()
    };
    let r = dp.program().unwrap().test_run(opts).unwrap();
    out.truncate(r.data_size_out as usize);
    (r.return_value, out)
}

fn flow_key(frame: &xlb_lab::packet::Frame) -> FlowKey {
    let mut key = FlowKey {
        proto: frame.l4.proto(),
        ..FlowKey::default()
    };
    match &frame.l3 {
        L3::V4 { src, dst, .. } => {
            key.family = FAMILY_V4;
            key.src[..4].copy_from_slice(&src.octets());
            key.dst[..4].copy_from_slice(&dst.octets());
        }
        L3::V6 { src, dst, .. } => {
            key.family = FAMILY_V6;
            key.src = src.octets();
            key.dst = dst.octets();
        }
    }
    if let L4::Tcp { sport, dport, .. } | L4::Udp { sport, dport } = frame.l4 {
        key.sport_be = sport.to_be();
        key.dport_be = dport.to_be();
    }
    key
}

/// Counter snapshot: per reason, per backend, per VIP.
#[derive(Debug, PartialEq, Clone)]
struct Counters {
    reasons: Vec<u64>,
    backends: Vec<(u64, u64, u64)>,
    vips: Vec<(u64, u64, u64, u64)>,
}

fn counters(dp: &mut Dataplane) -> Counters {
    let maps = dp.maps();
    Counters {
        reasons: maps
            .reason_stats()
            .unwrap()
            .iter()
            .map(|(_, s)| s.packets)
            .collect(),
        backends: (0..10)
            .map(|id| {
                let s = maps.backend_stats(id).unwrap();
                (s.packets, s.bytes, s.new_flows)
            })
            .collect(),
        vips: (0..6)
            .map(|id| {
                let s = maps.vip_stats(id).unwrap();
                (s.packets, s.bytes, s.new_flows, s.drops)
            })
            .collect(),
    }
}

/// What a fixture expects.
enum Expect {
    /// Forwarded to the backend the hash and table predict; `new_flow` as given.
    Forward { vip: usize, new_flow: bool },
    /// Returned with this reason, the frame untouched.
    Untouched(Reason),
    /// Dropped with this reason and counted as a drop of VIP `vip`.
    VipDrop(usize),
}

struct Fixture {
    what: &'static str,
    input: Vec<u8>,
    frame: Option<xlb_lab::packet::Frame>,
    expect: Expect,
}

fn fx(what: &'static str, frame: xlb_lab::packet::Frame, expect: Expect) -> Fixture {
    Fixture {
        what,
        input: frame.bytes(),
        frame: Some(frame),
        expect,
    }
}

fn raw(what: &'static str, input: Vec<u8>, reason: Reason) -> Fixture {
    Fixture {
        what,
        input,
        frame: None,
        expect: Expect::Untouched(reason),
    }
}

fn truncate(frame: xlb_lab::packet::Frame, len: usize) -> Vec<u8> {
    let mut b = frame.bytes();
    b.truncate(len);
    b
}

const C4: &str = "198.18.1.2";
const C6: &str = "2001:db8:1::2";
const VIP4: &str = "198.18.0.10";
const VIP6: &str = "2001:db8::10";

fn fixtures() -> Vec<Fixture> {
    use Expect::*;
    use Reason::*;
    let arp = {
        let mut b = vec![0xff; 6];
        b.extend_from_slice(&xlb_lab::packet::CLIENT_MAC);
        b.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
        b.extend_from_slice(&[0; 28]);
        b
    };
    let lldp = {
        let mut b = vec![0x01, 0x80, 0xc2, 0, 0, 0x0e];
        b.extend_from_slice(&xlb_lab::packet::CLIENT_MAC);
        b.extend_from_slice(&[0x88, 0xcc]);
        b.extend_from_slice(&[0; 46]);
        b
    };
    vec![
        fx(
            "v4 TCP SYN to a VIP goes to the predicted backend",
            v4(C4, VIP4, tcp(40000, 80, SYN)),
            Forward {
                vip: 0,
                new_flow: true,
            },
        ),
        fx(
            "a later packet of that flow stays, no new flow",
            v4(C4, VIP4, tcp(40000, 80, ACK)),
            Forward {
                vip: 0,
                new_flow: false,
            },
        ),
        fx(
            "a SYN again on that 5-tuple with its backend unchanged (a retransmission): \
             not another new flow",
            v4(C4, VIP4, tcp(40000, 80, SYN)),
            Forward {
                vip: 0,
                new_flow: false,
            },
        ),
        fx(
            "another client port is a new flow",
            v4(C4, VIP4, tcp(40001, 80, SYN)),
            Forward {
                vip: 0,
                new_flow: true,
            },
        ),
        fx(
            "another client address is a new flow",
            v4("198.18.7.9", VIP4, tcp(40000, 80, SYN)),
            Forward {
                vip: 0,
                new_flow: true,
            },
        ),
        fx(
            "v6 TCP SYN to a v6 VIP",
            v6(C6, VIP6, tcp(50000, 443, SYN)),
            Forward {
                vip: 1,
                new_flow: true,
            },
        ),
        fx(
            "v6 flow keeps its backend",
            v6(C6, VIP6, tcp(50000, 443, ACK)),
            Forward {
                vip: 1,
                new_flow: false,
            },
        ),
        fx(
            "v4 UDP to a UDP VIP",
            v4(C4, VIP4, udp(5353, 53)),
            Forward {
                vip: 2,
                new_flow: true,
            },
        ),
        fx(
            "v4 UDP repeat is the same flow",
            v4(C4, VIP4, udp(5353, 53)),
            Forward {
                vip: 2,
                new_flow: false,
            },
        ),
        fx(
            "v6 UDP to a v6 UDP VIP",
            v6(C6, "2001:db8::20", udp(6000, 80)),
            Forward {
                vip: 4,
                new_flow: true,
            },
        ),
        fx(
            "IPv4 with 12 bytes of options",
            v4(C4, VIP4, tcp(40100, 80, SYN)).options(&[1; 12]),
            Forward {
                vip: 0,
                new_flow: true,
            },
        ),
        fx(
            "IPv4 with the maximum 40 bytes of options",
            v4(C4, VIP4, tcp(40101, 80, SYN)).options(&[1; 40]),
            Forward {
                vip: 0,
                new_flow: true,
            },
        ),
        fx(
            "802.1Q-tagged v4 keeps its tag",
            v4(C4, VIP4, tcp(40200, 80, SYN)).vlan(100),
            Forward {
                vip: 0,
                new_flow: true,
            },
        ),
        fx(
            "802.1Q-tagged v6",
            v6(C6, VIP6, tcp(50200, 443, SYN)).vlan(7),
            Forward {
                vip: 1,
                new_flow: true,
            },
        ),
        raw("ARP passes untouched", arp, PassNotIp),
        raw("LLDP passes untouched", lldp, PassNotIp),
        fx(
            "v4 TCP to a non-VIP address",
            v4(C4, "198.18.5.5", tcp(40000, 80, SYN)),
            Untouched(PassNotVip),
        ),
        fx(
            "v4 TCP to a VIP address on another port",
            v4(C4, VIP4, tcp(40000, 8080, SYN)),
            Untouched(PassNotVip),
        ),
        {
            let (addr, port) = filter_twin(&v4_key(VIP4, 80, PROTO_TCP));
            fx(
                "v4 TCP to a non-VIP whose filter bit a VIP also has",
                v4(C4, &addr, tcp(40000, port, SYN)),
                Untouched(PassNotVip),
            )
        },
        fx(
            "v4 UDP to a TCP-only VIP port",
            v4(C4, VIP4, udp(40000, 80)),
            Untouched(PassNotVip),
        ),
        fx(
            "v6 TCP to a non-VIP address",
            v6(C6, "2001:db8::99", tcp(50000, 443, SYN)),
            Untouched(PassNotVip),
        ),
        raw(
            "802.1Q tag cut short",
            truncate(v4(C4, VIP4, tcp(1, 80, SYN)).vlan(5), 16),
            PassTruncated,
        ),
        raw(
            "IPv4 header cut short",
            truncate(v4(C4, VIP4, tcp(1, 80, SYN)), 14 + 19),
            PassTruncated,
        ),
        raw(
            "IPv6 header cut short",
            truncate(v6(C6, VIP6, tcp(1, 443, SYN)), 14 + 39),
            PassTruncated,
        ),
        raw(
            "TCP header cut short, to a VIP",
            truncate(v4(C4, VIP4, tcp(1, 80, SYN)), 14 + 20 + 19),
            DropTruncated,
        ),
        raw(
            "TCP ports only, to a VIP",
            truncate(v4(C4, VIP4, tcp(1, 80, SYN)), 14 + 20 + 4),
            DropTruncated,
        ),
        raw(
            "UDP header cut short, to a VIP",
            truncate(v4(C4, VIP4, udp(1, 53)), 14 + 20 + 7),
            DropTruncated,
        ),
        raw(
            "v6 TCP header cut short, to a VIP",
            truncate(v6(C6, VIP6, tcp(1, 443, SYN)), 14 + 40 + 10),
            DropTruncated,
        ),
        raw(
            "IPv4 options run past the end, to a VIP",
            truncate(v4(C4, VIP4, tcp(1, 80, SYN)).options(&[1; 40]), 14 + 60),
            DropTruncated,
        ),
        raw(
            "TCP header cut short, not for a VIP",
            truncate(v4(C4, "198.18.5.5", tcp(1, 80, SYN)), 14 + 20 + 10),
            PassNotVip,
        ),
        fx(
            "first IPv4 fragment to a VIP",
            v4(C4, VIP4, tcp(1, 80, SYN)).frag(0x2000),
            Untouched(DropFragment),
        ),
        fx(
            "later IPv4 fragment to a VIP",
            v4(
                C4,
                VIP4,
                L4::Raw {
                    proto: 6,
                    payload: vec![0; 24],
                },
            )
            .frag(0x0003),
            Untouched(DropFragment),
        ),
        fx(
            "IPv4 fragment not for a VIP",
            v4(C4, "198.18.5.5", tcp(1, 80, SYN)).frag(0x2000),
            Untouched(PassNotVip),
        ),
        fx(
            "IPv6 fragment header to a VIP",
            v6(C6, VIP6, tcp(1, 443, SYN)).ext(44),
            Untouched(DropFragment),
        ),
        fx(
            "IPv6 hop-by-hop header to a VIP",
            v6(C6, VIP6, tcp(1, 443, SYN)).ext(0),
            Untouched(DropIpv6ExtHeader),
        ),
        fx(
            "IPv6 routing header to a VIP",
            v6(C6, VIP6, tcp(1, 443, SYN)).ext(43),
            Untouched(DropIpv6ExtHeader),
        ),
        fx(
            "IPv6 extension header not for a VIP",
            v6(C6, "2001:db8::99", tcp(1, 443, SYN)).ext(0),
            Untouched(PassNotVip),
        ),
        fx(
            "ICMP echo to a VIP address",
            v4(
                C4,
                VIP4,
                L4::Raw {
                    proto: 1,
                    payload: vec![8, 0, 0, 0, 0, 1, 0, 1],
                },
            ),
            Untouched(PassIcmp),
        ),
        fx(
            "ICMPv6 to a VIP address",
            v6(
                C6,
                VIP6,
                L4::Raw {
                    proto: 58,
                    payload: vec![128, 0, 0, 0, 0, 1, 0, 1],
                },
            ),
            Untouched(PassIcmp),
        ),
        fx(
            "GRE to a VIP address",
            v4(
                C4,
                VIP4,
                L4::Raw {
                    proto: 47,
                    payload: vec![0; 8],
                },
            ),
            Untouched(DropUnknownProto),
        ),
        fx(
            "SCTP to a v6 VIP address",
            v6(
                C6,
                VIP6,
                L4::Raw {
                    proto: 132,
                    payload: vec![0; 12],
                },
            ),
            Untouched(DropUnknownProto),
        ),
        fx(
            "GRE not for a VIP",
            v4(
                C4,
                "198.18.5.5",
                L4::Raw {
                    proto: 47,
                    payload: vec![0; 8],
                },
            ),
            Untouched(PassNotVip),
        ),
        fx(
            "a VIP without any table",
            v4(C4, "198.18.0.20", tcp(40000, 80, SYN)),
            VipDrop(3),
        ),
        raw(
            "IPv4 header length below 20, to a VIP",
            {
                let mut b = v4(C4, VIP4, tcp(1, 80, SYN)).bytes();
                b[14] = 0x44;
                b
            },
            DropBadHeader,
        ),
        raw(
            "IP version 6 inside an IPv4 ethertype, to a VIP",
            {
                let mut b = v4(C4, VIP4, tcp(1, 80, SYN)).bytes();
                b[14] = 0x65;
                b
            },
            DropBadHeader,
        ),
    ]
}

/// An IPv4 address and TCP port that are no VIP but share `vip`'s `xlb_vip_filter` bit:
/// such a packet passes the filter and must be told apart by the exact lookup.
fn filter_twin(vip: &VipKey) -> (String, u16) {
    (0..=255u8)
        .flat_map(|host| (1..=u16::MAX).map(move |port| (host, port)))
        .map(|(host, port)| (format!("198.18.9.{host}"), port))
        .find(|(addr, port)| v4_key(addr, *port, PROTO_TCP).filter_bit() == vip.filter_bit())
        .expect("some address and port share the bit")
}

/// The output frame xlb must produce for `input` sent to a backend with `backend_mac`.
fn forwarded(input: &[u8], backend_mac: [u8; 6]) -> Vec<u8> {
    let mut out = input.to_vec();
    out[..6].copy_from_slice(&backend_mac);
    out[6..12].copy_from_slice(&IF_MAC);
    out
}

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
