//! Watching a change after it took effect, pure: counters at the start of a window and
//! now in, observed shares and a verdict out. The daemon samples (`daemon::watcher`).
//!
//! Observed share: each backend's new flows (TCP SYNs, re-homed flows and UDP flows
//! recorded in changed slots: lb-ebpf's `select::Chosen::new_flow`) over the window,
//! divided by the VIP's. A share from few flows
//! is noise, so it is reported only from `MIN_FLOWS` flows on, and a breach needs the
//! observed share to differ from the table share by more than
//! `SIGMAS * sqrt(p * (1 - p) / n) + SLACK`: with `n` flows each landing on the backend
//! with probability `p` (its table share), the count is binomial, and 4 standard
//! deviations are exceeded by chance about once in 16,000 looks (normal approximation);
//! `SLACK` absorbs what hashing a few thousand client ports cannot make exactly even.
//!
//! A watch breaches when, for a VIP the change touched:
//! - a backend that gained share is down (its checks fail, after `fall`);
//! - a backend's observed share is outside the bound above;
//! - the VIP drops more than `DROP_LIMIT` of its packets (and at least `MIN_DROPS`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{controller::VipStatsView, guard::Health};

/// Fewest new flows a VIP must see in a window before its observed share means anything.
pub const MIN_FLOWS: u64 = 100;
/// Standard deviations of the binomial bound.
pub const SIGMAS: f64 = 4.0;
/// Absolute slack on top of the binomial bound.
pub const SLACK: f64 = 0.02;
/// Share of a VIP's packets that may be dropped in a window.
pub const DROP_LIMIT: f64 = 0.01;
/// Drops below this count never breach (a stray malformed packet is not an outage).
pub const MIN_DROPS: u64 = 10;

/// A VIP's new flows over a window, per backend.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Observed {
    /// New flows of the VIP in the window.
    pub flows: u64,
    /// Backend -> (observed share, table share); empty when `flows < MIN_FLOWS`.
    pub shares: BTreeMap<String, (f64, f64)>,
}

impl Observed {
    /// Largest |observed - table| over the VIP's backends, when there are enough flows.
    pub fn drift(&self) -> Option<f64> {
        self.shares
            .values()
            .map(|(o, t)| (o - t).abs())
            .reduce(f64::max)
    }
}

/// The bound on |observed - table| for a backend with table share `p` after `n` flows.
pub fn tolerance(p: f64, n: u64) -> f64 {
    let n = n.max(1) as f64;
    SIGMAS * (p * (1.0 - p) / n).sqrt() + SLACK
}

/// New flows per backend of every VIP between two readings of the counters. A backend
/// absent from `before` (new in the window) counts from 0; counters that went backwards
/// (a new owner of an id) count from 0 too.
pub fn observed(before: &[VipStatsView], now: &[VipStatsView]) -> BTreeMap<String, Observed> {
    let mut out = BTreeMap::new();
    for v in now {
        let old = before.iter().find(|o| o.vip == v.vip);
        let delta: Vec<(&str, u64, f64)> = v
            .backends
            .iter()
            .map(|b| {
                let was = old
                    .and_then(|o| {
                        o.backends
                            .iter()
                            .find(|x| x.id == b.id && x.backend == b.backend)
                    })
                    .map_or(0, |x| x.new_flows);
                let d = if b.new_flows >= was {
                    b.new_flows - was
                } else {
                    b.new_flows
                };
                (b.backend.as_str(), d, b.table_share)
            })
            .collect();
        let flows: u64 = delta.iter().map(|d| d.1).sum();
        let shares = if flows >= MIN_FLOWS {
            delta
                .iter()
                .map(|&(b, d, t)| (b.to_string(), (d as f64 / flows as f64, t)))
                .collect()
        } else {
            BTreeMap::new()
        };
        out.insert(v.vip.clone(), Observed { flows, shares });
    }
    out
}

/// What a watch checks, fixed when the change took effect.
#[derive(Clone, Debug, PartialEq)]
pub struct Expect {
    /// VIPs the change touched.
    pub vips: Vec<String>,
    /// (VIP, backend) whose table share grew with the change.
    pub gained: Vec<(String, String)>,
}

/// Checks `now` against `before` (counters when the watch began) under `expect`;
/// `Some(breach)` names what is wrong with the values.
pub fn breach(
    expect: &Expect,
    before: &[VipStatsView],
    now: &[VipStatsView],
    health: &Health,
) -> Option<String> {
    for (vip, backend) in &expect.gained {
        if health.get(&(vip.clone(), backend.clone())) == Some(&false) {
            return Some(format!(
                "vip {vip}: backend {backend} gained share and is down (its health checks fail)"
            ));
        }
    }
    let observed = observed(before, now);
    for vip in &expect.vips {
        let Some(o) = observed.get(vip) else {
            continue;
        };
        for (backend, &(seen, table)) in &o.shares {
            let bound = tolerance(table, o.flows);
            if (seen - table).abs() > bound {
                return Some(format!(
                    "vip {vip}: backend {backend} got {:.1}% of {} new flows, its table share \
                     is {:.1}% (bound {:.1} points)",
                    seen * 100.0,
                    o.flows,
                    table * 100.0,
                    bound * 100.0
                ));
            }
        }
        let (Some(n), Some(o)) = (
            now.iter().find(|v| &v.vip == vip),
            before.iter().find(|v| &v.vip == vip),
        ) else {
            continue;
        };
        let drops = n.drops.saturating_sub(o.drops);
        let packets = n.packets.saturating_sub(o.packets) + drops;
        if drops >= MIN_DROPS && drops as f64 > DROP_LIMIT * packets as f64 {
            return Some(format!(
                "vip {vip}: {drops} of {packets} packets dropped (limit {:.0}%)",
                DROP_LIMIT * 100.0
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests;
