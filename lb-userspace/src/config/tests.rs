use std::{collections::BTreeMap, path::Path};

use super::*;

const GOOD: &str = r#"
[daemon]
interface = "eth0"
xdp_mode = "generic"

[guardrails]
max_flow_shift = 0.3

[[vip]]
name = "web"
address = "198.18.0.100"
port = 80
protocol = "tcp"

[vip.guardrails]
min_active_backends = 3

[[vip.backend]]
name = "web-1"
address = "198.18.0.11"
mac = "02:00:00:00:00:01"
weight = 10

[[vip.backend]]
name = "web-2"
address = "198.18.0.12"
weight = 20
"#;

fn parse_err(text: &str) -> (usize, String, String) {
    match parse(text, Path::new("xlb.toml")) {
        Err(ConfigError::Parse {
            line, key, message, ..
        }) => (line, key, message),
        other => panic!("expected a parse error, got {other:?}"),
    }
}

#[test]
fn parses_a_full_config_with_lines_and_defaults() {
    let c = parse(GOOD, Path::new("xlb.toml")).unwrap();
    assert_eq!(c.daemon.interface.as_deref(), Some("eth0"));
    assert_eq!(c.daemon.xdp_mode, XdpMode::Generic);
    assert_eq!(c.daemon.socket, Path::new(DEFAULT_SOCKET));
    assert_eq!(c.guardrails.max_flow_shift, 0.3);
    assert_eq!(c.guardrails.max_backend_share, 0.5);
    let vip = &c.vips[0];
    assert_eq!(vip.forwarding, Forwarding::L2Dsr);
    assert_eq!(c.guardrails.with(&vip.guardrails).min_active_backends, 3);
    assert_eq!(vip.line, Some(9));
    assert_eq!(vip.backends[0].line, Some(18));
    assert_eq!(vip.backends[1].line, Some(24));
    assert_eq!(vip.backends[1].mac, MAC_FROM_NEIGHBOUR);
    assert_eq!(vip.backends[1].weight(), 20);
}

#[test]
fn unknown_key_names_file_line_and_key_path() {
    let text = GOOD.replace("weight = 20", "wieght = 20");
    let (line, key, message) = parse_err(&text);
    assert_eq!(line, 27);
    assert_eq!(key, "vip[0].backend[1].wieght");
    assert!(message.contains("unknown field `wieght`"), "{message}");
    let err = parse(&text, Path::new("/etc/xlb/xlb.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("/etc/xlb/xlb.toml:27: vip[0].backend[1].wieght: unknown field"),
        "{err}"
    );
}

#[test]
fn wrong_type_names_line_and_key() {
    let text = GOOD.replace("weight = 10", "weight = \"ten\"");
    let (line, key, message) = parse_err(&text);
    assert_eq!((line, key.as_str()), (22, "vip[0].backend[0].weight"));
    assert!(message.contains("invalid type"), "{message}");

    let text = GOOD.replace("port = 80", "port = 70000");
    let (line, key, _) = parse_err(&text);
    assert_eq!((line, key.as_str()), (12, "vip[0].port"));

    let text = GOOD.replace("protocol = \"tcp\"", "protocol = \"sctp\"");
    let (line, key, message) = parse_err(&text);
    assert_eq!((line, key.as_str()), (13, "vip[0].protocol"));
    assert!(message.contains("sctp"), "{message}");
}

#[test]
fn unknown_section_and_missing_field_are_errors() {
    let (_, key, message) = parse_err(&format!("{GOOD}\n[extra]\na = 1\n"));
    assert_eq!(key, "extra");
    assert!(message.contains("unknown field"), "{message}");

    let text = GOOD.replace("port = 80\n", "");
    let (line, key, message) = parse_err(&text);
    assert_eq!(key, "vip[0]");
    assert_eq!(line, 9);
    assert!(message.contains("missing field `port`"), "{message}");

    let text = GOOD.replace("xdp_mode = \"generic\"", "xdp_mode = \"fast\"");
    let (line, key, _) = parse_err(&text);
    assert_eq!((line, key.as_str()), (4, "daemon.xdp_mode"));
}

#[test]
fn syntax_error_has_a_line() {
    let text = GOOD.replace("port = 80", "port = ");
    let (line, _, _) = parse_err(&text);
    assert_eq!(line, 12);
}

#[test]
fn unreadable_file_is_a_read_error() {
    let err = load(Path::new("/nonexistent/xlb.toml")).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(err.to_string().contains("/nonexistent/xlb.toml"));
}

#[test]
fn model_round_trips_through_json_for_history() {
    let c = parse(GOOD, Path::new("xlb.toml")).unwrap();
    let json = serde_json::to_string(&c).unwrap();
    let mut back: Config = serde_json::from_str(&json).unwrap();
    // Lines describe a file, not the model; they are not stored.
    assert_eq!(back.vips[0].line, None);
    back.vips[0].line = c.vips[0].line;
    for (b, orig) in back.vips[0].backends.iter_mut().zip(&c.vips[0].backends) {
        b.line = orig.line;
    }
    assert_eq!(back.key_lines, BTreeMap::new());
    back.key_lines = c.key_lines.clone();
    assert_eq!(back, c);
}
