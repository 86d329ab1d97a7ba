//! The test topology: a switch namespace with a bridge, a client, the load balancer and
//! L2 DSR backends (VIP on loopback, ARP and rp_filter sysctls), all on 198.18.0.0/24.
//! Everything is deleted on drop, also after a panic.

use std::thread;

use crate::netns::{Netns, sh};

pub const CLIENT: &str = "198.18.0.1";
pub const LB: &str = "198.18.0.2";

pub struct Topology {
    // Field order is drop order: hosts first, then the switch.
    pub client: Netns,
    pub lb: Netns,
    pub backends: Vec<Netns>,
    pub switch: Netns,
    /// XDP_PASS on the LB's switch port (kept loaded while the topology lives).
    _peer_pass: Option<aya::Ebpf>,
}

/// Plugs `host`'s eth0 into the bridge in `switch`, addressed `addr/24`.
fn plug(switch: &Netns, host: &Netns, port: &str, addr: &str) {
    sh(&format!(
        "ip -n {} link add {port} type veth peer name eth0 netns {}",
        switch.name, host.name
    ));
    sh(&format!(
        "ip -n {} link set {port} master br0 up",
        switch.name
    ));
    sh(&format!("ip -n {} addr add {addr}/24 dev eth0", host.name));
    sh(&format!("ip -n {} link set eth0 up", host.name));
}

impl Topology {
    /// Builds the topology with one backend namespace per address in `backends`, each
    /// holding `vip` on lo; the client routes `vip` via the LB.
    pub fn new(backends: &[&str], vip: &str) -> Topology {
        let switch = Netns::new("xsw");
        sh(&format!("ip -n {} link add br0 type bridge", switch.name));
        sh(&format!("ip -n {} link set br0 up", switch.name));
        let client = Netns::new("xcl");
        let lb = Netns::new("xlb");
        plug(&switch, &client, "pcl", CLIENT);
        plug(&switch, &lb, "plb", LB);
        // Native XDP forwarding would leave the client's partial TCP checksums unfinished.
        client.sh("ethtool -K eth0 tx off");
        client.sh(&format!("ip route add {vip}/32 via {LB}"));
        let mut nss = Vec::new();
        for (i, addr) in backends.iter().enumerate() {
            let ns = Netns::new("xbe");
            plug(&switch, &ns, &format!("pb{i}"), addr);
            ns.sh(&format!("ip addr add {vip}/32 dev lo"));
            for (key, value) in [("arp_ignore", 1), ("arp_announce", 2), ("rp_filter", 0)] {
                ns.sh(&format!(
                    "sysctl -qw net.ipv4.conf.all.{key}={value} net.ipv4.conf.eth0.{key}={value}"
                ));
            }
            nss.push(ns);
        }
        let mut topo = Topology {
            client,
            lb,
            backends: nss,
            switch,
            _peer_pass: None,
        };
        topo._peer_pass = Some(topo.pass_on_lb_peer());
        topo
    }

    /// XDP_TX out of the LB's veth only arrives if the peer runs XDP: attach XDP_PASS.
    fn pass_on_lb_peer(&self) -> aya::Ebpf {
        let switch = self.switch.name.clone();
        thread::spawn(move || {
            enter(&switch);
            let mut ebpf = aya::Ebpf::load(xlb::object::PASS_OBJECT).expect("load xlb-pass");
            let prog: &mut aya::programs::Xdp = ebpf
                .program_mut(xlb::object::PASS_PROGRAM_NAME)
                .expect("xlb-pass program")
                .try_into()
                .expect("an XDP program");
            prog.load().expect("load xlb-pass");
            prog.attach("plb", aya::programs::XdpMode::Driver)
                .expect("attach xlb-pass to plb");
            ebpf
        })
        .join()
        .expect("xlb-pass thread")
    }
}

/// Moves the calling thread into the namespace named `name` (owned elsewhere).
pub fn enter(name: &str) {
    let ns = Netns {
        name: name.to_string(),
    };
    ns.enter();
    std::mem::forget(ns);
}
