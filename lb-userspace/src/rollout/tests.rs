use super::*;
use crate::{
    config::Policy,
    guard::{Maglev, Rule},
};

fn web(weights: &[(&str, i64)]) -> Config {
    Config {
        vips: vec![crate::config::fixture::vip("web", weights)],
        guardrails: Policy {
            max_backend_share: 0.9,
            ..Policy::default()
        },
        ..Config::default()
    }
}

fn weights(c: &Config) -> Vec<(String, i64)> {
    c.vips[0]
        .backends
        .iter()
        .map(|b| (b.name.clone(), b.weight))
        .collect()
}

#[test]
fn steps_interpolate_shares_and_end_at_the_target() {
    let from = web(&[("a", 2), ("b", 3), ("c", 4)]);
    let to = web(&[("a", 9), ("b", 1), ("c", 1)]);
    let half = step(&from, &to, 1, 2);
    // a: 2/9 -> 9/11, halfway 0.5202...; b: 3/9 -> 1/11; c: 4/9 -> 1/11.
    let w = weights(&half);
    let share = |i: usize| w[i].1 as f64 / 100_000.0;
    assert!(
        (share(0) - (2.0 / 9.0 + 9.0 / 11.0) / 2.0).abs() < 1e-4,
        "{w:?}"
    );
    assert!(
        (share(1) - (3.0 / 9.0 + 1.0 / 11.0) / 2.0).abs() < 1e-4,
        "{w:?}"
    );
    assert_eq!(step(&from, &to, 2, 2), to);
}

#[test]
fn a_leaving_backend_goes_to_zero_before_it_is_removed_and_a_new_one_ramps_up() {
    let from = web(&[("a", 1), ("b", 1)]);
    let to = web(&[("a", 1), ("c", 1)]);
    let first = weights(&step(&from, &to, 1, 2));
    assert_eq!(
        first.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["a", "c", "b"]
    );
    assert_eq!(
        first.iter().map(|(_, w)| *w).collect::<Vec<_>>(),
        [50_000, 25_000, 25_000]
    );
    assert_eq!(weights(&step(&from, &to, 2, 2)), weights(&to));
}

#[test]
fn auto_steps_keep_every_step_within_the_flow_shift() {
    let from = web(&[("a", 2), ("b", 3), ("c", 4)]);
    let to = web(&[("a", 9), ("b", 1), ("c", 1)]);
    let h = Health::new();
    // One step moves more than max_flow_shift (50%)? Then it is refused as one step.
    let one = steps(&from, &to, Some(1), false, &h, &Maglev);
    let auto = steps(&from, &to, None, false, &h, &Maglev).expect("some number of steps");
    for (_, p) in &auto {
        assert!(p.vips[0].moved <= Policy::default().max_flow_shift + 1e-12);
        assert!(p.violations.is_empty(), "{:#?}", p.violations);
    }
    assert_eq!(auto.last().unwrap().0, to);
    let (k, v) = one.unwrap_err();
    assert_eq!(k, 1);
    assert!(v.iter().any(|v| v.rule == Rule::MaxFlowShift), "{v:#?}");
    assert!(auto.len() > 1);
    // A stricter limit needs more steps.
    let mut strict_to = to;
    strict_to.guardrails.max_flow_shift = 0.2;
    let mut strict_from = from;
    strict_from.guardrails.max_flow_shift = 0.2;
    let strict = steps(&strict_from, &strict_to, None, false, &h, &Maglev).unwrap();
    assert!(
        strict.len() > auto.len(),
        "{} vs {}",
        strict.len(),
        auto.len()
    );
}

#[test]
fn a_target_the_rules_refuse_is_refused_whatever_the_steps() {
    let from = web(&[("a", 1), ("b", 1)]);
    let mut to = web(&[("a", 1), ("b", 0)]);
    to.guardrails.max_backend_share = 0.9;
    let err = steps(&from, &to, None, false, &Health::new(), &Maglev).unwrap_err();
    assert!(
        err.1
            .iter()
            .any(|v| v.rule == Rule::MaxBackendShare || v.rule == Rule::MinActiveBackends)
    );
}
