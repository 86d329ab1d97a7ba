//! A map write that fails in the middle of an apply changes nothing: the controller puts
//! the previous generation back. The failure is real, not simulated: `xlb_vips` is filled
//! to capacity behind the controller's back, so adding a VIP fails with E2BIG after the
//! new backends and the new VIP's table have already been written. Both cases: a failed
//! first apply (back to nothing) and a failed later one (back to the committed generation).

#![cfg(test)]

use std::collections::BTreeMap;

use lb_common::{Backend, FAMILY_V4, PROTO_TCP, VipInfo, VipKey};
use xlb::{
    config::{BackendSpec, Config, Forwarding, Protocol, Vip},
    controller::{ApplyError, Controller, Request},
    dataplane::{Dataplane, LoadOptions, Maps},
    history::{History, Source},
};
use xlb_lab::{PinDir, require_root};

fn vip(name: &str, address: &str, first_mac: u8) -> Vip {
    Vip {
        name: name.into(),
        address: address.into(),
        port: 80,
        protocol: Protocol::Tcp,
        forwarding: Forwarding::L2Dsr,
        icmp_echo: true,
        guardrails: Default::default(),
        health: None,
        backends: (0..3)
            .map(|i| BackendSpec {
                name: format!("b{i}"),
                address: format!("198.18.0.{}", first_mac + i),
                mac: format!("02:00:00:00:00:{:02x}", first_mac + i),
                weight: 1,
                line: None,
            })
            .collect(),
        line: None,
    }
}

fn request(config: Config) -> Request {
    Request {
        config,
        source: Source::File {
            file: "test.toml".into(),
        },
        user: "test".into(),
        force: false,
        reason: None,
        dry_run: false,
    }
}

/// Everything a packet can observe: VIP keys, live backends, and each VIP's non-empty
/// table (a retired table is an empty one: no packet can select from it).
#[derive(PartialEq)]
struct Snapshot {
    vips: Vec<(VipKey, VipInfo)>,
    live: BTreeMap<u32, Backend>,
    tables: BTreeMap<u32, (u32, u32, Vec<u32>)>,
}

fn snapshot(maps: &Maps) -> Snapshot {
    let mut vips = maps.vips();
    vips.sort_by_key(|(k, _)| (k.addr, k.port_be));
    let live = (1..maps.capacity().backends)
        .filter_map(|id| Some((id, maps.backend(id).ok().filter(Backend::is_live)?)))
        .collect();
    let tables = (1..8)
        .filter_map(|id| Some((id, maps.table(id).ok().filter(|t| t.0 > 0)?)))
        .collect();
    Snapshot { vips, live, tables }
}

impl std::fmt::Debug for Snapshot {
    /// Tables as (vip id, size, generation): the slots are too many to print.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tables: Vec<_> = self.tables.iter().map(|(id, t)| (id, t.0, t.1)).collect();
        f.debug_struct("Snapshot")
            .field("vips", &self.vips)
            .field("live", &self.live)
            .field("tables", &tables)
            .finish()
    }
}

/// Writes `n` VIP keys that no config names, all pointing at `vip_id`.
fn fill_vips(maps: &mut Maps, n: u32, vip_id: u32) {
    for i in 0..n {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[198, 19, (i >> 8) as u8, i as u8]);
        let key = VipKey {
            addr,
            port_be: 80u16.to_be(),
            proto: PROTO_TCP,
            family: FAMILY_V4,
        };
        let info = VipInfo {
            vip_id,
            forwarding: lb_common::FWD_L2_DSR,
        };
        maps.put_vip(&key, &info, 0).unwrap();
    }
}

#[test]
fn a_map_write_failing_mid_apply_restores_the_previous_generation() {
    if !require_root("a_map_write_failing_mid_apply_restores_the_previous_generation") {
        return;
    }
    let pins = PinDir::new("fail");
    let state = tempfile::tempdir().unwrap();
    let opts = LoadOptions {
        pin_dir: pins.path().to_path_buf(),
        flow_capacity: 4096,
        ..LoadOptions::default()
    };
    let mut ctl = Controller::new(
        Dataplane::load(&opts).unwrap().into_maps(),
        History::open(state.path()).unwrap(),
        // No neighbour lookups here: every MAC is explicit.
        Box::new(|_, _| BTreeMap::new()),
    )
    .unwrap();
    let mut intruder = Dataplane::load(&opts).unwrap().into_maps();
    let empty = snapshot(ctl.maps());
    let mut one = Config::default();
    one.daemon.table_size = 4099;
    one.vips.push(vip("web", "198.18.0.100", 0x10));

    // The very first apply fails: the maps go back to holding nothing.
    fill_vips(&mut intruder, lb_common::maps::MAX_VIPS, 1);
    let err = ctl.apply(request(one.clone())).unwrap_err();
    assert!(matches!(err, ApplyError::Restored(_)), "got: {err}");
    assert_eq!(
        snapshot(ctl.maps()),
        empty,
        "maps after a failed first apply"
    );
    assert!(ctl.history().generations().unwrap().is_empty());
    assert!(ctl.current().is_none());

    let first = ctl.apply(request(one.clone())).unwrap().generation.unwrap();
    let before = snapshot(ctl.maps());
    assert_eq!(before.vips.len(), 1);
    assert_eq!(before.live.len(), 3);

    // Fill xlb_vips to its capacity with keys the controller does not know.
    fill_vips(
        &mut intruder,
        lb_common::maps::MAX_VIPS - 1,
        before.vips[0].1.vip_id,
    );
    let mut two = one.clone();
    two.vips.push(vip("api", "198.18.0.101", 0x20));
    let err = ctl.apply(request(two.clone())).unwrap_err();
    let ApplyError::Restored(error) = &err else {
        panic!("expected a failed write and a restore, got: {err}");
    };
    assert!(
        error.contains("xlb_vips"),
        "the failing map is named: {error}"
    );
    // The restore writes exactly the committed generation, so the foreign keys are gone
    // too, and what was written for "api" (its backends, its table) is retired.
    assert_eq!(snapshot(ctl.maps()), before, "maps after a failed apply");
    assert_eq!(ctl.history().generations().unwrap(), vec![first]);
    assert_eq!(ctl.current().unwrap().generation, first);

    // With room in the map, the same change goes through.
    let second = ctl.apply(request(two)).unwrap().generation.unwrap();
    assert_eq!(second, first + 1);
    let after = snapshot(ctl.maps());
    assert_eq!(after.vips.len(), 2);
    assert_eq!(after.live.len(), 6);
}
