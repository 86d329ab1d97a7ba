//! Network namespaces for tests: create them with unique names, run commands in them,
//! enter them from a thread, and delete them on drop (also after a panic).

use std::{fs::File, os::fd::AsRawFd, process::Command};

/// Runs `cmd` through `sh -c`, panicking with its stderr when it fails.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", cmd])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Kills (SIGKILL) every process in lab namespace `name`: those a killed test run left.
pub fn kill_all_in(name: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        // SAFETY: kill has no memory-safety preconditions; the pid was in the namespace.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// A network namespace deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A new namespace for `role` (e.g. "lb", "c0", "b1"), with `lo` up, named by
    /// `crate::lab_name`.
    pub fn new(role: &str) -> Self {
        let name = crate::lab_name(role);
        sh(&format!("ip netns add {name}"));
        sh(&format!("ip -n {name} link set lo up"));
        Netns { name }
    }

    /// Runs `cmd` inside this namespace.
    pub fn sh(&self, cmd: &str) -> String {
        sh(&format!("ip netns exec {} {cmd}", self.name))
    }

    /// Moves the calling thread into this namespace (sockets it opens live here).
    pub fn enter(&self) {
        let file = File::open(format!("/run/netns/{}", self.name))
            .unwrap_or_else(|e| panic!("open netns {}: {e}", self.name));
        // SAFETY: setns on a valid namespace fd; affects only the calling thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "setns {}: {}",
            self.name,
            std::io::Error::last_os_error()
        );
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        #[expect(
            clippy::let_underscore_must_use,
            reason = "a namespace left behind is deleted by a later run, its process being dead"
        )]
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
