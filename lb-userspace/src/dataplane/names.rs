//! The name maps: what every backend, VIP and reason id is, for a person with `bpftool`
//! and no daemon. `xlb_be_name` (backend id -> backend, VIP, address, VIP id) and
//! `xlb_vip_name` (VIP id -> name, listening address, forwarding) hold only the running
//! generation's entries; `xlb_reason_name` holds every verdict reason. The program never
//! reads them, so they cost nothing per packet. Userspace creates them with BTF of its
//! own (`btf`), in which names are `char` arrays that bpftool prints as strings, and
//! recreates them on every load (the controller refills them from the running
//! generation).

use std::{
    ffi::c_void,
    os::fd::{FromRawFd, OwnedFd},
    path::Path,
};

use aya::maps::{Array, HashMap, Map, MapData};
use bytemuck::{Pod, Zeroable};
use lb_common::reason::{REASON_COUNT, Reason, XDP_DROP, XDP_PASS, XDP_TX};

pub(crate) use super::btf::text;
use super::{
    DataplaneError,
    btf::{self, Field},
    maps::{map_err, syscall_err},
    pins,
};

/// Backend id -> who it is.
pub const BACKEND_NAMES: &str = "xlb_be_name";
/// VIP id -> which VIP it is.
pub const VIP_NAMES: &str = "xlb_vip_name";
/// Reason index (the key of `xlb_reasons`) -> its name.
pub const REASON_NAMES: &str = "xlb_reason_name";
/// Every name map, for teardown.
pub const ALL: [&str; 3] = [BACKEND_NAMES, VIP_NAMES, REASON_NAMES];

/// Value of `xlb_be_name`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct BackendName {
    pub backend: [u8; 64],
    pub vip: [u8; 64],
    /// The backend's address as configured, e.g. `198.18.0.21` or `2001:db8::21`.
    pub address: [u8; 48],
    /// Key of the VIP's counters in `xlb_vip_stats`.
    pub vip_id: u32,
}

/// Value of `xlb_vip_name`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct VipName {
    pub name: [u8; 64],
    /// `198.18.0.100:80/tcp` or `[2001:db8::100]:80/tcp`.
    pub listen: [u8; 64],
    /// `l2-dsr`.
    pub forwarding: [u8; 16],
}

/// Value of `xlb_reason_name`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct ReasonName {
    pub name: [u8; 32],
    /// `tx`, `pass` or `drop`.
    pub action: [u8; 8],
}

const BACKEND_FIELDS: [Field; 4] = [
    Field::Text("backend", 64),
    Field::Text("vip", 64),
    Field::Text("address", 48),
    Field::U32("vip_id"),
];
const VIP_FIELDS: [Field; 3] = [
    Field::Text("name", 64),
    Field::Text("listen", 64),
    Field::Text("forwarding", 16),
];
const REASON_FIELDS: [Field; 2] = [Field::Text("name", 32), Field::Text("action", 8)];

// The BTF the kernel and bpftool see describes exactly the Rust types.
const _: () = {
    assert!(btf::layout_matches(
        &BACKEND_FIELDS,
        size_of::<BackendName>()
    ));
    assert!(btf::layout_matches(&VIP_FIELDS, size_of::<VipName>()));
    assert!(btf::layout_matches(&REASON_FIELDS, size_of::<ReasonName>()));
};

// SAFETY: #[repr(C)] and bytemuck::Pod: no padding, every bit pattern valid.
unsafe impl aya::Pod for BackendName {}
// SAFETY: as above.
unsafe impl aya::Pod for VipName {}
// SAFETY: as above.
unsafe impl aya::Pod for ReasonName {}

impl ReasonName {
    pub fn of(reason: Reason) -> Self {
        let action = match reason.action() {
            XDP_TX => "tx",
            XDP_PASS => "pass",
            XDP_DROP => "drop",
            _ => "aborted",
        };
        ReasonName {
            name: text(reason.name()),
            action: text(action),
        }
    }
}

/// Handles on the name maps.
pub struct NameMaps {
    pub(super) backends: HashMap<MapData, u32, BackendName>,
    pub(super) vips: HashMap<MapData, u32, VipName>,
}

const MAP_TYPE_HASH: u32 = 1;
const MAP_TYPE_ARRAY: u32 = 2;

impl NameMaps {
    /// Creates the three maps afresh under `pin_dir` (replacing pins of an earlier load)
    /// with room for `max_backends` and `max_vips` entries, and fills the reason names.
    pub(super) fn create(
        pin_dir: &Path,
        max_backends: u32,
        max_vips: u32,
    ) -> Result<Self, DataplaneError> {
        let (blob, ids) = btf::build(&[
            ("xlb_be_name", &BACKEND_FIELDS),
            ("xlb_vip_name", &VIP_FIELDS),
            ("xlb_reason_name", &REASON_FIELDS),
        ]);
        let btf_fd = load_btf(&blob)
            .map_err(|e| syscall_err(BACKEND_NAMES, "loading BTF", "BPF_BTF_LOAD", e))?;
        let make = |name: &'static str, map_type, entries, value: (u32, u32)| {
            let fd = create_map(name, map_type, entries, value, ids.u32_id, &btf_fd)
                .map_err(|e| syscall_err(name, "creating", "BPF_MAP_CREATE", e))?;
            let data = MapData::from_fd(fd).map_err(map_err(name, "adopting"))?;
            let path = pins::map(pin_dir, name);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(DataplaneError::Unpin { path, source }),
            }
            data.pin(&path)
                .map_err(|source| DataplaneError::Pin { path, source })?;
            Ok::<_, DataplaneError>(data)
        };
        let backends = make(
            BACKEND_NAMES,
            MAP_TYPE_HASH,
            max_backends,
            (size_of::<BackendName>() as u32, ids.structs[0]),
        )?;
        let vips = make(
            VIP_NAMES,
            MAP_TYPE_HASH,
            max_vips,
            (size_of::<VipName>() as u32, ids.structs[1]),
        )?;
        let reasons = make(
            REASON_NAMES,
            MAP_TYPE_ARRAY,
            REASON_COUNT,
            (size_of::<ReasonName>() as u32, ids.structs[2]),
        )?;
        let mut reasons: Array<MapData, ReasonName> =
            Array::try_from(Map::Array(reasons)).map_err(map_err(REASON_NAMES, "typing"))?;
        for reason in Reason::ALL {
            reasons
                .set(reason.index(), ReasonName::of(reason), 0)
                .map_err(map_err(REASON_NAMES, format!("writing {}", reason.name())))?;
        }
        Ok(NameMaps {
            backends: HashMap::try_from(Map::HashMap(backends))
                .map_err(map_err(BACKEND_NAMES, "typing"))?,
            vips: HashMap::try_from(Map::HashMap(vips)).map_err(map_err(VIP_NAMES, "typing"))?,
        })
    }

    /// Makes `xlb_be_name` hold exactly `entries`.
    pub(super) fn set_backends(
        &mut self,
        entries: &[(u32, BackendName)],
    ) -> Result<(), DataplaneError> {
        replace(&mut self.backends, BACKEND_NAMES, entries)
    }

    /// Makes `xlb_vip_name` hold exactly `entries`.
    pub(super) fn set_vips(&mut self, entries: &[(u32, VipName)]) -> Result<(), DataplaneError> {
        replace(&mut self.vips, VIP_NAMES, entries)
    }
}

/// Writes `entries` and removes every other key.
fn replace<V: aya::Pod + PartialEq>(
    map: &mut HashMap<MapData, u32, V>,
    name: &'static str,
    entries: &[(u32, V)],
) -> Result<(), DataplaneError> {
    let stale: Vec<u32> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !entries.iter().any(|(id, _)| id == k))
        .collect();
    for (id, value) in entries {
        if map.get(id, 0).ok().as_ref() != Some(value) {
            map.insert(id, value, 0)
                .map_err(map_err(name, format!("writing id {id}")))?;
        }
    }
    for id in stale {
        map.remove(&id)
            .map_err(map_err(name, format!("removing id {id}")))?;
    }
    Ok(())
}

/// `union bpf_attr` for BPF_BTF_LOAD (every field up to `btf_token_fd`, so no padding
/// reaches the kernel).
#[repr(C)]
struct BtfLoadAttr {
    btf: u64,
    btf_log_buf: u64,
    btf_size: u32,
    btf_log_size: u32,
    btf_log_level: u32,
    btf_log_true_size: u32,
    btf_flags: u32,
    btf_token_fd: i32,
}

/// `union bpf_attr` for BPF_MAP_CREATE, up to `map_token_fd`.
#[repr(C)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
    map_ifindex: u32,
    btf_fd: u32,
    btf_key_type_id: u32,
    btf_value_type_id: u32,
    btf_vmlinux_value_type_id: u32,
    map_extra: u64,
    value_type_btf_obj_fd: i32,
    map_token_fd: i32,
}

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_BTF_LOAD: libc::c_long = 18;

/// bpf(2) with a command that returns a new file descriptor.
fn bpf_fd<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<OwnedFd> {
    // SAFETY: `attr` is a live, fully initialised bpf_attr prefix of the given size.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr).cast::<c_void>(),
            size_of::<T>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: on success these commands return a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as i32) })
}

fn load_btf(blob: &[u8]) -> std::io::Result<OwnedFd> {
    let mut log = vec![0u8; 4096];
    let mut attr = BtfLoadAttr {
        btf: blob.as_ptr() as u64,
        btf_log_buf: log.as_mut_ptr() as u64,
        btf_size: blob.len() as u32,
        btf_log_size: log.len() as u32,
        btf_log_level: 1,
        btf_log_true_size: 0,
        btf_flags: 0,
        btf_token_fd: 0,
    };
    bpf_fd(BPF_BTF_LOAD, &mut attr).map_err(|e| {
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        std::io::Error::new(
            e.kind(),
            format!("{e}: {}", String::from_utf8_lossy(&log[..end]).trim()),
        )
    })
}

fn create_map(
    name: &str,
    map_type: u32,
    max_entries: u32,
    (value_size, value_type): (u32, u32),
    key_type: u32,
    btf: &OwnedFd,
) -> std::io::Result<OwnedFd> {
    use std::os::fd::AsRawFd as _;
    let mut attr = MapCreateAttr {
        map_type,
        key_size: 4,
        value_size,
        max_entries,
        map_flags: 0,
        inner_map_fd: 0,
        numa_node: 0,
        map_name: text(name),
        map_ifindex: 0,
        btf_fd: btf.as_raw_fd().cast_unsigned(),
        btf_key_type_id: key_type,
        btf_value_type_id: value_type,
        btf_vmlinux_value_type_id: 0,
        map_extra: 0,
        value_type_btf_obj_fd: 0,
        map_token_fd: 0,
    };
    bpf_fd(BPF_MAP_CREATE, &mut attr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_kernel_object_names_and_reason_names_fit() {
        for name in ALL {
            assert!(name.len() <= 15, "{name}");
        }
        for reason in Reason::ALL {
            assert!(reason.name().len() < 32, "{}", reason.name());
        }
    }
}
