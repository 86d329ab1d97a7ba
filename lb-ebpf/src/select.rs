//! Stage 3: pick the backend. A packet of a known flow keeps the flow's backend while that
//! backend is live; any other packet hashes its 5-tuple (`lb_common::flow_hash`, the same
//! function userspace uses) onto a slot of the VIP's current table, and the choice is
//! recorded in the flow table. Size, generation and slots all come from the one inner
//! map that a single lookup of `xlb_rings` returned, so a packet never mixes generations.

use lb_common::{
    Backend, FlowValue, Reason, VipInfo, flow_hash,
    maps::{MAX_TABLE_SIZE, TABLE_HDR_GENERATION, TABLE_HDR_SIZE, TABLE_HEADER},
    table_slot,
};

use crate::{
    counters,
    maps::{BACKENDS, CONFIG, FLOWS, RINGS},
    parse::Packet,
};

/// The outcome of selection.
pub struct Chosen {
    pub backend_id: u32,
    pub backend: Backend,
    /// True when this packet created (or re-homed) a flow entry.
    pub new_flow: bool,
}

#[inline(always)]
pub fn select(pkt: &Packet, vip: &VipInfo) -> Result<Chosen, Reason> {
    if let Some(flow) = FLOWS.get_ptr(&pkt.key) {
        // SAFETY: non-null pointer from bpf_map_lookup_elem; the value is plain data.
        let backend_id = unsafe { (*flow).backend_id };
        if let Some(backend) = live_backend(backend_id, vip.vip_id) {
            return Ok(Chosen {
                backend_id,
                backend,
                new_flow: false,
            });
        }
    }
    match from_table(pkt, vip) {
        Some(chosen) => Ok(chosen),
        None => {
            counters::count_vip_drop(vip.vip_id);
            Err(Reason::DropNoBackend)
        }
    }
}

#[inline(always)]
fn from_table(pkt: &Packet, vip: &VipInfo) -> Option<Chosen> {
    let table = RINGS.get(vip.vip_id)?;
    let size = *table.get(TABLE_HDR_SIZE)?;
    if size == 0 || size > MAX_TABLE_SIZE {
        return None;
    }
    let generation = *table.get(TABLE_HDR_GENERATION)?;
    let seed = CONFIG.get(0).map_or(0, |c| c.hash_seed);
    let slot = table_slot(flow_hash(&pkt.key, seed), size);
    let backend_id = *table.get(TABLE_HEADER + slot)?;
    let backend = live_backend(backend_id, vip.vip_id)?;
    let value = FlowValue {
        backend_id,
        generation,
    };
    // A failed insert (memory pressure) only means the next packet selects again, from
    // the same table unless it changed; forwarding this packet is still right.
    let _ = FLOWS.insert(&pkt.key, &value, 0);
    Some(Chosen {
        backend_id,
        backend,
        new_flow: true,
    })
}

/// Backend `id` if it is live and still belongs to `vip_id` (ids are reused only once no
/// flow entry points at them, and the VIP check keeps that safe across VIPs too).
#[inline(always)]
fn live_backend(id: u32, vip_id: u32) -> Option<Backend> {
    let backend = BACKENDS.get(id)?;
    if backend.is_live() && backend.vip_id == vip_id {
        Some(*backend)
    } else {
        None
    }
}
