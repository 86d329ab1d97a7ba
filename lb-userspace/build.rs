//! Builds the XDP program (`lb-ebpf`) for the BPF target with the `nightly` toolchain and
//! bpf-linker, and leaves the object in OUT_DIR, where `src/object.rs` embeds it. So a
//! plain `cargo build` produces an `xlb` that carries its own data plane.
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let ebpf_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../lb-ebpf");
    println!(
        "cargo:rerun-if-changed={}",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../lb-common/src")
    );
    aya_build::build_ebpf(
        [Package {
            name: "lb-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        Toolchain::Nightly,
    )
}
