//! Stage 6: report the decision to `xlb trace`. Off (the switch all zero), a packet pays
//! one load and one compare. On, a packet that passes the
//! filter and the per-CPU rate bound is sent to the daemon as one aya-log record, which
//! `lb_userspace`'s `trace::Record::parse` reads back; the two sides share the format
//! below.

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use aya_log_ebpf::info;
use lb_common::{FlowKey, Reason, TRACE_ANY_BACKEND, TraceControl, same_addr};

use crate::maps::TRACE_RATE;

/// A window of the rate bound.
const WINDOW_NS: u64 = 1_000_000_000;

/// What selection decided, for the trace: the backend (0: none was chosen) and whether
/// the packet started a flow on it (`select::Chosen::new_flow`).
pub(crate) struct Decision {
    pub(crate) backend_id: u32,
    pub(crate) new_flow: bool,
}

/// The trace switch. A global of its own data section, which the loader turns into a
/// one-entry array map (`lb_common::maps::TRACE`) that the daemon writes: reading it is a
/// load from a known address, where an array map costs a lookup, inlined or not, on
/// every packet. Exported so that nothing may assume it keeps its initial value.
#[unsafe(link_section = ".data.xlb_trace")]
#[unsafe(no_mangle)]
static mut XLB_TRACE: TraceControl = TraceControl {
    until_ns: 0,
    addr: [0; 16],
    family: 0,
    _pad: [0; 3],
    reasons: 0,
    backend_id: 0,
    per_cpu_rate: 0,
};

#[inline(always)]
pub(crate) fn report(flow: &FlowKey, reason: Reason, decision: &Decision) {
    // SAFETY: a plain read of a global that only userspace writes (through its map); a
    // torn read during a write at worst traces with half the new filter, once.
    let until_ns = unsafe { core::ptr::read_volatile(&raw const XLB_TRACE.until_ns) };
    if until_ns == 0 {
        return;
    }
    // SAFETY: as above; `record` reads the filter's fields once each. (Never null.)
    let Some(control) = (unsafe { (&raw const XLB_TRACE).as_ref() }) else {
        return;
    };
    record(
        control,
        flow,
        reason.index(),
        decision.backend_id,
        decision.new_flow,
    );
}

/// Kept out of line: the packet path stays as short as it was while tracing is off.
#[inline(never)]
#[expect(
    clippy::large_stack_frames,
    reason = "the estimate counts aya-log's argument values before optimisation; the \
              verifier, which bounds the whole call chain's stack to 512 bytes, accepts the \
              program (tests/tests/load.rs)"
)]
fn record(control: &TraceControl, flow: &FlowKey, reason: u32, backend_id: u32, new_flow: bool) {
    // The filter first: it is cheaper than even the coarse clock (a tick of 1-10 ms is
    // fine for a lease of seconds and a window of one second).
    if control.reasons & (1 << reason) == 0 {
        return;
    }
    if control.family != 0
        && (control.family != flow.family || !same_addr(&control.addr, &flow.dst))
    {
        return;
    }
    if control.backend_id != TRACE_ANY_BACKEND && control.backend_id != backend_id {
        return;
    }
    // SAFETY: a helper without arguments or side effects.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if now >= control.until_ns {
        return;
    }
    let Some(rate) = TRACE_RATE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot from bpf_map_lookup_elem; only this CPU writes it now.
    unsafe {
        if now.wrapping_sub((*rate).window_ns) >= WINDOW_NS {
            (*rate).window_ns = now;
            (*rate).sent = 0;
        }
        if (*rate).sent >= control.per_cpu_rate {
            (*rate).suppressed += 1;
            return;
        }
        (*rate).sent += 1;
    }
    // family protocol source sport destination dport reason backend new
    info!(
        &(),
        target: "xlb::trace",
        "{} {} {:i} {} {:i} {} {} {} {}",
        flow.family,
        flow.proto,
        flow.src,
        u16::from_be(flow.sport_be),
        flow.dst,
        u16::from_be(flow.dport_be),
        reason,
        backend_id,
        u8::from(new_flow)
    );
}
