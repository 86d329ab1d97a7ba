use std::path::PathBuf;

use super::*;
use crate::config::{self, Protocol};

const FILE: &str = "/etc/xlb/xlb.toml";

fn config(weights: &[i64]) -> Config {
    let mut text = String::from(
        "[[vip]]\nname = \"web\"\naddress = \"198.18.0.100\"\nport = 80\nprotocol = \"tcp\"\n",
    );
    for (i, w) in weights.iter().enumerate() {
        text += &format!(
            "[[vip.backend]]\nname = \"b{i}\"\naddress = \"198.18.0.{}\"\nweight = {w}\n",
            11 + i
        );
    }
    config::parse(&text, Path::new(FILE)).unwrap()
}

fn record(generation: u64, source: Source, config: Config) -> Record {
    Record::fixture(generation, source, config)
}

fn startup() -> Source {
    Source::Startup {
        file: PathBuf::from(FILE),
    }
}

fn cli() -> Source {
    Source::Cli {
        command: "weight set web b0 5".into(),
    }
}

#[test]
fn nothing_running_applies_the_file() {
    assert_eq!(
        check(Trigger::Startup, &config(&[1, 1]), None, None),
        FileCheck::Apply
    );
}

#[test]
fn a_file_unchanged_since_its_apply_keeps_later_cli_changes() {
    let from_file = record(1, startup(), config(&[2, 3]));
    let after_cli = record(2, cli(), config(&[5, 3]));
    assert_eq!(
        check(
            Trigger::Startup,
            &config(&[2, 3]),
            Some(&after_cli),
            Some(&from_file)
        ),
        FileCheck::Unchanged { since: 1 }
    );
}

#[test]
fn a_reload_of_the_unchanged_file_after_a_cli_change_is_refused_with_the_undo() {
    let from_file = record(1, startup(), config(&[2, 3]));
    let after_cli = record(2, cli(), config(&[5, 3]));
    let FileCheck::WouldUndo(undo) = check(
        Trigger::Reload,
        &config(&[2, 3]),
        Some(&after_cli),
        Some(&from_file),
    ) else {
        panic!("not refused");
    };
    assert_eq!(
        undo,
        vec!["vip web backend b0: running weight 5, the file says weight 2"]
    );
    // With nothing changed since, a reload of the same file is a no-op.
    assert_eq!(
        check(
            Trigger::Reload,
            &config(&[2, 3]),
            Some(&from_file),
            Some(&from_file)
        ),
        FileCheck::Unchanged { since: 1 }
    );
}

#[test]
fn a_changed_file_that_would_undo_a_cli_change_is_refused_with_the_list() {
    let from_file = record(1, startup(), config(&[2, 3, 4]));
    let after_cli = record(2, cli(), config(&[5, 3, 4]));
    // The file changes b1 only, but still says b0 = 2, which the CLI set to 5.
    let FileCheck::WouldUndo(undo) = check(
        Trigger::Startup,
        &config(&[2, 6, 4]),
        Some(&after_cli),
        Some(&from_file),
    ) else {
        panic!("not refused");
    };
    assert_eq!(undo.len(), 1, "{undo:?}");
    assert!(
        undo[0].starts_with("vip web backend b0: running weight 5"),
        "{undo:?}"
    );
    assert!(undo[0].contains("the file says weight 2"), "{undo:?}");
}

#[test]
fn a_file_brought_in_line_with_the_cli_change_applies() {
    let from_file = record(1, startup(), config(&[2, 3, 4]));
    let after_cli = record(2, cli(), config(&[5, 3, 4]));
    assert_eq!(
        check(
            Trigger::Startup,
            &config(&[5, 6, 4]),
            Some(&after_cli),
            Some(&from_file)
        ),
        FileCheck::Apply
    );
}

#[test]
fn without_a_generation_from_the_file_every_difference_is_an_undo() {
    let running = record(3, cli(), config(&[5, 3]));
    let FileCheck::WouldUndo(undo) =
        check(Trigger::Startup, &config(&[2, 3]), Some(&running), None)
    else {
        panic!("not refused");
    };
    assert_eq!(undo.len(), 1, "{undo:?}");
    assert_eq!(
        check(Trigger::Startup, &config(&[5, 3]), Some(&running), None),
        FileCheck::Apply
    );
}

#[test]
fn a_vip_key_changed_by_rollback_counts_and_lines_do_not() {
    let from_file = record(1, startup(), config(&[2, 3]));
    let mut moved = config(&[2, 3]);
    moved.vips[0].port = 8080;
    let rolled = record(2, Source::Rollback { to: 0 }, moved.clone());
    let FileCheck::WouldUndo(undo) = check(
        Trigger::Startup,
        &config(&[2, 4]),
        Some(&rolled),
        Some(&from_file),
    ) else {
        panic!("not refused");
    };
    assert!(
        undo[0].starts_with("vip web: running web (198.18.0.100:8080/tcp)"),
        "{undo:?}"
    );
    // The same config from another place in a file is the same state.
    let mut shifted = config(&[2, 3]);
    shifted.vips[0].line = Some(40);
    shifted.vips[0].protocol = Protocol::Tcp;
    assert_eq!(
        check(
            Trigger::Startup,
            &shifted,
            Some(&from_file),
            Some(&from_file)
        ),
        FileCheck::Unchanged { since: 1 }
    );
}

#[test]
fn only_the_daemons_own_file_counts_as_the_file() {
    assert!(from_file(
        &record(1, startup(), Config::default()),
        Path::new(FILE)
    ));
    let other = Source::File {
        file: "/tmp/other.toml".into(),
    };
    assert!(!from_file(
        &record(1, other, Config::default()),
        Path::new(FILE)
    ));
    assert!(!from_file(
        &record(1, cli(), Config::default()),
        Path::new(FILE)
    ));
}

#[test]
fn file_labels_lose_terminal_escapes() {
    assert_eq!(
        file_label(Path::new("/tmp/\u{1b}[31mred\n.toml")),
        PathBuf::from("/tmp/?[31mred?.toml")
    );
}

#[test]
fn an_undone_policy_names_only_the_limits_that_differ() {
    let file = config(&[1, 1]);
    let from_file = record(1, startup(), file.clone());
    let mut loosened = file.clone();
    loosened.guardrails.max_backend_share = 0.95;
    let other = Source::File {
        file: PathBuf::from("/tmp/other.toml"),
    };
    let running = record(2, other, loosened);
    assert_eq!(
        check(Trigger::Reload, &file, Some(&running), Some(&from_file)),
        FileCheck::WouldUndo(vec![
            "[guardrails]: running max_backend_share = 0.95, the file says \
             max_backend_share = 0.5"
                .into()
        ])
    );
}
