//! Map names (the names the kernel and bpftool show, and the file names under the pin
//! directory) and compile-time map capacities. The kernel keeps at most 15 bytes of a
//! map name (BPF_OBJ_NAME_LEN - 1), so every name here stays within that.

/// Program-wide settings: hash seed, the receiving interface's MAC.
pub const CONFIG: &str = "xlb_config";
/// VIP (address, port, protocol) -> VIP id and flags.
pub const VIPS: &str = "xlb_vips";
/// One bit per hash of (address, port, protocol) of every VIP: the cheap test that lets
/// traffic for the host pass without a hash-map lookup.
pub const VIP_FILTER: &str = "xlb_vip_filter";
/// `vip_filter_bit` -> the one VIP with that bit (key and info), or "shared": the
/// program's way to its VIP without a hash lookup.
pub const VIP_INDEX: &str = "xlb_vip_index";
/// Every address any VIP uses; tells a fragment or odd protocol aimed at a VIP apart from
/// host traffic.
pub const VIP_ADDRS: &str = "xlb_vip_addrs";
/// The outer source addresses of `ipip` forwarding (one entry).
pub const ENCAP: &str = "xlb_encap";
/// VIP id -> that VIP's live table (an inner array map), swapped in one update.
pub const RINGS: &str = "xlb_rings";
/// Backend id -> where to send (MAC, address) and whether it is live.
pub const BACKENDS: &str = "xlb_backends";
/// Flow 5-tuple -> backend id, generation, last packet time; only flows in changed
/// slots have an entry (a hash map that never evicts: userspace ages entries out).
pub const FLOWS: &str = "xlb_flows";
/// Per CPU: flow-table inserts, inserts refused (full, flood guard), the guard's window.
pub const FLOW_STATS: &str = "xlb_flow_stats";
/// Backend id -> per-CPU {packets, bytes, new_flows}.
pub const BACKEND_STATS: &str = "xlb_be_stats";
/// VIP id -> per-CPU {packets, bytes, new_flows, drops}.
pub const VIP_STATS: &str = "xlb_vip_stats";
/// Reason -> per-CPU {packets, bytes}, for every verdict the program returns.
pub const REASON_STATS: &str = "xlb_reasons";

/// What `xlb trace` asked to see (one entry; all zero: off): the program's global
/// `XLB_TRACE`, in a data section of its own, which the loader makes a one-entry array.
pub const TRACE: &str = ".data.xlb_trace";
/// Per CPU: the trace's rate-bound window and the records it held back.
pub const TRACE_RATE: &str = "xlb_trace_rate";
/// aya-log's ring buffer, which carries the trace records to the daemon.
pub const TRACE_LOGS: &str = "AYA_LOGS";

/// Maps every load creates afresh and never pins: the trace belongs to the program
/// instance, so a new program starts with tracing off.
pub const PROGRAM_LOCAL: [&str; 3] = [TRACE, TRACE_RATE, TRACE_LOGS];

/// Every pinned map the program defines, in one list for loaders and tests.
pub const ALL: [&str; 13] = [
    CONFIG,
    ENCAP,
    VIP_FILTER,
    VIP_INDEX,
    VIPS,
    VIP_ADDRS,
    RINGS,
    BACKENDS,
    FLOWS,
    FLOW_STATS,
    BACKEND_STATS,
    VIP_STATS,
    REASON_STATS,
];

/// Largest `[daemon] max_vips`: entries of the per-VIP arrays (VIP ids are
/// `1..max_vips`; 0 means "none"). The object's maps have this many; the loader sizes
/// `xlb_rings` and `xlb_vip_stats` to the configured number.
pub const MAX_VIPS: u32 = 1024;
/// Largest `[daemon] max_backends`: entries of the per-backend arrays (ids are
/// `1..max_backends`; 0 means "empty slot"); the loader sizes `xlb_backends` and
/// `xlb_be_stats` to the configured number.
pub const MAX_BACKENDS: u32 = 4096;
/// Default `[daemon] max_vips`.
pub const DEFAULT_MAX_VIPS: u32 = 64;
/// Default `[daemon] max_backends`.
pub const DEFAULT_MAX_BACKENDS: u32 = 512;
/// The maps sized by `[daemon] max_vips`.
pub const SIZED_BY_VIPS: [&str; 2] = [RINGS, VIP_STATS];
/// The maps sized by `[daemon] max_backends`.
pub const SIZED_BY_BACKENDS: [&str; 2] = [BACKENDS, BACKEND_STATS];
/// Bits of `xlb_vip_filter` (a power of two; at 1023 VIPs about 1.6 % of them are set).
pub const VIP_FILTER_BITS: u32 = 1 << 16;
/// `xlb_vip_filter` entries: the bits in 64-bit words.
pub const VIP_FILTER_WORDS: u32 = VIP_FILTER_BITS / 64;
/// Default flow-table capacity (2^20 entries); the loader may set another one. The
/// table allocates entries as they are written (`BPF_F_NO_PREALLOC`), so its memory
/// follows the flows in changed slots, not this bound.
pub const DEFAULT_FLOW_CAPACITY: u32 = 1 << 20;
/// `BPF_F_NO_PREALLOC`: a hash map allocates each element when it is inserted.
pub const BPF_F_NO_PREALLOC: u32 = 1;
/// Default flood guard: new flow entries per second per CPU.
pub const DEFAULT_FLOW_INSERT_RATE: u32 = 125_000;

/// Entries at the start of every table (inner map) before the slots: the table size,
/// the table's generation and the end of its UDP grace window. Keeping them inside the
/// table makes "size, generation and slots" one object that is swapped as a whole.
pub const TABLE_HEADER: u32 = 3;
/// Header index of the number of slots.
pub const TABLE_HDR_SIZE: u32 = 0;
/// Header index of the generation (low 32 bits) that built this table.
pub const TABLE_HDR_GENERATION: u32 = 1;
/// Header index of the end of the UDP grace window (`CLOCK_MONOTONIC` seconds): until
/// then, a UDP flow with no entry in a changed slot is taken to be older than the
/// change (see `unknown_flow_follows_previous`).
pub const TABLE_HDR_UDP_GRACE: u32 = 2;
/// Default table size: a prime, so every backend's permutation visits every slot.
pub const DEFAULT_TABLE_SIZE: u32 = 65537;
/// Largest table size the program accepts (the template inner map's capacity is
/// `DEFAULT_TABLE_SIZE + TABLE_HEADER`; inner maps carry BPF_F_INNER_MAP so each VIP's
/// table may have its own size up to this bound).
pub const MAX_TABLE_SIZE: u32 = 1 << 20;

/// `BPF_F_INNER_MAP`: inner maps of differing `max_entries` may share one outer map.
pub const BPF_F_INNER_MAP: u32 = 1 << 12;
/// `BPF_F_MMAPABLE`: userspace may mmap the array's values.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;
/// Flags of every table (inner map) and of the template in `xlb_rings`; the kernel only
/// accepts inner maps whose flags equal the template's. Mmap-able so that userspace
/// fills a new table with memory writes.
pub const TABLE_MAP_FLAGS: u32 = BPF_F_INNER_MAP | BPF_F_MMAPABLE;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_in_kernel_object_name() {
        for name in ALL {
            assert!(name.len() <= 15, "{name} is longer than 15 bytes");
            assert!(name.is_ascii());
        }
    }
}
