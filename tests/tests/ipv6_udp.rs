//! IPv6 and UDP end to end through the real daemon: an IPv6 TCP VIP, and UDP VIPs on
//! both families. New flows follow the table shares, a flow stays on its backend, and the
//! load balancer's new-flow counters equal what the servers received.

#![cfg(test)]

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr, UdpSocket},
    time::Duration,
};

use xlb_lab::{
    clients::{follows, http_many, udp_once},
    daemon::{Daemon, VipSpec},
    require_root,
    servers::{ECHO_PORT, HTTP_PORT, Servers},
    topology::{Topology, VIP4, VIP6, backend_name, in_ns},
};

const N: u32 = 1500;

#[test]
fn ipv6_tcp_and_udp_on_both_families_end_to_end() {
    if !require_root("ipv6_tcp_and_udp_on_both_families_end_to_end") {
        return;
    }
    let topo = Topology::new(1, 3);
    let servers = Servers::start(&topo);
    let mut daemon = Daemon::new(&topo);
    daemon.write_config(&[
        VipSpec::tcp("web6", VIP6, HTTP_PORT, &[1, 2, 2]),
        VipSpec::udp("dns4", VIP4, ECHO_PORT, &[2, 1, 2]),
        VipSpec::udp("dns6", VIP6, ECHO_PORT, &[2, 2, 1]),
    ]);
    daemon.start();
    let client = topo.clients[0].name.clone();

    let vip6: IpAddr = VIP6.parse().unwrap();
    let count = in_ns(&client, move || http_many(vip6, N));
    follows(&count, &daemon.table_shares("web6"), 0.05).unwrap_or_else(|e| panic!("IPv6 TCP, {e}"));
    for (i, _) in topo.backends.iter().enumerate() {
        assert_eq!(
            servers.http_connections(i),
            u64::from(count.get(&backend_name(i)).copied().unwrap_or(0))
        );
    }

    for (name, vip) in [("dns4", VIP4), ("dns6", VIP6)] {
        let vip: IpAddr = vip.parse().unwrap();
        // UDP has no TIME_WAIT: a new socket may get a source port used before, and so
        // the same 5-tuple, which must go to the same backend and is not a new flow.
        let (udp, ports) = in_ns(&client, move || {
            let mut count: BTreeMap<String, u32> = BTreeMap::new();
            let mut ports: BTreeMap<u16, String> = BTreeMap::new();
            for i in 0..N {
                let (port, who) = udp_once(vip, &format!("q{i}"))
                    .unwrap_or_else(|e| panic!("UDP request {i} to {vip}: {e}"));
                if let Some(before) = ports.insert(port, who.clone()) {
                    assert_eq!(before, who, "source port {port} changed backend");
                }
                *count.entry(who).or_insert(0) += 1;
            }
            (count, ports)
        });
        follows(&udp, &daemon.table_shares(name), 0.05).unwrap_or_else(|e| panic!("{name}, {e}"));
        let v = daemon.vip_stats(name);
        // Every slot is stateless (no change yet): UDP flows leave no entry and are not
        // counted as new flows; each backend's packets cover the datagrams it answered
        // (more where a lost datagram was sent again).
        for b in v["backends"].as_array().unwrap() {
            let who = b["backend"].as_str().unwrap();
            assert_eq!(b["new_flows"].as_u64(), Some(0), "{name} {who}");
            assert!(
                b["packets"].as_u64().unwrap()
                    >= ports.values().filter(|b| *b == who).count() as u64,
                "{name} {who}: fewer packets than distinct client 5-tuples it answered: {b}"
            );
        }

        // One socket, many datagrams: one flow, one backend.
        let backends = in_ns(&client, move || {
            let any: IpAddr = if vip.is_ipv4() {
                "0.0.0.0".parse().unwrap()
            } else {
                "::".parse().unwrap()
            };
            let sock = UdpSocket::bind(SocketAddr::new(any, 0)).unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
            sock.connect(SocketAddr::new(vip, ECHO_PORT)).unwrap();
            let mut seen = std::collections::BTreeSet::new();
            let mut buf = [0u8; 512];
            for i in 0..50 {
                sock.send(format!("same-{i}").as_bytes()).unwrap();
                let n = sock.recv(&mut buf).unwrap();
                let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
                seen.insert(reply.split(' ').next().unwrap().to_string());
            }
            seen
        });
        assert_eq!(backends.len(), 1, "{name}: one flow reached {backends:?}");
    }
}
