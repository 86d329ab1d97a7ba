//! The xlb XDP program: entry point only. The packet path is one stage per module:
//! `parse` -> `vip` (filter, then lookup) -> `select` (the slot of the VIP's weighted
//! table; in a changed slot, `flowstate` consults the flow table) -> `forward` (`l2-dsr`
//! in place, or `encap` with the route from `fib`) -> `counters` -> `trace`. ICMP to a
//! VIP address takes `icmp` instead, which finds the flow an error is about and sends
//! it the same way. Every exit carries a named `Reason`.
#![no_std]
#![no_main]
#![expect(
    clippy::large_stack_frames,
    reason = "clippy counts every temporary before optimisation; compiled, the whole \
              program stays within the verifier's 512 bytes (it loads, and the packet \
              tests run it)"
)]
#![expect(
    clippy::needless_borrows_for_generic_args,
    reason = "map keys are passed by reference on purpose: by value, the 20- to 40-byte keys \
              would be copied once more on the 512-byte BPF stack"
)]

mod counters;
mod encap;
mod fib;
mod flowstate;
mod forward;
mod icmp;
mod maps;
mod parse;
mod select;
mod trace;
mod vip;

use aya_ebpf::{macros::xdp, programs::XdpContext};
use core::mem::MaybeUninit;

use lb_common::{FlowKey, Reason};

#[xdp]
pub(crate) fn xlb(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let mut key = MaybeUninit::uninit();
    let flow = parse::zeroed_key(&mut key);
    let mut decision = trace::Decision {
        backend_id: 0,
        new_flow: false,
    };
    let (reason, action) = match process(&ctx, flow, len, &mut decision) {
        Ok(sent) => sent,
        Err(reason) => (reason, reason.action()),
    };
    counters::count_reason(reason, len);
    trace::report(flow, reason, &decision);
    action
}

#[inline(always)]
fn process(
    ctx: &XdpContext,
    flow: &mut FlowKey,
    len: u64,
    decision: &mut trace::Decision,
) -> Result<icmp::Sent, Reason> {
    let parsed = parse::parse(ctx, flow)?;
    if parsed.icmp {
        return icmp::handle(ctx, flow, &parsed, decision);
    }
    let bit = vip::screen(flow)?;
    let vip = vip::lookup_vip(flow, bit)?;
    let chosen = select::select(flow, &vip, parsed.syn, select::Mode::Packet)?;
    decision.backend_id = chosen.backend_id;
    decision.new_flow = chosen.new_flow;
    let action = forward::send(ctx, flow, &vip, &chosen, parsed.l3, encap::Payload::Flow)
        .inspect_err(|reason| {
            // A packet of the VIP that could not be sent (ipip: no route, neighbour,
            // forwarding or source) is the VIP's drop, as one without a backend is.
            if reason.action() == lb_common::reason::XDP_DROP {
                counters::count_vip_drop(vip.vip_id);
            }
        })?;
    counters::count_forwarded(&chosen, len);
    Ok((Reason::Forwarded, action))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never called at run time.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
