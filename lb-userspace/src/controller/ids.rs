//! Ids of VIPs and backends: kept across generations by name, new ones the lowest that
//! is free. Backend ids are reused only when no flow entry points at them (a walk of
//! `xlb_flows`), and the XDP program also checks that a flow's backend still belongs to
//! the flow's VIP.

use std::collections::BTreeSet;

use crate::{config::Config, history::Ids};

use super::ApplyError;

/// How many ids the maps hold: VIP ids `1..vips`, backend ids `1..backends`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub vips: u32,
    pub backends: u32,
}

/// Gives every VIP and backend of `config` an id below `cap`: kept from `old` where it
/// exists, else the lowest id that is free (`usable`). Pure, so the rules are testable
/// without BPF.
pub fn assign_ids(
    old: &Ids,
    config: &Config,
    cap: Capacity,
    mut usable: impl FnMut(u32) -> bool,
) -> Result<Ids, ApplyError> {
    let mut ids = Ids::default();
    let old_vip_ids: BTreeSet<u32> = old.vips.values().copied().collect();
    let old_be_ids: BTreeSet<u32> = old.backends.values().copied().collect();
    let mut next_vip = 1u32;
    let mut next_be = 1u32;
    for vip in &config.vips {
        let id = match old.vips.get(&vip.name) {
            Some(&id) => id,
            None => {
                while old_vip_ids.contains(&next_vip) || ids.vips.values().any(|&v| v == next_vip) {
                    next_vip += 1;
                }
                if next_vip >= cap.vips {
                    return Err(ApplyError::NoFreeId {
                        what: "VIP",
                        key: "max_vips",
                        capacity: cap.vips,
                    });
                }
                next_vip
            }
        };
        ids.vips.insert(vip.name.clone(), id);
    }
    let taken: BTreeSet<u32> = config
        .vips
        .iter()
        .flat_map(|v| {
            v.backends
                .iter()
                .filter_map(|b| old.backend(&v.name, &b.name))
        })
        .collect();
    for vip in &config.vips {
        for b in &vip.backends {
            let id = match old.backend(&vip.name, &b.name) {
                Some(id) => id,
                None => loop {
                    if next_be >= cap.backends {
                        return Err(ApplyError::NoFreeId {
                            what: "backend",
                            key: "max_backends",
                            capacity: cap.backends,
                        });
                    }
                    let id = next_be;
                    next_be += 1;
                    // Not one this apply keeps or retires, and not one a flow points at.
                    if !taken.contains(&id) && !old_be_ids.contains(&id) && usable(id) {
                        break id;
                    }
                },
            };
            ids.backends
                .insert(Ids::backend_key(&vip.name, &b.name), id);
        }
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Vip;

    const CAP: Capacity = Capacity {
        vips: 16,
        backends: 8,
    };

    fn cfg(vips: &[(&str, &[&str])]) -> Config {
        Config {
            vips: vips
                .iter()
                .enumerate()
                .map(|(i, (name, backends))| {
                    let weighted: Vec<(&str, i64)> = backends.iter().map(|b| (*b, 1)).collect();
                    Vip {
                        address: format!("198.18.0.{}", 100 + i),
                        ..crate::config::fixture::vip(name, &weighted)
                    }
                })
                .collect(),
            ..Config::default()
        }
    }

    #[test]
    fn ids_are_kept_and_never_reused_within_an_apply() {
        let a = assign_ids(&Ids::default(), &cfg(&[("web", &["a", "b"])]), CAP, |_| {
            true
        })
        .unwrap();
        assert_eq!(a.vips["web"], 1);
        assert_eq!(
            (a.backend("web", "a"), a.backend("web", "b")),
            (Some(1), Some(2))
        );
        // b leaves and c arrives: c must not take b's id in the same apply.
        let b = assign_ids(&a, &cfg(&[("web", &["a", "c"])]), CAP, |_| true).unwrap();
        assert_eq!(
            (b.backend("web", "a"), b.backend("web", "c")),
            (Some(1), Some(3))
        );
        // Later, b's id 2 is free again unless a flow still points at it.
        let c = assign_ids(&b, &cfg(&[("web", &["a", "c", "d"])]), CAP, |id| id != 2).unwrap();
        assert_eq!(c.backend("web", "d"), Some(4));
        let d = assign_ids(&b, &cfg(&[("web", &["a", "c", "d"])]), CAP, |_| true).unwrap();
        assert_eq!(d.backend("web", "d"), Some(2));
        // A second VIP gets the next VIP id; same backend names are different backends.
        let e = assign_ids(&d, &cfg(&[("web", &["a"]), ("api", &["a"])]), CAP, |_| true).unwrap();
        assert_eq!(e.vips["api"], 2);
        assert_ne!(e.backend("api", "a"), e.backend("web", "a"));
    }

    #[test]
    fn running_out_of_ids_is_an_error() {
        let names = ["a", "b", "c", "d", "e", "f", "g"];
        let full = assign_ids(&Ids::default(), &cfg(&[("web", &names)]), CAP, |_| true).unwrap();
        assert_eq!(full.backend("web", "g"), Some(7));
        // Id 8 would be the map's ninth entry.
        let more = [&names[..], &["h"]].concat();
        let err = assign_ids(&full, &cfg(&[("web", &more)]), CAP, |_| true).unwrap_err();
        assert!(matches!(
            err,
            ApplyError::NoFreeId {
                key: "max_backends",
                capacity: 8,
                ..
            }
        ));
    }
}
