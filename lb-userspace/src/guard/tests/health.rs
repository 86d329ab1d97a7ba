//! The health-aware rules: `healthy-quorum` counts weighted backends, a drain of a down
//! backend passes `max-backend-share`, and more share for a down backend is refused.

use super::*;

#[test]
fn healthy_quorum_counts_weighted_backends() {
    let mut v = vip("web", &[1, 1, 1, 0]);
    v.health = Some(config::HealthCheck::tcp(8080));
    let c = config(vec![v]);
    let mut health = Health::new();
    for b in ["b0", "b1", "b3"] {
        health.insert(("web".into(), b.into()), false);
    }
    let p = plan(&c, None, &health, &Maglev);
    assert_eq!(rules(&p), vec![(Rule::HealthyQuorum, None)]);
    assert!((p.violations[0].measured.unwrap() - 1.0 / 3.0).abs() < 1e-9);
    assert_eq!(p.vip("web").unwrap().rows[0].healthy, Some(false));
    health.insert(("web".into(), "b1".into()), true);
    assert!(plan(&c, None, &health, &Maglev).violations.is_empty());
}

/// VIP web with TCP checks and `weights`, and health with `down` backends down.
fn checked(weights: &[i64], down: &[&str]) -> (Config, Health) {
    let mut v = vip("web", weights);
    v.health = Some(config::HealthCheck::tcp(8080));
    let health = down
        .iter()
        .map(|b| (("web".to_string(), b.to_string()), false))
        .collect();
    (config(vec![v]), health)
}

fn with_weights(c: &Config, weights: &[i64]) -> Config {
    let mut c = c.clone();
    for (b, &w) in c.vips[0].backends.iter_mut().zip(weights) {
        b.weight = w;
    }
    c
}

#[test]
fn draining_a_down_backend_is_not_blocked_by_max_backend_share() {
    // b2 is down; draining it gives b0 two thirds of the table, over the 50% limit.
    let (running, health) = checked(&[2, 1, 1], &["b2"]);
    let drained = with_weights(&running, &[2, 1, 0]);
    let p = plan(&drained, Some(&running), &health, &Maglev);
    assert!(p.blocking(false, true).is_empty(), "{:#?}", p.violations);
    // The same move away from a healthy backend is still blocked.
    let healthy = plan(&drained, Some(&running), &Health::new(), &Maglev);
    assert_eq!(rules(&healthy), vec![(Rule::MaxBackendShare, Some("b0"))]);
    assert!(
        healthy.violations[0]
            .hint
            .contains("from down backends to up ones")
    );
    // And so is a move that also takes share from a healthy backend.
    let mixed = with_weights(&running, &[2, 0, 0]);
    let p = plan(&mixed, Some(&running), &health, &Maglev);
    assert!(
        rules(&p).contains(&(Rule::MaxBackendShare, Some("b0"))),
        "{:#?}",
        p.violations
    );
}

#[test]
fn healthy_quorum_blocks_only_a_change_that_lowers_the_healthy_fraction() {
    // 1 of 3 weighted backends healthy, below the 50% quorum.
    let (running, health) = checked(&[1, 1, 1], &["b1", "b2"]);
    // Weight moved to the healthy backend: still 1 of 3, not lower: allowed.
    let towards_healthy = with_weights(&running, &[2, 1, 1]);
    let p = plan(&towards_healthy, Some(&running), &health, &Maglev);
    assert!(
        !rules(&p).contains(&(Rule::HealthyQuorum, None)),
        "{:#?}",
        p.violations
    );
    // Draining a down backend raises it to 1 of 2: allowed.
    let p = plan(
        &with_weights(&running, &[1, 1, 0]),
        Some(&running),
        &health,
        &Maglev,
    );
    assert!(
        !rules(&p).contains(&(Rule::HealthyQuorum, None)),
        "{:#?}",
        p.violations
    );
    // Draining the healthy one lowers it to 0 of 2: blocked.
    let p = plan(
        &with_weights(&running, &[0, 1, 1]),
        Some(&running),
        &health,
        &Maglev,
    );
    assert!(
        rules(&p).contains(&(Rule::HealthyQuorum, None)),
        "{:#?}",
        p.violations
    );
}

#[test]
fn more_share_to_a_down_backend_is_refused() {
    let (running, health) = checked(&[1, 1, 1], &["b2"]);
    let p = plan(
        &with_weights(&running, &[2, 2, 3]),
        Some(&running),
        &health,
        &Maglev,
    );
    assert_eq!(rules(&p), vec![(Rule::DownBackend, Some("b2"))]);
    let v = &p.violations[0];
    assert!(v.message.contains("is down"), "{}", v.message);
    assert!(v.rule.forceable());
    assert!(p.blocking(true, true).is_empty());
    // Less share to it (or none) is fine.
    let p = plan(
        &with_weights(&running, &[1, 1, 0]),
        Some(&running),
        &health,
        &Maglev,
    );
    assert!(p.violations.is_empty(), "{:#?}", p.violations);
}

#[test]
fn draining_one_of_two_down_backends_gives_the_other_nothing() {
    // b2 and b3 are down in each case; `rules_after(running, new)` plans the change.
    let rules_after = |running: &[i64], new: &[i64]| {
        let (running, health) = checked(running, &["b2", "b3"]);
        let p = plan(
            &with_weights(&running, new),
            Some(&running),
            &health,
            &Maglev,
        );
        rules(&p)
            .into_iter()
            .map(|(r, b)| (r, b.map(str::to_string)))
            .collect::<Vec<_>>()
    };
    let b2 = Some("b2".to_string());
    // Draining b3 raises b2's share of the weights (1/4 to 1/3) only because b3's goes:
    // not a down-backend violation.
    assert_eq!(rules_after(&[1, 1, 1, 1], &[1, 1, 1, 0]), []);
    // With weights that put b0 over the limit once b3 goes, the relief still holds.
    assert_eq!(rules_after(&[3, 1, 1, 1], &[3, 1, 1, 0]), []);
    // But the down b2's own share over the limit counts: it gets it when it returns.
    assert_eq!(
        rules_after(&[1, 1, 3, 3], &[1, 1, 3, 0]),
        [(Rule::MaxBackendShare, b2.clone())]
    );
    // Raising b2's weight while draining b3 gives b2 more: refused.
    assert_eq!(
        rules_after(&[1, 1, 1, 1], &[1, 1, 2, 0]),
        [(Rule::DownBackend, b2.clone())]
    );
    // Draining a healthy backend gives the down ones its share: refused.
    let r = rules_after(&[1, 1, 1, 1], &[0, 1, 1, 1]);
    assert!(r.contains(&(Rule::DownBackend, b2)), "{r:?}");
}
