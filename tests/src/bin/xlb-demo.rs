//! `cargo xtask demo`: xlb on an embedded lab topology (2 clients, the load balancer, 3
//! backends), with the real daemon, CLI and traffic. Five steps, each checked; the exit
//! status is non-zero if any step did not behave as shown.

use std::{collections::BTreeMap, net::IpAddr, process::ExitCode, thread, time::Duration};

use xlb_lab::{
    bpftool_sum,
    clients::{Echo, Load, LoadReport, Requests, follows},
    daemon::{Check, Daemon, VipSpec, text},
    demo::{Step, interrupted, sleep},
    servers::{ECHO_PORT, HTTP_PORT, Servers},
    topology::{Topology, VIP4, backend_name, in_ns},
};

fn main() -> ExitCode {
    xlb_lab::demo::main(
        "the demo builds namespaces and attaches XDP",
        "All five steps behaved as shown.",
        run,
    )
}

const WEIGHTS: [i64; 3] = [2, 3, 4];

fn heading(n: u32, what: &str) {
    println!("\n=== {n}. {what}");
}

/// New connections per backend, summed over the clients' loads.
fn connections(loads: &[Load]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for l in loads {
        for (b, n) in l.report().short {
            *out.entry(b).or_default() += n;
        }
    }
    out
}

fn failures(loads: &[Load]) -> Vec<String> {
    loads.iter().flat_map(|l| l.report().failures).collect()
}

/// Shows a live per-backend view once a second for `secs` seconds (on a terminal; else the
/// last second's view once, as plain lines) and returns the share new connections each
/// backend got over that time.
fn watch(daemon: &Daemon, loads: &[Load], secs: u32) -> Result<BTreeMap<String, u64>, String> {
    let live = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let start = connections(loads);
    let mut last = start.clone();
    println!(
        "  {:<4} {:>6} {:>8} {:>9} {:>8}",
        "", "weight", "table", "observed", "conn/s"
    );
    for t in 0..secs {
        sleep(Duration::from_secs(1))?;
        let now = connections(loads);
        let delta: BTreeMap<String, u64> = now
            .iter()
            .map(|(b, n)| (b.clone(), n - last.get(b).copied().unwrap_or(0)))
            .collect();
        let total: u64 = delta.values().sum::<u64>().max(1);
        last = now;
        if !live && t + 1 < secs {
            continue;
        }
        let backends = daemon.backends("web");
        if live && t > 0 {
            // Redraw the table in place.
            print!("\x1b[{}A", backends.len());
        }
        for (i, b) in backends.iter().enumerate() {
            let name = backend_name(i);
            let n = delta.get(&name).copied().unwrap_or(0);
            let share = n as f64 / total as f64;
            // Padded on a terminal, where a shorter bar must cover the last one.
            let line = format!(
                "  {name:<4} {:>6} {:>7.1}% {:>8.1}% {:>8}  {:<40}",
                b["weight"],
                b["table_share"].as_f64().unwrap_or(0.0) * 100.0,
                share * 100.0,
                n,
                "#".repeat(bar(share))
            );
            println!("{}", if live { &line } else { line.trim_end() });
        }
    }
    let end = connections(loads);
    Ok(end
        .iter()
        .map(|(b, n)| (b.clone(), n - start.get(b).copied().unwrap_or(0)))
        .collect())
}

/// The length of the bar drawn for `share` (0 to 1): up to 40 `#`.
#[expect(clippy::cast_sign_loss, reason = "a share of counts is not negative")]
fn bar(share: f64) -> usize {
    (share * 40.0).round() as usize
}

/// New connections within 5 points of the table shares.
fn check_shares(what: &str, observed: &BTreeMap<String, u64>, table: &[f64]) -> Step {
    follows(observed, table, 0.05).map_err(|e| format!("{what}: {e}"))?;
    println!("  ok: every backend within 5 points of its table share");
    Ok(())
}

fn no_failures(loads: &[Load]) -> Step {
    let f = failures(loads);
    if let Some(first) = f.first() {
        return Err(format!("{} failed requests; first: {first}", f.len()));
    }
    let served: u64 = loads.iter().map(|l| l.report().requests()).sum();
    println!("  ok: {served} requests so far, 0 failed");
    Ok(())
}

fn run() -> Step {
    println!("xlb demo: building the lab (2 clients, load balancer, 3 backends on a bridge)");
    let topo = Topology::new(2, 3);
    let mut servers = Servers::start(&topo);
    let mut daemon = Daemon::new(&topo);
    let web = |w: &[i64]| VipSpec {
        health: Some(check()),
        ..VipSpec::tcp("web", VIP4, HTTP_PORT, w)
    };
    let echo = VipSpec::tcp("echo", VIP4, ECHO_PORT, &WEIGHTS);
    daemon.write_config(&[web(&WEIGHTS), echo.clone()]);
    println!(
        "  VIP {VIP4}: web on :80 (HTTP), echo on :7 (long-lived connections)\n  \
         backends b1..b3 = 198.18.0.11..13, weights {WEIGHTS:?}; `xlb run` in the LB namespace\n  \
         web's backends are health-checked: TCP connect to :80 every 200 ms, down after 2 \
         failures, up after 2 successes"
    );
    daemon.start();
    let vip: IpAddr = VIP4.parse().map_err(|e| format!("{e}"))?;
    let loads: Vec<Load> = topo
        .clients
        .iter()
        .map(|c| Load::start(&c.name, vip, 2_000_000, Duration::from_secs(100)))
        .collect();

    heading(1, "Traffic lands in proportion to the weights");
    let table = daemon.table_shares("web");
    let observed = watch(&daemon, &loads, 6)?;
    check_shares("step 1", &observed, &table)?;
    no_failures(&loads)?;

    heading(
        2,
        "The postmortem change: every weight zero except one. It is refused.",
    );
    let bad = daemon.write_file("postmortem.toml", &[web(&[0, 0, 9]), echo]);
    let (maps_before, generation) = (daemon.routing_snapshot(), daemon.generation());
    println!("  $ xlb apply postmortem.toml   (web: b1=0 b2=0 b3=9)");
    let out = daemon.xlb(&["apply", &bad.display().to_string()]);
    for line in text(&out).lines() {
        println!("  | {line}");
    }
    if out.status.code() != Some(1) {
        return Err(format!("the postmortem config was not refused: {out:?}"));
    }
    for rule in ["[min-active-backends]", "[max-backend-share]"] {
        if !text(&out).contains(rule) {
            return Err(format!("the refusal does not name {rule}"));
        }
    }
    let observed = watch(&daemon, &loads, 4)?;
    if daemon.routing_snapshot() != maps_before || daemon.generation() != generation {
        return Err("a refused change altered the maps or the generation".into());
    }
    println!("  ok: maps and generation unchanged (exit code 1)");
    check_shares("step 2", &observed, &table)?;

    heading(
        3,
        "A legitimate change under load: b1 from 2 to 5. Nothing fails, long connections stay.",
    );
    let client1 = topo.clients[1].name.clone();
    let mut held: Vec<Echo> = in_ns(&client1, move || {
        (0..12)
            .map(|_| Echo::open(vip))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("opening long-lived connections: {e}"))
    })?;
    let on: BTreeMap<&str, usize> = held.iter().fold(BTreeMap::new(), |mut m, h| {
        *m.entry(h.backend.as_str()).or_default() += 1;
        m
    });
    println!("  12 long-lived echo connections: {on:?}");
    println!("  $ xlb weight set web b1 5");
    let out = daemon.xlb(&["weight", "set", "web", "b1", "5"]);
    for line in text(&out).lines() {
        println!("  | {line}");
    }
    if !out.status.success() {
        return Err("the legitimate change was refused".into());
    }
    let table = daemon.table_shares("web");
    let observed = watch(&daemon, &loads, 6)?;
    check_shares("step 3", &observed, &table)?;
    for (i, h) in held.iter_mut().enumerate() {
        h.ping(&format!("after-change-{i}"))
            .map_err(|e| format!("long-lived connection: {e}"))?;
    }
    println!("  ok: all 12 long-lived connections still answered by their backend");
    no_failures(&loads)?;

    heading(
        4,
        "The same counters, from plain bpftool and from `xlb stats`",
    );
    let loads: Vec<LoadReport> = loads.into_iter().map(Load::finish).collect();
    let stats_path = daemon.pin_dir().join(lb_common::maps::BACKEND_STATS);
    println!(
        "  $ bpftool map dump pinned {}   (summed over CPUs)",
        stats_path.display()
    );
    let dump = daemon.dump(lb_common::maps::BACKEND_STATS);
    let stats: serde_json::Value = serde_json::from_str(&daemon.xlb_ok(&["stats", "--json"]))
        .map_err(|e| format!("stats JSON: {e}"))?;
    let web_stats = stats["vips"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["vip"] == "web"))
        .ok_or("no web in stats")?;
    for b in web_stats["backends"].as_array().ok_or("no backends")? {
        let id = b["id"].as_u64().unwrap_or(0) as u32;
        let (packets, flows) = (
            bpftool_sum(&dump, id, "packets"),
            bpftool_sum(&dump, id, "new_flows"),
        );
        println!(
            "  key {id}: packets {packets:>8}  new_flows {flows:>6}   ({} in xlb stats: {} / {})",
            b["backend"].as_str().unwrap_or("?"),
            b["packets"],
            b["new_flows"]
        );
        if b["packets"].as_u64() != Some(packets) || b["new_flows"].as_u64() != Some(flows) {
            return Err(format!("bpftool and xlb stats disagree on backend id {id}"));
        }
    }
    println!("  $ xlb stats");
    for line in daemon.xlb_ok(&["stats"]).lines() {
        println!("  | {line}");
    }
    let failed: usize = loads.iter().map(|l| l.failures.len()).sum();
    let served: u64 = loads.iter().map(LoadReport::requests).sum();
    if failed > 0 {
        return Err(format!("{failed} requests failed"));
    }
    println!("\n  {served} requests in steps 1 to 4, 0 failed");
    drop(held);

    heading(
        5,
        "A backend's server dies under traffic: its flows move within a second, nothing \
         piles up, and it comes back.",
    );
    failover(&topo, &mut servers, &daemon)
}

/// web's health checks: short, so that step 5 takes seconds.
fn check() -> Check {
    Check {
        fall: 2,
        ..Check::tcp(HTTP_PORT)
    }
}

/// Polls `xlb status --json` until `done` holds for web's backend `name` (10 s at most);
/// returns how long it took.
fn until(
    daemon: &Daemon,
    name: &str,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> Result<Duration, String> {
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if interrupted() {
            return Err("interrupted".into());
        }
        if daemon
            .backends("web")
            .iter()
            .any(|b| b["backend"] == name && done(b))
        {
            return Ok(start.elapsed());
        }
        thread::sleep(Duration::from_millis(50));
    }
    Err(format!(
        "{name} was not {what} within 10 s: {}",
        daemon.log()
    ))
}

/// Weight, effective weight, table share and share of new requests within `from..to`,
/// per backend of web.
fn shares_table(daemon: &Daemon, req: &Requests, from: Duration, to: Duration) -> Vec<f64> {
    let answered = req.attempts().answered(from, to);
    let total = answered.values().sum::<u64>().max(1);
    println!(
        "  {:<4} {:>6} {:>9} {:>8} {:>9}",
        "", "weight", "effective", "table", "observed"
    );
    let mut table = Vec::new();
    for (i, b) in daemon.backends("web").iter().enumerate() {
        let name = backend_name(i);
        let share = b["table_share"].as_f64().unwrap_or(0.0);
        let observed = answered.get(&name).copied().unwrap_or(0) as f64 / total as f64;
        println!(
            "  {name:<4} {:>6} {:>9} {:>7.1}% {:>8.1}%  {}",
            b["weight"].as_u64().unwrap_or(0),
            b["effective_weight"].as_u64().unwrap_or(0),
            share * 100.0,
            observed * 100.0,
            b["held"].as_str().unwrap_or("")
        );
        table.push(share);
    }
    table
}

/// Step 5: b2's server is killed under three loops of short requests and restarted.
fn failover(topo: &Topology, servers: &mut Servers, daemon: &Daemon) -> Step {
    let vip: IpAddr = VIP4.parse().map_err(|e| format!("{e}"))?;
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
    let req = Requests::start(
        &topo.clients[0].name,
        vip,
        3,
        Duration::from_millis(5),
        Duration::from_millis(500),
        20_000,
        Duration::from_secs(60),
    );
    sleep(Duration::from_secs(1))?;
    println!("  three loops of short requests are running; now b2's server is killed");
    let killed = req.now();
    servers.kill(1);
    let took = until(daemon, "b2", "held down", |b| b["held"] == "down")?;
    println!(
        "  {} after the kill, b2 is held down (2 failed probes), no operator involved:",
        ms(took)
    );
    let history = daemon.history();
    let last = history.last().ok_or("no history")?;
    println!(
        "  | generation {} (health): {}",
        last["generation"],
        last["source"]["changes"][0].as_str().unwrap_or("?")
    );
    // About 900 new requests: enough to compare with the table within 5 points.
    sleep(Duration::from_secs(3))?;
    let attempts = req.attempts();
    let last_failure = attempts
        .last_failure()
        .ok_or("no request failed: b2 did not die")?;
    let failed = attempts.failures().count();
    println!(
        "  {failed} requests failed; the last one started {} after the kill. New requests \
         since, by backend:",
        ms(last_failure.saturating_sub(killed))
    );
    let since = killed + took;
    let table = shares_table(daemon, &req, since, req.now());
    let answered = req.attempts().answered(since, req.now());
    follows(&answered, &table, 0.05).map_err(|e| format!("step 5: {e}"))?;
    if table[1] != 0.0 || answered.contains_key("b2") {
        return Err(format!("b2 still gets new flows: {answered:?}"));
    }
    let w = daemon.weights("web");
    println!(
        "  ok: b2's share went to b1 and b3 in proportion to their weights ({}:{}), not to \
         one of them; with fewer than half of the backends up, xlb would stop taking \
         backends out at all (panic)",
        w[0], w[2]
    );

    let restarted = req.now();
    servers.restart(1);
    let took = until(daemon, "b2", "back", |b| {
        b["healthy"] == true && b["held"].is_null()
    })?;
    println!(
        "  b2's server restarted: b2 is back {} later (2 good probes)",
        ms(took)
    );
    sleep(Duration::from_secs(3))?;
    let back = restarted + took;
    let table = shares_table(daemon, &req, back, req.now());
    let attempts = req.finish();
    follows(
        &attempts.answered(back, attempts.0.last().map_or(back, |a| a.at)),
        &table,
        0.05,
    )
    .map_err(|e| format!("step 5, after b2 came back: {e}"))?;
    let late = attempts.failures_from(since);
    if !late.is_empty() {
        return Err(format!("requests failed after the failover: {late:?}"));
    }
    println!("  ok: no request failed after the failover, and b2 has its share again");
    Ok(())
}
