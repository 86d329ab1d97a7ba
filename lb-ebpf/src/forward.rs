//! Stage 4: forward, by the VIP's method. `l2-dsr`: the backend shares our L2 segment
//! and holds the VIP on loopback, so the frame only needs the backend's MAC as
//! destination and ours as source; it leaves through the interface it came in on
//! (XDP_TX) and the backend replies to the client directly. `ipip`: see `encap`.

use aya_ebpf::{bindings::xdp_action::XDP_TX, programs::XdpContext};
use lb_common::{Backend, FWD_IPIP, FlowKey, Reason, VipInfo};

use crate::{
    encap::{self, Payload},
    maps::CONFIG,
    parse::header,
    select::Chosen,
};

/// Sends the IP packet at `l3` (of `flow`, or an ICMP error about it) to the chosen
/// backend; the XDP action.
#[inline(always)]
pub(crate) fn send(
    ctx: &XdpContext,
    flow: &FlowKey,
    vip: &VipInfo,
    chosen: &Chosen,
    l3: usize,
    payload: Payload,
) -> Result<u32, Reason> {
    if vip.forwarding == FWD_IPIP {
        return encap::ipip(ctx, flow, l3, chosen.backend, chosen.hash, payload);
    }
    l2_dsr(ctx, chosen.backend)?;
    Ok(XDP_TX)
}

/// The two MAC addresses at the start of an Ethernet header.
#[repr(C)]
struct Macs {
    dst: [u8; 6],
    src: [u8; 6],
}

#[inline(always)]
fn l2_dsr(ctx: &XdpContext, backend: &Backend) -> Result<(), Reason> {
    // Verifier: parse checked the Ethernet header, but this is a new packet pointer.
    let macs = header::<Macs>(ctx, 0).ok_or(Reason::PassTruncated)?;
    // SAFETY: `header` checked that both MAC fields are inside the packet; the sources
    // are map values of at least 6 bytes.
    unsafe { copy_mac(&raw mut (*macs).dst, &backend.mac) };
    // Verifier: entry 0 of a one-entry array always exists.
    if let Some(config) = CONFIG.get(0) {
        // SAFETY: as above.
        unsafe { copy_mac(&raw mut (*macs).src, &config.if_mac) };
    }
    Ok(())
}

/// Copies a MAC address as one 4-byte and one 2-byte move. A plain array assignment from
/// a map value into the packet compiles to a call of a `memmove` subprogram (the compiler
/// cannot tell that the two do not overlap), and calls are dear on the packet path.
///
/// # Safety
/// `to` must be 6 writable bytes and `from` 6 readable bytes.
#[inline(always)]
pub(crate) unsafe fn copy_mac(to: *mut [u8; 6], from: *const [u8; 6]) {
    // SAFETY: the caller vouches for both; unaligned moves are single loads and stores
    // here (the program is built with misaligned access allowed).
    unsafe {
        let (to, from) = (to.cast::<u8>(), from.cast::<u8>());
        let head = from.cast::<u32>().read_unaligned();
        let tail = from.add(4).cast::<u16>().read_unaligned();
        to.cast::<u32>().write_unaligned(head);
        to.add(4).cast::<u16>().write_unaligned(tail);
    }
}
