//! Sections 2 and 3: packets forwarded through the lab topology, by xlb, by an XDP_TX
//! reflector (the limit of this path) and by nftables DNAT; and connections per second
//! through xlb, nftables DNAT and HAProxy.
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
    net::IpAddr,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    maps::{Array, PerCpuArray},
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp},
};
use lb_common::Reason;
use xlb_lab::{
    clients,
    daemon::{Daemon, VipSpec},
    packet::{udp, v4},
    servers::Servers,
    topology::{Topology, VIP4, attach_xdp, backend4, client4, in_ns},
};

use crate::{Mode, fail, median_run, stats};

/// Distinct flows (UDP source ports) the generator cycles through.
const FLOWS: u32 = 4096;
/// UDP port of the benchmark VIP.
const PORT: u16 = 7;
/// Backends behind the VIP.
pub(crate) const BACKENDS: usize = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Forwarder {
    Reflector,
    Xlb,
    Nft,
    Haproxy,
}

impl Forwarder {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Forwarder::Reflector => "XDP_TX reflector (the path's limit)",
            Forwarder::Xlb => "xlb",
            Forwarder::Nft => "nftables DNAT (numgen, conntrack)",
            Forwarder::Haproxy => "HAProxy 2.6, TCP mode",
        }
    }
}

/// Sets entry 0 of the array map `name` of `ebpf` to `value`.
pub(crate) fn set_first<V: aya::Pod>(ebpf: &mut Ebpf, name: &str, value: V) {
    let mut map: Array<_, V> = ebpf
        .map_mut(name)
        .and_then(|m| Array::try_from(m).ok())
        .unwrap_or_else(|| fail(format!("no array map {name}")));
    map.set(0, value, 0)
        .unwrap_or_else(|e| fail(format!("writing {name}: {e}")));
}

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

fn mac_of(ns: &str, iface: &'static str) -> [u8; 6] {
    in_ns(ns, move || {
        xlb::dataplane::loader::interface_mac(iface)
            .unwrap_or_else(|e| fail(format!("MAC of {iface}: {e}")))
    })
}

/// Busy CPU time of the whole machine so far, in seconds (/proc/stat, USER_HZ = 100).
pub(crate) fn busy_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: everything but idle and iowait.
    let busy: u64 = fields
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != 3 && i != 4 && i < 8)
        .map(|(_, v)| v)
        .sum();
    busy as f64 / 100.0
}

/// What one forwarder does to the lab's load balancer; dropped after its run.
pub(crate) enum Lb {
    Xdp(Ebpf),
    Daemon(Box<Daemon>),
    Nft,
    Haproxy {
        child: Child,
        /// Its config and log; removed on drop.
        _dir: tempfile::TempDir,
    },
}

impl Drop for Lb {
    fn drop(&mut self) {
        if let Lb::Haproxy { child, .. } = self {
            #[expect(
                clippy::let_underscore_must_use,
                reason = "HAProxy may have exited already"
            )]
            let _ = child.kill();
            #[expect(
                clippy::let_underscore_must_use,
                reason = "only reaps the process; its status was not asked for"
            )]
            let _ = child.wait();
        }
    }
}

/// nftables DNAT as kube-proxy's nftables mode builds it: a weighted `numgen` map picks
/// the endpoint of a new connection, conntrack keeps later packets on it. Masquerade
/// brings the replies back through the load balancer (without DSR they must return
/// through it to be un-NATed).
fn nft_rules(proto: &str, port: u16) -> String {
    let endpoints: Vec<String> = (0..BACKENDS)
        .map(|i| format!("{i} : {}", backend4(i)))
        .collect();
    format!(
        "table ip xlbbench {{\n\
         chain pre {{\n\
         type nat hook prerouting priority dstnat;\n\
         ip daddr {VIP4} {proto} dport {port} counter \
         dnat to numgen random mod {BACKENDS} map {{ {} }}\n\
         }}\n\
         chain post {{\n\
         type nat hook postrouting priority srcnat;\n\
         ip daddr 198.18.0.0/24 ct status dnat counter masquerade\n\
         }}\n\
         chain forwarded {{\n\
         type filter hook forward priority filter;\n\
         counter\n\
         }}\n\
         }}\n",
        endpoints.join(", ")
    )
}

pub(crate) fn setup_nft(topo: &Topology, proto: &str, port: u16) {
    let lb = &topo.lb;
    lb.sh("sysctl -qw net.ipv4.ip_forward=1");
    // The LB forwards out of the interface it received on: no ICMP redirects.
    lb.sh("sysctl -qw net.ipv4.conf.all.send_redirects=0 net.ipv4.conf.eth0.send_redirects=0");
    let rules = nft_rules(proto, port);
    lb.sh(&format!("nft -f - <<'EOF'\n{rules}EOF"));
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

/// HAProxy in TCP mode on the LB, holding the VIP on `lo` and balancing `port` round
/// robin over the backends' same port; returns once it accepts connections.
pub(crate) fn setup_haproxy(topo: &Topology, port: u16) -> Lb {
    topo.lb.sh(&format!("ip addr add {VIP4}/32 dev lo"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| fail(format!("tempdir: {e}")));
    let servers: String = (0..BACKENDS)
        .map(|i| format!("  server b{} {}:{port} weight 1\n", i + 1, backend4(i)))
        .collect();
    let cfg = format!(
        "global\n  maxconn 4096\n  nbthread 2\ndefaults\n  mode tcp\n  timeout connect 2s\n  \
         timeout client 10s\n  timeout server 10s\nfrontend f\n  bind {VIP4}:{port}\n  \
         default_backend b\nbackend b\n  balance roundrobin\n{servers}"
    );
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, cfg).unwrap_or_else(|e| fail(format!("haproxy.cfg: {e}")));
    let child = Command::new("ip")
        .args(["netns", "exec", &topo.lb.name, "haproxy", "-db", "-f"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(dir.path().join("haproxy.log"))
                .unwrap_or_else(|e| fail(format!("haproxy.log: {e}"))),
        )
        .spawn()
        .unwrap_or_else(|e| fail(format!("start haproxy: {e}")));
    // Wait until it accepts: the bounded loop gives up after 5 s.
    let deadline = Instant::now() + Duration::from_secs(5);
    let vip: IpAddr = VIP4.parse().unwrap_or_else(|_| fail("VIP4".into()));
    let ns = topo.client().name.clone();
    let accepts = move || {
        let to = std::net::SocketAddr::new(vip, port);
        in_ns(&ns, move || {
            std::net::TcpStream::connect_timeout(&to, Duration::from_secs(1)).is_ok()
        })
    };
    while !accepts() {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.path().join("haproxy.log")).unwrap_or_default();
            fail(format!("haproxy did not accept within 5 s: {log}"));
        }
        thread::sleep(Duration::from_millis(50));
    }
    Lb::Haproxy { child, _dir: dir }
}

/// The XDP_TX reflector on the LB's eth0: every frame goes to the first backend with
/// only its MACs rewritten.
pub(crate) fn reflector(topo: &Topology) -> Lb {
    let b1 = mac_of(&topo.backends[0].name, "eth0");
    let lb_mac = mac_of(&topo.lb.name, "eth0");
    Lb::Xdp(attach_xdp(
        &topo.lb.name,
        xlb::object::BENCH_OBJECT,
        "xlb_reflect",
        "eth0",
        move |ebpf| {
            let mut macs = [0u8; 12];
            macs[..6].copy_from_slice(&b1);
            macs[6..].copy_from_slice(&lb_mac);
            set_first(ebpf, "reflect_macs", macs);
        },
    ))
}

/// Starts the real daemon with one VIP on the LB's eth0.
pub(crate) fn setup_xlb(topo: &Topology, spec: VipSpec) -> Lb {
    let mut d = Daemon::new(topo);
    d.write_config(&[spec]);
    d.start();
    Lb::Daemon(Box::new(d))
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
    let forwarders = [Forwarder::Reflector, Forwarder::Xlb, Forwarder::Nft];
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
         real daemon, weights 1:1:1, native XDP), an XDP_TX reflector that only rewrites \
         the MACs (the most any XDP forwarder can do on this path), and nftables DNAT with \
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

/// One run of the connection-rate benchmark: connections completed, seconds, CPU.
fn connection_run(fwd: Forwarder, secs: u64) -> (u64, f64, f64) {
    let topo = Topology::new(2, BACKENDS);
    let _servers = Servers::start(&topo);
    let _lb = match fwd {
        Forwarder::Xlb => setup_xlb(&topo, VipSpec::tcp("web", VIP4, 80, &[1; BACKENDS])),
        Forwarder::Nft => {
            setup_nft(&topo, "tcp", 80);
            Lb::Nft
        }
        Forwarder::Haproxy => setup_haproxy(&topo, 80),
        Forwarder::Reflector => fail("the reflector does not terminate connections".into()),
    };
    let vip: IpAddr = VIP4.parse().unwrap_or_else(|_| fail("VIP4".into()));
    let cpu0 = busy_cpu_secs();
    let t = Instant::now();
    // One closed loop of short connections per client namespace, bounded in time.
    let loops: Vec<_> = topo
        .clients
        .iter()
        .map(|c| {
            let ns = c.name.clone();
            thread::spawn(move || {
                in_ns(&ns, move || {
                    let deadline = Instant::now() + Duration::from_secs(secs);
                    let (mut ok, mut failed) = (0u64, 0u64);
                    while Instant::now() < deadline {
                        match clients::http_once(vip) {
                            Ok(_) => ok += 1,
                            Err(_) => failed += 1,
                        }
                    }
                    (ok, failed)
                })
            })
        })
        .collect();
    let (mut ok, mut failed) = (0, 0);
    for l in loops {
        let (o, f) = l
            .join()
            .unwrap_or_else(|_| fail("client loop panicked".into()));
        ok += o;
        failed += f;
    }
    let elapsed = t.elapsed().as_secs_f64();
    let cpu = busy_cpu_secs() - cpu0;
    if failed > ok / 100 {
        fail(format!(
            "{}: {failed} of {} connections failed",
            fwd.name(),
            ok + failed
        ));
    }
    (ok, elapsed, cpu)
}

/// The connection half of section 3.
pub(crate) fn connection_rate(mode: &Mode, md: &mut String) {
    eprintln!("bench: connection rate");
    let secs = if mode.runs > 3 { 5 } else { 2 };
    let forwarders = [Forwarder::Xlb, Forwarder::Nft, Forwarder::Haproxy];
    let mut rates: Vec<Vec<(f64, f64)>> = vec![Vec::new(); forwarders.len()];
    for round in 0..mode.runs {
        for (i, &f) in forwarders.iter().enumerate() {
            let (n, s, cpu) = connection_run(f, secs);
            eprintln!(
                "bench: round {round}, {}: {:.0} connections/s",
                f.name(),
                n as f64 / s
            );
            rates[i].push((n as f64 / s, cpu / (n.max(1) as f64 / 1000.0)));
        }
    }
    push_line!(
        md,
        "## 3b. Connection rate against nftables and HAProxy\n\n\
         Method: a fresh lab topology per run with two clients and {BACKENDS} backends \
         running the lab's HTTP server; each client runs one closed loop of short HTTP/1.1 \
         connections (connect, GET, read the reply, close) to {VIP4}:80 for {secs} s. xlb \
         forwards with L2 DSR (replies go straight from the backend to the client); \
         nftables DNATs and masquerades (replies return through the LB to be un-NATed); \
         HAProxy holds the VIP and opens a second connection to a backend (round robin). \
         {} rounds, forwarders in turn. CPU: busy time of the whole machine (clients, \
         servers and forwarder) per 1000 connections.\n\n\
         | forwarder | connections/s (median) | spread | x xlb | CPU s per 1000 connections |\n\
         |---|---:|---:|---:|---:|",
        mode.runs
    );
    let xlb = stats(rates[0].iter().map(|r| r.0).collect()).0;
    for (i, f) in forwarders.iter().enumerate() {
        let (m, lo, hi) = stats(rates[i].iter().map(|r| r.0).collect());
        let (cpu, _, _) = stats(rates[i].iter().map(|r| r.1).collect());
        push_line!(
            md,
            "| {} | {m:.0} | {lo:.0}..{hi:.0} | {:.2} | {cpu:.3} |",
            f.name(),
            m / xlb
        );
    }
    push_line!(
        md,
        "\nThe clients (blocking sockets, one connection at a time) and the backends share \
         the two CPUs with the forwarder, so these rates bound what this VM can do end to \
         end; the CPU column shows what each forwarder adds.\n"
    );
}
