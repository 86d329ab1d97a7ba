//! Stage 2: is this packet for a VIP? One hash lookup on (address, port, protocol).

use lb_common::{FlowKey, Reason, VipAddrKey, VipInfo, VipKey};

use crate::{maps::VIP_ADDRS, maps::VIPS, parse::Packet};

#[inline(always)]
pub fn lookup_vip(pkt: &Packet) -> Result<VipInfo, Reason> {
    let key = vip_key(&pkt.key);
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
pub fn is_vip_address(addr: &[u8; 16], family: u8) -> bool {
    let key = VipAddrKey {
        addr: *addr,
        family,
        _pad: [0; 3],
    };
    VIP_ADDRS.get_ptr(&key).is_some()
}
