//! The daemon's own safety: one daemon per state and pin directory, a teardown that never
//! guesses which load balancer to remove, a restart that cleans up what a crash or a lost
//! history left in the maps, and one that will not drop the flow table unasked.

#![cfg(test)]

use std::{
    net::IpAddr,
    process::{Command, Output},
};

use xlb::dataplane::{Dataplane, LoadOptions, TableWrite};
use xlb_lab::{
    clients::http_many,
    daemon::{Daemon, VipSpec, text, xlb_bin},
    require_root,
    servers::{HTTP_PORT, Servers},
    topology::{Topology, VIP4, in_ns},
};

fn web(weights: &[i64]) -> [VipSpec; 1] {
    [VipSpec::tcp("web", VIP4, HTTP_PORT, weights)]
}

/// A running daemon with VIP web on one backend per weight.
fn web_daemon(weights: &[i64]) -> (Topology, Daemon) {
    let topo = Topology::new(1, weights.len());
    let mut daemon = Daemon::new(&topo);
    daemon.write_config(&web(weights));
    daemon.start();
    (topo, daemon)
}

/// `xlb ARGS` in the LB's network namespace, keeping the host's bpffs (nsenter --net).
fn xlb_in(topo: &Topology, args: &[&str]) -> Output {
    Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", topo.lb.name))
        .arg(xlb_bin())
        .args(args)
        .output()
        .unwrap()
}

fn xdp_attached(topo: &Topology) -> bool {
    topo.lb.sh("ip link show eth0").contains("xdp")
}

#[test]
fn a_second_daemon_on_the_same_state_changes_nothing() {
    if !require_root("a_second_daemon_on_the_same_state_changes_nothing") {
        return;
    }
    let (topo, daemon) = web_daemon(&[1, 1, 1]);
    let _servers = Servers::start(&topo);
    daemon.xlb_ok(&["weight", "set", "web", "b1", "2"]);
    let before = (daemon.routing_snapshot(), daemon.generation());

    let config = daemon.config_path();
    let out = xlb_in(&topo, &["run", "--config", config.to_str().unwrap()]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    let pid = daemon.pid().unwrap();
    assert!(
        text(&out).contains(&format!("locked by another xlb daemon (pid {pid})")),
        "{}",
        text(&out)
    );
    // The same pin directory under another state directory: refused too.
    let other = daemon.dir.path().join("other.toml");
    let other_text = std::fs::read_to_string(&config).unwrap().replace(
        &daemon.state_dir().display().to_string(),
        &daemon.dir.path().join("state2").display().to_string(),
    );
    std::fs::write(&other, other_text).unwrap();
    let out = xlb_in(&topo, &["run", "--config", other.to_str().unwrap()]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("{} is locked", daemon.pin_dir().display())),
        "{}",
        text(&out)
    );
    assert_eq!((daemon.routing_snapshot(), daemon.generation()), before);
    assert_eq!(daemon.weights("web"), [2, 1, 1], "the CLI change stays");
    let vip: IpAddr = VIP4.parse().unwrap();
    let count = in_ns(&topo.client().name, move || http_many(vip, 400));
    assert!(count["b1"] > 140, "b1 has weight 2 of 4: {count:?}");
    assert!(
        daemon.log().matches("startup:").count() == 1,
        "{}",
        daemon.log()
    );
}

#[test]
fn teardown_never_guesses_the_pin_directory_and_reports_what_it_did() {
    if !require_root("teardown_never_guesses_the_pin_directory") {
        return;
    }
    let (topo, mut daemon) = web_daemon(&[1, 1]);
    let wrong = daemon.dir.path().join("wrong.sock");
    let out = xlb_in(&topo, &["--socket", wrong.to_str().unwrap(), "teardown"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("nothing was torn down") && text(&out).contains("--pin-dir"),
        "{}",
        text(&out)
    );
    assert!(xdp_attached(&topo), "XDP was detached");
    assert!(daemon.pin_dir().join("link").exists());
    assert!(daemon.generation() >= 1, "the daemon answers");
    // Naming the pin directory of a daemon that is running: refused too, since that
    // daemon would go on answering for a data plane that is gone.
    let pins = daemon.pin_dir().to_str().unwrap().to_string();
    let out = xlb_in(
        &topo,
        &[
            "--socket",
            wrong.to_str().unwrap(),
            "teardown",
            "--pin-dir",
            &pins,
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("is locked by another xlb daemon")
            && text(&out).contains("nothing was torn down"),
        "{}",
        text(&out)
    );
    assert!(xdp_attached(&topo), "XDP was detached");
    assert!(daemon.pin_dir().join("link").exists());

    // Without a daemon, naming the directory: it says what it detached and removed,
    // and leaves a directory that holds something not xlb's (another program's pins)...
    daemon.stop_with(libc::SIGTERM);
    let other = daemon.pin_dir().join("other");
    std::fs::create_dir(&other).unwrap();
    let args = [
        "--socket",
        wrong.to_str().unwrap(),
        "teardown",
        "--pin-dir",
        &pins,
    ];
    let out = xlb_in(&topo, &args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("XDP detached: link"), "{}", text(&out));
    assert!(text(&out).contains("itself stays"), "{}", text(&out));
    assert!(!xdp_attached(&topo));
    let left: Vec<_> = std::fs::read_dir(daemon.pin_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["other"]);
    std::fs::remove_dir(&other).unwrap();
    // ...and, the second time, that it detached nothing and removed the empty directory.
    let out = xlb_in(&topo, &args);
    assert!(
        text(&out).contains("nothing was detached"),
        "{}",
        text(&out)
    );
    assert!(!daemon.pin_dir().exists());
    // A third time finds nothing at all.
    let out = xlb_in(&topo, &args);
    assert!(
        text(&out).contains("nothing was detached") && text(&out).contains("nothing was pinned"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_restart_removes_leftover_tables_and_a_lost_history_leaves_no_live_orphans() {
    if !require_root("a_restart_removes_leftover_tables") {
        return;
    }
    let (topo, mut daemon) = web_daemon(&[1, 1, 1]);
    let _servers = Servers::start(&topo);
    let vip: IpAddr = VIP4.parse().unwrap();
    in_ns(&topo.client().name, move || http_many(vip, 30));
    daemon.stop_with(libc::SIGTERM);
    let old_ids: Vec<u64> = daemon.live_backends().iter().map(|b| b.0).collect();
    assert_eq!(old_ids, [1, 2, 3]);

    // An apply that died after switching in a new VIP's table, before its key and commit.
    let opts = LoadOptions {
        pin_dir: daemon.pin_dir().to_path_buf(),
        ..LoadOptions::default()
    };
    let mut dp = Dataplane::load(&opts).unwrap();
    dp.maps()
        .install_table(TableWrite {
            vip_id: 9,
            generation: 99,
            slots: &[1; 7],
        })
        .unwrap();
    drop(dp);
    // And the history is lost.
    std::fs::remove_dir_all(daemon.state_dir().join("history")).unwrap();

    daemon.start();
    let mut dp = Dataplane::load(&opts).unwrap();
    assert_eq!(
        dp.maps().table_size(9).unwrap(),
        0,
        "the leftover table stays"
    );
    let live: Vec<u64> = daemon.live_backends().iter().map(|b| b.0).collect();
    assert_eq!(live.len(), 3, "{live:?}");
    assert!(
        live.iter().all(|id| !old_ids.contains(id)),
        "orphans of the lost history are live: {live:?}"
    );
    let count = in_ns(&topo.client().name, move || http_many(vip, 90));
    assert_eq!(count.values().sum::<u32>(), 90);
}

#[test]
fn a_restart_that_would_recreate_the_flow_table_is_refused_unless_asked() {
    if !require_root("a_restart_that_would_recreate_the_flow_table") {
        return;
    }
    let (topo, mut daemon) = web_daemon(&[1, 1]);
    daemon.stop_with(libc::SIGTERM);
    let flows = daemon.pin_dir().join(lb_common::maps::FLOWS);
    let capacity = || -> serde_json::Value {
        serde_json::from_str(&xlb_lab::netns::sh(&format!(
            "bpftool -j map show pinned {}",
            flows.display()
        )))
        .unwrap()
    };
    let before = capacity();
    assert_eq!(before["max_entries"], 1 << 20);

    let smaller = std::fs::read_to_string(daemon.config_path())
        .unwrap()
        .replacen("[daemon]\n", "[daemon]\nflow_capacity = 4096\n", 1);
    std::fs::write(daemon.config_path(), smaller).unwrap();
    let config = daemon.config_path();
    let out = xlb_in(&topo, &["run", "--config", config.to_str().unwrap()]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains(
            "the pinned flow table holds 1048576 entries but daemon.flow_capacity is 4096"
        ),
        "{}",
        text(&out)
    );
    assert_eq!(
        capacity()["id"],
        before["id"],
        "the flow table was replaced"
    );
    assert!(xdp_attached(&topo));

    daemon.run_args = vec!["--recreate-flow-table".into()];
    daemon.start();
    assert_eq!(capacity()["max_entries"], 4096);
    assert_ne!(capacity()["id"], before["id"]);
}
