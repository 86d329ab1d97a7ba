//! Stage 3: pick the backend. Every packet for a VIP hashes its 5-tuple
//! (`lb_common::flow_hash`, the same function userspace uses) onto a slot of the VIP's
//! current table. A stateless slot (no previous owner) names the backend outright: no
//! flow-table lookup, no insert. A changed slot hands the packet to `flowstate`, which
//! keeps flows older than the change on the backend they started on. Size, generation
//! and slots all come from the one inner map that a single lookup of `xlb_rings`
//! returned, so a packet never mixes generations.

use lb_common::{
    Backend, FlowKey, Reason, Slot, VipInfo, flow_hash,
    maps::{MAX_TABLE_SIZE, TABLE_HDR_SIZE, TABLE_HEADER},
    table_slot,
};

use crate::{
    counters, flowstate,
    maps::{BACKENDS, CONFIG, RINGS},
};

/// The outcome of selection.
pub(crate) struct Chosen {
    pub backend_id: u32,
    pub backend: &'static Backend,
    /// True when this packet started a flow on the backend: a TCP SYN, a flow re-homed
    /// from a backend that left, or a UDP flow recorded in a changed slot.
    pub new_flow: bool,
    /// True when the slot was changed, so the flow table was consulted.
    pub stateful: bool,
    /// The flow hash (`ipip` takes the outer source's host bits from it).
    pub hash: u32,
}

/// What selection may do besides choosing.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// A packet of the flow: a changed slot records the flow.
    Packet,
    /// An ICMP error about the flow: the same choice as the flow's next packet (a
    /// non-SYN), but nothing is written.
    Lookup,
}

/// A backend from VIP `vip`'s table for this packet (`syn`: a TCP SYN without ACK).
#[inline(always)]
pub(crate) fn select(
    flow: &FlowKey,
    vip: &VipInfo,
    syn: bool,
    mode: Mode,
) -> Result<Chosen, Reason> {
    match from_table(flow, vip, syn, mode) {
        Some(chosen) => Ok(chosen),
        None => {
            counters::count_vip_drop(vip.vip_id);
            Err(Reason::DropNoBackend)
        }
    }
}

#[inline(always)]
fn from_table(flow: &FlowKey, vip: &VipInfo, syn: bool, mode: Mode) -> Option<Chosen> {
    let table = RINGS.get(vip.vip_id)?;
    let size = *table.get(TABLE_HDR_SIZE)?;
    if size == 0 || size > MAX_TABLE_SIZE {
        return None;
    }
    let seed = CONFIG.get(0).map_or(0, |c| c.hash_seed);
    let hash = flow_hash(flow, seed);
    let slot = Slot::unpack(*table.get(TABLE_HEADER + table_slot(hash, size))?);
    if slot.is_changed() {
        return flowstate::changed_slot(flow, vip, table, slot, syn, hash, mode);
    }
    Some(Chosen {
        backend_id: slot.owner,
        backend: serving(slot.owner, vip)?,
        new_flow: syn,
        stateful: false,
        hash,
    })
}

/// Backend `id`, if it is live and serves `vip`.
#[inline(always)]
pub(crate) fn serving(id: u32, vip: &VipInfo) -> Option<&'static Backend> {
    let backend = BACKENDS.get(id)?;
    backend.is_live_for(vip.vip_id).then_some(backend)
}
