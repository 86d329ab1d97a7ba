//! `xlb trace` against the real daemon and real traffic: the records name the backend
//! that really answered each connection, filters by VIP, backend and verdict hold, the
//! rate bound holds and says what it held back, requests naming nothing running are
//! refused, a change that removes what a trace follows ends it, and the kernel's trace
//! switch is off whenever no client is attached.

#![cfg(test)]

use std::{
    io::Read,
    net::IpAddr,
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use xlb_lab::{
    clients::{Http, http_many},
    daemon::{Daemon, VipSpec, text, xlb_bin},
    netns::sh,
    require_root,
    servers::{HTTP_PORT, Servers},
    topology::{Topology, VIP4, client4, in_ns},
};

/// `until_ns` of this daemon's program's trace switch (`lb_common::TraceControl`, a
/// global in a data section of its own, which bpftool prints as raw bytes).
fn trace_until(daemon: &Daemon) -> u64 {
    let prog: Value = serde_json::from_str(&sh(&format!(
        "bpftool -j prog show pinned {}/prog",
        daemon.pin_dir().display()
    )))
    .unwrap();
    for id in prog["map_ids"].as_array().unwrap() {
        let map: Value =
            serde_json::from_str(&sh(&format!("bpftool -j map show id {id}"))).unwrap();
        if map["name"] == lb_common::maps::TRACE {
            let dump: Value =
                serde_json::from_str(&sh(&format!("bpftool -j map dump id {id}"))).unwrap();
            let bytes: Vec<u8> = dump[0]["value"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| {
                    u8::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
                })
                .collect();
            return u64::from_le_bytes(bytes[..8].try_into().unwrap());
        }
    }
    panic!("the program has no {} map: {prog}", lb_common::maps::TRACE);
}

fn switch_on(daemon: &Daemon) -> bool {
    trace_until(daemon) != 0
}

/// Waits (5 s at most) until the trace switch is `on`.
fn wait_switch(daemon: &Daemon, on: bool) {
    let start = Instant::now();
    while switch_on(daemon) != on {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "trace switch not {on} after 5 s: until_ns {}",
            trace_until(daemon)
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// `xlb trace ARGS --json`, attached: the kernel's switch is on.
fn attached(daemon: &Daemon, args: &[&str]) -> Child {
    let mut child = trace(daemon, args);
    let start = Instant::now();
    while !switch_on(daemon) {
        if start.elapsed() > Duration::from_secs(5) || child.try_wait().unwrap().is_some() {
            give_up(child, &format!("xlb trace {args:?} did not attach"));
        }
        thread::sleep(Duration::from_millis(20));
    }
    child
}

/// Stops a trace that misbehaved and fails with `why` and what it said on stderr.
fn give_up(mut child: Child, why: &str) -> ! {
    xlb_lab::kill_and_reap(&mut child);
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    panic!("{why}: {err}");
}

/// `xlb trace ARGS --json`, running.
fn trace(daemon: &Daemon, args: &[&str]) -> Child {
    Command::new(xlb_bin())
        .arg("--socket")
        .arg(daemon.socket())
        .arg("trace")
        .args(args)
        .arg("--json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The trace's output once it exits, within `within` (killed and failed otherwise).
fn finish(mut child: Child, within: Duration) -> Output {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > within {
            give_up(child, &format!("xlb trace still running after {within:?}"));
        }
        thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Ctrl-C, as an operator stops a trace.
fn interrupt(child: Child) -> Child {
    // SAFETY: kill sends a signal to our own child.
    unsafe { libc::kill(child.id().cast_signed(), libc::SIGINT) };
    child
}

fn records(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

#[test]
fn trace_shows_real_decisions_and_is_off_without_a_client() {
    if !require_root("trace_shows_real_decisions_and_is_off_without_a_client") {
        return;
    }
    let topo = Topology::new(1, 3);
    let _servers = Servers::start(&topo);
    let mut daemon = Daemon::new(&topo);
    daemon.write_config(&[VipSpec::tcp("web", VIP4, HTTP_PORT, &[1, 1, 1])]);
    daemon.start();
    let client = topo.clients[0].name.clone();
    let vip: IpAddr = VIP4.parse().unwrap();
    assert!(!switch_on(&daemon), "trace on with no client");

    // Every packet of one connection, and the backend that really answered it.
    let tracing = attached(&daemon, &["web", "--count", "6"]);
    let (port, answered) = in_ns(&client, move || {
        let mut http = Http::connect(vip).unwrap();
        let port = http.local_addr().unwrap().port();
        let mut answered = Vec::new();
        for _ in 0..5 {
            answered.push(http.get(false).unwrap());
        }
        (port, answered)
    });
    let out = finish(tracing, Duration::from_secs(10));
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("ended: 6 records as asked"),
        "{}",
        text(&out)
    );
    let got = records(&out);
    assert_eq!(got.len(), 6, "{got:?}");
    let backend = format!("web/{}", answered[0]);
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r["vip"], "web", "{r}");
        assert_eq!(r["reason"], "forwarded", "{r}");
        assert_eq!(r["client"], format!("{}:{port}", client4(0)), "{r}");
        assert_eq!(r["destination"], format!("{VIP4}:{HTTP_PORT}"), "{r}");
        assert_eq!(r["backend"], backend.as_str(), "{r}");
        assert_eq!(r["flow"], if i == 0 { "new" } else { "known" }, "{r}");
    }
    // The last client gone, the kernel's switch is off again.
    wait_switch(&daemon, false);

    // --backend: only that backend's packets, over connections to all three.
    let tracing = attached(&daemon, &["web", "--backend", "b2", "--count", "10"]);
    let count = in_ns(&client, move || http_many(vip, 60));
    assert!(count.get("b2").copied().unwrap_or(0) >= 3, "{count:?}");
    let out = finish(tracing, Duration::from_secs(10));
    assert!(out.status.success(), "{}", text(&out));
    let got = records(&out);
    assert_eq!(got.len(), 10, "{}", text(&out));
    assert!(got.iter().all(|r| r["backend"] == "web/b2"), "{got:?}");

    // --reason: a port of the VIP's address that is no VIP (among whatever else the host
    // receives that is for no VIP).
    let tracing = attached(&daemon, &["--reason", "pass_not_vip"]);
    in_ns(&client, move || {
        for _ in 0..3 {
            let to = std::net::SocketAddr::new(vip, 81);
            // Whether anything answers does not matter: the trace shows the verdict.
            drop(std::net::TcpStream::connect_timeout(
                &to,
                Duration::from_millis(300),
            ));
        }
    });
    let out = finish(interrupt(tracing), Duration::from_secs(5));
    let got = records(&out);
    assert!(got.iter().all(|r| r["reason"] == "pass_not_vip"), "{got:?}");
    let to_81: Vec<&Value> = got
        .iter()
        .filter(|r| r["destination"] == format!("{VIP4}:81"))
        .collect();
    assert!(!to_81.is_empty(), "{}", text(&out));
    assert!(
        to_81
            .iter()
            .all(|r| r["vip"].is_null() && r["backend"].is_null()),
        "{to_81:?}"
    );
    wait_switch(&daemon, false);

    // The rate bound: 1 record per second per CPU while about a thousand packets pass.
    let tracing = attached(&daemon, &["web", "--rate", "1"]);
    let start = Instant::now();
    let count = in_ns(&client, move || http_many(vip, 150));
    assert_eq!(count.values().sum::<u32>(), 150, "{count:?}");
    // The next second's notice of what was held back.
    thread::sleep(Duration::from_millis(1200));
    let seconds = start.elapsed().as_secs() + 1;
    let out = finish(interrupt(tracing), Duration::from_secs(5));
    let cpus = thread::available_parallelism().unwrap().get() as u64;
    let got = records(&out).len() as u64;
    assert!(
        got >= 1 && got <= cpus * seconds,
        "{got} records in {seconds} s on {cpus} CPUs"
    );
    assert!(
        text(&out).contains("not shown: held back by the kernel's rate bound (1/s per CPU"),
        "{}",
        text(&out)
    );
    // Next to a client that wants more, a client's own --rate still holds (the daemon
    // applies it; the kernel's bound is the higher one).
    let slow = attached(&daemon, &["web", "--rate", "1"]);
    let fast = attached(&daemon, &["web"]);
    let start = Instant::now();
    in_ns(&client, move || http_many(vip, 60));
    thread::sleep(Duration::from_millis(1200));
    let seconds = start.elapsed().as_secs() + 1;
    let (slow, fast) = (
        finish(interrupt(slow), Duration::from_secs(5)),
        finish(interrupt(fast), Duration::from_secs(5)),
    );
    let (got_slow, got_fast) = (records(&slow).len() as u64, records(&fast).len() as u64);
    assert!(
        got_slow <= cpus * seconds,
        "{got_slow} records in {seconds} s"
    );
    assert!(got_fast > got_slow, "{got_fast} vs {got_slow}");
    assert!(
        text(&slow).contains("not shown: over this client's --rate (1/s per CPU)"),
        "{}",
        text(&slow)
    );
    // A client killed mid-trace detaches too.
    wait_switch(&daemon, false);

    // Requests naming nothing running: refused, switch untouched.
    for (args, why) in [
        (&["nosuch"][..], "no VIP named \"nosuch\": running are web"),
        (
            &["web", "--backend", "b9"][..],
            "VIP web has no backend \"b9\" (its backends: b1, b2, b3)",
        ),
        (
            &["web", "--reason", "pass_not_vip"][..],
            "never have the verdicts pass_not_ip, pass_not_vip",
        ),
        (
            &["--reason", "dropped"][..],
            "invalid value 'dropped' for '--reason <REASON>'",
        ),
        (
            &["--count", "0"][..],
            "invalid value '0' for '--count <COUNT>'",
        ),
        (
            &["--rate", "0"][..],
            "--rate 0: records per second per CPU must be 1 to 5000",
        ),
    ] {
        let out = finish(trace(&daemon, args), Duration::from_secs(10));
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(why), "{args:?}: {}", text(&out));
        assert!(!switch_on(&daemon));
    }

    // A change that removes the backend a trace follows ends it, saying so; names follow
    // the change at once.
    let following = attached(&daemon, &["web", "--backend", "b3"]);
    let all = attached(&daemon, &["web"]);
    let fewer = daemon.write_file(
        "fewer.toml",
        &[VipSpec::tcp("web", VIP4, HTTP_PORT, &[1, 1])],
    );
    daemon.xlb_ok(&[
        "apply",
        fewer.to_str().unwrap(),
        "--force",
        "--reason",
        "trace test",
    ]);
    let out = finish(following, Duration::from_secs(5));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("VIP web has no backend \"b3\" (its backends: b1, b2)"),
        "{}",
        text(&out)
    );
    let count = in_ns(&client, move || http_many(vip, 20));
    assert_eq!(count.values().sum::<u32>(), 20, "{count:?}");
    let out = finish(interrupt(all), Duration::from_secs(5));
    let got = records(&out);
    assert!(!got.is_empty(), "{}", text(&out));
    assert!(
        got.iter()
            .all(|r| r["backend"] == "web/b1" || r["backend"] == "web/b2"),
        "{got:?}"
    );
    assert_eq!(daemon.status()["trace_clients"], 0);

    // A daemon that stops ends the trace and says so (exit 2: the trace did not end as
    // asked).
    let tracing = attached(&daemon, &["web"]);
    assert_eq!(daemon.status()["trace_clients"], 1);
    daemon.stop_with(libc::SIGTERM);
    let out = finish(tracing, Duration::from_secs(15));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("ended: the daemon is stopping"),
        "{}",
        text(&out)
    );
    assert!(!switch_on(&daemon), "switch left on by a stopped daemon");
}
