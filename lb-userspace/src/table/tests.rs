//! Property tests of the table builder: proportionality, zero weights, minimal
//! disruption, determinism.

use proptest::prelude::*;

use super::*;

const M: u32 = lb_common::maps::DEFAULT_TABLE_SIZE;

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("backend-{i}")).collect()
}

fn input<'a>(names: &'a [String], weights: &[u32]) -> Vec<Weighted<'a>> {
    names
        .iter()
        .zip(weights)
        .map(|(name, &weight)| Weighted { name, weight })
        .collect()
}

/// Largest |slot share - weight share| over the backends, in percentage points.
fn worst_share_error(weights: &[u32], table: &Table) -> f64 {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    table
        .slot_counts()
        .iter()
        .zip(weights)
        .map(|(&c, &w)| {
            (f64::from(c) / f64::from(table.size()) - w as f64 / total as f64).abs() * 100.0
        })
        .fold(0.0, f64::max)
}

/// The fewest slots any table could move between these slot counts: every slot a
/// backend loses must move, and nothing else has to.
fn minimum_moves(old: &[u32], new: &[u32]) -> u32 {
    old.iter()
        .zip(new)
        .map(|(&a, &b)| a.saturating_sub(b))
        .sum()
}

#[test]
fn rejects_sizes_that_are_not_prime_or_out_of_range() {
    let n = names(2);
    let w = input(&n, &[1, 1]);
    assert_eq!(
        build(&w, 65536),
        Err(TableError::SizeNotPrime { size: 65536 })
    );
    assert!(matches!(
        build(&w, 7),
        Err(TableError::SizeOutOfRange { .. })
    ));
}

#[test]
fn rejects_all_zero_and_duplicates() {
    let n = names(3);
    assert_eq!(build(&input(&n, &[0, 0, 0]), M), Err(TableError::NoWeight));
    assert_eq!(build(&[], M), Err(TableError::NoWeight));
    let dup = [
        Weighted {
            name: "a",
            weight: 1,
        },
        Weighted {
            name: "a",
            weight: 2,
        },
    ];
    assert_eq!(
        build(&dup, M),
        Err(TableError::DuplicateName { name: "a".into() })
    );
}

#[test]
fn known_table_is_stable() {
    // Hosts behind one ECMP group must build byte-identical tables, also across
    // releases: a change here is a fleet-wide re-shuffle and needs a migration note.
    let n = names(3);
    let t = build(&input(&n, &[1, 2, 3]), 257).unwrap();
    assert_eq!(t.slot_counts(), vec![43, 86, 128]);
    assert_eq!(&t.slots()[..12], &[2, 0, 2, 2, 1, 2, 2, 0, 1, 2, 2, 2]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn shares_track_weights_within_half_a_point(
        weights in prop::collection::vec(1u32..1000, 1..1000),
    ) {
        let n = names(weights.len());
        let table = build(&input(&n, &weights), M).unwrap();
        // The requirement is 0.5 points; the builder's soft cap guarantees 0.3.
        let err = worst_share_error(&weights, &table);
        prop_assert!(err <= 0.3 + 100.0 / f64::from(M), "worst share error {err:.3} pp");
    }

    #[test]
    fn zero_weight_gets_no_slots(
        weights in prop::collection::vec(0u32..5, 2..50),
    ) {
        prop_assume!(weights.iter().any(|&w| w > 0));
        let n = names(weights.len());
        let table = build(&input(&n, &weights), M).unwrap();
        for (count, w) in table.slot_counts().iter().zip(&weights) {
            prop_assert_eq!(*count == 0, *w == 0);
        }
    }

    #[test]
    fn same_input_in_any_order_gives_the_same_table(
        weights in prop::collection::vec(0u32..100, 1..100),
        rotate in 0usize..100,
    ) {
        prop_assume!(weights.iter().any(|&w| w > 0));
        let n = names(weights.len());
        let a = input(&n, &weights);
        let mut b = a.clone();
        b.rotate_left(rotate % a.len());
        let ta = build(&a, M).unwrap();
        let tb = build(&b, M).unwrap();
        prop_assert_eq!(&ta, &build(&a, M).unwrap());
        let owners_a: Vec<&str> = ta.slots().iter().map(|&i| a[i as usize].name).collect();
        let owners_b: Vec<&str> = tb.slots().iter().map(|&i| b[i as usize].name).collect();
        prop_assert_eq!(owners_a, owners_b);
    }

    #[test]
    fn changing_one_weight_moves_close_to_the_minimum(
        weights in prop::collection::vec(10u32..100, 3..200),
        which in 0usize..200,
        percent in 50u32..150,
    ) {
        let n = names(weights.len());
        let which = which % weights.len();
        let mut changed = weights.clone();
        changed[which] = (weights[which] * percent / 100).max(1);
        let old = build(&input(&n, &weights), M).unwrap();
        let new = build(&input(&n, &changed), M).unwrap();
        // The bound holds between tables of the soft-capped race; the exact-cap fallback
        // has its own test below.
        prop_assume!(!old.exact_caps() && !new.exact_caps());
        let names: Vec<&str> = n.iter().map(String::as_str).collect();
        let moved = slots_moved(&old, &names, &new, &names);
        let min = minimum_moves(&old.slot_counts(), &new.slot_counts());
        prop_assert!(
            f64::from(moved) <= 1.2 * f64::from(min) + 0.002 * f64::from(M),
            "moved {moved} slots, minimum {min}"
        );
    }

    #[test]
    fn changing_one_of_few_heavy_backends_moves_close_to_the_minimum(
        weights in prop::collection::vec(1u32..10, 2..5),
        which in 0usize..5,
        step in 1u32..3,
    ) {
        let n = names(weights.len());
        let which = which % weights.len();
        let mut changed = weights.clone();
        changed[which] += step;
        let old = build(&input(&n, &weights), M).unwrap();
        let new = build(&input(&n, &changed), M).unwrap();
        let names: Vec<&str> = n.iter().map(String::as_str).collect();
        let moved = slots_moved(&old, &names, &new, &names);
        let min = minimum_moves(&old.slot_counts(), &new.slot_counts());
        prop_assert!(
            f64::from(moved) <= 1.2 * f64::from(min) + 0.002 * f64::from(M),
            "moved {moved} slots, minimum {min}"
        );
    }

    #[test]
    fn removing_one_backend_moves_close_to_the_minimum(
        weights in prop::collection::vec(10u32..100, 3..200),
        which in 0usize..200,
    ) {
        let n = names(weights.len());
        let which = which % weights.len();
        let mut removed = weights.clone();
        removed[which] = 0;
        let old = build(&input(&n, &weights), M).unwrap();
        let new = build(&input(&n, &removed), M).unwrap();
        prop_assume!(!old.exact_caps() && !new.exact_caps());
        let names: Vec<&str> = n.iter().map(String::as_str).collect();
        let moved = slots_moved(&old, &names, &new, &names);
        let min = minimum_moves(&old.slot_counts(), &new.slot_counts());
        prop_assert!(
            f64::from(moved) <= 1.2 * f64::from(min) + 0.002 * f64::from(M),
            "moved {moved} slots, minimum {min}"
        );
    }
}
#[test]
fn deterministic_ln_matches_libm() {
    for x in [1.0, 1.5, 2.0, 3.0, 10.0, 65537.0, 1e6] {
        let got = ln_deterministic(x);
        assert!((got - f64::ln(x)).abs() < 1e-14, "ln({x}) = {got}");
    }
}

#[test]
fn known_full_size_tables_are_stable() {
    // The same guarantee as above at the default size, over shapes that take every path
    // of the builder: caps that never bind (many backends), a soft cap that binds (a few
    // heavy ones), and the exact-cap rebuild (the 11-backend case). The value is FNV-1a
    // over the slots.
    let fnv = |t: &Table| {
        t.slots().iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &s| {
            (h ^ u64::from(s)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    let cases: Vec<(Vec<u32>, u64)> = vec![
        (vec![1, 1], 0xdec4_4412_9d16_dcdd),
        (vec![1, 2, 3], 0x27de_a5d6_69f5_4e8e),
        (vec![1000, 1], 0x4684_7d16_ecfd_85a6),
        (vec![5, 5, 5, 1], 0xb64b_5d17_ae7b_880a),
        ((0..100).map(|i| 1 + i % 7).collect(), 0x7eae_99fa_a6b3_690d),
        (
            (0..1000).map(|i| 1 + i % 3).collect(),
            0x6138_a85b_00b4_5719,
        ),
        (vec![1, 3, 2, 2, 1, 1, 4, 1, 4, 3, 4], 0xff37_65ce_b745_1ce6),
    ];
    for (weights, want) in cases {
        let n = names(weights.len());
        let t = build(&input(&n, &weights), M).unwrap();
        assert_eq!(fnv(&t), want, "weights {weights:?}");
    }
}

/// The exact-cap fallback, on the case the property above found: 70 backends of weights
/// 10..100, one cut to 85 %. Both builds leave a backend more than the tolerance short
/// in the soft race, so both tables come from the exact-cap race; shares stay within
/// the tolerance, but the change moves about twice the minimum.
#[test]
fn exact_cap_tables_keep_shares_but_move_more() {
    let weights: Vec<u32> = vec![
        77, 85, 68, 16, 60, 53, 15, 27, 30, 16, 96, 63, 55, 72, 72, 49, 99, 49, 25, 38, 63, 70, 59,
        88, 56, 21, 78, 23, 13, 80, 87, 15, 83, 69, 29, 16, 68, 15, 30, 22, 94, 90, 80, 18, 73, 15,
        16, 94, 72, 78, 49, 23, 83, 46, 83, 15, 15, 32, 30, 14, 99, 48, 39, 41, 33, 87, 45, 27, 11,
        20,
    ];
    let mut changed = weights.clone();
    changed[30] = weights[30] * 85 / 100;
    let n = names(weights.len());
    let old = build(&input(&n, &weights), M).unwrap();
    let new = build(&input(&n, &changed), M).unwrap();
    assert!(old.exact_caps() && new.exact_caps());
    assert!(worst_share_error(&weights, &old) <= 0.3);
    assert!(worst_share_error(&changed, &new) <= 0.3);
    let names: Vec<&str> = n.iter().map(String::as_str).collect();
    let moved = slots_moved(&old, &names, &new, &names);
    let min = minimum_moves(&old.slot_counts(), &new.slot_counts());
    assert_eq!((moved, min), (522, 255));
}
