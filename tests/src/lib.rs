//! Helpers shared by the integration tests: privilege checks that fail under CI instead
//! of skipping, per-run unique names, a scratch pin directory that cleans up after
//! itself, and a small packet builder.
#![expect(
    clippy::expect_used,
    reason = "test support: a setup step that fails stops the test that asked for it, with \
              its message, as `expect` in a test does"
)]

pub mod bulk;
pub mod clients;
pub mod daemon;
pub mod demo;
pub mod fleet;
pub mod flood;
pub mod netns;
pub mod packet;
pub mod routed;
pub mod servers;
pub mod topology;

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

/// Kills `child` and reaps it, as a drop does: the process may have exited already, and
/// its status is not asked for.
pub fn kill_and_reap(child: &mut std::process::Child) {
    #[expect(
        clippy::let_underscore_must_use,
        reason = "the process may have exited already"
    )]
    let _ = child.kill();
    #[expect(
        clippy::let_underscore_must_use,
        reason = "only reaps the process; its status was not asked for"
    )]
    let _ = child.wait();
}

/// `promtool check metrics` on a `/metrics` body: the exposition format is valid and
/// lint-clean (promtool: Debian package prometheus, installed by `cargo xtask setup`).
pub fn promtool_check_metrics(body: &str) {
    use std::{
        io::Write,
        process::{Command, Stdio},
    };
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; `cargo xtask setup` installs it)");
    child
        .stdin
        .take()
        .expect("promtool's stdin")
        .write_all(body.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool ran");
    assert!(
        out.status.success(),
        "promtool: {}{}\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

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

/// `prefix` plus a counter unique within this process, within `max` bytes.
pub fn unique(prefix: &str, max: usize) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let mut name = format!("{prefix}{n}");
    assert!(
        name.len() <= max,
        "name {name:?} is longer than {max} bytes"
    );
    name.truncate(max);
    name
}

/// Every lab namespace and pin directory is named `xlab-<pid>-<role>-<n>`, so that a
/// later run can tell which ones a killed process left behind (`remove_stale`).
const LAB_PREFIX: &str = "xlab-";

/// A new lab name for `role`, unique within this process.
pub fn lab_name(role: &str) -> String {
    unique(&format!("{LAB_PREFIX}{}-{role}-", std::process::id()), 60)
}

/// A pin directory under /sys/fs/bpf that is removed with everything in it on drop,
/// also when the test panics.
pub struct PinDir {
    path: PathBuf,
}

impl PinDir {
    /// `/sys/fs/bpf/<lab_name(role)>`, removed by `remove_stale` when the process that
    /// made it is gone.
    pub fn new(role: &str) -> Self {
        PinDir {
            path: Path::new("/sys/fs/bpf").join(lab_name(role)),
        }
    }

    /// Removes `path` and the pins in it, directories of pins included (`xlb decap`
    /// pins per interface).
    fn remove(path: &Path) {
        if let Ok(entries) = std::fs::read_dir(path) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    PinDir::remove(&entry.path());
                    continue;
                }
                #[expect(
                    clippy::let_underscore_must_use,
                    reason = "best-effort cleanup of a scratch directory"
                )]
                let _ = std::fs::remove_file(entry.path());
            }
        }
        #[expect(
            clippy::let_underscore_must_use,
            reason = "best-effort cleanup of a scratch directory"
        )]
        let _ = std::fs::remove_dir(path);
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        PinDir::remove(&self.path);
    }
}

/// The pid in a lab name `xlab-<pid>-...`, if `name` is one.
fn lab_pid(name: &str) -> Option<u32> {
    name.strip_prefix(LAB_PREFIX)?
        .split('-')
        .next()?
        .parse()
        .ok()
}

/// Removes lab namespaces (and the processes left in them) and pin directories whose
/// creating process no longer runs (after a SIGKILL, drop handlers never ran).
pub fn remove_stale() {
    let dead =
        |name: &str| lab_pid(name).is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
    for dir in ["/run/netns", "/sys/fs/bpf"] {
        let Ok(list) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in list.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !dead(&name) {
                continue;
            }
            if dir == "/run/netns" {
                // What that run started there (a daemon, BIRD) would outlive the name.
                netns::kill_all_in(&name);
                // Dropping a handle deletes the namespace.
                drop(netns::Netns { name });
            } else {
                PinDir::remove(&entry.path());
            }
        }
    }
}

/// `bpftool -j map dump pinned PATH`, parsed.
pub fn bpftool_dump(path: &Path) -> serde_json::Value {
    let out = netns::sh(&format!("bpftool -j map dump pinned {}", path.display()));
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("bpftool JSON for {}: {e}", path.display()))
}

/// Sum over CPUs of `field` for `key` in a bpftool dump of a per-CPU array. With BTF,
/// bpftool adds a "formatted" object with named fields next to the raw bytes.
pub fn bpftool_sum(dump: &serde_json::Value, key: u32, field: &str) -> u64 {
    let entry = dump
        .as_array()
        .expect("a bpftool dump is an array")
        .iter()
        .map(|e| &e["formatted"])
        .find(|e| e["key"].as_u64() == Some(u64::from(key)))
        .unwrap_or_else(|| panic!("key {key} not in bpftool dump"));
    entry["values"]
        .as_array()
        .expect("per-CPU values")
        .iter()
        .map(|v| {
            v["value"][field]
                .as_u64()
                .unwrap_or_else(|| panic!("no named field {field:?} in {v}"))
        })
        .sum()
}
