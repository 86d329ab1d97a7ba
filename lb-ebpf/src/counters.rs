//! Stage 5: count. Per-CPU arrays, so plain adds are race-free (XDP runs with migration
//! disabled on one CPU); userspace sums the CPUs.

use lb_common::Reason;

use crate::{
    maps::{BACKEND_STATS, REASON_STATS, VIP_STATS},
    select::Chosen,
};

#[inline(always)]
pub(crate) fn count_reason(reason: Reason, len: u64) {
    if let Some(s) = REASON_STATS.get_ptr_mut(reason.index()) {
        // SAFETY: per-CPU slot from bpf_map_lookup_elem; only this CPU writes it now.
        unsafe {
            (*s).packets += 1;
            (*s).bytes += len;
        }
    }
}

#[inline(always)]
pub(crate) fn count_forwarded(chosen: &Chosen, len: u64) {
    let new = u64::from(chosen.new_flow);
    if let Some(s) = VIP_STATS.get_ptr_mut(chosen.backend.vip_id) {
        // SAFETY: as in `count_reason`.
        unsafe {
            (*s).packets += 1;
            (*s).bytes += len;
            (*s).new_flows += new;
            (*s).stateful += u64::from(chosen.stateful);
        }
    }
    if let Some(s) = BACKEND_STATS.get_ptr_mut(chosen.backend_id) {
        // SAFETY: as in `count_reason`.
        unsafe {
            (*s).packets += 1;
            (*s).bytes += len;
            (*s).new_flows += new;
        }
    }
}

#[inline(always)]
pub(crate) fn count_vip_drop(vip_id: u32) {
    if let Some(s) = VIP_STATS.get_ptr_mut(vip_id) {
        // SAFETY: as in `count_reason`.
        unsafe { (*s).drops += 1 };
    }
}
