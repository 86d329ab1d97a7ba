//! The announcement through a host's own life: a stop and a teardown withdraw first and
//! wait the drain time (no request fails), a crashed xlb leaves its data plane
//! forwarding and its routes announced, a crashed BIRD takes its routes with its session
//! and gets them back when it returns.

use std::{
    thread,
    time::{Duration, Instant},
};

use xlb_lab::{
    clients::Load,
    daemon::text,
    fleet::{Fleet, Spec, VIP4, host4, vip4},
    require_root,
};

use crate::lab::{http_from_all, web};

/// A load from every client, bounded in count and time.
fn loads(fleet: &Fleet) -> Vec<Load> {
    fleet
        .clients
        .iter()
        .map(|c| Load::start(&c.name, vip4(), 200_000, Duration::from_secs(60)))
        .collect()
}

fn no_failures(loads: Vec<Load>) {
    for load in loads {
        let r = load.finish();
        assert!(r.requests() > 0, "the load made no request");
        assert!(r.failures.is_empty(), "failed requests: {:#?}", r.failures);
    }
}

#[test]
fn a_stop_and_a_teardown_withdraw_first_and_no_request_fails() {
    if !require_root("a_stop_and_a_teardown_withdraw_first_and_no_request_fails") {
        return;
    }
    let mut spec = Spec::new(2, vec![web()]);
    spec.drain_time_ms = 1000;
    let mut fleet = Fleet::new(spec);
    fleet.wait_next_hops(VIP4, &[0, 1], Duration::from_secs(20));
    let running = loads(&fleet);
    thread::sleep(Duration::from_millis(500));
    // SIGTERM: the route goes first, the process a drain time later.
    let pid = fleet.hosts[1].daemon.pid().expect("running");
    let term = Instant::now();
    // SAFETY: kill on the test's own child.
    unsafe { libc::kill(pid.cast_signed(), libc::SIGTERM) };
    fleet.wait_next_hops(VIP4, &[0], Duration::from_secs(5));
    let withdrawn = term.elapsed();
    fleet.hosts[1].daemon.wait_exit(Duration::from_secs(10));
    let exited = term.elapsed();
    eprintln!("SIGTERM: withdrawn after {withdrawn:?}, exited after {exited:?}");
    assert!(
        exited >= withdrawn + Duration::from_millis(800),
        "the daemon exited {exited:?} after SIGTERM, withdrawn at {withdrawn:?}: no drain time"
    );
    fleet.hosts[1].daemon.start();
    fleet.wait_next_hops(VIP4, &[0, 1], Duration::from_secs(5));
    thread::sleep(Duration::from_millis(500));
    // Teardown detaches XDP: only after the route went and the drain time passed.
    let start = Instant::now();
    let out = fleet.hosts[1].daemon.xlb_ok(&["teardown"]);
    let took = start.elapsed();
    eprintln!("teardown took {took:?}: {}", out.trim());
    assert_eq!(fleet.next_hops(VIP4), [host4(0)]);
    assert!(
        took >= Duration::from_millis(1000),
        "teardown did not wait: {took:?}"
    );
    assert!(
        !fleet.hosts[1].daemon.pin_dir().join("link").exists(),
        "XDP still linked after teardown"
    );
    fleet.hosts[1].daemon.wait_exit(Duration::from_secs(10));
    thread::sleep(Duration::from_millis(500));
    no_failures(running);
}

#[test]
fn a_crashed_xlb_keeps_its_routes_and_a_crashed_bird_takes_them() {
    if !require_root("a_crashed_xlb_keeps_its_routes_and_a_crashed_bird_takes_them") {
        return;
    }
    let mut fleet = Fleet::new(Spec::new(2, vec![web()]));
    fleet.wait_next_hops(VIP4, &[0, 1], Duration::from_secs(20));
    // xlb killed alone: BIRD keeps announcing and the pinned data plane keeps forwarding.
    let packets = |f: &Fleet| f.vip_counter(1, "web", "packets");
    let before = packets(&fleet);
    fleet.hosts[1].daemon.stop_with(libc::SIGKILL);
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        fleet.next_hops(VIP4).len(),
        2,
        "xlb's crash withdrew the host"
    );
    let counts = http_from_all(&fleet, vip4(), 100);
    assert_eq!(counts.values().sum::<u32>(), 200, "{counts:?}");
    fleet.hosts[1].daemon.start();
    let during = packets(&fleet) - before;
    eprintln!("without its daemon, host 1 forwarded {during} packets");
    assert!(during > 0, "the host without its daemon forwarded nothing");
    // BIRD killed alone: its session goes, and the routes with it; xlb says so.
    fleet.hosts[1].bird.kill();
    let gone = fleet.wait_next_hops(VIP4, &[0], Duration::from_secs(5));
    eprintln!("BIRD killed: the router withdrew its routes after {gone:?}");
    let (status, noticed) = fleet.hosts[1].daemon.wait_status(
        "xlb notices that BIRD is gone",
        Duration::from_secs(5),
        |s| s["announce"]["applied"] == false,
    );
    eprintln!(
        "xlb noticed after {noticed:?}: {}",
        status["announce"]["error"]
    );
    let counts = http_from_all(&fleet, vip4(), 100);
    assert_eq!(counts.values().sum::<u32>(), 200, "{counts:?}");
    fleet.hosts[1].bird.restart();
    let back = fleet.wait_next_hops(VIP4, &[0, 1], Duration::from_secs(10));
    eprintln!("BIRD restarted: announced again after {back:?}");
    fleet.hosts[1].daemon.wait_status(
        "xlb sees BIRD take the routes again",
        Duration::from_secs(5),
        |s| s["announce"]["applied"] == true,
    );
    // xlb killed, then torn down without it: `--config` withdraws the routes it left
    // announced before the program goes, so no client is sent into a detached host.
    fleet.hosts[1].daemon.stop_with(libc::SIGKILL);
    let config = fleet.hosts[1].daemon.config_path();
    let out = fleet.hosts[1]
        .daemon
        .xlb(&["teardown", "--config", config.to_str().expect("path")]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("every VIP withdrawn") && text(&out).contains("XDP detached"),
        "{}",
        text(&out)
    );
    assert_eq!(
        fleet.next_hops(VIP4),
        [host4(0)],
        "withdrawn before detaching"
    );
    let counts = http_from_all(&fleet, vip4(), 100);
    assert_eq!(counts.values().sum::<u32>(), 200, "{counts:?}");
}

#[test]
fn a_routes_file_that_bird_does_not_read_is_reported_not_applied() {
    if !require_root("a_routes_file_that_bird_does_not_read_is_reported_not_applied") {
        return;
    }
    let mut fleet = Fleet::new(Spec::new(2, vec![web()]));
    fleet.wait_next_hops(VIP4, &[0, 1], Duration::from_secs(20));
    // Host 1 restarted with a routes file its BIRD does not include (a typo, say).
    fleet.hosts[1].daemon.stop_with(libc::SIGTERM);
    fleet.wait_next_hops(VIP4, &[0], Duration::from_secs(5));
    let path = fleet.hosts[1].daemon.config_path();
    let included = fleet.hosts[1].routes_file.display().to_string();
    let config = std::fs::read_to_string(&path).expect("config");
    let typo = config.replace(&included, &format!("{included}.typo"));
    assert_ne!(config, typo);
    std::fs::write(&path, typo).expect("config");
    fleet.hosts[1].daemon.start();
    let (status, _) = fleet.hosts[1].daemon.wait_status(
        "xlb reports that BIRD does not run its routes file",
        Duration::from_secs(5),
        |s| s["announce"]["applied"] == false && !s["announce"]["error"].is_null(),
    );
    let error = status["announce"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("does BIRD's config include"), "{status:#}");
    assert_eq!(
        fleet.next_hops(VIP4),
        [host4(0)],
        "the router got host 1 anyway"
    );
}
