//! Tests of the plan and its rules: the postmortem seeds, deliberately flawed table
//! builders, table reuse, flow shift against the running table, and a property test that
//! accepted configs install tables within every rule. `structure` and `health` hold the
//! tests of those rules.

use proptest::prelude::*;

use super::*;
use crate::config::{self, BackendSpec, MAC_FROM_NEIGHBOUR, Vip};

mod encap;
mod health;
mod structure;

const SIZE: u32 = 65537;

fn vip(name: &str, weights: &[i64]) -> Vip {
    Vip {
        name: name.into(),
        address: "198.18.0.100".into(),
        port: 80,
        protocol: config::Protocol::Tcp,
        forwarding: config::Forwarding::L2Dsr,
        icmp_echo: true,
        guardrails: Default::default(),
        health: None,
        backends: weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| BackendSpec {
                name: format!("b{i}"),
                address: format!("198.18.0.{}", 11 + i),
                mac: MAC_FROM_NEIGHBOUR.into(),
                weight,
                line: None,
            })
            .collect(),
        line: None,
    }
}

fn config(vips: Vec<Vip>) -> Config {
    Config {
        vips,
        ..Config::default()
    }
}

fn check(c: &Config, current: Option<&Config>) -> Plan {
    plan(c, current, &Health::new(), &Maglev)
}

fn rules(p: &Plan) -> Vec<(Rule, Option<&str>)> {
    p.violations
        .iter()
        .map(|v| (v.rule, v.backend.as_deref()))
        .collect()
}

#[test]
fn balanced_config_passes_and_plans_its_table() {
    let p = check(&config(vec![vip("web", &[1, 2, 3])]), None);
    assert!(p.violations.is_empty(), "{:#?}", p.violations);
    let v = p.vip("web").unwrap();
    assert_eq!(v.change, Change::Added);
    let t = v.table.as_ref().unwrap();
    assert_eq!(t.slots.len(), SIZE as usize);
    for (row, want) in v.rows.iter().zip([1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0]) {
        assert!((row.share_after - want).abs() < 0.003, "{row:?}");
        assert_eq!(row.weight_share_after, want);
    }
}

// Seed: "all server weights set to zero except one".
#[test]
fn all_zero_but_one_is_rejected_by_min_active_and_max_share() {
    let p = check(&config(vec![vip("web", &[0, 0, 0, 5])]), None);
    assert_eq!(
        rules(&p),
        vec![
            (Rule::MinActiveBackends, None),
            (Rule::MaxBackendShare, Some("b3")),
        ]
    );
    let share = &p.violations[1];
    assert_eq!(share.measured, Some(1.0));
    assert_eq!(share.limit, Some(0.5));
    assert!(share.hint.contains("lower b3's weight"), "{}", share.hint);
    assert!(p.blocking(false, true).len() == 2);
    // Forcing waives both policy rules.
    assert!(p.blocking(true, true).is_empty());
}

#[test]
fn all_zero_is_rejected_by_nonzero_total_and_cannot_be_forced() {
    let p = check(&config(vec![vip("web", &[0, 0, 0])]), None);
    assert_eq!(rules(&p), vec![(Rule::NonzeroTotal, None)]);
    assert!(p.vip("web").unwrap().table.is_none());
    assert_eq!(p.blocking(true, true).len(), 1);
}

// Seed: one backend weighted far above the rest.
#[test]
fn one_heavy_backend_is_rejected_by_max_share() {
    let p = check(&config(vec![vip("web", &[1, 1, 1, 10])]), None);
    assert_eq!(rules(&p), vec![(Rule::MaxBackendShare, Some("b3"))]);
    let v = &p.violations[0];
    assert!((v.measured.unwrap() - 10.0 / 13.0).abs() < 0.003);
    let text = v.to_string();
    assert!(
        text.starts_with("[max-backend-share] vip web, backend b3: owns 7"),
        "{text}"
    );
}

/// Gives every slot to the first backend: the "algorithm flaw" of the postmortems.
struct FirstTakesAll;

impl TableBuilder for FirstTakesAll {
    fn build(&self, backends: &[Weighted<'_>], size: u32) -> Result<Table, TableError> {
        Ok(Table::from_slots(vec![0; size as usize], backends.len()))
    }
}

/// Off by a little: moves 2% of the slots from the last backend to the first.
struct SlightlyOff;

impl TableBuilder for SlightlyOff {
    fn build(&self, backends: &[Weighted<'_>], size: u32) -> Result<Table, TableError> {
        let good = table::build(backends, size)?;
        let last = backends.len() as u32 - 1;
        let mut budget = size / 50;
        let slots = good
            .slots()
            .iter()
            .map(|&s| {
                if s == last && budget > 0 {
                    budget -= 1;
                    0
                } else {
                    s
                }
            })
            .collect();
        Ok(Table::from_slots(slots, backends.len()))
    }
}

#[test]
fn flawed_table_builder_is_caught_by_table_fidelity() {
    let c = config(vec![vip("web", &[1, 1, 1, 1])]);
    let p = plan(&c, None, &Health::new(), &FirstTakesAll);
    let fidelity: Vec<_> = p
        .violations
        .iter()
        .filter(|v| v.rule == Rule::TableFidelity)
        .collect();
    assert_eq!(fidelity.len(), 4, "{:#?}", p.violations);
    assert!(rules(&p).contains(&(Rule::MaxBackendShare, Some("b0"))));
    assert!(
        !p.blocking(true, true).is_empty(),
        "fidelity is not forceable"
    );

    // A flaw too small for max-backend-share is still caught.
    let p = plan(&c, None, &Health::new(), &SlightlyOff);
    assert_eq!(
        rules(&p),
        vec![
            (Rule::TableFidelity, Some("b0")),
            (Rule::TableFidelity, Some("b3"))
        ]
    );
}

/// Counts the tables it really builds.
struct Counting(std::cell::Cell<u32>);

impl TableBuilder for Counting {
    fn build(&self, backends: &[Weighted<'_>], size: u32) -> Result<Table, TableError> {
        self.0.set(self.0.get() + 1);
        table::build(backends, size)
    }
}

#[test]
fn running_tables_are_reused_and_only_changed_tables_are_built() {
    let mut api = vip("api", &[1, 1]);
    api.address = "198.18.0.101".into();
    let before = config(vec![vip("web", &[1, 2, 3]), api]);
    let running = check(&before, None);
    let mut after = before.clone();
    after.vips[0].backends[0].weight = 2;
    let counting = Counting(std::cell::Cell::new(0));
    let reuse = Reuse {
        plan: Some(&running),
        builder: &counting,
    };
    let p = plan(&after, Some(&before), &Health::new(), &reuse);
    // web's new table only: web's running table and both of api's come from `running`.
    assert_eq!(counting.0.get(), 1);
    // Exactly what building everything afresh gives.
    assert_eq!(p, check(&after, Some(&before)));
    assert_eq!(p.vip("api").unwrap().change, Change::Unchanged);
}

#[test]
fn flow_shift_is_measured_against_the_running_table() {
    let before = config(vec![vip("web", &[1, 1, 1, 1])]);
    // Re-weighting 1:1:1:1 -> 1:1:3:3 moves a quarter of the flows: half of b0's and b1's.
    let after = config(vec![vip("web", &[1, 1, 3, 3])]);
    let p = check(&after, Some(&before));
    assert!(p.violations.is_empty(), "{:#?}", p.violations);
    let v = p.vip("web").unwrap();
    assert_eq!(v.change, Change::Changed);
    assert!((v.moved - 0.25).abs() < 0.01, "moved {}", v.moved);
    assert!((v.rows[0].moved - 0.5).abs() < 0.02, "{:?}", v.rows);
    assert_eq!(v.rows[2].moved, 0.0);

    // Replacing every backend moves everything.
    let mut other = vip("web", &[1, 1, 1, 1]);
    for b in &mut other.backends {
        b.name = format!("new-{}", b.name);
    }
    let p = check(&config(vec![other]), Some(&before));
    assert_eq!(rules(&p), vec![(Rule::MaxFlowShift, None)]);
    assert_eq!(p.violations[0].measured, Some(1.0));
    assert!(p.blocking(true, true).is_empty());
    assert!(
        p.blocking(false, false).is_empty(),
        "rollback is not blocked"
    );
    let v = p.vip("web").unwrap();
    assert_eq!(v.rows.len(), 8, "four new and four removed rows");
    assert!(
        v.rows[4..]
            .iter()
            .all(|r| r.weight_after.is_none() && r.moved == 1.0)
    );
}

#[test]
fn unchanged_and_removed_vips() {
    let before = config(vec![vip("a", &[1, 1]), vip("b", &[1, 1])]);
    let mut b2 = vip("b2", &[1, 1]);
    b2.port = 81;
    let after = config(vec![vip("a", &[1, 1]), b2]);
    let p = check(&after, Some(&before));
    let changes: Vec<(&str, Change)> = p.vips.iter().map(|v| (v.vip.as_str(), v.change)).collect();
    assert_eq!(
        changes,
        vec![
            ("a", Change::Unchanged),
            ("b2", Change::Added),
            ("b", Change::Removed)
        ]
    );
}

#[test]
fn forced_vip_left_unchanged_does_not_block_other_vips() {
    let mut solo = vip("solo", &[0, 5]);
    solo.address = "198.18.0.101".into();
    let before = config(vec![solo.clone(), vip("web", &[1, 1, 1])]);
    let after = config(vec![solo, vip("web", &[2, 2, 3])]);
    let p = check(&after, Some(&before));
    assert!(p.violations.is_empty(), "{:#?}", p.violations);
    // Offline, with nothing running, the same config is reported in full.
    assert_eq!(check(&after, None).violations.len(), 2);
}

#[test]
fn fingerprint_is_stable_and_content_addressed() {
    let p = check(&config(vec![vip("web", &[1, 2, 3])]), None);
    let q = check(&config(vec![vip("web", &[1, 2, 3])]), None);
    let r = check(&config(vec![vip("web", &[1, 2, 4])]), None);
    let f = |p: &Plan| p.vips[0].fingerprint.clone().unwrap();
    assert_eq!(f(&p), f(&q));
    assert_ne!(f(&p), f(&r));
}

#[test]
fn rule_ids_are_stable() {
    let ids: Vec<&str> = Rule::ALL.iter().map(|r| r.id()).collect();
    assert_eq!(
        ids,
        [
            "structure",
            "nonzero-total",
            "min-active-backends",
            "max-backend-share",
            "table-fidelity",
            "max-flow-shift",
            "healthy-quorum",
            "down-backend",
            "policy-loosening",
            "vip-removal"
        ]
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Whatever the validator accepts, the table it would install satisfies every rule,
    /// measured again here from the raw slots.
    #[test]
    fn accepted_configs_install_tables_within_every_rule(
        weights in prop::collection::vec(0i64..50, 1..12),
        old in prop::collection::vec(0i64..50, 1..12),
        min_active in 1u32..4,
        max_share in 0.2f64..1.0,
        max_shift in 0.05f64..1.0,
    ) {
        let mut v = vip("web", &weights);
        v.guardrails.min_active_backends = Some(min_active);
        v.guardrails.max_backend_share = Some(max_share);
        v.guardrails.max_flow_shift = Some(max_shift);
        let mut c = config(vec![v]);
        c.daemon.table_size = 4099;
        let mut before = config(vec![vip("web", &old)]);
        before.daemon.table_size = 4099;
        let p = check(&c, Some(&before));
        if p.violations.is_empty() {
            let t = p.vips[0].table.as_ref().unwrap();
            let total: i64 = weights.iter().sum();
            let mut counts = vec![0usize; weights.len()];
            for &s in &t.slots { counts[s as usize] += 1; }
            prop_assert!(total > 0);
            prop_assert!(weights.iter().filter(|&&w| w > 0).count() >= min_active as usize);
            for (i, &n) in counts.iter().enumerate() {
                let share = n as f64 / 4099.0;
                prop_assert!(share <= max_share + table::SHARE_TOLERANCE);
                prop_assert!((share - weights[i] as f64 / total as f64).abs() <= 0.005 + 1e-12);
                if weights[i] == 0 { prop_assert_eq!(n, 0); }
            }
            let old_t = table::build(
                &before.vips[0].backends.iter().map(|b| Weighted { name: &b.name, weight: b.weight() }).collect::<Vec<_>>(),
                4099,
            );
            if let Ok(old_t) = old_t {
                let moved = (0..4099)
                    .filter(|&i| before.vips[0].backends[old_t.slots()[i] as usize].name
                        != c.vips[0].backends[t.slots[i] as usize].name)
                    .count();
                prop_assert!(moved as f64 / 4099.0 <= max_shift + 1e-12);
            }
        }
    }
}

#[test]
fn a_value_just_over_its_limit_does_not_print_as_the_limit() {
    assert_eq!(pct_beside(0.5004, 0.5), "50.04%");
    assert_eq!(pct_beside(0.62, 0.5), "62.0%");
    assert_eq!(pct_beside(0.500_000_1, 0.5), "50.000%");
}
