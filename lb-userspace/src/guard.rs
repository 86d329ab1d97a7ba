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
    net::IpAddr,
};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{
    config::{Config, MAC_FROM_NEIGHBOUR, MAX_WEIGHT, Policy, Vip},
    table::{self, Table, TableError, Weighted},
};

mod changes;
mod health_check;
pub mod policy;
#[cfg(test)]
mod tests;

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

/// A VIP's table by backend name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedTable {
    /// Backends in config order; `slots` index into this.
    pub names: Vec<String>,
    pub slots: Vec<u32>,
}

impl NamedTable {
    /// Share of the table owned by each backend, by name.
    pub fn shares(&self) -> BTreeMap<&str, f64> {
        let mut counts = vec![0u64; self.names.len()];
        for &s in &self.slots {
            counts[s as usize] += 1;
        }
        self.names
            .iter()
            .zip(counts)
            .map(|(n, c)| (n.as_str(), c as f64 / self.slots.len() as f64))
            .collect()
    }

    /// FNV-1a over size, names and slots: equal on every host that built the same table.
    pub fn fingerprint(&self) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for &b in bytes {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        };
        eat(&(self.slots.len() as u64).to_le_bytes());
        for n in &self.names {
            eat(n.as_bytes());
            eat(&[0]);
        }
        for s in &self.slots {
            eat(&s.to_le_bytes());
        }
        format!("{h:016x}")
    }

    /// Fraction of flows whose owner differs between `self` and `new`, over all flows and
    /// over each of `self`'s backends' flows. Equal sizes compare slot by slot (exact);
    /// different sizes compare a fixed sample of hash values. One pass, whatever the
    /// number of backends.
    pub fn moved(&self, new: &NamedTable) -> Moved<'_> {
        let new_index: BTreeMap<&str, u32> = new
            .names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i as u32))
            .collect();
        // Owner index in `self` -> the same backend's index in `new`, if it is there.
        let same: Vec<Option<u32>> = self
            .names
            .iter()
            .map(|n| new_index.get(n.as_str()).copied())
            .collect();
        let mut seen = vec![0u64; self.names.len()];
        let mut moved = vec![0u64; self.names.len()];
        let mut count = |old: u32, new: u32| {
            seen[old as usize] += 1;
            moved[old as usize] += u64::from(same[old as usize] != Some(new));
        };
        if self.slots.len() == new.slots.len() {
            for (&old, &new) in self.slots.iter().zip(&new.slots) {
                count(old, new);
            }
        } else {
            let mut x: u32 = 0x9e37_79b9;
            for _ in 0..(1 << 18) {
                // xorshift32: a fixed, host-independent sample of hash values.
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                count(
                    self.slots[x as usize % self.slots.len()],
                    new.slots[x as usize % new.slots.len()],
                );
            }
        }
        let fraction = |m: u64, s: u64| if s == 0 { 0.0 } else { m as f64 / s as f64 };
        Moved {
            all: fraction(moved.iter().sum(), seen.iter().sum()),
            by_backend: self
                .names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.as_str(), fraction(moved[i], seen[i])))
                .collect(),
        }
    }
}

/// How much of a table's traffic another table sends elsewhere.
#[derive(Debug)]
pub struct Moved<'a> {
    /// Fraction of all flows.
    pub all: f64,
    /// Fraction of the flows of each backend of the old table, by name.
    pub by_backend: BTreeMap<&'a str, f64>,
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

/// Most VIPs and backends the maps hold (id 0 is never used).
pub const MAX_VIPS: usize = lb_common::maps::MAX_VIPS as usize - 1;
pub const MAX_BACKENDS: usize = lb_common::maps::MAX_BACKENDS as usize - 1;

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

fn build(vip: &Vip, size: u32, builder: &dyn TableBuilder) -> Result<NamedTable, TableError> {
    let input: Vec<Weighted<'_>> = vip
        .backends
        .iter()
        .map(|b| Weighted {
            name: &b.name,
            weight: b.weight(),
        })
        .collect();
    let t = builder.build(&input, size)?;
    Ok(NamedTable {
        names: vip.backends.iter().map(|b| b.name.clone()).collect(),
        slots: t.slots().to_vec(),
    })
}

fn global_structure(c: &Config, out: &mut Vec<Violation>) {
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
            "leave it out (default 65536) or size it for the concurrent flows expected",
        );
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
    if c.vips.len() > MAX_VIPS {
        bad(
            "vip",
            format!("{} VIPs; the maps hold {MAX_VIPS}", c.vips.len()),
            "split the VIPs over several hosts",
        );
    }
    let backends: usize = c.vips.iter().map(|v| v.backends.len()).sum();
    if backends > MAX_BACKENDS {
        bad(
            "vip",
            format!("{backends} backends in all; the maps hold {MAX_BACKENDS}"),
            "split the VIPs over several hosts",
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

fn vip_structure(
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

/// The rules measured on weights and on the built table. Returns the table when there
/// is one to install (also when policy rules fail: `--force` may still install it).
fn checked_table(
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
        let weighted: Vec<_> = vip.backends.iter().filter(|b| b.weight() > 0).collect();
        let healthy = weighted
            .iter()
            .filter(|b| is_healthy(health, &vip.name, &b.name))
            .count();
        let frac = healthy as f64 / weighted.len().max(1) as f64;
        if frac + 1e-12 < policy.healthy_quorum {
            out.push(Violation {
                measured: Some(frac),
                limit: Some(policy.healthy_quorum),
                message: format!(
                    "{healthy} of {} weighted backends are healthy; at least {} required",
                    weighted.len(),
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
    let weighted: Vec<_> = vip.backends.iter().filter(|b| b.weight() > 0).collect();
    if weighted.is_empty() {
        return 1.0;
    }
    let healthy = weighted
        .iter()
        .filter(|b| is_healthy(health, &vip.name, &b.name))
        .count();
    healthy as f64 / weighted.len() as f64
}

/// The health-aware side of the rules for a change to a checked VIP, `old` -> `vip`:
/// - `healthy-quorum` blocks only a change that lowers the healthy fraction;
/// - a change that moves share only away from down backends and towards up ones is not
///   blocked by `max-backend-share` (it is better than running on);
/// - giving more share to a backend that is down breaks `down-backend`, except where the
///   change only takes share from down backends and leaves that one's weight alone (its
///   share of the weights grows, but nothing is given to it: draining one of two dead
///   backends).
fn health_relief(vip: &Vip, old: &Vip, plan: &VipPlan, health: &Health, out: &mut Vec<Violation>) {
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

fn diff(
    vip: &Vip,
    before: Option<&(&Vip, NamedTable)>,
    table: Option<NamedTable>,
    health: &Health,
    details: Vec<String>,
) -> VipPlan {
    let total: u64 = vip.backends.iter().map(|b| u64::from(b.weight())).sum();
    let after_shares = table.as_ref().map(|t| t.shares()).unwrap_or_default();
    let moved = match (before, &table) {
        (Some((_, old)), Some(new)) => Some(old.moved(new)),
        _ => None,
    };
    let before_shares = before.map(|(_, t)| t.shares()).unwrap_or_default();
    let mut rows: Vec<Row> = vip
        .backends
        .iter()
        .map(|b| Row {
            backend: b.name.clone(),
            weight_before: before
                .and_then(|(o, _)| o.backend(&b.name))
                .map(|o| o.weight()),
            weight_after: Some(b.weight()),
            share_before: before_shares.get(b.name.as_str()).copied().unwrap_or(0.0),
            share_after: after_shares.get(b.name.as_str()).copied().unwrap_or(0.0),
            weight_share_after: if total == 0 {
                0.0
            } else {
                f64::from(b.weight()) / total as f64
            },
            moved: moved
                .as_ref()
                .and_then(|m| m.by_backend.get(b.name.as_str()).copied())
                .unwrap_or(0.0),
            healthy: vip
                .health
                .as_ref()
                .map(|_| is_healthy(health, &vip.name, &b.name)),
        })
        .collect();
    if let Some((old, old_table)) = before {
        for b in old
            .backends
            .iter()
            .filter(|b| vip.backend(&b.name).is_none())
        {
            rows.push(Row {
                backend: b.name.clone(),
                weight_before: Some(b.weight()),
                weight_after: None,
                share_before: before_shares.get(b.name.as_str()).copied().unwrap_or(0.0),
                share_after: 0.0,
                weight_share_after: 0.0,
                moved: if old_table
                    .shares()
                    .get(b.name.as_str())
                    .copied()
                    .unwrap_or(0.0)
                    > 0.0
                {
                    1.0
                } else {
                    0.0
                },
                healthy: None,
            });
        }
    }
    let moved = moved.map_or(0.0, |m| m.all);
    let same_members = before.is_some_and(|(old, _)| {
        old.backends.len() == vip.backends.len()
            && vip
                .backends
                .iter()
                .all(|b| old.backend(&b.name).is_some_and(|o| o.weight == b.weight))
    });
    let change = match before {
        None => Change::Added,
        Some((_, old)) if Some(old) == table.as_ref() && details.is_empty() && same_members => {
            Change::Unchanged
        }
        Some(_) => Change::Changed,
    };
    VipPlan {
        vip: vip.name.clone(),
        label: vip.label(),
        change,
        details,
        rows,
        moved,
        fingerprint: table.as_ref().map(NamedTable::fingerprint),
        table,
    }
}

fn removed(old: &Vip, size: u32, builder: &dyn TableBuilder) -> VipPlan {
    let shares = build(old, size, builder)
        .map(|t| {
            t.shares()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect::<BTreeMap<_, _>>()
        })
        .unwrap_or_default();
    VipPlan {
        vip: old.name.clone(),
        label: old.label(),
        change: Change::Removed,
        details: Vec::new(),
        rows: old
            .backends
            .iter()
            .map(|b| Row {
                backend: b.name.clone(),
                weight_before: Some(b.weight()),
                weight_after: None,
                share_before: shares.get(&b.name).copied().unwrap_or(0.0),
                share_after: 0.0,
                weight_share_after: 0.0,
                moved: 1.0,
                healthy: None,
            })
            .collect(),
        moved: 1.0,
        fingerprint: None,
        table: None,
    }
}
