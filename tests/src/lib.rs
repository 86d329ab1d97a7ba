//! Helpers shared by the integration tests: privilege checks that fail under CI instead
//! of skipping, per-run unique names, a scratch pin directory that cleans up after
//! itself, and a small packet builder.

pub mod netns;
pub mod packet;
pub mod topology;

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

/// Whether this test may run. Without root it panics when `CI` is set (a privileged test
/// must never pass by skipping there) and otherwise says why it skips.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} needs root (CAP_BPF, CAP_NET_ADMIN) and CI is set: run the suite as root"
    );
    eprintln!("SKIPPED {test}: needs root; run `sudo cargo xtask test`");
    false
}

/// A name unique to this process and call, within `max` bytes (interface names: 15).
pub fn unique(prefix: &str, max: usize) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let mut name = format!("{prefix}{}{n}", std::process::id() % 100_000);
    name.truncate(max);
    name
}

/// A pin directory under /sys/fs/bpf that is removed with everything in it on drop,
/// also when the test panics.
pub struct PinDir {
    path: PathBuf,
}

impl PinDir {
    pub fn new(prefix: &str) -> Self {
        let path = Path::new("/sys/fs/bpf").join(unique(prefix, 40));
        PinDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(&self.path) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let _ = std::fs::remove_dir(&self.path);
    }
}
