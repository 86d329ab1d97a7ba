//! Orchestration for xlb: `setup` installs or verifies what a fresh machine lacks, `demo`
//! shows xlb on the lab topology, `test` runs every test layer, `bench` measures, and
//! `package` builds the Debian package; each runs the setup its task needs first. Building
//! the XDP object is not hidden here: it is `lb-userspace/build.rs`, so a plain `cargo
//! build` does it too.

mod package;
mod setup;

use std::{
    path::PathBuf,
    process::{Command, ExitCode},
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use setup::setup;

#[derive(Parser)]
#[command(about = "xlb project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install or verify the toolchain pieces, packages and mounts of every task.
    Setup,
    /// Setup, build, then the demo on the embedded lab topology (as root, under 2 minutes).
    Demo {
        /// The fleet demo instead: three load-balancer hosts behind a BIRD router with
        /// ECMP, one killed mid-stream (docs/fleet.md).
        #[arg(long)]
        fleet: bool,
        /// The routed demo instead: backends across a router reached with ipip, behind
        /// a 1280-byte link (docs/datapath.md).
        #[arg(long, conflicts_with = "fleet")]
        routed: bool,
    },
    /// Setup, then check the example Prometheus config, alert rules and Grafana dashboard,
    /// lint, build the package, and run every test: host, packet (BPF_PROG_TEST_RUN),
    /// namespace, the package on a clean Debian root, and the validator built by stable
    /// Rust without the XDP program.
    Test,
    /// Setup, build, then measure and write BENCHMARKS.md (as root).
    Bench {
        /// Fewer runs and repeats: for development, not for publishing.
        #[arg(long)]
        quick: bool,
    },
    /// Build the Debian package (target/debian/xlb_VERSION-REVISION_ARCH.deb).
    Package {
        /// Directory for the .deb (default target/debian).
        #[arg(long)]
        out: Option<PathBuf>,
        /// The Debian revision: the part of the version after the `-`.
        #[arg(long, default_value_t = 1)]
        revision: u32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup(setup::Task::All),
        Task::Demo { fleet, routed } => setup(setup::Task::Demo).and_then(|()| demo(fleet, routed)),
        Task::Test => setup(setup::Task::Test).and_then(|()| test()),
        Task::Bench { quick } => setup(setup::Task::Bench).and_then(|()| bench(quick)),
        Task::Package { out, revision } => setup(setup::Task::Package)
            .and_then(|()| package::package(out, revision))
            .map(drop),
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

fn workspace() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
}

/// Builds the binaries and returns the path of release binary `name`.
fn built(name: &str) -> Result<PathBuf> {
    run(Command::new("cargo").args(["build", "--locked", "--release", "--bins"]))?;
    Ok(target_dir().join("release").join(name))
}

/// Builds the binaries and runs `xlb-demo`, `xlb-fleet-demo` with `fleet`, or
/// `xlb-routed-demo` with `routed` (they need root: namespaces and XDP).
fn demo(fleet: bool, routed: bool) -> Result<()> {
    if !is_root() {
        bail!("the demo creates namespaces and attaches XDP: run `sudo cargo xtask demo`");
    }
    let name = match (fleet, routed) {
        (true, _) => "xlb-fleet-demo",
        (_, true) => "xlb-routed-demo",
        _ => "xlb-demo",
    };
    run(&mut Command::new(built(name)?))
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
    // The validator a config repository's CI builds: stable Rust, no XDP program, in a
    // target directory of its own (its `xlb` must not replace the full one). It shares
    // nothing with the lints and builds below, so it compiles beside them; it is done
    // before the lab tests start, whose timings should not share the CPUs with a compiler.
    let validator = validator();
    // Joined also when a lint fails: no compiler is left running after xtask.
    let deb = lint_and_package();
    let validated = validator
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    let deb = deb?;
    validated?;
    run(Command::new("cargo")
        .args(["test", "--locked", "--release"])
        .env("XLB_DEB", &deb))
}

/// rustfmt, clippy on both targets, the release build and the package (its path).
fn lint_and_package() -> Result<PathBuf> {
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
    // The daemon tests run the real `xlb` binary; tests/tests/package.rs installs the package.
    package::package(None, 1)
}

/// Lints `xlb` without the `bpf` feature and runs lb-userspace/tests/offline.rs against
/// it, built with the stable toolchain, on a thread; each command's output is printed when
/// it ends.
fn validator() -> std::thread::JoinHandle<Result<()>> {
    std::thread::spawn(|| {
        let no_bpf = [
            "-p",
            "lb-userspace",
            "--no-default-features",
            "--target-dir",
        ];
        let dir = target_dir().join("no-bpf");
        let mut clippy = Command::new("cargo");
        clippy
            .args(["clippy", "--locked", "--all-targets"])
            .args(no_bpf)
            .arg(&dir)
            .args(["--", "-D", "warnings"]);
        let mut test = Command::new("cargo");
        test.args(["test", "--locked", "--test", "offline"])
            .args(no_bpf)
            .arg(&dir);
        for cmd in [&mut clippy, &mut test] {
            cmd.env("RUSTUP_TOOLCHAIN", "stable");
            eprintln!("+ {cmd:?} (beside the lints and the build; output follows)");
            let out = cmd
                .output()
                .with_context(|| format!("cannot start {cmd:?}"))?;
            eprintln!(
                "--- the validator without the XDP program ---\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if !out.status.success() {
                bail!("{cmd:?} failed with {}", out.status);
            }
        }
        Ok(())
    })
}
