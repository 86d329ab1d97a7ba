//! `ipip` and ICMP settings that can be wrong offline: each is refused with a message
//! naming what is wrong and a hint.

use super::*;
use crate::config::{Forwarding, Ipip};

fn ipip_vip(name: &str) -> Vip {
    Vip {
        forwarding: Forwarding::Ipip,
        ..vip(name, &[1, 1])
    }
}

fn with_sources(vips: Vec<Vip>, v4: Option<&str>, v6: Option<&str>) -> Config {
    Config {
        ipip: Ipip {
            ipv4_source: v4.map(str::to_string),
            ipv6_source: v6.map(str::to_string),
        },
        ..config(vips)
    }
}

/// The messages of `c`'s structure violations.
fn messages(c: &Config) -> Vec<String> {
    let p = check(c, None);
    p.violations
        .iter()
        .filter(|v| v.rule == Rule::Structure)
        .map(|v| {
            format!(
                "{} {}: {} (fix: {})",
                v.vip,
                v.backend.as_deref().unwrap_or("-"),
                v.message,
                v.hint
            )
        })
        .collect()
}

#[test]
fn an_ipip_vip_with_a_source_passes() {
    let c = with_sources(vec![ipip_vip("web")], Some("198.18.200.0/24"), None);
    assert_eq!(messages(&c), Vec::<String>::new());
}

#[test]
fn an_ipip_vip_needs_a_source_of_its_family() {
    let m = messages(&with_sources(
        vec![ipip_vip("web")],
        None,
        Some("2001:db8:200::/64"),
    ));
    assert_eq!(m.len(), 1, "{m:?}");
    assert!(
        m[0].starts_with("web -: forwarding = \"ipip\" needs ipip.ipv4_source"),
        "{m:?}"
    );
    // l2-dsr needs none.
    assert!(messages(&with_sources(vec![vip("web", &[1, 1])], None, None)).is_empty());
}

#[test]
fn a_bad_source_is_named_with_its_key() {
    for (v4, says) in [
        (
            "198.18.200.1/24",
            "ipip.ipv4_source: \"198.18.200.1/24\" has host bits set",
        ),
        (
            "2001:db8::/64",
            "ipip.ipv4_source: \"2001:db8::/64\" is not an IPv4 address",
        ),
        ("198.18.0.0/8", "is wider than /16"),
    ] {
        let m = messages(&with_sources(vec![ipip_vip("web")], Some(v4), None));
        assert_eq!(m.len(), 1, "{v4}: {m:?}");
        assert!(m[0].contains(says), "{v4}: {m:?}");
    }
}

#[test]
fn a_source_range_may_not_cover_a_vip() {
    let m = messages(&with_sources(
        vec![ipip_vip("web")],
        Some("198.18.0.0/24"),
        None,
    ));
    assert_eq!(m.len(), 1, "{m:?}");
    assert!(
        m[0].contains("VIP address 198.18.0.100 lies inside the ipip source range"),
        "{m:?}"
    );
}

#[test]
fn an_ipip_backend_names_no_mac() {
    let mut v = ipip_vip("web");
    v.backends[1].mac = "02:00:00:00:00:01".into();
    let m = messages(&with_sources(vec![v], Some("198.18.200.0/24"), None));
    assert_eq!(m.len(), 1, "{m:?}");
    assert!(
        m[0].starts_with("web b1: mac = \"02:00:00:00:00:01\" is not used"),
        "{m:?}"
    );
}

#[test]
fn vips_on_one_address_agree_on_echo() {
    let mut dns = vip("dns", &[1, 1]);
    dns.port = 53;
    dns.icmp_echo = false;
    let m = messages(&config(vec![vip("web", &[1, 1]), dns]));
    assert_eq!(m.len(), 1, "{m:?}");
    assert!(
        m[0].starts_with("dns -: icmp_echo = false but VIP web on the same address says true"),
        "{m:?}"
    );
}
