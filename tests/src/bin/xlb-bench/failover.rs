//! Section 6: failover. How long after a backend dies do requests still fail (the real
//! daemon, servers and clients of the lab), and how long a round of health probes takes
//! for 1000 backends, half of which never answer.

use std::{
    net::{IpAddr, SocketAddr, TcpListener},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use xlb_lab::{
    clients::Requests,
    daemon::{Check, Daemon, VipSpec},
    netns::Netns,
    servers::{HTTP_PORT, Servers},
    topology::{Topology, VIP4, enter},
};

use super::{Mode, fail, ms, stats};

/// Section 6.
pub(crate) fn failover(mode: &Mode, md: &mut String) {
    eprintln!("bench: failover");
    let runs = mode.runs.min(5);
    push_line!(
        md,
        "## 6. Failover\n\n### Time from a backend's death to the last failed request\n\n\
         Method: per run a fresh lab topology (one client, 3 backends running the lab's \
         HTTP server, weights 1:1:1) and the real daemon with TCP health checks of port 80. \
         The client runs 3 loops of short HTTP requests to the VIP (a new connection each, \
         5 ms apart, each giving up after 500 ms). After 1 s plus i/{runs} of the probe \
         interval in run i (so the kills fall at phases spread evenly over the probe \
         rounds; probing starts with the daemon), backend b2's server is killed (its \
         listeners close: connections are refused); the daemon takes it out \
         with no operator action; 1 s after `xlb status` shows it held down, the loops \
         stop. \"Last failure\" is when the last failed request started, after the kill \
         (a request started later went to the new table); \"held down\" is when status \
         first showed it (polled every 50 ms). Median of {runs} runs, spread min..max.\n\n\
         | checks | last failure, ms (median) | spread | held down, ms (median) | spread | \
         failed requests (median) |\n|---|---:|---:|---:|---:|---:|"
    );
    for (what, check) in [
        (
            "interval 200 ms, timeout 200 ms, fall 2",
            Check {
                fall: 2,
                ..Check::tcp(HTTP_PORT)
            },
        ),
        (
            "the defaults: interval 1000 ms, timeout 500 ms, fall 3",
            Check {
                interval_ms: 1000,
                timeout_ms: 500,
                ..Check::tcp(HTTP_PORT)
            },
        ),
    ] {
        let samples: Vec<(f64, f64, f64)> = (0..runs)
            .map(|i| {
                let phase = Duration::from_millis(check.interval_ms) * i as u32 / runs as u32;
                death(&check, phase)
            })
            .collect();
        let (last, lo, hi) = stats(samples.iter().map(|s| s.0).collect());
        let (held, hlo, hhi) = stats(samples.iter().map(|s| s.1).collect());
        let (failed, _, _) = stats(samples.iter().map(|s| s.2).collect());
        push_line!(
            md,
            "| {what} | {last:.0} | {lo:.0}..{hi:.0} | {held:.0} | {hlo:.0}..{hhi:.0} | \
             {failed:.0} |"
        );
    }
    push_line!(
        md,
        "\nA dead backend is down after `fall` failed probes; the first comes within one \
         interval of the death, each next one an interval after the previous round ended \
         (a refused connect fails at once), so the expected time is between (fall - 1) \
         and fall intervals, plus the generation's commit.\n"
    );
    probe_rounds(mode, md);
}

/// One run, killing b2 `phase` after a second of traffic: (last failure after the kill,
/// held down after the kill, failed requests).
fn death(check: &Check, phase: Duration) -> (f64, f64, f64) {
    let topo = Topology::new(1, 3);
    let mut servers = Servers::start(&topo);
    let mut daemon = Daemon::new(&topo);
    daemon.write_config(&[VipSpec {
        health: Some(check.clone()),
        ..VipSpec::tcp("web", VIP4, HTTP_PORT, &[1, 1, 1])
    }]);
    daemon.start();
    let vip: IpAddr = VIP4.parse().unwrap_or_else(|e| fail(format!("{e}")));
    let req = Requests::start(
        &topo.client().name,
        vip,
        3,
        Duration::from_millis(5),
        Duration::from_millis(500),
        20_000,
        Duration::from_secs(30),
    );
    thread::sleep(Duration::from_secs(1) + phase);
    let killed = req.now();
    servers.kill(1);
    let (_, held) = daemon.wait_status("b2 held down", Duration::from_secs(20), |s| {
        s["vips"][0]["backends"][1]["held"] == "down"
    });
    thread::sleep(Duration::from_secs(1));
    let attempts = req.finish();
    let last = attempts
        .last_failure()
        .unwrap_or_else(|| fail("no request failed: b2 did not die".into()));
    (
        ms(last.saturating_sub(killed)),
        ms(held),
        attempts.failures().count() as f64,
    )
}

/// Backends of the probe-round benchmark.
const BACKENDS: usize = 1000;
const HEALTH_PORT: u16 = 8080;
const INTERVAL_MS: u64 = 1000;
const TIMEOUT_MS: u64 = 500;
/// Backend addresses: a local route in the target namespace makes all of them its own;
/// the answering half is 198.18.16.0/23, the silent half 198.18.18.0/23.
const ROUTED: &str = "198.18.16.0/22";
const SILENT: &str = "198.18.18.0/23";

fn backend_address(i: usize) -> String {
    let (base, k) = if i < BACKENDS / 2 {
        (16, i)
    } else {
        (18, i - BACKENDS / 2)
    };
    format!("198.18.{}.{}", base + k / 250, 1 + k % 250)
}

/// A config of one VIP with `BACKENDS` backends (explicit MACs: no neighbour lookups),
/// health-checked on `HEALTH_PORT`.
fn config(daemon: &Daemon) -> String {
    let mut text = daemon.daemon_section();
    text.push_str(&format!(
        "\n[[vip]]\nname = \"web\"\naddress = \"{VIP4}\"\nport = 80\nprotocol = \"tcp\"\n\
         \n[vip.health]\nport = {HEALTH_PORT}\ninterval_ms = {INTERVAL_MS}\n\
         timeout_ms = {TIMEOUT_MS}\nrise = 2\nfall = 3\n"
    ));
    for i in 0..BACKENDS {
        text.push_str(&format!(
            "\n[[vip.backend]]\nname = \"b{i}\"\naddress = \"{}\"\n\
             mac = \"02:00:00:00:{:02x}:{:02x}\"\nweight = 1\n",
            backend_address(i),
            i / 256,
            i % 256
        ));
    }
    text
}

/// Accepts on `HEALTH_PORT` in namespace `ns` until `stop`, recording when each
/// connection was accepted. The backlog holds a whole round.
fn acceptor(
    ns: &str,
    stop: Arc<AtomicBool>,
    times: Arc<Mutex<Vec<Instant>>>,
) -> thread::JoinHandle<()> {
    let ns = ns.to_string();
    thread::spawn(move || {
        enter(&ns);
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .unwrap_or_else(|e| fail(format!("socket: {e}")));
        let addr: SocketAddr = ([0, 0, 0, 0], HEALTH_PORT).into();
        sock.set_reuse_address(true)
            .and_then(|()| sock.bind(&addr.into()))
            .and_then(|()| sock.listen(4096))
            .unwrap_or_else(|e| fail(format!("listen on {addr}: {e}")));
        let listener: TcpListener = sock.into();
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| fail(format!("nonblocking: {e}")));
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok(_) => times
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(Instant::now()),
                Err(_) => thread::sleep(Duration::from_millis(1)),
            }
        }
    })
}

/// Groups accept times into rounds (a gap of over 200 ms starts a new one): the start
/// and the spread of each.
fn rounds(mut times: Vec<Instant>) -> Vec<(Instant, Duration, usize)> {
    times.sort();
    let mut out: Vec<(Instant, Duration, usize)> = Vec::new();
    for t in times {
        match out.last_mut() {
            Some((start, spread, n))
                if t.duration_since(*start + *spread) < Duration::from_millis(200) =>
            {
                *spread = t.duration_since(*start);
                *n += 1;
            }
            _ => out.push((t, Duration::ZERO, 1)),
        }
    }
    out
}

/// What one daemon with `BACKENDS` checked backends showed.
struct ProbeRun {
    /// Round durations: the time between two rounds' starts minus `INTERVAL_MS`.
    round_ms: Vec<f64>,
    /// Time from the first accept to the last within a round.
    spread_ms: Vec<f64>,
    /// Accepts per round (after the first).
    answered: Vec<usize>,
    /// From the daemon's start until status showed every silent backend down.
    all_down: Option<Duration>,
}

/// Starts a daemon whose VIP has `BACKENDS` backends in a namespace of their own (half
/// of them silent if `silent_half`), lets it probe for `rounds_wanted` rounds and
/// measures them at the backends.
fn probe_run(silent_half: bool, rounds_wanted: u32) -> ProbeRun {
    let topo = Topology::new(0, 0);
    let target = Netns::new("probed");
    topo.lb.sh(&format!(
        "ip link add probe0 type veth peer name eth0 netns {}",
        target.name
    ));
    topo.lb.sh("ip addr add 198.19.0.1/24 dev probe0");
    topo.lb.sh("ip link set probe0 up");
    topo.lb.sh(&format!("ip route add {ROUTED} via 198.19.0.2"));
    target.sh("ip addr add 198.19.0.2/24 dev eth0");
    target.sh("ip link set eth0 up");
    target.sh(&format!("ip route add local {ROUTED} dev lo"));
    if silent_half {
        target.sh("nft add table ip xlbbench");
        target.sh("nft 'add chain ip xlbbench in { type filter hook input priority 0; }'");
        target.sh(&format!(
            "nft add rule ip xlbbench in ip daddr {SILENT} tcp dport {HEALTH_PORT} drop"
        ));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let times = Arc::new(Mutex::new(Vec::new()));
    let accepting = acceptor(&target.name, Arc::clone(&stop), Arc::clone(&times));
    let mut daemon = Daemon::new(&topo);
    // Room for the 1000 backends: more than the default `max_backends`.
    daemon.settings = "max_backends = 2048\n".into();
    std::fs::write(daemon.config_path(), config(&daemon))
        .unwrap_or_else(|e| fail(format!("write config: {e}")));
    let started = Instant::now();
    daemon.start();
    let mut all_down = None;
    let deadline = started
        + Duration::from_millis((INTERVAL_MS + TIMEOUT_MS + 200) * u64::from(rounds_wanted + 1));
    while Instant::now() < deadline {
        if all_down.is_none() && silent_half {
            let status = daemon.status();
            let down = status["vips"][0]["backends"]
                .as_array()
                .map_or(0, |b| b.iter().filter(|b| b["healthy"] == false).count());
            if down == BACKENDS / 2 {
                all_down = Some(started.elapsed());
            }
        }
        thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    #[expect(
        clippy::let_underscore_must_use,
        reason = "a panic of the accepting thread has printed why; the rounds it recorded are checked below"
    )]
    let _ = accepting.join();
    let times = times.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let rounds = rounds(times);
    if rounds.len() < 3 {
        fail(format!(
            "only {} probe rounds seen: {}",
            rounds.len(),
            daemon.log()
        ));
    }
    ProbeRun {
        round_ms: rounds
            .windows(2)
            .map(|w| ms(w[1].0.duration_since(w[0].0)) - INTERVAL_MS as f64)
            .collect(),
        spread_ms: rounds.iter().map(|r| ms(r.1)).collect(),
        answered: rounds.iter().skip(1).map(|r| r.2).collect(),
        all_down,
    }
}

/// Probe rounds of 1000 backends.
fn probe_rounds(mode: &Mode, md: &mut String) {
    let rounds_wanted = if mode.runs < 5 { 5 } else { 9 };
    let silent = probe_run(true, rounds_wanted);
    let answering = probe_run(false, rounds_wanted);
    push_line!(
        md,
        "### Probe round time for {BACKENDS} backends\n\n\
         Method: the real daemon with one VIP of {BACKENDS} backends (explicit MACs, so no \
         neighbour lookups) checked by TCP connect to port {HEALTH_PORT}, interval \
         {INTERVAL_MS} ms, timeout {TIMEOUT_MS} ms, rise 2, fall 3. The backends' addresses \
         are all local to one namespace behind a veth from the load balancer's namespace \
         (a `local` route for {ROUTED}), where one listener (backlog 4096) accepts for all \
         of them; an nftables rule there drops the probes' SYNs to {SILENT}, the silent \
         half, so that their probes wait out the timeout. The round is measured at the \
         backends, outside the daemon (the daemon's own `xlb_health_round_seconds` times \
         the probes only): the listener notes when it accepts each probe, the accepts fall into one burst per round, and since a round starts \
         {INTERVAL_MS} ms after the previous one ended (`daemon/health.rs`), the time \
         between two bursts' starts minus {INTERVAL_MS} ms is one round's duration: its \
         probes, and handing the results to the controller (with a generation when backends \
         go down). {} rounds per daemon; median, spread min..max. A second daemon with all \
         {BACKENDS} answering shows the round without timeouts.\n\n\
         | backends | round, ms (median) | spread | accepts per round | one round's accepts \
         spread over, ms (median) |\n|---|---:|---:|---:|---:|",
        silent.round_ms.len()
    );
    for (what, run) in [
        ("500 answering, 500 silent", &silent),
        ("1000 answering", &answering),
    ] {
        let (round, lo, hi) = stats(run.round_ms.clone());
        let (spread, _, _) = stats(run.spread_ms.clone());
        let (answered, _, _) = stats(run.answered.iter().map(|&n| n as f64).collect());
        push_line!(
            md,
            "| {what} | {round:.0} | {lo:.0}..{hi:.0} | {answered:.0} | {spread:.1} |"
        );
    }
    let (round, _, _) = stats(silent.round_ms.clone());
    push_line!(
        md,
        "\nWith half the backends silent a round takes the timeout ({TIMEOUT_MS} ms) plus \
         {:.0} ms: the probes run at once (at most 1024 in flight), so the round is as long \
         as its slowest probe. {}\n",
        round - TIMEOUT_MS as f64,
        silent.all_down.map_or_else(
            || "Status never showed all 500 silent backends down.".into(),
            |d| format!(
                "The other measure, from the daemon's start until `xlb status` showed all 500 \
                 silent backends down (fall = 3 rounds), took {:.2} s.",
                d.as_secs_f64()
            )
        )
    );
}
