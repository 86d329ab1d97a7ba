//! The fleet topology: a router running BIRD spreads the VIPs over N load-balancer hosts
//! by ECMP, each host running the real `xlb run` and its own BIRD, which announces what
//! xlb's routes file says over BGP (with BFD); backends on the hosts' segment answer the
//! clients directly (L2 DSR), through the router.
//!
//! ```text
//!   client c0 ─┐                  ┌─ lb0  198.19.1.2   xlb run + BIRD (AS 65001)
//!   client c1 ─┴ br1 ── router ── br0 ─ lb1  198.19.1.3   ...
//!   198.19.2.21..   .2.1    .1.1   ├─ lb2  198.19.1.4
//!                (BIRD AS 65000,   ├─ b1   198.19.1.11  VIPs on lo, default via .1.1
//!                 ECMP, L4 hash)   └─ b2, b3 ...
//! ```
//!
//! The router installs one multipath route per VIP (BIRD `merge paths`) and hashes flows
//! over its next hops by their 5-tuple (`fib_multipath_hash_policy=1`). BFD (100 ms x 3)
//! takes a silent host's routes away; the BGP hold time (3 s) is the fallback. Both BIRD
//! configs are the ones shipped in examples/bird/, with a session per address family.
//! Graceful restart is off on both sides: a dead host's routes must go at once, not be
//! kept stale. Dual-stack: 198.19.1.0/24 and 2001:db8:19:1::/64 on the hosts' segment,
//! 198.19.2.0/24 and 2001:db8:19:2::/64 on the clients'. Everything is deleted on drop,
//! also after a panic.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{
    daemon::{Daemon, VipSpec, render_vips},
    netns::Netns,
    servers::{Servers, Site},
    topology::{attach_xdp, dsr_backend},
};

/// The VIPs every backend holds on `lo`.
pub const VIP4: &str = "198.19.0.100";
pub const VIP4_ALT: &str = "198.19.0.101";
pub const VIP6: &str = "2001:db8:19::100";
/// `VIP4` as an address.
pub fn vip4() -> std::net::IpAddr {
    VIP4.parse().expect("VIP4 is an IPv4 address")
}

/// The router on the hosts' segment and on the clients'.
pub const ROUTER4: &str = "198.19.1.1";
pub const ROUTER6: &str = "2001:db8:19:1::1";
pub const ROUTER_CLIENT4: &str = "198.19.2.1";
pub const ROUTER_CLIENT6: &str = "2001:db8:19:2::1";
/// BFD's detection time as examples/bird/*.conf set it (100 ms x 3): a host that stops
/// answering loses its routes on the router this long after its last packet.
pub const BFD_DETECTION: Duration = Duration::from_millis(300);

/// Host `i`'s (0-based) address on the segment.
pub fn host4(i: usize) -> String {
    format!("198.19.1.{}", 2 + i)
}

pub fn host6(i: usize) -> String {
    format!("2001:db8:19:1::{}", 2 + i)
}

/// Backend `i`'s (0-based) addresses.
pub fn backend4(i: usize) -> String {
    format!("198.19.1.{}", 11 + i)
}

pub fn backend6(i: usize) -> String {
    format!("2001:db8:19:1::{}", 11 + i)
}

/// Client `i`'s address.
pub fn client4(i: usize) -> String {
    format!("198.19.2.{}", 21 + i)
}

/// Next-hop ids of `hosts` as an `ip nexthop` group: host `i` is id `i + 1`.
fn group(hosts: &[usize]) -> String {
    let ids: Vec<String> = hosts.iter().map(|i| (i + 1).to_string()).collect();
    ids.join("/")
}

/// A BIRD in a namespace, in the foreground, killed on drop.
pub struct Bird {
    child: Option<Child>,
    pub ctl: PathBuf,
    ns: String,
    conf: PathBuf,
    log: PathBuf,
}

impl Bird {
    /// Writes `conf` to `dir/name.conf` and starts `bird -f` with it in `ns`.
    fn start(ns: &Netns, dir: &Path, name: &str, conf: &str) -> Bird {
        let path = dir.join(format!("{name}.conf"));
        std::fs::write(&path, conf).expect("write the BIRD config");
        let mut bird = Bird {
            child: None,
            ctl: dir.join(format!("{name}.ctl")),
            ns: ns.name.clone(),
            conf: path,
            log: dir.join(format!("{name}.log")),
        };
        bird.restart();
        bird
    }

    /// Starts BIRD (again, after `kill`) and waits until its control socket answers.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "BIRD already runs");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("BIRD log");
        // `ip netns exec` execs BIRD: the child's pid is BIRD's.
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, "bird", "-f", "-c"])
            .arg(&self.conf)
            .arg("-s")
            .arg(&self.ctl)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("bird (Debian package bird2; `cargo xtask setup` installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&self.ctl).is_err() {
            assert!(
                Instant::now() < deadline,
                "BIRD did not open {}: {}",
                self.ctl.display(),
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, as a crash: the BGP session ends without a NOTIFICATION.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            crate::kill_and_reap(&mut c);
        }
    }

    /// `birdc show protocols`, for failure messages.
    pub fn protocols(&self) -> String {
        Command::new("birdc")
            .arg("-s")
            .arg(&self.ctl)
            .args(["show", "protocols"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `examples/bird/NAME` with `replace` done, each `from` required to be there.
fn example(name: &str, replace: &[(&str, String)]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/bird")
        .join(name);
    let mut conf =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for (from, to) in replace {
        assert!(conf.contains(from), "{} lost {from:?}", path.display());
        conf = conf.replace(from, to);
    }
    conf
}

/// The router's BIRD (examples/bird/router.conf): a BGP session with BFD per host and
/// family, multipath routes into the kernel.
fn router_conf(hosts: usize) -> String {
    let conf = example("router.conf", &[("198.18.255.1", ROUTER4.to_string())]);
    let mut conf: String = conf
        .lines()
        .filter(|l| !l.starts_with("protocol bgp lb"))
        .map(|l| format!("{l}\n"))
        .collect();
    for i in 0..hosts {
        conf += &format!(
            "protocol bgp lb{i} from xlb_host4 {{ neighbor {}; }}\n",
            host4(i)
        );
        conf += &format!(
            "protocol bgp lb{i}_6 from xlb_host6 {{ neighbor {}; }}\n",
            host6(i)
        );
    }
    conf
}

/// A host's BIRD (examples/bird/bird.conf): one BGP session to the router, exporting
/// only xlb's static routes.
fn host_conf(i: usize, routes_file: &Path) -> String {
    example(
        "bird.conf",
        &[
            ("198.18.255.2", host4(i)),
            ("198.18.255.1", ROUTER4.to_string()),
            ("2001:db8:ffff::2", host6(i)),
            ("2001:db8:ffff::1", ROUTER6.to_string()),
            ("/etc/bird/xlb/vips.conf", routes_file.display().to_string()),
        ],
    )
}

/// One load-balancer host.
pub struct Host {
    pub daemon: Daemon,
    pub bird: Bird,
    pub routes_file: PathBuf,
    pub ns: Netns,
}

/// What a fleet runs.
#[derive(Clone, Debug)]
pub struct Spec {
    pub hosts: usize,
    pub backends: usize,
    pub clients: usize,
    pub vips: Vec<VipSpec>,
    /// Per host (missing: 0).
    pub hash_seeds: Vec<u32>,
    pub drain_time_ms: u64,
    /// Serve `/metrics` on every host at this address (inside its namespace).
    pub metrics: Option<String>,
}

impl Spec {
    /// `hosts` hosts, 3 backends, 2 clients, `vips`, one seed, 500 ms drain time.
    pub fn new(hosts: usize, vips: Vec<VipSpec>) -> Spec {
        Spec {
            hosts,
            backends: 3,
            clients: 2,
            vips,
            hash_seeds: Vec::new(),
            drain_time_ms: 500,
            metrics: None,
        }
    }
}

pub struct Fleet {
    // Field order is drop order: processes first, then the namespaces.
    pub servers: Servers,
    pub hosts: Vec<Host>,
    router_bird: Bird,
    pub clients: Vec<Netns>,
    pub router: Netns,
    pub backends: Vec<Netns>,
    _passes: Vec<aya::Ebpf>,
    pub switch: Netns,
    pub dir: tempfile::TempDir,
    pub spec: Spec,
}

/// Plugs `host`'s `iface` into bridge `bridge` of `switch` as port `port`.
fn plug(switch: &Netns, bridge: &str, host: &Netns, port: &str, iface: &str) {
    switch.sh(&format!(
        "ip link add {port} type veth peer name {iface} netns {}",
        host.name
    ));
    switch.sh(&format!("ip link set {port} master {bridge} up"));
    host.sh(&format!("ip link set {iface} up"));
}

impl Fleet {
    pub fn new(spec: Spec) -> Fleet {
        crate::remove_stale();
        let dir = tempfile::tempdir().expect("tempdir");
        let switch = Netns::new("fsw");
        for br in ["br0", "br1"] {
            switch.sh(&format!("ip link add {br} type bridge"));
            switch.sh(&format!("sysctl -qw net.ipv6.conf.{br}.disable_ipv6=1"));
            switch.sh(&format!("ip link set {br} up"));
        }
        switch.sh("sysctl -qw net.bridge.bridge-nf-call-iptables=0 \
             net.bridge.bridge-nf-call-ip6tables=0 net.bridge.bridge-nf-call-arptables=0");
        let router = Netns::new("rtr");
        plug(&switch, "br0", &router, "prtr", "eth0");
        plug(&switch, "br1", &router, "prtc", "eth1");
        router.sh(&format!("ip addr add {ROUTER4}/24 dev eth0"));
        router.sh(&format!("ip -6 addr add {ROUTER6}/64 dev eth0 nodad"));
        router.sh(&format!("ip addr add {ROUTER_CLIENT4}/24 dev eth1"));
        router.sh(&format!(
            "ip -6 addr add {ROUTER_CLIENT6}/64 dev eth1 nodad"
        ));
        router.sh(
            "sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 \
             net.ipv4.fib_multipath_hash_policy=1 net.ipv6.fib_multipath_hash_policy=1",
        );
        let mut passes = Vec::new();
        let mut host_ns = Vec::new();
        for i in 0..spec.hosts {
            let ns = Netns::new(&format!("lb{i}"));
            let port: &'static str = Box::leak(format!("pl{i}").into_boxed_str());
            plug(&switch, "br0", &ns, port, "eth0");
            ns.sh(&format!("ip addr add {}/24 dev eth0", host4(i)));
            ns.sh(&format!("ip -6 addr add {}/64 dev eth0 nodad", host6(i)));
            // Native XDP_TX on a veth reaches only a peer that runs XDP.
            passes.push(attach_xdp(
                &switch.name,
                xlb::object::PASS_OBJECT,
                xlb::object::PASS_PROGRAM_NAME,
                port,
                |_| {},
            ));
            host_ns.push(ns);
        }
        let mut backends = Vec::new();
        let mut sites = Vec::new();
        for i in 0..spec.backends {
            let ns = Netns::new(&format!("fb{}", i + 1));
            plug(&switch, "br0", &ns, &format!("pb{i}"), "eth0");
            ns.sh(&format!("ip addr add {}/24 dev eth0", backend4(i)));
            ns.sh(&format!("ip -6 addr add {}/64 dev eth0 nodad", backend6(i)));
            dsr_backend(&ns, &[VIP4, VIP4_ALT], VIP6);
            ns.sh(&format!("ip route add default via {ROUTER4}"));
            ns.sh(&format!("ip -6 route add default via {ROUTER6}"));
            sites.push(Site {
                ns: ns.name.clone(),
                name: crate::topology::backend_name(i),
                own: [backend4(i), backend6(i)],
            });
            backends.push(ns);
        }
        let mut clients = Vec::new();
        for i in 0..spec.clients {
            let ns = Netns::new(&format!("fc{i}"));
            plug(&switch, "br1", &ns, &format!("pc{i}"), "eth0");
            ns.sh(&format!("ip addr add {}/24 dev eth0", client4(i)));
            ns.sh(&format!(
                "ip -6 addr add 2001:db8:19:2::{}/64 dev eth0 nodad",
                21 + i
            ));
            ns.sh(&format!("ip route add default via {ROUTER_CLIENT4}"));
            ns.sh(&format!("ip -6 route add default via {ROUTER_CLIENT6}"));
            // Native XDP forwarding would leave the client's partial checksums unfinished.
            ns.sh("ethtool -K eth0 tx off");
            ns.sh("sysctl -qw net.ipv4.ip_local_port_range='1024 65535'");
            clients.push(ns);
        }
        let servers = Servers::start_on(&sites, [VIP4, VIP6]);
        let router_bird = Bird::start(&router, dir.path(), "router", &router_conf(spec.hosts));
        let mut hosts = Vec::new();
        for (i, ns) in host_ns.into_iter().enumerate() {
            let routes_file = dir.path().join(format!("lb{i}-vips.conf"));
            // What the package ships before xlb first writes it: nothing announced.
            std::fs::write(
                &routes_file,
                xlb::announce::routes_file(&Default::default(), "lab"),
            )
            .expect("write the routes file");
            let bird = Bird::start(
                &ns,
                dir.path(),
                &format!("lb{i}"),
                &host_conf(i, &routes_file),
            );
            let mut daemon = Daemon::in_namespace(&ns.name);
            daemon.metrics.clone_from(&spec.metrics);
            hosts.push(Host {
                daemon,
                bird,
                routes_file,
                ns,
            });
        }
        let mut fleet = Fleet {
            servers,
            hosts,
            router_bird,
            clients,
            router,
            backends,
            _passes: passes,
            switch,
            dir,
            spec,
        };
        for i in 0..fleet.hosts.len() {
            fleet.write_config(i, &fleet.spec.vips.clone());
            fleet.hosts[i].daemon.start();
        }
        fleet
    }

    /// Host `i`'s config for `vips`: its `[daemon]` table with its seed and
    /// `[daemon.announce]`, then the VIPs with the fleet's backends.
    pub fn config(&self, i: usize, vips: &[VipSpec]) -> String {
        let h = &self.hosts[i];
        let mut text = h.daemon.daemon_section();
        text += &format!(
            "hash_seed = {}\n\n[daemon.announce]\nbird_socket = \"{}\"\nroutes_file = \"{}\"\n\
             min_healthy_backends = 1\ndrain_time = \"{}ms\"\n",
            self.spec.hash_seeds.get(i).copied().unwrap_or(0),
            h.bird.ctl.display(),
            h.routes_file.display(),
            self.spec.drain_time_ms
        );
        text += &render_vips(vips, |b, vip| {
            if vip.is_ipv4() {
                backend4(b)
            } else {
                backend6(b)
            }
        });
        text
    }

    /// Writes host `i`'s config file for `vips`.
    pub fn write_config(&self, i: usize, vips: &[VipSpec]) {
        std::fs::write(self.hosts[i].daemon.config_path(), self.config(i, vips))
            .expect("write config");
    }

    /// The router's next hops (host addresses of `vip`'s family) for `vip` as BIRD
    /// installed them from BGP, sorted.
    pub fn next_hops(&self, vip: &str) -> Vec<String> {
        let out = if vip.contains(':') {
            self.router
                .sh(&format!("ip -6 -j route show {vip}/128 proto bird"))
        } else {
            self.router
                .sh(&format!("ip -j route show {vip}/32 proto bird"))
        };
        let routes: serde_json::Value = serde_json::from_str(&out).expect("ip -j route");
        let mut hops: Vec<String> = routes
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|r| match r["nexthops"].as_array() {
                Some(hops) => hops.iter().map(|h| h["gateway"].clone()).collect(),
                None => vec![r["gateway"].clone()],
            })
            .filter_map(|g| g.as_str().map(String::from))
            .collect();
        hops.sort();
        hops
    }

    /// Polls the router's route for `vip` every 5 ms until its next hops are the
    /// addresses of `hosts`; returns how long it took.
    pub fn wait_next_hops(&self, vip: &str, hosts: &[usize], within: Duration) -> Duration {
        let address = if vip.contains(':') { host6 } else { host4 };
        let mut want: Vec<String> = hosts.iter().map(|&i| address(i)).collect();
        want.sort();
        let start = Instant::now();
        loop {
            let hops = self.next_hops(vip);
            if hops == want {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < within,
                "router's next hops for {vip}: {hops:?}, expected {want:?} within {within:?}\n\
                 router BIRD: {}",
                self.router_bird.protocols()
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Host `i`'s per-VIP counter `field` (`packets`, `new_flows`) for `vip`.
    pub fn vip_counter(&self, i: usize, vip: &str, field: &str) -> u64 {
        let status = self.hosts[i].daemon.status();
        status["vips"]
            .as_array()
            .expect("vips")
            .iter()
            .find(|v| v["vip"] == vip)
            .unwrap_or_else(|| panic!("no VIP {vip} on host {i}: {status}"))[field]
            .as_u64()
            .expect("a counter")
    }

    /// Which hosts carry connection `e` to `vip`: those whose packet counter for `vip`
    /// grows while `e` sends `what` and reads the echo (nothing else may send to `vip`
    /// meanwhile). Flows in unchanged slots leave no flow entry, so traffic is the
    /// witness.
    pub fn carriers(
        &self,
        vip: &str,
        e: &mut crate::clients::Echo,
        what: &str,
    ) -> std::io::Result<Vec<usize>> {
        let live: Vec<usize> = (0..self.hosts.len())
            .filter(|&i| self.hosts[i].daemon.pid().is_some())
            .collect();
        let before: Vec<u64> = live
            .iter()
            .map(|&i| self.vip_counter(i, vip, "packets"))
            .collect();
        e.ping(what)?;
        Ok(live
            .iter()
            .zip(before)
            .filter(|&(&i, n)| self.vip_counter(i, vip, "packets") > n)
            .map(|(&i, _)| i)
            .collect())
    }

    /// Puts a route for `VIP4` over a resilient next-hop group of `hosts` in front of
    /// BIRD's (a lower metric), as a router whose routing stack programs resilient
    /// groups would: a next hop that leaves takes only its own buckets with it.
    pub fn resilient_route(&self, hosts: &[usize]) {
        for &i in hosts {
            self.router.sh(&format!(
                "ip nexthop add id {} via {} dev eth0",
                i + 1,
                host4(i)
            ));
        }
        self.router.sh(&format!(
            "ip nexthop add id 100 group {} type resilient buckets 128",
            group(hosts)
        ));
        self.router
            .sh(&format!("ip route add {VIP4}/32 nhid 100 metric 1"));
    }

    /// Makes `hosts` the resilient group's members: a host that leaves it (withdrawn)
    /// gives its buckets to the others, every other bucket stays where it is.
    pub fn resilient_group(&self, hosts: &[usize]) {
        self.router.sh(&format!(
            "ip nexthop replace id 100 group {} type resilient buckets 128",
            group(hosts)
        ));
    }

    /// Host `i` dies: its link goes down first (so nothing it sends says goodbye), then
    /// its xlb and its BIRD are killed with SIGKILL. Returns when the link went down.
    pub fn kill_host(&mut self, i: usize) -> Instant {
        self.hosts[i].ns.sh("ip link set eth0 down");
        let down = Instant::now();
        self.hosts[i].daemon.stop_with(libc::SIGKILL);
        self.hosts[i].bird.kill();
        down
    }
}
