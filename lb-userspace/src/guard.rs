//! Guardrails: a pure function from (desired config, running config, health) to a plan:
//! the table each VIP would get, what would change, and every rule it breaks. Nothing in
//! here touches BPF; the controller installs a plan only if it has no blocking violation.
//!
//! Rules, by stable id (the ids are part of the CLI's contract):
//! - `structure`: names, addresses, MACs, weights, limits; a VIP that fails it gets no table.
//! - `nonzero-total`: a VIP's total weight is above 0.
//! - `min-active-backends`: at least this many backends have weight above 0.
//! - `max-backend-share`: no backend owns more than this share of the *built* table.
//! - `table-fidelity`: each backend's table share is within this of its weight share.
//! - `max-flow-shift`: at most this fraction of a VIP's slots change owner in one apply.
//! - `healthy-quorum`: with health checks, at least this fraction of the weighted
//!   backends is healthy, unless the change leaves the fraction no lower than running.
//! - `down-backend`: a change gives more share to a backend whose checks fail.
//! - `policy-loosening`: a change loosens a limit of the running policy (`policy`).
//! - `vip-removal`: a change removes a running VIP, which moves all of its flows.
//!
//! An existing VIP is checked against the stricter of its running and its new policy, so
//! a file cannot switch a rule off and break it in one step.
//!
//! Health relief: a change to a checked VIP that only moves share away from backends that
//! are down and towards backends that are up is better than running on, so
//! `max-backend-share` does not block it (a drain of a dead backend needs no `--force`).
//! Another down backend whose weight such a change leaves alone is given nothing, though
//! its share of the weights grows: neither `down-backend` nor the relief count it.
//!
//! `structure`, `nonzero-total` and `table-fidelity` can never be forced: breaking them
//! means there is no sane table to install. The others are policy, which `--force
//! --reason` overrides and the history records.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{
    config::Config,
    table::{self, Table, TableError, Weighted},
};

mod changes;
mod diff;
mod encap;
mod health_check;
mod named;
pub mod policy;
mod rules;
mod structure;
#[cfg(test)]
mod tests;

pub use named::{Moved, NamedTable};
pub use rules::is_healthy;
pub use structure::parse_mac;

use diff::{build, diff, removed};
use encap::encap_structure;
use rules::{checked_table, health_relief};
use structure::{global_structure, vip_structure};

/// A guardrail, by its stable id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    Structure,
    NonzeroTotal,
    MinActiveBackends,
    MaxBackendShare,
    TableFidelity,
    MaxFlowShift,
    HealthyQuorum,
    DownBackend,
    PolicyLoosening,
    VipRemoval,
}

impl Rule {
    pub const ALL: [Rule; 10] = [
        Rule::Structure,
        Rule::NonzeroTotal,
        Rule::MinActiveBackends,
        Rule::MaxBackendShare,
        Rule::TableFidelity,
        Rule::MaxFlowShift,
        Rule::HealthyQuorum,
        Rule::DownBackend,
        Rule::PolicyLoosening,
        Rule::VipRemoval,
    ];

    pub fn id(self) -> &'static str {
        match self {
            Rule::Structure => "structure",
            Rule::NonzeroTotal => "nonzero-total",
            Rule::MinActiveBackends => "min-active-backends",
            Rule::MaxBackendShare => "max-backend-share",
            Rule::TableFidelity => "table-fidelity",
            Rule::MaxFlowShift => "max-flow-shift",
            Rule::HealthyQuorum => "healthy-quorum",
            Rule::DownBackend => "down-backend",
            Rule::PolicyLoosening => "policy-loosening",
            Rule::VipRemoval => "vip-removal",
        }
    }

    /// Whether a higher measured value is a worse violation (a share, a shift) rather
    /// than a better one (a count, a fraction healthy).
    pub fn higher_is_worse(self) -> bool {
        matches!(
            self,
            Rule::MaxBackendShare | Rule::TableFidelity | Rule::MaxFlowShift | Rule::DownBackend
        )
    }

    /// Whether a rollback is exempt: it returns to weights that ran before (flows moving
    /// back is its point), and a down backend's weight counts as 0 until it is up.
    pub fn spares_rollbacks(self) -> bool {
        matches!(self, Rule::MaxFlowShift | Rule::DownBackend)
    }

    /// Whether `--force --reason` may override a violation of this rule.
    pub fn forceable(self) -> bool {
        !matches!(
            self,
            Rule::Structure | Rule::NonzeroTotal | Rule::TableFidelity
        )
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

impl Serialize for Rule {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.id())
    }
}

impl<'de> Deserialize<'de> for Rule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let id = String::deserialize(d)?;
        Rule::ALL
            .into_iter()
            .find(|r| r.id() == id)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown rule id {id:?}")))
    }
}

/// One broken rule: where, what was measured, the limit, and how to fix it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Violation {
    pub rule: Rule,
    pub vip: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// Line in the config file of the VIP or backend concerned, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub measured: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<f64>,
    pub message: String,
    pub hint: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}\n    fix: {}",
            self.head(),
            self.message,
            self.hint
        )
    }
}

impl Violation {
    /// `[rule] vip V, backend B`.
    fn head(&self) -> String {
        match &self.backend {
            Some(b) => format!("[{}] vip {}, backend {b}", self.rule, self.vip),
            None => format!("[{}] vip {}", self.rule, self.vip),
        }
    }

    /// The violation on one line, for logs.
    pub fn one_line(&self) -> String {
        format!("{}: {} (fix: {})", self.head(), self.message, self.hint)
    }

    /// `file:line: ` (or `file: ` without a line), as compilers print.
    fn place(&self, file: &std::path::Path) -> String {
        match self.line {
            Some(line) => format!("{}:{line}: ", file.display()),
            None => format!("{}: ", file.display()),
        }
    }

    /// The violation prefixed with its place in `file`.
    pub fn located(&self, file: &std::path::Path) -> String {
        format!("{}{self}", self.place(file))
    }

    /// `located`, on one line, for logs.
    pub fn located_line(&self, file: &std::path::Path) -> String {
        format!("{}{}", self.place(file), self.one_line())
    }
}

/// Backend health as the daemon's checks last saw it: (VIP, backend) -> healthy.
/// Absent entries (no checks configured, or not probed yet) count as healthy.
pub type Health = BTreeMap<(String, String), bool>;

/// Builds tables; injectable so that a flawed builder can be shown to be caught.
pub trait TableBuilder {
    fn build(&self, backends: &[Weighted<'_>], size: u32) -> Result<Table, TableError>;
}

/// The builder the data plane uses.
pub struct Maglev;

impl TableBuilder for Maglev {
    fn build(&self, backends: &[Weighted<'_>], size: u32) -> Result<Table, TableError> {
        table::build(backends, size)
    }
}

/// A builder that hands back a table `plan` already holds when the input is exactly the
/// one that built it (same backends in the same order, same weights, same size), and asks
/// `builder` otherwise. The controller passes the running generation's plan, so an apply
/// builds only the tables that change.
pub struct Reuse<'a> {
    pub plan: Option<&'a Plan>,
    pub builder: &'a dyn TableBuilder,
}

impl TableBuilder for Reuse<'_> {
    fn build(&self, backends: &[Weighted<'_>], size: u32) -> Result<Table, TableError> {
        let built_from = |v: &VipPlan| {
            let t = v.table.as_ref()?;
            // Rows start with the VIP's backends in config order, the order of `names`.
            let same = t.slots.len() == size as usize
                && t.names.len() == backends.len()
                && v.rows.len() >= backends.len()
                && v.rows
                    .iter()
                    .zip(backends)
                    .all(|(r, b)| r.backend == b.name && r.weight_after == Some(b.weight));
            same.then(|| Table::from_slots(t.slots.clone(), backends.len()))
        };
        match self.plan.and_then(|p| p.vips.iter().find_map(built_from)) {
            Some(table) => Ok(table),
            None => self.builder.build(backends, size),
        }
    }
}

/// One backend's line in a diff.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub backend: String,
    pub weight_before: Option<u32>,
    pub weight_after: Option<u32>,
    pub share_before: f64,
    pub share_after: f64,
    /// Share of the VIP's weight (what `share_after` should be close to).
    pub weight_share_after: f64,
    /// Fraction of this backend's current new-flow slots that would go to another backend.
    pub moved: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthy: Option<bool>,
}

/// What an apply would do to one VIP.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VipPlan {
    pub vip: String,
    pub label: String,
    pub change: Change,
    /// What changes besides weights and membership (keys, addresses, MACs, health,
    /// policy), one line each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
    pub rows: Vec<Row>,
    /// Fraction of the VIP's new flows that would go to another backend.
    pub moved: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// The table to install; `None` when the VIP failed `structure` or `nonzero-total`.
    #[serde(skip)]
    pub table: Option<NamedTable>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Added,
    Changed,
    Unchanged,
    Removed,
}

/// The outcome of checking a desired config against the running one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub vips: Vec<VipPlan>,
    /// Global changes applied with the generation (policy, `vip = []`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub global: Vec<String>,
    /// Daemon settings that differ from the running daemon's; they take effect only at
    /// the next `xlb run` (filled in by the daemon, which knows its own settings).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restart: Vec<String>,
    pub violations: Vec<Violation>,
    /// Findings that do not block: what a first generation breaks because backends have
    /// no MAC yet (a cold start serves what it can).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Violation>,
}

impl Plan {
    /// Violations that stop an apply. `force` waives the forceable rules; a rollback
    /// (`shift_blocks == false`) is not stopped by `max-flow-shift` or `down-backend`.
    pub fn blocking(&self, force: bool, shift_blocks: bool) -> Vec<&Violation> {
        self.violations
            .iter()
            .filter(|v| !(force && v.rule.forceable()))
            .filter(|v| shift_blocks || !v.rule.spares_rollbacks())
            .collect()
    }

    pub fn vip(&self, name: &str) -> Option<&VipPlan> {
        self.vips.iter().find(|v| v.vip == name)
    }

    /// Whether applying would change nothing that is applied as a generation.
    pub fn is_noop(&self) -> bool {
        self.global.is_empty() && self.vips.iter().all(|v| v.change == Change::Unchanged)
    }
}

/// Checks `desired` against `current` (the running config, if any).
pub fn plan(
    desired: &Config,
    current: Option<&Config>,
    health: &Health,
    builder: &dyn TableBuilder,
) -> Plan {
    let mut out = Plan {
        vips: Vec::new(),
        global: current.map_or_else(Vec::new, |c| changes::global_details(desired, c)),
        restart: Vec::new(),
        violations: Vec::new(),
        warnings: Vec::new(),
    };
    let size = desired.daemon.table_size;
    global_structure(desired, &mut out.violations);
    encap_structure(desired, &mut out.violations);
    // With a bad table size or policy, no table is built: every VIP would fail alike.
    let global_ok = out.violations.is_empty();
    if let Some(running) = current {
        out.violations.extend(policy::loosened(desired, running));
    }
    let mut names = BTreeSet::new();
    let mut keys = BTreeSet::new();
    for vip in &desired.vips {
        let old = current.and_then(|c| Some((c, c.vips.iter().find(|o| o.name == vip.name)?)));
        // Checked against the stricter of the running and the new limits: a change cannot
        // relax a rule and break it in one step. A new VIP's own overrides stand (it moves
        // no running traffic), on top of the stricter global policy.
        let policy = match (current, old) {
            (_, Some((c, o))) => policy::stricter(
                &c.guardrails.with(&o.guardrails),
                &desired.guardrails.with(&vip.guardrails),
            ),
            (Some(c), None) => {
                policy::stricter(&c.guardrails, &desired.guardrails).with(&vip.guardrails)
            }
            (None, None) => desired.guardrails.with(&vip.guardrails),
        };
        let mut v = Vec::new();
        vip_structure(vip, &mut names, &mut keys, &mut v);
        let before = old.and_then(|(c, o)| {
            let table = build(o, c.daemon.table_size, builder).ok()?;
            Some((o, table))
        });
        let table = if v.is_empty() && global_ok {
            checked_table(vip, &policy, size, builder, health, &mut v)
        } else {
            None
        };
        let details = old.map_or_else(Vec::new, |(c, o)| changes::vip_details(vip, o, desired, c));
        let vip_plan = diff(vip, before.as_ref(), table, health, details);
        if let (Some((old, _)), Some(_)) = (&before, &vip.health) {
            health_relief(vip, old, &vip_plan, health, &mut v);
        }
        if let (Some(_), Some(_)) = (&before, &vip_plan.table) {
            let limit = policy.max_flow_shift;
            if vip_plan.moved > limit + 1e-12 {
                v.push(Violation {
                    rule: Rule::MaxFlowShift,
                    vip: vip.name.clone(),
                    backend: None,
                    line: vip.line,
                    measured: Some(vip_plan.moved),
                    limit: Some(limit),
                    message: format!(
                        "{} of new flows would go to another backend; the limit is {}",
                        pct_beside(vip_plan.moved, limit),
                        pct(limit)
                    ),
                    hint: "change weights in smaller steps, each within the limit (`xlb \
                           apply FILE --steps auto --interval 30s` does it for you), or \
                           apply with --force --reason if this move is intended"
                        .into(),
                });
            }
        }
        // A VIP the running config already has, unchanged in every respect (policy too),
        // was accepted before (perhaps with --force): its policy findings do not block
        // changes to other VIPs.
        if vip_plan.change == Change::Unchanged {
            v.retain(|x| !x.rule.forceable());
        }
        out.violations.extend(v);
        out.vips.push(vip_plan);
    }
    if let Some(current) = current {
        for old in &current.vips {
            if desired.vips.iter().all(|v| v.name != old.name) {
                out.violations.push(Violation {
                    rule: Rule::VipRemoval,
                    vip: old.name.clone(),
                    backend: None,
                    line: None,
                    measured: Some(1.0),
                    limit: None,
                    message: format!(
                        "{} would stop being served: every one of its flows ends",
                        old.label()
                    ),
                    hint: "keep the VIP in the config (a truncated or half-written file \
                           looks like this), or remove it with --force --reason"
                        .into(),
                });
                out.vips
                    .push(removed(old, current.daemon.table_size, builder));
            }
        }
    }
    out
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

/// `x` as a percentage with as many decimals (up to 3) as it takes not to look equal to
/// `limit`: 50.04% over a 50% limit is not "50.0%".
fn pct_beside(x: f64, limit: f64) -> String {
    for d in 1..=3 {
        let (a, b) = (
            format!("{:.d$}%", x * 100.0),
            format!("{:.d$}%", limit * 100.0),
        );
        if a != b {
            return a;
        }
    }
    format!("{:.3}%", x * 100.0)
}
