//! The `structure` rule: names, addresses, MACs, weights, limits and map capacity, for
//! the config as a whole and for each VIP.

use std::{collections::BTreeSet, net::IpAddr};

use crate::{
    config::{Config, MAC_FROM_NEIGHBOUR, MAX_WEIGHT, Vip},
    table,
};

use lb_common::maps::{MAX_BACKENDS, MAX_VIPS};

use super::{Rule, Violation, health_check};

pub(super) fn global_structure(c: &Config, out: &mut Vec<Violation>) {
    let mut bad = |key: &str, message: String, hint: &str| {
        out.push(Violation {
            rule: Rule::Structure,
            vip: "*".into(),
            backend: None,
            line: c.line_of(key),
            measured: None,
            limit: None,
            message,
            hint: hint.into(),
        })
    };
    if let Err(e) = table::check_size(c.daemon.table_size) {
        bad(
            "daemon.table_size",
            format!("daemon.table_size: {e}"),
            "use a prime such as 65537",
        );
    }
    if c.daemon.flow_capacity == 0 {
        bad(
            "daemon.flow_capacity",
            "daemon.flow_capacity = 0: the flow table needs room for at least one flow".into(),
            "leave it out (default 1048576) or size it for the flows in changed slots \
             expected",
        );
    }
    if let Some(a) = &c.daemon.announce {
        for (key, message, hint) in crate::announce::check(a) {
            bad(key, message, hint);
        }
        for v in &c.vips {
            let weighted = v.backends.iter().filter(|b| b.weight > 0).count();
            if (weighted as u64) < u64::from(a.min_healthy_backends) {
                bad(
                    "daemon.announce.min_healthy_backends",
                    format!(
                        "VIP {} has {weighted} backend(s) with weight above 0 and \
                         daemon.announce.min_healthy_backends is {}: it would never be \
                         announced",
                        v.name, a.min_healthy_backends
                    ),
                    "lower min_healthy_backends or add backends",
                );
            }
        }
    }
    if c.vips.is_empty() && !c.allow_empty {
        bad(
            "vip",
            "no VIPs: applying this would stop every service (a truncated or empty file \
             looks like this)"
                .into(),
            "add the [[vip]] tables; a host meant to serve nothing says so with `vip = []` \
             at the top level",
        );
    }
    let (max_vips, max_backends) = (c.daemon.max_vips, c.daemon.max_backends);
    for (key, value, limit) in [
        ("daemon.max_vips", max_vips, MAX_VIPS),
        ("daemon.max_backends", max_backends, MAX_BACKENDS),
    ] {
        if !(2..=limit).contains(&value) {
            bad(
                key,
                format!("{key} = {value} is outside 2..={limit} (id 0 is reserved)"),
                "size it for the ids this host needs, within the limit",
            );
        }
    }
    let d = &c.daemon;
    if d.flow_idle_timeout == 0 {
        bad(
            "daemon.flow_idle_timeout",
            "daemon.flow_idle_timeout = 0 would delete every flow entry at once".into(),
            "set the seconds a flow may be silent and still keep its backend (default 300)",
        );
    }
    if d.flow_idle_timeout > 0 && d.udp_grace > d.flow_idle_timeout {
        bad(
            "daemon.udp_grace",
            format!(
                "daemon.udp_grace = {} is longer than daemon.flow_idle_timeout = {}: a \
                 changed slot could become stateless while UDP flows still count as old",
                d.udp_grace, d.flow_idle_timeout
            ),
            "keep udp_grace at most flow_idle_timeout",
        );
    }
    if d.flow_insert_rate == 0 {
        bad(
            "daemon.flow_insert_rate",
            "daemon.flow_insert_rate = 0 would record no flow in a changed slot".into(),
            "set new flow entries per second per CPU (default 125000)",
        );
    }
    if c.vips.len() >= max_vips as usize {
        bad(
            "daemon.max_vips",
            format!(
                "{} VIPs; daemon.max_vips = {max_vips} holds {}",
                c.vips.len(),
                max_vips.saturating_sub(1)
            ),
            "raise daemon.max_vips (it resizes the maps at the next `xlb run` start) or \
             split the VIPs over several hosts",
        );
    }
    let backends: usize = c.vips.iter().map(|v| v.backends.len()).sum();
    if backends >= max_backends as usize {
        bad(
            "daemon.max_backends",
            format!(
                "{backends} backends in all; daemon.max_backends = {max_backends} holds {}",
                max_backends.saturating_sub(1)
            ),
            "raise daemon.max_backends (it resizes the maps at the next `xlb run` start) \
             or split the VIPs over several hosts",
        );
    }
    let p = &c.guardrails;
    for v in &c.vips {
        let p = p.with(&v.guardrails);
        for (key, value) in [
            ("max_backend_share", p.max_backend_share),
            ("table_fidelity", p.table_fidelity),
            ("max_flow_shift", p.max_flow_shift),
            ("healthy_quorum", p.healthy_quorum),
            ("panic_threshold", p.panic_threshold),
        ] {
            if !(0.0..=1.0).contains(&value) {
                out.push(Violation {
                    rule: Rule::Structure,
                    vip: v.name.clone(),
                    backend: None,
                    line: v.line,
                    measured: Some(value),
                    limit: Some(1.0),
                    message: format!("guardrails.{key} = {value} is not a fraction"),
                    hint: format!("set {key} between 0 and 1"),
                });
            }
        }
    }
}

/// Not unspecified, loopback, broadcast or multicast: an address a packet can be sent to
/// on the wire.
fn routable_unicast(a: IpAddr) -> bool {
    let broadcast = matches!(a, IpAddr::V4(v4) if v4.is_broadcast());
    !(a.is_unspecified() || a.is_loopback() || a.is_multicast() || broadcast)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Parses `aa:bb:cc:dd:ee:ff` into a unicast, non-zero MAC.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return None;
        }
        *m = u8::from_str_radix(p, 16).ok()?;
    }
    (mac[0] & 1 == 0 && mac != [0; 6]).then_some(mac)
}

pub(super) fn vip_structure(
    vip: &Vip,
    names: &mut BTreeSet<String>,
    keys: &mut BTreeSet<(IpAddr, u16, &'static str)>,
    out: &mut Vec<Violation>,
) {
    let mut bad = |backend: Option<&crate::config::BackendSpec>, message: String, hint: &str| {
        out.push(Violation {
            rule: Rule::Structure,
            vip: vip.name.clone(),
            backend: backend.map(|b| b.name.clone()),
            line: backend.map_or(vip.line, |b| b.line),
            measured: None,
            limit: None,
            message,
            hint: hint.into(),
        })
    };
    if !valid_name(&vip.name) {
        bad(
            None,
            format!("VIP name {:?} is not 1-64 of [A-Za-z0-9._-]", vip.name),
            "rename the VIP",
        );
    }
    if !names.insert(vip.name.clone()) {
        bad(
            None,
            format!("VIP name {:?} is used twice", vip.name),
            "give every VIP its own name",
        );
    }
    let addr = match vip.address.parse::<IpAddr>() {
        Ok(a) if !routable_unicast(a) => {
            bad(
                None,
                format!(
                    "VIP address {} is not a routable unicast address (unspecified, \
                     loopback, broadcast or multicast)",
                    vip.address
                ),
                "use the service's unicast address",
            );
            None
        }
        Ok(a) => Some(a),
        Err(_) => {
            bad(
                None,
                format!(
                    "VIP address {:?} is not an IPv4 or IPv6 address",
                    vip.address
                ),
                "write the address like 198.18.0.100 or 2001:db8::100",
            );
            None
        }
    };
    if vip.port == 0 {
        bad(None, "port 0".into(), "set the service's port");
    }
    if let Some(a) = addr
        && !keys.insert((a, vip.port, vip.protocol.as_str()))
    {
        bad(
            None,
            format!(
                "{}:{}/{} is also another VIP's",
                vip.address,
                vip.port,
                vip.protocol.as_str()
            ),
            "remove one of the two VIPs",
        );
    }
    if let Some(h) = &vip.health {
        for (message, hint) in health_check::problems(h) {
            bad(None, message, hint);
        }
    }
    if vip.backends.is_empty() {
        bad(
            None,
            "no backends".into(),
            "add at least one [[vip.backend]]",
        );
    }
    let mut seen_names = BTreeSet::new();
    let mut seen_addrs = BTreeSet::new();
    for b in &vip.backends {
        if !valid_name(&b.name) {
            bad(
                Some(b),
                format!("backend name {:?} is not 1-64 of [A-Za-z0-9._-]", b.name),
                "rename the backend",
            );
        }
        if !seen_names.insert(b.name.as_str()) {
            bad(
                Some(b),
                format!("backend name {:?} is used twice in this VIP", b.name),
                "give every backend of a VIP its own name",
            );
        }
        match (b.address.parse::<IpAddr>(), addr) {
            (Err(_), _) => bad(
                Some(b),
                format!("address {:?} is not an IP address", b.address),
                "write the backend's own address, like 198.18.0.11",
            ),
            (Ok(a), Some(v)) if a.is_ipv4() != v.is_ipv4() => bad(
                Some(b),
                format!(
                    "address {} is not of the VIP's family ({})",
                    b.address,
                    if v.is_ipv4() { "IPv4" } else { "IPv6" }
                ),
                "use an address of the same family as the VIP",
            ),
            (Ok(a), _) if !routable_unicast(a) => bad(
                Some(b),
                format!(
                    "address {} is not a routable unicast address (unspecified, loopback, \
                     broadcast or multicast)",
                    b.address
                ),
                "write the backend's own unicast address",
            ),
            (Ok(a), Some(v)) if a == v => bad(
                Some(b),
                format!("address {} is the VIP's own address", b.address),
                "write the backend's own address; the VIP lives on the backends' loopback",
            ),
            (Ok(a), _) => {
                if !seen_addrs.insert(a) {
                    bad(
                        Some(b),
                        format!("address {} is another backend's of this VIP", b.address),
                        "list each real server once; give it more weight instead",
                    );
                }
            }
        }
        if b.mac != MAC_FROM_NEIGHBOUR && parse_mac(&b.mac).is_none() {
            bad(
                Some(b),
                format!(
                    "mac {:?} is not a unicast MAC like 02:00:00:00:00:01",
                    b.mac
                ),
                "write the MAC, or \"neighbour\" to read it from the neighbour table",
            );
        }
        if !(0..=i64::from(MAX_WEIGHT)).contains(&b.weight) {
            bad(
                Some(b),
                format!("weight {} is outside 0..={MAX_WEIGHT}", b.weight),
                "use a weight between 0 (drained) and 1000000",
            );
        }
    }
}
