//! The rules measured on a VIP's weights and built table (`nonzero-total`,
//! `min-active-backends`, `max-backend-share`, `table-fidelity`, `healthy-quorum`) and
//! their health-aware side (relief, `down-backend`).

use crate::{
    config::{Policy, Vip},
    table,
};

use super::{Health, NamedTable, Row, Rule, TableBuilder, Violation, VipPlan, diff::build, pct};

/// The rules measured on weights and on the built table. Returns the table when there
/// is one to install (also when policy rules fail: `--force` may still install it).
pub(super) fn checked_table(
    vip: &Vip,
    policy: &Policy,
    size: u32,
    builder: &dyn TableBuilder,
    health: &Health,
    out: &mut Vec<Violation>,
) -> Option<NamedTable> {
    let total: u64 = vip.backends.iter().map(|b| u64::from(b.weight())).sum();
    let at = |rule, backend: Option<&crate::config::BackendSpec>| Violation {
        rule,
        vip: vip.name.clone(),
        backend: backend.map(|b| b.name.clone()),
        line: backend.map_or(vip.line, |b| b.line),
        measured: None,
        limit: None,
        message: String::new(),
        hint: String::new(),
    };
    if total == 0 {
        out.push(Violation {
            measured: Some(0.0),
            limit: Some(1.0),
            message: "every backend has weight 0: the VIP would drop all new flows".into(),
            hint: "give at least one backend a weight above 0; to stop serving the VIP, \
                   remove it from the config"
                .into(),
            ..at(Rule::NonzeroTotal, None)
        });
        return None;
    }
    let active = vip.backends.iter().filter(|b| b.weight() > 0).count();
    if (active as u32) < policy.min_active_backends {
        out.push(Violation {
            measured: Some(active as f64),
            limit: Some(f64::from(policy.min_active_backends)),
            message: format!(
                "{active} backend(s) with weight above 0; at least {} required",
                policy.min_active_backends
            ),
            hint: format!(
                "give at least {} backends a weight above 0 (undrain or add servers); only a \
                 service that really runs on fewer servers declares it in its \
                 [vip.guardrails], which loosens the rule (--force --reason on a running VIP)",
                policy.min_active_backends
            ),
            ..at(Rule::MinActiveBackends, None)
        });
    }
    let table = match build(vip, size, builder) {
        Ok(t) => t,
        Err(e) => {
            out.push(Violation {
                message: format!("no table can be built: {e}"),
                hint: "fix the VIP's backends".into(),
                ..at(Rule::Structure, None)
            });
            return None;
        }
    };
    let shares = table.shares();
    for b in &vip.backends {
        let share = shares.get(b.name.as_str()).copied().unwrap_or(0.0);
        let want = f64::from(b.weight()) / total as f64;
        // A table cannot split exactly (its size is prime) and the builder lands within
        // SHARE_TOLERANCE of the weights: a share that close above the limit is at it.
        if share > policy.max_backend_share + table::SHARE_TOLERANCE {
            out.push(Violation {
                measured: Some(share),
                limit: Some(policy.max_backend_share),
                message: format!(
                    "owns {} of the table (weight {} of {total}); the limit is {}",
                    pct(share),
                    b.weight(),
                    pct(policy.max_backend_share)
                ),
                hint: format!(
                    "lower {}'s weight or raise the others' so that it gets at most {} \
                     (with health checks, moving share only from down backends to up ones \
                     is allowed while no up backend gets more of the installed table than \
                     it has now)",
                    b.name,
                    pct(policy.max_backend_share)
                ),
                ..at(Rule::MaxBackendShare, Some(b))
            });
        }
        if (share - want).abs() > policy.table_fidelity + 1e-12 {
            out.push(Violation {
                measured: Some((share - want).abs()),
                limit: Some(policy.table_fidelity),
                message: format!(
                    "table share {} vs weight share {}: the table builder did not honour \
                     the weights",
                    pct(share),
                    pct(want)
                ),
                hint: "do not force this: the table is not what the weights ask for; \
                       report it with the config attached"
                    .into(),
                ..at(Rule::TableFidelity, Some(b))
            });
        }
    }
    if vip.health.is_some() {
        // `nonzero-total` passed above: some backend is weighted.
        let (healthy, weighted) = healthy_counts(vip, health);
        let frac = healthy as f64 / weighted as f64;
        if frac + 1e-12 < policy.healthy_quorum {
            out.push(Violation {
                measured: Some(frac),
                limit: Some(policy.healthy_quorum),
                message: format!(
                    "{healthy} of {weighted} weighted backends are healthy; at least {} required",
                    pct(policy.healthy_quorum)
                ),
                hint: "drain the down backends or move their weight to healthy ones (both \
                       allowed without --force: they raise the fraction), or bring them back \
                       to health"
                    .into(),
                ..at(Rule::HealthyQuorum, None)
            });
        }
    }
    Some(table)
}

/// Fraction of `vip`'s weighted backends that are healthy (1 with none weighted).
fn healthy_fraction(vip: &Vip, health: &Health) -> f64 {
    match healthy_counts(vip, health) {
        (_, 0) => 1.0,
        (healthy, weighted) => healthy as f64 / weighted as f64,
    }
}

/// `vip`'s weighted backends that are healthy, and all of its weighted backends.
fn healthy_counts(vip: &Vip, health: &Health) -> (usize, usize) {
    let weighted = vip.backends.iter().filter(|b| b.weight() > 0);
    let healthy = weighted
        .clone()
        .filter(|b| is_healthy(health, &vip.name, &b.name))
        .count();
    (healthy, weighted.count())
}

/// The health-aware side of the rules for a change to a checked VIP, `old` -> `vip`:
/// - `healthy-quorum` blocks only a change that lowers the healthy fraction;
/// - a change that moves share only away from down backends and towards up ones is not
///   blocked by `max-backend-share` (it is better than running on);
/// - giving more share to a backend that is down breaks `down-backend`, except where the
///   change only takes share from down backends and leaves that one's weight alone (its
///   share of the weights grows, but nothing is given to it: draining one of two dead
///   backends).
pub(super) fn health_relief(
    vip: &Vip,
    old: &Vip,
    plan: &VipPlan,
    health: &Health,
    out: &mut Vec<Violation>,
) {
    let before = healthy_fraction(old, health);
    out.retain(|x| {
        !(x.rule == Rule::HealthyQuorum && x.measured.is_some_and(|now| now + 1e-12 >= before))
    });
    const EPS: f64 = 1e-9;
    let up = |r: &Row| is_healthy(health, &vip.name, &r.backend);
    let losers: Vec<&Row> = plan
        .rows
        .iter()
        .filter(|r| r.share_after < r.share_before - EPS)
        .collect();
    let gainers: Vec<&Row> = plan
        .rows
        .iter()
        .filter(|r| r.share_after > r.share_before + EPS)
        .collect();
    let only_from_down = !losers.is_empty() && losers.iter().all(|r| !up(r));
    // A down backend whose weight the change leaves alone gains share only because other
    // down backends lose theirs (draining one of two dead backends): it is given nothing.
    let passive = |r: &Row| only_from_down && !up(r) && r.weight_after <= r.weight_before;
    if only_from_down && gainers.iter().all(|r| up(r) || passive(r)) {
        // A passive backend's own share still counts: it gets it when it comes back.
        let passive_over: Vec<&str> = gainers
            .iter()
            .filter(|r| passive(r))
            .map(|r| r.backend.as_str())
            .collect();
        out.retain(|x| {
            x.rule != Rule::MaxBackendShare
                || x.backend
                    .as_deref()
                    .is_some_and(|b| passive_over.contains(&b))
        });
    }
    for r in gainers.iter().filter(|r| !up(r) && !passive(r)) {
        out.push(Violation {
            rule: Rule::DownBackend,
            vip: vip.name.clone(),
            backend: Some(r.backend.clone()),
            line: vip.backend(&r.backend).and_then(|b| b.line).or(vip.line),
            measured: Some(r.share_after),
            limit: Some(r.share_before),
            message: format!(
                "is down (its health checks fail) and would get {} of the table once up \
                 (has {}; while down its weight counts as 0)",
                pct(r.share_after),
                pct(r.share_before)
            ),
            hint: if r.weight_before == Some(0) {
                format!(
                    "undrain {} once its checks pass (`xlb status` shows it up), or apply \
                     with --force --reason if the checks are wrong",
                    r.backend
                )
            } else {
                format!(
                    "leave {}'s weight until its checks pass (it gets its share back by \
                     itself), or apply with --force --reason if the checks are wrong",
                    r.backend
                )
            },
        });
    }
}

/// Whether the checks last saw `backend` of `vip` healthy (unprobed counts as healthy).
pub fn is_healthy(health: &Health, vip: &str, backend: &str) -> bool {
    health
        .get(&(vip.to_string(), backend.to_string()))
        .copied()
        .unwrap_or(true)
}
