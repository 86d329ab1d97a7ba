//! Where pinned objects live. One directory holds every map (named as in
//! `lb_common::maps`), the program and the XDP link, so `bpftool map dump pinned
//! /sys/fs/bpf/xlb/<map>` works and a restarted daemon finds the running data plane.

use std::path::{Path, PathBuf};

/// Default pin directory of the product.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/xlb";
/// File name of the pinned XDP program.
pub const PROGRAM: &str = "prog";
/// File name of the pinned XDP link (keeps the program attached without a process).
pub const LINK: &str = "link";

/// Pin path of map `name` under `dir`.
pub fn map(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}
