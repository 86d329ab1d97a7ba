//! Daemon restarts under load: a clean stop (SIGTERM) and a crash (SIGKILL), each followed
//! by a new `xlb run`. The data plane forwards throughout: no request fails, every
//! long-lived connection keeps its backend, and the new daemon adopts the pinned maps
//! (the same map objects, no new generation). Its own copy of the program is swapped into
//! the pinned XDP link atomically: that is how an upgraded binary updates the program.

#![cfg(test)]

use std::{net::IpAddr, time::Duration};

use xlb_lab::{
    clients::{Echo, Load},
    daemon::{Daemon, VipSpec},
    require_root,
    servers::{ECHO_PORT, HTTP_PORT, Servers},
    topology::{Topology, VIP4, in_ns},
};

/// The id of the XDP program attached to eth0 in the LB namespace.
fn xdp_prog_id(topo: &Topology) -> u64 {
    let link: serde_json::Value =
        serde_json::from_str(&topo.lb.sh("ip -j -d link show eth0")).unwrap();
    link[0]["xdp"]["prog"]["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("no XDP program on the LB's eth0: {link}"))
}

/// Kernel ids of the pinned maps: the same ids mean the same map objects.
fn map_ids(daemon: &Daemon) -> Vec<u64> {
    lb_common::maps::ALL
        .iter()
        .map(|m| {
            let path = daemon.pin_dir().join(m);
            let show: serde_json::Value = serde_json::from_str(&xlb_lab::netns::sh(&format!(
                "bpftool -j map show pinned {}",
                path.display()
            )))
            .unwrap();
            show["id"].as_u64().unwrap()
        })
        .collect()
}

#[test]
fn sigterm_and_sigkill_restarts_under_load_drop_nothing() {
    if !require_root("sigterm_and_sigkill_restarts_under_load_drop_nothing") {
        return;
    }
    let topo = Topology::new(2, 3);
    let _servers = Servers::start(&topo);
    let mut daemon = Daemon::new(&topo);
    daemon.write_config(&[
        VipSpec::tcp("web", VIP4, HTTP_PORT, &[1, 1, 1]),
        VipSpec::tcp("echo", VIP4, ECHO_PORT, &[1, 1, 1]),
    ]);
    daemon.start();
    let vip: IpAddr = VIP4.parse().unwrap();
    let generation = daemon.generation();
    let maps = map_ids(&daemon);
    let mut held: Vec<Echo> = in_ns(&topo.clients[1].name, move || {
        (0..12).map(|_| Echo::open(vip).unwrap()).collect()
    });
    let load = Load::start(
        &topo.clients[0].name,
        vip,
        1_000_000,
        Duration::from_secs(120),
    );

    for (signal, what) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGKILL, "SIGKILL")] {
        std::thread::sleep(Duration::from_millis(500));
        let served_before = load.report().requests();
        daemon.stop_with(signal);
        // No daemon at all: the data plane keeps forwarding.
        std::thread::sleep(Duration::from_secs(1));
        for (j, h) in held.iter_mut().enumerate() {
            h.ping(&format!("{what}-dead-{j}"))
                .unwrap_or_else(|e| panic!("with the daemon stopped by {what}: {e}"));
        }
        assert!(
            load.report().requests() > served_before + 20,
            "requests stalled while the daemon was down after {what}"
        );
        daemon.start();
        for (j, h) in held.iter_mut().enumerate() {
            h.ping(&format!("{what}-restarted-{j}"))
                .unwrap_or_else(|e| panic!("after the restart following {what}: {e}"));
        }
        assert_eq!(
            map_ids(&daemon),
            maps,
            "{what}: the restarted daemon made new maps instead of adopting the pinned ones"
        );
        xdp_prog_id(&topo);
        assert_eq!(
            daemon.generation(),
            generation,
            "{what}: the restart made a new generation"
        );
        assert!(
            daemon
                .log()
                .contains(&format!("adopted generation {generation}")),
            "{}",
            daemon.log()
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    let report = load.finish();
    assert!(
        report.failures.is_empty(),
        "{} of {} requests failed across the restarts; first: {:?}",
        report.failures.len(),
        report.requests() + report.failures.len() as u64,
        report.failures.first()
    );
}
