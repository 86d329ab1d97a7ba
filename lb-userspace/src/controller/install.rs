//! Writing a generation into the maps, in an order that keeps every packet on one
//! complete generation, and the map keys it writes.
//!
//! Write order, and why:
//! 1. Backends first (live, with their VIP id): a table may only name backends that exist.
//! 2. Each changed VIP's table: a complete new inner map, switched in by one update of
//!    `xlb_rings`. Then the VIP key, so a new VIP never exists without its table.
//! 3. Removed VIPs: key first (no new packets), then the table.
//! 4. Backends that left: marked not live, so their flows re-home. This is safe only
//!    because step 2's `xlb_rings` update returns after the kernel's RCU grace period
//!    (`maybe_wait_bpf_programs` in kernel/bpf/syscall.c): no program still holds a
//!    table that names them.
//! 5. The history record (atomic rename). If writing it fails, the maps are put back to
//!    the previous generation, so a failed apply changes nothing.

use std::{collections::BTreeSet, net::IpAddr};

use lb_common::{
    ADDR_ICMP_ECHO, BACKEND_LIVE, Backend, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP, VipInfo,
    VipKey,
};

use crate::{
    config::{Config, Forwarding, Protocol, Vip},
    dataplane::TableWrite,
    guard::{self, Health, Maglev, Plan},
    history::{Ids, Record},
};

use super::{ApplyError, Controller};

pub(super) fn family(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { FAMILY_V4 } else { FAMILY_V6 }
}

pub(super) fn addr16(addr: IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match addr {
        IpAddr::V4(a) => out[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => out = a.octets(),
    }
    out
}

fn proto(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => PROTO_TCP,
        Protocol::Udp => PROTO_UDP,
    }
}

/// The `xlb_vips` key of a VIP that passed `structure`.
pub fn vip_key(vip: &Vip) -> Option<VipKey> {
    let addr: IpAddr = vip.address.parse().ok()?;
    Some(VipKey {
        addr: addr16(addr),
        port_be: vip.port.to_be(),
        proto: proto(vip.protocol),
        family: family(addr),
    })
}

/// The tables of `config` as they are installed (no running config, no health).
fn tables_of(config: &Config) -> Plan {
    guard::plan(config, None, &Health::new(), &Maglev)
}

impl Controller {
    /// Writes `record` with the tables of `install` and commits it; on any failure the
    /// previous generation is written back, so a failed commit changes nothing.
    pub(super) fn commit(&mut self, record: Record, install: Plan) -> Result<u64, ApplyError> {
        let previous = self.current.clone();
        let restore = |this: &mut Self, error: String| -> ApplyError {
            let (prev, prev_plan) = match (previous.clone(), this.current_plan.clone()) {
                (Some(prev), Some(plan)) => (prev, plan),
                // Nothing was committed before: write back "no VIPs, no live backends".
                _ => {
                    let mut none = record.clone();
                    none.config.vips.clear();
                    none.ids = Ids::default();
                    none.fingerprints.clear();
                    let plan = tables_of(&none.config);
                    (none, plan)
                }
            };
            match this.write(&prev, &prev_plan, Some(&record), true) {
                Ok(()) => ApplyError::Restored(error),
                Err(e) => ApplyError::RestoreFailed {
                    error,
                    restore: e.to_string(),
                },
            }
        };
        // The first generation on maps no record describes (a lost history, or pins from
        // another run) sweeps what it does not name, like a reconcile.
        let sweep = previous.is_none();
        if let Err(e) = self.write(&record, &install, previous.as_ref(), sweep) {
            return Err(restore(self, e.to_string()));
        }
        if let Err(e) = self.history.commit(&record) {
            return Err(restore(self, e.to_string()));
        }
        if let Some(previous) = &previous {
            self.zero_retired(previous, &record);
        }
        let generation = record.generation;
        self.running
            .send_replace(Some(std::sync::Arc::new(record.clone())));
        self.current = Some(record);
        self.current_plan = Some(install);
        Ok(generation)
    }

    /// Zeroes the counters of every id `previous` had and `record` no longer has, once
    /// `record` is committed: a later owner of the id starts from zero, and a removed
    /// backend stops counting anyway (it is no longer live, so its flows re-home). A
    /// failure here is logged: the generation stands, and the id's next owner is zeroed
    /// on arrival when its address or VIP differs.
    fn zero_retired(&mut self, previous: &Record, record: &Record) {
        let kept_backends: BTreeSet<u32> = record.ids.backends.values().copied().collect();
        let kept_vips: BTreeSet<u32> = record.ids.vips.values().copied().collect();
        for id in previous.ids.backends.values() {
            if !kept_backends.contains(id)
                && let Err(e) = self.maps.reset_backend_stats(*id)
            {
                tracing::warn!("zeroing retired backend id {id}'s counters: {e}");
            }
        }
        for id in previous.ids.vips.values() {
            if !kept_vips.contains(id)
                && let Err(e) = self.maps.reset_vip_stats(*id)
            {
                tracing::warn!("zeroing retired VIP id {id}'s counters: {e}");
            }
        }
    }

    /// Writes `record`'s state into the maps, with the tables `plan` built for its config,
    /// leaving `old`'s leftovers retired. With `only_if_different`, tables whose slots
    /// already match are kept.
    pub(super) fn write(
        &mut self,
        record: &Record,
        plan: &Plan,
        old: Option<&Record>,
        only_if_different: bool,
    ) -> Result<(), ApplyError> {
        let config = &record.config;
        let ids = &record.ids;
        // 0. The outer sources, before any `ipip` VIP needs them.
        let encap = config.ipip.encap();
        if self.maps.encap()? != encap {
            self.maps.set_encap(&encap)?;
        }
        // 1. Backends.
        for vip in &config.vips {
            let vip_id = ids.vips[&vip.name];
            let vip_key = vip_key(vip)
                .ok_or_else(|| ApplyError::NotFound(format!("bad address {}", vip.address)))?;
            for b in &vip.backends {
                let id = ids.backend(&vip.name, &b.name).ok_or_else(|| {
                    ApplyError::NotFound(format!("no id for backend {}/{}", vip.name, b.name))
                })?;
                let addr: IpAddr = b.address.parse().map_err(|_not_an_ip| {
                    ApplyError::NotFound(format!("bad address {}", b.address))
                })?;
                // A backend without a MAC has no slot (effective weight 0) and is not
                // live, so flows that had it re-home instead of going nowhere. An `ipip`
                // backend needs none: the route names the next hop.
                let mac = record.mac(&vip.name, &b.name);
                let live = mac.is_some() || vip.forwarding == Forwarding::Ipip;
                let want = Backend {
                    mac: mac.unwrap_or([0; 6]),
                    flags: if live { BACKEND_LIVE } else { 0 },
                    vip_id,
                    family: family(addr),
                    _pad: [0; 3],
                    addr: addr16(addr),
                    vip_key,
                };
                let have = self.maps.backend(id)?;
                if have != want {
                    if have.vip_id != vip_id || have.addr != want.addr {
                        // A new owner of this id starts with fresh counters.
                        self.maps.reset_backend_stats(id)?;
                    }
                    self.maps.put_backend(id, &want)?;
                }
            }
        }
        // 2. Tables, then VIP keys.
        for vip in &config.vips {
            let vip_id = ids.vips[&vip.name];
            match plan.vip(&vip.name).and_then(|p| p.table.as_ref()) {
                Some(table) => {
                    self.write_table(record, &vip.name, table, old, only_if_different)?;
                }
                // No backend of this VIP has a MAC: an empty table, whose packets are
                // dropped and counted (per VIP, reason drop-no-backend), not misdirected.
                None if record
                    .unresolved
                    .iter()
                    .any(|k| k.starts_with(&format!("{}/", vip.name))) =>
                {
                    self.maps.remove_table(vip_id)?;
                }
                None => {
                    return Err(ApplyError::NotFound(format!(
                        "vip {} has no table",
                        vip.name
                    )));
                }
            }
            let key = vip_key(vip)
                .ok_or_else(|| ApplyError::NotFound(format!("bad address {}", vip.address)))?;
            let addr_flags = if vip.icmp_echo { ADDR_ICMP_ECHO } else { 0 };
            self.maps.put_vip(
                &key,
                &VipInfo {
                    vip_id,
                    forwarding: vip.forwarding.code(),
                },
                addr_flags,
            )?;
        }
        // 3. VIP keys and tables that are no longer wanted, including leftovers of an
        //    apply that crashed before its commit.
        let wanted: Vec<(VipKey, u32)> = config
            .vips
            .iter()
            .filter_map(|v| Some((vip_key(v)?, ids.vips[&v.name])))
            .collect();
        let wanted_ids: BTreeSet<u32> = ids.vips.values().copied().collect();
        // Each table swap waits for an RCU grace period: retire each table once.
        let mut unwanted_tables: BTreeSet<u32> = old
            .map(|o| o.ids.vips.values().copied().collect())
            .unwrap_or_default();
        let mut removed = false;
        for (key, info) in self.maps.vips() {
            if !wanted.contains(&(key, info.vip_id)) {
                self.maps.remove_vip(&key)?;
                unwanted_tables.insert(info.vip_id);
                removed = true;
            }
        }
        if removed || only_if_different {
            self.maps.trim_vip_filter()?;
        }
        if only_if_different {
            // Tables of VIP ids no key names: an apply that died between installing a
            // new VIP's table and committing left them behind.
            for id in 1..self.maps.capacity().vips {
                if !wanted_ids.contains(&id) && self.maps.table_size(id).is_ok_and(|n| n > 0) {
                    unwanted_tables.insert(id);
                }
            }
        }
        for id in unwanted_tables.difference(&wanted_ids) {
            self.maps.remove_table(*id)?;
        }
        // 4. Backends that left.
        let keep: BTreeSet<u32> = ids.backends.values().copied().collect();
        let mut retire: BTreeSet<u32> = old
            .map(|o| o.ids.backends.values().copied().collect())
            .unwrap_or_default();
        if only_if_different {
            // After a crash the maps may hold backends no record knows: retire every
            // live backend outside this generation.
            for id in 1..self.maps.capacity().backends {
                if self.maps.backend(id).is_ok_and(|b| b.is_live()) {
                    retire.insert(id);
                }
            }
        }
        for id in retire.difference(&keep) {
            let mut b = self.maps.backend(*id)?;
            if b.is_live() {
                b.flags &= !BACKEND_LIVE;
                self.maps.put_backend(*id, &b)?;
            }
        }
        // 5. What every id is, for bpftool.
        let names = super::names::names_of(record);
        self.maps.set_names(&names.vips, &names.backends)?;
        Ok(())
    }

    /// Installs `table` for `vip_id` unless the live table already is it: a reconcile
    /// (`only_if_different`) reads it back, an apply trusts the fingerprints.
    fn write_table(
        &mut self,
        record: &Record,
        vip: &str,
        table: &guard::NamedTable,
        old: Option<&Record>,
        only_if_different: bool,
    ) -> Result<(), ApplyError> {
        let vip_id = record.ids.vips[vip];
        let generation = u32::try_from(record.generation).unwrap_or(u32::MAX);
        let id_of: Vec<u32> = table
            .names
            .iter()
            .map(|name| record.ids.backend(vip, name).unwrap_or(0))
            .collect();
        let slots: Vec<u32> = table.slots.iter().map(|&i| id_of[i as usize]).collect();
        let in_place = if only_if_different {
            self.maps.table(vip_id).is_ok_and(|(_, _, s)| s == slots)
        } else {
            let old_fp = old.and_then(|o| o.fingerprints.get(vip));
            old_fp == record.fingerprints.get(vip)
                && old.is_some_and(|o| o.ids.vips.get(vip) == Some(&vip_id))
        };
        if !in_place {
            self.maps.install_table(TableWrite {
                vip_id,
                generation,
                slots: &slots,
            })?;
        }
        Ok(())
    }
}
