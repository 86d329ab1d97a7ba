//! Stage 4b (`ipip`): the route to a backend, from the kernel's FIB (`bpf_fib_lookup`):
//! the egress interface, our MAC there, the next hop's MAC, and the route's MTU. The
//! lookup is made from the receiving interface's point of view (flags 0), as the
//! kernel's own forwarding would make it, so policy routing, ECMP and the neighbour
//! table all apply. Each way it can fail has its own reason.

use aya_ebpf::{helpers::bpf_fib_lookup, programs::XdpContext};
use lb_common::{FAMILY_V4, Reason};

/// `struct bpf_fib_lookup` (linux/bpf.h) as eight 8-byte words: the program may only
/// touch its stack with aligned accesses, and the compiler merges field stores of a
/// plain struct into wider, misaligned ones. Byte offsets: family 0, protocol 1, ports
/// 2-5, total length in / MTU out 6, ifindex 8, flow info 12, source 16, destination
/// 32, VLAN 48, our MAC 52, next hop's MAC 58.
#[repr(C, align(8))]
struct FibParams([u64; 8]);

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// `BPF_FIB_LKUP_RET_*` codes that have a reason of their own.
const RET_SUCCESS: i64 = 0;
const RET_FWD_DISABLED: i64 = 5;
const RET_NO_NEIGH: i64 = 7;
const RET_FRAG_NEEDED: i64 = 8;

/// Where a packet leaves: the interface, and words 6 and 7 of the answer, which hold
/// our MAC (bytes 52-57) and the next hop's (58-63).
pub(crate) struct NextHop {
    pub ifindex: u32,
    macs: (u64, u64),
}

impl NextHop {
    /// Writes the next hop's MAC as destination and ours as source at `eth`.
    ///
    /// # Safety
    /// `eth` must be 12 writable bytes.
    #[inline(always)]
    pub(crate) unsafe fn write_macs(&self, eth: *mut u8) {
        let (w6, w7) = self.macs;
        // SAFETY: the caller vouches for the 12 bytes; unaligned stores are single
        // stores here (packet memory, misaligned access allowed).
        unsafe {
            eth.cast::<u16>().write_unaligned((w7 >> 16) as u16);
            eth.add(2).cast::<u32>().write_unaligned((w7 >> 32) as u32);
            eth.add(6).cast::<u32>().write_unaligned((w6 >> 32) as u32);
            eth.add(10).cast::<u16>().write_unaligned(w7 as u16);
        }
    }
}

/// The lookup's answer.
pub(crate) enum Route {
    Via(NextHop),
    /// The packet (of `tot_len` bytes) exceeds the route's MTU, which is this.
    TooBig(u16),
}

/// The route for an IP packet of `tot_len` bytes and protocol `proto` from `src` to
/// `dst` (addresses as in `FlowKey`, IPv4 in the first 4 bytes), `flowinfo` the IPv6
/// flow label in network order (0 for IPv4).
#[inline(always)]
pub(crate) fn route(
    ctx: &XdpContext,
    family: u8,
    proto: u8,
    src: &[u8; 16],
    dst: &[u8; 16],
    tot_len: u16,
    flowinfo: u32,
) -> Result<Route, Reason> {
    let mut p = FibParams([0; 8]);
    let af = if family == FAMILY_V4 {
        AF_INET
    } else {
        AF_INET6
    };
    let words = [
        u64::from(af) | u64::from(proto) << 8 | u64::from(tot_len) << 48,
        ctx.ingress_ifindex() as u64 | u64::from(flowinfo) << 32,
        pair(src, 0),
        pair(src, 2),
        pair(dst, 0),
        pair(dst, 2),
        0,
        0,
    ];
    let mut i = 0;
    while i < 8 {
        // SAFETY: in bounds and aligned. Volatile, so the compiler keeps eight plain
        // 8-byte stores (no `memset` or `memcpy` call, nothing merged).
        unsafe { (&raw mut p.0[i]).write_volatile(words[i]) };
        i += 1;
    }
    // SAFETY: `p` is an initialised `struct bpf_fib_lookup` on our stack, and its size
    // is what we pass.
    let rc = unsafe { bpf_fib_lookup(ctx.ctx.cast(), (&raw mut p).cast(), 64, 0) };
    match rc {
        RET_SUCCESS => Ok(Route::Via(NextHop {
            ifindex: p.0[1] as u32,
            macs: (p.0[6], p.0[7]),
        })),
        RET_FRAG_NEEDED => Ok(Route::TooBig((p.0[0] >> 48) as u16)),
        RET_NO_NEIGH => Err(Reason::DropFibNoNeighbour),
        RET_FWD_DISABLED => Err(Reason::DropFibForwardingOff),
        _ => Err(Reason::DropFibNoRoute),
    }
}

/// Words `i` and `i + 1` of an address, as one 8-byte word laid out as in memory.
#[inline(always)]
fn pair(a: &[u8; 16], i: usize) -> u64 {
    let w = lb_common::hash::word;
    u64::from(w(a, i)) | u64::from(w(a, i + 1)) << 32
}
