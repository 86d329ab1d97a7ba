//! Section 3c: the packet rate of a TCP stream, the one kind of traffic that xlb, the
//! XDP_TX reflector, nftables DNAT and HAProxy can all carry.
//!
//! The UDP frames of section 2 cannot pass through HAProxy, which terminates TCP. Here
//! real TCP clients write fixed-size messages with `MSG_EOR`, which stops the kernel from
//! merging two messages into one segment, so every message leaves the client as its own
//! frame: the messages delivered are the packets carried. The backends' discard servers
//! count the bytes; every byte sent must arrive.

use std::{
    io::{self, Read as _},
    net::{IpAddr, Shutdown, SocketAddr, TcpStream},
    os::fd::AsRawFd,
    thread,
    time::{Duration, Instant},
};

use xlb_lab::{
    daemon::VipSpec,
    netns::Netns,
    servers::{DISCARD_PORT, Servers},
    topology::{Topology, VIP4, in_ns},
};

use crate::{
    Mode, fail,
    forwarders::{
        BACKENDS, Forwarder, Lb, busy_cpu_secs, reflector, setup_haproxy, setup_nft, setup_xlb,
    },
    median_run, profile, stats,
};

/// Payload bytes per message (a 130-byte frame with the TCP timestamp option).
const MESSAGE: usize = 64;
/// Messages per `sendmmsg` call.
const BATCH: usize = 32;
const CLIENTS: usize = 2;
const CONNECTIONS_PER_CLIENT: usize = 2;
/// Most messages one connection sends, a bound besides its time limit.
const MAX_MESSAGES: u64 = 20_000_000;

/// One run: what the clients sent and the backends received, and what it took.
#[derive(Clone, Debug, Default)]
struct SegmentRun {
    messages: u64,
    /// The clients' `Tcp: OutSegs` and `RetransSegs` over the run (handshakes and FINs
    /// included).
    out_segs: u64,
    retrans_segs: u64,
    /// The backends' `Tcp: InSegs`: what their TCP stacks received.
    backend_segs: u64,
    secs: f64,
    cpu_secs: f64,
}

impl SegmentRun {
    fn rate(&self) -> f64 {
        self.messages as f64 / self.secs
    }

    fn cpu_per_million(&self) -> f64 {
        self.cpu_secs / (self.messages.max(1) as f64 / 1e6)
    }
}

/// TCP segment counters (/proc/net/snmp), of one namespace or summed over several.
#[derive(Clone, Copy, Debug, Default)]
struct TcpSegments {
    out: u64,
    retrans: u64,
    received: u64,
}

impl TcpSegments {
    /// The sum over `nss`.
    fn of(nss: &[Netns]) -> TcpSegments {
        nss.iter()
            .map(tcp_segments)
            .fold(TcpSegments::default(), |a, b| TcpSegments {
                out: a.out + b.out,
                retrans: a.retrans + b.retrans,
                received: a.received + b.received,
            })
    }
}

/// `Tcp: OutSegs`, `RetransSegs` and `InSegs` of namespace `ns`.
fn tcp_segments(ns: &Netns) -> TcpSegments {
    let snmp = ns.sh("cat /proc/net/snmp");
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (Some(names), Some(values)) = (tcp.next(), tcp.next()) else {
        fail(format!("no Tcp lines in /proc/net/snmp of {}", ns.name));
    };
    let field = |name: &str| -> u64 {
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or_else(|| fail(format!("no {name} in /proc/net/snmp of {}", ns.name)))
    };
    TcpSegments {
        out: field("OutSegs"),
        retrans: field("RetransSegs"),
        received: field("InSegs"),
    }
}

/// One connection to `to`: `MESSAGE`-byte messages, each its own segment, for `secs`
/// seconds (at most `MAX_MESSAGES`); then closes its side and waits for the far end to
/// close, which the discard server does once it has read everything. Returns the
/// messages sent.
fn stream(to: SocketAddr, secs: u64) -> io::Result<u64> {
    let mut conn = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
    conn.set_nodelay(true)?;
    conn.set_write_timeout(Some(Duration::from_secs(5)))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let payload = [0x55u8; MESSAGE];
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: MESSAGE,
    };
    // SAFETY: mmsghdr is plain data; all-zero is a valid empty header.
    let mut hdrs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut sent = 0u64;
    while Instant::now() < deadline && sent < MAX_MESSAGES {
        for h in &mut hdrs {
            h.msg_hdr.msg_iov = &mut iov;
            h.msg_hdr.msg_iovlen = 1;
            h.msg_len = 0;
        }
        // SAFETY: BATCH valid headers, each pointing at `iov`, which points at `payload`;
        // all outlive the call.
        let n = unsafe {
            libc::sendmmsg(
                conn.as_raw_fd(),
                hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_EOR,
            )
        };
        let Ok(n) = usize::try_from(n) else {
            return Err(io::Error::last_os_error());
        };
        if let Some(h) = hdrs[..n].iter().find(|h| h.msg_len as usize != MESSAGE) {
            return Err(io::Error::other(format!(
                "a message went out with {} of {MESSAGE} bytes",
                h.msg_len
            )));
        }
        sent += n as u64;
    }
    conn.shutdown(Shutdown::Write)?;
    let mut rest = [0u8; 16];
    match conn.read(&mut rest)? {
        0 => Ok(sent),
        n => Err(io::Error::other(format!(
            "the discard server answered {n} bytes"
        ))),
    }
}

/// Builds a topology, sets `fwd` up and streams for `secs`; with `profiled`, the
/// streaming runs under a whole-machine `perf record`, whose report comes back too.
fn segment_run(
    fwd: Forwarder,
    secs: u64,
    profiled: bool,
) -> (SegmentRun, Option<Vec<(f64, String)>>) {
    let topo = Topology::new(CLIENTS, BACKENDS);
    let servers = Servers::start(&topo);
    let lb = match fwd {
        Forwarder::Reflector => reflector(&topo),
        Forwarder::Xlb => setup_xlb(
            &topo,
            VipSpec::tcp("sink", VIP4, DISCARD_PORT, &[1; BACKENDS]),
        ),
        Forwarder::Nft => {
            setup_nft(&topo, "tcp", DISCARD_PORT);
            Lb::Nft
        }
        Forwarder::Haproxy => setup_haproxy(&topo, DISCARD_PORT),
        Forwarder::XlbIpip => fail("segments are measured with l2-dsr".into()),
    };
    let vip: IpAddr = VIP4.parse().unwrap_or_else(|_| fail("VIP4".into()));
    let to = SocketAddr::new(vip, DISCARD_PORT);
    // Connections made while setting up (HAProxy's readiness check) carry no bytes.
    let delivered = || -> u64 {
        servers
            .counts
            .iter()
            .map(|c| c.discarded_bytes.load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    };
    let bytes0 = delivered();
    let clients0 = TcpSegments::of(&topo.clients);
    let backends0 = TcpSegments::of(&topo.backends);
    let run = || {
        let cpu0 = busy_cpu_secs();
        let t = Instant::now();
        let streams: Vec<_> = topo
            .clients
            .iter()
            .flat_map(|c| (0..CONNECTIONS_PER_CLIENT).map(move |_| c.name.clone()))
            .map(|ns| thread::spawn(move || in_ns(&ns, move || stream(to, secs))))
            .collect();
        let mut messages = 0;
        for s in streams {
            match s.join() {
                Ok(Ok(n)) => messages += n,
                Ok(Err(e)) => fail(format!("{}: a client stream failed: {e}", fwd.name())),
                Err(_) => fail("a client stream panicked".into()),
            }
        }
        (messages, t.elapsed().as_secs_f64(), busy_cpu_secs() - cpu0)
    };
    let ((messages, elapsed, cpu_secs), report) = if profiled {
        let (out, report) = profile(&["-a"], run);
        (out, Some(report))
    } else {
        (run(), None)
    };
    let clients = TcpSegments::of(&topo.clients);
    let backends = TcpSegments::of(&topo.backends);
    let delivered_bytes = delivered() - bytes0;
    drop(lb);
    if delivered_bytes != messages * MESSAGE as u64 {
        fail(format!(
            "{}: the clients sent {} bytes, the backends read {delivered_bytes}",
            fwd.name(),
            messages * MESSAGE as u64
        ));
    }
    let run = SegmentRun {
        messages,
        out_segs: clients.out - clients0.out,
        retrans_segs: clients.retrans - clients0.retrans,
        backend_segs: backends.received - backends0.received,
        secs: elapsed,
        cpu_secs,
    };
    (run, report)
}

/// Section 3c.
pub(crate) fn segment_rate(mode: &Mode, md: &mut String, missed: &mut Vec<String>) {
    eprintln!("bench: TCP segment rate");
    let secs = if mode.runs > 3 { 3 } else { 1 };
    let forwarders = [
        Forwarder::Reflector,
        Forwarder::Xlb,
        Forwarder::Nft,
        Forwarder::Haproxy,
    ];
    let mut runs: Vec<Vec<SegmentRun>> = vec![Vec::new(); forwarders.len()];
    for round in 0..mode.runs {
        for (i, &f) in forwarders.iter().enumerate() {
            let (r, _) = segment_run(f, secs, false);
            eprintln!(
                "bench: round {round}, {}: {:.0} messages/s; segments: {} from the clients, \
                 {} retransmitted, {} at the backends",
                f.name(),
                r.rate(),
                r.out_segs,
                r.retrans_segs,
                r.backend_segs
            );
            runs[i].push(r);
        }
    }
    // One more xlb run, under a whole-machine profile: where the CPU per message goes.
    let (_, report) = segment_run(Forwarder::Xlb, secs, true);
    let symbols = report.unwrap_or_default();
    // xlb's own program, the places where the most samples landed, and the idle loop.
    let program: f64 = symbols
        .iter()
        .filter(|s| s.1.contains("bpf_prog_") && s.1.ends_with("_xlb"))
        .map(|s| s.0)
        .sum();
    let top: String = symbols
        .iter()
        .take(8)
        .map(|s| format!("{}\n", s.1))
        .collect();
    let connections = CLIENTS * CONNECTIONS_PER_CLIENT;
    push_line!(
        md,
        "## 3c. TCP segment rate against nftables and HAProxy\n\n\
         The frames of section 2 are UDP, which HAProxy does not carry; this is the packet \
         rate of the traffic all four forwarders do carry. Method: a fresh lab topology per \
         run with {CLIENTS} clients and {BACKENDS} backends running a discard server on \
         port {DISCARD_PORT}; {connections} TCP connections ({CONNECTIONS_PER_CLIENT} per \
         client) to {VIP4}:{DISCARD_PORT} each write {MESSAGE}-byte messages for {secs} s \
         (`sendmmsg` of {BATCH}, `TCP_NODELAY`, `MSG_EOR`), then close and wait for the \
         backend to close in turn. `MSG_EOR` keeps the kernel from merging messages, so each \
         message leaves the client as one segment: \"client segments\" (`OutSegs` of the \
         client namespaces, handshakes and FINs included) shows it. Packets are these \
         segments: xlb, the reflector (everything to the first backend) and nftables \
         forward each one; HAProxy receives and acknowledges each and writes the bytes into \
         its own connection to a backend, in segments of its own making: \"backend \
         segments\" is what the backends' TCP stacks received (`InSegs`). Every run checks \
         that the backends read every byte sent. Rate: messages delivered / seconds from \
         the first connect to the last close. xlb and the reflector forward with L2 DSR, so \
         the backends' ACKs go straight to the clients; with nftables they return through \
         the LB to be un-NATed. CPU: busy time of the whole machine (clients, backends and \
         forwarder) per million messages. {} rounds, forwarders in turn; the counts are \
         those of the median run.\n\n\
         | forwarder | messages/s (median) | spread | x xlb | CPU s per M messages | \
         messages | client segments | retransmitted | backend segments |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|",
        mode.runs
    );
    let medians: Vec<f64> = runs
        .iter()
        .map(|rs| stats(rs.iter().map(SegmentRun::rate).collect()).0)
        .collect();
    let mut cpus = Vec::new();
    let mut median_runs = Vec::new();
    for (i, f) in forwarders.iter().enumerate() {
        let (m, lo, hi) = stats(runs[i].iter().map(SegmentRun::rate).collect());
        let (cpu, _, _) = stats(runs[i].iter().map(SegmentRun::cpu_per_million).collect());
        cpus.push(cpu);
        let r = median_run(&runs[i], SegmentRun::rate);
        push_line!(
            md,
            "| {} | {m:.0} | {lo:.0}..{hi:.0} | {:.2} | {cpu:.2} | {} | {} | {} | {} |",
            f.name(),
            m / medians[1],
            r.messages,
            r.out_segs,
            r.retrans_segs,
            r.backend_segs
        );
        median_runs.push(r);
    }
    let vs_nft = medians[1] / medians[2];
    let met = vs_nft >= 3.0 && cpus[1] <= cpus[2];
    push_line!(
        md,
        "\nxlb carried {vs_nft:.2}x nftables' segment rate at {:.2}x its CPU per message. \
         Target (>= 3x nftables' packet rate at equal or lower CPU): {}.",
        cpus[1] / cpus[2],
        if met { "met" } else { "MISSED" }
    );
    let haproxy = &median_runs[3];
    let per_segment = haproxy.messages as f64 / haproxy.backend_segs.max(1) as f64;
    push_line!(
        md,
        "\nHAProxy delivered {:.2}x xlb's message rate at {:.2}x xlb's CPU per message. Its \
         backends received {:.1} messages per segment, the packet forwarders' backends one: \
         a proxy reads the byte stream and writes it on in larger segments, so the backends' \
         TCP stacks handle fewer packets for the same messages, while a packet forwarder \
         hands on every segment the clients sent.\n",
        medians[3] / medians[1],
        cpus[3] / cpus[1],
        per_segment,
    );
    push_line!(
        md,
        "Profile of one more xlb run: `perf record -a -e cpu-clock` of the whole machine \
         while the clients stream, then `perf report --no-children --sort sym`. xlb's \
         program (`bpf_prog_..._xlb`) has {program:.2} % of the samples. The eight symbols \
         with the most samples:\n\n```\n{top}```\n\n\
         This VM has no hardware counters, so `cpu-clock` samples on a timer interrupt, \
         which waits while interrupts are off and is then taken where they are turned back \
         on: `_raw_spin_unlock_irqrestore` stands for work done with interrupts off before \
         it (a call-graph profile, `perf record -g`, puts most of it under softirq \
         handling: ksoftirqd, and the clients' and servers' send and receive calls). \
         `pv_native_safe_halt` is idle time.\n"
    );
    if !met {
        missed.push(format!(
            "Three times nftables' TCP segment rate at equal or lower CPU (section 3c): \
             {vs_nft:.2}x at {:.2}x the CPU per message. The reflector, the least any XDP \
             forwarder can do, reaches {:.2}x nftables. The machine spends {:.1} CPU \
             microseconds per message with xlb, and xlb's program has {program:.2} % of \
             the profile's samples: the rest is the clients' and backends' TCP stacks and \
             the veth and bridge path, on the same two CPUs as the forwarder.",
            cpus[1] / cpus[2],
            medians[0] / medians[2],
            cpus[1],
        ));
    }
}
