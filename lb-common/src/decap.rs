//! The backend side of `ipip`: the `xlb_decap` XDP program (`lb-ebpf/src/bin/xlb-decap.rs`)
//! and what `xlb decap` reads and writes. Its maps, and every verdict it counts.

use crate::reason::{XDP_DROP, XDP_PASS};

/// Load-balancer source prefixes (IPv4) decapsulation is accepted from: an LPM trie.
pub const FROM_V4: &str = "xlb_dcap_from4";
/// Load-balancer source prefixes (IPv6).
pub const FROM_V6: &str = "xlb_dcap_from6";
/// This host's IPv4 addresses: only packets to them are decapsulated.
pub const LOCAL_V4: &str = "xlb_dcap_local4";
/// This host's IPv6 addresses.
pub const LOCAL_V6: &str = "xlb_dcap_local6";
/// Verdict -> per-CPU {packets, bytes} (`ReasonStats`).
pub const STATS: &str = "xlb_dcap_stats";

/// Every map of the decap program, pinned beside its link.
pub const ALL: [&str; 5] = [FROM_V4, FROM_V6, LOCAL_V4, LOCAL_V6, STATS];

/// Entries of each source trie and each local-address map.
pub const MAX_PREFIXES: u32 = 64;
pub const MAX_LOCAL: u32 = 256;

/// Why the decap program returned what it returned.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecapReason {
    /// The outer header was removed and the inner packet passed to the stack.
    Decapsulated = 0,
    /// Not IPv4-in-IPv4 or IPv6-in-IPv6: passed untouched.
    PassNotEncapsulated = 1,
    /// Encapsulated, but to an address that is not this host's: passed untouched (the
    /// stack forwards or drops it as it would without the program).
    PassNotLocal = 2,
    /// Encapsulated, from a source outside every `--from` prefix: dropped, so the host
    /// is no open tunnel endpoint.
    DropWrongSource = 3,
    /// Encapsulated, but the inner header is cut short or of the wrong version.
    DropTruncated = 4,
    /// An outer IPv4 fragment: the program cannot reassemble, and xlb never sends one.
    DropFragment = 5,
    /// The outer header says congestion experienced but the inner packet is not
    /// ECN-capable (RFC 6040, section 4.2: such a packet is dropped).
    DropEcn = 6,
}

/// Number of decap verdicts: the size of `xlb_dcap_stats`.
pub const DECAP_REASON_COUNT: u32 = 7;

impl DecapReason {
    pub const ALL: [DecapReason; DECAP_REASON_COUNT as usize] = [
        DecapReason::Decapsulated,
        DecapReason::PassNotEncapsulated,
        DecapReason::PassNotLocal,
        DecapReason::DropWrongSource,
        DecapReason::DropTruncated,
        DecapReason::DropFragment,
        DecapReason::DropEcn,
    ];

    /// The XDP action.
    #[inline(always)]
    pub const fn action(self) -> u32 {
        match self {
            DecapReason::Decapsulated
            | DecapReason::PassNotEncapsulated
            | DecapReason::PassNotLocal => XDP_PASS,
            DecapReason::DropWrongSource
            | DecapReason::DropTruncated
            | DecapReason::DropFragment
            | DecapReason::DropEcn => XDP_DROP,
        }
    }

    /// Stable name, as `xlb decap stats` shows it.
    pub const fn name(self) -> &'static str {
        match self {
            DecapReason::Decapsulated => "decapsulated",
            DecapReason::PassNotEncapsulated => "pass_not_encapsulated",
            DecapReason::PassNotLocal => "pass_not_local",
            DecapReason::DropWrongSource => "drop_wrong_source",
            DecapReason::DropTruncated => "drop_truncated",
            DecapReason::DropFragment => "drop_fragment",
            DecapReason::DropEcn => "drop_ecn",
        }
    }

    /// Index into `xlb_dcap_stats`.
    #[inline(always)]
    pub const fn index(self) -> u32 {
        self as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_order_and_names_fit_the_kernel() {
        for (i, r) in DecapReason::ALL.iter().enumerate() {
            assert_eq!(r.index() as usize, i);
        }
        for name in ALL {
            assert!(name.len() <= 15, "{name}");
        }
    }
}
