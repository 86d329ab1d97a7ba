//! `xlb decap` as an operator runs it: attach, update, stats, detach; refused without a
//! trace where it cannot work (an interface of that name in another network namespace
//! under the same pin directory, an interface that already runs XDP, no such
//! interface). The program's verdicts are in the packet tests (`packets/decap.rs`) and
//! its traffic in `l3_reach`.

#![cfg(test)]

use std::{path::Path, process::Output};

use xlb_lab::{
    PinDir,
    daemon::xlb_bin,
    netns::{Netns, sh},
    require_root,
};

fn xlb_in(ns: &Netns, args: &[&str]) -> Output {
    std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", ns.name))
        .arg(xlb_bin())
        .args(args)
        .output()
        .expect("run xlb")
}

fn said(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A namespace with `eth0` (a veth whose peer stays inside) up at `addr`.
fn host(role: &str, addr: &str) -> Netns {
    let ns = Netns::new(role);
    sh(&format!(
        "ip -n {} link add eth0 type veth peer name p0",
        ns.name
    ));
    sh(&format!("ip -n {} addr add {addr}/24 dev eth0", ns.name));
    sh(&format!("ip -n {} link set eth0 up", ns.name));
    sh(&format!("ip -n {} link set p0 up", ns.name));
    ns
}

fn xdp_on(ns: &Netns) -> bool {
    sh(&format!("ip -n {} link show eth0", ns.name)).contains("xdp")
}

fn pins_in(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("eth0")).map_or(0, |d| d.count())
}

#[test]
fn decap_is_attached_updated_read_and_detached_or_refused_without_a_trace() {
    if !require_root("decap_is_attached_updated_read_and_detached_or_refused_without_a_trace") {
        return;
    }
    let (a, b) = (host("dca", "198.18.3.11"), host("dcb", "198.18.3.12"));
    let pins = PinDir::new("decap");
    let pin_dir = pins.path().to_str().unwrap();
    let attach = |ns: &Netns, from: &str| {
        xlb_in(
            ns,
            &[
                "decap",
                "attach",
                "eth0",
                "--from",
                from,
                "--pin-dir",
                pin_dir,
            ],
        )
    };
    let out = attach(&a, "198.18.200.0/24");
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    assert!(xdp_on(&a));
    let stats = |ns: &Netns| {
        xlb_in(
            ns,
            &["decap", "stats", "eth0", "--json", "--pin-dir", pin_dir],
        )
    };
    let out = stats(&a);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stats JSON");
    assert_eq!(v["sources"], serde_json::json!(["198.18.200.0/24"]));
    assert!(
        v["local_addresses"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "198.18.3.11"),
        "{v}"
    );
    // Attaching again replaces the sources in place.
    let out = attach(&a, "198.18.201.0/24");
    assert!(said(&out).contains("updated"), "{}", said(&out));
    let v: serde_json::Value = serde_json::from_slice(&stats(&a).stdout).unwrap();
    assert_eq!(v["sources"], serde_json::json!(["198.18.201.0/24"]));

    // Another namespace's eth0 under the same pin directory: refused, a's untouched.
    let before = pins_in(pins.path());
    for args in [
        &[
            "decap",
            "attach",
            "eth0",
            "--from",
            "198.18.200.0/24",
            "--pin-dir",
            pin_dir,
        ][..],
        &["decap", "stats", "eth0", "--pin-dir", pin_dir][..],
        &["decap", "detach", "eth0", "--pin-dir", pin_dir][..],
    ] {
        let out = xlb_in(&b, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", said(&out));
        assert!(
            said(&out).contains("in another network namespace"),
            "{args:?}: {}",
            said(&out)
        );
    }
    assert!(!xdp_on(&b));
    assert!(xdp_on(&a), "a's decap must survive b's attempts");
    assert_eq!(pins_in(pins.path()), before);

    // An interface that already runs XDP, and one that does not exist: refused, nothing
    // pinned.
    let other = PinDir::new("decap2");
    let other_dir = other.path().to_str().unwrap();
    let pass = PinDir::new("pass");
    let out = xlb_in(
        &b,
        &[
            "pass",
            "attach",
            "eth0",
            "--pin-dir",
            pass.path().to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    for (iface, says) in [
        ("eth0", "is another XDP program attached there?"),
        ("nosuch", "no interface nosuch in this network namespace"),
    ] {
        let out = xlb_in(
            &b,
            &[
                "decap",
                "attach",
                iface,
                "--from",
                "198.18.200.0/24",
                "--pin-dir",
                other_dir,
            ],
        );
        assert_eq!(out.status.code(), Some(2), "{}", said(&out));
        assert!(said(&out).contains(says), "{}", said(&out));
        assert!(
            !other.path().join(iface).exists(),
            "{iface}: pins left behind"
        );
        let out = xlb_in(&b, &["decap", "stats", iface, "--pin-dir", other_dir]);
        assert_eq!(out.status.code(), Some(2), "{}", said(&out));
    }

    // Detach removes the program and every pin.
    let out = xlb_in(&a, &["decap", "detach", "eth0", "--pin-dir", pin_dir]);
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    assert!(!xdp_on(&a));
    assert!(!pins.path().join("eth0").exists());
}
