//! Distribution over real TCP: two clients open 3000 new HTTP connections through the
//! real daemon; every backend gets its table share within 3 percentage points, and four
//! independent counts agree exactly per backend: what the clients saw, what the servers
//! accepted, `xlb stats`, and the pinned counters read with plain bpftool. The packets
//! the backends' counters saw equal the packets the clients sent to the VIP (nftables
//! counters in the client namespaces).

#![cfg(test)]

use std::{collections::BTreeMap, net::IpAddr};

use xlb_lab::{
    bpftool_sum,
    clients::http_many,
    daemon::{Daemon, VipSpec},
    require_root,
    servers::{HTTP_PORT, Servers},
    topology::{Topology, VIP4, backend_name, in_ns},
};

const PER_CLIENT: u32 = 1500;

#[test]
fn new_connections_follow_table_shares_and_every_count_agrees() {
    if !require_root("new_connections_follow_table_shares_and_every_count_agrees") {
        return;
    }
    let topo = Topology::new(2, 3);
    let servers = Servers::start(&topo);
    let mut daemon = Daemon::new(&topo);
    daemon.write_config(&[VipSpec::tcp("web", VIP4, HTTP_PORT, &[1, 2, 3])]);
    daemon.start();
    for c in &topo.clients {
        c.sh(&format!(
            "nft 'add table inet xlbt; add chain inet xlbt out {{ type filter hook output priority 0; }}; add rule inet xlbt out ip daddr {VIP4} tcp dport {HTTP_PORT} counter'"
        ));
    }

    let vip: IpAddr = VIP4.parse().unwrap();
    let runs: Vec<_> = topo
        .clients
        .iter()
        .map(|c| {
            let ns = c.name.clone();
            std::thread::spawn(move || in_ns(&ns, move || http_many(vip, PER_CLIENT)))
        })
        .collect();
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    for r in runs {
        for (who, n) in r.join().unwrap() {
            *seen.entry(who).or_default() += u64::from(n);
        }
    }
    let total: u64 = seen.values().sum();
    assert_eq!(total, u64::from(PER_CLIENT) * 2);

    let stats: serde_json::Value =
        serde_json::from_str(&daemon.xlb_ok(&["stats", "--json"])).unwrap();
    let backends = stats["vips"][0]["backends"].as_array().unwrap().clone();
    let dump = daemon.dump(lb_common::maps::BACKEND_STATS);
    let mut forwarded = 0;
    for (i, b) in backends.iter().enumerate() {
        let name = backend_name(i);
        assert_eq!(b["backend"], name.as_str());
        let id = u32::try_from(b["id"].as_u64().unwrap()).unwrap();
        let clients = seen.get(&name).copied().unwrap_or(0);
        let share = clients as f64 / total as f64;
        let table = b["table_share"].as_f64().unwrap();
        assert!(
            (share - table).abs() <= 0.03,
            "{name}: {:.1}% of new connections, table share {:.1}%",
            share * 100.0,
            table * 100.0
        );
        let counts = [
            ("servers", servers.http_connections(i)),
            ("xlb stats", b["new_flows"].as_u64().unwrap()),
            ("bpftool", bpftool_sum(&dump, id, "new_flows")),
        ];
        for (who, n) in counts {
            assert_eq!(n, clients, "{name}: connections per {who} vs per clients");
        }
        assert_eq!(
            bpftool_sum(&dump, id, "packets"),
            b["packets"].as_u64().unwrap(),
            "{name}: packets, bpftool vs xlb stats"
        );
        forwarded += b["packets"].as_u64().unwrap();
    }
    let sent: u64 = topo
        .clients
        .iter()
        .map(|c| {
            let rules: serde_json::Value =
                serde_json::from_str(&c.sh("nft -j list table inet xlbt")).unwrap();
            rules["nftables"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|o| o["rule"]["expr"].as_array())
                .flat_map(|e| e.iter())
                .filter_map(|e| e["counter"]["packets"].as_u64())
                .sum::<u64>()
        })
        .sum();
    assert_eq!(
        forwarded, sent,
        "packets the backends' counters saw vs packets the clients sent to the VIP"
    );
    assert!(sent >= total * 4, "implausibly few packets: {sent}");
}
