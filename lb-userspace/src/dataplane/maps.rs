//! Typed access to the pinned maps: everything the control plane writes (config, VIPs,
//! backends, tables) and reads (counters, flows). Table installation follows the one
//! rule that makes a switch atomic: a complete inner map is built first, then a single
//! `xlb_rings` update makes it live.

use std::path::Path;

use aya::{
    Ebpf,
    maps::{Array, ArrayOfMaps, HashMap, IterableMap, MapData, MapError, MapInfo, PerCpuArray},
};
use lb_common::{
    Backend, BackendStats, Config, Encap, FlowKey, FlowStats, FlowValue, ReasonStats, Slot,
    VIP_INDEX_SHARED, VipAddrInfo, VipAddrKey, VipIndexEntry, VipInfo, VipKey, VipStats,
    maps::{
        self as names, TABLE_HDR_GENERATION, TABLE_HDR_SIZE, TABLE_HDR_UDP_GRACE, TABLE_HEADER,
        TABLE_MAP_FLAGS, VIP_FILTER_WORDS,
    },
    reason::{REASON_COUNT, Reason},
};

use super::{
    DataplaneError,
    names::{BackendName, NameMaps, VipName},
    pins, table_mem,
};
use crate::{
    controller::Capacity,
    flowstate::{self, LiveTable, SlotChanges},
};

/// A table to install for one VIP.
#[derive(Clone, Copy, Debug)]
pub struct TableWrite<'a> {
    pub vip_id: u32,
    /// Generation that built the table (stored in the table, copied into new flows).
    pub generation: u32,
    /// Backend id per slot; the length is the table size. Slots whose owner differs
    /// from the live table's become changed (`flowstate::merge`).
    pub slots: &'a [u32],
}

/// What a flow sweep found and did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowSweep {
    /// Entries in the flow table before the sweep.
    pub entries: usize,
    /// Entries deleted (idle, or no longer needed).
    pub deleted: usize,
    /// Changed slots made stateless.
    pub cleared: usize,
    /// Changed slots left, over all VIPs.
    pub changed: usize,
}

/// Handles on every map of a loaded data plane.
pub struct Maps {
    config: Array<MapData, Config>,
    vip_filter: Array<MapData, u64>,
    vip_index: Array<MapData, VipIndexEntry>,
    vips: HashMap<MapData, VipKey, VipInfo>,
    vip_addrs: HashMap<MapData, VipAddrKey, VipAddrInfo>,
    encap: Array<MapData, Encap>,
    pub(super) rings: ArrayOfMaps<MapData, Array<MapData, u32>>,
    pub(super) backends: Array<MapData, Backend>,
    flows: HashMap<MapData, FlowKey, FlowValue>,
    flow_stats: PerCpuArray<MapData, FlowStats>,
    pub(super) backend_stats: PerCpuArray<MapData, BackendStats>,
    pub(super) vip_stats: PerCpuArray<MapData, VipStats>,
    pub(super) reasons: PerCpuArray<MapData, ReasonStats>,
    /// The name maps, for bpftool (none where the caller loaded without them).
    pub(super) names: Option<NameMaps>,
    /// When each changed slot changed.
    changes: SlotChanges,
    /// Seconds after a table switch during which an unknown UDP flow in a changed slot
    /// goes to the slot's previous owner (`[daemon] udp_grace`).
    udp_grace_s: u32,
}

/// A failed map operation on `map`, saying what was being done.
pub(super) fn map_err(
    map: &'static str,
    what: impl Into<String>,
) -> impl FnOnce(MapError) -> DataplaneError {
    let what = what.into();
    move |source| DataplaneError::Map { map, what, source }
}

/// A system call about `map` that aya does not make for us, reported like aya's own.
pub(super) fn syscall_err(
    map: &'static str,
    what: impl Into<String>,
    call: &'static str,
    io_error: std::io::Error,
) -> DataplaneError {
    map_err(map, what)(MapError::SyscallError(aya::sys::SyscallError {
        call,
        io_error,
    }))
}

/// The `xlb_vip_index` entry of a filter bit that `vips` have: the one VIP, "shared",
/// or empty.
fn index_entry(vips: &[(VipKey, VipInfo)]) -> VipIndexEntry {
    match *vips {
        [] => VipIndexEntry::default(),
        [(key, info)] => VipIndexEntry { key, info },
        _ => VipIndexEntry {
            info: VipInfo {
                vip_id: VIP_INDEX_SHARED,
                forwarding: 0,
            },
            ..VipIndexEntry::default()
        },
    }
}

/// Whether `e` says the key was not there (aya reports a delete of an absent key as
/// the syscall's ENOENT).
pub fn is_absent(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// Mapping a table into memory failed.
fn table_err(what: &str, io_error: std::io::Error) -> DataplaneError {
    syscall_err(names::RINGS, what, "mmap", io_error)
}

/// VIP `vip_id`'s table `inner`, opened from `xlb_rings`, as stored: (generation,
/// packed `Slot` per slot).
fn table_contents(
    inner: &Array<MapData, u32>,
    vip_id: u32,
) -> Result<(u32, Vec<u32>), DataplaneError> {
    let what = || format!("reading VIP {vip_id}'s table");
    let mut values =
        table_mem::read(inner.map(), inner.len() as usize).map_err(|e| table_err(&what(), e))?;
    let size = values[TABLE_HDR_SIZE as usize];
    let generation = values[TABLE_HDR_GENERATION as usize];
    let end = TABLE_HEADER as usize + size as usize;
    if end > values.len() {
        return Err(table_err(
            &what(),
            std::io::Error::other(format!(
                "its header says {size} slots but it has {}",
                values.len() - TABLE_HEADER as usize
            )),
        ));
    }
    values.truncate(end);
    values.drain(..TABLE_HEADER as usize);
    Ok((generation, values))
}

/// Zeroes entry `id` of a per-CPU array on every CPU.
fn zero<T: aya::Pod + Default + Clone>(
    map: &mut PerCpuArray<MapData, T>,
    name: &'static str,
    id: u32,
) -> Result<(), DataplaneError> {
    let cpus =
        aya::util::nr_cpus().map_err(|(_, e)| map_err(name, "counting CPUs")(MapError::from(e)))?;
    let zeros = aya::maps::PerCpuValues::try_from(vec![T::default(); cpus])
        .map_err(|e| map_err(name, "zeroing")(MapError::from(e)))?;
    map.set(id, zeros, 0)
        .map_err(map_err(name, format!("zeroing id {id}")))
}

pub(super) fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, DataplaneError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(DataplaneError::Missing { name })?;
    T::try_from(map).map_err(map_err(name, "unexpected map type"))
}

/// (map, key size, value size) as this build defines them; pinned maps must match.
const LAYOUT: [(&str, usize, usize); 13] = [
    (names::CONFIG, 4, size_of::<Config>()),
    (names::ENCAP, 4, size_of::<Encap>()),
    (names::VIP_FILTER, 4, 8),
    (names::VIP_INDEX, 4, size_of::<VipIndexEntry>()),
    (names::VIPS, size_of::<VipKey>(), size_of::<VipInfo>()),
    (
        names::VIP_ADDRS,
        size_of::<VipAddrKey>(),
        size_of::<VipAddrInfo>(),
    ),
    (names::RINGS, 4, 4),
    (names::BACKENDS, 4, size_of::<Backend>()),
    (names::FLOWS, size_of::<FlowKey>(), size_of::<FlowValue>()),
    (names::FLOW_STATS, 4, size_of::<FlowStats>()),
    (names::BACKEND_STATS, 4, size_of::<BackendStats>()),
    (names::VIP_STATS, 4, size_of::<VipStats>()),
    (names::REASON_STATS, 4, size_of::<ReasonStats>()),
];

impl Maps {
    /// Takes the typed maps out of a freshly loaded object, after checking that every
    /// pinned map it adopted has this build's layout.
    pub(super) fn take(ebpf: &mut Ebpf, pin_dir: &Path) -> Result<Self, DataplaneError> {
        for (name, key, value) in LAYOUT {
            let path = pins::map(pin_dir, name);
            let info = MapInfo::from_pin(&path)
                .map_err(map_err(name, format!("reading {}", path.display())))?;
            if info.key_size() as usize != key || info.value_size() as usize != value {
                return Err(DataplaneError::PinMismatch {
                    path,
                    dir: pin_dir.to_path_buf(),
                    what: format!(
                        "key/value size {}/{} where this build uses {key}/{value}",
                        info.key_size(),
                        info.value_size()
                    ),
                });
            }
        }
        Ok(Maps {
            config: take(ebpf, names::CONFIG)?,
            vip_filter: take(ebpf, names::VIP_FILTER)?,
            vip_index: take(ebpf, names::VIP_INDEX)?,
            vips: take(ebpf, names::VIPS)?,
            vip_addrs: take(ebpf, names::VIP_ADDRS)?,
            encap: take(ebpf, names::ENCAP)?,
            rings: take(ebpf, names::RINGS)?,
            backends: take(ebpf, names::BACKENDS)?,
            flows: take(ebpf, names::FLOWS)?,
            flow_stats: take(ebpf, names::FLOW_STATS)?,
            backend_stats: take(ebpf, names::BACKEND_STATS)?,
            vip_stats: take(ebpf, names::VIP_STATS)?,
            reasons: take(ebpf, names::REASON_STATS)?,
            names: None,
            changes: SlotChanges::default(),
            udp_grace_s: crate::config::DEFAULT_UDP_GRACE_S,
        })
    }

    /// How many VIP and backend ids the maps hold (their sizes, fixed at load).
    pub fn capacity(&self) -> Capacity {
        Capacity {
            vips: self.rings.len(),
            backends: self.backends.len(),
        }
    }

    /// Makes the name maps say what every id of `entries` is, and nothing else.
    pub fn set_names(
        &mut self,
        vips: &[(u32, VipName)],
        backends: &[(u32, BackendName)],
    ) -> Result<(), DataplaneError> {
        let Some(names) = self.names.as_mut() else {
            return Ok(());
        };
        names.set_vips(vips)?;
        names.set_backends(backends)
    }

    /// The program-wide settings.
    pub fn config(&self) -> Result<Config, DataplaneError> {
        self.config
            .get(&0, 0)
            .map_err(map_err(names::CONFIG, "reading"))
    }

    fn update_config(&mut self, f: impl FnOnce(&mut Config)) -> Result<(), DataplaneError> {
        let mut config = self.config()?;
        f(&mut config);
        self.config
            .set(0, config, 0)
            .map_err(map_err(names::CONFIG, "writing"))
    }

    /// Sets the source MAC of forwarded frames.
    pub fn set_interface_mac(&mut self, mac: [u8; 6]) -> Result<(), DataplaneError> {
        self.update_config(|c| c.if_mac = mac)
    }

    /// Sets the flow hash seed (every host behind one ECMP group must use the same).
    pub fn set_hash_seed(&mut self, seed: u32) -> Result<(), DataplaneError> {
        self.update_config(|c| c.hash_seed = seed)
    }

    /// Sets the UDP grace window of the tables installed from now on.
    pub fn set_udp_grace(&mut self, seconds: u32) {
        self.udp_grace_s = seconds;
    }

    /// Sets the flood guard: new flow entries per second on each CPU.
    pub fn set_flow_insert_rate(&mut self, rate: u32) -> Result<(), DataplaneError> {
        self.update_config(|c| c.flow_insert_rate = rate)
    }

    /// Writes backend `id` (before any live table references it).
    pub fn put_backend(&mut self, id: u32, backend: &Backend) -> Result<(), DataplaneError> {
        self.backends
            .set(id, backend, 0)
            .map_err(map_err(names::BACKENDS, format!("writing backend {id}")))
    }

    /// Reads backend `id`.
    pub fn backend(&self, id: u32) -> Result<Backend, DataplaneError> {
        self.backends
            .get(&id, 0)
            .map_err(map_err(names::BACKENDS, format!("reading backend {id}")))
    }

    /// The outer sources of `ipip` forwarding.
    pub fn encap(&self) -> Result<Encap, DataplaneError> {
        self.encap
            .get(&0, 0)
            .map_err(map_err(names::ENCAP, "reading"))
    }

    /// Sets the outer sources of `ipip` forwarding.
    pub fn set_encap(&mut self, encap: &Encap) -> Result<(), DataplaneError> {
        self.encap
            .set(0, encap, 0)
            .map_err(map_err(names::ENCAP, "writing"))
    }

    /// What the program knows of VIP address `addr` (`None`: no VIP uses it).
    pub fn vip_addr(&self, addr: &VipAddrKey) -> Option<VipAddrInfo> {
        self.vip_addrs.get(addr, 0).ok()
    }

    /// Makes `key` a VIP with `info` and records its address, with `addr_flags`
    /// (`ADDR_ICMP_ECHO`) for ICMP to the address. Its `xlb_vip_filter` bit is set
    /// first, so the program never misses a VIP that is in `xlb_vips`.
    pub fn put_vip(
        &mut self,
        key: &VipKey,
        info: &VipInfo,
        addr_flags: u16,
    ) -> Result<(), DataplaneError> {
        let bit = key.filter_bit();
        let word = self.filter_word(bit / 64)?;
        if word >> (bit % 64) & 1 == 0 {
            self.set_filter_word(bit / 64, word | 1 << (bit % 64))?;
        }
        let addr = VipAddrKey {
            addr: key.addr,
            family: key.family,
            _pad: [0; 3],
        };
        let have = self.vip_addrs.get(&addr, 0).unwrap_or_default();
        let known = self.vips.get(key, 0).is_ok();
        self.index_put(bit, key, info)?;
        self.vips
            .insert(key, info, 0)
            .map_err(map_err(names::VIPS, "writing VIP"))?;
        let want = VipAddrInfo {
            users: have.users + u16::from(!known),
            flags: addr_flags,
        };
        if want != have {
            self.vip_addrs
                .insert(addr, want, 0)
                .map_err(map_err(names::VIP_ADDRS, "writing VIP address"))?;
        }
        Ok(())
    }

    /// Stops `key` being a VIP; its address stops being one when no VIP uses it.
    pub fn remove_vip(&mut self, key: &VipKey) -> Result<(), DataplaneError> {
        if self.vips.get(key, 0).is_err() {
            return Ok(());
        }
        self.vips
            .remove(key)
            .map_err(map_err(names::VIPS, "removing VIP"))?;
        self.index_remove(key)?;
        let addr = VipAddrKey {
            addr: key.addr,
            family: key.family,
            _pad: [0; 3],
        };
        let have = self.vip_addrs.get(&addr, 0).unwrap_or_default();
        match have.users {
            0 | 1 => match self.vip_addrs.remove(&addr) {
                Err(e) if !is_absent(&e) => {
                    Err(map_err(names::VIP_ADDRS, "removing VIP address")(e))
                }
                _ => Ok(()),
            },
            users => self
                .vip_addrs
                .insert(
                    addr,
                    VipAddrInfo {
                        users: users - 1,
                        ..have
                    },
                    0,
                )
                .map_err(map_err(names::VIP_ADDRS, "writing VIP address")),
        }
    }

    /// Clears every `xlb_vip_filter` bit that no VIP in `xlb_vips` uses (after VIPs were
    /// removed; a stale bit only sends some host traffic to the exact lookup), and makes
    /// `xlb_vip_index` agree with `xlb_vips` at every bit.
    pub fn trim_vip_filter(&mut self) -> Result<(), DataplaneError> {
        let mut want = vec![0u64; VIP_FILTER_WORDS as usize];
        for (key, _) in self.vips() {
            let bit = key.filter_bit();
            want[(bit / 64) as usize] |= 1 << (bit % 64);
        }
        for (i, &word) in (0..).zip(&want) {
            if self.filter_word(i)? != word {
                self.set_filter_word(i, word)?;
            }
        }
        // The index of every bit: each set bit's entry from the VIPs, every other one
        // empty (a crash may have left anything).
        let vips = self.vips();
        let mut want_index: std::collections::BTreeMap<u32, Vec<(VipKey, VipInfo)>> =
            Default::default();
        for (key, info) in vips {
            want_index
                .entry(key.filter_bit())
                .or_default()
                .push((key, info));
        }
        let have: Vec<(u32, VipIndexEntry)> = (0u32..)
            .zip(self.vip_index.iter())
            .filter_map(|(bit, e)| Some((bit, e.ok()?)))
            .filter(|(bit, e)| e.info.vip_id != 0 || want_index.contains_key(bit))
            .collect();
        for (bit, have) in have {
            let want = index_entry(want_index.get(&bit).map_or(&[][..], Vec::as_slice));
            if have != want {
                self.set_index(bit, want)?;
            }
        }
        Ok(())
    }

    /// Makes `xlb_vip_index[bit]` include `key` (about to be inserted with `info`): its
    /// own entry if the bit was free or already its, "shared" if another VIP has it.
    fn index_put(&mut self, bit: u32, key: &VipKey, info: &VipInfo) -> Result<(), DataplaneError> {
        let have = self.vip_index(bit)?;
        let alone =
            have.info.vip_id == 0 || (have.info.vip_id != VIP_INDEX_SHARED && have.key == *key);
        let want = if alone {
            index_entry(&[(*key, *info)])
        } else {
            index_entry(&[(*key, *info), (have.key, have.info)])
        };
        if have != want {
            self.set_index(bit, want)?;
        }
        Ok(())
    }

    /// Takes `key` (just removed from `xlb_vips`) out of its bit's `xlb_vip_index`
    /// entry. Only a shared bit needs the remaining VIPs, read from `xlb_vips`.
    fn index_remove(&mut self, key: &VipKey) -> Result<(), DataplaneError> {
        let bit = key.filter_bit();
        let have = self.vip_index(bit)?;
        let want = if have.info.vip_id == VIP_INDEX_SHARED {
            let rest: Vec<(VipKey, VipInfo)> = self
                .vips()
                .into_iter()
                .filter(|(k, _)| k.filter_bit() == bit)
                .collect();
            index_entry(&rest)
        } else if have.key == *key {
            VipIndexEntry::default()
        } else {
            return Ok(());
        };
        if have != want {
            self.set_index(bit, want)?;
        }
        Ok(())
    }

    fn set_index(&mut self, bit: u32, entry: VipIndexEntry) -> Result<(), DataplaneError> {
        self.vip_index
            .set(bit, entry, 0)
            .map_err(map_err(names::VIP_INDEX, format!("writing entry {bit}")))
    }

    /// Entry `bit` of `xlb_vip_index`.
    pub fn vip_index(&self, bit: u32) -> Result<VipIndexEntry, DataplaneError> {
        self.vip_index
            .get(&bit, 0)
            .map_err(map_err(names::VIP_INDEX, format!("reading entry {bit}")))
    }

    /// Word `i` of `xlb_vip_filter`.
    pub fn filter_word(&self, i: u32) -> Result<u64, DataplaneError> {
        self.vip_filter
            .get(&i, 0)
            .map_err(map_err(names::VIP_FILTER, format!("reading word {i}")))
    }

    /// Writes word `i` of `xlb_vip_filter`. The update is a plain copy that a packet may
    /// read half done, but a bit that does not change is equal in the old and the new
    /// word, so any mix of the two leaves every other bit as it was.
    fn set_filter_word(&mut self, i: u32, word: u64) -> Result<(), DataplaneError> {
        self.vip_filter
            .set(i, word, 0)
            .map_err(map_err(names::VIP_FILTER, format!("writing word {i}")))
    }

    /// Every VIP key in the map with its info.
    pub fn vips(&self) -> Vec<(VipKey, VipInfo)> {
        self.vips.iter().filter_map(Result::ok).collect()
    }

    /// Retires VIP `vip_id`'s table by swapping in an empty one (size 0: no backend).
    /// aya 0.14 cannot delete from an ARRAY_OF_MAPS; an empty table frees the old one
    /// just the same. Like every `xlb_rings` update, the syscall returns only after
    /// running programs are done with the old table.
    pub fn remove_table(&mut self, vip_id: u32) -> Result<(), DataplaneError> {
        if self.rings.get(&vip_id, 0).is_err() {
            return Ok(());
        }
        let empty: Array<MapData, u32> = Array::create(TABLE_HEADER, TABLE_MAP_FLAGS)
            .map_err(map_err(names::RINGS, "creating an empty table"))?;
        self.rings.set(vip_id, &empty, 0).map_err(map_err(
            names::RINGS,
            format!("removing VIP {vip_id}'s table"),
        ))?;
        self.changes.forget(vip_id);
        Ok(())
    }

    /// Backend ids that flows may still be sent to: those a flow entry names and the
    /// previous owners of changed slots (a walk of the flow table and the tables). A
    /// new backend must not get one of these ids.
    pub fn referenced_backend_ids(&self) -> std::collections::BTreeSet<u32> {
        let mut ids: std::collections::BTreeSet<u32> = self
            .flows
            .iter()
            .filter_map(Result::ok)
            .map(|(_, v)| v.backend_id)
            .collect();
        for (_, info) in self.vips() {
            if let Ok((_, slots)) = self.table_slots(info.vip_id) {
                ids.extend(slots.iter().map(|&s| Slot::unpack(s).previous));
            }
        }
        ids.remove(&0);
        ids
    }

    /// Deletes the entry of flow `key`, if it has one: its next packet follows the
    /// rule of its slot (`lb_common::unknown_flow_follows_previous`).
    pub fn remove_flow(&mut self, key: &FlowKey) -> Result<(), DataplaneError> {
        match self.flows.remove(key) {
            Err(e) if !is_absent(&e) => Err(map_err(names::FLOWS, "deleting an entry")(e)),
            _ => Ok(()),
        }
    }

    /// Builds a complete inner map for `table` and swaps it in with one update of
    /// `xlb_rings`: a packet sees either the old table or this one, never a mix.
    pub fn install_table(&mut self, table: TableWrite<'_>) -> Result<(), DataplaneError> {
        let size = table.slots.len() as u32;
        // No live table: a fresh one. A live table that cannot be read refuses the
        // install: treating it as absent would drop every previous owner, and the
        // established flows of every moved slot with them.
        let live = match self.rings.get(&table.vip_id, 0) {
            Err(e) if is_absent(&e) => None,
            Err(e) => {
                return Err(map_err(
                    names::RINGS,
                    format!(
                        "reading VIP {}'s live table to carry its flows over (opening a map \
                         by id needs CAP_SYS_ADMIN)",
                        table.vip_id
                    ),
                )(e));
            }
            Ok(inner) => Some(table_contents(&inner, table.vip_id)?.1),
        };
        let merged = flowstate::merge(live.as_deref(), table.slots);
        let now = super::monotonic_ns();
        let inner: Array<MapData, u32> = Array::create(size + TABLE_HEADER, TABLE_MAP_FLAGS)
            .map_err(map_err(
                names::RINGS,
                format!("creating a {size}-slot table for VIP {}", table.vip_id),
            ))?;
        let mut values = vec![0u32; (size + TABLE_HEADER) as usize];
        values[TABLE_HDR_SIZE as usize] = size;
        values[TABLE_HDR_GENERATION as usize] = table.generation;
        values[TABLE_HDR_UDP_GRACE as usize] = u32::try_from(now / 1_000_000_000)
            .unwrap_or(u32::MAX)
            .saturating_add(self.udp_grace_s);
        values[TABLE_HEADER as usize..].copy_from_slice(&merged.slots);
        table_mem::write(inner.map(), &values).map_err(|e| table_err("filling a new table", e))?;
        self.rings.set(table.vip_id, &inner, 0).map_err(map_err(
            names::RINGS,
            format!("switching VIP {} to its new table", table.vip_id),
        ))?;
        if merged.carried_over {
            self.changes.mark(table.vip_id, &merged.moved, now);
        } else {
            self.changes.forget(table.vip_id);
        }
        Ok(())
    }

    /// The live table of `vip_id`: (size, generation, owner of each slot).
    pub fn table(&self, vip_id: u32) -> Result<(u32, u32, Vec<u32>), DataplaneError> {
        let (generation, slots) = self.table_slots(vip_id)?;
        let owners: Vec<u32> = slots.iter().map(|&s| Slot::unpack(s).owner).collect();
        Ok((owners.len() as u32, generation, owners))
    }

    /// The live table of `vip_id` as stored: (generation, packed `Slot` per slot).
    pub fn table_slots(&self, vip_id: u32) -> Result<(u32, Vec<u32>), DataplaneError> {
        let inner: Array<MapData, u32> = self.rings.get(&vip_id, 0).map_err(map_err(
            names::RINGS,
            format!("reading VIP {vip_id}'s table"),
        ))?;
        table_contents(&inner, vip_id)
    }

    /// The end of VIP `vip_id`'s UDP grace window (`CLOCK_MONOTONIC` seconds).
    pub fn table_udp_grace(&self, vip_id: u32) -> Result<u32, DataplaneError> {
        self.table_header(vip_id, TABLE_HDR_UDP_GRACE)
    }

    /// The number of slots of VIP `vip_id`'s live table (0: none, or retired).
    pub fn table_size(&self, vip_id: u32) -> Result<u32, DataplaneError> {
        self.table_header(vip_id, TABLE_HDR_SIZE)
    }

    /// The generation of VIP `vip_id`'s live table (its header only).
    pub fn table_generation(&self, vip_id: u32) -> Result<u32, DataplaneError> {
        self.table_header(vip_id, TABLE_HDR_GENERATION)
    }

    fn table_header(&self, vip_id: u32, field: u32) -> Result<u32, DataplaneError> {
        let what = || format!("reading VIP {vip_id}'s table");
        let inner: Array<MapData, u32> = self
            .rings
            .get(&vip_id, 0)
            .map_err(map_err(names::RINGS, what()))?;
        inner.get(&field, 0).map_err(map_err(names::RINGS, what()))
    }

    /// The flow entry for `key`, if the flow is known.
    pub fn flow(&self, key: &FlowKey) -> Option<FlowValue> {
        self.flows.get(key, 0).ok()
    }

    /// Every flow entry (a walk of the flow table, two syscalls per entry).
    pub fn flows(&self) -> Vec<(FlowKey, FlowValue)> {
        self.flows.iter().filter_map(Result::ok).collect()
    }

    /// Deletes idle and unneeded flow entries and makes stateless again every changed
    /// slot that no longer needs state (`flowstate::plan_sweep`), with entries idle for
    /// more than `idle_ns` expiring. Each slot is cleared with one 4-byte store into the
    /// live table, which a packet sees whole or not at all.
    pub fn sweep_flows(&mut self, idle_ns: u64) -> Result<FlowSweep, DataplaneError> {
        let seed = self.config()?.hash_seed;
        let mut tables = Vec::new();
        for (key, info) in self.vips() {
            if let Ok((_, slots)) = self.table_slots(info.vip_id) {
                tables.push(LiveTable {
                    vip_id: info.vip_id,
                    key,
                    slots,
                });
            }
        }
        let now = super::monotonic_ns();
        let plan =
            flowstate::plan_sweep(self.flows(), &tables, seed, now, idle_ns, &mut self.changes);
        for key in &plan.delete {
            self.remove_flow(key)?;
        }
        let mut by_vip: std::collections::BTreeMap<u32, Vec<(u32, u32)>> = Default::default();
        for &(vip_id, slot, stored) in &plan.clear {
            by_vip.entry(vip_id).or_default().push((slot, stored));
        }
        for (vip_id, slots) in by_vip {
            let what = || format!("clearing changed slots of VIP {vip_id}");
            let inner: Array<MapData, u32> = self
                .rings
                .get(&vip_id, 0)
                .map_err(map_err(names::RINGS, what()))?;
            let clear: Vec<(usize, u32, u32)> = slots
                .iter()
                .map(|&(slot, stored)| {
                    let owner = Slot::unpack(stored).owner;
                    ((TABLE_HEADER + slot) as usize, stored, owner)
                })
                .collect();
            table_mem::replace(inner.map(), &clear).map_err(|e| table_err(&what(), e))?;
        }
        Ok(FlowSweep {
            entries: plan.entries,
            deleted: plan.delete.len(),
            cleared: plan.clear.len(),
            changed: plan.changed,
        })
    }

    /// The flow table's counters, summed over CPUs.
    pub fn flow_stats(&self) -> Result<FlowStats, DataplaneError> {
        let per_cpu = self
            .flow_stats
            .get(&0, 0)
            .map_err(map_err(names::FLOW_STATS, "reading"))?;
        Ok(per_cpu.iter().fold(FlowStats::default(), |a, s| FlowStats {
            inserts: a.inserts + s.inserts,
            refused_full: a.refused_full + s.refused_full,
            refused_rate: a.refused_rate + s.refused_rate,
            ..FlowStats::default()
        }))
    }

    /// The flow table's capacity.
    pub fn flow_capacity(&self) -> Result<u32, DataplaneError> {
        Ok(self
            .flows
            .map()
            .info()
            .map_err(map_err(names::FLOWS, "reading its info"))?
            .max_entries())
    }

    /// Zeroes backend `id`'s counters (when the id is retired or gets a new owner).
    pub fn reset_backend_stats(&mut self, id: u32) -> Result<(), DataplaneError> {
        zero(&mut self.backend_stats, names::BACKEND_STATS, id)
    }

    /// Zeroes VIP `id`'s counters (when the id is retired).
    pub fn reset_vip_stats(&mut self, id: u32) -> Result<(), DataplaneError> {
        zero(&mut self.vip_stats, names::VIP_STATS, id)
    }

    /// Counters of backend `id`, summed over CPUs.
    pub fn backend_stats(&self, id: u32) -> Result<BackendStats, DataplaneError> {
        let per_cpu = self.backend_stats.get(&id, 0).map_err(map_err(
            names::BACKEND_STATS,
            format!("reading backend {id}"),
        ))?;
        Ok(per_cpu
            .iter()
            .fold(BackendStats::default(), |a, s| BackendStats {
                packets: a.packets + s.packets,
                bytes: a.bytes + s.bytes,
                new_flows: a.new_flows + s.new_flows,
            }))
    }

    /// Counters of VIP `id`, summed over CPUs.
    pub fn vip_stats(&self, id: u32) -> Result<VipStats, DataplaneError> {
        let per_cpu = self
            .vip_stats
            .get(&id, 0)
            .map_err(map_err(names::VIP_STATS, format!("reading VIP {id}")))?;
        Ok(per_cpu.iter().fold(VipStats::default(), |a, s| VipStats {
            packets: a.packets + s.packets,
            bytes: a.bytes + s.bytes,
            new_flows: a.new_flows + s.new_flows,
            drops: a.drops + s.drops,
            stateful: a.stateful + s.stateful,
        }))
    }

    /// Packets and bytes per reason, summed over CPUs, in `Reason::ALL` order.
    pub fn reason_stats(&self) -> Result<Vec<(Reason, ReasonStats)>, DataplaneError> {
        let mut out = Vec::with_capacity(REASON_COUNT as usize);
        for reason in Reason::ALL {
            let per_cpu = self.reasons.get(&reason.index(), 0).map_err(map_err(
                names::REASON_STATS,
                format!("reading {}", reason.name()),
            ))?;
            let sum = per_cpu
                .iter()
                .fold(ReasonStats::default(), |a, s| ReasonStats {
                    packets: a.packets + s.packets,
                    bytes: a.bytes + s.bytes,
                });
            out.push((reason, sum));
        }
        Ok(out)
    }
}
