//! The XDP object, built by `build.rs` and embedded in the binary. Without the `bpf`
//! feature the objects are empty: such an `xlb` checks configs but cannot load a program.

/// Whether this build carries the XDP objects (the `bpf` feature).
pub const HAS_DATAPLANE: bool = cfg!(feature = "bpf");

/// The ELF object holding the `xlb` XDP program and its maps.
#[cfg(feature = "bpf")]
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xlb"));
/// Not built: see [`HAS_DATAPLANE`].
#[cfg(not(feature = "bpf"))]
pub static EBPF_OBJECT: &[u8] = &[];

/// Name of the XDP program inside [`EBPF_OBJECT`].
pub const PROGRAM_NAME: &str = "xlb";

/// An object whose only program, [`PASS_PROGRAM_NAME`], returns XDP_PASS: attached to the
/// veth peer of the load balancer so that its XDP_TX frames are received (veth delivers
/// XDP frames only to a peer that runs XDP).
#[cfg(feature = "bpf")]
pub static PASS_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xlb-pass"));
/// Not built: see [`HAS_DATAPLANE`].
#[cfg(not(feature = "bpf"))]
pub static PASS_OBJECT: &[u8] = &[];

/// Name of the XDP_PASS program inside [`PASS_OBJECT`].
pub const PASS_PROGRAM_NAME: &str = "xlb_pass";

/// Name of the XDP_DROP program inside [`PASS_OBJECT`]: the benchmarks' floor.
pub const DROP_PROGRAM_NAME: &str = "xlb_drop";

/// The backend-side decapsulation program of `forwarding = "ipip"` (`xlb decap`); see
/// `lb-ebpf/src/bin/xlb-decap.rs`.
#[cfg(feature = "bpf")]
pub static DECAP_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xlb-decap"));
/// Not built: see [`HAS_DATAPLANE`].
#[cfg(not(feature = "bpf"))]
pub static DECAP_OBJECT: &[u8] = &[];

/// Name of the XDP program inside [`DECAP_OBJECT`].
pub const DECAP_PROGRAM_NAME: &str = "xlb_decap";

/// The benchmark's traffic generator (`xlb_gen`), XDP_TX reflector (`xlb_reflect`) and
/// counting sink (`xlb_sink`); see `lb-ebpf/src/bin/xlb-bench-progs.rs`.
#[cfg(feature = "bpf")]
pub static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xlb-bench-progs"));
/// Not built: see [`HAS_DATAPLANE`].
#[cfg(not(feature = "bpf"))]
pub static BENCH_OBJECT: &[u8] = &[];

#[cfg(all(test, feature = "bpf"))]
mod tests {
    use super::*;

    #[test]
    fn object_defines_every_map_and_the_program() {
        let obj = aya_obj::Object::parse(EBPF_OBJECT).expect("embedded object parses");
        let ours: Vec<&str> = lb_common::maps::ALL
            .iter()
            .chain(&lb_common::maps::PROGRAM_LOCAL)
            .copied()
            .collect();
        for name in &ours {
            assert!(
                obj.maps.contains_key(*name),
                "map {name} missing from the object"
            );
        }
        let extra: Vec<&String> = obj
            .maps
            .keys()
            // aya-log's level (`AYA_LOG_LEVEL`), a constant set before load.
            .filter(|m| !ours.contains(&m.as_str()) && m.as_str() != ".rodata")
            .collect();
        assert!(extra.is_empty(), "unexpected extra maps: {extra:?}");
        assert!(obj.programs.contains_key(PROGRAM_NAME));
    }
}
