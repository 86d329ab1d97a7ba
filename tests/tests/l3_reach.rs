//! `forwarding = "ipip"` across a router: backends in a subnet of their own decapsulate
//! with the real `xlb decap`, real TCP and UDP servers answer, and path MTU discovery
//! works through xlb (the routed lab: `xlb_lab::routed`).

#![cfg(test)]

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use lb_common::Reason;
use xlb_lab::{
    bulk::{BULK_BYTES, BULK_PORT, Bulk},
    clients::{http_many, udp_once},
    daemon::{Daemon, VipSpec},
    require_root,
    routed::{IPIP_TABLE, Routed, assert_decapsulated, backend_addr},
    servers::{ECHO_PORT, HTTP_PORT, Servers},
    topology::{VIP4, VIP6, backend_name, in_ns},
};

const CONNECTIONS: u32 = 3000;

fn daemon(lab: &Routed, vips: &[VipSpec]) -> Daemon {
    let mut d = Daemon::in_namespace(&lab.lb.name);
    d.tables = IPIP_TABLE.into();
    d.addresses = backend_addr;
    d.write_config(vips);
    d.start();
    d
}

/// Fetches `/bulk` through `vip` until every one of `backends` has served it once (at
/// most 8 fetches per backend); every fetch must bring all 10 MiB.
fn bulk_from_every_backend(bulk: &Bulk, client: &str, vip: IpAddr, backends: usize) {
    let mut served = BTreeMap::new();
    for _ in 0..8 * backends {
        let (who, bytes) = bulk
            .fetch(client, vip, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("bulk through {vip}: {e}"));
        assert_eq!(bytes, BULK_BYTES, "bulk from {who} through {vip}");
        *served.entry(who).or_insert(0) += 1;
        if served.len() == backends {
            return;
        }
    }
    panic!("through {vip}, only {served:?} served /bulk");
}

#[test]
fn backends_behind_a_router_share_tcp_and_udp_and_carry_10_mb() {
    if !require_root("backends_behind_a_router_share_tcp_and_udp_and_carry_10_mb") {
        return;
    }
    let lab = Routed::new(3, 1500);
    let sites = lab.sites();
    let _servers = Servers::start_on(&sites, [VIP4, VIP6]);
    let bulk = Bulk::start(&sites);
    let d = daemon(
        &lab,
        &[
            VipSpec::tcp("web", VIP4, HTTP_PORT, &[1, 2, 3]).ipip(),
            VipSpec::tcp("web6", VIP6, HTTP_PORT, &[1, 2, 3]).ipip(),
            VipSpec::udp("echo", VIP4, ECHO_PORT, &[1, 1, 1]).ipip(),
            VipSpec::udp("echo6", VIP6, ECHO_PORT, &[1, 1, 1]).ipip(),
            VipSpec::tcp("bulk", VIP4, BULK_PORT, &[1, 1, 1]).ipip(),
            VipSpec::tcp("bulk6", VIP6, BULK_PORT, &[1, 1, 1]).ipip(),
        ],
    );
    for (vip, name) in [(VIP4, "web"), (VIP6, "web6")] {
        let addr: IpAddr = vip.parse().unwrap();
        let seen = in_ns(&lab.client.name, move || http_many(addr, CONNECTIONS));
        assert_eq!(
            seen.values().sum::<u32>(),
            CONNECTIONS,
            "{name}: every connection answered"
        );
        let shares = d.table_shares(name);
        for (i, table) in shares.iter().enumerate() {
            let got = f64::from(seen.get(&backend_name(i)).copied().unwrap_or(0))
                / f64::from(CONNECTIONS);
            assert!(
                (got - table).abs() <= 0.03,
                "{name}: {} got {:.1}% of {CONNECTIONS} connections, table share {:.1}%",
                backend_name(i),
                got * 100.0,
                table * 100.0
            );
        }
    }
    // ipip backends have no MAC of their own: the route is theirs, and none is held.
    for b in d.backends("web") {
        assert_eq!(b["mac_source"], "route", "{b}");
        assert!(b["held"].is_null(), "{b}");
    }
    let status = d.xlb_ok(&["status"]);
    assert!(
        status.contains("route (ipip)") && !status.contains("UNRESOLVED"),
        "{status}"
    );
    for vip in [VIP4, VIP6] {
        let addr: IpAddr = vip.parse().unwrap();
        let answers = in_ns(&lab.client.name, move || {
            (0..300)
                .map(|i| udp_once(addr, &format!("datagram {i}")).map(|(_, who)| who))
                .collect::<Result<Vec<_>, _>>()
        })
        .unwrap_or_else(|e| panic!("UDP through {vip}: {e}"));
        let mut by: BTreeMap<String, u32> = BTreeMap::new();
        for who in answers {
            *by.entry(who.split(' ').next().unwrap_or("").to_string())
                .or_default() += 1;
        }
        assert_eq!(by.len(), 3, "UDP through {vip}: answered by {by:?}");
    }
    for vip in [VIP4, VIP6] {
        bulk_from_every_backend(&bulk, &lab.client.name, vip.parse().unwrap(), 3);
    }
    assert_decapsulated(&lab.backends, lab.decap_pins.path());
    for r in [
        Reason::DropFibNoRoute,
        Reason::DropFibNoNeighbour,
        Reason::DropFibForwardingOff,
        Reason::DropEncapConfig,
        Reason::ReplyTooBig,
    ] {
        assert_eq!(d.reason(r), 0, "{r:?}");
    }
}

#[test]
fn path_mtu_discovery_works_through_xlb() {
    if !require_root("path_mtu_discovery_works_through_xlb") {
        return;
    }
    // The router's side of the client link has MTU 1280: the backends' 1500-byte
    // segments to the client need path MTU discovery, and the router's ICMP errors go
    // to the VIP, i.e. to the load balancer.
    let lab = Routed::new(2, 1280);
    let bulk = Bulk::start(&lab.sites());
    let d = daemon(
        &lab,
        &[
            VipSpec::tcp("bulk", VIP4, BULK_PORT, &[1, 1]).ipip(),
            VipSpec::tcp("bulk6", VIP6, BULK_PORT, &[1, 1]).ipip(),
        ],
    );
    for vip in [VIP4, VIP6] {
        let before = d.reason(Reason::ForwardedIcmpError);
        bulk_from_every_backend(&bulk, &lab.client.name, vip.parse().unwrap(), 2);
        assert!(
            d.reason(Reason::ForwardedIcmpError) > before,
            "{vip}: no ICMP error was forwarded to a backend"
        );
    }
}
