//! Plans against a running config: policy is guarded, every difference is a change,
//! removing a VIP is guarded.

use std::path::Path;

use crate::{
    config::{self, Config, HealthCheck},
    guard::{Change, Health, Maglev, Plan, Rule, plan, policy},
};

fn file(weights: &[i64], extra: &str) -> Config {
    let mut text = format!(
        "{extra}\n[[vip]]\nname = \"web\"\naddress = \"198.18.0.100\"\nport = 80\nprotocol = \"tcp\"\n"
    );
    for (i, w) in weights.iter().enumerate() {
        text += &format!(
            "[[vip.backend]]\nname = \"b{i}\"\naddress = \"198.18.0.{}\"\nweight = {w}\n",
            11 + i
        );
    }
    config::parse(&text, Path::new("t.toml")).unwrap()
}

fn check(desired: &Config, running: &Config) -> Plan {
    plan(desired, Some(running), &Health::new(), &Maglev)
}

fn rules(p: &Plan) -> Vec<(Rule, &str)> {
    p.violations
        .iter()
        .map(|v| (v.rule, v.vip.as_str()))
        .collect()
}

const RELAXED: &str =
    "[guardrails]\nmin_active_backends = 1\nmax_backend_share = 1.0\nmax_flow_shift = 1.0\n";

// The postmortem change through the front door: relax the rules and concentrate the
// traffic in one file.
#[test]
fn relaxed_policy_and_postmortem_weights_in_one_file_are_refused() {
    let running = file(&[3, 3, 3], "");
    let p = check(&file(&[0, 0, 9], RELAXED), &running);
    let got = rules(&p);
    for want in [
        (Rule::PolicyLoosening, "*"),
        (Rule::MinActiveBackends, "web"),
        (Rule::MaxBackendShare, "web"),
        (Rule::MaxFlowShift, "web"),
    ] {
        assert!(got.contains(&want), "{want:?} missing from {got:?}");
    }
    let loosened: Vec<_> = p
        .violations
        .iter()
        .filter(|v| v.rule == Rule::PolicyLoosening)
        .collect();
    assert_eq!(loosened.len(), 3, "{loosened:#?}");
    // Each names the key's line, the old and the new limit.
    let shift = loosened
        .iter()
        .find(|v| v.message.contains("max_flow_shift"))
        .unwrap();
    assert_eq!(
        (shift.line, shift.limit, shift.measured),
        (Some(4), Some(0.5), Some(1.0))
    );
    assert!(!shift.hint.contains("--force") || shift.hint.starts_with("keep"));
    assert!(p.blocking(false, true).len() >= 6);
    assert!(
        p.blocking(true, true).is_empty(),
        "--force --reason may override"
    );
    // The same file with nothing running is only policy: validate reports it in strict mode.
    let offline = plan(&file(&[3, 3, 3], RELAXED), None, &Health::new(), &Maglev);
    assert!(offline.violations.is_empty());
    assert_eq!(
        policy::looser_than_defaults(&file(&[3, 3, 3], RELAXED)).len(),
        3
    );
}

#[test]
fn a_per_vip_override_that_loosens_is_refused_and_a_new_vips_own_is_not() {
    let running = file(&[3, 3, 3], "");
    let mut desired = file(&[0, 0, 9], "");
    desired.vips[0].guardrails.min_active_backends = Some(1);
    desired.vips[0].guardrails.max_backend_share = Some(1.0);
    let p = check(&desired, &running);
    let got = rules(&p);
    assert!(got.contains(&(Rule::PolicyLoosening, "web")), "{got:?}");
    assert!(got.contains(&(Rule::MinActiveBackends, "web")), "{got:?}");
    assert!(got.contains(&(Rule::MaxBackendShare, "web")), "{got:?}");
    // A new one-backend VIP declaring itself is not a loosening of anything running.
    let mut solo = desired.vips[0].clone();
    solo.name = "solo".into();
    solo.address = "198.18.0.101".into();
    solo.backends.drain(..2);
    let mut add = running.clone();
    add.vips.push(solo);
    assert!(
        check(&add, &running).violations.is_empty(),
        "{:#?}",
        check(&add, &running).violations
    );
    // Removing that override later is a tightening: allowed if the VIP meets it...
    let mut tightened = add.clone();
    tightened.vips[1].guardrails = Default::default();
    let p = check(&tightened, &add);
    assert!(
        rules(&p).contains(&(Rule::MinActiveBackends, "solo")),
        "{:?}",
        rules(&p)
    );
    assert!(!rules(&p).iter().any(|(r, _)| *r == Rule::PolicyLoosening));
}

#[test]
fn a_tightened_limit_applies_to_the_change_that_tightens_it() {
    let running = file(&[3, 3, 3], "");
    let p = check(
        &file(&[3, 3, 1], "[guardrails]\nmax_flow_shift = 0.05\n"),
        &running,
    );
    assert_eq!(rules(&p), vec![(Rule::MaxFlowShift, "web")]);
    assert_eq!(p.violations[0].limit, Some(0.05));
    assert_eq!(p.global, vec!["guardrails.max_flow_shift: 50.0% -> 5.0%"]);
}

#[test]
fn every_difference_is_a_change_even_with_the_same_table() {
    let running = file(&[3, 3], "");
    type Edit = Box<dyn Fn(&mut Config)>;
    let edits: Vec<(&str, Edit)> = vec![
        ("port: 80 -> 8080", Box::new(|c| c.vips[0].port = 8080)),
        (
            "address: 198.18.0.100 -> 198.18.0.200",
            Box::new(|c| c.vips[0].address = "198.18.0.200".into()),
        ),
        (
            "protocol: tcp -> udp",
            Box::new(|c| c.vips[0].protocol = config::Protocol::Udp),
        ),
        (
            "backend b0 address: 198.18.0.11 -> 198.18.0.21",
            Box::new(|c| c.vips[0].backends[0].address = "198.18.0.21".into()),
        ),
        (
            "backend b1 mac: neighbour -> 02:00:00:00:00:12",
            Box::new(|c| c.vips[0].backends[1].mac = "02:00:00:00:00:12".into()),
        ),
        (
            "health: none -> tcp port 8080 every 1000 ms, timeout 500 ms, rise 2, fall 3",
            Box::new(|c| c.vips[0].health = Some(HealthCheck::tcp(8080))),
        ),
        (
            "guardrails.max_flow_shift: 50.0% -> 10.0%",
            Box::new(|c| c.vips[0].guardrails.max_flow_shift = Some(0.1)),
        ),
    ];
    for (want, edit) in edits {
        let mut desired = running.clone();
        edit(&mut desired);
        let p = check(&desired, &running);
        let web = p.vip("web").unwrap();
        assert_eq!(web.change, Change::Changed, "{want}");
        assert_eq!(web.details, vec![want.to_string()], "{want}");
        assert_eq!(web.moved, 0.0, "{want}: the table is the same");
        assert!(!p.is_noop(), "{want}");
    }
    // Weights that scale together build the same table but are still a change.
    let p = check(&file(&[6, 6], ""), &running);
    assert_eq!(p.vip("web").unwrap().change, Change::Changed);
    // Lines alone are not.
    let mut moved = running.clone();
    moved.vips[0].line = Some(99);
    assert!(check(&moved, &running).is_noop());
}

#[test]
fn removing_a_vip_is_guarded() {
    let running = file(&[3, 3], "");
    let mut none = running.clone();
    none.vips.clear();
    none.allow_empty = true;
    let p = check(&none, &running);
    assert_eq!(rules(&p), vec![(Rule::VipRemoval, "web")]);
    assert!(
        p.blocking(false, false).len() == 1,
        "a rollback cannot remove a VIP unforced"
    );
    assert!(p.blocking(true, true).is_empty());
    // Without `vip = []`, an empty file is not even a candidate.
    none.allow_empty = false;
    let p = check(&none, &running);
    assert!(
        p.blocking(true, true)
            .iter()
            .any(|v| v.rule == Rule::Structure)
    );
}
