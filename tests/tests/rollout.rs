//! Stepped rollouts under load: every step within max-flow-shift, no failed request, and
//! connections already open stay on their backends; an abort returns to the start.

#![cfg(test)]

use std::{
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use xlb_lab::{
    clients::{Http, http_once},
    daemon::{Daemon, VipSpec, text},
    promtool_check_metrics, require_root,
    servers::{HTTP_PORT, Servers},
    topology::{Topology, VIP4, enter, in_ns},
};

/// Policy that lets one backend own up to 90% (the target 9:1:1 needs it).
const POLICY: &str = "\n[guardrails]\nmax_backend_share = 0.9\n";

/// A running daemon with VIP web at 2:3:4 (policy above) and its servers; the path of
/// the 9:1:1 target.
fn web_at_234() -> (Topology, Daemon, Servers, std::path::PathBuf) {
    let topo = Topology::new(1, 3);
    let mut daemon = Daemon::new(&topo);
    daemon.metrics = Some("127.0.0.1:9100".into());
    let with_policy = |weights: &[i64]| {
        let text = daemon.render(&[VipSpec::tcp("web", VIP4, HTTP_PORT, weights)]);
        text.replacen("\n[[vip]]", &format!("{POLICY}\n[[vip]]"), 1)
    };
    std::fs::write(daemon.config_path(), with_policy(&[2, 3, 4])).unwrap();
    let target = daemon.dir.path().join("target.toml");
    std::fs::write(&target, with_policy(&[9, 1, 1])).unwrap();
    daemon.start();
    let servers = Servers::start(&topo);
    (topo, daemon, servers, target)
}

/// Short connections from the client namespace until `stop` (at most 120 s): (ok, failed).
fn load(client: &str, stop: Arc<AtomicBool>) -> thread::JoinHandle<(u64, u64)> {
    let client = client.to_string();
    thread::spawn(move || {
        enter(&client);
        let (ok, failed) = (AtomicU64::new(0), AtomicU64::new(0));
        let deadline = Instant::now() + Duration::from_secs(120);
        let vip: IpAddr = VIP4.parse().unwrap();
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            match http_once(vip) {
                Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                Err(_) => failed.fetch_add(1, Ordering::Relaxed),
            };
        }
        (ok.into_inner(), failed.into_inner())
    })
}

#[test]
fn a_stepped_rollout_under_load_fails_no_request_and_moves_no_open_connection() {
    if !require_root("a_stepped_rollout_under_load_fails_no_request_and_moves_no_open_connection") {
        return;
    }
    let (topo, daemon, _servers, target) = web_at_234();
    let target = target.to_str().unwrap();
    // In one step, 2:3:4 -> 9:1:1 moves more than max-flow-shift (50%): refused.
    let out = daemon.xlb(&["apply", target]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("[max-flow-shift]"), "{}", text(&out));
    // Planned in steps, each is within it.
    let dry: serde_json::Value = serde_json::from_str(&daemon.xlb_ok(&[
        "apply",
        target,
        "--steps",
        "auto",
        "--interval",
        "1s",
        "--dry-run",
        "--json",
    ]))
    .unwrap();
    let moved: Vec<f64> = dry["data"]["moved"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_f64().unwrap())
        .collect();
    assert!(moved.len() >= 2, "{moved:?}");
    assert!(moved.iter().all(|&m| m <= 0.5), "{moved:?}");

    // Connections opened before the rollout, and their backends.
    let client = topo.clients[0].name.clone();
    let vip: IpAddr = VIP4.parse().unwrap();
    let mut open: Vec<(Http, String)> = in_ns(&client, move || {
        (0..6)
            .map(|_| {
                let mut c = Http::connect(vip).unwrap();
                let who = c.get(false).unwrap();
                (c, who)
            })
            .collect()
    });
    let held: Vec<String> = open.iter().map(|(_, who)| who.clone()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load(&client, Arc::clone(&stop));
    let before = daemon.generation();
    let out = daemon.xlb(&["apply", target, "--steps", "auto", "--interval", "1s"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("completed"), "{}", text(&out));

    // One generation per step, each from the rollout, ending at the target's table.
    assert_eq!(daemon.generation(), before + moved.len() as u64);
    let history: serde_json::Value =
        serde_json::from_str(&daemon.xlb_ok(&["history", "--json"])).unwrap();
    let steps: Vec<&serde_json::Value> = history
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["source"]["kind"] == "rollout")
        .collect();
    assert_eq!(steps.len(), moved.len());
    assert_eq!(daemon.weights("web"), [9, 1, 1]);
    let shares = daemon.table_shares("web");
    assert!((shares[0] - 9.0 / 11.0).abs() < 0.005, "{shares:?}");
    let status = daemon.xlb_ok(&["rollout", "status"]);
    assert!(status.contains("completed"), "{status}");
    // Observed shares of the final table, once 100 new flows have come since it took
    // over (the load goes on meanwhile).
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let m = daemon.scrape();
        if m.contains("xlb_backend_observed_share{") || Instant::now() > deadline {
            break m;
        }
        thread::sleep(Duration::from_millis(200));
    };
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = traffic.join().unwrap();
    assert_eq!((failed, ok > 50), (0, true), "{ok} ok, {failed} failed");
    for line in [
        "xlb_rollouts_total{outcome=\"completed\"} 1\n",
        "xlb_rollouts_total{outcome=\"rolled_back\"} 0\n",
        "xlb_backend_observed_share{vip=\"web\",backend=\"b1\"} ",
        "xlb_vip_share_drift{vip=\"web\"} ",
    ] {
        assert!(metrics.contains(line), "no {line:?} in {metrics}");
    }
    promtool_check_metrics(metrics.split_once("\r\n\r\n").unwrap().1);

    // The connections opened before are still served by the same backends.
    let again: Vec<String> = in_ns(&client, move || {
        open.iter_mut()
            .map(|(c, _)| c.get(false).unwrap())
            .collect()
    });
    assert_eq!(again, held);
}

#[test]
fn an_aborted_rollout_returns_to_where_it_started() {
    if !require_root("an_aborted_rollout_returns_to_where_it_started") {
        return;
    }
    let (_topo, daemon, _servers, target) = web_at_234();
    let start = (daemon.weights("web"), daemon.table_shares("web"));
    let target = target.to_str().unwrap().to_string();
    let out = thread::scope(|s| {
        let rollout =
            s.spawn(|| daemon.xlb(&["apply", &target, "--steps", "4", "--interval", "30s"]));
        let deadline = Instant::now() + Duration::from_secs(10);
        while daemon.weights("web") == start.0 {
            assert!(
                Instant::now() < deadline,
                "the first step never took effect"
            );
            thread::sleep(Duration::from_millis(50));
        }
        // Other changes wait for the rollout.
        let busy = daemon.xlb(&["weight", "set", "web", "b1", "3"]);
        assert_eq!(busy.status.code(), Some(2), "{}", text(&busy));
        assert!(text(&busy).contains("a rollout to"), "{}", text(&busy));
        daemon.xlb_ok(&["rollout", "abort"]);
        rollout.join().unwrap()
    });
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(text(&out).contains("aborted"), "{}", text(&out));
    assert_eq!((daemon.weights("web"), daemon.table_shares("web")), start);
    let status = daemon.xlb_ok(&["rollout", "status"]);
    assert!(status.contains(": aborted (step 1 of 4"), "{status}");
}
