//! What runs is a validated, recorded generation, whatever path a change takes: a file
//! that relaxes the guardrails and concentrates traffic in one step, CLI changes followed
//! by a SIGHUP or a restart, empty and truncated files, forged requests, a closed pipe.
//! Real daemon, CLI, servers and clients on the lab topology; every check reads the maps
//! (bpftool) or the traffic afterwards.

#![cfg(test)]

use std::{net::IpAddr, process::Command};

use xlb_lab::{
    clients::http_many,
    daemon::{Daemon, VipSpec, text, xlb_bin},
    require_root,
    servers::{ECHO_PORT, HTTP_PORT, Servers},
    topology::{Topology, VIP4, in_ns},
};

fn specs(web: [i64; 3]) -> [VipSpec; 2] {
    [
        VipSpec::tcp("web", VIP4, HTTP_PORT, &web),
        VipSpec::tcp("echo", VIP4, ECHO_PORT, &[1, 1, 1]),
    ]
}

/// A running daemon on a fresh topology with web at `web` and echo at 1, 1, 1.
fn running(web: [i64; 3]) -> (Topology, Servers, Daemon) {
    let topo = Topology::new(1, 3);
    let servers = Servers::start(&topo);
    let mut daemon = Daemon::new(&topo);
    daemon.write_config(&specs(web));
    daemon.start();
    (topo, servers, daemon)
}

/// Everything an accepted change would alter: VIP keys, backends, history, generation.
type State = ((serde_json::Value, serde_json::Value), usize, u64);

fn state(d: &Daemon) -> State {
    (d.routing_snapshot(), d.history_len(), d.generation())
}

fn last_record(d: &Daemon) -> serde_json::Value {
    let history: serde_json::Value =
        serde_json::from_str(&d.xlb_ok(&["history", "--json"])).unwrap();
    history.as_array().unwrap().last().unwrap().clone()
}

const RELAXED: &str =
    "[guardrails]\nmin_active_backends = 1\nmax_backend_share = 1.0\nmax_flow_shift = 1.0\n";

#[test]
fn relaxed_guardrails_with_the_postmortem_weights_need_force_and_are_recorded_so() {
    if !require_root("relaxed_guardrails_with_the_postmortem_weights_need_force") {
        return;
    }
    let (topo, _servers, daemon) = running([3, 3, 3]);
    let text_of = |w| {
        daemon
            .render(&specs(w))
            .replacen("\n[[vip]]", &format!("\n{RELAXED}\n[[vip]]"), 1)
    };
    let relaxed = daemon.dir.path().join("relaxed.toml");
    std::fs::write(&relaxed, text_of([0, 0, 9])).unwrap();
    let before = state(&daemon);

    let out = daemon.xlb(&["apply", relaxed.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let shift_line = text_of([0, 0, 9])
        .lines()
        .position(|l| l.starts_with("max_flow_shift"))
        .unwrap()
        + 1;
    let located = format!(
        "relaxed.toml:{shift_line}: [policy-loosening] vip *: guardrails.max_flow_shift would \
         loosen from 50.0%"
    );
    for want in [
        located.as_str(),
        "[min-active-backends] vip web",
        "[max-backend-share] vip web, backend b3",
        "[max-flow-shift] vip web",
    ] {
        assert!(text(&out).contains(want), "no {want:?} in {}", text(&out));
    }
    // Offline the file is valid (its own policy allows it); config CI sees the loosening.
    let relaxed_ok = daemon.dir.path().join("relaxed-ok.toml");
    std::fs::write(&relaxed_ok, text_of([3, 3, 3])).unwrap();
    daemon.xlb_ok(&["validate", relaxed_ok.to_str().unwrap()]);
    let strict = daemon.xlb(&["validate", "--strict", relaxed_ok.to_str().unwrap()]);
    assert_eq!(strict.status.code(), Some(1), "{}", text(&strict));
    assert_eq!(
        text(&strict).matches("[policy-loosening] vip *").count(),
        3,
        "{}",
        text(&strict)
    );
    let diff = daemon.xlb(&["diff", relaxed.to_str().unwrap()]);
    assert!(
        text(&diff).contains("global: guardrails.max_flow_shift: 50.0% -> 100.0% (looser)"),
        "{}",
        text(&diff)
    );
    assert_eq!(state(&daemon), before, "a refused apply changed something");

    // The same file as the daemon's own, through SIGHUP: refused the same way.
    std::fs::write(daemon.config_path(), text_of([0, 0, 9])).unwrap();
    daemon.sighup();
    daemon.wait_log("rejected by the guardrails, nothing changed", 1);
    assert!(
        daemon.log().contains("[policy-loosening]"),
        "{}",
        daemon.log()
    );
    assert_eq!(state(&daemon), before, "a refused reload changed something");
    let all = daemon.xlb_ok(&["history", "--all"]);
    assert_eq!(all.matches("REJECTED").count(), 2, "{all}");

    // Forced with a reason: applied, recorded as forced, with the old and new limits.
    daemon.xlb_ok(&[
        "apply",
        relaxed.to_str().unwrap(),
        "--force",
        "--reason",
        "drill: one server",
    ]);
    let last = last_record(&daemon);
    assert_eq!(last["force"], true);
    assert_eq!(last["reason"], "drill: one server");
    let shift = last["waived"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["rule"] == "policy-loosening" && v["message"].to_string().contains("shift"))
        .unwrap_or_else(|| panic!("no waived policy-loosening in {last}"));
    assert_eq!(
        (shift["limit"].as_f64(), shift["measured"].as_f64()),
        (Some(0.5), Some(1.0))
    );
    assert_eq!(last["config"]["guardrails"]["max_flow_shift"], 1.0);
    // The refusals stand between the generation they were refused on and the forced one.
    let all = daemon.xlb_ok(&["history", "--all"]);
    let at = |what: &str| all.lines().position(|l| l.contains(what)).unwrap();
    let forced = all
        .lines()
        .position(|l| l.trim_start().starts_with("2 "))
        .unwrap();
    assert!(at("REJECTED") < forced, "{all}");
    assert!(at("drill: one server") == forced, "{all}");
    let vip: IpAddr = VIP4.parse().unwrap();
    let count = in_ns(&topo.client().name, move || http_many(vip, 60));
    assert_eq!(count.get("b3"), Some(&60), "{count:?}");
}

#[test]
fn cli_changes_survive_a_reload_and_a_restart() {
    if !require_root("cli_changes_survive_a_reload_and_a_restart") {
        return;
    }
    let (topo, _servers, mut daemon) = running([3, 3, 3]);
    daemon.xlb_ok(&["weight", "set", "web", "b1", "4"]);
    let after_cli = state(&daemon);
    assert_eq!(daemon.weights("web"), [4, 3, 3]);

    // SIGHUP with the unchanged file would undo the weight: refused, listing it.
    daemon.sighup();
    daemon.wait_log("reload refused, nothing changed", 1);
    assert!(
        daemon
            .log()
            .contains("would undo vip web backend b1: running weight 4"),
        "{}",
        daemon.log()
    );
    assert_eq!(state(&daemon), after_cli);
    assert!(
        daemon.xlb_ok(&["history", "--all"]).contains("REFUSED"),
        "the refusal is audited"
    );

    // A restart keeps the running generation: the file was applied before, unchanged.
    daemon.stop_with(libc::SIGTERM);
    daemon.start();
    daemon.wait_log("is unchanged since generation 1 applied it", 1);
    assert_eq!(state(&daemon), after_cli);
    assert_eq!(daemon.weights("web"), [4, 3, 3]);
    let shares = daemon.table_shares("web");
    let vip: IpAddr = VIP4.parse().unwrap();
    let count = in_ns(&topo.client().name, move || http_many(vip, 600));
    let b1 = f64::from(count["b1"]) / 600.0;
    assert!((b1 - shares[0]).abs() < 0.07, "{count:?} vs {shares:?}");

    // `xlb export` brings the file in line: a reload then has nothing to undo or apply.
    let exported = daemon.xlb_ok(&["export"]);
    std::fs::write(daemon.config_path(), &exported).unwrap();
    daemon.sighup();
    daemon.wait_log("is already applied", 1);
    assert_eq!(state(&daemon), after_cli);

    // Applying the original file explicitly is the operator saying so.
    let original = daemon.write_file("original.toml", &specs([3, 3, 3]));
    daemon.xlb_ok(&["apply", original.to_str().unwrap()]);
    assert_eq!(daemon.weights("web"), [3, 3, 3]);
    assert_eq!(daemon.generation(), after_cli.2 + 1);
}

#[test]
fn empty_and_truncated_configs_are_refused_by_apply_and_by_reload() {
    if !require_root("empty_and_truncated_configs_are_refused") {
        return;
    }
    let (_topo, _servers, daemon) = running([1, 1, 1]);
    let before = state(&daemon);
    let full = daemon.render(&specs([1, 1, 1]));
    let second = full.rfind("\n[[vip]]").unwrap();
    let cases = [
        (
            "empty.toml",
            daemon.daemon_section(),
            "[structure] vip *: no VIPs",
        ),
        (
            "none.toml",
            format!("vip = []\n{}", daemon.daemon_section()),
            "[vip-removal] vip web",
        ),
        (
            "truncated.toml",
            full.get(..second).unwrap().to_string(),
            "[vip-removal] vip echo",
        ),
    ];
    for (i, (name, body, want)) in cases.iter().enumerate() {
        let path = daemon.dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        let out = daemon.xlb(&["apply", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{name}: {}", text(&out));
        assert!(text(&out).contains(want), "{name}: {}", text(&out));
        std::fs::write(daemon.config_path(), body).unwrap();
        daemon.sighup();
        daemon.wait_log("rejected by the guardrails, nothing changed", i + 1);
        assert_eq!(state(&daemon), before, "{name} changed something");
    }
    let out = daemon.xlb(&[
        "validate",
        daemon.dir.path().join("empty.toml").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
}

#[test]
fn a_client_cannot_name_its_own_history_source() {
    if !require_root("a_client_cannot_name_its_own_history_source") {
        return;
    }
    let (_topo, _servers, daemon) = running([1, 1, 1]);
    let r = daemon.raw_request(
        r#"{"op":"weight-set","command":"rollback to 1","vip":"web","backend":"b1","weight":2}"#,
    );
    assert_eq!(r["ok"], true, "{r}");
    let last = last_record(&daemon);
    assert_eq!(last["source"]["kind"], "cli");
    assert_eq!(last["source"]["command"], "weight set web b1 2");

    let text = daemon.render(&specs([2, 1, 2]));
    let line = serde_json::json!({
        "op": "apply", "text": text, "file": "/etc/passwd\u{1b}[31m\n",
    });
    let r = daemon.raw_request(&line.to_string());
    assert_eq!(r["ok"], true, "{r}");
    let last = last_record(&daemon);
    assert_eq!(last["source"]["file"], "/etc/passwd?[31m?");
    assert_eq!(daemon.weights("web"), [2, 1, 2]);
}

#[test]
fn a_closed_pipe_ends_the_cli_quietly() {
    if !require_root("a_closed_pipe_ends_the_cli_quietly") {
        return;
    }
    let (_topo, _servers, daemon) = running([3, 3, 3]);
    for w in ["4", "5", "4"] {
        daemon.xlb_ok(&["weight", "set", "web", "b1", w]);
    }
    let xlb = format!(
        "{} --socket {}",
        xlb_bin().display(),
        daemon.socket().display()
    );
    // `true` exits without reading, so the CLI's first write meets a closed pipe.
    for pipeline in [
        format!("{xlb} history | head -1"),
        format!("{xlb} history --json | true"),
        format!("{xlb} status | true"),
    ] {
        let out = Command::new("bash")
            .args(["-c", &format!("{pipeline}; exit ${{PIPESTATUS[0]}}")])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{pipeline}: {}", text(&out));
        assert!(out.stderr.is_empty(), "{pipeline}: {}", text(&out));
    }
}
