//! Building this crate needs the `bpf-linker` binary, which cargo cannot see as a
//! dependency: rebuild when it changes (for example after `cargo xtask setup` upgrades it).
use which::which;

fn main() {
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => println!("cargo:warning=bpf-linker not found ({err}); run `cargo xtask setup`"),
    }
}
