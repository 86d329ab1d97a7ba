//! Stage 2: is this packet for a VIP? First one bit of `xlb_vip_filter` (an array read,
//! no hashing by the kernel): clear means no VIP has this (address, port, protocol), so
//! host traffic leaves here. Then `xlb_vip_index` at the same bit: the one VIP with that
//! bit, confirmed by comparing its key (array reads, which the verifier inlines). Only a
//! bit that several VIPs share costs the hash lookup in `xlb_vips`.

use lb_common::{FlowKey, Reason, VIP_INDEX_SHARED, VipAddrKey, VipInfo, VipKey, vip_filter_bit};

use crate::maps::{VIP_ADDRS, VIP_FILTER, VIP_INDEX, VIPS};

/// The packet's filter bit, or `Err(PassNotVip)` unless the filter says the packet may
/// be for a VIP.
#[inline(always)]
pub(crate) fn screen(flow: &FlowKey) -> Result<u32, Reason> {
    let bit = vip_filter_bit(&flow.dst, flow.dport_be, flow.proto, flow.family);
    match VIP_FILTER.get(bit / 64) {
        Some(word) if word >> (bit % 64) & 1 != 0 => Ok(bit),
        _ => Err(Reason::PassNotVip),
    }
}

/// The VIP the packet is addressed to (its filter bit is `bit`).
#[inline(always)]
pub(crate) fn lookup_vip(flow: &FlowKey, bit: u32) -> Result<VipInfo, Reason> {
    let entry = VIP_INDEX.get(bit).ok_or(Reason::PassNotVip)?;
    if entry.info.vip_id != VIP_INDEX_SHARED {
        return if entry.info.vip_id != 0 && entry.key.matches(flow) {
            Ok(entry.info)
        } else {
            Err(Reason::PassNotVip)
        };
    }
    let key = vip_key(flow);
    let info = VIPS.get_ptr(&key).ok_or(Reason::PassNotVip)?;
    // SAFETY: a non-null pointer from bpf_map_lookup_elem to a plain-data value.
    Ok(unsafe { *info })
}

#[inline(always)]
fn vip_key(flow: &FlowKey) -> VipKey {
    VipKey {
        addr: flow.dst,
        port_be: flow.dport_be,
        proto: flow.proto,
        family: flow.family,
    }
}

/// Whether any VIP uses `addr`. Only packets the program cannot parse fully ask this.
#[inline(always)]
pub(crate) fn is_vip_address(addr: &[u8; 16], family: u8) -> bool {
    let key = VipAddrKey {
        addr: *addr,
        family,
        _pad: [0; 3],
    };
    VIP_ADDRS.get_ptr(&key).is_some()
}
