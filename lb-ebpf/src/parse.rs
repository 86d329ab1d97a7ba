//! Stage 1: parse Ethernet (plus one 802.1Q tag), IPv4 (any header length) or IPv6, and
//! the TCP/UDP ports into a `FlowKey`, with network-types' header structs. Nothing past `data_end` is ever read: every header
//! access goes through `header`, which the verifier also requires. A packet that cannot
//! be parsed fully is never forwarded; it is passed to the host unless it is aimed at a
//! VIP address, in which case it is dropped under its own reason. ICMP and ICMPv6 are
//! handed to `icmp` with their offsets.

use core::{mem::MaybeUninit, ptr::addr_of};

use aya_ebpf::programs::XdpContext;
use lb_common::{
    FAMILY_V4, FAMILY_V6, FlowKey, PROTO_TCP, PROTO_UDP, Reason,
    wire::{ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, PROTO_ICMP, PROTO_ICMPV6},
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
    vlan::VlanHdr,
};

use crate::vip::is_vip_address;

const IPV6_FRAGMENT: u8 = 44;
/// More-fragments flag and fragment offset bits of the IPv4 `frags` field.
const IPV4_FRAG_MASK: u16 = 0x3fff;

/// What parsing learned beyond the flow key.
pub(crate) struct Parsed {
    /// A TCP SYN without ACK: a client opening a connection, which starts a new flow
    /// even if an entry for its 5-tuple is left from an earlier connection.
    pub syn: bool,
    /// ICMP (IPv4) or ICMPv6: the key has the addresses and protocol, no ports.
    pub icmp: bool,
    /// Offset of the IP header (14, or 18 behind an 802.1Q tag).
    pub l3: usize,
    /// Offset of the TCP, UDP or ICMP header.
    pub l4: usize,
}

/// An address on the stack, aligned so that the compiler's word moves are aligned
/// (the verifier rejects misaligned stack access).
#[repr(C, align(8))]
pub(crate) struct Addr(pub [u8; 16]);

impl Addr {
    /// All zero, as two 8-byte stores (not a `memset` call).
    #[inline(always)]
    pub(crate) fn zero() -> Addr {
        let mut a = MaybeUninit::<Addr>::uninit();
        let words = a.as_mut_ptr().cast::<u64>();
        // SAFETY: 16 aligned bytes; volatile keeps them two stores.
        unsafe {
            words.write_volatile(0);
            words.add(1).write_volatile(0);
            a.assume_init()
        }
    }

    /// Sets 4-byte word `i` (0..4).
    #[inline(always)]
    pub(crate) fn set_word(&mut self, i: usize, w: [u8; 4]) {
        // SAFETY: `i` < 4 by the callers; aligned.
        unsafe {
            self.0
                .as_mut_ptr()
                .cast::<u32>()
                .add(i)
                .write(u32::from_ne_bytes(w))
        };
    }
}

/// A pointer to a `T` at `offset`, or `None` if the packet is shorter than that.
#[inline(always)]
pub(crate) fn header<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    // Verifier: this comparison against data_end is what makes the access legal.
    if start + offset + size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// Zeroes `key` with five 8-byte stores and returns it initialised. Zeroing it the usual
/// way (`FlowKey::default()`) compiles to a call of a `memset` subprogram, and on hosts
/// with return-thunk mitigations every call and return on the packet path is dear.
#[inline(always)]
pub(crate) fn zeroed_key(key: &mut MaybeUninit<FlowKey>) -> &mut FlowKey {
    const WORDS: usize = size_of::<FlowKey>() / 8;
    const { assert!(size_of::<FlowKey>() == WORDS * 8 && align_of::<FlowKey>() == 8) };
    let words = key.as_mut_ptr().cast::<u64>();
    let mut i = 0;
    while i < WORDS {
        // SAFETY: in bounds (the assertion above) and aligned. Volatile, so the compiler
        // cannot merge the stores back into a `memset` call.
        unsafe { words.add(i).write_volatile(0) };
        i += 1;
    }
    // SAFETY: every byte is written, and all-zero is a valid FlowKey (it is Pod).
    unsafe { key.assume_init_mut() }
}

/// Parses the packet into `key` (which starts zeroed: IPv4 addresses take only the first
/// 4 bytes of each address field). The key is filled in place, never returned by value:
/// a 40-byte key passed around by value is split by the compiler into single bytes, each
/// moved through a register.
#[inline(always)]
pub(crate) fn parse(ctx: &XdpContext, key: &mut FlowKey) -> Result<Parsed, Reason> {
    let eth = header::<EthHdr>(ctx, 0).ok_or(Reason::PassTruncated)?;
    // SAFETY: `header` checked that the whole EthHdr lies inside the packet.
    let mut proto = u16::from_be(unsafe { (*eth).ether_type });
    let mut l3 = EthHdr::LEN;
    if proto == ETH_P_8021Q {
        let vlan = header::<VlanHdr>(ctx, EthHdr::LEN).ok_or(Reason::PassTruncated)?;
        // SAFETY: bounds checked by `header`.
        proto = u16::from_be(unsafe { (*vlan).ether_type });
        l3 += VlanHdr::LEN;
    }
    let (l4, syn) = match proto {
        ETH_P_IP => parse_ipv4(ctx, l3, key)?,
        ETH_P_IPV6 => parse_ipv6(ctx, l3, key)?,
        _ => return Err(Reason::PassNotIp),
    };
    Ok(Parsed {
        syn: syn == Some(true),
        icmp: syn.is_none(),
        l3,
        l4,
    })
}

/// Copies the first `4 * N` bytes of an address from the packet into `to`, a word at a
/// time.
///
/// # Safety
/// `from` must point at `4 * N` readable bytes (checked against `data_end` by the caller).
#[inline(always)]
pub(crate) unsafe fn copy_addr<const N: usize>(to: &mut [u8; 16], from: *const [u8; 16]) {
    const { assert!(N <= 4) };
    let to = to.as_mut_ptr().cast::<u32>();
    let from = from.cast::<u32>();
    let mut i = 0;
    while i < N {
        // SAFETY: the caller vouches for `from`; `to` has 16 bytes. Both may be unaligned
        // as far as the language knows (the program is built with misaligned access
        // allowed, so each is one 4-byte load or store either way).
        unsafe { to.add(i).write_unaligned(from.add(i).read_unaligned()) };
        i += 1;
    }
}

/// Drop `reason` if the packet is aimed at a VIP address, else leave it to the host.
#[inline(always)]
fn reject(key: &FlowKey, reason: Reason) -> Reason {
    if is_vip_address(&key.dst, key.family) {
        reason
    } else {
        Reason::PassNotVip
    }
}

/// The L4 offset, and for TCP and UDP whether the packet is a SYN without ACK (`None`:
/// ICMP).
type L4 = (usize, Option<bool>);

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, l3: usize, key: &mut FlowKey) -> Result<L4, Reason> {
    let ip = header::<Ipv4Hdr>(ctx, l3).ok_or(Reason::PassTruncated)?;
    key.family = FAMILY_V4;
    // SAFETY: bounds checked by `header`; the address fields are inside the header.
    let (version_ihl, frag_off, protocol) = unsafe {
        copy_addr::<1>(&mut key.src, addr_of!((*ip).src_addr).cast());
        copy_addr::<1>(&mut key.dst, addr_of!((*ip).dst_addr).cast());
        ((*ip).vihl, u16::from_be_bytes((*ip).frags), (*ip).proto)
    };
    let ihl = (version_ihl & 0x0f) as usize;
    if version_ihl >> 4 != 4 || ihl < 5 {
        return Err(reject(key, Reason::DropBadHeader));
    }
    key.proto = protocol;
    if frag_off & IPV4_FRAG_MASK != 0 {
        return Err(reject(key, Reason::DropFragment));
    }
    // ihl is masked to 4 bits above, so the L4 offset is bounded for the verifier.
    parse_l4(ctx, l3 + ihl * 4, key, PROTO_ICMP)
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, l3: usize, key: &mut FlowKey) -> Result<L4, Reason> {
    let ip = header::<Ipv6Hdr>(ctx, l3).ok_or(Reason::PassTruncated)?;
    key.family = FAMILY_V6;
    // SAFETY: bounds checked by `header`.
    let next = unsafe {
        copy_addr::<4>(&mut key.src, addr_of!((*ip).src_addr));
        copy_addr::<4>(&mut key.dst, addr_of!((*ip).dst_addr));
        (*ip).next_hdr
    };
    key.proto = next;
    match next {
        IPV6_FRAGMENT => Err(reject(key, Reason::DropFragment)),
        0 | 43 | 51 | 60 | 135 | 139 | 140 => Err(reject(key, Reason::DropIpv6ExtHeader)),
        _ => parse_l4(ctx, l3 + Ipv6Hdr::LEN, key, PROTO_ICMPV6),
    }
}

#[inline(always)]
fn parse_l4(ctx: &XdpContext, l4: usize, key: &mut FlowKey, icmp: u8) -> Result<L4, Reason> {
    match key.proto {
        // The whole fixed TCP (20 bytes) or UDP (8 bytes) header must be present.
        PROTO_TCP => {
            let tcp =
                header::<TcpHdr>(ctx, l4).ok_or_else(|| reject(key, Reason::DropTruncated))?;
            // SAFETY: bounds checked by `header`. Ports stay in network byte order.
            let (syn, ack) = unsafe {
                key.sport_be = u16::from_ne_bytes((*tcp).source);
                key.dport_be = u16::from_ne_bytes((*tcp).dest);
                ((*tcp).syn(), (*tcp).ack())
            };
            Ok((l4, Some(syn == 1 && ack == 0)))
        }
        PROTO_UDP => {
            let udp =
                header::<UdpHdr>(ctx, l4).ok_or_else(|| reject(key, Reason::DropTruncated))?;
            // SAFETY: bounds checked by `header`.
            unsafe {
                key.sport_be = u16::from_ne_bytes((*udp).src);
                key.dport_be = u16::from_ne_bytes((*udp).dst);
            }
            Ok((l4, Some(false)))
        }
        // Whether it is for a VIP address is `icmp`'s question.
        p if p == icmp => Ok((l4, None)),
        _ => Err(reject(key, Reason::DropUnknownProto)),
    }
}
