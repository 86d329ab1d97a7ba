//! ICMP and ICMPv6 to a VIP address, and the one ICMP message xlb originates.
//! - An error (destination unreachable, fragmentation needed / packet too big, time
//!   exceeded, parameter problem) quotes the packet that caused it: with direct server
//!   return, a packet the backend sent from the VIP to the client. Its 5-tuple, turned
//!   round, is the client's flow, which goes through `vip` and `select` exactly as the
//!   flow's next packet would (a non-SYN, `Mode::Lookup`: nothing is recorded) and is
//!   forwarded to that backend, so its path MTU discovery works.
//! - An echo request is answered in place when the address's VIPs allow it.
//! - `too_big`: a packet that cannot be sent because of the MTU is turned into an ICMP
//!   "fragmentation needed" / ICMPv6 "packet too big" back to the client.

use aya_ebpf::{
    bindings::xdp_action::XDP_TX,
    helpers::{bpf_csum_diff, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{
    ADDR_ICMP_ECHO, FAMILY_V4, FlowKey, OUTER_TTL, PROTO_TCP, PROTO_UDP, Reason, VipAddrKey, csum,
    same_addr,
    wire::{PROTO_ICMP, PROTO_ICMPV6},
};

use crate::{
    encap::{Payload, write_words},
    forward,
    maps::VIP_ADDRS,
    parse::{Addr, Parsed, copy_addr, header},
    select::{self, Mode},
    trace, vip,
};

/// Bytes of the offending IPv4 packet quoted in "fragmentation needed": its header and
/// more than the 8 bytes of L4 header RFC 792 asks for.
const QUOTE4: usize = 64;
/// Bytes of the offending IPv6 packet quoted in "packet too big": the 40-byte header
/// and 64 more.
const QUOTE6: usize = 104;

/// A verdict with the action it takes.
pub(crate) type Sent = (Reason, u32);

/// ICMP or ICMPv6 (parsed into `flow`, without ports) that may be addressed to a VIP.
#[inline(always)]
pub(crate) fn handle(
    ctx: &XdpContext,
    flow: &mut FlowKey,
    parsed: &Parsed,
    decision: &mut trace::Decision,
) -> Result<Sent, Reason> {
    let key = VipAddrKey {
        addr: flow.dst,
        family: flow.family,
        _pad: [0; 3],
    };
    let info = VIP_ADDRS.get_ptr(&key).ok_or(Reason::PassNotVip)?;
    // SAFETY: a non-null pointer from bpf_map_lookup_elem to a plain-data value.
    let flags = unsafe { (*info).flags };
    let head = header::<[u8; 8]>(ctx, parsed.l4).ok_or(Reason::DropIcmpMalformed)?;
    // SAFETY: `header` checked the 8 bytes.
    let (ty, code) = unsafe { ((*head)[0], (*head)[1]) };
    let v4 = flow.family == FAMILY_V4;
    let (echo, error) = if v4 {
        (ty == 8, matches!(ty, 3 | 11 | 12))
    } else {
        (ty == 128, matches!(ty, 1..=4))
    };
    if echo && flags & ADDR_ICMP_ECHO != 0 {
        echo_reply(ctx, parsed, v4, ty, code)?;
        return Ok((Reason::ReplyIcmpEcho, XDP_TX));
    }
    if !error {
        return Err(Reason::PassIcmp);
    }
    quoted_flow(ctx, flow, parsed.l4 + 8, v4)?;
    let bit = vip::screen(flow).map_err(|_not_a_vip| Reason::PassIcmpUnrelated)?;
    let vip = vip::lookup_vip(flow, bit).map_err(|_not_a_vip| Reason::PassIcmpUnrelated)?;
    let chosen = select::select(flow, &vip, false, Mode::Lookup)?;
    decision.backend_id = chosen.backend_id;
    let action = forward::send(ctx, flow, &vip, &chosen, parsed.l3, Payload::IcmpError)?;
    Ok((Reason::ForwardedIcmpError, action))
}

/// Replaces `flow` by the client's flow that the error at `quote` is about: the quoted
/// packet went from the VIP to the client, so its source is the flow's destination.
#[inline(always)]
fn quoted_flow(ctx: &XdpContext, flow: &mut FlowKey, quote: usize, v4: bool) -> Result<(), Reason> {
    let mut vip_addr = Addr::zero();
    // SAFETY: 16 readable bytes of the key.
    unsafe { copy_addr::<4>(&mut vip_addr.0, &raw const flow.dst) };
    let ports_at;
    if v4 {
        let ip = header::<[u8; 20]>(ctx, quote).ok_or(Reason::DropIcmpMalformed)?;
        // SAFETY: `header` checked the 20 bytes.
        let (vihl, proto) = unsafe {
            copy_addr::<1>(&mut flow.dst, (&raw const (*ip)[12]).cast());
            copy_addr::<1>(&mut flow.src, (&raw const (*ip)[16]).cast());
            ((*ip)[0], (*ip)[9])
        };
        let ihl = (vihl & 0x0f) as usize;
        if vihl >> 4 != 4 || ihl < 5 {
            return Err(Reason::DropIcmpMalformed);
        }
        flow.proto = proto;
        ports_at = quote + ihl * 4;
    } else {
        let ip = header::<[u8; 40]>(ctx, quote).ok_or(Reason::DropIcmpMalformed)?;
        // SAFETY: `header` checked the 40 bytes.
        let (version, next) = unsafe {
            copy_addr::<4>(&mut flow.dst, (&raw const (*ip)[8]).cast());
            copy_addr::<4>(&mut flow.src, (&raw const (*ip)[24]).cast());
            ((*ip)[0] >> 4, (*ip)[6])
        };
        if version != 6 {
            return Err(Reason::DropIcmpMalformed);
        }
        flow.proto = next;
        ports_at = quote + 40;
    }
    let ports = header::<[u16; 2]>(ctx, ports_at).ok_or(Reason::DropIcmpMalformed)?;
    if (flow.proto != PROTO_TCP && flow.proto != PROTO_UDP) || !same_addr(&vip_addr.0, &flow.dst) {
        return Err(Reason::PassIcmpUnrelated);
    }
    // SAFETY: `header` checked the 4 bytes. The quoted source port is the VIP's.
    unsafe {
        flow.dport_be = (*ports)[0];
        flow.sport_be = (*ports)[1];
    }
    Ok(())
}

/// Turns the echo request into its reply in place: MACs and addresses swapped, TTL /
/// hop limit reset, type changed, checksums updated incrementally.
#[inline(always)]
fn echo_reply(ctx: &XdpContext, parsed: &Parsed, v4: bool, ty: u8, code: u8) -> Result<(), Reason> {
    swap_macs(ctx)?;
    let reply = if v4 { 0 } else { 129 };
    if v4 {
        let ip = header::<[u8; 20]>(ctx, parsed.l3).ok_or(Reason::DropIcmpMalformed)?;
        // SAFETY: `header` checked the 20 bytes.
        unsafe {
            swap_words::<1>((&raw mut (*ip)[12]).cast(), (&raw mut (*ip)[16]).cast());
            let old = u16::from_be_bytes([(*ip)[8], (*ip)[9]]);
            let new = u16::from_be_bytes([OUTER_TTL, (*ip)[9]]);
            let check = u16::from_be_bytes([(*ip)[10], (*ip)[11]]);
            (*ip)[8] = OUTER_TTL;
            [(*ip)[10], (*ip)[11]] = csum::replace16(check, old, new).to_be_bytes();
        }
    } else {
        let ip = header::<[u8; 40]>(ctx, parsed.l3).ok_or(Reason::DropIcmpMalformed)?;
        // SAFETY: `header` checked the 40 bytes.
        unsafe {
            swap_words::<4>((&raw mut (*ip)[8]).cast(), (&raw mut (*ip)[24]).cast());
            (*ip)[7] = OUTER_TTL;
        }
    }
    let icmp = header::<[u8; 4]>(ctx, parsed.l4).ok_or(Reason::DropIcmpMalformed)?;
    // SAFETY: `header` checked the 4 bytes.
    unsafe {
        let check = u16::from_be_bytes([(*icmp)[2], (*icmp)[3]]);
        (*icmp)[0] = reply;
        let new = csum::replace16(
            check,
            u16::from_be_bytes([ty, code]),
            u16::from_be_bytes([reply, code]),
        );
        [(*icmp)[2], (*icmp)[3]] = new.to_be_bytes();
    }
    Ok(())
}

/// The packet at `l3` (of `family`) is too big for the route's MTU: it becomes an ICMP
/// "fragmentation needed" (IPv4) or ICMPv6 "packet too big" from the VIP to the client,
/// telling it `mtu`, sent back the way the packet came (XDP_TX). Its reason.
#[inline(always)]
pub(crate) fn too_big(ctx: &XdpContext, family: u8, l3: usize, mtu: u16) -> Reason {
    let sent = if family == FAMILY_V4 {
        too_big_v4(ctx, l3, mtu)
    } else {
        too_big_v6(ctx, l3, mtu)
    };
    match sent {
        Ok(()) => Reason::ReplyTooBig,
        Err(reason) => reason,
    }
}

/// The reply's headers, after the link-layer header.
#[repr(C)]
struct Reply4 {
    /// Version/IHL, TOS, total length, identification, flags/fragment offset, TTL,
    /// protocol, checksum.
    ip: [u8; 12],
    src: [u8; 4],
    dst: [u8; 4],
    icmp: [u8; 8],
    quote: [u8; QUOTE4],
}

#[repr(C)]
struct Reply6 {
    /// Version/traffic class/flow label, payload length, next header, hop limit.
    ip: [u8; 8],
    src: [u8; 16],
    dst: [u8; 16],
    icmp: [u8; 8],
    quote: [u8; QUOTE6],
}

#[inline(always)]
fn too_big_v4(ctx: &XdpContext, l3: usize, mtu: u16) -> Result<(), Reason> {
    prepend(ctx, l3, size_of::<Reply4>() - QUOTE4)?;
    let r = header::<Reply4>(ctx, l3).ok_or(Reason::DropTooBig)?;
    // SAFETY: `header` checked the whole reply; the quote is the old IP packet, which
    // starts right after the room made for the new headers.
    unsafe {
        let q = &raw const (*r).quote;
        let (mut client, mut vip) = (Addr::zero(), Addr::zero());
        copy_addr::<1>(&mut client.0, q.cast::<u8>().add(12).cast());
        copy_addr::<1>(&mut vip.0, q.cast::<u8>().add(16).cast());
        let (client, vip) = (&client.0, &vip.0);
        let len = size_of::<Reply4>() as u16;
        let check = csum::ipv4_header(0xc0, len, 0, OUTER_TTL, PROTO_ICMP, vip, client);
        let [c0, c1] = check.to_be_bytes();
        (*r).ip = [
            0x45,
            0xc0,
            (len >> 8) as u8,
            len as u8,
            0,
            0,
            0,
            0,
            OUTER_TTL,
            PROTO_ICMP,
            c0,
            c1,
        ];
        write_words::<1>((&raw mut (*r).src).cast(), vip);
        write_words::<1>((&raw mut (*r).dst).cast(), client);
        (*r).icmp = [3, 4, 0, 0, 0, 0, (mtu >> 8) as u8, mtu as u8];
        let sum = packet_sum((&raw mut (*r).icmp).cast(), (8 + QUOTE4) as u32);
        [(*r).icmp[2], (*r).icmp[3]] = (!csum::fold(sum)).to_be_bytes();
    }
    truncate(ctx, l3 + size_of::<Reply4>())
}

#[inline(always)]
fn too_big_v6(ctx: &XdpContext, l3: usize, mtu: u16) -> Result<(), Reason> {
    prepend(ctx, l3, size_of::<Reply6>() - QUOTE6)?;
    let r = header::<Reply6>(ctx, l3).ok_or(Reason::DropTooBig)?;
    // SAFETY: as in `too_big_v4`.
    unsafe {
        let q = &raw const (*r).quote;
        let (mut client, mut vip) = (Addr::zero(), Addr::zero());
        copy_addr::<4>(&mut client.0, q.cast::<u8>().add(8).cast());
        copy_addr::<4>(&mut vip.0, q.cast::<u8>().add(24).cast());
        let (client, vip) = (&client.0, &vip.0);
        let payload = (8 + QUOTE6) as u16;
        (*r).ip = [
            0x60,
            0,
            0,
            0,
            (payload >> 8) as u8,
            payload as u8,
            PROTO_ICMPV6,
            OUTER_TTL,
        ];
        write_words::<4>((&raw mut (*r).src).cast(), vip);
        write_words::<4>((&raw mut (*r).dst).cast(), client);
        let m = u32::from(mtu).to_be_bytes();
        (*r).icmp = [2, 0, 0, 0, m[0], m[1], m[2], m[3]];
        let pseudo = csum::sum_addr::<4>(vip)
            + csum::sum_addr::<4>(client)
            + u64::from(payload)
            + u64::from(PROTO_ICMPV6);
        let sum = packet_sum((&raw mut (*r).icmp).cast(), u32::from(payload)) + pseudo;
        [(*r).icmp[2], (*r).icmp[3]] = (!csum::fold(sum)).to_be_bytes();
    }
    truncate(ctx, l3 + size_of::<Reply6>())
}

/// Makes `room` bytes of room between the link-layer header (`l3` bytes, kept, with
/// the MACs swapped to send it back) and the IP packet, which becomes the quote.
#[inline(always)]
fn prepend(ctx: &XdpContext, l3: usize, room: usize) -> Result<(), Reason> {
    // SAFETY: the helper checks the headroom and fails rather than overrun it.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -i32::from(room as u16)) } != 0 {
        return Err(Reason::DropTooBig);
    }
    // The old link-layer header now starts at `room`; copy it to the front, MACs
    // swapped (`room` exceeds 18, so the two do not overlap).
    let old = header::<[u8; 18]>(ctx, room).ok_or(Reason::DropTooBig)?;
    let new = header::<[u8; 18]>(ctx, 0).ok_or(Reason::DropTooBig)?;
    // SAFETY: `header` checked both 18-byte ranges.
    unsafe {
        let (old, new) = (old.cast::<u16>(), new.cast::<u16>());
        // Destination <- source, source <- destination, then the EtherType (and an
        // 802.1Q tag with its EtherType), as 2-byte moves.
        let from: [usize; 9] = [3, 4, 5, 0, 1, 2, 6, 7, 8];
        let words = if l3 == 18 { 9 } else { 7 };
        let mut i = 0;
        while i < 9 {
            if i < words {
                new.add(i)
                    .write_unaligned(old.add(from[i]).read_unaligned());
            }
            i += 1;
        }
    }
    Ok(())
}

/// Cuts the frame to `len` bytes.
#[inline(always)]
fn truncate(ctx: &XdpContext, len: usize) -> Result<(), Reason> {
    let have = ctx.data_end() - ctx.data();
    if have <= len {
        return Ok(());
    }
    // Frames are far below 64 KiB.
    let cut = -i32::from((have - len) as u16);
    // SAFETY: the helper refuses to shrink below 14 bytes.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, cut) } != 0 {
        return Err(Reason::DropTooBig);
    }
    Ok(())
}

/// The ones'-complement sum of `len` bytes of the packet at `at` (a multiple of 4 that
/// `header` checked), as a sum of big-endian 16-bit words.
///
/// # Safety
/// `at` must point at `len` bytes inside the packet.
#[inline(always)]
unsafe fn packet_sum(at: *mut u32, len: u32) -> u64 {
    // SAFETY: the caller vouches for the range; `from` is empty.
    let partial = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, at, len, 0) };
    // The helper sums 32-bit words as they lie in memory: folded, the bytes of the
    // result are the big-endian sum.
    u64::from(u16::from_be(csum::fold(
        partial.cast_unsigned() & 0xffff_ffff,
    )))
}

/// Swaps the two MAC addresses at the start of the frame.
#[inline(always)]
fn swap_macs(ctx: &XdpContext) -> Result<(), Reason> {
    let h = header::<[u16; 6]>(ctx, 0).ok_or(Reason::PassTruncated)?;
    // SAFETY: `header` checked the 12 bytes.
    unsafe {
        let m = *h;
        *h = [m[3], m[4], m[5], m[0], m[1], m[2]];
    }
    Ok(())
}

/// Swaps two runs of `N` 4-byte words.
///
/// # Safety
/// Both must be `4 * N` bytes inside the packet.
#[inline(always)]
unsafe fn swap_words<const N: usize>(a: *mut u32, b: *mut u32) {
    let mut i = 0;
    while i < N {
        // SAFETY: the caller vouches for both ranges.
        unsafe {
            let x = a.add(i).read_unaligned();
            a.add(i).write_unaligned(b.add(i).read_unaligned());
            b.add(i).write_unaligned(x);
        }
        i += 1;
    }
}
