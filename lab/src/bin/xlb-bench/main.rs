//! `cargo xtask bench [--quick]`: measures xlb and writes BENCHMARKS.md.
//!
//! Sections: the cost per packet in the kernel against an XDP_DROP floor measured in the
//! same run; the forwarding rate through the lab topology against an XDP_TX reflector and
//! nftables, and the connection rate against nftables and HAProxy (`forwarding`); the
//! TCP segment rate through all of them (`segments`); the control plane (build, apply,
//! validate, stats, memory); table quality; failover (a backend's death to the last
//! failed request, and probe rounds of 1000 backends, `failover`). Every figure is a
//! median of several runs, printed with its spread and method. `--only SECTION`
//! (per-packet, forwarding, connections, segments, control-plane, quality, failover) runs
//! one section.

use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

mod failover;
mod forwarding;
mod segments;

use aya::programs::{TestRun, TestRunOptions, Xdp};
use xlb::{
    config::{BackendSpec, Config, Forwarding, Protocol, Vip},
    controller::{Controller, Request},
    dataplane::{Dataplane, LoadOptions},
    guard::{self, Health, Maglev},
    history::{History, Source},
    table::{self, Weighted},
};
use xlb_lab::{
    PinDir,
    packet::{ACK, SYN, tcp, udp, v4, v6},
};

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
        let pins = PinDir::new("bench");
        let opts = LoadOptions {
            pin_dir: pins.path().to_path_buf(),
            flow_capacity,
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
            weight: 1 + (i % 3) as i64,
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

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
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
    let _ = writeln!(
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
    // `--only NAME` runs one section, for development; it still writes the file.
    let only = std::env::args().skip_while(|a| a != "--only").nth(1);
    let wanted = |name: &str| only.as_deref().is_none_or(|o| o == name);
    // Each section appends a note, with its measured reason, for every target it missed.
    let mut missed = Vec::new();
    if wanted("per-packet") {
        per_packet(&mode, &mut md, &mut missed);
    }
    if wanted("forwarding") {
        forwarding::packet_rate(&mode, &mut md, &mut missed);
    }
    if wanted("connections") {
        forwarding::connection_rate(&mode, &mut md);
    }
    if wanted("segments") {
        segments::segment_rate(&mode, &mut md, &mut missed);
    }
    if wanted("control-plane") {
        control_plane(&mode, &mut md, &mut missed);
    }
    if wanted("quality") {
        table_quality(&mut md, &mut missed);
    }
    if wanted("failover") {
        failover::failover(&mode, &mut md);
    }
    if missed.is_empty() {
        let _ = writeln!(md, "## Targets\n\nEvery target checked above was met.");
    } else {
        let _ = writeln!(md, "## Notes on the targets marked MISSED above\n");
        for note in &missed {
            let _ = writeln!(md, "- {note}");
        }
    }
    let path = std::env::args()
        .skip_while(|a| a != "--out")
        .nth(1)
        .unwrap_or_else(|| "BENCHMARKS.md".into());
    std::fs::write(&path, &md).unwrap_or_else(|e| fail(format!("writing {path}: {e}")));
    println!("{md}");
    eprintln!("bench: wrote {path}");
}

/// Section 1: ns per packet through BPF_PROG_TEST_RUN against the XDP_DROP floor.
fn per_packet(mode: &Mode, md: &mut String, missed: &mut Vec<String>) {
    eprintln!("bench: cost per packet");
    let mut bench = Bench::new(1 << 20);
    let ctl = &mut bench.ctl;
    let config = Config {
        vips: vec![
            vip("web", "198.18.0.100", 80, Protocol::Tcp, 3),
            vip("dns", "198.18.0.100", 53, Protocol::Udp, 3),
            vip("web6", "2001:db8::100", 80, Protocol::Tcp, 3),
        ],
        ..Config::default()
    };
    ctl.apply(request(config))
        .unwrap_or_else(|e| fail(format!("apply: {e}")));
    let mut dp = Dataplane::load(&bench.opts).unwrap_or_else(|e| fail(format!("load: {e}")));
    let mut refs = aya::Ebpf::load(xlb::object::PASS_OBJECT)
        .unwrap_or_else(|e| fail(format!("load reference programs: {e}")));
    let drop: &mut Xdp = refs
        .program_mut(xlb::object::DROP_PROGRAM_NAME)
        .and_then(|p| p.try_into().ok())
        .unwrap_or_else(|| fail("no xlb_drop program".into()));
    drop.load()
        .unwrap_or_else(|e| fail(format!("load xlb_drop: {e}")));
    let drop: &Xdp = drop;
    let lookup_obj = lookup_program();
    let lookup: &Xdp = lookup_obj
        .program("xlb_lookup")
        .and_then(|p| p.try_into().ok())
        .unwrap_or_else(|| fail("no xlb_lookup program".into()));
    let prog: &Xdp = dp.program().unwrap_or_else(|e| fail(format!("{e}")));

    let established = v4("198.18.1.1", "198.18.0.100", tcp(40000, 80, ACK)).bytes();
    let udp_pkt = v4("198.18.1.2", "198.18.0.100", udp(40001, 53)).bytes();
    let v6_pkt = v6("2001:db8:1::1", "2001:db8::100", tcp(40002, 80, ACK)).bytes();
    let non_vip = v4("198.18.1.3", "198.18.0.250", tcp(40003, 80, ACK)).bytes();
    let cases: [(&str, &[u8], u32, &Xdp); 6] = [
        (FLOOR, &established, XDP_DROP, drop),
        (LOOKUP, &established, XDP_DROP, lookup),
        (ESTABLISHED, &established, XDP_TX, prog),
        ("UDP, established flow", &udp_pkt, XDP_TX, prog),
        ("IPv6 TCP, established flow", &v6_pkt, XDP_TX, prog),
        (NON_VIP, &non_vip, XDP_PASS, prog),
    ];
    // The first run of each flow packet inserts its flow entry, so the repeats measure
    // an established flow. Repeats are not restored between runs: the program's MAC
    // rewrite is seen by the next repeat; the program does not read the MACs it rewrites,
    // and the return code and the backend counters below show every repeat forwarded.
    for (name, pkt, want, p) in cases {
        let (rc, _) = test_run(p, pkt, 1);
        if rc != want {
            fail(format!("{name}: returned {rc}, expected {want}"));
        }
    }
    // Rounds: every case once per round, in turn, so that a slow spell of this shared
    // machine hits all cases alike; ratios to the floor are taken within each round.
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for _ in 0..mode.runs {
        for (i, &(name, pkt, want, p)) in cases.iter().enumerate() {
            let (before, flows_before) = backend_totals(ctl);
            let (rc, ns) = test_run(p, pkt, mode.repeat);
            if rc != want {
                fail(format!("{name}: repeated run returned {rc}"));
            }
            let (after, flows_after) = backend_totals(ctl);
            if flows_after != flows_before {
                fail(format!(
                    "{name}: {} repeats created a flow; they must all be of the one \
                     established flow",
                    flows_after - flows_before
                ));
            }
            let expect = if std::ptr::eq(p, prog) && want == XDP_TX {
                u64::from(mode.repeat)
            } else {
                0
            };
            if after - before != expect {
                fail(format!(
                    "{name}: backend counters grew by {}, expected {expect}",
                    after - before
                ));
            }
            samples[i].push(ns);
        }
    }
    let rows: Vec<Row> = cases
        .iter()
        .zip(&samples)
        .map(|(&(name, ..), ns)| Row {
            name,
            ns: stats(ns.clone()),
            x_floor: stats(ns.iter().zip(&samples[0]).map(|(x, f)| x / f).collect()),
        })
        .collect();
    let find = |name: &str| rows.iter().find(|r| r.name == name);
    let row = |name: &str| find(name).map_or(0.0, |r| r.ns.0);
    let ratio = |name: &str| find(name).map_or((0.0, 0.0, 0.0), |r| r.x_floor);
    let profile = profile_established(prog, &established);

    // New flows: every packet must insert, so each is a different flow, run once; the
    // kernel times each run. The floor is measured the same way.
    let single = |p: &Xdp, base: u32| -> Vec<f64> {
        (0..mode.single_runs)
            .map(|i| {
                let n = base + i;
                let src = format!("198.19.{}.{}", (n >> 8) & 0xff, n & 0xff);
                let sport = 1024 + (n >> 16) as u16;
                let pkt = v4(&src, "198.18.0.100", tcp(sport, 80, SYN)).bytes();
                test_run(p, &pkt, 1).1
            })
            .collect()
    };
    let flows_before = backend_totals(ctl).1;
    let mut new_flow = Vec::new();
    let mut single_floor = Vec::new();
    for r in 0..mode.runs as u32 {
        single_floor.push(stats(single(drop, r * mode.single_runs)).0);
        new_flow.push(stats(single(prog, r * mode.single_runs)).0);
    }
    let inserted = backend_totals(ctl).1 - flows_before;
    let expect = u64::from(mode.single_runs) * mode.runs as u64;
    if inserted != expect {
        fail(format!(
            "new-flow runs inserted {inserted} flows, expected {expect}"
        ));
    }
    let (sf, _, _) = stats(single_floor.clone());
    let (nf, nmin, nmax) = stats(new_flow);
    let (_, sfmin, sfmax) = stats(single_floor);

    let _ = writeln!(
        md,
        "## 1. Cost per packet in the kernel\n\nMethod: BPF_PROG_TEST_RUN on the xlb \
         program with one IPv4 TCP VIP, one UDP VIP and one IPv6 TCP VIP of 3 backends \
         each (65537-slot tables, installed by the real controller). Repeated cases: \
         repeat = {}, median of {} runs, spread is min..max of the runs. Every repeated \
         run is checked: the return code, and the backend packet counters grew by exactly \
         repeat x runs (and the new-flow counters did not grow: every repeat was of the \
         one established flow). The XDP_DROP floor is a program that only returns \
         XDP_DROP, measured in the same run; `xlb_lookup` does only what no flow-keeping \
         load balancer can skip, one lookup in a map shaped like `xlb_flows` (LRU hash, \
         40-byte key, 65536 entries), then returns XDP_DROP. The cases take turns: each \
         round runs every case once, and \"x floor\" is the median over the rounds of \
         the case's time divided by the floor's time in the same round (this shared VM \
         has slow spells, which then hit a case and its floor alike).\n\n| packet | ns (median) | spread | x floor (median of rounds) | x floor, spread |\n|---|---:|---:|---:|---:|",
        mode.repeat, mode.runs
    );
    for Row {
        name,
        ns: (median, min, max),
        x_floor: (r, rmin, rmax),
    } in &rows
    {
        let _ = writeln!(
            md,
            "| {name} | {median:.1} | {min:.1}..{max:.1} | {r:.2} | {rmin:.2}..{rmax:.2} |"
        );
    }
    let _ = writeln!(
        md,
        "\nNew flows cannot use repeat (only the first repeat would insert), so each is a \
         different flow (source address and port) run once, {} runs of {} packets; the \
         kernel times each run, and the floor is the XDP_DROP program timed the same way, \
         in the same run. The new-flow counter grew by exactly the number of packets. \
         Single runs carry the timer's own overhead, so only the ratio compares with the \
         table above.\n\n| packet | ns (median of run medians) | spread | x floor (single runs) |\n|---|---:|---:|---:|\n\
         | XDP_DROP floor, single runs | {sf:.1} | {sfmin:.1}..{sfmax:.1} | 1.00 |\n\
         | TCP SYN, new flow | {nf:.1} | {nmin:.1}..{nmax:.1} | {:.2} |\n",
        mode.runs,
        mode.single_runs,
        nf / sf
    );
    let est = row(ESTABLISHED);
    let (est_ratio, ratio_lo, ratio_hi) = ratio(ESTABLISHED);
    let non_vip_ns = row(NON_VIP);
    let lookup_ns = row(LOOKUP);
    let _ = writeln!(
        md,
        "Profile of the established-flow case: `perf record -e cpu-clock` on this process \
         while it repeats the TCP packet for {PROFILE_SECS} s, then `perf report \
         --no-children --sort sym` (the symbols above 1 %; `bpf_prog_..._xlb` is the \
         program's own code, the rest is the kernel it calls and the test harness):\n\n```\n{profile}```\n"
    );
    let target = |ok: bool| if ok { "met" } else { "MISSED" };
    // Say so when the rounds' ratios reach across 2.5x.
    let est_verdict = match (est_ratio <= 2.5, ratio_lo <= 2.5 && 2.5 < ratio_hi) {
        (ok, true) => format!(
            "{} (borderline: the rounds give {ratio_lo:.2}x..{ratio_hi:.2}x)",
            target(ok)
        ),
        (ok, false) => target(ok).to_string(),
    };
    let _ = writeln!(
        md,
        "Targets: established flow <= 2.5x floor: {:.2}x, {}; new flow <= 10x floor: \
         {:.2}x, {}. Against the Katran reference on this kind of VM (165 ns established, \
         355 ns new flow, 83 ns non-VIP; floor about 30 ns), at most 0.7x: established \
         {est:.1} ns is {:.2}x, {}; non-VIP {non_vip_ns:.1} ns is {:.2}x, {}; new flow \
         (as x floor, 355/30 = 11.8x) {:.2}x floor is {:.2}x, {}.\n",
        est_ratio,
        est_verdict,
        nf / sf,
        target(nf / sf <= 10.0),
        est / 165.0,
        target(est / 165.0 <= 0.7),
        non_vip_ns / 83.0,
        target(non_vip_ns / 83.0 <= 0.7),
        nf / sf,
        (nf / sf) / (355.0 / 30.0),
        target((nf / sf) / (355.0 / 30.0) <= 0.7),
    );
    if est_ratio > 2.5 || est / 165.0 > 0.7 {
        missed.push(format!(
            "Established flow (section 1): {est:.1} ns is {:.2}x the floor. One lookup in a \
             map like `xlb_flows` and nothing else (`xlb_lookup`) already costs {lookup_ns:.1} \
             ns, {:.2}x the floor, on this machine; xlb's own work on top of it (parse, VIP \
             filter, backend check, MAC rewrite, three per-CPU counters) is {:.1} ns. The \
             lookup is a chain of kernel calls (see the profile: `__htab_map_lookup_elem`, \
             `htab_map_hash`, `lookup_nulls_elem_raw`, `memcmp`), and this CPU runs with \
             {}, under which every kernel return goes through a return thunk. Reaching \
             2.5x the floor would need a flow table without the kernel's hash map.",
            est_ratio,
            ratio(LOOKUP).0,
            est - lookup_ns,
            mitigation(),
        ));
    }
    if non_vip_ns / 83.0 > 0.7 {
        missed.push(format!(
            "Non-VIP packet (section 1): {non_vip_ns:.1} ns; it costs the parse, one VIP \
             filter bit and the reason counter, no hash lookup."
        ));
    }
    if nf / sf > 10.0 || (nf / sf) / (355.0 / 30.0) > 0.7 {
        missed.push(format!(
            "New flow (section 1): {nf:.1} ns, {:.2}x the single-run floor ({:.2}x \
             Katran's ratio). A TCP SYN skips the flow table's lookup but still costs the \
             `xlb_vips` lookup, three lookups in the VIP's table (size, generation, slot: \
             tables carry BPF_F_INNER_MAP so each VIP may have its own size, and the \
             verifier does not inline lookups into such maps) and the insert into the LRU \
             flow table, each a chain of kernel calls under {}. Single runs also carry the \
             timer per packet, so their spread is wide ({nmin:.1}..{nmax:.1} ns).",
            nf / sf,
            (nf / sf) / (355.0 / 30.0),
            mitigation(),
        ));
    }
}

/// One repeated case of section 1: (median, min, max) of its ns per packet, and of its
/// ratio to the floor's time in the same round.
struct Row {
    name: &'static str,
    ns: (f64, f64, f64),
    x_floor: (f64, f64, f64),
}

const FLOOR: &str = "XDP_DROP floor";
const LOOKUP: &str = "one `xlb_flows`-like lookup alone (`xlb_lookup`)";
const ESTABLISHED: &str = "TCP, established flow";
const NON_VIP: &str = "non-VIP packet (XDP_PASS)";
/// How long the profile of the established-flow case records.
const PROFILE_SECS: u64 = 3;

/// The `xlb_lookup` reference program, loaded, with the one key it looks up present.
fn lookup_program() -> aya::Ebpf {
    let mut ebpf = aya::Ebpf::load(xlb::object::BENCH_OBJECT)
        .unwrap_or_else(|e| fail(format!("load the bench programs: {e}")));
    let key = lb_common::FlowKey::default();
    forwarding::set_first(&mut ebpf, "lookup_key", key);
    let mut flows: aya::maps::HashMap<_, lb_common::FlowKey, lb_common::FlowValue> = ebpf
        .map_mut("lookup_flows")
        .and_then(|m| aya::maps::HashMap::try_from(m).ok())
        .unwrap_or_else(|| fail("no lookup_flows map".into()));
    flows
        .insert(key, lb_common::FlowValue::default(), 0)
        .unwrap_or_else(|e| fail(format!("write lookup_flows: {e}")));
    let prog: &mut Xdp = ebpf
        .program_mut("xlb_lookup")
        .and_then(|p| p.try_into().ok())
        .unwrap_or_else(|| fail("no xlb_lookup program".into()));
    prog.load()
        .unwrap_or_else(|e| fail(format!("load xlb_lookup: {e}")));
    ebpf
}

/// The kernel's own account of the speculative-return mitigation, which decides what a
/// function call costs in the kernel.
fn mitigation() -> String {
    let srso =
        std::fs::read_to_string("/sys/devices/system/cpu/vulnerabilities/spec_rstack_overflow")
            .map_or_else(|_| "unknown".into(), |s| s.trim().to_string());
    format!("`spec_rstack_overflow: {srso}`")
}

/// `perf report` of this process while it runs the established-flow packet through
/// `prog` for `PROFILE_SECS`: the symbols above 1 %.
fn profile_established(prog: &Xdp, pkt: &[u8]) -> String {
    let pid = std::process::id().to_string();
    let ((), symbols) = profile(&["-p", &pid], || {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(PROFILE_SECS) {
            let (rc, _) = test_run(prog, pkt, 100_000);
            if rc != XDP_TX {
                fail(format!("profiled run returned {rc}"));
            }
        }
    });
    symbols
        .iter()
        .filter(|s| s.0 >= 1.0)
        .map(|s| format!("{}\n", s.1))
        .collect()
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
    unsafe { libc::kill(perf.id() as libc::pid_t, libc::SIGINT) };
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

/// Packets and new flows over the bench's backends (ids 1..16), summed over CPUs.
fn backend_totals(ctl: &Controller) -> (u64, u64) {
    (1..16)
        .filter_map(|id| ctl.maps().backend_stats(id).ok())
        .fold((0, 0), |(p, f), s| (p + s.packets, f + s.new_flows))
}

fn time<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let out = f();
    (out, t.elapsed())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Section 4: control-plane latencies.
fn control_plane(mode: &Mode, md: &mut String, missed: &mut Vec<String>) {
    eprintln!("bench: control plane");
    let _ = writeln!(
        md,
        "## 4. Control plane\n\nMethod: wall-clock time in this process, median of {} \
         runs (spread min..max). Tables have 65537 slots. \"build\" is the table builder \
         alone; \"apply\" is the whole `Controller::apply` of a weight change: plan and \
         guardrails, id assignment (a walk of the flow table, here empty), writing the \
         new table and switching it in, and the fsync'd history record.\n\n\
         | what | ms (median) | spread |\n|---|---:|---:|",
        mode.runs
    );
    for n in [1usize, 100, 1000] {
        let specs = backends(n, "b");
        let input: Vec<Weighted> = specs
            .iter()
            .map(|b| Weighted {
                name: &b.name,
                weight: b.weight as u32,
            })
            .collect();
        let samples: Vec<f64> = (0..mode.runs)
            .map(|_| ms(time(|| table::build(&input, 65537)).1))
            .collect();
        let (m, lo, hi) = stats(samples);
        let _ = writeln!(md, "| build, {n} backends | {m:.2} | {lo:.2}..{hi:.2} |");
    }
    let mut apply_1000 = f64::MAX;
    for n in [2usize, 100, 1000] {
        let mut bench = Bench::new(65536);
        let ctl = &mut bench.ctl;
        let mut config = Config {
            vips: vec![vip("web", "198.18.0.100", 80, Protocol::Tcp, n)],
            ..Config::default()
        };
        ctl.apply(request(config.clone()))
            .unwrap_or_else(|e| fail(format!("apply: {e}")));
        let samples: Vec<f64> = (0..mode.runs)
            .map(|i| {
                config.vips[0].backends[0].weight = if i % 2 == 0 { 3 } else { 2 };
                let (r, d) = time(|| ctl.apply(request(config.clone())));
                r.unwrap_or_else(|e| fail(format!("apply: {e}")));
                ms(d)
            })
            .collect();
        let (m, lo, hi) = stats(samples);
        if n == 1000 {
            apply_1000 = m;
        }
        let _ = writeln!(
            md,
            "| build + apply a weight change, {n} backends | {m:.2} | {lo:.2}..{hi:.2} |"
        );
        let samples: Vec<f64> = (0..mode.runs).map(|_| ms(time(|| ctl.stats()).1)).collect();
        let (m, lo, hi) = stats(samples);
        let _ = writeln!(
            md,
            "| stats (the daemon's handler, no socket), {n} backends | {m:.2} | {lo:.2}..{hi:.2} |"
        );
    }
    let config = Config {
        vips: (0..100)
            .map(|i| {
                vip(
                    &format!("v{i}"),
                    &format!("198.18.2.{}", i + 1),
                    80,
                    Protocol::Tcp,
                    3,
                )
            })
            .collect(),
        ..Config::default()
    };
    let samples: Vec<f64> = (0..mode.runs)
        .map(|_| ms(time(|| guard::plan(&config, None, &Health::new(), &Maglev)).1))
        .collect();
    let (m, lo, hi) = stats(samples);
    let _ = writeln!(
        md,
        "| validate a 100-VIP config (3 backends each) | {m:.2} | {lo:.2}..{hi:.2} |"
    );
    let (m, lo, hi) = stats(stats_through_socket(mode.runs));
    let _ = writeln!(
        md,
        "| `xlb stats` through the daemon's socket (the CLI process included), 3 backends \
         | {m:.2} | {lo:.2}..{hi:.2} |"
    );
    let table = memlock(
        65537 + lb_common::maps::TABLE_HEADER,
        lb_common::maps::TABLE_MAP_FLAGS,
    );
    let flows = memlock_flows(65536);
    let _ = writeln!(
        md,
        "\nMap memory, as the kernel accounts it (`memlock` in /proc/self/fdinfo of a map \
         created like the daemon's): one VIP's 65537-slot table is {table} bytes ({:.0} KiB; \
         an array stores each 4-byte value in 8 bytes, and an mmap-able one is \
         page-rounded), plus one `xlb_vips` entry and one per-CPU `xlb_vip_stats` entry. \
         Flows are shared by all VIPs: the 65536-entry flow table is {flows} bytes, {:.0} \
         bytes per flow.\n",
        table as f64 / 1024.0,
        flows as f64 / 65536.0
    );
    let _ = writeln!(
        md,
        "Target: build + apply for 1000 backends < 50 ms: {apply_1000:.1} ms, {}.\n",
        if apply_1000 < 50.0 { "met" } else { "MISSED" }
    );
    if apply_1000 >= 50.0 {
        missed.push(format!(
            "Build + apply for 1000 backends (section 4): {apply_1000:.1} ms."
        ));
    }
}

/// `memlock` of a map fd, from /proc/self/fdinfo.
fn fd_memlock(fd: std::os::fd::BorrowedFd<'_>) -> u64 {
    use std::os::fd::AsRawFd;
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))
        .unwrap_or_else(|e| fail(format!("fdinfo: {e}")));
    info.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| fail("no memlock in fdinfo".into()))
}

/// Memory of a table (inner map) of `entries` entries, created as the controller does.
fn memlock(entries: u32, flags: u32) -> u64 {
    use aya::maps::{Array, IterableMap, MapData};
    use std::os::fd::AsFd;
    let t: Array<MapData, u32> =
        Array::create(entries, flags).unwrap_or_else(|e| fail(format!("create table: {e}")));
    fd_memlock(t.map().fd().as_fd())
}

/// Memory of the flow table at `capacity`, loaded as the daemon loads it.
fn memlock_flows(capacity: u32) -> u64 {
    use std::os::fd::AsFd;
    let bench = Bench::new(capacity);
    let path = bench.opts.pin_dir.join(lb_common::maps::FLOWS);
    let map = aya::maps::MapData::from_pin(&path)
        .unwrap_or_else(|e| fail(format!("open {}: {e}", path.display())));
    fd_memlock(map.fd().as_fd())
}

/// Wall time of `xlb stats` against the real daemon in a lab topology, in ms.
fn stats_through_socket(runs: usize) -> Vec<f64> {
    let topo = xlb_lab::topology::Topology::new(1, 3);
    let mut d = xlb_lab::daemon::Daemon::new(&topo);
    d.write_config(&[xlb_lab::daemon::VipSpec::tcp(
        "web",
        xlb_lab::topology::VIP4,
        80,
        &[1, 1, 1],
    )]);
    d.start();
    (0..runs)
        .map(|_| {
            let (out, t) = time(|| d.xlb(&["stats"]));
            if !out.status.success() {
                fail(format!("xlb stats: {}", xlb_lab::daemon::text(&out)));
            }
            ms(t)
        })
        .collect()
}

/// Section 5: table quality.
fn table_quality(md: &mut String, missed: &mut Vec<String>) {
    eprintln!("bench: table quality");
    let _ = writeln!(
        md,
        "## 5. Table quality\n\nMethod: the real table builder at 65537 slots, weights \
         1, 2, 3 repeating. Share error: the worst backend's |table share - weight share|. \
         Flows moved: the fraction of slots that change owner when backend 0's weight \
         grows by 10 % or backend 0 is removed; the minimum is the total variation \
         distance between the old and new weight shares (what must move). A ratio below 1 \
         means the table moved fewer slots than the weights asked for, which the share \
         error bounds: at 1000 backends a 10 % change of the smallest weight is 3 slots. \
         The last two columns divide by what the two tables' own shares differ by \
         instead: 1.00 means the builder moved no slot beyond what its new shares \
         required (\"-\": no share changed and no slot moved).\n\n\
         | backends | worst share error (points) | moved, +10 % weight (x minimum) | moved, removal (x minimum) | +10 % (x the tables' share change) | removal (x the tables' share change) |\n|---:|---:|---:|---:|---:|---:|"
    );
    let mut worst_err: f64 = 0.0;
    let mut worst_ratio: f64 = 0.0;
    let mut worst_at = 0;
    let mut worst_own: f64 = 0.0;
    for n in [3usize, 10, 100, 1000] {
        let names: Vec<String> = (0..n).map(|i| format!("b{i}")).collect();
        let weights: Vec<u32> = (0..n).map(|i| 10 * (1 + (i % 3) as u32)).collect();
        let build = |w: &[u32], skip: Option<usize>| -> Vec<Option<String>> {
            let input: Vec<Weighted> = names
                .iter()
                .zip(w)
                .enumerate()
                .filter(|(i, _)| Some(*i) != skip)
                .map(|(_, (name, &weight))| Weighted { name, weight })
                .collect();
            let t = table::build(&input, 65537).unwrap_or_else(|e| fail(format!("{e}")));
            t.slots()
                .iter()
                .map(|&i| Some(input[i as usize].name.to_string()))
                .collect()
        };
        let before = build(&weights, None);
        let total: u32 = weights.iter().sum();
        let err = names
            .iter()
            .zip(&weights)
            .map(|(name, &w)| {
                let got =
                    before.iter().filter(|o| o.as_deref() == Some(name)).count() as f64 / 65537.0;
                (got - f64::from(w) / f64::from(total)).abs()
            })
            .fold(0.0, f64::max);
        let moved = |after: &[Option<String>]| {
            before.iter().zip(after).filter(|(a, b)| a != b).count() as f64 / 65537.0
        };
        let share = |w: &[u32]| -> Vec<f64> {
            let t: u32 = w.iter().sum();
            w.iter().map(|&x| f64::from(x) / f64::from(t)).collect()
        };
        let tv = |a: &[f64], b: &[f64]| -> f64 {
            a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f64>() / 2.0
        };
        // What the tables' own shares changed by: the fewest slots any table with these
        // two sets of shares could move.
        let table_share = |t: &[Option<String>]| -> Vec<f64> {
            names
                .iter()
                .map(|name| t.iter().filter(|o| o.as_deref() == Some(name)).count() as f64)
                .map(|c| c / 65537.0)
                .collect()
        };
        let mut grown = weights.clone();
        grown[0] = weights[0] * 11 / 10;
        let min_grow = tv(&share(&weights), &share(&grown));
        let after_grow = build(&grown, None);
        let grow_ratio = moved(&after_grow) / min_grow;
        // "-" where the tables' shares did not change at all (nor did any slot move).
        let own = |after: &[Option<String>]| -> Option<f64> {
            let required = tv(&table_share(&before), &table_share(after));
            (required > 0.0).then(|| moved(after) / required)
        };
        let show = |r: Option<f64>| r.map_or_else(|| "-".to_string(), |r| format!("{r:.2}"));
        let own_grow = own(&after_grow);
        let mut removed = weights.clone();
        removed[0] = 0;
        let min_remove = tv(&share(&weights), &share(&removed));
        let after_remove = build(&weights, Some(0));
        let remove_ratio = moved(&after_remove) / min_remove;
        let own_remove = own(&after_remove);
        worst_own = [own_grow, own_remove]
            .into_iter()
            .flatten()
            .fold(worst_own, f64::max);
        worst_err = worst_err.max(err);
        if grow_ratio.max(remove_ratio) > worst_ratio {
            worst_ratio = grow_ratio.max(remove_ratio);
            worst_at = n;
        }
        let _ = writeln!(
            md,
            "| {n} | {:.3} | {grow_ratio:.2} | {remove_ratio:.2} | {} | {} |",
            err * 100.0,
            show(own_grow),
            show(own_remove)
        );
    }
    let _ = writeln!(
        md,
        "\nTargets: share error <= 0.5 points: worst {:.3}, {}; flows moved <= 1.2x the \
         minimum: worst {worst_ratio:.2}x, {}.\n",
        worst_err * 100.0,
        if worst_err <= 0.005 { "met" } else { "MISSED" },
        if worst_ratio <= 1.2 { "met" } else { "MISSED" }
    );
    if worst_err > 0.005 {
        missed.push(format!(
            "Share error (section 5): worst {:.3} points.",
            worst_err * 100.0
        ));
    }
    if worst_ratio > 1.2 {
        missed.push(format!(
            "Flows moved (section 5): {worst_ratio:.2}x the minimum at {worst_at} \
             backends. Measured against what the tables' own shares changed by, the \
             builder moved at most {worst_own:.2}x that; the rest is the difference \
             between table shares and weight shares (the share error, in slots), which \
             at a change of a few dozen slots is a large fraction of it."
        ));
    }
}
