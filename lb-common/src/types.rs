//! Map key and value layouts. Every type is `#[repr(C)]` with explicit padding fields so
//! `bytemuck::Pod` can prove there are no implicit holes, and each has a size assertion:
//! the kernel and userspace must agree byte for byte. No `bool`, `Option` or data-carrying
//! enums cross the boundary. Addresses are 16-byte arrays in network byte order; an IPv4
//! address takes the first 4 bytes and the rest stay zero.
//!
//! The keys the program builds on its stack are `align(4)` or `align(8)`: the program is
//! compiled with misaligned memory access allowed (packet headers sit at 2-byte offsets,
//! and one 4-byte load beats four byte loads), and the verifier rejects every misaligned
//! access to the stack, so whatever the program keeps there must be aligned.

use bytemuck::{Pod, Zeroable};

/// `family` value of an IPv4 key or backend.
pub const FAMILY_V4: u8 = 4;
/// `family` value of an IPv6 key or backend.
pub const FAMILY_V6: u8 = 6;

/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;

/// `Backend::flags`: the backend may receive traffic.
pub const BACKEND_LIVE: u16 = 1;

/// `VipInfo::forwarding`: rewrite MACs and bounce out of the receiving interface.
pub const FWD_L2_DSR: u32 = 0;
/// `VipInfo::forwarding`: encapsulate in an outer IPv4 (IPv4 backend) or IPv6 (IPv6
/// backend) header addressed to the backend, and send it towards the backend's route.
pub const FWD_IPIP: u32 = 1;

/// `VipAddrInfo::flags`: answer ICMP / ICMPv6 echo requests to this address.
pub const ADDR_ICMP_ECHO: u16 = 1;

/// Key of `xlb_vips`: which traffic is a VIP's.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct VipKey {
    /// Destination address, network byte order.
    pub addr: [u8; 16],
    /// Destination port, network byte order (as it appears in the packet).
    pub port_be: u16,
    /// IP protocol: [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
}

impl VipKey {
    /// This VIP's bit of `xlb_vip_filter` (see [`crate::vip_filter_bit`]).
    #[inline(always)]
    pub fn filter_bit(&self) -> u32 {
        crate::vip_filter_bit(&self.addr, self.port_be, self.proto, self.family)
    }
}

/// Value of `xlb_vips`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct VipInfo {
    /// Index into `xlb_rings` and `xlb_vip_stats`; never 0.
    pub vip_id: u32,
    /// Forwarding method, one of the `FWD_*` constants.
    pub forwarding: u32,
}

/// Value of `xlb_vip_index` (indexed by `vip_filter_bit`): the one VIP whose filter bit
/// this is, so that a packet finds its VIP with an array read and a key compare
/// instead of a hash lookup. `info.vip_id` 0: no VIP has the bit;
/// [`VIP_INDEX_SHARED`]: several do, and `xlb_vips` decides.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct VipIndexEntry {
    pub key: VipKey,
    pub info: VipInfo,
}

/// `VipIndexEntry::info.vip_id` of a filter bit several VIPs share.
pub const VIP_INDEX_SHARED: u32 = u32::MAX;

impl VipKey {
    /// Whether a packet of `flow` is addressed to this VIP (four word compares for the
    /// address, as `same_addr`).
    #[inline(always)]
    pub fn matches(&self, flow: &FlowKey) -> bool {
        self.port_be == flow.dport_be
            && self.proto == flow.proto
            && self.family == flow.family
            && same_addr(&self.addr, &flow.dst)
    }
}

/// Key of `xlb_vip_addrs`: an address some VIP listens on.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct VipAddrKey {
    /// Network byte order.
    pub addr: [u8; 16],
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    pub _pad: [u8; 3],
}

/// Value of `xlb_vip_addrs`: how many VIPs use the address, and what the program does
/// with ICMP to it. (It was a plain `u32` count; the count still fits the low half.)
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct VipAddrInfo {
    /// VIPs (address, port, protocol) on this address.
    pub users: u16,
    /// [`ADDR_ICMP_ECHO`].
    pub flags: u16,
}

/// Value of `xlb_encap` (one entry): the outer source addresses of `ipip` forwarding.
/// A flow's outer source is the prefix with its host bits taken from the flow hash
/// ([`outer_source_v4`], [`outer_source_v6`]), so a backend's receive-side scaling,
/// which hashes the outer addresses, spreads the flows over its queues. An all-zero
/// prefix: no source is configured for that family.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Encap {
    /// IPv4 prefix, network byte order.
    pub v4_prefix: [u8; 4],
    /// The IPv4 host bits the flow hash fills (`!netmask`; 0 for a single address),
    /// network byte order.
    pub v4_host_mask: [u8; 4],
    /// IPv6 prefix, network byte order.
    pub v6_prefix: [u8; 16],
    /// The host bits of the IPv6 source's last 32 bits that the flow hash fills,
    /// network byte order (a prefix shorter than /96 still varies only those 32).
    pub v6_host_mask: [u8; 4],
}

/// The outer IPv4 source of a flow with hash `hash`.
#[inline(always)]
pub const fn outer_source_v4(encap: &Encap, hash: u32) -> [u8; 4] {
    let prefix = u32::from_be_bytes(encap.v4_prefix);
    let mask = u32::from_be_bytes(encap.v4_host_mask);
    (prefix | (hash & mask)).to_be_bytes()
}

/// The last 32 bits of the outer IPv6 source of a flow with hash `hash` (the first 96
/// are the prefix's).
#[inline(always)]
pub const fn outer_source_v6_tail(encap: &Encap, hash: u32) -> [u8; 4] {
    let prefix = u32::from_be_bytes([
        encap.v6_prefix[12],
        encap.v6_prefix[13],
        encap.v6_prefix[14],
        encap.v6_prefix[15],
    ]);
    let mask = u32::from_be_bytes(encap.v6_host_mask);
    (prefix | (hash & mask)).to_be_bytes()
}

/// The outer IPv6 source of a flow with hash `hash`.
pub fn outer_source_v6(encap: &Encap, hash: u32) -> [u8; 16] {
    let mut a = encap.v6_prefix;
    a[12..].copy_from_slice(&outer_source_v6_tail(encap, hash));
    a
}

/// TTL / hop limit of every packet xlb builds (outer headers, ICMP answers).
pub const OUTER_TTL: u8 = 64;

/// The IPv6 flow label of an outer header for a flow with hash `hash` (20 bits), so
/// that routers on the way hash the flow's packets onto one path.
#[inline(always)]
pub const fn outer_flow_label(hash: u32) -> u32 {
    hash & 0x000f_ffff
}

/// Value of `xlb_backends`: where a backend lives.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Backend {
    /// Backend's MAC address (l2-dsr destination).
    pub mac: [u8; 6],
    /// [`BACKEND_LIVE`] when the backend may receive traffic.
    pub flags: u16,
    /// The VIP this backend serves (index of its counters).
    pub vip_id: u32,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    pub _pad: [u8; 3],
    /// Backend's address, network byte order.
    pub addr: [u8; 16],
    /// The `xlb_vips` key of the VIP this backend serves. A packet of a known flow is
    /// checked against it instead of looking the VIP up again (see [`Backend::serves`]).
    pub vip_key: VipKey,
}

impl Backend {
    /// Whether the program may send traffic to this backend.
    #[inline(always)]
    pub const fn is_live(&self) -> bool {
        self.flags & BACKEND_LIVE != 0
    }

    /// Whether this backend may take traffic of VIP `vip_id`: it is live and serves that
    /// VIP. The program asks this of a slot's owner and previous owner; `xlb explain`
    /// asks the same.
    #[inline(always)]
    pub const fn is_live_for(&self, vip_id: u32) -> bool {
        self.is_live() && self.vip_id == vip_id
    }

    /// Whether a packet of `flow` may still go to this backend: the backend is live and
    /// serves the VIP (address, port, protocol) the packet is addressed to. The program
    /// asks this of a flow entry's backend; `xlb explain` asks the same.
    #[inline(always)]
    pub fn serves(&self, flow: &FlowKey) -> bool {
        self.is_live() && self.vip_key.matches(flow)
    }
}

/// Address equality in four word compares (a slice compare would become a `bcmp` call
/// in the BPF program).
#[inline(always)]
pub fn same_addr(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let w = crate::hash::word;
    w(a, 0) == w(b, 0) && w(a, 1) == w(b, 1) && w(a, 2) == w(b, 2) && w(a, 3) == w(b, 3)
}

/// Key of `xlb_flows`: one direction of a connection, as the client sent it.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct FlowKey {
    /// Client address, network byte order.
    pub src: [u8; 16],
    /// VIP address, network byte order.
    pub dst: [u8; 16],
    /// Client port, network byte order.
    pub sport_be: u16,
    /// VIP port, network byte order.
    pub dport_be: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// Value of `xlb_flows`. Only flows in a changed slot have one (see [`Slot`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct FlowValue {
    /// The backend this flow is pinned to.
    pub backend_id: u32,
    /// Generation (low 32 bits) of the table that was live when the entry was written.
    pub generation: u32,
    /// `CLOCK_MONOTONIC` time (ns, `bpf_ktime_get_coarse_ns`) of the flow's latest
    /// packet: userspace deletes entries idle for longer than `flow_idle_timeout`.
    pub last_seen_ns: u64,
}

/// A table slot as stored: the backend id that owns it (bits 0-15) and, while the slot
/// is *changed*, the id of an earlier owner whose flows may still be alive (bits 16-31;
/// 0: the slot is stateless). Backend ids are below 4096, so both fit.
///
/// A packet in a stateless slot goes to the owner with no flow-table access at all. In a
/// changed slot the flow table decides, and a flow it does not know follows
/// [`unknown_flow_follows_previous`]. Userspace sets `previous` when a new table gives
/// the slot another owner (keeping the oldest previous owner if the slot is already
/// changed), and clears it once no live flow entry of the slot names another backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slot {
    pub owner: u32,
    pub previous: u32,
}

impl Slot {
    /// Decodes a stored slot.
    #[inline(always)]
    pub const fn unpack(v: u32) -> Slot {
        Slot {
            owner: v & 0xffff,
            previous: v >> 16,
        }
    }

    /// The stored form.
    #[inline(always)]
    pub const fn pack(self) -> u32 {
        (self.owner & 0xffff) | (self.previous << 16)
    }

    /// Whether packets in this slot consult the flow table.
    #[inline(always)]
    pub const fn is_changed(self) -> bool {
        self.previous != 0
    }
}

/// Where a packet of a flow with no entry goes in a changed slot: `true` for the slot's
/// previous owner, `false` for its owner. A TCP SYN starts a connection, which follows
/// the new table; any other TCP packet belongs to a connection older than the change.
/// UDP has no connection start: during the grace window after the VIP's latest table
/// change (`now_s < grace_until_s`, `CLOCK_MONOTONIC` seconds) an unknown flow is taken
/// to be an old one, afterwards to be new. The program and `xlb explain` both ask this.
#[inline(always)]
pub const fn unknown_flow_follows_previous(
    proto: u8,
    syn: bool,
    now_s: u32,
    grace_until_s: u32,
) -> bool {
    if proto == PROTO_TCP {
        !syn
    } else {
        now_s < grace_until_s
    }
}

/// Value of `xlb_config` (a one-entry array).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Config {
    /// Seed of the flow hash. Hosts behind one ECMP group use the same seed.
    pub hash_seed: u32,
    /// MAC of the interface the program is attached to: the source MAC of forwarded frames.
    pub if_mac: [u8; 6],
    pub _pad: [u8; 2],
    /// The flood guard: at most this many new flow entries per second on each CPU.
    pub flow_insert_rate: u32,
}

/// Value of `xlb_be_stats` (per CPU; sum the CPUs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct BackendStats {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

/// Value of `xlb_vip_stats` (per CPU; sum the CPUs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct VipStats {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// Packets dropped: no live backend in the slot, or (`ipip`) no route, next-hop
    /// neighbour, forwarding or outer source to send them with.
    pub drops: u64,
    /// Forwarded packets that consulted the flow table (their slot was changed); the
    /// rest of `packets` took the stateless path.
    pub stateful: u64,
}

/// Value of `xlb_flow_stats` (per CPU, one entry; sum the CPUs): the flow table's
/// traffic and the flood guard's window. Only packets in changed slots touch it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct FlowStats {
    /// New entries written.
    pub inserts: u64,
    /// Entries not written because the table was full (nothing is ever evicted).
    pub refused_full: u64,
    /// Entries not written because this CPU had used its `flow_insert_rate` this second.
    pub refused_rate: u64,
    /// Start of the guard's current one-second window (`bpf_ktime_get_coarse_ns`).
    pub window_ns: u64,
    /// Entries written in the current window.
    pub window_inserts: u32,
    pub _pad: u32,
}

/// Value of `xlb_reasons` (per CPU; sum the CPUs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ReasonStats {
    pub packets: u64,
    pub bytes: u64,
}

/// `TraceControl::backend_id` that traces packets of any backend (or of none).
pub const TRACE_ANY_BACKEND: u32 = u32::MAX;

/// The trace switch, `.data.xlb_trace` (the program's global `XLB_TRACE`, one entry):
/// which packet decisions the program reports through
/// aya-log while `xlb trace` runs. All zero, the state of every freshly loaded program,
/// means off.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct TraceControl {
    /// Tracing is on until this `CLOCK_MONOTONIC` time in ns; 0: off. (The program reads
    /// `bpf_ktime_get_coarse_ns`, which trails it by at most a tick.) The daemon renews it while a trace client is attached, so a trace outlives
    /// neither its client nor the daemon by more than the lease.
    pub until_ns: u64,
    /// Only packets to this destination address; `family` 0: any address.
    pub addr: [u8; 16],
    pub family: u8,
    pub _pad: [u8; 3],
    /// Bit `Reason::index()` set: report packets with that verdict.
    pub reasons: u32,
    /// Only packets given this backend; [`TRACE_ANY_BACKEND`]: any.
    pub backend_id: u32,
    /// At most this many records per second on each CPU.
    pub per_cpu_rate: u32,
}

/// Value of `xlb_trace_rate` (per CPU): the rate bound's one-second window.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct TraceRate {
    /// Start of the current window, `bpf_ktime_get_coarse_ns`.
    pub window_ns: u64,
    /// Records sent in the current window.
    pub sent: u32,
    pub _pad: u32,
    /// Records the bound held back, ever (the daemon reports the increase).
    pub suppressed: u64,
}

const _: () = {
    assert!(size_of::<VipKey>() == 20);
    assert!(size_of::<VipInfo>() == 8);
    assert!(size_of::<VipAddrKey>() == 20);
    assert!(size_of::<VipAddrInfo>() == 4);
    assert!(size_of::<Encap>() == 28);
    assert!(size_of::<VipIndexEntry>() == 28);
    assert!(size_of::<Backend>() == 52);
    assert!(size_of::<FlowKey>() == 40);
    assert!(size_of::<FlowValue>() == 16);
    assert!(size_of::<Config>() == 16);
    assert!(size_of::<BackendStats>() == 24);
    assert!(size_of::<VipStats>() == 40);
    assert!(size_of::<FlowStats>() == 40);
    assert!(size_of::<ReasonStats>() == 16);
    assert!(size_of::<TraceControl>() == 40);
    assert!(size_of::<TraceRate>() == 24);
};

#[cfg(feature = "user")]
mod user {
    use super::*;

    // SAFETY: every type is #[repr(C)], bytemuck::Pod (so it has no padding holes and
    // every bit pattern is valid), which is what aya::Pod requires.
    unsafe impl aya::Pod for VipKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for VipInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for VipAddrKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for VipIndexEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for VipAddrInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Encap {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Backend {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for BackendStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for VipStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ReasonStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for TraceControl {}
    // SAFETY: as above.
    unsafe impl aya::Pod for TraceRate {}
}
