//! A VIP's plan: its table, and per backend what changes (weights, shares, flows moving).

use std::collections::BTreeMap;

use crate::{
    config::Vip,
    table::{TableError, Weighted},
};

use super::{Change, Health, NamedTable, Row, TableBuilder, VipPlan, rules::is_healthy};

pub(super) fn build(
    vip: &Vip,
    size: u32,
    builder: &dyn TableBuilder,
) -> Result<NamedTable, TableError> {
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

pub(super) fn diff(
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

pub(super) fn removed(old: &Vip, size: u32, builder: &dyn TableBuilder) -> VipPlan {
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
