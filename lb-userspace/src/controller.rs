//! The controller: the one place that changes the data plane. Every change (file, CLI
//! verb, reload, rollback) goes through `apply`: plan and guardrails (pure, `guard`),
//! MAC resolution, id assignment, then map writes in an order that keeps every packet
//! on one complete generation, then the durable history record.
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
//!
//! Backend ids are reused only when no flow entry points at them (a walk of `xlb_flows`),
//! and the XDP program also checks that a flow's backend still belongs to the flow's VIP.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::Duration,
};

use lb_common::{
    BACKEND_LIVE, Backend, BackendStats, FAMILY_V4, FAMILY_V6, FWD_L2_DSR, FlowKey, PROTO_TCP,
    PROTO_UDP, VipInfo, VipKey, flow_hash, table_slot,
};
use serde::Serialize;
use thiserror::Error;

mod failover;
mod macs;

pub use failover::{HealthChange, Holds, Panic};
pub use macs::MacRefresh;

use crate::{
    config::{Config, Protocol, Vip},
    dataplane::{DataplaneError, Maps, TableWrite},
    guard::{self, Health, Maglev, Plan},
    health::Tracker,
    history::{Attempt, History, HistoryError, Ids, Record, Source, now},
};

#[derive(Debug, Error)]
pub enum ApplyError {
    #[error("--force needs --reason: say why the guardrails are overridden")]
    ForceWithoutReason,
    #[error("rejected by {} guardrail violation(s); nothing was changed", .0.len())]
    Rejected(Vec<guard::Violation>, Box<Plan>),
    #[error("{0}")]
    NotFound(String),
    #[error("the maps hold no free backend id (all {max} in use or still referenced by flows)")]
    NoFreeId { max: u32 },
    #[error("data plane: {0}")]
    Dataplane(#[from] DataplaneError),
    #[error("{0}")]
    History(#[from] HistoryError),
    #[error("{0}; the previous generation was written back, nothing changed")]
    Restored(String),
    #[error("{error}; writing the previous generation back also failed: {restore}")]
    RestoreFailed { error: String, restore: String },
}

/// One requested change.
#[derive(Clone, Debug)]
pub struct Request {
    pub config: Config,
    pub source: Source,
    pub user: String,
    pub force: bool,
    pub reason: Option<String>,
    pub dry_run: bool,
}

/// What `apply` did (or, dry, would do).
#[derive(Debug, Serialize)]
pub struct Outcome {
    pub plan: Plan,
    /// The new generation; `None` for a dry run or when nothing changed.
    pub generation: Option<u64>,
    pub dry_run: bool,
}

/// Resolves backends' MACs from their addresses (the neighbour table, in the daemon),
/// soliciting those not known yet and waiting up to the given time for all of them;
/// returns those it found.
pub type Resolver = Box<dyn Fn(&[IpAddr], Duration) -> BTreeMap<IpAddr, [u8; 6]> + Send>;

/// The tables of `config` as they are installed (no running config, no health).
fn tables_of(config: &Config) -> Plan {
    guard::plan(config, None, &Health::new(), &Maglev)
}

/// The tables `record` installs: its config at its effective weights (`Holds`),
/// reusing the tables of `reuse` whose input is the same.
fn installed(record: &Record, reuse: Option<&Plan>) -> Plan {
    let reuse = guard::Reuse {
        plan: reuse,
        builder: &Maglev,
    };
    guard::plan(
        &Holds::of(record).apply(&record.config),
        None,
        &Health::new(),
        &reuse,
    )
}

fn fingerprints(plan: &Plan) -> BTreeMap<String, String> {
    plan.vips
        .iter()
        .filter_map(|v| Some((v.vip.clone(), v.fingerprint.clone()?)))
        .collect()
}

/// Resolves through the neighbour table of `iface`.
pub fn neighbour_resolver(iface: String) -> Resolver {
    Box::new(move |addrs, wait| crate::neighbour::resolve(&iface, addrs, wait))
}

pub struct Controller {
    maps: Maps,
    history: History,
    current: Option<Record>,
    /// `current`'s tables and shares, built once per generation (not per read).
    current_plan: Option<Plan>,
    /// Up or down per checked backend (rise/fall over the probes).
    tracker: Tracker,
    /// VIPs in panic (too few backends up to take more out).
    panic: BTreeMap<String, Panic>,
    /// When each backend in slow start began its ramp (time since the daemon started).
    ramp_started: BTreeMap<String, Duration>,
    /// Time since the daemon started, as of the last probe round.
    clock: Duration,
    resolve: Resolver,
}

fn family(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { FAMILY_V4 } else { FAMILY_V6 }
}

fn addr16(addr: IpAddr) -> [u8; 16] {
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

/// Gives every VIP and backend of `config` an id: kept from `old` where it exists, else
/// the lowest id that is free (`usable`). Pure, so the rules are testable without BPF.
pub fn assign_ids(
    old: &Ids,
    config: &Config,
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
                if next_vip >= lb_common::maps::MAX_VIPS {
                    return Err(ApplyError::NoFreeId {
                        max: lb_common::maps::MAX_VIPS - 1,
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
                    if next_be >= lb_common::maps::MAX_BACKENDS {
                        return Err(ApplyError::NoFreeId {
                            max: lb_common::maps::MAX_BACKENDS - 1,
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

impl Controller {
    /// A controller over loaded maps and a history directory. Call `reconcile` next.
    pub fn new(maps: Maps, history: History, resolve: Resolver) -> Result<Self, ApplyError> {
        let current = history.latest()?;
        let mut controller = Controller {
            maps,
            history,
            current,
            current_plan: None,
            tracker: Tracker::default(),
            panic: BTreeMap::new(),
            ramp_started: BTreeMap::new(),
            clock: Duration::ZERO,
            resolve,
        };
        if let Some(mut record) = controller.current.take() {
            // Records written before MACs were recorded: take them from the maps.
            if record.macs.is_empty() && record.unresolved.is_empty() {
                (record.macs, record.unresolved) = controller.resolve_macs(&record.config, None);
            }
            controller.current_plan = Some(installed(&record, None));
            // What the running generation holds down stays down until its checks pass.
            controller.tracker = Tracker::starting_down(&record.down);
            controller.current = Some(record);
        }
        Ok(controller)
    }

    pub fn maps(&self) -> &Maps {
        &self.maps
    }

    pub fn current(&self) -> Option<&Record> {
        self.current.as_ref()
    }

    pub fn history(&self) -> &History {
        &self.history
    }

    /// Up or down per checked backend, for the guardrails.
    pub fn health(&self) -> Health {
        self.tracker.health()
    }

    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    /// Brings the maps to the last committed generation (after a restart or a crash in
    /// the middle of an apply). Backends and tables already right are left alone, so
    /// established flows keep their entries and backends.
    pub fn reconcile(&mut self) -> Result<(), ApplyError> {
        let (Some(record), Some(plan)) = (self.current.clone(), self.current_plan.clone()) else {
            return Ok(());
        };
        // The recorded MACs: a reconcile never waits on the neighbour table.
        self.write(&record, &plan, None, true)
    }

    /// Plans `req` and, unless it is rejected or dry, applies it and commits a generation.
    /// An attempt that is not dry and changes nothing is kept in the audit trail.
    pub fn apply(&mut self, req: Request) -> Result<Outcome, ApplyError> {
        let attempt = (!req.dry_run).then(|| Attempt {
            time: now(),
            source: req.source.clone(),
            user: req.user.clone(),
            force: req.force,
            reason: req.reason.clone(),
            outcome: String::new(),
            error: String::new(),
            violations: Vec::new(),
            running: self.current.as_ref().map_or(0, |r| r.generation),
        });
        let result = self.apply_unaudited(req);
        if let (Some(mut attempt), Err(e)) = (attempt, &result) {
            attempt.outcome = match e {
                ApplyError::Rejected(..) | ApplyError::ForceWithoutReason => "rejected",
                _ => "failed",
            }
            .into();
            attempt.error = e.to_string();
            if let ApplyError::Rejected(violations, _) = e {
                attempt.violations = violations.clone();
            }
            self.audit(&attempt);
        }
        result
    }

    /// Records an attempt that changed nothing. The audit trail is best effort: failing to
    /// write it must not turn a refusal into something else.
    pub fn audit(&self, attempt: &Attempt) {
        if let Err(e) = self.history.audit(attempt) {
            eprintln!("xlb: audit trail: {e}");
        }
    }

    fn apply_unaudited(&mut self, req: Request) -> Result<Outcome, ApplyError> {
        if req.force && req.reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
            return Err(ApplyError::ForceWithoutReason);
        }
        let rollback = matches!(
            req.source,
            Source::Rollback { .. } | Source::AutoRollback { .. }
        );
        let (macs, unresolved) = self.resolve_macs(&req.config, self.current.as_ref());
        let holds = self.holds_for(&req.config, unresolved, self.clock);
        let running = self.current.as_ref().map(|r| &r.config);
        let builder = guard::Reuse {
            plan: self.current_plan.as_ref(),
            builder: &Maglev,
        };
        let plan = guard::plan(&req.config, running, &self.tracker.health(), &builder);
        // Rules measure what will serve traffic: with backends that have no MAC or are
        // down, the plan is that of the table really installed.
        let plan = self.effective_plan(&req.config, &holds, plan);
        let blocking: Vec<guard::Violation> = plan
            .blocking(req.force, !rollback)
            .into_iter()
            .cloned()
            .collect();
        if !blocking.is_empty() {
            return Err(ApplyError::Rejected(blocking, Box::new(plan)));
        }
        let unchanged = running.is_some() && plan.is_noop();
        if req.dry_run || unchanged {
            return Ok(Outcome {
                plan,
                generation: None,
                dry_run: req.dry_run,
            });
        }
        let old_ids = self
            .current
            .as_ref()
            .map(|r| r.ids.clone())
            .unwrap_or_default();
        let in_flows = self.maps.flow_backend_ids();
        let maps = &self.maps;
        let ids = assign_ids(&old_ids, &req.config, |id| {
            !in_flows.contains(&id) && maps.backend(id).is_ok_and(|b| !b.is_live())
        })?;
        let mut record = Record {
            generation: self.next_generation()?,
            time: now(),
            source: req.source,
            user: req.user,
            reason: req.reason,
            force: req.force,
            fingerprints: BTreeMap::new(),
            // What --force really overrode: the violations that would have blocked.
            waived: if req.force {
                plan.blocking(false, !rollback)
                    .into_iter()
                    .cloned()
                    .collect()
            } else {
                Vec::new()
            },
            config: req.config,
            ids,
            macs,
            unresolved: holds.unresolved,
            down: holds.down,
            ramp: holds.ramp,
        };
        // The plan's tables are the ones to install (unresolved backends at weight 0).
        record.fingerprints = fingerprints(&plan);
        let generation = self.commit(record, plan.clone())?;
        Ok(Outcome {
            plan,
            generation: Some(generation),
            dry_run: false,
        })
    }

    /// Generation `generation`'s VIPs and policy, to apply again, under the daemon's own
    /// `settings` (which only `xlb run` changes).
    pub fn config_of(
        &self,
        generation: u64,
        settings: &crate::config::Daemon,
    ) -> Result<Config, ApplyError> {
        let mut config = self.history.get(generation)?.config.without_lines();
        config.daemon = settings.clone();
        Ok(config)
    }

    /// The number the next generation gets.
    fn next_generation(&self) -> Result<u64, ApplyError> {
        Ok(self.history.generations()?.last().copied().unwrap_or(0) + 1)
    }

    /// Commits `next`, the running record with only its holds or MACs changed, as the
    /// daemon's own generation (`source`: health or neighbour). It moves share only between
    /// weights the guardrails accepted before and a backend's absence, so it is not
    /// planned against them; panic is what keeps health from concentrating traffic.
    fn commit_followup(&mut self, mut next: Record, source: Source) -> Result<u64, ApplyError> {
        next.generation = self.next_generation()?;
        next.time = now();
        next.source = source;
        next.user = "xlb".into();
        next.reason = None;
        next.force = false;
        next.waived.clear();
        let install = installed(&next, self.current_plan.as_ref());
        next.fingerprints = fingerprints(&install);
        self.commit(next, install)
    }

    /// Writes `record` with the tables of `install` and commits it; on any failure the
    /// previous generation is written back, so a failed commit changes nothing.
    fn commit(&mut self, record: Record, install: Plan) -> Result<u64, ApplyError> {
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
        let generation = record.generation;
        self.current = Some(record);
        self.current_plan = Some(install);
        Ok(generation)
    }

    /// Writes `record`'s state into the maps, with the tables `plan` built for its config,
    /// leaving `old`'s leftovers retired. With `only_if_different`, tables whose slots
    /// already match are kept.
    fn write(
        &mut self,
        record: &Record,
        plan: &Plan,
        old: Option<&Record>,
        only_if_different: bool,
    ) -> Result<(), ApplyError> {
        let config = &record.config;
        let ids = &record.ids;
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
                // live, so flows that had it re-home instead of going nowhere.
                let mac = record.mac(&vip.name, &b.name);
                let want = Backend {
                    mac: mac.unwrap_or([0; 6]),
                    flags: if mac.is_some() { BACKEND_LIVE } else { 0 },
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
            self.maps.put_vip(
                &key,
                &VipInfo {
                    vip_id,
                    forwarding: FWD_L2_DSR,
                },
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
            for id in 1..lb_common::maps::MAX_VIPS {
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
            for id in 1..lb_common::maps::MAX_BACKENDS {
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

    /// Which backend a flow from `client` to `vip` gets, and why.
    pub fn explain(&self, vip: &str, client: std::net::SocketAddr) -> Result<Explain, ApplyError> {
        let record = self
            .current
            .as_ref()
            .ok_or_else(|| ApplyError::NotFound("no generation is applied yet".into()))?;
        let v = record
            .config
            .vips
            .iter()
            .find(|v| v.name == vip || v.address == vip)
            .ok_or_else(|| ApplyError::NotFound(format!("no VIP named {vip:?}")))?;
        let key = vip_key(v).ok_or_else(|| ApplyError::NotFound("bad VIP".into()))?;
        if family(client.ip()) != key.family {
            return Err(ApplyError::NotFound(format!(
                "client {client} is not of VIP {}'s address family",
                v.name
            )));
        }
        let flow = FlowKey {
            src: addr16(client.ip()),
            dst: key.addr,
            sport_be: client.port().to_be(),
            dport_be: key.port_be,
            proto: key.proto,
            family: key.family,
            _pad: [0; 2],
        };
        let vip_id = record.ids.vips[&v.name];
        let name_of = |id: u32| {
            record
                .ids
                .backends
                .iter()
                .filter(|&(_, &bid)| bid == id)
                .find_map(|(k, _)| k.strip_prefix(v.name.as_str())?.strip_prefix('/'))
                .map(str::to_string)
        };
        if let Some(entry) = self.maps.flow(&flow)
            && self
                .maps
                .backend(entry.backend_id)
                .is_ok_and(|b| b.serves(&flow))
        {
            return Ok(Explain {
                vip: v.name.clone(),
                client: client.to_string(),
                backend: name_of(entry.backend_id).unwrap_or_else(|| "?".into()),
                backend_id: entry.backend_id,
                why: "flow-entry".into(),
                generation: u64::from(entry.generation),
                slot: None,
                hash: None,
            });
        }
        let seed = self.maps.config()?.hash_seed;
        let (size, generation, slots) = self.maps.table(vip_id)?;
        let hash = flow_hash(&flow, seed);
        let slot = table_slot(hash, size);
        let id = slots.get(slot as usize).copied().unwrap_or(0);
        Ok(Explain {
            vip: v.name.clone(),
            client: client.to_string(),
            backend: name_of(id).unwrap_or_else(|| "?".into()),
            backend_id: id,
            why: "table-slot".into(),
            generation: u64::from(generation),
            slot: Some(slot),
            hash: Some(hash),
        })
    }

    /// Counters of every backend and VIP of the running generation.
    pub fn stats(&self) -> Result<Vec<VipStatsView>, ApplyError> {
        let Some(record) = &self.current else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for vip in &record.config.vips {
            let vip_id = record.ids.vips[&vip.name];
            let vs = self.maps.vip_stats(vip_id)?;
            let rows = self
                .current_plan
                .as_ref()
                .and_then(|p| p.vip(&vip.name))
                .map_or(&[][..], |p| &p.rows[..]);
            let mut backends = Vec::new();
            for b in &vip.backends {
                let id = record.ids.backend(&vip.name, &b.name).unwrap_or(0);
                let s: BackendStats = self.maps.backend_stats(id)?;
                let row = rows.iter().find(|r| r.backend == b.name);
                let mac = record.mac(&vip.name, &b.name);
                let key = Ids::backend_key(&vip.name, &b.name);
                let probe = self.tracker.backend(&vip.name, &b.name);
                let held = if record.unresolved.contains(&key) {
                    Some("unresolved".to_string())
                } else if record.down.contains(&key) {
                    Some("down".to_string())
                } else {
                    record.ramp.get(&key).map(|p| format!("slow start {p}%"))
                };
                backends.push(BackendStatsView {
                    backend: b.name.clone(),
                    id,
                    address: b.address.clone(),
                    mac: mac.map(macs::show_mac),
                    mac_source: if mac.is_none() {
                        "unresolved"
                    } else if b.mac == crate::config::MAC_FROM_NEIGHBOUR {
                        "neighbour"
                    } else {
                        "config"
                    }
                    .into(),
                    weight: b.weight(),
                    effective_weight: row.and_then(|r| r.weight_after).unwrap_or(0),
                    held,
                    table_share: row.map_or(0.0, |r| r.share_after),
                    healthy: vip.health.as_ref().map(|_| probe.is_none_or(|h| h.up)),
                    last_probe: probe.and_then(|h| h.last.clone()),
                    packets: s.packets,
                    bytes: s.bytes,
                    new_flows: s.new_flows,
                });
            }
            out.push(VipStatsView {
                vip: vip.name.clone(),
                label: vip.label(),
                id: vip_id,
                generation: self.maps.table_generation(vip_id).map_or(0, u64::from),
                packets: vs.packets,
                bytes: vs.bytes,
                new_flows: vs.new_flows,
                drops: vs.drops,
                checked: vip.health.is_some(),
                panic: self.panic.get(&vip.name).cloned(),
                backends,
            });
        }
        Ok(out)
    }
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Explain {
    pub vip: String,
    pub client: String,
    pub backend: String,
    pub backend_id: u32,
    /// "flow-entry" (an established flow) or "table-slot" (a new flow).
    pub why: String,
    pub generation: u64,
    pub slot: Option<u32>,
    pub hash: Option<u32>,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct VipStatsView {
    pub vip: String,
    pub label: String,
    pub id: u32,
    /// Generation of the table the data plane is using.
    pub generation: u64,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub drops: u64,
    /// The VIP has health checks.
    #[serde(default)]
    pub checked: bool,
    /// Too few backends up to take more out for health.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub panic: Option<Panic>,
    pub backends: Vec<BackendStatsView>,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct BackendStatsView {
    pub backend: String,
    pub id: u32,
    pub address: String,
    /// The MAC frames are sent to; none while unresolved.
    pub mac: Option<String>,
    /// `config` (explicit), `neighbour` (resolved) or `unresolved`.
    pub mac_source: String,
    pub weight: u32,
    /// The weight its table was built from: 0 while down or unresolved, part of it in
    /// slow start.
    #[serde(default)]
    pub effective_weight: u32,
    /// Why the effective weight is not the weight: `down`, `unresolved`, `slow start N%`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
    pub table_share: f64,
    /// Up (after rise/fall) for VIPs with health checks.
    pub healthy: Option<bool>,
    /// The last probe's result: `ok` or why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe: Option<String>,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let a = assign_ids(&Ids::default(), &cfg(&[("web", &["a", "b"])]), |_| true).unwrap();
        assert_eq!(a.vips["web"], 1);
        assert_eq!(
            (a.backend("web", "a"), a.backend("web", "b")),
            (Some(1), Some(2))
        );
        // b leaves and c arrives: c must not take b's id in the same apply.
        let b = assign_ids(&a, &cfg(&[("web", &["a", "c"])]), |_| true).unwrap();
        assert_eq!(
            (b.backend("web", "a"), b.backend("web", "c")),
            (Some(1), Some(3))
        );
        // Later, b's id 2 is free again unless a flow still points at it.
        let c = assign_ids(&b, &cfg(&[("web", &["a", "c", "d"])]), |id| id != 2).unwrap();
        assert_eq!(c.backend("web", "d"), Some(4));
        let d = assign_ids(&b, &cfg(&[("web", &["a", "c", "d"])]), |_| true).unwrap();
        assert_eq!(d.backend("web", "d"), Some(2));
        // A second VIP gets the next VIP id; same backend names are different backends.
        let e = assign_ids(&d, &cfg(&[("web", &["a"]), ("api", &["a"])]), |_| true).unwrap();
        assert_eq!(e.vips["api"], 2);
        assert_ne!(e.backend("api", "a"), e.backend("web", "a"));
    }

    #[test]
    fn running_out_of_ids_is_an_error() {
        let many: Vec<String> = (0..5000).map(|i| format!("b{i}")).collect();
        let names: Vec<&str> = many.iter().map(String::as_str).collect();
        let err = assign_ids(&Ids::default(), &cfg(&[("web", &names)]), |_| true).unwrap_err();
        assert!(matches!(err, ApplyError::NoFreeId { max: 4095 }));
    }
}
