//! Backend MACs: explicit in the config, or resolved from the neighbour table
//! (`mac = "neighbour"`). Each generation records the MACs it installed, so a restart or
//! reconcile never waits on the neighbour table. A backend whose MAC cannot be resolved
//! is recorded `unresolved`: it gets no slot in its VIP's table (effective weight 0) and
//! is not live, so nothing is sent to a MAC nobody has; the other backends and VIPs are
//! served. The daemon re-reads the neighbour table periodically (`refresh_macs`): a MAC
//! that changed, or a backend that resolves at last, is committed as a generation of its
//! own (source `neighbour`).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::Duration,
};

use crate::{
    config::{Config, Forwarding, MAC_FROM_NEIGHBOUR},
    guard,
    history::{Ids, Record, Source},
};

use super::{ApplyError, Controller, Holds, install::addr16};

/// How long an apply waits for a new backend's neighbour entry.
const RESOLVE_WAIT: Duration = Duration::from_secs(2);

/// A generation the neighbour table caused.
#[derive(Clone, Debug)]
pub struct MacRefresh {
    pub generation: u64,
    /// One line per backend: `web/b1 02:00:00:00:00:01 -> 02:00:00:00:00:02`.
    pub changes: Vec<String>,
}

/// `aa:bb:cc:dd:ee:ff`.
pub(crate) fn show_mac(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

impl Controller {
    /// The MAC of every backend of `config` ("vip/backend" -> MAC) and the backends
    /// without one. A `neighbour` backend keeps the MAC `known` (the running generation)
    /// or the maps hold for its address; only backends new to both are resolved now, all
    /// at once (one wait of at most `RESOLVE_WAIT`, however many there are).
    pub(super) fn resolve_macs(
        &self,
        config: &Config,
        known: Option<&Record>,
    ) -> (BTreeMap<String, String>, Vec<String>) {
        enum Need {
            Mac([u8; 6]),
            Lookup(IpAddr),
            Resolve(IpAddr),
            Nothing,
        }
        let mut needs = Vec::new();
        for vip in &config.vips {
            for b in &vip.backends {
                let key = Ids::backend_key(&vip.name, &b.name);
                if vip.forwarding == Forwarding::Ipip {
                    // Sent to the route's next hop: no MAC of its own.
                    continue;
                }
                if b.mac != MAC_FROM_NEIGHBOUR {
                    needs.push((
                        key,
                        guard::parse_mac(&b.mac).map_or(Need::Nothing, Need::Mac),
                    ));
                    continue;
                }
                let Ok(addr) = b.address.parse::<IpAddr>() else {
                    needs.push((key, Need::Nothing));
                    continue;
                };
                // What `known` holds for this backend counts only if it was resolved for
                // the same address (not an explicit MAC being given up).
                let resolved_before = |r: &Record| {
                    r.config
                        .vips
                        .iter()
                        .find(|v| v.name == vip.name)
                        .and_then(|v| v.backend(&b.name))
                        .is_some_and(|o| o.address == b.address && o.mac == b.mac)
                };
                let known = known.filter(|r| resolved_before(r));
                let in_maps = || {
                    let r = known?;
                    let id = r.ids.backend(&vip.name, &b.name)?;
                    let be = self.maps.backend(id).ok()?;
                    (be.addr == addr16(addr) && be.mac != [0; 6]).then_some(be.mac)
                };
                let need = match known
                    .and_then(|r| r.mac(&vip.name, &b.name))
                    .or_else(in_maps)
                {
                    Some(mac) => Need::Mac(mac),
                    // One the running generation could not resolve is only looked up: the
                    // refresher keeps soliciting it, and an apply must not wait for it.
                    None if known.is_some_and(|r| r.unresolved.contains(&key)) => {
                        Need::Lookup(addr)
                    }
                    None => Need::Resolve(addr),
                };
                needs.push((key, need));
            }
        }
        let of = |want: fn(&Need) -> Option<IpAddr>| -> Vec<IpAddr> {
            needs.iter().filter_map(|(_, n)| want(n)).collect()
        };
        let looked_up = (self.resolve)(
            &of(|n| match n {
                Need::Lookup(a) => Some(*a),
                _ => None,
            }),
            Duration::ZERO,
        );
        let resolved = (self.resolve)(
            &of(|n| match n {
                Need::Resolve(a) => Some(*a),
                _ => None,
            }),
            RESOLVE_WAIT,
        );
        let mut macs = BTreeMap::new();
        let mut unresolved = Vec::new();
        for (key, need) in needs {
            let mac = match need {
                Need::Mac(mac) => Some(mac),
                Need::Lookup(a) => looked_up.get(&a).copied(),
                Need::Resolve(a) => resolved.get(&a).copied(),
                Need::Nothing => None,
            };
            match mac {
                Some(mac) => {
                    macs.insert(key, show_mac(mac));
                }
                None => unresolved.push(key),
            }
        }
        (macs, unresolved)
    }

    /// `plan` (of `desired`) as it would really be installed with `holds` (backends
    /// without a MAC or down at weight 0, slow starts at part of theirs), measured against
    /// what the running generation really installed. Every rule this breaks that `plan`
    /// did not is added, saying why, unless the running table already broke it as badly
    /// (health took backends out: the change did not make it worse); before the first
    /// generation (a cold start, which must serve what it can) they are warnings instead.
    pub(super) fn effective_plan(
        &self,
        desired: &Config,
        holds: &Holds,
        plan: guard::Plan,
    ) -> guard::Plan {
        let running_holds = self.current.as_ref().map(Holds::of).unwrap_or_default();
        if holds.is_empty() && running_holds.is_empty() {
            return plan;
        }
        let unresolved = &holds.unresolved;
        let running = self
            .current
            .as_ref()
            .map(|r| running_holds.apply(&r.config));
        let reuse = guard::Reuse {
            plan: self.current_plan.as_ref(),
            builder: &guard::Maglev,
        };
        let health = self.tracker.health();
        let mut real = guard::plan(&holds.apply(desired), running.as_ref(), &health, &reuse);
        // What the running table already breaks, as measured on itself.
        let already: Vec<guard::Violation> = running
            .as_ref()
            .map(|r| guard::plan(r, None, &health, &reuse).violations)
            .unwrap_or_default();
        let no_worse = |x: &guard::Violation| {
            already.iter().any(|a| {
                a.rule == x.rule
                    && a.vip == x.vip
                    && a.backend == x.backend
                    && match (a.measured, x.measured) {
                        (Some(was), Some(now)) if x.rule.higher_is_worse() => now <= was + 1e-9,
                        (Some(was), Some(now)) => now + 1e-9 >= was,
                        _ => true,
                    }
            })
        };
        let of_vip = |keys: &'_ [String], vip: &str| -> Vec<String> {
            keys.iter()
                .filter_map(|k| k.strip_prefix(&format!("{vip}/")))
                .map(str::to_string)
                .collect()
        };
        let ramp: Vec<String> = holds.ramp.keys().cloned().collect();
        for v in &mut real.vips {
            let mut details = plan
                .vip(&v.vip)
                .map(|p| p.details.clone())
                .unwrap_or_default();
            let unresolved_here = of_vip(unresolved, &v.vip);
            let down_here = of_vip(&holds.down, &v.vip);
            for b in &unresolved_here {
                let address = desired
                    .vips
                    .iter()
                    .find(|x| x.name == v.vip)
                    .and_then(|x| x.backend(b))
                    .map_or("?", |x| x.address.as_str());
                details.push(format!(
                    "backend {b}: UNRESOLVED (no neighbour entry for {address}): no slot, \
                     its weight counts as 0 until it answers"
                ));
            }
            for b in &down_here {
                details.push(format!(
                    "backend {b}: DOWN (health checks fail): no slot, its weight counts as 0 \
                     until its checks pass"
                ));
            }
            // The rows keep the weights the tables were built from (`guard::Reuse` relies
            // on it); a configured weight of a held backend that changes gets a line of
            // its own.
            if let Some(p) = plan.vip(&v.vip) {
                let ramp_here = of_vip(&ramp, &v.vip);
                for r in p.rows.iter().filter(|r| r.weight_before != r.weight_after) {
                    let held = if unresolved_here.contains(&r.backend) {
                        "counts as 0 while unresolved"
                    } else if down_here.contains(&r.backend) {
                        "counts as 0 while down"
                    } else if ramp_here.contains(&r.backend) {
                        "in slow start: part of it until the ramp ends"
                    } else {
                        continue;
                    };
                    let w = |x: Option<u32>| x.map_or("-".into(), |x| x.to_string());
                    details.push(format!(
                        "backend {}: weight {} -> {} ({held})",
                        r.backend,
                        w(r.weight_before),
                        w(r.weight_after)
                    ));
                }
                // What the operator changed decides whether the VIP changed; a backend
                // that resolves or recovers in the meantime is the refreshers'.
                v.change = p.change;
            }
            v.details = details;
        }
        let known = |x: &guard::Violation| {
            plan.violations
                .iter()
                .any(|p| p.rule == x.rule && p.vip == x.vip && p.backend == x.backend)
        };
        let extra: Vec<guard::Violation> = real
            .violations
            .iter()
            .filter(|x| !known(x) && !no_worse(x))
            .map(|x| {
                let unresolved_here = of_vip(unresolved, &x.vip);
                let down_here = of_vip(&holds.down, &x.vip);
                let mut held = Vec::new();
                if !unresolved_here.is_empty() {
                    held.push(format!(
                        "unresolved backend(s) {}",
                        unresolved_here.join(", ")
                    ));
                }
                if !down_here.is_empty() {
                    held.push(format!("down backend(s) {}", down_here.join(", ")));
                }
                let message = if held.is_empty() {
                    format!(
                        "measured on the table really running, where {} had no slot: {}",
                        running_holds
                            .unresolved
                            .iter()
                            .chain(&running_holds.down)
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", "),
                        x.message
                    )
                } else {
                    format!("with {} at weight 0: {}", held.join("; "), x.message)
                };
                let hint = if unresolved_here.is_empty() {
                    format!("wait for the down backends' checks to pass, or {}", x.hint)
                } else {
                    format!(
                        "check the unresolved backends' addresses (nothing answers there), \
                         or {}",
                        x.hint
                    )
                };
                guard::Violation {
                    message,
                    hint,
                    ..x.clone()
                }
            })
            .collect();
        real.global = plan.global;
        real.violations = plan.violations;
        if self.current.is_some() {
            real.violations.extend(extra);
        } else {
            real.warnings = extra;
        }
        real
    }

    /// Addresses of the running generation's `neighbour` backends.
    pub fn neighbour_backends(&self) -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = self
            .current
            .iter()
            .flat_map(|r| &r.config.vips)
            .flat_map(|v| v.backends.iter().filter(|b| v.resolves_mac(b)))
            .filter_map(|b| b.address.parse().ok())
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Addresses of the running generation's `ipip` backends: the program sends to their
    /// route's next hop, whose neighbour entry the refresher keeps resolved.
    pub fn routed_backends(&self) -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = self
            .current
            .iter()
            .flat_map(|r| &r.config.vips)
            .filter(|v| v.forwarding == Forwarding::Ipip)
            .flat_map(|v| &v.backends)
            .filter_map(|b| b.address.parse().ok())
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Compares the running generation's `neighbour` MACs with `seen` (the neighbour
    /// table now: address -> MAC of its valid entries) and commits a generation when one
    /// changed or an unresolved backend resolves. An entry that is missing or failed
    /// keeps the recorded MAC: a neighbour being re-probed is not a change.
    pub fn refresh_macs(
        &mut self,
        seen: &BTreeMap<IpAddr, [u8; 6]>,
    ) -> Result<Option<MacRefresh>, ApplyError> {
        let Some(current) = self.current.clone() else {
            return Ok(None);
        };
        let mut next = current.clone();
        let mut changes = Vec::new();
        let mut unresolved: BTreeSet<String> = current.unresolved.iter().cloned().collect();
        for vip in &current.config.vips {
            for b in vip.backends.iter().filter(|b| vip.resolves_mac(b)) {
                let Some(&now) = b.address.parse().ok().and_then(|a| seen.get(&a)) else {
                    continue;
                };
                let key = Ids::backend_key(&vip.name, &b.name);
                let was = current.mac(&vip.name, &b.name);
                if was == Some(now) {
                    continue;
                }
                changes.push(format!(
                    "{key} {} -> {}",
                    was.map_or("unresolved".into(), show_mac),
                    show_mac(now)
                ));
                next.macs.insert(key.clone(), show_mac(now));
                unresolved.remove(&key);
            }
        }
        if changes.is_empty() {
            return Ok(None);
        }
        next.unresolved = unresolved.into_iter().collect();
        // The operator's config is unchanged; only where its backends are reached is.
        let source = Source::Neighbour {
            changes: changes.clone(),
        };
        let generation = self.commit_followup(next, source)?;
        Ok(Some(MacRefresh {
            generation,
            changes,
        }))
    }
}
