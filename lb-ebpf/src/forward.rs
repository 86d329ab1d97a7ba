//! Stage 4: forward. `l2-dsr`: the backend shares our L2 segment and holds the VIP on
//! loopback, so the frame only needs the backend's MAC as destination and ours as source;
//! it leaves through the interface it came in on (XDP_TX) and the backend replies to the
//! client directly.

use aya_ebpf::programs::XdpContext;
use lb_common::{Backend, Reason};

use crate::{maps::CONFIG, parse::header};

/// The two MAC addresses at the start of an Ethernet header.
#[repr(C)]
struct Macs {
    dst: [u8; 6],
    src: [u8; 6],
}

#[inline(always)]
pub fn l2_dsr(ctx: &XdpContext, backend: &Backend) -> Result<(), Reason> {
    // Verifier: parse checked the Ethernet header, but this is a new packet pointer.
    let macs = header::<Macs>(ctx, 0).ok_or(Reason::PassTruncated)?;
    let if_mac = CONFIG.get(0).map_or([0; 6], |c| c.if_mac);
    // SAFETY: `header` checked that both MAC fields are inside the packet.
    unsafe {
        (*macs).dst = backend.mac;
        (*macs).src = if_mac;
    }
    Ok(())
}
