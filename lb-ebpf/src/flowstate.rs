//! Stage 3b: flows in a changed slot. Only packets whose slot has a previous owner come
//! here (see `lb_common::Slot`). A flow with an entry keeps its backend while that
//! backend is live and serves the VIP; a flow without one follows
//! `lb_common::unknown_flow_follows_previous` (a TCP SYN: the owner; other TCP: the
//! previous owner; UDP: the previous owner during the table's grace window) and is
//! recorded, so it stays put if the slot changes again. Every entry carries its last
//! packet's time; userspace deletes idle entries and clears the slot once no entry in
//! it names another backend than the owner.
//!
//! The flood guard: new entries are written at most `Config::flow_insert_rate` times a
//! second on each CPU. The map never evicts, so whatever a flood does, no entry of an
//! established flow is lost. A flow refused an entry is still forwarded: a SYN to the
//! previous owner (where its unrecorded later packets will go too), anything else as
//! the rule says.
//!
//! An ICMP error about a flow (`Mode::Lookup`) is chosen for exactly as the flow's next
//! packet would be, but writes nothing: neither a new entry nor the entry's time.

use aya_ebpf::{btf_maps::Array, helpers::bpf_ktime_get_coarse_ns};
use lb_common::{
    Backend, FlowKey, FlowValue, Slot, VipInfo,
    maps::{TABLE_HDR_GENERATION, TABLE_HDR_UDP_GRACE},
    unknown_flow_follows_previous,
};

use crate::{
    maps::{BACKENDS, CONFIG, FLOW_STATS, FLOWS},
    select::{Chosen, Mode, serving},
};

const SECOND_NS: u64 = 1_000_000_000;

#[inline(always)]
pub(crate) fn changed_slot<const N: usize, const F: usize>(
    flow: &FlowKey,
    vip: &VipInfo,
    table: &Array<u32, N, F>,
    slot: Slot,
    syn: bool,
    hash: u32,
    mode: Mode,
) -> Option<Chosen> {
    // SAFETY: a helper without arguments or preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let entry = FLOWS.get_ptr_mut(flow);
    if let Some(entry) = entry {
        // SAFETY: non-null pointer from bpf_map_lookup_elem; the value is plain data,
        // and a torn update of it by another CPU is harmless (same flow, same answer).
        let id = unsafe { (*entry).backend_id };
        // A SYN opens a new connection: it keeps the entry only if it is a
        // retransmission to the slot's owner.
        if (!syn || id == slot.owner)
            && let Some(backend) = BACKENDS.get(id)
            && backend.serves(flow)
        {
            if mode == Mode::Packet {
                // SAFETY: as above.
                unsafe { (*entry).last_seen_ns = now };
            }
            return Some(stateful(id, backend, false, hash));
        }
    }
    let grace_until = table.get(TABLE_HDR_UDP_GRACE).copied().unwrap_or(0);
    let to_previous =
        unknown_flow_follows_previous(flow.proto, syn, (now / SECOND_NS) as u32, grace_until);
    let previous = serving(slot.previous, vip);
    let (id, backend, new_flow) = match previous {
        Some(backend) if to_previous => (slot.previous, backend, false),
        // A previous owner that left (or no previous): the owner, a new flow for it.
        _ => (slot.owner, serving(slot.owner, vip)?, true),
    };
    if mode == Mode::Lookup {
        return Some(stateful(id, backend, false, hash));
    }
    let value = FlowValue {
        backend_id: id,
        generation: table.get(TABLE_HDR_GENERATION).copied().unwrap_or(0),
        last_seen_ns: now,
    };
    let recorded = match entry {
        Some(entry) => {
            // SAFETY: as above. Rewriting an entry does not grow the table: no guard.
            unsafe { *entry = value };
            true
        }
        // A slot whose owner came back (a change reverted) sends an unknown flow to the
        // same backend whichever rule applies: an entry would change nothing.
        None if slot.previous == slot.owner => true,
        None => record(flow, &value, now),
    };
    // A new TCP connection that could not be recorded (flood guard, full table) would
    // see its later packets follow the previous owner: so it starts there too. It
    // works, and lands where it would have before the change. It is not counted as a
    // new flow: it follows the old table, and counting it would make the new table's
    // shares look off to the watch.
    // (Looked up again: the verifier cannot follow `previous` through the merged paths.)
    if !recorded
        && syn
        && let Some(backend) = serving(slot.previous, vip)
    {
        return Some(stateful(slot.previous, backend, false, hash));
    }
    Some(stateful(id, backend, new_flow, hash))
}

#[inline(always)]
fn stateful(backend_id: u32, backend: &'static Backend, new_flow: bool, hash: u32) -> Chosen {
    Chosen {
        backend_id,
        backend,
        new_flow,
        stateful: true,
        hash,
    }
}

/// Writes a new entry unless this CPU's guard window is used up; whether the flow has
/// an entry now.
#[inline(always)]
fn record(flow: &FlowKey, value: &FlowValue, now: u64) -> bool {
    let Some(stats) = FLOW_STATS.get_ptr_mut(0) else {
        return false;
    };
    let rate = CONFIG.get(0).map_or(0, |c| c.flow_insert_rate);
    // SAFETY: this CPU's slot from bpf_map_lookup_elem; only this CPU writes it now.
    unsafe {
        if now.wrapping_sub((*stats).window_ns) >= SECOND_NS {
            (*stats).window_ns = now;
            (*stats).window_inserts = 0;
        }
        if (*stats).window_inserts >= rate {
            (*stats).refused_rate += 1;
            return false;
        }
        (*stats).window_inserts += 1;
        // BPF_NOEXIST: another CPU may have written this flow since the lookup; its
        // entry stands.
        match FLOWS.insert(flow, value, BPF_NOEXIST) {
            Ok(()) => {
                (*stats).inserts += 1;
                true
            }
            Err(e) if e == -EEXIST => true,
            Err(_) => {
                (*stats).refused_full += 1;
                false
            }
        }
    }
}

/// `BPF_NOEXIST` (linux/bpf.h): insert only if the key is absent.
const BPF_NOEXIST: u64 = 1;
/// `EEXIST` (errno).
const EEXIST: i32 = 17;
