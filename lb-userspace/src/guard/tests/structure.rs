//! The `structure` rule: every error names its VIP, backend and line, what would fail at
//! run time fails validation first, and health check settings a probe cannot act on are
//! refused.

use std::path::Path;

use super::*;

#[test]
fn one_backend_vip_must_say_so() {
    let mut v = vip("solo", &[1]);
    v.guardrails.max_backend_share = Some(1.0);
    let p = check(&config(vec![v.clone()]), None);
    assert_eq!(rules(&p), vec![(Rule::MinActiveBackends, None)]);
    // The first fix offered is more servers, not a looser rule.
    let hint = &p.violations[0].hint;
    assert!(
        hint.starts_with("give at least 2 backends a weight"),
        "{hint}"
    );
    assert!(hint.contains("[vip.guardrails]"), "{hint}");
    v.guardrails.min_active_backends = Some(1);
    assert!(check(&config(vec![v]), None).violations.is_empty());
}

#[test]
fn structure_errors_name_vip_backend_and_line() {
    let text = r#"
[[vip]]
name = "web"
address = "198.18.0.100"
port = 80
protocol = "tcp"

[[vip.backend]]
name = "a"
address = "2001:db8::1"
weight = 1

[[vip.backend]]
name = "a"
address = "198.18.0.12"
mac = "ff:ff:ff:ff:ff:ff"
weight = 2000000

[[vip]]
name = "web"
address = "198.18.0.300"
port = 0
protocol = "udp"
"#;
    let c = config::parse(text, Path::new("t.toml")).unwrap();
    let p = check(&c, None);
    let got: Vec<(Option<&str>, Option<usize>, &str)> = p
        .violations
        .iter()
        .map(|v| {
            assert_eq!(v.rule, Rule::Structure);
            (v.backend.as_deref(), v.line, v.message.as_str())
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                Some("a"),
                Some(8),
                "address 2001:db8::1 is not of the VIP's family (IPv4)"
            ),
            (
                Some("a"),
                Some(13),
                "backend name \"a\" is used twice in this VIP"
            ),
            (
                Some("a"),
                Some(13),
                "mac \"ff:ff:ff:ff:ff:ff\" is not a unicast MAC like 02:00:00:00:00:01"
            ),
            (Some("a"), Some(13), "weight 2000000 is outside 0..=1000000"),
            (None, Some(19), "VIP name \"web\" is used twice"),
            (
                None,
                Some(19),
                "VIP address \"198.18.0.300\" is not an IPv4 or IPv6 address"
            ),
            (None, Some(19), "port 0"),
            (None, Some(19), "no backends"),
        ]
    );
    assert!(p.vips.iter().all(|v| v.table.is_none()));
}

#[test]
fn duplicate_service_and_bad_policy_and_table_size_are_structure() {
    let mut a = vip("a", &[1, 1]);
    a.guardrails.max_backend_share = Some(1.5);
    let b = vip("b", &[1, 1]);
    let mut c = config(vec![a, b]);
    c.daemon.table_size = 65536;
    let p = check(&c, None);
    let msgs: Vec<&str> = p.violations.iter().map(|v| v.message.as_str()).collect();
    assert_eq!(p.violations.len(), 3, "{msgs:#?}");
    assert!(msgs[0].starts_with("daemon.table_size: table size 65536 is not a prime"));
    assert_eq!(
        msgs[1],
        "guardrails.max_backend_share = 1.5 is not a fraction"
    );
    assert_eq!(msgs[2], "198.18.0.100:80/tcp is also another VIP's");
}

#[test]
fn what_would_fail_at_run_time_fails_validation_first() {
    let text = r#"
[daemon]
interface = "eth0"
flow_capacity = 0

[[vip]]
name = "web"
address = "127.0.0.1"
port = 80
protocol = "tcp"

[vip.health]
port = 80
timeout_ms = 0

[[vip]]
name = "api"
address = "198.18.0.101"
port = 80
protocol = "tcp"

[[vip.backend]]
name = "self"
address = "198.18.0.101"
weight = 1

[[vip.backend]]
name = "bcast"
address = "255.255.255.255"
weight = 1

[[vip.backend]]
name = "any"
address = "0.0.0.0"
weight = 1
"#;
    let c = config::parse(text, Path::new("t.toml")).unwrap();
    let p = check(&c, None);
    let got: Vec<(&str, Option<&str>, Option<usize>)> = p
        .violations
        .iter()
        .map(|v| (v.vip.as_str(), v.backend.as_deref(), v.line))
        .collect();
    assert_eq!(
        got,
        vec![
            // A global key's violation names the key's own line.
            ("*", None, Some(4)),
            ("web", None, Some(6)),
            ("web", None, Some(6)),
            ("web", None, Some(6)),
            ("api", Some("self"), Some(22)),
            ("api", Some("bcast"), Some(27)),
            ("api", Some("any"), Some(32)),
        ],
        "{:#?}",
        p.violations
    );
    assert!(
        p.violations[0]
            .message
            .starts_with("daemon.flow_capacity = 0")
    );
    assert!(
        p.violations[1]
            .message
            .contains("127.0.0.1 is not a routable unicast")
    );
    assert!(p.violations[2].message.contains("timeout_ms = 0"));
    assert_eq!(
        p.violations[4].message,
        "address 198.18.0.101 is the VIP's own address"
    );
}

#[test]
fn an_empty_config_is_refused_unless_it_says_so() {
    let empty = config::parse("[daemon]\ninterface = \"eth0\"\n", Path::new("t.toml")).unwrap();
    let p = check(&empty, None);
    assert_eq!(rules(&p), vec![(Rule::Structure, None)]);
    assert!(
        p.violations[0].message.starts_with("no VIPs"),
        "{:?}",
        p.violations
    );
    assert_eq!(p.violations[0].line, None);
    let meant = config::parse("vip = []\n", Path::new("t.toml")).unwrap();
    assert!(meant.allow_empty);
    assert!(check(&meant, None).violations.is_empty());
}

/// The `structure` violations of VIP web with `[vip.health]` set to `health`, as
/// (message, hint).
fn health_violations(health: &str) -> Vec<(String, String)> {
    let text = format!(
        "[[vip]]\nname = \"web\"\naddress = \"198.18.0.100\"\nport = 80\nprotocol = \"udp\"\n\n\
         [vip.guardrails]\nmin_active_backends = 1\nmax_backend_share = 1.0\n\n\
         [vip.health]\n{health}\n\n\
         [[vip.backend]]\nname = \"b1\"\naddress = \"198.18.0.11\"\nweight = 1\n"
    );
    let c = config::parse(&text, Path::new("t.toml")).unwrap();
    check(&c, None)
        .violations
        .into_iter()
        .map(|v| {
            assert_eq!((v.rule, v.line), (Rule::Structure, Some(1)), "{v:?}");
            (v.message, v.hint)
        })
        .collect()
}

#[test]
fn health_checks_of_every_kind_pass_on_any_protocol() {
    for health in [
        "port = 80",
        "kind = \"http\"\nport = 80",
        "kind = \"http\"\nport = 80\npath = \"/healthz?full=1\"\nstatus = \"204\"",
        "kind = \"http\"\nport = 80\nstatus = \"100-599\"\nrise = 1\nfall = 1",
        "kind = \"udp\"\nport = 53\nsend = \"ping\"",
        "kind = \"udp\"\nport = 53\nsend = \"ping\"\nexpect = \"pong\"\nslow_start_s = 3600",
    ] {
        assert_eq!(health_violations(health), [], "{health}");
    }
}

#[test]
fn health_check_settings_a_probe_cannot_act_on_are_structure() {
    let cases = [
        (
            "port = 80\nrise = 0",
            "health rise = 0, fall = 3: both must be at least 1",
        ),
        (
            "port = 80\nfall = 0",
            "health rise = 2, fall = 0: both must be at least 1",
        ),
        (
            "port = 80\nslow_start_s = 0",
            "health slow_start_s = 0 is outside 1..=3600",
        ),
        (
            "port = 80\nslow_start_s = 3601",
            "health slow_start_s = 3601 is outside 1..=3600",
        ),
        (
            "kind = \"http\"\nport = 80\npath = \"healthz\"",
            "health path \"healthz\" is not a request path",
        ),
        (
            "kind = \"http\"\nport = 80\npath = \"/a b\"",
            "health path \"/a b\" is not a request path",
        ),
        (
            "kind = \"http\"\nport = 80\npath = \"/a\\r\\nX: y\"",
            "health path \"/a\\r\\nX: y\" is not a request path",
        ),
        (
            "kind = \"http\"\nport = 80\nstatus = \"2xx\"",
            "health status \"2xx\" is not a code or a range of codes in 100-599",
        ),
        (
            "kind = \"http\"\nport = 80\nstatus = \"399-200\"",
            "health status \"399-200\" is not a code or a range of codes in 100-599",
        ),
        (
            "kind = \"http\"\nport = 80\nstatus = \"200-600\"",
            "health status \"200-600\" is not a code or a range of codes in 100-599",
        ),
        (
            "kind = \"http\"\nport = 80\nstatus = \"99\"",
            "health status \"99\" is not a code or a range of codes in 100-599",
        ),
        (
            "kind = \"http\"\nport = 80\nsend = \"ping\"",
            "health send is for udp checks, and this one is http",
        ),
        (
            "kind = \"udp\"\nport = 53\nsend = \"ping\"\npath = \"/\"",
            "health path is for http checks, and this one is udp",
        ),
        (
            "kind = \"udp\"\nport = 53\nsend = \"ping\"\nstatus = \"200\"",
            "health status is for http checks, and this one is udp",
        ),
        (
            "port = 80\nexpect = \"pong\"",
            "health expect is for udp checks, and this one is tcp",
        ),
        (
            "kind = \"udp\"\nport = 53",
            "health kind = \"udp\" has no send: a probe needs a datagram to send",
        ),
        (
            "kind = \"udp\"\nport = 53\nsend = \"\"",
            "health kind = \"udp\" has no send: a probe needs a datagram to send",
        ),
    ];
    for (health, want) in cases {
        let got = health_violations(health);
        assert_eq!(
            got.iter().map(|(m, _)| m.as_str()).collect::<Vec<_>>(),
            [want],
            "{health}"
        );
        assert!(!got[0].1.is_empty(), "{health}: no hint");
    }
}

#[test]
fn example_config_in_the_repo_is_valid() {
    let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/xlb.toml"));
    let c = config::load(path).unwrap();
    let p = check(&c, None);
    assert!(p.violations.is_empty(), "{:#?}", p.violations);
    assert_eq!(c.vips.len(), 3);
    assert_eq!(c.vips[2].forwarding, config::Forwarding::Ipip);
}

#[test]
fn the_example_announce_settings_are_the_defaults_and_valid() {
    let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/xlb.toml"));
    let text = std::fs::read_to_string(path).unwrap();
    // The commented block, from its table header to the next blank line, uncommented.
    let mut inside = false;
    let uncommented: String = text
        .lines()
        .map(|l| {
            inside = (inside || l == "# [daemon.announce]") && !l.is_empty();
            let line = if inside {
                l.strip_prefix("# ").unwrap_or(l)
            } else {
                l
            };
            format!("{line}\n")
        })
        .collect();
    assert!(
        uncommented.contains("\n[daemon.announce]\n"),
        "{uncommented}"
    );
    let c = config::parse(&uncommented, path).unwrap();
    assert_eq!(c.daemon.announce, Some(config::Announce::default()));
    let p = check(&c, None);
    assert!(p.violations.is_empty(), "{:#?}", p.violations);
}

#[test]
fn bad_announce_settings_name_their_key_and_line() {
    let text = r#"
[daemon]
interface = "eth0"

[daemon.announce]
bird_socket = "bird.ctl"
min_healthy_backends = 0
drain_time = "10m"

[[vip]]
name = "web"
address = "198.18.0.100"
port = 80
protocol = "tcp"

[[vip.backend]]
name = "a"
address = "198.18.0.11"
weight = 1

[[vip.backend]]
name = "b"
address = "198.18.0.12"
weight = 1
"#;
    let c = config::parse(text, Path::new("t.toml")).unwrap();
    let p = check(&c, None);
    let got: Vec<(Option<usize>, &str)> = p
        .violations
        .iter()
        .map(|v| (v.line, v.message.split(':').next().unwrap_or_default()))
        .collect();
    assert_eq!(
        got,
        [
            (Some(7), "daemon.announce.min_healthy_backends = 0"),
            (Some(8), "daemon.announce.drain_time = 10m"),
            (
                Some(6),
                "daemon.announce.bird_socket = \"bird.ctl\" is not an absolute path"
            ),
        ],
        "{:#?}",
        p.violations
    );
    // More healthy backends asked for than a VIP has: it would never be announced.
    let c = config::parse(
        &text
            .replace("min_healthy_backends = 0", "min_healthy_backends = 3")
            .replace("drain_time = \"10m\"", "")
            .replace("\"bird.ctl\"", "\"/run/bird/bird.ctl\""),
        Path::new("t.toml"),
    )
    .unwrap();
    let p = check(&c, None);
    let got: Vec<(Option<usize>, &str)> = p
        .violations
        .iter()
        .map(|v| (v.line, v.message.as_str()))
        .collect();
    assert_eq!(
        got,
        [(
            Some(7),
            "VIP web has 2 backend(s) with weight above 0 and \
             daemon.announce.min_healthy_backends is 3: it would never be announced"
        )],
        "{:#?}",
        p.violations
    );
    let unknown = config::parse(
        "[daemon.announce]\nbird_sock = \"/run/bird/bird.ctl\"\n",
        Path::new("t.toml"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        unknown.starts_with("t.toml:2: daemon.announce"),
        "{unknown}"
    );
}

#[test]
fn flow_state_settings_that_cannot_work_fail_validation() {
    let text = r#"
[daemon]
interface = "eth0"
flow_idle_timeout = 10
udp_grace = 20
flow_insert_rate = 0

[[vip]]
name = "web"
address = "198.18.0.100"
port = 80
protocol = "tcp"

[[vip.backend]]
name = "b1"
address = "198.18.0.11"
weight = 1
"#;
    let c = config::parse(text, Path::new("t.toml")).unwrap();
    let p = check(&c, None);
    let got: Vec<(&str, Option<usize>)> = p
        .violations
        .iter()
        .filter(|v| v.message.starts_with("daemon."))
        .map(|v| (v.message.split(' ').next().unwrap_or(""), v.line))
        .collect();
    assert_eq!(
        got,
        vec![
            ("daemon.udp_grace", Some(5)),
            ("daemon.flow_insert_rate", Some(6))
        ],
        "{:#?}",
        p.violations
    );
    let mut ok = c;
    ok.daemon.udp_grace = 10;
    ok.daemon.flow_insert_rate = 1;
    let daemon_violations = |c: &Config| -> Vec<String> {
        check(c, None)
            .violations
            .into_iter()
            .map(|v| v.message)
            .filter(|m| m.starts_with("daemon."))
            .collect()
    };
    assert_eq!(daemon_violations(&ok), Vec::<String>::new());
    ok.daemon.flow_idle_timeout = 0;
    ok.daemon.udp_grace = 0;
    let v = daemon_violations(&ok);
    assert!(v[0].starts_with("daemon.flow_idle_timeout = 0"), "{v:?}");
}
