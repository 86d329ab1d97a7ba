//! The `structure` rule for `ipip` and ICMP: the `[ipip]` sources parse and do not
//! cover a VIP, every `ipip` VIP has a source for its family, its backends name no MAC
//! (the next hop comes from the route), and the VIPs on one address agree on
//! `icmp_echo` (echo is answered per address).

use std::{collections::BTreeMap, net::IpAddr};

use crate::config::{Config, Forwarding, Source, Vip, parse_source};

use super::{Rule, Violation, structure::parse_mac};

pub(super) fn encap_structure(c: &Config, out: &mut Vec<Violation>) {
    let violation =
        |vip: &str, backend: Option<&str>, line, message: String, hint: &str| Violation {
            rule: Rule::Structure,
            vip: vip.into(),
            backend: backend.map(str::to_string),
            line,
            measured: None,
            limit: None,
            message,
            hint: hint.into(),
        };
    let mut sources: [(bool, Option<Source>); 2] = [(true, None), (false, None)];
    for (key, text, slot, hint) in [
        (
            "ipip.ipv4_source",
            &c.ipip.ipv4_source,
            0,
            "write the IPv4 address the outer headers come from, or a prefix of /16 to /32 \
             routed to this host (ADDRESS/LENGTH, host bits zero); backends' decap accepts \
             it with --from",
        ),
        (
            "ipip.ipv6_source",
            &c.ipip.ipv6_source,
            1,
            "write the IPv6 address the outer headers come from, or a prefix of /64 to \
             /128 routed to this host (ADDRESS/LENGTH, host bits zero); backends' decap \
             accepts it with --from",
        ),
    ] {
        let Some(text) = text else { continue };
        match parse_source(text, sources[slot].0) {
            Ok(s) => sources[slot].1 = Some(s),
            Err(e) => out.push(violation(
                "*",
                None,
                c.line_of(key),
                format!("{key}: {e}"),
                hint,
            )),
        }
    }
    let mut echo: BTreeMap<IpAddr, (&Vip, bool)> = BTreeMap::new();
    for v in &c.vips {
        let Ok(addr) = v.address.parse::<IpAddr>() else {
            continue;
        };
        for (_, s) in &sources {
            if let Some(s) = s
                && s.contains(addr)
            {
                out.push(violation(
                    &v.name,
                    None,
                    v.line,
                    format!(
                        "VIP address {} lies inside the ipip source range {}/{}",
                        v.address, s.prefix, s.len
                    ),
                    "give the outer headers a source range of their own",
                ));
            }
        }
        match echo.get(&addr) {
            Some((other, on)) if *on != v.icmp_echo => out.push(violation(
                &v.name,
                None,
                v.line,
                format!(
                    "icmp_echo = {} but VIP {} on the same address says {}: echo is \
                     answered per address",
                    v.icmp_echo, other.name, on
                ),
                "set icmp_echo alike on every VIP of the address",
            )),
            Some(_) => {}
            None => {
                echo.insert(addr, (v, v.icmp_echo));
            }
        }
        if v.forwarding != Forwarding::Ipip {
            continue;
        }
        let (key, given) = if addr.is_ipv4() {
            ("ipip.ipv4_source", &c.ipip.ipv4_source)
        } else {
            ("ipip.ipv6_source", &c.ipip.ipv6_source)
        };
        if given.is_none() {
            out.push(violation(
                &v.name,
                None,
                v.line,
                format!("forwarding = \"ipip\" needs {key} for its outer headers"),
                "add [ipip] with the source address or prefix of this host's outer headers",
            ));
        }
        for b in &v.backends {
            if parse_mac(&b.mac).is_some() {
                out.push(violation(
                    &v.name,
                    Some(&b.name),
                    b.line,
                    format!(
                        "mac = {:?} is not used with forwarding = \"ipip\": packets go to \
                         the route's next hop",
                        b.mac
                    ),
                    "remove the backend's mac",
                ));
            }
        }
    }
}
