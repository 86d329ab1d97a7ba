//! Builds the XDP program (`lb-ebpf`) for the BPF target with the `nightly` toolchain and
//! bpf-linker, and leaves the object in OUT_DIR, where `src/object.rs` embeds it. So a
//! plain `cargo build` produces an `xlb` that carries its own data plane. Without the `bpf`
//! feature nothing is built here: that `xlb` validates and diffs configs but cannot run.

fn main() -> anyhow::Result<()> {
    #[cfg(feature = "bpf")]
    {
        // aya-build turns every line the nested cargo prints into a `cargo:warning`, and cargo
        // replays a build script's warnings on every cached build: a quiet nested cargo
        // prints only what is worth a warning (its compiler diagnostics and errors).
        // SAFETY: the build script has one thread here; nothing reads the environment
        // concurrently.
        unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
        let ebpf_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../lb-ebpf");
        println!(
            "cargo:rerun-if-changed={}",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../lb-common/src")
        );
        aya_build::build_ebpf(
            [aya_build::Package {
                name: "lb-ebpf",
                root_dir: ebpf_dir,
                ..Default::default()
            }],
            aya_build::Toolchain::Nightly,
        )?;
    }
    Ok(())
}
