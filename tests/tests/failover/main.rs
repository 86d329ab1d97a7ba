//! Health-driven failover with the real daemon, CLI, servers and clients: a backend whose
//! server dies, or whose link goes down, under a loop of short requests is taken out
//! within `fall` probes with no operator action, and comes back after `rise` (in slow
//! start steps when configured); a flapping backend causes no more generations than the
//! flap damping allows; when all but one backend fail, panic keeps the table from
//! concentrating on the survivor; and the health-aware rules let a drain of a down
//! backend and a move of weight to a healthy one through, while refusing more share for
//! a down backend.
//!
//! Each test has its own namespaces, pin directory, state directory and socket, so they
//! run in parallel. Checks are short (`interval_ms` 200, `timeout_ms` 200, rise 2, fall 2)
//! so that each scenario takes seconds.

#![cfg(test)]

mod lab;
mod outage;

use std::{
    cell::RefCell,
    thread,
    time::{Duration, Instant},
};

use xlb_lab::{
    clients::{follows, http_many},
    daemon::text,
    require_root,
    topology::{backend4, in_ns},
};

use lab::{
    FALL, INTERVAL, RISE, TIMEOUT, changes, failed_flows, health_generations, lab, map_shares,
    refused, requests, state, vip, wait_state,
};
use outage::{Failure, check_outage, outage};

#[test]
fn a_killed_server_is_taken_out_within_fall_probes_and_ramps_back_in_slow_start() {
    if !require_root("a_killed_server_is_taken_out_within_fall_probes_and_ramps_back_in_slow_start")
    {
        return;
    }
    // Weight 4: slow start's 25 % steps give effective weights 1, 2, 3, then 4.
    let (topo, mut servers, daemon) = lab(&[4, 4, 4], Some(3), "");
    let seen = RefCell::new(Vec::new());
    let o = outage(&topo, &mut servers, &daemon, Failure::ServerKilled, |s| {
        let (_, held, effective, share) = state(s, "b2");
        if let Some(h) = held.filter(|h| h.starts_with("slow start")) {
            let mut seen = seen.borrow_mut();
            if seen.last().is_none_or(|(last, _, _)| *last != h) {
                seen.push((h, effective, share));
            }
        }
    });
    check_outage(
        "server killed",
        &o,
        INTERVAL * FALL + Duration::from_secs(1),
    );

    // Slow start: each step in status, then in history, ending at the full weight.
    let seen = seen.into_inner();
    let steps: Vec<(&str, u64)> = seen.iter().map(|(h, e, _)| (h.as_str(), *e)).collect();
    assert_eq!(
        steps,
        [
            ("slow start 25%", 1),
            ("slow start 50%", 2),
            ("slow start 75%", 3)
        ],
        "{seen:?}"
    );
    for (h, e, share) in &seen {
        let want = *e as f64 / (8 + e) as f64;
        assert!(
            (share - want).abs() < 0.005,
            "{h}: share {share}, weight {e} of {}",
            8 + e
        );
    }
    let ramp: Vec<(String, serde_json::Value)> = daemon
        .history()
        .iter()
        .filter(|r| r["source"]["kind"] == "health")
        .map(|r| (changes(r), r["ramp"]["web/b2"].clone()))
        .collect();
    let tail: Vec<_> = ramp.iter().rev().take(4).rev().collect();
    let want = [
        (
            "web/b2 up (2 good probes): slow start at 25% of its weight",
            serde_json::json!(25),
        ),
        ("web/b2 slow start 50%", serde_json::json!(50)),
        ("web/b2 slow start 75%", serde_json::json!(75)),
        ("web/b2 slow start done", serde_json::Value::Null),
    ];
    for ((got, pct), (text, want_pct)) in tail.iter().map(|(c, p)| (c, p)).zip(want) {
        assert!(got.contains(text), "{got:?} is not {text:?}: {ramp:#?}");
        assert_eq!(*pct, want_pct, "{got}");
    }
    let shares = map_shares(&daemon);
    for b in ["b1", "b2", "b3"] {
        assert!((shares[b] - 1.0 / 3.0).abs() < 0.005, "{shares:?}");
    }
}

#[test]
fn a_backend_whose_link_goes_down_is_taken_out_and_comes_back() {
    if !require_root("a_backend_whose_link_goes_down_is_taken_out_and_comes_back") {
        return;
    }
    let (topo, mut servers, daemon) = lab(&[1, 1, 1], None, "");
    let o = outage(&topo, &mut servers, &daemon, Failure::LinkDown, |_| {});
    // A probe into a dead link waits its whole timeout, and the next round starts an
    // interval after a round ends (daemon/health.rs): a round takes interval + timeout.
    check_outage(
        "link down",
        &o,
        (INTERVAL + TIMEOUT) * FALL + Duration::from_secs(1),
    );
    let shares = map_shares(&daemon);
    for b in ["b1", "b2", "b3"] {
        assert!((shares[b] - 1.0 / 3.0).abs() < 0.005, "{shares:?}");
    }
}

/// Most health generations one backend that flaps for `window` can cause, from a clean
/// start: its k-th return needs `rise * min(2^(k-1), 64)` good probes in a row (flap
/// damping, lb-userspace/src/health.rs), a probe round takes at least `interval`, and it
/// goes down at most once more than it comes back.
fn flap_bound(window: Duration) -> u32 {
    let (mut returns, mut spent) = (0u32, Duration::ZERO);
    loop {
        let damping = 1u32 << returns.min(6);
        let next = INTERVAL * RISE * damping;
        if spent + next > window {
            break;
        }
        spent += next;
        returns += 1;
    }
    2 * returns + 1
}

#[test]
fn a_flapping_backend_causes_few_generations_and_no_failures_elsewhere() {
    if !require_root("a_flapping_backend_causes_few_generations_and_no_failures_elsewhere") {
        return;
    }
    let (topo, mut servers, daemon) = lab(&[1, 1, 1], None, "");
    let req = requests(&topo);
    thread::sleep(Duration::from_millis(500));
    let generation = daemon.generation();
    // b3's server dies and comes back every half second for 30 s: 60 toggles.
    let start = Instant::now();
    for i in 0..60u32 {
        if i % 2 == 0 {
            servers.kill(2);
        } else {
            servers.restart(2);
        }
        let next = start + Duration::from_millis(500) * (i + 1);
        thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let records = health_generations(&daemon, generation);
    let window = start.elapsed();
    let attempts = req.finish();

    let bound = flap_bound(window);
    let rounds = (window.as_millis() / INTERVAL.as_millis()) as u32;
    let list: Vec<String> = records.iter().map(changes).collect();
    eprintln!(
        "flapping for {window:?}: {} health generations (bound {bound}; {rounds} probe \
         rounds at most): {list:#?}",
        records.len()
    );
    assert!(
        !records.is_empty(),
        "the flapping backend was never taken out"
    );
    assert!(records.len() as u32 <= bound, "{list:#?}");
    assert!(
        bound * 10 <= rounds,
        "the bound {bound} is not well under {rounds} rounds"
    );
    assert!(list.iter().all(|c| c.starts_with("web/b3 ")), "{list:#?}");

    let failures = failed_flows(&daemon, &attempts);
    let answered = attempts.answered(Duration::ZERO, window + Duration::from_secs(1));
    eprintln!("answered {answered:?}; failed, by the backend their flow went to: {failures:?}");
    assert!(
        failures.keys().all(|b| b == "b3"),
        "requests to healthy backends failed: {failures:?}"
    );
    assert!(answered["b1"] > 500 && answered["b2"] > 500, "{answered:?}");
}

#[test]
fn when_all_but_one_fail_panic_keeps_the_table_from_concentrating() {
    if !require_root("when_all_but_one_fail_panic_keeps_the_table_from_concentrating") {
        return;
    }
    let (_topo, mut servers, daemon) = lab(&[1, 1, 1], None, "");
    let panic_metric = |on: u8| {
        let line = format!("xlb_vip_panic{{vip=\"web\"}} {on}\n");
        let metrics = daemon.scrape();
        assert!(metrics.contains(&line), "no {line:?} in {metrics}");
    };
    let survivor_share = || {
        let shares = map_shares(&daemon);
        assert!(shares["b1"] <= 0.5 + 0.003, "b1 owns {shares:?}");
        shares
    };
    panic_metric(0);

    // One after another: b2 is taken out (2 of 3 up is not below the threshold), b3 is not.
    servers.kill(1);
    wait_state(&daemon, "b2", false, Some("down"));
    let generation = daemon.generation();
    servers.kill(2);
    let (status, _) = daemon.wait_status("panic", Duration::from_secs(10), |s| {
        s["vips"][0]["panic"].is_object()
    });
    assert_eq!(
        status["vips"][0]["panic"],
        serde_json::json!({"up": 1, "weighted": 3, "threshold": 0.5})
    );
    let (healthy, held, effective, _) = state(&status, "b3");
    assert_eq!((healthy, held, effective), (false, None, 1), "b3 is kept");
    let shares = survivor_share();
    assert!(shares["b3"] > 0.49, "{shares:?}");
    panic_metric(1);
    let text = daemon.xlb_ok(&["status"]);
    assert!(
        text.contains("PANIC: 1 of 3 weighted backends up"),
        "{text}"
    );
    assert!(text.contains("DOWN (kept)"), "{text}");
    assert!(daemon.log().contains("PANIC"), "{}", daemon.log());
    assert_eq!(daemon.generation(), generation, "panic took b3 out");

    servers.restart(1);
    servers.restart(2);
    daemon.wait_status("all up, no panic", Duration::from_secs(10), |s| {
        s["vips"][0]["panic"].is_null()
            && ["b1", "b2", "b3"].iter().all(|b| {
                let (healthy, held, _, _) = state(s, b);
                healthy && held.is_none()
            })
    });
    panic_metric(0);
    assert!(!daemon.xlb_ok(&["status"]).contains("PANIC"));
    assert!(
        daemon.log().contains("health: vip web: panic over"),
        "{}",
        daemon.log()
    );

    // Both at once: nothing is taken out.
    servers.kill(1);
    servers.kill(2);
    daemon.wait_status("panic again", Duration::from_secs(10), |s| {
        s["vips"][0]["panic"].is_object() && !state(s, "b2").0 && !state(s, "b3").0
    });
    survivor_share();
    panic_metric(1);
    servers.restart(1);
    servers.restart(2);
    daemon.wait_status("panic over again", Duration::from_secs(10), |s| {
        s["vips"][0]["panic"].is_null() && state(s, "b2").0 && state(s, "b3").0
    });
    panic_metric(0);
}

#[test]
fn rules_let_health_fixes_through_and_refuse_share_for_a_down_backend() {
    if !require_root("rules_let_health_fixes_through_and_refuse_share_for_a_down_backend") {
        return;
    }
    // A strict quorum, so that it has something to say with one of three down; slow start,
    // which must not begin for a down backend that is drained.
    let (topo, mut servers, daemon) = lab(&[2, 1, 1], Some(2), "healthy_quorum = 0.9");
    let client = topo.client().name.clone();
    let traffic_follows = |want: [f64; 3]| {
        // 480 flows: a share's standard deviation is about 2 points, so 8 is 4 of them.
        let count = in_ns(&client, || http_many(vip(), 480));
        follows(&count, &want, 0.08).unwrap_or_else(|e| panic!("{e}: {count:?}"));
    };
    servers.kill(2);
    wait_state(&daemon, "b3", false, Some("down"));

    // More weight for the down b3: refused, nothing changes.
    refused(
        &daemon,
        &["weight", "set", "web", "b3", "2"],
        "[down-backend] vip web, backend b3",
    );

    // Draining it needs no --force, though b1 then owns 2/3 (over max_backend_share):
    // the change only moves share away from a down backend.
    let out = daemon.xlb(&["drain", "web", "b3"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(daemon.weights("web"), [2, 1, 0]);
    let drained = daemon.generation();
    // Still dead, so it has not recovered: no slow start begins for it, and it shows
    // as down, not as kept in the table.
    thread::sleep(INTERVAL * 5);
    assert_eq!(
        daemon.generation(),
        drained,
        "{:#?}",
        daemon.history().pop()
    );
    assert!(!state(&daemon.status(), "b3").0);
    assert!(!daemon.xlb_ok(&["status"]).contains("DOWN (kept)"));
    let last = daemon.history().pop().unwrap();
    assert_eq!(
        (&last["source"]["command"], &last["force"]),
        (
            &serde_json::json!("drain web b3"),
            &serde_json::json!(false)
        )
    );
    let shares = map_shares(&daemon);
    assert!(
        !shares.contains_key("b3") && (shares["b1"] - 2.0 / 3.0).abs() < 0.005,
        "{shares:?}"
    );
    assert!(
        daemon
            .live_backends()
            .iter()
            .any(|(_, a, _)| a.to_string() == backend4(2)),
        "a drained backend stays live for its established flows"
    );
    traffic_follows([2.0 / 3.0, 1.0 / 3.0, 0.0]);

    // b3 is repaired; b2 dies (1 of 2 weighted up: not below the panic threshold, so b2
    // is taken out). Giving b3 weight again moves share to a healthy backend: the healthy
    // fraction (1/2, under the 0.9 quorum) only rises, so healthy-quorum lets it through.
    servers.restart(2);
    wait_state(&daemon, "b3", true, None);
    servers.kill(1);
    wait_state(&daemon, "b2", false, Some("down"));
    let out = daemon.xlb(&["weight", "set", "web", "b3", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(daemon.weights("web"), [2, 1, 1]);
    let shares = map_shares(&daemon);
    assert!(
        !shares.contains_key("b2") && (shares["b3"] - 1.0 / 3.0).abs() < 0.005,
        "{shares:?}"
    );
    traffic_follows([2.0 / 3.0, 0.0, 1.0 / 3.0]);

    // Draining the healthy b3 lowers the healthy fraction: that healthy-quorum refuses.
    refused(&daemon, &["drain", "web", "b3"], "[healthy-quorum] vip web");
}

#[test]
fn draining_one_of_two_down_backends_needs_no_force() {
    if !require_root("draining_one_of_two_down_backends_needs_no_force") {
        return;
    }
    // Four equal backends; b3 and b4 die (2 of 4 up is not below the panic threshold, so
    // both are taken out).
    let (_topo, mut servers, daemon) = lab(&[1, 1, 1, 1], None, "");
    servers.kill(2);
    servers.kill(3);
    daemon.wait_status("b3 and b4 held down", Duration::from_secs(10), |s| {
        ["b3", "b4"]
            .iter()
            .all(|b| state(s, b).1.as_deref() == Some("down"))
    });
    let slots = daemon.table_slots("web");
    // Draining b4 moves share only away from down backends; b3's share of the weights
    // grows (1/4 to 1/3) only because b4's goes, and it still gets no slot.
    let out = daemon.xlb(&["drain", "web", "b4"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(daemon.weights("web"), [1, 1, 1, 0]);
    assert_eq!(
        daemon.table_slots("web"),
        slots,
        "the running table changed"
    );
    // Giving b3 more weight is still refused.
    refused(
        &daemon,
        &["weight", "set", "web", "b3", "2"],
        "[down-backend] vip web, backend b3",
    );
}
