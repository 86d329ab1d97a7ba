//! Stage 4a (`ipip`): wrap the packet's IP packet in an outer header addressed to the
//! backend: IPv4 in IPv4 (protocol 4) for IPv4 backends, IPv6 in IPv6 (next header 41)
//! for IPv6 backends. The outer header, set on purpose:
//! - source: the configured prefix (`xlb_encap`) with its host bits from the flow
//!   hash, so one flow always has one source and a backend's RSS spreads flows;
//! - TTL / hop limit 64 (`OUTER_TTL`);
//! - DSCP and ECN copied from the inner header (RFC 6040 "normal mode": congestion
//!   marks on the way reach the backend's decap, which copies CE inward);
//! - IPv4: DF always set, identification 0 (RFC 6864: an atomic datagram), checksum
//!   computed; nothing on the way may fragment an outer packet, because a backend's
//!   decap program cannot reassemble one;
//! - IPv6: the flow label from the flow hash, so routers hash a flow onto one path.
//!
//! The frame leaves untagged by the interface and next hop the FIB names (`fib`); a
//! packet that would exceed the route's MTU once wrapped is not sent, and the client
//! is told the size it may use (`icmp::too_big`).

use aya_ebpf::{
    bindings::xdp_action::{XDP_REDIRECT, XDP_TX},
    helpers::{bpf_redirect, bpf_xdp_adjust_head},
    programs::XdpContext,
};
use lb_common::{
    Backend, FAMILY_V4, FlowKey, OUTER_TTL, Reason, csum, outer_flow_label, outer_source_v4,
    outer_source_v6_tail,
    wire::{ETH_HLEN, ETH_P_IP, ETH_P_IPV6, PROTO_IPIP, PROTO_IPV6},
};

use crate::{
    fib::{self, Route},
    icmp,
    maps::ENCAP,
    parse::{Addr, header},
};

const V4_OVERHEAD: usize = 20;
const V6_OVERHEAD: usize = 40;
/// IPv4 "don't fragment".
const IP_DF: u16 = 0x4000;

/// What is being sent.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Payload {
    /// A packet of a flow: if it is too big, the client is told.
    Flow,
    /// An ICMP error about a flow: if it is too big, it is dropped (no ICMP about ICMP).
    IcmpError,
}

/// Sends the IP packet at `l3` to `backend` wrapped in an outer header; the XDP action.
#[inline(always)]
pub(crate) fn ipip(
    ctx: &XdpContext,
    flow: &FlowKey,
    l3: usize,
    backend: &Backend,
    hash: u32,
    payload: Payload,
) -> Result<u32, Reason> {
    let encap = ENCAP.get(0).ok_or(Reason::DropEncapConfig)?;
    if backend.family != flow.family {
        return Err(Reason::DropEncapConfig);
    }
    let inner = inner_header(ctx, l3, flow.family)?;
    let v4 = flow.family == FAMILY_V4;
    let mut src = Addr::zero();
    if v4 {
        if encap.v4_prefix == [0; 4] {
            return Err(Reason::DropEncapConfig);
        }
        src.set_word(0, outer_source_v4(encap, hash));
    } else {
        if encap.v6_prefix == [0; 16] {
            return Err(Reason::DropEncapConfig);
        }
        let p = &encap.v6_prefix;
        src.set_word(0, [p[0], p[1], p[2], p[3]]);
        src.set_word(1, [p[4], p[5], p[6], p[7]]);
        src.set_word(2, [p[8], p[9], p[10], p[11]]);
        src.set_word(3, outer_source_v6_tail(encap, hash));
    }
    let src = &src.0;
    let (overhead, proto) = if v4 {
        (V4_OVERHEAD, PROTO_IPIP)
    } else {
        (V6_OVERHEAD, PROTO_IPV6)
    };
    let label = if v4 { 0 } else { outer_flow_label(hash) };
    let outer_len = inner.len as usize + overhead;
    let route = fib::route(
        ctx,
        flow.family,
        proto,
        src,
        &backend.addr,
        outer_len as u16,
        label.to_be(),
    )?;
    let hop = match route {
        Route::Via(hop) => hop,
        Route::TooBig(mtu) => {
            return match payload {
                Payload::IcmpError => Err(Reason::DropTooBig),
                Payload::Flow => Err(icmp::too_big(
                    ctx,
                    flow.family,
                    l3,
                    mtu.saturating_sub(overhead as u16),
                )),
            };
        }
    };
    // Room for the outer header: the frame's new start is `overhead` bytes before the
    // old IP header less an Ethernet header (an 802.1Q tag is dropped).
    let delta = i32::from(l3 as u16) - i32::from((ETH_HLEN + overhead) as u16);
    // SAFETY: the helper checks the headroom and fails rather than overrun it (XDP
    // frames have 256 bytes of it).
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, delta) } != 0 {
        return Err(Reason::DropEncapConfig);
    }
    if v4 {
        let h = header::<Outer4>(ctx, 0).ok_or(Reason::DropTruncated)?;
        // SAFETY: `header` checked the 34 bytes; the sources are on our stack or map
        // values.
        unsafe {
            hop.write_macs((&raw mut (*h).macs).cast());
            (*h).ethertype = ETH_P_IP.to_be_bytes();
            let len = outer_len as u16;
            let check = csum::ipv4_header(
                inner.tos,
                len,
                IP_DF,
                OUTER_TTL,
                PROTO_IPIP,
                src,
                &backend.addr,
            );
            (*h).ip = [
                0x45,
                inner.tos,
                (len >> 8) as u8,
                len as u8,
                0,
                0,
                (IP_DF >> 8) as u8,
                0,
                OUTER_TTL,
                PROTO_IPIP,
                (check >> 8) as u8,
                check as u8,
            ];
            write_words::<1>((&raw mut (*h).addrs).cast(), src);
            write_words::<1>((&raw mut (*h).addrs).cast::<u32>().add(1), &backend.addr);
        }
    } else {
        let h = header::<Outer6>(ctx, 0).ok_or(Reason::DropTruncated)?;
        // SAFETY: as above, 54 bytes.
        unsafe {
            hop.write_macs((&raw mut (*h).macs).cast());
            (*h).ethertype = ETH_P_IPV6.to_be_bytes();
            let first = 6 << 28 | u32::from(inner.tos) << 20 | label;
            let len = inner.len;
            (*h).ip = [
                (first >> 24) as u8,
                (first >> 16) as u8,
                (first >> 8) as u8,
                first as u8,
                (len >> 8) as u8,
                len as u8,
                PROTO_IPV6,
                OUTER_TTL,
            ];
            write_words::<4>((&raw mut (*h).addrs).cast(), src);
            write_words::<4>((&raw mut (*h).addrs).cast::<u32>().add(4), &backend.addr);
        }
    }
    if hop.ifindex == ctx.ingress_ifindex() as u32 {
        return Ok(XDP_TX);
    }
    // SAFETY: a helper without memory arguments; it returns XDP_REDIRECT on success.
    if unsafe { bpf_redirect(hop.ifindex, 0) } == i64::from(XDP_REDIRECT) {
        Ok(XDP_REDIRECT)
    } else {
        Err(Reason::DropFibNoRoute)
    }
}

/// Ethernet and the outer IPv4 header.
#[repr(C)]
struct Outer4 {
    macs: [u8; 12],
    ethertype: [u8; 2],
    /// Version/IHL, TOS, total length, identification, flags/fragment offset, TTL,
    /// protocol, checksum.
    ip: [u8; 12],
    addrs: [u8; 8],
}

/// Ethernet and the outer IPv6 header.
#[repr(C)]
struct Outer6 {
    macs: [u8; 12],
    ethertype: [u8; 2],
    /// Version/traffic class/flow label, payload length, next header, hop limit.
    ip: [u8; 8],
    addrs: [u8; 32],
}

/// The inner header's length (IPv4 total length; IPv6 payload length + 40) and its
/// DSCP and ECN bits.
struct Inner {
    len: u16,
    tos: u8,
}

#[inline(always)]
fn inner_header(ctx: &XdpContext, l3: usize, family: u8) -> Result<Inner, Reason> {
    let h = header::<[u8; 8]>(ctx, l3).ok_or(Reason::DropTruncated)?;
    // SAFETY: `header` checked the 8 bytes.
    let b = unsafe { *h };
    let inner = if family == FAMILY_V4 {
        Inner {
            len: u16::from_be_bytes([b[2], b[3]]),
            tos: b[1],
        }
    } else {
        Inner {
            len: u16::from_be_bytes([b[4], b[5]]).saturating_add(40),
            tos: (b[0] << 4) | (b[1] >> 4),
        }
    };
    // The length field must fit the frame: the outer header repeats it.
    if l3 + inner.len as usize > ctx.data_end() - ctx.data() {
        return Err(Reason::DropTruncated);
    }
    Ok(inner)
}

/// Writes the first `4 * N` bytes of `from` at `to`, a word at a time.
///
/// # Safety
/// `to` must be `4 * N` writable bytes.
#[inline(always)]
pub(crate) unsafe fn write_words<const N: usize>(to: *mut u32, from: &[u8; 16]) {
    let from = from.as_ptr().cast::<u32>();
    let mut i = 0;
    while i < N {
        // SAFETY: the caller vouches for `to`; `from` has 16 bytes.
        unsafe { to.add(i).write_unaligned(from.add(i).read_unaligned()) };
        i += 1;
    }
}
