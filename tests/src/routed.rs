//! The routed lab: backends in a subnet of their own behind a router namespace, reached
//! with `forwarding = "ipip"`, each decapsulating with the real `xlb decap`.
//!
//! ```text
//!   client c0 ──(rc0)── router ──(rlb)── lb        198.18.1.0/24, 198.18.2.0/24
//!                         └── br0 ── b1, b2, b3     198.18.3.0/24 (VIPs on lo)
//! ```
//!
//! The router routes the VIPs and the load balancer's outer source ranges to the load
//! balancer, which wraps each packet and sends it back to the router (XDP_TX to its
//! route's next hop); the router forwards it to the backend, whose decap program unwraps
//! it, and the backend answers the client directly through the router. The router's
//! side of the client link (`rc0`) has the MTU the test asks for: at 1280 the backends'
//! 1500-byte segments need path MTU discovery, whose ICMP errors the router sends to
//! the VIP, i.e. to the load balancer. IPv6 alike on 2001:db8:1::/64, :2::/64, :3::/64.

use std::{net::IpAddr, path::Path};

use crate::{
    PinDir,
    daemon::xlb_bin,
    netns::{Netns, sh},
    servers::Site,
    topology::{VIP4, VIP6, attach_xdp, backend_name, dsr_backend},
};

/// The client's addresses.
pub const CLIENT4: &str = "198.18.1.2";
pub const CLIENT6: &str = "2001:db8:1::2";
/// The load balancer's addresses.
pub const LB4: &str = "198.18.2.2";
pub const LB6: &str = "2001:db8:2::2";
/// The load balancer's outer source ranges, which the backends' decap accepts.
pub const SOURCE4: &str = "198.18.200.0/24";
pub const SOURCE6: &str = "2001:db8:200::/120";
/// The config's `[ipip]` table for those ranges.
pub const IPIP_TABLE: &str =
    "[ipip]\nipv4_source = \"198.18.200.0/24\"\nipv6_source = \"2001:db8:200::/120\"\n";

/// Backend `i`'s (0-based) IPv4 address.
pub fn backend4(i: usize) -> String {
    format!("198.18.3.{}", 11 + i)
}

/// Backend `i`'s (0-based) IPv6 address.
pub fn backend6(i: usize) -> String {
    format!("2001:db8:3::{}", 11 + i)
}

/// Backend `i`'s address in `vip`'s family (`Daemon::addresses`).
pub fn backend_addr(i: usize, vip: IpAddr) -> String {
    if vip.is_ipv4() {
        backend4(i)
    } else {
        backend6(i)
    }
}

pub struct Routed {
    // Field order is drop order: hosts first, then the router.
    pub client: Netns,
    pub lb: Netns,
    pub backends: Vec<Netns>,
    pub router: Netns,
    /// The backends' decap links and maps (removed, so detached, on drop).
    pub decap_pins: PinDir,
    /// XDP_PASS on the router's side of the load balancer's link.
    _pass: aya::Ebpf,
}

/// Connects `host`'s eth0 to `router` (router side `port`, added to `bridge` if given).
fn link(router: &Netns, host: &Netns, port: &str) {
    sh(&format!(
        "ip -n {} link add {port} type veth peer name eth0 netns {}",
        router.name, host.name
    ));
}

fn addrs(ns: &Netns, dev: &str, v4: &str, v6: &str) {
    let n = &ns.name;
    sh(&format!("ip -n {n} addr add {v4} dev {dev}"));
    sh(&format!("ip -n {n} addr add {v6} dev {dev} nodad"));
    sh(&format!("ip -n {n} link set {dev} up"));
}

fn default_via(ns: &Netns, v4: &str, v6: &str) {
    sh(&format!("ip -n {} route add default via {v4}", ns.name));
    sh(&format!("ip -n {} -6 route add default via {v6}", ns.name));
}

impl Routed {
    /// The lab with `backends` backends, decap attached, and MTU `client_mtu` on the
    /// router's side of the client link.
    pub fn new(backends: usize, client_mtu: u32) -> Routed {
        crate::remove_stale();
        let router = Netns::new("rt");
        let r = &router.name;
        router.sh(
            "sysctl -qw net.ipv4.conf.all.forwarding=1 net.ipv6.conf.all.forwarding=1 \
             net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0",
        );
        sh(&format!("ip -n {r} link add br0 type bridge"));
        router.sh("sysctl -qw net.bridge.bridge-nf-call-iptables=0 \
             net.bridge.bridge-nf-call-ip6tables=0 net.bridge.bridge-nf-call-arptables=0");
        addrs(&router, "br0", "198.18.3.1/24", "2001:db8:3::1/64");

        let client = Netns::new("rc0");
        link(&router, &client, "rc0");
        addrs(&router, "rc0", "198.18.1.1/24", "2001:db8:1::1/64");
        sh(&format!("ip -n {r} link set rc0 mtu {client_mtu}"));
        addrs(
            &client,
            "eth0",
            &format!("{CLIENT4}/24"),
            &format!("{CLIENT6}/64"),
        );
        default_via(&client, "198.18.1.1", "2001:db8:1::1");
        client.sh("ethtool -K eth0 tx off");
        client.sh("sysctl -qw net.ipv4.ip_local_port_range='1024 65535'");

        let lb = Netns::new("rlb");
        link(&router, &lb, "rlb");
        addrs(&router, "rlb", "198.18.2.1/24", "2001:db8:2::1/64");
        addrs(&lb, "eth0", &format!("{LB4}/24"), &format!("{LB6}/64"));
        default_via(&lb, "198.18.2.1", "2001:db8:2::1");
        // The program's FIB lookups route for the receiving interface: forwarding on.
        lb.sh("sysctl -qw net.ipv4.conf.all.forwarding=1 net.ipv6.conf.all.forwarding=1");
        for dst in [format!("{VIP4}/32"), SOURCE4.to_string()] {
            sh(&format!("ip -n {r} route add {dst} via {LB4}"));
        }
        for dst in [format!("{VIP6}/128"), SOURCE6.to_string()] {
            sh(&format!("ip -n {r} -6 route add {dst} via {LB6}"));
        }

        let decap_pins = PinDir::new("decap");
        let mut bes = Vec::new();
        for i in 0..backends {
            let ns = Netns::new(&format!("r{}", backend_name(i)));
            let port = format!("rb{i}");
            link(&router, &ns, &port);
            sh(&format!("ip -n {r} link set {port} master br0 up"));
            addrs(
                &ns,
                "eth0",
                &format!("{}/24", backend4(i)),
                &format!("{}/64", backend6(i)),
            );
            default_via(&ns, "198.18.3.1", "2001:db8:3::1");
            dsr_backend(&ns, &[VIP4], VIP6);
            decap(&ns, &decap_pins.path().join(backend_name(i)));
            bes.push(ns);
        }
        let pass = attach_xdp(
            r,
            xlb::object::PASS_OBJECT,
            xlb::object::PASS_PROGRAM_NAME,
            "rlb",
            |_| {},
        );
        Routed {
            client,
            lb,
            backends: bes,
            router,
            decap_pins,
            _pass: pass,
        }
    }

    /// Where the servers run: each backend with its own addresses.
    pub fn sites(&self) -> Vec<Site> {
        self.backends
            .iter()
            .enumerate()
            .map(|(i, ns)| Site {
                ns: ns.name.clone(),
                name: backend_name(i),
                own: [backend4(i), backend6(i)],
            })
            .collect()
    }
}

/// `xlb decap stats eth0 --json` in namespace `ns`, for pins under `pins`, parsed.
pub fn decap_stats(ns: &Netns, pins: &Path) -> serde_json::Value {
    let out = sh(&format!(
        "nsenter --net=/run/netns/{} {} decap stats eth0 --json --pin-dir {}",
        ns.name,
        xlb_bin().display(),
        pins.display()
    ));
    serde_json::from_str(&out).expect("decap stats JSON")
}

/// Fails unless every backend of `backends` decapsulated packets (pins as `decap`
/// made them under `pins/bN`).
pub fn assert_decapsulated(backends: &[Netns], pins: &Path) {
    for (i, b) in backends.iter().enumerate() {
        let stats = decap_stats(b, &pins.join(backend_name(i)));
        assert!(
            decap_count(&stats, "decapsulated") > 0,
            "{}: {stats}",
            b.name
        );
        assert_eq!(
            decap_count(&stats, "drop_wrong_source"),
            0,
            "{}: {stats}",
            b.name
        );
    }
}

/// `xlb decap attach eth0` in `ns` for the load balancer's source ranges, pinned under
/// `pins` (entering only the network namespace, so bpffs stays visible).
pub fn decap(ns: &Netns, pins: &Path) {
    sh(&format!(
        "nsenter --net=/run/netns/{} {} decap attach eth0 --from {SOURCE4} --from {SOURCE6} \
         --pin-dir {}",
        ns.name,
        xlb_bin().display(),
        pins.display()
    ));
}

/// Packets of verdict `name` in `xlb decap stats --json` output.
pub fn decap_count(stats: &serde_json::Value, name: &str) -> u64 {
    stats["verdicts"]
        .as_array()
        .expect("verdicts")
        .iter()
        .find(|v| v["verdict"] == name)
        .and_then(|v| v["packets"].as_u64())
        .unwrap_or_else(|| panic!("no verdict {name} in {stats}"))
}

/// `ipip` on the L2 lab (`Topology`): the backends share the load balancer's segment, so
/// each is its own next hop. Turns forwarding on in the load balancer's namespace (the
/// program's FIB lookups need it), attaches `xlb decap` to every backend, and gives
/// `daemon` the `[ipip]` table. The returned pins hold the decap programs.
pub fn ipip_on_l2(topo: &crate::topology::Topology, daemon: &mut crate::daemon::Daemon) -> PinDir {
    topo.lb
        .sh("sysctl -qw net.ipv4.conf.all.forwarding=1 net.ipv6.conf.all.forwarding=1");
    let pins = PinDir::new("decap");
    for (i, b) in topo.backends.iter().enumerate() {
        decap(b, &pins.path().join(backend_name(i)));
    }
    daemon.tables = IPIP_TABLE.into();
    pins
}

/// The MAC of the router in `fib_namespace`.
pub const FIB_ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x71];

/// A namespace whose routes `ipip` lookups can use without a router to talk to:
/// `lb0` (198.18.2.2/24, 2001:db8:2::2/64, a veth whose peer `rt0` stays in the same
/// namespace) has the router 198.18.2.1 / 2001:db8:2::1 as a permanent neighbour with
/// `FIB_ROUTER_MAC` and as next hop to 198.18.3.0/24 and 2001:db8:3::/64; forwarding is
/// on. For BPF_PROG_TEST_RUN with `lb0` as the receiving interface (packet tests,
/// benchmarks).
pub fn fib_namespace(role: &str) -> Netns {
    let ns = Netns::new(role);
    let n = &ns.name;
    for cmd in [
        "link add lb0 type veth peer name rt0",
        "link set rt0 up",
        "link set lb0 up",
        "addr add 198.18.2.2/24 dev lb0",
        "addr add 2001:db8:2::2/64 dev lb0 nodad",
        "neigh replace 198.18.2.1 lladdr 02:00:00:00:00:71 dev lb0 nud permanent",
        "neigh replace 2001:db8:2::1 lladdr 02:00:00:00:00:71 dev lb0 nud permanent",
        "route add 198.18.3.0/24 via 198.18.2.1",
        "route add 2001:db8:3::/64 via 2001:db8:2::1",
    ] {
        sh(&format!("ip -n {n} {cmd}"));
    }
    ns.sh("sysctl -qw net.ipv4.conf.all.forwarding=1 net.ipv6.conf.all.forwarding=1");
    ns
}
