//! `cargo xtask bench [--quick]`: measures xlb and writes BENCHMARKS.md.
//!
//! Sections: the cost per packet in the kernel against an XDP_DROP floor measured in the
//! same run; the forwarding rate through the lab topology against an XDP_TX reflector and
//! nftables (`forwarding`), and the connection rate against nftables and HAProxy
//! (`connections`), each forwarder set up by `forwarders`; the TCP segment rate through
//! all of them (`segments`); the control plane (build, apply, validate, stats, memory);
//! table quality; failover (a backend's death to the last failed request, and probe
//! rounds of 1000 backends, `failover`). Every figure is a
//! median of several runs, printed with its spread and method. `--only SECTION` runs
//! one section (`--help` lists them).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};

/// `writeln!` into a report `String`, without the `fmt::Result` that appending to a
/// `String` never fails with.
macro_rules! push_line {
    ($md:expr, $($arg:tt)*) => {{
        $md.push_str(&format!($($arg)*));
        $md.push('\n');
    }};
}

mod connections;
mod control_plane;
mod failover;
mod flow_table;
mod forwarders;
mod forwarding;
mod ipip;
mod per_packet;
mod quality;
mod segments;
mod trace;

use aya::programs::{TestRun, TestRunOptions, Xdp};
use xlb::{
    config::{BackendSpec, Config, Forwarding, Protocol, Vip},
    controller::{Controller, Request},
    dataplane::{Dataplane, LoadOptions},
    history::{History, Source},
};
use xlb_lab::PinDir;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

struct Mode {
    runs: usize,
    repeat: u32,
    single_runs: u32,
}

/// Median, min and max of `xs`.
fn stats(mut xs: Vec<f64>) -> (f64, f64, f64) {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    let median = if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    };
    (median, xs[0], xs[n - 1])
}

/// The run in the middle of `runs` ordered by `rate`: the one whose counts a table shows
/// next to the median rate.
fn median_run<R: Clone>(runs: &[R], rate: impl Fn(&R) -> f64) -> R {
    let mut sorted = runs.to_vec();
    sorted.sort_by(|a, b| rate(a).total_cmp(&rate(b)));
    sorted.swap_remove(sorted.len() / 2)
}

/// Stops the bench with `msg`. A panic, not `exit`: unwinding drops the lab topologies
/// (their namespaces) and the HAProxy child on the way out; the exit status is 101.
fn fail(msg: String) -> ! {
    panic!("bench: {msg}")
}

/// The reference programs with the XDP_DROP floor (`xlb_drop`) loaded.
fn load_floor() -> aya::Ebpf {
    let mut refs = aya::Ebpf::load(xlb::object::PASS_OBJECT)
        .unwrap_or_else(|e| fail(format!("load reference programs: {e}")));
    let drop: &mut Xdp = refs
        .program_mut(xlb::object::DROP_PROGRAM_NAME)
        .and_then(|p| p.try_into().ok())
        .unwrap_or_else(|| fail("no xlb_drop program".into()));
    drop.load()
        .unwrap_or_else(|e| fail(format!("load xlb_drop: {e}")));
    refs
}

/// The XDP_DROP floor of `load_floor`'s programs.
fn floor(refs: &aya::Ebpf) -> &Xdp {
    refs.program(xlb::object::DROP_PROGRAM_NAME)
        .and_then(|p| p.try_into().ok())
        .unwrap_or_else(|| fail("no xlb_drop program".into()))
}

/// One BPF_PROG_TEST_RUN of `input`, `repeat` times: (return value, ns per run).
fn test_run(prog: &Xdp, input: &[u8], repeat: u32) -> (u32, f64) {
    let mut out = vec![0u8; input.len() + 256];
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut out),
            repeat,
            ..TestRunOptions::default()
        })
        .unwrap_or_else(|e| fail(format!("BPF_PROG_TEST_RUN: {e}")));
    (r.return_value, r.duration.as_nanos() as f64)
}

/// A controller over freshly loaded, pinned maps and a scratch history; the pins and the
/// history are removed on drop.
struct Bench {
    ctl: Controller,
    opts: LoadOptions,
    _pins: PinDir,
    _state: tempfile::TempDir,
}

impl Bench {
    fn new(flow_capacity: u32) -> Bench {
        Bench::sized(flow_capacity, lb_common::maps::DEFAULT_MAX_BACKENDS)
    }

    /// A bench whose maps hold `max_backends` backend ids (configs with more backends
    /// than the default also set `daemon.max_backends`).
    fn sized(flow_capacity: u32, max_backends: u32) -> Bench {
        let pins = PinDir::new("bench");
        let opts = LoadOptions {
            pin_dir: pins.path().to_path_buf(),
            flow_capacity,
            max_backends,
            ..LoadOptions::default()
        };
        let state = tempfile::tempdir().unwrap_or_else(|e| fail(format!("tempdir: {e}")));
        let ctl = Controller::new(
            Dataplane::load(&opts)
                .unwrap_or_else(|e| fail(format!("load: {e}")))
                .into_maps(),
            History::open(state.path()).unwrap_or_else(|e| fail(format!("history: {e}"))),
            // No neighbour lookups in the bench: every MAC is explicit.
            Box::new(|_, _| std::collections::BTreeMap::new()),
        )
        .unwrap_or_else(|e| fail(format!("controller: {e}")));
        Bench {
            ctl,
            opts,
            _pins: pins,
            _state: state,
        }
    }
}

fn backends(n: usize, prefix: &str) -> Vec<BackendSpec> {
    (0..n)
        .map(|i| BackendSpec {
            name: format!("{prefix}{i}"),
            address: if prefix == "v6-" {
                format!("2001:db8::{:x}", 0x1000 + i)
            } else {
                format!("198.18.{}.{}", 16 + i / 250, 1 + i % 250)
            },
            mac: format!("02:00:00:00:{:02x}:{:02x}", i / 256, i % 256),
            weight: [1, 2, 3][i % 3],
            line: None,
        })
        .collect()
}

fn vip(name: &str, address: &str, port: u16, protocol: Protocol, n: usize) -> Vip {
    Vip {
        name: name.into(),
        address: address.into(),
        port,
        protocol,
        forwarding: Forwarding::L2Dsr,
        icmp_echo: true,
        guardrails: Default::default(),
        health: None,
        backends: backends(n, if address.contains(':') { "v6-" } else { "b" }),
        line: None,
    }
}

fn request(config: Config) -> Request {
    Request {
        config,
        source: Source::File {
            file: "bench".into(),
        },
        user: "bench".into(),
        force: true,
        reason: Some("benchmark".into()),
        dry_run: false,
    }
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpus} CPUs ({model}), Linux {}", kernel.trim())
}

/// Measures xlb and writes the report (BENCHMARKS.md). Needs root: it loads BPF
/// programs and builds namespaces.
#[derive(Parser)]
#[command(name = "xlb-bench")]
struct Args {
    /// Fewer runs and repeats: for development, not for publishing.
    #[arg(long)]
    quick: bool,
    /// Run one section only, for development; the report holds that section alone.
    #[arg(long, value_enum)]
    only: Option<Section>,
    /// Where to write the report.
    #[arg(long, default_value = "BENCHMARKS.md")]
    out: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Section {
    /// Cost per packet (with ipip against l2-dsr, and the trace stage).
    PerPacket,
    /// The trace stage's cost alone.
    Trace,
    /// Forwarding rate against the XDP_TX reflector and nftables.
    Forwarding,
    /// Connection rate against nftables and HAProxy.
    Connections,
    /// TCP segment rate.
    Segments,
    /// Build, apply, validate, stats, map memory.
    ControlPlane,
    /// Table quality: share error and flows moved.
    Quality,
    /// A backend's death to detection, and probe rounds of 1000 backends.
    Failover,
}

fn main() {
    let args = Args::parse();
    let quick = args.quick;
    let mode = Mode {
        runs: if quick { 3 } else { 7 },
        repeat: if quick { 100_000 } else { 1_000_000 },
        single_runs: if quick { 20_000 } else { 100_000 },
    };
    let stats_enabled = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
        .map(|s| s.trim() == "1")
        .unwrap_or(false);
    if stats_enabled {
        fail(
            "kernel.bpf_stats_enabled is 1: it adds about 75 ns to every program run and \
             would falsify every figure. Run `sysctl -w kernel.bpf_stats_enabled=0` first."
                .into(),
        );
    }
    let mut md = String::new();
    push_line!(
        md,
        "# Benchmarks\n\nWritten by `cargo xtask bench{}` on {}. Mode: {}; \
         `kernel.bpf_stats_enabled` was 0.\n",
        if quick { " --quick" } else { "" },
        machine(),
        if quick {
            "quick (fewer runs and repeats: for development, not for publishing)"
        } else {
            "full"
        }
    );
    let wanted = |section: Section| args.only.is_none_or(|o| o == section);
    // Each section appends a note, with its measured reason, for every target it missed.
    let mut missed = Vec::new();
    if wanted(Section::PerPacket) {
        per_packet::per_packet(&mode, &mut md, &mut missed);
        ipip::per_packet(&mode, &mut md);
    }
    if wanted(Section::PerPacket) || wanted(Section::Trace) {
        trace::trace_cost(&mode, &mut md);
    }
    if wanted(Section::Forwarding) {
        forwarding::packet_rate(&mode, &mut md, &mut missed);
    }
    if wanted(Section::Connections) {
        connections::connection_rate(&mode, &mut md);
    }
    if wanted(Section::Segments) {
        segments::segment_rate(&mode, &mut md, &mut missed);
    }
    if wanted(Section::ControlPlane) {
        control_plane::control_plane(&mode, &mut md, &mut missed);
    }
    if wanted(Section::Quality) {
        quality::table_quality(&mut md, &mut missed);
    }
    if wanted(Section::Failover) {
        failover::failover(&mode, &mut md);
    }
    if missed.is_empty() {
        push_line!(md, "## Targets\n\nEvery target checked above was met.");
    } else {
        push_line!(md, "## Notes on the targets marked MISSED above\n");
        for note in &missed {
            push_line!(md, "- {note}");
        }
    }
    let path = args.out.display();
    std::fs::write(&args.out, &md).unwrap_or_else(|e| fail(format!("writing {path}: {e}")));
    println!("{md}");
    eprintln!("bench: wrote {path}");
}

/// Runs `work` under `perf record -e cpu-clock` with `scope` (`-p PID`, or `-a` for the
/// whole machine); returns its result and the lines of `perf report --sort sym`, each
/// with its percentage, highest first.
fn profile<T>(scope: &[&str], work: impl FnOnce() -> T) -> (T, Vec<(f64, String)>) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| fail(format!("tempdir: {e}")));
    let data = dir.path().join("perf.data");
    let mut perf = std::process::Command::new("perf")
        .args(["record", "-q", "-e", "cpu-clock"])
        .args(scope)
        .arg("-o")
        .arg(&data)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| fail(format!("perf record (run `cargo xtask setup`): {e}")));
    // Give perf time to attach before the work starts.
    std::thread::sleep(Duration::from_millis(500));
    let out = work();
    // SAFETY: plain kill(2) on the child we spawned; SIGINT makes perf write its data.
    unsafe { libc::kill(perf.id().cast_signed(), libc::SIGINT) };
    let status = perf
        .wait()
        .unwrap_or_else(|e| fail(format!("perf record: {e}")));
    // perf writes its data, then re-raises the SIGINT it caught.
    use std::os::unix::process::ExitStatusExt as _;
    if !status.success() && status.signal() != Some(libc::SIGINT) {
        fail(format!("perf record exited with {status}"));
    }
    let report = std::process::Command::new("perf")
        .args(["report", "--stdio", "--no-children", "--sort", "sym", "-i"])
        .arg(&data)
        .output()
        .unwrap_or_else(|e| fail(format!("perf report: {e}")));
    let text = String::from_utf8_lossy(&report.stdout);
    let lines: Vec<(f64, String)> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let percent = l.trim().split('%').next()?.trim().parse::<f64>().ok()?;
            Some((percent, l.trim_end().to_string()))
        })
        .collect();
    if lines.is_empty() {
        fail(format!(
            "perf report printed no symbols: {}",
            String::from_utf8_lossy(&report.stderr)
        ));
    }
    (out, lines)
}

fn time<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let out = f();
    (out, t.elapsed())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
