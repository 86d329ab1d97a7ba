//! Section 1: the cost per packet in the kernel, against an XDP_DROP floor and one
//! flow-table-like lookup measured in the same run, and a profile of the established flow.

use std::time::{Duration, Instant};

use aya::programs::Xdp;
use xlb::{
    config::{Config, Protocol},
    controller::Controller,
    dataplane::Dataplane,
};
use xlb_lab::packet::{ACK, SYN, tcp, udp, v4, v6};

use crate::{
    Bench, Mode, XDP_DROP, XDP_PASS, XDP_TX, fail, floor, forwarders, load_floor, profile, request,
    stats, test_run, vip,
};

/// Section 1: ns per packet through BPF_PROG_TEST_RUN against the XDP_DROP floor.
pub(crate) fn per_packet(mode: &Mode, md: &mut String, missed: &mut Vec<String>) {
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
    let refs = load_floor();
    let drop = floor(&refs);
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

    push_line!(
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
        mode.repeat,
        mode.runs
    );
    for Row {
        name,
        ns: (median, min, max),
        x_floor: (r, rmin, rmax),
    } in &rows
    {
        push_line!(
            md,
            "| {name} | {median:.1} | {min:.1}..{max:.1} | {r:.2} | {rmin:.2}..{rmax:.2} |"
        );
    }
    push_line!(
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
    push_line!(
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
    push_line!(
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
    forwarders::set_first(&mut ebpf, "lookup_key", key);
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

/// Packets and new flows over the bench's backends (ids 1..16), summed over CPUs.
fn backend_totals(ctl: &Controller) -> (u64, u64) {
    (1..16)
        .filter_map(|id| ctl.maps().backend_stats(id).ok())
        .fold((0, 0), |(p, f), s| (p + s.packets, f + s.new_flows))
}
