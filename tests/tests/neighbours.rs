//! Backend MACs stay true: a backend that changes its MAC under load is followed with no
//! operator action, a backend whose neighbour cannot be resolved at start neither stops
//! the daemon nor the other backends and joins once it answers, and a change that
//! points backends at addresses nobody answers is held to the rules on the table that
//! would really be installed.

#![cfg(test)]

use std::{
    net::IpAddr,
    thread,
    time::{Duration, Instant},
};

use xlb_lab::{
    clients::{Load, http_many},
    daemon::{Daemon, VipSpec},
    require_root,
    servers::{ECHO_PORT, HTTP_PORT, Servers},
    topology::{Topology, VIP4, in_ns},
};

/// Waits until `f` holds (30 s at most); returns how long it took.
fn until(what: &str, daemon: &Daemon, f: impl Fn() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{what}: not within 30 s: {}",
            daemon.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

/// A running daemon with VIP web on three backends of weight 1, all `neighbour`.
fn web_on_three() -> (Topology, Servers, Daemon) {
    let topo = Topology::new(1, 3);
    let servers = Servers::start(&topo);
    let mut daemon = Daemon::new(&topo);
    daemon.write_config(&[VipSpec::tcp("web", VIP4, HTTP_PORT, &[1, 1, 1])]);
    daemon.start();
    (topo, servers, daemon)
}

fn mac_of(daemon: &Daemon, backend: &str) -> Option<String> {
    daemon
        .backends("web")
        .iter()
        .find(|b| b["backend"] == backend)
        .and_then(|b| b["mac"].as_str().map(str::to_string))
}

#[test]
fn a_backend_that_changes_its_mac_under_load_is_followed() {
    if !require_root("a_backend_that_changes_its_mac_under_load_is_followed") {
        return;
    }
    let (topo, _servers, daemon) = web_on_three();
    let vip: IpAddr = VIP4.parse().unwrap();
    let load = Load::start(&topo.client().name, vip, 200_000, Duration::from_secs(40));
    thread::sleep(Duration::from_millis(500));
    let generation = daemon.generation();

    const NEW: &str = "02:00:00:00:aa:01";
    topo.backends[0].sh(&format!("ip link set eth0 address {NEW}"));
    let took = until("b1's new MAC in status", &daemon, || {
        mac_of(&daemon, "b1").as_deref() == Some(NEW)
    });
    eprintln!("the new MAC was applied after {took:?}");
    let report = load.finish();
    assert_eq!(daemon.generation(), generation + 1);
    let history: serde_json::Value =
        serde_json::from_str(&daemon.xlb_ok(&["history", "--json"])).unwrap();
    let last = history.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["source"]["kind"], "neighbour", "{last}");
    assert!(
        daemon
            .live_backends()
            .iter()
            .any(|(_, a, m)| a.to_string() == "198.18.0.11"
                && m.map(|b| format!("{b:02x}")).join(":") == NEW),
        "{:?}",
        daemon.live_backends()
    );
    assert!(
        daemon.log().contains("neighbour: web/b1 "),
        "{}",
        daemon.log()
    );
    // Recovered: every new connection succeeds, b1 included.
    let count = in_ns(&topo.client().name, move || http_many(vip, 300));
    assert!(count["b1"] > 50, "{count:?}");
    eprintln!(
        "{} requests during the change, {} failed",
        report.requests(),
        report.failures.len()
    );
}

#[test]
fn an_unresolvable_backend_at_start_gets_no_slot_and_joins_when_it_answers() {
    if !require_root("an_unresolvable_backend_at_start_gets_no_slot") {
        return;
    }
    let topo = Topology::new(1, 3);
    let _servers = Servers::start(&topo);
    let mut daemon = Daemon::new(&topo);
    // b3 is configured at an address no host holds yet.
    const LATE: &str = "198.18.0.99";
    let text = daemon
        .render(&[
            VipSpec::tcp("web", VIP4, HTTP_PORT, &[1, 1, 1]),
            VipSpec::tcp("echo", VIP4, ECHO_PORT, &[1, 1, 1]),
        ])
        .replacen(
            "address = \"198.18.0.13\"",
            &format!("address = \"{LATE}\""),
            1,
        );
    std::fs::write(daemon.config_path(), text).unwrap();
    daemon.start();
    assert_eq!(mac_of(&daemon, "b3"), None);
    let b3 = &daemon.backends("web")[2];
    assert_eq!(
        (b3["mac_source"].as_str(), b3["table_share"].as_f64()),
        (Some("unresolved"), Some(0.0))
    );
    assert!(
        !daemon
            .live_backends()
            .iter()
            .any(|(_, a, _)| a.to_string() == LATE),
        "an unresolved backend is live"
    );
    let vip: IpAddr = VIP4.parse().unwrap();
    let count = in_ns(&topo.client().name, move || http_many(vip, 200));
    assert_eq!(count.get("b3"), None, "{count:?}");
    assert_eq!(count.values().sum::<u32>(), 200);
    assert_eq!(
        daemon.backends("echo").len(),
        3,
        "the other VIP is served too"
    );

    // The address comes up on b3's host: it resolves and gets its share.
    let g = daemon.generation();
    topo.backends[2].sh(&format!("ip addr add {LATE}/24 dev eth0"));
    until("b3 resolved", &daemon, || mac_of(&daemon, "b3").is_some());
    assert_eq!(daemon.generation(), g + 1);
    assert!(daemon.table_shares("web")[2] > 0.3);
    let count = in_ns(&topo.client().name, move || http_many(vip, 300));
    assert!(count.get("b3").copied().unwrap_or(0) > 50, "{count:?}");
}

#[test]
fn a_change_to_addresses_nobody_answers_is_measured_on_the_real_table() {
    if !require_root("a_change_to_addresses_nobody_answers_is_measured_on_the_real_table") {
        return;
    }
    let (topo, _servers, daemon) = web_on_three();
    let before = (daemon.routing_snapshot(), daemon.generation());
    // A typo in two addresses: on paper nothing moves, in the table b1 would get all.
    let typo = daemon
        .render(&[VipSpec::tcp("web", VIP4, HTTP_PORT, &[1, 1, 1])])
        .replacen("198.18.0.12\"", "198.18.0.98\"", 1)
        .replacen("198.18.0.13\"", "198.18.0.97\"", 1);
    let path = daemon.dir.path().join("typo.toml");
    std::fs::write(&path, typo).unwrap();
    let out = daemon.xlb(&["apply", path.to_str().unwrap()]);
    let said = xlb_lab::daemon::text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    for want in [
        "backend b2: UNRESOLVED (no neighbour entry for 198.18.0.98)",
        "[max-backend-share] vip web, backend b1: with unresolved backend(s) b2, b3 at weight 0",
        "[min-active-backends] vip web",
    ] {
        assert!(said.contains(want), "no {want:?} in {said}");
    }
    assert_eq!((daemon.routing_snapshot(), daemon.generation()), before);
    assert!(
        daemon
            .log()
            .contains("vip web: backend b2: UNRESOLVED (no neighbour entry for 198.18.0.98)"),
        "{}",
        daemon.log()
    );
    let vip: IpAddr = VIP4.parse().unwrap();
    let count = in_ns(&topo.client().name, move || http_many(vip, 150));
    assert_eq!(count.len(), 3, "{count:?}");

    // Forced, b1 really serves everything. Undoing the typo while draining b1 moves all
    // new flows: measured on that real table, not on the config's, it is refused.
    let p = path.to_str().unwrap();
    daemon.xlb_ok(&["apply", p, "--force", "--reason", "drill"]);
    assert_eq!(daemon.table_shares("web"), [1.0, 0.0, 0.0]);
    let back = daemon.write_file(
        "back.toml",
        &[VipSpec::tcp("web", VIP4, HTTP_PORT, &[0, 1, 1])],
    );
    let out = daemon.xlb(&["apply", back.to_str().unwrap()]);
    let said = xlb_lab::daemon::text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("new flows moving: 100.0%"), "{said}");
    assert!(
        said.contains(
            "[max-flow-shift] vip web: measured on the table really running, where web/b2, \
             web/b3 had no slot: 100.0% of new flows"
        ),
        "{said}"
    );
}
