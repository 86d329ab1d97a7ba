//! `cargo xtask setup` and the setup in front of every other task: installs or verifies
//! what that task needs and nothing more (the benchmarks' packages only for `bench`).

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{is_root, output, run};

/// What a task needs from the machine.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Task {
    /// Everything below: `cargo xtask setup` alone.
    All,
    Demo,
    Test,
    Bench,
    Package,
}

/// bpf-linker must stay on 0.10.x: later releases need a system LLVM this machine lacks.
const BPF_LINKER_VERSION: &str = "0.10.3";

/// Debian packages, the command each provides, and the tasks that call it.
const PACKAGES: [(&str, &str, &[Task]); 14] = [
    // The lab's namespaces, veth and XDP inspection.
    ("iproute2", "ip", &[Task::Demo, Task::Test, Task::Bench]),
    ("bpftool", "bpftool", &[Task::Demo, Task::Test, Task::Bench]),
    ("ethtool", "ethtool", &[Task::Demo, Task::Test, Task::Bench]),
    // `promtool check metrics` on a real scrape (tests/tests/daemon_limits.rs); check and
    // test of the example config and alert rules (`prometheus_examples`).
    ("prometheus", "promtool", &[Task::Test]),
    // The package's stripped binary and its libc dependency (`strip`, `objdump`).
    ("binutils", "objdump", &[Task::Test, Task::Package]),
    // The clean Debian 12 root the package is installed into (tests/tests/package.rs).
    ("mmdebstrap", "mmdebstrap", &[Task::Test]),
    // The fleet lab's routing daemon: the router's and every load-balancer host's BIRD
    // (tests/src/fleet.rs, `cargo xtask demo --fleet`). Its own service is not used.
    ("bird2", "bird", &[Task::Demo, Task::Test]),
    // The benchmarks' kernel comparison (nftables DNAT); the fleet test that makes one
    // host's health checks fail (tests/tests/fleet/).
    ("nftables", "nft", &[Task::Test, Task::Bench]),
    // The routed lab's bulk transfers (tests/src/bulk.rs, the routed demo): nginx on the
    // backends, curl on the client; nginx's own service is not used.
    ("nginx", "nginx", &[Task::Demo, Task::Test]),
    ("curl", "curl", &[Task::Demo, Task::Test]),
    // The routed demo pings a VIP, which xlb answers.
    ("iputils-ping", "ping", &[Task::Demo]),
    // The benchmarks' comparison (HAProxy in TCP mode); its service is not started.
    ("haproxy", "haproxy", &[Task::Bench]),
    // The benchmarks' profile of the established-flow case (`perf record`).
    ("linux-perf", "perf", &[Task::Bench]),
    // The package's build (dpkg-deb ships with dpkg; this is here to say so if it is not).
    ("dpkg", "dpkg-deb", &[Task::Test, Task::Package]),
];

fn needs(task: Task, users: &[Task]) -> bool {
    task == Task::All || users.contains(&task)
}

pub(crate) fn setup(task: Task) -> Result<()> {
    // Every task but setup itself builds the full `xlb`, XDP object included.
    bpf_toolchain()?;
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(_, _, users)| needs(task, users))
        .filter(|(_, bin, _)| {
            output(Command::new("sh").args(["-c", &format!("command -v {bin}")])).is_none()
        })
        .map(|(pkg, _, _)| *pkg)
        .collect();
    if !missing.is_empty() {
        if !is_root() {
            bail!("missing packages {missing:?}: run `sudo cargo xtask setup`");
        }
        run(Command::new("apt-get").arg("update").arg("-q"))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    if task != Task::Package {
        bpffs()?;
    }
    eprintln!(
        "setup ({task:?}): nightly rust-src, bpf-linker {BPF_LINKER_VERSION} and packages are ready"
    );
    Ok(())
}

fn bpf_toolchain() -> Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .context("rustup has no `nightly` toolchain; it is required for the eBPF build")?;
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    let linker = output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if !linker.contains(BPF_LINKER_VERSION) {
        run(Command::new("cargo").args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
        ]))?;
    }
    Ok(())
}

fn bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    if !mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf"))
    {
        if !is_root() {
            bail!("bpffs is not mounted at /sys/fs/bpf: run `sudo cargo xtask setup`");
        }
        run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
    }
    Ok(())
}
