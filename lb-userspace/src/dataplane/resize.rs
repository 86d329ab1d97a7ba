//! Resizing the pinned per-VIP and per-backend arrays when `[daemon] max_vips` or
//! `max_backends` changed between starts. A map's size is fixed when it is created, so
//! the loader reads the old map's entries, unpins it, lets the load create the new one,
//! and writes the entries back before the new program is swapped in. The old program
//! counts into the old maps until that swap: the packets of those few milliseconds are
//! missing from the counters. Ids at or above the new size must be unused: a live
//! backend or an installed table there refuses the start and changes nothing.
//!
//! `xlb_reasons` grows the same way when a new build names more reasons than the
//! pinned map holds: its counts are carried over.

use std::path::{Path, PathBuf};

use aya::maps::{Array, ArrayOfMaps, Map, MapData, MapInfo, PerCpuArray, PerCpuValues};
use lb_common::{
    Backend, BackendStats, ReasonStats, VipStats, maps as names, reason::REASON_COUNT,
};

use super::{DataplaneError, Maps, maps::map_err, pins};

/// The contents of every array that is being resized.
#[derive(Default)]
pub(super) struct Carried {
    tables: Vec<(u32, Array<MapData, u32>)>,
    vip_stats: Vec<(u32, PerCpuValues<VipStats>)>,
    backends: Vec<(u32, Backend)>,
    backend_stats: Vec<(u32, PerCpuValues<BackendStats>)>,
    reasons: Vec<(u32, PerCpuValues<ReasonStats>)>,
    /// The old maps, unpinned; pinned again if the load fails.
    old: Vec<(PathBuf, MapData)>,
}

/// The refusal of a size below the highest id in use.
fn too_small(path: &Path, key: &str, want: u32, highest: u32, state: &str) -> DataplaneError {
    DataplaneError::Resize {
        path: path.to_path_buf(),
        what: format!(
            "daemon.{key} = {want} holds ids below {want}, but id {highest} {state} (the \
             highest in use; ids are kept by name across generations): set daemon.{key} to \
             at least {}",
            highest + 1
        ),
    }
}

fn open(path: &Path, name: &'static str) -> Result<MapData, DataplaneError> {
    MapData::from_pin(path).map_err(map_err(
        name,
        format!("opening {} to resize it", path.display()),
    ))
}

fn read_err(name: &'static str, id: u32) -> impl FnOnce(aya::maps::MapError) -> DataplaneError {
    map_err(name, format!("reading id {id} to resize"))
}

/// The size (`max_entries`) of map `name` pinned under `pin_dir`, if it is pinned.
pub(super) fn pinned_size(
    pin_dir: &Path,
    name: &'static str,
) -> Result<Option<u32>, DataplaneError> {
    let path = pins::map(pin_dir, name);
    if !path.exists() {
        return Ok(None);
    }
    let info =
        MapInfo::from_pin(&path).map_err(map_err(name, format!("reading {}", path.display())))?;
    Ok(Some(info.max_entries()))
}

/// The pinned size of `name` under `pin_dir`, if it is pinned and differs from `want`.
fn old_size(pin_dir: &Path, name: &'static str, want: u32) -> Result<Option<u32>, DataplaneError> {
    Ok(pinned_size(pin_dir, name)?.filter(|&have| have != want))
}

/// Ids `first..keep` of the per-CPU array `name` pinned under `pin_dir`.
fn per_cpu<T: aya::Pod>(
    pin_dir: &Path,
    name: &'static str,
    first: u32,
    keep: u32,
) -> Result<Vec<(u32, PerCpuValues<T>)>, DataplaneError> {
    let path = pins::map(pin_dir, name);
    let stats: PerCpuArray<MapData, T> =
        PerCpuArray::try_from(Map::PerCpuArray(open(&path, name)?)).map_err(read_err(name, 0))?;
    (first..keep.min(stats.len()))
        .map(|id| Ok((id, stats.get(&id, 0).map_err(read_err(name, id))?)))
        .collect()
}

impl Carried {
    /// Reads every sized map whose pinned size differs from the wanted one, checks that
    /// nothing in use lies beyond the new size, then unpins those maps.
    pub(super) fn take(
        pin_dir: &Path,
        max_vips: u32,
        max_backends: u32,
    ) -> Result<Self, DataplaneError> {
        let mut carried = Carried::default();
        let mut unpin = Vec::new();
        if let Some(have) = old_size(pin_dir, names::RINGS, max_vips)? {
            let path = pins::map(pin_dir, names::RINGS);
            let rings: ArrayOfMaps<MapData, Array<MapData, u32>> =
                ArrayOfMaps::try_from(Map::ArrayOfMaps(open(&path, names::RINGS)?))
                    .map_err(read_err(names::RINGS, 0))?;
            let mut highest = None;
            for id in 1..have {
                let Ok(table) = rings.get(&id, 0) else {
                    continue;
                };
                let size = table.get(&names::TABLE_HDR_SIZE, 0).unwrap_or(0);
                if size == 0 {
                    continue;
                }
                if id >= max_vips {
                    highest = Some(id);
                } else {
                    carried.tables.push((id, table));
                }
            }
            if let Some(id) = highest {
                return Err(too_small(&path, "max_vips", max_vips, id, "has a table"));
            }
            unpin.push(path);
        }
        if old_size(pin_dir, names::VIP_STATS, max_vips)?.is_some() {
            carried.vip_stats = per_cpu(pin_dir, names::VIP_STATS, 1, max_vips)?;
            unpin.push(pins::map(pin_dir, names::VIP_STATS));
        }
        if let Some(have) = old_size(pin_dir, names::BACKENDS, max_backends)? {
            let path = pins::map(pin_dir, names::BACKENDS);
            let backends: Array<MapData, Backend> =
                Array::try_from(Map::Array(open(&path, names::BACKENDS)?))
                    .map_err(read_err(names::BACKENDS, 0))?;
            let mut highest = None;
            for id in 1..have {
                let b = backends
                    .get(&id, 0)
                    .map_err(read_err(names::BACKENDS, id))?;
                if id >= max_backends && b.is_live() {
                    highest = Some(id);
                }
                if id < max_backends && b != Backend::default() {
                    carried.backends.push((id, b));
                }
            }
            if let Some(id) = highest {
                return Err(too_small(
                    &path,
                    "max_backends",
                    max_backends,
                    id,
                    "is live",
                ));
            }
            unpin.push(path);
        }
        if old_size(pin_dir, names::BACKEND_STATS, max_backends)?.is_some() {
            carried.backend_stats = per_cpu(pin_dir, names::BACKEND_STATS, 1, max_backends)?;
            unpin.push(pins::map(pin_dir, names::BACKEND_STATS));
        }
        if old_size(pin_dir, names::REASON_STATS, REASON_COUNT)?.is_some() {
            carried.reasons = per_cpu(pin_dir, names::REASON_STATS, 0, REASON_COUNT)?;
            unpin.push(pins::map(pin_dir, names::REASON_STATS));
        }
        for path in unpin {
            let name = names::ALL
                .into_iter()
                .find(|n| path.ends_with(n))
                .unwrap_or(names::RINGS);
            let map = open(&path, name)?;
            std::fs::remove_file(&path).map_err(|source| DataplaneError::Unpin {
                path: path.clone(),
                source,
            })?;
            carried.old.push((path, map));
        }
        Ok(carried)
    }

    /// Pins the old maps again (the load failed): the next start finds them as they were.
    pub(super) fn put_back(self) {
        for (path, map) in self.old {
            if let Err(e) = map.pin(&path) {
                tracing::error!("pinning {} again after a failed load: {e}", path.display());
            }
        }
    }

    /// Writes the carried entries into the freshly created maps.
    pub(super) fn restore(self, maps: &mut Maps) -> Result<(), DataplaneError> {
        let err =
            |map: &'static str, id: u32| map_err(map, format!("writing id {id} after resizing"));
        for (id, table) in self.tables {
            maps.rings
                .set(id, &table, 0)
                .map_err(err(names::RINGS, id))?;
        }
        for (id, values) in self.vip_stats {
            maps.vip_stats
                .set(id, values, 0)
                .map_err(err(names::VIP_STATS, id))?;
        }
        for (id, b) in self.backends {
            maps.backends
                .set(id, b, 0)
                .map_err(err(names::BACKENDS, id))?;
        }
        for (id, values) in self.reasons {
            maps.reasons
                .set(id, values, 0)
                .map_err(err(names::REASON_STATS, id))?;
        }
        for (id, values) in self.backend_stats {
            maps.backend_stats
                .set(id, values, 0)
                .map_err(err(names::BACKEND_STATS, id))?;
        }
        Ok(())
    }
}
