//! The benchmark's own packet path, around the load balancer under test:
//! - `xlb_gen`: the traffic generator. Run by BPF_PROG_TEST_RUN with
//!   BPF_F_TEST_XDP_LIVE_FRAMES on a client's interface, it writes the headers of
//!   `GEN_HEADERS` into each frame, gives it the next UDP source port of `GEN_FLOWS`
//!   ports (so the run spreads over that many flows) and transmits it (XDP_TX). The
//!   headers must be Ethernet + IPv4 without options + UDP with checksum 0, so the port
//!   needs no checksum update. They are rewritten every time because live frames are
//!   recycled without being reset: a forwarder that rewrites a frame in place (NAT, a
//!   MAC rewrite without a copy) would otherwise change what the generator sends next.
//! - `xlb_reflect`: the reference on the load balancer's interface: it counts an IPv4
//!   frame (`SINK`), writes the MACs in `REFLECT_MACS` and sends the frame back out
//!   (XDP_TX), the least any XDP forwarder does on this path; everything else (ARP, so
//!   that TCP clients can resolve the load balancer) goes to the stack.
//! - `xlb_sink`: on each backend, counts the IPv4 UDP frames that arrived (`SINK`), bare
//!   or wrapped in IPv4 (`ipip`), and drops them; everything else (ARP above all) goes
//!   to the stack.
//! - `xlb_lookup`: one lookup of the key in `LOOKUP_KEY` in `LOOKUP_FLOWS`, a map like
//!   xlb's flow table, then XDP_DROP: the cost of the one hash-map lookup that xlb's
//!   established-flow path cannot do without, measured next to the XDP_DROP floor.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::{Array, HashMap, PerCpuArray},
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use lb_common::{
    FlowKey, FlowValue,
    maps::{BPF_F_NO_PREALLOC, DEFAULT_FLOW_CAPACITY},
};

/// Byte offset of the UDP source port in Ethernet + IPv4 (no options) + UDP.
const UDP_SPORT: usize = 14 + 20;
/// First source port the generator uses.
const FIRST_PORT: u32 = 1024;

/// Ethernet + IPv4 + UDP headers.
const HEADERS: usize = 14 + 20 + 8;

/// The headers every generated frame starts with.
#[btf_map(name = "gen_headers")]
static GEN_HEADERS: Array<[u8; HEADERS], 1> = Array::new();

/// Number of flows (distinct source ports) the generator cycles through.
#[btf_map(name = "gen_flows")]
static GEN_FLOWS: Array<u32, 1> = Array::new();

/// Frames generated so far on this CPU.
#[btf_map(name = "gen_seq")]
static GEN_SEQ: PerCpuArray<u32, 1> = PerCpuArray::new();

/// Destination then source MAC for `xlb_reflect`.
#[btf_map(name = "reflect_macs")]
static REFLECT_MACS: Array<[u8; 12], 1> = Array::new();

/// Frames this sink (or reflector) saw.
#[btf_map(name = "sink")]
static SINK: PerCpuArray<u64, 1> = PerCpuArray::new();

/// The key `xlb_lookup` looks up (a map value may be a lookup key; no stack copy).
#[btf_map(name = "lookup_key")]
static LOOKUP_KEY: Array<FlowKey, 1> = Array::new();

/// Shaped like `xlb_flows`: same key and value types, capacity and flags.
#[btf_map(name = "lookup_flows")]
static LOOKUP_FLOWS: HashMap<
    FlowKey,
    FlowValue,
    { DEFAULT_FLOW_CAPACITY as usize },
    { BPF_F_NO_PREALLOC as usize },
> = HashMap::new();

#[xdp]
pub(crate) fn xlb_gen(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + HEADERS > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    let Some(headers) = GEN_HEADERS.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: the headers lie inside the packet.
    unsafe { *(start as *mut [u8; HEADERS]) = *headers };
    let flows = GEN_FLOWS.get(0).copied().unwrap_or(1).max(1);
    let Some(seq) = GEN_SEQ.get_ptr_mut(0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: per-CPU slot from bpf_map_lookup_elem; the port lies inside the packet.
    unsafe {
        let n = *seq;
        *seq = n.wrapping_add(1);
        let port = (FIRST_PORT + n % flows) as u16;
        *((start + UDP_SPORT) as *mut [u8; 2]) = port.to_be_bytes();
    }
    xdp_action::XDP_TX
}

#[xdp]
pub(crate) fn xlb_reflect(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + 14 > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: the EtherType lies inside the packet.
    if unsafe { *((start + 12) as *const [u8; 2]) } != [0x08, 0x00] {
        return xdp_action::XDP_PASS;
    }
    let Some(macs) = REFLECT_MACS.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    count();
    // SAFETY: the first 12 bytes lie inside the packet.
    unsafe { *(start as *mut [u8; 12]) = *macs };
    xdp_action::XDP_TX
}

/// Byte offset of the IPv4 protocol field behind an Ethernet header.
const IPV4_PROTO: usize = 14 + 9;

#[xdp]
pub(crate) fn xlb_sink(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + IPV4_PROTO + 1 > ctx.data_end() {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: both fields lie inside the packet.
    let (ethertype, proto) = unsafe {
        (
            *((start + 12) as *const [u8; 2]),
            *((start + IPV4_PROTO) as *const u8),
        )
    };
    // UDP, or IPv4 in IPv4 (the benchmark sends nothing else wrapped).
    if ethertype != [0x08, 0x00] || (proto != 17 && proto != 4) {
        return xdp_action::XDP_PASS;
    }
    count();
    xdp_action::XDP_DROP
}

#[xdp]
pub(crate) fn xlb_lookup(_ctx: XdpContext) -> u32 {
    let Some(key) = LOOKUP_KEY.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    match LOOKUP_FLOWS.get_ptr(key) {
        Some(_) => xdp_action::XDP_DROP,
        None => xdp_action::XDP_ABORTED,
    }
}

#[inline(always)]
fn count() {
    if let Some(n) = SINK.get_ptr_mut(0) {
        // SAFETY: per-CPU slot from bpf_map_lookup_elem; only this CPU writes it now.
        unsafe { *n += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable: the verifier rejects any reachable panic path.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
