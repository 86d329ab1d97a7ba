//! Reading the data plane with plain bpftool: every command `xlb inspect` prints (the
//! README's "Maps and inspecting them" shows the same list) runs against a live data
//! plane whose daemon is stopped, names the backends, and its sums equal what `xlb stats`
//! said; and `[daemon] max_vips` / `max_backends` size the arrays, a restart with other
//! sizes resizes them keeping counters and tables, or is refused with nothing changed.

#![cfg(test)]

use std::{
    net::IpAddr,
    process::{Command, Output},
};

use serde_json::Value;
use xlb_lab::{
    clients::http_many,
    daemon::{Daemon, VipSpec, text, xlb_bin},
    netns::sh,
    require_root,
    servers::{HTTP_PORT, Servers},
    topology::{Topology, VIP4, in_ns},
};

/// `xlb inspect --pin-dir DAEMON'S --backend BACKEND`, run.
fn inspect_output(daemon: &Daemon, backend: &str) -> Output {
    Command::new(xlb_bin())
        .args(["inspect", "--pin-dir"])
        .arg(daemon.pin_dir())
        .args(["--backend", backend])
        .output()
        .unwrap()
}

/// `xlb inspect` for `daemon`'s pin directory: (question, command) pairs.
fn inspect(daemon: &Daemon, backend: &str) -> Vec<(String, String)> {
    let out = inspect_output(daemon, backend);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8(out.stdout).unwrap();
    stdout
        .split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            let (what, command) = block.split_once('\n').unwrap();
            (
                what.trim_start_matches("# ").to_string(),
                command.trim().to_string(),
            )
        })
        .collect()
}

/// Runs `command` with sh; its stdout.
fn run(command: &str) -> String {
    let out = Command::new("sh").args(["-c", command]).output().unwrap();
    assert!(out.status.success(), "{command}: {}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

fn lines(json_lines: &str) -> Vec<Value> {
    json_lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn web_daemon(extra: &str) -> (Topology, Daemon) {
    let topo = Topology::new(1, 3);
    let mut daemon = Daemon::new(&topo);
    let mut config = daemon.render(&[VipSpec::tcp("web", VIP4, HTTP_PORT, &[1, 1, 1])]);
    config = config.replacen("[daemon]\n", &format!("[daemon]\n{extra}"), 1);
    std::fs::write(daemon.config_path(), config).unwrap();
    daemon.start();
    (topo, daemon)
}

#[test]
fn every_documented_bpftool_command_names_the_backends_and_sums_to_xlb_stats() {
    if !require_root("every_documented_bpftool_command_names_the_backends") {
        return;
    }
    let (topo, mut daemon) = web_daemon("max_vips = 4\nmax_backends = 8\n");
    let _servers = Servers::start(&topo);
    let vip: IpAddr = VIP4.parse().unwrap();
    let count = in_ns(&topo.client().name, move || http_many(vip, 60));
    assert_eq!(count.values().sum::<u32>(), 60);
    let stats: Value = serde_json::from_str(&daemon.xlb_ok(&["stats", "--json"])).unwrap();
    let backends = stats["vips"][0]["backends"].as_array().unwrap().clone();
    assert_eq!(backends.len(), 3);
    // Without the daemon: the data plane and its pins stay.
    daemon.stop_with(libc::SIGTERM);

    let commands = inspect(&daemon, "web/b2");
    assert_eq!(commands.len(), 9, "{commands:?}");
    // A backend the pins do not name is refused, naming those that exist.
    let out = inspect_output(&daemon, "web/b9");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("no such backend") && text(&out).contains("web/b1, web/b2, web/b3"),
        "{}",
        text(&out)
    );
    let mut answered = 0;
    for (what, command) in &commands {
        let out = run(command);
        // Shown when the test fails (and with --nocapture).
        eprintln!("# {what}\n{out}");
        assert!(
            out.lines().count() <= 40,
            "{what}: more than a screen:\n{out}"
        );
        let field = |v: &Value, k: &str| v[k].as_u64().unwrap();
        if what.starts_with("Which backend") {
            for b in &backends {
                for key in ["backend", "address"] {
                    let want = format!("\"{key}\": \"{}\"", b[key].as_str().unwrap());
                    assert!(out.contains(&want), "{what}: no {want} in\n{out}");
                }
            }
        } else if what.starts_with("Which VIP") {
            assert!(out.contains("\"listen\": \"198.18.0.100:80/tcp\""), "{out}");
            assert!(out.contains("\"name\": \"web\""), "{out}");
        } else if what.starts_with("Every backend") || what.starts_with("One backend") {
            let got = lines(&out);
            let want: Vec<&Value> = backends
                .iter()
                .filter(|b| what.starts_with("Every") || b["backend"] == "b2")
                .collect();
            assert_eq!(got.len(), want.len(), "{what}:\n{out}");
            for (g, w) in got.iter().zip(want) {
                assert_eq!(g["backend"], w["backend"], "{what}");
                assert_eq!(g["vip"], "web");
                for k in ["packets", "bytes", "new_flows"] {
                    assert_eq!(field(g, k), field(w, k), "{what}: {k} of {}", w["backend"]);
                }
                let name = w["backend"].as_str().unwrap();
                assert_eq!(field(g, "new_flows"), u64::from(count[name]), "{name}");
            }
        } else if what.starts_with("Every VIP") {
            let got = lines(&out);
            assert_eq!(got.len(), 1, "{out}");
            for k in ["packets", "bytes", "new_flows"] {
                let sum: u64 = backends.iter().map(|b| field(b, k)).sum();
                assert_eq!(field(&got[0], k), sum, "VIP {k}");
            }
        } else if what.starts_with("Every verdict") {
            let got = lines(&out);
            assert_eq!(got.len(), lb_common::reason::REASON_COUNT as usize);
            let forwarded = got.iter().find(|r| r["name"] == "forwarded").unwrap();
            assert_eq!(forwarded["action"], "tx");
            let sum: u64 = backends.iter().map(|b| field(b, "packets")).sum();
            assert_eq!(field(forwarded, "packets"), sum, "forwarded packets");
        } else if what.starts_with("Flow table entries") {
            let (used, rest) = out.trim().split_once(" of ").unwrap();
            // The VIP's table never changed: every slot is stateless, so the 60
            // connections left no entry.
            assert_eq!(used, "0", "{out}");
            assert_eq!(rest, "1048576 flow entries");
        } else if what.starts_with("Flow table inserts") {
            // No slot changed: nothing was written, nothing refused.
            let got = lines(&out);
            assert_eq!(got.len(), 1, "{out}");
            for k in ["inserts", "refused_full", "refused_rate"] {
                assert_eq!(field(&got[0], k), 0, "{k}: {out}");
            }
        } else if what.starts_with("The XDP link") {
            assert!(out.contains("xdp"), "{out}");
        } else {
            panic!("a command this test does not check: {what}");
        }
        answered += 1;
    }
    assert_eq!(answered, commands.len());

    // The per-backend arrays hold exactly max_backends ids, the per-VIP ones max_vips.
    for (map, entries) in [
        ("xlb_backends", 8),
        ("xlb_be_stats", 8),
        ("xlb_vip_stats", 4),
    ] {
        let info: Value = serde_json::from_str(&sh(&format!(
            "bpftool -j map show pinned {}/{map}",
            daemon.pin_dir().display()
        )))
        .unwrap();
        assert_eq!(info["max_entries"], entries, "{map}");
    }
}

/// (map id, max_entries) of a pinned map.
fn identity(daemon: &Daemon, map: &str) -> (u64, u64) {
    let info: Value = serde_json::from_str(&sh(&format!(
        "bpftool -j map show pinned {}/{map}",
        daemon.pin_dir().display()
    )))
    .unwrap();
    (
        info["id"].as_u64().unwrap(),
        info["max_entries"].as_u64().unwrap(),
    )
}

/// Per backend id: (packets, new flows) summed over CPUs, straight from the map.
fn counters(daemon: &Daemon) -> Vec<(u64, u64)> {
    let dump = daemon.dump("xlb_be_stats");
    (1..4)
        .map(|id| {
            (
                xlb_lab::bpftool_sum(&dump, id, "packets"),
                xlb_lab::bpftool_sum(&dump, id, "new_flows"),
            )
        })
        .collect()
}

#[test]
fn a_restart_with_other_map_sizes_resizes_keeping_counters_or_refuses_and_changes_nothing() {
    if !require_root("a_restart_with_other_map_sizes_resizes") {
        return;
    }
    let (topo, mut daemon) = web_daemon("max_backends = 8\n");
    let _servers = Servers::start(&topo);
    let vip: IpAddr = VIP4.parse().unwrap();
    in_ns(&topo.client().name, move || http_many(vip, 30));
    let table = daemon.table_slots("web");
    let live = daemon.live_backends();
    daemon.stop_with(libc::SIGTERM);
    let before = counters(&daemon);
    assert_eq!(before.iter().map(|c| c.1).sum::<u64>(), 30);

    // Larger: every array is new and sized, counters, backends and tables carried over.
    let config = std::fs::read_to_string(daemon.config_path()).unwrap();
    let larger = config.replace("max_backends = 8\n", "max_backends = 32\nmax_vips = 8\n");
    std::fs::write(daemon.config_path(), &larger).unwrap();
    let old_stats = identity(&daemon, "xlb_be_stats");
    daemon.start();
    let new_stats = identity(&daemon, "xlb_be_stats");
    assert_eq!(new_stats.1, 32);
    assert_ne!(new_stats.0, old_stats.0, "not a new map");
    assert_eq!(identity(&daemon, "xlb_backends").1, 32);
    assert_eq!(identity(&daemon, "xlb_rings").1, 8);
    assert_eq!(identity(&daemon, "xlb_vip_stats").1, 8);
    assert_eq!(counters(&daemon), before, "counters after resizing");
    assert_eq!(daemon.live_backends(), live);
    assert_eq!(daemon.table_slots("web"), table);
    let count = in_ns(&topo.client().name, move || http_many(vip, 30));
    assert_eq!(count.values().sum::<u32>(), 30);
    let after = counters(&daemon);
    let new_flows = |c: &[(u64, u64)]| c.iter().map(|c| c.1).sum::<u64>();
    assert_eq!(new_flows(&after), 60, "the resized maps count");

    // Smaller than an id in use (ids 1-3 are live): refused as a config problem, and
    // nothing changed.
    daemon.stop_with(libc::SIGTERM);
    let pinned = ["xlb_backends", "xlb_be_stats", "xlb_rings", "xlb_vip_stats"]
        .map(|m| identity(&daemon, m));
    std::fs::write(
        daemon.config_path(),
        larger.replace("max_backends = 32\n", "max_backends = 3\n"),
    )
    .unwrap();
    // `validate` already says so, offline.
    let out = Command::new(xlb_bin())
        .arg("validate")
        .arg(daemon.config_path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("3 backends in all; daemon.max_backends = 3 holds 2"),
        "{}",
        text(&out)
    );
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", topo.lb.name))
        .arg(xlb_bin())
        .args(["run", "--config"])
        .arg(daemon.config_path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    assert!(
        text(&out).contains(
            "daemon.max_backends = 3 holds ids below 3, but id 3 is live (the highest in use"
        ) && text(&out).contains("set daemon.max_backends to at least 4"),
        "{}",
        text(&out)
    );
    assert_eq!(
        ["xlb_backends", "xlb_be_stats", "xlb_rings", "xlb_vip_stats"]
            .map(|m| identity(&daemon, m)),
        pinned,
        "a refused resize replaced a map"
    );
    assert_eq!(counters(&daemon), after);
    let count = in_ns(&topo.client().name, move || http_many(vip, 30));
    assert_eq!(
        count.values().sum::<u32>(),
        30,
        "the data plane still serves"
    );
}

#[test]
fn a_removed_backend_ids_counters_are_zeroed_so_a_later_owner_starts_from_zero() {
    if !require_root("a_removed_backend_ids_counters_are_zeroed") {
        return;
    }
    let (topo, daemon) = web_daemon("");
    let _servers = Servers::start(&topo);
    let vip: IpAddr = VIP4.parse().unwrap();
    in_ns(&topo.client().name, move || http_many(vip, 30));
    let before = counters(&daemon);
    assert!(before.iter().all(|c| c.1 > 0), "{before:?}");

    let two = daemon.write_file("two.toml", &[VipSpec::tcp("web", VIP4, HTTP_PORT, &[1, 1])]);
    daemon.xlb_ok(&["apply", two.to_str().unwrap()]);
    let after = counters(&daemon);
    assert_eq!(
        &after[..2],
        &before[..2],
        "kept backends keep their counters"
    );
    assert_eq!(
        after[2],
        (0, 0),
        "the retired id 3 still counts {:?}",
        after[2]
    );

    // b3 back, at its old address: whichever id it gets, it starts from zero.
    let three = daemon.write_file(
        "three.toml",
        &[VipSpec::tcp("web", VIP4, HTTP_PORT, &[1, 1, 1])],
    );
    daemon.xlb_ok(&["apply", three.to_str().unwrap()]);
    let b3 = daemon.backend("web", "b3");
    assert_eq!(b3["new_flows"], 0, "{b3}");
    assert_eq!(b3["packets"], 0, "{b3}");

    // At the default sizes (512 backend ids: a 290 KB dump on two CPUs) the printed
    // commands still run, and show the new owner from zero.
    let commands = inspect(&daemon, "web/b3");
    let (_, every) = commands
        .iter()
        .find(|(what, _)| what.starts_with("Every backend"))
        .unwrap();
    let rows = lines(&run(every));
    assert_eq!(rows.len(), 3, "{rows:?}");
    let row = rows.iter().find(|r| r["backend"] == "b3").unwrap();
    assert_eq!(
        (row["packets"].as_u64(), row["new_flows"].as_u64()),
        (Some(0), Some(0))
    );
}
