//! Every verdict the XDP program can reach, with a stable name. The program counts each
//! packet under exactly one reason in `xlb_reasons` (indexed by the discriminant), and the
//! exporter reads names from this same enum, so the two can never disagree.

/// XDP action codes (linux/bpf.h `enum xdp_action`).
pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

/// Why the program returned what it returned.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Sent to a backend (XDP_TX, or XDP_REDIRECT when an `ipip` route leaves by another
    /// interface).
    Forwarded = 0,
    /// Not IPv4 or IPv6 (ARP, LLDP, ...): the host's business.
    PassNotIp = 1,
    /// IP traffic that is not addressed to any VIP.
    PassNotVip = 2,
    /// Too short to reach the IP destination address: the kernel validates and drops it.
    PassTruncated = 3,
    /// ICMP or ICMPv6 addressed to a VIP address that is neither an error about a flow
    /// nor an echo request xlb answers (echo replies, echo with `icmp_echo = false`,
    /// router advertisements, ...): left to the host's stack.
    PassIcmp = 4,
    /// Addressed to a VIP address, but the TCP/UDP header is cut short.
    DropTruncated = 5,
    /// An IP fragment addressed to a VIP address (no ports to select a backend with).
    DropFragment = 6,
    /// IPv6 with extension headers, addressed to a VIP address.
    DropIpv6ExtHeader = 7,
    /// A protocol other than TCP, UDP or ICMP addressed to a VIP address.
    DropUnknownProto = 8,
    /// A VIP with no table installed or no live backend in the chosen slot.
    DropNoBackend = 9,
    /// An IPv4 header whose length field is below 20 bytes or whose version is wrong.
    DropBadHeader = 10,
    /// An ICMP or ICMPv6 error (unreachable, fragmentation needed / packet too big, time
    /// exceeded, parameter problem) about a flow of a VIP, sent to the backend that owns
    /// the flow, as that flow's own packets would be.
    ForwardedIcmpError = 11,
    /// An ICMP or ICMPv6 echo request to a VIP address, answered by xlb (XDP_TX).
    ReplyIcmpEcho = 12,
    /// A packet of an `ipip` VIP that would exceed the egress MTU once encapsulated: not
    /// sent; the client got an ICMP "fragmentation needed" / ICMPv6 "packet too big"
    /// with the MTU it may use (XDP_TX).
    ReplyTooBig = 13,
    /// Too big to encapsulate, and no ICMP may be sent about it: it is itself an ICMP
    /// error being forwarded.
    DropTooBig = 14,
    /// `ipip`: the kernel's FIB has no usable route to the backend (unreachable,
    /// blackhole, prohibit, or not a unicast route).
    DropFibNoRoute = 15,
    /// `ipip`: the route's next hop has no resolved neighbour (ARP / ND) entry yet.
    DropFibNoNeighbour = 16,
    /// `ipip`: forwarding is off on the receiving interface
    /// (`net.ipv4.conf.IFACE.forwarding`, `net.ipv6.conf.IFACE.forwarding`), and the
    /// kernel's FIB lookup refuses to route for it.
    DropFibForwardingOff = 17,
    /// `ipip`: no outer source is configured for the backend's family, or the backend is
    /// of another family than the VIP (`xlb validate` refuses both).
    DropEncapConfig = 18,
    /// An ICMP or ICMPv6 error to a VIP address whose quoted packet is cut short or is
    /// not the IP header and first 8 bytes of a TCP or UDP packet from that address.
    DropIcmpMalformed = 19,
    /// An ICMP or ICMPv6 error to a VIP address whose quoted packet is well formed but is
    /// not from a VIP (another port or protocol): left to the host's stack.
    PassIcmpUnrelated = 20,
}

/// Number of reasons: the size of `xlb_reasons`.
pub const REASON_COUNT: u32 = 21;

impl Reason {
    /// Every reason, in discriminant order.
    pub const ALL: [Reason; REASON_COUNT as usize] = [
        Reason::Forwarded,
        Reason::PassNotIp,
        Reason::PassNotVip,
        Reason::PassTruncated,
        Reason::PassIcmp,
        Reason::DropTruncated,
        Reason::DropFragment,
        Reason::DropIpv6ExtHeader,
        Reason::DropUnknownProto,
        Reason::DropNoBackend,
        Reason::DropBadHeader,
        Reason::ForwardedIcmpError,
        Reason::ReplyIcmpEcho,
        Reason::ReplyTooBig,
        Reason::DropTooBig,
        Reason::DropFibNoRoute,
        Reason::DropFibNoNeighbour,
        Reason::DropFibForwardingOff,
        Reason::DropEncapConfig,
        Reason::DropIcmpMalformed,
        Reason::PassIcmpUnrelated,
    ];

    /// The XDP action this reason implies. A forwarded packet whose route leaves by
    /// another interface than it came in on is redirected instead (XDP_REDIRECT).
    #[inline(always)]
    pub const fn action(self) -> u32 {
        match self {
            Reason::Forwarded
            | Reason::ForwardedIcmpError
            | Reason::ReplyIcmpEcho
            | Reason::ReplyTooBig => XDP_TX,
            Reason::PassNotIp
            | Reason::PassNotVip
            | Reason::PassTruncated
            | Reason::PassIcmp
            | Reason::PassIcmpUnrelated => XDP_PASS,
            Reason::DropTruncated
            | Reason::DropFragment
            | Reason::DropIpv6ExtHeader
            | Reason::DropUnknownProto
            | Reason::DropNoBackend
            | Reason::DropBadHeader
            | Reason::DropTooBig
            | Reason::DropFibNoRoute
            | Reason::DropFibNoNeighbour
            | Reason::DropFibForwardingOff
            | Reason::DropEncapConfig
            | Reason::DropIcmpMalformed => XDP_DROP,
        }
    }

    /// Stable name used by `xlb stats`, metrics and docs.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::Forwarded => "forwarded",
            Reason::PassNotIp => "pass_not_ip",
            Reason::PassNotVip => "pass_not_vip",
            Reason::PassTruncated => "pass_truncated",
            Reason::PassIcmp => "pass_icmp",
            Reason::DropTruncated => "drop_truncated",
            Reason::DropFragment => "drop_fragment",
            Reason::DropIpv6ExtHeader => "drop_ipv6_ext_header",
            Reason::DropUnknownProto => "drop_unknown_proto",
            Reason::DropNoBackend => "drop_no_backend",
            Reason::DropBadHeader => "drop_bad_header",
            Reason::ForwardedIcmpError => "forwarded_icmp_error",
            Reason::ReplyIcmpEcho => "reply_icmp_echo",
            Reason::ReplyTooBig => "reply_too_big",
            Reason::DropTooBig => "drop_too_big",
            Reason::DropFibNoRoute => "drop_fib_no_route",
            Reason::DropFibNoNeighbour => "drop_fib_no_neighbour",
            Reason::DropFibForwardingOff => "drop_fib_forwarding_off",
            Reason::DropEncapConfig => "drop_encap_config",
            Reason::DropIcmpMalformed => "drop_icmp_malformed",
            Reason::PassIcmpUnrelated => "pass_icmp_unrelated",
        }
    }

    /// Index into `xlb_reasons`.
    #[inline(always)]
    pub const fn index(self) -> u32 {
        self as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_reason_in_discriminant_order() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(r.index() as usize, i, "{r:?} out of order");
        }
    }

    #[test]
    fn names_are_unique_and_prefixed_by_action() {
        for (i, a) in Reason::ALL.iter().enumerate() {
            for b in &Reason::ALL[i + 1..] {
                assert_ne!(a.name(), b.name());
            }
            let prefixes: &[&str] = match a.action() {
                XDP_DROP => &["drop_"],
                XDP_PASS => &["pass_"],
                _ => &["forwarded", "reply_"],
            };
            assert!(
                prefixes.iter().any(|p| a.name().starts_with(p)),
                "{}",
                a.name()
            );
        }
    }
}
