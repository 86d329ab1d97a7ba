//! The real `xlb` daemon and CLI in the namespace topology: startup apply, socket
//! permissions, traffic, rejected configs that change nothing, weight set, drain with an
//! established connection, rollback, SIGHUP reload, SIGKILL during a loop of applies and a
//! restart that reconciles with established flows intact, and teardown.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use xlb_tests::{
    PinDir,
    netns::sh,
    require_root,
    topology::{Topology, enter},
};

const VIP: &str = "198.18.0.100";
const BACKENDS: [(&str, &str); 3] = [
    ("b1", "198.18.0.11"),
    ("b2", "198.18.0.12"),
    ("b3", "198.18.0.13"),
];

fn xlb_bin() -> PathBuf {
    // target/<profile>/deps/<this test> -> target/<profile>/xlb
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("xlb");
    assert!(
        bin.exists(),
        "{} not built: run `cargo build --release --bins` (cargo xtask test does)",
        bin.display()
    );
    bin
}

struct Setup {
    dir: tempfile::TempDir,
    pins: PinDir,
    topo: Topology,
}

impl Setup {
    fn config_path(&self) -> PathBuf {
        self.dir.path().join("xlb.toml")
    }
    fn socket(&self) -> PathBuf {
        self.dir.path().join("run/xlb.sock")
    }
    fn write_config(&self, weights: [i64; 3]) {
        let mut text = format!(
            "[daemon]\ninterface = \"eth0\"\nxdp_mode = \"native\"\nsocket = \"{}\"\nstate_dir = \"{}\"\npin_dir = \"{}\"\n\n[[vip]]\nname = \"web\"\naddress = \"{VIP}\"\nport = 80\nprotocol = \"tcp\"\n",
            self.socket().display(),
            self.dir.path().join("state").display(),
            self.pins.path().display()
        );
        for ((name, addr), w) in BACKENDS.iter().zip(weights) {
            text += &format!(
                "\n[[vip.backend]]\nname = \"{name}\"\naddress = \"{addr}\"\nmac = \"neighbour\"\nweight = {w}\n"
            );
        }
        std::fs::write(self.config_path(), text).unwrap();
    }

    /// Starts `xlb run` inside the LB namespace (network only: bpffs stays visible).
    fn start(&self) -> Child {
        let netns = PathBuf::from(format!("/run/netns/{}", self.topo.lb.name));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))
            .unwrap();
        let mut cmd = Command::new(xlb_bin());
        cmd.args(["run", "--config"])
            .arg(self.config_path())
            .stdout(Stdio::null())
            .stderr(log);
        let ns = std::fs::File::open(netns).unwrap();
        unsafe {
            cmd.pre_exec(move || {
                use std::os::fd::AsRawFd;
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(self.socket()).is_err() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("daemon exited with {status}: {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not come up: {}",
                self.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
        child
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    fn xlb(&self, args: &[&str]) -> Output {
        Command::new(xlb_bin())
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .output()
            .unwrap()
    }

    fn status(&self) -> serde_json::Value {
        let out = self.xlb(&["status", "--json"]);
        assert!(
            out.status.success(),
            "status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn generation(&self) -> u64 {
        self.status()["generation"].as_u64().unwrap()
    }

    fn weights(&self) -> Vec<u64> {
        self.status()["vips"][0]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["weight"].as_u64().unwrap())
            .collect()
    }

    fn history_len(&self) -> usize {
        std::fs::read_dir(self.dir.path().join("state/history"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".json")
            })
            .count()
    }

    /// The pinned VIP and backend maps as bpftool dumps them.
    fn maps_snapshot(&self) -> String {
        ["xlb_vips", "xlb_backends"]
            .iter()
            .map(|m| {
                sh(&format!(
                    "bpftool -j map dump pinned {}",
                    self.pins.path().join(m).display()
                ))
            })
            .collect()
    }
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn stdout(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Backend servers: answer the backend's name on connect, then echo lines until EOF.
fn servers(topo: &Topology, stop: Arc<AtomicBool>) -> Vec<thread::JoinHandle<()>> {
    BACKENDS
        .iter()
        .zip(&topo.backends)
        .map(|((name, _), ns)| {
            let ns = ns.name.clone();
            let stop = stop.clone();
            let name = name.to_string();
            thread::spawn(move || {
                enter(&ns);
                let listener = TcpListener::bind((VIP, 80)).unwrap();
                listener.set_nonblocking(true).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            let name = name.clone();
                            thread::spawn(move || {
                                conn.set_nonblocking(false).unwrap();
                                conn.set_read_timeout(Some(Duration::from_secs(60)))
                                    .unwrap();
                                let mut w = conn.try_clone().unwrap();
                                let _ = writeln!(w, "{name}");
                                for line in BufReader::new(conn).lines() {
                                    let Ok(line) = line else { break };
                                    let _ = writeln!(w, "{name} {line}");
                                }
                            });
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            thread::sleep(Duration::from_millis(1))
                        }
                        Err(e) => panic!("accept: {e}"),
                    }
                }
            })
        })
        .collect()
}

/// A connection held open from the client namespace.
struct Held {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    backend: String,
}

impl Held {
    fn open(client_ns: &str) -> Held {
        let ns = client_ns.to_string();
        thread::spawn(move || {
            enter(&ns);
            let s = TcpStream::connect_timeout(
                &format!("{VIP}:80").parse().unwrap(),
                Duration::from_secs(3),
            )
            .unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let mut reader = BufReader::new(s.try_clone().unwrap());
            let mut backend = String::new();
            reader.read_line(&mut backend).unwrap();
            Held {
                reader,
                writer: s,
                backend: backend.trim().to_string(),
            }
        })
        .join()
        .unwrap()
    }

    /// Sends a line and checks the same backend echoes it.
    fn ping(&mut self, what: &str) {
        writeln!(self.writer, "{what}").unwrap_or_else(|e| panic!("{what}: write: {e}"));
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("{what}: read: {e}"));
        assert_eq!(
            line.trim(),
            format!("{} {what}", self.backend),
            "established flow moved or broke"
        );
    }
}

/// `n` short connections from the client; returns connections per backend.
fn connect_many(client_ns: &str, n: u32) -> BTreeMap<String, u32> {
    let ns = client_ns.to_string();
    thread::spawn(move || {
        enter(&ns);
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut count = BTreeMap::new();
        for i in 0..n {
            assert!(
                Instant::now() < deadline,
                "traffic loop over its time bound at {i}"
            );
            let s = TcpStream::connect_timeout(
                &format!("{VIP}:80").parse().unwrap(),
                Duration::from_secs(3),
            )
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let mut name = String::new();
            BufReader::new(&s)
                .read_line(&mut name)
                .unwrap_or_else(|e| panic!("connection {i}: {e}"));
            *count.entry(name.trim().to_string()).or_insert(0) += 1;
        }
        count
    })
    .join()
    .unwrap()
}

fn share(count: &BTreeMap<String, u32>, name: &str) -> f64 {
    f64::from(count.get(name).copied().unwrap_or(0)) / f64::from(count.values().sum::<u32>())
}

#[test]
fn daemon_and_cli_end_to_end() {
    if !require_root("daemon_and_cli_end_to_end") {
        return;
    }
    let addrs: Vec<&str> = BACKENDS.iter().map(|b| b.1).collect();
    let setup = Setup {
        dir: tempfile::tempdir().unwrap(),
        pins: PinDir::new("xlb-daemon-"),
        topo: Topology::new(&addrs, VIP),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let servers = servers(&setup.topo, stop.clone());
    setup.write_config([1, 1, 1]);
    let mut daemon = setup.start();
    let client = setup.topo.client.name.clone();

    // Socket: root only, never world-accessible; a non-root user is refused.
    let meta = std::fs::metadata(setup.socket()).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let mut nobody = Command::new(xlb_bin());
    nobody.arg("--socket").arg(setup.socket()).arg("status");
    unsafe {
        nobody.pre_exec(|| {
            if libc::setuid(65534) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let out = nobody.output().unwrap();
    assert_eq!(code(&out), 2, "{}", stdout(&out));
    assert!(
        stdout(&out).contains("Permission denied"),
        "{}",
        stdout(&out)
    );

    assert_eq!(setup.generation(), 1);
    let count = connect_many(&client, 300);
    for (name, _) in BACKENDS {
        assert!((share(&count, name) - 1.0 / 3.0).abs() < 0.1, "{count:?}");
    }

    // Rejected configs: rule id in the output, exit 1, nothing changes.
    let before = (
        setup.maps_snapshot(),
        setup.history_len(),
        setup.generation(),
    );
    let bad = setup.dir.path().join("bad.toml");
    for (weights, rules) in [
        ([0, 0, 5], &["min-active-backends", "max-backend-share"][..]),
        ([0, 0, 0], &["nonzero-total"][..]),
        ([1, 1, 10], &["max-backend-share"][..]),
    ] {
        setup.write_config(weights);
        std::fs::copy(setup.config_path(), &bad).unwrap();
        let out = setup.xlb(&["apply", bad.to_str().unwrap()]);
        assert_eq!(code(&out), 1, "{weights:?}: {}", stdout(&out));
        for rule in rules {
            assert!(
                stdout(&out).contains(&format!("[{rule}]")),
                "{weights:?}: {}",
                stdout(&out)
            );
        }
        let out = setup.xlb(&["validate", bad.to_str().unwrap()]);
        assert_eq!(code(&out), 1, "{}", stdout(&out));
    }
    std::fs::write(&bad, "[[vip]]\nname = 1\n").unwrap();
    let out = setup.xlb(&["apply", bad.to_str().unwrap()]);
    assert_eq!(code(&out), 2, "{}", stdout(&out));
    assert!(
        stdout(&out).contains("bad.toml:2: vip[0].name"),
        "{}",
        stdout(&out)
    );
    let out = setup.xlb(&["weight", "set", "web", "b1", "5", "--force"]);
    assert_eq!(code(&out), 2, "--force without --reason: {}", stdout(&out));
    assert_eq!(
        (
            setup.maps_snapshot(),
            setup.history_len(),
            setup.generation()
        ),
        before,
        "a rejected change altered state"
    );

    // weight set, then a drain the guardrails refuse, then one they accept with an
    // established connection to the drained backend kept.
    let out = setup.xlb(&["weight", "set", "web", "b1", "2"]);
    assert_eq!(code(&out), 0, "{}", stdout(&out));
    assert_eq!(setup.weights(), [2, 1, 1]);
    let out = setup.xlb(&["drain", "web", "b2"]);
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    assert!(
        stdout(&out).contains("[max-backend-share] vip web, backend b1"),
        "{}",
        stdout(&out)
    );
    assert_eq!(code(&setup.xlb(&["weight", "set", "web", "b1", "1"])), 0);
    let mut held: Vec<Held> = (0..12).map(|_| Held::open(&client)).collect();
    assert!(
        held.iter().any(|h| h.backend == "b2"),
        "no held connection on b2"
    );
    let out = setup.xlb(&["drain", "web", "b2"]);
    assert_eq!(code(&out), 0, "{}", stdout(&out));
    held.iter_mut().for_each(|h| h.ping("after-drain"));
    let count = connect_many(&client, 100);
    assert_eq!(
        count.get("b2"),
        None,
        "a drained backend got new flows: {count:?}"
    );

    // Rollback to the previous generation (b2 back to weight 1).
    let g = setup.generation();
    let out = setup.xlb(&["rollback"]);
    assert_eq!(code(&out), 0, "{}", stdout(&out));
    assert_eq!(setup.generation(), g + 1);
    assert_eq!(setup.weights(), [1, 1, 1]);
    let out = setup.xlb(&["history", "--json"]);
    let history: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let last = history.as_array().unwrap().last().unwrap();
    assert_eq!(last["source"]["kind"], "rollback");
    assert_eq!(last["source"]["to"], g - 1);

    // SIGHUP re-reads the file through the guardrails.
    setup.write_config([1, 2, 2]);
    let g = setup.generation();
    sh(&format!("kill -HUP {}", daemon.id()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while setup.generation() == g {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not apply: {}",
            setup.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(setup.weights(), [1, 2, 2]);

    // SIGKILL in the middle of a loop of applies, then a restart.
    let before_loop = setup.history_len();
    let looping = {
        let socket = setup.socket();
        thread::spawn(move || {
            for i in 0..40 {
                let w = if i % 2 == 0 { "1" } else { "2" };
                let _ = Command::new(xlb_bin())
                    .arg("--socket")
                    .arg(&socket)
                    .args(["weight", "set", "web", "b3", w])
                    .output();
            }
        })
    };
    thread::sleep(Duration::from_millis(300));
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    looping.join().unwrap();
    // The data plane forwards with no daemon at all.
    held.iter_mut().for_each(|h| h.ping("daemon-dead"));
    let mut daemon = setup.start();
    held.iter_mut().for_each(|h| h.ping("after-restart"));
    let committed = setup.history_len() as u64;
    assert!(
        (before_loop + 1..before_loop + 40).contains(&(committed as usize)),
        "the kill did not land inside the loop: {before_loop} -> {committed} generations"
    );
    let status = setup.status();
    assert!(
        status["generation"].as_u64().unwrap() >= committed,
        "{status}"
    );
    let b3 = setup.weights()[2];
    // New flows follow the committed weights (b3 is 1 or 2 with b1 = 1, b2 = 2).
    let count = connect_many(&client, 400);
    let want = b3 as f64 / (3.0 + b3 as f64);
    assert!(
        (share(&count, "b3") - want).abs() < 0.08,
        "b3 weight {b3}: {count:?}"
    );

    // Teardown: the daemon exits, XDP is detached, the pins are gone.
    let out = setup.xlb(&["teardown"]);
    assert_eq!(code(&out), 0, "{}", stdout(&out));
    let deadline = Instant::now() + Duration::from_secs(10);
    while daemon.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "daemon did not exit after teardown"
        );
        thread::sleep(Duration::from_millis(50));
    }
    assert!(!setup.pins.path().exists());
    assert!(!setup.topo.lb.sh("ip link show eth0").contains("xdp"));
    stop.store(true, Ordering::Relaxed);
    drop(held);
    for s in servers {
        s.join().unwrap();
    }
}
