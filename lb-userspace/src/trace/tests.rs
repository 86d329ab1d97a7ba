use std::path::Path;

use super::*;
use crate::{
    config,
    history::{Ids, Source},
};

/// Generation 7: VIP web at 198.18.0.100:80/tcp (b0 id 1, b1 id 2), VIP dns at
/// [2001:db8::53]:53/udp (b0 id 3).
fn names() -> Names {
    let text = "\
[[vip]]\nname = \"web\"\naddress = \"198.18.0.100\"\nport = 80\nprotocol = \"tcp\"
[[vip.backend]]\nname = \"b0\"\naddress = \"198.18.0.11\"\nweight = 1
[[vip.backend]]\nname = \"b1\"\naddress = \"198.18.0.12\"\nweight = 1
[[vip]]\nname = \"dns\"\naddress = \"2001:db8::53\"\nport = 53\nprotocol = \"udp\"
[[vip.backend]]\nname = \"b0\"\naddress = \"2001:db8::11\"\nweight = 1
";
    let config = config::parse(text, Path::new("/etc/xlb/xlb.toml")).unwrap();
    let ids = Ids {
        vips: [("web".into(), 1), ("dns".into(), 2)].into(),
        backends: [
            ("web/b0".into(), 1),
            ("web/b1".into(), 2),
            ("dns/b0".into(), 3),
        ]
        .into(),
    };
    let source = Source::Cli {
        command: "apply".into(),
    };
    Names::of(&Generation {
        ids,
        ..Generation::fixture(7, source, config)
    })
}

fn web_record(reason: Reason, backend_id: u32) -> Record {
    Record {
        proto: lb_common::PROTO_TCP,
        src: "198.18.1.2".parse().unwrap(),
        sport: 40000,
        dst: "198.18.0.100".parse().unwrap(),
        dport: 80,
        reason,
        backend_id,
        new_flow: true,
    }
}

fn no_reasons() -> Vec<String> {
    Vec::new()
}

#[test]
fn reads_what_the_program_logs() {
    // `{:i}` of the key's 16 address bytes: an IPv4 address is in the first four.
    let r = Record::parse("4 6 c612:102:: 40000 c612:64:: 80 0 2 1").unwrap();
    assert_eq!(
        r,
        Record {
            backend_id: 2,
            ..web_record(Reason::Forwarded, 2)
        }
    );
    let r = Record::parse("6 17 2001:db8:1::2 5353 2001:db8::53 53 9 0 0").unwrap();
    assert_eq!(r.src, "2001:db8:1::2".parse::<IpAddr>().unwrap());
    assert_eq!(
        (r.reason, r.backend_id, r.new_flow),
        (Reason::DropNoBackend, 0, false)
    );
}

#[test]
fn a_record_it_cannot_read_says_why() {
    for (message, why) in [
        ("4 6 c612:102:: 40000", "4 fields, expected 9"),
        (
            "4 6 c612:102:: 40000 c612:64:: 80 99 2 1",
            "reason 99 out of range",
        ),
        (
            "4 6 nonsense 40000 c612:64:: 80 0 2 1",
            "source \"nonsense\"",
        ),
        ("4 6 c612:102:: 70000 c612:64:: 80 0 2 1", "out of range"),
    ] {
        let e = Record::parse(message).unwrap_err();
        assert!(e.contains(why), "{message}: {e}");
    }
}

#[test]
fn a_vip_filter_matches_its_port_and_protocol_or_a_portless_packet() {
    let n = names();
    let f = n.filter(Some("web"), None, &no_reasons(), None).unwrap();
    assert!(f.matches(&web_record(Reason::Forwarded, 1)));
    let other_port = Record {
        dport: 443,
        ..web_record(Reason::Forwarded, 1)
    };
    assert!(!f.matches(&other_port));
    let udp = Record {
        proto: lb_common::PROTO_UDP,
        ..web_record(Reason::Forwarded, 1)
    };
    assert!(!f.matches(&udp));
    let fragment = Record {
        dport: 0,
        sport: 0,
        ..web_record(Reason::DropFragment, 0)
    };
    assert!(f.matches(&fragment));
    let elsewhere = Record {
        dst: "198.18.0.101".parse().unwrap(),
        ..web_record(Reason::Forwarded, 1)
    };
    assert!(!f.matches(&elsewhere));
}

#[test]
fn backend_and_reason_filters() {
    let n = names();
    let f = n
        .filter(Some("web"), Some("b1"), &["forwarded".into()], None)
        .unwrap();
    assert_eq!(f.backend_id, Some(2));
    assert!(f.matches(&web_record(Reason::Forwarded, 2)));
    assert!(!f.matches(&web_record(Reason::Forwarded, 1)));
    let f = n
        .filter(None, None, &["drop_no_backend".into()], None)
        .unwrap();
    assert!(f.matches(&web_record(Reason::DropNoBackend, 0)));
    assert!(!f.matches(&web_record(Reason::Forwarded, 1)));
}

#[test]
fn by_default_the_hosts_own_traffic_is_not_traced() {
    let f = names().filter(None, None, &no_reasons(), None).unwrap();
    for r in Reason::ALL {
        let host = matches!(
            r,
            Reason::PassNotIp | Reason::PassNotVip | Reason::PassTruncated
        );
        assert_eq!(f.matches(&web_record(r, 0)), !host, "{r:?}");
    }
}

#[test]
fn requests_that_name_nothing_running_are_refused_with_what_is() {
    let n = names();
    let e = n
        .filter(Some("api"), None, &no_reasons(), None)
        .unwrap_err();
    assert_eq!(e, "no VIP named \"api\": running are web, dns");
    let e = n.filter(None, Some("b0"), &no_reasons(), None).unwrap_err();
    assert!(e.contains("several VIPs (web/b0, dns/b0)"), "{e}");
    assert_eq!(
        n.filter(None, Some("dns/b0"), &no_reasons(), None)
            .unwrap()
            .backend_id,
        Some(3)
    );
    assert_eq!(
        n.filter(Some("dns"), Some("b0"), &no_reasons(), None)
            .unwrap()
            .backend_id,
        Some(3)
    );
    let e = n
        .filter(Some("web"), Some("b9"), &no_reasons(), None)
        .unwrap_err();
    assert_eq!(e, "VIP web has no backend \"b9\" (its backends: b0, b1)");
    let e = n.filter(None, Some("b9"), &no_reasons(), None).unwrap_err();
    assert_eq!(
        e,
        "no backend named \"b9\" in the running generation (running are web/b0, web/b1, dns/b0)"
    );
    // A backend of another VIP, named either way.
    let e = n
        .filter(Some("dns"), Some("web/b1"), &no_reasons(), None)
        .unwrap_err();
    assert_eq!(e, "backend web/b1 is not in VIP dns (its backends: b0)");
    let e = n
        .filter(Some("dns"), Some("b1"), &no_reasons(), None)
        .unwrap_err();
    assert_eq!(e, "VIP dns has no backend \"b1\" (its backends: b0)");
    // Verdicts a VIP's packets never have.
    let e = n
        .filter(Some("web"), None, &["pass_not_vip".into()], None)
        .unwrap_err();
    assert!(e.contains("name neither to see them"), "{e}");
    let e = n
        .filter(None, Some("web/b1"), &["pass_not_vip".into()], None)
        .unwrap_err();
    assert!(e.contains("name neither to see them"), "{e}");
    let e = n.filter(None, None, &["dropped".into()], None).unwrap_err();
    assert!(
        e.starts_with("unknown reason \"dropped\": one of forwarded, pass_not_ip"),
        "{e}"
    );
    for rate in [0, MAX_RATE + 1] {
        let e = n.filter(None, None, &no_reasons(), Some(rate)).unwrap_err();
        assert!(e.contains("must be 1 to 5000"), "{e}");
    }
}

#[test]
fn no_client_turns_the_kernel_trace_off() {
    assert_eq!(control([], 99), TraceControl::default());
}

#[test]
fn one_client_is_filtered_in_the_kernel_as_asked() {
    let f = names()
        .filter(Some("web"), Some("b1"), &["forwarded".into()], Some(10))
        .unwrap();
    let c = control([&f], 99);
    assert_eq!(c.until_ns, 99);
    assert_eq!(
        (c.family, &c.addr[..4]),
        (FAMILY_V4, &[198, 18, 0, 100][..])
    );
    assert_eq!(c.addr[4..], [0; 12]);
    assert_eq!((c.backend_id, c.reasons, c.per_cpu_rate), (2, 1, 10));
}

#[test]
fn several_clients_share_what_they_have_in_common() {
    let n = names();
    let a = n
        .filter(Some("web"), Some("b0"), &["forwarded".into()], Some(10))
        .unwrap();
    let b = n
        .filter(
            Some("web"),
            Some("b1"),
            &["drop_no_backend".into()],
            Some(20),
        )
        .unwrap();
    let c = control([&a, &b], 99);
    assert_eq!(c.family, FAMILY_V4, "same VIP address: still filtered");
    assert_eq!(c.backend_id, TRACE_ANY_BACKEND, "different backends: open");
    assert_eq!(c.reasons, 1 | 1 << Reason::DropNoBackend.index());
    assert_eq!(c.per_cpu_rate, 20);
    let d = n.filter(Some("dns"), None, &no_reasons(), None).unwrap();
    let c = control([&a, &d], 99);
    assert_eq!(
        (c.family, c.addr),
        (0, [0; 16]),
        "different VIPs: any address"
    );
}

#[test]
fn events_name_the_vip_and_backend() {
    let n = names();
    let e = n.event(&web_record(Reason::Forwarded, 2));
    assert_eq!(e.vip.as_deref(), Some("web"));
    assert_eq!(e.backend.as_deref(), Some("web/b1"));
    assert_eq!(
        (e.client.as_str(), e.destination.as_str()),
        ("198.18.1.2:40000", "198.18.0.100:80")
    );
    assert_eq!(
        (e.protocol.as_str(), e.reason.as_str(), e.flow.as_deref()),
        ("tcp", "forwarded", Some("new"))
    );
    let e = n.event(&Record {
        new_flow: false,
        ..web_record(Reason::Forwarded, 9)
    });
    assert_eq!(
        (e.backend.as_deref(), e.flow.as_deref()),
        (Some("#9"), Some("known"))
    );
    let e = n.event(&web_record(Reason::DropNoBackend, 0));
    assert_eq!((e.backend, e.flow), (None, None));
    let e = n.event(&Record {
        dport: 443,
        ..web_record(Reason::PassNotVip, 0)
    });
    assert_eq!(e.vip, None);
}

#[test]
fn a_portless_packet_names_its_vip_only_when_alone_on_the_address() {
    let n = names();
    let fragment = Record {
        dport: 0,
        sport: 0,
        ..web_record(Reason::DropFragment, 0)
    };
    assert_eq!(n.event(&fragment).vip.as_deref(), Some("web"));
    // Two VIPs on one address: a packet without ports could be either's.
    let text = "\
[[vip]]\nname = \"web\"\naddress = \"198.18.0.100\"\nport = 80\nprotocol = \"tcp\"
[[vip.backend]]\nname = \"b0\"\naddress = \"198.18.0.11\"\nweight = 1
[[vip]]\nname = \"api\"\naddress = \"198.18.0.100\"\nport = 8080\nprotocol = \"tcp\"
[[vip.backend]]\nname = \"b0\"\naddress = \"198.18.0.11\"\nweight = 1
";
    let config = config::parse(text, Path::new("/etc/xlb/xlb.toml")).unwrap();
    let shared = Names::of(&Generation::fixture(
        1,
        Source::Cli {
            command: "apply".into(),
        },
        config,
    ));
    assert_eq!(shared.event(&fragment).vip, None);
    assert_eq!(
        shared
            .event(&web_record(Reason::Forwarded, 0))
            .vip
            .as_deref(),
        Some("web")
    );
}

#[test]
fn protocols_are_named_as_ip_names_them() {
    let n = names();
    for (proto, name) in [
        (1, "icmp"),
        (6, "tcp"),
        (17, "udp"),
        (58, "icmpv6"),
        (47, "proto-47"),
    ] {
        let r = Record {
            proto,
            ..web_record(Reason::PassIcmp, 0)
        };
        assert_eq!(n.event(&r).protocol, name);
    }
}
