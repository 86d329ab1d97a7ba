//! Health checks of each kind against the lab's real servers, through the real daemon:
//! an HTTP check and a UDP check see every backend up, see a backend whose servers stop
//! go down within a few rounds and come back when they start again; a check whose
//! status or reply the servers never give sees every backend down (so the checks read
//! the answer, not just the connection).

#![cfg(test)]

use std::{
    thread,
    time::{Duration, Instant},
};

use xlb_lab::{
    daemon::{Check, Daemon, VipSpec},
    require_root,
    servers::{DISCARD_PORT, ECHO_PORT, HTTP_PORT, Servers},
    topology::{Topology, VIP4, VIP6},
};

fn checked(mut vip: VipSpec, port: u16, keys: &[&str]) -> VipSpec {
    vip.health = Some(Check {
        keys: keys.iter().map(|k| k.to_string()).collect(),
        ..Check::tcp(port)
    });
    vip
}

/// `healthy` of each VIP's backends, in the order of `vips`.
fn health(daemon: &Daemon, vips: &[&str]) -> Vec<Vec<bool>> {
    vips.iter()
        .map(|v| {
            daemon
                .backends(v)
                .iter()
                .map(|b| b["healthy"].as_bool().expect("a checked VIP's health"))
                .collect()
        })
        .collect()
}

/// Waits until the VIPs' health is `want` (10 s at most); returns how long it took.
fn until(daemon: &Daemon, vips: &[&str], want: &[[bool; 3]]) -> Duration {
    let start = Instant::now();
    loop {
        let got = health(daemon, vips);
        if got.iter().zip(want).all(|(g, w)| g == w) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "health of {vips:?}: {got:?}, want {want:?}: {}",
            daemon.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn http_and_udp_checks_follow_a_backend_that_stops_and_starts() {
    if !require_root("http_and_udp_checks_follow_a_backend_that_stops_and_starts") {
        return;
    }
    let topo = Topology::new(0, 3);
    let mut servers = Servers::start(&topo);
    let mut daemon = Daemon::new(&topo);
    daemon.write_config(&[
        checked(
            VipSpec::tcp("web", VIP4, HTTP_PORT, &[1, 1, 1]),
            HTTP_PORT,
            &["kind = \"http\"", "path = \"/healthz\""],
        ),
        // The echo answers `b1 ping`.
        checked(
            VipSpec::udp("echo", VIP4, ECHO_PORT, &[1, 1, 1]),
            ECHO_PORT,
            &["kind = \"udp\"", "send = \"ping\"", "expect = \"ping\""],
        ),
        // The servers answer 200, never 204, and never `pong`.
        checked(
            VipSpec::tcp("strict", VIP4, DISCARD_PORT, &[1, 1, 1]),
            HTTP_PORT,
            &["kind = \"http\"", "status = \"204\""],
        ),
        checked(
            VipSpec::udp("pong", VIP6, ECHO_PORT, &[1, 1, 1]),
            ECHO_PORT,
            &["kind = \"udp\"", "send = \"ping\"", "expect = \"pong\""],
        ),
    ]);
    daemon.start();
    let all = ["web", "echo", "strict", "pong"];
    let (up, down) = ([true; 3], [false; 3]);
    // Unprobed backends count as healthy: the two VIPs whose checks cannot pass show
    // that a round has run.
    until(&daemon, &all, &[up, up, down, down]);

    servers.kill(1);
    let b2_down = [true, false, true];
    let took = until(&daemon, &all[..2], &[b2_down, b2_down]);
    eprintln!("b2 was seen down after {took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");

    servers.restart(1);
    let took = until(&daemon, &all, &[up, up, down, down]);
    eprintln!("b2 was seen up again after {took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}
