//! The real `xlb run` in the lab's load-balancer namespace, with its config, state and
//! pins in a scratch directory, and the real `xlb` CLI to talk to it.

mod maps;

use std::{
    net::IpAddr,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{
    PinDir,
    topology::{Topology, backend_addr, backend_name},
};

/// The `xlb` binary next to the running executable (a test in target/<profile>/deps, or a
/// binary in target/<profile>).
pub fn xlb_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("exe dir");
    for candidate in [dir.join("xlb"), dir.join("../xlb")] {
        if candidate.exists() {
            return candidate;
        }
    }
    panic!(
        "no xlb binary next to {}: run `cargo build --release --bins` (cargo xtask test does)",
        exe.display()
    );
}

/// A VIP's `[vip.health]`.
#[derive(Clone, Debug)]
pub struct Check {
    pub port: u16,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub rise: u32,
    pub fall: u32,
    pub slow_start_s: Option<u64>,
    /// More lines, like `kind = "http"` (none: a TCP connect check).
    pub keys: Vec<String>,
}

impl Check {
    /// TCP connects to `port` every 200 ms (timeout 200 ms), rise 2, fall 3: short, so
    /// that a scenario takes seconds.
    pub fn tcp(port: u16) -> Check {
        Check {
            port,
            interval_ms: 200,
            timeout_ms: 200,
            rise: 2,
            fall: 3,
            slow_start_s: None,
            keys: Vec::new(),
        }
    }

    fn render(&self) -> String {
        let mut text = format!(
            "\n[vip.health]\nport = {}\ninterval_ms = {}\ntimeout_ms = {}\nrise = {}\nfall = {}\n",
            self.port, self.interval_ms, self.timeout_ms, self.rise, self.fall
        );
        if let Some(s) = self.slow_start_s {
            text += &format!("slow_start_s = {s}\n");
        }
        for line in &self.keys {
            text += &format!("{line}\n");
        }
        text
    }
}

/// The `[[vip]]` tables of `vips`, backend `i` of each at `address(i, vip address)`.
pub fn render_vips(vips: &[VipSpec], address: impl Fn(usize, IpAddr) -> String) -> String {
    let mut text = String::new();
    for v in vips {
        text += &format!(
            "\n[[vip]]\nname = \"{}\"\naddress = \"{}\"\nport = {}\nprotocol = \"{}\"\n",
            v.name,
            v.address,
            v.port,
            if v.udp { "udp" } else { "tcp" }
        );
        if v.ipip {
            text += "forwarding = \"ipip\"\n";
        }
        if let Some(check) = &v.health {
            text += &check.render();
        }
        for (i, w) in v.weights.iter().enumerate() {
            text += &format!(
                "\n[[vip.backend]]\nname = \"{}\"\naddress = \"{}\"\nmac = \"neighbour\"\nweight = {w}\n",
                backend_name(i),
                address(i, v.address)
            );
        }
    }
    text
}

/// One VIP of a lab config; its backends are the topology's b1..bN in order.
#[derive(Clone, Debug)]
pub struct VipSpec {
    pub name: String,
    pub address: IpAddr,
    pub port: u16,
    pub udp: bool,
    pub weights: Vec<i64>,
    /// `[vip.health]`, if health checks are on.
    pub health: Option<Check>,
    /// `forwarding = "ipip"` (else the default, `l2-dsr`).
    pub ipip: bool,
}

impl VipSpec {
    pub fn tcp(name: &str, address: &str, port: u16, weights: &[i64]) -> VipSpec {
        VipSpec {
            name: name.into(),
            address: address.parse().expect("VIP address"),
            port,
            udp: false,
            weights: weights.to_vec(),
            health: None,
            ipip: false,
        }
    }

    /// This VIP with `forwarding = "ipip"`.
    pub fn ipip(self) -> VipSpec {
        VipSpec { ipip: true, ..self }
    }

    pub fn udp(name: &str, address: &str, port: u16, weights: &[i64]) -> VipSpec {
        VipSpec {
            udp: true,
            ..VipSpec::tcp(name, address, port, weights)
        }
    }
}

pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub pins: PinDir,
    lb_ns: String,
    child: Option<Child>,
    /// `[daemon] metrics` inside the LB namespace.
    pub metrics: Option<String>,
    /// Arguments of `xlb run` after `--config PATH`.
    pub run_args: Vec<String>,
    /// Lines of the configs' `[guardrails]` table (`healthy_quorum = 0.9`), if any.
    pub guardrails: String,
    /// More lines of the `[daemon]` table (`flow_capacity = 1024`), if any.
    pub settings: String,
    /// The binary `start` runs (default: the `xlb` of this build).
    pub bin: PathBuf,
    /// Environment of `xlb run` on top of the test's (e.g. `NOTIFY_SOCKET`).
    pub env: Vec<(String, PathBuf)>,
    /// More top-level tables of the configs (`[ipip]`), if any.
    pub tables: String,
    /// Backend `i`'s address for a VIP at the given address (default: the L2 lab's).
    pub addresses: fn(usize, IpAddr) -> String,
}

impl Daemon {
    /// A daemon for `topo` (not started).
    pub fn new(topo: &Topology) -> Daemon {
        Daemon::in_namespace(&topo.lb.name)
    }

    /// A daemon for the load-balancer namespace `lb_ns` (not started).
    pub fn in_namespace(lb_ns: &str) -> Daemon {
        Daemon {
            dir: tempfile::tempdir().expect("tempdir"),
            pins: PinDir::new("daemon"),
            lb_ns: lb_ns.to_string(),
            child: None,
            metrics: None,
            run_args: Vec::new(),
            guardrails: String::new(),
            settings: String::new(),
            bin: xlb_bin(),
            env: Vec::new(),
            tables: String::new(),
            addresses: backend_addr,
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("xlb.toml")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("run/xlb.sock")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The `[daemon]` table of this daemon's configs.
    pub fn daemon_section(&self) -> String {
        let mut text = format!(
            "[daemon]\ninterface = \"eth0\"\nxdp_mode = \"native\"\nsocket = \"{}\"\n\
             state_dir = \"{}\"\npin_dir = \"{}\"\n",
            self.socket().display(),
            self.state_dir().display(),
            self.pins.path().display()
        );
        if let Some(m) = &self.metrics {
            text += &format!("metrics = \"{m}\"\n");
        }
        text += &self.settings;
        text
    }

    /// The config text for `vips`.
    pub fn render(&self, vips: &[VipSpec]) -> String {
        let mut text = self.daemon_section();
        if !self.guardrails.is_empty() {
            text += &format!("\n[guardrails]\n{}\n", self.guardrails.trim_end());
        }
        if !self.tables.is_empty() {
            text += &format!("\n{}\n", self.tables.trim_end());
        }
        text += &render_vips(vips, self.addresses);
        text
    }

    /// Writes the config file for `vips`.
    pub fn write_config(&self, vips: &[VipSpec]) {
        std::fs::write(self.config_path(), self.render(vips)).expect("write config");
    }

    /// Writes the config for `vips` to `name` in the scratch directory; returns its path.
    pub fn write_file(&self, name: &str, vips: &[VipSpec]) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, self.render(vips)).expect("write config");
        path
    }

    /// Starts `xlb run` in the LB namespace (network namespace only: bpffs stays
    /// visible) and waits until its socket answers.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "daemon already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("daemon log");
        let mut cmd = Command::new(&self.bin);
        cmd.args(["run", "--config"])
            .arg(self.config_path())
            .args(&self.run_args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log);
        let ns = std::fs::File::open(format!("/run/netns/{}", self.lb_ns)).expect("LB netns");
        // SAFETY: setns is async-signal-safe; it only moves the child into the namespace.
        unsafe {
            cmd.pre_exec(move || {
                use std::os::fd::AsRawFd;
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("spawn xlb run");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(self.socket()).is_err() {
            if let Some(status) = child.try_wait().expect("try_wait") {
                panic!("daemon exited with {status}: {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not come up: {}",
                self.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
        self.child = Some(child);
    }

    /// The daemon's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal` and waits for the daemon to exit (TERM: a clean stop; KILL: a crash).
    pub fn stop_with(&mut self, signal: i32) {
        if let Some(child) = &self.child {
            // SAFETY: kill on our own child's pid.
            unsafe { libc::kill(child.id().cast_signed(), signal) };
        }
        self.wait_exit(Duration::from_secs(10));
    }

    /// Waits for the daemon to exit (after a signal, or by itself after `xlb teardown`).
    pub fn wait_exit(&mut self, within: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let deadline = Instant::now() + within;
        while child.try_wait().expect("try_wait").is_none() {
            assert!(
                Instant::now() < deadline,
                "daemon did not exit within {within:?}: {}",
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("daemon.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Runs the CLI against this daemon.
    pub fn xlb(&self, args: &[&str]) -> Output {
        Command::new(xlb_bin())
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .output()
            .expect("run xlb")
    }

    /// Runs the CLI and panics unless it exits 0; returns stdout.
    pub fn xlb_ok(&self, args: &[&str]) -> String {
        let out = self.xlb(args);
        assert!(
            out.status.success(),
            "xlb {args:?} exited {:?}: {}",
            out.status.code(),
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `xlb status --json`.
    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.xlb_ok(&["status", "--json"])).expect("status JSON")
    }

    pub fn generation(&self) -> u64 {
        self.status()["generation"].as_u64().expect("a generation")
    }

    /// `xlb status`'s backends of VIP `vip`, in order.
    pub fn backends(&self, vip: &str) -> Vec<serde_json::Value> {
        let status = self.status();
        status["vips"]
            .as_array()
            .expect("vips")
            .iter()
            .find(|v| v["vip"] == vip)
            .unwrap_or_else(|| panic!("no VIP {vip} in {status}"))["backends"]
            .as_array()
            .expect("backends")
            .clone()
    }

    /// Weights of VIP `vip`'s backends, in order.
    pub fn weights(&self, vip: &str) -> Vec<u64> {
        self.backends(vip)
            .iter()
            .map(|b| b["weight"].as_u64().expect("weight"))
            .collect()
    }

    /// Table shares of VIP `vip`'s backends, in order: what new flows should follow.
    pub fn table_shares(&self, vip: &str) -> Vec<f64> {
        self.backends(vip)
            .iter()
            .map(|b| b["table_share"].as_f64().expect("table_share"))
            .collect()
    }

    /// Number of committed generations in the state directory.
    pub fn history_len(&self) -> usize {
        std::fs::read_dir(self.state_dir().join("history"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                    .count()
            })
            .unwrap_or(0)
    }

    pub fn pin_dir(&self) -> &Path {
        self.pins.path()
    }

    /// Sends SIGHUP (the daemon re-reads its config file).
    pub fn sighup(&self) {
        let pid = self.pid().expect("daemon running");
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(pid.cast_signed(), libc::SIGHUP) };
    }

    /// Waits until the daemon's log holds `what` `times` times (10 s at most).
    pub fn wait_log(&self, what: &str, times: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.log().matches(what).count() < times {
            assert!(
                Instant::now() < deadline,
                "no {what:?} (x{times}) in the log: {}",
                self.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// `xlb history --json`: the generations, oldest first.
    pub fn history(&self) -> Vec<serde_json::Value> {
        serde_json::from_str::<serde_json::Value>(&self.xlb_ok(&["history", "--json"]))
            .expect("history JSON")
            .as_array()
            .expect("history is an array")
            .clone()
    }

    /// `xlb status`'s backend `backend` of VIP `vip`.
    pub fn backend(&self, vip: &str, backend: &str) -> serde_json::Value {
        self.backends(vip)
            .into_iter()
            .find(|b| b["backend"] == backend)
            .unwrap_or_else(|| panic!("no backend {backend} in VIP {vip}"))
    }

    /// Polls `xlb status --json` every 50 ms until `done` holds for it (within `within`);
    /// returns that status and how long it took.
    pub fn wait_status(
        &self,
        what: &str,
        within: Duration,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> (serde_json::Value, Duration) {
        let start = Instant::now();
        loop {
            let status = self.status();
            if done(&status) {
                return (status, start.elapsed());
            }
            assert!(
                start.elapsed() < within,
                "{what}: not within {within:?}; status {status:#}\nlog: {}",
                self.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// `GET /metrics` (`[daemon] metrics` must be set) from inside the LB namespace.
    pub fn scrape(&self) -> String {
        use std::io::{Read, Write};
        let addr = self
            .metrics
            .clone()
            .expect("the daemon has no metrics address");
        crate::topology::in_ns(&self.lb_ns, move || {
            let mut s = std::net::TcpStream::connect(&addr).expect("connect to /metrics");
            s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
                .expect("send GET /metrics");
            let mut out = String::new();
            s.read_to_string(&mut out).expect("read /metrics");
            out
        })
    }

    /// VIP `vip`'s row of `xlb stats --json`.
    pub fn vip_stats(&self, vip: &str) -> serde_json::Value {
        let stats: serde_json::Value =
            serde_json::from_str(&self.xlb_ok(&["stats", "--json"])).expect("stats JSON");
        stats["vips"]
            .as_array()
            .expect("vips")
            .iter()
            .find(|v| v["vip"] == vip)
            .unwrap_or_else(|| panic!("no VIP {vip} in {stats}"))
            .clone()
    }

    /// `xlb explain VIP CLIENT --json`: which backend that flow gets (`why`: an existing
    /// `flow-entry` in a changed slot, the stateless `table-slot`, or the `changed-slot`
    /// of a flow without an entry).
    pub fn explain(&self, vip: &str, client: &str) -> serde_json::Value {
        serde_json::from_str(&self.xlb_ok(&["explain", vip, client, "--json"]))
            .expect("explain JSON")
    }

    /// One raw request line to the socket (as a client other than the CLI could send
    /// it); returns the answer line.
    pub fn raw_request(&self, line: &str) -> serde_json::Value {
        use std::io::{BufRead, Write};
        let mut s = std::os::unix::net::UnixStream::connect(self.socket()).expect("socket");
        s.write_all(format!("{line}\n").as_bytes()).expect("send");
        let mut answer = String::new();
        std::io::BufReader::new(s)
            .read_line(&mut answer)
            .expect("answer");
        serde_json::from_str(&answer).expect("answer JSON")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            crate::kill_and_reap(&mut child);
        }
    }
}

/// stdout and stderr of a CLI run, for messages.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
