//! `xlb_decap`: the backend side of `forwarding = "ipip"`, attached with `xlb decap
//! attach IFACE --from PREFIX`. For IPv4-in-IPv4 (protocol 4) and IPv6-in-IPv6 (next
//! header 41) packets addressed to one of this host's addresses (`xlb_dcap_local4/6`)
//! from a load-balancer source (`xlb_dcap_from4/6`, longest-prefix match), it removes
//! the outer header and passes the inner packet to the stack, which delivers it to the
//! VIP held on loopback. Encapsulated packets to this host from any other source are
//! dropped: the host is no open tunnel endpoint. Everything else passes untouched.
//!
//! XDP rather than TC: the outer header goes before the kernel builds an skb, so the
//! stack, GRO and sockets see only the inner packet, and the program is attached and
//! pinned like the load balancer's own. A congestion mark on the outer header is
//! carried inward (RFC 6040).
#![no_std]
#![no_main]
#![expect(
    clippy::large_stack_frames,
    reason = "clippy counts every temporary before optimisation; compiled, the program \
              stays within the verifier's 512 bytes (it loads, and its fixtures run it)"
)]

use aya_ebpf::{
    btf_maps::{HashMap, LpmTrie, PerCpuArray, lpm_trie::Key},
    helpers::bpf_xdp_adjust_head,
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use lb_common::{
    ReasonStats, csum,
    decap::{DECAP_REASON_COUNT, DecapReason, MAX_LOCAL, MAX_PREFIXES},
    wire::{ETH_HLEN, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, PROTO_IPIP, PROTO_IPV6},
};

/// Load-balancer source prefixes, IPv4 (value: unused, 1).
#[btf_map(name = "xlb_dcap_from4")]
static FROM_V4: LpmTrie<[u8; 4], u32, { MAX_PREFIXES as usize }> = LpmTrie::new();

/// Load-balancer source prefixes, IPv6.
#[btf_map(name = "xlb_dcap_from6")]
static FROM_V6: LpmTrie<[u8; 16], u32, { MAX_PREFIXES as usize }> = LpmTrie::new();

/// This host's IPv4 addresses (value: unused, 1).
#[btf_map(name = "xlb_dcap_local4")]
static LOCAL_V4: HashMap<[u8; 4], u32, { MAX_LOCAL as usize }> = HashMap::new();

/// This host's IPv6 addresses.
#[btf_map(name = "xlb_dcap_local6")]
static LOCAL_V6: HashMap<[u8; 16], u32, { MAX_LOCAL as usize }> = HashMap::new();

/// Verdict -> per-CPU packets and bytes.
#[btf_map(name = "xlb_dcap_stats")]
static STATS: PerCpuArray<ReasonStats, { DECAP_REASON_COUNT as usize }> = PerCpuArray::new();

/// The ECN field's "congestion experienced".
const ECN_CE: u8 = 3;

#[xdp]
pub(crate) fn xlb_decap(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let reason = match decap(&ctx) {
        Ok(()) => DecapReason::Decapsulated,
        Err(reason) => reason,
    };
    if let Some(s) = STATS.get_ptr_mut(reason.index()) {
        // SAFETY: this CPU's slot from bpf_map_lookup_elem.
        unsafe {
            (*s).packets += 1;
            (*s).bytes += len;
        }
    }
    reason.action()
}

/// A pointer to `N` bytes at `offset`, or `None` past the end of the packet.
#[inline(always)]
fn bytes<const N: usize>(ctx: &XdpContext, offset: usize) -> Option<*mut [u8; N]> {
    let start = ctx.data();
    // Verifier: this comparison against data_end is what makes the access legal.
    if start + offset + N > ctx.data_end() {
        return None;
    }
    Some((start + offset) as *mut [u8; N])
}

#[inline(always)]
fn decap(ctx: &XdpContext) -> Result<(), DecapReason> {
    use DecapReason::PassNotEncapsulated;
    let eth = bytes::<ETH_HLEN>(ctx, 0).ok_or(PassNotEncapsulated)?;
    // SAFETY: `bytes` checked the range.
    let mut proto = unsafe { u16::from_be_bytes([(*eth)[12], (*eth)[13]]) };
    let mut l3 = ETH_HLEN;
    if proto == ETH_P_8021Q {
        let tag = bytes::<4>(ctx, ETH_HLEN).ok_or(PassNotEncapsulated)?;
        // SAFETY: as above.
        proto = unsafe { u16::from_be_bytes([(*tag)[2], (*tag)[3]]) };
        l3 += 4;
    }
    match proto {
        ETH_P_IP => v4(ctx, l3),
        ETH_P_IPV6 => v6(ctx, l3),
        _ => Err(PassNotEncapsulated),
    }
}

#[inline(always)]
fn v4(ctx: &XdpContext, l3: usize) -> Result<(), DecapReason> {
    use DecapReason::*;
    let ip = bytes::<20>(ctx, l3).ok_or(PassNotEncapsulated)?;
    // SAFETY: `bytes` checked the 20 bytes; addresses are read as words.
    let (vihl, tos, frag, proto, src, dst) = unsafe {
        let b = ip.cast::<u8>();
        (
            *b,
            *b.add(1),
            u16::from_be_bytes([*b.add(6), *b.add(7)]),
            *b.add(9),
            b.add(12).cast::<[u8; 4]>().read_unaligned(),
            b.add(16).cast::<[u8; 4]>().read_unaligned(),
        )
    };
    // Only what xlb sends: a 20-byte outer header carrying IPv4.
    if vihl != 0x45 || proto != PROTO_IPIP {
        return Err(PassNotEncapsulated);
    }
    if LOCAL_V4.get_ptr(dst).is_none() {
        return Err(PassNotLocal);
    }
    if frag & 0x3fff != 0 {
        return Err(DropFragment);
    }
    let key = Aligned(Key::new(32, src));
    if FROM_V4.get(&key.0).is_none() {
        return Err(DropWrongSource);
    }
    let inner = bytes::<20>(ctx, l3 + 20).ok_or(DropTruncated)?;
    // SAFETY: `bytes` checked the inner header's 20 bytes.
    unsafe {
        let b = inner.cast::<u8>();
        if *b >> 4 != 4 {
            return Err(DropTruncated);
        }
        if tos & 3 == ECN_CE {
            let old = *b.add(1);
            match old & 3 {
                0 => return Err(DropEcn),
                ECN_CE => {}
                _ => {
                    let new = old | ECN_CE;
                    *b.add(1) = new;
                    let check = u16::from_be_bytes([*b.add(10), *b.add(11)]);
                    let check = csum::replace16(
                        check,
                        u16::from_be_bytes([*b, old]),
                        u16::from_be_bytes([*b, new]),
                    );
                    [*b.add(10), *b.add(11)] = check.to_be_bytes();
                }
            }
        }
    }
    strip::<20>(ctx, l3)
}

#[inline(always)]
fn v6(ctx: &XdpContext, l3: usize) -> Result<(), DecapReason> {
    use DecapReason::*;
    let ip = bytes::<40>(ctx, l3).ok_or(PassNotEncapsulated)?;
    // SAFETY: `bytes` checked the 40 bytes.
    let (version, ecn, next, src, dst) = unsafe {
        let b = ip.cast::<u8>();
        (
            *b >> 4,
            (*b.add(1) >> 4) & 3,
            *b.add(6),
            b.add(8).cast::<[u8; 16]>().read_unaligned(),
            b.add(24).cast::<[u8; 16]>().read_unaligned(),
        )
    };
    if version != 6 || next != PROTO_IPV6 {
        return Err(PassNotEncapsulated);
    }
    let local = Aligned(dst);
    if LOCAL_V6.get_ptr(local.0).is_none() {
        return Err(PassNotLocal);
    }
    let key = Aligned(Key::new(128, src));
    if FROM_V6.get(&key.0).is_none() {
        return Err(DropWrongSource);
    }
    let inner = bytes::<40>(ctx, l3 + 40).ok_or(DropTruncated)?;
    // SAFETY: `bytes` checked the inner header's 40 bytes.
    unsafe {
        let b = inner.cast::<u8>();
        if *b >> 4 != 6 {
            return Err(DropTruncated);
        }
        if ecn == ECN_CE {
            match (*b.add(1) >> 4) & 3 {
                0 => return Err(DropEcn),
                // IPv6 has no header checksum to mend.
                _ => *b.add(1) |= ECN_CE << 4,
            }
        }
    }
    strip::<40>(ctx, l3)
}

/// A stack value aligned for the verifier, which rejects misaligned stack access.
#[repr(C, align(8))]
struct Aligned<T>(T);

/// Removes the `OUTER`-byte header after the link-layer header (`l3` bytes, 14 or
/// 18), which moves forward by as much.
#[inline(always)]
fn strip<const OUTER: usize>(ctx: &XdpContext, l3: usize) -> Result<(), DecapReason> {
    const { assert!(OUTER >= 18) };
    let from = bytes::<18>(ctx, 0).ok_or(DecapReason::DropTruncated)?;
    let to = bytes::<18>(ctx, OUTER).ok_or(DecapReason::DropTruncated)?;
    // SAFETY: `bytes` checked both ranges; they do not overlap (OUTER >= 18). Moved
    // back to front as 2-byte words: the link-layer header ends where the outer IP
    // header began.
    unsafe {
        let (from, to) = (from.cast::<u16>(), to.cast::<u16>());
        let words = l3 / 2;
        let mut i = 9;
        while i > 0 {
            i -= 1;
            if i < words {
                to.add(i).write_unaligned(from.add(i).read_unaligned());
            }
        }
    }
    // SAFETY: the helper checks the new start against the packet.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, i32::from(OUTER as u16)) } != 0 {
        return Err(DecapReason::DropTruncated);
    }
    Ok(())
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
