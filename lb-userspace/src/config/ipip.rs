//! `[ipip]`: the outer source addresses of `forwarding = "ipip"`. Each is an address
//! (every flow uses it) or a prefix (each flow uses one address of it, chosen by the
//! flow hash, so that a backend's receive-side scaling spreads flows over its queues):
//!
//! ```toml
//! [ipip]
//! ipv4_source = "198.18.2.0/24"
//! ipv6_source = "2001:db8:2::/120"
//! ```
//!
//! Backends' decap programs accept packets from these sources only (`xlb decap attach
//! IFACE --from PREFIX`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_common::Encap;
use serde::{Deserialize, Serialize};

/// Shortest IPv4 source prefix: anything wider is a typo, not a source range.
pub(super) const MIN_V4_PREFIX: u8 = 16;
/// Shortest IPv6 source prefix.
pub(super) const MIN_V6_PREFIX: u8 = 64;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ipip {
    /// Outer source of IPv4-in-IPv4 packets: `ADDR` or `ADDR/LEN`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_source: Option<String>,
    /// Outer source of IPv6-in-IPv6 packets: `ADDR` or `ADDR/LEN`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_source: Option<String>,
}

/// A parsed source: the prefix and its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Source {
    pub prefix: IpAddr,
    pub len: u8,
}

impl Source {
    /// Whether `a` lies inside this source range.
    pub fn contains(&self, a: IpAddr) -> bool {
        match (self.prefix, a) {
            (IpAddr::V4(p), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(p) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(p), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(p) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// Parses `ADDR` or `ADDR/LEN` of the family `v4` says; the message says what is wrong.
pub fn parse_source(text: &str, v4: bool) -> Result<Source, String> {
    let (addr, len) = match text.split_once('/') {
        Some((a, l)) => (
            a,
            Some(l.parse::<u8>().map_err(|_not_a_number| {
                format!("{text:?}: prefix length {l:?} is not a number")
            })?),
        ),
        None => (text, None),
    };
    let prefix: IpAddr = addr
        .parse()
        .map_err(|_not_an_address| format!("{text:?} is not an address or ADDRESS/LENGTH"))?;
    let (bits, family, min) = if v4 {
        (32, "IPv4", MIN_V4_PREFIX)
    } else {
        (128, "IPv6", MIN_V6_PREFIX)
    };
    if prefix.is_ipv4() != v4 {
        return Err(format!("{text:?} is not an {family} address"));
    }
    let len = len.unwrap_or(bits);
    if len > bits {
        return Err(format!("{text:?}: an {family} prefix is at most /{bits}"));
    }
    if len < min {
        return Err(format!(
            "{text:?}: /{len} is wider than /{min}, the widest source range accepted"
        ));
    }
    if prefix.is_unspecified() || prefix.is_loopback() || prefix.is_multicast() {
        return Err(format!("{text:?} is not a unicast address"));
    }
    let source = Source { prefix, len };
    let network = match prefix {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(
            u32::from(a) & u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0),
        )),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(
            u128::from(a) & u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0),
        )),
    };
    if network != prefix {
        return Err(format!(
            "{text:?} has host bits set (the prefix is {network}/{len})"
        ));
    }
    Ok(source)
}

impl Ipip {
    /// The `xlb_encap` value: each configured source's prefix and the host bits the
    /// flow hash fills. Sources that do not parse (refused by `structure`) are left out.
    pub fn encap(&self) -> Encap {
        let mut e = Encap::default();
        if let Some(Ok(s)) = self.ipv4_source.as_deref().map(|t| parse_source(t, true))
            && let IpAddr::V4(p) = s.prefix
        {
            e.v4_prefix = p.octets();
            e.v4_host_mask = u32::MAX
                .checked_shr(u32::from(s.len))
                .unwrap_or(0)
                .to_be_bytes();
        }
        if let Some(Ok(s)) = self.ipv6_source.as_deref().map(|t| parse_source(t, false))
            && let IpAddr::V6(p) = s.prefix
        {
            e.v6_prefix = p.octets();
            let host_bits = 128 - u32::from(s.len);
            e.v6_host_mask = u32::MAX
                .checked_shr(32 - host_bits.min(32))
                .unwrap_or(0)
                .to_be_bytes();
        }
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_or_say_what_is_wrong() {
        let s = parse_source("198.18.2.0/24", true).unwrap();
        assert_eq!(s.len, 24);
        assert!(s.contains("198.18.2.77".parse().unwrap()));
        assert!(!s.contains("198.18.3.1".parse().unwrap()));
        assert_eq!(parse_source("198.18.2.2", true).unwrap().len, 32);
        assert_eq!(parse_source("2001:db8:2::/120", false).unwrap().len, 120);
        for (text, v4, says) in [
            (
                "198.18.2.1/24",
                true,
                "host bits set (the prefix is 198.18.2.0/24)",
            ),
            ("198.18.0.0/8", true, "wider than /16"),
            ("198.18.2.0/33", true, "at most /32"),
            ("2001:db8::/64", true, "not an IPv4 address"),
            ("198.18.2.0/x", true, "not a number"),
            ("nonsense", false, "not an address"),
            ("224.0.0.0/24", true, "not a unicast"),
        ] {
            let e = parse_source(text, v4).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn encap_masks_the_host_bits() {
        let i = Ipip {
            ipv4_source: Some("198.18.2.0/24".into()),
            ipv6_source: Some("2001:db8:2::/64".into()),
        };
        let e = i.encap();
        assert_eq!(e.v4_prefix, [198, 18, 2, 0]);
        assert_eq!(e.v4_host_mask, [0, 0, 0, 255]);
        assert_eq!(e.v6_host_mask, [255; 4], "only the last 32 bits vary");
        assert_eq!(
            lb_common::outer_source_v4(&e, 0x1234_5678),
            [198, 18, 2, 0x78]
        );
        let single = Ipip {
            ipv4_source: Some("198.18.2.2".into()),
            ipv6_source: Some("2001:db8:2::5/128".into()),
        }
        .encap();
        assert_eq!(single.v4_host_mask, [0; 4]);
        assert_eq!(
            lb_common::outer_source_v4(&single, u32::MAX),
            [198, 18, 2, 2]
        );
        assert_eq!(single.v6_host_mask, [0; 4]);
        assert_eq!(Ipip::default().encap(), Encap::default());
    }
}
