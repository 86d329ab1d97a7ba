//! `cargo xtask demo --fleet`: three xlb hosts behind a router that spreads the VIP over
//! them by ECMP (tests/src/fleet.rs), under traffic: the spread, one host killed
//! mid-stream with nothing failing, and a host drained and undrained. Each step is
//! checked; the exit status is non-zero if one did not behave as shown.

use std::{collections::BTreeMap, process::ExitCode, time::Duration};

use xlb_lab::{
    clients::{Echo, Load},
    daemon::VipSpec,
    demo::{Step, sleep},
    fleet::{Fleet, Spec, VIP4, host4, vip4},
    servers::ECHO_PORT,
    topology::in_ns,
};

fn main() -> ExitCode {
    xlb_lab::demo::main(
        "the fleet demo builds namespaces, runs BIRD and attaches XDP",
        "All three steps behaved as shown.",
        run,
    )
}

fn check(ok: bool, what: String) -> Step {
    if ok {
        println!("  ok: {what}");
        Ok(())
    } else {
        Err(what)
    }
}

/// New flows per host since `since`, and the hosts' counters now.
fn per_host(fleet: &Fleet, since: &[u64]) -> (Vec<u64>, Vec<u64>) {
    let now: Vec<u64> = (0..fleet.hosts.len())
        .map(|i| {
            if fleet.hosts[i].daemon.pid().is_some() {
                fleet.vip_counter(i, "web", "new_flows")
            } else {
                since[i]
            }
        })
        .collect();
    let delta = now.iter().zip(since).map(|(n, s)| n - s).collect();
    (delta, now)
}

fn show_route(fleet: &Fleet) {
    println!("  router: {VIP4} via {}", fleet.next_hops(VIP4).join(", "));
}

fn failures(loads: &[Load]) -> Vec<String> {
    loads.iter().flat_map(|l| l.report().failures).collect()
}

fn requests(loads: &[Load]) -> u64 {
    loads.iter().map(|l| l.report().requests()).sum()
}

fn run() -> Step {
    println!(
        "Building the fleet: a router (BIRD, ECMP), 3 xlb hosts (xlb run + BIRD), 3 backends, 2 clients"
    );
    let web = VipSpec::tcp("web", VIP4, 80, &[2, 3, 4]);
    let echo = VipSpec::tcp("echo", VIP4, ECHO_PORT, &[2, 3, 4]);
    let mut fleet = Fleet::new(Spec::new(3, vec![web, echo]));
    let took = fleet.wait_next_hops(VIP4, &[0, 1, 2], Duration::from_secs(20));
    println!("  every host announces {VIP4} ({took:?} after the last daemon started)");
    show_route(&fleet);

    println!(
        "\n=== 1. New connections spread over the three hosts; every host picks the same backends"
    );
    let loads: Vec<Load> = fleet
        .clients
        .iter()
        .map(|c| Load::start(&c.name, vip4(), 1_000_000, Duration::from_secs(120)))
        .collect();
    let (_, start) = per_host(&fleet, &[0, 0, 0]);
    sleep(Duration::from_secs(3))?;
    let (spread, mut counters) = per_host(&fleet, &start);
    let total: u64 = spread.iter().sum::<u64>().max(1);
    for (i, n) in spread.iter().enumerate() {
        println!(
            "  lb{i} ({}): {n:>6} new flows  {:>5.1}%",
            host4(i),
            *n as f64 * 100.0 / total as f64
        );
    }
    check(
        spread.iter().all(|&n| n * 6 > total),
        "every host takes new connections".into(),
    )?;
    let fingerprints: Vec<String> = fleet
        .hosts
        .iter()
        .map(|h| {
            h.daemon
                .history()
                .last()
                .map(|r| r["fingerprints"]["web"].to_string())
                .unwrap_or_default()
        })
        .collect();
    check(
        fingerprints.iter().all(|f| *f == fingerprints[0]),
        format!(
            "the three hosts run the same table (fingerprint {})",
            fingerprints[0]
        ),
    )?;

    println!("\n=== 2. A host dies mid-stream (link down, xlb and BIRD killed). Nothing fails.");
    let mut conns: Vec<Echo> = Vec::new();
    for c in &fleet.clients {
        let ns = c.name.clone();
        conns.extend(
            in_ns(&ns, || {
                (0..15)
                    .map(|_| Echo::open(vip4()))
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(|e| format!("opening long-lived connections: {e}"))?,
        );
    }
    let homes: Vec<usize> = conns
        .iter_mut()
        .map(|e| {
            fleet
                .carriers("echo", e, "which host")
                .ok()
                .and_then(|h| h.first().copied())
                .unwrap_or(0)
        })
        .collect();
    let victim = (0..3)
        .max_by_key(|h| homes.iter().filter(|x| *x == h).count())
        .unwrap_or(0);
    let on_victim = homes.iter().filter(|&&h| h == victim).count();
    println!("  30 long-lived connections; {on_victim} go through lb{victim}, which is killed now");
    let down = fleet.kill_host(victim);
    let survivors: Vec<usize> = (0..3).filter(|&h| h != victim).collect();
    fleet.wait_next_hops(VIP4, &survivors, Duration::from_secs(10));
    println!(
        "  the router withdrew lb{victim} {:?} after its link went down (BFD)",
        down.elapsed()
    );
    show_route(&fleet);
    let mut broken = Vec::new();
    for e in &mut conns {
        if let Err(err) = e.ping("still there?") {
            broken.push(err.to_string());
        }
    }
    check(
        broken.is_empty(),
        format!("all 30 long-lived connections answered by their own backend ({broken:?} broke)"),
    )?;
    sleep(Duration::from_secs(2))?;
    let (d, now) = per_host(&fleet, &counters);
    println!("  new flows per host in the last 2 s: {d:?} (lb{victim} is gone)");
    counters = now;
    check(
        failures(&loads).is_empty(),
        format!("{} requests so far, 0 failed", requests(&loads)),
    )?;

    println!(
        "\n=== 3. `xlb host drain` on a survivor: its traffic moves to the last host, then it comes back"
    );
    let drained = survivors[0];
    let out = fleet.hosts[drained]
        .daemon
        .xlb(&["host", "drain", "--timeout", "10s"]);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("  | {line}");
    }
    check(
        out.status.success(),
        format!("lb{drained} drained, its traffic stopped"),
    )?;
    show_route(&fleet);
    (_, counters) = per_host(&fleet, &counters);
    sleep(Duration::from_secs(1))?;
    let (d, now) = per_host(&fleet, &counters);
    check(
        d[drained] == 0,
        format!("lb{drained} got no new flow for a second: {d:?}"),
    )?;
    counters = now;
    fleet.hosts[drained].daemon.xlb_ok(&["host", "undrain"]);
    fleet.wait_next_hops(VIP4, &survivors, Duration::from_secs(5));
    sleep(Duration::from_secs(1))?;
    let (d, _) = per_host(&fleet, &counters);
    check(
        d[drained] > 0,
        format!("lb{drained} takes new flows again after undrain: {d:?}"),
    )?;
    let (mut per_backend, mut failed, mut total) = (BTreeMap::new(), Vec::new(), 0);
    for l in loads {
        let r = l.finish();
        total += r.requests();
        failed.extend(r.failures);
        for (b, n) in r.short {
            *per_backend.entry(b).or_insert(0u64) += n;
        }
    }
    println!("  new connections per backend over the whole demo: {per_backend:?}");
    check(
        failed.is_empty(),
        format!("{total} requests from start to end, failed: {failed:?}"),
    )
}
