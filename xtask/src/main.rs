//! Orchestration for xlb: `setup` installs or verifies what a fresh machine lacks, `demo`
//! shows xlb on the lab topology, `test` runs every test layer; both run setup first. Building the XDP object is not hidden here: it is
//! `lb-userspace/build.rs`, so a plain `cargo build` does it too.

use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "xlb project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install or verify the toolchain pieces, packages and mounts the tests need.
    Setup,
    /// Setup, build, then the demo on the embedded lab topology (as root, under 2 minutes).
    Demo,
    /// Setup, then check the example Prometheus config and alert rules, lint, and run
    /// every test: host, packet (BPF_PROG_TEST_RUN), namespace.
    Test,
    /// Setup, build, then measure and write BENCHMARKS.md (as root).
    Bench {
        /// Fewer runs and repeats: for development, not for publishing.
        #[arg(long)]
        quick: bool,
    },
}

/// bpf-linker must stay on 0.10.x: later releases need a system LLVM this machine lacks.
const BPF_LINKER_VERSION: &str = "0.10.3";
/// Debian packages the tests call: ip, bpftool, ethtool, nft, promtool.
const PACKAGES: [(&str, &str); 7] = [
    ("iproute2", "ip"),
    ("bpftool", "bpftool"),
    ("ethtool", "ethtool"),
    ("nftables", "nft"),
    // `promtool check metrics` on a real scrape (tests/tests/daemon_limits.rs); check and
    // test of the example config and alert rules (`prometheus_examples`).
    ("prometheus", "promtool"),
    // The benchmarks' comparison (HAProxy in TCP mode); its service is not started.
    ("haproxy", "haproxy"),
    // The benchmarks' profile of the established-flow case (`perf record`).
    ("linux-perf", "perf"),
];

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup(),
        Task::Demo => setup().and_then(|()| demo()),
        Task::Test => setup().and_then(|()| test()),
        Task::Bench { quick } => setup().and_then(|()| bench(quick)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_some_and(|s| s.trim() == "0")
}

fn setup() -> Result<()> {
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

    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(_, bin)| {
            output(Command::new("sh").args(["-c", &format!("command -v {bin}")])).is_none()
        })
        .map(|(pkg, _)| *pkg)
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
    eprintln!(
        "setup: nightly rust-src, bpf-linker {BPF_LINKER_VERSION}, packages and bpffs are ready"
    );
    Ok(())
}

fn workspace() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Builds the binaries and returns the path of release binary `name`.
fn built(name: &str) -> Result<std::path::PathBuf> {
    run(Command::new("cargo").args(["build", "--locked", "--release", "--bins"]))?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"));
    Ok(target.join("release").join(name))
}

/// Builds the binaries and runs `xlb-demo` (it needs root: namespaces and XDP).
fn demo() -> Result<()> {
    if !is_root() {
        bail!("the demo creates namespaces and attaches XDP: run `sudo cargo xtask demo`");
    }
    run(&mut Command::new(built("xlb-demo")?))
}

/// Builds the binaries and runs `xlb-bench`, which writes BENCHMARKS.md.
fn bench(quick: bool) -> Result<()> {
    if !is_root() {
        bail!("the benchmarks load BPF programs: run `sudo cargo xtask bench`");
    }
    let mut cmd = Command::new(built("xlb-bench")?);
    cmd.arg("--out").arg(workspace().join("BENCHMARKS.md"));
    if quick {
        cmd.arg("--quick");
    }
    run(&mut cmd)
}

/// The example Prometheus config (examples/prometheus/) and the unit tests of its alert
/// rules. First in `test`: it takes well under a second and needs no build.
fn prometheus_examples() -> Result<()> {
    for args in [
        ["check", "config", "examples/prometheus/prometheus.yml"],
        ["check", "rules", "examples/prometheus/xlb-alerts.yml"],
        ["test", "rules", "examples/prometheus/xlb-alerts.test.yml"],
    ] {
        run(Command::new("promtool").args(args).current_dir(workspace()))?;
    }
    Ok(())
}

fn test() -> Result<()> {
    prometheus_examples()?;
    run(Command::new("cargo").args(["fmt", "--all", "--", "--check"]))?;
    run(Command::new("cargo").args([
        "clippy",
        "--locked",
        "--release",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(Command::new("rustup")
        .args([
            "run",
            "nightly",
            "cargo",
            "clippy",
            "--locked",
            "--release",
            "-p",
            "lb-ebpf",
        ])
        .args([
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ]))?;
    // Release: the table property tests build thousands of 65537-slot tables.
    // The daemon tests run the real `xlb` binary.
    run(Command::new("cargo").args(["build", "--locked", "--release", "--bins"]))?;
    run(Command::new("cargo").args(["test", "--locked", "--release"]))
}
