//! The thin layer between the control plane and the kernel: load and pin the XDP program
//! and its maps (`loader`), and read and write those maps (`maps`). Everything above this
//! module is pure and testable without BPF.

mod btf;
pub mod loader;
pub mod maps;
pub mod names;
pub mod pins;
mod resize;
mod table_mem;
mod trace;

use std::path::PathBuf;

use thiserror::Error;

pub use loader::{AttachMode, Dataplane, LoadOptions};
pub use maps::{FlowSweep, Maps, TableWrite};
pub use trace::TraceSwitch;

/// `CLOCK_MONOTONIC` in ns, the program's clock: its `bpf_ktime_get_coarse_ns` trails
/// this by at most a tick.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to write; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec.cast_unsigned() * 1_000_000_000 + ts.tv_nsec.cast_unsigned()
}

#[derive(Debug, Error)]
pub enum DataplaneError {
    #[error(
        "this xlb was built without its XDP program (cargo feature `bpf` off): it validates \
         and diffs configs only; install the xlb package or build with default features"
    )]
    NotBuilt,
    #[error(
        "{path} is not a mounted bpf filesystem; mount it with `mount -t bpf bpf /sys/fs/bpf` (or run `cargo xtask setup`)"
    )]
    NoBpffs { path: PathBuf },
    #[error("cannot create pin directory {path}: {source}")]
    PinDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot unpin {path}: {source}")]
    Unpin {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("loading the XDP object failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("reading the program's trace records: {0}")]
    Log(#[from] aya_log::Error),
    #[error("the XDP object has no map or program named {name:?}: rebuild xlb")]
    Missing { name: &'static str },
    #[error("map {map}: {what}: {source}")]
    Map {
        map: &'static str,
        what: String,
        source: aya::maps::MapError,
    },
    #[error(
        "pinned map {path} does not match this build ({what}); run `xlb teardown` or remove {dir} to start afresh"
    )]
    PinMismatch {
        path: PathBuf,
        dir: PathBuf,
        what: String,
    },
    #[error("cannot resize {path} to the configured size: {what}; nothing was changed")]
    Resize { path: PathBuf, what: String },
    #[error(
        "the pinned flow table holds {have} entries but daemon.flow_capacity is {want}: \
         resizing recreates it empty, and the flows in slots a recent change moved lose \
         their entries (such a flow that started after the change then moves). Keep \
         flow_capacity = {have}, or restart with `xlb run --recreate-flow-table` to accept \
         that"
    )]
    FlowCapacity { have: u32, want: u32 },
    #[error("XDP program: {what}: {source}")]
    Program {
        what: String,
        source: aya::programs::ProgramError,
    },
    #[error("pinning {path}: {source}")]
    Pin {
        path: PathBuf,
        source: aya::pin::PinError,
    },
    #[error("pinned link {path}: {source}")]
    Link {
        path: PathBuf,
        source: aya::programs::links::LinkError,
    },
    #[error("cannot read the interface MAC of {iface}: {source}")]
    InterfaceMac {
        iface: String,
        source: std::io::Error,
    },
}
