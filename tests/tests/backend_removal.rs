//! A backend removed from a VIP: its flows are re-homed to the remaining backends (so its
//! TCP connections end, reset by a backend that never knew them), and every other flow is
//! untouched. `xlb explain` shows where each re-homed flow goes now, and why: before the
//! change every slot is stateless; after it, a kept flow whose slot changed owner has a
//! flow entry once it sent a packet. Run with `l2-dsr` and with `ipip`.

#![cfg(test)]

use std::net::IpAddr;

use xlb_lab::{
    clients::{Echo, http_many},
    daemon::{Daemon, VipSpec},
    require_root,
    routed::{assert_decapsulated, ipip_on_l2},
    servers::{ECHO_PORT, HTTP_PORT, Servers},
    topology::{Topology, VIP4, in_ns},
};

#[test]
fn removing_a_backend_rehomes_its_flows_and_keeps_all_others() {
    if !require_root("removing_a_backend_rehomes_its_flows_and_keeps_all_others") {
        return;
    }
    removal(false);
}

#[test]
fn removing_a_backend_rehomes_its_flows_and_keeps_all_others_with_ipip() {
    if !require_root("removing_a_backend_rehomes_its_flows_and_keeps_all_others_with_ipip") {
        return;
    }
    removal(true);
}

fn removal(ipip: bool) {
    let topo = Topology::new(1, 3);
    let _servers = Servers::start(&topo);
    let mut daemon = Daemon::new(&topo);
    let decap = ipip.then(|| ipip_on_l2(&topo, &mut daemon));
    let mode = |v: VipSpec| if ipip { v.ipip() } else { v };
    let web = mode(VipSpec::tcp("web", VIP4, HTTP_PORT, &[1, 1, 1]));
    daemon.write_config(&[
        web.clone(),
        mode(VipSpec::tcp("echo", VIP4, ECHO_PORT, &[1, 1, 1])),
    ]);
    daemon.start();
    let vip: IpAddr = VIP4.parse().unwrap();
    let client = topo.clients[0].name.clone();
    let mut held: Vec<Echo> = in_ns(&client, move || {
        (0..30).map(|_| Echo::open(vip).unwrap()).collect()
    });
    let on_b3 = held.iter().filter(|h| h.backend == "b3").count();
    assert!(
        on_b3 > 0 && on_b3 < held.len(),
        "need flows on b3 and elsewhere"
    );
    for h in &held {
        let e = explain(&daemon, h);
        assert_eq!(
            (e["backend"].as_str().unwrap(), e["why"].as_str().unwrap()),
            (h.backend.as_str(), "table-slot"),
            "{e}"
        );
    }

    let file = daemon.write_file(
        "without-b3.toml",
        &[web, mode(VipSpec::tcp("echo", VIP4, ECHO_PORT, &[1, 1]))],
    );
    daemon.xlb_ok(&["apply", file.to_str().unwrap()]);

    for (j, h) in held.iter_mut().enumerate() {
        let e = explain(&daemon, h);
        if h.backend == "b3" {
            // b3's slots changed owner, and b3 no longer serves: the owner.
            assert_eq!(e["why"], "changed-slot", "{e}");
            assert_ne!(e["backend"], "b3", "{e}");
            assert!(
                h.ping(&format!("rehomed-{j}")).is_err(),
                "a connection of the removed backend still reached it"
            );
        } else {
            h.ping(&format!("kept-{j}"))
                .unwrap_or_else(|e| panic!("an untouched flow broke: {e}"));
            // Its slot kept its owner, or changed and the packet recorded the flow.
            let e = explain(&daemon, h);
            assert_eq!(e["backend"].as_str(), Some(h.backend.as_str()), "{e}");
            assert!(e["why"] == "table-slot" || e["why"] == "flow-entry", "{e}");
        }
    }
    // New connections to "echo" never reach b3; "web" still uses all three.
    let echoes: Vec<String> = in_ns(&client, move || {
        (0..60).map(|_| Echo::open(vip).unwrap().backend).collect()
    });
    assert!(!echoes.iter().any(|b| b == "b3"), "{echoes:?}");
    let web_count = in_ns(&client, move || http_many(vip, 300));
    assert_eq!(web_count.len(), 3, "web lost a backend: {web_count:?}");
    if let Some(pins) = &decap {
        assert_decapsulated(&topo.backends, pins.path());
    }
}

fn explain(daemon: &Daemon, h: &Echo) -> serde_json::Value {
    serde_json::from_str(&daemon.xlb_ok(&["explain", "echo", &h.local.to_string(), "--json"]))
        .unwrap()
}
