//! Every kind of difference between a file and the running generation is shown by `diff`,
//! applied as exactly one generation, lands in the maps (read back with bpftool) and in
//! the traffic: a VIP's port, protocol and address, a backend's address and explicit
//! MAC, health settings and a per-VIP guardrail, each alone, even where the VIP's table
//! stays the same.

#![cfg(test)]

use std::net::IpAddr;

use xlb_lab::{
    clients::{Echo, http_many, http_once, udp_once},
    daemon::{Daemon, VipSpec, text},
    require_root,
    servers::{HTTP_PORT, Servers},
    topology::{Topology, VIP4, in_ns, mac_of},
};

const VIP_B: &str = "198.18.0.101";
/// A second address of backend b1.
const B1_NEW: &str = "198.18.0.61";
const TCP: u64 = 6;
const UDP: u64 = 17;

/// Writes `text` to the daemon's file, checks that `diff --exit-code` shows `want` and
/// exits 3, applies it, and checks that exactly one generation was added and that the
/// file then matches the running state.
fn step(daemon: &Daemon, text: &str, want: &str) {
    let path = daemon.dir.path().join("next.toml");
    std::fs::write(&path, text).unwrap();
    let file = path.to_str().unwrap();
    let diff = daemon.xlb(&["diff", "--exit-code", file]);
    assert_eq!(diff.status.code(), Some(3), "{want}: {}", text_of(&diff));
    assert!(text_of(&diff).contains(want), "{want}: {}", text_of(&diff));
    let g = daemon.generation();
    daemon.xlb_ok(&["apply", file]);
    assert_eq!(daemon.generation(), g + 1, "{want}: not one generation");
    let diff = daemon.xlb(&["diff", "--exit-code", file]);
    assert_eq!(diff.status.code(), Some(0), "{want}: {}", text_of(&diff));
}

fn text_of(out: &std::process::Output) -> String {
    text(out)
}

#[test]
fn each_kind_of_change_is_applied_as_a_generation_and_reaches_maps_and_traffic() {
    if !require_root("each_kind_of_change_is_applied_as_a_generation") {
        return;
    }
    let topo = Topology::new(1, 3);
    let _servers = Servers::start(&topo);
    for b in &topo.backends {
        b.sh(&format!("ip addr add {VIP_B}/32 dev lo"));
    }
    topo.backends[0].sh(&format!("ip addr add {B1_NEW}/24 dev eth0"));
    topo.client().sh(&format!(
        "ip route add {VIP_B}/32 via {}",
        xlb_lab::topology::LB4
    ));
    let mut daemon = Daemon::new(&topo);
    daemon.write_config(&[VipSpec::tcp("web", VIP4, HTTP_PORT, &[1, 1, 1])]);
    daemon.start();
    let base = daemon.render(&[VipSpec::tcp("web", VIP4, HTTP_PORT, &[1, 1, 1])]);
    let client = topo.client().name.clone();
    let (vip_a, vip_b): (IpAddr, IpAddr) = (VIP4.parse().unwrap(), VIP_B.parse().unwrap());
    assert_eq!(daemon.vip_keys(), [(vip_a, 80, TCP)]);

    // The VIP's port: the echo port now, where the echo servers answer.
    let text = base.replace("port = 80", "port = 7");
    step(&daemon, &text, "port: 80 -> 7");
    assert_eq!(daemon.vip_keys(), [(vip_a, 7, TCP)]);
    let echo = in_ns(&client, move || Echo::open(vip_a).map(|e| e.backend));
    assert!(echo.is_ok(), "no echo through the new port: {echo:?}");

    // Its protocol: UDP on the same port.
    let text = text.replace("protocol = \"tcp\"", "protocol = \"udp\"");
    step(&daemon, &text, "protocol: tcp -> udp");
    assert_eq!(daemon.vip_keys(), [(vip_a, 7, UDP)]);
    let reply = in_ns(&client, move || udp_once(vip_a, "over-udp"));
    assert!(reply.is_ok(), "no UDP echo: {reply:?}");

    // Its address (back on HTTP): the new address serves, the old one is not a VIP.
    let text = base.replacen(VIP4, VIP_B, 1);
    step(&daemon, &text, "address: 198.18.0.100 -> 198.18.0.101");
    assert_eq!(daemon.vip_keys(), [(vip_b, 80, TCP)]);
    let count = in_ns(&client, move || http_many(vip_b, 30));
    assert_eq!(count.values().sum::<u32>(), 30);
    assert!(in_ns(&client, move || http_once(vip_a)).is_err());

    // A backend's address: b1 moves to its second address (same host, same MAC).
    let text = text.replacen(
        "address = \"198.18.0.11\"",
        &format!("address = \"{B1_NEW}\""),
        1,
    );
    step(
        &daemon,
        &text,
        &format!("backend b1 address: 198.18.0.11 -> {B1_NEW}"),
    );
    let b1 = mac_of(&topo.backends[0].name, "eth0");
    let live = daemon.live_backends();
    assert!(
        live.iter()
            .any(|(_, a, m)| *a == B1_NEW.parse::<IpAddr>().unwrap() && *m == b1),
        "{live:?}"
    );
    assert!(!live.iter().any(|(_, a, _)| a.to_string() == "198.18.0.11"));

    // An explicit MAC: b1's slots now go to b2's host, which answers as b2.
    let b2 = mac_of(&topo.backends[1].name, "eth0");
    let b2_mac = b2.map(|x| format!("{x:02x}")).join(":");
    let text = text.replacen("mac = \"neighbour\"", &format!("mac = \"{b2_mac}\""), 1);
    step(
        &daemon,
        &text,
        &format!("backend b1 mac: neighbour -> {b2_mac}"),
    );
    let live = daemon.live_backends();
    assert!(
        live.iter()
            .any(|(_, a, m)| *a == B1_NEW.parse::<IpAddr>().unwrap() && *m == b2),
        "{live:?}"
    );
    let count = in_ns(&client, move || http_many(vip_b, 300));
    assert_eq!(count.get("b1"), None, "{count:?}");
    assert!(count["b2"] > 150, "{count:?}");

    // Back to the neighbour table: b1's own MAC again, not the explicit one kept.
    let text = text.replacen(&format!("mac = \"{b2_mac}\""), "mac = \"neighbour\"", 1);
    step(
        &daemon,
        &text,
        &format!("backend b1 mac: {b2_mac} -> neighbour"),
    );
    let live = daemon.live_backends();
    assert!(
        live.iter()
            .any(|(_, a, m)| *a == B1_NEW.parse::<IpAddr>().unwrap() && *m == b1),
        "{live:?}"
    );
    let count = in_ns(&client, move || http_many(vip_b, 300));
    assert!(count.get("b1").copied().unwrap_or(0) > 50, "{count:?}");

    // Health settings: a generation, and the checks start.
    let text = text.replacen(
        "protocol = \"tcp\"\n",
        "protocol = \"tcp\"\n\n[vip.health]\nport = 80\ninterval_ms = 200\ntimeout_ms = 200\n",
        1,
    );
    step(
        &daemon,
        &text,
        "health: none -> tcp port 80 every 200 ms, timeout 200 ms",
    );
    assert!(
        daemon
            .backends("web")
            .iter()
            .all(|b| !b["healthy"].is_null()),
        "{:?}",
        daemon.backends("web")
    );

    // A per-VIP guardrail: recorded, and the next change is held to it.
    let text = text.replacen(
        "\n[vip.health]",
        "\n[vip.guardrails]\nmax_flow_shift = 0.01\n\n[vip.health]",
        1,
    );
    step(&daemon, &text, "guardrails.max_flow_shift: 50.0% -> 1.0%");
    let before = daemon.routing_snapshot();
    let out = daemon.xlb(&["weight", "set", "web", "b3", "2"]);
    assert_eq!(out.status.code(), Some(1), "{}", text_of(&out));
    assert!(
        text_of(&out).contains("[max-flow-shift] vip web")
            && text_of(&out).contains("the limit is 1.0%"),
        "{}",
        text_of(&out)
    );
    assert_eq!(daemon.routing_snapshot(), before);
}
