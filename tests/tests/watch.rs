//! Guarded commits: a watched change that breaches is rolled back by the daemon itself,
//! and one that runs its window out becomes the generation `rollback --last-good` returns
//! to.

#![cfg(test)]

use std::{
    thread,
    time::{Duration, Instant},
};

use xlb_lab::{
    daemon::{Check, Daemon, VipSpec, text},
    promtool_check_metrics, require_root,
    servers::{HTTP_PORT, Servers},
    topology::{Topology, VIP4},
};

/// A running daemon with VIP web (TCP checks on the HTTP port every 200 ms) on three
/// backends with equal weights, and their servers.
fn checked_web() -> (Topology, Daemon, Servers) {
    let topo = Topology::new(1, 3);
    let mut daemon = Daemon::new(&topo);
    daemon.metrics = Some("127.0.0.1:9100".into());
    let mut web = VipSpec::tcp("web", VIP4, HTTP_PORT, &[1, 1, 1]);
    web.health = Some(Check::tcp(HTTP_PORT));
    daemon.write_config(&[web]);
    daemon.start();
    let servers = Servers::start(&topo);
    (topo, daemon, servers)
}

fn history(daemon: &Daemon) -> Vec<serde_json::Value> {
    serde_json::from_str::<serde_json::Value>(&daemon.xlb_ok(&["history", "--json"]))
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn a_watched_change_that_breaches_is_rolled_back_by_the_daemon() {
    if !require_root("a_watched_change_that_breaches_is_rolled_back_by_the_daemon") {
        return;
    }
    let (_topo, daemon, mut servers) = checked_web();
    let before = daemon.generation();
    let shares_before = daemon.table_shares("web");
    let started = Instant::now();
    let cli = thread::scope(|s| {
        let cli = s.spawn(|| {
            daemon.xlb(&[
                "weight", "set", "web", "b1", "4", "--force", "--reason", "canary", "--watch",
                "10s",
            ])
        });
        // The change is in: b1 owns two thirds of the table. Then its server dies.
        let deadline = Instant::now() + Duration::from_secs(5);
        while daemon.weights("web") != [4, 1, 1] {
            assert!(
                Instant::now() < deadline,
                "the forced change never took effect"
            );
            thread::sleep(Duration::from_millis(50));
        }
        assert!(daemon.table_shares("web")[0] > 0.6);
        servers.kill(0);
        cli.join().unwrap()
    });
    let took = started.elapsed();
    assert_eq!(cli.status.code(), Some(4), "{}", text(&cli));
    assert!(text(&cli).contains("ROLLED BACK"), "{}", text(&cli));
    assert!(
        text(&cli).contains("b1 gained share and is down"),
        "{}",
        text(&cli)
    );
    assert!(took < Duration::from_secs(10), "rolled back after {took:?}");

    // The weights are back; b1, being down, is out of new-flow selection.
    assert_eq!(daemon.weights("web"), [1, 1, 1]);
    assert_eq!(daemon.table_shares("web")[0], 0.0);
    assert_ne!(daemon.table_shares("web"), shares_before);
    let records = history(&daemon);
    let changed = records
        .iter()
        .find(|r| r["generation"].as_u64() == Some(before + 1))
        .expect("the watched change's generation");
    assert_eq!(changed["source"]["kind"], "cli", "{changed}");
    let rollback = records
        .iter()
        .rev()
        .find(|r| r["source"]["kind"] == "auto-rollback")
        .expect("an auto-rollback generation");
    assert_eq!(rollback["source"]["to"], before);
    let breach = rollback["source"]["breach"].as_str().unwrap();
    assert!(
        breach.contains("backend b1 gained share and is down"),
        "{breach}"
    );
    let metrics = daemon.scrape();
    for line in [
        "xlb_auto_rollbacks_total 1\n",
        "xlb_backend_up{vip=\"web\",backend=\"b1\"} 0\n",
        "xlb_backend_effective_weight{vip=\"web\",backend=\"b1\"} 0\n",
        "xlb_vip_panic{vip=\"web\"} 0\n",
    ] {
        assert!(metrics.contains(line), "no {line:?} in {metrics}");
    }
    promtool_check_metrics(metrics.split_once("\r\n\r\n").unwrap().1);
    // Once the server is back, b1 gets its share again: the rollback kept weight 1.
    servers.restart(0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while daemon.table_shares("web") != shares_before {
        assert!(Instant::now() < deadline, "b1 never came back");
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_change_that_runs_its_watch_out_is_the_last_good_generation() {
    if !require_root("a_change_that_runs_its_watch_out_is_the_last_good_generation") {
        return;
    }
    let (_topo, daemon, _servers) = checked_web();
    // Nothing passed a watch yet: refused, nothing changed.
    let g = daemon.generation();
    let out = daemon.xlb(&["rollback", "--last-good"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("no generation has passed a watch window"),
        "{}",
        text(&out)
    );
    assert_eq!(daemon.generation(), g);

    let out = daemon.xlb(&["weight", "set", "web", "b2", "2", "--watch", "2s"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("watched 2s: no breach"),
        "{}",
        text(&out)
    );
    let good = (daemon.weights("web"), daemon.table_shares("web"));
    assert_eq!(good.0, [1, 2, 1]);
    daemon.xlb_ok(&["weight", "set", "web", "b3", "2"]);
    daemon.xlb_ok(&["weight", "set", "web", "b1", "2"]);
    assert_eq!(daemon.weights("web"), [2, 2, 2]);

    daemon.xlb_ok(&["rollback", "--last-good"]);
    assert_eq!((daemon.weights("web"), daemon.table_shares("web")), good);
}
