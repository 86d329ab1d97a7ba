//! Section 1, ipip: the cost of `ipip` forwarding per packet against `l2-dsr` and the
//! XDP_DROP floor, all in one run. An `ipip` packet grows by its outer header, and a
//! repeated BPF_PROG_TEST_RUN hands the program the frame it left (already wrapped), so
//! every case here is run once per call, each call with the original frame, and the time
//! is the kernel's own measurement of that one run (`duration`; the clock reads around
//! it are in every case alike). The receiving interface is `lb0` of
//! `routed::fib_namespace` (routes to the backends via a router that is a permanent
//! neighbour).

use aya::programs::{TestRun, TestRunOptions, Xdp};
use lb_common::Reason;
use xlb::{
    config::{BackendSpec, Config, Forwarding, Ipip, Protocol},
    dataplane::Dataplane,
};
use xlb_lab::{
    packet::{ACK, SYN, tcp, v4, v6},
    routed::fib_namespace,
    topology::in_ns,
};

use crate::{Bench, Mode, XDP_DROP, XDP_TX, fail, floor, load_floor, request, stats, vip};

/// The four VIPs: l2-dsr and ipip, IPv4 and IPv6, three backends each (ipip backends
/// in the namespace's routed subnets).
fn config() -> Config {
    let routed = |v: xlb::config::Vip, v6: bool| xlb::config::Vip {
        forwarding: Forwarding::Ipip,
        backends: (0..3)
            .map(|i| BackendSpec {
                name: format!("r{i}"),
                address: if v6 {
                    format!("2001:db8:3::{}", 11 + i)
                } else {
                    format!("198.18.3.{}", 11 + i)
                },
                mac: xlb::config::MAC_FROM_NEIGHBOUR.into(),
                weight: [1, 2, 3][i],
                line: None,
            })
            .collect(),
        ..v
    };
    Config {
        vips: vec![
            vip("web", "198.18.0.100", 80, Protocol::Tcp, 3),
            vip("web6", "2001:db8::100", 80, Protocol::Tcp, 3),
            routed(vip("tun", "198.18.0.101", 80, Protocol::Tcp, 3), false),
            routed(vip("tun6", "2001:db8::101", 80, Protocol::Tcp, 3), true),
        ],
        ipip: Ipip {
            ipv4_source: Some("198.18.200.0/24".into()),
            ipv6_source: Some("2001:db8:200::/120".into()),
        },
        ..Config::default()
    }
}

/// One run of `frame` through `prog` as received on `ifindex`: (return value, the
/// kernel's ns for the run).
fn once(prog: &Xdp, frame: &[u8], ifindex: u32) -> (u32, f64) {
    let ctx: Vec<u8> = [0, frame.len() as u32, 0, ifindex, 0, 0]
        .iter()
        .flat_map(|v| v.to_ne_bytes())
        .collect();
    let mut out = vec![0u8; frame.len() + 64];
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            ..TestRunOptions::new()
        })
        .unwrap_or_else(|e| fail(format!("BPF_PROG_TEST_RUN: {e}")));
    (r.return_value, r.duration.as_nanos() as f64)
}

/// Section 1, ipip.
pub(crate) fn per_packet(mode: &Mode, md: &mut String) {
    eprintln!("bench: ipip per packet");
    let ns = fib_namespace("bipip");
    let (runs, count) = (mode.runs, if mode.runs > 3 { 20_000 } else { 4_000 });
    let text = in_ns(&ns.name, move || measure(runs, count));
    md.push_str(&text);
}

fn measure(runs: usize, count: u32) -> String {
    let mut bench = Bench::new(lb_common::maps::DEFAULT_FLOW_CAPACITY);
    bench
        .ctl
        .apply(request(config()))
        .unwrap_or_else(|e| fail(format!("apply: {e}")));
    let mut dp = Dataplane::load(&bench.opts).unwrap_or_else(|e| fail(format!("load: {e}")));
    let refs = load_floor();
    let drop = floor(&refs);
    // SAFETY: if_nametoindex on a NUL-terminated name, in this thread's namespace.
    let ifindex = unsafe { libc::if_nametoindex(c"lb0".as_ptr()) };
    if ifindex == 0 {
        fail("no lb0 in the benchmark namespace".into());
    }
    let c4 = |dst: &str, flags: u8| v4("198.18.1.1", dst, tcp(40000, 80, flags)).bytes();
    let c6 = |dst: &str| v6("2001:db8:1::1", dst, tcp(40000, 80, ACK)).bytes();
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("XDP_DROP floor", c4("198.18.0.100", ACK), false),
        (
            "l2-dsr, IPv4 TCP established",
            c4("198.18.0.100", ACK),
            true,
        ),
        ("ipip, IPv4 TCP established", c4("198.18.0.101", ACK), true),
        (
            "l2-dsr, IPv4 TCP SYN (new flow)",
            c4("198.18.0.100", SYN),
            true,
        ),
        (
            "ipip, IPv4 TCP SYN (new flow)",
            c4("198.18.0.101", SYN),
            true,
        ),
        ("l2-dsr, IPv6 TCP established", c6("2001:db8::100"), true),
        ("ipip, IPv6 TCP established", c6("2001:db8::101"), true),
    ];
    let prog = dp.program().unwrap_or_else(|e| fail(format!("{e}")));
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for _ in 0..runs {
        for (i, (name, frame, xlb)) in cases.iter().enumerate() {
            let before = bench
                .ctl
                .maps()
                .reason_stats()
                .unwrap_or_else(|e| fail(format!("{e}")));
            let p = if *xlb { &*prog } else { drop };
            let mut times = Vec::with_capacity(count as usize);
            for _ in 0..count {
                let (rc, ns) = once(p, frame, ifindex);
                let want = if *xlb { XDP_TX } else { XDP_DROP };
                if rc != want {
                    fail(format!("{name}: returned {rc}, expected {want}"));
                }
                times.push(ns);
            }
            samples[i].push(stats(times).0);
            if *xlb {
                let after = bench
                    .ctl
                    .maps()
                    .reason_stats()
                    .unwrap_or_else(|e| fail(format!("{e}")));
                let grew = |r: Reason| {
                    after[r.index() as usize].1.packets - before[r.index() as usize].1.packets
                };
                if grew(Reason::Forwarded) != u64::from(count) {
                    fail(format!(
                        "{name}: {} of {count} frames forwarded (reasons now {after:?})",
                        grew(Reason::Forwarded)
                    ));
                }
            }
        }
    }
    let median = |i: usize| stats(samples[i].clone());
    let ratio = |i: usize, base: usize| {
        stats(
            samples[i]
                .iter()
                .zip(&samples[base])
                .map(|(x, b)| x / b)
                .collect(),
        )
        .0
    };
    let mut md = format!(
        "### ipip against l2-dsr\n\nMethod: BPF_PROG_TEST_RUN, one run per call ({count} \
         calls per case and round, each with the original frame: a repeated run would \
         hand the program the frame it already wrapped), as received on `lb0` of a \
         namespace with routes to the backends' subnets via a router that is a permanent \
         neighbour. The time of a call is the kernel's measurement of its one run, so it \
         includes two clock reads that section 1's repeated runs spread over thousands; \
         the floor here carries them too, so compare within this table. Median of the \
         calls per round, then median of {runs} rounds; cases in turn within each round. \
         Every round is checked: each call returned XDP_TX (XDP_DROP for the floor), and \
         the `forwarded` reason counter grew by exactly the calls. Stateless slots; the \
         SYN is a new flow each time.\n\n\
         | packet | ns (median) | spread | x floor | above the floor, ns | x l2-dsr of the same kind |\n\
         |---|---:|---:|---:|---:|---:|\n"
    );
    for (i, (name, _, _)) in cases.iter().enumerate() {
        let (m, lo, hi) = median(i);
        let vs_l2 = if name.starts_with("ipip") {
            format!("{:.2}", ratio(i, i - 1))
        } else {
            "".into()
        };
        md += &format!(
            "| {name} | {m:.1} | {lo:.1}..{hi:.1} | {:.2} | {:.1} | {vs_l2} |\n",
            ratio(i, 0),
            m - median(0).0
        );
    }
    md += "\n";
    md
}
