//! The postmortem configurations, tried under load: each is refused with its rule id
//! (as a file through `xlb apply`, and as the CLI verb that would produce it), and the
//! maps, the history and the traffic distribution do not move.

#![cfg(test)]

use std::{net::IpAddr, time::Duration};

use xlb_lab::{
    clients::Load,
    daemon::{Daemon, VipSpec, text},
    require_root,
    servers::{HTTP_PORT, Servers},
    topology::{Topology, VIP4, backend_name},
};

#[test]
fn postmortem_configs_are_refused_under_load_and_change_nothing() {
    if !require_root("postmortem_configs_are_refused_under_load_and_change_nothing") {
        return;
    }
    let topo = Topology::new(1, 3);
    let _servers = Servers::start(&topo);
    let mut daemon = Daemon::new(&topo);
    let good = [VipSpec::tcp("web", VIP4, HTTP_PORT, &[1, 1, 1])];
    daemon.write_config(&good);
    daemon.start();
    let vip: IpAddr = VIP4.parse().unwrap();
    let load = Load::start(
        &topo.clients[0].name,
        vip,
        1_000_000,
        Duration::from_secs(60),
    );

    let before = (
        daemon.routing_snapshot(),
        daemon.history_len(),
        daemon.status()["vips"][0]["generation"].clone(),
    );
    // Five rounds, so that the load runs long enough to judge the distribution.
    for _ in 0..5 {
        for (weights, rules) in [
            (
                &[0, 0, 5][..],
                &["min-active-backends", "max-backend-share"][..],
            ),
            (&[0, 0, 0][..], &["nonzero-total"][..]),
            (&[1, 1, 40][..], &["max-backend-share"][..]),
        ] {
            let spec = [VipSpec::tcp("web", VIP4, HTTP_PORT, weights)];
            let file = daemon.write_file("postmortem.toml", &spec);
            let out = daemon.xlb(&["apply", file.to_str().unwrap()]);
            assert_eq!(out.status.code(), Some(1), "{weights:?}: {}", text(&out));
            for rule in rules {
                assert!(
                    text(&out).contains(&format!("[{rule}]")),
                    "{weights:?} refused without [{rule}]: {}",
                    text(&out)
                );
            }
            assert!(text(&out).contains("fix:"), "no hint: {}", text(&out));
        }
        let out = daemon.xlb(&["weight", "set", "web", "b3", "40"]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(text(&out).contains("[max-backend-share]"), "{}", text(&out));
        std::thread::sleep(Duration::from_millis(300));
    }
    let report = load.finish();
    assert!(
        report.failures.is_empty(),
        "{} requests failed; first: {:?}",
        report.failures.len(),
        report.failures.first()
    );
    let short: u64 = report.short.values().sum();
    assert!(short > 300, "too few connections to judge: {report:?}");
    for i in 0..3 {
        let got = report.short.get(&backend_name(i)).copied().unwrap_or(0) as f64 / short as f64;
        assert!(
            (got - 1.0 / 3.0).abs() < 0.06,
            "{}: {:.1}% of {short} new connections while refusing the postmortem configs",
            backend_name(i),
            got * 100.0
        );
    }

    // The same outage one CLI verb at a time: the first step that breaks a rule stops.
    let out = daemon.xlb(&["drain", "web", "b1"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "one drain of three is allowed: {}",
        text(&out)
    );
    let out = daemon.xlb(&["drain", "web", "b2"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("[min-active-backends]"),
        "{}",
        text(&out)
    );
    daemon.xlb_ok(&["rollback"]);

    let mut after = (
        daemon.routing_snapshot(),
        daemon.history_len(),
        daemon.status()["vips"][0]["generation"].clone(),
    );
    // The accepted drain and its rollback are two generations; everything else is as it was.
    after.1 -= 2;
    assert_eq!(after.0, before.0, "the VIP and backend maps changed");
    assert_eq!(after.1, before.1, "history changed");
}
