//! Every map the program uses. Names match `lb_common::maps` (a test checks the built
//! object against that list); capacities the loader may override are marked.

use aya_ebpf::{
    btf_maps::{Array, ArrayOfMaps, HashMap, PerCpuArray},
    macros::btf_map,
};
use lb_common::{
    Backend, BackendStats, Config, Encap, FlowKey, FlowStats, FlowValue, ReasonStats, TraceRate,
    VipAddrInfo, VipAddrKey, VipIndexEntry, VipInfo, VipKey, VipStats,
    maps::{
        BPF_F_NO_PREALLOC, DEFAULT_FLOW_CAPACITY, DEFAULT_TABLE_SIZE, MAX_BACKENDS, MAX_VIPS,
        TABLE_HEADER, TABLE_MAP_FLAGS, VIP_FILTER_BITS, VIP_FILTER_WORDS,
    },
    reason::REASON_COUNT,
};

const TEMPLATE_TABLE_ENTRIES: usize = (DEFAULT_TABLE_SIZE + TABLE_HEADER) as usize;

/// Hash seed, this interface's MAC, the flood guard's rate (one entry).
#[btf_map(name = "xlb_config")]
pub(crate) static CONFIG: Array<Config, 1> = Array::new();

/// The outer source addresses of `ipip` forwarding (one entry).
#[btf_map(name = "xlb_encap")]
pub(crate) static ENCAP: Array<Encap, 1> = Array::new();

/// Bit `vip_filter_bit(address, port, protocol)` is set for every VIP; a packet whose bit
/// is clear is not for a VIP.
#[btf_map(name = "xlb_vip_filter")]
pub(crate) static VIP_FILTER: Array<u64, { VIP_FILTER_WORDS as usize }> = Array::new();

/// Filter bit -> the one VIP with that bit, or "shared" (then `xlb_vips` decides).
#[btf_map(name = "xlb_vip_index")]
pub(crate) static VIP_INDEX: Array<VipIndexEntry, { VIP_FILTER_BITS as usize }> = Array::new();

/// (VIP address, port, protocol) -> VIP id and forwarding method.
#[btf_map(name = "xlb_vips")]
pub(crate) static VIPS: HashMap<VipKey, VipInfo, { MAX_VIPS as usize }> = HashMap::new();

/// Addresses used by any VIP, with their ICMP flags; consulted for ICMP and for packets
/// the program cannot parse fully.
#[btf_map(name = "xlb_vip_addrs")]
pub(crate) static VIP_ADDRS: HashMap<VipAddrKey, VipAddrInfo, { MAX_VIPS as usize }> =
    HashMap::new();

/// VIP id -> the VIP's live table: `[size, generation, UDP grace end, slot 0 .. slot
/// size-1]`, each slot a packed `lb_common::Slot`. The control plane builds a complete
/// new inner map and swaps it in with one update.
#[btf_map(name = "xlb_rings")]
pub(crate) static RINGS: ArrayOfMaps<
    Array<u32, TEMPLATE_TABLE_ENTRIES, { TABLE_MAP_FLAGS as usize }>,
    { MAX_VIPS as usize },
> = ArrayOfMaps::new();

/// Backend id -> MAC, address, live flag, the VIP it serves (id and key).
#[btf_map(name = "xlb_backends")]
pub(crate) static BACKENDS: Array<Backend, { MAX_BACKENDS as usize }> = Array::new();

/// Connection 5-tuple -> pinned backend, for flows in changed slots only (capacity set
/// by the loader). A plain hash map: a full table refuses inserts and evicts nothing.
#[btf_map(name = "xlb_flows")]
pub(crate) static FLOWS: HashMap<
    FlowKey,
    FlowValue,
    { DEFAULT_FLOW_CAPACITY as usize },
    { BPF_F_NO_PREALLOC as usize },
> = HashMap::new();

/// Per CPU: flow-table inserts and refusals, and the flood guard's window.
#[btf_map(name = "xlb_flow_stats")]
pub(crate) static FLOW_STATS: PerCpuArray<FlowStats, 1> = PerCpuArray::new();

/// Backend id -> per-CPU packets, bytes, new flows.
#[btf_map(name = "xlb_be_stats")]
pub(crate) static BACKEND_STATS: PerCpuArray<BackendStats, { MAX_BACKENDS as usize }> =
    PerCpuArray::new();

/// VIP id -> per-CPU packets, bytes, new flows, drops, packets that were stateful.
#[btf_map(name = "xlb_vip_stats")]
pub(crate) static VIP_STATS: PerCpuArray<VipStats, { MAX_VIPS as usize }> = PerCpuArray::new();

/// Reason -> per-CPU packets, bytes.
#[btf_map(name = "xlb_reasons")]
pub(crate) static REASON_STATS: PerCpuArray<ReasonStats, { REASON_COUNT as usize }> =
    PerCpuArray::new();

/// Per CPU: the trace's rate bound.
#[btf_map(name = "xlb_trace_rate")]
pub(crate) static TRACE_RATE: PerCpuArray<TraceRate, 1> = PerCpuArray::new();
