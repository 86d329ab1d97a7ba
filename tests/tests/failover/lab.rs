//! The failover tests' lab: one client, three backends running the lab servers and
//! checked by the daemon, a loop of short requests, and readers of the daemon's status,
//! history and maps.

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use xlb_lab::{
    clients::{Attempts, Requests},
    daemon::{Check, Daemon, VipSpec, text},
    servers::{HTTP_PORT, Servers},
    topology::{Topology, VIP4, client4},
};

pub(crate) const INTERVAL: Duration = Duration::from_millis(200);
pub(crate) const TIMEOUT: Duration = Duration::from_millis(200);
pub(crate) const RISE: u32 = 2;
pub(crate) const FALL: u32 = 2;
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
pub(crate) fn lab(
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

pub(crate) fn vip() -> IpAddr {
    VIP4.parse().unwrap()
}

/// Three loops of short requests, 5 ms apart each; bounded at 20000 requests a loop and
/// 90 s. A request gives up after 500 ms: short enough that a loop stuck on a dead link
/// tries again within the outage, and before TCP's first SYN retransmission (1 s), so
/// that it sends one SYN, to its slot's owner at the time, which `failed_flows` finds
/// again (a retransmitted SYN is a new flow for xlb and may be sent elsewhere).
pub(crate) fn requests(topo: &Topology) -> Requests {
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
pub(crate) fn state(status: &serde_json::Value, name: &str) -> (bool, Option<String>, u64, f64) {
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
pub(crate) fn wait_state(
    daemon: &Daemon,
    name: &str,
    healthy: bool,
    held: Option<&str>,
) -> Duration {
    let what = format!("{name} healthy {healthy}, held {held:?}");
    daemon
        .wait_status(&what, Duration::from_secs(10), |s| {
            let (h, got, _, _) = state(s, name);
            h == healthy && got.as_deref() == held
        })
        .1
}

/// Health generations after generation `after`.
pub(crate) fn health_generations(daemon: &Daemon, after: u64) -> Vec<serde_json::Value> {
    daemon
        .history()
        .into_iter()
        .filter(|r| r["source"]["kind"] == "health" && r["generation"].as_u64().unwrap() > after)
        .collect()
}

/// The changes a health generation lists, joined.
pub(crate) fn changes(record: &serde_json::Value) -> String {
    record["source"]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Where each failed request was sent (`xlb explain`): failures per backend. A failed
/// flow started before the table took its backend out, so it went to its slot's
/// previous owner if the slot has changed since, else to the slot's owner; a flow entry,
/// if its packets left one, says so outright.
pub(crate) fn failed_flows(daemon: &Daemon, attempts: &Attempts) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for a in attempts.failures() {
        assert_ne!(a.port, 0, "a request failed before it had a port: {a:?}");
        let e = daemon.explain("web", &format!("{}:{}", client4(0), a.port));
        let went = match (e["why"].as_str(), e["slot_previous"].as_str()) {
            (Some("changed-slot"), Some(previous)) => previous,
            _ => e["backend"].as_str().unwrap(),
        };
        *out.entry(went.to_string()).or_default() += 1;
    }
    out
}

/// Slot shares of web's live table in the maps, by backend.
pub(crate) fn map_shares(daemon: &Daemon) -> BTreeMap<String, f64> {
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
pub(crate) fn refused(daemon: &Daemon, args: &[&str], rule: &str) {
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

/// Web's configured weight of backend `name` in a status.
pub(crate) fn daemon_weight(status: &serde_json::Value, name: &str) -> u64 {
    status["vips"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["backend"] == name)
        .map(|b| b["weight"].as_u64().unwrap())
        .unwrap()
}
