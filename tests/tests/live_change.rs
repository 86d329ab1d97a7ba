//! Weight changes under load: a continuous request loop (short connections and a
//! keep-alive connection) from one client and 24 long-lived echo connections from the
//! other, while 20 weight changes go through `xlb weight set`. Not one request may fail,
//! no long-lived connection may move or reset, and new connections follow the final
//! weights. Run with `l2-dsr` and with `ipip` (backends decapsulating with `xlb decap`).

#![cfg(test)]

use std::{net::IpAddr, time::Duration};

use xlb_lab::{
    clients::{Echo, Load, follows, http_many},
    daemon::{Daemon, VipSpec},
    require_root,
    routed::{assert_decapsulated, ipip_on_l2},
    servers::{HTTP_PORT, Servers},
    topology::{Topology, VIP4, backend_name, in_ns},
};

const CHANGES: usize = 20;
const HELD: usize = 24;

#[test]
fn twenty_weight_changes_under_load_fail_nothing() {
    if !require_root("twenty_weight_changes_under_load_fail_nothing") {
        return;
    }
    changes_under_load(false);
}

#[test]
fn twenty_weight_changes_under_load_fail_nothing_with_ipip() {
    if !require_root("twenty_weight_changes_under_load_fail_nothing_with_ipip") {
        return;
    }
    changes_under_load(true);
}

fn changes_under_load(ipip: bool) {
    let topo = Topology::new(2, 3);
    let _servers = Servers::start(&topo);
    let mut daemon = Daemon::new(&topo);
    let decap = ipip.then(|| ipip_on_l2(&topo, &mut daemon));
    let mode = |v: VipSpec| if ipip { v.ipip() } else { v };
    // HTTP and echo are two VIPs on the same address (ports 80 and 7) with equal weights;
    // the changes are made to "web".
    daemon.write_config(&[
        mode(VipSpec::tcp("web", VIP4, HTTP_PORT, &[2, 2, 2])),
        mode(VipSpec::tcp("echo", VIP4, 7, &[2, 2, 2])),
    ]);
    daemon.start();
    let vip: IpAddr = VIP4.parse().unwrap();

    let held_ns = topo.clients[1].name.clone();
    let mut held: Vec<Echo> = in_ns(&held_ns, move || {
        (0..HELD)
            .map(|i| Echo::open(vip).unwrap_or_else(|e| panic!("echo {i}: {e}")))
            .collect()
    });
    let load = Load::start(
        &topo.clients[0].name,
        vip,
        1_000_000,
        Duration::from_secs(120),
    );

    // Each change moves one backend between weight 2 and 3: always within every
    // guardrail, and each one moves table slots.
    let mut weights = [2i64, 2, 2];
    for i in 0..CHANGES {
        let b = i % 3;
        weights[b] = if weights[b] == 2 { 3 } else { 2 };
        let w = weights[b].to_string();
        daemon.xlb_ok(&["weight", "set", "web", &backend_name(b), &w]);
        for (j, h) in held.iter_mut().enumerate() {
            h.ping(&format!("change-{i}-held-{j}"))
                .unwrap_or_else(|e| panic!("after change {i}: {e}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let during = load.finish();
    assert!(
        during.failures.is_empty(),
        "{} of {} requests failed during the changes; first: {:?}",
        during.failures.len(),
        during.requests() + during.failures.len() as u64,
        during.failures.first()
    );
    assert!(
        during.requests() > 200,
        "the load was too thin to prove anything: {during:?}"
    );
    assert_eq!(
        daemon
            .weights("web")
            .iter()
            .map(|&w| i64::try_from(w).unwrap())
            .collect::<Vec<_>>(),
        weights
    );

    // New connections follow the final weights (the table shares of the last generation).
    let shares = daemon.table_shares("web");
    let count = in_ns(&topo.clients[0].name, move || http_many(vip, 1500));
    follows(&count, &shares, 0.04)
        .unwrap_or_else(|e| panic!("new connections after the changes, {e}"));
    for (j, h) in held.iter_mut().enumerate() {
        h.ping(&format!("final-{j}")).unwrap();
    }
    if let Some(pins) = &decap {
        assert_decapsulated(&topo.backends, pins.path());
    }
}
