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

use std::{
    cell::RefCell,
    collections::BTreeMap,
    net::IpAddr,
    thread,
    time::{Duration, Instant},
};

use xlb_lab::{
    clients::{Attempts, Requests, follows, http_many},
    daemon::{Check, Daemon, VipSpec, text},
    require_root,
    servers::{HTTP_PORT, Servers},
    topology::{Topology, VIP4, backend4, client4, in_ns},
};

const INTERVAL: Duration = Duration::from_millis(200);
const TIMEOUT: Duration = Duration::from_millis(200);
const RISE: u32 = 2;
const FALL: u32 = 2;
const METRICS: &str = "127.0.0.1:9100";

/// A TCP check of the HTTP port itself: a dead server fails it.
fn check(slow_start_s: Option<u64>) -> Check {
    Check {
        port: HTTP_PORT,
        interval_ms: INTERVAL.as_millis() as u64,
        timeout_ms: TIMEOUT.as_millis() as u64,
        rise: RISE,
        fall: FALL,
        slow_start_s,
        ..Check::tcp(HTTP_PORT)
    }
}

/// One client, three backends running the lab servers, and a daemon with VIP web (HTTP,
/// checked) at `weights`; returns once every backend has passed a probe.
fn lab(
    weights: &[i64],
    slow_start_s: Option<u64>,
    guardrails: &str,
) -> (Topology, Servers, Daemon) {
    let topo = Topology::new(1, weights.len());
    let servers = Servers::start(&topo);
    let mut daemon = Daemon::new(&topo);
    daemon.metrics = Some(METRICS.into());
    daemon.guardrails = guardrails.into();
    let mut web = VipSpec::tcp("web", VIP4, HTTP_PORT, weights);
    web.health = Some(check(slow_start_s));
    daemon.write_config(&[web]);
    daemon.start();
    daemon.wait_status("every backend probed", Duration::from_secs(10), |s| {
        s["vips"][0]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["last_probe"] == "ok")
    });
    (topo, servers, daemon)
}

fn vip() -> IpAddr {
    VIP4.parse().unwrap()
}

/// Three loops of short requests, 5 ms apart each; bounded at 20000 requests a loop and
/// 90 s. A request gives up after 500 ms: short enough that a loop stuck on a dead link
/// tries again within the outage, and before TCP's first SYN retransmission (1 s), so
/// that it sends one SYN and the flow entry it leaves names the backend it was sent to (a
/// retransmitted SYN is a new flow for xlb and may be sent elsewhere).
fn requests(topo: &Topology) -> Requests {
    Requests::start(
        &topo.client().name,
        vip(),
        3,
        Duration::from_millis(5),
        Duration::from_millis(500),
        20_000,
        Duration::from_secs(90),
    )
}

/// Web's backend `name` in status: (healthy, held, effective weight, table share).
fn state(status: &serde_json::Value, name: &str) -> (bool, Option<String>, u64, f64) {
    let b = status["vips"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["backend"] == name)
        .unwrap_or_else(|| panic!("no {name} in {status}"))
        .clone();
    (
        b["healthy"].as_bool().unwrap(),
        b["held"].as_str().map(str::to_string),
        b["effective_weight"].as_u64().unwrap(),
        b["table_share"].as_f64().unwrap(),
    )
}

/// Waits until status says backend `name` is held `held` (`None`: not held) and has
/// health `healthy`; returns how long it took.
fn wait_state(daemon: &Daemon, name: &str, healthy: bool, held: Option<&str>) -> Duration {
    let what = format!("{name} healthy {healthy}, held {held:?}");
    daemon
        .wait_status(&what, Duration::from_secs(10), |s| {
            let (h, got, _, _) = state(s, name);
            h == healthy && got.as_deref() == held
        })
        .1
}

/// Health generations after generation `after`.
fn health_generations(daemon: &Daemon, after: u64) -> Vec<serde_json::Value> {
    daemon
        .history()
        .into_iter()
        .filter(|r| r["source"]["kind"] == "health" && r["generation"].as_u64().unwrap() > after)
        .collect()
}

/// The changes a health generation lists, joined.
fn changes(record: &serde_json::Value) -> String {
    record["source"]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Where each failed request was sent, per the flow entry its SYN left (`xlb explain`):
/// failures per backend.
fn failed_flows(daemon: &Daemon, attempts: &Attempts) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for a in attempts.failures() {
        assert_ne!(a.port, 0, "a request failed before it had a port: {a:?}");
        let e = daemon.explain("web", &format!("{}:{}", client4(0), a.port));
        assert_eq!(e["why"], "flow-entry", "{a:?} left no flow entry: {e}");
        *out.entry(e["backend"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    out
}

/// Slot shares of web's live table in the maps, by backend.
fn map_shares(daemon: &Daemon) -> BTreeMap<String, f64> {
    let slots = daemon.table_slots("web");
    let total: u32 = slots.values().sum();
    slots
        .into_iter()
        .map(|(b, n)| (b, f64::from(n) / f64::from(total)))
        .collect()
}

/// What a refused change must leave alone: maps, table, history, and each backend's
/// weights, hold and share in status.
fn snapshot(daemon: &Daemon) -> impl PartialEq + std::fmt::Debug {
    let rows: Vec<_> = daemon
        .backends("web")
        .iter()
        .map(|b| {
            (
                b["weight"].clone(),
                b["effective_weight"].clone(),
                b["held"].clone(),
                b["table_share"].clone(),
            )
        })
        .collect();
    (
        daemon.routing_snapshot(),
        daemon.table_slots("web"),
        daemon.history_len(),
        daemon.generation(),
        rows,
    )
}

/// Runs `xlb ARGS`, which must be refused naming `rule` and leave everything as it was.
fn refused(daemon: &Daemon, args: &[&str], rule: &str) {
    let before = snapshot(daemon);
    let out = daemon.xlb(args);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains(rule), "{}", text(&out));
    eprintln!("xlb {}: {}", args.join(" "), text(&out).trim_end());
    assert_eq!(
        snapshot(daemon),
        before,
        "xlb {args:?} was refused but changed state"
    );
}

/// How a backend fails in `outage`.
#[derive(Clone, Copy, Debug)]
enum Failure {
    /// Its server process dies: connections are refused at once.
    ServerKilled,
    /// Its link goes down: probes and connections time out.
    LinkDown,
}

/// What `outage` measured, on the request loop's clock.
struct Outage {
    failed_at: Duration,
    /// From the failure to the start of the last failed request.
    last_failure: Duration,
    /// From the failure to `held: down` in status.
    detected: Duration,
    /// From the repair to b2's first answered request.
    first_answer: Duration,
    attempts: Attempts,
}

/// Backend b2 fails under a loop of short requests, is taken out, is repaired, and gets
/// new flows again. Checks that every failed request was sent to b2, that the failure
/// is a health generation naming b2 and leaves b2 no slot, and that nothing fails after
/// the failover; with `slow_start_s`, `ramp` sees each status while b2 ramps back.
fn outage(
    topo: &Topology,
    servers: &mut Servers,
    daemon: &Daemon,
    failure: Failure,
    ramp: impl Fn(&serde_json::Value),
) -> Outage {
    let req = requests(topo);
    thread::sleep(Duration::from_secs(1));
    let before = req.attempts();
    assert_eq!(
        before.failures().count(),
        0,
        "{:?}",
        before.failures().next()
    );
    assert_eq!(
        before.answered(Duration::ZERO, req.now()).len(),
        3,
        "all three answer first"
    );
    let generation = daemon.generation();

    let failed_at = req.now();
    match failure {
        Failure::ServerKilled => servers.kill(1),
        Failure::LinkDown => drop(topo.switch.sh("ip link set pb1 down")),
    }
    let detected = wait_state(daemon, "b2", false, Some("down"));
    // Keep the requests going after the failover: none may fail any more.
    thread::sleep(Duration::from_millis(1500));
    let status = daemon.status();
    let (_, held, effective, share) = state(&status, "b2");
    assert_eq!(
        (held.as_deref(), effective, share),
        (Some("down"), 0, 0.0),
        "{status:#}"
    );
    assert!(
        !daemon.table_slots("web").contains_key("b2"),
        "b2 still has slots"
    );
    let records = health_generations(daemon, generation);
    let down = records
        .iter()
        .find(|r| r["down"] == serde_json::json!(["web/b2"]))
        .unwrap_or_else(|| panic!("no health generation holds b2 down: {records:#?}"));
    assert!(
        changes(down).contains("web/b2 down (2 failed probes"),
        "{}",
        changes(down)
    );
    assert_eq!(down["user"], "xlb");
    assert!(
        daemon
            .log()
            .contains("health: web/b2 is down (2 failed probes"),
        "{}",
        daemon.log()
    );

    let repaired_at = req.now();
    let generation = daemon.generation();
    match failure {
        Failure::ServerKilled => servers.restart(1),
        Failure::LinkDown => drop(topo.switch.sh("ip link set pb1 up")),
    }
    daemon.wait_status("b2 up at its full weight", Duration::from_secs(15), |s| {
        ramp(s);
        let (healthy, held, effective, _) = state(s, "b2");
        healthy && held.is_none() && effective == daemon_weight(s, "b2")
    });
    // Until b2 has answered a new request (a loaded machine may take a while), then a
    // little longer: none may fail any more.
    let deadline = Instant::now() + Duration::from_secs(5);
    while req
        .attempts()
        .first_answer_from("b2", repaired_at)
        .is_none()
        && Instant::now() < deadline
    {
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(Duration::from_millis(300));
    let attempts = req.finish();
    let up = health_generations(daemon, generation);
    assert!(
        up.first()
            .is_some_and(|r| changes(r).contains("web/b2 up (2 good probes)")),
        "{up:#?}"
    );
    let failures = failed_flows(daemon, &attempts);
    assert_eq!(
        failures.keys().collect::<Vec<_>>(),
        ["b2"],
        "failed requests went elsewhere than b2: {failures:?}"
    );
    let last = attempts
        .last_failure()
        .expect("no request failed: b2 did not fail");
    let first = attempts
        .first_answer_from("b2", repaired_at)
        .expect("b2 got no new flows after its repair");
    assert!(attempts.failures_from(repaired_at).is_empty());
    Outage {
        failed_at,
        last_failure: last.saturating_sub(failed_at),
        detected,
        first_answer: first.saturating_sub(repaired_at),
        attempts,
    }
}

/// Web's configured weight of backend `name` in a status.
fn daemon_weight(status: &serde_json::Value, name: &str) -> u64 {
    status["vips"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["backend"] == name)
        .map(|b| b["weight"].as_u64().unwrap())
        .unwrap()
}

/// Checks `o` against the bounds: failures end within `bound` of the failure, and b2
/// answers again no sooner than `rise` probes allow and within a second of them.
fn check_outage(what: &str, o: &Outage, bound: Duration) {
    let ended = o
        .attempts
        .failures()
        .map(|a| a.at + a.took)
        .max()
        .unwrap_or_default()
        .saturating_sub(o.failed_at);
    eprintln!(
        "{what}: held down after {:?} (status); the last failed request started {:?} \
         after the failure (bound {bound:?}) and gave up {ended:?} after it; {} of {} \
         requests failed; b2 answered again {:?} after the repair",
        o.detected,
        o.last_failure,
        o.attempts.failures().count(),
        o.attempts.0.len(),
        o.first_answer
    );
    assert!(
        o.last_failure <= bound,
        "{what}: failures went on for {:?}",
        o.last_failure
    );
    assert!(
        o.attempts.failures_from(o.failed_at + bound).is_empty(),
        "{what}: {:?}",
        o.attempts.failures_from(o.failed_at + bound)
    );
    let rise = INTERVAL * (RISE - 1);
    assert!(
        o.first_answer >= rise && o.first_answer <= INTERVAL * RISE + Duration::from_secs(1),
        "{what}: b2 answered again {:?} after its repair",
        o.first_answer
    );
}

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
        let count = in_ns(&client, || http_many(vip(), 240));
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
