//! Two reference programs that do nothing else:
//! - `xlb_pass` (XDP_PASS): a veth only receives frames another veth sends with XDP_TX
//!   if an XDP program is attached to it, so the lab attaches this to the load
//!   balancer's peer; real NICs do not need it;
//! - `xlb_drop` (XDP_DROP): the floor the benchmarks measure every figure against.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

#[xdp]
pub(crate) fn xlb_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[xdp]
pub(crate) fn xlb_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable: the program has no panicking path.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
