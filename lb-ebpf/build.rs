//! Building this crate needs the `bpf-linker` binary, which cargo cannot see as a
//! dependency: rebuild when it changes (for example after `cargo xtask setup` upgrades it).
use which::which;

fn main() {
    // Packet headers sit at 2-byte offsets (14 bytes of Ethernet), so without this the
    // compiler reads every 4-byte address field byte by byte. The kernel allows
    // misaligned packet access on x86-64; it never allows a misaligned stack access,
    // which is why the keys the program builds on its stack are `align(4)`/`align(8)`
    // types (lb-common/src/types.rs). The verifier checks every access at load time.
    println!("cargo:rustc-link-arg=--cpu-features=+allows-misaligned-mem-access");
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => println!("cargo:warning=bpf-linker not found ({err}); run `cargo xtask setup`"),
    }
}
