//! Section 5: table quality: share error and flows moved by the real table builder.

use xlb::table::{self, Weighted};

use crate::fail;

/// Section 5: table quality.
pub(crate) fn table_quality(md: &mut String, missed: &mut Vec<String>) {
    eprintln!("bench: table quality");
    push_line!(
        md,
        "## 5. Table quality\n\nMethod: the real table builder at 65537 slots, weights \
         1, 2, 3 repeating. Share error: the worst backend's |table share - weight share|. \
         Flows moved: the fraction of slots that change owner when backend 0's weight \
         grows by 10 % or backend 0 is removed; the minimum is the total variation \
         distance between the old and new weight shares (what must move). A ratio below 1 \
         means the table moved fewer slots than the weights asked for, which the share \
         error bounds: at 1000 backends a 10 % change of the smallest weight is 3 slots. \
         The last two columns divide by what the two tables' own shares differ by \
         instead: 1.00 means the builder moved no slot beyond what its new shares \
         required (\"-\": no share changed and no slot moved).\n\n\
         | backends | worst share error (points) | moved, +10 % weight (x minimum) | moved, removal (x minimum) | +10 % (x the tables' share change) | removal (x the tables' share change) |\n|---:|---:|---:|---:|---:|---:|"
    );
    let mut worst_err: f64 = 0.0;
    let mut worst_ratio: f64 = 0.0;
    let mut worst_at = 0;
    let mut worst_own: f64 = 0.0;
    for n in [3usize, 10, 100, 1000] {
        let names: Vec<String> = (0..n).map(|i| format!("b{i}")).collect();
        let weights: Vec<u32> = (0..n).map(|i| 10 * (1 + (i % 3) as u32)).collect();
        let build = |w: &[u32], skip: Option<usize>| -> Vec<Option<String>> {
            let input: Vec<Weighted> = names
                .iter()
                .zip(w)
                .enumerate()
                .filter(|(i, _)| Some(*i) != skip)
                .map(|(_, (name, &weight))| Weighted { name, weight })
                .collect();
            let t = table::build(&input, 65537).unwrap_or_else(|e| fail(format!("{e}")));
            t.slots()
                .iter()
                .map(|&i| Some(input[i as usize].name.to_string()))
                .collect()
        };
        let before = build(&weights, None);
        let total: u32 = weights.iter().sum();
        let err = names
            .iter()
            .zip(&weights)
            .map(|(name, &w)| {
                let got =
                    before.iter().filter(|o| o.as_deref() == Some(name)).count() as f64 / 65537.0;
                (got - f64::from(w) / f64::from(total)).abs()
            })
            .fold(0.0, f64::max);
        let moved = |after: &[Option<String>]| {
            before.iter().zip(after).filter(|(a, b)| a != b).count() as f64 / 65537.0
        };
        let share = |w: &[u32]| -> Vec<f64> {
            let t: u32 = w.iter().sum();
            w.iter().map(|&x| f64::from(x) / f64::from(t)).collect()
        };
        let tv = |a: &[f64], b: &[f64]| -> f64 {
            a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f64>() / 2.0
        };
        // What the tables' own shares changed by: the fewest slots any table with these
        // two sets of shares could move.
        let table_share = |t: &[Option<String>]| -> Vec<f64> {
            names
                .iter()
                .map(|name| t.iter().filter(|o| o.as_deref() == Some(name)).count() as f64)
                .map(|c| c / 65537.0)
                .collect()
        };
        let mut grown = weights.clone();
        grown[0] = weights[0] * 11 / 10;
        let min_grow = tv(&share(&weights), &share(&grown));
        let after_grow = build(&grown, None);
        let grow_ratio = moved(&after_grow) / min_grow;
        // "-" where the tables' shares did not change at all (nor did any slot move).
        let own = |after: &[Option<String>]| -> Option<f64> {
            let required = tv(&table_share(&before), &table_share(after));
            (required > 0.0).then(|| moved(after) / required)
        };
        let show = |r: Option<f64>| r.map_or_else(|| "-".to_string(), |r| format!("{r:.2}"));
        let own_grow = own(&after_grow);
        let mut removed = weights.clone();
        removed[0] = 0;
        let min_remove = tv(&share(&weights), &share(&removed));
        let after_remove = build(&weights, Some(0));
        let remove_ratio = moved(&after_remove) / min_remove;
        let own_remove = own(&after_remove);
        worst_own = [own_grow, own_remove]
            .into_iter()
            .flatten()
            .fold(worst_own, f64::max);
        worst_err = worst_err.max(err);
        if grow_ratio.max(remove_ratio) > worst_ratio {
            worst_ratio = grow_ratio.max(remove_ratio);
            worst_at = n;
        }
        push_line!(
            md,
            "| {n} | {:.3} | {grow_ratio:.2} | {remove_ratio:.2} | {} | {} |",
            err * 100.0,
            show(own_grow),
            show(own_remove)
        );
    }
    push_line!(
        md,
        "\nTargets: share error <= 0.5 points: worst {:.3}, {}; flows moved <= 1.2x the \
         minimum: worst {worst_ratio:.2}x, {}.\n",
        worst_err * 100.0,
        if worst_err <= 0.005 { "met" } else { "MISSED" },
        if worst_ratio <= 1.2 { "met" } else { "MISSED" }
    );
    if worst_err > 0.005 {
        missed.push(format!(
            "Share error (section 5): worst {:.3} points.",
            worst_err * 100.0
        ));
    }
    if worst_ratio > 1.2 {
        missed.push(format!(
            "Flows moved (section 5): {worst_ratio:.2}x the minimum at {worst_at} \
             backends. Measured against what the tables' own shares changed by, the \
             builder moved at most {worst_own:.2}x that; the rest is the difference \
             between table shares and weight shares (the share error, in slots), which \
             at a change of a few dozen slots is a large fraction of it."
        ));
    }
}
