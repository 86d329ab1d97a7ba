//! Loads the embedded XDP object with every map pinned under one directory, attaches the
//! program, and pins the attachment. Loading again against existing pins reuses the
//! pinned maps (flows, tables and counters survive) and swaps the new program into the
//! pinned link atomically, so traffic never sees a detached interface.

use std::{
    ffi::CString,
    mem::MaybeUninit,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use lb_common::maps as names;
use serde::{Deserialize, Serialize};

use super::{
    DataplaneError, Maps,
    names::NameMaps,
    pins,
    resize::{self, Carried},
};
use crate::object::{EBPF_OBJECT, PROGRAM_NAME};

/// Magic number of bpffs in `statfs.f_type` (linux/magic.h BPF_FS_MAGIC).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// How to attach the program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// In the driver (fast; the interface must support it).
    Native,
    /// In the generic network stack (works everywhere, slower).
    Generic,
    /// Native where the driver supports it, else generic (the kernel decides).
    Auto,
}

impl AttachMode {
    fn flags(self) -> XdpMode {
        match self {
            AttachMode::Native => XdpMode::Driver,
            AttachMode::Generic => XdpMode::Skb,
            AttachMode::Auto => XdpMode::Default,
        }
    }
}

impl std::str::FromStr for AttachMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "native" => Ok(AttachMode::Native),
            "generic" => Ok(AttachMode::Generic),
            "auto" => Ok(AttachMode::Auto),
            other => Err(format!(
                "unknown XDP mode {other:?}: expected native, generic or auto"
            )),
        }
    }
}

/// What `Dataplane::load` needs.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Directory on bpffs for every pinned object.
    pub pin_dir: PathBuf,
    /// Capacity of the flow table. A pinned flow table of another capacity is refused,
    /// unless `recreate_flow_table` says to replace it.
    pub flow_capacity: u32,
    /// Replace a pinned flow table whose capacity differs (its flows lose their entries).
    pub recreate_flow_table: bool,
    /// Entries of the per-VIP arrays (`[daemon] max_vips`); pinned arrays of another
    /// size are resized with their contents (`resize`).
    pub max_vips: u32,
    /// Entries of the per-backend arrays (`[daemon] max_backends`), likewise.
    pub max_backends: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            pin_dir: PathBuf::from(pins::DEFAULT_PIN_DIR),
            flow_capacity: names::DEFAULT_FLOW_CAPACITY,
            recreate_flow_table: false,
            max_vips: names::DEFAULT_MAX_VIPS,
            max_backends: names::DEFAULT_MAX_BACKENDS,
        }
    }
}

/// A loaded data plane: the program (loaded, maybe attached) and its pinned maps.
pub struct Dataplane {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    maps: Maps,
}

impl Dataplane {
    /// Loads the program and creates or adopts every pinned map under `opts.pin_dir`.
    pub fn load(opts: &LoadOptions) -> Result<Self, DataplaneError> {
        if !crate::object::HAS_DATAPLANE {
            return Err(DataplaneError::NotBuilt);
        }
        ensure_pin_dir(&opts.pin_dir)?;
        check_flow_capacity(opts)?;
        let carried = Carried::take(&opts.pin_dir, opts.max_vips, opts.max_backends)?;
        let (mut ebpf, mut maps) = match Self::load_object(opts) {
            Ok(loaded) => loaded,
            Err(e) => {
                carried.put_back();
                return Err(e);
            }
        };
        carried.restore(&mut maps)?;
        // A fresh `xlb_config` is all zero: a guard of 0 would record no flow at all.
        if maps.config()?.flow_insert_rate == 0 {
            maps.set_flow_insert_rate(names::DEFAULT_FLOW_INSERT_RATE)?;
        }
        let program = program_mut(&mut ebpf)?;
        program.load().map_err(|source| DataplaneError::Program {
            what: "verifier rejected or kernel refused the program".into(),
            source,
        })?;
        Ok(Dataplane {
            ebpf,
            pin_dir: opts.pin_dir.clone(),
            maps,
        })
    }

    /// The object with every map created or adopted from its pin, sized as `opts` says.
    fn load_object(opts: &LoadOptions) -> Result<(Ebpf, Maps), DataplaneError> {
        let paths: Vec<(&'static str, PathBuf)> = names::ALL
            .iter()
            .map(|&name| (name, pins::map(&opts.pin_dir, name)))
            .collect();
        let mut loader = EbpfLoader::new();
        loader.map_max_entries(names::FLOWS, opts.flow_capacity);
        for name in names::SIZED_BY_VIPS {
            loader.map_max_entries(name, opts.max_vips);
        }
        for name in names::SIZED_BY_BACKENDS {
            loader.map_max_entries(name, opts.max_backends);
        }
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(EBPF_OBJECT)?;
        let mut maps = Maps::take(&mut ebpf, &opts.pin_dir)?;
        maps.names = Some(NameMaps::create(
            &opts.pin_dir,
            opts.max_backends,
            opts.max_vips,
        )?);
        Ok((ebpf, maps))
    }

    /// The maps, for reading and writing.
    pub fn maps(&mut self) -> &mut Maps {
        &mut self.maps
    }

    /// Gives up the program handle (it stays loaded through its pin and link) and keeps
    /// the maps, for the controller.
    pub fn into_maps(self) -> Maps {
        self.maps
    }

    pub(super) fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// The loaded program, for BPF_PROG_TEST_RUN.
    pub fn program(&mut self) -> Result<&mut Xdp, DataplaneError> {
        program_mut(&mut self.ebpf)
    }

    /// Attaches to `iface`, or, if a pinned link exists, swaps this program into it.
    /// Also records the interface's MAC as the source MAC of forwarded frames.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<(), DataplaneError> {
        let mac = interface_mac(iface)?;
        self.maps.set_interface_mac(mac)?;
        let link_path = self.pin_dir.join(pins::LINK);
        let prog_path = self.pin_dir.join(pins::PROGRAM);
        let program = program_mut(&mut self.ebpf)?;
        if link_path.exists() {
            let pinned =
                PinnedLink::from_pin(&link_path).map_err(|source| DataplaneError::Link {
                    path: link_path.clone(),
                    source,
                })?;
            let link =
                XdpLink::try_from(FdLink::from(pinned)).map_err(|source| DataplaneError::Link {
                    path: link_path.clone(),
                    source,
                })?;
            program
                .attach_to_link(link)
                .map_err(|source| DataplaneError::Program {
                    what: format!("replacing the program in {}", link_path.display()),
                    source,
                })?;
        } else {
            let id =
                program
                    .attach(iface, mode.flags())
                    .map_err(|source| DataplaneError::Program {
                        what: format!("attaching to {iface} in {mode:?} mode"),
                        source,
                    })?;
            let link = program
                .take_link(id)
                .map_err(|source| DataplaneError::Program {
                    what: "taking the XDP link".into(),
                    source,
                })?;
            // A netlink attachment (kernels without XDP bpf_link) cannot be pinned.
            let fd_link = FdLink::try_from(link).map_err(|source| DataplaneError::Link {
                path: link_path.clone(),
                source,
            })?;
            fd_link
                .pin(&link_path)
                .map_err(|source| DataplaneError::Pin {
                    path: link_path.clone(),
                    source,
                })?;
        }
        // The pinned program is for inspection (`bpftool prog show pinned`); the link
        // alone keeps the program attached.
        if prog_path.exists() {
            #[expect(
                clippy::let_underscore_must_use,
                reason = "if the old pin stays, pinning below fails and says why"
            )]
            let _ = std::fs::remove_file(&prog_path);
        }
        program_mut(&mut self.ebpf)?
            .pin(&prog_path)
            .map_err(|source| DataplaneError::Pin {
                path: prog_path,
                source,
            })?;
        Ok(())
    }
}

/// A pinned flow table keeps its capacity: resizing means a new, empty table. Refused
/// unless asked for, since every established flow then loses its entry.
fn check_flow_capacity(opts: &LoadOptions) -> Result<(), DataplaneError> {
    let Some(have) = resize::pinned_size(&opts.pin_dir, names::FLOWS)? else {
        return Ok(());
    };
    if have == opts.flow_capacity {
        return Ok(());
    }
    if !opts.recreate_flow_table {
        return Err(DataplaneError::FlowCapacity {
            have,
            want: opts.flow_capacity,
        });
    }
    let path = pins::map(&opts.pin_dir, names::FLOWS);
    std::fs::remove_file(&path).map_err(|source| DataplaneError::Unpin {
        path: path.clone(),
        source,
    })
}

fn program_mut(ebpf: &mut Ebpf) -> Result<&mut Xdp, DataplaneError> {
    ebpf.program_mut(PROGRAM_NAME)
        .and_then(|p| <&mut Xdp>::try_from(p).ok())
        .ok_or(DataplaneError::Missing { name: PROGRAM_NAME })
}

/// Creates `dir` and checks that it is on bpffs (pins elsewhere fail obscurely).
fn ensure_pin_dir(dir: &Path) -> Result<(), DataplaneError> {
    std::fs::create_dir_all(dir).map_err(|source| DataplaneError::PinDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let c = CString::new(dir.as_os_str().as_encoded_bytes()).map_err(|_nul_byte| {
        DataplaneError::NoBpffs {
            path: dir.to_path_buf(),
        }
    })?;
    let mut st = MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated path and `st` is a properly sized buffer.
    let rc = unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) };
    // SAFETY: statfs filled `st` when it returned 0.
    if rc != 0 || unsafe { st.assume_init() }.f_type != BPF_FS_MAGIC {
        return Err(DataplaneError::NoBpffs {
            path: dir.to_path_buf(),
        });
    }
    Ok(())
}

/// The MAC of `iface` in the calling thread's network namespace (SIOCGIFHWADDR; sysfs
/// would show the namespace that mounted it, not necessarily ours).
pub fn interface_mac(iface: &str) -> Result<[u8; 6], DataplaneError> {
    let err = |source| DataplaneError::InterfaceMac {
        iface: iface.to_string(),
        source,
    };
    if iface.len() >= libc::IFNAMSIZ || iface.is_empty() {
        return Err(err(std::io::Error::from(std::io::ErrorKind::InvalidInput)));
    }
    // SAFETY: plain socket(2) call; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(iface.bytes()) {
        *dst = src.cast_signed();
    }
    // SAFETY: fd is a valid socket and req a valid ifreq with a NUL-terminated name.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut req) };
    let result = if rc < 0 {
        Err(err(std::io::Error::last_os_error()))
    } else {
        // SAFETY: SIOCGIFHWADDR filled the ifru_hwaddr member of the union.
        let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
        let mut mac = [0u8; 6];
        for (m, d) in mac.iter_mut().zip(data.iter()) {
            *m = d.cast_unsigned();
        }
        Ok(mac)
    };
    // SAFETY: closing the socket opened above.
    unsafe { libc::close(fd) };
    result
}

/// What `teardown` found and did.
#[derive(Debug, Serialize, Deserialize)]
pub struct Teardown {
    pub pin_dir: PathBuf,
    /// The pinned XDP link, if there was one.
    pub link: Option<LinkReport>,
    /// Every pin removed (and the directory, if it could be).
    pub removed: Vec<PathBuf>,
    /// The directory stays: it holds something that is not xlb's.
    #[serde(default)]
    pub kept_dir: bool,
}

/// The XDP link a teardown unpinned.
#[derive(Debug, Serialize, Deserialize)]
pub struct LinkReport {
    pub id: u32,
    pub program_id: u32,
    /// Whether the link is gone from the kernel afterwards (the program detached). False
    /// when another process still holds it open.
    pub detached: bool,
}

impl std::fmt::Display for Teardown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dir = self.pin_dir.display();
        match &self.link {
            Some(l) if l.detached => writeln!(
                f,
                "XDP detached: link {} (program {}) was pinned in {dir} and is gone",
                l.id, l.program_id
            )?,
            Some(l) => writeln!(
                f,
                "link {} (program {}) unpinned from {dir} but STILL ATTACHED: another process \
                 holds it (`bpftool link show id {}`)",
                l.id, l.program_id, l.id
            )?,
            None => writeln!(f, "no pinned XDP link in {dir}: nothing was detached")?,
        }
        if self.removed.is_empty() {
            write!(f, "nothing was pinned in {dir}")?;
        } else {
            write!(
                f,
                "removed {} pinned objects from {dir}",
                self.removed.len()
            )?;
        }
        if self.kept_dir {
            write!(f, "; {dir} itself stays: it holds files that are not xlb's")?;
        }
        Ok(())
    }
}

/// Unpins everything under `pin_dir`: the link (which detaches the program once no process
/// holds it), the program and every map; reports what it found and whether XDP is gone.
pub fn teardown(pin_dir: &Path) -> Result<Teardown, DataplaneError> {
    let mut removed = Vec::new();
    let link_path = pin_dir.join(pins::LINK);
    // Hold the link open across the unpin so its ids can be read; closing this last fd
    // releases the link synchronously, so the check below sees the result.
    let link = PinnedLink::from_pin(&link_path)
        .ok()
        .map(FdLink::from)
        .and_then(|l| l.info().ok().map(|i| (l, i.id(), i.program_id())));
    let mut paths = vec![link_path, pin_dir.join(pins::PROGRAM)];
    paths.extend(names::ALL.iter().map(|n| pins::map(pin_dir, n)));
    paths.extend(super::names::ALL.iter().map(|n| pins::map(pin_dir, n)));
    for path in paths {
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(DataplaneError::Unpin { path, source }),
        }
    }
    // A directory that holds anything else (another program's pins) is left in place:
    // everything of xlb's is gone already.
    let kept_dir = match std::fs::remove_dir(pin_dir) {
        Ok(()) => {
            removed.push(pin_dir.to_path_buf());
            false
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty => true,
        Err(source) => {
            return Err(DataplaneError::Unpin {
                path: pin_dir.to_path_buf(),
                source,
            });
        }
    };
    let link = link.map(|(fd, id, program_id)| {
        drop(fd);
        let alive = aya::programs::loaded_links()
            .filter_map(Result::ok)
            .any(|l| l.id() == id);
        LinkReport {
            id,
            program_id,
            detached: !alive,
        }
    });
    Ok(Teardown {
        pin_dir: pin_dir.to_path_buf(),
        link,
        removed,
        kept_dir,
    })
}
