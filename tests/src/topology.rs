//! The lab topology: a switch namespace with a bridge, N clients, the load balancer and M
//! L2 DSR backends, dual-stack on 198.18.0.0/24 and 2001:db8::/64.
//!
//! ```text
//!   client c0 ─┐                        ┌─ backend b1 (VIPs on lo)
//!   client c1 ─┼── br0 (switch netns) ──┼─ backend b2
//!          lb ─┘   (XDP_PASS on lb port) └─ backend b3
//! ```
//!
//! Clients route the VIPs via the load balancer; the load balancer's XDP program rewrites
//! the destination MAC and sends the frame back out (XDP_TX) to the chosen backend, which
//! holds the VIP on `lo` and answers the client directly (direct server return).
//!
//! The traps from ENVIRONMENT.md are handled here: the LB's switch port runs XDP_PASS so
//! XDP_TX frames arrive, clients have TX checksum offload off, backends have the ARP and
//! rp_filter sysctls and receive packet steering (`all_cpus_mask`), IPv6 addresses skip
//! DAD, clients use the whole port range. Everything is deleted on drop, also after
//! a panic; `crate::remove_stale` removes what a killed run left behind.

use std::{net::IpAddr, thread};

use crate::netns::Netns;

/// The IPv4 VIP every backend holds on `lo`.
pub const VIP4: &str = "198.18.0.100";
/// The IPv6 VIP every backend holds on `lo`.
pub const VIP6: &str = "2001:db8::100";
/// The load balancer's addresses.
pub const LB4: &str = "198.18.0.2";
pub const LB6: &str = "2001:db8::2";

/// Client `i`'s IPv4 address.
pub fn client4(i: usize) -> String {
    format!("198.18.0.{}", 21 + i)
}

/// Client `i`'s IPv6 address.
pub fn client6(i: usize) -> String {
    format!("2001:db8::{}", 21 + i)
}

/// Backend `i`'s (0-based) IPv4 address.
pub fn backend4(i: usize) -> String {
    format!("198.18.0.{}", 11 + i)
}

/// Backend `i`'s (0-based) IPv6 address.
pub fn backend6(i: usize) -> String {
    format!("2001:db8::{}", 11 + i)
}

/// Backend `i`'s (0-based) name: b1, b2, ...
pub fn backend_name(i: usize) -> String {
    format!("b{}", i + 1)
}

/// Backend `i`'s address in `vip`'s family.
pub fn backend_addr(i: usize, vip: IpAddr) -> String {
    if vip.is_ipv4() {
        backend4(i)
    } else {
        backend6(i)
    }
}

pub struct Topology {
    // Field order is drop order: hosts first, then the switch.
    pub clients: Vec<Netns>,
    pub lb: Netns,
    pub backends: Vec<Netns>,
    pub switch: Netns,
    /// XDP_PASS on the LB's switch port (kept loaded while the topology lives).
    _peer_pass: Option<aya::Ebpf>,
}

/// Every CPU (up to 32) as an `rps_cpus` mask.
///
/// A veth hands a frame to the receive backlog of the CPU that sent it, so two segments
/// of one flow can be processed on two CPUs at once. On a backend, a client's handshake
/// ACK and its request racing like that make the kernel reset the request while the
/// connection it just accepted stays open (seen as `Connection reset by peer` about
/// once in 50000 short connections, with or without xlb changing anything). Receive
/// packet steering on the backends' eth0 keeps each flow on one CPU, as a NIC's RSS does.
fn all_cpus_mask() -> String {
    let cpus = thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(32);
    format!("{:x}", (1u64 << cpus) - 1)
}

/// What a backend needs besides its link (README "What a backend needs"): the VIPs
/// `vips4` and `vip6` on lo, no ARP answers for them, no reverse-path filter, and
/// receive packet steering on eth0 (see `all_cpus_mask`).
pub(crate) fn dsr_backend(ns: &Netns, vips4: &[&str], vip6: &str) {
    for vip in vips4 {
        ns.sh(&format!("ip addr add {vip}/32 dev lo"));
    }
    ns.sh(&format!("ip -6 addr add {vip6}/128 dev lo nodad"));
    for (key, value) in [("arp_ignore", 1), ("arp_announce", 2), ("rp_filter", 0)] {
        ns.sh(&format!(
            "sysctl -qw net.ipv4.conf.all.{key}={value} net.ipv4.conf.eth0.{key}={value}"
        ));
    }
    ns.sh(&format!(
        "sh -c 'echo {} > /sys/class/net/eth0/queues/rx-0/rps_cpus'",
        all_cpus_mask()
    ));
}

/// Plugs `host`'s eth0 into the bridge in `switch` with both addresses.
fn plug(switch: &Netns, host: &Netns, port: &str, v4: &str, v6: &str) {
    switch.sh(&format!(
        "ip link add {port} type veth peer name eth0 netns {}",
        host.name
    ));
    switch.sh(&format!("ip link set {port} master br0 up"));
    host.sh(&format!("ip addr add {v4}/24 dev eth0"));
    host.sh(&format!("ip -6 addr add {v6}/64 dev eth0 nodad"));
    host.sh("ip link set eth0 up");
}

impl Topology {
    /// Builds `clients` client namespaces and `backends` backend namespaces.
    pub fn new(clients: usize, backends: usize) -> Topology {
        Topology::build(clients, backends, true)
    }

    /// The same topology without the XDP_PASS program on the LB's veth peer (`plb` in the
    /// switch namespace): the LB's native XDP_TX frames are lost until one is attached.
    pub fn without_peer_pass(clients: usize, backends: usize) -> Topology {
        Topology::build(clients, backends, false)
    }

    fn build(clients: usize, backends: usize, peer_pass: bool) -> Topology {
        crate::remove_stale();
        let switch = Netns::new("sw");
        switch.sh("ip link add br0 type bridge");
        // No IPv6 on the bridge itself; it only switches. Nor netfilter: with
        // bridge-nf-call-* at its default 1, every bridged frame also goes through the
        // switch namespace's IP hooks (`br_nf_pre_routing` in a profile).
        switch.sh(
            "sysctl -qw net.ipv6.conf.br0.disable_ipv6=1 net.bridge.bridge-nf-call-iptables=0 \
             net.bridge.bridge-nf-call-ip6tables=0 net.bridge.bridge-nf-call-arptables=0",
        );
        switch.sh("ip link set br0 up");
        let lb = Netns::new("lb");
        plug(&switch, &lb, "plb", LB4, LB6);
        let mut cls = Vec::new();
        for i in 0..clients {
            let ns = Netns::new(&format!("c{i}"));
            plug(&switch, &ns, &format!("pc{i}"), &client4(i), &client6(i));
            // Native XDP forwarding would leave the client's partial checksums unfinished.
            ns.sh("ethtool -K eth0 tx off");
            // Every short connection leaves a TIME_WAIT entry for 60 s: the whole port
            // range keeps a load of ~1000 connections/s from stalling on port search.
            ns.sh("sysctl -qw net.ipv4.ip_local_port_range='1024 65535'");
            ns.sh(&format!("ip route add {VIP4}/32 via {LB4}"));
            ns.sh(&format!("ip -6 route add {VIP6}/128 via {LB6}"));
            cls.push(ns);
        }
        let mut bes = Vec::new();
        for i in 0..backends {
            let ns = Netns::new(&backend_name(i));
            plug(&switch, &ns, &format!("pb{i}"), &backend4(i), &backend6(i));
            dsr_backend(&ns, &[VIP4], VIP6);
            bes.push(ns);
        }
        let mut topo = Topology {
            clients: cls,
            lb,
            backends: bes,
            switch,
            _peer_pass: None,
        };
        if peer_pass {
            topo._peer_pass = Some(topo.pass_on_lb_peer());
        }
        topo
    }

    /// The first client (most scenarios need one).
    pub fn client(&self) -> &Netns {
        &self.clients[0]
    }

    /// XDP_TX out of the LB's veth only arrives if the peer runs XDP: attach XDP_PASS.
    fn pass_on_lb_peer(&self) -> aya::Ebpf {
        attach_xdp(
            &self.switch.name,
            xlb::object::PASS_OBJECT,
            xlb::object::PASS_PROGRAM_NAME,
            "plb",
            |_| {},
        )
    }
}

/// Loads program `prog` of `object` in namespace `ns`, lets `setup` fill its maps, and
/// attaches it to `iface` in driver mode. The returned handle keeps it attached.
pub fn attach_xdp(
    ns: &str,
    object: &'static [u8],
    prog: &'static str,
    iface: &'static str,
    setup: impl FnOnce(&mut aya::Ebpf) + Send + 'static,
) -> aya::Ebpf {
    let at = format!("{prog} on {iface} in {ns}");
    in_ns(ns, move || {
        let mut ebpf = aya::Ebpf::load(object).unwrap_or_else(|e| panic!("load {at}: {e}"));
        setup(&mut ebpf);
        let p: &mut aya::programs::Xdp = ebpf
            .program_mut(prog)
            .and_then(|p| p.try_into().ok())
            .unwrap_or_else(|| panic!("no XDP program for {at}"));
        p.load().unwrap_or_else(|e| panic!("load {at}: {e}"));
        p.attach(iface, aya::programs::XdpMode::Driver)
            .unwrap_or_else(|e| panic!("attach {at}: {e}"));
        ebpf
    })
}

/// Moves the calling thread into the namespace named `name` (owned elsewhere).
pub fn enter(name: &str) {
    let ns = Netns {
        name: name.to_string(),
    };
    ns.enter();
    std::mem::forget(ns);
}

/// The MAC of `iface` in namespace `ns` (asked of the kernel from inside it).
pub fn mac_of(ns: &str, iface: &str) -> [u8; 6] {
    let iface = iface.to_string();
    in_ns(ns, move || {
        xlb::dataplane::loader::interface_mac(&iface)
            .unwrap_or_else(|e| panic!("MAC of {iface} in the namespace: {e}"))
    })
}

/// Runs `f` on a new thread inside namespace `name` and returns its result.
pub fn in_ns<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let name = name.to_string();
    thread::spawn(move || {
        enter(&name);
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}
