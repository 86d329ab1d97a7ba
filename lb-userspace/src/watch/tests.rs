use super::*;
use crate::controller::BackendStatsView;

fn backend(name: &str, id: u32, share: f64, new_flows: u64) -> BackendStatsView {
    BackendStatsView {
        backend: name.into(),
        id,
        address: "198.18.0.11".into(),
        mac: None,
        mac_source: "config".into(),
        weight: 1,
        effective_weight: 1,
        held: None,
        table_share: share,
        healthy: None,
        confirmed: None,
        last_probe: None,
        packets: new_flows,
        bytes: 0,
        new_flows,
    }
}

/// VIP web with backends a and b at table shares 0.5/0.5 and these flow counts.
fn web(a: u64, b: u64, packets: u64, drops: u64) -> Vec<VipStatsView> {
    vec![VipStatsView {
        vip: "web".into(),
        label: "web".into(),
        id: 1,
        generation: 1,
        packets,
        bytes: 0,
        new_flows: a + b,
        drops,
        stateful: 0,
        checked: true,
        panic: None,
        backends: vec![backend("a", 1, 0.5, a), backend("b", 2, 0.5, b)],
    }]
}

fn expect() -> Expect {
    Expect {
        vips: vec!["web".into()],
        gained: vec![("web".into(), "a".into())],
    }
}

#[test]
fn too_few_flows_give_no_share() {
    let o = observed(&web(0, 0, 0, 0), &web(60, 30, 90, 0));
    assert_eq!(o["web"].flows, 90);
    assert!(o["web"].shares.is_empty());
    assert_eq!(o["web"].drift(), None);
    // The same skew with enough flows is measured.
    let o = observed(&web(0, 0, 0, 0), &web(600, 300, 900, 0));
    assert!((o["web"].drift().unwrap() - (600.0 / 900.0 - 0.5)).abs() < 1e-9);
}

#[test]
fn the_bound_narrows_with_more_flows() {
    assert!(tolerance(0.5, 100) > 0.2 && tolerance(0.5, 100) < 0.23);
    assert!(tolerance(0.5, 10_000) < 0.041);
    assert_eq!(tolerance(0.0, 100), SLACK);
}

#[test]
fn shares_within_the_bound_pass_and_outside_breach() {
    let h = Health::new();
    let start = web(1000, 1000, 2000, 0);
    // 520 of 1000 (bound about 14.6 points at n = 1000): noise.
    assert_eq!(
        breach(&expect(), &start, &web(1520, 1480, 3000, 0), &h),
        None
    );
    // 800 of 1000: not noise.
    let b = breach(&expect(), &start, &web(1800, 1200, 3000, 0), &h).unwrap();
    assert!(b.contains("backend a got 80.0% of 1000 new flows"), "{b}");
    // Fewer than MIN_FLOWS: no share verdict at all.
    assert_eq!(
        breach(&expect(), &start, &web(1050, 1000, 2050, 0), &h),
        None
    );
}

#[test]
fn a_gainer_that_is_down_breaches_at_once() {
    let mut h = Health::new();
    h.insert(("web".into(), "b".into()), false);
    let start = web(0, 0, 0, 0);
    // b lost share: its being down is not this change's doing.
    assert_eq!(breach(&expect(), &start, &start, &h), None);
    h.insert(("web".into(), "a".into()), false);
    let b = breach(&expect(), &start, &start, &h).unwrap();
    assert!(b.contains("backend a gained share and is down"), "{b}");
}

#[test]
fn drops_breach_above_the_limit() {
    let h = Health::new();
    let start = web(0, 0, 0, 0);
    // 9 drops: under MIN_DROPS.
    assert_eq!(breach(&expect(), &start, &web(0, 0, 10, 9), &h), None);
    // 10 of 10000: 0.1%, under the limit.
    assert_eq!(breach(&expect(), &start, &web(0, 0, 9990, 10), &h), None);
    let b = breach(&expect(), &start, &web(0, 0, 900, 100), &h).unwrap();
    assert!(b.contains("100 of 1000 packets dropped"), "{b}");
}

#[test]
fn a_reused_id_counts_from_zero() {
    let mut before = web(5000, 5000, 0, 0);
    before[0].backends[0].backend = "old".into();
    let o = observed(&before, &web(100, 5100, 0, 0));
    assert_eq!(o["web"].flows, 200);
}
