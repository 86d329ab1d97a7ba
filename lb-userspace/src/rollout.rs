//! Stepped rollouts, pure: the intermediate configs between the running weights and a
//! target, and how many steps keep each within the guardrails. The daemon applies them
//! one by one, each followed by a watch (`daemon::rollouts`).
//!
//! Step `k` of `n` gives each backend of a VIP that runs now the weight share
//! `s0 + (s1 - s0) * k / n` (`s0` its share of the running weights, `s1` of the target's;
//! a backend only one side has counts 0 on the other), as an integer weight out of
//! `SCALE`. Everything else (policy, addresses, health, new VIPs) is the target's from
//! the first step; the last step is the target exactly, so a rollout ends where a plain
//! apply would.

use crate::{
    config::{BackendSpec, Config, Vip},
    guard::{self, Health, TableBuilder, Violation},
};

/// Total weight of an intermediate step's VIP.
const SCALE: f64 = 100_000.0;
/// Most steps a rollout takes.
pub const MAX_STEPS: u32 = 20;

/// One step: its config and what the guardrails say about it.
pub type Step = (Config, guard::Plan);

/// The first step the guardrails refuse (1-based), and why.
pub type Refused = (u32, Vec<Violation>);

fn shares(v: &Vip) -> Vec<(String, f64)> {
    let total: f64 = v.backends.iter().map(|b| b.weight.max(0) as f64).sum();
    v.backends
        .iter()
        .map(|b| {
            let s = if total > 0.0 {
                b.weight.max(0) as f64 / total
            } else {
                0.0
            };
            (b.name.clone(), s)
        })
        .collect()
}

/// Step `k` of `n` from `running` to `target` (`k == n` is `target`).
pub fn step(running: &Config, target: &Config, k: u32, n: u32) -> Config {
    if k >= n {
        return target.clone();
    }
    let f = f64::from(k) / f64::from(n);
    let mut out = target.clone();
    for v in &mut out.vips {
        let Some(old) = running.vips.iter().find(|o| o.name == v.name) else {
            continue;
        };
        let from = shares(old);
        let to = shares(v);
        let share = |list: &[(String, f64)], name: &str| {
            list.iter().find(|(n, _)| n == name).map_or(0.0, |x| x.1)
        };
        // Backends leaving are kept, going to 0, until the last step removes them.
        let leaving: Vec<BackendSpec> = old
            .backends
            .iter()
            .filter(|b| v.backend(&b.name).is_none())
            .cloned()
            .collect();
        v.backends.extend(leaving);
        for b in &mut v.backends {
            let s = share(&from, &b.name) + (share(&to, &b.name) - share(&from, &b.name)) * f;
            let w = (s * SCALE).round() as i64;
            b.weight = if s > 0.0 { w.max(1) } else { 0 };
        }
    }
    out
}

/// Every step of an `n`-step rollout and what the guardrails say about each (checked
/// against the step before it, the first against `running`), with `health` as now.
pub fn plan(
    running: &Config,
    target: &Config,
    n: u32,
    health: &Health,
    builder: &dyn TableBuilder,
) -> Vec<Step> {
    let mut out: Vec<Step> = Vec::new();
    for k in 1..=n {
        let c = step(running, target, k, n);
        let before = out.last().map_or(running, |(c, _)| c);
        let p = guard::plan(&c, Some(before), health, builder);
        out.push((c, p));
    }
    out
}

/// The steps of `n`, or the fewest (up to `MAX_STEPS`) whose every step passes the rules
/// when `n` is `None`; `Err` with the first step's violations when none does.
pub fn steps(
    running: &Config,
    target: &Config,
    n: Option<u32>,
    force: bool,
    health: &Health,
    builder: &dyn TableBuilder,
) -> Result<Vec<Step>, Refused> {
    let blocking = |p: &guard::Plan| -> Vec<Violation> {
        p.blocking(force, true).into_iter().cloned().collect()
    };
    let check = |steps: Vec<(Config, guard::Plan)>| match steps
        .iter()
        .enumerate()
        .find(|(_, (_, p))| !blocking(p).is_empty())
    {
        None => Ok(steps),
        Some((k, (_, p))) => Err((k as u32 + 1, blocking(p))),
    };
    match n {
        Some(n) => check(plan(
            running,
            target,
            n.clamp(1, MAX_STEPS),
            health,
            builder,
        )),
        None => {
            let mut last = None;
            for n in 1..=MAX_STEPS {
                match check(plan(running, target, n, health, builder)) {
                    Ok(s) => return Ok(s),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or((1, Vec::new())))
        }
    }
}

#[cfg(test)]
mod tests;
