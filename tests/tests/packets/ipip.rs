//! `ipip` forwarding, the MTU, and ICMP to a VIP (errors that find their flow, echo),
//! through BPF_PROG_TEST_RUN. The program's FIB lookups need routes: each test runs in a
//! namespace of its own where `lb0` (198.18.2.2/24, 2001:db8:2::2/64) has the router
//! (198.18.2.1, 2001:db8:2::1, a permanent neighbour with `ROUTER_MAC`) as next hop to
//! the backends' subnets 198.18.3.0/24 and 2001:db8:3::/64, and frames come in on it.
//! Expected frames are built here byte by byte from the documented header rules.

use lb_common::{
    ADDR_ICMP_ECHO, FAMILY_V4, FAMILY_V6, FWD_IPIP, FlowKey, PROTO_TCP, PROTO_UDP, Reason, Slot,
    flow_hash, reason::XDP_TX, table_slot,
};
use xlb::config::Ipip;
use xlb_lab::{
    netns::{Netns, sh},
    packet::{ACK, CLIENT_MAC, Frame, L4, LB_MAC, SYN, checksum, tcp, udp, v4, v6},
    require_root,
    routed::{FIB_ROUTER_MAC, fib_namespace},
    topology::mac_of,
};

use super::setup::{
    C4, C6, SEED, Setup, TestVip, VIP4, backend_addr, flow_key, forwarded, install_with, run_on,
    setup, v4_key, v6_key,
};

const ROUTER_MAC: [u8; 6] = FIB_ROUTER_MAC;
const VIP4I: &str = "198.18.0.30";
const VIP6I: &str = "2001:db8::30";

/// The test's namespace, its interface, and the data plane with four `ipip` VIPs
/// (indexes 5-8 of `s.vips`: v4 TCP, v4 UDP, v6 TCP, v6 UDP) beside the `l2-dsr` ones.
struct Lab {
    ns: Netns,
    ifindex: u32,
    lb_mac: [u8; 6],
    s: Setup,
}

fn ipip_vips() -> Vec<TestVip> {
    let mac = [0; 6];
    vec![
        TestVip {
            key: v4_key(VIP4I, 80, PROTO_TCP),
            id: 6,
            backends: vec![(10, "ip-a", 1, mac), (11, "ip-b", 2, mac)],
        },
        TestVip {
            key: v4_key(VIP4I, 53, PROTO_UDP),
            id: 7,
            backends: vec![(12, "ipu-a", 1, mac), (13, "ipu-b", 1, mac)],
        },
        TestVip {
            key: v6_key(VIP6I, 443, PROTO_TCP),
            id: 8,
            backends: vec![(14, "ip6-a", 1, mac), (15, "ip6-b", 1, mac)],
        },
        TestVip {
            key: v6_key(VIP6I, 53, PROTO_UDP),
            id: 9,
            backends: vec![(16, "ip6u-a", 1, mac), (17, "ip6u-b", 1, mac)],
        },
    ]
}

fn sources() -> Ipip {
    Ipip {
        ipv4_source: Some("198.18.200.0/24".into()),
        ipv6_source: Some("2001:db8:200::/120".into()),
    }
}

fn lab() -> Lab {
    let ns = fib_namespace("pkip");
    let lb_mac = mac_of(&ns.name, "lb0");
    ns.enter();
    // SAFETY: if_nametoindex on a NUL-terminated name, in this thread's namespace.
    let ifindex = unsafe { libc::if_nametoindex(c"lb0".as_ptr()) };
    assert_ne!(ifindex, 0);
    let mut s = setup();
    s.dp.maps().set_encap(&sources().encap()).unwrap();
    for vip in ipip_vips() {
        let weights: Vec<u32> = vip.backends.iter().map(|b| b.2).collect();
        let table = install_with(&mut s.dp, &vip, &weights, 1, FWD_IPIP, ADDR_ICMP_ECHO);
        s.tables.push(table);
        s.vips.push(vip);
    }
    Lab {
        ns,
        ifindex,
        lb_mac,
        s,
    }
}

impl Lab {
    fn run(&mut self, input: &[u8]) -> (u32, Vec<u8>) {
        run_on(&mut self.s.dp, input, self.ifindex)
    }

    fn reasons(&mut self) -> Vec<u64> {
        let stats = self.s.dp.maps().reason_stats().unwrap();
        stats.iter().map(|(_, s)| s.packets).collect()
    }

    /// Runs `input` and checks the verdict, the action and that exactly one packet was
    /// counted under `reason`; the output frame.
    fn expect(&mut self, what: &str, input: &[u8], reason: Reason, action: u32) -> Vec<u8> {
        let before = self.reasons();
        let (got, out) = self.run(input);
        let after = self.reasons();
        let mut want = before;
        want[reason.index() as usize] += 1;
        assert_eq!(after, want, "{what}: reason counters (expected {reason:?})");
        assert_eq!(got, action, "{what}: action");
        out
    }

    /// The backend id VIP `vip`'s table gives the flow `key`, and the flow's hash.
    fn owner(&self, vip: usize, key: &FlowKey) -> (u32, u32) {
        let hash = flow_hash(key, SEED);
        let table = &self.s.tables[vip];
        (table[table_slot(hash, table.len() as u32) as usize], hash)
    }
}

/// `input`'s IP packet (from offset `l3`) wrapped as the documented rules say, to
/// `backend` from the source range's address `hash & 0xff`.
fn encapsulated(lb_mac: [u8; 6], input: &[u8], l3: usize, backend: [u8; 16], hash: u32) -> Vec<u8> {
    let inner = &input[l3..];
    assert!(inner.len() >= 2);
    let mut f = Vec::new();
    f.extend_from_slice(&ROUTER_MAC);
    f.extend_from_slice(&lb_mac);
    if inner[0] >> 4 == 4 {
        f.extend_from_slice(&[0x08, 0x00]);
        let len = (inner.len() + 20) as u16;
        let mut h = vec![0x45, inner[1]];
        h.extend_from_slice(&len.to_be_bytes());
        h.extend_from_slice(&[0, 0, 0x40, 0, 64, 4, 0, 0]);
        h.extend_from_slice(&[198, 18, 200, hash as u8]);
        h.extend_from_slice(&backend[..4]);
        let c = checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&h);
    } else {
        f.extend_from_slice(&[0x86, 0xdd]);
        let tc = inner[0] << 4 | inner[1] >> 4;
        let label = hash & 0xf_ffff;
        f.extend_from_slice(&[
            0x60 | tc >> 4,
            tc << 4 | (label >> 16) as u8,
            (label >> 8) as u8,
            label as u8,
        ]);
        f.extend_from_slice(&(inner.len() as u16).to_be_bytes());
        f.extend_from_slice(&[41, 64]);
        let mut src: [u8; 16] = "2001:db8:200::"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets();
        src[15] = hash as u8;
        f.extend_from_slice(&src);
        f.extend_from_slice(&backend);
    }
    f.extend_from_slice(inner);
    f
}

/// The IPv6 upper-layer checksum of `payload` (protocol `next`) from `src` to `dst`.
fn checksum6(src: &[u8], dst: &[u8], next: u8, payload: &[u8]) -> u16 {
    let mut b = Vec::new();
    b.extend_from_slice(src);
    b.extend_from_slice(dst);
    b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    b.extend_from_slice(&[0, 0, 0, next]);
    b.extend_from_slice(payload);
    checksum(&b)
}

/// An ICMP(v6) message from a router to `to` quoting `quoted` (an IP packet the
/// backend sent from the VIP).
fn icmp_error(v4_: bool, to: &str, head: [u8; 8], quoted: &[u8]) -> Frame {
    let mut payload = head.to_vec();
    payload.extend_from_slice(quoted);
    if v4_ {
        v4("198.18.9.1", to, L4::Raw { proto: 1, payload })
    } else {
        v6("2001:db8:9::1", to, L4::Raw { proto: 58, payload })
    }
}

/// The IP packet (no Ethernet header) of `frame`, cut to `n` bytes.
fn ip_packet(frame: &Frame, n: usize) -> Vec<u8> {
    let b = frame.bytes();
    b[14..(14 + n).min(b.len())].to_vec()
}

const FRAG_NEEDED_1280: [u8; 8] = [3, 4, 0, 0, 0, 0, 0x05, 0x00];
const PTB_1280: [u8; 8] = [2, 0, 0, 0, 0, 0, 0x05, 0x00];

#[test]
fn ipip_outer_headers_are_exact() {
    if !require_root("ipip_outer_headers_are_exact") {
        return;
    }
    let mut lab = lab();
    let cases: Vec<(&str, Frame, usize, bool)> = vec![
        ("v4 TCP SYN", v4(C4, VIP4I, tcp(41000, 80, SYN)), 5, true),
        ("v4 TCP ACK", v4(C4, VIP4I, tcp(41001, 80, ACK)), 5, false),
        ("v4 UDP", v4(C4, VIP4I, udp(41002, 53)), 6, false),
        ("v6 TCP SYN", v6(C6, VIP6I, tcp(41003, 443, SYN)), 7, true),
        ("v6 TCP ACK", v6(C6, VIP6I, tcp(41004, 443, ACK)), 7, false),
        ("v6 UDP", v6(C6, VIP6I, udp(41005, 53)), 8, false),
        (
            "v4 DSCP EF with ECT(1) is copied out",
            v4(C4, VIP4I, tcp(41006, 80, ACK)).tos(0xb9),
            5,
            false,
        ),
        (
            "v6 DSCP AF41 with CE is copied out",
            v6(C6, VIP6I, udp(41007, 53)).tos(0x8b),
            8,
            false,
        ),
        (
            "v4 at exactly the MTU once wrapped (1480 + 20)",
            v4(C4, VIP4I, tcp(41008, 80, ACK)).pad(1480 - 40),
            5,
            false,
        ),
        (
            "v6 at exactly the MTU once wrapped (1460 + 40)",
            v6(C6, VIP6I, tcp(41009, 443, ACK)).pad(1460 - 60),
            7,
            false,
        ),
    ];
    for (what, frame, vip, new_flow) in cases {
        let input = frame.bytes();
        let key = flow_key(&frame);
        let (id, hash) = lab.owner(vip, &key);
        let family = lab.s.vips[vip].key.family;
        let before = lab.s.dp.maps().backend_stats(id).unwrap();
        let out = lab.expect(what, &input, Reason::Forwarded, XDP_TX);
        let want = encapsulated(lab.lb_mac, &input, 14, backend_addr(id, family), hash);
        assert_eq!(out, want, "{what}: output bytes");
        let after = lab.s.dp.maps().backend_stats(id).unwrap();
        assert_eq!(after.packets, before.packets + 1, "{what}: backend packets");
        assert_eq!(after.bytes, before.bytes + input.len() as u64, "{what}");
        assert_eq!(
            after.new_flows,
            before.new_flows + u64::from(new_flow),
            "{what}"
        );
    }
    // An 802.1Q tag is dropped: the outer frame is untagged.
    let frame = v4(C4, VIP4I, tcp(41010, 80, ACK)).vlan(7);
    let input = frame.bytes();
    let (id, hash) = lab.owner(5, &flow_key(&frame));
    let out = lab.expect("tagged", &input, Reason::Forwarded, XDP_TX);
    assert_eq!(
        out,
        encapsulated(lab.lb_mac, &input, 18, backend_addr(id, FAMILY_V4), hash)
    );
}

#[test]
fn a_packet_too_big_to_wrap_gets_the_mtu_it_may_use() {
    if !require_root("a_packet_too_big_to_wrap_gets_the_mtu_it_may_use") {
        return;
    }
    let mut lab = lab();
    // IPv4: 1481 bytes + 20 exceed lb0's 1500: "fragmentation needed", MTU 1480.
    let frame = v4(C4, VIP4I, tcp(42000, 80, ACK)).pad(1481 - 40);
    let input = frame.bytes();
    let out = lab.expect("v4 too big", &input, Reason::ReplyTooBig, XDP_TX);
    let mut want = CLIENT_MAC.to_vec();
    want.extend_from_slice(&LB_MAC);
    want.extend_from_slice(&[0x08, 0x00]);
    let mut ip = vec![0x45, 0xc0, 0, 92, 0, 0, 0, 0, 64, 1, 0, 0];
    ip.extend_from_slice(&input[30..34]); // from the VIP
    ip.extend_from_slice(&input[26..30]); // to the client
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut icmp = vec![3, 4, 0, 0, 0, 0, 0x05, 0xc8];
    icmp.extend_from_slice(&input[14..14 + 64]);
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    want.extend_from_slice(&ip);
    want.extend_from_slice(&icmp);
    assert_eq!(out, want, "v4 too big: reply bytes");

    // IPv6: 1461 + 40 exceed 1500: "packet too big", MTU 1460.
    let frame = v6(C6, VIP6I, tcp(42001, 443, ACK)).pad(1461 - 60);
    let input = frame.bytes();
    let out = lab.expect("v6 too big", &input, Reason::ReplyTooBig, XDP_TX);
    let mut want = CLIENT_MAC.to_vec();
    want.extend_from_slice(&LB_MAC);
    want.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0, 0, 112, 58, 64]);
    let (vip, client) = (&input[38..54], &input[22..38]);
    want.extend_from_slice(vip);
    want.extend_from_slice(client);
    let mut icmp = vec![2, 0, 0, 0, 0, 0, 0x05, 0xb4];
    icmp.extend_from_slice(&input[14..14 + 104]);
    let c = checksum6(vip, client, 58, &icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    want.extend_from_slice(&icmp);
    assert_eq!(out, want, "v6 too big: reply bytes");

    // An ICMP error about a flow that is itself too big is dropped: no ICMP about ICMP.
    let quoted = ip_packet(&v4(VIP4I, C4, tcp(80, 42002, ACK)).pad(1480), 1460);
    let input = icmp_error(true, VIP4I, FRAG_NEEDED_1280, &quoted).bytes();
    let out = lab.expect("too big ICMP error", &input, Reason::DropTooBig, 1);
    assert_eq!(out, input);
}

#[test]
fn route_failures_have_their_own_reasons_and_change_nothing() {
    if !require_root("route_failures_have_their_own_reasons_and_change_nothing") {
        return;
    }
    let mut lab = lab();
    let n = lab.ns.name.clone();
    let input = v4(C4, VIP4I, tcp(43000, 80, ACK)).bytes();
    let cases: [(&str, &str, &str, Reason); 3] = [
        (
            "no neighbour",
            "ip -n {n} neigh del 198.18.2.1 dev lb0",
            "ip -n {n} neigh replace 198.18.2.1 lladdr 02:00:00:00:00:71 dev lb0 nud permanent",
            Reason::DropFibNoNeighbour,
        ),
        (
            "forwarding off",
            "ip netns exec {n} sysctl -qw net.ipv4.conf.lb0.forwarding=0",
            "ip netns exec {n} sysctl -qw net.ipv4.conf.lb0.forwarding=1",
            Reason::DropFibForwardingOff,
        ),
        (
            "no route",
            "ip -n {n} route del 198.18.3.0/24",
            "ip -n {n} route add 198.18.3.0/24 via 198.18.2.1",
            Reason::DropFibNoRoute,
        ),
    ];
    for (what, break_it, mend_it, reason) in cases {
        sh(&break_it.replace("{n}", &n));
        let drops = lab.s.dp.maps().vip_stats(6).unwrap().drops;
        let out = lab.expect(what, &input, reason, 1);
        assert_eq!(out, input, "{what}: the frame is untouched");
        assert_eq!(
            lab.s.dp.maps().vip_stats(6).unwrap().drops,
            drops + 1,
            "{what}: counted as the VIP's drop"
        );
        sh(&mend_it.replace("{n}", &n));
        lab.expect(what, &input, Reason::Forwarded, XDP_TX);
    }
    // No outer source for the family: a named drop, not a packet from 0.0.0.0.
    lab.s.dp.maps().set_encap(&Ipip::default().encap()).unwrap();
    let out = lab.expect("no source", &input, Reason::DropEncapConfig, 1);
    assert_eq!(out, input);
}

#[test]
fn icmp_errors_reach_the_backend_of_the_flow_they_quote() {
    if !require_root("icmp_errors_reach_the_backend_of_the_flow_they_quote") {
        return;
    }
    let mut lab = lab();
    // ipip, IPv4: "fragmentation needed" about a TCP flow, and about a UDP flow.
    for (vip, backend_sent, port) in [
        (5, v4(VIP4I, C4, tcp(80, 44000, ACK)).pad(100), 80),
        (6, v4(VIP4I, C4, udp(53, 44001)).pad(100), 53),
    ] {
        let input =
            icmp_error(true, VIP4I, FRAG_NEEDED_1280, &ip_packet(&backend_sent, 28)).bytes();
        let mut key = flow_key(&backend_sent);
        std::mem::swap(&mut key.src, &mut key.dst);
        std::mem::swap(&mut key.sport_be, &mut key.dport_be);
        assert_eq!(key.dport_be, u16::to_be(port));
        let (id, hash) = lab.owner(vip, &key);
        let stats = lab.s.dp.maps().backend_stats(id).unwrap();
        let out = lab.expect("v4 error", &input, Reason::ForwardedIcmpError, XDP_TX);
        let want = encapsulated(lab.lb_mac, &input, 14, backend_addr(id, FAMILY_V4), hash);
        assert_eq!(out, want, "v4 ICMP error: output bytes");
        assert_eq!(
            lab.s.dp.maps().backend_stats(id).unwrap(),
            stats,
            "an ICMP error is not counted as the backend's traffic"
        );
    }
    // ipip, IPv6: "packet too big".
    let sent = v6(VIP6I, C6, tcp(443, 44002, ACK)).pad(100);
    let input = icmp_error(false, VIP6I, PTB_1280, &ip_packet(&sent, 48)).bytes();
    let key = flow_key(&v6(C6, VIP6I, tcp(44002, 443, ACK)));
    let (id, hash) = lab.owner(7, &key);
    let out = lab.expect("v6 error", &input, Reason::ForwardedIcmpError, XDP_TX);
    assert_eq!(
        out,
        encapsulated(lab.lb_mac, &input, 14, backend_addr(id, FAMILY_V6), hash)
    );
    // l2-dsr: the frame goes to the flow's backend's MAC, untouched otherwise.
    let sent = v4(VIP4, C4, tcp(80, 44003, ACK));
    let input = icmp_error(true, VIP4, FRAG_NEEDED_1280, &ip_packet(&sent, 28)).bytes();
    let key = flow_key(&v4(C4, VIP4, tcp(44003, 80, ACK)));
    let (id, _) = lab.owner(0, &key);
    let mac = lab.s.vips[0].backends.iter().find(|b| b.0 == id).unwrap().3;
    let out = lab.expect("l2-dsr error", &input, Reason::ForwardedIcmpError, XDP_TX);
    assert_eq!(out, forwarded(&input, mac));
    let sent = v6("2001:db8::10", C6, tcp(443, 44004, ACK));
    let input = icmp_error(false, "2001:db8::10", PTB_1280, &ip_packet(&sent, 48)).bytes();
    let (id, _) = lab.owner(1, &flow_key(&v6(C6, "2001:db8::10", tcp(44004, 443, ACK))));
    let mac = lab.s.vips[1].backends.iter().find(|b| b.0 == id).unwrap().3;
    let out = lab.expect(
        "l2-dsr v6 error",
        &input,
        Reason::ForwardedIcmpError,
        XDP_TX,
    );
    assert_eq!(out, forwarded(&input, mac));

    // In a changed slot an error follows the flow as its next (non-SYN) packet would:
    // to the previous owner when the flow has no entry. Nothing is recorded.
    let vip = lab.s.vips.remove(5);
    let table = install_with(&mut lab.s.dp, &vip, &[3, 1], 2, FWD_IPIP, ADDR_ICMP_ECHO);
    lab.s.vips.insert(5, vip);
    lab.s.tables[5] = table;
    let (_, slots) = lab.s.dp.maps().table_slots(6).unwrap();
    let port = (45000..u16::MAX)
        .find(|&p| {
            let key = flow_key(&v4(C4, VIP4I, tcp(p, 80, ACK)));
            let slot = slots[table_slot(flow_hash(&key, SEED), slots.len() as u32) as usize];
            Slot::unpack(slot).is_changed()
        })
        .unwrap();
    let key = flow_key(&v4(C4, VIP4I, tcp(port, 80, ACK)));
    let hash = flow_hash(&key, SEED);
    let slot = Slot::unpack(slots[table_slot(hash, slots.len() as u32) as usize]);
    let sent = v4(VIP4I, C4, tcp(80, port, ACK));
    let input = icmp_error(true, VIP4I, FRAG_NEEDED_1280, &ip_packet(&sent, 28)).bytes();
    let out = lab.expect("changed slot", &input, Reason::ForwardedIcmpError, XDP_TX);
    let want = encapsulated(
        lab.lb_mac,
        &input,
        14,
        backend_addr(slot.previous, FAMILY_V4),
        hash,
    );
    assert_eq!(out, want, "to the slot's previous owner");
    assert_eq!(
        lab.s.dp.maps().flows(),
        vec![],
        "an ICMP error records nothing"
    );
}

#[test]
fn unrelated_and_malformed_icmp_is_counted_and_left_alone() {
    if !require_root("unrelated_and_malformed_icmp_is_counted_and_left_alone") {
        return;
    }
    let mut lab = lab();
    let quote = |f: Frame, n: usize| ip_packet(&f, n);
    let mut bad_version = quote(v4(VIP4I, C4, tcp(80, 46000, ACK)), 28);
    bad_version[0] = 0x55;
    let cases: Vec<(&str, Vec<u8>, Reason)> = vec![
        (
            "quotes a port that is no VIP's",
            quote(v4(VIP4I, C4, tcp(8080, 46001, ACK)), 28),
            Reason::PassIcmpUnrelated,
        ),
        (
            "quotes an ICMP packet",
            quote(
                v4(
                    VIP4I,
                    C4,
                    L4::Raw {
                        proto: 1,
                        payload: vec![0; 8],
                    },
                ),
                28,
            ),
            Reason::PassIcmpUnrelated,
        ),
        (
            "quotes a packet from another address",
            quote(v4("198.18.0.99", C4, tcp(80, 46002, ACK)), 28),
            Reason::PassIcmpUnrelated,
        ),
        (
            "quote cut inside the IP header",
            quote(v4(VIP4I, C4, tcp(80, 46003, ACK)), 12),
            Reason::DropIcmpMalformed,
        ),
        (
            "quote cut before the ports",
            quote(v4(VIP4I, C4, tcp(80, 46004, ACK)), 22),
            Reason::DropIcmpMalformed,
        ),
        ("quoted version 5", bad_version, Reason::DropIcmpMalformed),
    ];
    for (what, quoted, reason) in cases {
        let input = icmp_error(true, VIP4I, FRAG_NEEDED_1280, &quoted).bytes();
        let out = lab.expect(what, &input, reason, reason.action());
        assert_eq!(out, input, "{what}: untouched");
    }
    // Not a VIP address at all: the host's.
    let sent = v4("198.18.0.99", C4, tcp(80, 46005, ACK));
    let input = icmp_error(true, "198.18.0.99", FRAG_NEEDED_1280, &ip_packet(&sent, 28)).bytes();
    let out = lab.expect("not a VIP address", &input, Reason::PassNotVip, 2);
    assert_eq!(out, input);
}

#[test]
fn echo_requests_to_a_vip_are_answered() {
    if !require_root("echo_requests_to_a_vip_are_answered") {
        return;
    }
    let mut lab = lab();
    // IPv4: TTL 50 in, 64 out; a valid checksum in, a valid one out.
    let mut payload = vec![8, 0, 0, 0, 0x12, 0x34, 0, 7, b'x', b'l', b'b', b'!'];
    let c = checksum(&payload);
    payload[2..4].copy_from_slice(&c.to_be_bytes());
    let mut input = v4(C4, VIP4I, L4::Raw { proto: 1, payload }).bytes();
    input[22] = 50;
    input[24..26].fill(0);
    let c = checksum(&input[14..34]);
    input[24..26].copy_from_slice(&c.to_be_bytes());
    let out = lab.expect("v4 echo", &input, Reason::ReplyIcmpEcho, XDP_TX);
    let mut want = input.clone();
    want[..6].copy_from_slice(&CLIENT_MAC);
    want[6..12].copy_from_slice(&LB_MAC);
    want[22] = 64;
    want[26..30].copy_from_slice(&input[30..34]);
    want[30..34].copy_from_slice(&input[26..30]);
    want[24..26].fill(0);
    let c = checksum(&want[14..34]);
    want[24..26].copy_from_slice(&c.to_be_bytes());
    want[34] = 0;
    want[36..38].fill(0);
    let c = checksum(&want[34..]);
    want[36..38].copy_from_slice(&c.to_be_bytes());
    assert_eq!(out, want, "v4 echo reply bytes");

    // IPv6: hop limit 50 in, 64 out.
    let mut payload = vec![128, 0, 0, 0, 0x12, 0x34, 0, 8, b'x', b'l', b'b', b'6'];
    let (c6, v6a) = (
        C6.parse::<std::net::Ipv6Addr>().unwrap().octets(),
        VIP6I.parse::<std::net::Ipv6Addr>().unwrap().octets(),
    );
    let c = checksum6(&c6, &v6a, 58, &payload);
    payload[2..4].copy_from_slice(&c.to_be_bytes());
    let mut input = v6(C6, VIP6I, L4::Raw { proto: 58, payload }).bytes();
    input[21] = 50;
    let out = lab.expect("v6 echo", &input, Reason::ReplyIcmpEcho, XDP_TX);
    let mut want = input.clone();
    want[..6].copy_from_slice(&CLIENT_MAC);
    want[6..12].copy_from_slice(&LB_MAC);
    want[21] = 64;
    want[22..38].copy_from_slice(&v6a);
    want[38..54].copy_from_slice(&c6);
    want[54] = 129;
    want[56..58].fill(0);
    let c = checksum6(&v6a, &c6, 58, &want[54..]);
    want[56..58].copy_from_slice(&c.to_be_bytes());
    assert_eq!(out, want, "v6 echo reply bytes");

    // An echo reply (or anything else) to a VIP address is the host's.
    let input = v4(
        C4,
        VIP4I,
        L4::Raw {
            proto: 1,
            payload: vec![0; 8],
        },
    )
    .bytes();
    let out = lab.expect("echo reply", &input, Reason::PassIcmp, 2);
    assert_eq!(out, input);
}
