//! Stage 1: parse Ethernet (plus one 802.1Q tag), IPv4 (any header length) or IPv6, and
//! the TCP/UDP ports into a `FlowKey`. Nothing past `data_end` is ever read: every header
//! access goes through `header`, which the verifier also requires. A packet that cannot
//! be parsed fully is never forwarded; it is passed to the host unless it is aimed at a
//! VIP address, in which case it is dropped under its own reason.

use aya_ebpf::programs::XdpContext;
use lb_common::{FAMILY_V4, FAMILY_V6, FlowKey, PROTO_TCP, PROTO_UDP, Reason};

use crate::vip::is_vip_address;

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const IPV6_HLEN: usize = 40;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const PROTO_ICMP: u8 = 1;
const PROTO_ICMPV6: u8 = 58;
const IPV6_FRAGMENT: u8 = 44;
/// More-fragments flag and fragment offset bits of the IPv4 `frag_off` field.
const IPV4_FRAG_MASK: u16 = 0x3fff;

/// A parsed packet: the flow it belongs to.
pub struct Packet {
    pub key: FlowKey,
}

#[repr(C)]
struct EthHdr {
    dst: [u8; 6],
    src: [u8; 6],
    proto_be: u16,
}

#[repr(C)]
struct VlanHdr {
    tci_be: u16,
    proto_be: u16,
}

#[repr(C)]
struct Ipv4Hdr {
    version_ihl: u8,
    tos: u8,
    tot_len_be: u16,
    id_be: u16,
    frag_off_be: u16,
    ttl: u8,
    protocol: u8,
    check: u16,
    saddr: [u8; 4],
    daddr: [u8; 4],
}

#[repr(C)]
struct Ipv6Hdr {
    vtc_flow: [u8; 4],
    payload_len_be: u16,
    next_header: u8,
    hop_limit: u8,
    saddr: [u8; 16],
    daddr: [u8; 16],
}

/// The first four bytes of both TCP and UDP headers.
#[repr(C)]
struct Ports {
    src_be: u16,
    dst_be: u16,
}

/// A pointer to a `T` at `offset`, or `None` if the packet is shorter than that.
#[inline(always)]
pub fn header<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    // Verifier: this comparison against data_end is what makes the access legal.
    if start + offset + size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + offset) as *mut T)
}

#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Packet, Reason> {
    let eth = header::<EthHdr>(ctx, 0).ok_or(Reason::PassTruncated)?;
    // SAFETY: `header` checked that the whole EthHdr lies inside the packet.
    let mut proto = u16::from_be(unsafe { (*eth).proto_be });
    let mut l3 = ETH_HLEN;
    if proto == ETH_P_8021Q {
        let vlan = header::<VlanHdr>(ctx, ETH_HLEN).ok_or(Reason::PassTruncated)?;
        // SAFETY: bounds checked by `header`.
        proto = u16::from_be(unsafe { (*vlan).proto_be });
        l3 += VLAN_HLEN;
    }
    let key = match proto {
        ETH_P_IP => parse_ipv4(ctx, l3)?,
        ETH_P_IPV6 => parse_ipv6(ctx, l3)?,
        _ => return Err(Reason::PassNotIp),
    };
    Ok(Packet { key })
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

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, l3: usize) -> Result<FlowKey, Reason> {
    let ip = header::<Ipv4Hdr>(ctx, l3).ok_or(Reason::PassTruncated)?;
    let mut key = FlowKey {
        family: FAMILY_V4,
        ..FlowKey::default()
    };
    // SAFETY: bounds checked by `header`.
    let (version_ihl, frag_off, protocol) = unsafe {
        key.src[..4].copy_from_slice(&(*ip).saddr);
        key.dst[..4].copy_from_slice(&(*ip).daddr);
        (
            (*ip).version_ihl,
            u16::from_be((*ip).frag_off_be),
            (*ip).protocol,
        )
    };
    let ihl = (version_ihl & 0x0f) as usize;
    if version_ihl >> 4 != 4 || ihl < 5 {
        return Err(reject(&key, Reason::DropBadHeader));
    }
    if frag_off & IPV4_FRAG_MASK != 0 {
        return Err(reject(&key, Reason::DropFragment));
    }
    key.proto = protocol;
    // ihl is masked to 4 bits above, so the L4 offset is bounded for the verifier.
    parse_l4(ctx, l3 + ihl * 4, key, PROTO_ICMP)
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, l3: usize) -> Result<FlowKey, Reason> {
    let ip = header::<Ipv6Hdr>(ctx, l3).ok_or(Reason::PassTruncated)?;
    let mut key = FlowKey {
        family: FAMILY_V6,
        ..FlowKey::default()
    };
    // SAFETY: bounds checked by `header`.
    let next = unsafe {
        key.src = (*ip).saddr;
        key.dst = (*ip).daddr;
        (*ip).next_header
    };
    key.proto = next;
    match next {
        IPV6_FRAGMENT => Err(reject(&key, Reason::DropFragment)),
        0 | 43 | 51 | 60 | 135 | 139 | 140 => Err(reject(&key, Reason::DropIpv6ExtHeader)),
        _ => parse_l4(ctx, l3 + IPV6_HLEN, key, PROTO_ICMPV6),
    }
}

#[inline(always)]
fn parse_l4(ctx: &XdpContext, l4: usize, mut key: FlowKey, icmp: u8) -> Result<FlowKey, Reason> {
    match key.proto {
        PROTO_TCP | PROTO_UDP => {
            // The whole fixed TCP (20 bytes) or UDP (8 bytes) header must be present.
            let whole = if key.proto == PROTO_TCP {
                header::<[u8; 20]>(ctx, l4).is_some()
            } else {
                header::<[u8; 8]>(ctx, l4).is_some()
            };
            if !whole {
                return Err(reject(&key, Reason::DropTruncated));
            }
            // Verifier: it does not carry the check above over to this narrower pointer.
            let ports =
                header::<Ports>(ctx, l4).ok_or_else(|| reject(&key, Reason::DropTruncated))?;
            // SAFETY: bounds checked by `header`.
            unsafe {
                key.sport_be = (*ports).src_be;
                key.dport_be = (*ports).dst_be;
            }
            Ok(key)
        }
        p if p == icmp => Err(reject(&key, Reason::PassIcmp)),
        _ => Err(reject(&key, Reason::DropUnknownProto)),
    }
}
