//! The verbs a config repository's CI runs, on the real `xlb` binary with no daemon, no
//! root and no BPF: `validate` and `diff --against` an exported generation, and the
//! commands `inspect` prints (the lab's `inspect` test runs them). `cargo xtask
//! test` runs this file twice: in the full build, and in one built by stable Rust alone
//! without the XDP program (`--no-default-features`), where `run` and `pass attach` must
//! say that they cannot work.

#![cfg(test)]

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

const XLB: &str = env!("CARGO_BIN_EXE_xlb");

fn example() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/xlb.toml")).unwrap()
}

fn xlb(args: &[&str]) -> Output {
    Command::new(XLB).args(args).output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The example with web's weights replaced.
fn with_web_weights(w: [u32; 3]) -> String {
    example()
        .replacen("weight = 100\n", &format!("weight = {}\n", w[0]), 1)
        .replacen("weight = 100\n", &format!("weight = {}\n", w[1]), 1)
        .replacen("weight = 50\n", &format!("weight = {}\n", w[2]), 1)
}

#[test]
fn validate_answers_with_its_exit_code_and_names_the_place() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "good.toml", &example());
    let out = xlb(&["validate", s(&good)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("valid (3 VIPs, 7 backends)"));

    let skewed = write(dir.path(), "skewed.toml", &with_web_weights([0, 0, 9]));
    let out = xlb(&["validate", s(&skewed)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    for needle in [
        "skewed.toml:",
        "[min-active-backends] vip web",
        "[max-backend-share] vip web, backend web-3",
    ] {
        assert!(said.contains(needle), "{needle:?} missing from: {said}");
    }
    let out = xlb(&["validate", "--json", s(&skewed)]);
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["valid"], false);
    assert!(!json["violations"].as_array().unwrap().is_empty());

    let broken = write(dir.path(), "broken.toml", "[daemon]\n[[vip]\n");
    let out = xlb(&["validate", s(&broken)]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("broken.toml:2:"), "{}", text(&out));
    let out = xlb(&["validate", s(&dir.path().join("missing.toml"))]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("missing.toml: cannot read"));
}

#[test]
fn diff_against_an_exported_generation_offline() {
    let dir = tempfile::tempdir().unwrap();
    let exported = write(dir.path(), "exported.toml", &example());
    let same = write(dir.path(), "same.toml", &example());
    let out = xlb(&["diff", "--exit-code", s(&same), "--against", s(&exported)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("no difference"));

    // web-3 from 50 to 100: a fifth of the table moves to it, within every rule.
    let step = write(dir.path(), "step.toml", &with_web_weights([100, 100, 100]));
    let out = xlb(&["diff", s(&step), "--against", s(&exported)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = xlb(&["diff", "--exit-code", s(&step), "--against", s(&exported)]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("vip web") && said.contains("[changed]"),
        "{said}"
    );
    let row = said
        .lines()
        .find(|l| l.trim_start().starts_with("web-3"))
        .unwrap_or_else(|| panic!("no web-3 row: {said}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        &cols[..5],
        ["web-3", "50", "100", "20.0%", "33.3%"],
        "{row}"
    );

    // The postmortem change: refused offline exactly as the daemon would refuse it.
    let skewed = write(dir.path(), "skewed.toml", &with_web_weights([0, 0, 9]));
    let out = xlb(&["diff", "--json", s(&skewed), "--against", s(&exported)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rules: Vec<&str> = json["plan"]["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["rule"].as_str().unwrap())
        .collect();
    assert!(rules.contains(&"max-flow-shift"), "{rules:?}");
    assert!(rules.contains(&"max-backend-share"), "{rules:?}");

    let out = xlb(&[
        "diff",
        s(&step),
        "--against",
        s(&dir.path().join("gone.toml")),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("gone.toml: cannot read"),
        "{}",
        text(&out)
    );
}

/// examples/ci/check-config.sh on a config repository: a good change passes; a file that
/// validates but moves too much at once from the exported generation fails, as does an
/// unparsable file; every file is reported.
#[test]
fn the_ci_example_checks_a_config_repository() {
    let repo = tempfile::tempdir().unwrap();
    let hosts = repo.path().join("hosts");
    let exported = repo.path().join("exported");
    std::fs::create_dir_all(&hosts).unwrap();
    std::fs::create_dir_all(&exported).unwrap();
    write(&exported, "lb1.toml", &example());
    write(&hosts, "lb1.toml", &with_web_weights([100, 100, 100]));
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/ci/check-config.sh"
    );
    let bin_dir = Path::new(XLB).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let check = || {
        Command::new("sh")
            .arg(script)
            .arg(repo.path())
            .env("PATH", &path)
            .output()
            .unwrap()
    };
    let out = check();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // Valid on its own, but replacing two of web's three backends at once moves 80% of
    // its flows: more than max-flow-shift allows in one step.
    let replaced = example()
        .replace("\"web-1\"", "\"web-4\"")
        .replace("\"web-2\"", "\"web-5\"")
        .replace("198.18.0.11\"", "198.18.0.14\"")
        .replace("198.18.0.12\"", "198.18.0.15\"");
    write(&hosts, "lb1.toml", &replaced);
    let out = xlb(&["validate", s(&hosts.join("lb1.toml"))]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    write(&hosts, "lb2.toml", "[daemon]\ninterface = \n");
    let out = check();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("[max-flow-shift] vip web"), "{said}");
    assert!(said.contains("lb2.toml:2:"), "{said}");
}

#[test]
fn completions_and_man_pages_come_from_the_cli_definition() {
    for (shell, marker) in [
        ("bash", "complete -F _xlb"),
        ("zsh", "#compdef xlb"),
        ("fish", "complete -c xlb"),
    ] {
        let out = xlb(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0));
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(script.contains(marker), "{shell}: no {marker:?}");
        assert!(script.contains("validate") && script.contains("rollback"));
    }
    let dir = tempfile::tempdir().unwrap();
    let out = xlb(&["manpages", s(dir.path())]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for page in ["xlb.1", "xlb-run.1", "xlb-validate.1", "xlb-weight-set.1"] {
        let roff = std::fs::read_to_string(dir.path().join(page)).unwrap();
        assert!(roff.starts_with(".ie \\n(.g .ds Aq"), "{page} is not roff");
    }
    let validate = std::fs::read_to_string(dir.path().join("xlb-validate.1")).unwrap();
    assert!(
        validate.contains("strict"),
        "validate's page lacks --strict"
    );
    assert!(
        !dir.path().join("xlb-manpages.1").exists(),
        "a hidden verb got a page"
    );
}

#[test]
fn a_build_without_the_xdp_program_says_what_it_cannot_do() {
    if cfg!(feature = "bpf") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "xlb.toml", &example());
    let out = xlb(&["run", "--config", s(&config)]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("built without its XDP program"),
        "{}",
        text(&out)
    );
    let out = xlb(&["pass", "attach", "lo", "--pin-dir", s(dir.path())]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("built without its XDP program"),
        "{}",
        text(&out)
    );
}

#[test]
fn the_readme_shows_exactly_the_commands_xlb_inspect_prints() {
    let out = xlb(&["inspect", "--no-check"]);
    assert!(out.status.success(), "{}", text(&out));
    let commands = String::from_utf8(out.stdout).unwrap();
    assert!(
        commands.contains("/sys/fs/bpf/xlb/xlb_be_name"),
        "{commands}"
    );
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    assert!(
        readme.contains(commands.trim()),
        "README.md's \"Maps and inspecting them\" differs from `xlb inspect`:\n{commands}"
    );
    let out = xlb(&[
        "inspect",
        "--no-check",
        "--pin-dir",
        "/sys/fs/bpf/lb1",
        "--backend",
        "web/b2",
    ]);
    let commands = String::from_utf8(out.stdout).unwrap();
    assert!(
        commands.contains("--arg vip 'web' --arg backend 'b2'"),
        "{commands}"
    );
    assert!(!commands.contains("/sys/fs/bpf/xlb/"), "{commands}");

    for (args, says) in [
        (
            &["inspect", "--backend", "web"][..],
            "--backend \"web\": expected VIP/BACKEND",
        ),
        (
            &["inspect", "--pin-dir", "/sys/fs/bpf/a b"][..],
            "would need shell quoting",
        ),
    ] {
        let out = xlb(args);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(text(&out).contains(says), "{args:?}: {}", text(&out));
        assert!(out.stdout.is_empty(), "{args:?} printed commands anyway");
    }
}

#[test]
fn validate_names_what_ipip_lacks_and_where() {
    let dir = tempfile::tempdir().unwrap();
    // The example without its [ipip] sources: its ipip VIP has no outer source.
    let config = example()
        .replace("ipv4_source = \"198.18.200.0/24\"\n", "")
        .replace("ipv6_source = \"2001:db8:200::/120\"\n", "");
    let file = write(dir.path(), "nosource.toml", &config);
    let out = xlb(&["validate", s(&file)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    // The VIP's line is its [[vip]] header's, one above its name (1-based: the index).
    let line = config
        .lines()
        .position(|l| l == "name = \"api\"")
        .expect("the example's ipip VIP");
    let said = text(&out);
    for needle in [
        format!("nosource.toml:{line}: [structure] vip api"),
        "forwarding = \"ipip\" needs ipip.ipv4_source".to_string(),
        "add [ipip]".to_string(),
    ] {
        assert!(said.contains(&needle), "{needle:?} missing from: {said}");
    }
    // A source with host bits set is named with its key and line.
    let config = example().replace("198.18.200.0/24", "198.18.200.1/24");
    let file = write(dir.path(), "hostbits.toml", &config);
    let out = xlb(&["validate", s(&file)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("ipip.ipv4_source: \"198.18.200.1/24\" has host bits set"),
        "{said}"
    );
}
