//! The XDP object, built by `build.rs` and embedded in the binary.

/// The ELF object holding the `xlb` XDP program and its maps.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xlb"));

/// Name of the XDP program inside [`EBPF_OBJECT`].
pub const PROGRAM_NAME: &str = "xlb";
