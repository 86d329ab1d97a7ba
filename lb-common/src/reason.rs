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
    /// Sent to a backend (XDP_TX).
    Forwarded = 0,
    /// Not IPv4 or IPv6 (ARP, LLDP, ...): the host's business.
    PassNotIp = 1,
    /// IP traffic that is not addressed to any VIP.
    PassNotVip = 2,
    /// Too short to reach the IP destination address: the kernel validates and drops it.
    PassTruncated = 3,
    /// ICMP or ICMPv6 addressed to a VIP address: left to the host's stack.
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
}

/// Number of reasons: the size of `xlb_reasons`.
pub const REASON_COUNT: u32 = 11;

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
    ];

    /// The XDP action this reason implies.
    #[inline(always)]
    pub const fn action(self) -> u32 {
        match self {
            Reason::Forwarded => XDP_TX,
            Reason::PassNotIp | Reason::PassNotVip | Reason::PassTruncated | Reason::PassIcmp => {
                XDP_PASS
            }
            Reason::DropTruncated
            | Reason::DropFragment
            | Reason::DropIpv6ExtHeader
            | Reason::DropUnknownProto
            | Reason::DropNoBackend
            | Reason::DropBadHeader => XDP_DROP,
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
            let prefix = match a.action() {
                XDP_DROP => "drop_",
                XDP_PASS => "pass_",
                _ => "forwarded",
            };
            assert!(a.name().starts_with(prefix), "{}", a.name());
        }
    }
}
