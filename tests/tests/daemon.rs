//! The real `xlb` daemon and CLI in the lab topology: startup apply, socket permissions,
//! rejected configs that change nothing, weight set, drain with established connections,
//! rollback, SIGHUP reload, health checks (panic, `healthy-quorum`, `down-backend`), `/metrics` and
//! `stats` rates against real traffic, SIGKILL during a loop of applies and a restart that
//! reconciles with established flows intact, and teardown.

#![cfg(test)]

use std::{
    collections::BTreeMap,
    net::{IpAddr, TcpListener},
    os::unix::{fs::PermissionsExt, process::CommandExt},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use xlb_lab::{
    clients::{Echo, Load, follows, http_many},
    daemon::{Check, Daemon, VipSpec, text, xlb_bin},
    netns::sh,
    require_root,
    servers::{ECHO_PORT, HTTP_PORT, Servers},
    topology::{Topology, VIP4, enter, in_ns},
};

/// The health-check port; only the backends where a test opens it are healthy.
const HEALTH_PORT: u16 = 8081;
const METRICS: &str = "127.0.0.1:9100";

fn specs(weights: [i64; 3]) -> [VipSpec; 2] {
    let mut web = VipSpec::tcp("web", VIP4, HTTP_PORT, &weights);
    web.health = Some(Check::tcp(HEALTH_PORT));
    [web, VipSpec::tcp("echo", VIP4, ECHO_PORT, &[1, 1, 1])]
}

fn share(count: &BTreeMap<String, u32>, name: &str) -> f64 {
    f64::from(count.get(name).copied().unwrap_or(0)) / f64::from(count.values().sum::<u32>())
}

/// Opens the health port in backend namespace `ns` until `stop`.
fn health_listener(ns: &str, stop: Arc<AtomicBool>) -> thread::JoinHandle<()> {
    let ns = ns.to_string();
    thread::spawn(move || {
        enter(&ns);
        let l = TcpListener::bind(("::", HEALTH_PORT)).unwrap();
        l.set_nonblocking(true).unwrap();
        while !stop.load(Ordering::Relaxed) {
            #[expect(
                clippy::let_underscore_must_use,
                reason = "an accepted connection is closed at once; only the open port matters"
            )]
            let _ = l.accept();
            thread::sleep(Duration::from_millis(5));
        }
    })
}

/// `healthy` of web's backends in `xlb status`, once it equals `want` (10 s at most).
fn wait_health(daemon: &Daemon, want: [bool; 3]) {
    daemon.wait_status(&format!("health {want:?}"), Duration::from_secs(10), |s| {
        let got: Vec<bool> = s["vips"][0]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["healthy"].as_bool().unwrap())
            .collect();
        got == want
    });
}

/// Table shares of web's b1..b3, from the slots of the live table in the maps.
fn map_shares(daemon: &Daemon) -> Vec<f64> {
    let slots = daemon.table_slots("web");
    let total: u32 = slots.values().sum();
    ["b1", "b2", "b3"]
        .map(|b| f64::from(slots.get(b).copied().unwrap_or(0)) / f64::from(total))
        .to_vec()
}

#[test]
fn daemon_and_cli_end_to_end() {
    if !require_root("daemon_and_cli_end_to_end") {
        return;
    }
    let topo = Topology::new(1, 3);
    let _servers = Servers::start(&topo);
    let mut daemon = Daemon::new(&topo);
    daemon.metrics = Some(METRICS.into());
    daemon.write_config(&specs([1, 1, 1]));
    daemon.start();
    let client = topo.clients[0].name.clone();
    let vip: IpAddr = VIP4.parse().unwrap();
    let healthy_stop = Arc::new(AtomicBool::new(false));
    let mut health = vec![health_listener(
        &topo.backends[0].name,
        Arc::clone(&healthy_stop),
    )];

    // Socket: root only, never world-accessible; a non-root user is refused.
    let meta = std::fs::metadata(daemon.socket()).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let mut nobody = Command::new(xlb_bin());
    nobody.arg("--socket").arg(daemon.socket()).arg("status");
    // SAFETY: setuid in the child before exec.
    unsafe {
        nobody.pre_exec(|| {
            if libc::setuid(65534) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let out = nobody.output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("Permission denied"), "{}", text(&out));

    assert_eq!(daemon.generation(), 1);
    let count = in_ns(&client, move || http_many(vip, 300));
    for b in ["b1", "b2", "b3"] {
        assert!((share(&count, b) - 1.0 / 3.0).abs() < 0.1, "{count:?}");
    }

    // /metrics and `xlb stats` report the same counters the servers produced.
    let stats: serde_json::Value =
        serde_json::from_str(&daemon.xlb_ok(&["stats", "--json"])).unwrap();
    let metrics = daemon.scrape();
    assert!(metrics.starts_with("HTTP/1.1 200 OK"), "{metrics}");
    for b in stats["vips"][0]["backends"].as_array().unwrap() {
        let name = b["backend"].as_str().unwrap();
        let flows = b["new_flows"].as_u64().unwrap();
        assert_eq!(flows, u64::from(count[name]), "{name}: stats vs clients");
        let line =
            format!("xlb_backend_new_flows_total{{vip=\"web\",backend=\"{name}\"}} {flows}\n");
        assert!(metrics.contains(&line), "no {line:?} in {metrics}");
    }

    // Health: only b1 answers on the health port, so 1 of 3 weighted backends is up:
    // below the panic threshold (0.5), so no backend is taken out and every table share
    // stays where it was.
    wait_health(&daemon, [true, false, false]);
    let metrics = daemon.scrape();
    for line in [
        "xlb_backend_up{vip=\"web\",backend=\"b1\"} 1\n",
        "xlb_backend_up{vip=\"web\",backend=\"b2\"} 0\n",
        "xlb_vip_panic{vip=\"web\"} 1\n",
    ] {
        assert!(metrics.contains(line), "no {line:?} in {metrics}");
    }
    for absent in [
        "xlb_backend_up{vip=\"echo\"",
        "xlb_vip_panic{vip=\"echo\"",
        "xlb_backend_healthy",
    ] {
        assert!(!metrics.contains(absent), "{absent:?} in {metrics}");
    }
    assert!(
        daemon
            .xlb_ok(&["status"])
            .contains("PANIC: 1 of 3 weighted backends up"),
        "{}",
        daemon.xlb_ok(&["status"])
    );
    for share in map_shares(&daemon) {
        assert!(
            (share - 1.0 / 3.0).abs() < 0.01,
            "{:?}",
            map_shares(&daemon)
        );
    }
    // Moving weight towards the one healthy backend does not lower the healthy fraction:
    // `healthy-quorum` lets it through, and the maps and new flows follow it.
    let out = daemon.xlb(&["weight", "set", "web", "b1", "2"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(daemon.weights("web"), [2, 1, 1]);
    let shares = map_shares(&daemon);
    assert!((shares[0] - 0.5).abs() < 0.01, "{shares:?}");
    let status_shares = daemon.table_shares("web");
    assert!(
        shares
            .iter()
            .zip(&status_shares)
            .all(|(a, b)| (a - b).abs() < 1e-9),
        "maps {shares:?} vs status {status_shares:?}"
    );
    let count = in_ns(&client, move || http_many(vip, 300));
    follows(&count, &shares, 0.08).unwrap_or_else(|e| panic!("{e}: {count:?}"));
    // Giving share to a backend that is down is refused, and changes nothing.
    let before = (
        daemon.routing_snapshot(),
        daemon.table_slots("web"),
        daemon.history_len(),
        daemon.generation(),
    );
    let out = daemon.xlb(&["weight", "set", "web", "b2", "2"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("[down-backend] vip web, backend b2"),
        "{}",
        text(&out)
    );
    assert_eq!(
        (
            daemon.routing_snapshot(),
            daemon.table_slots("web"),
            daemon.history_len(),
            daemon.generation()
        ),
        before,
        "a refused change altered state"
    );
    // All three up: panic over.
    for ns in [&topo.backends[1].name, &topo.backends[2].name] {
        health.push(health_listener(ns, Arc::clone(&healthy_stop)));
    }
    wait_health(&daemon, [true, true, true]);
    assert!(
        daemon.scrape().contains("xlb_vip_panic{vip=\"web\"} 0\n"),
        "{}",
        daemon.scrape()
    );

    // Rejected configs: rule id in the output, exit 1, nothing changes.
    let before = (
        daemon.routing_snapshot(),
        daemon.history_len(),
        daemon.generation(),
    );
    for (weights, rules) in [
        ([0, 0, 5], &["min-active-backends", "max-backend-share"][..]),
        ([0, 0, 0], &["nonzero-total"][..]),
        ([1, 1, 10], &["max-backend-share"][..]),
    ] {
        let bad = daemon.write_file("bad.toml", &specs(weights));
        let out = daemon.xlb(&["apply", bad.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{weights:?}: {}", text(&out));
        for rule in rules {
            assert!(text(&out).contains(&format!("[{rule}]")), "{}", text(&out));
        }
        let out = daemon.xlb(&["validate", bad.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    }
    let bad = daemon.dir.path().join("bad.toml");
    std::fs::write(&bad, "[[vip]]\nname = 1\n").unwrap();
    let out = daemon.xlb(&["apply", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("bad.toml:2: vip[0].name"),
        "{}",
        text(&out)
    );
    let out = daemon.xlb(&["weight", "set", "web", "b1", "5", "--force"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "--force without --reason: {}",
        text(&out)
    );
    assert_eq!(
        (
            daemon.routing_snapshot(),
            daemon.history_len(),
            daemon.generation()
        ),
        before,
        "a rejected change altered state"
    );

    // A drain the guardrails refuse (b1 has weight 2 from above), then one they accept
    // with established connections to the drained backend kept.
    assert_eq!(daemon.weights("web"), [2, 1, 1]);
    let out = daemon.xlb(&["drain", "web", "b2"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("[max-backend-share] vip web, backend b1"),
        "{}",
        text(&out)
    );
    daemon.xlb_ok(&["weight", "set", "web", "b1", "1"]);
    for share in map_shares(&daemon) {
        assert!(
            (share - 1.0 / 3.0).abs() < 0.01,
            "{:?}",
            map_shares(&daemon)
        );
    }
    // 12 connections, and more (at most 60 in all) until one is on b2: with b2's third
    // of the table, 12 alone miss it about once in 130 runs.
    let mut held: Vec<Echo> = in_ns(&client, move || {
        let mut held: Vec<Echo> = (0..12).map(|_| Echo::open(vip).unwrap()).collect();
        while held.len() < 60 && !held.iter().any(|h| h.backend == "b2") {
            held.push(Echo::open(vip).unwrap());
        }
        held
    });
    assert!(
        held.iter().any(|h| h.backend == "b2"),
        "no held connection on b2"
    );
    daemon.xlb_ok(&["drain", "echo", "b2"]);
    held.iter_mut().for_each(|h| h.ping("after-drain").unwrap());
    let echoes: Vec<String> = in_ns(&client, move || {
        (0..60).map(|_| Echo::open(vip).unwrap().backend).collect()
    });
    assert!(
        !echoes.iter().any(|b| b == "b2"),
        "a drained backend got new flows"
    );

    // Rollback to the previous generation (echo's b2 back to weight 1).
    let g = daemon.generation();
    daemon.xlb_ok(&["rollback"]);
    assert_eq!(daemon.generation(), g + 1);
    assert_eq!(daemon.weights("echo"), [1, 1, 1]);
    let history: serde_json::Value =
        serde_json::from_str(&daemon.xlb_ok(&["history", "--json"])).unwrap();
    let last = history.as_array().unwrap().last().unwrap();
    assert_eq!(last["source"]["kind"], "rollback");
    assert_eq!(last["source"]["to"], g - 1);

    // SIGHUP re-reads the file through the guardrails.
    daemon.write_config(&specs([1, 2, 2]));
    let g = daemon.generation();
    sh(&format!("kill -HUP {}", daemon.pid().unwrap()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while daemon.generation() == g {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not apply: {}",
            daemon.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(daemon.weights("web"), [1, 2, 2]);
    let shares = map_shares(&daemon);
    for (got, want) in shares.iter().zip([0.2, 0.4, 0.4]) {
        assert!((got - want).abs() < 0.01, "{shares:?}");
    }

    // Rates: under a steady load, the sampler reports new flows per second.
    let load = Load::start(&client, vip, 100_000, Duration::from_secs(30));
    thread::sleep(Duration::from_millis(2500));
    let stats: serde_json::Value =
        serde_json::from_str(&daemon.xlb_ok(&["stats", "--json"])).unwrap();
    let report = load.finish();
    assert!(report.failures.is_empty(), "{:?}", report.failures.first());
    let rates: Vec<f64> = stats["rates"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["vip"] == "web")
        .map(|r| r["rates"]["new_flows_per_s"].as_f64().unwrap())
        .collect();
    assert_eq!(rates.len(), 3, "{stats}");
    assert!(
        rates.iter().all(|&r| r > 1.0),
        "new flows/s under load: {rates:?}"
    );

    // SIGKILL in the middle of a loop of applies, then a restart.
    let before_loop = daemon.history_len();
    let looping = {
        let socket = daemon.socket();
        thread::spawn(move || {
            for i in 0..40 {
                let w = if i % 2 == 0 { "1" } else { "2" };
                #[expect(
                    clippy::let_underscore_must_use,
                    reason = "the loop is killed with the daemon; the history afterwards is what is checked"
                )]
                let _ = Command::new(xlb_bin())
                    .arg("--socket")
                    .arg(&socket)
                    .args(["weight", "set", "web", "b3", w])
                    .output();
            }
        })
    };
    thread::sleep(Duration::from_millis(300));
    daemon.stop_with(libc::SIGKILL);
    looping.join().unwrap();
    // The data plane forwards with no daemon at all.
    held.iter_mut().for_each(|h| h.ping("daemon-dead").unwrap());
    daemon.start();
    held.iter_mut()
        .for_each(|h| h.ping("after-restart").unwrap());
    let committed = daemon.history_len();
    assert!(
        (before_loop + 1..before_loop + 40).contains(&committed),
        "the kill did not land inside the loop: {before_loop} -> {committed} generations"
    );
    assert!(daemon.generation() >= committed as u64);
    let b3 = daemon.weights("web")[2];
    // New flows follow the committed weights (b3 is 1 or 2 with b1 = 1, b2 = 2).
    let count = in_ns(&client, move || http_many(vip, 600));
    let want = b3 as f64 / (3.0 + b3 as f64);
    assert!(
        (share(&count, "b3") - want).abs() < 0.07,
        "b3 weight {b3}: {count:?}"
    );

    // Teardown: the daemon exits, XDP is detached, the pins are gone.
    daemon.xlb_ok(&["teardown"]);
    daemon.wait_exit(Duration::from_secs(10));
    assert!(!daemon.pin_dir().exists());
    assert!(!topo.lb.sh("ip link show eth0").contains("xdp"));
    healthy_stop.store(true, Ordering::Relaxed);
    for h in health {
        h.join().unwrap();
    }
}
