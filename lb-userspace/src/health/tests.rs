use super::*;

fn check(rise: u32, fall: u32) -> BTreeMap<String, HealthCheck> {
    let c = HealthCheck {
        rise,
        fall,
        ..HealthCheck::tcp(80)
    };
    [("web".to_string(), c)].into()
}

fn round(ok: &[(&str, bool)]) -> Probes {
    ok.iter()
        .map(|&(b, ok)| {
            let r = if ok {
                Ok(Duration::from_millis(1))
            } else {
                Err("connect: connection refused".to_string())
            };
            (("web".to_string(), b.to_string()), r)
        })
        .collect()
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[test]
fn fall_failures_in_a_row_take_a_backend_down_and_rise_bring_it_back() {
    let checks = check(2, 3);
    let mut t = Tracker::default();
    // Unprobed counts as up: nothing in the map.
    assert!(t.health().is_empty());
    // Two failures, a success, then three failures: only the third in a row counts.
    for (i, ok) in [false, false, true, false, false].into_iter().enumerate() {
        assert!(
            t.observe(&checks, &round(&[("b1", ok)]), secs(i as u64))
                .is_empty()
        );
    }
    let down = t.observe(&checks, &round(&[("b1", false)]), secs(5));
    assert_eq!(down.len(), 1);
    assert!(!down[0].up);
    assert_eq!(down[0].why, "3 failed probes: connect: connection refused");
    assert!(!t.health()[&("web".into(), "b1".into())]);
    assert_eq!(t.down().collect::<Vec<_>>(), ["web/b1"]);
    assert!(
        t.observe(&checks, &round(&[("b1", true)]), secs(6))
            .is_empty()
    );
    let up = t.observe(&checks, &round(&[("b1", true)]), secs(7));
    assert_eq!(
        (up.len(), up[0].up, up[0].why.as_str()),
        (1, true, "2 good probes")
    );
}

#[test]
fn backends_held_down_start_down() {
    let checks = check(2, 3);
    let mut t = Tracker::starting_down(&["web/b1".to_string()]);
    assert!(!t.health()[&("web".into(), "b1".into())]);
    // A failure keeps it down without a transition; two good probes bring it back.
    assert!(
        t.observe(&checks, &round(&[("b1", false)]), secs(0))
            .is_empty()
    );
    assert!(
        t.observe(&checks, &round(&[("b1", true)]), secs(1))
            .is_empty()
    );
    assert_eq!(
        t.observe(&checks, &round(&[("b1", true)]), secs(2)).len(),
        1
    );
}

#[test]
fn a_flapping_backend_needs_ever_longer_good_runs_to_come_back() {
    let checks = check(2, 1);
    let mut t = Tracker::default();
    let now = std::cell::Cell::new(0);
    let step = |t: &mut Tracker, ok: bool| {
        now.set(now.get() + 1);
        t.observe(&checks, &round(&[("b1", ok)]), secs(now.get()))
    };
    let mut needed = Vec::new();
    for _ in 0..5 {
        assert_eq!(step(&mut t, false).len(), 1, "down at once");
        let mut good = 0;
        loop {
            good += 1;
            if !step(&mut t, true).is_empty() {
                break;
            }
        }
        needed.push(good);
    }
    assert_eq!(needed, [2, 4, 8, 16, 32]);
    // Once the downs are older than the window, rise is back to normal.
    now.set(now.get() + FLAP_WINDOW.as_secs());
    assert_eq!(step(&mut t, false).len(), 1);
    assert!(step(&mut t, true).is_empty());
    assert_eq!(step(&mut t, true).len(), 1);
}

#[test]
fn damping_is_capped() {
    let b = BackendHealth {
        downs: (0..20).map(secs).collect(),
        ..BackendHealth::new(false)
    };
    let c = HealthCheck::tcp(80);
    assert_eq!(b.rise_needed(&c, secs(20)), 2 * MAX_DAMPING);
}

#[test]
fn backends_no_longer_probed_are_forgotten() {
    let checks = check(1, 1);
    let mut t = Tracker::default();
    t.observe(&checks, &round(&[("b1", false), ("b2", true)]), secs(0));
    assert_eq!(t.health().len(), 2);
    t.observe(&checks, &round(&[("b2", true)]), secs(1));
    assert_eq!(t.health().len(), 1);
    t.observe(&BTreeMap::new(), &Probes::new(), secs(2));
    assert!(t.health().is_empty());
}

#[test]
fn up_is_confirmed_only_by_a_probe_that_agrees_or_a_change() {
    let checks = check(2, 3);
    let mut t = Tracker::default();
    let confirmed = |t: &Tracker, b: &str| t.backend("web", b).map(|h| (h.up, h.confirmed));
    // The start assumes up; a failed probe (not yet `fall`) leaves that unconfirmed.
    t.observe(&checks, &round(&[("b1", false), ("b2", true)]), secs(0));
    assert_eq!(confirmed(&t, "b1"), Some((true, false)));
    assert_eq!(confirmed(&t, "b2"), Some((true, true)));
    // Going down is a verdict; later failures before a rise do not undo it.
    t.observe(&checks, &round(&[("b1", false), ("b2", false)]), secs(1));
    t.observe(&checks, &round(&[("b1", false), ("b2", true)]), secs(2));
    assert_eq!(confirmed(&t, "b1"), Some((false, true)));
    assert_eq!(
        confirmed(&t, "b2"),
        Some((true, true)),
        "one failure undoes nothing"
    );
}
