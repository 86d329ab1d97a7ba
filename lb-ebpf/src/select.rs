//! Stage 3: pick the backend. A packet of a known flow keeps the flow's backend while
//! that backend is live and serves the VIP the packet is addressed to
//! (`Backend::serves`); such a packet needs no VIP lookup at all. Any other packet is
//! looked up as a VIP, hashes its 5-tuple (`lb_common::flow_hash`, the same function
//! userspace uses) onto a slot of the VIP's current table, and the choice is recorded in
//! the flow table. Size, generation and slots all come from the one inner map that a
//! single lookup of `xlb_rings` returned, so a packet never mixes generations.

use lb_common::{
    Backend, FlowKey, FlowValue, Reason, VipInfo, flow_hash,
    maps::{MAX_TABLE_SIZE, TABLE_HDR_GENERATION, TABLE_HDR_SIZE, TABLE_HEADER},
    table_slot,
};

use crate::{
    counters,
    maps::{BACKENDS, CONFIG, FLOWS, RINGS},
};

/// The outcome of selection.
pub(crate) struct Chosen {
    pub backend_id: u32,
    pub backend: &'static Backend,
    /// True when this packet created (or re-homed) a flow entry.
    pub new_flow: bool,
}

/// The flow's backend, if the packet belongs to a known flow whose backend still
/// serves this VIP.
#[inline(always)]
pub(crate) fn established(flow: &FlowKey) -> Option<Chosen> {
    let entry = FLOWS.get_ptr(flow)?;
    // SAFETY: non-null pointer from bpf_map_lookup_elem; the value is plain data.
    let backend_id = unsafe { (*entry).backend_id };
    let backend = BACKENDS.get(backend_id)?;
    if !backend.serves(flow) {
        return None;
    }
    Some(Chosen {
        backend_id,
        backend,
        new_flow: false,
    })
}

/// A backend from VIP `vip`'s table for a packet of no (usable) known flow, or for a
/// TCP SYN (`syn`), which always selects from the table.
#[inline(always)]
pub(crate) fn new_flow(flow: &FlowKey, vip: &VipInfo, syn: bool) -> Result<Chosen, Reason> {
    match from_table(flow, vip, syn) {
        Some(chosen) => Ok(chosen),
        None => {
            counters::count_vip_drop(vip.vip_id);
            Err(Reason::DropNoBackend)
        }
    }
}

#[inline(always)]
#[expect(
    clippy::large_stack_frames,
    reason = "clippy counts every temporary before optimisation (575 bytes); compiled, the \
              whole xlb program, this inlined, uses 96 bytes of stack"
)]
fn from_table(flow: &FlowKey, vip: &VipInfo, syn: bool) -> Option<Chosen> {
    let table = RINGS.get(vip.vip_id)?;
    let size = *table.get(TABLE_HDR_SIZE)?;
    if size == 0 || size > MAX_TABLE_SIZE {
        return None;
    }
    let generation = *table.get(TABLE_HDR_GENERATION)?;
    let seed = CONFIG.get(0).map_or(0, |c| c.hash_seed);
    let slot = table_slot(flow_hash(flow, seed), size);
    let backend_id = *table.get(TABLE_HEADER + slot)?;
    let backend = BACKENDS.get(backend_id)?;
    if !backend.is_live() || backend.vip_id != vip.vip_id {
        return None;
    }
    // A SYN whose flow already has this backend is a retransmission (the client got no
    // answer yet), not another connection: it is neither counted nor written again. So a
    // dead backend's SYN retries do not swell its new-flow count.
    if syn
        && let Some(entry) = FLOWS.get_ptr(flow)
        // SAFETY: non-null pointer from bpf_map_lookup_elem; the value is plain data.
        && unsafe { (*entry).backend_id } == backend_id
    {
        return Some(Chosen {
            backend_id,
            backend,
            new_flow: false,
        });
    }
    let value = FlowValue {
        backend_id,
        generation,
    };
    #[expect(
        clippy::let_underscore_must_use,
        reason = "a failed insert (memory pressure) only means the next packet selects again, \
                  from the same table unless it changed; forwarding this packet is still right"
    )]
    let _ = FLOWS.insert(flow, &value, 0);
    Some(Chosen {
        backend_id,
        backend,
        new_flow: true,
    })
}
