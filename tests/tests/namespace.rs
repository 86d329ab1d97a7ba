//! A real topology: one client, the load balancer and three backends on a bridge, native
//! XDP on the load balancer, real TCP servers on the backends (VIP on loopback, L2 DSR).
//! New connections must land on the backends in proportion to their weights, and the
//! pinned per-backend counters read with plain `bpftool` must equal what the client sent.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use lb_common::{
    BACKEND_LIVE, Backend, FAMILY_V4, PROTO_TCP, VipInfo, VipKey, maps, maps::DEFAULT_TABLE_SIZE,
};
use xlb::{
    dataplane::{AttachMode, Dataplane, LoadOptions, TableWrite, loader::interface_mac},
    table::{self, Weighted},
};
use xlb_tests::{
    PinDir,
    netns::{Netns, sh},
    require_root,
    topology::{Topology, enter},
};

const VIP: &str = "198.18.0.100";
const PORT: u16 = 80;
const CONNECTIONS: u32 = 3000;
const BACKENDS: [(&str, &str, u32); 3] = [
    ("b1", "198.18.0.11", 1),
    ("b2", "198.18.0.12", 2),
    ("b3", "198.18.0.13", 3),
];

fn topology() -> Topology {
    let addrs: Vec<&str> = BACKENDS.iter().map(|b| b.1).collect();
    Topology::new(&addrs, VIP)
}

/// Accepts connections on VIP:PORT in `ns`, answers with `name`, counts them; stops when
/// `stop` is set.
fn serve(
    ns: &Netns,
    name: &'static str,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
) -> thread::JoinHandle<()> {
    let path = ns.name.clone();
    thread::spawn(move || {
        enter(&path);
        let listener = TcpListener::bind((VIP, PORT)).expect("bind VIP on backend");
        listener.set_nonblocking(true).unwrap();
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut conn, _)) => {
                    accepted.fetch_add(1, Ordering::Relaxed);
                    conn.set_nonblocking(false).unwrap();
                    let _ = conn.write_all(name.as_bytes());
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_millis(1))
                }
                Err(e) => panic!("accept on {name}: {e}"),
            }
        }
    })
}

/// Sum over CPUs of `field` for `key` in a `bpftool -j map dump` of a per-CPU array.
/// With BTF, bpftool adds a "formatted" object with named fields next to the raw bytes.
fn bpftool_sum(dump: &serde_json::Value, key: u32, field: &str) -> u64 {
    let entry = dump
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["formatted"])
        .find(|e| e["key"].as_u64() == Some(u64::from(key)))
        .unwrap_or_else(|| panic!("key {key} not in bpftool dump"));
    entry["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            v["value"][field]
                .as_u64()
                .unwrap_or_else(|| panic!("no named field {field:?} in {v}"))
        })
        .sum()
}

#[test]
fn weighted_distribution_over_real_tcp_matches_weights_and_bpftool() {
    if !require_root("weighted_distribution_over_real_tcp_matches_weights_and_bpftool") {
        return;
    }
    let topo = topology();
    let pins = PinDir::new("xlb-ns-");

    // Load and attach natively inside the LB namespace; the pinned link keeps it there.
    let lb_name = topo.lb.name.clone();
    let pin_path = pins.path().to_path_buf();
    let mut dp = thread::spawn(move || {
        enter(&lb_name);
        let mut dp = Dataplane::load(&LoadOptions {
            pin_dir: pin_path,
            flow_capacity: 65536,
        })
        .unwrap();
        dp.attach("eth0", AttachMode::Native)
            .expect("native XDP on veth");
        dp
    })
    .join()
    .unwrap();
    assert!(
        topo.lb.sh("ip link show eth0").contains("xdp"),
        "XDP not attached natively"
    );
    let mut ids = Vec::new();
    for (i, ((name, _, _), ns)) in BACKENDS.iter().zip(&topo.backends).enumerate() {
        let ns_name = ns.name.clone();
        let mac = thread::spawn(move || {
            enter(&ns_name);
            interface_mac("eth0").unwrap()
        })
        .join()
        .unwrap();
        let id = i as u32 + 1;
        dp.maps()
            .put_backend(
                id,
                &Backend {
                    mac,
                    flags: BACKEND_LIVE,
                    vip_id: 1,
                    family: FAMILY_V4,
                    ..Backend::default()
                },
            )
            .unwrap();
        ids.push((id, *name));
    }
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&VIP.parse::<std::net::Ipv4Addr>().unwrap().octets());
    dp.maps()
        .put_vip(
            &VipKey {
                addr,
                port_be: PORT.to_be(),
                proto: PROTO_TCP,
                family: FAMILY_V4,
            },
            &VipInfo {
                vip_id: 1,
                forwarding: 0,
            },
        )
        .unwrap();
    let input: Vec<Weighted> = BACKENDS
        .iter()
        .map(|&(name, _, weight)| Weighted { name, weight })
        .collect();
    let built = table::build(&input, DEFAULT_TABLE_SIZE).unwrap();
    let slots: Vec<u32> = built.slots().iter().map(|&i| i + 1).collect();
    dp.maps()
        .install_table(TableWrite {
            vip_id: 1,
            generation: 1,
            slots: &slots,
        })
        .unwrap();

    // Count exactly what the client sends to the VIP.
    topo.client.sh(&format!(
        "nft 'add table inet xlbt; add chain inet xlbt out {{ type filter hook output priority 0; }}; add rule inet xlbt out ip daddr {VIP} tcp dport {PORT} counter'"
    ));

    let stop = Arc::new(AtomicBool::new(false));
    let accepted: Vec<Arc<AtomicU64>> = BACKENDS
        .iter()
        .map(|_| Arc::new(AtomicU64::new(0)))
        .collect();
    let servers: Vec<_> = BACKENDS
        .iter()
        .zip(&topo.backends)
        .zip(&accepted)
        .map(|(((name, _, _), ns), count)| serve(ns, name, stop.clone(), count.clone()))
        .collect();
    thread::sleep(Duration::from_millis(200));

    let client_name = topo.client.name.clone();
    let answers = thread::spawn(move || {
        enter(&client_name);
        let target: SocketAddr = format!("{VIP}:{PORT}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut answers: BTreeMap<String, u32> = BTreeMap::new();
        // Source port -> backend. The kernel may reuse a source port; the flow table
        // must then send the new connection to the same backend as the old one.
        let mut ports: BTreeMap<u16, String> = BTreeMap::new();
        let mut failures = Vec::new();
        for i in 0..CONNECTIONS {
            assert!(
                Instant::now() < deadline,
                "traffic loop exceeded its time bound at {i}"
            );
            let result =
                TcpStream::connect_timeout(&target, Duration::from_secs(3)).and_then(|mut s| {
                    s.set_read_timeout(Some(Duration::from_secs(3)))?;
                    let port = s.local_addr()?.port();
                    let mut who = String::new();
                    s.read_to_string(&mut who)?;
                    Ok((port, who))
                });
            match result {
                Ok((port, who)) => {
                    if let Some(before) = ports.insert(port, who.clone()) {
                        assert_eq!(before, who, "source port {port} changed backend");
                    }
                    *answers.entry(who).or_default() += 1
                }
                Err(e) => failures.push(format!("connection {i}: {e}")),
            }
        }
        (answers, ports, failures)
    })
    .join()
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    for s in servers {
        s.join().unwrap();
    }
    let (answers, ports, failures) = answers;
    assert!(
        failures.is_empty(),
        "{} failed connections, first: {:?}",
        failures.len(),
        failures.first()
    );

    // Distribution: each backend within 3 points of its weight share.
    let total_weight: u32 = BACKENDS.iter().map(|b| b.2).sum();
    for (name, _, weight) in BACKENDS {
        let got = f64::from(answers.get(name).copied().unwrap_or(0)) / f64::from(CONNECTIONS);
        let want = f64::from(weight) / f64::from(total_weight);
        assert!(
            (got - want).abs() <= 0.03,
            "{name}: {:.1}% of connections, weight share {:.1}%",
            got * 100.0,
            want * 100.0
        );
    }

    // bpftool's view of the pinned counters: named fields, equal to what was sent.
    let dump: serde_json::Value = serde_json::from_str(&sh(&format!(
        "bpftool -j map dump pinned {}",
        pins.path().join(maps::BACKEND_STATS).display()
    )))
    .unwrap();
    let sent: u64 = {
        let rules: serde_json::Value =
            serde_json::from_str(&topo.client.sh("nft -j list table inet xlbt")).unwrap();
        rules["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| o["rule"]["expr"].as_array())
            .flat_map(|e| e.iter())
            .filter_map(|e| e["counter"]["packets"].as_u64())
            .sum()
    };
    let mut forwarded = 0;
    for (i, &(id, name)) in ids.iter().enumerate() {
        let packets = bpftool_sum(&dump, id, "packets");
        let new_flows = bpftool_sum(&dump, id, "new_flows");
        // A new flow is a new 5-tuple: a reused source port hits its flow entry.
        let tuples = ports.values().filter(|who| *who == name).count() as u64;
        assert_eq!(
            new_flows, tuples,
            "{name}: new flows vs distinct client 5-tuples it answered"
        );
        assert_eq!(
            u64::from(answers[name]),
            accepted[i].load(Ordering::Relaxed),
            "{name}: answers vs accepted"
        );
        assert_eq!(
            packets,
            dp.maps().backend_stats(id).unwrap().packets,
            "{name}: bpftool vs xlb"
        );
        forwarded += packets;
    }
    assert_eq!(
        forwarded, sent,
        "packets the backends' counters saw vs packets the client sent to the VIP"
    );
    assert!(
        sent >= u64::from(CONNECTIONS) * 3,
        "implausibly few packets: {sent}"
    );
    drop(topo);
}
