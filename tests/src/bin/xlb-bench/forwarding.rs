//! Section 2 and the packet half of section 3: packets forwarded through the lab
//! topology, by xlb, by an XDP_TX reflector (the limit of this path) and by nftables DNAT.
//!
//! Packet path, the same for every forwarder:
//!
//! ```text
//!  c0 eth0 (xlb_gen, LIVE_FRAMES) -> pc0 (XDP_PASS) -> br0 -> plb -> LB eth0 (forwarder)
//!     -> plb (XDP_PASS) -> br0 -> pbN -> bN eth0 (xlb_sink: count, drop)
//! ```
//!
//! Every case gets a fresh topology, so nothing one forwarder leaves behind (conntrack,
//! flow entries, XDP attachments) affects the next; the cases take turns within each
//! round.

use std::{
    thread,
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    maps::PerCpuArray,
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp},
};
use lb_common::Reason;
use xlb_lab::{
    daemon::VipSpec,
    packet::{udp, v4},
    topology::{Topology, VIP4, attach_xdp, backend4, client4, in_ns, mac_of},
};

use crate::{
    Mode, fail,
    forwarders::{
        BACKENDS, Forwarder, Lb, busy_cpu_secs, reflector, set_first, setup_nft, setup_xlb,
        setup_xlb_ipip,
    },
    median_run, stats,
};

/// Distinct flows (UDP source ports) the generator cycles through.
const FLOWS: u32 = 4096;
/// UDP port of the benchmark VIP.
const PORT: u16 = 7;

/// Sum over CPUs of the `sink` counter of a bench-programs instance.
fn sink_count(ebpf: &Ebpf) -> u64 {
    let map: PerCpuArray<_, u64> = ebpf
        .map("sink")
        .and_then(|m| PerCpuArray::try_from(m).ok())
        .unwrap_or_else(|| fail("no sink map".into()));
    map.get(&0, 0)
        .map(|v| v.iter().sum())
        .unwrap_or_else(|e| fail(format!("read sink: {e}")))
}

/// Makes the LB resolve every backend's MAC before the clock starts, as the daemon does
/// for xlb: one UDP datagram each (to the discard port) starts ARP; waits at most 2 s.
fn resolve_backends(topo: &Topology) {
    let ns = topo.lb.name.clone();
    in_ns(&ns, || {
        let sock = std::net::UdpSocket::bind("0.0.0.0:0")
            .unwrap_or_else(|e| fail(format!("UDP socket: {e}")));
        for i in 0..BACKENDS {
            #[expect(
                clippy::let_underscore_must_use,
                reason = "the datagram only starts ARP; the wait below checks the result"
            )]
            let _ = sock.send_to(b"arp", (backend4(i).as_str(), 9));
        }
    });
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let neigh = topo.lb.sh("ip -4 neigh show dev eth0");
        let known = (0..BACKENDS)
            .filter(|&i| {
                neigh
                    .lines()
                    .any(|l| l.starts_with(&format!("{} ", backend4(i))) && l.contains("lladdr"))
            })
            .count();
        if known == BACKENDS {
            return;
        }
        if Instant::now() > deadline {
            fail(format!(
                "the LB resolved {known} of {BACKENDS} backends in 2 s:\n{neigh}"
            ));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Packets the nftables forward chain counted.
fn nft_forwarded(topo: &Topology) -> u64 {
    let out = topo.lb.sh("nft -j list chain ip xlbbench forwarded");
    let v: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| fail(format!("nft JSON: {e}")));
    v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["rule"]["expr"].as_array())
        .flatten()
        .filter_map(|e| e["counter"]["packets"].as_u64())
        .sum()
}

/// One run of the packet-rate benchmark.
#[derive(Clone, Debug, Default)]
struct PacketRun {
    sent: u64,
    /// Frames the forwarder saw (xlb's reason counters, the reflector's own counter,
    /// nftables' forward chain: only frames it forwarded).
    at_lb: u64,
    forwarded: u64,
    delivered: u64,
    secs: f64,
    cpu_secs: f64,
}

impl PacketRun {
    fn rate(&self) -> f64 {
        self.delivered as f64 / self.secs
    }
}

/// Builds a topology, sets `fwd` up on the load balancer, sends `count` frames of
/// `FLOWS` flows from c0 and counts them at every stage.
fn packet_run(fwd: Forwarder, count: u32) -> PacketRun {
    let topo = Topology::new(1, BACKENDS);
    let sinks: Vec<Ebpf> = topo
        .backends
        .iter()
        .map(|b| {
            attach_xdp(
                &b.name,
                xlb::object::BENCH_OBJECT,
                "xlb_sink",
                "eth0",
                |_| {},
            )
        })
        .collect();
    // The generator's XDP_TX leaves c0's veth; its peer must run XDP to receive it.
    let _client_port = attach_xdp(
        &topo.switch.name,
        xlb::object::PASS_OBJECT,
        xlb::object::PASS_PROGRAM_NAME,
        "pc0",
        |_| {},
    );
    let lb_mac = mac_of(&topo.lb.name, "eth0");
    let lb = match fwd {
        Forwarder::Reflector => reflector(&topo),
        Forwarder::Xlb => setup_xlb(&topo, VipSpec::udp("gen", VIP4, PORT, &[1; BACKENDS])),
        Forwarder::XlbIpip => {
            let lb = setup_xlb_ipip(&topo, VipSpec::udp("gen", VIP4, PORT, &[1; BACKENDS]));
            // The daemon solicits the next hops at start; wait until they resolved.
            resolve_backends(&topo);
            lb
        }
        Forwarder::Nft => {
            setup_nft(&topo, "udp", PORT);
            resolve_backends(&topo);
            Lb::Nft
        }
        Forwarder::Haproxy => fail("HAProxy forwards TCP streams, not UDP frames".into()),
    };

    let client_mac = mac_of(&topo.client().name, "eth0");
    let mut frame = v4(&client4(0), VIP4, udp(1024, PORT)).bytes();
    frame[..6].copy_from_slice(&lb_mac);
    frame[6..12].copy_from_slice(&client_mac);
    // UDP checksum 0 (none): the generator rewrites the source port of every frame.
    frame[40..42].copy_from_slice(&[0, 0]);

    // Set-up traffic (the daemon's and the resolver's neighbour probes) is not counted.
    let total = || sinks.iter().map(sink_count).sum::<u64>();
    let before = total();
    let cpu0 = busy_cpu_secs();
    let secs = generate(&topo.client().name, frame, count);
    // Frames still in flight drain within milliseconds; wait until the sinks are still.
    let mut last = total();
    for _ in 0..40 {
        thread::sleep(Duration::from_millis(50));
        let now = total();
        if now == last {
            break;
        }
        last = now;
    }
    let cpu_secs = busy_cpu_secs() - cpu0;
    let (at_lb, forwarded) = match &lb {
        Lb::Xdp(ebpf) => {
            let n = sink_count(ebpf);
            (n, n)
        }
        Lb::Daemon(d) => {
            let reasons = d.dump(lb_common::maps::REASON_STATS);
            let all = (0..lb_common::reason::REASON_COUNT)
                .map(|k| xlb_lab::bpftool_sum(&reasons, k, "packets"))
                .sum();
            let fwd = xlb_lab::bpftool_sum(&reasons, Reason::Forwarded.index(), "packets");
            (all, fwd)
        }
        Lb::Nft => {
            let n = nft_forwarded(&topo);
            (n, n)
        }
        Lb::Haproxy { .. } => (0, 0),
    };
    drop(lb);
    PacketRun {
        sent: u64::from(count),
        at_lb,
        forwarded,
        delivered: last - before,
        secs,
        cpu_secs,
    }
}

/// Sends `count` copies of `frame` (each with the next flow's source port) out of eth0
/// in namespace `ns` with BPF_PROG_TEST_RUN in live-frames mode; returns the seconds the
/// call took.
fn generate(ns: &str, frame: Vec<u8>, count: u32) -> f64 {
    in_ns(ns, move || {
        let mut ebpf = Ebpf::load(xlb::object::BENCH_OBJECT)
            .unwrap_or_else(|e| fail(format!("load xlb_gen: {e}")));
        set_first(&mut ebpf, "gen_flows", FLOWS);
        let mut headers = [0u8; 42];
        headers.copy_from_slice(&frame[..42]);
        set_first(&mut ebpf, "gen_headers", headers);
        let prog: &mut Xdp = ebpf
            .program_mut("xlb_gen")
            .and_then(|p| p.try_into().ok())
            .unwrap_or_else(|| fail("no xlb_gen program".into()));
        prog.load()
            .unwrap_or_else(|e| fail(format!("load xlb_gen: {e}")));
        // SAFETY: if_nametoindex on a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(c"eth0".as_ptr()) };
        if ifindex == 0 {
            fail("no eth0 in the client namespace".into());
        }
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex. Live frames need data_end == the frame length.
        let ctx: Vec<u8> = [0, frame.len() as u32, 0, ifindex, 0, 0]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        let t = Instant::now();
        prog.test_run(TestRunOptions {
            data_in: Some(&frame),
            ctx_in: Some(&ctx),
            repeat: count,
            // Batch size 0: the kernel's default (64 frames per batch).
            attrs: TestRunAttrs::new().xdp_live_frames(0),
            ..TestRunOptions::new()
        })
        .unwrap_or_else(|e| fail(format!("live-frames run: {e}")));
        t.elapsed().as_secs_f64()
    })
}

/// Section 2 and the packet half of section 3.
pub(crate) fn packet_rate(mode: &Mode, md: &mut String, missed: &mut Vec<String>) {
    eprintln!("bench: forwarding rate");
    let count = if mode.runs > 3 { 2_000_000 } else { 300_000 };
    let forwarders = [
        Forwarder::Reflector,
        Forwarder::Xlb,
        Forwarder::Nft,
        Forwarder::XlbIpip,
    ];
    let mut runs: Vec<Vec<PacketRun>> = vec![Vec::new(); forwarders.len()];
    for round in 0..mode.runs {
        for (i, &f) in forwarders.iter().enumerate() {
            let r = packet_run(f, count);
            eprintln!(
                "bench: round {round}, {}: {:.0} packets/s delivered, {} of {} sent",
                f.name(),
                r.rate(),
                r.delivered,
                r.sent
            );
            runs[i].push(r);
        }
    }
    push_line!(
        md,
        "## 2. Forwarding rate on veth, and 3a. against nftables\n\n\
         Method: the lab topology (one client, the load balancer, {BACKENDS} backends on one \
         bridge), built afresh for every run. The client's generator (`xlb_gen`, \
         BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES on its eth0) sends {count} UDP \
         frames of {FLOWS} flows to {VIP4}:{PORT} as fast as the kernel takes them; each \
         backend counts arrivals in XDP (`xlb_sink`) and drops them. Forwarders: xlb (the \
         real daemon, weights 1:1:1, native XDP; and the same VIP with `forwarding = \
         \"ipip\"`, every frame wrapped in IPv4 to its backend with the next hop from the \
         kernel's FIB, the backends' counter taking wrapped frames too), an XDP_TX \
         reflector that only rewrites the MACs (the most any XDP forwarder can do on this path), and nftables DNAT with \
         a `numgen` map and conntrack on the LB's kernel stack. {} rounds, forwarders in \
         turn within each round. Rate: frames delivered to the backends / seconds of the \
         generator's run. CPU: busy time of the whole machine (both CPUs, generator \
         included) per million frames delivered. \"at LB\" is what the forwarder itself \
         counted: xlb's reason counters, the reflector's counter, nftables' forward-chain \
         counter (frames the LB's input backlog dropped before that hook are not in it). \
         HAProxy is not in this table: it terminates TCP connections and does not \
         forward these UDP frames; it is measured by connections in section 3b and by TCP \
         segments in section 3c.\n\n\
         | forwarder | delivered frames/s (median) | spread | x reflector | CPU s per Mpkt | \
         sent | at LB | forwarded | delivered | lost |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        mode.runs
    );
    let medians: Vec<f64> = runs
        .iter()
        .map(|rs| stats(rs.iter().map(PacketRun::rate).collect()).0)
        .collect();
    let mut cpus = Vec::new();
    for (i, f) in forwarders.iter().enumerate() {
        let (m, lo, hi) = stats(runs[i].iter().map(PacketRun::rate).collect());
        let (cpu, _, _) = stats(
            runs[i]
                .iter()
                .map(|r| r.cpu_secs / (r.delivered.max(1) as f64 / 1e6))
                .collect(),
        );
        // Counts of the median run.
        let r = median_run(&runs[i], PacketRun::rate);
        cpus.push(cpu);
        push_line!(
            md,
            "| {} | {m:.0} | {lo:.0}..{hi:.0} | {:.2} | {cpu:.2} | {} | {} | {} | {} | {} |",
            f.name(),
            m / medians[0],
            r.sent,
            r.at_lb,
            r.forwarded,
            r.delivered,
            r.sent - r.delivered
        );
    }
    let xlb = medians[1] / medians[0];
    let vs_nft = medians[1] / medians[2];
    push_line!(
        md,
        "\nipip: {:.0} % of the reflector's rate, {:.2}x xlb with l2-dsr in the same rounds \
         (the outer header costs a FIB lookup and 20 more bytes per frame on every hop).",
        medians[3] / medians[0] * 100.0,
        medians[3] / medians[1]
    );
    push_line!(
        md,
        "\nLost frames are accounted by stage in the columns: sent - at LB were dropped on \
         the way to the load balancer (veth queues full: the generator outruns the path), \
         forwarded - delivered on the way back. Targets: forwarding >= 85 % of the \
         reflector: {:.0} %, {}; >= 3x nftables DNAT's packet rate: {vs_nft:.2}x, {}.\n",
        xlb * 100.0,
        if xlb >= 0.85 { "met" } else { "MISSED" },
        if vs_nft >= 3.0 { "met" } else { "MISSED" },
    );
    if xlb < 0.85 {
        missed.push(format!(
            "Forwarding (section 2): xlb delivered {:.0} % of the reflector's rate.",
            xlb * 100.0
        ));
    }
    if vs_nft < 3.0 {
        // How many of the two CPUs the reflector's runs kept busy, and what they lost
        // before reaching the load balancer.
        let busy = stats(runs[0].iter().map(|r| r.cpu_secs / r.secs).collect()).0;
        let (sent, at_lb) = runs[0]
            .iter()
            .fold((0, 0), |(s, a), r| (s + r.sent, a + r.at_lb));
        let lost_before = sent.saturating_sub(at_lb) as f64 / sent.max(1) as f64;
        missed.push(format!(
            "Three times nftables' packet rate (section 2): {vs_nft:.2}x. The XDP_TX \
             reflector, which only rewrites MACs, reaches {:.2}x nftables on this path, so \
             no XDP forwarder can show more than that here. With the reflector the machine \
             was busy {busy:.2} CPUs of 2: the generator is one system call on one CPU, and \
             veth hands a frame to its peer's receive processing on the sending CPU, so that \
             CPU also carries every frame through both bridge hops and the XDP program \
             ({:.1} % of the reflector's frames were lost before the load balancer). Per \
             packet, xlb used {:.2} CPU seconds per million frames against nftables' {:.2}.",
            medians[0] / medians[2],
            lost_before * 100.0,
            cpus[1],
            cpus[2],
        ));
    }
}
