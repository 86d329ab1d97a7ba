use super::*;
use crate::{
    config::{Config, fixture},
    controller::{BackendStatsView, Panic},
    history::Source,
};

const SERVING: Host = Host {
    attached: true,
    stopping: false,
    drained: false,
};

fn state(vip: &str, address: &str, healthy: u32) -> VipState {
    VipState {
        vip: vip.into(),
        address: address.parse().unwrap(),
        healthy,
        panic: false,
    }
}

fn whys(decisions: &[Decision]) -> Vec<(String, bool, Why)> {
    decisions
        .iter()
        .map(|d| (d.vip.clone(), d.announce, d.why.clone()))
        .collect()
}

#[test]
fn a_healthy_vip_on_a_serving_host_is_announced() {
    let d = decide(SERVING, 1, &[state("web", "198.19.0.100", 3)]);
    assert_eq!(whys(&d), [("web".into(), true, Why::Serving)]);
    assert_eq!(
        routes(&d),
        BTreeSet::from(["198.19.0.100".parse().unwrap()])
    );
}

#[test]
fn the_host_state_withdraws_every_vip_and_says_why() {
    let vips = [
        state("web", "198.19.0.100", 3),
        state("dns", "2001:db8::53", 2),
    ];
    for (host, why) in [
        (
            Host {
                attached: false,
                ..SERVING
            },
            Why::Detached,
        ),
        (
            Host {
                stopping: true,
                ..SERVING
            },
            Why::Stopping,
        ),
        (
            Host {
                drained: true,
                ..SERVING
            },
            Why::Drained,
        ),
        // Stopping wins over drained: a stop withdraws whatever else holds.
        (
            Host {
                stopping: true,
                drained: true,
                ..SERVING
            },
            Why::Stopping,
        ),
    ] {
        let d = decide(host, 1, &vips);
        assert!(d.iter().all(|d| !d.announce && d.why == why), "{d:?}");
        assert!(routes(&d).is_empty());
    }
}

#[test]
fn too_few_healthy_backends_or_panic_withdraw_that_vip_only() {
    let mut panicking = state("api", "198.19.0.102", 3);
    panicking.panic = true;
    let d = decide(
        SERVING,
        2,
        &[
            state("web", "198.19.0.100", 2),
            state("db", "198.19.0.101", 1),
            panicking,
        ],
    );
    assert_eq!(
        whys(&d),
        [
            ("web".into(), true, Why::Serving),
            (
                "db".into(),
                false,
                Why::TooFewHealthy {
                    healthy: 1,
                    required: 2
                }
            ),
            ("api".into(), false, Why::Panic),
        ]
    );
    assert_eq!(
        routes(&d),
        BTreeSet::from(["198.19.0.100".parse().unwrap()])
    );
}

#[test]
fn an_address_goes_only_while_every_vip_on_it_goes() {
    let d = decide(
        SERVING,
        1,
        &[
            state("web", "198.19.0.100", 2),
            state("web-tls", "198.19.0.100", 0),
            state("dns", "198.19.0.53", 2),
        ],
    );
    assert_eq!(
        whys(&d)[0],
        (
            "web".into(),
            false,
            Why::AddressShared {
                with: "web-tls".into()
            }
        )
    );
    assert_eq!(routes(&d), BTreeSet::from(["198.19.0.53".parse().unwrap()]));
}

#[test]
fn the_routes_file_has_both_protocols_and_a_host_route_per_address() {
    let routes = BTreeSet::from([
        "198.19.0.100".parse().unwrap(),
        "2001:db8:19::100".parse().unwrap(),
    ]);
    let text = routes_file(&routes, "t");
    assert!(
        text.contains("protocol static xlb4 {\n  description \"xlb t\";\n  ipv4;\n  route 198.19.0.100/32 blackhole;\n}\n"),
        "{text}"
    );
    assert!(
        text.contains(
            "protocol static xlb6 {\n  description \"xlb t\";\n  ipv6;\n  route 2001:db8:19::100/128 blackhole;\n}\n"
        ),
        "{text}"
    );
    // Nothing announced: the protocols stay, empty, so BIRD's export filters still parse.
    let empty = routes_file(&BTreeSet::new(), "t");
    assert!(
        empty.contains("protocol static xlb4 {\n  description \"xlb t\";\n  ipv4;\n}\n"),
        "{empty}"
    );
    assert!(!empty.contains("  route "), "{empty}");
}

fn backend(name: &str, weight: u32, healthy: Option<bool>, mac: bool) -> BackendStatsView {
    BackendStatsView {
        backend: name.into(),
        id: 1,
        address: "198.18.0.11".into(),
        mac: mac.then(|| "02:00:00:00:00:01".into()),
        mac_source: "neighbour".into(),
        weight,
        effective_weight: weight,
        held: None,
        table_share: 0.5,
        healthy,
        confirmed: healthy.map(|_| true),
        last_probe: None,
        packets: 0,
        bytes: 0,
        new_flows: 0,
    }
}

#[test]
fn healthy_counts_weighted_up_and_reachable_backends() {
    let config = Config {
        vips: vec![fixture::vip("web", &[("b1", 1), ("b2", 1)])],
        ..Config::default()
    };
    let record = Record::fixture(
        3,
        Source::Startup {
            file: "xlb.toml".into(),
        },
        config,
    );
    let view = VipStatsView {
        vip: "web".into(),
        label: "web".into(),
        id: 1,
        generation: 3,
        packets: 0,
        bytes: 0,
        new_flows: 0,
        drops: 0,
        stateful: 0,
        checked: true,
        panic: None,
        backends: vec![
            backend("b1", 1, Some(true), true),
            backend("b2", 1, Some(false), true),
            backend("b3", 0, Some(true), true),
            backend("b4", 1, None, false),
            backend("b5", 1, None, true),
            // Up only as the start assumes: no probe has said so yet.
            BackendStatsView {
                confirmed: Some(false),
                ..backend("b6", 1, Some(true), true)
            },
        ],
    };
    // Checked: only b1 has an "up" verdict from a probe; b6 is up only by assumption.
    let states = vip_states(&record, std::slice::from_ref(&view));
    assert_eq!(states, [state("web", "198.18.0.100", 1)]);
    // Unchecked: every backend with weight and a MAC that no probe found down.
    let unchecked = VipStatsView {
        checked: false,
        ..view.clone()
    };
    assert_eq!(
        vip_states(&record, &[unchecked]),
        [state("web", "198.18.0.100", 3)]
    );
    let panicking = VipStatsView {
        panic: Some(Panic {
            up: 1,
            weighted: 4,
            threshold: 0.5,
        }),
        ..view
    };
    assert!(vip_states(&record, &[panicking])[0].panic);
    // No counters for the VIP (yet): nothing known healthy.
    assert_eq!(vip_states(&record, &[])[0].healthy, 0);
}

#[test]
fn bad_settings_name_their_key() {
    let bad = Announce {
        bird_socket: "bird.ctl".into(),
        routes_file: "/etc/bird/xlb/vips.conf".into(),
        min_healthy_backends: 0,
        drain_time: std::time::Duration::from_secs(600),
    };
    let keys: Vec<&str> = check(&bad).iter().map(|(k, _, _)| *k).collect();
    assert_eq!(
        keys,
        [
            "daemon.announce.min_healthy_backends",
            "daemon.announce.drain_time",
            "daemon.announce.bird_socket"
        ]
    );
    assert!(check(&Announce::default()).is_empty());
}

#[test]
fn only_files_xlb_wrote_or_empty_ones_are_replaced() {
    assert!(may_replace(""));
    assert!(may_replace("\n"));
    assert!(may_replace(&routes_file(&BTreeSet::new(), "t")));
    assert!(!may_replace("router id 1.2.3.4; # operator-owned\n"));
    assert!(!may_replace("protocol static xlb4 {\n  ipv4;\n}\n"));
}
