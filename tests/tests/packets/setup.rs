//! The packet tests' setup: five VIPs installed through the real map-writing code, a
//! run of the program on one frame, and the counters before and after.

use std::net::{Ipv4Addr, Ipv6Addr};

use aya::programs::{TestRun, TestRunOptions};
use lb_common::{
    BACKEND_LIVE, Backend, FAMILY_V4, FAMILY_V6, FWD_L2_DSR, PROTO_TCP, PROTO_UDP, VipInfo, VipKey,
    maps::DEFAULT_TABLE_SIZE,
};
use xlb::{
    dataplane::{Dataplane, LoadOptions, TableWrite},
    table::{self, Weighted},
};
use xlb_lab::{PinDir, packet::LB_MAC};

pub(crate) use xlb_lab::packet::flow_key;

pub(crate) const SEED: u32 = 0x5eed_0001;
const IF_MAC: [u8; 6] = LB_MAC;

/// A VIP of the test setup and its backends (id, name, weight, MAC).
pub(crate) struct TestVip {
    pub(crate) key: VipKey,
    pub(crate) id: u32,
    pub(crate) backends: Vec<(u32, &'static str, u32, [u8; 6])>,
}

fn mac(n: u8) -> [u8; 6] {
    [0x02, 0xbe, 0, 0, 0, n]
}

pub(crate) fn v4_key(addr: &str, port: u16, proto: u8) -> VipKey {
    let mut a = [0u8; 16];
    a[..4].copy_from_slice(&addr.parse::<Ipv4Addr>().unwrap().octets());
    VipKey {
        addr: a,
        port_be: port.to_be(),
        proto,
        family: FAMILY_V4,
    }
}

pub(crate) fn v6_key(addr: &str, port: u16, proto: u8) -> VipKey {
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

/// Backend `id`'s address: 198.18.3.`10 + id`, or 2001:db8:3::`id` (hex).
pub(crate) fn backend_addr(id: u32, family: u8) -> [u8; 16] {
    let mut a = [0u8; 16];
    if family == FAMILY_V4 {
        a[..4].copy_from_slice(&[198, 18, 3, 10 + id as u8]);
    } else {
        a = format!("2001:db8:3::{id:x}")
            .parse::<Ipv6Addr>()
            .unwrap()
            .octets();
    }
    a
}

/// Installs `vip` (`l2-dsr`, echo not answered) through the control-plane code: backends
/// first, then the VIP, then the table built by `table::build`. Returns the backend id
/// per slot.
pub(crate) fn install(
    dp: &mut Dataplane,
    vip: &TestVip,
    weights: &[u32],
    generation: u32,
) -> Vec<u32> {
    install_with(dp, vip, weights, generation, FWD_L2_DSR, 0)
}

/// `install` with a forwarding method and the VIP address's ICMP flags.
pub(crate) fn install_with(
    dp: &mut Dataplane,
    vip: &TestVip,
    weights: &[u32],
    generation: u32,
    forwarding: u32,
    addr_flags: u16,
) -> Vec<u32> {
    let maps = dp.maps();
    for &(id, _, _, mac) in &vip.backends {
        let backend = Backend {
            mac,
            flags: BACKEND_LIVE,
            vip_id: vip.id,
            family: vip.key.family,
            addr: backend_addr(id, vip.key.family),
            vip_key: vip.key,
            ..Backend::default()
        };
        maps.put_backend(id, &backend).unwrap();
    }
    maps.put_vip(
        &vip.key,
        &VipInfo {
            vip_id: vip.id,
            forwarding,
        },
        addr_flags,
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

pub(crate) struct Setup {
    pub(crate) dp: Dataplane,
    pub(crate) vips: Vec<TestVip>,
    pub(crate) tables: Vec<Vec<u32>>,
    pub(crate) _pins: PinDir,
}

pub(crate) fn setup() -> Setup {
    setup_with(4096)
}

/// The setup with a flow table of `flow_capacity` entries.
pub(crate) fn setup_with(flow_capacity: u32) -> Setup {
    let pins = PinDir::new("pkt");
    let mut dp = Dataplane::load(&LoadOptions {
        pin_dir: pins.path().into(),
        flow_capacity,
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

pub(crate) fn run(dp: &mut Dataplane, input: &[u8]) -> (u32, Vec<u8>) {
    run_on(dp, input, 0)
}

/// `run` as if the frame came in on interface `ifindex` (of the calling thread's
/// network namespace; 0: loopback), which the program's FIB lookups start from.
pub(crate) fn run_on(dp: &mut Dataplane, input: &[u8], ifindex: u32) -> (u32, Vec<u8>) {
    let mut out = vec![0u8; input.len() + 64];
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
    // egress_ifindex. The kernel wants data_end to be the frame's length (data is where
    // the frame starts after metadata: none).
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(input.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    let opts = TestRunOptions {
        data_in: Some(input),
        data_out: Some(&mut out),
        ctx_in: (ifindex != 0).then_some(&ctx[..]),
        ..TestRunOptions::default()
    };
    let r = dp.program().unwrap().test_run(opts).unwrap();
    out.truncate(r.data_size_out as usize);
    (r.return_value, out)
}

/// Counter snapshot: per reason, per backend, per VIP.
#[derive(Debug, PartialEq, Clone)]
pub(crate) struct Counters {
    pub(crate) reasons: Vec<u64>,
    pub(crate) backends: Vec<(u64, u64, u64)>,
    /// packets, bytes, new flows, drops, stateful packets.
    pub(crate) vips: Vec<(u64, u64, u64, u64, u64)>,
}

pub(crate) fn counters(dp: &mut Dataplane) -> Counters {
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
                (s.packets, s.bytes, s.new_flows, s.drops, s.stateful)
            })
            .collect(),
    }
}

pub(crate) const C4: &str = "198.18.1.2";
pub(crate) const C6: &str = "2001:db8:1::2";
pub(crate) const VIP4: &str = "198.18.0.10";
pub(crate) const VIP6: &str = "2001:db8::10";

/// The output frame xlb must produce for `input` sent to a backend with `backend_mac`.
pub(crate) fn forwarded(input: &[u8], backend_mac: [u8; 6]) -> Vec<u8> {
    let mut out = input.to_vec();
    out[..6].copy_from_slice(&backend_mac);
    out[6..12].copy_from_slice(&IF_MAC);
    out
}
