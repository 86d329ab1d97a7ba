use std::path::Path;

use proptest::prelude::*;

use super::*;
use crate::config::{self, BackendSpec, MAC_FROM_NEIGHBOUR, Vip};

const SIZE: u32 = 65537;

fn vip(name: &str, weights: &[i64]) -> Vip {
    Vip {
        name: name.into(),
        address: "198.18.0.100".into(),
        port: 80,
        protocol: config::Protocol::Tcp,
        forwarding: config::Forwarding::L2Dsr,
        guardrails: Default::default(),
        health: None,
        backends: weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| BackendSpec {
                name: format!("b{i}"),
                address: format!("198.18.0.{}", 11 + i),
                mac: MAC_FROM_NEIGHBOUR.into(),
                weight,
                line: None,
            })
            .collect(),
        line: None,
    }
}

fn config(vips: Vec<Vip>) -> Config {
    Config {
        vips,
        ..Config::default()
    }
}

fn check(c: &Config, current: Option<&Config>) -> Plan {
    plan(c, current, &Health::new(), &Maglev)
}

fn rules(p: &Plan) -> Vec<(Rule, Option<&str>)> {
    p.violations
        .iter()
        .map(|v| (v.rule, v.backend.as_deref()))
        .collect()
}

#[test]
fn balanced_config_passes_and_plans_its_table() {
    let p = check(&config(vec![vip("web", &[1, 2, 3])]), None);
    assert!(p.violations.is_empty(), "{:#?}", p.violations);
    let v = p.vip("web").unwrap();
    assert_eq!(v.change, Change::Added);
    let t = v.table.as_ref().unwrap();
    assert_eq!(t.slots.len(), SIZE as usize);
    for (row, want) in v.rows.iter().zip([1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0]) {
        assert!((row.share_after - want).abs() < 0.003, "{row:?}");
        assert_eq!(row.weight_share_after, want);
    }
}

// Seed: "all server weights set to zero except one".
#[test]
fn all_zero_but_one_is_rejected_by_min_active_and_max_share() {
    let p = check(&config(vec![vip("web", &[0, 0, 0, 5])]), None);
    assert_eq!(
        rules(&p),
        vec![
            (Rule::MinActiveBackends, None),
            (Rule::MaxBackendShare, Some("b3")),
        ]
    );
    let share = &p.violations[1];
    assert_eq!(share.measured, Some(1.0));
    assert_eq!(share.limit, Some(0.5));
    assert!(share.hint.contains("lower b3's weight"), "{}", share.hint);
    assert!(p.blocking(false, true).len() == 2);
    // Forcing waives both policy rules.
    assert!(p.blocking(true, true).is_empty());
}

#[test]
fn all_zero_is_rejected_by_nonzero_total_and_cannot_be_forced() {
    let p = check(&config(vec![vip("web", &[0, 0, 0])]), None);
    assert_eq!(rules(&p), vec![(Rule::NonzeroTotal, None)]);
    assert!(p.vip("web").unwrap().table.is_none());
    assert_eq!(p.blocking(true, true).len(), 1);
}

// Seed: one backend weighted far above the rest.
#[test]
fn one_heavy_backend_is_rejected_by_max_share() {
    let p = check(&config(vec![vip("web", &[1, 1, 1, 10])]), None);
    assert_eq!(rules(&p), vec![(Rule::MaxBackendShare, Some("b3"))]);
    let v = &p.violations[0];
    assert!((v.measured.unwrap() - 10.0 / 13.0).abs() < 0.003);
    let text = v.to_string();
    assert!(
        text.starts_with("[max-backend-share] vip web, backend b3: owns 7"),
        "{text}"
    );
}

/// Gives every slot to the first backend: the "algorithm flaw" of the postmortems.
struct FirstTakesAll;

impl TableBuilder for FirstTakesAll {
    fn build(&self, backends: &[Weighted<'_>], size: u32) -> Result<Table, TableError> {
        Ok(Table::from_slots(vec![0; size as usize], backends.len()))
    }
}

/// Off by a little: moves 2% of the slots from the last backend to the first.
struct SlightlyOff;

impl TableBuilder for SlightlyOff {
    fn build(&self, backends: &[Weighted<'_>], size: u32) -> Result<Table, TableError> {
        let good = table::build(backends, size)?;
        let last = backends.len() as u32 - 1;
        let mut budget = size / 50;
        let slots = good
            .slots()
            .iter()
            .map(|&s| {
                if s == last && budget > 0 {
                    budget -= 1;
                    0
                } else {
                    s
                }
            })
            .collect();
        Ok(Table::from_slots(slots, backends.len()))
    }
}

#[test]
fn flawed_table_builder_is_caught_by_table_fidelity() {
    let c = config(vec![vip("web", &[1, 1, 1, 1])]);
    let p = plan(&c, None, &Health::new(), &FirstTakesAll);
    let fidelity: Vec<_> = p
        .violations
        .iter()
        .filter(|v| v.rule == Rule::TableFidelity)
        .collect();
    assert_eq!(fidelity.len(), 4, "{:#?}", p.violations);
    assert!(rules(&p).contains(&(Rule::MaxBackendShare, Some("b0"))));
    assert!(
        !p.blocking(true, true).is_empty(),
        "fidelity is not forceable"
    );

    // A flaw too small for max-backend-share is still caught.
    let p = plan(&c, None, &Health::new(), &SlightlyOff);
    assert_eq!(
        rules(&p),
        vec![
            (Rule::TableFidelity, Some("b0")),
            (Rule::TableFidelity, Some("b3"))
        ]
    );
}

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

/// Counts the tables it really builds.
struct Counting(std::cell::Cell<u32>);

impl TableBuilder for Counting {
    fn build(&self, backends: &[Weighted<'_>], size: u32) -> Result<Table, TableError> {
        self.0.set(self.0.get() + 1);
        table::build(backends, size)
    }
}

#[test]
fn running_tables_are_reused_and_only_changed_tables_are_built() {
    let mut api = vip("api", &[1, 1]);
    api.address = "198.18.0.101".into();
    let before = config(vec![vip("web", &[1, 2, 3]), api]);
    let running = check(&before, None);
    let mut after = before.clone();
    after.vips[0].backends[0].weight = 2;
    let counting = Counting(std::cell::Cell::new(0));
    let reuse = Reuse {
        plan: Some(&running),
        builder: &counting,
    };
    let p = plan(&after, Some(&before), &Health::new(), &reuse);
    // web's new table only: web's running table and both of api's come from `running`.
    assert_eq!(counting.0.get(), 1);
    // Exactly what building everything afresh gives.
    assert_eq!(p, check(&after, Some(&before)));
    assert_eq!(p.vip("api").unwrap().change, Change::Unchanged);
}

#[test]
fn flow_shift_is_measured_against_the_running_table() {
    let before = config(vec![vip("web", &[1, 1, 1, 1])]);
    // Re-weighting 1:1:1:1 -> 1:1:3:3 moves a quarter of the flows: half of b0's and b1's.
    let after = config(vec![vip("web", &[1, 1, 3, 3])]);
    let p = check(&after, Some(&before));
    assert!(p.violations.is_empty(), "{:#?}", p.violations);
    let v = p.vip("web").unwrap();
    assert_eq!(v.change, Change::Changed);
    assert!((v.moved - 0.25).abs() < 0.01, "moved {}", v.moved);
    assert!((v.rows[0].moved - 0.5).abs() < 0.02, "{:?}", v.rows);
    assert_eq!(v.rows[2].moved, 0.0);

    // Replacing every backend moves everything.
    let mut other = vip("web", &[1, 1, 1, 1]);
    for b in &mut other.backends {
        b.name = format!("new-{}", b.name);
    }
    let p = check(&config(vec![other]), Some(&before));
    assert_eq!(rules(&p), vec![(Rule::MaxFlowShift, None)]);
    assert_eq!(p.violations[0].measured, Some(1.0));
    assert!(p.blocking(true, true).is_empty());
    assert!(
        p.blocking(false, false).is_empty(),
        "rollback is not blocked"
    );
    let v = p.vip("web").unwrap();
    assert_eq!(v.rows.len(), 8, "four new and four removed rows");
    assert!(
        v.rows[4..]
            .iter()
            .all(|r| r.weight_after.is_none() && r.moved == 1.0)
    );
}

#[test]
fn unchanged_and_removed_vips() {
    let before = config(vec![vip("a", &[1, 1]), vip("b", &[1, 1])]);
    let mut b2 = vip("b2", &[1, 1]);
    b2.port = 81;
    let after = config(vec![vip("a", &[1, 1]), b2]);
    let p = check(&after, Some(&before));
    let changes: Vec<(&str, Change)> = p.vips.iter().map(|v| (v.vip.as_str(), v.change)).collect();
    assert_eq!(
        changes,
        vec![
            ("a", Change::Unchanged),
            ("b2", Change::Added),
            ("b", Change::Removed)
        ]
    );
}

#[test]
fn forced_vip_left_unchanged_does_not_block_other_vips() {
    let mut solo = vip("solo", &[0, 5]);
    solo.address = "198.18.0.101".into();
    let before = config(vec![solo.clone(), vip("web", &[1, 1, 1])]);
    let after = config(vec![solo, vip("web", &[2, 2, 3])]);
    let p = check(&after, Some(&before));
    assert!(p.violations.is_empty(), "{:#?}", p.violations);
    // Offline, with nothing running, the same config is reported in full.
    assert_eq!(check(&after, None).violations.len(), 2);
}

#[test]
fn healthy_quorum_counts_weighted_backends() {
    let mut v = vip("web", &[1, 1, 1, 0]);
    v.health = Some(config::HealthCheck::tcp(8080));
    let c = config(vec![v]);
    let mut health = Health::new();
    for b in ["b0", "b1", "b3"] {
        health.insert(("web".into(), b.into()), false);
    }
    let p = plan(&c, None, &health, &Maglev);
    assert_eq!(rules(&p), vec![(Rule::HealthyQuorum, None)]);
    assert!((p.violations[0].measured.unwrap() - 1.0 / 3.0).abs() < 1e-9);
    assert_eq!(p.vip("web").unwrap().rows[0].healthy, Some(false));
    health.insert(("web".into(), "b1".into()), true);
    assert!(plan(&c, None, &health, &Maglev).violations.is_empty());
}

/// VIP web with TCP checks and `weights`, and health with `down` backends down.
fn checked(weights: &[i64], down: &[&str]) -> (Config, Health) {
    let mut v = vip("web", weights);
    v.health = Some(config::HealthCheck::tcp(8080));
    let health = down
        .iter()
        .map(|b| (("web".to_string(), b.to_string()), false))
        .collect();
    (config(vec![v]), health)
}

fn with_weights(c: &Config, weights: &[i64]) -> Config {
    let mut c = c.clone();
    for (b, &w) in c.vips[0].backends.iter_mut().zip(weights) {
        b.weight = w;
    }
    c
}

#[test]
fn draining_a_down_backend_is_not_blocked_by_max_backend_share() {
    // b2 is down; draining it gives b0 two thirds of the table, over the 50% limit.
    let (running, health) = checked(&[2, 1, 1], &["b2"]);
    let drained = with_weights(&running, &[2, 1, 0]);
    let p = plan(&drained, Some(&running), &health, &Maglev);
    assert!(p.blocking(false, true).is_empty(), "{:#?}", p.violations);
    // The same move away from a healthy backend is still blocked.
    let healthy = plan(&drained, Some(&running), &Health::new(), &Maglev);
    assert_eq!(rules(&healthy), vec![(Rule::MaxBackendShare, Some("b0"))]);
    assert!(
        healthy.violations[0]
            .hint
            .contains("from down backends to up ones")
    );
    // And so is a move that also takes share from a healthy backend.
    let mixed = with_weights(&running, &[2, 0, 0]);
    let p = plan(&mixed, Some(&running), &health, &Maglev);
    assert!(
        rules(&p).contains(&(Rule::MaxBackendShare, Some("b0"))),
        "{:#?}",
        p.violations
    );
}

#[test]
fn healthy_quorum_blocks_only_a_change_that_lowers_the_healthy_fraction() {
    // 1 of 3 weighted backends healthy, below the 50% quorum.
    let (running, health) = checked(&[1, 1, 1], &["b1", "b2"]);
    // Weight moved to the healthy backend: still 1 of 3, not lower: allowed.
    let towards_healthy = with_weights(&running, &[2, 1, 1]);
    let p = plan(&towards_healthy, Some(&running), &health, &Maglev);
    assert!(
        !rules(&p).contains(&(Rule::HealthyQuorum, None)),
        "{:#?}",
        p.violations
    );
    // Draining a down backend raises it to 1 of 2: allowed.
    let p = plan(
        &with_weights(&running, &[1, 1, 0]),
        Some(&running),
        &health,
        &Maglev,
    );
    assert!(
        !rules(&p).contains(&(Rule::HealthyQuorum, None)),
        "{:#?}",
        p.violations
    );
    // Draining the healthy one lowers it to 0 of 2: blocked.
    let p = plan(
        &with_weights(&running, &[0, 1, 1]),
        Some(&running),
        &health,
        &Maglev,
    );
    assert!(
        rules(&p).contains(&(Rule::HealthyQuorum, None)),
        "{:#?}",
        p.violations
    );
}

#[test]
fn more_share_to_a_down_backend_is_refused() {
    let (running, health) = checked(&[1, 1, 1], &["b2"]);
    let p = plan(
        &with_weights(&running, &[2, 2, 3]),
        Some(&running),
        &health,
        &Maglev,
    );
    assert_eq!(rules(&p), vec![(Rule::DownBackend, Some("b2"))]);
    let v = &p.violations[0];
    assert!(v.message.contains("is down"), "{}", v.message);
    assert!(v.rule.forceable());
    assert!(p.blocking(true, true).is_empty());
    // Less share to it (or none) is fine.
    let p = plan(
        &with_weights(&running, &[1, 1, 0]),
        Some(&running),
        &health,
        &Maglev,
    );
    assert!(p.violations.is_empty(), "{:#?}", p.violations);
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
fn draining_one_of_two_down_backends_gives_the_other_nothing() {
    // b2 and b3 are down in each case; `rules_after(running, new)` plans the change.
    let rules_after = |running: &[i64], new: &[i64]| {
        let (running, health) = checked(running, &["b2", "b3"]);
        let p = plan(
            &with_weights(&running, new),
            Some(&running),
            &health,
            &Maglev,
        );
        rules(&p)
            .into_iter()
            .map(|(r, b)| (r, b.map(str::to_string)))
            .collect::<Vec<_>>()
    };
    let b2 = Some("b2".to_string());
    // Draining b3 raises b2's share of the weights (1/4 to 1/3) only because b3's goes:
    // not a down-backend violation.
    assert_eq!(rules_after(&[1, 1, 1, 1], &[1, 1, 1, 0]), []);
    // With weights that put b0 over the limit once b3 goes, the relief still holds.
    assert_eq!(rules_after(&[3, 1, 1, 1], &[3, 1, 1, 0]), []);
    // But the down b2's own share over the limit counts: it gets it when it returns.
    assert_eq!(
        rules_after(&[1, 1, 3, 3], &[1, 1, 3, 0]),
        [(Rule::MaxBackendShare, b2.clone())]
    );
    // Raising b2's weight while draining b3 gives b2 more: refused.
    assert_eq!(
        rules_after(&[1, 1, 1, 1], &[1, 1, 2, 0]),
        [(Rule::DownBackend, b2.clone())]
    );
    // Draining a healthy backend gives the down ones its share: refused.
    let r = rules_after(&[1, 1, 1, 1], &[0, 1, 1, 1]);
    assert!(r.contains(&(Rule::DownBackend, b2)), "{r:?}");
}

#[test]
fn fingerprint_is_stable_and_content_addressed() {
    let p = check(&config(vec![vip("web", &[1, 2, 3])]), None);
    let q = check(&config(vec![vip("web", &[1, 2, 3])]), None);
    let r = check(&config(vec![vip("web", &[1, 2, 4])]), None);
    let f = |p: &Plan| p.vips[0].fingerprint.clone().unwrap();
    assert_eq!(f(&p), f(&q));
    assert_ne!(f(&p), f(&r));
}

#[test]
fn rule_ids_are_stable() {
    let ids: Vec<&str> = Rule::ALL.iter().map(|r| r.id()).collect();
    assert_eq!(
        ids,
        [
            "structure",
            "nonzero-total",
            "min-active-backends",
            "max-backend-share",
            "table-fidelity",
            "max-flow-shift",
            "healthy-quorum",
            "down-backend",
            "policy-loosening",
            "vip-removal"
        ]
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Whatever the validator accepts, the table it would install satisfies every rule,
    /// measured again here from the raw slots.
    #[test]
    fn accepted_configs_install_tables_within_every_rule(
        weights in prop::collection::vec(0i64..50, 1..12),
        old in prop::collection::vec(0i64..50, 1..12),
        min_active in 1u32..4,
        max_share in 0.2f64..1.0,
        max_shift in 0.05f64..1.0,
    ) {
        let mut v = vip("web", &weights);
        v.guardrails.min_active_backends = Some(min_active);
        v.guardrails.max_backend_share = Some(max_share);
        v.guardrails.max_flow_shift = Some(max_shift);
        let mut c = config(vec![v]);
        c.daemon.table_size = 4099;
        let mut before = config(vec![vip("web", &old)]);
        before.daemon.table_size = 4099;
        let p = check(&c, Some(&before));
        if p.violations.is_empty() {
            let t = p.vips[0].table.as_ref().unwrap();
            let total: i64 = weights.iter().sum();
            let mut counts = vec![0usize; weights.len()];
            for &s in &t.slots { counts[s as usize] += 1; }
            prop_assert!(total > 0);
            prop_assert!(weights.iter().filter(|&&w| w > 0).count() >= min_active as usize);
            for (i, &n) in counts.iter().enumerate() {
                let share = n as f64 / 4099.0;
                prop_assert!(share <= max_share + table::SHARE_TOLERANCE);
                prop_assert!((share - weights[i] as f64 / total as f64).abs() <= 0.005 + 1e-12);
                if weights[i] == 0 { prop_assert_eq!(n, 0); }
            }
            let old_t = table::build(
                &before.vips[0].backends.iter().map(|b| Weighted { name: &b.name, weight: b.weight() }).collect::<Vec<_>>(),
                4099,
            );
            if let Ok(old_t) = old_t {
                let moved = (0..4099)
                    .filter(|&i| before.vips[0].backends[old_t.slots()[i] as usize].name
                        != c.vips[0].backends[t.slots[i] as usize].name)
                    .count();
                prop_assert!(moved as f64 / 4099.0 <= max_shift + 1e-12);
            }
        }
    }
}

#[test]
fn example_config_in_the_repo_is_valid() {
    let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/xlb.toml"));
    let c = config::load(path).unwrap();
    let p = check(&c, None);
    assert!(p.violations.is_empty(), "{:#?}", p.violations);
    assert_eq!(c.vips.len(), 2);
}

#[test]
fn a_value_just_over_its_limit_does_not_print_as_the_limit() {
    assert_eq!(pct_beside(0.5004, 0.5), "50.04%");
    assert_eq!(pct_beside(0.62, 0.5), "62.0%");
    assert_eq!(pct_beside(0.500_000_1, 0.5), "50.000%");
}
