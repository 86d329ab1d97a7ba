//! The connection half of section 3: connections per second through xlb, nftables DNAT
//! and HAProxy, each run on a fresh lab topology.

use std::{
    net::IpAddr,
    thread,
    time::{Duration, Instant},
};

use xlb_lab::{
    clients,
    daemon::VipSpec,
    servers::Servers,
    topology::{Topology, VIP4, in_ns},
};

use crate::{
    Mode, fail,
    forwarders::{BACKENDS, Forwarder, Lb, busy_cpu_secs, setup_haproxy, setup_nft, setup_xlb},
    stats,
};

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
        Forwarder::XlbIpip => fail("connections are measured with l2-dsr".into()),
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
