//! A fleet of xlb hosts behind a router that spreads the VIPs over them by ECMP, each
//! host announcing through its own BIRD what its health allows (tests/src/fleet.rs):
//! new connections spread over every host and land on the backends the shared table
//! says; a host that dies under 60 long-lived connections is withdrawn by BFD and every
//! connection keeps its backend through another host; a VIP that fails health checks on
//! one host is withdrawn there only; `xlb host drain` moves a host's traffic away with no
//! failed request; a host with another hash seed shows in its table metric.
//!
//! Each test builds its own fleet (namespaces, BIRDs, daemons), so they run in parallel.

#![cfg(test)]

mod failure;
mod lab;
mod lifecycle;
mod metrics;

use std::{
    thread,
    time::{Duration, Instant},
};

use xlb_lab::{
    clients::{Load, follows},
    fleet::{BFD_DETECTION, Fleet, Spec, VIP4, VIP4_ALT, VIP6, client4, host4, host6, vip4},
    require_root,
};

use failure::{fail_busiest_host, weight_change_then_failure};
use lab::{alt, echo, fingerprints, http_from_all, open_echoes, web};

const CONVERGE: Duration = Duration::from_secs(20);

#[test]
fn new_connections_spread_over_every_host_and_follow_the_table() {
    if !require_root("new_connections_spread_over_every_host_and_follow_the_table") {
        return;
    }
    let fleet = Fleet::new(Spec::new(3, vec![web()]));
    let took = fleet.wait_next_hops(VIP4, &[0, 1, 2], CONVERGE);
    eprintln!("all 3 hosts announced within {took:?} of the last daemon start");
    let flows = |i| fleet.vip_counter(i, "web", "new_flows");
    let before: Vec<u64> = (0..3).map(flows).collect();
    let counts = http_from_all(&fleet, vip4(), 1500);
    let per_host: Vec<u64> = (0..3).map(|i| flows(i) - before[i]).collect();
    eprintln!("3000 connections: per host {per_host:?}, per backend {counts:?}");
    assert_eq!(
        per_host.iter().sum::<u64>(),
        3000,
        "every new connection is one new flow on exactly one host: {per_host:?}"
    );
    for (i, n) in per_host.iter().enumerate() {
        assert!(
            *n >= 600,
            "host {i} got {n} of 3000 new connections: ECMP does not spread ({per_host:?})"
        );
    }
    let shares = fleet.hosts[0].daemon.table_shares("web");
    follows(&counts, &shares, 0.03).unwrap_or_else(|e| panic!("{e}"));
    let first = fingerprints(&fleet.hosts[0].daemon);
    for h in &fleet.hosts[1..] {
        assert_eq!(fingerprints(&h.daemon), first, "the hosts' tables differ");
        assert_eq!(h.daemon.table_shares("web"), shares);
    }
}

#[test]
fn a_dead_host_is_withdrawn_by_bfd_and_every_connection_keeps_its_backend() {
    if !require_root("a_dead_host_is_withdrawn_by_bfd_and_every_connection_keeps_its_backend") {
        return;
    }
    let mut fleet = Fleet::new(Spec::new(3, vec![web(), echo()]));
    fleet.wait_next_hops(VIP4, &[0, 1, 2], CONVERGE);
    let mut conns = open_echoes(&fleet, 30);
    let f = fail_busiest_host(&mut fleet, &mut conns, false);
    eprintln!("{f}");
    assert!(
        f.on_victim > 0,
        "no connection went through the killed host"
    );
    assert!(
        f.detection <= BFD_DETECTION + Duration::from_millis(700),
        "withdrawn after {:?}; BFD detects in {BFD_DETECTION:?}",
        f.detection
    );
    let failed: Vec<_> = f.conns.iter().filter_map(|c| c.2.clone()).collect();
    assert!(failed.is_empty(), "connections broke: {failed:#?}");
    // Each connection of the dead host is carried by a survivor now.
    for (e, _) in conns
        .iter_mut()
        .zip(&f.conns)
        .filter(|(_, c)| c.0 == f.victim)
    {
        let now = fleet.carriers("echo", e, "on a survivor").unwrap();
        assert!(
            !now.is_empty() && !now.contains(&f.victim),
            "{} is carried by {now:?}",
            e.local
        );
    }
    // New connections go to the survivors only.
    let counts = http_from_all(&fleet, vip4(), 100);
    assert_eq!(counts.values().sum::<u32>(), 200, "{counts:?}");
}

#[test]
fn after_a_weight_change_on_every_host_a_dead_host_resets_no_connection() {
    if !require_root("after_a_weight_change_on_every_host_a_dead_host_resets_no_connection") {
        return;
    }
    let f = weight_change_then_failure(false);
    eprintln!("after the weight change, hash-threshold ECMP: {f}");
}

#[test]
fn with_a_resilient_next_hop_group_only_the_dead_hosts_flows_move() {
    if !require_root("with_a_resilient_next_hop_group_only_the_dead_hosts_flows_move") {
        return;
    }
    let f = weight_change_then_failure(true);
    eprintln!("after the weight change, resilient group: {f}");
    assert_eq!(f.rehashed, 0, "connections moved between survivors: {f}");
    for (old, moved, _) in &f.conns {
        assert_eq!(*moved, *old == f.victim, "{f}");
    }
}

#[test]
fn a_vip_failing_health_on_one_host_is_withdrawn_there_only() {
    if !require_root("a_vip_failing_health_on_one_host_is_withdrawn_there_only") {
        return;
    }
    let mut fleet = Fleet::new(Spec::new(3, vec![web(), alt()]));
    fleet.wait_next_hops(VIP4, &[0, 1, 2], CONVERGE);
    fleet.wait_next_hops(VIP4_ALT, &[0, 1, 2], CONVERGE);
    // Host 0 can no longer reach alt's check port on any backend (its probes are
    // refused there); web has no checks, and the data path does not use that port.
    fleet.hosts[0].ns.sh(
        "nft 'add table ip lab ; add chain ip lab out { type filter hook output priority 0 ; } ; \
         add rule ip lab out tcp dport 7 reject with tcp reset'",
    );
    let took = fleet.wait_next_hops(VIP4_ALT, &[1, 2], Duration::from_secs(10));
    eprintln!("alt withdrawn from host 0 {took:?} after its probes began to fail");
    assert_eq!(fleet.next_hops(VIP4).len(), 3, "web stays on every host");
    let status = fleet.hosts[0].daemon.status();
    let alt_decision = status["announce"]["vips"]
        .as_array()
        .expect("announce.vips")
        .iter()
        .find(|d| d["vip"] == "alt")
        .cloned()
        .expect("alt's decision");
    assert_eq!(alt_decision["announce"], false, "{alt_decision}");
    assert_ne!(alt_decision["why"], "serving", "{alt_decision}");
    let packets = |i| fleet.vip_counter(i, "alt", "packets");
    let before: Vec<u64> = (0..3).map(packets).collect();
    let counts = http_from_all(&fleet, VIP4_ALT.parse().expect("VIP"), 200);
    assert_eq!(counts.values().sum::<u32>(), 400, "{counts:?}");
    let after: Vec<u64> = (0..3).map(packets).collect();
    assert_eq!(after[0], before[0], "host 0 still gets alt's traffic");
    assert!(
        after[1] > before[1] && after[2] > before[2],
        "{before:?} -> {after:?}"
    );
    // A start with the probes still failing: web (unchecked) is announced again, alt
    // never, not even before its first verdict.
    fleet.hosts[0].daemon.stop_with(libc::SIGTERM);
    fleet.wait_next_hops(VIP4, &[1, 2], Duration::from_secs(5));
    fleet.hosts[0].daemon.start();
    let started = Instant::now();
    let mut web_back = false;
    while started.elapsed() < Duration::from_secs(3) {
        assert!(
            !fleet.next_hops(VIP4_ALT).contains(&host4(0)),
            "host 0 announced alt {:?} after its start, with every probe failing",
            started.elapsed()
        );
        web_back |= fleet.next_hops(VIP4).contains(&host4(0));
        thread::sleep(Duration::from_millis(50));
    }
    assert!(
        web_back,
        "host 0 did not announce web again within 3 s of its start"
    );
    // The checks pass again: host 0 announces alt again.
    fleet.hosts[0].ns.sh("nft delete table ip lab");
    fleet.wait_next_hops(VIP4_ALT, &[0, 1, 2], Duration::from_secs(10));
}

#[test]
fn host_drain_under_load_moves_the_traffic_away_with_no_failed_request() {
    if !require_root("host_drain_under_load_moves_the_traffic_away_with_no_failed_request") {
        return;
    }
    let mut fleet = Fleet::new(Spec::new(3, vec![web()]));
    fleet.wait_next_hops(VIP4, &[0, 1, 2], CONVERGE);
    let loads: Vec<Load> = fleet
        .clients
        .iter()
        .map(|c| Load::start(&c.name, vip4(), 200_000, Duration::from_secs(60)))
        .collect();
    thread::sleep(Duration::from_secs(1));
    let packets = |f: &Fleet| f.vip_counter(1, "web", "packets");
    let before = packets(&fleet);
    assert!(before > 0, "host 1 had no traffic before the drain");
    let report: serde_json::Value = serde_json::from_str(&fleet.hosts[1].daemon.xlb_ok(&[
        "host",
        "drain",
        "--timeout",
        "20s",
        "--json",
    ]))
    .expect("drain JSON");
    eprintln!("xlb host drain: {report}");
    assert_eq!(report["quiet"], true, "{report}");
    assert_eq!(fleet.next_hops(VIP4), [host4(0), host4(2)]);
    let drained = packets(&fleet);
    // The report counts what the maps counted from its start (a little after `before`).
    let since = report["packets_since"].as_u64().expect("packets_since");
    assert!(since <= drained - before, "{since} > {drained} - {before}");
    thread::sleep(Duration::from_secs(1));
    assert_eq!(packets(&fleet), drained, "host 1 still gets traffic");
    // The mark survives a restart: the host comes back withdrawn.
    fleet.hosts[1].daemon.stop_with(libc::SIGTERM);
    fleet.hosts[1].daemon.start();
    thread::sleep(Duration::from_secs(2));
    assert_eq!(fleet.next_hops(VIP4), [host4(0), host4(2)]);
    let status = fleet.hosts[1].daemon.status();
    assert!(status["announce"]["drained"].is_object(), "{status}");
    let text = fleet.hosts[1].daemon.xlb_ok(&["status"]);
    for line in [
        "host DRAINED by root",
        "routing daemon: 0 route(s) announced",
        "web 198.19.0.100: withdrawn: the host is drained",
    ] {
        assert!(text.contains(line), "no {line:?} in `xlb status`:\n{text}");
    }
    fleet.hosts[1].daemon.xlb_ok(&["host", "undrain"]);
    fleet.wait_next_hops(VIP4, &[0, 1, 2], Duration::from_secs(5));
    let back = packets(&fleet);
    thread::sleep(Duration::from_secs(1));
    assert!(
        packets(&fleet) > back,
        "host 1 gets no traffic after undrain"
    );
    for load in loads {
        let r = load.finish();
        assert!(r.requests() > 0);
        assert!(r.failures.is_empty(), "failed requests: {:#?}", r.failures);
        eprintln!("load: {} requests, 0 failed", r.requests());
    }
}

#[test]
fn a_host_with_another_hash_seed_shows_in_its_table_metric() {
    if !require_root("a_host_with_another_hash_seed_shows_in_its_table_metric") {
        return;
    }
    let mut spec = Spec::new(3, vec![web()]);
    spec.hash_seeds = vec![0, 0, 7];
    spec.metrics = Some("127.0.0.1:9780".into());
    let fleet = Fleet::new(spec);
    fleet.wait_next_hops(VIP4, &[0, 1, 2], CONVERGE);
    let info = metrics::table_info(&fleet);
    for lines in &info {
        assert_eq!(lines.len(), 1, "one table_info line per VIP: {lines:?}");
    }
    let line = |i: usize| info[i][0].as_str();
    eprintln!("{}\n{}\n{}", line(0), line(1), line(2));
    // The same table everywhere; the seed that maps flows to its slots differs.
    for i in 1..3 {
        assert_eq!(
            metrics::label(line(i), "fingerprint"),
            metrics::label(line(0), "fingerprint")
        );
        assert_eq!(
            metrics::label(line(i), "table_size"),
            metrics::label(line(0), "table_size")
        );
    }
    assert_eq!(metrics::label(line(0), "hash_seed"), "0");
    assert_eq!(metrics::label(line(1), "hash_seed"), "0");
    assert_eq!(metrics::label(line(2), "hash_seed"), "7");
    // What the mismatch does: the same flow gets another backend on the odd host only.
    let differs = |a: usize, b: usize| {
        (40000..40100)
            .filter(|port| {
                let client = format!("{}:{port}", client4(0));
                let pick =
                    |h: usize| fleet.hosts[h].daemon.explain("web", &client)["backend"].clone();
                pick(a) != pick(b)
            })
            .count()
    };
    assert_eq!(
        differs(0, 1),
        0,
        "hosts with the same seed pick differently"
    );
    let odd = differs(0, 2);
    eprintln!("{odd} of 100 flows get another backend on the host with hash_seed 7");
    assert!(odd > 30, "only {odd} of 100 flows differ with another seed");
    metrics::mismatch_alert_fires(&info, "web", 2);
}

#[test]
fn ipv6_vips_are_announced_spread_and_withdrawn_like_ipv4() {
    if !require_root("ipv6_vips_are_announced_spread_and_withdrawn_like_ipv4") {
        return;
    }
    let web6 = xlb_lab::daemon::VipSpec::tcp("web6", VIP6, 80, &[2, 3, 4]);
    let fleet = Fleet::new(Spec::new(3, vec![web(), web6]));
    fleet.wait_next_hops(VIP6, &[0, 1, 2], CONVERGE);
    let flows = |i| fleet.vip_counter(i, "web6", "new_flows");
    let before: Vec<u64> = (0..3).map(flows).collect();
    let counts = http_from_all(&fleet, VIP6.parse().expect("VIP6"), 300);
    let per_host: Vec<u64> = (0..3).map(|i| flows(i) - before[i]).collect();
    eprintln!("600 IPv6 connections: per host {per_host:?}, per backend {counts:?}");
    assert_eq!(per_host.iter().sum::<u64>(), 600, "{per_host:?}");
    assert!(per_host.iter().all(|&n| n >= 100), "{per_host:?}");
    // Draining a host withdraws both families.
    fleet.hosts[2]
        .daemon
        .xlb_ok(&["host", "drain", "--timeout", "10s"]);
    assert_eq!(fleet.next_hops(VIP6), [host6(0), host6(1)]);
    assert_eq!(fleet.next_hops(VIP4), [host4(0), host4(1)]);
    let counts = http_from_all(&fleet, VIP6.parse().expect("VIP6"), 50);
    assert_eq!(counts.values().sum::<u32>(), 100, "{counts:?}");
}
