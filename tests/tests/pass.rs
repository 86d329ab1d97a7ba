//! `xlb pass attach|detach IFACE` on a real veth: the lab's load balancer forwards with
//! native XDP_TX out of its veth, whose peer (`plb`, in the switch namespace) runs no XDP
//! program here. Requests to the VIP fail until `xlb pass attach plb` (and the CLI has
//! exited: the pinned link keeps the program attached), succeed while it is attached, and
//! fail again after `xlb pass detach plb`. Bad names and missing links are refused.

#![cfg(test)]

use std::{
    net::IpAddr,
    process::{Command, Output},
    time::{Duration, Instant},
};

use xlb_lab::{
    PinDir,
    clients::http_once,
    daemon::{Daemon, VipSpec, xlb_bin},
    require_root,
    servers::{HTTP_PORT, Servers},
    topology::{Topology, VIP4, in_ns},
};

/// `xlb ARGS` in the switch namespace (its network namespace only: bpffs stays visible).
fn xlb_in(ns: &str, args: &[&str]) -> Output {
    Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .arg(xlb_bin())
        .args(args)
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The name of the XDP program on `plb`, if any.
fn peer_xdp(topo: &Topology) -> Option<String> {
    let link: serde_json::Value =
        serde_json::from_str(&topo.switch.sh("ip -j -d link show plb")).unwrap();
    link[0]["xdp"]["prog"]["name"].as_str().map(str::to_string)
}

/// Whether a request to the VIP succeeds within `within` (tries again until then).
fn served(topo: &Topology, vip: IpAddr, within: Duration) -> bool {
    in_ns(&topo.client().name, move || {
        let deadline = Instant::now() + within;
        loop {
            if http_once(vip).is_ok() {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
        }
    })
}

#[test]
fn the_peer_receives_xdp_tx_only_while_pass_is_attached() {
    if !require_root("the_peer_receives_xdp_tx_only_while_pass_is_attached") {
        return;
    }
    let topo = Topology::without_peer_pass(1, 3);
    let _servers = Servers::start(&topo);
    let mut daemon = Daemon::new(&topo);
    daemon.write_config(&[VipSpec::tcp("web", VIP4, HTTP_PORT, &[1, 1, 1])]);
    daemon.start();
    let vip: IpAddr = VIP4.parse().unwrap();
    let pins = PinDir::new("pass");
    let pin_dir = pins.path().to_str().unwrap();
    let sw = topo.switch.name.clone();

    assert_eq!(peer_xdp(&topo), None);
    assert!(
        !served(&topo, vip, Duration::from_secs(1)),
        "served without an XDP program on the peer: the test shows nothing"
    );

    let out = xlb_in(&sw, &["pass", "attach", "plb", "--pin-dir", pin_dir]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(peer_xdp(&topo).as_deref(), Some("xlb_pass"));
    assert!(pins.path().join("plb").exists());
    assert!(
        served(&topo, vip, Duration::from_secs(10)),
        "not served with xlb-pass on the peer"
    );
    let again = xlb_in(&sw, &["pass", "attach", "plb", "--pin-dir", pin_dir]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert!(
        text(&again).contains("already attached"),
        "{}",
        text(&again)
    );

    let out = xlb_in(&sw, &["pass", "detach", "plb", "--pin-dir", pin_dir]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(peer_xdp(&topo), None, "detach left the program attached");
    assert!(!pins.path().join("plb").exists());
    assert!(
        !served(&topo, vip, Duration::from_secs(1)),
        "still served after detach"
    );

    for (args, says) in [
        (
            ["pass", "attach", "nosuch0", "--pin-dir", pin_dir],
            "nosuch0",
        ),
        (
            ["pass", "attach", "../x", "--pin-dir", pin_dir],
            "not an interface name",
        ),
        (
            ["pass", "detach", "plb", "--pin-dir", pin_dir],
            "no xlb-pass link pinned at",
        ),
    ] {
        let out = xlb_in(&sw, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(says), "{args:?}: {}", text(&out));
    }
    assert_eq!(peer_xdp(&topo), None);
}
