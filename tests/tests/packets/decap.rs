//! The backend's decap program (`xlb_decap`) through BPF_PROG_TEST_RUN: what it
//! decapsulates, what it passes untouched, what it drops, and the counter of each.

use aya::{
    Ebpf,
    maps::{HashMap, LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::{TestRun, TestRunOptions, Xdp},
};
use lb_common::{
    ReasonStats,
    decap::{self, DecapReason},
    reason::{XDP_DROP, XDP_PASS},
};
use xlb::object::{DECAP_OBJECT, DECAP_PROGRAM_NAME};
use xlb_lab::{
    packet::{ACK, checksum, tcp, v4, v6},
    require_root,
};

const LB4: [u8; 4] = [198, 18, 200, 7];
const ME4: [u8; 4] = [198, 18, 3, 11];

fn v6a(s: &str) -> [u8; 16] {
    s.parse::<std::net::Ipv6Addr>().unwrap().octets()
}

/// The decap program, loaded with sources 198.18.200.0/24 and 2001:db8:200::/120, and
/// this host at 198.18.3.11 and 2001:db8:3::11.
fn load() -> Ebpf {
    let mut ebpf = Ebpf::load(DECAP_OBJECT).unwrap();
    let mut from4: LpmTrie<_, [u8; 4], u32> =
        LpmTrie::try_from(ebpf.map_mut(decap::FROM_V4).unwrap()).unwrap();
    from4
        .insert(&Key::new(24, [198, 18, 200, 0]), 1, 0)
        .unwrap();
    let mut from6: LpmTrie<_, [u8; 16], u32> =
        LpmTrie::try_from(ebpf.map_mut(decap::FROM_V6).unwrap()).unwrap();
    from6
        .insert(&Key::new(120, v6a("2001:db8:200::")), 1, 0)
        .unwrap();
    let mut local4: HashMap<_, [u8; 4], u32> =
        HashMap::try_from(ebpf.map_mut(decap::LOCAL_V4).unwrap()).unwrap();
    local4.insert(ME4, 1, 0).unwrap();
    let mut local6: HashMap<_, [u8; 16], u32> =
        HashMap::try_from(ebpf.map_mut(decap::LOCAL_V6).unwrap()).unwrap();
    local6.insert(v6a("2001:db8:3::11"), 1, 0).unwrap();
    let program: &mut Xdp = ebpf
        .program_mut(DECAP_PROGRAM_NAME)
        .unwrap()
        .try_into()
        .unwrap();
    program.load().unwrap();
    ebpf
}

fn counts(ebpf: &Ebpf) -> Vec<u64> {
    let stats: PerCpuArray<_, ReasonStats> =
        PerCpuArray::try_from(ebpf.map(decap::STATS).unwrap()).unwrap();
    DecapReason::ALL
        .iter()
        .map(|r| {
            stats
                .get(&r.index(), 0)
                .unwrap()
                .iter()
                .map(|s| s.packets)
                .sum()
        })
        .collect()
}

/// `inner` (an Ethernet frame) with an outer IPv4 header from `src` to `dst` inserted
/// after its `l3` bytes of link-layer header; `tos` on the outer header.
fn wrap4(inner: &[u8], l3: usize, src: [u8; 4], dst: [u8; 4], tos: u8, frag: u16) -> Vec<u8> {
    let mut h = vec![0x45, tos];
    h.extend_from_slice(&((inner.len() - l3 + 20) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(&frag.to_be_bytes());
    h.extend_from_slice(&[64, 4, 0, 0]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    [&inner[..l3], &h, &inner[l3..]].concat()
}

fn wrap6(inner: &[u8], src: [u8; 16], dst: [u8; 16], tc: u8) -> Vec<u8> {
    let mut h = vec![0x60 | tc >> 4, tc << 4, 0, 0];
    h.extend_from_slice(&((inner.len() - 14) as u16).to_be_bytes());
    h.extend_from_slice(&[41, 64]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    [&inner[..14], &h, &inner[14..]].concat()
}

#[test]
fn decap_fixtures() {
    if !require_root("decap_fixtures") {
        return;
    }
    let mut ebpf = load();
    let inner4 = v4("198.18.1.2", "198.18.0.30", tcp(40000, 80, ACK)).bytes();
    let inner4_ect = v4("198.18.1.2", "198.18.0.30", tcp(40000, 80, ACK))
        .tos(0xb8 | 2)
        .bytes();
    let mut inner4_ce = inner4_ect.clone();
    inner4_ce[15] |= 3;
    inner4_ce[24..26].fill(0);
    let c = checksum(&inner4_ce[14..34]);
    inner4_ce[24..26].copy_from_slice(&c.to_be_bytes());
    let inner6 = v6("2001:db8:1::2", "2001:db8::30", tcp(40001, 443, ACK)).bytes();
    let tagged = v4("198.18.1.2", "198.18.0.30", tcp(40002, 80, ACK))
        .vlan(5)
        .bytes();
    let (lb6, me6) = (v6a("2001:db8:200::9"), v6a("2001:db8:3::11"));
    use DecapReason::*;
    let cases: Vec<(&str, Vec<u8>, DecapReason, Vec<u8>)> = vec![
        (
            "IPv4 in IPv4 from a source in the range",
            wrap4(&inner4, 14, LB4, ME4, 0, 0x4000),
            Decapsulated,
            inner4.clone(),
        ),
        (
            "IPv6 in IPv6",
            wrap6(&inner6, lb6, me6, 0),
            Decapsulated,
            inner6.clone(),
        ),
        (
            "the 802.1Q tag stays",
            wrap4(&tagged, 18, LB4, ME4, 0, 0x4000),
            Decapsulated,
            tagged.clone(),
        ),
        (
            "CE on the outer header marks an ECN-capable inner packet",
            wrap4(&inner4_ect, 14, LB4, ME4, 3, 0x4000),
            Decapsulated,
            inner4_ce.clone(),
        ),
        (
            "CE on the outer header, inner not ECN-capable",
            wrap4(&inner4, 14, LB4, ME4, 3, 0x4000),
            DropEcn,
            Vec::new(),
        ),
        (
            "from a source outside the range",
            wrap4(&inner4, 14, [198, 18, 201, 7], ME4, 0, 0x4000),
            DropWrongSource,
            Vec::new(),
        ),
        (
            "IPv6 from a source outside the range",
            wrap6(&inner6, v6a("2001:db8:201::9"), me6, 0),
            DropWrongSource,
            Vec::new(),
        ),
        (
            "to an address that is not this host's",
            wrap4(&inner4, 14, LB4, [198, 18, 3, 99], 0, 0x4000),
            PassNotLocal,
            Vec::new(),
        ),
        (
            "an outer fragment",
            wrap4(&inner4, 14, LB4, ME4, 0, 0x2000),
            DropFragment,
            Vec::new(),
        ),
        (
            "inner header cut short",
            wrap4(&inner4, 14, LB4, ME4, 0, 0x4000)[..14 + 20 + 10].to_vec(),
            DropTruncated,
            Vec::new(),
        ),
        (
            "not encapsulated",
            inner4.clone(),
            PassNotEncapsulated,
            Vec::new(),
        ),
    ];
    for (what, input, reason, decapsulated) in cases {
        let before = counts(&ebpf);
        let program: &mut Xdp = ebpf
            .program_mut(DECAP_PROGRAM_NAME)
            .unwrap()
            .try_into()
            .unwrap();
        let mut out = vec![0u8; input.len() + 64];
        let r = program
            .test_run(TestRunOptions {
                data_in: Some(&input),
                data_out: Some(&mut out),
                ..TestRunOptions::default()
            })
            .unwrap();
        out.truncate(r.data_size_out as usize);
        let mut want = before;
        want[reason.index() as usize] += 1;
        assert_eq!(counts(&ebpf), want, "{what}: counters ({reason:?})");
        let action = if reason.action() == XDP_PASS {
            XDP_PASS
        } else {
            XDP_DROP
        };
        assert_eq!(r.return_value, action, "{what}: action");
        if reason == Decapsulated {
            assert_eq!(out, decapsulated, "{what}: the inner frame");
        } else {
            assert_eq!(out, input, "{what}: untouched");
        }
    }
}
