//! Policy is guarded like weights: a change is checked against the stricter of the
//! running policy and the new one, and every limit it loosens is a `policy-loosening`
//! violation (forceable, so `--force --reason` records who loosened what and why).
//! `xlb validate --strict` reports limits looser than the built-in defaults.

use crate::config::{Config, Policy, PolicyOverride};

use super::{Rule, Violation, pct};

/// One guardrail limit: its key, how to read it, and which direction is stricter.
struct Limit {
    key: &'static str,
    get: fn(&Policy) -> f64,
    set: fn(&PolicyOverride) -> bool,
    /// A higher value is stricter (`min_active_backends`, `healthy_quorum`).
    higher_is_stricter: bool,
    /// How to print a value of this limit.
    show: fn(f64) -> String,
}

fn count(x: f64) -> String {
    format!("{x}")
}

const LIMITS: [Limit; 6] = [
    Limit {
        key: "min_active_backends",
        get: |p| f64::from(p.min_active_backends),
        set: |o| o.min_active_backends.is_some(),
        higher_is_stricter: true,
        show: count,
    },
    Limit {
        key: "max_backend_share",
        get: |p| p.max_backend_share,
        set: |o| o.max_backend_share.is_some(),
        higher_is_stricter: false,
        show: pct,
    },
    Limit {
        key: "table_fidelity",
        get: |p| p.table_fidelity,
        set: |o| o.table_fidelity.is_some(),
        higher_is_stricter: false,
        show: pct,
    },
    Limit {
        key: "max_flow_shift",
        get: |p| p.max_flow_shift,
        set: |o| o.max_flow_shift.is_some(),
        higher_is_stricter: false,
        show: pct,
    },
    Limit {
        key: "healthy_quorum",
        get: |p| p.healthy_quorum,
        set: |o| o.healthy_quorum.is_some(),
        higher_is_stricter: true,
        show: pct,
    },
    Limit {
        key: "panic_threshold",
        get: |p| p.panic_threshold,
        set: |o| o.panic_threshold.is_some(),
        // A higher threshold stops taking backends out for health sooner.
        higher_is_stricter: true,
        show: pct,
    },
];

/// Per limit, the stricter of `a` and `b`.
pub fn stricter(a: &Policy, b: &Policy) -> Policy {
    Policy {
        min_active_backends: a.min_active_backends.max(b.min_active_backends),
        max_backend_share: a.max_backend_share.min(b.max_backend_share),
        table_fidelity: a.table_fidelity.min(b.table_fidelity),
        max_flow_shift: a.max_flow_shift.min(b.max_flow_shift),
        healthy_quorum: a.healthy_quorum.max(b.healthy_quorum),
        panic_threshold: a.panic_threshold.max(b.panic_threshold),
    }
}

/// A limit that differs between two policies: key, old value, new value, and whether the
/// new one is looser.
pub struct LimitChange {
    pub key: &'static str,
    pub old: String,
    pub new: String,
    pub old_value: f64,
    pub new_value: f64,
    pub looser: bool,
}

/// `guardrails.max_flow_shift: 50.0% -> 10.0%`, marked `(looser)` when it loosens.
impl std::fmt::Display for LimitChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "guardrails.{}: {} -> {}", self.key, self.old, self.new)?;
        if self.looser {
            f.write_str(" (looser)")?;
        }
        Ok(())
    }
}

/// Every limit that differs between `old` and `new`.
pub fn changes(old: &Policy, new: &Policy) -> Vec<LimitChange> {
    LIMITS
        .iter()
        .filter_map(|l| {
            let (o, n) = ((l.get)(old), (l.get)(new));
            (o != n).then(|| LimitChange {
                key: l.key,
                old: (l.show)(o),
                new: (l.show)(n),
                old_value: o,
                new_value: n,
                looser: if l.higher_is_stricter { n < o } else { n > o },
            })
        })
        .collect()
}

fn loosening(vip: &str, line: Option<usize>, c: &LimitChange, was: &str) -> Violation {
    Violation {
        rule: Rule::PolicyLoosening,
        vip: vip.to_string(),
        backend: None,
        line,
        measured: Some(c.new_value),
        limit: Some(c.old_value),
        message: format!(
            "guardrails.{} would loosen from {} ({was}) to {}",
            c.key, c.old, c.new
        ),
        hint: format!(
            "keep guardrails.{} at {}: changes are checked against the stricter limit either \
             way; loosening a guardrail is itself a guarded change (--force --reason)",
            c.key, c.old
        ),
    }
}

/// Every limit `desired` loosens against `running`: the global ones (VIP `*`), and per
/// VIP that both configs have, those its own `[vip.guardrails]` (old or new) loosens.
pub fn loosened(desired: &Config, running: &Config) -> Vec<Violation> {
    let mut out: Vec<Violation> = changes(&running.guardrails, &desired.guardrails)
        .iter()
        .filter(|c| c.looser)
        .map(|c| {
            let line = desired.line_of(&format!("guardrails.{}", c.key));
            loosening("*", line, c, "the running global limit")
        })
        .collect();
    for vip in &desired.vips {
        let Some(old) = running.vips.iter().find(|o| o.name == vip.name) else {
            continue;
        };
        let before = running.guardrails.with(&old.guardrails);
        let after = desired.guardrails.with(&vip.guardrails);
        for c in changes(&before, &after).iter().filter(|c| c.looser) {
            let Some(limit) = LIMITS.iter().find(|l| l.key == c.key) else {
                continue;
            };
            // A VIP that inherits the limit both times is covered by the global finding.
            if (limit.set)(&vip.guardrails) || (limit.set)(&old.guardrails) {
                out.push(loosening(&vip.name, vip.line, c, "the VIP's running limit"));
            }
        }
    }
    out
}

/// Limits looser than the built-in defaults, globally and per VIP (`validate --strict`).
pub fn looser_than_defaults(config: &Config) -> Vec<Violation> {
    let defaults = Policy::default();
    let mut out: Vec<Violation> = changes(&defaults, &config.guardrails)
        .iter()
        .filter(|c| c.looser)
        .map(|c| {
            let line = config.line_of(&format!("guardrails.{}", c.key));
            loosening("*", line, c, "the built-in default")
        })
        .collect();
    for vip in &config.vips {
        let own = config.guardrails.with(&vip.guardrails);
        for c in changes(&defaults, &own).iter().filter(|c| c.looser) {
            if LIMITS
                .iter()
                .any(|l| l.key == c.key && (l.set)(&vip.guardrails))
            {
                out.push(loosening(&vip.name, vip.line, c, "the built-in default"));
            }
        }
    }
    out
}
