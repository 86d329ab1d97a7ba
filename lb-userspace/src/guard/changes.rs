//! Everything that differs between the running state and a desired one besides the table:
//! VIP keys, forwarding, backend addresses and MACs, health settings, effective policy,
//! table size. A VIP with any such difference is `changed` even when its table is not,
//! so the difference is applied as a generation (or refused), never dropped.

use crate::config::{Config, HealthCheck, Vip};

use super::policy;

fn health(h: &Option<HealthCheck>) -> String {
    match h {
        None => "none".into(),
        Some(h) => h.describe(),
    }
}

fn backend_details(vip: &Vip, old: &Vip, out: &mut Vec<String>) {
    for b in &vip.backends {
        let Some(o) = old.backend(&b.name) else {
            continue;
        };
        let field = |what: &str, a: &str, z: &str| format!("backend {} {what}: {a} -> {z}", b.name);
        if o.address != b.address {
            out.push(field("address", &o.address, &b.address));
        }
        if o.mac != b.mac {
            out.push(field("mac", &o.mac, &b.mac));
        }
    }
    let order = |v: &Vip| {
        v.backends
            .iter()
            .map(|b| b.name.clone())
            .collect::<Vec<_>>()
    };
    let (kept_old, kept_new): (Vec<_>, Vec<_>) = (
        order(old)
            .into_iter()
            .filter(|n| vip.backend(n).is_some())
            .collect(),
        order(vip)
            .into_iter()
            .filter(|n| old.backend(n).is_some())
            .collect(),
    );
    if kept_old != kept_new {
        out.push("backend order (table positions) changed".into());
    }
}

/// What differs in `vip` from `old` (same name), other than weights and membership, which
/// the plan's rows show.
pub(crate) fn vip_details(vip: &Vip, old: &Vip, desired: &Config, running: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let mut field = |what: &str, a: String, z: String| {
        if a != z {
            out.push(format!("{what}: {a} -> {z}"));
        }
    };
    field("address", old.address.clone(), vip.address.clone());
    field("port", old.port.to_string(), vip.port.to_string());
    field(
        "protocol",
        old.protocol.as_str().into(),
        vip.protocol.as_str().into(),
    );
    field(
        "forwarding",
        old.forwarding.as_str().into(),
        vip.forwarding.as_str().into(),
    );
    field(
        "icmp_echo",
        old.icmp_echo.to_string(),
        vip.icmp_echo.to_string(),
    );
    field("health", health(&old.health), health(&vip.health));
    field(
        "table size",
        running.daemon.table_size.to_string(),
        desired.daemon.table_size.to_string(),
    );
    let limits = policy::changes(
        &running.guardrails.with(&old.guardrails),
        &desired.guardrails.with(&vip.guardrails),
    );
    if old.guardrails != vip.guardrails && limits.is_empty() {
        out.push("[vip.guardrails] overrides rewritten (same limits)".into());
    }
    out.extend(limits.iter().map(ToString::to_string));
    backend_details(vip, old, &mut out);
    out
}

/// Global differences: the guardrail policy and whether an empty VIP list is intended.
pub(crate) fn global_details(desired: &Config, running: &Config) -> Vec<String> {
    let mut out: Vec<String> = policy::changes(&running.guardrails, &desired.guardrails)
        .iter()
        .map(ToString::to_string)
        .collect();
    let show = |s: &Option<String>| s.clone().unwrap_or_else(|| "none".into());
    for (key, was, now) in [
        (
            "ipip.ipv4_source",
            &running.ipip.ipv4_source,
            &desired.ipip.ipv4_source,
        ),
        (
            "ipip.ipv6_source",
            &running.ipip.ipv6_source,
            &desired.ipip.ipv6_source,
        ),
    ] {
        if was != now {
            out.push(format!("{key}: {} -> {}", show(was), show(now)));
        }
    }
    if running.allow_empty != desired.allow_empty {
        out.push(format!(
            "vip = [] (no VIPs intended): {} -> {}",
            running.allow_empty, desired.allow_empty
        ));
    }
    out
}

#[cfg(test)]
mod tests;
