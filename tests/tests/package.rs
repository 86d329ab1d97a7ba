//! The Debian package (`cargo xtask package`; `cargo xtask test` builds it and passes its
//! path in `XLB_DEB`) installed, upgraded, removed and purged with dpkg on a clean Debian
//! 12 root: `xlb --version`, the conffile that validates, `man -l` on the generated pages,
//! completions, `systemd-analyze verify` and `security` on the installed unit (the score
//! docs/install.md gives), a local conffile change kept across the upgrade, what remove
//! and purge leave, and what the maintainer scripts ask of systemd at each step (a
//! stand-in `systemctl` records it: systemd does not run in the root).
//!
//! The root is made by mmdebstrap (minbase, plus man-db and systemd) from Debian's
//! repositories once and kept as target/debian12-root.tar (about 35 s to make, 250 MB);
//! each run unpacks a fresh copy and works in it through chroot, in a mount namespace of
//! its own where /proc is mounted. A root from Debian's own packages, not one copied from
//! this host, is what a clean host looks like; keeping it as a tar makes every run after
//! the first independent of the network and takes a few seconds.

#![cfg(test)]

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use xlb_lab::require_root;

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    )
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ok(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what}: exit {:?}\n{}",
        out.status.code(),
        text(&out)
    );
    text(&out)
}

/// The clean Debian 12 root as a tar, made once.
fn root_tar() -> PathBuf {
    let tar = target_dir().join("debian12-root.tar");
    if tar.exists() {
        return tar;
    }
    let partial = target_dir().join(format!("debian12-root.tar.{}", std::process::id()));
    ok(
        "mmdebstrap (needs Debian's repositories once; cargo xtask setup installs it)",
        Command::new("mmdebstrap")
            .args([
                "--mode=root",
                // The partial name does not end in .tar, from which mmdebstrap would
                // otherwise take the format.
                "--format=tar",
                "--variant=minbase",
                "--include=man-db,systemd",
                "bookworm",
            ])
            .arg(&partial)
            .output()
            .unwrap(),
    );
    std::fs::rename(&partial, &tar).unwrap();
    tar
}

/// Runs `cmd` with sh inside `root` (chroot, private mount namespace with /proc).
fn in_root(root: &Path, cmd: &str) -> Output {
    let r = root.display();
    Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--fork", "sh", "-c"])
        .arg(format!(
            "mount -t proc proc {r}/proc && exec chroot {r} /usr/bin/env -i \
             PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 sh -c \"$0\" </dev/null"
        ))
        .arg(cmd)
        .output()
        .unwrap()
}

fn run_ok(root: &Path, cmd: &str) -> String {
    ok(cmd, in_root(root, cmd))
}

/// A copy of `deb` with Debian revision `revision`: the same files as a newer version.
fn next_version(deb: &Path, dir: &Path, revision: u32) -> PathBuf {
    let tree = dir.join("next");
    ok(
        "dpkg-deb -R",
        Command::new("dpkg-deb")
            .arg("-R")
            .arg(deb)
            .arg(&tree)
            .output()
            .unwrap(),
    );
    let control = tree.join("DEBIAN/control");
    let text = std::fs::read_to_string(&control).unwrap();
    let bumped: Vec<String> = text
        .lines()
        .map(|l| match l.strip_prefix("Version: ") {
            Some(v) => format!("Version: {}-{revision}", v.split('-').next().unwrap()),
            None => l.to_string(),
        })
        .collect();
    std::fs::write(&control, bumped.join("\n") + "\n").unwrap();
    let out = dir.join("xlb-next.deb");
    ok(
        "dpkg-deb -b",
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-b"])
            .arg(&tree)
            .arg(&out)
            .output()
            .unwrap(),
    );
    out
}

/// The exposure score docs/install.md states for the unit.
fn documented_score() -> String {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/install.md"))
        .unwrap();
    doc.split_once("exposure level ")
        .expect("docs/install.md gives the `systemd-analyze security` score")
        .1
        .split_whitespace()
        .next()
        .unwrap()
        .trim_matches(|c: char| !c.is_ascii_digit() && c != '.')
        .to_string()
}

#[test]
fn install_upgrade_remove_and_purge_on_a_clean_debian_12() {
    if !require_root("install_upgrade_remove_and_purge_on_a_clean_debian_12") {
        return;
    }
    let Some(deb) = std::env::var_os("XLB_DEB").map(PathBuf::from) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "XLB_DEB is not set: run `cargo xtask test` (it builds the package first)"
        );
        eprintln!("SKIPPED: set XLB_DEB to a package built by `cargo xtask package`");
        return;
    };
    let tar = root_tar();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    ok(
        "unpack the root",
        Command::new("tar")
            .arg("-xf")
            .arg(&tar)
            .arg("-C")
            .arg(&root)
            .output()
            .unwrap(),
    );
    std::fs::copy(&deb, root.join("tmp/xlb.deb")).unwrap();
    let next = next_version(&deb, dir.path(), 999);
    std::fs::copy(&next, root.join("tmp/xlb-next.deb")).unwrap();

    // The maintainer scripts talk to systemd when it runs: a stand-in systemctl records
    // what they ask of it.
    run_ok(
        &root,
        "mkdir -p /run/systemd/system && mv /usr/bin/systemctl /usr/bin/systemctl.real && \
         printf '#!/bin/sh\\necho \"$*\" >> /tmp/systemctl.calls\\n' > /usr/bin/systemctl && \
         chmod 755 /usr/bin/systemctl",
    );
    let calls = |root: &Path| -> String {
        let calls = run_ok(root, "cat /tmp/systemctl.calls; rm /tmp/systemctl.calls");
        calls.lines().collect::<Vec<_>>().join("; ")
    };

    // Install: systemd learns of the unit; the daemon is not started (the interface and
    // VIPs are the host's to fill in first).
    run_ok(&root, "dpkg -i /tmp/xlb.deb");
    assert_eq!(calls(&root), "daemon-reload");
    let version = run_ok(&root, "xlb --version");
    assert_eq!(version.trim(), format!("xlb {}", env!("CARGO_PKG_VERSION")));
    let valid = run_ok(&root, "xlb validate /etc/xlb/xlb.toml");
    assert!(valid.contains("valid"), "{valid}");
    let conffiles = run_ok(&root, "dpkg-query -W -f '${Conffiles}' xlb");
    assert!(conffiles.contains("/etc/xlb/xlb.toml"), "{conffiles}");
    let modes = run_ok(
        &root,
        "stat -c '%a %U:%G %n' /usr/bin/xlb /var/lib/xlb /etc/xlb/xlb.toml \
         /lib/systemd/system/xlb.service",
    );
    for expected in [
        "755 root:root /usr/bin/xlb",
        "700 root:root /var/lib/xlb",
        "644 root:root /etc/xlb/xlb.toml",
        "644 root:root /lib/systemd/system/xlb.service",
    ] {
        assert!(modes.contains(expected), "{expected:?} not in {modes}");
    }
    for verb in [
        "xlb",
        "xlb-run",
        "xlb-validate",
        "xlb-weight-set",
        "xlb-pass-attach",
    ] {
        let page = run_ok(
            &root,
            &format!("MANWIDTH=100 man -l -P cat /usr/share/man/man1/{verb}.1.gz"),
        );
        assert!(
            page.contains(&verb.replace('-', " ")) || page.contains(verb),
            "{page}"
        );
    }
    let apply = run_ok(&root, "man -w xlb-apply");
    assert_eq!(apply.trim(), "/usr/share/man/man1/xlb-apply.1.gz");
    let page = run_ok(&root, "MANWIDTH=100 man -P cat xlb-validate");
    assert!(page.contains("--strict"), "{page}");
    run_ok(
        &root,
        "test -s /usr/share/bash-completion/completions/xlb && \
         test -s /usr/share/zsh/vendor-completions/_xlb && \
         test -s /usr/share/fish/vendor_completions.d/xlb.fish && \
         test -s /usr/share/doc/xlb/README.md && test -s /usr/share/doc/xlb/install.md && \
         test -s /usr/share/doc/xlb/copyright && \
         test -s /usr/share/doc/xlb/examples/grafana/xlb.json",
    );
    let verify = in_root(
        &root,
        "systemd-analyze verify /lib/systemd/system/xlb.service",
    );
    assert!(
        verify.status.success() && text(&verify).trim().is_empty(),
        "systemd-analyze verify: {}",
        text(&verify)
    );
    let security = run_ok(
        &root,
        "systemd-analyze security --offline=yes /lib/systemd/system/xlb.service",
    );
    let score = security
        .lines()
        .find_map(|l| l.split("exposure level for xlb.service: ").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no score in {security}"));
    assert_eq!(
        score,
        documented_score(),
        "docs/install.md gives another score than systemd-analyze security"
    );

    // Upgrade, with a local change to the conffile and a history in the state dir.
    run_ok(
        &root,
        "echo '# local change' >> /etc/xlb/xlb.toml && echo 1 > /var/lib/xlb/history-marker",
    );
    run_ok(&root, "dpkg -i /tmp/xlb-next.deb");
    assert_eq!(calls(&root), "daemon-reload; try-restart xlb.service");
    let status = run_ok(&root, "dpkg-query -W -f '${Version} ${Status}' xlb");
    assert_eq!(
        status.trim(),
        format!("{}-999 install ok installed", env!("CARGO_PKG_VERSION"))
    );
    run_ok(
        &root,
        "grep -qx '# local change' /etc/xlb/xlb.toml && test -f /var/lib/xlb/history-marker \
         && xlb --version",
    );

    // Remove keeps the conffile and the history; purge removes both.
    run_ok(&root, "dpkg -r xlb");
    assert_eq!(calls(&root), "stop xlb.service; daemon-reload");
    run_ok(
        &root,
        "! test -e /usr/bin/xlb && ! test -e /lib/systemd/system/xlb.service && \
         test -f /etc/xlb/xlb.toml && test -f /var/lib/xlb/history-marker",
    );
    let status = run_ok(&root, "dpkg-query -W -f '${Status}' xlb");
    assert_eq!(status.trim(), "deinstall ok config-files");
    // What `systemctl enable xlb` leaves: purge removes it too.
    run_ok(
        &root,
        "mkdir -p /etc/systemd/system/multi-user.target.wants && \
         ln -s /lib/systemd/system/xlb.service /etc/systemd/system/multi-user.target.wants/",
    );
    run_ok(&root, "dpkg -P xlb");
    assert_eq!(calls(&root), "daemon-reload");
    run_ok(
        &root,
        "! test -e /etc/xlb && ! test -e /var/lib/xlb && ! dpkg-query -W xlb 2>/dev/null && \
         ! test -L /etc/systemd/system/multi-user.target.wants/xlb.service",
    );
}
