//! Health-driven failover: a backend that is down (`health::Tracker`) gets effective
//! weight 0, so no new flows, and stays live, so its established flows stay on it. Each
//! change of which backends are held out is a generation of its own (source `health`).
//! - Panic: when fewer than `panic_threshold` of a VIP's weighted backends are up (or
//!   none is), no more backends are taken out: the checks, not the backends, are the
//!   likelier fault, and taking them out would pile every flow onto the survivors.
//!   Backends already out stay out while down; ones that recover come back.
//! - Slow start: a backend that recovers on a VIP with `slow_start_s` comes back in
//!   steps (`ramp`), each a generation.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use crate::{
    config::{Config, Policy, Vip},
    health::{Probes, Transition},
    history::{Ids, Record, Source},
};

use super::{ApplyError, Controller};

/// Backends whose effective weight is not their configured one.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Holds {
    /// No MAC: weight 0, not live.
    pub unresolved: Vec<String>,
    /// Checks fail: weight 0, live.
    pub down: Vec<String>,
    /// Slow start: percent of the weight.
    pub ramp: BTreeMap<String, u32>,
}

impl Holds {
    pub fn of(record: &Record) -> Holds {
        Holds {
            unresolved: record.unresolved.clone(),
            down: record.down.clone(),
            ramp: record.ramp.clone(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.unresolved.is_empty() && self.down.is_empty() && self.ramp.is_empty()
    }

    /// `config` with the effective weights: 0 for unresolved and down backends, the ramp's
    /// percent (at least 1) for backends in slow start.
    pub fn apply(&self, config: &Config) -> Config {
        let mut effective = config.clone();
        for v in &mut effective.vips {
            for b in &mut v.backends {
                let key = Ids::backend_key(&v.name, &b.name);
                if self.unresolved.contains(&key) || self.down.contains(&key) {
                    b.weight = 0;
                } else if let Some(&pct) = self.ramp.get(&key)
                    && b.weight > 0
                {
                    b.weight = (b.weight * i64::from(pct) / 100).max(1);
                }
            }
        }
        effective
    }
}

/// Why a VIP is in panic.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Panic {
    pub up: usize,
    pub weighted: usize,
    pub threshold: f64,
}

impl Panic {
    pub fn message(&self) -> String {
        format!(
            "PANIC: {} of {} weighted backends up, below the panic threshold {:.0}%: no \
             more backends are taken out for health",
            self.up,
            self.weighted,
            self.threshold * 100.0
        )
    }
}

/// Slow start steps: at least this many, more when one step would move more than the
/// VIP's `max_flow_shift`.
const MIN_RAMP_STEPS: u32 = 4;
const MAX_RAMP_STEPS: u32 = 20;

/// The backends of `vip` to hold down, given those the checks see down (`seen_down`) and
/// those held now (`held`), and whether that is a panic. Pure.
pub(crate) fn vip_down(
    vip: &Vip,
    policy: &Policy,
    unresolved: &[String],
    seen_down: &BTreeSet<String>,
    held: &[String],
) -> (Vec<String>, Option<Panic>) {
    if vip.health.is_none() {
        return (Vec::new(), None);
    }
    let weighted: Vec<String> = vip
        .backends
        .iter()
        .filter(|b| b.weight() > 0)
        .map(|b| Ids::backend_key(&vip.name, &b.name))
        .filter(|k| !unresolved.contains(k))
        .collect();
    let want: Vec<String> = weighted
        .iter()
        .filter(|k| seen_down.contains(*k))
        .cloned()
        .collect();
    let up = weighted.len() - want.len();
    if weighted.is_empty() {
        return (Vec::new(), None);
    }
    if up == 0 || (up as f64) < policy.panic_threshold * weighted.len() as f64 - 1e-9 {
        let kept = want.into_iter().filter(|k| held.contains(k)).collect();
        let panic = Panic {
            up,
            weighted: weighted.len(),
            threshold: policy.panic_threshold,
        };
        return (kept, Some(panic));
    }
    (want, None)
}

/// Percent of its weight a backend in slow start has `elapsed` into a ramp of `total`
/// in `steps` steps: the first step at once, 100 (done) after the last.
#[expect(
    clippy::cast_sign_loss,
    reason = "elapsed time over a positive step length is not negative"
)]
pub(crate) fn ramp_percent(elapsed: Duration, total: Duration, steps: u32) -> u32 {
    let steps = steps.max(1);
    let step_len = total.as_secs_f64() / f64::from(steps);
    let done = if step_len <= 0.0 {
        steps
    } else {
        (elapsed.as_secs_f64() / step_len).floor() as u32 + 1
    };
    (done.min(steps) * 100 / steps).min(100)
}

/// Ramp steps for a backend with `share` of its VIP's weight: each within `max_shift`.
#[expect(
    clippy::cast_sign_loss,
    reason = "a share over a positive limit is not negative"
)]
pub(crate) fn ramp_steps(share: f64, max_shift: f64) -> u32 {
    let needed = if max_shift > 0.0 {
        (share / max_shift).ceil() as u32
    } else {
        MAX_RAMP_STEPS
    };
    needed.clamp(MIN_RAMP_STEPS, MAX_RAMP_STEPS)
}

/// A generation the health checks caused.
#[derive(Clone, Debug)]
pub struct HealthChange {
    pub generation: u64,
    pub changes: Vec<String>,
}

impl Controller {
    /// Feeds one probe round (`now`: time since the daemon started); returns the backends
    /// that changed state.
    pub fn observe(
        &mut self,
        checks: &BTreeMap<String, crate::config::HealthCheck>,
        probes: &Probes,
        now: Duration,
    ) -> Vec<Transition> {
        self.clock = now;
        self.tracker.observe(checks, probes, now)
    }

    /// The holds `config` gets now: `unresolved` as given, the backends the checks see
    /// down (unless panic), and the ramps of backends in slow start. Also updates which
    /// VIPs are in panic.
    pub(super) fn holds_for(
        &mut self,
        config: &Config,
        unresolved: Vec<String>,
        now: Duration,
    ) -> Holds {
        let seen: BTreeSet<String> = self.tracker.down().collect();
        let held = self.current.as_ref().map_or(&[][..], |r| &r.down[..]);
        let mut down = Vec::new();
        let mut panic = BTreeMap::new();
        let mut ramp = BTreeMap::new();
        for vip in &config.vips {
            let policy = config.guardrails.with(&vip.guardrails);
            let (d, p) = vip_down(vip, &policy, &unresolved, &seen, held);
            if let Some(p) = p {
                panic.insert(vip.name.clone(), p);
            }
            let Some(total) = vip
                .health
                .as_ref()
                .and_then(|h| h.slow_start_s)
                .map(Duration::from_secs)
            else {
                down.extend(d);
                continue;
            };
            let weight: i64 = vip.backends.iter().map(|b| b.weight.max(0)).sum();
            for b in &vip.backends {
                let key = Ids::backend_key(&vip.name, &b.name);
                if d.contains(&key) {
                    self.ramp_started.remove(&key);
                    continue;
                }
                // Only a weighted backend that was held down and is now seen up comes back
                // in steps (a down backend drained by the operator has not recovered).
                let recovered = held.contains(&key) && !seen.contains(&key);
                let ramping = self.current.as_ref().and_then(|r| r.ramp.get(&key));
                if b.weight <= 0 || (!recovered && ramping.is_none()) {
                    self.ramp_started.remove(&key);
                    continue;
                }
                let started = *self.ramp_started.entry(key.clone()).or_insert(now);
                let share = if weight > 0 {
                    b.weight.max(0) as f64 / weight as f64
                } else {
                    0.0
                };
                let steps = ramp_steps(share, policy.max_flow_shift);
                let pct = ramp_percent(now.saturating_sub(started), total, steps)
                    .max(ramping.copied().unwrap_or(0));
                if pct < 100 {
                    ramp.insert(key, pct);
                } else {
                    self.ramp_started.remove(&key);
                }
            }
            down.extend(d);
        }
        self.panic = panic;
        Holds {
            unresolved,
            down,
            ramp,
        }
    }

    /// VIPs in panic, by name.
    pub fn panics(&self) -> &BTreeMap<String, Panic> {
        &self.panic
    }

    /// Commits a generation (`commit_followup`) when the backends to hold out (health,
    /// panic, slow start) differ from the running generation's.
    pub fn refresh_health(
        &mut self,
        why: &[Transition],
    ) -> Result<Option<HealthChange>, ApplyError> {
        let Some(current) = self.current.clone() else {
            return Ok(None);
        };
        let was_panic = self.panic.clone();
        let holds = self.holds_for(&current.config, current.unresolved.clone(), self.clock);
        let mut changes: Vec<String> = Vec::new();
        for (vip, p) in &self.panic {
            if was_panic.get(vip) != Some(p) {
                changes.push(format!("{vip}: {}", p.message()));
            }
        }
        for vip in was_panic.keys().filter(|v| !self.panic.contains_key(*v)) {
            changes.push(format!("{vip}: panic over"));
        }
        if holds.down == current.down && holds.ramp == current.ramp {
            return Ok(None);
        }
        for k in holds.down.iter().filter(|k| !current.down.contains(k)) {
            let probe = why
                .iter()
                .find(|t| &t.key() == k)
                .map_or("checks fail".into(), |t| t.why.clone());
            changes.push(format!("{k} down ({probe}): no new flows"));
        }
        for k in current.down.iter().filter(|k| !holds.down.contains(k)) {
            let probe = why
                .iter()
                .find(|t| &t.key() == k)
                .map_or("checks pass".into(), |t| t.why.clone());
            let back = holds.ramp.get(k).map_or("back at its weight".into(), |p| {
                format!("slow start at {p}% of its weight")
            });
            changes.push(format!("{k} up ({probe}): {back}"));
        }
        for (k, pct) in &holds.ramp {
            if current.ramp.get(k).is_some_and(|was| was != pct) {
                changes.push(format!("{k} slow start {pct}%"));
            }
        }
        for k in current.ramp.keys() {
            if !holds.ramp.contains_key(k) && !holds.down.contains(k) {
                changes.push(format!("{k} slow start done"));
            }
        }
        let mut next = current.clone();
        next.down = holds.down;
        next.ramp = holds.ramp;
        let source = Source::Health {
            changes: changes.clone(),
        };
        let generation = self.commit_followup(next, source)?;
        Ok(Some(HealthChange {
            generation,
            changes,
        }))
    }
}

#[cfg(test)]
mod tests;
