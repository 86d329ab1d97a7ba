use super::*;
use crate::config::HealthCheck;

fn vip(weights: &[i64]) -> Vip {
    let names: Vec<String> = (0..weights.len()).map(|i| format!("b{i}")).collect();
    let backends: Vec<(&str, i64)> = names
        .iter()
        .map(String::as_str)
        .zip(weights.iter().copied())
        .collect();
    Vip {
        health: Some(HealthCheck::tcp(80)),
        ..crate::config::fixture::vip("web", &backends)
    }
}

fn keys(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| format!("web/{n}")).collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    keys(names).into_iter().collect()
}

#[test]
fn down_backends_are_held_out_while_enough_are_up() {
    let p = Policy::default();
    let (down, panic) = vip_down(&vip(&[1, 1, 1]), &p, &[], &set(&["b2"]), &[]);
    assert_eq!((down, panic), (keys(&["b2"]), None));
    // Exactly at the threshold (2 of 4 up, 50%) is not a panic.
    let (down, panic) = vip_down(&vip(&[1, 1, 1, 1]), &p, &[], &set(&["b0", "b1"]), &[]);
    assert_eq!((down, panic), (keys(&["b0", "b1"]), None));
}

#[test]
fn below_the_panic_threshold_nothing_more_is_taken_out() {
    let p = Policy::default();
    // b2 was out; b1 fails too: 1 of 3 up is a panic, and b1 stays in the table.
    let (down, panic) = vip_down(
        &vip(&[1, 1, 1]),
        &p,
        &[],
        &set(&["b1", "b2"]),
        &keys(&["b2"]),
    );
    assert_eq!(down, keys(&["b2"]));
    let panic = panic.expect("panic");
    assert_eq!((panic.up, panic.weighted), (1, 3));
    assert!(
        panic.message().contains("1 of 3 weighted backends up"),
        "{}",
        panic.message()
    );
    // All at once from a full table (a checker that lost its network): nothing moves.
    let (down, panic) = vip_down(&vip(&[1, 1, 1]), &p, &[], &set(&["b0", "b1", "b2"]), &[]);
    assert!(down.is_empty() && panic.is_some());
    // Even with no threshold, the last backend up is never taken out.
    let p0 = Policy {
        panic_threshold: 0.0,
        ..Policy::default()
    };
    let (down, panic) = vip_down(&vip(&[1, 1]), &p0, &[], &set(&["b0", "b1"]), &keys(&["b0"]));
    assert_eq!((down, panic.is_some()), (keys(&["b0"]), true));
}

#[test]
fn drained_unresolved_and_unchecked_backends_do_not_count() {
    let p = Policy::default();
    // b2 drained (weight 0) and down: not weighted, not held, not counted.
    let (down, panic) = vip_down(&vip(&[1, 1, 0]), &p, &[], &set(&["b2"]), &[]);
    assert_eq!((down, panic), (vec![], None));
    // b0 unresolved: the weighted backends are b1, b2; b2 down is 1 of 2 up.
    let (down, panic) = vip_down(&vip(&[1, 1, 1]), &p, &keys(&["b0"]), &set(&["b2"]), &[]);
    assert_eq!((down, panic), (keys(&["b2"]), None));
    let mut unchecked = vip(&[1, 1]);
    unchecked.health = None;
    assert_eq!(
        vip_down(&unchecked, &p, &[], &set(&["b0"]), &[]),
        (vec![], None)
    );
}

#[test]
fn slow_start_ramps_in_steps_within_the_flow_shift() {
    let t = Duration::from_secs(8);
    let at = |s: f64| ramp_percent(Duration::from_secs_f64(s), t, 4);
    assert_eq!(
        [
            at(0.0),
            at(1.9),
            at(2.0),
            at(4.0),
            at(6.0),
            at(8.0),
            at(60.0)
        ],
        [25, 25, 50, 75, 100, 100, 100]
    );
    // A backend with half the weight and a 10% flow-shift limit needs 5 steps of 10%.
    assert_eq!(ramp_steps(0.5, 0.1), 5);
    assert_eq!(ramp_steps(0.1, 0.5), MIN_RAMP_STEPS);
    assert_eq!(ramp_steps(1.0, 0.01), MAX_RAMP_STEPS);
}

#[test]
fn holds_set_effective_weights() {
    let config = Config {
        vips: vec![vip(&[10, 10, 10, 10])],
        ..Config::default()
    };
    let holds = Holds {
        unresolved: keys(&["b0"]),
        down: keys(&["b1"]),
        ramp: [("web/b2".to_string(), 25)].into(),
    };
    let w: Vec<i64> = holds.apply(&config).vips[0]
        .backends
        .iter()
        .map(|b| b.weight)
        .collect();
    assert_eq!(w, [0, 0, 2, 10]);
    // A ramp never rounds a weighted backend down to 0.
    let tiny = Holds {
        ramp: [("web/b3".to_string(), 1)].into(),
        ..Holds::default()
    };
    assert_eq!(tiny.apply(&config).vips[0].backends[3].weight, 1);
}
