//! The forwarders the benchmarks compare, set up on the lab's load balancer: xlb (the
//! real daemon), an XDP_TX reflector, nftables DNAT as kube-proxy's nftables mode builds
//! it, and HAProxy in TCP mode.

use std::{
    net::IpAddr,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use aya::{Ebpf, maps::Array};
use xlb_lab::{
    daemon::{Daemon, VipSpec},
    topology::{Topology, VIP4, attach_xdp, backend4, in_ns, mac_of},
};

use crate::fail;

/// Backends behind the VIP.
pub(crate) const BACKENDS: usize = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Forwarder {
    Reflector,
    Xlb,
    /// xlb with `forwarding = "ipip"`: each frame wrapped in IPv4 to its backend.
    XlbIpip,
    Nft,
    Haproxy,
}

impl Forwarder {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Forwarder::Reflector => "XDP_TX reflector (the path's limit)",
            Forwarder::Xlb => "xlb",
            Forwarder::XlbIpip => "xlb, ipip (wrapped, next hop from the FIB)",
            Forwarder::Nft => "nftables DNAT (numgen, conntrack)",
            Forwarder::Haproxy => "HAProxy 2.6, TCP mode",
        }
    }
}

/// Sets entry 0 of the array map `name` of `ebpf` to `value`.
pub(crate) fn set_first<V: aya::Pod>(ebpf: &mut Ebpf, name: &str, value: V) {
    let mut map: Array<_, V> = ebpf
        .map_mut(name)
        .and_then(|m| Array::try_from(m).ok())
        .unwrap_or_else(|| fail(format!("no array map {name}")));
    map.set(0, value, 0)
        .unwrap_or_else(|e| fail(format!("writing {name}: {e}")));
}

/// Busy CPU time of the whole machine so far, in seconds (/proc/stat, USER_HZ = 100).
pub(crate) fn busy_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: everything but idle and iowait.
    let busy: u64 = fields
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != 3 && i != 4 && i < 8)
        .map(|(_, v)| v)
        .sum();
    busy as f64 / 100.0
}

/// What one forwarder does to the lab's load balancer; dropped after its run.
pub(crate) enum Lb {
    Xdp(Ebpf),
    Daemon(Box<Daemon>),
    Nft,
    Haproxy {
        child: Child,
        /// Its config and log; removed on drop.
        _dir: tempfile::TempDir,
    },
}

impl Drop for Lb {
    fn drop(&mut self) {
        if let Lb::Haproxy { child, .. } = self {
            xlb_lab::kill_and_reap(child);
        }
    }
}

/// nftables DNAT as kube-proxy's nftables mode builds it: a weighted `numgen` map picks
/// the endpoint of a new connection, conntrack keeps later packets on it. Masquerade
/// brings the replies back through the load balancer (without DSR they must return
/// through it to be un-NATed).
fn nft_rules(proto: &str, port: u16) -> String {
    let endpoints: Vec<String> = (0..BACKENDS)
        .map(|i| format!("{i} : {}", backend4(i)))
        .collect();
    format!(
        "table ip xlbbench {{\n\
         chain pre {{\n\
         type nat hook prerouting priority dstnat;\n\
         ip daddr {VIP4} {proto} dport {port} counter \
         dnat to numgen random mod {BACKENDS} map {{ {} }}\n\
         }}\n\
         chain post {{\n\
         type nat hook postrouting priority srcnat;\n\
         ip daddr 198.18.0.0/24 ct status dnat counter masquerade\n\
         }}\n\
         chain forwarded {{\n\
         type filter hook forward priority filter;\n\
         counter\n\
         }}\n\
         }}\n",
        endpoints.join(", ")
    )
}

pub(crate) fn setup_nft(topo: &Topology, proto: &str, port: u16) {
    let lb = &topo.lb;
    lb.sh("sysctl -qw net.ipv4.ip_forward=1");
    // The LB forwards out of the interface it received on: no ICMP redirects.
    lb.sh("sysctl -qw net.ipv4.conf.all.send_redirects=0 net.ipv4.conf.eth0.send_redirects=0");
    let rules = nft_rules(proto, port);
    lb.sh(&format!("nft -f - <<'EOF'\n{rules}EOF"));
}

/// HAProxy in TCP mode on the LB, holding the VIP on `lo` and balancing `port` round
/// robin over the backends' same port; returns once it accepts connections.
pub(crate) fn setup_haproxy(topo: &Topology, port: u16) -> Lb {
    topo.lb.sh(&format!("ip addr add {VIP4}/32 dev lo"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| fail(format!("tempdir: {e}")));
    let servers: String = (0..BACKENDS)
        .map(|i| format!("  server b{} {}:{port} weight 1\n", i + 1, backend4(i)))
        .collect();
    let cfg = format!(
        "global\n  maxconn 4096\n  nbthread 2\ndefaults\n  mode tcp\n  timeout connect 2s\n  \
         timeout client 10s\n  timeout server 10s\nfrontend f\n  bind {VIP4}:{port}\n  \
         default_backend b\nbackend b\n  balance roundrobin\n{servers}"
    );
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, cfg).unwrap_or_else(|e| fail(format!("haproxy.cfg: {e}")));
    let child = Command::new("ip")
        .args(["netns", "exec", &topo.lb.name, "haproxy", "-db", "-f"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(dir.path().join("haproxy.log"))
                .unwrap_or_else(|e| fail(format!("haproxy.log: {e}"))),
        )
        .spawn()
        .unwrap_or_else(|e| fail(format!("start haproxy: {e}")));
    // Wait until it accepts: the bounded loop gives up after 5 s.
    let deadline = Instant::now() + Duration::from_secs(5);
    let vip: IpAddr = VIP4.parse().unwrap_or_else(|_| fail("VIP4".into()));
    let ns = topo.client().name.clone();
    let accepts = move || {
        let to = std::net::SocketAddr::new(vip, port);
        in_ns(&ns, move || {
            std::net::TcpStream::connect_timeout(&to, Duration::from_secs(1)).is_ok()
        })
    };
    while !accepts() {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.path().join("haproxy.log")).unwrap_or_default();
            fail(format!("haproxy did not accept within 5 s: {log}"));
        }
        thread::sleep(Duration::from_millis(50));
    }
    Lb::Haproxy { child, _dir: dir }
}

/// The XDP_TX reflector on the LB's eth0: every frame goes to the first backend with
/// only its MACs rewritten.
pub(crate) fn reflector(topo: &Topology) -> Lb {
    let b1 = mac_of(&topo.backends[0].name, "eth0");
    let lb_mac = mac_of(&topo.lb.name, "eth0");
    Lb::Xdp(attach_xdp(
        &topo.lb.name,
        xlb::object::BENCH_OBJECT,
        "xlb_reflect",
        "eth0",
        move |ebpf| {
            let mut macs = [0u8; 12];
            macs[..6].copy_from_slice(&b1);
            macs[6..].copy_from_slice(&lb_mac);
            set_first(ebpf, "reflect_macs", macs);
        },
    ))
}

/// Starts the real daemon with one VIP on the LB's eth0.
pub(crate) fn setup_xlb(topo: &Topology, spec: VipSpec) -> Lb {
    let mut d = Daemon::new(topo);
    d.write_config(&[spec]);
    d.start();
    Lb::Daemon(Box::new(d))
}

/// Starts the real daemon with one `ipip` VIP on the LB's eth0 (forwarding on, as its
/// FIB lookups need). The backends are the next hops themselves.
pub(crate) fn setup_xlb_ipip(topo: &Topology, spec: VipSpec) -> Lb {
    topo.lb
        .sh("sysctl -qw net.ipv4.conf.all.forwarding=1 net.ipv6.conf.all.forwarding=1");
    let mut d = Daemon::new(topo);
    d.tables = xlb_lab::routed::IPIP_TABLE.into();
    d.write_config(&[spec.ipip()]);
    d.start();
    Lb::Daemon(Box::new(d))
}
